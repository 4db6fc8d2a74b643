//! The durable local log and per-shard snapshots of one coopr server.
//!
//! State changes are serialized commands (opaque bytes here) applied in log order by a
//! deterministic state machine. This crate keeps them: an append-only log of entries numbered
//! 1, 2, 3, ... and a snapshot made of independent *parts* (one per shard, `u32::MAX` for the
//! global shard), each covering the log up to its own index.
//!
//! ```text
//!                  compaction point C             last_index()
//!                          v                           v
//!   [ 1 ... dropped ...  C ] [ C+1 | C+2 | C+3 | ... | last ]   <- log; next append: last+1
//!                              ^ first_index()
//!
//!   snapshot (last_index = C):
//!     part 0        -> { last_index: 40 (>= C), bytes }   restart = restore every part,
//!     part 7        -> { last_index: 35 (>= C), bytes }   then replay the log from C+1,
//!     part u32::MAX -> { last_index: 42 (>= C), bytes }   skipping, per shard, the entries
//!                                                          its part already covers
//! ```
//!
//! # Invariants every [`LogStore`] keeps
//! - The log holds exactly the indices `C+1 ..= last_index()`, with no gaps. `C` is the
//!   compaction point, the snapshot's `last_index` (0 before the first compaction).
//! - Every part covers the log at least up to `C` (`part.last_index >= C`), so nothing a part
//!   needs has been dropped. Operations that would break this are refused with an error.
//!
//! # Durability contract
//! Every mutating call returns only after its effect is durable: [`RedbStore`] commits one redb
//! write transaction with [`redb::Durability::Immediate`], i.e. an `fsync`, before it returns;
//! [`WalStore`] writes the batch's records and `fdatasync`s the segment (see its module for
//! its files and how it recovers from a crash).
//! Each call is atomic: after a crash either all of it is visible or none of it. Several entries
//! passed to one [`LogStore::append`] share one transaction and one `fsync` (group commit).
//! [`MemStore`] has the same semantics without the disk, for tests and simulation.
//!
//! # On-disk layout ([`RedbStore`], one redb file)
//! | table            | key                | value                                                  |
//! |------------------|--------------------|--------------------------------------------------------|
//! | `log`            | `u64` log index    | `crc32 (4, LE) ‖ entry bytes`                          |
//! | `snapshot_parts` | `u32` part id      | `crc32 (4, LE) ‖ last_index (8, LE) ‖ part bytes`      |
//! | `meta`           | `&str` name        | `u64` (8, LE): `format_version`, `compacted_through`   |
//! | `app_meta`       | `&str` name        | `crc32 (4, LE) ‖ bytes`: the caller's small values     |
//!
//! `app_meta` holds what a user of the store keeps next to the log (a Raft log keeps its vote,
//! committed log id and last purged log id there), see [`LogStore::save_meta`].
//!
//! The entry checksum covers the index as well as the bytes, and the part checksum covers the
//! part id and its last_index, so a value found under the wrong key is reported as corrupt too.
//! Bytes read from disk are always validated: a bad checksum or length is a
//! [`StoreError::Corrupt`], [`StoreError::CorruptPart`] or [`StoreError::CorruptMetadata`],
//! never a panic or garbage handed to the state machine.
//!
//! # Testing
//! [`conformance`] is the suite every implementation must pass; `tests/conformance.rs` runs it
//! against every store.

mod archive;
mod codec;
pub mod conformance;
mod error;
mod mem;
mod redb_store;
mod rules;
mod wal;

use std::collections::BTreeMap;

pub use archive::{Archive, ArchiveKey, ArchiveView};
pub use error::StoreError;
pub use mem::MemStore;
pub use redb_store::{tables, RedbStore};
pub use wal::{Recovery, WalStore, ZERO_STEP_BYTES};

/// A position in the log (1-based; 0 = nothing).
pub type LogIndex = u64;

/// A shard key for snapshot parts (the caller uses shard numbers; `u32::MAX` is the global shard).
pub type PartId = u32;

/// One part of a snapshot: the serialized state of one shard, covering the log up to
/// `last_index` (in this log's index space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPart {
    /// The last log entry whose effect is included in `bytes`.
    pub last_index: LogIndex,
    pub bytes: Vec<u8>,
}

/// The snapshot: all parts plus the compaction point of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Log entries up to here have been dropped; every part covers at least up to here.
    pub last_index: LogIndex,
    pub parts: BTreeMap<PartId, SnapshotPart>,
}

impl Snapshot {
    /// A snapshot whose parts all cover the log exactly up to `last_index`, the usual case when
    /// the whole state machine is snapshotted at once.
    pub fn at(last_index: LogIndex, parts: impl IntoIterator<Item = (PartId, Vec<u8>)>) -> Self {
        let parts = parts
            .into_iter()
            .map(|(part, bytes)| (part, SnapshotPart { last_index, bytes }))
            .collect();
        Snapshot { last_index, parts }
    }
}

