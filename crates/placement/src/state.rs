//! The replicated state of the placement group and how each command changes it.
//!
//! [`PlacementState::apply`] is deterministic and total: it never panics on a command (a bad
//! command is [`Rejected`] and changes nothing) and reads no clock (time is in the command).

use std::collections::{BTreeMap, VecDeque};

use coopr_types::ShardId;
use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome, Rejected, Reply};
use crate::decide::{grantor_view, GrantorView};
use crate::holder::{LeaseGrant, OwnedShard, ShardOwner, TakeoverOrder};
use crate::ids::{DcId, Epoch, Position};

/// How many ownership changes the audit history keeps (oldest dropped first).
pub const HISTORY_LIMIT: usize = 1024;
/// How many epoch starts a shard remembers. A watermark older than the remembered history
/// cannot be proven to lie on it, so it is not trusted (never picked for a takeover).
pub const LINEAGE_LIMIT: usize = 32;
/// The largest shard count a bootstrap accepts (a grant lists every shard).
pub const MAX_SHARD_COUNT: u32 = 1 << 16;

/// A member site of the placement group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dc {
    pub id: DcId,
    pub role: DcRole,
}

impl Dc {
    pub fn voter(id: &str) -> Dc {
        Dc {
            id: DcId::new(id),
            role: DcRole::Voter,
        }
    }

    pub fn witness(id: &str) -> Dc {
        Dc {
            id: DcId::new(id),
            role: DcRole::Witness,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DcRole {
    /// A DC serving users: its placement node votes, it holds a lease, owns and replicates shards.
    Voter,
    /// A third site that only votes (needed for a majority with two DCs): no lease, no shards.
    Witness,
}

/// Where one shard lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The only DC that may write the shard (while its lease is valid).
    pub owner: DcId,
    /// The DCs that pull the shard from the owner; never contains the owner.
    pub replicas: Vec<DcId>,
    /// Increases by one on every change of owner; never decreases.
    pub epoch: Epoch,
    pub status: ShardStatus,
    /// For each remembered epoch after the first, the position it started after (the takeover
    /// or handover point). Records of earlier epochs after that point are not on the shard's
    /// history: they were lost (see the lost-operations report).
    #[serde(with = "crate::ids::numeric_keys")]
    pub epoch_starts: BTreeMap<Epoch, Position>,
}

impl ShardPlacement {
    /// Whether `position` lies on the shard's current history, i.e. a copy whose watermark is
    /// `position` is a prefix of the owner's copy. A copy from an epoch whose tail was lost
    /// (an old owner back from a partition) is not.
    pub fn is_on_history(&self, position: Position) -> bool {
        if position.epoch == Epoch(0) {
            return position == Position::ZERO;
        }
        let mut epoch = self.epoch;
        // Walk back through the epochs: each epoch's history is its own records preceded by the
        // history up to its start.
        loop {
            if position.epoch > epoch {
                return false;
            }
            if position.epoch == epoch {
                return true;
            }
            let start = if epoch == Epoch::FIRST {
                Position::ZERO
            } else {
                match self.epoch_starts.get(&epoch) {
                    Some(start) => *start,
                    None => return false, // forgotten: cannot prove it
                }
            };
            if position > start {
                return false;
            }
            epoch = start.epoch;
        }
    }

    /// Whether the owner is being asked to stop writing (any handover phase).
    pub fn is_frozen(&self) -> bool {
        !matches!(self.status, ShardStatus::Active)
    }
}

/// The phase of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ShardStatus {
    /// The owner writes.
    Active,
    /// A handover to `to` was started (at `started_ms` on the proposing leader's clock; 0 in
    /// states written before it was recorded): the owner's next grant freezes the shard, and
    /// the placement group waits for the owner to report the last position it wrote.
    Draining {
        to: DcId,
        handover: u64,
        #[serde(default)]
        started_ms: u64,
    },
    /// The owner stopped writing at `until`; `to` becomes the owner once its watermark is there.
    /// `started_ms` is the handover's start, carried over from [`ShardStatus::Draining`].
    HandingOver {
        to: DcId,
        handover: u64,
        until: Position,
        #[serde(default)]
        started_ms: u64,
    },
    /// Failover in progress: the owner's lease expired and `to` was asked (at `started_ms` on
    /// the proposing leader's clock) to seal its copy; `sealed_at` is where it reported the
    /// copy ends. The owner's grant no longer lists the shard; a renewal from the owner (it is
    /// back before the takeover completed) ends this phase and it keeps the shard.
    TakingOver {
        from: DcId,
        to: DcId,
        takeover: u64,
        started_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed_at: Option<Position>,
    },
}

/// A DC's planned maintenance, as an admin set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    /// Drained (`coopr admin drain`): no handover or takeover targets it, and the placement
    /// leader hands its shards over to other DCs a few at a time. Lasts until undrained.
    Draining,
    /// Undrained (`coopr admin undrain`): the placement leader hands its home shards back to it
    /// a few at a time, so that a returning DC does not take everything at once; ends when
    /// none is left to move.
    FailingBack,
}

