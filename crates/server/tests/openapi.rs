//! The OpenAPI document (`GET /v2/openapi.json`) against the server that serves it: it is made
//! from the router's own route calls, and here every method of every documented path is sent
//! to the server, so a documented method that is not routed, or a routed one that is not
//! documented, fails.

mod common;

use common::TestServer;
use serde_json::Value;

/// A value for each path parameter that the router matches (handlers may still refuse it).
fn sample(parameter: &str) -> &'static str {
    match parameter {
        "shard" => "0",
        "id" => "00000001",
        "action" => "start",
        "version" => "1",
        _ => "x",
    }
}

/// `path` with its `{parameters}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(parameter) => sample(parameter).to_string(),
                None => segment.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routed_method_is_documented_and_no_other() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let document: Value = http
        .get(format!("{}/v2/openapi.json", srv.base))
        .send()
        .await
        .expect("GET openapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(document["openapi"], "3.0.3");
    let paths = document["paths"].as_object().expect("paths");
    // The user, admin and provisioner APIs, the console and the document itself are there.
    for expected in [
        "/v2/clusters/{id}",
        "/v2/admin/shards/{shard}/handover",
        "/v2/tasks/take",
        "/v2/clustertemplates/{name}",
        "/ui/",
        "/v2/openapi.json",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    let mut checked = 0;
    for (path, operations) in paths {
        let url = format!("{}{}", srv.base, concrete(path));
        for method in ["GET", "POST", "PUT", "DELETE"] {
            let documented = operations.get(method.to_ascii_lowercase()).is_some();
            let answer = http
                .request(method.parse().expect("method"), &url)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or_default();
            let unrouted = status == 405 || (status == 404 && body["code"] == "no_route");
            if documented {
                assert!(
                    !unrouted,
                    "{method} {path} is documented but not routed: {status} {body}"
                );
                let operation = &operations[method.to_ascii_lowercase()];
                assert!(
                    operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{method} {path} has no summary"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is routed but not documented: {body}"
                );
                assert_eq!(body["code"], "method_not_allowed", "{method} {path}");
            }
            checked += 1;
        }
    }
    assert!(
        checked > 100,
        "only {checked} method and path pairs checked"
    );
    srv.stop().await;
}
