//! The DC's side of the placement group: the lease its leader holds, fencing of writes, and
//! this node's copy of the shard map.
//!
//! ```text
//!  every lease/3, on every node:
//!    DC leader: t = clock.mono_ms(); POST renew {dc, replica watermarks} to a placement voter
//!               grant (sequence newer) -> HeldLease{grant, t}; map learns owners/epochs
//!    any node:  GET state from a placement voter -> map.merge (epochs only move forward)
//! ```
//!
//! Fencing, the use the write path makes of the lease, is in [`crate::write`].
//!
//! A new DC leader starts with no lease (it writes nothing until its own renewal is granted):
//! a grant answers the renewal of one leadership term only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coopr_placement::{
    Epoch, FrozenReport, HeldLease, Outcome, OwnedShard, PlacementState, Position, Reply,
    SealReport, Seq, TAKEOVER_PULL_MS,
};
use coopr_state::Command;
use coopr_types::ShardId;
use tokio::sync::watch;

use super::group::{RenewRequest, RENEW_PATH, STATE_PATH};
use crate::replication::SECRET_HEADER;
use crate::write::Held;
use crate::App;

/// Where a node is told that a shard change concerns its DC (`POST`, cluster secret).
pub const WAKE_PATH: &str = "/internal/placement/wake";
/// Bound of one wake call (it only wakes the lease loop; nobody waits for it).
const WAKE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> crate::api::routes::Routes {
    crate::api::routes::Routes::new("internal").route(
        WAKE_PATH,
        axum::routing::post(woken),
        &[(
            axum::http::Method::POST,
            "Placement: a shard change concerns this DC; renew the lease and refresh the map now (cluster secret)",
        )],
    )
}

/// `POST /internal/placement/wake`: the lease loop runs now (a renewal on the DC's leader, a
/// map refresh on every node). 204; 401 without the cluster secret.
async fn woken(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let known = app
        .config
        .secret
        .as_deref()
        .is_some_and(|secret| coopr_raft::same_secret(given, secret.as_bytes()));
    if !known {
        return crate::api::error::ApiError::unauthorized("wrong or missing cluster secret")
            .into_response();
    }
    metrics::counter!("coopr_placement_wakes_total").increment(1);
    app.renew_now.notify_one();
    axum::http::StatusCode::NO_CONTENT.into_response()
}

/// Tells the DCs a shard change committed by this node's placement voter concerns (see
/// [`super::group::Wakes`]): this node's lease loop directly, every other node of those DCs by
/// [`WAKE_PATH`], so that each renews (and refreshes its map) now instead of at its next tick.
/// A step of a handover or takeover is then seen a link delay after its commit.
pub async fn wake(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let Some(group) = app.placement_group.clone() else {
        return;
    };
    let secret = app.config.secret.clone().unwrap_or_default();
    loop {
        let dcs = tokio::select! {
            dcs = group.wakes.next() => dcs,
            _ = stop.wait_for(|s| *s) => return,
        };
        for dc in dcs {
            let nodes: Vec<String> = if dc == app.config.dc {
                app.renew_now.notify_one();
                app.config
                    .members
                    .values()
                    .filter(|m| m.node != app.config.node)
                    .map(|m| m.api.clone())
                    .collect()
            } else {
                app.config
                    .remote_dcs
                    .get(&dc)
                    .map(|nodes| nodes.iter().map(|m| m.api.clone()).collect())
                    .unwrap_or_default()
            };
            for api in nodes {
                let call = coopr_raft::Call::post(
                    format!("{}{WAKE_PATH}", api.trim_end_matches('/')),
                    Vec::new(),
                )
                .header(SECRET_HEADER, &secret)
                .timeout(WAKE_TIMEOUT);
                let transport = app.transport.clone();
                tokio::spawn(async move {
                    if let Err(e) = transport.call(call).await {
                        tracing::debug!(error = %e, "placement wake not delivered");
                    }
                });
            }
        }
    }
}

