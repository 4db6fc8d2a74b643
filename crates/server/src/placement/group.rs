//! The placement group at run time: a second instance of the replicated state machine
//! component (`coopr-raft`), spanning the DCs, whose application is
//! [`coopr_placement::PlacementMachine`] (the shard map, DC leases, the ownership history).
//!
//! ```text
//!  voter node (one per DC, + witness)                any DC leader (lease holder)
//!  ─────────────────────────────────                 ───────────────────────────
//!  internal listener:                                every lease/3:
//!    /placement/raft/*   Raft RPCs of the group        POST /internal/placement/renew {dc, ...}
//!    /internal/placement/renew       ─┐ not leader?    ◀── LeaseGrant (owned shards, the map)
//!    /internal/placement/state        │ forward once   GET /internal/placement/state (the map)
//!    /internal/placement/command      │ to the leader
//!    /internal/placement/maintenance ─┘ (drain, undrain: the leader answers the plan)
//!  leader loop: bootstrap once; complete handovers whose target caught up, abort those
//!  older than handover_timeout_ms; hand over drained DCs' shards (and home shards back on
//!  undrain) a few at a time; fail over DCs whose lease expired
//! ```
//!
//! Times in the placement log are the proposing leader's monotonic clock (its node's
//! [`Clock::mono_ms`], each node its own); a new
//! placement leader remembers when it was elected so that the lease rules can tell its own
//! grants from its predecessors' (see `coopr_placement::decide`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coopr_placement::{
    dead_dcs, drain_plan, failback_plan, plan_failover, plan_handover_completions,
    plan_handover_timeouts, plan_maintenance, plan_takeovers, Command, Dc, DcId, FrozenReport,
    Outcome, PlacementMachine, PlannedMove, Position, Rejected, Reply, SealReport,
};
use coopr_raft::{RaftConfig, RaftHandle, RaftStores, WriteError};
use coopr_types::ShardId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::error::ApiError;
use crate::clock::Clock;
use crate::config::{PlacementMember, ServerConfig};
use crate::replication::SECRET_HEADER;

/// The Raft group name of the placement group.
pub const GROUP: &str = "placement";
/// Where the placement group's Raft RPCs are served on the internal listener.
pub const RAFT_PREFIX: &str = "/placement";
pub const RENEW_PATH: &str = "/internal/placement/renew";
pub const STATE_PATH: &str = "/internal/placement/state";
pub const COMMAND_PATH: &str = "/internal/placement/command";
pub const MAINTENANCE_PATH: &str = "/internal/placement/maintenance";
/// Marks a placement call forwarded to the placement leader (never forwarded twice).
const FORWARDED_HEADER: &str = "coopr-placement-forwarded";

/// A DC leader's lease renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub dc: String,
    #[serde(with = "coopr_placement::ids::numeric_keys")]
    pub watermarks: BTreeMap<ShardId, Position>,
    #[serde(default, with = "coopr_placement::ids::numeric_keys")]
    pub frozen: BTreeMap<ShardId, FrozenReport>,
    /// Copies this DC sealed for a takeover it was asked to make, and where they end.
    #[serde(default, with = "coopr_placement::ids::numeric_keys")]
    pub sealed: BTreeMap<ShardId, SealReport>,
}

/// An admin's drain or undrain of a DC (`dry_run`: only the plan), sent to the placement
/// leader, which alone can tell which DCs are healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    pub dc: String,
    /// `false`: drain; `true`: undrain (fail back).
    pub undrain: bool,
    pub dry_run: bool,
}

/// The placement leader's answer to a [`MaintenanceRequest`]: whether the mark was (or, dry,
/// would be) set, and the moves it makes now or later, each with what blocks it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceAnswer {
    pub outcome: Outcome,
    pub plan: Vec<PlannedMove>,
}

/// A running voter of the placement group.
pub struct PlacementGroup {
    raft: RaftHandle,
    machine: Arc<PlacementMachine>,
    members: BTreeMap<u64, PlacementMember>,
    secret: String,
    bootstrap: Command,
    /// The term in which this node last became the placement leader, and when (monotonic ms).
    leader_since_ms: Mutex<Option<(u64, u64)>>,
    /// Held by the failover pass running now (the leader loop's ticks do not overlap).
    failing_over: tokio::sync::Mutex<()>,
    /// How long a handover may run before the leader aborts it.
    handover_timeout_ms: u64,
    /// How this voter calls the others (forwarding to the leader).
    transport: Arc<dyn coopr_raft::Transport>,
    /// Bound of a forwarded call (a lease, at least the write bound).
    call_timeout: Duration,
    /// The node's clock: lease and handover times of the commands this voter proposes as leader.
    clock: Arc<dyn Clock>,
    /// DCs a shard change this voter committed concerns, to wake (see [`Wakes`]).
    pub wakes: Wakes,
}

