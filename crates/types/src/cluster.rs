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
/// ([`crate::ShortStr`]: no allocation) and its output, which most tasks leave empty, behind
/// one pointer that is null when there is none (8 bytes inline, not two boxes' 32). The JSON
/// carries `stdout` and `stderr` as before.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "NodeActionJson")]
pub struct NodeAction {
    pub task_id: TaskId,
    pub service: ShortStr,
    pub action: TaskName,
    pub submit_time: u64,
    pub status_time: u64,
    pub status: TaskStatus,
    output: Option<Box<ActionOutput>>,
}

#[derive(Debug, Clone, PartialEq)]
struct ActionOutput {
    stdout: Box<str>,
    stderr: Box<str>,
}

impl NodeAction {
    /// An action started at `now`, with no output yet.
    pub fn started(task_id: TaskId, service: ShortStr, action: TaskName, now: u64) -> NodeAction {
        NodeAction {
            task_id,
            service,
            action,
            submit_time: now,
            status_time: now,
            status: TaskStatus::InProgress,
            output: None,
        }
    }

    pub fn stdout(&self) -> &str {
        self.output.as_ref().map_or("", |o| &o.stdout)
    }

    pub fn stderr(&self) -> &str {
        self.output.as_ref().map_or("", |o| &o.stderr)
    }

    /// Sets what the task printed (nothing held when both are empty).
    pub fn set_output(&mut self, stdout: &str, stderr: &str) {
        self.output = (!stdout.is_empty() || !stderr.is_empty()).then(|| {
            Box::new(ActionOutput {
                stdout: stdout.into(),
                stderr: stderr.into(),
            })
        });
    }
}

/// A [`NodeAction`] as its JSON reads (and as it was held before its output moved behind one
/// pointer).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeActionJson {
    task_id: TaskId,
    service: ShortStr,
    action: TaskName,
    submit_time: u64,
    status_time: u64,
    status: TaskStatus,
    #[serde(default)]
    stdout: Box<str>,
    #[serde(default)]
    stderr: Box<str>,
}

impl From<NodeActionJson> for NodeAction {
    fn from(json: NodeActionJson) -> NodeAction {
        let output = (!json.stdout.is_empty() || !json.stderr.is_empty()).then(|| {
            Box::new(ActionOutput {
                stdout: json.stdout,
                stderr: json.stderr,
            })
        });
        NodeAction {
            task_id: json.task_id,
            service: json.service,
            action: json.action,
            submit_time: json.submit_time,
            status_time: json.status_time,
            status: json.status,
            output,
        }
    }
}

impl Serialize for NodeAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("NodeAction", 8)?;
        out.serialize_field("taskId", &self.task_id)?;
        out.serialize_field("service", &self.service)?;
        out.serialize_field("action", &self.action)?;
        out.serialize_field("submitTime", &self.submit_time)?;
        out.serialize_field("statusTime", &self.status_time)?;
        out.serialize_field("status", &self.status)?;
        out.serialize_field("stdout", self.stdout())?;
        out.serialize_field("stderr", self.stderr())?;
        out.end()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A node action's output sits behind one pointer, null when empty, and its JSON is the
    /// same as when it was two fields: empty strings when there is no output, and an action
    /// written without them still reads.
    #[test]
    fn a_node_actions_output_reads_and_writes_as_two_fields() {
        let task_id: TaskId = "00000007-002-003".parse().unwrap();
        let mut action = NodeAction::started(task_id, "base".into(), TaskName::Install, 5);
        let json = serde_json::to_value(&action).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "taskId": "00000007-002-003", "service": "base", "action": "INSTALL",
                "submitTime": 5, "statusTime": 5, "status": "in_progress",
                "stdout": "", "stderr": ""
            })
        );
        assert_eq!(serde_json::from_value::<NodeAction>(json).unwrap(), action);
        action.set_output("out", "");
        assert_eq!((action.stdout(), action.stderr()), ("out", ""));
        let back: NodeAction =
            serde_json::from_str(&serde_json::to_string(&action).unwrap()).unwrap();
        assert_eq!(back, action);
        action.set_output("", "");
        assert!(action.output.is_none());
        let older = serde_json::json!({
            "taskId": "00000007-002-003", "service": "base", "action": "INSTALL",
            "submitTime": 5, "statusTime": 6, "status": "complete"
        });
        let read: NodeAction = serde_json::from_value(older).unwrap();
        assert_eq!(
            (read.stdout(), read.stderr(), read.status_time),
            ("", "", 6)
        );
        assert_eq!(std::mem::size_of::<NodeAction>(), 80);
    }
}
