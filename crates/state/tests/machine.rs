//! State-machine tests with no I/O: entries are built by hand (time passed in), applied to a
//! [`State`], and the resulting state and outcomes are checked exactly. Persistence is checked
//! on a [`MemStore`]: whatever is applied and appended must come back identical from `recover`.

use std::collections::BTreeMap;

use coopr_state::{
    encode_entry, recover, snapshot_of, Command, CommandError, CommandResult, Entry, ErrorCode,
    Fence, Outcome, State, TaskResult,
};
use coopr_store::{LogStore, MemStore};
use coopr_types::{
    ClusterAction, ClusterId, ClusterStatus, EntityKind, JobStatus, ShardId, TaskId, TaskName,
    TaskStatus,
};
use serde_json::Value;

mod common;

use common::{setup_commands, spec, tenant, CheckedApply, TENANT};
const TIMEOUT_MS: u64 = 60_000;

/// A state plus a clock, recording every entry it applied (for persistence tests).
struct Harness {
    state: State,
    now_ms: u64,
    log: Vec<Entry>,
}

impl Harness {
    fn new(shard_count: u32) -> Harness {
        let mut h = Harness {
            state: State::new(shard_count),
            now_ms: 1_000_000,
            log: Vec::new(),
        };
        for command in setup_commands() {
            h.ok(command);
        }
        h
    }

    fn apply_keyed(&mut self, command: Command, key: Option<&str>) -> CommandResult {
        self.now_ms += 1;
        let entry = Entry {
            now_ms: self.now_ms,
            idempotency_key: key.map(str::to_string),
            fence: None,
            command,
        };
        let result = self.state.checked_apply(&entry);
        self.log.push(entry);
        result
    }

    fn apply(&mut self, command: Command) -> CommandResult {
        self.apply_keyed(command, None)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let debug = format!("{command:?}");
        self.apply(command)
            .unwrap_or_else(|e| panic!("{debug} rejected: {e}"))
    }

    fn create(&mut self, shard: u32, template: &str, machines: u32) -> CommandResult {
        let spec = spec(&self.state, template, machines, &[]);
        self.apply(Command::CreateCluster {
            shard: ShardId(shard),
            spec: Box::new(spec),
        })
    }

    fn create_ok(&mut self, template: &str, machines: u32) -> ClusterId {
        match self.create(0, template, machines) {
            Ok(Outcome::ClusterCreated { id }) => id,
            other => panic!("create: {other:?}"),
        }
    }

    fn take(&mut self) -> Option<TaskId> {
        match self.ok(Command::TakeTask {
            provisioner_id: "p1".into(),
            worker_id: "w1".into(),
            tenant_id: None,
            timeout_ms: TIMEOUT_MS,
            shards: None,
        }) {
            Outcome::TaskTaken { task } => task,
            other => panic!("take: {other:?}"),
        }
    }

    fn finish(&mut self, task: TaskId, status: i64) -> CommandResult {
        self.apply(Command::FinishTask(Box::new(TaskResult {
            provisioner_id: "p1".into(),
            worker_id: "w1".into(),
            task,
            status,
            stdout: "out".into(),
            stderr: String::new(),
            hostname: Some(format!("host-{}", task.seq)),
            ipaddresses: Some(BTreeMap::from([("access_v4".into(), "10.0.0.1".into())])),
            result: serde_json::Map::from_iter([("providerid".into(), Value::from("i-1"))]),
        })))
    }

    /// Takes and finishes tasks (all OK) until none is left; returns how many ran.
    fn drive(&mut self) -> usize {
        let mut count = 0;
        while let Some(task) = self.take() {
            self.finish(task, 0).expect("finish");
            count += 1;
            assert!(count < 1000, "the job never ends");
        }
        count
    }

    fn status(&self, id: ClusterId) -> ClusterStatus {
        self.state.cluster(id).expect("cluster").cluster.status
    }

    fn parts(&self) -> Vec<(u32, String)> {
        parts_of(&self.state)
    }
}

/// The snapshot parts of a state as text, so a failed comparison shows a readable diff.
fn parts_of(state: &State) -> Vec<(u32, String)> {
    snapshot_of(state, 0)
        .parts
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.bytes).into_owned()))
        .collect()
}

/// A 3-node lamp cluster is PENDING with a create job, and ACTIVE once every task finished OK;
/// the completed job shows all its steps completed and the nodes carry the workers' results.
#[test]
fn lamp_cluster_goes_pending_to_active() {
    let mut h = Harness::new(4);
    let id = h.create_ok("lamp", 3);
    let record = h.state.cluster(id).unwrap();
    assert_eq!(record.cluster.status, ClusterStatus::Pending);
    assert_eq!(record.nodes.len(), 3);
    assert_eq!(record.jobs.len(), 2, "solve_layout + cluster_create");
    let create = record.latest_job().unwrap();
    assert_eq!(create.job.action, ClusterAction::ClusterCreate);
    assert_eq!(create.job.status, JobStatus::Running);
    let (total, done) = create.steps();
    assert!(total > 0);
    assert_eq!(done, 0);

    let ran = h.drive();
    assert_eq!(ran, total);
    assert_eq!(h.status(id), ClusterStatus::Active);
    let record = h.state.cluster(id).unwrap();
    let create = record.latest_job().unwrap();
    assert_eq!(create.job.status, JobStatus::Complete);
    assert_eq!(create.steps(), (total, total));
    for node in record.nodes.values() {
        assert!(node.properties.hostname.starts_with("host-"));
        assert_eq!(node.properties.ipaddresses["access_v4"], "10.0.0.1");
        assert_eq!(node.provisioner_results["providerid"], "i-1");
        assert!(node
            .actions
            .iter()
            .all(|a| a.status == TaskStatus::Complete));
    }
    assert_eq!(h.state.queued_tasks().count(), 0);
    assert_eq!(h.state.next_deadline(), None);
}

