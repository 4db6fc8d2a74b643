//! The job driver: the only source of time-based state changes. It proposes `ExpireTasks` when
//! a task's deadline has passed and `ReleaseProvisioner` for provisioners that stopped
//! heartbeating, so their tasks are retried by other workers. With other DCs it also trims the
//! outboxes of the shards this DC owns through what every replica DC acknowledged.
//!
//! ```text
//!   every TICK, on the DC log's leader:
//!     duties(state, now) ──► [ExpireTasks | ReleaseProvisioner(id) | DeleteOrphan(cluster)]
//!     (no I/O: state and time in, duties out)      │
//!     run() ──── proposes each duty's commands ◄───┘ then RetireJobs (finished jobs past
//!                the job retention, one slice of shards per tick), tenant push, outbox trims
//! ```

use std::sync::Arc;
use std::time::Duration;

use coopr_state::{Command, State};
use coopr_types::{ClusterId, ShardId};
use tokio::sync::watch;

use crate::App;

/// What the driver must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Duty {
    /// A task's deadline has passed.
    ExpireTasks,
    /// A provisioner was not heard from for longer than the provisioner timeout: release its
    /// tasks and unregister it.
    ReleaseProvisioner(String),
    /// A live cluster whose tenant was deleted (or deleted and created again) after it was
    /// created here (`State::orphaned_clusters`): delete it with a normal delete job, so its
    /// machines are released.
    DeleteOrphan(ClusterId),
}

/// The time the driver decides at, from the node's clock.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall_ms: u64,
    pub mono_ms: u64,
}

/// The driver's decisions, without I/O: from the state, the time, the provisioner timeout,
/// when each provisioner was last heard from (monotonic ms), and whether to look for orphaned
/// clusters (a scan of every cluster: see [`OrphanScan`]).
pub fn duties(
    state: &State,
    now: Now,
    provisioner_timeout_ms: u64,
    last_heard: impl Fn(&str) -> u64,
    scan_orphans: bool,
) -> Vec<Duty> {
    let mut duties = Vec::new();
    if state.next_deadline().is_some_and(|d| d <= now.wall_ms) {
        duties.push(Duty::ExpireTasks);
    }
    duties.extend(
        state
            .local
            .provisioners
            .keys()
            .filter(|p| now.mono_ms.saturating_sub(last_heard(p)) > provisioner_timeout_ms)
            .map(|p| Duty::ReleaseProvisioner(p.clone())),
    );
    if scan_orphans {
        duties.extend(
            state
                .orphaned_clusters()
                .into_iter()
                .map(Duty::DeleteOrphan),
        );
    }
    duties
}

/// When the driver looks for orphaned clusters. The scan visits every cluster of the DC
/// (about 0.2 s at a million), so not every tick: at once when the tenants changed (a tenant
/// deleted, or created again: what makes clusters orphans), and every [`ORPHAN_SCAN_EVERY_MS`]
/// for clusters that were in an operation at the time.
#[derive(Default)]
pub struct OrphanScan {
    tenants: Vec<(String, String)>,
    last_ms: Option<u64>,
}

/// Longest time between two scans for orphaned clusters.
pub const ORPHAN_SCAN_EVERY_MS: u64 = 10_000;

impl OrphanScan {
    /// Whether to scan now; remembers the tenants and the time when it says yes.
    pub fn due(&mut self, state: &State, mono_ms: u64) -> bool {
        let tenants: Vec<(String, String)> = state
            .global_data()
            .tenants
            .iter()
            .map(|(name, t)| (name.clone(), t.id.clone()))
            .collect();
        let due = tenants != self.tenants
            || self
                .last_ms
                .is_none_or(|last| mono_ms.saturating_sub(last) >= ORPHAN_SCAN_EVERY_MS);
        if due {
            self.tenants = tenants;
            self.last_ms = Some(mono_ms);
        }
        due
    }
}

/// Longest sleep between checks.
const TICK: Duration = Duration::from_millis(200);

/// What a node does when it becomes the DC log's leader: it starts timing provisioners from
/// now and seeds whatever first-start data is missing.
pub async fn become_leader(app: &App) -> anyhow::Result<()> {
    // Seeding reads the local state. A new leader may not have applied its whole log yet (the
    // commit index is not persisted, so a restarted node re-applies its log only once it
    // commits an entry of its own term): the read barrier waits for exactly that.
    app.core
        .raft()
        .read_barrier()
        .await
        .map_err(|e| anyhow::anyhow!("read barrier of the new leader: {e}"))?;
    // Tenants, keys and the catalog live in the global shard: only its owner seeds them; the
    // other DCs get them by replication.
    if app.owns(ShardId::GLOBAL) {
        crate::seed::bootstrap(app).await?;
    }
    if let Ok(mut since) = app.leader_since.lock() {
        *since = Some(app.clock.mono_ms());
    }
    metrics::counter!("coopr_leadership_acquired_total").increment(1);
    tracing::info!(node = %app.config.node, "leading the DC log: job engine running here");
    Ok(())
}

