//! The job driver: the only source of time-based state changes. It proposes `ExpireTasks` when
//! a task's deadline has passed and `ReleaseProvisioner` for provisioners that stopped
//! heartbeating, so their tasks are retried by other workers. With other DCs it also trims the
//! outboxes of the shards this DC owns through what every replica DC acknowledged.

use std::sync::Arc;
use std::time::Duration;

use coopr_state::Command;
use coopr_types::ShardId;
use tokio::sync::watch;

use crate::App;

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
        let due = app
            .core
            .read()
            .next_deadline()
            .is_some_and(|d| d <= app.clock.wall_ms());
        if due {
            match app.propose_system(Command::ExpireTasks, None).await {
                Ok(Ok(outcome)) => tracing::debug!(?outcome, "expired tasks"),
                Ok(Err(e)) => tracing::warn!(error = %e, "expire rejected"),
                Err(e) => tracing::warn!(error = %e, "expire not written"),
            }
        }
        let timeout_ms = app.config.provisioner_timeout_ms;
        let now = app.clock.mono_ms();
        let dead: Vec<String> = {
            let state = app.core.read();
            state
                .local
                .provisioners
                .keys()
                .filter(|p| now.saturating_sub(app.last_heard(p)) > timeout_ms)
                .cloned()
                .collect()
        };
        for id in dead {
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
        delete_orphans(&app).await;
        crate::tenant_push::push(&app).await;
        if app.config.trim_outboxes && !app.config.remote_dcs.is_empty() {
            crate::replication::owner::trim_outboxes(&app).await;
        }
    }
}

/// Deletes the live clusters whose tenant was deleted (or deleted and created again) after
/// they were created here: another DC deleted the tenant before their creation reached it
/// (`State::orphaned_clusters`). A normal delete job, so their machines are released.
async fn delete_orphans(app: &App) {
    let orphans = app.core.read().orphaned_clusters();
    for cluster in orphans {
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
            Ok(Err(e)) => tracing::debug!(%cluster, error = %e, "orphaned cluster not deleted yet"),
            Err(e) => tracing::debug!(%cluster, error = %e, "orphaned cluster delete not written"),
        }
    }
}
