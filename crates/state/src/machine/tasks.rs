//! The task queue (DC-local): the derived queue of ready tasks, take, finish, expiry of tasks
//! and of dead provisioners' leases, provisioner registrations.

use std::collections::BTreeSet;

use coopr_types::{JobId, NodeAction, ShardId, ShortStr, TaskId, TaskName, TaskOwner, TaskStatus};

use super::clusters::{apply_effects, job_finished};
use crate::command::{CommandResult, Outcome, ProvisionerInfo, TaskResult};
use crate::{CommandError, ErrorCode, State};

impl State {
    /// Tasks waiting to be taken.
    pub fn queued_tasks(&self) -> impl Iterator<Item = &TaskId> {
        self.ready.iter()
    }

    /// How many tasks wait to be taken.
    pub fn queued_task_count(&self) -> usize {
        self.ready.len()
    }

    /// The earliest deadline of any in-progress task of an unfinished job.
    pub fn next_deadline(&self) -> Option<u64> {
        self.in_progress.next_deadline()
    }

    /// The in-progress task a worker holds, if any. A worker runs one task at a time, so a worker
    /// that asks for work while holding one never got the answer to its take. Should it hold
    /// several (a take applied twice), the lowest task id, as a scan in job order found first.
    pub fn task_held_by_worker(&self, provisioner: &str, worker: &str) -> Option<TaskId> {
        self.in_progress.held_by_worker(provisioner, worker)
    }

    /// How many in-progress tasks of unfinished jobs a provisioner holds.
    pub fn tasks_held_by(&self, provisioner: &str) -> usize {
        self.in_progress.held_by(provisioner)
    }

    pub(super) fn take_task(
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
            .map_err(|e| CommandError::conflict(ErrorCode::TaskNotReady, e.to_string()))?;
        if let Some(task) = run.tasks.get(&task_id).cloned() {
            if let Some(node) = record.nodes.get_mut(&task.node_id) {
                node.push_action(NodeAction::started(
                    task_id,
                    task.service.clone(),
                    task.task_name,
                    now,
                ));
            }
        }
        self.refresh_job(task_id.job);
        Ok(Outcome::TaskTaken {
            task: Some(task_id),
        })
    }

    pub(super) fn finish_task(&mut self, result: &TaskResult, now: u64) -> CommandResult {
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
                    node.properties.hostname = ShortStr::from(hostname);
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
                entry.set_output(
                    truncate_output(&result.stdout),
                    truncate_output(&result.stderr),
                );
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

    /// Times out expired tasks (or, with `provisioner`, every in-progress task that provisioner
    /// holds) in every active job.
    pub(super) fn expire_tasks(&mut self, now: u64, provisioner: Option<&str>) -> CommandResult {
        let jobs: Vec<JobId> = self.active_jobs.iter().copied().collect();
        let mut count = 0;
        for job in jobs {
            count += self.expire_job(job, now, provisioner);
        }
        Ok(Outcome::TasksExpired { count })
    }

    pub(super) fn register_provisioner(&mut self, info: &ProvisionerInfo) -> CommandResult {
        self.local
            .provisioners
            .insert(info.id.clone(), info.clone());
        Ok(Outcome::Done)
    }

    pub(super) fn unregister_provisioner(&mut self, id: &str) -> CommandResult {
        self.local.provisioners.remove(id);
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

    /// Recomputes the derived entries of one job: its ready tasks, its active-job membership,
    /// its in-progress tasks, and its cluster's entry in the tenant index. Every change of a
    /// task's status or owner, and of an owned cluster's status, ends here.
    pub(crate) fn refresh_job(&mut self, job: JobId) {
        let stale: Vec<TaskId> = self
            .ready
            .range(first_task(job)..=last_task(job))
            .copied()
            .collect();
        for task in stale {
            self.ready.remove(&task);
        }
        self.in_progress.remove_job(job);
        let shard = job.cluster.shard(self.shard_count);
        // Borrowed field by field: the indexes change while the record is read.
        let Some(record) = self
            .shards
            .get(&shard)
            .and_then(|s| s.clusters.get(&job.cluster))
        else {
            self.active_jobs.remove(&job);
            return;
        };
        let cluster = &record.cluster;
        self.by_tenant
            .set(shard, cluster.id, &cluster.account, cluster.status);
        let Some(run) = record.jobs.get(&job.seq) else {
            self.active_jobs.remove(&job);
            return;
        };
        let finished = run.job.status.is_finished();
        if !finished {
            // Entries outside the job's range could not be replaced by the next refresh.
            let held = run.tasks.values().filter(|t| {
                t.status == TaskStatus::InProgress && t.id.job == job && t.owner.is_some()
            });
            for task in held {
                if let Some(owner) = &task.owner {
                    self.in_progress.insert(task.id, owner);
                }
            }
        }
        let ready = run.ready_tasks();
        if finished {
            if self.active_jobs.remove(&job) {
                // Just finished: the record grows no more until its next operation.
                if let Ok(record) = self.cluster_mut(job.cluster) {
                    record.shrink_to_fit();
                }
            }
        } else {
            self.active_jobs.insert(job);
        }
        self.ready.extend(ready);
    }
}

fn first_task(job: JobId) -> TaskId {
    TaskId { job, seq: 0 }
}

fn last_task(job: JobId) -> TaskId {
    TaskId { job, seq: u32::MAX }
}

/// Stdout/stderr kept per node action (the tail).
const MAX_OUTPUT_BYTES: usize = 8 * 1024;

/// The tail of `s` kept (at most [`MAX_OUTPUT_BYTES`], on a character boundary).
fn truncate_output(s: &str) -> &str {
    if s.len() <= MAX_OUTPUT_BYTES {
        return s;
    }
    let mut start = s.len() - MAX_OUTPUT_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node action keeps the tail of a task's output, at most `MAX_OUTPUT_BYTES`, cut on a
    /// character boundary; shorter output is kept whole.
    #[test]
    fn output_keeps_its_tail_on_a_character_boundary() {
        assert_eq!(truncate_output("short"), "short");
        let exact = "x".repeat(MAX_OUTPUT_BYTES);
        assert_eq!(truncate_output(&exact), exact);
        // "é" is two bytes: a cut one byte into it moves to the next character.
        let long = format!("{}{}", "é".repeat(MAX_OUTPUT_BYTES), "end");
        let kept = truncate_output(&long);
        // 16,387 bytes: the last 8,192 start at byte 8,195, inside an "é"; 8,191 are kept.
        assert_eq!(kept.len(), MAX_OUTPUT_BYTES - 1);
        assert!(kept.ends_with("end") && kept.starts_with('é'));
    }
}
