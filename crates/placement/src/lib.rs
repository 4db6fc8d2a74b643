//! The placement group's logic: the shard map, DC leases, epochs and the ownership history, as
//! a deterministic state machine plus the pure decisions around it. No I/O: time comes in as
//! arguments (monotonic milliseconds), and the placement Raft group (wiring, later) runs
//! [`PlacementMachine`] as its [`coopr_raft::StateMachine`].
//!
//! ```text
//!   DC a leader (holder)          placement leader (grantor)           DC b leader
//!   ──────────────────            ──────────────────────────           ───────────
//!   t0: start timer, send ──RenewLease{a, watermarks}──▶ propose at g0 (its clock),
//!                                 commit; lease(a) = g0
//!       ◀──────────── LeaseGrant{owned: {3: epoch 7}} ───┘
//!   write shard 3 only while
//!   now < t0 + lease - offset     ... a partitioned: no renewals ...
//!   and shard 3 listed at 7
//!           ╳ (stops writing)     now ≥ g0 + lease + offset:
//!                                 a is dead (dead_dcs); plan_failover:
//!                                 Takeover{3, a → b, point = b's
//!                                 watermark (7, 41)}  epoch 7 → 8 ──▶ next grant: {3: epoch 8}
//!                                                                      writes (8, 42), ...
//!   a comes back: its grant no longer lists 3; what it wrote after (7, 41) goes to the
//!   lost-operations report and it re-syncs shard 3 from b as a replica.
//! ```
//!
//! - [`state`]: [`PlacementState`] and [`PlacementState::apply`] (commands in [`command`]).
//! - [`decide`]: the leader's decisions ([`dead_dcs`], [`plan_failover`],
//!   [`plan_handover_completions`], [`plan_handover_timeouts`]), including the new-leader
//!   wait; planned maintenance ([`drain_plan`], [`failback_plan`], [`plan_maintenance`]).
//! - [`holder`]: the DC leader's side: [`holder_lease_valid`], [`may_acknowledge`] (fencing).
//! - [`machine`]: [`PlacementMachine`], the Raft application.
//!
//! Invariants (tested in `tests/`): for every shard at most one DC may acknowledge writes at
//! any moment; epochs only increase; a new leader declares nobody dead before a full lease plus
//! the clock offset; failover picks the most caught-up healthy replica; a handover completes
//! only when the target has everything the owner wrote; a DC whose lease is still valid (or in
//! doubt) cannot lose its shards.

pub mod command;
pub mod decide;
pub mod holder;
pub mod ids;
pub mod machine;
pub mod state;

pub use command::{Command, Outcome, Rejected, Reply};
pub use decide::{
    dead_dcs, drain_plan, failback_plan, grantor_view, lease_view, plan_failover,
    plan_handover_completions, plan_handover_timeouts, plan_maintenance, plan_takeovers, watermark,
    Blocked, GrantorView, PlannedMove, MOVES_PER_DC,
};
pub use holder::{
    holder_lease_valid, may_acknowledge, Fenced, HeldLease, LeaseGrant, OwnedShard, ShardOwner,
    TakeoverOrder,
};
pub use ids::{DcId, Epoch, Position, Seq};
pub use machine::PlacementMachine;
pub use state::{
    apply_command, ChangeReason, Dc, DcRole, FrozenReport, Lease, Maintenance, OwnershipChange,
    PlacementState, SealReport, ShardPlacement, ShardStatus, TAKEOVER_PULL_MS,
};
