//! The write path of one node: the DC log. Every command is an entry of the datacenter's Raft
//! group (`coopr-raft`); it is acknowledged once a majority of the DC's nodes persisted it and
//! the leader applied it. Every node applies the same committed entries to its own copy of the
//! state, which readers see through [`Core::read`].
//!
//! ```text
//!  handler --propose(command)--> RaftHandle::write (leader only; followers forward requests)
//!                                   | openraft: append + fsync on a majority, commit
//!                                   v
//!                      DcStateMachine::apply (every node, in log order)
//!                                   | State::apply under a short write lock
//!                                   v
//!                      CommandResult bytes back to the proposer; Core::applied notified
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use coopr_raft::{PartSink, Parts, RaftHandle, StateMachine, TakenSnapshot, WriteError};
use coopr_state::{
    decode_entry, encode_entry, is_archive_part, Command, CommandError, CommandResult, Entry,
    Fence, PartsDecoder, State, StateSnapshot,
};
use thiserror::Error;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::archive::{ArchiveExportError, JobArchive};
use crate::clock::Clock;
use coopr_store::Archive;

#[derive(Debug, Error, Clone)]
pub enum ProposeError {
    /// This node is not the DC log's leader (any more); the request should go to the leader.
    #[error("this node is not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<u64> },
    /// No majority of the DC's nodes answered in time; the write may or may not commit later.
    #[error("no quorum in the datacenter log (waited {waited_ms} ms)")]
    NoQuorum { waited_ms: u64 },
    #[error("the log is not writable: {0}")]
    Storage(String),
    /// This DC may not write the shard now (lease, ownership, epoch or handover; see
    /// `crate::placement::lease`): the client retries, at the owner.
    #[error("{0}")]
    Fenced(coopr_placement::Fenced),
    /// As many client writes as the node admits are in flight already (see [`WriteQueue`]):
    /// nothing was written; the client retries after the hint.
    #[error("the write queue is full: {capacity} client writes are in flight; retry later")]
    WriteQueueFull { capacity: usize },
}

/// Bounds the client writes in flight to the DC log (`max_client_writes_in_flight`): a
/// flood of writes is refused at once (503 `write_queue_full`) instead of piling up in
/// openraft's queue, where each would wait out `write_timeout_ms` and delay every other
/// write, the node's own included. The node's own writes (driver, lease reconcile,
/// replication) take no permit: each of those loops has at most one write in flight, so
/// they are bounded by the number of loops and no client load starves them.
pub struct WriteQueue {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl WriteQueue {
    pub fn new(capacity: usize) -> WriteQueue {
        WriteQueue {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// A place for one client write, held until it is answered.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ProposeError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProposeError::WriteQueueFull {
                capacity: self.capacity,
            })
    }

    /// Client writes proposed and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}

/// The state machine of the DC log: the coopr [`State`], shared with the readers.
pub struct DcStateMachine {
    state: Arc<RwLock<State>>,
    /// Finished jobs retired out of `state` (see [`crate::archive`]).
    archive: Arc<JobArchive>,
    shard_count: u32,
    applied: Arc<Notify>,
    applied_index: Arc<AtomicU64>,
}

impl StateMachine for DcStateMachine {
    fn apply(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let mut responses = Vec::with_capacity(entries.len());
        {
            let mut state = self.state.write().expect("state lock poisoned");
            for (index, bytes) in entries {
                let result = match decode_entry(*index, bytes) {
                    Ok(entry) => state.apply(&entry),
                    // An entry this build cannot read changes nothing, on every node alike.
                    Err(e) => Err(CommandError::invalid(
                        coopr_state::ErrorCode::UndecodableEntry,
                        e.to_string(),
                    )),
                };
                metrics::counter!("coopr_commands_total", "result" => if result.is_ok() { "ok" } else { "rejected" })
                    .increment(1);
                responses.push(serde_json::to_vec(&result).expect("results serialize"));
                self.applied_index.store(*index, Ordering::Release);
            }
            // Under the write lock: a snapshot sees the archive as of the same entry.
            self.archive.apply_effects(state.take_archive_effects());
        }
        self.applied.notify_waiters();
        responses
    }

    fn snapshot(&self) -> TakenSnapshot {
        // Taken under the read lock in microseconds (the shards are shared, the archive is a
        // read transaction); encoded afterwards one part at a time, while applies go on.
        let state = self.state.read().expect("state lock poisoned");
        let taken = StateSnapshot::of(&state);
        let archive = self.archive.view();
        drop(state);
        Box::new(move |out: PartSink<'_>| {
            taken.for_each_part(|id, bytes| out(id, &bytes))?;
            let written = match archive {
                Ok(view) => JobArchive::write_parts(&view, out),
                Err(e) => Err(ArchiveExportError::Store(e)),
            };
            match written {
                Ok(()) => Ok(()),
                Err(ArchiveExportError::Sink(e)) => Err(e),
                // The snapshot then lacks (some) retired jobs: count it, and say so.
                Err(ArchiveExportError::Store(e)) => {
                    metrics::counter!("coopr_archive_snapshot_errors_total").increment(1);
                    tracing::error!(error = %e, "cannot read the job archive into the snapshot");
                    Ok(())
                }
            }
        })
    }

