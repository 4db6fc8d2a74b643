//! The per-node configuration file (`coopr server --config FILE`) and `coopr init-cluster`,
//! which writes a ready local deployment: one TOML per node, the cluster secret, the superadmin
//! key, `endpoints.json`, a start script and an HAProxy configuration (`haproxy.cfg`) with one
//! frontend for every node of every DC.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// One member of the deployment, as every node's config lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Raft node id, unique in the deployment (1-based).
    pub id: u64,
    pub dc: String,
    pub node: String,
    /// User API base URL (`http://127.0.0.1:7100`).
    pub api: String,
    /// Internal (Raft, replication) base URL.
    pub internal: String,
    /// Whether this node is a voter of the placement group (multi-DC deployments). When no
    /// peer is marked, the first peer of each DC is. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placement: bool,
    /// Whether this peer is a witness: a placement voter of a site without data (its `dc`),
    /// so that two DCs have a third vote. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub witness: bool,
}

/// A node's configuration file. Every option is documented with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Datacenter of this node. Required.
    pub dc: String,
    /// Name of this node; must be one of `peers`. Required.
    pub node: String,
    /// Where this node keeps its store. Relative paths are relative to the config file. Required.
    pub data_dir: PathBuf,
    /// Address the user and provisioner API listens on (`127.0.0.1:7100`). Required.
    pub api_addr: String,
    /// Address the internal API (Raft) listens on. Required.
    pub internal_addr: String,
    /// File holding the cluster secret that authenticates internal calls. Required.
    pub secret_file: PathBuf,
    /// Number of cluster shards; the same on every node. Default 64.
    #[serde(default = "default_shards")]
    pub shard_count: u32,
    /// Seconds a worker may hold a task before it is retried. Default 600.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_secs: u64,
    /// Seed the demo tenant and catalog and run fake-cloud workers inside the server. Default false.
    #[serde(default)]
    pub demo: bool,
    /// Fake-cloud workers run inside the server in demo mode; 0 runs none (the demo tenant,
    /// keys and catalog are still seeded, for external `coopr provisioner` processes). Default 4.
    #[serde(default = "default_demo_workers")]
    pub demo_workers: u32,
    /// Base URL of the fake cloud the demo workers share with every other node and DC
    /// (`coopr fake-cloud`, e.g. `http://127.0.0.1:7130`), so that one cloud sees every
    /// machine of the deployment. Demo mode only. Default: none (each node's workers keep a
    /// cloud of their own in `<data_dir>/fake-cloud.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fake_cloud_url: Option<String>,
    /// DC log entries between snapshots, at least. Default 10000.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// The commands applied since the last snapshot must add up to this percentage of its
    /// size before the next. Default 100 (snapshots grow rarer as the state grows); 0: the
    /// entry count alone decides.
    #[serde(default = "default_snapshot_log_percent")]
    pub snapshot_log_percent: u64,
    /// DC log entries kept after a snapshot (older ones are dropped); a node further behind
    /// catches up by receiving a snapshot. Default 1000.
    #[serde(default = "default_logs_kept_after_snapshot")]
    pub logs_kept_after_snapshot: u64,
    /// How long a finished job stays in memory before it is retired to the job archive on
    /// disk, in ms (0: at once; its plan stays readable). Unset: the server's default, 1 h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_retention_ms: Option<u64>,
    /// Raft election timeout range in ms; heartbeats every min/3. Defaults 300 and 600.
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ms: u64,
    /// Longest a write waits for a majority of the DC before a 503. Default 5000.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: u64,
    /// How long a DC's lease on its shards lasts, in ms (multi-DC deployments); its leader
    /// renews every third of it. Default 3000.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// The clock-rate difference tolerated between sites over one lease, in ms. Default 500.
    #[serde(default = "default_max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
    /// The placement group's election timeout range in ms (its voters are in different DCs);
    /// heartbeats every min/3, which must exceed the round trip between DCs. Defaults 600 and
    /// 1200.
    #[serde(default = "default_placement_election_min")]
    pub placement_election_timeout_min_ms: u64,
    #[serde(default = "default_placement_election_max")]
    pub placement_election_timeout_max_ms: u64,
    /// How long a graceful handover (or each step of a drain) may run before the placement
    /// leader aborts it, in ms; at least `lease_ms`. Default 30000.
    #[serde(default = "default_handover_timeout_ms")]
    pub handover_timeout_ms: u64,
    /// Request admission (see the server's `config.rs` for the defaults and bounds): the
    /// user API's request timeout and concurrency limit, the internal port's, and the client
    /// writes that may wait for the DC log at once. Unset: the server's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_request_timeout_ms: Option<u64>,
    /// Replication pulls kept in flight to each other DC (1..=16; unset: the server's default,
    /// 8). See the server's `config.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_pipeline: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_max_concurrent_requests: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_request_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_max_concurrent_requests: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_client_writes_in_flight: Option<usize>,
    /// How the user API and the provisioner API authenticate: `keys` (default: every request
    /// presents an API key) or `trusted-headers` (legacy Coopr clients, which send
    /// `Coopr-UserID`/`Coopr-TenantID` only, are trusted without a key; only behind an
    /// authenticating proxy or on a private network; logged as a warning at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_api_auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner_api_auth: Option<String>,
    /// File with the superadmin key created at first start. Default: none (generated).
    #[serde(default)]
    pub admin_key_file: Option<PathBuf>,
    /// Every node of the deployment, this one included.
    pub peers: Vec<Peer>,
}

