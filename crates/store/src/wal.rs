//! [`WalStore`]: a [`LogStore`] in plain files, an append-only write-ahead log whose append
//! costs one `fdatasync` of a pre-zeroed file, for logs on the write path of every request (the
//! Raft log of a DC).
//!
//! ```text
//!   dir/LOCK                          held (flock) while the store is open
//!   dir/wal.state                     "CWS1" ‖ crc32 ‖ len ‖ compaction point, the caller's
//!                                     named values, snapshot parts   (replaced atomically)
//!   dir/00000000000000000001.wal      segment: entries 1 ..
//!   dir/00000000000000005127.wal      segment: entries 5127 ..  (the name is its first index)
//!
//!   segment  = record* ‖ zeros
//!   record   = crc32 (4, LE) ‖ len (4, LE) ‖ index (8, LE) ‖ entry bytes (len)
//!              crc32 over index ‖ len ‖ bytes
//! ```
//!
//! **Appends.** A batch is encoded into one buffer and written with one `pwrite` at the end
//! of the last segment, then the file is `fdatasync`'d: one flush per batch. The file grows in
//! steps of [`ZERO_STEP_BYTES`] of zeros written ahead of the records, so most appends
//! overwrite blocks that already exist and the flush carries no change of the file's size (on
//! ext4 about a third cheaper than appending to the end of a file). A segment is closed once it
//! holds [`WalStore::SEGMENT_BYTES`]; the next batch starts a new file.
//!
//! **Invariant on disk:** everything after the last record of the last segment is zeros. A
//! record header of zeros ends a segment. Opening scans every segment. In the last one, a
//! batch torn by a crash ends the log, and the file is cut there so the invariant holds again;
//! it was never acknowledged, since an append returns only after its flush. Torn means the
//! first invalid record runs past the end of the file, or its part of a sector it spans is
//! all zeros (a sector the crash kept from the disk), or is followed by non-zero
//! bytes after a header of zeros. A record that is all there but fails its checksum, a bad
//! record in any other segment, a record whose index is not the next one, or a segment that
//! does not start where the previous one ended, is reported as [`StoreError::Corrupt`] or
//! [`StoreError::CorruptMetadata`]: nothing is dropped but a torn tail, and that is logged
//! with its size.
//!
//! **Everything else** (compaction point, named values, snapshot parts) lives in `wal.state`,
//! written whole to `wal.state.tmp`, flushed, renamed over `wal.state`, and the directory
//! flushed. These calls are rare on a Raft log (a vote, a purge); a store whose snapshot parts
//! are large and change often belongs in [`crate::RedbStore`]. Each mutating call changes the
//! state file first and the segments after, in an order that leaves a valid log after a crash
//! at any point:
//! - compaction records the new compaction point, then deletes the segments wholly below it
//!   (entries at or below the compaction point left in a segment are never read);
//! - truncation deletes later segments from the last one backwards, then cuts the segment
//!   holding `from`, so a crash leaves a prefix of the log, never a hole.
//!
//! Readers are not held up by a flush: an append places its records under the store's lock,
//! flushes without it (one writer at a time, behind a second lock), then publishes the new end,
//! and readers never read past the published end. [`LogStore::append_unsynced`] publishes
//! before the flush, which [`LogStore::sync`] does later (a Raft leader's own append, sent to
//! the followers while it is flushed); only the last segment ever holds unflushed records, so
//! a crash loses at most a suffix of them, cut at open like any torn tail.
//!
//! A write or flush that fails leaves the store refusing every later call (after a failed
//! `fsync` the page cache cannot be trusted); reopening recovers from what is on disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{rules, LogIndex, LogStore, PartId, Snapshot, SnapshotPart, StoreError};

/// The size of a record's header: crc32, length, index.
const HEADER_BYTES: usize = 16;
/// A file grows by at least this many zero bytes at a time, written ahead of the records.
pub const ZERO_STEP_BYTES: u64 = 1024 * 1024;
const STATE_FILE: &str = "wal.state";
const STATE_TMP_FILE: &str = "wal.state.tmp";
const STATE_MAGIC: &[u8; 4] = b"CWS1";
const SEGMENT_SUFFIX: &str = ".wal";

