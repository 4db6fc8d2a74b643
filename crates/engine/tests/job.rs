//! Job state machine tests: feed takes, finishes and clock ticks; assert the exact task states and
//! effects.

mod common;

use common::*;
use coopr_engine::{cluster_status_after, JobEffect, JobError, JobRun, PlannedTask};
use coopr_types::{ClusterAction, ClusterStatus, JobStatus, Task, TaskId, TaskName, TaskStatus};

fn tid(seq: u32) -> TaskId {
    TaskId { job: JOB, seq }
}

fn node_task(name: TaskName, n: &str) -> PlannedTask {
    PlannedTask {
        task_name: name,
        node_id: node(n),
        service: String::new(),
    }
}

/// A small create plan: tasks 001-002 CREATE, 003-004 CONFIRM, 005-006 BOOTSTRAP (n1, n2), 007
/// INSTALL base on n1.
fn create_job(now: u64) -> JobRun {
    let stages = vec![
        vec![
            node_task(TaskName::Create, "n1"),
            node_task(TaskName::Create, "n2"),
        ],
        vec![
            node_task(TaskName::Confirm, "n1"),
            node_task(TaskName::Confirm, "n2"),
        ],
        vec![
            node_task(TaskName::Bootstrap, "n1"),
            node_task(TaskName::Bootstrap, "n2"),
        ],
        vec![PlannedTask {
            task_name: TaskName::Install,
            node_id: node("n1"),
            service: "base".into(),
        }],
    ];
    JobRun::new(JOB, ClusterAction::ClusterCreate, stages, vec![], None, now)
}

fn stop_job(now: u64) -> JobRun {
    let stages = vec![vec![PlannedTask {
        task_name: TaskName::Stop,
        node_id: node("n1"),
        service: "mysql".into(),
    }]];
    JobRun::new(
        JOB,
        ClusterAction::StopServices,
        stages,
        strings(&["mysql"]),
        None,
        now,
    )
}

fn take(run: &mut JobRun, task: TaskId, worker: &str, now: u64) {
    run.take(task, owner(worker, now + 1_000), now)
        .expect("task is ready");
}

fn finish(run: &mut JobRun, task: TaskId, worker: &str, success: bool, now: u64) -> Vec<JobEffect> {
    run.finish(task, ("p1", worker), success, now)
        .expect("worker owns the task")
}

/// Takes and completes every ready task of the current stage; returns the effects.
fn complete_stage(run: &mut JobRun, now: u64) -> Vec<JobEffect> {
    let ready = run.ready_tasks();
    assert!(
        !ready.is_empty(),
        "stage {} has nothing ready",
        run.job.current_stage
    );
    ready.iter().for_each(|&t| take(run, t, "w", now));
    ready
        .iter()
        .flat_map(|&t| finish(run, t, "w", true, now))
        .collect()
}

fn status(run: &JobRun, seq: u32) -> TaskStatus {
    run.tasks[&tid(seq)].status
}

/// A new job is RUNNING with tasks `<job>-001..` NOT_SUBMITTED in plan order, only the first
/// stage ready; a plan without tasks gives a job that is COMPLETE at once.
#[test]
fn new_job_allocates_task_ids_in_plan_order() {
    let run = create_job(5);
    assert_eq!(run.job.status, JobStatus::Running);
    assert_eq!(
        run.job.stages,
        vec![
            vec![tid(1), tid(2)],
            vec![tid(3), tid(4)],
            vec![tid(5), tid(6)],
            vec![tid(7)]
        ]
    );
    assert_eq!(run.job.next_task_seq, 8);
    assert_eq!(
        run.tasks[&tid(3)].to_owned().id.to_string(),
        "00000079-001-003"
    );
    assert!(run
        .tasks
        .values()
        .all(|t| t.status == TaskStatus::NotSubmitted && t.attempts == 0));
    assert_eq!(run.ready_tasks(), vec![tid(1), tid(2)]);
    assert_eq!(run.steps(), (7, 0));

    let empty = JobRun::new(JOB, ClusterAction::SolveLayout, vec![], vec![], None, 5);
    assert_eq!(empty.job.status, JobStatus::Complete);
    assert!(empty.ready_tasks().is_empty());
}

