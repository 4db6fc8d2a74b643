//! The layout solver: which services go on which machine.
//!
//! ```text
//!   template + numMachines + services          existing nodes + new services
//!                 |                                        |
//!            solve_layout                          solve_added_services
//!                 |                                        |
//!                 +-------> check (size, compatibility, ---+
//!                           catalog, dependencies)
//!                                   |
//!                           place (greedy, two passes)
//!                                   |
//!                           verify (quantities, must/cantcoexist)
//! ```
//!
//! Placement is deterministic and greedy rather than a search:
//!
//! 1. Services are handled most-constrained first (smallest `quantities.max`, then by name).
//! 2. *Minimum pass*: each service is put on `max(quantities.min, 1)` nodes, first fit in node
//!    order, so a service limited to one instance lands on the first node that can take it.
//! 3. *Spread pass*: each service is then added to every further node that can take it, up to
//!    `quantities.max`. Services that cannot coexist therefore end up spread across nodes.
//!
//! A node "can take" a service when the service's hardware/image constraints allow the node's
//! types, the node would not then hold two services of one `cantcoexist` set, and the service's
//! `mustcoexist` partners (those in the cluster) can come along. Whatever the greedy passes
//! produce is verified against every constraint at the end, so a layout this module returns is
//! always valid; when the greedy passes miss a valid layout the caller gets
//! [`LayoutError::Unsatisfiable`] naming the violated constraint.

use std::collections::{BTreeMap, BTreeSet};

use coopr_types::{ClusterTemplate, NodeId, ServiceDefs};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Coopr numbers the nodes of a cluster from 1000.
pub const FIRST_NODENUM: u32 = 1000;

/// What to lay out for a new cluster.
#[derive(Debug, Clone, Copy)]
pub struct LayoutRequest<'a> {
    pub template: &'a ClusterTemplate,
    pub num_machines: u32,
    /// Requested services; empty means the template's `defaults.services`.
    pub services: &'a [String],
    /// Resolved by the caller: the request's override or the template default.
    pub hardwaretype: &'a str,
    /// Resolved by the caller: the request's override or the template default.
    pub imagetype: &'a str,
    /// The tenant's services, by name.
    pub catalog_services: &'a ServiceDefs,
}

/// One machine of a solved layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLayout {
    pub nodenum: u32,
    /// Sorted by name.
    pub services: Vec<String>,
    pub hardwaretype: String,
    pub imagetype: String,
}

/// What to lay out when services are added to a running cluster.
#[derive(Debug, Clone, Copy)]
pub struct AddServicesRequest<'a> {
    pub template: &'a ClusterTemplate,
    /// The cluster's nodes as they are now.
    pub nodes: &'a [(NodeId, NodeLayout)],
    /// The services to add; none may already be in the cluster.
    pub new_services: &'a [String],
    pub catalog_services: &'a ServiceDefs,
}

/// Why no layout exists. All variants are client errors (HTTP 400) and not retryable: the same
/// request against the same catalog fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    #[error("cluster needs at least {min} machines, {requested} requested")]
    TooFewMachines { min: u32, requested: u32 },
    #[error("cluster allows at most {max} machines, {requested} requested")]
    TooManyMachines { max: u32, requested: u32 },
    #[error("service {0} does not exist")]
    UnknownService(String),
    #[error("service {0} is not compatible with the template")]
    IncompatibleService(String),
    #[error("hardware type {0} is not compatible with the template")]
    IncompatibleHardwaretype(String),
    #[error("image type {0} is not compatible with the template")]
    IncompatibleImagetype(String),
    #[error("service {service} requires {requires}, which is not in the cluster")]
    MissingDependency { service: String, requires: String },
    #[error("service {service} conflicts with {conflicts}")]
    ConflictingServices { service: String, conflicts: String },
    #[error("service dependencies form a cycle through {0}")]
    DependencyCycle(String),
    #[error("service {0} is already in the cluster")]
    ServiceAlreadyPresent(String),
    #[error("no services to add")]
    NoServices,
    #[error("no layout satisfies the constraints: {0}")]
    Unsatisfiable(String),
}

