//! The per-tenant catalog in Coopr's JSON shapes: providers, hardware types, image types, services,
//! cluster templates and partial templates. Every write of an entity creates a new `version`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

pub type JsonMap = Map<String, Value>;

fn is_empty_str(s: &str) -> bool {
    s.is_empty()
}

/// The catalog entity kinds, with their URL segment names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    Providers,
    Hardwaretypes,
    Imagetypes,
    Services,
    Clustertemplates,
    /// Pieces of templates that cluster templates `include` (Coopr's `PartialTemplate`).
    Partialtemplates,
    /// Plugin specifications (Coopr's `AutomatorType`), registered by provisioners; stored in
    /// the superadmin tenant and read by every tenant. Not a kind of `/v2/{type}`, of export or
    /// import: not in [`EntityKind::ALL`].
    Automatortypes,
    /// Plugin specifications (Coopr's `ProviderType`), like [`EntityKind::Automatortypes`].
    Providertypes,
}

impl EntityKind {
    pub const ALL: [EntityKind; 6] = [
        EntityKind::Providers,
        EntityKind::Hardwaretypes,
        EntityKind::Imagetypes,
        EntityKind::Services,
        EntityKind::Clustertemplates,
        EntityKind::Partialtemplates,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Providers => "providers",
            EntityKind::Hardwaretypes => "hardwaretypes",
            EntityKind::Imagetypes => "imagetypes",
            EntityKind::Services => "services",
            EntityKind::Clustertemplates => "clustertemplates",
            EntityKind::Partialtemplates => "partialtemplates",
            EntityKind::Automatortypes => "automatortypes",
            EntityKind::Providertypes => "providertypes",
        }
    }

    /// The kinds of `/v2/{type}` (plugin specifications are not among them).
    pub fn parse(s: &str) -> Option<EntityKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Provider {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub icon: String,
    #[serde(default)]
    pub version: u32,
    pub providertype: String,
    #[serde(default)]
    pub provisioner: JsonMap,
}

/// A hardware type or an image type: per-provider settings (`flavor`; `image`, `sshuser`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MachineType {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub icon: String,
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub providermap: BTreeMap<String, JsonMap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RequiresUses {
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub uses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceDependencies {
    #[serde(default)]
    pub provides: Vec<String>,
    #[serde(default)]
    pub conflicts: Vec<String>,
    #[serde(default)]
    pub install: RequiresUses,
    #[serde(default)]
    pub runtime: RequiresUses,
}

/// What a provisioner runs for one task type of a service: the plugin (`type`) and its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceAction {
    #[serde(rename = "type")]
    pub plugin: String,
    #[serde(default)]
    pub fields: JsonMap,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceProvisioner {
    /// Keyed by lowercase task name (`install`, `configure`, `start`, ...).
    #[serde(default)]
    pub actions: BTreeMap<String, ServiceAction>,
}

/// Service definitions by name, shared: a cluster record keeps the definitions its last
/// operation planned with, and identical definitions are one allocation across clusters
/// (`coopr_state`'s service pool).
pub type ServiceDefs = BTreeMap<String, std::sync::Arc<Service>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Service {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub icon: String,
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub dependencies: ServiceDependencies,
    #[serde(default)]
    pub provisioner: ServiceProvisioner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Compatibility {
    #[serde(default)]
    pub hardwaretypes: Vec<String>,
    #[serde(default)]
    pub imagetypes: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateDefaults {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub hardwaretype: String,
    #[serde(default)]
    pub imagetype: String,
    #[serde(default)]
    pub dns_suffix: String,
    #[serde(default)]
    pub config: JsonMap,
}

/// Bounds as Coopr's templates give them; numbers may come as strings (`"min": "1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinMax {
    #[serde(default, deserialize_with = "crate::lenient::u32")]
    pub min: u32,
    #[serde(
        default = "unbounded",
        deserialize_with = "crate::lenient::u32_or_unbounded"
    )]
    pub max: u32,
}

fn unbounded() -> u32 {
    u32::MAX
}

