//! Coopr's user profiles (`UserHandler`): `GET /v2/profile` (the caller's profile, 404 if it
//! has none), `PUT /v2/profile` (a JSON object, stored as given; 200), `DELETE /v2/profile`
//! (200, also when there is none). Every authenticated user has one, keyed by tenant and user;
//! it lives in the global shard with the tenant's catalog, so it is written at the global
//! shard's owner (`forward.rs`), replicated everywhere and deleted with its tenant.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use coopr_state::Command;
use serde_json::Value;

use super::answer;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, IdempotencyKey, JsonBody};
use crate::App;

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    super::routes::Routes::new("profile").route(
        "/v2/profile",
        get(show).put(put).delete(delete),
        &[
            (Method::GET, "The caller's profile"),
            (Method::PUT, "Replace the caller's profile"),
            (Method::DELETE, "Delete the caller's profile"),
        ],
    )
}

async fn show(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    let state = app.core.read();
    app.global(&state)
        .catalogs
        .get(&caller.tenant)
        .and_then(|c| c.profiles.get(&caller.user))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("profile of user", &caller.user))
}

async fn write(
    app: &App,
    caller: &Caller,
    idempotency: Option<IdempotencyKey>,
    profile: Option<Value>,
) -> ApiResult<Response> {
    let key = caller.idempotency_scope(idempotency);
    if let Some(previous) = app.previous_outcome(key.as_deref()) {
        return answer(previous);
    }
    let command = Command::PutProfile {
        tenant: caller.tenant.clone(),
        user: caller.user.clone(),
        profile,
    };
    answer(app.propose(command, key).await?)
}

async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
    JsonBody(profile): JsonBody<Value>,
) -> ApiResult<Response> {
    if !profile.is_object() {
        return Err(ApiError::bad_request(
            "invalid_profile",
            "a profile must be a JSON object",
        ));
    }
    // Stored in the global shard and copied to every DC: bounded like a catalog entity.
    super::limits::value("the profile", &profile)?;
    write(&app, &caller, idempotency, Some(profile)).await
}

async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    idempotency: Option<IdempotencyKey>,
) -> ApiResult<Response> {
    write(&app, &caller, idempotency, None).await
}
