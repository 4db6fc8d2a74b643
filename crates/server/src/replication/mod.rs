//! Cross-DC replication with a static placement (DESIGN section 4): replica DCs pull the
//! records of the shards other DCs own and apply them to their local copies.
//!
//! ```text
//!  replica DC leader                                   owner DC leader
//!  puller (one stream per owner DC)                     owner::pull (POST /internal/replication/pull)
//!    cursors = committed replica watermarks  --pull-->    remember the replica's cursors
//!                                                         records after each cursor? answer now
//!                                                         none: wait on Core::applied until one
//!                                                         commits (or wait_ms passes)
//!    per shard: ApplyReplicationBatch  <--- batches ---   (epoch, seq, at_ms, kind) per shard
//!    (one DC-log entry, exactly once, in order)
//! ```
//!
//! Cursors are read from committed local state before every pull, so a stream survives leader
//! changes and restarts on both sides: nothing about a stream lives only in memory except the
//! lag figures below, which the next answer rebuilds.
//!
//! - [`owner`]: the pull endpoint (owner side, its DC log's leader only).
//! - [`puller`]: the streams (replica side, its DC log's leader only).
//! - [`Progress`]: what each side knows of the other, for `/v2/admin/replication` and `/metrics`.
//!
//! Requests for another DC's clusters are routed by `api::forward` (writes, strong reads and
//! plans to the owner DC; other reads from the local copy, with [`staleness_ms`]).
//!
//! A copy that cannot continue from records (the owner's outbox no longer has them, the cursor
//! is of an epoch the owner's history does not continue, a refused batch, or a copy this DC
//! demoted after losing the shard) is re-seeded: the puller asks the owner for
//! `POST /internal/replication/seed` (the shard as a replica holds it, with its position) and
//! applies it as one `SeedReplica` entry; the stream continues from there. Ownership changes
//! (handover, failover) are driven by the placement group (`crate::placement`).

pub mod owner;
pub mod puller;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use coopr_state::{Outbox, Position, Record, State};
use coopr_types::ShardId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::placement::ShardMap;

/// The owner's pull endpoint, on the API port.
pub const PULL_PATH: &str = "/internal/replication/pull";
/// The largest pull answer a replica inflates (a bound against a corrupt or hostile stream).
pub const MAX_INFLATED_BYTES: u64 = 512 * 1024 * 1024;

/// Deflates a pull answer (fast level: the answers are small and latency matters).
pub fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Inflates a deflated pull answer, refusing one larger than [`MAX_INFLATED_BYTES`].
pub fn inflate(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return Err(std::io::Error::other("inflated answer too large"));
    }
    Ok(out)
}

/// The owner's snapshot endpoint, on the API port: a replica that cannot continue from records
/// asks for the whole shard as a replica holds it.
pub const SEED_PATH: &str = "/internal/replication/seed";

/// A replica DC's request for a snapshot of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRequest {
    pub dc: String,
    pub shard: ShardId,
}

/// The header carrying the cluster secret on internal calls (the same one Raft RPCs use).
pub const SECRET_HEADER: &str = "coopr-cluster-secret";

/// A replica DC's request for the records after its cursors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The replica DC asking.
    pub dc: String,
    /// Per shard: the position of the last record the replica applied (committed there).
    pub cursors: BTreeMap<ShardId, Position>,
    /// Most records to return over all shards.
    pub max_records: usize,
    /// Longest to wait for a record when there is none yet (0: answer at once).
    pub wait_ms: u64,
    /// Pipelined pulls: the chain this pull belongs to. The owner serves a chain's pulls one
    /// after another, each continuing where the previous answer ended (not from `cursors`,
    /// which stay the replica's committed watermarks: its acknowledgement). A new chain starts
    /// from `cursors`. Absent: a lone pull, served from `cursors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<u64>,
}

/// The owner's answer: per requested shard it owns, the records after the cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    pub owner_dc: String,
    pub shards: BTreeMap<ShardId, ShardBatch>,
    /// How long the owner held the pull before answering (the long poll). The answer shows the
    /// owner's state as of at least `sent + waited_ms` on the replica's clock: replicas date
    /// their copy from there, which never understates its staleness by the network delay.
    #[serde(default)]
    pub waited_ms: u64,
    /// The chain of the pull answered (see [`PullRequest::chain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<u64>,
    /// The answer's number in its chain (0, 1, 2, ...): answers may arrive out of order, and a
    /// replica applies them in this order.
    #[serde(default)]
    pub seq: u64,
}

