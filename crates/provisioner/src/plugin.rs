//! Plugins and dispatch: which plugin runs a task, and what a plugin must return.
//!
//! ```text
//!   task JSON ──route()──► Route::Provider("aws")        create / confirm / delete
//!                          Route::Automator("chef-solo")  install / configure / initialize / start / stop / remove
//!                          Route::Bootstrap([a, b])       bootstrap: every automator of the node, in order
//!              ──PluginRegistry::dispatch()──► PluginResult ──► POST /v2/tasks/finish
//! ```
//!
//! Provider plugins and automator plugins live in separate namespaces, as Coopr's
//! `providertypes` and `automatortypes` do: the built-in `fake` provider and `fake` automator are
//! different plugins with the same name.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use coopr_types::TaskName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::exec::ExecPlugin;
use crate::fake::{FakeAutomator, FakeBackend, FakeCloud, FakeProvider};

/// The future a plugin returns; it may borrow the plugin and the task.
pub type PluginFuture<'a> = Pin<Box<dyn Future<Output = PluginResult> + Send + 'a>>;

/// A provider or automator plugin.
///
/// An implementation must:
/// - never panic on malformed task JSON; report it as a [`PluginResult::failure`] instead (a panic
///   is caught by the worker and reported as a failure, but loses the plugin's output);
/// - be idempotent per task: the server re-issues a task whose worker timed out or died, so the
///   same CREATE or INSTALL may run twice for one node;
/// - tolerate being cancelled (its future dropped) at any await point, which happens when the
///   provisioner shuts down mid-task.
pub trait Plugin: Send + Sync {
    /// The name tasks refer to (`provider.providertype` or `service.action.type`).
    fn name(&self) -> &str;

    /// Runs one task. `task` is the whole task JSON as `POST /v2/tasks/take` returned it.
    fn run<'a>(&'a self, task: &'a Value) -> PluginFuture<'a>;
}

/// What a plugin reports for a task; the body of `POST /v2/tasks/finish` minus the worker's ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginResult {
    /// 0 is success; anything else fails the node action.
    pub status: i32,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// On success, updates the node's hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// On success, updates the node's addresses (`access_v4`, `bind_v4`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipaddresses: Option<Map<String, Value>>,
    /// Always merged into the node's `provisionerResults` (e.g. `providerid`, `ssh-auth`).
    #[serde(default)]
    pub result: Map<String, Value>,
}

impl PluginResult {
    /// A success with the given stdout.
    pub fn success(stdout: impl Into<String>) -> Self {
        PluginResult {
            stdout: stdout.into(),
            ..PluginResult::default()
        }
    }

    /// A failure (status 1) with the given stderr.
    pub fn failure(stderr: impl Into<String>) -> Self {
        PluginResult {
            status: 1,
            stderr: stderr.into(),
            ..PluginResult::default()
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == 0
    }
}

/// Which plugin(s) a task goes to, per Coopr's worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// CREATE, CONFIRM, DELETE: the provider plugin named by `config.provider.providertype`.
    Provider(String),
    /// Service tasks: the automator plugin named by `config.service.action.type`.
    Automator(String),
    /// BOOTSTRAP: every automator in `config.automators`, in order (none is a success).
    Bootstrap(Vec<String>),
}

/// Why a task cannot be routed to a plugin. Terminal: the task is reported as failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("task has no taskName")]
    MissingTaskName,
    #[error("unknown taskName {0:?}")]
    UnknownTaskName(String),
    #[error("{task_name} task has no {field} naming its plugin")]
    MissingPluginName {
        task_name: TaskName,
        field: &'static str,
    },
    #[error("BOOTSTRAP task has a non-string entry in config.automators")]
    BadAutomatorList,
}

/// Decides which plugin(s) run `task`. Pure: looks only at the task JSON.
pub fn route(task: &Value) -> Result<Route, RouteError> {
    let name = task
        .get("taskName")
        .and_then(Value::as_str)
        .ok_or(RouteError::MissingTaskName)?;
    let task_name = TaskName::parse_ignore_case(name)
        .ok_or_else(|| RouteError::UnknownTaskName(name.to_string()))?;
    let named_by = |pointer: &str, field: &'static str| {
        task.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or(RouteError::MissingPluginName { task_name, field })
    };
    match task_name {
        TaskName::Create | TaskName::Confirm | TaskName::Delete => Ok(Route::Provider(named_by(
            "/config/provider/providertype",
            "config.provider.providertype",
        )?)),
        TaskName::Bootstrap => match task.pointer("/config/automators") {
            None | Some(Value::Null) => Ok(Route::Bootstrap(Vec::new())),
            Some(Value::Array(entries)) => entries
                .iter()
                .map(|e| e.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Route::Bootstrap)
                .ok_or(RouteError::BadAutomatorList),
            Some(_) => Err(RouteError::BadAutomatorList),
        },
        TaskName::Install
        | TaskName::Configure
        | TaskName::Initialize
        | TaskName::Start
        | TaskName::Stop
        | TaskName::Remove => Ok(Route::Automator(named_by(
            "/config/service/action/type",
            "config.service.action.type",
        )?)),
    }
}

