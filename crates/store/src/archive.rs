//! [`Archive`]: a node's cold store of finished jobs, keyed by `(cluster, job sequence)`, whose
//! values are opaque bytes. On disk it is one redb file (`archive.redb` next to the DC log);
//! in memory for tests and the simulation.
//!
//! ```text
//!  table `jobs`: (u64 cluster, u32 seq) -> crc32(key ‖ bytes) (4, LE) ‖ bytes
//!  export (a snapshot part): { cluster (8, LE) ‖ seq (4, LE) ‖ length (4, LE) ‖ bytes }*
//! ```
//!
//! Writes are durable when they return (one fsync per call). Reads validate the checksum, and
//! an export that does not parse is an error naming it, never a panic.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::StoreError;

/// The archive's one table.
pub const JOBS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("jobs");

/// A key of the archive: a cluster and the sequence number of one of its jobs.
pub type ArchiveKey = (u64, u32);

enum Backend {
    Redb(Database),
    Memory(Mutex<BTreeMap<ArchiveKey, Vec<u8>>>),
}

/// Finished jobs kept out of memory (see the module doc).
pub struct Archive {
    backend: Backend,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").finish_non_exhaustive()
    }
}

fn crc(key: ArchiveKey, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&key.0.to_le_bytes());
    hasher.update(&key.1.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

fn encode(key: ArchiveKey, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + bytes.len());
    value.extend_from_slice(&crc(key, bytes).to_le_bytes());
    value.extend_from_slice(bytes);
    value
}

fn decode(key: ArchiveKey, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let corrupt = || StoreError::CorruptMetadata {
        key: "archive",
        reason: format!("job {}-{} fails its checksum", key.0, key.1),
    };
    let (head, bytes) = value.split_at_checked(4).ok_or_else(corrupt)?;
    let stored = u32::from_le_bytes(head.try_into().map_err(|_| corrupt())?);
    if stored != crc(key, bytes) {
        return Err(corrupt());
    }
    Ok(bytes.to_vec())
}

impl Archive {
    /// Opens (or creates) the archive file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Archive, StoreError> {
        let db = Database::builder()
            .set_cache_size(crate::redb_store::CACHE_BYTES / 2)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(JOBS)?;
        txn.commit()?;
        Ok(Archive {
            backend: Backend::Redb(db),
        })
    }

    /// An archive in memory (tests, the simulation).
    pub fn in_memory() -> Archive {
        Archive {
            backend: Backend::Memory(Mutex::new(BTreeMap::new())),
        }
    }

    fn memory(
        map: &Mutex<BTreeMap<ArchiveKey, Vec<u8>>>,
    ) -> std::sync::MutexGuard<'_, BTreeMap<ArchiveKey, Vec<u8>>> {
        map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores every `(key, bytes)` (replacing what a key held) and removes every key of a
    /// cluster for which `drop_cluster` is true, in one durable step.
    pub fn write(
        &self,
        puts: &[(ArchiveKey, Vec<u8>)],
        drop_cluster: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = Self::memory(map);
                if let Some(drop) = drop_cluster {
                    map.retain(|(cluster, _), _| !drop(*cluster));
                }
                for (key, bytes) in puts {
                    map.insert(*key, bytes.clone());
                }
                Ok(())
            }
            Backend::Redb(db) => {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut table = txn.open_table(JOBS)?;
                    if let Some(drop) = drop_cluster {
                        table.retain(|(cluster, _), _| !drop(cluster))?;
                    }
                    for (key, bytes) in puts {
                        table.insert(key, encode(*key, bytes).as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(())
            }
        }
    }

    /// The bytes stored under `key`.
    pub fn get(&self, key: ArchiveKey) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Memory(map) => Ok(Self::memory(map).get(&key).cloned()),
            Backend::Redb(db) => {
                let txn = db.begin_read()?;
                let table = txn.open_table(JOBS)?;
                match table.get(key)? {
                    Some(value) => decode(key, value.value()).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// Every job of `cluster`, by sequence number.
    pub fn of_cluster(&self, cluster: u64) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let range = (cluster, 0)..=(cluster, u32::MAX);
        match &self.backend {
            Backend::Memory(map) => Ok(Self::memory(map)
                .range(range)
                .map(|((_, seq), bytes)| (*seq, bytes.clone()))
                .collect()),
            Backend::Redb(db) => {
                let txn = db.begin_read()?;
                let table = txn.open_table(JOBS)?;
                let mut jobs = Vec::new();
                for row in table.range(range)? {
                    let (key, value) = row?;
                    let key = key.value();
                    jobs.push((key.1, decode(key, value.value())?));
                }
                Ok(jobs)
            }
        }
    }

    /// The archive as it is now, to read while writes go on (a read transaction, or a copy
    /// in memory).
    pub fn view(&self) -> Result<ArchiveView, StoreError> {
        Ok(match &self.backend {
            Backend::Memory(map) => ArchiveView::Memory(Self::memory(map).clone()),
            Backend::Redb(db) => ArchiveView::Redb(db.begin_read()?),
        })
    }

    /// Every stored job, in key order, passed to `visit`; the first error (of the store, or of
    /// `visit`) stops the walk.
    pub fn try_for_each<E: From<StoreError>>(
        &self,
        visit: impl FnMut(ArchiveKey, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.view()?.try_for_each(visit)
    }

    /// Every stored job, in key order, passed to `visit`.
    pub fn for_each(&self, mut visit: impl FnMut(ArchiveKey, &[u8])) -> Result<(), StoreError> {
        self.try_for_each(|key, bytes| {
            visit(key, bytes);
            Ok::<(), StoreError>(())
        })
    }

    /// Exports the jobs in key order, in chunks (see [`ArchiveView::export_chunks`]).
    pub fn export_chunks<E: From<StoreError>>(
        &self,
        chunk_bytes: usize,
        out: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.view()?.export_chunks(chunk_bytes, out)
    }

    /// Removes every job, in one durable step.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.replace_all([])?;
        Ok(())
    }

    /// Adds the jobs of one export (as [`Archive::export_chunks`] made it), in one durable
    /// step; returns how many. An export that does not parse changes
    /// nothing.
    pub fn insert_export(&self, export: &[u8]) -> Result<usize, StoreError> {
        let mut jobs = Vec::new();
        parse_export(export, &mut jobs)?;
        let puts: Vec<(ArchiveKey, Vec<u8>)> =
            jobs.into_iter().map(|(k, v)| (k, v.to_vec())).collect();
        self.write(&puts, None)?;
        Ok(puts.len())
    }

    /// Replaces everything stored with the jobs of `exports` (as [`Archive::export_chunks`] made
    /// them), in one durable step. An export that does not parse changes nothing.
    pub fn replace_all<'a>(
        &self,
        exports: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, StoreError> {
        let mut jobs = Vec::new();
        for export in exports {
            parse_export(export, &mut jobs)?;
        }
        let count = jobs.len();
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = Self::memory(map);
                map.clear();
                map.extend(jobs.into_iter().map(|(k, v)| (k, v.to_vec())));
            }
            Backend::Redb(db) => {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut table = txn.open_table(JOBS)?;
                    table.retain(|_, _| false)?;
                    for (key, bytes) in jobs {
                        table.insert(key, encode(key, bytes).as_slice())?;
                    }
                }
                txn.commit()?;
            }
        }
        Ok(count)
    }
}

