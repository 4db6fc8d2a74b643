//! Tenants (superadmin only), their API keys, and the provisioner listing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Json;
use coopr_state::Command;
use coopr_types::{hash_api_key, ApiKey, EntityKind, Tenant, UNLIMITED};
use serde::Deserialize;
use serde_json::{json, Value};

use super::answer;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, IdempotencyKey, JsonBody, SUPERADMIN};
use super::lenient::valid_name;
use crate::App;

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    super::routes::Routes::new("tenants")
        .route(
            "/v2/tenants",
            get(list).post(create),
            &[
                (Method::GET, "List tenants (superadmin)"),
                (Method::POST, "Create a tenant (superadmin)"),
            ],
        )
        .route(
            "/v2/tenants/{name}",
            get(show).put(put).delete(delete),
            &[
                (Method::GET, "A tenant (superadmin)"),
                (Method::PUT, "Replace a tenant (superadmin)"),
                (Method::DELETE, "Delete a tenant (superadmin)"),
            ],
        )
        .route(
            "/v2/tenants/{name}/apikeys",
            post(create_key),
            &[(Method::POST, "Create an API key for a tenant")],
        )
        .route(
            "/v2/provisioners",
            get(list_provisioners),
            &[(Method::GET, "Registered provisioners (superadmin)")],
        )
}

fn tenant_view(t: &Tenant) -> Value {
    json!({"name": t.name, "description": t.description, "workers": t.workers, "maxClusters": t.max_clusters, "maxNodes": t.max_nodes})
}

async fn list(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Vec<Value>>> {
    caller.require_superadmin()?;
    Ok(Json(
        app.global(&app.core.read())
            .tenants
            .values()
            .map(tenant_view)
            .collect(),
    ))
}

async fn show(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    app.global(&app.core.read())
        .tenants
        .get(&name)
        .map(|t| Json(tenant_view(t)))
        .ok_or_else(|| ApiError::not_found("tenant", &name))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TenantBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "super::lenient::lenient_u64_opt")]
    workers: Option<u64>,
    #[serde(default, deserialize_with = "super::lenient::lenient_u64_opt")]
    max_clusters: Option<u64>,
    #[serde(default, deserialize_with = "super::lenient::lenient_u64_opt")]
    max_nodes: Option<u64>,
}

#[derive(Deserialize)]
struct TenantRequest {
    tenant: TenantBody,
    #[serde(default, deserialize_with = "super::lenient::lenient_bool")]
    bootstrap: bool,
}

/// Most workers a tenant may ask for.
const MAX_TENANT_WORKERS: u64 = 100_000;

fn quota(v: Option<u64>, field: &str) -> ApiResult<u32> {
    match v {
        None => Ok(UNLIMITED),
        Some(n) if n <= u64::from(UNLIMITED) => Ok(n as u32),
        Some(_) => Err(ApiError::bad_request(
            "invalid_quota",
            format!("{field} is too large"),
        )),
    }
}

fn to_tenant(body: TenantBody, id: String) -> ApiResult<Tenant> {
    valid_name("tenant name", &body.name)?;
    super::limits::text(
        "description",
        &body.description,
        super::limits::MAX_DESCRIPTION_BYTES,
    )?;
    Ok(Tenant {
        id,
        // Coopr's default: no workers until the tenant asks for some.
        workers: match body.workers {
            None => 0,
            Some(n) if n <= MAX_TENANT_WORKERS => n as u32,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_quota",
                    format!("workers is above {MAX_TENANT_WORKERS}"),
                ))
            }
        },
        max_clusters: quota(body.max_clusters, "maxClusters")?,
        max_nodes: quota(body.max_nodes, "maxNodes")?,
        name: body.name,
        description: body.description,
    })
}

async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    JsonBody(req): JsonBody<TenantRequest>,
) -> ApiResult<Response> {
    caller.require_superadmin()?;
    let key = caller.idempotency_scope(idempotency);
    if let Some(previous) = app.previous_outcome(key.as_deref()) {
        return answer(previous);
    }
    if app
        .global(&app.core.read())
        .tenants
        .contains_key(&req.tenant.name)
    {
        return Err(ApiError::conflict(
            "tenant_exists",
            format!("tenant {} already exists", req.tenant.name),
        ));
    }
    let tenant = to_tenant(req.tenant, app.random.new_id())?;
    let name = tenant.name.clone();
    let result = app.propose(Command::PutTenant { tenant }, key).await?;
    if req.bootstrap && result.is_ok() {
        let entities = {
            let state = app.core.read();
            let source = app
                .global(&state)
                .catalogs
                .get(SUPERADMIN)
                .cloned()
                .unwrap_or_default();
            EntityKind::ALL
                .into_iter()
                .map(|k| (k, source.list(k).into_iter().cloned().collect()))
                .collect()
        };
        app.propose(
            Command::ImportCatalog {
                tenant: name,
                entities,
            },
            None,
        )
        .await??;
    }
    answer(result)
}

async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<TenantRequest>,
) -> ApiResult<Response> {
    caller.require_superadmin()?;
    if req.tenant.name != name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            "the body's tenant name differs from the path's",
        ));
    }
    let tenant = to_tenant(req.tenant, app.random.new_id())?;
    let key = caller.idempotency_scope(idempotency);
    answer(app.propose(Command::PutTenant { tenant }, key).await?)
}

