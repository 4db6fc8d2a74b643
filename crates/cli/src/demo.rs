//! `coopr demo`: a server seeded with the demo tenant and the example catalog, plus provisioner
//! workers backed by the built-in fake cloud, in one process. Reuses its data dir on restart.

use std::path::PathBuf;

use coopr_provisioner::{PluginRegistry, ProvisionerConfig};
use coopr_server::ServerConfig;
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of datacenters (1 until cross-datacenter replication exists).
    #[arg(long, default_value_t = 1)]
    dcs: u32,
    /// The user API listens on this port (node i of DC d: base + 10*d + i).
    #[arg(long, default_value_t = 55054)]
    base_port: u16,
    /// Where the demo keeps its data (reused when restarted).
    #[arg(long, default_value = "coopr-demo")]
    data_dir: PathBuf,
    /// Fake-cloud workers.
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Default latency of each fake-cloud operation (ms), so progress is visible.
    #[arg(long, default_value_t = 100)]
    fake_latency_ms: u64,
}

pub async fn run(args: DemoArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if args.dcs != 1 {
        anyhow::bail!(
            "--dcs {}: this build runs one datacenter; several need cross-datacenter replication",
            args.dcs
        );
    }
    std::fs::create_dir_all(&args.data_dir)?;
    let config = ServerConfig {
        data_dir: args.data_dir.join("a1"),
        listen: format!("127.0.0.1:{}", args.base_port),
        demo: true,
        ..ServerConfig::default()
    };
    let server = coopr_server::start(config).await?;
    let url = server.url();
    let workers = spawn_fake_workers(
        vec![url.clone()],
        "demo-a1",
        args.workers,
        &args.data_dir.join("fake-cloud.json"),
        args.fake_latency_ms,
        shutdown.clone(),
    )?;

    println!(
        "coopr demo: datacenter a, node a1, user API at {url}\n\
         data dir {} (reused on restart); {} fake-cloud workers\n\n\
         Try:\n  \
         export COOPR_SERVER={url} COOPR_TENANT=demo COOPR_USER=demo COOPR_API_KEY=demo-key\n  \
         coopr cluster create web --template lamp --machines 3 --wait\n  \
         coopr cluster list\n  \
         coopr cluster show <id>\n  \
         coopr cluster delete <id> --wait\n\n\
         Or with curl:\n  \
         curl -s -H 'Coopr-UserID: demo' -H 'Coopr-TenantID: demo' -H 'Coopr-ApiKey: demo-key' {url}/v2/clustertemplates\n\
         Superadmin: tenant superadmin, user admin, key admin-key. Metrics: {url}/metrics\n\
         Ctrl-C stops the demo.",
        args.data_dir.display(),
        args.workers,
    );
    let mut stop = shutdown;
    let _ = stop.wait_for(|s| *s).await;
    server.shutdown().await;
    let _ = workers.await;
    Ok(())
}

/// Runs fake-cloud provisioner workers inside this process, authenticating with the demo
/// superadmin key. The cloud's machines persist in `cloud_state`.
pub fn spawn_fake_workers(
    servers: Vec<String>,
    id: &str,
    workers: u32,
    cloud_state: &std::path::Path,
    latency_ms: u64,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let cloud = crate::fake_cloud(Some(cloud_state), latency_ms, 0.0)?;
    let mut provisioner = ProvisionerConfig::new(servers, id, PluginRegistry::with_builtins(cloud));
    provisioner.capacity = workers;
    provisioner.api_key = Some(coopr_server::seed::DEMO_ADMIN_KEY.to_string());
    provisioner.poll_interval_ms = 100;
    provisioner.heartbeat_interval_ms = 2_000;
    provisioner.validate()?;
    Ok(tokio::spawn(coopr_provisioner::run(provisioner, shutdown)))
}
