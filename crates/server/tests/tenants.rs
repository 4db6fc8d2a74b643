//! Tenants across datacenters: quotas hold for the whole deployment, a tenant with live
//! clusters in any DC cannot be deleted, and a tenant created again under a deleted one's name
//! never sees the older tenant's clusters (tenant incarnations).

mod common;

use common::dcs::{converged, Deployment};
use common::{wait_for, Auth, TestServer, Worker};
use serde_json::{json, Value};

/// Creates tenant `name` (with `quota` as `maxClusters`) and its admin key at `at`, and waits
/// until every DC can authenticate it.
async fn tenant(deployment: &Deployment, at: &TestServer, name: &str, quota: Option<u64>) -> Auth {
    let mut body = json!({"name": name});
    if let Some(max) = quota {
        body["maxClusters"] = json!(max);
    }
    at.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": body, "bootstrap": true}),
    )
    .await
    .assert_ok();
    let key = format!("{name}-key-0123");
    at.post(
        &format!("/v2/tenants/{name}/apikeys"),
        &Auth::Superadmin,
        json!({"user": "admin", "key": key}),
    )
    .await
    .assert_ok();
    let auth = Auth::of("admin", name, &key);
    for (dc, server) in &deployment.dcs {
        wait_for(&format!("{name}'s key and catalog at {dc}"), || async {
            let reply = server.get("/v2/clustertemplates", &auth).await;
            (reply.status == 200 && reply.body.as_array().is_some_and(|t| !t.is_empty()))
                .then_some(())
        })
        .await;
    }
    auth
}

fn create_body(name: &str) -> Value {
    json!({"name": name, "clusterTemplate": "base", "numMachines": 1})
}

/// Creates cluster `web` at `dc` and runs its create with a worker of `dc`; the cluster's id
/// and the worker.
async fn active_cluster<'a>(dc: &'a TestServer, auth: &Auth) -> (String, Worker<'a>) {
    let id = dc
        .post("/v2/clusters", auth, create_body("web"))
        .await
        .assert_ok()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let worker = Worker::register(dc, "p-b", "w1").await;
    worker.drive().await;
    (id, worker)
}

/// The IDs of the clusters a tenant lists at a DC (its local copies, owned and replicated).
async fn listed(server: &TestServer, auth: &Auth) -> Vec<String> {
    let reply = server.get("/v2/clusters", auth).await;
    reply
        .assert_ok()
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect()
}

/// A tenant with `maxClusters: 2` creating two clusters at each of three DCs at once gets
/// exactly two: its creates are ordered at the global shard's owner (answered by it), whose
/// check counts every DC's clusters. Every other create answers 409 `quota_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_holds_when_every_dc_creates_at_once() {
    common::init_logs();
    let deployment = Deployment::start().await;
    let auth = tenant(&deployment, deployment.dc("b"), "quota", Some(2)).await;

    let mut creates = tokio::task::JoinSet::new();
    for (dc, server) in &deployment.dcs {
        for i in 0..2 {
            let client = common::Client::new(server.base.clone());
            let (dc, auth) = (dc.clone(), auth.clone());
            creates.spawn(async move {
                let reply = client
                    .post("/v2/clusters", &auth, create_body(&format!("{dc}-{i}")))
                    .await;
                (dc, reply)
            });
        }
    }
    let replies = creates.join_all().await;
    let mut created = 0;
    for (dc, reply) in &replies {
        match reply.status.as_u16() {
            200 => {
                created += 1;
                // Ordered where the global shard is written.
                assert_eq!(reply.header("coopr-served-by"), Some("a/a1"), "from {dc}");
            }
            _ => assert_eq!(reply.assert_error(409), "quota_exceeded", "from {dc}"),
        }
    }
    assert_eq!(created, 2, "{replies:?}");

    wait_for("every DC to converge", || converged(&deployment)).await;
    for server in deployment.dcs.values() {
        assert_eq!(listed(server, &auth).await.len(), 2);
    }
    // A tenant without a quota still creates where it asks.
    let free = tenant(&deployment, deployment.dc("a"), "free", None).await;
    let reply = deployment
        .dc("b")
        .post("/v2/clusters", &free, create_body("local"))
        .await;
    reply.assert_ok();
    assert_eq!(reply.header("coopr-served-by"), Some("b/b1"));
    deployment.stop().await;
}

