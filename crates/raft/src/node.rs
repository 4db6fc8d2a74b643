//! Starting a Raft node and the [`RaftHandle`] the server uses: writes, read barriers, status,
//! leadership changes.
//!
//! # Group commit
//! openraft 0.9 turns every `client_write` into its own log append, with its own fsync on the
//! leader, however many clients wait. [`RaftHandle::write`] therefore does not call it
//! directly: it queues the payload for the node's batcher task, which proposes whatever is
//! waiting as one log entry (a [`Batch`]) and answers each caller with its own response.
//!
//! ```text
//!   write(p1) ─┐                         ┌─ client_write_ff(Batch[p1, p2, p3]) ── entry i
//!   write(p2) ─┼─ queue ── batcher task ─┤      (at most MAX_BATCHES_IN_FLIGHT unanswered)
//!   write(p3) ─┘  (FIFO)   drains all    └─ answer task: responses [r1, r2, r3] of entry i
//!                          waiting, up to        ──> p1: (i, r1), p2: (i, r2), p3: (i, r3)
//!                          256 payloads / 1 MiB      errors go to every caller of the batch
//! ```
//!
//! The batcher never waits to collect: a write that finds a free slot is proposed at once,
//! alone. Writes batch up only while [`MAX_BATCHES_IN_FLIGHT`] batches are being committed,
//! so one append fsync (and one replication round) covers everything that queued meanwhile.
//! Batches are proposed in queue order, so writes are applied in the order `write` was called
//! (for calls that do not overlap, that is the order their callers observe).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coopr_store::{LogStore, MemStore, RedbStore, StoreError, WalStore};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::log_store::RaftLogStore;
use crate::network::{HttpNetworkFactory, GROUP_HEADER, SECRET_HEADER, STATUS_PATH};
use crate::snapshot::SnapshotStore;
use crate::state_machine::{RaftStateMachineStore, SnapshotGauge, StateMachine};
use crate::types::{Batch, NodeId, Payload, TypeConfig};

/// Most payloads group-committed into one log entry.
pub const MAX_BATCH_PAYLOADS: usize = 256;
/// Most payload bytes group-committed into one log entry (a larger payload goes alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The largest payload [`RaftHandle::write`] takes (32 MiB): an entry holding it, with its
/// header, fits in one append RPC ([`crate::wire::MAX_RPC_BODY_BYTES`], 64 MiB). A larger
/// payload could be appended on the leader but never replicated.
pub const MAX_PAYLOAD_BYTES: usize = 32 * 1024 * 1024;
/// The largest `snapshot_chunk_bytes` (32 MiB): a chunk with its header must fit in one
/// install-snapshot RPC ([`crate::wire::MAX_RPC_BODY_BYTES`]).
pub const MAX_SNAPSHOT_CHUNK_BYTES: u64 = 32 * 1024 * 1024;