/// Happy path: each stage opens only when the previous one is all COMPLETE, and the last stage
/// completes the job with the cluster ACTIVE; steps count completed tasks.
#[test]
fn happy_path_runs_every_stage() {
    let mut run = create_job(0);
    take(&mut run, tid(1), "w1", 1);
    take(&mut run, tid(2), "w2", 1);
    assert!(run.ready_tasks().is_empty(), "both tasks are in progress");
    assert_eq!(finish(&mut run, tid(1), "w1", true, 2), vec![]);
    assert_eq!(
        run.job.current_stage, 0,
        "stage 0 still has a task in progress"
    );
    assert_eq!(run.steps(), (7, 1));
    assert_eq!(
        finish(&mut run, tid(2), "w2", true, 3),
        vec![JobEffect::StageAdvanced { stage: 1 }]
    );
    assert_eq!(run.ready_tasks(), vec![tid(3), tid(4)]);
    complete_stage(&mut run, 4);
    complete_stage(&mut run, 5);
    let effects = complete_stage(&mut run, 6);
    assert_eq!(
        effects,
        vec![JobEffect::JobFinished {
            status: JobStatus::Complete,
            cluster_status: ClusterStatus::Active
        }]
    );
    assert_eq!(run.job.status, JobStatus::Complete);
    assert_eq!(run.job.status_time, 6);
    assert_eq!(run.steps(), (7, 7));
    assert!(run.ready_tasks().is_empty());
    assert!(run
        .tasks
        .values()
        .all(|t| t.attempts == 1 && t.owner.is_none()));
}

/// A failing task is retried until it has been attempted three times; the third failure fails
/// the task and the job, the cluster becomes INCONSISTENT (not a create), and the job's other
/// NOT_SUBMITTED tasks are DROPPED and never handed out.
#[test]
fn failed_task_is_retried_up_to_three_attempts() {
    let mut run = stop_job(0);
    for attempt in 1..Task::MAX_ATTEMPTS {
        take(&mut run, tid(1), "w", 10);
        assert_eq!(
            finish(&mut run, tid(1), "w", false, 11),
            vec![JobEffect::TaskRetried {
                task: tid(1),
                attempts: attempt
            }]
        );
        assert_eq!(status(&run, 1), TaskStatus::NotSubmitted);
        assert_eq!(run.ready_tasks(), vec![tid(1)]);
    }
    take(&mut run, tid(1), "w", 20);
    assert_eq!(
        finish(&mut run, tid(1), "w", false, 21),
        vec![
            JobEffect::TaskFailed { task: tid(1) },
            JobEffect::JobFinished {
                status: JobStatus::Failed,
                cluster_status: ClusterStatus::Inconsistent
            },
        ]
    );
    assert_eq!(run.tasks[&tid(1)].attempts, 3);
    assert_eq!(status(&run, 1), TaskStatus::Failed);
    assert_eq!(run.job.status, JobStatus::Failed);
    assert!(run
        .job
        .message
        .as_deref()
        .is_some_and(|m| m.contains("after 3 attempts")));
    assert!(run.ready_tasks().is_empty());
}

/// In a create job, a task out of attempts leaves the cluster INCOMPLETE, drops the tasks not yet
/// handed out, and refuses further takes.
#[test]
fn failed_create_leaves_cluster_incomplete() {
    let mut run = create_job(0);
    let mut effects = Vec::new();
    for _ in 0..3 {
        take(&mut run, tid(1), "w", 1);
        effects = finish(&mut run, tid(1), "w", false, 2);
    }
    assert_eq!(
        effects.last(),
        Some(&JobEffect::JobFinished {
            status: JobStatus::Failed,
            cluster_status: ClusterStatus::Incomplete
        })
    );
    assert!((2..=7).all(|seq| status(&run, seq) == TaskStatus::Dropped));
    assert_eq!(
        run.take(tid(2), owner("w", 10), 3),
        Err(JobError::JobNotRunning {
            job: JOB,
            status: JobStatus::Failed
        })
    );
}

