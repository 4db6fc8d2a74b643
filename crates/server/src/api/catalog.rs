//! Catalog CRUD per tenant
//! (`/v2/{providers|hardwaretypes|imagetypes|services|clustertemplates|partialtemplates}`),
//! `GET /v2/export`, `POST /v2/import`, and `POST /v2/resolve` (a template with its parents and
//! partial templates merged in, [`coopr_engine::template`]). Every write creates a new version.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use coopr_engine::template::{self, TemplateError, TemplateSource};
use coopr_state::{Command, TenantCatalog};
use coopr_types::{
    ClusterTemplate, EntityKind, LeaseDuration, MachineType, MinMax, PartialTemplate, Provider,
    Service,
};
use serde_json::Value;

use super::answer;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, IdempotencyKey, JsonBody};
use super::lenient::valid_name;
use crate::App;

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    let mut routes = super::routes::Routes::new("catalog")
        .route(
            "/v2/export",
            get(export),
            &[(Method::GET, "The tenant's catalog")],
        )
        .route(
            "/v2/import",
            axum::routing::post(import),
            &[(Method::POST, "Replace the tenant's catalog")],
        )
        .route(
            "/v2/resolve",
            axum::routing::post(resolve),
            &[(Method::POST, "Resolve a cluster spec against the catalog")],
        );
    for kind in EntityKind::ALL {
        let name = kind.as_str();
        routes = routes
            .route(
                &format!("/v2/{name}"),
                get(move |s, c| list(s, c, kind)).post(move |s, c, i, b| create(s, c, i, b, kind)),
                &[
                    (Method::GET, format!("List {name}")),
                    (Method::POST, format!("Create one of {name}")),
                ],
            )
            .route(
                &format!("/v2/{name}/{{name}}"),
                get(move |s, c, p| get_latest(s, c, p, kind))
                    .put(move |s, c, i, p, b| put(s, c, i, p, b, kind))
                    .delete(move |s, c, i, p| delete(s, c, i, p, kind)),
                &[
                    (Method::GET, format!("The latest version of one of {name}")),
                    (Method::PUT, format!("Write a new version of one of {name}")),
                    (Method::DELETE, format!("Delete one of {name}")),
                ],
            )
            .route(
                &format!("/v2/{name}/{{name}}/{{version}}"),
                get(move |s, c, p| get_version(s, c, p, kind))
                    .delete(move |s, c, i, p| delete_version(s, c, i, p, kind)),
                &[
                    (Method::GET, format!("One version of one of {name}")),
                    (
                        Method::DELETE,
                        format!("Delete one version of one of {name}"),
                    ),
                ],
            );
    }
    routes
}

/// Checks that a body is a valid entity of its kind (typed parse) with a valid name.
pub fn validate_entity(kind: EntityKind, body: &Value) -> ApiResult<String> {
    // Entities are copied into clusters and their tasks: bounded before anything else.
    super::limits::value(kind.as_str(), body)?;
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request("invalid_entity", format!("invalid {}: {e}", kind.as_str()))
    };
    let name = match kind {
        EntityKind::Providers => {
            serde_json::from_value::<Provider>(body.clone())
                .map_err(invalid)?
                .name
        }
        EntityKind::Hardwaretypes | EntityKind::Imagetypes => {
            serde_json::from_value::<MachineType>(body.clone())
                .map_err(invalid)?
                .name
        }
        EntityKind::Services => {
            serde_json::from_value::<Service>(body.clone())
                .map_err(invalid)?
                .name
        }
        EntityKind::Clustertemplates => {
            let t = serde_json::from_value::<ClusterTemplate>(body.clone()).map_err(invalid)?;
            check_template(&t.administration.leaseduration, &t.constraints.size)?;
            if let Some(parent) = &t.extends {
                valid_name("extends.name", &parent.name)?;
            }
            super::limits::list("includes", &t.includes)?;
            for include in &t.includes {
                valid_name("includes[].name", &include.name)?;
            }
            t.name
        }
        EntityKind::Partialtemplates => {
            let t = serde_json::from_value::<PartialTemplate>(body.clone()).map_err(invalid)?;
            check_template(&t.administration.leaseduration, &t.constraints.size)?;
            t.name
        }
        // Not kinds of `/v2/{type}` (see `api::plugins`).
        EntityKind::Automatortypes | EntityKind::Providertypes => {
            return Err(ApiError::bad_request(
                "invalid_entity",
                format!("{} are written under /v2/plugins", kind.as_str()),
            ))
        }
    };
    valid_name("name", &name)?;
    Ok(name)
}

