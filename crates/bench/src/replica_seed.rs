//! `replica-seed`: replica DCs re-seeded with every shard of an owner DC that holds N
//! clusters, end to end, with real `coopr server` processes; with `--fail-owner`, the owner's
//! failover to them at that size.
//!
//! ```text
//!  init-cluster (a and 1 or 2 replica DCs, 1 node each) ─► start, /ready ─► kill all
//!      │
//!      └─ a's data dir, offline (`coopr-bench catchup-grow`): N ACTIVE one-machine clusters
//!         added to the shards a owns, every outbox trimmed (as if the replicas had them all)
//!         and finished jobs retired; a snapshot at the log's end, the log purged up to there
//!
//!  start a ─► /ready ─► start the replicas ─► each pulls each of a's shards, finds its copy behind
//!      what a trimmed, asks a for a seed of the shard (POST /internal/replication/seed) and
//!      writes it to its DC log ─► every one of a's shards at each replica at a's position
//!
//!  --fail-owner: kill -9 a ─► a write to one of its clusters sent to b every 10 ms, until one
//!      is accepted (b and c took a's shards over) ─► every shard of a's written by b or c,
//!      and they own all N clusters
//! ```
//!
//! A replica's copy is behind a trimmed outbox, the state a replica DC is in after being away
//! longer than the owner keeps records for it; a new replica DC takes the same path. Builds
//! nothing: it runs the release `coopr` binary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::catchup::{deployment, gb, grow_offline, ready, status, GeneratedArgs, Node};
use crate::dclog::{coopr_bin, Proc};
use crate::failover::{admin_get, adopted, first_write_accepted, owners};
use crate::memory::{metric, scrape};
use crate::ops::Api;

/// Longest the failover of a (`--fail-owner`) may take before the run fails.
const FAIL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args, Debug)]
pub struct ReplicaSeedArgs {
    #[command(flatten)]
    pub generated: GeneratedArgs,
    /// Replica DCs of a: b, or b and c (each re-seeded with every shard of a's).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=2))]
    replicas: u16,
    /// Then kill a (`kill -9`) and measure its failover to the replicas: the first write to
    /// one of its clusters accepted, every shard of a's adopted, the survivors' memory (needs
    /// `--replicas 2`: a placement majority must survive).
    #[arg(long)]
    fail_owner: bool,
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
        .filter_map(|s| Some((s["shard"].as_str()?.to_string(), s["last"].clone())))
        .collect();
    let copies: BTreeMap<String, Value> = at_replica["shards"]
        .as_array()?
        .iter()
        .filter(|s| s["owner"] == owner)
        .filter_map(|s| {
            let shard = s["shard"].as_str()?.to_string();
            Some((shard, s["local"]["watermark"].clone()))
        })
        .collect();
    Some((last, copies))
}

