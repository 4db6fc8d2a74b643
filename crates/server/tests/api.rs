//! API tests against real servers in-process on loopback (demo mode: tenant `demo`, the
//! superadmin, the example catalog). Tasks are driven by a fake worker over the provisioner API.
//! Every request goes through a helper that fails the test on any 5xx.

mod common;

use std::collections::BTreeSet;

use common::{wait_for, Auth, TestServer, Worker};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

/// Create → drive → active → delete → terminated, checking every shape on the way: `{id}` is 8
/// digits, `/status` has exactly Coopr's six keys, nodes carry the worker's hostname and
/// addresses, plans use uppercase names, and a second delete is a 200 no-op.
#[tokio::test]
async fn lamp_cluster_lifecycle() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    let id = srv.create_cluster("lamp", 3).await;
    assert_eq!(id.len(), 8, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");

    let status = srv.cluster_status(&id).await;
    assert_eq!(
        keys(&status),
        set(&[
            "clusterid",
            "status",
            "action",
            "actionstatus",
            "stepstotal",
            "stepscompleted"
        ])
    );
    assert_eq!(status["clusterid"], id.as_str());
    assert_eq!(status["status"], "pending");
    assert_eq!(status["action"], "cluster_create");
    assert_eq!(status["actionstatus"], "running");
    assert_eq!(status["stepscompleted"], 0);

    let ran = worker.drive().await;
    let status = srv.cluster_status(&id).await;
    assert_eq!(status["status"], "active", "{status}");
    assert_eq!(status["actionstatus"], "complete");
    assert_eq!(status["stepscompleted"], status["stepstotal"]);
    assert_eq!(status["stepstotal"].as_u64(), Some(ran as u64));

    let cluster = srv.get(&format!("/v2/clusters/{id}"), &Auth::Demo).await;
    let cluster = cluster.assert_ok();
    assert_eq!(cluster["id"], id.as_str());
    assert_eq!(cluster["status"], "active");
    assert_eq!(cluster["account"]["userId"], "demo");
    assert_eq!(cluster["account"]["tenantId"], "demo");
    let nodes = cluster["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        let n = node["properties"]["nodenum"].as_u64().expect("nodenum");
        assert_eq!(node["properties"]["hostname"], format!("node{n}.test"));
        assert_eq!(
            node["properties"]["ipaddresses"]["access_v4"],
            format!("10.0.0.{}", n % 250)
        );
        assert_eq!(
            node["provisionerResults"]["providerid"],
            format!("fake-{n}")
        );
        assert_eq!(node["clusterId"], id.as_str());
        for action in node["actions"].as_array().expect("actions") {
            assert_eq!(action["status"], "complete");
            let name = action["action"].as_str().unwrap();
            assert_eq!(name, name.to_uppercase());
        }
    }

    let plans = srv
        .get(&format!("/v2/clusters/{id}/plans"), &Auth::Demo)
        .await;
    let plans = plans.assert_ok().as_array().expect("plans").clone();
    let create = plans
        .iter()
        .find(|p| p["action"] == "CLUSTER_CREATE")
        .unwrap_or_else(|| panic!("no CLUSTER_CREATE plan: {plans:?}"));
    assert_eq!(
        keys(create),
        set(&["id", "clusterId", "action", "currentStage", "stages"])
    );
    let first = &create["stages"][0][0];
    assert_eq!(keys(first), set(&["id", "taskName", "nodeId", "service"]));
    assert_eq!(first["taskName"], "CREATE");
    assert_eq!(first["service"], "");
    let job_id = create["id"].as_str().unwrap();
    let one = srv
        .get(&format!("/v2/clusters/{id}/plans/{job_id}"), &Auth::Demo)
        .await;
    assert_eq!(one.assert_ok(), create);
    srv.get(
        &format!("/v2/clusters/{id}/plans/99999999-001"),
        &Auth::Demo,
    )
    .await
    .assert_error(400);
    srv.get(&format!("/v2/clusters/{id}/plans/garbage"), &Auth::Demo)
        .await
        .assert_error(400);

    let list = srv.get("/v2/clusters", &Auth::Demo).await;
    let list = list.assert_ok().as_array().expect("list").clone();
    assert_eq!(list.len(), 1);
    assert_eq!(
        keys(&list[0]),
        set(&[
            "id",
            "name",
            "description",
            "ownerId",
            "createTime",
            "expireTime",
            "numNodes",
            "status",
            "provider",
            "clusterTemplate",
            "services",
            "progress"
        ])
    );
    assert_eq!(list[0]["numNodes"], 3);
    assert_eq!(list[0]["clusterTemplate"]["name"], "lamp");
    assert_eq!(
        keys(&list[0]["progress"]),
        set(&["action", "actionstatus", "stepstotal", "stepscompleted"])
    );
    let filtered = srv
        .get("/v2/clusters?status=ACTIVE,bogus", &Auth::Demo)
        .await;
    assert_eq!(filtered.assert_ok().as_array().unwrap().len(), 1);
    let filtered = srv.get("/v2/clusters?status=pending", &Auth::Demo).await;
    assert_eq!(filtered.assert_ok().as_array().unwrap().len(), 0);

    let props = srv
        .post(
            "/v2/getNodeProperties",
            &Auth::Demo,
            json!({"clusterId": id, "properties": ["hostname", "nope"], "services": ["mysql"]}),
        )
        .await;
    let props = props.assert_ok().as_object().unwrap().clone();
    assert_eq!(props.len(), 1, "mysql runs on one node: {props:?}");
    for v in props.values() {
        assert_eq!(keys(v), set(&["hostname"]));
    }

    let deleted = srv.delete(&format!("/v2/clusters/{id}"), &Auth::Demo).await;
    assert!(deleted.assert_ok().is_null(), "empty 200: {deleted:?}");
    let status = srv.cluster_status(&id).await;
    assert_eq!(status["action"], "cluster_delete");
    assert_eq!(status["status"], "pending");
    assert_eq!(worker.drive().await, 3);
    let status = srv.cluster_status(&id).await;
    assert_eq!(status["status"], "terminated");
    srv.delete(&format!("/v2/clusters/{id}"), &Auth::Demo)
        .await
        .assert_ok();
    assert_eq!(worker.take().await, None, "a no-op delete starts no job");
    srv.stop().await;
}

/// Runs one operation to completion: the call answers 200, the cluster is pending with `action`
/// running, the worker drives it, and the cluster is active again.
async fn run_operation(
    srv: &TestServer,
    worker: &Worker<'_>,
    id: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    action: &str,
) -> Vec<Value> {
    srv.call(method, path, &Auth::Demo, body).await.assert_ok();
    let status = srv.cluster_status(id).await;
    assert_eq!(status["action"], action, "{status}");
    assert_eq!(status["status"], "pending");
    let mut tasks = Vec::new();
    while let Some(task) = worker.take().await {
        worker.finish(&task, 0).await;
        tasks.push(task);
    }
    assert!(!tasks.is_empty(), "{action} ran no task");
    let status = srv.cluster_status(id).await;
    assert_eq!(status["status"], "active", "{status}");
    assert_eq!(status["actionstatus"], "complete");
    assert_eq!(status["stepscompleted"], status["stepstotal"]);
    tasks
}