/// The default of [`RaftConfig::snapshot_install_timeout_ms`]: 10 minutes (a node of this
/// project installs a million clusters' snapshot in about 100 s on two cores).
pub const SNAPSHOT_INSTALL_TIMEOUT_MS: u64 = 600_000;
/// Batches proposed but not answered yet at any time. Two let the leader append (and fsync)
/// the next batch while the previous one is being replicated; writes arriving while both slots
/// are taken queue up and go out together in the next batch.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// The configuration of one node of one Raft group. Every option is listed with its default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// The group's name (openraft's `cluster_name`), e.g. `"dc-a"` or `"placement"`. Sent with
    /// every RPC and checked by the receiver. Default `"coopr"`.
    #[serde(default = "defaults::group")]
    pub group: String,
    /// This node's id; must be a key of `members`.
    pub node_id: NodeId,
    /// Every voter of the group: node id -> internal base URL (`http://10.0.0.1:7001`, or with
    /// a path prefix when several groups share a port). Used to bootstrap the group, and where
    /// this node calls each of them (whatever addresses the membership holds).
    pub members: BTreeMap<NodeId, String>,
    /// Shared secret sent in the `Coopr-Cluster-Secret` header; must not be empty.
    pub secret: String,
    /// Leader heartbeat period. Default 100.
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Election timeout range; a follower that hears no leader for a random time in it starts
    /// an election. Defaults 300 and 600.
    #[serde(default = "defaults::election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "defaults::election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once at least this many log entries were applied since the last one,
    /// and the commands among them add up to at least the last snapshot's size (so snapshots
    /// grow rarer as the state grows: building them writes at most as many bytes as the log
    /// they replace). Default 10 000.
    #[serde(default = "defaults::snapshot_every")]
    pub snapshot_every: u64,
    /// The percentage of the last snapshot's size that the commands applied since must reach
    /// before the next snapshot (see `snapshot_every`). Default 100; 0: entries count alone.
    #[serde(default = "defaults::snapshot_log_percent")]
    pub snapshot_log_percent: u64,
    /// Entries kept in the log after a snapshot, so slightly lagging followers catch up from the
    /// log rather than a snapshot. Default 1 000.
    #[serde(default = "defaults::logs_kept_after_snapshot")]
    pub logs_kept_after_snapshot: u64,
    /// Most entries in one append RPC. Default 32: openraft bounds every append RPC by the
    /// heartbeat interval, so a follower must take the whole payload within it (a payload that
    /// never fits would keep a lagging follower from catching up).
    #[serde(default = "defaults::max_payload_entries")]
    pub max_payload_entries: u64,
    /// Snapshot chunk size of the install-snapshot RPC, at most [`MAX_SNAPSHOT_CHUNK_BYTES`].
    /// Default 1 MiB.
    #[serde(default = "defaults::snapshot_chunk_bytes")]
    pub snapshot_chunk_bytes: u64,
    /// Timeout of one snapshot chunk RPC (the last one excepted). Default 5 000.
    #[serde(default = "defaults::snapshot_timeout_ms")]
    pub snapshot_timeout_ms: u64,
    /// How long the leader waits for the answer to a snapshot's last chunk, which the node
    /// sends once it has installed the snapshot. Shorter than an install, the leader gives up
    /// on the stream and starts sending the snapshot again while the node still installs the
    /// first. Default [`SNAPSHOT_INSTALL_TIMEOUT_MS`].
    #[serde(default = "defaults::snapshot_install_timeout_ms")]
    pub snapshot_install_timeout_ms: u64,
    /// Longest a [`RaftHandle::write`] or [`RaftHandle::read_barrier`] waits. Default 5 000.
    #[serde(default = "defaults::write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Persist openraft's committed log id (one more fsync per commit), so a restarted node
    /// re-applies its committed log before hearing from a leader. Default false.
    ///
    /// Not needed for safety: Raft never relies on a persisted commit index. Durability comes
    /// from the log (an entry commits only once a majority fsync'd it), and the commit index is
    /// re-learned: a restarted follower applies its log as soon as the leader's first heartbeat
    /// or append carries the commit index, and a leader (a single-node group included, which
    /// elects itself at once) commits everything in its log with the blank entry of its term
    /// and applies it before it answers a read barrier. The cost of `false` is that a
    /// restarted node serves the state of its last snapshot until then: stale reads on a
    /// follower, which are stale by design anyway (strong reads go through the leader's read
    /// barrier). `true` costs one more fsync per commit on every node.
    #[serde(default = "defaults::persist_committed")]
    pub persist_committed: bool,
}

mod defaults {
    pub fn group() -> String {
        "coopr".into()
    }
    pub fn heartbeat_interval_ms() -> u64 {
        100
    }
    pub fn election_timeout_min_ms() -> u64 {
        300
    }
    pub fn election_timeout_max_ms() -> u64 {
        600
    }
    pub fn snapshot_log_percent() -> u64 {
        100
    }
    pub fn snapshot_every() -> u64 {
        10_000
    }
    pub fn logs_kept_after_snapshot() -> u64 {
        1_000
    }
    pub fn max_payload_entries() -> u64 {
        32
    }
    pub fn snapshot_chunk_bytes() -> u64 {
        1024 * 1024
    }
    pub fn snapshot_timeout_ms() -> u64 {
        5_000
    }
    pub fn snapshot_install_timeout_ms() -> u64 {
        super::SNAPSHOT_INSTALL_TIMEOUT_MS
    }
    pub fn write_timeout_ms() -> u64 {
        5_000
    }
    pub fn persist_committed() -> bool {
        false
    }
}

