//! Replication records (DESIGN section 4): what a shard's owner ships to the other DCs, and how
//! a replica applies it.
//!
//! ```text
//!  owner DC                                             replica DC
//!  State::apply(entry)                                  State::apply(ApplyReplicationBatch)
//!    | changes the shard and, in the same step,           | ReplicaShard::apply_batch:
//!    | appends records to that shard's Outbox             |   (epoch, seq) must continue the
//!    v                                                    |   watermark exactly; all or nothing
//!  Outbox { epoch, next_seq, records }  --- pull --->     v
//!    (snapshotted with the shard; TrimOutbox drops      ReplicaShard { watermark, view }
//!     what every replica acknowledged)
//!
//!  invariant: replica.view() == owner's State::replicated_view(shard) as of the replica's watermark
//! ```
//!
//! Only these records cross DCs: [`RecordKind::OperationStarted`] (an operation was accepted: the
//! restart state), [`RecordKind::OperationCheckpoint`] (a CREATE made a machine: provider id,
//! hostname, IPs, which cannot be recomputed), [`RecordKind::OperationFinished`] (final cluster
//! status, nodes and job summary), [`RecordKind::ClusterUpdated`] (metadata only) and
//! [`RecordKind::Global`] (tenants, keys, catalog). Task transitions, attempts, output, node
//! action history, pause state and provisioners stay in the DC.
//!
//! # Idempotency keys
//!
//! An operation started under an `Idempotency-Key` carries the key in its `OperationStarted`.
//! Owner and replicas remember, per shard, key -> outcome ([`ShardKeys`]: the newest
//! [`SHARD_KEYS_CAPACITY`]), in the shard's snapshot part and in a seed, and a new owner adopts
//! them with the shard: a retry at any DC that holds the record answers the original outcome
//! instead of creating a second cluster. A create whose record had not reached a DC when it is
//! retried there is not known there (see ARCHITECTURE.md, "Idempotency across DCs").
//!
//! # Positions
//!
//! Each shard numbers its records `seq = 1, 2, ...` in commit order; `epoch` (default 1) is the
//! shard's ownership epoch. A replica's [`ReplicaShard::watermark`] is the position of the last
//! record it applied; a batch must start at exactly `watermark.seq + 1` in the same epoch (a gap,
//! a duplicate or another epoch is refused and changes nothing: a replica is always a prefix of
//! its owner). Moving a replica to a new epoch after a failover is the placement side's job.
//!
//! # The outbox bound
//!
//! An outbox holds at most [`OUTBOX_CAPACITY`] records, and records carrying at most
//! [`OUTBOX_RESOURCE_BYTES_CAPACITY`] bytes of plugin resources. Beyond that the oldest are dropped and
//! [`Outbox::dropped_through_seq`] remembers the last dropped position: a replica whose watermark
//! is below it can no longer be caught up from records and must be re-seeded from a snapshot of
//! the shard. Records every replica acknowledged are removed earlier with `TrimOutbox`.
//! Together, the outboxes of a DC's cluster shards hold at most [`DC_OUTBOX_CAPACITY`] records:
//! beyond it the fullest one drops its oldest record (ties: the lowest shard), the same way.
//!
//! # What the records carry (kept small: the cross-DC/DC-log byte ratio is a headline metric)
//!
//! - Plans are stages of `(task, service, [nodenum, ...])` groups: a node's ID is derived from
//!   the cluster ID and its number, so the 36-character ID is not repeated per task.
//! - A cluster row carries the template and provider snapshot only when they are new to the
//!   replica (the cluster's create, and `ClusterUpdated` from a template sync).
//! - `OperationStarted` carries nodes only for operations that change them (create, add
//!   services).
//! - `OperationFinished` carries only what a running job can change: the cluster status and
//!   message, and the hostname, IP addresses and provisioner results of the nodes whose values
//!   differ from what the replica shows.
//!
//! Measured (`cargo test -p coopr-state --test replication create_byte_ratio -- --nocapture`):
//! a 3-machine lamp create ships 4.6 KB for 17.6 KB of DC log (26%) when task output is 3 bytes,
//! 7.4% with 1 KiB of output per task. The floor is the cluster definition itself (about the
//! size of the create request) plus one checkpoint per machine.
//!
//! # Late results
//!
//! A task of a finished job (an aborted create) may still report. Its result changes the job's
//! summary and maybe the nodes, so the owner ships that job's `OperationFinished` again (and a
//! checkpoint first if it was a CREATE that succeeded: a machine exists that a later delete must
//! find). While another operation is in flight, such a repeat changes the job summary only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use coopr_types::{
    Account, ApiKey, Cluster, ClusterAction, ClusterId, ClusterStatus, ClusterTemplate, EntityKind,
    JobId, JobStatus, JsonMap, Node, NodeId, NodeProperties, Provider, ShardId, ShortStr, TaskName,
    Tenant, VecMap,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::resources::{self, Blob, Blobs, ResourcePath, OUTBOX_RESOURCE_BYTES_CAPACITY};
use crate::{CommandError, CommandResult, ErrorCode, Outcome, State, TenantCatalog};

/// Records an outbox keeps at most; older ones are dropped (replicas behind them need a snapshot).
pub const OUTBOX_CAPACITY: usize = 100_000;

