//! Logic tests of the placement group: feed commands, assert the exact outcome.

use std::collections::BTreeMap;

use coopr_placement::{
    apply_command, dead_dcs, drain_plan, failback_plan, holder_lease_valid, may_acknowledge,
    plan_failover, plan_handover_completions, plan_handover_timeouts, plan_maintenance,
    plan_takeovers, Blocked, ChangeReason, Command, Dc, DcId, Epoch, Fenced, FrozenReport,
    GrantorView, HeldLease, LeaseGrant, Maintenance, OwnedShard, PlacementMachine, PlacementState,
    PlannedMove, Position, Rejected, Reply, SealReport, ShardStatus,
};
use coopr_raft::StateMachine;
use coopr_types::ShardId;

const LEASE_MS: u64 = 3_000;
const OFFSET_MS: u64 = 100;

fn dc(name: &str) -> DcId {
    DcId::new(name)
}

fn bootstrap(voters: &[&str], shard_count: u32) -> PlacementState {
    let mut state = None;
    let mut dcs: Vec<Dc> = voters.iter().map(|name| Dc::voter(name)).collect();
    dcs.push(Dc::witness("witness"));
    apply_command(
        &mut state,
        &Command::Bootstrap {
            dcs,
            shard_count,
            lease_ms: LEASE_MS,
            max_clock_offset_ms: OFFSET_MS,
        },
    )
    .unwrap();
    state.unwrap()
}

fn renew(
    state: &mut PlacementState,
    name: &str,
    now_ms: u64,
    marks: &[(u32, Position)],
) -> LeaseGrant {
    renew_frozen(state, name, now_ms, marks, BTreeMap::new())
}

fn renew_frozen(
    state: &mut PlacementState,
    name: &str,
    now_ms: u64,
    marks: &[(u32, Position)],
    frozen: BTreeMap<ShardId, FrozenReport>,
) -> LeaseGrant {
    renew_with(state, name, now_ms, marks, frozen, BTreeMap::new())
}

/// A takeover candidate's renewal reporting its sealed copy of `shard` at `at`.
fn renew_sealed(
    state: &mut PlacementState,
    name: &str,
    now_ms: u64,
    shard: u32,
    at: Position,
) -> LeaseGrant {
    let takeover = match &state.shard(ShardId(shard)).unwrap().status {
        ShardStatus::TakingOver { takeover, .. } => *takeover,
        other => panic!("shard {shard} is not being taken over: {other:?}"),
    };
    let sealed = BTreeMap::from([(ShardId(shard), SealReport { takeover, at })]);
    renew_with(state, name, now_ms, &[(shard, at)], BTreeMap::new(), sealed)
}

fn renew_with(
    state: &mut PlacementState,
    name: &str,
    now_ms: u64,
    marks: &[(u32, Position)],
    frozen: BTreeMap<ShardId, FrozenReport>,
    sealed: BTreeMap<ShardId, SealReport>,
) -> LeaseGrant {
    let watermarks = marks.iter().map(|(s, p)| (ShardId(*s), *p)).collect();
    match state.apply(&Command::RenewLease {
        dc: dc(name),
        now_ms,
        watermarks,
        frozen,
        sealed,
    }) {
        Ok(Reply::LeaseGranted { grant }) => grant,
        other => panic!("renewal of {name}: {other:?}"),
    }
}

fn start_takeover(shard: u32, from: &str, to: &str, now_ms: u64, since_ms: u64) -> Command {
    Command::StartTakeover {
        shard: ShardId(shard),
        from: dc(from),
        to: dc(to),
        now_ms,
        leader_since_ms: since_ms,
    }
}

fn takeover(
    shard: u32,
    from: &str,
    to: &str,
    point: Position,
    now_ms: u64,
    since_ms: u64,
) -> Command {
    Command::Takeover {
        shard: ShardId(shard),
        from: dc(from),
        to: dc(to),
        takeover_point: point,
        now_ms,
        leader_since_ms: since_ms,
    }
}

/// Bootstrap: shards `0..S` go round-robin over the voter DCs in the order given, the global
/// shard to the first one; every other voter is a replica; the witness holds nothing; epoch 1.
/// A second bootstrap, and any command before the first, are rejected.
#[test]
fn bootstrap_spreads_shards_round_robin() {
    let state = bootstrap(&["a", "b", "c"], 5);
    let owners: Vec<(ShardId, &str)> = state
        .shards()
        .iter()
        .map(|(shard, placement)| (*shard, placement.owner.0.as_str()))
        .collect();
    assert_eq!(
        owners,
        [
            (ShardId(0), "a"),
            (ShardId(1), "b"),
            (ShardId(2), "c"),
            (ShardId(3), "a"),
            (ShardId(4), "b"),
            (ShardId::GLOBAL, "a"),
        ]
    );
    let shard1 = state.shard(ShardId(1)).unwrap();
    assert_eq!(shard1.replicas, [dc("a"), dc("c")]);
    assert_eq!(shard1.epoch, Epoch(1));
    assert_eq!(shard1.status, ShardStatus::Active);

    let mut some = Some(state);
    let again = Command::Bootstrap {
        dcs: vec![Dc::voter("a")],
        shard_count: 1,
        lease_ms: LEASE_MS,
        max_clock_offset_ms: OFFSET_MS,
    };
    assert_eq!(
        apply_command(&mut some, &again),
        Err(Rejected::AlreadyBootstrapped)
    );
    let mut none = None;
    assert_eq!(
        apply_command(
            &mut none,
            &Command::AbortHandover {
                shard: ShardId(0),
                handover: None
            }
        ),
        Err(Rejected::NotBootstrapped)
    );
    let witness_only = Command::Bootstrap {
        dcs: vec![Dc::witness("w")],
        shard_count: 1,
        lease_ms: LEASE_MS,
        max_clock_offset_ms: OFFSET_MS,
    };
    assert!(matches!(
        apply_command(&mut none, &witness_only),
        Err(Rejected::InvalidBootstrap { .. })
    ));
    assert!(none.is_none());
}