impl LayoutError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            LayoutError::TooFewMachines { .. } => "too_few_machines",
            LayoutError::TooManyMachines { .. } => "too_many_machines",
            LayoutError::UnknownService(_) => "unknown_service",
            LayoutError::IncompatibleService(_) => "incompatible_service",
            LayoutError::IncompatibleHardwaretype(_) => "incompatible_hardwaretype",
            LayoutError::IncompatibleImagetype(_) => "incompatible_imagetype",
            LayoutError::MissingDependency { .. } => "missing_dependency",
            LayoutError::ConflictingServices { .. } => "conflicting_services",
            LayoutError::DependencyCycle(_) => "dependency_cycle",
            LayoutError::ServiceAlreadyPresent(_) => "service_already_present",
            LayoutError::NoServices => "no_services",
            LayoutError::Unsatisfiable(_) => "unsatisfiable",
        }
    }
}

/// Lays out a new cluster of `num_machines` identical machines.
pub fn solve_layout(req: &LayoutRequest<'_>) -> Result<Vec<NodeLayout>, LayoutError> {
    let size = req.template.constraints.size;
    if req.num_machines < size.min {
        return Err(LayoutError::TooFewMachines {
            min: size.min,
            requested: req.num_machines,
        });
    }
    if req.num_machines > size.max {
        return Err(LayoutError::TooManyMachines {
            max: size.max,
            requested: req.num_machines,
        });
    }
    let compatibility = &req.template.compatibility;
    if !allows(&compatibility.hardwaretypes, req.hardwaretype) {
        return Err(LayoutError::IncompatibleHardwaretype(
            req.hardwaretype.to_string(),
        ));
    }
    if !allows(&compatibility.imagetypes, req.imagetype) {
        return Err(LayoutError::IncompatibleImagetype(
            req.imagetype.to_string(),
        ));
    }
    let requested = if req.services.is_empty() {
        &req.template.defaults.services
    } else {
        req.services
    };
    let services: BTreeSet<String> = requested.iter().cloned().collect();
    check_services(req.template, req.catalog_services, &services, &services)?;

    let mut nodes: Vec<Slot> = (0..req.num_machines)
        .map(|_| Slot {
            services: BTreeSet::new(),
            hardwaretype: req.hardwaretype.to_string(),
            imagetype: req.imagetype.to_string(),
        })
        .collect();
    place(req.template, &mut nodes, &services, &services)?;
    Ok(nodes
        .into_iter()
        .zip(FIRST_NODENUM..)
        .map(|(slot, nodenum)| NodeLayout {
            nodenum,
            services: slot.services.into_iter().collect(),
            hardwaretype: slot.hardwaretype,
            imagetype: slot.imagetype,
        })
        .collect())
}

/// Decides which existing nodes get which of the services being added (`ADD_SERVICES`). Returns
/// only the nodes that get at least one new service, with the new services (sorted) per node,
/// in the order of `req.nodes`. Every node that can take a new service gets it, within the
/// template's quantity and coexistence constraints.
pub fn solve_added_services(
    req: &AddServicesRequest<'_>,
) -> Result<Vec<(NodeId, Vec<String>)>, LayoutError> {
    let new_services: BTreeSet<String> = req.new_services.iter().cloned().collect();
    if new_services.is_empty() {
        return Err(LayoutError::NoServices);
    }
    let existing: BTreeSet<String> = req
        .nodes
        .iter()
        .flat_map(|(_, node)| node.services.iter().cloned())
        .collect();
    if let Some(present) = new_services.intersection(&existing).next() {
        return Err(LayoutError::ServiceAlreadyPresent(present.clone()));
    }
    let all: BTreeSet<String> = existing.union(&new_services).cloned().collect();
    check_services(req.template, req.catalog_services, &new_services, &all)?;

    let mut nodes: Vec<Slot> = req
        .nodes
        .iter()
        .map(|(_, node)| Slot {
            services: node.services.iter().cloned().collect(),
            hardwaretype: node.hardwaretype.clone(),
            imagetype: node.imagetype.clone(),
        })
        .collect();
    place(req.template, &mut nodes, &new_services, &all)?;
    Ok(req
        .nodes
        .iter()
        .zip(nodes)
        .filter_map(|((id, _), slot)| {
            let added: Vec<String> = slot.services.intersection(&new_services).cloned().collect();
            (!added.is_empty()).then(|| (id.clone(), added))
        })
        .collect())
}

