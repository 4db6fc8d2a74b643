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
    pub stages: Stages,
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

/// A job's task IDs per stage, in execution order: one vector of the IDs and one of where each
/// stage ends, not a vector per stage (a one-machine cluster's create has 17 stages of one task:
/// 17 allocations of their own, held as long as the job is). Serializes as an array of arrays.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Stages {
    ids: Vec<TaskId>,
    /// `ends[i]`: where stage `i` ends in `ids` (non-decreasing; a stage may be empty).
    ends: Vec<u32>,
}

impl Stages {
    pub fn new() -> Stages {
        Stages::default()
    }

    /// The number of stages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn start(&self, stage: usize) -> usize {
        stage
            .checked_sub(1)
            .map_or(0, |before| self.ends[before] as usize)
    }

    /// Stage `stage`'s task IDs, if there is one.
    pub fn get(&self, stage: usize) -> Option<&[TaskId]> {
        let end = *self.ends.get(stage)? as usize;
        Some(&self.ids[self.start(stage)..end])
    }

    /// The stages in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[TaskId]> + '_ {
        (0..self.len()).map(|stage| &self[stage])
    }

    /// Adds a stage after the last.
    pub fn push(&mut self, stage: impl IntoIterator<Item = TaskId>) {
        self.ids.extend(stage);
        self.ends.push(Self::end(self.ids.len()));
    }

    /// Inserts an empty stage before stage `at` (at the end if `at` is the number of stages).
    ///
    /// # Panics
    /// If `at` is past the end.
    pub fn insert_empty(&mut self, at: usize) {
        let start = Self::end(self.start(at));
        self.ends.insert(at, start);
    }

    /// Adds `id` to the end of stage `stage`.
    ///
    /// # Panics
    /// If there is no such stage.
    pub fn push_to(&mut self, stage: usize, id: TaskId) {
        let end = self.ends[stage] as usize;
        self.ids.insert(end, id);
        for later in &mut self.ends[stage..] {
            *later += 1;
        }
    }

    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    fn end(len: usize) -> u32 {
        // A job's tasks are bounded by its plan, far below 2^32.
        u32::try_from(len).unwrap_or(u32::MAX)
    }
}

impl std::ops::Index<usize> for Stages {
    type Output = [TaskId];

    fn index(&self, stage: usize) -> &[TaskId] {
        &self.ids[self.start(stage)..self.ends[stage] as usize]
    }
}

impl From<Vec<Vec<TaskId>>> for Stages {
    fn from(stages: Vec<Vec<TaskId>>) -> Stages {
        let mut out = Stages::new();
        for stage in stages {
            out.push(stage);
        }
        out
    }
}

impl PartialEq<Vec<Vec<TaskId>>> for Stages {
    fn eq(&self, other: &Vec<Vec<TaskId>>) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_slice())
    }
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Stages {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Stages {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut stages = Stages::from(Vec::<Vec<TaskId>>::deserialize(deserializer)?);
        stages.shrink_to_fit();
        Ok(stages)
    }
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
    fn tid(seq: u32) -> TaskId {
        TaskId {
            job: JobId {
                cluster: ClusterId(7),
                seq: 2,
            },
            seq,
        }
    }

    /// Stages hold what vectors of vectors would, through pushes, insertions of empty stages
    /// and additions to inner ones, and read and write the same JSON.
    #[test]
    fn stages_behave_and_serialize_like_vectors_of_vectors() {
        let mut stages = Stages::new();
        let mut model: Vec<Vec<TaskId>> = Vec::new();
        assert!(stages.is_empty() && stages.get(0).is_none());
        for stage in [vec![tid(1), tid(2)], vec![tid(3)], vec![], vec![tid(4)]] {
            stages.push(stage.clone());
            model.push(stage);
        }
        stages.insert_empty(1);
        model.insert(1, Vec::new());
        stages.insert_empty(5);
        model.insert(5, Vec::new());
        stages.push_to(1, tid(5));
        model[1].push(tid(5));
        stages.push_to(5, tid(6));
        model[5].push(tid(6));
        stages.push_to(0, tid(7));
        model[0].push(tid(7));
        assert_eq!(stages, model);
        assert_eq!(stages.len(), model.len());
        for (i, stage) in model.iter().enumerate() {
            assert_eq!(&stages[i], stage.as_slice());
            assert_eq!(stages.get(i), Some(stage.as_slice()));
        }
        assert_eq!(stages.get(model.len()), None);
        let json = serde_json::to_string(&stages).unwrap();
        assert_eq!(json, serde_json::to_string(&model).unwrap());
        let back: Stages = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stages);
        assert_eq!(Stages::from(model.clone()), stages);
        assert_eq!(format!("{stages:?}"), format!("{model:?}"));
    }

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
