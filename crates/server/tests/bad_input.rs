//! Bad input, route by route, in a deployment of three single-node DCs (static placement:
//! shard s belongs to DC `s mod 3` by name; a owns the global shard).
//!
//! Properties checked:
//! - every route answers malformed, oversized, deeply nested and wrong-typed bodies, bad IDs,
//!   unnormalized paths and bad credentials with its 4xx and stable `code`, and writes nothing
//!   (every DC's dump is unchanged), also when the request is forwarded to another DC;
//! - values at their limit are accepted and replicate: a cluster config and a catalog entity
//!   nested to the bound reach every DC, which then all agree on every shard;
//! - a path with dot segments is never forwarded (the forwarder's client would resolve them to
//!   another path at the receiver);
//! - a provisioner's result for a task of another DC's shard gets a terminal 409
//!   `task_not_here` naming the owner, not a retryable 503.

mod common;

use common::dcs::{converged, Deployment, DCS};
use common::{wait_for, Auth};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The API's bounds (`coopr_server::api::limits`), as a client sees them.
const MAX_JSON_DEPTH: usize = 32;
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Every DC's copy of every shard (without outboxes), to show that a refused request wrote
/// nothing.
async fn dumps(deployment: &Deployment) -> Vec<Value> {
    let mut out = Vec::new();
    for dc in DCS {
        let reply = deployment
            .dc(dc)
            .get("/v2/admin/dump", &Auth::Superadmin)
            .await;
        let mut dump = reply.assert_ok().clone();
        // Outboxes are trimmed in the background once every replica has their records; each
        // trim, like every applied entry, also moves the DC's entry-time floor
        // (`local.clock_ms`).
        for shard in dump
            .as_object_mut()
            .into_iter()
            .flat_map(|d| d.values_mut())
        {
            if let Some(shard) = shard.as_object_mut() {
                shard.remove("replication");
                if let Some(local) = shard.get_mut("local").and_then(Value::as_object_mut) {
                    local.remove("clock_ms");
                }
            }
        }
        out.push(dump);
    }
    out
}

/// The first place where two JSON values differ (a path and both values), if any.
fn difference(before: &Value, after: &Value, path: &str) -> Option<String> {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (b, a) = (
                    b.get(k).unwrap_or(&Value::Null),
                    a.get(k).unwrap_or(&Value::Null),
                );
                difference(b, a, &format!("{path}/{k}"))
            })
        }
        _ if before == after => None,
        _ => Some(format!("{path}: {before} -> {after}")),
    }
}

/// An object nested `levels` deep (`{"v":{"v":...{"v":1}}}`): a body with it as a field
/// nests `levels + 1` deep.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!({ "v": inner }))
}

fn long(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// One bad request and the error it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    auth: Auth,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    path: &str,
    body: Value,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_string(),
        auth: Auth::Demo,
        headers: Vec::new(),
        body: Some(serde_json::to_vec(&body).expect("json")),
        status,
        code,
    }
}

impl Case {
    fn auth(mut self, auth: Auth) -> Case {
        self.auth = auth;
        self
    }

    fn provisioner(mut self) -> Case {
        self.auth = Auth::Anonymous;
        self.headers.push(("Coopr-ApiKey", "admin-key".into()));
        self
    }

