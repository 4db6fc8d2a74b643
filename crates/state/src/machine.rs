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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use coopr_engine::job::{cluster_status_after, JobEffect, JobRun};
use coopr_engine::planner::{plan, PlanInput, PlannedTask};
use coopr_types::{
    Account, ApiKey, Cluster, ClusterAction, ClusterId, ClusterStatus, EntityKind, JobId,
    JobStatus, Node, NodeAction, NodeId, NodeProperties, Service, ShardId, TaskId, TaskName,
    TaskOwner, TaskStatus, Tenant,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{
    ClusterSpec, Command, CommandResult, Entry, Outcome, ProvisionerInfo, TaskResult,
};
use crate::replication::{
    compact_stage, to_value, ApplyError, Checkpoint, ClusterRow, ClusterShardView, ClusterView,
    GlobalRecord, GlobalView, InFlight, JobSummary, NodeOutcome, Outbox, PlanStep, Position,
    RecordKind, ReplicaData, ReplicaShard, ReplicatedNode, ShardKeys, OUTBOX_CAPACITY,
};
use crate::CommandError;

/// Idempotency keys remembered (oldest forgotten first).
pub const IDEMPOTENCY_CAPACITY: usize = 100_000;
/// The error code of a write refused because it was proposed under another ownership epoch.
pub const STALE_EPOCH: &str = "stale_epoch";
/// The error code of a write refused because this DC holds the shard as a replica.
pub const NOT_OWNER: &str = "not_owner";
/// The error code of a write refused because the shard is frozen for a handover.
pub const HANDING_OVER: &str = "handing_over";
/// A create for a tenant with a quota reached a DC that does not write the global shard (it
/// moved): retryable, the retry is routed to the new owner.
pub const QUOTA_ELSEWHERE: &str = "quota_elsewhere";

/// Versions of one catalog entity, by version number.
pub type Versions = BTreeMap<u32, Value>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantCatalog {
    pub entities: BTreeMap<EntityKind, BTreeMap<String, Versions>>,
}

impl TenantCatalog {
    /// The latest version of an entity.
    pub fn latest(&self, kind: EntityKind, name: &str) -> Option<&Value> {
        self.entities.get(&kind)?.get(name)?.values().next_back()
    }

    pub fn version(&self, kind: EntityKind, name: &str, version: u32) -> Option<&Value> {
        self.entities.get(&kind)?.get(name)?.get(&version)
    }

    /// Latest versions of every entity of a kind, by name.
    pub fn list(&self, kind: EntityKind) -> Vec<&Value> {
        self.entities
            .get(&kind)
            .map(|m| m.values().filter_map(|v| v.values().next_back()).collect())
            .unwrap_or_default()
    }

    /// Stores `body` as `version` of an entity.
    pub fn put_version(&mut self, kind: EntityKind, name: &str, version: u32, body: Value) {
        self.entities
            .entry(kind)
            .or_default()
            .entry(name.to_string())
            .or_default()
            .insert(version, body);
    }

    /// Deletes one version of an entity, or all of them (`None`).
    pub fn delete(&mut self, kind: EntityKind, name: &str, version: Option<u32>) {
        let Some(by_name) = self.entities.get_mut(&kind) else {
            return;
        };
        match version {
            None => {
                by_name.remove(name);
            }
            Some(v) => {
                if let Some(versions) = by_name.get_mut(name) {
                    versions.remove(&v);
                    if versions.is_empty() {
                        by_name.remove(name);
                    }
                }
            }
        }
    }

    /// Replaces every entity of the given kinds by these, each at version 1.
    pub fn import(&mut self, entities: &BTreeMap<EntityKind, Vec<Value>>) {
        for (kind, bodies) in entities {
            let by_name = self.entities.entry(*kind).or_default();
            by_name.clear();
            for body in bodies {
                let name = body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let mut body = body.clone();
                if let Value::Object(map) = &mut body {
                    map.insert("version".into(), Value::from(1));
                }
                by_name.entry(name).or_default().insert(1, body);
            }
        }
    }

    /// The latest services, parsed (entities that fail to parse are skipped; they were validated on write).
    pub fn services(&self) -> BTreeMap<String, Service> {
        self.list(EntityKind::Services)
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Service>(v.clone()).ok())
            .map(|s| (s.name.clone(), s))
            .collect()
    }
}

/// The global shard: tenants, hashed API keys, catalogs. Replicated to every DC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalShard {
    pub tenants: BTreeMap<String, Tenant>,
    /// By key hash.
    pub api_keys: BTreeMap<String, ApiKey>,
    pub catalogs: BTreeMap<String, TenantCatalog>,
    /// Records for the replicas of this shard.
    #[serde(default)]
    pub replication: Outbox,
}

/// The global shard's data as one DC sees it: its own [`GlobalShard`] where it owns the shard,
/// else its replica copy (see [`State::global_view`]). Borrowed, so reads copy nothing.
#[derive(Debug, Clone, Copy)]
pub struct GlobalRef<'a> {
    pub tenants: &'a BTreeMap<String, Tenant>,
    /// By key hash.
    pub api_keys: &'a BTreeMap<String, ApiKey>,
    pub catalogs: &'a BTreeMap<String, TenantCatalog>,
}

/// The global data of a DC whose replica of the global shard has applied nothing yet.
static NO_TENANTS: BTreeMap<String, Tenant> = BTreeMap::new();
static NO_API_KEYS: BTreeMap<String, ApiKey> = BTreeMap::new();
static NO_CATALOGS: BTreeMap<String, TenantCatalog> = BTreeMap::new();

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster: Cluster,
    pub nodes: BTreeMap<NodeId, Node>,
    /// By job sequence number.
    pub jobs: BTreeMap<u32, JobRun>,
    pub next_job_seq: u32,
    /// The services catalog as of the latest operation (the planner's input).
    pub service_defs: BTreeMap<String, Service>,
    /// The operation in flight as the replicas know it (set by its `OperationStarted`, cleared
    /// by its `OperationFinished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped: Option<ShippedOperation>,
    /// Finished jobs of the cluster under a previous owner DC (their summaries, as replicated):
    /// the job history of a cluster this DC adopted in a handover.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adopted_jobs: BTreeMap<JobId, JobSummary>,
}

