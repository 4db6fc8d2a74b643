//! Identifiers. Cluster IDs keep Coopr's form (8-digit zero-padded decimal) and encode their shard
//! (`shard = id mod S`); job and task IDs extend the cluster ID so every request routes by prefix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IdError;

/// A data shard. Shards `0..S` hold clusters; [`ShardId::GLOBAL`] holds tenants, keys and the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl ShardId {
    /// The global shard (tenants, API keys, catalog, provisioner plugin specs).
    pub const GLOBAL: ShardId = ShardId(u32::MAX);

    pub fn is_global(self) -> bool {
        self == Self::GLOBAL
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_global() {
            write!(f, "global")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// A cluster ID: decimal, shown zero-padded to 8 digits (`00000071`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The shard this cluster lives in, with `shard_count` shards.
    pub fn shard(self, shard_count: u32) -> ShardId {
        assert!(shard_count > 0, "shard count must be positive");
        ShardId((self.0 % u64::from(shard_count)) as u32)
    }

    /// The `n`-th ID of `shard` (`shard + S * n`).
    pub fn allocate(shard: ShardId, shard_count: u32, n: u64) -> ClusterId {
        assert!(
            !shard.is_global() && shard.0 < shard_count,
            "shard {shard} out of range"
        );
        ClusterId(u64::from(shard.0) + u64::from(shard_count) * n)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08}", self.0)
    }
}

fn parse_decimal(s: &str, what: &'static str, max_len: usize) -> Result<u64, IdError> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::Malformed {
            what,
            value: truncate(s),
        });
    }
    s.parse::<u64>().map_err(|_| IdError::Malformed {
        what,
        value: truncate(s),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

impl FromStr for ClusterId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_decimal(s, "cluster id", 18).map(ClusterId)
    }
}

/// A job: `<cluster id>-<NNN>`, numbered per cluster from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId {
    pub cluster: ClusterId,
    pub seq: u32,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:03}", self.cluster, self.seq)
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (cluster, seq) = s.rsplit_once('-').ok_or_else(|| IdError::Malformed {
            what: "job id",
            value: truncate(s),
        })?;
        let seq = parse_decimal(seq, "job id", 9)?;
        Ok(JobId {
            cluster: cluster.parse()?,
            seq: seq as u32,
        })
    }
}

/// A task: `<job id>-<NNN>`, numbered per job from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub job: JobId,
    pub seq: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:03}", self.job, self.seq)
    }
}

impl FromStr for TaskId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (job, seq) = s.rsplit_once('-').ok_or_else(|| IdError::Malformed {
            what: "task id",
            value: truncate(s),
        })?;
        let seq = parse_decimal(seq, "task id", 9)?;
        Ok(TaskId {
            job: job.parse()?,
            seq: seq as u32,
        })
    }
}

/// A node: UUID-shaped, derived deterministically from the cluster ID and the node number so that
/// replaying the log (or re-planning after a failover) yields the same IDs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub NodeIdStr);

/// A node ID's text: the 36 bytes of a derived one are kept inline (no allocation of its own in
/// each of the records that name the node: the node, its tasks, their owners' views); a longer
/// one (not derived here) is on the heap.
pub type NodeIdStr = crate::short_str::InlineStr<38>;

impl NodeId {
    pub fn derive(cluster: ClusterId, nodenum: u32) -> NodeId {
        let a = cluster.0;
        NodeId(NodeIdStr::from(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            (nodenum >> 12) & 0xfff,
            (u64::from(nodenum & 0xfff) << 36) | (a & 0xf_ffff_ffff),
        )))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_serde!(ClusterId, JobId, TaskId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_encode_their_shard() {
        let id = ClusterId::allocate(ShardId(7), 64, 3);
        assert_eq!(id.0, 7 + 64 * 3);
        assert_eq!(id.shard(64), ShardId(7));
        assert_eq!(id.to_string(), "00000199");
    }

    #[test]
    fn derived_node_ids_are_inline_and_read_back_as_text() {
        let ids: Vec<NodeId> = [(ClusterId(u64::MAX), u32::MAX), (ClusterId(7), 1)]
            .into_iter()
            .map(|(cluster, nodenum)| NodeId::derive(cluster, nodenum))
            .collect();
        for id in &ids {
            assert_eq!(id.0.len(), 36, "{id}");
            assert!(!id.0.is_heap(), "{id} has an allocation of its own");
            let json = serde_json::to_string(id).unwrap();
            assert_eq!(json, format!("\"{id}\""));
            assert_eq!(&serde_json::from_str::<NodeId>(&json).unwrap(), id);
        }
        // Any other text still reads, on the heap past the inline bytes; order is the text's.
        let long = NodeId("n".repeat(NodeIdStr::INLINE + 1).as_str().into());
        assert!(long.0.is_heap());
        assert_eq!(
            serde_json::from_str::<NodeId>(&serde_json::to_string(&long).unwrap()).unwrap(),
            long
        );
        let mut sorted = ids.clone();
        sorted.push(long.clone());
        sorted.sort();
        let mut texts: Vec<String> = sorted.iter().map(|id| id.to_string()).collect();
        texts.sort();
        assert_eq!(
            sorted.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
            texts
        );
        assert_eq!(std::mem::size_of::<NodeId>(), 40);
    }

    #[test]
    fn ids_round_trip_through_text() {
        let task: TaskId = "00000079-001-004".parse().unwrap();
        assert_eq!(task.job.cluster, ClusterId(79));
        assert_eq!(task.job.seq, 1);
        assert_eq!(task.seq, 4);
        assert_eq!(task.to_string(), "00000079-001-004");
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(json, "\"00000079-001-004\"");
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "abc",
            "-1",
            "0000007a",
            "1234567890123456789012",
            "00000079-",
            "00000079-x",
        ] {
            assert!(
                bad.parse::<ClusterId>().is_err() || bad.parse::<JobId>().is_err(),
                "{bad}"
            );
        }
        assert!("00000079".parse::<JobId>().is_err());
        assert!("00000079-001".parse::<TaskId>().is_err());
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        let a = NodeId::derive(ClusterId(79), 1000);
        assert_eq!(a, NodeId::derive(ClusterId(79), 1000));
        assert_ne!(a, NodeId::derive(ClusterId(79), 1001));
        assert_ne!(a, NodeId::derive(ClusterId(80), 1000));
        assert_eq!(a.0.len(), 36);
    }
}
