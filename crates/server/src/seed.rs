//! First-start bootstrap: the superadmin tenant and its key; in demo mode also the `demo`
//! tenant (key `demo-key` for user `demo`, key `demo-admin-key` for its admin), the superadmin
//! key `admin-key` and the example catalog. Every seeded key is bound to one user: the
//! superadmin's and the tenant admin's to `admin` (see `api::extract`). Seeding only writes what
//! is missing, so a restarted server changes nothing; a `demo-key` stored by an older version
//! without a user stays valid for every user of `demo` except `admin`.
//!
//! Tenants, keys and the catalog live in the global shard, so only the DC that owns it seeds
//! (see `driver::become_leader`); the other DCs get the seeded records by replication and are
//! not `/ready` before they have them.

use anyhow::Context;
use coopr_state::Command;
use coopr_types::{hash_api_key, ApiKey, Tenant, UNLIMITED};

use crate::api::catalog::validate_import;
use crate::api::extract::{ADMIN_USER, SUPERADMIN};
use crate::App;

/// The example catalog shipped with coopr (templates `base` and `lamp`).
pub const EXAMPLE_CATALOG: &str = include_str!("../../../examples/catalog.json");

pub const DEMO_TENANT: &str = "demo";
pub const DEMO_USER: &str = "demo";
/// The demo user's key (bound to [`DEMO_USER`]).
pub const DEMO_KEY: &str = "demo-key";
/// The demo tenant admin's key (bound to `admin` of [`DEMO_TENANT`]).
pub const DEMO_TENANT_ADMIN_KEY: &str = "demo-admin-key";
/// The superadmin's key in demo mode (bound to `admin` of `superadmin`).
pub const DEMO_ADMIN_KEY: &str = "admin-key";

fn tenant(app: &App, name: &str) -> Tenant {
    Tenant {
        id: app.random.new_id(),
        name: name.to_string(),
        description: String::new(),
        workers: 0,
        max_clusters: UNLIMITED,
        max_nodes: UNLIMITED,
    }
}

async fn ensure_tenant(app: &App, name: &str) -> anyhow::Result<()> {
    if !app.core.read().global.tenants.contains_key(name) {
        app.propose_system(
            Command::PutTenant {
                tenant: tenant(app, name),
            },
            None,
        )
        .await??;
    }
    Ok(())
}

async fn ensure_key(app: &App, tenant: &str, user: &str, key: &str) -> anyhow::Result<()> {
    let hash = hash_api_key(key);
    if !app.core.read().global.api_keys.contains_key(&hash) {
        let record = ApiKey {
            tenant: tenant.to_string(),
            user: Some(user.to_string()),
            key_sha256: hash,
        };
        app.propose_system(Command::PutApiKey { key: record }, None)
            .await??;
    }
    Ok(())
}

async fn ensure_catalog(app: &App, tenant: &str) -> anyhow::Result<()> {
    if app
        .core
        .read()
        .global
        .catalogs
        .get(tenant)
        .is_some_and(|c| !c.entities.is_empty())
    {
        return Ok(());
    }
    let body: serde_json::Value =
        serde_json::from_str(EXAMPLE_CATALOG).context("example catalog is not JSON")?;
    let entities =
        validate_import(&body).map_err(|e| anyhow::anyhow!("example catalog: {}", e.message))?;
    app.propose_system(
        Command::ImportCatalog {
            tenant: tenant.to_string(),
            entities,
        },
        None,
    )
    .await??;
    Ok(())
}

/// Whether everything [`bootstrap`] writes is in this copy of the global shard (written at the
/// global owner, replicated elsewhere): the superadmin tenant and a key of it and, in demo
/// mode, the demo tenant's key and catalog (the last things seeded).
pub fn is_seeded(app: &App, global: &coopr_state::GlobalRef<'_>) -> bool {
    let has_key = |tenant: &str| global.api_keys.values().any(|k| k.tenant == tenant);
    let base = global.tenants.contains_key(SUPERADMIN) && has_key(SUPERADMIN);
    if !app.config.demo {
        return base;
    }
    base && has_key(DEMO_TENANT)
        && global
            .catalogs
            .get(DEMO_TENANT)
            .is_some_and(|c| !c.entities.is_empty())
}

pub async fn bootstrap(app: &App) -> anyhow::Result<()> {
    let first_start = !app.core.read().global.tenants.contains_key(SUPERADMIN);
    ensure_tenant(app, SUPERADMIN).await?;
    if app.config.demo {
        ensure_key(app, SUPERADMIN, ADMIN_USER, DEMO_ADMIN_KEY).await?;
        ensure_catalog(app, SUPERADMIN).await?;
        ensure_tenant(app, DEMO_TENANT).await?;
        ensure_key(app, DEMO_TENANT, DEMO_USER, DEMO_KEY).await?;
        ensure_key(app, DEMO_TENANT, ADMIN_USER, DEMO_TENANT_ADMIN_KEY).await?;
        ensure_catalog(app, DEMO_TENANT).await?;
    } else if first_start {
        let key = match &app.config.admin_key {
            Some(k) => k.clone(),
            None => {
                let k = app.random.new_secret();
                let path = app.config.data_dir.join("admin-key");
                crate::write_private(&path, &format!("{k}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!(path = %path.display(), "superadmin key written");
                k
            }
        };
        ensure_key(app, SUPERADMIN, ADMIN_USER, &key).await?;
    }
    Ok(())
}