impl PullResponse {
    /// Whether the answer has anything for the replica to act on (records or errors).
    pub fn has_news(&self) -> bool {
        self.shards
            .values()
            .any(|b| !b.records.is_empty() || b.error.is_some())
    }
}

/// One shard's part of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardBatch {
    /// The records right after the cursor, in order (maybe not all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// The owner's last assigned position in this shard.
    pub last: Position,
    /// When records remain after `records`: the commit time of the first of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at_ms: Option<u64>,
    /// Why records after the cursor cannot be served (the stream of this shard stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the records start the owner's epoch right after the cursor (a replica following
    /// the shard to a new owner): the position that epoch started after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_start: Option<Position>,
    /// The position the batch continues from (the replica applies it only if its copy ends
    /// exactly there; otherwise its chain of pulls is out of step and starts again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
}

/// Reads the records after `cursor` from a shard's outbox: up to `max`, and the commit time of
/// the first one left out.
pub fn read_batch(outbox: &Outbox, cursor: Position, max: usize) -> ShardBatch {
    let last = outbox.last_position();
    let mut batch = ShardBatch {
        records: Vec::new(),
        last: outbox.history_position(),
        next_at_ms: None,
        error: None,
        epoch_start: None,
        after: Some(cursor),
    };
    // The replica ends exactly where this owner's epoch started: continue from its seq 1.
    let cursor = if cursor.epoch != last.epoch && outbox.started_after == Some(cursor) {
        batch.epoch_start = Some(cursor);
        Position {
            epoch: last.epoch,
            seq: 0,
        }
    } else {
        cursor
    };
    if cursor.epoch != last.epoch {
        batch.error = Some(format!(
            "cursor epoch {} differs from the owner's epoch {}",
            cursor.epoch, last.epoch
        ));
        return batch;
    }
    match outbox.read_after(cursor.seq, max.saturating_add(1)) {
        Ok(mut records) => {
            // Also cut after a budget of resource bytes, so the batch's DC-log entry stays
            // under the Raft payload limit (`coopr_state::resources`).
            let keep = max.min(coopr_state::resources::records_within_budget(&records));
            if records.len() > keep {
                batch.next_at_ms = records.get(keep).map(|r| r.at_ms);
                records.truncate(keep);
            }
            batch.records = records;
        }
        Err(e) => batch.error = Some(e.to_string()),
    }
    batch
}

/// Through which seq an outbox can be trimmed once every replica acknowledged `acked`: `None`
/// when that would remove nothing (or `acked` is not a position of this outbox).
pub fn trim_point(outbox: &Outbox, acked: Position) -> Option<u64> {
    let last = outbox.last_position();
    if acked.epoch != last.epoch || acked.seq > last.seq {
        return None;
    }
    let first = outbox.records.front()?.seq;
    (first <= acked.seq).then_some(acked.seq)
}

/// The age and count of the records a replica at `cursor` lacks, from the owner's outbox.
pub fn unreplicated(outbox: &Outbox, cursor: Position, now_ms: u64) -> (u64, u64) {
    let last = outbox.last_position();
    // A replica from an earlier epoch lacks every record of this one.
    let cursor = if cursor.epoch < last.epoch {
        Position {
            epoch: last.epoch,
            seq: 0,
        }
    } else {
        cursor
    };
    if cursor.epoch != last.epoch || cursor.seq >= last.seq {
        return (0, 0);
    }
    let count = last.seq - cursor.seq;
    let oldest = outbox.records.iter().find(|r| r.seq > cursor.seq);
    let age_ms = oldest.map_or(0, |r| now_ms.saturating_sub(r.at_ms));
    (count, age_ms)
}

/// The cursors a replica DC reported in its latest pull (owner side).
#[derive(Debug, Clone)]
struct ReportedCursors {
    cursors: BTreeMap<ShardId, Position>,
    /// When (the clock's monotonic ms).
    at_mono_ms: u64,
}

