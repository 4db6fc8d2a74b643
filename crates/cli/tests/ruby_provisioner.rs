//! Coopr's own provisioner, the Ruby one of `caskdata/coopr-provisioner`, run unchanged against
//! a coopr node: it registers its plugin types (`--register`), registers itself, heartbeats,
//! is told by the tenant push which tenant to run workers for and which plugin resources are
//! live, fetches those resources, and its workers take and finish every task of a cluster's
//! create and delete. Its plugins are two written for this test against its plugin interface
//! (`tests/ruby/`): a provider whose machines are files, and an automator that records what it
//! was asked and runs a script resource of the tenant.
//!
//! Needs Ruby with the provisioner's gems (Debian 12: `ruby ruby-rest-client ruby-sinatra thin
//! ruby-json ruby-mime-types ruby-deep-merge ruby-net-scp`) and the provisioner's sources:
//! `COOPR_PROVISIONER_SRC` names a checkout of it or its git directory. Skipped, with a line
//! saying which is missing, without them; `.ci/run` installs the packages and points
//! `COOPR_PROVISIONER_SRC` at the copy on the CI machine when there is one.
//!
//! The node runs with `user_api_auth` and `provisioner_api_auth = "trusted-headers"`: the Ruby
//! provisioner sends `Coopr-UserID`/`Coopr-TenantID` and no key (on the take and finish of its
//! workers, no header at all).

mod common;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{get_json, wait_cluster_status, Deployment, ADMIN, DEMO_USER};
use reqwest::Method;
use serde_json::{json, Value};

/// The demo tenant's admin (catalog and resource writes).
const DEMO_ADMIN: [(&str, &str); 3] = [
    ("Coopr-UserID", "admin"),
    ("Coopr-TenantID", "demo"),
    ("Coopr-ApiKey", "demo-admin-key"),
];
/// Workers the demo tenant asks for (the provisioner's capacity is larger).
const WORKERS: u64 = 2;
/// Nodes of the test's cluster.
const MACHINES: u64 = 2;
/// The Ruby worker sleeps 5 s after every task and polls every second: a stage takes ~6 s.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(150);
/// The gems the provisioner and its workers require.
const GEM_CHECK: &str = "require 'thin'; require 'sinatra/base'; require 'json'; \
    require 'rest-client'; require 'rexml/document'; require 'net/scp'; \
    require 'deep_merge/rails_compat'; require 'mime-types'";

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    match Command::new("ruby").args(["-e", GEM_CHECK]).output() {
        Err(e) => return Some(format!("no ruby on PATH ({e})")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "ruby lacks the provisioner's gems: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    match std::env::var_os("COOPR_PROVISIONER_SRC") {
        None => Some("COOPR_PROVISIONER_SRC is not set".into()),
        Some(src) if !Path::new(&src).exists() => Some(format!(
            "COOPR_PROVISIONER_SRC={} does not exist",
            Path::new(&src).display()
        )),
        Some(_) => None,
    }
}

/// Copies the provisioner (`bin`, `conf`, `lib`) from `COOPR_PROVISIONER_SRC` into `to`
/// (`git archive` of HEAD when it is a git directory), and replaces its bundled plugins by the
/// test's (the bundled ones need clouds, Chef or SSH).
fn install_provisioner(to: &Path) {
    let src = PathBuf::from(std::env::var_os("COOPR_PROVISIONER_SRC").expect("checked"));
    std::fs::create_dir_all(to).expect("mkdir");
    let copied = if src.join("lib/provisioner/api.rb").is_file() {
        Command::new("cp")
            .arg("-r")
            .args(["bin", "conf", "lib"].map(|d| src.join(d)))
            .arg(to)
            .status()
    } else {
        Command::new("sh")
            .arg("-c")
            .arg("git --git-dir=\"$0\" archive HEAD bin conf lib | tar -x -C \"$1\"")
            .arg(&src)
            .arg(to)
            .status()
    };
    assert!(
        copied.expect("copy the provisioner").success(),
        "could not copy the provisioner from {}",
        src.display()
    );
    let plugins = to.join("lib/provisioner/worker/plugins");
    std::fs::remove_dir_all(&plugins).expect("remove the bundled plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir plugins");
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ruby");
    let status = Command::new("cp")
        .arg("-r")
        .arg(ours.join("providers"))
        .arg(ours.join("automators"))
        .arg(&plugins)
        .status()
        .expect("cp");
    assert!(status.success(), "could not install the test's plugins");
}

