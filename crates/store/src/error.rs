//! The one error type of the store.

use crate::{LogIndex, PartId};

/// What can go wrong in a [`crate::LogStore`] call.
///
/// Corruption variants are terminal for the item they name: retrying reads the same bytes.
/// The refusal variants (`Compacted`, `StalePart`, `StaleSnapshot`, `BeyondLastIndex`) mean the
/// caller asked for something the invariants forbid and nothing was changed. `Database` is an
/// I/O or storage-engine failure; the call had no effect and may be retried. `Io` is a failed
/// read, write or flush of a [`crate::WalStore`] file; after a failed write or flush that store
/// refuses every later call until it is reopened (the disk, not the page cache, is the truth).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored log entry failed its checksum or is too short to hold one.
    #[error("log entry {index} is corrupt (checksum mismatch or truncated value)")]
    Corrupt { index: LogIndex },

    /// The stored snapshot part failed its checksum or is too short to hold its header.
    #[error("snapshot part {part} is corrupt (checksum mismatch or truncated value)")]
    CorruptPart { part: PartId },

    /// The metadata table holds a value the store cannot interpret.
    #[error("store metadata `{key}` is corrupt: {reason}")]
    CorruptMetadata { key: &'static str, reason: String },

    /// `index` lies in the compacted range; the log now starts at `first_index`.
    #[error("log index {index} was compacted away; the log starts at {first_index}")]
    Compacted {
        index: LogIndex,
        first_index: LogIndex,
    },

    /// A part would cover less of the log than `required_index`, so entries it needs are
    /// (or would be) compacted away.
    #[error(
        "snapshot part {part} covers the log up to {part_last_index}, \
         but must cover at least up to {required_index}"
    )]
    StalePart {
        part: PartId,
        part_last_index: LogIndex,
        required_index: LogIndex,
    },

    /// The snapshot being installed is older than the current compaction point.
    #[error("snapshot at {last_index} is older than the current snapshot at {current_last_index}")]
    StaleSnapshot {
        last_index: LogIndex,
        current_last_index: LogIndex,
    },

    /// Compaction was asked to go past the end of the log.
    #[error("cannot compact through {index}: the log ends at {last_index}")]
    BeyondLastIndex {
        index: LogIndex,
        last_index: LogIndex,
    },

    /// A file of the store could not be read, written or flushed.
    #[error("I/O error: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// An entry larger than a store can hold in one record (4 GiB for [`crate::WalStore`]).
    #[error("log entry {index} of {len} bytes is too large")]
    EntryTooLarge { index: LogIndex, len: usize },

    /// The storage engine failed (I/O error, file locked by another process, ...).
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
}

/// redb has one error type per operation; all of them convert into `redb::Error`.
macro_rules! from_redb_error {
    ($($ty:ty),* $(,)?) => {
        $(impl From<$ty> for StoreError {
            fn from(error: $ty) -> Self {
                StoreError::Database(error.into())
            }
        })*
    };
}

from_redb_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);
