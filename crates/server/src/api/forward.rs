//! Any node accepts any request, in two routing steps:
//!
//! 1. **Across DCs.** A request under `/v2/clusters/{id}` for a cluster in a shard another DC
//!    owns goes to that DC (its nodes in turn on connection errors and 503s), all headers kept
//!    (`Idempotency-Key` included), marked `Coopr-Forwarded-Dc`: writes, `?consistency=strong`
//!    reads, reads with a `max_staleness_ms` the local copy cannot meet, and what is not
//!    replicated (plans). Other reads of such a cluster (`GET /v2/clusters/{id}`, `/status`,
//!    `/config`, `/services`) are served from the local replica copy. A request already
//!    forwarded across DCs is never forwarded again: a receiver that does not own the shard
//!    either answers a retryable 503 `not_owner`.
//! 2. **Within the DC.** Reads are served from the local copy; writes (and reads asking
//!    `?consistency=strong`) must run on the DC log's leader, so a follower forwards them to the
//!    leader's API and relays the answer. A request forwarded to the leader is never forwarded
//!    again: if the receiver is not the leader either, the client gets a retryable 503.
//!
//! Every answer says who served it (`Coopr-Served-By: <dc>/<node>`); reads of one cluster say
//! how stale the copy they came from may be (`Coopr-Staleness-Ms`, 0 for an owned cluster; see
//! [`crate::replication::staleness_ms`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use axum::body::Bytes;
use axum::http::request::Parts;
use coopr_types::{ClusterId, EntityKind, ShardId};

use super::error::ApiError;
use super::MAX_BODY_BYTES;
use crate::App;

/// Marks a request forwarded by a follower.
pub const FORWARDED_HEADER: &str = "coopr-forwarded-by";
/// Marks a request forwarded by another DC (its name): never forwarded across DCs again.
pub const FORWARDED_DC_HEADER: &str = "coopr-forwarded-dc";
/// Names the node that served the request: `<dc>/<node>`.
pub const SERVED_BY_HEADER: &str = "coopr-served-by";
/// How stale the copy a cluster read came from may be, in ms.
pub const STALENESS_HEADER: &str = "coopr-staleness-ms";

fn wants_strong_read(req: &Request) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "consistency=strong"))
}

/// The `max_staleness_ms` bound of a read, if any (an unreadable one counts as 0).
fn max_staleness_ms(req: &Request) -> Option<u64> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("max_staleness_ms="))
            .map(|v| v.parse().unwrap_or(0))
    })
}

/// The cluster a path under `/v2/clusters/{id}` names, and the rest of the path after the ID.
fn cluster_path(path: &str) -> Option<(ClusterId, &str)> {
    let rest = path.strip_prefix("/v2/clusters/")?;
    let (id, sub) = rest.split_once('/').unwrap_or((rest, ""));
    Some((id.parse().ok()?, sub))
}

/// Paths of the global shard's records (tenants, API keys, catalog, user profiles): writes to
/// them go to the global shard's owner DC; reads are served from the local copy.
fn global_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return false;
    };
    let first = rest.split('/').next().unwrap_or_default();
    matches!(
        first,
        "import" | "export" | "tenants" | "profile" | "plugins"
    ) || EntityKind::parse(first).is_some()
}

/// Whether the request's tenant (as named, not yet authenticated: the receiver checks) has a
/// cluster or node quota.
fn has_quota(app: &App, req: &Request) -> bool {
    let Some(tenant) = req
        .headers()
        .get("coopr-tenantid")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let state = app.core.read();
    app.global(&state)
        .tenants
        .get(tenant.trim())
        .is_some_and(|t| {
            t.max_clusters != coopr_types::UNLIMITED || t.max_nodes != coopr_types::UNLIMITED
        })
}

/// Reads of a cluster that a replica copy can answer.
fn replica_readable(sub: &str) -> bool {
    matches!(sub, "" | "status" | "config" | "services")
}

fn unavailable(code: &str, message: String) -> Response {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
    e.retry_after_s = Some(1);
    e.into_response()
}

