//! The deterministic state machine: [`State::apply`] takes one log [`Entry`] and returns its
//! outcome. Same entries in the same order give the same state on every node, in replay after a
//! restart, and (later) on every member of a Raft group.
//!
//! ```text
//!  Entry{now_ms, idempotency_key, Command}
//!        |
//!        v
//!  idempotency table hit? --yes--> stored outcome (nothing changes)
//!        | no
//!        v
//!  global shard      cluster shard s = id mod S        local (DC-only) state
//!  tenants, keys,    clusters, nodes, jobs, tasks      provisioners, idempotency,
//!  catalog           (engine::JobRun per job)          derived task queue
//! ```
//!
//! One file per concern, each with its own `impl State` block; [`State::apply`] dispatches every
//! [`Command`] to one method:
//!
//! - `catalog`: tenants, API keys, catalog entities and imports, plugin resources (the global
//!   shard), and how a DC reads them ([`State::global_data`]);
//! - `clusters`: creates, operations, added services, expiry, template sync, abort/pause/resume,
//!   quotas and tenant usage;
//! - `tasks`: the derived task queue, take, finish, expiry, provisioners;
//! - `emit`: the records each change emits into its shard's outbox, and the owner's view of a
//!   shard as its replicas see it;
//! - `index`: derived indexes (in-progress tasks, live clusters by tenant) and
//!   [`State::check_indexes`], which compares every derived index with a full scan.
//!
//! Ownership changes of a shard are in [`crate::ownership`], the replica side of replication in
//! [`crate::replication`].

mod catalog;
mod clusters;
mod emit;
mod index;
pub mod retire;
pub(crate) mod service_pool;
mod tasks;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use coopr_engine::job::JobRun;
use coopr_types::{
    ApiKey, Cluster, ClusterId, JobId, Node, NodeId, ServiceDefs, ShardId, TaskId, Tenant, VecMap,
};
use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Entry, ProvisionerInfo};
use crate::replication::{InFlight, JobSummary, Outbox, ReplicaShard, ReplicatedNode, ShardKeys};
use crate::{CommandError, ErrorCode};
use clusters::JobControl;

pub use catalog::{GlobalRef, TenantCatalog, Versions};
pub(crate) use emit::shard_view;

/// Idempotency keys remembered (oldest forgotten first).
pub const IDEMPOTENCY_CAPACITY: usize = 100_000;
/// The error code of a write refused because it was proposed under another ownership epoch.
pub const STALE_EPOCH: &str = ErrorCode::StaleEpoch.as_str();
/// The error code of a write refused because this DC holds the shard as a replica.
pub const NOT_OWNER: &str = ErrorCode::NotOwner.as_str();
/// The error code of a write refused because the shard is frozen for a handover.
pub const HANDING_OVER: &str = ErrorCode::HandingOver.as_str();
/// A create for a tenant with a quota reached a DC that does not write the global shard (it
/// moved): retryable, the retry is routed to the new owner.
pub const QUOTA_ELSEWHERE: &str = ErrorCode::QuotaElsewhere.as_str();

/// The global shard: tenants, hashed API keys, catalogs. Replicated to every DC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalShard {
    pub tenants: BTreeMap<String, Tenant>,
    /// By key hash.
    pub api_keys: BTreeMap<String, ApiKey>,
    pub catalogs: BTreeMap<String, TenantCatalog>,
    /// Plugin resources' bytes by SHA-256 (see [`crate::resources`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_blobs: crate::resources::Blobs,
    /// Records for the replicas of this shard.
    #[serde(default)]
    pub replication: Outbox,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster: Cluster,
    /// Small maps of large values: [`VecMap`]s, not `BTreeMap`s (see `coopr_types::vecmap`).
    pub nodes: VecMap<NodeId, Node>,
    /// By job sequence number.
    pub jobs: VecMap<u32, JobRun>,
    pub next_job_seq: u32,
    /// The services catalog as of the latest operation (the planner's input); equal
    /// definitions, and equal maps of them, are shared between records ([`service_pool`]),
    /// and equal ones are decoded once in a snapshot part (`coopr_types::shared_json`).
    #[serde(deserialize_with = "coopr_types::shared_json::deserialize")]
    pub service_defs: Arc<ServiceDefs>,
    /// The operation in flight as the replicas know it (set by its `OperationStarted`, cleared
    /// by its `OperationFinished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped: Option<ShippedOperation>,
    /// Finished jobs of the cluster under a previous owner DC (their summaries, as replicated):
    /// the job history of a cluster this DC adopted in a handover.
    #[serde(default, skip_serializing_if = "VecMap::is_empty")]
    pub adopted_jobs: VecMap<JobId, JobSummary>,
    /// Finished jobs moved out of memory after the job retention (see [`retire`]): their
    /// summaries stay here (progress, the replicated view), the whole runs are in the node's
    /// job archive.
    #[serde(default, skip_serializing_if = "VecMap::is_empty")]
    pub retired_jobs: VecMap<JobId, JobSummary>,
}

