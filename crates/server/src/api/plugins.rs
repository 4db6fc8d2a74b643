//! Coopr's plugins (`AdminHandler`, `SuperadminHandler`, `ProvisionerHandler`, `PluginHandler`):
//!
//! - plugin specifications, `/v2/plugins/{automatortypes|providertypes}[/{name}[/{version}]]`:
//!   every tenant reads them (`GET`); the provisioner registers them (`PUT .../{name}`, the
//!   superadmin's key, as the Ruby provisioner does at start) and the superadmin deletes them.
//!   They are stored in the superadmin tenant's catalog (as in Coopr), each write a new version;
//! - plugin resources (tenant admin), `/v2/plugins/{kind}/{plugin}/{resource type}`: list by
//!   name (`?status=` filter); `.../{name}`: upload (`POST`/`PUT`, the bytes as the body), list
//!   its versions, delete all (all inactive); `.../{name}/versions/{v}`: delete;
//!   `.../versions/{v}/stage` and `/recall`; `POST /v2/plugins/sync`: staged versions become
//!   active and recalled ones inactive;
//! - the provisioner's fetch of a version's bytes:
//!   `GET /v2/tenants/{tenant id}/{kind}/{plugin}/{resource type}/{name}/versions/{v}`
//!   (superadmin's key), checked against its SHA-256 before it is sent.
//!
//! Writes go to the global shard's owner (`forward.rs`); reads, the fetch included, are served
//! from the local copy. Where the bytes live and their limits: `coopr_state::resources`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use coopr_state::resources::{self, declared_resource_types, PLUGIN_TYPES_TENANT};
use coopr_state::{
    Blob, Command, CommandResult, Outcome, PluginKind, ResourcePath, ResourceStatus,
    ResourceVersions, TenantCatalog,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::answer;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, IdempotencyKey, JsonBody, ProvisionerAuth};
use super::lenient::valid_name;
use crate::App;

/// The largest body of a resource upload, [`resources::MAX_RESOURCE_BYTES`]: larger uploads are
/// 413 `resource_too_large` (every other body is bounded by [`super::MAX_BODY_BYTES`]).
pub const MAX_UPLOAD_BYTES: usize = resources::MAX_RESOURCE_BYTES;

/// Whether a path is a resource upload, whose body may be up to [`MAX_UPLOAD_BYTES`] (the
/// forwarder buffers it whole).
pub fn is_upload_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v2/plugins/") else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    segments.len() == 4 && PluginKind::parse(segments[0]).is_some()
}

/// The largest request body accepted at `path`.
pub fn body_limit(path: &str) -> usize {
    if is_upload_path(path) {
        MAX_UPLOAD_BYTES.max(super::MAX_BODY_BYTES)
    } else {
        super::MAX_BODY_BYTES
    }
}

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    let mut routes = super::routes::Routes::new("plugins").route(
        "/v2/plugins/sync",
        post(sync),
        &[(Method::POST, "Make the staged plugin resources live")],
    );
    for kind in PluginKind::ALL {
        let name = kind.as_str();
        let base = format!("/v2/plugins/{name}");
        routes = routes
            .route(
                &base,
                get(move |s, c| list_types(s, c, kind)),
                &[(Method::GET, format!("List {name}"))],
            )
            .route(
                &format!("{base}/{{name}}"),
                get(move |s, c, p| get_type(s, c, p, kind))
                    .put(move |s, a, i, p, b| put_type(s, a, i, p, b, kind))
                    .delete(move |s, a, i, p| delete_type(s, a, i, p, kind)),
                &[
                    (Method::GET, format!("One of {name}")),
                    (Method::PUT, format!("Write one of {name}")),
                    (Method::DELETE, format!("Delete one of {name}")),
                ],
            )
            .route(
                &format!("{base}/{{name}}/{{second}}"),
                get(move |s, c, p, q| type_version_or_resources(s, c, p, q, kind))
                    .delete(move |s, a, i, p| delete_type_version(s, a, i, p, kind)),
                &[
                    (
                        Method::GET,
                        format!("A version of one of {name}, or its resources of a type"),
                    ),
                    (Method::DELETE, format!("Delete a version of one of {name}")),
                ],
            )
            .route(
                &format!("{base}/{{name}}/{{resource_type}}/{{resource}}"),
                get(move |s, c, p, q| list_versions(s, c, p, q, kind))
                    .post(move |s, c, i, p, b| upload(s, c, i, p, b, kind))
                    .put(move |s, c, i, p, b| upload(s, c, i, p, b, kind))
                    .delete(move |s, c, i, p| delete_resource(s, c, i, p, kind)),
                &[
                    (Method::GET, "The versions of a plugin resource".to_string()),
                    (Method::POST, "Upload a plugin resource (bytes)".to_string()),
                    (Method::PUT, "Upload a plugin resource (bytes)".to_string()),
                    (Method::DELETE, "Delete a plugin resource".to_string()),
                ],
            )
            .route(
                &format!("{base}/{{name}}/{{resource_type}}/{{resource}}/versions/{{version}}"),
                axum::routing::delete(move |s, c, i, p| delete_version(s, c, i, p, kind)),
                &[(Method::DELETE, "Delete a version of a plugin resource".to_string())],
            )
            .route(
                &format!(
                    "{base}/{{name}}/{{resource_type}}/{{resource}}/versions/{{version}}/stage"
                ),
                post(move |s, c, i, p| slate(s, c, i, p, kind, true)),
                &[(Method::POST, "Stage a version of a plugin resource".to_string())],
            )
            .route(
                &format!(
                    "{base}/{{name}}/{{resource_type}}/{{resource}}/versions/{{version}}/recall"
                ),
                post(move |s, c, i, p| slate(s, c, i, p, kind, false)),
                &[(Method::POST, "Recall a version of a plugin resource".to_string())],
            )
            .route(
                &format!(
                    "/v2/tenants/{{name}}/{name}/{{plugin}}/{{resource_type}}/{{resource}}/versions/{{version}}"
                ),
                get(move |s, a, p| fetch(s, a, p, kind)),
                &[(Method::GET, "A plugin resource's bytes, for provisioners".to_string())],
            );
    }
    routes
}

