//! JSON views in Coopr's shapes (see COOPR_API.md): cluster summaries and details, nodes,
//! progress, plans, and the task handed to a provisioner.

use coopr_engine::job::JobRun;
use coopr_state::{ClusterRecord, ClusterView, State};
use coopr_types::{Cluster, Node, Task};
use serde_json::{json, Map, Value};

/// `{action, actionstatus, stepstotal, stepscompleted}` of the latest job.
pub fn progress(record: &ClusterRecord) -> Value {
    match record.latest_summary() {
        Some(job) => json!({
            "action": job.action.as_str(),
            "actionstatus": job.status.as_str(),
            "stepstotal": job.stepstotal,
            "stepscompleted": job.stepscompleted,
        }),
        None => json!({"action": "", "actionstatus": "", "stepstotal": 0, "stepscompleted": 0}),
    }
}

/// `GET /clusters/{id}/status`.
pub fn status(record: &ClusterRecord) -> Value {
    status_of(&record.cluster, progress(record))
}

/// `/status`: the progress of the latest job plus the cluster's ID and status.
fn status_of(cluster: &Cluster, mut progress: Value) -> Value {
    if let Value::Object(map) = &mut progress {
        map.insert("clusterid".into(), json!(cluster.id));
        map.insert("status".into(), json!(cluster.status.as_str()));
    }
    progress
}

fn base_fields(v: &Value) -> Value {
    json!({"name": v.get("name"), "version": v.get("version")})
}

/// An entry of `GET /clusters`.
pub fn cluster_summary(record: &ClusterRecord) -> Value {
    summary(&record.cluster, record.nodes.len(), progress(record))
}

/// An entry of `GET /clusters`, for an owned cluster or a replica copy.
fn summary(c: &Cluster, num_nodes: usize, progress: Value) -> Value {
    let provider = serde_json::to_value(&c.provider).unwrap_or(Value::Null);
    let template = serde_json::to_value(&c.cluster_template).unwrap_or(Value::Null);
    json!({
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "ownerId": c.account.user_id,
        "createTime": c.create_time,
        "expireTime": c.expire_time,
        "numNodes": num_nodes,
        "status": c.status.as_str(),
        "provider": base_fields(&provider),
        "clusterTemplate": base_fields(&template),
        "services": c.services,
        "progress": progress,
    })
}

/// `GET /clusters/{id}`: the cluster with its nodes embedded.
pub fn cluster_detail(record: &ClusterRecord) -> Value {
    let c = &record.cluster;
    let mut v = json!({
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "account": {"userId": c.account.user_id, "tenantId": c.account.tenant_id},
        "createTime": c.create_time,
        "expireTime": c.expire_time,
        "provider": c.provider,
        "clusterTemplate": c.cluster_template,
        "nodes": record.nodes.values().map(|n| node(record, n)).collect::<Vec<_>>(),
        "services": c.services,
        "latestJobId": c.latest_job_id,
        "status": c.status.as_str(),
        "config": c.config,
        "links": [],
        "progress": progress(record),
    });
    if let (Some(message), Value::Object(map)) = (&c.message, &mut v) {
        map.insert("message".into(), json!(message));
    }
    v
}

pub fn node(record: &ClusterRecord, n: &Node) -> Value {
    let services: Vec<Value> = n
        .properties
        .services
        .iter()
        .map(|s| {
            record
                .service_defs
                .get(s.as_str())
                .and_then(|d| serde_json::to_value(d).ok())
                .unwrap_or_else(|| json!({"name": s}))
        })
        .collect();
    json!({
        "id": n.id,
        "clusterId": n.cluster_id,
        "services": services,
        "properties": n.properties,
        "actions": n.actions,
        "provisionerResults": n.provisioner_results,
        "links": [],
    })
}

/// A plan: `{id, clusterId, action, currentStage, stages: [[{id, taskName, nodeId, service}]]}`.
pub fn plan(run: &JobRun) -> Value {
    let stages: Vec<Vec<Value>> = run
        .job
        .stages
        .iter()
        .map(|stage| {
            stage
                .iter()
                .filter_map(|t| run.tasks.get(t))
                .map(|t| json!({"id": t.id, "taskName": t.task_name, "nodeId": t.node_id, "service": t.service}))
                .collect()
        })
        .collect();
    json!({
        "id": run.job.id,
        "clusterId": run.job.cluster_id,
        "action": run.job.action.plan_name(),
        "currentStage": run.job.current_stage,
        "stages": stages,
    })
}

/// Progress of a replica copy: from the in-flight operation (steps from its plan; completed
/// steps are not replicated, so the machines checkpointed so far stand for them), else from the
/// summary of the latest finished job.
pub fn replica_progress(view: &ClusterView) -> Value {
    if let Some(flight) = &view.in_flight {
        let total: usize = flight
            .plan
            .iter()
            .flat_map(|stage| stage.iter().map(|step| step.2.len()))
            .sum();
        return json!({
            "action": flight.action.as_str(),
            "actionstatus": "running",
            "stepstotal": total,
            "stepscompleted": flight.checkpoints.len().min(total),
        });
    }
    let latest = view
        .cluster
        .latest_job_id
        .and_then(|id| view.jobs.get(&id))
        .or_else(|| view.jobs.values().next_back());
    match latest {
        Some(job) => json!({
            "action": job.action.as_str(),
            "actionstatus": job.status.as_str(),
            "stepstotal": job.stepstotal,
            "stepscompleted": job.stepscompleted,
        }),
        None => json!({"action": "", "actionstatus": "", "stepstotal": 0, "stepscompleted": 0}),
    }
}

