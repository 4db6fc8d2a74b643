//! Coopr's tenant push: a provisioner registered with host and port is told how many workers to
//! run per tenant (`PUT /v2/tenants/{id}` with `{"workers": n, "resources": ...}`), up to its
//! capacity, with the tenant's live plugin resources, and
//! `DELETE`d when a tenant's workers go to 0; a tenant with workers cannot be deleted.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::Method as HttpMethod;
use axum::routing::put;
use axum::Router;
use common::{wait_for, Auth, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// What the mock provisioner received: method, tenant id, body.
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A provisioner's tenant API on a free port, recording every request.
async fn mock_provisioner() -> (u16, Received) {
    let received: Received = Arc::default();
    async fn record(
        State(received): State<Received>,
        method: HttpMethod,
        Path(tenant): Path<String>,
        body: axum::body::Bytes,
    ) -> &'static str {
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        received
            .lock()
            .unwrap()
            .push((method.to_string(), tenant, body));
        "{}"
    }
    let app = Router::new()
        .route("/v2/tenants/{tenant}", put(record).delete(record))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, received)
}

fn last(received: &Received) -> Option<(String, Value)> {
    received
        .lock()
        .unwrap()
        .last()
        .map(|(method, _, body)| (method.clone(), body.clone()))
}

async fn set_workers(srv: &TestServer, tenant: &str, workers: u64) {
    srv.put(
        &format!("/v2/tenants/{tenant}"),
        &Auth::Superadmin,
        json!({"tenant": {"name": tenant, "workers": workers}}),
    )
    .await
    .assert_ok();
}

/// Registers provisioner `p1` (capacity 4) at the mock's port, as a provisioner does.
async fn register_provisioner(srv: &TestServer, port: u16) {
    srv.prov(
        Method::PUT,
        "/v2/provisioners/p1",
        json!({"id": "p1", "host": "127.0.0.1", "port": port, "capacityTotal": 4}),
    )
    .await
    .assert_ok();
}

#[tokio::test]
async fn tenant_workers_are_pushed_to_provisioners() {
    let (port, received) = mock_provisioner().await;
    let srv = TestServer::start().await;
    register_provisioner(&srv, port).await;
    // Without workers (Coopr's default) nothing is pushed.
    srv.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": {"name": "acme"}}),
    )
    .await
    .assert_ok();
    let tenant = srv.get("/v2/tenants/acme", &Auth::Superadmin).await;
    assert_eq!(tenant.assert_ok()["workers"], 0);

    set_workers(&srv, "acme", 3).await;
    wait_for("the push of 3 workers", || async {
        (last(&received)
            == Some((
                "PUT".into(),
                json!({"workers": 3, "resources": {"automatortypes": {}, "providertypes": {}}}),
            )))
        .then_some(())
    })
    .await;
    // The provisioner's view shows what it was assigned, by tenant ID.
    let id = received.lock().unwrap().last().expect("a push").1.clone();
    let p1 = srv.get("/v2/provisioners/p1", &Auth::Superadmin).await;
    assert_eq!(p1.assert_ok()["assignments"], json!({ id.as_str(): 3 }));
    // More than the provisioner's capacity: it runs what it can.
    set_workers(&srv, "acme", 6).await;
    wait_for("the push of 4 workers", || async {
        (last(&received).is_some_and(|(m, b)| m == "PUT" && b["workers"] == 4)).then_some(())
    })
    .await;

    let refused = srv.delete("/v2/tenants/acme", &Auth::Superadmin).await;
    assert_eq!(refused.assert_error(409), "tenant_has_workers");

    set_workers(&srv, "acme", 0).await;
    wait_for(
        "the provisioner told to stop the tenant's workers",
        || async { (last(&received).is_some_and(|(m, _)| m == "DELETE")).then_some(()) },
    )
    .await;
    srv.delete("/v2/tenants/acme", &Auth::Superadmin)
        .await
        .assert_ok();
    // Every push named the same tenant (its internal id), and nothing was pushed twice.
    let all = received.lock().unwrap().clone();
    let ids: std::collections::BTreeSet<&String> = all.iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len(), 1, "{all:?}");
    assert_eq!(all.len(), 3, "{all:?}");
    srv.stop().await;
}

/// The push carries the tenant's live plugin resources in Coopr's shape (format and
/// permissions from the plugin type's `resourceTypes`), and a resource sync pushes again.
#[tokio::test]
async fn live_resources_are_pushed_and_a_sync_pushes_again() {
    let (port, received) = mock_provisioner().await;
    let srv = TestServer::start().await;
    srv.prov(
        Method::PUT,
        "/v2/plugins/automatortypes/shell",
        json!({"name": "shell", "classname": "ShellAutomator",
               "resourceTypes": {"scripts": {"format": "file", "permissions": "0755"},
                                 "archives": {"format": "archive"}}}),
    )
    .await
    .assert_ok();
    register_provisioner(&srv, port).await;
    set_workers(&srv, "demo", 2).await;
    wait_for("the push of 2 workers without resources", || async {
        (last(&received)
            == Some((
                "PUT".into(),
                json!({"workers": 2, "resources": {"automatortypes": {}, "providertypes": {}}}),
            )))
        .then_some(())
    })
    .await;

    let admin = Auth::of("admin", "demo", "demo-admin-key");
    let script = "/v2/plugins/automatortypes/shell/scripts/hello.sh";
    for body in ["echo one", "echo two"] {
        srv.client
            .raw(
                Method::POST,
                script,
                &admin,
                &[],
                Some(body.as_bytes().to_vec()),
            )
            .await
            .assert_ok();
    }
    srv.post(&format!("{script}/versions/2/stage"), &admin, Value::Null)
        .await
        .assert_ok();
    // Staged is not live: nothing new is pushed until the sync.
    let before_sync = received.lock().unwrap().len();
    srv.post("/v2/plugins/sync", &admin, Value::Null)
        .await
        .assert_ok();
    let expected = json!({"workers": 2, "resources": {
        "automatortypes": {"shell": {"scripts": {
            "format": "file", "permissions": "0755",
            "active": [{"name": "hello.sh", "version": 2}]}}},
        "providertypes": {}}});
    wait_for("the push of the synced script", || async {
        (last(&received) == Some(("PUT".into(), expected.clone()))).then_some(())
    })
    .await;
    let all = received.lock().unwrap().clone();
    assert_eq!(all.len(), before_sync + 1, "{all:?}");
    // The provisioner fetches what it was told of, by the tenant ID it was pushed.
    let tenant_id = &all.last().expect("a push").1;
    let fetched = reqwest::Client::new()
        .get(format!(
            "{}/v2/tenants/{tenant_id}/automatortypes/shell/scripts/hello.sh/versions/2",
            srv.client.base
        ))
        .header("Coopr-UserID", "admin")
        .header("Coopr-TenantID", tenant_id)
        .header("Coopr-ApiKey", "admin-key")
        .send()
        .await
        .expect("fetch");
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.text().await.expect("body"), "echo two");
    srv.stop().await;
}
