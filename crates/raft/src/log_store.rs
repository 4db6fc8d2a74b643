//! [`RaftLogStore`]: openraft's log storage (v2) on a [`coopr_store::LogStore`].
//!
//! ```text
//!   openraft index:      0     1     2    ...   i
//!   LogStore index:      1     2     3    ...   i+1      (LogStore numbers from 1)
//!   value:           serde_json(openraft::Entry)  (a Batch: array of hex payloads)
//!
//!   app_meta "raft.vote"         -> Vote          (fsync'd before save_vote returns)
//!   app_meta "raft.committed"    -> LogId         (optional, see RaftConfig::persist_committed)
//!   app_meta "raft.last_purged"  -> LogId         (written with the compaction, atomically)
//! ```
//!
//! Every call is one fsync'd [`coopr_store::LogStore`] call, and the append callback is called
//! only after the entries are on disk, so openraft never counts an entry as persisted before
//! it is. A leader's own append (openraft as vendored here sends it to the followers before
//! the callback, `LogFlushed::may_complete_later`) is readable at once and flushed on a
//! blocking thread, which calls back. openraft serializes the log IO (`&mut self`, and no log
//! call while a leader's flush is pending), so the store sees one writer.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use coopr_store::{LogStore, Snapshot, StoreError};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogId,
    RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{NodeId, TypeConfig};

pub(crate) const VOTE_KEY: &str = "raft.vote";
pub(crate) const COMMITTED_KEY: &str = "raft.committed";
pub(crate) const LAST_PURGED_KEY: &str = "raft.last_purged";

/// Reads of at most this many entries run in place ([`RaftLogStore::brief`]).
const BRIEF_READ_ENTRIES: u64 = 64;

/// openraft's log (and vote) storage on a [`LogStore`]. Cheap to clone: clones share the store
/// (the clone is the log reader of the replication tasks).
#[derive(Clone)]
pub struct RaftLogStore {
    store: Arc<dyn LogStore>,
    persist_committed: bool,
    /// The group's name, the label of its metrics.
    group: Arc<str>,
}

impl RaftLogStore {
    /// A log store on `store`, which must hold nothing but this group's log (or be empty).
    /// With `persist_committed`, the committed log id is saved too (one more fsync per commit
    /// batch), so that a restarted node re-applies its committed entries before it hears from
    /// a leader.
    pub fn new(store: Arc<dyn LogStore>, persist_committed: bool) -> Self {
        RaftLogStore {
            store,
            persist_committed,
            group: Arc::from(""),
        }
    }

    /// Labels this store's metrics with the group's name.
    pub fn for_group(mut self, group: &str) -> Self {
        self.group = Arc::from(group);
        self
    }

    /// True if the store holds no vote, no entry and no purge point: a node that never took
    /// part in a group (or was wiped).
    pub fn is_pristine(&self) -> Result<bool, StoreError> {
        Ok(self.store.load_meta(VOTE_KEY)?.is_none()
            && self.store.load_meta(LAST_PURGED_KEY)?.is_none()
            && self.store.last_index()? == 0)
    }

    async fn blocking<T, F>(&self, run: F) -> Result<T, StorageFailure>
    where
        T: Send + 'static,
        F: FnOnce(&dyn LogStore) -> Result<T, StorageFailure> + Send + 'static,
    {
        blocking(self.store.clone(), run).await
    }

    /// Runs a store call that does not wait for the disk on this thread, as it is: a read of a
    /// few entries (a `pread`, from the page cache for the tail of the log that replication
    /// reads) or an append left unsynced (a `pwrite`). A few microseconds, less than handing the
    /// worker's other tasks to another thread ([`blocking`]) costs, which a leader paid three
    /// times per write (its append and each follower's read) before its flush. (Also in place:
    /// once per MiB of log, an unsynced append writes the next MiB of zeros ahead of the
    /// records, a `pwrite` of a few hundred microseconds; once per 16 MiB, one that fills a WAL
    /// segment flushes it and creates the next.)
    fn brief<T>(
        &self,
        run: impl FnOnce(&dyn LogStore) -> Result<T, StorageFailure>,
    ) -> Result<T, StorageFailure> {
        run(&*self.store)
    }

