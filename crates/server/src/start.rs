//! Starting a node or a witness: what the caller injects ([`StartOptions`]: clock, stores,
//! network, random source), the handles that stop them, and the loops they spawn.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use coopr_raft::{RaftConfig, RaftHandle, RaftStores};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::config::{AuthMode, ServerConfig};
use crate::core::{self, Core};
use crate::placement::group::PlacementGroup;
use crate::random::Random;
use crate::supervise::{spawn_supervised, Loops};
use crate::{api, driver, placement, replication, tenant_push};

use crate::metrics::metrics_handle;
use crate::App;

/// How often the placement leader looks for dead DCs and due handovers (at most).
const PLACEMENT_TICK: Duration = Duration::from_millis(100);

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The internal API (Raft RPCs), when the DC has several members.
    pub internal_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, stops the DC log and waits for every task to end, so that the
    /// stores are released (a restart on the same data dir can open them again).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.app.core.raft().clone().shutdown().await;
    }
}

/// A running witness: a voter of the placement group and nothing else (no DC log, no user
/// API, no shards). It gives a deployment of two DCs a third vote, so that either DC alone can
/// still reach a majority of the placement group when the other is gone.
pub struct WitnessHandle {
    /// The internal API (the placement group's Raft RPCs and calls).
    pub internal_addr: SocketAddr,
    pub group: Arc<PlacementGroup>,
    /// The witness's supervised loops.
    pub loops: Arc<Loops>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WitnessHandle {
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.group.raft().clone().shutdown().await;
    }
}

/// What the caller of [`start_with`] chooses for a node: its clock and where its Raft groups
/// keep their state. [`start`] uses [`StartOptions::production`]; a simulation gives every node
/// a [`SimClock`] and in-memory stores.
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    pub storage: Storage,
    pub network: Network,
    /// Ids, generated keys and jitter ([`random`]): the OS, or a simulation's seed.
    pub random: Arc<Random>,
}

impl StartOptions {
    /// The OS's clocks, redb files under the data dir, and TCP.
    pub fn production() -> StartOptions {
        StartOptions {
            clock: Arc::new(SystemClock::new()),
            storage: Storage::DataDir,
            network: Network::Tcp,
            random: Arc::new(Random::Os),
        }
    }

    /// `clock`, and both Raft groups in memory: the node writes nothing to its data dir.
    pub fn in_memory(clock: Arc<dyn Clock>) -> StartOptions {
        StartOptions {
            clock,
            storage: Storage::Given {
                dc_log: RaftStores::in_memory(),
                placement: RaftStores::in_memory(),
            },
            network: Network::Tcp,
            random: Arc::new(Random::Os),
        }
    }

    /// The same options on `network`.
    pub fn on(self, network: Network) -> StartOptions {
        StartOptions { network, ..self }
    }
}

/// How a node reaches the others and is reached.
#[derive(Clone)]
pub enum Network {
    /// Listeners on the configured addresses; calls over HTTP.
    Tcp,
    /// No sockets: the node's routers are served on the in-memory network under
    /// `http://<listen>` and `http://<internal_listen>`, and it calls the others through it
    /// (links named by the config's `node`; see [`coopr_raft::MemNetwork`]).
    Mem(coopr_raft::MemNetwork),
}

