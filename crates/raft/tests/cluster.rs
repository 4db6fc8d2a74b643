//! In-process groups of 3 nodes on loopback, each an axum server serving `coopr_raft::router`
//! with an append-only list as the state machine. Every wait is a poll with a deadline.

mod common;

use std::time::{Duration, Instant};

use common::{decode_response, wait_for, Group};
use coopr_raft::{RaftStores, WriteError};

const ELECTION: Duration = Duration::from_secs(10);

fn payload(n: u32) -> Vec<u8> {
    format!("cmd-{n}").into_bytes()
}

/// Waits until every running node applied exactly `expected` payloads, in that order.
async fn converged(group: &Group, expected: &[Vec<u8>]) {
    let running = group.running();
    wait_for(
        Duration::from_secs(10),
        "all running nodes applied the same list",
        || {
            running
                .iter()
                .all(|&id| group.nodes[(id - 1) as usize].machine.payloads() == expected)
                .then_some(())
        },
    )
    .await;
}

/// A leader is elected; writes are applied on all 3 nodes in the same order with the same
/// indices; a write to a follower is refused with the leader's id and address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_apply_in_order_on_all_nodes() {
    let mut group = Group::bind(3, |_| {}).await;
    group.start_all().await;
    let leader = group.leader(ELECTION).await;

    let mut expected = Vec::new();
    for n in 0..20 {
        let (index, response) = group.handle(leader).write(payload(n)).await.expect("write");
        assert_eq!(
            decode_response(&response),
            (index, u64::from(n)),
            "response is the applied index and list position"
        );
        expected.push(payload(n));
    }
    converged(&group, &expected).await;
    let lists: Vec<_> = group.nodes.iter().map(|node| node.machine.list()).collect();
    assert!(
        lists.windows(2).all(|pair| pair[0] == pair[1]),
        "same indices everywhere"
    );

    let follower = group.other_than(leader);
    match group.handle(follower).write(payload(99)).await {
        Err(WriteError::ForwardToLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(
                leader_addr.as_deref(),
                Some(group.nodes[(leader - 1) as usize].addr.as_str())
            );
        }
        other => panic!("expected ForwardToLeader, got {other:?}"),
    }
    group
        .handle(leader)
        .read_barrier()
        .await
        .expect("read barrier on the leader");
    assert!(matches!(
        group.handle(follower).read_barrier().await,
        Err(WriteError::ForwardToLeader { .. })
    ));
    let status = group.handle(leader).status();
    assert_eq!(status.voters.len(), 3);
    assert_eq!(status.leader, Some(leader));
    group.shutdown().await;
}

/// 64 writes at once are group-committed: each caller gets the response to its own payload,
/// every payload is applied exactly once, in the same order with the same indices on all
/// nodes, and they took fewer log entries than writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_batched_and_answered_each() {
    const WRITES: u32 = 64;
    let mut group = Group::bind(3, |_| {}).await;
    group.start_all().await;
    let leader = group.leader(ELECTION).await;
    group
        .handle(leader)
        .write(payload(0))
        .await
        .expect("warm-up write");
    let entries_before = group.handle(leader).status().last_log_index.unwrap();

    let handle = group.handle(leader);
    let writes = (1..=WRITES).map(|n| {
        let handle = handle.clone();
        tokio::spawn(async move { (n, handle.write(payload(n)).await) })
    });
    let mut answers = Vec::new();
    for write in writes.collect::<Vec<_>>() {
        let (n, written) = write.await.unwrap();
        let (index, response) = written.expect("write");
        answers.push((n, index, decode_response(&response)));
    }
    let entries_after = group.handle(leader).status().last_log_index.unwrap();
    let entries = entries_after - entries_before;
    assert!(
        entries < u64::from(WRITES),
        "{WRITES} concurrent writes took {entries} log entries: not batched"
    );

    let list = group.nodes[(leader - 1) as usize].machine.list();
    assert_eq!(list.len(), WRITES as usize + 1, "each payload applied once");
    for &(n, index, (response_index, position)) in &answers {
        assert_eq!(
            response_index, index,
            "write {n}: response of its own entry"
        );
        assert_eq!(
            list[position as usize],
            (index, payload(n)),
            "write {n}: the response is the one of its own payload"
        );
    }
    let mut positions: Vec<u64> = answers.iter().map(|&(_, _, (_, p))| p).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=u64::from(WRITES)).collect::<Vec<_>>());
    assert!(
        list.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "indices never go back"
    );

    let expected: Vec<Vec<u8>> = list.iter().map(|(_, p)| p.clone()).collect();
    converged(&group, &expected).await;
    let lists: Vec<_> = group.nodes.iter().map(|node| node.machine.list()).collect();
    assert!(
        lists.windows(2).all(|pair| pair[0] == pair[1]),
        "same order and indices everywhere"
    );
    group.shutdown().await;
}

