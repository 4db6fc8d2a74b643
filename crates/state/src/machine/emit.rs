//! Replication on the owner's side: the records each command emits into its shard's outbox (in
//! the same apply as the change they describe), the outbox trim, and the owner's projection of a
//! shard as its replicas see it. See [`crate::replication`].

use std::collections::BTreeMap;
use std::sync::Arc;

use coopr_engine::job::JobRun;
use coopr_types::{ClusterAction, ClusterId, JobId, NodeId, ShardId, VecMap};
use serde_json::Value;

use super::{ClusterRecord, ShippedOperation};
use crate::command::{CommandResult, Outcome};
use crate::replication::{
    compact_stage, to_value, Checkpoint, ClusterRow, ClusterShardView, ClusterView, GlobalRecord,
    GlobalView, InFlight, JobSummary, NodeOutcome, Outbox, PlanStep, RecordKind, ReplicaShard,
    ReplicatedNode, OUTBOX_CAPACITY,
};
use crate::{CommandError, ErrorCode, State};

impl State {
    /// The outbox of a shard this DC writes (a cluster shard or the global shard).
    pub fn outbox(&self, shard: ShardId) -> Option<&Outbox> {
        if shard.is_global() {
            Some(&self.global.replication)
        } else {
            self.shards.get(&shard).map(|s| &s.replication)
        }
    }

    /// Every outbox (cluster shards, then the global shard) holding at least `min_records`
    /// records, with the sequence number of its last record: where to trim it when nobody
    /// needs its records any more.
    pub fn outbox_ends(&self, min_records: usize) -> Vec<(ShardId, u64)> {
        self.shards
            .iter()
            .map(|(shard, data)| (*shard, &data.replication))
            .chain([(ShardId::GLOBAL, &self.global.replication)])
            .filter(|(_, outbox)| !outbox.records.is_empty() && outbox.records.len() >= min_records)
            .map(|(shard, outbox)| (shard, outbox.next_seq.saturating_sub(1)))
            .collect()
    }

    /// The copy of a shard this DC replicates from another DC.
    pub fn replica(&self, shard: ShardId) -> Option<&ReplicaShard> {
        self.replicas.get(&shard).map(|r| &**r)
    }

    /// The shard as its replicas see it (canonical JSON): clusters, nodes without action
    /// history, finished jobs' summaries and in-flight operations; or, for the global shard,
    /// tenants, keys and catalogs. Equal to [`ReplicaShard::view`] of a replica that applied
    /// every record emitted so far. An unknown shard is `null`.
    pub fn replicated_view(&self, shard: ShardId) -> Value {
        if shard.is_global() {
            return to_value(&GlobalView {
                tenants: self.global.tenants.clone(),
                api_keys: self.global.api_keys.clone(),
                catalogs: self.global.catalogs.clone(),
                resource_blobs: self.global.resource_blobs.clone(),
            });
        }
        match self.replica_copy(shard) {
            Some(view) => to_value(&view),
            None => Value::Null,
        }
    }

    /// What a replica holds of cluster shard `shard` once it caught up: the owner's projection
    /// of each cluster, sharing the records' templates (as a replica interns them). Also what
    /// [`State::replicated_view`] encodes.
    #[doc(hidden)]
    pub fn replica_copy(&self, shard: ShardId) -> Option<ClusterShardView> {
        self.shards.get(&shard).map(|data| shard_view(data))
    }

    fn emit(&mut self, shard: ShardId, kind: RecordKind) {
        let outbox = if shard.is_global() {
            &mut self.global.replication
        } else {
            match self.shards.get_mut(&shard) {
                Some(data) => &mut Arc::make_mut(data).replication,
                None => panic!("record for shard {shard}, which does not exist"),
            }
        };
        let seq = outbox.push(shard, kind, self.applying_at_ms, OUTBOX_CAPACITY);
        tracing::trace!(%shard, seq, "replication record");
        if !shard.is_global() {
            self.bound_outboxes(self.outbox_capacity);
        }
    }

    /// Keeps the records of every cluster shard's outbox within `capacity` together, dropping
    /// the oldest record of the fullest outbox (ties: the lowest shard) until they fit. A pure
    /// function of the replicated state, so every node of the DC drops the same records.
    pub(crate) fn bound_outboxes(&mut self, capacity: usize) {
        let mut total: usize = self
            .shards
            .values()
            .map(|data| data.replication.records.len())
            .sum();
        while total > capacity {
            // Found without writing, so only the shard changed is copied from a snapshot.
            let fullest = self
                .shards
                .iter()
                .rev()
                .max_by_key(|(_, data)| data.replication.records.len())
                .map(|(shard, _)| *shard);
            let fullest = fullest
                .and_then(|shard| self.shards.get_mut(&shard))
                .map(|data| &mut Arc::make_mut(data).replication);
            match fullest {
                Some(outbox) if outbox.records.len() > 1 => {
                    outbox.drop_oldest();
                    total -= 1;
                }
                _ => return,
            }
        }
    }

