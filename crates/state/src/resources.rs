//! Plugin resources (Coopr's cookbooks, scripts, archives): per tenant, versions of named
//! resources of a plugin's resource type, each with Coopr's status, and their bytes.
//!
//! ```text
//!  upload ──> inactive ──stage──> staged ──sync──> active ──recall──> recalled ──sync──> inactive
//!                 ^                  │                ^                   │
//!                 └──────recall──────┘                └───────stage───────┘
//! ```
//!
//! Coopr keeps two flags per version: `live` (in use by provisioners) and `slated` (in use after
//! the next sync); the status is derived from them ([`ResourceStatus::of`]). Staging a version
//! slates it and unslates every other version of the resource; recalling unslates it; a sync
//! makes every version of the tenant live exactly when it is slated. Only an inactive version
//! can be deleted.
//!
//! **Where the bytes are.** A resource's metadata lives in its tenant's [`TenantCatalog`] and
//! its bytes in the global shard's content-addressed [`Blobs`] (SHA-256, hex), stored once
//! however many versions or tenants upload them. Both are part of the global shard: written at
//! its owner in one DC-log entry (so every node of the owner DC has them), shipped to the other
//! DCs in the `ResourcePut` record (bytes included), and part of snapshots and seeds. A blob
//! that no version references any more is dropped by the same rule at the owner and at every
//! replica ([`collect_garbage`]).
//!
//! **Bounds** (so that every entry that carries bytes stays under the DC log's payload limit of
//! 32 MiB, `coopr_raft::node::MAX_PAYLOAD_BYTES`, base64 adding a third):
//! - one version: [`MAX_RESOURCE_BYTES`] (an upload entry is at most ~5.4 MiB);
//! - one tenant's versions: [`MAX_TENANT_RESOURCE_BYTES`] (counted per version, duplicates
//!   included);
//! - every blob stored: [`MAX_STORED_RESOURCE_BYTES`], because a replica of the global shard is
//!   seeded with all of it in one entry (~21 MiB of base64 plus the catalogs);
//! - records of a pull batch: [`PULL_RESOURCE_BYTES`] of resource bytes before the batch is cut
//!   (at least one record goes), so a replica's batch entry stays below ~11 MiB of them;
//! - an outbox: [`OUTBOX_RESOURCE_BYTES_CAPACITY`] of resource bytes in records not yet
//!   acknowledged; beyond it the oldest records are dropped and a replica that missed them is
//!   re-seeded, as with the record-count capacity.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use coopr_types::EntityKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::machine::TenantCatalog;
use crate::replication::{GlobalRecord, Record, RecordKind};

const MIB: u64 = 1024 * 1024;

/// Largest version of a resource, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of resource versions one tenant may hold (every version counted).
pub const MAX_TENANT_RESOURCE_BYTES: u64 = 8 * MIB;
/// Most bytes of distinct resource contents the deployment stores (all tenants).
pub const MAX_STORED_RESOURCE_BYTES: u64 = 16 * MIB;
/// Resource bytes after which a pull batch is cut (the record that crosses it still goes).
pub const PULL_RESOURCE_BYTES: u64 = 4 * MIB;
/// Resource bytes an outbox keeps in records its replicas have not acknowledged.
pub const OUTBOX_RESOURCE_BYTES_CAPACITY: u64 = 32 * MIB;

/// Coopr's two kinds of plugins, with their URL segment names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Automatortypes,
    Providertypes,
}

impl PluginKind {
    pub const ALL: [PluginKind; 2] = [PluginKind::Automatortypes, PluginKind::Providertypes];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Automatortypes => "automatortypes",
            PluginKind::Providertypes => "providertypes",
        }
    }

    pub fn parse(s: &str) -> Option<PluginKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The catalog kind the plugin specifications are stored as (in the superadmin tenant).
    pub fn entity_kind(self) -> EntityKind {
        match self {
            PluginKind::Automatortypes => EntityKind::Automatortypes,
            PluginKind::Providertypes => EntityKind::Providertypes,
        }
    }
}