/// A node being filled in.
struct Slot {
    services: BTreeSet<String>,
    hardwaretype: String,
    imagetype: String,
}

fn allows(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == value)
}

/// Whether `name` (a service or something a service `provides`) is satisfied by `cluster`.
fn satisfied(name: &str, cluster: &BTreeSet<String>, catalog: &ServiceDefs) -> bool {
    cluster.contains(name)
        || cluster.iter().any(|s| {
            catalog
                .get(s)
                .is_some_and(|svc| svc.dependencies.provides.iter().any(|p| p == name))
        })
}

/// Checks the services being introduced (`checked`) against the catalog and the template, and
/// the dependencies of every service in the resulting cluster (`cluster`).
fn check_services(
    template: &ClusterTemplate,
    catalog: &ServiceDefs,
    checked: &BTreeSet<String>,
    cluster: &BTreeSet<String>,
) -> Result<(), LayoutError> {
    for name in checked {
        if !catalog.contains_key(name) {
            return Err(LayoutError::UnknownService(name.clone()));
        }
        if !allows(&template.compatibility.services, name) {
            return Err(LayoutError::IncompatibleService(name.clone()));
        }
    }
    for name in cluster {
        // Existing services missing from the catalog (deleted since) cannot be checked.
        let Some(service) = catalog.get(name) else {
            continue;
        };
        let deps = &service.dependencies;
        for requires in deps.install.requires.iter().chain(&deps.runtime.requires) {
            if !satisfied(requires, cluster, catalog) {
                return Err(LayoutError::MissingDependency {
                    service: name.clone(),
                    requires: requires.clone(),
                });
            }
        }
        if let Some(conflict) = deps
            .conflicts
            .iter()
            .find(|c| *c != name && cluster.contains(*c))
        {
            return Err(LayoutError::ConflictingServices {
                service: name.clone(),
                conflicts: conflict.clone(),
            });
        }
    }
    if let Some(service) = find_cycle(cluster, catalog) {
        return Err(LayoutError::DependencyCycle(service));
    }
    Ok(())
}

