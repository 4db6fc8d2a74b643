//! Replication records (DESIGN section 4) with no I/O: commands are applied to an owner
//! [`State`], the records it emits are checked exactly, and a replica built from them (directly or
//! through `Command::ApplyReplicationBatch`) is compared with the owner's replicated view.

use std::collections::BTreeMap;

use coopr_state::{
    decode_parts, encode_entry, encode_parts, ApplyError, Command, CommandError, CommandResult,
    Entry, ErrorCode, Fence, GlobalRecord, Outcome, Position, ProvisionerInfo, Record, RecordKind,
    ReplicaShard, State, TaskResult,
};
use coopr_types::{
    ApiKey, ClusterAction, ClusterId, ClusterTemplate, EntityKind, ShardId, TaskId, TaskName,
    Tenant,
};
use serde_json::Value;

mod common;

use common::{entity, setup_commands, spec, tenant, CheckedApply, TENANT};
const TIMEOUT_MS: u64 = 60_000;
const SHARDS: u32 = 4;

/// An owner state plus a clock, recording every entry it applied, and the owner's replicated view
/// of each shard after every command that emitted records (by the seq of its last record).
///
/// Every command is checked against the rule that nothing changes what replicas see without a
/// record: a shard whose outbox did not move must have the same replicated view as before.
struct Owner {
    state: State,
    now_ms: u64,
    log: Vec<Entry>,
    views: BTreeMap<ShardId, BTreeMap<u64, Value>>,
    /// What workers report as a task's stdout.
    stdout: String,
}

impl Owner {
    fn new() -> Owner {
        let mut h = Owner {
            state: State::new(SHARDS),
            now_ms: 1_000_000,
            log: Vec::new(),
            views: BTreeMap::new(),
            stdout: "out".into(),
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
        let before = self.last_seqs();
        let debug = format!("{:?}", entry.command);
        let result = self.state.checked_apply(&entry);
        self.log.push(entry);
        for (shard, seq) in self.last_seqs() {
            let view = self.state.replicated_view(shard);
            let views = self.views.entry(shard).or_default();
            if before[&shard] != seq {
                views.insert(seq, view);
            } else {
                let previous = views
                    .get(&seq)
                    .cloned()
                    .unwrap_or_else(|| State::new(SHARDS).replicated_view(shard));
                assert_eq!(
                    view, previous,
                    "{debug} changed shard {shard} for replicas without a record"
                );
            }
        }
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

    /// The last seq assigned in every outbox.
    fn last_seqs(&self) -> BTreeMap<ShardId, u64> {
        (0..SHARDS)
            .map(ShardId)
            .chain([ShardId::GLOBAL])
            .map(|s| (s, self.state.outbox(s).unwrap().last_position().seq))
            .collect()
    }

    fn records(&self, shard: ShardId) -> Vec<Record> {
        self.state
            .outbox(shard)
            .unwrap()
            .records
            .iter()
            .cloned()
            .collect()
    }

    fn create_in(&mut self, shard: u32, template: &str, machines: u32) -> ClusterId {
        let spec = spec(&self.state, template, machines, &[]);
        match self.apply(Command::CreateCluster {
            shard: ShardId(shard),
            spec: Box::new(spec),
        }) {
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
            stdout: self.stdout.clone(),
            stderr: String::new(),
            hostname: Some(format!("host-{}", task.seq)),
            ipaddresses: Some(BTreeMap::from([(
                "access_v4".into(),
                format!("10.0.0.{}", task.seq),
            )])),
            result: serde_json::Map::from_iter([(
                "providerid".into(),
                Value::from(format!("i-{task}")),
            )]),
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

    fn task_name(&self, task: TaskId) -> TaskName {
        self.state.task(task).unwrap().task_name
    }
}

fn kinds(records: &[Record]) -> Vec<&'static str> {
    records.iter().map(|r| r.kind.name()).collect()
}

fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).unwrap().len()
}

/// A tiny deterministic generator (xorshift64*), so batch sizes are random but reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The record stream of one 3-machine lamp create driven to ACTIVE is exactly: one
/// OperationStarted (the completed layout job is no record), one OperationCheckpoint per CREATE
/// (3), one OperationFinished, at seqs 1..=5 of epoch 1 in the cluster's shard; nothing else (no
/// take, no other task result) crosses DCs.
#[test]
fn lamp_create_emits_started_three_checkpoints_finished() {
    let mut h = Owner::new();
    let id = h.create_in(1, "lamp", 3);
    let ran = h.drive();
    assert!(ran > 3);
    let records = h.records(ShardId(1));
    assert_eq!(
        kinds(&records),
        [
            "operation_started",
            "operation_checkpoint",
            "operation_checkpoint",
            "operation_checkpoint",
            "operation_finished"
        ]
    );
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.shard, ShardId(1));
        assert_eq!(record.epoch, 1);
        assert_eq!(record.seq, i as u64 + 1);
    }
    let RecordKind::OperationStarted {
        job, action, plan, ..
    } = &records[0].kind
    else {
        panic!("{:?}", records[0]);
    };
    assert_eq!(*action, ClusterAction::ClusterCreate);
    assert_eq!(job.seq, 2, "the create job, after the layout job");
    let planned: usize = plan.iter().flatten().map(|step| step.2.len()).sum();
    assert_eq!(planned, ran);
    let mut checkpointed = Vec::new();
    for record in &records[1..4] {
        let RecordKind::OperationCheckpoint {
            node,
            provisioner_results,
            ..
        } = &record.kind
        else {
            panic!("{record:?}");
        };
        assert!(provisioner_results["providerid"].is_string());
        checkpointed.push(node.clone());
    }
    checkpointed.sort();
    let nodes: Vec<_> = h.state.cluster(id).unwrap().nodes.keys().cloned().collect();
    assert_eq!(checkpointed, nodes, "one checkpoint per node");
    // Other shards saw nothing.
    for shard in [0, 2, 3] {
        assert!(h.records(ShardId(shard)).is_empty());
    }
}

/// The cross-DC bytes of a lamp create (3 machines) against its DC-log bytes: serialized records
/// against the serialized log entries (`encode_entry`) of the create and its takes and finishes.
/// Measured twice: with the harness's 3-byte task output (the worst case: the log holds almost
/// nothing but the records' own content) and with 1 KiB of output per task result (workers'
/// output is usually larger; the log keeps up to 8 KiB per action). Run with `--nocapture` to see
/// the figures; the bounds are the measured values rounded up.
#[test]
fn create_byte_ratio() {
    let measure = |stdout_bytes: usize| {
        let mut h = Owner::new();
        h.stdout = "x".repeat(stdout_bytes);
        let mark = h.log.len();
        h.create_in(1, "lamp", 3);
        h.drive();
        let log_bytes: usize = h.log[mark..].iter().map(|e| encode_entry(e).len()).sum();
        let records = h.records(ShardId(1));
        let record_bytes: usize = records.iter().map(json_len).sum();
        let ratio = record_bytes as f64 / log_bytes as f64;
        println!(
            "lamp create, 3 machines, {stdout_bytes} B stdout per task: {} log entries, \
             {log_bytes} log bytes; {} records, {record_bytes} record bytes ({}); ratio {:.1}%",
            h.log.len() - mark,
            records.len(),
            records
                .iter()
                .map(|r| format!("{} {}", r.kind.name(), json_len(r)))
                .collect::<Vec<_>>()
                .join(", "),
            ratio * 100.0
        );
        ratio
    };
    let minimal = measure(3);
    assert!(minimal < 0.27, "{:.1}%", minimal * 100.0);
    let realistic = measure(1024);
    assert!(realistic < 0.08, "{:.1}%", realistic * 100.0);
}

/// The outboxes of a DC's cluster shards stay within the DC-wide bound as commands emit
/// records: the fullest drops its oldest, and a replica behind it is told to re-seed.
#[test]
fn the_outboxes_of_a_dc_stay_within_its_bound() {
    let mut h = Owner::new();
    h.state.set_outbox_capacity(6);
    for shard in [0, 1, 0] {
        h.create_in(shard, "lamp", 3);
        h.drive();
    }
    // Three creates emit 5 records each; 6 are kept: 3 in each shard (shard 0 wrote 10 and
    // dropped 7, shard 1 wrote 5 and dropped 2).
    let kept: Vec<(usize, u64)> = [0, 1]
        .map(|s| {
            let outbox = h.state.outbox(ShardId(s)).unwrap();
            (outbox.records.len(), outbox.dropped_through_seq)
        })
        .to_vec();
    assert_eq!(kept, [(3, 7), (3, 2)]);
    assert!(matches!(
        h.state.outbox(ShardId(0)).unwrap().read_after(0, 100),
        Err(coopr_state::replication::ReadError::Gone { .. })
    ));
}

