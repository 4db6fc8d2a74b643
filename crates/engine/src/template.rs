//! Template resolution: a cluster template that `extends` another and `includes` partial
//! templates becomes one flat template, merged as Coopr's `TemplateMerger` does.
//!
//! ```text
//!  extends chain, oldest first:   [base.includes.., base, ..., t.includes.., t]
//!                                   │ each merged over the result so far:
//!  partial template   ── defaults (services: union; provider, types, dnsSuffix: the later
//!                        non-empty one; config: key by key, a key an immutable partial set
//!                        can no longer change), compatibility (unions)
//!  cluster template   ── the same, plus constraints (service constraints by name, layout
//!                        unions, size: the later one) and administration (the later one)
//! ```
//!
//! Sections left empty by a template do not change the result. The result keeps the given
//! template's name, label, description, icon, version, `extends` and `includes`. Coopr walked
//! the `extends` chain without a bound; here a chain longer than [`MAX_TEMPLATE_DEPTH`] or one
//! that returns to a template already in it is refused.

use std::collections::BTreeSet;

use coopr_types::{
    ClusterTemplate, Compatibility, Constraints, JsonMap, PartialTemplate, TemplateDefaults,
};
use thiserror::Error;

/// Longest `extends` chain (the template itself included).
pub const MAX_TEMPLATE_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("{kind} template {name} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("config key {key} can't be overridden: an immutable partial template set it")]
    Immutable { key: String },
    #[error("template {name} extends itself through its chain of parents")]
    Cycle { name: String },
    #[error("the extends chain of template {name} is longer than {MAX_TEMPLATE_DEPTH}")]
    TooDeep { name: String },
    #[error("{0}")]
    Invalid(String),
}

impl TemplateError {
    /// The stable code an API error carries.
    pub fn code(&self) -> &'static str {
        match self {
            TemplateError::NotFound { .. } => "template_not_found",
            TemplateError::Immutable { .. } => "template_immutable",
            TemplateError::Cycle { .. } => "template_cycle",
            TemplateError::TooDeep { .. } => "template_too_deep",
            TemplateError::Invalid(_) => "invalid_template",
        }
    }
}

/// Where resolution finds the templates a template names (the tenant's catalog).
pub trait TemplateSource {
    fn cluster_template(&self, name: &str) -> Option<ClusterTemplate>;
    fn partial_template(&self, name: &str) -> Option<PartialTemplate>;
}

/// One template to merge, in order.
enum Layer {
    Partial(PartialTemplate),
    Full(ClusterTemplate),
}

/// The template with its parents and partial templates merged in. A template that names
/// neither comes back with only the sections it sets, like any other.
pub fn resolve(
    template: &ClusterTemplate,
    source: &impl TemplateSource,
) -> Result<ClusterTemplate, TemplateError> {
    let layers = merge_order(template, source)?;
    let mut to = ClusterTemplate {
        name: template.name.clone(),
        label: template.label.clone(),
        description: template.description.clone(),
        icon: template.icon.clone(),
        version: template.version,
        extends: template.extends.clone(),
        includes: template.includes.clone(),
        ..ClusterTemplate::default()
    };
    let mut immutables = BTreeSet::new();
    for layer in layers {
        match layer {
            Layer::Partial(from) => merge_main(
                &mut to,
                &from.defaults,
                &from.compatibility,
                &mut immutables,
                from.immutable,
            )?,
            Layer::Full(from) => {
                merge_main(
                    &mut to,
                    &from.defaults,
                    &from.compatibility,
                    &mut immutables,
                    false,
                )?;
                merge_constraints(&mut to.constraints, &from.constraints);
                if from.administration != Default::default() {
                    to.administration = from.administration;
                }
            }
        }
    }
    Ok(to)
}

/// Coopr's checks of a resolved template: default services and a default provider are set,
/// and the DNS suffix is a DNS name.
pub fn validate_resolved(template: &ClusterTemplate) -> Result<(), TemplateError> {
    let defaults = &template.defaults;
    if defaults.services.is_empty() {
        return Err(TemplateError::Invalid(
            "default services must be specified".into(),
        ));
    }
    if defaults.provider.is_empty() {
        return Err(TemplateError::Invalid(
            "default provider must be specified".into(),
        ));
    }
    if !defaults.dns_suffix.is_empty() && !is_dns_suffix(&defaults.dns_suffix) {
        return Err(TemplateError::Invalid(format!(
            "{} is an invalid DNS suffix",
            defaults.dns_suffix
        )));
    }
    Ok(())
}

