//! The replica side: one long-lived pull loop per owner DC, on this DC log's leader only.
//!
//! ```text
//!  loop (per owner DC):
//!    not the leader? idle                         (the loop follows leadership, like the driver)
//!    copies that wait for a snapshot: POST .../internal/replication/seed -> SeedReplica
//!    cursors = committed watermarks of the owner's shards (START when none); sealed copies and
//!              copies waiting for a seed left out
//!    a chain of pipelined pulls (a new random chain id):
//!      keep `replication_pipeline` pulls in flight   POST {owner node}/internal/replication/pull
//!        (each with the committed cursors of the       (the owner answers them in turn, each
//!         moment: the acknowledgement)                   continuing where the last one ended)
//!      answers applied in their chain order (seq); per shard with records: propose
//!      ApplyReplicationBatch (one DC-log entry), only if the batch continues exactly where the
//!      copy ends (`after`)
//!       applied  -> next answer
//!       out of step (a batch not continuing the copy, a missing answer) -> new chain at once
//!       refused  -> watermark moved meanwhile? new chain;
//!                   else log an error and re-seed the copy: a replica never skips
//!       not written (no quorum, lost leadership) -> new chain after a backoff
//!      503 + leader_api: go there; anything else: next node, jittered backoff
//!      (a new chain at once when the set of shards to follow changes)
//! ```
//!
//! Why a chain: with one pull in flight, a record committed just after the owner answered
//! waited a round trip for the next pull to arrive. With several in flight and the owner
//! spacing its answers (`owner::ANSWER_SPACING`), one is nearly always waiting there, so a busy
//! stream lags by one link delay plus the spacing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coopr_state::{Command, Position};
use coopr_types::ShardId;
use tokio::sync::watch;

use super::{PullRequest, PullResponse, SeedRequest, PULL_PATH, SECRET_HEADER, SEED_PATH};
use crate::core::ProposeError;
use crate::supervise::spawn_supervised;
use crate::{App, Member};

/// How often a node that does not lead checks again.
const IDLE: Duration = Duration::from_millis(200);
/// First retry delay after a failure; doubles per consecutive failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a chain waits for an answer that arrived out of order to be preceded by the
/// missing one (lost: a duplicated request's second answer took its number).
const GAP_WAIT: Duration = Duration::from_secs(1);
/// How often a chain of pulls checks whether its set of shards changed or a copy waits for a
/// snapshot.
const CURSOR_CHECK: Duration = Duration::from_millis(100);
/// How soon a failed re-seed is tried again.
const SEED_RETRY: Duration = Duration::from_secs(2);
/// Added to the long-poll wait for the HTTP timeout of a pull.
const PULL_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// Starts one stream per other DC, supervised (`replication-puller-<dc>`); each pulls the
/// shards that DC owns in the current map.
pub fn spawn(app: &Arc<App>, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (owner_dc, nodes) in &app.config.remote_dcs {
        let (app, owner_dc, nodes, stop) =
            (app.clone(), owner_dc.clone(), nodes.clone(), stop.clone());
        let name = format!("replication-puller-{owner_dc}");
        tasks.push(spawn_supervised(
            &app.loops.clone(),
            name,
            stop.clone(),
            move || {
                let stream = Stream {
                    app: app.clone(),
                    owner_dc: owner_dc.clone(),
                    nodes: nodes.clone(),
                };
                stream.run(stop.clone())
            },
        ));
    }
    tasks
}

/// How a stream calls the owner DC: through the node's transport, with the cluster secret,
/// asking for a deflated answer.
#[derive(Clone)]
struct Client {
    transport: Arc<dyn coopr_raft::Transport>,
    secret: String,
    timeout: Duration,
}

impl Client {
    async fn post(
        &self,
        url: &str,
        body: &impl serde::Serialize,
    ) -> Result<coopr_raft::Answer, coopr_raft::CallError> {
        let call = coopr_raft::Call::json(url, body)
            .header(SECRET_HEADER, &self.secret)
            .header("accept-encoding", "deflate")
            .timeout(self.timeout);
        self.transport.call(call).await
    }
}

