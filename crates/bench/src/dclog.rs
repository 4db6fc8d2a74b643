//! Scenario `dclog`: durable write latency and throughput of the DC log (Raft) through the REST
//! API, for a 1-node and a 3-node DC running as real `coopr server` processes, next to a
//! 3-member etcd cluster on the same machine doing puts of a similar size, both over HTTP+JSON
//! on loopback.
//!
//! ```text
//!  coopr-bench --POST /v2/clusters/{id} {"expireTime"}--> coopr leader --AppendEntries--> followers
//!      |              (or to a follower: forwarded)          | redb fsync                | redb fsync
//!      |
//!      '--POST /v3/kv/put {key, value} (base64)--> etcd leader (JSON gateway -> gRPC) --> members
//!                                                    | WAL fsync                          | WAL fsync
//! ```
//!
//! Builds nothing: it runs the release `coopr` binary (`cargo build --release -p coopr` first)
//! and `etcd` (Debian: `apt-get install -y etcd-server`); it installs nothing. Every process is
//! killed when the scenario ends (also on error: the guards kill in `Drop`). Ports are probed.
//!
//! Each system is measured with one sequential client (`--writes` writes) and with
//! `--clients` concurrent clients for `--concurrent-secs`, first at the leader and then at a
//! follower (coopr forwards the HTTP request to the leader's API; etcd forwards the proposal
//! inside Raft).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coopr_state::{encode_entry, Command as StateCommand, Entry};
use coopr_types::ClusterId;
use serde_json::{json, Value};

use crate::breakdown;
use crate::fsync;
use crate::ops::Api;
use crate::stats::{ms, rate, Summary};

#[derive(clap::Args, Debug)]
pub struct DcLogArgs {
    /// The release `coopr` binary (build it first: `cargo build --release -p coopr`).
    #[arg(long, default_value = "target/release/coopr")]
    coopr_bin: PathBuf,
    /// The etcd server binary (Debian: `apt-get install -y etcd-server`).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Directory under which the temporary data dirs are made (default: the current directory,
    /// so the figures are for the real disk and not a tmpfs `/tmp`).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Writes of the sequential (one client) phase.
    #[arg(long, default_value_t = 2000)]
    writes: u64,
    /// Clients of the concurrent phase.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Duration of the concurrent phase (s).
    #[arg(long, default_value_t = 5.0)]
    concurrent_secs: f64,
    /// Fake-cloud workers in each coopr server (demo mode); they only poll during the
    /// measurement (an idle poll costs no log write).
    #[arg(long, default_value_t = 1)]
    demo_workers: u32,
    /// Rounds of the fsync floor measurements.
    #[arg(long, default_value_t = 300)]
    fsync_rounds: usize,
    /// Skip the follower (forwarded) measurements.
    #[arg(long)]
    no_followers: bool,
    /// Skip etcd (coopr only).
    #[arg(long)]
    no_etcd: bool,
    /// Skip the 1-node DC.
    #[arg(long)]
    no_single: bool,
    /// Directory the PNG charts are written to (made if missing): `dclog-sequential-cdf.png`,
    /// the latency CDF of the sequential writes at the leader of the 3-node DC and of etcd.
    #[arg(long, default_value = ".")]
    plots: PathBuf,
}

/// Unmeasured writes before each phase (connections, caches).
const WARMUP_WRITES: u64 = 50;