fn is_dns_suffix(suffix: &str) -> bool {
    suffix.len() <= 253
        && suffix.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Parent's layers first (recursively), then this template's partials, then itself; a
/// template or partial already in the order is not added again (Coopr's ordered set).
fn merge_order(
    template: &ClusterTemplate,
    source: &impl TemplateSource,
) -> Result<Vec<Layer>, TemplateError> {
    let mut chain = vec![template.clone()];
    let mut names = BTreeSet::from([template.name.clone()]);
    while let Some(parent) = chain.last().and_then(|t| t.extends.clone()) {
        if !names.insert(parent.name.clone()) {
            return Err(TemplateError::Cycle {
                name: template.name.clone(),
            });
        }
        if chain.len() >= MAX_TEMPLATE_DEPTH {
            return Err(TemplateError::TooDeep {
                name: template.name.clone(),
            });
        }
        let found = source
            .cluster_template(&parent.name)
            .ok_or(TemplateError::NotFound {
                kind: "parent",
                name: parent.name.clone(),
            })?;
        chain.push(found);
    }
    let mut layers = Vec::new();
    let mut partials_seen = BTreeSet::new();
    for t in chain.into_iter().rev() {
        for include in &t.includes {
            let partial =
                source
                    .partial_template(&include.name)
                    .ok_or(TemplateError::NotFound {
                        kind: "partial",
                        name: include.name.clone(),
                    })?;
            if partials_seen.insert(include.name.clone()) {
                layers.push(Layer::Partial(partial));
            }
        }
        layers.push(Layer::Full(t));
    }
    Ok(layers)
}

fn union(to: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !to.contains(item) {
            to.push(item.clone());
        }
    }
}

fn union_sets(to: &mut Vec<Vec<String>>, from: &[Vec<String>]) {
    let key = |set: &Vec<String>| set.iter().cloned().collect::<BTreeSet<_>>();
    for set in from {
        if !to.iter().any(|t| key(t) == key(set)) {
            to.push(set.clone());
        }
    }
}

fn later(to: &mut String, from: &str) {
    if !from.trim().is_empty() {
        *to = from.to_string();
    }
}

fn merge_main(
    to: &mut ClusterTemplate,
    defaults: &TemplateDefaults,
    compatibility: &Compatibility,
    immutables: &mut BTreeSet<String>,
    immutable: bool,
) -> Result<(), TemplateError> {
    if *defaults != TemplateDefaults::default() {
        let d = &mut to.defaults;
        union(&mut d.services, &defaults.services);
        merge_config(&mut d.config, &defaults.config, immutables, immutable)?;
        later(&mut d.dns_suffix, &defaults.dns_suffix);
        later(&mut d.hardwaretype, &defaults.hardwaretype);
        later(&mut d.imagetype, &defaults.imagetype);
        later(&mut d.provider, &defaults.provider);
    }
    if *compatibility != Compatibility::default() {
        let c = &mut to.compatibility;
        union(&mut c.services, &compatibility.services);
        union(&mut c.hardwaretypes, &compatibility.hardwaretypes);
        union(&mut c.imagetypes, &compatibility.imagetypes);
    }
    Ok(())
}

fn merge_config(
    to: &mut JsonMap,
    from: &JsonMap,
    immutables: &mut BTreeSet<String>,
    immutable: bool,
) -> Result<(), TemplateError> {
    for (key, value) in from {
        if immutables.contains(key) {
            return Err(TemplateError::Immutable { key: key.clone() });
        }
        to.insert(key.clone(), value.clone());
        if immutable {
            immutables.insert(key.clone());
        }
    }
    Ok(())
}

