//! Coopr routes beyond clusters and the base catalog, against a server in demo mode: partial
//! templates and template resolution, one provisioner, queue and node-usage metrics, user
//! profiles, and Coopr's leniency (numbers and booleans given as strings). Every refusal is
//! checked by status and code. The last test runs three DCs: the new global-shard writes
//! (partial templates, profiles) go to the global shard's owner and replicate everywhere.

mod common;

use common::dcs::{converged, Deployment};
use common::{wait_for, Auth, TestServer, Worker};
use reqwest::Method;
use serde_json::{json, Value};

fn demo_admin() -> Auth {
    Auth::of("admin", "demo", "demo-admin-key")
}

/// A partial template that adds `mysql` and an immutable `monitor` config key.
fn extras() -> Value {
    json!({"name": "extras", "description": "monitoring", "immutable": "true",
           "defaults": {"services": ["mysql"], "config": {"monitor": {"on": true}}},
           "compatibility": {"services": ["mysql"]}})
}

/// A cluster template that extends `base` and includes `extras`; its numbers are strings.
fn base_plus() -> Value {
    json!({"name": "base-plus", "extends": {"name": "base"}, "includes": [{"name": "extras"}],
           "constraints": {"size": {"min": "1", "max": "3"}}})
}

/// Partial templates are a catalog kind like the others: admin-only writes (403), POST of an
/// existing name 409, PUT with another name 400, versions, 404 after DELETE, and export.
#[tokio::test]
async fn partial_templates_are_a_catalog_kind() {
    let srv = TestServer::start().await;
    let admin = demo_admin();
    let r = srv
        .post("/v2/partialtemplates", &Auth::Demo, extras())
        .await;
    assert_eq!(r.assert_error(403), "forbidden");
    srv.post("/v2/partialtemplates", &admin, extras())
        .await
        .assert_ok();
    let r = srv.post("/v2/partialtemplates", &admin, extras()).await;
    assert_eq!(r.assert_error(409), "entity_exists");
    let r = srv
        .put("/v2/partialtemplates/other", &admin, extras())
        .await;
    assert_eq!(r.assert_error(400), "name_mismatch");
    let bad = json!({"name": "bad", "immutable": "maybe"});
    let r = srv.post("/v2/partialtemplates", &admin, bad).await;
    assert_eq!(r.assert_error(400), "invalid_entity");
    let r = srv
        .post("/v2/partialtemplates", &admin, json!({"name": "a b"}))
        .await;
    assert_eq!(r.assert_error(400), "invalid_name");

    let mut changed = extras();
    changed["description"] = json!("v2");
    let r = srv
        .put("/v2/partialtemplates/extras", &admin, changed)
        .await;
    assert_eq!(r.assert_ok()["version"], 2);
    // Any user of the tenant reads them.
    let list = srv.get("/v2/partialtemplates", &Auth::Demo).await;
    let list = list.assert_ok().as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["description"], "v2");
    let v1 = srv.get("/v2/partialtemplates/extras/1", &Auth::Demo).await;
    assert_eq!(v1.assert_ok()["description"], "monitoring");
    let r = srv.get("/v2/partialtemplates/extras/0", &Auth::Demo).await;
    assert_eq!(r.assert_error(400), "invalid_version");
    let export = srv.get("/v2/export", &admin).await;
    assert_eq!(export.assert_ok()["partialtemplates"][0]["name"], "extras");

    srv.delete("/v2/partialtemplates/extras", &admin)
        .await
        .assert_ok();
    let r = srv.get("/v2/partialtemplates/extras", &Auth::Demo).await;
    assert_eq!(r.assert_error(404), "not_found");
    // Import takes them back (the export's shape).
    let mut body = export.body.clone();
    body.as_object_mut()
        .unwrap()
        .retain(|k, _| k == "partialtemplates");
    srv.post("/v2/import", &admin, body).await.assert_ok();
    srv.get("/v2/partialtemplates/extras", &Auth::Demo)
        .await
        .assert_ok();
    srv.stop().await;
}