/// Builds an owner history with every kind of record: creates in two shards, a failed CONFIRM
/// (node replaced, so a second CREATE checkpoints mid-job), pause/resume, a task timeout, an
/// abort with a late CREATE result, expire time and template sync, service operations, add
/// services, delete, and catalog writes.
fn busy_owner() -> Owner {
    let mut h = Owner::new();
    let a = h.create_in(0, "lamp", 3);
    h.drive();
    h.ok(Command::SetExpireTime {
        cluster: a,
        expire_time: 5_000_000,
    });

    // Cluster b: its first CONFIRM fails once (the node is replaced: DELETE, CREATE, CONFIRM);
    // paused and resumed on the way; a task times out once.
    let b = h.create_in(1, "lamp", 2);
    h.ok(Command::Pause { cluster: b });
    h.ok(Command::Resume { cluster: b });
    let mut failed_confirm = false;
    let mut timed_out = false;
    while let Some(task) = h.take() {
        if !failed_confirm && h.task_name(task) == TaskName::Confirm {
            failed_confirm = true;
            h.finish(task, 1).unwrap();
            continue;
        }
        if !timed_out && h.task_name(task) == TaskName::Install {
            timed_out = true;
            h.now_ms += TIMEOUT_MS;
            h.ok(Command::ExpireTasks);
            continue;
        }
        h.finish(task, 0).unwrap();
    }
    assert!(failed_confirm && timed_out);
    h.ok(Command::StartOperation {
        cluster: b,
        action: ClusterAction::RestartServices,
        services: vec![],
        config: None,
    });
    h.drive();
    let mut template: ClusterTemplate = entity(&h.state, EntityKind::Clustertemplates, "lamp");
    template.description = "lamp, revised".into();
    h.ok(Command::SyncTemplate {
        cluster: b,
        template: Box::new(template),
    });
    let mut config = serde_json::Map::new();
    config.insert("k".into(), Value::from("v"));
    h.ok(Command::StartOperation {
        cluster: b,
        action: ClusterAction::ClusterConfigure,
        services: vec![],
        config: Some(config),
    });
    h.drive();

    // Cluster c: aborted with both CREATEs in progress. One result arrives late with no job in
    // flight, the other one while the delete that follows is running.
    let c = h.create_in(1, "base", 2);
    let creates = [h.take().unwrap(), h.take().unwrap()];
    assert!(creates.iter().all(|t| h.task_name(*t) == TaskName::Create));
    h.ok(Command::Abort { cluster: c });
    h.finish(creates[0], 0).unwrap();
    h.ok(Command::StartOperation {
        cluster: c,
        action: ClusterAction::ClusterDelete,
        services: vec![],
        config: None,
    });
    let delete = h.take().unwrap();
    h.finish(creates[1], 0).unwrap();
    h.finish(delete, 0).unwrap();
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
        .cluster(a)
        .unwrap()
        .nodes
        .keys()
        .next()
        .unwrap()
        .clone();
    h.ok(Command::AddServices {
        cluster: a,
        services: vec!["redis".into()],
        placement: BTreeMap::from([(node, vec!["redis".to_string()])]),
    });
    // Left in flight: a's add_services job half done.
    let task = h.take().unwrap();
    h.finish(task, 0).unwrap();
    h.ok(Command::DeleteEntity {
        tenant: TENANT.into(),
        kind: EntityKind::Services,
        name: "redis".into(),
        version: None,
    });
    h.ok(Command::PutTenant {
        tenant: tenant("other", 1, 1),
    });
    h.ok(Command::DeleteTenant {
        name: "other".into(),
    });
    h
}

/// Prefix replicas: applying the owner's records in batches of random (seeded) sizes, after every
/// batch that ends where a command's records end the replica's view equals the owner's view as
/// it was right after that command, and at the end it equals the owner's current view; for every
/// cluster shard and the global shard.
#[test]
fn replica_equals_owner_at_every_position() {
    let h = busy_owner();
    for seed in [1u64, 7, 42, 1234] {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for shard in [ShardId(0), ShardId(1), ShardId::GLOBAL] {
            let records = h.records(shard);
            let views = &h.views[&shard];
            let mut replica = ReplicaShard::new(shard, "dc-a");
            let mut at = 0;
            let mut checked = 0;
            while at < records.len() {
                let size = 1 + rng.below(4) as usize;
                let batch = &records[at..(at + size).min(records.len())];
                replica.apply_batch(batch).expect("in-order batch applies");
                at += batch.len();
                assert_eq!(replica.watermark.seq, at as u64);
                if let Some(view) = views.get(&(at as u64)) {
                    assert_eq!(&replica.view(), view, "shard {shard} at seq {at}");
                    checked += 1;
                }
            }
            assert!(checked > 0);
            assert_eq!(
                replica.view(),
                h.state.replicated_view(shard),
                "shard {shard} at the end (seed {seed})"
            );
        }
    }
    // The history left one operation in flight: the replicas hold its restart state.
    let view = h.state.replicated_view(ShardId(0));
    let in_flight: Vec<_> = view["clusters"]
        .as_object()
        .unwrap()
        .values()
        .filter(|c| !c["in_flight"].is_null())
        .collect();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0]["in_flight"]["action"], "add_services");
}

/// A batch that does not continue the watermark exactly (gap, duplicate, partial overlap, other
/// epoch, other shard, non-consecutive seqs) or that cannot be applied is refused and changes
/// nothing.
#[test]
fn out_of_order_batches_are_refused_and_change_nothing() {
    let h = busy_owner();
    let records = h.records(ShardId(1));
    assert!(records.len() > 6);
    let mut replica = ReplicaShard::new(ShardId(1), "dc-a");
    replica.apply_batch(&records[..3]).unwrap();
    let before = replica.clone();

    let refused = |replica: &mut ReplicaShard, batch: &[Record]| {
        let err = replica.apply_batch(batch).unwrap_err();
        assert_eq!(*replica, before, "{err} changed the replica");
        err
    };
    assert_eq!(
        refused(&mut replica, &records[4..6]),
        ApplyError::OutOfOrder {
            expected: 4,
            found: 5
        }
    );
    assert!(matches!(
        refused(&mut replica, &records[1..3]),
        ApplyError::AlreadyApplied { last_seq: 3, .. }
    ));
    assert!(matches!(
        refused(&mut replica, &records[2..5]),
        ApplyError::OutOfOrder {
            expected: 4,
            found: 3
        }
    ));
    let skipping = [records[3].clone(), records[5].clone()];
    assert!(matches!(
        refused(&mut replica, &skipping),
        ApplyError::OutOfOrder {
            expected: 5,
            found: 6
        }
    ));
    let mut other_epoch = records[3].clone();
    other_epoch.epoch = 2;
    assert!(matches!(
        refused(&mut replica, &[other_epoch]),
        ApplyError::WrongEpoch { found: 2, .. }
    ));
    let mut other_shard = records[3].clone();
    other_shard.shard = ShardId(2);
    assert!(matches!(
        refused(&mut replica, &[other_shard]),
        ApplyError::WrongShard { .. }
    ));
    // A good record followed by one that does not fit: the good one is not kept either.
    let mut unfit = records[4].clone();
    unfit.kind = RecordKind::Global(GlobalRecord::TenantDeleted("x".into()));
    assert!(matches!(
        refused(&mut replica, &[records[3].clone(), unfit]),
        ApplyError::Unappliable { seq: 5, .. }
    ));
    // The stream still continues where it stopped.
    replica.apply_batch(&records[3..]).unwrap();
    assert_eq!(replica.view(), h.state.replicated_view(ShardId(1)));
}

/// `Command::ApplyReplicationBatch` through `State::apply` applies a batch to the local replica
/// atomically with its watermark; applying the same batch again is a no-op (`Unchanged`, nothing
/// changes), so a puller can re-propose a batch whose commit it did not see. Out-of-order
/// batches and batches from another DC are refused (409) and change nothing.
#[test]
fn apply_batch_command_is_exactly_once() {
    let owner = busy_owner();
    let records = owner.records(ShardId(1));
    let mut dc_b = State::new(SHARDS);
    let apply = |state: &mut State, from_dc: &str, batch: &[Record]| {
        state.checked_apply(&Entry {
            now_ms: 1,
            idempotency_key: None,
            fence: None,
            command: Command::ApplyReplicationBatch {
                from_dc: from_dc.into(),
                shard: ShardId(1),
                records: batch.to_vec(),
                epoch_start: None,
            },
        })
    };
    let (first, rest) = records.split_at(4);
    assert_eq!(apply(&mut dc_b, "dc-a", first), Ok(Outcome::Done));
    assert_eq!(
        dc_b.replica(ShardId(1)).unwrap().watermark,
        Position { epoch: 1, seq: 4 }
    );
    let after_first = encode_parts(&dc_b);
    assert_eq!(apply(&mut dc_b, "dc-a", first), Ok(Outcome::Unchanged));
    assert_eq!(
        encode_parts(&dc_b),
        after_first,
        "a second apply changes nothing"
    );

    let err = apply(&mut dc_b, "dc-a", &rest[1..]).unwrap_err();
    assert_eq!(err.code(), "replication_out_of_order");
    assert_eq!(err.http_status(), 409);
    let err = apply(&mut dc_b, "dc-c", rest).unwrap_err();
    assert_eq!(err.code(), "replication_wrong_owner");
    assert_eq!(encode_parts(&dc_b), after_first);

    assert_eq!(apply(&mut dc_b, "dc-a", rest), Ok(Outcome::Done));
    assert_eq!(
        dc_b.replica(ShardId(1)).unwrap().view(),
        owner.state.replicated_view(ShardId(1))
    );
    // The replica's DC emitted nothing of its own.
    assert!(dc_b.outbox(ShardId(1)).unwrap().records.is_empty());
    // A first batch that fails leaves no empty replica behind.
    let mut dc_c = State::new(SHARDS);
    assert!(apply(&mut dc_c, "dc-a", &records[1..]).is_err());
    assert!(dc_c.replica(ShardId(1)).is_none());
}

