//! The application [`StateMachine`] and [`RaftStateMachineStore`], openraft's state machine
//! storage (v2) that drives it and keeps its snapshots.
//!
//! ```text
//!   committed entries ──apply──> RaftStateMachineStore ──payloads of Normal──> StateMachine::apply
//!                                  | entries' batches,       (index, bytes)*
//!                                  | in order
//!                                  | last_applied, last_membership (memory)
//!                                  |
//!   build_snapshot ──────────────> StateMachine::snapshot() under the apply lock (a quick take),
//!                                  then, after the lock, its parts one by one ──> a new file
//!   install_snapshot (from leader) ─> chunks into a file, checked, made current (durable), then
//!                                     StateMachine::restore(its parts, one at a time)
//!   open ───────────────────────────> StateMachine::restore(the current snapshot's parts);
//!                                     openraft then re-applies the log after it
//! ```
//!
//! The state machine itself is not persisted: the snapshot is. On restart the application state
//! is rebuilt from the last snapshot, and openraft re-applies committed entries after it.
//!
//! Snapshots are files of their own ([`crate::snapshot`]), apart from the log, so building a
//! snapshot never drops log entries openraft may still need (openraft purges the log itself,
//! keeping `max_in_snapshot_log_to_keep` entries for lagging followers). A snapshot is written,
//! sent and read one part at a time: a node never holds one whole in memory.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use coopr_store::LogStore;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{BasicNode, Entry};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::log_store::{io_error, StorageFailure};
use crate::snapshot::{SnapshotData, SnapshotReader, SnapshotStore};
use crate::types::{Batch, NodeId, Payload, TypeConfig};

/// A snapshot's parts, read one at a time (see [`StateMachine::restore`]).
pub type Parts<'a> = &'a mut dyn Iterator<Item = io::Result<(u32, Vec<u8>)>>;

/// Where a snapshot's parts are written, one at a time.
pub type PartSink<'a> = &'a mut dyn FnMut(u32, &[u8]) -> io::Result<()>;