/// `GET /clusters/{id}/status` from a replica copy.
pub fn replica_status(view: &ClusterView) -> Value {
    status_of(&view.cluster, replica_progress(view))
}

/// An entry of `GET /clusters` from a replica copy.
pub fn replica_summary(view: &ClusterView) -> Value {
    summary(&view.cluster, view.nodes.len(), replica_progress(view))
}

/// `GET /clusters/{id}` from a replica copy: nodes carry no action history (not replicated)
/// and their services are named only.
pub fn replica_detail(view: &ClusterView) -> Value {
    let c = &view.cluster;
    let nodes: Vec<Value> = view
        .nodes
        .values()
        .map(|n| {
            let services: Vec<Value> = n
                .properties
                .services
                .iter()
                .map(|s| json!({"name": s}))
                .collect();
            json!({
                "id": n.id,
                "clusterId": n.cluster_id,
                "services": services,
                "properties": n.properties,
                "provisionerResults": n.provisioner_results,
                "links": [],
            })
        })
        .collect();
    let mut v = json!({
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "account": {"userId": c.account.user_id, "tenantId": c.account.tenant_id},
        "createTime": c.create_time,
        "expireTime": c.expire_time,
        "provider": c.provider,
        "clusterTemplate": c.cluster_template,
        "nodes": nodes,
        "services": c.services,
        "latestJobId": c.latest_job_id,
        "status": c.status.as_str(),
        "config": c.config,
        "links": [],
        "progress": replica_progress(view),
    });
    if let (Some(message), Value::Object(map)) = (&c.message, &mut v) {
        map.insert("message".into(), json!(message));
    }
    v
}

/// The task JSON a provisioner receives from `POST /v2/tasks/take` (`None`: no such task or
/// node). The cluster config's macros (`%host.service.zookeeper%`, ...; `coopr_engine::macros`)
/// are expanded for the task's node, except for the provider's tasks (CREATE, CONFIRM,
/// DELETE), as Coopr does; a macro that cannot be expanded is the error.
pub fn task_for_provisioner(
    state: &State,
    task: &Task,
) -> Option<Result<Value, coopr_engine::MacroError>> {
    let record = state.cluster(task.cluster_id())?;
    let node = record.nodes.get(&task.node_id)?;
    let c = &record.cluster;
    let p = &node.properties;
    let cluster_config = if task.task_name.is_provider_task() {
        Value::Object(c.config.clone())
    } else {
        let context = coopr_engine::MacroContext {
            cluster_owner: c.account.user_id.to_string(),
            nodes: record
                .nodes
                .values()
                .map(coopr_engine::macros::MacroNode::from)
                .collect(),
            task_node: Some(task.node_id.clone()),
        };
        match coopr_engine::expand_value(&Value::Object(c.config.clone()), &context) {
            Ok(expanded) => expanded,
            Err(e) => return Some(Err(e)),
        }
    };
    let mut config = Map::new();
    config.insert("cluster".into(), cluster_config);
    if task.task_name.is_service_task() {
        let action = record
            .service_defs
            .get(task.service.as_str())
            .and_then(|s| s.provisioner.actions.get(&task.task_name.action_key()))
            .map(|a| json!({"type": a.plugin, "fields": a.fields}))
            .unwrap_or(Value::Null);
        config.insert(
            "service".into(),
            json!({"name": task.service, "action": action}),
        );
    }
    config.insert("hostname".into(), json!(p.hostname));
    config.insert("ipaddresses".into(), json!(p.ipaddresses));
    config.insert("nodenum".into(), json!(p.nodenum));
    config.insert("sshuser".into(), json!(p.sshuser));
    config.insert("hardwaretype".into(), json!(p.hardwaretype));
    config.insert("imagetype".into(), json!(p.imagetype));
    config.insert("flavor".into(), json!(p.flavor));
    config.insert("image".into(), json!(p.image));
    config.insert("automators".into(), json!(p.automators));
    config.insert("services".into(), json!(p.services));
    config.insert("clustername".into(), json!(c.name));
    config.insert("dnsSuffix".into(), json!(c.dns_suffix));
    config.insert(
        "provider".into(),
        json!({"name": c.provider.name, "version": c.provider.version,
               "providertype": c.provider.providertype, "provisioner": c.provider.provisioner}),
    );
    let nodes: Map<String, Value> = record
        .nodes
        .values()
        .map(|n| {
            (
                n.id.0.to_string(),
                serde_json::to_value(&n.properties).unwrap_or(Value::Null),
            )
        })
        .collect();
    config.insert("nodes".into(), Value::Object(nodes));
    for (k, v) in &node.provisioner_results {
        config.insert(k.clone(), v.clone());
    }
    Some(Ok(json!({
        "taskId": task.id,
        "jobId": task.job_id(),
        "clusterId": task.cluster_id(),
        "taskName": task.task_name,
        "nodeId": task.node_id,
        "attempt": task.attempts,
        "config": config,
    })))
}
