//! Ownership changes of a shard in one DC's state: graceful handover (adopt, release), failover
//! (seal, adopt with the restart of in-flight jobs, demote with the lost-operations report) and
//! re-seeding a copy from a snapshot of the owner's shard.
//!
//! ```text
//!  failover of shard s from A (lease expired) to B:
//!   B: SealReplica{s}        its copy applies nothing more of A's epoch: it ends at W
//!      (reports W; the placement group makes B the owner at epoch+1, takeover point W)
//!   B: AdoptShard{s, e+1, W} the copy becomes B's shard; every operation in flight (started,
//!      not finished) resumes from its restart state: its plan, minus the CREATEs whose
//!      machines the checkpoints prove
//!   A (back): DemoteShard{s, B, W}  records A wrote after W -> lost-operations report; A's
//!      running jobs of s stop; A's copy becomes a replica at W (nothing lost) or waits for
//!      a snapshot of B's shard (SeedReplica)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use coopr_engine::job::{cluster_status_after, JobRun};
use coopr_engine::planner::PlannedTask;
use coopr_types::{
    ClusterId, JobId, JobStatus, Node, NodeId, ServiceDefs, ShardId, ShortStr, TaskName,
};
use serde::{Deserialize, Serialize};

use crate::machine::{shard_view, ClusterRecord, ClusterShard, GlobalShard, ShippedOperation};
use crate::replication::{
    ClusterShardView, ClusterView, GlobalRecord, GlobalView, Outbox, PlanStep, Position, Record,
    RecordKind, ReplicaData, ReplicaShard, ReplicatedNode, ShardKeys,
};
use crate::{CommandError, CommandResult, ErrorCode, Outcome, State, TenantCatalog};

/// Cluster numbers (`n` of `id = shard + S * n`) a new owner skips to per epoch: epoch `e`
/// allocates from `e * IDS_PER_EPOCH` on. After a failover the old owner may have created
/// clusters the new owner never heard of (they are in the old owner's lost-operations report);
/// their IDs, and the node IDs derived from them (which providers use as idempotency keys),
/// must never name another cluster. An epoch that creates more than this many clusters in one
/// shard before the next ownership change would run into the next epoch's range.
pub const IDS_PER_EPOCH: u64 = 1_000_000;

/// How many lost operations a DC's report keeps (the oldest are dropped first; the total counts
/// every one).
pub const LOST_OPERATIONS_CAPACITY: usize = 10_000;

/// A record this DC committed as a shard's owner after the point where another DC took the
/// shard over: it was never replicated, so the operation it stands for is not in the shard's
/// history. Kept in the DC's lost-operations report (`GET /v2/admin/lost-operations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostOperation {
    pub shard: ShardId,
    pub epoch: u64,
    pub seq: u64,
    /// The record kind (`operation_started`, `operation_finished`, ...; `dropped` for records
    /// the full outbox had already dropped, whose content is unknown).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// When this DC committed it (ms since the epoch).
    pub at_ms: u64,
    /// The shard's owner when the loss was found, and where its epoch started.
    pub new_owner: String,
    pub takeover_point: Position,
    /// When this DC found the loss (the time of its demotion entry).
    pub reported_at_ms: u64,
    /// The scoped `Idempotency-Key` of a lost `operation_started`, if it had one: a retry of
    /// that request here answers 409 `operation_lost`, and at the new owner, which never heard
    /// of it, runs the request again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl LostOperation {
    fn of(record: &Record, clusters: &BTreeMap<ClusterId, Arc<ClusterRecord>>) -> LostOperation {
        let idempotency_key = match &record.kind {
            RecordKind::OperationStarted {
                idempotency_key, ..
            } => idempotency_key.clone(),
            _ => None,
        };
        let (tenant, cluster, job) = match &record.kind {
            RecordKind::OperationStarted { cluster, job, .. } => (
                Some(cluster.account.tenant_id.to_string()),
                Some(cluster.id),
                Some(*job),
            ),
            RecordKind::ClusterUpdated { cluster } => (
                Some(cluster.account.tenant_id.to_string()),
                Some(cluster.id),
                None,
            ),
            RecordKind::OperationCheckpoint { cluster, job, .. } => {
                (tenant_of(clusters, *cluster), Some(*cluster), Some(*job))
            }
            RecordKind::OperationFinished { cluster, job, .. } => {
                (tenant_of(clusters, *cluster), Some(*cluster), Some(job.id))
            }
            RecordKind::Global(global) => (Some(global_tenant(global).to_string()), None, None),
        };
        LostOperation {
            shard: record.shard,
            epoch: record.epoch,
            seq: record.seq,
            kind: record.kind.name().to_string(),
            tenant,
            cluster,
            job,
            at_ms: record.at_ms,
            new_owner: String::new(),
            takeover_point: Position::START,
            reported_at_ms: 0,
            idempotency_key,
        }
    }
}

