//! [`RedbStore`]: the durable [`LogStore`] in one redb file. See the crate doc for the layout.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    WriteTransaction,
};
use tempfile::TempDir;

use crate::{codec, rules, LogIndex, LogStore, PartId, Snapshot, StoreError};

/// The redb tables of the store, public so that tools and tests can inspect the raw file.
pub mod tables {
    use redb::TableDefinition;

    /// Log entries by index: `crc32 ‖ entry bytes`.
    pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    /// Snapshot parts by part id: `crc32 ‖ last_index ‖ part bytes`.
    pub const SNAPSHOT_PARTS: TableDefinition<u32, &[u8]> = TableDefinition::new("snapshot_parts");
    /// Store-wide numbers by name, each a `u64` in 8 little-endian bytes.
    pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    /// The caller's named values ([`crate::LogStore::save_meta`]): `crc32 ‖ bytes`.
    pub const APP_META: TableDefinition<&str, &[u8]> = TableDefinition::new("app_meta");

    /// The on-disk layout version this code reads and writes.
    pub const FORMAT_VERSION: u64 = 1;

    /// Key in [`META`]: the layout version, [`FORMAT_VERSION`].
    pub const FORMAT_VERSION_KEY: &str = "format_version";
    /// Key in [`META`]: the compaction point, the snapshot's `last_index`.
    pub const COMPACTED_THROUGH_KEY: &str = "compacted_through";
}

/// redb's page cache per file, in bytes. redb's default is 1 GiB per database, and a node
/// opens several (the DC log's log and snapshots, the job archive, the placement group's):
/// written pages stayed cached up to that ceiling, most of a node's resident memory (see
/// `coopr-bench memory`). The log is read near its end and snapshots rarely, so a small
/// cache costs them nothing measurable.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The durable [`LogStore`]: one redb file, one fsync'd write transaction per mutating call.
///
/// redb runs one write transaction at a time, and each call reads `last_index` and writes in
/// the same transaction, so concurrent appends from several threads cannot leave gaps or
/// overlap; each caller pays its own fsync.
pub struct RedbStore {
    // Declared before `_temp_dir` so the database is closed before its directory is removed.
    db: Database,
    _temp_dir: Option<TempDir>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if it does not exist. Fails if another
    /// process holds it open, or if its layout is not [`tables::FORMAT_VERSION`] or breaks the log
    /// invariants.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        Self::open_database(db, None)
    }

    /// A store in a fresh temporary directory, deleted when the store is dropped (tests).
    pub fn temporary() -> Result<Self, StoreError> {
        let dir = TempDir::new().map_err(|error| StoreError::Database(error.into()))?;
        let db = Database::create(dir.path().join("store.redb"))?;
        Self::open_database(db, Some(dir))
    }

    fn open_database(db: Database, temp_dir: Option<TempDir>) -> Result<Self, StoreError> {
        let store = RedbStore {
            db,
            _temp_dir: temp_dir,
        };
        let txn = store.begin_write()?;
        {
            // Opening a table in a write transaction creates it.
            txn.open_table(tables::LOG)?;
            txn.open_table(tables::SNAPSHOT_PARTS)?;
            // Added after format version 1 shipped; creating it here upgrades older files.
            txn.open_table(tables::APP_META)?;
            let mut meta = txn.open_table(tables::META)?;
            let stored = meta
                .get(tables::FORMAT_VERSION_KEY)?
                .map(|value| codec::decode_u64(tables::FORMAT_VERSION_KEY, value.value()))
                .transpose()?;
            match stored {
                None => {
                    meta.insert(
                        tables::FORMAT_VERSION_KEY,
                        codec::encode_u64(tables::FORMAT_VERSION).as_slice(),
                    )?;
                }
                Some(tables::FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::CorruptMetadata {
                        key: tables::FORMAT_VERSION_KEY,
                        reason: format!(
                            "unsupported version {other}, expected {}",
                            tables::FORMAT_VERSION
                        ),
                    })
                }
            }
        }
        txn.commit()?;
        store.check_log_start()?;
        Ok(store)
    }

    /// The log must start right after the compaction point; anything else means the metadata
    /// and the log disagree, and replaying would skip or repeat commands.
    fn check_log_start(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let compacted_through = read_compacted_through(&txn)?;
        let log = txn.open_table(tables::LOG)?;
        if let Some((first, _)) = log.first()? {
            let first = first.value();
            if first != compacted_through + 1 {
                return Err(StoreError::CorruptMetadata {
                    key: tables::COMPACTED_THROUGH_KEY,
                    reason: format!(
                        "compacted through {compacted_through} but the log starts at {first}"
                    ),
                });
            }
        }
        Ok(())
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        // The default already, but the contract depends on it, so say it.
        txn.set_durability(Durability::Immediate)?;
        Ok(txn)
    }
}

fn read_compacted_through(txn: &ReadTransaction) -> Result<LogIndex, StoreError> {
    let meta = txn.open_table(tables::META)?;
    compacted_through_in(&meta)
}