/// Every cluster operation end to end: reconfigure with and without restart, stop/start/restart
/// of all services and of one, add services, and setting the expire time.
#[tokio::test]
async fn cluster_operations_end_to_end() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    // lamp with only base and mysql, so apache can be added later (the base template allows
    // only the base service, so nothing could be added to it).
    let reply = srv
        .post(
            "/v2/clusters",
            &Auth::Demo,
            json!({"name": "ops", "clusterTemplate": "lamp", "numMachines": "2",
                   "services": ["base", "mysql"]}),
        )
        .await;
    let id = reply.assert_ok()["id"].as_str().unwrap().to_string();
    let base = format!("/v2/clusters/{id}");

    // Operations on a pending cluster are refused.
    srv.put(
        &format!("{base}/config"),
        &Auth::Demo,
        json!({"config": {}}),
    )
    .await
    .assert_error(409);
    srv.post(&format!("{base}/services/stop"), &Auth::Demo, json!({}))
        .await
        .assert_error(409);
    srv.delete(&base, &Auth::Demo).await.assert_error(409);
    worker.drive().await;

    let tasks = run_operation(
        &srv,
        &worker,
        &id,
        Method::PUT,
        &format!("{base}/config"),
        Some(json!({"config": {"php": {"port": 8080}}, "restart": false})),
        "cluster_configure",
    )
    .await;
    assert!(tasks.iter().all(|t| t["taskName"] != "STOP"));
    let config = srv.get(&format!("{base}/config"), &Auth::Demo).await;
    assert_eq!(config.assert_ok(), &json!({"php": {"port": 8080}}));
    let task = &tasks[0];
    assert_eq!(task["config"]["cluster"], json!({"php": {"port": 8080}}));

    let tasks = run_operation(
        &srv,
        &worker,
        &id,
        Method::PUT,
        &format!("{base}/config"),
        Some(json!({"config": {"k": "v"}})),
        "cluster_configure_with_restart",
    )
    .await;
    assert!(tasks.iter().any(|t| t["taskName"] == "STOP"));
    assert!(tasks.iter().any(|t| t["taskName"] == "START"));

    for (verb, action) in [
        ("stop", "stop_services"),
        ("start", "start_services"),
        ("restart", "restart_services"),
    ] {
        run_operation(
            &srv,
            &worker,
            &id,
            Method::POST,
            &format!("{base}/services/{verb}"),
            None,
            action,
        )
        .await;
    }
    let tasks = run_operation(
        &srv,
        &worker,
        &id,
        Method::POST,
        &format!("{base}/services/mysql/restart"),
        Some(json!({"providerFields": {}})),
        "restart_services",
    )
    .await;
    assert!(tasks
        .iter()
        .all(|t| t["config"]["service"]["name"] == "mysql"));
    srv.post(
        &format!("{base}/services/nope/restart"),
        &Auth::Demo,
        json!({}),
    )
    .await
    .assert_error(404);
    srv.post(
        &format!("{base}/services/mysql/explode"),
        &Auth::Demo,
        json!({}),
    )
    .await
    .assert_error(400);

    let tasks = run_operation(
        &srv,
        &worker,
        &id,
        Method::POST,
        &format!("{base}/services"),
        Some(json!({"services": ["apache"]})),
        "add_services",
    )
    .await;
    assert!(tasks.iter().any(|t| t["taskName"] == "INSTALL"
        && t["config"]["service"]["name"] == "apache"
        && t["config"]["service"]["action"]["type"] == "fake"));
    let services = srv.get(&format!("{base}/services"), &Auth::Demo).await;
    let services = services.assert_ok().as_array().unwrap().clone();
    assert!(services.contains(&json!("apache")), "{services:?}");
    srv.post(
        &format!("{base}/services"),
        &Auth::Demo,
        json!({"services": ["apache"]}),
    )
    .await
    .assert_error(400);
    srv.post(
        &format!("{base}/services"),
        &Auth::Demo,
        json!({"services": []}),
    )
    .await
    .assert_error(400);

    // Expire time.
    let cluster = srv.get(&base, &Auth::Demo).await.assert_ok().clone();
    let create_time = cluster["createTime"].as_u64().unwrap();
    let expire = create_time + 3_600_000;
    srv.post(&base, &Auth::Demo, json!({"expireTime": expire}))
        .await
        .assert_ok();
    let cluster = srv.get(&base, &Auth::Demo).await.assert_ok().clone();
    assert_eq!(cluster["expireTime"], expire);
    srv.post(&base, &Auth::Demo, json!({"expireTime": create_time - 1}))
        .await
        .assert_error(400);
    srv.post(&base, &Auth::Demo, json!({}))
        .await
        .assert_error(400);
    srv.post(&base, &Auth::Demo, json!({"expireTime": "soon"}))
        .await
        .assert_error(400);
    srv.stop().await;
}

/// Pause stops tasks being handed out and resume restarts them; abort fails a running create
/// (cluster incomplete) and is a no-op afterwards; abort of a running delete is a 409.
#[tokio::test]
async fn pause_resume_and_abort() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    let id = srv.create_cluster("lamp", 2).await;
    let base = format!("/v2/clusters/{id}");
    let held = worker.take().await.expect("a task");

    srv.post(&format!("{base}/pause"), &Auth::Demo, json!(null))
        .await
        .assert_ok();
    assert_eq!(srv.cluster_status(&id).await["actionstatus"], "paused");
    // (Another worker: one that holds a task is handed that task again when it asks.)
    assert_eq!(
        worker.sibling("w2").take().await,
        None,
        "a paused job hands out nothing"
    );
    // A task in progress may still finish while paused.
    worker.finish(&held, 0).await;
    srv.post(&format!("{base}/pause"), &Auth::Demo, json!(null))
        .await
        .assert_ok();
    srv.post(&format!("{base}/resume"), &Auth::Demo, json!(null))
        .await
        .assert_ok();
    assert_eq!(srv.cluster_status(&id).await["actionstatus"], "running");
    let held = worker.take().await.expect("tasks flow again");

    srv.post(&format!("{base}/abort"), &Auth::Demo, json!(null))
        .await
        .assert_ok();
    let status = srv.cluster_status(&id).await;
    assert_eq!(status["status"], "incomplete", "{status}");
    assert_eq!(status["actionstatus"], "failed");
    assert_eq!(worker.take().await, None);
    // The worker's late result is still accepted.
    worker.finish(&held, 0).await;
    srv.post(&format!("{base}/abort"), &Auth::Demo, json!(null))
        .await
        .assert_ok();
    assert_eq!(srv.cluster_status(&id).await["status"], "incomplete");

    // An incomplete cluster can be deleted; aborting the delete is refused.
    srv.delete(&base, &Auth::Demo).await.assert_ok();
    srv.post(&format!("{base}/abort"), &Auth::Demo, json!(null))
        .await
        .assert_error(409);
    worker.drive().await;
    assert_eq!(srv.cluster_status(&id).await["status"], "terminated");
    srv.stop().await;
}

