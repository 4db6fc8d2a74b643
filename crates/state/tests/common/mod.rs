//! Helpers shared by the state-machine tests: the example catalog, tenants, and cluster specs
//! built the way the server builds them (layout solved up front).

// Each test crate uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeMap;

use coopr_engine::layout::{solve_layout, LayoutRequest};
use coopr_state::{ClusterSpec, Command, CommandResult, Entry, NodeSpec, ProvisionerInfo, State};
use coopr_types::{
    hash_api_key, ApiKey, ClusterTemplate, EntityKind, MachineType, Provider, Tenant, UNLIMITED,
};
use serde_json::Value;

pub const CATALOG: &str = include_str!("../../../../examples/catalog.json");
pub const TENANT: &str = "acme";

pub fn tenant(name: &str, max_clusters: u32, max_nodes: u32) -> Tenant {
    Tenant {
        id: format!("id-{name}"),
        name: name.into(),
        description: String::new(),
        workers: 0,
        max_clusters,
        max_nodes,
    }
}

pub fn catalog_entities() -> BTreeMap<EntityKind, Vec<Value>> {
    let body: serde_json::Map<String, Value> =
        serde_json::from_str(CATALOG).expect("catalog is JSON");
    body.into_iter()
        .filter_map(|(k, v)| Some((EntityKind::parse(&k)?, v.as_array()?.clone())))
        .collect()
}

pub fn entity<T: serde::de::DeserializeOwned>(state: &State, kind: EntityKind, name: &str) -> T {
    let value = state.global.catalogs[TENANT]
        .latest(kind, name)
        .unwrap_or_else(|| panic!("{name} missing"));
    serde_json::from_value(value.clone()).expect("entity parses")
}

/// A cluster spec built the way the server builds one (layout solved up front).
pub fn spec(state: &State, template: &str, machines: u32, services: &[String]) -> ClusterSpec {
    let template: ClusterTemplate = entity(state, EntityKind::Clustertemplates, template);
    let provider: Provider = entity(state, EntityKind::Providers, &template.defaults.provider);
    let hardwaretype: MachineType = entity(
        state,
        EntityKind::Hardwaretypes,
        &template.defaults.hardwaretype,
    );
    let catalog_services = state.global.catalogs[TENANT].services();
    let layout = solve_layout(&LayoutRequest {
        template: &template,
        num_machines: machines,
        services,
        hardwaretype: &hardwaretype.name,
        imagetype: &template.defaults.imagetype,
        catalog_services: &catalog_services,
    })
    .expect("layout");
    let mut all: Vec<String> = layout.iter().flat_map(|n| n.services.clone()).collect();
    all.sort();
    all.dedup();
    ClusterSpec {
        tenant: TENANT.into(),
        user: "alice".into(),
        name: "dev".into(),
        description: String::new(),
        hardwaretype: template.defaults.hardwaretype.clone(),
        imagetype: template.defaults.imagetype.clone(),
        dns_suffix: template.defaults.dns_suffix.clone(),
        services: all,
        config: template.defaults.config.clone(),
        initial_lease_ms: 0,
        tenant_incarnation: String::new(),
        nodes: layout
            .into_iter()
            .map(|n| NodeSpec {
                nodenum: n.nodenum,
                services: n.services,
                hardwaretype: n.hardwaretype,
                imagetype: n.imagetype,
                flavor: "fake.small".into(),
                image: "debian-12".into(),
                sshuser: "debian".into(),
            })
            .collect(),
        template,
        provider,
    }
}

/// The commands every harness starts with: tenant `acme` (unlimited quotas) with an API key,
/// the example catalog, and provisioner `p1`.
pub fn setup_commands() -> Vec<Command> {
    vec![
        Command::PutTenant {
            tenant: tenant(TENANT, UNLIMITED, UNLIMITED),
        },
        Command::PutApiKey {
            key: ApiKey {
                tenant: TENANT.into(),
                user: None,
                key_sha256: hash_api_key("acme-key"),
            },
        },
        Command::ImportCatalog {
            tenant: TENANT.into(),
            entities: catalog_entities(),
        },
        Command::RegisterProvisioner {
            info: ProvisionerInfo {
                id: "p1".into(),
                host: "127.0.0.1".into(),
                port: 1,
                capacity_total: 4,
            },
        },
    ]
}

/// [`State::apply`], then [`State::check_indexes`]: every test that applies entries this way
/// fails at the first entry after which a derived index differs from a full scan.
pub trait CheckedApply {
    fn checked_apply(&mut self, entry: &Entry) -> CommandResult;
}

impl CheckedApply for State {
    fn checked_apply(&mut self, entry: &Entry) -> CommandResult {
        let result = self.apply(entry);
        if let Err(stale) = self.check_indexes() {
            let command: String = format!("{:?}", entry.command).chars().take(200).collect();
            panic!("after {command}: {stale}");
        }
        result
    }
}