/// A stream of one shard as the replica side knows it. Times are the node clock's monotonic
/// ms.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    /// The owner's last position, as of its latest answer.
    pub owner_last: Option<Position>,
    /// The commit time of the oldest record the replica is known to lack (None: caught up as of
    /// the owner's latest answer).
    pub oldest_missing_at_ms: Option<u64>,
    /// Set when a batch was refused: the stream of this shard stopped (never skips).
    pub stopped: Option<String>,
    /// The owner DC the stream stopped with (a new owner starts a new stream).
    pub stopped_from: Option<String>,
    pub last_answer: Option<u64>,
    /// When the owner's latest answer that left the replica caught up arrived (valid while
    /// `owner_last` equals the replica's watermark).
    pub caught_up_at: Option<u64>,
    /// The stream cannot continue from records (the owner cannot serve the cursor, or a batch
    /// was refused): the copy is re-seeded from a snapshot of the owner's shard.
    pub needs_seed: bool,
    /// When a failed re-seed may be tried again.
    pub next_seed_at: Option<u64>,
}

/// What each side knows of the other, kept in memory by the DC log's leader.
#[derive(Debug)]
pub struct Progress {
    /// The node's clock (times below are its monotonic ms).
    clock: Arc<dyn Clock>,
    /// Owner side: by replica DC.
    reported: Mutex<BTreeMap<String, ReportedCursors>>,
    /// Replica side: by shard.
    streams: Mutex<BTreeMap<ShardId, StreamState>>,
    /// Replica side: by owner DC, whether the latest pull to it failed.
    owners: Mutex<BTreeMap<String, bool>>,
    /// Owner side: by replica DC and chain id, its chains of pipelined pulls (a few per DC).
    pub(crate) chains: Mutex<BTreeMap<(String, u64), owner::Chain>>,
}

impl Progress {
    pub fn new(clock: Arc<dyn Clock>) -> Progress {
        Progress {
            clock,
            reported: Mutex::default(),
            streams: Mutex::default(),
            owners: Mutex::default(),
            chains: Mutex::default(),
        }
    }

    /// Now, on the clock the times kept here are read from (monotonic ms).
    pub fn mono_ms(&self) -> u64 {
        self.clock.mono_ms()
    }

    /// A pull to `owner_dc` was answered (`true`) or failed (`false`).
    pub fn owner_answered(&self, owner_dc: &str, answered: bool) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.insert(owner_dc.to_string(), !answered);
        }
    }

    /// Whether the latest pull to `owner_dc` failed (it has not answered since).
    pub fn owner_unreachable(&self, owner_dc: &str) -> bool {
        self.owners
            .lock()
            .ok()
            .and_then(|owners| owners.get(owner_dc).copied())
            .unwrap_or(false)
    }

    pub fn record_cursors(&self, dc: &str, cursors: &BTreeMap<ShardId, Position>) {
        if let Ok(mut reported) = self.reported.lock() {
            reported.insert(
                dc.to_string(),
                ReportedCursors {
                    cursors: cursors.clone(),
                    at_mono_ms: self.clock.mono_ms(),
                },
            );
        }
    }

    /// The position every replica DC of `shard` reported having applied: the lowest of their
    /// latest cursors. `None` while a replica has not reported one (never trim past a replica
    /// that did not say where it is).
    pub fn acknowledged(&self, placement: &ShardMap, shard: ShardId) -> Option<Position> {
        let reported = self.reported.lock().ok()?;
        let mut lowest: Option<Position> = None;
        for replica in placement.replicas(shard) {
            let cursor = *reported.get(replica)?.cursors.get(&shard)?;
            lowest = Some(lowest.map_or(cursor, |l| l.min(cursor)));
        }
        lowest
    }

    pub fn stream(&self, shard: ShardId) -> StreamState {
        self.streams
            .lock()
            .ok()
            .and_then(|s| s.get(&shard).cloned())
            .unwrap_or_default()
    }

    pub fn update_stream(&self, shard: ShardId, update: impl FnOnce(&mut StreamState)) {
        if let Ok(mut streams) = self.streams.lock() {
            update(streams.entry(shard).or_default());
        }
    }

    /// Whether the stream of `shard` from `owner_dc` stopped on a refused batch.
    pub fn is_stopped(&self, shard: ShardId, owner_dc: &str) -> bool {
        let stream = self.stream(shard);
        stream.stopped.is_some() && stream.stopped_from.as_deref() == Some(owner_dc)
    }
}

/// The replica side's lag of one shard: the age of the oldest record it is known to lack.
fn lag_ms(stream: &StreamState, now_ms: u64) -> u64 {
    stream
        .oldest_missing_at_ms
        .map_or(0, |at| now_ms.saturating_sub(at))
}

