//! Planner tests: exact stage lists per operation on the lamp-like catalog, and exhaustive checks
//! of the stage rules (one task per node per stage, dependency order) over many layouts.

mod common;

use std::collections::BTreeSet;

use common::*;
use coopr_engine::{plan, PlanInput, PlannedTask};
use coopr_types::{ClusterAction, TaskName};

/// n1 holds everything (mysql is max 1); n2 and n3 hold the rest, as `solve_layout` lays out lamp.
fn lamp3() -> Vec<(coopr_types::NodeId, Vec<String>)> {
    nodes(&[
        ("n1", &["apache", "base", "mysql", "php-app"]),
        ("n2", &["apache", "base", "php-app"]),
        ("n3", &["apache", "base", "php-app"]),
    ])
}

fn plan_of(
    action: ClusterAction,
    nodes: &[(coopr_types::NodeId, Vec<String>)],
    targets: &[&str],
) -> Vec<Vec<String>> {
    let catalog = lamp_catalog();
    let targets = strings(targets);
    render(&plan(&PlanInput {
        action,
        nodes,
        catalog_services: &catalog,
        target_services: &targets,
    }))
}

/// CLUSTER_CREATE is CREATE CONFIRM BOOTSTRAP INSTALL CONFIGURE INITIALIZE START; INSTALL follows
/// install dependencies (base, then apache/mysql, then php-app), INITIALIZE/START follow runtime
/// dependencies (mysql, apache, php-app); services without an action (base has no initialize or
/// start) get no task; a node with two services on one level gets them in successive stages.
#[test]
fn create_plan_is_exact() {
    let want = expected(&[
        &["CREATE n1", "CREATE n2", "CREATE n3"],
        &["CONFIRM n1", "CONFIRM n2", "CONFIRM n3"],
        &["BOOTSTRAP n1", "BOOTSTRAP n2", "BOOTSTRAP n3"],
        &["INSTALL n1 base", "INSTALL n2 base", "INSTALL n3 base"],
        &[
            "INSTALL n1 apache",
            "INSTALL n2 apache",
            "INSTALL n3 apache",
        ],
        &["INSTALL n1 mysql"],
        &[
            "INSTALL n1 php-app",
            "INSTALL n2 php-app",
            "INSTALL n3 php-app",
        ],
        &[
            "CONFIGURE n1 apache",
            "CONFIGURE n2 apache",
            "CONFIGURE n3 apache",
        ],
        &[
            "CONFIGURE n1 base",
            "CONFIGURE n2 base",
            "CONFIGURE n3 base",
        ],
        &[
            "CONFIGURE n1 mysql",
            "CONFIGURE n2 php-app",
            "CONFIGURE n3 php-app",
        ],
        &["CONFIGURE n1 php-app"],
        &["INITIALIZE n1 mysql"],
        &[
            "INITIALIZE n1 apache",
            "INITIALIZE n2 apache",
            "INITIALIZE n3 apache",
        ],
        &[
            "INITIALIZE n1 php-app",
            "INITIALIZE n2 php-app",
            "INITIALIZE n3 php-app",
        ],
        &["START n1 mysql"],
        &["START n1 apache", "START n2 apache", "START n3 apache"],
        &["START n1 php-app", "START n2 php-app", "START n3 php-app"],
    ]);
    assert_eq!(plan_of(ClusterAction::ClusterCreate, &lamp3(), &[]), want);
}

/// Node order in the plan is by node id, whatever the input order.
#[test]
fn plan_is_sorted_by_node_id() {
    let mut shuffled = lamp3();
    shuffled.reverse();
    assert_eq!(
        plan_of(ClusterAction::ClusterCreate, &shuffled, &[]),
        plan_of(ClusterAction::ClusterCreate, &lamp3(), &[])
    );
}

/// CLUSTER_DELETE is a single DELETE stage over every node; SOLVE_LAYOUT plans nothing.
#[test]
fn delete_and_solve_layout_plans() {
    assert_eq!(
        plan_of(ClusterAction::ClusterDelete, &lamp3(), &[]),
        expected(&[&["DELETE n1", "DELETE n2", "DELETE n3"]])
    );
    assert!(plan_of(ClusterAction::SolveLayout, &lamp3(), &[]).is_empty());
}