/// Missing or wrong credentials are 401 with `{code, message}`; another tenant's cluster is
/// invisible (404); tenant calls by a non-superadmin are 403.
#[tokio::test]
async fn authentication_and_tenant_isolation() {
    let srv = TestServer::start().await;
    let id = srv.create_cluster("base", 1).await;

    let r = srv.get("/v2/clusters", &Auth::Anonymous).await;
    assert_eq!(r.assert_error(401), "unauthorized");
    srv.get("/v2/clusters", &Auth::of("demo", "demo", "wrong-key"))
        .await
        .assert_error(401);
    srv.get("/v2/clusters", &Auth::of("demo", "superadmin", "demo-key"))
        .await
        .assert_error(401);
    // The superadmin key is bound to user admin.
    srv.get("/v2/clusters", &Auth::of("bob", "superadmin", "admin-key"))
        .await
        .assert_error(401);
    srv.post(
        "/v2/clusters",
        &Auth::Anonymous,
        json!({"name": "x", "clusterTemplate": "base", "numMachines": 1}),
    )
    .await
    .assert_error(401);

    // A second tenant, with the superadmin's catalog and its own key.
    srv.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": {"name": "acme", "workers": 0, "maxClusters": 5}, "bootstrap": true}),
    )
    .await
    .assert_ok();
    let key = srv
        .post(
            "/v2/tenants/acme/apikeys",
            &Auth::Superadmin,
            json!({"user": "admin"}),
        )
        .await;
    let key = key.assert_ok()["key"].as_str().unwrap().to_string();
    let acme = Auth::of("admin", "acme", &key);
    srv.get(&format!("/v2/clusters/{id}"), &acme)
        .await
        .assert_error(404);
    srv.get(&format!("/v2/clusters/{id}/status"), &acme)
        .await
        .assert_error(404);
    srv.delete(&format!("/v2/clusters/{id}"), &acme)
        .await
        .assert_error(404);
    assert_eq!(srv.get("/v2/clusters", &acme).await.assert_ok(), &json!([]));
    let templates = srv.get("/v2/clustertemplates", &acme).await;
    assert_eq!(
        templates.assert_ok().as_array().unwrap().len(),
        2,
        "bootstrapped"
    );
    // The acme key does not open the demo tenant.
    srv.get("/v2/clusters", &Auth::of("demo", "demo", &key))
        .await
        .assert_error(401);
    // getNodeProperties of an invisible cluster is empty.
    let props = srv
        .post("/v2/getNodeProperties", &acme, json!({"clusterId": id}))
        .await;
    assert_eq!(props.assert_ok(), &json!({}));

    // Tenant administration needs the superadmin.
    for auth in [&Auth::Demo, &acme] {
        srv.get("/v2/tenants", auth).await.assert_error(403);
        srv.post("/v2/tenants", auth, json!({"tenant": {"name": "evil"}}))
            .await
            .assert_error(403);
        srv.post("/v2/tenants/acme/apikeys", auth, json!({}))
            .await
            .assert_error(403);
        srv.get("/v2/provisioners", auth).await.assert_error(403);
    }
    let tenants = srv.get("/v2/tenants", &Auth::Superadmin).await;
    let names: BTreeSet<String> = tenants
        .assert_ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains("acme") && names.contains("demo"),
        "{names:?}"
    );
    srv.delete("/v2/tenants/superadmin", &Auth::Superadmin)
        .await
        .assert_error(403);
    srv.stop().await;
}

/// Keys are bound to users: a key created without `user` is refused (400 `user_required`); a
/// key bound to `alice` authenticates only alice; a key for any user of the tenant (`anyUser`,
/// stored without a user exactly as keys of older versions were) never authenticates `admin`,
/// neither the tenant admin nor the superadmin, nor a provisioner (401 `admin_key_required`);
/// admin rights come with a key bound to `admin`. Checked call by call, with the error codes.
#[tokio::test]
async fn keys_are_bound_to_users_and_admin_needs_an_admin_key() {
    let srv = TestServer::start().await;
    let id = srv.create_cluster("base", 1).await;
    let create_key = |tenant: &'static str, body: Value| {
        let srv = &srv;
        async move {
            srv.post(
                &format!("/v2/tenants/{tenant}/apikeys"),
                &Auth::Superadmin,
                body,
            )
            .await
        }
    };

    // A key names its user, or asks for any user; never neither, never both.
    let r = create_key("demo", json!({})).await;
    assert_eq!(r.assert_error(400), "user_required");
    let r = create_key("demo", json!({"key": "no-user-key-0"})).await;
    assert_eq!(r.assert_error(400), "user_required");
    let r = create_key("demo", json!({"user": "alice", "anyUser": true})).await;
    assert_eq!(r.assert_error(400), "invalid_key_binding");
    let r = create_key("demo", json!({"user": ""})).await;
    assert_eq!(r.assert_error(400), "invalid_user");
    srv.get("/v2/clusters", &Auth::of("bob", "demo", "no-user-key-0"))
        .await
        .assert_error(401);

    // A key bound to alice is alice's only.
    let r = create_key("demo", json!({"user": "alice", "key": "alice-key-0"})).await;
    assert_eq!(
        r.assert_ok(),
        &json!({"key": "alice-key-0", "user": "alice"})
    );
    assert_eq!(
        srv.get("/v2/clusters", &Auth::of("alice", "demo", "alice-key-0"))
            .await
            .assert_ok(),
        &json!([])
    );
    for user in ["bob", "admin"] {
        let r = srv
            .get("/v2/clusters", &Auth::of(user, "demo", "alice-key-0"))
            .await;
        assert_eq!(r.assert_error(401), "unauthorized", "as {user}");
    }

    // A key for any user of the tenant: any user but admin.
    let r = create_key("demo", json!({"anyUser": true, "key": "shared-key-0"})).await;
    assert_eq!(
        r.assert_ok(),
        &json!({"key": "shared-key-0", "anyUser": true})
    );
    let bob = Auth::of("bob", "demo", "shared-key-0");
    assert_eq!(srv.get("/v2/clusters", &bob).await.assert_ok(), &json!([]));
    let as_admin = Auth::of("admin", "demo", "shared-key-0");
    let r = srv.get("/v2/clusters", &as_admin).await;
    assert_eq!(r.assert_error(401), "admin_key_required");
    let r = srv
        .post(
            "/v2/hardwaretypes",
            &as_admin,
            json!({"name": "tiny", "providermap": {}}),
        )
        .await;
    assert_eq!(r.assert_error(401), "admin_key_required");
    let r = srv.get(&format!("/v2/clusters/{id}"), &as_admin).await;
    assert_eq!(r.assert_error(401), "admin_key_required");

    // The same in the superadmin tenant: no superadmin rights, no provisioner rights.
    let r = create_key(
        "superadmin",
        json!({"anyUser": true, "key": "super-shared-0"}),
    )
    .await;
    r.assert_ok();
    let r = srv
        .get(
            "/v2/tenants",
            &Auth::of("admin", "superadmin", "super-shared-0"),
        )
        .await;
    assert_eq!(r.assert_error(401), "admin_key_required");
    let r = srv
        .get(
            "/v2/tenants",
            &Auth::of("ops", "superadmin", "super-shared-0"),
        )
        .await;
    assert_eq!(r.assert_error(403), "forbidden");
    let take = json!({"provisionerId": "p1", "workerId": "w1"});
    for (key, code) in [
        ("super-shared-0", "admin_key_required"),
        ("alice-key-0", "unauthorized"),
    ] {
        let r = srv
            .raw(
                Method::POST,
                "/v2/tasks/take",
                &Auth::Anonymous,
                &[("Coopr-ApiKey", key)],
                Some(serde_json::to_vec(&take).expect("json")),
            )
            .await;
        assert_eq!(r.assert_error(401), code, "provisioner with {key}");
    }

    // Keys bound to admin carry admin rights: the tenant admin sees every cluster of its
    // tenant and writes its catalog; the superadmin administers tenants.
    let r = create_key("demo", json!({"user": "admin", "key": "demo-admin-0"})).await;
    r.assert_ok();
    let admin = Auth::of("admin", "demo", "demo-admin-0");
    let clusters = srv.get("/v2/clusters", &admin).await;
    assert_eq!(clusters.assert_ok().as_array().map(Vec::len), Some(1));
    srv.post(
        "/v2/hardwaretypes",
        &admin,
        json!({"name": "tiny", "providermap": {}}),
    )
    .await
    .assert_ok();
    let r = create_key(
        "superadmin",
        json!({"user": "admin", "key": "super-admin-0"}),
    )
    .await;
    r.assert_ok();
    let superadmin = Auth::of("admin", "superadmin", "super-admin-0");
    srv.get("/v2/tenants", &superadmin).await.assert_ok();
    srv.post(
        "/v2/tenants/demo/apikeys",
        &superadmin,
        json!({"user": "carol"}),
    )
    .await
    .assert_ok();
    srv.stop().await;
}

