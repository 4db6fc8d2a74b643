//! Persistence of the state machine on a [`LogStore`]: entry encoding, per-shard snapshots and
//! recovery (latest snapshot, then replay of the log after it).
//!
//! Snapshot parts: one per cluster shard (part id = shard number), one for the global shard
//! ([`GLOBAL_PART`]) and one for DC-local state ([`LOCAL_PART`]), so a shard can be streamed,
//! replaced or dropped as a unit. Shards this DC replicates from another DC are parts too:
//! [`REPLICA_PART_BASE`]` + shard` for cluster shards and [`GLOBAL_REPLICA_PART`] for the global
//! shard. Outboxes live inside their shard's part. Entries and parts are JSON: the model holds free-form JSON
//! (configs, provisioner results) that compact self-describing-less formats cannot carry.

use std::collections::BTreeMap;
use std::sync::Arc;

use coopr_store::{LogIndex, LogStore, Snapshot, StoreError};
use coopr_types::ShardId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::machine::service_pool::ServicePool;
use crate::{ClusterShard, Entry, GlobalShard, LocalState, ReplicaShard, State};

pub const GLOBAL_PART: u32 = u32::MAX;
pub const LOCAL_PART: u32 = u32::MAX - 1;
pub const GLOBAL_REPLICA_PART: u32 = u32::MAX - 2;
/// Replica parts of cluster shards: this plus the shard number (so shard counts stay below it).
pub const REPLICA_PART_BASE: u32 = 1 << 31;
/// Job archive parts (the node's archive of retired jobs, see [`crate::machine::retire`]):
/// this plus the number of the chunk (the archive is exported in chunks of bounded size, in
/// key order). [`decode_parts`] leaves them to the archive.
pub const ARCHIVE_PART_BASE: u32 = 1 << 30;

/// The snapshot part holding the `chunk`th chunk of the job archive.
pub fn archive_part(chunk: u32) -> u32 {
    assert!(chunk < REPLICA_PART_BASE - ARCHIVE_PART_BASE);
    ARCHIVE_PART_BASE + chunk
}

/// Whether a snapshot part holds a chunk of the job archive.
pub fn is_archive_part(part: u32) -> bool {
    (ARCHIVE_PART_BASE..REPLICA_PART_BASE).contains(&part)
}

/// Entries replayed per read during recovery.
const REPLAY_BATCH: usize = 1024;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log entry {index} cannot be decoded: {reason}")]
    BadEntry { index: LogIndex, reason: String },
    #[error("snapshot part {part} cannot be decoded: {reason}")]
    BadPart { part: u32, reason: String },
    #[error(
        "snapshot was taken with {found} shards but this node is configured with {configured}"
    )]
    ShardCountMismatch { found: u32, configured: u32 },
}

#[derive(Serialize, Deserialize)]
struct LocalPart {
    shard_count: u32,
    local: LocalState,
}

pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    // Serializing a value of our own types to JSON cannot fail (all map keys are strings).
    serde_json::to_vec(entry).expect("entries serialize to JSON")
}

pub fn decode_entry(index: LogIndex, bytes: &[u8]) -> Result<Entry, PersistError> {
    // A seed or a batch of records repeats its clusters' templates: each decoded once.
    let _memo = coopr_types::shared_json::Memo::open();
    serde_json::from_slice(bytes).map_err(|e| PersistError::BadEntry {
        index,
        reason: e.to_string(),
    })
}

/// The snapshot of a state as of `last_index`.
pub fn snapshot_of(state: &State, last_index: LogIndex) -> Snapshot {
    Snapshot::at(last_index, encode_parts(state))
}

/// The state as snapshot parts: one per cluster shard, the global shard and the local state.
pub fn encode_parts(state: &State) -> BTreeMap<u32, Vec<u8>> {
    let mut parts = BTreeMap::new();
    let collected: Result<(), std::convert::Infallible> = for_each_part(state, |id, bytes| {
        parts.insert(id, bytes);
        Ok(())
    });
    let Ok(()) = collected;
    parts
}