/// The entity as stored: the maps Coopr always wrote out, present even when the body left them
/// out, since Coopr's clients read them (a provider's `provisioner`, a hardware or image type's
/// `providermap`).
pub fn with_empty_maps(kind: EntityKind, mut body: Value) -> Value {
    let field = match kind {
        EntityKind::Providers => "provisioner",
        EntityKind::Hardwaretypes | EntityKind::Imagetypes => "providermap",
        _ => return body,
    };
    if let Value::Object(map) = &mut body {
        if map.get(field).is_none_or(Value::is_null) {
            map.insert(field.into(), Value::Object(Default::default()));
        }
    }
    body
}

/// Checks that apply to cluster and partial templates alike.
fn check_template(lease: &LeaseDuration, size: &MinMax) -> ApiResult<()> {
    if lease.max != 0 && lease.initial > lease.max {
        return Err(ApiError::bad_request(
            "invalid_entity",
            "leaseduration.initial is greater than max",
        ));
    }
    if size.min > size.max {
        return Err(ApiError::bad_request(
            "invalid_entity",
            "constraints.size.min is greater than max",
        ));
    }
    Ok(())
}

/// A tenant's catalog as the template resolver reads it (entities that fail to parse count as
/// missing: they were validated when written).
pub struct CatalogTemplates<'a>(pub &'a TenantCatalog);

impl TemplateSource for CatalogTemplates<'_> {
    fn cluster_template(&self, name: &str) -> Option<ClusterTemplate> {
        let value = self.0.latest(EntityKind::Clustertemplates, name)?;
        serde_json::from_value(value.clone()).ok()
    }

    fn partial_template(&self, name: &str) -> Option<PartialTemplate> {
        let value = self.0.latest(EntityKind::Partialtemplates, name)?;
        serde_json::from_value(value.clone()).ok()
    }
}

/// The API error of a failed resolution: a missing template is 404, the rest 400.
pub fn template_error(e: TemplateError) -> ApiError {
    let status = match e {
        TemplateError::NotFound { .. } => axum::http::StatusCode::NOT_FOUND,
        _ => axum::http::StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// The template a cluster is made from: with its parents and partial templates merged in
/// when it names any, as `POST /v2/resolve` shows it (without that route's checks of the
/// result: a create checks provider and services itself).
pub fn resolved_for_cluster(
    catalog: &TenantCatalog,
    template: ClusterTemplate,
) -> ApiResult<ClusterTemplate> {
    if !template.has_references() {
        return Ok(template);
    }
    template::resolve(&template, &CatalogTemplates(catalog)).map_err(template_error)
}

/// `POST /v2/resolve`: the body, a cluster template, with its parents and partial templates
/// merged in (any user of the tenant; nothing is written).
async fn resolve(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<ClusterTemplate>> {
    super::limits::value("the template", &body)?;
    let template: ClusterTemplate = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request("invalid_entity", format!("invalid clustertemplate: {e}"))
    })?;
    let catalog = app
        .global(&app.core.read())
        .catalogs
        .get(&caller.tenant)
        .cloned()
        .unwrap_or_default();
    let resolved =
        template::resolve(&template, &CatalogTemplates(&catalog)).map_err(template_error)?;
    template::validate_resolved(&resolved).map_err(template_error)?;
    Ok(Json(resolved))
}

async fn list(State(app): State<Arc<App>>, caller: Caller, kind: EntityKind) -> Json<Vec<Value>> {
    let state = app.core.read();
    Json(
        app.global(&state)
            .catalogs
            .get(&caller.tenant)
            .map(|c| c.list(kind).into_iter().cloned().collect())
            .unwrap_or_default(),
    )
}

async fn get_latest(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    kind: EntityKind,
) -> ApiResult<Json<Value>> {
    let state = app.core.read();
    app.global(&state)
        .catalogs
        .get(&caller.tenant)
        .and_then(|c| c.latest(kind, &name))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(kind.as_str().trim_end_matches('s'), &name))
}

