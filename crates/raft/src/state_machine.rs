//! The application [`StateMachine`] and [`RaftStateMachineStore`], openraft's state machine
//! storage (v2) that drives it and keeps its snapshots.
//!
//! ```text
//!   committed entries ──apply──> RaftStateMachineStore ──payloads of Normal──> StateMachine::apply
//!                                  | entries' batches,       (index, bytes)*
//!                                  | in order
//!                                  | last_applied, last_membership (memory)
//!                                  |
//!   build_snapshot ──────────────> StateMachine::snapshot() = parts by shard
//!                                  └─> snapshot LogStore: install_snapshot_with_meta(
//!                                        parts at index last_applied+1, "raft.snapshot_meta")
//!   install_snapshot (from leader) ─> persist the same way, then StateMachine::restore(parts)
//!   open ───────────────────────────> load the persisted snapshot, StateMachine::restore(parts);
//!                                     openraft then re-applies the log after it
//! ```
//!
//! The state machine itself is not persisted: the snapshot is. On restart the application state
//! is rebuilt from the last snapshot, and openraft re-applies committed entries after it.
//!
//! Snapshots live in their own [`LogStore`] (in practice a second redb file next to the log),
//! whose log stays empty: the snapshot and its description are written in one atomic fsync'd
//! call, and building a snapshot never drops log entries openraft may still need (openraft
//! purges the log itself, keeping `max_in_snapshot_log_to_keep` entries for lagging followers).
//!
//! Snapshot data on the wire (`SnapshotData = Cursor<Vec<u8>>`, sent in chunks of
//! `snapshot_max_chunk_size` by openraft's install-snapshot RPC):
//!
//! ```text
//!   "CPS1" ‖ part count (4, LE) ‖ { part id (4, LE) ‖ length (8, LE) ‖ bytes }*
//! ```

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use coopr_store::{LogStore, Snapshot as StoreSnapshot};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{BasicNode, Entry};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::log_store::{blocking, io_error, StorageFailure};
use crate::types::{Batch, NodeId, Payload, TypeConfig};

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

    /// A snapshot of the full state as of the last applied entry (parts keyed by shard id, so
    /// a shard can be streamed or dropped as a unit). Must not observe a half-applied batch.
    fn snapshot(&self) -> BTreeMap<u32, Vec<u8>>;

    /// Replaces the whole state with a snapshot's parts (an empty map = the initial state).
    fn restore(&self, parts: &BTreeMap<u32, Vec<u8>>) -> anyhow::Result<()>;
}

pub(crate) const SNAPSHOT_META_KEY: &str = "raft.snapshot_meta";
const SNAPSHOT_MAGIC: &[u8; 4] = b"CPS1";

/// What is known about the applied state; guarded by one mutex together with the calls into
/// the application, so a snapshot always matches its `last_applied`.
#[derive(Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
}

struct Shared {
    app: Arc<dyn StateMachine>,
    snapshots: Arc<dyn LogStore>,
    applied: Mutex<Applied>,
}

impl Shared {
    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// openraft's state machine storage: drives a [`StateMachine`] and stores its snapshots in a
/// [`LogStore`]. Cheap to clone (the clone is the snapshot builder).
#[derive(Clone)]
pub struct RaftStateMachineStore {
    shared: Arc<Shared>,
}

/// The persisted description of the current snapshot.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, BasicNode>,
}

impl RaftStateMachineStore {
    /// Opens the state machine storage: restores `app` from the snapshot in `snapshots` if
    /// there is one (else resets it to the initial state with an empty map).
    pub async fn open(
        app: Arc<dyn StateMachine>,
        snapshots: Arc<dyn LogStore>,
    ) -> Result<Self, StorageError<NodeId>> {
        let loaded = blocking(snapshots.clone(), load_snapshot)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        let mut applied = Applied::default();
        let parts = match loaded {
            Some((meta, parts)) => {
                applied.last_applied = meta.last_log_id;
                applied.last_membership = meta.last_membership.clone();
                parts
            }
            None => BTreeMap::new(),
        };
        app.restore(&parts).map_err(|e| {
            io_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Write,
                &restore_failed(&e),
            )
        })?;
        Ok(RaftStateMachineStore {
            shared: Arc::new(Shared {
                app,
                snapshots,
                applied: Mutex::new(applied),
            }),
        })
    }

    /// The last applied log id (openraft index), as the application state reflects it.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.shared.applied().last_applied
    }

    async fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        parts: BTreeMap<u32, Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let index = meta.last_log_id.map_or(0, |id| id.index + 1);
        let description = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        blocking(self.shared.snapshots.clone(), move |store| {
            let snapshot = StoreSnapshot::at(index, parts);
            Ok(store.install_snapshot_with_meta(
                &snapshot,
                &[(SNAPSHOT_META_KEY, description.as_slice())],
            )?)
        })
        .await
        .map_err(|e| io_error(subject, ErrorVerb::Write, &e))
    }
}

