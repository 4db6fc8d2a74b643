//! Cross-DC replication with the static placement: three DCs of one node each in this process,
//! each pulling the shards the others own.
//!
//! Properties checked:
//! - a DC creates clusters only in shards it owns (shard s belongs to DC `s mod 3` by name);
//! - after concurrent creates, runs and deletes in every DC, every DC's copy of every shard it
//!   does not own equals its owner's projection at the same position, and every lag reported by
//!   `/v2/admin/replication` (replica `lag_ms`, owner `unreplicated_records`) drops to 0;
//! - a DC serves reads of another DC's clusters from its replica copy (saying who served them
//!   and how stale the copy may be), lists them with its own, and forwards writes,
//!   `?consistency=strong` reads and plans to the owner, whose changes replicate back;
//! - tenants, API keys and the catalog are written at the global shard's owner (a) and read
//!   from the local copy everywhere: a tenant and key created at a work at b, whose cluster
//!   creation uses the catalog replicated from a; catalog and tenant writes sent to b apply at a;
//! - an owner trims a shard's outbox once every replica acknowledged its records, and never
//!   past a replica that has not;
//! - one lamp create ships exactly OperationStarted, one OperationCheckpoint per machine and
//!   OperationFinished over the wire (and the bytes are a fraction of the DC-log bytes);
//! - the pulls of one chain continue one after another, each chain from where it is.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::dcs::{converged, view, Deployment, DCS, SECRET, SHARDS, WITNESS};
use common::{wait_for, wait_until_seen, Auth, TestServer, Worker};
use serde_json::{json, Value};

fn owner_of(shard: u32) -> &'static str {
    DCS[(shard % DCS.len() as u32) as usize]
}

fn shard_of(id: &str) -> u32 {
    (id.parse::<u64>().expect("numeric id") % u64::from(SHARDS)) as u32
}

/// Clusters created concurrently in every DC land in shards their DC owns; after they run and
/// some are deleted, every replica converges to its owner (same position, same view) and the
/// replication report shows no lag anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_dcs_converge_to_their_owners() {
    let deployment = Deployment::start().await;
    let shards = deployment
        .dc("b")
        .get("/v2/admin/shards", &Auth::Superadmin)
        .await;
    let map = shards.assert_ok();
    assert_eq!(map["dcs"], json!(DCS));
    assert_eq!(map["shards"][4]["owner"], "b");
    assert_eq!(
        map["shards"][SHARDS as usize]["owner"], "a",
        "global: {map}"
    );

    tracing::info!("--- create clusters in every DC at once");
    let create_in = |dc: &'static str| {
        let server = deployment.dc(dc);
        async move {
            let mut ids = Vec::new();
            for i in 0..4 {
                let template = if i % 2 == 0 { "lamp" } else { "base" };
                ids.push(server.create_cluster(template, 2).await);
            }
            (dc.to_string(), ids)
        }
    };
    let (a, b, c) = tokio::join!(create_in("a"), create_in("b"), create_in("c"));
    let created: BTreeMap<String, Vec<String>> = [a, b, c].into_iter().collect();
    for (dc, ids) in &created {
        for id in ids {
            assert_eq!(
                owner_of(shard_of(id)),
                dc,
                "{dc} created {id} in a shard it does not own"
            );
        }
    }

    tracing::info!("--- drive every DC's clusters to ACTIVE");
    let drive_in = |dc: &'static str| {
        let server = deployment.dc(dc);
        async move {
            let worker = Worker::register(server, &format!("p-{dc}"), "w1").await;
            worker.drive().await
        }
    };
    tokio::join!(drive_in("a"), drive_in("b"), drive_in("c"));
    for (dc, ids) in &created {
        for id in ids {
            let status = deployment.dc(dc).cluster_status(id).await;
            assert_eq!(status["status"], "active", "{dc} {id}: {status}");
        }
    }

    tracing::info!("--- delete one cluster per DC");
    for (dc, ids) in &created {
        let server = deployment.dc(dc);
        server
            .delete(&format!("/v2/clusters/{}", ids[0]), &Auth::Demo)
            .await
            .assert_ok();
        let worker = Worker::register(server, &format!("p-{dc}"), "w1").await;
        worker.drive().await;
        assert_eq!(server.cluster_status(&ids[0]).await["status"], "terminated");
    }

    tracing::info!("--- wait for every replica to equal its owner");
    wait_for("replicas to converge", || converged(&deployment)).await;

    // A replica's copy is not empty: b holds a's deleted cluster as terminated.
    let a_deleted = &created["a"][0];
    let shard = shard_of(a_deleted).to_string();
    let b_copy = view(deployment.dc("b"), &shard).await;
    let cluster = &b_copy["view"]["clusters"][a_deleted.as_str()];
    assert_eq!(
        cluster["cluster"]["status"], "terminated",
        "b's copy of {a_deleted}: {b_copy}"
    );
    let metrics = deployment
        .dc("b")
        .client
        .raw(
            reqwest::Method::GET,
            "/metrics",
            &Auth::Anonymous,
            &[],
            None,
        )
        .await;
    assert!(
        metrics.text.contains("coopr_replication_lag_ms"),
        "{}",
        metrics.text
    );
    deployment.stop().await;
}