    pub(super) fn emit_global(&mut self, record: GlobalRecord) {
        self.emit(ShardId::GLOBAL, RecordKind::Global(record));
    }

    pub(super) fn emit_cluster_updated(&mut self, cluster: ClusterId, with_snapshot: bool) {
        let Some(record) = self.cluster(cluster) else {
            return;
        };
        let row = ClusterRow::of(&record.cluster, with_snapshot);
        self.emit(
            cluster.shard(self.shard_count),
            RecordKind::ClusterUpdated {
                cluster: Box::new(row),
            },
        );
    }

    /// `OperationStarted` for a job just begun; remembers what was shipped.
    pub(super) fn emit_started(&mut self, job: JobId) {
        let shard = job.cluster.shard(self.shard_count);
        let idempotency_key = self.applying_key.clone();
        let Ok(record) = self.cluster_mut(job.cluster) else {
            return;
        };
        let Some(run) = record.jobs.get(&job.seq) else {
            return;
        };
        let nodenum = |id: &NodeId| record.nodes.get(id).map_or(0, |n| n.properties.nodenum);
        let plan: Vec<Vec<PlanStep>> = run
            .job
            .stages
            .iter()
            .map(|stage| {
                compact_stage(
                    stage
                        .iter()
                        .filter_map(|id| run.tasks.get(id))
                        .map(|t| (t.task_name, t.service.to_string(), nodenum(&t.node_id))),
                )
            })
            .collect();
        let operation = InFlight {
            job,
            action: run.job.action,
            services: run.job.services.clone(),
            config: run.job.config.clone(),
            plan,
            checkpoints: BTreeMap::new(),
        };
        let nodes: VecMap<NodeId, ReplicatedNode> = record
            .nodes
            .iter()
            .map(|(id, n)| (id.clone(), ReplicatedNode::from(n)))
            .collect();
        // The template and provider travel once, with the create; later rows leave them out.
        // Nodes travel when the operation changed them; otherwise the replica has them (no
        // operation is in flight, so its nodes are the live ones as of the last record).
        let create = operation.action == ClusterAction::ClusterCreate;
        let changes_nodes = create || operation.action == ClusterAction::AddServices;
        let action = operation.action;
        let kind = RecordKind::OperationStarted {
            cluster: Box::new(ClusterRow::of(&record.cluster, create)),
            nodes: changes_nodes.then(|| nodes.values().cloned().collect()),
            job,
            action,
            services: operation.services.clone(),
            config: operation.config.clone(),
            plan: operation.plan.clone(),
            idempotency_key: idempotency_key.clone(),
        };
        record.shipped = Some(ShippedOperation { operation, nodes });
        self.emit(shard, kind);
        // The same table the replicas build from the record, so that a seed of the shard and a
        // new owner carry the key on.
        if let (Some(key), Some(data)) = (
            idempotency_key,
            self.shards.get_mut(&shard).map(Arc::make_mut),
        ) {
            data.keys.remember(
                key,
                crate::replication::started_outcome(job.cluster, job, action),
            );
        }
    }

    /// `OperationCheckpoint`: a CREATE of `job` made the node's machine.
    pub(super) fn emit_checkpoint(&mut self, job: JobId, node: &NodeId) {
        let shard = job.cluster.shard(self.shard_count);
        let Ok(record) = self.cluster_mut(job.cluster) else {
            return;
        };
        let Some(live) = record.nodes.get(node) else {
            return;
        };
        let checkpoint = Checkpoint {
            job,
            hostname: live.properties.hostname.clone(),
            ipaddresses: live.properties.ipaddresses.clone(),
            provisioner_results: live.provisioner_results.clone(),
        };
        if let Some(shipped) = &mut record.shipped {
            // The same change the replica makes to its view of the operation in flight.
            let mut view = ClusterView {
                cluster: record.cluster.clone(),
                nodes: std::mem::take(&mut shipped.nodes),
                jobs: VecMap::new(),
                in_flight: Some(shipped.operation.clone()),
            };
            let applied = view.apply_checkpoint(node, checkpoint.clone());
            assert!(
                applied.is_ok(),
                "a live node is missing from its shipped operation"
            );
            shipped.nodes = view.nodes;
            if let Some(operation) = view.in_flight {
                shipped.operation = operation;
            }
        }
        self.emit(
            shard,
            RecordKind::OperationCheckpoint {
                cluster: job.cluster,
                job,
                node: node.clone(),
                hostname: checkpoint.hostname,
                ipaddresses: checkpoint.ipaddresses,
                provisioner_results: checkpoint.provisioner_results,
            },
        );
    }

