//! The REST API under `/v2`, in Coopr's shapes, plus `/status` (Coopr's plain `OK`), `/ready`
//! and `/metrics`; the node's own state (DC log role, leader, positions) is `GET /v2/status`.

pub mod admission;
pub mod catalog;
pub mod clusters;
pub mod error;
pub mod extract;
pub mod forward;
pub mod lenient;
pub mod limits;
pub mod metrics;
pub mod plugins;
pub mod profile;
pub mod provisioners;
pub mod ready;
pub mod replication;
pub mod routes;
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

/// The API port's routes, behind their admission (concurrency limits and timeouts per class,
/// see [`admission`]), outermost so that a shed request costs no forwarding or parsing.
pub fn router(app: Arc<App>) -> Router {
    let admission = admission::Admission::public(&app.config);
    // The document lists itself: it is made once every route, its own included, is known.
    let document: Arc<std::sync::OnceLock<serde_json::Value>> = Arc::default();
    let served = document.clone();
    let (routes, operations) = documented_routes()
        .route(
            OPENAPI_PATH,
            get(move || {
                let served = served.clone();
                async move { Json(served.get().cloned().unwrap_or_default()) }
            }),
            &[(axum::http::Method::GET, "This document (OpenAPI 3)")],
        )
        .into_parts();
    let _ = document.set(routes::openapi(&operations));
    let routes = routes
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            forward::route_to_leader,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app);
    admission.layer(routes)
}

/// Where the API's OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/v2/openapi.json";

/// Every route of the API port with its documented operations (the OpenAPI document is made
/// from these; it documents itself too).
pub fn documented_routes() -> routes::Routes {
    use axum::http::Method;
    routes::Routes::new("health")
        .merge(clusters::routes())
        .merge(catalog::routes())
        .merge(tenants::routes())
        .merge(provisioners::routes())
        .merge(metrics::routes())
        .merge(profile::routes())
        .merge(plugins::routes())
        .merge(replication::routes())
        .merge(crate::replication::owner::routes())
        .merge(crate::placement::lease::routes())
        .merge(crate::console::routes())
        .route(
            "/status",
            get(plain_status),
            &[(Method::GET, "OK when the node answers (plain text)")],
        )
        .route(
            "/v2/status",
            get(status),
            &[(
                Method::GET,
                "This node: DC, role in the DC log and the placement group",
            )],
        )
        .route(
            "/ready",
            get(ready::ready),
            &[(
                Method::GET,
                "Whether a write sent here now would be accepted (200 or 503)",
            )],
        )
        .route(
            "/metrics",
            get(metrics),
            &[(Method::GET, "Prometheus metrics (text)")],
        )
        .merge(routes::Routes::new("admin").route(
            "/v2/admin/dump",
            get(dump),
            &[(
                Method::GET,
                "This node's copy of every shard, canonical (superadmin)",
            )],
        ))
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

/// Coopr's health check: `OK` as text, whatever the node's state (`/ready` says whether it
/// can serve; `/v2/status` says how it is doing).
async fn plain_status() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "OK\n",
    )
        .into_response()
}

/// The node's view of its DC log and placement group (no identity needed, like `/status`).
async fn status(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(status_json(&app))
}

/// What `GET /v2/status` answers.
pub(crate) fn status_json(app: &App) -> serde_json::Value {
    let raft = app.core.raft().status();
    let leader = raft.leader.map(|id| {
        app.config
            .members
            .get(&id)
            .map_or_else(|| app.config.node.clone(), |m| m.node.clone())
    });
    json!({
        "status": "OK",
        "dc": app.config.dc,
        "node": app.config.node,
        "node_id": raft.node_id,
        "role": raft.role,
        "leader": leader,
        "leader_id": raft.leader,
        "term": raft.term,
        "last_applied": raft.last_applied,
        "last_log_index": raft.last_log_index,
        "snapshot_index": raft.snapshot_index,
        // With several DCs, on the DC log's leader (which holds the DC's lease).
        "lease_remaining_ms": app.config.multi_dc().then(|| app.lease_remaining_ms()),
        "placement": app.placement_group.as_ref().map(|group| {
            let status = group.raft().status();
            json!({"node_id": status.node_id, "role": status.role, "leader_id": status.leader,
                   "term": status.term})
        }),
    })
}

/// The node's local copy of every shard, canonical (sorted maps), for comparing replicas:
/// `{"<part>": <shard JSON>}` (superadmin).
async fn dump(
    State(app): State<Arc<App>>,
    caller: extract::Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require_superadmin()?;
    let parts = coopr_state::encode_parts(&app.core.read());
    let mut out = serde_json::Map::new();
    for (part, bytes) in parts {
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        out.insert(part.to_string(), value);
    }
    Ok(Json(serde_json::Value::Object(out)))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.refresh_gauges();
    let body = app.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