fn default_shards() -> u32 {
    64
}

fn default_task_timeout() -> u64 {
    600
}

fn default_snapshot_log_percent() -> u64 {
    100
}

fn default_snapshot_every() -> u64 {
    10_000
}

fn default_logs_kept_after_snapshot() -> u64 {
    1_000
}

fn default_election_min() -> u64 {
    300
}

fn default_election_max() -> u64 {
    600
}

fn default_write_timeout() -> u64 {
    5_000
}

fn default_lease_ms() -> u64 {
    3_000
}

fn default_max_clock_offset_ms() -> u64 {
    500
}

fn default_handover_timeout_ms() -> u64 {
    30_000
}

fn default_placement_election_min() -> u64 {
    600
}

fn default_placement_election_max() -> u64 {
    1_200
}

fn default_demo_workers() -> u32 {
    4
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_http_url(s: &str) -> bool {
    s.strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
}

impl NodeConfig {
    /// Reads and validates a config file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: NodeConfig = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.data_dir, &mut config.secret_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = config.admin_key_file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// Checks every value; errors name the bad key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !is_name(&self.dc) {
            bail!(
                "dc: {:?} is not a valid name ([A-Za-z0-9_-], 1-64 chars)",
                self.dc
            );
        }
        if !is_name(&self.node) {
            bail!("node: {:?} is not a valid name", self.node);
        }
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir: must not be empty");
        }
        for (key, addr) in [
            ("api_addr", &self.api_addr),
            ("internal_addr", &self.internal_addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                bail!("{key}: {addr:?} is not a socket address like 127.0.0.1:7100");
            }
        }
        if self.api_addr == self.internal_addr {
            bail!("internal_addr: must differ from api_addr");
        }
        if self.shard_count == 0 || self.shard_count > 65_536 {
            bail!("shard_count: {} is outside 1..=65536", self.shard_count);
        }
        if self.task_timeout_secs == 0 {
            bail!("task_timeout_secs: must be positive");
        }
        if self.snapshot_every == 0 {
            bail!("snapshot_every: must be positive");
        }
        if self.election_timeout_min_ms < 50 {
            bail!(
                "election_timeout_min_ms: {} is below 50",
                self.election_timeout_min_ms
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            bail!("election_timeout_max_ms: must exceed election_timeout_min_ms");
        }
        if self.write_timeout_ms < 100 {
            bail!("write_timeout_ms: {} is below 100", self.write_timeout_ms);
        }
        if self.handover_timeout_ms < self.lease_ms || self.handover_timeout_ms > 3_600_000 {
            bail!(
                "handover_timeout_ms: {} is outside lease_ms ({})..=3600000",
                self.handover_timeout_ms,
                self.lease_ms
            );
        }
        for (key, value) in [
            ("user_api_auth", &self.user_api_auth),
            ("provisioner_api_auth", &self.provisioner_api_auth),
        ] {
            if let Some(v) = value {
                if coopr_server::AuthMode::parse(v).is_none() {
                    bail!("{key}: {v:?} is neither \"keys\" nor \"trusted-headers\"");
                }
            }
        }
        if self.demo_workers > 1024 {
            bail!("demo_workers: {} is outside 0..=1024", self.demo_workers);
        }
        if let Some(url) = &self.fake_cloud_url {
            if !is_http_url(url) {
                bail!("fake_cloud_url: {url:?} is not an http:// URL");
            }
            if !self.demo {
                bail!("fake_cloud_url: only used in demo mode, and demo is false");
            }
        }
        if self.peers.is_empty() {
            bail!("peers: at least this node must be listed");
        }
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id == 0 || !ids.insert(p.id) {
                bail!("peers[{i}].id: {} is zero or repeated", p.id);
            }
            if !is_name(&p.node) || !names.insert(p.node.clone()) {
                bail!("peers[{i}].node: {:?} is invalid or repeated", p.node);
            }
            if !is_name(&p.dc) {
                bail!("peers[{i}].dc: {:?} is not a valid name", p.dc);
            }
            if !is_http_url(&p.api) {
                bail!("peers[{i}].api: {:?} is not an http:// URL", p.api);
            }
            if !is_http_url(&p.internal) {
                bail!(
                    "peers[{i}].internal: {:?} is not an http:// URL",
                    p.internal
                );
            }
        }
        let Some(me) = self.peers.iter().find(|p| p.node == self.node) else {
            bail!("node: {:?} is not listed in peers", self.node);
        };
        if me.dc != self.dc {
            bail!(
                "dc: {:?} differs from this node's entry in peers ({:?})",
                self.dc,
                me.dc
            );
        }
        let dc_size = self.dc_peers().count();
        if ![1, 3, 5].contains(&dc_size) {
            bail!(
                "peers: datacenter {:?} has {dc_size} nodes; use 1, 3 or 5",
                self.dc
            );
        }
        Ok(())
    }

    /// The nodes of this node's datacenter (its DC log's members).
    pub fn dc_peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(move |p| p.dc == self.dc)
    }

    /// The voters of the placement group: the peers marked `placement`, or (none marked) the
    /// first peer of each DC. Empty for a deployment of one DC.
    pub fn placement_voters(&self) -> Vec<&Peer> {
        let dcs: BTreeSet<&str> = self.peers.iter().map(|p| p.dc.as_str()).collect();
        if dcs.len() < 2 {
            return Vec::new();
        }
        let marked: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|p| p.placement || p.witness)
            .collect();
        if !marked.is_empty() {
            return marked;
        }
        dcs.iter()
            .filter_map(|dc| {
                self.peers
                    .iter()
                    .filter(|p| p.dc == *dc)
                    .min_by_key(|p| p.id)
            })
            .collect()
    }

    /// Reads the cluster secret.
    pub fn secret(&self) -> anyhow::Result<String> {
        let s = std::fs::read_to_string(&self.secret_file)
            .with_context(|| format!("secret_file: cannot read {}", self.secret_file.display()))?;
        let s = s.trim().to_string();
        if s.len() < 16 {
            bail!(
                "secret_file: {} holds fewer than 16 characters",
                self.secret_file.display()
            );
        }
        Ok(s)
    }
}

