//! `coopr-transport`: the seam in front of every HTTP call between the parts of a deployment
//! (node to node, provisioner to server): a [`Transport`] sends one [`Call`] (method, URL,
//! headers, body, timeout) and returns its [`Answer`] or why there is none.
//!
//! - [`HttpTransport`]: production, over reqwest (one connection pool per transport).
//! - [`MemNetwork`]: every node in one process. Each node registers the axum routers it serves
//!   under its base URL; a call is handed to the target's router directly (no sockets), after
//!   the link's delay, unless the link from the caller to the target is cut. Delays use tokio's
//!   clock, so they follow a paused/auto-advanced runtime in a simulation. What a call meets
//!   (cut, delay) is decided per directed link, by the caller's name ([`MemNetwork::transport`]).
//!
//! ```text
//!   node n1: raft network, status probes ──Transport::call──► HttpTransport ──TCP──► n2's router
//!                                                        └──► MemNetwork ─(link n1→n2)─► n2's router
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;

/// One request to another node.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Absolute URL: the target's base URL plus the path and query.
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Longest the whole call may take (`None`: the transport's default, if any).
    pub timeout: Option<Duration>,
}

impl Call {
    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: impl Into<Bytes>) -> Call {
        Call {
            method: Method::POST,
            url: url.into(),
            headers: HeaderMap::new(),
            body: body.into(),
            timeout: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            ..Call::post(url, Bytes::new())
        }
    }

    /// A `POST` of `value` as JSON.
    pub fn json(url: impl Into<String>, value: &impl serde::Serialize) -> Call {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Call::post(url, body).header("content-type", "application/json")
    }

    /// A `DELETE` of `url`.
    pub fn delete(url: impl Into<String>) -> Call {
        Call {
            method: Method::DELETE,
            ..Call::post(url, Bytes::new())
        }
    }

    /// The same call as a `PUT`.
    pub fn method_put(mut self) -> Call {
        self.method = Method::PUT;
        self
    }

    /// Adds a header (a name or value that is not valid HTTP is dropped).
    pub fn header(mut self, name: &str, value: &str) -> Call {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_str(value),
        ) {
            self.headers.insert(name, value);
        }
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = Some(timeout);
        self
    }
}

/// The target's answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a call has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request certainly did not reach the target (no connection, link cut before it
    /// was sent): safe to send elsewhere.
    #[error("{url}: not delivered: {reason}")]
    NotDelivered { url: String, reason: String },
    /// The request may have reached the target (timeout, connection lost mid-call).
    #[error("{url}: no answer: {reason}")]
    NoAnswer { url: String, reason: String },
}

impl CallError {
    /// Whether the request certainly did not arrive.
    pub fn not_delivered(&self) -> bool {
        matches!(self, CallError::NotDelivered { .. })
    }
}

/// A boxed call in flight.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send + 'a>>;

/// Sends calls to other nodes (see the module doc).
pub trait Transport: Send + Sync + 'static {
    fn call(&self, call: Call) -> CallFuture<'_>;
}

/// [`Transport`] over HTTP (reqwest).
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    /// `connect_timeout` bounds each TCP connect; a call without a timeout of its own may take
    /// as long as it takes.
    pub fn new(connect_timeout: Duration) -> Result<HttpTransport, reqwest::Error> {
        Ok(HttpTransport {
            client: reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .build()?,
        })
    }

    /// [`HttpTransport::new`], with `timeout` for every call that sets none.
    pub fn with_timeout(
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<HttpTransport, reqwest::Error> {
        Ok(HttpTransport {
            client: reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .timeout(timeout)
                .build()?,
        })
    }
}