// ---- plugin specifications

/// Who may write plugin specifications: the superadmin, named by its headers (user API) or by
/// its key alone (provisioner API). Another authenticated caller gets 403.
pub struct PluginRegistrar;

impl<S> FromRequestParts<S> for PluginRegistrar
where
    Arc<App>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts.headers.contains_key("coopr-userid")
            || parts.headers.contains_key("coopr-tenantid")
        {
            Caller::from_request_parts(parts, state)
                .await?
                .require_superadmin()?;
        } else {
            ProvisionerAuth::from_request_parts(parts, state).await?;
        }
        Ok(PluginRegistrar)
    }
}

fn kind_noun(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Automatortypes => "automator type",
        PluginKind::Providertypes => "provider type",
    }
}

/// The superadmin's catalog, where plugin specifications are (read by every tenant).
fn plugin_catalog<'a>(global: &coopr_state::GlobalRef<'a>) -> Option<&'a TenantCatalog> {
    global.catalogs.get(PLUGIN_TYPES_TENANT)
}

async fn list_types(
    State(app): State<Arc<App>>,
    _caller: Caller,
    kind: PluginKind,
) -> Json<Vec<Value>> {
    let state = app.core.read();
    let global = app.global(&state);
    Json(
        plugin_catalog(&global)
            .map(|c| c.list(kind.entity_kind()).into_iter().cloned().collect())
            .unwrap_or_default(),
    )
}

async fn get_type(
    State(app): State<Arc<App>>,
    _caller: Caller,
    Path(name): Path<String>,
    kind: PluginKind,
) -> ApiResult<Json<Value>> {
    let state = app.core.read();
    let global = app.global(&state);
    plugin_catalog(&global)
        .and_then(|c| c.latest(kind.entity_kind(), &name))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(kind_noun(kind), &name))
}

/// Checks a plugin specification and keeps the fields Coopr's `AutomatorType`/`ProviderType`
/// have (the provisioner's own, such as `classname`, are dropped).
fn plugin_spec(kind: PluginKind, body: &Value) -> ApiResult<(String, Value)> {
    super::limits::value(kind.as_str(), body)?;
    let Some(map) = body.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_entity",
            format!("a {} must be a JSON object", kind_noun(kind)),
        ));
    };
    let Some(name) = map.get("name").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(
            "invalid_entity",
            format!("a {} needs a name", kind_noun(kind)),
        ));
    };
    valid_name("name", name)?;
    let mut spec = serde_json::Map::new();
    for field in ["name", "label", "description", "icon", "parameters"] {
        if let Some(value) = map.get(field).filter(|v| !v.is_null()) {
            spec.insert(field.to_string(), value.clone());
        }
    }
    let mut resource_types = serde_json::Map::new();
    if let Some(declared) = map
        .get("resourceTypes")
        .or_else(|| map.get("resourcetypes"))
    {
        let Some(declared) = declared.as_object() else {
            return Err(ApiError::bad_request(
                "invalid_entity",
                "resourceTypes must be an object",
            ));
        };
        for (name, format) in declared {
            valid_name("resourceTypes key", name)?;
            resource_types.insert(name.clone(), format.clone());
        }
    }
    spec.insert("resourceTypes".into(), Value::Object(resource_types));
    Ok((name.to_string(), Value::Object(spec)))
}

