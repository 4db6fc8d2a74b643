//! Jobs (one cluster operation) and their tasks. A job's `stages` run in order; a stage holds at
//! most one task per node.

use serde::{Deserialize, Serialize};

use crate::catalog::JsonMap;
use crate::ids::{ClusterId, JobId, NodeId, TaskId};
use crate::status::{ClusterAction, JobStatus, TaskName, TaskStatus};
use crate::ShortStr;

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
    /// Names the job (`id.job`) and the cluster (`id.job.cluster`) too.
    pub id: TaskId,
    pub node_id: NodeId,
    pub task_name: TaskName,
    /// Empty for node-level tasks. Inline up to 22 bytes, as service names are.
    pub service: ShortStr,
    pub status: TaskStatus,
    /// Attempts started so far (a task is tried at most [`Task::MAX_ATTEMPTS`] times).
    pub attempts: u32,
    pub submit_time: u64,
    pub status_time: u64,
    /// Boxed: most tasks held in memory are finished and have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Box<TaskOwner>>,
}

impl Task {
    pub fn job_id(&self) -> JobId {
        self.id.job
    }

    pub fn cluster_id(&self) -> ClusterId {
        self.id.job.cluster
    }

    pub const MAX_ATTEMPTS: u32 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots written before a task's job and cluster were read from its ID still load (the
    /// fields they carried are ignored), and a task round-trips without them.
    #[test]
    fn a_task_of_an_older_snapshot_still_loads() {
        let old = serde_json::json!({
            "id": "00000007-002-003", "jobId": "00000007-002", "clusterId": "00000007",
            "nodeId": "n1", "taskName": "INSTALL", "service": "base", "status": "complete",
            "attempts": 1, "submitTime": 5, "statusTime": 6,
            "owner": {"provisionerId": "p", "workerId": "w", "deadlineMs": 9}
        });
        let task: Task = serde_json::from_value(old).expect("an older task");
        assert_eq!(task.id.to_string(), "00000007-002-003");
        assert_eq!(task.job_id().to_string(), "00000007-002");
        assert_eq!(task.cluster_id().to_string(), "00000007");
        assert_eq!(task.owner.as_ref().map(|o| o.worker_id.as_str()), Some("w"));
        let now = serde_json::to_value(&task).expect("JSON");
        assert!(now.get("jobId").is_none() && now.get("clusterId").is_none());
        assert_eq!(
            serde_json::from_value::<Task>(now).expect("round trip"),
            task
        );
    }
}
