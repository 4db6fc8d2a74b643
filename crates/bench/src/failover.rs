//! `failover`: three DCs of real `coopr server` processes (cross-DC links through
//! [`coopr_testkit::DelayProxy`]s), a steady load of creates through every DC (4 a second
//! each, which its 4 workers keep up with), and repeated
//! `kill -9` of every process of the DC that owns the most shards:
//!
//! ```text
//!  round: victim = DC owning the most shards
//!    start lamp creates at the victim (in flight when it dies: the shared fake cloud is slowed)
//!    read the victim's unreplicated records (the RPO exposure), kill -9 every victim process  t0
//!    probe: a write to a cluster of the victim's shards, sent to a survivor every 10 ms
//!      first 200                              -> RTO (kill -> first write at the new owner)
//!      every in-flight create ACTIVE there    -> in-flight jobs finished
//!    restart the victim: its lost-operations report grows by what it wrote after the takeover
//!    point; it is back once every copy equals its owner's and no lag is left -> rejoin
//! ```
//!
//! The lease settings are the nodes' (`--lease-ms`, `--max-clock-offset-ms`); the floor of the
//! RTO is the grantor's wait (lease + offset after the victim's last renewal, which came up to a
//! third of a lease before the kill) plus one round of the takeover (seal, report, adopt).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::dclog::{coopr_bin, coopr_roles, get_json};
use crate::ops::Api;
use crate::stats::{ms, Summary};
use crate::wan::{start, Spec, Wan};

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// The release `coopr` binary (build it first: `cargo build --release -p coopr`).
    #[arg(long, default_value = "target/release/coopr")]
    coopr_bin: PathBuf,
    /// Directory under which the temporary deployment is made.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// DC failures to measure.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// The DCs' lease (ms).
    #[arg(long, default_value_t = 3_000)]
    lease_ms: u64,
    /// The clock-offset margin (ms).
    #[arg(long, default_value_t = 500)]
    max_clock_offset_ms: u64,
    /// One-way delay of every cross-DC link (ms).
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Latency of every fake-cloud operation (ms): keeps creates in flight for a while.
    #[arg(long, default_value_t = 200)]
    cloud_latency_ms: u64,
    /// Lamp creates started at the victim just before each kill.
    #[arg(long, default_value_t = 3)]
    in_flight: usize,
    /// Cluster shards of the deployment (the nodes' `shard_count`): failover time as it grows.
    #[arg(long, default_value_t = 64)]
    shards: u32,
}

const DCS: [&str; 3] = ["a", "b", "c"];
const ADMIN: [(&str, &str); 3] = [
    ("Coopr-UserID", "admin"),
    ("Coopr-TenantID", "superadmin"),
    ("Coopr-ApiKey", coopr_server::seed::DEMO_ADMIN_KEY),
];
/// Pause between two creates of one DC's load.
const LOAD_PERIOD: Duration = Duration::from_millis(250);
/// Longest any step of a round may take before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// A GET as the superadmin; `None` unless it answered 200 with JSON.
pub(crate) async fn admin_get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let mut request = http.get(url);
    for (k, v) in ADMIN {
        request = request.header(k, v);
    }
    let response = request.send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}

/// The owner of every shard (cluster shards, then the global one) as `url`'s node has it.
pub(crate) async fn owners(http: &reqwest::Client, url: &str) -> Option<Vec<String>> {
    Some(
        shard_map(http, url)
            .await?
            .into_iter()
            .map(|(owner, _)| owner)
            .collect(),
    )
}

/// The owner and epoch of every shard (cluster shards, then the global one) as `url`'s node
/// has it.
pub(crate) async fn shard_map(http: &reqwest::Client, url: &str) -> Option<Vec<(String, u64)>> {
    let map = admin_get(http, &format!("{url}/v2/admin/shards")).await?;
    map["shards"]
        .as_array()?
        .iter()
        .map(|s| Some((s["owner"].as_str()?.to_string(), s["epoch"].as_u64()?)))
        .collect()
}