/// A lease grant names exactly the shards the DC owns, with their epochs; a witness cannot
/// hold a lease.
#[test]
fn a_grant_names_the_owned_shards_with_their_epochs() {
    let mut state = bootstrap(&["a", "b"], 4);
    let grant = renew(&mut state, "b", 10, &[]);
    let owned: Vec<(ShardId, OwnedShard)> = grant.owned.into_iter().collect();
    assert_eq!(
        owned,
        [
            (ShardId(1), OwnedShard::Writable { epoch: Epoch(1) }),
            (ShardId(3), OwnedShard::Writable { epoch: Epoch(1) }),
        ]
    );
    assert_eq!(grant.map.len(), 5);
    assert_eq!(
        state.apply(&Command::RenewLease {
            dc: dc("witness"),
            now_ms: 10,
            watermarks: BTreeMap::new(),
            frozen: BTreeMap::new(),
            sealed: BTreeMap::new(),
        }),
        Err(Rejected::Witness { dc: dc("witness") })
    );
}

/// The grantor's rule: a DC is dead only once `granted_at + lease + max_clock_offset` has passed
/// on the leader's clock; between `granted_at + lease` and that it is in doubt.
#[test]
fn a_dc_is_dead_only_after_lease_plus_offset() {
    let mut state = bootstrap(&["a", "b"], 2);
    let since = 1_000;
    renew(&mut state, "a", since + 10_000, &[]);
    renew(&mut state, "b", since + 10_000, &[]);
    let granted = since + 10_000;
    let view =
        |state: &PlacementState, now| coopr_placement::lease_view(state, &dc("a"), now, since);
    assert_eq!(
        view(&state, granted + LEASE_MS - 1),
        GrantorView::Valid {
            until_ms: granted + LEASE_MS + OFFSET_MS
        }
    );
    assert_eq!(
        view(&state, granted + LEASE_MS),
        GrantorView::InDoubt {
            until_ms: granted + LEASE_MS + OFFSET_MS
        }
    );
    assert!(dead_dcs(&state, granted + LEASE_MS + OFFSET_MS - 1, since).is_empty());
    assert_eq!(
        dead_dcs(&state, granted + LEASE_MS + OFFSET_MS, since),
        [dc("a"), dc("b")]
    );
}

/// The new-leader wait: a leader elected at `since` declares no DC dead before
/// `since + lease + offset` on its own clock, whatever the predecessor's grant times say (they
/// are readings of another clock: far ahead, far behind, or numerically inside this leader's
/// range); after the wait, a DC that has not renewed with it is dead, one that has is not. The
/// state machine enforces the same wait on `Takeover`.
#[test]
fn a_new_leader_waits_a_full_lease_before_declaring_a_dc_dead() {
    let mut state = bootstrap(&["a", "b", "c"], 3);
    // Granted by the previous leader, whose clock read very different numbers.
    renew(&mut state, "a", 5, &[]); // far behind: looks long expired
    renew(&mut state, "b", 9_000_000_000, &[]); // far ahead: looks valid for ages
    renew(&mut state, "c", 50_500, &[]); // inside the new leader's range by accident
    let since = 50_000;
    let wait_over = since + LEASE_MS + OFFSET_MS;
    for now in [since, since + 1, since + LEASE_MS, wait_over - 1] {
        assert!(dead_dcs(&state, now, since).is_empty(), "at {now}");
    }
    assert_eq!(
        state.apply(&start_takeover(0, "a", "b", wait_over - 1, since)),
        Err(Rejected::LeaseNotExpired {
            dc: dc("a"),
            until_ms: wait_over
        })
    );
    // b renews with the new leader during the wait; a does not; c's accidental reading is
    // treated as the new leader's own (it only delays c's death: safe).
    renew(&mut state, "b", since + 2_000, &[]);
    assert_eq!(dead_dcs(&state, wait_over, since), [dc("a")]);
    assert_eq!(
        dead_dcs(&state, 50_500 + LEASE_MS + OFFSET_MS, since),
        [dc("a"), dc("c")]
    );
    assert!(state
        .apply(&start_takeover(0, "a", "b", wait_over, since))
        .is_ok());
}

/// Takeover of a shard whose owner's lease is still valid (or within the offset margin) is
/// rejected and changes nothing, so a partitioned owner stops writing before anyone starts;
/// so is a takeover from a DC that is not the owner, or to a DC that is not a replica. The
/// takeover point is exactly the position the candidate reported its sealed copy at: any
/// other point, or none reported, is rejected.
#[test]
fn takeover_from_a_dc_with_a_valid_lease_is_rejected() {
    let mut state = bootstrap(&["a", "b", "c"], 3);
    let since = 0;
    renew(&mut state, "a", 10_000, &[]);
    let late = 10_000 + LEASE_MS + OFFSET_MS;
    renew(&mut state, "b", late - 10, &[]);
    let before = state.clone();
    for now in [
        10_000,
        10_000 + LEASE_MS - 1,
        10_000 + LEASE_MS + OFFSET_MS - 1,
    ] {
        let refused = Err(Rejected::LeaseNotExpired {
            dc: dc("a"),
            until_ms: 10_000 + LEASE_MS + OFFSET_MS,
        });
        assert_eq!(
            state.apply(&start_takeover(0, "a", "b", now, since)),
            refused,
            "at {now}"
        );
        assert_eq!(
            state.apply(&takeover(0, "a", "b", Position::ZERO, now, since)),
            refused,
            "at {now}"
        );
    }
    assert_eq!(state, before);
    assert!(matches!(
        state.apply(&start_takeover(0, "b", "c", late, since)),
        Err(Rejected::NotOwner { .. })
    ));
    assert!(matches!(
        state.apply(&start_takeover(0, "a", "witness", late, since)),
        Err(Rejected::Witness { .. })
    ));
    // c never renewed: not a healthy candidate.
    assert!(matches!(
        state.apply(&start_takeover(0, "a", "c", late, since)),
        Err(Rejected::CandidateUnhealthy { .. })
    ));
    // No candidate sealed anything yet.
    assert!(matches!(
        state.apply(&takeover(0, "a", "b", Position::new(1, 7), late, since)),
        Err(Rejected::NotSealed { .. })
    ));
    assert_eq!(state, before);

    state
        .apply(&start_takeover(0, "a", "b", late, since))
        .unwrap();
    let grant = renew(&mut state, "b", late + 1, &[]);
    assert_eq!(grant.taking_over[&ShardId(0)].from, dc("a"));
    assert!(matches!(
        state.apply(&start_takeover(0, "a", "b", late + 2, since)),
        Err(Rejected::TakeoverInProgress { .. })
    ));
    renew_sealed(&mut state, "b", late + 2, 0, Position::new(1, 7));
    // Only the sealed position is a takeover point: an earlier report would fork the shard.
    for wrong in [Position::new(1, 6), Position::new(1, 8)] {
        assert!(matches!(
            state.apply(&takeover(0, "a", "b", wrong, late + 3, since)),
            Err(Rejected::NotSealed { .. })
        ));
    }
    assert!(matches!(
        state.apply(&takeover(0, "a", "b", Position::new(2, 1), late + 3, since)),
        Err(Rejected::TakeoverPointInvalid { .. })
    ));
    assert_eq!(
        plan_takeovers(&state, late + 3, since),
        [takeover(0, "a", "b", Position::new(1, 7), late + 3, since)]
    );
    let Ok(Reply::Shard { placement, .. }) =
        state.apply(&takeover(0, "a", "b", Position::new(1, 7), late + 3, since))
    else {
        panic!("takeover after expiry is accepted")
    };
    assert_eq!(placement.owner, dc("b"));
    assert_eq!(placement.epoch, Epoch(2));
    assert_eq!(placement.status, ShardStatus::Active);
    assert_eq!(placement.replicas, [dc("c"), dc("a")]);
    let change = state.history().last().unwrap();
    assert_eq!(
        change.reason,
        ChangeReason::Failover {
            takeover_point: Position::new(1, 7),
            at_ms: late + 3
        }
    );
}