/// A DC's lease as the grantor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub dc: DcId,
    /// The proposing placement leader's monotonic clock when it proposed the renewal (after the
    /// holder sent it). Only meaningful to the leader whose clock it is: see [`grantor_view`].
    pub granted_at_ms: u64,
    pub lease_ms: u64,
    /// The position of every shard copy the DC reported holding.
    #[serde(with = "crate::ids::numeric_keys")]
    pub watermarks: BTreeMap<ShardId, Position>,
    /// The grant's sequence number (see [`LeaseGrant::sequence`]).
    pub sequence: u64,
}

/// One entry of the ownership audit history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipChange {
    /// Counts every change ever made (the history keeps only the last [`HISTORY_LIMIT`]).
    pub number: u64,
    pub shard: ShardId,
    pub from: DcId,
    pub to: DcId,
    /// The new epoch.
    pub epoch: Epoch,
    pub reason: ChangeReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ChangeReason {
    /// `from`'s lease expired; what it wrote after `takeover_point` was never replicated.
    Failover {
        takeover_point: Position,
        at_ms: u64,
    },
    /// Graceful: `to` had everything `from` wrote, up to `until`.
    Handover { until: Position },
}

/// The state of a bootstrapped placement group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementState {
    dcs: Vec<Dc>,
    shard_count: u32,
    lease_ms: u64,
    max_clock_offset_ms: u64,
    #[serde(with = "crate::ids::numeric_keys")]
    shards: BTreeMap<ShardId, ShardPlacement>,
    leases: BTreeMap<DcId, Lease>,
    history: VecDeque<OwnershipChange>,
    changes_total: u64,
    /// Counts takeover attempts (numbers [`ShardStatus::TakingOver`]).
    #[serde(default)]
    takeovers_started: u64,
    grants_issued: u64,
    handovers_started: u64,
    /// DCs under planned maintenance (absent in states written before it existed: none).
    #[serde(default)]
    maintenance: BTreeMap<DcId, Maintenance>,
}

impl PlacementState {
    /// The initial placement (see [`Command::Bootstrap`]).
    pub fn bootstrap(
        dcs: Vec<Dc>,
        shard_count: u32,
        lease_ms: u64,
        max_clock_offset_ms: u64,
    ) -> Result<PlacementState, Rejected> {
        let invalid = |reason: String| Err(Rejected::InvalidBootstrap { reason });
        if shard_count == 0 || shard_count > MAX_SHARD_COUNT {
            return invalid(format!(
                "shard_count {shard_count} is not in 1..={MAX_SHARD_COUNT}"
            ));
        }
        if lease_ms == 0 {
            return invalid("lease_ms must be positive".into());
        }
        // The holder believes its lease lasts `lease_ms - max_clock_offset_ms` and renews every
        // `lease_ms / 3`: a larger offset would leave gaps in which the DC cannot write.
        if max_clock_offset_ms.saturating_mul(2) >= lease_ms {
            return invalid(format!(
                "max_clock_offset_ms {max_clock_offset_ms} must be less than half of lease_ms {lease_ms}"
            ));
        }
        for (i, dc) in dcs.iter().enumerate() {
            if dc.id.0.is_empty() {
                return invalid("a DC has an empty name".into());
            }
            if dcs[..i].iter().any(|other| other.id == dc.id) {
                return invalid(format!("DC {} is listed twice", dc.id));
            }
        }
        let voters: Vec<DcId> = dcs
            .iter()
            .filter(|dc| dc.role == DcRole::Voter)
            .map(|dc| dc.id.clone())
            .collect();
        if voters.is_empty() {
            return invalid("no voter DC: a witness cannot own shards".into());
        }
        let placement = |owner: &DcId| ShardPlacement {
            owner: owner.clone(),
            replicas: voters.iter().filter(|dc| *dc != owner).cloned().collect(),
            epoch: Epoch::FIRST,
            status: ShardStatus::Active,
            epoch_starts: BTreeMap::new(),
        };
        let mut shards: BTreeMap<ShardId, ShardPlacement> = (0..shard_count)
            .map(|i| {
                let owner = &voters[i as usize % voters.len()];
                (ShardId(i), placement(owner))
            })
            .collect();
        shards.insert(ShardId::GLOBAL, placement(&voters[0]));
        Ok(PlacementState {
            dcs,
            shard_count,
            lease_ms,
            max_clock_offset_ms,
            shards,
            leases: BTreeMap::new(),
            history: VecDeque::new(),
            changes_total: 0,
            grants_issued: 0,
            handovers_started: 0,
            takeovers_started: 0,
            maintenance: BTreeMap::new(),
        })
    }

