//! The job state machine: one cluster operation, its tasks, and how they advance.
//!
//! ```text
//!             take            finish(ok)            (stage all done)
//!  NOT_SUBMITTED ──► IN_PROGRESS ──────► COMPLETE ──────────────────► next stage / job COMPLETE
//!        ▲                │
//!        │ attempts < 3   │ finish(failed) or deadline passed (expire)
//!        └────────────────┤
//!                         │ attempts == 3  ──► task FAILED, job FAILED
//!                         │ CONFIRM        ──► task DROPPED, DELETE/CREATE/CONFIRM inserted
//! ```
//!
//! Only tasks of the current stage of a RUNNING job are handed out. The caller owns time: it
//! passes `now` (ms) into every call, computes each task's deadline when it hands the task out,
//! and uses [`JobRun::next_deadline`] to know when to call [`JobRun::expire`].
//!
//! # Retries and attempt counting
//!
//! `Task::attempts` counts attempts started (it grows on [`JobRun::take`]). A failed attempt (a
//! failed finish, or a timeout) puts the task back to NOT_SUBMITTED while `attempts <
//! Task::MAX_ATTEMPTS`; the third failed attempt fails the task and the job.
//!
//! A failed CONFIRM means the machine may be broken, so instead of confirming it again the job
//! replaces it: the CONFIRM task is DROPPED and three single-task stages for that node are
//! inserted right after the current stage: DELETE, CREATE, CONFIRM (nodes whose CONFIRM fails in
//! the same stage share these three stages). The new CONFIRM task *inherits* the attempts of the
//! one it replaces, so `attempts` on a CONFIRM counts the node's confirm attempts across
//! replacements and a node is confirmed at most [`Task::MAX_ATTEMPTS`] times in all (at most two
//! replacements); the CONFIRM whose attempt is the third fails the job. The inserted DELETE and
//! CREATE are ordinary tasks with their own three attempts.
//!
//! # Finished jobs
//!
//! A COMPLETE or FAILED job never hands out a task again. When a job fails (a task out of
//! attempts, or an abort), its NOT_SUBMITTED tasks are DROPPED, but IN_PROGRESS tasks keep their
//! owner: the worker is still running them, and a late finish is accepted (the task becomes
//! COMPLETE or FAILED, nothing else changes) so that, say, a CREATE's provider id still reaches
//! the node and the machine can be deleted later. Such a task that times out is DROPPED.

use coopr_types::{
    ClusterAction, ClusterStatus, Job, JobId, JobStatus, JsonMap, NodeId, Stages, Task, TaskId,
    TaskName, TaskOwner, TaskStatus, VecMap,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::planner::PlannedTask;

/// Why a job operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobError {
    /// Not retryable; HTTP 404.
    #[error("task {0} is not part of this job")]
    UnknownTask(TaskId),
    /// The worker does not own the task (it timed out, was finished, or was never taken by it).
    /// Coopr answers 417; the worker drops its result.
    #[error("task {task} is not owned by worker {worker_id} of provisioner {provisioner_id}")]
    NotOwner {
        task: TaskId,
        provisioner_id: String,
        worker_id: String,
    },
    /// The task cannot be taken now (another stage, or not NOT_SUBMITTED). HTTP 409.
    #[error("task {task} cannot be taken: it is {status} in stage {stage}, the job is at stage {current_stage}")]
    NotReady {
        task: TaskId,
        status: TaskStatus,
        stage: usize,
        current_stage: usize,
    },
    /// The job is not RUNNING (paused or finished). HTTP 409.
    #[error("job {job} is {status}")]
    JobNotRunning { job: JobId, status: JobStatus },
    /// Only a running `cluster_create` job can be aborted. HTTP 409.
    #[error("job {job} ({action}) cannot be aborted")]
    AbortNotAllowed { job: JobId, action: ClusterAction },
}