type LoadedSnapshot = (SnapshotMeta<NodeId, BasicNode>, BTreeMap<u32, Vec<u8>>);

fn load_snapshot(store: &dyn LogStore) -> Result<Option<LoadedSnapshot>, StorageFailure> {
    let Some(description) = store.load_meta(SNAPSHOT_META_KEY)? else {
        return Ok(None);
    };
    let StoredSnapshotMeta { meta } = serde_json::from_slice(&description)
        .map_err(|e| StorageFailure::Invariant(format!("snapshot meta: {e}")))?;
    let snapshot = store.load_snapshot()?.unwrap_or_default();
    let expected = meta.last_log_id.map_or(0, |id| id.index + 1);
    if snapshot.last_index != expected {
        return Err(StorageFailure::Invariant(format!(
            "snapshot parts cover index {} but its description says {expected}",
            snapshot.last_index
        )));
    }
    let parts = snapshot
        .parts
        .into_iter()
        .map(|(id, part)| (id, part.bytes))
        .collect();
    Ok(Some((meta, parts)))
}

fn restore_failed(error: &anyhow::Error) -> StorageFailure {
    StorageFailure::Invariant(format!("StateMachine::restore failed: {error:#}"))
}

/// Encodes snapshot parts into the transfer format (see the module doc).
pub(crate) fn encode_parts(parts: &BTreeMap<u32, Vec<u8>>) -> Vec<u8> {
    let size: usize = parts.values().map(|bytes| 12 + bytes.len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    let count = u32::try_from(parts.len()).expect("fewer than 2^32 parts: part ids are u32");
    out.extend_from_slice(&count.to_le_bytes());
    for (id, bytes) in parts {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Decodes the transfer format; never panics on malformed input.
pub(crate) fn decode_parts(data: &[u8]) -> Result<BTreeMap<u32, Vec<u8>>, String> {
    let rest = data
        .strip_prefix(SNAPSHOT_MAGIC.as_slice())
        .ok_or("snapshot data does not start with CPS1")?;
    let (count, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or("snapshot data truncated in its part count")?;
    let count = u32::from_le_bytes(*count);
    let mut parts = BTreeMap::new();
    for _ in 0..count {
        let (id, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("snapshot data truncated in a part id")?;
        let (len, tail) = tail
            .split_first_chunk::<8>()
            .ok_or("snapshot data truncated in a part length")?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| "part too long")?;
        if tail.len() < len {
            return Err("snapshot data truncated in a part".into());
        }
        let (bytes, tail) = tail.split_at(len);
        parts.insert(u32::from_le_bytes(*id), bytes.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the last part", rest.len()));
    }
    Ok(parts)
}

impl RaftSnapshotBuilder<TypeConfig> for RaftStateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Captured under the lock that `apply` holds, so the parts match `last_applied`.
        let (meta, parts) = {
            let applied = self.shared.applied();
            let parts = self.shared.app.snapshot();
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
            (meta, parts)
        };
        let data = encode_parts(&parts);
        self.persist(&meta, parts).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let parts = decode_parts(snapshot.get_ref()).map_err(|reason| {
            io_error(
                subject.clone(),
                ErrorVerb::Read,
                &StorageFailure::Invariant(reason),
            )
        })?;
        // Durable first: a crash after this point restarts from the new snapshot.
        self.persist(meta, parts.clone()).await?;
        let mut applied = self.shared.applied();
        self.shared
            .app
            .restore(&parts)
            .map_err(|e| io_error(subject, ErrorVerb::Write, &restore_failed(&e)))?;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let loaded = blocking(self.shared.snapshots.clone(), load_snapshot)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(loaded.map(|(meta, parts)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode_parts(&parts))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_data_round_trips_and_rejects_damage() {
        let parts = BTreeMap::from([(0, b"zero".to_vec()), (u32::MAX, Vec::new())]);
        let data = encode_parts(&parts);
        assert_eq!(decode_parts(&data).unwrap(), parts);
        for len in 0..data.len() {
            assert!(decode_parts(&data[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(decode_parts(&longer).is_err());
    }
}
