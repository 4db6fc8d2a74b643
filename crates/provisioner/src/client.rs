//! The client for the server's provisioner API (`/v2/provisioners`, `/v2/tasks`), over a
//! [`Transport`]: HTTP in production, the in-memory network in a simulation.
//!
//! ```text
//!   servers: [a, b, c]     current ──► a ──connection error──► b ──connection error──► c ──► a ...
//! ```
//!
//! One server is current at a time. A request that fails to connect (or times out) moves the
//! current server to the next one and returns [`ClientError::Unreachable`]; the caller backs off
//! and retries, which then goes to the next server. Every request carries `Coopr-ApiKey` when a
//! key is configured. Each response status maps to one outcome variant, so callers match on what
//! the server meant rather than on numbers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use coopr_transport::{Answer, Call, CallError, HttpTransport, Transport};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::ProvisionerConfig;
use crate::plugin::PluginResult;

/// Header carrying the provisioner key.
pub const API_KEY_HEADER: &str = "Coopr-ApiKey";

/// Longest a single request may take, connect included.
const REQUEST_TIMEOUT_MS: u64 = 30_000;
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Error bodies kept in [`ClientError::Status`].
const MAX_ERROR_BODY_CHARS: usize = 512;

/// `PUT /v2/provisioners/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub capacity_total: u32,
}

/// `POST /v2/tasks/take`. Without a tenant the server hands out tasks of any tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TakeRequest {
    pub provisioner_id: String,
    pub worker_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// `POST /v2/tasks/finish`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FinishRequest {
    pub provisioner_id: String,
    pub worker_id: String,
    pub tenant_id: String,
    pub task_id: String,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipaddresses: Option<Map<String, Value>>,
    pub result: Map<String, Value>,
}

impl FinishRequest {
    /// The report that this attempt failed because its result could not be delivered (the
    /// server refused it as malformed or too large): the engine retries the task, with its
    /// backoff, and finally fails it, instead of the worker taking the same task forever.
    pub fn undeliverable(&self, reason: &str) -> Self {
        let mut stderr: String = reason.chars().take(MAX_ERROR_BODY_CHARS).collect();
        stderr.insert_str(0, "the task's result could not be delivered: ");
        FinishRequest {
            status: PluginResult::failure("").status,
            stdout: String::new(),
            stderr,
            hostname: None,
            ipaddresses: None,
            result: Map::new(),
            ..self.clone()
        }
    }

