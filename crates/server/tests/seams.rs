//! The seams a simulation drives the real server through: a node started with
//! `coopr_server::start_with` reads the time from the clock it was given (entry times, hence
//! create times, follow its wall clock, offset included) and keeps its Raft groups in the
//! stores it was given (in memory: nothing is written to its data dir).

mod common;

use std::sync::Arc;

use coopr_server::{Clock, SimClock, StartOptions};
use serde_json::Value;

use common::dcs::Deployment;
use common::{config, wait_for, Auth, TestServer};

/// The simulated wall clock's base: 2017-07-14, far from the test machine's clock, so that a
/// time read from the OS cannot pass for one read from the injected clock.
const BASE_WALL_MS: u64 = 1_500_000_000_000;
/// How long any of these tests may take, bounding the times they may see.
const TEST_BOUND_MS: u64 = 60_000;

/// Whether `t` was read from a clock at `BASE_WALL_MS + offset_ms` since the test started.
fn read_from(t: u64, offset_ms: i64) -> bool {
    let start = (BASE_WALL_MS as i64 + offset_ms) as u64;
    (start..start + TEST_BOUND_MS).contains(&t)
}

/// A single-node DC in memory on a clock an hour ahead: the cluster it creates carries a
/// create time read from that clock (the `Entry`'s `now_ms`) while the request ran, the node
/// answers as usual, and its data dir is never created.
#[tokio::test]
async fn an_in_memory_node_reads_the_injected_clock_and_writes_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let offset_ms = 3_600_000;
    let clock = Arc::new(SimClock::new(BASE_WALL_MS, offset_ms, 0));
    let server =
        TestServer::start_config_with(config(&data_dir), StartOptions::in_memory(clock.clone()))
            .await;
    assert!(read_from(server.app().clock.wall_ms(), offset_ms));

    let before = clock.wall_ms();
    let id = server.create_cluster("lamp", 3).await;
    let after = clock.wall_ms();
    let cluster = server
        .get(&format!("/v2/clusters/{id}"), &Auth::Demo)
        .await
        .assert_ok()
        .clone();
    let create_time = cluster["createTime"].as_u64().expect("createTime");
    assert!(
        read_from(create_time, offset_ms),
        "createTime {create_time} is not on the injected clock (base {BASE_WALL_MS} + {offset_ms})"
    );
    assert!((before..=after).contains(&create_time));

    assert!(
        !data_dir.exists(),
        "an in-memory node created its data dir {}",
        data_dir.display()
    );
    server.stop().await;
    assert!(!data_dir.exists());
}

/// An in-memory node that would generate the superadmin key (no `admin_key`, not demo) is
/// refused at start: the key would have to be written to the data dir.
#[tokio::test]
async fn an_in_memory_node_needs_its_admin_key_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir.path().join("node"));
    cfg.demo = false;
    let clock = Arc::new(SimClock::new(BASE_WALL_MS, 0, 0));
    let refused = coopr_server::start_with(cfg, StartOptions::in_memory(clock)).await;
    let error = refused.err().expect("refused").to_string();
    assert!(error.contains("admin_key"), "{error}");
}

/// Three single-node DCs in memory, each on its own clock (wall offsets of -200, 0 and +150 ms,
/// drifts of ±100 ppm: within the default `max_clock_offset_ms`): the placement group elects,
/// every DC holds its lease and writes, each cluster's create time is read from the clock of
/// the DC that created it, replicas show the owner's time, and nothing is written to the data
/// dirs.
#[tokio::test]
async fn in_memory_dcs_on_skewed_clocks_hold_leases_and_replicate() {
    let clocks: [(&str, i64, i64); 3] = [("a", -200, 100), ("b", 0, 0), ("c", 150, -100)];
    let offset = |dc: &str| clocks.iter().find(|c| c.0 == dc).expect("dc").1;
    let deployment = Deployment::start_sites_on(
        &common::dcs::DCS,
        false,
        false,
        |_| {},
        |dc| {
            let (_, offset_ms, drift_ppm) = *clocks.iter().find(|c| c.0 == dc).expect("dc");
            StartOptions::in_memory(Arc::new(SimClock::new(BASE_WALL_MS, offset_ms, drift_ppm)))
        },
    )
    .await;
    for (dc, server) in &deployment.dcs {
        assert!(read_from(server.app().clock.wall_ms(), offset(dc)));
    }

    let mut created = Vec::new();
    for dc in ["a", "b", "c"] {
        let clock = &deployment.dc(dc).app().clock;
        let before = clock.wall_ms();
        let id = deployment.dc(dc).create_cluster("lamp", 1).await;
        created.push((dc, id, before..=clock.wall_ms()));
    }
    for (dc, id, during) in &created {
        let at_owner = deployment
            .dc(dc)
            .get(&format!("/v2/clusters/{id}"), &Auth::Demo)
            .await
            .assert_ok()
            .clone();
        let create_time = at_owner["createTime"].as_u64().expect("createTime");
        assert!(
            read_from(create_time, offset(dc)) && during.contains(&create_time),
            "cluster {id} of {dc}: createTime {create_time} is not on {dc}'s clock ({during:?})"
        );
        // Every other DC's replica copy carries the owner's time.
        for other in ["a", "b", "c"].iter().filter(|o| *o != dc) {
            let path = format!("/v2/clusters/{id}");
            let copy: Value = wait_for(&format!("cluster {id} at {other}"), || async {
                let reply = deployment.dc(other).get(&path, &Auth::Demo).await;
                (reply.status == 200).then(|| reply.body.clone())
            })
            .await;
            assert_eq!(
                copy["createTime"].as_u64(),
                Some(create_time),
                "{other}'s copy: {copy}"
            );
        }
    }
    // The harness gives each site an (empty) temporary data dir: nothing was written there.
    for server in deployment.dcs.values() {
        let files: Vec<_> = std::fs::read_dir(&server.data_dir)
            .expect("data dir")
            .collect();
        assert!(files.is_empty(), "{:?}", files);
    }
}