    pub fn dcs(&self) -> &[Dc] {
        &self.dcs
    }

    /// The voter DCs (those that can hold leases and shards), in bootstrap order.
    pub fn voters(&self) -> impl Iterator<Item = &DcId> {
        self.dcs
            .iter()
            .filter(|dc| dc.role == DcRole::Voter)
            .map(|dc| &dc.id)
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    pub fn max_clock_offset_ms(&self) -> u64 {
        self.max_clock_offset_ms
    }

    /// Every shard (`0..S`, then the global shard) and where it lives.
    pub fn shards(&self) -> &BTreeMap<ShardId, ShardPlacement> {
        &self.shards
    }

    pub fn shard(&self, shard: ShardId) -> Option<&ShardPlacement> {
        self.shards.get(&shard)
    }

    pub fn lease(&self, dc: &DcId) -> Option<&Lease> {
        self.leases.get(dc)
    }

    pub fn leases(&self) -> &BTreeMap<DcId, Lease> {
        &self.leases
    }

    /// The DCs under planned maintenance.
    pub fn maintenance(&self) -> &BTreeMap<DcId, Maintenance> {
        &self.maintenance
    }

    /// Whether `dc` is drained: it is no target of handovers or takeovers.
    pub fn is_draining(&self, dc: &DcId) -> bool {
        self.maintenance.get(dc) == Some(&Maintenance::Draining)
    }

    /// The home DC of `shard`: its owner in the initial placement (cluster shard `s` on the
    /// `s mod k`-th voter, the global shard on the first), where failback returns it.
    pub fn home(&self, shard: ShardId) -> Option<&DcId> {
        let voters: Vec<&DcId> = self.voters().collect();
        if voters.is_empty() || (!shard.is_global() && shard.0 >= self.shard_count) {
            return None;
        }
        let index = if shard.is_global() {
            0
        } else {
            shard.0 as usize % voters.len()
        };
        Some(voters[index])
    }

    /// The last [`HISTORY_LIMIT`] ownership changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &OwnershipChange> {
        self.history.iter()
    }

    /// The grant a DC holds under the current state (what a renewal now would answer).
    pub fn grant_for(&self, dc: &DcId) -> LeaseGrant {
        let owned = self
            .shards
            .iter()
            .filter(|(_, placement)| placement.owner == *dc)
            .filter_map(|(shard, placement)| {
                let owned = match &placement.status {
                    ShardStatus::Active => OwnedShard::Writable {
                        epoch: placement.epoch,
                    },
                    ShardStatus::Draining { to, handover, .. }
                    | ShardStatus::HandingOver { to, handover, .. } => OwnedShard::Frozen {
                        epoch: placement.epoch,
                        to: to.clone(),
                        handover: *handover,
                    },
                    // Being taken over: the owner may not write it any more.
                    ShardStatus::TakingOver { .. } => return None,
                };
                Some((*shard, owned))
            })
            .collect();
        let taking_over = self
            .shards
            .iter()
            .filter_map(|(shard, placement)| match &placement.status {
                ShardStatus::TakingOver {
                    from, to, takeover, ..
                } if to == dc => Some((
                    *shard,
                    TakeoverOrder {
                        takeover: *takeover,
                        from: from.clone(),
                        epoch: placement.epoch,
                    },
                )),
                _ => None,
            })
            .collect();
        let map = self
            .shards
            .iter()
            .map(|(shard, placement)| {
                (
                    *shard,
                    ShardOwner {
                        dc: placement.owner.clone(),
                        epoch: placement.epoch,
                    },
                )
            })
            .collect();
        LeaseGrant {
            dc: dc.clone(),
            sequence: self.leases.get(dc).map_or(0, |lease| lease.sequence),
            lease_ms: self.lease_ms,
            max_clock_offset_ms: self.max_clock_offset_ms,
            owned,
            map,
            taking_over,
        }
    }