/// Records the outboxes of every cluster shard a DC owns keep at most together: with a replica
/// DC away, each of 1,024 shards could otherwise hold [`OUTBOX_CAPACITY`] records (about 2 KB
/// each: 200 GB). Beyond it the oldest record of the fullest outbox is dropped (replicas behind
/// it are re-seeded from a snapshot), so the bound costs about 1 GB however many shards a DC
/// owns.
pub const DC_OUTBOX_CAPACITY: usize = 500_000;

/// The epoch of a shard that never changed owner.
pub const FIRST_EPOCH: u64 = 1;

/// Idempotency keys a shard remembers for replicas (the oldest are forgotten first). Per shard,
/// so that a seed, which carries them, stays a few MB at most (a scoped key is under 400 bytes).
pub const SHARD_KEYS_CAPACITY: usize = 10_000;

/// The idempotency keys of operations a shard's `OperationStarted` records carried, with the
/// outcome each one answered: what lets a retry at a DC other than the one that applied the
/// request find it. Owner and replicas build the same table from the same records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardKeys {
    outcomes: BTreeMap<String, Outcome>,
    /// Keys in the order they were remembered, oldest first (for the bound).
    order: VecDeque<String>,
}

impl ShardKeys {
    /// The outcome remembered for `key`.
    pub fn get(&self, key: &str) -> Option<&Outcome> {
        self.outcomes.get(key)
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Remembers `key` (a key is applied once, so it is never remembered twice), forgetting the
    /// oldest beyond [`SHARD_KEYS_CAPACITY`].
    pub fn remember(&mut self, key: String, outcome: Outcome) {
        if self.outcomes.insert(key.clone(), outcome).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > SHARD_KEYS_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }
}

/// The outcome the owner answered for the request that started `job`: a create answers the
/// cluster id, every other operation its job.
pub fn started_outcome(cluster: ClusterId, job: JobId, action: ClusterAction) -> Outcome {
    if action == ClusterAction::ClusterCreate {
        Outcome::ClusterCreated { id: cluster }
    } else {
        Outcome::JobStarted { job }
    }
}

/// A position in a shard's record stream. Ordered by epoch, then seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    /// Before the first record of the first epoch.
    pub const START: Position = Position {
        epoch: FIRST_EPOCH,
        seq: 0,
    };
}

/// One replication record: a position in its shard's stream and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub shard: ShardId,
    pub epoch: u64,
    pub seq: u64,
    /// When the owner committed it (the `now_ms` of the DC log entry that emitted it; 0 in
    /// records written before this field existed). Replication lag is measured against it.
    #[serde(default)]
    pub at_ms: u64,
    pub kind: RecordKind,
}