fn is_deflated(answer: &coopr_raft::Answer) -> bool {
    answer
        .headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"deflate")
}

/// How one pull ended.
enum Answer {
    Batches(PullResponse),
    /// The node asked is not its DC's leader; it may name the leader's API.
    NotLeader(Option<String>),
    Failed(String),
}

/// Why a chain of pulls ended.
enum Outcome {
    /// Start a new chain at once: the copy and the chain are out of step, or the shards to
    /// follow changed.
    Restart,
    /// A batch's DC-log entry was not written (no quorum, lost leadership).
    NotWritten(ProposeError),
    NotLeader(Option<String>),
    Failed(String),
}

struct Stream {
    app: Arc<App>,
    owner_dc: String,
    nodes: Vec<Member>,
}

impl Stream {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let wait_ms = self.app.config.replication_wait_ms;
        // A pull is a long poll of up to `wait_ms`; the margin covers the answer's travel.
        let client = Client {
            transport: self.app.transport.clone(),
            secret: self.app.config.secret.clone().unwrap_or_default(),
            timeout: Duration::from_millis(wait_ms) + PULL_TIMEOUT_MARGIN,
        };
        let mut node = 0usize;
        let mut target: Option<String> = None;
        let mut failures = 0u32;
        let mut leading = false;
        loop {
            if *stop.borrow() {
                return;
            }
            if !self.app.core.raft().is_leader() {
                if leading {
                    tracing::info!(owner_dc = %self.owner_dc, "replication stream paused: not the leader");
                    leading = false;
                }
                if sleep_or_stop(IDLE, &mut stop).await {
                    return;
                }
                continue;
            }
            if !leading {
                // A node that just became leader may not have applied its whole log yet (the
                // commit index is learned anew): cursors read before that would be stale.
                if self.app.core.raft().read_barrier().await.is_err() {
                    if sleep_or_stop(IDLE, &mut stop).await {
                        return;
                    }
                    continue;
                }
                tracing::info!(owner_dc = %self.owner_dc, "replication stream running");
                leading = true;
            }
            let base = target
                .clone()
                .unwrap_or_else(|| self.nodes[node % self.nodes.len()].api.clone());
            // Copies that cannot continue from records are re-seeded first.
            for shard in self.to_seed() {
                let seeded = tokio::select! {
                    r = self.seed(&client, &base, shard) => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                if let Err(e) = seeded {
                    tracing::warn!(%shard, owner_dc = %self.owner_dc, error = %e, "re-seeding failed; trying again");
                    let retry_at = self.app.clock.mono_ms() + SEED_RETRY.as_millis() as u64;
                    self.app.replication.update_stream(shard, |s| {
                        s.next_seed_at = Some(retry_at);
                    });
                }
            }
            let cursors = self.cursors();
            if cursors.is_empty() {
                // Nothing to pull from this owner now (it owns nothing this DC replicates, or
                // every copy is sealed or waits for a snapshot).
                if sleep_or_stop(IDLE, &mut stop).await {
                    return;
                }
                continue;
            }
            let outcome = tokio::select! {
                o = self.follow_chain(&client, &base, &cursors, &mut failures) => o,
                _ = stop.wait_for(|s| *s) => return,
            };
            let failed = match outcome {
                // Out of step, or the shards to follow changed: a new chain starts at once, and
                // after a few in a row without a batch applied, with a backoff.
                Outcome::Restart => {
                    failures += 1;
                    failures > 3
                }
                Outcome::NotWritten(e) => {
                    tracing::warn!(owner_dc = %self.owner_dc, error = %e, "replication batch not written; pulling again");
                    true
                }
                Outcome::NotLeader(Some(leader)) if Some(&leader) != target.as_ref() => {
                    tracing::debug!(owner_dc = %self.owner_dc, %leader, "following the owner's leader hint");
                    target = Some(leader);
                    failures += 1;
                    // A fresh hint is tried at once; hints that keep bouncing back off below.
                    failures > 2
                }
                Outcome::NotLeader(_) => {
                    target = None;
                    node += 1;
                    true
                }
                Outcome::Failed(e) => {
                    tracing::warn!(owner_dc = %self.owner_dc, node = %base, error = %e, "replication pull failed");
                    metrics::counter!("coopr_replication_pull_errors_total", "owner_dc" => self.owner_dc.clone())
                        .increment(1);
                    target = None;
                    node += 1;
                    true
                }
            };
            if failed {
                failures = failures.saturating_add(1);
                let random = self.app.random.next_u64();
                if sleep_or_stop(backoff(failures, random), &mut stop).await {
                    return;
                }
            }
        }
    }

