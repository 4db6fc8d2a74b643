//! The `App` type: everything a request handler needs (the DC log, the shard map, the lease,
//! the placement group, the node's clock, transport and random source), with the small helpers
//! handlers share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use coopr_state::CommandResult;
use coopr_types::ShardId;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::core::{self, Core};
use crate::placement::group::PlacementGroup;
use crate::placement::ShardMap;
use crate::random::Random;
use crate::supervise::Loops;
use crate::write::Held;
use crate::{replication, tenant_push};

/// Everything a request handler needs.
pub struct App {
    pub config: ServerConfig,
    pub core: Arc<Core>,
    pub metrics: PrometheusHandle,
    /// This node's clock: every time the server's logic reads comes from here (see [`clock`]).
    pub clock: Arc<dyn Clock>,
    /// When each provisioner was last heard from (the clock's monotonic ms).
    pub(crate) heartbeats: Mutex<BTreeMap<String, u64>>,
    pub(crate) next_shard: AtomicU32,
    /// The next shard the driver looks at for jobs to retire.
    pub(crate) retire_cursor: AtomicU32,
    /// This node's copy of the shard map (see [`placement`]).
    pub(crate) map: RwLock<Arc<ShardMap>>,
    /// The lease this node holds while it leads a DC of a multi-DC deployment.
    pub lease: Mutex<Option<Held>>,
    /// The placement group's state as last fetched (leases, history), for the admin API.
    pub(crate) placement_state: Mutex<Option<coopr_placement::PlacementState>>,
    /// This node's voter of the placement group, if it is one.
    pub placement_group: Option<Arc<PlacementGroup>>,
    /// Requests this node forwarded to a DC that had lost the shard, then to the new owner.
    pub rerouted: AtomicU64,
    /// Wakes the lease loop for a renewal now (ownership changes, handover progress).
    pub renew_now: tokio::sync::Notify,
    /// Since when this node leads the DC log (the clock's monotonic ms; the job engine runs
    /// only then).
    pub leader_since: Mutex<Option<u64>>,
    /// What this node, as the DC's leader, told the provisioners to run ([`tenant_push`]).
    pub pushed: Mutex<tenant_push::Pushed>,
    /// How this node calls other nodes (forwarded requests, placement calls, lease renewals,
    /// replication pulls): HTTP, or in memory in a simulation.
    pub transport: Arc<dyn coopr_raft::Transport>,
    /// Where ids, generated keys and jitter come from ([`random`]).
    pub random: Arc<Random>,
    /// Take proposals not yet answered (so idle polls do not race for the same task).
    pub takes_in_flight: std::sync::atomic::AtomicUsize,
    /// Whether this process has seen its copy of the global shard seeded (sticky: keys or
    /// catalog deleted later do not make it unseeded again).
    pub seen_seeded: std::sync::atomic::AtomicBool,
    /// What the replication streams and pulls know (leader only).
    pub replication: replication::Progress,
    /// Becomes true when the node stops (ends long polls).
    pub stopping: watch::Receiver<bool>,
    /// When this node first saw each takeover order (shard, takeover number) in its grant:
    /// the bounded time it may still pull the old owner's records runs from there (the clock's
    /// monotonic ms).
    pub takeovers_seen: Mutex<BTreeMap<(ShardId, u64), u64>>,
    /// The node's supervised loops (see [`supervise`]): `/ready` fails while one is down.
    pub loops: Arc<Loops>,
    /// Bounds the client writes in flight to the DC log (see [`core::WriteQueue`]).
    pub write_queue: core::WriteQueue,
}

impl App {
    /// The outcome already recorded for an idempotency key (a retried request).
    ///
    /// An outcome whose operation was lost in a failover (applied here after the point where
    /// another DC took the shard over) answers 409 `operation_lost`, saying where the shard
    /// went: the client sends the request again without that key (it then runs at the new
    /// owner).
    pub fn previous_outcome(&self, key: Option<&str>) -> Option<CommandResult> {
        let state = self.core.read();
        let previous = state.idempotent_outcome(key?)?;
        if let Some(lost) = state.lost_outcome(&previous) {
            return Some(Err(coopr_state::CommandError::conflict(
                coopr_state::ErrorCode::OperationLost,
                format!(
                    "this request was applied in DC {} (shard {}, epoch {}, seq {}) after DC {} \
                     took the shard over at {:?}; it was never replicated and is in DC {}'s \
                     lost-operations report; send it again with a new Idempotency-Key",
                    self.config.dc,
                    lost.shard,
                    lost.epoch,
                    lost.seq,
                    lost.new_owner,
                    lost.takeover_point,
                    self.config.dc
                ),
            )));
        }
        Some(previous)
    }

