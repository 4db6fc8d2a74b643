//! Shares identical service definitions between cluster records.
//!
//! Every cluster keeps the service definitions its last operation planned with
//! ([`super::ClusterRecord::service_defs`]), and a tenant's clusters mostly share them: kept as
//! one allocation per distinct definition, a one-machine `lamp` cluster's state shrinks by
//! about a third (`coopr-bench scale`). The pool holds weak references only, so a definition
//! no cluster uses any more is freed; it is derived data, rebuilt as records are loaded.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use coopr_types::{Service, ServiceDefs};

#[derive(Debug, Clone, Default)]
pub struct ServicePool {
    by_name: BTreeMap<String, Vec<Weak<Service>>>,
}

impl ServicePool {
    /// The pool's allocation of a definition equal to `service`, or `service` itself (then
    /// pooled).
    pub fn intern(&mut self, service: Arc<Service>) -> Arc<Service> {
        let same_name = self.by_name.entry(service.name.clone()).or_default();
        same_name.retain(|w| w.strong_count() > 0);
        if let Some(pooled) = same_name
            .iter()
            .filter_map(Weak::upgrade)
            .find(|pooled| **pooled == *service)
        {
            return pooled;
        }
        same_name.push(Arc::downgrade(&service));
        service
    }

    /// Every definition of `defs` interned.
    pub fn intern_all(&mut self, defs: ServiceDefs) -> ServiceDefs {
        defs.into_iter()
            .map(|(name, service)| (name, self.intern(service)))
            .collect()
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
        // The dead entry is dropped on the next intern of that name.
        let _third = pool.intern(service("base", 3));
        assert_eq!(pool.by_name["base"].len(), 2);
    }
}