pub async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut last_term = 0;
    let mut orphan_scan = OrphanScan::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let status = app.core.raft().status();
        if status.term != last_term {
            if last_term != 0 {
                metrics::counter!("coopr_elections_total").increment(1);
            }
            last_term = status.term;
        }
        // The job engine (timeouts, provisioner liveness, seeding) runs on the leader only,
        // driven by committed state; it moves with leadership.
        if !app.core.raft().is_leader() {
            if let Ok(mut since) = app.leader_since.lock() {
                if since.take().is_some() {
                    tracing::info!(node = %app.config.node, "no longer leading the DC log");
                    crate::tenant_push::forget(&app);
                }
            }
            continue;
        }
        let leading = app
            .leader_since
            .lock()
            .map(|l| l.is_some())
            .unwrap_or(false);
        if !leading {
            if let Err(e) = become_leader(&app).await {
                tracing::warn!(error = %e, "could not take up leadership duties yet");
                continue;
            }
        }
        let now = Now {
            wall_ms: app.clock.wall_ms(),
            mono_ms: app.clock.mono_ms(),
        };
        let due = {
            let state = app.core.read();
            let scan_orphans = orphan_scan.due(&state, now.mono_ms);
            duties(
                &state,
                now,
                app.config.provisioner_timeout_ms,
                |p| app.last_heard(p),
                scan_orphans,
            )
        };
        for duty in due {
            perform(&app, duty).await;
        }
        retire_jobs(&app).await;
        crate::tenant_push::push(&app).await;
        if app.config.trim_outboxes {
            if app.config.remote_dcs.is_empty() {
                trim_outboxes_alone(&app).await;
            } else {
                crate::replication::owner::trim_outboxes(&app).await;
            }
        }
    }
}

/// Shards scanned for jobs to retire per tick: a full pass over the shards takes about
/// `RETIRE_PASS_TICKS` ticks (10 s), each scan holding the state's read lock for one slice.
const RETIRE_PASS_TICKS: u32 = 50;