impl JobError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::UnknownTask(_) => "unknown_task",
            JobError::NotOwner { .. } => "not_owner",
            JobError::NotReady { .. } => "task_not_ready",
            JobError::JobNotRunning { .. } => "job_not_running",
            JobError::AbortNotAllowed { .. } => "abort_not_allowed",
        }
    }

    /// The HTTP status Coopr's API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            JobError::UnknownTask(_) => 404,
            JobError::NotOwner { .. } => 417,
            JobError::NotReady { .. }
            | JobError::JobNotRunning { .. }
            | JobError::AbortNotAllowed { .. } => 409,
        }
    }
}

/// What happened as a result of a call, for the caller to apply (node action history, cluster
/// status, metrics). Effects are listed in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEffect {
    /// The task's owner missed its deadline; a failed attempt follows.
    TaskTimedOut { task: TaskId },
    /// A failed attempt; the task is NOT_SUBMITTED again.
    TaskRetried { task: TaskId, attempts: u32 },
    /// A failed CONFIRM: the task is DROPPED and the node is to be replaced by these new tasks,
    /// each in its own stage right after the current one.
    NodeReplaced {
        failed: TaskId,
        node: NodeId,
        delete: TaskId,
        create: TaskId,
        confirm: TaskId,
    },
    /// The task is out of attempts and FAILED (the job fails with it).
    TaskFailed { task: TaskId },
    /// A task of a finished job was given up (timed out after the job finished).
    TaskDropped { task: TaskId },
    /// The job moved on to this stage.
    StageAdvanced { stage: usize },
    /// The job is finished; the cluster is to take this status.
    JobFinished {
        status: JobStatus,
        cluster_status: ClusterStatus,
    },
}

/// The cluster status an operation leaves behind (Coopr's rules).
pub fn cluster_status_after(action: ClusterAction, success: bool) -> ClusterStatus {
    match (action, success) {
        (ClusterAction::ClusterDelete, true) => ClusterStatus::Terminated,
        (_, true) => ClusterStatus::Active,
        (ClusterAction::ClusterCreate, false) => ClusterStatus::Incomplete,
        (ClusterAction::SolveLayout, false) => ClusterStatus::Terminated,
        (_, false) => ClusterStatus::Inconsistent,
    }
}

/// A job with its tasks. Invariants: every stage is non-empty; every task ID in a stage is a key
/// of `tasks`; `job.current_stage` indexes a stage unless there are none (it stays on the last
/// stage once the job completes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobRun {
    pub job: Job,
    pub tasks: VecMap<TaskId, Task>,
}

impl JobRun {
    /// Creates a job from a plan. The job is RUNNING with every task NOT_SUBMITTED, or COMPLETE at
    /// once when the plan has no tasks. Task IDs are allocated `<job>-001`, `<job>-002`, ... in
    /// plan order. Empty stages are skipped.
    ///
    /// # Panics
    /// If a stage holds two tasks for one node (plans from [`crate::plan`] never do).
    pub fn new(
        id: JobId,
        action: ClusterAction,
        stages: Vec<Vec<PlannedTask>>,
        services: Vec<String>,
        config: Option<JsonMap>,
        now: u64,
    ) -> JobRun {
        let mut run = JobRun {
            job: Job {
                id,
                cluster_id: id.cluster,
                action,
                status: JobStatus::Running,
                stages: Stages::new(),
                current_stage: 0,
                create_time: now,
                status_time: now,
                services,
                config,
                message: None,
                next_task_seq: 1,
            },
            tasks: VecMap::new(),
        };
        for stage in stages.into_iter().filter(|s| !s.is_empty()) {
            // The planner's rule; node replacement after a failed CONFIRM relies on it.
            let nodes: std::collections::BTreeSet<&NodeId> =
                stage.iter().map(|t| &t.node_id).collect();
            assert_eq!(
                nodes.len(),
                stage.len(),
                "a stage holds two tasks for one node"
            );
            let ids: Vec<TaskId> = stage
                .into_iter()
                .map(|planned| run.add_task(planned, 0, now))
                .collect();
            run.job.stages.push(ids);
        }
        if run.job.stages.is_empty() {
            run.job.status = JobStatus::Complete;
        }
        run
    }

