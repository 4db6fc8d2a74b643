//! `/v2/clusters`: create, list, show, delete, status, plans, config, services, lease, abort,
//! pause, resume; plus Coopr's RPC calls `getNodeProperties` and `getClusterStatuses`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use coopr_engine::layout::{
    solve_added_services, solve_layout, AddServicesRequest, LayoutRequest, NodeLayout,
};
use coopr_state::{
    ClusterRecord, ClusterSpec, ClusterView, Command, NodeSpec, Outcome, ReplicaData,
};
use coopr_types::{
    ClusterAction, ClusterId, ClusterStatus, ClusterTemplate, EntityKind, JobId, JsonMap,
    MachineType, Provider,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, IdempotencyKey, JsonBody};
use super::lenient::{lenient_u32, lenient_u64_opt, valid_name};
use super::{answer, views};
use crate::App;

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    super::routes::Routes::new("clusters")
        .route(
            "/v2/clusters",
            get(list).post(create),
            &[
                (Method::GET, "List the tenant's clusters (?status=...)"),
                (Method::POST, "Create a cluster from a template"),
            ],
        )
        .route(
            "/v2/clusters/{id}",
            get(show).post(set_expire_time).delete(delete),
            &[
                (Method::GET, "A cluster with its nodes"),
                (Method::POST, "Set the cluster's expire time"),
                (
                    Method::DELETE,
                    "Delete a cluster (its machines are deleted)",
                ),
            ],
        )
        .route(
            "/v2/clusters/{id}/status",
            get(status),
            &[(Method::GET, "The current job's progress")],
        )
        .route(
            "/v2/clusters/{id}/plans",
            get(plans),
            &[(Method::GET, "The cluster's job plans")],
        )
        .route(
            "/v2/clusters/{id}/plans/{job}",
            get(plan),
            &[(Method::GET, "One job's plan")],
        )
        .route(
            "/v2/clusters/{id}/config",
            get(get_config).put(put_config),
            &[
                (Method::GET, "The cluster config"),
                (
                    Method::PUT,
                    "Replace the cluster config (and restart services)",
                ),
            ],
        )
        .route(
            "/v2/clusters/{id}/services",
            get(services).post(add_services),
            &[
                (Method::GET, "The cluster's services"),
                (Method::POST, "Add services"),
            ],
        )
        .route(
            "/v2/clusters/{id}/services/{action}",
            post(all_services_action),
            &[(Method::POST, "Start, stop or restart every service")],
        )
        .route(
            "/v2/clusters/{id}/services/{service}/{action}",
            post(one_service_action),
            &[(Method::POST, "Start, stop or restart one service")],
        )
        .route(
            "/v2/clusters/{id}/abort",
            post(abort),
            &[(Method::POST, "Fail a running create")],
        )
        .route(
            "/v2/clusters/{id}/pause",
            post(pause),
            &[(Method::POST, "Pause the running job")],
        )
        .route(
            "/v2/clusters/{id}/resume",
            post(resume),
            &[(Method::POST, "Resume a paused job")],
        )
        .route(
            "/v2/clusters/{id}/clustertemplate/sync",
            post(sync_template),
            &[(Method::POST, "Take the template's current version")],
        )
        .route(
            "/v2/getNodeProperties",
            post(node_properties),
            &[(Method::POST, "Node properties of clusters, filtered")],
        )
        .route(
            "/v2/getClusterStatuses",
            post(cluster_statuses),
            &[(Method::POST, "Statuses of clusters")],
        )
}

fn parse_cluster_id(id: &str) -> ApiResult<ClusterId> {
    id.parse().map_err(|e: coopr_types::IdError| {
        ApiError::bad_request("invalid_cluster_id", e.to_string())
    })
}

/// Whether the caller may see the cluster: same tenant, and its owner unless the caller is the admin.
fn visible(caller: &Caller, record: &ClusterRecord) -> bool {
    visible_cluster(caller, &record.cluster)
}

fn visible_cluster(caller: &Caller, cluster: &coopr_types::Cluster) -> bool {
    let account = &cluster.account;
    account.tenant_id == caller.tenant
        && (account.tenant_incarnation.is_empty()
            || account.tenant_incarnation == caller.incarnation)
        && (caller.is_admin() || account.user_id == caller.user)
}

