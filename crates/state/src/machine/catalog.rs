//! The global shard's commands (tenants, API keys, catalog entities, catalog imports) and how a
//! DC reads that data: from its own global shard, or from its replica copy of the owner's.

use std::collections::BTreeMap;

use coopr_types::{ApiKey, EntityKind, Service, ServiceDefs, ShardId, Tenant};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{CommandResult, Outcome};
use crate::replication::{GlobalRecord, ReplicaData};
use crate::resources::{self, Blob, Blobs, PluginKind, ResourcePath, ResourceVersions};
use crate::{CommandError, ErrorCode, State};

/// Versions of one catalog entity, by version number.
pub type Versions = BTreeMap<u32, Value>;

/// A tenant's data in the global shard besides the tenant itself and its keys: its catalog
/// entities, and its users' profiles (Coopr's `/profile`), which replicate, snapshot and go
/// with the tenant exactly like the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantCatalog {
    pub entities: BTreeMap<EntityKind, BTreeMap<String, Versions>>,
    /// By user ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, Value>,
    /// Plugin resources' versions by [`crate::ResourcePath::key`] (their bytes are in the
    /// global shard's blobs, see [`crate::resources`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, ResourceVersions>,
}

impl TenantCatalog {
    /// The latest version of an entity.
    pub fn latest(&self, kind: EntityKind, name: &str) -> Option<&Value> {
        self.entities.get(&kind)?.get(name)?.values().next_back()
    }

    pub fn version(&self, kind: EntityKind, name: &str, version: u32) -> Option<&Value> {
        self.entities.get(&kind)?.get(name)?.get(&version)
    }

    /// Latest versions of every entity of a kind, by name.
    pub fn list(&self, kind: EntityKind) -> Vec<&Value> {
        self.entities
            .get(&kind)
            .map(|m| m.values().filter_map(|v| v.values().next_back()).collect())
            .unwrap_or_default()
    }

    /// Stores `body` as `version` of an entity.
    pub fn put_version(&mut self, kind: EntityKind, name: &str, version: u32, body: Value) {
        self.entities
            .entry(kind)
            .or_default()
            .entry(name.to_string())
            .or_default()
            .insert(version, body);
    }

    /// Deletes one version of an entity, or all of them (`None`).
    pub fn delete(&mut self, kind: EntityKind, name: &str, version: Option<u32>) {
        let Some(by_name) = self.entities.get_mut(&kind) else {
            return;
        };
        match version {
            None => {
                by_name.remove(name);
            }
            Some(v) => {
                if let Some(versions) = by_name.get_mut(name) {
                    versions.remove(&v);
                    if versions.is_empty() {
                        by_name.remove(name);
                    }
                }
            }
        }
    }

    /// Replaces every entity of the given kinds by these, each at version 1.
    pub fn import(&mut self, entities: &BTreeMap<EntityKind, Vec<Value>>) {
        for (kind, bodies) in entities {
            let by_name = self.entities.entry(*kind).or_default();
            by_name.clear();
            for body in bodies {
                let name = body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let mut body = body.clone();
                if let Value::Object(map) = &mut body {
                    map.insert("version".into(), Value::from(1));
                }
                by_name.entry(name).or_default().insert(1, body);
            }
        }
    }

    /// Writes a user's profile, or deletes it (`None`).
    pub fn set_profile(&mut self, user: &str, profile: Option<Value>) {
        match profile {
            Some(profile) => {
                self.profiles.insert(user.to_string(), profile);
            }
            None => {
                self.profiles.remove(user);
            }
        }
    }

    /// The latest services, parsed (entities that fail to parse are skipped; they were validated on write).
    pub fn services(&self) -> ServiceDefs {
        self.list(EntityKind::Services)
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Service>(v.clone()).ok())
            .map(|s| (s.name.clone(), std::sync::Arc::new(s)))
            .collect()
    }
}