async fn write(app: &App, scope: Option<String>, command: Command) -> ApiResult<CommandResult> {
    if let Some(previous) = app.previous_outcome(scope.as_deref()) {
        return Ok(previous);
    }
    Ok(app.propose(command, scope).await?)
}

/// The scope of a registrar's `Idempotency-Key` (it always acts for the superadmin).
fn registrar_scope(key: Option<IdempotencyKey>) -> Option<String> {
    key.map(|k| format!("{PLUGIN_TYPES_TENANT}/admin/{}", k.0))
}

async fn put_type(
    State(app): State<Arc<App>>,
    _registrar: PluginRegistrar,
    idempotency: Option<IdempotencyKey>,
    Path(path_name): Path<String>,
    JsonBody(body): JsonBody<Value>,
    kind: PluginKind,
) -> ApiResult<Response> {
    let (name, spec) = plugin_spec(kind, &body)?;
    if name != path_name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!("body name {name:?} differs from the path's {path_name:?}"),
        ));
    }
    let command = Command::PutEntity {
        tenant: PLUGIN_TYPES_TENANT.into(),
        kind: kind.entity_kind(),
        name,
        body: spec,
        create_only: false,
    };
    answer(write(&app, registrar_scope(idempotency), command).await?)
}

async fn delete_type(
    State(app): State<Arc<App>>,
    _registrar: PluginRegistrar,
    idempotency: Option<IdempotencyKey>,
    Path(name): Path<String>,
    kind: PluginKind,
) -> ApiResult<Response> {
    remove_type(&app, idempotency, name, None, kind).await
}

async fn delete_type_version(
    State(app): State<Arc<App>>,
    _registrar: PluginRegistrar,
    idempotency: Option<IdempotencyKey>,
    Path((name, version)): Path<(String, String)>,
    kind: PluginKind,
) -> ApiResult<Response> {
    let version = super::catalog::parse_version(&version)?;
    remove_type(&app, idempotency, name, Some(version), kind).await
}

async fn remove_type(
    app: &App,
    idempotency: Option<IdempotencyKey>,
    name: String,
    version: Option<u32>,
    kind: PluginKind,
) -> ApiResult<Response> {
    let command = Command::DeleteEntity {
        tenant: PLUGIN_TYPES_TENANT.into(),
        kind: kind.entity_kind(),
        name,
        version,
    };
    match write(app, registrar_scope(idempotency), command).await? {
        // Coopr answers 200 for a delete of nothing.
        Err(e) if e.error_code() == coopr_state::ErrorCode::NotFound => {
            Ok(StatusCode::OK.into_response())
        }
        result => answer(result),
    }
}

#[derive(Deserialize)]
struct StatusFilter {
    status: Option<String>,
}

impl StatusFilter {
    fn parse(&self) -> ApiResult<Option<ResourceStatus>> {
        match &self.status {
            None => Ok(None),
            Some(s) => ResourceStatus::parse(s).map(Some).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_status",
                    format!("status must be one of active, inactive, staged, recalled; got {s:?}"),
                )
            }),
        }
    }
}

/// `GET /v2/plugins/{kind}/{name}/{second}`: Coopr routes both a specification's version
/// (`AdminHandler`, a number) and a resource type's resources (`PluginHandler`) here.
async fn type_version_or_resources(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((name, second)): Path<(String, String)>,
    Query(filter): Query<StatusFilter>,
    kind: PluginKind,
) -> ApiResult<Json<Value>> {
    if second.bytes().all(|b| b.is_ascii_digit()) {
        let version = super::catalog::parse_version(&second)?;
        let state = app.core.read();
        let global = app.global(&state);
        return plugin_catalog(&global)
            .and_then(|c| c.version(kind.entity_kind(), &name, version))
            .cloned()
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found(kind_noun(kind), format!("{name} version {version}"))
            });
    }
    caller.require_admin()?;
    let status = filter.parse()?;
    let state = app.core.read();
    let global = app.global(&state);
    check_resource_type(&global, kind, &name, &second)?;
    let mut out = serde_json::Map::new();
    if let Some(catalog) = global.catalogs.get(&caller.tenant) {
        for (resource, versions) in catalog.resources_of_type(kind, &name, &second) {
            let metas = metas(resource, versions, status);
            if !metas.is_empty() {
                out.insert(resource.to_string(), Value::Array(metas));
            }
        }
    }
    Ok(Json(Value::Object(out)))
}