/// An in-flight operation as shipped: its restart state, and the nodes as it started plus its
/// checkpoints. Task results that are not replicated change the live nodes, not these, so the
/// owner's [`State::replicated_view`] of a cluster in flight is what its records built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShippedOperation {
    pub operation: InFlight,
    pub nodes: VecMap<NodeId, ReplicatedNode>,
}

impl ClusterRecord {
    pub fn latest_job(&self) -> Option<&JobRun> {
        self.jobs.values().next_back()
    }

    /// The latest job as a summary, whether it is held whole, retired to the archive or was
    /// adopted from a previous owner: what `progress` and `/status` show.
    pub fn latest_summary(&self) -> Option<JobSummary> {
        let held = self.latest_job().map(emit::job_summary);
        let older = [
            self.retired_jobs.values().next_back(),
            self.adopted_jobs.values().next_back(),
        ];
        older
            .into_iter()
            .flatten()
            .cloned()
            .chain(held)
            .max_by_key(|summary| summary.id.seq)
    }

    fn running_job(&self) -> Option<&JobRun> {
        self.jobs.values().find(|j| !j.job.status.is_finished())
    }

    /// Gives back the vectors' growth slack (task lists, action histories): called when a job
    /// finishes and when a record is loaded, since a record changes little between operations
    /// and millions of them are held.
    pub(crate) fn shrink_to_fit(&mut self) {
        for run in self.jobs.values_mut() {
            run.tasks.shrink_to_fit();
            run.job.stages.shrink_to_fit();
        }
        self.jobs.shrink_to_fit();
        self.retired_jobs.shrink_to_fit();
        self.adopted_jobs.shrink_to_fit();
        for node in self.nodes.values_mut() {
            node.actions.shrink_to_fit();
            node.properties.services.shrink_to_fit();
        }
        self.nodes.shrink_to_fit();
        self.cluster.nodes.shrink_to_fit();
        self.cluster.services.shrink_to_fit();
    }
}

/// One cluster shard: its clusters and the counter that allocates their IDs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterShard {
    pub next_n: u64,
    /// Behind a pointer: a record is over half a kilobyte inline, and a B-tree node keeps room
    /// for eleven values, so inline records left most of a node's bytes empty (see
    /// `coopr-bench scale`). An `Arc`, so that copying a shard a snapshot still holds (below)
    /// copies its map, not every record: a change then copies the one record it changes
    /// (`Arc::make_mut`). With boxes, each shard written while a snapshot was encoded was
    /// copied whole, and the copies freed after it left the allocator fragmented.
    pub clusters: BTreeMap<ClusterId, Arc<ClusterRecord>>,
    /// Records for the replicas of this shard.
    #[serde(default)]
    pub replication: Outbox,
    /// Set (to the handover number) once this DC stopped writing the shard for a handover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<u64>,
    /// The idempotency keys this shard's `OperationStarted` records carried: what its replicas
    /// remember too, and what a seed of the shard or a new owner takes along (the DC's own
    /// table, [`LocalState::idempotency`], stays in the DC).
    #[serde(default, skip_serializing_if = "ShardKeys::is_empty")]
    pub keys: ShardKeys,
}

/// State that never leaves the DC: provisioner registrations and the idempotency table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    pub provisioners: BTreeMap<String, ProvisionerInfo>,
    pub idempotency: BTreeMap<String, CommandResult>,
    pub idempotency_order: VecDeque<String>,
    /// What this DC wrote as a shard's owner after another DC took the shard over (see
    /// [`crate::ownership`]), newest last, at most [`crate::LOST_OPERATIONS_CAPACITY`].
    #[serde(default)]
    pub lost_operations: VecDeque<crate::LostOperation>,
    /// Every lost operation ever reported here (the report keeps the last ones).
    #[serde(default)]
    pub lost_operations_total: u64,
    /// The time of the latest entry applied (see [`State::apply`]): entry times as the state
    /// machine uses them never go backwards, also when leadership moves to a node whose wall
    /// clock is behind the previous leader's.
    #[serde(default)]
    pub clock_ms: u64,
}

