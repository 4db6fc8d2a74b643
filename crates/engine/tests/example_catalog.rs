//! The shipped `examples/catalog.json` parses as a catalog export, and its lamp template solves
//! and plans end to end.

mod common;

use std::collections::BTreeMap;

use common::render;
use coopr_engine::{plan, solve_layout, JobRun, LayoutRequest, PlanInput};
use coopr_types::{CatalogExport, ClusterAction, ClusterId, JobId, NodeId, TaskName};

const CATALOG: &str = include_str!("../../../examples/catalog.json");

/// A 3-machine lamp create: mysql on node 1000 only, and a plan of CREATE, CONFIRM, BOOTSTRAP
/// (one stage each), INSTALL base → apache/mysql → php-app, CONFIGURE, INITIALIZE and START
/// mysql → apache → php-app; every stage has at most one task per node.
#[test]
fn example_lamp_solves_and_plans() {
    let export: CatalogExport =
        serde_json::from_str(CATALOG).expect("examples/catalog.json is a catalog export");
    assert_eq!(export.providers[0].providertype, "fake");
    let names = |v: Vec<String>| v.join(",");
    assert_eq!(
        names(
            export
                .hardwaretypes
                .iter()
                .map(|h| h.name.clone())
                .collect()
        ),
        "small,medium,large"
    );
    let services: BTreeMap<_, _> = export
        .services
        .iter()
        .map(|s| (s.name.clone(), std::sync::Arc::new(s.clone())))
        .collect();
    assert!(services
        .values()
        .flat_map(|s| s.provisioner.actions.values())
        .all(|a| a.plugin == "fake"));
    let lamp = export
        .clustertemplates
        .iter()
        .find(|t| t.name == "lamp")
        .expect("lamp template");

    let layout = solve_layout(&LayoutRequest {
        template: lamp,
        num_machines: 3,
        services: &[],
        hardwaretype: &lamp.defaults.hardwaretype,
        imagetype: &lamp.defaults.imagetype,
        catalog_services: &services,
    })
    .expect("lamp solves");
    let with_mysql: Vec<u32> = layout
        .iter()
        .filter(|n| n.services.iter().any(|s| s == "mysql"))
        .map(|n| n.nodenum)
        .collect();
    assert_eq!(with_mysql, vec![1000]);

    let cluster = ClusterId(7);
    let nodes: Vec<(NodeId, Vec<String>)> = layout
        .iter()
        .map(|n| (NodeId::derive(cluster, n.nodenum), n.services.clone()))
        .collect();
    let stages = plan(&PlanInput {
        action: ClusterAction::ClusterCreate,
        nodes: &nodes,
        catalog_services: &services,
        target_services: &[],
    });
    let shape: Vec<(TaskName, Vec<&str>)> = stages
        .iter()
        .map(|stage| {
            let mut services: Vec<&str> = stage.iter().map(|t| t.service.as_str()).collect();
            services.dedup();
            (stage[0].task_name, services)
        })
        .collect();
    use TaskName::*;
    assert_eq!(
        shape,
        vec![
            (Create, vec![""]),
            (Confirm, vec![""]),
            (Bootstrap, vec![""]),
            (Install, vec!["base"]),
            (Install, vec!["apache"]),
            (Install, vec!["mysql"]),
            (Install, vec!["php-app"]),
            (Configure, vec!["apache"]),
            (Configure, vec!["base"]),
            (Configure, vec!["mysql", "php-app"]),
            (Configure, vec!["php-app"]),
            (Initialize, vec!["mysql"]),
            (Initialize, vec!["apache"]),
            (Initialize, vec!["php-app"]),
            (Start, vec!["mysql"]),
            (Start, vec!["apache"]),
            (Start, vec!["php-app"]),
        ]
    );
    assert!(
        render(&stages).iter().take(3).all(|stage| stage.len() == 3),
        "node stages cover all nodes"
    );
    for stage in &stages {
        assert!(stage.iter().all(|t| t.task_name == stage[0].task_name));
        let mut nodes: Vec<_> = stage.iter().map(|t| &t.node_id).collect();
        nodes.dedup();
        assert_eq!(nodes.len(), stage.len());
    }

    let run = JobRun::new(
        JobId { cluster, seq: 2 },
        ClusterAction::ClusterCreate,
        stages,
        vec![],
        None,
        0,
    );
    // 3 node stages of 3 tasks; INSTALL and CONFIGURE each of the 10 service instances;
    // INITIALIZE and START the 7 instances of mysql, apache and php-app (base has neither).
    assert_eq!(run.steps(), (3 * 3 + 10 + 10 + 7 + 7, 0));
}
