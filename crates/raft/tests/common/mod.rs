//! Helpers of the integration tests: a trivial state machine and an in-process group on
//! loopback, each node behind an HTTP server whose Raft node can be stopped and replaced.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use coopr_raft::{
    collect_parts, PartSink, Parts, RaftConfig, RaftHandle, RaftStores, StateMachine,
    TakenSnapshot, TypeConfig,
};
use openraft::raft::InstallSnapshotRequest;
use tower::ServiceExt;

/// An append-only list of `(log index, payload)`; the response to a payload is its log index
/// and its position in the list, 8 bytes each (little endian), see [`decode_response`].
#[derive(Default)]
pub struct ListMachine {
    pub entries: Mutex<Vec<(u64, Vec<u8>)>>,
    /// How long each restore takes at least (a large state's install).
    pub restore_delay: Mutex<Duration>,
}

impl ListMachine {
    pub fn list(&self) -> Vec<(u64, Vec<u8>)> {
        self.entries.lock().unwrap().clone()
    }
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.list()
            .into_iter()
            .map(|(_, payload)| payload)
            .collect()
    }
}

impl StateMachine for ListMachine {
    fn apply(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let mut list = self.entries.lock().unwrap();
        entries
            .iter()
            .map(|&(index, payload)| {
                let position = list.len() as u64;
                list.push((index, payload.to_vec()));
                [index.to_le_bytes(), position.to_le_bytes()].concat()
            })
            .collect()
    }

    fn snapshot(&self) -> TakenSnapshot {
        let bytes = serde_json::to_vec(&*self.entries.lock().unwrap()).unwrap();
        Box::new(move |out: PartSink<'_>| out(0, &bytes))
    }

    fn restore(&self, parts: Parts<'_>) -> anyhow::Result<()> {
        let delay = *self.restore_delay.lock().unwrap();
        std::thread::sleep(delay);
        let parts = collect_parts(parts)?;
        let list = match parts.get(&0) {
            Some(bytes) => serde_json::from_slice(bytes)?,
            None => Vec::new(),
        };
        *self.entries.lock().unwrap() = list;
        Ok(())
    }
}

/// `(log index, position in the list)` of a [`ListMachine`] response.
pub fn decode_response(response: &[u8]) -> (u64, u64) {
    let (index, position) = response.split_at(8);
    (
        u64::from_le_bytes(index.try_into().unwrap()),
        u64::from_le_bytes(position.try_into().unwrap()),
    )
}

type Slot = Arc<Mutex<Option<Router>>>;

/// What the node's HTTP server forwards to, and how long each snapshot chunk it receives is
/// held first (a slow link).
#[derive(Clone)]
struct Forward {
    slot: Slot,
    chunk_delay: Arc<Mutex<Duration>>,
    chunks: Arc<Mutex<Vec<ChunkAt>>>,
    hang: Arc<Mutex<LinkHang>>,
}

/// A snapshot chunk: the snapshot's id and the chunk's offset.
pub type ChunkAt = (String, u64);

/// A link to a node that hangs once, for a while, from the arrival of a snapshot's last chunk:
/// that chunk and every request arriving in the window are never answered (packets lost on a
/// link that does not reset its connections); later requests go through.
#[derive(Default)]
pub struct LinkHang {
    /// Whether a snapshot's last chunk starts it.
    pub at_last_chunk: bool,
    /// How long the link stays hung.
    pub lasts: Duration,
    /// When it ends, once it started.
    until: Option<tokio::time::Instant>,
    /// The chunk lost when it started.
    lost: Option<ChunkAt>,
    /// The first chunk the node was handed after it started.
    next: Option<ChunkAt>,
}

impl LinkHang {
    /// Whether a request arriving now is lost (`chunk`: the snapshot chunk it is, if one, and
    /// whether it is the last); starts the hang.
    fn swallows(&mut self, chunk: Option<&(ChunkAt, bool)>) -> bool {
        if let (None, true, Some((at, true))) = (self.until, self.at_last_chunk, chunk) {
            self.until = Some(tokio::time::Instant::now() + self.lasts);
            self.lost = Some(at.clone());
        }
        let hung = self
            .until
            .is_some_and(|until| tokio::time::Instant::now() < until);
        if let (false, Some(_), None, Some((at, _))) = (hung, &self.lost, &self.next, chunk) {
            self.next = Some(at.clone());
        }
        hung
    }

    /// The chunk lost when the hang started, and the first chunk the node was handed after
    /// it; `None` if it never started.
    pub fn lost_and_next(&self) -> Option<(ChunkAt, Option<ChunkAt>)> {
        Some((self.lost.clone()?, self.next.clone()))
    }
}

/// One node: a fixed address whose HTTP server forwards to the current Raft node, if any.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    slot: Slot,
    /// Each snapshot chunk sent to this node is held this long before it is handled.
    pub chunk_delay: Arc<Mutex<Duration>>,
    /// Snapshot chunks this node's Raft node was handed so far, in order (none while it is
    /// down).
    pub snapshot_chunks: Arc<Mutex<Vec<ChunkAt>>>,
    /// Makes the link to this node hang once (see [`LinkHang`]).
    pub hang: Arc<Mutex<LinkHang>>,
    server: tokio::task::JoinHandle<()>,
    pub handle: Option<RaftHandle>,
    pub machine: Arc<ListMachine>,
    pub stores: RaftStores,
}

