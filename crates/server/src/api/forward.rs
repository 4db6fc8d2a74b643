//! Any node accepts any request. Reads are served from the local copy; writes (and reads asking
//! `?consistency=strong`) must run on the DC log's leader, so a follower forwards them to the
//! leader's API and relays the answer. A forwarded request is never forwarded again: if the
//! receiver is not the leader either, the client gets a retryable 503.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::MAX_BODY_BYTES;
use crate::App;

/// Marks a request forwarded by a follower.
pub const FORWARDED_HEADER: &str = "coopr-forwarded-by";
/// Names the node that served the request.
pub const SERVED_BY_HEADER: &str = "coopr-served-by";

fn wants_strong_read(req: &Request) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "consistency=strong"))
}

fn unavailable(code: &str, message: String) -> Response {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
    e.retry_after_s = Some(1);
    e.into_response()
}

pub async fn route_to_leader(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // Internal calls answer for this node themselves (a pull says where the leader is).
    let local_only =
        matches!(path, "/status" | "/ready" | "/metrics") || path.starts_with("/internal/");
    // Views of what only the leader knows go to the leader like writes.
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD)
        && !super::replication::LEADER_PATHS.contains(&path);
    let strong = wants_strong_read(&req);
    let raft = app.core.raft();
    if local_only || (is_read && !strong) {
        return served_by(next.run(req).await, &app.config.node);
    }
    if raft.is_leader() {
        if strong {
            if let Err(e) = raft.read_barrier().await {
                return unavailable(
                    "no_quorum",
                    format!("cannot confirm leadership for a strong read: {e}"),
                );
            }
        }
        return served_by(next.run(req).await, &app.config.node);
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        return unavailable(
            "not_leader",
            "forwarded to a node that is not the leader".into(),
        );
    }
    let leader = raft.status().leader;
    let Some(target) = leader.and_then(|id| app.config.members.get(&id)) else {
        return unavailable(
            "no_leader",
            "the datacenter has no leader at the moment".into(),
        );
    };
    forward(&app, &target.api, req).await
}

fn served_by(mut response: Response, node: &str) -> Response {
    if !response.headers().contains_key(SERVED_BY_HEADER) {
        if let Ok(v) = HeaderValue::from_str(node) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(SERVED_BY_HEADER), v);
        }
    }
    response
}

/// Headers that describe one hop, not the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONNECTION
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
}

async fn forward(app: &App, base: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is too large",
            )
            .into_response()
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", base.trim_end_matches('/'), path_and_query);
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return ApiError::bad_request("bad_method", "unsupported method").into_response();
    };
    let mut request = app.forwarder.request(method, &url).body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    request = request.header(FORWARDED_HEADER, app.config.node.as_str());
    match request.send().await {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut builder = Response::builder().status(status);
            for (name, value) in answer.headers() {
                let name = name.as_str();
                if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                    builder = builder.header(name, value.as_bytes());
                }
            }
            match answer.bytes().await {
                Ok(bytes) => builder
                    .body(Body::from(bytes))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
                Err(e) => unavailable(
                    "leader_unreachable",
                    format!("the leader's answer was cut off: {e}"),
                ),
            }
        }
        Err(e) => unavailable(
            "leader_unreachable",
            format!("cannot reach the leader: {e}"),
        ),
    }
}
