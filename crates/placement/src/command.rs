//! The commands of the placement group's log, their replies, and why a command is rejected.
//!
//! Commands are proposed by the placement leader (its decisions come from [`crate::decide`]) or
//! on behalf of a DC leader (lease renewals) and an admin (handover, replicas). Every field the
//! outcome depends on, time included, is inside the command, so applying the same log gives the
//! same state on every placement node. A rejected command changes nothing.

use std::collections::BTreeMap;

use coopr_types::ShardId;
use serde::{Deserialize, Serialize};

use crate::holder::LeaseGrant;
use crate::ids::{DcId, Epoch, Position};
use crate::state::{Dc, FrozenReport, Maintenance, SealReport, ShardPlacement, ShardStatus};

/// A command of the placement log. Times are the proposing placement leader's monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Creates the initial placement: shards `0..shard_count` round-robin over the data DCs (in
    /// the order given), the global shard on the first data DC, every other data DC a replica,
    /// epoch 1. Accepted once.
    Bootstrap {
        dcs: Vec<Dc>,
        shard_count: u32,
        lease_ms: u64,
        max_clock_offset_ms: u64,
    },
    /// A DC leader renews its DC's lease and reports the watermark of every shard copy it holds.
    /// `frozen` lists owned shards it has stopped writing because a handover froze them (the
    /// grant said [`crate::OwnedShard::Frozen`]), with the last position it wrote. Answered
    /// with a [`LeaseGrant`].
    RenewLease {
        dc: DcId,
        now_ms: u64,
        #[serde(with = "crate::ids::numeric_keys")]
        watermarks: BTreeMap<ShardId, Position>,
        #[serde(default, with = "crate::ids::numeric_keys")]
        frozen: BTreeMap<ShardId, FrozenReport>,
        /// Shards this DC was asked to take over (its grant listed a
        /// [`crate::TakeoverOrder`]) and whose old epoch it has sealed: it applies nothing more
        /// of the old owner's stream, so its copy ends exactly at the reported position.
        #[serde(default, with = "crate::ids::numeric_keys")]
        sealed: BTreeMap<ShardId, SealReport>,
    },
    /// Failover, step 1: `from`'s lease has expired at the grantor, so `to` (a healthy replica)
    /// is asked to take `shard` over: its next grant carries a [`crate::TakeoverOrder`], it
    /// stops applying the old epoch (after pulling what it still can for a bounded time) and
    /// reports the exact position its copy ends at. Also replaces a candidate that did not
    /// report within [`PlacementState::takeover_timeout_ms`].
    StartTakeover {
        shard: ShardId,
        from: DcId,
        to: DcId,
        now_ms: u64,
        leader_since_ms: u64,
    },
    /// Failover, step 2: `to` becomes the owner of `shard` (owned by `from`, whose lease has
    /// expired at the grantor) in the next epoch, starting after `takeover_point`: the position
    /// `to` reported its sealed copy ends at (nothing else is accepted, so the new epoch starts
    /// exactly where the new owner's copy ends). `leader_since_ms` is when the proposing leader
    /// was elected (same clock as `now_ms`): the state machine re-checks the lease rules with
    /// it, so a stale or hasty proposal is rejected.
    Takeover {
        shard: ShardId,
        from: DcId,
        to: DcId,
        takeover_point: Position,
        now_ms: u64,
        leader_since_ms: u64,
    },
    /// Graceful handover, step 1: the owner is told (in its next grant) to stop writing `shard`.
    /// `now_ms` and `leader_since_ms` are the proposing leader's clock and election (an admin's
    /// command is stamped by the leader that proposes it; older entries have 0): the start time
    /// bounds the handover ([`crate::plan_handover_timeouts`]), and a target whose lease has
    /// certainly expired is refused (the handover could only time out).
    StartHandover {
        shard: ShardId,
        to: DcId,
        #[serde(default)]
        now_ms: u64,
        #[serde(default)]
        leader_since_ms: u64,
    },
    /// Graceful handover, step 2: the target's watermark equals the owner's final position, so
    /// the target becomes the owner in the next epoch. RPO 0.
    CompleteHandover {
        shard: ShardId,
        target_watermark: Position,
    },
    /// Gives up a handover; the owner may write again after its next renewal. With `handover`,
    /// only that handover (the placement leader's abort of a handover that ran out of time must
    /// not hit a newer one started meanwhile).
    AbortHandover {
        shard: ShardId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handover: Option<u64>,
    },
    /// Replaces the replica DCs of a shard.
    SetReplicas { shard: ShardId, replicas: Vec<DcId> },
    /// Planned maintenance of `dc` (`coopr admin drain`): it becomes no target of handovers or
    /// takeovers, and the placement leader hands its shards to other DCs a few at a time
    /// ([`crate::plan_maintenance`]). Repeating it changes nothing.
    DrainDc { dc: DcId },
    /// The end of `dc`'s maintenance (`coopr admin undrain`): it may be a target again, and the
    /// placement leader hands its home shards (those of the initial placement) back to it a few
    /// at a time, until none is left to move ([`Command::EndFailback`]).
    UndrainDc { dc: DcId },
    /// Every home shard of `dc` that can move back is back: its failback ends.
    EndFailback { dc: DcId },
}

