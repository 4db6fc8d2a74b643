//! The placement leader's decisions: which DCs are dead, who takes over their shards, which
//! handovers can complete. Pure functions of the state and the leader's clock; they return
//! commands to propose, and the state machine re-checks every rule when it applies them.
//!
//! ```text
//!  grantor clock (placement leader, monotonic)
//!  ──────┬───────────────┬──────────────────────────┬─────────────┬──────────▶
//!   leader_since    granted_at              granted_at + lease   + max_clock_offset
//!        │               │◀──── Valid ─────────────▶│◀─ InDoubt ─▶│ Expired ▶
//!        │◀──────── InDoubt for a lease it did not grant ─────────▶│
//!        └── wait: lease + max_clock_offset from its own election ──┘
//! ```

use std::collections::BTreeMap;

use coopr_types::ShardId;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::ids::{DcId, Position};
use crate::state::{takeover_timed_out, Lease, Maintenance, PlacementState, ShardStatus};

/// How many handovers planned maintenance runs at once per DC: a drained DC hands over at most
/// this many shards at a time, and a DC failing back receives at most this many at a time.
pub const MOVES_PER_DC: usize = 2;

/// How the placement leader sees a DC's lease at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantorView {
    /// Granted by this leader and not yet at its end: the DC is healthy.
    Valid { until_ms: u64 },
    /// Past its end but within the clock-offset margin, or granted by an earlier leader (whose
    /// clock this leader cannot read) while the new-leader wait runs: not dead yet.
    InDoubt { until_ms: u64 },
    /// The holder has certainly stopped writing: its shards may be taken over.
    Expired,
}

/// The lease rules at the grantor (DESIGN.md §6).
///
/// `granted_at_ms` of a lease is a reading of the monotonic clock of whichever leader proposed
/// the renewal. This leader's own readings are at or after `leader_since_ms` and at or before
/// `now_ms`; anything else came from a predecessor and means nothing on this clock. A
/// predecessor's grants were all committed before this leader's election, so after
/// `lease_ms + max_clock_offset_ms` of this leader's clock they have expired, whatever their
/// numbers say. Mistaking a predecessor's reading that happens to fall in
/// `[leader_since_ms, now_ms]` for an own one only declares the DC dead later (safe).
pub fn grantor_view(
    lease: Option<&Lease>,
    lease_ms: u64,
    max_clock_offset_ms: u64,
    now_ms: u64,
    leader_since_ms: u64,
) -> GrantorView {
    match lease {
        Some(lease) if (leader_since_ms..=now_ms).contains(&lease.granted_at_ms) => {
            let expires_at_ms = lease.granted_at_ms.saturating_add(lease.lease_ms);
            let dead_at_ms = expires_at_ms.saturating_add(max_clock_offset_ms);
            if now_ms < expires_at_ms {
                GrantorView::Valid {
                    until_ms: dead_at_ms,
                }
            } else if now_ms < dead_at_ms {
                GrantorView::InDoubt {
                    until_ms: dead_at_ms,
                }
            } else {
                GrantorView::Expired
            }
        }
        _ => {
            let wait_over_at_ms = leader_since_ms
                .saturating_add(lease_ms)
                .saturating_add(max_clock_offset_ms);
            if now_ms < wait_over_at_ms {
                GrantorView::InDoubt {
                    until_ms: wait_over_at_ms,
                }
            } else {
                GrantorView::Expired
            }
        }
    }
}

/// The view of `dc`'s lease in `state` for the leader elected at `leader_since_ms`.
pub fn lease_view(
    state: &PlacementState,
    dc: &DcId,
    now_ms: u64,
    leader_since_ms: u64,
) -> GrantorView {
    grantor_view(
        state.lease(dc),
        state.lease_ms(),
        state.max_clock_offset_ms(),
        now_ms,
        leader_since_ms,
    )
}

/// The voter DCs whose lease has expired at the grantor (plus the clock offset), in bootstrap
/// order. Empty until this leader has waited a full lease plus the offset since its election.
pub fn dead_dcs(state: &PlacementState, now_ms: u64, leader_since_ms: u64) -> Vec<DcId> {
    state
        .voters()
        .filter(|dc| lease_view(state, dc, now_ms, leader_since_ms) == GrantorView::Expired)
        .cloned()
        .collect()
}