/// Longest a TCP connect to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of a call to another node that sets none itself (forwarded requests).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Network {
    /// The transport of a Raft group's RPCs: over TCP, connects bounded by the election
    /// timeout.
    fn raft_transport(
        &self,
        node: &str,
        election_timeout_max_ms: u64,
    ) -> anyhow::Result<Arc<dyn coopr_raft::Transport>> {
        Ok(match self {
            Network::Tcp => Arc::new(coopr_raft::HttpTransport::new(Duration::from_millis(
                election_timeout_max_ms,
            ))?),
            Network::Mem(network) => network.transport(node),
        })
    }

    /// The transport of the node's other calls.
    fn transport(&self, node: &str) -> anyhow::Result<Arc<dyn coopr_raft::Transport>> {
        Ok(match self {
            Network::Tcp => Arc::new(coopr_raft::HttpTransport::with_timeout(
                CONNECT_TIMEOUT,
                CALL_TIMEOUT,
            )?),
            Network::Mem(network) => network.transport(node),
        })
    }

    /// Serves `router` at `addr` until `stop`: the address it serves at, and the task.
    async fn serve(
        &self,
        node: &str,
        addr: &str,
        router: axum::Router,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        match self {
            Network::Tcp => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                Ok((local, serve(listener, router, stop)))
            }
            Network::Mem(network) => {
                let url = format!("http://{addr}");
                network.serve(node, &url, router);
                let network = network.clone();
                let task = tokio::spawn(async move {
                    let _ = stop.wait_for(|s| *s).await;
                    network.unserve(&url);
                });
                let local = addr
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                Ok((local, task))
            }
        }
    }
}

/// Where a node's Raft groups keep their state.
pub enum Storage {
    /// redb files under the config's `data_dir`: `raft/` (the DC log), `placement/` (the
    /// placement group, on its voters); a generated superadmin key goes to `admin-key` there.
    DataDir,
    /// The stores given (e.g. [`RaftStores::in_memory`]): the DC log's, and the placement
    /// group's (used only by a placement voter or a witness). Nothing is written to the data
    /// dir, which is not even created; a node that would generate the superadmin key must be
    /// given one (`admin_key`, or `demo`) instead.
    Given {
        dc_log: RaftStores,
        placement: RaftStores,
    },
}

impl Storage {
    /// Opens (or takes) the DC log's stores.
    async fn dc_log(&self, config: &ServerConfig) -> anyhow::Result<RaftStores> {
        match self {
            Storage::DataDir => {
                let dir = config.data_dir.join("raft");
                tokio::task::spawn_blocking(move || RaftStores::open(&dir))
                    .await?
                    .context("cannot open the DC log's stores")
            }
            Storage::Given { dc_log, .. } => Ok(dc_log.clone()),
        }
    }

    /// Opens the node's job archive (`raft/archive.redb`; in memory without a data dir: it is
    /// rebuilt from the DC log's snapshot at every start anyway, see [`crate::archive`]).
    async fn archive(&self, config: &ServerConfig) -> anyhow::Result<Arc<coopr_store::Archive>> {
        match self {
            Storage::DataDir => {
                let path = config.data_dir.join("raft").join("archive.redb");
                let archive =
                    tokio::task::spawn_blocking(move || coopr_store::Archive::open(&path))
                        .await?
                        .context("cannot open the job archive")?;
                Ok(Arc::new(archive))
            }
            Storage::Given { .. } => Ok(Arc::new(coopr_store::Archive::in_memory())),
        }
    }

    /// Opens (or takes) the placement group's stores.
    async fn placement(&self, config: &ServerConfig) -> anyhow::Result<RaftStores> {
        match self {
            Storage::DataDir => {
                let dir = config.data_dir.join("placement");
                tokio::task::spawn_blocking(move || RaftStores::open(&dir))
                    .await?
                    .context("cannot open the placement group's stores")
            }
            Storage::Given { placement, .. } => Ok(placement.clone()),
        }
    }

    /// Creates the data dir when the node keeps its state there.
    fn prepare(&self, config: &ServerConfig) -> anyhow::Result<()> {
        match self {
            Storage::DataDir => std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data dir {}", config.data_dir.display())),
            Storage::Given { .. } => Ok(()),
        }
    }
}

/// Starts a witness (see [`WitnessHandle`]) with the OS's clocks and its state under its data
/// dir: see [`start_witness_with`].
pub async fn start_witness(config: ServerConfig) -> anyhow::Result<WitnessHandle> {
    start_witness_with(config, StartOptions::production()).await
}

