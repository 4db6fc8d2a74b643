//! The holder's side of a lease: what a DC leader received, and whether it may write.
//!
//! The holder starts its timer *before* it sends a renewal and believes the lease lasts
//! `lease_ms - max_clock_offset_ms` from then; the grantor starts later (when it proposes the
//! renewal) and waits `lease_ms + max_clock_offset_ms` before declaring the DC dead. So the
//! holder stops writing before anyone else may start.
//!
//! ```text
//!  holder    send ──────────── may write ───────────▶| stop
//!            │◀──────────── lease - offset ─────────▶|
//!  grantor        propose ───────────────── lease ─────────────────▶│◀ offset ▶│ may take over
//! ```

use std::collections::BTreeMap;

use coopr_types::ShardId;
use serde::{Deserialize, Serialize};

use crate::ids::{DcId, Epoch};

/// The answer to a renewal: the shards the DC owns under this lease, with their epochs, and the
/// whole shard map as of the grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub dc: DcId,
    /// Increases with every grant in the placement log's order. Responses may arrive out of
    /// order; a holder keeps the grant with the highest sequence (see [`HeldLease::update`]).
    pub sequence: u64,
    pub lease_ms: u64,
    pub max_clock_offset_ms: u64,
    #[serde(with = "crate::ids::numeric_keys")]
    pub owned: BTreeMap<ShardId, OwnedShard>,
    #[serde(with = "crate::ids::numeric_keys")]
    pub map: BTreeMap<ShardId, ShardOwner>,
    /// Shards the grant's DC is asked to take over from a DC whose lease expired: seal the
    /// copy (apply nothing more of `epoch`) and report where it ends.
    #[serde(default, with = "crate::ids::numeric_keys")]
    pub taking_over: BTreeMap<ShardId, TakeoverOrder>,
}

/// An order to take a shard over (failover step 1, see [`crate::Command::StartTakeover`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverOrder {
    /// Numbers the attempt: a seal reported for another attempt does not count.
    pub takeover: u64,
    /// The owner whose lease expired.
    pub from: DcId,
    /// The epoch the old owner wrote: the one the copy is sealed at.
    pub epoch: Epoch,
}

/// A shard the grant's DC owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum OwnedShard {
    Writable {
        epoch: Epoch,
    },
    /// A handover to `to` froze the shard: stop writing, then report the last position written
    /// with this `handover` number in the next renewal.
    Frozen {
        epoch: Epoch,
        to: DcId,
        handover: u64,
    },
}

impl OwnedShard {
    pub fn epoch(&self) -> Epoch {
        match self {
            OwnedShard::Writable { epoch } | OwnedShard::Frozen { epoch, .. } => *epoch,
        }
    }
}

/// One entry of the shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwner {
    pub dc: DcId,
    pub epoch: Epoch,
}

/// The lease a DC leader holds: the newest grant and when its own clock started its timer.
///
/// A DC leader takes only grants that answer renewals it sent itself during its current
/// leadership; a new DC leader starts with no lease. (An answer to a predecessor's older renewal
/// can predate a handover freeze the predecessor already reported: taking it would let the new
/// leader write past the final position the target is catching up to. The seeded simulation
/// finds that if the rule is dropped.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    pub grant: LeaseGrant,
    /// The holder's monotonic clock just before it sent the renewal this grant answers.
    pub started_before_send_ms: u64,
}

impl HeldLease {
    pub fn new(grant: LeaseGrant, started_before_send_ms: u64) -> HeldLease {
        HeldLease {
            grant,
            started_before_send_ms,
        }
    }

    /// Takes a newly received grant if it is newer than the one held; returns the shards this
    /// DC could write under the old grant but not under the new one. The caller must demote
    /// them before doing anything else.
    ///
    /// An older grant arriving late is ignored: it could show a shard writable that a newer
    /// grant froze, after this DC already reported the frozen shard's final position.
    pub fn update(&mut self, grant: LeaseGrant, started_before_send_ms: u64) -> Vec<ShardId> {
        if grant.sequence <= self.grant.sequence {
            return Vec::new();
        }
        let lost = writable_shards(&self.grant)
            .filter(|(shard, epoch)| {
                !matches!(grant.owned.get(shard), Some(OwnedShard::Writable { epoch: e }) if e == epoch)
            })
            .map(|(shard, _)| shard)
            .collect();
        self.grant = grant;
        self.started_before_send_ms = started_before_send_ms;
        lost
    }

