//! `coopr`: one binary for the server, the provisioner, the all-in-one demo and the client.
//!
//! ```text
//!  coopr server       --data-dir D --listen ADDR      a server node (REST API + provisioner API)
//!  coopr provisioner  --server URL                    workers running provider/automator plugins
//!  coopr fake-cloud   --listen ADDR --state FILE       one fake cloud over HTTP, shared by every DC
//!  coopr demo         --base-port P --data-dir D      server + fake-cloud workers, seeded, in one process
//!  coopr cluster ...  / coopr admin ...               the REST client
//! ```

mod client;
mod demo;
mod node_config;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use coopr_provisioner::{
    FakeBackend, FakeCloud, FakeCloudOptions, FakeCloudServer, PluginRegistry, ProvisionerConfig,
    RemoteCloud,
};
use coopr_server::ServerConfig;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "coopr",
    version,
    about = "Cluster provisioning server, hot-hot across datacenters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a server node.
    Server(ServerArgs),
    /// Writes a ready local deployment (one config per node, secret, keys, endpoints.json).
    InitCluster(node_config::InitClusterArgs),
    /// Runs provisioner workers against a server.
    Provisioner(ProvisionerArgs),
    /// Serves one fake cloud over HTTP, for the `fake` provider of every DC's provisioners.
    FakeCloud(FakeCloudArgs),
    /// Runs a server and fake-cloud provisioner workers in one process, seeded for trying coopr.
    Demo(demo::DemoArgs),
    /// Cluster commands (create, list, show, status, delete, ...).
    // The connection options belong to the client commands only: `coopr provisioner` has its
    // own `--server` (repeatable) and `--api-key`, and clap rejects a global option of the same
    // name.
    Cluster {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::ClusterCommand,
    },
    /// Administration (tenants, provisioners, catalog import/export).
    Admin {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::AdminCommand,
    },
    /// Prints a completion script for a shell, e.g. `source <(coopr completions bash)`, or
    /// `coopr completions zsh > ~/.zfunc/_coopr`.
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Node configuration file (see `coopr init-cluster`); replaces the flags below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the REST API (user and provisioner API).
    #[arg(long, default_value = "127.0.0.1:55054")]
    listen: String,
    /// Directory of the node's store.
    #[arg(long, default_value = "coopr-data")]
    data_dir: PathBuf,
    /// Datacenter name.
    #[arg(long, default_value = "a")]
    dc: String,
    /// Node name.
    #[arg(long, default_value = "a1")]
    node: String,
    /// Number of cluster shards (fixed for the life of the data dir).
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// Seconds a worker may hold a task before it is retried.
    #[arg(long, default_value_t = 600)]
    task_timeout_secs: u64,
    /// Seed the demo tenant and fixed demo keys (never in production).
    #[arg(long)]
    demo: bool,
    /// File holding the superadmin key to create at first start (else one is generated into
    /// `<data-dir>/admin-key`).
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ProvisionerArgs {
    /// Server base URL; repeat for several servers (tried in turn when one is unreachable).
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// Provisioner id (unique per deployment).
    #[arg(long, default_value = "provisioner-1")]
    id: String,
    /// Number of workers (tasks run at once).
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// The superadmin's API key (of tenant `superadmin`, bound to user `admin`; provisioners
    /// authenticate with it).
    #[arg(long = "api-key", env = "COOPR_PROVISIONER_KEY")]
    api_key: Option<String>,
    /// Take only tasks of this tenant id.
    #[arg(long)]
    tenant_id: Option<String>,
    /// File persisting the fake cloud's machines (so creation stays idempotent across restarts).
    #[arg(long, conflicts_with = "fake_cloud_url")]
    fake_cloud_state: Option<PathBuf>,
    /// URL of a shared fake cloud (`coopr fake-cloud`) for the `fake` provider's machines,
    /// instead of a cloud in this process. The --fake-* defaults then apply to the automator.
    #[arg(long)]
    fake_cloud_url: Option<String>,
    /// Default latency of fake-cloud operations (ms).
    #[arg(long, default_value_t = 0)]
    fake_latency_ms: u64,
    /// Default failure rate of fake-cloud operations (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    fake_failure_rate: f64,
    /// Poll interval when the queue is empty (ms).
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
}

