//! The conformance suite every [`LogStore`] implementation must pass.
//!
//! Each check takes a factory that returns a fresh, empty store, and panics (like a test
//! assertion) when the store misbehaves. Run them all with [`run_all`], or one at a time from
//! separate `#[test]`s so a failure names the property:
//!
//! ```no_run
//! use coopr_store::{conformance, LogStore, MemStore};
//! conformance::run_all(&|| Box::new(MemStore::new()) as Box<dyn LogStore>);
//! ```
//!
//! Properties that need a crash or a restart (durability, corruption on disk) depend on the
//! implementation and are tested next to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{LogIndex, LogStore, Snapshot, SnapshotPart, StoreError};

/// Returns a fresh, empty store on every call.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn LogStore>;

/// One property check: panics if the stores from the factory violate it.
pub type Check = fn(Factory<'_>);

/// Every check in this module with its name, in order.
pub const ALL: &[(&str, Check)] = &[
    ("empty_store", empty_store),
    ("append_and_read_in_order", append_and_read_in_order),
    ("empty_batch_is_noop", empty_batch_is_noop),
    ("read_from_bounds", read_from_bounds),
    ("truncate_from_drops_suffix", truncate_from_drops_suffix),
    ("install_snapshot_compacts", install_snapshot_compacts),
    ("install_snapshot_beyond_log", install_snapshot_beyond_log),
    ("install_snapshot_refusals", install_snapshot_refusals),
    ("put_part_and_drop_part", put_part_and_drop_part),
    ("compact_through_after_parts", compact_through_after_parts),
    ("large_entries", large_entries),
    ("many_small_entries", many_small_entries),
    ("concurrent_appends_gap_free", concurrent_appends_gap_free),
    ("meta_values", meta_values),
    ("install_snapshot_with_meta", install_snapshot_with_meta),
];

/// Runs every check in [`ALL`], each on fresh stores.
pub fn run_all(factory: Factory<'_>) {
    for (name, check) in ALL {
        eprintln!("conformance: {name}");
        check(factory);
    }
}

fn entry(n: u64) -> Vec<u8> {
    format!("entry-{n}").into_bytes()
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    range.map(entry).collect()
}

/// Reads everything from `from` to the end, page by page.
fn read_all(store: &dyn LogStore, from: LogIndex) -> Vec<(LogIndex, Vec<u8>)> {
    let mut all = Vec::new();
    let mut next = from;
    loop {
        let page = store.read_from(next, 100).expect("read_from");
        let Some(&(last, _)) = page.last() else {
            return all;
        };
        assert!(page.len() <= 100, "read_from returned more than max");
        next = last + 1;
        all.extend(page);
    }
}

fn assert_bounds(store: &dyn LogStore, first: LogIndex, last: LogIndex) {
    assert_eq!(
        store.first_index().expect("first_index"),
        first,
        "first_index"
    );
    assert_eq!(store.last_index().expect("last_index"), last, "last_index");
}

/// A new store has no entries and no snapshot; reads return nothing.
pub fn empty_store(factory: Factory<'_>) {
    let store = factory();
    assert_bounds(&*store, 1, 0);
    assert!(store.read_from(0, 10).expect("read_from 0").is_empty());
    assert!(store.read_from(1, 10).expect("read_from 1").is_empty());
    assert!(store.load_snapshot().expect("load_snapshot").is_none());
    store
        .drop_part(3)
        .expect("dropping a missing part is a no-op");
    store
        .truncate_from(1)
        .expect("truncating an empty log is a no-op");
    store
        .compact_through(0)
        .expect("compacting through 0 is a no-op");
    assert_bounds(&*store, 1, 0);
}

/// Single appends and batches are numbered consecutively from 1, `append` returns the last
/// index of its batch, and reads return the entries in order with their indices.
pub fn append_and_read_in_order(factory: Factory<'_>) {
    let store = factory();
    assert_eq!(store.append(&[entry(1)]).expect("append"), 1);
    assert_eq!(store.append(&entries(2..=5)).expect("append batch"), 5);
    assert_eq!(store.append(&[entry(6)]).expect("append"), 6);
    assert_bounds(&*store, 1, 6);
    let expected: Vec<_> = (1..=6).map(|n| (n, entry(n))).collect();
    assert_eq!(store.read_from(1, 100).expect("read_from"), expected);
    assert_eq!(
        store.read_from(0, 100).expect("read_from 0"),
        expected,
        "from = 0 reads from the start"
    );
    assert_eq!(store.read_from(3, 2).expect("read_from"), expected[2..4]);
    assert_eq!(store.read_from(6, 100).expect("read_from"), expected[5..]);
    // An empty entry is a valid entry.
    assert_eq!(store.append(&[Vec::new()]).expect("append empty entry"), 7);
    assert_eq!(
        store.read_from(7, 1).expect("read_from"),
        vec![(7, Vec::new())]
    );
}

/// Appending no entries writes nothing and returns the current last index.
pub fn empty_batch_is_noop(factory: Factory<'_>) {
    let store = factory();
    assert_eq!(store.append(&[]).expect("append nothing"), 0);
    store.append(&entries(1..=3)).expect("append");
    assert_eq!(store.append(&[]).expect("append nothing"), 3);
    assert_bounds(&*store, 1, 3);
}

/// Reads beyond the end return nothing, `max` bounds the result, `max = 0` returns nothing.
pub fn read_from_bounds(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=10)).expect("append");
    assert!(store.read_from(11, 5).expect("read_from at end").is_empty());
    assert!(store.read_from(1000, 5).expect("read_from far").is_empty());
    assert!(store
        .read_from(LogIndex::MAX, 5)
        .expect("read_from max")
        .is_empty());
    assert!(store.read_from(1, 0).expect("read_from max=0").is_empty());
    let tail = store.read_from(8, 100).expect("read_from tail");
    assert_eq!(
        tail.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(store.read_from(1, 4).expect("read_from").len(), 4);
}