#[derive(clap::Args, Debug)]
pub struct InitClusterArgs {
    /// Number of datacenters (named a, b, c, ...).
    #[arg(long, default_value_t = 1)]
    pub dcs: u32,
    /// Nodes per datacenter (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes_per_dc: u32,
    /// Node i (0-based) of DC d (0-based) serves its user API at base + 10*d + i and its internal
    /// API at base + 10*d + 5 + i.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed the demo tenant/keys/catalog and run fake-cloud workers in each server.
    #[arg(long)]
    pub demo: bool,
    /// Number of shards.
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Add a witness site (`witness`, one node at base + 10*dcs): a placement voter without
    /// data, the third vote a deployment of two DCs needs to survive the loss of one.
    #[arg(long)]
    pub witness: bool,
}

/// One entry of `endpoints.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub dc: String,
    pub node: String,
    pub api: String,
    pub internal: String,
    pub config: PathBuf,
}

pub fn dc_name(d: u32) -> String {
    char::from_u32(u32::from(b'a') + d)
        .map(String::from)
        .unwrap_or_else(|| format!("dc{d}"))
}

/// Where the deployment's shared fake cloud listens (`--demo` only): the first port after the
/// last site's, `base + 10 * sites`, so that it stays clear of every node's ports.
pub fn fake_cloud_addr(args: &InitClusterArgs) -> Option<String> {
    let sites = args.dcs + u32::from(args.witness);
    let port = u32::from(args.base_port) + 10 * sites;
    (args.demo && port <= 65_535).then(|| format!("127.0.0.1:{port}"))
}