/// The durable [`LogStore`] in segment files; see the module doc for the layout.
pub struct WalStore {
    dir: PathBuf,
    segment_bytes: u64,
    /// Held by every mutating call for its whole length, so an append can flush without
    /// holding `inner`.
    writer: Mutex<()>,
    inner: Mutex<Inner>,
    // Held for the store's life: a second open, in this process or another, is refused.
    _lock: File,
    // Declared last so the files are closed before the directory is removed.
    _temp_dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for WalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: DurableState,
    /// Ordered by first index; together they hold `state.compacted_through + 1 ..= last_index`
    /// (the first one may also hold entries at or below the compaction point, never read).
    segments: Vec<Segment>,
    last_index: LogIndex,
    /// The last segment holds records appended with [`LogStore::append_unsynced`] and not
    /// flushed yet (no other segment ever does).
    unsynced: bool,
    /// Set when a write or flush failed: every later call is refused with it.
    failed: Option<String>,
}

#[derive(Clone, Default)]
struct DurableState {
    compacted_through: LogIndex,
    app_meta: BTreeMap<String, Vec<u8>>,
    parts: BTreeMap<PartId, SnapshotPart>,
}

struct Segment {
    first: LogIndex,
    path: PathBuf,
    file: Arc<File>,
    /// `offsets[i]` is where the record of entry `first + i` starts.
    offsets: Vec<u64>,
    /// Where the next record goes: the end of the last record.
    end: u64,
    /// The file's length: zeros from `end` to here.
    len: u64,
}

impl Segment {
    fn count(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// The index of its last entry (`first - 1` when it holds none).
    fn last(&self) -> LogIndex {
        self.first + self.count() - 1
    }

    /// Where the record of `index` ends.
    fn record_end(&self, index: LogIndex) -> u64 {
        let position = usize::try_from(index - self.first).unwrap_or(usize::MAX);
        self.offsets.get(position + 1).copied().unwrap_or(self.end)
    }
}

/// What opening found and repaired, for the caller to log or assert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn batch cut from the end of the last segment (0 after a clean stop).
    pub torn_tail_bytes: u64,
    /// Segments deleted because a compaction or truncation was interrupted.
    pub leftover_segments: usize,
}

impl WalStore {
    /// The size at which a segment is closed and the next batch starts a new file. A purge
    /// deletes whole segments, so the log on disk is up to one segment longer than what it must
    /// keep: at 64 MiB, a node of 5,000 clusters (a 30 MB snapshot) never purged its 38 MB of
    /// log, 2.3 times the snapshot on disk in all.
    pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

