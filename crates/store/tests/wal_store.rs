//! Properties of [`WalStore`] that need the disk: everything survives a reopen, a batch torn
//! by a crash is cut (and only that), damage is reported naming the entry, what an
//! interrupted compaction left is finished, and a second open is refused. The conformance
//! suite (`tests/conformance.rs`) covers the rest; a model test here checks long random runs
//! of calls and reopens against [`MemStore`].

use std::fs;
use std::path::{Path, PathBuf};

use coopr_store::{LogStore, MemStore, Snapshot, StoreError, WalStore};

fn entry(n: u64) -> Vec<u8> {
    format!("entry-{n}").into_bytes()
}

fn open(dir: &Path, segment_bytes: u64) -> (WalStore, coopr_store::Recovery) {
    WalStore::open_with(dir, segment_bytes).expect("open")
}

fn read_all(store: &dyn LogStore) -> Vec<(u64, Vec<u8>)> {
    let first = store.first_index().expect("first_index");
    store.read_from(first, usize::MAX).expect("read_from")
}

/// The segment files of the store in `dir`, in log order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|item| item.expect("item").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Where the records of the last segment end: the file's length up to its trailing zeros.
fn written_len(path: &Path) -> usize {
    let bytes = fs::read(path).expect("read");
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read");
    change(&mut bytes);
    fs::write(path, bytes).expect("write");
}

#[test]
fn reopen_keeps_log_compaction_parts_and_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(dir.path(), 200);
        store
            .append(&(1..=3).map(entry).collect::<Vec<_>>())
            .expect("append");
        for n in 4..=40 {
            store.append(&[entry(n)]).expect("append");
        }
        store.truncate_from(38).expect("truncate_from");
        store
            .install_snapshot_with_meta(
                &Snapshot::at(12, [(0, b"zero@12".to_vec())]),
                &[("raft.last_purged", b"12")],
            )
            .expect("install_snapshot");
        store
            .put_part(u32::MAX, b"global@20", 20)
            .expect("put_part");
        store.save_meta("raft.vote", b"term 3").expect("save_meta");
        assert!(segments(dir.path()).len() > 2, "the log spans segments");
    }
    let (store, recovery) = open(dir.path(), 200);
    assert_eq!(recovery, coopr_store::Recovery::default());
    assert_eq!(store.first_index().unwrap(), 13);
    assert_eq!(store.last_index().unwrap(), 37);
    assert_eq!(
        read_all(&store),
        (13..=37).map(|n| (n, entry(n))).collect::<Vec<_>>()
    );
    let snapshot = store.load_snapshot().unwrap().expect("a snapshot");
    assert_eq!(snapshot.last_index, 12);
    assert_eq!(snapshot.parts[&0].bytes, b"zero@12");
    assert_eq!(snapshot.parts[&u32::MAX].last_index, 20);
    assert_eq!(
        store.load_meta("raft.vote").unwrap().as_deref(),
        Some(&b"term 3"[..])
    );
    assert_eq!(
        store.load_meta("raft.last_purged").unwrap().as_deref(),
        Some(&b"12"[..])
    );
    assert_eq!(store.append(&[entry(38)]).unwrap(), 38);
}

#[test]
fn a_second_open_is_refused_while_the_store_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, _) = open(dir.path(), WalStore::SEGMENT_BYTES);
    assert!(matches!(
        WalStore::open(dir.path()),
        Err(StoreError::Io { .. })
    ));
}

/// Entries of 84 bytes: records of 100 bytes, so a batch's records and the disk's 512-byte
/// sectors do not line up.
fn fixed(n: u64) -> Vec<u8> {
    format!("{n:>84}").into_bytes()
}

