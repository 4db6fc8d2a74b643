//! Request extractors: the caller's identity (checked API key), JSON bodies that fail with
//! `{code, message}` errors, and the `Idempotency-Key` header.
//!
//! A key authenticates one user of one tenant ([`check_key`]): a key bound to a user admits
//! only that user; a key created with `anyUser` (and a key stored by an older version without a
//! user) admits any user of its tenant except `admin`. Admin rights (the tenant admin, and the
//! superadmin, `admin` of tenant `superadmin`) therefore always come from a key bound to
//! `admin`:
//!
//! ```text
//!   key bound to  | Coopr-UserID | outcome
//!   --------------+--------------+-------------------------------------
//!   alice         | alice        | caller alice
//!   alice         | bob, admin   | 401 unauthorized
//!   admin         | admin        | caller admin (tenant admin rights)
//!   any user      | bob          | caller bob
//!   any user      | admin        | 401 admin_key_required
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use coopr_types::{hash_api_key, ApiKey};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::limits;
use crate::App;

pub const SUPERADMIN: &str = "superadmin";
pub const ADMIN_USER: &str = "admin";

/// The error code of a key valid for any non-admin user presented as `admin` (401).
pub const ADMIN_KEY_REQUIRED: &str = "admin_key_required";

/// How a stored key answers a request's tenant and user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is bound to exactly this user.
    BoundToUser,
    /// The key admits any non-admin user of its tenant, and this user is not `admin`.
    AnyNonAdminUser,
    /// A key of another tenant, or bound to another user.
    Refused,
    /// A key not bound to a user, presented as `admin`: admin rights need a key bound to
    /// `admin`.
    AdminNeedsBoundKey,
}

/// Whether `key` authenticates `user` of `tenant` (see the module doc).
pub fn check_key(key: &ApiKey, tenant: &str, user: &str) -> KeyCheck {
    if key.tenant != tenant {
        return KeyCheck::Refused;
    }
    match key.user.as_deref() {
        Some(bound) if bound == user => KeyCheck::BoundToUser,
        Some(_) => KeyCheck::Refused,
        None if user == ADMIN_USER => KeyCheck::AdminNeedsBoundKey,
        None => KeyCheck::AnyNonAdminUser,
    }
}

/// An authenticated caller of the user API.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub user: String,
    /// The tenant's internal ID (its incarnation, [`coopr_types::Tenant::id`]): clusters of an
    /// earlier tenant of the same name are not the caller's.
    pub incarnation: String,
    /// Whether the presented key is bound to `user` (not a key for any non-admin user).
    key_bound_to_user: bool,
}

impl Caller {
    /// The tenant admin: user `admin`, authenticated by a key bound to `admin`.
    pub fn is_admin(&self) -> bool {
        // Authentication already refuses an unbound key presented as admin; the binding is
        // checked again here so that admin rights never rest on that refusal alone.
        self.user == ADMIN_USER && self.key_bound_to_user
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

/// Whether this node's copy of the global shard has been seeded since the process started
/// (sticky, so that deleting the demo catalog or keys later does not turn 401s into 503s).
fn seen_seeded(app: &App, global: &coopr_state::GlobalRef<'_>) -> bool {
    use std::sync::atomic::Ordering;
    if app.seen_seeded.load(Ordering::Acquire) {
        return true;
    }
    let seeded = crate::seed::is_seeded(app, global);
    if seeded {
        app.seen_seeded.store(true, Ordering::Release);
    }
    seeded
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
        let key = header(parts, "coopr-apikey");
        let trusted = app.config.user_api_auth == crate::config::AuthMode::TrustedHeaders;
        let Some(key) = key.or(trusted.then_some("")) else {
            return Err(ApiError::unauthorized("missing Coopr-ApiKey header"));
        };
        // IDs go into stored records (creators, key owners): bounded like every other value.
        limits::text("Coopr-UserID", user, limits::MAX_ID_BYTES)?;
        limits::text("Coopr-TenantID", tenant, limits::MAX_ID_BYTES)?;
        let state = app.core.read();
        let global = app.global(&state);
        let check = if key.is_empty() {
            // Trusted headers, no key: the caller is who the headers say.
            KeyCheck::BoundToUser
        } else {
            global
                .api_keys
                .get(&hash_api_key(key))
                .map_or(KeyCheck::Refused, |k| check_key(k, tenant, user))
        };
        let key_bound_to_user = match check {
            KeyCheck::BoundToUser => true,
            KeyCheck::AnyNonAdminUser => false,
            // A node whose copy of the global shard is not seeded yet (restarted and still
            // re-applying its log, or new and catching up) cannot tell a valid key from an
            // invalid one: a retryable answer, not a 401 the client would take as final.
            KeyCheck::Refused if !seen_seeded(&app, &global) => {
                return Err(ApiError::unavailable(
                    "not_seeded",
                    "this node has not caught up with its DC's keys yet; retry",
                ))
            }
            KeyCheck::Refused => {
                return Err(ApiError::unauthorized(
                    "invalid API key for this tenant and user",
                ))
            }
            KeyCheck::AdminNeedsBoundKey => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ADMIN_KEY_REQUIRED,
                    "this key is valid for any user of the tenant except admin; \
                     acting as admin needs a key bound to admin",
                ))
            }
        };
        let Some(incarnation) = global.tenants.get(tenant).map(|t| t.id.clone()) else {
            return Err(ApiError::not_found("tenant", tenant));
        };
        Ok(Caller {
            tenant: tenant.to_string(),
            user: user.to_string(),
            incarnation,
            key_bound_to_user,
        })
    }
}