    /// The report of `result` for `task_id`, from the given worker.
    pub fn new(
        take: &TakeRequest,
        tenant_id: String,
        task_id: String,
        result: PluginResult,
    ) -> Self {
        FinishRequest {
            provisioner_id: take.provisioner_id.clone(),
            worker_id: take.worker_id.clone(),
            tenant_id,
            task_id,
            status: result.status,
            stdout: result.stdout,
            stderr: result.stderr,
            hostname: result.hostname,
            ipaddresses: result.ipaddresses,
            result: result.result,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Alive,
    /// 404 (or 403): the server does not know this provisioner; register again.
    NotRegistered,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TakeOutcome {
    /// 200: a task, as a JSON object.
    Task(Value),
    /// 204: nothing queued.
    Empty,
    /// 403 (or 404): the server does not know this provisioner; register again.
    NotRegistered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishOutcome {
    Accepted,
    /// 417: this worker no longer owns the task (it timed out or was finished); drop the result.
    NotOwner,
    /// 403 (or 404): the server does not know this provisioner; register again and retry.
    NotRegistered,
    /// 409 `task_not_here`: the task belongs to a shard another DC owns (its answer names the
    /// DC); no server of this DC will take the result, so it is dropped.
    NotHere {
        answer: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Retryable: the request did not get an answer. The next request goes to the next server.
    #[error("{request}: cannot reach {server}: {source}")]
    Unreachable {
        request: &'static str,
        server: String,
        source: CallError,
    },
    /// An answer outside the protocol. Retryable if the status is 5xx.
    #[error("{request}: {server} answered {status}: {body}")]
    Status {
        request: &'static str,
        server: String,
        status: u16,
        body: String,
    },
    /// Terminal for this response: the body could not be read or is not what the API promises.
    #[error("{request}: bad response from {server}: {detail}")]
    BadResponse {
        request: &'static str,
        server: String,
        detail: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
}

impl ClientError {
    /// Whether the same request may succeed later (unreachable server, server error).
    /// A 401: the key is not (yet) known to the server, e.g. while a new deployment seeds it.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Status { status: 401, .. })
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::BadResponse { .. } | ClientError::Build(_) => false,
        }
    }
}

/// A client for the provisioner API of a list of servers.
pub struct ProvisionerClient {
    transport: Arc<dyn Transport>,
    servers: Vec<String>,
    /// Index into `servers` of the current server.
    current: AtomicUsize,
    api_key: Option<String>,
}

impl std::fmt::Debug for ProvisionerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerClient")
            .field("servers", &self.servers)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl ProvisionerClient {
    /// A client for `config.servers` sending `config.api_key`, over HTTP.
    ///
    /// # Panics
    /// If `config.servers` is empty, which [`ProvisionerConfig::validate`] rejects.
    pub fn new(config: &ProvisionerConfig) -> Result<Self, ClientError> {
        let http = HttpTransport::with_timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            Duration::from_millis(REQUEST_TIMEOUT_MS),
        )
        .map_err(ClientError::Build)?;
        Ok(Self::with_transport(config, Arc::new(http)))
    }

    /// A client for `config.servers` sending `config.api_key`, over `transport`.
    ///
    /// # Panics
    /// If `config.servers` is empty, which [`ProvisionerConfig::validate`] rejects.
    pub fn with_transport(config: &ProvisionerConfig, transport: Arc<dyn Transport>) -> Self {
        assert!(
            !config.servers.is_empty(),
            "validate() rejects an empty server list"
        );
        ProvisionerClient {
            transport,
            servers: config
                .servers
                .iter()
                .map(|s| s.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            api_key: config.api_key.clone(),
        }
    }

    /// The server requests currently go to.
    pub fn current_server(&self) -> &str {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// `PUT /v2/provisioners/{id}`; 200 is success, anything else an error.
    pub async fn register(&self, registration: &Registration) -> Result<(), ClientError> {
        let request = "register";
        let path = format!("/v2/provisioners/{}", registration.id);
        let (server, answer) = self
            .send(request, |base| {
                Call::json(format!("{base}{path}"), registration).method_put()
            })
            .await?;
        match answer.status {
            status if status.is_success() => Ok(()),
            _ => Err(status_error(request, server, &answer)),
        }
    }

    /// `POST /v2/provisioners/{id}/heartbeat` with `{"usage": usage}`.
    pub async fn heartbeat(
        &self,
        provisioner_id: &str,
        usage: &Map<String, Value>,
    ) -> Result<HeartbeatOutcome, ClientError> {
        let request = "heartbeat";
        let path = format!("/v2/provisioners/{provisioner_id}/heartbeat");
        let body = serde_json::json!({ "usage": usage });
        let (server, answer) = self
            .send(request, |base| Call::json(format!("{base}{path}"), &body))
            .await?;
        match answer.status {
            status if status.is_success() => Ok(HeartbeatOutcome::Alive),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(HeartbeatOutcome::NotRegistered),
            _ => Err(status_error(request, server, &answer)),
        }
    }

    /// `POST /v2/tasks/take`.
    pub async fn take(&self, take: &TakeRequest) -> Result<TakeOutcome, ClientError> {
        let request = "take";
        let (server, answer) = self
            .send(request, |base| {
                Call::json(format!("{base}/v2/tasks/take"), take)
            })
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT => Ok(TakeOutcome::Empty),
            StatusCode::OK => {
                let bytes = &answer.body;
                // Some servers answer an empty queue with 200 and no body.
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(TakeOutcome::Empty);
                }
                match serde_json::from_slice::<Value>(bytes) {
                    Ok(task @ Value::Object(_)) => Ok(TakeOutcome::Task(task)),
                    Ok(other) => Err(bad_response(
                        request,
                        &server,
                        format!("task is not a JSON object: {other}"),
                    )),
                    Err(e) => Err(bad_response(
                        request,
                        &server,
                        format!("task is not JSON: {e}"),
                    )),
                }
            }
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(TakeOutcome::NotRegistered),
            _ => Err(status_error(request, server, &answer)),
        }
    }

    /// `POST /v2/tasks/finish`.
    pub async fn finish(&self, finish: &FinishRequest) -> Result<FinishOutcome, ClientError> {
        let request = "finish";
        let (server, answer) = self
            .send(request, |base| {
                Call::json(format!("{base}/v2/tasks/finish"), finish)
            })
            .await?;
        match answer.status {
            status if status.is_success() => Ok(FinishOutcome::Accepted),
            StatusCode::EXPECTATION_FAILED => Ok(FinishOutcome::NotOwner),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(FinishOutcome::NotRegistered),
            StatusCode::CONFLICT => match status_error(request, server, &answer) {
                ClientError::Status { body, .. } if body.contains("task_not_here") => {
                    Ok(FinishOutcome::NotHere { answer: body })
                }
                other => Err(other),
            },
            _ => Err(status_error(request, server, &answer)),
        }
    }

    /// Sends a request to the current server; on a transport error, moves to the next server.
    async fn send(
        &self,
        request: &'static str,
        build: impl FnOnce(&str) -> Call,
    ) -> Result<(String, Answer), ClientError> {
        let index = self.current.load(Ordering::Relaxed) % self.servers.len();
        let server = &self.servers[index];
        let mut call = build(server);
        if let Some(key) = &self.api_key {
            call = call.header(API_KEY_HEADER, key);
        }
        match self.transport.call(call).await {
            Ok(answer) => Ok((server.clone(), answer)),
            Err(source) => {
                // Only the first of several workers failing against the same server rotates,
                // so concurrent failures move one step, not one per worker.
                let next = (index + 1) % self.servers.len();
                let _ = self.current.compare_exchange(
                    index,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Err(ClientError::Unreachable {
                    request,
                    server: server.clone(),
                    source,
                })
            }
        }
    }
}

fn bad_response(request: &'static str, server: &str, detail: String) -> ClientError {
    ClientError::BadResponse {
        request,
        server: server.to_string(),
        detail,
    }
}

fn status_error(request: &'static str, server: String, answer: &Answer) -> ClientError {
    let body = String::from_utf8_lossy(&answer.body);
    ClientError::Status {
        request,
        server,
        status: answer.status.as_u16(),
        body: body.chars().take(MAX_ERROR_BODY_CHARS).collect(),
    }
}