/// ADD_SERVICES plans BOOTSTRAP INSTALL CONFIGURE INITIALIZE START for the added services only,
/// and bootstraps only the nodes that received one (n3 got nothing).
#[test]
fn add_services_plan_covers_only_added_services() {
    let after = nodes(&[
        ("n1", &["apache", "base", "mysql", "php-app"]),
        ("n2", &["apache", "base", "php-app"]),
        ("n3", &["base"]),
    ]);
    let want = expected(&[
        &["BOOTSTRAP n1", "BOOTSTRAP n2"],
        &["INSTALL n1 apache", "INSTALL n2 apache"],
        &["INSTALL n1 php-app", "INSTALL n2 php-app"],
        &["CONFIGURE n1 apache", "CONFIGURE n2 apache"],
        &["CONFIGURE n1 php-app", "CONFIGURE n2 php-app"],
        &["INITIALIZE n1 apache", "INITIALIZE n2 apache"],
        &["INITIALIZE n1 php-app", "INITIALIZE n2 php-app"],
        &["START n1 apache", "START n2 apache"],
        &["START n1 php-app", "START n2 php-app"],
    ]);
    assert_eq!(
        plan_of(ClusterAction::AddServices, &after, &["apache", "php-app"]),
        want
    );
}

/// CLUSTER_CONFIGURE is BOOTSTRAP then CONFIGURE of every service.
#[test]
fn configure_plan_is_exact() {
    let want = expected(&[
        &["BOOTSTRAP n1", "BOOTSTRAP n2", "BOOTSTRAP n3"],
        &[
            "CONFIGURE n1 apache",
            "CONFIGURE n2 apache",
            "CONFIGURE n3 apache",
        ],
        &[
            "CONFIGURE n1 base",
            "CONFIGURE n2 base",
            "CONFIGURE n3 base",
        ],
        &[
            "CONFIGURE n1 mysql",
            "CONFIGURE n2 php-app",
            "CONFIGURE n3 php-app",
        ],
        &["CONFIGURE n1 php-app"],
    ]);
    assert_eq!(
        plan_of(ClusterAction::ClusterConfigure, &lamp3(), &[]),
        want
    );
}

/// CLUSTER_CONFIGURE_WITH_RESTART is BOOTSTRAP STOP CONFIGURE START; STOP runs in reverse runtime
/// order (php-app, apache, then mysql), START in runtime order.
#[test]
fn configure_with_restart_plan_is_exact() {
    let want = expected(&[
        &["BOOTSTRAP n1", "BOOTSTRAP n2", "BOOTSTRAP n3"],
        &["STOP n1 php-app", "STOP n2 php-app", "STOP n3 php-app"],
        &["STOP n1 apache", "STOP n2 apache", "STOP n3 apache"],
        &["STOP n1 mysql"],
        &[
            "CONFIGURE n1 apache",
            "CONFIGURE n2 apache",
            "CONFIGURE n3 apache",
        ],
        &[
            "CONFIGURE n1 base",
            "CONFIGURE n2 base",
            "CONFIGURE n3 base",
        ],
        &[
            "CONFIGURE n1 mysql",
            "CONFIGURE n2 php-app",
            "CONFIGURE n3 php-app",
        ],
        &["CONFIGURE n1 php-app"],
        &["START n1 mysql"],
        &["START n1 apache", "START n2 apache", "START n3 apache"],
        &["START n1 php-app", "START n2 php-app", "START n3 php-app"],
    ]);
    assert_eq!(
        plan_of(ClusterAction::ClusterConfigureWithRestart, &lamp3(), &[]),
        want
    );
}

/// STOP_SERVICES, START_SERVICES and RESTART_SERVICES over all services, and restricted to
/// target services (only the targets get tasks).
#[test]
fn stop_start_restart_plans_are_exact() {
    let stop = expected(&[
        &["STOP n1 php-app", "STOP n2 php-app", "STOP n3 php-app"],
        &["STOP n1 apache", "STOP n2 apache", "STOP n3 apache"],
        &["STOP n1 mysql"],
    ]);
    let start = expected(&[
        &["START n1 mysql"],
        &["START n1 apache", "START n2 apache", "START n3 apache"],
        &["START n1 php-app", "START n2 php-app", "START n3 php-app"],
    ]);
    assert_eq!(plan_of(ClusterAction::StopServices, &lamp3(), &[]), stop);
    assert_eq!(plan_of(ClusterAction::StartServices, &lamp3(), &[]), start);
    let restart: Vec<_> = stop.iter().chain(&start).cloned().collect();
    assert_eq!(
        plan_of(ClusterAction::RestartServices, &lamp3(), &[]),
        restart
    );

    assert_eq!(
        plan_of(ClusterAction::StopServices, &lamp3(), &["mysql"]),
        expected(&[&["STOP n1 mysql"]])
    );
    assert_eq!(
        plan_of(
            ClusterAction::RestartServices,
            &lamp3(),
            &["mysql", "apache"]
        ),
        expected(&[
            &["STOP n1 apache", "STOP n2 apache", "STOP n3 apache"],
            &["STOP n1 mysql"],
            &["START n1 mysql"],
            &["START n1 apache", "START n2 apache", "START n3 apache"],
        ])
    );
}