/// `POST /v2/resolve` merges parents and partials as Coopr's `TemplateMerger` does; a missing
/// partial or parent is 404, an immutable key overridden, an unresolvable result or a bad body
/// 400.
#[tokio::test]
async fn resolve_merges_parents_and_partials() {
    let srv = TestServer::start().await;
    let admin = demo_admin();
    srv.post("/v2/partialtemplates", &admin, extras())
        .await
        .assert_ok();
    let r = srv.post("/v2/resolve", &Auth::Demo, base_plus()).await;
    let resolved = r.assert_ok();
    assert_eq!(resolved["name"], "base-plus");
    assert_eq!(resolved["defaults"]["services"], json!(["base", "mysql"]));
    assert_eq!(resolved["defaults"]["provider"], "fake");
    assert_eq!(
        resolved["defaults"]["config"]["monitor"],
        json!({"on": true})
    );
    assert_eq!(
        resolved["compatibility"]["services"],
        json!(["base", "mysql"])
    );
    assert_eq!(resolved["constraints"]["size"], json!({"min": 1, "max": 3}));
    assert_eq!(resolved["includes"], json!([{"name": "extras"}]));

    let mut overriding = base_plus();
    overriding["defaults"] = json!({"config": {"monitor": {"on": false}}});
    let r = srv.post("/v2/resolve", &Auth::Demo, overriding).await;
    assert_eq!(r.assert_error(400), "template_immutable");
    let missing = json!({"name": "t", "includes": [{"name": "nope"}]});
    let r = srv.post("/v2/resolve", &Auth::Demo, missing).await;
    assert_eq!(r.assert_error(404), "template_not_found");
    let orphan = json!({"name": "t", "extends": {"name": "nope"}});
    let r = srv.post("/v2/resolve", &Auth::Demo, orphan).await;
    assert_eq!(r.assert_error(404), "template_not_found");
    let r = srv
        .post("/v2/resolve", &Auth::Demo, json!({"name": "t"}))
        .await;
    assert_eq!(r.assert_error(400), "invalid_template");
    let bad = json!({"name": "t", "constraints": {"size": {"min": "one"}}});
    let r = srv.post("/v2/resolve", &Auth::Demo, bad).await;
    assert_eq!(r.assert_error(400), "invalid_entity");
    let r = srv.post("/v2/resolve", &Auth::Anonymous, base_plus()).await;
    assert_eq!(r.status.as_u16(), 401);
    srv.stop().await;
}

/// A cluster made from a template that extends and includes gets the merged template: the
/// partial's service is laid out and its config reaches the cluster; its size bounds, given
/// as strings, hold. Without the partial the create is 404.
#[tokio::test]
async fn clusters_are_created_from_the_resolved_template() {
    let srv = TestServer::start().await;
    let admin = demo_admin();
    srv.post("/v2/clustertemplates", &admin, base_plus())
        .await
        .assert_ok();
    let create = |machines: Value| json!({"name": "plus", "clusterTemplate": "base-plus", "numMachines": machines});
    let r = srv
        .post("/v2/clusters", &Auth::Demo, create(json!(1)))
        .await;
    assert_eq!(r.assert_error(404), "template_not_found");
    srv.post("/v2/partialtemplates", &admin, extras())
        .await
        .assert_ok();
    let r = srv
        .post("/v2/clusters", &Auth::Demo, create(json!("4")))
        .await;
    assert_eq!(r.assert_error(400), "too_many_machines");
    let r = srv
        .post("/v2/clusters", &Auth::Demo, create(json!("2")))
        .await;
    let id = r.assert_ok()["id"].as_str().unwrap().to_string();
    let cluster = srv.get(&format!("/v2/clusters/{id}"), &Auth::Demo).await;
    let cluster = cluster.assert_ok();
    assert_eq!(cluster["config"]["monitor"], json!({"on": true}));
    assert_eq!(
        cluster["clusterTemplate"]["defaults"]["services"],
        json!(["base", "mysql"])
    );
    let services = srv
        .get(&format!("/v2/clusters/{id}/services"), &Auth::Demo)
        .await;
    assert_eq!(services.assert_ok(), &json!(["base", "mysql"]));
    srv.stop().await;
}

