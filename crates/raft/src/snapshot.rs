//! Snapshots as files, written and read one part at a time: a snapshot is never held whole in
//! memory, and a node keeps one file per snapshot, deleting the one it supersedes.
//!
//! ```text
//!   "CPS2" ‖ meta length (4, LE) ‖ crc32 of the meta (4, LE) ‖ meta (JSON of SnapshotMeta)
//!   { 'P' ‖ part id (4, LE) ‖ length (8, LE) ‖ crc32 of id ‖ length ‖ bytes (4, LE) ‖ bytes }*
//!   'E' ‖ part count (8, LE)
//! ```
//!
//! The file is also what travels to a follower: openraft reads it in chunks from its
//! [`SnapshotData`] and the follower writes the chunks into a file of its own, checks every
//! part's checksum and that the meta inside is the one the leader announced, then makes it its
//! current snapshot (durable before the state machine is restored from it).
//!
//! On disk (`<raft dir>/snapshots/`):
//!
//! ```text
//!   tmp-<n>.cps            a snapshot being built or received (deleted at open: never current)
//!   snapshot-<seq>.cps     the current snapshot: the highest sequence number
//! ```
//!
//! A new snapshot is written under a temporary name, fsync'd, renamed to the next sequence
//! number, and the directory fsync'd; only then is the superseded file deleted. A crash at any
//! point leaves the old or the new snapshot current, never neither. In memory (tests, the
//! simulation) the current snapshot is one byte buffer in the same format.

use std::fs;
use std::io::{self, BufReader, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use openraft::{BasicNode, SnapshotMeta};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::types::NodeId;

const MAGIC: &[u8; 4] = b"CPS2";
const PART: u8 = b'P';
const END: u8 = b'E';
/// The JSON of a snapshot's meta (membership and log id) is far below this.
const MAX_META_BYTES: u32 = 16 << 20;
const WRITE_BUFFER_BYTES: usize = 1 << 20;

pub type Meta = SnapshotMeta<NodeId, BasicNode>;

/// openraft's `SnapshotData`: a snapshot file (or, in memory, its bytes) to read chunks from
/// or write chunks into.
pub enum SnapshotData {
    File {
        file: tokio::fs::File,
        /// Where the file is: a received snapshot is renamed from here.
        path: PathBuf,
    },
    Memory(Cursor<Vec<u8>>),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::File { path, .. } => write!(f, "SnapshotData::File({})", path.display()),
            SnapshotData::Memory(cursor) => {
                write!(f, "SnapshotData::Memory({} bytes)", cursor.get_ref().len())
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File { file, .. } => Pin::new(file).poll_read(cx, buf),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::File { file, .. } => Pin::new(file).poll_write(cx, buf),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File { file, .. } => Pin::new(file).poll_flush(cx),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File { file, .. } => Pin::new(file).poll_shutdown(cx),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_shutdown(cx),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            SnapshotData::File { file, .. } => Pin::new(file).start_seek(position),
            SnapshotData::Memory(cursor) => Pin::new(cursor).start_seek(position),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::File { file, .. } => Pin::new(file).poll_complete(cx),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_complete(cx),
        }
    }
}

impl SnapshotData {
    /// The data as something a blocking thread can read (waits for tokio's pending writes).
    pub(crate) async fn into_received(self) -> Received {
        match self {
            SnapshotData::File { file, path } => Received::File(file.into_std().await, path),
            SnapshotData::Memory(cursor) => Received::Memory(cursor.into_inner()),
        }
    }
}

/// A received snapshot, handed from openraft's task to a blocking one.
pub(crate) enum Received {
    File(fs::File, PathBuf),
    Memory(Vec<u8>),
}

/// The checksum of a part: over its id and length too, so a damaged header is caught.
fn part_crc(id: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_le_bytes());
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Reads a snapshot's parts one at a time, checking each part's checksum and the framing
/// (never trusting a length beyond what the input still holds). After an error it yields
/// nothing more.
pub struct SnapshotReader {
    input: Box<dyn Read + Send>,
    /// Bytes of the whole snapshot.
    len: u64,
    /// Bytes of the input not read yet.
    left: u64,
    meta: Meta,
    parts: u64,
    done: bool,
}