impl Record {
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordKind {
    /// A cluster operation (job) was accepted: the cluster row and nodes as the job starts, and
    /// the minimal restart state (action, request, plan).
    OperationStarted {
        /// Boxed, as in `ClusterUpdated`: the row is most of a record's size, and an outbox may
        /// hold many records while a replica DC is away.
        cluster: Box<ClusterRow>,
        /// The nodes, when the operation changed them (a create, added services); `None`: as
        /// the replica has them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nodes: Option<Vec<ReplicatedNode>>,
        job: JobId,
        action: ClusterAction,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<JsonMap>,
        plan: Vec<Vec<PlanStep>>,
        /// The scoped `Idempotency-Key` the operation was requested under, if any: a retry at
        /// a DC that applied this record answers the same outcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// A CREATE task finished OK: a machine exists. The node's hostname, IPs and provisioner
    /// results (provider id) as they are now, so a restart neither leaks nor doubles it.
    OperationCheckpoint {
        cluster: ClusterId,
        job: JobId,
        node: NodeId,
        hostname: ShortStr,
        ipaddresses: BTreeMap<String, String>,
        provisioner_results: JsonMap,
    },
    /// A job completed or failed (or, rarely, a late task result changed a finished job): the
    /// final cluster status, what the job changed on the nodes, and the job summary.
    OperationFinished {
        cluster: ClusterId,
        status: ClusterStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// The nodes whose outcome differs from what the replica has.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nodes: Vec<NodeOutcome>,
        job: JobSummary,
    },
    /// A metadata-only change of the cluster row (expire time, template sync).
    ClusterUpdated { cluster: Box<ClusterRow> },
    /// A change of the global shard.
    Global(GlobalRecord),
}

impl RecordKind {
    /// The record kind's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            RecordKind::OperationStarted { .. } => "operation_started",
            RecordKind::OperationCheckpoint { .. } => "operation_checkpoint",
            RecordKind::OperationFinished { .. } => "operation_finished",
            RecordKind::ClusterUpdated { .. } => "cluster_updated",
            RecordKind::Global(_) => "global",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GlobalRecord {
    /// The tenant as stored (its internal id already resolved).
    TenantPut(Tenant),
    /// The tenant, its keys and its catalog are gone.
    TenantDeleted(String),
    ApiKeyPut(ApiKey),
    /// A new version of a catalog entity, as stored (with its `version`).
    EntityPut {
        tenant: String,
        kind: EntityKind,
        name: String,
        version: u32,
        body: Value,
    },
    EntityDeleted {
        tenant: String,
        kind: EntityKind,
        name: String,
        version: Option<u32>,
    },
    /// Every entity of the imported kinds replaced by these (each at version 1).
    CatalogImported {
        tenant: String,
        entities: BTreeMap<EntityKind, Vec<Value>>,
    },
    /// A user's profile written, or deleted (`None`).
    ProfilePut {
        tenant: String,
        user: String,
        profile: Option<Value>,
    },
    /// A new version of a plugin resource, with its bytes (see [`crate::resources`]).
    ResourcePut {
        tenant: String,
        resource: ResourcePath,
        version: u32,
        bytes: Blob,
    },
    ResourceStaged {
        tenant: String,
        resource: ResourcePath,
        version: u32,
    },
    ResourceRecalled {
        tenant: String,
        resource: ResourcePath,
        version: u32,
    },
    ResourcesSynced {
        tenant: String,
    },
    /// A version of a resource, or all of them (`None`), deleted; blobs no version references
    /// any more go too.
    ResourceDeleted {
        tenant: String,
        resource: ResourcePath,
        version: Option<u32>,
    },
}

/// Planned tasks of one stage that share a task and service: `(task, service, nodenums)` (a
/// node-level task has an empty service). A node's ID is `NodeId::derive(cluster, nodenum)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep(pub TaskName, pub String, pub Vec<u32>);

/// Groups a stage's `(task, service, nodenum)` tasks, in order, into [`PlanStep`]s.
pub fn compact_stage(tasks: impl IntoIterator<Item = (TaskName, String, u32)>) -> Vec<PlanStep> {
    let mut steps: Vec<PlanStep> = Vec::new();
    for (task, service, nodenum) in tasks {
        match steps.last_mut() {
            Some(PlanStep(t, s, nodes)) if *t == task && *s == service => nodes.push(nodenum),
            _ => steps.push(PlanStep(task, service, vec![nodenum])),
        }
    }
    steps
}

/// A node as replicated: without its action history (which never leaves the DC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedNode {
    pub id: NodeId,
    pub cluster_id: ClusterId,
    pub properties: NodeProperties,
    #[serde(default)]
    pub provisioner_results: JsonMap,
}

impl From<&Node> for ReplicatedNode {
    fn from(node: &Node) -> Self {
        ReplicatedNode {
            id: node.id.clone(),
            cluster_id: node.cluster_id,
            properties: node.properties.clone(),
            provisioner_results: node.provisioner_results.clone(),
        }
    }
}

/// What a job can change on a node: the fields task results write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOutcome {
    pub id: NodeId,
    pub hostname: ShortStr,
    #[serde(default)]
    pub ipaddresses: BTreeMap<String, String>,
    #[serde(default)]
    pub provisioner_results: JsonMap,
}

impl NodeOutcome {
    /// Whether `node` already shows this outcome.
    pub fn is_shown_by(&self, node: &ReplicatedNode) -> bool {
        node.properties.hostname == self.hostname
            && node.properties.ipaddresses == self.ipaddresses
            && node.provisioner_results == self.provisioner_results
    }

    pub fn of(node: &Node) -> NodeOutcome {
        NodeOutcome {
            id: node.id.clone(),
            hostname: node.properties.hostname.clone(),
            ipaddresses: node.properties.ipaddresses.clone(),
            provisioner_results: node.provisioner_results.clone(),
        }
    }

    fn apply_to(&self, node: &mut ReplicatedNode) {
        node.properties.hostname = self.hostname.clone();
        node.properties.ipaddresses = self.ipaddresses.clone();
        node.provisioner_results = self.provisioner_results.clone();
    }
}

/// The template and provider a cluster was built from (large; shipped only when new).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub provider: Arc<Provider>,
    pub cluster_template: Arc<ClusterTemplate>,
}

/// A cluster row on the wire: every field of [`Cluster`] except its template and provider,
/// which travel in `snapshot` only when the replica does not have them yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRow {
    pub id: ClusterId,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub account: Account,
    pub create_time: u64,
    #[serde(default)]
    pub expire_time: u64,
    #[serde(default)]
    pub hardwaretype: ShortStr,
    #[serde(default)]
    pub imagetype: ShortStr,
    #[serde(default)]
    pub dns_suffix: String,
    pub nodes: Vec<NodeId>,
    pub services: Vec<ShortStr>,
    #[serde(default)]
    pub latest_job_id: Option<JobId>,
    pub status: ClusterStatus,
    #[serde(default, skip_serializing_if = "JsonMap::is_empty")]
    pub config: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<ClusterSnapshot>,
}

impl ClusterRow {
    /// The row of `cluster`, with its template and provider snapshot when `with_snapshot`.
    pub fn of(cluster: &Cluster, with_snapshot: bool) -> ClusterRow {
        ClusterRow {
            id: cluster.id,
            name: cluster.name.clone(),
            description: cluster.description.clone(),
            account: cluster.account.clone(),
            create_time: cluster.create_time,
            expire_time: cluster.expire_time,
            hardwaretype: cluster.hardwaretype.clone(),
            imagetype: cluster.imagetype.clone(),
            dns_suffix: cluster.dns_suffix.clone(),
            nodes: cluster.nodes.clone(),
            services: cluster.services.clone(),
            latest_job_id: cluster.latest_job_id,
            status: cluster.status,
            config: cluster.config.clone(),
            message: cluster.message.clone(),
            snapshot: with_snapshot.then(|| ClusterSnapshot {
                provider: cluster.provider.clone(),
                cluster_template: cluster.cluster_template.clone(),
            }),
        }
    }

