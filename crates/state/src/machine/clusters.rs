//! Cluster commands: creates (with the quota check), operations, added services, expiry,
//! template sync, abort/pause/resume; and what a tenant uses across the DCs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use coopr_engine::job::{cluster_status_after, JobEffect, JobRun};
use coopr_engine::planner::{plan, PlanInput, PlannedTask};
use coopr_types::{
    Account, Cluster, ClusterAction, ClusterId, ClusterStatus, ClusterTemplate, JobId, JobStatus,
    Node, NodeId, NodeProperties, ShardId, ShortStr, Tenant,
};

use super::ClusterRecord;
use crate::command::{ClusterSpec, CommandResult, Outcome};
use crate::replication::ReplicaData;
use crate::{CommandError, ErrorCode, State, TenantCatalog};

impl State {
    /// The clusters and nodes a tenant's incarnation has that are not terminated, in every
    /// shard this DC holds: its own and its replica copies of the others (which may lag their
    /// owners; [`State::create_cluster`] explains why the quota check is still exact). Visits
    /// only the tenant's live clusters (the tenant indexes).
    pub fn tenant_usage(&self, tenant: &Tenant) -> (u64, u64) {
        let belongs = |incarnation: &str| incarnation.is_empty() || incarnation == tenant.id;
        let owned = self
            .by_tenant
            .of_tenant(&tenant.name)
            .filter(|(incarnation, _)| belongs(incarnation))
            .flat_map(|(_, group)| group.live())
            .filter_map(|(shard, id)| self.shards.get(shard)?.clusters.get(id))
            .map(|r| &r.cluster);
        let copies = self
            .copies_by_tenant()
            .of_tenant(&tenant.name)
            .filter(|(incarnation, _)| belongs(incarnation))
            .flat_map(|(_, group)| group.live())
            .filter_map(|(shard, id)| match &self.replicas.get(shard)?.data {
                ReplicaData::Clusters(view) => view.clusters.get(id).map(|v| &v.cluster),
                ReplicaData::Global(_) => None,
            });
        // The index narrows the candidates; the test is the one a scan of every cluster made.
        owned
            .chain(copies)
            .filter(|c| c.account.belongs_to(tenant) && c.status != ClusterStatus::Terminated)
            .fold((0, 0), |(c, n), cluster| {
                (c + 1, n + cluster.nodes.len() as u64)
            })
    }

    /// Live clusters of the shards this DC writes whose tenant no longer exists, or exists as a
    /// later incarnation: created at this DC while another DC deleted the tenant, before the
    /// deletion reached here. The job driver deletes them (`server/src/driver.rs`). Clusters in
    /// an operation are left until it ends. In shard order, then cluster id order. Visits only
    /// the live clusters of tenants (or incarnations) that no longer exist (the tenant index).
    pub fn orphaned_clusters(&self) -> Vec<ClusterId> {
        let global = self.global_data();
        let mut orphans: Vec<(ShardId, ClusterId)> = self
            .by_tenant
            .groups()
            .filter(|(name, incarnation, _)| {
                !global
                    .tenants
                    .get(*name)
                    .is_some_and(|t| incarnation.is_empty() || *incarnation == t.id)
            })
            .flat_map(|(_, _, group)| group.live().copied())
            .filter(|(shard, id)| {
                let Some(r) = self.shards.get(shard).and_then(|s| s.clusters.get(id)) else {
                    return false;
                };
                let c = &r.cluster;
                c.status != ClusterStatus::Terminated
                    && c.status != ClusterStatus::Pending
                    && !global
                        .tenants
                        .get(c.account.tenant_id.as_str())
                        .is_some_and(|t| c.account.belongs_to(t))
                    // A delete that failed is not retried in a loop: the cluster stays listed
                    // for the operator (admin API) like any failed delete.
                    && !r.latest_summary().is_some_and(|j| {
                        j.action == coopr_types::ClusterAction::ClusterDelete
                            && j.status == coopr_types::JobStatus::Failed
                    })
            })
            .collect();
        // The groups come by tenant: back to the order of a scan of the shards.
        orphans.sort_unstable();
        orphans.into_iter().map(|(_, id)| id).collect()
    }