/// Rejected commands emit nothing, and neither do DC-local transitions: take, a failed attempt
/// that is retried, a timeout that does not end the job, pause, resume, provisioner
/// registration, an idempotent replay, a trim.
#[test]
fn rejected_and_dc_local_commands_emit_nothing() {
    let mut h = Owner::new();
    h.ok(Command::PutTenant {
        tenant: tenant(TENANT, 1, 3),
    });
    let id = h.create_in(0, "lamp", 3);
    let seqs = h.last_seqs();
    let records_before = h.records(ShardId(0));

    // Rejected: over quota, delete of a pending cluster, unknown cluster, unknown provisioner,
    // a sync of a pending cluster, a key for an unknown tenant, a create-only entity that exists.
    let spec = spec(&h.state, "base", 1, &[]);
    assert!(h
        .apply(Command::CreateCluster {
            shard: ShardId(0),
            spec: Box::new(spec),
        })
        .is_err());
    assert!(h
        .apply(Command::StartOperation {
            cluster: id,
            action: ClusterAction::ClusterDelete,
            services: vec![],
            config: None,
        })
        .is_err());
    assert!(h
        .apply(Command::SetExpireTime {
            cluster: ClusterId(999),
            expire_time: 1,
        })
        .is_err());
    let template: ClusterTemplate = entity(&h.state, EntityKind::Clustertemplates, "lamp");
    assert!(h
        .apply(Command::SyncTemplate {
            cluster: id,
            template: Box::new(template),
        })
        .is_err());
    assert!(matches!(
        h.apply(Command::PutApiKey {
            key: ApiKey {
                tenant: "nobody".into(),
                user: None,
                key_sha256: "x".into(),
            },
        }),
        Err(CommandError::NotFound { .. })
    ));
    assert!(h
        .apply(Command::PutEntity {
            tenant: TENANT.into(),
            kind: EntityKind::Services,
            name: "base".into(),
            body: serde_json::json!({"name": "base"}),
            create_only: true,
        })
        .is_err());
    assert!(h
        .apply(Command::TrimOutbox {
            shard: ShardId(0),
            through_seq: 99,
        })
        .is_err());

    // DC-local: take, retry, timeout without job end, pause, resume, provisioners, replay.
    let task = h.take().unwrap();
    assert_eq!(h.task_name(task), TaskName::Create);
    h.finish(task, 1).unwrap(); // failed attempt, retried
    let again = h.take().unwrap();
    h.now_ms += TIMEOUT_MS;
    assert_eq!(
        h.ok(Command::ExpireTasks),
        Outcome::TasksExpired { count: 1 }
    );
    assert_eq!(h.state.task(again).unwrap().attempts, 2);
    h.ok(Command::Pause { cluster: id });
    h.ok(Command::Resume { cluster: id });
    h.ok(Command::RegisterProvisioner {
        info: ProvisionerInfo {
            id: "p2".into(),
            host: "h".into(),
            port: 2,
            capacity_total: 1,
        },
    });
    h.ok(Command::ReleaseProvisioner { id: "p2".into() });
    h.ok(Command::UnregisterProvisioner { id: "p2".into() });
    let pause = Command::Pause { cluster: id };
    h.apply_keyed(pause.clone(), Some("k")).unwrap();
    h.apply_keyed(pause, Some("k")).unwrap();
    h.ok(Command::Resume { cluster: id });
    assert_eq!(h.last_seqs(), seqs, "no outbox moved");
    assert_eq!(h.records(ShardId(0)), records_before);

    // A trim emits nothing either; it removes what was acknowledged.
    assert_eq!(
        h.ok(Command::TrimOutbox {
            shard: ShardId(0),
            through_seq: 1,
        }),
        Outcome::Done
    );
    assert!(h.records(ShardId(0)).is_empty());
    assert_eq!(h.last_seqs(), seqs);
    assert_eq!(
        h.ok(Command::TrimOutbox {
            shard: ShardId(0),
            through_seq: 1,
        }),
        Outcome::Unchanged
    );
}