/// The global shard's data as one DC sees it: its own [`GlobalShard`] where it owns the shard,
/// else its replica copy (see [`State::global_view`]). Borrowed, so reads copy nothing.
#[derive(Debug, Clone, Copy)]
pub struct GlobalRef<'a> {
    pub tenants: &'a BTreeMap<String, Tenant>,
    /// By key hash.
    pub api_keys: &'a BTreeMap<String, ApiKey>,
    pub catalogs: &'a BTreeMap<String, TenantCatalog>,
    /// Plugin resources' bytes by SHA-256.
    pub resource_blobs: &'a Blobs,
}

/// The global data of a DC whose replica of the global shard has applied nothing yet.
static NO_TENANTS: BTreeMap<String, Tenant> = BTreeMap::new();
static NO_API_KEYS: BTreeMap<String, ApiKey> = BTreeMap::new();
static NO_CATALOGS: BTreeMap<String, TenantCatalog> = BTreeMap::new();
static NO_BLOBS: Blobs = BTreeMap::new();

impl State {
    pub fn tenant_by_id(&self, id: &str) -> Option<&Tenant> {
        self.global_data().tenants.values().find(|t| t.id == id)
    }

    /// Tenants, API keys and catalogs as commands of cluster shards read them (quotas, service
    /// definitions): the replica copy of the global shard once this DC holds one (it replicates
    /// the global shard only when another DC owns it), else its own global shard. Derived from
    /// the state alone, so every node of the DC decides the same.
    pub fn global_data(&self) -> GlobalRef<'_> {
        self.global_view(!self.replicas.contains_key(&ShardId::GLOBAL))
    }

    /// Tenants, API keys and catalogs as this DC reads them: its own global shard when
    /// `owns_global`, else its replica copy of the owner's (empty until the first record
    /// applied). Writes go to the owner; reads use this everywhere.
    pub fn global_view(&self, owns_global: bool) -> GlobalRef<'_> {
        if owns_global {
            return GlobalRef {
                tenants: &self.global.tenants,
                api_keys: &self.global.api_keys,
                catalogs: &self.global.catalogs,
                resource_blobs: &self.global.resource_blobs,
            };
        }
        match self.replicas.get(&ShardId::GLOBAL).map(|r| &r.data) {
            Some(ReplicaData::Global(view)) => GlobalRef {
                tenants: &view.tenants,
                api_keys: &view.api_keys,
                catalogs: &view.catalogs,
                resource_blobs: &view.resource_blobs,
            },
            _ => GlobalRef {
                tenants: &NO_TENANTS,
                api_keys: &NO_API_KEYS,
                catalogs: &NO_CATALOGS,
                resource_blobs: &NO_BLOBS,
            },
        }
    }

    pub(super) fn require_tenant(&self, tenant: &str) -> Result<&Tenant, CommandError> {
        self.global_data()
            .tenants
            .get(tenant)
            .ok_or_else(|| CommandError::not_found("tenant", tenant))
    }

    pub(super) fn put_tenant(&mut self, tenant: &Tenant) -> CommandResult {
        let mut tenant = tenant.clone();
        if let Some(existing) = self.global.tenants.get(&tenant.name) {
            tenant.id = existing.id.clone();
        }
        self.global
            .tenants
            .insert(tenant.name.clone(), tenant.clone());
        self.emit_global(GlobalRecord::TenantPut(tenant));
        Ok(Outcome::Done)
    }

    pub(super) fn delete_tenant(&mut self, name: &str) -> CommandResult {
        // Deleting nothing writes nothing (no record for the replicas either).
        if !self.global.tenants.contains_key(name) {
            return Err(CommandError::not_found("tenant", name));
        }
        if name == "superadmin" {
            return Err(CommandError::Forbidden {
                message: "the superadmin tenant cannot be deleted".into(),
            });
        }
        if let Some(tenant) = self.global.tenants.get(name).filter(|t| t.workers > 0) {
            return Err(CommandError::conflict(
                ErrorCode::TenantHasWorkers,
                format!(
                    "tenant {name} still has {} workers; set them to 0 first",
                    tenant.workers
                ),
            ));
        }
        // Every DC's clusters, as far as they have reached this DC (it replicates every
        // shard). One created elsewhere in the last moments is deleted by its own DC
        // once this deletion reaches it (`orphaned_clusters`).
        let live = self
            .global
            .tenants
            .get(name)
            .map_or(0, |t| self.tenant_usage(t).0);
        if live > 0 {
            return Err(CommandError::conflict(
                ErrorCode::TenantHasClusters,
                format!("tenant {name} still has {live} live clusters"),
            ));
        }
        self.global.tenants.remove(name);
        self.global.api_keys.retain(|_, k| k.tenant != name);
        self.global.catalogs.remove(name);
        resources::collect_garbage(&self.global.catalogs, &mut self.global.resource_blobs);
        self.emit_global(GlobalRecord::TenantDeleted(name.to_string()));
        Ok(Outcome::Done)
    }

    pub(super) fn put_api_key(&mut self, key: &ApiKey) -> CommandResult {
        if !self.global.tenants.contains_key(&key.tenant) {
            return Err(CommandError::not_found("tenant", &key.tenant));
        }
        self.global
            .api_keys
            .insert(key.key_sha256.clone(), key.clone());
        self.emit_global(GlobalRecord::ApiKeyPut(key.clone()));
        Ok(Outcome::Done)
    }

    pub(super) fn put_entity(
        &mut self,
        tenant: &str,
        kind: EntityKind,
        name: &str,
        body: &Value,
        create_only: bool,
    ) -> CommandResult {
        self.require_tenant(tenant)?;
        let versions = self
            .global
            .catalogs
            .entry(tenant.to_string())
            .or_default()
            .entities
            .entry(kind)
            .or_default()
            .entry(name.to_string())
            .or_default();
        if create_only && !versions.is_empty() {
            return Err(CommandError::conflict(
                ErrorCode::EntityExists,
                format!("{} {name} already exists", kind.as_str()),
            ));
        }
        let version = versions.keys().next_back().copied().unwrap_or(0) + 1;
        let mut body = body.clone();
        if let Value::Object(map) = &mut body {
            map.insert("version".into(), Value::from(version));
        }
        versions.insert(version, body.clone());
        self.emit_global(GlobalRecord::EntityPut {
            tenant: tenant.to_string(),
            kind,
            name: name.to_string(),
            version,
            body,
        });
        Ok(Outcome::EntityVersion { version })
    }

    pub(super) fn delete_entity(
        &mut self,
        tenant: &str,
        kind: EntityKind,
        name: &str,
        version: Option<u32>,
    ) -> CommandResult {
        // Deleting nothing writes nothing (no record for the replicas either).
        let exists = self
            .global
            .catalogs
            .get(tenant)
            .is_some_and(|c| match version {
                None => c.latest(kind, name).is_some(),
                Some(v) => c.version(kind, name, v).is_some(),
            });
        if !exists {
            return Err(CommandError::not_found(kind.as_str(), name));
        }
        if let Some(catalog) = self.global.catalogs.get_mut(tenant) {
            catalog.delete(kind, name, version);
        }
        self.emit_global(GlobalRecord::EntityDeleted {
            tenant: tenant.to_string(),
            kind,
            name: name.to_string(),
            version,
        });
        Ok(Outcome::Done)
    }

    pub(super) fn put_profile(
        &mut self,
        tenant: &str,
        user: &str,
        profile: Option<&Value>,
    ) -> CommandResult {
        self.require_tenant(tenant)?;
        let catalog = self.global.catalogs.entry(tenant.to_string()).or_default();
        // Deleting nothing writes nothing (no record for the replicas either).
        if profile.is_none() && !catalog.profiles.contains_key(user) {
            return Ok(Outcome::Done);
        }
        catalog.set_profile(user, profile.cloned());
        self.emit_global(GlobalRecord::ProfilePut {
            tenant: tenant.to_string(),
            user: user.to_string(),
            profile: profile.cloned(),
        });
        Ok(Outcome::Done)
    }

    pub(super) fn import_catalog(
        &mut self,
        tenant: &str,
        entities: &BTreeMap<EntityKind, Vec<Value>>,
    ) -> CommandResult {
        self.require_tenant(tenant)?;
        self.global
            .catalogs
            .entry(tenant.to_string())
            .or_default()
            .import(entities);
        self.emit_global(GlobalRecord::CatalogImported {
            tenant: tenant.to_string(),
            entities: entities.clone(),
        });
        Ok(Outcome::Done)
    }
}

