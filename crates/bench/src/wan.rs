//! `wan`: three DCs of real `coopr server` processes whose cross-DC links go through
//! [`DelayProxy`]s with a one-way delay (20 ms by default), to see what the WAN adds:
//!
//! ```text
//!   bench ──▶ a (owner of shards 0, 3, global) ◀──delay──▶ b ◀──delay──▶ c
//!     (i)   write at a                 : local DC log only
//!     (ii)  write at b, for a's cluster: b ──delay──▶ a, a's DC log, a ──delay──▶ b
//!     (iii) a's acknowledgement ──▶ visible at b (b polls: the pull answer takes one delay)
//!     (v)   the same under a steady 1,000 writes/s
//! ```
//!
//! Each figure is printed next to its floor: (i) none, (ii) the local p50 plus two delays,
//! (iii) one delay (measured twice: with b's pull already waiting at a, and with writes sent
//! right after the previous one became visible, which race b's next pull on its way to a). The writes are lease updates (`POST /v2/clusters/{id}` `expireTime`) of a
//! cluster that `a` owns, sent one at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coopr_testkit::{replace_address, DelayProxy};
use serde_json::Value;

use crate::dclog::{
    active_cluster, base64, coopr_bin, coopr_roles, etcd_version, free_coopr_base_dcs, get_json,
    measure, set_demo_workers, start_etcd, Proc, Target,
};
use crate::ops::Api;
use crate::stats::{ms, Summary};
use coopr_types::ClusterId;

#[derive(clap::Args, Debug)]
pub struct WanArgs {
    /// The release `coopr` binary (build it first: `cargo build --release -p coopr`).
    #[arg(long, default_value = "target/release/coopr")]
    coopr_bin: PathBuf,
    /// Directory under which the temporary deployment is made (default: the current directory,
    /// so the figures are for the real disk and not a tmpfs `/tmp`).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// One-way delay of every cross-DC link (ms).
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Nodes in each DC (1 or 3).
    #[arg(long, default_value_t = 1)]
    nodes_per_dc: u16,
    /// Measured writes of each kind.
    #[arg(long, default_value_t = 200)]
    writes: u64,
    /// Fake-cloud workers in each server (demo mode).
    #[arg(long, default_value_t = 1)]
    demo_workers: u32,
    /// Writes per second of row (v), the steady stream.
    #[arg(long, default_value_t = 1000)]
    steady_rate: u64,
    /// Concurrent clients of the comparison with etcd.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds the concurrent clients write.
    #[arg(long, default_value_t = 5.0)]
    concurrent_secs: f64,
    /// The etcd server binary for the comparison (Debian: `apt-get install -y etcd-server`).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Skip the comparison with etcd spanning the three DCs.
    #[arg(long)]
    no_etcd: bool,
    /// A node setting for every server (`KEY=VALUE`, a line of the node TOML; repeatable),
    /// e.g. `--set replication_pipeline=1`.
    #[arg(long = "set", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Directory the PNG charts are written to (made if missing): `wan-write-cdf.png` (latency
    /// CDFs of rows (i) and (ii) and of the comparison with etcd), `wan-lag-steady.png` (row (v):
    /// each write's lag by when it was acknowledged) and `wan-lag-sequential.png` (row (iii)).
    #[arg(long, default_value = ".")]
    plots: PathBuf,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (key, value) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((key.trim().to_string(), value.trim().to_string()))
}

const DCS: [&str; 3] = ["a", "b", "c"];
/// Unmeasured writes before each phase (connections, caches).
const WARMUP_WRITES: u64 = 20;
/// Bytes of etcd's value: about the body of a lease update (`{"expireTime":...}`).
const ETCD_VALUE_LEN: usize = 32;
/// Longest one write may take to become visible at the replica before the run fails.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running deployment: processes (killed on drop), proxies, each DC's nodes' API URLs,
/// and how to start each node again.
pub(crate) struct Wan {
    pub(crate) procs: Vec<Proc>,
    _proxies: Vec<DelayProxy>,
    pub(crate) urls: BTreeMap<&'static str, Vec<String>>,
    /// Per node, in the order of `procs` (after the fake cloud's): its DC, name and config.
    pub(crate) nodes: Vec<(&'static str, String, PathBuf)>,
    coopr_bin: PathBuf,
    out: PathBuf,
}

impl Wan {
    /// The command that starts node `name` with `config`.
    pub(crate) fn server_command(&self, config: &Path) -> Command {
        let mut command = Command::new(&self.coopr_bin);
        command
            .args(["server", "--config"])
            .arg(config)
            .current_dir(&self.out);
        command
    }