/// A failed CONFIRM drops the task and inserts DELETE, CREATE, CONFIRM for that node in three
/// stages after the current one; the job goes on through them and then to BOOTSTRAP.
#[test]
fn failed_confirm_replaces_the_node() {
    let mut run = create_job(0);
    complete_stage(&mut run, 1);
    take(&mut run, tid(3), "w1", 2);
    take(&mut run, tid(4), "w2", 2);
    assert_eq!(
        finish(&mut run, tid(3), "w1", false, 3),
        vec![JobEffect::NodeReplaced {
            failed: tid(3),
            node: node("n1"),
            delete: tid(8),
            create: tid(9),
            confirm: tid(10)
        }]
    );
    assert_eq!(status(&run, 3), TaskStatus::Dropped);
    assert_eq!(
        run.job.stages,
        vec![
            vec![tid(1), tid(2)],
            vec![tid(3), tid(4)],
            vec![tid(8)],
            vec![tid(9)],
            vec![tid(10)],
            vec![tid(5), tid(6)],
            vec![tid(7)],
        ]
    );
    let names: Vec<_> = [8, 9, 10]
        .iter()
        .map(|&s| run.tasks[&tid(s)].task_name)
        .collect();
    assert_eq!(
        names,
        vec![TaskName::Delete, TaskName::Create, TaskName::Confirm]
    );
    assert_eq!(
        run.tasks[&tid(10)].attempts,
        1,
        "the new CONFIRM inherits the node's confirm attempts"
    );
    // The stage holding the dropped CONFIRM completes when the other CONFIRM does.
    assert_eq!(
        finish(&mut run, tid(4), "w2", true, 4),
        vec![JobEffect::StageAdvanced { stage: 2 }]
    );
    assert_eq!(run.ready_tasks(), vec![tid(8)]);
    complete_stage(&mut run, 5);
    complete_stage(&mut run, 6);
    assert_eq!(
        complete_stage(&mut run, 7),
        vec![JobEffect::StageAdvanced { stage: 5 }]
    );
    assert_eq!(run.tasks[&tid(10)].attempts, 2);
    assert_eq!(run.ready_tasks(), vec![tid(5), tid(6)]);
    complete_stage(&mut run, 8);
    complete_stage(&mut run, 9);
    assert_eq!(run.job.status, JobStatus::Complete);
    assert_eq!(run.steps(), (9, 9), "the dropped CONFIRM is not a step");
}

/// Two CONFIRMs failing in the same stage share one DELETE/CREATE/CONFIRM block (one task per
/// node per stage still holds).
#[test]
fn confirms_failing_in_one_stage_share_the_replacement_stages() {
    let mut run = create_job(0);
    complete_stage(&mut run, 1);
    take(&mut run, tid(3), "w1", 2);
    take(&mut run, tid(4), "w2", 2);
    finish(&mut run, tid(3), "w1", false, 3);
    let effects = finish(&mut run, tid(4), "w2", false, 3);
    assert_eq!(
        effects,
        vec![
            JobEffect::NodeReplaced {
                failed: tid(4),
                node: node("n2"),
                delete: tid(11),
                create: tid(12),
                confirm: tid(13)
            },
            JobEffect::StageAdvanced { stage: 2 },
        ]
    );
    assert_eq!(
        run.job.stages.iter().skip(2).take(3).collect::<Vec<_>>(),
        [
            &[tid(8), tid(11)][..],
            &[tid(9), tid(12)][..],
            &[tid(10), tid(13)][..]
        ]
    );
}

/// A node's CONFIRM is attempted at most three times in all: after two replacements the third
/// failed CONFIRM fails the job (cluster INCOMPLETE) instead of replacing the node again.
#[test]
fn confirm_attempts_are_bounded_across_replacements() {
    let stages = vec![
        vec![node_task(TaskName::Create, "n1")],
        vec![node_task(TaskName::Confirm, "n1")],
    ];
    let mut run = JobRun::new(JOB, ClusterAction::ClusterCreate, stages, vec![], None, 0);
    complete_stage(&mut run, 1);
    let mut confirms = 0;
    let mut last = Vec::new();
    for now in 2..20 {
        let Some(&task) = run.ready_tasks().first() else {
            break;
        };
        take(&mut run, task, "w", now);
        let is_confirm = run.tasks[&task].task_name == TaskName::Confirm;
        confirms += usize::from(is_confirm);
        last = finish(&mut run, task, "w", !is_confirm, now);
    }
    assert_eq!(confirms, 3);
    assert_eq!(run.job.status, JobStatus::Failed);
    assert_eq!(
        last.last(),
        Some(&JobEffect::JobFinished {
            status: JobStatus::Failed,
            cluster_status: ClusterStatus::Incomplete
        })
    );
    let dropped = run
        .tasks
        .values()
        .filter(|t| t.status == TaskStatus::Dropped)
        .count();
    assert_eq!(dropped, 2, "two CONFIRMs replaced, the third FAILED");
    assert_eq!(run.job.stages.len(), 2 + 3 + 3);
}