/// The DCs a shard change concerns (its owner, the DC a handover or takeover moves it to, and
/// its replicas), collected by the voter that committed the change for
/// [`crate::placement::lease::wake`] to tell at once: otherwise each learns of it at its next
/// renewal or map refresh, up to a third of a lease later, and every step of a handover waits
/// for one. A handover completes only once every replica reported the frozen position, which
/// a replica does at once only if it knows the shard is being handed over; and once it
/// completes, the old owner (a replica now) releases its copy and every replica follows the
/// new owner when it sees the new map.
#[derive(Default)]
pub struct Wakes {
    dcs: Mutex<std::collections::BTreeSet<String>>,
    added: tokio::sync::Notify,
}

impl Wakes {
    fn add(&self, placement: &coopr_placement::ShardPlacement) {
        use coopr_placement::ShardStatus;
        let mut dcs = self.dcs.lock().unwrap_or_else(|e| e.into_inner());
        dcs.insert(placement.owner.0.clone());
        dcs.extend(placement.replicas.iter().map(|dc| dc.0.clone()));
        match &placement.status {
            ShardStatus::Active => {}
            ShardStatus::Draining { to, .. }
            | ShardStatus::HandingOver { to, .. }
            | ShardStatus::TakingOver { to, .. } => {
                dcs.insert(to.0.clone());
            }
        }
        drop(dcs);
        self.added.notify_one();
    }