impl SnapshotReader {
    fn new(mut input: Box<dyn Read + Send>, len: u64) -> io::Result<SnapshotReader> {
        const HEAD: u64 = 12;
        let mut head = [0u8; HEAD as usize];
        input
            .read_exact(&mut head)
            .map_err(|_| invalid("snapshot shorter than its header"))?;
        if &head[..4] != MAGIC {
            return Err(invalid("snapshot does not start with CPS2"));
        }
        let meta_len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if meta_len > MAX_META_BYTES || u64::from(meta_len) > len.saturating_sub(HEAD) {
            return Err(invalid(format!("snapshot meta of {meta_len} bytes")));
        }
        let mut meta = vec![0; meta_len as usize];
        input
            .read_exact(&mut meta)
            .map_err(|_| invalid("snapshot cut in its meta"))?;
        if crc32fast::hash(&meta) != crc {
            return Err(invalid("snapshot meta fails its checksum"));
        }
        let meta: Meta = serde_json::from_slice(&meta)
            .map_err(|e| invalid(format!("snapshot meta does not decode: {e}")))?;
        Ok(SnapshotReader {
            input,
            len,
            left: len - HEAD - u64::from(meta_len),
            meta,
            parts: 0,
            done: false,
        })
    }

    /// The meta written in the snapshot.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Bytes of the whole snapshot (as stored and sent).
    pub fn bytes(&self) -> u64 {
        self.len
    }

    fn read(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        if (buf.len() as u64) > self.left {
            return Err(invalid(format!("snapshot cut in {what}")));
        }
        self.input.read_exact(buf)?;
        self.left -= buf.len() as u64;
        Ok(())
    }

    fn next_part(&mut self) -> io::Result<Option<(u32, Vec<u8>)>> {
        let mut kind = [0u8; 1];
        self.read(&mut kind, "a record")?;
        match kind[0] {
            PART => {
                let mut head = [0u8; 16];
                self.read(&mut head, "a part header")?;
                let id = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
                let len = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
                let crc = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
                if len > self.left {
                    return Err(invalid(format!(
                        "snapshot part {id} of {len} bytes with {} left",
                        self.left
                    )));
                }
                let mut bytes = vec![0; len as usize];
                self.read(&mut bytes, "a part")?;
                if part_crc(id, &bytes) != crc {
                    return Err(invalid(format!("snapshot part {id} fails its checksum")));
                }
                self.parts += 1;
                Ok(Some((id, bytes)))
            }
            END => {
                let mut count = [0u8; 8];
                self.read(&mut count, "its end")?;
                let count = u64::from_le_bytes(count);
                if count != self.parts {
                    return Err(invalid(format!(
                        "snapshot ends after {} parts but says {count}",
                        self.parts
                    )));
                }
                if self.left != 0 {
                    return Err(invalid(format!(
                        "{} bytes after the end of the snapshot",
                        self.left
                    )));
                }
                Ok(None)
            }
            other => Err(invalid(format!("snapshot record of unknown kind {other}"))),
        }
    }

    /// Reads the rest, checking every part; returns how many parts there were in all.
    fn verify(mut self) -> io::Result<u64> {
        for part in self.by_ref() {
            part?;
        }
        if !self.done {
            return Err(invalid("snapshot not read to its end"));
        }
        Ok(self.parts)
    }
}

impl Iterator for SnapshotReader {
    type Item = io::Result<(u32, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_part() {
            Ok(Some(part)) => Some(Ok(part)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                // `done` stays false: `verify` tells an error from the end.
                self.left = 0;
                self.input = Box::new(io::empty());
                Some(Err(e))
            }
        }
    }
}

/// Writes one snapshot, part by part; [`SnapshotStore::commit`] makes it current.
pub struct SnapshotWriter {
    out: Out,
    meta: Meta,
    parts: u64,
    /// Bytes written so far.
    bytes: u64,
}

enum Out {
    File(BufWriter<fs::File>, PathBuf),
    Memory(Vec<u8>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(file, _) => file.write(buf),
            Out::Memory(bytes) => bytes.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::File(file, _) => file.flush(),
            Out::Memory(_) => Ok(()),
        }
    }
}

