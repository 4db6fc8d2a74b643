//! The owner side: `POST /internal/replication/pull`, answered by the DC log's leader only.
//!
//! ```text
//!  check Coopr-Cluster-Secret (401), the asking DC (403), leadership (503 + leader_api)
//!  remember the replica's cursors (its committed watermarks: what it lacks, for the reports)
//!  loop: notified = Core::applied.notified()      <- registered before reading, so no commit
//!        batches = records after each cursor          between the read and the wait is missed
//!          (a chained pull: after where its chain's previous answer ended)
//!        any record or error, or wait_ms passed? answer (a chain's answers with records at
//!          most one per ANSWER_SPACING; answering numbers it and moves the chain on)
//!        wait for notified | wait_ms | leadership change | shutdown
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::json;
use tokio::sync::Notify;

use coopr_state::{Command, Position};
use coopr_types::ShardId;

use super::{
    read_batch, trim_point, PullRequest, PullResponse, SeedRequest, PULL_PATH, SECRET_HEADER,
    SEED_PATH,
};
use crate::api::error::ApiError;
use crate::App;

/// Longest a pull may ask to wait (a replica's HTTP timeout must exceed what it asks for).
pub const MAX_WAIT_MS: u64 = 60_000;

pub fn routes() -> crate::api::routes::Routes {
    use axum::http::Method;
    crate::api::routes::Routes::new("internal")
        .route(
            PULL_PATH,
            post(pull),
            &[(
                Method::POST,
                "Replication: a replica DC pulls records (cluster secret)",
            )],
        )
        .route(
            SEED_PATH,
            post(seed),
            &[(
                Method::POST,
                "Replication: a snapshot of one shard (cluster secret)",
            )],
        )
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

/// Most answers with records a chain gets per this interval. A replica keeps several pulls in
/// flight; spacing their answers keeps one of them waiting here for the next commit, instead of
/// answering them all in one burst and then waiting a round trip for the next to arrive.
pub const ANSWER_SPACING: Duration = Duration::from_millis(5);
/// How many chains of one replica DC are kept (the least recently used beyond that is dropped:
/// a chain's pulls after that start it again from their cursors, which its replica sees as out
/// of step).
const CHAINS_PER_DC: usize = 4;

/// Numbers the held pulls of this process (a chain's watcher is named by it).
static PULL_TOKENS: AtomicU64 = AtomicU64::new(1);

/// A replica DC's chain of pipelined pulls, as its owner serves it (in memory, leader only).
#[derive(Debug)]
pub struct Chain {
    /// Per shard: where the chain's next answer continues (the end of what it was sent).
    sent: BTreeMap<ShardId, Position>,
    /// The next answer's number.
    next_seq: u64,
    /// When the latest answer with records went out (tokio's clock).
    last_news: Option<tokio::time::Instant>,
    /// When a pull of the chain last came or was answered.
    last_used: tokio::time::Instant,
    /// The one held pull of the chain that waits for commits (its token); the others wait for
    /// `next`, so a commit wakes one pull per chain, not every pull in flight.
    watcher: Option<u64>,
    /// Wakes one waiting pull of the chain to become its watcher.
    next: Arc<Notify>,
}

impl Chain {
    /// The chain `id` of replica DC `dc`, started from `cursors` when it is new.
    fn join<'a>(
        chains: &'a mut BTreeMap<(String, u64), Chain>,
        dc: &str,
        id: u64,
        cursors: &[(ShardId, Position)],
    ) -> &'a mut Chain {
        let now = tokio::time::Instant::now();
        let key = (dc.to_string(), id);
        if !chains.contains_key(&key) {
            let of_dc: Vec<_> = chains.iter().filter(|((d, _), _)| d == dc).collect();
            if of_dc.len() >= CHAINS_PER_DC {
                let oldest = of_dc
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| (*k).clone());
                if let Some(oldest) = oldest {
                    if let Some(dropped) = chains.remove(&oldest) {
                        // Its waiting pulls go on as pulls of a chain started anew.
                        dropped.next.notify_waiters();
                    }
                }
            }
        }
        let chain = chains.entry(key).or_insert_with(|| Chain {
            sent: BTreeMap::new(),
            next_seq: 0,
            last_news: None,
            last_used: now,
            watcher: None,
            next: Arc::new(Notify::new()),
        });
        chain.last_used = now;
        for (shard, cursor) in cursors {
            chain.sent.entry(*shard).or_insert(*cursor);
        }
        chain
    }

    /// `token` no longer watches the chain: another held pull takes over.
    fn release(&mut self, token: u64) {
        if self.watcher == Some(token) {
            self.watcher = None;
            self.next.notify_one();
        }
    }
}

