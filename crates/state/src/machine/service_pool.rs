//! Shares identical service definitions, cluster templates and providers between cluster
//! records.
//!
//! Every cluster keeps the service definitions its last operation planned with
//! ([`super::ClusterRecord::service_defs`]) and the template it was built from
//! ([`coopr_types::Cluster::cluster_template`]), and a tenant's clusters mostly share them:
//! kept as one allocation per distinct definition, a one-machine `lamp` cluster's state shrinks
//! by about a third for the services and a fifth for the template (`coopr-bench scale`). The
//! pool holds weak references only, so a definition no cluster uses any more is freed; it is
//! derived data, rebuilt as records are loaded. A record's map of definitions is shared too:
//! clusters planned with the same definitions hold one map ([`ServicePool::intern_defs`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use coopr_types::{ClusterTemplate, Provider, Service, ServiceDefs};
use serde::Serialize;

/// Interns between two sweeps of a pool for entries no record uses any more (a dead entry
/// still holds its allocation through the weak reference).
const SWEEP_EVERY: u32 = 1024;

#[derive(Debug, Clone, Default)]
pub struct ServicePool {
    services: Interned<Service>,
    templates: Interned<ClusterTemplate>,
    providers: Interned<Provider>,
    /// Maps of interned definitions, by a hash of their names and definitions' addresses.
    maps: WeakPool<u64, ServiceDefs>,
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

    /// The pool's allocation of a map equal to `defs` (each definition interned first), or
    /// `defs` in a new one (then pooled). Equal definitions being one allocation once interned,
    /// two maps are equal when their names and their definitions' addresses are.
    pub fn intern_defs(&mut self, defs: ServiceDefs) -> Arc<ServiceDefs> {
        let defs = self.intern_all(defs);
        let mut hasher = DefaultHasher::new();
        for (name, service) in &defs {
            name.hash(&mut hasher);
            Arc::as_ptr(service).hash(&mut hasher);
        }
        self.maps.tick();
        let equal = |pooled: &ServiceDefs, defs: &ServiceDefs| {
            pooled.len() == defs.len()
                && pooled
                    .iter()
                    .zip(defs)
                    .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
        };
        self.maps
            .find_or_pool(hasher.finish(), Arc::new(defs), equal)
    }

    /// The pool's allocation of a template equal to `template`, or `template` itself (then
    /// pooled).
    pub fn intern_template(&mut self, template: Arc<ClusterTemplate>) -> Arc<ClusterTemplate> {
        let name = template.name.clone();
        self.templates.intern(name, template)
    }

    /// The pool's allocation of a provider equal to `provider`, or `provider` itself (then
    /// pooled).
    pub fn intern_provider(&mut self, provider: Arc<Provider>) -> Arc<Provider> {
        let name = provider.name.clone();
        self.providers.intern(name, provider)
    }

    /// Pooled entries, dead ones included (for tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.services.entries() + self.templates.entries() + self.providers.entries()
    }
}

/// Weak references to shared values, by a key that equal values share (values of one key are
/// compared). Every [`SWEEP_EVERY`] ticks, the entries no record uses any more are dropped.
#[derive(Debug, Clone)]
struct WeakPool<K, T> {
    by_key: BTreeMap<K, Vec<Weak<T>>>,
    ticks: u32,
}

impl<K, T> Default for WeakPool<K, T> {
    fn default() -> Self {
        WeakPool {
            by_key: BTreeMap::new(),
            ticks: 0,
        }
    }
}

impl<K: Ord, T> WeakPool<K, T> {
    /// Counts one intern; whether the pool was swept of unused entries now.
    fn tick(&mut self) -> bool {
        self.ticks += 1;
        if self.ticks < SWEEP_EVERY {
            return false;
        }
        self.ticks = 0;
        self.by_key.retain(|_, same| {
            same.retain(|w| w.strong_count() > 0);
            !same.is_empty()
        });
        true
    }

    /// The pooled value of `key` that `equal` finds equal to `value`, or `value` (then pooled).
    fn find_or_pool(&mut self, key: K, value: Arc<T>, equal: impl Fn(&T, &T) -> bool) -> Arc<T> {
        let same = self.by_key.entry(key).or_default();
        same.retain(|w| w.strong_count() > 0);
        if let Some(pooled) = same
            .iter()
            .filter_map(Weak::upgrade)
            .find(|pooled| equal(pooled, &value))
        {
            return pooled;
        }
        same.push(Arc::downgrade(&value));
        value
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }
}

/// Weak references to shared values, by name and a hash of their JSON: a lookup compares with
/// the values of equal content only, however many tenants use the same name. The value last
/// interned under each name is tried first, by comparison alone (no JSON): a restore or a
/// takeover interns the same few definitions for every cluster of a tenant.
#[derive(Debug, Clone)]
struct Interned<T> {
    by_content: WeakPool<(String, u64), T>,
    last: BTreeMap<String, Weak<T>>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            by_content: WeakPool::default(),
            last: BTreeMap::new(),
        }
    }
}

impl<T: Serialize + PartialEq> Interned<T> {
    fn intern(&mut self, name: String, value: Arc<T>) -> Arc<T> {
        if self.by_content.tick() {
            self.last.retain(|_, w| w.strong_count() > 0);
        }
        if let Some(last) = self.last.get(&name).and_then(Weak::upgrade) {
            if Arc::ptr_eq(&last, &value) || *last == *value {
                return last;
            }
        }
        let mut hasher = DefaultHasher::new();
        serde_json::to_vec(&*value)
            .unwrap_or_default()
            .hash(&mut hasher);
        let pooled =
            self.by_content
                .find_or_pool((name.clone(), hasher.finish()), value, |a, b| a == b);
        self.last.insert(name, Arc::downgrade(&pooled));
        pooled
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.by_content.entries()
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
    fn equal_maps_of_definitions_share_one_allocation() {
        let mut pool = ServicePool::default();
        let defs = |versions: [u32; 2]| -> ServiceDefs {
            [("base", versions[0]), ("redis", versions[1])]
                .into_iter()
                .map(|(name, version)| (name.to_string(), service(name, version)))
                .collect()
        };
        let first = pool.intern_defs(defs([1, 1]));
        let again = pool.intern_defs(defs([1, 1]));
        assert!(Arc::ptr_eq(&first, &again));
        // One definition differs: another map, sharing the equal definition.
        let other = pool.intern_defs(defs([1, 2]));
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(Arc::ptr_eq(&first["base"], &other["base"]));
        assert!(!Arc::ptr_eq(&first["redis"], &other["redis"]));
        // Fewer names: another map.
        let mut fewer = defs([1, 1]);
        fewer.remove("redis");
        assert_eq!(pool.intern_defs(fewer).len(), 1);
        // Once no record holds a map, an equal one is pooled anew.
        drop((first, again));
        let anew = pool.intern_defs(defs([1, 1]));
        assert_eq!(*anew, defs([1, 1]));
        assert!(Arc::ptr_eq(&anew["base"], &other["base"]));
    }

    #[test]
    fn the_last_definition_of_a_name_is_found_by_comparison_and_others_by_content() {
        let mut pool = ServicePool::default();
        let one = pool.intern(service("base", 1));
        let two = pool.intern(service("base", 2));
        // Not the last one interned under its name: found through its content's hash.
        assert!(Arc::ptr_eq(&pool.intern(service("base", 1)), &one));
        assert!(Arc::ptr_eq(&pool.intern(service("base", 2)), &two));
        assert!(Arc::ptr_eq(&pool.intern(service("base", 2)), &two));
        assert_eq!(pool.entries(), 2);
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
