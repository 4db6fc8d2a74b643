//! Seeded simulation of DC leaders renewing leases with the placement group through a lossy,
//! reordering, partitioning network, with drifting clocks, placement leader changes (each new
//! leader has an unrelated monotonic clock), DC leader changes, failovers and handovers.
//!
//! Reproduce one seed: `SEED=17 cargo test -p coopr-placement --test single_writer`.

use std::collections::BTreeMap;

use coopr_placement::{
    apply_command, dead_dcs, may_acknowledge, plan_failover, plan_handover_completions,
    plan_handover_timeouts, plan_maintenance, plan_takeovers, Command, Dc, DcId, Epoch,
    FrozenReport, HeldLease, OwnedShard, PlacementState, Position, Reply, SealReport, Seq,
    ShardStatus,
};
use coopr_types::ShardId;

const LEASE_MS: u64 = 3_000;
const MAX_CLOCK_OFFSET_MS: u64 = 100;
/// Clock rates differ from real time by at most this (parts per million); the offset margin
/// covers the drift over a lease many times over.
const MAX_DRIFT_PPM: i64 = 500;
const TICK_MS: u64 = 10;
const RUN_MS: u64 = 240_000;
const SHARD_COUNT: u32 = 6;
/// The placement leader aborts a handover that has not completed in this long.
const HANDOVER_TIMEOUT_MS: u64 = 10_000;

/// splitmix64: small, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// A monotonic clock: an arbitrary origin and a rate slightly off real time.
#[derive(Clone, Copy)]
struct Clock {
    origin_ms: u64,
    drift_ppm: i64,
}

impl Clock {
    fn random(rng: &mut Rng) -> Clock {
        Clock {
            origin_ms: rng.below(1 << 40),
            drift_ppm: rng.below(2 * MAX_DRIFT_PPM as u64 + 1) as i64 - MAX_DRIFT_PPM,
        }
    }
    fn read(&self, real_ms: u64) -> u64 {
        let drift = real_ms as i64 * self.drift_ppm / 1_000_000;
        self.origin_ms + (real_ms as i64 + drift) as u64
    }
}

struct DcSim {
    id: DcId,
    clock: Clock,
    held: Option<HeldLease>,
    /// Counts this DC's leader changes: a DC leader only takes grants answering renewals it
    /// sent itself (an older request's answer may predate a freeze its predecessor reported).
    leadership: u64,
    next_renewal_ms: u64,
    partitioned_until_ms: u64,
    /// The position of this DC's copy of each shard.
    copies: BTreeMap<ShardId, Position>,
    /// Shards whose copy this DC sealed for a takeover (by takeover number): the copy does
    /// not move until the shard changes epoch or the order is withdrawn.
    sealed: BTreeMap<ShardId, u64>,
}

impl DcSim {
    /// Takes a grant: seals the copies it orders taken over, unseals those whose order is
    /// gone while the shard kept its epoch (the old owner came back).
    fn take_grant(&mut self, grant: coopr_placement::LeaseGrant, started_before_send_ms: u64) {
        match &mut self.held {
            Some(held) => {
                held.update(grant, started_before_send_ms);
            }
            None => self.held = Some(HeldLease::new(grant, started_before_send_ms)),
        }
        let Some(held) = &self.held else { return };
        for (shard, order) in &held.grant.taking_over {
            self.sealed.entry(*shard).or_insert(order.takeover);
            if let Some(number) = self.sealed.get_mut(shard) {
                *number = order.takeover;
            }
        }
        let grant = &held.grant;
        self.sealed.retain(|shard, _| {
            grant.taking_over.contains_key(shard) || grant.owned.contains_key(shard)
        });
    }
}

struct Leader {
    clock: Clock,
    since_ms: u64,
    /// Distinguishes leaders: a request addressed to a deposed leader is dropped.
    term: u64,
}

enum Message {
    Renew {
        deliver_at: u64,
        dc: usize,
        term: u64,
        leadership: u64,
        started_before_send_ms: u64,
        command: Command,
    },
    Granted {
        deliver_at: u64,
        dc: usize,
        leadership: u64,
        started_before_send_ms: u64,
        reply: Reply,
    },
}