/// Retires finished jobs past the job retention in the next slice of shards (see
/// `coopr_state::machine::retire`): their runs go to the job archive on disk.
async fn retire_jobs(app: &App) {
    let shard_count = app.config.shard_count;
    let slice = shard_count.div_ceil(RETIRE_PASS_TICKS).max(1);
    let first = app.retire_cursor.load(std::sync::atomic::Ordering::Relaxed) % shard_count;
    let last = (first + slice - 1).min(shard_count - 1);
    let cutoff = app
        .clock
        .wall_ms()
        .saturating_sub(app.config.job_retention_ms);
    let jobs = app
        .core
        .read()
        .retirable_jobs(first..=last, cutoff, coopr_state::MAX_RETIRE_BATCH);
    // Stay on this slice while it had a full batch: the rest of it comes next tick.
    if jobs.len() < coopr_state::MAX_RETIRE_BATCH {
        app.retire_cursor.store(
            (last + 1) % shard_count,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    if jobs.is_empty() {
        return;
    }
    let count = jobs.len();
    match app.propose_system(Command::RetireJobs { jobs }, None).await {
        Ok(Ok(_)) => {
            metrics::counter!("coopr_jobs_retired_total").increment(count as u64);
            tracing::debug!(count, "retired finished jobs to the archive");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "retiring jobs rejected"),
        Err(e) => tracing::debug!(error = %e, "retiring jobs not proposed"),
    }
}

/// Records an outbox of a DC without other DCs may hold before the driver drops them.
const ALONE_OUTBOX_RECORDS: usize = 32;

/// A DC alone in its deployment has no replica to ship records to, so nothing would ever
/// trim its outboxes: they grew to their capacity (500,000 records for the DC, about 1 GB)
/// and stayed there. The driver drops an outbox's records once it holds
/// [`ALONE_OUTBOX_RECORDS`]; a DC added later is seeded from a snapshot, as any replica
/// behind a dropped record is.
async fn trim_outboxes_alone(app: &App) {
    let trims = app.core.read().outbox_ends(ALONE_OUTBOX_RECORDS);
    for (shard, through_seq) in trims {
        let trim = Command::TrimOutbox { shard, through_seq };
        if let Ok(Err(e)) = app.propose_system(trim, None).await {
            tracing::warn!(%shard, through_seq, error = %e, "outbox trim rejected");
        }
    }
}

/// Proposes what `duty` takes, and logs and counts the outcome.
async fn perform(app: &App, duty: Duty) {
    match duty {
        Duty::ExpireTasks => match app.propose_system(Command::ExpireTasks, None).await {
            Ok(Ok(outcome)) => tracing::debug!(?outcome, "expired tasks"),
            Ok(Err(e)) => tracing::warn!(error = %e, "expire rejected"),
            Err(e) => tracing::warn!(error = %e, "expire not written"),
        },
        Duty::ReleaseProvisioner(id) => {
            tracing::warn!(provisioner = %id, "provisioner missed its heartbeats; releasing its tasks");
            let released = app
                .propose_system(Command::ReleaseProvisioner { id: id.clone() }, None)
                .await;
            let removed = app
                .propose_system(Command::UnregisterProvisioner { id: id.clone() }, None)
                .await;
            if matches!((&released, &removed), (Ok(Ok(_)), Ok(Ok(_)))) {
                app.forget_provisioner(&id);
            }
        }
        Duty::DeleteOrphan(cluster) => {
            let command = Command::StartOperation {
                cluster,
                action: coopr_types::ClusterAction::ClusterDelete,
                services: Vec::new(),
                config: None,
            };
            match app.propose_system(command, None).await {
                Ok(Ok(_)) => {
                    metrics::counter!("coopr_orphaned_clusters_deleted_total").increment(1);
                    tracing::warn!(%cluster, "deleting a cluster whose tenant was deleted");
                }
                Ok(Err(e)) => {
                    tracing::debug!(%cluster, error = %e, "orphaned cluster not deleted yet")
                }
                Err(e) => {
                    tracing::debug!(%cluster, error = %e, "orphaned cluster delete not written")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coopr_state::{Entry, ProvisionerInfo};

    fn apply(state: &mut State, now_ms: u64, command: Command) {
        let entry = Entry {
            now_ms,
            idempotency_key: None,
            fence: None,
            command,
        };
        assert!(state.apply(&entry).is_ok(), "{entry:?}");
    }

    fn register(state: &mut State, id: &str) {
        let info = ProvisionerInfo {
            id: id.to_string(),
            host: "127.0.0.1".into(),
            port: 55056,
            capacity_total: 1,
        };
        apply(state, 1_000, Command::RegisterProvisioner { info });
    }

    /// Nothing to do on a quiet state; a provisioner silent for longer than the timeout is
    /// released, one heard from within it is not.
    #[test]
    fn silent_provisioners_are_released_after_the_timeout() {
        let mut state = State::new(6);
        let now = Now {
            wall_ms: 10_000,
            mono_ms: 50_000,
        };
        assert_eq!(duties(&state, now, 30_000, |_| 0, true), Vec::new());
        register(&mut state, "quiet");
        register(&mut state, "chatty");
        let heard = |p: &str| if p == "chatty" { 45_000 } else { 19_999 };
        assert_eq!(
            duties(&state, now, 30_000, heard, true),
            vec![Duty::ReleaseProvisioner("quiet".into())]
        );
        let just_in_time = |p: &str| if p == "chatty" { 45_000 } else { 20_000 };
        assert_eq!(duties(&state, now, 30_000, just_in_time, true), Vec::new());
    }

    /// The orphan scan runs at the first tick, then not again until the tenants change or
    /// `ORPHAN_SCAN_EVERY_MS` passed.
    #[test]
    fn orphans_are_looked_for_when_tenants_change_and_every_ten_seconds() {
        let mut state = State::new(6);
        let mut scan = OrphanScan::default();
        assert!(scan.due(&state, 1_000));
        assert!(!scan.due(&state, 1_200));
        assert!(!scan.due(&state, 1_000 + ORPHAN_SCAN_EVERY_MS - 1));
        let tenant = coopr_types::Tenant {
            id: "t-1".into(),
            name: "t".into(),
            description: String::new(),
            workers: 0,
            max_clusters: coopr_types::UNLIMITED,
            max_nodes: coopr_types::UNLIMITED,
        };
        apply(&mut state, 2_000, Command::PutTenant { tenant });
        assert!(scan.due(&state, 2_000), "a new tenant");
        assert!(!scan.due(&state, 2_200));
        assert!(scan.due(&state, 2_000 + ORPHAN_SCAN_EVERY_MS));
    }
}