/// The same POST with the same Idempotency-Key returns the same id and creates one cluster.
#[tokio::test]
async fn idempotency_key_replays_create() {
    let srv = TestServer::start().await;
    let body =
        serde_json::to_vec(&json!({"name": "idem", "clusterTemplate": "base", "numMachines": 1}))
            .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = srv
            .raw(
                Method::POST,
                "/v2/clusters",
                &Auth::Demo,
                &[("Idempotency-Key", "create-1")],
                Some(body.clone()),
            )
            .await;
        ids.push(r.assert_ok()["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(srv.cluster_count().await, 1);
    let r = srv
        .raw(
            Method::POST,
            "/v2/clusters",
            &Auth::Demo,
            &[("Idempotency-Key", "create-2")],
            Some(body.clone()),
        )
        .await;
    assert_ne!(r.assert_ok()["id"], ids[0]);
    assert_eq!(srv.cluster_count().await, 2);
    // The same key on another endpoint is another request, not a replay of the create.
    let id = ids[0].as_str().unwrap().to_string();
    let r = srv
        .raw(
            Method::POST,
            &format!("/v2/clusters/{id}/pause"),
            &Auth::Demo,
            &[("Idempotency-Key", "create-1")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "pause answered {:?}", r.body);
    assert!(
        r.body.get("id").is_none(),
        "pause must not replay the create: {:?}",
        r.body
    );
    assert_eq!(srv.cluster_count().await, 2);
    let long = "k".repeat(300);
    srv.raw(
        Method::POST,
        "/v2/clusters",
        &Auth::Demo,
        &[("Idempotency-Key", long.as_str())],
        Some(body),
    )
    .await
    .assert_error(400);
    assert_eq!(srv.cluster_count().await, 2);
    srv.stop().await;
}

/// Bad input to the cluster endpoints: each is a 4xx `{code, message}` and creates nothing.
#[tokio::test]
async fn bad_cluster_input_is_rejected() {
    let srv = TestServer::start().await;
    let id = srv.create_cluster("base", 1).await;
    let before = srv.cluster_count().await;
    let create = |body: Value| {
        let srv = &srv;
        async move { srv.post("/v2/clusters", &Auth::Demo, body).await }
    };

    let malformed = srv
        .raw(
            Method::POST,
            "/v2/clusters",
            &Auth::Demo,
            &[],
            Some(b"{\"name\": ".to_vec()),
        )
        .await;
    assert_eq!(malformed.assert_error(400), "invalid_json");
    srv.raw(
        Method::POST,
        "/v2/clusters",
        &Auth::Demo,
        &[],
        Some(b"[1,2]".to_vec()),
    )
    .await
    .assert_error(400);
    srv.raw(Method::POST, "/v2/clusters", &Auth::Demo, &[], None)
        .await
        .assert_error(400);
    create(json!({"name": "x", "clusterTemplate": "nope", "numMachines": 1}))
        .await
        .assert_error(404);
    for n in [
        json!(0),
        json!(10_001),
        json!("abc"),
        json!(-1),
        json!(1.5),
        json!(null),
    ] {
        create(json!({"name": "x", "clusterTemplate": "base", "numMachines": n}))
            .await
            .assert_error(400);
    }
    // Above the template's size limit (base allows 100).
    create(json!({"name": "x", "clusterTemplate": "base", "numMachines": 101}))
        .await
        .assert_error(400);
    create(json!({"clusterTemplate": "base", "numMachines": 1}))
        .await
        .assert_error(400);
    create(json!({"name": "bad name!", "clusterTemplate": "base", "numMachines": 1}))
        .await
        .assert_error(400);
    create(json!({"name": "x", "clusterTemplate": "base", "numMachines": 1, "bogus": 1}))
        .await
        .assert_error(400);
    create(
        json!({"name": "x", "clusterTemplate": "base", "numMachines": 1, "services": ["mysql"]}),
    )
    .await
    .assert_error(400);
    create(json!({"name": "x", "clusterTemplate": "base", "numMachines": 1, "provider": "nope"}))
        .await
        .assert_error(404);
    create(
        json!({"name": "x", "clusterTemplate": "base", "numMachines": 1, "hardwaretype": "nope"}),
    )
    .await
    .assert_error(404);
    let huge = vec![b' '; 1024 * 1024 + 10];
    let r = srv
        .raw(Method::POST, "/v2/clusters", &Auth::Demo, &[], Some(huge))
        .await;
    assert_eq!(r.assert_error(413), "body_too_large");

    for bad in ["abc", "-1", "123456789012345678901234567890", "1.5"] {
        for path in [
            format!("/v2/clusters/{bad}"),
            format!("/v2/clusters/{bad}/status"),
            format!("/v2/clusters/{bad}/plans"),
            format!("/v2/clusters/{bad}/config"),
        ] {
            srv.get(&path, &Auth::Demo).await.assert_error(400);
        }
        srv.delete(&format!("/v2/clusters/{bad}"), &Auth::Demo)
            .await
            .assert_error(400);
        srv.post(
            &format!("/v2/clusters/{bad}/abort"),
            &Auth::Demo,
            json!(null),
        )
        .await
        .assert_error(400);
    }
    srv.get("/v2/clusters/99999999", &Auth::Demo)
        .await
        .assert_error(404);
    srv.post("/v2/clusters/99999999/pause", &Auth::Demo, json!(null))
        .await
        .assert_error(404);
    srv.put(
        &format!("/v2/clusters/{id}/config"),
        &Auth::Demo,
        json!({"restart": true}),
    )
    .await
    .assert_error(400);
    srv.put(
        &format!("/v2/clusters/{id}/config"),
        &Auth::Demo,
        json!({"config": 5}),
    )
    .await
    .assert_error(400);
    srv.post("/v2/getNodeProperties", &Auth::Demo, json!({}))
        .await
        .assert_error(400);
    srv.get("/v2/nothing-here", &Auth::Demo)
        .await
        .assert_error(404);
    assert_eq!(srv.cluster_count().await, before);
    srv.stop().await;
}

/// Bad input to the catalog: name mismatch 400, POST of an existing name 409, writes by a
/// non-admin 403, malformed bodies and versions 400; nothing changes.
#[tokio::test]
async fn bad_catalog_input_is_rejected() {
    let srv = TestServer::start().await;
    let admin = Auth::of("admin", "demo", "demo-admin-key");
    let export = srv.get("/v2/export", &admin).await.assert_ok().clone();
    let small = srv
        .get("/v2/hardwaretypes/small", &admin)
        .await
        .assert_ok()
        .clone();
    assert_eq!(small["version"], 1);

    srv.put(
        "/v2/hardwaretypes/small",
        &admin,
        json!({"name": "big", "providermap": {}}),
    )
    .await
    .assert_error(400);
    assert_eq!(
        srv.post(
            "/v2/hardwaretypes",
            &admin,
            json!({"name": "small", "providermap": {}})
        )
        .await
        .assert_error(409),
        "entity_exists"
    );
    srv.post(
        "/v2/hardwaretypes",
        &Auth::Demo,
        json!({"name": "tiny", "providermap": {}}),
    )
    .await
    .assert_error(403);
    srv.put(
        "/v2/hardwaretypes/small",
        &Auth::Demo,
        json!({"name": "small"}),
    )
    .await
    .assert_error(403);
    srv.delete("/v2/hardwaretypes/small", &Auth::Demo)
        .await
        .assert_error(403);
    srv.post("/v2/import", &Auth::Demo, json!({}))
        .await
        .assert_error(403);
    srv.raw(
        Method::POST,
        "/v2/services",
        &admin,
        &[],
        Some(b"{nope".to_vec()),
    )
    .await
    .assert_error(400);
    srv.post("/v2/services", &admin, json!({"name": "bad name"}))
        .await
        .assert_error(400);
    srv.post("/v2/providers", &admin, json!({"name": "p"}))
        .await
        .assert_error(400);
    srv.post(
        "/v2/clustertemplates",
        &admin,
        json!({"name": "t", "administration": {"leaseduration": {"initial": "2d", "max": "1d"}}}),
    )
    .await
    .assert_error(400);
    for v in ["0", "abc", "-1"] {
        srv.get(&format!("/v2/hardwaretypes/small/{v}"), &admin)
            .await
            .assert_error(400);
    }
    srv.get("/v2/hardwaretypes/nope", &admin)
        .await
        .assert_error(404);
    srv.get("/v2/hardwaretypes/small/7", &admin)
        .await
        .assert_error(404);
    srv.post("/v2/import", &admin, json!({"widgets": []}))
        .await
        .assert_error(400);
    srv.post(
        "/v2/import",
        &admin,
        json!({"services": [{"name": "ok"}, {"nope": 1}]}),
    )
    .await
    .assert_error(400);
    assert_eq!(srv.get("/v2/export", &admin).await.assert_ok(), &export);

    // A valid write makes a new version.
    let mut medium = small.clone();
    medium["description"] = json!("changed");
    let r = srv.put("/v2/hardwaretypes/small", &admin, medium).await;
    assert_eq!(r.assert_ok()["version"], 2);
    assert_eq!(
        srv.get("/v2/hardwaretypes/small", &admin).await.assert_ok()["description"],
        "changed"
    );
    assert_eq!(
        srv.get("/v2/hardwaretypes/small/1", &admin)
            .await
            .assert_ok()["version"],
        1
    );
    srv.stop().await;
}

/// Bad input to the tenant endpoints: existing tenant 409, name mismatch 400, bad names 400.
#[tokio::test]
async fn bad_tenant_input_is_rejected() {
    let srv = TestServer::start().await;
    let tenants = srv
        .get("/v2/tenants", &Auth::Superadmin)
        .await
        .assert_ok()
        .clone();
    srv.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": {"name": "demo"}}),
    )
    .await
    .assert_error(409);
    srv.put(
        "/v2/tenants/x",
        &Auth::Superadmin,
        json!({"tenant": {"name": "y"}}),
    )
    .await
    .assert_error(400);
    srv.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": {"name": "a b"}}),
    )
    .await
    .assert_error(400);
    srv.post("/v2/tenants", &Auth::Superadmin, json!({"name": "flat"}))
        .await
        .assert_error(400);
    srv.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": {"name": "q", "maxClusters": -3}}),
    )
    .await
    .assert_error(400);
    srv.post(
        "/v2/tenants/ghost/apikeys",
        &Auth::Superadmin,
        json!({"user": "admin"}),
    )
    .await
    .assert_error(404);
    let short = srv
        .post(
            "/v2/tenants/demo/apikeys",
            &Auth::Superadmin,
            json!({"user": "demo", "key": "short"}),
        )
        .await;
    assert_eq!(short.assert_error(400), "invalid_key");
    srv.get("/v2/tenants/ghost", &Auth::Superadmin)
        .await
        .assert_error(404);
    assert_eq!(
        srv.get("/v2/tenants", &Auth::Superadmin).await.assert_ok(),
        &tenants
    );
    srv.stop().await;
}

