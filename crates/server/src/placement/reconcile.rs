//! What a DC changes in its own state to follow its lease and the shard map, decided without
//! I/O: given the local state, the grant held, the placement group's state and the map, the
//! ownership commands to propose, in order. `lease.rs::reconcile` reads the inputs, calls
//! [`ownership_commands`] and proposes what it returns.
//!
//! ```text
//!  grant.owned[s] = Writable|Frozen at epoch e, but s is a replica here or at an older epoch
//!      -> AdoptShard{s, e, after: where e starts on the shard's history}
//!  grant.owned[s] = Frozen{handover h}, not frozen here, no operation running -> FreezeShard
//!  grant.owned[s] = Writable, still frozen here (the handover was aborted)  -> UnfreezeShard
//!  grant.taking_over[s] = order, not sealed at it, ready to seal             -> SealReplica
//!  a sealed replica no order (or ownership) backs any more                   -> UnsealReplica
//!  the map has s at a newer epoch owned elsewhere, and this DC still writes s -> DemoteShard
//!      {keep_through: where the epoch after this DC's starts}
//! ```

use std::collections::BTreeMap;

use coopr_placement::{Epoch, LeaseGrant, OwnedShard, PlacementState, TakeoverOrder};
use coopr_state::{Command, Position, State};
use coopr_types::ShardId;

use super::ShardMap;

/// Everything the decision reads.
pub struct Inputs<'a> {
    /// This DC.
    pub dc: &'a str,
    pub state: &'a State,
    /// The grant this DC's leader holds.
    pub grant: &'a LeaseGrant,
    /// Where each epoch of each shard starts on the shard's history, as the placement group
    /// last said ([`epoch_starts`]; empty before the first read).
    pub epoch_starts: &'a BTreeMap<(ShardId, Epoch), Position>,
    pub map: &'a ShardMap,
}

/// The epoch starts of every shard in the placement group's state.
pub fn epoch_starts(placement: &PlacementState) -> BTreeMap<(ShardId, Epoch), Position> {
    placement
        .shards()
        .iter()
        .flat_map(|(shard, p)| {
            p.epoch_starts.iter().map(|(epoch, start)| {
                let position = Position {
                    epoch: start.epoch.0,
                    seq: start.seq.0,
                };
                ((*shard, *epoch), position)
            })
        })
        .collect()
}

/// The shard an ownership command of [`ownership_commands`] changes (`None` for any other
/// command): a shard's commands are proposed in their order, different shards' together.
pub fn command_target(command: &Command) -> Option<ShardId> {
    match command {
        Command::AdoptShard { shard, .. }
        | Command::FreezeShard { shard, .. }
        | Command::UnfreezeShard { shard, .. }
        | Command::SealReplica { shard, .. }
        | Command::UnsealReplica { shard }
        | Command::DemoteShard { shard, .. } => Some(*shard),
        _ => None,
    }
}