/// Stopping the leader elects another within a few election timeouts and writes continue;
/// with a majority down, a write fails within the write timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_lost_majority() {
    let mut group = Group::bind(3, |config| config.write_timeout_ms = 1_500).await;
    group.start_all().await;
    let first = group.leader(ELECTION).await;
    group.handle(first).write(payload(1)).await.expect("write");

    group.stop(first).await;
    let started = Instant::now();
    let second = group.leader(ELECTION).await;
    assert_ne!(second, first);
    eprintln!("new leader {second} after {:?}", started.elapsed());
    group
        .handle(second)
        .write(payload(2))
        .await
        .expect("write after failover");
    converged(&group, &[payload(1), payload(2)]).await;

    let other = group.other_than(second);
    group.stop(other).await;
    let started = Instant::now();
    let result = group.handle(second).write(payload(3)).await;
    let waited = started.elapsed();
    assert!(
        matches!(
            result,
            Err(WriteError::NoQuorum { .. } | WriteError::Timeout { .. })
        ),
        "write without a majority must fail, got {result:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "write returned after {waited:?}"
    );
    group.shutdown().await;
}

/// A follower stopped and restarted on the same (redb) stores catches up with the writes it
/// missed, and its state machine is rebuilt from its snapshot plus log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut group = Group::bind(3, |config| config.snapshot_every = 10).await;
    for (node, dir) in group.nodes.iter_mut().zip(&dirs) {
        node.stores = RaftStores::open(dir.path()).unwrap();
    }
    group.start_all().await;
    let leader = group.leader(ELECTION).await;
    let mut expected = Vec::new();
    for n in 0..15 {
        group.handle(leader).write(payload(n)).await.expect("write");
        expected.push(payload(n));
    }
    converged(&group, &expected).await;

    let follower = group.other_than(leader);
    group.stop(follower).await;
    // Reopen the files as a restarted process would (the old handles are dropped first).
    let index = (follower - 1) as usize;
    group.nodes[index].stores = RaftStores::in_memory();
    group.nodes[index].stores = RaftStores::open(dirs[index].path()).unwrap();
    group.nodes[index].machine = Default::default();
    for n in 15..30 {
        group.handle(leader).write(payload(n)).await.expect("write");
        expected.push(payload(n));
    }
    group.start(follower).await;
    assert!(!group.handle(follower).initialize_if_needed().await.unwrap());
    converged(&group, &expected).await;
    group.shutdown().await;
}