impl Default for MinMax {
    fn default() -> Self {
        MinMax {
            min: 0,
            max: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LayoutConstraints {
    #[serde(default)]
    pub mustcoexist: Vec<Vec<String>>,
    #[serde(default)]
    pub cantcoexist: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceConstraint {
    #[serde(default)]
    pub hardwaretypes: Vec<String>,
    #[serde(default)]
    pub imagetypes: Vec<String>,
    #[serde(default)]
    pub quantities: MinMax,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Constraints {
    #[serde(default)]
    pub size: MinMax,
    #[serde(default)]
    pub layout: LayoutConstraints,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConstraint>,
}

/// Lease settings in milliseconds; 0 means unlimited. Input also accepts `"2d"`, `"12h"`, `"30m"`, `"10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LeaseDuration {
    #[serde(default, deserialize_with = "duration_ms")]
    pub initial: u64,
    #[serde(default, deserialize_with = "duration_ms")]
    pub max: u64,
    #[serde(default, deserialize_with = "duration_ms")]
    pub step: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Administration {
    #[serde(default)]
    pub leaseduration: LeaseDuration,
}

/// A template named by another: `{"name": "base"}` (Coopr's `Parent` and `Include`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterTemplate {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub icon: String,
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub compatibility: Compatibility,
    #[serde(default)]
    pub defaults: TemplateDefaults,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub administration: Administration,
    /// The cluster template this one extends: its settings come first, this one's over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<TemplateRef>,
    /// Partial templates merged in before this template's own settings, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub includes: Vec<TemplateRef>,
}

impl ClusterTemplate {
    /// Whether the template needs resolving (`engine::template::resolve`) before use.
    pub fn has_references(&self) -> bool {
        self.extends.is_some() || !self.includes.is_empty()
    }
}

/// Coopr's partial template: a cluster template's defaults and compatibility to `include` in
/// cluster templates. Its `config` keys are final in every template that includes it when it
/// is `immutable`. (Constraints and administration are accepted, as Coopr did, but a partial
/// template's are not merged.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PartialTemplate {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "is_empty_str")]
    pub icon: String,
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub compatibility: Compatibility,
    #[serde(default)]
    pub defaults: TemplateDefaults,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub administration: Administration,
    #[serde(default, deserialize_with = "crate::lenient::boolean")]
    pub immutable: bool,
}

/// Parses a duration given as milliseconds or as `<n>d|h|m|s`.
pub fn parse_duration_ms(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("invalid duration {n}")),
        Value::String(s) => {
            let s = s.trim();
            let (digits, unit_ms) = match s.char_indices().last() {
                Some((i, 'd')) => (&s[..i], 86_400_000),
                Some((i, 'h')) => (&s[..i], 3_600_000),
                Some((i, 'm')) => (&s[..i], 60_000),
                Some((i, 's')) => (&s[..i], 1_000),
                _ => (s, 1),
            };
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .ok_or_else(|| format!("invalid duration {s:?}"))
        }
        Value::Null => Ok(0),
        other => Err(format!("invalid duration {other}")),
    }
}

fn duration_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    parse_duration_ms(&v).map_err(serde::de::Error::custom)
}

/// One tenant's catalog, as exported and imported (`GET /v2/export`, `POST /v2/import`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CatalogExport {
    #[serde(default)]
    pub providers: Vec<Provider>,
    #[serde(default)]
    pub hardwaretypes: Vec<MachineType>,
    #[serde(default)]
    pub imagetypes: Vec<MachineType>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub clustertemplates: Vec<ClusterTemplate>,
    #[serde(default)]
    pub partialtemplates: Vec<PartialTemplate>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration_ms(&json!("2d")).unwrap(), 172_800_000);
        assert_eq!(parse_duration_ms(&json!("30m")).unwrap(), 1_800_000);
        assert_eq!(parse_duration_ms(&json!(1500)).unwrap(), 1500);
        assert!(parse_duration_ms(&json!("x")).is_err());
        assert!(parse_duration_ms(&json!(-1)).is_err());
    }

    #[test]
    fn template_parses_coopr_shape() {
        let t: ClusterTemplate = serde_json::from_value(json!({
            "name": "lamp",
            "compatibility": {"services": ["mysql", "apache"]},
            "defaults": {"services": ["mysql"], "provider": "fake", "hardwaretype": "small",
                          "imagetype": "debian", "dnsSuffix": "example.com"},
            "constraints": {"size": {"min": 1, "max": 10}},
            "administration": {"leaseduration": {"initial": "1d", "max": 0, "step": "12h"}}
        }))
        .unwrap();
        assert_eq!(t.defaults.dns_suffix, "example.com");
        assert_eq!(t.administration.leaseduration.initial, 86_400_000);
        assert_eq!(t.constraints.size.max, 10);
    }

    /// Coopr's docs write numbers and booleans as strings; Gson read them.
    #[test]
    fn templates_take_numbers_and_booleans_as_strings() {
        let t: ClusterTemplate = serde_json::from_value(json!({
            "name": "t",
            "constraints": {"size": {"min": "1", "max": "5"},
                            "services": {"zk": {"quantities": {"min": "1", "max": "3"}}}},
            "includes": [{"name": "base"}]
        }))
        .unwrap();
        assert_eq!(t.constraints.size, MinMax { min: 1, max: 5 });
        assert_eq!(
            t.constraints.services["zk"].quantities,
            MinMax { min: 1, max: 3 }
        );
        assert!(t.has_references());
        let p: PartialTemplate =
            serde_json::from_value(json!({"name": "p", "immutable": "true"})).unwrap();
        assert!(p.immutable);
        let bad = [
            json!({"name": "t", "constraints": {"size": {"min": "one"}}}),
            json!({"name": "t", "constraints": {"size": {"max": -1}}}),
        ];
        for body in bad {
            assert!(
                serde_json::from_value::<ClusterTemplate>(body.clone()).is_err(),
                "{body}"
            );
        }
        assert!(
            serde_json::from_value::<PartialTemplate>(json!({"name": "p", "immutable": "no"}))
                .is_err()
        );
        // An absent max is unbounded, a null one too.
        let open: MinMax = serde_json::from_value(json!({"min": 2, "max": null})).unwrap();
        assert_eq!(
            open,
            MinMax {
                min: 2,
                max: u32::MAX
            }
        );
    }
}