fn tenant_of(clusters: &BTreeMap<ClusterId, Arc<ClusterRecord>>, id: ClusterId) -> Option<String> {
    clusters
        .get(&id)
        .map(|c| c.cluster.account.tenant_id.to_string())
}

fn global_tenant(record: &GlobalRecord) -> &str {
    match record {
        GlobalRecord::TenantPut(tenant) => &tenant.name,
        GlobalRecord::TenantDeleted(name) => name,
        GlobalRecord::ApiKeyPut(key) => &key.tenant,
        GlobalRecord::EntityPut { tenant, .. }
        | GlobalRecord::EntityDeleted { tenant, .. }
        | GlobalRecord::CatalogImported { tenant, .. }
        | GlobalRecord::ProfilePut { tenant, .. }
        | GlobalRecord::ResourcePut { tenant, .. }
        | GlobalRecord::ResourceStaged { tenant, .. }
        | GlobalRecord::ResourceRecalled { tenant, .. }
        | GlobalRecord::ResourcesSynced { tenant }
        | GlobalRecord::ResourceDeleted { tenant, .. } => tenant,
    }
}

impl State {
    /// Whether this DC wrote `shard` (it holds data or records of its own there), as opposed
    /// to an empty shard it never owned or a replica copy.
    pub fn holds_writes(&self, shard: ShardId) -> bool {
        if self.replicas.contains_key(&shard) {
            return false;
        }
        if shard.is_global() {
            let g = &self.global;
            return g.replication.next_seq > 1
                || g.replication.started_after.is_some()
                || !g.tenants.is_empty();
        }
        self.shards.get(&shard).is_some_and(|data| {
            data.replication.next_seq > 1
                || data.replication.started_after.is_some()
                || !data.clusters.is_empty()
        })
    }

    /// A snapshot of a shard this DC writes, as a replica holds it: what a replica that cannot
    /// continue from records is seeded with. `None` for a shard this DC holds as a replica.
    pub fn seed_of(&self, shard: ShardId, owner_dc: &str) -> Option<ReplicaShard> {
        if self.replicas.contains_key(&shard) {
            return None;
        }
        let (outbox, data, keys) = if shard.is_global() {
            let g = &self.global;
            let view = GlobalView {
                tenants: g.tenants.clone(),
                api_keys: g.api_keys.clone(),
                catalogs: g.catalogs.clone(),
                resource_blobs: g.resource_blobs.clone(),
            };
            (
                &g.replication,
                ReplicaData::Global(view),
                ShardKeys::default(),
            )
        } else {
            let data = self.shards.get(&shard)?;
            (
                &data.replication,
                ReplicaData::Clusters(shard_view(data)),
                data.keys.clone(),
            )
        };
        Some(ReplicaShard {
            shard,
            owner_dc: owner_dc.to_string(),
            watermark: outbox.history_position(),
            last_at_ms: outbox.records.back().map_or(0, |r| r.at_ms),
            data,
            sealed: None,
            needs_seed: false,
            keys,
        })
    }

    /// The lost operation a stored outcome stands for, if it was lost: a cluster created, or a
    /// job started, by a write this DC applied after the point where another DC took the
    /// shard over. A client retrying that write with its `Idempotency-Key` is told so instead
    /// of getting the outcome of something that no longer exists.
    pub fn lost_outcome(&self, outcome: &CommandResult) -> Option<&LostOperation> {
        let started = |op: &&LostOperation| op.kind == "operation_started";
        match outcome {
            Ok(Outcome::ClusterCreated { id }) => self
                .local
                .lost_operations
                .iter()
                .filter(started)
                .find(|op| op.cluster == Some(*id)),
            Ok(Outcome::JobStarted { job }) => self
                .local
                .lost_operations
                .iter()
                .filter(started)
                .find(|op| op.job == Some(*job)),
            _ => None,
        }
    }