    /// Runs one chain of pipelined pulls to `base` (see [`PullRequest::chain`]) until it must
    /// start again, and says why. Keeps `replication_pipeline` pulls in flight, each sent with
    /// the committed cursors of the moment (the owner's acknowledgement), and applies the
    /// answers in their chain order, each batch only if the copy ends exactly where it
    /// continues from.
    async fn follow_chain(
        &self,
        client: &Client,
        base: &str,
        cursors: &BTreeMap<ShardId, Position>,
        failures: &mut u32,
    ) -> Outcome {
        let chain = self.app.random.next_u64();
        let depth = self.app.config.replication_pipeline;
        let url = format!("{}{PULL_PATH}", base.trim_end_matches('/'));
        let mut inflight = tokio::task::JoinSet::new();
        let mut next_seq = 0u64;
        // Answers that arrived before an earlier one of the chain, by number.
        let mut early: BTreeMap<u64, (PullResponse, u64)> = BTreeMap::new();
        let mut gap_since: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(CURSOR_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while inflight.len() < depth {
                // The cursors are read for the request anyway; copies waiting for a snapshot
                // are looked for on the tick below.
                let now = self.cursors();
                if !same_shards(&now, cursors) {
                    return Outcome::Restart;
                }
                let request = PullRequest {
                    dc: self.app.config.dc.clone(),
                    cursors: now,
                    max_records: self.app.config.replication_max_records,
                    wait_ms: self.app.config.replication_wait_ms,
                    chain: Some(chain),
                };
                let sent = self.app.clock.mono_ms();
                let (client, url, nodes) = (client.clone(), url.clone(), self.nodes.clone());
                let owner_dc = self.owner_dc.clone();
                inflight.spawn(async move {
                    let answer = pull(&client, &url, &request, &owner_dc, &nodes).await;
                    (answer, sent)
                });
            }
            let gap_deadline = gap_since.map(|at| at + GAP_WAIT);
            let joined = tokio::select! {
                j = inflight.join_next() => j,
                // A long poll asks for the shards of these cursors only: when the set changes
                // (this DC demoted a shard it wrote and must follow it now, or sealed one) or a
                // copy waits for a snapshot, a new chain starts rather than after the wait.
                _ = check.tick() => {
                    if !same_shards(&self.cursors(), cursors) || !self.to_seed().is_empty() {
                        return Outcome::Restart;
                    }
                    continue;
                }
                _ = sleep_until_some(gap_deadline) => {
                    tracing::debug!(owner_dc = %self.owner_dc, missing = next_seq, "an answer of the pull chain never came; starting a new chain");
                    return Outcome::Restart;
                }
            };
            let Some(Ok((answer, sent))) = joined else {
                return Outcome::Failed("a pull's task ended without an answer".into());
            };
            self.app
                .replication
                .owner_answered(&self.owner_dc, !matches!(answer, Answer::Failed(_)));
            let response = match answer {
                Answer::Batches(r) => r,
                Answer::NotLeader(hint) => return Outcome::NotLeader(hint),
                Answer::Failed(e) => return Outcome::Failed(e),
            };
            if response.chain != Some(chain) {
                return Outcome::Failed(format!(
                    "answer of chain {:?}, not {chain}",
                    response.chain
                ));
            }
            if response.seq < next_seq {
                // A number already applied: the owner started the chain again (it dropped it,
                // or another node leads there now).
                return Outcome::Restart;
            }
            early.insert(response.seq, (response, sent));
            while let Some((response, sent)) = early.remove(&next_seq) {
                next_seq += 1;
                match self.apply(cursors, response, sent).await {
                    Ok(true) => *failures = 0,
                    Ok(false) => return Outcome::Restart,
                    Err(e) => return Outcome::NotWritten(e),
                }
            }
            if early.len() > 4 * depth {
                return Outcome::Restart;
            }
            gap_since = if early.is_empty() {
                None
            } else {
                gap_since.or_else(|| Some(tokio::time::Instant::now()))
            };
        }
    }