    /// Opens the store in `dir`, creating the directory and an empty store if needed. Fails if
    /// the store is open elsewhere, or if what is on disk breaks the log invariants.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, Self::SEGMENT_BYTES).map(|(store, _)| store)
    }

    /// [`WalStore::open`] with a segment size (tests use small ones to cross segments), also
    /// returning what was repaired.
    pub fn open_with(
        dir: impl AsRef<Path>,
        segment_bytes: u64,
    ) -> Result<(Self, Recovery), StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, "create the directory", e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, "open", e))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => StoreError::Io {
                what: format!("{}: held by another open store", lock_path.display()),
                source: io::Error::from(io::ErrorKind::WouldBlock),
            },
            fs::TryLockError::Error(e) => io_error(&lock_path, "lock", e),
        })?;
        let (inner, recovery) = recover(&dir)?;
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                bytes = recovery.torn_tail_bytes,
                "cut a torn batch from the end of the log (written, never acknowledged)"
            );
        }
        Ok((
            WalStore {
                dir,
                segment_bytes: segment_bytes.max(1),
                writer: Mutex::new(()),
                inner: Mutex::new(inner),
                _lock: lock,
                _temp_dir: None,
            },
            recovery,
        ))
    }

    /// A store in a fresh temporary directory, deleted when the store is dropped (tests), with
    /// segments of `segment_bytes`.
    pub fn temporary(segment_bytes: u64) -> Result<Self, StoreError> {
        let dir = tempfile::TempDir::new().map_err(|e| StoreError::Io {
            what: "create a temporary directory".into(),
            source: e,
        })?;
        let (mut store, _) = Self::open_with(dir.path(), segment_bytes)?;
        store._temp_dir = Some(dir);
        Ok(store)
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn inner(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        // A panic while holding the lock is a bug here; what is on disk stays valid, and the
        // in-memory view is only changed after the disk, so the guard is usable.
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(failure) = &inner.failed {
            return Err(StoreError::Io {
                what: format!("{}: refused after an earlier failure", self.dir.display()),
                source: io::Error::other(failure.clone()),
            });
        }
        Ok(inner)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a change that writes to disk; a failure marks the store failed.
    fn change<T>(
        &self,
        run: impl FnOnce(&mut Inner, &Path, u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writer = self.writer();
        self.change_held(run)
    }

    /// Flushes `file` without holding `inner` (the caller holds the writer lock); a failure
    /// marks the store failed.
    fn flush_held(&self, file: &File, path: &Path) -> Result<(), StoreError> {
        file.sync_data().map_err(|e| {
            let error = io_error(path, "flush", e);
            self.inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .failed = Some(error.to_string());
            error
        })
    }

    /// [`WalStore::change`] for a caller that holds the writer lock.
    fn change_held<T>(
        &self,
        run: impl FnOnce(&mut Inner, &Path, u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.inner()?;
        let result = run(&mut inner, &self.dir, self.segment_bytes);
        if let Err(StoreError::Io { what, source }) = &result {
            inner.failed = Some(format!("{what}: {source}"));
        }
        result
    }
}

/// Records written to the last segment and not yet published (see [`Inner::place`]).
struct Placed {
    file: Arc<File>,
    path: PathBuf,
    /// Where the first record starts, and where the last one ends.
    base: u64,
    end: u64,
    /// Where each record starts, from `base`.
    starts: Vec<u64>,
    first: LogIndex,
}

impl Inner {
    /// Writes the records of `entries` after the last one (in a new segment when the last is
    /// full), not flushed and not yet visible to readers: [`Inner::publish`] makes them so.
    /// `None` for an empty batch.
    fn place(
        &mut self,
        dir: &Path,
        segment_bytes: u64,
        entries: &[Vec<u8>],
    ) -> Result<Option<Placed>, StoreError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let first = rules::next_index(self.last_index, entries.len());
        let mut buffer = Vec::with_capacity(
            entries
                .iter()
                .map(|e| e.len() + HEADER_BYTES)
                .sum::<usize>(),
        );
        let mut starts = Vec::with_capacity(entries.len());
        for (index, bytes) in (first..).zip(entries) {
            starts.push(buffer.len() as u64);
            let len = u32::try_from(bytes.len()).map_err(|_| StoreError::EntryTooLarge {
                index,
                len: bytes.len(),
            })?;
            encode_record(&mut buffer, index, len, bytes);
        }
        let needs_segment = match self.segments.last() {
            None => true,
            Some(last) => {
                let full = last.end > 0 && last.end + buffer.len() as u64 > segment_bytes;
                // After a compaction past its end, the log restarts at `first`.
                full || last.first + last.count() != first
            }
        };
        if needs_segment {
            // Only the last segment may hold unflushed records: a crash must not keep a later
            // segment and lose the end of an earlier one (that would be a hole).
            if self.unsynced {
                if let Some(last) = self.segments.last() {
                    last.file
                        .sync_data()
                        .map_err(|e| io_error(&last.path, "flush", e))?;
                }
                self.unsynced = false;
            }
            if let Some(empty) = self.segments.pop_if(|last| last.count() == 0) {
                fs::remove_file(&empty.path).map_err(|e| io_error(&empty.path, "delete", e))?;
            }
            self.new_segment(dir, first)?;
        }
        let Some(segment) = self.segments.last_mut() else {
            return Err(StoreError::CorruptMetadata {
                key: "segments",
                reason: "no segment to append to".into(),
            });
        };
        let end = segment.end + buffer.len() as u64;
        if end > segment.len {
            // Zeros ahead of the records, so later appends overwrite existing blocks.
            // (Small segments, in tests, grow in small steps.)
            let step = ZERO_STEP_BYTES.min(segment_bytes.next_multiple_of(4096));
            let len = end.div_ceil(step) * step;
            let zeros = vec![0u8; usize::try_from(len - end).unwrap_or(0)];
            segment
                .file
                .write_all_at(&zeros, end)
                .map_err(|e| io_error(&segment.path, "extend", e))?;
            segment.len = len;
        }
        segment
            .file
            .write_all_at(&buffer, segment.end)
            .map_err(|e| io_error(&segment.path, "write", e))?;
        Ok(Some(Placed {
            file: Arc::clone(&segment.file),
            path: segment.path.clone(),
            base: segment.end,
            end,
            starts,
            first,
        }))
    }

    /// Makes placed records visible to readers: the new end of the last segment and the log.
    fn publish(&mut self, placed: Placed) -> Result<(), StoreError> {
        let count = placed.starts.len() as u64;
        let Some(segment) = self.segments.last_mut() else {
            return Err(StoreError::CorruptMetadata {
                key: "segments",
                reason: "the segment appended to is gone".into(),
            });
        };
        segment
            .offsets
            .extend(placed.starts.into_iter().map(|start| placed.base + start));
        segment.end = placed.end;
        self.last_index = placed.first + count - 1;
        Ok(())
    }

    /// Writes the state file with `change` made to a copy of the state, and keeps the copy
    /// once it is durable (on a failure the state in memory is still what is on disk).
    fn update_state(
        &mut self,
        dir: &Path,
        change: impl FnOnce(&mut DurableState),
    ) -> Result<(), StoreError> {
        let mut state = self.state.clone();
        change(&mut state);
        write_state_file(dir, &state)?;
        self.state = state;
        Ok(())
    }

    /// Deletes the segments wholly at or below the compaction point.
    fn drop_compacted_segments(&mut self, dir: &Path) -> Result<(), StoreError> {
        let through = self.state.compacted_through;
        let keep_from = self
            .segments
            .iter()
            .position(|segment| segment.count() == 0 || segment.last() > through)
            .unwrap_or(self.segments.len());
        if keep_from == 0 {
            return Ok(());
        }
        for segment in self.segments.drain(..keep_from) {
            fs::remove_file(&segment.path).map_err(|e| io_error(&segment.path, "delete", e))?;
        }
        sync_dir(dir)
    }

    fn new_segment(&mut self, dir: &Path, first: LogIndex) -> Result<(), StoreError> {
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, "create", e))?;
        sync_dir(dir)?;
        self.segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            end: 0,
            len: 0,
        });
        Ok(())
    }
}

