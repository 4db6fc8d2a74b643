//! Replication views for operators (superadmin):
//!
//! - `GET /v2/admin/shards`: the shard map (owner, replicas, epoch, status of every shard), the
//!   DC leases, this DC's lease, the ownership history and the DCs under maintenance, as the
//!   placement group has them.
//! - `POST /v2/admin/shards/{shard}/handover` `{"to": DC}` and `.../handover/abort`: graceful
//!   handover of a cluster shard (see [`crate::placement`]).
//! - `POST /v2/admin/dcs/{dc}/drain` and `.../undrain` `{"dry_run": bool}`: planned
//!   maintenance of a DC (its shards handed to other DCs, or its home shards handed back, a
//!   few at a time by the placement leader); answers the plan, per shard the target and what
//!   blocks it.
//! - `GET /v2/admin/replication`: per shard, at the owner the replicas' cursors and what they
//!   lack (`unreplicated_records`, `unreplicated_age_ms`); at a replica its watermark and
//!   `lag_ms` (age of the oldest record it is known to lack). Served by the DC log's leader
//!   (followers forward), which runs the streams and answers the pulls.
//! - `GET /v2/admin/shards/{shard}/view`: this DC's copy of a shard as replicas see it (the
//!   owner's projection, or the replica's applied view) with its position, for comparisons.
//! - `GET /v2/admin/lost-operations`: what this DC wrote as a shard's owner after another DC
//!   took the shard over (never replicated), found when it learned of the takeover.
//! - `GET /v2/admin/dcs`: every node of every DC as it answers for itself (`/v2/status` and
//!   `/ready`, asked at once with a short timeout), or unreachable.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use coopr_state::{Position, ReplicaShard};
use coopr_types::ShardId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use crate::replication::shard_report;
use crate::App;

/// Paths answered by the DC log's leader (the in-memory stream state lives there).
pub const LEADER_PATHS: &[&str] = &["/v2/admin/replication"];

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    super::routes::Routes::new("admin")
        .route(
            "/v2/admin/shards",
            get(shards),
            &[(Method::GET, "The shard map: owners, replicas, epochs, phases, DC leases, ownership history (superadmin)")],
        )
        .route(
            "/v2/admin/shards/{shard}/view",
            get(view),
            &[(Method::GET, "This DC's copy of a shard and its position (superadmin)")],
        )
        .route(
            "/v2/admin/replication",
            get(replication),
            &[(Method::GET, "Replication per shard: cursors, lag, unreplicated records (superadmin)")],
        )
        .route(
            "/v2/admin/lost-operations",
            get(lost_operations),
            &[(Method::GET, "What this DC wrote as an owner after another DC took the shard over (superadmin)")],
        )
        .route(
            "/v2/admin/shards/{shard}/handover",
            post(start_handover),
            &[(Method::POST, "Hand a shard over to a replica DC, without loss (superadmin)")],
        )
        .route(
            "/v2/admin/shards/{shard}/handover/abort",
            post(abort_handover),
            &[(Method::POST, "Give up a handover in progress (superadmin)")],
        )
        .route(
            "/v2/admin/dcs",
            get(datacenters),
            &[(Method::GET, "Every node of every DC: its roles and readiness, or unreachable (superadmin)")],
        )
        .route(
            "/v2/admin/dcs/{dc}/drain",
            post(drain),
            &[(Method::POST, "Hand every shard of a DC over, a few at a time (superadmin)")],
        )
        .route(
            "/v2/admin/dcs/{dc}/undrain",
            post(undrain),
            &[(Method::POST, "End a DC's maintenance; its home shards come back (superadmin)")],
        )
}

#[derive(Deserialize)]
struct HandoverRequest {
    to: String,
}

/// Starts a graceful handover of a cluster shard to one of its replica DCs: the owner stops
/// taking new operations on it, lets running ones finish, freezes it and reports its last
/// position; once every replica has it, the target owns the shard in the next epoch (no data
/// is lost). Answers the shard's placement as the placement group has it now.
async fn start_handover(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(shard): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let shard = parse_shard(&app, &shard)?;
    let request: HandoverRequest = super::extract::parse_json(&body)?;
    if shard.is_global() {
        return Err(ApiError::bad_request(
            "global_shard",
            "the global shard cannot be handed over",
        ));
    }
    let to = coopr_placement::DcId::new(request.to);
    // The placement leader stamps the start with its clock.
    let command = coopr_placement::Command::StartHandover {
        shard,
        to,
        now_ms: 0,
        leader_since_ms: 0,
    };
    placement_command(&app, &command).await
}