pub(super) fn parse_version(version: &str) -> ApiResult<u32> {
    match version.parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(ApiError::bad_request(
            "invalid_version",
            format!("version must be a positive integer, got {version:?}"),
        )),
    }
}

async fn get_version(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    kind: EntityKind,
) -> ApiResult<Json<Value>> {
    let version = parse_version(&version)?;
    let state = app.core.read();
    app.global(&state)
        .catalogs
        .get(&caller.tenant)
        .and_then(|c| c.version(kind, &name, version))
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                kind.as_str().trim_end_matches('s'),
                format!("{name} version {version}"),
            )
        })
}

async fn write(
    app: &App,
    caller: &Caller,
    idempotency: Option<IdempotencyKey>,
    command: Command,
) -> ApiResult<Response> {
    let key = caller.idempotency_scope(idempotency);
    if let Some(previous) = app.previous_outcome(key.as_deref()) {
        return answer(previous);
    }
    answer(app.propose(command, key).await?)
}

async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    JsonBody(body): JsonBody<Value>,
    kind: EntityKind,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let name = validate_entity(kind, &body)?;
    let command = Command::PutEntity {
        tenant: caller.tenant.clone(),
        kind,
        name,
        body: with_empty_maps(kind, body),
        create_only: true,
    };
    write(&app, &caller, idempotency, command).await
}

async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(path_name): Path<String>,
    JsonBody(body): JsonBody<Value>,
    kind: EntityKind,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let name = validate_entity(kind, &body)?;
    if name != path_name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!("body name {name:?} differs from the path's {path_name:?}"),
        ));
    }
    let command = Command::PutEntity {
        tenant: caller.tenant.clone(),
        kind,
        name,
        body: with_empty_maps(kind, body),
        create_only: false,
    };
    write(&app, &caller, idempotency, command).await
}

async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path(name): Path<String>,
    kind: EntityKind,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let command = Command::DeleteEntity {
        tenant: caller.tenant.clone(),
        kind,
        name,
        version: None,
    };
    write(&app, &caller, idempotency, command).await
}

async fn delete_version(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    Path((name, version)): Path<(String, String)>,
    kind: EntityKind,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let version = parse_version(&version)?;
    let command = Command::DeleteEntity {
        tenant: caller.tenant.clone(),
        kind,
        name,
        version: Some(version),
    };
    write(&app, &caller, idempotency, command).await
}

async fn export(State(app): State<Arc<App>>, caller: Caller) -> Json<Value> {
    let state = app.core.read();
    let catalog = app
        .global(&state)
        .catalogs
        .get(&caller.tenant)
        .cloned()
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    for kind in EntityKind::ALL {
        out.insert(
            kind.as_str().into(),
            Value::Array(catalog.list(kind).into_iter().cloned().collect()),
        );
    }
    Json(Value::Object(out))
}

/// Validates every entity of an export-shaped body; errors name the kind and entity.
pub fn validate_import(body: &Value) -> ApiResult<BTreeMap<EntityKind, Vec<Value>>> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the import body must be an object",
        ));
    };
    let mut entities = BTreeMap::new();
    for (key, value) in map {
        let Some(kind) = EntityKind::parse(key) else {
            return Err(ApiError::bad_request(
                "invalid_entity",
                format!("unknown catalog kind {key:?}"),
            ));
        };
        let Value::Array(items) = value else {
            return Err(ApiError::bad_request(
                "invalid_entity",
                format!("{key} must be an array"),
            ));
        };
        for item in items {
            validate_entity(kind, item)?;
        }
        let items = items.iter().map(|i| with_empty_maps(kind, i.clone()));
        entities.insert(kind, items.collect());
    }
    Ok(entities)
}

async fn import(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let entities = validate_import(&body)?;
    let command = Command::ImportCatalog {
        tenant: caller.tenant.clone(),
        entities,
    };
    write(&app, &caller, idempotency, command).await
}