/// The tenant that holds the plugin specifications every tenant reads (as in Coopr).
pub const PLUGIN_TYPES_TENANT: &str = "superadmin";

/// The resource types a plugin specification declares (Coopr's `resourceTypes`; its docs say
/// `resourcetypes`, which is read too).
pub fn declared_resource_types(spec: &Value) -> Option<&serde_json::Map<String, Value>> {
    spec.get("resourceTypes")
        .or_else(|| spec.get("resourcetypes"))
        .and_then(Value::as_object)
}

/// Which resource: `{plugin kind}/{plugin}/{resource type}/{name}`, the path the provisioner
/// uses (every part is a validated name, so the joined key is unambiguous).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourcePath {
    pub kind: PluginKind,
    pub plugin: String,
    pub resource_type: String,
    pub name: String,
}

impl ResourcePath {
    /// The key of the resource type's resources: `{kind}/{plugin}/{resource type}/`.
    pub fn type_prefix(kind: PluginKind, plugin: &str, resource_type: &str) -> String {
        format!("{}/{plugin}/{resource_type}/", kind.as_str())
    }

    pub fn key(&self) -> String {
        format!(
            "{}{}",
            Self::type_prefix(self.kind, &self.plugin, &self.resource_type),
            self.name
        )
    }
}

/// Bytes of a resource: shared, not copied, between the command, the record and the store;
/// base64 in JSON (entries, records, snapshots).
#[derive(Clone, PartialEq, Eq)]
pub struct Blob(pub Arc<[u8]>);

impl Blob {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Blob {
        Blob(bytes.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn sha256(&self) -> String {
        sha256_hex(&self.0)
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Blob::new)
            .map_err(serde::de::Error::custom)
    }
}

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Resource contents by their SHA-256 (hex).
pub type Blobs = BTreeMap<String, Blob>;

/// Coopr's status of a resource version (`ResourceStatus`), lowercase in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceStatus {
    /// Not in use, and not after the next sync.
    Inactive,
    /// In use, and after the next sync.
    Active,
    /// Not in use; in use after the next sync.
    Staged,
    /// In use; not after the next sync.
    Recalled,
}

impl ResourceStatus {
    pub fn of(live: bool, slated: bool) -> ResourceStatus {
        match (live, slated) {
            (true, true) => ResourceStatus::Active,
            (true, false) => ResourceStatus::Recalled,
            (false, true) => ResourceStatus::Staged,
            (false, false) => ResourceStatus::Inactive,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Inactive => "inactive",
            ResourceStatus::Active => "active",
            ResourceStatus::Staged => "staged",
            ResourceStatus::Recalled => "recalled",
        }
    }

    /// Case-insensitive, as Coopr's `?status=` filter.
    pub fn parse(s: &str) -> Option<ResourceStatus> {
        [
            ResourceStatus::Inactive,
            ResourceStatus::Active,
            ResourceStatus::Staged,
            ResourceStatus::Recalled,
        ]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(s))
    }
}

/// One uploaded version of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceVersion {
    /// Of its bytes, hex: the key of its blob.
    pub sha256: String,
    pub size: u64,
    /// In use by provisioners (set by a sync).
    #[serde(default)]
    pub live: bool,
    /// In use after the next sync.
    #[serde(default)]
    pub slated: bool,
}

impl ResourceVersion {
    pub fn status(&self) -> ResourceStatus {
        ResourceStatus::of(self.live, self.slated)
    }
}

/// Every version of one resource, and the number the next upload gets (versions are never
/// reused while the resource exists, also after the newest was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceVersions {
    pub next_version: u32,
    pub versions: BTreeMap<u32, ResourceVersion>,
}

impl Default for ResourceVersions {
    fn default() -> Self {
        ResourceVersions {
            next_version: 1,
            versions: BTreeMap::new(),
        }
    }
}