/// Renews the lease (DC leader) and refreshes the shard map (every node), every lease/3.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(app.config.lease_ms / 3);
    // Each placement call is bounded by a third of the lease (at least 200 ms).
    let client = Placement {
        app: &app,
        timeout: tick.max(Duration::from_millis(200)),
    };
    let voters = voter_urls(&app);
    let preferred = AtomicUsize::new(0);
    let mut leader = app.core.raft().watch_leader();
    let mut watching = true;
    loop {
        let status = app.core.raft().status();
        let mut granted = true;
        if app.core.raft().is_leader() {
            granted = renew(&app, &client, &voters, &preferred, status.term).await;
        } else {
            let mut lease = app.lease.lock().unwrap_or_else(|e| e.into_inner());
            if lease.take().is_some() {
                tracing::info!("not leading the DC log: lease dropped");
            }
        }
        refresh_map(&app, &client, &voters, &preferred).await;
        if app.core.raft().is_leader() {
            reconcile(&app).await;
        }
        // A refused renewal (placement election, a voter down) is retried soon: the lease
        // runs out after lease - offset, only three ticks.
        // While a handover to or from this DC runs, renew more often: each step waits for one.
        let pause = if !granted {
            tick.min(RENEW_RETRY)
        } else if failing_over(&app) {
            tick.min(FAILOVER_CADENCE)
        } else if in_handover(&app) {
            tick.min(HANDOVER_CADENCE)
        } else {
            tick
        };
        // A node that just became the DC's leader renews at once: it writes nothing before.
        // So does a leader whose ownership moved on (a freeze to report, a shard adopted or
        // released) or whose replica copy of a shard being handed over advanced.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = leader.changed(), if watching => watching = changed.is_ok(),
            _ = app.renew_now.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Whether a handover from or to this DC, or of a shard it holds a replica copy of, is in
/// progress (as the map last fetched says): each of its steps waits for a renewal (the
/// completion for every replica's report of the frozen position), so renewals come faster.
fn in_handover(app: &App) -> bool {
    let dc = app.config.dc.as_str();
    app.placement_state().is_some_and(|state| {
        state.shards().values().any(|p| match &p.status {
            coopr_placement::ShardStatus::Active
            | coopr_placement::ShardStatus::TakingOver { .. } => false,
            coopr_placement::ShardStatus::Draining { to, .. }
            | coopr_placement::ShardStatus::HandingOver { to, .. } => {
                p.owner.0 == dc || to.0 == dc || p.replicas.iter().any(|r| r.0 == dc)
            }
        })
    })
}

/// Whether another DC looks dead from here (its pulls fail: a takeover order may come with
/// the next grant) or a takeover to this DC runs: the order, the seal's report and the new
/// grant each ride on a renewal, and the map routing requests to the new owners on a refresh,
/// so both come at the failover cadence (the recovery time is the lease plus a few of them).
fn failing_over(app: &App) -> bool {
    let dc = app.config.dc.as_str();
    let taking_over = app.placement_state().is_some_and(|state| {
        state.shards().values().any(|p| {
            matches!(&p.status, coopr_placement::ShardStatus::TakingOver { to, .. } if to.0 == dc)
        })
    });
    // Only while the DC that looks dead still owns shards: once they moved, nothing waits.
    let map = app.placement();
    let suspect = map.dcs().iter().any(|other| {
        other != dc
            && app.replication.owner_unreachable(other)
            && map.owned_by(other).next().is_some()
    });
    taking_over || suspect
}

/// How soon a refused renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_millis(100);
/// The renewal cadence of a DC taking part in a handover (a stuck handover, e.g. waiting for a
/// replica DC that is down, costs the placement log four renewals a second per DC until it is
/// aborted).
const HANDOVER_CADENCE: Duration = Duration::from_millis(250);
/// The renewal (and map refresh) cadence while a DC that owns shards looks dead from here (it
/// costs the placement log ten renewals a second per DC until its shards have moved, within a
/// lease and a second).
const FAILOVER_CADENCE: Duration = Duration::from_millis(100);
/// How long this node remembers when it first saw a takeover order it is no longer given.
const TAKEOVERS_SEEN_KEPT_MS: u64 = 600_000;
/// How many shards' ownership changes [`reconcile`] has in the DC log at once.
const RECONCILE_IN_FLIGHT: usize = 64;

fn position(p: coopr_state::Position) -> Position {
    Position {
        epoch: Epoch(p.epoch),
        seq: Seq(p.seq),
    }
}

/// The position of every copy this DC holds of a shard another DC writes: its replica copies
/// (except one waiting for a snapshot: it holds nothing it can vouch for), and the start for a
/// shard the map says it replicates but of which nothing arrived yet (a shard never written:
/// a handover of it waits for that position).
fn watermarks(app: &App) -> BTreeMap<ShardId, Position> {
    let map = app.placement();
    let dc = app.config.dc.as_str();
    let state = app.core.read();
    let mut marks: BTreeMap<ShardId, Position> = state
        .replicas
        .iter()
        .filter(|(_, replica)| !replica.needs_seed)
        .map(|(shard, replica)| (*shard, position(replica.watermark)))
        .collect();
    for shard in map.shards() {
        if map.replicas(shard).any(|r| r == dc)
            && !state.replicas.contains_key(&shard)
            && !state.holds_writes(shard)
        {
            marks.insert(shard, position(coopr_state::Position::START));
        }
    }
    marks
}

/// The copies this DC sealed for the takeovers its grant orders, with where they end: the
/// takeover points it offers.
fn seal_reports(app: &App) -> BTreeMap<ShardId, SealReport> {
    let Some(held) = app.held_lease() else {
        return BTreeMap::new();
    };
    let state = app.core.read();
    held.lease
        .grant
        .taking_over
        .iter()
        .filter_map(|(shard, order)| {
            let replica = state.replicas.get(shard)?;
            (replica.sealed == Some(order.takeover) && !replica.needs_seed).then(|| {
                (
                    *shard,
                    SealReport {
                        takeover: order.takeover,
                        at: position(replica.watermark),
                    },
                )
            })
        })
        .collect()
}

/// The shards a handover froze here, with the last position written: the final position the
/// placement group waits for every replica to reach.
fn frozen_reports(app: &App) -> BTreeMap<ShardId, FrozenReport> {
    let Some(held) = app.held_lease() else {
        return BTreeMap::new();
    };
    let state = app.core.read();
    held.lease
        .grant
        .owned
        .iter()
        .filter_map(|(shard, owned)| {
            let OwnedShard::Frozen { handover, .. } = owned else {
                return None;
            };
            let data = state.shards.get(shard)?;
            (data.frozen == Some(*handover)).then(|| {
                let last = data.replication.history_position();
                (
                    *shard,
                    FrozenReport {
                        handover: *handover,
                        last: position(last),
                    },
                )
            })
        })
        .collect()
}

/// Brings the DC log in line with the lease and the map (DC leader, every tick):
/// - a shard the grant freezes is frozen here once no operation of it runs (new operations are
///   already refused by fencing; running ones finish first);
/// - a shard the grant lists writable again (its handover was aborted) is unfrozen;
/// - a shard the grant orders taken over is sealed here once the old owner's remaining records
///   are in (or it cannot be reached, or the bounded pull time is over); a seal whose order was
///   withdrawn is lifted;
/// - a shard granted at an epoch the local state does not write yet is adopted from the
///   replica copy (complete through the position the epoch started after), also when the
///   grant already freezes it for the next handover;
/// - a shard this DC wrote and the map now gives to another DC at a later epoch is demoted
///   into a replica copy: what it wrote after the new epoch's start goes to the
///   lost-operations report (nothing, after a graceful handover).
async fn reconcile(app: &Arc<App>) {
    let Some(held) = app.held_lease() else {
        return;
    };
    let epoch_starts = app
        .placement_state()
        .map(|p| super::reconcile::epoch_starts(&p))
        .unwrap_or_default();
    let map = app.placement();
    let commands = {
        let state = app.core.read();
        let inputs = super::reconcile::Inputs {
            dc: &app.config.dc,
            state: &state,
            grant: &held.lease.grant,
            epoch_starts: &epoch_starts,
            map: &map,
        };
        super::reconcile::ownership_commands(&inputs, |shard, order| {
            let watermark = state.replica(shard).map(|r| r.watermark);
            ready_to_seal(app, shard, order, watermark)
        })
    };
    // A shard's commands go in order, different shards' together: a failover's seals and
    // adoptions of hundreds of shards then share the DC log's appends and flushes (group
    // commit) instead of taking one round each, and the lease loop, which renews, waits for
    // the slowest shard rather than for their sum.
    let mut by_shard: BTreeMap<Option<ShardId>, Vec<Command>> = BTreeMap::new();
    for command in commands {
        by_shard
            .entry(super::reconcile::command_target(&command))
            .or_default()
            .push(command);
    }
    let mut proposals = tokio::task::JoinSet::new();
    for commands in by_shard.into_values() {
        if proposals.len() >= RECONCILE_IN_FLIGHT {
            proposals.join_next().await;
        }
        let app = Arc::clone(app);
        proposals.spawn(async move {
            for command in commands {
                propose_ownership(&app, command).await;
            }
        });
    }
    while proposals.join_next().await.is_some() {}
}

/// Proposes one ownership change of [`reconcile`] and logs how it went.
async fn propose_ownership(app: &App, command: Command) {
    let what = format!("{command:?}");
    match app.propose_system(command, None).await {
        Ok(Ok(outcome)) => {
            tracing::info!(command = %what, ?outcome, "ownership change applied");
            // Report it (a freeze's final position, a seal) or start writing without
            // waiting.
            app.renew_now.notify_one();
        }
        Ok(Err(e)) => {
            tracing::info!(command = %what, error = %e, "ownership change not applied yet")
        }
        Err(e) => tracing::warn!(command = %what, error = %e, "ownership change not written"),
    }
}

/// Whether this DC, ordered to take `shard` over, has what it can get of the old epoch: the
/// old owner answered after the order came and the copy was caught up, or the old owner cannot
/// be reached, or the bounded pull time ([`TAKEOVER_PULL_MS`]) since the order came is over.
/// `watermark`: this DC's copy's position (read by the caller, which holds the state).
fn ready_to_seal(
    app: &App,
    shard: ShardId,
    order: &coopr_placement::TakeoverOrder,
    watermark: Option<coopr_state::Position>,
) -> bool {
    let now = app.clock.mono_ms();
    let seen = {
        let mut seen = app.takeovers_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|(_, takeover), at| {
            *takeover == order.takeover || now.saturating_sub(*at) < TAKEOVERS_SEEN_KEPT_MS
        });
        *seen.entry((shard, order.takeover)).or_insert(now)
    };
    if now.saturating_sub(seen) >= TAKEOVER_PULL_MS {
        return true;
    }
    if app.replication.owner_unreachable(&order.from.0) {
        return true;
    }
    let stream = app.replication.stream(shard);
    stream.caught_up_at.is_some_and(|at| at > seen) && stream.owner_last == watermark
}