    /// Quotas hold across the deployment: a tenant with a finite quota creates clusters only
    /// at the DC that writes the global shard (the API forwards such creates there), so its
    /// creates are ordered in one log, and every other DC's clusters of the tenant are in this
    /// DC's replica copies (deletes reach it late, which only makes the check stricter). What
    /// remains is documented in ARCHITECTURE.md: right after the global shard moved, the new
    /// owner may not have the old owner's newest creates yet.
    pub(super) fn create_cluster(
        &mut self,
        shard: ShardId,
        spec: &ClusterSpec,
        now: u64,
    ) -> CommandResult {
        let tenant = self.require_tenant(&spec.tenant)?.clone();
        if !spec.tenant_incarnation.is_empty() && spec.tenant_incarnation != tenant.id {
            return Err(CommandError::conflict(
                ErrorCode::TenantChanged,
                format!(
                    "tenant {} was deleted and created again since the request was checked",
                    tenant.name
                ),
            ));
        }
        let limited = tenant.max_clusters != coopr_types::UNLIMITED
            || tenant.max_nodes != coopr_types::UNLIMITED;
        if limited && self.replicas.contains_key(&ShardId::GLOBAL) {
            return Err(CommandError::conflict(
                ErrorCode::QuotaElsewhere,
                format!(
                    "tenant {} has a quota: its clusters are created at the datacenter that owns the global shard",
                    tenant.name
                ),
            ));
        }
        // Only a tenant with a quota counts its clusters (an unlimited one could not exceed
        // 2^31 clusters anyway).
        let (live_clusters, live_nodes) = if limited {
            self.tenant_usage(&tenant)
        } else {
            (0, 0)
        };
        if live_clusters + 1 > u64::from(tenant.max_clusters) {
            return Err(CommandError::QuotaExceeded {
                tenant: tenant.name,
                message: format!("maxClusters is {}", tenant.max_clusters),
            });
        }
        if live_nodes + spec.nodes.len() as u64 > u64::from(tenant.max_nodes) {
            return Err(CommandError::QuotaExceeded {
                tenant: tenant.name,
                message: format!(
                    "maxNodes is {} and {live_nodes} are in use",
                    tenant.max_nodes
                ),
            });
        }
        // The catalog as this DC reads it (the owner's copy when another DC owns the global
        // shard): reading only the local global shard planned no service tasks at all there.
        let service_defs = self
            .global_data()
            .catalogs
            .get(&spec.tenant)
            .map(TenantCatalog::services)
            .unwrap_or_default();
        let service_defs = self.service_pool.intern_defs(service_defs);
        let template = self
            .service_pool
            .intern_template(Arc::new(spec.template.clone()));
        let provider = self
            .service_pool
            .intern_provider(Arc::new(spec.provider.clone()));
        let shard_count = self.shard_count;
        let Some(shard_state) = self.shards.get_mut(&shard).map(Arc::make_mut) else {
            return Err(CommandError::invalid(
                ErrorCode::InvalidShard,
                format!("shard {shard} does not exist"),
            ));
        };
        let id = ClusterId::allocate(shard, shard_count, shard_state.next_n);
        shard_state.next_n += 1;

        let host_prefix: String = spec
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
            .to_lowercase();
        let domain = if spec.dns_suffix.is_empty() {
            "local"
        } else {
            spec.dns_suffix.as_str()
        };
        let automators: Vec<ShortStr> = {
            let mut set = BTreeSet::new();
            for s in &spec.services {
                if let Some(def) = service_defs.get(s) {
                    set.extend(def.provisioner.actions.values().map(|a| a.plugin.clone()));
                }
            }
            set.iter().map(ShortStr::from).collect()
        };
        let nodes: coopr_types::VecMap<NodeId, Node> = spec
            .nodes
            .iter()
            .map(|n| {
                let node_id = NodeId::derive(id, n.nodenum);
                let node = Node {
                    id: node_id.clone(),
                    cluster_id: id,
                    properties: NodeProperties {
                        hostname: format!("{host_prefix}{}-{}.{domain}", id.0, n.nodenum).into(),
                        ipaddresses: BTreeMap::new(),
                        nodenum: n.nodenum,
                        hardwaretype: ShortStr::from(&n.hardwaretype),
                        imagetype: ShortStr::from(&n.imagetype),
                        flavor: ShortStr::from(&n.flavor),
                        image: ShortStr::from(&n.image),
                        sshuser: ShortStr::from(&n.sshuser),
                        services: n.services.iter().map(ShortStr::from).collect(),
                        automators: automators.clone(),
                    },
                    actions: Vec::new(),
                    provisioner_results: Default::default(),
                };
                (node_id, node)
            })
            .collect();
        let expire_time = if spec.initial_lease_ms > 0 {
            now.saturating_add(spec.initial_lease_ms)
        } else {
            0
        };
        let cluster = Cluster {
            id,
            name: spec.name.clone(),
            description: spec.description.clone(),
            account: Account {
                user_id: ShortStr::from(&spec.user),
                tenant_id: ShortStr::from(&spec.tenant),
                tenant_incarnation: tenant.id.clone(),
            },
            create_time: now,
            expire_time,
            provider,
            cluster_template: template,
            hardwaretype: ShortStr::from(&spec.hardwaretype),
            imagetype: ShortStr::from(&spec.imagetype),
            dns_suffix: spec.dns_suffix.clone(),
            nodes: nodes.keys().cloned().collect(),
            services: spec.services.iter().map(ShortStr::from).collect(),
            latest_job_id: None,
            status: ClusterStatus::Pending,
            config: spec.config.clone(),
            message: None,
        };
        let record = ClusterRecord {
            cluster,
            nodes,
            jobs: coopr_types::VecMap::new(),
            next_job_seq: 1,
            service_defs,
            shipped: None,
            adopted_jobs: coopr_types::VecMap::new(),
            retired_jobs: coopr_types::VecMap::new(),
        };
        self.by_tenant
            .set(shard, id, &record.cluster.account, record.cluster.status);
        shard_state.clusters.insert(id, Arc::new(record));
        // Coopr runs a solve_layout job first; here the layout was solved before the command was
        // proposed, so that job is recorded as already complete.
        let solve = JobId {
            cluster: id,
            seq: 1,
        };
        let layout_run = JobRun::new(
            solve,
            ClusterAction::SolveLayout,
            Vec::new(),
            Vec::new(),
            None,
            now,
        );
        let record = self.cluster_mut(id)?;
        record.jobs.insert(1, layout_run);
        record.next_job_seq = 2;
        self.begin_job(id, ClusterAction::ClusterCreate, Vec::new(), None, now)?;
        Ok(Outcome::ClusterCreated { id })
    }