/// `truncate_from` drops a suffix, the next append reuses the indices, and truncating into
/// the compacted range is refused.
pub fn truncate_from_drops_suffix(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=10)).expect("append");
    store.truncate_from(20).expect("truncate beyond the end");
    assert_bounds(&*store, 1, 10);
    store.truncate_from(7).expect("truncate");
    assert_bounds(&*store, 1, 6);
    assert_eq!(store.append(&[b"new-7".to_vec()]).expect("append"), 7);
    assert_eq!(
        store.read_from(6, 10).expect("read_from"),
        vec![(6, entry(6)), (7, b"new-7".to_vec())]
    );
    store
        .install_snapshot(&Snapshot::at(3, []))
        .expect("install_snapshot");
    assert!(matches!(
        store.truncate_from(3),
        Err(StoreError::Compacted {
            index: 3,
            first_index: 4
        })
    ));
    store.truncate_from(4).expect("truncate everything left");
    assert_bounds(&*store, 4, 3);
    assert_eq!(store.append(&[entry(4)]).expect("append"), 4);
}

/// `install_snapshot` replaces all parts, drops entries <= its index, keeps the later ones,
/// and reads into the compacted range are refused with `Compacted`.
pub fn install_snapshot_compacts(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=10)).expect("append");
    store.put_part(9, b"old part", 2).expect("put_part");
    let snapshot = Snapshot::at(6, [(0, b"zero".to_vec()), (u32::MAX, b"global".to_vec())]);
    store.install_snapshot(&snapshot).expect("install_snapshot");

    assert_eq!(
        store.load_snapshot().expect("load_snapshot"),
        Some(snapshot.clone()),
        "parts are replaced, not merged"
    );
    assert_bounds(&*store, 7, 10);
    let rest = read_all(&*store, 7);
    assert_eq!(rest, (7..=10).map(|n| (n, entry(n))).collect::<Vec<_>>());
    for from in [0, 1, 6] {
        assert!(
            matches!(
                store.read_from(from, 10),
                Err(StoreError::Compacted { first_index: 7, .. })
            ),
            "read_from({from}) after compaction"
        );
    }
    assert_eq!(store.append(&[entry(11)]).expect("append"), 11);

    // Installing again at the same index is allowed (a re-sent snapshot).
    store.install_snapshot(&snapshot).expect("install again");
    assert_bounds(&*store, 7, 11);
}

