//! Raft RPCs over HTTP: the client side ([`HttpNetworkFactory`]) and the server side
//! ([`router`]).
//!
//! ```text
//!   node A (leader)                                     node B
//!   openraft replication ─> HttpNetwork ─POST wire──>  router(handle_b)
//!                            {addr_b}/raft/append        ├ check Coopr-Cluster-Secret (401)
//!                            {addr_b}/raft/vote          ├ check Coopr-Raft-Group     (409)
//!                            {addr_b}/raft/snapshot      ├ read body (≤ 64 MiB, else 413)
//!                                                        └ Raft::append_entries / vote /
//!                                                          install_snapshot (chunk)
//!   <── 200 JSON Result<response, RaftError> ───────────
//! ```
//!
//! Appends and snapshot chunks travel in the binary [`wire`] format (their bulk bytes as they
//! are, not as JSON numbers or hex), votes as JSON; the receiver also reads JSON appends and
//! chunks, as nodes built before the wire format send them. No request above
//! [`MAX_RPC_BODY_BYTES`] is sent: an append above it is split (openraft's `PayloadTooLarge`
//! with a hint of fewer entries). A request refused with a 4xx is counted in
//! `coopr_raft_rpc_errors_total{group, rpc, status}` and logged at ERROR once per target and
//! RPC until it succeeds again: openraft retries it forever, and without that log a follower
//! that can never catch up (a DC one failure from losing its majority) would go unnoticed.
//!
//! Every request has a timeout (openraft's per-RPC TTL, itself derived from the heartbeat and
//! election timeouts; for snapshot chunks `snapshot_timeout_ms`, and for the last chunk, whose
//! answer comes once the node installed the snapshot, `snapshot_install_timeout_ms`, while
//! the node, asked every chunk timeout on `/raft/status`, says it is installing). A
//! connection error, a timeout or a non-200 status is reported to openraft as `Unreachable`,
//! which makes it back off instead of retrying in a hot loop. A member's address is a base URL;
//! to serve two groups on one port, nest each router under its own prefix and include the
//! prefix in the addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::node::RaftHandle;
use crate::transport::{Call, CallError, Transport};
use crate::types::{NodeId, TypeConfig};
use crate::wire::{self, MAX_RPC_BODY_BYTES};

/// The header carrying the shared secret of the cluster's internal port.
pub const SECRET_HEADER: &str = "Coopr-Cluster-Secret";
/// The header naming the Raft group (openraft's `cluster_name`), so that a message for one
/// group can never be fed to another group's node.
pub const GROUP_HEADER: &str = "Coopr-Raft-Group";

/// Probes in a row that find a node not installing the snapshot whose last chunk it was sent
/// (or that get no answer) before the leader stops waiting for that chunk's answer.
const LOST_INSTALL_PROBES: u32 = 2;

/// Route paths, relative to a member's base URL.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// Returns the node's [`crate::RaftStatus`] (used by a pristine node to find out whether the
/// group already exists, and by operators).
pub const STATUS_PATH: &str = "/raft/status";

/// Creates one [`HttpNetwork`] per target node; all send through one [`Transport`] (one
/// connection pool over HTTP).
///
/// A peer is called at the address this node's own configuration gives it (`addresses`), and
/// only at the address the group's membership holds for it when the configuration does not
/// name it (a node added later). The membership keeps the addresses of the node that
/// initialized the group, as that node reached its peers: a peer in another network (another
/// DC, behind its own link or proxy) may not be able to use them, and two survivors of a DC's
/// loss that call each other through the lost DC's addresses could never elect a leader.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    transport: Arc<dyn Transport>,
    secret: Arc<str>,
    group: Arc<str>,
    snapshot_timeout: Duration,
    addresses: Arc<BTreeMap<NodeId, String>>,
    refusals: Arc<Refusals>,
}

