//! The provisioner runtime: register, heartbeat, and `capacity` workers that take, run and
//! finish tasks.
//!
//! ```text
//!   run() ── register (retry until accepted) ──┬── heartbeat loop ── 404/403 ──► register again
//!                                              ├── worker 0 ─┐
//!                                              ├── worker 1 ─┼─ take ──204──► sleep poll interval
//!                                              └── ...       │    └──200──► dispatch ──► finish
//!                                                            │                  417/409: drop, move on
//!                                                            │                  other 4xx: report failed
//!                                                            └─ 403 on take/finish ──► register again
//! ```
//!
//! Shutdown: when the watch channel turns `true` (or its sender is dropped), every loop stops at
//! its next await. A task in flight is abandoned: its plugin future is dropped (an `exec`
//! process is killed) and nothing is reported, so the server times the task out and hands it to
//! another worker; plugins are idempotent per task for exactly this reason.

use std::sync::Arc;
use std::time::Duration;

use coopr_transport::Transport;
use tokio::time::Instant;

use anyhow::Context as _;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::client::{
    FinishOutcome, FinishRequest, HeartbeatOutcome, ProvisionerClient, Registration, TakeOutcome,
    TakeRequest,
};
use crate::config::ProvisionerConfig;
use crate::plugin::PluginResult;

/// How long a worker keeps trying to report one task's result before leaving the task to the
/// server's task timeout. Long enough to outlast a leader election in the server's DC (a few
/// election timeouts), during which every write is answered 503.
const FINISH_RETRY_FOR: Duration = Duration::from_secs(30);
/// Longest pause between two attempts at reporting a result (the pause starts at the poll
/// interval and doubles).
const MAX_FINISH_BACKOFF: Duration = Duration::from_secs(1);

/// Runs a provisioner until `shutdown` turns `true` (or its sender is dropped).
///
/// Returns an error only for problems retrying cannot fix: an invalid configuration, or a
/// registration the server rejects with a 4xx (a bad id, host or API key). An unreachable server
/// is retried with backoff, rotating through `config.servers`.
pub async fn run(config: ProvisionerConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config
        .validate()
        .context("invalid provisioner configuration")?;
    let client = ProvisionerClient::new(&config).context("building the HTTP client")?;
    run_client(config, client, shutdown).await
}

/// [`run`] over `transport` instead of HTTP (a simulation's in-memory network). Time is tokio's,
/// so a paused runtime drives every poll, heartbeat and retry.
pub async fn run_with_transport(
    config: ProvisionerConfig,
    transport: Arc<dyn Transport>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    config
        .validate()
        .context("invalid provisioner configuration")?;
    let client = ProvisionerClient::with_transport(&config, transport);
    run_client(config, client, shutdown).await
}

async fn run_client(
    config: ProvisionerConfig,
    client: ProvisionerClient,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime {
        registration: Registration {
            id: config.provisioner_id.clone(),
            host: config.host.clone(),
            port: config.port,
            capacity_total: config.capacity,
        },
        client,
        config,
    });
    let mut shutdown = Shutdown(shutdown);
    let span = info_span!("provisioner", provisioner = %runtime.config.provisioner_id);
    async move {
        if !runtime.register_at_start(&mut shutdown).await? {
            info!("shut down before registering");
            return Ok(());
        }
        let mut loops = JoinSet::new();
        loops.spawn(
            runtime
                .clone()
                .heartbeat_loop(shutdown.clone())
                .in_current_span(),
        );
        for number in 0..runtime.config.capacity {
            let worker_id = format!(
                "{}.{}.{number}",
                runtime.config.provisioner_id,
                std::process::id()
            );
            let span = info_span!("worker", worker = %worker_id);
            loops.spawn(
                runtime
                    .clone()
                    .worker_loop(worker_id, shutdown.clone())
                    .instrument(span),
            );
        }
        while let Some(joined) = loops.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "a provisioner loop ended abnormally");
            }
        }
        info!("provisioner stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// The shutdown signal. A dropped sender counts as shutdown: nobody could stop us otherwise.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps `duration`; returns `true` if shutdown was requested meanwhile.
    async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => self.is_requested(),
            () = self.requested() => true,
        }
    }
}

struct Runtime {
    config: ProvisionerConfig,
    client: ProvisionerClient,
    registration: Registration,
}

