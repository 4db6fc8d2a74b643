//! [`MemStore`]: the in-memory [`LogStore`] for tests and simulation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::{rules, LogIndex, LogStore, PartId, Snapshot, SnapshotPart, StoreError};

/// A [`LogStore`] held in memory, with the same semantics as [`crate::RedbStore`] minus the
/// durability across process restarts. One mutex makes every call atomic and linearizable.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<MemState>,
}

#[derive(Debug, Default)]
struct MemState {
    compacted_through: LogIndex,
    /// `log[i]` is the entry at index `compacted_through + 1 + i`.
    log: VecDeque<Vec<u8>>,
    parts: BTreeMap<PartId, SnapshotPart>,
    app_meta: BTreeMap<String, Vec<u8>>,
}

impl MemState {
    fn last_index(&self) -> LogIndex {
        self.compacted_through + self.log.len() as LogIndex
    }

    /// Drops entries <= `through` and moves the compaction point there.
    fn compact(&mut self, through: LogIndex) {
        let drop_count = through.saturating_sub(self.compacted_through);
        let drop_count = usize::try_from(drop_count).unwrap_or(usize::MAX);
        self.log.drain(..drop_count.min(self.log.len()));
        self.compacted_through = self.compacted_through.max(through);
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding the lock is a bug in this file (every change is applied after
        // its checks pass), so poisoning cannot leave a half-applied change behind.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LogStore for MemStore {
    fn blocks(&self) -> bool {
        false
    }

    fn append(&self, entries: &[Vec<u8>]) -> Result<LogIndex, StoreError> {
        let mut state = self.state();
        rules::next_index(state.last_index(), entries.len());
        state.log.extend(entries.iter().cloned());
        Ok(state.last_index())
    }

    fn read_from(
        &self,
        from: LogIndex,
        max: usize,
    ) -> Result<Vec<(LogIndex, Vec<u8>)>, StoreError> {
        let state = self.state();
        let from = rules::read_start(from, state.compacted_through)?;
        let skip = usize::try_from(from - state.compacted_through - 1).unwrap_or(usize::MAX);
        Ok((from..)
            .zip(state.log.iter().skip(skip).take(max).cloned())
            .collect())
    }

    fn last_index(&self) -> Result<LogIndex, StoreError> {
        Ok(self.state().last_index())
    }

    fn first_index(&self) -> Result<LogIndex, StoreError> {
        Ok(self.state().compacted_through + 1)
    }

    fn truncate_from(&self, from: LogIndex) -> Result<(), StoreError> {
        let mut state = self.state();
        rules::check_truncate(from, state.compacted_through)?;
        let keep = usize::try_from(from - state.compacted_through - 1).unwrap_or(usize::MAX);
        state.log.truncate(keep);
        Ok(())
    }

    fn compact_through(&self, through: LogIndex) -> Result<(), StoreError> {
        let mut state = self.state();
        if through <= state.compacted_through {
            return Ok(());
        }
        rules::check_compact(
            through,
            state.last_index(),
            state.parts.iter().map(|(&part, p)| (part, p.last_index)),
        )?;
        state.compact(through);
        Ok(())
    }

    fn install_snapshot_with_meta(
        &self,
        snapshot: &Snapshot,
        meta: &[(&str, &[u8])],
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        rules::check_install(snapshot, state.compacted_through)?;
        state.parts = snapshot.parts.clone();
        state.compact(snapshot.last_index);
        for (key, value) in meta {
            state.app_meta.insert((*key).to_owned(), value.to_vec());
        }
        Ok(())
    }

    fn save_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.state().app_meta.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn load_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state().app_meta.get(key).cloned())
    }

    fn put_part(&self, part: PartId, bytes: &[u8], last_index: LogIndex) -> Result<(), StoreError> {
        let mut state = self.state();
        rules::check_part_covers(part, last_index, state.compacted_through)?;
        let contents = SnapshotPart {
            last_index,
            bytes: bytes.to_vec(),
        };
        state.parts.insert(part, contents);
        Ok(())
    }

    fn drop_part(&self, part: PartId) -> Result<(), StoreError> {
        self.state().parts.remove(&part);
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let state = self.state();
        if state.compacted_through == 0 && state.parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            last_index: state.compacted_through,
            parts: state.parts.clone(),
        }))
    }
}