impl HttpNetworkFactory {
    /// `snapshot_timeout` bounds each snapshot chunk; `addresses` is where this node calls each
    /// peer it is configured with (its internal base URL, with the group's path prefix).
    pub fn new(
        transport: Arc<dyn Transport>,
        secret: &str,
        group: &str,
        snapshot_timeout: Duration,
        addresses: BTreeMap<NodeId, String>,
    ) -> Self {
        HttpNetworkFactory {
            transport,
            secret: secret.into(),
            group: group.into(),
            snapshot_timeout,
            addresses: Arc::new(addresses),
            refusals: Arc::default(),
        }
    }

    /// Where `target` is called: this node's configured address for it, else the membership's.
    fn base_url(&self, target: NodeId, node: &BasicNode) -> String {
        self.addresses
            .get(&target)
            .unwrap_or(&node.addr)
            .trim_end_matches('/')
            .to_owned()
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        HttpNetwork {
            factory: self.clone(),
            target,
            base_url: self.base_url(target, node),
        }
    }
}

/// The RPC client to one target node.
pub struct HttpNetwork {
    factory: HttpNetworkFactory,
    target: NodeId,
    base_url: String,
}

/// The three Raft RPCs, for paths, logs and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    AppendEntries,
    InstallSnapshot,
    Vote,
}

impl Rpc {
    fn path(self) -> &'static str {
        match self {
            Rpc::AppendEntries => APPEND_PATH,
            Rpc::InstallSnapshot => SNAPSHOT_PATH,
            Rpc::Vote => VOTE_PATH,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append_entries",
            Rpc::InstallSnapshot => "install_snapshot",
            Rpc::Vote => "vote",
        }
    }
}

/// The `(target, RPC)` pairs whose last attempt was refused (a 4xx, or a request too large to
/// send), shared by every client of one node. A refusal is not transient like a connection
/// error: openraft retries it forever and the follower never catches up, so the first
/// refusal of a pair is logged at ERROR, and its retries are not (they count in
/// `coopr_raft_rpc_errors_total`) until the pair succeeds again.
#[derive(Default)]
struct Refusals(Mutex<BTreeSet<(NodeId, Rpc)>>);

impl Refusals {
    /// Records a refusal; true if the pair was not refused already.
    fn refused(&self, target: NodeId, rpc: Rpc) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((target, rpc))
    }

    /// Records a success; true if the pair was refused before.
    fn accepted(&self, target: NodeId, rpc: Rpc) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(target, rpc))
    }
}

/// Why an RPC got no answer from the remote Raft node.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("POST {url}: status {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("node {target} is not installing the snapshot after {probes} probes: {reason}")]
    InstallLost {
        target: NodeId,
        probes: u32,
        reason: String,
    },
    #[error(
        "{rpc} to node {target}: request of {bytes} bytes is above the limit of {limit} bytes"
    )]
    TooLarge {
        rpc: &'static str,
        target: NodeId,
        bytes: usize,
        limit: usize,
    },
}

