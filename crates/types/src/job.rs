//! Jobs (one cluster operation) and their tasks. A job's `stages` run in order; a stage holds at
//! most one task per node.

use serde::{Deserialize, Serialize};

use crate::catalog::JsonMap;
use crate::ids::{ClusterId, JobId, NodeId, TaskId};
use crate::status::{ClusterAction, JobStatus, TaskName, TaskStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    pub cluster_id: ClusterId,
    pub action: ClusterAction,
    pub status: JobStatus,
    /// Task IDs per stage, in execution order.
    pub stages: Vec<Vec<TaskId>>,
    pub current_stage: usize,
    pub create_time: u64,
    pub status_time: u64,
    /// Services the operation targets (for service operations; empty = all).
    #[serde(default)]
    pub services: Vec<String>,
    /// New configuration (for reconfigure jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<JsonMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Next task sequence number to allocate in this job.
    pub next_task_seq: u32,
}

/// Who holds an IN_PROGRESS task, and until when (ms); past the deadline the task times out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOwner {
    pub provisioner_id: String,
    pub worker_id: String,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: TaskId,
    pub job_id: JobId,
    pub cluster_id: ClusterId,
    pub node_id: NodeId,
    pub task_name: TaskName,
    /// Empty for node-level tasks.
    pub service: String,
    pub status: TaskStatus,
    /// Attempts started so far (a task is tried at most [`Task::MAX_ATTEMPTS`] times).
    pub attempts: u32,
    pub submit_time: u64,
    pub status_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<TaskOwner>,
}

impl Task {
    pub const MAX_ATTEMPTS: u32 = 3;
}