/// An owner that renews while its shard is being taken over (it was only slow) keeps the
/// shard: the takeover ends, the candidate's order disappears from its grant, and a seal it
/// reports afterwards cannot complete it. While the takeover runs, the owner's grant does not
/// list the shard.
#[test]
fn an_owner_back_in_time_keeps_its_shard() {
    let mut state = bootstrap(&["a", "b"], 1);
    let since = 0;
    renew(&mut state, "a", 0, &[]);
    let late = LEASE_MS + OFFSET_MS;
    renew(&mut state, "b", late, &[]);
    state
        .apply(&start_takeover(0, "a", "b", late, since))
        .unwrap();
    let grant = state.grant_for(&dc("a"));
    assert!(!grant.owned.contains_key(&ShardId(0)));
    let number = match state.shard(ShardId(0)).unwrap().status {
        ShardStatus::TakingOver { takeover, .. } => takeover,
        ref other => panic!("{other:?}"),
    };
    let grant = renew(&mut state, "a", late + 1, &[]);
    assert_eq!(
        grant.owned[&ShardId(0)],
        OwnedShard::Writable { epoch: Epoch(1) }
    );
    let grant = renew_with(
        &mut state,
        "b",
        late + 2,
        &[(0, Position::new(1, 3))],
        BTreeMap::new(),
        BTreeMap::from([(
            ShardId(0),
            SealReport {
                takeover: number,
                at: Position::new(1, 3),
            },
        )]),
    );
    assert!(grant.taking_over.is_empty());
    assert_eq!(state.shard(ShardId(0)).unwrap().status, ShardStatus::Active);
    assert!(matches!(
        state.apply(&takeover(0, "a", "b", Position::new(1, 3), late + 3, since)),
        Err(Rejected::LeaseNotExpired { .. })
    ));
}

/// A candidate that does not report its sealed copy in time is replaced by another healthy
/// replica (or asked again, when it is the only one), under a new takeover number.
#[test]
fn a_silent_candidate_is_replaced() {
    let mut state = bootstrap(&["a", "b", "c"], 1);
    let since = 0;
    renew(&mut state, "a", 0, &[]);
    let late = LEASE_MS + OFFSET_MS;
    renew(&mut state, "b", late, &[(0, Position::new(1, 5))]);
    renew(&mut state, "c", late, &[(0, Position::new(1, 4))]);
    // (a also owns the global shard: only shard 0 is looked at here.)
    let of_shard_0 = |plan: Vec<Command>| -> Vec<Command> {
        plan.into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::StartTakeover {
                        shard: ShardId(0),
                        ..
                    }
                )
            })
            .collect()
    };
    let first = of_shard_0(plan_failover(&state, &dc("a"), late, since));
    assert_eq!(first, [start_takeover(0, "a", "b", late, since)]);
    state.apply(&first[0]).unwrap();
    let timeout = state.takeover_timeout_ms();
    // c keeps renewing; b goes quiet.
    renew(
        &mut state,
        "c",
        late + timeout - 100,
        &[(0, Position::new(1, 4))],
    );
    renew(
        &mut state,
        "b",
        late + timeout - 100,
        &[(0, Position::new(1, 5))],
    );
    assert!(of_shard_0(plan_failover(&state, &dc("a"), late + timeout - 1, since)).is_empty());
    let replace = of_shard_0(plan_failover(&state, &dc("a"), late + timeout, since));
    assert_eq!(
        replace,
        [start_takeover(0, "a", "c", late + timeout, since)]
    );
    state.apply(&replace[0]).unwrap();
    assert!(matches!(
        state.shard(ShardId(0)).unwrap().status,
        ShardStatus::TakingOver { ref to, takeover: 2, .. } if *to == dc("c")
    ));
}

