//! Commands: every state change is one of these, serialized into the log and applied by
//! [`crate::State::apply`]. Commands carry every decision that needs a clock, randomness or the
//! layout solver (time, tenant UUIDs, node layout), so applying them is deterministic.

use std::collections::BTreeMap;

use coopr_types::{
    ApiKey, ClusterAction, ClusterId, ClusterTemplate, EntityKind, JsonMap, NodeId, Provider,
    ShardId, TaskId, Tenant,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::replication::{Position, Record, ReplicaShard};
use crate::resources::{Blob, ResourcePath};
use crate::CommandError;

/// One log entry: a command plus the context that makes applying it deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Wall-clock time (ms since epoch) assigned by the proposer.
    pub now_ms: u64,
    /// `Idempotency-Key` scope + key: a second entry with the same key returns the first outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The shard the command writes and the ownership epoch the proposer held it at (every
    /// write of a multi-DC deployment that names one shard carries it). An entry whose epoch
    /// is not the shard's current one is refused before anything else (see
    /// [`crate::State::apply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
    pub command: Command,
}

/// `(shard, epoch)`: the ownership a write was proposed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub shard: ShardId,
    pub epoch: u64,
}

/// A node as the layout solver placed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub nodenum: u32,
    pub services: Vec<String>,
    pub hardwaretype: String,
    pub imagetype: String,
    pub flavor: String,
    pub image: String,
    pub sshuser: String,
}