    /// The committed watermark of this DC's copy of `shard`, and whether the copy is sealed.
    fn watermark(&self, shard: ShardId) -> (Position, bool) {
        let state = self.app.core.read();
        let replica = state.replica(shard);
        (
            replica.map_or(Position::START, |r| r.watermark),
            replica.is_some_and(|r| r.sealed.is_some()),
        )
    }

    /// The committed watermark of every shard this owner owns (in the current map) and this DC
    /// replicates, whose stream runs: not a copy sealed for a takeover (it ends where it is),
    /// nor one that waits for a snapshot.
    fn cursors(&self) -> BTreeMap<ShardId, Position> {
        let map = self.app.placement();
        let dc = self.app.config.dc.as_str();
        let state = self.app.core.read();
        map.owned_by(&self.owner_dc)
            .filter(|s| map.replicas(*s).any(|r| r == dc))
            .filter(|s| !state.holds_writes(*s))
            .filter(|s| {
                state
                    .replica(*s)
                    .is_none_or(|r| r.sealed.is_none() && !r.needs_seed)
            })
            .filter(|s| !self.app.replication.stream(*s).needs_seed)
            .map(|s| (s, state.replica(s).map_or(Position::START, |r| r.watermark)))
            .collect()
    }

    /// The shards of this owner whose copy here waits for a snapshot (its own state says so,
    /// or its stream could not continue), when a retry is due.
    fn to_seed(&self) -> Vec<ShardId> {
        let map = self.app.placement();
        let dc = self.app.config.dc.as_str();
        let state = self.app.core.read();
        let now = self.app.clock.mono_ms();
        map.owned_by(&self.owner_dc)
            .filter(|s| map.replicas(*s).any(|r| r == dc))
            .filter(|s| !state.holds_writes(*s))
            .filter(|s| {
                let replica = state.replica(*s);
                let stream = self.app.replication.stream(*s);
                let wanted = replica.is_some_and(|r| r.needs_seed) || stream.needs_seed;
                wanted
                    && replica.is_none_or(|r| r.sealed.is_none())
                    && stream.next_seed_at.is_none_or(|at| at <= now)
            })
            .collect()
    }