#[derive(Debug, Clone)]
pub struct State {
    shard_count: u32,
    pub global: GlobalShard,
    /// Behind `Arc`s so that a snapshot takes the shards in microseconds under the lock and
    /// encodes them after it: a change to a shard the snapshot still holds copies that shard's
    /// map of records and the record it changes first (`Arc::make_mut`), and every other change
    /// costs nothing more.
    pub shards: BTreeMap<ShardId, Arc<ClusterShard>>,
    pub local: LocalState,
    /// Shards this DC holds as a replica of another DC (cluster shards and the global shard).
    pub replicas: BTreeMap<ShardId, Arc<ReplicaShard>>,
    /// Derived (rebuilt on load): tasks that can be handed out, and jobs not yet finished.
    pub(crate) ready: BTreeSet<TaskId>,
    pub(crate) active_jobs: BTreeSet<JobId>,
    /// Derived (rebuilt on load, see [`index`]): in-progress tasks by owner and deadline; live
    /// clusters by tenant of the shards this DC writes, and of its replica copies (built on
    /// first use: a loader may set `replicas` directly).
    pub(crate) in_progress: index::TaskIndex,
    pub(crate) by_tenant: index::TenantIndex,
    pub(crate) copies_by_tenant: std::sync::OnceLock<index::TenantIndex>,
    /// The `now_ms` of the entry being applied: the commit time stamped on the records it emits.
    applying_at_ms: u64,
    /// The idempotency key of the entry being applied: `OperationStarted` carries it.
    applying_key: Option<String>,
    /// Derived: shares equal service definitions between records.
    pub(crate) service_pool: service_pool::ServicePool,
    /// Records the cluster shards' outboxes hold at most together
    /// ([`crate::replication::DC_OUTBOX_CAPACITY`]; a test may set less).
    pub(crate) outbox_capacity: usize,
    /// What the job archive must do for the entries applied since it was last drained
    /// ([`State::take_archive_effects`]): jobs retired out of memory, shards dropped.
    pub(crate) archive_effects: Vec<retire::ArchiveEffect>,
}

impl State {
    pub fn new(shard_count: u32) -> State {
        // Snapshot part ids of the job archive sit above 2^30, of replicas above 2^31 (see
        // `persist`).
        assert!(shard_count > 0 && shard_count < crate::persist::ARCHIVE_PART_BASE);
        State {
            shard_count,
            global: GlobalShard::default(),
            shards: (0..shard_count)
                .map(|s| (ShardId(s), Arc::default()))
                .collect(),
            local: LocalState::default(),
            replicas: BTreeMap::new(),
            ready: BTreeSet::new(),
            active_jobs: BTreeSet::new(),
            in_progress: index::TaskIndex::default(),
            by_tenant: index::TenantIndex::default(),
            copies_by_tenant: std::sync::OnceLock::new(),
            applying_at_ms: 0,
            applying_key: None,
            service_pool: service_pool::ServicePool::default(),
            outbox_capacity: crate::replication::DC_OUTBOX_CAPACITY,
            archive_effects: Vec::new(),
        }
    }

    /// Sets how many records the cluster shards' outboxes hold at most together (default
    /// [`crate::replication::DC_OUTBOX_CAPACITY`]). For tests: every node of a DC must apply
    /// its log with the same bound, or their states diverge.
    #[doc(hidden)]
    pub fn set_outbox_capacity(&mut self, records: usize) {
        self.outbox_capacity = records;
    }

    /// Rebuilds a state from its parts (a snapshot), recomputing the derived indexes.
    pub fn from_parts(
        shard_count: u32,
        global: GlobalShard,
        shards: BTreeMap<ShardId, ClusterShard>,
        local: LocalState,
    ) -> State {
        let mut shards = shards;
        let mut pool = service_pool::ServicePool::default();
        for shard in shards.values_mut() {
            State::intern_shard(&mut pool, shard);
        }
        State::from_interned_parts(shard_count, global, shards, local, pool)
    }