/// The provisioner's site configuration (`conf/provisioner-site.xml` format).
fn site_config(server: &str, port: u16, data: &Path, work: &Path) -> String {
    let properties = [
        ("provisioner.server.uri", server.to_string()),
        ("provisioner.bind.ip", "127.0.0.1".into()),
        ("provisioner.bind.port", port.to_string()),
        ("provisioner.register.ip", "127.0.0.1".into()),
        ("provisioner.data.dir", data.display().to_string()),
        ("provisioner.work.dir", work.display().to_string()),
        ("provisioner.capacity", "4".into()),
        ("provisioner.log.level", "debug".into()),
        ("provisioner.worker.poll.interval", "1".into()),
        ("provisioner.worker.poll.error.interval", "1".into()),
    ];
    let body: String = properties
        .iter()
        .map(|(k, v)| format!("  <property><name>{k}</name><value>{v}</value></property>\n"))
        .collect();
    format!("<?xml version=\"1.0\"?>\n<configuration>\n{body}</configuration>\n")
}

/// The Ruby provisioner's process group (it forks its workers): killed with SIGKILL when
/// dropped, whatever state the test left it in.
struct ProcessGroup(Child);

impl ProcessGroup {
    fn terminate_and_wait(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

fn ruby_provisioner(root: &Path, site: &Path, log: &Path, register: bool) -> Command {
    use std::os::unix::process::CommandExt as _;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut command = Command::new("ruby");
    command
        .arg(root.join("bin/provisioner"))
        .arg("--config-file")
        .arg(site)
        .current_dir(root)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0);
    if register {
        command.arg("--register");
    }
    command
}

/// One request with `headers`; the status and the body as JSON (`Null` when empty or not JSON).
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut request = http.request(method.clone(), url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn ok(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> Value {
    let body = (!body.is_null()).then(|| serde_json::to_vec(&body).expect("JSON"));
    let (status, answer) = call(http, method.clone(), url, headers, body).await;
    assert_eq!(status, 200, "{method} {url}: {answer}");
    answer
}

/// Waits until `probe` gives a value, polling every 200 ms, or fails the test after `timeout`.
async fn wait_until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The demo tenant's catalog for the test's plugins: the provider keeps its machines in
/// `cloud`; the template's config uses Coopr's macros, expanded per node before each task.
async fn write_catalog(http: &reqwest::Client, url: &str, cloud: &Path) {
    let entities = [
        (
            "providers",
            json!({"name": "ruby-test", "providertype": "coopr-test",
                   "provisioner": {"cloud_dir": cloud.display().to_string()}}),
        ),
        (
            "hardwaretypes",
            json!({"name": "rt-small", "providermap": {"ruby-test": {"flavor": "f1"}}}),
        ),
        (
            "imagetypes",
            json!({"name": "rt-image",
                   "providermap": {"ruby-test": {"image": "i1", "sshuser": "coopr"}}}),
        ),
        (
            "services",
            json!({"name": "rt-app", "provisioner": {"actions": {
                "install": {"type": "coopr-test-automator",
                            "fields": {"script": "hello.sh", "args": "install"}},
                "configure": {"type": "coopr-test-automator",
                              "fields": {"script": "hello.sh", "args": "configure"}},
                "start": {"type": "coopr-test-automator", "fields": {}},
                "stop": {"type": "coopr-test-automator", "fields": {}}}}}),
        ),
        (
            "clustertemplates",
            json!({"name": "ruby-app",
                   "compatibility": {"services": ["rt-app"]},
                   "defaults": {"services": ["rt-app"], "provider": "ruby-test",
                                "hardwaretype": "rt-small", "imagetype": "rt-image",
                                "dnsSuffix": "example.com",
                                "config": {"peers": "%host.service.rt-app%",
                                           "first": "%ip.service.rt-app[0]%",
                                           "count": "%num.service.rt-app%",
                                           "me": "%instance.self.service.rt-app%"}},
                   "constraints": {"size": {"min": 1, "max": 10}}}),
        ),
    ];
    for (kind, body) in entities {
        ok(
            http,
            Method::POST,
            &format!("{url}/v2/{kind}"),
            &DEMO_ADMIN,
            body,
        )
        .await;
    }
}

/// The automator's records (`actions.jsonl` in the work directory).
fn actions(work: &Path) -> Vec<Value> {
    std::fs::read_to_string(work.join("actions.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record {l}: {e}")))
        .collect()
}

/// The provider's machines (one JSON file each in the cloud directory).
fn machines(cloud: &Path) -> Vec<Value> {
    let mut found: Vec<(PathBuf, Value)> = std::fs::read_dir(cloud)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("machine file");
            (p, serde_json::from_str(&text).expect("machine JSON"))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn coopr_s_ruby_provisioner_provisions_a_cluster() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: the Ruby provisioner test needs {why}");
        return;
    }
    common::run_serially(ruby_provisioner_provisions_a_cluster());
}

async fn ruby_provisioner_provisions_a_cluster() {
    let mut d = Deployment::generate(1, 1, None, &[("demo_workers", 0)]);
    let node = &d.nodes[0];
    let mut config: toml::Table = std::fs::read_to_string(&node.config)
        .expect("config")
        .parse()
        .expect("TOML");
    for key in ["user_api_auth", "provisioner_api_auth"] {
        config.insert(key.into(), toml::Value::String("trusted-headers".into()));
    }
    std::fs::write(&node.config, toml::to_string(&config).expect("TOML")).expect("write");
    d.start_all();
    d.wait_ready(Duration::from_secs(60)).await;
    d.wait_leader("a", Duration::from_secs(60)).await;
    let url = d.nodes[0].api.clone();
    let http = d.http.clone();

    let dir = d.dir.path().to_path_buf();
    let root = dir.join("coopr-provisioner");
    install_provisioner(&root);
    let (data, work, cloud) = (
        dir.join("prov-data"),
        dir.join("prov-work"),
        dir.join("cloud"),
    );
    let port = common::free_base_port(1);
    let site = dir.join("provisioner-site.xml");
    std::fs::write(&site, site_config(&url, port, &data, &work)).expect("site config");
    let log = dir.join("ruby-provisioner.log");

    // 1. Plugin registration: the provisioner's `--register` PUTs each plugin type.
    let registered = ruby_provisioner(&root, &site, &log, true)
        .status()
        .expect("run the provisioner's --register");
    assert!(
        registered.success(),
        "--register failed: see {}",
        log.display()
    );
    let provider = ok(
        &http,
        Method::GET,
        &format!("{url}/v2/plugins/providertypes/coopr-test"),
        &DEMO_USER,
        Value::Null,
    )
    .await;
    assert_eq!(provider["name"], "coopr-test");
    assert!(provider.get("classname").is_none(), "{provider}");
    let automator = ok(
        &http,
        Method::GET,
        &format!("{url}/v2/plugins/automatortypes/coopr-test-automator"),
        &DEMO_USER,
        Value::Null,
    )
    .await;
    assert_eq!(
        automator["resourceTypes"]["scripts"],
        json!({"format": "file", "permissions": "0755"})
    );

    // 2. The tenant's catalog and a script resource, staged and synced (live).
    write_catalog(&http, &url, &cloud).await;
    let script = format!("{url}/v2/plugins/automatortypes/coopr-test-automator/scripts/hello.sh");
    for body in [
        "#!/bin/sh\necho \"old $*\"\n",
        "#!/bin/sh\necho \"hello $*\"\n",
    ] {
        let (status, answer) = call(
            &http,
            Method::POST,
            &script,
            &DEMO_ADMIN,
            Some(body.as_bytes().to_vec()),
        )
        .await;
        assert_eq!(status, 200, "upload: {answer}");
    }
    let stage = format!("{script}/versions/2/stage");
    ok(&http, Method::POST, &stage, &DEMO_ADMIN, Value::Null).await;
    let sync = format!("{url}/v2/plugins/sync");
    ok(&http, Method::POST, &sync, &DEMO_ADMIN, Value::Null).await;

    // 3. The provisioner starts, registers and heartbeats; the tenant push gives it workers.
    let child = ruby_provisioner(&root, &site, &log, false)
        .spawn()
        .expect("start the Ruby provisioner");
    let mut provisioner = ProcessGroup(child);
    // Its id, as `provisioner.rb` makes it: `master-{short hostname}-{pid}`.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let host = host.trim().to_lowercase();
    let host = host.split('.').next().unwrap_or_default().to_string();
    let id = format!("master-{host}-{}", provisioner.0.id());
    let provisioner_url = format!("{url}/v2/provisioners/{id}");
    ok(
        &http,
        Method::PUT,
        &format!("{url}/v2/tenants/demo"),
        &ADMIN,
        json!({"tenant": {"name": "demo", "workers": WORKERS}}),
    )
    .await;
    // The provisioner's own view (`GET /heartbeat`, what it reports to the server): workers
    // for one tenant, named by the ID the push used.
    let ruby_heartbeat = format!("http://127.0.0.1:{port}/heartbeat");
    let tenant_id = wait_until(
        "the provisioner running the demo tenant's workers",
        Duration::from_secs(60),
        || async {
            let usage = get_json(&http, &ruby_heartbeat, &[]).await?;
            let usage = usage["usage"].as_object()?.clone();
            match usage.iter().next() {
                Some((id, n)) if usage.len() == 1 && n == &json!(WORKERS) => Some(id.clone()),
                _ => None,
            }
        },
    )
    .await;
    let p = ok(&http, Method::GET, &provisioner_url, &ADMIN, Value::Null).await;
    assert_eq!(
        p["assignments"],
        json!({ tenant_id.as_str(): WORKERS }),
        "{p}"
    );
    // It fetched the live version of the script and activated it where its automator runs
    // (its work directory is named by the tenant ID the push used).
    let activated = work.join(format!(
        "{tenant_id}/automatortypes/coopr-test-automator/scripts/hello.sh"
    ));
    assert_eq!(
        std::fs::read_to_string(&activated).expect("the activated script"),
        "#!/bin/sh\necho \"hello $*\"\n"
    );

    // 4. A cluster, provisioned by the Ruby workers.
    let (status, created) = call(
        &http,
        Method::POST,
        &format!("{url}/v2/clusters"),
        &DEMO_USER,
        Some(
            serde_json::to_vec(
                &json!({"name": "ruby", "clusterTemplate": "ruby-app", "numMachines": MACHINES}),
            )
            .expect("JSON"),
        ),
    )
    .await;
    assert_eq!(status, 200, "create: {created}");
    let cluster = created["id"].as_str().expect("cluster id").to_string();
    wait_cluster_status(&http, &url, &cluster, "active", CLUSTER_TIMEOUT).await;

    let made = machines(&cloud);
    assert_eq!(made.len() as u64, MACHINES, "{made:?}");
    let nodes = ok(
        &http,
        Method::GET,
        &format!("{url}/v2/clusters/{cluster}"),
        &DEMO_USER,
        Value::Null,
    )
    .await;
    let mut hosts: Vec<(u64, String, String)> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["properties"]["nodenum"].as_u64().expect("nodenum"),
                n["properties"]["hostname"]
                    .as_str()
                    .expect("hostname")
                    .into(),
                n["properties"]["ipaddresses"]["bind_v4"]
                    .as_str()
                    .expect("the address confirm gave")
                    .into(),
            )
        })
        .collect();
    hosts.sort();
    let records = actions(&work);
    for (i, (_, hostname, ip)) in hosts.iter().enumerate() {
        let of_node: Vec<&Value> = records
            .iter()
            .filter(|r| r["hostname"] == hostname.as_str())
            .collect();
        let names: Vec<&str> = of_node
            .iter()
            .filter_map(|r| r["action"].as_str())
            .collect();
        assert_eq!(
            names,
            ["bootstrap", "install", "configure", "start"],
            "{records:#?}"
        );
        let configure = of_node[2];
        assert_eq!(configure["ipaddress"], ip.as_str());
        assert_eq!(
            configure["output"], "hello configure\n",
            "the script resource ran"
        );
        // The macros, expanded for this node.
        let cluster_config = &configure["cluster"];
        let mut peers: Vec<&str> = hosts.iter().map(|h| h.1.as_str()).collect();
        peers.sort();
        let mut got: Vec<&str> = cluster_config["peers"]
            .as_str()
            .expect("peers")
            .split(',')
            .collect();
        got.sort();
        assert_eq!(got, peers, "{cluster_config}");
        assert_eq!(cluster_config["count"], MACHINES.to_string());
        assert_eq!(cluster_config["first"], hosts[0].2.as_str());
        assert_eq!(cluster_config["me"], (i + 1).to_string());
    }

    // 5. Its delete: the machines gone, the cluster terminated.
    ok(
        &http,
        Method::DELETE,
        &format!("{url}/v2/clusters/{cluster}"),
        &DEMO_USER,
        Value::Null,
    )
    .await;
    wait_cluster_status(&http, &url, &cluster, "terminated", CLUSTER_TIMEOUT).await;
    assert!(machines(&cloud).is_empty(), "{:?}", machines(&cloud));
    // As in Coopr, a cluster's delete runs the provider's DELETE only, no service action.
    assert_eq!(actions(&work), records);

    // 6. No workers for the tenant: the push takes them away; on TERM the provisioner stops
    // and unregisters.
    ok(
        &http,
        Method::PUT,
        &format!("{url}/v2/tenants/demo"),
        &ADMIN,
        json!({"tenant": {"name": "demo", "workers": 0}}),
    )
    .await;
    wait_until(
        "the provisioner's workers for the tenant stopped",
        Duration::from_secs(60),
        || async {
            let usage = get_json(&http, &ruby_heartbeat, &[]).await?;
            (usage["usage"] == json!({})).then_some(())
        },
    )
    .await;
    assert!(
        provisioner.terminate_and_wait(Duration::from_secs(30)),
        "the provisioner did not stop on TERM"
    );
    let (status, _) = call(&http, Method::GET, &provisioner_url, &ADMIN, None).await;
    assert_eq!(status, 404, "the provisioner unregistered itself");
}
