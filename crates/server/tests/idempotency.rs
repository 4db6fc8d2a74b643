//! `Idempotency-Key` across DCs: three DCs of one node each in this process.
//!
//! Properties checked:
//! - a create retried with the same key at another DC, once the create's `OperationStarted`
//!   reached that DC, answers the original cluster id and creates nothing there;
//! - after a failover, the new owner of the shard (and every other DC) still answers the key
//!   with the original cluster.

mod common;

use common::dcs::Deployment;
use common::{wait_for, Auth, Reply, TestServer};
use serde_json::{json, Value};

const SHARDS: u32 = 6;

fn shard_of(id: &str) -> u32 {
    (id.parse::<u64>().expect("numeric id") % u64::from(SHARDS)) as u32
}

/// `POST /v2/clusters` of a one-machine `base` cluster under `key`, through `via`.
async fn create_with_key(via: &TestServer, key: &str) -> Reply {
    let body = json!({"name": "keyed", "clusterTemplate": "base", "numMachines": 1});
    via.client
        .raw(
            reqwest::Method::POST,
            "/v2/clusters",
            &Auth::Demo,
            &[("Idempotency-Key", key)],
            Some(serde_json::to_vec(&body).expect("json")),
        )
        .await
}

fn created_id(reply: &Reply) -> String {
    reply.assert_ok()["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {reply:?}"))
        .to_string()
}

/// `dc`'s copy of `shard`: its role (`owner`, `replica`) and the clusters in it.
async fn shard_view(via: &TestServer, shard: u32) -> Value {
    via.get(&format!("/v2/admin/shards/{shard}/view"), &Auth::Superadmin)
        .await
        .assert_ok()
        .clone()
}

/// Whether `via` holds cluster `id` in its copy of the cluster's shard.
async fn holds(via: &TestServer, id: &str) -> Option<()> {
    let view = shard_view(via, shard_of(id)).await;
    let clusters = view["view"]["clusters"].as_object()?;
    clusters.contains_key(id).then_some(())
}

/// The create is retried with its key at b and c after its record reached them: both answer
/// the cluster a created, and every DC lists exactly one cluster once all copies caught up
/// (a second create at b or c would be in b's or c's own shards and replicate everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_retried_at_another_dc_returns_the_original_cluster() {
    let deployment = Deployment::start_with(|_| {}).await;
    let (a, b, c) = (deployment.dc("a"), deployment.dc("b"), deployment.dc("c"));
    let key = "create-once-1";
    let id = created_id(&create_with_key(a, key).await);
    // The retry at a itself answers the same (the DC's own table).
    assert_eq!(created_id(&create_with_key(a, key).await), id);

    tracing::info!("--- the create's record reaches b and c");
    for (name, dc) in [("b", b), ("c", c)] {
        wait_for(&format!("{name}'s copy of cluster {id}"), || holds(dc, &id)).await;
    }
    tracing::info!("--- the same create with the same key at b, then c");
    assert_eq!(created_id(&create_with_key(b, key).await), id);
    assert_eq!(created_id(&create_with_key(c, key).await), id);
    // Another key is another request (the scope is the caller and the key).
    let other = created_id(&create_with_key(b, "create-once-2").await);
    assert_ne!(other, id);

    for (name, dc) in [("a", a), ("b", b), ("c", c)] {
        wait_for(&format!("{name} to list both clusters"), || async {
            (dc.cluster_count().await == 2).then_some(())
        })
        .await;
    }
    // Settled: still two, nothing created late by the retries.
    for dc in [a, b, c] {
        let listed = dc.get("/v2/clusters", &Auth::Demo).await;
        let ids: Vec<&str> = listed
            .assert_ok()
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&id.as_str()) && ids.contains(&other.as_str()));
    }
    deployment.stop().await;
}

/// After a failover, the key still answers the original cluster: a stops, its shards move to b
/// and c (the shard of the keyed cluster is owned, with its adopted keys, by one of them), and
/// the retry at either DC answers the cluster a created; no DC lists a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_retried_after_a_failover_returns_the_original_cluster() {
    const LEASE_MS: u64 = 900;
    let mut deployment = Deployment::start_with(|c| {
        c.lease_ms = LEASE_MS;
        c.max_clock_offset_ms = 100;
    })
    .await;
    let key = "create-before-failover";
    let id = created_id(&create_with_key(deployment.dc("a"), key).await);
    let shard = shard_of(&id);
    for name in ["b", "c"] {
        let dc = deployment.dc(name);
        wait_for(&format!("{name}'s copy of cluster {id}"), || holds(dc, &id)).await;
    }

    tracing::info!("--- a stops; its shards fail over");
    deployment.stop_dc("a").await;
    let (b, c) = (deployment.dc("b"), deployment.dc("c"));
    wait_for("a new owner of the cluster's shard", || async {
        for dc in [b, c] {
            let view = shard_view(dc, shard).await;
            if view["role"] == "owner" && holds(dc, &id).await.is_some() {
                return Some(());
            }
        }
        None
    })
    .await;
    for dc in [b, c] {
        assert_eq!(created_id(&create_with_key(dc, key).await), id);
        assert_eq!(dc.cluster_count().await, 1);
    }
    deployment.stop().await;
}
