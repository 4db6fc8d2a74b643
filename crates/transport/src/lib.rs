//! `coopr-transport`: the seam in front of every HTTP call between the parts of a deployment
//! (node to node, provisioner to server): a [`Transport`] sends one [`Call`] (method, URL,
//! headers, body, timeout) and returns its [`Answer`] or why there is none.
//!
//! - [`HttpTransport`]: production, over reqwest (one connection pool per transport).
//! - [`MemNetwork`]: every node in one process. Each node registers the axum routers it serves
//!   under its base URL; a call is handed to the target's router directly (no sockets), after
//!   the link's delay, unless the link from the caller to the target is cut. Delays use tokio's
//!   clock, so they follow a paused/auto-advanced runtime in a simulation. What a call meets
//!   (cut, delay, and [`LinkFaults`]: loss of the request or of its answer, duplication,
//!   jitter that reorders calls) is decided per directed link, by the caller's name
//!   ([`MemNetwork::transport`]); the draws come from one generator seeded with
//!   [`MemNetwork::with_seed`], in the order calls are made.
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

/// What a lossy link does to the calls over it, drawn per call (per mille: out of 1000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// A request is lost on the way; independently, an answer is lost on the way back (the
    /// request took effect). Either way the caller gets [`CallError::NoAnswer`]: it cannot
    /// tell which.
    pub loss_per_mille: u32,
    /// A request is delivered twice (the second copy's answer goes nowhere).
    pub duplicate_per_mille: u32,
    /// Up to this much extra delay per message, drawn uniformly: calls overtake each other.
    pub jitter: Duration,
}

#[derive(Default)]
struct Links {
    /// Base URL -> the node name serving it and its router.
    routes: BTreeMap<String, (String, Router)>,
    /// Directed links (from node, to node) that drop every call.
    cut: BTreeSet<(String, String)>,
    /// One-way delay per directed link (absent: none).
    delay: BTreeMap<(String, String), Duration>,
    /// Lossy links (absent: whole).
    faults: BTreeMap<(String, String), LinkFaults>,
    /// The generator of the links' draws (SplitMix64 state).
    rng: u64,
}

impl Links {
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next() % 1000 < u64::from(per_mille)
    }

    fn jitter(&mut self, up_to: Duration) -> Duration {
        let ms = up_to.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.next() % (ms + 1))
    }
}

/// What a call meets on its way out.
struct Outbound {
    to: String,
    router: Router,
    delay: Duration,
    /// Delay of a second copy, if the request is duplicated.
    duplicate: Option<Duration>,
    /// The connection breaks before the request arrives: the caller cannot tell.
    lost: bool,
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