impl LogStore for WalStore {
    fn append(&self, entries: &[Vec<u8>]) -> Result<LogIndex, StoreError> {
        // One writer at a time; readers wait only while the records are placed and published,
        // not during the flush (they never read past the published end).
        let _writer = self.writer();
        let Some(placed) =
            self.change_held(|inner, dir, segment_bytes| inner.place(dir, segment_bytes, entries))?
        else {
            return self.last_index();
        };
        // The segment holds any records appended unsynced before these: flushed with them.
        self.flush_held(&placed.file, &placed.path)?;
        let mut inner = self.inner()?;
        inner.publish(placed)?;
        inner.unsynced = false;
        Ok(inner.last_index)
    }

    fn append_unsynced(&self, entries: &[Vec<u8>]) -> Result<LogIndex, StoreError> {
        let _writer = self.writer();
        self.change_held(|inner, dir, segment_bytes| {
            if let Some(placed) = inner.place(dir, segment_bytes, entries)? {
                inner.publish(placed)?;
                inner.unsynced = true;
            }
            Ok(inner.last_index)
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        let _writer = self.writer();
        let (file, path) = {
            let inner = self.inner()?;
            match inner.segments.last() {
                Some(last) if inner.unsynced => (Arc::clone(&last.file), last.path.clone()),
                _ => return Ok(()),
            }
        };
        self.flush_held(&file, &path)?;
        self.inner()?.unsynced = false;
        Ok(())
    }

    fn read_from(
        &self,
        from: LogIndex,
        max: usize,
    ) -> Result<Vec<(LogIndex, Vec<u8>)>, StoreError> {
        let inner = self.inner()?;
        let from = rules::read_start(from, inner.state.compacted_through)?;
        let mut out = Vec::new();
        let mut next = from;
        while out.len() < max && next <= inner.last_index {
            let Some(segment) = inner
                .segments
                .iter()
                .rev()
                .find(|segment| segment.first <= next)
            else {
                return Err(StoreError::Corrupt { index: next });
            };
            if next > segment.last() {
                return Err(StoreError::Corrupt { index: next });
            }
            let wanted = u64::try_from(max - out.len()).unwrap_or(u64::MAX);
            let last = segment
                .last()
                .min(next.saturating_add(wanted - 1))
                .min(inner.last_index);
            let start = segment.offsets[usize::try_from(next - segment.first).unwrap_or(0)];
            let stop = segment.record_end(last);
            let mut bytes = vec![0u8; usize::try_from(stop - start).unwrap_or(0)];
            segment
                .file
                .read_exact_at(&mut bytes, start)
                .map_err(|e| io_error(&segment.path, "read", e))?;
            let mut at = 0;
            for index in next..=last {
                let (entry, len) =
                    decode_record(&bytes[at..], index).ok_or(StoreError::Corrupt { index })?;
                out.push((index, entry.to_vec()));
                at += len;
            }
            next = last + 1;
        }
        Ok(out)
    }

    fn last_index(&self) -> Result<LogIndex, StoreError> {
        Ok(self.inner()?.last_index)
    }

    fn first_index(&self) -> Result<LogIndex, StoreError> {
        Ok(self.inner()?.state.compacted_through + 1)
    }

    fn truncate_from(&self, from: LogIndex) -> Result<(), StoreError> {
        self.change(|inner, dir, _| {
            rules::check_truncate(from, inner.state.compacted_through)?;
            if from > inner.last_index {
                return Ok(());
            }
            // Later segments go first, from the last one back: a crash leaves a prefix.
            while let Some(segment) = inner.segments.last() {
                if segment.first < from {
                    break;
                }
                let path = segment.path.clone();
                fs::remove_file(&path).map_err(|e| io_error(&path, "delete", e))?;
                inner.segments.pop();
            }
            sync_dir(dir)?;
            if let Some(segment) = inner.segments.last_mut() {
                if segment.last() >= from {
                    let cut = segment.offsets[usize::try_from(from - segment.first).unwrap_or(0)];
                    segment
                        .file
                        .set_len(cut)
                        .map_err(|e| io_error(&segment.path, "cut", e))?;
                    segment
                        .file
                        .sync_all()
                        .map_err(|e| io_error(&segment.path, "flush", e))?;
                    segment
                        .offsets
                        .truncate(usize::try_from(from - segment.first).unwrap_or(0));
                    segment.end = cut;
                    segment.len = cut;
                }
            }
            inner.last_index = (from - 1).max(inner.state.compacted_through);
            // Records appended unsynced were in the last segment: deleted, or cut and flushed.
            inner.unsynced = false;
            Ok(())
        })
    }

    fn compact_through(&self, through: LogIndex) -> Result<(), StoreError> {
        self.change(|inner, dir, _| {
            if through <= inner.state.compacted_through {
                return Ok(());
            }
            rules::check_compact(
                through,
                inner.last_index,
                inner
                    .state
                    .parts
                    .iter()
                    .map(|(&part, p)| (part, p.last_index)),
            )?;
            inner.update_state(dir, |state| state.compacted_through = through)?;
            inner.drop_compacted_segments(dir)
        })
    }

    fn install_snapshot_with_meta(
        &self,
        snapshot: &Snapshot,
        meta: &[(&str, &[u8])],
    ) -> Result<(), StoreError> {
        self.change(|inner, dir, _| {
            rules::check_install(snapshot, inner.state.compacted_through)?;
            inner.update_state(dir, |state| {
                state.compacted_through = snapshot.last_index;
                state.parts = snapshot.parts.clone();
                for (key, value) in meta {
                    state.app_meta.insert((*key).to_owned(), value.to_vec());
                }
            })?;
            inner.last_index = inner.last_index.max(snapshot.last_index);
            inner.drop_compacted_segments(dir)
        })
    }

    fn put_part(&self, part: PartId, bytes: &[u8], last_index: LogIndex) -> Result<(), StoreError> {
        self.change(|inner, dir, _| {
            rules::check_part_covers(part, last_index, inner.state.compacted_through)?;
            inner.update_state(dir, |state| {
                let bytes = bytes.to_vec();
                state.parts.insert(part, SnapshotPart { last_index, bytes });
            })
        })
    }

    fn drop_part(&self, part: PartId) -> Result<(), StoreError> {
        self.change(|inner, dir, _| {
            if !inner.state.parts.contains_key(&part) {
                return Ok(());
            }
            inner.update_state(dir, |state| {
                state.parts.remove(&part);
            })
        })
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let inner = self.inner()?;
        if inner.state.compacted_through == 0 && inner.state.parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            last_index: inner.state.compacted_through,
            parts: inner.state.parts.clone(),
        }))
    }

    fn save_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.change(|inner, dir, _| {
            inner.update_state(dir, |state| {
                state.app_meta.insert(key.to_owned(), value.to_vec());
            })
        })
    }

    fn load_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner()?.state.app_meta.get(key).cloned())
    }
}