/// Whether a path is in normal form: no `.` or `..` segment, no backslash, and no
/// percent-encoded dot, slash or backslash. The router matches paths as they are, but the HTTP
/// client that forwards a request resolves dot segments, so `/v2/clusters/1/../../../status`
/// would reach another path at the receiver than the one routed here.
fn is_normalized(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.contains('\\')
        && !["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        && path
            .split('/')
            .all(|segment| segment != "." && segment != "..")
}

pub async fn route_to_leader(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !is_normalized(path) {
        return ApiError::bad_request(
            "invalid_path",
            "the path has dot segments or encoded separators",
        )
        .into_response();
    }
    // Internal calls answer for this node themselves (a pull says where the leader is).
    let local_only = matches!(path, "/status" | "/v2/status" | "/ready" | "/metrics")
        || path.starts_with("/internal/");
    // Views of what only the leader knows go to the leader like writes.
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD)
        && !super::replication::LEADER_PATHS.contains(&path);
    let strong = wants_strong_read(&req);
    let cluster = if local_only { None } else { cluster_path(path) };
    // Tenants, keys and catalog live in the global shard: writes go to its owner DC. So do
    // creates of a tenant with a quota: the global owner's log orders them (see
    // `State::create_cluster`).
    let global_write = !is_read && global_path(path);
    let quota_create = *req.method() == Method::POST
        && path == "/v2/clusters"
        && app.config.multi_dc()
        && has_quota(&app, &req);
    if !local_only && (global_write || quota_create) && !app.owns(ShardId::GLOBAL) {
        if req.headers().contains_key(FORWARDED_DC_HEADER) {
            return unavailable(
                "not_owner",
                format!(
                    "datacenter {} does not own the global shard; it was forwarded here by another datacenter",
                    app.config.dc
                ),
            );
        }
        return forward_to_owner(&app, ShardId::GLOBAL, req).await;
    }
    let mut staleness = None;
    if let Some((id, sub)) = cluster {
        let shard = id.shard(app.config.shard_count);
        if !app.owns(shard) {
            let stale = app.staleness_ms(shard);
            let bound_met = max_staleness_ms(&req).is_none_or(|max| stale <= max);
            if is_read && !strong && bound_met && replica_readable(sub) {
                let response = next.run(req).await;
                return with_staleness(served_by(response, &app.served_by()), stale);
            }
            if req.headers().contains_key(FORWARDED_DC_HEADER) {
                return unavailable(
                    "not_owner",
                    format!(
                        "datacenter {} does not own cluster {id}; it was forwarded here by another datacenter",
                        app.config.dc
                    ),
                );
            }
            return forward_to_owner(&app, shard, req).await;
        }
        if is_read {
            staleness = Some(0);
        }
    }
    let raft = app.core.raft();
    if local_only || (is_read && !strong) {
        let response = served_by(next.run(req).await, &app.served_by());
        return match staleness {
            Some(ms) => with_staleness(response, ms),
            None => response,
        };
    }
    if raft.is_leader() {
        if let (Some((id, _)), false) = (cluster, is_read) {
            if app.config.multi_dc() && !req.headers().contains_key(FORWARDED_DC_HEADER) {
                let shard = id.shard(app.config.shard_count);
                return write_rerouted_if_moved(&app, shard, req, next).await;
            }
        }
        if strong {
            if let Err(e) = raft.read_barrier().await {
                return unavailable(
                    "no_quorum",
                    format!("cannot confirm leadership for a strong read: {e}"),
                );
            }
        }
        let response = served_by(next.run(req).await, &app.served_by());
        return match staleness {
            Some(ms) => with_staleness(response, ms),
            None => response,
        };
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

/// Runs a write to a cluster this DC owned by its map. If fencing refuses it because the
/// shard moved (`not_owner`, `stale_epoch`: this node's map was stale), the map is refreshed
/// and the write goes to the new owner, transparently to the client.
async fn write_rerouted_if_moved(app: &App, shard: ShardId, req: Request, next: Next) -> Response {
    let (parts, body) = match buffered(req).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    // The local state holds the shard as a replica: it was handed over (or not adopted yet);
    // the handlers would not even find the cluster.
    if app.core.read().replica(shard).is_some() {
        crate::placement::lease::refresh_now(app).await;
        if !app.owns(shard) {
            app.rerouted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return forward_buffered(app, shard, &parts, body).await;
        }
        return unavailable(
            "stale_epoch",
            format!("shard {shard} is being adopted by this datacenter; retry"),
        );
    }
    let response = next.run(rebuild(&parts, body.clone())).await;
    if response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return served_by(response, &app.served_by());
    }
    let (response, code) = error_code(response).await;
    if !matches!(code.as_deref(), Some("not_owner" | "stale_epoch")) {
        return served_by(response, &app.served_by());
    }
    crate::placement::lease::refresh_now(app).await;
    if app.owns(shard) {
        return served_by(response, &app.served_by());
    }
    app.rerouted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    forward_buffered(app, shard, &parts, body).await
}

/// A request again from its buffered parts.
fn rebuild(parts: &Parts, body: Bytes) -> Request {
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version);
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let mut request = builder
        .body(Body::from(body))
        .unwrap_or_else(|_| Request::new(Body::empty()));
    // Routing state (matched path, path parameters) travels in the extensions.
    *request.extensions_mut() = parts.extensions.clone();
    request
}