/// An in-flight operation as shipped: its restart state, and the nodes as it started plus its
/// checkpoints. Task results that are not replicated change the live nodes, not these, so the
/// owner's [`State::replicated_view`] of a cluster in flight is what its records built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShippedOperation {
    pub operation: InFlight,
    pub nodes: BTreeMap<NodeId, ReplicatedNode>,
}

impl ClusterRecord {
    pub fn latest_job(&self) -> Option<&JobRun> {
        self.jobs.values().next_back()
    }

    fn running_job(&self) -> Option<&JobRun> {
        self.jobs.values().find(|j| !j.job.status.is_finished())
    }
}

/// One cluster shard: its clusters and the counter that allocates their IDs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterShard {
    pub next_n: u64,
    pub clusters: BTreeMap<ClusterId, ClusterRecord>,
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
}

#[derive(Debug, Clone)]
pub struct State {
    shard_count: u32,
    pub global: GlobalShard,
    pub shards: BTreeMap<ShardId, ClusterShard>,
    pub local: LocalState,
    /// Shards this DC holds as a replica of another DC (cluster shards and the global shard).
    pub replicas: BTreeMap<ShardId, ReplicaShard>,
    /// Derived (rebuilt on load): tasks that can be handed out, and jobs not yet finished.
    pub(crate) ready: BTreeSet<TaskId>,
    pub(crate) active_jobs: BTreeSet<JobId>,
    /// The `now_ms` of the entry being applied: the commit time stamped on the records it emits.
    applying_at_ms: u64,
    /// The idempotency key of the entry being applied: `OperationStarted` carries it.
    applying_key: Option<String>,
}

impl State {
    pub fn new(shard_count: u32) -> State {
        // Snapshot part ids of replicas sit above 2^31 (see `persist`).
        assert!(shard_count > 0 && shard_count < 1 << 31);
        State {
            shard_count,
            global: GlobalShard::default(),
            shards: (0..shard_count)
                .map(|s| (ShardId(s), ClusterShard::default()))
                .collect(),
            local: LocalState::default(),
            replicas: BTreeMap::new(),
            ready: BTreeSet::new(),
            active_jobs: BTreeSet::new(),
            applying_at_ms: 0,
            applying_key: None,
        }
    }

    /// Rebuilds a state from its parts (a snapshot), recomputing the derived indexes.
    pub fn from_parts(
        shard_count: u32,
        global: GlobalShard,
        shards: BTreeMap<ShardId, ClusterShard>,
        local: LocalState,
    ) -> State {
        let mut state = State::new(shard_count);
        state.global = global;
        state.shards.extend(shards);
        state.local = local;
        let jobs: Vec<JobId> = state
            .shards
            .values()
            .flat_map(|s| s.clusters.values())
            .flat_map(|c| c.jobs.values())
            .filter(|j| !j.job.status.is_finished())
            .map(|j| j.job.id)
            .collect();
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
    }

    fn cluster_mut(&mut self, id: ClusterId) -> Result<&mut ClusterRecord, CommandError> {
        self.shards
            .get_mut(&id.shard(self.shard_count))
            .and_then(|s| s.clusters.get_mut(&id))
            .ok_or_else(|| CommandError::not_found("cluster", id))
    }

    pub fn clusters(&self) -> impl Iterator<Item = &ClusterRecord> {
        self.shards.values().flat_map(|s| s.clusters.values())
    }

    pub fn job(&self, id: JobId) -> Option<&JobRun> {
        self.cluster(id.cluster)?.jobs.get(&id.seq)
    }

    pub fn task(&self, id: TaskId) -> Option<&coopr_types::Task> {
        self.job(id.job)?.tasks.get(&id)
    }

    /// Tasks waiting to be taken.
    pub fn queued_tasks(&self) -> impl Iterator<Item = &TaskId> {
        self.ready.iter()
    }

    /// How many tasks wait to be taken.
    pub fn queued_task_count(&self) -> usize {
        self.ready.len()
    }

    /// The earliest deadline of any in-progress task.
    pub fn next_deadline(&self) -> Option<u64> {
        self.active_jobs
            .iter()
            .filter_map(|j| self.job(*j)?.next_deadline())
            .min()
    }

    /// The in-progress task a worker holds, if any. A worker runs one task at a time, so a worker
    /// that asks for work while holding one never got the answer to its take.
    pub fn task_held_by_worker(&self, provisioner: &str, worker: &str) -> Option<TaskId> {
        self.active_jobs
            .iter()
            .filter_map(|j| self.job(*j))
            .flat_map(|run| run.tasks.values())
            .find(|t| {
                t.status == TaskStatus::InProgress
                    && t.owner
                        .as_ref()
                        .is_some_and(|o| o.provisioner_id == provisioner && o.worker_id == worker)
            })
            .map(|t| t.id)
    }

