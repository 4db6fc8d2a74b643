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

use crate::command::Command;
use crate::ids::{DcId, Position};
use crate::state::{takeover_timed_out, Lease, PlacementState, ShardStatus};

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
/// healthy replica DC with the highest watermark for it (ties: the DC that owns or is taking
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
        let healthy: Vec<(&DcId, Position)> = placement
            .replicas
            .iter()
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

/// The watermark `dc` last reported for `shard` (none: it has nothing yet).
pub fn watermark(state: &PlacementState, dc: &DcId, shard: ShardId) -> Position {
    state
        .lease(dc)
        .and_then(|lease| lease.watermarks.get(&shard))
        .copied()
        .unwrap_or(Position::ZERO)
}
