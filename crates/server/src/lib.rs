//! The coopr server on one node: the REST API (`api`), the write path (`core`: the DC log on
//! Raft), the job driver (`driver`: runs on the DC log's leader only) and first-start seeding.
//!
//! ```text
//!  HTTP (axum) --> route_to_leader: another DC's cluster? write/strong read: forward to that DC;
//!                                   read: serve from the replica copy
//!                                   follower? forward the write to the leader's API
//!                        |
//!                  api::* handlers --validate--> Core::propose(Command) --> Raft (majority fsync)
//!                        ^                                                     |
//!                  Core::read() <---- local State <---- DcStateMachine::apply (every node)
//!  driver (leader only): seed, ExpireTasks, ReleaseProvisioner --> Core::propose
//!  replication::puller (leader only): pull other DCs' shards --> ApplyReplicationBatch
//!  replication::owner: POST /internal/replication/pull (leader only) <-- other DCs' pullers
//! ```
//!
//! Shards are placed statically over the deployment's DCs ([`placement`]): this DC creates
//! clusters only in shards it owns and replicates every other shard from its owner.

pub mod api;
pub mod clock;
pub mod config;
pub mod core;
pub mod driver;
pub mod placement;
pub mod random;
pub mod replication;
pub mod seed;
pub mod supervise;
pub mod tenant_push;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context;
use coopr_raft::{RaftConfig, RaftHandle, RaftStores};
use coopr_state::CommandResult;
use coopr_types::{ClusterStatus, ShardId};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::clock::{Clock, SimClock, SystemClock};
pub use crate::config::{AuthMode, Member, PlacementMember, ServerConfig};
use crate::core::Core;
use crate::placement::group::PlacementGroup;
use crate::placement::lease::Held;
use crate::placement::ShardMap;
pub use crate::random::Random;
use crate::supervise::{spawn_supervised, Loops};

/// Everything a request handler needs.
pub struct App {
    pub config: ServerConfig,
    pub core: Arc<Core>,
    pub metrics: PrometheusHandle,
    /// This node's clock: every time the server's logic reads comes from here (see [`clock`]).
    pub clock: Arc<dyn Clock>,
    /// When each provisioner was last heard from (the clock's monotonic ms).
    heartbeats: Mutex<BTreeMap<String, u64>>,
    next_shard: AtomicU32,
    /// This node's copy of the shard map (see [`placement`]).
    map: RwLock<Arc<ShardMap>>,
    /// The lease this node holds while it leads a DC of a multi-DC deployment.
    pub lease: Mutex<Option<Held>>,
    /// The placement group's state as last fetched (leases, history), for the admin API.
    placement_state: Mutex<Option<coopr_placement::PlacementState>>,
    /// This node's voter of the placement group, if it is one.
    pub placement_group: Option<Arc<PlacementGroup>>,
    /// Requests this node forwarded to a DC that had lost the shard, then to the new owner.
    pub rerouted: AtomicU64,
    /// Wakes the lease loop for a renewal now (ownership changes, handover progress).
    pub renew_now: tokio::sync::Notify,
    /// Since when this node leads the DC log (the clock's monotonic ms; the job engine runs
    /// only then).
    pub leader_since: Mutex<Option<u64>>,
    /// What this node, as the DC's leader, told the provisioners to run ([`tenant_push`]).
    pub pushed: Mutex<tenant_push::Pushed>,
    /// How this node calls other nodes (forwarded requests, placement calls, lease renewals,
    /// replication pulls): HTTP, or in memory in a simulation.
    pub transport: Arc<dyn coopr_raft::Transport>,
    /// Where ids, generated keys and jitter come from ([`random`]).
    pub random: Arc<Random>,
    /// Take proposals not yet answered (so idle polls do not race for the same task).
    pub takes_in_flight: std::sync::atomic::AtomicUsize,
    /// What the replication streams and pulls know (leader only).
    pub replication: replication::Progress,
    /// Becomes true when the node stops (ends long polls).
    pub stopping: watch::Receiver<bool>,
    /// When this node first saw each takeover order (shard, takeover number) in its grant:
    /// the bounded time it may still pull the old owner's records runs from there (the clock's
    /// monotonic ms).
    pub takeovers_seen: Mutex<BTreeMap<(ShardId, u64), u64>>,
    /// The node's supervised loops (see [`supervise`]): `/ready` fails while one is down.
    pub loops: Arc<Loops>,
    /// Bounds the client writes in flight to the DC log (see [`core::WriteQueue`]).
    pub write_queue: core::WriteQueue,
}

impl App {
    /// The outcome already recorded for an idempotency key (a retried request).
    ///
    /// An outcome whose operation was lost in a failover (applied here after the point where
    /// another DC took the shard over) answers 409 `operation_lost`, saying where the shard
    /// went: the client sends the request again without that key (it then runs at the new
    /// owner).
    pub fn previous_outcome(&self, key: Option<&str>) -> Option<CommandResult> {
        let state = self.core.read();
        let previous = state.idempotent_outcome(key?)?;
        if let Some(lost) = state.lost_outcome(&previous) {
            return Some(Err(coopr_state::CommandError::conflict(
                coopr_state::ErrorCode::OperationLost,
                format!(
                    "this request was applied in DC {} (shard {}, epoch {}, seq {}) after DC {} \
                     took the shard over at {:?}; it was never replicated and is in DC {}'s \
                     lost-operations report; send it again with a new Idempotency-Key",
                    self.config.dc,
                    lost.shard,
                    lost.epoch,
                    lost.seq,
                    lost.new_owner,
                    lost.takeover_point,
                    self.config.dc
                ),
            )));
        }
        Some(previous)
    }

