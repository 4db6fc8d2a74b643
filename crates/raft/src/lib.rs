//! A replicated state machine on openraft 0.9 (storage v2), generic over an opaque
//! [`StateMachine`]: used for the DC log (the Raft group of one datacenter's server nodes) and
//! for the placement group (a Raft group spanning datacenters).
//!
//! ```text
//!   server ── write(bytes) ──> RaftHandle ── batcher: client_write_ff(Batch) ──> openraft RaftCore
//!     │  read_barrier / status / watch_leader                     │            │
//!     │                                            RaftLogStore ──┘            └── HttpNetwork
//!     │                                 (coopr_store::WalStore: raft-log/)         │ POST (wire)
//!     │                                                                            v
//!     │                                         router(handle) on the other nodes' internal port
//!     │                                                  /raft/append /raft/vote /raft/snapshot
//!     │  committed entries
//!     └── StateMachine::apply <── RaftStateMachineStore ── snapshots/snapshot-<seq>.cps
//!                                   (one file per snapshot, written and read part by part)
//! ```
//!
//! - [`log_store`]: the Raft log, vote, committed log id and purge point on a
//!   [`coopr_store::LogStore`]; every write is fsync'd before openraft is told it is durable.
//! - [`state_machine`]: drives the application [`StateMachine`] and keeps its snapshots; at
//!   start the application is restored from the last snapshot and openraft re-applies the log.
//! - [`snapshot`]: snapshot files (one per snapshot, the superseded one deleted), written,
//!   sent and read one part at a time, every part checksummed.
//! - [`network`]: the RPC client and the axum [`router`] (shared secret, group name, timeouts,
//!   body limit); [`wire`]: the binary body of the RPCs that carry bulk bytes; [`transport`]:
//!   the seam every call to another node goes through (HTTP, or in-memory for a simulation).
//! - [`node`]: [`start`], [`RaftConfig`] and the [`RaftHandle`] the server uses; its writes
//!   are group-committed (concurrent writes share one log entry, a [`Batch`]).
//!
//! # Nodes that lost their state
//! Raft assumes a voter never forgets what it acknowledged. A node whose disk was wiped breaks
//! that: openraft 0.9 then trips a (debug) assertion in the leader when the follower's log goes
//! backwards (openraft #898), and the node could vote for a candidate that lacks entries it had
//! acknowledged, losing committed writes if another node fails meanwhile. This crate:
//! - enables openraft's `loosen-follower-log-revert` feature, so the leader restarts
//!   replication to such a follower (it receives a snapshot if the log was purged) instead of
//!   panicking;
//! - in [`RaftHandle::initialize_if_needed`], lets a pristine node that finds a member which has
//!   applied entries skip initialization and refuse to vote (503 on `/raft/vote`) until it has
//!   applied as much as that member had: the window in which it could help elect a leader
//!   missing acknowledged entries is closed, except when no other member is reachable at its
//!   start (it then bootstraps as if the group were new);
//! - keeps a node that receives a snapshot from campaigning: openraft 0.9 has no pre-vote,
//!   the leader's stream to that node sends no heartbeats while it sends a snapshot, and a
//!   node that times out campaigns at a higher term that deposes the leader with its next
//!   answer, however hopeless the campaign (its log is behind). Each snapshot chunk counts as
//!   a heartbeat (an empty append with the chunk's vote), and the install of the last chunk
//!   runs to its end with elections off on that node ([`network`]). The leader waits for the
//!   last chunk's answer up to `snapshot_install_timeout_ms` (10 minutes), not a chunk's 5 s:
//!   with openraft's bound of one chunk on it, the leader gave up on the stream while the node
//!   installed and sent the whole snapshot again. While it waits it asks the node every
//!   chunk timeout whether it is installing, and gives the chunk up as lost after two "no" or
//!   two probes without an answer (a hung link): a wiped node, which has no membership and so
//!   never campaigns, otherwise stayed behind for the whole bound;
//! - refuses to start when the log store is empty but the snapshot store is not (half a wipe),
//!   which would feed a snapshot of an earlier incarnation to openraft (openraft #1894).
//!   Wipe a node's whole Raft directory, or nothing.
//!
//! # Limitations
//! - Membership is static (the configured `members`); there is no API to add or remove nodes.
//! - Snapshots are sent in chunks of `snapshot_chunk_bytes` (at most 32 MiB), read from the
//!   snapshot file; an RPC body is at most
//!   [`wire::MAX_RPC_BODY_BYTES`] (64 MiB), and a written payload at most
//!   [`node::MAX_PAYLOAD_BYTES`] (32 MiB).
//! - A write that times out may still commit later; callers retry idempotently.

pub mod log_store;
pub mod network;
pub mod node;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;
/// The seam in front of node-to-node calls (the `coopr-transport` crate).
pub use coopr_transport as transport;
pub mod types;
pub mod wire;

pub use log_store::RaftLogStore;
pub use network::{router, same_secret, HttpNetworkFactory};
pub use node::{
    start, start_with, ConfigError, RaftConfig, RaftHandle, RaftStatus, RaftStores, Role,
    StartError, WriteError, SNAPSHOT_INSTALL_TIMEOUT_MS,
};
pub use runtime::seed_thread_rng;
pub use snapshot::{SnapshotData, SnapshotStore};
pub use state_machine::{
    collect_parts, import_log_store_snapshot, PartSink, Parts, RaftStateMachineStore,
    SnapshotGauge, StateMachine, TakenSnapshot,
};
pub use transport::{Answer, Call, CallError, HttpTransport, LinkFaults, MemNetwork, Transport};
pub use types::{Batch, NodeId, Payload, TypeConfig};
