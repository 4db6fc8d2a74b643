//! Runs the shared conformance suite against every store, one `#[test]` per property so a
//! failure names the store and the property.

use coopr_store::{conformance, LogStore, MemStore, RedbStore, WalStore};

fn mem() -> Box<dyn LogStore> {
    Box::new(MemStore::new())
}

/// Segments of 256 bytes, so most checks cross several of them.
fn wal() -> Box<dyn LogStore> {
    Box::new(WalStore::temporary(256).expect("create a temporary WAL store"))
}

fn redb() -> Box<dyn LogStore> {
    Box::new(RedbStore::temporary().expect("create a temporary redb store"))
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod mem_store {
            $(#[test]
            fn $name() {
                coopr_store::conformance::$name(&super::mem);
            })*
        }
        mod redb_store {
            $(#[test]
            fn $name() {
                coopr_store::conformance::$name(&super::redb);
            })*
        }
        mod wal_store {
            $(#[test]
            fn $name() {
                coopr_store::conformance::$name(&super::wal);
            })*
        }
        /// Fails when a check is added to `conformance::ALL` but not listed here.
        #[test]
        fn every_check_is_listed() {
            let listed = [$(stringify!($name)),*];
            let all: Vec<&str> = conformance::ALL.iter().map(|(name, _)| *name).collect();
            assert_eq!(listed.to_vec(), all);
        }
    };
}

conformance_tests!(
    empty_store,
    append_and_read_in_order,
    empty_batch_is_noop,
    read_from_bounds,
    truncate_from_drops_suffix,
    install_snapshot_compacts,
    install_snapshot_beyond_log,
    install_snapshot_refusals,
    put_part_and_drop_part,
    compact_through_after_parts,
    large_entries,
    many_small_entries,
    concurrent_appends_gap_free,
    meta_values,
    install_snapshot_with_meta,
);