/// Failover asks, for each of the dead DC's shards, the healthy replica with the highest
/// watermark for it to take it over (ties: the DC holding the fewest shards, then the smallest
/// id). A DC that is not healthy, or whose copy holds a tail lost in an earlier failover, is
/// not picked.
#[test]
fn failover_picks_the_most_caught_up_healthy_replica() {
    let mut state = bootstrap(&["a", "b", "c", "d", "e"], 5); // a owns 0 (and global)
    let since = 0;
    // e is the most caught up on shard 0 but its lease lapses; c and d tie.
    renew(&mut state, "e", 100, &[(0, Position::new(1, 20))]);
    renew(&mut state, "a", 1_000, &[]);
    let now = 1_000 + LEASE_MS + OFFSET_MS;
    renew(
        &mut state,
        "b",
        now - 10,
        &[(0, Position::new(1, 10)), (u32::MAX, Position::new(1, 3))],
    );
    renew(
        &mut state,
        "c",
        now - 10,
        &[(0, Position::new(1, 12)), (u32::MAX, Position::new(1, 2))],
    );
    renew(&mut state, "d", now - 10, &[(0, Position::new(1, 12))]);
    assert_eq!(dead_dcs(&state, now, since), [dc("a"), dc("e")]);
    let plan = plan_failover(&state, &dc("a"), now, since);
    assert_eq!(
        plan,
        [
            // c and d tie on shard 0 and on load (one shard each): the smaller id.
            start_takeover(0, "a", "c", now, since),
            Command::StartTakeover {
                shard: ShardId::GLOBAL,
                from: dc("a"),
                to: dc("b"),
                now_ms: now,
                leader_since_ms: since,
            },
        ]
    );
    assert!(
        plan_failover(&state, &dc("b"), now, since).is_empty(),
        "b is alive"
    );
    for command in &plan {
        state.apply(command).unwrap();
    }
    renew_sealed(&mut state, "c", now + 1, 0, Position::new(1, 12));
    renew_sealed(&mut state, "b", now + 1, u32::MAX, Position::new(1, 3));
    for command in plan_takeovers(&state, now + 2, since) {
        state.apply(&command).unwrap();
    }
    assert_eq!(state.shard(ShardId(0)).unwrap().owner, dc("c"));
    assert_eq!(state.shard(ShardId::GLOBAL).unwrap().owner, dc("b"));

    // a comes back still holding shard 0 up to (1, 30): that tail was lost, and a copy at
    // (1, 30) is not on the shard's history any more. When c dies, b (behind a in raw
    // position) takes shard 0, not a.
    let later = now + 10_000;
    renew(&mut state, "a", later - 10, &[(0, Position::new(1, 30))]);
    renew(&mut state, "b", later - 10, &[(0, Position::new(1, 11))]);
    renew(&mut state, "d", later - 10, &[(0, Position::new(1, 9))]);
    let placement = state.shard(ShardId(0)).unwrap();
    assert!(!placement.is_on_history(Position::new(1, 30)));
    assert!(placement.is_on_history(Position::new(1, 12)));
    assert!(placement.is_on_history(Position::new(2, 99)));
    assert_eq!(
        plan_failover(&state, &dc("c"), later, since),
        [
            start_takeover(0, "c", "b", later, since),
            // Nobody reported shard 2: the healthy replicas tie at nothing; a holds the fewest
            // shards (none: it lost both of its own; b holds two and is taking a third).
            start_takeover(2, "c", "a", later, since),
        ]
    );
}

/// Epochs only increase: over seeded random sequences of every kind of command, no shard's
/// epoch ever goes down, it goes up (by exactly one) exactly when the owner changes, the owner
/// is never among the replicas, and a rejected command leaves the state unchanged.
#[test]
fn epochs_only_increase_and_rejections_change_nothing() {
    let names = ["a", "b", "c", "witness", "nowhere"];
    let mut rng = 0x5eed_u64;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    for _run in 0..50 {
        let mut state = bootstrap(&["a", "b", "c"], 4);
        let mut now = 0;
        for _step in 0..300 {
            now += next(2_000);
            let shard = if next(6) == 0 {
                ShardId::GLOBAL
            } else {
                ShardId(next(5) as u32)
            };
            let name = |i: u64| dc(names[i as usize]);
            let point = Position::new(next(3), next(20));
            let command = match next(7) {
                0 => Command::RenewLease {
                    dc: name(next(5)),
                    now_ms: now,
                    watermarks: BTreeMap::from([(shard, point)]),
                    frozen: BTreeMap::from([(
                        shard,
                        FrozenReport {
                            handover: next(4),
                            last: point,
                        },
                    )]),
                    sealed: BTreeMap::from([(
                        shard,
                        SealReport {
                            takeover: next(4),
                            at: point,
                        },
                    )]),
                },
                1 if next(2) == 0 => takeover(
                    shard.0,
                    names[next(5) as usize],
                    names[next(5) as usize],
                    point,
                    now,
                    next(now + 1),
                ),
                1 => start_takeover(
                    shard.0,
                    names[next(5) as usize],
                    names[next(5) as usize],
                    now,
                    next(now + 1),
                ),
                2 => Command::StartHandover {
                    shard,
                    to: name(next(5)),
                    now_ms: now,
                    leader_since_ms: next(now + 1),
                },
                3 => Command::CompleteHandover {
                    shard,
                    target_watermark: point,
                },
                4 => Command::AbortHandover {
                    shard,
                    handover: None,
                },
                5 => Command::SetReplicas {
                    shard,
                    replicas: (0..next(4)).map(|_| name(next(5))).collect(),
                },
                _ => match plan_failover(&state, &name(next(3)), now, 0)
                    .into_iter()
                    .chain(plan_takeovers(&state, now, 0))
                    .next()
                {
                    Some(command) => command,
                    None => Command::AbortHandover {
                        shard,
                        handover: None,
                    },
                },
            };
            let before = state.clone();
            let outcome = state.apply(&command);
            if outcome.is_err() {
                assert_eq!(
                    state, before,
                    "{command:?} was rejected but changed the state"
                );
            }
            for (shard, placement) in state.shards() {
                let old = before.shard(*shard).unwrap();
                assert!(placement.epoch >= old.epoch);
                let moved = placement.owner != old.owner;
                assert_eq!(placement.epoch > old.epoch, moved, "{command:?}");
                if moved {
                    assert_eq!(placement.epoch, old.epoch.next());
                }
                assert!(!placement.replicas.contains(&placement.owner));
            }
        }
    }
}