    /// Starts a node again (its earlier process must have been dropped).
    pub(crate) fn respawn(&self, name: &str, config: &Path) -> anyhow::Result<Proc> {
        Proc::spawn(
            &format!("coopr {name}"),
            self.server_command(config),
            self.out.join(format!("{name}.log")),
        )
    }
}

/// What [`start`] runs: 3 DCs of `nodes_per_dc` nodes, `delay` one way between DCs, the demo
/// workers per server, node settings to override (`key = value` lines of the node TOML), and the
/// shared fake cloud's per-operation latency.
pub(crate) struct Spec<'a> {
    pub(crate) coopr_bin: &'a Path,
    pub(crate) nodes_per_dc: u16,
    pub(crate) delay: Duration,
    pub(crate) demo_workers: u32,
    pub(crate) settings: &'a [(&'a str, String)],
    pub(crate) cloud_latency_ms: u64,
}

/// Generates a 3-DC deployment under `dir`, points each DC's configs at proxies for every
/// address of the other DCs (text replacement in the generated TOML), and starts it with the
/// shared fake cloud its demo workers use.
pub(crate) async fn start(spec: &Spec<'_>, dir: &Path) -> anyhow::Result<Wan> {
    let base = free_coopr_base_dcs(3, spec.nodes_per_dc)?;
    let out = dir.join("wan");
    crate::dclog::init_cluster(spec.coopr_bin, 3, spec.nodes_per_dc, base, &out)?;
    let endpoints: Vec<Value> =
        serde_json::from_slice(&std::fs::read(out.join("endpoints.json"))?)?;
    let delay = spec.delay;
    let mut proxies = Vec::new();
    let mut urls: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut nodes = Vec::new();
    let first = endpoints.first().context("no endpoints")?;
    let first_config = out.join(format!("{}.toml", first["node"].as_str().context("node")?));
    let mut procs = vec![start_fake_cloud(
        spec.coopr_bin,
        &out,
        &first_config,
        spec.cloud_latency_ms,
    )?];
    for dc in DCS {
        let mut replacements = Vec::new();
        for e in endpoints.iter().filter(|e| e["dc"] != dc) {
            for key in ["api", "internal"] {
                let url = e[key].as_str().context("endpoint URL")?;
                let port: u16 = url.rsplit(':').next().unwrap_or_default().parse()?;
                let proxy = DelayProxy::start(([127, 0, 0, 1], port).into(), delay).await?;
                replacements.push((port, proxy.addr().to_string()));
                proxies.push(proxy);
            }
        }
        for e in endpoints.iter().filter(|e| e["dc"] == dc) {
            let node = e["node"].as_str().context("node name")?;
            let config = out.join(format!("{node}.toml"));
            set_demo_workers(&config, spec.demo_workers)?;
            for (key, value) in spec.settings {
                set_setting(&config, key, value)?;
            }
            let mut text = std::fs::read_to_string(&config)?;
            for (port, to) in &replacements {
                text = replace_address(&text, *port, to);
            }
            std::fs::write(&config, text)?;
            nodes.push((dc, node.to_string(), config));
            urls.entry(dc)
                .or_default()
                .push(e["api"].as_str().context("api URL")?.to_string());
        }
    }
    let mut wan = Wan {
        procs: Vec::new(),
        _proxies: proxies,
        urls,
        nodes,
        coopr_bin: spec.coopr_bin.to_path_buf(),
        out,
    };
    for (_, name, config) in &wan.nodes {
        procs.push(wan.respawn(name, config)?);
    }
    wan.procs = procs;
    Ok(wan)
}