fn io_error(path: &Path, doing: &str, source: io::Error) -> StoreError {
    StoreError::Io {
        what: format!("{doing} {}", path.display()),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "flush the directory", e))
}

fn segment_name(first: LogIndex) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

fn record_crc(index: LogIndex, len: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

fn encode_record(buffer: &mut Vec<u8>, index: LogIndex, len: u32, bytes: &[u8]) {
    buffer.extend_from_slice(&record_crc(index, len, bytes).to_le_bytes());
    buffer.extend_from_slice(&len.to_le_bytes());
    buffer.extend_from_slice(&index.to_le_bytes());
    buffer.extend_from_slice(bytes);
}

/// The entry bytes of the record at the start of `bytes` if it is whole, valid and holds
/// `index`, with the record's length.
fn decode_record(bytes: &[u8], index: LogIndex) -> Option<(&[u8], usize)> {
    let header = bytes.get(..HEADER_BYTES)?;
    let crc = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let stored_index = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let end = HEADER_BYTES.checked_add(usize::try_from(len).ok()?)?;
    let entry = bytes.get(HEADER_BYTES..end)?;
    (stored_index == index && record_crc(index, len, entry) == crc).then_some((entry, end))
}

/// The size of the sectors a torn write leaves unwritten, as zeros in a pre-zeroed file.
const SECTOR_BYTES: usize = 512;

/// Whether the invalid record at `at` was cut short by a crash rather than damaged: its
/// header or body runs past the end of the file, or its part of one of the sectors it spans
/// is all zeros. A disk writes a sector whole or not at all, and a batch is written over
/// zeros, so what a crash kept from the disk reads as zeros to the end of a sector (or from
/// its start). A record that is all there but fails its checksum is damage, not a torn write.
fn torn_at(bytes: &[u8], at: usize) -> bool {
    let Some(header) = bytes.get(at..at + HEADER_BYTES) else {
        return true;
    };
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| (at + HEADER_BYTES).checked_add(len));
    let Some(end) = end.filter(|&end| end <= bytes.len()) else {
        return true;
    };
    (at / SECTOR_BYTES..=(end - 1) / SECTOR_BYTES).any(|sector| {
        let start = (sector * SECTOR_BYTES).max(at);
        let stop = ((sector + 1) * SECTOR_BYTES).min(end);
        bytes[start..stop].iter().all(|&b| b == 0)
    })
}

