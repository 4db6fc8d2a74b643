//! Which DC owns which shard.
//!
//! With one DC, it owns every shard and nothing else exists. With several, the shard map lives
//! in the placement group ([`group`]: a second Raft group spanning the DCs, one voter node per
//! DC and optionally a witness), and each DC's leader holds a lease on the shards it owns
//! ([`lease`]): it may acknowledge a write to a shard only while its lease is valid and the
//! shard is listed as writable at the epoch the write carries (fencing).
//!
//! [`ShardMap`] is this node's copy of the map, used for routing. It starts as the initial
//! placement (the one the placement group bootstraps with) and is refreshed from the group;
//! per shard it only moves forward in epoch, so an old answer never undoes a newer one.
//!
//! ```text
//!  DCs sorted by name: d0, d1, ..., d(k-1)      initial placement, epoch 1
//!  cluster shard s  -> owner d(s mod k)      replicas: every other DC
//!  global shard     -> owner d0              replicas: every other DC
//! ```

pub mod group;
pub mod lease;
pub mod reconcile;

use std::collections::{BTreeMap, BTreeSet};

use coopr_placement::PlacementState;
use coopr_types::ShardId;
use serde::Serialize;

/// Where one shard lives, as this node last heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    pub owner: String,
    pub replicas: Vec<String>,
    pub epoch: u64,
    /// `active`, the handover phase (`draining`, `handing_over`) or `taking_over` (failover).
    pub status: String,
}

/// The shard map of a deployment as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Every data DC of the deployment, sorted by name, without duplicates (at least one).
    dcs: Vec<String>,
    shard_count: u32,
    shards: BTreeMap<ShardId, MapEntry>,
}

impl ShardMap {
    /// The initial placement of `dcs` (any order, duplicates ignored) over `shard_count`
    /// cluster shards: what the placement group bootstraps with.
    pub fn initial(dcs: impl IntoIterator<Item = String>, shard_count: u32) -> ShardMap {
        let dcs: Vec<String> = dcs
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(!dcs.is_empty(), "a deployment has at least one DC");
        assert!(shard_count > 0, "shard count must be positive");
        let entry = |owner: &String| MapEntry {
            owner: owner.clone(),
            replicas: dcs.iter().filter(|d| *d != owner).cloned().collect(),
            epoch: 1,
            status: "active".into(),
        };
        let shards = (0..shard_count)
            .map(|s| (ShardId(s), entry(&dcs[s as usize % dcs.len()])))
            .chain(std::iter::once((ShardId::GLOBAL, entry(&dcs[0]))))
            .collect();
        ShardMap {
            dcs,
            shard_count,
            shards,
        }
    }

    /// Takes what the placement group says about each shard where it is newer (a higher epoch,
    /// or the same epoch with another status); returns whether anything changed.
    pub fn merge(&mut self, state: &PlacementState) -> bool {
        let mut changed = false;
        for (shard, placement) in state.shards() {
            let Some(entry) = self.shards.get_mut(shard) else {
                continue;
            };
            if placement.epoch.0 < entry.epoch {
                continue;
            }
            let status = match &placement.status {
                coopr_placement::ShardStatus::Active => "active",
                coopr_placement::ShardStatus::Draining { .. } => "draining",
                coopr_placement::ShardStatus::HandingOver { .. } => "handing_over",
                coopr_placement::ShardStatus::TakingOver { .. } => "taking_over",
            };
            let new = MapEntry {
                owner: placement.owner.0.clone(),
                replicas: placement.replicas.iter().map(|d| d.0.clone()).collect(),
                epoch: placement.epoch.0,
                status: status.into(),
            };
            if *entry != new {
                *entry = new;
                changed = true;
            }
        }
        changed
    }

    /// Takes a newer owner and epoch of one shard (from a lease grant or a `not_owner` answer).
    pub fn learn_owner(&mut self, shard: ShardId, owner: &str, epoch: u64) -> bool {
        let Some(entry) = self.shards.get_mut(&shard) else {
            return false;
        };
        if epoch <= entry.epoch || !self.dcs.iter().any(|d| d == owner) {
            return false;
        }
        let old = std::mem::replace(&mut entry.owner, owner.to_string());
        entry.replicas.retain(|d| d != owner);
        if !entry.replicas.contains(&old) {
            entry.replicas.push(old);
        }
        entry.epoch = epoch;
        entry.status = "active".into();
        true
    }

    /// Every DC, sorted by name.
    pub fn dcs(&self) -> &[String] {
        &self.dcs
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Every shard: the cluster shards in order, then the global shard.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        (0..self.shard_count)
            .map(ShardId)
            .chain(std::iter::once(ShardId::GLOBAL))
    }

    pub fn entry(&self, shard: ShardId) -> &MapEntry {
        self.shards
            .get(&shard)
            .unwrap_or_else(|| panic!("shard {shard} out of range"))
    }

    /// The DC that writes `shard`.
    pub fn owner(&self, shard: ShardId) -> &str {
        &self.entry(shard).owner
    }

    /// The ownership epoch of `shard`.
    pub fn epoch(&self, shard: ShardId) -> u64 {
        self.entry(shard).epoch
    }

    /// The DCs that hold a copy of `shard`.
    pub fn replicas(&self, shard: ShardId) -> impl Iterator<Item = &str> {
        self.entry(shard).replicas.iter().map(String::as_str)
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

    fn placement(dcs: &[&str], shards: u32) -> ShardMap {
        ShardMap::initial(dcs.iter().map(|d| d.to_string()), shards)
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

    /// The map takes what the placement group says only where it is newer (a higher epoch, or
    /// the same epoch with another status), and learning an owner never moves a shard back.
    #[test]
    fn the_map_only_moves_forward() {
        use coopr_placement::{Command, Dc, DcId};
        let mut map = placement(&["a", "b", "c"], 3);
        let mut state = coopr_placement::PlacementState::bootstrap(
            vec![Dc::voter("a"), Dc::voter("b"), Dc::voter("c")],
            3,
            3_000,
            500,
        )
        .unwrap();
        assert!(
            !map.merge(&state),
            "the initial map is the bootstrap placement"
        );
        state
            .apply(&Command::StartHandover {
                shard: ShardId(0),
                to: DcId::new("b"),
                now_ms: 0,
                leader_since_ms: 0,
            })
            .unwrap();
        assert!(map.merge(&state));
        assert_eq!(map.entry(ShardId(0)).status, "draining");
        assert!(map.learn_owner(ShardId(0), "b", 2));
        assert_eq!((map.owner(ShardId(0)), map.epoch(ShardId(0))), ("b", 2));
        assert_eq!(map.replicas(ShardId(0)).collect::<Vec<_>>(), ["c", "a"]);
        // An older answer (epoch 1) changes nothing; nor does an unknown DC.
        assert!(!map.merge(&state));
        assert_eq!(map.owner(ShardId(0)), "b");
        assert!(!map.learn_owner(ShardId(0), "a", 2));
        assert!(!map.learn_owner(ShardId(1), "zz", 5));
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