/// A shard's position `(epoch, seq)` in a view answer.
fn position_of(view: &Value) -> Option<(u64, u64)> {
    Some((
        view["position"]["epoch"].as_u64()?,
        view["position"]["seq"].as_u64()?,
    ))
}

/// Every shard's position at its owner, asking the nodes of `urls`; `None` while a shard has
/// no owner among them that writes it (adopted).
async fn positions(
    http: &reqwest::Client,
    urls: &[String],
    shards: usize,
) -> Option<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for shard in (0..shards).map(|s| s.to_string()).chain(["global".into()]) {
        for url in urls {
            let view = admin_get(http, &format!("{url}/v2/admin/shards/{shard}/view")).await;
            if let Some(view) = view.filter(|v| v["role"] == "owner") {
                out.insert(shard.clone(), position_of(&view)?);
            }
        }
        if !out.contains_key(&shard) {
            return None;
        }
    }
    Some(out)
}

/// Whether the node at `url` holds every shard at or past `targets` (as a replica), from its
/// replication report (one request, whatever the shard count).
async fn caught_up(
    http: &reqwest::Client,
    url: &str,
    targets: &BTreeMap<String, (u64, u64)>,
) -> bool {
    let Some(report) = admin_get(http, &format!("{url}/v2/admin/replication")).await else {
        return false;
    };
    let watermarks: BTreeMap<&str, (u64, u64)> = report["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let mark = &s.get("local")?["watermark"];
            Some((
                s["shard"].as_str()?,
                (mark["epoch"].as_u64()?, mark["seq"].as_u64()?),
            ))
        })
        .collect();
    targets
        .iter()
        .all(|(shard, target)| watermarks.get(shard.as_str()).is_some_and(|p| p >= target))
}

/// Whether every shard in `shards` (with the epoch its old owner wrote it at) is written by one
/// of the nodes of `urls` at a later epoch: the node's map names its DC the owner and its
/// replication report shows the outbox of the new epoch it writes (the shard was adopted
/// there; before that the report shows the copy's empty outbox of the old epoch). One request
/// per node, whatever the shard count.
pub(crate) async fn adopted(
    http: &reqwest::Client,
    urls: &[String],
    shards: &BTreeMap<String, u64>,
) -> bool {
    let mut written = std::collections::BTreeSet::new();
    for url in urls {
        let Some(report) = admin_get(http, &format!("{url}/v2/admin/replication")).await else {
            return false;
        };
        let dc = report["dc"].as_str().unwrap_or_default().to_string();
        for s in report["shards"].as_array().into_iter().flatten() {
            let (Some(shard), Some(epoch)) = (s["shard"].as_str(), s["last"]["epoch"].as_u64())
            else {
                continue;
            };
            if s["owner"] == dc.as_str() && shards.get(shard).is_some_and(|old| epoch > *old) {
                written.insert(shard.to_string());
            }
        }
    }
    shards.keys().all(|s| written.contains(s))
}

/// The records the DC at `url` owns that some replica lacks (the most any replica lacks, per
/// shard, summed): what a kill now could lose.
async fn exposure(http: &reqwest::Client, url: &str) -> u64 {
    let Some(report) = admin_get(http, &format!("{url}/v2/admin/replication")).await else {
        return 0;
    };
    report["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("by_replica").and_then(Value::as_object))
        .map(|r| {
            r.values()
                .filter_map(|r| r["unreplicated_records"].as_u64())
                .max()
                .unwrap_or(0)
        })
        .sum()
}

/// A create load through each DC: `base` clusters, one key each, retried on the same DC only;
/// a DC that does not answer is skipped for a while. Acknowledged ids by DC.
fn spawn_load(
    urls: BTreeMap<&'static str, String>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, &'static str)>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    urls.into_iter()
        .map(|(dc, url)| {
            let stop = stop.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let Ok(api) = Api::new(url) else { return };
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    match api.create(&format!("load-{dc}-{i}"), "base", 1).await {
                        Ok(id) => acked.lock().expect("acked").push((id.to_string(), dc)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                    // A rate the DC's workers keep up with (each create takes two fake-cloud
                    // operations): a queue that only grows would hold up the in-flight jobs.
                    tokio::time::sleep(LOAD_PERIOD).await;
                }
            })
        })
        .collect()
}

