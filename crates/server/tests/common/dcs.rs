//! Deployments of several single-node DCs in one process, for the multi-DC tests: each node a
//! voter of the placement group (plus a witness site if asked), optionally reaching the others
//! through links that can be cut (a partition), stopped and restarted on their data.

use std::collections::BTreeMap;
use std::time::Duration;

use coopr_server::{Member, PlacementMember, ServerConfig, StartOptions};

use serde_json::Value;

use super::{wait_for, Auth, Client, TestServer};

/// The cluster secret of every deployment.
pub const SECRET: &str = "multi-dc-test-secret-0123";
/// The deployments' shard count (a tweak may set another).
pub const SHARDS: u32 = 6;
pub const DCS: [&str; 3] = ["a", "b", "c"];

/// A free loopback port for a server to listen on later. Taken below the kernel's ephemeral
/// range (32768 and up), where the outgoing connections of every test in this process pick
/// their local ports: a port chosen there could be taken by one of them before the server binds
/// it. Random, checked bindable, and never handed out twice in this process: two tests of one
/// binary picking the same port before either bound it would both find it free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    for _ in 0..1_000 {
        // splitmix64 over a process-wide counter: every call gets another candidate.
        let mut z = STATE
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(seed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let port = 20_000 + ((z ^ (z >> 31)) % 12_000) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

pub struct Deployment {
    pub dcs: BTreeMap<String, TestServer>,
    pub witness: Option<coopr_server::WitnessHandle>,
    /// With [`Deployment::start_linked`]: the link from one site to another (its API, internal
    /// and placement proxies), by (from, to); cut to partition.
    links: BTreeMap<(String, String), [coopr_testkit::DelayProxy; 3]>,
    /// Each DC's config, for restarts.
    configs: BTreeMap<String, ServerConfig>,
    _dirs: Vec<tempfile::TempDir>,
}

/// The site name of the witness in [`Deployment::start_sites`].
pub const WITNESS: &str = "w";

impl Deployment {
    /// Three single-node DCs that know each other.
    pub async fn start() -> Deployment {
        Self::start_with(|_| {}).await
    }

    /// Three single-node DCs that know each other, with config tweaks.
    pub async fn start_with(tweak: impl Fn(&mut ServerConfig)) -> Deployment {
        Self::start_sites(&DCS, false, tweak).await
    }

    /// Single-node DCs named `names` that know each other, each node a voter of the placement
    /// group, plus a witness voter if asked.
    pub async fn start_sites(
        names: &[&str],
        with_witness: bool,
        tweak: impl Fn(&mut ServerConfig),
    ) -> Deployment {
        Self::start_sites_linked(names, with_witness, false, tweak).await
    }

    /// Three single-node DCs that reach each other through links that can be cut.
    pub async fn start_linked(tweak: impl Fn(&mut ServerConfig)) -> Deployment {
        Self::start_sites_linked(&DCS, false, true, tweak).await
    }

    /// Single-node DCs named `names` that know each other, each node a voter of the placement
    /// group, plus a witness voter if asked; `linked`: every site reaches every other through
    /// its own proxies ([`Deployment::cut_off`]).
    pub async fn start_sites_linked(
        names: &[&str],
        with_witness: bool,
        linked: bool,
        tweak: impl Fn(&mut ServerConfig),
    ) -> Deployment {
        Self::start_sites_on(names, with_witness, linked, tweak, |_| {
            StartOptions::production()
        })
        .await
    }

    /// As [`Deployment::start_sites_linked`], each site started on the clock and stores
    /// `options` gives it (by site name). Sites in memory cannot be restarted on their data.
    pub async fn start_sites_on(
        names: &[&str],
        with_witness: bool,
        linked: bool,
        tweak: impl Fn(&mut ServerConfig),
        options: impl Fn(&str) -> StartOptions,
    ) -> Deployment {
        let sites: Vec<&str> = names
            .iter()
            .copied()
            .chain(with_witness.then_some(WITNESS))
            .collect();
        let ports: BTreeMap<&str, u16> = sites.iter().map(|dc| (*dc, free_port())).collect();
        let internal: BTreeMap<&str, u16> = sites.iter().map(|dc| (*dc, free_port())).collect();
        let mut links = BTreeMap::new();
        if linked {
            for from in &sites {
                for to in sites.iter().filter(|to| *to != from) {
                    // A proxy listens on a port of its own choosing: never one of the ports
                    // picked for the servers (they bind them only later).
                    let taken: Vec<u16> =
                        ports.values().chain(internal.values()).copied().collect();
                    let proxy = |port: u16| {
                        let taken = taken.clone();
                        async move {
                            let target = format!("127.0.0.1:{port}").parse().expect("address");
                            loop {
                                let proxy =
                                    coopr_testkit::DelayProxy::start(target, Duration::ZERO)
                                        .await
                                        .expect("proxy");
                                if !taken.contains(&proxy.addr().port()) {
                                    return proxy;
                                }
                            }
                        }
                    };
                    // The placement group's traffic (votes, lease renewals) goes to the same
                    // internal port through a proxy of its own, so that replication alone can
                    // be cut ([`Deployment::cut_replication`]).
                    let pair = [
                        proxy(ports[to]).await,
                        proxy(internal[to]).await,
                        proxy(internal[to]).await,
                    ];
                    links.insert((from.to_string(), to.to_string()), pair);
                }
            }
        }
        // How `from` reaches `dc`: directly, or through its link.
        let member = |from: &str, dc: &str| match links.get(&(from.to_string(), dc.to_string())) {
            Some([api, int, _]) => Member {
                node: format!("{dc}1"),
                api: format!("http://{}", api.addr()),
                internal: format!("http://{}", int.addr()),
            },
            None => Member {
                node: format!("{dc}1"),
                api: format!("http://127.0.0.1:{}", ports[dc]),
                internal: format!("http://127.0.0.1:{}", internal[dc]),
            },
        };
        // Each site's node is a voter of the placement group (ids 1, 2, ...).
        let placement_members = |from: &str| -> BTreeMap<u64, PlacementMember> {
            (1u64..)
                .zip(&sites)
                .map(|(id, dc)| {
                    (
                        id,
                        PlacementMember {
                            dc: dc.to_string(),
                            internal: match links.get(&(from.to_string(), dc.to_string())) {
                                Some([_, _, placement]) => format!("http://{}", placement.addr()),
                                None => member(from, dc).internal,
                            },
                        },
                    )
                })
                .collect()
        };
        let mut dcs = BTreeMap::new();
        let mut configs = BTreeMap::new();
        let mut dirs = Vec::new();
        let mut witness = None;
        for (placement_id, dc) in (1u64..).zip(&sites) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = ServerConfig {
                dc: dc.to_string(),
                node: format!("{dc}1"),
                listen: format!("127.0.0.1:{}", ports[dc]),
                internal_listen: Some(format!("127.0.0.1:{}", internal[dc])),
                placement_members: placement_members(dc),
                placement_node_id: Some(placement_id),
                shard_count: SHARDS,
                secret: Some(SECRET.into()),
                remote_dcs: names
                    .iter()
                    .filter(|d| *d != dc)
                    .map(|d| (d.to_string(), vec![member(dc, d)]))
                    .collect(),
                replication_wait_ms: 2_000,
                witness: *dc == WITNESS,
                ..super::config(dir.path())
            };
            tweak(&mut config);
            if config.witness {
                let started = coopr_server::start_witness_with(config, options(dc)).await;
                witness = Some(started.expect("witness"));
            } else {
                configs.insert(dc.to_string(), config.clone());
                let server = TestServer::start_config_with(config, options(dc)).await;
                dcs.insert(dc.to_string(), server);
            }
            dirs.push(dir);
        }
        // Only a (the global shard's owner) seeds tenants and keys; the others are ready once
        // those replicated to them.
        for (dc, server) in &dcs {
            let url = format!("{}/ready", server.base);
            wait_for(&format!("{dc} to be ready"), || async {
                let ready = reqwest::get(&url).await.ok()?;
                (ready.status() == 200).then_some(())
            })
            .await;
        }
        Deployment {
            dcs,
            witness,
            links,
            configs,
            _dirs: dirs,
        }
    }

    pub fn dc(&self, dc: &str) -> &TestServer {
        &self.dcs[dc]
    }

    /// Partitions `dc` from every other site (both directions); its processes keep running.
    pub fn cut_off(&self, dc: &str) {
        for ((from, to), pair) in &self.links {
            if from == dc || to == dc {
                pair.iter().for_each(coopr_testkit::DelayProxy::cut);
            }
        }
    }

    /// Cuts what `from` sends to `to` on the API and internal ports except the placement
    /// group's traffic: `from` no longer pulls `to`'s shards (nor forwards to it), while
    /// leases and votes flow and no DC fails over.
    pub fn cut_replication(&self, from: &str, to: &str) {
        let pair = &self.links[&(from.to_string(), to.to_string())];
        pair[..2].iter().for_each(coopr_testkit::DelayProxy::cut);
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        for pair in self.links.values() {
            pair.iter().for_each(coopr_testkit::DelayProxy::heal);
        }
    }

    /// Stops `dc`'s server (its data stays for [`Deployment::restart`]).
    pub async fn stop_dc(&mut self, dc: &str) {
        let server = self.dcs.remove(dc).expect("running");
        server.stop().await;
    }

    /// Starts `dc`'s server again on its data.
    pub async fn restart(&mut self, dc: &str) {
        let config = self.configs[dc].clone();
        self.dcs
            .insert(dc.to_string(), TestServer::start_config(config).await);
    }

    pub async fn stop(self) {
        if let Some(witness) = self.witness {
            witness.shutdown().await;
        }
        for (_, server) in self.dcs {
            server.stop().await;
        }
    }
}