/// The replica copy of a cluster in a shard this DC replicates.
fn replica_cluster(
    state: &coopr_state::State,
    id: ClusterId,
    shard_count: u32,
) -> Option<&ClusterView> {
    match &state.replica(id.shard(shard_count))?.data {
        ReplicaData::Clusters(view) => view.clusters.get(&id),
        ReplicaData::Global(_) => None,
    }
}

/// Runs `owned` on a visible cluster of a shard this DC owns, or `replica` on the visible
/// replica copy of one it replicates (the forwarding middleware sends the reads a copy cannot
/// answer to the owner), or answers 404.
fn with_any_cluster<T>(
    app: &App,
    caller: &Caller,
    id: &str,
    owned: impl FnOnce(&ClusterRecord) -> T,
    replica: impl FnOnce(&ClusterView) -> T,
) -> ApiResult<T> {
    let id = parse_cluster_id(id)?;
    let state = app.core.read();
    if let Some(record) = state.cluster(id) {
        if visible(caller, record) {
            return Ok(owned(record));
        }
    } else if let Some(view) = replica_cluster(&state, id, app.config.shard_count) {
        if visible_cluster(caller, &view.cluster) {
            return Ok(replica(view));
        }
    }
    Err(ApiError::not_found("cluster", id))
}

/// Runs `f` on a visible cluster, or answers 404.
fn with_cluster<T>(
    app: &App,
    caller: &Caller,
    id: &str,
    f: impl FnOnce(&ClusterRecord) -> ApiResult<T>,
) -> ApiResult<T> {
    let id = parse_cluster_id(id)?;
    let state = app.core.read();
    match state.cluster(id) {
        Some(record) if visible(caller, record) => f(record),
        _ => Err(ApiError::not_found("cluster", id)),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let filter: Option<BTreeSet<ClusterStatus>> = q.status.map(|s| {
        s.split(',')
            .filter_map(|t| ClusterStatus::parse_ignore_case(t.trim()))
            .collect()
    });
    let wanted = |c: &coopr_types::Cluster| {
        visible_cluster(&caller, c) && filter.as_ref().is_none_or(|f| f.contains(&c.status))
    };
    // Only the caller's tenant's clusters are visited (the state's tenant indexes): one
    // tenant's list costs what it holds, not what every tenant holds.
    let state = app.core.read();
    let mut list: Vec<(ClusterId, Value)> = state
        .tenant_clusters(&caller.tenant)
        .filter(|r| wanted(&r.cluster))
        .map(|r| (r.cluster.id, views::cluster_summary(r)))
        .collect();
    // Replica copies of the shards other DCs own: the staleness of the answer is the worst of
    // the copies that contributed.
    let mut contributed = BTreeSet::new();
    for (shard, copy) in state.tenant_copies(&caller.tenant) {
        if wanted(&copy.cluster) {
            list.push((copy.cluster.id, views::replica_summary(copy)));
            contributed.insert(shard);
        }
    }
    let now = app.clock.wall_ms();
    let staleness = contributed
        .into_iter()
        .map(|shard| crate::replication::staleness_ms(&state, &app.replication, shard, now))
        .max()
        .unwrap_or(0);
    drop(state);
    list.sort_by_key(|(id, _)| *id);
    let list: Vec<Value> = list.into_iter().map(|(_, v)| v).collect();
    Ok((
        [(super::forward::STALENESS_HEADER, staleness.to_string())],
        Json(list),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    name: String,
    #[serde(default)]
    description: String,
    cluster_template: String,
    #[serde(deserialize_with = "lenient_u32")]
    num_machines: u32,
    provider: Option<String>,
    hardwaretype: Option<String>,
    imagetype: Option<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    initial_lease_duration: Option<u64>,
    dns_suffix: Option<String>,
    #[serde(default)]
    config: JsonMap,
    #[serde(default)]
    provider_fields: JsonMap,
}

/// Bounds every string and free-form value of a create: each is copied into the cluster's
/// records and into every task of the cluster, so a large one would make each of those too
/// large to deliver (a `dnsSuffix` is part of every hostname).
fn check_create_limits(req: &CreateRequest) -> ApiResult<()> {
    use super::limits::{self, MAX_DESCRIPTION_BYTES, MAX_DNS_NAME_BYTES};
    limits::text("description", &req.description, MAX_DESCRIPTION_BYTES)?;
    limits::text_opt("dnsSuffix", req.dns_suffix.as_deref(), MAX_DNS_NAME_BYTES)?;
    for (field, name) in [
        ("clusterTemplate", Some(&req.cluster_template)),
        ("provider", req.provider.as_ref()),
        ("hardwaretype", req.hardwaretype.as_ref()),
        ("imagetype", req.imagetype.as_ref()),
    ] {
        limits::text_opt(field, name.map(String::as_str), MAX_NAME_BYTES)?;
    }
    limits::list("services", &req.services)?;
    for service in &req.services {
        limits::text("a service name", service, MAX_NAME_BYTES)?;
    }
    limits::value("config", &req.config)?;
    limits::value("providerFields", &req.provider_fields)
}

/// Longest catalog name a request may refer to (names are stored under 256 characters).
const MAX_NAME_BYTES: usize = 255;

/// Most machines in one cluster (Coopr's bound).
const MAX_MACHINES: u32 = 10_000;

async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> ApiResult<Response> {
    let key = caller.idempotency_scope(idempotency);
    if let Some(previous) = app.previous_outcome(key.as_deref()) {
        return answer(previous);
    }
    valid_name("name", &req.name)?;
    check_create_limits(&req)?;
    if req.num_machines == 0 || req.num_machines > MAX_MACHINES {
        return Err(ApiError::bad_request(
            "invalid_num_machines",
            format!(
                "numMachines must be between 1 and {MAX_MACHINES}, got {}",
                req.num_machines
            ),
        ));
    }
    // The catalog is copied out so that no lock is held while the layout is solved.
    let catalog = app
        .global(&app.core.read())
        .catalogs
        .get(&caller.tenant)
        .cloned()
        .unwrap_or_default();
    let spec = {
        let template: ClusterTemplate = entity(
            &catalog,
            EntityKind::Clustertemplates,
            &req.cluster_template,
        )?;
        let template = super::catalog::resolved_for_cluster(&catalog, template)?;
        let provider_name = req
            .provider
            .clone()
            .unwrap_or_else(|| template.defaults.provider.clone());
        let mut provider: Provider = entity(&catalog, EntityKind::Providers, &provider_name)?;
        for (k, v) in &req.provider_fields {
            provider.provisioner.insert(k.clone(), v.clone());
        }
        let hardwaretype_name = req
            .hardwaretype
            .clone()
            .unwrap_or_else(|| template.defaults.hardwaretype.clone());
        let imagetype_name = req
            .imagetype
            .clone()
            .unwrap_or_else(|| template.defaults.imagetype.clone());
        let hardwaretype: MachineType =
            entity(&catalog, EntityKind::Hardwaretypes, &hardwaretype_name)?;
        let imagetype: MachineType = entity(&catalog, EntityKind::Imagetypes, &imagetype_name)?;
        let services = catalog.services();
        let layout = solve_layout(&LayoutRequest {
            template: &template,
            num_machines: req.num_machines,
            services: &req.services,
            hardwaretype: &hardwaretype_name,
            imagetype: &imagetype_name,
            catalog_services: &services,
        })
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        let flavor = provider_field(&hardwaretype, &provider_name, "flavor");
        let image = provider_field(&imagetype, &provider_name, "image");
        let sshuser = provider_field(&imagetype, &provider_name, "sshuser");
        let nodes = layout
            .iter()
            .map(|n: &NodeLayout| NodeSpec {
                nodenum: n.nodenum,
                services: n.services.clone(),
                hardwaretype: n.hardwaretype.clone(),
                imagetype: n.imagetype.clone(),
                flavor: flavor.clone(),
                image: image.clone(),
                sshuser: sshuser.clone(),
            })
            .collect();
        let cluster_services: Vec<String> = layout
            .iter()
            .flat_map(|n| n.services.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut config = template.defaults.config.clone();
        for (k, v) in req.config {
            config.insert(k, v);
        }
        let lease = &template.administration.leaseduration;
        let initial_lease_ms = req.initial_lease_duration.unwrap_or(lease.initial);
        if lease.max != 0 && (initial_lease_ms == 0 || initial_lease_ms > lease.max) {
            return Err(ApiError::bad_request(
                "invalid_lease",
                format!(
                    "initialLeaseDuration must be between 1 and {} ms",
                    lease.max
                ),
            ));
        }
        ClusterSpec {
            tenant: caller.tenant.clone(),
            user: caller.user.clone(),
            name: req.name,
            description: req.description,
            dns_suffix: req
                .dns_suffix
                .unwrap_or_else(|| template.defaults.dns_suffix.clone()),
            template,
            provider,
            hardwaretype: hardwaretype_name,
            imagetype: imagetype_name,
            services: cluster_services,
            config,
            initial_lease_ms,
            nodes,
            tenant_incarnation: caller.incarnation.clone(),
        }
    };
    let Some(shard) = app.pick_shard() else {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_owner",
            format!(
                "datacenter {} owns no cluster shard; create clusters in another datacenter",
                app.config.dc
            ),
        ));
    };
    let outcome = app
        .propose(
            Command::CreateCluster {
                shard,
                spec: Box::new(spec),
            },
            key,
        )
        .await?;
    if let Err(e) = &outcome {
        if e.error_code() == coopr_state::ErrorCode::QuotaElsewhere {
            // The global shard moved while the request was on its way: the retry is routed to
            // its new owner (`forward.rs`).
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string());
            err.retry_after_s = Some(1);
            return Err(err);
        }
    }
    answer(outcome)
}

fn entity<T: serde::de::DeserializeOwned>(
    catalog: &coopr_state::TenantCatalog,
    kind: EntityKind,
    name: &str,
) -> ApiResult<T> {
    let what = kind.as_str().trim_end_matches('s');
    let value = catalog
        .latest(kind, name)
        .ok_or_else(|| ApiError::not_found(what, name))?;
    serde_json::from_value(value.clone()).map_err(|e| {
        ApiError::bad_request(
            "invalid_catalog_entity",
            format!("{what} {name} is invalid: {e}"),
        )
    })
}

fn provider_field(machine: &MachineType, provider: &str, field: &str) -> String {
    machine
        .providermap
        .get(provider)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn show(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    with_any_cluster(
        &app,
        &caller,
        &id,
        views::cluster_detail,
        views::replica_detail,
    )
    .map(Json)
}

async fn status(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    with_any_cluster(&app, &caller, &id, views::status, views::replica_status).map(Json)
}

async fn plans(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    with_cluster(&app, &caller, &id, |r| {
        // Under the state's read lock: a job is either still in the record or in the archive.
        let mut runs: BTreeMap<u32, Value> = app
            .core
            .archive()
            .jobs_of(r.cluster.id)
            .map_err(archive_unreadable)?
            .iter()
            .map(|run| (run.job.id.seq, views::plan(run)))
            .collect();
        runs.extend(r.jobs.iter().map(|(seq, run)| (*seq, views::plan(run))));
        if runs.is_empty() {
            return Err(ApiError::not_found("plans for cluster", r.cluster.id));
        }
        Ok(Json(runs.into_values().collect()))
    })
}

fn archive_unreadable(e: anyhow::Error) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "archive_unreadable",
        format!("the job archive cannot be read: {e:#}"),
    )
}