#[derive(clap::Args, Debug)]
struct FakeCloudArgs {
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// File persisting the machines and their counts (created if missing).
    #[arg(long)]
    state: PathBuf,
    /// Default latency of each operation (ms); a request may set its own.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Default failure rate of each operation (0.0 to 1.0); a request may set its own.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COOPR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    log_to_stderr(filter);
}

/// Colours only on a terminal: stderr redirected to a file (a service's log) gets plain text.
fn log_to_stderr(filter: tracing_subscriber::EnvFilter) {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The demo's logs: to stderr with the filter of `COOPR_LOG` or `RUST_LOG` when one is set,
/// else at `default` into `file` (a starting deployment logs refused registrations, renewals
/// before the placement group is bootstrapped and elections, which would bury the
/// instructions). Returns the file when logs go there.
fn init_demo_tracing(default: &str, file: &std::path::Path) -> Option<PathBuf> {
    let from_env = ["COOPR_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok());
    if let Some(filter) = from_env {
        log_to_stderr(filter);
        return None;
    }
    let opened = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
        });
    match opened {
        Ok(log) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(default))
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .try_init();
            Some(file.to_path_buf())
        }
        Err(e) => {
            eprintln!("cannot write {}: {e}; logging to stderr", file.display());
            init_tracing(default);
            None
        }
    }
}

/// A shutdown signal that flips on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

pub fn fake_cloud(
    state: Option<&std::path::Path>,
    latency_ms: u64,
    failure_rate: f64,
) -> anyhow::Result<FakeCloud> {
    let options = FakeCloudOptions {
        latency_ms,
        failure_rate,
        ..FakeCloudOptions::default()
    };
    Ok(match state {
        Some(path) => FakeCloud::open_with(path, options)?,
        None => FakeCloud::new(options),
    })
}

/// The fake-cloud workers a demo node runs inside its server.
struct DemoWorkers {
    count: u32,
    /// The shared fake cloud; `None`: a cloud of their own in the node's data dir.
    fake_cloud_url: Option<String>,
}