/// Failover step 1 for every shard `dead_dc` owns: a [`Command::StartTakeover`] naming the
/// healthy replica DC (not drained) with the highest watermark for it (ties: the DC that owns or is taking
/// over the fewest shards, so a dead DC's shards spread over the survivors; then the smallest
/// id). Only watermarks on the shard's current history count, so an old owner still holding a
/// lost tail is never preferred. A shard whose takeover is under way is left alone until its
/// candidate runs out of time; then another candidate is named (the same one if it is the
/// only healthy replica). A shard with no healthy replica gets no command (it waits).
/// Empty if `dead_dc` is not dead.
///
/// The takeover point is not decided here: the candidate seals its copy and reports where it
/// ends ([`plan_takeovers`]).
pub fn plan_failover(
    state: &PlacementState,
    dead_dc: &DcId,
    now_ms: u64,
    leader_since_ms: u64,
) -> Vec<Command> {
    if lease_view(state, dead_dc, now_ms, leader_since_ms) != GrantorView::Expired {
        return Vec::new();
    }
    let mut load: BTreeMap<&DcId, usize> = BTreeMap::new();
    for placement in state.shards().values() {
        let holder = match &placement.status {
            ShardStatus::TakingOver { to, .. } => to,
            _ => &placement.owner,
        };
        *load.entry(holder).or_default() += 1;
    }
    let mut commands = Vec::new();
    for (shard, placement) in state.shards() {
        if placement.owner != *dead_dc {
            continue;
        }
        let replaced = match &placement.status {
            ShardStatus::TakingOver { to, started_ms, .. } => {
                if !takeover_timed_out(
                    *started_ms,
                    state.takeover_timeout_ms(),
                    now_ms,
                    leader_since_ms,
                ) {
                    continue;
                }
                Some(to)
            }
            _ => None,
        };
        // A drained DC takes nothing over (the state machine refuses it too).
        let healthy: Vec<(&DcId, Position)> = placement
            .replicas
            .iter()
            .filter(|dc| !state.is_draining(dc))
            .filter(|dc| {
                matches!(
                    lease_view(state, dc, now_ms, leader_since_ms),
                    GrantorView::Valid { .. }
                )
            })
            .map(|dc| (dc, watermark(state, dc, *shard)))
            .filter(|(_, watermark)| placement.is_on_history(*watermark))
            .collect();
        // A candidate that did not report in time is passed over while another one can serve.
        let others: Vec<(&DcId, Position)> = healthy
            .iter()
            .filter(|(dc, _)| Some(*dc) != replaced)
            .cloned()
            .collect();
        let pool = if others.is_empty() { healthy } else { others };
        let best = pool.into_iter().max_by(|(a, a_mark), (b, b_mark)| {
            let a_load = load.get(a).copied().unwrap_or(0);
            let b_load = load.get(b).copied().unwrap_or(0);
            a_mark
                .cmp(b_mark)
                .then_with(|| b_load.cmp(&a_load))
                .then_with(|| b.cmp(a))
        });
        let Some((to, _)) = best else { continue };
        *load.entry(to).or_default() += 1;
        commands.push(Command::StartTakeover {
            shard: *shard,
            from: dead_dc.clone(),
            to: to.clone(),
            now_ms,
            leader_since_ms,
        });
    }
    commands
}

/// Failover step 2: a [`Command::Takeover`] for every shard whose candidate reported its
/// sealed copy while the old owner's lease is still expired, with the reported position as
/// the exact takeover point.
pub fn plan_takeovers(state: &PlacementState, now_ms: u64, leader_since_ms: u64) -> Vec<Command> {
    state
        .shards()
        .iter()
        .filter_map(|(shard, placement)| match &placement.status {
            ShardStatus::TakingOver {
                from,
                to,
                sealed_at: Some(point),
                ..
            } if lease_view(state, from, now_ms, leader_since_ms) == GrantorView::Expired => {
                Some(Command::Takeover {
                    shard: *shard,
                    from: from.clone(),
                    to: to.clone(),
                    takeover_point: *point,
                    now_ms,
                    leader_since_ms,
                })
            }
            _ => None,
        })
        .collect()
}

/// Completes every handover whose (healthy) target, and every other replica DC, reported a
/// watermark equal to the owner's final position: after the switch the new owner streams
/// only its own epoch, which continues exactly from there.
pub fn plan_handover_completions(
    state: &PlacementState,
    now_ms: u64,
    leader_since_ms: u64,
) -> Vec<Command> {
    state
        .shards()
        .iter()
        .filter_map(|(shard, placement)| match &placement.status {
            ShardStatus::HandingOver { to, until, .. }
                if watermark(state, to, *shard) == *until
                    && placement
                        .replicas
                        .iter()
                        .all(|replica| watermark(state, replica, *shard) == *until)
                    && matches!(
                        lease_view(state, to, now_ms, leader_since_ms),
                        GrantorView::Valid { .. }
                    ) =>
            {
                Some(Command::CompleteHandover {
                    shard: *shard,
                    target_watermark: *until,
                })
            }
            _ => None,
        })
        .collect()
}