async fn forward(State(forward): State<Forward>, request: Request) -> Response {
    let snapshot = request.uri().path() == "/raft/snapshot";
    if snapshot {
        let delay = *forward.chunk_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
    }
    // Which snapshot chunk this is, if one (the body read and put back).
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let chunk = snapshot
        .then(|| coopr_raft::wire::decode::<InstallSnapshotRequest<TypeConfig>>(&bytes).ok())
        .flatten()
        .map(|chunk| ((chunk.meta.snapshot_id, chunk.offset), chunk.done));
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    if forward.hang.lock().unwrap().swallows(chunk.as_ref()) {
        std::future::pending::<()>().await;
    }
    let router = forward.slot.lock().unwrap().clone();
    match router {
        Some(router) => {
            if let Some((at, _)) = chunk {
                forward.chunks.lock().unwrap().push(at);
            }
            router.oneshot(request).await.into_response()
        }
        None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "node down").into_response(),
    }
}

pub struct Group {
    pub nodes: Vec<TestNode>,
    pub config: RaftConfig,
}

impl Group {
    /// Binds `count` loopback servers (ports from the OS) and returns the group, no node
    /// started yet. `tune` adjusts the configuration shared by all nodes.
    pub async fn bind(count: u64, tune: impl Fn(&mut RaftConfig)) -> Group {
        let mut nodes = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=count {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = format!("http://{}", listener.local_addr().unwrap());
            members.insert(id, addr.clone());
            let slot: Slot = Arc::new(Mutex::new(None));
            let chunk_delay = Arc::new(Mutex::new(Duration::ZERO));
            let snapshot_chunks = Arc::new(Mutex::new(Vec::new()));
            let hang = Arc::new(Mutex::new(LinkHang::default()));
            let app = Router::new().fallback(forward).with_state(Forward {
                slot: slot.clone(),
                chunk_delay: chunk_delay.clone(),
                chunks: snapshot_chunks.clone(),
                hang: hang.clone(),
            });
            let server = tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            nodes.push(TestNode {
                id,
                addr,
                slot,
                chunk_delay,
                snapshot_chunks,
                hang,
                server,
                handle: None,
                machine: Arc::new(ListMachine::default()),
                stores: RaftStores::in_memory(),
            });
        }
        let mut config = RaftConfig::new(1, members, "test-secret");
        config.write_timeout_ms = 2_000;
        tune(&mut config);
        Group { nodes, config }
    }

    pub fn config_of(&self, id: u64) -> RaftConfig {
        RaftConfig {
            node_id: id,
            ..self.config.clone()
        }
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[usize::try_from(id - 1).unwrap()]
    }

    /// Starts node `id` on its current stores with `config`, and serves it.
    pub async fn start_with(&mut self, id: u64, config: RaftConfig) {
        let node = self.node(id);
        let handle = coopr_raft::start(config, node.stores.clone(), node.machine.clone())
            .await
            .expect("start raft node");
        *node.slot.lock().unwrap() = Some(coopr_raft::router(handle.clone()));
        node.handle = Some(handle);
    }

    pub async fn start(&mut self, id: u64) {
        let config = self.config_of(id);
        self.start_with(id, config).await;
    }

    /// Starts every node and initializes the group on each.
    pub async fn start_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|node| node.id).collect();
        for &id in &ids {
            self.start(id).await;
        }
        for &id in &ids {
            self.handle(id)
                .initialize_if_needed()
                .await
                .expect("initialize");
        }
    }

    pub fn handle(&self, id: u64) -> RaftHandle {
        self.nodes[usize::try_from(id - 1).unwrap()]
            .handle
            .clone()
            .expect("node is running")
    }

    /// Stops node `id`'s Raft node; its address answers 503 until it is started again.
    pub async fn stop(&mut self, id: u64) {
        let node = self.node(id);
        *node.slot.lock().unwrap() = None;
        if let Some(handle) = node.handle.take() {
            handle.shutdown().await;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|node| node.handle.is_some())
            .map(|node| node.id)
            .collect()
    }

    /// A running node other than `id` (the first by id).
    pub fn other_than(&self, id: u64) -> u64 {
        self.running()
            .into_iter()
            .find(|&other| other != id)
            .expect("another running node")
    }

    /// Waits until every running node agrees on one leader among the running nodes.
    pub async fn leader(&self, within: Duration) -> u64 {
        let running = self.running();
        wait_for(within, "a leader all running nodes agree on", || {
            let leaders: Vec<Option<u64>> = running
                .iter()
                .map(|&id| self.handle(id).status().leader)
                .collect();
            match leaders.first() {
                Some(&Some(leader))
                    if running.contains(&leader)
                        && leaders.iter().all(|l| *l == Some(leader))
                        && self.handle(leader).is_leader() =>
                {
                    Some(leader)
                }
                _ => None,
            }
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
        for node in &self.nodes {
            node.server.abort();
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, panicking after `within`.
pub async fn wait_for<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
