//! The planner: turns a cluster operation into stages of tasks.
//!
//! ```text
//!   action ──► task types (CREATE CONFIRM BOOTSTRAP INSTALL CONFIGURE INITIALIZE START)
//!                 │
//!                 ├─ node task  ──► one stage: [CREATE n1, CREATE n2, ...]
//!                 │
//!                 └─ service task ─► dependency levels ─► one stage per (level, k-th service
//!                                                           of each node at that level)
//! ```
//!
//! Service tasks are ordered by the services' dependencies: INSTALL by `dependencies.install.
//! requires`, INITIALIZE and START by `dependencies.runtime.requires` (a service starts only after
//! the services it requires have started), STOP by the reverse of the runtime order, and
//! CONFIGURE/REMOVE not at all. A service's level is 0 when it requires nothing in the cluster
//! and otherwise one more than the highest level among what it requires (a requirement is met by
//! a service of that name or one that `provides` it). Levels are computed over every service in
//! the cluster, so ordering holds transitively even through services that have no task.
//!
//! A stage holds at most one task per node: when a node has two services on the same level they
//! go into successive stages. A service task is planned only when the service has an action for
//! it (`provisioner.actions["install"]`, ...), as Coopr skips services without one. Empty stages
//! are never emitted; nodes are ordered by id and services by name, so the plan is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use coopr_types::{ClusterAction, NodeId, ServiceDefs, TaskName};
use serde::{Deserialize, Serialize};

/// One task of a plan, before it gets an ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlannedTask {
    pub task_name: TaskName,
    pub node_id: NodeId,
    /// Empty for node-level tasks.
    pub service: String,
}

/// What to plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub action: ClusterAction,
    /// Every node of the cluster with its services (after the operation, for `ADD_SERVICES`).
    pub nodes: &'a [(NodeId, Vec<String>)],
    /// The tenant's services, by name.
    pub catalog_services: &'a ServiceDefs,
    /// The services the operation acts on (the added ones for `ADD_SERVICES`); empty means all of
    /// each node's services. Node-level BOOTSTRAP then runs only on nodes holding one of them.
    pub target_services: &'a [String],
}

/// The task types of an operation, in execution order (as Coopr has them).
pub fn task_sequence(action: ClusterAction) -> &'static [TaskName] {
    use TaskName::*;
    match action {
        ClusterAction::SolveLayout => &[],
        ClusterAction::ClusterCreate => &[
            Create, Confirm, Bootstrap, Install, Configure, Initialize, Start,
        ],
        ClusterAction::ClusterDelete => &[Delete],
        ClusterAction::AddServices => &[Bootstrap, Install, Configure, Initialize, Start],
        ClusterAction::ClusterConfigure => &[Bootstrap, Configure],
        ClusterAction::ClusterConfigureWithRestart => &[Bootstrap, Stop, Configure, Start],
        ClusterAction::StopServices => &[Stop],
        ClusterAction::StartServices => &[Start],
        ClusterAction::RestartServices => &[Stop, Start],
    }
}