/// Gives up a handover in progress; the owner writes the shard again after its next renewal.
async fn abort_handover(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(shard): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let shard = parse_shard(&app, &shard)?;
    let command = coopr_placement::Command::AbortHandover {
        shard,
        handover: None,
    };
    placement_command(&app, &command).await
}

/// Sends an administrative command to the placement group (any voter; they forward it to
/// their leader): 200 with the shard's placement, 409 with the reason it was rejected.
async fn placement_command(
    app: &App,
    command: &coopr_placement::Command,
) -> ApiResult<Json<Value>> {
    let answer = to_placement(app, crate::placement::group::COMMAND_PATH, command).await?;
    let outcome: coopr_placement::Outcome = answer
        .json()
        .map_err(|e| ApiError::unavailable("placement_unreadable", e.to_string()))?;
    match outcome {
        Ok(coopr_placement::Reply::Shard { shard, placement }) => {
            crate::placement::lease::refresh_now(app).await;
            // If this DC owns the shard, its leader learns of the handover at once.
            app.renew_now.notify_one();
            Ok(Json(
                json!({"shard": shard.to_string(), "placement": placement}),
            ))
        }
        Ok(other) => Ok(Json(json!({ "reply": other }))),
        Err(rejected) => Err(rejected_error(&rejected)),
    }
}

/// A command the placement group rejected: 409 with the rejection's name as the code.
fn rejected_error(rejected: &coopr_placement::Rejected) -> ApiError {
    let code = serde_json::to_value(rejected)
        .ok()
        .and_then(|v| v["rejected"].as_str().map(str::to_string))
        .unwrap_or_else(|| "rejected".into());
    ApiError::conflict(&code, rejected.to_string())
}