    /// Shares the service definitions, templates and providers of a shard's records through
    /// `pool`, as each part is decoded. The records of one part share an allocation for each
    /// distinct definition map, template and provider (`coopr_types::shared_json`), interned
    /// once here; a record that holds its own copy has it interned on its own.
    pub(crate) fn intern_shard(pool: &mut service_pool::ServicePool, shard: &mut ClusterShard) {
        let mut defs_seen = HashMap::new();
        let mut templates_seen = HashMap::new();
        let mut providers_seen = HashMap::new();
        for record in shard.clusters.values_mut() {
            // Just decoded: held here alone, so this copies nothing.
            let record = Arc::make_mut(record);
            let defs = std::mem::take(&mut record.service_defs);
            record.service_defs = if Arc::strong_count(&defs) == 1 {
                pool.intern_defs(Arc::unwrap_or_clone(defs))
            } else {
                intern_once(&mut defs_seen, defs, |d| pool.intern_defs((*d).clone()))
            };
            let cluster = &mut record.cluster;
            cluster.cluster_template =
                intern_held(&mut templates_seen, &cluster.cluster_template, |t| {
                    pool.intern_template(t)
                });
            cluster.provider = intern_held(&mut providers_seen, &cluster.provider, |p| {
                pool.intern_provider(p)
            });
            record.shrink_to_fit();
        }
    }

    /// Shares the templates and providers of a replica copy's clusters through `pool` (each
    /// arrives with its own copy, in the record that first names the cluster or in a snapshot
    /// part): all of them, or only those of `touched`.
    pub(crate) fn intern_replica(
        pool: &mut service_pool::ServicePool,
        replica: &mut ReplicaShard,
        touched: Option<&BTreeSet<ClusterId>>,
    ) {
        let crate::replication::ReplicaData::Clusters(view) = &mut replica.data else {
            return;
        };
        for (id, copy) in &mut view.clusters {
            if touched.is_none_or(|touched| touched.contains(id)) {
                copy.cluster.cluster_template =
                    pool.intern_template(Arc::clone(&copy.cluster.cluster_template));
                copy.cluster.provider = pool.intern_provider(Arc::clone(&copy.cluster.provider));
            }
        }
    }