/// Graceful handover loses nothing: the owner is frozen first; the handover completes only
/// with the target's watermark equal to the final position the owner reported for this very
/// handover (a report from an aborted earlier one is ignored); then the target owns the shard
/// in the next epoch and the old owner is a replica.
#[test]
fn a_handover_completes_only_when_the_target_is_caught_up() {
    let mut state = bootstrap(&["a", "b"], 1); // a owns 0, b replicates it
    let since = 0;
    let shard = ShardId(0);
    let start = Command::StartHandover {
        shard,
        to: dc("b"),
        now_ms: 0,
        leader_since_ms: 0,
    };

    // A first handover, aborted after the owner reported (1, 5).
    state.apply(&start).unwrap();
    let grant = renew(&mut state, "a", 100, &[]);
    let OwnedShard::Frozen {
        handover: first, ..
    } = grant.owned[&shard].clone()
    else {
        panic!("the grant freezes the shard")
    };
    state
        .apply(&Command::AbortHandover {
            shard,
            handover: None,
        })
        .unwrap();
    let grant = renew(&mut state, "a", 200, &[]);
    assert_eq!(
        grant.owned[&shard],
        OwnedShard::Writable { epoch: Epoch(1) }
    );

    // The second handover: a wrote up to (1, 9) in between.
    state.apply(&start).unwrap();
    assert!(matches!(
        state.apply(&start),
        Err(Rejected::HandoverInProgress { .. })
    ));
    assert_eq!(
        state.apply(&Command::CompleteHandover {
            shard,
            target_watermark: Position::new(1, 9)
        }),
        Err(Rejected::OwnerNotFrozen { shard })
    );
    let stale = BTreeMap::from([(
        shard,
        FrozenReport {
            handover: first,
            last: Position::new(1, 5),
        },
    )]);
    renew_frozen(&mut state, "a", 300, &[], stale);
    assert!(matches!(
        state.shard(shard).unwrap().status,
        ShardStatus::Draining { .. }
    ));
    let grant = renew(&mut state, "a", 400, &[]);
    let OwnedShard::Frozen {
        handover: second, ..
    } = grant.owned[&shard].clone()
    else {
        panic!("the grant freezes the shard")
    };
    let report = BTreeMap::from([(
        shard,
        FrozenReport {
            handover: second,
            last: Position::new(1, 9),
        },
    )]);
    renew_frozen(&mut state, "a", 500, &[], report);
    assert_eq!(
        state.shard(shard).unwrap().status,
        ShardStatus::HandingOver {
            to: dc("b"),
            handover: second,
            until: Position::new(1, 9),
            started_ms: 0,
        }
    );

    // b is at (1, 8): not yet.
    renew(&mut state, "b", 600, &[(0, Position::new(1, 8))]);
    assert!(plan_handover_completions(&state, 700, since).is_empty());
    assert_eq!(
        state.apply(&Command::CompleteHandover {
            shard,
            target_watermark: Position::new(1, 8)
        }),
        Err(Rejected::NotCaughtUp {
            shard,
            target_watermark: Position::new(1, 8),
            owner_final: Position::new(1, 9)
        })
    );
    renew(&mut state, "b", 800, &[(0, Position::new(1, 9))]);
    let plan = plan_handover_completions(&state, 900, since);
    assert_eq!(
        plan,
        [Command::CompleteHandover {
            shard,
            target_watermark: Position::new(1, 9)
        }]
    );
    state.apply(&plan[0]).unwrap();
    let placement = state.shard(shard).unwrap();
    assert_eq!((&placement.owner, placement.epoch), (&dc("b"), Epoch(2)));
    assert_eq!(placement.replicas, [dc("a")]);
    assert_eq!(placement.status, ShardStatus::Active);
    assert_eq!(
        state.history().last().unwrap().reason,
        ChangeReason::Handover {
            until: Position::new(1, 9)
        }
    );
}

/// A handover is bounded: the leader aborts it once it has run `timeout` on its clock without
/// completing, whether the owner has not frozen yet (`draining`) or a replica has not caught up
/// (`handing_over`, the start time carried over); one started under a predecessor counts from
/// the leader's election. The abort names the handover, so a late one does not hit a newer
/// handover of the shard; after it the owner's grant lets it write again.
#[test]
fn a_handover_that_runs_out_of_time_is_aborted() {
    const TIMEOUT: u64 = 30_000;
    let mut state = bootstrap(&["a", "b"], 1);
    let shard = ShardId(0);
    renew(&mut state, "a", 900, &[]);
    renew(&mut state, "b", 900, &[(0, Position::new(1, 2))]);
    let start = |now_ms| Command::StartHandover {
        shard,
        to: dc("b"),
        now_ms,
        leader_since_ms: 0,
    };
    state.apply(&start(1_000)).unwrap();
    assert!(plan_handover_timeouts(&state, TIMEOUT, 1_000 + TIMEOUT - 1, 0).is_empty());
    let abort = Command::AbortHandover {
        shard,
        handover: Some(1),
    };
    assert_eq!(
        plan_handover_timeouts(&state, TIMEOUT, 1_000 + TIMEOUT, 0),
        std::slice::from_ref(&abort)
    );

    // The owner froze at (1, 3); b stays at (1, 2): still the same deadline.
    let report = BTreeMap::from([(
        shard,
        FrozenReport {
            handover: 1,
            last: Position::new(1, 3),
        },
    )]);
    renew_frozen(&mut state, "a", 2_000, &[], report);
    assert!(matches!(
        state.shard(shard).unwrap().status,
        ShardStatus::HandingOver {
            started_ms: 1_000,
            ..
        }
    ));
    assert!(plan_handover_timeouts(&state, TIMEOUT, 1_000 + TIMEOUT - 1, 0).is_empty());
    assert_eq!(
        plan_handover_timeouts(&state, TIMEOUT, 1_000 + TIMEOUT, 0),
        std::slice::from_ref(&abort)
    );
    // A leader elected later (its clock reads 500 000 at its election) cannot read the start
    // time: it gives the handover a full timeout from its election.
    let since = 500_000;
    assert!(plan_handover_timeouts(&state, TIMEOUT, since + TIMEOUT - 1, since).is_empty());
    assert_eq!(
        plan_handover_timeouts(&state, TIMEOUT, since + TIMEOUT, since),
        std::slice::from_ref(&abort)
    );

    state.apply(&abort).unwrap();
    assert_eq!(state.shard(shard).unwrap().status, ShardStatus::Active);
    let grant = renew(&mut state, "a", 40_000, &[]);
    assert_eq!(
        grant.owned[&shard],
        OwnedShard::Writable { epoch: Epoch(1) }
    );
    assert!(plan_handover_timeouts(&state, TIMEOUT, 1_000_000, 0).is_empty());

    // A second handover; the first one's abort, late, is refused and changes nothing.
    renew(&mut state, "b", 40_000, &[(0, Position::new(1, 3))]);
    state.apply(&start(40_000)).unwrap();
    let before = state.clone();
    assert_eq!(state.apply(&abort), Err(Rejected::NoHandover { shard }));
    assert_eq!(state, before);
    assert_eq!(
        plan_handover_timeouts(&state, TIMEOUT, 40_000 + TIMEOUT, 0),
        [Command::AbortHandover {
            shard,
            handover: Some(2)
        }]
    );
}