/// Sends a durable write to cluster `id` through `url` every 10 ms (each with its own
/// `Idempotency-Key`, `{key}-{attempt}`) until one is answered 200, for up to `limit` from
/// `since`; the time from `since`.
pub(crate) async fn first_write_accepted(
    api: &Api,
    url: &str,
    (id, key): (&str, &str),
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let answer = api
            .http
            .post(format!("{url}/v2/clusters/{id}"))
            .header("Idempotency-Key", format!("{key}-{attempt}"))
            .json(&json!({ "expireTime": 4_000_000_000_000u64 + attempt }))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == 200) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            bail!("no write to {id} accepted within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One round's figures.
struct Round {
    rto: Duration,
    /// Kill → every shard of the victim written by a survivor.
    all_moved: Duration,
    in_flight_done: Duration,
    exposure: u64,
    lost: u64,
    rejoin: Duration,
    /// Whether the victim led the placement group when it was killed (the survivors then
    /// elect a leader, which waits a lease + offset from its election before declaring
    /// anyone dead).
    led_placement: bool,
}

/// Status of cluster `id` read at its owner (`?consistency=strong`) through `url`.
async fn strong_status(api: &Api, url: &str, id: &str) -> Option<String> {
    let (status, body) = get_json(
        &api.http,
        &format!("{url}/v2/clusters/{id}/status?consistency=strong"),
    )
    .await
    .ok()?;
    (status == 200).then(|| body["status"].as_str().unwrap_or_default().to_string())
}

async fn round(
    wan: &mut Wan,
    http: &reqwest::Client,
    acked: &Mutex<Vec<(String, &'static str)>>,
    shard_count: usize,
    in_flight: usize,
    number: usize,
) -> anyhow::Result<Round> {
    let any = wan.urls["a"][0].clone();
    let map = shard_map(http, &any).await.context("no shard map")?;
    let owners_now: Vec<&str> = map.iter().map(|(owner, _)| owner.as_str()).collect();
    let victim = *DCS
        .iter()
        .max_by_key(|dc| owners_now.iter().filter(|o| *o == *dc).count())
        .context("no DC")?;
    let survivor = wan.urls[DCS
        .iter()
        .find(|dc| **dc != victim)
        .context("no survivor")?][0]
        .clone();
    let victim_url = wan.urls[victim][0].clone();
    // A probe: an ACTIVE cluster in one of the victim's cluster shards.
    let api = Api::new(survivor.clone())?;
    let candidates: Vec<String> = acked
        .lock()
        .expect("acked")
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let mut probe = None;
    for id in candidates.iter().rev() {
        let shard = id.parse::<u64>()? as usize % shard_count;
        if owners_now[shard] == victim
            && strong_status(&api, &survivor, id).await.as_deref() == Some("active")
        {
            probe = Some(id.clone());
            break;
        }
    }
    let probe = probe.context("no ACTIVE cluster in the victim's shards yet")?;
    // Creates in flight at the victim when it dies.
    let victim_api = Api::new(victim_url.clone())?;
    let mut flying = Vec::new();
    for i in 0..in_flight {
        flying.push(
            victim_api
                .create(&format!("flying-{number}-{i}"), "lamp", 1)
                .await?
                .to_string(),
        );
    }
    // Long enough for their OperationStarted to reach the replicas, not for the jobs to end
    // (each fake-cloud operation takes --cloud-latency-ms).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let exposure = exposure(http, &victim_url).await;
    let led_placement = admin_get(http, &format!("{victim_url}/v2/status"))
        .await
        .is_some_and(|s| s["placement"]["role"] == "leader");
    let lost_before = admin_get(http, &format!("{victim_url}/v2/admin/lost-operations"))
        .await
        .and_then(|r| r["total"].as_u64())
        .unwrap_or(0);
    // Kill every process of the victim.
    let victims: Vec<usize> = wan
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, (dc, _, _))| *dc == victim)
        .map(|(i, _)| i)
        .collect();
    let killed = Instant::now();
    for i in &victims {
        // (procs[0] is the fake cloud.)
        wan.procs[i + 1].kill();
    }
    let key = format!("probe-{number}");
    let rto = first_write_accepted(&api, &survivor, (&probe, &key), killed, STEP_TIMEOUT)
        .await
        .with_context(|| format!("after the kill of {victim}"))?;
    let survivors: Vec<String> = DCS
        .iter()
        .filter(|dc| **dc != victim)
        .map(|dc| wan.urls[dc][0].clone())
        .collect();
    let victim_shards: BTreeMap<String, u64> = map
        .iter()
        .enumerate()
        .filter(|(_, (owner, _))| owner == victim)
        .map(|(n, (_, epoch))| {
            let shard = if n == shard_count {
                "global".to_string()
            } else {
                n.to_string()
            };
            (shard, *epoch)
        })
        .collect();
    while !adopted(http, &survivors, &victim_shards).await {
        if killed.elapsed() > STEP_TIMEOUT {
            bail!("some shard of {victim} has no new owner {STEP_TIMEOUT:?} after the kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_moved = killed.elapsed();
    // A create whose OperationStarted had not reached a replica is not at the new owner (404:
    // lost with the victim's tail, in its report later); the others finish there.
    let missing = loop {
        let mut done = 0;
        let mut missing = 0;
        let mut statuses = Vec::new();
        for id in &flying {
            let status = strong_status(&api, &survivor, id).await;
            match status.as_deref() {
                // The job ended (a failed create leaves the cluster incomplete).
                Some("active" | "incomplete" | "inconsistent" | "terminated") => done += 1,
                Some(_) => {}
                None => missing += 1,
            }
            statuses.push(status);
        }
        if done + missing == flying.len() {
            break missing;
        }
        if killed.elapsed() > STEP_TIMEOUT {
            bail!("in-flight creates {flying:?} not finished at their new owners within {STEP_TIMEOUT:?}: {statuses:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let in_flight_done = killed.elapsed();
    // Where every owner is as the victim restarts: it has rejoined once its copies got there
    // (the load goes on, so "no lag at all" may never hold for long).
    let targets = positions(http, &survivors, shard_count)
        .await
        .context("a shard lost its new owner")?;
    let restarted = Instant::now();
    for i in &victims {
        let (_, name, config) = wan.nodes[*i].clone();
        wan.procs[i + 1] = wan.respawn(&name, &config)?;
    }
    let _ = coopr_roles(&mut wan.procs, &wan.urls[victim].clone()).await?;
    loop {
        if caught_up(http, &victim_url, &targets).await {
            break;
        }
        if restarted.elapsed() > STEP_TIMEOUT {
            bail!("{victim} did not catch up within {STEP_TIMEOUT:?} of its restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejoin = restarted.elapsed();
    let lost_after = admin_get(http, &format!("{victim_url}/v2/admin/lost-operations"))
        .await
        .and_then(|r| r["total"].as_u64())
        .unwrap_or(lost_before);
    eprintln!(
        "-- round {number}: killed {victim}{}: RTO {}, all shards moved {}, in flight done {} ({missing} of {} not replicated), exposure {exposure}, lost {}, rejoin {}",
        if led_placement { " (the placement leader)" } else { "" },
        ms(rto),
        ms(all_moved),
        ms(in_flight_done),
        flying.len(),
        lost_after - lost_before,
        ms(rejoin)
    );
    Ok(Round {
        rto,
        all_moved,
        in_flight_done,
        exposure,
        lost: lost_after - lost_before,
        rejoin,
        led_placement,
    })
}

pub async fn run(mut args: FailoverArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    let dir = tempfile::Builder::new()
        .prefix("coopr-bench-failover-")
        .tempdir_in(&args.dir)?;
    let settings = [
        ("lease_ms", args.lease_ms.to_string()),
        ("max_clock_offset_ms", args.max_clock_offset_ms.to_string()),
        ("task_timeout_secs", "10".to_string()),
        ("shard_count", args.shards.to_string()),
    ];
    let spec = Spec {
        coopr_bin: &args.coopr_bin,
        nodes_per_dc: 1,
        delay: Duration::from_millis(args.delay_ms),
        demo_workers: 4,
        settings: &settings,
        cloud_latency_ms: args.cloud_latency_ms,
    };
    eprintln!(
        "-- 3 DCs of 1 node, {} ms one way, lease {} ms, offset {} ms",
        args.delay_ms, args.lease_ms, args.max_clock_offset_ms
    );
    let mut wan = start(&spec, dir.path()).await?;
    for dc in DCS {
        let urls = wan.urls[dc].clone();
        coopr_roles(&mut wan.procs, &urls).await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let shard_count = admin_get(&http, &format!("{}/v2/admin/shards", wan.urls["a"][0]))
        .await
        .and_then(|m| m["shard_count"].as_u64())
        .context("no shard count")? as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = spawn_load(
        DCS.iter()
            .map(|dc| (*dc, wan.urls[dc][0].clone()))
            .collect(),
        stop.clone(),
        acked.clone(),
    );
    // Some clusters everywhere before the first kill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rounds = Vec::new();
    for number in 0..args.kills {
        rounds.push(round(&mut wan, &http, &acked, shard_count, args.in_flight, number).await?);
    }
    stop.store(true, Ordering::Release);
    for task in load {
        let _ = task.await;
    }
    let created = acked.lock().expect("acked").len();
    let of = |f: fn(&Round) -> Duration| Summary::of(&rounds.iter().map(f).collect::<Vec<_>>());
    let rto = of(|r| r.rto);
    let all_moved = of(|r| r.all_moved);
    let in_flight = of(|r| r.in_flight_done);
    let rejoin = of(|r| r.rejoin);
    let exposures: Vec<u64> = rounds.iter().map(|r| r.exposure).collect();
    let lost: Vec<u64> = rounds.iter().map(|r| r.lost).collect();
    println!(
        "\n{} kills of the DC owning the most shards; 3 DCs of 1 node, {} ms one way, lease {} ms + offset {} ms; {} creates acknowledged under load\n",
        rounds.len(), args.delay_ms, args.lease_ms, args.max_clock_offset_ms, created
    );
    println!("| measurement | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |what: &str, s: &Summary| {
        println!(
            "| {what} | {} ms | {} ms | {} ms |",
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    };
    row("RTO: kill -9 → first write accepted at the new owner", &rto);
    row(
        "kill -9 → every shard of the victim adopted by a survivor",
        &all_moved,
    );
    row(
        "kill -9 → every create in flight at the victim ACTIVE at its new owner",
        &in_flight,
    );
    row(
        "restart → every copy of the victim where the owners were at its restart (rejoin, re-seeds included)",
        &rejoin,
    );
    let counts = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() - 1], v.iter().sum::<u64>())
    };
    let (p50, max, _) = counts(&exposures);
    println!("| RPO exposure at the kill (records some replica lacked) | {p50} | - | {max} |");
    let (p50, max, sum) = counts(&lost);
    println!("| lost-operations report growth per kill (records) | {p50} | - | {max} |");
    println!("\nlost records in all: {sum}");
    for (led, who) in [(false, "another DC"), (true, "the placement leader")] {
        let rtos: Vec<Duration> = rounds
            .iter()
            .filter(|r| r.led_placement == led)
            .map(|r| r.rto)
            .collect();
        if !rtos.is_empty() {
            let s = Summary::of(&rtos);
            println!(
                "RTO of the {} kill(s) of {who}: p50 {} ms, max {} ms",
                rtos.len(),
                ms(s.p50),
                ms(s.max)
            );
        }
    }
    eprintln!("-- done in {:?}", total.elapsed());
    Ok(())
}
