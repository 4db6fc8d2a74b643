//! Layout solver tests: the greedy placement on lamp, and each constraint error with its values.

mod common;

use common::*;
use coopr_engine::{
    solve_added_services, solve_layout, AddServicesRequest, LayoutError, LayoutRequest, NodeLayout,
};
use coopr_types::ClusterTemplate;
use serde_json::json;

fn solve(
    template: &ClusterTemplate,
    num_machines: u32,
    services: &[&str],
) -> Result<Vec<NodeLayout>, LayoutError> {
    let catalog = lamp_catalog();
    let services = strings(services);
    solve_layout(&LayoutRequest {
        template,
        num_machines,
        services: &services,
        hardwaretype: "small",
        imagetype: "debian12",
        catalog_services: &catalog,
    })
}

fn services_per_node(layout: &[NodeLayout]) -> Vec<(u32, Vec<String>)> {
    layout
        .iter()
        .map(|n| (n.nodenum, n.services.clone()))
        .collect()
}

fn with_constraints(constraints: serde_json::Value) -> ClusterTemplate {
    let mut template = serde_json::to_value(lamp_template()).expect("serializable");
    template["constraints"] = constraints;
    serde_json::from_value(template).expect("valid template")
}

/// Lamp on three machines with default services: mysql (max 1) goes on the first node only, the
/// rest on every node; nodes are numbered from 1000 and carry the resolved machine types.
#[test]
fn lamp_layout_puts_single_instance_service_on_first_node() {
    let layout = solve(&lamp_template(), 3, &[]).expect("solvable");
    assert_eq!(
        services_per_node(&layout),
        vec![
            (1000, strings(&["apache", "base", "mysql", "php-app"])),
            (1001, strings(&["apache", "base", "php-app"])),
            (1002, strings(&["apache", "base", "php-app"])),
        ]
    );
    assert!(layout
        .iter()
        .all(|n| n.hardwaretype == "small" && n.imagetype == "debian12"));
}

/// Size constraints reject too few and too many machines, naming the bound and the request.
#[test]
fn size_constraints_are_enforced() {
    let template = with_constraints(json!({"size": {"min": 2, "max": 5}}));
    assert_eq!(
        solve(&template, 1, &[]),
        Err(LayoutError::TooFewMachines {
            min: 2,
            requested: 1
        })
    );
    assert_eq!(
        solve(&template, 6, &[]),
        Err(LayoutError::TooManyMachines {
            max: 5,
            requested: 6
        })
    );
    assert!(solve(&template, 5, &[]).is_ok());
}

/// A service missing from the catalog is unknown; one in the catalog but outside the template's
/// compatibility list is incompatible; a machine type outside the compatibility list is refused.
#[test]
fn unknown_and_incompatible_services_are_rejected() {
    let template = lamp_template();
    assert_eq!(
        solve(&template, 1, &["nope"]),
        Err(LayoutError::UnknownService("nope".into()))
    );
    assert_eq!(
        solve(&template, 1, &["redis"]),
        Err(LayoutError::IncompatibleService("redis".into()))
    );
    let mut strict = template.clone();
    strict.compatibility.hardwaretypes = strings(&["large"]);
    assert_eq!(
        solve(&strict, 1, &["base"]),
        Err(LayoutError::IncompatibleHardwaretype("small".into()))
    );
}

/// A service whose install or runtime requirement is not in the cluster is refused, naming both.
#[test]
fn missing_dependencies_are_named() {
    let template = lamp_template();
    assert_eq!(
        solve(&template, 2, &["base", "apache"]),
        Err(LayoutError::MissingDependency {
            service: "apache".into(),
            requires: "mysql".into()
        })
    );
    assert_eq!(
        solve(&template, 2, &["mysql"]),
        Err(LayoutError::MissingDependency {
            service: "mysql".into(),
            requires: "base".into()
        })
    );
}

/// A cluster of one machine cannot hold two instances of a service that needs at least two.
#[test]
fn quantity_minimum_beyond_machines_is_unsatisfiable() {
    let template = with_constraints(json!({"services": {"apache": {"quantities": {"min": 2}}}}));
    assert!(matches!(
        solve(&template, 1, &[]),
        Err(LayoutError::Unsatisfiable(_))
    ));
    let layout = solve(&template, 2, &[]).expect("two machines suffice");
    assert_eq!(
        layout
            .iter()
            .filter(|n| n.services.contains(&"apache".to_string()))
            .count(),
        2
    );
}

