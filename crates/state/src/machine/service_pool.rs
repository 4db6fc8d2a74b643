//! Shares identical service definitions and cluster templates between cluster records.
//!
//! Every cluster keeps the service definitions its last operation planned with
//! ([`super::ClusterRecord::service_defs`]) and the template it was built from
//! ([`coopr_types::Cluster::cluster_template`]), and a tenant's clusters mostly share them:
//! kept as one allocation per distinct definition, a one-machine `lamp` cluster's state shrinks
//! by about a third for the services and a fifth for the template (`coopr-bench scale`). The
//! pool holds weak references only, so a definition no cluster uses any more is freed; it is
//! derived data, rebuilt as records are loaded.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use coopr_types::{ClusterTemplate, Service, ServiceDefs};
use serde::Serialize;

/// Interns between two sweeps of a pool for entries no record uses any more (a dead entry
/// still holds its allocation through the weak reference).
const SWEEP_EVERY: u32 = 1024;

#[derive(Debug, Clone, Default)]
pub struct ServicePool {
    services: Interned<Service>,
    templates: Interned<ClusterTemplate>,
}

impl ServicePool {
    /// The pool's allocation of a definition equal to `service`, or `service` itself (then
    /// pooled).
    pub fn intern(&mut self, service: Arc<Service>) -> Arc<Service> {
        let name = service.name.clone();
        self.services.intern(name, service)
    }

    /// Every definition of `defs` interned.
    pub fn intern_all(&mut self, defs: ServiceDefs) -> ServiceDefs {
        defs.into_iter()
            .map(|(name, service)| (name, self.intern(service)))
            .collect()
    }

    /// The pool's allocation of a template equal to `template`, or `template` itself (then
    /// pooled).
    pub fn intern_template(&mut self, template: Arc<ClusterTemplate>) -> Arc<ClusterTemplate> {
        let name = template.name.clone();
        self.templates.intern(name, template)
    }

    /// Pooled entries, dead ones included (for tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.services.entries() + self.templates.entries()
    }
}

/// Weak references to shared values, by name and a hash of their JSON: a lookup compares with
/// the values of equal content only, however many tenants use the same name.
#[derive(Debug, Clone)]
struct Interned<T> {
    by_content: BTreeMap<(String, u64), Vec<Weak<T>>>,
    interns: u32,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            by_content: BTreeMap::new(),
            interns: 0,
        }
    }
}

impl<T: Serialize + PartialEq> Interned<T> {
    fn intern(&mut self, name: String, value: Arc<T>) -> Arc<T> {
        self.interns += 1;
        if self.interns >= SWEEP_EVERY {
            self.interns = 0;
            self.by_content.retain(|_, same| {
                same.retain(|w| w.strong_count() > 0);
                !same.is_empty()
            });
        }
        let mut hasher = DefaultHasher::new();
        serde_json::to_vec(&*value)
            .unwrap_or_default()
            .hash(&mut hasher);
        let same = self.by_content.entry((name, hasher.finish())).or_default();
        same.retain(|w| w.strong_count() > 0);
        if let Some(pooled) = same
            .iter()
            .filter_map(Weak::upgrade)
            .find(|pooled| **pooled == *value)
        {
            return pooled;
        }
        same.push(Arc::downgrade(&value));
        value
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.by_content.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, version: u32) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            version,
            ..Service::default()
        })
    }

    #[test]
    fn equal_definitions_share_one_allocation_and_unused_ones_are_freed() {
        let mut pool = ServicePool::default();
        let first = pool.intern(service("base", 1));
        let again = pool.intern(service("base", 1));
        assert!(Arc::ptr_eq(&first, &again));
        let other = pool.intern(service("base", 2));
        assert!(!Arc::ptr_eq(&first, &other));
        drop((first, again));
        assert_eq!(pool.entries(), 2);
        // Dead entries go at the next sweep.
        let kept: Vec<Arc<Service>> = (0..SWEEP_EVERY)
            .map(|_| pool.intern(service("base", 2)))
            .collect();
        assert_eq!(pool.entries(), 1);
        assert!(kept.iter().all(|s| Arc::ptr_eq(s, &other)));
    }

    #[test]
    fn equal_templates_share_one_allocation_and_differ_from_services_of_their_name() {
        let template = |version: u32| {
            Arc::new(ClusterTemplate {
                name: "base".into(),
                version,
                ..ClusterTemplate::default()
            })
        };
        let mut pool = ServicePool::default();
        let first = pool.intern_template(template(1));
        let again = pool.intern_template(template(1));
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &pool.intern_template(template(2))));
        // A service of the same name is pooled apart.
        pool.intern(service("base", 1));
        assert_eq!(pool.entries(), 3);
    }
}