/// Aborts every handover that has run for `timeout_ms` without completing (on this leader's
/// clock; one started by a predecessor counts from this leader's election): the owner writes
/// again after its next renewal, nothing is lost, and whoever asked may try again. What blocks
/// a handover (a replica DC that is down or cannot continue its stream, an operation that never
/// finishes at the owner) is outside the placement group's control, so the bound is a time. The
/// abort names the handover, so it cannot hit a newer one of the same shard.
pub fn plan_handover_timeouts(
    state: &PlacementState,
    timeout_ms: u64,
    now_ms: u64,
    leader_since_ms: u64,
) -> Vec<Command> {
    state
        .shards()
        .iter()
        .filter_map(|(shard, placement)| match &placement.status {
            ShardStatus::Draining {
                handover,
                started_ms,
                ..
            }
            | ShardStatus::HandingOver {
                handover,
                started_ms,
                ..
            } if takeover_timed_out(*started_ms, timeout_ms, now_ms, leader_since_ms) => {
                Some(Command::AbortHandover {
                    shard: *shard,
                    handover: Some(*handover),
                })
            }
            _ => None,
        })
        .collect()
}

/// One shard that planned maintenance moves (or would move): from its owner to `to`, unless
/// something blocks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub shard: coopr_types::ShardId,
    pub from: DcId,
    /// Where it goes (`None`: nowhere yet, see `blocked`).
    pub to: Option<DcId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
}

/// Why a planned move cannot start now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Blocked {
    /// The global shard is not handed over (it stays where it is).
    GlobalShard,
    /// A handover of the shard (to `to`) runs; the move waits for it to end.
    HandoverInProgress { to: DcId },
    /// A failover of the shard (to `to`) runs.
    TakeoverInProgress { to: DcId },
    /// No replica DC can take the shard: each one is down or drained.
    NoTarget {
        down: Vec<DcId>,
        draining: Vec<DcId>,
    },
    /// The target holds no lease at the placement leader (it is down or cut off).
    TargetDown { dc: DcId },
    /// The target is drained.
    TargetDraining { dc: DcId },
    /// The target holds no copy of the shard.
    NotReplica { dc: DcId },
    /// The move is ready, but `MOVES_PER_DC` handovers of this maintenance already run.
    Waiting,
}

fn lease_valid(state: &PlacementState, dc: &DcId, now_ms: u64, leader_since_ms: u64) -> bool {
    matches!(
        lease_view(state, dc, now_ms, leader_since_ms),
        GrantorView::Valid { .. }
    )
}

/// How many shards each DC owns or is receiving (a handover or takeover target counts as the
/// holder): drains spread shards over the least loaded DCs.
fn holdings(state: &PlacementState) -> BTreeMap<DcId, usize> {
    let mut load = BTreeMap::new();
    for placement in state.shards().values() {
        let holder = match &placement.status {
            ShardStatus::Active => &placement.owner,
            ShardStatus::Draining { to, .. }
            | ShardStatus::HandingOver { to, .. }
            | ShardStatus::TakingOver { to, .. } => to,
        };
        *load.entry(holder.clone()).or_default() += 1;
    }
    load
}

/// What draining `dc` moves: every shard it owns, each to the healthy, undrained replica DC
/// with the highest watermark on the shard's history (ties: the least loaded, counting the
/// targets already picked here, then the smallest name), or why it cannot move now. Ignores the
/// [`MOVES_PER_DC`] limit (see [`plan_maintenance`]). This is what `--dry-run` shows.
pub fn drain_plan(
    state: &PlacementState,
    dc: &DcId,
    now_ms: u64,
    leader_since_ms: u64,
) -> Vec<PlannedMove> {
    let mut load = holdings(state);
    let mut moves = Vec::new();
    for (shard, placement) in state.shards() {
        if placement.owner != *dc {
            continue;
        }
        let blocked = |blocked| PlannedMove {
            shard: *shard,
            from: dc.clone(),
            to: None,
            blocked: Some(blocked),
        };
        if shard.is_global() {
            moves.push(blocked(Blocked::GlobalShard));
            continue;
        }
        match &placement.status {
            ShardStatus::Active => {}
            ShardStatus::Draining { to, .. } | ShardStatus::HandingOver { to, .. } => {
                moves.push(PlannedMove {
                    to: Some(to.clone()),
                    ..blocked(Blocked::HandoverInProgress { to: to.clone() })
                });
                continue;
            }
            ShardStatus::TakingOver { to, .. } => {
                moves.push(blocked(Blocked::TakeoverInProgress { to: to.clone() }));
                continue;
            }
        }
        let (mut down, mut draining) = (Vec::new(), Vec::new());
        let mut candidates = Vec::new();
        for replica in &placement.replicas {
            if state.is_draining(replica) {
                draining.push(replica.clone());
            } else if !lease_valid(state, replica, now_ms, leader_since_ms) {
                down.push(replica.clone());
            } else {
                let mark = watermark(state, replica, *shard);
                let mark = placement.is_on_history(mark).then_some(mark);
                candidates.push((replica, mark));
            }
        }
        let best = candidates.into_iter().max_by(|(a, a_mark), (b, b_mark)| {
            let a_load = load.get(*a).copied().unwrap_or(0);
            let b_load = load.get(*b).copied().unwrap_or(0);
            a_mark
                .cmp(b_mark)
                .then_with(|| b_load.cmp(&a_load))
                .then_with(|| b.cmp(a))
        });
        match best {
            Some((to, _)) => {
                *load.entry(to.clone()).or_default() += 1;
                moves.push(PlannedMove {
                    shard: *shard,
                    from: dc.clone(),
                    to: Some(to.clone()),
                    blocked: None,
                });
            }
            None => moves.push(blocked(Blocked::NoTarget { down, draining })),
        }
    }
    moves
}