/// A crash while a batch was written keeps any set of its sectors from the disk (a sector is
/// written whole or not at all; one that was not still holds what it held before: the end of
/// the previous batch, then zeros). For every prefix of the batch's sectors, and every single
/// missing sector, the log ends right before the first record that lost a byte; every entry
/// before it is there; and appends after the reopen never bring back a byte of the torn batch.
#[test]
fn a_torn_last_batch_is_cut_at_its_first_missing_record() {
    const SECTOR: usize = 512;
    const RECORD: usize = 100;
    let template = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(template.path(), WalStore::SEGMENT_BYTES);
        store
            .append(&(1..=3).map(fixed).collect::<Vec<_>>())
            .expect("append");
    }
    let segment_name = segments(template.path())[0].file_name().unwrap().to_owned();
    let before = fs::read(template.path().join(&segment_name)).unwrap();
    let batch_start = 3 * RECORD;
    assert_eq!(
        written_len(&template.path().join(&segment_name)),
        batch_start
    );
    {
        let (store, _) = open(template.path(), WalStore::SEGMENT_BYTES);
        store
            .append(&(4..=30).map(fixed).collect::<Vec<_>>())
            .expect("append");
    }
    let full = fs::read(template.path().join(&segment_name)).unwrap();
    let batch_end = 30 * RECORD;
    let sectors: Vec<usize> = (batch_start / SECTOR..=(batch_end - 1) / SECTOR).collect();
    let mut cases: Vec<Vec<usize>> = Vec::new();
    for k in 0..sectors.len() {
        cases.push(sectors[k..].to_vec());
        cases.push(vec![sectors[k]]);
    }
    for missing in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::copy(
            template.path().join("wal.state"),
            dir.path().join("wal.state"),
        )
        .unwrap();
        let mut bytes = full.clone();
        for &sector in &missing {
            let range = sector * SECTOR..(sector + 1) * SECTOR;
            bytes[range.clone()].copy_from_slice(&before[range]);
        }
        fs::write(dir.path().join(&segment_name), &bytes).unwrap();
        let first_lost = (missing[0] * SECTOR).max(batch_start);
        let last = (first_lost / RECORD) as u64;

        let (store, recovery) = open(dir.path(), WalStore::SEGMENT_BYTES);
        assert_eq!(
            store.last_index().unwrap(),
            last,
            "sectors {missing:?} missing"
        );
        assert_eq!(
            read_all(&store),
            (1..=last).map(|n| (n, fixed(n))).collect::<Vec<_>>()
        );
        let some_written = missing.len() < sectors.len();
        assert_eq!(
            recovery.torn_tail_bytes > 0,
            some_written,
            "sectors {missing:?} missing"
        );
        // A shorter entry after the cut, then a reopen: nothing of the torn batch comes back.
        store
            .append(&[b"x".to_vec()])
            .expect("append after the cut");
        drop(store);
        let (store, recovery) = open(dir.path(), WalStore::SEGMENT_BYTES);
        assert_eq!(recovery.torn_tail_bytes, 0);
        assert_eq!(store.last_index().unwrap(), last + 1);
        assert_eq!(
            store.read_from(last + 1, 10).unwrap(),
            vec![(last + 1, b"x".to_vec())]
        );
    }
}

/// A sector of the last batch that never reached the disk (zeros) while a later one did: the
/// batch is torn, cut at its first record that spans the missing sector.
#[test]
fn a_missing_sector_inside_the_last_batch_is_a_torn_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = |n: u64| vec![b'a' + n as u8; 300];
    let batch_start;
    {
        let (store, _) = open(dir.path(), WalStore::SEGMENT_BYTES);
        store.append(&[big(1)]).expect("append");
        batch_start = written_len(&segments(dir.path())[0]);
        store
            .append(&(2..=6).map(big).collect::<Vec<_>>())
            .expect("append");
    }
    let path = segments(dir.path())[0].clone();
    // Sector 1 (bytes 512..1024) lies inside entry 2 or 3; entries 4.. are written.
    rewrite(&path, |bytes| bytes[512..1024].fill(0));
    let (store, recovery) = open(dir.path(), WalStore::SEGMENT_BYTES);
    assert!(recovery.torn_tail_bytes > 0);
    let last = store.last_index().unwrap();
    assert!(last < 4, "cut before the missing sector, at {last}");
    assert!(batch_start < 512);
    assert_eq!(
        read_all(&store),
        (1..=last).map(|n| (n, big(n))).collect::<Vec<_>>()
    );
}