pub async fn view(client: &Client, shard: &str) -> Value {
    client
        .get(&format!("/v2/admin/shards/{shard}/view"), &Auth::Superadmin)
        .await
        .assert_ok()
        .clone()
}

/// Every shard name of a deployment of [`SHARDS`] shards: the cluster shards and the global one.
pub fn all_shards() -> Vec<String> {
    (0..SHARDS)
        .map(|s| s.to_string())
        .chain(std::iter::once("global".to_string()))
        .collect()
}

/// Whether every replica's copy of every shard equals its owner's, and no lag is reported
/// (no replica lag, no stopped stream, no record an owner has not shipped).
pub async fn converged(deployment: &Deployment) -> Option<()> {
    for shard in all_shards() {
        let mut views = Vec::new();
        for dc in deployment.dcs.keys() {
            views.push(view(deployment.dc(dc), &shard).await);
        }
        let owners: Vec<&Value> = views.iter().filter(|v| v["role"] == "owner").collect();
        let [owner] = owners[..] else {
            return None;
        };
        for replica in views.iter().filter(|v| v["role"] == "replica") {
            if replica["position"] != owner["position"] || replica["view"] != owner["view"] {
                return None;
            }
        }
    }
    for dc in deployment.dcs.keys() {
        let report = deployment
            .dc(dc)
            .get("/v2/admin/replication", &Auth::Superadmin)
            .await;
        for shard in report.assert_ok()["shards"].as_array()? {
            if let Some(local) = shard.get("local") {
                if local["lag_ms"] != 0 || !local["stopped"].is_null() {
                    return None;
                }
            }
            if let Some(by_replica) = shard.get("by_replica").and_then(Value::as_object) {
                if by_replica.values().any(|r| r["unreplicated_records"] != 0) {
                    return None;
                }
            }
        }
    }
    Some(())
}