    /// The full cluster: the snapshot from the row, else from the replica's current copy.
    fn resolve(&self, current: Option<&Cluster>) -> Option<Cluster> {
        let (provider, cluster_template) = match (&self.snapshot, current) {
            (Some(s), _) => (s.provider.clone(), s.cluster_template.clone()),
            (None, Some(c)) => (c.provider.clone(), c.cluster_template.clone()),
            (None, None) => return None,
        };
        Some(Cluster {
            id: self.id,
            name: self.name.clone(),
            description: self.description.clone(),
            account: self.account.clone(),
            create_time: self.create_time,
            expire_time: self.expire_time,
            provider,
            cluster_template,
            hardwaretype: self.hardwaretype.clone(),
            imagetype: self.imagetype.clone(),
            dns_suffix: self.dns_suffix.clone(),
            nodes: self.nodes.clone(),
            services: self.services.clone(),
            latest_job_id: self.latest_job_id,
            status: self.status,
            config: self.config.clone(),
            message: self.message.clone(),
        })
    }
}

/// A job as replicas see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub action: ClusterAction,
    pub status: JobStatus,
    pub create_time: u64,
    pub status_time: u64,
    pub stepstotal: usize,
    pub stepscompleted: usize,
}

/// What a checkpoint proved: a machine exists for the node, with these results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job: JobId,
    pub hostname: ShortStr,
    #[serde(default)]
    pub ipaddresses: BTreeMap<String, String>,
    #[serde(default)]
    pub provisioner_results: JsonMap,
}

/// An operation started but not finished: what a new owner needs to resume it after a failover
/// (re-plan or follow `plan`, skipping CREATEs that `checkpoints` prove done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub job: JobId,
    pub action: ClusterAction,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub config: Option<JsonMap>,
    pub plan: Vec<Vec<PlanStep>>,
    /// By node: the latest machine each checkpointed CREATE produced.
    #[serde(default)]
    pub checkpoints: BTreeMap<NodeId, Checkpoint>,
}

/// One cluster as replicated. This is both what a replica stores and what an owner's state
/// projects to ([`crate::State::replicated_view`]); the two compare equal at equal positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster: Cluster,
    /// While an operation is in flight: the nodes as it started, plus its checkpoints. A
    /// [`VecMap`] (as the owner's record): a `BTreeMap` of one node allocates 11 slots.
    pub nodes: VecMap<NodeId, ReplicatedNode>,
    /// Finished jobs (the layout job of a create is not one: it is part of the create), in
    /// job order: each new one goes at the end.
    pub jobs: VecMap<JobId, JobSummary>,
    #[serde(default)]
    pub in_flight: Option<InFlight>,
}

/// A cluster shard as replicated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterShardView {
    pub clusters: BTreeMap<ClusterId, ClusterView>,
}

/// The global shard as replicated: tenants, hashed API keys, catalogs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalView {
    pub tenants: BTreeMap<String, Tenant>,
    pub api_keys: BTreeMap<String, ApiKey>,
    pub catalogs: BTreeMap<String, TenantCatalog>,
    /// Plugin resources' bytes by SHA-256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_blobs: Blobs,
}

impl GlobalView {
    /// Applies one global record (the same changes the owner's command made).
    pub fn apply(&mut self, record: &GlobalRecord) {
        match record {
            GlobalRecord::TenantPut(tenant) => {
                self.tenants.insert(tenant.name.clone(), tenant.clone());
            }
            GlobalRecord::TenantDeleted(name) => {
                self.tenants.remove(name);
                self.api_keys.retain(|_, k| &k.tenant != name);
                self.catalogs.remove(name);
                resources::collect_garbage(&self.catalogs, &mut self.resource_blobs);
            }
            GlobalRecord::ApiKeyPut(key) => {
                self.api_keys.insert(key.key_sha256.clone(), key.clone());
            }
            GlobalRecord::EntityPut {
                tenant,
                kind,
                name,
                version,
                body,
            } => {
                self.catalogs
                    .entry(tenant.clone())
                    .or_default()
                    .put_version(*kind, name, *version, body.clone());
            }
            GlobalRecord::EntityDeleted {
                tenant,
                kind,
                name,
                version,
            } => {
                if let Some(catalog) = self.catalogs.get_mut(tenant) {
                    catalog.delete(*kind, name, *version);
                }
            }
            GlobalRecord::CatalogImported { tenant, entities } => {
                self.catalogs
                    .entry(tenant.clone())
                    .or_default()
                    .import(entities);
            }
            GlobalRecord::ProfilePut {
                tenant,
                user,
                profile,
            } => {
                self.catalogs
                    .entry(tenant.clone())
                    .or_default()
                    .set_profile(user, profile.clone());
            }
            GlobalRecord::ResourcePut { .. }
            | GlobalRecord::ResourceStaged { .. }
            | GlobalRecord::ResourceRecalled { .. }
            | GlobalRecord::ResourcesSynced { .. }
            | GlobalRecord::ResourceDeleted { .. } => {
                resources::apply_record(&mut self.catalogs, &mut self.resource_blobs, record);
            }
        }
    }
}

