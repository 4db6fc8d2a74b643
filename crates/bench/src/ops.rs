//! Scenario `ops`: one coopr node on a real redb store (fsync on every batch), an in-process
//! provisioner backed by the fake cloud at zero latency, and REST clients on loopback.
//!
//! ```text
//!  clients --POST/DELETE /v2/clusters--> server --group commit--> redb (fsync)
//!     ^                                    ^  |
//!     | wait: Core::applied + read()       |  '-- tasks --> provisioner workers (fake cloud, 0 ms)
//!     '------------------------------------'
//! ```
//!
//! Completion (ACTIVE, TERMINATED) is observed in-process: the waiter sleeps on the server's
//! `Core::applied` notification and reads the state, so the figure is the moment the status was
//! applied, with no polling interval added and no polling load on the server. Requests all go
//! through HTTP.
//!
//! Phases, in order: (0) fsync floor on the same filesystem; (a) sequential create latency;
//! (b) cluster operations per second with concurrent clients; (c) durable metadata writes
//! (`POST /v2/clusters/{id}` with `expireTime`) with the provisioner stopped, so nothing else
//! writes or polls.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use coopr_provisioner::{FakeCloud, FakeCloudOptions, PluginRegistry, ProvisionerConfig};
use coopr_server::{App, ServerConfig};
use coopr_types::{ClusterId, ClusterStatus};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use crate::fsync;
use crate::stats::{cpu_percent, ms, process_cpu_time, rate, Summary};

#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// Directory under which the temporary data dir is made (default: the current directory, so
    /// the figures are for the real disk and not a tmpfs `/tmp`).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Provisioner workers (tasks run at once).
    #[arg(long, default_value_t = 16)]
    workers: u32,
    /// How long an idle worker waits before polling for a task again (ms). The server has no
    /// long poll, so this adds up to one interval whenever a task appears while workers sleep.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Sequential creates of a 1-machine `base` cluster for the latency figure.
    #[arg(long, default_value_t = 100)]
    base_samples: usize,
    /// Sequential creates of a 3-machine `lamp` cluster for the latency figure.
    #[arg(long, default_value_t = 30)]
    lamp_samples: usize,
    /// Concurrent clients in the operations-per-second phase.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Cluster operations in the operations-per-second phase (a create and a delete are two).
    #[arg(long, default_value_t = 1000)]
    ops: u64,
    /// Metadata writes per concurrency level.
    #[arg(long, default_value_t = 1000)]
    writes: u64,
    /// Concurrent clients of the second metadata-write level (the first is 1).
    #[arg(long, default_value_t = 16)]
    write_clients: usize,
    /// Rounds of the raw fsync floor and of the redb append floor.
    #[arg(long, default_value_t = 300)]
    fsync_rounds: usize,
    /// Log entries between snapshots (the server's default is 10,000; the writer takes them
    /// inline, so every snapshot pauses the write path).
    #[arg(long, default_value_t = ServerConfig::default().snapshot_every)]
    snapshot_every: u64,
    /// Longest wait for one cluster to reach a status (s).
    #[arg(long, default_value_t = 30)]
    wait_timeout_s: u64,
}

/// The user API as the demo tenant sees it.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
}

impl Api {
    /// As the demo tenant's user `demo`.
    pub fn new(url: String) -> anyhow::Result<Api> {
        Api::as_user(url, coopr_server::seed::DEMO_USER)
    }

    /// As a user of the demo tenant (`admin`, with the tenant admin's key, may write the
    /// tenant's catalog).
    pub fn as_user(url: String, user: &'static str) -> anyhow::Result<Api> {
        use coopr_server::seed::{DEMO_KEY, DEMO_TENANT_ADMIN_KEY};
        let key = if user == coopr_server::api::extract::ADMIN_USER {
            DEMO_TENANT_ADMIN_KEY
        } else {
            DEMO_KEY
        };
        let mut headers = HeaderMap::new();
        headers.insert("Coopr-UserID", HeaderValue::from_static(user));
        headers.insert(
            "Coopr-TenantID",
            HeaderValue::from_static(coopr_server::seed::DEMO_TENANT),
        );
        headers.insert("Coopr-ApiKey", HeaderValue::from_static(key));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        Ok(Api { http, url })
    }

    pub async fn check(
        response: reqwest::Response,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        bail!("{what}: HTTP {status}: {body}")
    }