/// A handover to a DC whose lease has certainly expired is refused at once (it could only run
/// out of time); one whose lease is in doubt (a new leader's wait) is accepted.
#[test]
fn a_handover_to_a_dead_target_is_refused() {
    let mut state = bootstrap(&["a", "b"], 1);
    let shard = ShardId(0);
    renew(&mut state, "b", 1_000, &[]);
    let start = |now_ms, leader_since_ms| Command::StartHandover {
        shard,
        to: dc("b"),
        now_ms,
        leader_since_ms,
    };
    let dead_at = 1_000 + LEASE_MS + OFFSET_MS;
    let before = state.clone();
    assert_eq!(
        state.apply(&start(dead_at, 0)),
        Err(Rejected::CandidateUnhealthy { shard, dc: dc("b") })
    );
    assert_eq!(state, before);
    // A new leader (elected at 100 000 on its clock) does not know b's lease yet: in doubt.
    assert!(state.apply(&start(100_000, 100_000)).is_ok());
}

/// Renews every voter's lease at `now_ms`, each reporting `mark` for every shard it replicates.
fn renew_all(state: &mut PlacementState, now_ms: u64, mark: Position) {
    let voters: Vec<DcId> = state.voters().cloned().collect();
    for voter in voters {
        let marks: Vec<(u32, Position)> = state
            .shards()
            .iter()
            .filter(|(shard, p)| p.replicas.contains(&voter) && !shard.is_global())
            .map(|(shard, _)| (shard.0, mark))
            .collect();
        renew(state, &voter.0, now_ms, &marks);
    }
}

/// Runs the handover of `shard` that was started to its end: the owner freezes at its current
/// epoch's seq 5, every replica reports it, the leader completes it.
fn finish_handover(state: &mut PlacementState, shard: u32, now_ms: u64) {
    let placement = state.shard(ShardId(shard)).unwrap().clone();
    let ShardStatus::Draining { handover, .. } = placement.status else {
        panic!("shard {shard} is not draining: {:?}", placement.status)
    };
    let until = Position::new(placement.epoch.0, 5);
    let report = BTreeMap::from([(
        ShardId(shard),
        FrozenReport {
            handover,
            last: until,
        },
    )]);
    renew_frozen(state, &placement.owner.0, now_ms, &[], report);
    for replica in &placement.replicas {
        renew(state, &replica.0, now_ms, &[(shard, until)]);
    }
    let plan = plan_handover_completions(state, now_ms, 0);
    assert_eq!(plan.len(), 1, "{plan:?}");
    state.apply(&plan[0]).unwrap();
}

fn handovers(commands: &[Command]) -> Vec<(u32, String)> {
    commands
        .iter()
        .map(|c| match c {
            Command::StartHandover { shard, to, .. } => (shard.0, to.0.clone()),
            other => panic!("not a handover: {other:?}"),
        })
        .collect()
}

/// Draining a DC: it is no target of handovers or takeovers any more; its shards go, at most
/// `MOVES_PER_DC` at a time, to the healthy undrained replicas, spread by load; the dry-run plan
/// says what blocks a move (the global shard, a handover in progress, no target left); once it
/// owns nothing, nothing more is planned. A witness or an unknown DC cannot be drained.
#[test]
fn a_drained_dc_hands_its_shards_over_a_few_at_a_time() {
    let mut state = bootstrap(&["a", "b", "c"], 9); // b owns 1, 4, 7
    let b = dc("b");
    renew_all(&mut state, 100, Position::new(1, 5));
    assert_eq!(
        state.apply(&Command::DrainDc { dc: dc("witness") }),
        Err(Rejected::Witness { dc: dc("witness") })
    );
    assert_eq!(
        state.apply(&Command::DrainDc { dc: dc("zz") }),
        Err(Rejected::UnknownDc { dc: dc("zz") })
    );
    state.apply(&Command::DrainDc { dc: b.clone() }).unwrap();
    assert_eq!(state.maintenance()[&b], Maintenance::Draining);
    assert_eq!(
        state.apply(&Command::StartHandover {
            shard: ShardId(0),
            to: b.clone(),
            now_ms: 200,
            leader_since_ms: 0,
        }),
        Err(Rejected::TargetDraining { dc: b.clone() })
    );

    let plan = drain_plan(&state, &b, 200, 0);
    let targets: Vec<(u32, Option<String>)> = plan
        .iter()
        .map(|m| (m.shard.0, m.to.as_ref().map(|d| d.0.clone())))
        .collect();
    assert_eq!(
        targets,
        [
            (1, Some("c".into())),
            (4, Some("a".into())),
            (7, Some("c".into()))
        ],
        "spread over c (3 shards) and a (4, the global one included): {plan:?}"
    );
    let first = plan_maintenance(&state, 200, 0);
    assert_eq!(
        handovers(&first),
        [(1, "c".to_string()), (4, "a".to_string())]
    );
    for command in &first {
        state.apply(command).unwrap();
    }
    assert!(
        plan_maintenance(&state, 300, 0).is_empty(),
        "two run already"
    );
    assert_eq!(
        drain_plan(&state, &b, 300, 0)[0].blocked,
        Some(Blocked::HandoverInProgress { to: dc("c") })
    );

    finish_handover(&mut state, 1, 400);
    let next = plan_maintenance(&state, 400, 0);
    assert_eq!(handovers(&next), [(7, "c".to_string())]);
    state.apply(&next[0]).unwrap();
    finish_handover(&mut state, 4, 500);
    finish_handover(&mut state, 7, 500);
    assert!(state.shards().values().all(|p| p.owner != b));
    assert!(drain_plan(&state, &b, 600, 0).is_empty());
    assert!(plan_maintenance(&state, 600, 0).is_empty());
    assert_eq!(
        state.maintenance()[&b],
        Maintenance::Draining,
        "until undrained"
    );

    // A takeover never targets a drained DC: c dies, its shards go to a only.
    renew(&mut state, "a", 5_000, &[]);
    renew(&mut state, "b", 5_000, &[]);
    let dead = plan_failover(&state, &dc("c"), 5_000, 0);
    assert!(!dead.is_empty());
    assert!(
        dead.iter()
            .all(|c| matches!(c, Command::StartTakeover { to, .. } if *to == dc("a"))),
        "{dead:?}"
    );
    assert_eq!(
        state.apply(&start_takeover(2, "c", "b", 5_000, 0)),
        Err(Rejected::TargetDraining { dc: b.clone() })
    );

    // The global shard stays; with both other DCs drained or down, a's shards have no target.
    let a = dc("a");
    state.apply(&Command::DrainDc { dc: a.clone() }).unwrap();
    let plan = drain_plan(&state, &a, 5_000, 0);
    assert!(plan.contains(&PlannedMove {
        shard: ShardId::GLOBAL,
        from: a.clone(),
        to: None,
        blocked: Some(Blocked::GlobalShard),
    }));
    assert!(
        plan.iter().filter(|m| !m.shard.is_global()).all(|m| matches!(
            &m.blocked,
            Some(Blocked::NoTarget { down, draining }) if *down == [dc("c")] && *draining == [b.clone()]
        )),
        "{plan:?}"
    );
    assert!(plan_maintenance(&state, 5_000, 0).is_empty());
}