/// A shard's records not yet acknowledged by every replica, and the next position to assign.
/// Part of the shard's state, so it is snapshotted (and replicated inside the DC) with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    pub epoch: u64,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// The last seq dropped because the outbox was full (0: none). Replicas behind it need a
    /// snapshot.
    #[serde(default)]
    pub dropped_through_seq: u64,
    pub records: VecDeque<Record>,
    /// For an epoch after the first: the position of the previous owner's last record, which
    /// this epoch's seq 1 follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_after: Option<Position>,
    /// Plugin resource bytes the records hold ([`Record::resource_bytes`]), bounded by
    /// [`OUTBOX_RESOURCE_BYTES_CAPACITY`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            epoch: FIRST_EPOCH,
            next_seq: 1,
            dropped_through_seq: 0,
            records: VecDeque::new(),
            started_after: None,
            resource_bytes: 0,
        }
    }
}

/// Why records after a position cannot be read from an outbox.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// They were dropped (the outbox was full) or trimmed: the reader needs a snapshot.
    #[error("records after seq {after} are gone (the outbox starts at seq {first_seq}); re-seed from a snapshot")]
    Gone { after: u64, first_seq: u64 },
    /// The reader is ahead of the outbox: it is not a prefix of this shard.
    #[error("seq {after} is beyond the last assigned seq {last_seq}")]
    Ahead { after: u64, last_seq: u64 },
}

impl Outbox {
    /// The empty outbox of an epoch a new owner starts after `after`.
    pub fn starting(epoch: u64, after: Position) -> Outbox {
        Outbox {
            epoch,
            started_after: Some(after),
            ..Outbox::default()
        }
    }

    /// The position of the last record assigned (seq 0: none yet).
    pub fn last_position(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.next_seq - 1,
        }
    }

    /// The position of the shard's last record: in an epoch that has written nothing yet, the
    /// previous owner's last one (which a caught-up replica's watermark equals).
    pub fn history_position(&self) -> Position {
        match self.started_after {
            Some(after) if self.next_seq == 1 => after,
            _ => self.last_position(),
        }
    }

    /// Appends a record with the next seq, dropping the oldest beyond `capacity` records or
    /// [`OUTBOX_RESOURCE_BYTES_CAPACITY`] resource bytes (the newest record always stays).
    pub fn push(&mut self, shard: ShardId, kind: RecordKind, at_ms: u64, capacity: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = Record {
            shard,
            epoch: self.epoch,
            seq,
            at_ms,
            kind,
        };
        self.resource_bytes += record.resource_bytes();
        self.records.push_back(record);
        while self.records.len() > capacity
            || (self.resource_bytes > OUTBOX_RESOURCE_BYTES_CAPACITY && self.records.len() > 1)
        {
            self.drop_oldest();
        }
        seq
    }

    /// Drops the oldest record (replicas behind it will need a snapshot); false if empty.
    pub fn drop_oldest(&mut self) -> bool {
        let Some(dropped) = self.records.pop_front() else {
            return false;
        };
        self.dropped_through_seq = dropped.seq;
        self.resource_bytes -= dropped.resource_bytes();
        true
    }

    /// Removes every record up to and including `through_seq`. Returns how many went.
    pub fn trim(&mut self, through_seq: u64) -> usize {
        let mut count = 0;
        while self.records.front().is_some_and(|r| r.seq <= through_seq) {
            if let Some(trimmed) = self.records.pop_front() {
                self.resource_bytes -= trimmed.resource_bytes();
            }
            count += 1;
        }
        // A trimmed outbox gives its memory back (the deque keeps its peak capacity otherwise).
        let capacity = self.records.capacity();
        if capacity > 1024 && self.records.len() < capacity / 4 {
            self.records.shrink_to(self.records.len() * 2);
        }
        count
    }

    /// Up to `max` records after seq `after`, in order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Record>, ReadError> {
        let last_seq = self.next_seq - 1;
        if after > last_seq {
            return Err(ReadError::Ahead { after, last_seq });
        }
        let first_seq = self.records.front().map_or(self.next_seq, |r| r.seq);
        if after + 1 < first_seq {
            return Err(ReadError::Gone { after, first_seq });
        }
        let skip = (after + 1 - first_seq) as usize;
        Ok(self.records.iter().skip(skip).take(max).cloned().collect())
    }
}

/// Why a batch could not be applied to a replica. A refused batch changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ApplyError {
    /// Every record of the batch is at or below the watermark: it was applied already.
    #[error("batch through seq {last_seq} is already applied (watermark {watermark:?})")]
    AlreadyApplied { last_seq: u64, watermark: Position },
    /// The batch does not start right after the watermark (a gap, or a partial overlap), or its
    /// seqs are not consecutive.
    #[error("expected seq {expected}, got {found}")]
    OutOfOrder { expected: u64, found: u64 },
    /// A record of another epoch (an epoch change is decided by the placement group).
    #[error("expected epoch {expected}, got {found} at seq {seq}")]
    WrongEpoch { expected: u64, found: u64, seq: u64 },
    #[error("a record of shard {found} in the stream of shard {expected}")]
    WrongShard { expected: ShardId, found: ShardId },
    /// The batch comes from another DC than this replica's owner.
    #[error("records from {found}, but shard {shard} is replicated from {expected}")]
    WrongOwner {
        shard: ShardId,
        expected: String,
        found: String,
    },
    /// A record that does not fit the replica's copy (the streams diverged): stop and alert.
    #[error("record {seq} cannot be applied: {reason}")]
    Unappliable { seq: u64, reason: String },
    /// The copy is sealed for a takeover: it ends at its watermark, the takeover point.
    #[error("the copy of shard {shard} is sealed at {watermark:?} for takeover {takeover}")]
    Sealed {
        shard: ShardId,
        takeover: u64,
        watermark: Position,
    },
}

