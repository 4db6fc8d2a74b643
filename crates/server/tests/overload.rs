//! One tenant must not be able to stop a node: a panicking loop is restarted and shown in
//! `/ready`; slow requests time out; a flood is shed per class (user API, health, replication,
//! internal port) instead of queued; client writes into the DC log are bounded while the
//! node's own writes are not.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::dcs::free_port;
use common::{wait_for, Auth, TestServer};
use coopr_server::{Member, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "overload-test-secret-0123";
const DEMO_HEADERS: [(&str, &str); 3] = [
    ("Coopr-UserID", "demo"),
    ("Coopr-TenantID", "demo"),
    ("Coopr-ApiKey", "demo-key"),
];

/// A reply that may be a 5xx (the common client fails the test on those).
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Answer {
    /// Asserts an error's status and code, and a `Retry-After` on a 503.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{:?}",
            self.body
        );
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        if status == 503 {
            assert_eq!(self.retry_after.as_deref(), Some("1"), "{:?}", self.body);
        }
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn demo(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("Coopr-UserID", "demo")
        .header("Coopr-TenantID", "demo")
        .header("Coopr-ApiKey", "demo-key")
}

/// A request whose headers promise a body that never comes: its handler waits for it, holding
/// its place, as a slow (or malicious) client would. The stream is kept open by the caller.
async fn slow_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n{");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream
}

/// Reads one HTTP response (status, body as JSON, Retry-After) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            bytes.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if bytes.len() >= end + 4 + length || n == 0 {
                    return text;
                }
            }
            assert!(n > 0, "connection closed before an answer: {text}");
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let retry_after = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_string())
    });
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    }
}

/// A panic in the job driver (injected into the running loop, as a bug would unwind it) is
/// counted in `coopr_loop_panics_total{loop="driver"}`, the driver runs again (it still
/// releases a dead provisioner), and a driver that keeps panicking makes `/ready` answer 503
/// naming it.
#[tokio::test]
async fn a_panicking_driver_is_restarted_counted_and_named_by_ready() {
    let srv = TestServer::start_with(|c| c.provisioner_timeout_ms = 300).await;
    let client = http();
    let ready = format!("{}/ready", srv.base);
    assert_eq!(send(client.get(&ready)).await.status, 200);
    let loops = srv.app().loops.clone();
    let panics = coopr_server::supervise::CRASH_LOOP_PANICS as u64 + 1;
    for n in 1..=panics {
        loops.inject_panic("driver");
        wait_for("the driver's restart", || {
            let status = loops.status("driver").expect("the driver is supervised");
            let restarted =
                status.panics == n && status.phase == coopr_server::supervise::Phase::Running;
            std::future::ready(restarted.then_some(()))
        })
        .await;
    }
    let status = loops.status("driver").expect("supervised");
    assert_eq!(status.starts, panics + 1);
    assert_eq!(status.last_panic.as_deref(), Some("injected panic"));
    // Crash looping: running again, but not ready.
    let answer = send(client.get(&ready)).await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.body["reason"], "loop_crash_looping: driver");
    assert_eq!(answer.body["loops"][0]["loop"], "driver");
    // Counted (the recorder is shared by the servers of this test binary: at least ours).
    let metrics = srv.get("/metrics", &Auth::Anonymous).await.text;
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("coopr_loop_panics_total{loop=\"driver\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no driver panics in {metrics}"));
    assert!(counted >= panics as f64, "{counted}");
    // The restarted driver does its work: a provisioner that stops heartbeating is released.
    common::Worker::register(&srv.client, "silent", "w1").await;
    wait_for(
        "the restarted driver to release the silent provisioner",
        || {
            let gone = !srv
                .app()
                .core
                .read()
                .local
                .provisioners
                .contains_key("silent");
            std::future::ready(gone.then_some(()))
        },
    )
    .await;
    srv.stop().await;
}

/// A request that does not finish in time (here: its body never comes) is answered 503
/// `request_timeout` with `Retry-After`, on the user API and on the internal port alike.
#[tokio::test]
async fn a_slow_request_is_answered_request_timeout() {
    let srv = TestServer::start_with(|c| {
        c.internal_listen = Some("127.0.0.1:0".into());
        c.secret = Some(SECRET.into());
        c.api_request_timeout_ms = 300;
        c.internal_request_timeout_ms = 300;
    })
    .await;
    let api: SocketAddr = srv
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let mut stream = slow_request(api, "/v2/clusters", &DEMO_HEADERS).await;
    read_answer(&mut stream)
        .await
        .assert_error(503, "request_timeout");
    let internal = srv.internal_addr().expect("internal port");
    let raft_headers = [
        ("Coopr-Cluster-Secret", SECRET),
        ("Coopr-Raft-Group", "dc-a"),
    ];
    let mut stream = slow_request(internal, "/raft/vote", &raft_headers).await;
    read_answer(&mut stream)
        .await
        .assert_error(503, "request_timeout");
    // A snapshot chunk is not cut off at the internal timeout: the last one is answered only
    // once the node installed the snapshot (its own bound is the leader's install timeout).
    let mut chunk = slow_request(internal, "/raft/snapshot", &raft_headers).await;
    let answered =
        tokio::time::timeout(Duration::from_millis(1_500), read_answer(&mut chunk)).await;
    assert!(
        answered.is_err(),
        "answered within 1.5 s: {:?}",
        answered.map(|a| a.status)
    );
    drop(chunk);
    // The node serves on.
    assert_eq!(srv.cluster_count().await, 0);
    srv.stop().await;
}