/// A tenant over its quota gets 409 and no cluster.
#[tokio::test]
async fn tenant_quota_is_enforced() {
    let srv = TestServer::start().await;
    srv.put(
        "/v2/tenants/demo",
        &Auth::Superadmin,
        json!({"tenant": {"name": "demo", "maxClusters": 1, "maxNodes": 2}}),
    )
    .await
    .assert_ok();
    srv.create_cluster("base", 2).await;
    srv.post(
        "/v2/clusters",
        &Auth::Demo,
        json!({"name": "x", "clusterTemplate": "base", "numMachines": 1}),
    )
    .await
    .assert_error(409);
    assert_eq!(srv.cluster_count().await, 1);
    // The demo key still works after the tenant update (the tenant keeps its id).
    srv.get("/v2/clusters", &Auth::Demo).await.assert_ok();
    srv.stop().await;
}

/// Bad input to the provisioner API: take by an unregistered provisioner 403, finish by a
/// worker that does not own the task 417, finish with missing fields 400, bad registrations 400,
/// heartbeat of an unknown provisioner 404, calls without the superadmin key 401.
#[tokio::test]
async fn bad_provisioner_input_is_rejected() {
    let srv = TestServer::start().await;
    let ghost = Worker {
        client: &srv,
        provisioner: "ghost".into(),
        worker: "w".into(),
    };
    srv.create_cluster("base", 1).await;
    ghost.take_reply().await.assert_error(403);
    let worker = Worker::register(&srv, "p1", "w1").await;
    let task = worker.take().await.expect("a task");
    let before = srv
        .cluster_status(task["clusterId"].as_str().unwrap())
        .await;

    let other = worker.sibling("w2");
    assert_eq!(
        other.finish_reply(&task, 0).await.assert_error(417),
        "not_task_owner"
    );
    ghost.finish_reply(&task, 0).await.assert_error(403);
    for missing in ["provisionerId", "workerId", "taskId", "status"] {
        let mut body = json!({"provisionerId": "p1", "workerId": "w1",
                              "taskId": task["taskId"], "status": 0});
        body.as_object_mut().unwrap().remove(missing);
        srv.prov(Method::POST, "/v2/tasks/finish", body)
            .await
            .assert_error(400);
    }
    for body in [
        json!({"provisionerId": "p1", "workerId": "w1", "taskId": "garbage", "status": 0}),
        json!({"provisionerId": "p1", "workerId": "w1", "taskId": task["taskId"], "status": "x"}),
        json!({"provisionerId": "p1", "workerId": "w1", "taskId": task["taskId"], "status": 0,
               "ipaddresses": "nope"}),
    ] {
        srv.prov(Method::POST, "/v2/tasks/finish", body)
            .await
            .assert_error(400);
    }
    srv.prov(
        Method::POST,
        "/v2/tasks/finish",
        json!({"provisionerId": "p1", "workerId": "w1", "taskId": "99999999-002-001", "status": 0}),
    )
    .await
    .assert_error(404);
    srv.prov(Method::POST, "/v2/tasks/take", json!({"workerId": "w1"}))
        .await
        .assert_error(400);
    assert_eq!(
        srv.cluster_status(task["clusterId"].as_str().unwrap())
            .await,
        before,
        "rejected finishes change nothing"
    );
    // The owner's finish (status as a numeric string) is accepted; a second one is 417.
    let mut body = json!({"provisionerId": "p1", "workerId": "w1", "taskId": task["taskId"],
                          "status": "0", "unknownKey": true});
    srv.prov(Method::POST, "/v2/tasks/finish", body.clone())
        .await
        .assert_ok();
    body["status"] = json!(0);
    srv.prov(Method::POST, "/v2/tasks/finish", body)
        .await
        .assert_error(417);

    for body in [
        json!({"id": "other", "host": "h", "port": 1, "capacityTotal": 1}),
        json!({"id": "p2", "port": 1, "capacityTotal": 1}),
        json!({"id": "p2", "host": "h", "capacityTotal": 1}),
        json!({"id": "p2", "host": "h", "port": 1, "capacityTotal": 0}),
        json!({"id": "p2", "host": "h", "port": 70000, "capacityTotal": 1}),
    ] {
        srv.prov(Method::PUT, "/v2/provisioners/p2", body)
            .await
            .assert_error(400);
    }
    srv.prov(Method::POST, "/v2/provisioners/p2/heartbeat", json!({}))
        .await
        .assert_error(404);
    srv.prov(
        Method::POST,
        "/v2/provisioners/p1/heartbeat",
        json!({"usage": {}}),
    )
    .await
    .assert_ok();
    srv.raw(
        Method::POST,
        "/v2/tasks/take",
        &Auth::Anonymous,
        &[("Coopr-ApiKey", "demo-key")],
        Some(br#"{"provisionerId":"p1","workerId":"w1"}"#.to_vec()),
    )
    .await
    .assert_error(401);
    let provisioners = srv.get("/v2/provisioners", &Auth::Superadmin).await;
    let provisioners = provisioners.assert_ok().as_array().unwrap().clone();
    assert_eq!(provisioners.len(), 1);
    assert_eq!(provisioners[0]["id"], "p1");
    srv.stop().await;
}

/// After a restart on the same data dir, clusters, jobs and the catalog are all there, and a job
/// that was half done resumes where it stopped.
#[tokio::test]
async fn restart_keeps_state_and_resumes_jobs() {
    let srv = TestServer::start().await;
    let done_id = {
        let worker = Worker::register(&srv, "p1", "w1").await;
        let done = srv.create_cluster("base", 1).await;
        worker.drive().await;
        let _half = srv.create_cluster("lamp", 2).await;
        for _ in 0..3 {
            let task = worker.take().await.expect("a task");
            worker.finish(&task, 0).await;
        }
        // One task in progress when the server stops.
        worker.take().await.expect("a task");
        done
    };
    let clusters_before = srv
        .get("/v2/clusters", &Auth::Demo)
        .await
        .assert_ok()
        .clone();
    let export_before = srv.get("/v2/export", &Auth::Demo).await.assert_ok().clone();
    let (data_dir, dir) = srv.stop().await;

    let srv = TestServer::start_config(common::config(&data_dir)).await;
    assert_eq!(
        srv.get("/v2/clusters", &Auth::Demo).await.assert_ok(),
        &clusters_before
    );
    assert_eq!(
        srv.get("/v2/export", &Auth::Demo).await.assert_ok(),
        &export_before
    );
    assert_eq!(srv.cluster_status(&done_id).await["status"], "active");
    let half = clusters_before
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "pending")
        .expect("the half-done cluster")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = srv.cluster_status(&half).await;
    assert_eq!(status["stepscompleted"], 3);
    let plans = srv
        .get(&format!("/v2/clusters/{half}/plans"), &Auth::Demo)
        .await;
    assert_eq!(plans.assert_ok().as_array().unwrap().len(), 2);

    // The provisioner re-registers (its earlier incarnation's task is released) and finishes.
    let worker = Worker::register(&srv, "p1", "w1").await;
    let ran = worker.drive().await;
    let status = srv.cluster_status(&half).await;
    assert_eq!(status["status"], "active", "{status}");
    assert_eq!(
        status["stepstotal"].as_u64().unwrap(),
        3 + ran as u64,
        "only the remaining tasks ran"
    );
    srv.stop().await;
    drop(dir);
}

