//! Request extractors: the caller's identity (checked API key), JSON bodies that fail with
//! `{code, message}` errors, and the `Idempotency-Key` header.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use coopr_types::hash_api_key;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::limits;
use crate::App;

pub const SUPERADMIN: &str = "superadmin";
pub const ADMIN_USER: &str = "admin";

/// An authenticated caller of the user API.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub user: String,
    /// The tenant's internal ID (its incarnation, [`coopr_types::Tenant::id`]): clusters of an
    /// earlier tenant of the same name are not the caller's.
    pub incarnation: String,
}

impl Caller {
    /// The tenant admin (user `admin`).
    pub fn is_admin(&self) -> bool {
        self.user == ADMIN_USER
    }

    /// `admin` of the `superadmin` tenant.
    pub fn is_superadmin(&self) -> bool {
        self.is_admin() && self.tenant == SUPERADMIN
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this call needs the tenant admin"))
        }
    }

    pub fn require_superadmin(&self) -> Result<(), ApiError> {
        if self.is_superadmin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this call needs the superadmin"))
        }
    }

    /// Scope for idempotency keys: the same key from two callers means two requests.
    pub fn idempotency_scope(&self, key: Option<IdempotencyKey>) -> Option<String> {
        key.map(|k| format!("{}/{}/{}", self.tenant, self.user, k.0))
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<App>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = Arc::<App>::from_ref(state);
        let user = header(parts, "coopr-userid")
            .ok_or_else(|| ApiError::unauthorized("missing Coopr-UserID header"))?;
        let tenant = header(parts, "coopr-tenantid")
            .ok_or_else(|| ApiError::unauthorized("missing Coopr-TenantID header"))?;
        let key = header(parts, "coopr-apikey")
            .ok_or_else(|| ApiError::unauthorized("missing Coopr-ApiKey header"))?;
        // IDs go into stored records (creators, key owners): bounded like every other value.
        limits::text("Coopr-UserID", user, limits::MAX_ID_BYTES)?;
        limits::text("Coopr-TenantID", tenant, limits::MAX_ID_BYTES)?;
        let hash = hash_api_key(key);
        let state = app.core.read();
        let global = app.global(&state);
        let valid = global
            .api_keys
            .get(&hash)
            .is_some_and(|k| k.tenant == tenant && k.user.as_deref().is_none_or(|u| u == user));
        if !valid {
            return Err(ApiError::unauthorized(
                "invalid API key for this tenant and user",
            ));
        }
        let Some(incarnation) = global.tenants.get(tenant).map(|t| t.id.clone()) else {
            return Err(ApiError::not_found("tenant", tenant));
        };
        Ok(Caller {
            tenant: tenant.to_string(),
            user: user.to_string(),
            incarnation,
        })
    }
}

/// A provisioner calling the provisioner API: it must present a key of the superadmin tenant.
#[derive(Debug, Clone)]
pub struct ProvisionerAuth;

impl<S> FromRequestParts<S> for ProvisionerAuth
where
    Arc<App>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = Arc::<App>::from_ref(state);
        let key = header(parts, "coopr-apikey")
            .ok_or_else(|| ApiError::unauthorized("missing Coopr-ApiKey header"))?;
        let valid = app
            .global(&app.core.read())
            .api_keys
            .get(&hash_api_key(key))
            .is_some_and(|k| k.tenant == SUPERADMIN);
        if valid {
            Ok(ProvisionerAuth)
        } else {
            Err(ApiError::unauthorized(
                "provisioners need a key of the superadmin tenant",
            ))
        }
    }
}

/// The `Idempotency-Key` header, if present.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match header(parts, "idempotency-key") {
            // Scoped by method and path: the same key on another endpoint is another request.
            Some(k) if k.len() <= 256 => Ok(IdempotencyKey(format!(
                "{} {} {k}",
                parts.method,
                parts.uri.path()
            ))),
            Some(_) => Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key is longer than 256 bytes",
            )),
            None => Err(ApiError::bad_request(
                "missing_idempotency_key",
                "no Idempotency-Key",
            )),
        }
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, ApiError> {
        if parts.headers.contains_key("idempotency-key") {
            <Self as FromRequestParts<S>>::from_request_parts(parts, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A JSON body; malformed or oversized input is a 4xx `{code, message}`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body is too large",
                )
            } else {
                ApiError::bad_request("unreadable_body", e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, treating an empty body as `null` (Coopr accepts optional bodies). The nesting
/// depth and string lengths are checked first ([`super::limits`]): a value accepted here must
/// stay readable wherever it is copied to.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        bytes
    };
    super::limits::check_json_shape(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))
}