impl TenantCatalog {
    /// The versions of a resource (`None`: none was ever uploaded, or all were deleted).
    pub fn resource(&self, path: &ResourcePath) -> Option<&ResourceVersions> {
        self.resources.get(&path.key())
    }

    /// The resources of one resource type, by name.
    pub fn resources_of_type(
        &self,
        kind: PluginKind,
        plugin: &str,
        resource_type: &str,
    ) -> BTreeMap<&str, &ResourceVersions> {
        let prefix = ResourcePath::type_prefix(kind, plugin, resource_type);
        self.resources
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, versions)| (&key[prefix.len()..], versions))
            .collect()
    }

    /// Bytes of every version the tenant holds.
    pub fn resource_bytes(&self) -> u64 {
        self.resources
            .values()
            .flat_map(|r| r.versions.values())
            .map(|v| v.size)
            .sum()
    }

    /// Stores an uploaded version (inactive).
    pub fn add_resource_version(
        &mut self,
        path: &ResourcePath,
        version: u32,
        sha256: &str,
        size: u64,
    ) {
        let resource = self.resources.entry(path.key()).or_default();
        resource.next_version = resource.next_version.max(version + 1);
        resource.versions.insert(
            version,
            ResourceVersion {
                sha256: sha256.to_string(),
                size,
                live: false,
                slated: false,
            },
        );
    }

    /// Slates `version` and unslates every other version of the resource. Whether anything
    /// changed (`None`: no such version).
    pub fn stage_resource(&mut self, path: &ResourcePath, version: u32) -> Option<bool> {
        let resource = self.resources.get_mut(&path.key())?;
        resource.versions.get(&version)?;
        let mut changed = false;
        for (v, meta) in &mut resource.versions {
            let slated = *v == version;
            changed |= meta.slated != slated;
            meta.slated = slated;
        }
        Some(changed)
    }

    /// Unslates `version`. Whether anything changed (`None`: no such version).
    pub fn recall_resource(&mut self, path: &ResourcePath, version: u32) -> Option<bool> {
        let meta = self
            .resources
            .get_mut(&path.key())?
            .versions
            .get_mut(&version)?;
        let changed = meta.slated;
        meta.slated = false;
        Some(changed)
    }

    /// Every version becomes live exactly when it is slated: staged ones active, recalled ones
    /// inactive. Whether anything changed.
    pub fn sync_resources(&mut self) -> bool {
        let mut changed = false;
        for meta in self
            .resources
            .values_mut()
            .flat_map(|r| r.versions.values_mut())
        {
            changed |= meta.live != meta.slated;
            meta.live = meta.slated;
        }
        changed
    }

    /// Deletes one version, or the resource with all its versions (`None`).
    pub fn delete_resource(&mut self, path: &ResourcePath, version: Option<u32>) {
        let key = path.key();
        match version {
            None => {
                self.resources.remove(&key);
            }
            Some(v) => {
                if let Some(resource) = self.resources.get_mut(&key) {
                    resource.versions.remove(&v);
                }
            }
        }
    }
}