/// A snapshot beyond the end of the log (a lagging follower catching up) empties the log and
/// the next append continues after the snapshot.
pub fn install_snapshot_beyond_log(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=3)).expect("append");
    store
        .install_snapshot(&Snapshot::at(50, [(1, b"state".to_vec())]))
        .expect("install_snapshot");
    assert_bounds(&*store, 51, 50);
    assert!(store.read_from(51, 10).expect("read_from").is_empty());
    assert_eq!(store.append(&[entry(51)]).expect("append"), 51);
    assert_eq!(
        store.read_from(51, 10).expect("read_from"),
        vec![(51, entry(51))]
    );

    // Also on a store that never had entries.
    let store = factory();
    store
        .install_snapshot(&Snapshot::at(5, []))
        .expect("install_snapshot");
    assert_bounds(&*store, 6, 5);
    assert_eq!(
        store.load_snapshot().expect("load_snapshot"),
        Some(Snapshot::at(5, []))
    );
    assert_eq!(store.append(&entries(6..=7)).expect("append"), 7);
}

/// Older snapshots and parts that do not cover the snapshot's index are refused and change
/// nothing.
pub fn install_snapshot_refusals(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=10)).expect("append");
    let current = Snapshot::at(5, [(1, b"one".to_vec())]);
    store.install_snapshot(&current).expect("install_snapshot");

    let older = Snapshot::at(4, [(1, b"older".to_vec())]);
    assert!(matches!(
        store.install_snapshot(&older),
        Err(StoreError::StaleSnapshot {
            last_index: 4,
            current_last_index: 5
        })
    ));
    let mut lagging = Snapshot::at(8, [(1, b"fresh".to_vec())]);
    lagging.parts.insert(
        2,
        SnapshotPart {
            last_index: 7,
            bytes: b"lagging".to_vec(),
        },
    );
    assert!(matches!(
        store.install_snapshot(&lagging),
        Err(StoreError::StalePart {
            part: 2,
            part_last_index: 7,
            required_index: 8
        })
    ));
    assert_eq!(store.load_snapshot().expect("load_snapshot"), Some(current));
    assert_bounds(&*store, 6, 10);

    // A part may cover more than the snapshot's index (it was snapshotted later).
    let mut ahead = Snapshot::at(8, [(1, b"fresh".to_vec())]);
    ahead.parts.insert(
        2,
        SnapshotPart {
            last_index: 10,
            bytes: b"ahead".to_vec(),
        },
    );
    store.install_snapshot(&ahead).expect("install_snapshot");
    assert_eq!(store.load_snapshot().expect("load_snapshot"), Some(ahead));
}

/// `put_part` adds or replaces one part with its own index without touching the others or the
/// log; `drop_part` removes one; a part older than the compaction point is refused.
pub fn put_part_and_drop_part(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=10)).expect("append");
    store.put_part(1, b"one@3", 3).expect("put_part");
    store.put_part(u32::MAX, b"global@4", 4).expect("put_part");
    store.put_part(2, &[], 5).expect("put an empty part");
    assert_bounds(&*store, 1, 10);

    let part = |last_index, bytes: &[u8]| SnapshotPart {
        last_index,
        bytes: bytes.to_vec(),
    };
    let snapshot = store
        .load_snapshot()
        .expect("load_snapshot")
        .expect("parts exist");
    assert_eq!(snapshot.last_index, 0, "put_part does not compact");
    assert_eq!(
        snapshot.parts,
        BTreeMap::from([
            (1, part(3, b"one@3")),
            (2, part(5, b"")),
            (u32::MAX, part(4, b"global@4")),
        ])
    );

    store.put_part(1, b"one@9", 9).expect("replace part");
    store.drop_part(u32::MAX).expect("drop_part");
    store.drop_part(u32::MAX).expect("drop_part twice");
    let snapshot = store
        .load_snapshot()
        .expect("load_snapshot")
        .expect("parts exist");
    assert_eq!(
        snapshot.parts,
        BTreeMap::from([(1, part(9, b"one@9")), (2, part(5, b""))])
    );

    store.drop_part(1).expect("drop_part");
    store.drop_part(2).expect("drop_part");
    assert_eq!(store.load_snapshot().expect("load_snapshot"), None);

    store
        .install_snapshot(&Snapshot::at(6, [(1, b"one@6".to_vec())]))
        .expect("install_snapshot");
    assert!(matches!(
        store.put_part(2, b"two@5", 5),
        Err(StoreError::StalePart {
            part: 2,
            part_last_index: 5,
            required_index: 6
        })
    ));
    store
        .put_part(2, b"two@6", 6)
        .expect("put_part at the compaction point");
    store.drop_part(1).expect("drop_part");
    store.drop_part(2).expect("drop_part");
    assert_eq!(
        store.load_snapshot().expect("load_snapshot"),
        Some(Snapshot::at(6, [])),
        "a compacted store keeps its snapshot index with no parts"
    );
}