/// Starts a witness (see [`WitnessHandle`]): needs `placement_node_id`, `placement_members`,
/// `internal_listen`, `secret` and (with [`Storage::DataDir`]) `data_dir`; its `dc` names the
/// witness site.
pub async fn start_witness_with(
    config: ServerConfig,
    options: StartOptions,
) -> anyhow::Result<WitnessHandle> {
    config.validate()?;
    if !config.witness || config.placement_node_id.is_none() || config.remote_dcs.is_empty() {
        anyhow::bail!("a witness needs witness = true, placement_node_id and the data DCs");
    }
    if config.secret.as_ref().is_none_or(|s| s.len() < 16) {
        anyhow::bail!("a witness needs a secret of at least 16 characters");
    }
    let Some(listen) = config.internal_listen.clone() else {
        anyhow::bail!("a witness needs internal_listen");
    };
    options.storage.prepare(&config)?;
    let stores = options.storage.placement(&config).await?;
    let network = &options.network;
    let group = PlacementGroup::start(
        &config,
        stores,
        options.clock.clone(),
        network.transport(&config.node)?,
        network.raft_transport(&config.node, config.placement_election_timeout_ms.1)?,
    )
    .await?;
    let (shutdown, stop) = watch::channel(false);
    let tick = Duration::from_millis(config.lease_ms / 3).min(PLACEMENT_TICK);
    let loops = Arc::new(Loops::default());
    let router = api::admission::Admission::internal(&config).layer(group.router());
    let (internal_addr, served) = network
        .serve(&config.node, &listen, router, stop.clone())
        .await?;
    let mut tasks = vec![served];
    tasks.extend(spawn_placement_loops(&loops, &group, tick, &stop));
    tracing::info!(%internal_addr, site = %config.dc, "coopr witness (placement voter) listening");
    Ok(WitnessHandle {
        internal_addr,
        group,
        loops,
        shutdown,
        tasks,
    })
}

/// How long a server of a single-member DC waits at start for its own election.
const SINGLE_NODE_ELECTION_WAIT: Duration = Duration::from_secs(10);

/// Opens the data directory, joins (or bootstraps) the DC log and starts serving, on the OS's
/// clocks (the production node; see [`start_with`]).
pub async fn start(config: ServerConfig) -> anyhow::Result<ServerHandle> {
    start_with(config, StartOptions::production()).await
}