/// Reads what is on disk back into memory, finishing what a crash interrupted.
fn recover(dir: &Path) -> Result<(Inner, Recovery), StoreError> {
    let mut recovery = Recovery::default();
    let tmp = dir.join(STATE_TMP_FILE);
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(|e| io_error(&tmp, "delete", e))?;
    }
    let mut firsts = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| io_error(dir, "list", e))? {
        let item = item.map_err(|e| io_error(dir, "list", e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            let first = stem
                .parse::<LogIndex>()
                .ok()
                .filter(|&first| first > 0 && segment_name(first) == name)
                .ok_or_else(|| StoreError::CorruptMetadata {
                    key: "segments",
                    reason: format!("unexpected file {name} in {}", dir.display()),
                })?;
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let state_path = dir.join(STATE_FILE);
    let state = match fs::read(&state_path) {
        Ok(bytes) => decode_state(&bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !firsts.is_empty() {
                return Err(StoreError::CorruptMetadata {
                    key: STATE_FILE,
                    reason: format!("missing in {}, which holds log segments", dir.display()),
                });
            }
            let state = DurableState::default();
            write_state_file(dir, &state)?;
            state
        }
        Err(e) => return Err(io_error(&state_path, "read", e)),
    };

    let count = firsts.len();
    let mut segments: Vec<Segment> = Vec::with_capacity(count);
    for (position, first) in firsts.into_iter().enumerate() {
        let is_last = position + 1 == count;
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, "open", e))?;
        let bytes = fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
        let mut offsets = Vec::new();
        let mut at = 0usize;
        let mut torn = false;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if rest[..rest.len().min(HEADER_BYTES)].iter().all(|&b| b == 0) {
                break;
            }
            let index = first + offsets.len() as u64;
            match decode_record(rest, index) {
                Some((_, len)) => {
                    offsets.push(at as u64);
                    at += len;
                }
                None if is_last && torn_at(&bytes, at) => {
                    torn = true;
                    break;
                }
                None => return Err(StoreError::Corrupt { index }),
            }
        }
        let end = at as u64;
        let mut len = bytes.len() as u64;
        // The bytes after the last whole record that are not zeros.
        let garbage = bytes[at..]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last as u64 + 1);
        if torn || (is_last && garbage > 0) {
            recovery.torn_tail_bytes = garbage;
            file.set_len(end).map_err(|e| io_error(&path, "cut", e))?;
            file.sync_all().map_err(|e| io_error(&path, "flush", e))?;
            len = end;
        } else if !is_last && garbage > 0 {
            return Err(StoreError::Corrupt {
                index: first + offsets.len() as u64,
            });
        }
        segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets,
            end,
            len,
        });
    }

    // Segments an interrupted compaction or truncation left behind: wholly compacted ones,
    // and empty ones before the last.
    let through = state.compacted_through;
    let mut kept: Vec<Segment> = Vec::with_capacity(segments.len());
    let total = segments.len();
    for (position, segment) in segments.into_iter().enumerate() {
        let empty_inside = segment.count() == 0 && position + 1 < total;
        let compacted = segment.count() > 0 && segment.last() <= through;
        if empty_inside || compacted {
            fs::remove_file(&segment.path).map_err(|e| io_error(&segment.path, "delete", e))?;
            recovery.leftover_segments += 1;
        } else {
            kept.push(segment);
        }
    }
    if recovery.leftover_segments > 0 {
        sync_dir(dir)?;
    }
    let mut last_index = through;
    for (position, segment) in kept.iter().enumerate() {
        let expected = if position == 0 {
            // The first kept segment must reach back to the compaction point.
            if segment.first > through + 1 {
                return Err(StoreError::CorruptMetadata {
                    key: "segments",
                    reason: format!(
                        "compacted through {through} but the log starts at {}",
                        segment.first
                    ),
                });
            }
            segment.first
        } else {
            last_index + 1
        };
        if segment.first != expected {
            return Err(StoreError::CorruptMetadata {
                key: "segments",
                reason: format!(
                    "a segment starts at {} but the log before it ends at {last_index}",
                    segment.first
                ),
            });
        }
        if segment.count() > 0 {
            last_index = last_index.max(segment.last());
        }
    }
    Ok((
        Inner {
            state,
            segments: kept,
            last_index,
            unsynced: false,
            failed: None,
        },
        recovery,
    ))
}