/// Waits until each node (the only one of its DC) is ready and leads its DC.
async fn all_ready(
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
    if args.fail_owner && args.replicas < 2 {
        bail!("--fail-owner needs --replicas 2: with one replica no placement majority survives a");
    }
    let (replica_dcs, fail_owner) = (args.replicas, args.fail_owner);
    let replicas = usize::from(replica_dcs);
    let mut args = args.generated;
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let out = dir.path().join("dcs");
    let nodes = deployment(&args.coopr_bin, 1 + replica_dcs, 1, args.shards, &out)?;
    let http = reqwest::Client::new();
    let timeout = Duration::from_secs(args.timeout_s);
    let start_all = |nodes: &[Node]| -> anyhow::Result<Vec<Proc>> {
        nodes
            .iter()
            .map(|n| n.start(&args.coopr_bin, &out))
            .collect()
    };

    // 1. Fresh DCs; which shards a owns.
    eprintln!(
        "-- starting {} fresh 1-node DCs in {}",
        nodes.len(),
        out.display()
    );
    let mut procs = start_all(&nodes)?;
    all_ready(&http, &mut procs, &nodes, Duration::from_secs(60)).await?;
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

    // 2. a's DC log grown offline: the clusters in a's shards, the replicas' copies left behind.
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

    // 3. a restarts (it restores the clusters from its snapshot), then the replica DCs, which
    // re-seed every shard of a's. Started together, b and c would find a dead while it restores
    // (a DC that does not renew its lease for lease + offset is, with three DCs) and take its
    // shards over at the copies they have: none of the generated clusters.
    // (a listens once it restored its state; it is ready only once the placement group, which
    // needs another DC, granted it a lease.)
    let restarted = Instant::now();
    let mut procs = start_all(&nodes[..1])?;
    while status(&http, &nodes[0].url).await.is_none() {
        procs[0].check_alive()?;
        if restarted.elapsed() > timeout {
            bail!("a does not answer {timeout:?} after its start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart_s = restarted.elapsed().as_secs_f64();
    procs.extend(start_all(&nodes[1..])?);
    all_ready(&http, &mut procs, &nodes, timeout).await?;
    eprintln!("-- a ready after {restart_s:.1} s; the replicas re-seed a's shards");
    let started = Instant::now();
    let mut peak_a = 0;
    let mut first_seeded = None;
    let mut seeded = vec![None; replicas];
    let mut a_shards = BTreeMap::new();
    while seeded.iter().any(Option::is_none) {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        peak_a = peak_a.max(procs[0].resident().unwrap_or(0));
        for (r, replica) in nodes[1..].iter().enumerate() {
            if seeded[r].is_some() {
                continue;
            }
            let Some((last, copies)) = positions(&http, &nodes[0].url, &replica.url, "a").await
            else {
                continue;
            };
            let done = last
                .iter()
                .filter(|(shard, at)| !at.is_null() && copies.get(*shard) == Some(at))
                .count();
            if done > 0 {
                first_seeded.get_or_insert(started.elapsed());
            }
            // a's shards, and the global one if a owns it.
            if done == last.len() && last.len() >= owned.len() {
                seeded[r] = Some(started.elapsed());
                a_shards = last
                    .iter()
                    .map(|(shard, at)| (shard.clone(), at["epoch"].as_u64().unwrap_or(0)))
                    .collect();
            }
        }
        if started.elapsed() > timeout {
            let kept = dir.keep();
            bail!(
                "the replicas did not copy a's shards within {timeout:?} (done: {seeded:?}); logs in {}",
                kept.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seeded: Vec<Duration> = seeded.into_iter().flatten().collect();
    // The copies are the owner's: the first and the last of a's shards compared whole.
    let mut compared = 0;
    for shard in [owned[0], owned[owned.len() - 1]] {
        let path = format!("/v2/admin/shards/{shard}/view");
        let Some(at_a) = admin_get(&http, &format!("{}{path}", nodes[0].url)).await else {
            bail!("no view of shard {shard} at a");
        };
        let clusters = at_a["view"]["clusters"].as_object().map_or(0, |c| c.len());
        for replica in &nodes[1..] {
            let at_replica = admin_get(&http, &format!("{}{path}", replica.url)).await;
            if at_replica.map(|v| v["view"].clone()) != Some(at_a["view"].clone()) || clusters == 0
            {
                bail!(
                    "{}'s copy of shard {shard} differs from a's ({clusters} clusters at a)",
                    replica.name
                );
            }
        }
        compared += clusters;
    }
    let resident: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| (p.resident().unwrap_or(0), p.peak_resident().unwrap_or(0)))
        .collect();

    let n = args.clusters;
    println!("## coopr-bench replica-seed\n");
    println!(
        "{} DCs of 1 `coopr server` node on this machine (loopback), {n} ACTIVE one-machine \
         clusters in a's {} shards of {}, generated into a's state offline\n",
        nodes.len(),
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
    println!("| a restarted, until it answers (it restored its snapshot) | {restart_s:.1} s |");
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "| a replica: first shard of a's at a's position | {} |",
        secs(first_seeded)
    );
    for (replica, seeded) in nodes[1..].iter().zip(&seeded) {
        println!(
            "| **{}: all {} of a's shards at a's positions** (re-seeded) | **{:.1} s** ({:.0} clusters/s) |",
            replica.name,
            a_shards.len(),
            seeded.as_secs_f64(),
            f64::from(n) / seeded.as_secs_f64()
        );
    }
    println!(
        "| the replicas' copies of a's first and last shard against a's | the same ({compared} clusters) |"
    );
    println!(
        "| resident memory: a (owner) at the end / at its peak while seeding | {} / {} |",
        gb(resident[0].0),
        gb(peak_a.max(resident[0].1))
    );
    for (replica, (now, peak)) in nodes[1..].iter().zip(&resident[1..]) {
        println!(
            "| resident memory: {} (replica) at the end / at its peak | {} / {} |",
            replica.name,
            gb(*now),
            gb(*peak)
        );
    }
    if fail_owner {
        let sample = grown.sample.context("no cluster was generated")?;
        fail(&http, &mut procs, &nodes, &a_shards, sample, n).await?;
    }
    drop(procs);
    Ok(())
}

/// Kills a (every shard's owner of the generated clusters) and measures its failover to the
/// replicas: the first write to `sample` (a cluster of a's) accepted through b, every shard of
/// `a_shards` (with a's epoch) written by a survivor, and the survivors owning all `clusters`.
async fn fail(
    http: &reqwest::Client,
    procs: &mut [Proc],
    nodes: &[Node],
    a_shards: &BTreeMap<String, u64>,
    sample: u64,
    clusters: u32,
) -> anyhow::Result<()> {
    let survivors: Vec<String> = nodes[1..].iter().map(|n| n.url.clone()).collect();
    let led_placement = admin_get(http, &format!("{}/v2/status", nodes[0].url))
        .await
        .is_some_and(|s| s["placement"]["role"] == "leader");
    // The generated clusters are the user `bench`'s: written as the tenant's admin.
    let api = Api::as_user(nodes[1].url.clone(), coopr_server::api::extract::ADMIN_USER)?;
    eprintln!("-- kill -9 a (placement leader: {led_placement})");
    let killed = Instant::now();
    procs[0].kill();
    let sample = sample.to_string();
    let rto = first_write_accepted(
        &api,
        &nodes[1].url,
        (&sample, "probe"),
        killed,
        FAIL_TIMEOUT,
    )
    .await
    .context("after the kill of a")?;
    eprintln!(
        "-- first write accepted {:.2} s after the kill",
        rto.as_secs_f64()
    );
    while !adopted(http, &survivors, a_shards).await {
        if killed.elapsed() > FAIL_TIMEOUT {
            bail!("some shard of a's has no new owner {FAIL_TIMEOUT:?} after the kill");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_moved = killed.elapsed();
    // Every generated cluster is owned by a survivor (counts kept by each state's index).
    let owned_by_survivors = || async {
        let mut owned = 0;
        for url in &survivors {
            let scraped = scrape(http, url).await.unwrap_or_default();
            owned += metric(&scraped, "coopr_clusters{status=\"active\"}");
        }
        owned
    };
    let mut owned = owned_by_survivors().await;
    while owned != u64::from(clusters) {
        if killed.elapsed() > FAIL_TIMEOUT {
            bail!("the survivors own {owned} ACTIVE clusters, not {clusters}, {FAIL_TIMEOUT:?} after the kill");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        owned = owned_by_survivors().await;
    }
    let all_owned = killed.elapsed();
    println!(
        "\n`kill -9` of a, the owner of all {clusters} clusters (it led the placement group: {led_placement})\n"
    );
    println!("| step | figure |");
    println!("| --- | ---: |");
    println!(
        "| **kill → first write to one of its clusters accepted through b** | **{:.2} s** |",
        rto.as_secs_f64()
    );
    println!(
        "| kill → all {} of a's shards written by b or c | {:.2} s |",
        a_shards.len(),
        all_moved.as_secs_f64()
    );
    println!(
        "| kill → all {owned} ACTIVE clusters owned by b or c (their `coopr_clusters`) | {:.2} s |",
        all_owned.as_secs_f64()
    );
    for (node, p) in nodes[1..].iter().zip(&procs[1..]) {
        println!(
            "| resident memory: {} after the takeover / at its peak | {} / {} |",
            node.name,
            gb(p.resident().unwrap_or(0)),
            gb(p.peak_resident().unwrap_or(0))
        );
    }
    Ok(())
}
