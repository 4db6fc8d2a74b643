//! Derived indexes (never persisted: rebuilt on load, like the ready queue) that keep the
//! questions asked on every task take, every driver tick and every API read of a tenant's
//! clusters off full scans of the state:
//!
//! - [`TaskIndex`]: the in-progress tasks of unfinished jobs, by owner and by deadline
//!   (`next_deadline`, `task_held_by_worker`, `tasks_held_by`). Maintained by
//!   `State::refresh_job`, the one place that re-derives a job after any change.
//! - [`TenantIndex`]: the clusters by tenant and incarnation, live and terminated apart, and
//!   their count by status, of the shards this DC writes and (a second index) of its replica
//!   copies (`orphaned_clusters`, `tenant_usage`, and what the API lists and counts:
//!   [`State::tenant_clusters`], [`State::tenant_copies`], [`State::cluster_counts`]). An
//!   owned cluster's status only changes with a job change, so `refresh_job` keeps it too;
//!   records come and go with whole shards (`State::replace_shard`) and replica copies with
//!   their batches, seeds, demotions and adoptions (`State::put_replica`,
//!   `State::put_replica_batch`; built on first use, since a loader sets the copies whole).
//!
//! [`State::check_indexes`] recomputes every derived index by full scans and compares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use coopr_types::{Account, ClusterId, ClusterStatus, JobId, ShardId, ShortStr, TaskId, TaskOwner};

use super::{ClusterShard, State};
use crate::replication::{ClusterShardView, ReplicaData, ReplicaShard};

/// Who holds an in-progress task and until when.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Held {
    provisioner: String,
    worker: String,
    deadline_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ProvisionerTasks {
    /// Tasks held by all its workers together.
    count: usize,
    workers: BTreeMap<String, BTreeSet<TaskId>>,
}

/// The in-progress tasks (with an owner) of unfinished jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TaskIndex {
    /// By task id, so that a job's entries are one range (what `refresh_job` replaces).
    held: BTreeMap<TaskId, Held>,
    by_provisioner: BTreeMap<String, ProvisionerTasks>,
    deadlines: BTreeSet<(u64, TaskId)>,
}

impl TaskIndex {
    pub(crate) fn insert(&mut self, task: TaskId, owner: &TaskOwner) {
        if self.held.contains_key(&task) {
            self.remove(task);
        }
        let entry = self
            .by_provisioner
            .entry(owner.provisioner_id.clone())
            .or_default();
        entry.count += 1;
        entry
            .workers
            .entry(owner.worker_id.clone())
            .or_default()
            .insert(task);
        self.deadlines.insert((owner.deadline_ms, task));
        self.held.insert(
            task,
            Held {
                provisioner: owner.provisioner_id.clone(),
                worker: owner.worker_id.clone(),
                deadline_ms: owner.deadline_ms,
            },
        );
    }

    fn remove(&mut self, task: TaskId) {
        let Some(held) = self.held.remove(&task) else {
            return;
        };
        self.deadlines.remove(&(held.deadline_ms, task));
        if let Some(entry) = self.by_provisioner.get_mut(&held.provisioner) {
            entry.count = entry.count.saturating_sub(1);
            if let Some(tasks) = entry.workers.get_mut(&held.worker) {
                tasks.remove(&task);
                if tasks.is_empty() {
                    entry.workers.remove(&held.worker);
                }
            }
            if entry.count == 0 {
                self.by_provisioner.remove(&held.provisioner);
            }
        }
    }