/// Deleting an active cluster runs a delete job that ends TERMINATED; a second delete is a no-op.
#[test]
fn delete_terminates_and_second_delete_is_a_no_op() {
    let mut h = Harness::new(4);
    let id = h.create_ok("lamp", 3);
    h.drive();
    let delete = Command::StartOperation {
        cluster: id,
        action: ClusterAction::ClusterDelete,
        services: vec![],
        config: None,
    };
    assert!(matches!(h.ok(delete.clone()), Outcome::JobStarted { .. }));
    assert_eq!(h.status(id), ClusterStatus::Pending);
    let ran = h.drive();
    assert_eq!(ran, 3, "one DELETE per node");
    assert_eq!(h.status(id), ClusterStatus::Terminated);
    let before = h.parts();
    assert_eq!(h.ok(delete), Outcome::Unchanged);
    assert_eq!(h.parts(), before);
}

/// Deleting a pending cluster is refused (409) and changes nothing.
#[test]
fn delete_of_pending_cluster_is_a_conflict() {
    let mut h = Harness::new(4);
    let id = h.create_ok("base", 1);
    let before = h.parts();
    let err = h
        .apply(Command::StartOperation {
            cluster: id,
            action: ClusterAction::ClusterDelete,
            services: vec![],
            config: None,
        })
        .unwrap_err();
    assert_eq!(err.http_status(), 409);
    assert_eq!(h.parts(), before);
}