fn write_state_file(dir: &Path, state: &DurableState) -> Result<(), StoreError> {
    let body = encode_state(state);
    let mut bytes = Vec::with_capacity(body.len() + 12);
    bytes.extend_from_slice(STATE_MAGIC);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    let tmp = dir.join(STATE_TMP_FILE);
    let file = File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
    file.write_all_at(&bytes, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(&tmp, "write", e))?;
    let path = dir.join(STATE_FILE);
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, "replace", e))?;
    sync_dir(dir)
}

fn encode_state(state: &DurableState) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&state.compacted_through.to_le_bytes());
    body.extend_from_slice(&(state.app_meta.len() as u64).to_le_bytes());
    for (key, value) in &state.app_meta {
        put_bytes(&mut body, key.as_bytes());
        put_bytes(&mut body, value);
    }
    body.extend_from_slice(&(state.parts.len() as u64).to_le_bytes());
    for (part, contents) in &state.parts {
        body.extend_from_slice(&part.to_le_bytes());
        body.extend_from_slice(&contents.last_index.to_le_bytes());
        put_bytes(&mut body, &contents.bytes);
    }
    body
}

fn put_bytes(body: &mut Vec<u8>, bytes: &[u8]) {
    body.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    body.extend_from_slice(bytes);
}

fn decode_state(bytes: &[u8]) -> Result<DurableState, StoreError> {
    let corrupt = |reason: &str| StoreError::CorruptMetadata {
        key: STATE_FILE,
        reason: reason.to_owned(),
    };
    let mut reader = Reader { bytes };
    if reader.take(4) != Some(STATE_MAGIC.as_slice()) {
        return Err(corrupt("does not start with CWS1"));
    }
    let crc = reader.u32().ok_or_else(|| corrupt("truncated"))?;
    let len = reader.u64().ok_or_else(|| corrupt("truncated"))?;
    if reader.bytes.len() as u64 != len || crc32fast::hash(reader.bytes) != crc {
        return Err(corrupt("checksum or length mismatch"));
    }
    let truncated = || corrupt("truncated body");
    let compacted_through = reader.u64().ok_or_else(truncated)?;
    let mut app_meta = BTreeMap::new();
    for _ in 0..reader.u64().ok_or_else(truncated)? {
        let key = reader.sized().ok_or_else(truncated)?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt("a key is not UTF-8"))?;
        let value = reader.sized().ok_or_else(truncated)?.to_vec();
        app_meta.insert(key, value);
    }
    let mut parts = BTreeMap::new();
    for _ in 0..reader.u64().ok_or_else(truncated)? {
        let part = reader.u32().ok_or_else(truncated)?;
        let last_index = reader.u64().ok_or_else(truncated)?;
        let bytes = reader.sized().ok_or_else(truncated)?.to_vec();
        parts.insert(part, SnapshotPart { last_index, bytes });
    }
    if !reader.bytes.is_empty() {
        return Err(corrupt("bytes after the body"));
    }
    Ok(DurableState {
        compacted_through,
        app_meta,
        parts,
    })
}

/// Reads a byte slice front to back; every read checks that the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn sized(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }
}