    /// `OperationFinished`: the job's outcome; ends the shipped operation if it is this job.
    pub(crate) fn emit_finished(&mut self, job: JobId) {
        let shard = job.cluster.shard(self.shard_count);
        let Ok(record) = self.cluster_mut(job.cluster) else {
            return;
        };
        let Some(run) = record.jobs.get(&job.seq) else {
            return;
        };
        let summary = job_summary(run);
        let outcomes = record.nodes.values().map(NodeOutcome::of);
        // Only nodes whose outcome the replica does not show yet: it shows the shipped nodes
        // while this job is in flight; while another job is, it takes no node outcome at all.
        let nodes: Vec<NodeOutcome> = match record.shipped.take() {
            Some(shipped) if shipped.operation.job == job => outcomes
                .filter(|o| !shipped.nodes.get(&o.id).is_some_and(|n| o.is_shown_by(n)))
                .collect(),
            Some(other) => {
                record.shipped = Some(other);
                Vec::new()
            }
            None => outcomes.collect(),
        };
        let kind = RecordKind::OperationFinished {
            cluster: job.cluster,
            status: record.cluster.status,
            message: record.cluster.message.clone(),
            nodes,
            job: summary,
        };
        self.emit(shard, kind);
    }

    pub(super) fn trim_outbox(&mut self, shard: ShardId, through_seq: u64) -> CommandResult {
        let outbox = if shard.is_global() {
            &mut self.global.replication
        } else {
            &mut Arc::make_mut(
                self.shards
                    .get_mut(&shard)
                    .ok_or_else(|| CommandError::not_found("shard", shard))?,
            )
            .replication
        };
        if through_seq >= outbox.next_seq {
            return Err(CommandError::invalid(
                ErrorCode::TrimBeyondOutbox,
                format!(
                    "cannot trim through seq {through_seq}: the last record of shard {shard} is {}",
                    outbox.next_seq - 1
                ),
            ));
        }
        Ok(if outbox.trim(through_seq) > 0 {
            Outcome::Done
        } else {
            Outcome::Unchanged
        })
    }
}

pub(crate) fn job_summary(run: &JobRun) -> JobSummary {
    let (stepstotal, stepscompleted) = run.steps();
    JobSummary {
        id: run.job.id,
        action: run.job.action,
        status: run.job.status,
        create_time: run.job.create_time,
        status_time: run.job.status_time,
        stepstotal,
        stepscompleted,
    }
}

/// The owner's projection of a cluster shard: of each of its clusters.
pub(crate) fn shard_view(data: &super::ClusterShard) -> ClusterShardView {
    let clusters = data
        .clusters
        .iter()
        .map(|(id, record)| (*id, cluster_view(record)))
        .collect();
    ClusterShardView { clusters }
}

/// The owner's projection of one cluster (see [`State::replicated_view`]).
pub(crate) fn cluster_view(record: &ClusterRecord) -> ClusterView {
    let (nodes, in_flight) = match &record.shipped {
        Some(shipped) => (shipped.nodes.clone(), Some(shipped.operation.clone())),
        None => (
            record
                .nodes
                .iter()
                .map(|(id, n)| (id.clone(), ReplicatedNode::from(n)))
                .collect(),
            None,
        ),
    };
    let jobs = record
        .jobs
        .values()
        .filter(|run| run.job.status.is_finished() && run.job.action != ClusterAction::SolveLayout)
        .map(|run| (run.job.id, job_summary(run)))
        .chain(
            record
                .retired_jobs
                .iter()
                .filter(|(_, summary)| summary.action != ClusterAction::SolveLayout)
                .map(|(id, summary)| (*id, summary.clone())),
        )
        .chain(
            record
                .adopted_jobs
                .iter()
                .map(|(id, summary)| (*id, summary.clone())),
        )
        .collect();
    ClusterView {
        cluster: record.cluster.clone(),
        nodes,
        jobs,
        in_flight,
    }
}