impl SnapshotWriter {
    fn new(mut out: Out, meta: &Meta) -> io::Result<SnapshotWriter> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&crc32fast::hash(&json).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(SnapshotWriter {
            out,
            meta: meta.clone(),
            parts: 0,
            bytes: 12 + json.len() as u64,
        })
    }

    /// Bytes of the snapshot once finished (what is written so far, and its end).
    pub fn bytes(&self) -> u64 {
        self.bytes + 9
    }

    /// Appends one part.
    pub fn part(&mut self, id: u32, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(&[PART])?;
        self.out.write_all(&id.to_le_bytes())?;
        self.out.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.out.write_all(&part_crc(id, bytes).to_le_bytes())?;
        self.out.write_all(bytes)?;
        self.parts += 1;
        self.bytes += 17 + bytes.len() as u64;
        Ok(())
    }

    /// Writes the end and returns the finished output.
    fn end(mut self) -> io::Result<(Out, Meta)> {
        self.out.write_all(&[END])?;
        let parts = self.parts;
        self.out.write_all(&parts.to_le_bytes())?;
        self.out.flush()?;
        let out = std::mem::replace(&mut self.out, Out::Memory(Vec::new()));
        Ok((out, self.meta.clone()))
    }
}

impl Drop for SnapshotWriter {
    /// A snapshot abandoned midway (an error while writing it) leaves no file behind.
    fn drop(&mut self) {
        if let Out::File(_, path) = &self.out {
            let _ = fs::remove_file(path);
        }
    }
}

/// Where a node keeps its current snapshot: a directory of files, or memory. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotStore {
    backend: Arc<Backend>,
}

enum Backend {
    Dir {
        dir: PathBuf,
        current: Mutex<Option<Current>>,
        /// Numbers temporary files, unique within the process.
        temp: AtomicU64,
    },
    Memory(Mutex<Option<Arc<[u8]>>>),
}

/// The current snapshot file.
#[derive(Clone)]
struct Current {
    seq: u64,
    /// The openraft index of its last entry (`None`: the empty snapshot).
    index: Option<u64>,
    path: PathBuf,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn index_of(meta: &Meta) -> Option<u64> {
    meta.last_log_id.map(|id| id.index)
}

fn snapshot_file(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:016}.cps"))
}

fn open_reader(path: &Path) -> io::Result<SnapshotReader> {
    let file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    SnapshotReader::new(Box::new(BufReader::new(file)), len)
}

fn memory_reader(bytes: Arc<[u8]>) -> io::Result<SnapshotReader> {
    let len = bytes.len() as u64;
    SnapshotReader::new(Box::new(Cursor::new(bytes)), len)
}