    /// Re-seeds this DC's copy of `shard` from a snapshot of the owner's shard, then lets its
    /// stream continue from the snapshot's position.
    async fn seed(&self, client: &Client, base: &str, shard: ShardId) -> Result<(), String> {
        let url = format!("{}{SEED_PATH}", base.trim_end_matches('/'));
        let request = SeedRequest {
            dc: self.app.config.dc.clone(),
            shard,
        };
        let started = self.app.clock.mono_ms();
        let response = client
            .post(&url, &request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status;
        let deflated = is_deflated(&response);
        let bytes = response.body;
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ));
        }
        let json = if deflated {
            super::inflate(&bytes).map_err(|e| e.to_string())?
        } else {
            bytes.to_vec()
        };
        let seed: coopr_state::ReplicaShard = {
            let _memo = coopr_types::shared_json::Memo::open();
            serde_json::from_slice(&json).map_err(|e| format!("unreadable seed: {e}"))?
        };
        if seed.shard != shard || seed.owner_dc != self.owner_dc {
            return Err(format!(
                "asked {} for shard {shard}, got shard {} of {}",
                self.owner_dc, seed.shard, seed.owner_dc
            ));
        }
        let at = seed.watermark;
        let command = Command::SeedReplica {
            seed: Box::new(seed),
        };
        match self.app.propose_system(command, None).await {
            Ok(Ok(_)) => {
                tracing::warn!(%shard, owner_dc = %self.owner_dc, position = ?at, bytes = json.len(),
                    took_ms = self.app.clock.mono_ms().saturating_sub(started), "copy re-seeded from a snapshot of the owner's shard");
                metrics::counter!("coopr_replication_reseeds_total", "owner_dc" => self.owner_dc.clone())
                    .increment(1);
                self.app.replication.update_stream(shard, |s| {
                    s.needs_seed = false;
                    s.next_seed_at = None;
                    s.stopped = None;
                    s.stopped_from = None;
                    s.owner_last = Some(at);
                    s.oldest_missing_at_ms = None;
                });
                if self.app.placement().entry(shard).status != "active" {
                    self.app.renew_now.notify_one();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(format!("seed refused: {e}")),
            Err(e) => Err(format!("seed not written: {e}")),
        }
    }

    /// Applies each shard's batch as one DC-log entry. Ok(false): a batch does not continue
    /// where the copy ends (the chain is out of step: a new one starts from the committed
    /// cursors). Err: an entry was not written (likewise).
    async fn apply(
        &self,
        shards: &BTreeMap<ShardId, Position>,
        response: PullResponse,
        sent: u64,
    ) -> Result<bool, ProposeError> {
        let progress = &self.app.replication;
        // The copy is as of when the owner answered, which is no earlier than `sent + waited`
        // on this clock (the network delay only makes it later): dating it from there never
        // understates the staleness reads report. `sent`: the clock's monotonic ms.
        let answered = (sent + response.waited_ms).min(self.app.clock.mono_ms());
        for (shard, batch) in response.shards {
            if !shards.contains_key(&shard) {
                continue;
            }
            let (cursor, sealed) = self.watermark(shard);
            if sealed {
                // Sealed for a takeover while the pull was out: the copy ends here.
                continue;
            }
            if batch.after.is_some_and(|after| after != cursor) {
                tracing::debug!(%shard, owner_dc = %self.owner_dc, after = ?batch.after, watermark = ?cursor,
                    "a batch does not continue where the copy ends; starting a new chain of pulls");
                return Ok(false);
            }
            if let Some(error) = batch.error {
                tracing::error!(%shard, owner_dc = %self.owner_dc, %error, "replication stream cannot continue from records: re-seeding from a snapshot");
                metrics::counter!("coopr_replication_broken_streams_total", "owner_dc" => self.owner_dc.clone())
                    .increment(1);
                progress.update_stream(shard, |s| {
                    s.stopped = Some(format!("{}: {error}; re-seeding", self.owner_dc));
                    s.stopped_from = Some(self.owner_dc.clone());
                    s.needs_seed = true;
                });
                continue;
            }
            // An answer from another owner than the one a stop came from: the shard moved and
            // its stream starts afresh.
            progress.update_stream(shard, |s| {
                if s.stopped.is_some() && s.stopped_from.as_deref() != Some(&self.owner_dc) {
                    s.stopped = None;
                    s.stopped_from = None;
                }
            });
            let Some(first_at_ms) = batch.records.first().map(|r| r.at_ms) else {
                progress.update_stream(shard, |s| {
                    s.owner_last = Some(batch.last);
                    s.oldest_missing_at_ms = batch.next_at_ms;
                    s.last_answer = Some(answered);
                    if batch.last == cursor {
                        s.caught_up_at = Some(answered);
                    }
                });
                continue;
            };
            progress.update_stream(shard, |s| {
                s.owner_last = Some(batch.last);
                s.oldest_missing_at_ms = Some(first_at_ms);
                s.last_answer = Some(answered);
            });
            let caught_up = batch.records.last().map(|r| r.position()) == Some(batch.last);
            let count = batch.records.len();
            let command = Command::ApplyReplicationBatch {
                from_dc: self.owner_dc.clone(),
                shard,
                records: batch.records,
                epoch_start: batch.epoch_start,
            };
            match self.app.propose_system(command, None).await? {
                Ok(_) => {
                    metrics::counter!("coopr_replication_records_applied_total", "owner_dc" => self.owner_dc.clone())
                        .increment(count as u64);
                    // A handover of this shard waits for this DC's watermark: report it now.
                    if self.app.placement().entry(shard).status != "active" {
                        self.app.renew_now.notify_one();
                    }
                    progress.update_stream(shard, |s| {
                        s.oldest_missing_at_ms = batch.next_at_ms;
                        s.stopped = None;
                        s.stopped_from = None;
                        if caught_up {
                            s.caught_up_at = Some(answered);
                        }
                    });
                }
                Err(e) => {
                    let (watermark, sealed) = self.watermark(shard);
                    if sealed {
                        // Sealed for a takeover while the batch was proposed: the copy ends here.
                        continue;
                    }
                    if watermark != cursor {
                        // An earlier proposal of these records committed meanwhile: the batch
                        // is stale, not wrong.
                        tracing::debug!(%shard, error = %e, "stale replication batch; pulling again");
                        return Ok(false);
                    }
                    tracing::error!(%shard, owner_dc = %self.owner_dc, error = %e, lag_since_ms = self.app.clock.wall_ms().saturating_sub(first_at_ms),
                        "replication batch refused (a replica never skips): re-seeding this shard's copy from a snapshot");
                    metrics::counter!("coopr_replication_refused_batches_total", "owner_dc" => self.owner_dc.clone())
                        .increment(1);
                    progress.update_stream(shard, |s| {
                        s.stopped = Some(format!("{e}; re-seeding"));
                        s.stopped_from = Some(self.owner_dc.clone());
                        s.needs_seed = true;
                    });
                }
            }
        }
        Ok(true)
    }
}