/// The plugins a provisioner can run, by kind and name. Cheap to clone (plugins are shared).
#[derive(Clone, Default)]
pub struct PluginRegistry {
    providers: BTreeMap<String, Arc<dyn Plugin>>,
    automators: BTreeMap<String, Arc<dyn Plugin>>,
}

impl fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("providers", &self.provider_names())
            .field("automators", &self.automator_names())
            .finish()
    }
}

impl PluginRegistry {
    /// An empty registry: every task fails with "no plugin named ...".
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in plugins: the `fake` provider and `fake` automator backed by `cloud`, and the
    /// `exec` provider and automator that run the script the task names.
    pub fn with_builtins(cloud: FakeCloud) -> Self {
        Self::with_fake_backend(FakeBackend::Local(cloud.clone()), cloud)
    }

    /// The built-in plugins, with the `fake` provider's machines in `backend` (a cloud shared
    /// over HTTP, say); the `fake` automator, which needs no machine, takes its default latency
    /// and failure rate from `automator_cloud`.
    pub fn with_fake_backend(backend: FakeBackend, automator_cloud: FakeCloud) -> Self {
        let mut registry = Self::new();
        registry.register_provider(Arc::new(FakeProvider::on(backend)));
        registry.register_automator(Arc::new(FakeAutomator::new(automator_cloud)));
        registry.register_provider(Arc::new(ExecPlugin::from_task("exec")));
        registry.register_automator(Arc::new(ExecPlugin::from_task("exec")));
        registry
    }

    /// Registers a provider plugin under its [`Plugin::name`], replacing (and returning) any
    /// plugin of that name.
    pub fn register_provider(&mut self, plugin: Arc<dyn Plugin>) -> Option<Arc<dyn Plugin>> {
        self.providers.insert(plugin.name().to_string(), plugin)
    }

    /// Registers an automator plugin under its [`Plugin::name`], replacing (and returning) any
    /// plugin of that name.
    pub fn register_automator(&mut self, plugin: Arc<dyn Plugin>) -> Option<Arc<dyn Plugin>> {
        self.automators.insert(plugin.name().to_string(), plugin)
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.providers.get(name)
    }

    pub fn automator(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.automators.get(name)
    }

    pub fn provider_names(&self) -> Vec<&str> {
        self.providers.keys().map(String::as_str).collect()
    }

    pub fn automator_names(&self) -> Vec<&str> {
        self.automators.keys().map(String::as_str).collect()
    }

    /// Routes `task` and runs it. Never fails: routing errors and unknown plugins become a
    /// status-1 result whose stderr says what is missing.
    pub async fn dispatch(&self, task: &Value) -> PluginResult {
        match route(task) {
            Err(error) => PluginResult::failure(format!("cannot dispatch task: {error}")),
            Ok(Route::Provider(name)) => match self.provider(&name) {
                Some(plugin) => plugin.run(task).await,
                None => PluginResult::failure(format!(
                    "no provider plugin named {name:?} is registered (known: {})",
                    self.provider_names().join(", ")
                )),
            },
            Ok(Route::Automator(name)) => match self.automator(&name) {
                Some(plugin) => plugin.run(task).await,
                None => self.unknown_automator(&name),
            },
            Ok(Route::Bootstrap(names)) => self.bootstrap(task, &names).await,
        }
    }

    /// Runs every automator's bootstrap in order, stopping at the first failure. Outputs are
    /// concatenated and results merged, later automators winning on key clashes.
    async fn bootstrap(&self, task: &Value, names: &[String]) -> PluginResult {
        let mut combined = PluginResult::success("");
        for name in names {
            let Some(plugin) = self.automator(name) else {
                let failure = self.unknown_automator(name);
                combined.status = failure.status;
                append_line(&mut combined.stderr, &failure.stderr);
                return combined;
            };
            let step = plugin.run(task).await;
            let failed = !step.is_success();
            append_line(&mut combined.stdout, &step.stdout);
            append_line(&mut combined.stderr, &step.stderr);
            combined.result.extend(step.result);
            if step.hostname.is_some() {
                combined.hostname = step.hostname;
            }
            if step.ipaddresses.is_some() {
                combined.ipaddresses = step.ipaddresses;
            }
            if failed {
                combined.status = step.status;
                return combined;
            }
        }
        combined
    }