/// Shards snapshotted one at a time: once every part covers an index, `compact_through` drops
/// the log up to it; it refuses to outrun a part or the end of the log.
pub fn compact_through_after_parts(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=10)).expect("append");
    store.put_part(1, b"one@4", 4).expect("put_part");
    store.put_part(2, b"two@7", 7).expect("put_part");

    assert!(matches!(
        store.compact_through(5),
        Err(StoreError::StalePart {
            part: 1,
            part_last_index: 4,
            required_index: 5
        })
    ));
    assert_bounds(&*store, 1, 10);
    store.compact_through(4).expect("compact_through");
    assert_bounds(&*store, 5, 10);
    assert_eq!(read_all(&*store, 5).len(), 6);
    assert!(matches!(
        store.read_from(4, 1),
        Err(StoreError::Compacted {
            index: 4,
            first_index: 5
        })
    ));
    store
        .compact_through(2)
        .expect("compacting backwards is a no-op");
    assert_bounds(&*store, 5, 10);

    store.drop_part(1).expect("drop_part");
    store.drop_part(2).expect("drop_part");
    assert!(matches!(
        store.compact_through(11),
        Err(StoreError::BeyondLastIndex {
            index: 11,
            last_index: 10
        })
    ));
    store.compact_through(10).expect("compact everything");
    assert_bounds(&*store, 11, 10);
    assert_eq!(
        store.load_snapshot().expect("load_snapshot"),
        Some(Snapshot::at(10, []))
    );
    assert_eq!(store.append(&[entry(11)]).expect("append"), 11);
}

