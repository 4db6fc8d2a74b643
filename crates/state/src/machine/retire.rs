//! Job retention: finished jobs move out of memory into the node's job archive.
//!
//! A finished job is history: the engine never reads it again, and Coopr users read it only
//! through `GET /clusters/{id}/plans[/{job}]`. Past the job retention (a server setting), the
//! DC log's leader proposes [`Command::RetireJobs`](crate::Command::RetireJobs); applying it
//! takes each job's run out of its [`ClusterRecord`], keeps its [`JobSummary`] (what progress,
//! `/status` and the replicated view show) and hands the run to the archive as an
//! [`ArchiveEffect`]. The archive (the server's, on disk) is part of the DC log's snapshots, so
//! every node of the DC holds the same history.
//!
//! ```text
//!  driver (leader): retirable_jobs(shards, finished before now - retention)
//!        └─► RetireJobs{jobs} ─► apply on every node: jobs[seq] ─► retired_jobs[id] (summary)
//!                                                        └─► ArchiveEffect::Retired(run)
//!  demote of a shard ─────────────────────────────────────► ArchiveEffect::DropShard(shard)
//!  the node's state machine drains the effects after each batch (take_archive_effects)
//! ```
//!
//! Retiring changes nothing a replica sees (the summaries stay), so it emits no record, and a
//! frozen shard (in a handover) is left alone.

use std::ops::RangeInclusive;
use std::sync::Arc;

use coopr_engine::job::JobRun;
use coopr_types::{JobId, ShardId};

use super::emit::job_summary;
use super::State;
use crate::command::{CommandResult, Outcome};
use crate::{CommandError, ErrorCode};

/// Jobs one `RetireJobs` entry retires at most (bounds the entry and the archive write).
pub const MAX_RETIRE_BATCH: usize = 1_000;

/// What the job archive must do, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveEffect {
    /// A finished job left memory: keep its run.
    Retired(Box<JobRun>),
    /// This DC stopped writing the shard: forget what it archived of it.
    DropShard(ShardId),
}

impl State {
    /// Finished jobs held whole in the given cluster shards that finished at or before
    /// `finished_by_ms`, oldest shard first, at most `limit`. Frozen shards are skipped.
    pub fn retirable_jobs(
        &self,
        shards: RangeInclusive<u32>,
        finished_by_ms: u64,
        limit: usize,
    ) -> Vec<JobId> {
        self.shards
            .range(ShardId(*shards.start())..=ShardId(*shards.end()))
            .filter(|(_, data)| data.frozen.is_none())
            .flat_map(|(_, data)| data.clusters.values())
            .flat_map(|record| record.jobs.values())
            .filter(|run| run.job.status.is_finished() && run.job.status_time <= finished_by_ms)
            .map(|run| run.job.id)
            .take(limit)
            .collect()
    }

    /// The archive's work since the last call: the node's state machine writes it to its
    /// archive after applying a batch. A state nobody drains (recovery tools, benchmarks) keeps
    /// the runs here.
    pub fn take_archive_effects(&mut self) -> Vec<ArchiveEffect> {
        std::mem::take(&mut self.archive_effects)
    }

    /// See [`crate::Command::RetireJobs`]. Jobs that are gone, unfinished, or in a shard this
    /// DC does not write (any more) or has frozen are skipped: the leader chose them from its
    /// own state, which may be an entry or two behind.
    pub(crate) fn retire_jobs(&mut self, jobs: &[JobId]) -> CommandResult {
        if jobs.len() > MAX_RETIRE_BATCH {
            return Err(CommandError::invalid(
                ErrorCode::RetireBatchTooLarge,
                format!(
                    "{} jobs to retire in one entry; at most {MAX_RETIRE_BATCH}",
                    jobs.len()
                ),
            ));
        }
        let shard_count = self.shard_count;
        let mut retired = 0;
        for id in jobs {
            let Some(data) = self.shards.get_mut(&id.cluster.shard(shard_count)) else {
                continue;
            };
            if data.frozen.is_some() {
                continue;
            }
            let Some(record) = Arc::make_mut(data).clusters.get_mut(&id.cluster) else {
                continue;
            };
            if !record
                .jobs
                .get(&id.seq)
                .is_some_and(|run| run.job.status.is_finished())
            {
                continue;
            }
            // Copied first if a snapshot being written still holds it.
            let record = Arc::make_mut(record);
            let Some(run) = record.jobs.remove(&id.seq) else {
                continue;
            };
            record.retired_jobs.insert(*id, job_summary(&run));
            record.jobs.shrink_to_fit();
            record.retired_jobs.shrink_to_fit();
            self.archive_effects
                .push(ArchiveEffect::Retired(Box::new(run)));
            retired += 1;
        }
        Ok(if retired == 0 {
            Outcome::Unchanged
        } else {
            Outcome::Done
        })
    }
}