/// Undraining a DC clears its mark and hands its home shards (shard s on the s mod k-th DC by
/// name) back, at most `MOVES_PER_DC` at a time; then the failback ends by itself. A home DC
/// that is down blocks the moves (they wait); one that holds no copy of a shard leaves it where
/// it is.
#[test]
fn an_undrained_dc_gets_its_home_shards_back_a_few_at_a_time() {
    let mut state = bootstrap(&["a", "b", "c"], 9); // b's home shards: 1, 4, 7
    let b = dc("b");
    renew_all(&mut state, 100, Position::new(1, 5));
    state.apply(&Command::DrainDc { dc: b.clone() }).unwrap();
    for round in 0..2u64 {
        let now = 200 + round * 100;
        for command in plan_maintenance(&state, now, 0) {
            state.apply(&command).unwrap();
        }
        for shard in [1, 4, 7] {
            if matches!(
                state.shard(ShardId(shard)).unwrap().status,
                ShardStatus::Draining { .. }
            ) {
                finish_handover(&mut state, shard, now);
            }
        }
    }
    assert!(state.shards().values().all(|p| p.owner != b));
    assert_eq!(state.home(ShardId(4)), Some(&b));
    assert_eq!(state.home(ShardId::GLOBAL), Some(&dc("a")));

    // b is down: the failback waits for it.
    state.apply(&Command::UndrainDc { dc: b.clone() }).unwrap();
    assert_eq!(state.maintenance()[&b], Maintenance::FailingBack);
    let late = 1_000 + LEASE_MS + OFFSET_MS;
    renew(&mut state, "a", late, &[]);
    renew(&mut state, "c", late, &[]);
    assert!(failback_plan(&state, &b, late, 0)
        .iter()
        .all(|m| m.blocked == Some(Blocked::TargetDown { dc: b.clone() })));
    assert!(plan_maintenance(&state, late, 0).is_empty());

    // b is back: two at a time, then the last one, then the failback ends.
    let now = late + 100;
    renew_all(&mut state, now, Position::new(2, 5));
    let first = plan_maintenance(&state, now, 0);
    assert_eq!(
        handovers(&first),
        [(1, "b".to_string()), (4, "b".to_string())]
    );
    for command in &first {
        state.apply(command).unwrap();
    }
    assert!(plan_maintenance(&state, now, 0).is_empty());
    finish_handover(&mut state, 1, now + 100);
    finish_handover(&mut state, 4, now + 100);
    let last = plan_maintenance(&state, now + 100, 0);
    assert_eq!(handovers(&last), [(7, "b".to_string())]);
    state.apply(&last[0]).unwrap();
    finish_handover(&mut state, 7, now + 200);
    let owners: Vec<&str> = [1, 4, 7]
        .iter()
        .map(|s| state.shard(ShardId(*s)).unwrap().owner.0.as_str())
        .collect();
    assert_eq!(owners, ["b", "b", "b"]);
    let end = plan_maintenance(&state, now + 200, 0);
    assert_eq!(end, [Command::EndFailback { dc: b.clone() }]);
    state.apply(&end[0]).unwrap();
    assert!(state.maintenance().is_empty());
    assert_eq!(
        state.apply(&end[0]),
        Err(Rejected::NoFailback { dc: b.clone() })
    );
}