/// Plans an operation: the stages of tasks, in order. Every stage is non-empty and holds at most
/// one task per node.
pub fn plan(input: &PlanInput<'_>) -> Vec<Vec<PlannedTask>> {
    let mut nodes: Vec<(&NodeId, BTreeSet<&String>)> = input
        .nodes
        .iter()
        .map(|(id, services)| (id, services.iter().collect()))
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(b.0));
    let targets: BTreeSet<&String> = input.target_services.iter().collect();
    let targeted = |service: &String| targets.is_empty() || targets.contains(service);
    let cluster: BTreeSet<&String> = nodes.iter().flat_map(|(_, s)| s.iter().copied()).collect();

    let mut stages = Vec::new();
    for &task_name in task_sequence(input.action) {
        if !task_name.is_service_task() {
            let stage: Vec<PlannedTask> = nodes
                .iter()
                .filter(|(_, services)| {
                    task_name != TaskName::Bootstrap
                        || targets.is_empty()
                        || services.iter().any(|s| targeted(s))
                })
                .map(|(id, _)| PlannedTask {
                    task_name,
                    node_id: (*id).clone(),
                    service: String::new(),
                })
                .collect();
            if !stage.is_empty() {
                stages.push(stage);
            }
            continue;
        }

        let levels = Levels::new(task_name, &cluster, input.catalog_services);
        let action_key = task_name.action_key();
        // level -> node -> services (sorted) that get this task.
        let mut by_level: BTreeMap<u32, BTreeMap<&NodeId, Vec<&String>>> = BTreeMap::new();
        for (id, services) in &nodes {
            for service in services.iter().copied().filter(|s| targeted(s)) {
                let has_action = input
                    .catalog_services
                    .get(service.as_str())
                    .is_some_and(|svc| svc.provisioner.actions.contains_key(&action_key));
                if has_action {
                    by_level
                        .entry(levels.level(service))
                        .or_default()
                        .entry(*id)
                        .or_default()
                        .push(service);
                }
            }
        }
        let ordered: Vec<_> = if task_name == TaskName::Stop {
            by_level.into_values().rev().collect()
        } else {
            by_level.into_values().collect()
        };
        for per_node in ordered {
            let depth = per_node.values().map(Vec::len).max().unwrap_or(0);
            for k in 0..depth {
                let stage: Vec<PlannedTask> = per_node
                    .iter()
                    .filter_map(|(id, services)| {
                        services.get(k).map(|service| PlannedTask {
                            task_name,
                            node_id: (*id).clone(),
                            service: (*service).clone(),
                        })
                    })
                    .collect();
                stages.push(stage);
            }
        }
    }
    stages
}

/// Dependency levels of the cluster's services for one task type.
struct Levels<'a> {
    edges: BTreeMap<&'a String, Vec<&'a String>>,
    memo: std::cell::RefCell<BTreeMap<&'a String, u32>>,
}

impl<'a> Levels<'a> {
    fn new(task_name: TaskName, cluster: &BTreeSet<&'a String>, catalog: &'a ServiceDefs) -> Self {
        let mut edges = BTreeMap::new();
        for &service in cluster {
            let Some(svc) = catalog.get(service.as_str()) else {
                continue;
            };
            let requires = match task_name {
                TaskName::Install | TaskName::Remove => &svc.dependencies.install.requires,
                TaskName::Initialize | TaskName::Start | TaskName::Stop => {
                    &svc.dependencies.runtime.requires
                }
                _ => continue,
            };
            // A requirement is met by the service of that name or by any service providing it.
            let targets: Vec<&String> = cluster
                .iter()
                .copied()
                .filter(|&other| {
                    other != service
                        && (requires.contains(other)
                            || catalog.get(other.as_str()).is_some_and(|o| {
                                o.dependencies.provides.iter().any(|p| requires.contains(p))
                            }))
                })
                .collect();
            edges.insert(service, targets);
        }
        Levels {
            edges,
            memo: Default::default(),
        }
    }

    fn level(&self, service: &'a String) -> u32 {
        self.level_guarded(service, &mut BTreeSet::new())
    }

    /// Cycles are rejected by the layout solver; should one reach the planner anyway (a catalog
    /// edited after the layout was solved), the edge closing the cycle is ignored rather than
    /// recursing forever.
    fn level_guarded(&self, service: &'a String, visiting: &mut BTreeSet<&'a String>) -> u32 {
        if let Some(&level) = self.memo.borrow().get(service) {
            return level;
        }
        if !visiting.insert(service) {
            return 0;
        }
        let mut level = 0;
        for &required in self.edges.get(service).into_iter().flatten() {
            if !visiting.contains(required) {
                level = level.max(self.level_guarded(required, visiting) + 1);
            }
        }
        visiting.remove(service);
        self.memo.borrow_mut().insert(service, level);
        level
    }
}
