//! Which DC owns which shard: the static placement used until the placement group exists
//! (DESIGN section 3). A pure function of the DC names and the shard count.
//!
//! ```text
//!  DCs sorted by name: d0, d1, ..., d(k-1)
//!  cluster shard s  -> owner d(s mod k)      replicas: every other DC
//!  global shard     -> owner d0              replicas: every other DC
//! ```
//!
//! A deployment of one DC owns every shard and replicates nothing, exactly as before
//! replication existed. Ownership never changes here: no failover, no epochs beyond the first.

use std::collections::BTreeSet;

use coopr_types::ShardId;

/// The static shard map of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPlacement {
    /// Every DC of the deployment, sorted by name, without duplicates (at least one).
    dcs: Vec<String>,
    shard_count: u32,
}

impl StaticPlacement {
    /// The placement of `dcs` (any order, duplicates ignored) over `shard_count` cluster shards.
    pub fn new(dcs: impl IntoIterator<Item = String>, shard_count: u32) -> StaticPlacement {
        let dcs: Vec<String> = dcs
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(!dcs.is_empty(), "a deployment has at least one DC");
        assert!(shard_count > 0, "shard count must be positive");
        StaticPlacement { dcs, shard_count }
    }

    /// Every DC, sorted by name.
    pub fn dcs(&self) -> &[String] {
        &self.dcs
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Every shard: the cluster shards in order, then the global shard.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> {
        (0..self.shard_count)
            .map(ShardId)
            .chain(std::iter::once(ShardId::GLOBAL))
    }

    /// The DC that writes `shard`.
    pub fn owner(&self, shard: ShardId) -> &str {
        let index = if shard.is_global() {
            0
        } else {
            assert!(shard.0 < self.shard_count, "shard {shard} out of range");
            shard.0 as usize % self.dcs.len()
        };
        &self.dcs[index]
    }

    /// The DCs that hold a copy of `shard`: every DC but its owner.
    pub fn replicas(&self, shard: ShardId) -> impl Iterator<Item = &str> {
        let owner = self.owner(shard).to_string();
        self.dcs
            .iter()
            .map(String::as_str)
            .filter(move |dc| *dc != owner)
    }

    /// The shards `dc` owns, in order (cluster shards, then the global shard).
    pub fn owned_by<'a>(&'a self, dc: &'a str) -> impl Iterator<Item = ShardId> + 'a {
        self.shards().filter(move |s| self.owner(*s) == dc)
    }

    /// The cluster shards `dc` owns: where it may create clusters.
    pub fn cluster_shards_owned_by<'a>(
        &'a self,
        dc: &'a str,
    ) -> impl Iterator<Item = ShardId> + 'a {
        self.owned_by(dc).filter(|s| !s.is_global())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(dcs: &[&str], shards: u32) -> StaticPlacement {
        StaticPlacement::new(dcs.iter().map(|d| d.to_string()), shards)
    }

    /// One DC owns every shard, the global one included, and has no replicas.
    #[test]
    fn a_single_dc_owns_everything() {
        let p = placement(&["a"], 4);
        assert_eq!(p.owned_by("a").count(), 5);
        assert_eq!(p.cluster_shards_owned_by("a").count(), 4);
        assert!(p.shards().all(|s| p.replicas(s).next().is_none()));
    }

    /// Shard s goes to the (s mod k)-th DC by name whatever order the DCs are given in; the
    /// global shard to the first; every other DC replicates each shard.
    #[test]
    fn shards_go_round_robin_over_sorted_dcs() {
        let p = placement(&["c", "a", "b", "a"], 7);
        assert_eq!(p.dcs(), ["a", "b", "c"]);
        let owners: Vec<&str> = (0..7).map(|s| p.owner(ShardId(s))).collect();
        assert_eq!(owners, ["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(p.owner(ShardId::GLOBAL), "a");
        let of_b: Vec<ShardId> = p.owned_by("b").collect();
        assert_eq!(of_b, [ShardId(1), ShardId(4)]);
        let of_a: Vec<ShardId> = p.owned_by("a").collect();
        assert_eq!(of_a, [ShardId(0), ShardId(3), ShardId(6), ShardId::GLOBAL]);
        assert_eq!(p.replicas(ShardId(4)).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(p.replicas(ShardId::GLOBAL).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(p.owned_by("zz").count(), 0);
    }

    /// With more DCs than shards some DCs own no cluster shard (they cannot create clusters).
    #[test]
    fn more_dcs_than_shards_leaves_some_without_shards() {
        let p = placement(&["a", "b", "c"], 2);
        assert_eq!(p.cluster_shards_owned_by("c").count(), 0);
        assert_eq!(
            p.cluster_shards_owned_by("b").collect::<Vec<_>>(),
            [ShardId(1)]
        );
    }
}