/// A tenant whose only live cluster is in another DC's shard cannot be deleted (409
/// `tenant_has_clusters`); once the cluster is deleted it can, and a tenant created again
/// under the same name sees none of the older tenant's clusters, in any DC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_tenant_leaves_nothing_to_its_successor() {
    common::init_logs();
    let deployment = Deployment::start().await;
    let (a, b, c) = (deployment.dc("a"), deployment.dc("b"), deployment.dc("c"));
    let auth = tenant(&deployment, a, "acme", None).await;
    let (id, worker) = active_cluster(b, &auth).await;
    wait_for("every DC to converge", || converged(&deployment)).await;

    // Sent to c, forwarded to a (the global shard's owner), refused there: b's cluster is live.
    let refused = c.delete("/v2/tenants/acme", &Auth::Superadmin).await;
    assert_eq!(refused.assert_error(409), "tenant_has_clusters");

    b.delete(&format!("/v2/clusters/{id}"), &auth)
        .await
        .assert_ok();
    worker.drive().await;
    wait_for("every DC to converge", || converged(&deployment)).await;
    c.delete("/v2/tenants/acme", &Auth::Superadmin)
        .await
        .assert_ok();

    let successor = tenant(&deployment, a, "acme", None).await;
    for (dc, server) in &deployment.dcs {
        assert_eq!(
            listed(server, &successor).await,
            Vec::<String>::new(),
            "at {dc}"
        );
        let reply = server.get(&format!("/v2/clusters/{id}"), &successor).await;
        assert_eq!(reply.assert_error(404), "not_found", "at {dc}");
    }
    deployment.stop().await;
}

/// The race a delete check cannot see: b creates a cluster while a, which cannot pull from b
/// (replication cut, leases unaffected), deletes the tenant and creates it again. When the
/// deletion reaches b, b's job driver deletes the orphaned cluster with a normal delete job, and
/// the successor tenant never sees it, in any DC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_created_during_the_delete_is_deleted_by_its_dc() {
    common::init_logs();
    let deployment = Deployment::start_linked(|_| {}).await;
    let (a, b) = (deployment.dc("a"), deployment.dc("b"));
    let auth = tenant(&deployment, a, "acme", None).await;
    deployment.cut_replication("a", "b");

    let (id, worker) = active_cluster(b, &auth).await;
    let cluster: coopr_types::ClusterId = id.parse().expect("id");
    let status = |server: &TestServer| {
        server
            .app()
            .core
            .read()
            .cluster(cluster)
            .map(|c| c.cluster.status)
    };
    assert_eq!(status(b), Some(coopr_types::ClusterStatus::Active));

    // a does not see b's cluster: the delete passes.
    a.delete("/v2/tenants/acme", &Auth::Superadmin)
        .await
        .assert_ok();
    let successor = tenant(&deployment, a, "acme", None).await;

    wait_for("b to delete the orphaned cluster", || async {
        worker.drive().await;
        (status(b) == Some(coopr_types::ClusterStatus::Terminated)).then_some(())
    })
    .await;
    deployment.heal();
    wait_for("every DC to converge", || converged(&deployment)).await;
    for (dc, server) in &deployment.dcs {
        assert_eq!(
            listed(server, &successor).await,
            Vec::<String>::new(),
            "at {dc}"
        );
    }
    let deleted = b.get("/metrics", &Auth::Superadmin).await;
    assert!(
        deleted
            .text
            .contains("coopr_orphaned_clusters_deleted_total 1"),
        "{}",
        deleted.text
    );
    deployment.stop().await;
}