    /// The lost-operations report of this DC, oldest first, and how many were ever reported.
    pub fn lost_operations(&self) -> (impl Iterator<Item = &LostOperation>, u64) {
        (
            self.local.lost_operations.iter(),
            self.local.lost_operations_total,
        )
    }

    fn check_shard(&self, shard: ShardId) -> Result<(), CommandError> {
        if shard.is_global() || shard.0 < self.shard_count() {
            Ok(())
        } else {
            Err(CommandError::invalid(
                ErrorCode::InvalidShard,
                format!("shard {shard} does not exist"),
            ))
        }
    }

    /// See [`crate::Command::SealReplica`].
    pub(crate) fn seal_replica(
        &mut self,
        shard: ShardId,
        owner_dc: &str,
        takeover: u64,
    ) -> CommandResult {
        self.check_shard(shard)?;
        if self.holds_writes(shard) {
            return Err(CommandError::conflict(
                ErrorCode::NotAReplica,
                format!("this DC wrote shard {shard}: it has no copy to seal"),
            ));
        }
        let replica = self
            .replicas
            .entry(shard)
            .or_insert_with(|| Arc::new(ReplicaShard::new(shard, owner_dc)));
        if replica.needs_seed {
            return Err(CommandError::conflict(
                ErrorCode::ReplicationNeedsSeed,
                format!("the copy of shard {shard} waits for a snapshot: it cannot take over"),
            ));
        }
        if replica.sealed == Some(takeover) {
            return Ok(Outcome::Unchanged);
        }
        Arc::make_mut(replica).sealed = Some(takeover);
        Ok(Outcome::Done)
    }

    /// See [`crate::Command::UnsealReplica`].
    pub(crate) fn unseal_replica(&mut self, shard: ShardId) -> CommandResult {
        match self.replicas.get_mut(&shard) {
            Some(replica) if replica.sealed.is_some() => {
                Arc::make_mut(replica).sealed = None;
                Ok(Outcome::Done)
            }
            _ => Ok(Outcome::Unchanged),
        }
    }

    /// See [`crate::Command::SeedReplica`].
    pub(crate) fn seed_replica(&mut self, seed: &ReplicaShard) -> CommandResult {
        let shard = seed.shard;
        self.check_shard(shard)?;
        if shard.is_global() != matches!(seed.data, ReplicaData::Global(_)) {
            return Err(CommandError::invalid(
                ErrorCode::InvalidSeed,
                format!("the seed of shard {shard} holds the wrong kind of data"),
            ));
        }
        if self.holds_writes(shard) {
            return Err(CommandError::conflict(
                ErrorCode::NotAReplica,
                format!("this DC wrote shard {shard}: it must be demoted before it is seeded"),
            ));
        }
        if let Some(takeover) = self.replicas.get(&shard).and_then(|r| r.sealed) {
            return Err(CommandError::conflict(
                ErrorCode::ReplicationSealed,
                format!("the copy of shard {shard} is sealed for takeover {takeover}"),
            ));
        }
        let mut copy = seed.clone();
        copy.sealed = None;
        copy.needs_seed = false;
        self.put_replica(shard, Some(copy));
        if shard.is_global() {
            self.global = GlobalShard::default();
        } else {
            self.replace_shard(shard, ClusterShard::default());
        }
        Ok(Outcome::Done)
    }

    /// See [`crate::Command::FreezeShard`].
    pub(crate) fn freeze_shard(&mut self, shard: ShardId, handover: u64) -> CommandResult {
        if shard.is_global() {
            return Err(CommandError::invalid(
                ErrorCode::InvalidShard,
                "the global shard is not handed over",
            ));
        }
        if self.replicas.contains_key(&shard) {
            return Err(CommandError::conflict(
                ErrorCode::NotOwner,
                format!("this DC holds shard {shard} as a replica"),
            ));
        }
        if self.shard_busy(shard) {
            return Err(CommandError::conflict(
                ErrorCode::ShardBusy,
                format!("an operation of shard {shard} is running"),
            ));
        }
        let Some(data) = self.shards.get_mut(&shard) else {
            return Err(CommandError::invalid(
                ErrorCode::InvalidShard,
                format!("shard {shard} does not exist"),
            ));
        };
        if data.frozen == Some(handover) {
            return Ok(Outcome::Unchanged);
        }
        Arc::make_mut(data).frozen = Some(handover);
        Ok(Outcome::Done)
    }