    pub async fn create(
        &self,
        name: &str,
        template: &str,
        machines: u32,
    ) -> anyhow::Result<ClusterId> {
        let body = json!({"name": name, "clusterTemplate": template, "numMachines": machines});
        let response = self
            .http
            .post(format!("{}/v2/clusters", self.url))
            .json(&body)
            .send()
            .await?;
        let created: Value = Self::check(response, "create").await?.json().await?;
        let id = match created.get("id") {
            Some(Value::String(s)) => s.parse()?,
            Some(Value::Number(n)) => n.to_string().parse()?,
            _ => bail!("create: no id in {created}"),
        };
        Ok(id)
    }

    async fn delete(&self, id: ClusterId) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/v2/clusters/{id}", self.url))
            .send()
            .await?;
        Self::check(response, "delete").await?;
        Ok(())
    }

    async fn set_expire_time(&self, id: ClusterId, expire_time_ms: u64) -> anyhow::Result<()> {
        let body = json!({"expireTime": expire_time_ms});
        let response = self
            .http
            .post(format!("{}/v2/clusters/{id}", self.url))
            .json(&body)
            .send()
            .await?;
        Self::check(response, "set expireTime").await?;
        Ok(())
    }

    /// Log counters from `GET /metrics` and `GET /v2/status`.
    async fn log_counters(&self) -> anyhow::Result<LogCounters> {
        let status: Value = self
            .http
            .get(format!("{}/v2/status", self.url))
            .send()
            .await?
            .json()
            .await?;
        let applied_index = status
            .get("last_applied")
            .and_then(Value::as_u64)
            .context("no last_applied in /v2/status")?;
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        let metric = |name: &str| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(' '))
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(LogCounters {
            applied_index,
            batches: metric("coopr_log_batch_entries_count"),
            batch_entries: metric("coopr_log_batch_entries_sum"),
            append_seconds: metric("coopr_log_append_seconds_sum"),
        })
    }
}

/// Counters of the server's log at one moment.
#[derive(Debug, Clone, Copy)]
struct LogCounters {
    applied_index: u64,
    /// Durable appends (one fsync each).
    batches: f64,
    batch_entries: f64,
    append_seconds: f64,
}

/// What the log did between two readings.
struct LogDelta {
    entries: u64,
    /// Snapshots the writer took in between (one every `snapshot_every` entries, inline).
    snapshots: u64,
    batches: f64,
    entries_per_batch: f64,
    append_ms_mean: f64,
}

impl LogCounters {
    fn since(&self, before: &LogCounters, every: u64) -> LogDelta {
        let batches = self.batches - before.batches;
        LogDelta {
            entries: self.applied_index - before.applied_index,
            snapshots: self.applied_index / every - before.applied_index / every,
            batches,
            entries_per_batch: if batches > 0.0 {
                (self.batch_entries - before.batch_entries) / batches
            } else {
                0.0
            },
            append_ms_mean: if batches > 0.0 {
                (self.append_seconds - before.append_seconds) / batches * 1e3
            } else {
                0.0
            },
        }
    }
}

/// Waits until the cluster has `want`, watching the server's applied notifications.
pub async fn wait_status(
    app: &App,
    id: ClusterId,
    want: ClusterStatus,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = app.core.applied.notified();
        tokio::pin!(notified);
        // Register before reading, so an apply between the read and the await is not missed.
        notified.as_mut().enable();
        let status = app.core.read().cluster(id).map(|r| r.cluster.status);
        match status {
            Some(s) if s == want => return Ok(()),
            Some(s @ (ClusterStatus::Incomplete | ClusterStatus::Inconsistent)) => {
                bail!("cluster {id} became {s} while waiting for {want}")
            }
            Some(_) => {}
            None => bail!("cluster {id} does not exist"),
        }
        tokio::time::timeout_at(deadline, notified)
            .await
            .map_err(|_| {
                anyhow!("cluster {id} not {want} after {timeout:?} (status {status:?})")
            })?;
    }
}