async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require_superadmin()?;
    if name == SUPERADMIN {
        return Err(ApiError::forbidden(
            "the superadmin tenant cannot be deleted",
        ));
    }
    let key = caller.idempotency_scope(idempotency);
    answer(app.propose(Command::DeleteTenant { name }, key).await?)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KeyRequest {
    user: Option<String>,
    key: Option<String>,
    #[serde(default)]
    any_user: bool,
}

/// Creates an API key for a tenant, returned once and stored only as its hash. The body names
/// the one user the key authenticates (`{"user": "alice"}`; `"admin"` for the tenant admin),
/// or asks for a key valid for any user of the tenant except `admin` (`{"anyUser": true}`, for
/// shared tooling). Naming neither is 400 `user_required`: a key is never valid for every user
/// by default. Both at once is 400 `invalid_key_binding`.
async fn create_key(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<Option<KeyRequest>>,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    let req = req.unwrap_or_default();
    super::limits::text_opt("user", req.user.as_deref(), super::limits::MAX_ID_BYTES)?;
    let user = match (req.user, req.any_user) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "invalid_key_binding",
                "a key names one user or is for any user (anyUser), not both",
            ))
        }
        (None, false) => {
            return Err(ApiError::bad_request(
                "user_required",
                "name the user the key is for (\"user\"; \"admin\" for the tenant admin), \
                 or ask for a key for any non-admin user (\"anyUser\": true)",
            ))
        }
        // Headers are compared trimmed: a user with surrounding blanks could never log in.
        (Some(u), false) if u.is_empty() || u.trim() != u => {
            return Err(ApiError::bad_request(
                "invalid_user",
                "user must be non-empty, without leading or trailing blanks",
            ))
        }
        (user, _) => user,
    };
    let key = match req.key {
        Some(k) if k.len() >= 8 && k.len() <= 256 => k,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_key",
                "a key must be 8 to 256 bytes",
            ))
        }
        None => app.random.new_secret(),
    };
    let record = ApiKey {
        tenant: name,
        user: user.clone(),
        key_sha256: hash_api_key(&key),
    };
    app.propose(Command::PutApiKey { key: record }, None)
        .await??;
    Ok(Json(match user {
        Some(user) => json!({ "key": key, "user": user }),
        None => json!({ "key": key, "anyUser": true }),
    }))
}

/// Every provisioner of this DC in Coopr's shape: `capacityFree` counts the tasks its workers
/// hold; `usage` says how many of them are each tenant's (by tenant ID); `assignments` are
/// the workers the tenant push gives it per tenant ID (the same rule as the push, on this
/// node's copy of the state, so every node of the DC answers the same). Both maps are present
/// even when empty, as Coopr's clients read them.
fn provisioner_views(app: &App) -> Vec<(String, Value)> {
    let state = app.core.read();
    let global = app.global(&state);
    let tenant_ids: BTreeMap<&str, &str> = global
        .tenants
        .values()
        .map(|t| (t.name.as_str(), t.id.as_str()))
        .collect();
    let (assigned, _) = crate::tenant_push::assignments(
        state.local.provisioners.values(),
        global.tenants.values().map(|t| (t.id.as_str(), t.workers)),
    );
    let mut assignments = BTreeMap::<&str, BTreeMap<&str, u32>>::new();
    for ((provisioner, tenant), workers) in &assigned {
        assignments
            .entry(provisioner.as_str())
            .or_default()
            .insert(tenant.as_str(), *workers);
    }
    // provisioner -> tenant id -> tasks in progress
    let mut usage = BTreeMap::<&str, BTreeMap<&str, u32>>::new();
    // The tasks workers hold (the state's index of them), not every cluster's jobs.
    for (task, provisioner) in state.held_tasks() {
        let Some(record) = state.cluster(task.job.cluster) else {
            continue;
        };
        let tenant = record.cluster.account.tenant_id.as_str();
        let tenant_id = tenant_ids.get(tenant).copied().unwrap_or(tenant);
        *usage
            .entry(provisioner)
            .or_default()
            .entry(tenant_id)
            .or_default() += 1;
    }
    state
        .local
        .provisioners
        .values()
        .map(|p| {
            let by_tenant = usage.remove(p.id.as_str()).unwrap_or_default();
            let used: u32 = by_tenant.values().sum();
            let assigned = assignments.remove(p.id.as_str()).unwrap_or_default();
            let view = json!({"id": p.id, "host": p.host, "port": p.port,
                   "capacityTotal": p.capacity_total,
                   "capacityFree": p.capacity_total.saturating_sub(used),
                   "assignments": assigned, "usage": by_tenant});
            (p.id.clone(), view)
        })
        .collect()
}

/// `GET /v2/provisioners` (superadmin).
async fn list_provisioners(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
    caller.require_superadmin()?;
    Ok(Json(
        provisioner_views(&app)
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
    ))
}

/// `GET /v2/provisioners/{id}` (superadmin): one provisioner of this DC, or 404.
pub async fn show_provisioner(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_superadmin()?;
    provisioner_views(&app)
        .into_iter()
        .find(|(p, _)| *p == id)
        .map(|(_, v)| Json(v))
        .ok_or_else(|| ApiError::not_found("provisioner", &id))
}
