//! coopr-provisioner: the workers that carry out a cluster's tasks, and the plugins they run.
//!
//! ```text
//!            coopr server (/v2 provisioner API)
//!    register ▲  heartbeat ▲   take ▲ │ task     finish ▲
//!             │            │        │ ▼                 │
//!   ┌─────────┴────────────┴──── worker.rs: run() ──────┴─────────┐
//!   │ client.rs: HTTP, Coopr-ApiKey, server rotation               │
//!   │ plugin.rs: route(task) ──► PluginRegistry ──► PluginResult   │
//!   │   providers:  fake (fake/: local or shared), exec (exec.rs)  │
//!   │   automators: fake, exec, ...                                │
//!   └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! A provisioner registers with the server (`PUT /v2/provisioners/{id}`), heartbeats, and runs
//! `capacity` workers. Each worker takes a task (`POST /v2/tasks/take`), dispatches it as Coopr's
//! worker does (CREATE/CONFIRM/DELETE to the provider plugin, service tasks to the service's
//! action plugin, BOOTSTRAP to every automator of the node) and reports the result
//! (`POST /v2/tasks/finish`). See `COOPR_API.md` §5 for the wire protocol and
//! `examples/plugins/README.md` for writing `exec` plugins.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use coopr_provisioner::{run, FakeCloud, PluginRegistry, ProvisionerConfig};
//!
//! let plugins = PluginRegistry::with_builtins(FakeCloud::open("/var/lib/coopr/fake-cloud.json")?);
//! let mut config = ProvisionerConfig::new(vec!["http://127.0.0.1:55054".into()], "p1", plugins);
//! config.capacity = 4;
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let provisioner = tokio::spawn(run(config, shutdown));
//! // ... later:
//! stop.send(true)?;
//! provisioner.await??;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod config;
pub mod exec;
pub mod fake;
pub mod plugin;
pub mod worker;

pub use client::{ClientError, ProvisionerClient, API_KEY_HEADER};
pub use config::{ConfigError, ProvisionerConfig};
pub use exec::{ExecPlugin, ExecProgram};
pub use fake::{
    FakeAutomator, FakeBackend, FakeBackendError, FakeCloud, FakeCloudError, FakeCloudOptions,
    FakeCloudServer, FakeMachine, FakeProvider, RemoteCloud, RemoteCloudError, RetryPolicy,
    XorShift64,
};
pub use plugin::{route, Plugin, PluginFuture, PluginRegistry, PluginResult, Route, RouteError};
pub use worker::{run, run_with_transport};