/// The records of one lamp create, read over HTTP as a replica reads them: exactly
/// OperationStarted, one OperationCheckpoint per machine, OperationFinished; and how many bytes
/// crossed for how many the owner's DC log took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_lamp_create_ships_three_kinds_of_records() {
    let deployment = Deployment::start_with(|c| {
        // The records are read again from the start below: keep them.
        c.trim_outboxes = false;
    })
    .await;
    let a = deployment.dc("a");
    let worker = Worker::register(a, "p-a", "w1").await;
    wait_for("the seeding to replicate", || converged(&deployment)).await;

    let log_before = a.app().core.proposed_bytes();
    let id = a.create_cluster("lamp", 3).await;
    worker.drive().await;
    assert_eq!(a.cluster_status(&id).await["status"], "active");
    let log_bytes = a.app().core.proposed_bytes() - log_before;

    let shard = shard_of(&id);
    // Pulled as a replica pulls: deflated.
    let pulled = reqwest::Client::new()
        .post(format!("{}/internal/replication/pull", a.base))
        .header("Coopr-Cluster-Secret", SECRET)
        .header("Accept-Encoding", "deflate")
        .json(&json!({
            "dc": "b",
            "cursors": {shard.to_string(): {"epoch": 1, "seq": 0}},
            "max_records": 1000,
            "wait_ms": 0,
        }))
        .send()
        .await
        .expect("pull");
    assert_eq!(pulled.status(), 200);
    assert_eq!(pulled.headers()["content-encoding"], "deflate");
    let bytes = pulled.bytes().await.expect("body");
    let json = coopr_server::replication::inflate(&bytes).expect("deflate");
    let answer: Value = serde_json::from_slice(&json).expect("json");
    let records = answer["shards"][shard.to_string()]["records"]
        .as_array()
        .expect("records")
        .clone();
    let kinds: Vec<&str> = records
        .iter()
        .filter_map(|r| r["kind"].as_object()?.keys().next().map(String::as_str))
        .collect();
    assert_eq!(
        kinds,
        [
            "OperationStarted",
            "OperationCheckpoint",
            "OperationCheckpoint",
            "OperationCheckpoint",
            "OperationFinished"
        ],
        "{answer}"
    );
    assert!(records.iter().all(|r| r["at_ms"].as_u64() > Some(0)));
    let ratio = bytes.len() as f64 / log_bytes as f64;
    println!(
        "lamp create (3 machines): {} cross-DC bytes over HTTP ({} before deflate), {log_bytes} DC-log bytes: ratio {:.1}% ({:.1}% before deflate)",
        bytes.len(),
        json.len(),
        ratio * 100.0,
        json.len() as f64 / log_bytes as f64 * 100.0
    );
    assert!(
        ratio < 0.10,
        "cross-DC bytes must stay under 10% of the DC log's ({:.1}%)",
        ratio * 100.0
    );

    // The wrong secret is refused; a follower would say where the leader is (one node: it is).
    let refused = reqwest::Client::new()
        .post(format!("{}/internal/replication/pull", a.base))
        .header("Coopr-Cluster-Secret", "wrong")
        .json(&json!({"dc": "b", "cursors": {}, "max_records": 1, "wait_ms": 0}))
        .send()
        .await
        .expect("pull");
    assert_eq!(refused.status(), 401);

    // Pipelined pulls: the pulls of one chain continue where the chain's previous answer ended
    // (not from their cursors), numbered in order; another chain starts from its cursors and
    // leaves the first one where it was.
    let pull_in_chain = |chain: u64, wait_ms: u64| {
        let url = format!("{}/internal/replication/pull", a.base);
        let cursors = json!({shard.to_string(): {"epoch": 1, "seq": 0}});
        async move {
            let reply = reqwest::Client::new()
                .post(url)
                .header("Coopr-Cluster-Secret", SECRET)
                .json(&json!({"dc": "b", "cursors": cursors, "max_records": 2,
                    "wait_ms": wait_ms, "chain": chain}))
                .send()
                .await
                .expect("pull");
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.expect("json"))
        }
    };
    // (status, the answer's number in its chain, the seqs of its records, the answer)
    let answer_of = |(status, answer): (u16, Value)| {
        let seqs: Vec<u64> = answer["shards"][shard.to_string()]["records"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["seq"].as_u64()).collect())
            .unwrap_or_default();
        ((status, answer["seq"].as_u64(), seqs), answer)
    };
    let (first, answer) = answer_of(pull_in_chain(7, 0).await);
    assert_eq!(first, (200, Some(0), vec![1, 2]), "{answer}");
    // Asked at once: the answer with records waits out the owner's spacing, then comes.
    let (second, answer) = answer_of(pull_in_chain(7, 1_000).await);
    assert_eq!(second, (200, Some(1), vec![3, 4]), "{answer}");
    assert_eq!(
        answer["shards"][shard.to_string()]["after"],
        json!({"epoch": 1, "seq": 2})
    );
    let (fresh, answer) = answer_of(pull_in_chain(8, 0).await);
    assert_eq!(fresh, (200, Some(0), vec![1, 2]), "{answer}");
    let (third, answer) = answer_of(pull_in_chain(7, 0).await);
    assert_eq!(third, (200, Some(2), vec![5]), "{answer}");

    wait_for("b and c to apply the create", || converged(&deployment)).await;
    deployment.stop().await;
}

/// The value of a `Coopr-Staleness-Ms` header.
fn staleness(reply: &common::Reply) -> u64 {
    reply
        .header("coopr-staleness-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no staleness header: {reply:?}"))
}

