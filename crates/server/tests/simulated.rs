//! Whole deployments of the real server in one process, with no socket and no file: every node
//! serves its routers on a [`MemNetwork`] and calls the others through it, keeps both Raft
//! groups in memory and reads a simulated clock, on tokio's paused clock (time advances only
//! when every task waits). Clients call the nodes through the same network. This is the seam a
//! seeded simulation drives; here, one failover scenario runs in simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use coopr_raft::{Call, MemNetwork, Transport};
use coopr_server::{
    Member, Network, PlacementMember, ServerConfig, ServerHandle, SimClock, StartOptions,
};
use serde_json::{json, Value};
use tokio::time::Instant;

const DCS: [&str; 3] = ["a", "b", "c"];
const SECRET: &str = "a-simulated-cluster-secret";
/// 2026-01-01T00:00:00Z: where the simulated wall clocks start.
const BASE_WALL_MS: u64 = 1_767_225_600_000;

fn api(dc: &str) -> String {
    format!("http://{dc}1:80")
}

fn internal(dc: &str) -> String {
    format!("http://{dc}1:81")
}

fn config(dc: &str) -> ServerConfig {
    let placement_members = (1u64..)
        .zip(DCS)
        .map(|(id, d)| {
            (
                id,
                PlacementMember {
                    dc: d.to_string(),
                    internal: internal(d),
                },
            )
        })
        .collect();
    let remote_dcs = DCS
        .iter()
        .filter(|d| **d != dc)
        .map(|d| {
            (
                d.to_string(),
                vec![Member {
                    node: format!("{d}1"),
                    api: api(d),
                    internal: internal(d),
                }],
            )
        })
        .collect();
    ServerConfig {
        dc: dc.to_string(),
        node: format!("{dc}1"),
        listen: format!("{dc}1:80"),
        internal_listen: Some(format!("{dc}1:81")),
        data_dir: std::path::PathBuf::from(format!("/nonexistent/simulated/{dc}")),
        demo: true,
        shard_count: 6,
        secret: Some(SECRET.into()),
        placement_members,
        placement_node_id: Some(DCS.iter().position(|d| *d == dc).expect("dc") as u64 + 1),
        remote_dcs,
        replication_wait_ms: 2_000,
        ..ServerConfig::default()
    }
}

struct Simulated {
    network: MemNetwork,
    client: Arc<dyn Transport>,
    nodes: BTreeMap<&'static str, ServerHandle>,
}

impl Simulated {
    async fn start() -> Simulated {
        let network = MemNetwork::new();
        let mut nodes = BTreeMap::new();
        for (i, dc) in DCS.into_iter().enumerate() {
            // Clocks apart by up to 150 ms and drifting by up to 100 ppm.
            let offset_ms = [-150, 0, 150][i];
            let drift_ppm = [100, 0, -100][i];
            let clock = Arc::new(SimClock::new(BASE_WALL_MS, offset_ms, drift_ppm));
            let options = StartOptions::in_memory(clock).on(Network::Mem(network.clone()));
            let handle = coopr_server::start_with(config(dc), options)
                .await
                .expect("node starts");
            nodes.insert(dc, handle);
        }
        let client = network.transport("client");
        Simulated {
            network,
            client,
            nodes,
        }
    }

    /// `GET path` at `dc` as `who` (`demo` or the superadmin): status and JSON body.
    async fn get(&self, dc: &str, path: &str, superadmin: bool) -> Option<(u16, Value)> {
        let call = auth(Call::get(format!("{}{path}", api(dc))), superadmin)
            .timeout(Duration::from_secs(5));
        let answer = self.client.call(call).await.ok()?;
        Some((answer.status.as_u16(), answer.json().unwrap_or(Value::Null)))
    }

    async fn post(&self, dc: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
        let call = auth(Call::json(format!("{}{path}", api(dc)), body), false)
            .timeout(Duration::from_secs(5));
        let answer = self.client.call(call).await.ok()?;
        Some((answer.status.as_u16(), answer.json().unwrap_or(Value::Null)))
    }