async fn plan(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((id, job)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    with_cluster(&app, &caller, &id, |r| {
        let job: JobId = job.parse().map_err(|e: coopr_types::IdError| {
            ApiError::bad_request("invalid_job_id", e.to_string())
        })?;
        if job.cluster != r.cluster.id {
            return Err(ApiError::bad_request(
                "invalid_job_id",
                format!("job {job} is not a job of cluster {}", r.cluster.id),
            ));
        }
        if let Some(run) = r.jobs.get(&job.seq) {
            return Ok(Json(views::plan(run)));
        }
        app.core
            .archive()
            .job(job)
            .map_err(archive_unreadable)?
            .map(|run| Json(views::plan(&run)))
            .ok_or_else(|| ApiError::bad_request("invalid_job_id", format!("no job {job}")))
    })
}

async fn get_config(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    with_any_cluster(
        &app,
        &caller,
        &id,
        |r| Value::Object(r.cluster.config.clone()),
        |v| Value::Object(v.cluster.config.clone()),
    )
    .map(Json)
}

async fn services(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    with_any_cluster(
        &app,
        &caller,
        &id,
        |r| json!(r.cluster.services),
        |v| json!(v.cluster.services),
    )
    .map(Json)
}

/// Checks visibility, then proposes a command built from the cluster ID.
async fn cluster_command(
    app: &App,
    caller: &Caller,
    id: &str,
    idempotency: Option<IdempotencyKey>,
    build: impl FnOnce(&ClusterRecord) -> ApiResult<Command>,
) -> ApiResult<Response> {
    let key = caller.idempotency_scope(idempotency);
    if let Some(previous) = app.previous_outcome(key.as_deref()) {
        return answer(previous);
    }
    let command = with_cluster(app, caller, id, build)?;
    answer(app.propose(command, key).await?)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OptionalBody {
    #[serde(default)]
    #[allow(dead_code)]
    provider_fields: JsonMap,
}

async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
    JsonBody(_body): JsonBody<Option<OptionalBody>>,
) -> ApiResult<Response> {
    cluster_command(&app, &caller, &id, idempotency, |r| {
        Ok(Command::StartOperation {
            cluster: r.cluster.id,
            action: ClusterAction::ClusterDelete,
            services: Vec::new(),
            config: None,
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpireRequest {
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    expire_time: Option<u64>,
}

async fn set_expire_time(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExpireRequest>,
) -> ApiResult<Response> {
    let expire_time = req
        .expire_time
        .ok_or_else(|| ApiError::bad_request("missing_field", "expireTime is required"))?;
    cluster_command(&app, &caller, &id, idempotency, |r| {
        let c = &r.cluster;
        if matches!(c.status, ClusterStatus::Pending | ClusterStatus::Terminated) {
            return Err(ApiError::bad_request(
                "invalid_cluster_status",
                format!("cluster is {}", c.status),
            ));
        }
        if expire_time < c.create_time {
            return Err(ApiError::bad_request(
                "invalid_expire_time",
                "expireTime is before the cluster's createTime",
            ));
        }
        let lease = &c.cluster_template.administration.leaseduration;
        if lease.max != 0 {
            if expire_time > c.create_time.saturating_add(lease.max) {
                return Err(ApiError::bad_request(
                    "invalid_expire_time",
                    "expireTime is beyond the template's maximum lease",
                ));
            }
            if lease.step != 0 && expire_time > c.expire_time.saturating_add(lease.step) {
                return Err(ApiError::bad_request(
                    "invalid_expire_time",
                    "expireTime extends the lease by more than one step",
                ));
            }
        }
        Ok(Command::SetExpireTime {
            cluster: c.id,
            expire_time,
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRequest {
    config: Option<JsonMap>,
    /// Absent means restart (Coopr's default).
    #[serde(default, deserialize_with = "super::lenient::lenient_bool_opt")]
    restart: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    provider_fields: JsonMap,
}

async fn put_config(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ConfigRequest>,
) -> ApiResult<Response> {
    let config = req
        .config
        .ok_or_else(|| ApiError::bad_request("missing_field", "config is required"))?;
    super::limits::value("config", &config)?;
    let action = if req.restart.unwrap_or(true) {
        ClusterAction::ClusterConfigureWithRestart
    } else {
        ClusterAction::ClusterConfigure
    };
    cluster_command(&app, &caller, &id, idempotency, |r| {
        Ok(Command::StartOperation {
            cluster: r.cluster.id,
            action,
            services: Vec::new(),
            config: Some(config),
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddServicesBody {
    services: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    provider_fields: JsonMap,
}

async fn add_services(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<AddServicesBody>,
) -> ApiResult<Response> {
    if req.services.is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            "services must not be empty",
        ));
    }
    super::limits::list("services", &req.services)?;
    let services = {
        let state = app.core.read();
        app.global(&state)
            .catalogs
            .get(&caller.tenant)
            .map(|c| c.services())
            .unwrap_or_default()
    };
    cluster_command(&app, &caller, &id, idempotency, |r| {
        if r.cluster.status != ClusterStatus::Active {
            return Err(ApiError::conflict(
                "cluster_not_active",
                format!("cluster is {}", r.cluster.status),
            ));
        }
        let nodes: Vec<_> = r
            .nodes
            .values()
            .map(|n| {
                let layout = NodeLayout {
                    nodenum: n.properties.nodenum,
                    services: n.properties.services.iter().map(String::from).collect(),
                    hardwaretype: n.properties.hardwaretype.to_string(),
                    imagetype: n.properties.imagetype.to_string(),
                };
                (n.id.clone(), layout)
            })
            .collect();
        let placement = solve_added_services(&AddServicesRequest {
            template: &r.cluster.cluster_template,
            nodes: &nodes,
            new_services: &req.services,
            catalog_services: &services,
        })
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        Ok(Command::AddServices {
            cluster: r.cluster.id,
            services: req.services.clone(),
            placement: placement.into_iter().collect::<BTreeMap<_, _>>(),
        })
    })
    .await
}

fn service_action(action: &str) -> ApiResult<ClusterAction> {
    match action {
        "start" => Ok(ClusterAction::StartServices),
        "stop" => Ok(ClusterAction::StopServices),
        "restart" => Ok(ClusterAction::RestartServices),
        other => Err(ApiError::bad_request(
            "invalid_action",
            format!("unknown service action {other:?}"),
        )),
    }
}

async fn all_services_action(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((id, action)): Path<(String, String)>,
    JsonBody(_body): JsonBody<Option<OptionalBody>>,
) -> ApiResult<Response> {
    let action = service_action(&action)?;
    cluster_command(&app, &caller, &id, idempotency, |r| {
        Ok(Command::StartOperation {
            cluster: r.cluster.id,
            action,
            services: Vec::new(),
            config: None,
        })
    })
    .await
}

async fn one_service_action(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((id, service, action)): Path<(String, String, String)>,
    JsonBody(_body): JsonBody<Option<OptionalBody>>,
) -> ApiResult<Response> {
    let action = service_action(&action)?;
    cluster_command(&app, &caller, &id, idempotency, |r| {
        if !r.cluster.services.iter().any(|s| *s == service) {
            return Err(ApiError::not_found("service", &service));
        }
        Ok(Command::StartOperation {
            cluster: r.cluster.id,
            action,
            services: vec![service.clone()],
            config: None,
        })
    })
    .await
}

async fn abort(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // Coopr: a no-op unless the cluster is pending.
    let pending = with_cluster(&app, &caller, &id, |r| {
        Ok(r.cluster.status == ClusterStatus::Pending)
    })?;
    if !pending {
        return Ok(().into_response());
    }
    cluster_command(&app, &caller, &id, idempotency, |r| {
        Ok(Command::Abort {
            cluster: r.cluster.id,
        })
    })
    .await
}

async fn pause(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    cluster_command(&app, &caller, &id, idempotency, |r| {
        Ok(Command::Pause {
            cluster: r.cluster.id,
        })
    })
    .await
}

async fn resume(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    cluster_command(&app, &caller, &id, idempotency, |r| {
        Ok(Command::Resume {
            cluster: r.cluster.id,
        })
    })
    .await
}

async fn sync_template(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let catalog = app
        .global(&app.core.read())
        .catalogs
        .get(&caller.tenant)
        .cloned()
        .unwrap_or_default();
    cluster_command(&app, &caller, &id, idempotency, |r| {
        if r.cluster.status != ClusterStatus::Active {
            return Err(ApiError::conflict(
                "cluster_not_active",
                format!("cluster is {}", r.cluster.status),
            ));
        }
        let template: ClusterTemplate = entity(
            &catalog,
            EntityKind::Clustertemplates,
            &r.cluster.cluster_template.name,
        )?;
        let template = super::catalog::resolved_for_cluster(&catalog, template)?;
        Ok(Command::SyncTemplate {
            cluster: r.cluster.id,
            template: Box::new(template),
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodePropertiesRequest {
    cluster_id: Option<String>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
}

async fn node_properties(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(req): JsonBody<NodePropertiesRequest>,
) -> ApiResult<Json<Value>> {
    let id = req
        .cluster_id
        .ok_or_else(|| ApiError::bad_request("missing_field", "clusterId is required"))?;
    let result = with_cluster(&app, &caller, &id, |r| {
        let mut out = serde_json::Map::new();
        for node in r.nodes.values() {
            if !req
                .services
                .iter()
                .all(|s| node.properties.services.iter().any(|n| n == s))
            {
                continue;
            }
            let Value::Object(all) = serde_json::to_value(&node.properties).unwrap_or(Value::Null)
            else {
                continue;
            };
            let props: serde_json::Map<String, Value> = if req.properties.is_empty() {
                all
            } else {
                all.into_iter()
                    .filter(|(k, _)| req.properties.contains(k))
                    .collect()
            };
            out.insert(node.id.0.to_string(), Value::Object(props));
        }
        Ok(Value::Object(out))
    });
    match result {
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => Ok(Json(json!({}))),
        other => other.map(Json),
    }
}

async fn cluster_statuses(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
    let state = app.core.read();
    let mut records: Vec<&ClusterRecord> = state
        .tenant_clusters(&caller.tenant)
        .filter(|r| visible(&caller, r))
        .collect();
    records.sort_by_key(|r| r.cluster.id);
    Ok(Json(records.into_iter().map(views::status).collect()))
}

/// The JSON answer for an outcome: `{"id"}` for a created cluster, an empty 200 otherwise.
pub fn outcome_body(outcome: &Outcome) -> Option<Value> {
    match outcome {
        Outcome::ClusterCreated { id } => Some(json!({ "id": id })),
        _ => None,
    }
}
