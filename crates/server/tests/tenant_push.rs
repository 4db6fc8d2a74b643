//! Coopr's tenant push: a provisioner registered with host and port is told how many workers to
//! run per tenant (`PUT /v2/tenants/{id}` with `{"workers": n}`), up to its capacity, and
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

async fn set_workers(srv: &TestServer, workers: u64) {
    srv.put(
        "/v2/tenants/acme",
        &Auth::Superadmin,
        json!({"tenant": {"name": "acme", "workers": workers}}),
    )
    .await
    .assert_ok();
}

#[tokio::test]
async fn tenant_workers_are_pushed_to_provisioners() {
    let (port, received) = mock_provisioner().await;
    let srv = TestServer::start().await;
    srv.prov(
        Method::PUT,
        "/v2/provisioners/p1",
        json!({"id": "p1", "host": "127.0.0.1", "port": port, "capacityTotal": 4}),
    )
    .await
    .assert_ok();
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

    set_workers(&srv, 3).await;
    wait_for("the push of 3 workers", || async {
        (last(&received) == Some(("PUT".into(), json!({"workers": 3, "resources": {}}))))
            .then_some(())
    })
    .await;
    // More than the provisioner's capacity: it runs what it can.
    set_workers(&srv, 6).await;
    wait_for("the push of 4 workers", || async {
        (last(&received).is_some_and(|(m, b)| m == "PUT" && b["workers"] == 4)).then_some(())
    })
    .await;

    let refused = srv.delete("/v2/tenants/acme", &Auth::Superadmin).await;
    assert_eq!(refused.assert_error(409), "tenant_has_workers");

    set_workers(&srv, 0).await;
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