/// Tenant, key and catalog writes emit global records, in commit order, into the global shard's
/// outbox only; a replica of the global shard built from them equals the owner's global shard.
#[test]
fn global_writes_emit_global_records() {
    let mut h = Owner::new();
    let names: Vec<&str> = h
        .records(ShardId::GLOBAL)
        .iter()
        .map(|r| match &r.kind {
            RecordKind::Global(GlobalRecord::TenantPut(_)) => "tenant_put",
            RecordKind::Global(GlobalRecord::ApiKeyPut(_)) => "api_key_put",
            RecordKind::Global(GlobalRecord::CatalogImported { .. }) => "catalog_imported",
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["tenant_put", "api_key_put", "catalog_imported"]);
    let version = match h.ok(Command::PutEntity {
        tenant: TENANT.into(),
        kind: EntityKind::Services,
        name: "base".into(),
        body: serde_json::json!({"name": "base", "description": "v2"}),
        create_only: false,
    }) {
        Outcome::EntityVersion { version } => version,
        other => panic!("{other:?}"),
    };
    assert_eq!(version, 2);
    h.ok(Command::DeleteEntity {
        tenant: TENANT.into(),
        kind: EntityKind::Services,
        name: "base".into(),
        version: Some(1),
    });
    h.ok(Command::PutTenant {
        tenant: tenant("other", 1, 1),
    });
    h.ok(Command::DeleteTenant {
        name: "other".into(),
    });
    let records = h.records(ShardId::GLOBAL);
    assert_eq!(records.len(), 7);
    assert!(matches!(
        &records[3].kind,
        RecordKind::Global(GlobalRecord::EntityPut { version: 2, body, .. }) if body["version"] == 2
    ));
    for shard in 0..SHARDS {
        assert!(h.records(ShardId(shard)).is_empty());
    }
    let mut replica = ReplicaShard::new(ShardId::GLOBAL, "dc-a");
    replica.apply_batch(&records).unwrap();
    assert_eq!(replica.view(), h.state.replicated_view(ShardId::GLOBAL));
    assert!(replica.view()["catalogs"][TENANT]["entities"]["services"]["base"]["2"].is_object());
}

/// A snapshot (encode_parts/decode_parts) keeps every outbox (epoch, next seq, records), every
/// in-flight operation as shipped, and every replica with its watermark: the decoded state
/// continues the streams exactly where the original would.
#[test]
fn snapshot_keeps_outboxes_epochs_and_watermarks() {
    let owner = busy_owner();
    let mut dc_b = State::new(SHARDS);
    for shard in [ShardId(1), ShardId::GLOBAL] {
        let records = owner.records(shard);
        dc_b.checked_apply(&Entry {
            now_ms: 1,
            idempotency_key: None,
            fence: None,
            command: Command::ApplyReplicationBatch {
                from_dc: "dc-a".into(),
                shard,
                records: records[..records.len() - 1].to_vec(),
                epoch_start: None,
            },
        })
        .unwrap();
    }
    for state in [&owner.state, &dc_b] {
        let parts = encode_parts(state);
        let decoded = decode_parts(parts.iter().map(|(k, v)| (*k, v.as_slice())), SHARDS).unwrap();
        assert_eq!(encode_parts(&decoded), parts);
        for shard in (0..SHARDS).map(ShardId).chain([ShardId::GLOBAL]) {
            assert_eq!(decoded.outbox(shard), state.outbox(shard));
            assert_eq!(decoded.replica(shard), state.replica(shard));
            assert_eq!(decoded.replicated_view(shard), state.replicated_view(shard));
        }
    }
    let replica = dc_b.replica(ShardId(1)).unwrap();
    let last = owner.records(ShardId(1)).len() as u64;
    assert_eq!(
        replica.watermark,
        Position {
            epoch: 1,
            seq: last - 1
        }
    );
    assert_eq!(replica.owner_dc, "dc-a");
    assert_eq!(owner.state.outbox(ShardId(1)).unwrap().epoch, 1);
    assert_eq!(owner.state.outbox(ShardId(1)).unwrap().next_seq, last + 1);

    // The owner, restored from its snapshot, keeps numbering where it left off.
    let parts = encode_parts(&owner.state);
    let mut restored = decode_parts(parts.iter().map(|(k, v)| (*k, v.as_slice())), SHARDS).unwrap();
    let id = owner.state.shards[&ShardId(1)]
        .clusters
        .keys()
        .next()
        .copied()
        .unwrap();
    restored
        .checked_apply(&Entry {
            now_ms: 2,
            idempotency_key: None,
            fence: None,
            command: Command::SetExpireTime {
                cluster: id,
                expire_time: 9,
            },
        })
        .unwrap();
    let outbox = restored.outbox(ShardId(1)).unwrap();
    assert_eq!(outbox.records.back().unwrap().seq, last + 1);
}

/// Applies `records` of `shard` from `from_dc` to `state` as one replication batch.
fn ship(
    state: &mut State,
    from_dc: &str,
    shard: ShardId,
    records: &[Record],
    start: Option<Position>,
) -> CommandResult {
    state.checked_apply(&Entry {
        now_ms: 1,
        idempotency_key: None,
        fence: None,
        command: Command::ApplyReplicationBatch {
            from_dc: from_dc.into(),
            shard,
            records: records.to_vec(),
            epoch_start: start,
        },
    })
}

/// An aborted handover lifts the freeze: after `UnfreezeShard` of the handover that froze the
/// shard, fenced writes are accepted again; an unfreeze naming another handover changes
/// nothing (the shard stays frozen for the newer one).
#[test]
fn an_aborted_handover_unfreezes_the_shard() {
    let shard = ShardId(1);
    let mut a = Owner::new();
    let id = a.create_in(1, "base", 1);
    a.drive();
    let write = |now_ms, expire_time| Entry {
        now_ms,
        idempotency_key: None,
        fence: Some(Fence { shard, epoch: 1 }),
        command: Command::SetExpireTime {
            cluster: id,
            expire_time,
        },
    };
    assert_eq!(
        a.ok(Command::FreezeShard { shard, handover: 3 }),
        Outcome::Done
    );
    assert_eq!(
        a.ok(Command::UnfreezeShard { shard, handover: 2 }),
        Outcome::Unchanged
    );
    let now = a.now_ms + 1;
    match a.state.checked_apply(&write(now, 5)) {
        Err(CommandError::Conflict { code, .. }) => assert_eq!(code, ErrorCode::HandingOver),
        other => panic!("write to a frozen shard: {other:?}"),
    }
    assert_eq!(
        a.ok(Command::UnfreezeShard { shard, handover: 3 }),
        Outcome::Done
    );
    let now = a.now_ms + 1;
    assert!(a.state.checked_apply(&write(now, 6)).is_ok());
}

/// A graceful handover of a shard between two DCs, at the state level: the owner freezes it
/// (refused while an operation runs; afterwards fenced writes are refused), the replica that
/// has every record adopts it in the next epoch, the old owner releases it into a replica copy
/// at its last position, and the new owner's first records (seq 1 of epoch 2) continue that
/// copy. Both copies stay equal, and the adopted clusters keep their IDs, nodes and history.
#[test]
fn handover_moves_a_shard_and_the_streams_follow() {
    let shard = ShardId(1);
    let mut a = Owner::new();
    let id = a.create_in(1, "lamp", 2);
    // An operation is running: the shard cannot be frozen yet.
    match a.apply(Command::FreezeShard { shard, handover: 1 }) {
        Err(CommandError::Conflict { code, .. }) => assert_eq!(code, ErrorCode::ShardBusy),
        other => panic!("freeze while busy: {other:?}"),
    }
    a.drive();
    let mut b = State::new(SHARDS);
    for s in [ShardId::GLOBAL, shard] {
        assert_eq!(
            ship(&mut b, "dc-a", s, &a.records(s), None),
            Ok(Outcome::Done)
        );
    }
    let until = a.state.outbox(shard).unwrap().last_position();
    // b cannot adopt before it has everything a wrote.
    let adopt = |epoch, after| Entry {
        now_ms: 2,
        idempotency_key: None,
        fence: None,
        command: Command::AdoptShard {
            shard,
            epoch,
            after,
        },
    };
    let behind = Position {
        epoch: 1,
        seq: until.seq + 1,
    };
    assert!(b.checked_apply(&adopt(2, behind)).is_err());

    assert_eq!(
        a.ok(Command::FreezeShard { shard, handover: 1 }),
        Outcome::Done
    );
    let fenced = Entry {
        now_ms: a.now_ms + 1,
        idempotency_key: None,
        fence: Some(Fence { shard, epoch: 1 }),
        command: Command::SetExpireTime {
            cluster: id,
            expire_time: 5,
        },
    };
    match a.state.checked_apply(&fenced) {
        Err(CommandError::Conflict { code, .. }) => assert_eq!(code, ErrorCode::HandingOver),
        other => panic!("write to a frozen shard: {other:?}"),
    }
    assert_eq!(b.checked_apply(&adopt(2, until)), Ok(Outcome::Done));
    assert_eq!(b.replica(shard), None);
    assert_eq!(b.shard_epoch(shard), Some(2));
    assert_eq!(
        a.ok(Command::ReleaseShard {
            shard,
            owner_dc: "dc-b".into()
        }),
        Outcome::Done
    );
    assert_eq!(a.state.replica(shard).unwrap().watermark, until);
    assert_eq!(
        a.state.replica(shard).unwrap().view(),
        b.replicated_view(shard)
    );
    assert!(b.cluster(id).is_some(), "the cluster moved with its ID");

    // b writes the shard in epoch 2; a follows from exactly where a stopped.
    let entry = Entry {
        now_ms: 3,
        idempotency_key: None,
        fence: Some(Fence { shard, epoch: 2 }),
        command: Command::SetExpireTime {
            cluster: id,
            expire_time: 4_000_000,
        },
    };
    assert!(b.checked_apply(&entry).is_ok());
    let outbox = b.outbox(shard).unwrap();
    let records: Vec<Record> = outbox.records.iter().cloned().collect();
    assert_eq!(records[0].position(), Position { epoch: 2, seq: 1 });
    // Without the epoch start (or from the wrong place) the batch is refused.
    assert!(ship(&mut a.state, "dc-b", shard, &records, None).is_err());
    assert_eq!(
        ship(&mut a.state, "dc-b", shard, &records, outbox.started_after),
        Ok(Outcome::Done)
    );
    assert_eq!(a.state.replica(shard).unwrap().owner_dc, "dc-b");
    assert_eq!(
        a.state.replica(shard).unwrap().view(),
        b.replicated_view(shard)
    );
    // Fenced writes to the released shard are refused at a whatever the epoch.
    for epoch in [1, 2] {
        let mut stale = entry.clone();
        stale.fence = Some(Fence { shard, epoch });
        assert!(a.state.checked_apply(&stale).is_err());
    }
}

/// A shard handed over and back before its new owner wrote anything: the second owner's epoch
/// has no record, so its history ends where the first owner's did. The freeze report, the
/// adoption and the release all use that position, and the first owner's next records (epoch
/// 3, seq 1) continue the second owner's copy from it.
#[test]
fn handover_and_back_before_any_write() {
    let shard = ShardId(1);
    let mut a = Owner::new();
    let id = a.create_in(1, "base", 1);
    a.drive();
    let mut b = State::new(SHARDS);
    for s in [ShardId::GLOBAL, shard] {
        assert_eq!(
            ship(&mut b, "dc-a", s, &a.records(s), None),
            Ok(Outcome::Done)
        );
    }
    let until = a.state.outbox(shard).unwrap().last_position();
    let entry = |command| Entry {
        now_ms: 2,
        idempotency_key: None,
        fence: None,
        command,
    };
    a.ok(Command::FreezeShard { shard, handover: 1 });
    b.checked_apply(&entry(Command::AdoptShard {
        shard,
        epoch: 2,
        after: until,
    }))
    .unwrap();
    a.ok(Command::ReleaseShard {
        shard,
        owner_dc: "dc-b".into(),
    });
    // Back to a, with nothing written in epoch 2.
    let b_outbox = b.outbox(shard).unwrap();
    assert_eq!(b_outbox.last_position(), Position { epoch: 2, seq: 0 });
    assert_eq!(b_outbox.history_position(), until);
    b.checked_apply(&entry(Command::FreezeShard { shard, handover: 2 }))
        .unwrap();
    // (Straight to the state: the harness flags view changes without records, which an
    // ownership change is.)
    a.state
        .checked_apply(&entry(Command::AdoptShard {
            shard,
            epoch: 3,
            after: until,
        }))
        .unwrap();
    b.checked_apply(&entry(Command::ReleaseShard {
        shard,
        owner_dc: "dc-a".into(),
    }))
    .unwrap();
    assert_eq!(b.replica(shard).unwrap().watermark, until);
    a.ok(Command::SetExpireTime {
        cluster: id,
        expire_time: 4_000_000,
    });
    let outbox = a.state.outbox(shard).unwrap();
    let records: Vec<Record> = outbox.records.iter().cloned().collect();
    assert_eq!(
        records.last().unwrap().position(),
        Position { epoch: 3, seq: 1 }
    );
    assert_eq!(
        ship(&mut b, "dc-a", shard, &records, outbox.started_after),
        Ok(Outcome::Done)
    );
    assert_eq!(
        b.replica(shard).unwrap().view(),
        a.state.replicated_view(shard)
    );
}

fn at(state: &mut State, now_ms: u64, command: Command) -> CommandResult {
    state.checked_apply(&Entry {
        now_ms,
        idempotency_key: None,
        fence: None,
        command,
    })
}

/// Takes and finishes (all OK) every task of a state that has no harness; returns the task
/// names that ran.
fn drive_bare(state: &mut State, now_ms: &mut u64) -> Vec<TaskName> {
    let mut ran = Vec::new();
    loop {
        *now_ms += 1;
        let taken = at(
            state,
            *now_ms,
            Command::TakeTask {
                provisioner_id: "p1".into(),
                worker_id: "w1".into(),
                tenant_id: None,
                timeout_ms: TIMEOUT_MS,
                shards: None,
            },
        );
        let Ok(Outcome::TaskTaken { task: Some(task) }) = taken else {
            return ran;
        };
        ran.push(state.task(task).unwrap().task_name);
        *now_ms += 1;
        let result = TaskResult {
            provisioner_id: "p1".into(),
            worker_id: "w1".into(),
            task,
            status: 0,
            stdout: String::new(),
            stderr: String::new(),
            hostname: Some(format!("b-host-{}", task.seq)),
            ipaddresses: None,
            result: Default::default(),
        };
        at(state, *now_ms, Command::FinishTask(Box::new(result))).expect("finish");
        assert!(ran.len() < 1000, "the job never ends");
    }
}

/// Failover at the state level. The candidate seals its copy (nothing more of the old epoch
/// applies), adopts it in the next epoch and resumes the operation in flight from its plan,
/// skipping the CREATEs whose machines checkpoints prove; the job finishes there. The old
/// owner, back, demotes the shard: what it wrote after the takeover point is in its
/// lost-operations report with tenant, cluster and job, its running job stops, and its copy
/// waits for a snapshot of the new owner's shard, after which it follows the new epoch.
#[test]
fn failover_resumes_in_flight_work_and_reports_what_was_lost() {
    let shard = ShardId(1);
    let mut a = Owner::new();
    let id = a.create_in(1, "lamp", 3);
    let creates: Vec<TaskId> = (0..3).map(|_| a.take().unwrap()).collect();
    assert!(creates.iter().all(|t| a.task_name(*t) == TaskName::Create));
    a.finish(creates[0], 0).unwrap();
    a.finish(creates[1], 0).unwrap();
    let mut b = second_dc(&a);
    let shipped = a.records(shard);
    assert_eq!(
        kinds(&shipped),
        [
            "operation_started",
            "operation_checkpoint",
            "operation_checkpoint"
        ]
    );
    ship(&mut b, "dc-a", shard, &shipped, None).unwrap();
    let point = b.replica(shard).unwrap().watermark;
    assert_eq!(point, Position { epoch: 1, seq: 3 });

    // a goes on writing while it is cut off: none of this reaches b.
    a.finish(creates[2], 0).unwrap();
    let second = a.create_in(1, "base", 1);
    a.ok(Command::SetExpireTime {
        cluster: id,
        expire_time: 7_000_000,
    });
    let unshipped: Vec<Record> = a
        .records(shard)
        .into_iter()
        .filter(|r| r.position() > point)
        .collect();

    // b is asked to take over: sealed, its copy ends at `point` whatever arrives later.
    let seal = Command::SealReplica {
        shard,
        owner_dc: "dc-a".into(),
        takeover: 1,
    };
    assert_eq!(at(&mut b, 2, seal.clone()), Ok(Outcome::Done));
    assert_eq!(at(&mut b, 2, seal), Ok(Outcome::Unchanged));
    let before = b.replica(shard).cloned();
    match ship(&mut b, "dc-a", shard, &unshipped, None) {
        Err(CommandError::Conflict { code, .. }) => assert_eq!(code, ErrorCode::ReplicationSealed),
        other => panic!("a sealed copy took records: {other:?}"),
    }
    assert_eq!(b.replica(shard).cloned(), before);

    // b adopts at the takeover point and runs the rest of the create.
    let adopted = at(
        &mut b,
        3,
        Command::AdoptShard {
            shard,
            epoch: 2,
            after: point,
        },
    );
    assert_eq!(adopted, Ok(Outcome::Done));
    assert_eq!(b.cluster(id).unwrap().cluster.status.to_string(), "pending");
    let mut now = 10;
    let ran = drive_bare(&mut b, &mut now);
    let created = ran.iter().filter(|t| **t == TaskName::Create).count();
    assert_eq!(
        created, 1,
        "only the CREATE without a checkpoint runs again: {ran:?}"
    );
    assert!(ran.contains(&TaskName::Confirm) && ran.contains(&TaskName::Start));
    let record = b.cluster(id).unwrap();
    assert_eq!(record.cluster.status.to_string(), "active");
    assert_eq!(
        record.cluster.latest_job_id,
        Some(record.jobs.values().next().unwrap().job.id)
    );
    let b_records: Vec<Record> = b.outbox(shard).unwrap().records.iter().cloned().collect();
    assert_eq!(b_records[0].position(), Position { epoch: 2, seq: 1 });
    assert_eq!(kinds(&b_records).last(), Some(&"operation_finished"));

    // a is back: it demotes the shard.
    let busy_before = a.state.shard_busy(shard);
    assert!(busy_before, "a was still running the second create");
    let demoted = at(
        &mut a.state,
        a.now_ms + 1,
        Command::DemoteShard {
            shard,
            owner_dc: "dc-b".into(),
            keep_through: point,
        },
    );
    assert_eq!(demoted, Ok(Outcome::Done));
    assert!(!a.state.shard_busy(shard), "a's jobs of the shard stopped");
    assert!(a.state.cluster(second).is_none());
    let (lost, total) = a.state.lost_operations();
    let lost: Vec<_> = lost.cloned().collect();
    assert_eq!(total, unshipped.len() as u64);
    assert_eq!(
        lost.iter()
            .map(|l| (l.seq, l.kind.as_str(), l.cluster))
            .collect::<Vec<_>>(),
        unshipped
            .iter()
            .map(|r| (
                r.seq,
                r.kind.name(),
                coopr_state::replication::record_cluster(r)
            ))
            .collect::<Vec<_>>()
    );
    assert!(lost.iter().all(|l| l.tenant.as_deref() == Some(TENANT)
        && l.new_owner == "dc-b"
        && l.takeover_point == point));
    assert!(lost
        .iter()
        .any(|l| l.cluster == Some(second) && l.job.is_some()));
    assert!(a.state.replica(shard).unwrap().needs_seed);
    // Its copy takes no records until seeded, and writes at the old epoch are refused.
    assert!(ship(&mut a.state, "dc-b", shard, &b_records, Some(point)).is_err());
    let stale = Entry {
        now_ms: a.now_ms + 2,
        idempotency_key: None,
        fence: Some(Fence { shard, epoch: 1 }),
        command: Command::SetExpireTime {
            cluster: id,
            expire_time: 1,
        },
    };
    assert!(a.state.checked_apply(&stale).is_err());

    // Seeded from b's shard, a's copy equals b's and follows b's next records.
    let seed = b.seed_of(shard, "dc-b").unwrap();
    assert_eq!(
        at(
            &mut a.state,
            a.now_ms + 3,
            Command::SeedReplica {
                seed: Box::new(seed)
            }
        ),
        Ok(Outcome::Done)
    );
    assert_eq!(
        a.state.replica(shard).unwrap().view(),
        b.replicated_view(shard)
    );
    let next = Entry {
        now_ms: now + 1,
        idempotency_key: None,
        fence: Some(Fence { shard, epoch: 2 }),
        command: Command::SetExpireTime {
            cluster: id,
            expire_time: 8_000_000,
        },
    };
    b.checked_apply(&next).unwrap();
    let newest: Vec<Record> = b
        .outbox(shard)
        .unwrap()
        .records
        .back()
        .cloned()
        .into_iter()
        .collect();
    assert_eq!(
        ship(&mut a.state, "dc-b", shard, &newest, None),
        Ok(Outcome::Done)
    );
    assert_eq!(
        a.state.replica(shard).unwrap().view(),
        b.replicated_view(shard)
    );
}

/// The global shard fails over like a cluster shard: the candidate's sealed copy of tenants,
/// keys and catalogs becomes its own global shard in the next epoch, and the DC then reads its
/// own data.
#[test]
fn the_global_shard_fails_over() {
    let a = Owner::new();
    let mut b = State::new(SHARDS);
    let records = a.records(ShardId::GLOBAL);
    ship(&mut b, "dc-a", ShardId::GLOBAL, &records, None).unwrap();
    let point = b.replica(ShardId::GLOBAL).unwrap().watermark;
    let view = b.replica(ShardId::GLOBAL).unwrap().view();
    at(
        &mut b,
        2,
        Command::SealReplica {
            shard: ShardId::GLOBAL,
            owner_dc: "dc-a".into(),
            takeover: 4,
        },
    )
    .unwrap();
    at(
        &mut b,
        3,
        Command::AdoptShard {
            shard: ShardId::GLOBAL,
            epoch: 2,
            after: point,
        },
    )
    .unwrap();
    assert!(b.replica(ShardId::GLOBAL).is_none());
    assert_eq!(b.replicated_view(ShardId::GLOBAL), view);
    assert!(b.global_data().tenants.contains_key(TENANT));
    assert_eq!(b.shard_epoch(ShardId::GLOBAL), Some(2));
}

/// A shard adopted in epoch e allocates cluster numbers from e * IDS_PER_EPOCH on: a cluster
/// the old owner created after the takeover point (lost, never seen by the new owner) can
/// never share its ID, nor its node IDs, with one the new owner creates.
#[test]
fn a_new_epoch_never_reuses_cluster_ids() {
    let shard = ShardId(1);
    let mut a = Owner::new();
    let first = a.create_in(1, "base", 1);
    let mut b = State::new(SHARDS);
    ship(
        &mut b,
        "dc-a",
        ShardId::GLOBAL,
        &a.records(ShardId::GLOBAL),
        None,
    )
    .unwrap();
    ship(&mut b, "dc-a", shard, &a.records(shard), None).unwrap();
    let point = b.replica(shard).unwrap().watermark;
    // a, cut off, creates another cluster: its ID is the next one of epoch 1.
    let lost = a.create_in(1, "base", 1);
    at(
        &mut b,
        2,
        Command::AdoptShard {
            shard,
            epoch: 2,
            after: point,
        },
    )
    .unwrap();
    let spec = common::spec(&a.state, "base", 1, &[]);
    let created = at(
        &mut b,
        3,
        Command::CreateCluster {
            shard,
            spec: Box::new(spec),
        },
    );
    let Ok(Outcome::ClusterCreated { id }) = created else {
        panic!("create at the new owner: {created:?}")
    };
    assert_ne!(id, lost);
    assert_ne!(id, first);
    assert_eq!(
        id,
        ClusterId::allocate(shard, SHARDS, 2 * coopr_state::IDS_PER_EPOCH)
    );
}

/// An idempotency key travels with its operation's `OperationStarted`: a replica that applied
/// the record answers the key with the owner's outcome (a create's cluster id, another
/// operation's job), and applying the same keyed create there creates nothing. The keys survive
/// the replica's snapshot, a seed of the owner's shard, and the adoption of the copy by a new
/// owner (then an exact demotion of the old owner keeps them in its replica copy).
#[test]
fn idempotency_keys_replicate_with_the_operation() {
    let shard = ShardId(1);
    let create_key = "acme/alice/POST /v2/clusters k1";
    let mut a = Owner::new();
    let spec = spec(&a.state, "base", 1, &[]);
    let create = Command::CreateCluster {
        shard,
        spec: Box::new(spec),
    };
    let created = a.apply_keyed(create.clone(), Some(create_key)).unwrap();
    let Outcome::ClusterCreated { id } = created else {
        panic!("create: {created:?}")
    };
    a.drive();
    let delete_key = format!("acme/alice/DELETE /v2/clusters/{id} k2");
    let deleted = a
        .apply_keyed(
            Command::StartOperation {
                cluster: id,
                action: ClusterAction::ClusterDelete,
                services: Vec::new(),
                config: None,
            },
            Some(&delete_key),
        )
        .unwrap();
    assert!(matches!(deleted, Outcome::JobStarted { .. }));
    let records = a.records(shard);
    let carried: Vec<Option<&str>> = records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::OperationStarted {
                idempotency_key, ..
            } => Some(idempotency_key.as_deref()),
            _ => None,
        })
        .collect();
    assert_eq!(carried, [Some(create_key), Some(delete_key.as_str())]);

    // A replica knows both keys, and a retry of the create there changes nothing.
    let mut b = State::new(SHARDS);
    ship(
        &mut b,
        "dc-a",
        ShardId::GLOBAL,
        &a.records(ShardId::GLOBAL),
        None,
    )
    .unwrap();
    ship(&mut b, "dc-a", shard, &records, None).unwrap();
    assert_eq!(b.idempotent_outcome(create_key), Some(Ok(created.clone())));
    assert_eq!(b.idempotent_outcome(&delete_key), Some(Ok(deleted.clone())));
    assert_eq!(
        b.idempotent_outcome("acme/alice/POST /v2/clusters k9"),
        None
    );
    let own_shard = ShardId(2);
    let retried = b.checked_apply(&Entry {
        now_ms: 5,
        idempotency_key: Some(create_key.into()),
        fence: None,
        command: Command::CreateCluster {
            shard: own_shard,
            spec: Box::new(common::spec(&a.state, "base", 1, &[])),
        },
    });
    assert_eq!(retried, Ok(created.clone()));
    assert!(b.shards[&own_shard].clusters.is_empty(), "nothing created");

    // The replica's snapshot keeps them.
    let parts = encode_parts(&b);
    let decoded = decode_parts(parts.iter().map(|(k, v)| (*k, v.as_slice())), SHARDS).unwrap();
    assert_eq!(decoded.replica(shard), b.replica(shard));
    assert_eq!(
        decoded.idempotent_outcome(create_key),
        Some(Ok(created.clone()))
    );

    // A copy seeded from the owner's shard knows them.
    let mut c = State::new(SHARDS);
    let seed = a.state.seed_of(shard, "dc-a").unwrap();
    assert_eq!(seed.keys.len(), 2);
    at(
        &mut c,
        1,
        Command::SeedReplica {
            seed: Box::new(seed),
        },
    )
    .unwrap();
    assert_eq!(c.idempotent_outcome(&delete_key), Some(Ok(deleted.clone())));

    // b adopts the shard: the keys keep answering there, and go on into b's seeds.
    let point = b.replica(shard).unwrap().watermark;
    at(
        &mut b,
        6,
        Command::AdoptShard {
            shard,
            epoch: 2,
            after: point,
        },
    )
    .unwrap();
    assert!(b.replica(shard).is_none());
    assert_eq!(b.idempotent_outcome(create_key), Some(Ok(created.clone())));
    assert_eq!(b.idempotent_outcome(&delete_key), Some(Ok(deleted)));
    assert_eq!(b.seed_of(shard, "dc-b").unwrap().keys.len(), 2);

    // a releases the shard with nothing lost: its replica copy keeps the keys.
    at(
        &mut a.state,
        a.now_ms + 1,
        Command::DemoteShard {
            shard,
            owner_dc: "dc-b".into(),
            keep_through: point,
        },
    )
    .unwrap();
    let copy = a.state.replica(shard).unwrap();
    assert!(!copy.needs_seed);
    assert_eq!(copy.keys.get(create_key), Some(&created));
}