/// Coopr's docs send `"restart":"false"`: booleans and numbers as strings are read as Gson
/// read them; other strings are 400.
#[tokio::test]
async fn config_requests_take_booleans_as_strings() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv.client, "p1", "w1").await;
    let id = srv.create_cluster("base", 1).await;
    worker.drive().await;
    let path = format!("/v2/clusters/{id}/config");
    for (restart, action) in [
        (json!("false"), "cluster_configure"),
        (json!("TRUE"), "cluster_configure_with_restart"),
        (json!(false), "cluster_configure"),
    ] {
        let body = json!({"config": {"k": 1}, "restart": restart});
        srv.put(&path, &Auth::Demo, body).await.assert_ok();
        let status = srv.cluster_status(&id).await;
        assert_eq!(status["action"], action, "restart {restart}");
        worker.drive().await;
    }
    let body = json!({"config": {"k": 1}, "restart": "maybe"});
    let r = srv.put(&path, &Auth::Demo, body).await;
    assert_eq!(r.assert_error(400), "invalid_json");
    // A provisioner may give its port as a string.
    srv.prov(
        Method::PUT,
        "/v2/provisioners/p2",
        json!({"id": "p2", "host": "h", "port": "55056", "capacityTotal": "2"}),
    )
    .await
    .assert_ok();
    let r = srv
        .prov(
            Method::PUT,
            "/v2/provisioners/p3",
            json!({"id": "p3", "host": "h", "port": 70000, "capacityTotal": 2}),
        )
        .await;
    assert_eq!(r.assert_error(400), "invalid_port");
    srv.stop().await;
}

/// `GET /v2/provisioners/{id}` (superadmin): Coopr's shape, `usage` and `assignments` present
/// even when empty; 404 for an unknown one, 403 for others.
#[tokio::test]
async fn one_provisioner() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv.client, "p1", "w1").await;
    let p = srv.get("/v2/provisioners/p1", &Auth::Superadmin).await;
    let p = p.assert_ok().clone();
    assert_eq!(p["id"], "p1");
    assert_eq!(p["capacityTotal"], 4);
    assert_eq!(p["capacityFree"], 4);
    assert_eq!(p["usage"], json!({}));
    assert_eq!(p["assignments"], json!({}));
    // A task in hand shows in its tenant's usage.
    srv.create_cluster("base", 1).await;
    let task = worker.take().await.expect("a task");
    let p = srv.get("/v2/provisioners/p1", &Auth::Superadmin).await;
    let p = p.assert_ok().clone();
    assert_eq!(p["capacityFree"], 3);
    let usage = p["usage"].as_object().unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage.values().next().unwrap(), 1);
    let list = srv.get("/v2/provisioners", &Auth::Superadmin).await;
    assert_eq!(list.assert_ok()[0], p);
    worker.finish(&task, 0).await;

    let r = srv.get("/v2/provisioners/nope", &Auth::Superadmin).await;
    assert_eq!(r.assert_error(404), "not_found");
    let r = srv.get("/v2/provisioners/p1", &demo_admin()).await;
    assert_eq!(r.assert_error(403), "forbidden");
    srv.stop().await;
}

