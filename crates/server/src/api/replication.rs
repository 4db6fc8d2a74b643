//! Replication views for operators (superadmin):
//!
//! - `GET /v2/admin/shards`: the static shard map (owner and replicas of every shard).
//! - `GET /v2/admin/replication`: per shard, at the owner the replicas' cursors and what they
//!   lack (`unreplicated_records`, `unreplicated_age_ms`); at a replica its watermark and
//!   `lag_ms` (age of the oldest record it is known to lack). Served by the DC log's leader
//!   (followers forward), which runs the streams and answers the pulls.
//! - `GET /v2/admin/shards/{shard}/view`: this DC's copy of a shard as replicas see it (the
//!   owner's projection, or the replica's applied view) with its position, for comparisons.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use coopr_state::{Position, ReplicaShard};
use coopr_types::ShardId;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use crate::core::now_ms;
use crate::replication::shard_report;
use crate::App;

/// Paths answered by the DC log's leader (the in-memory stream state lives there).
pub const LEADER_PATHS: &[&str] = &["/v2/admin/replication"];

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2/admin/shards", get(shards))
        .route("/v2/admin/shards/{shard}/view", get(view))
        .route("/v2/admin/replication", get(replication))
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
    let lease = app.held_lease().map(|held| {
        json!({
            "sequence": held.lease.grant.sequence,
            "valid": held.lease.is_valid(crate::placement::group::mono_ms()),
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
        "lease": lease,
    })))
}

async fn replication(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let now = now_ms();
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
    let (role, position, view) = if owner == app.config.dc {
        let position = state
            .outbox(shard)
            .map_or(Position::START, |o| o.last_position());
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