    /// Forgets every entry of `job`.
    pub(crate) fn remove_job(&mut self, job: JobId) {
        let stale: Vec<TaskId> = self
            .held
            .range(TaskId { job, seq: 0 }..=TaskId { job, seq: u32::MAX })
            .map(|(task, _)| *task)
            .collect();
        for task in stale {
            self.remove(task);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The lowest task id the worker holds: what the scan in job and task order found first.
    pub(crate) fn held_by_worker(&self, provisioner: &str, worker: &str) -> Option<TaskId> {
        self.by_provisioner
            .get(provisioner)?
            .workers
            .get(worker)?
            .first()
            .copied()
    }

    pub(crate) fn held_by(&self, provisioner: &str) -> usize {
        self.by_provisioner.get(provisioner).map_or(0, |p| p.count)
    }
}

/// Clusters by tenant name, then tenant incarnation (what [`Account::belongs_to`] compares), as
/// `(shard, cluster)`: the order in which a scan of the shards meets them. Also how many there
/// are of each status, so that nothing that only counts them has to visit them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TenantIndex {
    tenants: BTreeMap<ShortStr, BTreeMap<String, Group>>,
    /// Clusters by status (no entry for a status no cluster has).
    counts: BTreeMap<ClusterStatus, u64>,
}

/// The clusters of one tenant incarnation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Group {
    /// Those not terminated, with their status.
    live: BTreeMap<(ShardId, ClusterId), ClusterStatus>,
    /// The terminated ones.
    ended: BTreeSet<(ShardId, ClusterId)>,
}

impl Group {
    /// The clusters that are not terminated, in `(shard, cluster)` order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &(ShardId, ClusterId)> {
        self.live.keys()
    }

    /// Every cluster: the live ones, then the terminated ones.
    pub(crate) fn all(&self) -> impl Iterator<Item = &(ShardId, ClusterId)> {
        self.live.keys().chain(&self.ended)
    }

    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.ended.is_empty()
    }

    /// Takes `key` out; its status if it was here.
    fn take(&mut self, key: (ShardId, ClusterId)) -> Option<ClusterStatus> {
        self.live
            .remove(&key)
            .or_else(|| self.ended.remove(&key).then_some(ClusterStatus::Terminated))
    }
}

impl TenantIndex {
    /// Records `cluster` with its status (in place of what it was).
    pub(crate) fn set(
        &mut self,
        shard: ShardId,
        id: ClusterId,
        account: &Account,
        status: ClusterStatus,
    ) {
        let group = self
            .tenants
            .entry(account.tenant_id.clone())
            .or_default()
            .entry(account.tenant_incarnation.clone())
            .or_default();
        if let Some(old) = group.take((shard, id)) {
            uncount(&mut self.counts, old);
        }
        if status == ClusterStatus::Terminated {
            group.ended.insert((shard, id));
        } else {
            group.live.insert((shard, id), status);
        }
        *self.counts.entry(status).or_default() += 1;
    }

    pub(crate) fn remove(&mut self, shard: ShardId, id: ClusterId, account: &Account) {
        let Some(incarnations) = self.tenants.get_mut(account.tenant_id.as_str()) else {
            return;
        };
        if let Some(group) = incarnations.get_mut(&account.tenant_incarnation) {
            if let Some(old) = group.take((shard, id)) {
                uncount(&mut self.counts, old);
            }
            if group.is_empty() {
                incarnations.remove(&account.tenant_incarnation);
            }
        }
        if incarnations.is_empty() {
            self.tenants.remove(account.tenant_id.as_str());
        }
    }

    /// Every `(tenant name, incarnation, clusters)` group.
    pub(crate) fn groups(&self) -> impl Iterator<Item = (&str, &str, &Group)> {
        self.tenants.iter().flat_map(|(name, incarnations)| {
            incarnations
                .iter()
                .map(move |(incarnation, group)| (name.as_str(), incarnation.as_str(), group))
        })
    }

    /// The groups of tenant `name`.
    pub(crate) fn of_tenant<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (&'a str, &'a Group)> {
        self.tenants
            .get(name)
            .into_iter()
            .flat_map(|incarnations| incarnations.iter().map(|(i, group)| (i.as_str(), group)))
    }

    /// How many clusters there are of each status (only statuses some cluster has).
    pub(crate) fn counts(&self) -> &BTreeMap<ClusterStatus, u64> {
        &self.counts
    }

    fn add_shard(&mut self, shard: ShardId, data: &ClusterShard) {
        for (id, record) in &data.clusters {
            let c = &record.cluster;
            self.set(shard, *id, &c.account, c.status);
        }
    }

    fn remove_shard(&mut self, shard: ShardId, data: &ClusterShard) {
        for (id, record) in &data.clusters {
            self.remove(shard, *id, &record.cluster.account);
        }
    }