    fn unknown_automator(&self, name: &str) -> PluginResult {
        PluginResult::failure(format!(
            "no automator plugin named {name:?} is registered (known: {})",
            self.automator_names().join(", ")
        ))
    }
}

fn append_line(buffer: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    if !buffer.is_empty() && !buffer.ends_with('\n') {
        buffer.push('\n');
    }
    buffer.push_str(text);
}

/// A string at a JSON pointer, if present and non-empty.
pub(crate) fn str_at<'a>(task: &'a Value, pointer: &str) -> Option<&'a str> {
    task.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A number at a JSON pointer; numeric strings count (Coopr accepts `"5"` for 5).
pub(crate) fn number_at(task: &Value, pointer: &str) -> Option<f64> {
    match task.pointer(pointer)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed(&'static str, PluginResult);

    impl Plugin for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn run<'a>(&'a self, _task: &'a Value) -> PluginFuture<'a> {
            Box::pin(async move { self.1.clone() })
        }
    }

    /// Routing follows Coopr's worker: provider tasks by providertype, service tasks by action
    /// type, bootstrap by the automator list; task names are matched case-insensitively.
    #[test]
    fn routes_by_task_name() {
        let create = json!({"taskName": "CREATE", "config": {"provider": {"providertype": "aws"}}});
        assert_eq!(route(&create), Ok(Route::Provider("aws".into())));
        let install = json!({"taskName": "install",
            "config": {"service": {"name": "zk", "action": {"type": "chef-solo"}}}});
        assert_eq!(route(&install), Ok(Route::Automator("chef-solo".into())));
        let bootstrap = json!({"taskName": "BOOTSTRAP", "config": {"automators": ["a", "b"]}});
        assert_eq!(
            route(&bootstrap),
            Ok(Route::Bootstrap(vec!["a".into(), "b".into()]))
        );
        let bare = json!({"taskName": "BOOTSTRAP", "config": {}});
        assert_eq!(route(&bare), Ok(Route::Bootstrap(vec![])));
        assert_eq!(
            route(&json!({"taskName": "REBOOT"})),
            Err(RouteError::UnknownTaskName("REBOOT".into()))
        );
        assert_eq!(route(&json!({})), Err(RouteError::MissingTaskName));
        assert!(matches!(
            route(&json!({"taskName": "DELETE", "config": {}})),
            Err(RouteError::MissingPluginName { .. })
        ));
    }

    /// An unknown plugin is a status-1 result naming the plugin, not an error or a panic.
    #[tokio::test]
    async fn unknown_plugin_fails_with_clear_stderr() {
        let registry = PluginRegistry::new();
        let task = json!({"taskName": "CREATE", "config": {"provider": {"providertype": "aws"}}});
        let result = registry.dispatch(&task).await;
        assert_eq!(result.status, 1);
        assert!(result.stderr.contains("no provider plugin named \"aws\""));
    }

    /// Bootstrap runs every automator in order and stops at the first failure; a node with no
    /// automators bootstraps successfully.
    #[tokio::test]
    async fn bootstrap_runs_every_automator_until_failure() {
        let mut registry = PluginRegistry::new();
        registry.register_automator(Arc::new(Fixed("a", PluginResult::success("a ran"))));
        registry.register_automator(Arc::new(Fixed("b", PluginResult::failure("b broke"))));
        registry.register_automator(Arc::new(Fixed("c", PluginResult::success("c ran"))));

        let ok = json!({"taskName": "BOOTSTRAP", "config": {"automators": ["a", "c"]}});
        let result = registry.dispatch(&ok).await;
        assert_eq!((result.status, result.stdout.as_str()), (0, "a ran\nc ran"));

        let failing = json!({"taskName": "BOOTSTRAP", "config": {"automators": ["a", "b", "c"]}});
        let result = registry.dispatch(&failing).await;
        assert_eq!(result.status, 1);
        assert_eq!(result.stdout, "a ran");
        assert_eq!(result.stderr, "b broke");

        let none = json!({"taskName": "BOOTSTRAP", "config": {"automators": []}});
        assert!(registry.dispatch(&none).await.is_success());
    }
}