    /// How many in-progress tasks a provisioner holds.
    pub fn tasks_held_by(&self, provisioner: &str) -> usize {
        self.active_jobs
            .iter()
            .filter_map(|j| self.job(*j))
            .flat_map(|run| run.tasks.values())
            .filter(|t| t.status == TaskStatus::InProgress)
            .filter(|t| {
                t.owner
                    .as_ref()
                    .is_some_and(|o| o.provisioner_id == provisioner)
            })
            .count()
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

    pub fn tenant_by_id(&self, id: &str) -> Option<&Tenant> {
        self.global_data().tenants.values().find(|t| t.id == id)
    }

    /// Applies one entry. Rejected commands change nothing.
    pub fn apply(&mut self, entry: &Entry) -> CommandResult {
        // A write proposed under another ownership epoch changes nothing and is not remembered
        // under its idempotency key: the client retries it at the shard's current owner.
        if let Some(fence) = entry.fence {
            if let Some(refused) = self.refuse_fenced(fence.shard) {
                return Err(refused);
            }
            let epoch = self.shard_epoch(fence.shard);
            if epoch != Some(fence.epoch) {
                return Err(CommandError::conflict(
                    STALE_EPOCH,
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
        self.applying_at_ms = entry.now_ms;
        self.applying_key = entry.idempotency_key.clone();
        let result = self.apply_command(&entry.command, entry.now_ms);
        self.applying_key = None;
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
                NOT_OWNER,
                format!("this DC holds shard {shard} as a replica"),
            ));
        }
        let frozen = self.shards.get(&shard).and_then(|s| s.frozen);
        frozen.map(|handover| {
            CommandError::conflict(
                HANDING_OVER,
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
            Command::PutTenant { tenant } => {
                let mut tenant = tenant.clone();
                if let Some(existing) = self.global.tenants.get(&tenant.name) {
                    tenant.id = existing.id.clone();
                }
                self.global
                    .tenants
                    .insert(tenant.name.clone(), tenant.clone());
                self.emit_global(GlobalRecord::TenantPut(tenant));
                Ok(Outcome::Done)
            }
            Command::DeleteTenant { name } => {
                // Deleting nothing writes nothing (no record for the replicas either).
                if !self.global.tenants.contains_key(name) {
                    return Err(CommandError::not_found("tenant", name));
                }
                if name == "superadmin" {
                    return Err(CommandError::Forbidden {
                        message: "the superadmin tenant cannot be deleted".into(),
                    });
                }
                // Every DC's clusters, as far as they have reached this DC (it replicates every
                // shard). One created elsewhere in the last moments is deleted by its own DC
                // once this deletion reaches it (`orphaned_clusters`).
                let live = self
                    .global
                    .tenants
                    .get(name)
                    .map_or(0, |t| self.tenant_usage(t).0);
                if live > 0 {
                    return Err(CommandError::conflict(
                        "tenant_has_clusters",
                        format!("tenant {name} still has {live} live clusters"),
                    ));
                }
                self.global.tenants.remove(name);
                self.global.api_keys.retain(|_, k| &k.tenant != name);
                self.global.catalogs.remove(name);
                self.emit_global(GlobalRecord::TenantDeleted(name.clone()));
                Ok(Outcome::Done)
            }
            Command::PutApiKey { key } => {
                if !self.global.tenants.contains_key(&key.tenant) {
                    return Err(CommandError::not_found("tenant", &key.tenant));
                }
                self.global
                    .api_keys
                    .insert(key.key_sha256.clone(), key.clone());
                self.emit_global(GlobalRecord::ApiKeyPut(key.clone()));
                Ok(Outcome::Done)
            }
            Command::PutEntity {
                tenant,
                kind,
                name,
                body,
                create_only,
            } => {
                self.require_tenant(tenant)?;
                let versions = self
                    .global
                    .catalogs
                    .entry(tenant.clone())
                    .or_default()
                    .entities
                    .entry(*kind)
                    .or_default()
                    .entry(name.clone())
                    .or_default();
                if *create_only && !versions.is_empty() {
                    return Err(CommandError::conflict(
                        "entity_exists",
                        format!("{} {name} already exists", kind.as_str()),
                    ));
                }
                let version = versions.keys().next_back().copied().unwrap_or(0) + 1;
                let mut body = body.clone();
                if let Value::Object(map) = &mut body {
                    map.insert("version".into(), Value::from(version));
                }
                versions.insert(version, body.clone());
                self.emit_global(GlobalRecord::EntityPut {
                    tenant: tenant.clone(),
                    kind: *kind,
                    name: name.clone(),
                    version,
                    body,
                });
                Ok(Outcome::EntityVersion { version })
            }
            Command::DeleteEntity {
                tenant,
                kind,
                name,
                version,
            } => {
                // Deleting nothing writes nothing (no record for the replicas either).
                let exists = self
                    .global
                    .catalogs
                    .get(tenant)
                    .is_some_and(|c| match version {
                        None => c.latest(*kind, name).is_some(),
                        Some(v) => c.version(*kind, name, *v).is_some(),
                    });
                if !exists {
                    return Err(CommandError::not_found(kind.as_str(), name));
                }
                if let Some(catalog) = self.global.catalogs.get_mut(tenant) {
                    catalog.delete(*kind, name, *version);
                }
                self.emit_global(GlobalRecord::EntityDeleted {
                    tenant: tenant.clone(),
                    kind: *kind,
                    name: name.clone(),
                    version: *version,
                });
                Ok(Outcome::Done)
            }
            Command::ImportCatalog { tenant, entities } => {
                self.require_tenant(tenant)?;
                self.global
                    .catalogs
                    .entry(tenant.clone())
                    .or_default()
                    .import(entities);
                self.emit_global(GlobalRecord::CatalogImported {
                    tenant: tenant.clone(),
                    entities: entities.clone(),
                });
                Ok(Outcome::Done)
            }
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
            } => {
                // The added services are planned with their current definitions: a service
                // written to the catalog after the cluster was created is not in the cluster's
                // snapshot yet, and without a definition no task would be planned for it.
                let current_defs = self
                    .cluster(*cluster)
                    .and_then(|r| {
                        self.global_data()
                            .catalogs
                            .get(&r.cluster.account.tenant_id)
                    })
                    .map(TenantCatalog::services)
                    .unwrap_or_default();
                let record = self.cluster_mut(*cluster)?;
                if record.cluster.status != ClusterStatus::Active {
                    return Err(CommandError::conflict(
                        "cluster_not_active",
                        "services can be added only to an active cluster",
                    ));
                }
                if let Some(running) = record.running_job() {
                    return Err(CommandError::conflict(
                        "job_in_progress",
                        format!("job {} is still {}", running.job.id, running.job.status),
                    ));
                }
                // Check every node before changing any, so a rejected command changes nothing.
                if let Some(unknown) = placement.keys().find(|n| !record.nodes.contains_key(*n)) {
                    return Err(CommandError::not_found("node", unknown));
                }
                for (node_id, added) in placement {
                    let Some(node) = record.nodes.get_mut(node_id) else {
                        continue;
                    };
                    for service in added {
                        if !node.properties.services.contains(service) {
                            node.properties.services.push(service.clone());
                        }
                    }
                }
                for service in services {
                    if !record.cluster.services.contains(service) {
                        record.cluster.services.push(service.clone());
                    }
                    if let Some(def) = current_defs.get(service) {
                        record.service_defs.insert(service.clone(), def.clone());
                    }
                }
                self.begin_job(
                    *cluster,
                    ClusterAction::AddServices,
                    services.clone(),
                    None,
                    now,
                )
            }
            Command::SetExpireTime {
                cluster,
                expire_time,
            } => {
                let record = self.cluster_mut(*cluster)?;
                record.cluster.expire_time = *expire_time;
                self.emit_cluster_updated(*cluster, false);
                Ok(Outcome::Done)
            }
            Command::SyncTemplate { cluster, template } => {
                let record = self.cluster_mut(*cluster)?;
                if record.cluster.status != ClusterStatus::Active {
                    return Err(CommandError::conflict(
                        "cluster_not_active",
                        "template sync needs an active cluster",
                    ));
                }
                record.cluster.cluster_template = template.as_ref().clone();
                self.emit_cluster_updated(*cluster, true);
                Ok(Outcome::Done)
            }
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
            Command::ExpireTasks => {
                let jobs: Vec<JobId> = self.active_jobs.iter().copied().collect();
                let mut count = 0;
                for job in jobs {
                    count += self.expire_job(job, now, None);
                }
                Ok(Outcome::TasksExpired { count })
            }
            Command::ReleaseProvisioner { id } => {
                let jobs: Vec<JobId> = self.active_jobs.iter().copied().collect();
                let mut count = 0;
                for job in jobs {
                    count += self.expire_job(job, now, Some(id));
                }
                Ok(Outcome::TasksExpired { count })
            }
            Command::RegisterProvisioner { info } => {
                self.local
                    .provisioners
                    .insert(info.id.clone(), info.clone());
                Ok(Outcome::Done)
            }
            Command::UnregisterProvisioner { id } => {
                self.local.provisioners.remove(id);
                Ok(Outcome::Done)
            }
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

    fn require_tenant(&self, tenant: &str) -> Result<&Tenant, CommandError> {
        self.global_data()
            .tenants
            .get(tenant)
            .ok_or_else(|| CommandError::not_found("tenant", tenant))
    }

    /// The clusters and nodes a tenant's incarnation has that are not terminated, in every
    /// shard this DC holds: its own and its replica copies of the others (which may lag their
    /// owners; [`State::create_cluster`] explains why the quota check is still exact).
    pub fn tenant_usage(&self, tenant: &Tenant) -> (u64, u64) {
        let owned = self.clusters().map(|r| &r.cluster);
        let copies = self
            .replicas
            .values()
            .filter_map(|r| match &r.data {
                ReplicaData::Clusters(view) => Some(view.clusters.values().map(|v| &v.cluster)),
                ReplicaData::Global(_) => None,
            })
            .flatten();
        owned
            .chain(copies)
            .filter(|c| c.account.belongs_to(tenant) && c.status != ClusterStatus::Terminated)
            .fold((0, 0), |(c, n), cluster| {
                (c + 1, n + cluster.nodes.len() as u64)
            })
    }

    /// Live clusters of the shards this DC writes whose tenant no longer exists, or exists as a
    /// later incarnation: created at this DC while another DC deleted the tenant, before the
    /// deletion reached here. The job driver deletes them (`server/src/driver.rs`). Clusters in
    /// an operation are left until it ends.
    pub fn orphaned_clusters(&self) -> Vec<ClusterId> {
        let global = self.global_data();
        self.clusters()
            .filter(|r| {
                let c = &r.cluster;
                // A delete that failed is not retried in a loop: the cluster stays listed
                // for the operator (admin API) like any failed delete.
                let delete_failed = r.jobs.values().next_back().is_some_and(|j| {
                    j.job.action == coopr_types::ClusterAction::ClusterDelete
                        && j.job.status == coopr_types::JobStatus::Failed
                });
                c.status != ClusterStatus::Terminated
                    && c.status != ClusterStatus::Pending
                    && !delete_failed
                    && !global
                        .tenants
                        .get(&c.account.tenant_id)
                        .is_some_and(|t| c.account.belongs_to(t))
            })
            .map(|r| r.cluster.id)
            .collect()
    }

    /// Quotas hold across the deployment: a tenant with a finite quota creates clusters only
    /// at the DC that writes the global shard (the API forwards such creates there), so its
    /// creates are ordered in one log, and every other DC's clusters of the tenant are in this
    /// DC's replica copies (deletes reach it late, which only makes the check stricter). What
    /// remains is documented in ARCHITECTURE.md: right after the global shard moved, the new
    /// owner may not have the old owner's newest creates yet.
    fn create_cluster(&mut self, shard: ShardId, spec: &ClusterSpec, now: u64) -> CommandResult {
        let tenant = self.require_tenant(&spec.tenant)?.clone();
        if !spec.tenant_incarnation.is_empty() && spec.tenant_incarnation != tenant.id {
            return Err(CommandError::conflict(
                "tenant_changed",
                format!(
                    "tenant {} was deleted and created again since the request was checked",
                    tenant.name
                ),
            ));
        }
        let limited = tenant.max_clusters != coopr_types::UNLIMITED
            || tenant.max_nodes != coopr_types::UNLIMITED;
        if limited && self.replicas.contains_key(&ShardId::GLOBAL) {
            return Err(CommandError::conflict(
                QUOTA_ELSEWHERE,
                format!(
                    "tenant {} has a quota: its clusters are created at the datacenter that owns the global shard",
                    tenant.name
                ),
            ));
        }
        let (live_clusters, live_nodes) = self.tenant_usage(&tenant);
        if live_clusters + 1 > u64::from(tenant.max_clusters) {
            return Err(CommandError::QuotaExceeded {
                tenant: tenant.name,
                message: format!("maxClusters is {}", tenant.max_clusters),
            });
        }
        if live_nodes + spec.nodes.len() as u64 > u64::from(tenant.max_nodes) {
            return Err(CommandError::QuotaExceeded {
                tenant: tenant.name,
                message: format!(
                    "maxNodes is {} and {live_nodes} are in use",
                    tenant.max_nodes
                ),
            });
        }
        // The catalog as this DC reads it (the owner's copy when another DC owns the global
        // shard): reading only the local global shard planned no service tasks at all there.
        let service_defs = self
            .global_data()
            .catalogs
            .get(&spec.tenant)
            .map(TenantCatalog::services)
            .unwrap_or_default();
        let shard_count = self.shard_count;
        let Some(shard_state) = self.shards.get_mut(&shard) else {
            return Err(CommandError::invalid(
                "invalid_shard",
                format!("shard {shard} does not exist"),
            ));
        };
        let id = ClusterId::allocate(shard, shard_count, shard_state.next_n);
        shard_state.next_n += 1;

        let host_prefix: String = spec
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
            .to_lowercase();
        let domain = if spec.dns_suffix.is_empty() {
            "local"
        } else {
            spec.dns_suffix.as_str()
        };
        let automators: Vec<String> = {
            let mut set = BTreeSet::new();
            for s in &spec.services {
                if let Some(def) = service_defs.get(s) {
                    set.extend(def.provisioner.actions.values().map(|a| a.plugin.clone()));
                }
            }
            set.into_iter().collect()
        };
        let nodes: BTreeMap<NodeId, Node> = spec
            .nodes
            .iter()
            .map(|n| {
                let node_id = NodeId::derive(id, n.nodenum);
                let node = Node {
                    id: node_id.clone(),
                    cluster_id: id,
                    properties: NodeProperties {
                        hostname: format!("{host_prefix}{}-{}.{domain}", id.0, n.nodenum),
                        ipaddresses: BTreeMap::new(),
                        nodenum: n.nodenum,
                        hardwaretype: n.hardwaretype.clone(),
                        imagetype: n.imagetype.clone(),
                        flavor: n.flavor.clone(),
                        image: n.image.clone(),
                        sshuser: n.sshuser.clone(),
                        services: n.services.clone(),
                        automators: automators.clone(),
                    },
                    actions: Vec::new(),
                    provisioner_results: Default::default(),
                };
                (node_id, node)
            })
            .collect();
        let expire_time = if spec.initial_lease_ms > 0 {
            now.saturating_add(spec.initial_lease_ms)
        } else {
            0
        };
        let cluster = Cluster {
            id,
            name: spec.name.clone(),
            description: spec.description.clone(),
            account: Account {
                user_id: spec.user.clone(),
                tenant_id: spec.tenant.clone(),
                tenant_incarnation: tenant.id.clone(),
            },
            create_time: now,
            expire_time,
            provider: spec.provider.clone(),
            cluster_template: spec.template.clone(),
            hardwaretype: spec.hardwaretype.clone(),
            imagetype: spec.imagetype.clone(),
            dns_suffix: spec.dns_suffix.clone(),
            nodes: nodes.keys().cloned().collect(),
            services: spec.services.clone(),
            latest_job_id: None,
            status: ClusterStatus::Pending,
            config: spec.config.clone(),
            message: None,
        };
        let record = ClusterRecord {
            cluster,
            nodes,
            jobs: BTreeMap::new(),
            next_job_seq: 1,
            service_defs,
            shipped: None,
            adopted_jobs: BTreeMap::new(),
        };
        shard_state.clusters.insert(id, record);
        // Coopr runs a solve_layout job first; here the layout was solved before the command was
        // proposed, so that job is recorded as already complete.
        let solve = JobId {
            cluster: id,
            seq: 1,
        };
        let layout_run = JobRun::new(
            solve,
            ClusterAction::SolveLayout,
            Vec::new(),
            Vec::new(),
            None,
            now,
        );
        let record = self.cluster_mut(id)?;
        record.jobs.insert(1, layout_run);
        record.next_job_seq = 2;
        self.begin_job(id, ClusterAction::ClusterCreate, Vec::new(), None, now)?;
        Ok(Outcome::ClusterCreated { id })
    }

    fn start_operation(
        &mut self,
        cluster: ClusterId,
        action: ClusterAction,
        services: &[String],
        config: Option<coopr_types::JsonMap>,
        now: u64,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        let status = record.cluster.status;
        match action {
            ClusterAction::ClusterDelete => match status {
                ClusterStatus::Terminated => return Ok(Outcome::Unchanged),
                ClusterStatus::Pending => {
                    return Err(CommandError::conflict(
                        "cluster_pending",
                        "cluster has an operation in progress",
                    ))
                }
                _ => {}
            },
            ClusterAction::ClusterConfigure | ClusterAction::ClusterConfigureWithRestart => {
                if !matches!(status, ClusterStatus::Active | ClusterStatus::Inconsistent) {
                    return Err(CommandError::conflict(
                        "cluster_not_active",
                        format!("cluster is {status}"),
                    ));
                }
            }
            ClusterAction::StartServices
            | ClusterAction::StopServices
            | ClusterAction::RestartServices => {
                if status != ClusterStatus::Active {
                    return Err(CommandError::conflict(
                        "cluster_not_active",
                        format!("cluster is {status}"),
                    ));
                }
                if let Some(unknown) = services
                    .iter()
                    .find(|s| !record.cluster.services.contains(s))
                {
                    return Err(CommandError::not_found("service", unknown));
                }
            }
            other => {
                return Err(CommandError::invalid(
                    "invalid_action",
                    format!("{other} is not started this way"),
                ))
            }
        }
        if let Some(running) = record.running_job() {
            return Err(CommandError::conflict(
                "job_in_progress",
                format!("job {} is still {}", running.job.id, running.job.status),
            ));
        }
        // begin_job cannot fail now (the cluster exists, no job runs), so the config change is
        // not left behind by a rejected command.
        if let Some(config) = &config {
            record.cluster.config = config.clone();
        }
        self.begin_job(cluster, action, services.to_vec(), config, now)
    }

    /// Plans and records a new job for a cluster, which becomes PENDING while it runs.
    fn begin_job(
        &mut self,
        cluster: ClusterId,
        action: ClusterAction,
        services: Vec<String>,
        config: Option<coopr_types::JsonMap>,
        now: u64,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        if let Some(running) = record.running_job() {
            return Err(CommandError::conflict(
                "job_in_progress",
                format!("job {} is still {}", running.job.id, running.job.status),
            ));
        }
        let nodes: Vec<(NodeId, Vec<String>)> = record
            .nodes
            .values()
            .map(|n| (n.id.clone(), n.properties.services.clone()))
            .collect();
        let stages: Vec<Vec<PlannedTask>> = plan(&PlanInput {
            action,
            nodes: &nodes,
            catalog_services: &record.service_defs,
            target_services: &services,
        });
        let id = JobId {
            cluster,
            seq: record.next_job_seq,
        };
        record.next_job_seq += 1;
        let run = JobRun::new(id, action, stages, services, config, now);
        record.cluster.latest_job_id = Some(id);
        let finished = run.job.status.is_finished();
        let success = run.job.status == JobStatus::Complete;
        record.jobs.insert(id.seq, run);
        if finished {
            record.cluster.status = cluster_status_after(action, success);
        } else {
            record.cluster.status = ClusterStatus::Pending;
        }
        self.refresh_job(id);
        self.emit_started(id);
        if finished {
            // A job with nothing to do is over as it starts.
            self.emit_finished(id);
        }
        Ok(Outcome::JobStarted { job: id })
    }

    fn job_control(&mut self, cluster: ClusterId, now: u64, control: JobControl) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        let Some(seq) = record
            .jobs
            .values()
            .find(|j| !j.job.status.is_finished())
            .map(|j| j.job.id.seq)
        else {
            return Ok(Outcome::Unchanged);
        };
        let Some(run) = record.jobs.get_mut(&seq) else {
            return Ok(Outcome::Unchanged);
        };
        let mut effects = Vec::new();
        let changed = match control {
            JobControl::Abort => {
                effects = run
                    .abort(now)
                    .map_err(|e| CommandError::conflict("abort_not_supported", e.to_string()))?;
                !effects.is_empty()
            }
            JobControl::Pause => run.pause(now),
            JobControl::Resume => run.resume(now),
        };
        let (id, action) = (run.job.id, run.job.action);
        apply_effects(record, action, &effects);
        self.refresh_job(id);
        if job_finished(&effects) {
            self.emit_finished(id);
        }
        Ok(if changed {
            Outcome::Done
        } else {
            Outcome::Unchanged
        })
    }

    fn take_task(
        &mut self,
        provisioner_id: &str,
        worker_id: &str,
        tenant_id: Option<&str>,
        timeout_ms: u64,
        shards: Option<&BTreeSet<ShardId>>,
        now: u64,
    ) -> CommandResult {
        if !self.local.provisioners.contains_key(provisioner_id) {
            return Err(CommandError::UnknownProvisioner {
                id: provisioner_id.to_string(),
            });
        }
        let tenant_name = tenant_id.filter(|t| !t.is_empty()).map(|id| {
            self.tenant_by_id(id)
                .map(|t| t.name.clone())
                .unwrap_or_else(|| id.to_string())
        });
        let shard_count = self.shard_count;
        let Some(task_id) = self
            .ready
            .iter()
            .filter(|t| shards.is_none_or(|s| s.contains(&t.job.cluster.shard(shard_count))))
            .find(|t| match &tenant_name {
                None => true,
                Some(name) => self
                    .cluster(t.job.cluster)
                    .is_some_and(|c| &c.cluster.account.tenant_id == name),
            })
            .copied()
        else {
            return Ok(Outcome::TaskTaken { task: None });
        };
        let owner = TaskOwner {
            provisioner_id: provisioner_id.to_string(),
            worker_id: worker_id.to_string(),
            deadline_ms: now.saturating_add(timeout_ms),
        };
        let record = self.cluster_mut(task_id.job.cluster)?;
        let run = record
            .jobs
            .get_mut(&task_id.job.seq)
            .ok_or_else(|| CommandError::not_found("job", task_id.job))?;
        run.take(task_id, owner, now)
            .map_err(|e| CommandError::conflict("task_not_ready", e.to_string()))?;
        if let Some(task) = run.tasks.get(&task_id).cloned() {
            if let Some(node) = record.nodes.get_mut(&task.node_id) {
                node.push_action(NodeAction {
                    task_id,
                    service: task.service.clone(),
                    action: task.task_name,
                    submit_time: now,
                    status_time: now,
                    status: TaskStatus::InProgress,
                    stdout: String::new(),
                    stderr: String::new(),
                });
            }
        }
        self.refresh_job(task_id.job);
        Ok(Outcome::TaskTaken {
            task: Some(task_id),
        })
    }

    fn finish_task(&mut self, result: &TaskResult, now: u64) -> CommandResult {
        if !self.local.provisioners.contains_key(&result.provisioner_id) {
            return Err(CommandError::UnknownProvisioner {
                id: result.provisioner_id.clone(),
            });
        }
        let task_id = result.task;
        let record = self.cluster_mut(task_id.job.cluster)?;
        let run = record
            .jobs
            .get_mut(&task_id.job.seq)
            .ok_or_else(|| CommandError::not_found("task", task_id))?;
        let Some(task) = run.tasks.get(&task_id).cloned() else {
            return Err(CommandError::not_found("task", task_id));
        };
        let success = result.status == 0;
        let was_finished = run.job.status.is_finished();
        let effects = run
            .finish(
                task_id,
                (&result.provisioner_id, &result.worker_id),
                success,
                now,
            )
            .map_err(|_| CommandError::NotTaskOwner {
                task: task_id,
                worker: result.worker_id.clone(),
            })?;
        let (action, job_id) = (run.job.action, run.job.id);
        if let Some(node) = record.nodes.get_mut(&task.node_id) {
            for (k, v) in &result.result {
                node.provisioner_results.insert(k.clone(), v.clone());
            }
            if success {
                if let Some(hostname) = result.hostname.as_ref().filter(|h| !h.is_empty()) {
                    node.properties.hostname = hostname.clone();
                }
                if let Some(ips) = &result.ipaddresses {
                    node.properties.ipaddresses = ips.clone();
                }
            }
            if let Some(entry) = node.actions.iter_mut().rev().find(|a| a.task_id == task_id) {
                entry.status = if success {
                    TaskStatus::Complete
                } else {
                    TaskStatus::Failed
                };
                entry.status_time = now;
                entry.stdout = truncate_output(&result.stdout);
                entry.stderr = truncate_output(&result.stderr);
            }
        }
        apply_effects(record, action, &effects);
        self.refresh_job(job_id);
        if success && task.task_name == TaskName::Create {
            self.emit_checkpoint(job_id, &task.node_id);
        }
        if job_finished(&effects) || was_finished {
            // A late result changes a finished job's summary (and maybe its nodes): the
            // replicas get its outcome again.
            self.emit_finished(job_id);
        }
        Ok(Outcome::Done)
    }

    /// Times out the job's expired tasks (or, with `provisioner`, every in-progress task that
    /// provisioner holds). Returns how many tasks it timed out.
    fn expire_job(&mut self, job: JobId, now: u64, provisioner: Option<&str>) -> usize {
        let Ok(record) = self.cluster_mut(job.cluster) else {
            return 0;
        };
        let Some(run) = record.jobs.get_mut(&job.seq) else {
            return 0;
        };
        let mut count = 0;
        for task in run.tasks.values_mut() {
            if task.status != TaskStatus::InProgress {
                continue;
            }
            let Some(owner) = task.owner.as_mut() else {
                continue;
            };
            match provisioner {
                // A dead provisioner's lease on its tasks ends now.
                Some(p) if owner.provisioner_id == p => {
                    owner.deadline_ms = owner.deadline_ms.min(now)
                }
                Some(_) => continue,
                None => {}
            }
            if owner.deadline_ms <= now {
                count += 1;
            }
        }
        if count == 0 {
            return 0;
        }
        let effects = run.expire(now);
        let action = run.job.action;
        apply_effects(record, action, &effects);
        self.refresh_job(job);
        if job_finished(&effects) {
            self.emit_finished(job);
        }
        count
    }

    /// Recomputes the derived queue entries and active-job membership of one job.
    pub(crate) fn refresh_job(&mut self, job: JobId) {
        let stale: Vec<TaskId> = self
            .ready
            .range(first_task(job)..=last_task(job))
            .copied()
            .collect();
        for task in stale {
            self.ready.remove(&task);
        }
        let Some(run) = self.job(job) else {
            self.active_jobs.remove(&job);
            return;
        };
        let finished = run.job.status.is_finished();
        let ready = run.ready_tasks();
        if finished {
            self.active_jobs.remove(&job);
        } else {
            self.active_jobs.insert(job);
        }
        self.ready.extend(ready);
    }
}

/// Replication: the records each command emits into its shard's outbox, the owner's projection
/// of a shard as replicas see it, and the replica side's commands. See [`crate::replication`].
impl State {
    /// The outbox of a shard this DC writes (a cluster shard or the global shard).
    pub fn outbox(&self, shard: ShardId) -> Option<&Outbox> {
        if shard.is_global() {
            Some(&self.global.replication)
        } else {
            self.shards.get(&shard).map(|s| &s.replication)
        }
    }

    /// The copy of a shard this DC replicates from another DC.
    pub fn replica(&self, shard: ShardId) -> Option<&ReplicaShard> {
        self.replicas.get(&shard)
    }

    /// Tenants, API keys and catalogs as commands of cluster shards read them (quotas, service
    /// definitions): the replica copy of the global shard once this DC holds one (it replicates
    /// the global shard only when another DC owns it), else its own global shard. Derived from
    /// the state alone, so every node of the DC decides the same.
    pub fn global_data(&self) -> GlobalRef<'_> {
        self.global_view(!self.replicas.contains_key(&ShardId::GLOBAL))
    }

    /// Tenants, API keys and catalogs as this DC reads them: its own global shard when
    /// `owns_global`, else its replica copy of the owner's (empty until the first record
    /// applied). Writes go to the owner; reads use this everywhere.
    pub fn global_view(&self, owns_global: bool) -> GlobalRef<'_> {
        if owns_global {
            return GlobalRef {
                tenants: &self.global.tenants,
                api_keys: &self.global.api_keys,
                catalogs: &self.global.catalogs,
            };
        }
        match self.replicas.get(&ShardId::GLOBAL).map(|r| &r.data) {
            Some(ReplicaData::Global(view)) => GlobalRef {
                tenants: &view.tenants,
                api_keys: &view.api_keys,
                catalogs: &view.catalogs,
            },
            _ => GlobalRef {
                tenants: &NO_TENANTS,
                api_keys: &NO_API_KEYS,
                catalogs: &NO_CATALOGS,
            },
        }
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
            });
        }
        let Some(data) = self.shards.get(&shard) else {
            return Value::Null;
        };
        let clusters = data
            .clusters
            .iter()
            .map(|(id, record)| (*id, cluster_view(record)))
            .collect();
        to_value(&ClusterShardView { clusters })
    }

    fn emit(&mut self, shard: ShardId, kind: RecordKind) {
        let outbox = if shard.is_global() {
            &mut self.global.replication
        } else {
            match self.shards.get_mut(&shard) {
                Some(data) => &mut data.replication,
                None => panic!("record for shard {shard}, which does not exist"),
            }
        };
        let seq = outbox.push(shard, kind, self.applying_at_ms, OUTBOX_CAPACITY);
        tracing::trace!(%shard, seq, "replication record");
    }

    fn emit_global(&mut self, record: GlobalRecord) {
        self.emit(ShardId::GLOBAL, RecordKind::Global(record));
    }

    fn emit_cluster_updated(&mut self, cluster: ClusterId, with_snapshot: bool) {
        let Some(record) = self.cluster(cluster) else {
            return;
        };
        let row = ClusterRow::of(&record.cluster, with_snapshot);
        self.emit(
            cluster.shard(self.shard_count),
            RecordKind::ClusterUpdated { cluster: row },
        );
    }

    /// `OperationStarted` for a job just begun; remembers what was shipped.
    fn emit_started(&mut self, job: JobId) {
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
                        .map(|t| (t.task_name, t.service.clone(), nodenum(&t.node_id))),
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
        let nodes: BTreeMap<NodeId, ReplicatedNode> = record
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
            cluster: ClusterRow::of(&record.cluster, create),
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
        if let (Some(key), Some(data)) = (idempotency_key, self.shards.get_mut(&shard)) {
            data.keys.remember(
                key,
                crate::replication::started_outcome(job.cluster, job, action),
            );
        }
    }

    /// `OperationCheckpoint`: a CREATE of `job` made the node's machine.
    fn emit_checkpoint(&mut self, job: JobId, node: &NodeId) {
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
                jobs: BTreeMap::new(),
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

    fn trim_outbox(&mut self, shard: ShardId, through_seq: u64) -> CommandResult {
        let outbox = if shard.is_global() {
            &mut self.global.replication
        } else {
            &mut self
                .shards
                .get_mut(&shard)
                .ok_or_else(|| CommandError::not_found("shard", shard))?
                .replication
        };
        if through_seq >= outbox.next_seq {
            return Err(CommandError::invalid(
                "trim_beyond_outbox",
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

    /// Applies a batch to the local replica of `shard` (created on its first batch), all or
    /// nothing. A batch already applied (every record at or below the watermark) is a no-op
    /// (`Unchanged`), so a puller may re-propose a batch whose commit it did not see.
    /// Lifts the freeze of handover `handover` (another handover's freeze, or none, is left
    /// as it is: `Unchanged`).
    fn unfreeze_shard(&mut self, shard: ShardId, handover: u64) -> Outcome {
        match self.shards.get_mut(&shard) {
            Some(data) if data.frozen == Some(handover) => {
                data.frozen = None;
                Outcome::Done
            }
            _ => Outcome::Unchanged,
        }
    }

    fn freeze_shard(&mut self, shard: ShardId, handover: u64) -> CommandResult {
        if shard.is_global() {
            return Err(CommandError::invalid(
                "invalid_shard",
                "the global shard is not handed over",
            ));
        }
        if self.replicas.contains_key(&shard) {
            return Err(CommandError::conflict(
                NOT_OWNER,
                format!("this DC holds shard {shard} as a replica"),
            ));
        }
        if self.shard_busy(shard) {
            return Err(CommandError::conflict(
                "shard_busy",
                format!("an operation of shard {shard} is running"),
            ));
        }
        let Some(data) = self.shards.get_mut(&shard) else {
            return Err(CommandError::invalid(
                "invalid_shard",
                format!("shard {shard} does not exist"),
            ));
        };
        if data.frozen == Some(handover) {
            return Ok(Outcome::Unchanged);
        }
        data.frozen = Some(handover);
        Ok(Outcome::Done)
    }

    fn apply_replication_batch(
        &mut self,
        from_dc: &str,
        shard: ShardId,
        records: &[crate::replication::Record],
        epoch_start: Option<Position>,
    ) -> CommandResult {
        if !shard.is_global() && shard.0 >= self.shard_count {
            return Err(CommandError::invalid(
                "invalid_shard",
                format!("shard {shard} does not exist"),
            ));
        }
        // Staged on a copy: a refused batch changes nothing, not even the owner or the
        // watermark a new epoch's first batch would move.
        let mut replica = self
            .replicas
            .get(&shard)
            .cloned()
            .unwrap_or_else(|| ReplicaShard::new(shard, from_dc));
        if replica.needs_seed {
            return Err(CommandError::conflict(
                "replication_needs_seed",
                format!("the copy of shard {shard} waits for a snapshot of the owner's"),
            ));
        }
        // A new owner's first batch continues the old owner's stream exactly where its epoch
        // started: the replica follows the shard to its new owner (and a copy sealed for a
        // takeover that went elsewhere is released).
        let starts_epoch = records.first().is_some_and(|r| {
            r.epoch > replica.watermark.epoch
                && r.seq == 1
                && epoch_start == Some(replica.watermark)
        });
        if starts_epoch {
            replica.owner_dc = from_dc.to_string();
            replica.sealed = None;
            replica.watermark = Position {
                epoch: records[0].epoch,
                seq: 0,
            };
        }
        let result = if let Some(takeover) = replica.sealed {
            Err(ApplyError::Sealed {
                shard,
                takeover,
                watermark: replica.watermark,
            })
        } else if replica.owner_dc != from_dc {
            Err(ApplyError::WrongOwner {
                shard,
                expected: replica.owner_dc.clone(),
                found: from_dc.to_string(),
            })
        } else if records.is_empty() {
            return Ok(Outcome::Unchanged);
        } else {
            replica.apply_batch(records)
        };
        match result {
            Ok(()) => {
                self.replicas.insert(shard, replica);
                Ok(Outcome::Done)
            }
            Err(ApplyError::AlreadyApplied { .. }) => Ok(Outcome::Unchanged),
            Err(e) => {
                tracing::warn!(%shard, from_dc, error = %e, "replication batch refused");
                Err(match e {
                    ApplyError::Unappliable { .. } => {
                        CommandError::invalid(e.code(), e.to_string())
                    }
                    _ => CommandError::conflict(e.code(), e.to_string()),
                })
            }
        }
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
        .chain(record.adopted_jobs.clone())
        .collect();
    ClusterView {
        cluster: record.cluster.clone(),
        nodes,
        jobs,
        in_flight,
    }
}

fn job_finished(effects: &[JobEffect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, JobEffect::JobFinished { .. }))
}

enum JobControl {
    Abort,
    Pause,
    Resume,
}

fn first_task(job: JobId) -> TaskId {
    TaskId { job, seq: 0 }
}

fn last_task(job: JobId) -> TaskId {
    TaskId { job, seq: u32::MAX }
}

/// Stdout/stderr kept per node action (the tail).
const MAX_OUTPUT_BYTES: usize = 8 * 1024;

fn truncate_output(s: &str) -> String {
    if s.len() <= MAX_OUTPUT_BYTES {
        return s.to_string();
    }
    let mut start = s.len() - MAX_OUTPUT_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

fn apply_effects(record: &mut ClusterRecord, action: ClusterAction, effects: &[JobEffect]) {
    for effect in effects {
        if let JobEffect::JobFinished {
            status,
            cluster_status,
        } = effect
        {
            record.cluster.status = *cluster_status;
            record.cluster.message =
                (*status == JobStatus::Failed).then(|| format!("{action} failed"));
        }
    }
}