/// Whether `path` is one of the temporary files of `dir` (a snapshot received into it).
fn is_temp_in(dir: &Path, path: &Path) -> bool {
    path.parent() == Some(dir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tmp-"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl SnapshotStore {
    /// The snapshots in `dir` (created if missing). Temporary files of an earlier process are
    /// deleted, and so is every snapshot file but the newest.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<SnapshotStore> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut newest: Option<(u64, PathBuf)> = None;
        let mut stale = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("tmp-") {
                stale.push(path);
                continue;
            }
            let Some(seq) = name
                .strip_prefix("snapshot-")
                .and_then(|n| n.strip_suffix(".cps"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            match &newest {
                Some((best, _)) if *best > seq => stale.push(path),
                _ => {
                    if let Some((_, older)) = newest.replace((seq, path)) {
                        stale.push(older);
                    }
                }
            }
        }
        for path in stale {
            fs::remove_file(&path)?;
        }
        let current = match newest {
            Some((seq, path)) => {
                let index = index_of(open_reader(&path)?.meta());
                Some(Current { seq, index, path })
            }
            None => None,
        };
        Ok(SnapshotStore {
            backend: Arc::new(Backend::Dir {
                dir,
                current: Mutex::new(current),
                temp: AtomicU64::new(0),
            }),
        })
    }

    /// Snapshots in memory (tests, the simulation).
    pub fn in_memory() -> SnapshotStore {
        SnapshotStore {
            backend: Arc::new(Backend::Memory(Mutex::new(None))),
        }
    }

    /// Whether calls do file I/O (and belong on a blocking thread).
    pub(crate) fn blocks(&self) -> bool {
        matches!(*self.backend, Backend::Dir { .. })
    }

    fn temp_path(dir: &Path, temp: &AtomicU64) -> PathBuf {
        dir.join(format!("tmp-{}.cps", temp.fetch_add(1, Ordering::Relaxed)))
    }

    /// Starts writing a new snapshot described by `meta`.
    pub fn writer(&self, meta: &Meta) -> io::Result<SnapshotWriter> {
        let out = match &*self.backend {
            Backend::Dir { dir, temp, .. } => {
                let path = Self::temp_path(dir, temp);
                let file = fs::File::create(&path)?;
                Out::File(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file), path)
            }
            Backend::Memory(_) => Out::Memory(Vec::new()),
        };
        SnapshotWriter::new(out, meta)
    }

    /// Finishes a snapshot from [`SnapshotStore::writer`], makes it durable and current (unless
    /// a snapshot of a later entry became current meanwhile), and returns its data.
    pub fn commit(&self, writer: SnapshotWriter) -> io::Result<SnapshotData> {
        let (out, meta) = writer.end()?;
        match out {
            Out::File(file, path) => {
                let file = file.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                // Opened before it is renamed or dropped: the handle reads it either way.
                let data = fs::File::open(&path)?;
                let path = self.make_current(path, index_of(&meta))?;
                Ok(SnapshotData::File {
                    file: tokio::fs::File::from_std(data),
                    path,
                })
            }
            Out::Memory(bytes) => {
                let bytes: Arc<[u8]> = bytes.into();
                self.make_current_memory(bytes.clone(), index_of(&meta))?;
                Ok(SnapshotData::Memory(Cursor::new(bytes.to_vec())))
            }
        }
    }

    /// Renames a finished, fsync'd temporary file to the next snapshot and deletes the one it
    /// supersedes; a file older than the current snapshot is deleted instead.
    fn make_current(&self, temp: PathBuf, index: Option<u64>) -> io::Result<PathBuf> {
        let Backend::Dir { dir, current, .. } = &*self.backend else {
            unreachable!("files only in a directory store");
        };
        let mut current = lock(current);
        if let Some(now) = &*current {
            if now.index > index {
                fs::remove_file(&temp)?;
                return Ok(temp);
            }
        }
        let seq = current.as_ref().map_or(1, |c| c.seq + 1);
        let path = snapshot_file(dir, seq);
        fs::rename(&temp, &path)?;
        sync_dir(dir)?;
        if let Some(old) = current.replace(Current {
            seq,
            index,
            path: path.clone(),
        }) {
            fs::remove_file(&old.path)?;
        }
        Ok(path)
    }

    fn make_current_memory(&self, bytes: Arc<[u8]>, index: Option<u64>) -> io::Result<()> {
        let Backend::Memory(current) = &*self.backend else {
            unreachable!("bytes only in a memory store");
        };
        let mut current = lock(current);
        let newer = match &*current {
            Some(now) => index_of(memory_reader(now.clone())?.meta()) <= index,
            None => true,
        };
        if newer {
            *current = Some(bytes);
        }
        Ok(())
    }

    /// Where openraft writes the chunks of a snapshot it receives.
    pub fn receiver(&self) -> io::Result<SnapshotData> {
        match &*self.backend {
            Backend::Dir { dir, temp, .. } => {
                let path = Self::temp_path(dir, temp);
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                Ok(SnapshotData::File {
                    file: tokio::fs::File::from_std(file),
                    path,
                })
            }
            Backend::Memory(_) => Ok(SnapshotData::Memory(Cursor::new(Vec::new()))),
        }
    }

    /// Makes a received snapshot current once it is durable and checked: every part's
    /// checksum, the framing, and that it holds the snapshot `meta` announces. Returns a reader
    /// of its parts to restore the state machine from.
    pub(crate) fn install(&self, received: Received, meta: &Meta) -> io::Result<SnapshotReader> {
        let check = |reader: SnapshotReader| -> io::Result<()> {
            let inside = reader.meta();
            if inside.last_log_id != meta.last_log_id || inside.snapshot_id != meta.snapshot_id {
                return Err(invalid(format!(
                    "received snapshot holds {} but {} was announced",
                    inside.snapshot_id, meta.snapshot_id
                )));
            }
            reader.verify().map(|_| ())
        };
        match (&*self.backend, received) {
            (Backend::Dir { dir, temp, .. }, received) => {
                let started = std::time::Instant::now();
                let path = match received {
                    // Chunks written into a file of ours: it only needs to be durable.
                    Received::File(file, path) if is_temp_in(dir, &path) => {
                        file.sync_all()?;
                        path
                    }
                    // Anything else (a file elsewhere, bytes) is copied into one of ours.
                    other => {
                        let path = Self::temp_path(dir, temp);
                        let mut out = fs::File::create(&path)?;
                        match other {
                            Received::File(mut file, _) => {
                                use std::io::Seek;
                                file.seek(io::SeekFrom::Start(0))?;
                                io::copy(&mut file, &mut out)?;
                            }
                            Received::Memory(bytes) => out.write_all(&bytes)?,
                        }
                        out.sync_all()?;
                        path
                    }
                };
                let durable = started.elapsed();
                if let Err(e) = open_reader(&path).and_then(check) {
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                let checked = started.elapsed() - durable;
                let reader = open_reader(&path)?;
                self.make_current(path, index_of(meta))?;
                // The steps of a catch-up by snapshot (`coopr-bench catchup` reads this line).
                tracing::info!(
                    snapshot = %meta.snapshot_id,
                    bytes = reader.bytes(),
                    sync_ms = durable.as_millis() as u64,
                    check_ms = checked.as_millis() as u64,
                    "received snapshot durable and checked"
                );
                Ok(reader)
            }
            (Backend::Memory(_), received) => {
                let bytes: Arc<[u8]> = match received {
                    Received::Memory(bytes) => bytes.into(),
                    Received::File(mut file, _) => {
                        use std::io::Seek;
                        file.seek(io::SeekFrom::Start(0))?;
                        let mut bytes = Vec::new();
                        file.read_to_end(&mut bytes)?;
                        bytes.into()
                    }
                };
                check(memory_reader(bytes.clone())?)?;
                self.make_current_memory(bytes.clone(), index_of(meta))?;
                memory_reader(bytes)
            }
        }
    }

    /// The current snapshot's parts, if there is one.
    pub fn open_current(&self) -> io::Result<Option<SnapshotReader>> {
        match &*self.backend {
            // Opened under the lock: a newer snapshot may delete the file right after.
            Backend::Dir { current, .. } => lock(current)
                .as_ref()
                .map(|c| open_reader(&c.path))
                .transpose(),
            Backend::Memory(current) => {
                let current = lock(current).clone();
                current.map(memory_reader).transpose()
            }
        }
    }

    /// The current snapshot's meta and data (to send to a follower), if there is one.
    pub fn current_data(&self) -> io::Result<Option<(Meta, SnapshotData)>> {
        match &*self.backend {
            Backend::Dir { current, .. } => {
                let current = lock(current);
                let Some(current) = current.as_ref() else {
                    return Ok(None);
                };
                let meta = open_reader(&current.path)?.meta().clone();
                let file = fs::File::open(&current.path)?;
                Ok(Some((
                    meta,
                    SnapshotData::File {
                        file: tokio::fs::File::from_std(file),
                        path: current.path.clone(),
                    },
                )))
            }
            Backend::Memory(current) => {
                let Some(bytes) = lock(current).clone() else {
                    return Ok(None);
                };
                let meta = memory_reader(bytes.clone())?.meta().clone();
                Ok(Some((
                    meta,
                    SnapshotData::Memory(Cursor::new(bytes.to_vec())),
                )))
            }
        }
    }

    /// The files of the directory store (current snapshot and temporaries), for tests.
    #[doc(hidden)]
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        let Backend::Dir { dir, .. } = &*self.backend else {
            return Ok(Vec::new());
        };
        let mut files: Vec<PathBuf> = fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        files.sort();
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    use super::*;

    fn meta(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("2-1-{index}"),
        }
    }

    fn write(store: &SnapshotStore, index: u64, parts: &[(u32, &[u8])]) -> SnapshotData {
        let mut writer = store.writer(&meta(index)).unwrap();
        for (id, bytes) in parts {
            writer.part(*id, bytes).unwrap();
        }
        store.commit(writer).unwrap()
    }

    fn read_all(store: &SnapshotStore) -> (Meta, Vec<(u32, Vec<u8>)>) {
        let reader = store.open_current().unwrap().expect("a current snapshot");
        let meta = reader.meta().clone();
        (meta, reader.collect::<io::Result<_>>().unwrap())
    }

    fn bytes_of(data: SnapshotData) -> Vec<u8> {
        match data {
            SnapshotData::Memory(cursor) => cursor.into_inner(),
            SnapshotData::File { path, .. } => fs::read(path).unwrap(),
        }
    }

    #[test]
    fn parts_round_trip_and_a_newer_snapshot_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            SnapshotStore::open(dir.path()).unwrap(),
            SnapshotStore::in_memory(),
        ] {
            assert!(store.open_current().unwrap().is_none());
            write(&store, 5, &[(0, b"zero"), (u32::MAX, b"")]);
            write(&store, 9, &[(1, b"one"), (2, &[7; 100_000])]);
            let (meta, parts) = read_all(&store);
            assert_eq!(meta, self::meta(9));
            let reader = store.open_current().unwrap().unwrap();
            let mut writer = store.writer(&self::meta(9)).unwrap();
            writer.part(1, b"one").unwrap();
            writer.part(2, &[7; 100_000]).unwrap();
            assert_eq!(
                writer.bytes(),
                reader.bytes(),
                "the writer counts what it writes"
            );
            drop(writer);
            assert_eq!(parts, vec![(1, b"one".to_vec()), (2, vec![7; 100_000])]);
            // One file per snapshot: the superseded one is gone.
            if store.blocks() {
                let files = store.files().unwrap();
                assert_eq!(
                    files,
                    vec![dir.path().join("snapshot-0000000000000002.cps")]
                );
            }
            // A snapshot of an earlier entry (built while a later one was installed) does not
            // replace the current one.
            write(&store, 7, &[(3, b"old")]);
            assert_eq!(read_all(&store).0, self::meta(9));
        }
    }

    #[test]
    fn reopening_keeps_the_newest_and_deletes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        write(&store, 3, &[(0, b"a")]);
        // A crash mid-write leaves a temporary file, and one before the delete an older file.
        fs::write(dir.path().join("tmp-0.cps"), b"half").unwrap();
        fs::write(dir.path().join("snapshot-0000000000000000.cps"), b"older").unwrap();
        drop(store);
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(read_all(&store).1, vec![(0, b"a".to_vec())]);
        assert_eq!(
            store.files().unwrap(),
            vec![dir.path().join("snapshot-0000000000000001.cps")]
        );
        write(&store, 4, &[(0, b"b")]);
        assert_eq!(
            store.files().unwrap(),
            vec![dir.path().join("snapshot-0000000000000002.cps")]
        );
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_never_a_panic() {
        let store = SnapshotStore::in_memory();
        let good = bytes_of(write(&store, 4, &[(0, b"zero"), (1, b"one")]));
        let read = |bytes: &[u8]| -> io::Result<u64> {
            let len = bytes.len() as u64;
            SnapshotReader::new(Box::new(Cursor::new(bytes.to_vec())), len)?.verify()
        };
        assert_eq!(read(&good).unwrap(), 2);
        for len in 0..good.len() {
            assert!(read(&good[..len]).is_err(), "cut to {len} bytes");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(read(&longer).is_err());
        // Every flipped byte is caught: by the framing, the meta's JSON or a part's checksum.
        for at in 0..good.len() {
            let mut flipped = good.clone();
            flipped[at] ^= 0x55;
            assert!(read(&flipped).is_err(), "byte {at} flipped");
        }
        // A length far beyond the input is refused before anything is allocated for it.
        let mut huge = good.clone();
        let first_len = good.iter().position(|b| *b == PART).unwrap() + 5;
        huge[first_len..first_len + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(&huge).is_err());
    }

    #[test]
    fn a_received_snapshot_is_checked_against_its_announced_meta() {
        let dir = tempfile::tempdir().unwrap();
        let leader = SnapshotStore::in_memory();
        let data = bytes_of(write(&leader, 8, &[(0, b"state")]));
        let follower = SnapshotStore::open(dir.path()).unwrap();
        let refused = follower
            .install(Received::Memory(data.clone()), &meta(9))
            .err()
            .expect("a snapshot of entry 8 announced as 9");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        assert!(follower.open_current().unwrap().is_none());
        assert!(
            follower.files().unwrap().is_empty(),
            "the refused copy is deleted"
        );
        let mut cut = data.clone();
        cut.pop();
        assert!(follower.install(Received::Memory(cut), &meta(8)).is_err());
        let parts: Vec<_> = follower
            .install(Received::Memory(data), &meta(8))
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(parts, vec![(0, b"state".to_vec())]);
        assert_eq!(read_all(&follower).0, meta(8));
    }
}