    async fn load<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = self
            .blocking(move |store| Ok(store.load_meta(key)?))
            .await
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))?;
        bytes
            .map(|bytes| serde_json::from_slice(&bytes))
            .transpose()
            .map_err(|e| io_error(subject, ErrorVerb::Read, &e))
    }

    async fn save<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        self.blocking(move |store| Ok(store.save_meta(key, &bytes)?))
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, &e))
    }

    async fn last_purged(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.load(LAST_PURGED_KEY, ErrorSubject::Logs).await
    }
}

/// Copies a Raft log kept by earlier builds in a [`coopr_store::RedbStore`] into `into`, an
/// empty store: the purge point (the compaction point), the vote, the committed and purged
/// log ids, then the entries, a page at a time. Every step is durable when it returns; the
/// caller makes the copy current only after this returns.
pub fn import_redb_log(from: &dyn LogStore, into: &dyn LogStore) -> Result<(), StoreError> {
    const PAGE: usize = 1024;
    if let Some(snapshot) = from.load_snapshot()? {
        into.install_snapshot(&snapshot)?;
    }
    for key in [VOTE_KEY, COMMITTED_KEY, LAST_PURGED_KEY] {
        if let Some(value) = from.load_meta(key)? {
            into.save_meta(key, &value)?;
        }
    }
    let mut next = from.first_index()?;
    loop {
        let page = from.read_from(next, PAGE)?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        let entries: Vec<Vec<u8>> = page.into_iter().map(|(_, bytes)| bytes).collect();
        into.append(&entries)?;
        next = last + 1;
    }
    if into.last_index()? != from.last_index()? {
        return Err(StoreError::CorruptMetadata {
            key: "raft-log.redb",
            reason: format!(
                "copied the log through {}, but it ends at {}",
                into.last_index()?,
                from.last_index()?
            ),
        });
    }
    Ok(())
}

/// Why a storage call of this crate failed (wrapped into openraft's `StorageError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored data or the request breaks an invariant (a bug or a damaged store).
    #[error("{0}")]
    Invariant(String),
    /// The blocking task panicked or the runtime is shutting down.
    #[error("storage task failed: {0}")]
    Task(String),
}

/// Runs a store call that may wait for the disk (every mutating call waits for an fsync):
/// inline for a store that does not block ([`LogStore::blocks`]: in memory); on this thread,
/// with the worker's other tasks handed to another thread, in a multi-threaded runtime
/// (`block_in_place`: the caller goes on without waiting to be woken, one thread switch less
/// on every write's path, at the leader and at each follower); else on the blocking pool.
pub(crate) async fn blocking<T, F>(store: Arc<dyn LogStore>, run: F) -> Result<T, StorageFailure>
where
    T: Send + 'static,
    F: FnOnce(&dyn LogStore) -> Result<T, StorageFailure> + Send + 'static,
{
    if !store.blocks() {
        return run(&*store);
    }
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(|| run(&*store));
    }
    match tokio::task::spawn_blocking(move || run(&*store)).await {
        Ok(result) => result,
        Err(join_error) => Err(StorageFailure::Task(join_error.to_string())),
    }
}

pub(crate) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageFailure> {
    let entry: Entry<TypeConfig> = serde_json::from_slice(bytes).map_err(|e| {
        StorageFailure::Invariant(format!("entry at index {index} does not decode: {e}"))
    })?;
    if entry.get_log_id().index != index {
        return Err(StorageFailure::Invariant(format!(
            "entry stored at index {index} has log id {}",
            entry.get_log_id()
        )));
    }
    Ok(entry)
}