/// A follower whose state is wiped (fresh stores, same id) after the leader compacted its log
/// rejoins: it does not initialize, does not vote until caught up, receives a snapshot, and
/// ends with the same state. The leader does not panic (openraft #898).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_catches_up_by_snapshot() {
    let mut group = Group::bind(3, |config| {
        config.snapshot_every = 5;
        // Every 5 entries, however large the state: the leader must drop the log.
        config.snapshot_log_percent = 0;
        config.logs_kept_after_snapshot = 0;
    })
    .await;
    group.start_all().await;
    let leader = group.leader(ELECTION).await;
    let mut expected = Vec::new();
    for n in 0..5 {
        group.handle(leader).write(payload(n)).await.expect("write");
        expected.push(payload(n));
    }
    converged(&group, &expected).await;

    let follower = group.other_than(leader);
    group.stop(follower).await;
    for n in 5..30 {
        group.handle(leader).write(payload(n)).await.expect("write");
        expected.push(payload(n));
    }
    let leader_handle = group.handle(leader);
    wait_for(Duration::from_secs(10), "the leader purged its log", || {
        leader_handle.status().purged_index.filter(|&i| i > 10)
    })
    .await;

    let index = (follower - 1) as usize;
    group.nodes[index].stores = RaftStores::in_memory();
    group.nodes[index].machine = Default::default();
    group.start(follower).await;
    assert!(
        !group.handle(follower).initialize_if_needed().await.unwrap(),
        "a wiped node of a live group must not initialize"
    );
    let caught_up = group.nodes[index].machine.payloads() == expected;
    assert!(
        !group.handle(follower).may_vote() || caught_up,
        "no vote before catching up"
    );
    converged(&group, &expected).await;
    let rejoined = group.handle(follower);
    wait_for(
        Duration::from_secs(10),
        "the wiped node votes again",
        || rejoined.may_vote().then_some(()),
    )
    .await;
    assert!(
        rejoined.status().snapshot_index.is_some(),
        "caught up by snapshot"
    );
    group
        .handle(leader)
        .write(payload(30))
        .await
        .expect("leader still works");
    expected.push(payload(30));
    converged(&group, &expected).await;
    group.shutdown().await;
}

/// The Raft routes carry their own body limit (64 MiB), so nested under a prefix and merged
/// with other routes (as the server and the placement group mount them) they take bodies above
/// axum's default 2 MB limit; above 64 MiB they answer 413; without the secret the body is
/// not read (401). Requests go through the router in process (a client that sends a body the
/// server refused midway may see the connection closed rather than the answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_raft_routes_have_their_own_body_limit() {
    use tower::ServiceExt;
    let mut group = Group::bind(1, |_| {}).await;
    group.start_all().await;
    let app = axum::Router::new()
        .route(
            "/other",
            axum::routing::post(|_: axum::body::Bytes| async { "ok" }),
        )
        .nest("/placement", coopr_raft::router(group.handle(1)));
    let status = |bytes: usize, secret: &'static str| {
        let request = axum::http::Request::post("/placement/raft/snapshot")
            .header("Coopr-Cluster-Secret", secret)
            .header("Coopr-Raft-Group", "coopr")
            .header("Content-Type", coopr_raft::wire::CONTENT_TYPE)
            .body(axum::body::Body::from(vec![7u8; bytes]))
            .unwrap();
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap().status().as_u16() }
    };
    // Read in full, then refused as a malformed body (not as too large).
    assert_eq!(status(3 << 20, "test-secret").await, 400);
    let limit = coopr_raft::wire::MAX_RPC_BODY_BYTES;
    assert_eq!(status(limit, "test-secret").await, 400);
    assert_eq!(status(limit + 1, "test-secret").await, 413);
    assert_eq!(status(3 << 20, "wrong").await, 401);
    group.shutdown().await;
}

/// RPCs with a wrong secret are refused with 401, so a node configured with a wrong secret
/// never joins: the other two elect a leader and commit without it, and it applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() {
    let mut group = Group::bind(3, |_| {}).await;
    group.start(1).await;
    group.start(2).await;
    let mut bad = group.config_of(3);
    bad.secret = "not-the-secret".into();
    group.start_with(3, bad).await;
    for id in 1..=3 {
        group
            .handle(id)
            .initialize_if_needed()
            .await
            .expect("initialize");
    }

    let response = reqwest::Client::new()
        .post(format!("{}/raft/vote", group.nodes[0].addr))
        .header("Coopr-Cluster-Secret", "wrong")
        .header("Coopr-Raft-Group", "coopr")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);

    let leader = wait_for(ELECTION, "a leader among nodes 1 and 2", || {
        [1, 2].into_iter().find(|&id| group.handle(id).is_leader())
    })
    .await;
    group
        .handle(leader)
        .write(payload(1))
        .await
        .expect("write with 2 of 3");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        group.nodes[2].machine.payloads().is_empty(),
        "node 3 applied nothing"
    );
    assert_ne!(group.handle(3).status().leader, Some(leader));
    group.shutdown().await;
}

