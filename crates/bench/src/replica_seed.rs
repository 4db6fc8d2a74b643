//! `replica-seed`: a replica DC re-seeded with every shard of an owner DC that holds N
//! clusters, end to end, with real `coopr server` processes.
//!
//! ```text
//!  init-cluster (2 DCs of 1 node) ─► start, /ready ─► kill both
//!      │
//!      └─ a's data dir, offline (`coopr-bench catchup-grow`): N ACTIVE one-machine clusters
//!         added to the shards a owns, every outbox trimmed (as if b had them all) and
//!         finished jobs retired; a snapshot at the log's end, the log purged up to there
//!
//!  start both ─► both /ready ─► b pulls each of a's shards, finds its copy behind what a
//!      trimmed, asks a for a seed of the shard (POST /internal/replication/seed) and writes it
//!      to its DC log ─► every one of a's shards at b at a's last position
//! ```
//!
//! b's copy is behind a trimmed outbox, the state a replica DC is in after being away longer
//! than the owner keeps records for it; a new replica DC takes the same path. Builds nothing:
//! it runs the release `coopr` binary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use crate::catchup::{deployment, gb, grow_offline, ready, GeneratedArgs, Node};
use crate::dclog::{coopr_bin, Proc};
use crate::failover::{admin_get, owners};

#[derive(clap::Args, Debug)]
pub struct ReplicaSeedArgs {
    #[command(flatten)]
    pub generated: GeneratedArgs,
}

/// Each shard of `owner`'s at its last position as `owner` reports it, and where the replica
/// DC's copy of it is (`GET /v2/admin/replication`); `None` while a report is missing.
async fn positions(
    http: &reqwest::Client,
    owner_url: &str,
    replica_url: &str,
    owner: &str,
) -> Option<(BTreeMap<String, Value>, BTreeMap<String, Value>)> {
    let at_owner = admin_get(http, &format!("{owner_url}/v2/admin/replication")).await?;
    let at_replica = admin_get(http, &format!("{replica_url}/v2/admin/replication")).await?;
    let last: BTreeMap<String, Value> = at_owner["shards"]
        .as_array()?
        .iter()
        .filter(|s| s["owner"] == owner)
        .map(|s| (s["shard"].to_string(), s["last"].clone()))
        .collect();
    let copies: BTreeMap<String, Value> = at_replica["shards"]
        .as_array()?
        .iter()
        .filter(|s| s["owner"] == owner)
        .map(|s| (s["shard"].to_string(), s["local"]["watermark"].clone()))
        .collect();
    Some((last, copies))
}

/// Waits until each node (the only one of its DC) is ready and leads its DC.
async fn both_ready(
    http: &reqwest::Client,
    procs: &mut [Proc],
    nodes: &[Node],
    limit: Duration,
) -> anyhow::Result<()> {
    for (p, node) in procs.iter_mut().zip(nodes) {
        ready(http, &mut [p], &[node], limit).await?;
    }
    Ok(())
}