/// The LogStore index of an openraft log index (openraft's log starts at 0, ours at 1).
fn store_index(raft_index: u64) -> u64 {
    raft_index + 1
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i + 1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let read = move |store: &dyn LogStore| {
            // Entries purged since openraft computed the range are simply not returned,
            // like entries past the end (openraft asks only for what it believes exists).
            let from = store_index(start).max(store.first_index()?);
            let max = end.map_or(usize::MAX, |end| {
                usize::try_from(store_index(end).saturating_sub(from)).unwrap_or(usize::MAX)
            });
            if max == 0 {
                return Ok(Vec::new());
            }
            match store.read_from(from, max) {
                Err(StoreError::Compacted { first_index, .. }) => {
                    let max = end.map_or(usize::MAX, |end| {
                        usize::try_from(store_index(end).saturating_sub(first_index))
                            .unwrap_or(usize::MAX)
                    });
                    Ok(store.read_from(first_index, max)?)
                }
                other => Ok(other?),
            }
        };
        // The few entries a follower in step is sent are read in place; a catch-up's batches
        // (hundreds of entries, perhaps no longer in the page cache) leave the worker free.
        let rows = if end.is_some_and(|end| end - start <= BRIEF_READ_ENTRIES) {
            self.brief(read)
        } else {
            self.blocking(read).await
        }
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, bytes) in rows {
            let entry = decode_entry(index - 1, &bytes)
                .map_err(|e| io_error(ErrorSubject::LogIndex(index - 1), ErrorVerb::Read, &e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id = self.last_purged().await?;
        let last_row = self
            .blocking(|store| {
                let last = store.last_index()?;
                if last < store.first_index()? {
                    return Ok(None);
                }
                Ok(store.read_from(last, 1)?.pop())
            })
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let last_entry = match last_row {
            Some((index, bytes)) => Some(
                *decode_entry(index - 1, &bytes)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?
                    .get_log_id(),
            ),
            None => None,
        };
        // After a purge beyond the end of the log (a snapshot installed on a lagging node),
        // the purge point is the last log id.
        let last_log_id = std::cmp::max(last_entry, last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        // LogStore::save_meta returns only once the value is durable (fsync).
        self.save(VOTE_KEY, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.load(VOTE_KEY, ErrorSubject::Vote).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if !self.persist_committed {
            return Ok(());
        }
        self.save(COMMITTED_KEY, &committed, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if !self.persist_committed {
            return Ok(None);
        }
        Ok(self
            .load::<Option<LogId<NodeId>>>(COMMITTED_KEY, ErrorSubject::Store)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut first_index = None;
        let mut encoded = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            first_index.get_or_insert(log_id.index);
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Write, &e))?;
            encoded.push(bytes);
        }
        let Some(first_index) = first_index else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // One stage of a write's latency (the benchmarks' breakdown): the append and its fsync.
        let started = tokio::time::Instant::now();
        // A leader's own append (openraft sends the entries to the followers without waiting
        // for this callback): the entries are made readable here and flushed on a blocking
        // thread, which calls back once they are durable. Everything else returns durable.
        let flush_later = callback.may_complete_later() && self.store.blocks();
        let append = move |store: &dyn LogStore| {
            // openraft appends right after the last entry (it truncates a conflicting
            // suffix first); anything else would leave a hole or overwrite.
            let mut expected = store.last_index()?;
            let empty = expected < store.first_index()?;
            if empty && store_index(first_index) > expected + 1 {
                // An empty log may start anywhere (openraft's storage suite does this);
                // move the compaction point so the log stays gap-free from its start.
                expected = store_index(first_index) - 1;
                store.install_snapshot(&Snapshot::at(expected, []))?;
            }
            if !empty && store_index(first_index) <= expected {
                // openraft truncates a conflicting suffix before appending; an overlapping
                // append (seen only in openraft's storage suite) overwrites like a map.
                store.truncate_from(store_index(first_index))?;
                expected = store_index(first_index) - 1;
            }
            if store_index(first_index) != expected + 1 {
                return Err(StorageFailure::Invariant(format!(
                    "append at openraft index {first_index}, but the log ends at {}",
                    expected
                        .checked_sub(1)
                        .map_or("none".into(), |i| i.to_string())
                )));
            }
            if flush_later {
                Ok(store.append_unsynced(&encoded)?)
            } else {
                Ok(store.append(&encoded)?)
            }
        };
        // Unsynced, the append is a `pwrite`: in place. Synced, it waits for the disk.
        let result = if flush_later {
            self.brief(append)
        } else {
            self.blocking(append).await
        };
        match result {
            Ok(_) if flush_later => {
                let store = Arc::clone(&self.store);
                let group = self.group.to_string();
                // openraft runs no other log call before this callback (see
                // `LogFlushed::may_complete_later`), so nothing overtakes this flush.
                tokio::task::spawn_blocking(move || {
                    let flushed = store.sync();
                    metrics::histogram!("coopr_raft_log_append_seconds", "group" => group)
                        .record(started.elapsed().as_secs_f64());
                    callback.log_io_completed(flushed.map_err(io::Error::other));
                });
                Ok(())
            }
            Ok(_) => {
                metrics::histogram!("coopr_raft_log_append_seconds", "group" => self.group.to_string())
                    .record(started.elapsed().as_secs_f64());
                // Durable now: the append call returned after its fsync.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, &error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let from = store_index(log_id.index);
        self.blocking(move |store| Ok(store.truncate_from(from)?))
            .await
            .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let through = store_index(log_id.index);
        let value = serde_json::to_vec(&log_id)
            .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        self.blocking(move |store| {
            let first = store.first_index()?;
            let last = store.last_index()?;
            if through < first {
                return Ok(store.save_meta(LAST_PURGED_KEY, &value)?);
            }
            if through <= last {
                // One atomic step: drop the entries and record the purge point. The log store
                // holds no snapshot parts, so this never refuses for stale parts.
                return Ok(store.install_snapshot_with_meta(
                    &Snapshot::at(through, []),
                    &[(LAST_PURGED_KEY, value.as_slice())],
                )?);
            }
            // Past the end (a snapshot installed on a lagging node): drop every entry, then
            // record the purge point; the next append starts the log right after it. A crash
            // in between leaves an empty log and the older purge point, from which openraft
            // recovers (the state machine is ahead of the log, so it purges again).
            if last >= first {
                store.truncate_from(first)?;
            }
            Ok(store.save_meta(LAST_PURGED_KEY, &value)?)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))
    }
}

#[cfg(test)]
mod tests {
    use coopr_store::{RedbStore, Snapshot};

    use super::*;
    use crate::RaftStores;

    fn entry(n: u64) -> Vec<u8> {
        format!("entry-{n}").into_bytes()
    }

    /// A node upgraded from a build that kept its log in `raft-log.redb` starts with the same
    /// log, purge point and vote in the WAL, and the old file is gone; an import that a crash
    /// interrupted is started again from the old file.
    #[test]
    fn a_log_kept_in_redb_moves_to_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("raft-log.redb");
        {
            let store = RedbStore::open(&old).unwrap();
            store
                .append(&(1..=3000).map(entry).collect::<Vec<_>>())
                .unwrap();
            store
                .install_snapshot_with_meta(
                    &Snapshot::at(1200, []),
                    &[(LAST_PURGED_KEY, b"purged".as_slice())],
                )
                .unwrap();
            store.save_meta(VOTE_KEY, b"vote").unwrap();
        }
        // What a crash in the middle of an earlier import left behind.
        let importing = dir.path().join("raft-log.importing");
        std::fs::create_dir_all(&importing).unwrap();
        std::fs::write(importing.join("00000000000000000001.wal"), b"half").unwrap();

        let stores = RaftStores::open(dir.path()).unwrap();
        assert!(!old.exists());
        assert!(!importing.exists());
        let log = &stores.log;
        assert_eq!(log.first_index().unwrap(), 1201);
        assert_eq!(log.last_index().unwrap(), 3000);
        let read = log.read_from(1201, usize::MAX).unwrap();
        assert_eq!(
            read,
            (1201..=3000).map(|n| (n, entry(n))).collect::<Vec<_>>()
        );
        assert_eq!(
            log.load_meta(VOTE_KEY).unwrap().as_deref(),
            Some(&b"vote"[..])
        );
        assert_eq!(
            log.load_meta(LAST_PURGED_KEY).unwrap().as_deref(),
            Some(&b"purged"[..])
        );
        assert_eq!(log.load_meta(COMMITTED_KEY).unwrap(), None);
        log.append(&[entry(3001)]).unwrap();
        drop(stores);
        let stores = RaftStores::open(dir.path()).unwrap();
        assert_eq!(stores.log.last_index().unwrap(), 3001);
    }
}
