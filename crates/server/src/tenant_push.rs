//! Coopr's tenant push: the server tells each provisioner how many workers to run for which
//! tenant and which of its plugin resources are live (`PUT {provisioner}/v2/tenants/{tenantId}`
//! with `{"workers": n, "resources": {...}}`, `DELETE` when it should run none), as Coopr's
//! `TenantProvisionerService` does; Coopr's Ruby provisioner starts workers only when told, and
//! fetches the live resources it is told of (`GET /v2/tenants/{id}/{kind}/{plugin}/{type}/
//! {name}/versions/{v}`) before it does. coopr's own provisioner pulls tasks without it.
//!
//! ```text
//!   DC leader, every driver tick:
//!     assignments(provisioners registered in this DC, tenants with workers > 0)
//!       each tenant's workers fill the provisioners in id order up to their capacity
//!     for each (provisioner, tenant) whose body (count, live resources) differs from what
//!     was last pushed:
//!       PUT (count > 0) or DELETE (count = 0); remembered once the provisioner answered 2xx
//! ```
//!
//! A resource sync (`POST /v2/plugins/sync`) changes the live resources, so the next tick
//! pushes the tenant again, as Coopr pushes after a sync.
//!
//! Workers are per DC: each DC's leader assigns a tenant's `workers` over the provisioners
//! registered with that DC. Workers that fit nowhere are counted in
//! `coopr_tenant_workers_unplaced` (Coopr refuses such a tenant write; here the tenant is
//! global and capacity is per DC, so it is reported instead). What was pushed is kept in
//! memory: a new leader pushes everything again (a push is idempotent).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use coopr_raft::Call;
use coopr_state::resources::{live_resources, PLUGIN_TYPES_TENANT};
use coopr_state::ProvisionerInfo;
use serde_json::Value;

use crate::App;

/// Bound of one push.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many workers each provisioner runs for each tenant: `(provisioner id, tenant id) ->
/// workers`, only non-zero entries; and the workers that fit nowhere.
pub fn assignments<'a>(
    provisioners: impl IntoIterator<Item = &'a ProvisionerInfo>,
    tenants: impl IntoIterator<Item = (&'a str, u32)>,
) -> (BTreeMap<(String, String), u32>, u64) {
    let mut free: Vec<(&ProvisionerInfo, u32)> = provisioners
        .into_iter()
        .map(|p| (p, p.capacity_total))
        .collect();
    free.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let mut tenants: Vec<(&str, u32)> = tenants.into_iter().filter(|(_, w)| *w > 0).collect();
    tenants.sort();
    let mut assigned = BTreeMap::new();
    let mut unplaced = 0u64;
    for (tenant, workers) in tenants {
        let mut left = workers;
        for (provisioner, capacity) in free.iter_mut() {
            if left == 0 {
                break;
            }
            let take = left.min(*capacity);
            if take > 0 {
                *capacity -= take;
                left -= take;
                assigned.insert((provisioner.id.clone(), tenant.to_string()), take);
            }
        }
        unplaced += u64::from(left);
    }
    (assigned, unplaced)
}

/// What this node pushed (leader only) and which pushes failed last time.
#[derive(Default)]
pub struct Pushed {
    /// The body last accepted, per (provisioner, tenant) with workers.
    bodies: BTreeMap<(String, String), Value>,
    failing: BTreeSet<(String, String)>,
}