fn with_staleness(mut response: Response, ms: u64) -> Response {
    if !response.headers().contains_key(STALENESS_HEADER) {
        response.headers_mut().insert(
            HeaderName::from_static(STALENESS_HEADER),
            HeaderValue::from(ms),
        );
    }
    response
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

/// A request read whole, so that it can be sent more than once.
async fn buffered(req: Request) -> Result<(Parts, Bytes), Response> {
    let (parts, body) = req.into_parts();
    let limit = super::plugins::body_limit(parts.uri.path());
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok((parts, b)),
        Err(_) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is too large",
        )
        .into_response()),
    }
}

/// Why a forwarded request got no answer.
struct SendError {
    /// The connection could not be made: the request certainly did not arrive.
    connect: bool,
    message: String,
}

/// Sends the request to `base` with the `mark` header added and relays the answer.
async fn send(
    app: &App,
    base: &str,
    parts: &Parts,
    body: Bytes,
    mark: (&'static str, &str),
) -> Result<Response, SendError> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", base.trim_end_matches('/'), path_and_query);
    let mut call = coopr_raft::Call {
        method: parts.method.clone(),
        url,
        headers: axum::http::HeaderMap::new(),
        body,
        timeout: None,
    };
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            call.headers.append(name.clone(), value.clone());
        }
    }
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(mark.0.as_bytes()),
        HeaderValue::from_str(mark.1),
    ) {
        call.headers.insert(name, value);
    }
    let answer = app.transport.call(call).await.map_err(|e| SendError {
        connect: e.not_delivered(),
        message: e.to_string(),
    })?;
    let mut builder = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        let name = name.as_str();
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            builder = builder.header(name, value.as_bytes());
        }
    }
    Ok(builder
        .body(Body::from(answer.body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
}

/// Forwards a request to this DC's leader.
async fn forward(app: &App, base: &str, req: Request) -> Response {
    let (parts, body) = match buffered(req).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    match send(
        app,
        base,
        &parts,
        body,
        (FORWARDED_HEADER, app.config.node.as_str()),
    )
    .await
    {
        Ok(response) => response,
        Err(e) => unavailable(
            "leader_unreachable",
            format!("cannot reach the leader: {}", e.message),
        ),
    }
}

/// Whether a 503's code says the request was certainly not applied (so that sending a write
/// without an `Idempotency-Key` to another node cannot apply it twice).
fn not_applied(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("no_leader" | "not_leader" | "leader_unreachable" | "not_owner")
    )
}

/// Codes of a 503 by which a DC says it may not write the shard (fencing): the map the
/// request was routed by is stale. The write was not applied.
const FENCED_CODES: [&str; 4] = ["not_owner", "stale_epoch", "handing_over", "unknown_shard"];

/// How many times a request follows a changed owner before giving up.
const MAX_OWNER_CHANGES: usize = 3;

/// Forwards a request to the DC that owns `shard` in this node's map. If that DC refuses it by
/// fencing (it lost the shard), the map is refreshed from the placement group and the request
/// goes to the new owner, transparently to the client.
async fn forward_to_owner(app: &App, shard: ShardId, req: Request) -> Response {
    match buffered(req).await {
        Ok((parts, body)) => forward_buffered(app, shard, &parts, body).await,
        Err(response) => response,
    }
}

async fn forward_buffered(app: &App, shard: ShardId, parts: &Parts, body: Bytes) -> Response {
    let mut owner = app.placement().owner(shard).to_string();
    let mut attempt = 0;
    loop {
        let response = forward_to_dc(app, &owner, parts, body.clone()).await;
        if response.status() != StatusCode::SERVICE_UNAVAILABLE || attempt >= MAX_OWNER_CHANGES {
            return response;
        }
        let (response, code) = error_code(response).await;
        if !code.as_deref().is_some_and(|c| FENCED_CODES.contains(&c)) {
            return response;
        }
        crate::placement::lease::refresh_now(app).await;
        let current = app.placement().owner(shard).to_string();
        if current == owner || current == app.config.dc {
            // Nothing newer known (or the shard moved here: the client retries and is served
            // locally).
            return response;
        }
        tracing::info!(%shard, from = %owner, to = %current, "owner changed; forwarding to the new owner");
        metrics::counter!("coopr_forwards_rerouted_total").increment(1);
        app.rerouted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        owner = current;
        attempt += 1;
    }
}

/// The `code` of an error response, and the response given back.
async fn error_code(response: Response) -> (Response, Option<String>) {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string));
    (Response::from_parts(parts, Body::from(bytes)), code)
}

