//! Scenario `big`: one `POST /v2/clusters` of a very large cluster through REST, while two probe
//! clients keep going: one durable write (`PUT /v2/hardwaretypes/probe`) and one read
//! (`GET /v2/clustertemplates/base`) at a time. The probes' worst latency shows how long the
//! big create holds up everyone else.
//!
//! ```text
//!  probe writer --PUT hardwaretype--.            .-- solve_layout + build spec (read lock held)
//!  probe reader --GET template------+--> server +-- propose CreateCluster: encode, fsync, apply
//!  big client ---POST clusters (N)--'
//! ```
//!
//! No provisioner runs, so the cluster stays PENDING; only the request path is measured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use coopr_server::ServerConfig;
use serde_json::{json, Value};

use crate::ops::Api;
use crate::stats::{ms, Summary};

const CATALOG: &str = include_str!("../../../examples/catalog.json");

#[derive(clap::Args, Debug)]
pub struct BigArgs {
    /// Directory under which the temporary data dir is made.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Cluster sizes to create, one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u32, 10_000])]
    nodes: Vec<u32>,
    /// Probe time before and after each big create (ms).
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
}

/// Runs `probe` in a loop until `stop`; returns each call's latency.
async fn probe_loop<F, Fut>(stop: Arc<AtomicBool>, mut probe: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut latencies = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        probe(i).await?;
        latencies.push(started.elapsed());
        i += 1;
    }
    Ok(latencies)
}

pub async fn run(args: BigArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let config = ServerConfig {
        data_dir: dir.path().join("a1"),
        listen: "127.0.0.1:0".into(),
        demo: true,
        ..ServerConfig::default()
    };
    let server = coopr_server::start(config).await?;
    let admin = Api::as_user(server.url(), "admin")?;

    // The example lamp template with its size limit raised.
    let largest = args.nodes.iter().copied().max().unwrap_or(1);
    let catalog: Value = serde_json::from_str(CATALOG)?;
    let mut template = catalog["clustertemplates"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == "lamp"))
        .cloned()
        .context("examples/catalog.json has no lamp template")?;
    template["name"] = json!("lamp-big");
    template["constraints"]["size"]["max"] = json!(largest);
    let response = admin
        .http
        .put(format!("{}/v2/clustertemplates/lamp-big", admin.url))
        .json(&template)
        .send()
        .await?;
    Api::check(response, "put template").await?;

    let mut rows = Vec::new();
    for &n in &args.nodes {
        eprintln!("-- create of {n} nodes with probes running");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (api, stop) = (admin.clone(), stop.clone());
            tokio::spawn(probe_loop(stop, move |i| {
                let api = api.clone();
                async move {
                    let body = json!({"name": "probe", "description": format!("probe {i}"), "providermap": {}});
                    let response = api
                        .http
                        .put(format!("{}/v2/hardwaretypes/probe", api.url))
                        .json(&body)
                        .send()
                        .await?;
                    Api::check(response, "probe write").await?;
                    Ok(())
                }
            }))
        };
        let reader = {
            let (api, stop) = (admin.clone(), stop.clone());
            tokio::spawn(probe_loop(stop, move |_| {
                let api = api.clone();
                async move {
                    let response = api
                        .http
                        .get(format!("{}/v2/clustertemplates/base", api.url))
                        .send()
                        .await?;
                    Api::check(response, "probe read").await?;
                    Ok(())
                }
            }))
        };
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let started = Instant::now();
        admin.create(&format!("big-{n}"), "lamp-big", n).await?;
        let create = started.elapsed();
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        stop.store(true, Ordering::Relaxed);
        let writes = Summary::of(&writer.await??);
        let reads = Summary::of(&reader.await??);
        rows.push((n, create, writes, reads));
    }
    server.shutdown().await;

    println!("## coopr-bench big\n");
    println!(
        "`POST /v2/clusters` of a lamp cluster of N nodes (template size max raised to {largest}), no provisioner; \
         probes run sequentially during {} ms before, the create, and {} ms after\n",
        args.settle_ms, args.settle_ms
    );
    println!("| nodes | create request ms | probe writes | write p50 ms | write max ms | probe reads | read p50 ms | read max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, create, writes, reads) in &rows {
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} |",
            ms(*create),
            writes.samples,
            ms(writes.p50),
            ms(writes.max),
            reads.samples,
            ms(reads.p50),
            ms(reads.max),
        );
    }
    Ok(())
}
