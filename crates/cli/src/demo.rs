//! `coopr demo`: a server seeded with the demo tenant and the example catalog, plus provisioner
//! workers backed by the built-in fake cloud, in one process. Reuses its data dir on restart.
//!
//! ```text
//!   DC a: server(s) ◄── workers ──┐
//!   DC b: server(s) ◄── workers ──┼──HTTP──► one fake cloud (free port, <data-dir>/fake-cloud.json)
//!   DC c: server(s) ◄── workers ──┘          GET /machines: every machine, with its counts
//! ```
//!
//! The workers reach the cloud over HTTP although it runs in the same process, so that the demo
//! exercises the path separate processes use (`coopr init-cluster --demo`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use coopr_provisioner::{FakeCloudServer, ProvisionerConfig};
use coopr_server::{Member, ServerConfig};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of datacenters (a, b, c, ...); shards are spread over them and replicated.
    #[arg(long, default_value_t = 3)]
    dcs: u32,
    /// Nodes in the datacenter (1, 3 or 5), forming its Raft log.
    #[arg(long, default_value_t = 1)]
    nodes_per_dc: u32,
    /// The user API listens on this port (node i of DC d: base + 10*d + i; internal API +5).
    #[arg(long, default_value_t = 55054)]
    base_port: u16,
    /// Where the demo keeps its data (reused when restarted).
    #[arg(long, default_value = "coopr-demo")]
    pub(crate) data_dir: PathBuf,
    /// Fake-cloud workers per node.
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Default latency of each fake-cloud operation (ms), so progress is visible.
    #[arg(long, default_value_t = 100)]
    fake_latency_ms: u64,
}