    /// Lifts the freeze of handover `handover` (another handover's freeze, or none, is left
    /// as it is: `Unchanged`).
    pub(crate) fn unfreeze_shard(&mut self, shard: ShardId, handover: u64) -> Outcome {
        match self.shards.get_mut(&shard) {
            Some(data) if data.frozen == Some(handover) => {
                Arc::make_mut(data).frozen = None;
                Outcome::Done
            }
            _ => Outcome::Unchanged,
        }
    }

    /// See [`crate::Command::ReleaseShard`]: a graceful handover's release, which happens only
    /// once no operation of the shard runs here.
    pub(crate) fn release_shard(&mut self, shard: ShardId, owner_dc: &str) -> CommandResult {
        if shard.is_global() || shard.0 >= self.shard_count() {
            return Err(CommandError::invalid(
                ErrorCode::InvalidShard,
                format!("shard {shard} cannot be released"),
            ));
        }
        if self.replicas.contains_key(&shard) {
            return Ok(Outcome::Unchanged);
        }
        if self.shard_busy(shard) {
            return Err(CommandError::conflict(
                ErrorCode::ShardBusy,
                format!("an operation of shard {shard} is running"),
            ));
        }
        let keep_through = self
            .outbox(shard)
            .map_or(Position::START, Outbox::history_position);
        self.demote_shard(shard, owner_dc, keep_through, 0)
    }

    /// See [`crate::Command::DemoteShard`]. `now` dates the lost-operations entries.
    pub(crate) fn demote_shard(
        &mut self,
        shard: ShardId,
        owner_dc: &str,
        keep_through: Position,
        now: u64,
    ) -> CommandResult {
        self.check_shard(shard)?;
        if self.replicas.contains_key(&shard) {
            return Ok(Outcome::Unchanged);
        }
        // Take the shard's data out; the jobs that ran in it stop here.
        let (outbox, clusters, view, keys) = if shard.is_global() {
            let global = std::mem::take(&mut self.global);
            let view = ReplicaData::Global(GlobalView {
                tenants: global.tenants,
                api_keys: global.api_keys,
                catalogs: global.catalogs,
                resource_blobs: global.resource_blobs,
            });
            (
                global.replication,
                BTreeMap::new(),
                view,
                ShardKeys::default(),
            )
        } else {
            // The jobs that ran in it stop here (re-derived: gone).
            let data = self.replace_shard(shard, ClusterShard::default());
            // What this DC archived of the shard goes with it: a new owner may reuse the job
            // numbers of operations lost here.
            self.archive_effects
                .push(crate::machine::retire::ArchiveEffect::DropShard(shard));
            let view = ReplicaData::Clusters(shard_view(&data));
            (data.replication, data.clusters, view, data.keys)
        };
        let mut lost: Vec<LostOperation> = outbox
            .records
            .iter()
            .filter(|r| r.position() > keep_through)
            .map(|r| LostOperation::of(r, &clusters))
            .collect();
        // Records a full outbox dropped before anyone pulled them: their content is gone.
        let dropped = Position {
            epoch: outbox.epoch,
            seq: outbox.dropped_through_seq,
        };
        if outbox.dropped_through_seq > 0 && dropped > keep_through {
            lost.insert(
                0,
                LostOperation {
                    shard,
                    epoch: outbox.epoch,
                    seq: outbox.dropped_through_seq,
                    kind: "dropped".into(),
                    tenant: None,
                    cluster: None,
                    job: None,
                    at_ms: 0,
                    new_owner: String::new(),
                    takeover_point: keep_through,
                    reported_at_ms: 0,
                    idempotency_key: None,
                },
            );
        }
        let exact = lost.is_empty() && outbox.history_position() == keep_through;
        if !lost.is_empty() {
            tracing::error!(%shard, count = lost.len(), new_owner = owner_dc, ?keep_through,
                "operations written here after the takeover point were lost; see the lost-operations report");
        }
        for mut operation in lost {
            operation.new_owner = owner_dc.to_string();
            operation.takeover_point = keep_through;
            operation.reported_at_ms = now;
            self.local.lost_operations.push_back(operation);
            self.local.lost_operations_total += 1;
            while self.local.lost_operations.len() > LOST_OPERATIONS_CAPACITY {
                self.local.lost_operations.pop_front();
            }
        }
        let replica = if exact {
            ReplicaShard {
                shard,
                owner_dc: owner_dc.to_string(),
                watermark: keep_through,
                last_at_ms: outbox.records.back().map_or(0, |r| r.at_ms),
                data: view,
                sealed: None,
                needs_seed: false,
                // Every key is of a record the new owner has too (nothing was lost).
                keys,
            }
        } else {
            // Diverged: nothing of this copy can be trusted beyond what a snapshot brings.
            ReplicaShard {
                needs_seed: true,
                ..ReplicaShard::new(shard, owner_dc)
            }
        };
        self.put_replica(shard, Some(replica));
        Ok(Outcome::Done)
    }

