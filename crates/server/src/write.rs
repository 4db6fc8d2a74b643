//! The write path of a node: [`App::propose`] (client writes, admitted by the write queue) and
//! [`App::propose_system`] (the node's own), and the fencing both go through in a multi-DC
//! deployment, which uses the lease [`crate::placement::lease`] renews.
//!
//! ```text
//!  App::propose(command):                        fencing (multi-DC deployments only)
//!    lease valid on this node's clock (t + lease - max_clock_offset > now)?
//!    command names a shard? it must be listed Writable at the epoch the local state is in;
//!      the entry carries Fence{shard, epoch}: the state machine refuses another epoch
//!    propose to the DC log ... and check the lease again before acknowledging
//! ```

use coopr_placement::{may_acknowledge, Epoch, Fenced, HeldLease};
use coopr_state::{Command, CommandError, CommandResult, ErrorCode, Fence};
use coopr_types::ShardId;

use crate::core::ProposeError;
use crate::App;

/// The lease this node holds while it leads its DC log, with the term it was granted in.
#[derive(Debug, Clone)]
pub struct Held {
    pub term: u64,
    pub lease: HeldLease,
}

/// The shard a command writes, if it names one (commands of the task queue and the driver
/// act on the shards this DC holds and are fenced by the lease alone).
pub fn command_shard(command: &Command, shard_count: u32) -> Option<ShardId> {
    if let Some(cluster) = command.cluster() {
        return Some(cluster.shard(shard_count));
    }
    match command {
        Command::CreateCluster { shard, .. } => Some(*shard),
        Command::PutTenant { .. }
        | Command::DeleteTenant { .. }
        | Command::PutApiKey { .. }
        | Command::PutEntity { .. }
        | Command::DeleteEntity { .. }
        | Command::ImportCatalog { .. }
        | Command::PutProfile { .. }
        | Command::PutResource { .. }
        | Command::StageResource { .. }
        | Command::RecallResource { .. }
        | Command::SyncResources { .. }
        | Command::DeleteResource { .. } => Some(ShardId::GLOBAL),
        _ => None,
    }
}

/// Commands that write no owned shard (replica copies, outbox trimming): not fenced.
fn unfenced(command: &Command) -> bool {
    matches!(
        command,
        Command::ApplyReplicationBatch { .. } | Command::TrimOutbox { .. }
    )
}

impl App {
    /// Commits a client's command (user or provisioner API) in the DC log: admitted by the
    /// write queue (503 `write_queue_full` when `max_client_writes_in_flight` are in flight,
    /// see [`crate::core::WriteQueue`]), then as [`App::propose_system`].
    pub async fn propose(
        &self,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<CommandResult, ProposeError> {
        let _place = self.write_queue.admit()?;
        self.propose_system(command, idempotency_key).await
    }

    /// Commits one of the node's own commands (driver, seeding, lease reconcile, replication)
    /// in the DC log, fenced by the DC's lease in a multi-DC deployment (see the module doc).
    /// Takes no place in the write queue: client writes cannot starve these.
    pub async fn propose_system(
        &self,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<CommandResult, ProposeError> {
        if !self.config.multi_dc() || unfenced(&command) {
            return self.core.propose(command, idempotency_key, None).await;
        }
        let shard = command_shard(&command, self.config.shard_count);
        let progress = matches!(command, Command::FinishTask(_));
        let fence = self.fence(shard, progress).map_err(ProposeError::Fenced)?;
        let result = self.core.propose(command, idempotency_key, fence).await?;
        // The DC log refused the fence: the local state changed meanwhile (an ownership change
        // or a freeze committed between the check and the write). Retryable, like the check.
        if let (Err(CommandError::Conflict { code, .. }), Some(shard)) = (&result, shard) {
            match code {
                ErrorCode::StaleEpoch | ErrorCode::NotOwner => {
                    return Err(ProposeError::Fenced(self.not_owner(shard)));
                }
                ErrorCode::HandingOver => {
                    return Err(ProposeError::Fenced(Fenced::HandingOver {
                        shard,
                        to: coopr_placement::DcId::new(self.handover_target(shard)),
                    }));
                }
                _ => {}
            }
        }
        // Acknowledge only if the lease still covers the write now.
        self.fence(shard, progress).map_err(ProposeError::Fenced)?;
        Ok(result)
    }

    /// Whether this DC may write `shard` (or anything, for `None`) now; the fence the entry
    /// carries. `progress`: the write only moves a running operation on (a task result); while
    /// a handover drains the shard those still go in, until the shard is frozen here.
    pub fn fence(&self, shard: Option<ShardId>, progress: bool) -> Result<Option<Fence>, Fenced> {
        let held = self.held_lease();
        let term = self.core.raft().status().term;
        let Some(held) = held.filter(|h| h.term == term) else {
            return Err(Fenced::LeaseExpired {
                started_before_send_ms: 0,
            });
        };
        let now = self.clock.mono_ms();
        let Some(shard) = shard else {
            return if held.lease.is_valid(now) {
                Ok(None)
            } else {
                Err(Fenced::LeaseExpired {
                    started_before_send_ms: held.lease.started_before_send_ms,
                })
            };
        };
        let (epoch, frozen) = {
            let state = self.core.read();
            let Some(epoch) = state.shard_epoch(shard) else {
                return Err(Fenced::UnknownShard { shard });
            };
            (epoch, state.shards.get(&shard).and_then(|s| s.frozen))
        };
        match may_acknowledge(&held.lease, shard, Epoch(epoch), now) {
            Err(Fenced::HandingOver { .. }) if progress && frozen.is_none() => {}
            checked => checked?,
        }
        Ok(Some(Fence { shard, epoch }))
    }

    /// Where a handover of `shard` goes, as the placement state last fetched says.
    fn handover_target(&self, shard: ShardId) -> String {
        let state = self.placement_state();
        match state
            .as_ref()
            .and_then(|s| s.shard(shard))
            .map(|p| &p.status)
        {
            Some(
                coopr_placement::ShardStatus::Draining { to, .. }
                | coopr_placement::ShardStatus::HandingOver { to, .. },
            ) => to.0.clone(),
            _ => "unknown".into(),
        }
    }

    fn not_owner(&self, shard: ShardId) -> Fenced {
        let map = self.placement();
        Fenced::NotOwner {
            shard,
            owner: coopr_placement::DcId::new(map.owner(shard)),
            epoch: Epoch(map.epoch(shard)),
        }
    }

    /// The lease this node holds (while it leads the DC log and a renewal was granted).
    pub fn held_lease(&self) -> Option<Held> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The shards whose tasks this DC may hand out now: with several DCs, those its lease lists
    /// (writable, or frozen by a handover while running operations finish); none without a
    /// lease. `None` with one DC: every shard is its own.
    pub fn runnable_shards(&self) -> Option<std::collections::BTreeSet<ShardId>> {
        if !self.config.multi_dc() {
            return None;
        }
        let term = self.core.raft().status().term;
        Some(
            self.held_lease()
                .filter(|held| held.term == term)
                .map(|held| held.lease.grant.owned.keys().copied().collect())
                .unwrap_or_default(),
        )
    }

    /// Whether this node can acknowledge writes now (single DC: always; else a valid lease).
    pub fn has_valid_lease(&self) -> bool {
        !self.config.multi_dc() || self.fence(None, false).is_ok()
    }
}