/// A task held past its timeout is handed out again with its attempt counted; the first
/// worker's late finish is refused with 417.
#[tokio::test]
async fn timed_out_task_is_retried() {
    let srv = TestServer::start_with(|c| c.task_timeout_ms = 300).await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    srv.create_cluster("base", 1).await;
    let task = worker.take().await.expect("a task");
    assert_eq!(task["attempt"], 1);
    let second = worker.sibling("w2");
    let again = wait_for("the task to time out", || async { second.take().await }).await;
    assert_eq!(again["taskId"], task["taskId"]);
    assert_eq!(again["attempt"], 2);
    worker.finish_reply(&task, 0).await.assert_error(417);
    second.finish(&again, 0).await;
    srv.stop().await;
}

/// A provisioner that stops heartbeating is declared dead: its task goes to another provisioner,
/// and the dead one must register again.
#[tokio::test]
async fn dead_provisioner_task_moves_to_another() {
    let srv = TestServer::start_with(|c| c.provisioner_timeout_ms = 300).await;
    let p1 = Worker::register(&srv, "p1", "w1").await;
    srv.create_cluster("base", 1).await;
    let task = p1.take().await.expect("a task");
    let p2 = Worker::register(&srv, "p2", "w1").await;
    // p2 keeps polling (each poll shows it is alive); p1 is silent.
    let moved = wait_for("p1's task to move to p2", || async { p2.take().await }).await;
    assert_eq!(moved["taskId"], task["taskId"]);
    let late = p1.finish_reply(&task, 0).await;
    assert!(
        [403, 417].contains(&late.status.as_u16()),
        "late finish of a dead provisioner: {late:?}"
    );
    late.assert_error(late.status.as_u16());
    p2.finish(&moved, 0).await;
    let provisioners = srv.get("/v2/provisioners", &Auth::Superadmin).await;
    let ids: Vec<&str> = provisioners
        .assert_ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p2"]);
    srv.stop().await;
}

/// `/status` answers Coopr's plain `OK`; `/v2/status` names the DC and node; `/metrics` is
/// Prometheus text with coopr's metrics.
#[tokio::test]
async fn status_and_metrics() {
    let srv = TestServer::start_with(|c| {
        c.dc = "dc9".into();
        c.node = "n7".into();
    })
    .await;
    srv.create_cluster("base", 1).await;
    let plain = srv.get("/status", &Auth::Anonymous).await;
    assert_eq!(plain.status.as_u16(), 200);
    assert_eq!(plain.text, "OK\n");
    assert!(plain
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let status = srv.get("/v2/status", &Auth::Anonymous).await;
    let status = status.assert_ok();
    assert_eq!(status["dc"], "dc9");
    assert_eq!(status["node"], "n7");
    let metrics = srv.get("/metrics", &Auth::Anonymous).await;
    assert_eq!(metrics.status.as_u16(), 200);
    assert!(metrics.text.contains("coopr_"), "{}", metrics.text);
    assert!(metrics.text.contains("coopr_clusters"), "{}", metrics.text);
    srv.stop().await;
}

/// Errors raised by the framework rather than a handler (wrong method, undecodable path or
/// query) are also 4xx `{code, message}` JSON.
#[tokio::test]
async fn framework_errors_are_json() {
    let srv = TestServer::start().await;
    let id = srv.create_cluster("base", 1).await;
    let r = srv
        .call(
            Method::PATCH,
            &format!("/v2/clusters/{id}"),
            &Auth::Demo,
            None,
        )
        .await;
    assert_eq!(r.assert_error(405), "method_not_allowed");
    srv.get("/v2/clusters?status=a&status=b", &Auth::Demo)
        .await
        .assert_error(400);
    srv.get("/v2/clusters/%FF/status", &Auth::Demo)
        .await
        .assert_error(400);
    srv.get("/v2/hardwaretypes/%FF", &Auth::Demo)
        .await
        .assert_error(400);
    srv.stop().await;
}

/// A service added to the catalog after the cluster was created can be added to the cluster
/// once the template allows it (template sync): its tasks run with its definition.
#[tokio::test]
async fn template_sync_then_add_new_service() {
    let srv = TestServer::start().await;
    let admin = Auth::of("admin", "demo", "demo-admin-key");
    let worker = Worker::register(&srv, "p1", "w1").await;
    let id = srv.create_cluster("lamp", 1).await;
    let base = format!("/v2/clusters/{id}");
    srv.post(
        &format!("{base}/clustertemplate/sync"),
        &Auth::Demo,
        json!(null),
    )
    .await
    .assert_error(409);
    worker.drive().await;

    srv.post(
        "/v2/services",
        &admin,
        json!({"name": "redis", "provisioner": {"actions": {
            "install": {"type": "fake", "fields": {"script": "install redis"}},
            "start": {"type": "fake", "fields": {"script": "start redis"}}}}}),
    )
    .await
    .assert_ok();
    // The cluster's template snapshot does not allow redis yet.
    srv.post(
        &format!("{base}/services"),
        &Auth::Demo,
        json!({"services": ["redis"]}),
    )
    .await
    .assert_error(400);
    let mut lamp = srv
        .get("/v2/clustertemplates/lamp", &admin)
        .await
        .assert_ok()
        .clone();
    lamp["compatibility"]["services"]
        .as_array_mut()
        .unwrap()
        .push(json!("redis"));
    srv.put("/v2/clustertemplates/lamp", &admin, lamp)
        .await
        .assert_ok();
    srv.post(
        &format!("{base}/clustertemplate/sync"),
        &Auth::Demo,
        json!(null),
    )
    .await
    .assert_ok();
    let cluster = srv.get(&base, &Auth::Demo).await.assert_ok().clone();
    assert_eq!(cluster["clusterTemplate"]["version"], 2);

    let tasks = run_operation(
        &srv,
        &worker,
        &id,
        Method::POST,
        &format!("{base}/services"),
        Some(json!({"services": ["redis"]})),
        "add_services",
    )
    .await;
    let redis: Vec<(&str, &Value)> = tasks
        .iter()
        .filter(|t| t["config"]["service"]["name"] == "redis")
        .map(|t| {
            (
                t["taskName"].as_str().unwrap(),
                &t["config"]["service"]["action"]["fields"],
            )
        })
        .collect();
    assert_eq!(
        redis,
        [
            ("INSTALL", &json!({"script": "install redis"})),
            ("START", &json!({"script": "start redis"}))
        ]
    );
    let cluster = srv.get(&base, &Auth::Demo).await.assert_ok().clone();
    let node_services = cluster["nodes"][0]["services"].as_array().unwrap();
    assert!(
        node_services
            .iter()
            .any(|s| s["name"] == "redis" && s["provisioner"].is_object()),
        "{node_services:?}"
    );
    srv.stop().await;
}

/// A worker whose take was committed but whose answer was lost (it asks again while the log says
/// it holds a task) gets the same task back, instead of the task waiting for its timeout; other
/// workers never get a task someone holds.
#[tokio::test]
async fn lost_take_answer_hands_the_task_back() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    srv.create_cluster("base", 1).await;
    let task = worker.take().await.expect("a task");
    let again = worker.take().await.expect("the held task again");
    assert_eq!(again["taskId"], task["taskId"]);
    assert_eq!(
        again["attempt"], task["attempt"],
        "no new attempt was started"
    );
    assert!(
        worker.sibling("w2").take().await.is_none(),
        "a held task is not handed to another worker"
    );
    worker.finish(&again, 0).await;
    srv.stop().await;
}

