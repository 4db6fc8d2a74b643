//! `catchup`: a wiped node of a 3-node DC that holds N clusters catching up, end to end, with
//! real `coopr server` processes.
//!
//! ```text
//!  init-cluster (1 DC, 3 nodes) ─► start, /ready ─► kill all three
//!      │
//!      ├─ leader's data dir, offline (a child `coopr-bench catchup-grow`): its DC log applied
//!      │  to a state, N ACTIVE one-machine clusters added through State::apply (as `scale`
//!      │  builds them, in the demo tenant, finished jobs retired to the job archive), a
//!      │  snapshot of it written at the log's last entry, the log purged up to there
//!      ├─ the other surviving node gets a copy of that DC-log directory
//!      └─ the third node's data dir is deleted (a node that lost its disk)
//!
//!  start the two ─► both /ready (each restores N clusters from its snapshot)
//!  start the wiped node ─► the leader sends its snapshot file in chunks, the node installs it
//!      and applies what followed ─► its last_applied reaches the leader's, and it is /ready
//! ```
//!
//! Generating the clusters directly into the state is what the scale target asks for where the
//! API would take too long (hours for a million at ~100 creates/s); everything after is the
//! product's own path: restart from a snapshot, a wiped node's rejoin, the snapshot transfer.
//!
//! Builds nothing: it runs the release `coopr` binary (`cargo build --release -p coopr`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use coopr_raft::{RaftLogStore, RaftStateMachineStore, RaftStores};
use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::RaftLogReader;
use serde_json::Value;

use crate::dclog::{
    coopr_bin, free_coopr_base_dcs, get_json, init_cluster, set_demo_workers, Proc,
};
use crate::memory::{metric, scrape};
use crate::plan::Catalog;
use crate::reseed::{build_into, Generate};
use crate::wan::{set_setting, setting};

