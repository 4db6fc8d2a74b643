//! The write path of one node: proposals are batched by a single writer task, appended durably
//! to the log (one fsync per batch: group commit), then applied to the in-memory state under a
//! short write lock. Readers take a read lock and never wait for the disk.
//!
//! ```text
//!  handler --propose(entry)--> [mpsc] --> writer task: batch <= MAX_BATCH
//!                                             | append(batch) + fsync (blocking pool)
//!                                             v
//!                                         state.write(): apply each entry, answer each proposer
//!                                             | every `snapshot_every` entries
//!                                             v
//!                                         install_snapshot (per-shard parts), log compacted
//! ```

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use coopr_state::{encode_entry, snapshot_of, Command, CommandResult, Entry, State};
use coopr_store::{LogIndex, LogStore};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Notify};

/// Most entries in one durable batch.
const MAX_BATCH: usize = 512;
/// Proposals waiting for the writer before callers are told to back off.
const QUEUE_CAPACITY: usize = 8192;

#[derive(Debug, Error, Clone)]
pub enum ProposeError {
    #[error("the log is not writable: {0}")]
    Storage(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("too many pending writes")]
    Overloaded,
}

struct Proposal {
    entry: Entry,
    reply: oneshot::Sender<Result<CommandResult, ProposeError>>,
}

/// Shared state of one server node.
pub struct Core {
    state: RwLock<State>,
    store: Arc<dyn LogStore>,
    proposals: mpsc::Sender<Proposal>,
    /// Signalled whenever entries were applied (task queue or job state may have changed).
    pub applied: Notify,
    applied_index: std::sync::atomic::AtomicU64,
}

impl Core {
    /// Starts the writer task. `last_index` is the index of the last entry already in `state`.
    pub fn start(
        state: State,
        store: Arc<dyn LogStore>,
        last_index: LogIndex,
        snapshot_every: u64,
    ) -> Arc<Core> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let core = Arc::new(Core {
            state: RwLock::new(state),
            store,
            proposals: tx,
            applied: Notify::new(),
            applied_index: last_index.into(),
        });
        tokio::spawn(writer(Arc::downgrade(&core), rx, snapshot_every.max(1)));
        core
    }

    /// A consistent view of the state. Never hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic inside apply, which is an invariant violation: stop.
        self.state.read().expect("state lock poisoned")
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Appends a command durably and applies it; returns its outcome.
    pub async fn propose(
        &self,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<CommandResult, ProposeError> {
        let entry = Entry {
            now_ms: now_ms(),
            idempotency_key,
            command,
        };
        let (reply, answer) = oneshot::channel();
        self.proposals
            .try_send(Proposal { entry, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => ProposeError::ShuttingDown,
            })?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)?
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn writer(
    core: std::sync::Weak<Core>,
    mut rx: mpsc::Receiver<Proposal>,
    snapshot_every: u64,
) {
    let mut since_snapshot = 0u64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(core) = core.upgrade() else { return };
        let bytes: Vec<Vec<u8>> = batch.iter().map(|p| encode_entry(&p.entry)).collect();
        let store = core.store.clone();
        let started = Instant::now();
        let appended = tokio::task::spawn_blocking(move || store.append(&bytes)).await;
        metrics::histogram!("coopr_log_append_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("coopr_log_batch_entries").record(batch.len() as f64);
        let last_index = match appended {
            Ok(Ok(last)) => last,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "log append failed; rejecting the batch");
                for p in batch {
                    let _ = p.reply.send(Err(ProposeError::Storage(e.to_string())));
                }
                continue;
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(ProposeError::Storage(e.to_string())));
                }
                continue;
            }
        };
        let count = batch.len() as u64;
        {
            let mut state = core.state.write().expect("state lock poisoned");
            for p in batch {
                let outcome = state.apply(&p.entry);
                metrics::counter!("coopr_commands_total", "result" => if outcome.is_ok() { "ok" } else { "rejected" })
                    .increment(1);
                let _ = p.reply.send(Ok(outcome));
            }
            core.applied_index
                .store(last_index, std::sync::atomic::Ordering::Release);
        }
        core.applied.notify_waiters();
        since_snapshot += count;
        if since_snapshot >= snapshot_every {
            since_snapshot = 0;
            let snapshot = snapshot_of(&core.read(), last_index);
            let store = core.store.clone();
            match tokio::task::spawn_blocking(move || store.install_snapshot(&snapshot)).await {
                Ok(Ok(())) => tracing::info!(last_index, "snapshot installed, log compacted"),
                Ok(Err(e)) => tracing::warn!(error = %e, "snapshot failed; the log keeps growing"),
                Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
            }
        }
    }
}