/// Releases a held pull's watch of its chain however the pull ends (answered, refused, or
/// dropped when its caller went away).
struct Watch<'a> {
    app: &'a App,
    key: Option<(String, u64)>,
    token: u64,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let Some(key) = &self.key else {
            return;
        };
        let mut chains = self
            .app
            .replication
            .chains
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(chain) = chains.get_mut(key) {
            chain.release(self.token);
        }
    }
}

/// What a held pull does next.
enum Step {
    Answer(PullResponse),
    /// Records are there, but the chain's previous answer with records went out too recently.
    PaceUntil(tokio::time::Instant),
    /// Nothing to answer yet: wait for the next commit (`None`: this pull watches for commits)
    /// or for the chain's watcher to hand over (`Some`).
    Wait(Option<Arc<Notify>>),
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
    let watch = Watch {
        app: &app,
        key: request.chain.map(|id| (request.dc.clone(), id)),
        token: PULL_TOKENS.fetch_add(1, Ordering::Relaxed),
    };
    loop {
        // Registered before the read: a commit after the read wakes this wait.
        let applied = app.core.applied.notified();
        let now = tokio::time::Instant::now();
        let step = next_step(
            &app,
            &request,
            &cursors,
            max_records,
            now >= deadline,
            received_ms,
            watch.token,
        );
        let response = match step {
            Step::Answer(response) => response,
            Step::PaceUntil(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.min(deadline)) => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
                continue;
            }
            Step::Wait(handed) => {
                let turn = async {
                    match handed {
                        Some(next) => next.notified().await,
                        None => applied.await,
                    }
                };
                tokio::select! {
                    _ = turn => {}
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
                continue;
            }
        };
        drop(watch);
        let json = serde_json::to_vec(&response).unwrap_or_default();
        let (answer, len) = json_answer(&headers, json);
        metrics::counter!("coopr_replication_bytes_sent_total", "replica_dc" => request.dc.clone())
            .increment(len as u64);
        let records: usize = response.shards.values().map(|b| b.records.len()).sum();
        metrics::counter!("coopr_replication_records_sent_total", "replica_dc" => request.dc.clone())
            .increment(records as u64);
        return answer;
    }
}

/// Reads what a held pull would answer now and decides whether to answer it. A chained pull's
/// batches continue where its chain's previous answer ended, and answering moves the chain on.
fn next_step(
    app: &App,
    request: &PullRequest,
    cursors: &[(ShardId, Position)],
    max_records: usize,
    expired: bool,
    received_ms: u64,
    token: u64,
) -> Step {
    let state = app.core.read();
    let mut chains = app
        .replication
        .chains
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut chain = request
        .chain
        .map(|id| Chain::join(&mut chains, &request.dc, id, cursors));
    let mut released = false;
    let mut left = max_records;
    let mut shards = BTreeMap::new();
    for (shard, cursor) in cursors {
        // Released meanwhile (handed over): not this DC's to serve; answer now so that the
        // replica asks the new owner.
        if state.replicas.contains_key(shard) {
            released = true;
            continue;
        }
        let Some(outbox) = state.outbox(*shard) else {
            continue;
        };
        let from = chain
            .as_ref()
            .and_then(|c| c.sent.get(shard).copied())
            .unwrap_or(*cursor);
        let batch = read_batch(outbox, from, left);
        left -= batch.records.len();
        shards.insert(*shard, batch);
    }
    let response = PullResponse {
        owner_dc: app.config.dc.clone(),
        shards,
        waited_ms: app.clock.mono_ms().saturating_sub(received_ms),
        chain: request.chain,
        seq: 0,
    };
    let records = response.shards.values().any(|b| !b.records.is_empty());
    if !(response.has_news() || released || expired) {
        return match chain {
            Some(chain) if chain.watcher.is_some_and(|w| w != token) => {
                Step::Wait(Some(chain.next.clone()))
            }
            Some(chain) => {
                chain.watcher = Some(token);
                Step::Wait(None)
            }
            None => Step::Wait(None),
        };
    }
    let Some(chain) = chain.as_mut() else {
        return Step::Answer(response);
    };
    let now = tokio::time::Instant::now();
    if records && !released && !expired {
        if let Some(paced) = chain.last_news.map(|at| at + ANSWER_SPACING) {
            if now < paced {
                return Step::PaceUntil(paced);
            }
        }
    }
    let mut response = response;
    response.seq = chain.next_seq;
    chain.next_seq += 1;
    if records {
        chain.last_news = Some(now);
    }
    for (shard, batch) in &response.shards {
        if let Some(last) = batch.records.last() {
            chain.sent.insert(*shard, last.position());
        }
    }
    chain.release(token);
    Step::Answer(response)
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