impl RaftConfig {
    /// A configuration with every default.
    pub fn new(
        node_id: NodeId,
        members: BTreeMap<NodeId, String>,
        secret: impl Into<String>,
    ) -> Self {
        RaftConfig {
            group: defaults::group(),
            node_id,
            members,
            secret: secret.into(),
            heartbeat_interval_ms: defaults::heartbeat_interval_ms(),
            election_timeout_min_ms: defaults::election_timeout_min_ms(),
            election_timeout_max_ms: defaults::election_timeout_max_ms(),
            snapshot_every: defaults::snapshot_every(),
            snapshot_log_percent: defaults::snapshot_log_percent(),
            logs_kept_after_snapshot: defaults::logs_kept_after_snapshot(),
            max_payload_entries: defaults::max_payload_entries(),
            snapshot_chunk_bytes: defaults::snapshot_chunk_bytes(),
            snapshot_timeout_ms: defaults::snapshot_timeout_ms(),
            snapshot_install_timeout_ms: defaults::snapshot_install_timeout_ms(),
            write_timeout_ms: defaults::write_timeout_ms(),
            persist_committed: defaults::persist_committed(),
        }
    }

    /// Checks the values; the error names the bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.group.is_empty() {
            return bad("group", "must not be empty".into());
        }
        if !self.members.contains_key(&self.node_id) {
            return bad(
                "node_id",
                format!(
                    "{} is not one of the members {:?}",
                    self.node_id,
                    self.members.keys()
                ),
            );
        }
        if let Some((id, addr)) = self
            .members
            .iter()
            .find(|(_, addr)| !(addr.starts_with("http://") || addr.starts_with("https://")))
        {
            return bad(
                "members",
                format!("address of node {id} is not an http(s) URL: {addr:?}"),
            );
        }
        if self.secret.is_empty() {
            return bad("secret", "must not be empty".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.election_timeout_min_ms
        {
            return bad(
                "heartbeat_interval_ms",
                format!(
                    "{} must be > 0 and below election_timeout_min_ms {}",
                    self.heartbeat_interval_ms, self.election_timeout_min_ms
                ),
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad(
                "election_timeout_max_ms",
                format!(
                    "{} must be above election_timeout_min_ms {}",
                    self.election_timeout_max_ms, self.election_timeout_min_ms
                ),
            );
        }
        for (field, value) in [
            ("snapshot_every", self.snapshot_every),
            ("max_payload_entries", self.max_payload_entries),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("snapshot_timeout_ms", self.snapshot_timeout_ms),
            (
                "snapshot_install_timeout_ms",
                self.snapshot_install_timeout_ms,
            ),
            ("write_timeout_ms", self.write_timeout_ms),
        ] {
            if value == 0 {
                return bad(field, "must be > 0".into());
            }
        }
        if self.snapshot_chunk_bytes > MAX_SNAPSHOT_CHUNK_BYTES {
            return bad(
                "snapshot_chunk_bytes",
                format!(
                    "{} is above the limit of {MAX_SNAPSHOT_CHUNK_BYTES}",
                    self.snapshot_chunk_bytes
                ),
            );
        }
        Ok(())
    }

    fn openraft_config(&self) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: self.group.clone(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // openraft bounds every chunk's call by this (and starts the whole snapshot over when
            // it passes): the last chunk's answer waits for the install. The other chunks are
            // bounded by `snapshot_timeout_ms` in `network` (a chunk that times out there is
            // sent again).
            install_snapshot_timeout: self
                .snapshot_install_timeout_ms
                .max(self.snapshot_timeout_ms),
            max_payload_entries: self.max_payload_entries,
            // This node's own policy decides (`snapshot_policy`): openraft's counts entries only.
            snapshot_policy: SnapshotPolicy::Never,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| ConfigError {
            field: "openraft",
            reason: e.to_string(),
        })
    }
}

/// A bad [`RaftConfig`] value.
#[derive(Debug, thiserror::Error)]
#[error("invalid raft config `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("raft storage: {0}")]
    Store(#[from] StoreError),
    /// The log store is empty but the snapshot store is not: half of the node's state was
    /// wiped. Starting would replay a snapshot of an earlier incarnation (openraft #1894).
    #[error("inconsistent raft storage: {0}")]
    InconsistentStorage(String),
    #[error("raft storage failed at start: {0}")]
    Storage(String),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("openraft refused to start: {0}")]
    Raft(String),
}