/// A cluster created in DC a: b serves its reads from b's replica copy (served by b, with a
/// staleness), lists it, and forwards writes (lease, delete), strong reads and plans to a; the
/// writes apply at a and replicate back to b. Other users and tenants see nothing at b either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_dcs_forward_writes_and_serve_replica_reads() {
    let deployment = Deployment::start().await;
    let (a, b) = (deployment.dc("a"), deployment.dc("b"));
    let worker = Worker::register(a, "p-a", "w1").await;
    let id = a.create_cluster("base", 1).await;
    assert_eq!(owner_of(shard_of(&id)), "a");
    worker.drive().await;
    let path = format!("/v2/clusters/{id}");

    // At the owner: served by a, never stale.
    let at_a = a.get(&path, &Auth::Demo).await;
    assert_eq!(at_a.assert_ok()["status"], "active");
    assert_eq!(at_a.header("coopr-served-by"), Some("a/a1"));
    assert_eq!(staleness(&at_a), 0);

    tracing::info!("--- b serves a's cluster from its replica copy");
    let at_b = wait_for("b's copy of the active cluster", || async {
        let reply = b.get(&path, &Auth::Demo).await;
        (reply.status == 200 && reply.body["status"] == "active").then_some(reply)
    })
    .await;
    assert_eq!(at_b.header("coopr-served-by"), Some("b/b1"));
    assert!(
        staleness(&at_b) < common::DEADLINE.as_millis() as u64,
        "{at_b:?}"
    );
    let detail = at_b.assert_ok();
    assert_eq!(detail["id"], id.as_str());
    assert_eq!(detail["account"], at_a.body["account"]);
    assert_eq!(detail["nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        detail["nodes"][0]["properties"],
        at_a.body["nodes"][0]["properties"]
    );
    assert!(detail["nodes"][0].get("actions").is_none(), "{detail}");
    assert_eq!(detail["progress"], at_a.body["progress"], "{detail}");
    let status = b.get(&format!("{path}/status"), &Auth::Demo).await;
    assert_eq!(status.assert_ok(), &a.cluster_status(&id).await);
    assert_eq!(status.header("coopr-served-by"), Some("b/b1"));
    for sub in ["config", "services"] {
        let local = b.get(&format!("{path}/{sub}"), &Auth::Demo).await;
        let owner = a.get(&format!("{path}/{sub}"), &Auth::Demo).await;
        assert_eq!(local.assert_ok(), owner.assert_ok(), "{sub}");
        assert_eq!(local.header("coopr-served-by"), Some("b/b1"), "{sub}");
    }
    // Plans are not replicated: the owner answers.
    let plans = b.get(&format!("{path}/plans"), &Auth::Demo).await;
    assert!(!plans.assert_ok().as_array().expect("plans").is_empty());
    assert_eq!(plans.header("coopr-served-by"), Some("a/a1"));
    // A bound the copy cannot meet goes to the owner too.
    let bounded = b
        .get(&format!("{path}?max_staleness_ms=0"), &Auth::Demo)
        .await;
    bounded.assert_ok();
    let served = bounded.header("coopr-served-by");
    assert!(
        served == Some("a/a1") || (served == Some("b/b1") && staleness(&bounded) == 0),
        "{bounded:?}"
    );

    // The list at b merges b's own clusters with its copies of the others'.
    let own = b.create_cluster("base", 1).await;
    let list = b.get("/v2/clusters", &Auth::Demo).await;
    let ids: Vec<&str> = list
        .assert_ok()
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&own.as_str()),
        "{ids:?}"
    );
    assert!(list.header("coopr-staleness-ms").is_some());
    // Visibility as for owned clusters: another tenant sees nothing at b.
    let admin = Auth::Superadmin;
    b.get(&path, &admin).await.assert_error(404);
    let other = b.get("/v2/clusters", &admin).await;
    assert!(other
        .assert_ok()
        .as_array()
        .expect("list")
        .iter()
        .all(|c| c["id"] != id.as_str()));

    tracing::info!("--- a write at b applies at a and replicates back");
    let create_time = at_a.body["createTime"].as_u64().expect("createTime");
    let expire = create_time + 3_600_000;
    let updated = b
        .client
        .raw(
            reqwest::Method::POST,
            &path,
            &Auth::Demo,
            &[("Idempotency-Key", "lease-1")],
            Some(serde_json::to_vec(&json!({"expireTime": expire})).expect("json")),
        )
        .await;
    updated.assert_ok();
    assert_eq!(updated.header("coopr-served-by"), Some("a/a1"));
    assert_eq!(
        a.get(&path, &Auth::Demo).await.assert_ok()["expireTime"],
        expire
    );
    // A strong read at b sees it at once (from the owner).
    let strong = b
        .get(&format!("{path}?consistency=strong"), &Auth::Demo)
        .await;
    assert_eq!(strong.assert_ok()["expireTime"], expire);
    assert_eq!(strong.header("coopr-served-by"), Some("a/a1"));
    assert_eq!(staleness(&strong), 0);
    wait_for("the lease to replicate to b", || async {
        let reply = b.get(&path, &Auth::Demo).await;
        (reply.body["expireTime"] == expire).then_some(())
    })
    .await;
    // A request forwarded across DCs once is not forwarded again.
    // b owns `own`: a refuses a request another DC already forwarded rather than forward it
    // again (sent with a plain client: the test client fails on any 5xx).
    let refused = reqwest::Client::new()
        .post(format!("{}/v2/clusters/{own}", a.base))
        .header("Coopr-UserID", "demo")
        .header("Coopr-TenantID", "demo")
        .header("Coopr-ApiKey", "demo-key")
        .header("Coopr-Forwarded-Dc", "c")
        .json(&json!({"expireTime": expire}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "not_owner");

    tracing::info!("--- a delete at b");
    b.delete(&path, &Auth::Demo).await.assert_ok();
    worker.drive().await;
    assert_eq!(a.cluster_status(&id).await["status"], "terminated");
    let strong = b
        .get(&format!("{path}/status?consistency=strong"), &Auth::Demo)
        .await;
    assert_eq!(strong.assert_ok()["status"], "terminated");
    wait_for("the delete to replicate to b", || async {
        let status = b.cluster_status(&id).await;
        (status["status"] == "terminated").then_some(())
    })
    .await;
    let status = b.get(&format!("{path}/status"), &Auth::Demo).await;
    assert_eq!(status.header("coopr-served-by"), Some("b/b1"));
    assert_eq!(status.assert_ok()["action"], "cluster_delete");
    // Terminated clusters stay listed, from the copy as at the owner; `status` filters them.
    let listed = |reply: &common::Reply| -> Vec<(String, String)> {
        reply
            .body
            .as_array()
            .expect("list")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or("").into(),
                    c["status"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    for server in [a, b] {
        let all = server.get("/v2/clusters", &Auth::Demo).await;
        assert!(
            listed(&all).contains(&(id.clone(), "terminated".into())),
            "{all:?}"
        );
        let live = server
            .get("/v2/clusters?status=active,pending", &Auth::Demo)
            .await;
        assert!(
            listed(&live).iter().all(|(listed, _)| *listed != id),
            "{live:?}"
        );
    }
    deployment.stop().await;
}

/// A tenant and API key created at a (the global shard's owner) become usable at b once
/// replicated: the tenant creates a cluster at b (in a shard b owns) from the catalog a
/// bootstrapped for it. Catalog and tenant writes sent to b are applied at a and replicate back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_records_are_written_at_the_owner_and_read_everywhere() {
    let deployment = Deployment::start().await;
    let (a, b) = (deployment.dc("a"), deployment.dc("b"));
    let admin = Auth::Superadmin;
    // b's seeded data came from a: the demo keys work at b although b never seeded.
    assert!(b.app().core.read().global.tenants.is_empty());

    tracing::info!("--- a tenant and its key, created at a");
    a.post(
        "/v2/tenants",
        &admin,
        json!({"tenant": {"name": "acme"}, "bootstrap": true}),
    )
    .await
    .assert_ok();
    a.post(
        "/v2/tenants/acme/apikeys",
        &admin,
        json!({"user": "admin", "key": "acme-key-0123"}),
    )
    .await
    .assert_ok();
    let acme = Auth::of("admin", "acme", "acme-key-0123");
    let templates = wait_for("acme's key and catalog to replicate to b", || async {
        let reply = b.get("/v2/clustertemplates", &acme).await;
        (reply.status == 200 && reply.body.as_array().is_some_and(|t| !t.is_empty()))
            .then_some(reply)
    })
    .await;
    assert_eq!(templates.header("coopr-served-by"), Some("b/b1"));
    let tenant = b.get("/v2/tenants/acme", &admin).await;
    assert_eq!(tenant.assert_ok()["name"], "acme");

    tracing::info!("--- acme creates a cluster at b from the replicated catalog");
    let created = b
        .post(
            "/v2/clusters",
            &acme,
            json!({"name": "web", "clusterTemplate": "base", "numMachines": 1}),
        )
        .await;
    let id = created.assert_ok()["id"].as_str().expect("id").to_string();
    assert_eq!(owner_of(shard_of(&id)), "b", "{id}");
    assert_eq!(created.header("coopr-served-by"), Some("b/b1"));
    let worker = Worker::register(b, "p-b", "w1").await;
    worker.drive().await;
    let status = b.get(&format!("/v2/clusters/{id}/status"), &acme).await;
    assert_eq!(status.assert_ok()["status"], "active");
    // The plan used the replicated service definitions: the `base` service's tasks are in it,
    // not only the machine's CREATE, CONFIRM and BOOTSTRAP.
    let steps = status.assert_ok()["stepstotal"].as_u64().unwrap_or(0);
    assert!(
        steps > 3,
        "service tasks were planned from the replicated catalog: {steps} steps"
    );

    tracing::info!("--- a catalog write sent to b applies at a and replicates back");
    let mut template = b
        .get("/v2/clustertemplates/base", &acme)
        .await
        .assert_ok()
        .clone();
    template["description"] = json!("edited at b");
    let put = b
        .client
        .raw(
            reqwest::Method::PUT,
            "/v2/clustertemplates/base",
            &acme,
            &[("Idempotency-Key", "edit-base-1")],
            Some(serde_json::to_vec(&template).expect("json")),
        )
        .await;
    put.assert_ok();
    assert_eq!(put.header("coopr-served-by"), Some("a/a1"));
    let at_a = a.get("/v2/clustertemplates/base", &acme).await;
    assert_eq!(at_a.assert_ok()["description"], "edited at b");
    wait_for("the edit to replicate to b", || async {
        let reply = b.get("/v2/clustertemplates/base", &acme).await;
        (reply.body["description"] == "edited at b").then_some(())
    })
    .await;
    // b wrote nothing of the global shard itself.
    assert_eq!(
        b.app()
            .core
            .read()
            .outbox(coopr_types::ShardId::GLOBAL)
            .map(|o| o.last_position().seq),
        Some(0)
    );

    tracing::info!("--- a tenant created at b is created at a");
    let beta = b
        .post("/v2/tenants", &admin, json!({"tenant": {"name": "beta"}}))
        .await;
    beta.assert_ok();
    assert_eq!(beta.header("coopr-served-by"), Some("a/a1"));
    a.get("/v2/tenants/beta", &admin).await.assert_ok();
    wait_for("beta to replicate to c", || async {
        let reply = deployment.dc("c").get("/v2/tenants/beta", &admin).await;
        (reply.status == 200).then_some(())
    })
    .await;
    // Another DC's forwarded global write is not forwarded again.
    let refused = reqwest::Client::new()
        .post(format!("{}/v2/tenants", b.base))
        .header("Coopr-UserID", "admin")
        .header("Coopr-TenantID", "superadmin")
        .header("Coopr-ApiKey", "admin-key")
        .header("Coopr-Forwarded-Dc", "c")
        .json(&json!({"tenant": {"name": "gamma"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 503);
    deployment.stop().await;
}

/// The records in the outbox of `shard` at `server`.
fn outbox_len(server: &TestServer, shard: coopr_types::ShardId) -> usize {
    server
        .app()
        .core
        .read()
        .outbox(shard)
        .map_or(0, |o| o.records.len())
}

/// Once every replica applied a shard's records, its owner trims them from the outbox; while a
/// replica is away, what it has not acknowledged stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outboxes_are_trimmed_once_every_replica_caught_up() {
    use coopr_types::ShardId;
    let mut deployment = Deployment::start().await;
    let a = deployment.dc("a");
    let worker = Worker::register(a, "p-a", "w1").await;
    let id = a.create_cluster("base", 1).await;
    worker.drive().await;
    let shard = ShardId(shard_of(&id));
    let last = a
        .app()
        .core
        .read()
        .outbox(shard)
        .expect("owned")
        .last_position();
    assert!(last.seq > 0);
    wait_for("a's outboxes to be trimmed", || async {
        (outbox_len(a, shard) == 0 && outbox_len(a, ShardId::GLOBAL) == 0).then_some(())
    })
    .await;
    // Trimming drops records, not positions.
    assert_eq!(
        a.app()
            .core
            .read()
            .outbox(shard)
            .expect("owned")
            .last_position(),
        last
    );
    for dc in ["b", "c"] {
        let state = deployment.dc(dc).app().core.read();
        assert_eq!(
            state.replica(shard).expect("replica").watermark,
            last,
            "{dc}"
        );
    }

    tracing::info!("--- with c away, a keeps what c has not acknowledged");
    let c = deployment.dcs.remove("c").expect("c");
    c.stop().await;
    let a = deployment.dc("a");
    let b = deployment.dc("b");
    a.post(
        "/v2/tenants",
        &Auth::Superadmin,
        json!({"tenant": {"name": "late"}}),
    )
    .await
    .assert_ok();
    let global_last = a
        .app()
        .core
        .read()
        .outbox(ShardId::GLOBAL)
        .expect("owned")
        .last_position();
    wait_for("b to apply the tenant", || async {
        let state = b.app().core.read();
        (state.replica(ShardId::GLOBAL)?.watermark == global_last).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(outbox_len(a, ShardId::GLOBAL), 1, "c never acknowledged it");
    deployment.stop().await;
}

/// Fencing: a DC cut off from the placement group's majority cannot renew its lease, so it
/// stops acknowledging writes (503 `lease_expired`, retryable) no later than one lease after
/// its last renewal, while it keeps serving reads from its copy. Its `/ready` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dc_without_a_placement_majority_stops_acknowledging_writes() {
    const LEASE_MS: u64 = 900;
    let mut deployment = Deployment::start_with(|c| {
        c.lease_ms = LEASE_MS;
        c.max_clock_offset_ms = 100;
    })
    .await;
    let id = deployment.dc("a").create_cluster("base", 1).await;
    tracing::info!("--- stop b and c: a's placement voter is alone");
    for dc in ["b", "c"] {
        let server = deployment.dcs.remove(dc).expect("running");
        server.stop().await;
    }
    let stopped = std::time::Instant::now();
    let a = deployment.dc("a");
    // A create through the raw HTTP client (the test client treats 5xx as a failure).
    let create = || async {
        let reply = reqwest::Client::new()
            .post(format!("{}/v2/clusters", a.base))
            .header("Coopr-UserID", "demo")
            .header("Coopr-TenantID", "demo")
            .header("Coopr-ApiKey", "demo-key")
            .json(&json!({"name": "late", "clusterTemplate": "base", "numMachines": 1}))
            .send()
            .await
            .expect("a answers");
        let status = reply.status().as_u16();
        let retry_after = reply.headers().contains_key("retry-after");
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        (status, retry_after, body)
    };
    let refused = wait_for("a to refuse writes", || async {
        let answer = create().await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    let waited = stopped.elapsed();
    let (_, retry_after, body) = &refused;
    assert_eq!(body["code"], "lease_expired", "{body}");
    assert!(retry_after, "{body}");
    // The last renewal was sent at most lease/3 before the stop (plus a renewal's timeout).
    assert!(
        waited.as_millis() < u128::from(LEASE_MS * 3),
        "writes were acknowledged {waited:?} after the majority went away"
    );
    // Writes stay refused; reads are still served.
    assert_eq!(create().await.0, 503);
    a.get(&format!("/v2/clusters/{id}"), &Auth::Demo)
        .await
        .assert_ok();
    let ready = reqwest::get(format!("{}/ready", a.base))
        .await
        .expect("ready answers");
    assert_eq!(ready.status(), 503);
    deployment.stop().await;
}

/// Sets the cluster's expire time through `via`, retried with one `Idempotency-Key`.
async fn set_expire(via: &TestServer, id: &str, expire: u64, key: &str) -> common::Reply {
    via.client
        .raw(
            reqwest::Method::POST,
            &format!("/v2/clusters/{id}"),
            &Auth::Demo,
            &[("Idempotency-Key", key)],
            Some(serde_json::to_vec(&json!({"expireTime": expire})).expect("json")),
        )
        .await
}

/// Asks DC `from` to hand `shard` over to DC `to`; how long until `to` owns it.
async fn hand_over(deployment: &Deployment, from: &str, to: &str, shard: u32) -> Duration {
    let started = Instant::now();
    deployment
        .dc(from)
        .post(
            &format!("/v2/admin/shards/{shard}/handover"),
            &Auth::Superadmin,
            json!({ "to": to }),
        )
        .await
        .assert_ok();
    let owner = deployment.dc(to);
    wait_for(&format!("{to} to own shard {shard}"), || async {
        (view(owner, &shard.to_string()).await["role"] == "owner").then_some(())
    })
    .await;
    started.elapsed()
}

/// The steps of a handover wake the DCs they concern instead of waiting for their next renewal
/// or map refresh: with a lease of 10 minutes (a renewal every 200 s), an idle shard handed
/// from a to b is b's within seconds. The voter that commits a step (start, completion) tells
/// the owner and the target (`POST /internal/placement/wake`); before, b learned of each at its
/// next tick (here 200 s away), and a handover took up to two ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handover_wakes_the_dcs_it_concerns() {
    const LEASE_MS: u64 = 600_000;
    let deployment = Deployment::start_with(|c| {
        c.lease_ms = LEASE_MS;
        c.handover_timeout_ms = LEASE_MS;
    })
    .await;
    let (a, b) = (deployment.dc("a"), deployment.dc("b"));
    let shard = (0..SHARDS)
        .find(|&s| owner_of(s) == "a")
        .expect("a shard of a");
    // Once every DC's pulls are answered, none renews at the failover cadence (a DC that looks
    // dead is renewed against every 100 ms): each renews at its tick.
    wait_for("every DC's pulls to be answered", || async {
        DCS.iter()
            .all(|dc| {
                let replication = &deployment.dc(dc).app().replication;
                DCS.iter()
                    .filter(|other| *other != dc)
                    .all(|other| !replication.owner_unreachable(other))
            })
            .then_some(())
    })
    .await;
    let took = hand_over(&deployment, "a", "b", shard).await;
    assert!(
        took < Duration::from_secs(10),
        "the handover took {took:?}: a renewal every {} s",
        LEASE_MS / 3_000
    );
    let map = b.get("/v2/admin/shards", &Auth::Superadmin).await;
    let entry = &map.assert_ok()["shards"][shard as usize];
    assert_eq!((&entry["owner"], &entry["epoch"]), (&json!("b"), &json!(2)));
    wait_for("a to hold a replica copy", || async {
        (view(a, &shard.to_string()).await["role"] == "replica").then_some(())
    })
    .await;
    // And back, at once: this completion waits for every replica's report of b's final
    // position, c's too, which c can make only once it follows b; none of them may wait for
    // its next look at the map, 200 s away.
    let took = hand_over(&deployment, "b", "a", shard).await;
    assert!(
        took < Duration::from_secs(10),
        "the handover back took {took:?}: a renewal every {} s",
        LEASE_MS / 3_000
    );
    // Only a node with the cluster secret may wake another.
    let path = "/internal/placement/wake";
    let refused = b.post(path, &Auth::Anonymous, json!({})).await;
    assert_eq!(refused.assert_error(401), "unauthorized");
    let woken = reqwest::Client::new()
        .post(format!("{}{path}", b.base))
        .header("Coopr-Cluster-Secret", SECRET)
        .send()
        .await
        .expect("send");
    assert_eq!(woken.status(), 204);
    deployment.stop().await;
}

/// Graceful handover at run time: shard s moves from a to b through the placement group. While
/// it drains, a refuses new writes to it (`handing_over`) but lets the running create finish;
/// then it freezes the shard and reports its last position, every replica reaches it, b adopts the
/// shard in epoch 2 and a releases it into a replica copy; every copy stays equal and every
/// stream follows (c switches from a to b exactly where a stopped). Afterwards:
/// - the map and the ownership history show the change;
/// - a write reaching a, which lost the shard, as forwarded by another DC is refused by
///   fencing (503 `not_owner`) and changes nothing;
/// - a DC routing by a stale map (c, whose map is set back to epoch 1) sends the write to a,
///   learns the new owner from the placement group and retries at b, transparently; so does
///   a itself when its own map is stale (its DC log refuses the write by fencing first);
/// - b runs later operations on the adopted cluster (a delete), which replicate back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_handed_over_keeps_every_copy_and_fences_stale_writers() {
    let deployment = Deployment::start_with(|c| {
        c.lease_ms = 1_200;
        c.max_clock_offset_ms = 200;
    })
    .await;
    let (a, b, c) = (deployment.dc("a"), deployment.dc("b"), deployment.dc("c"));
    let worker_a = Worker::register(a, "p-a", "w1").await;
    // The create runs (no worker drives it yet) when the handover starts.
    let id = a.create_cluster("base", 1).await;
    let shard = shard_of(&id);
    assert_eq!(owner_of(shard), "a");

    tracing::info!("--- hand shard {shard} over to b (asked at c) while an operation runs");
    let path = format!("/v2/admin/shards/{shard}/handover");
    let started = c.post(&path, &Auth::Superadmin, json!({"to": "b"})).await;
    assert_eq!(
        started.assert_ok()["placement"]["status"]["status"],
        "draining"
    );
    // A second handover of the same shard is refused while this one runs.
    let again = c.post(&path, &Auth::Superadmin, json!({"to": "c"})).await;
    assert_eq!(again.assert_error(409), "handover_in_progress");
    c.post(
        "/v2/admin/shards/global/handover",
        &Auth::Superadmin,
        json!({"to": "b"}),
    )
    .await
    .assert_error(400);
    // Once a's lease says the shard drains (its next renewal), a refuses new writes to it
    // (retryable; here: pausing the running create, which would otherwise be accepted) ...
    wait_for("a's grant to freeze the shard", || async {
        let held = a.app().held_lease()?;
        let owned = held.lease.grant.owned.get(&coopr_types::ShardId(shard))?;
        matches!(owned, coopr_placement::OwnedShard::Frozen { .. }).then_some(())
    })
    .await;
    let refused = reqwest::Client::new()
        .post(format!("{}/v2/clusters/{id}/pause", a.base))
        .header("Coopr-UserID", "demo")
        .header("Coopr-TenantID", "demo")
        .header("Coopr-ApiKey", "demo-key")
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "handing_over", "{body}");
    // ... but the running create finishes there: task results still go in.
    worker_a.drive().await;
    assert_eq!(a.cluster_status(&id).await["status"], "active");
    wait_for("b to own the shard", || async {
        let view = view(b, &shard.to_string()).await;
        (view["role"] == "owner").then_some(())
    })
    .await;
    let map = b.get("/v2/admin/shards", &Auth::Superadmin).await;
    let map = map.assert_ok();
    let entry = &map["shards"][shard as usize];
    assert_eq!((&entry["owner"], &entry["epoch"]), (&json!("b"), &json!(2)));
    let history = map["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|h| h["shard"] == shard && h["to"] == "b" && h["reason"]["reason"] == "handover"),
        "{map}"
    );
    wait_for("every copy to follow b", || converged(&deployment)).await;
    assert_eq!(view(a, &shard.to_string()).await["role"], "replica");

    tracing::info!("--- the old owner refuses a write another DC forwarded to it");
    let refused = reqwest::Client::new()
        .post(format!("{}/v2/clusters/{id}", a.base))
        .header("Coopr-UserID", "demo")
        .header("Coopr-TenantID", "demo")
        .header("Coopr-ApiKey", "demo-key")
        .header("Coopr-Forwarded-Dc", "c")
        .json(&json!({"expireTime": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "not_owner", "{body}");

    tracing::info!("--- a stale map at c: the write goes to a, is fenced, and retried at b");
    let create_time = b.get(&format!("/v2/clusters/{id}"), &Auth::Demo).await.body["createTime"]
        .as_u64()
        .expect("createTime");
    let mut rerouted = false;
    // The map refresh of c may beat the request by a hair; then try again (bounded).
    for attempt in 0..5u64 {
        reset_map_to_initial(c);
        let before = c.app().rerouted.load(std::sync::atomic::Ordering::Relaxed);
        let expire = create_time + 3_600_000 + attempt;
        let reply = set_expire(c, &id, expire, &format!("stale-{attempt}")).await;
        reply.assert_ok();
        assert_eq!(reply.header("coopr-served-by"), Some("b/b1"), "{reply:?}");
        let strong = c
            .get(
                &format!("/v2/clusters/{id}?consistency=strong"),
                &Auth::Demo,
            )
            .await;
        assert_eq!(strong.assert_ok()["expireTime"], expire);
        if c.app().rerouted.load(std::sync::atomic::Ordering::Relaxed) > before {
            rerouted = true;
            break;
        }
    }
    assert!(rerouted, "c never routed by its stale map");

    tracing::info!("--- a stale map at a itself: its own write is fenced, then sent to b");
    let mut rerouted = false;
    for attempt in 0..5u64 {
        reset_map_to_initial(a);
        let before = a.app().rerouted.load(std::sync::atomic::Ordering::Relaxed);
        let expire = create_time + 7_200_000 + attempt;
        let reply = set_expire(a, &id, expire, &format!("stale-a-{attempt}")).await;
        reply.assert_ok();
        assert_eq!(reply.header("coopr-served-by"), Some("b/b1"), "{reply:?}");
        if a.app().rerouted.load(std::sync::atomic::Ordering::Relaxed) > before {
            rerouted = true;
            break;
        }
    }
    assert!(rerouted, "a never wrote by its stale map");

    tracing::info!("--- b runs a delete of the adopted cluster");
    let worker_b = Worker::register(b, "p-b", "w1").await;
    b.delete(&format!("/v2/clusters/{id}"), &Auth::Demo)
        .await
        .assert_ok();
    worker_b.drive().await;
    assert_eq!(b.cluster_status(&id).await["status"], "terminated");
    wait_for("the delete to replicate", || converged(&deployment)).await;
    deployment.stop().await;
}

/// Sets a node's shard map back to the initial placement (every shard at epoch 1), as a node
/// that missed every ownership change would have it.
fn reset_map_to_initial(server: &TestServer) {
    let app = server.app();
    app.replace_map_for_tests(app.config.initial_map());
}

/// Two DCs and a witness: the witness votes in the placement group (it holds no shards and no
/// lease), so when DC b goes away, a and the witness are still a majority: a keeps renewing
/// its lease and acknowledging writes. (Without the witness, a would be fenced: see
/// `a_dc_without_a_placement_majority_stops_acknowledging_writes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_witness_one_of_two_dcs_keeps_writing() {
    const LEASE_MS: u64 = 1_500;
    let mut deployment = Deployment::start_sites(&["a", "b"], true, |c| {
        c.lease_ms = LEASE_MS;
        c.max_clock_offset_ms = 100;
    })
    .await;
    let map = deployment
        .dc("a")
        .get("/v2/admin/shards", &Auth::Superadmin)
        .await;
    let map = map.assert_ok();
    assert_eq!(map["dcs"], json!(["a", "b"]), "{map}");
    let leases: Vec<&str> = map["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .filter_map(|l| l["dc"].as_str())
        .collect();
    assert!(
        !leases.contains(&WITNESS),
        "the witness holds no lease: {map}"
    );
    wait_for("the seeding to replicate", || converged(&deployment)).await;
    // The witness started after a and b had begun the group: it votes once it has what they
    // had applied then (it cannot tell a late first start from a lost disk).
    let witness = deployment.witness.as_ref().expect("a witness");
    wait_for("the witness to vote", || async {
        witness.group.raft().status().may_vote.then_some(())
    })
    .await;

    tracing::info!("--- stop b: a and the witness are a majority");
    let lease_sequence = |server: &TestServer| {
        server
            .app()
            .held_lease()
            .map_or(0, |held| held.lease.grant.sequence)
    };
    let b = deployment.dcs.remove("b").expect("running");
    b.stop().await;
    let a = deployment.dc("a");
    let at_stop = lease_sequence(a);
    // If b led the placement group, a and the witness elect a new leader first (up to about a
    // second here, which may outlast a's lease: writes answer a retryable 503 meanwhile). Once
    // a renewal was granted without b, every write is acknowledged, for several leases.
    wait_for("a renewal granted without b", || async {
        (lease_sequence(a) > at_stop).then_some(())
    })
    .await;
    let create = || async {
        reqwest::Client::new()
            .post(format!("{}/v2/clusters", a.base))
            .header("Coopr-UserID", "demo")
            .header("Coopr-TenantID", "demo")
            .header("Coopr-ApiKey", "demo-key")
            .json(&json!({"name": "solo", "clusterTemplate": "base", "numMachines": 1}))
            .send()
            .await
            .expect("a answers")
            .status()
            .as_u16()
    };
    wait_for("a to write again", || async {
        (create().await == 200).then_some(())
    })
    .await;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(LEASE_MS * 4);
    let mut created = 0;
    while std::time::Instant::now() < until {
        assert_eq!(
            create().await,
            200,
            "a write refused after {created} acknowledged"
        );
        created += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(created > 10);
    let ready = reqwest::get(format!("{}/ready", a.base))
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    // b's shards failed over to a: a owns every shard, and b's clusters are writable there.
    let map = wait_for("a to own every shard", || async {
        let map = map_of(a).await;
        map.iter()
            .all(|(owner, _, status)| owner == "a" && status == "active")
            .then_some(map)
    })
    .await;
    assert!(map.iter().any(|(_, epoch, _)| *epoch == 2), "{map:?}");
    deployment.stop().await;
}

/// Sets a cluster's expire time through `via` with a plain HTTP client (5xx answers are
/// expected here): the status, the `Coopr-Served-By` header and the body.
async fn try_set_expire(
    via: &TestServer,
    id: &str,
    expire: u64,
    key: &str,
) -> (u16, String, Value) {
    let reply = reqwest::Client::new()
        .post(format!("{}/v2/clusters/{id}", via.base))
        .header("Coopr-UserID", "demo")
        .header("Coopr-TenantID", "demo")
        .header("Coopr-ApiKey", "demo-key")
        .header("Idempotency-Key", key)
        .json(&json!({ "expireTime": expire }))
        .send()
        .await
        .expect("the DC answers");
    let status = reply.status().as_u16();
    let served_by = reply
        .headers()
        .get("coopr-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, served_by, reply.json().await.unwrap_or(Value::Null))
}

/// Where the placement group (as `via` last fetched it) has every shard: (owner, epoch, status).
async fn map_of(via: &TestServer) -> Vec<(String, u64, String)> {
    let reply = via.get("/v2/admin/shards", &Auth::Superadmin).await;
    reply.assert_ok()["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| {
            (
                s["owner"].as_str().unwrap_or_default().to_string(),
                s["epoch"].as_u64().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A worker holding a task of a DC that was cut off and lost the task's shard does not get the
/// task again from that DC (the path for a worker that lost its take's answer hands a held
/// task out without a write): the new owner runs it, and two DCs must never run one task at
/// once. Found by the simulation (seeds 10115 and 10327 of an earlier version of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dc_cut_off_does_not_hand_out_a_task_held_in_a_shard_it_lost() {
    let deployment = Deployment::start_linked(|c| {
        c.lease_ms = 900;
        c.max_clock_offset_ms = 100;
    })
    .await;
    let a = deployment.dc("a");
    let cluster = a.create_cluster("base", 1).await;
    let worker = Worker::register(a, "p-a", "w1").await;
    let create = worker.take().await.expect("a CREATE task");
    assert_eq!(create["taskName"], "CREATE", "{create}");
    // Before the cut, a worker that lost its take's answer gets its task again.
    let again = worker.take().await.expect("the held task again");
    assert_eq!(again["taskId"], create["taskId"], "{again}");
    wait_for("replicas to have the create in flight", || {
        converged(&deployment)
    })
    .await;

    deployment.cut_off("a");
    let b = deployment.dc("b");
    wait_until_seen("a's shards to have new owners", || async {
        let map = map_of(b).await;
        let moved = map
            .iter()
            .all(|(owner, _, status)| owner != "a" && status == "active");
        (map, moved)
    })
    .await;
    // a's lease ran out (before the takeover, by the lease rules): it must not hand the task
    // out again, although its log still says the worker holds it.
    let reply = worker.take_reply().await;
    assert_ne!(
        reply.status.as_u16(),
        200,
        "a handed out a task of a shard it lost: {reply:?}"
    );
    // The new owner runs the create.
    let owner = deployment.dc(&map_of(b).await[owner_shard(&cluster)].0);
    let successor = Worker::register(owner, "p-new", "w1").await;
    let resumed = wait_for("the new owner to hand out the resumed create", || async {
        let reply = successor.take_reply().await;
        (reply.status.as_u16() == 200).then_some(reply.body)
    })
    .await;
    assert_eq!(resumed["clusterId"], cluster.as_str(), "{resumed}");
    deployment.stop().await;
}

/// The shard of a cluster id (`shard + SHARDS * n`).
fn owner_shard(cluster: &str) -> usize {
    (cluster.parse::<u64>().expect("a numeric cluster id") % u64::from(SHARDS)) as usize
}

/// Failover of a DC cut off from the others while its server keeps running (DESIGN section 6):
/// - a, cut off, acknowledges writes only while its lease lasts on its own clock, then refuses
///   them (503 `lease_expired`);
/// - once a's lease has expired at the placement group, every shard a owned (the global one
///   included) gets a new owner at epoch 2, spread over b and c, at the exact point its copy
///   was sealed; writes to them through b and c succeed without client changes;
/// - the lamp create that was in flight at a (one machine made) finishes at its new owner;
/// - healed, a learns the higher epochs: what it acknowledged alone is in its lost-operations
///   report (never silently dropped), its copies are replicas again (re-seeded where they had
///   diverged), and every DC converges to identical copies with no lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_dc_fails_over_and_reports_what_it_wrote_alone() {
    const LEASE_MS: u64 = 900;
    let deployment = Deployment::start_linked(|c| {
        c.lease_ms = LEASE_MS;
        c.max_clock_offset_ms = 100;
    })
    .await;
    let a = deployment.dc("a");
    let done = a.create_cluster("base", 1).await;
    Worker::register(a, "p-a", "w1").await.drive().await;
    assert_eq!(a.cluster_status(&done).await["status"], "active");
    let lamp = a.create_cluster("lamp", 2).await;
    let worker = Worker::register(a, "p-a", "w1").await;
    let create = worker.take().await.expect("a CREATE task");
    assert_eq!(create["taskName"], "CREATE", "{create}");
    worker.finish(&create, 0).await;
    tracing::info!("--- wait until b and c have a's shards as a has them");
    wait_for("replicas to converge before the cut", || {
        converged(&deployment)
    })
    .await;

    tracing::info!("--- cut a off; it writes alone until its lease runs out");
    deployment.cut_off("a");
    let cut = std::time::Instant::now();
    // A create a acknowledges alone: lost with its tail, and a retry says so.
    let lone = reqwest::Client::new()
        .post(format!("{}/v2/clusters", a.base))
        .header("Coopr-UserID", "demo")
        .header("Coopr-TenantID", "demo")
        .header("Coopr-ApiKey", "demo-key")
        .header("Idempotency-Key", "lone-create")
        .json(&json!({"name": "lone", "clusterTemplate": "base", "numMachines": 1}));
    let lone_answer = lone
        .try_clone()
        .expect("a plain request")
        .send()
        .await
        .expect("a answers");
    assert_eq!(lone_answer.status(), 200, "a writes while its lease lasts");
    let mut acknowledged = Vec::new();
    let refused = loop {
        let n = acknowledged.len() as u64;
        let reply = try_set_expire(a, &done, 4_000_000_000_000 + n, &format!("alone-{n}")).await;
        match reply.0 {
            200 => acknowledged.push(4_000_000_000_000 + n),
            503 => break reply.2,
            other => panic!("a answered {other}: {}", reply.2),
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "a never stopped writing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused["code"], "lease_expired", "{refused}");
    tracing::info!(acknowledged = acknowledged.len(), after = ?cut.elapsed(), "a stopped writing");

    tracing::info!("--- b and c take a's shards over");
    let b = deployment.dc("b");
    let moved = wait_until_seen("a's shards to have new owners", || async {
        let map = map_of(b).await;
        let all_moved = map
            .iter()
            .all(|(owner, _, status)| owner != "a" && status == "active");
        (map, all_moved)
    })
    .await;
    tracing::info!(took = ?cut.elapsed(), "failover done");
    for (shard, (_, epoch, _)) in moved.iter().enumerate() {
        let was_a = shard == SHARDS as usize || owner_of(shard as u32) == "a";
        assert_eq!(
            *epoch,
            if was_a { 2 } else { 1 },
            "shard {shard}: {moved:?}"
        );
    }
    let new_owners: std::collections::BTreeSet<&str> = moved
        .iter()
        .enumerate()
        .filter(|(shard, _)| *shard == SHARDS as usize || owner_of(*shard as u32) == "a")
        .map(|(_, (owner, _, _))| owner.as_str())
        .collect();
    assert_eq!(
        new_owners.len(),
        2,
        "a's shards spread over b and c: {moved:?}"
    );
    // Writes to a's old shards go to their new owners, from either survivor.
    for via in ["b", "c"] {
        let server = deployment.dc(via);
        let key = format!("after-{via}");
        let served_by = wait_for("a write to a moved shard", || async {
            let reply = try_set_expire(server, &done, 4_100_000_000_000, &key).await;
            (reply.0 == 200).then_some(reply.1)
        })
        .await;
        assert_ne!(served_by, "a/a1");
    }
    // Tenants and keys (the global shard) still work: a create at b.
    let fresh = b.create_cluster("base", 1).await;

    tracing::info!("--- the lamp create finishes at its new owner");
    let lamp_owner = &moved[shard_of(&lamp) as usize].0;
    let owner = deployment.dc(lamp_owner);
    let ran = Worker::register(owner, &format!("p-{lamp_owner}"), "w1")
        .await
        .drive()
        .await;
    assert!(ran > 0);
    assert_eq!(owner.cluster_status(&lamp).await["status"], "active");
    assert_eq!(
        b.cluster_status(&fresh).await["status"],
        if lamp_owner == "b" {
            "active"
        } else {
            "pending"
        }
    );

    tracing::info!("--- heal: a learns it lost its shards");
    deployment.heal();
    let report = wait_for("a's lost-operations report", || async {
        let reply = a.get("/v2/admin/lost-operations", &Auth::Superadmin).await;
        let body = reply.assert_ok().clone();
        (body["total"].as_u64() >= Some(acknowledged.len() as u64) && !acknowledged.is_empty())
            .then_some(body)
    })
    .await;
    let lost = report["operations"].as_array().expect("operations");
    assert!(
        lost.iter()
            .filter(|op| op["kind"] != "operation_started")
            .all(|op| op["cluster"] == json!(done)
                && op["kind"] == "cluster_updated"
                && op["tenant"] == "demo"
                && op["epoch"] == 1),
        "{report}"
    );
    assert_eq!(
        lost.iter()
            .filter(|op| op["kind"] == "operation_started")
            .count(),
        1,
        "the lone create: {report}"
    );
    // Every acknowledged write is there, and perhaps the refused one: committed in a's log, but
    // answered 503 because the lease ran out before the acknowledgement.
    let updates = lost.len() - 1;
    assert!(
        updates == acknowledged.len() || updates == acknowledged.len() + 1,
        "{} acknowledged: {report}",
        acknowledged.len()
    );
    let retried = lone.send().await.expect("a answers");
    assert_eq!(retried.status(), 409);
    let body: Value = retried.json().await.expect("JSON");
    assert_eq!(body["code"], "operation_lost", "{body}");
    for dc in ["b", "c"] {
        let reply = deployment
            .dc(dc)
            .get("/v2/admin/lost-operations", &Auth::Superadmin)
            .await;
        assert_eq!(reply.assert_ok()["total"], 0, "{dc} lost nothing");
    }
    // The cluster's expire time is the one written at its new owner, not a lost one.
    wait_for("replicas to converge after the heal", || {
        converged(&deployment)
    })
    .await;
    let row = b.get(&format!("/v2/clusters/{done}"), &Auth::Demo).await;
    assert_eq!(
        row.assert_ok()["expireTime"],
        4_100_000_000_000u64,
        "{}",
        row.text
    );
    deployment.stop().await;
}

/// A DC that stops (all of its processes, as with `kill -9` of a one-node DC) fails over like a
/// cut-off one; restarted on its data, it learns the higher epochs, its copies become replicas
/// of the new owners, and every DC converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_dc_fails_over_and_rejoins_when_restarted() {
    const LEASE_MS: u64 = 900;
    let mut deployment = Deployment::start_with(|c| {
        c.lease_ms = LEASE_MS;
        c.max_clock_offset_ms = 100;
    })
    .await;
    let created: Vec<String> = {
        let a = deployment.dc("a");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(a.create_cluster("base", 1).await);
        }
        Worker::register(a, "p-a", "w1").await.drive().await;
        ids
    };
    wait_for("replicas to converge", || converged(&deployment)).await;
    deployment.stop_dc("a").await;
    let stopped = std::time::Instant::now();
    let b = deployment.dc("b");
    wait_until_seen("a's shards to have new owners", || async {
        let map = map_of(b).await;
        let moved = map.iter().all(|(owner, _, _)| owner != "a");
        (map, moved)
    })
    .await;
    tracing::info!(after = ?stopped.elapsed(), "failover done");
    // Every cluster a created (and replicated) is served, and writable, at its new owner.
    for (n, id) in created.iter().enumerate() {
        let key = format!("after-stop-{n}");
        wait_for("a write to a's cluster", || async {
            let reply = try_set_expire(b, id, 4_200_000_000_000, &key).await;
            (reply.0 == 200).then_some(())
        })
        .await;
    }
    deployment.restart("a").await;
    wait_for("every DC to converge", || converged(&deployment)).await;
    let a = deployment.dc("a");
    let report = a.get("/v2/admin/lost-operations", &Auth::Superadmin).await;
    assert_eq!(
        report.assert_ok()["total"],
        0,
        "a lost nothing: {}",
        report.text
    );
    for id in &created {
        let row = a.get(&format!("/v2/clusters/{id}"), &Auth::Demo).await;
        assert_eq!(row.assert_ok()["expireTime"], 4_200_000_000_000u64);
    }
    deployment.stop().await;
}