/// How the lease loop calls the placement voters: through the node's transport, with the
/// cluster secret and a timeout.
struct Placement<'a> {
    app: &'a App,
    timeout: Duration,
}

impl Placement<'_> {
    fn call(&self, call: coopr_raft::Call) -> coopr_raft::Call {
        call.header(
            SECRET_HEADER,
            self.app.config.secret.as_deref().unwrap_or_default(),
        )
        .timeout(self.timeout)
    }

    async fn send(
        &self,
        call: coopr_raft::Call,
    ) -> Result<coopr_raft::Answer, coopr_raft::CallError> {
        self.app.transport.call(self.call(call)).await
    }
}

/// Sends one renewal (to each voter in turn until one answers); whether a grant came back.
async fn renew(
    app: &App,
    client: &Placement<'_>,
    voters: &[String],
    preferred: &AtomicUsize,
    term: u64,
) -> bool {
    let request = RenewRequest {
        dc: app.config.dc.clone(),
        watermarks: watermarks(app),
        frozen: frozen_reports(app),
        sealed: seal_reports(app),
    };
    // The holder's timer starts before the request leaves.
    let started = app.clock.mono_ms();
    let first = preferred.load(Ordering::Relaxed);
    for i in 0..voters.len() {
        let n = (first + i) % voters.len();
        let url = format!("{}{RENEW_PATH}", voters[n]);
        let answer = client.send(coopr_raft::Call::json(&url, &request)).await;
        let outcome = match answer {
            Ok(r) if r.status.is_success() => r.json::<Outcome>(),
            Ok(r) => {
                let status = r.status;
                let body = String::from_utf8_lossy(&r.body);
                let body = &body[..body.len().min(300)];
                tracing::debug!(%url, %status, body, "lease renewal refused");
                continue;
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "placement voter unreachable");
                continue;
            }
        };
        match outcome {
            Ok(Ok(Reply::LeaseGranted { grant })) => {
                preferred.store(n, Ordering::Relaxed);
                take_grant(app, grant, started, term);
                return true;
            }
            Ok(other) => {
                tracing::warn!(?other, "lease renewal answered without a grant");
                return false;
            }
            Err(e) => tracing::debug!(%url, error = %e, "unreadable renewal answer"),
        }
    }
    metrics::counter!("coopr_lease_renewals_failed_total").increment(1);
    false
}

