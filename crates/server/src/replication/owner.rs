//! The owner side: `POST /internal/replication/pull`, answered by the DC log's leader only.
//!
//! ```text
//!  check Coopr-Cluster-Secret (401), the asking DC (403), leadership (503 + leader_api)
//!  remember the replica's cursors (its committed watermarks: what it lacks, for the reports)
//!  loop: notified = Core::applied.notified()      <- registered before reading, so no commit
//!        batches = records after each cursor          between the read and the wait is missed
//!        any record or error, or wait_ms passed? answer
//!        wait for notified | wait_ms | leadership change | shutdown
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use coopr_state::Command;

use super::{
    read_batch, trim_point, PullRequest, PullResponse, SeedRequest, PULL_PATH, SECRET_HEADER,
    SEED_PATH,
};
use crate::api::error::ApiError;
use crate::App;

/// Longest a pull may ask to wait (a replica's HTTP timeout must exceed what it asks for).
pub const MAX_WAIT_MS: u64 = 60_000;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(PULL_PATH, post(pull))
        .route(SEED_PATH, post(seed))
}

/// Whether the puller accepts a deflated answer (`Accept-Encoding: deflate`).
fn accepts_deflate(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().unwrap_or_default().trim() == "deflate")
}

/// The API URL of this DC's leader, if known.
fn leader_api(app: &App) -> Option<String> {
    let leader = app.core.raft().status().leader?;
    app.config.members.get(&leader).map(|m| m.api.clone())
}