    /// The DCs added since the last call, once there is one (several changes in a row: each DC
    /// once).
    pub async fn next(&self) -> std::collections::BTreeSet<String> {
        loop {
            let taken = std::mem::take(&mut *self.dcs.lock().unwrap_or_else(|e| e.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.added.notified().await;
        }
    }
}

impl PlacementGroup {
    /// Starts this node's voter of the placement group on `stores` (`<data_dir>/placement` in
    /// production, see [`crate::Storage`]), timing leases and handovers on `clock`.
    pub async fn start(
        config: &ServerConfig,
        stores: RaftStores,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn coopr_raft::Transport>,
        raft_transport: Arc<dyn coopr_raft::Transport>,
    ) -> anyhow::Result<Arc<PlacementGroup>> {
        let id = config
            .placement_node_id
            .context("this node is not a placement member")?;
        let machine = Arc::new(PlacementMachine::new());
        let members: BTreeMap<u64, String> = config
            .placement_members
            .iter()
            .map(|(id, m)| {
                (
                    *id,
                    format!("{}{RAFT_PREFIX}", m.internal.trim_end_matches('/')),
                )
            })
            .collect();
        let secret = config.secret.clone().context("placement needs a secret")?;
        let mut raft_config = RaftConfig::new(id, members, secret.clone());
        raft_config.group = GROUP.into();
        let (min, max) = config.placement_election_timeout_ms;
        raft_config.election_timeout_min_ms = min;
        raft_config.election_timeout_max_ms = max;
        raft_config.heartbeat_interval_ms = (min / 3).max(10);
        raft_config.write_timeout_ms = config.write_timeout_ms;
        let raft = coopr_raft::start_with(raft_config, stores, machine.clone(), raft_transport)
            .await
            .context("cannot start the placement group")?;
        Ok(Arc::new(PlacementGroup {
            raft,
            machine,
            members: config.placement_members.clone(),
            secret,
            bootstrap: bootstrap_command(config),
            leader_since_ms: Mutex::new(None),
            failing_over: tokio::sync::Mutex::new(()),
            handover_timeout_ms: config.handover_timeout_ms,
            transport,
            // The leader answers a command within its own write bound: a forward cut short
            // of it answers "may have been applied" for commands that were (seen under load
            // with a 900 ms lease).
            call_timeout: Duration::from_millis(config.lease_ms.max(config.write_timeout_ms)),
            clock,
            wakes: Wakes::default(),
        }))
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    pub fn machine(&self) -> &PlacementMachine {
        &self.machine
    }

    /// The routes of the internal listener: the group's Raft RPCs and the placement calls.
    /// The nested Raft routes keep their own body limit (`coopr_raft::wire::MAX_RPC_BODY_BYTES`);
    /// the placement calls have axum's default (2 MB).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(RENEW_PATH, post(renew))
            .route(STATE_PATH, get(state))
            .route(COMMAND_PATH, post(command))
            .route(MAINTENANCE_PATH, post(maintenance))
            .with_state(self.clone())
            .nest(RAFT_PREFIX, coopr_raft::router(self.raft.clone()))
    }

    /// Proposes a command on the leader; the outcome as the state machine answered it.
    async fn propose(&self, command: &Command) -> Result<Outcome, WriteError> {
        let (_, bytes) = self
            .raft
            .write(PlacementMachine::encode_command(command))
            .await?;
        let outcome = PlacementMachine::decode_outcome(&bytes)
            .map_err(|e| WriteError::Fatal(e.to_string()))?;
        if let Ok(Reply::Shard { placement, .. }) = &outcome {
            self.wakes.add(placement);
        }
        Ok(outcome)
    }

    /// When this node started leading the group in the current term (monotonic ms).
    fn leader_since(&self) -> Option<u64> {
        let term = self.raft.status().term;
        self.leader_since_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(|(t, _)| *t == term)
            .map(|(_, since)| since)
    }

    /// When this node started leading the group (monotonic ms), taking up leadership now if
    /// it was just elected: the read barrier first makes the local state include every
    /// committed command. `None` if it does not lead. Leadership is per term: a node elected
    /// again starts counting again (grants of a leader in between are not its own).
    async fn ensure_leading(&self) -> Option<u64> {
        if !self.raft.is_leader() {
            return None;
        }
        if let Some(since) = self.leader_since() {
            return Some(since);
        }
        let term = self.raft.status().term;
        self.raft.read_barrier().await.ok()?;
        let mut since = self
            .leader_since_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if since.is_none_or(|(t, _)| t != term) {
            *since = Some((term, self.clock.mono_ms()));
            tracing::info!(term, "leading the placement group");
        }
        since.filter(|(t, _)| *t == term).map(|(_, at)| at)
    }

    /// The leader's duties: bootstrap the map once, complete handovers whose target caught
    /// up, abort those that ran out of time, fail over dead DCs. Runs on every voter, acts only
    /// on the leader.
    pub async fn run(self: Arc<Self>, tick: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.raft.is_leader() {
                *self
                    .leader_since_ms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                continue;
            }
            if self.ensure_leading().await.is_none() {
                continue;
            }
            if self.machine.state().is_none() {
                match self.propose(&self.bootstrap).await {
                    Ok(Ok(_)) => tracing::info!("placement group bootstrapped"),
                    Ok(Err(Rejected::AlreadyBootstrapped)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "placement bootstrap rejected"),
                    Err(e) => tracing::warn!(error = %e, "placement bootstrap not written"),
                }
                continue;
            }
            self.complete_handovers().await;
            self.abort_late_handovers().await;
            self.run_maintenance().await;
            self.fail_over().await;
        }
    }

    /// Failover (leader): asks a healthy replica to take over each shard of every DC whose
    /// lease expired (or replaces a candidate that did not answer in time), and completes the
    /// takeovers whose candidate reported its sealed copy. One pass at a time; the commands of
    /// a pass are proposed together (the group commits them in as few entries as it can: a
    /// dead DC's shards all move in one round trip, not one per shard).
    async fn fail_over(self: &Arc<Self>) {
        let Ok(_pass) = self.failing_over.try_lock() else {
            return;
        };
        let Some(since) = self.leader_since() else {
            return;
        };
        let commands = self
            .machine
            .read(|state| {
                state.map(|s| {
                    let now = self.clock.mono_ms();
                    let mut commands: Vec<Command> = dead_dcs(s, now, since)
                        .iter()
                        .flat_map(|dead| plan_failover(s, dead, now, since))
                        .collect();
                    commands.extend(plan_takeovers(s, now, since));
                    commands
                })
            })
            .unwrap_or_default();
        self.propose_failover_steps(commands).await;
    }

    /// Completes the takeovers `dc` just reported sealed copies for (leader, on its renewal).
    async fn complete_takeovers_of(self: &Arc<Self>, dc: &coopr_placement::DcId) {
        let Some(since) = self.leader_since() else {
            return;
        };
        let commands: Vec<Command> = self
            .machine
            .read(|state| state.map(|s| plan_takeovers(s, self.clock.mono_ms(), since)))
            .unwrap_or_default()
            .into_iter()
            .filter(|c| matches!(c, Command::Takeover { to, .. } if to == dc))
            .collect();
        self.propose_failover_steps(commands).await;
    }

    async fn propose_failover_steps(self: &Arc<Self>, commands: Vec<Command>) {
        let mut proposals = tokio::task::JoinSet::new();
        for command in commands {
            let group = self.clone();
            proposals.spawn(async move {
                let written = group.propose(&command).await;
                (command, written)
            });
        }
        while let Some(Ok((command, written))) = proposals.join_next().await {
            let what = match &command {
                Command::StartTakeover { .. } => "takeover started",
                _ => "shard taken over",
            };
            match written {
                Ok(Ok(Reply::Shard { shard, placement })) => {
                    tracing::warn!(%shard, owner = %placement.owner, epoch = %placement.epoch,
                        status = ?placement.status, "{what}");
                    if matches!(command, Command::Takeover { .. }) {
                        metrics::counter!("coopr_placement_takeovers_total").increment(1);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "failover step rejected"),
                Err(e) => tracing::warn!(error = %e, "failover step not written"),
            }
        }
    }

    /// Whether a handover waits for its target and replicas (status `handing_over`).
    fn handovers_pending(&self) -> bool {
        self.machine.read(|state| {
            state.is_some_and(|s| {
                s.shards()
                    .values()
                    .any(|p| matches!(p.status, coopr_placement::ShardStatus::HandingOver { .. }))
            })
        })
    }

    /// Completes every handover whose target and replicas have the final position (leader).
    async fn complete_handovers(&self) {
        let Some(since) = self.leader_since() else {
            return;
        };
        let commands = self
            .machine
            .read(|state| state.map(|s| plan_handover_completions(s, self.clock.mono_ms(), since)))
            .unwrap_or_default();
        for command in commands {
            match self.propose(&command).await {
                Ok(Ok(reply)) => tracing::info!(?reply, "handover completed"),
                Ok(Err(e)) => tracing::debug!(error = %e, "handover completion rejected"),
                Err(e) => tracing::warn!(error = %e, "handover completion not written"),
            }
        }
    }

    /// Aborts every handover that has run longer than `handover_timeout_ms` (leader): the owner
    /// writes the shard again after its next renewal. Runs after the completions of the same
    /// tick, so a handover that could complete does.
    async fn abort_late_handovers(&self) {
        let Some(since) = self.leader_since() else {
            return;
        };
        let timeout_ms = self.handover_timeout_ms;
        let commands = self
            .machine
            .read(|state| {
                state.map(|s| plan_handover_timeouts(s, timeout_ms, self.clock.mono_ms(), since))
            })
            .unwrap_or_default();
        for command in commands {
            // What it waited for: the owner's final position, or replicas that lacked it.
            let (status, waiting_for) = self
                .machine
                .read(|state| {
                    let Command::AbortHandover { shard, .. } = &command else {
                        return None;
                    };
                    let state = state?;
                    let placement = state.shard(*shard)?;
                    let waiting_for: Vec<String> = match &placement.status {
                        coopr_placement::ShardStatus::HandingOver { until, .. } => placement
                            .replicas
                            .iter()
                            .map(|dc| (dc, coopr_placement::watermark(state, dc, *shard)))
                            .filter(|(_, mark)| mark != until)
                            .map(|(dc, mark)| format!("{dc} at {mark}"))
                            .collect(),
                        _ => vec![format!("{} to freeze", placement.owner)],
                    };
                    Some((Some(placement.status.clone()), waiting_for))
                })
                .unwrap_or_default();
            match self.propose(&command).await {
                Ok(Ok(Reply::Shard { shard, placement })) => {
                    tracing::warn!(%shard, owner = %placement.owner, ?status, ?waiting_for,
                        timeout_ms, "handover ran out of time: aborted");
                    metrics::counter!("coopr_placement_handover_timeouts_total").increment(1);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "handover abort rejected"),
                Err(e) => tracing::warn!(error = %e, "handover abort not written"),
            }
        }
    }

    /// Planned maintenance (leader): hands the shards of drained DCs over, and the home shards of
    /// DCs failing back to them, a few at a time; ends failbacks with nothing left to move.
    async fn run_maintenance(&self) {
        let Some(since) = self.leader_since() else {
            return;
        };
        let commands = self
            .machine
            .read(|state| state.map(|s| plan_maintenance(s, self.clock.mono_ms(), since)))
            .unwrap_or_default();
        for command in commands {
            match self.propose(&command).await {
                Ok(Ok(reply)) => tracing::info!(?command, ?reply, "maintenance step"),
                Ok(Err(e)) => tracing::debug!(error = %e, "maintenance step rejected"),
                Err(e) => tracing::warn!(error = %e, "maintenance step not written"),
            }
        }
    }

    /// The moves of `dc`'s drain (or failback) in `state`, for the leader elected at `since`.
    fn maintenance_plan(
        &self,
        state: &coopr_placement::PlacementState,
        dc: &DcId,
        undrain: bool,
        since: u64,
    ) -> Vec<PlannedMove> {
        let now = self.clock.mono_ms();
        if undrain {
            failback_plan(state, dc, now, since)
        } else {
            drain_plan(state, dc, now, since)
        }
    }

    /// Initializes the group once its members answer (retrying), unless it already is.
    pub async fn initialize(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.raft.initialize_if_needed().await {
                Ok(_) => return,
                Err(e) => tracing::info!(error = %e, "placement group not initialized yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Runs `command` at the placement leader: here if this node leads, else forwarded once.
    async fn at_leader(&self, headers: &HeaderMap, path: &str, body: Bytes) -> Response {
        if headers.contains_key(FORWARDED_HEADER) {
            return unavailable(
                "not_leader",
                "forwarded to a node that does not lead".into(),
            );
        }
        let leader = self.raft.status().leader;
        let Some(member) = leader.and_then(|id| self.members.get(&id)) else {
            return unavailable("no_leader", "the placement group has no leader".into());
        };
        let url = format!("{}{path}", member.internal.trim_end_matches('/'));
        let call = coopr_raft::Call::post(&url, body)
            .header(SECRET_HEADER, &self.secret)
            .header(FORWARDED_HEADER, "1")
            .header("content-type", "application/json")
            .timeout(self.call_timeout);
        match self.transport.call(call).await {
            Ok(answer) => (
                answer.status,
                [("content-type", "application/json")],
                answer.body,
            )
                .into_response(),
            Err(e) if e.not_delivered() => unavailable(
                "leader_unreachable",
                format!("cannot reach the placement leader: {e}"),
            ),
            // Sent, but no answer: the command may have been applied.
            Err(e) => unavailable(
                "placement_no_answer",
                format!(
                    "the placement leader did not answer (the command may have been applied): {e}"
                ),
            ),
        }
    }
}

/// The bootstrap command every voter would propose: the data DCs (sorted by name) as voters,
/// placement members of other DCs as witnesses.
pub fn bootstrap_command(config: &ServerConfig) -> Command {
    let map = config.initial_map();
    let mut dcs: Vec<Dc> = map.dcs().iter().map(|d| Dc::voter(d)).collect();
    for member in config.placement_members.values() {
        if !dcs.iter().any(|dc| dc.id.0 == member.dc) {
            dcs.push(Dc::witness(&member.dc));
        }
    }
    Command::Bootstrap {
        dcs,
        shard_count: config.shard_count,
        lease_ms: config.lease_ms,
        max_clock_offset_ms: config.max_clock_offset_ms,
    }
}

fn unavailable(code: &str, message: String) -> Response {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
    e.retry_after_s = Some(1);
    e.into_response()
}

/// The JSON body of an internal call that carries the cluster secret, or the answer refusing
/// it (401, or 400 for a body that does not parse).
fn authorized_json<T: serde::de::DeserializeOwned>(
    group: &PlacementGroup,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    if let Some(response) = unauthorized(group, headers) {
        return Err(Box::new(response));
    }
    crate::api::extract::parse_json(body).map_err(|e| Box::new(e.into_response()))
}

/// `None` when the call carries the cluster secret, else the 401 to answer.
fn unauthorized(group: &PlacementGroup, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    (!coopr_raft::same_secret(given, group.secret.as_bytes()))
        .then(|| ApiError::unauthorized("wrong or missing cluster secret").into_response())
}

/// The answer to a proposal: 200 with the outcome (accepted or rejected: both are decided).
fn outcome_response(written: Result<Outcome, WriteError>) -> Response {
    match written {
        Ok(outcome) => axum::Json(outcome).into_response(),
        Err(WriteError::ForwardToLeader { .. }) => {
            unavailable("not_leader", "placement leadership moved".into())
        }
        Err(e) => unavailable("no_quorum", format!("placement write failed: {e}")),
    }
}

async fn renew(
    State(group): State<Arc<PlacementGroup>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: RenewRequest = match authorized_json(&group, &headers, &body) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    if !group.raft.is_leader() {
        return group.at_leader(&headers, RENEW_PATH, body).await;
    }
    // A leader just elected grants at once (its run loop may not have ticked yet).
    if group.ensure_leading().await.is_none() {
        return unavailable(
            "leader_starting",
            "the placement leader is taking up its duties".into(),
        );
    }
    // The grantor's clock starts now, after the holder started its own (see `holder`).
    let reports_progress = !request.frozen.is_empty();
    let reports_seal = !request.sealed.is_empty();
    let dc = coopr_placement::DcId::new(request.dc);
    let command = Command::RenewLease {
        dc: dc.clone(),
        now_ms: group.clock.mono_ms(),
        watermarks: request.watermarks,
        frozen: request.frozen,
        sealed: request.sealed,
    };
    let mut written = group.propose(&command).await;
    // A renewal may be what a handover waited for (the final position, a replica's watermark):
    // complete it now rather than at the next tick.
    if written.is_ok() && (reports_progress || group.handovers_pending()) {
        group.complete_handovers().await;
    }
    // A sealed copy completes its takeover now, and the grant answering this renewal already
    // lists the shard as writable (the same lease: only ownership it gained is added).
    if matches!(written, Ok(Ok(_))) && reports_seal {
        group.complete_takeovers_of(&dc).await;
        if let Some(grant) = group.machine.read(|s| s.map(|s| s.grant_for(&dc))) {
            written = Ok(Ok(Reply::LeaseGranted { grant }));
        }
    }
    outcome_response(written)
}

async fn command(
    State(group): State<Arc<PlacementGroup>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut command: Command = match authorized_json(&group, &headers, &body) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    // Only the administrative commands come from outside; the rest are the group's own.
    if !matches!(
        command,
        Command::StartHandover { .. } | Command::AbortHandover { .. } | Command::SetReplicas { .. }
    ) {
        return ApiError::bad_request(
            "command_not_allowed",
            "only start_handover, abort_handover and set_replicas may be sent",
        )
        .into_response();
    }
    if !group.raft.is_leader() {
        return group.at_leader(&headers, COMMAND_PATH, body).await;
    }
    // Times in the log are the proposing leader's: a handover starts on its clock.
    if let Command::StartHandover {
        now_ms,
        leader_since_ms,
        ..
    } = &mut command
    {
        let Some(since) = group.ensure_leading().await else {
            return unavailable(
                "leader_starting",
                "the placement leader is taking up its duties".into(),
            );
        };
        *leader_since_ms = since;
        *now_ms = group.clock.mono_ms();
    }
    outcome_response(group.propose(&command).await)
}

/// Drains or undrains a DC at the leader: proposes the mark (or, dry, applies it to a copy of
/// the state) and answers the plan as it stands afterwards.
async fn maintenance(
    State(group): State<Arc<PlacementGroup>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: MaintenanceRequest = match authorized_json(&group, &headers, &body) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    if !group.raft.is_leader() {
        return group.at_leader(&headers, MAINTENANCE_PATH, body).await;
    }
    let Some(since) = group.ensure_leading().await else {
        return unavailable(
            "leader_starting",
            "the placement leader is taking up its duties".into(),
        );
    };
    let Some(mut state) = group.machine.state() else {
        return unavailable(
            "not_bootstrapped",
            "the placement group is not bootstrapped yet".into(),
        );
    };
    let dc = DcId::new(request.dc);
    let command = if request.undrain {
        Command::UndrainDc { dc: dc.clone() }
    } else {
        Command::DrainDc { dc: dc.clone() }
    };
    let outcome = if request.dry_run {
        state.apply(&command)
    } else {
        match group.propose(&command).await {
            Ok(outcome) => {
                if let Some(now) = group.machine.state() {
                    state = now;
                }
                outcome
            }
            Err(e) => return outcome_response(Err(e)),
        }
    };
    let plan = group.maintenance_plan(&state, &dc, request.undrain, since);
    axum::Json(MaintenanceAnswer { outcome, plan }).into_response()
}

async fn state(State(group): State<Arc<PlacementGroup>>, headers: HeaderMap) -> Response {
    if let Some(response) = unauthorized(&group, &headers) {
        return response;
    }
    match group.machine.state() {
        Some(state) => axum::Json(state).into_response(),
        None => unavailable(
            "not_bootstrapped",
            "the placement group is not bootstrapped yet".into(),
        ),
    }
}
