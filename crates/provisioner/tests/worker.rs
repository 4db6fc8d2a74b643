//! The provisioner runtime against a tiny in-test server speaking the `/v2` provisioner API.
//!
//! The server keeps a queue of tasks and records every request, so the tests can check what the
//! provisioner sent: registrations, take bodies, finish bodies and the `Coopr-ApiKey` header.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use coopr_provisioner::{
    run, FakeBackend, FakeCloud, FakeCloudOptions, FakeCloudServer, PluginRegistry,
    ProvisionerConfig, RemoteCloud, API_KEY_HEADER,
};
use serde_json::{json, Value};
use tokio::sync::watch;

const API_KEY: &str = "provisioner-secret";
const WAIT: Duration = Duration::from_secs(20);

/// What the fake server does and what it saw.
#[derive(Default)]
struct Server {
    queue: VecDeque<Value>,
    registered: bool,
    /// Tasks are handed out only once the provisioner has registered this many times.
    serve_after_registrations: usize,
    /// The first heartbeat answers 404 and forgets the provisioner.
    forget_on_first_heartbeat: bool,
    /// Finishing this task answers 417.
    not_owner_task: Option<String>,
    /// Finishing a successful attempt answers 413 (its result is too large to deliver).
    refuse_successes: bool,
    /// Finishing this task answers 409 `task_not_here` (another DC owns it).
    not_here_task: Option<String>,
    /// Registration answers this status instead of 200.
    registration_status: Option<StatusCode>,

    registrations: Vec<Value>,
    heartbeats: usize,
    takes: Vec<Value>,
    empty_takes: usize,
    refused_takes: usize,
    finishes: Vec<Value>,
    bad_keys: usize,
}

type Shared = Arc<Mutex<Server>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Server> {
    shared.lock().expect("server state lock")
}

fn check_key(server: &mut Server, headers: &HeaderMap) {
    if headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        server.bad_keys += 1;
    }
}

async fn register(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut server = lock(&shared);
    check_key(&mut server, &headers);
    server.registrations.push(body);
    if let Some(status) = server.registration_status {
        return (status, "bad registration").into_response();
    }
    server.registered = true;
    StatusCode::OK.into_response()
}

