//! A seeded simulation of a whole deployment of the real server: three DCs (or two and a
//! witness) of one or three nodes each in one process, on an in-memory network
//! ([`MemNetwork`]), with in-memory Raft stores and simulated clocks (offsets and drifts within
//! `max_clock_offset_ms`), on tokio's paused clock; each DC has a provisioner of the real
//! worker runtime whose `fake` plugins share one cloud ([`workers`]). A seed decides the clients' timing, the plugins' latency and the
//! faults; the checks run on what the clients saw acknowledged, on what the workers ran and on
//! the nodes' final answers.
//!
//! ```text
//!   seed ─► Rng ─┬─► clients (one per DC): creates, updates and deletes of their clusters, each
//!                │   with an Idempotency-Key, retried on 503s and on calls without an answer
//!                ├─► provisioners (one per DC): take, run (fake cloud, recorded), finish
//!                └─► faults: a site cut off, a link cut one way, slow or lossy (loss,
//!                    duplication, reordering), a stalled site, a whole DC or one node
//!                    crashed, a graceful handover; healed later
//!   all along: at most one DC may acknowledge writes to each shard (on the nodes' states)
//!   then: heal everything, wait until every DC lists the same clusters, none with an
//!   operation in flight (resumption: every job finished), and check
//!     - fencing: a DC cut off acknowledges nothing later than a lease after the cut;
//!     - every acknowledged create is in every DC's list, or in a lost-operations report,
//!       which names only records after their takeover point (never replicated work);
//!     - every acknowledged delete ended `terminated`, and every cluster has its last
//!       acknowledged update, or the operation is in a lost-operations report;
//!     - no create was applied twice (one cluster per Idempotency-Key / name);
//!     - no task ran in two DCs at once; no machine was made twice, leaked or is missing;
//!     - every DC lists the same clusters and the same owner for every shard, and holds the
//!       same copy (view and position) of every shard.
//! ```
//!
//! A seed fixes everything that could differ between two runs: the clients' and the fault
//! injector's choices and times, the plugins' latency, the lossy links' draws
//! ([`MemNetwork::with_seed`]), openraft's election timeouts ([`coopr_raft::seed_thread_rng`]),
//! each node's ids, generated keys and jitter ([`Random::seeded`]), the clocks, and tokio's
//! choice among ready `select!` branches (the runtime's generator, seeded under
//! `--cfg tokio_unstable`, which `.cargo/config.toml` sets). A failing seed replays exactly:
//! the same events at the same simulated times (`tests/seeds.rs::a_seed_replays_exactly`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use coopr_provisioner::FakeCloud;
use coopr_raft::transport::LinkFaults;
use coopr_raft::RaftStores;
use coopr_raft::{Call, MemNetwork, Transport};
use coopr_server::{
    Member, Network, PlacementMember, Random, ServerConfig, ServerHandle, SimClock, StartOptions,
    Storage,
};
use coopr_types::ShardId;
use serde_json::{json, Value};
use tokio::time::Instant;

pub mod workers;

use workers::{PluginRun, Provisioner, Runs};

/// Where a simulated deployment runs: its data DCs and, with two of them, a witness site that
/// votes in the placement group and stores no shard data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sites {
    pub dcs: &'static [&'static str],
    pub witness: Option<&'static str>,
}

impl Sites {
    pub const THREE_DCS: Sites = Sites {
        dcs: &["a", "b", "c"],
        witness: None,
    };
    pub const TWO_DCS_AND_WITNESS: Sites = Sites {
        dcs: &["a", "b"],
        witness: Some("w"),
    };

