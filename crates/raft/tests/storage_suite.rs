//! openraft's own storage test suite (`openraft::testing::Suite`) against the log store and the
//! state machine store, on `MemStore` with snapshots in memory, and on `WalStore` (what nodes use) with snapshot
//! files.

use std::sync::Arc;

use coopr_raft::{
    PartSink, Parts, RaftLogStore, RaftStateMachineStore, SnapshotStore, StateMachine,
    TakenSnapshot, TypeConfig,
};
use coopr_store::{LogStore, MemStore, WalStore};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

/// Runs one check on a fresh runtime, like openraft's own `run_fut`; panics on an error.
fn run_fut(check: &str, f: impl std::future::Future<Output = Result<(), StorageError<u64>>>) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(error) = runtime.block_on(f) {
        panic!("openraft storage suite check {check} failed: {error}");
    }
}

/// The suite applies only blank and membership entries, so the application does nothing.
struct NoApp;

impl StateMachine for NoApp {
    fn apply(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        vec![Vec::new(); entries.len()]
    }
    fn snapshot(&self) -> TakenSnapshot {
        Box::new(|out: PartSink<'_>| out(7, b"state"))
    }
    fn restore(&self, parts: Parts<'_>) -> anyhow::Result<()> {
        for part in parts {
            part?;
        }
        Ok(())
    }
}

struct Builder {
    on_disk: bool,
}

/// The guard of a built store: its snapshot directory, deleted when the check ends.
type Guard = Option<tempfile::TempDir>;

impl StoreBuilder<TypeConfig, RaftLogStore, RaftStateMachineStore, Guard> for Builder {
    async fn build(
        &self,
    ) -> Result<(Guard, RaftLogStore, RaftStateMachineStore), StorageError<u64>> {
        let (log, snapshots, guard): (Arc<dyn LogStore>, SnapshotStore, Guard) = if self.on_disk {
            let dir = tempfile::tempdir().expect("snapshot dir");
            (
                // Small segments, so the checks cross them.
                Arc::new(WalStore::temporary(4096).expect("WAL log store")),
                SnapshotStore::open(dir.path()).expect("snapshot files"),
                Some(dir),
            )
        } else {
            (Arc::new(MemStore::new()), SnapshotStore::in_memory(), None)
        };
        let sm = RaftStateMachineStore::open(Arc::new(NoApp), snapshots).await?;
        Ok((guard, RaftLogStore::new(log, true), sm))
    }
}

type S = Suite<TypeConfig, RaftLogStore, RaftStateMachineStore, Builder, Guard>;

/// Runs each named check of openraft's suite on fresh stores. `Suite::test_all` runs the same
/// list; it is spelled out to leave out the one check that needs a log with holes (see below).
macro_rules! suite {
    ($builder:expr; $($check:ident),* $(,)?) => {{
        let builder = $builder;
        $(
            eprintln!("openraft suite: {}", stringify!($check));
            run_fut(stringify!($check), async {
                let (_guard, store, sm) = builder.build().await?;
                S::$check(store, sm).await
            });
        )*
        run_fut("transfer_snapshot", S::transfer_snapshot(&builder));
    }};
}

/// Every check of `Suite::test_store` except `get_initial_state_membership_from_log_and_sm`,
/// which appends index 3 to a log ending at 1: a map-like store accepts the hole, but
/// `LogStore` keeps the log gap-free (as openraft itself always does) and refuses it.
fn run_suite(on_disk: bool) {
    suite!(Builder { on_disk };
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
    );
}

#[test]
fn openraft_suite_on_mem_store() {
    run_suite(false);
}

#[test]
fn openraft_suite_on_wal_store() {
    run_suite(true);
}