/// The ownership commands to propose, in order. `ready_to_seal` says whether this DC, ordered
/// to take a shard over, has what it can get of the old epoch (a question of time and of the
/// replication stream, answered by the caller).
pub fn ownership_commands(
    inputs: &Inputs<'_>,
    ready_to_seal: impl Fn(ShardId, &TakeoverOrder) -> bool,
) -> Vec<Command> {
    let Inputs {
        dc,
        state,
        grant,
        epoch_starts,
        map,
    } = *inputs;
    let epoch_start = |shard: ShardId, epoch: Epoch| epoch_starts.get(&(shard, epoch)).copied();
    let mut commands = Vec::new();
    for (shard, owned) in &grant.owned {
        let local_epoch = state.shard_epoch(*shard);
        let replica_here = state.replicas.contains_key(shard);
        match owned {
            // Owned at an epoch not adopted here yet: adopt it first, also when a new handover
            // froze it meanwhile (the grant that moved it here may never have listed it
            // writable); only an adopted shard can freeze and report its end.
            OwnedShard::Writable { epoch } | OwnedShard::Frozen { epoch, .. }
                if replica_here || local_epoch < Some(epoch.0) =>
            {
                if let Some(after) = epoch_start(*shard, *epoch) {
                    commands.push(Command::AdoptShard {
                        shard: *shard,
                        epoch: epoch.0,
                        after,
                    });
                }
            }
            OwnedShard::Frozen { handover, .. } if !shard.is_global() => {
                let frozen = state.shards.get(shard).and_then(|d| d.frozen);
                if !replica_here && frozen != Some(*handover) && !state.shard_busy(*shard) {
                    commands.push(Command::FreezeShard {
                        shard: *shard,
                        handover: *handover,
                    });
                }
            }
            OwnedShard::Frozen { .. } => {}
            // Writable at the epoch written here but still frozen: the handover that froze it
            // was aborted (grants only move forward, and a freeze follows a grant that froze
            // the shard), so the owner writes again.
            OwnedShard::Writable { .. } => {
                let frozen = state.shards.get(shard).and_then(|d| d.frozen);
                if let (Some(handover), false) = (frozen, replica_here) {
                    commands.push(Command::UnfreezeShard {
                        shard: *shard,
                        handover,
                    });
                }
            }
        }
    }
    for (shard, order) in &grant.taking_over {
        let sealed = state.replicas.get(shard).and_then(|r| r.sealed);
        if sealed != Some(order.takeover) && ready_to_seal(*shard, order) {
            commands.push(Command::SealReplica {
                shard: *shard,
                owner_dc: order.from.0.clone(),
                takeover: order.takeover,
            });
        }
    }
    for (shard, replica) in &state.replicas {
        let ordered = grant
            .taking_over
            .get(shard)
            .is_some_and(|o| Some(o.takeover) == replica.sealed);
        if replica.sealed.is_some() && !ordered && !grant.owned.contains_key(shard) {
            commands.push(Command::UnsealReplica { shard: *shard });
        }
    }
    for shard in map.shards() {
        let owner = map.owner(shard);
        if owner == dc || !state.holds_writes(shard) {
            continue;
        }
        let Some(local_epoch) = state.shard_epoch(shard) else {
            continue;
        };
        if map.epoch(shard) <= local_epoch {
            continue;
        }
        // Where the epoch after this DC's started: everything this DC wrote up to there is on
        // the shard's history, the rest was never replicated. Without it (the placement state
        // not read yet) the demotion waits.
        if let Some(keep_through) = epoch_start(shard, Epoch(local_epoch + 1)) {
            commands.push(Command::DemoteShard {
                shard,
                owner_dc: owner.to_string(),
                keep_through,
            });
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use coopr_placement::DcId;
    use coopr_state::{Entry, Outcome};
    use coopr_types::{Tenant, UNLIMITED};

    use super::*;

    const SHARDS: u32 = 3;

    fn apply(state: &mut State, command: Command) -> Outcome {
        let debug = format!("{command:?}");
        state
            .apply(&Entry {
                now_ms: 1,
                idempotency_key: None,
                fence: None,
                command,
            })
            .unwrap_or_else(|e| panic!("{debug}: {e}"))
    }

    fn acme() -> Tenant {
        Tenant {
            id: "t1".into(),
            name: "acme".into(),
            description: String::new(),
            workers: 0,
            max_clusters: UNLIMITED,
            max_nodes: UNLIMITED,
        }
    }

    /// DC `a`'s state holding a replica of the global shard, which `b` owns.
    fn with_global_replica() -> State {
        let mut b = State::new(SHARDS);
        apply(&mut b, Command::PutTenant { tenant: acme() });
        let records = b
            .outbox(ShardId::GLOBAL)
            .expect("outbox")
            .records
            .iter()
            .cloned()
            .collect();
        let mut a = State::new(SHARDS);
        apply(
            &mut a,
            Command::ApplyReplicationBatch {
                from_dc: "b".into(),
                shard: ShardId::GLOBAL,
                records,
                epoch_start: None,
            },
        );
        assert!(a.replicas.contains_key(&ShardId::GLOBAL));
        a
    }

    fn grant(
        owned: impl IntoIterator<Item = (ShardId, OwnedShard)>,
        taking_over: impl IntoIterator<Item = (ShardId, TakeoverOrder)>,
    ) -> LeaseGrant {
        LeaseGrant {
            dc: DcId::new("a"),
            sequence: 1,
            lease_ms: 3_000,
            max_clock_offset_ms: 250,
            owned: owned.into_iter().collect(),
            map: BTreeMap::new(),
            taking_over: taking_over.into_iter().collect(),
        }
    }

    fn decide(
        state: &State,
        grant: &LeaseGrant,
        starts: &BTreeMap<(ShardId, Epoch), Position>,
        map: &ShardMap,
        ready: bool,
    ) -> Vec<Command> {
        let inputs = Inputs {
            dc: "a",
            state,
            grant,
            epoch_starts: starts,
            map,
        };
        ownership_commands(&inputs, |_, _| ready)
    }

    fn map() -> ShardMap {
        ShardMap::initial(["a".to_string(), "b".to_string()], SHARDS)
    }

    /// A shard granted at an epoch the state has not adopted is adopted where that epoch
    /// starts; without the start (placement state not read yet) nothing is proposed.
    #[test]
    fn a_granted_replica_is_adopted_at_its_epoch_start() {
        let state = with_global_replica();
        let g = grant(
            [(ShardId::GLOBAL, OwnedShard::Writable { epoch: Epoch(2) })],
            [],
        );
        assert_eq!(decide(&state, &g, &BTreeMap::new(), &map(), true), vec![]);
        let start = Position { epoch: 1, seq: 1 };
        let starts = BTreeMap::from([((ShardId::GLOBAL, Epoch(2)), start)]);
        assert_eq!(
            decide(&state, &g, &starts, &map(), true),
            vec![Command::AdoptShard {
                shard: ShardId::GLOBAL,
                epoch: 2,
                after: start,
            }]
        );
    }

    /// A handover freezes an owned shard once; once frozen, a grant listing it writable again
    /// (the handover was aborted) unfreezes it.
    #[test]
    fn a_handover_freezes_and_its_abort_unfreezes() {
        let mut state = State::new(SHARDS);
        let shard = ShardId(1);
        let epoch = Epoch(state.shard_epoch(shard).expect("owned"));
        let frozen = grant(
            [(
                shard,
                OwnedShard::Frozen {
                    epoch,
                    to: DcId::new("b"),
                    handover: 7,
                },
            )],
            [],
        );
        let starts = BTreeMap::new();
        let commands = decide(&state, &frozen, &starts, &map(), true);
        assert_eq!(commands, vec![Command::FreezeShard { shard, handover: 7 }]);
        apply(&mut state, commands[0].clone());
        assert_eq!(decide(&state, &frozen, &starts, &map(), true), vec![]);
        let writable = grant([(shard, OwnedShard::Writable { epoch })], []);
        assert_eq!(
            decide(&state, &writable, &starts, &map(), true),
            vec![Command::UnfreezeShard { shard, handover: 7 }]
        );
    }

    /// A takeover order seals the copy once the caller says it is ready; a sealed copy that
    /// no order backs any more is unsealed.
    #[test]
    fn a_takeover_order_seals_and_its_withdrawal_unseals() {
        let mut state = with_global_replica();
        let order = TakeoverOrder {
            takeover: 4,
            from: DcId::new("b"),
            epoch: Epoch(1),
        };
        let ordered = grant([], [(ShardId::GLOBAL, order)]);
        let starts = BTreeMap::new();
        assert_eq!(decide(&state, &ordered, &starts, &map(), false), vec![]);
        let commands = decide(&state, &ordered, &starts, &map(), true);
        assert_eq!(
            commands,
            vec![Command::SealReplica {
                shard: ShardId::GLOBAL,
                owner_dc: "b".into(),
                takeover: 4,
            }]
        );
        apply(&mut state, commands[0].clone());
        assert_eq!(decide(&state, &ordered, &starts, &map(), true), vec![]);
        let withdrawn = grant([], []);
        assert_eq!(
            decide(&state, &withdrawn, &starts, &map(), true),
            vec![Command::UnsealReplica {
                shard: ShardId::GLOBAL
            }]
        );
    }

    /// A shard this DC still writes that the map shows at a newer epoch elsewhere is demoted,
    /// keeping what it wrote up to where the next epoch started; without that position the
    /// demotion waits.
    #[test]
    fn a_shard_owned_elsewhere_at_a_newer_epoch_is_demoted() {
        let mut state = State::new(SHARDS);
        let shard = ShardId::GLOBAL;
        apply(&mut state, Command::PutTenant { tenant: acme() });
        assert!(state.holds_writes(shard));
        let mut map = map();
        let local = state.shard_epoch(shard).expect("owned");
        let g = grant([], []);
        assert_eq!(decide(&state, &g, &BTreeMap::new(), &map, true), vec![]);
        assert!(map.learn_owner(shard, "b", local + 1));
        assert_eq!(decide(&state, &g, &BTreeMap::new(), &map, true), vec![]);
        let keep = Position {
            epoch: local,
            seq: 1,
        };
        let starts = BTreeMap::from([((shard, Epoch(local + 1)), keep)]);
        assert_eq!(
            decide(&state, &g, &starts, &map, true),
            vec![Command::DemoteShard {
                shard,
                owner_dc: "b".into(),
                keep_through: keep,
            }]
        );
    }
}