/// Why a write or read barrier did not succeed. Only `ForwardToLeader` says for sure that
/// nothing was written; after `NoQuorum` or `Timeout` the entry may still commit later (the
/// caller retries idempotently).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; retry at the leader (when known).
    #[error("not the leader; the leader is {leader_id:?} at {leader_addr:?}")]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// This node leads but has not heard from a majority recently; nothing can commit.
    #[error("no quorum: the leader lost contact with a majority (waited {waited_ms} ms)")]
    NoQuorum { waited_ms: u64 },
    /// No outcome within the write timeout.
    #[error("no outcome within {waited_ms} ms")]
    Timeout { waited_ms: u64 },
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`]; nothing was proposed.
    #[error("payload of {bytes} bytes is above the limit of {limit_bytes} bytes")]
    TooLarge { bytes: usize, limit_bytes: usize },
    /// The Raft node stopped (shut down, or a storage error made it stop).
    #[error("raft node stopped: {0}")]
    Fatal(String),
}

/// The role of a node in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// A node's view of its group, from openraft's metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub group: String,
    pub node_id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Log indices are openraft's (the group's first entry, its membership, is index 0).
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Voters and their addresses, from the last membership entry the node knows.
    pub voters: BTreeMap<NodeId, String>,
    /// Milliseconds since a majority last acknowledged this leader (leaders only).
    pub millis_since_quorum_ack: Option<u64>,
    /// False while a node that lost its state catches up (it does not vote meanwhile).
    pub may_vote: bool,
    /// True while the node installs a snapshot whose last chunk it received (the leader waits
    /// for that chunk's answer and asks this to tell a long install from a lost chunk).
    #[serde(default)]
    pub installing: bool,
}

/// Where a node keeps its Raft state: the log (with vote, committed and purge point) and the
/// snapshots, apart so that building a snapshot never drops log entries.
#[derive(Clone)]
pub struct RaftStores {
    pub log: Arc<dyn LogStore>,
    pub snapshots: SnapshotStore,
}

impl RaftStores {
    /// The log in `dir/raft-log/` (a [`WalStore`]) and the snapshot files in `dir/snapshots/`,
    /// created if missing. What earlier builds kept in redb files is moved over first, and
    /// those files deleted: a snapshot in `dir/raft-snapshot.redb` to a file, and the log with
    /// its vote and purge point in `dir/raft-log.redb` to the WAL
    /// ([`crate::log_store::import_redb_log`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let io = |e: std::io::Error| StoreError::Io {
            what: format!("open the Raft stores in {}", dir.display()),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let snapshots = SnapshotStore::open(dir.join("snapshots")).map_err(io)?;
        let old = dir.join("raft-snapshot.redb");
        if old.exists() {
            let store = RedbStore::open(&old)?;
            crate::state_machine::import_log_store_snapshot(&store, &snapshots).map_err(|e| {
                StoreError::CorruptMetadata {
                    key: "raft-snapshot.redb",
                    reason: format!("{e:#}"),
                }
            })?;
            drop(store);
            std::fs::remove_file(&old).map_err(io)?;
        }
        let log_dir = dir.join("raft-log");
        let old_log = dir.join("raft-log.redb");
        let importing = dir.join("raft-log.importing");
        if importing.exists() {
            // An import that did not finish; the old log is still there, start it again.
            std::fs::remove_dir_all(&importing).map_err(io)?;
        }
        if old_log.exists() {
            if !log_dir.exists() {
                let old = RedbStore::open(&old_log)?;
                let wal = WalStore::open(&importing)?;
                crate::log_store::import_redb_log(&old, &wal)?;
                drop(wal);
                std::fs::rename(&importing, &log_dir).map_err(io)?;
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            std::fs::remove_file(&old_log).map_err(io)?;
        }
        Ok(RaftStores {
            log: Arc::new(WalStore::open(&log_dir)?),
            snapshots,
        })
    }

    /// Both stores in memory (tests, simulation).
    pub fn in_memory() -> Self {
        RaftStores {
            log: Arc::new(MemStore::new()),
            snapshots: SnapshotStore::in_memory(),
        }
    }
}

/// Keeps a node that installs a snapshot from campaigning. openraft 0.9 has no pre-vote: a
/// node that times out campaigns at a higher term, and the first answer it then gives the
/// leader (to any RPC) makes the leader step down, although the campaign could not win (its
/// log is behind). A node installing a snapshot times out without anything being wrong: the
/// leader's stream to it waits for the install (about 100 s for a million clusters) and sends
/// no heartbeats meanwhile. Seen in `coopr-bench catchup`: a wiped node deposed the leader
/// twice while it caught up, its term at 165 against the leader's 14.
///
/// Chunks before the last count as heartbeats instead (see `network::snapshot`).
pub(crate) struct Installs {
    raft: Raft<TypeConfig>,
    /// Snapshot installs in progress.
    running: std::sync::Mutex<usize>,
}

impl Installs {
    fn running(&self) -> std::sync::MutexGuard<'_, usize> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether an install is in progress.
    pub(crate) fn active(&self) -> bool {
        *self.running() > 0
    }

    /// Keeps the node from campaigning until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Installing {
        let mut running = self.running();
        *running += 1;
        self.raft.runtime_config().elect(false);
        Installing(self.clone())
    }
}

/// A snapshot install in progress (see [`Installs::start`]).
pub(crate) struct Installing(Arc<Installs>);

impl Drop for Installing {
    fn drop(&mut self) {
        let mut running = self.0.running();
        *running = running.saturating_sub(1);
        // Under the lock: an install that starts meanwhile cannot be undone by this one.
        if *running == 0 {
            self.0.raft.runtime_config().elect(true);
        }
    }
}

/// The handle on a running Raft node. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    config: RaftConfig,
    /// How this node calls the others (status probes; the RPCs go through openraft's network,
    /// which holds the same transport).
    transport: Arc<dyn crate::transport::Transport>,
    election_timeout: Duration,
    leader: watch::Receiver<Option<NodeId>>,
    /// 0: votes normally; n > 0: does not vote until it applied index n - 1 (see crate doc).
    vote_after_applied: Arc<AtomicU64>,
    /// Snapshot installs in progress (no campaigns meanwhile).
    installs: Arc<Installs>,
    watcher: JoinHandle<()>,
    gauge: Arc<SnapshotGauge>,
    /// Triggers snapshots (see [`RaftConfig::snapshot_every`]).
    snapshots: JoinHandle<()>,
    /// Writes waiting for the batcher task (see the module doc).
    queue: mpsc::UnboundedSender<QueuedWrite>,
    batcher: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
        self.snapshots.abort();
        self.batcher.abort();
    }
}

type WriteOutcome = Result<(u64, Vec<u8>), WriteError>;

/// A write waiting to be proposed, and where its outcome goes.
struct QueuedWrite {
    payload: Vec<u8>,
    reply: oneshot::Sender<WriteOutcome>,
}

/// What the batcher needs to propose and to explain failures.
struct Proposer {
    raft: Raft<TypeConfig>,
    config: RaftConfig,
}

/// The batcher task: proposes the queued writes in batches, in queue order.
async fn run_batcher(proposer: Arc<Proposer>, mut queue: mpsc::UnboundedReceiver<QueuedWrite>) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut carried: Option<QueuedWrite> = None;
    loop {
        let first = match carried.take() {
            Some(write) => write,
            None => match queue.recv().await {
                Some(write) => write,
                None => return,
            },
        };
        // Writes that arrive while every slot is busy queue up behind `first`.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut payloads = Vec::new();
        let mut replies = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(write) = next.take() {
            // A caller that gave up (timed out, or its future was dropped) is not proposed.
            if !write.reply.is_closed() {
                let full = payloads.len() == MAX_BATCH_PAYLOADS
                    || bytes + write.payload.len() > MAX_BATCH_BYTES;
                if full && !payloads.is_empty() {
                    carried = Some(write);
                    break;
                }
                bytes += write.payload.len();
                payloads.push(Payload(write.payload));
                replies.push(write.reply);
            }
            next = queue.try_recv().ok();
        }
        if payloads.is_empty() {
            continue;
        }
        match proposer.raft.client_write_ff(Batch(payloads)).await {
            Ok(response) => {
                tokio::spawn(answer_batch(proposer.clone(), response, replies, slot));
            }
            Err(e) => {
                let error = fatal(e);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Waits for a proposed batch's outcome (bounded by the write timeout, so a stuck batch frees
/// its slot) and hands every caller its own response, or the batch's error.
async fn answer_batch<F, E>(
    proposer: Arc<Proposer>,
    response: F,
    replies: Vec<oneshot::Sender<WriteOutcome>>,
    slot: OwnedSemaphorePermit,
) where
    F: std::future::Future<
        Output = Result<
            Result<
                openraft::raft::ClientWriteResponse<TypeConfig>,
                ClientWriteError<NodeId, BasicNode>,
            >,
            E,
        >,
    >,
{
    let timeout = Duration::from_millis(proposer.config.write_timeout_ms);
    let outcome = match tokio::time::timeout(timeout, response).await {
        Err(_elapsed) => Err(no_outcome(&proposer.raft, &proposer.config)),
        Ok(Err(_dropped)) => Err(WriteError::Fatal(
            "the raft core dropped the write without an answer".into(),
        )),
        Ok(Ok(Ok(response))) => Ok((response.log_id.index, response.data.0)),
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(to)))) => Err(forward(&proposer.config, to)),
        Ok(Ok(Err(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(WriteError::Fatal(e.to_string()))
        }
    };
    drop(slot);
    match outcome {
        Ok((index, responses)) if responses.len() == replies.len() => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok((index, response.0)));
            }
        }
        Ok((index, responses)) => {
            let error = WriteError::Fatal(format!(
                "entry {index} of {} payloads got {} responses",
                replies.len(),
                responses.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// The error of a write that got no outcome in time: `NoQuorum` if this node leads without
/// having heard from a majority within an election timeout, else `Timeout`.
fn no_outcome(raft: &Raft<TypeConfig>, config: &RaftConfig) -> WriteError {
    let waited_ms = config.write_timeout_ms;
    let metrics = raft.metrics().borrow().clone();
    let lost_quorum = metrics.state == ServerState::Leader
        && metrics
            .millis_since_quorum_ack
            .is_none_or(|ms| ms > config.election_timeout_max_ms);
    if lost_quorum {
        WriteError::NoQuorum { waited_ms }
    } else {
        WriteError::Timeout { waited_ms }
    }
}

fn forward(config: &RaftConfig, forward: ForwardToLeader<NodeId, BasicNode>) -> WriteError {
    let leader_addr = forward.leader_node.map(|node| node.addr).or_else(|| {
        forward
            .leader_id
            .and_then(|id| config.members.get(&id).cloned())
    });
    WriteError::ForwardToLeader {
        leader_id: forward.leader_id,
        leader_addr,
    }
}

/// Starts a Raft node on `stores`, driving `state_machine`. The node serves RPCs once the
/// server mounts [`crate::router`] with the returned handle; call
/// [`RaftHandle::initialize_if_needed`] afterwards.
pub async fn start(
    config: RaftConfig,
    stores: RaftStores,
    state_machine: Arc<dyn StateMachine>,
) -> Result<RaftHandle, StartError> {
    let connect_timeout = Duration::from_millis(config.election_timeout_max_ms);
    let transport = Arc::new(crate::transport::HttpTransport::new(connect_timeout)?);
    start_with(config, stores, state_machine, transport).await
}

/// [`start`] with the [`Transport`](crate::transport::Transport) the node calls the others
/// through (in-memory in a simulation, [`crate::transport::MemNetwork`]).
pub async fn start_with(
    config: RaftConfig,
    stores: RaftStores,
    state_machine: Arc<dyn StateMachine>,
    transport: Arc<dyn crate::transport::Transport>,
) -> Result<RaftHandle, StartError> {
    config.validate()?;
    let openraft_config = Arc::new(config.openraft_config()?);
    let log_store =
        RaftLogStore::new(stores.log.clone(), config.persist_committed).for_group(&config.group);
    let log_pristine = {
        let log_store = log_store.clone();
        if stores.log.blocks() {
            tokio::task::spawn_blocking(move || log_store.is_pristine())
                .await
                .map_err(|e| StartError::Storage(e.to_string()))??
        } else {
            log_store.is_pristine()?
        }
    };
    let sm_store = RaftStateMachineStore::open(state_machine, stores.snapshots.clone())
        .await
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let gauge = sm_store.gauge();
    if log_pristine && sm_store.last_applied().is_some() {
        return Err(StartError::InconsistentStorage(
            "the log store is empty but the snapshot store holds a snapshot; \
             wipe both or neither"
                .into(),
        ));
    }
    let election_timeout = Duration::from_millis(config.election_timeout_max_ms);
    let network = HttpNetworkFactory::new(
        transport.clone(),
        &config.secret,
        &config.group,
        Duration::from_millis(config.snapshot_timeout_ms),
        config.members.clone(),
    );
    let raft = Raft::new(
        config.node_id,
        openraft_config,
        network,
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let vote_after_applied = Arc::new(AtomicU64::new(0));
    let (leader_tx, leader_rx) = watch::channel(None);
    let watcher = tokio::spawn(watch_metrics(
        raft.metrics(),
        leader_tx,
        vote_after_applied.clone(),
    ));
    let snapshots = tokio::spawn(snapshot_policy(
        raft.clone(),
        gauge.clone(),
        config.snapshot_every,
        config.snapshot_log_percent,
    ));
    let (queue, queued) = mpsc::unbounded_channel();
    let batcher = tokio::spawn(run_batcher(
        Arc::new(Proposer {
            raft: raft.clone(),
            config: config.clone(),
        }),
        queued,
    ));
    tracing::info!(group = %config.group, node = config.node_id, "raft node started");
    let installs = Arc::new(Installs {
        raft: raft.clone(),
        running: std::sync::Mutex::new(0),
    });
    Ok(RaftHandle {
        inner: Arc::new(Inner {
            raft,
            config,
            transport,
            election_timeout,
            leader: leader_rx,
            vote_after_applied,
            installs,
            watcher,
            gauge,
            snapshots,
            queue,
            batcher,
        }),
    })
}

/// How often the snapshot policy looks.
const SNAPSHOT_POLICY_INTERVAL: Duration = Duration::from_millis(500);

/// Triggers a snapshot when `every` entries were applied since the last one and the gauge says
/// it is worth its cost ([`SnapshotGauge::due`]).
async fn snapshot_policy(
    raft: Raft<TypeConfig>,
    gauge: Arc<SnapshotGauge>,
    every: u64,
    log_percent: u64,
) {
    let mut tick = tokio::time::interval(SNAPSHOT_POLICY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let entries = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let applied = metrics.last_applied.map_or(0, |id| id.index + 1);
            let snapshot = metrics.snapshot.map_or(0, |id| id.index + 1);
            applied.saturating_sub(snapshot)
        };
        if entries >= every && gauge.due(log_percent) && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// Publishes leader changes and lifts the vote suspension once the node caught up.
async fn watch_metrics(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    leader: watch::Sender<Option<NodeId>>,
    vote_after_applied: Arc<AtomicU64>,
) {
    loop {
        {
            let now = metrics.borrow_and_update();
            let current = now.current_leader;
            leader.send_if_modified(|known| {
                let changed = *known != current;
                *known = current;
                changed
            });
            let threshold = vote_after_applied.load(Ordering::SeqCst);
            if threshold > 0 && now.last_applied.is_some_and(|id| id.index + 1 >= threshold) {
                tracing::info!(node = now.id, "caught up after losing state; votes again");
                vote_after_applied.store(0, Ordering::SeqCst);
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl RaftHandle {
    /// Bootstraps the group with `members` if nobody did yet; idempotent. Returns whether this
    /// call initialized the group.
    ///
    /// - A node with any Raft state (a restart) is never re-initialized.
    /// - A pristine node first asks the other members for their status. If one of them has
    ///   applied entries, the group exists and this node lost its state (wiped disk) or joins
    ///   late: it does not initialize, and it refuses to vote until it has applied what that
    ///   member had applied, so that it cannot help elect a leader missing entries it had
    ///   acknowledged before (see the crate doc). The leader brings it up to date (log or
    ///   snapshot).
    /// - Otherwise it initializes; several members doing so with the same members is safe.
    pub async fn initialize_if_needed(&self) -> Result<bool, WriteError> {
        let raft = &self.inner.raft;
        let initialized = raft.is_initialized().await.map_err(fatal)?;
        if initialized {
            return Ok(false);
        }
        if let Some(applied) = self.peers_applied_index().await {
            tracing::warn!(
                group = %self.inner.config.group,
                node = self.inner.config.node_id,
                peer_applied = applied,
                "pristine node of an existing group: not initializing, not voting until caught up"
            );
            self.inner
                .vote_after_applied
                .store(applied + 1, Ordering::SeqCst);
            return Ok(false);
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .inner
            .config
            .members
            .iter()
            .map(|(&id, addr)| (id, BasicNode { addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(group = %self.inner.config.group, "initialized the raft group");
                Ok(true)
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(RaftError::APIError(e)) => Err(WriteError::Fatal(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    /// The highest applied index reported by a reachable other member, if any has applied one.
    async fn peers_applied_index(&self) -> Option<u64> {
        let config = &self.inner.config;
        let requests = config
            .members
            .iter()
            .filter(|(&id, _)| id != config.node_id)
            .map(|(_, addr)| {
                let url = format!("{}{STATUS_PATH}", addr.trim_end_matches('/'));
                let call = crate::transport::Call::post(url, Vec::new())
                    .header(SECRET_HEADER, &config.secret)
                    .header(GROUP_HEADER, &config.group)
                    .timeout(self.inner.election_timeout);
                let transport = self.inner.transport.clone();
                async move {
                    let answer = transport.call(call).await.ok()?;
                    if !answer.status.is_success() {
                        return None;
                    }
                    serde_json::from_slice::<RaftStatus>(&answer.body)
                        .ok()?
                        .last_applied
                }
            });
        let mut highest = None;
        for applied in futures_join_all(requests).await.into_iter().flatten() {
            highest = highest.max(Some(applied));
        }
        highest
    }

    /// Proposes `payload`; returns the index of the log entry that carried it and the state
    /// machine's response once it is committed and applied on this (leader) node. Bounded by
    /// `write_timeout_ms` (queueing included).
    ///
    /// Concurrent writes are group-committed (see the module doc): several may return the
    /// same index, each with its own response. The payload is queued when the returned future
    /// is first polled; writes are applied in that order. A payload above
    /// [`MAX_PAYLOAD_BYTES`] is refused (`TooLarge`): it could never be replicated.
    pub async fn write(&self, payload: Vec<u8>) -> Result<(u64, Vec<u8>), WriteError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(WriteError::TooLarge {
                bytes: payload.len(),
                limit_bytes: MAX_PAYLOAD_BYTES,
            });
        }
        let (reply, outcome) = oneshot::channel();
        if self
            .inner
            .queue
            .send(QueuedWrite { payload, reply })
            .is_err()
        {
            return Err(WriteError::Fatal("the write batcher stopped".into()));
        }
        let timeout = Duration::from_millis(self.inner.config.write_timeout_ms);
        match tokio::time::timeout(timeout, outcome).await {
            Err(_elapsed) => Err(self.no_outcome()),
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_dropped)) => Err(WriteError::Fatal("the write batcher stopped".into())),
        }
    }

    /// Returns once this node's state machine reflects every write committed before the call
    /// (openraft's `ensure_linearizable`: the leader confirms it still leads a majority, then
    /// waits until it applied its commit index). For `?consistency=strong` reads on the leader.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let raft = &self.inner.raft;
        let timeout = Duration::from_millis(self.inner.config.write_timeout_ms);
        match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
            Err(_elapsed) => Err(self.no_outcome()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(self.forward(forward))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(WriteError::NoQuorum { waited_ms: 0 })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
        }
    }

    fn no_outcome(&self) -> WriteError {
        no_outcome(&self.inner.raft, &self.inner.config)
    }

    fn forward(&self, to: ForwardToLeader<NodeId, BasicNode>) -> WriteError {
        forward(&self.inner.config, to)
    }

    /// This node's current view of the group.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = metrics.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let voters = membership
            .nodes()
            .filter(|(id, _)| voter_ids.contains(id))
            .map(|(&id, node)| (id, node.addr.clone()))
            .collect();
        RaftStatus {
            group: self.inner.config.group.clone(),
            node_id: metrics.id,
            role,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|id| id.index),
            last_log_index: metrics.last_log_index,
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            voters,
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            may_vote: self.may_vote(),
            installing: self.inner.installs.active(),
        }
    }

    /// The current leader's id as this node knows it; changes are published. The server runs
    /// its leader-only work while the value is its own id.
    pub fn watch_leader(&self) -> watch::Receiver<Option<NodeId>> {
        self.inner.leader.clone()
    }

    /// True if this node is the leader (as far as it knows).
    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow() == Some(self.inner.config.node_id)
    }

    /// openraft's full metrics, for diagnostics.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.inner.raft.metrics()
    }

    /// What decides when the next snapshot is due: the last one's size, the bytes applied
    /// since.
    pub fn snapshot_gauge(&self) -> Arc<SnapshotGauge> {
        self.inner.gauge.clone()
    }

    /// Builds a snapshot now (and lets openraft purge the log behind it).
    pub async fn trigger_snapshot(&self) -> Result<(), WriteError> {
        self.inner.raft.trigger().snapshot().await.map_err(fatal)
    }

    /// Stops the node: no more RPCs are answered (they fail) and no more entries applied.
    pub async fn shutdown(self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core ended with an error");
        }
        self.inner.watcher.abort();
        self.inner.snapshots.abort();
        self.inner.batcher.abort();
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub(crate) fn secret(&self) -> &str {
        &self.inner.config.secret
    }

    pub(crate) fn group(&self) -> &str {
        &self.inner.config.group
    }

    /// False while the node catches up after losing its state.
    pub fn may_vote(&self) -> bool {
        self.inner.vote_after_applied.load(Ordering::SeqCst) == 0
    }

    /// Snapshot installs in progress on this node (see [`Installs`]).
    pub(crate) fn installs(&self) -> &Arc<Installs> {
        &self.inner.installs
    }
}

fn fatal(e: openraft::error::Fatal<NodeId>) -> WriteError {
    WriteError::Fatal(e.to_string())
}

/// Awaits all futures concurrently (a small `join_all` without the futures crate).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(output) = handle.await {
            outputs.push(output);
        }
    }
    outputs
}