    /// A network whose lossy links draw from a generator seeded with `seed`.
    pub fn with_seed(seed: u64) -> MemNetwork {
        let network = MemNetwork::default();
        network.write().rng = seed;
        network
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

    /// Heals every cut link and every lossy one (delays stay).
    pub fn heal(&self) {
        let mut links = self.write();
        links.cut.clear();
        links.faults.clear();
    }

    /// Makes the link from `from` to `to` lossy (see [`LinkFaults`]); the default makes it
    /// whole again.
    pub fn set_faults(&self, from: &str, to: &str, faults: LinkFaults) {
        let link = (from.to_string(), to.to_string());
        let mut links = self.write();
        if faults == LinkFaults::default() {
            links.faults.remove(&link);
        } else {
            links.faults.insert(link, faults);
        }
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
    /// Where a call to `base` goes and what it meets on the way, or why it goes nowhere.
    fn outbound(&self, base: &str) -> Result<Outbound, &'static str> {
        let mut links = self.network.write();
        let (to, router) = links
            .routes
            .get(base)
            .cloned()
            .ok_or("nobody serves this address")?;
        let link = (self.from.clone(), to.clone());
        if links.cut.contains(&link) {
            return Err("link cut");
        }
        let faults = links.faults.get(&link).copied().unwrap_or_default();
        let lost = links.chance(faults.loss_per_mille);
        let delay = links.delay.get(&link).copied().unwrap_or_default();
        let duplicate = links
            .chance(faults.duplicate_per_mille)
            .then(|| delay + links.jitter(faults.jitter));
        Ok(Outbound {
            to,
            router,
            delay: delay + links.jitter(faults.jitter),
            duplicate,
            lost,
        })
    }

    async fn deliver(&self, call: Call) -> Result<Answer, CallError> {
        let url = call.url.clone();
        let not_delivered = |reason: &str| CallError::NotDelivered {
            url: url.clone(),
            reason: reason.to_string(),
        };
        let (base, path) = split_url(&call.url).ok_or_else(|| not_delivered("not a URL"))?;
        let Outbound {
            to,
            router,
            delay,
            duplicate,
            lost,
        } = self.outbound(base).map_err(&not_delivered)?;
        let build = |call: &Call| {
            let mut request = Request::builder()
                .method(call.method.clone())
                .uri(if path.is_empty() { "/" } else { path })
                .body(Body::from(call.body.clone()))
                .map_err(|e| not_delivered(&e.to_string()))?;
            *request.headers_mut() = call.headers.clone();
            Ok::<_, CallError>(request)
        };
        let request = build(&call)?;
        if let Some(after) = duplicate {
            let copy = build(&call)?;
            let router = router.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tower::ServiceExt::oneshot(router, copy).await;
            });
        }
        tokio::time::sleep(delay).await;
        if lost {
            return Err(CallError::NoAnswer {
                url,
                reason: "connection lost before the request arrived".into(),
            });
        }
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
        let (cut_back, lost_back, delay_back) = {
            let mut links = self.network.write();
            let faults = links.faults.get(&back).copied().unwrap_or_default();
            let delay =
                links.delay.get(&back).copied().unwrap_or_default() + links.jitter(faults.jitter);
            let lost = links.chance(faults.loss_per_mille);
            (links.cut.contains(&back), lost, delay)
        };
        tokio::time::sleep(delay_back).await;
        if cut_back || lost_back {
            return Err(CallError::NoAnswer {
                url,
                reason: if cut_back {
                    "link cut on the way back".into()
                } else {
                    "answer lost on the way back".into()
                },
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

    /// Losses, duplicates and jitter: what arrives is counted by the target; a seed replays
    /// the same draws; healing makes the link whole.
    #[tokio::test(start_paused = true)]
    async fn lossy_links_lose_duplicate_and_reorder_by_seed() {
        use std::sync::atomic::{AtomicU64, Ordering};

        async fn run(seed: u64) -> (u64, u64, u64, Vec<u64>) {
            let network = MemNetwork::with_seed(seed);
            let arrived = Arc::new(AtomicU64::new(0));
            let order = Arc::new(std::sync::Mutex::new(Vec::new()));
            let router = {
                let arrived = arrived.clone();
                let order = order.clone();
                Router::new().route(
                    "/n",
                    axum::routing::post(move |body: Bytes| async move {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        order
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).parse::<u64>().unwrap());
                        "ok"
                    }),
                )
            };
            network.serve("b", "http://b", router);
            network.set_faults(
                "a",
                "b",
                LinkFaults {
                    loss_per_mille: 200,
                    duplicate_per_mille: 200,
                    jitter: Duration::from_millis(50),
                },
            );
            network.set_faults(
                "b",
                "a",
                LinkFaults {
                    loss_per_mille: 200,
                    ..LinkFaults::default()
                },
            );
            let from_a = network.transport("a");
            let calls: Vec<_> = (0..200u64)
                .map(|i| {
                    let from_a = from_a.clone();
                    tokio::spawn(async move {
                        from_a.call(Call::post("http://b/n", i.to_string())).await
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.expect("the call's task"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let answered = answers.iter().filter(|a| a.is_ok()).count() as u64;
            let unanswered = answers.iter().filter(|a| a.is_err()).count() as u64;
            assert!(answers
                .iter()
                .filter_map(|a| a.as_ref().err())
                .all(|e| !e.not_delivered()));
            network.heal();
            for i in 0..20 {
                from_a
                    .call(Call::post("http://b/n", i.to_string()))
                    .await
                    .expect("a healed link delivers");
            }
            let order = order.lock().unwrap().clone();
            (arrived.load(Ordering::SeqCst), answered, unanswered, order)
        }

        let (arrived, answered, unanswered, order) = run(7).await;
        assert_eq!(answered + unanswered, 200);
        // About 20% of requests lost, 20% duplicated, 20% of answers lost.
        assert!((120..=180).contains(&answered), "{answered} answered");
        assert!(
            arrived - 20 > answered,
            "duplicates and lost answers arrive too"
        );
        assert!(order.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
        assert_eq!(run(7).await, (arrived, answered, unanswered, order.clone()));
        assert_ne!(run(8).await.3, order, "another seed draws otherwise");
    }
}