/// Cluster IDs are `shard + S * n`, where n counts the clusters created in that shard.
#[test]
fn cluster_ids_encode_shard_and_sequence() {
    let mut h = Harness::new(4);
    let mut ids = Vec::new();
    for shard in [1, 1, 3, 1, 0] {
        match h.create(shard, "base", 1) {
            Ok(Outcome::ClusterCreated { id }) => ids.push(id.0),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, vec![1, 5, 3, 9, 0]);
    for id in ids {
        assert_eq!(
            ClusterId(id).shard(4),
            ShardId((id % 4) as u32),
            "cluster {id} lives in its shard"
        );
        assert!(h.state.cluster(ClusterId(id)).is_some());
    }
    // A shard that does not exist is refused, and nothing is allocated.
    let before = h.parts();
    let err = h.create(4, "base", 1).unwrap_err();
    assert_eq!(err.code(), "invalid_shard");
    assert_eq!(h.parts(), before);
}

/// Exceeding maxClusters or maxNodes is QuotaExceeded (409) and leaves the state unchanged.
#[test]
fn quota_exceeded_changes_nothing() {
    let mut h = Harness::new(4);
    h.ok(Command::PutTenant {
        tenant: tenant(TENANT, 2, 4),
    });
    h.create_ok("lamp", 3);
    let before = h.parts();
    let err = h.create(1, "lamp", 2).unwrap_err();
    assert!(matches!(err, CommandError::QuotaExceeded { .. }), "{err:?}");
    assert_eq!(err.http_status(), 409);
    assert_eq!(h.parts(), before, "a rejected create changes nothing");

    h.create_ok("base", 1);
    let before = h.parts();
    let err = h.create(2, "base", 1).unwrap_err();
    assert!(matches!(err, CommandError::QuotaExceeded { .. }), "{err:?}");
    assert_eq!(h.parts(), before);
}

/// Replaying an idempotency key returns the first outcome and creates nothing twice.
#[test]
fn idempotency_key_replay_returns_first_outcome() {
    let mut h = Harness::new(4);
    let spec = spec(&h.state, "base", 2, &[]);
    let command = Command::CreateCluster {
        shard: ShardId(2),
        spec: Box::new(spec),
    };
    let first = h
        .apply_keyed(command.clone(), Some("acme/alice/k1"))
        .unwrap();
    let after_first = h.parts();
    let second = h
        .apply_keyed(command.clone(), Some("acme/alice/k1"))
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(h.parts(), after_first, "the replay changes nothing");
    assert_eq!(h.state.clusters().count(), 1);
    assert_eq!(
        h.state.idempotent_outcome("acme/alice/k1"),
        Some(Ok(first.clone()))
    );
    // A different key is a different request.
    let third = h.apply_keyed(command, Some("acme/alice/k2")).unwrap();
    assert_ne!(first, third);
    assert_eq!(h.state.clusters().count(), 2);
}

/// A write carrying `(shard, epoch)` applies only at the shard's current epoch; at another one
/// it is refused with `stale_epoch`, changes nothing and is not remembered under its key (a
/// retry at the right owner must not get the refusal back).
#[test]
fn a_write_fenced_at_another_epoch_changes_nothing() {
    let mut h = Harness::new(4);
    let command = Command::CreateCluster {
        shard: ShardId(2),
        spec: Box::new(spec(&h.state, "base", 1, &[])),
    };
    assert_eq!(h.state.shard_epoch(ShardId(2)), Some(1));
    let fenced = |epoch: u64| Entry {
        now_ms: 1_000,
        idempotency_key: Some("acme/alice/f1".into()),
        fence: Some(Fence {
            shard: ShardId(2),
            epoch,
        }),
        command: command.clone(),
    };
    let before = h.parts();
    match h.state.checked_apply(&fenced(2)) {
        Err(CommandError::Conflict { code, .. }) => assert_eq!(code, ErrorCode::StaleEpoch),
        other => panic!("expected stale_epoch, got {other:?}"),
    }
    assert_eq!(h.parts(), before, "a stale write changes nothing");
    assert_eq!(h.state.idempotent_outcome("acme/alice/f1"), None);
    assert!(matches!(
        h.state.checked_apply(&fenced(1)),
        Ok(Outcome::ClusterCreated { .. })
    ));
    assert_eq!(h.state.clusters().count(), 1);
}

/// A task that fails three times fails its job; a failed create leaves the cluster INCOMPLETE
/// and no task of that job is handed out again.
#[test]
fn task_failing_three_times_fails_create() {
    let mut h = Harness::new(4);
    let id = h.create_ok("base", 1);
    let first = h.take().expect("a CREATE task");
    assert_eq!(h.state.task(first).unwrap().task_name, TaskName::Create);
    h.finish(first, 1).unwrap();
    for attempt in 2..=3 {
        let again = h.take().expect("the task is retried");
        assert_eq!(again, first);
        assert_eq!(h.state.task(again).unwrap().attempts, attempt);
        h.finish(again, 1).unwrap();
    }
    assert_eq!(h.status(id), ClusterStatus::Incomplete);
    let record = h.state.cluster(id).unwrap();
    assert_eq!(record.latest_job().unwrap().job.status, JobStatus::Failed);
    assert!(record.cluster.message.is_some());
    assert_eq!(h.state.task(first).unwrap().status, TaskStatus::Failed);
    assert_eq!(h.take(), None);
    // A late finish for the failed task is not accepted again.
    let err = h.finish(first, 0).unwrap_err();
    assert_eq!(err.http_status(), 417);
}

/// A finish by a worker that does not own the task is 417 and changes nothing.
#[test]
fn finish_by_non_owner_is_rejected() {
    let mut h = Harness::new(4);
    h.create_ok("base", 1);
    let task = h.take().unwrap();
    let before = h.parts();
    let err = h.finish_as("p1", "someone-else", task).unwrap_err();
    assert_eq!(err.http_status(), 417);
    assert_eq!(h.parts(), before);
}

/// ExpireTasks does nothing before a task's deadline; after it, the task is queued again and
/// the next take counts a second attempt.
#[test]
fn expire_tasks_retries_a_timed_out_task() {
    let mut h = Harness::new(4);
    h.create_ok("base", 1);
    let task = h.take().unwrap();
    let deadline = h.state.next_deadline().expect("a deadline");
    assert_eq!(h.state.queued_tasks().count(), 0);
    assert_eq!(
        h.ok(Command::ExpireTasks),
        Outcome::TasksExpired { count: 0 }
    );
    h.now_ms = deadline;
    assert_eq!(
        h.ok(Command::ExpireTasks),
        Outcome::TasksExpired { count: 1 }
    );
    assert_eq!(h.state.queued_tasks().copied().collect::<Vec<_>>(), [task]);
    assert_eq!(h.state.task(task).unwrap().status, TaskStatus::NotSubmitted);
    assert_eq!(h.take(), Some(task));
    assert_eq!(h.state.task(task).unwrap().attempts, 2);
}

/// ReleaseProvisioner puts a dead provisioner's tasks back in the queue at once.
#[test]
fn release_provisioner_requeues_its_tasks() {
    let mut h = Harness::new(4);
    h.create_ok("lamp", 2);
    let task = h.take().unwrap();
    assert_eq!(h.state.tasks_held_by("p1"), 1);
    assert_eq!(
        h.ok(Command::ReleaseProvisioner { id: "p2".into() }),
        Outcome::TasksExpired { count: 0 }
    );
    assert_eq!(
        h.ok(Command::ReleaseProvisioner { id: "p1".into() }),
        Outcome::TasksExpired { count: 1 }
    );
    assert_eq!(h.state.tasks_held_by("p1"), 0);
    assert!(h.state.queued_tasks().any(|t| *t == task));
}

/// Taking or finishing as an unregistered provisioner is refused (403).
#[test]
fn unregistered_provisioner_is_refused() {
    let mut h = Harness::new(4);
    h.create_ok("base", 1);
    let err = h
        .apply(Command::TakeTask {
            provisioner_id: "ghost".into(),
            worker_id: "w".into(),
            tenant_id: None,
            timeout_ms: 1000,
            shards: None,
        })
        .unwrap_err();
    assert_eq!(err.http_status(), 403);
}

/// Pause stops tasks from being handed out; resume hands them out again; abort of a create
/// fails it (INCOMPLETE) and abort of a finished job is a no-op.
#[test]
fn pause_resume_abort() {
    let mut h = Harness::new(4);
    let id = h.create_ok("lamp", 2);
    assert_eq!(h.ok(Command::Pause { cluster: id }), Outcome::Done);
    assert_eq!(h.ok(Command::Pause { cluster: id }), Outcome::Unchanged);
    assert_eq!(h.take(), None);
    assert_eq!(h.ok(Command::Resume { cluster: id }), Outcome::Done);
    let task = h.take().expect("tasks flow again");
    assert_eq!(h.ok(Command::Abort { cluster: id }), Outcome::Done);
    assert_eq!(h.status(id), ClusterStatus::Incomplete);
    assert_eq!(h.take(), None);
    // The in-progress task may still report (a late result is recorded, nothing else changes).
    h.finish(task, 0).unwrap();
    assert_eq!(h.status(id), ClusterStatus::Incomplete);
    assert_eq!(h.ok(Command::Abort { cluster: id }), Outcome::Unchanged);
}

/// Service operations and reconfigure need an ACTIVE cluster and leave it ACTIVE when they
/// succeed; a rejected reconfigure leaves the config unchanged.
#[test]
fn operations_on_active_cluster() {
    let mut h = Harness::new(4);
    let id = h.create_ok("lamp", 2);
    let mut config = serde_json::Map::new();
    config.insert("k".into(), Value::from("v"));
    let configure = Command::StartOperation {
        cluster: id,
        action: ClusterAction::ClusterConfigure,
        services: vec![],
        config: Some(config.clone()),
    };
    let before = h.parts();
    let err = h.apply(configure.clone()).unwrap_err();
    assert_eq!(err.http_status(), 409, "pending cluster");
    assert_eq!(h.parts(), before);
    h.drive();
    for action in [
        ClusterAction::ClusterConfigure,
        ClusterAction::ClusterConfigureWithRestart,
        ClusterAction::StopServices,
        ClusterAction::StartServices,
        ClusterAction::RestartServices,
    ] {
        h.ok(Command::StartOperation {
            cluster: id,
            action,
            services: vec![],
            config: Some(config.clone()).filter(|_| {
                matches!(
                    action,
                    ClusterAction::ClusterConfigure | ClusterAction::ClusterConfigureWithRestart
                )
            }),
        });
        assert_eq!(h.status(id), ClusterStatus::Pending);
        assert!(h.drive() > 0, "{action} has tasks");
        assert_eq!(h.status(id), ClusterStatus::Active, "{action}");
    }
    assert_eq!(h.state.cluster(id).unwrap().cluster.config, config);
    let err = h
        .apply(Command::StartOperation {
            cluster: id,
            action: ClusterAction::StopServices,
            services: vec!["nope".into()],
            config: None,
        })
        .unwrap_err();
    assert_eq!(err.http_status(), 404);
}

/// AddServices with a placement naming an unknown node is refused and changes nothing (no node
/// is half-updated); a valid placement adds the service and runs an add_services job.
#[test]
fn add_services_is_all_or_nothing() {
    let mut h = Harness::new(4);
    let spec = spec(&h.state, "lamp", 2, &["base".into(), "mysql".into()]);
    let id = match h.apply(Command::CreateCluster {
        shard: ShardId(0),
        spec: Box::new(spec),
    }) {
        Ok(Outcome::ClusterCreated { id }) => id,
        other => panic!("{other:?}"),
    };
    h.drive();
    let nodes: Vec<_> = h.state.cluster(id).unwrap().nodes.keys().cloned().collect();
    let before = h.parts();
    let mut placement = BTreeMap::new();
    placement.insert(nodes[0].clone(), vec!["apache".to_string()]);
    placement.insert(
        coopr_types::NodeId("ffffffff-ffff-4fff-8fff-ffffffffffff".into()),
        vec!["apache".to_string()],
    );
    let err = h
        .apply(Command::AddServices {
            cluster: id,
            services: vec!["apache".into()],
            placement,
        })
        .unwrap_err();
    assert_eq!(err.http_status(), 404);
    assert_eq!(h.parts(), before, "a rejected AddServices changes nothing");

    let placement = BTreeMap::from([(nodes[1].clone(), vec!["apache".to_string()])]);
    h.ok(Command::AddServices {
        cluster: id,
        services: vec!["apache".into()],
        placement,
    });
    assert!(h.drive() > 0);
    let record = h.state.cluster(id).unwrap();
    assert_eq!(record.cluster.status, ClusterStatus::Active);
    assert!(record.cluster.services.contains(&"apache".into()));
    assert!(record.nodes[&nodes[1]]
        .properties
        .services
        .contains(&"apache".into()));
}

/// A service written to the catalog after the cluster was created can be added to it, and its
/// tasks are planned (the cluster's snapshot of service definitions is refreshed for it).
#[test]
fn add_services_uses_current_service_definitions() {
    let mut h = Harness::new(4);
    let id = h.create_ok("base", 1);
    h.drive();
    h.ok(Command::PutEntity {
        tenant: TENANT.into(),
        kind: EntityKind::Services,
        name: "redis".into(),
        body: serde_json::json!({"name": "redis", "provisioner": {"actions": {
            "install": {"type": "fake", "fields": {}},
            "start": {"type": "fake", "fields": {}}}}}),
        create_only: true,
    });
    let node = h
        .state
        .cluster(id)
        .unwrap()
        .nodes
        .keys()
        .next()
        .unwrap()
        .clone();
    h.ok(Command::AddServices {
        cluster: id,
        services: vec!["redis".into()],
        placement: BTreeMap::from([(node, vec!["redis".to_string()])]),
    });
    let mut names = Vec::new();
    while let Some(task) = h.take() {
        let t = h.state.task(task).unwrap();
        if !t.service.is_empty() {
            names.push((t.task_name, t.service.to_string()));
        }
        h.finish(task, 0).unwrap();
    }
    assert_eq!(
        names,
        [
            (TaskName::Install, "redis".to_string()),
            (TaskName::Start, "redis".to_string())
        ]
    );
    assert_eq!(h.status(id), ClusterStatus::Active);
    assert!(h
        .state
        .cluster(id)
        .unwrap()
        .service_defs
        .contains_key("redis"));
}

/// Clusters planned with the same service definitions and built from the same template share
/// one allocation of their map of definitions and one of the template (the state holds
/// millions of clusters of a few templates), also in a state restored from a snapshot; a
/// changed definition is a new one.
#[test]
fn clusters_share_equal_service_definitions_templates_and_providers() {
    let shared = |state: &State, a: ClusterId, b: ClusterId| {
        let defs = |id| &state.cluster(id).unwrap().service_defs;
        let template = |id| &state.cluster(id).unwrap().cluster.cluster_template;
        let provider = |id| &state.cluster(id).unwrap().cluster.provider;
        std::sync::Arc::ptr_eq(defs(a), defs(b))
            && std::sync::Arc::ptr_eq(template(a), template(b))
            && std::sync::Arc::ptr_eq(provider(a), provider(b))
    };
    let mut h = Harness::new(4);
    let created =
        |h: &mut Harness, shard: u32, machines: u32| match h.create(shard, "lamp", machines) {
            Ok(Outcome::ClusterCreated { id }) => id,
            other => panic!("create: {other:?}"),
        };
    // Two per shard: the records of one part share what its decoding shares.
    let ids: Vec<ClusterId> = (0..8).map(|n| created(&mut h, n % 4, n / 4 + 1)).collect();
    let (a, b) = (ids[0], ids[1]);
    assert!(ids.iter().all(|&id| shared(&h.state, a, id)));
    // Clusters in several shards: each shard is a part of the snapshot, decoded apart.
    let shards: std::collections::BTreeSet<_> = ids.iter().map(|id| id.shard(4)).collect();
    assert!(shards.len() > 1, "{shards:?}");
    let store = MemStore::new();
    let bytes: Vec<Vec<u8>> = h.log.iter().map(encode_entry).collect();
    let last = store.append(&bytes).unwrap();
    store
        .install_snapshot(&snapshot_of(&h.state, last))
        .unwrap();
    let mut recovered = recover(&store, 4).unwrap();
    assert_eq!(recovered.replayed, 0, "restored from the snapshot alone");
    assert!(shared(&recovered.state, a, b));
    // Across parts too, and with a cluster created after the restore (the state's pool,
    // not only each part's decoding, shares them).
    assert!(ids.iter().all(|&id| shared(&recovered.state, a, id)));
    assert_eq!(parts_of(&recovered.state), h.parts());
    let mut after = Harness::new(4);
    after.now_ms = h.now_ms;
    std::mem::swap(&mut after.state, &mut recovered.state);
    let c = created(&mut after, 2, 3);
    assert!(shared(&after.state, a, c));
}

/// Applying entries and appending them to a store, then `recover`, gives the same state; so
/// does snapshot + replay of the entries after the snapshot.
#[test]
fn recover_rebuilds_identical_state() {
    let mut h = Harness::new(4);
    let a = h.create_ok("lamp", 3);
    h.drive();
    let b = h.create_ok("base", 2);
    h.take();
    h.apply_keyed(Command::Pause { cluster: b }, Some("acme/alice/pause-b"))
        .unwrap();
    let store = MemStore::new();
    let bytes: Vec<Vec<u8>> = h.log.iter().map(encode_entry).collect();
    let last = store.append(&bytes).unwrap();
    assert_eq!(last as usize, h.log.len());

    let recovered = recover(&store, 4).unwrap();
    assert_eq!(recovered.last_index, last);
    assert_eq!(recovered.replayed as usize, h.log.len());
    assert_eq!(parts_of(&recovered.state), h.parts());
    assert_eq!(
        recovered.state.queued_tasks().collect::<Vec<_>>(),
        h.state.queued_tasks().collect::<Vec<_>>()
    );

    // Snapshot now, then more entries after it.
    store
        .install_snapshot(&snapshot_of(&h.state, last))
        .unwrap();
    let mark = h.log.len();
    h.ok(Command::Resume { cluster: b });
    h.drive();
    h.ok(Command::StartOperation {
        cluster: a,
        action: ClusterAction::ClusterDelete,
        services: vec![],
        config: None,
    });
    h.take();
    let more: Vec<Vec<u8>> = h.log[mark..].iter().map(encode_entry).collect();
    let last = store.append(&more).unwrap();
    let recovered = recover(&store, 4).unwrap();
    assert_eq!(recovered.last_index, last);
    assert_eq!(recovered.replayed as usize, more.len());
    assert_eq!(parts_of(&recovered.state), h.parts());
    assert_eq!(
        recovered.state.queued_tasks().collect::<Vec<_>>(),
        h.state.queued_tasks().collect::<Vec<_>>()
    );
    assert_eq!(recovered.state.next_deadline(), h.state.next_deadline());
    assert_eq!(
        recovered.state.tasks_held_by("p1"),
        h.state.tasks_held_by("p1")
    );

    // A snapshot taken with another shard count is refused.
    assert!(recover(&store, 8).is_err());
}

/// Entry times never go backwards as the state machine uses them: a leader whose wall clock is
/// behind the previous one's (leadership moved) stamps an older time, and the state applies it
/// at the latest time seen. The floor survives a snapshot, so a node restored from one decides
/// the same as a node that applied every entry.
#[test]
fn entry_times_never_go_backwards() {
    let mut h = Harness::new(4);
    let first = h.create_ok("base", 1);
    let created = h.state.cluster(first).unwrap().cluster.create_time;
    // The next leader's clock is a minute behind.
    h.now_ms -= 60_000;
    let second = h.create_ok("base", 1);
    assert_eq!(
        h.state.cluster(second).unwrap().cluster.create_time,
        created
    );
    assert_eq!(h.state.local.clock_ms, created);
    let parts = coopr_state::encode_parts(&h.state);
    let restored = coopr_state::decode_parts(parts.iter().map(|(k, v)| (*k, v.as_slice())), 4)
        .expect("decode");
    assert_eq!(restored.local.clock_ms, created);
    // Time moves on once the clock passes the floor.
    h.now_ms += 120_000;
    let third = h.create_ok("base", 1);
    assert!(h.state.cluster(third).unwrap().cluster.create_time > created);
}

/// Retiring finished jobs takes their runs out of the record into archive effects and keeps
/// their summaries: progress and the replicated view do not change, a running job is not
/// retired, and a batch over the bound is refused with nothing changed.
#[test]
fn retired_jobs_leave_memory_and_keep_their_summaries() {
    use coopr_state::{ArchiveEffect, MAX_RETIRE_BATCH};
    let mut h = Harness::new(4);
    let id = h.create_ok("lamp", 1);
    h.drive();
    let before = h.state.cluster(id).unwrap().clone();
    let view_before = h.state.replicated_view(ShardId(0));
    let summary_before = before.latest_summary().expect("a latest job");
    assert_eq!(summary_before.action, ClusterAction::ClusterCreate);

    // A job still running is not retirable: start a stop and look before it ends.
    let running_cutoff = h.now_ms + 10;
    h.ok(Command::StartOperation {
        cluster: id,
        action: ClusterAction::StopServices,
        services: vec![],
        config: None,
    });
    let retirable = h.state.retirable_jobs(0..=3, running_cutoff, 100);
    assert_eq!(
        retirable.len(),
        2,
        "layout and create, not the stop: {retirable:?}"
    );
    assert!(retirable.iter().all(|j| j.cluster == id && j.seq <= 2));
    assert!(h.state.take_archive_effects().is_empty());

    let too_many = vec![retirable[0]; MAX_RETIRE_BATCH + 1];
    let refused = h.apply(Command::RetireJobs { jobs: too_many }).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::RetireBatchTooLarge.as_str());
    assert_eq!(h.state.cluster(id).unwrap().jobs.len(), 3);

    let mut with_running = retirable.clone();
    with_running.push(coopr_types::JobId {
        cluster: id,
        seq: 3,
    });
    assert_eq!(
        h.ok(Command::RetireJobs { jobs: with_running }),
        Outcome::Done
    );
    let record = h.state.cluster(id).unwrap();
    assert_eq!(record.jobs.keys().copied().collect::<Vec<_>>(), vec![3]);
    assert_eq!(
        record.retired_jobs.keys().copied().collect::<Vec<_>>(),
        retirable
    );
    let effects = h.state.take_archive_effects();
    let archived: Vec<_> = effects
        .iter()
        .map(|e| match e {
            ArchiveEffect::Retired(run) => run.job.id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(archived, retirable);
    let ArchiveEffect::Retired(create) = &effects[1] else {
        unreachable!()
    };
    assert_eq!(create, &Box::new(before.jobs[&2].clone()));
    assert!(h.state.take_archive_effects().is_empty());

    // Once the stop ends, it is the latest job; retiring it too leaves no run in memory, and
    // the summaries answer for the cluster as the runs did.
    h.drive();
    let stop = coopr_types::JobId {
        cluster: id,
        seq: 3,
    };
    assert_eq!(
        h.ok(Command::RetireJobs { jobs: vec![stop] }),
        Outcome::Done
    );
    assert_eq!(
        h.ok(Command::RetireJobs { jobs: vec![stop] }),
        Outcome::Unchanged
    );
    let record = h.state.cluster(id).unwrap();
    assert!(record.jobs.is_empty());
    let latest = record.latest_summary().unwrap();
    assert_eq!(
        (latest.id, latest.action),
        (stop, ClusterAction::StopServices)
    );
    assert_eq!(latest.status, JobStatus::Complete);
    assert_eq!(h.state.take_archive_effects().len(), 1);

    // The replicated view is the same whether jobs are held whole or retired (the stop added
    // one summary), and a restart from snapshot and log rebuilds the same state.
    let view_after = h.state.replicated_view(ShardId(0));
    let jobs = |v: &Value| v["clusters"][id.to_string()]["jobs"].clone();
    let mut expected = jobs(&view_before);
    expected[stop.to_string()] = serde_json::to_value(&latest).unwrap();
    assert_eq!(jobs(&view_after), expected);
    assert_eq!(
        jobs(&view_before).as_object().unwrap().len(),
        1,
        "the create"
    );
    let store = MemStore::new();
    store
        .append(&h.log.iter().map(encode_entry).collect::<Vec<_>>())
        .unwrap();
    let recovered = recover(&store, 4).unwrap().state;
    assert_eq!(parts_of(&recovered), h.parts());
}

impl Harness {
    fn take_as(&mut self, provisioner: &str, worker: &str, timeout_ms: u64) -> Option<TaskId> {
        match self.ok(Command::TakeTask {
            provisioner_id: provisioner.into(),
            worker_id: worker.into(),
            tenant_id: None,
            timeout_ms,
            shards: None,
        }) {
            Outcome::TaskTaken { task } => task,
            other => panic!("take: {other:?}"),
        }
    }

    /// Finishes `task` (OK, no output) as `worker` of `provisioner`.
    fn finish_as(&mut self, provisioner: &str, worker: &str, task: TaskId) -> CommandResult {
        self.apply(Command::FinishTask(Box::new(TaskResult {
            provisioner_id: provisioner.into(),
            worker_id: worker.into(),
            task,
            status: 0,
            stdout: String::new(),
            stderr: String::new(),
            hostname: None,
            ipaddresses: None,
            result: Default::default(),
        })))
    }
}

/// What `tasks_held_by`, `task_held_by_worker` and `next_deadline` answer, by a scan of every
/// task of every unfinished job (what they did before the index).
fn held_by_scan(state: &State) -> Vec<(String, String, TaskId, u64)> {
    state
        .clusters()
        .flat_map(|r| r.jobs.values())
        .filter(|run| !run.job.status.is_finished())
        .flat_map(|run| run.tasks.values())
        .filter(|t| t.status == TaskStatus::InProgress)
        .filter_map(|t| {
            let o = t.owner.as_ref()?;
            Some((
                o.provisioner_id.clone(),
                o.worker_id.clone(),
                t.id,
                o.deadline_ms,
            ))
        })
        .collect()
}

/// The three questions asked of the in-progress index, checked against a scan for every
/// owner the scan knows plus ones it does not.
fn assert_held_as_scanned(state: &State) {
    let scan = held_by_scan(state);
    state.check_indexes().unwrap();
    assert_eq!(
        state.next_deadline(),
        scan.iter().map(|(_, _, _, d)| *d).min()
    );
    for provisioner in ["p1", "p2", "nobody"] {
        let count = scan.iter().filter(|(p, ..)| p == provisioner).count();
        assert_eq!(state.tasks_held_by(provisioner), count, "{provisioner}");
        for worker in ["w1", "w2", "nobody"] {
            let first = scan
                .iter()
                .filter(|(p, w, ..)| p == provisioner && w == worker)
                .map(|(_, _, t, _)| *t)
                .min();
            assert_eq!(state.task_held_by_worker(provisioner, worker), first);
        }
    }
}

/// The in-progress index follows takes (by two provisioners and workers, one worker holding
/// two tasks: the lowest task id is the one reported), finishes, expiry, a dead provisioner's
/// release, an abort (a finished job's in-progress task is held by nobody) and retirement.
#[test]
fn the_in_progress_index_follows_every_task_change() {
    let mut h = Harness::new(4);
    h.ok(Command::RegisterProvisioner {
        info: coopr_state::ProvisionerInfo {
            id: "p2".into(),
            host: "127.0.0.1".into(),
            port: 2,
            capacity_total: 4,
        },
    });
    let first = h.create_ok("lamp", 2);
    let second = match h.create(1, "lamp", 2) {
        Ok(Outcome::ClusterCreated { id }) => id,
        other => panic!("create: {other:?}"),
    };
    assert_held_as_scanned(&h.state);
    assert_eq!(h.state.next_deadline(), None);

    let a = h.take_as("p1", "w1", 50_000).unwrap();
    let b = h.take_as("p1", "w2", 10_000).unwrap();
    let c = h.take_as("p2", "w1", 30_000).unwrap();
    // A worker that took twice (its first answer lost) holds two: the lowest is reported.
    let d = h.take_as("p1", "w1", 40_000).unwrap();
    assert_held_as_scanned(&h.state);
    assert_eq!(h.state.tasks_held_by("p1"), 3);
    assert_eq!(h.state.task_held_by_worker("p1", "w1"), Some(a.min(d)));
    assert_eq!(h.state.task_held_by_worker("p1", "w2"), Some(b));
    assert_eq!(h.state.task_held_by_worker("p2", "w1"), Some(c));
    let b_deadline = h.state.task(b).unwrap().owner.as_ref().unwrap().deadline_ms;
    assert_eq!(h.state.next_deadline(), Some(b_deadline));

    // Finishing the earliest deadline moves it on.
    h.finish_as("p1", "w2", b).unwrap();
    assert_held_as_scanned(&h.state);
    assert_eq!(h.state.task_held_by_worker("p1", "w2"), None);
    let c_deadline = h.state.task(c).unwrap().owner.as_ref().unwrap().deadline_ms;
    assert_eq!(h.state.next_deadline(), Some(c_deadline));

    // Expiry of c (the earliest now) leaves a and d.
    h.now_ms = c_deadline;
    assert_eq!(
        h.ok(Command::ExpireTasks),
        Outcome::TasksExpired { count: 1 }
    );
    assert_held_as_scanned(&h.state);
    assert_eq!(h.state.tasks_held_by("p2"), 0);
    assert_eq!(h.state.tasks_held_by("p1"), 2);

    // p2 takes again, then is released as dead.
    let e = h.take_as("p2", "w1", 30_000).unwrap();
    assert_eq!(h.state.task_held_by_worker("p2", "w1"), Some(e));
    h.ok(Command::ReleaseProvisioner { id: "p2".into() });
    assert_held_as_scanned(&h.state);
    assert_eq!(h.state.tasks_held_by("p2"), 0);

    // Abort ends the jobs: their in-progress tasks stay IN_PROGRESS but nobody holds them.
    for id in [first, second] {
        h.ok(Command::Abort { cluster: id });
    }
    assert_eq!(h.state.task(a).unwrap().status, TaskStatus::InProgress);
    assert_held_as_scanned(&h.state);
    assert_eq!(h.state.tasks_held_by("p1"), 0);
    assert_eq!(h.state.next_deadline(), None);

    // Retiring the finished jobs changes nothing held.
    let jobs = h.state.retirable_jobs(0..=3, u64::MAX, 100);
    assert!(jobs.contains(&a.job));
    h.ok(Command::RetireJobs { jobs });
    assert!(h.state.job(a.job).is_none());
    assert_held_as_scanned(&h.state);
}

/// After a restore from a snapshot (derived indexes rebuilt) the indexes equal full scans.
#[test]
fn a_restored_state_rebuilds_its_indexes() {
    let mut h = Harness::new(4);
    h.create_ok("lamp", 2);
    h.take_as("p1", "w1", 5_000).unwrap();
    h.take_as("p1", "w2", 7_000).unwrap();
    let parts = snapshot_of(&h.state, 0).parts;
    let restored = coopr_state::decode_parts(
        parts.iter().map(|(id, part)| (*id, part.bytes.as_slice())),
        4,
    )
    .unwrap();
    assert_held_as_scanned(&restored);
    assert_eq!(restored.tasks_held_by("p1"), 2);
    assert_eq!(restored.next_deadline(), h.state.next_deadline());
}

/// A snapshot taken (`StateSnapshot::of`, what the DC log does under its lock) and encoded
/// later holds the state as it was when taken: changes applied meanwhile copy the shard they
/// touch and do not reach it; the shards it still shares cost nothing.
#[test]
fn a_taken_snapshot_is_not_changed_by_what_is_applied_after() {
    let mut h = Harness::new(4);
    h.create_ok("lamp", 1);
    let before = coopr_state::encode_parts(&h.state);
    let taken = coopr_state::StateSnapshot::of(&h.state);
    // Shared until written to: every shard of the state is the snapshot's allocation.
    assert!(h
        .state
        .shards
        .values()
        .all(|shard| std::sync::Arc::strong_count(shard) == 2));
    h.create_ok("lamp", 2);
    h.take_as("p1", "w1", 5_000).unwrap();
    let after = coopr_state::encode_parts(&h.state);
    assert_ne!(after, before, "the state moved on");
    let mut written = BTreeMap::new();
    taken
        .for_each_part(|id, bytes| {
            written.insert(id, bytes);
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(written, before, "the snapshot is the state as it was taken");
    // The snapshot let go of every shard as it wrote it.
    assert!(h
        .state
        .shards
        .values()
        .all(|shard| std::sync::Arc::strong_count(shard) == 1));
}

/// A change to a shard that a taken snapshot still holds copies the shard's map of records and
/// the one record it changes: the shard's other records stay shared with the snapshot (a shard
/// written while a snapshot is encoded used to be copied whole, every record of it).
#[test]
fn a_change_under_a_taken_snapshot_copies_only_the_record_it_changes() {
    let mut h = Harness::new(1);
    let clusters: Vec<ClusterId> = (0..3).map(|_| h.create_ok("lamp", 1)).collect();
    let taken = coopr_state::StateSnapshot::of(&h.state);
    let task = h.take_as("p1", "w1", 5_000).expect("a task to take");
    let changed = task.job.cluster;
    assert!(clusters.contains(&changed));
    let shard = h.state.shards.values().next().expect("the one shard");
    assert_eq!(
        std::sync::Arc::strong_count(shard),
        1,
        "the state's shard is a copy"
    );
    for id in &clusters {
        let held = std::sync::Arc::strong_count(&shard.clusters[id]);
        if *id == changed {
            assert_eq!(held, 1, "the changed record {id} is the state's own copy");
        } else {
            assert_eq!(held, 2, "record {id} is shared with the snapshot");
        }
    }
    drop(taken);
    assert!(shard
        .clusters
        .values()
        .all(|record| std::sync::Arc::strong_count(record) == 1));
}

/// What the API lists and counts comes from the tenant index, and equals what a scan of every
/// cluster gives: a tenant's clusters, the terminated ones too (and no other tenant's), and
/// the count of each status, as clusters are created, run, deleted, and after a restore.
#[test]
fn a_tenants_clusters_and_the_status_counts_need_no_scan() {
    let mut h = Harness::new(4);
    h.ok(Command::PutTenant {
        tenant: tenant("other", coopr_types::UNLIMITED, coopr_types::UNLIMITED),
    });
    let deleted = h.create_ok("lamp", 1);
    h.drive();
    let active = h.create_ok("base", 1);
    h.drive();
    h.ok(Command::StartOperation {
        cluster: deleted,
        action: ClusterAction::ClusterDelete,
        services: vec![],
        config: None,
    });
    h.drive();
    let pending = h.create_ok("base", 1);
    let mut other_spec = spec(&h.state, "base", 1, &[]);
    other_spec.tenant = "other".into();
    let other = match h.ok(Command::CreateCluster {
        shard: ShardId(1),
        spec: Box::new(other_spec),
    }) {
        Outcome::ClusterCreated { id } => id,
        outcome => panic!("create: {outcome:?}"),
    };

    let check = |state: &State| {
        let mut scanned = BTreeMap::<ClusterStatus, u64>::new();
        for record in state.clusters() {
            *scanned.entry(record.cluster.status).or_default() += 1;
        }
        assert_eq!(state.cluster_counts(), &scanned);
        assert_eq!(
            scanned,
            BTreeMap::from([
                (ClusterStatus::Pending, 2),
                (ClusterStatus::Active, 1),
                (ClusterStatus::Terminated, 1),
            ])
        );
        let ids = |tenant: &str| {
            let mut ids: Vec<ClusterId> = state
                .tenant_clusters(tenant)
                .map(|r| r.cluster.id)
                .collect();
            ids.sort();
            ids
        };
        let mut acme = vec![deleted, active, pending];
        acme.sort();
        assert_eq!(ids(TENANT), acme);
        assert_eq!(ids("other"), vec![other]);
        assert_eq!(ids("nobody"), Vec::<ClusterId>::new());
    };
    check(&h.state);
    assert_eq!(h.status(deleted), ClusterStatus::Terminated);

    let parts = snapshot_of(&h.state, 0).parts;
    let restored = coopr_state::decode_parts(
        parts.iter().map(|(id, part)| (*id, part.bytes.as_slice())),
        4,
    )
    .unwrap();
    restored.check_indexes().unwrap();
    check(&restored);
}