/// Plugin resources (see [`crate::resources`]): uploads, stage, recall, sync and deletes, each
/// checked completely before anything changes.
impl State {
    /// The versions of a resource at this DC's owner copy, or 404.
    fn owned_resource(
        &self,
        tenant: &str,
        resource: &ResourcePath,
    ) -> Result<&ResourceVersions, CommandError> {
        self.global
            .catalogs
            .get(tenant)
            .and_then(|c| c.resource(resource))
            .ok_or_else(|| CommandError::not_found("resource", resource.key()))
    }

    pub(super) fn put_resource(
        &mut self,
        tenant: &str,
        resource: &ResourcePath,
        bytes: &Blob,
    ) -> CommandResult {
        self.require_tenant(tenant)?;
        // The plugin must be registered and declare the resource type (Coopr: 404).
        let declared = self
            .global
            .catalogs
            .get(resources::PLUGIN_TYPES_TENANT)
            .and_then(|c| c.latest(resource.kind.entity_kind(), &resource.plugin))
            .ok_or_else(|| CommandError::not_found(plugin_noun(resource.kind), &resource.plugin))?;
        if !resources::declared_resource_types(declared)
            .is_some_and(|types| types.contains_key(&resource.resource_type))
        {
            return Err(CommandError::not_found(
                "resource type",
                format!("{} of {}", resource.resource_type, resource.plugin),
            ));
        }
        let size = bytes.len() as u64;
        if bytes.len() > resources::MAX_RESOURCE_BYTES {
            return Err(CommandError::invalid(
                ErrorCode::ResourceTooLarge,
                format!(
                    "a resource version is at most {} bytes, this one has {size}",
                    resources::MAX_RESOURCE_BYTES
                ),
            ));
        }
        let catalog = self.global.catalogs.get(tenant);
        let held = catalog.map_or(0, TenantCatalog::resource_bytes);
        if held + size > resources::MAX_TENANT_RESOURCE_BYTES {
            return Err(CommandError::conflict(
                ErrorCode::ResourceQuotaExceeded,
                format!(
                    "tenant {tenant} holds {held} bytes of resources; with {size} more it would pass its quota of {} bytes",
                    resources::MAX_TENANT_RESOURCE_BYTES
                ),
            ));
        }
        let sha256 = bytes.sha256();
        if !self.global.resource_blobs.contains_key(&sha256) {
            let stored = resources::stored_bytes(&self.global.resource_blobs);
            if stored + size > resources::MAX_STORED_RESOURCE_BYTES {
                return Err(CommandError::conflict(
                    ErrorCode::ResourceStoreFull,
                    format!(
                        "the deployment stores {stored} bytes of resources; with {size} more it would pass its limit of {} bytes",
                        resources::MAX_STORED_RESOURCE_BYTES
                    ),
                ));
            }
        }
        let version = catalog
            .and_then(|c| c.resource(resource))
            .map_or(1, |r| r.next_version);
        self.global
            .catalogs
            .entry(tenant.to_string())
            .or_default()
            .add_resource_version(resource, version, &sha256, size);
        self.global
            .resource_blobs
            .entry(sha256)
            .or_insert_with(|| bytes.clone());
        self.emit_global(GlobalRecord::ResourcePut {
            tenant: tenant.to_string(),
            resource: resource.clone(),
            version,
            bytes: bytes.clone(),
        });
        Ok(Outcome::EntityVersion { version })
    }

