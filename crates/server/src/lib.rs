//! The coopr server on one node: the REST API (`api`), the write path (`core`: the DC log on
//! Raft), the job driver (`driver`: runs on the DC log's leader only) and first-start seeding.
//!
//! ```text
//!  HTTP (axum) --> route_to_leader: another DC's cluster? write/strong read: forward to that DC;
//!                                   read: serve from the replica copy
//!                                   follower? forward the write to the leader's API
//!                        |
//!                  api::* handlers --validate--> Core::propose(Command) --> Raft (majority fsync)
//!                        ^                                                     |
//!                  Core::read() <---- local State <---- DcStateMachine::apply (every node)
//!  driver (leader only): seed, ExpireTasks, ReleaseProvisioner, RetireJobs --> Core::propose
//!  replication::puller (leader only): pull other DCs' shards --> ApplyReplicationBatch
//!  replication::owner: POST /internal/replication/pull (leader only) <-- other DCs' pullers
//! ```
//!
//! Shards are placed statically over the deployment's DCs ([`placement`]): this DC creates
//! clusters only in shards it owns and replicates every other shard from its owner.

pub mod api;
pub mod app;
pub mod archive;
pub mod clock;
pub mod config;
pub mod console;
pub mod core;
pub mod driver;
pub mod metrics;
pub mod placement;
pub mod random;
pub mod replication;
pub mod seed;
pub mod start;
pub mod supervise;
pub mod tenant_push;
pub mod write;

pub use crate::app::App;
pub use crate::clock::{Clock, SimClock, SystemClock};
pub use crate::config::{AuthMode, Member, PlacementMember, ServerConfig};
pub use crate::random::Random;
pub use crate::start::{
    start, start_with, start_witness, start_witness_with, write_private, Network, ServerHandle,
    StartOptions, Storage, WitnessHandle,
};
