//! The built-in `fake` provider and `fake` automator, for tests, demos and simulation.
//!
//! ```text
//!   CREATE  ──► FakeProvider ──► FakeCloud { node id ─► FakeMachine }   (create is idempotent)
//!   CONFIRM ──►                  exists? success : failure
//!   DELETE  ──►                  remove (idempotent)
//!   INSTALL ... ──► FakeAutomator: sleep, maybe fail, "fake: install mysql on host"
//! ```
//!
//! Machines are keyed by the task's `nodeId`, so a CREATE the server re-issues (after a worker
//! timeout, say) finds the machine the first attempt made instead of making another one:
//! [`FakeCloud::machines_created`] counts creations ever, which is what tests use to prove it.
//! [`FakeCloud::open`] keeps the machines in a JSON file so this holds across provisioner restarts.
//!
//! Latency and failures are injected per task: `config.provider.provisioner.latency_ms` /
//! `failure_rate` for the provider, `config.service.action.fields.latency_ms` / `failure_rate`
//! for the automator, falling back to [`FakeCloudOptions`]. Failures are drawn from a seeded
//! xorshift generator shared by every plugin of one cloud, so a single-worker run is reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coopr_types::TaskName;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::plugin::{number_at, str_at, Plugin, PluginFuture, PluginResult};

/// Defaults for injected behaviour, used when a task does not set its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeCloudOptions {
    /// How long each operation takes. Default 0.
    pub latency_ms: u64,
    /// Probability in `0.0..=1.0` that an operation fails (before it has any effect). Default 0.0.
    pub failure_rate: f64,
    /// Seed of the xorshift generator that draws failures. Default `0x9E37_79B9_7F4A_7C15`.
    pub seed: u64,
}