/// A create applied after the takeover point is lost with its key: the old owner's
/// lost-operations report names the key, and the old owner answers the key with the lost
/// operation (which the server turns into 409 `operation_lost`), while the new owner, which
/// never received the record, does not know the key.
#[test]
fn a_lost_create_reports_its_key() {
    let shard = ShardId(1);
    let key = "acme/alice/POST /v2/clusters lost";
    let mut a = Owner::new();
    let mut b = State::new(SHARDS);
    ship(
        &mut b,
        "dc-a",
        ShardId::GLOBAL,
        &a.records(ShardId::GLOBAL),
        None,
    )
    .unwrap();
    let point = Position::START;
    let spec = spec(&a.state, "base", 1, &[]);
    let created = a
        .apply_keyed(
            Command::CreateCluster {
                shard,
                spec: Box::new(spec),
            },
            Some(key),
        )
        .unwrap();
    at(
        &mut b,
        2,
        Command::AdoptShard {
            shard,
            epoch: 2,
            after: point,
        },
    )
    .unwrap();
    assert_eq!(b.idempotent_outcome(key), None);
    at(
        &mut a.state,
        a.now_ms + 1,
        Command::DemoteShard {
            shard,
            owner_dc: "dc-b".into(),
            keep_through: point,
        },
    )
    .unwrap();
    let (lost, _) = a.state.lost_operations();
    let lost: Vec<_> = lost.cloned().collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].idempotency_key.as_deref(), Some(key));
    let previous = a.state.idempotent_outcome(key).unwrap();
    assert_eq!(previous, Ok(created));
    assert_eq!(
        a.state.lost_outcome(&previous).map(|l| l.seq),
        Some(lost[0].seq)
    );
}