/// A flipped byte in a record that is all there is damage, not a torn write: opening fails
/// naming the entry, in the last segment as in any other.
#[test]
fn a_flipped_byte_is_reported_not_cut() {
    for segment_bytes in [WalStore::SEGMENT_BYTES, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, _) = open(dir.path(), segment_bytes);
            for n in 1..=6 {
                store.append(&[entry(n)]).expect("append");
            }
        }
        let paths = segments(dir.path());
        // The record of entry 1 in the first segment (which is the last one when the log
        // has a single segment).
        rewrite(&paths[0], |bytes| bytes[20] ^= 0x01);
        assert!(
            matches!(
                WalStore::open_with(dir.path(), segment_bytes),
                Err(StoreError::Corrupt { index: 1 })
            ),
            "{} segments",
            paths.len()
        );
    }
}

/// Bytes after the last record of a segment that is not the last one cannot be a torn batch
/// (only the last segment is written to): they are damage, reported at open.
#[test]
fn bytes_after_the_records_of_an_earlier_segment_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(dir.path(), 64);
        for n in 1..=6 {
            store.append(&[entry(n)]).expect("append");
        }
    }
    let paths = segments(dir.path());
    assert!(paths.len() >= 2);
    let end = written_len(&paths[0]);
    rewrite(&paths[0], |bytes| bytes[end + 20] = 0xFF);
    assert!(matches!(
        WalStore::open_with(dir.path(), 64),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn damaged_or_missing_state_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(dir.path(), 64);
        store
            .append(&(1..=4).map(entry).collect::<Vec<_>>())
            .expect("append");
        store.save_meta("raft.vote", b"v").expect("save_meta");
    }
    let state = dir.path().join("wal.state");
    let saved = fs::read(&state).unwrap();
    rewrite(&state, |bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
    });
    assert!(matches!(
        WalStore::open(dir.path()),
        Err(StoreError::CorruptMetadata {
            key: "wal.state",
            ..
        })
    ));
    fs::remove_file(&state).unwrap();
    assert!(matches!(
        WalStore::open(dir.path()),
        Err(StoreError::CorruptMetadata {
            key: "wal.state",
            ..
        })
    ));
    fs::write(&state, saved).unwrap();
    let (store, _) = open(dir.path(), 64);
    assert_eq!(store.last_index().unwrap(), 4);
}

/// A segment missing from the middle of the log is a hole: opening fails.
#[test]
fn a_missing_segment_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(dir.path(), 64);
        for n in 1..=12 {
            store.append(&[entry(n)]).expect("append");
        }
    }
    let paths = segments(dir.path());
    assert!(paths.len() >= 3);
    fs::remove_file(&paths[1]).unwrap();
    assert!(matches!(
        WalStore::open_with(dir.path(), 64),
        Err(StoreError::CorruptMetadata {
            key: "segments",
            ..
        })
    ));
}

/// A compaction that recorded its new point and crashed before deleting the segments below
/// it: opening deletes them.
#[test]
fn an_interrupted_compaction_is_finished_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_segment;
    let kept_bytes;
    {
        let (store, _) = open(dir.path(), 64);
        for n in 1..=12 {
            store.append(&[entry(n)]).expect("append");
        }
        first_segment = segments(dir.path())[0].clone();
        kept_bytes = fs::read(&first_segment).unwrap();
        store.compact_through(10).expect("compact_through");
        assert!(!first_segment.exists());
    }
    fs::write(&first_segment, kept_bytes).unwrap();
    let (store, recovery) = open(dir.path(), 64);
    assert_eq!(recovery.leftover_segments, 1);
    assert!(!first_segment.exists());
    assert_eq!(store.first_index().unwrap(), 11);
    assert_eq!(read_all(&store), vec![(11, entry(11)), (12, entry(12))]);
}

