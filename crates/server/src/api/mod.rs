//! The REST API under `/v2`, in Coopr's shapes, plus `/status`, `/ready` and `/metrics`.

pub mod catalog;
pub mod clusters;
pub mod error;
pub mod extract;
pub mod lenient;
pub mod provisioners;
pub mod tenants;
pub mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use coopr_state::{CommandResult, Outcome};
use serde_json::json;

use crate::App;
use error::{ApiError, ApiResult};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(clusters::routes())
        .merge(catalog::routes())
        .merge(tenants::routes())
        .merge(provisioners::routes())
        .route("/status", get(status))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// Longest framework error text carried into a JSON error message.
const MAX_ERROR_TEXT_BYTES: usize = 4096;

/// Rewrites errors that axum produces itself (wrong method, undecodable path or query) as
/// `{code, message}` JSON like every handler error; JSON errors pass through unchanged.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::NOT_FOUND => "no_route",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(response.into_body(), MAX_ERROR_TEXT_BYTES)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    rewritten
}

/// Turns a command's outcome into the HTTP answer.
pub fn answer(result: CommandResult) -> ApiResult<Response> {
    let outcome = result?;
    Ok(match clusters::outcome_body(&outcome) {
        Some(body) => Json(body).into_response(),
        None => match outcome {
            Outcome::EntityVersion { version } => {
                Json(json!({ "version": version })).into_response()
            }
            _ => StatusCode::OK.into_response(),
        },
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

async fn status(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "OK",
        "dc": app.config.dc,
        "node": app.config.node,
        "role": "leader",
        "leader": app.config.node,
        "term": 0,
        "last_applied": app.core.applied_index(),
    }))
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    // A single node is its own DC leader; it is ready once its state is loaded (it is, to answer).
    Json(json!({"ready": true, "dc": app.config.dc, "node": app.config.node})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.refresh_gauges();
    let body = app.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