async fn heartbeat(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(_body): Json<Value>,
) -> StatusCode {
    let mut server = lock(&shared);
    check_key(&mut server, &headers);
    server.heartbeats += 1;
    if server.forget_on_first_heartbeat && server.heartbeats == 1 {
        server.registered = false;
    }
    if server.registered {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn take(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut server = lock(&shared);
    check_key(&mut server, &headers);
    server.takes.push(body);
    if !server.registered {
        server.refused_takes += 1;
        return StatusCode::FORBIDDEN.into_response();
    }
    if server.registrations.len() < server.serve_after_registrations {
        server.empty_takes += 1;
        return StatusCode::NO_CONTENT.into_response();
    }
    match server.queue.pop_front() {
        Some(task) => Json(task).into_response(),
        None => {
            server.empty_takes += 1;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn finish(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut server = lock(&shared);
    check_key(&mut server, &headers);
    let not_owner = server.not_owner_task.as_deref() == body["taskId"].as_str();
    let not_here = server.not_here_task.as_deref() == body["taskId"].as_str();
    let too_large = server.refuse_successes && body["status"] == 0;
    server.finishes.push(body);
    if not_owner {
        StatusCode::EXPECTATION_FAILED.into_response()
    } else if not_here {
        let answer = json!({"code": "task_not_here", "message": "datacenter b owns it"});
        (StatusCode::CONFLICT, Json(answer)).into_response()
    } else if too_large {
        StatusCode::PAYLOAD_TOO_LARGE.into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

/// Starts the server on an ephemeral port; returns its base URL.
async fn start_server(shared: Shared) -> String {
    let app = Router::new()
        .route("/v2/provisioners/{id}", put(register))
        .route("/v2/provisioners/{id}/heartbeat", post(heartbeat))
        .route("/v2/tasks/take", post(take))
        .route("/v2/tasks/finish", post(finish))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{address}")
}

/// A base URL nothing listens on: bind an ephemeral port, then release it.
async fn dead_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

async fn wait_until(what: &str, shared: &Shared, condition: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition(&lock(shared)) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(servers: Vec<String>, cloud: FakeCloud) -> ProvisionerConfig {
    let mut config = ProvisionerConfig::new(servers, "p1", PluginRegistry::with_builtins(cloud));
    config.capacity = 2;
    config.api_key = Some(API_KEY.to_string());
    config.poll_interval_ms = 20;
    config.heartbeat_interval_ms = 50;
    config
}

fn task(id: &str, name: &str, config: Value) -> Value {
    json!({"taskId": id, "jobId": "00000001-001", "clusterId": "00000001", "taskName": name,
        "nodeId": "node-1", "config": config})
}

/// The whole worker protocol, with one worker so each step must follow the previous one: the
/// first server is down (the client rotates to the second), the
/// first heartbeat answers 404 (the provisioner registers again; tasks are only served after
/// that), empty queues answer 204 (workers keep polling), a 417 on finish is logged and the
/// worker goes on; every request carries the API key, and the finish bodies carry the plugin
/// results.
#[tokio::test]
async fn workers_take_run_and_finish_tasks() {
    let shared: Shared = Arc::default();
    {
        let mut server = lock(&shared);
        server.serve_after_registrations = 2;
        server.forget_on_first_heartbeat = true;
        server.not_owner_task = Some("00000001-001-002".to_string());
        server.queue.extend([
            task(
                "00000001-001-001",
                "CREATE",
                json!({"nodenum": 1000,
                "provider": {"name": "fake", "providertype": "fake", "provisioner": {}}}),
            ),
            task(
                "00000001-001-002",
                "INSTALL",
                json!({"hostname": "host",
                "service": {"name": "mysql", "action": {"type": "fake", "fields": {}}}}),
            ),
            task(
                "00000001-001-003",
                "INSTALL",
                json!({"hostname": "host",
                "service": {"name": "zk", "action": {"type": "chef-solo"}}}),
            ),
        ]);
    }
    let live = start_server(shared.clone()).await;
    let cloud = FakeCloud::new(FakeCloudOptions::default());
    let mut config = config(vec![dead_server().await, live], cloud.clone());
    config.tenant_id = Some("tenant-1".to_string());
    config.capacity = 1;
    let (stop, shutdown) = watch::channel(false);
    let provisioner = tokio::spawn(run(config, shutdown));

    wait_until("three finishes", &shared, |s| s.finishes.len() == 3).await;
    let empty_before = lock(&shared).empty_takes;
    wait_until("polls of the empty queue", &shared, |s| {
        s.empty_takes > empty_before + 2
    })
    .await;

    stop.send(true).expect("provisioner listening");
    tokio::time::timeout(WAIT, provisioner)
        .await
        .expect("provisioner stops promptly")
        .expect("provisioner task")
        .expect("provisioner result");

    let server = lock(&shared);
    assert_eq!(server.bad_keys, 0, "every request carries Coopr-ApiKey");
    assert!(
        server.registrations.len() >= 2,
        "registered again after the 404"
    );
    assert_eq!(
        server.registrations[0],
        json!({"id": "p1", "host": "127.0.0.1", "port": 55056, "capacityTotal": 1})
    );
    assert!(server.heartbeats >= 1);
    for take in &server.takes {
        assert_eq!(take["provisionerId"], json!("p1"));
        assert_eq!(take["tenantId"], json!("tenant-1"));
        assert!(take["workerId"]
            .as_str()
            .is_some_and(|w| w.starts_with("p1.")));
    }

    let mut finishes = server.finishes.clone();
    finishes.sort_by_key(|f| f["taskId"].as_str().map(str::to_string));
    for finish in &finishes {
        assert_eq!(finish["provisionerId"], json!("p1"));
        assert_eq!(finish["tenantId"], json!("tenant-1"));
        assert!(finish["workerId"]
            .as_str()
            .is_some_and(|w| w.starts_with("p1.")));
    }
    let [create, install, unknown] = &finishes[..] else {
        panic!("three finishes expected: {finishes:?}");
    };
    assert_eq!(create["taskId"], json!("00000001-001-001"));
    assert_eq!(create["status"], json!(0));
    assert_eq!(create["hostname"], json!("node-1000.coopr.local"));
    assert_eq!(
        create["ipaddresses"],
        json!({"access_v4": "10.0.0.1", "bind_v4": "10.0.0.1"})
    );
    assert_eq!(create["result"]["providerid"], json!("fake-1"));
    assert_eq!(cloud.machines_created(), 1);

    assert_eq!(install["status"], json!(0));
    assert_eq!(install["stdout"], json!("fake: install mysql on host"));
    assert!(
        install.get("hostname").is_none(),
        "absent fields are omitted"
    );

    assert_eq!(unknown["status"], json!(1));
    assert!(
        unknown["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("no automator plugin named \"chef-solo\"")),
        "{unknown}"
    );
}

/// Shutdown while a task runs: the provisioner stops promptly, abandons the task (nothing is
/// reported; the server's task timeout re-issues it) and, serving any tenant, sends no tenantId
/// when taking.
#[tokio::test]
async fn shutdown_abandons_running_task() {
    let shared: Shared = Arc::default();
    lock(&shared).queue.push_back(task(
        "00000001-001-001",
        "CREATE",
        json!({"provider": {"providertype": "fake", "provisioner": {"latency_ms": 60000}}}),
    ));
    let live = start_server(shared.clone()).await;
    let cloud = FakeCloud::default();
    let (stop, shutdown) = watch::channel(false);
    let provisioner = tokio::spawn(run(config(vec![live], cloud.clone()), shutdown));

    wait_until("the task is taken", &shared, |s| s.queue.is_empty()).await;
    stop.send(true).expect("provisioner listening");
    tokio::time::timeout(Duration::from_secs(5), provisioner)
        .await
        .expect("provisioner stops promptly")
        .expect("provisioner task")
        .expect("provisioner result");

    let server = lock(&shared);
    assert!(server.finishes.is_empty());
    assert_eq!(cloud.machines_created(), 0);
    assert!(server.takes.iter().all(|t| t.get("tenantId").is_none()));
}

/// A registration the server rejects with a 4xx (here 400) is a configuration problem, so `run`
/// returns an error instead of retrying forever.
#[tokio::test]
async fn rejected_registration_is_an_error() {
    let shared: Shared = Arc::default();
    lock(&shared).registration_status = Some(StatusCode::BAD_REQUEST);
    let live = start_server(shared.clone()).await;
    let (_stop, shutdown) = watch::channel(false);
    let outcome = tokio::time::timeout(
        WAIT,
        run(config(vec![live], FakeCloud::default()), shutdown),
    )
    .await
    .expect("run returns");
    let error = format!("{:#}", outcome.expect_err("registration rejected"));
    assert!(error.contains("400"), "{error}");
}

/// A provisioner whose `fake` provider uses a shared cloud over HTTP: a CREATE the server
/// issues twice for one node (as after a worker timeout, or by another DC after a failover)
/// is finished twice with the same machine, which the shared cloud created once.
#[tokio::test]
async fn workers_use_a_shared_cloud_over_http() {
    let shared: Shared = Arc::default();
    let create = task(
        "00000001-001-001",
        "CREATE",
        json!({"nodenum": 1000, "provider": {"providertype": "fake", "provisioner": {}}}),
    );
    lock(&shared).queue.extend([create.clone(), create]);
    let live = start_server(shared.clone()).await;
    let cloud = FakeCloud::default();
    let cloud_server = FakeCloudServer::start(cloud.clone(), "127.0.0.1:0")
        .await
        .expect("start the fake cloud");
    let remote = RemoteCloud::new(&cloud_server.url()).expect("fake cloud URL");
    let mut config = config(vec![live], FakeCloud::default());
    config.plugins =
        PluginRegistry::with_fake_backend(FakeBackend::Remote(remote), FakeCloud::default());
    let (stop, shutdown) = watch::channel(false);
    let provisioner = tokio::spawn(run(config, shutdown));

    wait_until("two finishes", &shared, |s| s.finishes.len() == 2).await;
    stop.send(true).expect("provisioner listening");
    tokio::time::timeout(WAIT, provisioner)
        .await
        .expect("provisioner stops promptly")
        .expect("provisioner task")
        .expect("provisioner result");
    cloud_server.shutdown().await.expect("fake cloud shutdown");

    let server = lock(&shared);
    for finish in &server.finishes {
        assert_eq!(finish["status"], json!(0), "{finish}");
        assert_eq!(finish["result"]["providerid"], json!("fake-1"));
        assert_eq!(finish["hostname"], json!("node-1000.coopr.local"));
    }
    let machine = cloud
        .record("node-1")
        .expect("the shared cloud has the machine");
    assert_eq!((machine.alive, machine.creates), (true, 1));
}

/// A result the server refuses (413: too large to deliver) becomes a failure report of the
/// attempt, sent once, so that the server's engine retries or fails the task; the worker does
/// not drop it and take the same task again. A 409 `task_not_here` (another DC owns the task)
/// is terminal: the result is dropped after one attempt.
#[tokio::test]
async fn undeliverable_results_fail_the_attempt_and_foreign_tasks_are_dropped() {
    let shared: Shared = Arc::default();
    {
        let mut server = lock(&shared);
        server.refuse_successes = true;
        server.not_here_task = Some("00000001-001-002".to_string());
        let install = json!({"hostname": "host",
            "service": {"name": "mysql", "action": {"type": "fake", "fields": {}}}});
        server.queue.extend([
            task("00000001-001-001", "INSTALL", install.clone()),
            task("00000001-001-002", "INSTALL", install),
        ]);
    }
    let live = start_server(shared.clone()).await;
    let mut config = config(vec![live], FakeCloud::default());
    config.capacity = 1;
    let (stop, shutdown) = watch::channel(false);
    let provisioner = tokio::spawn(run(config, shutdown));

    wait_until("three finishes", &shared, |s| s.finishes.len() == 3).await;
    let empty_before = lock(&shared).empty_takes;
    wait_until("polls of the empty queue", &shared, |s| {
        s.empty_takes > empty_before + 2
    })
    .await;
    stop.send(true).expect("provisioner listening");
    tokio::time::timeout(WAIT, provisioner)
        .await
        .expect("provisioner stops promptly")
        .expect("provisioner task")
        .expect("provisioner result");

    let server = lock(&shared);
    let reports: Vec<(&str, i64)> = server
        .finishes
        .iter()
        .map(|f| {
            (
                f["taskId"].as_str().unwrap_or("?"),
                f["status"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    // Task 1: the refused success, then its failure report; task 2: one report, dropped.
    assert_eq!(
        reports,
        [
            ("00000001-001-001", 0),
            ("00000001-001-001", 1),
            ("00000001-001-002", 0)
        ],
        "{:?}",
        server.finishes
    );
    let failure = &server.finishes[1];
    assert!(
        failure["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("could not be delivered") && e.contains("413")),
        "{failure}"
    );
    assert_eq!(failure["result"], json!({}));
}
