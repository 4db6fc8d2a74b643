//! The job driver: the only source of time-based state changes. It proposes `ExpireTasks` when
//! a task's deadline has passed and `ReleaseProvisioner` for provisioners that stopped
//! heartbeating, so their tasks are retried by other workers.

use std::sync::Arc;
use std::time::Duration;

use coopr_state::Command;
use tokio::sync::watch;

use crate::core::now_ms;
use crate::App;

/// Longest sleep between checks.
const TICK: Duration = Duration::from_millis(200);

pub async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let due = app
            .core
            .read()
            .next_deadline()
            .is_some_and(|d| d <= now_ms());
        if due {
            match app.core.propose(Command::ExpireTasks, None).await {
                Ok(Ok(outcome)) => tracing::debug!(?outcome, "expired tasks"),
                Ok(Err(e)) => tracing::warn!(error = %e, "expire rejected"),
                Err(e) => tracing::warn!(error = %e, "expire not written"),
            }
        }
        let timeout = Duration::from_millis(app.config.provisioner_timeout_ms);
        let dead: Vec<String> = {
            let state = app.core.read();
            state
                .local
                .provisioners
                .keys()
                .filter(|p| app.last_heard(p).elapsed() > timeout)
                .cloned()
                .collect()
        };
        for id in dead {
            tracing::warn!(provisioner = %id, "provisioner missed its heartbeats; releasing its tasks");
            let released = app
                .core
                .propose(Command::ReleaseProvisioner { id: id.clone() }, None)
                .await;
            let removed = app
                .core
                .propose(Command::UnregisterProvisioner { id: id.clone() }, None)
                .await;
            if matches!((&released, &removed), (Ok(Ok(_)), Ok(Ok(_)))) {
                app.forget_provisioner(&id);
            }
        }
    }
}
