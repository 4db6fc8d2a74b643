//! The fake cloud over HTTP: one [`FakeCloud`] that the provisioners of every datacenter share,
//! as real datacenters share a real provider (`coopr fake-cloud`, and `coopr demo` in process).
//!
//! ```text
//!   request ──► body ≤ MAX_BODY_BYTES (else 413) ──► node id and fields checked (else 400)
//!           ──► FakeCloud::{create,confirm,delete}_machine ──► 200 JSON
//!                  (latency slept, failure drawn: 503 injected_failure, nothing changed)
//! ```
//!
//! The routes and bodies are in `api.rs`. Requests are handled concurrently; the cloud's lock
//! orders their effects, and every change is in the state file before it is answered.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api::{
    validate_node_id, ApiError, CreateRequest, Injection, InvalidRequest, MachineAnswer,
    MAX_BODY_BYTES,
};
use super::{FakeCloud, FakeCloudError};

/// A running fake cloud server. Dropping it leaves the server running until the runtime
/// stops; [`FakeCloudServer::shutdown`] stops it.
#[derive(Debug)]
pub struct FakeCloudServer {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl FakeCloudServer {
    /// Serves `cloud` on `listen` (`127.0.0.1:0` picks a free port; see [`Self::url`]).
    pub async fn start(cloud: FakeCloud, listen: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(cloud);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%address, "fake cloud listening");
        Ok(FakeCloudServer {
            address,
            stop,
            task,
        })
    }

    /// `http://ADDRESS:PORT`, the URL provisioners are given.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting requests and waits for those in flight.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(outcome) => outcome,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// The routes, on `cloud`.
pub fn router(cloud: FakeCloud) -> Router {
    Router::new()
        .route("/machines", get(list))
        .route("/machines/{node_id}", get(show))
        .route("/machines/{node_id}/create", post(create))
        .route("/machines/{node_id}/confirm", post(confirm))
        .route("/machines/{node_id}/delete", post(delete))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(cloud)
}

/// An error answer; every refusal and failure becomes one.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<InvalidRequest> for Refusal {
    fn from(invalid: InvalidRequest) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: invalid.code(),
            message: invalid.to_string(),
        }
    }
}

impl From<FakeCloudError> for Refusal {
    fn from(error: FakeCloudError) -> Self {
        let (status, code) = match &error {
            FakeCloudError::InjectedFailure { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "injected_failure")
            }
            FakeCloudError::Read { .. }
            | FakeCloudError::Parse { .. }
            | FakeCloudError::Write { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "state_error"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, "fake cloud cannot keep its state");
        }
        Refusal {
            status,
            code,
            message: error.to_string(),
        }
    }
}

/// The node id from the path, checked.
fn node_id(path: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    let Path(node_id) = path.map_err(|rejection| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_node_id",
        message: rejection.body_text(),
    })?;
    validate_node_id(&node_id)?;
    Ok(node_id)
}

/// The JSON body; an empty body is `T::default()` (every field optional).
fn body<T: DeserializeOwned + Default>(body: Result<Bytes, BytesRejection>) -> Result<T, Refusal> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "body_too_large",
                message: format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            }
        } else {
            Refusal {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_body",
                message: rejection.body_text(),
            }
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_json",
        message: e.to_string(),
    })
}

async fn list(State(cloud): State<FakeCloud>) -> Response {
    Json(cloud.machines()).into_response()
}

async fn show(
    State(cloud): State<FakeCloud>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Refusal> {
    let node_id = node_id(path)?;
    match cloud.record(&node_id) {
        Some(machine) => Ok(Json(machine).into_response()),
        None => Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: "unknown_node",
            message: format!("no machine was ever created for node {node_id}"),
        }),
    }
}

async fn create(
    State(cloud): State<FakeCloud>,
    path: Result<Path<String>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let node_id = node_id(path)?;
    let request: CreateRequest = body(request)?;
    request.validate()?;
    let answer = cloud.create_machine(&node_id, &request).await?;
    if answer.created {
        tracing::info!(node = %node_id, provider_id = %answer.machine.provider_id, creates = answer.machine.creates, "created");
    }
    Ok(Json(answer).into_response())
}

async fn confirm(
    State(cloud): State<FakeCloud>,
    path: Result<Path<String>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let node_id = node_id(path)?;
    let injection: Injection = body(request)?;
    injection.validate()?;
    let machine = cloud.confirm_machine(&node_id, injection).await?;
    Ok(Json(MachineAnswer { machine }).into_response())
}

async fn delete(
    State(cloud): State<FakeCloud>,
    path: Result<Path<String>, PathRejection>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let node_id = node_id(path)?;
    let injection: Injection = body(request)?;
    injection.validate()?;
    let machine = cloud.delete_machine(&node_id, injection).await?;
    if let Some(machine) = &machine {
        tracing::info!(node = %node_id, provider_id = %machine.provider_id, "deleted");
    }
    Ok(Json(MachineAnswer { machine }).into_response())
}

async fn not_found() -> Refusal {
    Refusal {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route; see GET /machines".to_string(),
    }
}