/// How long the demo waits for every node to be ready before it prints its instructions anyway.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until every node at `urls` answers `GET /ready` with 200 (its DC seeded, the demo
/// tenant and keys there, its lease held), or [`READY_WAIT`] passed; returns the nodes that are
/// not ready, with the reason their last answer gave.
async fn wait_ready(urls: &[String]) -> Vec<(String, String)> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        let mut waiting = Vec::new();
        for url in urls {
            let answer = http.get(format!("{url}/ready")).send().await;
            let reason = match answer {
                Ok(r) if r.status() == 200 => continue,
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "not ready".to_string()),
                Err(e) => e.to_string(),
            };
            waiting.push((url.clone(), reason));
        }
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            return waiting;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn run(
    args: DemoArgs,
    log: Option<PathBuf>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !(1..=9).contains(&args.dcs) {
        anyhow::bail!("--dcs must be between 1 and 9");
    }
    if ![1, 3, 5].contains(&args.nodes_per_dc) {
        anyhow::bail!("--nodes-per-dc must be 1, 3 or 5");
    }
    if u32::from(args.base_port) + 10 * (args.dcs - 1) + 5 + args.nodes_per_dc > 65_535 {
        anyhow::bail!("--base-port {} is too high", args.base_port);
    }
    std::fs::create_dir_all(&args.data_dir)?;
    // Node i of DC d: API at base + 10*d + i, internal API at base + 10*d + 5 + i.
    let port = |d: u32, offset: u32| u32::from(args.base_port) + 10 * d + offset;
    let dc_members: Vec<(String, BTreeMap<u64, Member>)> = (0..args.dcs)
        .map(|d| {
            let dc = crate::node_config::dc_name(d);
            let members = (0..args.nodes_per_dc)
                .map(|i| {
                    let member = Member {
                        node: format!("{dc}{}", i + 1),
                        api: format!("http://127.0.0.1:{}", port(d, i)),
                        internal: format!("http://127.0.0.1:{}", port(d, 5 + i)),
                    };
                    (u64::from(d * args.nodes_per_dc + i) + 1, member)
                })
                .collect();
            (dc, members)
        })
        .collect();
    // The nodes of one process share a secret made anew at each start.
    let secret = format!(
        "{}{}",
        coopr_server::Random::Os.new_secret(),
        coopr_server::Random::Os.new_secret()
    );
    // The first node of each DC votes in the placement group (with several DCs).
    let placement_members: BTreeMap<u64, coopr_server::PlacementMember> = if args.dcs > 1 {
        dc_members
            .iter()
            .filter_map(|(dc, members)| {
                let (id, first) = members.iter().next()?;
                Some((
                    *id,
                    coopr_server::PlacementMember {
                        dc: dc.clone(),
                        internal: first.internal.clone(),
                    },
                ))
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut configs = Vec::new();
    for (dc, members) in &dc_members {
        let remote_dcs: BTreeMap<String, Vec<Member>> = dc_members
            .iter()
            .filter(|(other, _)| other != dc)
            .map(|(other, m)| (other.clone(), m.values().cloned().collect()))
            .collect();
        for (id, member) in members {
            let api_port = member
                .api
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0);
            configs.push(ServerConfig {
                dc: dc.clone(),
                node: member.node.clone(),
                node_id: *id,
                data_dir: args.data_dir.join(&member.node),
                listen: format!("127.0.0.1:{api_port}"),
                internal_listen: (args.nodes_per_dc > 1 || args.dcs > 1)
                    .then(|| member.internal.trim_start_matches("http://").to_string()),
                members: if args.nodes_per_dc > 1 {
                    members.clone()
                } else {
                    BTreeMap::new()
                },
                remote_dcs: remote_dcs.clone(),
                placement_node_id: placement_members.contains_key(id).then_some(*id),
                placement_members: placement_members.clone(),
                secret: Some(secret.clone()),
                demo: true,
                ..ServerConfig::default()
            });
        }
    }
    let mut servers = Vec::new();
    for started in futures_join(configs.clone().into_iter().map(coopr_server::start)).await {
        servers.push(started?);
    }
    // One simulated cloud, shared by every DC's workers as real DCs share a real provider.
    let cloud = crate::fake_cloud(
        Some(&args.data_dir.join("fake-cloud.json")),
        args.fake_latency_ms,
        0.0,
    )?;
    let cloud_server = FakeCloudServer::start(cloud, "127.0.0.1:0").await?;
    let cloud_url = cloud_server.url();
    let mut workers = Vec::new();
    for server in &servers {
        let config = &server.app.config;
        // Each node's workers talk to their node first and to the others of their DC when it
        // is down (provisioners are DC-local).
        let mut order = vec![server.url()];
        order.extend(
            servers
                .iter()
                .filter(|s| s.app.config.dc == config.dc && s.url() != server.url())
                .map(|s| s.url()),
        );
        let id = format!("demo-{}", config.node);
        workers.push(spawn_fake_workers(
            order,
            &id,
            args.workers,
            FakeMachines::Shared(&cloud_url),
            args.fake_latency_ms,
            shutdown.clone(),
        )?);
    }
    // The instructions only once they work: a request in the first second would meet a DC
    // whose tenants are not there yet, or that holds no lease.
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    for (url, reason) in wait_ready(&urls).await {
        eprintln!("warning: {url} is not ready after {READY_WAIT:?}: {reason}");
    }
    let logs = match &log {
        Some(file) => format!(
            "Logs: {} (COOPR_LOG or RUST_LOG, e.g. RUST_LOG=info, print them here instead)\n",
            file.display()
        ),
        None => String::new(),
    };
    let mut lines = String::new();
    for s in &servers {
        lines.push_str(&format!(
            "  datacenter {} node {}: {}\n",
            s.app.config.dc,
            s.app.config.node,
            s.url()
        ));
    }
    let url = servers[0].url();
    let other = servers
        .iter()
        .find(|s| s.app.config.dc != servers[0].app.config.dc)
        .map(|s| s.url());
    let replication = match other {
        Some(other) => format!(
            "\nCreate a cluster in datacenter a and watch it appear in b (served from b's copy, with\n\
             Coopr-Served-By and Coopr-Staleness-Ms headers):\n  \
             coopr cluster create web --template lamp --machines 3 --wait --server {url}\n  \
             coopr cluster list --server {other}\n  \
             curl -si -H 'Coopr-UserID: demo' -H 'Coopr-TenantID: demo' -H 'Coopr-ApiKey: demo-key' {other}/v2/clusters/<id>\n\
             Replication lag, the shard map with leases and epochs, a graceful handover:\n  \
             COOPR_TENANT=superadmin COOPR_USER=admin COOPR_API_KEY=admin-key coopr admin replication --server {other}\n  \
             COOPR_TENANT=superadmin COOPR_USER=admin COOPR_API_KEY=admin-key coopr admin shards --server {other}\n  \
             COOPR_TENANT=superadmin COOPR_USER=admin COOPR_API_KEY=admin-key coopr admin handover 0 --to b --server {other}\n"
        ),
        None => String::new(),
    };
    println!(
        "coopr demo: {} datacenter(s) of {} node(s); user APIs:\n{lines}\
         data dir {} (reused on restart); {} fake-cloud workers per node\n\n\
         Web console: {url}/ui/ (any node; tenant superadmin, user admin, key admin-key to see\n\
         the datacenters and the shard map; tenant demo, user demo, key demo-key for clusters)\n\n\
         Try:\n  \
         export COOPR_SERVER={url} COOPR_TENANT=demo COOPR_USER=demo COOPR_API_KEY=demo-key\n  \
         coopr cluster create web --template lamp --machines 3 --wait\n  \
         coopr cluster list\n  \
         coopr cluster show <id>\n  \
         coopr cluster delete <id> --wait\n\n\
         Or with curl:\n  \
         curl -s -H 'Coopr-UserID: demo' -H 'Coopr-TenantID: demo' -H 'Coopr-ApiKey: demo-key' {url}/v2/clustertemplates\n  \
         curl -s {url}/v2/status   # role, leader, term of the DC log\n\
         The fake cloud every datacenter's workers share (each machine by node id, with its creates and deletes):\n  \
         curl -s {cloud_url}/machines\n{replication}\
         Superadmin: tenant superadmin, user admin, key admin-key. Admin of tenant demo: user admin,\n\
         key demo-admin-key (demo-key is user demo's only). Metrics: {url}/metrics\n\
         {logs}Ctrl-C stops the demo.",
        args.dcs,
        args.nodes_per_dc,
        args.data_dir.display(),
        args.workers,
    );
    let control = Control {
        configs,
        running: tokio::sync::Mutex::new(
            servers
                .into_iter()
                .map(|s| (s.app.config.node.clone(), s))
                .collect(),
        ),
    };
    let control = std::sync::Arc::new(control);
    let control_addr = format!("127.0.0.1:{}", u32::from(args.base_port) + 10 * args.dcs);
    let listener = tokio::net::TcpListener::bind(&control_addr).await;
    match listener {
        Ok(listener) if args.dcs > 1 => {
            let router = axum::Router::new()
                .route("/dcs/{dc}/stop", axum::routing::post(stop_dc))
                .route("/dcs/{dc}/start", axum::routing::post(start_dc))
                .with_state(control.clone());
            let mut stopping = shutdown.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await;
            });
            let other = crate::node_config::dc_name(1);
            println!(
                "\nWatch a failover: stop datacenter a abruptly (its lease runs out; within about 4 s\n\
                 the placement group gives its shards, the global one included, to b and c, and a's\n\
                 running jobs finish there), then bring it back (it rejoins as a replica; what it had\n\
                 not replicated is in its lost-operations report):\n  \
                 curl -X POST http://{control_addr}/dcs/a/stop\n  \
                 COOPR_TENANT=superadmin COOPR_USER=admin COOPR_API_KEY=admin-key coopr admin shards --server {}\n  \
                 curl -X POST http://{control_addr}/dcs/a/start\n  \
                 COOPR_TENANT=superadmin COOPR_USER=admin COOPR_API_KEY=admin-key coopr admin lost-operations --server {url}",
                control.api_of(&other).unwrap_or_default()
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%control_addr, error = %e, "no failover control for the demo"),
    }
    let mut stop = shutdown;
    let _ = stop.wait_for(|s| *s).await;
    let running = std::mem::take(&mut *control.running.lock().await);
    for server in running.into_values() {
        server.shutdown().await;
    }
    for w in workers {
        let _ = w.await;
    }
    cloud_server.shutdown().await?;
    Ok(())
}

/// The demo's datacenters, for stopping and starting them (`/dcs/{dc}/stop|start` on the
/// control port): a stopped DC's servers are shut down at once, as if its site went dark
/// (nothing is handed over), and started again on their data.
struct Control {
    configs: Vec<ServerConfig>,
    /// Running servers by node name.
    running: tokio::sync::Mutex<BTreeMap<String, coopr_server::ServerHandle>>,
}

impl Control {
    fn api_of(&self, dc: &str) -> Option<String> {
        self.configs
            .iter()
            .find(|c| c.dc == dc)
            .map(|c| format!("http://{}", c.listen))
    }
}

async fn stop_dc(
    axum::extract::State(control): axum::extract::State<std::sync::Arc<Control>>,
    axum::extract::Path(dc): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    let mut running = control.running.lock().await;
    let nodes: Vec<String> = control
        .configs
        .iter()
        .filter(|c| c.dc == dc && running.contains_key(&c.node))
        .map(|c| c.node.clone())
        .collect();
    if nodes.is_empty() {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("no running datacenter {dc:?}\n"),
        );
    }
    for node in &nodes {
        if let Some(server) = running.remove(node) {
            server.shutdown().await;
        }
    }
    tracing::warn!(%dc, "demo: datacenter stopped");
    (
        axum::http::StatusCode::OK,
        format!("datacenter {dc} stopped ({})\n", nodes.join(", ")),
    )
}