/// The server configuration from a node config file, and its demo workers.
fn server_config_from_file(path: &std::path::Path) -> anyhow::Result<(ServerConfig, DemoWorkers)> {
    let file = node_config::NodeConfig::load(path)?;
    let me = file
        .peers
        .iter()
        .find(|p| p.node == file.node)
        .map(|p| p.id)
        .unwrap_or(1);
    let members: std::collections::BTreeMap<u64, coopr_server::Member> = file
        .dc_peers()
        .map(|p| {
            (
                p.id,
                coopr_server::Member {
                    node: p.node.clone(),
                    api: p.api.clone(),
                    internal: p.internal.clone(),
                },
            )
        })
        .collect();
    // Every other DC's nodes: the static placement spans all DCs, and replicas pull from owners.
    let mut remote_dcs: std::collections::BTreeMap<String, Vec<coopr_server::Member>> =
        std::collections::BTreeMap::new();
    for p in file.peers.iter().filter(|p| p.dc != file.dc && !p.witness) {
        remote_dcs
            .entry(p.dc.clone())
            .or_default()
            .push(coopr_server::Member {
                node: p.node.clone(),
                api: p.api.clone(),
                internal: p.internal.clone(),
            });
    }
    let placement_members: std::collections::BTreeMap<u64, coopr_server::PlacementMember> = file
        .placement_voters()
        .into_iter()
        .map(|p| {
            (
                p.id,
                coopr_server::PlacementMember {
                    dc: p.dc.clone(),
                    internal: p.internal.clone(),
                },
            )
        })
        .collect();
    let placement_node_id = placement_members.contains_key(&me).then_some(me);
    // Internal calls are authenticated with the secret; a missing or short one is a config error.
    let secret = file.secret()?;
    let admin_key = match &file.admin_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("admin_key_file: {e}"))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let workers = DemoWorkers {
        count: file.demo_workers,
        fake_cloud_url: file.fake_cloud_url,
    };
    let defaults = ServerConfig::default();
    Ok((
        ServerConfig {
            dc: file.dc,
            node: file.node,
            data_dir: file.data_dir,
            listen: file.api_addr,
            shard_count: file.shard_count,
            task_timeout_ms: file.task_timeout_secs.saturating_mul(1000),
            demo: file.demo,
            admin_key,
            node_id: me,
            members,
            internal_listen: Some(file.internal_addr),
            secret: Some(secret),
            snapshot_every: file.snapshot_every,
            snapshot_log_percent: file.snapshot_log_percent,
            logs_kept_after_snapshot: file.logs_kept_after_snapshot,
            job_retention_ms: file.job_retention_ms.unwrap_or(defaults.job_retention_ms),
            election_timeout_ms: (file.election_timeout_min_ms, file.election_timeout_max_ms),
            write_timeout_ms: file.write_timeout_ms,
            remote_dcs,
            placement_members,
            placement_node_id,
            lease_ms: file.lease_ms,
            max_clock_offset_ms: file.max_clock_offset_ms,
            handover_timeout_ms: file.handover_timeout_ms,
            placement_election_timeout_ms: (
                file.placement_election_timeout_min_ms,
                file.placement_election_timeout_max_ms,
            ),
            witness: file.peers.iter().any(|p| p.id == me && p.witness),
            api_request_timeout_ms: file
                .api_request_timeout_ms
                .unwrap_or(defaults.api_request_timeout_ms),
            replication_pipeline: file
                .replication_pipeline
                .unwrap_or(defaults.replication_pipeline),
            api_max_concurrent_requests: file
                .api_max_concurrent_requests
                .unwrap_or(defaults.api_max_concurrent_requests),
            internal_request_timeout_ms: file
                .internal_request_timeout_ms
                .unwrap_or(defaults.internal_request_timeout_ms),
            internal_max_concurrent_requests: file
                .internal_max_concurrent_requests
                .unwrap_or(defaults.internal_max_concurrent_requests),
            max_client_writes_in_flight: file
                .max_client_writes_in_flight
                .unwrap_or(defaults.max_client_writes_in_flight),
            user_api_auth: file
                .user_api_auth
                .as_deref()
                .and_then(coopr_server::AuthMode::parse)
                .unwrap_or_default(),
            provisioner_api_auth: file
                .provisioner_api_auth
                .as_deref()
                .and_then(coopr_server::AuthMode::parse)
                .unwrap_or_default(),
            ..defaults
        },
        workers,
    ))
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.config {
        let (config, workers) = server_config_from_file(path)?;
        if config.witness {
            let witness = coopr_server::start_witness(config).await?;
            println!(
                "coopr witness (placement voter) listening on {}",
                witness.internal_addr
            );
            let mut stop = shutdown_on_signal();
            let _ = stop.wait_for(|s| *s).await;
            witness.shutdown().await;
            return Ok(());
        }
        let handle = coopr_server::start(config.clone()).await?;
        println!("coopr server listening on {}", handle.url());
        let mut stop = shutdown_on_signal();
        if config.demo && workers.count > 0 {
            let id = format!("demo-{}", config.node);
            let state = config.data_dir.join("fake-cloud.json");
            let machines = match &workers.fake_cloud_url {
                Some(url) => demo::FakeMachines::Shared(url),
                None => demo::FakeMachines::Own(&state),
            };
            // The node's own API first; the others of its DC when it is unreachable.
            let mut servers = vec![handle.url()];
            servers.extend(
                config
                    .members
                    .values()
                    .filter(|m| m.node != config.node)
                    .map(|m| m.api.clone()),
            );
            demo::spawn_fake_workers(servers, &id, workers.count, machines, 0, stop.clone())?;
        }
        let _ = stop.wait_for(|s| *s).await;
        handle.shutdown().await;
        return Ok(());
    }
    let admin_key = match &args.admin_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let config = ServerConfig {
        dc: args.dc,
        node: args.node,
        data_dir: args.data_dir,
        listen: args.listen,
        shard_count: args.shards,
        task_timeout_ms: args.task_timeout_secs.saturating_mul(1000),
        demo: args.demo,
        admin_key,
        ..ServerConfig::default()
    };
    let handle = coopr_server::start(config).await?;
    println!("coopr server listening on {}", handle.url());
    let mut stop = shutdown_on_signal();
    let _ = stop.wait_for(|s| *s).await;
    handle.shutdown().await;
    Ok(())
}