/// Returns a service on a cycle of install or runtime `requires` edges, if there is one.
fn find_cycle(cluster: &BTreeSet<String>, catalog: &ServiceDefs) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        cluster: &BTreeSet<String>,
        catalog: &ServiceDefs,
        marks: &mut BTreeMap<String, Mark>,
    ) -> Option<String> {
        match marks.get(name) {
            Some(Mark::Visiting) => return Some(name.to_string()),
            Some(Mark::Done) => return None,
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        if let Some(service) = catalog.get(name) {
            let deps = &service.dependencies;
            for requires in deps.install.requires.iter().chain(&deps.runtime.requires) {
                if cluster.contains(requires) {
                    if let Some(found) = visit(requires, cluster, catalog, marks) {
                        return Some(found);
                    }
                }
            }
        }
        marks.insert(name.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    cluster
        .iter()
        .find_map(|name| visit(name, cluster, catalog, &mut marks))
}

/// The services that must go wherever `service` goes: its `mustcoexist` partners (transitively)
/// that are in the cluster, including `service` itself.
fn coexist_unit(
    template: &ClusterTemplate,
    service: &str,
    cluster: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut unit = BTreeSet::from([service.to_string()]);
    loop {
        let before = unit.len();
        for group in &template.constraints.layout.mustcoexist {
            if group.iter().any(|s| unit.contains(s)) {
                unit.extend(group.iter().filter(|s| cluster.contains(*s)).cloned());
            }
        }
        if unit.len() == before {
            return unit;
        }
    }
}

fn quantity_max(template: &ClusterTemplate, service: &str) -> u32 {
    template
        .constraints
        .services
        .get(service)
        .map_or(u32::MAX, |c| c.quantities.max)
}

fn quantity_min(template: &ClusterTemplate, service: &str) -> u32 {
    template
        .constraints
        .services
        .get(service)
        .map_or(0, |c| c.quantities.min)
}

fn count(nodes: &[Slot], service: &str) -> u32 {
    nodes
        .iter()
        .filter(|n| n.services.contains(service))
        .count() as u32
}

/// Whether `unit` can be added to `nodes[index]` without breaking a constraint.
fn can_take(
    template: &ClusterTemplate,
    nodes: &[Slot],
    index: usize,
    unit: &BTreeSet<String>,
) -> bool {
    let node = &nodes[index];
    let after: BTreeSet<&String> = node.services.iter().chain(unit).collect();
    for service in unit.iter().filter(|s| !node.services.contains(*s)) {
        if let Some(c) = template.constraints.services.get(service) {
            if !allows(&c.hardwaretypes, &node.hardwaretype)
                || !allows(&c.imagetypes, &node.imagetype)
            {
                return false;
            }
        }
        // Counting is linear in the nodes; skip it for services with no maximum, so laying
        // out a large cluster stays linear rather than quadratic.
        let max = quantity_max(template, service);
        if max != u32::MAX && count(nodes, service) >= max {
            return false;
        }
    }
    template
        .constraints
        .layout
        .cantcoexist
        .iter()
        .all(|group| group.iter().filter(|s| after.contains(s)).count() < 2)
}

fn place(
    template: &ClusterTemplate,
    nodes: &mut [Slot],
    new_services: &BTreeSet<String>,
    cluster: &BTreeSet<String>,
) -> Result<(), LayoutError> {
    let mut order: Vec<&String> = new_services.iter().collect();
    order.sort_by_key(|s| (quantity_max(template, s), s.as_str()));

    // Minimum pass: every service gets its required instances, first fit.
    for service in &order {
        let wanted = quantity_min(template, service).max(1);
        let unit = coexist_unit(template, service, cluster);
        let mut placed = count(nodes, service);
        for index in 0..nodes.len() {
            if placed >= wanted {
                break;
            }
            if !nodes[index].services.contains(*service) && can_take(template, nodes, index, &unit)
            {
                nodes[index].services.extend(unit.iter().cloned());
                placed += 1;
            }
        }
    }
    // Spread pass: every further node that can take a service gets it.
    for service in &order {
        let unit = coexist_unit(template, service, cluster);
        for index in 0..nodes.len() {
            if !nodes[index].services.contains(*service) && can_take(template, nodes, index, &unit)
            {
                nodes[index].services.extend(unit.iter().cloned());
            }
        }
    }
    verify(template, nodes, new_services, cluster)
}

/// Checks the constraints that involve the services just placed.
fn verify(
    template: &ClusterTemplate,
    nodes: &[Slot],
    new_services: &BTreeSet<String>,
    cluster: &BTreeSet<String>,
) -> Result<(), LayoutError> {
    for service in new_services {
        let placed = count(nodes, service);
        let min = quantity_min(template, service).max(1);
        let max = quantity_max(template, service);
        if placed < min || placed > max {
            return Err(LayoutError::Unsatisfiable(format!(
                "service {service} placed on {placed} nodes, needs between {min} and {max}"
            )));
        }
    }
    let involves_new = |group: &Vec<String>| group.iter().any(|s| new_services.contains(s));
    for group in template
        .constraints
        .layout
        .cantcoexist
        .iter()
        .filter(|g| involves_new(g))
    {
        for node in nodes {
            let together: Vec<&String> = group
                .iter()
                .filter(|s| node.services.contains(*s))
                .collect();
            if together.len() >= 2 {
                return Err(LayoutError::Unsatisfiable(format!(
                    "services {together:?} cannot coexist"
                )));
            }
        }
    }
    for group in template
        .constraints
        .layout
        .mustcoexist
        .iter()
        .filter(|g| involves_new(g))
    {
        let in_cluster: BTreeSet<&String> = group.iter().filter(|s| cluster.contains(*s)).collect();
        for node in nodes {
            let here: BTreeSet<&String> = in_cluster
                .iter()
                .copied()
                .filter(|s| node.services.contains(*s))
                .collect();
            if !here.is_empty() && here != in_cluster {
                return Err(LayoutError::Unsatisfiable(format!(
                    "services {in_cluster:?} must coexist"
                )));
            }
        }
    }
    Ok(())
}
