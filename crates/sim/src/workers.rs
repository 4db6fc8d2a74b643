//! The provisioners of the simulation: one per DC, the real worker runtime
//! ([`coopr_provisioner::run_with_transport`]) on the in-memory network, running the real `fake`
//! plugins against one cloud every DC shares, as `coopr demo` does. Every plugin run is recorded
//! (which DC's worker, which task, from when until when, in simulated time) so that the end of a
//! run can check what the design promises about work:
//!
//! - no task is run by workers of two DCs at once (runs of one job's task on one node, from
//!   different DCs, never overlap);
//! - no machine is created twice (every node id's machine was made at most once);
//! - no machine is leaked or missing: a cluster that ended `active` has exactly its nodes'
//!   machines alive, one that ended `terminated` has none.
//!
//! Clusters a lost-operations report names are exempt from the machine checks: what their lost
//! operations did to the cloud is reported, not undone (a lost create's machine stays; after a
//! lost delete the new owner, which still has the cluster, makes its machine again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coopr_provisioner::{
    FakeCloud, FakeCloudOptions, Plugin, PluginFuture, PluginRegistry, ProvisionerConfig,
};
use coopr_raft::MemNetwork;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

/// One plugin run, as a worker performed it.
#[derive(Debug, Clone)]
pub struct PluginRun {
    /// The DC whose server handed out the task.
    pub dc: &'static str,
    pub task: String,
    pub job: String,
    pub cluster: String,
    pub node: String,
    pub name: String,
    /// Simulated ms since the start of the run.
    pub from: u64,
    /// `None` while it runs.
    pub until: Option<u64>,
}

/// Every plugin run so far, shared by the workers of every DC.
#[derive(Clone)]
pub struct Runs {
    started: Instant,
    runs: Arc<Mutex<Vec<PluginRun>>>,
}

impl Runs {
    pub fn new(started: Instant) -> Runs {
        Runs {
            started,
            runs: Arc::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PluginRun>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Vec<PluginRun> {
        self.lock().clone()
    }
}

/// A plugin that records its runs into [`Runs`] and otherwise is the plugin it wraps.
struct Recorded {
    inner: Arc<dyn Plugin>,
    dc: &'static str,
    runs: Runs,
}

/// Marks the run ended when dropped: when the plugin returns, or when its future is dropped
/// (the worker shut down mid-task).
struct Ending {
    runs: Runs,
    index: usize,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let now = self.runs.now_ms();
        if let Some(run) = self.runs.lock().get_mut(self.index) {
            run.until = Some(now);
        }
    }
}

impl Plugin for Recorded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn run<'a>(&'a self, task: &'a Value) -> PluginFuture<'a> {
        Box::pin(async move {
            let field = |name: &str| task[name].as_str().unwrap_or_default().to_string();
            let run = PluginRun {
                dc: self.dc,
                task: field("taskId"),
                job: field("jobId"),
                cluster: field("clusterId"),
                node: field("nodeId"),
                name: field("taskName"),
                from: self.runs.now_ms(),
                until: None,
            };
            let index = {
                let mut runs = self.runs.lock();
                runs.push(run);
                runs.len() - 1
            };
            let _ending = Ending {
                runs: self.runs.clone(),
                index,
            };
            self.inner.run(task).await
        })
    }
}

/// The cloud every DC's provisioner shares; each operation takes `latency_ms`.
pub fn cloud(latency_ms: u64) -> FakeCloud {
    FakeCloud::new(FakeCloudOptions {
        latency_ms,
        failure_rate: 0.0,
        ..FakeCloudOptions::default()
    })
}

/// A running provisioner and the switch that stops it.
pub struct Provisioner {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Provisioner {
    /// Starts `dc`'s provisioner: `capacity` workers polling `servers` (its DC's nodes) over
    /// `network` as node `{dc}-provisioner`, with the built-in plugins on `cloud`, recorded.
    pub fn start(
        dc: &'static str,
        servers: Vec<String>,
        network: &MemNetwork,
        cloud: &FakeCloud,
        runs: &Runs,
        capacity: u32,
    ) -> anyhow::Result<Provisioner> {
        let builtins = PluginRegistry::with_builtins(cloud.clone());
        let recorded = |inner: &Arc<dyn Plugin>| -> Arc<dyn Plugin> {
            Arc::new(Recorded {
                inner: inner.clone(),
                dc,
                runs: runs.clone(),
            })
        };
        let mut plugins = PluginRegistry::new();
        for plugin in builtins
            .provider_names()
            .iter()
            .filter_map(|n| builtins.provider(n))
        {
            plugins.register_provider(recorded(plugin));
        }
        for plugin in builtins
            .automator_names()
            .iter()
            .filter_map(|n| builtins.automator(n))
        {
            plugins.register_automator(recorded(plugin));
        }
        let mut config = ProvisionerConfig::new(servers, format!("{dc}-provisioner"), plugins);
        config.capacity = capacity;
        config.api_key = Some(coopr_server::seed::DEMO_ADMIN_KEY.to_string());
        config.poll_interval_ms = 100;
        config.heartbeat_interval_ms = 2_000;
        let transport = network.transport(&format!("{dc}-provisioner"));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(coopr_provisioner::run_with_transport(
            config, transport, shutdown,
        ));
        Ok(Provisioner { stop, task })
    }