/// `count` deterministic pseudo-random bytes (xorshift seeded with `seed`): incompressible
/// payloads whose JSON forms are as large as real snapshot data.
fn noise(seed: u64, count: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A follower wiped after the leader compacted a log whose state is well above axum's
/// default body limit (2 MB; the snapshot here is about 17 MB, each 1 MiB chunk once
/// travelled as a ~3.5 MB JSON array of numbers and was refused with 413 forever) receives
/// the whole snapshot, catches up and ends with exactly the leader's state (same payloads at
/// the same log indices).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_catches_up_from_a_large_snapshot() {
    // 16 KiB payloads: even 32 of them in one append stay below the old limit, so only the
    // snapshot transfer is under test.
    const WRITES: u64 = 300;
    const PAYLOAD_BYTES: usize = 16 * 1024;
    // Shows why a transfer fails (openraft warns on every failed snapshot chunk).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let mut group = Group::bind(3, |config| {
        config.snapshot_every = 100;
        config.logs_kept_after_snapshot = 0;
    })
    .await;
    // On disk: snapshots are files, written, sent and read part by part.
    let (_dirs, leader, follower) =
        writes_while_a_follower_is_down(&mut group, WRITES, PAYLOAD_BYTES).await;
    let leader_handle = group.handle(leader);
    purge_whole_log(&leader_handle).await;
    let leader_machine = group.nodes[(leader - 1) as usize].machine.clone();
    let snapshot_bytes = serde_json::to_vec(&leader_machine.list()).unwrap().len();
    assert!(
        snapshot_bytes > 8 << 20,
        "the state must be well above the old 2 MB body limit, is {snapshot_bytes} bytes"
    );

    let index = (follower - 1) as usize;
    let wiped = tempfile::tempdir().unwrap();
    group.nodes[index].stores = RaftStores::open(wiped.path()).unwrap();
    group.nodes[index].machine = Default::default();
    group.start(follower).await;
    assert!(!group.handle(follower).initialize_if_needed().await.unwrap());
    let rejoined = group.nodes[index].machine.clone();
    let expected = leader_machine.list();
    wait_for(
        Duration::from_secs(30),
        "the wiped follower holds the leader's state",
        || (rejoined.list().len() == expected.len()).then_some(()),
    )
    .await;
    assert!(
        rejoined.list() == expected,
        "same payloads at the same indices"
    );
    let rejoined_handle = group.handle(follower);
    wait_for(
        Duration::from_secs(10),
        "the wiped node votes again",
        || rejoined_handle.may_vote().then_some(()),
    )
    .await;
    assert!(
        rejoined_handle.status().snapshot_index.is_some(),
        "caught up by snapshot"
    );
    // One snapshot file per node: each new one deleted the one it superseded, and the
    // received copy is the follower's only file.
    for (node, stores) in group.nodes.iter().map(|n| (n.id, &n.stores)) {
        if node == follower || node == leader {
            let files = stores.snapshots.files().unwrap();
            assert_eq!(files.len(), 1, "node {node}: {files:?}");
            let size = std::fs::metadata(&files[0]).unwrap().len() as usize;
            assert!(size > snapshot_bytes, "node {node}: {size} bytes");
        }
    }
    group.shutdown().await;
}