/// Pushes what changed since the last tick (see the module doc).
pub async fn push(app: &App) {
    let (provisioners, wanted, unplaced) = {
        let state = app.core.read();
        let provisioners: BTreeMap<String, ProvisionerInfo> = state.local.provisioners.clone();
        let global = app.global(&state);
        let tenants: Vec<(String, u32)> = global
            .tenants
            .values()
            .map(|t| (t.id.clone(), t.workers))
            .collect();
        let (counts, unplaced) = assignments(
            provisioners.values(),
            tenants.iter().map(|(id, w)| (id.as_str(), *w)),
        );
        // Each tenant's live resources, once per tenant that has workers somewhere.
        let plugins = global.catalogs.get(PLUGIN_TYPES_TENANT);
        let mut resources: BTreeMap<&str, Value> = BTreeMap::new();
        for t in global.tenants.values().filter(|t| t.workers > 0) {
            resources.insert(
                t.id.as_str(),
                live_resources(plugins, global.catalogs.get(&t.name)),
            );
        }
        let wanted: BTreeMap<(String, String), Value> = counts
            .into_iter()
            .map(|(key, workers)| {
                let live = resources.get(key.1.as_str()).cloned().unwrap_or_default();
                (
                    key,
                    serde_json::json!({"workers": workers, "resources": live}),
                )
            })
            .collect();
        (provisioners, wanted, unplaced)
    };
    metrics::gauge!("coopr_tenant_workers_unplaced").set(unplaced as f64);
    // (key, the body to PUT; `None`: DELETE)
    let changes: Vec<((String, String), Option<Value>)> = {
        let pushed = app.pushed.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: BTreeSet<&(String, String)> = wanted.keys().collect();
        keys.extend(pushed.bodies.keys());
        keys.into_iter()
            .filter(|key| wanted.get(*key) != pushed.bodies.get(*key))
            .map(|key| (key.clone(), wanted.get(key).cloned()))
            .collect()
    };
    for ((provisioner, tenant), body) in changes {
        let Some(info) = provisioners.get(&provisioner) else {
            // The provisioner is gone: nothing to tell it.
            let mut pushed = app.pushed.lock().unwrap_or_else(|e| e.into_inner());
            pushed.bodies.remove(&(provisioner, tenant));
            continue;
        };
        let url = format!("http://{}:{}/v2/tenants/{tenant}", info.host, info.port);
        let workers = body
            .as_ref()
            .map_or(0, |b| b["workers"].as_u64().unwrap_or(0));
        let call = match &body {
            Some(body) => Call::json(&url, body).method_put(),
            None => Call::delete(&url),
        }
        .timeout(PUSH_TIMEOUT);
        let key = (provisioner.clone(), tenant.clone());
        let ok = match app.transport.call(call).await {
            Ok(answer) if answer.status.is_success() => true,
            Ok(answer) => {
                failed(app, &key, &format!("answered {}", answer.status));
                false
            }
            Err(e) => {
                failed(app, &key, &e.to_string());
                false
            }
        };
        if ok {
            let mut pushed = app.pushed.lock().unwrap_or_else(|e| e.into_inner());
            match body {
                Some(body) => pushed.bodies.insert(key.clone(), body),
                None => pushed.bodies.remove(&key),
            };
            if pushed.failing.remove(&key) {
                tracing::info!(%provisioner, %tenant, "tenant push accepted again");
            }
            tracing::info!(%provisioner, %tenant, workers, "tenant workers pushed to the provisioner");
        }
    }
}

/// Counts a failed push; logs the first of a series.
fn failed(app: &App, key: &(String, String), why: &str) {
    metrics::counter!("coopr_tenant_push_failures_total").increment(1);
    let mut pushed = app.pushed.lock().unwrap_or_else(|e| e.into_inner());
    if pushed.failing.insert(key.clone()) {
        tracing::warn!(provisioner = %key.0, tenant = %key.1, why, "tenant push failed; retrying every tick");
    }
}

/// Forgets what was pushed (this node no longer leads: the next leader pushes again).
pub fn forget(app: &App) {
    *app.pushed.lock().unwrap_or_else(|e| e.into_inner()) = Pushed::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioner(id: &str, capacity: u32) -> ProvisionerInfo {
        ProvisionerInfo {
            id: id.into(),
            host: "h".into(),
            port: 1,
            capacity_total: capacity,
        }
    }

    #[test]
    fn workers_fill_provisioners_in_order_up_to_their_capacity() {
        let provisioners = [provisioner("p2", 3), provisioner("p1", 2)];
        let (assigned, unplaced) = assignments(&provisioners, [("t1", 4), ("t2", 2), ("t0", 0)]);
        let expected: BTreeMap<(String, String), u32> = [
            (("p1".to_string(), "t1".to_string()), 2),
            (("p2".to_string(), "t1".to_string()), 2),
            (("p2".to_string(), "t2".to_string()), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(assigned, expected);
        assert_eq!(unplaced, 1, "t2's second worker fits nowhere");
        let (none, unplaced) = assignments(&[], [("t1", 3)]);
        assert!(none.is_empty());
        assert_eq!(unplaced, 3);
    }
}