    pub(super) fn start_operation(
        &mut self,
        cluster: ClusterId,
        action: ClusterAction,
        services: &[String],
        config: Option<coopr_types::JsonMap>,
        now: u64,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        let status = record.cluster.status;
        match action {
            ClusterAction::ClusterDelete => match status {
                ClusterStatus::Terminated => return Ok(Outcome::Unchanged),
                ClusterStatus::Pending => {
                    return Err(CommandError::conflict(
                        ErrorCode::ClusterPending,
                        "cluster has an operation in progress",
                    ))
                }
                _ => {}
            },
            ClusterAction::ClusterConfigure | ClusterAction::ClusterConfigureWithRestart => {
                if !matches!(status, ClusterStatus::Active | ClusterStatus::Inconsistent) {
                    return Err(CommandError::conflict(
                        ErrorCode::ClusterNotActive,
                        format!("cluster is {status}"),
                    ));
                }
            }
            ClusterAction::StartServices
            | ClusterAction::StopServices
            | ClusterAction::RestartServices => {
                if status != ClusterStatus::Active {
                    return Err(CommandError::conflict(
                        ErrorCode::ClusterNotActive,
                        format!("cluster is {status}"),
                    ));
                }
                if let Some(unknown) = services
                    .iter()
                    .find(|s| !record.cluster.services.iter().any(|c| c == *s))
                {
                    return Err(CommandError::not_found("service", unknown));
                }
            }
            other => {
                return Err(CommandError::invalid(
                    ErrorCode::InvalidAction,
                    format!("{other} is not started this way"),
                ))
            }
        }
        if let Some(running) = record.running_job() {
            return Err(CommandError::conflict(
                ErrorCode::JobInProgress,
                format!("job {} is still {}", running.job.id, running.job.status),
            ));
        }
        // begin_job cannot fail now (the cluster exists, no job runs), so the config change is
        // not left behind by a rejected command.
        if let Some(config) = &config {
            record.cluster.config = config.clone();
        }
        self.begin_job(cluster, action, services.to_vec(), config, now)
    }

    pub(super) fn add_services(
        &mut self,
        cluster: ClusterId,
        services: &[String],
        placement: &BTreeMap<NodeId, Vec<String>>,
        now: u64,
    ) -> CommandResult {
        // The added services are planned with their current definitions: a service
        // written to the catalog after the cluster was created is not in the cluster's
        // snapshot yet, and without a definition no task would be planned for it.
        let current_defs = self
            .cluster(cluster)
            .and_then(|r| {
                self.global_data()
                    .catalogs
                    .get(r.cluster.account.tenant_id.as_str())
            })
            .map(TenantCatalog::services)
            .unwrap_or_default();
        let current_defs = self.service_pool.intern_all(current_defs);
        let record = self.cluster_mut(cluster)?;
        if record.cluster.status != ClusterStatus::Active {
            return Err(CommandError::conflict(
                ErrorCode::ClusterNotActive,
                "services can be added only to an active cluster",
            ));
        }
        if let Some(running) = record.running_job() {
            return Err(CommandError::conflict(
                ErrorCode::JobInProgress,
                format!("job {} is still {}", running.job.id, running.job.status),
            ));
        }
        // Check every node before changing any, so a rejected command changes nothing.
        if let Some(unknown) = placement.keys().find(|n| !record.nodes.contains_key(*n)) {
            return Err(CommandError::not_found("node", unknown));
        }
        for (node_id, added) in placement {
            let Some(node) = record.nodes.get_mut(node_id) else {
                continue;
            };
            for service in added {
                if !node.properties.services.iter().any(|s| s == service) {
                    node.properties.services.push(ShortStr::from(service));
                }
            }
        }
        for service in services {
            if !record.cluster.services.iter().any(|s| s == service) {
                record.cluster.services.push(ShortStr::from(service));
            }
            if let Some(def) = current_defs.get(service) {
                Arc::make_mut(&mut record.service_defs).insert(service.clone(), def.clone());
            }
        }
        self.begin_job(
            cluster,
            ClusterAction::AddServices,
            services.to_vec(),
            None,
            now,
        )
    }