impl ApplyError {
    /// A stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApplyError::AlreadyApplied { .. } => ErrorCode::ReplicationAlreadyApplied,
            ApplyError::OutOfOrder { .. } => ErrorCode::ReplicationOutOfOrder,
            ApplyError::WrongEpoch { .. } => ErrorCode::ReplicationWrongEpoch,
            ApplyError::WrongShard { .. } => ErrorCode::ReplicationWrongShard,
            ApplyError::WrongOwner { .. } => ErrorCode::ReplicationWrongOwner,
            ApplyError::Unappliable { .. } => ErrorCode::ReplicationUnappliable,
            ApplyError::Sealed { .. } => ErrorCode::ReplicationSealed,
        }
    }
}

/// The replicated copy of a shard's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicaData {
    Clusters(ClusterShardView),
    Global(GlobalView),
}

/// A shard this DC replicates from its owner: the replicated view and the position it is at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaShard {
    pub shard: ShardId,
    pub owner_dc: String,
    /// The position of the last record applied.
    pub watermark: Position,
    /// When the owner committed the last record applied (ms since the epoch; 0 before the
    /// first): a replica's staleness when nothing fresher is known (see the server's reads).
    #[serde(default)]
    pub last_at_ms: u64,
    pub data: ReplicaData,
    /// Set while this DC is asked to take the shard over (the takeover number): the copy
    /// applies nothing more of the old owner's epoch, so it ends exactly where this DC reports
    /// it does (the takeover point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<u64>,
    /// The copy cannot continue from records (this DC's own copy diverged from the owner's
    /// after a failover, or its stream broke): it waits for a snapshot of the owner's shard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_seed: bool,
    /// The idempotency keys the shard's records carried (outside `data`: they are no part of
    /// the view, which the owner's and every replica's copy must show equally).
    #[serde(default, skip_serializing_if = "ShardKeys::is_empty")]
    pub keys: ShardKeys,
}

impl ReplicaShard {
    /// An empty replica, before the first record of the first epoch.
    pub fn new(shard: ShardId, owner_dc: impl Into<String>) -> ReplicaShard {
        ReplicaShard {
            shard,
            owner_dc: owner_dc.into(),
            watermark: Position::START,
            last_at_ms: 0,
            data: if shard.is_global() {
                ReplicaData::Global(GlobalView::default())
            } else {
                ReplicaData::Clusters(ClusterShardView::default())
            },
            sealed: None,
            needs_seed: false,
            keys: ShardKeys::default(),
        }
    }

    /// The replicated view as canonical JSON (compare with the owner's
    /// [`crate::State::replicated_view`]).
    pub fn view(&self) -> Value {
        match &self.data {
            ReplicaData::Clusters(view) => to_value(view),
            ReplicaData::Global(view) => to_value(view),
        }
    }

    /// Applies records that continue exactly from the watermark, all or nothing.
    pub fn apply_batch(&mut self, records: &[Record]) -> Result<(), ApplyError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        if first.epoch == self.watermark.epoch && last.seq <= self.watermark.seq {
            return Err(ApplyError::AlreadyApplied {
                last_seq: last.seq,
                watermark: self.watermark,
            });
        }
        // Check every position before changing anything.
        for (expected, record) in (self.watermark.seq + 1..).zip(records) {
            if record.shard != self.shard {
                return Err(ApplyError::WrongShard {
                    expected: self.shard,
                    found: record.shard,
                });
            }
            if record.epoch != self.watermark.epoch {
                return Err(ApplyError::WrongEpoch {
                    expected: self.watermark.epoch,
                    found: record.epoch,
                    seq: record.seq,
                });
            }
            if record.seq != expected {
                return Err(ApplyError::OutOfOrder {
                    expected,
                    found: record.seq,
                });
            }
        }
        match &mut self.data {
            ReplicaData::Global(view) => {
                let mut staged = view.clone();
                for record in records {
                    let RecordKind::Global(global) = &record.kind else {
                        return Err(unappliable(record, "a cluster record in the global shard"));
                    };
                    staged.apply(global);
                }
                *view = staged;
            }
            ReplicaData::Clusters(view) => {
                // Only the clusters the batch touches are copied; they replace the originals
                // once every record applied.
                let mut staged: BTreeMap<ClusterId, ClusterView> = BTreeMap::new();
                for record in records {
                    apply_cluster_record(&view.clusters, &mut staged, record)?;
                }
                view.clusters.extend(staged);
                for record in records {
                    if let RecordKind::OperationStarted {
                        cluster,
                        job,
                        action,
                        idempotency_key: Some(key),
                        ..
                    } = &record.kind
                    {
                        self.keys
                            .remember(key.clone(), started_outcome(cluster.id, *job, *action));
                    }
                }
            }
        }
        self.watermark = last.position();
        self.last_at_ms = last.at_ms;
        Ok(())
    }
}

fn unappliable(record: &Record, reason: impl Into<String>) -> ApplyError {
    ApplyError::Unappliable {
        seq: record.seq,
        reason: reason.into(),
    }
}

