//! Identifiers and positions of the placement group: which DC, which ownership epoch, which
//! record of a shard's replication log.
//!
//! These live here until another crate needs them; they are plain newtypes with no behaviour
//! beyond ordering, so moving them to `coopr-types` later is mechanical.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A datacenter (or a witness site) of the placement group, by its configured name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DcId(pub String);

impl DcId {
    pub fn new(name: impl Into<String>) -> DcId {
        DcId(name.into())
    }
}

impl fmt::Display for DcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shard's ownership epoch: starts at 1 and increases by one on every change of owner.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch every shard starts in.
    pub const FIRST: Epoch = Epoch(1);

    pub fn next(self) -> Epoch {
        Epoch(self.0.checked_add(1).expect("epoch overflow"))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The sequence number of a replication record within a shard (assigned by the owner in its DC
/// log's commit order).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position `(epoch, seq)` of a replication record; a replica's watermark is the position
/// of the last record it applied. Ordered by epoch, then seq.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub epoch: Epoch,
    pub seq: Seq,
}

impl Position {
    /// Before the first record of a shard.
    pub const ZERO: Position = Position {
        epoch: Epoch(0),
        seq: Seq(0),
    };

    pub fn new(epoch: u64, seq: u64) -> Position {
        Position {
            epoch: Epoch(epoch),
            seq: Seq(seq),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.epoch, self.seq)
    }
}

/// Serde for maps keyed by a number-like id ([`ShardId`], [`Epoch`]) as JSON objects
/// (`{"0": .., "4294967295": ..}`). Keys are read back from strings: `ShardId` derives a newtype
/// representation that JSON keys do not read back, and inside an internally tagged enum serde
/// buffers a map and would not turn a string key back into a number.
pub mod numeric_keys {
    use std::collections::BTreeMap;

    use coopr_types::ShardId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Epoch;

    pub trait NumericKey: Ord + Sized {
        fn to_u64(&self) -> u64;
        fn from_u64(value: u64) -> Option<Self>;
    }

    impl NumericKey for ShardId {
        fn to_u64(&self) -> u64 {
            u64::from(self.0)
        }
        fn from_u64(value: u64) -> Option<Self> {
            u32::try_from(value).ok().map(ShardId)
        }
    }

    impl NumericKey for Epoch {
        fn to_u64(&self) -> u64 {
            self.0
        }
        fn from_u64(value: u64) -> Option<Self> {
            Some(Epoch(value))
        }
    }

    pub fn serialize<K: NumericKey, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(map.iter().map(|(key, value)| (key.to_u64(), value)))
    }

    pub fn deserialize<'de, K: NumericKey, V: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<K, V>, D::Error> {
        let raw = BTreeMap::<String, V>::deserialize(deserializer)?;
        raw.into_iter()
            .map(
                |(key, value)| match key.parse::<u64>().ok().and_then(K::from_u64) {
                    Some(key) => Ok((key, value)),
                    None => Err(serde::de::Error::custom(format!(
                        "map key {key:?} is not a valid id"
                    ))),
                },
            )
            .collect()
    }
}