/// A refused batch changes nothing, also the first batch of a new epoch: a replica at (1, 5)
/// given a batch that starts epoch 2 right at its watermark but whose second record skips a
/// seq refuses it and keeps its owner, watermark and view (it is not moved to the new owner's
/// epoch, nor emptied).
#[test]
fn a_refused_first_batch_of_a_new_epoch_changes_nothing() {
    let shard = ShardId(1);
    let mut a = Owner::new();
    a.create_in(1, "lamp", 3);
    a.drive();
    let records = a.records(shard);
    assert_eq!(records.len(), 5);
    let mut b = State::new(SHARDS);
    ship(
        &mut b,
        "dc-a",
        ShardId::GLOBAL,
        &a.records(ShardId::GLOBAL),
        None,
    )
    .unwrap();
    ship(&mut b, "dc-a", shard, &records, None).unwrap();
    let watermark = Position { epoch: 1, seq: 5 };
    let before = b.replica(shard).cloned().unwrap();
    assert_eq!(before.watermark, watermark);

    let mut first = records[3].clone();
    (first.epoch, first.seq) = (2, 1);
    let mut gap = records[4].clone();
    (gap.epoch, gap.seq) = (2, 3);
    match ship(&mut b, "dc-c", shard, &[first, gap], Some(watermark)) {
        Err(CommandError::Conflict { code, .. }) => {
            assert_eq!(code, ErrorCode::ReplicationOutOfOrder)
        }
        other => panic!("a batch with a gap was taken: {other:?}"),
    }
    let after = b.replica(shard).unwrap();
    assert_eq!(after, &before);
    assert_eq!(after.owner_dc, "dc-a");
    assert_eq!(after.watermark, watermark);
    assert_eq!(after.view(), a.state.replicated_view(shard));
}