    /// See [`crate::Command::AdoptShard`]. The adopted data projects to exactly the replica's
    /// view (same cluster rows, nodes, job summaries and in-flight operations), so every copy
    /// stays equal; in-flight operations (after a failover) resume here.
    pub(crate) fn adopt_shard(
        &mut self,
        shard: ShardId,
        epoch: u64,
        after: Position,
        now: u64,
    ) -> CommandResult {
        self.check_shard(shard)?;
        if epoch <= after.epoch {
            return Err(CommandError::invalid(
                ErrorCode::InvalidEpoch,
                format!("epoch {epoch} does not follow {after:?}"),
            ));
        }
        let replica = match self.replicas.get(&shard) {
            // Nothing was ever replicated: the shard was empty at the owner too.
            None if after.seq == 0 && !self.holds_writes(shard) => None,
            None => {
                return Err(CommandError::conflict(
                    ErrorCode::NotCaughtUp,
                    format!("shard {shard}: no replica copy, the owner wrote through {after:?}"),
                ))
            }
            Some(replica) if replica.needs_seed || replica.watermark != after => {
                return Err(CommandError::conflict(
                    ErrorCode::NotCaughtUp,
                    format!(
                        "shard {shard}: the replica is at {:?}, the epoch starts after {after:?}",
                        replica.watermark
                    ),
                ))
            }
            Some(replica) => Some(replica.clone()),
        };
        // The copy leaves the replicas (and their index) first; it is taken, not copied, unless
        // a snapshot being written still holds it.
        self.put_replica(shard, None);
        let (data, keys) = match replica.map(Arc::unwrap_or_clone) {
            None => (ReplicaShard::new(shard, "").data, ShardKeys::default()),
            // The keys come along: a retry of a request the old owner applied answers its
            // outcome here too.
            Some(replica) => (replica.data, replica.keys),
        };
        let outbox = Outbox::starting(epoch, after);
        match data {
            ReplicaData::Global(view) => {
                self.global = GlobalShard {
                    tenants: view.tenants,
                    api_keys: view.api_keys,
                    catalogs: view.catalogs,
                    resource_blobs: view.resource_blobs,
                    replication: outbox,
                };
            }
            ReplicaData::Clusters(view) => self.adopt_clusters(shard, view, keys, outbox, now),
        }
        Ok(Outcome::Done)
    }

    fn adopt_clusters(
        &mut self,
        shard: ShardId,
        view: ClusterShardView,
        keys: ShardKeys,
        outbox: Outbox,
        now: u64,
    ) {
        let shard_count = self.shard_count();
        let mut next_n = 0;
        let mut clusters = BTreeMap::new();
        let mut resumed = Vec::new();
        // Each tenant's service definitions, decoded from its catalog and interned once per
        // shard (not once per cluster: a shard of a million-cluster DC holds thousands), and
        // the shared map of the list of services its last cluster named (its clusters mostly
        // name the same; any other list is built and interned, which finds its map too).
        let mut tenant_services: BTreeMap<ShortStr, ServiceDefs> = BTreeMap::new();
        let mut last_defs: BTreeMap<ShortStr, (Vec<ShortStr>, Arc<ServiceDefs>)> = BTreeMap::new();
        for (id, view) in view.clusters {
            next_n = next_n.max((id.0 - u64::from(shard.0)) / u64::from(shard_count) + 1);
            let tenant = &view.cluster.account.tenant_id;
            if !tenant_services.contains_key(tenant) {
                let defs = self
                    .global_data()
                    .catalogs
                    .get(tenant.as_str())
                    .map(TenantCatalog::services)
                    .unwrap_or_default();
                let defs = self.service_pool.intern_all(defs);
                tenant_services.insert(tenant.clone(), defs);
            }
            let named = &view.cluster.services;
            let service_defs = match last_defs.get(tenant) {
                Some((services, defs)) if services == named => Arc::clone(defs),
                _ => {
                    let defs = tenant_services[tenant]
                        .iter()
                        .filter(|(name, _)| named.iter().any(|n| n == *name))
                        .map(|(name, service)| (name.clone(), service.clone()))
                        .collect();
                    let defs = self.service_pool.intern_defs(defs);
                    last_defs.insert(tenant.clone(), (named.clone(), Arc::clone(&defs)));
                    defs
                }
            };
            let record = adopted_record(id, view, service_defs, now);
            if let Some(run) = record.jobs.values().next() {
                resumed.push(run.job.id);
            }
            clusters.insert(id, Arc::new(record));
        }
        if outbox.epoch > 1 {
            next_n = next_n.max(outbox.epoch.saturating_mul(IDS_PER_EPOCH));
        }
        self.replace_shard(
            shard,
            ClusterShard {
                next_n,
                clusters,
                replication: outbox,
                frozen: None,
                keys,
            },
        );
        for job in resumed {
            self.refresh_job(job);
            let finished = self
                .job(job)
                .is_some_and(|run| run.job.status.is_finished());
            if finished {
                // Every task of it was already done (the checkpoints prove it).
                self.emit_finished(job);
            }
            tracing::info!(%job, "in-flight operation resumed after a takeover");
        }
    }
}