/// Forwards a request to a DC: its nodes in turn while they cannot be reached or answer 503
/// (the receiver forwards to its own leader itself). A request that may have been applied (no
/// answer after connecting, or a 503 other than "no leader here") is sent again only when
/// repeating it is safe (a read, or a write carrying an `Idempotency-Key`).
async fn forward_to_dc(app: &App, dc: &str, parts: &Parts, body: Bytes) -> Response {
    let Some(nodes) = app.config.remote_dcs.get(dc) else {
        return unavailable(
            "owner_unknown",
            format!("datacenter {dc} owns the shard but its nodes are not configured"),
        );
    };
    let repeatable = matches!(parts.method, Method::GET | Method::HEAD)
        || parts.headers.contains_key("idempotency-key");
    let mut last_unavailable = None;
    let mut last_error = String::from("no node answered");
    for node in nodes {
        let mark = (FORWARDED_DC_HEADER, app.config.dc.as_str());
        // One stage of a forwarded write (the benchmarks' breakdown): the call to the owner
        // DC, both link crossings and its handling included.
        let started = tokio::time::Instant::now();
        let sent = send(app, &node.api, parts, body.clone(), mark).await;
        metrics::histogram!("coopr_forward_to_dc_seconds").record(started.elapsed().as_secs_f64());
        match sent {
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                let (response, code) = error_code(response).await;
                if code.as_deref().is_some_and(|c| FENCED_CODES.contains(&c)) {
                    // The DC itself refused the shard: its other nodes would too.
                    return response;
                }
                let retry = repeatable || not_applied(code.as_deref());
                if !retry {
                    return response;
                }
                tracing::debug!(%dc, node = %node.node, "owner node unavailable; trying the next");
                last_unavailable = Some(response);
            }
            Ok(response) => return response,
            Err(e) if e.connect || repeatable => {
                tracing::debug!(%dc, node = %node.node, error = %e.message, "owner node unreachable; trying the next");
                last_error = format!("{}: {}", node.node, e.message);
            }
            Err(e) => {
                return unavailable(
                    "owner_unreachable",
                    format!(
                        "datacenter {dc} did not answer (the request may have been applied; retry with an Idempotency-Key): {}",
                        e.message
                    ),
                )
            }
        }
    }
    last_unavailable.unwrap_or_else(|| {
        unavailable(
            "owner_unreachable",
            format!("cannot reach datacenter {dc}, which owns the shard: {last_error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths under `/v2/clusters/{id}` name their cluster; others (and bad IDs) do not.
    #[test]
    fn only_normalized_paths_are_routed() {
        assert!(is_normalized("/v2/clusters/00000001/services/zk/start"));
        assert!(is_normalized("/status") && is_normalized("/v2/clustertemplates/a.b"));
        for bad in [
            "/v2/clusters/00000001/../../../status",
            "/v2/clusters/00000001/./status",
            "/v2/clusters/00000001/%2e%2e/%2E%2E/status",
            "/v2/clusters/00000001%2f..%2fstatus",
            "/v2/clusters/00000001\\..\\status",
            "/v2/clusters/..",
        ] {
            assert!(!is_normalized(bad), "{bad}");
        }
    }

    #[test]
    fn cluster_paths_name_their_cluster() {
        assert_eq!(
            cluster_path("/v2/clusters/00000079"),
            Some((ClusterId(79), ""))
        );
        assert_eq!(
            cluster_path("/v2/clusters/00000079/services/zk/start"),
            Some((ClusterId(79), "services/zk/start"))
        );
        assert_eq!(cluster_path("/v2/clusters"), None);
        assert_eq!(cluster_path("/v2/clusters/dev"), None);
        assert_eq!(cluster_path("/v2/clustertemplates/x"), None);
        assert!(replica_readable("status") && !replica_readable("plans"));
        assert!(global_path("/v2/tenants") && global_path("/v2/tenants/t1/apikeys"));
        assert!(global_path("/v2/import") && global_path("/v2/clustertemplates/lamp/2"));
        assert!(!global_path("/v2/clusters") && !global_path("/v2/provisioners/p1"));
        assert!(!global_path("/v2/tasks/take") && !global_path("/status"));
        assert!(global_path("/v2/partialtemplates") && global_path("/v2/partialtemplates/p/1"));
        assert!(global_path("/v2/profile"));
        assert!(global_path("/v2/plugins/sync") && global_path("/v2/plugins/automatortypes/x"));
        assert!(!global_path("/v2/metrics/queues") && !global_path("/v2/resolve"));
    }

    #[test]
    fn staleness_bounds_are_read_from_the_query() {
        let req = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
        assert_eq!(max_staleness_ms(&req("/v2/clusters/1")), None);
        assert_eq!(
            max_staleness_ms(&req("/v2/clusters/1?a=b&max_staleness_ms=250")),
            Some(250)
        );
        assert_eq!(
            max_staleness_ms(&req("/v2/clusters/1?max_staleness_ms=x")),
            Some(0)
        );
        assert!(wants_strong_read(&req("/v2/clusters/1?consistency=strong")));
    }
}