/// How stale this DC's copy of a shard it replicates may be, in ms (the `Coopr-Staleness-Ms` of
/// a read served from it):
///
/// - on the node running the shard's stream (the DC log's leader), when the owner's latest
///   answer left the copy caught up (its last position is the copy's watermark): the time since
///   that answer arrived — the copy was known to equal the owner's then;
/// - otherwise (a follower, a stream that is behind or stopped): the age of the last record the
///   copy applied (now minus its commit time at the owner) — an upper bound only while the
///   owner keeps writing the shard, so idle shards look old there;
/// - `u64::MAX` when the copy has applied nothing.
pub fn staleness_ms(state: &State, progress: &Progress, shard: ShardId, now_ms: u64) -> u64 {
    let Some(replica) = state.replica(shard) else {
        return u64::MAX;
    };
    let stream = progress.stream(shard);
    if stream.stopped.is_none() && stream.owner_last == Some(replica.watermark) {
        if let Some(at) = stream.caught_up_at {
            return progress.mono_ms().saturating_sub(at);
        }
    }
    if replica.last_at_ms == 0 {
        return u64::MAX;
    }
    now_ms.saturating_sub(replica.last_at_ms)
}

/// One shard's replication status as this DC sees it (see `GET /v2/admin/replication`).
pub fn shard_report(
    dc: &str,
    placement: &ShardMap,
    state: &State,
    progress: &Progress,
    shard: ShardId,
    now_ms: u64,
) -> Value {
    let owner = placement.owner(shard);
    let replicas: Vec<&str> = placement.replicas(shard).collect();
    let mut report = json!({
        "shard": shard.to_string(),
        "owner": owner,
        "replicas": replicas,
    });
    if owner == dc {
        let Some(outbox) = state.outbox(shard) else {
            return report;
        };
        let reported = progress
            .reported
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let mut by_dc = serde_json::Map::new();
        for replica in replicas {
            let cursor = reported
                .get(replica)
                .and_then(|r| r.cursors.get(&shard).copied());
            let (count, age_ms) = unreplicated(outbox, cursor.unwrap_or(Position::START), now_ms);
            let since = reported
                .get(replica)
                .map(|r| progress.mono_ms().saturating_sub(r.at_mono_ms));
            by_dc.insert(
                replica.to_string(),
                json!({
                    "cursor": cursor,
                    "unreplicated_records": count,
                    "unreplicated_age_ms": age_ms,
                    "lag_ms": age_ms,
                    "last_pull_ms_ago": since,
                }),
            );
        }
        report["last"] = json!(outbox.last_position());
        report["by_replica"] = Value::Object(by_dc);
    } else {
        let stream = progress.stream(shard);
        let watermark = state
            .replica(shard)
            .map_or(Position::START, |r| r.watermark);
        report["local"] = json!({
            "watermark": watermark,
            "owner_last": stream.owner_last,
            "lag_ms": lag_ms(&stream, now_ms),
            "stopped": stream.stopped,
            "last_answer_ms_ago": stream.last_answer.map(|a| progress.mono_ms().saturating_sub(a)),
        });
    }
    report
}

/// Sets the replication gauges: per DC aggregates only (shards would multiply the series).
pub fn refresh_gauges(
    dc: &str,
    placement: &ShardMap,
    state: &State,
    progress: &Progress,
    now_ms: u64,
) {
    let reported = progress
        .reported
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let mut lag_by_owner: BTreeMap<&str, u64> = BTreeMap::new();
    let mut unreplicated_by_replica: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut stopped = 0u64;
    for shard in placement.shards() {
        let owner = placement.owner(shard);
        if owner == dc {
            let Some(outbox) = state.outbox(shard) else {
                continue;
            };
            for replica in placement.replicas(shard) {
                let cursor = reported
                    .get(replica)
                    .and_then(|r| r.cursors.get(&shard).copied())
                    .unwrap_or(Position::START);
                let (count, age_ms) = unreplicated(outbox, cursor, now_ms);
                let entry = unreplicated_by_replica.entry(replica).or_default();
                entry.0 += count;
                entry.1 = entry.1.max(age_ms);
            }
        } else {
            let stream = progress.stream(shard);
            stopped += u64::from(stream.stopped.is_some());
            let lag = lag_by_owner.entry(owner).or_default();
            *lag = (*lag).max(lag_ms(&stream, now_ms));
        }
    }
    for (owner, lag) in lag_by_owner {
        metrics::gauge!("coopr_replication_lag_ms", "owner_dc" => owner.to_string())
            .set(lag as f64);
    }
    for (replica, (count, age_ms)) in unreplicated_by_replica {
        metrics::gauge!("coopr_replication_unreplicated_records", "replica_dc" => replica.to_string())
            .set(count as f64);
        metrics::gauge!("coopr_replication_unreplicated_age_ms", "replica_dc" => replica.to_string())
            .set(age_ms as f64);
    }
    metrics::gauge!("coopr_replication_stopped_shards").set(stopped as f64);
}