/// The durable log and snapshot of one server. Later a Raft log storage plugs in at this seam.
///
/// An implementation must guarantee, for every method:
/// - **durability**: a mutating call returns `Ok` only once its effect survives a crash;
/// - **atomicity**: a mutating call that returns `Err` (or crashes) leaves no partial effect;
/// - **linearizability**: calls from several threads behave as if run one at a time, so
///   concurrent appends produce one gap-free sequence;
/// - **no panics on stored bytes**: corruption is reported as an error naming the bad item;
/// - the invariants in the crate doc (gap-free log from `C+1`, parts cover at least `C`).
///
/// [`conformance`] checks all of this that can be checked without crashing the machine.
pub trait LogStore: Send + Sync + 'static {
    /// Whether calls may block on I/O (disk, fsync): callers in async code then run them on a
    /// blocking thread. A store in memory answers `false`, and is called inline (which keeps a
    /// simulation on one thread, where a seed replays exactly).
    fn blocks(&self) -> bool {
        true
    }

    /// Appends entries at `last_index()+1 ..` and returns only once they are durable (fsync'd).
    /// Several entries in one call are one durable batch (group commit). Returns the index of
    /// the last appended entry; an empty batch writes nothing and returns `last_index()`.
    fn append(&self, entries: &[Vec<u8>]) -> Result<LogIndex, StoreError>;

    /// Appends like [`LogStore::append`], but may return before the entries are durable: they
    /// are readable at once, and durable once a later [`LogStore::sync`] or
    /// [`LogStore::append`] returned. A crash before that may lose a suffix of them, never
    /// anything before them. The default is [`LogStore::append`] (durable at once).
    fn append_unsynced(&self, entries: &[Vec<u8>]) -> Result<LogIndex, StoreError> {
        self.append(entries)
    }

    /// Makes every entry appended so far durable (see [`LogStore::append_unsynced`]).
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Entries with index >= `from`, at most `max` of them, in order. `from = 0` reads from the
    /// start. Reading past the end returns fewer (or no) entries. Asking for an index that was
    /// compacted away (`from <= snapshot.last_index`) is [`StoreError::Compacted`]: the caller
    /// must use the snapshot instead.
    fn read_from(&self, from: LogIndex, max: usize)
        -> Result<Vec<(LogIndex, Vec<u8>)>, StoreError>;

    /// Index of the last entry ever appended and not truncated, or the compaction point if the
    /// log is empty after compaction (so the next append goes to `last_index()+1`).
    fn last_index(&self) -> Result<LogIndex, StoreError>;

    /// First index still held in the log (after compaction), or `last_index()+1` when empty.
    fn first_index(&self) -> Result<LogIndex, StoreError>;

    /// Drops the entries with index >= `from` (a Raft follower discarding a conflicting
    /// suffix). `from` beyond the end is a no-op; `from` in the compacted range is
    /// [`StoreError::Compacted`].
    fn truncate_from(&self, from: LogIndex) -> Result<(), StoreError>;

    /// Drops the entries with index <= `through` and moves the compaction point there, once
    /// every shard's part covers them (parts put one at a time with [`LogStore::put_part`]).
    /// Refused with [`StoreError::StalePart`] if an existing part covers less, and with
    /// [`StoreError::BeyondLastIndex`] past the end. A `through` at or below the current
    /// compaction point is a no-op. The caller is responsible for shards that have no part.
    fn compact_through(&self, through: LogIndex) -> Result<(), StoreError>;

    /// Atomically replaces the snapshot (all parts) and drops log entries <=
    /// `snapshot.last_index`; entries after it are kept. A snapshot beyond the end of the log
    /// empties it and the next append goes to `snapshot.last_index + 1`. Refused if the
    /// snapshot is older than the current compaction point ([`StoreError::StaleSnapshot`]) or
    /// one of its parts covers less than `snapshot.last_index` ([`StoreError::StalePart`]).
    /// This is [`LogStore::install_snapshot_with_meta`] with no values.
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.install_snapshot_with_meta(snapshot, &[])
    }

    /// Replaces one part of the current snapshot (a shard snapshotted or streamed on its own),
    /// covering the log up to `last_index`. Does not compact the log (see
    /// [`LogStore::compact_through`]). Refused with [`StoreError::StalePart`] if `last_index`
    /// is below the compaction point, since the entries it would need are gone.
    fn put_part(&self, part: PartId, bytes: &[u8], last_index: LogIndex) -> Result<(), StoreError>;

    /// Drops one part (a shard dropped as a unit). Dropping a missing part is a no-op.
    fn drop_part(&self, part: PartId) -> Result<(), StoreError>;

    /// The current snapshot, or `None` if nothing was ever compacted and no part exists.
    fn load_snapshot(&self) -> Result<Option<Snapshot>, StoreError>;

    /// Durably stores a small named value of the caller (e.g. a Raft vote), replacing any
    /// earlier value under `key`. Returns only once the value survives a crash (fsync). These
    /// values are independent of the log and the snapshot: compaction and truncation keep them.
    fn save_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// The value last stored under `key` by [`LogStore::save_meta`] or
    /// [`LogStore::install_snapshot_with_meta`], or `None`. A stored value that fails its
    /// checksum is [`StoreError::CorruptMetadata`].
    fn load_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// [`LogStore::install_snapshot`] and [`LogStore::save_meta`] of every `(key, value)` in
    /// `meta`, as one atomic, durable step: after a crash either the new snapshot and all the
    /// values are visible, or neither. Used to keep a description of the snapshot (e.g. the
    /// Raft log id it covers) consistent with its parts. Refused like `install_snapshot`.
    fn install_snapshot_with_meta(
        &self,
        snapshot: &Snapshot,
        meta: &[(&str, &[u8])],
    ) -> Result<(), StoreError>;
}
