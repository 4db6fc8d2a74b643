//! Raft RPCs over HTTP: the client side ([`HttpNetworkFactory`]) and the server side
//! ([`router`]).
//!
//! ```text
//!   node A (leader)                                     node B
//!   openraft replication ─> HttpNetwork ─POST JSON──>  router(handle_b)
//!                            {addr_b}/raft/append        ├ check Coopr-Cluster-Secret (401)
//!                            {addr_b}/raft/vote          ├ check Coopr-Raft-Group     (409)
//!                            {addr_b}/raft/snapshot      └ Raft::append_entries / vote /
//!                                                          install_snapshot (chunk)
//!   <── 200 JSON Result<response, RaftError> ───────────
//! ```
//!
//! Every request has a timeout (openraft's per-RPC TTL, itself derived from the heartbeat and
//! election timeouts, or `install_snapshot_timeout` for snapshot chunks). A connection error, a
//! timeout or a non-200 status is reported to openraft as `Unreachable`, which makes it back off
//! instead of retrying in a hot loop. A member's address is a base URL; to serve two groups on
//! one port, nest each router under its own prefix and include the prefix in the addresses.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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
use crate::types::{NodeId, TypeConfig};

/// The header carrying the shared secret of the cluster's internal port.
pub const SECRET_HEADER: &str = "Coopr-Cluster-Secret";
/// The header naming the Raft group (openraft's `cluster_name`), so that a message for one
/// group can never be fed to another group's node.
pub const GROUP_HEADER: &str = "Coopr-Raft-Group";

/// Route paths, relative to a member's base URL.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// Returns the node's [`crate::RaftStatus`] (used by a pristine node to find out whether the
/// group already exists, and by operators).
pub const STATUS_PATH: &str = "/raft/status";

/// Creates one [`HttpNetwork`] per target node; all share one connection pool.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    client: reqwest::Client,
    secret: Arc<str>,
    group: Arc<str>,
    snapshot_timeout: Duration,
}

impl HttpNetworkFactory {
    /// `connect_timeout` bounds TCP connects; `snapshot_timeout` each snapshot chunk.
    pub fn new(
        secret: &str,
        group: &str,
        connect_timeout: Duration,
        snapshot_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()?;
        Ok(HttpNetworkFactory {
            client,
            secret: secret.into(),
            group: group.into(),
            snapshot_timeout,
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        HttpNetwork {
            factory: self.clone(),
            target,
            base_url: node.addr.trim_end_matches('/').to_owned(),
        }
    }
}

/// The RPC client to one target node.
pub struct HttpNetwork {
    factory: HttpNetworkFactory,
    target: NodeId,
    base_url: String,
}

/// Why an RPC got no answer from the remote Raft node.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("POST {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST {url}: status {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
}

impl HttpNetwork {
    async fn post<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}{path}", self.base_url);
        let http = |source| TransportError::Http {
            url: url.clone(),
            source,
        };
        let response = self
            .factory
            .client
            .post(&url)
            .header(SECRET_HEADER, &*self.factory.secret)
            .header(GROUP_HEADER, &*self.factory.group)
            .timeout(timeout)
            .json(request)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&http(e))))?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            let error = TransportError::Status {
                url: url.clone(),
                status,
                body,
            };
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&http(e))))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.post(APPEND_PATH, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let timeout = option.hard_ttl().max(self.factory.snapshot_timeout);
        self.post(SNAPSHOT_PATH, &rpc, timeout).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.post(VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}

/// The routes of one Raft node: `POST /raft/append`, `/raft/vote`, `/raft/snapshot`, for
/// mounting on the server's internal port. Each request must carry the cluster secret
/// (`401` otherwise) and the node's group name (`409` otherwise).
pub fn router(node: RaftHandle) -> Router {
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(STATUS_PATH, post(status))
        .with_state(node)
}

/// Compares in time independent of where the first difference is.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
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

fn check_request<Req: DeserializeOwned>(
    node: &RaftHandle,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Req, Refusal> {
    authorize(node, headers)?;
    serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad raft request: {e}")))
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

async fn append(State(node): State<RaftHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let request: AppendEntriesRequest<TypeConfig> = match check_request(&node, &headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    reply(&node.raft().append_entries(request).await)
}

async fn vote(State(node): State<RaftHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let request: VoteRequest<NodeId> = match check_request(&node, &headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
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

async fn snapshot(State(node): State<RaftHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let request: InstallSnapshotRequest<TypeConfig> = match check_request(&node, &headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    reply(&node.raft().install_snapshot(request).await)
}

async fn status(State(node): State<RaftHandle>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorize(&node, &headers) {
        return refusal.into_response();
    }
    reply(&node.status())
}