type RpcResult<Resp, E> = Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl HttpNetwork {
    /// Sends one RPC whose body is already encoded (`content_type`: JSON or [`wire`]).
    async fn post<Resp, E>(
        &self,
        rpc: Rpc,
        content_type: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}{}", self.base_url, rpc.path());
        let call = Call::post(&url, body)
            .header(SECRET_HEADER, &self.factory.secret)
            .header(GROUP_HEADER, &self.factory.group)
            .header(axum::http::header::CONTENT_TYPE.as_str(), content_type)
            .timeout(timeout);
        let answer = self
            .factory
            .transport
            .call(call)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&TransportError::Call(e))))?;
        let status = answer.status;
        if status != StatusCode::OK {
            let body = String::from_utf8_lossy(&answer.body).into_owned();
            let error = TransportError::Status {
                url: url.clone(),
                status,
                body,
            };
            if status.is_client_error() {
                self.refused(rpc, status.as_str(), &error);
            }
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        }
        if self.factory.refusals.accepted(self.target, rpc) {
            tracing::info!(
                group = %self.factory.group,
                target = self.target,
                rpc = rpc.name(),
                "raft RPC accepted again after being refused"
            );
        }
        let bytes = answer.body;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Resolves once the target, asked every chunk timeout, is found not to be installing a
    /// snapshot ([`LOST_INSTALL_PROBES`] answers in a row that it is not, or that many probes
    /// without an answer). Pending for as long as it answers that it installs one.
    async fn lost_install(&self) -> TransportError {
        let interval = self.factory.snapshot_timeout;
        let mut misses = 0;
        loop {
            tokio::time::sleep(interval).await;
            let reason = match self.installing(interval).await {
                Ok(true) => {
                    misses = 0;
                    continue;
                }
                Ok(false) => "it is not installing a snapshot".to_owned(),
                Err(e) => format!("no answer to a status probe: {e}"),
            };
            misses += 1;
            if misses >= LOST_INSTALL_PROBES {
                return TransportError::InstallLost {
                    target: self.target,
                    probes: misses,
                    reason,
                };
            }
        }
    }

    /// Asks the target whether it is installing a snapshot (`POST /raft/status`). A node that
    /// does not say (built before the field) counts as installing.
    async fn installing(&self, timeout: Duration) -> Result<bool, TransportError> {
        #[derive(serde::Deserialize)]
        struct Probe {
            installing: Option<bool>,
        }
        let url = format!("{}{STATUS_PATH}", self.base_url);
        let call = Call::post(&url, Vec::new())
            .header(SECRET_HEADER, &self.factory.secret)
            .header(GROUP_HEADER, &self.factory.group)
            .timeout(timeout);
        let answer = self.factory.transport.call(call).await?;
        if answer.status != StatusCode::OK {
            return Err(TransportError::Status {
                url,
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).into_owned(),
            });
        }
        let probe: Probe =
            serde_json::from_slice(&answer.body).map_err(|e| TransportError::Status {
                url,
                status: answer.status,
                body: format!("unreadable status: {e}"),
            })?;
        Ok(probe.installing.unwrap_or(true))
    }

    /// Counts a refused RPC (`reason`: the HTTP status, or `too_large` when the request was
    /// not sent) and logs the first of a series at ERROR (see [`Refusals`]).
    fn refused(&self, rpc: Rpc, reason: &str, error: &TransportError) {
        metrics::counter!(
            "coopr_raft_rpc_errors_total",
            "group" => self.factory.group.to_string(),
            "rpc" => rpc.name(),
            "status" => reason.to_owned(),
        )
        .increment(1);
        if self.factory.refusals.refused(self.target, rpc) {
            tracing::error!(
                group = %self.factory.group,
                target = self.target,
                rpc = rpc.name(),
                %error,
                "raft RPC refused; the target cannot catch up while this lasts \
                 (retries are counted in coopr_raft_rpc_errors_total, not logged)"
            );
        }
    }

    /// Sends a body in the [`wire`] format, if it fits in [`MAX_RPC_BODY_BYTES`] (the
    /// receiver's limit: a larger one would be refused anyway, and forever).
    async fn post_wire<Resp, E>(
        &self,
        rpc: Rpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if body.len() > MAX_RPC_BODY_BYTES {
            let error = TransportError::TooLarge {
                rpc: rpc.name(),
                target: self.target,
                bytes: body.len(),
                limit: MAX_RPC_BODY_BYTES,
            };
            self.refused(rpc, "too_large", &error);
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        }
        self.post(rpc, wire::CONTENT_TYPE, body, timeout).await
    }
}

