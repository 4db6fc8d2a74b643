//! The node's metrics: the process-wide Prometheus recorder and the gauges computed from the
//! state at scrape time (`GET /metrics`).

use std::sync::OnceLock;

use coopr_types::ClusterStatus;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::replication;

use crate::App;

impl App {
    /// How long the DC's lease as this node holds it lasts still on its own clock: how long it
    /// may acknowledge writes without a renewal (0 on followers, and once it ran out).
    pub fn lease_remaining_ms(&self) -> u64 {
        self.held_lease()
            .map_or(0, |held| held.lease.remaining_ms(self.clock.mono_ms()))
    }

    /// Sets the gauges that are computed from the state at scrape time.
    pub fn refresh_gauges(&self) {
        // Counts kept by the state's indexes: a scrape visits no cluster, so it holds the
        // state's lock for microseconds however many clusters there are.
        let state = self.core.read();
        let by_status = state.cluster_counts();
        for status in ClusterStatus::ALL {
            let n = by_status.get(status).copied().unwrap_or(0);
            metrics::gauge!("coopr_clusters", "status" => status.as_str()).set(n as f64);
        }
        metrics::gauge!("coopr_tasks_queued").set(state.queued_task_count() as f64);
        metrics::gauge!("coopr_provisioners").set(state.local.provisioners.len() as f64);
        metrics::gauge!("coopr_write_queue_in_flight").set(self.write_queue.in_flight() as f64);
        metrics::gauge!("coopr_log_applied_index").set(self.core.applied_index() as f64);
        let raft = self.core.raft().status();
        metrics::gauge!("coopr_raft_term").set(raft.term as f64);
        metrics::gauge!("coopr_raft_is_leader").set(if self.core.raft().is_leader() {
            1.0
        } else {
            0.0
        });
        let lag = raft
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(raft.last_applied.unwrap_or(0));
        metrics::gauge!("coopr_raft_apply_lag_entries").set(lag as f64);
        if self.config.multi_dc() {
            let remaining = self.lease_remaining_ms();
            metrics::gauge!("coopr_lease_remaining_ms").set(remaining as f64);
            let owned = self.placement().owned_by(&self.config.dc).count();
            metrics::gauge!("coopr_shards_owned").set(owned as f64);
        }
        if !self.config.remote_dcs.is_empty() {
            replication::refresh_gauges(
                &self.config.dc,
                &self.placement(),
                &state,
                &self.replication,
                self.clock.wall_ms(),
            );
        }
    }
}

/// The process-wide Prometheus recorder (several servers in one process share it).
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then this one renders nothing, which is
            // better than refusing to start.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
