//! Black-box test of a deployment behind real HAProxy (Debian's `haproxy`), run with the
//! `haproxy.cfg` that `coopr init-cluster` writes: three DCs of one node each, clients that
//! know only HAProxy's address, and a whole DC killed with `kill -9` under their load.
//!
//! Skipped (and passing, with a line saying so) where `haproxy` is not on PATH; `.ci/run`
//! installs it.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get_json, random_u64, run_serially, Deployment, Process, ADMIN, DEMO_USER};
use reqwest::Method;
use serde_json::{json, Value};

/// Shards of the deployment (a few per DC, as in `dcs.rs`).
const SHARDS: u32 = 6;
/// Concurrent clients, each sending one logical request at a time.
const CLIENTS: usize = 3;
/// Longest one logical request is retried before the test fails.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// Longest a single attempt waits for an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each client's pause between two logical requests.
const CLIENT_PAUSE: Duration = Duration::from_millis(50);
/// How long the load goes on after a's shards have new owners (at least [`AFTER_FAILOVER`]
/// requests, and this long).
const LOAD_AFTER_FAILOVER: Duration = Duration::from_secs(3);
/// Requests acknowledged through HAProxy before the kill, and after the failover.
const BEFORE_KILL: usize = 30;
const AFTER_FAILOVER: usize = 30;

/// Whether `program` is an executable file in one of PATH's directories.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let path = dir.join(program);
            path.is_file()
                && std::fs::metadata(&path)
                    .map(|m| {
                        use std::os::unix::fs::PermissionsExt;
                        m.permissions().mode() & 0o111 != 0
                    })
                    .unwrap_or(false)
        })
    })
}

/// The `bind` address of the frontend in `haproxy.cfg`.
fn frontend_address(config: &Path) -> String {
    let text = std::fs::read_to_string(config).expect("read haproxy.cfg");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("bind "))
        .map(|a| a.trim().to_string())
        .unwrap_or_else(|| panic!("no bind line in {text}"))
}

/// What one logical request is, for the checks after the load.
#[derive(Debug, Clone)]
enum Request {
    /// `POST /v2/clusters` of a cluster named `name`.
    Create { name: String },
    /// `POST /v2/clusters/{id}` setting `expire_time`.
    Expire { id: String, expire_time: u64 },
}

/// One logical request that was acknowledged, and what it took.
#[derive(Debug, Clone)]
struct Acknowledged {
    request: Request,
    answer: Value,
    attempts: u32,
}

