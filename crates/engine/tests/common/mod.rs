//! Shared fixtures for the engine tests: a LAMP-like catalog built in code (independent of
//! `examples/catalog.json`), node ids and a compact rendering of plans.

#![allow(dead_code)]

use coopr_engine::PlannedTask;
use coopr_types::{ClusterId, ClusterTemplate, JobId, NodeId, Service, TaskOwner};
use serde_json::json;

/// A service with the given action keys and dependencies.
pub fn service(
    name: &str,
    actions: &[&str],
    install_requires: &[&str],
    runtime_requires: &[&str],
) -> Service {
    let actions: serde_json::Map<String, serde_json::Value> = actions
        .iter()
        .map(|a| {
            (
                a.to_string(),
                json!({"type": "fake", "fields": {"script": format!("{a} {name}")}}),
            )
        })
        .collect();
    serde_json::from_value(json!({
        "name": name,
        "dependencies": {
            "install": {"requires": install_requires},
            "runtime": {"requires": runtime_requires},
        },
        "provisioner": {"actions": actions},
    }))
    .expect("valid service")
}

const FULL: &[&str] = &["install", "configure", "initialize", "start", "stop"];

/// base (install, configure), mysql (install requires base), apache (install requires base,
/// runtime requires mysql), php-app (install requires apache, runtime requires apache and mysql),
/// and redis (not in the lamp template).
pub fn lamp_catalog() -> coopr_types::ServiceDefs {
    [
        service("base", &["install", "configure"], &[], &[]),
        service("mysql", FULL, &["base"], &[]),
        service("apache", FULL, &["base"], &["mysql"]),
        service("php-app", FULL, &["apache"], &["apache", "mysql"]),
        service("redis", FULL, &[], &[]),
    ]
    .into_iter()
    .map(|s| (s.name.clone(), std::sync::Arc::new(s)))
    .collect()
}

/// The lamp template: four services, mysql at most once, 1..=50 machines.
pub fn lamp_template() -> ClusterTemplate {
    serde_json::from_value(json!({
        "name": "lamp",
        "compatibility": {"services": ["base", "mysql", "apache", "php-app"]},
        "defaults": {"services": ["base", "mysql", "apache", "php-app"], "provider": "fake",
                      "hardwaretype": "small", "imagetype": "debian12"},
        "constraints": {
            "size": {"min": 1, "max": 50},
            "services": {"mysql": {"quantities": {"max": 1}}},
        },
    }))
    .expect("valid template")
}

pub fn node(name: &str) -> NodeId {
    NodeId(name.into())
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `(node, services)` pairs, as the planner takes them.
pub fn nodes(spec: &[(&str, &[&str])]) -> Vec<(NodeId, Vec<String>)> {
    spec.iter()
        .map(|(n, services)| (node(n), strings(services)))
        .collect()
}

/// Renders a plan as `"TASK node service"` strings (service omitted for node tasks).
pub fn render(stages: &[Vec<PlannedTask>]) -> Vec<Vec<String>> {
    stages
        .iter()
        .map(|stage| {
            stage
                .iter()
                .map(|t| {
                    if t.service.is_empty() {
                        format!("{} {}", t.task_name, t.node_id)
                    } else {
                        format!("{} {} {}", t.task_name, t.node_id, t.service)
                    }
                })
                .collect()
        })
        .collect()
}

/// Builds an expected plan from `&[&[&str]]`.
pub fn expected(stages: &[&[&str]]) -> Vec<Vec<String>> {
    stages.iter().map(|s| strings(s)).collect()
}

pub const JOB: JobId = JobId {
    cluster: ClusterId(79),
    seq: 1,
};

pub fn owner(worker: &str, deadline_ms: u64) -> TaskOwner {
    TaskOwner {
        provisioner_id: "p1".to_string(),
        worker_id: worker.to_string(),
        deadline_ms,
    }
}