    /// Every site with a vote in the placement group, in the order of their placement ids.
    pub fn voters(&self) -> Vec<&'static str> {
        self.dcs.iter().copied().chain(self.witness).collect()
    }
}
const SECRET: &str = "a-simulated-cluster-secret";
/// 2026-01-01T00:00:00Z: where the simulated wall clocks start.
const BASE_WALL_MS: u64 = 1_767_225_600_000;
const DAY_MS: u64 = 86_400_000;

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high` (`low` if the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

/// What one seed's run is made of.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long faults are injected, in simulated ms.
    pub fault_ms: u64,
    /// Inject faults at all (off: the same load on a quiet deployment).
    pub faults: bool,
    /// Nodes per DC: 1, or 3 (a Raft group per DC, whose nodes also crash and restart).
    pub nodes_per_dc: u64,
    /// Workers of each DC's provisioner (0: none; clusters then stay pending and only creates
    /// are checked).
    pub workers_per_dc: u32,
    /// Three DCs, or two and a witness.
    pub sites: Sites,
    /// Inject graceful handovers only (an admin moving shards under load), which must lose
    /// nothing: no lost-operations report may name anything.
    pub handovers_only: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fault_ms: 20_000,
            faults: true,
            nodes_per_dc: 1,
            workers_per_dc: 4,
            sites: Sites::THREE_DCS,
            handovers_only: false,
        }
    }
}

/// A run that held every invariant.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    /// Creates acknowledged to clients.
    pub acknowledged: usize,
    /// Acknowledged creates that a failover lost, each in a lost-operations report.
    pub reported_lost: usize,
    /// Acknowledged deletes.
    pub deleted: usize,
    /// Plugin runs of the workers.
    pub plugin_runs: usize,
    /// Machines alive at the end, and those of them whose cluster a report names as lost.
    pub machines: workers::Machines,
    pub faults: usize,
    /// Simulated time of the whole run.
    pub simulated: Duration,
    /// The run's events (`--seed N --trace` prints them).
    pub trace: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} creates acknowledged ({} reported lost), {} deletes, {} plugin runs, \
             {} machines alive ({} of lost clusters), {} faults, {:.1} s simulated",
            self.seed,
            self.acknowledged,
            self.reported_lost,
            self.deleted,
            self.plugin_runs,
            self.machines.alive,
            self.machines.of_lost_clusters,
            self.faults,
            self.simulated.as_secs_f64()
        )
    }
}

/// A broken invariant, with the seed and the last events before it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.message)?;
        writeln!(f, "last events (simulated ms since start):")?;
        for line in self.trace.iter().rev().take(40).rev() {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: cargo run -p coopr-sim --release -- --seed {}",
            self.seed
        )
    }
}

/// Runs one seed on a fresh single-thread runtime on tokio's paused clock.
pub fn run(seed: u64, options: &Options) -> Result<Report, Violation> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    // Which ready `select!` branch tokio polls first is drawn from the runtime's generator:
    // seeded, a seed replays the same interleaving (needs `--cfg tokio_unstable`, which
    // `.cargo/config.toml` sets).
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().map_err(|e| Violation {
        seed,
        message: format!("no runtime: {e}"),
        trace: Vec::new(),
    })?;
    runtime.block_on(async {
        coopr_raft::seed_thread_rng(seed);
        let trace = Trace::new();
        match scenario(seed, options, &trace).await {
            Ok(report) => Ok(report),
            Err(message) => Err(Violation {
                seed,
                message,
                trace: trace.lines(),
            }),
        }
    })
}

/// Events of a run, stamped with simulated time.
#[derive(Clone)]
struct Trace {
    started: Instant,
    lines: Rc<RefCell<Vec<String>>>,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            started: Instant::now(),
            lines: Rc::default(),
        }
    }

    fn log(&self, event: impl Into<String>) {
        let at = self.started.elapsed().as_millis();
        self.lines
            .borrow_mut()
            .push(format!("{at:>7} {}", event.into()));
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }
}

fn api(dc: &str, n: u64) -> String {
    format!("http://{dc}{n}:80")
}

fn internal(dc: &str, n: u64) -> String {
    format!("http://{dc}{n}:81")
}

fn node(dc: &str, n: u64) -> String {
    format!("{dc}{n}")
}

fn node_name(node: &SimNode) -> String {
    self::node(node.dc, node.n)
}

/// The config of node `n` (1-based) of DC `dc` in DCs of `nodes` nodes: the first node of
/// each DC (and the witness) votes in the placement group; demo tenant and keys, six shards.
pub fn config(sites: Sites, dc: &str, n: u64, nodes: u64) -> ServerConfig {
    let placement_members = (1u64..)
        .zip(sites.voters())
        .map(|(id, d)| {
            (
                id,
                PlacementMember {
                    dc: d.to_string(),
                    internal: internal(d, 1),
                },
            )
        })
        .collect();
    let members_of = |d: &str| -> Vec<Member> {
        (1..=nodes)
            .map(|i| Member {
                node: node(d, i),
                api: api(d, i),
                internal: internal(d, i),
            })
            .collect()
    };
    let remote_dcs = sites
        .dcs
        .iter()
        .filter(|d| **d != dc)
        .map(|d| (d.to_string(), members_of(d)))
        .collect();
    let members = if nodes > 1 {
        (1u64..).zip(members_of(dc)).collect()
    } else {
        BTreeMap::new()
    };
    let placement_node_id =
        (n == 1).then(|| sites.voters().iter().position(|d| *d == dc).unwrap_or(0) as u64 + 1);
    ServerConfig {
        dc: dc.to_string(),
        node: node(dc, n),
        node_id: n,
        members,
        listen: format!("{dc}{n}:80"),
        internal_listen: Some(format!("{dc}{n}:81")),
        data_dir: std::path::PathBuf::from(format!("/nonexistent/simulated/{dc}{n}")),
        demo: true,
        shard_count: 6,
        secret: Some(SECRET.into()),
        placement_members,
        placement_node_id,
        remote_dcs,
        replication_wait_ms: 2_000,
        // A task whose worker lost its answer is handed out again within the run.
        task_timeout_ms: 30_000,
        // Finished jobs leave memory within the run, so retirement (and the archive's drop of
        // a demoted shard) runs under the faults too.
        job_retention_ms: 5_000,
        ..ServerConfig::default()
    }
}

/// Each site's clock, drawn from the seed: an offset of up to half of `max_clock_offset_ms`
/// either way (so two sites are at most `max_clock_offset_ms` apart) and a drift of up to
/// 200 ppm either way. All of a DC's nodes read one clock, as NTP keeps them close.
fn clocks(sites: Sites, rng: &mut Rng) -> BTreeMap<&'static str, (i64, i64)> {
    let half = (config(sites, "a", 1, 1).max_clock_offset_ms / 2) as i64;
    sites
        .voters()
        .into_iter()
        .map(|site| {
            let offset = rng.range(0, 2 * half as u64 + 1) as i64 - half;
            let drift = rng.range(0, 401) as i64 - 200;
            (site, (offset, drift))
        })
        .collect()
}

/// A node: its handle while it runs, and its stores (kept across a crash, as a disk is).
struct SimNode {
    dc: &'static str,
    n: u64,
    handle: Option<ServerHandle>,
    dc_log: RaftStores,
    placement: RaftStores,
}

/// The running deployment and a client on its network.
pub struct Deployment {
    pub network: MemNetwork,
    client: Arc<dyn Transport>,
    nodes: RefCell<Vec<SimNode>>,
    nodes_per_dc: u64,
    pub sites: Sites,
    /// Each site's clock: offset (ms) and drift (ppm).
    clocks: BTreeMap<&'static str, (i64, i64)>,
    /// Seeds of the nodes' random sources, drawn at each start.
    seeds: RefCell<Rng>,
    /// The witness, with two DCs.
    witness: RefCell<Option<coopr_server::WitnessHandle>>,
    /// The cloud every DC's provisioner makes machines in.
    pub cloud: FakeCloud,
    /// What the provisioners' plugins ran.
    pub runs: Runs,
    provisioners: RefCell<Vec<Provisioner>>,
}

/// One answer: status and JSON body.
pub type Reply = (u16, Value);

impl Deployment {
    /// Starts the DCs of `sites`, of `nodes_per_dc` nodes each, and their witness; the plugins
    /// of their provisioners take `latency_ms` per cloud operation.
    pub async fn start(
        sites: Sites,
        nodes_per_dc: u64,
        latency_ms: u64,
        seed: u64,
    ) -> anyhow::Result<Deployment> {
        let network = MemNetwork::with_seed(seed);
        let deployment = Deployment {
            client: network.transport("client"),
            network,
            nodes: RefCell::new(Vec::new()),
            nodes_per_dc,
            sites,
            clocks: clocks(sites, &mut Rng::new(seed ^ 0xc10c)),
            seeds: RefCell::new(Rng::new(seed ^ 0x0dd5_eed5)),
            witness: RefCell::default(),
            cloud: workers::cloud(latency_ms),
            runs: Runs::new(Instant::now()),
            provisioners: RefCell::default(),
        };
        for &dc in sites.dcs {
            for n in 1..=nodes_per_dc {
                deployment.nodes.borrow_mut().push(SimNode {
                    dc,
                    n,
                    handle: None,
                    dc_log: RaftStores::in_memory(),
                    placement: RaftStores::in_memory(),
                });
            }
        }
        if let Some(site) = sites.witness {
            let config = ServerConfig {
                witness: true,
                members: BTreeMap::new(),
                ..config(sites, site, 1, 1)
            };
            let options = StartOptions {
                clock: deployment.clock_of(site),
                storage: Storage::Given {
                    dc_log: RaftStores::in_memory(),
                    placement: RaftStores::in_memory(),
                },
                network: Network::Mem(deployment.network.clone()),
                random: Arc::new(Random::seeded(deployment.seeds.borrow_mut().next_u64())),
            };
            let witness = coopr_server::start_witness_with(config, options).await?;
            *deployment.witness.borrow_mut() = Some(witness);
        }
        let count = deployment.nodes.borrow().len();
        for i in 0..count {
            deployment.start_node(i).await?;
        }
        Ok(deployment)
    }

    async fn start_node(&self, i: usize) -> anyhow::Result<()> {
        let (dc, n, options) = {
            let nodes = self.nodes.borrow();
            let node = &nodes[i];
            let storage = Storage::Given {
                dc_log: node.dc_log.clone(),
                placement: node.placement.clone(),
            };
            let options = StartOptions {
                clock: self.clock_of(node.dc),
                storage,
                network: Network::Mem(self.network.clone()),
                random: Arc::new(Random::seeded(self.seeds.borrow_mut().next_u64())),
            };
            (node.dc, node.n, options)
        };
        let config = config(self.sites, dc, n, self.nodes_per_dc);
        let handle = coopr_server::start_with(config, options).await?;
        self.nodes.borrow_mut()[i].handle = Some(handle);
        Ok(())
    }

    /// A fresh clock of `site` (a node that starts reads a monotonic clock from zero).
    fn clock_of(&self, site: &str) -> Arc<SimClock> {
        let (offset, drift) = self.clocks.get(site).copied().unwrap_or_default();
        Arc::new(SimClock::new(BASE_WALL_MS, offset, drift))
    }

    /// Starts every DC's provisioner, of `capacity` workers, polling its DC's nodes.
    fn start_provisioners(&self, capacity: u32) -> anyhow::Result<()> {
        for &dc in self.sites.dcs {
            let servers = (1..=self.nodes_per_dc).map(|n| api(dc, n)).collect();
            let provisioner = Provisioner::start(
                dc,
                servers,
                &self.network,
                &self.cloud,
                &self.runs,
                capacity,
            )?;
            self.provisioners.borrow_mut().push(provisioner);
        }
        Ok(())
    }

    /// Stops node `i` (its stores stay, as a disk would); its name, for the trace.
    async fn crash(&self, i: usize) -> Option<String> {
        let (handle, name) = {
            let mut nodes = self.nodes.borrow_mut();
            let node = &mut nodes[i];
            (node.handle.take()?, node_name(node))
        };
        handle.shutdown().await;
        Some(name)
    }

    /// Every node that is down starts again on its stores.
    async fn restart_all(&self) -> anyhow::Result<()> {
        let down: Vec<usize> = (0..self.nodes.borrow().len())
            .filter(|i| self.nodes.borrow()[*i].handle.is_none())
            .collect();
        for i in down {
            self.start_node(i).await?;
        }
        Ok(())
    }

    /// The node names of site `dc` (the witness is one node).
    fn names(&self, dc: &str) -> Vec<String> {
        let nodes = if Some(dc) == self.sites.witness {
            1
        } else {
            self.nodes_per_dc
        };
        (1..=nodes).map(|n| node(dc, n)).collect()
    }

    async fn call(&self, call: Call, superadmin: bool) -> Result<Reply, coopr_raft::CallError> {
        let (user, tenant, key) = if superadmin {
            ("admin", "superadmin", "admin-key")
        } else {
            ("demo", "demo", "demo-key")
        };
        let call = call
            .header("Coopr-UserID", user)
            .header("Coopr-TenantID", tenant)
            .header("Coopr-ApiKey", key)
            .timeout(Duration::from_secs(10));
        let answer = self.client.call(call).await?;
        Ok((answer.status.as_u16(), answer.json().unwrap_or(Value::Null)))
    }

    /// The API of a running node of `dc` (its first).
    fn entry(&self, dc: &str) -> String {
        let nodes = self.nodes.borrow();
        let n = nodes
            .iter()
            .find(|node| node.dc == dc && node.handle.is_some())
            .map_or(1, |node| node.n);
        api(dc, n)
    }

    /// `GET path` at `dc`.
    pub async fn get(&self, dc: &str, path: &str, superadmin: bool) -> Option<Reply> {
        self.call(Call::get(format!("{}{path}", self.entry(dc))), superadmin)
            .await
            .ok()
    }

    /// `POST body` to `path` at `dc` as the demo user, with `key` as its Idempotency-Key.
    pub async fn post(
        &self,
        dc: &str,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Reply, coopr_raft::CallError> {
        let mut call = Call::json(format!("{}{path}", self.entry(dc)), body);
        if let Some(key) = key {
            call = call.header("Idempotency-Key", key);
        }
        self.call(call, false).await
    }

    /// `DELETE path` at `dc` as the demo user, with `key` as its Idempotency-Key.
    pub async fn delete(
        &self,
        dc: &str,
        path: &str,
        key: &str,
    ) -> Result<Reply, coopr_raft::CallError> {
        let call = Call::delete(format!("{}{path}", self.entry(dc))).header("Idempotency-Key", key);
        self.call(call, false).await
    }

    /// The clusters `dc` lists for the demo user: id -> (name, status).
    pub async fn clusters(&self, dc: &str) -> Option<BTreeMap<String, (String, String)>> {
        let (status, body) = self.get(dc, "/v2/clusters", false).await?;
        (status == 200).then(|| {
            body.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c["id"].as_str()?.to_string(),
                        (
                            c["name"].as_str()?.to_string(),
                            c["status"].as_str()?.to_string(),
                        ),
                    ))
                })
                .collect()
        })
    }

    /// Owner of every shard as `dc` sees the map.
    pub async fn owners(&self, dc: &str) -> Option<Vec<String>> {
        let (status, body) = self.get(dc, "/v2/admin/shards", true).await?;
        if status != 200 {
            return None;
        }
        body["shards"]
            .as_array()?
            .iter()
            .map(|s| s["owner"].as_str().map(str::to_string))
            .collect()
    }

    /// The operations `dc` reports lost that started one (create, delete): their clusters
    /// and their scoped Idempotency-Keys.
    pub async fn lost(&self, dc: &str) -> Option<Lost> {
        let (status, body) = self.get(dc, "/v2/admin/lost-operations", true).await?;
        if status != 200 {
            return None;
        }
        let mut lost = Lost::default();
        for op in body["operations"].as_array().into_iter().flatten() {
            lost.records += 1;
            // Only what the old owner wrote after the takeover point may be lost.
            let at = (op["epoch"].as_u64(), op["seq"].as_u64());
            let point = &op["takeover_point"];
            if at <= (point["epoch"].as_u64(), point["seq"].as_u64()) {
                lost.before_takeover.push(op.to_string());
            }
            if op["kind"] == "cluster_updated" {
                if let Some(cluster) = op["cluster"].as_str() {
                    lost.updated.insert(cluster.to_string());
                }
            }
            if op["kind"] != "operation_started" {
                continue;
            }
            if let Some(cluster) = op["cluster"].as_str() {
                lost.clusters.insert(cluster.to_string());
            }
            if let Some(key) = op["idempotency_key"].as_str() {
                lost.keys.insert(key.to_string());
            }
        }
        Some(lost)
    }

    /// Heals every link and removes every delay.
    pub fn heal(&self) {
        self.network.heal();
        let names: Vec<String> = self
            .sites
            .voters()
            .iter()
            .flat_map(|site| self.names(site))
            .collect();
        for from in &names {
            for to in &names {
                self.network.set_delay(from, to, Duration::ZERO);
            }
        }
    }

    /// Cuts every node of site `dc` off from every node of the other sites (its own nodes
    /// still reach each other, and its clients still reach it).
    fn isolate_dc(&self, dc: &str) {
        for other in self.sites.voters().iter().filter(|d| **d != dc) {
            for a in self.names(dc) {
                for b in self.names(other) {
                    self.network.cut(&a, &b);
                    self.network.cut(&b, &a);
                }
            }
        }
    }

    pub async fn shutdown(self) {
        for provisioner in self.provisioners.take() {
            let _ = provisioner.stop().await;
        }
        if let Some(witness) = self.witness.take() {
            witness.shutdown().await;
        }
        let nodes = self.nodes.into_inner();
        for node in nodes {
            if let Some(handle) = node.handle {
                handle.shutdown().await;
            }
        }
    }
}

/// Operations the lost-operations reports name.
#[derive(Debug, Default)]
pub struct Lost {
    pub clusters: BTreeSet<String>,
    /// Scoped keys: they end with a space and the key the client sent.
    pub keys: BTreeSet<String>,
    /// Records reported lost that were at or before their takeover point (replicated, so
    /// never lost): each one breaks "no loss of replicated work".
    pub before_takeover: Vec<String>,
    /// Every record the reports name.
    pub records: usize,
    /// Clusters with a lost update (`cluster_updated` records carry no Idempotency-Key).
    pub updated: BTreeSet<String>,
}

impl Lost {
    fn has_key(&self, key: &str) -> bool {
        // Scoped as `tenant/user/METHOD path key`.
        let key = format!(" {key}");
        self.keys.iter().any(|k| k.ends_with(&key))
    }
}

/// Polls `check` every 50 ms of simulated time until it returns `Some`; `Err` after `within`.
pub async fn wait<T, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("not within {within:?} of simulated time: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait`] for a check that says what it saw when it fails (`Some(Err(seen))`; `None`: it saw
/// nothing this time, a call got no answer): on timeout the error ends with `{label}: ` and
/// the last thing seen.
pub async fn wait_reporting<F, Fut>(
    within: Duration,
    what: &str,
    label: &str,
    mut check: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Result<(), String>>>,
{
    let last = Rc::new(RefCell::new(String::new()));
    let waited = wait(within, what, || {
        let (checked, last) = (check(), last.clone());
        async move {
            match checked.await? {
                Ok(()) => Some(()),
                Err(seen) => {
                    *last.borrow_mut() = seen;
                    None
                }
            }
        }
    })
    .await;
    waited.map_err(|e| format!("{e}; {label}: {}", last.borrow()))
}

/// What the clients saw, and when the faults were.
#[derive(Default)]
struct Seen {
    /// Acknowledged creates: name -> (cluster id, DC asked, simulated ms of the answer).
    acknowledged: BTreeMap<String, (String, &'static str, u64)>,
    /// The DCs cut off from every other DC: (DC, from, until), simulated ms.
    isolated: Vec<(&'static str, u64, u64)>,
    /// The first moment two DCs could both acknowledge writes to one shard, if any.
    two_writers: Option<String>,
    /// The first derived index of a node's state found out of step with its records, if any.
    stale_index: Option<String>,
    /// Creates answered 409 `operation_lost` on a retry (the first attempt was lost).
    lost: BTreeSet<String>,
    /// Acknowledged deletes: cluster id -> (its name, the delete's Idempotency-Key, DC asked).
    deleted: BTreeMap<String, (String, String, &'static str)>,
    /// The expire-time updates of each cluster in the order they were sent: id -> (expire
    /// time, its Idempotency-Key, DC asked, acknowledged).
    expires: BTreeMap<String, Vec<(u64, String, &'static str, bool)>>,
}

async fn scenario(seed: u64, options: &Options, trace: &Trace) -> Result<Report, String> {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let latency_ms = rng.range(10, 400);
    let deployment = Rc::new(
        Deployment::start(
            options.sites,
            options.nodes_per_dc,
            latency_ms,
            rng.next_u64(),
        )
        .await
        .map_err(|e| format!("the deployment did not start: {e}"))?,
    );
    for &dc in options.sites.dcs {
        let d = deployment.clone();
        wait(Duration::from_secs(60), &format!("{dc} ready"), || {
            let d = d.clone();
            async move {
                let (status, _) = d.get(dc, "/ready", false).await?;
                (status == 200).then_some(())
            }
        })
        .await?;
    }
    trace.log(format!(
        "every DC ready; {} workers per DC, cloud operations take {latency_ms} ms; clocks (offset ms, drift ppm): {:?}",
        options.workers_per_dc, deployment.clocks
    ));
    if options.workers_per_dc > 0 {
        deployment
            .start_provisioners(options.workers_per_dc)
            .map_err(|e| format!("the provisioners did not start: {e}"))?;
    }
    let seen = Rc::new(RefCell::new(Seen::default()));
    let stop = Rc::new(std::cell::Cell::new(false));
    let local = tokio::task::LocalSet::new();
    let mut clients = Vec::new();
    for &dc in options.sites.dcs {
        let client_rng = Rng::new(rng.next_u64());
        clients.push(local.spawn_local(client(
            deployment.clone(),
            dc,
            seed,
            client_rng,
            seen.clone(),
            stop.clone(),
            trace.clone(),
        )));
    }
    local.spawn_local(watch_writers(
        deployment.clone(),
        seen.clone(),
        stop.clone(),
        trace.clone(),
    ));
    let faults = local
        .run_until(inject_faults(
            deployment.clone(),
            &mut rng,
            options,
            trace.clone(),
            seen.clone(),
        ))
        .await;
    stop.set(true);
    for handle in clients {
        local
            .run_until(handle)
            .await
            .map_err(|e| format!("a client failed: {e}"))?;
    }
    deployment.heal();
    deployment
        .restart_all()
        .await
        .map_err(|e| format!("a node did not restart: {e}"))?;
    trace.log("healed, every node up; waiting for convergence");

    // Resumption: with workers, every operation finishes (no cluster stays pending).
    let settled = options.workers_per_dc > 0;
    let last_note = Rc::new(std::cell::Cell::new(trace.now_ms()));
    let converged = {
        let d = deployment.clone();
        wait(
            Duration::from_secs(180),
            if settled {
                "every DC lists the same clusters, none pending"
            } else {
                "every DC lists the same clusters"
            },
            || {
                let d = d.clone();
                let last_note = last_note.clone();
                async move {
                    let mut lists = Vec::new();
                    for &dc in d.sites.dcs {
                        lists.push(d.clone().clusters(dc).await?);
                    }
                    let pending: Vec<&String> = lists[0]
                        .iter()
                        .filter(|(_, (_, status))| status == "pending")
                        .map(|(id, _)| id)
                        .collect();
                    let now = trace.now_ms();
                    if !pending.is_empty() && now >= last_note.get() + 10_000 {
                        last_note.set(now);
                        trace.log(format!("still pending: {pending:?}"));
                    }
                    let pending = !pending.is_empty();
                    (lists.windows(2).all(|w| w[0] == w[1]) && !(settled && pending))
                        .then(|| lists[0].clone())
                }
            },
        )
        .await?
    };
    let statuses: BTreeMap<String, String> = converged
        .iter()
        .map(|(id, (_, status))| (id.clone(), status.clone()))
        .collect();
    let converged: BTreeMap<String, String> = converged
        .into_iter()
        .map(|(id, (name, _))| (id, name))
        .collect();
    // Every DC's copy of the shard map converges too (each refreshes it every lease/3): wait
    // until they all name the same owners, and report what they said if they never do.
    let d = deployment.clone();
    wait_reporting(
        Duration::from_secs(30),
        "every DC names the same owner for every shard",
        "the last maps",
        || {
            let d = d.clone();
            async move {
                let mut owners = Vec::new();
                for &dc in d.sites.dcs {
                    owners.push(d.owners(dc).await?);
                }
                let agree = owners.windows(2).all(|w| w[0] == w[1]);
                Some(if agree {
                    Ok(())
                } else {
                    Err(format!("{owners:?}"))
                })
            }
        },
    )
    .await?;
    // Convergence of the data: every DC's copy of every shard (the owner's replicated view
    // and each replica's) is the same view at the same position.
    let shards = config(options.sites, "a", 1, 1).shard_count;
    wait_reporting(
        Duration::from_secs(60),
        "every DC holds identical copies of every shard",
        "last difference",
        || {
            let d = d.clone();
            async move {
                let names = (0..shards)
                    .map(|s| s.to_string())
                    .chain(["global".to_string()]);
                for shard in names {
                    let mut copies = Vec::new();
                    for &dc in d.sites.dcs {
                        let path = format!("/v2/admin/shards/{shard}/view");
                        let (status, copy) = d.get(dc, &path, true).await?;
                        if status != 200 {
                            return None;
                        }
                        copies.push((dc, copy));
                    }
                    let same = copies.windows(2).all(|w| {
                        w[0].1["position"] == w[1].1["position"] && w[0].1["view"] == w[1].1["view"]
                    });
                    if !same {
                        return Some(Err(format!(
                            "shard {shard}: {:?}",
                            copies
                                .iter()
                                .map(|(dc, c)| format!("{dc} {} at {}", c["role"], c["position"]))
                                .collect::<Vec<_>>()
                        )));
                    }
                }
                Some(Ok(()))
            }
        },
    )
    .await?;
    let mut lost = Lost::default();
    for &dc in options.sites.dcs {
        let report = deployment.lost(dc).await.unwrap_or_default();
        trace.log(format!(
            "{dc} reports lost: clusters {:?}, keys {:?}",
            report.clusters, report.keys
        ));
        if let Some(record) = report.before_takeover.first() {
            return Err(format!(
                "{dc} reports as lost a record at or before its takeover point: {record}"
            ));
        }
        lost.clusters.extend(report.clusters);
        lost.keys.extend(report.keys);
        lost.records += report.records;
        lost.updated.extend(report.updated);
    }
    if options.handovers_only && lost.records > 0 {
        return Err(format!(
            "graceful handovers lost {} record(s): clusters {:?}",
            lost.records, lost.clusters
        ));
    }
    let seen = std::mem::take(&mut *seen.borrow_mut());
    let mut reported_lost = 0;
    if let Some(two) = &seen.two_writers {
        return Err(two.clone());
    }
    if let Some(stale) = &seen.stale_index {
        return Err(stale.clone());
    }
    // Fencing: a DC cut off from the others keeps its clients, but acknowledges nothing once
    // the lease it last renewed (before the cut) has run out on its own clock.
    let lease_ms = config(Sites::THREE_DCS, "a", 1, 1).lease_ms;
    for (name, (id, via, at)) in &seen.acknowledged {
        for (dc, from, until) in &seen.isolated {
            if dc == via && *at > from + lease_ms && *at < *until {
                return Err(format!(
                    "{via} acknowledged {name} ({id}) at {at} ms, {} ms into its isolation: past its lease of {lease_ms} ms",
                    at - from
                ));
            }
        }
    }
    for (name, (id, via, _)) in &seen.acknowledged {
        match converged.get(id) {
            Some(listed) if listed == name => {}
            Some(other) => {
                return Err(format!(
                    "create {name} acknowledged by {via} as {id}, which is {other} everywhere"
                ))
            }
            None if lost.clusters.contains(id) => reported_lost += 1,
            None => {
                return Err(format!(
                    "create {name} acknowledged by {via} as {id} is gone and in no lost-operations report"
                ))
            }
        }
    }
    let mut names = BTreeMap::new();
    for (id, name) in &converged {
        if let Some(first) = names.insert(name.clone(), id.clone()) {
            return Err(format!(
                "create {name} applied twice: clusters {first} and {id}"
            ));
        }
    }
    for (id, (name, key, via)) in &seen.deleted {
        let status = statuses.get(id).map_or("unlisted", String::as_str);
        if settled && status != "terminated" && !lost.has_key(key) {
            return Err(format!(
                "delete of {name} ({id}) acknowledged by {via}, but it is {status} and in no lost-operations report"
            ));
        }
    }
    // The last acknowledged update of a cluster is what it has at the end, or one sent after
    // it (applied, its answer never seen), unless the cluster was deleted or the update is in
    // a lost-operations report.
    for (id, updates) in &seen.expires {
        let Some(last) = updates.iter().rposition(|u| u.3) else {
            continue;
        };
        let (at, _, via, _) = &updates[last];
        if statuses.get(id).is_none_or(|s| s == "terminated") || lost.updated.contains(id) {
            continue;
        }
        let (status, cluster) = deployment
            .get(via, &format!("/v2/clusters/{id}?consistency=strong"), false)
            .await
            .unwrap_or((0, Value::Null));
        let expire = cluster["expireTime"].as_u64();
        if status != 200 || !updates[last..].iter().any(|u| Some(u.0) == expire) {
            return Err(format!(
                "expire time {at} of {id} acknowledged by {via}, but the cluster has {expire:?} ({status}) and no report names the update"
            ));
        }
    }
    let runs: Vec<PluginRun> = deployment.runs.snapshot();
    workers::check_no_task_in_two_dcs(&runs)?;
    let machines = if settled {
        workers::check_machines(&deployment.cloud, &runs, &statuses, 1, &lost.clusters)?
    } else {
        workers::Machines::default()
    };
    trace.log(format!(
        "checked: {} acknowledged, {reported_lost} reported lost, {} deleted, {} listed, {} plugin runs, {machines:?}",
        seen.acknowledged.len(),
        seen.deleted.len(),
        converged.len(),
        runs.len(),
    ));
    let report = Report {
        seed,
        acknowledged: seen.acknowledged.len(),
        reported_lost,
        deleted: seen.deleted.len(),
        plugin_runs: runs.len(),
        machines,
        faults,
        simulated: started.elapsed(),
        trace: trace.lines(),
    };
    if let Ok(deployment) = Rc::try_unwrap(deployment) {
        deployment.shutdown().await;
    }
    Ok(report)
}

/// A client of one DC: creates clusters one after another, each with its own
/// Idempotency-Key, retried at the same DC until answered (200, or a 4xx); now and then it
/// deletes one of its clusters that its DC lists as active, the same way.
async fn client(
    deployment: Rc<Deployment>,
    dc: &'static str,
    seed: u64,
    mut rng: Rng,
    seen: Rc<RefCell<Seen>>,
    stop: Rc<std::cell::Cell<bool>>,
    trace: Trace,
) {
    let mut i = 0;
    let mut mine: Vec<(String, String)> = Vec::new();
    while !stop.get() {
        let pick = rng.range(0, 8);
        if !mine.is_empty() && pick < 3 {
            // A delete (2 in 8) or an update of its expire time (1 in 8).
            let at = rng.range(0, mine.len() as u64) as usize;
            let what = if pick < 2 {
                Change::Delete
            } else {
                Change::Expire(BASE_WALL_MS + 30 * DAY_MS + rng.range(0, DAY_MS))
            };
            let (id, name) = if what == Change::Delete {
                mine.swap_remove(at)
            } else {
                mine[at].clone()
            };
            change(
                &deployment,
                dc,
                seed,
                (&id, &name),
                what,
                &mut rng,
                &seen,
                &stop,
                &trace,
            )
            .await;
            continue;
        }
        i += 1;
        let name = format!("{dc}-{i}");
        let key = format!("{seed:x}-{name}");
        let body = json!({"name": name, "clusterTemplate": "base", "numMachines": 1});
        let mut attempts = 0;
        loop {
            attempts += 1;
            match deployment.post(dc, "/v2/clusters", &body, Some(&key)).await {
                Ok((200, answer)) => {
                    let id = answer["id"].as_str().unwrap_or_default().to_string();
                    trace.log(format!("{dc}: {name} acknowledged as {id}"));
                    let at = trace.now_ms();
                    mine.push((id.clone(), name.clone()));
                    seen.borrow_mut()
                        .acknowledged
                        .insert(name.clone(), (id, dc, at));
                    break;
                }
                Ok((409, answer)) if answer["code"] == "operation_lost" => {
                    trace.log(format!("{dc}: {name} lost (409 operation_lost)"));
                    seen.borrow_mut().lost.insert(name.clone());
                    break;
                }
                Ok((status, answer)) if (400..500).contains(&status) && status != 409 => {
                    trace.log(format!("{dc}: {name} refused {status} {answer}"));
                    break;
                }
                Ok((status, answer)) => trace.log(format!(
                    "{dc}: {name} attempt {attempts}: {status} {}",
                    answer["code"]
                )),
                Err(e) => trace.log(format!("{dc}: {name} attempt {attempts}: {e}")),
            }
            if stop.get() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.range(100, 500))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(100, 1_200))).await;
    }
}

/// What a client does to one of its clusters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Delete,
    /// Sets its expire time (far in the future: nothing expires in a run) to this value.
    Expire(u64),
}

/// Changes cluster `id` if `dc` lists it as active, retried like a create (503s, calls without
/// an answer) until answered; an acknowledged change goes into `seen`.
#[allow(clippy::too_many_arguments)]
async fn change(
    deployment: &Deployment,
    dc: &'static str,
    seed: u64,
    (id, name): (&str, &str),
    change: Change,
    rng: &mut Rng,
    seen: &RefCell<Seen>,
    stop: &std::cell::Cell<bool>,
    trace: &Trace,
) {
    let path = format!("/v2/clusters/{id}");
    match deployment.get(dc, &path, false).await {
        Some((200, cluster)) if cluster["status"] == "active" => {}
        _ => return,
    }
    let (what, key) = match change {
        Change::Delete => ("delete".to_string(), format!("{seed:x}-{name}-delete")),
        Change::Expire(at) => (
            format!("expire {at}"),
            format!("{seed:x}-{name}-expire-{at}"),
        ),
    };
    if let Change::Expire(at) = change {
        seen.borrow_mut()
            .expires
            .entry(id.to_string())
            .or_default()
            .push((at, key.clone(), dc, false));
    }
    let mut attempts = 0;
    while !stop.get() {
        attempts += 1;
        let answer = match change {
            Change::Delete => deployment.delete(dc, &path, &key).await,
            Change::Expire(at) => {
                let body = json!({ "expireTime": at });
                deployment.post(dc, &path, &body, Some(&key)).await
            }
        };
        match answer {
            Ok((200, _)) => {
                trace.log(format!("{dc}: {what} of {name} ({id}) acknowledged"));
                let mut seen = seen.borrow_mut();
                match change {
                    Change::Delete => {
                        seen.deleted
                            .insert(id.to_string(), (name.to_string(), key, dc));
                    }
                    Change::Expire(_) => {
                        if let Some(last) = seen.expires.get_mut(id).and_then(|u| u.last_mut()) {
                            last.3 = true;
                        }
                    }
                }
                return;
            }
            Ok((status, answer)) if (400..500).contains(&status) => {
                trace.log(format!(
                    "{dc}: {what} of {name} refused {status} {}",
                    answer["code"]
                ));
                return;
            }
            Ok((status, answer)) => trace.log(format!(
                "{dc}: {what} of {name} attempt {attempts}: {status} {}",
                answer["code"]
            )),
            Err(e) => trace.log(format!("{dc}: {what} of {name} attempt {attempts}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.range(100, 500))).await;
    }
}

/// Single writer, on the nodes' own states: every 20 ms of simulated time, for every shard, at
/// most one DC has a leader that would acknowledge a write to it now (its lease valid on its
/// own clock, the shard granted writable at the epoch its state is in). Two leaders of one
/// DC's Raft group (an old one not yet deposed) are one DC: the old one cannot commit.
async fn watch_writers(
    deployment: Rc<Deployment>,
    seen: Rc<RefCell<Seen>>,
    stop: Rc<std::cell::Cell<bool>>,
    trace: Trace,
) {
    let shards: Vec<ShardId> = (0..config(Sites::THREE_DCS, "a", 1, 1).shard_count)
        .map(ShardId)
        .chain([ShardId::GLOBAL])
        .collect();
    let mut round = 0u64;
    while !stop.get() && seen.borrow().two_writers.is_none() {
        round += 1;
        // Every 500 ms: each running node's derived indexes (in-progress tasks, clusters by
        // tenant) against full scans of its records, under faults and restarts.
        if round.is_multiple_of(25) && seen.borrow().stale_index.is_none() {
            let stale = deployment.nodes.borrow().iter().find_map(|node| {
                let app = &node.handle.as_ref()?.app;
                let checked = app.core.read().check_indexes();
                checked
                    .err()
                    .map(|e| format!("{} node {}: stale index: {e}", node.dc, node.n))
            });
            if let Some(message) = stale {
                trace.log(message.clone());
                seen.borrow_mut().stale_index = Some(message);
            }
        }
        let writers: Vec<(ShardId, BTreeSet<&'static str>)> = {
            let nodes = deployment.nodes.borrow();
            shards
                .iter()
                .map(|shard| {
                    let dcs = nodes
                        .iter()
                        .filter_map(|node| {
                            let app = &node.handle.as_ref()?.app;
                            (app.core.raft().is_leader() && app.fence(Some(*shard), false).is_ok())
                                .then_some(node.dc)
                        })
                        .collect();
                    (*shard, dcs)
                })
                .collect()
        };
        if let Some((shard, dcs)) = writers.iter().find(|(_, dcs)| dcs.len() > 1) {
            let message = format!("two writers of shard {shard}: {dcs:?}");
            trace.log(message.clone());
            seen.borrow_mut().two_writers = Some(message);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Injects faults for `fault_ms` of simulated time; how many.
async fn inject_faults(
    deployment: Rc<Deployment>,
    rng: &mut Rng,
    options: &Options,
    trace: Trace,
    seen: Rc<RefCell<Seen>>,
) -> usize {
    let until = Instant::now() + Duration::from_millis(options.fault_ms);
    let mut count = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(500, 3_000))).await;
        if !options.faults {
            continue;
        }
        count += 1;
        let network = &deployment.network;
        let voters = deployment.sites.voters();
        let kinds = if deployment.nodes_per_dc > 1 { 9 } else { 8 };
        let kind = if options.handovers_only {
            7
        } else {
            rng.range(0, kinds)
        };
        match kind {
            0 => {
                let dc = *rng.pick(&voters);
                let hold = rng.range(1_000, 8_000);
                trace.log(format!("fault: {dc} cut off for {hold} ms"));
                let from = trace.now_ms();
                deployment.isolate_dc(dc);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                network.heal();
                seen.borrow_mut().isolated.push((dc, from, trace.now_ms()));
                trace.log(format!("fault: {dc} back"));
            }
            1 => {
                let from = *rng.pick(&voters);
                let to = *rng.pick(&voters);
                let hold = rng.range(500, 5_000);
                trace.log(format!("fault: links {from} -> {to} cut for {hold} ms"));
                for a in deployment.names(from) {
                    for b in deployment.names(to) {
                        network.cut(&a, &b);
                    }
                }
                tokio::time::sleep(Duration::from_millis(hold)).await;
                network.heal();
                trace.log(format!("fault: links {from} -> {to} back"));
            }
            2 => {
                let from = *rng.pick(&voters);
                let to = *rng.pick(&voters);
                let delay = rng.range(5, 400);
                trace.log(format!("fault: links {from} -> {to} delayed {delay} ms"));
                for a in deployment.names(from) {
                    for b in deployment.names(to) {
                        network.set_delay(&a, &b, Duration::from_millis(delay));
                    }
                }
            }
            3 => {
                trace.log("fault: every link healed, delays removed");
                deployment.heal();
            }
            4 => {
                // Lossy links between two DCs (or inside one), and maybe those of the
                // clients and provisioners to a DC: requests and answers lost, requests
                // duplicated, messages reordered.
                let from = *rng.pick(deployment.sites.dcs);
                let to = *rng.pick(deployment.sites.dcs);
                let faults = LinkFaults {
                    loss_per_mille: rng.range(0, 300) as u32,
                    duplicate_per_mille: rng.range(0, 200) as u32,
                    jitter: Duration::from_millis(rng.range(0, 200)),
                };
                let users = rng.range(0, 2) == 0;
                let hold = rng.range(1_000, 8_000);
                trace.log(format!(
                    "fault: links {from} -> {to}{} lossy for {hold} ms: {faults:?}",
                    if users { " and its users'" } else { "" }
                ));
                let mut links = Vec::new();
                for a in deployment.names(from) {
                    for b in deployment.names(to) {
                        links.push((a.clone(), b.clone()));
                        links.push((b, a.clone()));
                    }
                }
                if users {
                    for user in ["client".to_string(), format!("{to}-provisioner")] {
                        for b in deployment.names(to) {
                            links.push((user.clone(), b.clone()));
                            links.push((b, user.clone()));
                        }
                    }
                }
                for (a, b) in &links {
                    network.set_faults(a, b, faults);
                }
                tokio::time::sleep(Duration::from_millis(hold)).await;
                for (a, b) in &links {
                    network.set_faults(a, b, LinkFaults::default());
                }
                trace.log(format!("fault: links {from} -> {to} whole again"));
            }
            5 => {
                // A whole DC crashes (every node at once) and comes back on its stores.
                let dc = *rng.pick(deployment.sites.dcs);
                let hold = rng.range(500, 8_000);
                let members: Vec<usize> = (0..deployment.nodes.borrow().len())
                    .filter(|i| deployment.nodes.borrow()[*i].dc == dc)
                    .collect();
                trace.log(format!("fault: all of {dc} crashed for {hold} ms"));
                for i in &members {
                    deployment.crash(*i).await;
                }
                tokio::time::sleep(Duration::from_millis(hold)).await;
                for i in &members {
                    if let Err(e) = deployment.start_node(*i).await {
                        trace.log(format!("fault: a node of {dc} did not restart: {e}"));
                    }
                }
                trace.log(format!("fault: {dc} restarted"));
            }
            6 => {
                // A stalled site (as a paused process looks from outside): everything it sends
                // and everything sent to it arrives seconds late, after its lease could run out,
                // stale; its own timers keep running.
                let site = *rng.pick(&voters);
                let stall = Duration::from_millis(rng.range(1_000, 5_000));
                let hold = rng.range(1_000, 6_000);
                trace.log(format!(
                    "fault: {site}'s messages stalled {stall:?} for {hold} ms"
                ));
                let ours = deployment.names(site);
                let others: Vec<String> = voters
                    .iter()
                    .filter(|v| **v != site)
                    .flat_map(|v| deployment.names(v))
                    .collect();
                for a in &ours {
                    for b in &others {
                        network.set_delay(a, b, stall);
                        network.set_delay(b, a, stall);
                    }
                }
                tokio::time::sleep(Duration::from_millis(hold)).await;
                for a in &ours {
                    for b in &others {
                        network.set_delay(a, b, Duration::ZERO);
                        network.set_delay(b, a, Duration::ZERO);
                    }
                }
                trace.log(format!("fault: {site}'s messages on time again"));
            }
            7 => {
                // An admin moves a cluster shard to another DC, asked at any DC: a graceful
                // handover, refused (409) where the target is no replica or one is running.
                let shards = config(deployment.sites, "a", 1, 1).shard_count;
                let shard = rng.range(0, u64::from(shards));
                let to = *rng.pick(deployment.sites.dcs);
                let via = *rng.pick(deployment.sites.dcs);
                let call = Call::json(
                    format!("{}/v2/admin/shards/{shard}/handover", deployment.entry(via)),
                    &json!({ "to": to }),
                );
                let answer = match deployment.call(call, true).await {
                    Ok((status, body)) => format!("{status} {}", body["code"]),
                    Err(e) => e.to_string(),
                };
                trace.log(format!(
                    "fault: handover of shard {shard} to {to} asked at {via}: {answer}"
                ));
            }
            _ => {
                // A node crashes (a minority of its DC: at most one down per DC) and comes
                // back on its stores, or, now and then, on an empty disk (not a placement
                // voter: those are the first node of each DC): it must catch up from its DC's
                // leader before it votes again.
                let count = deployment.nodes.borrow().len();
                let i = rng.range(0, count as u64) as usize;
                let dc = deployment.nodes.borrow()[i].dc;
                let dc_down = deployment
                    .nodes
                    .borrow()
                    .iter()
                    .any(|n| n.dc == dc && n.handle.is_none());
                if dc_down {
                    continue;
                }
                let hold = rng.range(500, 6_000);
                let wiped = deployment.nodes.borrow()[i].n > 1 && rng.range(0, 3) == 0;
                if let Some(name) = deployment.crash(i).await {
                    trace.log(format!(
                        "fault: {name} crashed for {hold} ms{}",
                        if wiped { ", its disk lost" } else { "" }
                    ));
                    if wiped {
                        deployment.nodes.borrow_mut()[i].dc_log = RaftStores::in_memory();
                    }
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    match deployment.start_node(i).await {
                        Ok(()) => trace.log(format!("fault: {name} restarted")),
                        Err(e) => trace.log(format!("fault: {name} did not restart: {e}")),
                    }
                }
            }
        }
    }
    count
}