/// Puts the group's nodes on disk (snapshots are files), starts them, stops a follower and
/// makes `writes` writes of `bytes` each at the leader: the stores' directories, the leader
/// and the stopped follower.
async fn writes_while_a_follower_is_down(
    group: &mut Group,
    writes: u64,
    bytes: usize,
) -> (Vec<tempfile::TempDir>, u64, u64) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (node, dir) in group.nodes.iter_mut().zip(&dirs) {
        node.stores = RaftStores::open(dir.path()).unwrap();
    }
    group.start_all().await;
    let leader = group.leader(ELECTION).await;
    let follower = group.other_than(leader);
    group.stop(follower).await;
    for n in 0..writes {
        group
            .handle(leader)
            .write(noise(n, bytes))
            .await
            .expect("write");
    }
    (dirs, leader, follower)
}

/// Snapshots `leader`'s whole log and waits until it is purged through its last entry. A
/// trigger that arrives while an automatic snapshot is being built is dropped, and
/// that snapshot may end just before the last entry: it triggers again until the purge.
async fn purge_whole_log(leader: &coopr_raft::RaftHandle) {
    let last = leader.status().last_log_index.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader
        .status()
        .purged_index
        .is_none_or(|purged| purged < last)
    {
        assert!(
            Instant::now() < deadline,
            "the leader did not snapshot and purge its whole log within 30 s: {:?}",
            leader.status()
        );
        leader.trigger_snapshot().await.expect("snapshot");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The slow-snapshot tests hold a link and an install for seconds against election timeouts of
/// 1-2 s: one at a time, so that they do not starve each other's heartbeats of two cores.
static ONE_SLOW_SNAPSHOT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chunks of the snapshots in the tests below: about 40 of them.
const CHUNK_BYTES: u64 = 16 * 1024;

/// A group of three nodes on disk whose leader snapshotted and purged its whole log while one
/// follower was down (and, if `wiped`, lost its stores): the follower, not started again yet,
/// can catch up only by a snapshot. Election timeouts 1-2 s; `chunk_timeout_ms`: each snapshot
/// chunk's timeout, if not the default.
struct Behind {
    group: Group,
    _dirs: Vec<tempfile::TempDir>,
    leader: u64,
    follower: u64,
    /// The leader's term once it purged its log.
    term: u64,
    /// The chunks of the leader's one snapshot.
    snapshot_chunks: u64,
}

impl Behind {
    async fn new(wiped: bool, chunk_timeout_ms: Option<u64>) -> Behind {
        const TIMEOUT_MS: u64 = 1_000;
        // Shows why a chunk was sent again (openraft warns on every failed chunk and stream).
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_test_writer()
            .try_init();
        let mut group = Group::bind(3, |config| {
            if let Some(timeout) = chunk_timeout_ms {
                config.snapshot_timeout_ms = timeout;
            }
            config.election_timeout_min_ms = TIMEOUT_MS;
            config.election_timeout_max_ms = 2 * TIMEOUT_MS;
            config.snapshot_every = 5;
            config.snapshot_log_percent = 0;
            config.logs_kept_after_snapshot = 0;
            config.snapshot_chunk_bytes = CHUNK_BYTES;
        })
        .await;
        let (mut dirs, leader, follower) =
            writes_while_a_follower_is_down(&mut group, 40, 16 * 1024).await;
        let leader_handle = group.handle(leader);
        // A snapshot of the whole log, purged through its end: the node that installs it is
        // then as up to date as the leader, and would win an election it started after the
        // install.
        purge_whole_log(&leader_handle).await;
        let term = leader_handle.status().term;
        let files = group.node(leader).stores.snapshots.files().unwrap();
        assert_eq!(files.len(), 1, "the leader's snapshots: {files:?}");
        let snapshot_chunks = std::fs::metadata(&files[0])
            .unwrap()
            .len()
            .div_ceil(CHUNK_BYTES);
        let node = group.node(follower);
        if wiped {
            let wiped_dir = tempfile::tempdir().unwrap();
            node.stores = RaftStores::open(wiped_dir.path()).unwrap();
            dirs.push(wiped_dir);
        }
        node.machine = Default::default();
        Behind {
            group,
            _dirs: dirs,
            leader,
            follower,
            term,
            snapshot_chunks,
        }
    }

    /// Starts the follower again (a wiped one does not initialize the group).
    async fn start_follower(&mut self, wiped: bool) {
        self.group.start(self.follower).await;
        if wiped {
            assert!(!self
                .group
                .handle(self.follower)
                .initialize_if_needed()
                .await
                .unwrap());
        }
    }

    /// Waits until the follower holds the leader's state.
    async fn caught_up(&self, within: Duration) {
        let rejoined = self.group.nodes[(self.follower - 1) as usize]
            .machine
            .clone();
        let leader = self.group.nodes[(self.leader - 1) as usize].machine.clone();
        // Both, waited for: the node's metrics show the installed snapshot a little after its
        // machine holds the state.
        let follower = self.group.handle(self.follower);
        wait_for(
            within,
            "the follower holds the leader's state, from a snapshot",
            || {
                (rejoined.list() == leader.list() && follower.status().snapshot_index.is_some())
                    .then_some(())
            },
        )
        .await;
    }
}

/// A node that receives a snapshot slowly (each chunk held on the link) and installs it slowly
/// (for longer than its election timeout) does not campaign meanwhile: the leader and the term
/// stay as they were. openraft 0.9 has no pre-vote: before, such a node timed out, campaigned
/// at a higher term and deposed the leader with its next answer (a wiped node did so twice at a
/// million clusters, `coopr-bench catchup`). `wiped`: the node lost its state; else it was only
/// down while the leader compacted its log. With `chunk_timeout_ms` set, each chunk is also
/// sent once (counted where the node receives them), the last one too, whose answer comes only
/// once the install ended, after more than `chunk_timeout_ms`.
async fn a_slow_snapshot(wiped: bool, chunk_timeout_ms: Option<u64>) {
    const INSTALL: Duration = Duration::from_secs(4);
    // About 40 chunks: 6 s on the held link, several election timeouts.
    const CHUNK_DELAY: Duration = Duration::from_millis(150);
    let _alone = ONE_SLOW_SNAPSHOT_AT_A_TIME.lock().await;
    let mut behind = Behind::new(wiped, chunk_timeout_ms).await;
    let (leader, follower, term) = (behind.leader, behind.follower, behind.term);
    let node = behind.group.node(follower);
    *node.machine.restore_delay.lock().unwrap() = INSTALL;
    *node.chunk_delay.lock().unwrap() = CHUNK_DELAY;
    behind.start_follower(wiped).await;
    behind.caught_up(Duration::from_secs(60)).await;
    let group = behind.group;
    group
        .handle(leader)
        .write(payload(1))
        .await
        .expect("the leader still leads");
    for id in group.running() {
        let status = group.handle(id).status();
        assert_eq!(
            (status.leader, status.term),
            (Some(leader), term),
            "node {id}: no election happened"
        );
    }
    if chunk_timeout_ms.is_some() {
        // The snapshot the node installed is the last one it was handed; the leader sent each
        // of its chunks once. (Under load the leader's stream to the node may first send an
        // older snapshot it still held; that one is not the leader's current snapshot.)
        let handed = group.nodes[(follower - 1) as usize]
            .snapshot_chunks
            .lock()
            .unwrap()
            .clone();
        let installed = &handed.last().expect("the node was handed a snapshot").0;
        let of_installed: Vec<u64> = handed
            .iter()
            .filter(|(id, _)| id == installed)
            .map(|(_, offset)| *offset)
            .collect();
        let once: std::collections::BTreeSet<u64> = of_installed.iter().copied().collect();
        assert_eq!(
            (of_installed.len() as u64, once.len() as u64),
            (behind.snapshot_chunks, behind.snapshot_chunks),
            "chunks of snapshot {installed} handed (all, distinct offsets), in chunks of \
             {CHUNK_BYTES} bytes: {handed:?}"
        );
    }
    group.shutdown().await;
}

/// Also: the leader waits for the last chunk's answer while the node installs (4 s, longer
/// than a chunk's timeout here): it does not give up on the stream and send the snapshot again
/// (it did: about twice the chunks were sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_that_installs_slowly_does_not_depose_the_leader() {
    a_slow_snapshot(true, Some(2_500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_that_receives_and_installs_slowly_does_not_depose_the_leader() {
    a_slow_snapshot(false, None).await;
}

/// A wiped node whose last snapshot chunk is lost on a hung link (that chunk, and every request
/// to the node for 3 s, never answered) catches up seconds after the link came back: the
/// leader, whose probes find the node unreachable and then not installing, gives the chunk up
/// and sends it again (openraft resends the failed chunk, not the whole snapshot). Before, it
/// waited for that chunk's answer for `snapshot_install_timeout_ms` (10 minutes, the default
/// here), and the wiped node, which has no membership before the snapshot, never campaigned
/// to end the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_whose_last_snapshot_chunk_is_lost_catches_up_once_the_link_is_back() {
    let _alone = ONE_SLOW_SNAPSHOT_AT_A_TIME.lock().await;
    let mut behind = Behind::new(true, Some(1_000)).await;
    {
        let mut hang = behind.group.node(behind.follower).hang.lock().unwrap();
        hang.at_last_chunk = true;
        hang.lasts = Duration::from_secs(3);
    }
    behind.start_follower(true).await;
    behind.caught_up(Duration::from_secs(30)).await;
    let (lost, next) = behind
        .group
        .node(behind.follower)
        .hang
        .lock()
        .unwrap()
        .lost_and_next()
        .expect("the last chunk was lost");
    // The lost chunk never reached the node; the next one it was handed is that chunk again,
    // not the snapshot from its start. (On a loaded machine the leader may first send an
    // older snapshot that its stream to the node still held; that one's last chunk is lost
    // then, and the current snapshot follows it.)
    assert_eq!(next, Some(lost), "the chunk handed after the lost one");
    behind.group.shutdown().await;
}

/// Snapshots grow rarer as the state grows (`snapshot_log_percent` 100): after a snapshot of
/// S bytes, the next is built only once the commands applied since add up to S, even with
/// `snapshot_every = 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_snapshot_waits_for_a_snapshots_worth_of_commands() {
    const KIB: usize = 1024;
    let mut group = Group::bind(3, |config| config.snapshot_every = 1).await;
    group.start_all().await;
    let leader = group.leader(ELECTION).await;
    let handle = group.handle(leader);
    let gauge = handle.snapshot_gauge();
    for n in 0..20 {
        handle.write(noise(n, KIB)).await.expect("write");
    }
    handle.trigger_snapshot().await.expect("trigger");
    let last = handle.status().last_log_index;
    wait_for(
        Duration::from_secs(10),
        "a snapshot of every write, none being built",
        || (handle.status().snapshot_index == last && gauge.due(0)).then_some(()),
    )
    .await;
    let size = gauge.snapshot_bytes();
    assert!(size > 20 * KIB as u64, "{size} bytes");
    assert_eq!(gauge.applied_bytes(), 0);
    // Just under the snapshot's size: no snapshot, however many entries.
    let under = (size as usize - 1) / KIB;
    for n in 0..under {
        handle
            .write(noise(100 + n as u64, KIB))
            .await
            .expect("write");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        handle.status().snapshot_index,
        last,
        "{under} entries of {} bytes after a snapshot of {size} bytes",
        KIB
    );
    // One more passes it: the next snapshot follows within a few policy rounds.
    handle.write(noise(99, KIB)).await.expect("write");
    wait_for(Duration::from_secs(10), "the next snapshot", || {
        (handle.status().snapshot_index > last).then_some(())
    })
    .await;
    assert!(gauge.snapshot_bytes() > size);
    group.shutdown().await;
}