/// A cluster config at the API's nesting bound (a body nests at most 32 levels, so a config in
/// it at most 31) stays readable in every form a record travels in, with the margin the JSON
/// decoder's recursion limit (128) leaves: its records wrapped as in a pull answer, the DC-log
/// entry that applies them at a replica, and the entry seeding a replica with its shard.
#[test]
fn a_config_at_the_api_bound_stays_readable_in_records_entries_and_seeds() {
    const API_DEPTH: usize = 32;
    let mut owner = Owner::new();
    let deep =
        (0..API_DEPTH - 2).fold(Value::from(1), |inner, _| serde_json::json!({ "v": inner }));
    let mut spec = spec(&owner.state, "lamp", 1, &[]);
    spec.config = serde_json::Map::from_iter([("v".to_string(), deep)]);
    let shard = ShardId(1);
    owner.ok(Command::CreateCluster {
        shard,
        spec: Box::new(spec),
    });
    let records = owner.records(shard);
    assert!(!records.is_empty());

    // Records inside a pull answer's envelope (a few more levels of our own, for margin).
    let answer = serde_json::json!({"shards": [{"shard": shard, "batch": {"records": records}}]});
    let bytes = serde_json::to_vec(&answer).unwrap();
    let read: Value = serde_json::from_slice(&bytes).expect("the pull answer decodes");
    let read: Vec<Record> =
        serde_json::from_value(read["shards"][0]["batch"]["records"].clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        serde_json::to_value(&records).unwrap()
    );

    // The entry a replica proposes to apply them, and the entry seeding a replica.
    let seed = owner
        .state
        .seed_of(shard, "dc-a")
        .expect("an owned shard has a seed");
    for command in [
        Command::ApplyReplicationBatch {
            from_dc: "dc-a".into(),
            shard,
            records,
            epoch_start: None,
        },
        Command::SeedReplica {
            seed: Box::new(seed),
        },
    ] {
        let entry = Entry {
            now_ms: 1,
            idempotency_key: None,
            fence: None,
            command,
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        let read: Entry = serde_json::from_slice(&bytes).expect("the entry decodes");
        assert_eq!(serde_json::to_vec(&read).unwrap(), bytes);
    }
}

/// A DC hands out tasks only of the shards its lease lists: a shard it just lost (and has not
/// demoted yet) keeps its tasks back, so they do not run at two DCs.
#[test]
fn tasks_are_taken_only_from_the_shards_named() {
    let mut a = Owner::new();
    a.create_in(1, "base", 1);
    let take = |shards: Option<std::collections::BTreeSet<ShardId>>| Command::TakeTask {
        provisioner_id: "p1".into(),
        worker_id: "w1".into(),
        tenant_id: None,
        timeout_ms: TIMEOUT_MS,
        shards,
    };
    let others = std::collections::BTreeSet::from([ShardId(0), ShardId(2)]);
    assert_eq!(a.ok(take(Some(others))), Outcome::TaskTaken { task: None });
    let own = std::collections::BTreeSet::from([ShardId(1)]);
    assert!(matches!(
        a.ok(take(Some(own))),
        Outcome::TaskTaken { task: Some(_) }
    ));
}

/// DC `b` of a two-DC deployment whose global shard `a` owns: `a`'s global records applied, a
/// provisioner registered, and whatever `b` creates goes to shard 1 (`a` writes shard 0).
/// Deletes the tenant at `a` and creates it again (a new incarnation), then ships the global
/// shard's new records to `b`; returns the new incarnation.
fn reincarnate_tenant(a: &mut Owner, b: &mut State) -> Tenant {
    a.ok(Command::DeleteTenant {
        name: TENANT.into(),
    });
    let mut again = tenant(TENANT, 10, 10);
    again.id = "id-acme-2".into();
    a.ok(Command::PutTenant {
        tenant: again.clone(),
    });
    let global = a.records(ShardId::GLOBAL);
    let shipped = b.replica(ShardId::GLOBAL).unwrap().watermark.seq as usize;
    ship(b, "dc-a", ShardId::GLOBAL, &global[shipped..], None).unwrap();
    again
}

fn second_dc(a: &Owner) -> State {
    let mut b = State::new(SHARDS);
    ship(
        &mut b,
        "dc-a",
        ShardId::GLOBAL,
        &a.records(ShardId::GLOBAL),
        None,
    )
    .unwrap();
    at(
        &mut b,
        1,
        Command::RegisterProvisioner {
            info: ProvisionerInfo {
                id: "p1".into(),
                host: "127.0.0.1".into(),
                port: 1,
                capacity_total: 4,
            },
        },
    )
    .unwrap();
    b
}

/// Creates a one-machine cluster in shard 1 of `b` and drives it to ACTIVE.
fn create_active_at_b(a: &Owner, b: &mut State) -> ClusterId {
    let mut spec = spec(&a.state, "base", 1, &[]);
    spec.tenant_incarnation = a.state.global.tenants[TENANT].id.clone();
    let created = at(
        b,
        10,
        Command::CreateCluster {
            shard: ShardId(1),
            spec: Box::new(spec),
        },
    );
    let Ok(Outcome::ClusterCreated { id }) = created else {
        panic!("create at b: {created:?}");
    };
    let mut now = 10;
    drive_bare(b, &mut now);
    assert_eq!(
        b.cluster(id).unwrap().cluster.status,
        coopr_types::ClusterStatus::Active
    );
    id
}

/// Quotas hold across DCs: the global shard's owner counts the clusters of its replica copies
/// too, and a DC that only replicates the global shard refuses to create for a tenant with a
/// quota (`quota_elsewhere`: the API routes such creates to the owner). A tenant with live
/// clusters in another DC's shard cannot be deleted.
#[test]
fn quotas_and_tenant_deletes_see_every_dc() {
    let mut a = Owner::new();
    let mut b = second_dc(&a);
    // Unlimited: b creates locally.
    create_active_at_b(&a, &mut b);
    ship(
        &mut a.state,
        "dc-b",
        ShardId(1),
        &b.outbox(ShardId(1))
            .unwrap()
            .records
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        None,
    )
    .unwrap();
    assert!(a.state.replica(ShardId(1)).is_some());

    // Now a quota of one cluster: b's cluster uses it, so a cannot create.
    a.ok(Command::PutTenant {
        tenant: tenant(TENANT, 1, coopr_types::UNLIMITED),
    });
    let spec0 = spec(&a.state, "base", 1, &[]);
    let err = a
        .apply(Command::CreateCluster {
            shard: ShardId(0),
            spec: Box::new(spec0.clone()),
        })
        .unwrap_err();
    assert_eq!(err.code(), "quota_exceeded", "{err}");
    // b, which does not write the global shard, refuses to create for a tenant with a quota.
    let global = a.records(ShardId::GLOBAL);
    let shipped = b.replica(ShardId::GLOBAL).unwrap().watermark.seq as usize;
    ship(&mut b, "dc-a", ShardId::GLOBAL, &global[shipped..], None).unwrap();
    let err = at(
        &mut b,
        20,
        Command::CreateCluster {
            shard: ShardId(1),
            spec: Box::new(spec0),
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), coopr_state::QUOTA_ELSEWHERE, "{err}");

    // b's live cluster keeps the tenant from being deleted at a.
    let err = a
        .apply(Command::DeleteTenant {
            name: TENANT.into(),
        })
        .unwrap_err();
    assert_eq!(err.code(), "tenant_has_clusters", "{err}");
    assert!(b.orphaned_clusters().is_empty());
}

/// A cluster created at one DC while another deleted its tenant (the deletion did not see it
/// yet) is an orphan once the deletion reaches its DC: listed by `orphaned_clusters` (the job
/// driver deletes it), and never the clusters of a tenant created again under the same name.
/// A create checked against an older incarnation is refused (`tenant_changed`).
#[test]
fn clusters_of_a_deleted_tenant_are_orphans_not_an_inheritance() {
    let mut a = Owner::new();
    let mut b = second_dc(&a);
    let orphan = create_active_at_b(&a, &mut b);
    // a has not received b's shard: the delete passes.
    let again = reincarnate_tenant(&mut a, &mut b);

    assert_eq!(b.orphaned_clusters(), vec![orphan]);
    let record = b.cluster(orphan).unwrap();
    assert!(!record.cluster.account.belongs_to(&again));
    assert_eq!(b.tenant_usage(&again), (0, 0));

    // A create checked against the old incarnation is refused at a.
    a.ok(Command::ImportCatalog {
        tenant: TENANT.into(),
        entities: common::catalog_entities(),
    });
    let mut stale = spec(&a.state, "base", 1, &[]);
    stale.tenant_incarnation = format!("id-{TENANT}");
    let err = a
        .apply(Command::CreateCluster {
            shard: ShardId(0),
            spec: Box::new(stale),
        })
        .unwrap_err();
    assert_eq!(err.code(), "tenant_changed", "{err}");

    // Deleting the orphan ends it: it is no longer listed.
    at(
        &mut b,
        100,
        Command::StartOperation {
            cluster: orphan,
            action: ClusterAction::ClusterDelete,
            services: Vec::new(),
            config: None,
        },
    )
    .unwrap();
    let mut now = 100;
    drive_bare(&mut b, &mut now);
    assert_eq!(
        b.cluster(orphan).unwrap().cluster.status,
        coopr_types::ClusterStatus::Terminated
    );
    assert!(b.orphaned_clusters().is_empty());
}

/// Plugin resources are global data: an upload, stage, sync, recall and delete each emit one
/// record (refusals and no-ops none, checked by the harness), and a replica that applies them
/// holds the same versions and the same bytes as the owner; the bytes are stored once by their
/// SHA-256 and dropped when no version references them, at the owner and the replica alike.
#[test]
fn plugin_resources_replicate_with_their_bytes() {
    use coopr_state::resources::{PluginKind, ResourcePath, PLUGIN_TYPES_TENANT};
    use coopr_state::Blob;
    use coopr_types::UNLIMITED;

    let mut h = Owner::new();
    h.ok(Command::PutTenant {
        tenant: tenant(PLUGIN_TYPES_TENANT, UNLIMITED, UNLIMITED),
    });
    let hadoop = ResourcePath {
        kind: PluginKind::Automatortypes,
        plugin: "chef-solo".into(),
        resource_type: "cookbooks".into(),
        name: "hadoop".into(),
    };
    let put = |bytes: &[u8]| Command::PutResource {
        tenant: TENANT.into(),
        resource: hadoop.clone(),
        bytes: Blob::new(bytes.to_vec()),
    };
    // No plugin registered yet: 404, nothing written.
    let refused = h.apply(put(b"v1")).unwrap_err();
    assert_eq!(refused.error_code(), ErrorCode::NotFound);
    h.ok(Command::PutEntity {
        tenant: PLUGIN_TYPES_TENANT.into(),
        kind: EntityKind::Automatortypes,
        name: "chef-solo".into(),
        body: serde_json::json!({"name": "chef-solo", "resourceTypes": {"cookbooks": {"format": "archive"}}}),
        create_only: false,
    });
    let first = h.records(ShardId::GLOBAL).len();
    assert_eq!(h.ok(put(b"v1")), Outcome::EntityVersion { version: 1 });
    assert_eq!(h.ok(put(b"v1")), Outcome::EntityVersion { version: 2 });
    let stage = |version| Command::StageResource {
        tenant: TENANT.into(),
        resource: hadoop.clone(),
        version,
    };
    h.ok(stage(1));
    assert_eq!(h.ok(stage(1)), Outcome::Unchanged);
    let sync = || Command::SyncResources {
        tenant: TENANT.into(),
    };
    h.ok(sync());
    let delete = |version| Command::DeleteResource {
        tenant: TENANT.into(),
        resource: hadoop.clone(),
        version,
    };
    let busy = h.apply(delete(Some(1))).unwrap_err();
    assert_eq!(busy.error_code(), ErrorCode::ResourceNotInactive);
    // Two versions, one blob.
    assert_eq!(h.state.global.resource_blobs.len(), 1);

    let records = h.records(ShardId::GLOBAL);
    let mut replica = ReplicaShard::new(ShardId::GLOBAL, "dc-a");
    replica.apply_batch(&records).unwrap();
    assert_eq!(replica.view(), h.state.replicated_view(ShardId::GLOBAL));
    let view = replica.view();
    assert_eq!(view["resource_blobs"].as_object().unwrap().len(), 1);
    assert_eq!(
        view["catalogs"][TENANT]["resources"]["automatortypes/chef-solo/cookbooks/hadoop"]
            ["versions"]["1"]["live"],
        true
    );

    h.ok(Command::RecallResource {
        tenant: TENANT.into(),
        resource: hadoop.clone(),
        version: 1,
    });
    h.ok(sync());
    h.ok(delete(None));
    assert!(h.state.global.resource_blobs.is_empty());
    let all = h.records(ShardId::GLOBAL);
    let names: Vec<&str> = all[first..]
        .iter()
        .map(|r| match &r.kind {
            RecordKind::Global(GlobalRecord::ResourcePut { .. }) => "put",
            RecordKind::Global(GlobalRecord::ResourceStaged { .. }) => "staged",
            RecordKind::Global(GlobalRecord::ResourceRecalled { .. }) => "recalled",
            RecordKind::Global(GlobalRecord::ResourcesSynced { .. }) => "synced",
            RecordKind::Global(GlobalRecord::ResourceDeleted { .. }) => "deleted",
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        ["put", "put", "staged", "synced", "recalled", "synced", "deleted"]
    );
    replica.apply_batch(&all[records.len()..]).unwrap();
    assert_eq!(replica.view(), h.state.replicated_view(ShardId::GLOBAL));
    assert!(replica.view().get("resource_blobs").is_none());
    // Deleting what is gone: 200 (Unchanged) for all versions, 404 for one.
    assert_eq!(h.ok(delete(None)), Outcome::Unchanged);
    assert_eq!(
        h.apply(delete(Some(1))).unwrap_err().error_code(),
        ErrorCode::NotFound
    );
}

/// Creates a one-machine cluster in `shard` of `b` and drives it to ACTIVE.
fn create_active_at_b_in(a: &Owner, b: &mut State, shard: u32, now: &mut u64) -> ClusterId {
    let mut spec = spec(&a.state, "base", 1, &[]);
    spec.tenant_incarnation = a.state.global.tenants[TENANT].id.clone();
    *now += 1;
    let created = at(
        b,
        *now,
        Command::CreateCluster {
            shard: ShardId(shard),
            spec: Box::new(spec),
        },
    );
    let Ok(Outcome::ClusterCreated { id }) = created else {
        panic!("create at b: {created:?}");
    };
    drive_bare(b, now);
    id
}

/// `orphaned_clusters` as a scan of every cluster of the DC computed it (before the index).
fn orphans_by_scan(state: &State) -> Vec<ClusterId> {
    let global = state.global_data();
    state
        .clusters()
        .filter(|r| {
            let c = &r.cluster;
            c.status != coopr_types::ClusterStatus::Terminated
                && c.status != coopr_types::ClusterStatus::Pending
                && !global
                    .tenants
                    .get(c.account.tenant_id.as_str())
                    .is_some_and(|t| c.account.belongs_to(t))
                && !r.latest_summary().is_some_and(|j| {
                    j.action == ClusterAction::ClusterDelete
                        && j.status == coopr_types::JobStatus::Failed
                })
        })
        .map(|r| r.cluster.id)
        .collect()
}

/// `tenant_usage` as a scan of every owned cluster and replica copy computed it.
fn usage_by_scan(state: &State, tenant: &coopr_types::Tenant) -> (u64, u64) {
    let owned = state.clusters().map(|r| r.cluster.clone());
    let copies = state
        .replicas
        .values()
        .filter_map(|r| match &r.data {
            coopr_state::ReplicaData::Clusters(view) => Some(
                view.clusters
                    .values()
                    .map(|v| v.cluster.clone())
                    .collect::<Vec<_>>(),
            ),
            coopr_state::ReplicaData::Global(_) => None,
        })
        .flatten();
    owned
        .chain(copies)
        .filter(|c| {
            c.account.belongs_to(tenant) && c.status != coopr_types::ClusterStatus::Terminated
        })
        .fold((0, 0), |(c, n), cluster| {
            (c + 1, n + cluster.nodes.len() as u64)
        })
}

/// The tenant indexes follow creates, deletes, a tenant's deletion and re-creation, and a
/// shard moving from one DC to another: the orphans (in shard order, which is not cluster id
/// order here) and a tenant's usage (owned clusters and replica copies) are what full scans
/// find, at the DC that demoted the shard and at the one that adopted it.
#[test]
fn orphans_and_usage_follow_tenant_deletion_and_shard_moves() {
    let mut a = Owner::new();
    let mut b = second_dc(&a);
    let old = a.state.global.tenants[TENANT].clone();
    let mut now = 10;
    let first = create_active_at_b_in(&a, &mut b, 1, &mut now);
    let second = create_active_at_b_in(&a, &mut b, 1, &mut now);
    let third = create_active_at_b_in(&a, &mut b, 3, &mut now);
    let gone = create_active_at_b_in(&a, &mut b, 2, &mut now);
    at(
        &mut b,
        now,
        Command::StartOperation {
            cluster: gone,
            action: ClusterAction::ClusterDelete,
            services: Vec::new(),
            config: None,
        },
    )
    .unwrap();
    drive_bare(&mut b, &mut now);
    // Cluster ids are shard + 4 n: shard order is not id order.
    assert!(third < second);
    assert_eq!(b.tenant_usage(&old), (3, 3));
    assert_eq!(b.tenant_usage(&old), usage_by_scan(&b, &old));

    // a never saw b's shards: the tenant's deletion passes, and a new incarnation follows.
    let again = reincarnate_tenant(&mut a, &mut b);
    assert_eq!(b.orphaned_clusters(), vec![first, second, third]);
    assert_eq!(b.orphaned_clusters(), orphans_by_scan(&b));
    assert_eq!(b.tenant_usage(&again), (0, 0));

    // Shards 1 and 3 reach a as replica copies: a counts them for the old incarnation only.
    for shard in [ShardId(1), ShardId(3)] {
        let records: Vec<Record> = b.outbox(shard).unwrap().records.iter().cloned().collect();
        ship(&mut a.state, "dc-b", shard, &records, None).unwrap();
    }
    assert_eq!(a.state.tenant_usage(&old), (3, 3));
    assert_eq!(a.state.tenant_usage(&old), usage_by_scan(&a.state, &old));
    assert_eq!(a.state.tenant_usage(&again), (0, 0));
    assert!(a.state.orphaned_clusters().is_empty());

    // Shard 3 moves from b to a: b's orphan is gone from b, a adopts it as its own.
    let shard = ShardId(3);
    let until = b.outbox(shard).unwrap().history_position();
    at(
        &mut b,
        now,
        Command::DemoteShard {
            shard,
            owner_dc: "dc-a".into(),
            keep_through: until,
        },
    )
    .unwrap();
    assert_eq!(b.orphaned_clusters(), vec![first, second]);
    assert_eq!(b.orphaned_clusters(), orphans_by_scan(&b));
    // b keeps the shard as a replica copy: the cluster still counts, as a copy.
    assert!(b.replica(shard).is_some());
    assert_eq!(b.tenant_usage(&old), (3, 3));
    assert_eq!(b.tenant_usage(&old), usage_by_scan(&b, &old));
    a.state
        .checked_apply(&Entry {
            now_ms: now,
            idempotency_key: None,
            fence: None,
            command: Command::AdoptShard {
                shard,
                epoch: until.epoch + 1,
                after: until,
            },
        })
        .unwrap();
    assert_eq!(a.state.orphaned_clusters(), vec![third]);
    assert_eq!(a.state.orphaned_clusters(), orphans_by_scan(&a.state));
    assert_eq!(a.state.tenant_usage(&old), (3, 3));
    assert_eq!(a.state.tenant_usage(&old), usage_by_scan(&a.state, &old));

    // Restored from its snapshot, a answers the same (the indexes are rebuilt).
    let restored = decode_parts(
        encode_parts(&a.state)
            .iter()
            .map(|(id, bytes)| (*id, bytes.as_slice())),
        SHARDS,
    )
    .unwrap();
    restored.check_indexes().unwrap();
    assert_eq!(restored.orphaned_clusters(), vec![third]);
    assert_eq!(restored.tenant_usage(&old), (3, 3));
}

/// A demoted shard's running job stops here: its in-progress task is held by nobody and has
/// no deadline any more; the other shard's task stays held.
#[test]
fn a_demoted_shard_releases_its_in_progress_tasks() {
    let mut a = Owner::new();
    a.create_in(1, "base", 1);
    a.create_in(2, "base", 1);
    let one = a.take().unwrap();
    let two = a.take().unwrap();
    assert_eq!(a.state.tasks_held_by("p1"), 2);
    let kept = if one.job.cluster.shard(SHARDS) == ShardId(2) {
        one
    } else {
        two
    };
    let deadline = a
        .state
        .task(kept)
        .unwrap()
        .owner
        .as_ref()
        .unwrap()
        .deadline_ms;
    a.state
        .checked_apply(&Entry {
            now_ms: a.now_ms + 1,
            idempotency_key: None,
            fence: None,
            command: Command::DemoteShard {
                shard: ShardId(1),
                owner_dc: "dc-b".into(),
                keep_through: Position::START,
            },
        })
        .unwrap();
    assert_eq!(a.state.tasks_held_by("p1"), 1);
    assert_eq!(a.state.task_held_by_worker("p1", "w1"), Some(kept));
    assert_eq!(a.state.next_deadline(), Some(deadline));
}

/// A replica's copies of clusters built from one template and provider share one allocation
/// of each (each copy arrives with its own, in the record that first names the cluster), after
/// batches as after a snapshot restore: a replica DC holds another DC's clusters in the same
/// memory as their owner. Once adopted, they share their map of service definitions as well.
#[test]
fn replica_copies_share_equal_templates_and_providers() {
    let mut owner = Owner::new();
    let a = owner.create_in(1, "lamp", 1);
    owner.drive();
    let b = owner.create_in(1, "lamp", 1);
    owner.drive();
    let mut dc_b = State::new(SHARDS);
    // As they arrive over the wire: decoded, each template its own allocation.
    let records: Vec<Record> =
        serde_json::from_slice(&serde_json::to_vec(&owner.records(ShardId(1))).unwrap()).unwrap();
    // Two batches: the second cluster's template arrives apart from the first's.
    let split = records
        .iter()
        .position(|r| coopr_state::replication::record_cluster(r) == Some(b))
        .unwrap();
    ship(&mut dc_b, "dc-a", ShardId(1), &records[..split], None).unwrap();
    ship(&mut dc_b, "dc-a", ShardId(1), &records[split..], None).unwrap();
    // The catalog (an adopter plans with it).
    let global = owner.records(ShardId::GLOBAL);
    ship(&mut dc_b, "dc-a", ShardId::GLOBAL, &global, None).unwrap();
    let shared = |state: &State| {
        let Some(coopr_state::ReplicaData::Clusters(view)) =
            state.replica(ShardId(1)).map(|r| &r.data)
        else {
            panic!("no replica copy of shard 1");
        };
        let template = |id| &view.clusters[&id].cluster.cluster_template;
        let provider = |id| &view.clusters[&id].cluster.provider;
        std::sync::Arc::ptr_eq(template(a), template(b))
            && std::sync::Arc::ptr_eq(provider(a), provider(b))
    };
    assert!(shared(&dc_b), "after the batches");
    let parts = encode_parts(&dc_b);
    let mut restored = decode_parts(parts.iter().map(|(k, v)| (*k, v.as_slice())), SHARDS).unwrap();
    assert!(shared(&restored), "after a restore");
    // Adopted (its owner gone), the clusters share one map of service definitions.
    let after = restored.replica(ShardId(1)).unwrap().watermark;
    restored
        .checked_apply(&Entry {
            now_ms: 2,
            idempotency_key: None,
            fence: None,
            command: Command::AdoptShard {
                shard: ShardId(1),
                epoch: after.epoch + 1,
                after,
            },
        })
        .unwrap();
    let defs = |id| &restored.cluster(id).unwrap().service_defs;
    assert!(!defs(a).is_empty());
    assert!(std::sync::Arc::ptr_eq(defs(a), defs(b)), "after adoption");
}