/// The cluster a record of a cluster shard changes (none for a global record): the only one
/// a replica's copy changes for it.
pub fn record_cluster(record: &Record) -> Option<ClusterId> {
    match &record.kind {
        RecordKind::OperationStarted { cluster, .. } | RecordKind::ClusterUpdated { cluster } => {
            Some(cluster.id)
        }
        RecordKind::OperationCheckpoint { cluster, .. }
        | RecordKind::OperationFinished { cluster, .. } => Some(*cluster),
        RecordKind::Global(_) => None,
    }
}

/// The cluster whose template and provider a record carries (a row with its snapshot).
fn carried_template(record: &Record) -> Option<ClusterId> {
    match &record.kind {
        RecordKind::OperationStarted { cluster, .. } | RecordKind::ClusterUpdated { cluster }
            if cluster.snapshot.is_some() =>
        {
            Some(cluster.id)
        }
        _ => None,
    }
}

/// Applies one cluster record to `staged`, copying the cluster from `base` first if needed.
fn apply_cluster_record(
    base: &BTreeMap<ClusterId, ClusterView>,
    staged: &mut BTreeMap<ClusterId, ClusterView>,
    record: &Record,
) -> Result<(), ApplyError> {
    let Some(cluster_id) = record_cluster(record) else {
        return Err(unappliable(record, "a global record in a cluster shard"));
    };
    if let (std::collections::btree_map::Entry::Vacant(slot), Some(existing)) =
        (staged.entry(cluster_id), base.get(&cluster_id))
    {
        slot.insert(existing.clone());
    }
    let current = staged.get_mut(&cluster_id);
    match &record.kind {
        RecordKind::OperationStarted {
            cluster,
            nodes,
            job,
            action,
            services,
            config,
            plan,
            idempotency_key: _,
        } => {
            let existing = current.as_ref().map(|c| &c.cluster);
            let row = cluster
                .resolve(existing)
                .ok_or_else(|| unappliable(record, format!("cluster {cluster_id} is unknown")))?;
            if let Some(running) = current.as_ref().and_then(|c| c.in_flight.as_ref()) {
                return Err(unappliable(
                    record,
                    format!("job {job} starts while job {} is in flight", running.job),
                ));
            }
            let in_flight = InFlight {
                job: *job,
                action: *action,
                services: services.clone(),
                config: config.clone(),
                plan: plan.clone(),
                checkpoints: BTreeMap::new(),
            };
            let nodes: Option<VecMap<NodeId, ReplicatedNode>> = nodes
                .as_ref()
                .map(|nodes| nodes.iter().map(|n| (n.id.clone(), n.clone())).collect());
            match current {
                Some(view) => {
                    view.cluster = row;
                    if let Some(nodes) = nodes {
                        view.nodes = nodes;
                    }
                    view.in_flight = Some(in_flight);
                }
                None => {
                    let nodes = nodes.ok_or_else(|| {
                        unappliable(record, format!("cluster {cluster_id} starts without nodes"))
                    })?;
                    staged.insert(
                        cluster_id,
                        ClusterView {
                            cluster: row,
                            nodes,
                            jobs: VecMap::new(),
                            in_flight: Some(in_flight),
                        },
                    );
                }
            }
        }
        RecordKind::OperationCheckpoint {
            job,
            node,
            hostname,
            ipaddresses,
            provisioner_results,
            ..
        } => {
            let view = current
                .ok_or_else(|| unappliable(record, format!("cluster {cluster_id} is unknown")))?;
            let checkpoint = Checkpoint {
                job: *job,
                hostname: hostname.clone(),
                ipaddresses: ipaddresses.clone(),
                provisioner_results: provisioner_results.clone(),
            };
            view.apply_checkpoint(node, checkpoint)
                .map_err(|reason| unappliable(record, reason))?;
        }
        RecordKind::OperationFinished {
            status,
            message,
            nodes,
            job,
            ..
        } => {
            let view = current
                .ok_or_else(|| unappliable(record, format!("cluster {cluster_id} is unknown")))?;
            view.cluster.status = *status;
            view.cluster.message = message.clone();
            view.jobs.insert(job.id, job.clone());
            let finishes_in_flight = view.in_flight.as_ref().is_some_and(|f| f.job == job.id);
            // A late result of an earlier job while another one runs leaves the nodes as that
            // one started (its own OperationFinished brings them up to date).
            if finishes_in_flight || view.in_flight.is_none() {
                view.in_flight = None;
                for outcome in nodes {
                    let node = view.nodes.get_mut(&outcome.id).ok_or_else(|| {
                        unappliable(record, format!("node {} is unknown", outcome.id))
                    })?;
                    outcome.apply_to(node);
                }
            }
        }
        RecordKind::ClusterUpdated { cluster } => {
            let view = current
                .ok_or_else(|| unappliable(record, format!("cluster {cluster_id} is unknown")))?;
            view.cluster = cluster
                .resolve(Some(&view.cluster))
                .ok_or_else(|| unappliable(record, "no template snapshot"))?;
        }
        RecordKind::Global(_) => unreachable!("rejected above"),
    }
    Ok(())
}

