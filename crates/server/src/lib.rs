//! The coopr server on one node: the REST API (`api`), the write path (`core`: log, apply,
//! snapshots) and the job driver (`driver`: task timeouts, dead provisioners).
//!
//! ```text
//!  HTTP (axum) --> api::* handlers --validate--> Core::propose(Command)
//!                        ^                              | group commit: LogStore::append + fsync
//!                        |                              v
//!                  Core::read() <------------- State::apply (coopr-state, deterministic)
//!                                                       ^
//!  driver: every tick, ExpireTasks / ReleaseProvisioner-'
//! ```

pub mod api;
pub mod config;
pub mod core;
pub mod driver;
pub mod seed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Context;
use coopr_state::{recover, CommandResult};
use coopr_store::{LogStore, RedbStore};
use coopr_types::{ClusterStatus, ShardId};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::config::ServerConfig;
use crate::core::Core;

/// Everything a request handler needs.
pub struct App {
    pub config: ServerConfig,
    pub core: Arc<Core>,
    pub metrics: PrometheusHandle,
    heartbeats: Mutex<HashMap<String, Instant>>,
    next_shard: AtomicU32,
    started: Instant,
    /// Take proposals not yet answered (so idle polls do not race for the same task).
    pub takes_in_flight: std::sync::atomic::AtomicUsize,
}

impl App {
    /// The outcome already recorded for an idempotency key (a retried request).
    pub fn previous_outcome(&self, key: Option<&str>) -> Option<CommandResult> {
        key.and_then(|k| self.core.read().idempotent_outcome(k).cloned())
    }

    /// The shard a new cluster goes to: round-robin over the shards this node writes.
    pub fn pick_shard(&self) -> ShardId {
        ShardId(self.next_shard.fetch_add(1, Ordering::Relaxed) % self.config.shard_count)
    }

    pub fn heartbeat(&self, provisioner: &str) {
        if let Ok(mut map) = self.heartbeats.lock() {
            map.insert(provisioner.to_string(), Instant::now());
        }
    }

    pub fn forget_provisioner(&self, provisioner: &str) {
        if let Ok(mut map) = self.heartbeats.lock() {
            map.remove(provisioner);
        }
    }

    /// When the provisioner was last heard from (or the server started, whichever is later).
    pub fn last_heard(&self, provisioner: &str) -> Instant {
        let heard = self
            .heartbeats
            .lock()
            .ok()
            .and_then(|m| m.get(provisioner).copied());
        heard.map_or(self.started, |h| h.max(self.started))
    }

    /// Sets the gauges that are computed from the state at scrape time.
    pub fn refresh_gauges(&self) {
        let state = self.core.read();
        let mut by_status: HashMap<ClusterStatus, u64> = HashMap::new();
        for c in state.clusters() {
            *by_status.entry(c.cluster.status).or_default() += 1;
        }
        for status in ClusterStatus::ALL {
            let n = by_status.get(status).copied().unwrap_or(0);
            metrics::gauge!("coopr_clusters", "status" => status.as_str()).set(n as f64);
        }
        metrics::gauge!("coopr_tasks_queued").set(state.queued_tasks().count() as f64);
        metrics::gauge!("coopr_provisioners").set(state.local.provisioners.len() as f64);
        metrics::gauge!("coopr_log_applied_index").set(self.core.applied_index() as f64);
    }
}

/// The process-wide Prometheus recorder (several servers in one process share it).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then this one renders nothing, which is
            // better than refusing to start.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests and waits for the server and driver tasks to end, so that the
    /// store is released (a restart on the same data dir can open it again).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let _ = self.driver.await;
    }
}

/// Opens the data directory, recovers the state and starts serving.
pub async fn start(config: ServerConfig) -> anyhow::Result<ServerHandle> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let path = config.data_dir.join("coopr.redb");
    let store: Arc<dyn LogStore> = Arc::new(
        tokio::task::spawn_blocking(move || RedbStore::open(&path))
            .await?
            .context("cannot open the local store")?,
    );
    start_with_store(config, store).await
}

/// Starts a server on a given store (tests use an in-memory one).
pub async fn start_with_store(
    config: ServerConfig,
    store: Arc<dyn LogStore>,
) -> anyhow::Result<ServerHandle> {
    config.validate()?;
    let shard_count = config.shard_count;
    let recover_store = store.clone();
    let recovered =
        tokio::task::spawn_blocking(move || recover(recover_store.as_ref(), shard_count)).await??;
    tracing::info!(
        last_index = recovered.last_index,
        replayed = recovered.replayed,
        clusters = recovered.state.clusters().count(),
        "state recovered"
    );
    let core = Core::start(
        recovered.state,
        store,
        recovered.last_index,
        config.snapshot_every,
    );
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App {
        core,
        metrics: metrics_handle(),
        heartbeats: Mutex::new(HashMap::new()),
        next_shard: AtomicU32::new(0),
        takes_in_flight: Default::default(),
        started: Instant::now(),
        config,
    });
    seed::bootstrap(&app).await?;
    let (shutdown, mut stop) = watch::channel(false);
    let driver = tokio::spawn(driver::run(app.clone(), shutdown.subscribe()));
    let router = api::router(app.clone());
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    tracing::info!(%addr, dc = %app.config.dc, node = %app.config.node, "coopr server listening");
    Ok(ServerHandle {
        addr,
        app,
        shutdown,
        task,
        driver,
    })
}

/// A fresh UUID-shaped identifier (tenant IDs). Not cryptographic.
pub fn new_id() -> String {
    let h = unique_hash();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A fresh secret (API keys): 32 hex characters from the time, the process and a counter,
/// hashed with SHA-256.
pub fn new_secret() -> String {
    unique_hash()[..32].to_string()
}

fn unique_hash() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{nanos}/{}/{}/{:p}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &COUNTER
    );
    coopr_types::hash_api_key(&seed)
}