/// 1 MiB entries and parts round-trip intact, alone and in a batch.
pub fn large_entries(factory: Factory<'_>) {
    const MIB: usize = 1 << 20;
    let store = factory();
    let big = |seed: u8| -> Vec<u8> {
        (0..MIB)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    assert_eq!(store.append(&[big(1)]).expect("append 1 MiB"), 1);
    assert_eq!(
        store
            .append(&[big(2), b"small".to_vec(), big(3)])
            .expect("append batch"),
        4
    );
    let read = store.read_from(1, 10).expect("read_from");
    assert_eq!(read.len(), 4);
    assert!(read[0].1 == big(1) && read[2].1 == b"small" && read[3].1 == big(3));
    assert!(read[1].1 == big(2), "entry 2 round-trips");

    store.put_part(0, &big(4), 4).expect("put 1 MiB part");
    let snapshot = store
        .load_snapshot()
        .expect("load_snapshot")
        .expect("part exists");
    assert!(snapshot.parts[&0].bytes == big(4), "1 MiB part round-trips");
}

/// Thousands of small entries appended in batches are all read back in order, page by page.
pub fn many_small_entries(factory: Factory<'_>) {
    const BATCHES: u64 = 100;
    const BATCH_LEN: u64 = 50;
    let store = factory();
    for batch in 0..BATCHES {
        let first = batch * BATCH_LEN + 1;
        let last = first + BATCH_LEN - 1;
        assert_eq!(store.append(&entries(first..=last)).expect("append"), last);
    }
    let total = BATCHES * BATCH_LEN;
    assert_bounds(&*store, 1, total);
    let all = read_all(&*store, 1);
    assert_eq!(all.len() as u64, total);
    for (position, (index, bytes)) in all.iter().enumerate() {
        let expected = position as u64 + 1;
        assert_eq!(*index, expected);
        assert_eq!(*bytes, entry(expected));
    }
}

/// Appends from several threads at once produce one gap-free sequence: every index from 1 to
/// the total is used exactly once, each append's returned index holds its own entry, and each
/// thread's entries appear in the order it appended them.
pub fn concurrent_appends_gap_free(factory: Factory<'_>) {
    const THREADS: u64 = 4;
    const APPENDS_PER_THREAD: u64 = 25;
    let store: Arc<dyn LogStore> = Arc::from(factory());
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..APPENDS_PER_THREAD)
                    .map(|seq| {
                        // Alternate single entries and pairs to mix batch sizes.
                        let batch: Vec<Vec<u8>> = (0..1 + seq % 2)
                            .map(|k| format!("{thread}:{seq}:{k}").into_bytes())
                            .collect();
                        let last = store.append(&batch).expect("concurrent append");
                        (last, batch)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    let mut expected = BTreeMap::new();
    for handle in handles {
        let mut previous_last = 0;
        for (last, batch) in handle.join().expect("appending thread panicked") {
            assert!(last > previous_last, "a thread's appends go forward");
            previous_last = last;
            let first = last + 1 - batch.len() as u64;
            for (index, bytes) in (first..=last).zip(batch) {
                assert!(
                    expected.insert(index, bytes).is_none(),
                    "index {index} given twice"
                );
            }
        }
    }
    let all = read_all(&*store, 1);
    assert_eq!(all, expected.into_iter().collect::<Vec<_>>());
    let total = all.len() as u64;
    let entries_per_thread: u64 = (0..APPENDS_PER_THREAD).map(|seq| 1 + seq % 2).sum();
    assert_eq!(total, THREADS * entries_per_thread);
    assert_bounds(&*store, 1, total);
}

/// `save_meta` stores, replaces and returns named values; compaction and truncation keep them.
pub fn meta_values(factory: Factory<'_>) {
    let store = factory();
    assert_eq!(store.load_meta("vote").expect("load_meta"), None);
    store.save_meta("vote", b"term 1").expect("save_meta");
    store.save_meta("committed", b"").expect("save empty value");
    assert_eq!(
        store.load_meta("vote").expect("load_meta").as_deref(),
        Some(&b"term 1"[..])
    );
    assert_eq!(
        store.load_meta("committed").expect("load_meta"),
        Some(Vec::new())
    );
    store.save_meta("vote", b"term 2").expect("replace");
    assert_eq!(
        store.load_meta("vote").expect("load_meta").as_deref(),
        Some(&b"term 2"[..])
    );

    store.append(&entries(1..=5)).expect("append");
    store.truncate_from(4).expect("truncate_from");
    store.compact_through(2).expect("compact_through");
    store
        .install_snapshot(&Snapshot::at(3, []))
        .expect("install_snapshot");
    assert_eq!(
        store.load_meta("vote").expect("load_meta").as_deref(),
        Some(&b"term 2"[..])
    );
    assert_eq!(store.load_meta("other").expect("load_meta"), None);
}

/// `install_snapshot_with_meta` installs the snapshot and sets the values together; when the
/// snapshot is refused, the values are not changed either.
pub fn install_snapshot_with_meta(factory: Factory<'_>) {
    let store = factory();
    store.append(&entries(1..=4)).expect("append");
    store.save_meta("keep", b"k").expect("save_meta");
    let snapshot = Snapshot::at(3, [(0, b"zero".to_vec())]);
    store
        .install_snapshot_with_meta(&snapshot, &[("snapshot", b"at 3"), ("other", b"o")])
        .expect("install_snapshot_with_meta");
    assert_eq!(
        store.load_snapshot().expect("load_snapshot"),
        Some(snapshot)
    );
    assert_bounds(&*store, 4, 4);
    assert_eq!(
        store.load_meta("snapshot").expect("load_meta").as_deref(),
        Some(&b"at 3"[..])
    );
    assert_eq!(
        store.load_meta("other").expect("load_meta").as_deref(),
        Some(&b"o"[..])
    );
    assert_eq!(
        store.load_meta("keep").expect("load_meta").as_deref(),
        Some(&b"k"[..])
    );

    let older = Snapshot::at(2, [(0, b"old".to_vec())]);
    assert!(matches!(
        store.install_snapshot_with_meta(&older, &[("snapshot", b"at 2")]),
        Err(StoreError::StaleSnapshot { .. })
    ));
    assert_eq!(
        store.load_meta("snapshot").expect("load_meta").as_deref(),
        Some(&b"at 3"[..])
    );
}