    /// How long a takeover candidate has to report its sealed copy before it is replaced: a
    /// lease (its renewals come every third of one) plus the bounded pull of the old epoch.
    pub fn takeover_timeout_ms(&self) -> u64 {
        self.lease_ms.saturating_add(TAKEOVER_PULL_MS)
    }

    /// Applies one command. On `Err` the state is unchanged.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Bootstrap { .. } => Err(Rejected::AlreadyBootstrapped),
            Command::RenewLease {
                dc,
                now_ms,
                watermarks,
                frozen,
                sealed,
            } => self.renew_lease(dc, *now_ms, watermarks, frozen, sealed),
            Command::StartTakeover {
                shard,
                from,
                to,
                now_ms,
                leader_since_ms,
            } => self.start_takeover(*shard, from, to, *now_ms, *leader_since_ms),
            Command::Takeover {
                shard,
                from,
                to,
                takeover_point,
                now_ms,
                leader_since_ms,
            } => self.takeover(*shard, from, to, *takeover_point, *now_ms, *leader_since_ms),
            Command::StartHandover {
                shard,
                to,
                now_ms,
                leader_since_ms,
            } => self.start_handover(*shard, to, *now_ms, *leader_since_ms),
            Command::CompleteHandover {
                shard,
                target_watermark,
            } => self.complete_handover(*shard, *target_watermark),
            Command::AbortHandover { shard, handover } => self.abort_handover(*shard, *handover),
            Command::SetReplicas { shard, replicas } => self.set_replicas(*shard, replicas),
            Command::DrainDc { dc } => self.set_maintenance(dc, Some(Maintenance::Draining)),
            Command::UndrainDc { dc } => self.set_maintenance(dc, Some(Maintenance::FailingBack)),
            Command::EndFailback { dc } => {
                self.voter(dc)?;
                if self.maintenance.get(dc) != Some(&Maintenance::FailingBack) {
                    return Err(Rejected::NoFailback { dc: dc.clone() });
                }
                self.set_maintenance(dc, None)
            }
        }
    }

    fn voter(&self, dc: &DcId) -> Result<(), Rejected> {
        match self.dcs.iter().find(|known| known.id == *dc) {
            None => Err(Rejected::UnknownDc { dc: dc.clone() }),
            Some(Dc {
                role: DcRole::Witness,
                ..
            }) => Err(Rejected::Witness { dc: dc.clone() }),
            Some(_) => Ok(()),
        }
    }

    fn set_maintenance(&mut self, dc: &DcId, maintenance: Option<Maintenance>) -> Outcome {
        self.voter(dc)?;
        match maintenance {
            Some(m) => self.maintenance.insert(dc.clone(), m),
            None => self.maintenance.remove(dc),
        };
        Ok(Reply::Maintenance {
            dc: dc.clone(),
            maintenance,
        })
    }

    fn placement(&self, shard: ShardId) -> Result<&ShardPlacement, Rejected> {
        self.shards
            .get(&shard)
            .ok_or(Rejected::UnknownShard { shard })
    }

    fn renew_lease(
        &mut self,
        dc: &DcId,
        now_ms: u64,
        watermarks: &BTreeMap<ShardId, Position>,
        frozen: &BTreeMap<ShardId, FrozenReport>,
        sealed: &BTreeMap<ShardId, SealReport>,
    ) -> Outcome {
        self.voter(dc)?;
        for (shard, placement) in self.shards.iter_mut() {
            match &mut placement.status {
                // The owner is back before its shard was taken over: it keeps the shard (the
                // candidate sees the order gone from its next grant and unseals its copy).
                ShardStatus::TakingOver { from, .. } if from == dc => {
                    placement.status = ShardStatus::Active;
                }
                // The candidate's copy ends here: the only takeover point accepted.
                ShardStatus::TakingOver {
                    to,
                    takeover,
                    sealed_at,
                    ..
                } if to == dc => {
                    if let Some(report) = sealed.get(shard).filter(|r| r.takeover == *takeover) {
                        *sealed_at = Some(report.at);
                    }
                }
                _ => {}
            }
        }
        // A final position counts only for the handover that froze the shard (a report from an
        // aborted earlier handover is stale: the owner wrote again after it).
        for (shard, report) in frozen {
            let Some(placement) = self.shards.get_mut(shard) else {
                continue;
            };
            if placement.owner != *dc || !placement.is_on_history(report.last) {
                continue;
            }
            if let ShardStatus::Draining {
                to,
                handover,
                started_ms,
            } = &placement.status
            {
                if *handover == report.handover {
                    placement.status = ShardStatus::HandingOver {
                        to: to.clone(),
                        handover: *handover,
                        until: report.last,
                        started_ms: *started_ms,
                    };
                }
            }
        }
        self.grants_issued += 1;
        self.leases.insert(
            dc.clone(),
            Lease {
                dc: dc.clone(),
                granted_at_ms: now_ms,
                lease_ms: self.lease_ms,
                watermarks: watermarks.clone(),
                sequence: self.grants_issued,
            },
        );
        Ok(Reply::LeaseGranted {
            grant: self.grant_for(dc),
        })
    }

    /// The shard's placement, if `from` owns it and `to` is another voter among its replicas:
    /// who may take part in a takeover of it.
    fn takeover_parties(
        &self,
        shard: ShardId,
        from: &DcId,
        to: &DcId,
    ) -> Result<&ShardPlacement, Rejected> {
        let placement = self.placement(shard)?;
        if placement.owner != *from {
            return Err(Rejected::NotOwner {
                shard,
                owner: placement.owner.clone(),
                epoch: placement.epoch,
                claimed: from.clone(),
            });
        }
        self.voter(to)?;
        if to == from {
            return Err(Rejected::AlreadyOwner {
                shard,
                dc: to.clone(),
            });
        }
        if !placement.replicas.contains(to) {
            return Err(Rejected::NotReplica {
                shard,
                dc: to.clone(),
            });
        }
        Ok(placement)
    }

    fn takeover(
        &mut self,
        shard: ShardId,
        from: &DcId,
        to: &DcId,
        takeover_point: Position,
        now_ms: u64,
        leader_since_ms: u64,
    ) -> Outcome {
        let placement = self.takeover_parties(shard, from, to)?;
        let view = grantor_view(
            self.leases.get(from),
            self.lease_ms,
            self.max_clock_offset_ms,
            now_ms,
            leader_since_ms,
        );
        match view {
            GrantorView::Expired => {}
            GrantorView::Valid { until_ms } | GrantorView::InDoubt { until_ms } => {
                return Err(Rejected::LeaseNotExpired {
                    dc: from.clone(),
                    until_ms,
                })
            }
        }
        if !placement.is_on_history(takeover_point) {
            return Err(Rejected::TakeoverPointInvalid {
                shard,
                point: takeover_point,
                epoch: placement.epoch,
            });
        }
        let sealed = matches!(
            &placement.status,
            ShardStatus::TakingOver { from: f, to: t, sealed_at: Some(at), .. }
                if f == from && t == to && *at == takeover_point
        );
        if !sealed {
            return Err(Rejected::NotSealed {
                shard,
                to: to.clone(),
                point: takeover_point,
            });
        }
        let epoch = self.change_owner(shard, to, takeover_point);
        self.record(OwnershipChange {
            number: 0,
            shard,
            from: from.clone(),
            to: to.clone(),
            epoch,
            reason: ChangeReason::Failover {
                takeover_point,
                at_ms: now_ms,
            },
        });
        Ok(self.shard_reply(shard))
    }

    fn start_takeover(
        &mut self,
        shard: ShardId,
        from: &DcId,
        to: &DcId,
        now_ms: u64,
        leader_since_ms: u64,
    ) -> Outcome {
        let placement = self.takeover_parties(shard, from, to)?;
        let view = |dc: &DcId| {
            grantor_view(
                self.leases.get(dc),
                self.lease_ms,
                self.max_clock_offset_ms,
                now_ms,
                leader_since_ms,
            )
        };
        match view(from) {
            GrantorView::Expired => {}
            GrantorView::Valid { until_ms } | GrantorView::InDoubt { until_ms } => {
                return Err(Rejected::LeaseNotExpired {
                    dc: from.clone(),
                    until_ms,
                })
            }
        }
        if !matches!(view(to), GrantorView::Valid { .. }) {
            return Err(Rejected::CandidateUnhealthy {
                shard,
                dc: to.clone(),
            });
        }
        if self.is_draining(to) {
            return Err(Rejected::TargetDraining { dc: to.clone() });
        }
        if let ShardStatus::TakingOver {
            to: current,
            takeover,
            started_ms,
            ..
        } = &placement.status
        {
            if !takeover_timed_out(
                *started_ms,
                self.takeover_timeout_ms(),
                now_ms,
                leader_since_ms,
            ) {
                return Err(Rejected::TakeoverInProgress {
                    shard,
                    to: current.clone(),
                    takeover: *takeover,
                });
            }
        }
        // A handover the dead owner had started cannot finish without it: failover wins.
        self.takeovers_started += 1;
        let takeover = self.takeovers_started;
        self.shard_mut(shard).status = ShardStatus::TakingOver {
            from: from.clone(),
            to: to.clone(),
            takeover,
            started_ms: now_ms,
            sealed_at: None,
        };
        Ok(self.shard_reply(shard))
    }

    fn start_handover(
        &mut self,
        shard: ShardId,
        to: &DcId,
        now_ms: u64,
        leader_since_ms: u64,
    ) -> Outcome {
        let placement = self.placement(shard)?;
        if placement.is_frozen() {
            return Err(Rejected::HandoverInProgress {
                shard,
                status: placement.status.clone(),
            });
        }
        self.voter(to)?;
        if placement.owner == *to {
            return Err(Rejected::AlreadyOwner {
                shard,
                dc: to.clone(),
            });
        }
        if !placement.replicas.contains(to) {
            return Err(Rejected::NotReplica {
                shard,
                dc: to.clone(),
            });
        }
        // A target whose lease has certainly expired could never catch up: refused now rather
        // than timed out later. (In doubt, e.g. while a new leader waits, it is accepted.)
        let target = grantor_view(
            self.leases.get(to),
            self.lease_ms,
            self.max_clock_offset_ms,
            now_ms,
            leader_since_ms,
        );
        if target == GrantorView::Expired {
            return Err(Rejected::CandidateUnhealthy {
                shard,
                dc: to.clone(),
            });
        }
        if self.is_draining(to) {
            return Err(Rejected::TargetDraining { dc: to.clone() });
        }
        self.handovers_started += 1;
        let handover = self.handovers_started;
        self.shard_mut(shard).status = ShardStatus::Draining {
            to: to.clone(),
            handover,
            started_ms: now_ms,
        };
        Ok(self.shard_reply(shard))
    }

    fn complete_handover(&mut self, shard: ShardId, target_watermark: Position) -> Outcome {
        let placement = self.placement(shard)?;
        let (to, until) = match &placement.status {
            ShardStatus::Active | ShardStatus::TakingOver { .. } => {
                return Err(Rejected::NoHandover { shard })
            }
            ShardStatus::Draining { .. } => return Err(Rejected::OwnerNotFrozen { shard }),
            ShardStatus::HandingOver { to, until, .. } => (to.clone(), *until),
        };
        if target_watermark != until {
            return Err(Rejected::NotCaughtUp {
                shard,
                target_watermark,
                owner_final: until,
            });
        }
        let from = placement.owner.clone();
        let epoch = self.change_owner(shard, &to, until);
        self.record(OwnershipChange {
            number: 0,
            shard,
            from,
            to,
            epoch,
            reason: ChangeReason::Handover { until },
        });
        Ok(self.shard_reply(shard))
    }

    fn abort_handover(&mut self, shard: ShardId, only: Option<u64>) -> Outcome {
        let running = match &self.placement(shard)?.status {
            ShardStatus::Active | ShardStatus::TakingOver { .. } => None,
            ShardStatus::Draining { handover, .. } | ShardStatus::HandingOver { handover, .. } => {
                Some(*handover)
            }
        };
        if running.is_none() || only.is_some_and(|only| Some(only) != running) {
            return Err(Rejected::NoHandover { shard });
        }
        self.shard_mut(shard).status = ShardStatus::Active;
        Ok(self.shard_reply(shard))
    }

    fn set_replicas(&mut self, shard: ShardId, replicas: &[DcId]) -> Outcome {
        let placement = self.placement(shard)?;
        let invalid = |reason: String| Err(Rejected::InvalidReplicas { shard, reason });
        for (i, dc) in replicas.iter().enumerate() {
            self.voter(dc)?;
            if replicas[..i].contains(dc) {
                return invalid(format!("{dc} is listed twice"));
            }
            if *dc == placement.owner {
                return invalid(format!("{dc} is the owner"));
            }
        }
        if replicas.is_empty() && self.voters().count() > 1 {
            return invalid("a shard needs at least one replica DC".into());
        }
        if let ShardStatus::Draining { to, .. }
        | ShardStatus::HandingOver { to, .. }
        | ShardStatus::TakingOver { to, .. } = &placement.status
        {
            if !replicas.contains(to) {
                return invalid(format!("{to} is the target of a handover in progress"));
            }
        }
        self.shard_mut(shard).replicas = replicas.to_vec();
        Ok(self.shard_reply(shard))
    }

    /// Makes `to` the owner in the next epoch, starting after `start`; the old owner becomes a
    /// replica (it re-syncs from the new owner when it is back).
    fn change_owner(&mut self, shard: ShardId, to: &DcId, start: Position) -> Epoch {
        let placement = self.shard_mut(shard);
        let old_epoch = placement.epoch;
        let epoch = old_epoch.next();
        let from = std::mem::replace(&mut placement.owner, to.clone());
        placement.replicas.retain(|dc| dc != to);
        placement.replicas.push(from);
        placement.epoch = epoch;
        placement.status = ShardStatus::Active;
        placement.epoch_starts.insert(epoch, start);
        while placement.epoch_starts.len() > LINEAGE_LIMIT {
            placement.epoch_starts.pop_first();
        }
        assert!(placement.epoch > old_epoch, "epochs only increase");
        assert!(!placement.replicas.contains(&placement.owner));
        epoch
    }

    fn record(&mut self, mut change: OwnershipChange) {
        self.changes_total += 1;
        change.number = self.changes_total;
        self.history.push_back(change);
        while self.history.len() > HISTORY_LIMIT {
            self.history.pop_front();
        }
    }

    fn shard_mut(&mut self, shard: ShardId) -> &mut ShardPlacement {
        self.shards
            .get_mut(&shard)
            .expect("shard existence checked by the caller")
    }

    fn shard_reply(&self, shard: ShardId) -> Reply {
        Reply::Shard {
            shard,
            placement: self.shards[&shard].clone(),
        }
    }
}