impl ClusterView {
    /// Records a checkpoint: the node's machine fields, and the in-flight operation's checkpoint
    /// list if one is in flight. The owner applies the same function to its own copy.
    pub(crate) fn apply_checkpoint(
        &mut self,
        node: &NodeId,
        checkpoint: Checkpoint,
    ) -> Result<(), String> {
        let replicated = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| format!("node {node} is unknown"))?;
        replicated.properties.hostname = checkpoint.hostname.clone();
        replicated.properties.ipaddresses = checkpoint.ipaddresses.clone();
        replicated.provisioner_results = checkpoint.provisioner_results.clone();
        if let Some(in_flight) = &mut self.in_flight {
            in_flight.checkpoints.insert(node.clone(), checkpoint);
        }
        Ok(())
    }
}

/// The replica side's command.
impl State {
    /// Applies a batch to the local replica of `shard` (created on its first batch), all or
    /// nothing. A batch already applied (every record at or below the watermark) is a no-op
    /// (`Unchanged`), so a puller may re-propose a batch whose commit it did not see.
    pub(crate) fn apply_replication_batch(
        &mut self,
        from_dc: &str,
        shard: ShardId,
        records: &[Record],
        epoch_start: Option<Position>,
    ) -> CommandResult {
        if !shard.is_global() && shard.0 >= self.shard_count() {
            return Err(CommandError::invalid(
                ErrorCode::InvalidShard,
                format!("shard {shard} does not exist"),
            ));
        }
        // Staged on a copy: a refused batch changes nothing, not even the owner or the
        // watermark a new epoch's first batch would move.
        let mut replica = self
            .replicas
            .get(&shard)
            .map(|copy| ReplicaShard::clone(copy))
            .unwrap_or_else(|| ReplicaShard::new(shard, from_dc));
        if replica.needs_seed {
            return Err(CommandError::conflict(
                ErrorCode::ReplicationNeedsSeed,
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
                let touched = records.iter().filter_map(record_cluster).collect();
                // Only a row that carried its template brings a copy of its own; the others
                // took the interned one of the cluster's current copy.
                let with_template = records.iter().filter_map(carried_template).collect();
                State::intern_replica(&mut self.service_pool, &mut replica, Some(&with_template));
                self.put_replica_batch(shard, replica, &touched);
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

/// Serializing our own types to JSON cannot fail (every map key is a string).
pub(crate) fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("replicated views serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(name: &str) -> RecordKind {
        RecordKind::Global(GlobalRecord::TenantDeleted(name.into()))
    }

    /// Together the cluster shards' outboxes keep at most a DC-wide number of records: the
    /// fullest drops its oldest (ties: the lowest shard) until they fit, and a replica behind a
    /// dropped record reads `Gone` (it needs a snapshot). Shards at or below the others are
    /// left alone.
    #[test]
    fn outboxes_together_stay_within_the_dc_bound() {
        let mut state = State::new(4);
        for (shard, n) in [(0u32, 5u64), (1, 3), (2, 5)] {
            let outbox =
                &mut std::sync::Arc::make_mut(state.shards.entry(ShardId(shard)).or_default())
                    .replication;
            for i in 0..n {
                outbox.push(ShardId(shard), deleted(&i.to_string()), 0, OUTBOX_CAPACITY);
            }
        }
        state.bound_outboxes(10);
        let lens: Vec<(u32, usize, u64)> = state
            .shards
            .iter()
            .map(|(s, d)| {
                (
                    s.0,
                    d.replication.records.len(),
                    d.replication.dropped_through_seq,
                )
            })
            .filter(|(_, len, _)| *len > 0)
            .collect();
        assert_eq!(lens, [(0, 3, 2), (1, 3, 0), (2, 4, 1)]);
        let shard0 = &state.shards[&ShardId(0)].replication;
        assert_eq!(
            shard0.read_after(1, 10),
            Err(ReadError::Gone {
                after: 1,
                first_seq: 3
            })
        );
        assert_eq!(shard0.read_after(2, 10).map(|r| r.len()), Ok(3));
        // Within the bound nothing more goes.
        state.bound_outboxes(10);
        assert_eq!(
            state
                .shards
                .values()
                .map(|d| d.replication.records.len())
                .sum::<usize>(),
            10
        );
    }

    /// Beyond its capacity an outbox drops the oldest records and remembers the last dropped
    /// seq; reading from before it says the reader needs a snapshot.
    #[test]
    fn outbox_cap_drops_oldest_and_reports_it() {
        let mut outbox = Outbox::default();
        for i in 0..5 {
            outbox.push(ShardId::GLOBAL, deleted(&i.to_string()), 0, 3);
        }
        assert_eq!(outbox.records.len(), 3);
        assert_eq!(outbox.dropped_through_seq, 2);
        assert_eq!(outbox.records.front().map(|r| r.seq), Some(3));
        assert_eq!(
            outbox.read_after(1, 10),
            Err(ReadError::Gone {
                after: 1,
                first_seq: 3
            })
        );
        let seqs: Vec<u64> = outbox
            .read_after(2, 2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(outbox.read_after(5, 10), Ok(vec![]));
        assert!(matches!(
            outbox.read_after(6, 10),
            Err(ReadError::Ahead { .. })
        ));
        assert_eq!(outbox.trim(4), 2);
        assert_eq!(outbox.records.len(), 1);
        assert_eq!(outbox.last_position(), Position { epoch: 1, seq: 5 });
    }
}