async fn start_dc(
    axum::extract::State(control): axum::extract::State<std::sync::Arc<Control>>,
    axum::extract::Path(dc): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    let mut running = control.running.lock().await;
    let configs: Vec<ServerConfig> = control
        .configs
        .iter()
        .filter(|c| c.dc == dc && !running.contains_key(&c.node))
        .cloned()
        .collect();
    if configs.is_empty() {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("no stopped datacenter {dc:?}\n"),
        );
    }
    for started in futures_join(configs.into_iter().map(coopr_server::start)).await {
        match started {
            Ok(server) => {
                running.insert(server.app.config.node.clone(), server);
            }
            Err(e) => {
                return (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("datacenter {dc} did not start: {e:#}\n"),
                )
            }
        }
    }
    tracing::warn!(%dc, "demo: datacenter started again");
    (
        axum::http::StatusCode::OK,
        format!("datacenter {dc} started\n"),
    )
}

/// Runs futures concurrently and returns their outputs in order (the nodes of a DC must start
/// together: each waits for the others to form the DC log).
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// Where a node's fake-cloud workers keep their machines.
#[derive(Debug, Clone, Copy)]
pub enum FakeMachines<'a> {
    /// A cloud of their own, persisted in this file.
    Own(&'a std::path::Path),
    /// The cloud every DC shares, at this URL (`coopr fake-cloud`).
    Shared(&'a str),
}

/// Runs fake-cloud provisioner workers inside this process, authenticating with the demo
/// superadmin key. `latency_ms` is the default latency of the automator's tasks, and of the
/// provider's with a cloud of their own (a shared cloud has its own default).
pub fn spawn_fake_workers(
    servers: Vec<String>,
    id: &str,
    workers: u32,
    machines: FakeMachines<'_>,
    latency_ms: u64,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let plugins = match machines {
        FakeMachines::Own(state) => {
            crate::builtin_plugins(crate::fake_cloud(Some(state), latency_ms, 0.0)?, None)?
        }
        FakeMachines::Shared(url) => {
            crate::builtin_plugins(crate::fake_cloud(None, latency_ms, 0.0)?, Some(url))?
        }
    };
    let mut provisioner = ProvisionerConfig::new(servers, id, plugins);
    provisioner.capacity = workers;
    provisioner.api_key = Some(coopr_server::seed::DEMO_ADMIN_KEY.to_string());
    provisioner.poll_interval_ms = 100;
    provisioner.heartbeat_interval_ms = 2_000;
    provisioner.validate()?;
    Ok(tokio::spawn(coopr_provisioner::run(provisioner, shutdown)))
}