/// A task whose deadline passes times out at exactly its deadline: the owner is cleared, it counts
/// as a failed attempt and is retried; `next_deadline` reports the earliest deadline; the old
/// owner's late finish is then refused.
#[test]
fn expire_times_out_tasks_at_their_deadline() {
    let mut run = create_job(0);
    run.take(tid(1), owner("w1", 100), 0).expect("ready");
    run.take(tid(2), owner("w2", 50), 0).expect("ready");
    assert_eq!(run.next_deadline(), Some(50));
    assert_eq!(run.expire(49), vec![]);
    assert_eq!(
        run.expire(50),
        vec![
            JobEffect::TaskTimedOut { task: tid(2) },
            JobEffect::TaskRetried {
                task: tid(2),
                attempts: 1
            }
        ]
    );
    assert_eq!(run.tasks[&tid(2)].owner, None);
    assert_eq!(run.next_deadline(), Some(100));
    assert!(matches!(
        run.finish(tid(2), ("p1", "w2"), true, 60),
        Err(JobError::NotOwner { .. })
    ));
    assert_eq!(run.ready_tasks(), vec![tid(2)]);
}

/// A CONFIRM that times out (its worker went away) is retried as the same task: only a failure
/// the plugin reports replaces the machine (which would create a second one).
#[test]
fn confirm_timeout_is_retried_not_replaced() {
    let mut run = create_job(0);
    complete_stage(&mut run, 1);
    run.take(tid(3), owner("w1", 10), 2).expect("ready");
    assert_eq!(
        run.expire(10),
        vec![
            JobEffect::TaskTimedOut { task: tid(3) },
            JobEffect::TaskRetried {
                task: tid(3),
                attempts: 1
            }
        ]
    );
    assert_eq!(status(&run, 3), TaskStatus::NotSubmitted);
    assert_eq!(
        run.job.stages.len(),
        4,
        "no replacement stages were inserted"
    );
    assert!(run.ready_tasks().contains(&tid(3)));
}

/// Only the owning worker may finish a task: another worker, another provisioner, or a task that
/// is not in progress gets NotOwner (HTTP 417), and the task is unchanged.
#[test]
fn finish_by_non_owner_is_rejected() {
    let mut run = create_job(0);
    take(&mut run, tid(1), "w1", 1);
    let before = run.clone();
    let err = run
        .finish(tid(1), ("p1", "w2"), true, 2)
        .expect_err("not the owner");
    assert_eq!(err.http_status(), 417);
    assert!(matches!(
        run.finish(tid(1), ("p2", "w1"), true, 2),
        Err(JobError::NotOwner { .. })
    ));
    assert!(matches!(
        run.finish(tid(2), ("p1", "w1"), true, 2),
        Err(JobError::NotOwner { .. })
    ));
    assert_eq!(run, before);
    assert_eq!(
        run.finish(tid(99), ("p1", "w1"), true, 2),
        Err(JobError::UnknownTask(tid(99)))
    );
    finish(&mut run, tid(1), "w1", true, 3);
    assert!(
        matches!(
            run.finish(tid(1), ("p1", "w1"), true, 4),
            Err(JobError::NotOwner { .. })
        ),
        "a second finish is refused"
    );
}

/// Tasks outside the current stage, or already taken, cannot be taken.
#[test]
fn only_ready_tasks_can_be_taken() {
    let mut run = create_job(0);
    assert!(matches!(
        run.take(tid(3), owner("w", 9), 0),
        Err(JobError::NotReady {
            stage: 1,
            current_stage: 0,
            ..
        })
    ));
    take(&mut run, tid(1), "w", 0);
    assert!(matches!(
        run.take(tid(1), owner("w", 9), 0),
        Err(JobError::NotReady {
            status: TaskStatus::InProgress,
            ..
        })
    ));
}