/// Sends one logical request through HAProxy with one `Idempotency-Key`, retrying 502, 503,
/// 504 and connection errors with backoff (100 ms doubling to 1 s) until [`REQUEST_DEADLINE`].
/// Any other answer, or the deadline, is an `Err` describing every attempt.
async fn send(
    http: &reqwest::Client,
    front: &str,
    method: Method,
    path: &str,
    body: &Value,
    key: &str,
) -> Result<(Value, u32, Vec<String>), String> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut pause = Duration::from_millis(100);
    let mut retried = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut request = http
            .request(method.clone(), format!("{front}{path}"))
            .timeout(ATTEMPT_TIMEOUT)
            .header("Idempotency-Key", key)
            .json(body);
        for (k, v) in DEMO_USER {
            request = request.header(k, v);
        }
        let why = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let served_by = response
                    .headers()
                    .get("coopr-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                let text = response.text().await.unwrap_or_default();
                match status {
                    200 => {
                        let answer = serde_json::from_str(&text).unwrap_or(Value::Null);
                        return Ok((answer, attempts, retried));
                    }
                    502..=504 => format!("{status} from {served_by}: {}", text.trim()),
                    _ => {
                        retried.push(format!("{status} from {served_by}: {}", text.trim()));
                        return Err(format!("{method} {path} {body}: {retried:?}"));
                    }
                }
            }
            Err(e) => format!("no answer: {e}"),
        };
        if retried.len() < 8 {
            retried.push(why);
        }
        if Instant::now() + pause > deadline {
            return Err(format!(
                "{method} {path} {body}: not acknowledged within {REQUEST_DEADLINE:?} \
                 ({attempts} attempts): {retried:?}"
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// A client of HAProxy's address only: alternately creates a cluster and sets the expire time
/// of one of its clusters, each logical request with its own `Idempotency-Key`, until told to
/// stop. Counts acknowledged requests in `acked`; returns them, or the first that failed.
fn spawn_client(
    http: reqwest::Client,
    front: String,
    client: usize,
    run: u64,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<Acknowledged>, String>> {
    tokio::spawn(async move {
        let mut done: Vec<Acknowledged> = Vec::new();
        let mut created: Vec<String> = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let key = format!("{run:x}-{client}-{i}");
            // Expire times can be set only on ACTIVE clusters: the first of a few of this
            // client's clusters that HAProxy's answer shows ACTIVE (a replica copy that says
            // so is behind its owner, never ahead), else a create.
            let mut target = None;
            if i % 2 == 1 {
                for n in 0..created.len().min(3) {
                    // The oldest clusters first: they had the most time to become ACTIVE.
                    let id = &created[(i as usize / 2 + n) % created.len().min(10 + n)];
                    let url = format!("{front}/v2/clusters/{id}/status");
                    let status = get_json(&http, &url, &DEMO_USER).await;
                    if status.is_some_and(|s| s["status"] == "active") {
                        target = Some(id.clone());
                        break;
                    }
                }
            }
            let (request, method, path, body) = if let Some(id) = target {
                let expire_time = 4_000_000_000_000 + client as u64 * 1_000_000 + i;
                let path = format!("/v2/clusters/{id}");
                let body = json!({ "expireTime": expire_time });
                (
                    Request::Expire { id, expire_time },
                    Method::POST,
                    path,
                    body,
                )
            } else {
                let name = format!("hp-{client}-{i}");
                let body = common::create_body(&name, "base", 1);
                let path = "/v2/clusters".to_string();
                (Request::Create { name }, Method::POST, path, body)
            };
            let (answer, attempts, retried) =
                send(&http, &front, method, &path, &body, &key).await?;
            if let Request::Create { name } = &request {
                let id = answer["id"]
                    .as_str()
                    .ok_or_else(|| format!("create {name}: 200 without an id: {answer}"))?;
                created.push(id.to_string());
            }
            if !retried.is_empty() {
                eprintln!(
                    "--- client {client}: {request:?} after {attempts} attempts: {retried:?}"
                );
            }
            done.push(Acknowledged {
                request,
                answer,
                attempts,
            });
            acked.fetch_add(1, Ordering::AcqRel);
            i += 1;
            // A steady load rather than a flood: the DCs' workers keep up with the creates,
            // so that clusters become ACTIVE and get expire times too.
            tokio::time::sleep(CLIENT_PAUSE).await;
        }
        Ok(done)
    })
}

/// Waits until `count` reaches `at_least`, failing the test after `timeout`.
async fn wait_count(count: &AtomicUsize, at_least: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while count.load(Ordering::Acquire) < at_least {
        assert!(
            Instant::now() < deadline,
            "only {} of {at_least} requests acknowledged within {timeout:?} ({what})",
            count.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three DCs of one node behind HAProxy (`haproxy -f haproxy.cfg -db`, the file
/// `init-cluster` wrote). Clients that talk only to HAProxy create clusters and set expire
/// times, each logical request with its own `Idempotency-Key`, retrying 502/503/504 and
/// connection errors with backoff for up to 20 s. Under that load every process of DC `a` (the
/// owner of the global shard and of a third of the cluster shards) is killed with `kill -9`;
/// the load goes on until a's shards have new owners and some more requests went through.
/// Checks: every logical request was eventually acknowledged; through HAProxy, every
/// acknowledged create exists exactly once by name, with the acknowledged id, and nothing
/// else exists; every cluster shows the last expire time acknowledged for it.
#[test]
fn clients_of_haproxy_keep_succeeding_while_a_dc_is_killed() {
    if !on_path("haproxy") {
        // Written to the terminal directly (not through the test harness's capture), so that a
        // plain `cargo test` shows it.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: haproxy not installed (apt-get install haproxy)"
        );
        return;
    }
    run_serially(async {
        let started = Instant::now();
        let mut deployment = Deployment::generate(3, 1, Some(SHARDS), &[("demo_workers", 2)]);
        deployment.start_all();
        deployment.wait_ready(Duration::from_secs(30)).await;
        for dc in ["a", "b", "c"] {
            deployment.wait_leader(dc, Duration::from_secs(30)).await;
        }
        let config = deployment.out.join("haproxy.cfg");
        let front = format!("http://{}", frontend_address(&config));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(deployment.dir.path().join("haproxy.log"))
            .expect("log file");
        let _haproxy = Process(
            Command::new("haproxy")
                .arg("-f")
                .arg(&config)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start haproxy"),
        );
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .expect("HTTP client");
        let deadline = Instant::now() + Duration::from_secs(15);
        while get_json(&http, &format!("{front}/v2/clusters"), &DEMO_USER)
            .await
            .is_none()
        {
            assert!(Instant::now() < deadline, "HAProxy at {front} never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "--- HAProxy serves at {front} after {:?}",
            started.elapsed()
        );

        let run = random_u64();
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                spawn_client(
                    http.clone(),
                    front.clone(),
                    c,
                    run,
                    acked.clone(),
                    stop.clone(),
                )
            })
            .collect();
        wait_count(
            &acked,
            BEFORE_KILL,
            Duration::from_secs(30),
            "before the kill",
        )
        .await;

        eprintln!("--- kill -9 every process of DC a");
        let killed = Instant::now();
        for i in deployment.dc_nodes("a") {
            deployment.kill(i);
        }
        let at_kill = acked.load(Ordering::Acquire);
        let deadline = killed + Duration::from_secs(30);
        loop {
            let shards = get_json(&http, &format!("{front}/v2/admin/shards"), &ADMIN).await;
            let moved = shards
                .as_ref()
                .and_then(|s| s["shards"].as_array())
                .is_some_and(|s| {
                    s.iter()
                        .all(|shard| shard["owner"] != "a" && shard["status"] == "active")
                });
            if moved {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a's shards have no new owners {:?} after the kill: {shards:?}",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let at_failover = acked.load(Ordering::Acquire);
        eprintln!(
            "--- a's shards moved {:?} after the kill ({} requests acknowledged meanwhile)",
            killed.elapsed(),
            at_failover - at_kill
        );
        let failover = Instant::now();
        wait_count(
            &acked,
            at_failover + AFTER_FAILOVER,
            Duration::from_secs(30),
            "after the failover",
        )
        .await;
        // Not a wait for a condition: the load just goes on for a while in the new shape.
        tokio::time::sleep(LOAD_AFTER_FAILOVER.saturating_sub(failover.elapsed())).await;
        stop.store(true, Ordering::Release);
        let mut done = Vec::new();
        for client in clients {
            match client.await.expect("client task") {
                Ok(requests) => done.extend(requests),
                Err(failed) => panic!("a logical request failed: {failed}"),
            }
        }
        let retried = done.iter().filter(|r| r.attempts > 1).count();
        eprintln!(
            "--- {} logical requests acknowledged through HAProxy, {retried} after retries",
            done.len()
        );

        // Every create exactly once by name, with its acknowledged id; nothing else.
        let mut expected: BTreeMap<String, String> = BTreeMap::new();
        let mut expire: BTreeMap<String, u64> = BTreeMap::new();
        for r in &done {
            match &r.request {
                Request::Create { name } => {
                    let id = r.answer["id"].as_str().unwrap_or_default().to_string();
                    expected.insert(name.clone(), id);
                }
                Request::Expire { id, expire_time } => {
                    expire.insert(id.clone(), *expire_time);
                }
            }
        }
        let list = get_json(&http, &format!("{front}/v2/clusters"), &DEMO_USER)
            .await
            .expect("list clusters through HAProxy");
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in list.as_array().expect("cluster list") {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            by_name.entry(text("name")).or_default().push(text("id"));
        }
        let mut wrong = Vec::new();
        for (name, id) in &expected {
            if by_name.get(name) != Some(&vec![id.clone()]) {
                wrong.push(format!(
                    "{name}: acknowledged {id}, listed {:?}",
                    by_name.get(name)
                ));
            }
        }
        for (name, ids) in &by_name {
            if !expected.contains_key(name) {
                wrong.push(format!("{name}: listed {ids:?}, never acknowledged"));
            }
        }
        assert!(
            wrong.is_empty(),
            "creates not there exactly once through HAProxy: {wrong:?}"
        );

        // Every cluster shows the last expire time acknowledged for it (read at its owner).
        for (id, expire_time) in &expire {
            let url = format!("{front}/v2/clusters/{id}?consistency=strong");
            let row = get_json(&http, &url, &DEMO_USER)
                .await
                .unwrap_or_else(|| panic!("cluster {id} not readable through HAProxy"));
            assert_eq!(row["expireTime"], json!(expire_time), "cluster {id}: {row}");
        }
        eprintln!(
            "--- {} clusters exactly once, {} expire times as acknowledged; done in {:?}",
            expected.len(),
            expire.len(),
            started.elapsed()
        );
    });
}