    /// Stages (`stage`) or recalls a version; nothing is written when nothing changes.
    fn slate_resource(
        &mut self,
        tenant: &str,
        resource: &ResourcePath,
        version: u32,
        stage: bool,
    ) -> CommandResult {
        self.require_tenant(tenant)?;
        if !self
            .owned_resource(tenant, resource)?
            .versions
            .contains_key(&version)
        {
            return Err(CommandError::not_found(
                "resource version",
                format!("{} {version}", resource.key()),
            ));
        }
        let catalog = self.global.catalogs.entry(tenant.to_string()).or_default();
        let changed = if stage {
            catalog.stage_resource(resource, version)
        } else {
            catalog.recall_resource(resource, version)
        };
        if changed != Some(true) {
            return Ok(Outcome::Unchanged);
        }
        let (tenant, resource) = (tenant.to_string(), resource.clone());
        self.emit_global(if stage {
            GlobalRecord::ResourceStaged {
                tenant,
                resource,
                version,
            }
        } else {
            GlobalRecord::ResourceRecalled {
                tenant,
                resource,
                version,
            }
        });
        Ok(Outcome::Done)
    }

    pub(super) fn stage_resource(
        &mut self,
        tenant: &str,
        resource: &ResourcePath,
        version: u32,
    ) -> CommandResult {
        self.slate_resource(tenant, resource, version, true)
    }