/// A child process killed (SIGKILL) and reaped when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// `kill -9` and reap (a DC failure; the process can be started again with a new `Proc`).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails (with the end of its log) if the process already exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of its log {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// The process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now (`VmRSS`), in bytes.
    pub(crate) fn resident(&self) -> Option<u64> {
        crate::stats::memory_of(&self.child.id().to_string(), "VmRSS:")
    }

    /// Resident memory that is the process's own (`RssAnon`: heap and stacks, not the pages of
    /// its binary and libraries, which grow as more of the code runs).
    pub(crate) fn resident_anon(&self) -> Option<u64> {
        crate::stats::memory_of(&self.child.id().to_string(), "RssAnon:")
    }

    /// Peak resident memory so far (`VmHWM`).
    pub(crate) fn peak_resident(&self) -> Option<u64> {
        crate::stats::memory_of(&self.child.id().to_string(), "VmHWM:")
    }

    /// CPU time (user + system) used so far.
    fn cpu_time(&self) -> Option<Duration> {
        crate::stats::cpu_time_of(&self.child.id().to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn group_cpu(procs: &[Proc]) -> Option<Duration> {
    procs.iter().map(Proc::cpu_time).sum()
}

/// A base port P such that P..P+n and P+5..P+5+n are free on 127.0.0.1 (init-cluster's layout
/// for one DC).
fn free_coopr_base(nodes: u16) -> anyhow::Result<u16> {
    free_coopr_base_dcs(1, nodes)
}

/// A base port P such that, for every DC d < `dcs`, P+10d..P+10d+n and P+10d+5..P+10d+5+n are
/// free on 127.0.0.1 (init-cluster's layout).
pub(crate) fn free_coopr_base_dcs(dcs: u16, nodes: u16) -> anyhow::Result<u16> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        // Below Linux's ephemeral ports (32768 and up), which listeners on port 0 (the WAN
        // benchmark's proxies) and outgoing connections take.
        let base = 20_000 + (seed >> 8) % 12_000;
        let base = u16::try_from(base - base % 10)?;
        let ports: Vec<u16> = (0..dcs)
            .flat_map(|d| (0..nodes).flat_map(move |i| [base + 10 * d + i, base + 10 * d + 5 + i]))
            .collect();
        let all_free = ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("found no free port range on 127.0.0.1")
}

/// `n` free ports picked by the kernel (bound at once, then released).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

/// Standard base64 with padding (etcd's JSON gateway takes bytes fields as base64).
pub(crate) fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What one measured write does.
#[derive(Clone)]
pub(crate) enum Target {
    /// `POST {url}/v2/clusters/{id}` `{"expireTime": base + i}`.
    Coopr {
        api: Api,
        url: String,
        id: ClusterId,
        base: u64,
    },
    /// `POST {url}/v3/kv/put` `{"key", "value"}`, the value `value_len` bytes holding `i`.
    Etcd {
        http: reqwest::Client,
        url: String,
        key: String,
        value_len: usize,
    },
}

impl Target {
    pub(crate) async fn write(&self, i: u64) -> anyhow::Result<()> {
        let response = match self {
            Target::Coopr { api, url, id, base } => {
                api.http
                    .post(format!("{url}/v2/clusters/{id}"))
                    .json(&json!({"expireTime": base + i}))
                    .send()
                    .await?
            }
            Target::Etcd {
                http,
                url,
                key,
                value_len,
            } => {
                let mut value = format!("{i:020}").into_bytes();
                value.resize(*value_len, b'x');
                http.post(format!("{url}/v3/kv/put"))
                    .json(&json!({"key": key, "value": base64(&value)}))
                    .send()
                    .await?
            }
        };
        let status = response.status();
        // Read the whole answer, so the connection is reused.
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

/// One measured phase.
struct Row {
    system: String,
    mode: String,
    latencies: Summary,
    /// Every measured write's latency, in the order the clients finished them.
    samples: Vec<Duration>,
    elapsed: Duration,
    server_cpu: Option<Duration>,
    /// Raw fsync p50 measured just before the phase (the shared disk's speed moves).
    floor: Duration,
    /// Where a sequential write's time went (coopr: its nodes' stage metrics; empty for etcd).
    stages: Vec<breakdown::Stage>,
}

/// A quick raw fsync p50 (50 rounds) in `dir`, to show the disk's speed at that moment.
async fn floor_now(dir: &Path) -> anyhow::Result<Duration> {
    let dir = dir.join("floor-now");
    std::fs::create_dir_all(&dir)?;
    let samples = tokio::task::spawn_blocking(move || fsync::raw_fsync(&dir, 50)).await??;
    Ok(Summary::of(&samples).p50)
}

/// What [`measure`] saw.
pub(crate) struct Measured {
    /// Percentiles of `samples`.
    pub(crate) summary: Summary,
    /// Every measured write's latency (each client's in order, one client after another).
    pub(crate) samples: Vec<Duration>,
    /// How long the measured writes took in all.
    pub(crate) elapsed: Duration,
    /// CPU time the servers used meanwhile, where it can be read.
    pub(crate) server_cpu: Option<Duration>,
}

/// Runs `clients` writers: a count (`Some(n)`, shared) or for `duration`.
pub(crate) async fn measure(
    target: &Target,
    procs: &[Proc],
    counter: &Arc<AtomicU64>,
    clients: usize,
    count: Option<u64>,
    duration: Duration,
) -> anyhow::Result<Measured> {
    for _ in 0..WARMUP_WRITES {
        target
            .write(counter.fetch_add(1, Ordering::Relaxed))
            .await?;
    }
    let cpu_before = group_cpu(procs);
    let started = Instant::now();
    let deadline = started + duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (target, counter, done) = (target.clone(), counter.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                match count {
                    Some(n) if done.fetch_add(1, Ordering::Relaxed) >= n => break,
                    None if Instant::now() >= deadline => break,
                    _ => {}
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                target.write(i).await?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, group_cpu(procs)) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    Ok(Measured {
        summary: Summary::of(&latencies),
        samples: latencies,
        elapsed,
        server_cpu: cpu,
    })
}

/// Sequential then concurrent phases against one target; appends two rows. `nodes`: every
/// node's URL and the index of the DC-log leader among them, whose stage metrics are read
/// around the sequential phase (none for etcd).
#[allow(clippy::too_many_arguments)]
async fn measure_both(
    args: &DcLogArgs,
    dir: &Path,
    rows: &mut Vec<Row>,
    system: &str,
    at: &str,
    target: &Target,
    procs: &[Proc],
    counter: &Arc<AtomicU64>,
    nodes: Option<(&[String], usize)>,
) -> anyhow::Result<()> {
    eprintln!("-- {system}: {} sequential writes at the {at}", args.writes);
    let floor = floor_now(dir).await?;
    let http = reqwest::Client::new();
    let before = match nodes {
        Some((urls, _)) => breakdown::scrape_all(&http, urls).await,
        None => Vec::new(),
    };
    let sequential = measure(target, procs, counter, 1, Some(args.writes), Duration::ZERO).await?;
    let stages = match nodes {
        Some((urls, leader)) => {
            let after = breakdown::scrape_all(&http, urls).await;
            // The phase's writes and its warm-up writes.
            breakdown::stages(&before, &after, leader, args.writes + WARMUP_WRITES)
        }
        None => Vec::new(),
    };
    rows.push(Row {
        system: system.into(),
        mode: format!("sequential, at the {at}"),
        latencies: sequential.summary,
        samples: sequential.samples,
        elapsed: sequential.elapsed,
        server_cpu: sequential.server_cpu,
        floor,
        stages,
    });
    let floor = floor_now(dir).await?;
    eprintln!(
        "-- {system}: {} clients for {} s at the {at}",
        args.clients, args.concurrent_secs
    );
    let concurrent = measure(
        target,
        procs,
        counter,
        args.clients,
        None,
        Duration::from_secs_f64(args.concurrent_secs),
    )
    .await?;
    rows.push(Row {
        system: system.into(),
        mode: format!("{} clients, at the {at}", args.clients),
        latencies: concurrent.summary,
        samples: concurrent.samples,
        elapsed: concurrent.elapsed,
        server_cpu: concurrent.server_cpu,
        floor,
        stages: Vec::new(),
    });
    Ok(())
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let response = http.get(url).timeout(Duration::from_secs(2)).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Starts a DC of `nodes` coopr servers; returns the processes and every node's API URL.
/// The DC's node processes, their URLs, and the fake cloud their demo workers share.
async fn start_coopr_dc(
    args: &DcLogArgs,
    dir: &Path,
    nodes: u16,
) -> anyhow::Result<(Vec<Proc>, Vec<String>, Proc)> {
    let base = free_coopr_base(nodes)?;
    let out = dir.join(format!("coopr-{nodes}"));
    init_cluster(&args.coopr_bin, 1, nodes, base, &out)?;
    let cloud = crate::wan::start_fake_cloud(&args.coopr_bin, &out, &out.join("a1.toml"), 0)?;
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for i in 0..nodes {
        let node = format!("a{}", i + 1);
        let config = out.join(format!("{node}.toml"));
        set_demo_workers(&config, args.demo_workers)?;
        let mut command = Command::new(&args.coopr_bin);
        command
            .arg("server")
            .arg("--config")
            .arg(&config)
            .current_dir(&out);
        procs.push(Proc::spawn(
            &format!("coopr {node}"),
            command,
            out.join(format!("{node}.log")),
        )?);
        urls.push(format!("http://127.0.0.1:{}", base + i));
    }
    Ok((procs, urls, cloud))
}

/// Writes a demo deployment of `dcs` DCs of `nodes` nodes each into `out` with `coopr
/// init-cluster --demo`, its ports from `base` on.
pub(crate) fn init_cluster(
    coopr_bin: &Path,
    dcs: u16,
    nodes: u16,
    base: u16,
    out: &Path,
) -> anyhow::Result<()> {
    let init = Command::new(coopr_bin)
        .arg("init-cluster")
        .arg("--dcs")
        .arg(dcs.to_string())
        .arg("--nodes-per-dc")
        .arg(nodes.to_string())
        .arg("--base-port")
        .arg(base.to_string())
        .arg("--out")
        .arg(out)
        .arg("--demo")
        .output()
        .with_context(|| format!("cannot run {}", coopr_bin.display()))?;
    if !init.status.success() {
        bail!(
            "coopr init-cluster failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    Ok(())
}

/// Sets `demo_workers` in a config written by `coopr init-cluster --demo`.
pub(crate) fn set_demo_workers(config: &Path, workers: u32) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let mut patched = false;
    let text: String = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("demo_workers") {
                patched = true;
                format!("demo_workers = {workers}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if !patched {
        bail!("{} has no demo_workers line", config.display());
    }
    std::fs::write(config, text + "\n")?;
    Ok(())
}

/// Waits until every node answers `/ready` with 200; returns (leader URL, a follower URL).
pub(crate) async fn coopr_roles(
    procs: &mut [Proc],
    urls: &[String],
) -> anyhow::Result<(String, Option<String>)> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let mut leader = None;
        let mut follower = None;
        let mut ready = 0;
        for url in urls {
            if let Ok((200, _)) = get_json(&http, &format!("{url}/ready")).await {
                ready += 1;
            }
            if let Ok((200, status)) = get_json(&http, &format!("{url}/v2/status")).await {
                match status.get("role").and_then(Value::as_str) {
                    Some("leader") => leader = Some(url.clone()),
                    Some("follower") => follower = Some(url.clone()),
                    _ => {}
                }
            }
        }
        if ready == urls.len() {
            if let Some(leader) = leader {
                if urls.len() == 1 || follower.is_some() {
                    return Ok((leader, follower));
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the coopr DC {urls:?} has no leader (or not every node is ready) after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a `base` x1 cluster on the leader (retrying while the new leader seeds the demo
/// tenant) and waits until it is ACTIVE; returns its id and createTime.
pub(crate) async fn active_cluster(api: &Api) -> anyhow::Result<(ClusterId, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        match api.create("dclog-bench", "base", 1).await {
            Ok(id) => break id,
            Err(e) if Instant::now() < deadline => {
                eprintln!("   create not accepted yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    loop {
        let (_, cluster) = get_json(&api.http, &format!("{}/v2/clusters/{id}", api.url)).await?;
        let status = cluster.get("status").and_then(Value::as_str).unwrap_or("");
        if status.eq_ignore_ascii_case("active") {
            let create_time = cluster
                .get("createTime")
                .and_then(Value::as_u64)
                .context("no createTime")?;
            return Ok((id, create_time));
        }
        if Instant::now() > deadline {
            bail!("cluster {id} not ACTIVE after 30 s (status {status:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coopr DC of `nodes`: leader (and follower) phases.
async fn run_coopr(
    args: &DcLogArgs,
    dir: &Path,
    nodes: u16,
    rows: &mut Vec<Row>,
) -> anyhow::Result<usize> {
    eprintln!("-- starting a {nodes}-node coopr DC");
    // The fake cloud lives as long as the DC (its CPU is not the servers').
    let (mut procs, urls, _cloud) = start_coopr_dc(args, dir, nodes).await?;
    let (leader, follower) = coopr_roles(&mut procs, &urls).await?;
    let api = Api::new(leader.clone())?;
    let (id, create_time) = active_cluster(&api).await?;
    // The size of what one write puts in the log (the state machine's entry; openraft stores
    // it hex-encoded inside its own JSON entry, and sends it so in AppendEntries).
    let entry_len = encode_entry(&Entry {
        now_ms: create_time,
        idempotency_key: None,
        fence: None,
        command: StateCommand::SetExpireTime {
            cluster: id,
            expire_time: create_time + 1_000_000,
        },
    })
    .len();
    let counter = Arc::new(AtomicU64::new(1));
    let system = coopr_system(nodes);
    let leader_at = urls.iter().position(|u| *u == leader).unwrap_or(0);
    let nodes = Some((urls.as_slice(), leader_at));
    let target = Target::Coopr {
        api: api.clone(),
        url: leader,
        id,
        base: create_time,
    };
    measure_both(
        args, dir, rows, &system, "leader", &target, &procs, &counter, nodes,
    )
    .await?;
    if let (Some(follower), false) = (follower, args.no_followers) {
        let target = Target::Coopr {
            api: api.clone(),
            url: follower,
            id,
            base: create_time,
        };
        measure_both(
            args, dir, rows, &system, "follower", &target, &procs, &counter, nodes,
        )
        .await?;
    }
    for p in procs.iter_mut() {
        p.check_alive()?;
    }
    drop(procs);
    Ok(entry_len)
}

/// The first line of `etcd --version`; `None` when it cannot run.
pub(crate) fn etcd_version(etcd_bin: &Path) -> Option<String> {
    let output = Command::new(etcd_bin).arg("--version").output().ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

/// A running 3-member etcd cluster (killed on drop): its processes, the delay proxies in front
/// of its members' peer ports (if any), and the client URLs of its leader and of a follower.
pub(crate) struct Etcd {
    pub(crate) procs: Vec<Proc>,
    _proxies: Vec<coopr_testkit::DelayProxy>,
    pub(crate) leader: String,
    pub(crate) follower: String,
}

/// Starts a 3-member etcd cluster on loopback, data under `dir/etcd`, and waits until every
/// member is healthy and one leads. With `delay`, each member's advertised peer URL is a
/// [`coopr_testkit::DelayProxy`] to its peer port, so every message between two members takes
/// that long one way (members in three DCs); clients reach each member directly.
pub(crate) async fn start_etcd(
    etcd_bin: &Path,
    dir: &Path,
    delay: Option<Duration>,
) -> anyhow::Result<Etcd> {
    let ports = free_ports(6)?;
    let (client, peer) = ports.split_at(3);
    let mut proxies = Vec::new();
    let mut advertised = Vec::new();
    for port in peer {
        let url = match delay {
            Some(delay) => {
                let target = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
                let proxy = coopr_testkit::DelayProxy::start(target, delay).await?;
                let url = format!("http://{}", proxy.addr());
                proxies.push(proxy);
                url
            }
            None => format!("http://127.0.0.1:{port}"),
        };
        advertised.push(url);
    }
    let initial_cluster = (0..3)
        .map(|i| format!("m{}={}", i + 1, advertised[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for i in 0..3 {
        let name = format!("m{}", i + 1);
        let client_url = format!("http://127.0.0.1:{}", client[i]);
        let peer_url = format!("http://127.0.0.1:{}", peer[i]);
        let data = dir.join("etcd").join(&name);
        std::fs::create_dir_all(&data)?;
        let mut command = Command::new(etcd_bin);
        command
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&advertised[i])
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg("coopr-bench")
            .arg("--initial-cluster-state")
            .arg("new")
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(delay) = delay {
            // etcd's guidance for a WAN: a heartbeat about the round trip, elections 10x that.
            let rtt = (2 * delay.as_millis() as u64).max(100);
            command
                .arg("--heartbeat-interval")
                .arg(rtt.to_string())
                .arg("--election-timeout")
                .arg((10 * rtt).to_string());
        }
        procs.push(Proc::spawn(
            &format!("etcd {name}"),
            command,
            dir.join("etcd").join(format!("{name}.log")),
        )?);
        urls.push(client_url);
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, follower) = loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let mut leader = None;
        let mut follower = None;
        let mut healthy = 0;
        for url in &urls {
            if let Ok((200, health)) = get_json(&http, &format!("{url}/health")).await {
                if health.get("health").and_then(Value::as_str) == Some("true") {
                    healthy += 1;
                }
            }
            let status: Option<Value> = async {
                http.post(format!("{url}/v3/maintenance/status"))
                    .json(&json!({}))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()
            }
            .await;
            if let Some(status) = status {
                let me = status.pointer("/header/member_id").and_then(Value::as_str);
                let lead = status.get("leader").and_then(Value::as_str);
                match (me, lead) {
                    (Some(me), Some(lead)) if me == lead => leader = Some(url.clone()),
                    (Some(_), Some(_)) => follower = Some(url.clone()),
                    _ => {}
                }
            }
        }
        if let (3, Some(l), Some(f)) = (healthy, &leader, &follower) {
            break (l.clone(), f.clone());
        }
        if Instant::now() > deadline {
            bail!("etcd cluster not healthy with a leader after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(Etcd {
        procs,
        _proxies: proxies,
        leader,
        follower,
    })
}

/// A 3-member etcd cluster on loopback: leader (and follower) phases.
async fn run_etcd(
    args: &DcLogArgs,
    dir: &Path,
    value_len: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<String> {
    let version = etcd_version(&args.etcd_bin).unwrap_or_default();
    eprintln!("-- starting a 3-member etcd cluster ({version})");
    let etcd = start_etcd(&args.etcd_bin, dir, None).await?;
    let (mut procs, leader, follower) = (etcd.procs, etcd.leader, etcd.follower);
    let http = reqwest::Client::new();
    let counter = Arc::new(AtomicU64::new(1));
    let system = ETCD_3.to_string();
    let key = base64(b"coopr-bench/cluster/expire");
    let target = Target::Etcd {
        http: http.clone(),
        url: leader,
        key: key.clone(),
        value_len,
    };
    measure_both(
        args, dir, rows, &system, "leader", &target, &procs, &counter, None,
    )
    .await?;
    if !args.no_followers {
        let target = Target::Etcd {
            http: http.clone(),
            url: follower,
            key,
            value_len,
        };
        measure_both(
            args, dir, rows, &system, "follower", &target, &procs, &counter, None,
        )
        .await?;
    }
    for p in procs.iter_mut() {
        p.check_alive()?;
    }
    drop(procs);
    Ok(version)
}

/// The release `coopr` binary as an absolute path (the servers run in their deployment
/// folders), or an error saying how to build it.
pub(crate) fn coopr_bin(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p coopr` (or pass --coopr-bin)",
            path.display()
        );
    }
    Ok(std::fs::canonicalize(path)?)
}

pub async fn run(mut args: DcLogArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    args.coopr_bin = coopr_bin(&args.coopr_bin)?;
    if !args.no_etcd && etcd_version(&args.etcd_bin).is_none() {
        bail!(
            "cannot run `{}`: install etcd first (Debian/Ubuntu: `apt-get install -y etcd-server`), \
             pass --etcd-bin, or skip it with --no-etcd",
            args.etcd_bin.display()
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    std::fs::create_dir_all(&args.plots)
        .with_context(|| format!("cannot make the charts' directory {}", args.plots.display()))?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let filesystem = fsync::filesystem_of(dir.path());
    let rounds = args.fsync_rounds.max(1);

    eprintln!("-- fsync floor in {} ({filesystem})", dir.path().display());
    let floor = |name: &'static str| {
        let floor_dir = dir.path().join(name);
        async move {
            std::fs::create_dir_all(&floor_dir)?;
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                Ok((
                    Summary::of(&fsync::raw_fsync(&floor_dir, rounds)?),
                    Summary::of(&fsync::wal_append(&floor_dir, rounds)?),
                    Summary::of(&fsync::redb_append(&floor_dir, rounds)?),
                ))
            })
            .await?
        }
    };
    let (raw, wal, redb) = floor("floor").await?;

    let mut rows = Vec::new();
    let mut entry_len = 0;
    if !args.no_single {
        entry_len = run_coopr(&args, dir.path(), 1, &mut rows).await?;
    }
    entry_len = entry_len.max(run_coopr(&args, dir.path(), 3, &mut rows).await?);
    let body_len = json!({"expireTime": 1_764_000_000_000u64 + args.writes})
        .to_string()
        .len();
    let etcd_version = if args.no_etcd {
        None
    } else {
        Some(run_etcd(&args, dir.path(), entry_len.max(body_len), &mut rows).await?)
    };
    let (raw_after, wal_after, redb_after) = floor("floor-after").await?;

    println!("## coopr-bench dclog\n");
    println!(
        "data dirs on {filesystem}; loopback HTTP+JSON; {} CPUs; coopr `{}` (demo mode, {} fake-cloud worker(s) per node, idle); {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.coopr_bin.display(),
        args.demo_workers,
        etcd_version.as_deref().unwrap_or("etcd skipped"),
    );
    println!(
        "coopr write: `POST /v2/clusters/{{id}}` body {body_len} B; log entry {entry_len} B (state-machine JSON; \
         openraft stores and replicates it hex-encoded in its own JSON entry). \
         etcd put: `POST /v3/kv/put`, key 26 B, value {} B (base64 in the JSON body).\n",
        entry_len.max(body_len)
    );
    println!("| system | mode | writes | p50 ms | p99 ms | ops/s | servers' CPU (% of a core) | fsync p50 ms just before |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let cpu = row.server_cpu.map_or("n/a".into(), |c| {
            format!(
                "{:.0}%",
                c.as_secs_f64() / row.elapsed.as_secs_f64() * 100.0
            )
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {cpu} | {} |",
            row.system,
            row.mode,
            row.latencies.samples,
            ms(row.latencies.p50),
            ms(row.latencies.p99),
            rate(row.latencies.samples as f64, row.elapsed),
            ms(row.floor),
        );
    }
    for row in rows.iter().filter(|r| !r.stages.is_empty()) {
        println!(
            "\n### Where a write's time goes: {}, {} (means; client latency mean {} ms)\n",
            row.system,
            row.mode,
            ms(row.latencies.mean()),
        );
        println!("| stage | mean ms | per write |");
        println!("|---|---:|---:|");
        for stage in &row.stages {
            println!(
                "| {} | {} | {:.2} |",
                stage.what,
                stage.mean.map_or("-".into(), ms),
                stage.per_write
            );
        }
    }
    println!("\n### fsync floor (same filesystem)\n");
    println!("| what | n | p50 ms | p99 ms | per s (1 writer) |");
    println!("|---|---:|---:|---:|---:|");
    for (what, s) in [
        ("raw write 100 B + sync_data (before)", raw),
        ("WAL append, 1 entry of 100 B (before)", wal),
        ("redb append, 1 entry of 100 B (before)", redb),
        ("raw write 100 B + sync_data (after)", raw_after),
        ("WAL append, 1 entry of 100 B (after)", wal_after),
        ("redb append, 1 entry of 100 B (after)", redb_after),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} |",
            s.samples,
            ms(s.p50),
            ms(s.p99),
            rate(s.samples as f64, s.total)
        );
    }
    let chart = plot_sequential(&args, &rows)?;
    println!("\nChart (PNG): `{}`", chart.display());
    eprintln!("-- done in {:.1} s", total.elapsed().as_secs_f64());
    if total.elapsed() > Duration::from_secs(90) {
        eprintln!("   (longer than the 90 s budget: lower --writes or --concurrent-secs)");
    }
    Ok(())
}

/// The system column of a coopr DC's rows.
fn coopr_system(nodes: u16) -> String {
    format!("coopr, {nodes}-node DC")
}

/// The system column of etcd's rows.
const ETCD_3: &str = "etcd, 3 members";

/// The mode column of a sequential phase at the leader (as [`measure_both`] writes it).
const SEQUENTIAL_AT_LEADER: &str = "sequential, at the leader";

/// Draws the latency CDF of the sequential writes at the leader, the 3-node coopr DC's next to
/// etcd's (each only if measured), into `dclog-sequential-cdf.png` under `--plots`; its path.
fn plot_sequential(args: &DcLogArgs, rows: &[Row]) -> anyhow::Result<PathBuf> {
    let samples = |system: &str| {
        rows.iter()
            .find(|r| r.system == system && r.mode == SEQUENTIAL_AT_LEADER)
            .map(|r| r.samples.as_slice())
    };
    let coopr_3 = coopr_system(3);
    let coopr = format!("{coopr_3}, {} writes at the leader", args.writes);
    let etcd = format!("{ETCD_3}, {} writes at the leader", args.writes);
    let series: Vec<(&str, &[Duration])> = [
        (coopr.as_str(), samples(&coopr_3)),
        (etcd.as_str(), samples(ETCD_3)),
    ]
    .into_iter()
    .filter_map(|(name, samples)| Some((name, samples?)))
    .collect();
    let path = args.plots.join("dclog-sequential-cdf.png");
    crate::plot::cdf_chart(
        &path,
        "Sequential durable writes on loopback: latency CDF (dclog)",
        &series,
    )?;
    Ok(path)
}