/// A validated cluster-create request, with the template, provider and service definitions
/// snapshotted and the layout solved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub tenant: String,
    pub user: String,
    pub name: String,
    pub description: String,
    pub template: ClusterTemplate,
    pub provider: Provider,
    pub hardwaretype: String,
    pub imagetype: String,
    pub dns_suffix: String,
    pub services: Vec<String>,
    pub config: JsonMap,
    pub initial_lease_ms: u64,
    pub nodes: Vec<NodeSpec>,
    /// The tenant's internal ID as the request was checked against ([`Tenant::id`]): the create
    /// is refused if the tenant was deleted and created again since (`tenant_changed`).
    #[serde(default)]
    pub tenant_incarnation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionerInfo {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub capacity_total: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    // ---- global shard: tenants, keys, catalog
    PutTenant {
        tenant: Tenant,
    },
    DeleteTenant {
        name: String,
    },
    PutApiKey {
        key: ApiKey,
    },
    /// Writes a new version of a catalog entity. `create_only` rejects an existing name (Coopr's POST).
    PutEntity {
        tenant: String,
        kind: EntityKind,
        name: String,
        body: Value,
        create_only: bool,
    },
    DeleteEntity {
        tenant: String,
        kind: EntityKind,
        name: String,
        version: Option<u32>,
    },
    /// Deletes every entity of the imported kinds, then writes the given ones.
    ImportCatalog {
        tenant: String,
        entities: BTreeMap<EntityKind, Vec<Value>>,
    },
    /// Writes a user's profile (Coopr's `/profile`, a free-form object), or deletes it (`None`).
    PutProfile {
        tenant: String,
        user: String,
        profile: Option<Value>,
    },
    /// Uploads a new version of a plugin resource (inactive), its bytes stored once by their
    /// SHA-256 (see [`crate::resources`] for the limits).
    PutResource {
        tenant: String,
        resource: ResourcePath,
        bytes: Blob,
    },
    /// Slates a version for the next sync (and unslates the resource's other versions).
    StageResource {
        tenant: String,
        resource: ResourcePath,
        version: u32,
    },
    /// Unslates a version: it is out of use after the next sync.
    RecallResource {
        tenant: String,
        resource: ResourcePath,
        version: u32,
    },
    /// Every resource version of the tenant becomes live exactly when it is slated.
    SyncResources {
        tenant: String,
    },
    /// Deletes an inactive version of a resource, or all its versions (`None`; all inactive).
    DeleteResource {
        tenant: String,
        resource: ResourcePath,
        version: Option<u32>,
    },

    // ---- cluster shards
    CreateCluster {
        shard: ShardId,
        spec: Box<ClusterSpec>,
    },
    /// Starts an operation on an existing cluster (delete, configure, service actions).
    StartOperation {
        cluster: ClusterId,
        action: ClusterAction,
        #[serde(default)]
        services: Vec<String>,
        #[serde(default)]
        config: Option<JsonMap>,
    },
    /// Adds services; `placement` says which node gets which new services.
    AddServices {
        cluster: ClusterId,
        services: Vec<String>,
        placement: BTreeMap<NodeId, Vec<String>>,
    },
    SetExpireTime {
        cluster: ClusterId,
        expire_time: u64,
    },
    SyncTemplate {
        cluster: ClusterId,
        /// Boxed: a template is large and commands are moved around a lot (same JSON).
        template: Box<ClusterTemplate>,
    },
    Abort {
        cluster: ClusterId,
    },
    Pause {
        cluster: ClusterId,
    },
    Resume {
        cluster: ClusterId,
    },

    // ---- task queue (DC-local state)
    TakeTask {
        provisioner_id: String,
        worker_id: String,
        tenant_id: Option<String>,
        timeout_ms: u64,
        /// With several DCs: the shards this DC's lease lets it run tasks of (owned, writable
        /// or frozen by a handover); tasks of other shards are not handed out (a DC that just
        /// lost a shard, and has not demoted it yet, must not start its tasks). `None`: all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shards: Option<std::collections::BTreeSet<ShardId>>,
    },
    FinishTask(Box<TaskResult>),
    /// Times out every in-progress task whose deadline has passed.
    ExpireTasks,
    /// Moves finished jobs out of memory into the job archive (see
    /// [`crate::machine::retire`]), keeping their summaries; at most
    /// [`crate::machine::retire::MAX_RETIRE_BATCH`] per entry.
    RetireJobs {
        jobs: Vec<coopr_types::JobId>,
    },
    /// A provisioner stopped heartbeating: its in-progress tasks count as failed attempts.
    ReleaseProvisioner {
        id: String,
    },
    RegisterProvisioner {
        info: ProvisionerInfo,
    },
    UnregisterProvisioner {
        id: String,
    },

    // ---- replication (DESIGN section 4; see `crate::replication`)
    /// Drops a shard's outbox records through `through_seq`: every replica acknowledged them.
    TrimOutbox {
        shard: ShardId,
        through_seq: u64,
    },
    /// Applies a batch of another DC's records to the local replica of `shard` and moves its
    /// watermark, in one entry: all or nothing, exactly once.
    ApplyReplicationBatch {
        from_dc: String,
        shard: ShardId,
        records: Vec<Record>,
        /// When the batch starts the owner's epoch (its first record is seq 1 of an epoch after
        /// the replica's): the position that epoch started after. The replica takes the batch
        /// (and `from_dc` as its owner) only if its watermark is exactly there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch_start: Option<Position>,
    },

    // ---- ownership changes (graceful handover; see `crate::replication`)
    /// The owner stops writing `shard` for handover number `handover`: fenced writes to it are
    /// refused from here on. Refused while an operation of the shard is running.
    FreezeShard {
        shard: ShardId,
        handover: u64,
    },
    /// The handover that froze `shard` was aborted (by an admin, or by the placement leader
    /// when it ran out of time): the owner writes it again. Without this, an owner whose
    /// handover was aborted after it froze would refuse writes to the shard for good.
    UnfreezeShard {
        shard: ShardId,
        handover: u64,
    },
    /// The replica copy of `shard`, complete through `after` (the old owner's final position),
    /// becomes the shard this DC owns, writing `epoch` from seq 1.
    AdoptShard {
        shard: ShardId,
        epoch: u64,
        after: Position,
    },
    /// The shard this DC owned becomes a replica copy of `owner_dc`'s, at the position of the
    /// last record this DC wrote.
    ReleaseShard {
        shard: ShardId,
        owner_dc: String,
    },

    // ---- failover (see `crate::ownership`)
    /// This DC is asked to take `shard` over from `owner_dc` (takeover number `takeover`): its
    /// copy applies nothing more of the old epoch, so it ends exactly at its watermark, which
    /// it reports as the takeover point. Creates an empty copy if it has none.
    SealReplica {
        shard: ShardId,
        owner_dc: String,
        takeover: u64,
    },
    /// The takeover was withdrawn (the owner came back in time): the copy follows its owner
    /// again.
    UnsealReplica {
        shard: ShardId,
    },
    /// The shard this DC wrote now belongs to `owner_dc`, whose epoch started after
    /// `keep_through`: what this DC wrote after that point was never replicated and goes to the
    /// lost-operations report; running jobs of the shard stop here (the new owner resumes
    /// them); the copy becomes a replica at `keep_through` when nothing was lost, else it waits
    /// for a snapshot of the new owner's shard.
    DemoteShard {
        shard: ShardId,
        owner_dc: String,
        keep_through: Position,
    },
    /// Replaces this DC's copy of a shard it does not write with a snapshot of the owner's:
    /// the copy then continues from the snapshot's position.
    SeedReplica {
        seed: Box<ReplicaShard>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub provisioner_id: String,
    pub worker_id: String,
    pub task: TaskId,
    pub status: i64,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub ipaddresses: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub result: JsonMap,
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// A no-op that Coopr answers with 200 (e.g. deleting a terminated cluster).
    Unchanged,
    ClusterCreated {
        id: ClusterId,
    },
    JobStarted {
        job: coopr_types::JobId,
    },
    EntityVersion {
        version: u32,
    },
    TaskTaken {
        task: Option<TaskId>,
    },
    TasksExpired {
        count: usize,
    },
}

pub type CommandResult = Result<Outcome, CommandError>;

impl Command {
    /// The shard whose data the command changes (cluster commands), if any.
    pub fn cluster(&self) -> Option<ClusterId> {
        match self {
            Command::StartOperation { cluster, .. }
            | Command::AddServices { cluster, .. }
            | Command::SetExpireTime { cluster, .. }
            | Command::SyncTemplate { cluster, .. }
            | Command::Abort { cluster }
            | Command::Pause { cluster }
            | Command::Resume { cluster } => Some(*cluster),
            Command::FinishTask(result) => Some(result.task.job.cluster),
            _ => None,
        }
    }
}