fn encode<Req: wire::Bulk>(request: Req) -> Result<Vec<u8>, NetworkError> {
    wire::encode(request).map_err(|e| NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for HttpNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let body = encode(rpc).map_err(RPCError::Network)?;
        if body.len() > MAX_RPC_BODY_BYTES && entries > 1 {
            // openraft retries at once with at most the hinted number of entries; an entry
            // is at most MAX_PAYLOAD_BYTES plus its header, so one entry always fits.
            let bytes = body.len() as u128;
            let fit = u64::try_from(u128::from(entries) * MAX_RPC_BODY_BYTES as u128 / bytes)
                .unwrap_or(1);
            let hint = fit.clamp(1, entries - 1);
            tracing::debug!(
                target = self.target,
                entries,
                bytes = body.len(),
                hint,
                "append above the body limit, asking openraft for fewer entries"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        // One stage of a write's latency at the leader: an append round trip to one follower
        // (its handling, fsync included, and the network both ways). Heartbeats are left out.
        let started = tokio::time::Instant::now();
        let answer = self
            .post_wire(Rpc::AppendEntries, body, option.hard_ttl())
            .await;
        if entries > 0 {
            metrics::histogram!(
                "coopr_raft_append_rpc_seconds",
                "group" => self.factory.group.to_string()
            )
            .record(started.elapsed().as_secs_f64());
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        if !rpc.done {
            let body = encode(rpc).map_err(RPCError::Network)?;
            return self
                .post_wire(Rpc::InstallSnapshot, body, self.factory.snapshot_timeout)
                .await;
        }
        // The last chunk is answered once the node installed the snapshot: it gets openraft's
        // bound (`snapshot_install_timeout_ms`, minutes), and meanwhile the node is asked every
        // chunk timeout whether it is installing. A chunk lost on a hung link is given up after
        // two answers of "not installing" or two probes without an answer in a row, and
        // openraft sends that chunk again, instead of waiting out the install bound (a wiped
        // node, which cannot campaign before it has a membership, stayed behind that long).
        let timeout = option.hard_ttl().max(self.factory.snapshot_timeout);
        let body = encode(rpc).map_err(RPCError::Network)?;
        tokio::select! {
            answer = self.post_wire(Rpc::InstallSnapshot, body, timeout) => answer,
            lost = self.lost_install() => {
                tracing::warn!(
                    group = %self.factory.group,
                    target = self.target,
                    %lost,
                    "gave up waiting for the answer to the last snapshot chunk; sending again"
                );
                metrics::counter!(
                    "coopr_raft_snapshot_installs_lost_total",
                    "group" => self.factory.group.to_string()
                )
                .increment(1);
                Err(RPCError::Unreachable(Unreachable::new(&lost)))
            }
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.post(Rpc::Vote, "application/json", body, option.hard_ttl())
            .await
    }
}

/// The routes of one Raft node: `POST /raft/append`, `/raft/vote`, `/raft/snapshot`, for
/// mounting on the server's internal port. Each request must carry the cluster secret
/// (`401` otherwise) and the node's group name (`409` otherwise); its body is read only after
/// those checks, and at most [`MAX_RPC_BODY_BYTES`] of it (`413` above). The limit is set on
/// these routes themselves, so it holds wherever the router is merged or nested (an outer
/// router's limit, such as axum's default of 2 MB, does not apply to them).
pub fn router(node: RaftHandle) -> Router {
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(STATUS_PATH, post(status))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY_BYTES))
        .with_state(node)
}

/// Whether `given` is the cluster secret `expected`, compared in time independent of where
/// the first difference is (the one comparison of secrets every internal endpoint uses).
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A refused request: status and message (small, unlike a `Response`).
type Refusal = (StatusCode, String);

fn authorize(node: &RaftHandle, headers: &HeaderMap) -> Result<(), Refusal> {
    let secret = headers
        .get(SECRET_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !same_secret(secret, node.secret().as_bytes()) {
        tracing::warn!("raft RPC with a wrong or missing cluster secret");
        return Err((
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster secret".to_owned(),
        ));
    }
    let group = headers
        .get(GROUP_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if group != node.group().as_bytes() {
        let message = format!(
            "this node serves raft group {:?}, not {:?}",
            node.group(),
            String::from_utf8_lossy(group)
        );
        return Err((StatusCode::CONFLICT, message));
    }
    Ok(())
}

/// Authorizes `request`, then reads its body: the [`wire`] format, or JSON (what nodes built
/// before the wire format send, and the vote RPC).
async fn read_request<Req: DeserializeOwned>(
    node: &RaftHandle,
    request: Request,
    decode_wire: fn(&[u8]) -> Result<Req, wire::WireError>,
) -> Result<Req, Response> {
    authorize(node, request.headers()).map_err(IntoResponse::into_response)?;
    let is_wire = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == wire::CONTENT_TYPE.as_bytes());
    // The body limit is the route's `DefaultBodyLimit` (413 above it).
    let body = Bytes::from_request(request, &())
        .await
        .map_err(IntoResponse::into_response)?;
    let decoded = if is_wire {
        decode_wire(&body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    decoded.map_err(|e| (StatusCode::BAD_REQUEST, format!("bad raft request: {e}")).into_response())
}

fn no_wire<Req>(_: &[u8]) -> Result<Req, wire::WireError> {
    Err(wire::WireError::Magic)
}

fn reply<T: Serialize>(result: &T) -> Response {
    match serde_json::to_vec(result) {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(node): State<RaftHandle>, request: Request) -> Response {
    let request: AppendEntriesRequest<TypeConfig> =
        match read_request(&node, request, wire::decode).await {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
    // One stage of a write's latency at a follower: openraft takes the entries (its own log
    // append and fsync included) and answers.
    let started = tokio::time::Instant::now();
    let answer = node.raft().append_entries(request).await;
    metrics::histogram!("coopr_raft_append_handle_seconds", "group" => node.group().to_string())
        .record(started.elapsed().as_secs_f64());
    reply(&answer)
}

async fn vote(State(node): State<RaftHandle>, request: Request) -> Response {
    let request: VoteRequest<NodeId> = match read_request(&node, request, no_wire).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    if !node.may_vote() {
        // A node that lost its state must not vote before it caught up (see the crate doc).
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is catching up after losing its state and does not vote yet",
        )
            .into_response();
    }
    reply(&node.raft().vote(request).await)
}

async fn snapshot(State(node): State<RaftHandle>, request: Request) -> Response {
    let request: InstallSnapshotRequest<TypeConfig> =
        match read_request(&node, request, wire::decode).await {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
    // A chunk from the leader is as good as a heartbeat (its stream to this node sends none
    // while a snapshot is under way): an empty append with the chunk's vote resets the election
    // timer, as a heartbeat would. Its answer does not matter; the chunk's own vote check
    // follows.
    let _ = node.raft().append_entries(heartbeat(request.vote)).await;
    if !request.done {
        return reply(&node.raft().install_snapshot(request).await);
    }
    // The last chunk: the install runs to its end even if the leader stops waiting (a restore
    // can outlast the chunk's timeout), and the node does not campaign meanwhile (see
    // `node::Installs`).
    let installing = node.installs().start();
    let raft = node.raft().clone();
    let vote = request.vote;
    let install = tokio::spawn(async move {
        let installed = raft.install_snapshot(request).await;
        // The leader sent nothing while it waited for this answer, so the node's election
        // timer ran out long ago: the install's end counts as the leader's heartbeat before
        // elections come back on, or the node campaigns at once (it did, and won: an election
        // at the end of every catch-up longer than an election timeout).
        let _ = raft.append_entries(heartbeat(vote)).await;
        drop(installing);
        installed
    });
    match install.await {
        Ok(result) => reply(&result),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// An empty append with `vote`: resets the election timer as the leader's heartbeat would. Its
/// answer does not matter.
fn heartbeat(vote: openraft::Vote<NodeId>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote,
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

async fn status(State(node): State<RaftHandle>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorize(&node, &headers) {
        return refusal.into_response();
    }
    reply(&node.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_new_once_until_the_rpc_succeeds() {
        let refusals = Refusals::default();
        assert!(refusals.refused(2, Rpc::InstallSnapshot), "first refusal");
        assert!(!refusals.refused(2, Rpc::InstallSnapshot), "a retry");
        assert!(refusals.refused(3, Rpc::InstallSnapshot), "another target");
        assert!(refusals.refused(2, Rpc::AppendEntries), "another RPC");
        assert!(refusals.accepted(2, Rpc::InstallSnapshot));
        assert!(!refusals.accepted(2, Rpc::InstallSnapshot));
        assert!(
            refusals.refused(2, Rpc::InstallSnapshot),
            "refused again after a success"
        );
    }
}