impl Runtime {
    fn backoff(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms)
    }

    /// Registers, retrying while the failure is retryable. `Ok(false)` if shut down first.
    async fn register_at_start(&self, shutdown: &mut Shutdown) -> anyhow::Result<bool> {
        loop {
            let outcome = tokio::select! {
                outcome = self.client.register(&self.registration) => outcome,
                () = shutdown.requested() => return Ok(false),
            };
            match outcome {
                Ok(()) => {
                    info!(server = %self.client.current_server(), capacity = self.config.capacity, "registered");
                    return Ok(true);
                }
                // A 401 is retried too: a new deployment seeds its keys once it has a leader.
                Err(e) if e.is_retryable() || e.is_unauthorized() => {
                    warn!(error = %e, "registration failed; retrying");
                    if shutdown.sleep(self.backoff()).await {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e).context("the server rejected the registration"),
            }
        }
    }

    /// Registers again after the server forgot us (404/403); failures are logged, and the next
    /// 404/403 triggers another attempt.
    async fn register_again(&self) {
        match self.client.register(&self.registration).await {
            Ok(()) => info!(server = %self.client.current_server(), "registered again"),
            Err(e) => warn!(error = %e, "registering again failed"),
        }
    }

    /// Workers per tenant, as the heartbeat reports them: all of them for the configured tenant,
    /// none when serving any tenant (such workers belong to no tenant in particular).
    fn usage(&self) -> Map<String, Value> {
        self.config
            .tenant_filter()
            .map(|tenant| (tenant.to_string(), Value::from(self.config.capacity)))
            .into_iter()
            .collect()
    }

    async fn heartbeat_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut ticks =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; registration just told the server we are alive.
        ticks.tick().await;
        let usage = self.usage();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.requested() => return,
            }
            let outcome = tokio::select! {
                outcome = self.client.heartbeat(&self.config.provisioner_id, &usage) => outcome,
                () = shutdown.requested() => return,
            };
            match outcome {
                Ok(HeartbeatOutcome::Alive) => debug!("heartbeat"),
                Ok(HeartbeatOutcome::NotRegistered) => {
                    info!("the server does not know this provisioner; registering again");
                    self.register_again().await;
                }
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    async fn worker_loop(self: Arc<Self>, worker_id: String, mut shutdown: Shutdown) {
        let take = TakeRequest {
            provisioner_id: self.config.provisioner_id.clone(),
            worker_id,
            tenant_id: self.config.tenant_filter().map(str::to_string),
        };
        debug!("worker started");
        while !shutdown.is_requested() {
            let outcome = tokio::select! {
                outcome = self.client.take(&take) => outcome,
                () = shutdown.requested() => break,
            };
            let pause = match outcome {
                Ok(TakeOutcome::Task(task)) => {
                    if !self.work_on(task, &take, &mut shutdown).await {
                        break;
                    }
                    // Busy queues are drained without pausing.
                    continue;
                }
                Ok(TakeOutcome::Empty) => self.backoff(),
                Ok(TakeOutcome::NotRegistered) => {
                    info!("take refused: not registered; registering again");
                    self.register_again().await;
                    self.backoff()
                }
                Err(e) => {
                    warn!(error = %e, "take failed");
                    self.backoff()
                }
            };
            if shutdown.sleep(pause).await {
                break;
            }
        }
        debug!("worker stopped");
    }

    /// Runs one task and reports it. Returns `false` if shutdown interrupted it.
    async fn work_on(&self, task: Value, take: &TakeRequest, shutdown: &mut Shutdown) -> bool {
        let Some(task_id) = task
            .get("taskId")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            // Without an id the result cannot be reported; the server will time the task out.
            error!(%task, "taken task has no taskId; skipping it");
            return true;
        };
        let task_name = task
            .get("taskName")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let tenant_id = self
            .config
            .tenant_filter()
            .or_else(|| task.get("tenantId").and_then(Value::as_str))
            .unwrap_or_default()
            .to_string();
        let span = info_span!("task", task = %task_id, name = %task_name);
        async {
            info!("running task");
            // The plugin runs in its own tokio task so that a panicking plugin fails the task
            // instead of killing this worker.
            let plugins = self.config.plugins.clone();
            let running =
                tokio::spawn(async move { plugins.dispatch(&task).await }.in_current_span());
            let abort = running.abort_handle();
            let result = tokio::select! {
                joined = running => joined.unwrap_or_else(|e| {
                    PluginResult::failure(format!("plugin crashed: {e}"))
                }),
                () = shutdown.requested() => {
                    abort.abort();
                    info!("shutting down: abandoning the task to the server's task timeout");
                    return false;
                }
            };
            debug!(status = result.status, "task ran");
            let finish = FinishRequest::new(take, tenant_id, task_id, result);
            self.report(&finish, shutdown).await
        }
        .instrument(span)
        .await
    }

    /// Reports a result, retrying transient failures for [`FINISH_RETRY_FOR`]. A result the
    /// server refuses (a 4xx other than the protocol's answers, e.g. 413 or 400 for a result
    /// too large) is replaced once by a failure report of this attempt: dropping it would leave
    /// the task held by this worker, which would be handed the same task again at once, over
    /// and over. Returns `false` if shutdown interrupted the retries.
    async fn report(&self, finish: &FinishRequest, shutdown: &mut Shutdown) -> bool {
        let mut failure_report: Option<FinishRequest> = None;
        let started = Instant::now();
        let mut pause = self.backoff();
        let mut attempt = 0u32;
        while started.elapsed() < FINISH_RETRY_FOR {
            attempt += 1;
            let current = failure_report.as_ref().unwrap_or(finish);
            match self.client.finish(current).await {
                Ok(FinishOutcome::Accepted) => {
                    debug!("task finished");
                    return true;
                }
                Ok(FinishOutcome::NotOwner) => {
                    warn!("the server no longer assigns this task to this worker (417); dropping the result");
                    return true;
                }
                Ok(FinishOutcome::NotRegistered) => {
                    info!("finish refused: not registered; registering again");
                    self.register_again().await;
                }
                Ok(FinishOutcome::NotHere { answer }) => {
                    warn!(%answer, "the task belongs to another datacenter; dropping the result");
                    return true;
                }
                Err(e) if e.is_retryable() => warn!(attempt, error = %e, "finish failed"),
                Err(e) if failure_report.is_none() => {
                    error!(error = %e, "finish rejected; reporting the attempt as failed");
                    failure_report = Some(finish.undeliverable(&e.to_string()));
                    // The failure report is sent at once: nothing about it needs waiting for.
                    continue;
                }
                Err(e) => {
                    error!(error = %e, "the failure report was rejected too; leaving the task to the server's task timeout");
                    return true;
                }
            }
            if shutdown.sleep(pause).await {
                return false;
            }
            pause = (pause * 2).min(MAX_FINISH_BACKOFF.max(self.backoff()));
        }
        error!(
            attempts = attempt,
            "could not report the task; leaving it to the server's task timeout"
        );
        true
    }
}