    fn add_view(&mut self, shard: ShardId, view: &ClusterShardView) {
        for (id, v) in &view.clusters {
            self.set(shard, *id, &v.cluster.account, v.cluster.status);
        }
    }

    fn remove_view(&mut self, shard: ShardId, view: &ClusterShardView) {
        for (id, v) in &view.clusters {
            self.remove(shard, *id, &v.cluster.account);
        }
    }
}

fn uncount(counts: &mut BTreeMap<ClusterStatus, u64>, status: ClusterStatus) {
    if let Some(n) = counts.get_mut(&status) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&status);
        }
    }
}

fn copies_index(replicas: &BTreeMap<ShardId, Arc<ReplicaShard>>) -> TenantIndex {
    let mut index = TenantIndex::default();
    for (shard, replica) in replicas {
        if let Some(view) = clusters_of(replica) {
            index.add_view(*shard, view);
        }
    }
    index
}

fn clusters_of(replica: &ReplicaShard) -> Option<&ClusterShardView> {
    match &replica.data {
        ReplicaData::Clusters(view) => Some(view),
        ReplicaData::Global(_) => None,
    }
}

impl State {
    /// Puts `data` in place of cluster shard `shard` and returns what was there: the owned
    /// tenant index follows, and the jobs that ran in the old data are re-derived (gone, or
    /// whatever the new data holds under their ids).
    pub(crate) fn replace_shard(&mut self, shard: ShardId, data: ClusterShard) -> ClusterShard {
        // The old data is copied only if a snapshot being written still holds it.
        let old = self
            .shards
            .insert(shard, Arc::new(data))
            .map(Arc::unwrap_or_clone)
            .unwrap_or_default();
        self.by_tenant.remove_shard(shard, &old);
        if let Some(new) = self.shards.get(&shard) {
            self.by_tenant.add_shard(shard, new);
        }
        let shard_count = self.shard_count;
        let stopped: Vec<JobId> = self
            .active_jobs
            .iter()
            .filter(|job| job.cluster.shard(shard_count) == shard)
            .copied()
            .collect();
        for job in stopped {
            self.refresh_job(job);
        }
        old
    }

    /// Every cluster of tenant `name` (of any incarnation, the terminated ones too) in the
    /// shards this DC writes, in `(shard, cluster)` order, live ones first: visits only those.
    pub fn tenant_clusters<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = &'a super::ClusterRecord> + 'a {
        self.by_tenant
            .of_tenant(name)
            .flat_map(|(_, group)| group.all())
            .filter_map(|(shard, id)| self.shards.get(shard)?.clusters.get(id))
            .map(|record| &**record)
    }

