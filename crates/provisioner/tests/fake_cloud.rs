//! The shared fake cloud over HTTP (`coopr fake-cloud`): its endpoints, its counts, its state
//! file across a restart, its refusals, and the `fake` provider using it through `RemoteCloud`.
//!
//! Every test starts its own server on a free port (port 0) with its state in a temporary
//! directory, and shuts it down at the end.

use std::time::Duration;

use coopr_provisioner::fake::{CreateRequest, Injection};
use coopr_provisioner::{
    FakeBackend, FakeCloud, FakeCloudOptions, FakeCloudServer, FakeProvider, Plugin, RemoteCloud,
    RetryPolicy,
};
use serde_json::{json, Value};

async fn start(cloud: FakeCloud) -> FakeCloudServer {
    FakeCloudServer::start(cloud, "127.0.0.1:0")
        .await
        .expect("start the fake cloud")
}

fn remote(server: &FakeCloudServer) -> RemoteCloud {
    RemoteCloud::new(&server.url()).expect("fake cloud URL")
}

/// Sends `body` (raw bytes) to `path` and returns the status and the JSON answer.
async fn post_raw(
    server: &FakeCloudServer,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let json = response.json().await.expect("JSON answer");
    (status, json)
}

async fn get(server: &FakeCloudServer, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{}{path}", server.url()))
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

fn assert_error(answer: (u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], json!(code), "{}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// Create is idempotent on the node id over HTTP too: the same CREATE twice answers the same
/// machine and counts one create; a delete and a recreate count a second create and one
/// delete; confirm sees only the live machine; `GET /machines` lists every node id with its
/// counts, deleted ones included.
#[tokio::test]
async fn create_is_idempotent_and_counted_over_http() {
    let server = start(FakeCloud::default()).await;
    let cloud = remote(&server);
    let request = CreateRequest {
        cluster_name: Some("web".into()),
        nodenum: Some(1000),
        ..CreateRequest::default()
    };
    let first = cloud.create("n1", &request).await.expect("create");
    let again = cloud.create("n1", &request).await.expect("create again");
    assert!(first.created && !again.created);
    assert_eq!(first.machine, again.machine);
    assert_eq!(first.machine.hostname, "web-1000.coopr.local");
    assert_eq!(first.machine.provider_id, "fake-1");

    let confirmed = cloud
        .confirm("n1", Injection::default())
        .await
        .expect("confirm");
    assert_eq!(
        confirmed.as_ref().map(|m| m.provider_id.as_str()),
        Some("fake-1")
    );
    assert_eq!(
        cloud
            .confirm("n2", Injection::default())
            .await
            .expect("confirm"),
        None
    );

    let deleted = cloud
        .delete("n1", Injection::default())
        .await
        .expect("delete");
    assert_eq!(deleted.map(|m| m.provider_id), Some("fake-1".to_string()));
    assert_eq!(
        cloud
            .delete("n1", Injection::default())
            .await
            .expect("delete again"),
        None
    );
    assert_eq!(
        cloud
            .confirm("n1", Injection::default())
            .await
            .expect("confirm"),
        None
    );
    let recreated = cloud.create("n1", &request).await.expect("recreate");
    assert!(recreated.created);
    assert_eq!(recreated.machine.provider_id, "fake-2");
    cloud
        .create("n2", &CreateRequest::default())
        .await
        .expect("create n2");

    let (status, list) = get(&server, "/machines").await;
    assert_eq!(status, 200);
    assert_eq!(list["machinesCreated"], json!(3));
    assert_eq!(list["machinesAlive"], json!(2));
    let n1 = &list["machines"][0];
    assert_eq!(
        (
            &n1["nodeId"],
            &n1["providerId"],
            &n1["alive"],
            &n1["creates"],
            &n1["deletes"]
        ),
        (
            &json!("n1"),
            &json!("fake-2"),
            &json!(true),
            &json!(2),
            &json!(1)
        )
    );
    assert_eq!(n1["ipaddresses"]["access_v4"], json!("10.0.0.2"));
    assert_eq!(n1["hostname"], json!("web-1000.coopr.local"));
    assert_eq!(list["machines"][1]["nodeId"], json!("n2"));
    assert_eq!(cloud.machines().await.expect("list").machines.len(), 2);

    let (status, one) = get(&server, "/machines/n1").await;
    assert_eq!((status, &one["creates"]), (200, &json!(2)));
    assert_error(get(&server, "/machines/n3").await, 404, "unknown_node");
    server.shutdown().await.expect("shutdown");
}

/// The state file outlives the server: a new server on the same file knows every machine and
/// its counts, so a CREATE after the restart does not make a second machine.
#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fake-cloud.json");
    let server = start(FakeCloud::open(&path).expect("open")).await;
    let cloud = remote(&server);
    cloud
        .create("n1", &CreateRequest::default())
        .await
        .expect("create");
    cloud
        .create("n2", &CreateRequest::default())
        .await
        .expect("create");
    cloud
        .delete("n2", Injection::default())
        .await
        .expect("delete");
    server.shutdown().await.expect("shutdown");

    let server = start(FakeCloud::open(&path).expect("reopen")).await;
    let cloud = remote(&server);
    let again = cloud
        .create("n1", &CreateRequest::default())
        .await
        .expect("create");
    assert!(!again.created);
    assert_eq!(again.machine.provider_id, "fake-1");
    let list = cloud.machines().await.expect("list");
    assert_eq!((list.machines_created, list.machines_alive), (2, 1));
    let n2 = &list.machines[1];
    assert_eq!((n2.alive, n2.creates, n2.deletes), (false, 1, 1));
    server.shutdown().await.expect("shutdown");
}

/// Bad input is refused with a JSON error naming it, and changes nothing: malformed JSON,
/// unknown fields, a node id past its limit or with a slash, an out-of-range failure rate, a
/// body past the limit (413), an unknown route (404).
#[tokio::test]
async fn bad_input_is_refused_with_a_json_error() {
    use coopr_provisioner::fake::api::{MAX_BODY_BYTES, MAX_NODE_ID_BYTES};
    let server = start(FakeCloud::default()).await;
    assert_error(
        post_raw(&server, "/machines/n1/create", "{").await,
        400,
        "invalid_json",
    );
    assert_error(
        post_raw(&server, "/machines/n1/create", r#"{"color": "red"}"#).await,
        400,
        "invalid_json",
    );
    assert_error(
        post_raw(&server, "/machines/n1/create", r#"{"nodenum": "x"}"#).await,
        400,
        "invalid_json",
    );
    let at_limit = "n".repeat(MAX_NODE_ID_BYTES);
    let past_limit = "n".repeat(MAX_NODE_ID_BYTES + 1);
    assert_eq!(
        post_raw(&server, &format!("/machines/{at_limit}/create"), "")
            .await
            .0,
        200
    );
    assert_error(
        post_raw(&server, &format!("/machines/{past_limit}/create"), "").await,
        400,
        "invalid_node_id",
    );
    assert_error(
        post_raw(&server, "/machines/a%2Fb/create", "").await,
        400,
        "invalid_node_id",
    );
    assert_error(
        post_raw(&server, "/machines/n1/delete", r#"{"failureRate": 1.5}"#).await,
        400,
        "invalid_injection",
    );
    assert_error(
        post_raw(&server, "/machines/n1/create", r#"{"hostname": ""}"#).await,
        400,
        "invalid_name",
    );
    let padding = |total: usize| {
        let mut body = String::from(r#"{"hostname": "h"}"#);
        body.push_str(&" ".repeat(total - body.len()));
        body
    };
    assert_eq!(
        post_raw(&server, "/machines/n1/create", padding(MAX_BODY_BYTES))
            .await
            .0,
        200
    );
    assert_error(
        post_raw(&server, "/machines/n1/create", padding(MAX_BODY_BYTES + 1)).await,
        413,
        "body_too_large",
    );
    assert_error(get(&server, "/nothing").await, 404, "not_found");

    let (_, list) = get(&server, "/machines").await;
    assert_eq!(
        list["machinesCreated"],
        json!(2),
        "only the two good creates: {list}"
    );
    server.shutdown().await.expect("shutdown");
}

fn provider_task(name: &str, node: &str, provisioner: Value) -> Value {
    json!({"taskId": "00000001-001-001", "taskName": name, "nodeId": node, "clusterId": "00000001",
        "config": {"nodenum": 1000, "provider": {"providertype": "fake", "provisioner": provisioner}}})
}

/// Two provisioners (two `FakeProvider`s, as in two datacenters) on one shared cloud: a CREATE
/// run by both makes one machine, a CONFIRM by the other finds it, and a CONFIRM of a machine
/// the cloud does not have fails even when the task carries a provider id (the shared cloud's
/// answer stands). An injected failure reaches the task and creates nothing.
#[tokio::test]
async fn providers_in_two_datacenters_share_one_cloud() {
    let shared = FakeCloud::default();
    let server = start(shared.clone()).await;
    let dc_a = FakeProvider::on(FakeBackend::Remote(remote(&server)));
    let dc_b = FakeProvider::on(FakeBackend::Remote(remote(&server)));
    let created = dc_a.run(&provider_task("CREATE", "n1", json!({}))).await;
    let retried = dc_b.run(&provider_task("CREATE", "n1", json!({}))).await;
    assert!(created.is_success(), "{created:?}");
    assert_eq!(created.result, retried.result);
    assert_eq!(created.hostname.as_deref(), Some("node-1000.coopr.local"));
    assert!(
        retried.stdout.contains("found existing fake-1"),
        "{retried:?}"
    );
    assert!(dc_b
        .run(&provider_task("CONFIRM", "n1", json!({})))
        .await
        .is_success());
    assert_eq!(shared.record("n1").map(|m| m.creates), Some(1));

    let mut vouched = provider_task("CONFIRM", "n9", json!({}));
    vouched["config"]["providerid"] = json!("fake-7");
    let refused = dc_a.run(&vouched).await;
    assert_eq!(refused.status, 1);
    assert!(
        refused.stderr.contains("no machine for node n9"),
        "{refused:?}"
    );

    let failing = dc_a
        .run(&provider_task(
            "CREATE",
            "n2",
            json!({"failure_rate": "1.0"}),
        ))
        .await;
    assert_eq!(failing.status, 1);
    assert!(
        failing.stderr.contains("503") && failing.stderr.contains("injected_failure"),
        "{failing:?}"
    );
    assert!(shared.record("n2").is_none());

    assert!(dc_b
        .run(&provider_task("DELETE", "n1", json!({})))
        .await
        .is_success());
    assert_eq!(shared.machines_alive(), 0);
    server.shutdown().await.expect("shutdown");
}

/// A cloud that cannot be reached fails the task after the bounded retries, naming the URL
/// and the attempts; a cloud that comes up during the retries is used.
#[tokio::test]
async fn unreachable_cloud_fails_the_task_after_bounded_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let retry = RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let cloud = RemoteCloud::new(&format!("http://{address}"))
        .expect("url")
        .with_retry(retry);
    let provider = FakeProvider::on(FakeBackend::Remote(cloud));
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        provider.run(&provider_task("CREATE", "n1", json!({}))),
    )
    .await
    .expect("bounded");
    assert_eq!(outcome.status, 1);
    assert!(
        outcome.stderr.contains(&format!("http://{address}"))
            && outcome.stderr.contains("unreachable after 3 attempt(s)"),
        "{outcome:?}"
    );

    // The cloud starts while the provider retries: the CREATE goes through.
    let patient = RemoteCloud::new(&format!("http://{address}"))
        .expect("url")
        .with_retry(RetryPolicy {
            attempts: 50,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        });
    let provider = FakeProvider::on(FakeBackend::Remote(patient));
    let task = provider_task("CREATE", "n1", json!({}));
    let run = provider.run(&task);
    let late_start = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cloud = FakeCloud::new(FakeCloudOptions::default());
        FakeCloudServer::start(cloud, &address.to_string()).await
    };
    let (outcome, server) = tokio::join!(run, late_start);
    let server = server.expect("the port is still free");
    assert!(outcome.is_success(), "{outcome:?}");
    server.shutdown().await.expect("shutdown");
}