/// Deleting what does not exist (a catalog entity, a version of it, a tenant) answers 404
/// `not_found` and writes nothing: no log entry, so no replication record either.
#[tokio::test]
async fn deleting_what_does_not_exist_is_404_and_writes_nothing() {
    let srv = TestServer::start().await;
    let admin = Auth::of("admin", "demo", "demo-admin-key");
    let records = || {
        srv.app()
            .core
            .read()
            .outbox(coopr_types::ShardId::GLOBAL)
            .map(|o| o.last_position())
    };
    wait_for("the seeding to finish", || async {
        srv.get("/v2/clustertemplates/base", &admin)
            .await
            .status
            .is_success()
            .then_some(())
    })
    .await;
    let before = records();
    for path in [
        "/v2/clustertemplates/nothing-here",
        "/v2/clustertemplates/lamp/999",
        "/v2/services/nothing-here",
    ] {
        let reply = srv.delete(path, &admin).await;
        assert_eq!(
            reply.assert_error(404),
            "not_found",
            "{path}: {}",
            reply.text
        );
    }
    let reply = srv.delete("/v2/tenants/nobody", &Auth::Superadmin).await;
    assert_eq!(reply.assert_error(404), "not_found", "{}", reply.text);
    assert_eq!(records(), before, "no record for the replicas");
    // What exists is still deleted.
    srv.delete("/v2/clustertemplates/base", &admin)
        .await
        .assert_ok();
    srv.get("/v2/clustertemplates/base", &admin)
        .await
        .assert_error(404);
    srv.stop().await;
}

/// The cluster config's macros reach a provisioner expanded for the task's node (Coopr's
/// `%host.self%`, `%num.service.<svc>%`, `%cluster.owner%`, `join(map(...))`), except in the
/// provider's tasks (CREATE, CONFIRM), which get the config as written. A macro that cannot be
/// expanded fails the task's attempts (the worker gets no task) until the job fails, with the
/// reason in its message.
#[tokio::test]
async fn cluster_config_macros_are_expanded_for_each_node() {
    let srv = TestServer::start().await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    let config = json!({
        "me": "%host.self%",
        "count": "%num.service.base%",
        "owner": "%cluster.owner%",
        "all": "%join(map(host.service.base,'$:2181'),',')%",
        "nested": {"list": ["first=%host.service.base[0]%"]},
    });
    let created = srv
        .post(
            "/v2/clusters",
            &Auth::Demo,
            json!({"name": "zk", "clusterTemplate": "base", "numMachines": 2, "config": config}),
        )
        .await;
    let id = created.assert_ok()["id"].as_str().expect("id").to_string();
    let mut service_tasks = 0;
    while let Some(task) = worker.take().await {
        let cluster = &task["config"]["cluster"];
        match task["taskName"].as_str() {
            Some("CREATE" | "CONFIRM") => assert_eq!(cluster["me"], "%host.self%"),
            _ => {
                let n = task["config"]["nodenum"].as_u64().expect("nodenum");
                assert_eq!(cluster["me"], format!("node{n}.test"), "{task}");
                assert_eq!(cluster["count"], "2");
                assert_eq!(cluster["owner"], "demo");
                let all = cluster["all"].as_str().expect("all");
                assert_eq!(all.split(',').count(), 2, "{all}");
                assert!(all.split(',').all(|h| h.ends_with(".test:2181")), "{all}");
                let first = cluster["nested"]["list"][0].as_str().expect("list");
                assert!(first.starts_with("first=node"), "{first}");
                service_tasks += 1;
            }
        }
        worker.finish(&task, 0).await;
    }
    assert!(service_tasks > 0, "no service task ran");
    assert_eq!(srv.cluster_status(&id).await["status"], "active");
    // The config as stored and shown stays unexpanded.
    let shown = srv.get(&format!("/v2/clusters/{id}"), &Auth::Demo).await;
    assert_eq!(shown.assert_ok()["config"]["me"], "%host.self%");

    tracing::info!("--- an instance past the last node: the job fails, saying why");
    let created = srv
        .post(
            "/v2/clusters",
            &Auth::Demo,
            json!({"name": "bad", "clusterTemplate": "base", "numMachines": 1,
                   "config": {"x": "%host.service.base[5]%"}}),
        )
        .await;
    let id = created.assert_ok()["id"].as_str().expect("id").to_string();
    let status = common::wait_for("the job to fail", || async {
        if let Some(task) = worker.take().await {
            assert!(
                matches!(task["taskName"].as_str(), Some("CREATE" | "CONFIRM")),
                "a task with an unexpandable config was handed out: {task}"
            );
            worker.finish(&task, 0).await;
        }
        let status = srv.cluster_status(&id).await;
        (status["actionstatus"] == "failed").then_some(status)
    })
    .await;
    assert_eq!(status["status"], "incomplete", "{status}");
    let shown = srv.get(&format!("/v2/clusters/{id}"), &Auth::Demo).await;
    assert!(
        shown.text.contains("instance_out_of_range"),
        "the reason is shown: {}",
        shown.text
    );
    let metrics = srv.get("/metrics", &Auth::Superadmin).await;
    assert!(
        metrics
            .text
            .contains("coopr_macro_expansion_failures_total 3"),
        "{}",
        metrics.text
    );
    srv.stop().await;
}

/// A provisioner registering itself without a key, as Coopr's Ruby provisioner does.
async fn register_without_key(srv: &TestServer) -> common::Reply {
    let body = json!({"id": "p1", "host": "127.0.0.1", "port": 1, "capacityTotal": 1});
    let body = serde_json::to_vec(&body).expect("json");
    srv.raw(
        Method::PUT,
        "/v2/provisioners/p1",
        &Auth::Anonymous,
        &[],
        Some(body),
    )
    .await
}