fn take_grant(app: &App, grant: coopr_placement::LeaseGrant, started: u64, term: u64) {
    {
        let map = grant.map.clone();
        app.update_map(|m| {
            let mut changed = false;
            for (shard, owner) in &map {
                changed |= m.learn_owner(*shard, &owner.dc.0, owner.epoch.0);
            }
            changed
        });
    }
    let mut lease = app.lease.lock().unwrap_or_else(|e| e.into_inner());
    match lease.as_mut() {
        Some(held) if held.term == term => {
            let lost = held.lease.update(grant, started);
            if !lost.is_empty() {
                tracing::warn!(?lost, "lease no longer lets this DC write these shards");
            }
        }
        _ => {
            tracing::info!(
                owned = grant.owned.len(),
                sequence = grant.sequence,
                "lease granted"
            );
            *lease = Some(Held {
                term,
                lease: HeldLease::new(grant, started),
            });
        }
    }
    metrics::counter!("coopr_lease_renewals_total").increment(1);
}

/// Refreshes the shard map from the placement group now (a DC answered that it lost a shard).
pub async fn refresh_now(app: &App) {
    let voters = voter_urls(app);
    let client = Placement {
        app,
        timeout: Duration::from_secs(30),
    };
    refresh_map(app, &client, &voters, &AtomicUsize::new(0)).await;
}

fn voter_urls(app: &App) -> Vec<String> {
    app.config
        .placement_members
        .values()
        .map(|m| m.internal.trim_end_matches('/').to_string())
        .collect()
}

async fn refresh_map(
    app: &App,
    client: &Placement<'_>,
    voters: &[String],
    preferred: &AtomicUsize,
) {
    let first = preferred.load(Ordering::Relaxed);
    for i in 0..voters.len() {
        let url = format!("{}{STATE_PATH}", voters[(first + i) % voters.len()]);
        let Ok(answer) = client.send(coopr_raft::Call::get(&url)).await else {
            continue;
        };
        if !answer.status.is_success() {
            continue;
        }
        if let Ok(state) = answer.json::<PlacementState>() {
            app.update_map(|m| m.merge(&state));
            app.set_placement_state(state);
            return;
        }
    }
}
