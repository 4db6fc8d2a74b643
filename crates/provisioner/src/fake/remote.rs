//! [`RemoteCloud`]: the fake cloud served by `coopr fake-cloud` (`server.rs`), over HTTP.
//!
//! ```text
//!   FakeProvider ──► RemoteCloud::create(node, request)
//!                      POST {url}/machines/{node}/create ── connection error ──► wait, resend
//!                      │                                   (RetryPolicy::attempts in all)
//!                      ├── 200 CreateAnswer ──► Ok
//!                      └── other status {code, message} ──► Err(Status): the task fails
//! ```
//!
//! Every call is idempotent on the node id, so resending after a connection error is safe even
//! when the first request did reach the cloud: a CREATE resent finds the machine the first one
//! made. An answer with an error status is never resent: an injected failure must reach the
//! task, and a 400 would be refused again.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{
    ApiError, CreateAnswer, CreateRequest, Injection, MachineAnswer, MachineList, MAX_LATENCY_MS,
};
use super::FakeMachine;

/// Longest answer read from the cloud (a machine list of some thousand nodes).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// A cloud that accepts no connection within this is counted as unreachable for that attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request may wait the longest latency the cloud injects; past that plus a margin, the
/// cloud is hung and the task fails instead of holding its worker.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(MAX_LATENCY_MS + 30_000);

/// How often and how patiently a request is resent after a connection error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1. Default 5.
    pub attempts: u32,
    /// Pause after the first failed attempt; doubles after each, up to `max_backoff`.
    /// Default 100 ms.
    pub first_backoff: Duration,
    /// Default 1 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// About two seconds of retries: enough for a cloud that is starting or restarting.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteCloudError {
    #[error("fake cloud URL {url:?} is not a plain http:// URL")]
    BadUrl { url: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Every attempt failed before an answer arrived.
    #[error("fake cloud at {url} is unreachable after {attempts} attempt(s): {source}")]
    Unreachable {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// The cloud answered with an error (an injected failure is `503 injected_failure`).
    #[error("fake cloud at {url} answered {status} {code}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The cloud answered 200 with something that is not the expected JSON.
    #[error("fake cloud at {url} answered unreadable JSON: {reason}")]
    BadAnswer { url: String, reason: String },
}

impl RemoteCloudError {
    /// The error code of an error answer (`injected_failure`, `invalid_node_id`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            RemoteCloudError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client of one fake cloud. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct RemoteCloud {
    base: Url,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl RemoteCloud {
    /// A client of the cloud at `url` (`http://127.0.0.1:7190`), with the default retries.
    pub fn new(url: &str) -> Result<Self, RemoteCloudError> {
        let bad_url = || RemoteCloudError::BadUrl {
            url: url.to_string(),
        };
        let base = Url::parse(url.trim_end_matches('/')).map_err(|_| bad_url())?;
        if base.scheme() != "http" || base.host_str().is_none() || base.cannot_be_a_base() {
            return Err(bad_url());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(RemoteCloudError::Client)?;
        Ok(RemoteCloud {
            base,
            http,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            attempts: retry.attempts.max(1),
            ..retry
        };
        self
    }

    pub fn url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub async fn create(
        &self,
        node_id: &str,
        request: &CreateRequest,
    ) -> Result<CreateAnswer, RemoteCloudError> {
        self.post(&[node_id, "create"], request).await
    }

    pub async fn confirm(
        &self,
        node_id: &str,
        injection: Injection,
    ) -> Result<Option<FakeMachine>, RemoteCloudError> {
        let answer: MachineAnswer = self.post(&[node_id, "confirm"], &injection).await?;
        Ok(answer.machine)
    }

    pub async fn delete(
        &self,
        node_id: &str,
        injection: Injection,
    ) -> Result<Option<FakeMachine>, RemoteCloudError> {
        let answer: MachineAnswer = self.post(&[node_id, "delete"], &injection).await?;
        Ok(answer.machine)
    }

    /// Every node id the cloud has seen, with its counts.
    pub async fn machines(&self) -> Result<MachineList, RemoteCloudError> {
        let url = self.machines_url(&[]);
        self.send(|| self.http.get(url.clone())).await
    }

    /// `{base}/machines/{segments...}`, each segment percent-encoded.
    fn machines_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("machines").extend(segments);
        }
        url
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, RemoteCloudError> {
        let url = self.machines_url(segments);
        self.send(|| self.http.post(url.clone()).json(body)).await
    }

    /// Sends the request `build` makes, again after each connection error while attempts
    /// remain, and reads the answer.
    async fn send<T: DeserializeOwned>(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, RemoteCloudError> {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            match build().send().await {
                Ok(response) => return self.read(response).await,
                Err(e) if attempt < self.retry.attempts && is_transport(&e) => {
                    tracing::debug!(url = %self.url(), attempt, error = %e, "fake cloud unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(source) => {
                    return Err(RemoteCloudError::Unreachable {
                        url: self.url().to_string(),
                        attempts: attempt,
                        source,
                    })
                }
            }
        }
    }

    async fn read<T: DeserializeOwned>(
        &self,
        mut response: reqwest::Response,
    ) -> Result<T, RemoteCloudError> {
        let status = response.status();
        let bad_answer = |reason: String| RemoteCloudError::BadAnswer {
            url: self.url().to_string(),
            reason,
        };
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(bad_answer(format!(
                            "answer exceeds {MAX_ANSWER_BYTES} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(bad_answer(format!("answer cut off: {e}"))),
            }
        }
        if !status.is_success() {
            let error: ApiError = serde_json::from_slice(&body).unwrap_or_else(|_| ApiError {
                code: "unknown".to_string(),
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
            return Err(RemoteCloudError::Status {
                url: self.url().to_string(),
                status,
                code: error.code,
                message: error.message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| bad_answer(e.to_string()))
    }
}

/// An error before any answer arrived: the connection was refused, reset or timed out while
/// connecting. Safe to resend: every call is idempotent on the node id.
fn is_transport(error: &reqwest::Error) -> bool {
    error.is_connect() || (error.is_request() && !error.is_timeout())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only plain http:// URLs with a host are accepted; paths are kept and node ids encoded.
    #[test]
    fn urls_are_checked_and_built() {
        for bad in ["https://x:1", "x:1", "http://", "ftp://x"] {
            assert!(RemoteCloud::new(bad).is_err(), "{bad}");
        }
        let cloud = RemoteCloud::new("http://127.0.0.1:7190/").expect("url");
        assert_eq!(cloud.url(), "http://127.0.0.1:7190");
        assert_eq!(
            cloud.machines_url(&["a b", "create"]).as_str(),
            "http://127.0.0.1:7190/machines/a%20b/create"
        );
        let prefixed = RemoteCloud::new("http://h:1/cloud").expect("url");
        assert_eq!(
            prefixed.machines_url(&[]).as_str(),
            "http://h:1/cloud/machines"
        );
    }
}