/// One pull of a chain: the owner's answer, or why there is none.
async fn pull(
    client: &Client,
    url: &str,
    request: &PullRequest,
    owner_dc: &str,
    nodes: &[Member],
) -> Answer {
    let response = match client.post(url, request).await {
        Ok(r) => r,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let status = response.status;
    let deflated = is_deflated(&response);
    let bytes = response.body;
    if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        let answer = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
        // The leader as this DC reaches it (its own configured address for that node: the
        // owner's address for itself may not be reachable from here, e.g. through a proxy).
        let own = answer["leader_node"].as_str().and_then(|leader| {
            nodes
                .iter()
                .find(|m| m.node == leader)
                .map(|m| m.api.clone())
        });
        let hint = own.or_else(|| answer["leader_api"].as_str().map(str::to_string));
        return Answer::NotLeader(hint);
    }
    if !status.is_success() {
        return Answer::Failed(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
        ));
    }
    metrics::counter!("coopr_replication_bytes_received_total", "owner_dc" => owner_dc.to_string())
        .increment(bytes.len() as u64);
    let json = if deflated {
        match super::inflate(&bytes) {
            Ok(json) => json,
            Err(e) => return Answer::Failed(format!("undecodable deflated answer: {e}")),
        }
    } else {
        bytes.to_vec()
    };
    match serde_json::from_slice::<PullResponse>(&json) {
        Ok(r) if r.owner_dc == owner_dc => Answer::Batches(r),
        Ok(r) => Answer::Failed(format!("answered by DC {}, not {owner_dc}", r.owner_dc)),
        Err(e) => Answer::Failed(format!("unreadable answer: {e}")),
    }
}

/// Whether two sets of cursors are of the same shards.
fn same_shards(a: &BTreeMap<ShardId, Position>, b: &BTreeMap<ShardId, Position>) -> bool {
    a.len() == b.len() && a.keys().all(|s| b.contains_key(s))
}

/// Sleeps until `at`; forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sleeps; true when the node stops meanwhile.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Exponential backoff with jitter: a random delay in [d/2, d], d = FIRST * 2^(failures-1),
/// capped at MAX. `random` is any random u64 (passed in so the function is deterministic).
pub fn backoff(failures: u32, random: u64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = FIRST_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF);
    let half = full / 2;
    let jitter_ms = random % (half.as_millis() as u64 + 1);
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delays double per failure, stay within [d/2, d] and stop growing at the cap.
    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for random in [0, 7, u64::MAX] {
            let first = backoff(1, random);
            assert!(first >= Duration::from_millis(50) && first <= FIRST_BACKOFF);
            let third = backoff(3, random);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(30, random);
            assert!(late >= MAX_BACKOFF / 2 && late <= MAX_BACKOFF);
        }
    }
}