/// [`encode_parts`] one part at a time (a snapshot of a large state is written out part by
/// part, never held whole): stops at the first error of `out`.
pub fn for_each_part<E>(
    state: &State,
    out: impl FnMut(u32, Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    StateSnapshot::of(state).for_each_part(out)
}

/// A state's snapshot taken at one point, to encode later: the shards are shared with the
/// state ([`State::shards`]), so taking it costs microseconds under the state's lock and the
/// encoding runs after the lock is released, while entries go on being applied.
pub struct StateSnapshot {
    shards: Vec<(ShardId, Arc<ClusterShard>)>,
    global: GlobalShard,
    replicas: Vec<(ShardId, Arc<ReplicaShard>)>,
    local: LocalPart,
}

impl StateSnapshot {
    /// The state as it is now.
    pub fn of(state: &State) -> StateSnapshot {
        StateSnapshot {
            shards: state
                .shards
                .iter()
                .map(|(id, shard)| (*id, shard.clone()))
                .collect(),
            global: state.global.clone(),
            replicas: state
                .replicas
                .iter()
                .map(|(id, replica)| (*id, replica.clone()))
                .collect(),
            local: LocalPart {
                shard_count: state.shard_count(),
                local: state.local.clone(),
            },
        }
    }

    /// Encodes the parts one at a time, letting go of each shard once encoded (so a change
    /// applied meanwhile copies only shards not yet written); stops at the first error of
    /// `out`.
    pub fn for_each_part<E>(
        self,
        mut out: impl FnMut(u32, Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        for (shard, data) in self.shards {
            let bytes = serde_json::to_vec(&*data).expect("shards serialize to JSON");
            drop(data);
            out(shard.0, bytes)?;
        }
        out(
            GLOBAL_PART,
            serde_json::to_vec(&self.global).expect("global shard serializes"),
        )?;
        for (shard, replica) in self.replicas {
            let bytes = serde_json::to_vec(&*replica).expect("replicas serialize to JSON");
            drop(replica);
            out(replica_part(shard), bytes)?;
        }
        out(
            LOCAL_PART,
            serde_json::to_vec(&self.local).expect("local state serializes"),
        )
    }
}

fn replica_part(shard: ShardId) -> u32 {
    if shard.is_global() {
        GLOBAL_REPLICA_PART
    } else {
        assert!(shard.0 < GLOBAL_REPLICA_PART - REPLICA_PART_BASE);
        REPLICA_PART_BASE + shard.0
    }
}

pub struct Recovered {
    pub state: State,
    /// Index of the last entry applied to `state`.
    pub last_index: LogIndex,
    /// Entries replayed from the log after the snapshot.
    pub replayed: u64,
}

/// Rebuilds the state from the store: the latest snapshot, then every log entry after it.
pub fn recover(store: &dyn LogStore, shard_count: u32) -> Result<Recovered, PersistError> {
    let (mut state, mut last_index) = match store.load_snapshot()? {
        None => (State::new(shard_count), 0),
        Some(snapshot) => (
            state_from_snapshot(&snapshot, shard_count)?,
            snapshot.last_index,
        ),
    };
    let mut replayed = 0;
    loop {
        let batch = store.read_from(last_index + 1, REPLAY_BATCH)?;
        if batch.is_empty() {
            break;
        }
        for (index, bytes) in batch {
            let entry = decode_entry(index, &bytes)?;
            // Rejected commands were rejected the first time too; the outcome is not needed here.
            let _ = state.apply(&entry);
            last_index = index;
            replayed += 1;
        }
    }
    Ok(Recovered {
        state,
        last_index,
        replayed,
    })
}

/// Decodes one part; the templates and service definitions its records repeat are decoded
/// once each (`coopr_types::shared_json`).
fn decode_part<T: for<'de> Deserialize<'de>>(part: u32, bytes: &[u8]) -> Result<T, PersistError> {
    let _memo = coopr_types::shared_json::Memo::open();
    serde_json::from_slice(bytes).map_err(|e| PersistError::BadPart {
        part,
        reason: e.to_string(),
    })
}

fn state_from_snapshot(snapshot: &Snapshot, shard_count: u32) -> Result<State, PersistError> {
    decode_parts(
        snapshot
            .parts
            .iter()
            .map(|(&part, stored)| (part, stored.bytes.as_slice())),
        shard_count,
    )
}

/// Rebuilds a state from snapshot parts (no parts: the initial state).
pub fn decode_parts<'a>(
    parts: impl IntoIterator<Item = (u32, &'a [u8])>,
    shard_count: u32,
) -> Result<State, PersistError> {
    let mut decoder = PartsDecoder::new(shard_count);
    for (part, bytes) in parts {
        decoder.add(part, bytes)?;
    }
    Ok(decoder.finish())
}

/// A snapshot part decoded by [`PartsDecoder::decode`], to [insert](PartsDecoder::insert).
pub struct DecodedPart(Decoded);

enum Decoded {
    Global(GlobalShard),
    Local(LocalPart),
    Archive,
    Replica(ReplicaShard),
    Shard(ShardId, ClusterShard),
}

/// [`decode_parts`] one part at a time, in any order (a snapshot is read part by part, never
/// held whole).
pub struct PartsDecoder {
    shard_count: u32,
    global: GlobalShard,
    local: LocalState,
    shards: BTreeMap<ShardId, ClusterShard>,
    replicas: BTreeMap<ShardId, Arc<ReplicaShard>>,
    pool: ServicePool,
}

impl PartsDecoder {
    pub fn new(shard_count: u32) -> PartsDecoder {
        PartsDecoder {
            shard_count,
            global: GlobalShard::default(),
            local: LocalState::default(),
            shards: BTreeMap::new(),
            replicas: BTreeMap::new(),
            pool: ServicePool::default(),
        }
    }

    /// Decodes one part into the state being rebuilt (archive parts are skipped).
    pub fn add(&mut self, part: u32, bytes: &[u8]) -> Result<(), PersistError> {
        self.insert(PartsDecoder::decode(part, bytes)?)
    }

    /// The costly half of [`PartsDecoder::add`]: a part's JSON decoded, needing nothing else,
    /// so that parts can be decoded on several threads and [inserted](PartsDecoder::insert)
    /// in any order.
    pub fn decode(part: u32, bytes: &[u8]) -> Result<DecodedPart, PersistError> {
        Ok(match part {
            GLOBAL_PART => DecodedPart(Decoded::Global(decode_part(part, bytes)?)),
            LOCAL_PART => DecodedPart(Decoded::Local(decode_part(part, bytes)?)),
            ARCHIVE_PART_BASE..REPLICA_PART_BASE => DecodedPart(Decoded::Archive),
            REPLICA_PART_BASE.. => DecodedPart(Decoded::Replica(decode_part(part, bytes)?)),
            shard => DecodedPart(Decoded::Shard(ShardId(shard), decode_part(part, bytes)?)),
        })
    }

    /// Adds a part [decoded](PartsDecoder::decode) to the state being rebuilt.
    pub fn insert(&mut self, part: DecodedPart) -> Result<(), PersistError> {
        match part.0 {
            Decoded::Global(global) => self.global = global,
            Decoded::Local(decoded) => {
                if decoded.shard_count != self.shard_count {
                    return Err(PersistError::ShardCountMismatch {
                        found: decoded.shard_count,
                        configured: self.shard_count,
                    });
                }
                self.local = decoded.local;
            }
            // The job archive's parts: restored by the node's archive, not into the state.
            Decoded::Archive => {}
            Decoded::Replica(mut replica) => {
                State::intern_replica(&mut self.pool, &mut replica, None);
                self.replicas.insert(replica.shard, Arc::new(replica));
            }
            Decoded::Shard(shard, mut data) => {
                State::intern_shard(&mut self.pool, &mut data);
                self.shards.insert(shard, data);
            }
        }
        Ok(())
    }

    /// The state the parts added describe (none: the initial state).
    pub fn finish(self) -> State {
        let mut state = State::from_interned_parts(
            self.shard_count,
            self.global,
            self.shards,
            self.local,
            self.pool,
        );
        state.replicas = self.replicas;
        state
    }
}