/// What failing `dc` back moves: every cluster shard whose home is `dc` and that another DC
/// owns, back to `dc`, or why it cannot move now. Ignores the [`MOVES_PER_DC`] limit.
pub fn failback_plan(
    state: &PlacementState,
    dc: &DcId,
    now_ms: u64,
    leader_since_ms: u64,
) -> Vec<PlannedMove> {
    let target_up = lease_valid(state, dc, now_ms, leader_since_ms);
    state
        .shards()
        .iter()
        .filter(|(shard, placement)| {
            !shard.is_global() && state.home(**shard) == Some(dc) && placement.owner != *dc
        })
        .map(|(shard, placement)| {
            let blocked = match &placement.status {
                ShardStatus::Draining { to, .. } | ShardStatus::HandingOver { to, .. } => {
                    Some(Blocked::HandoverInProgress { to: to.clone() })
                }
                ShardStatus::TakingOver { to, .. } => {
                    Some(Blocked::TakeoverInProgress { to: to.clone() })
                }
                ShardStatus::Active if !placement.replicas.contains(dc) => {
                    Some(Blocked::NotReplica { dc: dc.clone() })
                }
                ShardStatus::Active if state.is_draining(dc) => {
                    Some(Blocked::TargetDraining { dc: dc.clone() })
                }
                ShardStatus::Active if !target_up => Some(Blocked::TargetDown { dc: dc.clone() }),
                ShardStatus::Active => None,
            };
            PlannedMove {
                shard: *shard,
                from: placement.owner.clone(),
                to: Some(dc.clone()),
                blocked,
            }
        })
        .collect()
}

/// The placement leader's maintenance work now: for each drained DC, handovers of its shards
/// (as [`drain_plan`] picks them) while fewer than [`MOVES_PER_DC`] of them run; for each DC
/// failing back, handovers of its home shards to it while fewer than [`MOVES_PER_DC`] run to
/// it, and [`Command::EndFailback`] once nothing is left that could move (every home shard is
/// back, or stays where it is because the DC holds no copy of it).
pub fn plan_maintenance(state: &PlacementState, now_ms: u64, leader_since_ms: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    for (dc, maintenance) in state.maintenance() {
        let (moves, running) = match maintenance {
            Maintenance::Draining => {
                let running = state
                    .shards()
                    .values()
                    .filter(|p| p.owner == *dc)
                    .filter(|p| {
                        matches!(
                            p.status,
                            ShardStatus::Draining { .. } | ShardStatus::HandingOver { .. }
                        )
                    })
                    .count();
                (drain_plan(state, dc, now_ms, leader_since_ms), running)
            }
            Maintenance::FailingBack => {
                let moves = failback_plan(state, dc, now_ms, leader_since_ms);
                let pending = moves
                    .iter()
                    .any(|m| !matches!(m.blocked, Some(Blocked::NotReplica { .. })));
                if !pending {
                    commands.push(Command::EndFailback { dc: dc.clone() });
                    continue;
                }
                let running = state
                    .shards()
                    .values()
                    .filter(|p| match &p.status {
                        ShardStatus::Draining { to, .. } | ShardStatus::HandingOver { to, .. } => {
                            to == dc
                        }
                        _ => false,
                    })
                    .count();
                (moves, running)
            }
        };
        let budget = MOVES_PER_DC.saturating_sub(running);
        commands.extend(
            moves
                .into_iter()
                .filter(|m| m.blocked.is_none())
                .filter_map(|m| {
                    Some(Command::StartHandover {
                        shard: m.shard,
                        to: m.to?,
                        now_ms,
                        leader_since_ms,
                    })
                })
                .take(budget),
        );
    }
    commands
}

/// The watermark `dc` last reported for `shard` (none: it has nothing yet).
pub fn watermark(state: &PlacementState, dc: &DcId, shard: ShardId) -> Position {
    state
        .lease(dc)
        .and_then(|lease| lease.watermarks.get(&shard))
        .copied()
        .unwrap_or(Position::ZERO)
}