/// Where the deployment's HAProxy frontend listens (`haproxy.cfg`): the port after the shared
/// fake cloud's, `base + 10 * sites + 1`, clear of every node's ports (`None` past 65535).
pub fn haproxy_addr(args: &InitClusterArgs) -> Option<String> {
    let sites = args.dcs + u32::from(args.witness);
    let port = u32::from(args.base_port) + 10 * sites + 1;
    (port <= 65_535).then(|| format!("127.0.0.1:{port}"))
}

/// The HAProxy configuration of a deployment: one HTTP frontend at `listen`, one backend with
/// every data node of every DC (a witness has no user API), health-checked on `GET /ready`.
///
/// Every node accepts every request (it forwards what it cannot serve itself), so the backend
/// simply round-robins over all nodes that are ready; `/ready` turns 503 on every node of a DC
/// that cannot write (no leader, no quorum, no lease), so a dead or cut-off DC leaves the pool
/// after two failed checks (about a second). Only connection failures are retried by HAProxy
/// (the request never reached a node); any answer, a 503 included, goes back to the client,
/// which retries with its `Idempotency-Key`: a node may have committed a write whose answer
/// was lost, and only the client knows whether resending it is safe.
pub fn haproxy_config(listen: &str, peers: &[Peer]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HAProxy in front of every node of this deployment (written by coopr init-cluster).
# Run it in the foreground with `haproxy -f haproxy.cfg -db`; clients use http://{listen}.
# A node is in the pool while GET /ready answers 200: its DC can accept writes now.

global
    maxconn 4096
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    # Connecting to a node on this machine or in this network is fast: fail over quickly.
    timeout connect 1s
    # Clients make plain requests (no long polls); a write waits at most the node's
    # write_timeout_ms (default 5 s), a forwarded one a little more.
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout check 1s
    # Resend a request only when it never reached a node, and then to another node.
    retries 3
    retry-on conn-failure
    option redispatch 1

frontend coopr
    bind {listen}
    default_backend coopr_nodes

backend coopr_nodes
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    # Out after two failed checks half a second apart, back after two good ones.
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2"
    );
    for p in peers.iter().filter(|p| !p.witness) {
        let address = p.api.trim_start_matches("http://").trim_end_matches('/');
        let _ = writeln!(text, "    server {} {address} check  # DC {}", p.node, p.dc);
    }
    text
}