/// The value of a `key = value` line of a node TOML (quotes removed), if any.
/// The fake cloud a deployment written by `coopr init-cluster --demo` shares (its `start.sh`
/// runs it; the benchmarks start the nodes themselves), at the `fake_cloud_url` of `config`.
pub(crate) fn start_fake_cloud(
    coopr_bin: &Path,
    out: &Path,
    config: &Path,
    latency_ms: u64,
) -> anyhow::Result<Proc> {
    let cloud_url =
        setting(config, "fake_cloud_url")?.context("the demo deployment has no fake_cloud_url")?;
    let mut cloud = Command::new(coopr_bin);
    cloud
        .args(["fake-cloud", "--listen"])
        .arg(cloud_url.trim_start_matches("http://"))
        .arg("--state")
        .arg(out.join("fake-cloud.json"))
        .arg("--latency-ms")
        .arg(latency_ms.to_string());
    Proc::spawn("coopr fake-cloud", cloud, out.join("fake-cloud.log"))
}

pub(crate) fn setting(config: &Path, key: &str) -> anyhow::Result<Option<String>> {
    let text = std::fs::read_to_string(config)?;
    Ok(text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    }))
}

/// Sets `key = value` (a TOML literal) in a node TOML: replaces its line, or adds one before
/// the first table.
pub(crate) fn set_setting(config: &Path, key: &str, value: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let line = format!("{key} = {value}");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match lines
        .iter()
        .position(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
    {
        Some(at) => lines[at] = line,
        None => {
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .unwrap_or(lines.len());
            lines.insert(at, line);
        }
    }
    std::fs::write(config, lines.join("\n") + "\n")?;
    Ok(())
}

/// Sequential lease updates of cluster `id` sent to `url`; their latencies.
async fn writes(
    api: &Api,
    url: &str,
    id: coopr_types::ClusterId,
    base: u64,
    count: u64,
) -> anyhow::Result<Vec<Duration>> {
    let target = Target::Coopr {
        api: api.clone(),
        url: url.to_string(),
        id,
        base,
    };
    for i in 0..WARMUP_WRITES {
        target.write(i).await?;
    }
    let mut latencies = Vec::new();
    for i in WARMUP_WRITES..WARMUP_WRITES + count {
        let started = Instant::now();
        target.write(i).await?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// A write's replication lag and when it was acknowledged, counted from the first measured
/// write of its phase.
type TimedLag = (Duration, Duration);

/// Lease updates at `owner`, each followed by polling `replica` until it shows the new lease;
/// per measured write, when the owner acknowledged it (from the phase's first measured write
/// on) and the time from that acknowledgement to the replica showing it. Each write waits
/// `pause` after the previous one became visible: with two one-way delays, the replica's next
/// pull has reached the owner and waits there (the steady state of an idle stream); with none,
/// the write races that pull on its way (back-to-back writes).
async fn replication_lags(
    api: &Api,
    owner: &str,
    replica: &str,
    id: coopr_types::ClusterId,
    base: u64,
    count: u64,
    pause: Duration,
) -> anyhow::Result<Vec<TimedLag>> {
    let target = Target::Coopr {
        api: api.clone(),
        url: owner.to_string(),
        id,
        base,
    };
    let mut lags = Vec::new();
    let mut began = Instant::now();
    for i in 0..WARMUP_WRITES + count {
        if i == WARMUP_WRITES {
            began = Instant::now();
        }
        tokio::time::sleep(pause).await;
        target.write(i).await?;
        let acknowledged = Instant::now();
        loop {
            let (status, cluster) =
                get_json(&api.http, &format!("{replica}/v2/clusters/{id}")).await?;
            if status == 200 && cluster["expireTime"].as_u64() == Some(base + i) {
                break;
            }
            if acknowledged.elapsed() > VISIBLE_TIMEOUT {
                bail!(
                    "lease {} not visible at {replica} after {VISIBLE_TIMEOUT:?}",
                    base + i
                );
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if i >= WARMUP_WRITES {
            lags.push((acknowledged.duration_since(began), acknowledged.elapsed()));
        }
    }
    Ok(lags)
}

/// How long row (v) writes at its steady rate.
const STEADY_FOR: Duration = Duration::from_secs(3);

/// Row (v): lease updates at `owner` at a steady `rate` per second in all (one writer per
/// cluster of `ids`, each paced by a clock, for [`STEADY_FOR`] after a short warm-up) while
/// `replica` is polled for every cluster each millisecond; per write, the time from its
/// acknowledgement until a poll of the replica showed it (or a later write of its cluster: each
/// write's lease is larger than the previous one's). Returns the lags with when each write was
/// acknowledged (from the first measured acknowledgement on), in that order, and the rate
/// reached.
async fn steady_stream_lags(
    api: &Api,
    owner: &str,
    replica: &str,
    ids: &[ClusterId],
    base: u64,
    rate: u64,
) -> anyhow::Result<(Vec<TimedLag>, f64)> {
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // One poller per cluster: (when, the lease the replica showed).
    let mut pollers = Vec::new();
    for id in ids {
        let (http, url, writing) = (
            api.http.clone(),
            format!("{replica}/v2/clusters/{id}"),
            writing.clone(),
        );
        pollers.push(tokio::spawn(async move {
            let mut seen: Vec<(Instant, u64)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                if let Ok((200, cluster)) = get_json(&http, &url).await {
                    if let Some(lease) = cluster["expireTime"].as_u64() {
                        seen.push((Instant::now(), lease));
                    }
                }
            }
            seen
        }));
    }
    let warmup = Duration::from_millis(500);
    let mut writers = Vec::new();
    for id in ids {
        let target = Target::Coopr {
            api: api.clone(),
            url: owner.to_string(),
            id: *id,
            base,
        };
        let period = Duration::from_secs(ids.len() as u64) / rate as u32;
        writers.push(tokio::spawn(async move {
            // (lease, when acknowledged)
            let mut acknowledged: Vec<(u64, Instant)> = Vec::new();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = Instant::now();
            let mut i = 0u64;
            while started.elapsed() < warmup + STEADY_FOR {
                tick.tick().await;
                target.write(i).await?;
                if started.elapsed() >= warmup {
                    acknowledged.push((base + i, Instant::now()));
                }
                i += 1;
            }
            anyhow::Ok(acknowledged)
        }));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.push(writer.await??);
    }
    // Until the replica shows every cluster's last write.
    let deadline = Instant::now() + VISIBLE_TIMEOUT;
    for (id, acks) in ids.iter().zip(&acknowledged) {
        let last = acks.last().map_or(base, |(lease, _)| *lease);
        loop {
            let (status, cluster) =
                get_json(&api.http, &format!("{replica}/v2/clusters/{id}")).await?;
            if status == 200 && cluster["expireTime"].as_u64() >= Some(last) {
                break;
            }
            if Instant::now() > deadline {
                bail!("lease {last} not visible at {replica} after {VISIBLE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let first = acknowledged
        .iter()
        .flatten()
        .map(|(_, at)| *at)
        .min()
        .unwrap_or_else(Instant::now);
    let mut lags = Vec::new();
    let mut writes = 0usize;
    for (poller, acks) in pollers.into_iter().zip(acknowledged) {
        let seen = poller.await?;
        writes += acks.len();
        for (lease, at) in acks {
            let Some((shown, _)) = seen.iter().find(|(when, l)| *l >= lease && *when >= at) else {
                bail!("no poll of {replica} showed lease {lease}");
            };
            lags.push((at.duration_since(first), shown.duration_since(at)));
        }
    }
    lags.sort_by_key(|(written, _)| *written);
    Ok((lags, writes as f64 / STEADY_FOR.as_secs_f64()))
}

/// Handovers measured in (iv), alternating a → b and b → a.
const HANDOVERS: usize = 6;

/// Hands the shard of `id` over between a and b `rounds` times (asked at the giving DC's
/// leader); each measured from the admin call until the receiving DC's leader shows the shard
/// as owned (adopted: it accepts writes).
async fn handovers(
    leaders: &BTreeMap<&str, String>,
    id: ClusterId,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let admin = [
        ("Coopr-UserID", "admin"),
        ("Coopr-TenantID", "superadmin"),
        ("Coopr-ApiKey", coopr_server::seed::DEMO_ADMIN_KEY),
    ];
    let http = reqwest::Client::new();
    let get = |url: String| {
        let mut request = http.get(url);
        for (k, v) in admin {
            request = request.header(k, v);
        }
        request.send()
    };
    let map: Value = get(format!("{}/v2/admin/shards", leaders["a"]))
        .await?
        .json()
        .await?;
    let shard_count = map["shard_count"].as_u64().context("shard_count")?;
    let shard = id.0 % shard_count;
    let mut took = Vec::new();
    for round in 0..rounds {
        let (from, to) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let map: Value = get(format!("{}/v2/admin/shards", leaders[to]))
            .await?
            .json()
            .await?;
        let epoch = map["shards"][shard as usize]["epoch"]
            .as_u64()
            .context("epoch")?;
        let started = Instant::now();
        let mut request = http
            .post(format!(
                "{}/v2/admin/shards/{shard}/handover",
                leaders[from]
            ))
            .json(&serde_json::json!({ "to": to }));
        for (k, v) in admin {
            request = request.header(k, v);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            let answer = response.text().await?;
            let map: Value = get(format!("{}/v2/admin/shards", leaders[from]))
                .await?
                .json()
                .await?;
            bail!(
                "handover {from} → {to}: {answer}; history {}",
                map["history"]
            );
        }
        let deadline = started + Duration::from_secs(60);
        loop {
            let view: Value = get(format!("{}/v2/admin/shards/{shard}/view", leaders[to]))
                .await?
                .json()
                .await?;
            let map: Value = get(format!("{}/v2/admin/shards", leaders[to]))
                .await?
                .json()
                .await?;
            // Adopted in the next epoch (an earlier "owner" may come from a stale map).
            let entry = &map["shards"][shard as usize];
            if view["role"] == "owner" && entry["owner"] == to && entry["epoch"] == epoch + 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{to} did not own shard {shard} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(started.elapsed());
        // Let every replica follow before the next handover (it waits for them anyway).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(took)
}

pub async fn run(mut args: WanArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    std::fs::create_dir_all(&args.plots)
        .with_context(|| format!("cannot make the charts' directory {}", args.plots.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("coopr-bench-wan-")
        .tempdir_in(&args.dir)?;
    eprintln!(
        "-- 3 DCs of {} node(s), {} ms one way between DCs",
        args.nodes_per_dc, args.delay_ms
    );
    let settings: Vec<(&str, String)> = args
        .settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let spec = Spec {
        coopr_bin: &args.coopr_bin,
        nodes_per_dc: args.nodes_per_dc,
        delay: Duration::from_millis(args.delay_ms),
        demo_workers: args.demo_workers,
        settings: &settings,
        cloud_latency_ms: 0,
    };
    let mut wan = start(&spec, dir.path()).await?;
    let mut leaders = BTreeMap::new();
    for dc in DCS {
        // Every DC's nodes answer /ready only once the global shard reached them from `a`.
        let urls = wan.urls[dc].clone();
        let (leader, _) = coopr_roles(&mut wan.procs, &urls).await?;
        leaders.insert(dc, leader);
    }
    let (a, b) = (leaders["a"].clone(), leaders["b"].clone());
    let api = Api::new(a.clone())?;
    let (id, create_time) = active_cluster(&api).await?;
    eprintln!("-- cluster {id} (owned by a) is ACTIVE; measuring");
    // Far enough in the future, and a different lease for every write of every phase.
    let base = create_time + 86_400_000;
    let local_samples = writes(&api, &a, id, base, args.writes).await?;
    let local = Summary::of(&local_samples);
    eprintln!("-- local writes done");
    let http = reqwest::Client::new();
    let (before_b, before_a) = (
        crate::breakdown::scrape(&http, &b).await,
        crate::breakdown::scrape(&http, &a).await,
    );
    let forwarded_samples = writes(&api, &b, id, base + 1_000_000, args.writes).await?;
    let forwarded = Summary::of(&forwarded_samples);
    // Where a forwarded write's time went: b's call to a, and a's commit.
    let forward_call = crate::breakdown::mean(
        &before_b,
        &crate::breakdown::scrape(&http, &b).await,
        "coopr_forward_to_dc_seconds",
        "",
    );
    let owner_commit = crate::breakdown::mean(
        &before_a,
        &crate::breakdown::scrape(&http, &a).await,
        "coopr_commit_seconds",
        "",
    );
    // What the link itself costs a request: `GET /status` at a through one more proxy of the
    // same delay (no write, nothing forwarded): two crossings plus the proxy's own scheduling.
    let status_port: u16 = a
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("a's port")?;
    let probe = DelayProxy::start(
        ([127, 0, 0, 1], status_port).into(),
        Duration::from_millis(args.delay_ms),
    )
    .await?;
    let mut crossings = Vec::new();
    for _ in 0..args.writes {
        let started = Instant::now();
        let answer = http
            .get(format!("http://{}/status", probe.addr()))
            .send()
            .await?;
        answer.bytes().await?;
        crossings.push(started.elapsed());
    }
    let crossings = Summary::of(&crossings);
    drop(probe);
    eprintln!("-- forwarded writes done");
    let delay = Duration::from_millis(args.delay_ms);
    let pause = 2 * delay + Duration::from_millis(5);
    let idle_lags = replication_lags(&api, &a, &b, id, base + 2_000_000, args.writes, pause);
    let idle_timed = idle_lags.await?;
    let idle_lags = summary_of_lags(&idle_timed);
    eprintln!("-- replication lags (idle stream) done");
    let busy_lags = replication_lags(
        &api,
        &a,
        &b,
        id,
        base + 3_000_000,
        args.writes,
        Duration::ZERO,
    );
    let busy_timed = busy_lags.await?;
    let busy_lags = summary_of_lags(&busy_timed);
    eprintln!("-- replication lags (busy stream) done");
    // A second cluster of a's, so that two writers share the steady rate (one alone is
    // paced by its own write latency).
    let (second, _) = active_cluster(&api).await?;
    let (steady_timed, steady_rate) = steady_stream_lags(
        &api,
        &a,
        &b,
        &[id, second],
        base + 4_000_000,
        args.steady_rate,
    )
    .await?;
    let steady_lags = summary_of_lags(&steady_timed);
    eprintln!("-- replication lags (steady stream) done");
    let handovers = Summary::of(&handovers(&leaders, id, HANDOVERS).await?);
    eprintln!("-- handovers done");
    // The comparison with etcd spanning the same three DCs: coopr's writes go to the DC that
    // owns the cluster (what a client of a DC does for that DC's clusters).
    let coopr_a = Target::Coopr {
        api: api.clone(),
        url: a.clone(),
        id,
        base: base + 5_000_000,
    };
    let counter = Arc::new(AtomicU64::new(0));
    let concurrent = Duration::from_secs_f64(args.concurrent_secs);
    eprintln!("-- coopr: {} clients at a for {concurrent:?}", args.clients);
    let coopr_many = measure(
        &coopr_a,
        &wan.procs,
        &counter,
        args.clients,
        None,
        concurrent,
    )
    .await?;
    let coopr_elapsed = coopr_many.elapsed;
    for p in wan.procs.iter_mut() {
        p.check_alive()?;
    }
    let etcd_rows = if args.no_etcd {
        Err("skipped (--no-etcd)".to_string())
    } else if let Some(version) = etcd_version(&args.etcd_bin) {
        Ok(etcd_across_dcs(&args, dir.path(), delay, &version).await?)
    } else {
        Err(format!(
            "skipped: `{}` does not run (Debian/Ubuntu: `apt-get install -y etcd-server`)",
            args.etcd_bin.display()
        ))
    };
    println!(
        "\n3 DCs of {} node(s), {} ms one way between DCs, {} sequential writes per row\n",
        args.nodes_per_dc, args.delay_ms, args.writes
    );
    println!("| measurement | p50 ms | p99 ms | max ms | floor ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let row = |what: &str, s: &Summary, floor: Option<Duration>| {
        println!(
            "| {what} | {} | {} | {} | {} |",
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            floor.map_or_else(|| "-".to_string(), ms)
        );
    };
    row("(i) write at the owner DC (a)", &local, None);
    row(
        "(ii) the same write sent to b (forwarded to a)",
        &forwarded,
        Some(local.p50 + 2 * delay),
    );
    let mean_ms = |m: Option<(Duration, u64)>| m.map_or("-".to_string(), |(d, _)| ms(d));
    println!(
        "|   (ii) mean {} ms: b's call to a {} ms (two crossings of the {} ms link and a's handling), a's commit {} ms; `GET /status` at a through a {} ms proxy: p50 {} ms | | | | |",
        ms(forwarded.mean()),
        mean_ms(forward_call),
        args.delay_ms,
        mean_ms(owner_commit),
        args.delay_ms,
        ms(crossings.p50),
    );
    row(
        "(iii) a's acknowledgement → visible at b (idle stream: b's pull waits at a)",
        &idle_lags,
        Some(delay),
    );
    row(
        "(iii) the same, each write right after the previous became visible",
        &busy_lags,
        Some(delay),
    );
    row(
        &format!(
            "(v) the same, writes at a steady {} per second for {} s ({steady_rate:.0}/s reached; two clusters, one writer each), b polled every ms",
            args.steady_rate,
            STEADY_FOR.as_secs()
        ),
        &steady_lags,
        Some(delay),
    );
    row(
        &format!("(iv) graceful handover of the idle shard, a ⇄ b ({HANDOVERS} times): admin call → the new owner writes it"),
        &handovers,
        None,
    );
    println!(
        "\nWrites through the deployment vs etcd spanning the same three DCs (one member per DC, \
         the same {} ms one way between members; each system's writes at its leader)\n",
        args.delay_ms
    );
    println!("| system | mode | writes | p50 ms | p99 ms | ops/s |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let line = |system: &str, mode: &str, s: &Summary, elapsed: Duration| {
        println!(
            "| {system} | {mode} | {} | {} | {} | {:.0} |",
            s.samples,
            ms(s.p50),
            ms(s.p99),
            s.samples as f64 / elapsed.as_secs_f64()
        );
    };
    let coopr_name = format!("coopr, 3 DCs of {} node(s)", args.nodes_per_dc);
    line(
        &coopr_name,
        "sequential, at the owner DC",
        &local,
        local.total,
    );
    let many = format!("{} clients, at the owner DC", args.clients);
    line(&coopr_name, &many, &coopr_many.summary, coopr_elapsed);
    match &etcd_rows {
        Ok(etcd) => {
            let name = format!("{}, 3 members in 3 DCs", etcd.version);
            line(
                &name,
                "sequential, at the leader",
                &etcd.sequential,
                etcd.sequential.total,
            );
            let many = format!("{} clients, at the leader", args.clients);
            line(&name, &many, &etcd.many, etcd.many_elapsed);
            let rate = |s: &Summary, e: Duration| s.samples as f64 / e.as_secs_f64();
            println!(
                "\nRatio, {} clients: coopr {:.1}x etcd's throughput, p50 {} ms vs {} ms. \
                 Sequential: p50 {} ms vs {} ms.",
                args.clients,
                rate(&coopr_many.summary, coopr_elapsed) / rate(&etcd.many, etcd.many_elapsed),
                ms(coopr_many.summary.p50),
                ms(etcd.many.p50),
                ms(local.p50),
                ms(etcd.sequential.p50),
            );
        }
        Err(why) => println!("| etcd, 3 members in 3 DCs | {why} | | | | |"),
    }
    let setup = format!(
        "3 DCs of {} node(s), {} ms one way",
        args.nodes_per_dc, args.delay_ms
    );
    let mut writes_cdf: Vec<(String, &[Duration])> = vec![
        (
            format!(
                "(i) coopr, sequential at the owner DC a: {} writes",
                local.samples
            ),
            &local_samples,
        ),
        (
            format!(
                "(ii) coopr, sequential at b, forwarded to a: {} writes",
                forwarded.samples
            ),
            &forwarded_samples,
        ),
        (
            format!(
                "coopr, {} clients at a: {} writes",
                args.clients, coopr_many.summary.samples
            ),
            &coopr_many.samples,
        ),
    ];
    if let Ok(etcd) = &etcd_rows {
        writes_cdf.push((
            format!(
                "etcd across the 3 DCs, sequential at the leader: {} writes",
                etcd.sequential.samples
            ),
            &etcd.sequential_samples,
        ));
        writes_cdf.push((
            format!(
                "etcd across the 3 DCs, {} clients at the leader: {} writes",
                args.clients, etcd.many.samples
            ),
            &etcd.many_samples,
        ));
    }
    let series: Vec<(&str, &[Duration])> = writes_cdf
        .iter()
        .map(|(name, s)| (name.as_str(), *s))
        .collect();
    let cdf_path = args.plots.join("wan-write-cdf.png");
    crate::plot::cdf_chart(
        &cdf_path,
        &format!("Write latency CDF (wan: {setup})"),
        &series,
    )?;
    let floor = |timed: &[&[TimedLag]]| {
        let end = timed
            .iter()
            .filter_map(|t| t.last())
            .map(|(written, _)| written.as_secs_f64())
            .fold(0.0, f64::max);
        let delay_ms = delay.as_secs_f64() * 1e3;
        vec![(0.0, delay_ms), (end, delay_ms)]
    };
    let steady_path = args.plots.join("wan-lag-steady.png");
    let steady_points = lag_points(&steady_timed);
    let steady_name = format!("(v) a's acknowledgement → visible at b, {steady_rate:.0} writes/s");
    crate::plot::time_series_chart(
        &steady_path,
        &format!("Replication lag a → b by write time, steady stream (wan: {setup})"),
        &[
            (&steady_name, &steady_points),
            ("floor: one delay", &floor(&[&steady_timed])),
        ],
    )?;
    let sequential_path = args.plots.join("wan-lag-sequential.png");
    crate::plot::time_series_chart(
        &sequential_path,
        &format!("Replication lag a → b by write time, one write at a time (wan: {setup})"),
        &[
            (
                "(iii) idle stream: b's pull waits at a",
                &lag_points(&idle_timed),
            ),
            (
                "(iii) each write right after the previous became visible",
                &lag_points(&busy_timed),
            ),
            ("floor: one delay", &floor(&[&idle_timed, &busy_timed])),
        ],
    )?;
    println!(
        "\nCharts (PNG): `{}`, `{}`, `{}`",
        cdf_path.display(),
        steady_path.display(),
        sequential_path.display()
    );
    eprintln!("-- done in {:?}", total.elapsed());
    Ok(())
}

/// Percentiles of the lags of `timed`.
fn summary_of_lags(timed: &[TimedLag]) -> Summary {
    Summary::of(&timed.iter().map(|(_, lag)| *lag).collect::<Vec<_>>())
}

/// `timed` as chart points: seconds since the first measured write, lag in ms.
fn lag_points(timed: &[TimedLag]) -> Vec<(f64, f64)> {
    timed
        .iter()
        .map(|(written, lag)| (written.as_secs_f64(), lag.as_secs_f64() * 1e3))
        .collect()
}

/// What etcd spanning three DCs did.
struct EtcdRows {
    version: String,
    sequential: Summary,
    /// Every sequential put's latency.
    sequential_samples: Vec<Duration>,
    many: Summary,
    /// Every concurrent put's latency.
    many_samples: Vec<Duration>,
    many_elapsed: Duration,
}

/// A 3-member etcd cluster whose members talk through `delay` one way (one member per DC),
/// sequential puts then `clients` concurrent ones at its leader, values as long as a lease
/// update's body.
async fn etcd_across_dcs(
    args: &WanArgs,
    dir: &Path,
    delay: Duration,
    version: &str,
) -> anyhow::Result<EtcdRows> {
    eprintln!("-- etcd ({version}): 3 members, {delay:?} one way between them");
    let mut etcd = start_etcd(&args.etcd_bin, dir, Some(delay)).await?;
    let target = Target::Etcd {
        http: reqwest::Client::new(),
        url: etcd.leader.clone(),
        key: base64(b"coopr-bench/cluster/expire"),
        value_len: ETCD_VALUE_LEN,
    };
    let counter = Arc::new(AtomicU64::new(1));
    eprintln!("-- etcd: {} sequential puts at the leader", args.writes);
    let sequential = measure(
        &target,
        &etcd.procs,
        &counter,
        1,
        Some(args.writes),
        Duration::ZERO,
    )
    .await?;
    let concurrent = Duration::from_secs_f64(args.concurrent_secs);
    eprintln!(
        "-- etcd: {} clients at the leader for {concurrent:?}",
        args.clients
    );
    let many = measure(
        &target,
        &etcd.procs,
        &counter,
        args.clients,
        None,
        concurrent,
    )
    .await?;
    for p in etcd.procs.iter_mut() {
        p.check_alive()?;
    }
    Ok(EtcdRows {
        version: version.to_string(),
        sequential: sequential.summary,
        sequential_samples: sequential.samples,
        many: many.summary,
        many_samples: many.samples,
        many_elapsed: many.elapsed,
    })
}