/// With the user API at its limit (one request held open by a slow client), further user
/// requests are shed at once with 503 `overloaded` and `Retry-After`, while health checks,
/// replication calls and the internal port (Raft RPCs, lease renewals) are still answered;
/// saturating the internal port in turn sheds only internal calls. A freed place is usable
/// again.
#[tokio::test]
async fn a_saturated_api_sheds_load_and_internal_calls_go_on() {
    let srv = TestServer::start_with(|c| {
        c.internal_listen = Some("127.0.0.1:0".into());
        c.secret = Some(SECRET.into());
        c.api_max_concurrent_requests = 1;
        c.internal_max_concurrent_requests = 1;
    })
    .await;
    let client = http();
    let api: SocketAddr = srv
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let internal = srv.internal_addr().expect("internal port");
    let clusters = format!("{}/v2/clusters", srv.base);
    let held_api = slow_request(api, "/v2/clusters", &DEMO_HEADERS).await;
    let shed = wait_for("the held request to take the API's one place", || async {
        let answer = send(demo(client.get(&clusters))).await;
        (answer.status == 503).then_some(answer)
    })
    .await;
    shed.assert_error(503, "overloaded");
    // Other classes are not shed by user load.
    assert_eq!(
        send(client.get(format!("{}/ready", srv.base))).await.status,
        200
    );
    send(client.post(format!("{}/internal/replication/pull", srv.base)))
        .await
        .assert_error(401, "unauthorized");
    let vote = format!("http://{internal}/raft/vote");
    let refused = send(client.post(&vote)).await;
    assert_eq!(refused.status, 401, "not shed: {:?}", refused.body);
    // Saturating the internal port sheds internal calls only.
    let raft_headers = [
        ("Coopr-Cluster-Secret", SECRET),
        ("Coopr-Raft-Group", "dc-a"),
    ];
    let held_internal = slow_request(internal, "/raft/vote", &raft_headers).await;
    let shed = wait_for(
        "the held call to take the internal port's one place",
        || async {
            let answer = send(client.post(&vote)).await;
            (answer.status == 503).then_some(answer)
        },
    )
    .await;
    shed.assert_error(503, "overloaded");
    // The user API's place comes back when the slow client goes.
    drop(held_api);
    wait_for("the API's place to be free again", || async {
        (send(demo(client.get(&clusters))).await.status == 200).then_some(())
    })
    .await;
    drop(held_internal);
    wait_for("the internal port's place to be free again", || async {
        (send(client.post(&vote)).await.status == 401).then_some(())
    })
    .await;
    srv.stop().await;
}

/// A DC of two nodes whose follower is gone: the leader's writes wait out `write_timeout_ms`
/// (no quorum). With one place in the write queue, a second client write is refused at once
/// with 503 `write_queue_full` and `Retry-After`, while a write of the node's own (driver,
/// replication) is not refused by the queue; once the first write ends (503 `no_quorum`),
/// the place is free again.
#[tokio::test]
async fn client_writes_beyond_the_write_queue_are_refused_with_write_queue_full() {
    let api = (free_port(), free_port());
    let internal = (free_port(), free_port());
    let members: BTreeMap<u64, Member> = [1u64, 2]
        .iter()
        .map(|id| {
            let i = (*id - 1) as usize;
            let member = Member {
                node: format!("a{id}"),
                api: format!("http://127.0.0.1:{}", [api.0, api.1][i]),
                internal: format!("http://127.0.0.1:{}", [internal.0, internal.1][i]),
            };
            (*id, member)
        })
        .collect();
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let config = |id: u64| {
        let i = (id - 1) as usize;
        ServerConfig {
            node: format!("a{id}"),
            node_id: id,
            listen: format!("127.0.0.1:{}", [api.0, api.1][i]),
            internal_listen: Some(format!("127.0.0.1:{}", [internal.0, internal.1][i])),
            members: members.clone(),
            secret: Some(SECRET.into()),
            write_timeout_ms: 2_000,
            max_client_writes_in_flight: 1,
            ..common::config(dirs[i].path())
        }
    };
    let (one, two) = tokio::join!(
        TestServer::start_config(config(1)),
        TestServer::start_config(config(2))
    );
    let client = http();
    let mut nodes = vec![one, two];
    let leader = wait_for("a seeded leader", || {
        let leader = nodes.iter().position(|n| {
            n.app().core.raft().is_leader()
                && n.app().leader_since.lock().is_ok_and(|l| l.is_some())
        });
        std::future::ready(leader)
    })
    .await;
    let leader = nodes.remove(leader);
    let follower = nodes.pop().expect("two nodes");
    wait_for("the leader ready", || async {
        (send(client.get(format!("{}/ready", leader.base)))
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
    follower.stop().await;
    let create = json!({"name": "web", "clusterTemplate": "base", "numMachines": 1});
    let clusters = format!("{}/v2/clusters", leader.base);
    let first = tokio::spawn(send(demo(client.post(&clusters)).json(&create)));
    wait_for("the first write in flight", || {
        std::future::ready((leader.app().write_queue.in_flight() == 1).then_some(()))
    })
    .await;
    send(demo(client.post(&clusters)).json(&create))
        .await
        .assert_error(503, "write_queue_full");
    // The node's own writes take no place in the queue (this one ends without quorum).
    let own = leader
        .app()
        .propose_system(coopr_state::Command::ExpireTasks, None)
        .await;
    assert!(
        matches!(own, Err(coopr_server::core::ProposeError::NoQuorum { .. })),
        "{own:?}"
    );
    first
        .await
        .expect("first write")
        .assert_error(503, "no_quorum");
    assert_eq!(leader.app().write_queue.in_flight(), 0);
    send(demo(client.post(&clusters)).json(&create))
        .await
        .assert_error(503, "no_quorum");
    leader.stop().await;
}