impl Default for FakeCloudOptions {
    fn default() -> Self {
        FakeCloudOptions {
            latency_ms: 0,
            failure_rate: 0.0,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

/// One simulated machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FakeMachine {
    pub node_id: String,
    /// `fake-<n>`, where n counts creations in this cloud.
    pub provider_id: String,
    pub hostname: String,
    /// `access_v4` and `bind_v4`, both `10.x.y.z`.
    pub ipaddresses: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum FakeCloudError {
    #[error("cannot read fake cloud state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fake cloud state {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write fake cloud state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The xorshift64 generator (Marsaglia 2003): deterministic, dependency-free, good enough to
/// decide injected failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator from `seed`; a zero seed (a fixed point of xorshift) is replaced by a constant.
    pub fn new(seed: u64) -> Self {
        XorShift64 {
            state: if seed == 0 {
                0x2545_F491_4F6C_DD1D
            } else {
                seed
            },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Uniform in `[0.0, 1.0)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `rate` (clamped to `0.0..=1.0`; NaN counts as 0).
    pub fn chance(&mut self, rate: f64) -> bool {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.next_f64() < rate
    }
}

/// What is kept on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    machines: BTreeMap<String, FakeMachine>,
    machines_created: u64,
}

#[derive(Debug)]
struct State {
    snapshot: Snapshot,
    options: FakeCloudOptions,
    rng: XorShift64,
    path: Option<PathBuf>,
}

impl State {
    /// Writes `next` to the state file (if any) and only then makes it current, so memory never
    /// runs ahead of disk.
    fn commit(&mut self, next: Snapshot) -> Result<(), FakeCloudError> {
        if let Some(path) = &self.path {
            persist(path, &next)?;
        }
        self.snapshot = next;
        Ok(())
    }
}

/// A simulated cloud: machines keyed by node id. Cheap to clone; clones share the machines.
///
/// The state file is written synchronously under a lock on every change; this is a test double,
/// and its files are small.
#[derive(Debug, Clone)]
pub struct FakeCloud {
    state: Arc<Mutex<State>>,
}

impl Default for FakeCloud {
    fn default() -> Self {
        Self::new(FakeCloudOptions::default())
    }
}

impl FakeCloud {
    /// An in-memory cloud.
    pub fn new(options: FakeCloudOptions) -> Self {
        FakeCloud {
            state: Arc::new(Mutex::new(State {
                snapshot: Snapshot::default(),
                options,
                rng: XorShift64::new(options.seed),
                path: None,
            })),
        }
    }

    /// A cloud persisted to `path` (created on the first change if missing), with default options.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, FakeCloudError> {
        Self::open_with(path, FakeCloudOptions::default())
    }

    /// A cloud persisted to `path` (created on the first change if missing).
    pub fn open_with(
        path: impl Into<PathBuf>,
        options: FakeCloudOptions,
    ) -> Result<Self, FakeCloudError> {
        let path = path.into();
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| FakeCloudError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(source) => return Err(FakeCloudError::Read { path, source }),
        };
        let cloud = Self::new(options);
        {
            let mut state = cloud.lock();
            state.snapshot = snapshot;
            state.path = Some(path);
        }
        Ok(cloud)
    }

    /// Creations ever, including machines since deleted.
    pub fn machines_created(&self) -> u64 {
        self.lock().snapshot.machines_created
    }

    /// Machines that exist now.
    pub fn machines_alive(&self) -> usize {
        self.lock().snapshot.machines.len()
    }

    pub fn machine(&self, node_id: &str) -> Option<FakeMachine> {
        self.lock().snapshot.machines.get(node_id).cloned()
    }

    pub fn options(&self) -> FakeCloudOptions {
        self.lock().options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written (changes are
        // committed by a single assignment), so a poisoned lock is safe to reuse.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn roll_failure(&self, rate: f64) -> bool {
        self.lock().rng.chance(rate)
    }

    /// Returns the node's machine, creating it if there is none; `true` if it was created now.
    fn create(
        &self,
        node_id: &str,
        hostname: impl FnOnce(u64) -> String,
    ) -> Result<(FakeMachine, bool), FakeCloudError> {
        let mut state = self.lock();
        if let Some(machine) = state.snapshot.machines.get(node_id) {
            return Ok((machine.clone(), false));
        }
        let number = state.snapshot.machines_created + 1;
        let address = ipv4_for(number);
        let machine = FakeMachine {
            node_id: node_id.to_string(),
            provider_id: format!("fake-{number}"),
            hostname: hostname(number),
            ipaddresses: Map::from_iter([
                ("access_v4".to_string(), json!(address)),
                ("bind_v4".to_string(), json!(address)),
            ]),
        };
        let mut next = Snapshot {
            machines: state.snapshot.machines.clone(),
            machines_created: number,
        };
        next.machines.insert(node_id.to_string(), machine.clone());
        state.commit(next)?;
        Ok((machine, true))
    }

    /// Removes the node's machine, returning it if there was one.
    fn delete(&self, node_id: &str) -> Result<Option<FakeMachine>, FakeCloudError> {
        let mut state = self.lock();
        if !state.snapshot.machines.contains_key(node_id) {
            return Ok(None);
        }
        let mut next = Snapshot {
            machines: state.snapshot.machines.clone(),
            machines_created: state.snapshot.machines_created,
        };
        let removed = next.machines.remove(node_id);
        state.commit(next)?;
        Ok(removed)
    }

    /// Sleeps the latency and draws a failure, using the task's settings under `pointer_prefix`
    /// when present; returns the failure to report, if one was drawn.
    async fn simulate(&self, task: &Value, pointer_prefix: &str) -> Option<PluginResult> {
        let defaults = self.options();
        let latency_ms = number_at(task, &format!("{pointer_prefix}/latency_ms"))
            .map(|ms| ms.max(0.0) as u64)
            .unwrap_or(defaults.latency_ms);
        let failure_rate = number_at(task, &format!("{pointer_prefix}/failure_rate"))
            .unwrap_or(defaults.failure_rate);
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
        self.roll_failure(failure_rate).then(|| {
            PluginResult::failure(format!(
                "fake: injected failure (failure_rate={failure_rate})"
            ))
        })
    }
}

/// `10.x.y.z` for the n-th machine (n from 1), skipping `.0` and `.255` in the last octet.
fn ipv4_for(number: u64) -> String {
    let number = number.saturating_sub(1);
    let z = number % 254 + 1;
    let y = (number / 254) % 256;
    let x = (number / (254 * 256)) % 256;
    format!("10.{x}.{y}.{z}")
}

fn persist(path: &Path, snapshot: &Snapshot) -> Result<(), FakeCloudError> {
    let write_error = |source| FakeCloudError::Write {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(snapshot).map_err(|e| write_error(e.into()))?;
    // Write-then-rename so a crash leaves either the old or the new file, never half of one.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)
}

/// The hostname for a new machine: the task's `config.hostname` when the server assigned one,
/// else `<cluster name or "node">-<nodenum or n>.<dnsSuffix or "coopr.local">`.
fn hostname_for(task: &Value, number: u64) -> String {
    if let Some(hostname) = str_at(task, "/config/hostname") {
        return hostname.to_string();
    }
    let prefix = str_at(task, "/config/clustername")
        .or_else(|| str_at(task, "/config/clusterName"))
        .unwrap_or("node");
    let nodenum = number_at(task, "/config/nodenum")
        .map(|n| n as u64)
        .unwrap_or(number);
    let suffix = str_at(task, "/config/dnsSuffix")
        .or_else(|| str_at(task, "/config/dnssuffix"))
        .unwrap_or("coopr.local");
    format!("{prefix}-{nodenum}.{suffix}")
}

fn machine_result(machine: &FakeMachine, stdout: String) -> PluginResult {
    PluginResult {
        status: 0,
        stdout,
        stderr: String::new(),
        hostname: Some(machine.hostname.clone()),
        ipaddresses: Some(machine.ipaddresses.clone()),
        result: Map::from_iter([("providerid".to_string(), json!(machine.provider_id))]),
    }
}

fn task_name(task: &Value) -> Option<TaskName> {
    task.get("taskName")
        .and_then(Value::as_str)
        .and_then(TaskName::parse_ignore_case)
}

/// The `fake` provider plugin: CREATE, CONFIRM and DELETE against a [`FakeCloud`].
#[derive(Debug, Clone)]
pub struct FakeProvider {
    cloud: FakeCloud,
}

impl FakeProvider {
    pub fn new(cloud: FakeCloud) -> Self {
        FakeProvider { cloud }
    }

    async fn run_task(&self, task: &Value) -> PluginResult {
        let Some(node_id) = str_at(task, "/nodeId") else {
            return PluginResult::failure("fake: task has no nodeId");
        };
        let name = task_name(task);
        if let Some(failure) = self
            .cloud
            .simulate(task, "/config/provider/provisioner")
            .await
        {
            return failure;
        }
        let outcome = match name {
            Some(TaskName::Create) => {
                self.cloud
                    .create(node_id, |n| hostname_for(task, n))
                    .map(|(machine, created)| {
                        let verb = if created { "created" } else { "found existing" };
                        let stdout = format!(
                            "fake: {verb} {} ({}) for node {node_id}",
                            machine.provider_id, machine.hostname
                        );
                        machine_result(&machine, stdout)
                    })
            }
            Some(TaskName::Confirm) => Ok(match self.cloud.machine(node_id) {
                Some(machine) => machine_result(
                    &machine,
                    format!("fake: {} is running", machine.provider_id),
                ),
                // Several provisioner processes (one per server of a DC in the demo) each keep
                // their own copy of the one simulated cloud: a machine another one created is
                // known by the provider id the server passes along.
                None => match str_at(task, "/config/providerid")
                    .filter(|id| id.starts_with("fake-"))
                {
                    Some(id) => PluginResult::success(format!(
                        "fake: {id} is running (created by another provisioner)"
                    )),
                    None => PluginResult::failure(format!("fake: no machine for node {node_id}")),
                },
            }),
            Some(TaskName::Delete) => self.cloud.delete(node_id).map(|removed| match removed {
                Some(machine) => {
                    PluginResult::success(format!("fake: deleted {}", machine.provider_id))
                }
                None => PluginResult::success(format!(
                    "fake: no machine for node {node_id}; nothing to delete"
                )),
            }),
            _ => Ok(PluginResult::failure(format!(
                "fake provider cannot run task {:?}",
                task.get("taskName").unwrap_or(&Value::Null)
            ))),
        };
        outcome.unwrap_or_else(|e| PluginResult::failure(format!("fake: {e}")))
    }
}

impl Plugin for FakeProvider {
    fn name(&self) -> &str {
        "fake"
    }

    fn run<'a>(&'a self, task: &'a Value) -> PluginFuture<'a> {
        Box::pin(self.run_task(task))
    }
}

/// The `fake` automator plugin: every service task (and bootstrap) sleeps the latency, maybe
/// fails, and otherwise succeeds with `fake: <action> <service> on <host>`.
#[derive(Debug, Clone)]
pub struct FakeAutomator {
    cloud: FakeCloud,
}

impl FakeAutomator {
    pub fn new(cloud: FakeCloud) -> Self {
        FakeAutomator { cloud }
    }

    async fn run_task(&self, task: &Value) -> PluginResult {
        if let Some(failure) = self
            .cloud
            .simulate(task, "/config/service/action/fields")
            .await
        {
            return failure;
        }
        let action = task
            .get("taskName")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_ascii_lowercase();
        let host = str_at(task, "/config/hostname")
            .or_else(|| str_at(task, "/nodeId"))
            .unwrap_or("unknown-host");
        match str_at(task, "/config/service/name") {
            Some(service) => PluginResult::success(format!("fake: {action} {service} on {host}")),
            None => PluginResult::success(format!("fake: {action} on {host}")),
        }
    }
}

impl Plugin for FakeAutomator {
    fn name(&self) -> &str {
        "fake"
    }

    fn run<'a>(&'a self, task: &'a Value) -> PluginFuture<'a> {
        Box::pin(self.run_task(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider_task(name: &str, node: &str) -> Value {
        json!({"taskId": "00000001-001-001", "taskName": name, "nodeId": node, "clusterId": "00000001",
            "config": {"nodenum": 1000, "provider": {"providertype": "fake", "provisioner": {}}}})
    }

    /// Idempotency, proven by count: two CREATEs for one node make one machine and return the
    /// same answer; DELETE twice is fine; a later CREATE makes a new machine.
    #[tokio::test]
    async fn create_is_idempotent_per_node() {
        let cloud = FakeCloud::default();
        let provider = FakeProvider::new(cloud.clone());
        let first = provider.run(&provider_task("CREATE", "n1")).await;
        let second = provider.run(&provider_task("CREATE", "n1")).await;
        assert!(first.is_success(), "{first:?}");
        assert_eq!(cloud.machines_created(), 1);
        assert_eq!(first.hostname, second.hostname);
        assert_eq!(first.ipaddresses, second.ipaddresses);
        assert_eq!(first.result, second.result);
        assert_eq!(first.hostname.as_deref(), Some("node-1000.coopr.local"));
        assert_eq!(first.result["providerid"], json!("fake-1"));
        let addresses = first.ipaddresses.expect("addresses");
        assert_eq!(addresses["access_v4"], json!("10.0.0.1"));
        assert_eq!(addresses["bind_v4"], addresses["access_v4"]);

        assert!(provider
            .run(&provider_task("CONFIRM", "n1"))
            .await
            .is_success());
        assert!(!provider
            .run(&provider_task("CONFIRM", "n2"))
            .await
            .is_success());

        assert!(provider
            .run(&provider_task("DELETE", "n1"))
            .await
            .is_success());
        assert!(provider
            .run(&provider_task("DELETE", "n1"))
            .await
            .is_success());
        assert_eq!(cloud.machines_alive(), 0);
        assert!(!provider
            .run(&provider_task("CONFIRM", "n1"))
            .await
            .is_success());

        provider.run(&provider_task("CREATE", "n1")).await;
        assert_eq!((cloud.machines_created(), cloud.machines_alive()), (2, 1));
    }

    /// The hostname is derived from the cluster name, nodenum and DNS suffix the server sends, and a
    /// server-assigned hostname wins over the derived one.
    #[tokio::test]
    async fn create_uses_task_hostname() {
        let provider = FakeProvider::new(FakeCloud::default());
        let mut task = provider_task("CREATE", "n0");
        task["config"]["clustername"] = json!("dev");
        task["config"]["dnsSuffix"] = json!("example.com");
        let derived = provider.run(&task).await;
        assert_eq!(derived.hostname.as_deref(), Some("dev-1000.example.com"));

        let mut task = provider_task("CREATE", "n1");
        task["config"]["hostname"] = json!("dev79-1000.local");
        let result = provider.run(&task).await;
        assert_eq!(result.hostname.as_deref(), Some("dev79-1000.local"));
    }

    /// Persistence: a cloud reopened from its file still knows the machine, so a CREATE after a
    /// provisioner restart does not make a second one.
    #[tokio::test]
    async fn idempotency_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cloud.json");
        let first = FakeCloud::open(&path).expect("open");
        FakeProvider::new(first.clone())
            .run(&provider_task("CREATE", "n1"))
            .await;
        drop(first);

        let reopened = FakeCloud::open(&path).expect("reopen");
        assert_eq!(reopened.machines_alive(), 1);
        let again = FakeProvider::new(reopened.clone())
            .run(&provider_task("CREATE", "n1"))
            .await;
        assert!(again.is_success());
        assert_eq!(reopened.machines_created(), 1);
        assert_eq!(again.result["providerid"], json!("fake-1"));
    }

    /// failure_rate 1.0 always fails, whether set in the task or as the cloud default, and a
    /// failed CREATE creates nothing.
    #[tokio::test]
    async fn failure_rate_one_always_fails() {
        let cloud = FakeCloud::default();
        let provider = FakeProvider::new(cloud.clone());
        let mut task = provider_task("CREATE", "n1");
        task["config"]["provider"]["provisioner"]["failure_rate"] = json!("1.0");
        for _ in 0..50 {
            let result = provider.run(&task).await;
            assert_eq!(result.status, 1);
            assert!(result.stderr.contains("injected failure"));
        }
        assert_eq!(cloud.machines_created(), 0);

        let always = FakeCloud::new(FakeCloudOptions {
            failure_rate: 1.0,
            ..FakeCloudOptions::default()
        });
        let automator = FakeAutomator::new(always);
        let install = json!({"taskName": "INSTALL", "nodeId": "n1",
            "config": {"service": {"name": "mysql", "action": {"type": "fake"}}}});
        for _ in 0..50 {
            assert_eq!(automator.run(&install).await.status, 1);
        }
    }

    /// The failure draw is reproducible from the seed and roughly honours the rate.
    #[test]
    fn xorshift_is_seeded_and_fair() {
        let draws = |seed| {
            let mut rng = XorShift64::new(seed);
            (0..1000).map(|_| rng.chance(0.3)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let failures = draws(7).into_iter().filter(|f| *f).count();
        assert!(
            (200..400).contains(&failures),
            "{failures} failures of 1000"
        );
        let mut rng = XorShift64::new(0);
        assert!((0..100).all(|_| !rng.chance(0.0)));
    }

    /// The fake automator reports what it pretended to do, and where.
    #[tokio::test]
    async fn automator_reports_action() {
        let automator = FakeAutomator::new(FakeCloud::default());
        let task = json!({"taskName": "INSTALL", "nodeId": "n1",
            "config": {"hostname": "host", "service": {"name": "mysql", "action": {"type": "fake"}}}});
        let result = automator.run(&task).await;
        assert_eq!(result.status, 0);
        assert_eq!(result.stdout, "fake: install mysql on host");
    }
}
