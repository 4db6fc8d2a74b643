//! Tenants, clusters and nodes, in Coopr's shapes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{ClusterTemplate, JsonMap, Provider};
use crate::ids::{ClusterId, JobId, NodeId, TaskId};
use crate::status::{ClusterStatus, TaskName, TaskStatus};
use crate::ShortStr;

/// Coopr's "unset quota".
pub const UNLIMITED: u32 = 2_147_483_647;

fn unlimited() -> u32 {
    UNLIMITED
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// Internal ID (UUID-shaped), used by the provisioner API.
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub workers: u32,
    #[serde(default = "unlimited")]
    pub max_clusters: u32,
    #[serde(default = "unlimited")]
    pub max_nodes: u32,
}

/// An API key, stored only as its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub tenant: String,
    /// The one user of the tenant the key authenticates (keys are created bound to a user
    /// unless asked otherwise). `None`: any user of the tenant *except* `admin`, the tenant
    /// admin (a key for a tenant's shared tooling); keys stored by older versions without a
    /// user are read the same way, so they never grant admin rights.
    pub user: Option<String>,
    pub key_sha256: String,
}

/// Hex SHA-256 of an API key, the only form in which keys are stored.
pub fn hash_api_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub user_id: ShortStr,
    /// The tenant's name.
    pub tenant_id: ShortStr,
    /// The internal ID ([`Tenant::id`]) of the tenant the cluster was created for: a tenant
    /// deleted and created again under the same name is another incarnation and never sees
    /// the older one's clusters. Empty in records from before incarnations (they belong to
    /// whichever tenant has the name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant_incarnation: String,
}

impl Account {
    /// Whether the cluster belongs to this incarnation of the tenant.
    pub fn belongs_to(&self, tenant: &Tenant) -> bool {
        self.tenant_id == tenant.name
            && (self.tenant_incarnation.is_empty() || self.tenant_incarnation == tenant.id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub id: ClusterId,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub account: Account,
    pub create_time: u64,
    /// 0 means no lease.
    #[serde(default)]
    pub expire_time: u64,
    /// Shared between the clusters built with equal providers (the state interns it, as the
    /// template); equal ones are decoded once under a [`crate::shared_json::Memo`].
    #[serde(deserialize_with = "crate::shared_json::deserialize")]
    pub provider: Arc<Provider>,
    /// Shared between the clusters built from equal templates (the state interns it: a copy
    /// per cluster was a fifth of a one-machine cluster's memory). The JSON is the template's;
    /// equal ones are decoded once under a [`crate::shared_json::Memo`].
    #[serde(deserialize_with = "crate::shared_json::deserialize")]
    pub cluster_template: Arc<ClusterTemplate>,
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
    #[serde(default)]
    pub config: JsonMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeProperties {
    #[serde(default)]
    pub hostname: ShortStr,
    #[serde(default)]
    pub ipaddresses: BTreeMap<String, String>,
    pub nodenum: u32,
    #[serde(default)]
    pub hardwaretype: ShortStr,
    #[serde(default)]
    pub imagetype: ShortStr,
    #[serde(default)]
    pub flavor: ShortStr,
    #[serde(default)]
    pub image: ShortStr,
    #[serde(default)]
    pub sshuser: ShortStr,
    #[serde(default)]
    pub services: Vec<ShortStr>,
    #[serde(default)]
    pub automators: Vec<ShortStr>,
}

/// One entry of a node's action history (capped at [`Node::MAX_ACTIONS`]). Every node of
/// every cluster keeps one per task it ran, so its service's name is kept inline
/// ([`crate::ShortStr`]: no allocation) and its output boxed (16 bytes inline, not 24, and
/// never any spare capacity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAction {
    pub task_id: TaskId,
    pub service: ShortStr,
    pub action: TaskName,
    pub submit_time: u64,
    pub status_time: u64,
    pub status: TaskStatus,
    #[serde(default)]
    pub stdout: Box<str>,
    #[serde(default)]
    pub stderr: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: NodeId,
    pub cluster_id: ClusterId,
    pub properties: NodeProperties,
    #[serde(default)]
    pub actions: Vec<NodeAction>,
    #[serde(default)]
    pub provisioner_results: serde_json::Map<String, Value>,
}

impl Node {
    /// The action history keeps the most recent entries only.
    pub const MAX_ACTIONS: usize = 64;

    /// Appends to the action history, dropping the oldest entry beyond the cap.
    pub fn push_action(&mut self, action: NodeAction) {
        self.actions.push(action);
        if self.actions.len() > Self::MAX_ACTIONS {
            let excess = self.actions.len() - Self::MAX_ACTIONS;
            self.actions.drain(..excess);
        }
    }
}