/// What `catchup` and `replica-seed` share: the binary, where the deployment goes, what is
/// generated into it.
#[derive(clap::Args, Debug)]
pub struct GeneratedArgs {
    /// The release `coopr` binary (build it first: `cargo build --release -p coopr`).
    #[arg(long, default_value = "target/release/coopr")]
    pub coopr_bin: PathBuf,
    /// Directory under which the temporary deployment is made (it needs about 7 KB of disk
    /// per cluster for each node's snapshot file, plus a copy while one is made).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// One-machine clusters generated into the (owner) DC.
    #[arg(long, default_value_t = 100_000)]
    pub clusters: u32,
    /// Cluster shards of the deployment.
    #[arg(long, default_value_t = 1_024)]
    pub shards: u32,
    /// How long a step (a restart, the catch-up, the seeding) may take before the run gives
    /// up, in seconds.
    #[arg(long, default_value_t = 3_600)]
    pub timeout_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub generated: GeneratedArgs,
    /// Keep the deployment's directory (the nodes' logs and data) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// The offline step of `catchup`, run in a process of its own so that the memory of the state
/// it builds is given back before the nodes start.
#[derive(clap::Args, Debug)]
pub struct GrowArgs {
    /// A stopped node's data dir (its DC log is in `raft/`).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    clusters: u32,
    #[arg(long)]
    shards: u32,
    /// The tenant the clusters belong to (it must be in the node's state).
    #[arg(long)]
    tenant: String,
    /// Only every n-th shard gets clusters (those the node's DC owns)...
    #[arg(long, default_value_t = 1)]
    shard_stride: u32,
    /// ... from this one on.
    #[arg(long, default_value_t = 0)]
    shard_offset: u32,
}

/// What the offline step prints (one JSON line on stdout).
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub(crate) struct Grown {
    /// The log index the snapshot is taken at.
    pub index: u64,
    pub replay_s: f64,
    pub build_s: f64,
    pub snapshot_s: f64,
    pub snapshot_bytes: u64,
    /// One of the generated clusters (the first of the first shard that got any).
    #[serde(default)]
    pub sample: Option<u64>,
}

/// The offline step: the node's DC log applied, the clusters added, a snapshot written at the
/// log's last entry and the log purged up to it (as if the node had taken that snapshot
/// itself and purged its log).
pub async fn grow(args: GrowArgs) -> anyhow::Result<()> {
    let raft_dir = args.data_dir.join("raft");
    let stores = RaftStores::open(&raft_dir)
        .with_context(|| format!("cannot open the DC log in {}", raft_dir.display()))?;
    let archive = Arc::new(coopr_store::Archive::open(raft_dir.join("archive.redb"))?);
    let (machine, parts) = coopr_server::core::Core::state_machine(args.shards, archive);
    let mut machine_store = RaftStateMachineStore::open(machine, stores.snapshots.clone())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut log = RaftLogStore::new(stores.log.clone(), false);

    let replay = Instant::now();
    let log_state = log.get_log_state().await?;
    let last = log_state
        .last_log_id
        .context("the node's DC log is empty")?;
    let from = machine_store.last_applied().map_or(0, |id| id.index + 1);
    let entries = log.try_get_log_entries(from..last.index + 1).await?;
    machine_store.apply(entries).await?;
    let replay_s = replay.elapsed().as_secs_f64();

    let built = Instant::now();
    let state_lock = parts.state();
    let state = std::mem::replace(
        &mut *state_lock
            .write()
            .map_err(|_| anyhow!("state lock poisoned"))?,
        coopr_state::State::new(args.shards),
    );
    if state.shard_count() != args.shards {
        bail!(
            "the node has {} shards, not {}",
            state.shard_count(),
            args.shards
        );
    }
    let job_archive = parts.archive();
    let mut retired = Vec::new();
    let generate = Generate {
        clusters: args.clusters,
        shards: args.shards,
        upkeep: Some(1_000),
        shard_stride: args.shard_stride,
        shard_offset: args.shard_offset,
        tenant: Some(&args.tenant),
        // Every entry is 1 ms after the one before (about 35 per cluster): end before now.
        start_ms: wall_ms()?.saturating_sub(u64::from(args.clusters) * 40 + 60_000),
    };
    let catalog = Catalog::load(1)?;
    let mut progress = Instant::now();
    let state = build_into(&catalog, state, &generate, |effect| {
        retired.push(effect);
        if retired.len() >= 10_000 {
            job_archive.apply_effects(std::mem::take(&mut retired));
            if progress.elapsed() > Duration::from_secs(30) {
                eprintln!("-- {} s: building", built.elapsed().as_secs());
                progress = Instant::now();
            }
        }
    })?;
    job_archive.apply_effects(retired);
    let sample = state
        .clusters()
        .find(|r| r.cluster.account.tenant_id == args.tenant)
        .map(|r| r.cluster.id.0);
    *state_lock
        .write()
        .map_err(|_| anyhow!("state lock poisoned"))? = state;
    let build_s = built.elapsed().as_secs_f64();

    let written = Instant::now();
    let mut builder = machine_store.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await?;
    if snapshot.meta.last_log_id != Some(last) {
        bail!(
            "the snapshot is at {:?}, not at the log's end {last}",
            snapshot.meta.last_log_id
        );
    }
    drop(snapshot);
    let snapshot_bytes = stores
        .snapshots
        .open_current()?
        .context("no snapshot after building one")?
        .bytes();
    log.purge(last).await?;
    let grown = Grown {
        index: last.index,
        replay_s,
        build_s,
        snapshot_s: written.elapsed().as_secs_f64(),
        snapshot_bytes,
        sample,
    };
    println!("{}", serde_json::to_string(&grown)?);
    Ok(())
}

/// Runs the offline step on a stopped node's data dir, in a child process; `(stride, offset)`:
/// the shards that get clusters.
pub(crate) fn grow_offline(
    data_dir: &Path,
    clusters: u32,
    shards: u32,
    (stride, offset): (u32, u32),
) -> anyhow::Result<Grown> {
    let grow = Command::new(std::env::current_exe()?)
        .arg("catchup-grow")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--clusters")
        .arg(clusters.to_string())
        .arg("--shards")
        .arg(shards.to_string())
        .arg("--shard-stride")
        .arg(stride.to_string())
        .arg("--shard-offset")
        .arg(offset.to_string())
        .arg("--tenant")
        .arg(coopr_server::seed::DEMO_TENANT)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !grow.status.success() {
        bail!("catchup-grow failed ({})", grow.status);
    }
    serde_json::from_slice(&grow.stdout)
        .with_context(|| format!("catchup-grow printed {:?}", grow.stdout))
}

/// Writes a demo deployment of `dcs` DCs of `per_dc` nodes into `out` (`coopr init-cluster`,
/// no demo workers, `shards` cluster shards) and returns its nodes, DC by DC.
pub(crate) fn deployment(
    coopr_bin: &Path,
    dcs: u16,
    per_dc: u16,
    shards: u32,
    out: &Path,
) -> anyhow::Result<Vec<Node>> {
    let base = free_coopr_base_dcs(dcs, per_dc)?;
    init_cluster(coopr_bin, dcs, per_dc, base, out)?;
    let mut nodes = Vec::new();
    for d in 0..dcs {
        let dc = char::from(b'a' + u8::try_from(d)?);
        for i in 0..per_dc {
            let name = format!("{dc}{}", i + 1);
            let config = out.join(format!("{name}.toml"));
            set_demo_workers(&config, 0)?;
            set_setting(&config, "shard_count", &shards.to_string())?;
            let data_dir = out.join(setting(&config, "data_dir")?.context("no data_dir")?);
            nodes.push(Node {
                name,
                config,
                data_dir,
                url: format!("http://127.0.0.1:{}", base + 10 * d + i),
            });
        }
    }
    Ok(nodes)
}

fn wall_ms() -> anyhow::Result<u64> {
    Ok(u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?)
}

/// One node of the deployment.
pub(crate) struct Node {
    pub name: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub url: String,
}

impl Node {
    pub(crate) fn start(&self, coopr_bin: &Path, out: &Path) -> anyhow::Result<Proc> {
        let mut command = Command::new(coopr_bin);
        command
            .arg("server")
            .arg("--config")
            .arg(&self.config)
            .current_dir(out);
        Proc::spawn(
            &format!("coopr {}", self.name),
            command,
            out.join(format!("{}.log", self.name)),
        )
    }
}

/// A node's `/v2/status` and whether it is `/ready`.
pub(crate) async fn status(http: &reqwest::Client, url: &str) -> Option<(Value, bool)> {
    let (code, status) = get_json(http, &format!("{url}/v2/status")).await.ok()?;
    if code != 200 {
        return None;
    }
    let ready = matches!(get_json(http, &format!("{url}/ready")).await, Ok((200, _)));
    Some((status, ready))
}

fn applied(status: &Value) -> u64 {
    status["last_applied"].as_u64().unwrap_or(0)
}

/// Waits until every one of `nodes` is `/ready` and one of them leads; returns the leader's
/// index in `nodes`.
pub(crate) async fn ready(
    http: &reqwest::Client,
    procs: &mut [&mut Proc],
    nodes: &[&Node],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let mut leader = None;
        let mut all_ready = true;
        for (i, node) in nodes.iter().enumerate() {
            match status(http, &node.url).await {
                Some((status, ready)) => {
                    all_ready &= ready;
                    if status["role"] == "leader" {
                        leader = Some(i);
                    }
                }
                None => all_ready = false,
            }
        }
        if let (true, Some(leader)) = (all_ready, leader) {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!("the nodes are not all ready, with a leader, after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

pub(crate) fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

pub async fn run(args: CatchupArgs) -> anyhow::Result<()> {
    let keep = args.keep;
    let mut args = args.generated;
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let out = dir.path().join("dc");
    let nodes = deployment(&args.coopr_bin, 1, 3, args.shards, &out)?;
    let http = reqwest::Client::new();
    let timeout = Duration::from_secs(args.timeout_s);

    // 1. A fresh DC: bootstrapped, the demo tenant and catalog seeded; then stopped.
    eprintln!("-- starting a fresh 3-node DC in {}", out.display());
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| n.start(&args.coopr_bin, &out))
        .collect::<anyhow::Result<_>>()?;
    let leader = {
        let mut running: Vec<&mut Proc> = procs.iter_mut().collect();
        let all: Vec<&Node> = nodes.iter().collect();
        ready(&http, &mut running, &all, Duration::from_secs(60)).await?
    };
    for mut p in procs.drain(..) {
        p.kill();
    }
    let follower = (leader + 1) % 3;
    let wiped = (leader + 2) % 3;

    // 2. The leader's DC log grown offline to N clusters, copied to the follower; the third
    //    node loses its disk.
    eprintln!(
        "-- adding {} clusters to {}'s DC log (offline)",
        args.clusters, nodes[leader].name
    );
    let grown = grow_offline(&nodes[leader].data_dir, args.clusters, args.shards, (1, 0))?;
    let copied = Instant::now();
    let follower_raft = nodes[follower].data_dir.join("raft");
    std::fs::remove_dir_all(&follower_raft)?;
    copy_dir(&nodes[leader].data_dir.join("raft"), &follower_raft)?;
    let copy_s = copied.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&nodes[wiped].data_dir)?;
    let raft_bytes = dir_bytes(&nodes[leader].data_dir.join("raft"));

    // 3. The two surviving nodes restart: each restores the clusters from its snapshot.
    eprintln!(
        "-- restarting {} and {}",
        nodes[leader].name, nodes[follower].name
    );
    let restarted = Instant::now();
    let mut survivors = [
        nodes[leader].start(&args.coopr_bin, &out)?,
        nodes[follower].start(&args.coopr_bin, &out)?,
    ];
    let new_leader = {
        let [a, b] = &mut survivors;
        ready(
            &http,
            &mut [a, b],
            &[&nodes[leader], &nodes[follower]],
            timeout,
        )
        .await?
    };
    let restart_s = restarted.elapsed().as_secs_f64();
    let leader_url = if new_leader == 0 {
        nodes[leader].url.clone()
    } else {
        nodes[follower].url.clone()
    };
    let survivor_resident: Vec<u64> = survivors
        .iter()
        .map(|p| p.resident().unwrap_or(0))
        .collect();
    let snapshots_before = list(&nodes[leader].data_dir.join("raft").join("snapshots"));

    // 4. The wiped node starts with nothing and catches up.
    let (target, term_before) = status(&http, &leader_url)
        .await
        .map(|(s, _)| (applied(&s), s["term"].as_u64().unwrap_or(0)))
        .context("the leader does not answer")?;
    eprintln!(
        "-- starting {} (wiped); the leader has applied {target}",
        nodes[wiped].name
    );
    let started = Instant::now();
    let mut rejoining = nodes[wiped].start(&args.coopr_bin, &out)?;
    let mut answered = None;
    let mut received = None;
    let mut applying = None;
    let wiped_snapshots = nodes[wiped].data_dir.join("raft").join("snapshots");
    let mut peak_leader = 0;
    let caught_up = loop {
        rejoining.check_alive()?;
        for p in survivors.iter_mut() {
            p.check_alive()?;
        }
        peak_leader = peak_leader.max(survivors[new_leader].resident().unwrap_or(0));
        if received.is_none() && dir_bytes(&wiped_snapshots) >= grown.snapshot_bytes {
            received = Some(started.elapsed());
        }
        if let Some((s, ready)) = status(&http, &nodes[wiped].url).await {
            answered.get_or_insert(started.elapsed());
            if applied(&s) > 0 {
                applying.get_or_insert(started.elapsed());
            }
            if ready && applied(&s) >= target {
                break started.elapsed();
            }
        }
        if started.elapsed() > timeout {
            bail!("{} did not catch up within {timeout:?}", nodes[wiped].name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let snapshots_after = list(&nodes[leader].data_dir.join("raft").join("snapshots"));
    // Elections while the node caught up: the term every node is at now, against the leader's
    // before.
    let mut terms = Vec::new();
    for node in &nodes {
        let term = status(&http, &node.url)
            .await
            .and_then(|(s, _)| s["term"].as_u64());
        terms.push(format!(
            "{} {}",
            node.name,
            term.map_or("-".into(), |t| t.to_string())
        ));
    }
    // Every node holds the clusters (a count from `/metrics`, computed from the state).
    for node in &nodes {
        let scraped = scrape(&http, &node.url).await.unwrap_or_default();
        let active = metric(&scraped, "coopr_clusters{status=\"active\"}");
        if active != u64::from(args.clusters) {
            bail!(
                "{} holds {active} ACTIVE clusters, not {}",
                node.name,
                args.clusters
            );
        }
    }
    let rejoined_resident = rejoining.resident().unwrap_or(0);
    let rejoined_peak = rejoining.peak_resident().unwrap_or(0);

    let n = args.clusters;
    println!("## coopr-bench catchup\n");
    println!(
        "1 DC of 3 `coopr server` nodes on this machine (loopback), {n} ACTIVE one-machine \
         clusters in {} shards, generated into the leader's state offline\n",
        args.shards
    );
    println!("| step | figure |");
    println!("| --- | ---: |");
    println!(
        "| offline: the DC log replayed / {n} clusters built through `State::apply` | {:.1} s / {:.1} s |",
        grown.replay_s, grown.build_s
    );
    println!(
        "| offline: snapshot written at index {} (file) | {:.1} s, {} |",
        grown.index,
        grown.snapshot_s,
        gb(grown.snapshot_bytes)
    );
    println!(
        "| offline: the DC-log directory copied to the follower | {copy_s:.1} s, {} |",
        gb(raft_bytes)
    );
    println!(
        "| two nodes restarted from their snapshots, until both are ready with a leader | {restart_s:.1} s |"
    );
    println!(
        "| their resident memory then | {} |",
        survivor_resident
            .iter()
            .map(|b| gb(*b))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "| wiped node: first answer to `/v2/status` | {} |",
        secs(answered)
    );
    println!(
        "| wiped node: the leader's snapshot file received (its bytes on the node's disk) | {} |",
        secs(received)
    );
    println!(
        "| wiped node: snapshot installed (last_applied > 0) | {} |",
        secs(applying)
    );
    let log =
        std::fs::read_to_string(out.join(format!("{}.log", nodes[wiped].name))).unwrap_or_default();
    let step = |message: &str, field: &str| {
        logged_ms(&log, message, field).map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1e3))
    };
    println!(
        "| wiped node's install, from its log: file made durable / checked / state restored | {} / {} / {} |",
        step("received snapshot durable and checked", "sync_ms"),
        step("received snapshot durable and checked", "check_ms"),
        step("installed snapshot", "restore_ms"),
    );
    println!(
        "| **wiped node: caught up** (last_applied ≥ the leader's {target} at its start, ready) | **{:.1} s** |",
        caught_up.as_secs_f64()
    );
    println!(
        "| wiped node's resident memory: then / at its peak | {} / {} |",
        gb(rejoined_resident),
        gb(rejoined_peak)
    );
    println!(
        "| leader's resident memory at its peak during the catch-up | {} |",
        gb(peak_leader)
    );
    println!(
        "| DC-log term: the leader's before / every node's after (a change: an election) | {term_before} / {} |",
        terms.join(", ")
    );
    println!(
        "| leader's snapshot files before / after | {} / {} |",
        snapshots_before.join(" "),
        snapshots_after.join(" ")
    );
    drop(rejoining);
    drop(survivors);
    if keep {
        eprintln!("-- kept {}", dir.keep().display());
    }
    Ok(())
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The `field=<ms>` of the last line of a node's `log` that holds `message` (the raft crate
/// logs the steps of a snapshot install so).
fn logged_ms(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|line| line.contains(message))?;
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(field)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}