/// A provisioner calling the provisioner API: it must present the superadmin's key (a key of the
/// superadmin tenant bound to `admin`). Tasks carry every tenant's provider fields, secrets
/// included, so taking them is a superadmin right.
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
        let key = header(parts, "coopr-apikey");
        if key.is_none()
            && app.config.provisioner_api_auth == crate::config::AuthMode::TrustedHeaders
        {
            return Ok(ProvisionerAuth);
        }
        let key = key.ok_or_else(|| ApiError::unauthorized("missing Coopr-ApiKey header"))?;
        let check = app
            .global(&app.core.read())
            .api_keys
            .get(&hash_api_key(key))
            .map_or(KeyCheck::Refused, |k| check_key(k, SUPERADMIN, ADMIN_USER));
        match check {
            KeyCheck::BoundToUser => Ok(ProvisionerAuth),
            KeyCheck::AdminNeedsBoundKey => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ADMIN_KEY_REQUIRED,
                "provisioners need the superadmin's key (bound to admin), \
                 not a key for any user of the superadmin tenant",
            )),
            KeyCheck::AnyNonAdminUser | KeyCheck::Refused => Err(ApiError::unauthorized(
                "provisioners need the superadmin's key (bound to admin)",
            )),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, user: Option<&str>) -> ApiKey {
        ApiKey {
            tenant: tenant.into(),
            user: user.map(Into::into),
            key_sha256: hash_api_key("k"),
        }
    }

    #[test]
    fn a_bound_key_admits_only_its_user_of_its_tenant() {
        let alice = key("acme", Some("alice"));
        assert_eq!(check_key(&alice, "acme", "alice"), KeyCheck::BoundToUser);
        assert_eq!(check_key(&alice, "acme", "bob"), KeyCheck::Refused);
        assert_eq!(check_key(&alice, "acme", ADMIN_USER), KeyCheck::Refused);
        assert_eq!(check_key(&alice, "other", "alice"), KeyCheck::Refused);
        let admin = key("acme", Some(ADMIN_USER));
        assert_eq!(check_key(&admin, "acme", ADMIN_USER), KeyCheck::BoundToUser);
        assert_eq!(check_key(&admin, "acme", "alice"), KeyCheck::Refused);
    }

    /// A key without a user (created with `anyUser`, or stored so by an older version) admits
    /// every user of its tenant but admin.
    #[test]
    fn an_unbound_key_admits_any_user_but_admin() {
        let shared = key("acme", None);
        assert_eq!(check_key(&shared, "acme", "bob"), KeyCheck::AnyNonAdminUser);
        assert_eq!(
            check_key(&shared, "acme", ADMIN_USER),
            KeyCheck::AdminNeedsBoundKey
        );
        assert_eq!(check_key(&shared, "other", "bob"), KeyCheck::Refused);
        let superadmin_tenant = key(SUPERADMIN, None);
        assert_eq!(
            check_key(&superadmin_tenant, SUPERADMIN, ADMIN_USER),
            KeyCheck::AdminNeedsBoundKey
        );
    }

    #[test]
    fn admin_rights_need_a_key_bound_to_admin() {
        let caller = |user: &str, key_bound_to_user| Caller {
            tenant: SUPERADMIN.into(),
            user: user.into(),
            incarnation: String::new(),
            key_bound_to_user,
        };
        assert!(caller(ADMIN_USER, true).is_superadmin());
        assert!(caller(ADMIN_USER, true).require_admin().is_ok());
        assert!(!caller(ADMIN_USER, false).is_admin());
        assert_eq!(
            caller(ADMIN_USER, false)
                .require_superadmin()
                .unwrap_err()
                .code,
            "forbidden"
        );
        assert!(!caller("bob", true).is_admin());
    }
}