/// The built-in plugins, with the `fake` provider on the shared cloud at `url` if given, else
/// on `cloud`.
pub fn builtin_plugins(cloud: FakeCloud, url: Option<&str>) -> anyhow::Result<PluginRegistry> {
    Ok(match url {
        Some(url) => {
            let remote = RemoteCloud::new(url)?;
            PluginRegistry::with_fake_backend(FakeBackend::Remote(remote), cloud)
        }
        None => PluginRegistry::with_builtins(cloud),
    })
}

async fn run_provisioner(args: ProvisionerArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.fake_failure_rate) {
        anyhow::bail!("--fake-failure-rate must be between 0 and 1");
    }
    let cloud = fake_cloud(
        args.fake_cloud_state.as_deref(),
        args.fake_latency_ms,
        args.fake_failure_rate,
    )?;
    let plugins = builtin_plugins(cloud, args.fake_cloud_url.as_deref())?;
    let mut config = ProvisionerConfig::new(args.servers, args.id, plugins);
    config.capacity = args.capacity;
    config.api_key = args.api_key;
    config.tenant_id = args.tenant_id;
    config.poll_interval_ms = args.poll_interval_ms;
    config.validate()?;
    coopr_provisioner::run(config, shutdown_on_signal()).await
}

async fn run_fake_cloud(args: FakeCloudArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.failure_rate) {
        anyhow::bail!("--failure-rate must be between 0 and 1");
    }
    if args.latency_ms > coopr_provisioner::fake::api::MAX_LATENCY_MS {
        anyhow::bail!(
            "--latency-ms must be at most {}",
            coopr_provisioner::fake::api::MAX_LATENCY_MS
        );
    }
    let cloud = fake_cloud(Some(&args.state), args.latency_ms, args.failure_rate)?;
    let server = FakeCloudServer::start(cloud, &args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!("fake-cloud listening on {}", server.url());
    let mut stop = shutdown_on_signal();
    let _ = stop.wait_for(|s| *s).await;
    server.shutdown().await?;
    Ok(())
}

/// Caps glibc's malloc arenas at one per core, before any thread starts, unless the operator
/// set `MALLOC_ARENA_MAX`. glibc's default is eight per core: each thread that allocates may
/// get an arena of its own, and every arena keeps the free space its thread left between live
/// chunks, so a node held a few MB per arena it never used again (`coopr-bench memory`: about
/// 0.6 KB less per cluster with two arenas on two cores). Threads beyond the cap share arenas,
/// as glibc's own default already makes them do past eight per core.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` changes the allocator's parameters; called before any other thread
        // exists, it races with no allocation.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cap);
        }
    }
}