/// A cluster as a new owner takes it from its replica copy: live nodes from the replicated
/// ones; finished jobs as summaries; the operation in flight, if any, as a job run again from
/// its plan (see [`resumed_run`]), shipped as the replicas already have it.
fn adopted_record(
    id: ClusterId,
    view: ClusterView,
    service_defs: Arc<coopr_types::ServiceDefs>,
    now: u64,
) -> ClusterRecord {
    let ClusterView {
        mut cluster,
        nodes: mut replicated,
        jobs: summaries,
        in_flight,
    } = view;
    let node = |n: ReplicatedNode| {
        let node = Node {
            id: n.id,
            cluster_id: n.cluster_id,
            properties: n.properties,
            actions: Vec::new(),
            provisioner_results: n.provisioner_results,
        };
        (node.id.clone(), node)
    };
    // Taken from the copy, or copied where the operation in flight ships them along.
    let nodes: coopr_types::VecMap<NodeId, Node> = if in_flight.is_some() {
        replicated.values().cloned().map(node).collect()
    } else {
        std::mem::take(&mut replicated)
            .into_iter()
            .map(|(_, n)| node(n))
            .collect()
    };
    let mut next_job_seq = summaries.keys().map(|j| j.seq + 1).max().unwrap_or(1);
    let mut jobs = coopr_types::VecMap::new();
    let mut shipped = None;
    if let Some(operation) = in_flight {
        let run = resumed_run(id, &operation, now);
        if run.job.status.is_finished() {
            cluster.status =
                cluster_status_after(operation.action, run.job.status == JobStatus::Complete);
        }
        next_job_seq = next_job_seq.max(operation.job.seq + 1);
        cluster.latest_job_id = Some(operation.job);
        jobs.insert(operation.job.seq, run);
        shipped = Some(ShippedOperation {
            operation,
            nodes: replicated,
        });
    }
    ClusterRecord {
        cluster,
        nodes,
        jobs,
        next_job_seq,
        service_defs,
        shipped,
        adopted_jobs: summaries.into_iter().collect(),
        retired_jobs: coopr_types::VecMap::new(),
    }
}

/// The job of an operation in flight when its shard was taken over, to run again here: the
/// shipped plan, minus each CREATE whose machine a checkpoint proves (its CONFIRM and the
/// rest run again: tasks are idempotent and providers key machines by node id, so nothing is
/// created twice or leaked).
pub fn resumed_run(cluster: ClusterId, operation: &crate::InFlight, now: u64) -> JobRun {
    let stages: Vec<Vec<PlannedTask>> = operation
        .plan
        .iter()
        .map(|stage| {
            stage
                .iter()
                .flat_map(|PlanStep(task, service, nodenums)| {
                    nodenums.iter().filter_map(move |nodenum| {
                        let node_id = NodeId::derive(cluster, *nodenum);
                        let proven = *task == TaskName::Create
                            && operation.checkpoints.contains_key(&node_id);
                        (!proven).then(|| PlannedTask {
                            task_name: *task,
                            node_id,
                            service: service.clone(),
                        })
                    })
                })
                .collect()
        })
        .collect();
    JobRun::new(
        operation.job,
        operation.action,
        stages,
        operation.services.clone(),
        operation.config.clone(),
        now,
    )
}