/// Coopr's `ResourceCollection` of one tenant, as the tenant push carries it to provisioners
/// (`{"automatortypes": {plugin: {resource type: {"format", "permissions"?, "active": [{"name",
/// "version"}]}}}, "providertypes": {...}}`): the live version of each of the tenant's
/// resources, under the resource types the registered plugin specifications (`plugins`, the
/// superadmin's catalog) declare, with the format and permissions they declare. Resource types
/// without a live version are left out, as in Coopr; both plugin kinds are always present.
pub fn live_resources(plugins: Option<&TenantCatalog>, tenant: Option<&TenantCatalog>) -> Value {
    let mut out = serde_json::Map::new();
    for kind in PluginKind::ALL {
        let mut by_plugin = serde_json::Map::new();
        let specs = plugins
            .map(|c| c.list(kind.entity_kind()))
            .unwrap_or_default();
        for spec in specs {
            let Some(plugin) = spec.get("name").and_then(Value::as_str) else {
                continue;
            };
            let mut by_type = serde_json::Map::new();
            for (resource_type, type_spec) in declared_resource_types(spec).into_iter().flatten() {
                let active: Vec<Value> = tenant
                    .map(|t| t.resources_of_type(kind, plugin, resource_type))
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|(name, versions)| {
                        versions
                            .versions
                            .iter()
                            .filter(|(_, v)| v.live)
                            .map(move |(version, _)| serde_json::json!({"name": name, "version": version}))
                    })
                    .collect();
                if active.is_empty() {
                    continue;
                }
                let mut entry = serde_json::Map::new();
                if let Some(format) = type_spec.get("format") {
                    entry.insert("format".into(), format.clone());
                }
                if let Some(permissions) = type_spec.get("permissions") {
                    entry.insert("permissions".into(), permissions.clone());
                }
                entry.insert("active".into(), Value::Array(active));
                by_type.insert(resource_type.clone(), Value::Object(entry));
            }
            if !by_type.is_empty() {
                by_plugin.insert(plugin.to_string(), Value::Object(by_type));
            }
        }
        out.insert(kind.as_str().into(), Value::Object(by_plugin));
    }
    Value::Object(out)
}

/// Drops every blob that no resource version of any tenant references.
pub fn collect_garbage(catalogs: &BTreeMap<String, TenantCatalog>, blobs: &mut Blobs) {
    if blobs.is_empty() {
        return;
    }
    let referenced: std::collections::BTreeSet<&str> = catalogs
        .values()
        .flat_map(|c| c.resources.values())
        .flat_map(|r| r.versions.values())
        .map(|v| v.sha256.as_str())
        .collect();
    blobs.retain(|hash, _| referenced.contains(hash.as_str()));
}

/// Bytes of every blob stored.
pub fn stored_bytes(blobs: &Blobs) -> u64 {
    blobs.values().map(|b| b.len() as u64).sum()
}

/// Applies a resource record to a copy of the global shard's catalogs and blobs: the change the
/// owner's command made. `false` for a record that is not about resources.
pub fn apply_record(
    catalogs: &mut BTreeMap<String, TenantCatalog>,
    blobs: &mut Blobs,
    record: &GlobalRecord,
) -> bool {
    match record {
        GlobalRecord::ResourcePut {
            tenant,
            resource,
            version,
            bytes,
        } => {
            let sha256 = bytes.sha256();
            catalogs
                .entry(tenant.clone())
                .or_default()
                .add_resource_version(resource, *version, &sha256, bytes.len() as u64);
            blobs.entry(sha256).or_insert_with(|| bytes.clone());
        }
        GlobalRecord::ResourceStaged {
            tenant,
            resource,
            version,
        } => {
            if let Some(catalog) = catalogs.get_mut(tenant) {
                catalog.stage_resource(resource, *version);
            }
        }
        GlobalRecord::ResourceRecalled {
            tenant,
            resource,
            version,
        } => {
            if let Some(catalog) = catalogs.get_mut(tenant) {
                catalog.recall_resource(resource, *version);
            }
        }
        GlobalRecord::ResourcesSynced { tenant } => {
            if let Some(catalog) = catalogs.get_mut(tenant) {
                catalog.sync_resources();
            }
        }
        GlobalRecord::ResourceDeleted {
            tenant,
            resource,
            version,
        } => {
            if let Some(catalog) = catalogs.get_mut(tenant) {
                catalog.delete_resource(resource, *version);
            }
            collect_garbage(catalogs, blobs);
        }
        _ => return false,
    }
    true
}

impl Record {
    /// Resource bytes the record carries (0 for every other record).
    pub fn resource_bytes(&self) -> u64 {
        match &self.kind {
            RecordKind::Global(GlobalRecord::ResourcePut { bytes, .. }) => bytes.len() as u64,
            _ => 0,
        }
    }
}

