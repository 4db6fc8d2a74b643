//! `memory`: what a real node holds per cluster. A 1-node DC (`coopr server`, demo mode, its
//! workers on the fake cloud at zero latency) is given N one-machine `base` clusters through
//! the REST API (each client waits for its cluster to be ACTIVE before the next); once all are
//! ACTIVE the server's resident memory and data dir are measured,
//! twice: with the default job retention (finished jobs stay in memory for an hour) and with
//! `job_retention_ms = 0` (they go to the job archive on disk as soon as the driver gets to
//! them, which the run waits for).
//!
//! ```text
//!  coopr-bench ──POST /v2/clusters × N (C clients)──► coopr server (1 node) ◄── its workers
//!      └── all ACTIVE (and, retention 0, every job retired) ──► VmRSS, du of raft/*.redb
//! ```
//!
//! Builds nothing: it runs the release `coopr` binary (`cargo build --release -p coopr`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::dclog::{coopr_bin, coopr_roles, get_json, set_demo_workers, Proc};
use crate::ops::Api;

#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    /// The release `coopr` binary (build it first: `cargo build --release -p coopr`).
    #[arg(long, default_value = "target/release/coopr")]
    coopr_bin: PathBuf,
    /// Directory under which the temporary data dir is made.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// One-machine clusters to create.
    #[arg(long, default_value_t = 5_000)]
    clusters: u32,
    /// Concurrent clients creating them.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Demo workers of the node.
    #[arg(long, default_value_t = 16)]
    workers: u32,
    /// Clients create as fast as the API answers, without waiting for each cluster to be
    /// ACTIVE: a backlog of thousands of pending creates (job throughput under a backlog).
    #[arg(long)]
    backlog: bool,
    /// One row with this job retention instead of the two default rows (1 h, and 0).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Keeps each node running this long after it was measured (its pid printed), to inspect
    /// it (`gdb -p`, `/proc/<pid>/smaps`).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

/// What one run measured.
struct Measured {
    retention: String,
    baseline: u64,
    resident: u64,
    /// Anonymous resident memory (`RssAnon`) at start and once all are ACTIVE.
    anon: (u64, u64),
    /// Peak resident memory over the run (`VmHWM`).
    peak: u64,
    disk: Vec<(String, u64)>,
    took: Duration,
}

pub async fn run(mut args: MemoryArgs) -> anyhow::Result<()> {
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    std::fs::create_dir_all(&args.dir)?;
    let mut rows = Vec::new();
    let rows_asked: Vec<(Option<u64>, String)> = match args.retention_ms {
        Some(ms) => vec![(Some(ms), format!("{ms} ms"))],
        None => vec![
            (None, "1 h (default)".into()),
            (Some(0), "0 (retired at once)".into()),
        ],
    };
    for (retention, label) in rows_asked {
        let dir = tempfile::tempdir_in(&args.dir)?;
        rows.push(run_once(&args, dir.path(), retention, label).await?);
    }
    let n = f64::from(args.clusters.max(1));
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let per = |b: u64| format!("{:.1} KB", b as f64 / n / 1e3);
    println!("## coopr-bench memory\n");
    println!(
        "1-node DC, `coopr server` demo mode, {} one-machine `base` clusters created by {} \
         clients ({}) and run by {} workers on the fake cloud (zero latency)\n",
        args.clusters,
        args.clients,
        if args.backlog {
            "as fast as the API answers: a backlog"
        } else {
            "one create in flight each"
        },
        args.workers
    );
    println!("| job retention | resident at start | resident, all ACTIVE | per cluster (above start) | anonymous (`RssAnon`) at start / all ACTIVE | per cluster (above start) | peak resident | data dir files | run | clusters/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
    for r in &rows {
        let files: Vec<String> = r
            .disk
            .iter()
            .map(|(name, bytes)| format!("{name} {}", mb(*bytes)))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.0} s | {:.0} |",
            r.retention,
            mb(r.baseline),
            mb(r.resident),
            per(r.resident.saturating_sub(r.baseline)),
            mb(r.anon.0),
            mb(r.anon.1),
            per(r.anon.1.saturating_sub(r.anon.0)),
            mb(r.peak),
            files.join(", "),
            r.took.as_secs_f64(),
            n / r.took.as_secs_f64()
        );
    }
    Ok(())
}