    pub(super) fn set_expire_time(
        &mut self,
        cluster: ClusterId,
        expire_time: u64,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        record.cluster.expire_time = expire_time;
        self.emit_cluster_updated(cluster, false);
        Ok(Outcome::Done)
    }

    pub(super) fn sync_template(
        &mut self,
        cluster: ClusterId,
        template: &ClusterTemplate,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        if record.cluster.status != ClusterStatus::Active {
            return Err(CommandError::conflict(
                ErrorCode::ClusterNotActive,
                "template sync needs an active cluster",
            ));
        }
        let template = self
            .service_pool
            .intern_template(Arc::new(template.clone()));
        let record = self.cluster_mut(cluster)?;
        record.cluster.cluster_template = template;
        self.emit_cluster_updated(cluster, true);
        Ok(Outcome::Done)
    }

    /// Plans and records a new job for a cluster, which becomes PENDING while it runs.
    fn begin_job(
        &mut self,
        cluster: ClusterId,
        action: ClusterAction,
        services: Vec<String>,
        config: Option<coopr_types::JsonMap>,
        now: u64,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        if let Some(running) = record.running_job() {
            return Err(CommandError::conflict(
                ErrorCode::JobInProgress,
                format!("job {} is still {}", running.job.id, running.job.status),
            ));
        }
        let nodes: Vec<(NodeId, Vec<String>)> = record
            .nodes
            .values()
            .map(|n| {
                let services = n.properties.services.iter().map(String::from).collect();
                (n.id.clone(), services)
            })
            .collect();
        let stages: Vec<Vec<PlannedTask>> = plan(&PlanInput {
            action,
            nodes: &nodes,
            catalog_services: &record.service_defs,
            target_services: &services,
        });
        let id = JobId {
            cluster,
            seq: record.next_job_seq,
        };
        record.next_job_seq += 1;
        let run = JobRun::new(id, action, stages, services, config, now);
        record.cluster.latest_job_id = Some(id);
        let finished = run.job.status.is_finished();
        let success = run.job.status == JobStatus::Complete;
        record.jobs.insert(id.seq, run);
        if finished {
            record.cluster.status = cluster_status_after(action, success);
        } else {
            record.cluster.status = ClusterStatus::Pending;
        }
        self.refresh_job(id);
        self.emit_started(id);
        if finished {
            // A job with nothing to do is over as it starts.
            self.emit_finished(id);
        }
        Ok(Outcome::JobStarted { job: id })
    }

    pub(super) fn job_control(
        &mut self,
        cluster: ClusterId,
        now: u64,
        control: JobControl,
    ) -> CommandResult {
        let record = self.cluster_mut(cluster)?;
        let Some(seq) = record
            .jobs
            .values()
            .find(|j| !j.job.status.is_finished())
            .map(|j| j.job.id.seq)
        else {
            return Ok(Outcome::Unchanged);
        };
        let Some(run) = record.jobs.get_mut(&seq) else {
            return Ok(Outcome::Unchanged);
        };
        let mut effects = Vec::new();
        let changed = match control {
            JobControl::Abort => {
                effects = run.abort(now).map_err(|e| {
                    CommandError::conflict(ErrorCode::AbortNotSupported, e.to_string())
                })?;
                !effects.is_empty()
            }
            JobControl::Pause => run.pause(now),
            JobControl::Resume => run.resume(now),
        };
        let (id, action) = (run.job.id, run.job.action);
        apply_effects(record, action, &effects);
        self.refresh_job(id);
        if job_finished(&effects) {
            self.emit_finished(id);
        }
        Ok(if changed {
            Outcome::Done
        } else {
            Outcome::Unchanged
        })
    }
}

pub(super) fn job_finished(effects: &[JobEffect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, JobEffect::JobFinished { .. }))
}

pub(super) enum JobControl {
    Abort,
    Pause,
    Resume,
}

pub(super) fn apply_effects(
    record: &mut ClusterRecord,
    action: ClusterAction,
    effects: &[JobEffect],
) {
    for effect in effects {
        if let JobEffect::JobFinished {
            status,
            cluster_status,
        } = effect
        {
            record.cluster.status = *cluster_status;
            record.cluster.message =
                (*status == JobStatus::Failed).then(|| format!("{action} failed"));
        }
    }
}