/// A snapshot [`StateMachine::snapshot`] took, and what writes it out: its parts, one at a
/// time, to the sink (stopping at the sink's first error).
pub type TakenSnapshot = Box<dyn FnOnce(PartSink<'_>) -> io::Result<()> + Send>;

/// The application state machine, driven by committed entries.
///
/// Implementations use interior mutability (the server reads the state concurrently through
/// its own handle). They must be deterministic: the same entries applied to the same state
/// give the same state and responses on every node.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies committed application payloads in log order; returns one response per payload.
    /// Called with payloads after the last applied one only, each exactly once per process
    /// lifetime since the last [`StateMachine::restore`].
    ///
    /// The index given with a payload is the index of the Raft log entry that carried it.
    /// [`crate::RaftHandle::write`] group-commits concurrent writes into one entry, so indices
    /// are per batch: consecutive payloads may share an index (they are still applied in
    /// their order within the entry), and indices only grow from one payload to the next.
    fn apply(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>>;

    /// Takes a snapshot of the full state as of the last applied entry, and returns what
    /// writes it out (parts keyed by shard id, so a shard can be dropped as a unit; each id
    /// once). Called under the lock `apply` takes, so it never observes a half-applied batch:
    /// taking should be quick (share or copy what the writing needs). The writing runs after
    /// the lock is released, while entries go on being applied.
    fn snapshot(&self) -> TakenSnapshot;

    /// Replaces the whole state with a snapshot's parts, read one at a time (none: the initial
    /// state). An error of `parts` fails the restore.
    fn restore(&self, parts: Parts<'_>) -> anyhow::Result<()>;
}

/// Every part of a snapshot in one map: for state machines whose snapshot is small.
pub fn collect_parts(parts: Parts<'_>) -> io::Result<BTreeMap<u32, Vec<u8>>> {
    parts.collect()
}

pub(crate) const SNAPSHOT_META_KEY: &str = "raft.snapshot_meta";

/// What is known about the applied state; guarded by one mutex together with the calls into
/// the application, so a snapshot always matches its `last_applied`.
#[derive(Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
}

struct Shared {
    app: Arc<dyn StateMachine>,
    snapshots: SnapshotStore,
    applied: Mutex<Applied>,
    gauge: Arc<SnapshotGauge>,
}

/// What decides when the next snapshot is due (see [`SnapshotGauge::due`]).
#[derive(Debug, Default)]
pub struct SnapshotGauge {
    /// Bytes of the application payloads applied since the state the last snapshot holds.
    applied_bytes: AtomicU64,
    /// Bytes of the last snapshot (built, installed, or restored at start).
    snapshot_bytes: AtomicU64,
    /// A snapshot is being built.
    building: AtomicBool,
}

impl SnapshotGauge {
    /// Whether a new snapshot is worth its cost: none is being built, and the commands applied
    /// since the last one add up to at least `percent` % of its size. At 100, building
    /// snapshots writes at most as many bytes as the log they replace, and a node restarts by
    /// replaying at most about a snapshot's worth of log, whatever the size of the state.
    pub fn due(&self, percent: u64) -> bool {
        let needed = u128::from(self.snapshot_bytes.load(Ordering::Relaxed)) * u128::from(percent);
        !self.building.load(Ordering::Acquire)
            && u128::from(self.applied_bytes.load(Ordering::Relaxed)) * 100 >= needed
    }

    /// Bytes of the last snapshot.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of commands applied since the state of the last snapshot.
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes.load(Ordering::Relaxed)
    }

    fn snapshot_taken(&self, bytes: u64) {
        self.applied_bytes.store(0, Ordering::Relaxed);
        self.snapshot_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Clears [`SnapshotGauge::building`] when a build ends, however it ends.
struct Building(Arc<SnapshotGauge>);

impl Drop for Building {
    fn drop(&mut self) {
        self.0.building.store(false, Ordering::Release);
    }
}

impl Shared {
    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// openraft's state machine storage: drives a [`StateMachine`] and keeps its snapshots in a
/// [`SnapshotStore`]. Cheap to clone (the clone is the snapshot builder).
#[derive(Clone)]
pub struct RaftStateMachineStore {
    shared: Arc<Shared>,
}

/// Runs snapshot work on tokio's blocking pool (file I/O and whole-state encoding), or inline
/// for a store in memory (whose simulation must stay on one thread).
async fn snapshot_work<T, F>(store: &SnapshotStore, run: F) -> Result<T, StorageFailure>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageFailure> + Send + 'static,
{
    if !store.blocks() {
        return run();
    }
    match tokio::task::spawn_blocking(run).await {
        Ok(result) => result,
        Err(join_error) => Err(StorageFailure::Task(join_error.to_string())),
    }
}

fn io_failure(error: io::Error) -> StorageFailure {
    StorageFailure::Invariant(format!("snapshot: {error}"))
}

fn restore_from(
    app: &dyn StateMachine,
    reader: Option<SnapshotReader>,
) -> Result<(), StorageFailure> {
    let restored = match reader {
        Some(mut reader) => app.restore(&mut reader),
        None => app.restore(&mut std::iter::empty()),
    };
    restored.map_err(|e| restore_failed(&e))
}

impl RaftStateMachineStore {
    /// Opens the state machine storage: restores `app` from the current snapshot in
    /// `snapshots` if there is one (else resets it to the initial state).
    pub async fn open(
        app: Arc<dyn StateMachine>,
        snapshots: SnapshotStore,
    ) -> Result<Self, StorageError<NodeId>> {
        let store = snapshots.clone();
        let restored_app = app.clone();
        let (meta, bytes) = snapshot_work(&snapshots, move || {
            let reader = store.open_current().map_err(io_failure)?;
            let meta = reader.as_ref().map(|r| r.meta().clone());
            let bytes = reader.as_ref().map_or(0, SnapshotReader::bytes);
            restore_from(&*restored_app, reader)?;
            Ok((meta, bytes))
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        let mut applied = Applied::default();
        if let Some(meta) = meta {
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
        }
        let gauge = Arc::new(SnapshotGauge::default());
        gauge.snapshot_taken(bytes);
        Ok(RaftStateMachineStore {
            shared: Arc::new(Shared {
                app,
                snapshots,
                applied: Mutex::new(applied),
                gauge,
            }),
        })
    }

    /// What the node's snapshot policy reads.
    pub fn gauge(&self) -> Arc<SnapshotGauge> {
        self.shared.gauge.clone()
    }

    /// The last applied log id (openraft index), as the application state reflects it.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.shared.applied().last_applied
    }
}

/// The description of the snapshot kept in a log store by earlier builds.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, BasicNode>,
}

/// Moves a snapshot kept by an earlier build in a [`LogStore`] (with its description under
/// `raft.snapshot_meta`) into `snapshots`, unless that already has one. Returns whether there
/// was one to move.
pub fn import_log_store_snapshot(
    store: &dyn LogStore,
    snapshots: &SnapshotStore,
) -> anyhow::Result<bool> {
    let Some(description) = store.load_meta(SNAPSHOT_META_KEY)? else {
        return Ok(false);
    };
    if snapshots.open_current()?.is_some() {
        return Ok(false);
    }
    let StoredSnapshotMeta { meta } = serde_json::from_slice(&description)?;
    let snapshot = store.load_snapshot()?.unwrap_or_default();
    let expected = meta.last_log_id.map_or(0, |id| id.index + 1);
    anyhow::ensure!(
        snapshot.last_index == expected,
        "snapshot parts cover index {} but its description says {expected}",
        snapshot.last_index
    );
    let mut writer = snapshots.writer(&meta)?;
    for (id, part) in &snapshot.parts {
        writer.part(*id, &part.bytes)?;
    }
    snapshots.commit(writer)?;
    Ok(true)
}

fn restore_failed(error: &anyhow::Error) -> StorageFailure {
    StorageFailure::Invariant(format!("StateMachine::restore failed: {error:#}"))
}

impl RaftSnapshotBuilder<TypeConfig> for RaftStateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.shared.gauge.building.store(true, Ordering::Release);
        let _building = Building(self.shared.gauge.clone());
        let shared = self.shared.clone();
        let (meta, data) = snapshot_work(&self.shared.snapshots, move || {
            // Taken under the lock that `apply` holds, so the parts match `last_applied`;
            // written after it.
            let applied = shared.applied();
            let last_log_id = applied.last_applied;
            let snapshot_id = match last_log_id {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => "empty".to_owned(),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership: applied.last_membership.clone(),
                snapshot_id,
            };
            let taken = shared.app.snapshot();
            // What is applied from now on counts toward the next snapshot.
            shared.gauge.applied_bytes.store(0, Ordering::Relaxed);
            drop(applied);
            let mut writer = shared.snapshots.writer(&meta).map_err(io_failure)?;
            taken(&mut |id, bytes| writer.part(id, bytes)).map_err(io_failure)?;
            shared
                .gauge
                .snapshot_bytes
                .store(writer.bytes(), Ordering::Relaxed);
            let data = shared.snapshots.commit(writer).map_err(io_failure)?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, data = ?data, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for RaftStateMachineStore {
    type SnapshotBuilder = RaftStateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let applied = self.shared.applied();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Batch>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut applied = self.shared.applied();
        let mut responses = Vec::with_capacity(entries.len());
        // The payloads of consecutive normal entries go to the application in one call, each
        // with its entry's index; `sizes` remembers how many payloads each entry had, so the
        // replies are handed back as one batch of responses per entry.
        let mut batch: Vec<(u64, &[u8])> = Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        let flush =
            |batch: &mut Vec<(u64, &[u8])>, sizes: &mut Vec<usize>, responses: &mut Vec<Batch>| {
                let replies = if batch.is_empty() {
                    Vec::new()
                } else {
                    // One stage of a write's latency: the application applies the entries.
                    let started = tokio::time::Instant::now();
                    let replies = self.shared.app.apply(batch);
                    metrics::histogram!("coopr_raft_apply_seconds")
                        .record(started.elapsed().as_secs_f64());
                    replies
                };
                assert_eq!(
                    replies.len(),
                    batch.len(),
                    "StateMachine::apply must return one response per entry"
                );
                let mut replies = replies.into_iter().map(Payload);
                for size in sizes.drain(..) {
                    responses.push(Batch(replies.by_ref().take(size).collect()));
                }
                batch.clear();
            };
        for entry in &entries {
            applied.last_applied = Some(*entry.get_log_id());
            match &entry.payload {
                EntryPayload::Normal(payloads) => {
                    sizes.push(payloads.0.len());
                    let bytes: usize = payloads.0.iter().map(|p| p.0.len()).sum();
                    self.shared
                        .gauge
                        .applied_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    batch.extend(
                        payloads
                            .0
                            .iter()
                            .map(|payload| (entry.log_id.index, payload.0.as_slice())),
                    );
                }
                EntryPayload::Blank => {
                    flush(&mut batch, &mut sizes, &mut responses);
                    responses.push(Batch::default());
                }
                EntryPayload::Membership(membership) => {
                    flush(&mut batch, &mut sizes, &mut responses);
                    applied.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    responses.push(Batch::default());
                }
            }
        }
        flush(&mut batch, &mut sizes, &mut responses);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        let data = self.shared.snapshots.receiver().map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                &io_failure(e),
            )
        })?;
        Ok(Box::new(data))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let received = snapshot.into_received().await;
        let shared = self.shared.clone();
        let installed = meta.clone();
        let restored = snapshot_work(&self.shared.snapshots, move || {
            // Durable and current first: a crash after this point restarts from it.
            let reader = shared
                .snapshots
                .install(received, &installed)
                .map_err(io_failure)?;
            let bytes = reader.bytes();
            let mut applied = shared.applied();
            let restoring = std::time::Instant::now();
            restore_from(&*shared.app, Some(reader))?;
            shared.gauge.snapshot_taken(bytes);
            applied.last_applied = installed.last_log_id;
            applied.last_membership = installed.last_membership.clone();
            Ok(restoring.elapsed())
        })
        .await
        .map_err(|e| io_error(subject, ErrorVerb::Write, &e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            restore_ms = restored.as_millis() as u64,
            "installed snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let store = self.shared.snapshots.clone();
        let current = snapshot_work(&self.shared.snapshots, move || {
            store.current_data().map_err(io_failure)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use coopr_store::{RedbStore, Snapshot as StoreSnapshot};
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::RaftStores;

    /// A node upgraded from a build that kept its snapshot in `raft-snapshot.redb` starts from
    /// that snapshot, now a file, and the old store is gone.
    #[test]
    fn a_snapshot_kept_in_the_old_store_moves_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-1-41".into(),
        };
        let old = dir.path().join("raft-snapshot.redb");
        {
            let store = RedbStore::open(&old).unwrap();
            let description =
                serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() }).unwrap();
            let parts = [(0, b"zero".to_vec()), (9, b"nine".to_vec())];
            store
                .install_snapshot_with_meta(
                    &StoreSnapshot::at(42, parts),
                    &[(SNAPSHOT_META_KEY, description.as_slice())],
                )
                .unwrap();
        }
        let stores = RaftStores::open(dir.path()).unwrap();
        assert!(!old.exists());
        let reader = stores.snapshots.open_current().unwrap().unwrap();
        assert_eq!(reader.meta(), &meta);
        let parts: Vec<_> = reader.collect::<io::Result<_>>().unwrap();
        assert_eq!(parts, vec![(0, b"zero".to_vec()), (9, b"nine".to_vec())]);
        // A description that does not match its parts is refused, not half imported.
        drop(stores);
        let other = tempfile::tempdir().unwrap();
        let store = RedbStore::open(other.path().join("raft-snapshot.redb")).unwrap();
        let description = serde_json::to_vec(&StoredSnapshotMeta { meta }).unwrap();
        store
            .install_snapshot_with_meta(
                &StoreSnapshot::at(7, [(0, b"zero".to_vec())]),
                &[(SNAPSHOT_META_KEY, description.as_slice())],
            )
            .unwrap();
        drop(store);
        assert!(RaftStores::open(other.path()).is_err());
    }
}