/// Legacy Coopr clients send `Coopr-UserID`/`Coopr-TenantID` and no key. By default every API
/// refuses them (401 `unauthorized`); `trusted-headers` on one API serves them there only, as
/// who the headers say (admin included), while a key that is presented is still checked.
#[tokio::test]
async fn trusted_headers_serve_legacy_clients_on_the_chosen_api_only() {
    let no_key = |user: &str, tenant: &str| Auth::of(user, tenant, "");
    let body = |id: &str| {
        serde_json::to_vec(&json!({"id": id, "host": "127.0.0.1", "port": 1, "capacityTotal": 1}))
            .expect("json")
    };

    tracing::info!("--- keys everywhere (the default)");
    let srv = TestServer::start().await;
    let refused = srv.get("/v2/clusters", &no_key("demo", "demo")).await;
    assert_eq!(refused.assert_error(401), "unauthorized");
    let refused = register_without_key(&srv).await;
    assert_eq!(refused.assert_error(401), "unauthorized");
    srv.stop().await;

    tracing::info!("--- the provisioner API trusts its network, the user API does not");
    let srv = TestServer::start_with(|c| {
        c.provisioner_api_auth = coopr_server::AuthMode::TrustedHeaders;
    })
    .await;
    register_without_key(&srv).await.assert_ok();
    let wrong = srv
        .raw(
            Method::PUT,
            "/v2/provisioners/p1",
            &Auth::Anonymous,
            &[("Coopr-ApiKey", "not-a-key")],
            Some(body("p1")),
        )
        .await;
    assert_eq!(
        wrong.assert_error(401),
        "unauthorized",
        "a presented key is checked"
    );
    let refused = srv.get("/v2/clusters", &no_key("demo", "demo")).await;
    assert_eq!(refused.assert_error(401), "unauthorized");
    srv.stop().await;

    tracing::info!("--- the user API trusts the headers");
    let srv =
        TestServer::start_with(|c| c.user_api_auth = coopr_server::AuthMode::TrustedHeaders).await;
    let id = srv
        .post(
            "/v2/clusters",
            &no_key("demo", "demo"),
            json!({"name": "legacy", "clusterTemplate": "base", "numMachines": 1}),
        )
        .await
        .assert_ok()["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Another user of the tenant does not see demo's cluster; its admin does.
    let other = srv
        .get(&format!("/v2/clusters/{id}"), &no_key("bob", "demo"))
        .await;
    assert_eq!(other.assert_error(404), "not_found");
    srv.get(&format!("/v2/clusters/{id}"), &no_key("admin", "demo"))
        .await
        .assert_ok();
    let unknown = srv
        .get("/v2/clusters", &no_key("demo", "nosuchtenant"))
        .await;
    assert_eq!(unknown.assert_error(404), "not_found");
    let wrong = srv
        .get("/v2/clusters", &Auth::of("demo", "demo", "not-a-key"))
        .await;
    assert_eq!(
        wrong.assert_error(401),
        "unauthorized",
        "a presented key is checked"
    );
    let refused = register_without_key(&srv).await;
    assert_eq!(refused.assert_error(401), "unauthorized");
    srv.stop().await;
}

/// `GET /v2/admin/dcs` lists every node as it answers for itself (here one node, which
/// answers from its own state); only the superadmin may ask.
#[tokio::test]
async fn the_nodes_of_every_dc_are_listed_for_the_superadmin_only() {
    let srv = TestServer::start().await;
    let refused = srv.get("/v2/admin/dcs", &Auth::Demo).await;
    assert_eq!(refused.assert_error(403), "forbidden");
    let listed = srv.get("/v2/admin/dcs", &Auth::Superadmin).await;
    let nodes = listed.assert_ok()["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["this"], true);
    assert_eq!(nodes[0]["reachable"], true);
    assert_eq!(nodes[0]["role"], "leader");
    assert_eq!(nodes[0]["ready"], true, "{nodes:?}");
    srv.stop().await;
}

/// Past the job retention (2 s here), the leader retires finished jobs out of memory to the
/// job archive: the cluster's plans, one plan, `/status` and the listing answer exactly as
/// they did from memory, and still do after a restart (the log re-applies the retirement into
/// a fresh archive) and after one with a snapshot taken in between (the archive comes back
/// from the snapshot).
#[tokio::test]
async fn retired_jobs_are_served_from_the_archive_across_restarts() {
    let retention_ms = 2_000;
    let srv = TestServer::start_with(|c| {
        c.job_retention_ms = retention_ms;
        c.snapshot_every = 1_000_000;
    })
    .await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    let id = srv.create_cluster("lamp", 2).await;
    worker.drive().await;
    async fn seen(srv: &TestServer, id: &str) -> (Value, Value, Value, Value) {
        let plans = srv
            .get(&format!("/v2/clusters/{id}/plans"), &Auth::Demo)
            .await
            .assert_ok()
            .clone();
        let create = plans[1]["id"].as_str().expect("a job id").to_string();
        let one = srv
            .get(&format!("/v2/clusters/{id}/plans/{create}"), &Auth::Demo)
            .await
            .assert_ok()
            .clone();
        let list = srv
            .get("/v2/clusters", &Auth::Demo)
            .await
            .assert_ok()
            .clone();
        (plans, one, srv.cluster_status(id).await, list)
    }
    let parsed: coopr_types::ClusterId = id.parse().expect("cluster id");
    let held = |srv: &TestServer| {
        let state = srv.app().core.read();
        let record = state.cluster(parsed).expect("cluster");
        (record.jobs.len(), record.retired_jobs.len())
    };
    // Read within the retention: from memory (checked after the reads).
    let finished = std::time::Instant::now();
    let before = seen(&srv, &id).await;
    assert_eq!(held(&srv), (2, 0));
    assert!(finished.elapsed().as_millis() < u128::from(retention_ms));
    assert_eq!(before.0.as_array().unwrap().len(), 2, "{}", before.0);
    assert_eq!(before.2["actionstatus"], "complete");
    wait_for("the jobs retired", || async {
        (held(&srv) == (0, 2)).then_some(())
    })
    .await;
    assert_eq!(seen(&srv, &id).await, before);
    let missing = srv
        .get(&format!("/v2/clusters/{id}/plans/{id}-009"), &Auth::Demo)
        .await;
    assert_eq!(missing.assert_error(400), "invalid_job_id");

    // A restart re-applies the log: the retirement refills the archive.
    let (dir, keep) = srv.stop().await;
    let cfg = || {
        let mut cfg = common::config(&dir);
        cfg.job_retention_ms = retention_ms;
        cfg
    };
    let srv = TestServer::start_config(cfg()).await;
    wait_for("the log re-applied", || async {
        srv.app().core.read().cluster(parsed).map(|_| ())
    })
    .await;
    assert_eq!(held(&srv), (0, 2));
    assert_eq!(seen(&srv, &id).await, before);

    // Now with a snapshot: the archive is restored from it.
    let raft = srv.app().core.raft();
    raft.trigger_snapshot().await.expect("snapshot");
    wait_for("the snapshot", || async {
        raft.status().snapshot_index.map(|_| ())
    })
    .await;
    srv.stop().await;
    let srv = TestServer::start_config(cfg()).await;
    assert_eq!(held(&srv), (0, 2));
    assert_eq!(seen(&srv, &id).await, before);
    srv.stop().await;
    drop(keep);
}

/// A DC alone in its deployment has no replica to ship records to: the driver drops its
/// outboxes' records once one holds 32, so they do not fill up to the DC-wide capacity.
#[tokio::test]
async fn a_dc_alone_trims_its_outboxes() {
    let srv = TestServer::start_with(|c| c.shard_count = 1).await;
    let worker = Worker::register(&srv, "p1", "w1").await;
    for _ in 0..12 {
        srv.create_cluster("base", 1).await;
        worker.drive().await;
    }
    let shard = coopr_types::ShardId(0);
    wait_for("the outbox trimmed", || async {
        let state = srv.app().core.read();
        let outbox = state.outbox(shard).expect("shard 0");
        (outbox.next_seq > 32 && outbox.records.len() < 32).then_some(())
    })
    .await;
    srv.stop().await;
}