/// A takeover candidate's report that its copy of a shard is sealed for takeover `takeover`
/// (it applies nothing more of the old epoch) and ends at `at` (see [`Command::RenewLease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealReport {
    pub takeover: u64,
    pub at: Position,
}

/// How long a takeover candidate may pull the old owner's remaining records before it seals.
pub const TAKEOVER_PULL_MS: u64 = 1_000;

/// Whether a takeover attempt (or a handover: see [`crate::plan_handover_timeouts`]) started
/// at `started_ms` (on the clock of whichever leader proposed it) has run out of time for the
/// leader elected at `leader_since_ms`, now. A start time outside this leader's own readings is
/// a predecessor's: counted from the election.
pub fn takeover_timed_out(
    started_ms: u64,
    timeout_ms: u64,
    now_ms: u64,
    leader_since_ms: u64,
) -> bool {
    let from = if (leader_since_ms..=now_ms).contains(&started_ms) {
        started_ms
    } else {
        leader_since_ms
    };
    now_ms >= from.saturating_add(timeout_ms)
}

/// An owner's report that it has stopped writing a shard frozen by handover `handover`, and
/// the position of the last record it wrote (see [`Command::RenewLease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenReport {
    pub handover: u64,
    pub last: Position,
}

/// Applies a command to a placement group that may not be bootstrapped yet: the whole state
/// transition of the placement log.
pub fn apply_command(state: &mut Option<PlacementState>, command: &Command) -> Outcome {
    match (state.as_mut(), command) {
        (
            None,
            Command::Bootstrap {
                dcs,
                shard_count,
                lease_ms,
                max_clock_offset_ms,
            },
        ) => {
            *state = Some(PlacementState::bootstrap(
                dcs.clone(),
                *shard_count,
                *lease_ms,
                *max_clock_offset_ms,
            )?);
            Ok(Reply::Bootstrapped)
        }
        (None, _) => Err(Rejected::NotBootstrapped),
        (Some(state), command) => state.apply(command),
    }
}