/// How many of `records`, from the first, a pull batch takes: all, unless their resource bytes
/// pass [`PULL_RESOURCE_BYTES`]; then up to and including the record that passes it (never
/// none, so that a batch always makes progress).
pub fn records_within_budget(records: &[Record]) -> usize {
    let mut bytes = 0;
    for (i, record) in records.iter().enumerate() {
        if bytes >= PULL_RESOURCE_BYTES {
            return i.max(1);
        }
        bytes += record.resource_bytes();
    }
    records.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> ResourcePath {
        ResourcePath {
            kind: PluginKind::Automatortypes,
            plugin: "chef-solo".into(),
            resource_type: "cookbooks".into(),
            name: name.into(),
        }
    }

    fn statuses(catalog: &TenantCatalog, name: &str) -> Vec<(u32, ResourceStatus)> {
        catalog
            .resource(&path(name))
            .map(|r| r.versions.iter().map(|(v, m)| (*v, m.status())).collect())
            .unwrap_or_default()
    }

    /// Coopr's status model: stage slates one version and unslates the others, recall
    /// unslates, sync makes slated versions live and the others not.
    #[test]
    fn stage_recall_and_sync_follow_coopr() {
        use ResourceStatus::*;
        let mut catalog = TenantCatalog::default();
        for v in 1..=3 {
            catalog.add_resource_version(&path("hadoop"), v, "h", 1);
        }
        assert_eq!(catalog.stage_resource(&path("hadoop"), 1), Some(true));
        assert_eq!(catalog.stage_resource(&path("hadoop"), 1), Some(false));
        assert_eq!(
            statuses(&catalog, "hadoop"),
            [(1, Staged), (2, Inactive), (3, Inactive)]
        );
        assert!(catalog.sync_resources());
        assert_eq!(
            statuses(&catalog, "hadoop"),
            [(1, Active), (2, Inactive), (3, Inactive)]
        );
        // Staging another version recalls the active one.
        catalog.stage_resource(&path("hadoop"), 2);
        assert_eq!(
            statuses(&catalog, "hadoop"),
            [(1, Recalled), (2, Staged), (3, Inactive)]
        );
        // Recalling a staged version makes it inactive again; staging a recalled one, active.
        catalog.recall_resource(&path("hadoop"), 2);
        catalog.stage_resource(&path("hadoop"), 1);
        assert_eq!(
            statuses(&catalog, "hadoop"),
            [(1, Active), (2, Inactive), (3, Inactive)]
        );
        catalog.recall_resource(&path("hadoop"), 1);
        assert!(catalog.sync_resources());
        assert!(!catalog.sync_resources());
        assert_eq!(
            statuses(&catalog, "hadoop"),
            [(1, Inactive), (2, Inactive), (3, Inactive)]
        );
        assert_eq!(catalog.stage_resource(&path("hadoop"), 9), None);
        assert_eq!(catalog.recall_resource(&path("other"), 1), None);
    }

    /// The tenant push's resources: live versions only, under the types the registered
    /// plugins declare, with their format and permissions (Coopr's `ResourceCollectionCodec`).
    #[test]
    fn live_resources_follow_coopr_s_resource_collection() {
        let mut plugins = TenantCatalog::default();
        plugins.put_version(
            EntityKind::Automatortypes,
            "chef-solo",
            1,
            serde_json::json!({"name": "chef-solo", "resourceTypes": {
                "cookbooks": {"format": "archive"},
                "roles": {"format": "file", "permissions": "0644"}}}),
        );
        let mut tenant = TenantCatalog::default();
        assert_eq!(
            live_resources(Some(&plugins), Some(&tenant)),
            serde_json::json!({"automatortypes": {}, "providertypes": {}})
        );
        for v in 1..=2 {
            tenant.add_resource_version(&path("hadoop"), v, "h", 1);
        }
        tenant.add_resource_version(&path("mysql"), 1, "h", 1);
        let role = ResourcePath {
            resource_type: "roles".into(),
            ..path("cluster.json")
        };
        tenant.add_resource_version(&role, 1, "h", 1);
        // A resource of a type no plugin declares is not pushed.
        let undeclared = ResourcePath {
            plugin: "gone".into(),
            ..path("x")
        };
        tenant.add_resource_version(&undeclared, 1, "h", 1);
        for p in [path("hadoop"), role.clone(), undeclared.clone()] {
            tenant.stage_resource(&p, 1);
        }
        tenant.stage_resource(&path("hadoop"), 2);
        tenant.sync_resources();
        // Staged after the sync: not live yet.
        tenant.stage_resource(&path("mysql"), 1);
        assert_eq!(
            live_resources(Some(&plugins), Some(&tenant)),
            serde_json::json!({
                "automatortypes": {"chef-solo": {
                    "cookbooks": {"format": "archive", "active": [{"name": "hadoop", "version": 2}]},
                    "roles": {"format": "file", "permissions": "0644",
                              "active": [{"name": "cluster.json", "version": 1}]}}},
                "providertypes": {}
            })
        );
        assert_eq!(
            live_resources(None, Some(&tenant)),
            serde_json::json!({"automatortypes": {}, "providertypes": {}})
        );
    }

    #[test]
    fn resources_of_a_type_are_listed_by_name() {
        let mut catalog = TenantCatalog::default();
        catalog.add_resource_version(&path("a"), 1, "h", 1);
        catalog.add_resource_version(&path("b"), 1, "h", 1);
        let mut other = path("c");
        other.resource_type = "roles".into();
        catalog.add_resource_version(&other, 1, "h", 1);
        let names: Vec<&str> = catalog
            .resources_of_type(PluginKind::Automatortypes, "chef-solo", "cookbooks")
            .into_keys()
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn blobs_are_base64_and_checksummed() {
        let blob = Blob::new(b"hello".to_vec());
        assert_eq!(serde_json::to_string(&blob).unwrap(), "\"aGVsbG8=\"");
        let back: Blob = serde_json::from_str("\"aGVsbG8=\"").unwrap();
        assert_eq!(back, blob);
        assert_eq!(
            blob.sha256(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(serde_json::from_str::<Blob>("\"not base64!\"").is_err());
    }

    #[test]
    fn unreferenced_blobs_are_collected() {
        let mut catalogs = BTreeMap::new();
        let mut catalog = TenantCatalog::default();
        catalog.add_resource_version(&path("a"), 1, "kept", 1);
        catalogs.insert("t".to_string(), catalog);
        let mut blobs = Blobs::new();
        blobs.insert("kept".into(), Blob::new(vec![1]));
        blobs.insert("gone".into(), Blob::new(vec![2]));
        collect_garbage(&catalogs, &mut blobs);
        assert_eq!(blobs.keys().collect::<Vec<_>>(), ["kept"]);
    }

    #[test]
    fn a_pull_batch_is_cut_after_its_resource_budget() {
        let record = |bytes: usize| Record {
            shard: coopr_types::ShardId::GLOBAL,
            epoch: 1,
            seq: 1,
            at_ms: 0,
            kind: RecordKind::Global(GlobalRecord::ResourcePut {
                tenant: "t".into(),
                resource: path("a"),
                version: 1,
                bytes: Blob::new(vec![0; bytes]),
            }),
        };
        let big = PULL_RESOURCE_BYTES as usize;
        assert_eq!(records_within_budget(&[]), 0);
        assert_eq!(records_within_budget(&[record(10), record(10)]), 2);
        // The record that crosses the budget goes, the next does not.
        assert_eq!(
            records_within_budget(&[record(10), record(big), record(1)]),
            2
        );
        assert_eq!(records_within_budget(&[record(big), record(1)]), 1);
    }
}
