//! The built-in `fake` provider and `fake` automator, for tests, demos and simulation.
//!
//! ```text
//!   CREATE  ──► FakeProvider ──► FakeBackend ──► Local:  FakeCloud { node id ─► FakeMachine }
//!   CONFIRM ──►                      │                   (create is idempotent per node id)
//!   DELETE  ──►                      └─────────► Remote: RemoteCloud ──HTTP──► server.rs
//!                                                        (one FakeCloud shared by every DC)
//!   INSTALL ... ──► FakeAutomator: sleep, maybe fail, "fake: install mysql on host"
//! ```
//!
//! Machines are keyed by the task's `nodeId`, so a CREATE the server re-issues (after a worker
//! timeout, say) finds the machine the first attempt made instead of making another one:
//! [`FakeCloud::machines_created`] counts creations ever, and every node id keeps its own
//! counts of creates and deletes ([`FakeMachine::creates`]), which is what tests use to prove it.
//! [`FakeCloud::open`] keeps the machines in a JSON file so this holds across provisioner restarts.
//!
//! One cloud per provisioner process cannot show what happens across datacenters: when a DC
//! fails over, another DC's provisioners finish its operations, and only a cloud they all share
//! can tell whether a machine was made twice or left behind. `coopr fake-cloud` serves one
//! [`FakeCloud`] over HTTP ([`server`]); provisioners given its URL use it through
//! [`RemoteCloud`] ([`remote`]), with the same provider logic as the in-process cloud.
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

pub mod api;
pub mod remote;
pub mod server;

pub use api::{CreateAnswer, CreateRequest, Injection, MachineList};
pub use remote::{RemoteCloud, RemoteCloudError, RetryPolicy};
pub use server::FakeCloudServer;

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

/// One node id's machine: the live one, or the last one it had after a delete.
///
/// The counts are what a test checks to prove that no machine was made twice (`creates` stays
/// 1 through retried CREATEs) or leaked (`alive` is false after the cluster's delete). State
/// files written before the counts existed held live machines only, hence the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FakeMachine {
    pub node_id: String,
    /// `fake-<n>`, where n counts creations in this cloud.
    pub provider_id: String,
    pub hostname: String,
    /// `access_v4` and `bind_v4`, both `10.x.y.z`.
    pub ipaddresses: Map<String, Value>,
    /// Whether the machine exists now (false once deleted). Default true.
    #[serde(default = "default_alive")]
    pub alive: bool,
    /// Machines actually created for this node id: a CREATE for a live machine does not count,
    /// a CREATE after a delete does. Default 1.
    #[serde(default = "default_creates")]
    pub creates: u64,
    /// Deletes of a live machine of this node id (a DELETE of nothing does not count). Default 0.
    #[serde(default)]
    pub deletes: u64,
}

fn default_alive() -> bool {
    true
}