    /// The shard a new cluster goes to: round-robin over the cluster shards this DC owns;
    /// `None` when it owns none (more DCs than shards).
    pub fn pick_shard(&self) -> Option<ShardId> {
        let map = self.placement();
        // Shards adopted in the local state and not being handed over (others would refuse
        // the write).
        let owned: Vec<ShardId> = {
            let state = self.core.read();
            map.cluster_shards_owned_by(&self.config.dc)
                .filter(|s| state.replica(*s).is_none() && map.entry(*s).status == "active")
                .collect()
        };
        if owned.is_empty() {
            return None;
        }
        let n = self.next_shard.fetch_add(1, Ordering::Relaxed) as usize;
        Some(owned[n % owned.len()])
    }

    /// Whether this DC owns `shard` (writes it); otherwise it holds a replica copy.
    pub fn owns(&self, shard: ShardId) -> bool {
        self.placement().owner(shard) == self.config.dc
    }

    /// This node's current copy of the shard map.
    pub fn placement(&self) -> Arc<ShardMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the shard map; `change` says whether it changed anything.
    pub fn update_map(&self, change: impl FnOnce(&mut ShardMap) -> bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**map).clone();
        if change(&mut next) {
            tracing::info!("shard map changed");
            *map = Arc::new(next);
        }
    }

    /// Replaces the shard map wholesale, even by an older one: only for tests that need a node
    /// with a stale map (the normal paths only move a map forward).
    #[doc(hidden)]
    pub fn replace_map_for_tests(&self, map: ShardMap) {
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// The placement group's state as last fetched (`None` with one DC or before the first).
    pub fn placement_state(&self) -> Option<coopr_placement::PlacementState> {
        self.placement_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_placement_state(&self, state: coopr_placement::PlacementState) {
        *self
            .placement_state
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// Tenants, API keys and catalogs as this DC reads them (see [`coopr_state::State::global_view`]):
    /// its own global shard where it owns it, else its replica copy of the owner's.
    ///
    /// Decided by the local state (which copy it holds), not the map: between a takeover and
    /// the adoption the map already names this DC while the data is still the replica copy.
    pub fn global<'a>(&self, state: &'a coopr_state::State) -> coopr_state::GlobalRef<'a> {
        state.global_data()
    }

    /// How stale this node's copy of `shard` may be, in ms: 0 for a shard this DC owns, else
    /// see [`replication::staleness_ms`].
    pub fn staleness_ms(&self, shard: ShardId) -> u64 {
        if self.owns(shard) {
            return 0;
        }
        replication::staleness_ms(
            &self.core.read(),
            &self.replication,
            shard,
            self.clock.wall_ms(),
        )
    }

    /// `<dc>/<node>`: who served a request (the `Coopr-Served-By` header).
    pub fn served_by(&self) -> String {
        format!("{}/{}", self.config.dc, self.config.node)
    }

    pub fn heartbeat(&self, provisioner: &str) {
        if let Ok(mut map) = self.heartbeats.lock() {
            map.insert(provisioner.to_string(), self.clock.mono_ms());
        }
    }

    pub fn forget_provisioner(&self, provisioner: &str) {
        if let Ok(mut map) = self.heartbeats.lock() {
            map.remove(provisioner);
        }
    }

    /// When the provisioner was last heard from, or this node became leader, whichever is later
    /// (heartbeats go to the leader, so a new leader gives every provisioner a full timeout), on
    /// the clock's monotonic ms.
    pub fn last_heard(&self, provisioner: &str) -> u64 {
        let since = self
            .leader_since
            .lock()
            .ok()
            .and_then(|l| *l)
            .unwrap_or_else(|| self.clock.mono_ms());
        let heard = self
            .heartbeats
            .lock()
            .ok()
            .and_then(|m| m.get(provisioner).copied());
        heard.map_or(since, |h| h.max(since))
    }
}