impl Message {
    fn deliver_at(&self) -> u64 {
        match self {
            Message::Renew { deliver_at, .. } | Message::Granted { deliver_at, .. } => *deliver_at,
        }
    }
}

#[derive(Default, Debug)]
struct Stats {
    writes: u64,
    takeovers: u64,
    handovers: u64,
    handover_timeouts: u64,
    leader_changes: u64,
}

fn delay(rng: &mut Rng) -> u64 {
    if rng.chance(20_000) {
        500 + rng.below(2_500) // occasionally very late: reordering
    } else {
        1 + rng.below(200)
    }
}

fn run(seed: u64) -> Stats {
    let mut rng = Rng(seed);
    let mut stats = Stats::default();
    let names = ["a", "b", "c"];
    let mut dcs: Vec<DcSim> = names
        .iter()
        .map(|name| DcSim {
            id: DcId::new(*name),
            clock: Clock::random(&mut rng),
            held: None,
            leadership: 0,
            next_renewal_ms: 0,
            partitioned_until_ms: 0,
            copies: BTreeMap::new(),
            sealed: BTreeMap::new(),
        })
        .collect();
    let mut state: Option<PlacementState> = None;
    let mut members: Vec<Dc> = names.iter().map(|name| Dc::voter(name)).collect();
    members.push(Dc::witness("w"));
    apply_command(
        &mut state,
        &Command::Bootstrap {
            dcs: members,
            shard_count: SHARD_COUNT,
            lease_ms: LEASE_MS,
            max_clock_offset_ms: MAX_CLOCK_OFFSET_MS,
        },
    )
    .expect("bootstrap");
    let mut state = state.expect("bootstrapped");
    let shards: Vec<ShardId> = state.shards().keys().copied().collect();
    let mut leader = {
        let clock = Clock::random(&mut rng);
        Leader {
            clock,
            since_ms: clock.read(0),
            term: 1,
        }
    };
    let mut epochs: BTreeMap<ShardId, Epoch> = shards.iter().map(|s| (*s, Epoch(1))).collect();
    let mut network: Vec<Message> = Vec::new();

    let mut real_ms = 0;
    while real_ms < RUN_MS {
        // Faults.
        if rng.chance(300) {
            let clock = Clock::random(&mut rng);
            leader = Leader {
                clock,
                since_ms: clock.read(real_ms),
                term: leader.term + 1,
            };
            stats.leader_changes += 1;
        }
        for dc in &mut dcs {
            if rng.chance(400) {
                dc.partitioned_until_ms = real_ms + 500 + rng.below(15_000);
            }
            if rng.chance(100) {
                // A new DC leader: it starts without a grant.
                dc.held = None;
                dc.leadership += 1;
            }
        }

        // DC leaders renew every lease/3 of their own clock.
        for (index, dc) in dcs.iter_mut().enumerate() {
            let now = dc.clock.read(real_ms);
            if now < dc.next_renewal_ms {
                continue;
            }
            dc.next_renewal_ms = now + LEASE_MS / 3;
            let frozen = dc
                .held
                .as_ref()
                .map(|held| {
                    held.grant
                        .owned
                        .iter()
                        .filter_map(|(shard, owned)| match owned {
                            OwnedShard::Frozen { handover, .. } => Some((
                                *shard,
                                FrozenReport {
                                    handover: *handover,
                                    last: dc.copies.get(shard).copied().unwrap_or_default(),
                                },
                            )),
                            OwnedShard::Writable { .. } => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let sealed = dc
                .sealed
                .iter()
                .map(|(shard, takeover)| {
                    let at = dc.copies.get(shard).copied().unwrap_or_default();
                    (
                        *shard,
                        SealReport {
                            takeover: *takeover,
                            at,
                        },
                    )
                })
                .collect();
            let dropped = real_ms < dc.partitioned_until_ms || rng.chance(50_000);
            if !dropped {
                network.push(Message::Renew {
                    deliver_at: real_ms + delay(&mut rng),
                    dc: index,
                    term: leader.term,
                    leadership: dc.leadership,
                    started_before_send_ms: now,
                    command: Command::RenewLease {
                        dc: dc.id.clone(),
                        now_ms: 0, // set by the leader on arrival
                        watermarks: dc.copies.clone(),
                        frozen,
                        sealed,
                    },
                });
            }
        }

        // Deliveries due now.
        let (due, later): (Vec<Message>, Vec<Message>) = network
            .into_iter()
            .partition(|message| message.deliver_at() <= real_ms);
        network = later;
        for message in due {
            match message {
                Message::Renew {
                    dc,
                    term,
                    leadership,
                    started_before_send_ms,
                    mut command,
                    ..
                } => {
                    if term != leader.term {
                        continue; // sent to a deposed leader
                    }
                    if let Command::RenewLease { now_ms, .. } = &mut command {
                        *now_ms = leader.clock.read(real_ms);
                    }
                    let reply = state.apply(&command).expect("renewals are accepted");
                    if real_ms >= dcs[dc].partitioned_until_ms && !rng.chance(50_000) {
                        network.push(Message::Granted {
                            deliver_at: real_ms + delay(&mut rng),
                            dc,
                            leadership,
                            started_before_send_ms,
                            reply,
                        });
                    }
                }
                Message::Granted {
                    dc,
                    leadership,
                    started_before_send_ms,
                    reply,
                    ..
                } => {
                    let Reply::LeaseGranted { grant } = reply else {
                        panic!("renewals answer grants")
                    };
                    let dc = &mut dcs[dc];
                    if real_ms < dc.partitioned_until_ms || leadership != dc.leadership {
                        continue;
                    }
                    dc.take_grant(grant, started_before_send_ms);
                }
            }
        }

        // The placement leader's decisions.
        let now = leader.clock.read(real_ms);
        let mut commands = Vec::new();
        for dead in dead_dcs(&state, now, leader.since_ms) {
            commands.extend(plan_failover(&state, &dead, now, leader.since_ms));
        }
        commands.extend(plan_takeovers(&state, now, leader.since_ms));
        commands.extend(plan_handover_completions(&state, now, leader.since_ms));
        commands.extend(plan_maintenance(&state, now, leader.since_ms));
        if rng.chance(3_000) {
            let dc = DcId::new(names[rng.below(names.len() as u64) as usize]);
            commands.push(if rng.chance(500_000) {
                Command::DrainDc { dc }
            } else {
                Command::UndrainDc { dc }
            });
        }
        commands.extend(plan_handover_timeouts(
            &state,
            HANDOVER_TIMEOUT_MS,
            now,
            leader.since_ms,
        ));
        if rng.chance(2_000) {
            let shard = shards[rng.below(shards.len() as u64) as usize];
            let placement = &state.shards()[&shard];
            if placement.status == ShardStatus::Active && !placement.replicas.is_empty() {
                let to =
                    placement.replicas[rng.below(placement.replicas.len() as u64) as usize].clone();
                commands.push(Command::StartHandover {
                    shard,
                    to,
                    now_ms: now,
                    leader_since_ms: leader.since_ms,
                });
            }
        }
        if rng.chance(300) {
            let shard = shards[rng.below(shards.len() as u64) as usize];
            commands.push(Command::AbortHandover {
                shard,
                handover: None,
            });
        }
        for command in commands {
            if let Command::Takeover {
                shard,
                to,
                takeover_point,
                ..
            } = &command
            {
                // The takeover point is exact: the new owner's copy ends there (it sealed it).
                let accepted = state.clone().apply(&command).is_ok();
                if accepted {
                    let candidate = dcs.iter().find(|dc| dc.id == *to).expect("a DC");
                    let copy = candidate.copies.get(shard).copied().unwrap_or_default();
                    assert_eq!(
                        copy, *takeover_point,
                        "seed {seed}: takeover of {shard} at {takeover_point} but {to}'s copy is at {copy}"
                    );
                }
            }
            if let Ok(Reply::Shard { .. }) = state.apply(&command) {
                match command {
                    Command::Takeover { .. } => stats.takeovers += 1,
                    Command::CompleteHandover { .. } => stats.handovers += 1,
                    Command::AbortHandover {
                        handover: Some(_), ..
                    } => stats.handover_timeouts += 1,
                    _ => {}
                }
            }
        }

        // Writes, and the invariant: whoever may acknowledge is the current owner at the
        // current epoch, so no two DCs may at once.
        for shard in &shards {
            let placement = &state.shards()[shard];
            assert!(
                placement.epoch >= epochs[shard],
                "seed {seed}: epoch went back"
            );
            epochs.insert(*shard, placement.epoch);
            let mut writers = Vec::new();
            for dc in dcs.iter_mut() {
                let Some(held) = &dc.held else { continue };
                let Some(owned) = held.grant.owned.get(shard) else {
                    continue;
                };
                let now = dc.clock.read(real_ms);
                if may_acknowledge(held, *shard, owned.epoch(), now).is_ok() {
                    writers.push(dc.id.clone());
                    assert_eq!(
                        (&dc.id, owned.epoch()),
                        (&placement.owner, placement.epoch),
                        "seed {seed} at {real_ms} ms: {} may write shard {shard} at epoch {} but \
                         the map says {} at {}",
                        dc.id,
                        owned.epoch(),
                        placement.owner,
                        placement.epoch
                    );
                    if rng.chance(300_000) {
                        let copy = dc.copies.entry(*shard).or_default();
                        *copy = Position {
                            epoch: owned.epoch(),
                            seq: Seq(copy.seq.0 + 1),
                        };
                        stats.writes += 1;
                    }
                }
            }
            assert!(writers.len() <= 1, "seed {seed}: writers {writers:?}");
        }

        // Replication: a connected replica catches up with the owner (a prefix copy).
        for shard in &shards {
            let placement = &state.shards()[shard];
            let owner = dcs.iter().position(|dc| dc.id == placement.owner);
            let Some(owner) = owner else { continue };
            if real_ms < dcs[owner].partitioned_until_ms {
                continue;
            }
            let owner_copy = dcs[owner].copies.get(shard).copied().unwrap_or_default();
            for dc in dcs.iter_mut() {
                if dc.id != placement.owner
                    && real_ms >= dc.partitioned_until_ms
                    && !dc.sealed.contains_key(shard)
                    && rng.chance(100_000)
                {
                    dc.copies.insert(*shard, owner_copy);
                }
            }
        }

        real_ms += TICK_MS;
    }
    stats
}

/// Single writer (DESIGN.md §7.1): for every shard, whenever a DC leader's `may_acknowledge`
/// succeeds (valid lease on its own clock, shard listed writable at that epoch), that DC is the
/// owner at the current epoch in the placement state, so at most one DC may write; epochs only
/// increase. Checked every 10 ms of simulated time across seeded runs with drifting clocks,
/// lossy reordering delivery, partitions, placement and DC leader changes, failovers and
/// handovers (some aborted by the placement leader when they run out of time), DCs drained and
/// undrained (the leader's maintenance handovers). The runs must
/// exercise takeovers, handovers and handover timeouts (so the check is not vacuous).
#[test]
fn at_most_one_dc_may_acknowledge_per_shard() {
    let seeds: Vec<u64> = match std::env::var("SEED") {
        Ok(seed) => vec![seed.parse().expect("SEED is a number")],
        Err(_) => (0..12).collect(),
    };
    let mut total = Stats::default();
    for seed in seeds.iter().copied() {
        let stats = run(seed);
        total.writes += stats.writes;
        total.takeovers += stats.takeovers;
        total.handovers += stats.handovers;
        total.handover_timeouts += stats.handover_timeouts;
        total.leader_changes += stats.leader_changes;
    }
    println!("{total:?}");
    if seeds.len() > 1 {
        assert!(total.writes > 1_000, "{total:?}");
        assert!(total.takeovers > 10, "{total:?}");
        assert!(total.handovers > 5, "{total:?}");
        assert!(total.handover_timeouts > 0, "{total:?}");
        assert!(total.leader_changes > 5, "{total:?}");
    }
}