/// Abort fails a running create job (cluster INCOMPLETE) and drops the tasks not handed out; an
/// in-progress task keeps its owner, whose late finish is accepted without changing the job; a
/// second abort is a no-op; a running job of another kind cannot be aborted.
#[test]
fn abort_fails_a_create_job() {
    let mut run = create_job(0);
    take(&mut run, tid(1), "w1", 1);
    assert_eq!(
        run.abort(2),
        Ok(vec![JobEffect::JobFinished {
            status: JobStatus::Failed,
            cluster_status: ClusterStatus::Incomplete
        }])
    );
    assert_eq!(run.job.status, JobStatus::Failed);
    assert_eq!(status(&run, 1), TaskStatus::InProgress);
    assert!((2..=7).all(|seq| status(&run, seq) == TaskStatus::Dropped));
    assert_eq!(run.abort(3), Ok(vec![]));
    let job_before = run.job.clone();
    assert_eq!(finish(&mut run, tid(1), "w1", true, 4), vec![]);
    assert_eq!(status(&run, 1), TaskStatus::Complete);
    assert_eq!(run.job, job_before);

    let mut other = stop_job(0);
    assert_eq!(
        other.abort(1),
        Err(JobError::AbortNotAllowed {
            job: JOB,
            action: ClusterAction::StopServices
        })
    );
    assert_eq!(other.job.status, JobStatus::Running);
}

/// Pause stops tasks from being handed out (tasks in progress may still finish and advance the
/// stage); resume hands them out again; both are no-ops in any other state.
#[test]
fn pause_and_resume() {
    let mut run = create_job(0);
    take(&mut run, tid(1), "w", 1);
    assert!(run.pause(2));
    assert!(!run.pause(3), "already paused");
    assert_eq!(run.job.status, JobStatus::Paused);
    assert!(run.ready_tasks().is_empty());
    assert_eq!(
        run.take(tid(2), owner("w", 9), 3),
        Err(JobError::JobNotRunning {
            job: JOB,
            status: JobStatus::Paused
        })
    );
    finish(&mut run, tid(1), "w", true, 4);
    assert!(run.resume(5));
    assert!(!run.resume(6), "already running");
    assert_eq!(run.ready_tasks(), vec![tid(2)]);
    // A paused create job can still be aborted.
    assert!(run.pause(7));
    assert!(run.abort(8).is_ok_and(|e| !e.is_empty()));
    assert!(
        !run.pause(9) && !run.resume(9),
        "finished jobs are neither paused nor resumed"
    );
}

/// After a job fails, a task still in progress that misses its deadline is DROPPED, not retried.
#[test]
fn tasks_of_a_failed_job_time_out_as_dropped() {
    let mut run = create_job(0);
    run.take(tid(1), owner("w1", 10), 0).expect("ready");
    run.take(tid(2), owner("w2", 100), 0).expect("ready");
    for now in [10, 30, 50] {
        run.expire(now);
        if run.job.status == JobStatus::Running {
            run.take(tid(1), owner("w1", now + 10), now)
                .expect("retry is ready");
        }
    }
    assert_eq!(run.job.status, JobStatus::Failed);
    assert_eq!(status(&run, 2), TaskStatus::InProgress);
    assert_eq!(
        run.expire(100),
        vec![JobEffect::TaskDropped { task: tid(2) }]
    );
    assert_eq!(run.next_deadline(), None);
}

/// Coopr's table of cluster statuses after an operation.
#[test]
fn cluster_status_after_operations() {
    use ClusterAction::*;
    for action in [
        ClusterCreate,
        AddServices,
        ClusterConfigure,
        ClusterConfigureWithRestart,
        StartServices,
        StopServices,
        RestartServices,
    ] {
        assert_eq!(
            cluster_status_after(action, true),
            ClusterStatus::Active,
            "{action}"
        );
    }
    assert_eq!(
        cluster_status_after(ClusterDelete, true),
        ClusterStatus::Terminated
    );
    assert_eq!(
        cluster_status_after(ClusterCreate, false),
        ClusterStatus::Incomplete
    );
    assert_eq!(
        cluster_status_after(SolveLayout, false),
        ClusterStatus::Terminated
    );
    for action in [
        ClusterDelete,
        AddServices,
        ClusterConfigure,
        ClusterConfigureWithRestart,
        StartServices,
        StopServices,
        RestartServices,
    ] {
        assert_eq!(
            cluster_status_after(action, false),
            ClusterStatus::Inconsistent,
            "{action}"
        );
    }
}

/// A job survives a JSON round trip unchanged (it is stored and replicated as JSON).
#[test]
fn job_run_round_trips_through_json() {
    let mut run = create_job(0);
    take(&mut run, tid(1), "w1", 1);
    let json = serde_json::to_string(&run).expect("serializable");
    let back: JobRun = serde_json::from_str(&json).expect("deserializable");
    assert_eq!(back, run);
}