/// The reply to an accepted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Bootstrapped,
    /// To [`Command::RenewLease`].
    LeaseGranted {
        grant: LeaseGrant,
    },
    /// To every command that changes one shard: its placement afterwards.
    Shard {
        shard: ShardId,
        placement: ShardPlacement,
    },
    /// To the maintenance commands: the DC's maintenance afterwards (`None`: none).
    Maintenance {
        dc: DcId,
        maintenance: Option<Maintenance>,
    },
}

/// What a command's application answers (serialized as the Raft response).
pub type Outcome = Result<Reply, Rejected>;

/// Why a command was rejected. None of these changes the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rejected", rename_all = "snake_case")]
pub enum Rejected {
    #[error("the placement group is not bootstrapped")]
    NotBootstrapped,
    #[error("the placement group is already bootstrapped")]
    AlreadyBootstrapped,
    #[error("invalid bootstrap: {reason}")]
    InvalidBootstrap { reason: String },
    #[error("unknown DC {dc}")]
    UnknownDc { dc: DcId },
    #[error("{dc} is a witness: it holds no lease and no shard")]
    Witness { dc: DcId },
    #[error("unknown shard {shard}")]
    UnknownShard { shard: ShardId },
    #[error("shard {shard} is owned by {owner} at epoch {epoch}, not by {claimed}")]
    NotOwner {
        shard: ShardId,
        owner: DcId,
        epoch: Epoch,
        claimed: DcId,
    },
    #[error("{dc} is already the owner of shard {shard}")]
    AlreadyOwner { shard: ShardId, dc: DcId },
    #[error("{dc} is not a replica of shard {shard}")]
    NotReplica { shard: ShardId, dc: DcId },
    #[error("the lease of {dc} is still valid (or in doubt) at the grantor until {until_ms} ms")]
    LeaseNotExpired { dc: DcId, until_ms: u64 },
    #[error(
        "takeover point {point} of shard {shard} is not on the shard's history at epoch {epoch}"
    )]
    TakeoverPointInvalid {
        shard: ShardId,
        point: Position,
        epoch: Epoch,
    },
    #[error("shard {shard} is busy: {status:?}")]
    HandoverInProgress { shard: ShardId, status: ShardStatus },
    #[error("shard {shard} is being taken over by {to} (takeover {takeover})")]
    TakeoverInProgress {
        shard: ShardId,
        to: DcId,
        takeover: u64,
    },
    #[error("{dc} has no valid lease: it cannot take shard {shard} over")]
    CandidateUnhealthy { shard: ShardId, dc: DcId },
    #[error("shard {shard}: {to} has not reported a sealed copy at {point} for this takeover")]
    NotSealed {
        shard: ShardId,
        to: DcId,
        point: Position,
    },
    #[error("shard {shard} has no handover in progress")]
    NoHandover { shard: ShardId },
    #[error("the owner of shard {shard} has not reported its final position yet")]
    OwnerNotFrozen { shard: ShardId },
    #[error("handover of shard {shard}: target is at {target_watermark}, the owner ended at {owner_final}")]
    NotCaughtUp {
        shard: ShardId,
        target_watermark: Position,
        owner_final: Position,
    },
    #[error("{dc} is draining: it takes over no shard until it is undrained")]
    TargetDraining { dc: DcId },
    #[error("{dc} is not failing back")]
    NoFailback { dc: DcId },
    #[error("invalid replicas for shard {shard}: {reason}")]
    InvalidReplicas { shard: ShardId, reason: String },
    #[error("malformed command: {reason}")]
    Malformed { reason: String },
}