/// cantcoexist spreads the services over different nodes: mysql on the first, apache on the
/// others, and no node holds both.
#[test]
fn cantcoexist_spreads_services() {
    let template = with_constraints(json!({
        "services": {"mysql": {"quantities": {"max": 1}}},
        "layout": {"cantcoexist": [["mysql", "apache"]]},
    }));
    let layout = solve(&template, 3, &[]).expect("solvable");
    assert_eq!(
        services_per_node(&layout),
        vec![
            (1000, strings(&["base", "mysql", "php-app"])),
            (1001, strings(&["apache", "base", "php-app"])),
            (1002, strings(&["apache", "base", "php-app"])),
        ]
    );
    // With a single machine there is nowhere to put apache.
    assert!(matches!(
        solve(&template, 1, &[]),
        Err(LayoutError::Unsatisfiable(_))
    ));
}

/// mustcoexist keeps the services together: php-app follows apache (limited to two nodes) instead
/// of spreading to every node.
#[test]
fn mustcoexist_keeps_services_together() {
    let template = with_constraints(json!({
        "services": {"mysql": {"quantities": {"max": 1}}, "apache": {"quantities": {"max": 2}}},
        "layout": {"mustcoexist": [["apache", "php-app"]]},
    }));
    let layout = solve(&template, 3, &[]).expect("solvable");
    assert_eq!(
        services_per_node(&layout),
        vec![
            (1000, strings(&["apache", "base", "mysql", "php-app"])),
            (1001, strings(&["apache", "base", "php-app"])),
            (1002, strings(&["base"])),
        ]
    );
}

/// A cycle of requirements is refused rather than planned.
#[test]
fn dependency_cycles_are_rejected() {
    let mut catalog = lamp_catalog();
    catalog.insert(
        "x".into(),
        std::sync::Arc::new(service("x", &["install"], &["y"], &[])),
    );
    catalog.insert(
        "y".into(),
        std::sync::Arc::new(service("y", &["install"], &[], &["x"])),
    );
    let template = ClusterTemplate {
        name: "any".into(),
        ..Default::default()
    };
    let services = strings(&["x", "y"]);
    let result = solve_layout(&LayoutRequest {
        template: &template,
        num_machines: 1,
        services: &services,
        hardwaretype: "small",
        imagetype: "debian12",
        catalog_services: &catalog,
    });
    assert!(
        matches!(result, Err(LayoutError::DependencyCycle(_))),
        "{result:?}"
    );
}

/// Adding services: mysql (max 1) goes to the first node only, apache to every node; services
/// already present, unknown ones and ones with unmet requirements are refused.
#[test]
fn added_services_are_placed_within_constraints() {
    let template = lamp_template();
    let catalog = lamp_catalog();
    let existing: Vec<_> = (0..3)
        .map(|i| {
            let layout = NodeLayout {
                nodenum: 1000 + i,
                services: strings(&["base"]),
                hardwaretype: "small".into(),
                imagetype: "debian12".into(),
            };
            (node(&format!("n{}", i + 1)), layout)
        })
        .collect();
    let add = |services: &[&str]| {
        let new_services = strings(services);
        solve_added_services(&AddServicesRequest {
            template: &template,
            nodes: &existing,
            new_services: &new_services,
            catalog_services: &catalog,
        })
    };
    assert_eq!(
        add(&["mysql", "apache"]),
        Ok(vec![
            (node("n1"), strings(&["apache", "mysql"])),
            (node("n2"), strings(&["apache"])),
            (node("n3"), strings(&["apache"])),
        ])
    );
    assert_eq!(add(&["mysql"]), Ok(vec![(node("n1"), strings(&["mysql"]))]));
    assert_eq!(
        add(&["base"]),
        Err(LayoutError::ServiceAlreadyPresent("base".into()))
    );
    assert_eq!(
        add(&["nope"]),
        Err(LayoutError::UnknownService("nope".into()))
    );
    assert_eq!(
        add(&["apache"]),
        Err(LayoutError::MissingDependency {
            service: "apache".into(),
            requires: "mysql".into()
        })
    );
    assert_eq!(add(&[]), Err(LayoutError::NoServices));
}