/// Writes the deployment and returns the endpoints.
pub fn init_cluster(
    args: &InitClusterArgs,
    secret: &str,
    admin_key: &str,
) -> anyhow::Result<Vec<Endpoint>> {
    if args.dcs == 0 || args.dcs > 26 {
        bail!("--dcs must be between 1 and 26");
    }
    if ![1, 3, 5].contains(&args.nodes_per_dc) {
        bail!("--nodes-per-dc must be 1, 3 or 5");
    }
    let top = u32::from(args.base_port)
        + 10 * (args.dcs - 1 + u32::from(args.witness))
        + 5
        + args.nodes_per_dc;
    if top > 65_535 || haproxy_addr(args).is_none() {
        bail!(
            "--base-port {} leaves no room for {} DCs",
            args.base_port,
            args.dcs
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let mut peers = Vec::new();
    for d in 0..args.dcs {
        for i in 0..args.nodes_per_dc {
            let api_port = u32::from(args.base_port) + 10 * d + i;
            let internal_port = api_port + 5;
            peers.push(Peer {
                id: u64::from(d * args.nodes_per_dc + i + 1),
                dc: dc_name(d),
                node: format!("{}{}", dc_name(d), i + 1),
                api: format!("http://127.0.0.1:{api_port}"),
                internal: format!("http://127.0.0.1:{internal_port}"),
                placement: args.dcs > 1 && i == 0,
                witness: false,
            });
        }
    }
    if args.witness {
        let api_port = u32::from(args.base_port) + 10 * args.dcs;
        peers.push(Peer {
            id: u64::from(args.dcs * args.nodes_per_dc + 1),
            dc: "witness".into(),
            node: "witness1".into(),
            api: format!("http://127.0.0.1:{api_port}"),
            internal: format!("http://127.0.0.1:{}", api_port + 5),
            placement: true,
            witness: true,
        });
    }
    write_private(&out.join("secret"), &format!("{secret}\n"))?;
    write_private(&out.join("admin-key"), &format!("{admin_key}\n"))?;
    let mut endpoints = Vec::new();
    let mut script = String::from("#!/bin/sh\n# Starts every node of this deployment in the background; logs in <node>.log.\ncd \"$(dirname \"$0\")\"\nCOOPR=${COOPR:-coopr}\n");
    let fake_cloud = fake_cloud_addr(args);
    if let Some(addr) = &fake_cloud {
        // Started first: the nodes' workers use it from their first task.
        let _ = writeln!(
            script,
            "\"$COOPR\" fake-cloud --listen {addr} --state fake-cloud.json > fake-cloud.log 2>&1 &"
        );
    }
    for p in &peers {
        let config = NodeConfig {
            dc: p.dc.clone(),
            node: p.node.clone(),
            data_dir: PathBuf::from(format!("data/{}", p.node)),
            api_addr: p.api.trim_start_matches("http://").to_string(),
            internal_addr: p.internal.trim_start_matches("http://").to_string(),
            secret_file: PathBuf::from("secret"),
            shard_count: args.shards,
            task_timeout_secs: default_task_timeout(),
            demo: args.demo,
            demo_workers: default_demo_workers(),
            fake_cloud_url: fake_cloud.as_ref().map(|addr| format!("http://{addr}")),
            snapshot_every: default_snapshot_every(),
            snapshot_log_percent: default_snapshot_log_percent(),
            logs_kept_after_snapshot: default_logs_kept_after_snapshot(),
            job_retention_ms: None,
            election_timeout_min_ms: default_election_min(),
            election_timeout_max_ms: default_election_max(),
            write_timeout_ms: default_write_timeout(),
            lease_ms: default_lease_ms(),
            max_clock_offset_ms: default_max_clock_offset_ms(),
            placement_election_timeout_min_ms: default_placement_election_min(),
            placement_election_timeout_max_ms: default_placement_election_max(),
            handover_timeout_ms: default_handover_timeout_ms(),
            api_request_timeout_ms: None,
            replication_pipeline: None,
            api_max_concurrent_requests: None,
            internal_request_timeout_ms: None,
            internal_max_concurrent_requests: None,
            max_client_writes_in_flight: None,
            user_api_auth: None,
            provisioner_api_auth: None,
            admin_key_file: Some(PathBuf::from("admin-key")),
            peers: peers.clone(),
        };
        config.validate()?;
        let path = out.join(format!("{}.toml", p.node));
        let text = format!(
            "# coopr node {} of datacenter {}\n{}",
            p.node,
            p.dc,
            toml::to_string_pretty(&config)?
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        let _ = writeln!(
            script,
            "\"$COOPR\" server --config {}.toml > {}.log 2>&1 &",
            p.node, p.node
        );
        endpoints.push(Endpoint {
            dc: p.dc.clone(),
            node: p.node.clone(),
            api: p.api.clone(),
            internal: p.internal.clone(),
            config: path,
        });
    }
    script.push_str("wait\n");
    let start = out.join("start.sh");
    std::fs::write(&start, script)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(
        out.join("endpoints.json"),
        serde_json::to_string_pretty(&endpoints)? + "\n",
    )?;
    if let Some(listen) = haproxy_addr(args) {
        std::fs::write(out.join("haproxy.cfg"), haproxy_config(&listen, &peers))?;
    }
    Ok(endpoints)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    coopr_server::write_private(path, text)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, dcs: u32, nodes: u32) -> InitClusterArgs {
        InitClusterArgs {
            dcs,
            nodes_per_dc: nodes,
            base_port: 7100,
            out: out.to_path_buf(),
            demo: true,
            shards: 64,
            witness: false,
        }
    }

    /// init-cluster writes one valid config per node, with the documented ports and names, and
    /// endpoints.json listing them.
    #[test]
    fn init_cluster_writes_a_valid_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = init_cluster(
            &args(dir.path(), 2, 3),
            "0123456789abcdef0123",
            "admin-key-123",
        )
        .unwrap();
        assert_eq!(endpoints.len(), 6);
        assert_eq!(endpoints[0].node, "a1");
        assert_eq!(endpoints[0].api, "http://127.0.0.1:7100");
        assert_eq!(endpoints[4].node, "b2");
        assert_eq!(endpoints[4].api, "http://127.0.0.1:7111");
        for e in &endpoints {
            let config = NodeConfig::load(&e.config).unwrap();
            assert_eq!(config.node, e.node);
            assert_eq!(config.dc_peers().count(), 3);
            assert_eq!(config.secret().unwrap(), "0123456789abcdef0123");
        }
        let listed: Vec<Endpoint> =
            serde_json::from_slice(&std::fs::read(dir.path().join("endpoints.json")).unwrap())
                .unwrap();
        assert_eq!(listed.len(), 6);
    }

    /// `--demo` adds one fake cloud for the whole deployment: start.sh starts it first, on the
    /// port after the last site's, with its state in the deployment dir, and every node's
    /// config points its workers at it. Without `--demo` there is neither.
    #[test]
    fn init_cluster_demo_shares_one_fake_cloud() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = args(dir.path(), 2, 3);
        two.witness = true;
        let endpoints = init_cluster(&two, "0123456789abcdef0123", "k").unwrap();
        for e in &endpoints {
            let config = NodeConfig::load(&e.config).unwrap();
            assert_eq!(
                config.fake_cloud_url.as_deref(),
                Some("http://127.0.0.1:7130"),
                "{}",
                e.node
            );
        }
        let script = std::fs::read_to_string(dir.path().join("start.sh")).unwrap();
        let line = "\"$COOPR\" fake-cloud --listen 127.0.0.1:7130 --state fake-cloud.json > fake-cloud.log 2>&1 &";
        let position = script.find(line).unwrap_or_else(|| panic!("{script}"));
        assert!(position < script.find(" server --config ").unwrap());

        let plain = tempfile::tempdir().unwrap();
        let mut no_demo = args(plain.path(), 1, 3);
        no_demo.demo = false;
        let endpoints = init_cluster(&no_demo, "0123456789abcdef0123", "k").unwrap();
        assert_eq!(
            NodeConfig::load(&endpoints[0].config)
                .unwrap()
                .fake_cloud_url,
            None
        );
        let script = std::fs::read_to_string(plain.path().join("start.sh")).unwrap();
        assert!(!script.contains("fake-cloud"), "{script}");
    }

    /// `haproxy.cfg` lists every data node of every DC (not the witness) as a server checked on
    /// `/ready`, behind one frontend on `base + 10 * sites + 1`.
    #[test]
    fn init_cluster_writes_an_haproxy_config_naming_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = args(dir.path(), 2, 3);
        two.witness = true;
        let endpoints = init_cluster(&two, "0123456789abcdef0123", "k").unwrap();
        let text = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
        assert!(text.contains("\n    bind 127.0.0.1:7131\n"), "{text}");
        assert!(text.contains("option httpchk GET /ready"), "{text}");
        assert!(text.contains("retry-on conn-failure"), "{text}");
        let servers: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .collect();
        assert_eq!(servers.len(), 6, "{text}");
        for e in endpoints.iter().filter(|e| e.dc != "witness") {
            let line = format!(
                "server {} {} check",
                e.node,
                e.api.trim_start_matches("http://")
            );
            assert!(servers.iter().any(|s| s.contains(&line)), "{line}: {text}");
        }
        assert!(!text.contains("witness1"), "{text}");
        assert_eq!(haproxy_addr(&two).as_deref(), Some("127.0.0.1:7131"));
    }

    /// Validation errors name the offending key.
    /// With several DCs the first node of each votes in the placement group; `--witness` adds
    /// a witness site that votes too and holds no data.
    #[test]
    fn placement_voters_are_one_node_per_dc_and_the_witness() {
        let dir = tempfile::tempdir().unwrap();
        let mut two = args(dir.path(), 2, 3);
        two.witness = true;
        let endpoints = init_cluster(&two, "0123456789abcdef0123", "k").unwrap();
        assert_eq!(endpoints.len(), 7);
        let config = NodeConfig::load(&endpoints[4].config).unwrap();
        let voters: Vec<&str> = config
            .placement_voters()
            .iter()
            .map(|p| p.node.as_str())
            .collect();
        assert_eq!(voters, ["a1", "b1", "witness1"]);
        let witness = config.peers.iter().find(|p| p.witness).unwrap();
        assert_eq!(
            (witness.dc.as_str(), witness.api.as_str()),
            ("witness", "http://127.0.0.1:7120")
        );
        let one = init_cluster(&args(dir.path(), 1, 3), "0123456789abcdef0123", "k").unwrap();
        let config = NodeConfig::load(&one[0].config).unwrap();
        assert!(config.placement_voters().is_empty());
    }

    #[test]
    fn validation_names_the_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = init_cluster(&args(dir.path(), 1, 3), "0123456789abcdef0123", "k").unwrap();
        let good = NodeConfig::load(&endpoints[0].config).unwrap();
        type Mutation = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("api_addr", Box::new(|c| c.api_addr = "nope".into())),
            ("shard_count", Box::new(|c| c.shard_count = 0)),
            (
                "handover_timeout_ms",
                Box::new(|c| c.handover_timeout_ms = c.lease_ms - 1),
            ),
            ("node", Box::new(|c| c.node = "zz".into())),
            ("peers[1].id", Box::new(|c| c.peers[1].id = 1)),
            (
                "peers[2].api",
                Box::new(|c| c.peers[2].api = "ftp://x".into()),
            ),
            (
                "fake_cloud_url",
                Box::new(|c| c.fake_cloud_url = Some("127.0.0.1:7130".into())),
            ),
            (
                "fake_cloud_url",
                Box::new(|c| {
                    c.fake_cloud_url = Some("http://127.0.0.1:7130".into());
                    c.demo = false;
                }),
            ),
            (
                "peers: datacenter",
                Box::new(|c| {
                    c.peers.pop();
                }),
            ),
            (
                "user_api_auth",
                Box::new(|c| c.user_api_auth = Some("none".into())),
            ),
        ];
        for (key, mutate) in cases {
            let mut bad = good.clone();
            mutate(&mut bad);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: got {err}");
        }
        let text = std::fs::read_to_string(&endpoints[0].config)
            .unwrap()
            .replace("shard_count", "shards_count");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(err.contains("shards_count"), "{err}");
    }
}
