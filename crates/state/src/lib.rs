//! The coopr state machine and its persistence.
//!
//! Every state change is a [`Command`] inside a log [`Entry`]; [`State::apply`] is deterministic, so
//! the state is a pure function of the log. [`persist`] ties a state to a
//! [`coopr_store::LogStore`]: entries are appended durably, then applied; snapshots are per shard,
//! and recovery replays the log after the snapshot. This seam is where a Raft log replaces the local log.
//! [`replication`] holds the records the state machine emits for other DCs (in the same step as
//! the change they describe) and the replica side that applies them.

pub mod command;
pub mod error;
pub mod machine;
pub mod ownership;
pub mod persist;
pub mod replication;
pub mod resources;

pub use command::*;
pub use error::{CommandError, ErrorCode};
pub use machine::retire::{ArchiveEffect, MAX_RETIRE_BATCH};
pub use machine::*;
pub use ownership::{resumed_run, LostOperation, IDS_PER_EPOCH, LOST_OPERATIONS_CAPACITY};
pub use persist::{
    archive_part, decode_entry, decode_parts, encode_entry, encode_parts, for_each_part,
    is_archive_part, recover, snapshot_of, DecodedPart, PartsDecoder, PersistError, Recovered,
    StateSnapshot, ARCHIVE_PART_BASE,
};
pub use replication::{
    ApplyError, ClusterShardView, ClusterView, GlobalRecord, GlobalView, InFlight, JobSummary,
    Outbox, Position, Record, RecordKind, ReplicaData, ReplicaShard, ShardKeys,
    SHARD_KEYS_CAPACITY,
};
pub use resources::{
    Blob, PluginKind, ResourcePath, ResourceStatus, ResourceVersion, ResourceVersions,
    MAX_RESOURCE_BYTES, MAX_STORED_RESOURCE_BYTES, MAX_TENANT_RESOURCE_BYTES,
};