    fn add_task(&mut self, planned: PlannedTask, attempts: u32, now: u64) -> TaskId {
        let id = TaskId {
            job: self.job.id,
            seq: self.job.next_task_seq,
        };
        self.job.next_task_seq += 1;
        let task = Task {
            id,
            node_id: planned.node_id,
            task_name: planned.task_name,
            service: planned.service.into(),
            status: TaskStatus::NotSubmitted,
            attempts,
            submit_time: now,
            status_time: now,
            owner: None,
        };
        let previous = self.tasks.insert(id, task);
        assert!(previous.is_none(), "task id {id} allocated twice");
        id
    }

    /// Tasks that can be handed out now: NOT_SUBMITTED tasks of the current stage of a RUNNING job.
    pub fn ready_tasks(&self) -> Vec<TaskId> {
        if self.job.status != JobStatus::Running {
            return Vec::new();
        }
        self.job
            .stages
            .get(self.job.current_stage)
            .into_iter()
            .flatten()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.status == TaskStatus::NotSubmitted)
            })
            .copied()
            .collect()
    }

    /// Hands a ready task to a worker until `owner.deadline_ms`.
    pub fn take(&mut self, task: TaskId, owner: TaskOwner, now: u64) -> Result<(), JobError> {
        if !self.tasks.contains_key(&task) {
            return Err(JobError::UnknownTask(task));
        }
        if self.job.status != JobStatus::Running {
            return Err(JobError::JobNotRunning {
                job: self.job.id,
                status: self.job.status,
            });
        }
        let stage = self.stage_of(task);
        let current_stage = self.job.current_stage;
        let t = self.task_mut(task);
        if stage != current_stage || t.status != TaskStatus::NotSubmitted {
            return Err(JobError::NotReady {
                task,
                status: t.status,
                stage,
                current_stage,
            });
        }
        t.status = TaskStatus::InProgress;
        t.attempts += 1;
        t.owner = Some(Box::new(owner));
        t.submit_time = now;
        t.status_time = now;
        Ok(())
    }

    /// Records a worker's result for a task it owns. `worker` is `(provisioner_id, worker_id)`.
    pub fn finish(
        &mut self,
        task: TaskId,
        worker: (&str, &str),
        success: bool,
        now: u64,
    ) -> Result<Vec<JobEffect>, JobError> {
        let (provisioner_id, worker_id) = worker;
        let t = self
            .tasks
            .get_mut(&task)
            .ok_or(JobError::UnknownTask(task))?;
        let owned = t.status == TaskStatus::InProgress
            && t.owner
                .as_ref()
                .is_some_and(|o| o.provisioner_id == provisioner_id && o.worker_id == worker_id);
        if !owned {
            return Err(JobError::NotOwner {
                task,
                provisioner_id: provisioner_id.to_string(),
                worker_id: worker_id.to_string(),
            });
        }
        t.owner = None;
        t.status_time = now;
        if self.job.status.is_finished() {
            // A late result for a finished job: record it on the task, change nothing else.
            t.status = if success {
                TaskStatus::Complete
            } else {
                TaskStatus::Failed
            };
            return Ok(Vec::new());
        }
        if success {
            t.status = TaskStatus::Complete;
            let mut effects = Vec::new();
            self.advance(now, &mut effects);
            Ok(effects)
        } else {
            let mut effects = Vec::new();
            self.failed_attempt(task, now, true, &mut effects);
            Ok(effects)
        }
    }

    /// Times out IN_PROGRESS tasks whose deadline is at or before `now`: each counts as a failed
    /// attempt (retry rules apply). Tasks of a finished job are DROPPED instead.
    pub fn expire(&mut self, now: u64) -> Vec<JobEffect> {
        let expired: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                t.status == TaskStatus::InProgress
                    && t.owner.as_ref().is_some_and(|o| o.deadline_ms <= now)
            })
            .map(|t| t.id)
            .collect();
        let mut effects = Vec::new();
        for task in expired {
            let finished = self.job.status.is_finished();
            let t = self.task_mut(task);
            t.owner = None;
            t.status_time = now;
            if finished {
                t.status = TaskStatus::Dropped;
                effects.push(JobEffect::TaskDropped { task });
            } else {
                effects.push(JobEffect::TaskTimedOut { task });
                // A timeout says the worker went away, not that the machine is bad: the task is
                // retried as it is, never replaced (CONFIRM included).
                self.failed_attempt(task, now, false, &mut effects);
            }
        }
        effects
    }

    /// Aborts a running (or paused) `cluster_create` job: NOT_SUBMITTED tasks are DROPPED and the
    /// job FAILS (IN_PROGRESS tasks keep running, see the module doc). A finished job is left
    /// alone (no effects); any other running job cannot be aborted.
    pub fn abort(&mut self, now: u64) -> Result<Vec<JobEffect>, JobError> {
        if self.job.status.is_finished() {
            return Ok(Vec::new());
        }
        if self.job.action != ClusterAction::ClusterCreate {
            return Err(JobError::AbortNotAllowed {
                job: self.job.id,
                action: self.job.action,
            });
        }
        self.job.message = Some("aborted".to_string());
        Ok(vec![self.fail_job(now)])
    }

    /// RUNNING → PAUSED (no tasks are handed out; tasks in progress may still finish). Returns
    /// whether anything changed.
    pub fn pause(&mut self, now: u64) -> bool {
        self.set_status_if(JobStatus::Running, JobStatus::Paused, now)
    }

    /// PAUSED → RUNNING. Returns whether anything changed.
    pub fn resume(&mut self, now: u64) -> bool {
        self.set_status_if(JobStatus::Paused, JobStatus::Running, now)
    }

    /// `(stepstotal, stepscompleted)` for `/status`: tasks of the job and COMPLETE ones. DROPPED
    /// tasks (a replaced CONFIRM, tasks of an aborted job) are not counted, as they never run, so
    /// a completed job shows all its steps completed.
    pub fn steps(&self) -> (usize, usize) {
        let counted = self
            .tasks
            .values()
            .filter(|t| t.status != TaskStatus::Dropped);
        let (total, completed) = counted.fold((0, 0), |(total, done), t| {
            (
                total + 1,
                done + usize::from(t.status == TaskStatus::Complete),
            )
        });
        (total, completed)
    }

    /// The earliest deadline of an IN_PROGRESS task, for the caller's timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::InProgress)
            .filter_map(|t| t.owner.as_ref().map(|o| o.deadline_ms))
            .min()
    }

    fn set_status_if(&mut self, from: JobStatus, to: JobStatus, now: u64) -> bool {
        if self.job.status != from {
            return false;
        }
        self.job.status = to;
        self.job.status_time = now;
        true
    }

    fn task_mut(&mut self, task: TaskId) -> &mut Task {
        match self.tasks.get_mut(&task) {
            Some(t) => t,
            None => panic!("task {task} of job {} missing from its job", self.job.id),
        }
    }

    fn stage_of(&self, task: TaskId) -> usize {
        match self
            .job
            .stages
            .iter()
            .position(|stage| stage.contains(&task))
        {
            Some(stage) => stage,
            None => panic!("task {task} of job {} is in no stage", self.job.id),
        }
    }

    /// Moves past every finished stage; completes the job after the last one.
    fn advance(&mut self, now: u64, effects: &mut Vec<JobEffect>) {
        loop {
            let stage = &self.job.stages[self.job.current_stage];
            let done = stage.iter().all(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| matches!(t.status, TaskStatus::Complete | TaskStatus::Dropped))
            });
            if !done {
                return;
            }
            if self.job.current_stage + 1 == self.job.stages.len() {
                self.job.status = JobStatus::Complete;
                self.job.status_time = now;
                effects.push(JobEffect::JobFinished {
                    status: JobStatus::Complete,
                    cluster_status: cluster_status_after(self.job.action, true),
                });
                return;
            }
            self.job.current_stage += 1;
            effects.push(JobEffect::StageAdvanced {
                stage: self.job.current_stage,
            });
        }
    }

    /// Applies the retry rules to a task whose attempt just failed (status still IN_PROGRESS).
    /// `reported` is true when the plugin reported the failure (a failed CONFIRM then replaces
    /// the machine), false when the attempt timed out.
    fn failed_attempt(
        &mut self,
        task: TaskId,
        now: u64,
        reported: bool,
        effects: &mut Vec<JobEffect>,
    ) {
        let t = self.task_mut(task);
        let attempts = t.attempts;
        if attempts >= Task::MAX_ATTEMPTS {
            t.status = TaskStatus::Failed;
            let message = format!(
                "task {task} ({} {} on node {}) failed after {attempts} attempts",
                t.task_name, t.service, t.node_id
            );
            self.job.message = Some(message);
            effects.push(JobEffect::TaskFailed { task });
            effects.push(self.fail_job(now));
            return;
        }
        if reported && t.task_name == TaskName::Confirm {
            t.status = TaskStatus::Dropped;
            let node = t.node_id.clone();
            let (delete, create, confirm) = self.insert_replacement(node.clone(), attempts, now);
            effects.push(JobEffect::NodeReplaced {
                failed: task,
                node,
                delete,
                create,
                confirm,
            });
            // The dropped CONFIRM may have been the last open task of its stage.
            self.advance(now, effects);
        } else {
            t.status = TaskStatus::NotSubmitted;
            effects.push(JobEffect::TaskRetried { task, attempts });
        }
    }

    /// Adds DELETE, CREATE, CONFIRM for `node` in three stages right after the current one,
    /// joining a replacement block already there (from another node's failed CONFIRM in the
    /// same stage). The new CONFIRM carries `confirm_attempts`.
    fn insert_replacement(
        &mut self,
        node: NodeId,
        confirm_attempts: u32,
        now: u64,
    ) -> (TaskId, TaskId, TaskId) {
        let names = [TaskName::Delete, TaskName::Create, TaskName::Confirm];
        let after = self.job.current_stage + 1;
        let block_present = names.iter().enumerate().all(|(i, name)| {
            self.job.stages.get(after + i).is_some_and(|stage| {
                stage.iter().all(|id| {
                    self.tasks
                        .get(id)
                        .is_some_and(|t| t.task_name == *name && t.node_id != node)
                })
            })
        });
        if !block_present {
            for i in 0..names.len() {
                self.job.stages.insert_empty(after + i);
            }
        }
        let mut ids = [TaskId {
            job: self.job.id,
            seq: 0,
        }; 3];
        for (i, name) in names.into_iter().enumerate() {
            let attempts = if name == TaskName::Confirm {
                confirm_attempts
            } else {
                0
            };
            let planned = PlannedTask {
                task_name: name,
                node_id: node.clone(),
                service: String::new(),
            };
            ids[i] = self.add_task(planned, attempts, now);
            self.job.stages.push_to(after + i, ids[i]);
        }
        (ids[0], ids[1], ids[2])
    }

    /// Fails the job: NOT_SUBMITTED tasks are DROPPED (IN_PROGRESS ones keep their owner).
    fn fail_job(&mut self, now: u64) -> JobEffect {
        for t in self
            .tasks
            .values_mut()
            .filter(|t| t.status == TaskStatus::NotSubmitted)
        {
            t.status = TaskStatus::Dropped;
            t.status_time = now;
        }
        self.job.status = JobStatus::Failed;
        self.job.status_time = now;
        JobEffect::JobFinished {
            status: JobStatus::Failed,
            cluster_status: cluster_status_after(self.job.action, false),
        }
    }
}