    /// [`State::from_parts`] of shards whose records [`State::intern_shard`] went through
    /// with `pool`.
    pub(crate) fn from_interned_parts(
        shard_count: u32,
        global: GlobalShard,
        shards: BTreeMap<ShardId, ClusterShard>,
        local: LocalState,
        pool: service_pool::ServicePool,
    ) -> State {
        let mut state = State::new(shard_count);
        state.global = global;
        state
            .shards
            .extend(shards.into_iter().map(|(id, shard)| (id, Arc::new(shard))));
        state.local = local;
        state.service_pool = pool;
        let jobs: Vec<JobId> = state
            .shards
            .values()
            .flat_map(|s| s.clusters.values())
            .flat_map(|c| c.jobs.values())
            .filter(|j| !j.job.status.is_finished())
            .map(|j| j.job.id)
            .collect();
        state.reindex_clusters();
        for job in jobs {
            state.refresh_job(job);
        }
        state
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn cluster(&self, id: ClusterId) -> Option<&ClusterRecord> {
        self.shards
            .get(&id.shard(self.shard_count))?
            .clusters
            .get(&id)
            .map(|record| &**record)
    }

    fn cluster_mut(&mut self, id: ClusterId) -> Result<&mut ClusterRecord, CommandError> {
        self.shards
            .get_mut(&id.shard(self.shard_count))
            .and_then(|s| Arc::make_mut(s).clusters.get_mut(&id))
            .map(Arc::make_mut)
            .ok_or_else(|| CommandError::not_found("cluster", id))
    }

    pub fn clusters(&self) -> impl Iterator<Item = &ClusterRecord> {
        self.shards
            .values()
            .flat_map(|s| s.clusters.values().map(|record| &**record))
    }

    pub fn job(&self, id: JobId) -> Option<&JobRun> {
        self.cluster(id.cluster)?.jobs.get(&id.seq)
    }

    pub fn task(&self, id: TaskId) -> Option<&coopr_types::Task> {
        self.job(id.job)?.tasks.get(&id)
    }

    /// The stored outcome of an idempotency key, if that key was already applied: here (the
    /// DC's own table), or by the owner of a shard whose `OperationStarted` with the key this DC
    /// holds (as a replica, or as the shard's new owner after a handover or failover).
    pub fn idempotent_outcome(&self, key: &str) -> Option<CommandResult> {
        if let Some(outcome) = self.local.idempotency.get(key) {
            return Some(outcome.clone());
        }
        self.shards
            .values()
            .map(|s| &s.keys)
            .chain(self.replicas.values().map(|r| &r.keys))
            .find_map(|keys| keys.get(key))
            .map(|outcome| Ok(outcome.clone()))
    }

    /// Applies one entry. Rejected commands change nothing.
    pub fn apply(&mut self, entry: &Entry) -> CommandResult {
        // An entry's time is its leader's wall clock when proposed; a new leader's clock may be
        // behind the last one's. Every node applies the same entries, so clamping here keeps
        // every derived time (create times, deadlines, record times) monotonic and the same
        // on every node. A rejected command, or one that did nothing, changes nothing, the
        // floor included.
        let now = entry.now_ms.max(self.local.clock_ms);
        // A write proposed under another ownership epoch changes nothing and is not remembered
        // under its idempotency key: the client retries it at the shard's current owner.
        if let Some(fence) = entry.fence {
            if let Some(refused) = self.refuse_fenced(fence.shard) {
                return Err(refused);
            }
            let epoch = self.shard_epoch(fence.shard);
            if epoch != Some(fence.epoch) {
                return Err(CommandError::conflict(
                    ErrorCode::StaleEpoch,
                    format!(
                        "shard {} is at epoch {} here, the write was proposed at epoch {}",
                        fence.shard,
                        epoch.map_or_else(|| "none".to_string(), |e| e.to_string()),
                        fence.epoch
                    ),
                ));
            }
        }
        if let Some(key) = &entry.idempotency_key {
            if let Some(previous) = self.idempotent_outcome(key) {
                return previous;
            }
        }
        self.applying_at_ms = now;
        self.applying_key = entry.idempotency_key.clone();
        let result = self.apply_command(&entry.command, now);
        self.applying_key = None;
        let changed = !matches!(
            result,
            Err(_)
                | Ok(crate::Outcome::Unchanged)
                | Ok(crate::Outcome::TaskTaken { task: None })
                | Ok(crate::Outcome::TasksExpired { count: 0 })
        );
        if changed {
            self.local.clock_ms = now;
        }
        if let Some(key) = &entry.idempotency_key {
            self.local.idempotency.insert(key.clone(), result.clone());
            self.local.idempotency_order.push_back(key.clone());
            while self.local.idempotency_order.len() > IDEMPOTENCY_CAPACITY {
                if let Some(old) = self.local.idempotency_order.pop_front() {
                    self.local.idempotency.remove(&old);
                }
            }
        }
        result
    }

    /// Why no write may go to `shard` here whatever its epoch: it is frozen for a handover, or
    /// this DC holds it as a replica.
    fn refuse_fenced(&self, shard: ShardId) -> Option<CommandError> {
        if self.replicas.contains_key(&shard) {
            return Some(CommandError::conflict(
                ErrorCode::NotOwner,
                format!("this DC holds shard {shard} as a replica"),
            ));
        }
        let frozen = self.shards.get(&shard).and_then(|s| s.frozen);
        frozen.map(|handover| {
            CommandError::conflict(
                ErrorCode::HandingOver,
                format!("shard {shard} is frozen for handover {handover}"),
            )
        })
    }

    /// Whether an operation of `shard` is running (a handover waits for it to end).
    pub fn shard_busy(&self, shard: ShardId) -> bool {
        self.active_jobs
            .iter()
            .any(|job| job.cluster.shard(self.shard_count) == shard)
    }

    /// The ownership epoch of a shard this DC writes: its outbox's epoch (`None`: no such shard).
    pub fn shard_epoch(&self, shard: ShardId) -> Option<u64> {
        if shard.is_global() {
            return Some(self.global.replication.epoch);
        }
        self.shards.get(&shard).map(|s| s.replication.epoch)
    }

    fn apply_command(&mut self, command: &Command, now: u64) -> CommandResult {
        match command {
            Command::PutTenant { tenant } => self.put_tenant(tenant),
            Command::DeleteTenant { name } => self.delete_tenant(name),
            Command::PutApiKey { key } => self.put_api_key(key),
            Command::PutEntity {
                tenant,
                kind,
                name,
                body,
                create_only,
            } => self.put_entity(tenant, *kind, name, body, *create_only),
            Command::DeleteEntity {
                tenant,
                kind,
                name,
                version,
            } => self.delete_entity(tenant, *kind, name, *version),
            Command::ImportCatalog { tenant, entities } => self.import_catalog(tenant, entities),
            Command::PutProfile {
                tenant,
                user,
                profile,
            } => self.put_profile(tenant, user, profile.as_ref()),
            Command::PutResource {
                tenant,
                resource,
                bytes,
            } => self.put_resource(tenant, resource, bytes),
            Command::StageResource {
                tenant,
                resource,
                version,
            } => self.stage_resource(tenant, resource, *version),
            Command::RecallResource {
                tenant,
                resource,
                version,
            } => self.recall_resource(tenant, resource, *version),
            Command::SyncResources { tenant } => self.sync_resources(tenant),
            Command::DeleteResource {
                tenant,
                resource,
                version,
            } => self.delete_resource(tenant, resource, *version),
            Command::CreateCluster { shard, spec } => self.create_cluster(*shard, spec, now),
            Command::StartOperation {
                cluster,
                action,
                services,
                config,
            } => self.start_operation(*cluster, *action, services, config.clone(), now),
            Command::AddServices {
                cluster,
                services,
                placement,
            } => self.add_services(*cluster, services, placement, now),
            Command::SetExpireTime {
                cluster,
                expire_time,
            } => self.set_expire_time(*cluster, *expire_time),
            Command::SyncTemplate { cluster, template } => self.sync_template(*cluster, template),
            Command::Abort { cluster } => self.job_control(*cluster, now, JobControl::Abort),
            Command::Pause { cluster } => self.job_control(*cluster, now, JobControl::Pause),
            Command::Resume { cluster } => self.job_control(*cluster, now, JobControl::Resume),
            Command::TakeTask {
                provisioner_id,
                worker_id,
                tenant_id,
                timeout_ms,
                shards,
            } => self.take_task(
                provisioner_id,
                worker_id,
                tenant_id.as_deref(),
                *timeout_ms,
                shards.as_ref(),
                now,
            ),
            Command::FinishTask(result) => self.finish_task(result, now),
            Command::ExpireTasks => self.expire_tasks(now, None),
            Command::RetireJobs { jobs } => self.retire_jobs(jobs),
            Command::ReleaseProvisioner { id } => self.expire_tasks(now, Some(id)),
            Command::RegisterProvisioner { info } => self.register_provisioner(info),
            Command::UnregisterProvisioner { id } => self.unregister_provisioner(id),
            Command::TrimOutbox { shard, through_seq } => self.trim_outbox(*shard, *through_seq),
            Command::ApplyReplicationBatch {
                from_dc,
                shard,
                records,
                epoch_start,
            } => self.apply_replication_batch(from_dc, *shard, records, *epoch_start),
            Command::FreezeShard { shard, handover } => self.freeze_shard(*shard, *handover),
            Command::UnfreezeShard { shard, handover } => {
                Ok(self.unfreeze_shard(*shard, *handover))
            }
            Command::AdoptShard {
                shard,
                epoch,
                after,
            } => self.adopt_shard(*shard, *epoch, *after, now),
            Command::ReleaseShard { shard, owner_dc } => self.release_shard(*shard, owner_dc),
            Command::DemoteShard {
                shard,
                owner_dc,
                keep_through,
            } => self.demote_shard(*shard, owner_dc, *keep_through, now),
            Command::SealReplica {
                shard,
                owner_dc,
                takeover,
            } => self.seal_replica(*shard, owner_dc, *takeover),
            Command::UnsealReplica { shard } => self.unseal_replica(*shard),
            Command::SeedReplica { seed } => self.seed_replica(seed),
        }
    }
}

/// [`intern_once`] of the allocation `held` (a record's field), or `intern` of it directly
/// when nothing else holds it.
fn intern_held<T>(
    seen: &mut HashMap<usize, (Arc<T>, Arc<T>)>,
    held: &Arc<T>,
    intern: impl FnOnce(Arc<T>) -> Arc<T>,
) -> Arc<T> {
    if Arc::strong_count(held) == 1 {
        intern(Arc::clone(held))
    } else {
        intern_once(seen, Arc::clone(held), intern)
    }
}

/// `intern(value)` once per allocation: values that share one allocation share the result.
/// `seen` holds each allocation it saw, so that its address is not reused meanwhile.
fn intern_once<T>(
    seen: &mut HashMap<usize, (Arc<T>, Arc<T>)>,
    value: Arc<T>,
    intern: impl FnOnce(Arc<T>) -> Arc<T>,
) -> Arc<T> {
    let key = Arc::as_ptr(&value) as usize;
    if let Some((_, interned)) = seen.get(&key) {
        return Arc::clone(interned);
    }
    let interned = intern(Arc::clone(&value));
    seen.insert(key, (value, Arc::clone(&interned)));
    interned
}