/// The archive at one point in time ([`Archive::view`]).
pub enum ArchiveView {
    Redb(redb::ReadTransaction),
    Memory(BTreeMap<ArchiveKey, Vec<u8>>),
}

impl ArchiveView {
    /// Every job of the view, in key order, passed to `visit`; the first error (of the store,
    /// or of `visit`) stops the walk.
    pub fn try_for_each<E: From<StoreError>>(
        &self,
        mut visit: impl FnMut(ArchiveKey, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            ArchiveView::Memory(map) => {
                for (key, bytes) in map {
                    visit(*key, bytes)?;
                }
                Ok(())
            }
            ArchiveView::Redb(txn) => {
                let table = txn.open_table(JOBS).map_err(StoreError::from)?;
                for row in table.iter().map_err(StoreError::from)? {
                    let (key, value) = row.map_err(StoreError::from)?;
                    let key = key.value();
                    visit(key, &decode(key, value.value())?)?;
                }
                Ok(())
            }
        }
    }

    /// Exports the jobs in key order, in chunks (see the module doc) of about `chunk_bytes`
    /// (a chunk ends after the job that brings it to `chunk_bytes` or more), each passed to
    /// `out` as soon as it is full: the archive is never held whole in memory.
    pub fn export_chunks<E: From<StoreError>>(
        &self,
        chunk_bytes: usize,
        mut out: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut chunk = Vec::new();
        self.try_for_each::<E>(|key, bytes| {
            export_job(&mut chunk, key, bytes);
            if chunk.len() >= chunk_bytes {
                out(&chunk)?;
                chunk.clear();
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            out(&chunk)?;
        }
        Ok(())
    }
}

fn export_job(out: &mut Vec<u8>, key: ArchiveKey, bytes: &[u8]) {
    out.extend_from_slice(&key.0.to_le_bytes());
    out.extend_from_slice(&key.1.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn parse_export<'a>(
    mut export: &'a [u8],
    into: &mut Vec<(ArchiveKey, &'a [u8])>,
) -> Result<(), StoreError> {
    let bad = |reason: &str| StoreError::CorruptMetadata {
        key: "archive export",
        reason: reason.to_string(),
    };
    while !export.is_empty() {
        let (head, rest) = export
            .split_at_checked(16)
            .ok_or_else(|| bad("truncated job header"))?;
        let cluster = u64::from_le_bytes(head[0..8].try_into().map_err(|_| bad("header"))?);
        let seq = u32::from_le_bytes(head[8..12].try_into().map_err(|_| bad("header"))?);
        let len = u32::from_le_bytes(head[12..16].try_into().map_err(|_| bad("header"))?) as usize;
        let (bytes, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| bad("job bytes cut short"))?;
        into.push(((cluster, seq), bytes));
        export = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Vec<(Archive, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let disk = Archive::open(dir.path().join("archive.redb")).unwrap();
        vec![(Archive::in_memory(), None), (disk, Some(dir))]
    }

    #[test]
    fn writes_reads_exports_and_replaces() {
        for (archive, _dir) in both() {
            let puts = vec![
                ((1, 1), b"a".to_vec()),
                ((1, 2), b"bb".to_vec()),
                ((2, 1), b"c".to_vec()),
                ((3, 1), vec![]),
            ];
            archive.write(&puts, None).unwrap();
            assert_eq!(archive.get((1, 2)).unwrap(), Some(b"bb".to_vec()));
            assert_eq!(archive.get((1, 3)).unwrap(), None);
            assert_eq!(
                archive.of_cluster(1).unwrap(),
                vec![(1, b"a".to_vec()), (2, b"bb".to_vec())]
            );
            // One chunk: every job fits.
            let mut exports: Vec<Vec<u8>> = Vec::new();
            archive
                .export_chunks(1 << 20, |chunk| {
                    exports.push(chunk.to_vec());
                    Ok::<(), StoreError>(())
                })
                .unwrap();
            assert_eq!(exports.len(), 1);
            archive
                .write(&[((4, 1), b"d".to_vec())], Some(&|c| c % 2 == 1))
                .unwrap();
            assert_eq!(archive.of_cluster(1).unwrap(), vec![]);
            assert_eq!(archive.get((4, 1)).unwrap(), Some(b"d".to_vec()));
            let restored = archive
                .replace_all(exports.iter().map(Vec::as_slice))
                .unwrap();
            assert_eq!(restored, 4);
            assert_eq!(archive.get((4, 1)).unwrap(), None);
            assert_eq!(archive.get((3, 1)).unwrap(), Some(vec![]));
            assert_eq!(archive.of_cluster(1).unwrap().len(), 2);
            // A cut export is refused and changes nothing.
            let cut = &exports[0][..exports[0].len() - 1];
            assert!(matches!(
                archive.replace_all([cut]),
                Err(StoreError::CorruptMetadata { .. })
            ));
            assert_eq!(archive.of_cluster(1).unwrap().len(), 2);
        }
    }

    #[test]
    fn exports_in_chunks_and_inserts_them_back() {
        for (archive, _dir) in both() {
            let puts: Vec<_> = (0..10u64).map(|c| ((c, 1), vec![c as u8; 10])).collect();
            archive.write(&puts, None).unwrap();
            let mut chunks = Vec::new();
            archive
                .export_chunks(60, |chunk| {
                    chunks.push(chunk.to_vec());
                    Ok::<(), StoreError>(())
                })
                .unwrap();
            // 26 bytes a job: a chunk closes at its third job (78 >= 60); 10 jobs, 4 chunks.
            assert_eq!(
                chunks.iter().map(Vec::len).collect::<Vec<_>>(),
                vec![78, 78, 78, 26]
            );
            archive.clear().unwrap();
            assert_eq!(archive.get((0, 1)).unwrap(), None);
            let inserted: usize = chunks
                .iter()
                .map(|chunk| archive.insert_export(chunk).unwrap())
                .sum();
            assert_eq!(inserted, 10);
            let mut all = Vec::new();
            archive
                .for_each(|key, bytes| all.push((key, bytes.to_vec())))
                .unwrap();
            assert_eq!(all, puts);
            // A cut chunk changes nothing; an error of the sink stops the export.
            assert!(archive.insert_export(&chunks[0][..77]).is_err());
            let mut calls = 0;
            let stopped = archive.export_chunks(60, |_| {
                calls += 1;
                Err(StoreError::CorruptMetadata {
                    key: "sink",
                    reason: "full".into(),
                })
            });
            assert!(stopped.is_err());
            assert_eq!(calls, 1);
        }
    }

    #[test]
    fn a_corrupt_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.redb");
        let archive = Archive::open(&path).unwrap();
        archive.write(&[((7, 1), b"job".to_vec())], None).unwrap();
        drop(archive);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(JOBS)
            .unwrap()
            .insert((7, 1), b"\0\0\0\0job".as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let archive = Archive::open(&path).unwrap();
        assert!(matches!(
            archive.get((7, 1)),
            Err(StoreError::CorruptMetadata { .. })
        ));
        assert!(archive
            .export_chunks(1 << 20, |_| Ok::<(), StoreError>(()))
            .is_err());
    }
}