    /// The replica copies of tenant `name`'s clusters (of any incarnation, the terminated ones
    /// too) with their shard: visits only those.
    pub fn tenant_copies<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (ShardId, &'a crate::replication::ClusterView)> + 'a {
        self.copies_by_tenant()
            .of_tenant(name)
            .flat_map(|(_, group)| group.all())
            .filter_map(|(shard, id)| {
                let copy = clusters_of(self.replicas.get(shard)?)?.clusters.get(id)?;
                Some((*shard, copy))
            })
    }

    /// How many clusters of each status the shards this DC writes hold (statuses no cluster
    /// has are left out), without visiting them.
    pub fn cluster_counts(&self) -> &BTreeMap<ClusterStatus, u64> {
        self.by_tenant.counts()
    }

    /// The in-progress tasks of unfinished jobs that a worker holds, with the provisioner of
    /// that worker, without visiting the clusters.
    pub fn held_tasks(&self) -> impl Iterator<Item = (TaskId, &str)> {
        self.in_progress
            .held
            .iter()
            .map(|(task, held)| (*task, held.provisioner.as_str()))
    }

    /// Rebuilds the tenant index of the shards this DC writes (after a load).
    pub(crate) fn reindex_clusters(&mut self) {
        let mut index = TenantIndex::default();
        for (shard, data) in &self.shards {
            index.add_shard(*shard, data);
        }
        self.by_tenant = index;
    }

    /// The replica tenant index, built from the replica copies on first use: loaders set
    /// `replicas` whole (`persist::decode_parts`), every change after that keeps it.
    pub(crate) fn copies_by_tenant(&self) -> &TenantIndex {
        self.copies_by_tenant
            .get_or_init(|| copies_index(&self.replicas))
    }

    /// Puts (`Some`) or takes away (`None`) the replica copy of `shard`, keeping the replica
    /// tenant index. Visits every cluster of both copies: for seeds, demotions and adoptions;
    /// a batch changes only the clusters its records name ([`State::put_replica_batch`]).
    pub(crate) fn put_replica(&mut self, shard: ShardId, mut replica: Option<ReplicaShard>) {
        if let Some(replica) = &mut replica {
            State::intern_replica(&mut self.service_pool, replica, None);
        }
        if let Some(index) = self.copies_by_tenant.get_mut() {
            if let Some(old) = self.replicas.get(&shard).and_then(|r| clusters_of(r)) {
                index.remove_view(shard, old);
            }
            if let Some(new) = replica.as_ref().and_then(clusters_of) {
                index.add_view(shard, new);
            }
        }
        match replica {
            Some(replica) => {
                self.replicas.insert(shard, Arc::new(replica));
            }
            None => {
                self.replicas.remove(&shard);
            }
        }
    }

    /// Puts the replica copy of `shard` after a batch that changed only the `touched` clusters.
    pub(crate) fn put_replica_batch(
        &mut self,
        shard: ShardId,
        replica: ReplicaShard,
        touched: &BTreeSet<ClusterId>,
    ) {
        if let Some(index) = self.copies_by_tenant.get_mut() {
            if let Some(old) = self.replicas.get(&shard).and_then(|r| clusters_of(r)) {
                for id in touched {
                    if let Some(v) = old.clusters.get(id) {
                        index.remove(shard, *id, &v.cluster.account);
                    }
                }
            }
            if let Some(new) = clusters_of(&replica) {
                for id in touched {
                    if let Some(v) = new.clusters.get(id) {
                        index.set(shard, *id, &v.cluster.account, v.cluster.status);
                    }
                }
            }
        }
        self.replicas.insert(shard, Arc::new(replica));
    }

    /// Recomputes every derived index (ready queue, active jobs, in-progress tasks, live
    /// clusters by tenant of owned shards and of replica copies) by full scans and compares
    /// them with the maintained ones. For tests and simulations, after each applied entry: a
    /// path that changes the state without keeping an index fails here.
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        let mut ready = BTreeSet::new();
        let mut active = BTreeSet::new();
        let mut tasks = TaskIndex::default();
        let mut live = TenantIndex::default();
        for (shard, data) in &self.shards {
            live.add_shard(*shard, data);
            for run in data.clusters.values().flat_map(|r| r.jobs.values()) {
                ready.extend(run.ready_tasks());
                if run.job.status.is_finished() {
                    continue;
                }
                active.insert(run.job.id);
                for task in run.tasks.values() {
                    if task.status != coopr_types::TaskStatus::InProgress {
                        continue;
                    }
                    if let Some(owner) = &task.owner {
                        tasks.insert(task.id, owner);
                    }
                }
            }
        }
        let copies = copies_index(&self.replicas);
        let diff = |name: &str, kept: &dyn std::fmt::Debug, scanned: &dyn std::fmt::Debug| {
            Err(format!(
                "derived index {name} is stale: kept {kept:?}, a full scan gives {scanned:?}"
            ))
        };
        if self.ready != ready {
            return diff("ready", &self.ready, &ready);
        }
        if self.active_jobs != active {
            return diff("active_jobs", &self.active_jobs, &active);
        }
        if self.in_progress != tasks {
            return diff("in_progress", &self.in_progress, &tasks);
        }
        if self.by_tenant != live {
            return diff("by_tenant", &self.by_tenant, &live);
        }
        // Built here if nothing read it yet: the next checks compare what the changes kept.
        if *self.copies_by_tenant() != copies {
            return diff("copies_by_tenant", self.copies_by_tenant(), &copies);
        }
        Ok(())
    }
}