/// Starts a node on the clock and stores the caller chose: joins (or bootstraps) the DC log and
/// starts serving.
pub async fn start_with(
    config: ServerConfig,
    options: StartOptions,
) -> anyhow::Result<ServerHandle> {
    config.validate()?;
    for (api, mode) in [
        ("user", config.user_api_auth),
        ("provisioner", config.provisioner_api_auth),
    ] {
        if mode == AuthMode::TrustedHeaders {
            tracing::warn!(
                api,
                "the {api} API trusts Coopr-UserID/Coopr-TenantID without an API key \
                 (auth = trusted-headers): only safe behind an authenticating proxy or on a \
                 private network"
            );
        }
    }
    if matches!(options.storage, Storage::Given { .. })
        && config.admin_key.is_none()
        && !config.demo
    {
        // The generated key would be written to the data dir.
        anyhow::bail!("a node without a data dir needs admin_key (or demo)");
    }
    options.storage.prepare(&config)?;
    let stores = options.storage.dc_log(&config).await?;
    let clock = options.clock.clone();
    let archive = options.storage.archive(&config).await?;
    let (state_machine, parts) = Core::state_machine(config.shard_count, archive);
    let members: BTreeMap<u64, String> = if config.members.is_empty() {
        // A DC of one: no peer ever calls this address.
        BTreeMap::from([(config.node_id, "http://127.0.0.1:1".to_string())])
    } else {
        config
            .members
            .iter()
            .map(|(id, m)| (*id, m.internal.clone()))
            .collect()
    };
    let single = members.len() == 1;
    let secret = config
        .secret
        .clone()
        .unwrap_or_else(|| options.random.new_secret());
    let mut raft_config = RaftConfig::new(config.node_id, members, secret);
    raft_config.group = format!("dc-{}", config.dc);
    raft_config.snapshot_every = config.snapshot_every;
    raft_config.snapshot_log_percent = config.snapshot_log_percent;
    raft_config.logs_kept_after_snapshot = config.logs_kept_after_snapshot;
    raft_config.election_timeout_min_ms = config.election_timeout_ms.0;
    raft_config.election_timeout_max_ms = config.election_timeout_ms.1;
    raft_config.heartbeat_interval_ms = (config.election_timeout_ms.0 / 3).max(10);
    raft_config.write_timeout_ms = config.write_timeout_ms;
    let network = options.network.clone();
    let raft_transport = network.raft_transport(&config.node, config.election_timeout_ms.1)?;
    let raft = coopr_raft::start_with(raft_config, stores, state_machine, raft_transport)
        .await
        .context("cannot start the DC log")?;
    let transport = network.transport(&config.node)?;
    let (shutdown, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    let loops = Arc::new(Loops::default());
    let placement_group = match config.placement_node_id {
        Some(_) => {
            let stores = options.storage.placement(&config).await?;
            Some(
                PlacementGroup::start(
                    &config,
                    stores,
                    clock.clone(),
                    transport.clone(),
                    network.raft_transport(&config.node, config.placement_election_timeout_ms.1)?,
                )
                .await?,
            )
        }
        None => None,
    };

    let internal_addr = match &config.internal_listen {
        Some(addr) => {
            // The Raft routes (the DC log's, and the placement group's merged below) carry their
            // own body limit, `coopr_raft::wire::MAX_RPC_BODY_BYTES` (64 MiB: snapshot chunks
            // and appends of large entries); no layer here may lower it. The placement calls
            // keep axum's default (2 MB), far above their bodies. Admission (limit and timeout
            // of the internal class) is this listener's own: no user load reaches it.
            let mut router = coopr_raft::router(raft.clone());
            if let Some(group) = &placement_group {
                router = router.merge(group.router());
            }
            let router = api::admission::Admission::internal(&config).layer(router);
            let (local, served) = network
                .serve(&config.node, addr, router, stop.clone())
                .await?;
            tasks.push(served);
            Some(local)
        }
        None => None,
    };
    if let Some(group) = &placement_group {
        // The leader's duties are mostly reads (a proposal only when something is due): a
        // short tick keeps failover detection close to the lease's end.
        let tick = Duration::from_millis(config.lease_ms / 3).min(PLACEMENT_TICK);
        tasks.extend(spawn_placement_loops(&loops, group, tick, &stop));
    }
    let core = Core::new(parts, raft.clone(), clock.clone());
    let map = RwLock::new(Arc::new(config.initial_map()));
    let app = Arc::new(App {
        core,
        map,
        lease: Mutex::new(None),
        placement_state: Mutex::new(None),
        placement_group,
        rerouted: AtomicU64::new(0),
        takeovers_seen: Mutex::new(BTreeMap::new()),
        loops: loops.clone(),
        write_queue: core::WriteQueue::new(config.max_client_writes_in_flight),
        renew_now: tokio::sync::Notify::new(),
        replication: replication::Progress::new(clock.clone()),
        stopping: stop.clone(),
        metrics: metrics_handle(),
        clock,
        heartbeats: Mutex::new(BTreeMap::new()),
        next_shard: AtomicU32::new(0),
        retire_cursor: AtomicU32::new(0),
        takes_in_flight: Default::default(),
        seen_seeded: Default::default(),
        leader_since: Mutex::new(None),
        pushed: Mutex::new(tenant_push::Pushed::default()),
        transport,
        random: options.random.clone(),
        config,
    });
    // The DC bootstraps once its configured members are reachable; a restarted node rejoins.
    tasks.push({
        let (raft, stop) = (raft.clone(), stop.clone());
        spawn_supervised(&loops, "dc-bootstrap", stop.clone(), move || {
            bootstrap_dc(raft.clone(), stop.clone())
        })
    });
    if single {
        // A DC of one elects itself at once; wait for that and seed, so the node is ready when
        // `start` returns.
        let mut leader = raft.watch_leader();
        let _ =
            tokio::time::timeout(SINGLE_NODE_ELECTION_WAIT, leader.wait_for(|l| l.is_some())).await;
        // With other DCs, writing waits for the lease (the driver takes up leadership then).
        if raft.is_leader() && !app.config.multi_dc() {
            driver::become_leader(&app).await?;
        }
    }
    if app.config.multi_dc() {
        tasks.push({
            let (app, stop) = (app.clone(), stop.clone());
            spawn_supervised(&loops, "lease", stop.clone(), move || {
                placement::lease::run(app.clone(), stop.clone())
            })
        });
        if app.placement_group.is_some() {
            let (app, stop) = (app.clone(), stop.clone());
            tasks.push(spawn_supervised(
                &loops,
                "placement-wake",
                stop.clone(),
                move || placement::lease::wake(app.clone(), stop.clone()),
            ));
        }
    }
    tasks.push({
        let (app, stop) = (app.clone(), stop.clone());
        spawn_supervised(&loops, "driver", stop.clone(), move || {
            driver::run(app.clone(), stop.clone())
        })
    });
    tasks.extend(replication::puller::spawn(&app, &stop));
    let listen = app.config.listen.clone();
    let (addr, served) = network
        .serve(&app.config.node, &listen, api::router(app.clone()), stop)
        .await?;
    tasks.push(served);
    tracing::info!(%addr, ?internal_addr, dc = %app.config.dc, node = %app.config.node, "coopr server listening");
    Ok(ServerHandle {
        addr,
        internal_addr,
        app,
        shutdown,
        tasks,
    })
}

/// The placement voter's loops: its one-time initialization and the leader's duties.
fn spawn_placement_loops(
    loops: &Arc<Loops>,
    group: &Arc<PlacementGroup>,
    tick: Duration,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let initialize = {
        let (group, stop) = (group.clone(), stop.clone());
        spawn_supervised(loops, "placement-bootstrap", stop.clone(), move || {
            group.clone().initialize(stop.clone())
        })
    };
    let run = {
        let (group, stop) = (group.clone(), stop.clone());
        spawn_supervised(loops, "placement", stop.clone(), move || {
            group.clone().run(tick, stop.clone())
        })
    };
    vec![initialize, run]
}

/// Serves `router` until `stop`. Not supervised: hyper runs every connection in its own task,
/// so a panic in a handler ends that connection only, never the listener.
fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "server stopped");
        }
    })
}

/// Initializes the DC log once its members answer (retrying), unless it already is.
async fn bootstrap_dc(raft: RaftHandle, mut stop: watch::Receiver<bool>) {
    loop {
        match raft.initialize_if_needed().await {
            Ok(initialized) => {
                if initialized {
                    tracing::info!("DC log initialized");
                }
                return;
            }
            Err(e) => tracing::info!(error = %e, "DC log not initialized yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Writes a file only its owner may read (keys, secrets): created with mode 0600, so it is
/// never readable by others, not even for a moment.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on open: narrow it too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod secrets_tests {
    use super::*;

    /// A private file is readable by its owner only, also when it existed with a wider mode.
    #[cfg(unix)]
    #[test]
    fn private_files_are_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin-key");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, "secret\n").expect("write_private");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret\n");
        let fresh = dir.path().join("secret");
        write_private(&fresh, "x").expect("write_private");
        let mode = std::fs::metadata(&fresh)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