    /// Stops it; an error is a provisioner that ended by itself with one.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("a provisioner failed: {e:#}")),
            Ok(Err(e)) => Err(format!("a provisioner panicked: {e}")),
            Err(_) => Err("a provisioner did not stop within 60 s".into()),
        }
    }
}

/// No task run by workers of two DCs at once: runs of the same job, node and task name from
/// different DCs must not overlap in simulated time.
pub fn check_no_task_in_two_dcs(runs: &[PluginRun]) -> Result<(), String> {
    let all = runs;
    let mut by_task: BTreeMap<(&str, &str, &str), Vec<&PluginRun>> = BTreeMap::new();
    for run in runs {
        by_task
            .entry((&run.job, &run.node, &run.name))
            .or_default()
            .push(run);
    }
    for ((job, node, name), runs) in by_task {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let a_until = a.until.unwrap_or(u64::MAX);
                let b_until = b.until.unwrap_or(u64::MAX);
                if a.dc != b.dc && a.from < b_until && b.from < a_until {
                    let history: Vec<String> = all
                        .iter()
                        .filter(|r| r.job == job)
                        .map(|r| {
                            format!("{} {} {} {}..{:?}", r.dc, r.name, r.task, r.from, r.until)
                        })
                        .collect();
                    return Err(format!(
                        "task {name} of job {job} on node {node} ran in {} ({}..{:?} ms) and in {} ({}..{:?} ms) at once; the job's runs: {history:?}",
                        a.dc, a.from, a.until, b.dc, b.from, b.until
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What the machine check concluded: machines left by clusters whose operations were lost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Machines {
    pub alive: usize,
    /// Machines of clusters a lost-operations report names (reported, so not a violation).
    pub of_lost_clusters: usize,
}

/// No machine made twice, leaked or missing (see the module doc). `statuses`: every cluster's
/// final status, by id; `size`: machines per cluster; `lost`: clusters a lost-operations report
/// names.
pub fn check_machines(
    cloud: &FakeCloud,
    runs: &[PluginRun],
    statuses: &BTreeMap<String, String>,
    size: usize,
    lost: &BTreeSet<String>,
) -> Result<Machines, String> {
    let list = cloud.machines();
    let cluster_of: BTreeMap<&str, &str> = runs
        .iter()
        .map(|r| (r.node.as_str(), r.cluster.as_str()))
        .collect();
    let mut alive_by_cluster: BTreeMap<&str, usize> = BTreeMap::new();
    let mut summary = Machines::default();
    for machine in &list.machines {
        let Some(cluster) = cluster_of.get(machine.node_id.as_str()) else {
            return Err(format!(
                "machine of node {} made by no recorded task",
                machine.node_id
            ));
        };
        // A lost delete may have deleted the machine before the new owner, which never heard
        // of the delete, made it again: reported, so not a machine made twice.
        if machine.creates > 1 && !lost.contains(*cluster) {
            return Err(format!(
                "the machine of node {} (cluster {cluster}) was created {} times",
                machine.node_id, machine.creates
            ));
        }
        if machine.alive {
            summary.alive += 1;
            *alive_by_cluster.entry(cluster).or_default() += 1;
        }
    }
    for (cluster, alive) in &alive_by_cluster {
        if lost.contains(*cluster) {
            summary.of_lost_clusters += alive;
            continue;
        }
        match statuses.get(*cluster).map(String::as_str) {
            Some("active") => {}
            Some(status) => {
                return Err(format!(
                    "cluster {cluster} is {status} but {alive} machine(s) of it are alive"
                ))
            }
            None => {
                return Err(format!(
                    "{alive} machine(s) alive for cluster {cluster}, which no DC lists and no report names"
                ))
            }
        }
    }
    for (cluster, status) in statuses {
        if status != "active" || lost.contains(cluster) {
            continue;
        }
        let alive = alive_by_cluster.get(cluster.as_str()).copied().unwrap_or(0);
        if alive != size {
            return Err(format!(
                "cluster {cluster} is active with {alive} machine(s) alive, not {size}"
            ));
        }
    }
    Ok(summary)
}