impl Transport for HttpTransport {
    fn call(&self, call: Call) -> CallFuture<'_> {
        Box::pin(async move {
            let url = call.url;
            let mut request = self
                .client
                .request(call.method, &url)
                .headers(call.headers)
                .body(call.body);
            if let Some(timeout) = call.timeout {
                request = request.timeout(timeout);
            }
            let response = request.send().await.map_err(|e| {
                let reason = e.to_string();
                if e.is_connect() {
                    CallError::NotDelivered {
                        url: url.clone(),
                        reason,
                    }
                } else {
                    CallError::NoAnswer {
                        url: url.clone(),
                        reason,
                    }
                }
            })?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| CallError::NoAnswer {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
    }
}

#[derive(Default)]
struct Links {
    /// Base URL -> the node name serving it and its router.
    routes: BTreeMap<String, (String, Router)>,
    /// Directed links (from node, to node) that drop every call.
    cut: BTreeSet<(String, String)>,
    /// One-way delay per directed link (absent: none).
    delay: BTreeMap<(String, String), Duration>,
}

/// Nodes of one process calling each other's routers directly (see the module doc).
#[derive(Clone, Default)]
pub struct MemNetwork {
    links: Arc<RwLock<Links>>,
}

impl MemNetwork {
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    /// Node `node` serves `router` at `base_url` (e.g. `http://n1`); replaces an earlier
    /// registration of that URL (a restarted node).
    pub fn serve(&self, node: &str, base_url: &str, router: Router) {
        self.write()
            .routes
            .insert(trim(base_url), (node.to_string(), router));
    }

    /// The node at `base_url` stops answering (a crash): calls to it are not delivered.
    pub fn unserve(&self, base_url: &str) {
        self.write().routes.remove(&trim(base_url));
    }

    /// The transport node `node` calls through.
    pub fn transport(&self, node: &str) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            from: node.to_string(),
            network: self.clone(),
        })
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: &str, to: &str) {
        self.write().cut.insert((from.to_string(), to.to_string()));
    }

    /// Cuts every link from and to `node` (a partition of one node).
    pub fn isolate(&self, node: &str) {
        let nodes: Vec<String> = self
            .read()
            .routes
            .values()
            .map(|(n, _)| n.clone())
            .collect();
        let mut links = self.write();
        for other in nodes.iter().filter(|n| *n != node) {
            links.cut.insert((node.to_string(), other.clone()));
            links.cut.insert((other.clone(), node.to_string()));
        }
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        self.write().cut.clear();
    }

    /// Sets the one-way delay of the link from `from` to `to`.
    pub fn set_delay(&self, from: &str, to: &str, delay: Duration) {
        self.write()
            .delay
            .insert((from.to_string(), to.to_string()), delay);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Links> {
        self.links.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Links> {
        self.links.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn trim(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// The base URL (`scheme://host[:port]`) and the path and query of an absolute URL.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let after_scheme = url.find("://")? + 3;
    let path_at = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    Some((&url[..path_at], &url[path_at..]))
}

struct MemTransport {
    from: String,
    network: MemNetwork,
}

impl MemTransport {
    async fn deliver(&self, call: Call) -> Result<Answer, CallError> {
        let url = call.url.clone();
        let not_delivered = |reason: &str| CallError::NotDelivered {
            url: url.clone(),
            reason: reason.to_string(),
        };
        let (base, path) = split_url(&call.url).ok_or_else(|| not_delivered("not a URL"))?;
        let (to, router, delay) = {
            let links = self.network.read();
            let (to, router) = links
                .routes
                .get(base)
                .cloned()
                .ok_or_else(|| not_delivered("nobody serves this address"))?;
            let link = (self.from.clone(), to.clone());
            if links.cut.contains(&link) {
                return Err(not_delivered("link cut"));
            }
            (to, router, links.delay.get(&link).copied())
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut request = Request::builder()
            .method(call.method)
            .uri(if path.is_empty() { "/" } else { path })
            .body(Body::from(call.body))
            .map_err(|e| not_delivered(&e.to_string()))?;
        *request.headers_mut() = call.headers;
        let response = tower::ServiceExt::oneshot(router, request)
            .await
            .map_err(|e| CallError::NoAnswer {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|e| CallError::NoAnswer {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        // The answer travels back over the reverse link: cut meanwhile, it is lost.
        let back = (to.clone(), self.from.clone());
        let (cut_back, delay_back) = {
            let links = self.network.read();
            (links.cut.contains(&back), links.delay.get(&back).copied())
        };
        if let Some(delay) = delay_back {
            tokio::time::sleep(delay).await;
        }
        if cut_back {
            return Err(CallError::NoAnswer {
                url,
                reason: "link cut on the way back".into(),
            });
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

impl Transport for MemTransport {
    fn call(&self, call: Call) -> CallFuture<'_> {
        let timeout = call.timeout;
        let url = call.url.clone();
        Box::pin(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, self.deliver(call))
                    .await
                    .unwrap_or_else(|_| {
                        Err(CallError::NoAnswer {
                            url,
                            reason: "timed out".into(),
                        })
                    }),
                None => self.deliver(call).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_base_and_path() {
        assert_eq!(
            split_url("http://n1:7/raft/append?x=1"),
            Some(("http://n1:7", "/raft/append?x=1"))
        );
        assert_eq!(split_url("http://n1"), Some(("http://n1", "")));
        assert_eq!(split_url("n1/raft"), None);
    }

    #[tokio::test]
    async fn a_cut_link_delivers_nothing_and_a_healed_one_delivers() {
        let network = MemNetwork::new();
        let router =
            Router::new().route("/ping", axum::routing::post(|body: Bytes| async { body }));
        network.serve("b", "http://b", router);
        let from_a = network.transport("a");
        let answer = from_a
            .call(Call::post("http://b/ping", "hi"))
            .await
            .expect("delivered");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"hi");
        network.cut("a", "b");
        let error = from_a
            .call(Call::post("http://b/ping", "hi"))
            .await
            .expect_err("cut");
        assert!(error.not_delivered(), "{error}");
        network.heal();
        network.cut("b", "a");
        let error = from_a
            .call(Call::post("http://b/ping", "hi"))
            .await
            .expect_err("answer lost");
        assert!(!error.not_delivered(), "{error}");
        network.heal();
        let missing = from_a
            .call(Call::post("http://c/ping", "hi"))
            .await
            .expect_err("nobody");
        assert!(missing.not_delivered());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_follow_tokio_time() {
        let network = MemNetwork::new();
        let router = Router::new().route("/ping", axum::routing::post(|| async { "pong" }));
        network.serve("b", "http://b", router);
        network.set_delay("a", "b", Duration::from_millis(40));
        let started = tokio::time::Instant::now();
        let from_a = network.transport("a");
        from_a
            .call(Call::post("http://b/ping", ""))
            .await
            .expect("delivered");
        assert_eq!(started.elapsed(), Duration::from_millis(40));
        let error = from_a
            .call(Call::post("http://b/ping", "").timeout(Duration::from_millis(10)))
            .await
            .expect_err("timed out");
        assert!(!error.not_delivered());
    }
}
