//! `reads`: what the API's reads cost a real node holding N clusters, and what they cost the
//! writes of others meanwhile.
//!
//! ```text
//!  init-cluster (1 DC of 1 node) ─► start, /ready ─► kill
//!      └─ its data dir, offline (`coopr-bench catchup-grow`): N ACTIVE one-machine clusters of
//!         the demo tenant, a snapshot at the log's end
//!  start ─► /ready ─► (a) each read, one at a time, asked by the superadmin tenant (which
//!      holds no cluster: the answer is small, only finding it can cost)
//!                     (b) lease writes (`POST /v2/clusters/{id}` `expireTime`) by the demo
//!      tenant, alone, then while `--readers` clients send those reads in a loop
//! ```
//!
//! Every read here is one any caller may send (`/metrics` needs no key, the others any
//! tenant's): if its cost grows with every tenant's clusters, one caller slows every
//! tenant's writes, since a read holds the state's lock while it looks. Builds nothing: it
//! runs the release `coopr` binary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coopr_types::ClusterId;

use crate::catchup::{deployment, gb, grow_offline, ready, GeneratedArgs};
use crate::dclog::{coopr_bin, get_json, measure, Target};
use crate::ops::Api;
use crate::stats::{ms, Summary};

#[derive(clap::Args, Debug)]
pub struct ReadsArgs {
    #[command(flatten)]
    pub generated: GeneratedArgs,
    /// Measured writes in each write phase.
    #[arg(long, default_value_t = 300)]
    writes: u64,
    /// Each read, sent one at a time, this many times.
    #[arg(long, default_value_t = 20)]
    reads: usize,
    /// Clients sending reads in a loop during the second write phase.
    #[arg(long, default_value_t = 2)]
    readers: usize,
}

const SUPERADMIN: [(&str, &str); 3] = [
    ("Coopr-UserID", "admin"),
    ("Coopr-TenantID", "superadmin"),
    ("Coopr-ApiKey", coopr_server::seed::DEMO_ADMIN_KEY),
];

/// The reads measured: what any caller may ask.
const READS: [(&str, &str); 4] = [
    ("GET", "/metrics"),
    ("GET", "/v2/clusters"),
    ("POST", "/v2/getClusterStatuses"),
    ("GET", "/v2/metrics/queues"),
];

/// Sends one read as the superadmin tenant; fails unless it answered 200.
async fn read(
    http: &reqwest::Client,
    url: &str,
    (method, path): (&str, &str),
) -> anyhow::Result<()> {
    let mut request = match method {
        "POST" => http
            .post(format!("{url}{path}"))
            .json(&serde_json::json!({})),
        _ => http.get(format!("{url}{path}")),
    };
    for (k, v) in SUPERADMIN {
        request = request.header(k, v);
    }
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status != 200 {
        bail!(
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

pub async fn run(args: ReadsArgs) -> anyhow::Result<()> {
    let mut generated = args.generated;
    generated.coopr_bin = coopr_bin(&generated.coopr_bin)?;
    std::fs::create_dir_all(&generated.dir)?;
    let dir = tempfile::tempdir_in(&generated.dir)?;
    let out = dir.path().join("dc");
    let nodes = deployment(&generated.coopr_bin, 1, 1, generated.shards, &out)?;
    let node = &nodes[0];
    let http = reqwest::Client::new();
    let timeout = Duration::from_secs(generated.timeout_s);

    eprintln!("-- starting a fresh 1-node DC in {}", out.display());
    let mut proc = node.start(&generated.coopr_bin, &out)?;
    ready(&http, &mut [&mut proc], &[node], Duration::from_secs(60)).await?;
    proc.kill();
    eprintln!(
        "-- adding {} clusters to its DC log (offline)",
        generated.clusters
    );
    let grown = grow_offline(&node.data_dir, generated.clusters, generated.shards, (1, 0))?;
    let id = ClusterId(grown.sample.context("no cluster was generated")?);
    let started = Instant::now();
    let mut proc = node.start(&generated.coopr_bin, &out)?;
    ready(&http, &mut [&mut proc], &[node], timeout).await?;
    let restart_s = started.elapsed().as_secs_f64();
    let resident = proc.resident().unwrap_or(0);

    // (a) Each read alone.
    let mut alone = Vec::new();
    for kind in READS {
        read(&http, &node.url, kind).await?;
        let mut samples = Vec::new();
        for _ in 0..args.reads {
            let t0 = Instant::now();
            read(&http, &node.url, kind).await?;
            samples.push(t0.elapsed());
        }
        alone.push((kind, Summary::of(&samples)));
    }

    // (b) Writes alone, then while readers loop.
    let api = Api::as_user(node.url.clone(), coopr_server::api::extract::ADMIN_USER)?;
    let (code, cluster) = get_json(&api.http, &format!("{}/v2/clusters/{id}", node.url)).await?;
    let base = match (code, cluster["createTime"].as_u64()) {
        (200, Some(t)) => t,
        _ => bail!("cluster {id}: HTTP {code} {cluster}"),
    };
    let target = Target::Coopr {
        api,
        url: node.url.clone(),
        id,
        // Leases a day past the cluster's creation, one millisecond more each write.
        base: base + 86_400_000,
    };
    let counter = Arc::new(AtomicU64::new(0));
    let procs = [proc];
    let quiet = measure(
        &target,
        &procs,
        &counter,
        1,
        Some(args.writes),
        Duration::ZERO,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..args.readers {
        let (http, url, stop, done) = (http.clone(), node.url.clone(), stop.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                read(&http, &url, READS[i % READS.len()]).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    let reads_before = done.load(Ordering::Relaxed);
    let busy = measure(
        &target,
        &procs,
        &counter,
        1,
        Some(args.writes),
        Duration::ZERO,
    )
    .await;
    let reads_during = done.load(Ordering::Relaxed) - reads_before;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await??;
    }
    let busy = busy?;

    let n = generated.clusters;
    println!("## coopr-bench reads\n");
    println!(
        "1 DC of 1 `coopr server` node on this machine (loopback), {n} ACTIVE one-machine \
         clusters of the demo tenant in {} shards (generated offline); restarted and ready in \
         {restart_s:.1} s, resident memory {}\n",
        generated.shards,
        gb(resident)
    );
    println!("| read, by the superadmin tenant (no cluster of its own), one at a time | p50 ms | max ms |");
    println!("| --- | ---: | ---: |");
    for ((method, path), s) in &alone {
        println!("| `{method} {path}` | {} | {} |", ms(s.p50), ms(s.max));
    }
    println!();
    println!("| lease writes by the demo tenant, one at a time | writes | p50 ms | p99 ms | max ms | reads/s meanwhile |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, m: &crate::dclog::Measured, reads: String| {
        println!(
            "| {name} | {} | {} | {} | {} | {reads} |",
            m.summary.samples,
            ms(m.summary.p50),
            ms(m.summary.p99),
            ms(m.summary.max)
        );
    };
    row("alone", &quiet, "-".into());
    row(
        &format!("while {} clients send those reads in a loop", args.readers),
        &busy,
        format!("{:.0}", reads_during as f64 / busy.elapsed.as_secs_f64()),
    );
    Ok(())
}