// ---- plugin resources

/// Coopr's `ResourceMeta` of each version (newest first), optionally of one status.
fn metas(name: &str, versions: &ResourceVersions, status: Option<ResourceStatus>) -> Vec<Value> {
    versions
        .versions
        .iter()
        .rev()
        .filter(|(_, meta)| status.is_none_or(|s| meta.status() == s))
        .map(|(version, meta)| json!({"name": name, "version": version, "status": meta.status()}))
        .collect()
}

/// 404 unless the plugin is registered and declares the resource type (Coopr's
/// `validateTypeExists`).
fn check_resource_type(
    global: &coopr_state::GlobalRef<'_>,
    kind: PluginKind,
    plugin: &str,
    resource_type: &str,
) -> ApiResult<()> {
    let spec = plugin_catalog(global)
        .and_then(|c| c.latest(kind.entity_kind(), plugin))
        .ok_or_else(|| ApiError::not_found(kind_noun(kind), plugin))?;
    if !declared_resource_types(spec).is_some_and(|t| t.contains_key(resource_type)) {
        return Err(ApiError::not_found(
            "resource type",
            format!("{resource_type} of {} {plugin}", kind_noun(kind)),
        ));
    }
    Ok(())
}

/// The resource a path names, its parts validated (400 `invalid_name`).
fn resource_path(
    kind: PluginKind,
    plugin: String,
    resource_type: String,
    name: String,
) -> ApiResult<ResourcePath> {
    valid_name("plugin name", &plugin)?;
    valid_name("resource type", &resource_type)?;
    valid_name("resource name", &name)?;
    Ok(ResourcePath {
        kind,
        plugin,
        resource_type,
        name,
    })
}

/// A tenant admin's resource write, checked against the local copy first (404 for an unknown
/// plugin or resource type), then applied at the owner.
async fn resource_write(
    app: &App,
    caller: &Caller,
    idempotency: Option<IdempotencyKey>,
    resource: &ResourcePath,
    command: Command,
) -> ApiResult<CommandResult> {
    caller.require_admin()?;
    {
        let state = app.core.read();
        check_resource_type(
            &app.global(&state),
            resource.kind,
            &resource.plugin,
            &resource.resource_type,
        )?;
    }
    write(app, caller.idempotency_scope(idempotency), command).await
}

async fn list_versions(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((plugin, resource_type, name)): Path<(String, String, String)>,
    Query(filter): Query<StatusFilter>,
    kind: PluginKind,
) -> ApiResult<Json<Vec<Value>>> {
    caller.require_admin()?;
    let status = filter.parse()?;
    let resource = resource_path(kind, plugin, resource_type, name)?;
    let state = app.core.read();
    let global = app.global(&state);
    check_resource_type(&global, kind, &resource.plugin, &resource.resource_type)?;
    global
        .catalogs
        .get(&caller.tenant)
        .and_then(|c| c.resource(&resource))
        .map(|versions| Json(metas(&resource.name, versions, status)))
        .ok_or_else(|| ApiError::not_found("resource", resource.key()))
}

async fn upload(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((plugin, resource_type, name)): Path<(String, String, String)>,
    body: Body,
    kind: PluginKind,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let resource = resource_path(kind, plugin, resource_type, name)?;
    let bytes = axum::body::to_bytes(body, MAX_UPLOAD_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                coopr_state::ErrorCode::ResourceTooLarge.as_str(),
                format!("a resource version is at most {MAX_UPLOAD_BYTES} bytes"),
            )
        })?;
    let command = Command::PutResource {
        tenant: caller.tenant.clone(),
        resource: resource.clone(),
        bytes: Blob::new(bytes.to_vec()),
    };
    match resource_write(&app, &caller, idempotency, &resource, command).await?? {
        Outcome::EntityVersion { version } => Ok(Json(
            json!({"name": resource.name, "version": version, "status": ResourceStatus::Inactive}),
        )
        .into_response()),
        other => answer(Ok(other)),
    }
}