pub async fn run(args: OpsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let filesystem = fsync::filesystem_of(dir.path());
    let timeout = Duration::from_secs(args.wait_timeout_s);

    eprintln!("-- fsync floor in {} ({filesystem})", dir.path().display());
    let floor_dir = dir.path().join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    let rounds = args.fsync_rounds.max(1);
    let (raw, redb) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            fsync::raw_fsync(&floor_dir, rounds)?,
            fsync::redb_append(&floor_dir, rounds)?,
        ))
    })
    .await??;
    let raw = Summary::of(&raw);
    let redb = Summary::of(&redb);

    eprintln!(
        "-- starting server and {} fake-cloud workers (poll {} ms)",
        args.workers, args.poll_ms
    );
    let config = ServerConfig {
        data_dir: dir.path().join("a1"),
        listen: "127.0.0.1:0".into(),
        demo: true,
        snapshot_every: args.snapshot_every,
        ..ServerConfig::default()
    };
    let server = coopr_server::start(config).await?;
    let app = server.app.clone();
    let cloud = FakeCloud::new(FakeCloudOptions {
        latency_ms: 0,
        ..FakeCloudOptions::default()
    });
    let mut provisioner = ProvisionerConfig::new(
        vec![server.url()],
        "bench-p1",
        PluginRegistry::with_builtins(cloud),
    );
    provisioner.capacity = args.workers;
    provisioner.api_key = Some(coopr_server::seed::DEMO_ADMIN_KEY.to_string());
    provisioner.poll_interval_ms = args.poll_ms.max(1);
    provisioner.heartbeat_interval_ms = 2_000;
    provisioner.validate()?;
    let (stop_provisioner, provisioner_shutdown) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(coopr_provisioner::run(provisioner, provisioner_shutdown));
    let api = Api::new(server.url())?;

    // Wait for the provisioner to register (its first take would otherwise be refused).
    let registered_by = Instant::now() + timeout;
    while app.core.read().local.provisioners.is_empty() {
        if Instant::now() > registered_by {
            bail!("the provisioner did not register within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // (a) Sequential create latency. Each cluster is deleted afterwards (not measured) so the
    // state does not grow between samples.
    let mut create_rows = Vec::new();
    for (template, machines, samples) in [
        ("base", 1u32, args.base_samples),
        ("lamp", 3, args.lamp_samples),
    ] {
        eprintln!("-- (a) {samples} sequential creates of {template} x{machines}");
        let mut to_active = Vec::with_capacity(samples);
        let mut request = Vec::with_capacity(samples);
        let mut entries = 0u64;
        for i in 0..samples.max(1) {
            let before = app.core.applied_index();
            let started = Instant::now();
            let id = api
                .create(&format!("lat-{template}-{i}"), template, machines)
                .await?;
            request.push(started.elapsed());
            wait_status(&app, id, ClusterStatus::Active, timeout).await?;
            to_active.push(started.elapsed());
            entries += app.core.applied_index() - before;
            api.delete(id).await?;
            wait_status(&app, id, ClusterStatus::Terminated, timeout).await?;
        }
        create_rows.push((
            template,
            machines,
            Summary::of(&request),
            Summary::of(&to_active),
            entries as f64 / to_active.len() as f64,
        ));
    }

    // (b) Cluster operations per second: clients loop create -> ACTIVE -> delete -> TERMINATED.
    eprintln!(
        "-- (b) {} cluster operations with {} clients",
        args.ops, args.clients
    );
    let before = api.log_counters().await?;
    let claimed = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..args.clients.max(1) {
        let (api, app, claimed, ops) = (api.clone(), app.clone(), claimed.clone(), args.ops);
        clients.push(tokio::spawn(async move {
            let mut creates = Vec::new();
            let mut deletes = Vec::new();
            let mut cycle = 0;
            // A cycle is two operations; claim both before starting it.
            while claimed.fetch_add(2, Ordering::Relaxed) + 2 <= ops {
                let t0 = Instant::now();
                let id = api
                    .create(&format!("ops-{client}-{cycle}"), "base", 1)
                    .await?;
                wait_status(&app, id, ClusterStatus::Active, timeout).await?;
                creates.push(t0.elapsed());
                let t1 = Instant::now();
                api.delete(id).await?;
                wait_status(&app, id, ClusterStatus::Terminated, timeout).await?;
                deletes.push(t1.elapsed());
                cycle += 1;
            }
            anyhow::Ok((creates, deletes))
        }));
    }
    let mut creates = Vec::new();
    let mut deletes = Vec::new();
    for client in clients {
        let (c, d) = client.await??;
        creates.extend(c);
        deletes.extend(d);
    }
    let ops_elapsed = started.elapsed();
    let ops_cpu = cpu_percent(cpu_before, process_cpu_time(), ops_elapsed);
    let ops_log = api
        .log_counters()
        .await?
        .since(&before, args.snapshot_every);
    let ops_done = (creates.len() + deletes.len()) as f64;
    if creates.is_empty() {
        bail!(
            "--ops {} is too small for one create+delete cycle",
            args.ops
        );
    }

    // (c) Durable metadata writes on one ACTIVE cluster, with the provisioner stopped.
    let target = api.create("meta", "base", 1).await?;
    wait_status(&app, target, ClusterStatus::Active, timeout).await?;
    let _ = stop_provisioner.send(true);
    workers.await??;
    let create_time = app
        .core
        .read()
        .cluster(target)
        .map(|r| r.cluster.create_time)
        .context("cluster gone")?;
    let mut write_rows = Vec::new();
    for clients in [1usize, args.write_clients.max(1)] {
        eprintln!(
            "-- (c) {} expireTime writes with {clients} clients",
            args.writes
        );
        let before = api.log_counters().await?;
        let next = Arc::new(AtomicU64::new(0));
        let cpu_before = process_cpu_time();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (api, next, writes) = (api.clone(), next.clone(), args.writes);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= writes {
                        break;
                    }
                    let t0 = Instant::now();
                    api.set_expire_time(target, create_time + 1 + i).await?;
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
        let cpu = cpu_percent(cpu_before, process_cpu_time(), elapsed);
        let log = api
            .log_counters()
            .await?
            .since(&before, args.snapshot_every);
        write_rows.push((clients, Summary::of(&latencies), elapsed, log, cpu));
    }
    server.shutdown().await;

    // The disk is shared; measure the floor again to see whether it moved during the run.
    let floor_dir = dir.path().join("floor-after");
    std::fs::create_dir_all(&floor_dir)?;
    let raw_after = Summary::of(
        &tokio::task::spawn_blocking(move || fsync::raw_fsync(&floor_dir, rounds)).await??,
    );

    // Report.
    println!("## coopr-bench ops\n");
    println!(
        "data dir on {filesystem}; {} fake-cloud workers at 0 ms, idle poll {} ms; loopback HTTP; {} CPUs\n",
        args.workers,
        args.poll_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("### Durable write floor (same filesystem)\n");
    println!("| what | n | p50 ms | p99 ms | per s (1 writer) |");
    println!("|---|---:|---:|---:|---:|");
    for (what, s) in [
        ("raw write 100 B + sync_data (before)", raw),
        ("redb append, 1 entry of 100 B (before)", redb),
        ("raw write 100 B + sync_data (after)", raw_after),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} |",
            s.samples,
            ms(s.p50),
            ms(s.p99),
            rate(s.samples as f64, s.total)
        );
    }
    println!("\n### (a) Create latency, sequential: `POST /v2/clusters` → ACTIVE\n");
    println!("| cluster | n | request p50 ms | → ACTIVE p50 ms | p99 ms | max ms | log entries per create | p50 / fsync p50 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (template, machines, request, to_active, entries) in &create_rows {
        println!(
            "| {template} x{machines} | {} | {} | {} | {} | {} | {entries:.1} | {:.1} |",
            to_active.samples,
            ms(request.p50),
            ms(to_active.p50),
            ms(to_active.p99),
            ms(to_active.max),
            to_active.p50.as_secs_f64() / raw.p50.as_secs_f64(),
        );
    }
    let creates = Summary::of(&creates);
    let deletes = Summary::of(&deletes);
    println!("\n### (b) Cluster operations, {} clients looping create(base x1) → ACTIVE → delete → TERMINATED\n", args.clients);
    println!("| operations | seconds | operations/s | log entries/s | fsync batches/s | entries per batch | append ms (mean) | snapshots | CPU (% of a core) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {ops_done:.0} | {:.2} | {} | {} | {} | {:.1} | {:.3} | {} | {ops_cpu} |",
        ops_elapsed.as_secs_f64(),
        rate(ops_done, ops_elapsed),
        rate(ops_log.entries as f64, ops_elapsed),
        rate(ops_log.batches, ops_elapsed),
        ops_log.entries_per_batch,
        ops_log.append_ms_mean,
        ops_log.snapshots,
    );
    println!("\n| under load | n | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (what, s) in [
        ("create → ACTIVE", creates),
        ("delete → TERMINATED", deletes),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} |",
            s.samples,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    println!("\n### (c) Metadata writes: `POST /v2/clusters/{{id}}` {{\"expireTime\"}} (provisioner stopped)\n");
    println!("| clients | writes | p50 ms | p99 ms | writes/s | fsync batches/s | entries per batch | append ms (mean) | snapshots | p50 / fsync p50 | CPU (% of a core) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (clients, s, elapsed, log, cpu) in &write_rows {
        println!(
            "| {clients} | {} | {} | {} | {} | {} | {:.1} | {:.3} | {} | {:.2} | {cpu} |",
            s.samples,
            ms(s.p50),
            ms(s.p99),
            rate(s.samples as f64, *elapsed),
            rate(log.batches, *elapsed),
            log.entries_per_batch,
            log.append_ms_mean,
            log.snapshots,
            s.p50.as_secs_f64() / raw.p50.as_secs_f64(),
        );
    }
    println!(
        "\nfsync floor: raw p50 {} ms (≈ {} durable writes/s for one writer); redb append p50 {} ms.",
        ms(raw.p50),
        rate(1.0, raw.p50),
        ms(redb.p50),
    );
    Ok(())
}