fn default_creates() -> u64 {
    1
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
    /// Drawn before the operation had any effect; retrying may succeed.
    #[error("injected failure (failure_rate={failure_rate})")]
    InjectedFailure { failure_rate: f64 },
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
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    /// Every node id ever seen, alive or not.
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
    /// Sets the node's machine (and the count of machines created) and writes the state file,
    /// if any; if that write fails the change is undone, so memory never runs ahead of disk.
    /// In place: copying every machine ever seen on each change made a long run quadratic.
    fn commit(
        &mut self,
        node_id: &str,
        machine: FakeMachine,
        machines_created: u64,
    ) -> Result<(), FakeCloudError> {
        let previous_count =
            std::mem::replace(&mut self.snapshot.machines_created, machines_created);
        let previous = self.snapshot.machines.insert(node_id.to_string(), machine);
        let Some(path) = &self.path else {
            return Ok(());
        };
        let written = persist(path, &self.snapshot);
        if written.is_err() {
            self.snapshot.machines_created = previous_count;
            match previous {
                Some(machine) => self.snapshot.machines.insert(node_id.to_string(), machine),
                None => self.snapshot.machines.remove(node_id),
            };
        }
        written
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
        self.lock()
            .snapshot
            .machines
            .values()
            .filter(|m| m.alive)
            .count()
    }

    /// The node's live machine.
    pub fn machine(&self, node_id: &str) -> Option<FakeMachine> {
        self.record(node_id).filter(|m| m.alive)
    }

    /// The node's machine, live or deleted, with its counts.
    pub fn record(&self, node_id: &str) -> Option<FakeMachine> {
        self.lock().snapshot.machines.get(node_id).cloned()
    }

    /// Every node id ever seen, by node id, with the totals.
    pub fn machines(&self) -> MachineList {
        let state = self.lock();
        let machines: Vec<FakeMachine> = state.snapshot.machines.values().cloned().collect();
        MachineList {
            machines_created: state.snapshot.machines_created,
            machines_alive: machines.iter().filter(|m| m.alive).count(),
            machines,
        }
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

    /// CREATE: sleeps the latency, draws a failure, then returns the node's live machine,
    /// creating one if there is none (`created` says which).
    pub async fn create_machine(
        &self,
        node_id: &str,
        request: &CreateRequest,
    ) -> Result<CreateAnswer, FakeCloudError> {
        self.inject(request.injection()).await?;
        self.create(node_id, |number| hostname_for(request, number))
    }

    /// CONFIRM: sleeps the latency, draws a failure, then returns the node's live machine.
    pub async fn confirm_machine(
        &self,
        node_id: &str,
        injection: Injection,
    ) -> Result<Option<FakeMachine>, FakeCloudError> {
        self.inject(injection).await?;
        Ok(self.machine(node_id))
    }

    /// DELETE: sleeps the latency, draws a failure, then deletes the node's live machine,
    /// returning it (`None`: there was nothing to delete, which is fine).
    pub async fn delete_machine(
        &self,
        node_id: &str,
        injection: Injection,
    ) -> Result<Option<FakeMachine>, FakeCloudError> {
        self.inject(injection).await?;
        self.delete(node_id)
    }

    /// Sleeps the latency and draws a failure, with the cloud's defaults where `injection` has
    /// none; an error is the injected failure.
    pub async fn inject(&self, injection: Injection) -> Result<(), FakeCloudError> {
        let defaults = self.options();
        let latency_ms = injection.latency_ms.unwrap_or(defaults.latency_ms);
        let failure_rate = injection.failure_rate.unwrap_or(defaults.failure_rate);
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
        if self.roll_failure(failure_rate) {
            return Err(FakeCloudError::InjectedFailure { failure_rate });
        }
        Ok(())
    }

    /// Returns the node's live machine, creating it if there is none.
    fn create(
        &self,
        node_id: &str,
        hostname: impl FnOnce(u64) -> String,
    ) -> Result<CreateAnswer, FakeCloudError> {
        let mut state = self.lock();
        let known = state.snapshot.machines.get(node_id);
        if let Some(machine) = known.filter(|m| m.alive) {
            return Ok(CreateAnswer {
                machine: machine.clone(),
                created: false,
            });
        }
        let (creates, deletes) = known.map_or((0, 0), |m| (m.creates, m.deletes));
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
            alive: true,
            creates: creates + 1,
            deletes,
        };
        state.commit(node_id, machine.clone(), number)?;
        Ok(CreateAnswer {
            machine,
            created: true,
        })
    }

    /// Marks the node's live machine deleted, returning it if there was one.
    fn delete(&self, node_id: &str) -> Result<Option<FakeMachine>, FakeCloudError> {
        let mut state = self.lock();
        let Some(live) = state.snapshot.machines.get(node_id).filter(|m| m.alive) else {
            return Ok(None);
        };
        let removed = live.clone();
        let created = state.snapshot.machines_created;
        state.commit(
            node_id,
            FakeMachine {
                alive: false,
                deletes: removed.deletes + 1,
                ..removed.clone()
            },
            created,
        )?;
        Ok(Some(removed))
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
fn hostname_for(request: &CreateRequest, number: u64) -> String {
    if let Some(hostname) = &request.hostname {
        return hostname.clone();
    }
    let prefix = request.cluster_name.as_deref().unwrap_or("node");
    let nodenum = request.nodenum.unwrap_or(number);
    let suffix = request.dns_suffix.as_deref().unwrap_or("coopr.local");
    format!("{prefix}-{nodenum}.{suffix}")
}

/// What a CREATE task asks of the cloud: the parts of its hostname and its injection overrides.
fn create_request(task: &Value) -> CreateRequest {
    let name = |pointers: &[&str]| {
        pointers
            .iter()
            .find_map(|p| str_at(task, p))
            .map(str::to_string)
    };
    let injection = injection_at(task, PROVIDER_INJECTION);
    CreateRequest {
        hostname: name(&["/config/hostname"]),
        cluster_name: name(&["/config/clustername", "/config/clusterName"]),
        nodenum: number_at(task, "/config/nodenum").map(|n| n.max(0.0) as u64),
        dns_suffix: name(&["/config/dnsSuffix", "/config/dnssuffix"]),
        latency_ms: injection.latency_ms,
        failure_rate: injection.failure_rate,
    }
}

/// Where a provider task carries its injection overrides.
const PROVIDER_INJECTION: &str = "/config/provider/provisioner";
/// Where a service task carries its injection overrides.
const AUTOMATOR_INJECTION: &str = "/config/service/action/fields";

/// The task's `latency_ms` and `failure_rate` under `pointer_prefix`, when present. Numeric
/// strings count, as Coopr accepts them; a negative latency is 0.
fn injection_at(task: &Value, pointer_prefix: &str) -> Injection {
    Injection {
        latency_ms: number_at(task, &format!("{pointer_prefix}/latency_ms"))
            .map(|ms| ms.max(0.0) as u64),
        failure_rate: number_at(task, &format!("{pointer_prefix}/failure_rate")),
    }
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

/// Where the `fake` provider's machines live: a cloud in this process, or the one cloud every
/// datacenter shares, over HTTP. Both keep the same promises (create idempotent per node id,
/// delete idempotent, failures injected before any effect).
#[derive(Debug, Clone)]
pub enum FakeBackend {
    Local(FakeCloud),
    Remote(RemoteCloud),
}

/// Why a backend call failed; the task fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum FakeBackendError {
    #[error(transparent)]
    Local(#[from] FakeCloudError),
    #[error(transparent)]
    Remote(#[from] RemoteCloudError),
}

impl FakeBackend {
    async fn create(
        &self,
        node_id: &str,
        request: &CreateRequest,
    ) -> Result<CreateAnswer, FakeBackendError> {
        Ok(match self {
            FakeBackend::Local(cloud) => cloud.create_machine(node_id, request).await?,
            FakeBackend::Remote(cloud) => cloud.create(node_id, request).await?,
        })
    }

    async fn confirm(
        &self,
        node_id: &str,
        injection: Injection,
    ) -> Result<Option<FakeMachine>, FakeBackendError> {
        Ok(match self {
            FakeBackend::Local(cloud) => cloud.confirm_machine(node_id, injection).await?,
            FakeBackend::Remote(cloud) => cloud.confirm(node_id, injection).await?,
        })
    }

    async fn delete(
        &self,
        node_id: &str,
        injection: Injection,
    ) -> Result<Option<FakeMachine>, FakeBackendError> {
        Ok(match self {
            FakeBackend::Local(cloud) => cloud.delete_machine(node_id, injection).await?,
            FakeBackend::Remote(cloud) => cloud.delete(node_id, injection).await?,
        })
    }
}

/// The `fake` provider plugin: CREATE, CONFIRM and DELETE against a [`FakeBackend`].
#[derive(Debug, Clone)]
pub struct FakeProvider {
    backend: FakeBackend,
}

impl FakeProvider {
    /// A provider on a cloud in this process.
    pub fn new(cloud: FakeCloud) -> Self {
        Self::on(FakeBackend::Local(cloud))
    }

    pub fn on(backend: FakeBackend) -> Self {
        FakeProvider { backend }
    }

    async fn run_task(&self, task: &Value) -> PluginResult {
        let Some(node_id) = str_at(task, "/nodeId") else {
            return PluginResult::failure("fake: task has no nodeId");
        };
        let outcome = match task_name(task) {
            Some(TaskName::Create) => self.create(task, node_id).await,
            Some(TaskName::Confirm) => self.confirm(task, node_id).await,
            Some(TaskName::Delete) => self.delete(task, node_id).await,
            _ => Ok(PluginResult::failure(format!(
                "fake provider cannot run task {:?}",
                task.get("taskName").unwrap_or(&Value::Null)
            ))),
        };
        outcome.unwrap_or_else(|e| PluginResult::failure(format!("fake: {e}")))
    }

    async fn create(&self, task: &Value, node_id: &str) -> Result<PluginResult, FakeBackendError> {
        let answer = self.backend.create(node_id, &create_request(task)).await?;
        let machine = &answer.machine;
        let verb = if answer.created {
            "created"
        } else {
            "found existing"
        };
        let stdout = format!(
            "fake: {verb} {} ({}) for node {node_id}",
            machine.provider_id, machine.hostname
        );
        Ok(machine_result(machine, stdout))
    }

    async fn confirm(&self, task: &Value, node_id: &str) -> Result<PluginResult, FakeBackendError> {
        let injection = injection_at(task, PROVIDER_INJECTION);
        if let Some(machine) = self.backend.confirm(node_id, injection).await? {
            let stdout = format!("fake: {} is running", machine.provider_id);
            return Ok(machine_result(&machine, stdout));
        }
        // Several provisioner processes with clouds of their own (one per server of a DC in a
        // deployment without a shared cloud) each keep a copy of the one simulated cloud: a
        // machine another one created is known by the provider id the server passes along. A
        // shared cloud knows every machine, so there its answer stands.
        let vouched = match &self.backend {
            FakeBackend::Local(_) => {
                str_at(task, "/config/providerid").filter(|id| id.starts_with("fake-"))
            }
            FakeBackend::Remote(_) => None,
        };
        Ok(match vouched {
            Some(id) => PluginResult::success(format!(
                "fake: {id} is running (created by another provisioner)"
            )),
            None => PluginResult::failure(format!("fake: no machine for node {node_id}")),
        })
    }

    async fn delete(&self, task: &Value, node_id: &str) -> Result<PluginResult, FakeBackendError> {
        let injection = injection_at(task, PROVIDER_INJECTION);
        Ok(match self.backend.delete(node_id, injection).await? {
            Some(machine) => {
                PluginResult::success(format!("fake: deleted {}", machine.provider_id))
            }
            None => PluginResult::success(format!(
                "fake: no machine for node {node_id}; nothing to delete"
            )),
        })
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
///
/// It needs no machine, so it always runs on a cloud in this process, which only supplies the
/// default latency and failure rate and the generator that draws failures.
#[derive(Debug, Clone)]
pub struct FakeAutomator {
    cloud: FakeCloud,
}

impl FakeAutomator {
    pub fn new(cloud: FakeCloud) -> Self {
        FakeAutomator { cloud }
    }

    async fn run_task(&self, task: &Value) -> PluginResult {
        if let Err(e) = self
            .cloud
            .inject(injection_at(task, AUTOMATOR_INJECTION))
            .await
        {
            return PluginResult::failure(format!("fake: {e}"));
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

    /// Each node id keeps its counts: a retried CREATE of a live machine is no create, a
    /// recreate after a delete is the second one, a DELETE of nothing is no delete; a deleted
    /// machine stays listed, not alive.
    #[tokio::test]
    async fn counts_creates_and_deletes_per_node() {
        let cloud = FakeCloud::default();
        let provider = FakeProvider::new(cloud.clone());
        for name in ["CREATE", "CREATE", "DELETE", "DELETE", "CREATE"] {
            assert!(provider.run(&provider_task(name, "n1")).await.is_success());
        }
        provider.run(&provider_task("CREATE", "n2")).await;
        provider.run(&provider_task("DELETE", "n2")).await;
        let n1 = cloud.record("n1").expect("n1 known");
        assert_eq!((n1.alive, n1.creates, n1.deletes), (true, 2, 1));
        assert_eq!(n1.provider_id, "fake-2");
        let n2 = cloud.record("n2").expect("n2 known");
        assert_eq!((n2.alive, n2.creates, n2.deletes), (false, 1, 1));
        assert!(cloud.machine("n2").is_none());
        let list = cloud.machines();
        assert_eq!((list.machines_created, list.machines_alive), (3, 1));
        let nodes: Vec<&str> = list.machines.iter().map(|m| m.node_id.as_str()).collect();
        assert_eq!(nodes, ["n1", "n2"]);
    }

    /// A state file written before the counts existed (live machines only) reads as live
    /// machines created once.
    #[test]
    fn reads_state_files_without_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cloud.json");
        let old = json!({"machinesCreated": 1, "machines": {"n1": {"nodeId": "n1",
            "providerId": "fake-1", "hostname": "h", "ipaddresses": {}}}});
        std::fs::write(&path, old.to_string()).expect("write");
        let cloud = FakeCloud::open(&path).expect("open");
        let n1 = cloud.machine("n1").expect("alive");
        assert_eq!((n1.alive, n1.creates, n1.deletes), (true, 1, 0));
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

    /// A change the state file could not take is undone: memory never runs ahead of disk.
    #[tokio::test]
    async fn a_change_that_cannot_be_written_is_undone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cloud.json");
        let cloud = FakeCloud::open(&path).expect("open");
        let provider = FakeProvider::new(cloud.clone());
        assert!(provider
            .run(&provider_task("CREATE", "n1"))
            .await
            .is_success());
        // The state file's place becomes a directory: every write fails from now on.
        std::fs::remove_file(&path).expect("remove the state file");
        std::fs::create_dir(&path).expect("a directory in its place");
        assert!(!provider
            .run(&provider_task("CREATE", "n2"))
            .await
            .is_success());
        assert!(!provider
            .run(&provider_task("DELETE", "n1"))
            .await
            .is_success());
        assert_eq!(cloud.machines_created(), 1);
        assert!(cloud.machine("n2").is_none());
        assert!(cloud.machine("n1").is_some_and(|m| m.alive));
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