async fn run_once(
    args: &MemoryArgs,
    dir: &Path,
    retention: Option<u64>,
    label: String,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let base = crate::dclog::free_coopr_base_dcs(1, 1)?;
    let out = dir.join("coopr");
    crate::dclog::init_cluster(&args.coopr_bin, 1, 1, base, &out)?;
    let config = out.join("a1.toml");
    let _cloud = crate::wan::start_fake_cloud(&args.coopr_bin, &out, &config, 0)?;
    set_demo_workers(&config, args.workers)?;
    if let Some(ms) = retention {
        let text = std::fs::read_to_string(&config)?;
        std::fs::write(&config, format!("job_retention_ms = {ms}\n{text}"))?;
    }
    let mut command = Command::new(&args.coopr_bin);
    command
        .arg("server")
        .arg("--config")
        .arg(&config)
        .current_dir(&out);
    let mut procs = vec![Proc::spawn("coopr a1", command, out.join("a1.log"))?];
    let url = format!("http://127.0.0.1:{base}");
    coopr_roles(&mut procs, std::slice::from_ref(&url)).await?;
    let baseline = procs[0].resident().context("no VmRSS")?;
    let anon_baseline = procs[0].resident_anon().context("no RssAnon")?;
    eprintln!("-- retention {label}: creating {} clusters", args.clusters);
    let api = Arc::new(Api::new(url.clone())?);
    let next = Arc::new(AtomicU32::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (api, next, total, backlog) = (api.clone(), next.clone(), args.clusters, args.backlog);
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut tries = 0;
                let id = loop {
                    match api.create(&format!("m{i}"), "base", 1).await {
                        Ok(id) => break id,
                        Err(e) if tries > 50 => return Err(e),
                        Err(_) => tries += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                if backlog {
                    continue;
                }
                let status = format!("{}/v2/clusters/{id}/status", api.url);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let (_, s) = get_json(&api.http, &status).await?;
                    if s["status"] == "active" {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("cluster {id} not ACTIVE after 60 s: {s}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for client in clients {
        client.await??;
    }
    // All ACTIVE (and with retention 0, nothing finished left in memory).
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        procs[0].check_alive()?;
        // From `/metrics` (a count under the read lock), not the cluster listing: the JSON of
        // 20,000 clusters every 500 ms would be most of what the node does. A scrape that
        // fails counts as nothing yet: the deadline bounds it.
        let scraped = scrape(&http, &url).await.unwrap_or_default();
        let active = metric(&scraped, "coopr_clusters{status=\"active\"}") as usize;
        let retired = metric(&scraped, "coopr_jobs_retired_total");
        // With retention 0, also until every finished job left memory.
        let done = active == args.clusters as usize
            && (retention != Some(0) || retired >= 2 * u64::from(args.clusters));
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after 600 s: {active} of {} ACTIVE, {retired} jobs retired",
                args.clusters
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the allocator settle after the last requests.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resident = procs[0].resident().context("no VmRSS")?;
    let anon = (
        anon_baseline,
        procs[0].resident_anon().context("no RssAnon")?,
    );
    let peak = procs[0].peak_resident().context("no VmHWM")?;
    let mut disk = Vec::new();
    // The DC log's directory (the placement group keeps a log and snapshots of its own).
    let raft = find(&out, "raft").context("no raft directory under the node's data dir")?;
    for name in ["raft-log", "snapshots", "archive.redb"] {
        disk.push((name.to_string(), size_of(&raft.join(name))));
    }
    if args.hold_secs > 0 {
        eprintln!(
            "-- node pid {} measured; held for {} s",
            procs[0].pid(),
            args.hold_secs
        );
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    }
    drop(procs);
    Ok(Measured {
        retention: label,
        baseline,
        resident,
        anon,
        peak,
        disk,
        took: started.elapsed(),
    })
}

/// The node's `/metrics` text.
pub(crate) async fn scrape(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}

/// The value of the sample `name` (with its labels, as printed) in a scrape; 0 if absent.
pub(crate) fn metric(scraped: &str, name: &str) -> u64 {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Bytes of a file, or of the files directly in a directory.
fn size_of(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

/// The first file called `name` under `dir`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        }
    }
    None
}