/// A tiny deterministic generator (xorshift), so a failing run is replayed by its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Entries appended unsynced are readable before their flush, across a segment change, and
/// after the flush and a reopen; a durable append after them keeps them.
#[test]
fn unsynced_appends_are_readable_at_once_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), 64);
    let mut expected = Vec::new();
    for n in 1..=12u64 {
        assert_eq!(store.append_unsynced(&[entry(n)]).expect("append"), n);
        expected.push((n, entry(n)));
        assert_eq!(read_all(&store), expected, "before the flush of entry {n}");
        if n % 5 == 0 {
            store.sync().expect("sync");
        }
    }
    assert!(segments(dir.path()).len() > 2, "the entries span segments");
    store.append(&[entry(13)]).expect("append");
    expected.push((13, entry(13)));
    store.append_unsynced(&[entry(14)]).expect("append");
    store.sync().expect("sync");
    store.sync().expect("a flush with nothing to flush");
    expected.push((14, entry(14)));
    drop(store);
    let (store, recovery) = open(dir.path(), 64);
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(read_all(&store), expected);
}

/// Long random runs of every call (appends durable or unsynced), with reopens, agree with [`MemStore`] after every step.
#[test]
fn random_calls_and_reopens_match_the_memory_store() {
    for seed in 1..=5u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let model = MemStore::new();
        let (mut store, _) = open(dir.path(), 96 + rng.below(200));
        let mut counter = 0u64;
        for step in 0..200 {
            let last = model.last_index().unwrap();
            let first = model.first_index().unwrap();
            let choice = rng.below(100);
            let context = format!("seed {seed} step {step} choice {choice}");
            match choice {
                0..=49 => {
                    let batch: Vec<Vec<u8>> = (0..1 + rng.below(4))
                        .map(|_| {
                            counter += 1;
                            vec![b'a' + (counter % 26) as u8; rng.below(120) as usize]
                        })
                        .collect();
                    // Half the batches as a Raft leader appends its own (readable at once,
                    // flushed by a later `sync` or durable call).
                    let appended = if rng.below(2) == 0 {
                        store.append(&batch).unwrap()
                    } else {
                        store.append_unsynced(&batch).unwrap()
                    };
                    assert_eq!(appended, model.append(&batch).unwrap());
                    if rng.below(3) == 0 {
                        store.sync().unwrap();
                    }
                }
                50..=64 => {
                    let from = first + rng.below(last + 3 - first);
                    assert_eq!(
                        store.truncate_from(from).is_ok(),
                        model.truncate_from(from).is_ok(),
                        "{context}"
                    );
                }
                65..=74 => {
                    let through = first.saturating_sub(1) + rng.below(last + 4 - first + 1);
                    let snapshot = Snapshot::at(through, [(rng.below(3) as u32, vec![7; 5])]);
                    let meta: &[(&str, &[u8])] = &[("purged", b"p")];
                    assert_eq!(
                        store.install_snapshot_with_meta(&snapshot, meta).is_ok(),
                        model.install_snapshot_with_meta(&snapshot, meta).is_ok(),
                        "{context}"
                    );
                }
                75..=82 => {
                    let through = first.saturating_sub(1) + rng.below(last + 2 - first + 1);
                    assert_eq!(
                        store.compact_through(through).is_ok(),
                        model.compact_through(through).is_ok(),
                        "{context}"
                    );
                }
                83..=89 => {
                    let value = rng.below(1000).to_string().into_bytes();
                    store.save_meta("vote", &value).unwrap();
                    model.save_meta("vote", &value).unwrap();
                }
                _ => {
                    drop(store);
                    let (reopened, recovery) = open(dir.path(), 96 + rng.below(200));
                    assert_eq!(recovery.torn_tail_bytes, 0, "{context}");
                    store = reopened;
                }
            }
            assert_eq!(
                store.last_index().unwrap(),
                model.last_index().unwrap(),
                "{context}"
            );
            assert_eq!(
                store.first_index().unwrap(),
                model.first_index().unwrap(),
                "{context}"
            );
            assert_eq!(read_all(&store), read_all(&model), "{context}");
            assert_eq!(
                store.load_snapshot().unwrap(),
                model.load_snapshot().unwrap()
            );
            assert_eq!(
                store.load_meta("vote").unwrap(),
                model.load_meta("vote").unwrap()
            );
        }
    }
}