/// Ordering is transitive through a service that has no task of that type: c requires b requires
/// a at install time, b has no install action, so c's INSTALL still comes after a's.
#[test]
fn ordering_is_transitive_through_services_without_actions() {
    let catalog: std::collections::BTreeMap<_, _> = [
        service("a", &["install"], &[], &[]),
        service("b", &["configure"], &["a"], &[]),
        service("c", &["install"], &["b"], &[]),
    ]
    .into_iter()
    .map(|s| (s.name.clone(), std::sync::Arc::new(s)))
    .collect();
    let cluster = nodes(&[("n1", &["c"]), ("n2", &["a", "b"])]);
    let stages = plan(&PlanInput {
        action: ClusterAction::StartServices,
        nodes: &cluster,
        catalog_services: &catalog,
        target_services: &[],
    });
    assert!(stages.is_empty(), "no service has a start action");
    let stages = plan(&PlanInput {
        action: ClusterAction::AddServices,
        nodes: &cluster,
        catalog_services: &catalog,
        target_services: &strings(&["a", "b", "c"]),
    });
    assert_eq!(
        render(&stages),
        expected(&[
            &["BOOTSTRAP n1", "BOOTSTRAP n2"],
            &["INSTALL n2 a"],
            &["INSTALL n1 c"],
            &["CONFIGURE n2 b"],
        ])
    );
}

/// Exhaustively, for every assignment of the lamp services to three nodes and every operation:
/// no stage is empty, no stage holds two tasks for one node, and every INSTALL/INITIALIZE/START
/// task comes in a later stage than the same task of every service it requires (STOP: earlier).
#[test]
fn stage_rules_hold_for_every_layout() {
    let catalog = lamp_catalog();
    let all = ["apache", "base", "mysql", "php-app"];
    let subset = |mask: usize| -> Vec<String> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| s.to_string())
            .collect()
    };
    let actions = [
        ClusterAction::ClusterCreate,
        ClusterAction::ClusterConfigureWithRestart,
        ClusterAction::RestartServices,
        ClusterAction::AddServices,
    ];
    let mut checked = 0;
    for masks in 0..(16 * 16 * 16) {
        let cluster = vec![
            (node("n1"), subset(masks % 16)),
            (node("n2"), subset((masks / 16) % 16)),
            (node("n3"), subset(masks / 256)),
        ];
        for action in actions {
            let stages = plan(&PlanInput {
                action,
                nodes: &cluster,
                catalog_services: &catalog,
                target_services: &[],
            });
            check_stage_rules(&stages, &catalog);
            checked += 1;
        }
    }
    assert_eq!(checked, 4096 * actions.len());
}

fn check_stage_rules(stages: &[Vec<PlannedTask>], catalog: &coopr_types::ServiceDefs) {
    for stage in stages {
        assert!(!stage.is_empty());
        let nodes: BTreeSet<_> = stage.iter().map(|t| &t.node_id).collect();
        assert_eq!(
            nodes.len(),
            stage.len(),
            "two tasks for one node in {stage:?}"
        );
    }
    let stage_of = |name: TaskName, service: &str| -> Vec<usize> {
        stages
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.iter()
                    .any(|t| t.task_name == name && t.service == service)
            })
            .map(|(i, _)| i)
            .collect()
    };
    for (i, stage) in stages.iter().enumerate() {
        for task in stage.iter().filter(|t| t.task_name.is_service_task()) {
            let deps = &catalog[&task.service].dependencies;
            let requires = match task.task_name {
                TaskName::Install => &deps.install.requires,
                TaskName::Initialize | TaskName::Start | TaskName::Stop => &deps.runtime.requires,
                _ => continue,
            };
            for required in requires {
                for j in stage_of(task.task_name, required) {
                    if task.task_name == TaskName::Stop {
                        assert!(
                            j > i,
                            "STOP {} must come before STOP {required}",
                            task.service
                        );
                    } else {
                        assert!(
                            j < i,
                            "{} {required} must come before {}",
                            task.task_name,
                            task.service
                        );
                    }
                }
            }
        }
    }
}