/// Posts `body` to `path` at a placement voter (which forwards it to its leader), trying the
/// voters in turn while none leads, for up to `write_timeout_ms`; the leader's 200 answer.
async fn to_placement(
    app: &App,
    path: &str,
    body: &impl serde::Serialize,
) -> ApiResult<coopr_raft::Answer> {
    if !app.config.multi_dc() {
        return Err(ApiError::bad_request(
            "single_dc",
            "a deployment of one DC has no placement group",
        ));
    }
    let secret = app.config.secret.clone().unwrap_or_default();
    let mut last_error = String::from("no placement voter configured");
    // A placement election takes a fraction of a second: keep asking the voters for a while.
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(app.config.write_timeout_ms);
    loop {
        for member in app.config.placement_members.values() {
            let url = format!("{}{path}", member.internal.trim_end_matches('/'));
            let call = coopr_raft::Call::json(&url, body)
                .header(crate::replication::SECRET_HEADER, &secret)
                .timeout(std::time::Duration::from_secs(30));
            let answer = app.transport.call(call).await;
            // Asked again (here or at another voter) only when the command certainly was not
            // applied: repeating an applied StartHandover would start another handover.
            match answer {
                Ok(a) if a.status.is_success() => return Ok(a),
                Ok(a) => {
                    let status = a.status;
                    let body: Value = a.json().unwrap_or_default();
                    let code = body["code"].as_str().unwrap_or_default().to_string();
                    if !matches!(
                        code.as_str(),
                        "no_leader" | "not_leader" | "leader_unreachable" | "leader_starting"
                    ) {
                        return Err(ApiError::unavailable(
                            "placement_unavailable",
                            format!(
                                "{url} answered {status} {body}; the command may have been applied: see GET /v2/admin/shards"
                            ),
                        ));
                    }
                    last_error = format!("{url} answered {status} {code}");
                }
                Err(e) if e.not_delivered() => last_error = format!("{url}: {e}"),
                Err(e) => {
                    return Err(ApiError::unavailable(
                        "placement_unavailable",
                        format!(
                            "{url} did not answer ({e}); the command may have been applied: see GET /v2/admin/shards"
                        ),
                    ))
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "placement_unavailable",
                format!("no placement voter accepted the command: {last_error}"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    #[serde(default)]
    dry_run: bool,
}

async fn drain(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(dc): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    maintenance(&app, &caller, dc, &body, false).await
}

async fn undrain(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(dc): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    maintenance(&app, &caller, dc, &body, true).await
}

/// Drains a DC (hands every shard it owns to other DCs, a few at a time, and makes it no target
/// of handovers or takeovers) or undrains it (clears the mark and hands its home shards back, a
/// few at a time). Answers the plan: per shard where it goes and what blocks it; with
/// `{"dry_run": true}` only the plan. 404 `unknown_dc`, 400 `witness_dc` for a witness site.
async fn maintenance(
    app: &App,
    caller: &Caller,
    dc: String,
    body: &[u8],
    undrain: bool,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let request: MaintenanceBody = if body.iter().all(u8::is_ascii_whitespace) {
        MaintenanceBody::default()
    } else {
        super::extract::parse_json(body)?
    };
    if !app.config.multi_dc() {
        return Err(ApiError::bad_request(
            "single_dc",
            "a deployment of one DC has no placement group",
        ));
    }
    let map = app.placement();
    if !map.dcs().contains(&dc) {
        let witness = app.config.placement_members.values().any(|m| m.dc == dc);
        return Err(if witness {
            ApiError::bad_request(
                "witness_dc",
                format!("{dc} is a witness site: it holds no shards"),
            )
        } else {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_dc",
                format!("no datacenter is named {dc:?}"),
            )
        });
    }
    let path = crate::placement::group::MAINTENANCE_PATH;
    let request = crate::placement::group::MaintenanceRequest {
        dc: dc.clone(),
        undrain,
        dry_run: request.dry_run,
    };
    let answer = to_placement(app, path, &request).await?;
    let answer: crate::placement::group::MaintenanceAnswer = answer
        .json()
        .map_err(|e| ApiError::unavailable("placement_unreadable", e.to_string()))?;
    let maintenance = match answer.outcome {
        Ok(coopr_placement::Reply::Maintenance { maintenance, .. }) => maintenance,
        Ok(other) => {
            return Err(ApiError::unavailable(
                "placement_unreadable",
                format!("unexpected reply {other:?}"),
            ))
        }
        Err(rejected) => return Err(rejected_error(&rejected)),
    };
    if !request.dry_run {
        crate::placement::lease::refresh_now(app).await;
    }
    Ok(Json(json!({
        "dc": dc,
        "action": if undrain { "undrain" } else { "drain" },
        "dry_run": request.dry_run,
        "maintenance": maintenance,
        "plan": answer.plan,
    })))
}

/// How long `GET /v2/admin/dcs` waits for each node (they are asked at once).
const NODE_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// A node's entry in `GET /v2/admin/dcs`, from its `/v2/status` answer and its readiness.
fn node_entry(
    dc: &str,
    node: &str,
    api: Option<&str>,
    status: &Value,
    ready: bool,
    reason: Option<Value>,
) -> Value {
    json!({
        "dc": dc, "node": node, "api": api, "reachable": true,
        "role": status["role"], "leader": status["leader"], "term": status["term"],
        "placement_role": status["placement"]["role"],
        "lease_remaining_ms": status["lease_remaining_ms"],
        "ready": ready, "reason": reason,
    })
}

/// One node as it answers for itself; `reachable: false` when it does not answer in time.
async fn node_status(app: &App, dc: &str, node: &str, api: &str) -> Value {
    let base = api.trim_end_matches('/');
    let ask = |path: &str| {
        app.transport.call(
            coopr_raft::transport::Call::get(format!("{base}{path}")).timeout(NODE_STATUS_TIMEOUT),
        )
    };
    let (status, ready) = tokio::join!(ask("/v2/status"), ask("/ready"));
    match status.ok().and_then(|a| a.json::<Value>().ok()) {
        Some(status) => {
            let ready = ready.ok();
            node_entry(
                dc,
                node,
                Some(base),
                &status,
                ready.as_ref().is_some_and(|a| a.status == 200),
                ready
                    .and_then(|a| a.json::<Value>().ok())
                    .map(|b| b["reason"].clone()),
            )
        }
        None => json!({"dc": dc, "node": node, "api": base, "reachable": false}),
    }
}

async fn datacenters(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    // This node answers from here; every other one (of this DC, then the other DCs) is asked.
    let mut asked = Vec::new();
    for member in app.config.members.values() {
        if member.node != app.config.node {
            asked.push((
                app.config.dc.clone(),
                member.node.clone(),
                member.api.clone(),
            ));
        }
    }
    for (dc, members) in &app.config.remote_dcs {
        for member in members {
            asked.push((dc.clone(), member.node.clone(), member.api.clone()));
        }
    }
    let mut asking = tokio::task::JoinSet::new();
    for (n, (dc, node, api)) in asked.into_iter().enumerate() {
        let app = app.clone();
        asking.spawn(async move { (n, node_status(&app, &dc, &node, &api).await) });
    }
    let mut answers: Vec<(usize, Value)> = asking.join_all().await;
    answers.sort_by_key(|(n, _)| *n);
    let answers = answers.into_iter().map(|(_, answer)| answer);
    let here = super::status_json(&app);
    let ready = super::ready::ready(
        State(app.clone()),
        axum::extract::Query(super::ready::ReadyQuery::default()),
    )
    .await;
    let ready_ok = ready.status() == axum::http::StatusCode::OK;
    let reason = axum::body::to_bytes(ready.into_body(), 64 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|b| b["reason"].clone());
    let mut this = node_entry(
        &app.config.dc,
        &app.config.node,
        None,
        &here,
        ready_ok,
        reason,
    );
    this["this"] = json!(true);
    let mut nodes = vec![this];
    nodes.extend(answers);
    Ok(Json(json!({ "dc": app.config.dc, "nodes": nodes })))
}

fn parse_shard(app: &App, text: &str) -> ApiResult<ShardId> {
    let shard = if text == "global" {
        ShardId::GLOBAL
    } else {
        text.parse::<u32>()
            .ok()
            .filter(|s| *s < app.config.shard_count)
            .map(ShardId)
            .ok_or_else(|| ApiError::not_found("shard", text))?
    };
    Ok(shard)
}

async fn shards(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let placement = app.placement();
    let state = app.placement_state();
    let shards: Vec<Value> = placement
        .shards()
        .map(|s| {
            let entry = placement.entry(s);
            json!({
                "shard": s.to_string(),
                "owner": entry.owner,
                "replicas": entry.replicas,
                "epoch": entry.epoch,
                "status": entry.status,
            })
        })
        .collect();
    let leases: Value = state
        .as_ref()
        .map(|s| json!(s.leases().values().collect::<Vec<_>>()))
        .unwrap_or(Value::Null);
    let history: Value = state
        .as_ref()
        .map(|s| json!(s.history().collect::<Vec<_>>()))
        .unwrap_or_else(|| json!([]));
    let maintenance: Value = state
        .as_ref()
        .map(|s| json!(s.maintenance()))
        .unwrap_or_else(|| json!({}));
    let lease = app.held_lease().map(|held| {
        json!({
            "sequence": held.lease.grant.sequence,
            "valid": held.lease.is_valid(app.clock.mono_ms()),
            "owned": held.lease.grant.owned,
        })
    });
    Ok(Json(json!({
        "dc": app.config.dc,
        "dcs": placement.dcs(),
        "shard_count": placement.shard_count(),
        "shards": shards,
        "leases": leases,
        "history": history,
        "maintenance": maintenance,
        "lease": lease,
    })))
}

async fn replication(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let now = app.clock.wall_ms();
    let state = app.core.read();
    let placement = app.placement();
    let shards: Vec<Value> = placement
        .shards()
        .map(|s| shard_report(&app.config.dc, &placement, &state, &app.replication, s, now))
        .collect();
    Ok(Json(json!({
        "dc": app.config.dc,
        "node": app.config.node,
        "leader": app.core.raft().is_leader(),
        "shards": shards,
    })))
}

/// This DC's lost-operations report: per record the shard, old epoch and seq, tenant, cluster,
/// job, operation kind and commit time, the new owner and the takeover point, and a lost
/// operation's `Idempotency-Key` (scoped) if it had one. Part of the DC's
/// replicated state, so any node answers the same.
async fn lost_operations(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let state = app.core.read();
    let (operations, total) = state.lost_operations();
    let operations: Vec<_> = operations.collect();
    Ok(Json(json!({
        "dc": app.config.dc,
        "total": total,
        "kept": operations.len(),
        "operations": operations,
    })))
}

async fn view(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(shard): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let shard = parse_shard(&app, &shard)?;
    let placement = app.placement();
    let owner = placement.owner(shard);
    let state = app.core.read();
    // Owned here: the map says so and the local state holds no replica copy (a shard handed
    // over is a replica here from its release on, and owned from its adoption on).
    let (role, position, view) = if owner == app.config.dc && state.replica(shard).is_none() {
        let position = state
            .outbox(shard)
            .map_or(Position::START, |o| o.history_position());
        ("owner", position, state.replicated_view(shard))
    } else {
        match state.replica(shard) {
            Some(replica) => ("replica", replica.watermark, replica.view()),
            None => (
                "replica",
                Position::START,
                ReplicaShard::new(shard, owner).view(),
            ),
        }
    };
    Ok(Json(json!({
        "shard": shard.to_string(),
        "dc": app.config.dc,
        "owner": owner,
        "role": role,
        "position": position,
        "view": view,
    })))
}