fn merge_constraints(to: &mut Constraints, from: &Constraints) {
    if *from == Constraints::default() {
        return;
    }
    for (service, constraint) in &from.services {
        to.services.insert(service.clone(), constraint.clone());
    }
    union_sets(&mut to.layout.mustcoexist, &from.layout.mustcoexist);
    union_sets(&mut to.layout.cantcoexist, &from.layout.cantcoexist);
    to.size = from.size;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::{json, Value};

    #[derive(Default)]
    struct Catalog {
        templates: BTreeMap<String, Value>,
        partials: BTreeMap<String, Value>,
    }

    impl TemplateSource for Catalog {
        fn cluster_template(&self, name: &str) -> Option<ClusterTemplate> {
            serde_json::from_value(self.templates.get(name)?.clone()).ok()
        }
        fn partial_template(&self, name: &str) -> Option<PartialTemplate> {
            serde_json::from_value(self.partials.get(name)?.clone()).ok()
        }
    }

    fn template(v: Value) -> ClusterTemplate {
        serde_json::from_value(v).unwrap()
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.partials.insert(
            "sensu".into(),
            json!({"name": "sensu", "immutable": true,
                   "defaults": {"services": ["sensu-client"], "config": {"sensu": {"host": "m"}}},
                   "compatibility": {"services": ["sensu-client"]}}),
        );
        c.partials.insert(
            "ldap".into(),
            json!({"name": "ldap", "defaults": {"services": ["ldap"], "dnsSuffix": "corp.example",
                   "config": {"ldap": {"url": "ldap://a"}}}}),
        );
        c.templates.insert(
            "base".into(),
            json!({"name": "base", "includes": [{"name": "sensu"}],
                   "defaults": {"services": ["base"], "provider": "fake", "hardwaretype": "small",
                                "imagetype": "debian12", "config": {"ldap": {"url": "ldap://base"}}},
                   "compatibility": {"services": ["base"], "hardwaretypes": ["small"]},
                   "constraints": {"size": {"min": 1, "max": 10},
                                   "layout": {"cantcoexist": [["a", "b"]]}},
                   "administration": {"leaseduration": {"initial": 1000, "max": 5000, "step": 100}}}),
        );
        c
    }

    /// The merge order and each section's rule, on a child that extends a parent and
    /// includes a partial of its own.
    #[test]
    fn a_chain_merges_parent_includes_parent_includes_child() {
        let child = template(json!({
            "name": "web", "description": "d", "extends": {"name": "base"},
            "includes": [{"name": "ldap"}],
            "defaults": {"services": ["apache"], "hardwaretype": "large"},
            "compatibility": {"services": ["apache"], "hardwaretypes": ["large"]},
            "constraints": {"size": {"min": 2, "max": 4}, "layout": {"cantcoexist": [["b", "a"], ["c", "d"]]},
                            "services": {"apache": {"quantities": {"min": 1, "max": 2}}}}
        }));
        let r = resolve(&child, &catalog()).unwrap();
        assert_eq!(r.name, "web");
        assert_eq!(r.description, "d");
        assert_eq!(r.extends.as_ref().unwrap().name, "base");
        assert_eq!(
            r.defaults.services,
            ["sensu-client", "base", "ldap", "apache"]
        );
        assert_eq!(r.defaults.provider, "fake");
        assert_eq!(r.defaults.hardwaretype, "large");
        assert_eq!(r.defaults.imagetype, "debian12");
        assert_eq!(r.defaults.dns_suffix, "corp.example");
        // The partial (after the parent) set ldap's config last.
        assert_eq!(r.defaults.config["ldap"], json!({"url": "ldap://a"}));
        assert_eq!(r.defaults.config["sensu"], json!({"host": "m"}));
        assert_eq!(r.compatibility.services, ["sensu-client", "base", "apache"]);
        assert_eq!(r.compatibility.hardwaretypes, ["small", "large"]);
        assert_eq!(r.constraints.size.min, 2);
        assert_eq!(
            r.constraints.layout.cantcoexist,
            [vec!["a", "b"], vec!["c", "d"]]
        );
        assert_eq!(r.constraints.services["apache"].quantities.max, 2);
        // The child sets no administration: the parent's stays.
        assert_eq!(r.administration.leaseduration.max, 5000);
        validate_resolved(&r).unwrap();
    }

    #[test]
    fn an_immutable_partial_key_cannot_be_overridden() {
        let child = template(json!({"name": "t", "extends": {"name": "base"},
            "defaults": {"config": {"sensu": {"host": "other"}}}}));
        assert_eq!(
            resolve(&child, &catalog()),
            Err(TemplateError::Immutable {
                key: "sensu".into()
            })
        );
        // Other keys may change.
        let child = template(json!({"name": "t", "extends": {"name": "base"},
            "defaults": {"config": {"zk": {}}}}));
        assert!(resolve(&child, &catalog()).is_ok());
    }

    #[test]
    fn refused_chains() {
        let missing = template(json!({"name": "t", "includes": [{"name": "nope"}]}));
        let e = resolve(&missing, &catalog()).unwrap_err();
        assert_eq!(e.code(), "template_not_found");
        let orphan = template(json!({"name": "t", "extends": {"name": "nope"}}));
        assert_eq!(
            resolve(&orphan, &catalog()).unwrap_err().code(),
            "template_not_found"
        );

        let mut c = catalog();
        c.templates
            .insert("a".into(), json!({"name": "a", "extends": {"name": "b"}}));
        c.templates
            .insert("b".into(), json!({"name": "b", "extends": {"name": "a"}}));
        let a = c.cluster_template("a").unwrap();
        assert_eq!(resolve(&a, &c).unwrap_err().code(), "template_cycle");

        let mut c = catalog();
        for i in 0..MAX_TEMPLATE_DEPTH {
            c.templates.insert(
                format!("t{i}"),
                json!({"name": format!("t{i}"), "extends": {"name": format!("t{}", i + 1)}}),
            );
        }
        c.templates.insert(
            format!("t{MAX_TEMPLATE_DEPTH}"),
            json!({"name": format!("t{MAX_TEMPLATE_DEPTH}")}),
        );
        // A chain of exactly MAX_TEMPLATE_DEPTH templates resolves; one more does not.
        let at_limit = c.cluster_template("t1").unwrap();
        assert!(resolve(&at_limit, &c).is_ok());
        let over = c.cluster_template("t0").unwrap();
        assert_eq!(resolve(&over, &c).unwrap_err().code(), "template_too_deep");
    }

    #[test]
    fn validation_of_a_resolved_template() {
        let bare = resolve(&template(json!({"name": "t"})), &catalog()).unwrap();
        assert_eq!(
            validate_resolved(&bare).unwrap_err().code(),
            "invalid_template"
        );
        let no_provider = template(json!({"name": "t", "defaults": {"services": ["a"]}}));
        assert!(validate_resolved(&resolve(&no_provider, &catalog()).unwrap()).is_err());
        let bad_dns = template(json!({"name": "t", "defaults": {"services": ["a"],
            "provider": "p", "dnsSuffix": "-x..y"}}));
        assert!(validate_resolved(&resolve(&bad_dns, &catalog()).unwrap()).is_err());
    }
}