/// `GET /v2/metrics/queues`: a tenant admin sees its tenant, the superadmin every tenant,
/// others 403; `total` is `queued + inProgress`.
#[tokio::test]
async fn queue_metrics() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv.client, "p1", "w1").await;
    srv.create_cluster("base", 2).await;
    let _task = worker.take().await.expect("a task");
    let m = srv.get("/v2/metrics/queues", &demo_admin()).await;
    let m = m.assert_ok().clone();
    assert_eq!(m.as_object().unwrap().len(), 1);
    let demo = &m["demo"];
    assert_eq!(demo["inProgress"], 1);
    assert!(demo["queued"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(
        demo["total"].as_u64(),
        Some(demo["queued"].as_u64().unwrap() + 1)
    );
    let all = srv.get("/v2/metrics/queues", &Auth::Superadmin).await;
    let all = all.assert_ok();
    assert_eq!(all["demo"], *demo);
    assert_eq!(
        all["superadmin"],
        json!({"queued": 0, "inProgress": 0, "total": 0})
    );
    let r = srv.get("/v2/metrics/queues", &Auth::Demo).await;
    assert_eq!(r.assert_error(403), "forbidden");
    srv.stop().await;
}

/// `GET /v2/metrics/nodes/usage`: Coopr's time series over the nodes' lives; a tenant admin
/// asking for another tenant gets 405; bad parameters 400.
#[tokio::test]
async fn node_usage_metrics() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv.client, "p1", "w1").await;
    let empty = srv
        .get("/v2/metrics/nodes/usage?start=1000", &demo_admin())
        .await;
    let empty = empty.assert_ok().clone();
    assert_eq!(empty["start"], 1000);
    assert_eq!(empty["data"], json!([{"time": 1000, "value": 0}]));
    srv.create_cluster("base", 2).await;
    worker.drive().await;
    let usage = srv
        .get(
            "/v2/metrics/nodes/usage?timeunit=milliseconds&user=demo",
            &demo_admin(),
        )
        .await;
    let usage = usage.assert_ok().clone();
    let data = usage["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["time"], usage["start"]);
    assert!(usage["end"].as_u64() >= usage["start"].as_u64(), "{usage}");
    let grouped = srv
        .get("/v2/metrics/nodes/usage?groupby=hour", &Auth::Superadmin)
        .await;
    assert!(grouped.assert_ok()["data"].is_array());
    let other = srv
        .get("/v2/metrics/nodes/usage?user=nobody", &demo_admin())
        .await;
    assert_eq!(other.assert_ok()["data"][0]["value"], 0);

    for (query, status, code) in [
        ("tenant=superadmin", 405, "tenant_not_allowed"),
        ("groupby=fortnight", 400, "invalid_groupby"),
        ("timeunit=eons", 400, "invalid_timeunit"),
        ("start=yesterday", 400, "invalid_time"),
        ("end=-1", 400, "invalid_time"),
        (
            "start=0&end=100000000&groupby=hour",
            400,
            "too_many_intervals",
        ),
    ] {
        let r = srv
            .get(&format!("/v2/metrics/nodes/usage?{query}"), &demo_admin())
            .await;
        assert_eq!(r.assert_error(status), code, "{query}");
    }
    let long = "u".repeat(256);
    let r = srv
        .get(
            &format!("/v2/metrics/nodes/usage?user={long}"),
            &demo_admin(),
        )
        .await;
    assert_eq!(r.assert_error(400), "value_too_large");
    let r = srv.get("/v2/metrics/nodes/usage", &Auth::Demo).await;
    assert_eq!(r.assert_error(403), "forbidden");
    srv.stop().await;
}

/// `/v2/profile`: each user's own object, 404 before it is written and after it is deleted;
/// only objects within the value limit are stored.
#[tokio::test]
async fn profiles_are_per_user() {
    let srv = TestServer::start().await;
    let r = srv.get("/v2/profile", &Auth::Demo).await;
    assert_eq!(r.assert_error(404), "not_found");
    let profile = json!({"email": "demo@example.com", "theme": {"dark": true}});
    srv.put("/v2/profile", &Auth::Demo, profile.clone())
        .await
        .assert_ok();
    let r = srv.get("/v2/profile", &Auth::Demo).await;
    assert_eq!(r.assert_ok(), &profile);
    // The tenant's admin has a profile of its own.
    let r = srv.get("/v2/profile", &demo_admin()).await;
    assert_eq!(r.assert_error(404), "not_found");
    let r = srv.put("/v2/profile", &Auth::Demo, json!([1, 2])).await;
    assert_eq!(r.assert_error(400), "invalid_profile");
    let big = json!({"blob": "x".repeat(70 * 1024)});
    let r = srv.put("/v2/profile", &Auth::Demo, big).await;
    assert_eq!(r.assert_error(400), "value_too_large");
    let r = srv
        .put("/v2/profile", &Auth::Anonymous, profile.clone())
        .await;
    assert_eq!(r.status.as_u16(), 401);
    srv.delete("/v2/profile", &Auth::Demo).await.assert_ok();
    let r = srv.get("/v2/profile", &Auth::Demo).await;
    assert_eq!(r.assert_error(404), "not_found");
    // Deleting nothing is fine, as in Coopr.
    srv.delete("/v2/profile", &Auth::Demo).await.assert_ok();
    srv.stop().await;
}

