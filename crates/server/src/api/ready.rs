//! `GET /ready`: whether a client's write sent to this node now would be accepted (on the DC
//! log's leader) or forwarded to a leader that accepts it (on a follower). Load balancers
//! health-check it, so it must turn 503 on every node of a DC that cannot write, and stay 200
//! on nodes that can (a read-only node in the pool would fail every write sent to it).
//!
//! ```text
//!  any node: every supervised loop running (none down or crash looping)?   -> else 503
//!  leader:   seeded? && heard from a majority of the DC within an election timeout?
//!            && (multi-DC) holds a valid lease?                        -> 200 / 503
//!  follower: seeded? && knows a leader? && GET <leader>/ready?from_follower=true is 200
//!            within READY_LEADER_TIMEOUT? && applied within READY_MAX_LAG_ENTRIES
//!            of the leader's applied index?                            -> 200 / 503
//! ```
//!
//! Why a follower asks its leader: a follower cannot see the DC's lease (only the leader holds
//! it) nor whether the leader still reaches a majority, and both decide whether the writes it
//! forwards succeed. Asking costs one local request per health check.
//!
//! Why "within N entries of the leader": a restarted node serves reads from its local copy,
//! which is its last snapshot until the leader's appends arrive (see `coopr_raft`'s
//! `persist_committed`). It should take traffic only once that copy is about as recent as the
//! leader's; it need not be exactly as recent (reads on followers are stale by design, and a
//! follower under load always trails by the entries in flight), so a fixed slack keeps a busy
//! follower from flapping in and out of the pool. A leader has nothing to catch up with: it
//! applies every committed entry before it answers a write.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::App;

/// How long a follower waits for its leader's readiness; health checkers give up after about a
/// second, and an answer that slow means the leader is not serving anyway.
pub const READY_LEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// How many DC-log entries a follower may trail its leader's applied index and still be ready
/// (see the module doc). Each entry is a batch of writes; a follower keeping up trails by the
/// two batches in flight at most, a restarted one by everything written while it was down.
pub const READY_MAX_LAG_ENTRIES: u64 = 100;

#[derive(Deserialize, Default)]
pub struct ReadyQuery {
    /// Set by a follower asking its leader: answer for this node alone, never ask another.
    #[serde(default)]
    from_follower: bool,
}

/// Why a node is not ready, in the answer's `reason` (for operators; checkers use the status).
fn not_ready(body: &mut Value, reason: &str) {
    body["ready"] = json!(false);
    body["reason"] = json!(reason);
}

pub async fn ready(State(app): State<Arc<App>>, Query(query): Query<ReadyQuery>) -> Response {
    let raft = app.core.raft().status();
    let seeded = crate::seed::is_seeded(&app, &app.global(&app.core.read()));
    let mut body = json!({
        "ready": true, "dc": app.config.dc, "node": app.config.node,
        "leader_id": raft.leader, "seeded": seeded, "last_applied": raft.last_applied,
    });
    // A node whose driver, lease loop or puller died would accept writes it cannot carry
    // through (jobs that never time out, a lease that runs out, replicas that fall behind).
    let unhealthy = app.loops.unhealthy();
    if !unhealthy.is_empty() {
        body["loops"] = json!(unhealthy
            .iter()
            .map(|(name, why)| json!({"loop": name, "state": why}))
            .collect::<Vec<_>>());
    }
    if let Some((name, why)) = unhealthy.first() {
        not_ready(&mut body, &format!("loop_{why}: {name}"));
    } else if !seeded {
        not_ready(&mut body, "not_seeded");
    } else if app.core.raft().is_leader() {
        leader_checks(&app, &raft, &mut body);
    } else if query.from_follower {
        not_ready(&mut body, "not_leader");
    } else {
        follower_checks(&app, &raft, &mut body).await;
    }
    let status = if body["ready"] == json!(true) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The leader can acknowledge a write now: it heard from a majority of its DC within an
/// election timeout (else writes end in 503 `no_quorum`) and, with several DCs, holds a valid
/// lease (else 503 `lease_expired`).
fn leader_checks(app: &App, raft: &coopr_raft::RaftStatus, body: &mut Value) {
    let quorum = raft
        .millis_since_quorum_ack
        .is_some_and(|ms| ms <= app.config.election_timeout_ms.1);
    let leased = app.has_valid_lease();
    body["quorum"] = json!(quorum);
    body["lease"] = json!(leased);
    if !quorum {
        not_ready(body, "no_quorum");
    } else if !leased {
        not_ready(body, "lease_expired");
    }
}

/// The follower's leader is ready and the follower's copy is recent enough.
async fn follower_checks(app: &App, raft: &coopr_raft::RaftStatus, body: &mut Value) {
    let Some(api) = raft
        .leader
        .and_then(|id| app.config.members.get(&id))
        .map(|m| m.api.trim_end_matches('/').to_string())
    else {
        return not_ready(body, "no_leader");
    };
    let answer = app
        .transport
        .call(
            coopr_raft::Call::get(format!("{api}/ready?from_follower=true"))
                .timeout(READY_LEADER_TIMEOUT),
        )
        .await;
    let leader: Value = match answer {
        Ok(r) if r.status.is_success() => r.json().unwrap_or(Value::Null),
        Ok(r) => {
            let reason = r
                .json::<Value>()
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            return not_ready(body, &format!("leader_not_ready: {reason}"));
        }
        Err(_) => return not_ready(body, "leader_unreachable"),
    };
    let Some(leader_applied) = leader["last_applied"].as_u64() else {
        return not_ready(body, "leader_not_ready: no applied index");
    };
    let lag = leader_applied.saturating_sub(raft.last_applied.unwrap_or(0));
    body["leader_applied"] = json!(leader_applied);
    body["lag_entries"] = json!(lag);
    if lag > READY_MAX_LAG_ENTRIES {
        not_ready(body, "catching_up");
    }
}