fn not_leader(app: &App) -> Response {
    let leader_node = app
        .core
        .raft()
        .status()
        .leader
        .and_then(|id| app.config.members.get(&id))
        .map(|m| m.node.clone());
    let body = json!({
        "code": "not_leader",
        "message": format!("{} is not the leader of DC {}", app.config.node, app.config.dc),
        "leader_api": leader_api(app),
        "leader_node": leader_node,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Checks an internal replication call: the cluster secret (401), the body (400), the asking
/// DC (403: another DC of this deployment), and that this node leads its DC (503 with a hint).
fn authorized<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    asker: impl FnOnce(&T) -> &str,
) -> Result<T, Box<Response>> {
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Without a configured secret nobody may pull (a DC alone has nothing to serve).
    let Some(secret) = app.config.secret.as_deref() else {
        return Err(Box::new(
            ApiError::unauthorized("replication is not configured on this node").into_response(),
        ));
    };
    if !coopr_raft::same_secret(given, secret.as_bytes()) {
        tracing::warn!("replication call with a wrong or missing cluster secret");
        return Err(Box::new(
            ApiError::unauthorized("wrong or missing cluster secret").into_response(),
        ));
    }
    let request: T =
        crate::api::extract::parse_json(body).map_err(|e| Box::new(e.into_response()))?;
    let dc = asker(&request);
    if dc == app.config.dc || !app.placement().dcs().iter().any(|d| d == dc) {
        return Err(Box::new(
            ApiError::forbidden(format!("{dc:?} is not a replica DC of this deployment"))
                .into_response(),
        ));
    }
    if !app.core.raft().is_leader() {
        return Err(Box::new(not_leader(app)));
    }
    Ok(request)
}

/// Answers `body` as JSON, deflated when the caller accepts it.
fn json_answer(headers: &HeaderMap, json: Vec<u8>) -> (Response, usize) {
    // Records are JSON: deflate shrinks them several times over on the WAN.
    let deflated = accepts_deflate(headers).then(|| super::deflate(&json));
    let is_deflated = deflated.is_some();
    let bytes = deflated.unwrap_or(json);
    let len = bytes.len();
    let mut answer = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response();
    if is_deflated {
        answer.headers_mut().insert(
            axum::http::header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("deflate"),
        );
    }
    (answer, len)
}

/// `POST /internal/replication/seed`: a snapshot of one shard this DC writes, as a replica
/// holds it (for a replica whose stream cannot continue from records).
async fn seed(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: SeedRequest = match authorized(&app, &headers, &body, |r: &SeedRequest| &r.dc) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let placement = app.placement();
    let shard = request.shard;
    if !(shard.is_global() || shard.0 < placement.shard_count())
        || placement.owner(shard) != app.config.dc
    {
        return ApiError::new(
            StatusCode::CONFLICT,
            "not_owner",
            format!("{} does not own shard {shard}", app.config.dc),
        )
        .into_response();
    }
    let seed = app.core.read().seed_of(shard, &app.config.dc);
    let Some(seed) = seed else {
        return ApiError::new(
            StatusCode::CONFLICT,
            "not_adopted",
            format!("{} has not adopted shard {shard} yet", app.config.dc),
        )
        .into_response();
    };
    let json = serde_json::to_vec(&seed).unwrap_or_default();
    let (answer, len) = json_answer(&headers, json);
    metrics::counter!("coopr_replication_seed_bytes_sent_total", "replica_dc" => request.dc.clone())
        .increment(len as u64);
    tracing::info!(%shard, replica_dc = %request.dc, bytes = len, "served a snapshot of a shard");
    answer
}

async fn pull(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    // How long the answer was held is read on the node's clock (the replica dates its copy by
    // it); the long poll's deadline is tokio's, like every sleep.
    let received_ms = app.clock.mono_ms();
    let request: PullRequest = match authorized(&app, &headers, &body, |r: &PullRequest| &r.dc) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let placement = app.placement();
    // Only shards this DC owns and the asker replicates; the rest are not ours to answer.
    let cursors: Vec<_> = {
        let state = app.core.read();
        request
            .cursors
            .iter()
            .filter(|(shard, _)| {
                (shard.is_global() || shard.0 < placement.shard_count())
                    && placement.owner(**shard) == app.config.dc
            })
            // A shard this DC was handed but has not adopted yet is not served: its outbox is
            // not the shard's (the replica asks again).
            .filter(|(shard, _)| !state.replicas.contains_key(*shard))
            .map(|(s, c)| (*s, *c))
            .collect()
    };
    app.replication
        .record_cursors(&request.dc, &request.cursors);
    let max_records = request.max_records.clamp(1, 100_000);
    let wait = Duration::from_millis(request.wait_ms.min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut leader = app.core.raft().watch_leader();
    let mut stopping = app.stopping.clone();
    loop {
        // Registered before the read: a commit after the read wakes this wait.
        let applied = app.core.applied.notified();
        let mut released = false;
        let response = {
            let state = app.core.read();
            let mut left = max_records;
            let mut shards = std::collections::BTreeMap::new();
            for (shard, cursor) in &cursors {
                // Released meanwhile (handed over): not this DC's to serve; answer now so that
                // the replica asks the new owner.
                if state.replicas.contains_key(shard) {
                    released = true;
                    continue;
                }
                let Some(outbox) = state.outbox(*shard) else {
                    continue;
                };
                let batch = read_batch(outbox, *cursor, left);
                left -= batch.records.len();
                shards.insert(*shard, batch);
            }
            PullResponse {
                owner_dc: app.config.dc.clone(),
                shards,
                waited_ms: app.clock.mono_ms().saturating_sub(received_ms),
            }
        };
        if response.has_news() || released || tokio::time::Instant::now() >= deadline {
            let json = serde_json::to_vec(&response).unwrap_or_default();
            let (answer, len) = json_answer(&headers, json);
            metrics::counter!("coopr_replication_bytes_sent_total", "replica_dc" => request.dc.clone())
                .increment(len as u64);
            let records: usize = response.shards.values().map(|b| b.records.len()).sum();
            metrics::counter!("coopr_replication_records_sent_total", "replica_dc" => request.dc.clone())
                .increment(records as u64);
            return answer;
        }
        tokio::select! {
            _ = applied => {}
            _ = tokio::time::sleep_until(deadline) => {}
            changed = leader.changed() => {
                if changed.is_err() || !app.core.raft().is_leader() {
                    return not_leader(&app);
                }
            }
            _ = stopping.wait_for(|s| *s) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the node is stopping").into_response();
            }
        }
    }
}

/// Drops outbox records every replica DC acknowledged: for each shard this DC owns, proposes
/// `TrimOutbox` through the lowest cursor its replicas reported in their pulls (kept in memory
/// by this leader), when that removes something. Called by the driver on the leader.
pub async fn trim_outboxes(app: &App) {
    let trims: Vec<_> = {
        let state = app.core.read();
        let placement = app.placement();
        placement
            .owned_by(&app.config.dc)
            .filter_map(|shard| {
                let outbox = state.outbox(shard)?;
                let acked = app.replication.acknowledged(&placement, shard)?;
                Some((shard, trim_point(outbox, acked)?))
            })
            .collect()
    };
    for (shard, through_seq) in trims {
        match app
            .propose_system(Command::TrimOutbox { shard, through_seq }, None)
            .await
        {
            Ok(Ok(_)) => tracing::debug!(%shard, through_seq, "outbox trimmed"),
            Ok(Err(e)) => tracing::warn!(%shard, through_seq, error = %e, "outbox trim rejected"),
            Err(e) => tracing::debug!(%shard, error = %e, "outbox trim not written"),
        }
    }
}