    pub(super) fn recall_resource(
        &mut self,
        tenant: &str,
        resource: &ResourcePath,
        version: u32,
    ) -> CommandResult {
        self.slate_resource(tenant, resource, version, false)
    }

    pub(super) fn sync_resources(&mut self, tenant: &str) -> CommandResult {
        self.require_tenant(tenant)?;
        let changed = self
            .global
            .catalogs
            .get_mut(tenant)
            .is_some_and(TenantCatalog::sync_resources);
        if !changed {
            return Ok(Outcome::Unchanged);
        }
        self.emit_global(GlobalRecord::ResourcesSynced {
            tenant: tenant.to_string(),
        });
        Ok(Outcome::Done)
    }

    pub(super) fn delete_resource(
        &mut self,
        tenant: &str,
        resource: &ResourcePath,
        version: Option<u32>,
    ) -> CommandResult {
        self.require_tenant(tenant)?;
        let versions = match (self.owned_resource(tenant, resource), version) {
            (Ok(r), None) => r.versions.values().collect::<Vec<_>>(),
            (Ok(r), Some(v)) => match r.versions.get(&v) {
                Some(meta) => vec![meta],
                None => {
                    return Err(CommandError::not_found(
                        "resource version",
                        format!("{} {v}", resource.key()),
                    ))
                }
            },
            // Deleting every version of nothing: Coopr answers 200.
            (Err(_), None) => return Ok(Outcome::Unchanged),
            (Err(e), Some(_)) => return Err(e),
        };
        if let Some(busy) = versions
            .iter()
            .find(|v| v.status() != resources::ResourceStatus::Inactive)
        {
            return Err(CommandError::conflict(
                ErrorCode::ResourceNotInactive,
                format!(
                    "only inactive resource versions can be deleted; {} has a {} version",
                    resource.key(),
                    busy.status().as_str()
                ),
            ));
        }
        if let Some(catalog) = self.global.catalogs.get_mut(tenant) {
            catalog.delete_resource(resource, version);
        }
        resources::collect_garbage(&self.global.catalogs, &mut self.global.resource_blobs);
        self.emit_global(GlobalRecord::ResourceDeleted {
            tenant: tenant.to_string(),
            resource: resource.clone(),
            version,
        });
        Ok(Outcome::Done)
    }
}

fn plugin_noun(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Automatortypes => "automator type",
        PluginKind::Providertypes => "provider type",
    }
}