fn compacted_through_in(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<LogIndex, StoreError> {
    let key = tables::COMPACTED_THROUGH_KEY;
    match meta.get(key)? {
        Some(value) => codec::decode_u64(key, value.value()),
        None => Ok(0),
    }
}

fn last_index_in(
    log: &impl ReadableTable<u64, &'static [u8]>,
    compacted_through: LogIndex,
) -> Result<LogIndex, StoreError> {
    let last_key = log.last()?.map(|(key, _)| key.value()).unwrap_or(0);
    Ok(last_key.max(compacted_through))
}

/// `(part, last_index)` of every stored part, checksums verified.
fn part_indices(
    parts: &impl ReadableTable<u32, &'static [u8]>,
) -> Result<Vec<(PartId, LogIndex)>, StoreError> {
    let mut indices = Vec::new();
    for item in parts.range::<u32>(..)? {
        let (key, value) = item?;
        let part = key.value();
        indices.push((part, codec::decode_part(part, value.value())?.last_index));
    }
    Ok(indices)
}

fn set_compacted_through(
    meta: &mut Table<&'static str, &'static [u8]>,
    through: LogIndex,
) -> Result<(), StoreError> {
    meta.insert(
        tables::COMPACTED_THROUGH_KEY,
        codec::encode_u64(through).as_slice(),
    )?;
    Ok(())
}

fn read_parts(
    parts: &ReadOnlyTable<u32, &'static [u8]>,
) -> Result<BTreeMap<PartId, crate::SnapshotPart>, StoreError> {
    let mut all = BTreeMap::new();
    for item in parts.range::<u32>(..)? {
        let (key, value) = item?;
        let part = key.value();
        all.insert(part, codec::decode_part(part, value.value())?);
    }
    Ok(all)
}

impl LogStore for RedbStore {
    fn append(&self, entries: &[Vec<u8>]) -> Result<LogIndex, StoreError> {
        if entries.is_empty() {
            return self.last_index();
        }
        let txn = self.begin_write()?;
        let last = {
            let meta = txn.open_table(tables::META)?;
            let mut log = txn.open_table(tables::LOG)?;
            let mut index = rules::next_index(
                last_index_in(&log, compacted_through_in(&meta)?)?,
                entries.len(),
            );
            for entry in entries {
                log.insert(index, codec::encode_entry(index, entry).as_slice())?;
                index += 1;
            }
            index - 1
        };
        txn.commit()?;
        Ok(last)
    }

    fn read_from(
        &self,
        from: LogIndex,
        max: usize,
    ) -> Result<Vec<(LogIndex, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let from = rules::read_start(from, read_compacted_through(&txn)?)?;
        let log = txn.open_table(tables::LOG)?;
        let mut entries = Vec::new();
        for item in log.range(from..)?.take(max) {
            let (key, value) = item?;
            let index = key.value();
            entries.push((index, codec::decode_entry(index, value.value())?));
        }
        Ok(entries)
    }

    fn last_index(&self) -> Result<LogIndex, StoreError> {
        let txn = self.db.begin_read()?;
        let compacted_through = read_compacted_through(&txn)?;
        last_index_in(&txn.open_table(tables::LOG)?, compacted_through)
    }

    fn first_index(&self) -> Result<LogIndex, StoreError> {
        // The log always starts right after the compaction point (checked at open).
        Ok(read_compacted_through(&self.db.begin_read()?)? + 1)
    }

    fn truncate_from(&self, from: LogIndex) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let meta = txn.open_table(tables::META)?;
            rules::check_truncate(from, compacted_through_in(&meta)?)?;
            txn.open_table(tables::LOG)?
                .retain_in(from.., |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn compact_through(&self, through: LogIndex) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(tables::META)?;
            let mut log = txn.open_table(tables::LOG)?;
            let compacted_through = compacted_through_in(&meta)?;
            if through <= compacted_through {
                return Ok(());
            }
            let parts = txn.open_table(tables::SNAPSHOT_PARTS)?;
            rules::check_compact(
                through,
                last_index_in(&log, compacted_through)?,
                part_indices(&parts)?,
            )?;
            log.retain_in(..=through, |_, _| false)?;
            set_compacted_through(&mut meta, through)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn install_snapshot_with_meta(
        &self,
        snapshot: &Snapshot,
        app_meta: &[(&str, &[u8])],
    ) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(tables::META)?;
            rules::check_install(snapshot, compacted_through_in(&meta)?)?;
            let mut parts = txn.open_table(tables::SNAPSHOT_PARTS)?;
            parts.retain(|_, _| false)?;
            for (&part, contents) in &snapshot.parts {
                let value = codec::encode_part(part, contents.last_index, &contents.bytes);
                parts.insert(part, value.as_slice())?;
            }
            txn.open_table(tables::LOG)?
                .retain_in(..=snapshot.last_index, |_, _| false)?;
            set_compacted_through(&mut meta, snapshot.last_index)?;
            let mut app_table = txn.open_table(tables::APP_META)?;
            for (key, value) in app_meta {
                app_table.insert(*key, codec::encode_app_meta(key, value).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn save_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.open_table(tables::APP_META)?
            .insert(key, codec::encode_app_meta(key, value).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn load_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::APP_META)?;
        let value = table.get(key)?;
        value
            .map(|value| codec::decode_app_meta(key, value.value()))
            .transpose()
    }

    fn put_part(&self, part: PartId, bytes: &[u8], last_index: LogIndex) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let meta = txn.open_table(tables::META)?;
            rules::check_part_covers(part, last_index, compacted_through_in(&meta)?)?;
            let value = codec::encode_part(part, last_index, bytes);
            txn.open_table(tables::SNAPSHOT_PARTS)?
                .insert(part, value.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn drop_part(&self, part: PartId) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.open_table(tables::SNAPSHOT_PARTS)?.remove(part)?;
        txn.commit()?;
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let txn = self.db.begin_read()?;
        let last_index = read_compacted_through(&txn)?;
        let parts = read_parts(&txn.open_table(tables::SNAPSHOT_PARTS)?)?;
        if last_index == 0 && parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Snapshot { last_index, parts }))
    }
}
