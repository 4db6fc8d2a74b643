//! Properties of [`RedbStore`] that need the disk: everything survives a restart, damaged
//! bytes are reported as errors naming the damaged item, and a second open is refused.
//! (Concurrent appends are covered by `conformance::concurrent_appends_gap_free`, which
//! `tests/conformance.rs` runs against `RedbStore`.)

use std::path::Path;

use coopr_store::{tables, LogStore, RedbStore, Snapshot, StoreError};
use redb::{Database, ReadableTable, TableDefinition};

fn entry(n: u64) -> Vec<u8> {
    format!("entry-{n}").into_bytes()
}

/// Rewrites one raw value in `table` of the closed store at `path`, bypassing the store.
fn damage<K: redb::Key + 'static>(
    path: &Path,
    table: TableDefinition<K, &[u8]>,
    key: K::SelfType<'_>,
    change: impl FnOnce(&mut Vec<u8>),
) {
    let db = Database::create(path).expect("open raw database");
    let txn = db.begin_write().expect("begin_write");
    {
        let mut table = txn.open_table(table).expect("open_table");
        let mut value = table
            .get(&key)
            .expect("get")
            .expect("value to damage exists")
            .value()
            .to_vec();
        change(&mut value);
        table.insert(&key, value.as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
}

/// Log, compaction point and parts written before a drop are all there after reopening, and
/// appends continue where they left off.
#[test]
fn reopen_after_drop_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let snapshot = {
        let store = RedbStore::open(&path).expect("open");
        store
            .append(&(1..=20).map(entry).collect::<Vec<_>>())
            .expect("append");
        store.append(&[entry(21)]).expect("append");
        store.truncate_from(21).expect("truncate_from");
        store
            .install_snapshot(&Snapshot::at(5, [(0, b"zero@5".to_vec())]))
            .expect("install_snapshot");
        store
            .put_part(u32::MAX, b"global@12", 12)
            .expect("put_part");
        store.save_meta("vote", b"term 3").expect("save_meta");
        store.load_snapshot().expect("load_snapshot")
    };

    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.first_index().unwrap(), 6);
    assert_eq!(store.last_index().unwrap(), 20);
    assert_eq!(
        store.read_from(6, 100).unwrap(),
        (6..=20).map(|n| (n, entry(n))).collect::<Vec<_>>()
    );
    assert_eq!(store.load_snapshot().unwrap(), snapshot);
    assert_eq!(snapshot.unwrap().parts[&u32::MAX].last_index, 12);
    assert_eq!(
        store.load_meta("vote").unwrap().as_deref(),
        Some(&b"term 3"[..])
    );
    assert_eq!(store.append(&[entry(21)]).unwrap(), 21);
}

/// A second handle on an open store is refused with an error (redb locks the file), so two
/// writers can never interleave appends.
#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let _store = RedbStore::open(&path).expect("open");
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::Database(_))
    ));
}

/// A flipped byte in a stored entry is reported as `Corrupt { index }` of that entry; the
/// entries before it still read, and nothing panics.
#[test]
fn flipped_byte_in_entry_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    RedbStore::open(&path)
        .expect("open")
        .append(&(1..=5).map(entry).collect::<Vec<_>>())
        .expect("append");
    damage(&path, tables::LOG, 3, |value| {
        let last = value.len() - 1;
        value[last] ^= 0x01;
    });

    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.read_from(1, 2).unwrap().len(), 2);
    assert!(matches!(
        store.read_from(1, 10),
        Err(StoreError::Corrupt { index: 3 })
    ));
    assert!(matches!(
        store.read_from(3, 1),
        Err(StoreError::Corrupt { index: 3 })
    ));
    assert_eq!(store.read_from(4, 10).unwrap().len(), 2);
}

/// A value cut shorter than its checksum is `Corrupt`, not a panic on slicing.
#[test]
fn truncated_entry_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    RedbStore::open(&path).unwrap().append(&[entry(1)]).unwrap();
    damage(&path, tables::LOG, 1, |value| value.truncate(2));
    let store = RedbStore::open(&path).expect("reopen");
    assert!(matches!(
        store.read_from(1, 1),
        Err(StoreError::Corrupt { index: 1 })
    ));
}

/// A flipped byte in a snapshot part (here in its last_index header) is `CorruptPart`.
#[test]
fn flipped_byte_in_part_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    RedbStore::open(&path)
        .unwrap()
        .put_part(7, b"shard seven", 0)
        .unwrap();
    damage(&path, tables::SNAPSHOT_PARTS, 7, |value| value[5] ^= 0x80);
    let store = RedbStore::open(&path).expect("reopen");
    assert!(matches!(
        store.load_snapshot(),
        Err(StoreError::CorruptPart { part: 7 })
    ));
}

/// Unreadable metadata, or metadata that disagrees with the log, makes `open` fail with
/// `CorruptMetadata` instead of serving a log with a hole in it.
#[test]
fn bad_metadata_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        store
            .append(&(1..=4).map(entry).collect::<Vec<_>>())
            .unwrap();
        store.compact_through(2).unwrap();
    }
    damage(
        &path,
        tables::META,
        tables::COMPACTED_THROUGH_KEY,
        |value| value[0] = 1,
    );
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::CorruptMetadata {
            key: "compacted_through",
            ..
        })
    ));
    damage(
        &path,
        tables::META,
        tables::COMPACTED_THROUGH_KEY,
        |value| value.truncate(3),
    );
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::CorruptMetadata {
            key: "compacted_through",
            ..
        })
    ));
    damage(&path, tables::META, tables::FORMAT_VERSION_KEY, |value| {
        value[0] = 99
    });
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::CorruptMetadata {
            key: "format_version",
            ..
        })
    ));
}

/// The snapshot store does not grow without bound: installing one snapshot after another (as a
/// DC log does every `snapshot_every` entries), each as large as the last but with other bytes,
/// keeps the file within a small multiple of one snapshot, and it stops growing after the
/// second. redb reuses the pages a replaced snapshot freed once no reader holds them; the file
/// needs room for the old and the new snapshot while one replaces the other, in regions that
/// redb sizes in powers of two (measured: 4.3 times a 4 MiB snapshot, reached at the second
/// install; the file is never compacted, so it keeps its largest size).
#[test]
fn repeated_snapshots_keep_the_file_bounded() {
    const PART_BYTES: usize = 256 * 1024;
    const PARTS: u32 = 16; // 4 MiB a snapshot
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft-snapshot.redb");
    let store = RedbStore::open(&path).expect("open");
    let snapshot_bytes = (PART_BYTES * PARTS as usize) as u64;
    let mut sizes = Vec::new();
    for round in 0..30u64 {
        let parts = (0..PARTS).map(|part| {
            let seed = round * 1_000 + u64::from(part);
            let bytes: Vec<u8> = (0..PART_BYTES)
                .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
                .collect();
            (part, bytes)
        });
        store
            .install_snapshot(&Snapshot::at(round * 100 + 1, parts))
            .expect("install_snapshot");
        sizes.push(std::fs::metadata(&path).expect("metadata").len());
    }
    let largest = *sizes.iter().max().expect("sizes");
    assert!(
        largest <= 5 * snapshot_bytes,
        "the file grew to {largest} bytes for {snapshot_bytes}-byte snapshots: {sizes:?}"
    );
    // And it stopped growing: the last 27 installs took no more room than the first three.
    let early = sizes[..3].iter().max().copied().unwrap_or(0);
    assert!(
        sizes[3..].iter().all(|s| *s <= early),
        "still growing: {sizes:?}"
    );
}