pub async fn run(args: ReplicaSeedArgs) -> anyhow::Result<()> {
    let mut args = args.generated;
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let out = dir.path().join("dcs");
    let nodes = deployment(&args.coopr_bin, 2, 1, args.shards, &out)?;
    let http = reqwest::Client::new();
    let timeout = Duration::from_secs(args.timeout_s);
    let start_both = |nodes: &[Node]| -> anyhow::Result<Vec<Proc>> {
        nodes
            .iter()
            .map(|n| n.start(&args.coopr_bin, &out))
            .collect()
    };

    // 1. Two fresh DCs; which shards a owns.
    eprintln!("-- starting two fresh 1-node DCs in {}", out.display());
    let mut procs = start_both(&nodes)?;
    both_ready(&http, &mut procs, &nodes, Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let owned: Vec<u32> = loop {
        if let Some(owners) = owners(&http, &nodes[0].url).await {
            let owned: Vec<u32> = owners
                .iter()
                .take(args.shards as usize)
                .enumerate()
                .filter(|(_, o)| o.as_str() == "a")
                .map(|(s, _)| s as u32)
                .collect();
            if !owned.is_empty() {
                break owned;
            }
        }
        if Instant::now() > deadline {
            bail!("no shard map at a after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stride = owned.get(1).map_or(1, |second| second - owned[0]);
    let expected: Vec<u32> = (owned[0]..args.shards).step_by(stride as usize).collect();
    if owned != expected {
        bail!(
            "a owns shards {owned:?}, not every {stride}-th from {}",
            owned[0]
        );
    }
    for mut p in procs.drain(..) {
        p.kill();
    }

    // 2. a's DC log grown offline: the clusters in a's shards, b's copies left behind.
    eprintln!(
        "-- adding {} clusters to a's {} shards (offline)",
        args.clusters,
        owned.len()
    );
    let grown = grow_offline(
        &nodes[0].data_dir,
        args.clusters,
        args.shards,
        (stride, owned[0]),
    )?;

    // 3. Both restart; b re-seeds every shard of a's.
    let restarted = Instant::now();
    let mut procs = start_both(&nodes)?;
    both_ready(&http, &mut procs, &nodes, timeout).await?;
    let restart_s = restarted.elapsed().as_secs_f64();
    eprintln!("-- both ready after {restart_s:.1} s; b re-seeds a's shards");
    let started = Instant::now();
    let mut peak_a = 0;
    let mut first_seeded = None;
    let mut seen = String::from("no report");
    let (seeded, shards) = loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        peak_a = peak_a.max(procs[0].resident().unwrap_or(0));
        if let Some((last, copies)) = positions(&http, &nodes[0].url, &nodes[1].url, "a").await {
            let done = last
                .iter()
                .filter(|(shard, at)| !at.is_null() && copies.get(*shard) == Some(at))
                .count();
            if done > 0 {
                first_seeded.get_or_insert(started.elapsed());
            }
            let behind = last
                .iter()
                .find(|(shard, at)| copies.get(*shard) != Some(*at));
            seen = format!(
                "{done} of {} at a's position; e.g. {behind:?} at b: {:?}",
                last.len(),
                behind.and_then(|(shard, _)| copies.get(shard))
            );
            // a's shards, and the global one if a owns it.
            if done == last.len() && last.len() >= owned.len() {
                break (started.elapsed(), done);
            }
        }
        if started.elapsed() > timeout {
            let kept = dir.keep();
            bail!(
                "b did not copy a's shards within {timeout:?} ({seen}); logs in {}",
                kept.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The copies are the owner's: the first and the last of a's shards compared whole.
    let mut compared = 0;
    for shard in [owned[0], owned[owned.len() - 1]] {
        let path = format!("/v2/admin/shards/{shard}/view");
        let at_a = admin_get(&http, &format!("{}{path}", nodes[0].url)).await;
        let at_b = admin_get(&http, &format!("{}{path}", nodes[1].url)).await;
        let (Some(at_a), Some(at_b)) = (at_a, at_b) else {
            bail!("no view of shard {shard}");
        };
        let clusters = at_a["view"]["clusters"].as_object().map_or(0, |c| c.len());
        if at_b["view"] != at_a["view"] || clusters == 0 {
            bail!("b's copy of shard {shard} differs from a's ({clusters} clusters at a)");
        }
        compared += clusters;
    }
    let b_resident = procs[1].resident().unwrap_or(0);
    let b_peak = procs[1].peak_resident().unwrap_or(0);
    let a_resident = procs[0].resident().unwrap_or(0);

    let n = args.clusters;
    println!("## coopr-bench replica-seed\n");
    println!(
        "2 DCs of 1 `coopr server` node on this machine (loopback), {n} ACTIVE one-machine \
         clusters in a's {} shards of {}, generated into a's state offline\n",
        owned.len(),
        args.shards
    );
    println!("| step | figure |");
    println!("| --- | ---: |");
    println!(
        "| offline: {n} clusters built through `State::apply` / snapshot written | {:.1} s / {:.1} s, {} |",
        grown.build_s,
        grown.snapshot_s,
        gb(grown.snapshot_bytes)
    );
    println!("| both DCs restarted, until both are ready | {restart_s:.1} s |");
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "| b: first shard of a's at a's position | {} |",
        secs(first_seeded)
    );
    println!(
        "| **b: all {shards} of a's shards at a's positions** (re-seeded) | **{:.1} s** ({:.0} clusters/s) |",
        seeded.as_secs_f64(),
        f64::from(n) / seeded.as_secs_f64()
    );
    println!(
        "| b's copies of a's first and last shard against a's | the same ({compared} clusters) |"
    );
    println!(
        "| resident memory: a (owner) at the end / at its peak while seeding | {} / {} |",
        gb(a_resident),
        gb(peak_a)
    );
    println!(
        "| resident memory: b (replica) at the end / at its peak | {} / {} |",
        gb(b_resident),
        gb(b_peak)
    );
    drop(procs);
    Ok(())
}