#[cfg(test)]
mod tests {
    use coopr_state::{GlobalRecord, RecordKind};

    use super::*;

    fn outbox_with(at_ms: &[u64]) -> Outbox {
        let mut outbox = Outbox::default();
        for (i, at) in at_ms.iter().enumerate() {
            let kind = RecordKind::Global(GlobalRecord::TenantDeleted(i.to_string()));
            outbox.push(ShardId::GLOBAL, kind, *at, 100);
        }
        outbox
    }

    /// A batch stops at `max` and says when the first record left out was committed.
    #[test]
    fn batches_are_capped_and_say_what_is_left() {
        let outbox = outbox_with(&[10, 20, 30]);
        let batch = read_batch(&outbox, Position::START, 2);
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.next_at_ms, Some(30));
        assert_eq!(batch.last.seq, 3);
        let rest = read_batch(&outbox, Position { epoch: 1, seq: 2 }, 2);
        assert_eq!(rest.records.len(), 1);
        assert_eq!(rest.next_at_ms, None);
        let none = read_batch(&outbox, Position { epoch: 1, seq: 3 }, 2);
        assert!(none.records.is_empty() && none.error.is_none());
        let ahead = read_batch(&outbox, Position { epoch: 1, seq: 9 }, 2);
        assert!(ahead.error.is_some());
        let other_epoch = read_batch(&outbox, Position { epoch: 2, seq: 0 }, 2);
        assert!(other_epoch.error.is_some());
    }

    /// An outbox is trimmed only through what every replica reported, and only when that
    /// removes something.
    #[test]
    fn trims_follow_the_slowest_replica() {
        let mut outbox = outbox_with(&[10, 20, 30]);
        let at = |seq| Position { epoch: 1, seq };
        assert_eq!(trim_point(&outbox, at(0)), None);
        assert_eq!(trim_point(&outbox, at(2)), Some(2));
        assert_eq!(trim_point(&outbox, at(4)), None, "beyond the last record");
        assert_eq!(trim_point(&outbox, Position { epoch: 2, seq: 1 }), None);
        outbox.trim(2);
        assert_eq!(trim_point(&outbox, at(2)), None, "nothing left to remove");
        assert_eq!(trim_point(&outbox, at(3)), Some(3));

        let placement = ShardMap::initial(["a", "b", "c"].map(String::from), 3);
        let progress = Progress::new(Arc::new(crate::clock::SystemClock::new()));
        let shard = ShardId(0); // owned by a, replicated by b and c
        assert_eq!(progress.acknowledged(&placement, shard), None);
        progress.record_cursors("b", &BTreeMap::from([(shard, at(3))]));
        assert_eq!(
            progress.acknowledged(&placement, shard),
            None,
            "c is silent"
        );
        progress.record_cursors("c", &BTreeMap::from([(shard, at(1))]));
        assert_eq!(progress.acknowledged(&placement, shard), Some(at(1)));
        progress.record_cursors("c", &BTreeMap::from([(ShardId(1), at(9))]));
        assert_eq!(
            progress.acknowledged(&placement, shard),
            None,
            "c no longer says"
        );
    }

    /// The owner counts what a replica lacks and how old the oldest of it is.
    #[test]
    fn unreplicated_counts_from_the_cursor() {
        let outbox = outbox_with(&[10, 20, 30]);
        assert_eq!(unreplicated(&outbox, Position::START, 100), (3, 90));
        assert_eq!(
            unreplicated(&outbox, Position { epoch: 1, seq: 2 }, 100),
            (1, 70)
        );
        assert_eq!(
            unreplicated(&outbox, Position { epoch: 1, seq: 3 }, 100),
            (0, 0)
        );
    }
}