    pub fn is_valid(&self, now_ms: u64) -> bool {
        holder_lease_valid(
            self.started_before_send_ms,
            self.grant.lease_ms,
            self.grant.max_clock_offset_ms,
            now_ms,
        )
    }

    /// How long the holder may still act on this lease at `now_ms`: 0 exactly when it is no
    /// longer valid ([`HeldLease::is_valid`]).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        if !self.is_valid(now_ms) {
            return 0;
        }
        (self.started_before_send_ms + self.grant.lease_ms)
            .saturating_sub(self.grant.max_clock_offset_ms)
            .saturating_sub(now_ms)
    }
}

fn writable_shards(grant: &LeaseGrant) -> impl Iterator<Item = (ShardId, Epoch)> + '_ {
    grant.owned.iter().filter_map(|(shard, owned)| match owned {
        OwnedShard::Writable { epoch } => Some((*shard, *epoch)),
        OwnedShard::Frozen { .. } => None,
    })
}

/// Whether the holder may still act on a lease whose renewal it sent after reading
/// `lease_started_before_send_ms` on its monotonic clock: until `lease_ms - max_clock_offset_ms`
/// later. A clock reading before the start (impossible for a monotonic clock) is not valid.
pub fn holder_lease_valid(
    lease_started_before_send_ms: u64,
    lease_ms: u64,
    max_clock_offset_ms: u64,
    now_ms: u64,
) -> bool {
    match now_ms.checked_sub(lease_started_before_send_ms) {
        Some(elapsed_ms) => elapsed_ms.saturating_add(max_clock_offset_ms) < lease_ms,
        None => false,
    }
}

/// Why a DC leader must not propose or acknowledge a write. All are retryable: the client
/// retries (with its `Idempotency-Key`) and is routed to the current owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "fenced", rename_all = "snake_case")]
pub enum Fenced {
    #[error("the DC's lease has expired (its timer started at {started_before_send_ms} ms)")]
    LeaseExpired { started_before_send_ms: u64 },
    #[error("shard {shard} is owned by {owner} at epoch {epoch}")]
    NotOwner {
        shard: ShardId,
        owner: DcId,
        epoch: Epoch,
    },
    #[error("shard {shard} is at epoch {granted}, the write was for epoch {epoch}")]
    StaleEpoch {
        shard: ShardId,
        epoch: Epoch,
        granted: Epoch,
    },
    #[error("shard {shard} is being handed over to {to}")]
    HandingOver { shard: ShardId, to: DcId },
    #[error("shard {shard} is not in the shard map")]
    UnknownShard { shard: ShardId },
}

impl Fenced {
    /// A stable code for the API error.
    pub fn code(&self) -> &'static str {
        match self {
            Fenced::LeaseExpired { .. } => "lease_expired",
            Fenced::NotOwner { .. } => "not_owner",
            Fenced::StaleEpoch { .. } => "stale_epoch",
            Fenced::HandingOver { .. } => "handing_over",
            Fenced::UnknownShard { .. } => "unknown_shard",
        }
    }
}

/// Fencing: whether a DC leader may write `shard` at `epoch` now. Checked before proposing the
/// write to the DC log and again before acknowledging it: the lease must be valid on the
/// holder's clock and the shard listed as writable at the same epoch.
pub fn may_acknowledge(
    held: &HeldLease,
    shard: ShardId,
    epoch: Epoch,
    now_ms: u64,
) -> Result<(), Fenced> {
    if !held.is_valid(now_ms) {
        return Err(Fenced::LeaseExpired {
            started_before_send_ms: held.started_before_send_ms,
        });
    }
    match held.grant.owned.get(&shard) {
        None => match held.grant.map.get(&shard) {
            Some(owner) => Err(Fenced::NotOwner {
                shard,
                owner: owner.dc.clone(),
                epoch: owner.epoch,
            }),
            None => Err(Fenced::UnknownShard { shard }),
        },
        Some(owned) if owned.epoch() != epoch => Err(Fenced::StaleEpoch {
            shard,
            epoch,
            granted: owned.epoch(),
        }),
        Some(OwnedShard::Frozen { to, .. }) => Err(Fenced::HandingOver {
            shard,
            to: to.clone(),
        }),
        Some(OwnedShard::Writable { .. }) => Ok(()),
    }
}