/// A placement state written before handovers recorded their start and before maintenance
/// existed (no `started_ms`, no `maintenance`) still reads: the fields default.
#[test]
fn an_older_state_still_reads() {
    let mut state = bootstrap(&["a", "b"], 2);
    state
        .apply(&Command::StartHandover {
            shard: ShardId(0),
            to: dc("b"),
            now_ms: 7,
            leader_since_ms: 0,
        })
        .unwrap();
    let mut json = serde_json::to_value(&state).unwrap();
    json.as_object_mut().unwrap().remove("maintenance");
    json["shards"]["0"]["status"]
        .as_object_mut()
        .unwrap()
        .remove("started_ms")
        .expect("the start is written");
    let old: PlacementState = serde_json::from_value(json).unwrap();
    assert!(old.maintenance().is_empty());
    assert!(matches!(
        old.shard(ShardId(0)).unwrap().status,
        ShardStatus::Draining { started_ms: 0, .. }
    ));
    let command: Command =
        serde_json::from_str(r#"{"command":"start_handover","shard":1,"to":"a"}"#).unwrap();
    assert_eq!(
        command,
        Command::StartHandover {
            shard: ShardId(1),
            to: dc("a"),
            now_ms: 0,
            leader_since_ms: 0
        }
    );
}

/// Holder side: the holder's lease ends `lease - offset` after the timer it started before
/// sending; `may_acknowledge` needs a valid lease and the shard listed writable at the same
/// epoch, and says why not; a late, older grant never replaces a newer one, and a newer grant
/// reports the shards to demote.
#[test]
fn the_holder_fences_itself() {
    assert!(holder_lease_valid(1_000, LEASE_MS, OFFSET_MS, 1_000));
    assert!(holder_lease_valid(
        1_000,
        LEASE_MS,
        OFFSET_MS,
        1_000 + LEASE_MS - OFFSET_MS - 1
    ));
    assert!(!holder_lease_valid(
        1_000,
        LEASE_MS,
        OFFSET_MS,
        1_000 + LEASE_MS - OFFSET_MS
    ));
    assert!(!holder_lease_valid(1_000, LEASE_MS, OFFSET_MS, 999));

    let mut state = bootstrap(&["a", "b"], 2); // a owns 0, b owns 1
    let first = renew(&mut state, "a", 10, &[]);
    let mut held = HeldLease::new(first, 500);
    assert_eq!(held.remaining_ms(600), LEASE_MS - OFFSET_MS - 100);
    assert_eq!(held.remaining_ms(500 + LEASE_MS - OFFSET_MS - 1), 1);
    assert_eq!(held.remaining_ms(500 + LEASE_MS - OFFSET_MS), 0);
    assert_eq!(
        held.remaining_ms(499),
        0,
        "a clock before the start: not valid"
    );
    assert_eq!(may_acknowledge(&held, ShardId(0), Epoch(1), 600), Ok(()));
    assert_eq!(
        may_acknowledge(&held, ShardId(0), Epoch(1), 500 + LEASE_MS - OFFSET_MS),
        Err(Fenced::LeaseExpired {
            started_before_send_ms: 500
        })
    );
    assert_eq!(
        may_acknowledge(&held, ShardId(1), Epoch(1), 600),
        Err(Fenced::NotOwner {
            shard: ShardId(1),
            owner: dc("b"),
            epoch: Epoch(1)
        })
    );
    assert_eq!(
        may_acknowledge(&held, ShardId(0), Epoch(0), 600),
        Err(Fenced::StaleEpoch {
            shard: ShardId(0),
            epoch: Epoch(0),
            granted: Epoch(1)
        })
    );
    assert_eq!(
        may_acknowledge(&held, ShardId(7), Epoch(1), 600),
        Err(Fenced::UnknownShard { shard: ShardId(7) })
    );

    let older = renew(&mut state, "a", 20, &[]);
    state
        .apply(&Command::StartHandover {
            shard: ShardId(0),
            to: dc("b"),
            now_ms: 0,
            leader_since_ms: 0,
        })
        .unwrap();
    let newer = renew(&mut state, "a", 30, &[]);
    assert_eq!(
        held.update(newer, 700),
        [ShardId(0)],
        "the frozen shard is demoted"
    );
    assert_eq!(
        may_acknowledge(&held, ShardId(0), Epoch(1), 800),
        Err(Fenced::HandingOver {
            shard: ShardId(0),
            to: dc("b")
        })
    );
    assert!(held.update(older, 900).is_empty());
    assert_eq!(
        held.started_before_send_ms, 700,
        "a late older grant is ignored"
    );
    assert!(may_acknowledge(&held, ShardId(0), Epoch(1), 800).is_err());
}

/// Snapshot/restore round trip through the Raft application interface: a restored machine has
/// the same state and answers the next entries exactly as the original; an empty snapshot is
/// the initial (unbootstrapped) state; a malformed entry is answered with `Malformed` on every
/// node alike; a damaged snapshot is refused.
#[test]
fn snapshot_restore_round_trip() {
    let machine = PlacementMachine::new();
    let entries: Vec<Vec<u8>> = [
        Command::Bootstrap {
            dcs: vec![Dc::voter("a"), Dc::voter("b"), Dc::witness("w")],
            shard_count: 3,
            lease_ms: LEASE_MS,
            max_clock_offset_ms: OFFSET_MS,
        },
        Command::RenewLease {
            dc: dc("b"),
            now_ms: LEASE_MS,
            watermarks: BTreeMap::from([
                (ShardId(0), Position::new(1, 4)),
                (ShardId::GLOBAL, Position::new(1, 2)),
            ]),
            frozen: BTreeMap::new(),
            sealed: BTreeMap::new(),
        },
        start_takeover(0, "a", "b", LEASE_MS + OFFSET_MS, 0),
        Command::RenewLease {
            dc: dc("b"),
            now_ms: LEASE_MS + OFFSET_MS,
            watermarks: BTreeMap::from([(ShardId(0), Position::new(1, 4))]),
            frozen: BTreeMap::new(),
            sealed: BTreeMap::from([(
                ShardId(0),
                SealReport {
                    takeover: 1,
                    at: Position::new(1, 4),
                },
            )]),
        },
        takeover(0, "a", "b", Position::new(1, 4), LEASE_MS + OFFSET_MS, 0),
        Command::StartHandover {
            shard: ShardId(1),
            to: dc("a"),
            now_ms: 0,
            leader_since_ms: 0,
        },
    ]
    .iter()
    .map(PlacementMachine::encode_command)
    .collect();
    let batch: Vec<(u64, &[u8])> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e.as_slice()))
        .collect();
    let replies = machine.apply(&batch);
    assert_eq!(replies.len(), 6);
    for reply in &replies {
        let outcome = PlacementMachine::decode_outcome(reply).unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    let malformed = machine.apply(&[(7, b"{not json".as_slice())]);
    assert!(matches!(
        PlacementMachine::decode_outcome(&malformed[0]).unwrap(),
        Err(Rejected::Malformed { .. })
    ));

    let parts = snapshot_of(&machine);
    let restored = PlacementMachine::new();
    restore(&restored, &parts).unwrap();
    assert_eq!(restored.state(), machine.state());
    assert!(restored.state().is_some());
    let next = PlacementMachine::encode_command(&Command::RenewLease {
        dc: dc("a"),
        now_ms: 20,
        watermarks: BTreeMap::new(),
        frozen: BTreeMap::new(),
        sealed: BTreeMap::new(),
    });
    assert_eq!(restored.apply(&[(6, &next)]), machine.apply(&[(6, &next)]));
    assert_eq!(snapshot_of(&restored), snapshot_of(&machine));

    restore(&restored, &BTreeMap::new()).unwrap();
    assert_eq!(restored.state(), None);
    assert!(restore(&restored, &BTreeMap::from([(0, b"garbage".to_vec())])).is_err());
    assert!(restore(&restored, &BTreeMap::from([(1, b"null".to_vec())])).is_err());
    // A part that cannot be read fails the restore.
    let unreadable = std::io::Error::new(std::io::ErrorKind::InvalidData, "cut");
    assert!(restored
        .restore(&mut std::iter::once(Err(unreadable)))
        .is_err());
}

fn snapshot_of(machine: &PlacementMachine) -> BTreeMap<u32, Vec<u8>> {
    let mut parts = BTreeMap::new();
    machine.snapshot()(&mut |id, bytes| {
        parts.insert(id, bytes.to_vec());
        Ok(())
    })
    .unwrap();
    parts
}

fn restore(machine: &PlacementMachine, parts: &BTreeMap<u32, Vec<u8>>) -> anyhow::Result<()> {
    machine.restore(&mut parts.iter().map(|(id, bytes)| Ok((*id, bytes.clone()))))
}