    fn raw(mut self, body: &[u8]) -> Case {
        self.body = Some(body.to_vec());
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Case {
        self.headers.push((name, value));
        self
    }
}

fn cluster(extra: Value) -> Value {
    let mut body = json!({"name": "dev", "clusterTemplate": "lamp", "numMachines": 1});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

fn finish(extra: Value) -> Value {
    let mut body = json!({"provisionerId": "p1", "workerId": "w1", "taskId": "00000001-001-001",
        "status": 0});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

fn service(extra: Value) -> Value {
    let mut body = json!({"name": "svc1", "description": "a service",
        "dependencies": {}, "provisioner": {"actions": {}}});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// The table: every route with what is wrong with its request. `own` is a cluster of the DC
/// the requests go to; `foreign` one of another DC (requests for it are forwarded).
fn cases(own: &str, foreign: &str) -> Vec<Case> {
    use Method as M;
    let too_deep = nested(MAX_JSON_DEPTH);
    let issue_deep = nested(121);
    let big = json!({ "blob": long(MAX_VALUE_BYTES) });
    let mut cases = vec![
        // Credentials.
        case(
            "no identity",
            M::POST,
            "/v2/clusters",
            cluster(json!({})),
            401,
            "unauthorized",
        )
        .auth(Auth::Anonymous),
        case(
            "wrong key",
            M::POST,
            "/v2/clusters",
            cluster(json!({})),
            401,
            "unauthorized",
        )
        .auth(Auth::of("demo", "demo", "not-the-key")),
        case(
            "key of another tenant",
            M::POST,
            "/v2/clusters",
            cluster(json!({})),
            401,
            "unauthorized",
        )
        .auth(Auth::of("admin", "demo", "admin-key")),
        case(
            "user id too long",
            M::GET,
            "/v2/clusters",
            Value::Null,
            400,
            "value_too_large",
        )
        .auth(Auth::of(&long(256), "demo", "demo-key")),
        case(
            "not the tenant admin",
            M::POST,
            "/v2/services",
            service(json!({})),
            403,
            "forbidden",
        ),
        case(
            "provisioner key of a tenant",
            M::POST,
            "/v2/tasks/take",
            json!({"provisionerId": "p1", "workerId": "w1"}),
            401,
            "unauthorized",
        )
        .auth(Auth::Anonymous)
        .header("Coopr-ApiKey", "demo-key".into()),
        // Malformed and wrong-typed bodies.
        case(
            "malformed create",
            M::POST,
            "/v2/clusters",
            Value::Null,
            400,
            "invalid_json",
        )
        .raw(b"{\"name\": \"dev\","),
        case(
            "wrong-typed numMachines",
            M::POST,
            "/v2/clusters",
            cluster(json!({"numMachines": "many"})),
            400,
            "invalid_json",
        ),
        case(
            "wrong-typed config",
            M::POST,
            "/v2/clusters",
            cluster(json!({"config": [1]})),
            400,
            "invalid_json",
        ),
        case(
            "unknown field",
            M::POST,
            "/v2/clusters",
            cluster(json!({"nmae": "x"})),
            400,
            "invalid_json",
        ),
        case(
            "bad cluster name",
            M::POST,
            "/v2/clusters",
            cluster(json!({"name": "a b"})),
            400,
            "invalid_name",
        ),
        case(
            "idempotency key too long",
            M::POST,
            "/v2/clusters",
            cluster(json!({})),
            400,
            "invalid_idempotency_key",
        )
        .header("Idempotency-Key", long(257)),
        // Nesting and sizes.
        case(
            "config nested as in the issue",
            M::POST,
            "/v2/clusters",
            cluster(json!({"config": issue_deep})),
            400,
            "json_too_deep",
        ),
        case(
            "config one level too deep",
            M::POST,
            "/v2/clusters",
            cluster(json!({"config": {"v": too_deep}})),
            400,
            "json_too_deep",
        ),
        case(
            "config too large",
            M::POST,
            "/v2/clusters",
            cluster(json!({"config": big})),
            400,
            "value_too_large",
        ),
        case(
            "dnsSuffix of the issue",
            M::POST,
            "/v2/clusters",
            cluster(json!({"dnsSuffix": long(700_000)})),
            400,
            "value_too_large",
        ),
        case(
            "dnsSuffix one byte too long",
            M::POST,
            "/v2/clusters",
            cluster(json!({"dnsSuffix": long(254)})),
            400,
            "value_too_large",
        ),
        case(
            "description too long",
            M::POST,
            "/v2/clusters",
            cluster(json!({"description": long(4097)})),
            400,
            "value_too_large",
        ),
        case(
            "providerFields too large",
            M::POST,
            "/v2/clusters",
            cluster(json!({"providerFields": big})),
            400,
            "value_too_large",
        ),
        case(
            "string over the body bound",
            M::POST,
            "/v2/clusters",
            cluster(json!({"description": long(128 * 1024 + 1)})),
            400,
            "value_too_large",
        ),
        case(
            "body over 1 MiB",
            M::POST,
            "/v2/clusters",
            cluster(json!({"description": [long(600_000), long(600_000)]})),
            413,
            "body_too_large",
        ),
        // Catalog and tenants (written at a, the global shard's owner).
        case(
            "catalog entity too deep",
            M::POST,
            "/v2/services",
            service(json!({"provisioner": {"actions": issue_deep}})),
            400,
            "json_too_deep",
        )
        .auth(Auth::of("admin", "demo", "demo-admin-key")),
        case(
            "catalog entity too large",
            M::POST,
            "/v2/services",
            service(json!({"description": long(MAX_VALUE_BYTES)})),
            400,
            "value_too_large",
        )
        .auth(Auth::of("admin", "demo", "demo-admin-key")),
        case(
            "malformed catalog entity",
            M::POST,
            "/v2/services",
            json!({"name": 5}),
            400,
            "invalid_entity",
        )
        .auth(Auth::of("admin", "demo", "demo-admin-key")),
        case(
            "import too deep",
            M::POST,
            "/v2/import",
            json!({"services": [issue_deep]}),
            400,
            "json_too_deep",
        )
        .auth(Auth::of("admin", "demo", "demo-admin-key")),
        case(
            "tenant description too long",
            M::POST,
            "/v2/tenants",
            json!({"tenant": {"name": "t2", "description": long(4097)}}),
            400,
            "value_too_large",
        )
        .auth(Auth::Superadmin),
        case(
            "tenant wrong-typed quota",
            M::POST,
            "/v2/tenants",
            json!({"tenant": {"name": "t2", "maxClusters": "lots"}}),
            400,
            "invalid_json",
        )
        .auth(Auth::Superadmin),
        case(
            "key user too long",
            M::POST,
            "/v2/tenants/demo/apikeys",
            json!({"user": long(256)}),
            400,
            "value_too_large",
        )
        .auth(Auth::Superadmin),
        // Clusters by ID.
        case(
            "bad cluster id",
            M::GET,
            "/v2/clusters/not-an-id",
            Value::Null,
            400,
            "invalid_cluster_id",
        ),
        case(
            "put config too deep",
            M::PUT,
            &format!("/v2/clusters/{own}/config"),
            json!({"config": issue_deep}),
            400,
            "json_too_deep",
        ),
        case(
            "put config too large",
            M::PUT,
            &format!("/v2/clusters/{own}/config"),
            json!({"config": big}),
            400,
            "value_too_large",
        ),
        case(
            "put config too deep, forwarded",
            M::PUT,
            &format!("/v2/clusters/{foreign}/config"),
            json!({"config": issue_deep}),
            400,
            "json_too_deep",
        ),
        case(
            "expire wrong type",
            M::POST,
            &format!("/v2/clusters/{own}"),
            json!({"expireTime": "soon"}),
            400,
            "invalid_json",
        ),
        case(
            "too many services",
            M::POST,
            &format!("/v2/clusters/{own}/services"),
            json!({"services": vec!["x"; 1001]}),
            400,
            "value_too_large",
        ),
        // Paths.
        case(
            "no such route",
            M::GET,
            "/v2/nothing",
            Value::Null,
            404,
            "no_route",
        ),
        case(
            "wrong method",
            M::PATCH,
            "/v2/clusters",
            Value::Null,
            405,
            "method_not_allowed",
        ),
        // Provisioner API.
        case(
            "register host too long",
            M::PUT,
            "/v2/provisioners/p1",
            json!({"host": long(254), "port": 1, "capacityTotal": 1}),
            400,
            "value_too_large",
        )
        .provisioner(),
        case(
            "register bad id",
            M::PUT,
            "/v2/provisioners/a%20b",
            json!({"host": "h", "port": 1, "capacityTotal": 1}),
            400,
            "invalid_name",
        )
        .provisioner(),
        case(
            "register wrong-typed port",
            M::PUT,
            "/v2/provisioners/p1",
            json!({"host": "h", "port": "eighty", "capacityTotal": 1}),
            400,
            "invalid_json",
        )
        .provisioner(),
        case(
            "take worker id too long",
            M::POST,
            "/v2/tasks/take",
            json!({"provisionerId": "p1", "workerId": long(256)}),
            400,
            "value_too_large",
        )
        .provisioner(),
        case(
            "finish result too deep",
            M::POST,
            "/v2/tasks/finish",
            finish(json!({"result": issue_deep})),
            400,
            "json_too_deep",
        )
        .provisioner(),
        case(
            "finish result too large",
            M::POST,
            "/v2/tasks/finish",
            finish(json!({"result": big})),
            400,
            "value_too_large",
        )
        .provisioner(),
        case(
            "finish hostname too long",
            M::POST,
            "/v2/tasks/finish",
            finish(json!({"hostname": long(254)})),
            400,
            "value_too_large",
        )
        .provisioner(),
        case(
            "finish bad task id",
            M::POST,
            "/v2/tasks/finish",
            finish(json!({"taskId": "task"})),
            400,
            "invalid_task_id",
        )
        .provisioner(),
        case(
            "finish wrong-typed status",
            M::POST,
            "/v2/tasks/finish",
            finish(json!({"status": [0]})),
            400,
            "missing_field",
        )
        .provisioner(),
    ];
    // The same deep value as a bare body, on every route that takes a body.
    for (method, path) in [
        (M::POST, "/v2/clusters".to_string()),
        (M::POST, format!("/v2/clusters/{own}")),
        (
            M::POST,
            format!("/v2/clusters/{own}/services/mysql/restart"),
        ),
        (M::POST, "/v2/getNodeProperties".to_string()),
        (M::POST, "/v2/tenants".to_string()),
        (M::POST, "/v2/import".to_string()),
    ] {
        cases.push(case(
            "bare deep body",
            method,
            &path,
            nested(200),
            400,
            "json_too_deep",
        ));
    }
    cases
}

/// Walks the table against DC b (requests for the global shard and for `foreign` are
/// forwarded to their owner), checks status and code of each and that no DC's state changed;
/// then values at their bounds are accepted and replicate to every DC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_everywhere_and_replication_still_flows() {
    let deployment = Deployment::start().await;
    let b = deployment.dc("b");
    let own = b.create_cluster("base", 1).await;
    let foreign = deployment.dc("a").create_cluster("base", 1).await;
    wait_for("the clusters to replicate", || converged(&deployment)).await;

    let before = dumps(&deployment).await;
    let mut wrong = Vec::new();
    for case in cases(&own, &foreign) {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = b
            .raw(
                case.method.clone(),
                &case.path,
                &case.auth,
                &headers,
                case.body.clone(),
            )
            .await;
        let answered = (reply.status.as_u16(), reply.body["code"].as_str());
        let has_message = reply.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty());
        if answered != (case.status, Some(case.code)) || !has_message {
            wrong.push(format!(
                "{}: {} {} answered {} {}",
                case.what,
                case.method,
                case.path.chars().take(80).collect::<String>(),
                reply.status,
                reply.text.chars().take(200).collect::<String>()
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    let after = dumps(&deployment).await;
    for ((dc, before), after) in DCS.iter().zip(&before).zip(&after) {
        let changed = difference(before, after, "");
        assert!(
            changed.is_none(),
            "a refused request changed {dc}'s state: {changed:?}"
        );
    }

    // At the bounds: accepted, and every DC reads them.
    let at_bound = cluster(
        json!({"config": nested(MAX_JSON_DEPTH - 1), "dnsSuffix": long(253),
        "description": long(4096)}),
    );
    for dc in DCS {
        let reply = deployment
            .dc(dc)
            .post("/v2/clusters", &Auth::Demo, at_bound.clone())
            .await;
        reply.assert_ok();
    }
    let admin = Auth::of("admin", "demo", "demo-admin-key");
    let entity =
        service(json!({"provisioner": {"actions": {}, "deep": nested(MAX_JSON_DEPTH - 3)}}));
    b.post("/v2/services", &admin, entity).await.assert_ok();
    wait_for("every DC to agree", || converged(&deployment)).await;
    for dc in DCS {
        let service = deployment.dc(dc).get("/v2/services/svc1", &admin).await;
        assert_eq!(
            service.assert_ok()["provisioner"]["deep"],
            nested(MAX_JSON_DEPTH - 3),
            "{dc}"
        );
    }
    deployment.stop().await;
}

/// Sends `GET {path}` as it is (an HTTP client would resolve its dot segments first);
/// returns the status and the body.
async fn get_verbatim(base: &str, path: &str) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The body may be chunked: the JSON object is between the first `{` and the last `}`.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) => serde_json::from_str(&body[start..=end]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// A path with dot segments under another DC's cluster is refused (400 `invalid_path`) at the
/// node it reached, never relayed: relayed, the forwarder's client resolved it to the owner's
/// `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unnormalized_paths_are_refused_not_forwarded() {
    let deployment = Deployment::start().await;
    // Cluster 0 is in shard 0, which a owns; the requests go to b.
    let base = &deployment.dc("b").base;
    for path in [
        "/v2/clusters/00000000/../../../status",
        "/v2/clusters/00000000/%2e%2e/%2e%2e/%2e%2e/status",
        "/v2/clusters/00000000/./status",
    ] {
        let (status, body) = get_verbatim(base, path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_path")),
            "{path}: {body}"
        );
    }
    deployment.stop().await;
}

/// A provisioner's result for a task of a shard another DC owns gets a terminal 409
/// `task_not_here` that names the owner (before: a 503 with Retry-After, retried forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_for_another_dcs_task_is_refused_with_its_owner() {
    let deployment = Deployment::start().await;
    // Task of cluster 0 (shard 0, owned by a), reported at b.
    let reply = deployment
        .dc("b")
        .prov(
            Method::POST,
            "/v2/tasks/finish",
            finish(json!({"taskId": "00000000-001-001"})),
        )
        .await;
    assert_eq!(reply.assert_error(409), "task_not_here", "{reply:?}");
    assert!(reply.header("retry-after").is_none(), "{reply:?}");
    let message = reply.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("datacenter a"), "{message}");
    deployment.stop().await;
}