    /// The shard a new cluster goes to: round-robin over the cluster shards this DC owns;
    /// `None` when it owns none (more DCs than shards).
    pub fn pick_shard(&self) -> Option<ShardId> {
        let map = self.placement();
        // Shards adopted in the local state and not being handed over (others would refuse
        // the write).
        let owned: Vec<ShardId> = {
            let state = self.core.read();
            map.cluster_shards_owned_by(&self.config.dc)
                .filter(|s| state.replica(*s).is_none() && map.entry(*s).status == "active")
                .collect()
        };
        if owned.is_empty() {
            return None;
        }
        let n = self.next_shard.fetch_add(1, Ordering::Relaxed) as usize;
        Some(owned[n % owned.len()])
    }

    /// Whether this DC owns `shard` (writes it); otherwise it holds a replica copy.
    pub fn owns(&self, shard: ShardId) -> bool {
        self.placement().owner(shard) == self.config.dc
    }

    /// This node's current copy of the shard map.
    pub fn placement(&self) -> Arc<ShardMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the shard map; `change` says whether it changed anything.
    pub fn update_map(&self, change: impl FnOnce(&mut ShardMap) -> bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**map).clone();
        if change(&mut next) {
            tracing::info!("shard map changed");
            *map = Arc::new(next);
        }
    }

    /// Replaces the shard map wholesale, even by an older one: only for tests that need a node
    /// with a stale map (the normal paths only move a map forward).
    #[doc(hidden)]
    pub fn replace_map_for_tests(&self, map: ShardMap) {
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// The placement group's state as last fetched (`None` with one DC or before the first).
    pub fn placement_state(&self) -> Option<coopr_placement::PlacementState> {
        self.placement_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_placement_state(&self, state: coopr_placement::PlacementState) {
        *self
            .placement_state
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// Tenants, API keys and catalogs as this DC reads them (see [`coopr_state::State::global_view`]):
    /// its own global shard where it owns it, else its replica copy of the owner's.
    ///
    /// Decided by the local state (which copy it holds), not the map: between a takeover and
    /// the adoption the map already names this DC while the data is still the replica copy.
    pub fn global<'a>(&self, state: &'a coopr_state::State) -> coopr_state::GlobalRef<'a> {
        state.global_data()
    }

    /// How stale this node's copy of `shard` may be, in ms: 0 for a shard this DC owns, else
    /// see [`replication::staleness_ms`].
    pub fn staleness_ms(&self, shard: ShardId) -> u64 {
        if self.owns(shard) {
            return 0;
        }
        replication::staleness_ms(
            &self.core.read(),
            &self.replication,
            shard,
            self.clock.wall_ms(),
        )
    }

    /// `<dc>/<node>`: who served a request (the `Coopr-Served-By` header).
    pub fn served_by(&self) -> String {
        format!("{}/{}", self.config.dc, self.config.node)
    }

    pub fn heartbeat(&self, provisioner: &str) {
        if let Ok(mut map) = self.heartbeats.lock() {
            map.insert(provisioner.to_string(), self.clock.mono_ms());
        }
    }

    pub fn forget_provisioner(&self, provisioner: &str) {
        if let Ok(mut map) = self.heartbeats.lock() {
            map.remove(provisioner);
        }
    }

    /// When the provisioner was last heard from, or this node became leader, whichever is later
    /// (heartbeats go to the leader, so a new leader gives every provisioner a full timeout), on
    /// the clock's monotonic ms.
    pub fn last_heard(&self, provisioner: &str) -> u64 {
        let since = self
            .leader_since
            .lock()
            .ok()
            .and_then(|l| *l)
            .unwrap_or_else(|| self.clock.mono_ms());
        let heard = self
            .heartbeats
            .lock()
            .ok()
            .and_then(|m| m.get(provisioner).copied());
        heard.map_or(since, |h| h.max(since))
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
        metrics::gauge!("coopr_write_queue_in_flight").set(self.write_queue.in_flight() as f64);
        metrics::gauge!("coopr_log_applied_index").set(self.core.applied_index() as f64);
        let raft = self.core.raft().status();
        metrics::gauge!("coopr_raft_term").set(raft.term as f64);
        metrics::gauge!("coopr_raft_is_leader").set(if self.core.raft().is_leader() {
            1.0
        } else {
            0.0
        });
        let lag = raft
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(raft.last_applied.unwrap_or(0));
        metrics::gauge!("coopr_raft_apply_lag_entries").set(lag as f64);
        if self.config.multi_dc() {
            // The DC's lease as this node holds it (0 on followers and once it ran out).
            let remaining = self.held_lease().map_or(0, |held| {
                let lease = &held.lease;
                let end = lease.started_before_send_ms + lease.grant.lease_ms;
                end.saturating_sub(lease.grant.max_clock_offset_ms)
                    .saturating_sub(self.clock.mono_ms())
            });
            metrics::gauge!("coopr_lease_remaining_ms").set(remaining as f64);
            let owned = self.placement().owned_by(&self.config.dc).count();
            metrics::gauge!("coopr_shards_owned").set(owned as f64);
        }
        if !self.config.remote_dcs.is_empty() {
            replication::refresh_gauges(
                &self.config.dc,
                &self.placement(),
                &state,
                &self.replication,
                self.clock.wall_ms(),
            );
        }
    }
}

/// How often the placement leader looks for dead DCs and due handovers (at most).
const PLACEMENT_TICK: Duration = Duration::from_millis(100);

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
    let (state_machine, parts) = Core::state_machine(config.shard_count);
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
        takes_in_flight: Default::default(),
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
        let (app, stop) = (app.clone(), stop.clone());
        tasks.push(spawn_supervised(&loops, "lease", stop.clone(), move || {
            placement::lease::run(app.clone(), stop.clone())
        }));
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
