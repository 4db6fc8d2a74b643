//! Black-box tests of the real `coopr` binary: the demo process, the CLI against it, and
//! `kill -9` in the middle of a job. Each test starts its own process on a free port and kills it
//! when done (also on failure, through [`Process`]'s `Drop`).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coopr");

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_demo(port: u16, dir: &Path, latency_ms: u64) -> Process {
    let child = Command::new(BIN)
        .args([
            "demo",
            "--dcs",
            "1",
            "--base-port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(dir)
        .args([
            "--fake-latency-ms",
            &latency_ms.to_string(),
            "--workers",
            "4",
        ])
        .env("COOPR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coopr demo");
    let process = Process(child);
    wait_for(
        Duration::from_secs(30),
        "the demo server to answer /status",
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && cli(port, &["cluster", "list"]).status.success()
        },
    );
    process
}

fn cli(port: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("COOPR_SERVER", format!("http://127.0.0.1:{port}"))
        .env("COOPR_TENANT", "demo")
        .env("COOPR_USER", "demo")
        .env("COOPR_API_KEY", "demo-key")
        .output()
        .expect("run coopr")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(port: u16, id: &str) -> serde_json::Value {
    let out = cli(port, &["cluster", "status", id]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).expect("status is JSON")
}

/// The CLI creates a 3-machine `lamp` cluster to ACTIVE (with `--wait`), then deletes it to
/// TERMINATED, against a real demo process.
#[test]
fn cli_creates_lamp_cluster_and_deletes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _demo = start_demo(port, dir.path(), 0);

    let out = cli(
        port,
        &[
            "cluster",
            "create",
            "web",
            "--template",
            "lamp",
            "--machines",
            "3",
            "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    assert_eq!(id.len(), 8, "cluster id {id:?} is 8 digits");
    let s = status(port, &id);
    assert_eq!(s["status"], "active");
    assert_eq!(s["action"], "cluster_create");
    assert_eq!(s["actionstatus"], "complete");
    assert_eq!(s["stepstotal"], s["stepscompleted"]);

    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&cli(port, &["cluster", "show", &id]))).expect("show");
    let nodes = shown["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert!(!node["properties"]["hostname"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
        assert!(node["properties"]["ipaddresses"]["access_v4"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")));
    }

    let out = cli(port, &["cluster", "delete", &id, "--wait"]);
    assert!(
        out.status.success(),
        "delete failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(port, &id)["status"], "terminated");
}

/// `kill -9` while a create job runs: after a restart on the same data dir every acknowledged
/// cluster is there, the running job resumes and completes, and the fake cloud (idempotent on
/// node id) created exactly one machine per node despite tasks re-run after the crash.
#[test]
fn kill_dash_nine_loses_nothing_and_resumes_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut demo = start_demo(port, dir.path(), 150);

    let mut ids = Vec::new();
    for i in 0..3 {
        let out = cli(
            port,
            &[
                "cluster",
                "create",
                &format!("c{i}"),
                "--template",
                "lamp",
                "--machines",
                "3",
            ],
        );
        assert!(
            out.status.success(),
            "create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(stdout(&out));
    }
    wait_for(
        Duration::from_secs(30),
        "some progress on the first cluster",
        || {
            status(port, &ids[0])["stepscompleted"]
                .as_u64()
                .unwrap_or(0)
                >= 4
        },
    );
    assert_ne!(
        status(port, &ids[0])["status"],
        "active",
        "the job must still be running when killed"
    );
    demo.0.kill().expect("kill -9");
    let _ = demo.0.wait();
    drop(demo);

    let _demo = start_demo(port, dir.path(), 0);
    for id in &ids {
        wait_for(Duration::from_secs(60), "the resumed job to finish", || {
            status(port, id)["actionstatus"] == "complete"
        });
        assert_eq!(status(port, id)["status"], "active");
    }
    let listed = stdout(&cli(port, &["cluster", "list"]));
    assert_eq!(
        listed.lines().count(),
        1 + ids.len(),
        "exactly the acknowledged clusters exist:\n{listed}"
    );
    let cloud: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("fake-cloud.json")).expect("fake cloud state"),
    )
    .expect("fake cloud JSON");
    assert_eq!(
        cloud["machinesCreated"].as_u64(),
        Some(9),
        "one machine per node: {cloud}"
    );
}
