//! Black-box tests of the real `coopr` binary: the demo process, the CLI against it, and
//! `kill -9` in the middle of a job. Each test starts its own process on a free port and kills it
//! when done (also on failure, through `common::Process`'s `Drop`).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Process, BIN};

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
    let out = cli(port, &["cluster", "status", id, "--json"]);
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
        serde_json::from_str(&stdout(&cli(port, &["cluster", "show", &id, "--json"])))
            .expect("show");
    // For people: the summary, then a row per node with its hostname and address.
    let table = stdout(&cli(port, &["cluster", "show", &id]));
    assert!(table.contains(&format!("id         {id}\n")), "{table}");
    assert!(table.contains("status     active\n"), "{table}");
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
        let row = table
            .lines()
            .find(|l| l.starts_with(node["id"].as_str().unwrap_or("?")))
            .unwrap_or_else(|| panic!("no row for {node}: {table}"));
        let hostname = node["properties"]["hostname"].as_str().unwrap_or("?");
        let ip = node["properties"]["ipaddresses"]["access_v4"]
            .as_str()
            .unwrap_or("?");
        assert!(
            row.contains(hostname) && row.contains(&format!("access_v4={ip}")),
            "{row}"
        );
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
    let demo = start_demo(port, dir.path(), 150);

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
    demo.kill_dash_nine();

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

/// `GET /ready` of the node at `port`: status line code and body.
fn ready_status(port: u16) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "no connection".into());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request =
        format!("GET /ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, "not sent".into());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// A new user's first minute: `coopr demo` with three DCs prints its instructions only once
/// they work (the first command run when "Try:" appears succeeds in every DC), shows no log
/// lines on the terminal (they go to a file in the data dir), and says where the logs are.
#[test]
fn the_demo_prints_instructions_once_usable_and_keeps_its_logs_in_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = common::Demo::start(3, dir.path(), &["--workers", "2"]);
    let base = demo.base;
    let printed = demo.printed.clone();
    // Right away, in every DC: the node is ready (its lease held) and the demo tenant's key
    // works.
    for dc in 0..3u16 {
        let port = base + 10 * dc;
        let ready = ready_status(port);
        assert_eq!(
            ready.0, 200,
            "DC {dc} not ready when the demo said so: {}",
            ready.1
        );
        let out = cli(port, &["cluster", "list", "--json"]);
        assert!(
            out.status.success(),
            "cluster list at DC {dc} right after the instructions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            printed
                .iter()
                .any(|l| l.contains(&format!("http://127.0.0.1:{port}"))),
            "no line for DC {dc}: {printed:#?}"
        );
    }
    let log = dir.path().join("demo.log");
    let logs = format!("Logs: {}", log.display());
    let said = std::iter::from_fn(|| demo.lines.recv_timeout(Duration::from_secs(5)).ok())
        .find(|l| l.starts_with(&logs));
    assert!(said.is_some(), "the demo does not say where its logs are");
    assert!(
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0),
        "{} is empty",
        log.display()
    );
    let stderr = demo.stop();
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR") && !stderr.contains("INFO"),
        "log lines on the terminal: {stderr}"
    );
}

/// `coopr completions SHELL` prints a script that knows the commands and their options; an
/// unknown shell is a usage error (exit 2).
#[test]
fn completions_know_the_commands() {
    for (shell, marker) in [
        ("bash", "_coopr()"),
        ("zsh", "#compdef coopr"),
        ("fish", "complete -c coopr"),
    ] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run coopr");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in ["cluster", "handover", "--json", "--template"] {
            // fish names long options `-l NAME`.
            let word = match word.strip_prefix("--") {
                Some(long) if shell == "fish" => format!("-l {long}"),
                _ => word.to_string(),
            };
            assert!(script.contains(&word), "{shell} script lacks {word}");
        }
    }
    let out = Command::new(BIN)
        .args(["completions", "cmd.exe"])
        .output()
        .expect("run coopr");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