    fn restore(&self, parts: Parts<'_>) -> anyhow::Result<()> {
        // The new state is built beside the old one (readers keep the old until the swap); the
        // archive is replaced as its parts arrive. A failed restore stops the node (openraft
        // treats it as a storage error), and the next start restores again. One thread: parts
        // decoded on every core gained nothing at a million clusters (BENCHMARKS.md).
        let started = tokio::time::Instant::now();
        let mut decoder = PartsDecoder::new(self.shard_count);
        self.archive.clear()?;
        let mut archived = (0, std::time::Duration::ZERO);
        for part in parts {
            let (id, bytes) = part?;
            if is_archive_part(id) {
                let at = tokio::time::Instant::now();
                archived.0 += self.archive.restore_part(&bytes)?;
                archived.1 += at.elapsed();
            } else {
                decoder.add(id, &bytes)?;
            }
        }
        let restored = decoder.finish();
        let mut state = self.state.write().expect("state lock poisoned");
        *state = restored;
        drop(state);
        self.applied.notify_waiters();
        tracing::info!(
            total_ms = started.elapsed().as_millis() as u64,
            archived_jobs = archived.0,
            archive_ms = archived.1.as_millis() as u64,
            "state restored from a snapshot"
        );
        Ok(())
    }
}

/// Shared state of one server node.
pub struct Core {
    state: Arc<RwLock<State>>,
    raft: RaftHandle,
    /// Signalled whenever entries were applied (task queue or job state may have changed).
    pub applied: Arc<Notify>,
    applied_index: Arc<AtomicU64>,
    /// Bytes of the entries this node proposed (written or not): the DC-log side of the
    /// cross-DC/DC-log byte ratio.
    proposed_bytes: AtomicU64,
    /// The node's clock: entries carry its wall time.
    clock: Arc<dyn Clock>,
    /// Finished jobs retired out of the state (see [`crate::archive`]).
    archive: Arc<JobArchive>,
}

impl Core {
    /// The state machine to hand to the Raft group, and the pieces [`Core::new`] shares with it.
    pub fn state_machine(
        shard_count: u32,
        archive: Arc<Archive>,
    ) -> (Arc<DcStateMachine>, CoreParts) {
        let parts = CoreParts {
            state: Arc::new(RwLock::new(State::new(shard_count))),
            applied: Arc::new(Notify::new()),
            applied_index: Arc::new(AtomicU64::new(0)),
            archive: Arc::new(JobArchive::new(archive, shard_count)),
        };
        let sm = Arc::new(DcStateMachine {
            archive: parts.archive.clone(),
            state: parts.state.clone(),
            shard_count,
            applied: parts.applied.clone(),
            applied_index: parts.applied_index.clone(),
        });
        (sm, parts)
    }

    pub fn new(parts: CoreParts, raft: RaftHandle, clock: Arc<dyn Clock>) -> Arc<Core> {
        Arc::new(Core {
            state: parts.state,
            raft,
            applied: parts.applied,
            applied_index: parts.applied_index,
            archive: parts.archive,
            proposed_bytes: AtomicU64::new(0),
            clock,
        })
    }

    /// The node's archive of retired jobs.
    pub fn archive(&self) -> &JobArchive {
        &self.archive
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// A consistent view of the local copy of the state. Never hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic inside apply, which is an invariant violation: stop.
        self.state.read().expect("state lock poisoned")
    }

    /// Index of the last entry applied to the local state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// Bytes of the entries this node proposed since it started.
    pub fn proposed_bytes(&self) -> u64 {
        self.proposed_bytes.load(Ordering::Relaxed)
    }

    /// Commits a command in the DC log and returns its outcome (leader only). The entry carries
    /// the node's wall time (`Entry::now_ms`: what every node applies it at).
    pub async fn propose(
        &self,
        command: Command,
        idempotency_key: Option<String>,
        fence: Option<Fence>,
    ) -> Result<CommandResult, ProposeError> {
        let entry = Entry {
            now_ms: self.clock.wall_ms(),
            idempotency_key,
            fence,
            command,
        };
        // A duration for the metric only, at microsecond resolution: tokio's clock, which a
        // simulation drives like the node's clock.
        let started = tokio::time::Instant::now();
        let bytes = encode_entry(&entry);
        self.proposed_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        metrics::counter!("coopr_log_bytes_proposed_total").increment(bytes.len() as u64);
        let written = self.raft.write(bytes).await;
        metrics::histogram!("coopr_commit_seconds").record(started.elapsed().as_secs_f64());
        match written {
            Ok((_, bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| ProposeError::Storage(format!("unreadable result: {e}"))),
            Err(WriteError::ForwardToLeader { leader_id, .. }) => {
                Err(ProposeError::NotLeader { leader: leader_id })
            }
            Err(WriteError::NoQuorum { waited_ms } | WriteError::Timeout { waited_ms }) => {
                Err(ProposeError::NoQuorum { waited_ms })
            }
            Err(e @ WriteError::TooLarge { .. }) => Err(ProposeError::Storage(e.to_string())),
            Err(WriteError::Fatal(e)) => Err(ProposeError::Storage(e)),
        }
    }
}

/// What [`Core::state_machine`] shares between the state machine and the core.
pub struct CoreParts {
    state: Arc<RwLock<State>>,
    applied: Arc<Notify>,
    applied_index: Arc<AtomicU64>,
    archive: Arc<JobArchive>,
}

impl CoreParts {
    /// The state the state machine applies to (tools that prepare a node's data offline, e.g.
    /// `coopr-bench catchup`, write into it before a snapshot is built).
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }

    /// The job archive the state machine writes retired jobs to.
    pub fn archive(&self) -> Arc<JobArchive> {
        self.archive.clone()
    }
}