fn main() {
    cap_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                init_tracing("info,openraft=warn");
                run_server(args).await
            }
            Command::InitCluster(args) => {
                let secret = format!(
                    "{}{}",
                    coopr_server::Random::Os.new_secret(),
                    coopr_server::Random::Os.new_secret()
                );
                let admin_key = if args.demo {
                    coopr_server::seed::DEMO_ADMIN_KEY.to_string()
                } else {
                    coopr_server::Random::Os.new_secret()
                };
                node_config::init_cluster(&args, &secret, &admin_key).map(|endpoints| {
                    for e in &endpoints {
                        println!(
                            "{:<4} {:<4} api {:<24} internal {:<24} {}",
                            e.dc,
                            e.node,
                            e.api,
                            e.internal,
                            e.config.display()
                        );
                    }
                    if let Some(addr) = node_config::fake_cloud_addr(&args) {
                        println!(
                            "fake cloud shared by every node: http://{addr} (curl http://{addr}/machines)"
                        );
                    }
                    println!("start them with {}/start.sh", args.out.display());
                    if let Some(addr) = node_config::haproxy_addr(&args) {
                        println!(
                            "one address for every node: haproxy -f {}/haproxy.cfg -db, then http://{addr}",
                            args.out.display()
                        );
                    }
                })
            }
            Command::Provisioner(args) => {
                init_tracing("info");
                run_provisioner(args).await
            }
            Command::FakeCloud(args) => {
                init_tracing("info");
                run_fake_cloud(args).await
            }
            Command::Demo(args) => {
                let log = init_demo_tracing(
                    "info,openraft=warn",
                    &args.data_dir.join("demo.log"),
                );
                demo::run(args, log, shutdown_on_signal()).await
            }
            Command::Cluster { conn, command } => {
                init_tracing("warn");
                // The client prints its own errors.
                return client::run_cluster(&conn, command).await.map_err(|_| None);
            }
            Command::Admin { conn, command } => {
                init_tracing("warn");
                return client::run_admin(&conn, command).await.map_err(|_| None);
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "coopr",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
        .map_err(Some)
    });
    match result {
        Ok(()) => {}
        Err(Some(e)) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        Err(None) => std::process::exit(1),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's consistency checks (unique option names per command, ...) hold for every
    /// subcommand; they otherwise fail only when the faulty subcommand is run.
    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// The admission settings of a node's TOML reach the server; unset ones keep the
    /// server's defaults.
    #[test]
    fn admission_settings_come_from_the_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let args = crate::node_config::InitClusterArgs {
            dcs: 1,
            nodes_per_dc: 1,
            base_port: 7100,
            out: dir.path().to_path_buf(),
            demo: false,
            shards: 4,
            witness: false,
        };
        let endpoints =
            crate::node_config::init_cluster(&args, "0123456789abcdef0123", "k").unwrap();
        let path = &endpoints[0].config;
        let defaults = coopr_server::ServerConfig::default();
        let (config, _) = super::server_config_from_file(path).unwrap();
        assert_eq!(
            config.api_max_concurrent_requests,
            defaults.api_max_concurrent_requests
        );
        let mut text = std::fs::read_to_string(path).unwrap();
        text = text.replacen(
            "[[peers]]",
            "api_max_concurrent_requests = 7\nmax_client_writes_in_flight = 9\napi_request_timeout_ms = 1500\nprovisioner_api_auth = \"trusted-headers\"\n\n[[peers]]",
            1,
        );
        std::fs::write(path, text).unwrap();
        let (config, _) = super::server_config_from_file(path).unwrap();
        assert_eq!(config.api_max_concurrent_requests, 7);
        assert_eq!(config.max_client_writes_in_flight, 9);
        assert_eq!(config.api_request_timeout_ms, 1_500);
        assert_eq!(
            config.provisioner_api_auth,
            coopr_server::AuthMode::TrustedHeaders
        );
        assert_eq!(config.user_api_auth, coopr_server::AuthMode::Keys);
        assert_eq!(
            config.internal_max_concurrent_requests,
            defaults.internal_max_concurrent_requests
        );
    }
}