    /// The cluster ids `dc` lists for the demo user.
    async fn clusters(&self, dc: &str) -> Option<BTreeSet<String>> {
        let (status, body) = self.get(dc, "/v2/clusters", false).await?;
        (status == 200).then(|| {
            body.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        })
    }

    /// Owner of every shard as `dc` sees the map.
    async fn owners(&self, dc: &str) -> Option<Vec<String>> {
        let (status, body) = self.get(dc, "/v2/admin/shards", true).await?;
        if status != 200 {
            return None;
        }
        body["shards"]
            .as_array()?
            .iter()
            .map(|s| s["owner"].as_str().map(str::to_string))
            .collect()
    }

    async fn shutdown(self) {
        for (_, node) in self.nodes {
            node.shutdown().await;
        }
    }
}

fn auth(call: Call, superadmin: bool) -> Call {
    let (user, tenant, key) = if superadmin {
        ("admin", "superadmin", "admin-key")
    } else {
        ("demo", "demo", "demo-key")
    };
    call.header("Coopr-UserID", user)
        .header("Coopr-TenantID", tenant)
        .header("Coopr-ApiKey", key)
}

/// Polls `check` every 50 ms of simulated time until it returns `Some`, failing after
/// `within` (simulated).
async fn wait<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three DCs start and serve; each creates a cluster, which every DC lists; DC `a` (owner of
/// the global shard and of a third of the cluster shards) is cut off: within seconds of
/// simulated time `b` and `c` own every shard, and a create through `b` works; healed, every
/// DC lists the same clusters again.
#[tokio::test(start_paused = true)]
async fn three_in_memory_dcs_fail_over_in_simulated_time() {
    let real = std::time::Instant::now();
    let started = Instant::now();
    let sim = Simulated::start().await;
    for dc in DCS {
        wait(Duration::from_secs(60), &format!("{dc} ready"), || async {
            let (status, _) = sim.get(dc, "/ready", false).await?;
            (status == 200).then_some(())
        })
        .await;
    }
    let mut created = BTreeSet::new();
    for dc in DCS {
        let body = json!({"name": format!("in-{dc}"), "clusterTemplate": "base", "numMachines": 1});
        let (status, answer) = sim.post(dc, "/v2/clusters", &body).await.expect("answer");
        assert_eq!(status, 200, "create at {dc}: {answer}");
        created.insert(answer["id"].as_str().expect("id").to_string());
    }
    for dc in DCS {
        wait(
            Duration::from_secs(30),
            &format!("{dc} lists all"),
            || async { (sim.clusters(dc).await? == created).then_some(()) },
        )
        .await;
    }

    sim.network.isolate("a1");
    let cut = Instant::now();
    wait(
        Duration::from_secs(30),
        "b and c own every shard",
        || async {
            let owners = sim.owners("b").await?;
            owners.iter().all(|o| o != "a").then_some(())
        },
    )
    .await;
    let failover = cut.elapsed();
    let body = json!({"name": "after", "clusterTemplate": "base", "numMachines": 1});
    let (status, answer) = wait(Duration::from_secs(30), "a create through b", || async {
        let (status, answer) = sim.post("b", "/v2/clusters", &body).await?;
        (status == 200).then_some((status, answer))
    })
    .await;
    assert_eq!(status, 200);
    created.insert(answer["id"].as_str().expect("id").to_string());

    sim.network.heal();
    for dc in DCS {
        wait(
            Duration::from_secs(60),
            &format!("{dc} lists all after healing"),
            || async { (sim.clusters(dc).await? == created).then_some(()) },
        )
        .await;
    }
    eprintln!(
        "failover in {failover:?} of simulated time; {:?} simulated in {:?}",
        started.elapsed(),
        real.elapsed()
    );
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    sim.shutdown().await;
}
