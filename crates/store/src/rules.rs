//! The checks both stores run before a change, kept in one place so that [`crate::MemStore`]
//! and [`crate::RedbStore`] refuse exactly the same requests. Pure functions, no I/O.

use crate::{LogIndex, PartId, Snapshot, StoreError};

/// Where a read starting at `from` begins, or why it cannot.
pub(crate) fn read_start(
    from: LogIndex,
    compacted_through: LogIndex,
) -> Result<LogIndex, StoreError> {
    let from = from.max(1);
    if from <= compacted_through {
        return Err(StoreError::Compacted {
            index: from,
            first_index: compacted_through + 1,
        });
    }
    Ok(from)
}

pub(crate) fn check_truncate(
    from: LogIndex,
    compacted_through: LogIndex,
) -> Result<(), StoreError> {
    if from <= compacted_through {
        return Err(StoreError::Compacted {
            index: from,
            first_index: compacted_through + 1,
        });
    }
    Ok(())
}

/// `parts` yields `(part, part.last_index)` for every existing part.
pub(crate) fn check_compact(
    through: LogIndex,
    last_index: LogIndex,
    parts: impl IntoIterator<Item = (PartId, LogIndex)>,
) -> Result<(), StoreError> {
    if through > last_index {
        return Err(StoreError::BeyondLastIndex {
            index: through,
            last_index,
        });
    }
    for (part, part_last_index) in parts {
        check_part_covers(part, part_last_index, through)?;
    }
    Ok(())
}

pub(crate) fn check_install(
    snapshot: &Snapshot,
    compacted_through: LogIndex,
) -> Result<(), StoreError> {
    if snapshot.last_index < compacted_through {
        return Err(StoreError::StaleSnapshot {
            last_index: snapshot.last_index,
            current_last_index: compacted_through,
        });
    }
    for (&part, contents) in &snapshot.parts {
        check_part_covers(part, contents.last_index, snapshot.last_index)?;
    }
    Ok(())
}

pub(crate) fn check_part_covers(
    part: PartId,
    part_last_index: LogIndex,
    required_index: LogIndex,
) -> Result<(), StoreError> {
    if part_last_index < required_index {
        return Err(StoreError::StalePart {
            part,
            part_last_index,
            required_index,
        });
    }
    Ok(())
}

/// The index the first entry of a batch appended after `last_index` gets, asserting the log
/// never runs out of indices (2^64 entries cannot be written, so this is an invariant).
pub(crate) fn next_index(last_index: LogIndex, batch_len: usize) -> LogIndex {
    let batch_len = LogIndex::try_from(batch_len).unwrap_or(LogIndex::MAX);
    assert!(
        last_index.checked_add(batch_len).is_some(),
        "log index overflow: last {last_index} + batch {batch_len}"
    );
    last_index + 1
}