async fn delete_resource(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((plugin, resource_type, name)): Path<(String, String, String)>,
    kind: PluginKind,
) -> ApiResult<Response> {
    let resource = resource_path(kind, plugin, resource_type, name)?;
    let command = Command::DeleteResource {
        tenant: caller.tenant.clone(),
        resource: resource.clone(),
        version: None,
    };
    answer(resource_write(&app, &caller, idempotency, &resource, command).await?)
}

async fn delete_version(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((plugin, resource_type, name, version)): Path<(String, String, String, String)>,
    kind: PluginKind,
) -> ApiResult<Response> {
    let resource = resource_path(kind, plugin, resource_type, name)?;
    let version = super::catalog::parse_version(&version)?;
    let command = Command::DeleteResource {
        tenant: caller.tenant.clone(),
        resource: resource.clone(),
        version: Some(version),
    };
    answer(resource_write(&app, &caller, idempotency, &resource, command).await?)
}

async fn slate(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((plugin, resource_type, name, version)): Path<(String, String, String, String)>,
    kind: PluginKind,
    stage: bool,
) -> ApiResult<Response> {
    let resource = resource_path(kind, plugin, resource_type, name)?;
    let version = super::catalog::parse_version(&version)?;
    let (tenant, r) = (caller.tenant.clone(), resource.clone());
    let command = if stage {
        Command::StageResource {
            tenant,
            resource: r,
            version,
        }
    } else {
        Command::RecallResource {
            tenant,
            resource: r,
            version,
        }
    };
    answer(resource_write(&app, &caller, idempotency, &resource, command).await?)
}

async fn sync(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let command = Command::SyncResources {
        tenant: caller.tenant.clone(),
    };
    answer(write(&app, caller.idempotency_scope(idempotency), command).await?)
}

/// The provisioner's download of one version: the tenant is named by its internal ID (as
/// Coopr's provisioner knows it; its name is accepted too). The bytes are checked against the
/// version's SHA-256 before they are sent (500 `resource_corrupt` otherwise).
async fn fetch(
    State(app): State<Arc<App>>,
    _provisioner: ProvisionerAuth,
    Path((tenant, plugin, resource_type, name, version)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    kind: PluginKind,
) -> ApiResult<Response> {
    let resource = resource_path(kind, plugin, resource_type, name)?;
    let version = super::catalog::parse_version(&version)?;
    let (blob, sha256) = {
        let state = app.core.read();
        let global = app.global(&state);
        let tenant_name = global
            .tenants
            .values()
            .find(|t| t.id == tenant)
            .map(|t| t.name.clone())
            .or_else(|| global.tenants.contains_key(&tenant).then(|| tenant.clone()))
            .ok_or_else(|| ApiError::not_found("tenant", &tenant))?;
        let meta = global
            .catalogs
            .get(&tenant_name)
            .and_then(|c| c.resource(&resource))
            .and_then(|r| r.versions.get(&version))
            .ok_or_else(|| {
                ApiError::not_found("resource", format!("{} version {version}", resource.key()))
            })?;
        let blob = global.resource_blobs.get(&meta.sha256).cloned();
        (blob, meta.sha256.clone())
    };
    let Some(blob) = blob.filter(|b| b.sha256() == sha256) else {
        tracing::error!(resource = %resource.key(), version, sha256, "resource bytes missing or not matching their checksum");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "resource_corrupt",
            format!(
                "the bytes of {} version {version} are missing or do not match their SHA-256",
                resource.key()
            ),
        ));
    };
    let mut response = Body::from(blob.0.to_vec()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(etag) = header::HeaderValue::from_str(&format!("\"{sha256}\"")) {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_recognised_by_their_path() {
        assert!(is_upload_path(
            "/v2/plugins/automatortypes/chef-solo/cookbooks/hadoop"
        ));
        assert!(is_upload_path("/v2/plugins/providertypes/fog/keys/dev"));
        assert!(!is_upload_path("/v2/plugins/automatortypes/chef-solo"));
        assert!(!is_upload_path(
            "/v2/plugins/automatortypes/chef-solo/cookbooks"
        ));
        assert!(!is_upload_path("/v2/plugins/things/a/b/c"));
        assert!(!is_upload_path(
            "/v2/plugins/automatortypes/chef-solo/cookbooks/hadoop/versions/1"
        ));
        assert_eq!(body_limit("/v2/clusters"), super::super::MAX_BODY_BYTES);
        assert_eq!(
            body_limit("/v2/plugins/automatortypes/shell/scripts/s"),
            MAX_UPLOAD_BYTES
        );
    }
}