/// With three DCs (a owns the global shard): a partial template and a profile written at b are
/// applied at a and replicate to every DC, equal to the owner's copy (`converged`); c then
/// creates a cluster from a template that includes the partial, and reads the profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partials_and_profiles_are_global_data() {
    let deployment = Deployment::start().await;
    let (b, c) = (deployment.dc("b"), deployment.dc("c"));
    let admin = demo_admin();
    let partial = b.post("/v2/partialtemplates", &admin, extras()).await;
    partial.assert_ok();
    assert_eq!(partial.header("coopr-served-by"), Some("a/a1"));
    let template = b.post("/v2/clustertemplates", &admin, base_plus()).await;
    template.assert_ok();
    let profile = json!({"theme": "dark"});
    let put = b.put("/v2/profile", &Auth::Demo, profile.clone()).await;
    put.assert_ok();
    assert_eq!(put.header("coopr-served-by"), Some("a/a1"));
    wait_for("the partial template and profile to reach c", || async {
        let partial = c.get("/v2/partialtemplates/extras", &Auth::Demo).await;
        let template = c.get("/v2/clustertemplates/base-plus", &Auth::Demo).await;
        let read = c.get("/v2/profile", &Auth::Demo).await;
        (partial.status == 200 && template.status == 200 && read.body == profile).then_some(())
    })
    .await;
    wait_for("every copy of every shard to equal its owner's", || {
        converged(&deployment)
    })
    .await;
    let created = c
        .post(
            "/v2/clusters",
            &Auth::Demo,
            json!({"name": "plus", "clusterTemplate": "base-plus", "numMachines": "2"}),
        )
        .await;
    let id = created.assert_ok()["id"].as_str().unwrap().to_string();
    let services = c
        .get(&format!("/v2/clusters/{id}/services"), &Auth::Demo)
        .await;
    assert_eq!(services.assert_ok(), &json!(["base", "mysql"]));
    let deleted = c.delete("/v2/profile", &Auth::Demo).await;
    deleted.assert_ok();
    assert_eq!(deleted.header("coopr-served-by"), Some("a/a1"));
    wait_for("the deleted profile to be gone at b", || async {
        let read = b.get("/v2/profile", &Auth::Demo).await;
        (read.status == 404).then_some(())
    })
    .await;
    deployment.stop().await;
}

/// Coopr wrote a provider's `provisioner` and a machine type's `providermap` out even when
/// empty; so does coopr, also for entities posted without them.
#[tokio::test]
async fn catalog_output_keeps_empty_maps() {
    let srv = TestServer::start().await;
    let admin = demo_admin();
    srv.post(
        "/v2/providers",
        &admin,
        json!({"name": "bare", "providertype": "fake"}),
    )
    .await
    .assert_ok();
    srv.put("/v2/hardwaretypes/tiny", &admin, json!({"name": "tiny"}))
        .await
        .assert_ok();
    let provider = srv.get("/v2/providers/bare", &Auth::Demo).await;
    assert_eq!(provider.assert_ok()["provisioner"], json!({}));
    let hardware = srv.get("/v2/hardwaretypes/tiny", &Auth::Demo).await;
    assert_eq!(hardware.assert_ok()["providermap"], json!({}));
    srv.stop().await;
}
