//! Server configuration: one struct, validated, every option with its default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Datacenter name (default `a`).
    pub dc: String,
    /// Node name (default `a1`).
    pub node: String,
    /// Where the store lives (`coopr.redb`).
    pub data_dir: PathBuf,
    /// User and provisioner API address (default `127.0.0.1:55054`; port 0 picks a free one).
    pub listen: String,
    /// Number of cluster shards `S` (default 64). Fixed for the life of the data dir.
    pub shard_count: u32,
    /// How long a worker may hold a task before it times out (default 10 min).
    pub task_timeout_ms: u64,
    /// A provisioner silent for this long is dead and its tasks are retried (default 30 s).
    pub provisioner_timeout_ms: u64,
    /// Log entries between snapshots, at least (default 10,000).
    pub snapshot_every: u64,
    /// The commands applied since the last snapshot must add up to this percentage of its size
    /// before the next (default 100: snapshots grow rarer as the state grows; 0: entries only).
    pub snapshot_log_percent: u64,
    /// How long a finished job stays in memory before the leader retires it to the job
    /// archive on disk (default 1 h; 0: as soon as it finishes). Its plan stays readable.
    pub job_retention_ms: u64,
    /// Log entries kept after a snapshot, so that a slightly lagging follower catches up from
    /// the log rather than by a snapshot; older ones are dropped (default 1,000).
    pub logs_kept_after_snapshot: u64,
    /// Seed the demo tenant, keys and example catalog (fixed keys: demo mode only).
    pub demo: bool,
    /// The superadmin key to create at first start outside demo mode (else one is generated and
    /// written to `<data_dir>/admin-key`).
    pub admin_key: Option<String>,
    /// This node's id in its DC log (default 1).
    pub node_id: u64,
    /// The members of this node's DC log, this node included: node id -> addresses. Empty (the
    /// default) means a DC of this node alone, with no internal port.
    pub members: BTreeMap<u64, Member>,
    /// Address of the internal API (Raft RPCs), required when the DC has several members.
    pub internal_listen: Option<String>,
    /// Shared secret authenticating internal calls (required with several members).
    pub secret: Option<String>,
    /// Raft election timeout range, ms (defaults 300 and 600); heartbeats every min/3.
    pub election_timeout_ms: (u64, u64),
    /// Longest a write waits for a majority before failing with 503 (default 5000).
    pub write_timeout_ms: u64,
    /// The other DCs of the deployment: DC name -> its nodes' addresses. Empty (the default)
    /// means a deployment of this DC alone, which owns every shard and replicates nothing.
    /// Shards are placed statically over all DC names (see [`crate::placement`]); replication
    /// calls carry `secret`, which every DC must share.
    pub remote_dcs: BTreeMap<String, Vec<Member>>,
    /// Longest a replica's pull waits at the owner for new records (default 10,000 ms).
    pub replication_wait_ms: u64,
    /// Most records one pull returns, over all its shards (default 100: each shard's batch becomes
    /// one DC-log entry, which a follower must take within one heartbeat).
    pub replication_max_records: usize,
    /// How many pulls a replica keeps in flight to each owner DC (default 8, at most 16; 1: one
    /// at a time). The owner answers them in turn as records commit, at most one answer with
    /// records per `owner::ANSWER_SPACING`, so a pull is waiting there whenever a record commits
    /// and a busy stream lags by about one link delay, not a round trip. Each pull held at the
    /// owner takes one of its `internal_max_concurrent_requests` for the API port's
    /// replication calls: every other DC's pipeline together must stay well under that.
    pub replication_pipeline: usize,
    /// Whether the leader trims the outboxes of owned shards through what every replica DC
    /// acknowledged (default true; tests that read records over the wire turn it off).
    pub trim_outboxes: bool,
    /// The voters of the placement group (required with `remote_dcs`): placement node id ->
    /// its DC and internal API base URL. Typically one node per DC, plus a witness site for two
    /// DCs. A member whose DC is not a data DC (this one or one of `remote_dcs`) is a witness.
    pub placement_members: BTreeMap<u64, PlacementMember>,
    /// This node's id in the placement group, if it is one of its voters.
    pub placement_node_id: Option<u64>,
    /// How long a DC lease lasts (default 3000 ms); the DC leader renews every third of it.
    pub lease_ms: u64,
    /// The largest clock-rate difference tolerated between sites over one lease (default
    /// 500 ms): the holder stops writing that much before the lease ends, the grantor waits
    /// that much longer before declaring the DC dead.
    pub max_clock_offset_ms: u64,
    /// The placement group's election timeout range, ms (defaults 600 and 1200; heartbeats every
    /// min/3). Its messages cross DCs: openraft bounds each append by the heartbeat interval, so
    /// min/3 must exceed the round trip between DCs.
    pub placement_election_timeout_ms: (u64, u64),
    /// How long a graceful handover may run before the placement leader aborts it (default
    /// 30000 ms): the owner writes the shard again and nothing is lost. Bounds a handover that
    /// waits for a replica DC that is down or for an operation that does not finish.
    pub handover_timeout_ms: u64,
    /// Longest the user API (and `/status`, `/ready`, `/metrics`) may take to answer a request
    /// (default 30000 ms); a request still running then is answered 503 `request_timeout`.
    pub api_request_timeout_ms: u64,
    /// Most user API requests this node serves at once (default 512); more are answered at
    /// once with 503 `overloaded` and `Retry-After`, never queued.
    pub api_max_concurrent_requests: usize,
    /// Longest an internal call may take (default 60000 ms): Raft RPCs and placement calls on
    /// the internal port, and the replication calls (`/internal/...` on the API port), whose
    /// long poll (at most `replication::owner::MAX_WAIT_MS`) is added to it.
    pub internal_request_timeout_ms: u64,
    /// Most internal calls served at once per listener (default 256): the internal port and
    /// the replication calls on the API port each have a pool of this size, apart from the
    /// user API's, so that no user load sheds them.
    pub internal_max_concurrent_requests: usize,
    /// Most client writes (user and provisioner API) proposed to the DC log and not yet
    /// answered (default 1024); more are answered at once with 503 `write_queue_full` and
    /// `Retry-After`. The node's own writes (driver, lease reconcile, replication) are not
    /// counted: each of those loops has at most one write in flight.
    pub max_client_writes_in_flight: usize,
    /// This node is a witness (see [`crate::start_witness`]): `dc` names its site, which holds
    /// no data; `remote_dcs` lists the data DCs.
    pub witness: bool,
    /// How the user API authenticates callers (default [`AuthMode::Keys`]).
    pub user_api_auth: AuthMode,
    /// How the provisioner API (`/v2/tasks/*`, `/v2/provisioners/*`) authenticates provisioners
    /// (default [`AuthMode::Keys`]).
    pub provisioner_api_auth: AuthMode,
}

/// How an API authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every request presents a `Coopr-ApiKey` stored for its tenant and user (keys bound to
    /// users; admin rights need a key bound to `admin`).
    #[default]
    Keys,
    /// Legacy Coopr clients (its UI, CLI and Ruby provisioner never send keys): a request
    /// without `Coopr-ApiKey` is trusted to be who its `Coopr-UserID`/`Coopr-TenantID` say,
    /// admin included. Only for deployments where an authenticating proxy or a private network
    /// stands in front of the port; a request that does present a key is checked as with
    /// `Keys`. The node logs a warning at start.
    TrustedHeaders,
}

impl AuthMode {
    /// The node-config spelling: `keys` or `trusted-headers`.
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text {
            "keys" => Some(AuthMode::Keys),
            "trusted-headers" => Some(AuthMode::TrustedHeaders),
            _ => None,
        }
    }
}

/// One voter of the placement group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementMember {
    pub dc: String,
    /// Internal API base URL of the node (`http://127.0.0.1:7105`).
    pub internal: String,
}

/// One member of a DC log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    /// User API base URL (`http://127.0.0.1:7100`): followers forward requests here.
    pub api: String,
    /// Internal API base URL: Raft RPCs go here.
    pub internal: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            dc: "a".into(),
            node: "a1".into(),
            data_dir: PathBuf::from("coopr-data"),
            listen: "127.0.0.1:55054".into(),
            shard_count: 64,
            task_timeout_ms: 600_000,
            provisioner_timeout_ms: 30_000,
            snapshot_every: 10_000,
            snapshot_log_percent: 100,
            job_retention_ms: 3_600_000,
            logs_kept_after_snapshot: 1_000,
            demo: false,
            admin_key: None,
            node_id: 1,
            members: BTreeMap::new(),
            internal_listen: None,
            secret: None,
            election_timeout_ms: (300, 600),
            write_timeout_ms: 5_000,
            remote_dcs: BTreeMap::new(),
            replication_wait_ms: 10_000,
            replication_max_records: 100,
            replication_pipeline: 8,
            trim_outboxes: true,
            placement_members: BTreeMap::new(),
            placement_node_id: None,
            lease_ms: 3_000,
            max_clock_offset_ms: 500,
            placement_election_timeout_ms: (600, 1_200),
            handover_timeout_ms: 30_000,
            api_request_timeout_ms: 30_000,
            api_max_concurrent_requests: 512,
            internal_request_timeout_ms: 60_000,
            internal_max_concurrent_requests: 256,
            max_client_writes_in_flight: 1_024,
            witness: false,
            user_api_auth: AuthMode::Keys,
            provisioner_api_auth: AuthMode::Keys,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.shard_count == 0 || self.shard_count > 65_536 {
            bail!(
                "shard_count must be between 1 and 65536, got {}",
                self.shard_count
            );
        }
        if self.task_timeout_ms < 100 {
            bail!(
                "task_timeout_ms must be at least 100, got {}",
                self.task_timeout_ms
            );
        }
        if self.provisioner_timeout_ms < 100 {
            bail!(
                "provisioner_timeout_ms must be at least 100, got {}",
                self.provisioner_timeout_ms
            );
        }
        if self.snapshot_every == 0 {
            bail!("snapshot_every must be positive");
        }
        if self.dc.is_empty() || self.node.is_empty() {
            bail!("dc and node names must not be empty");
        }
        if !self.members.is_empty() {
            if !self.members.contains_key(&self.node_id) {
                bail!("node_id {} is not one of the members", self.node_id);
            }
            if self.members.len() > 1 && self.internal_listen.is_none() {
                bail!("internal_listen is required when the DC has several members");
            }
            if self.members.len() > 1 && self.secret.as_ref().is_none_or(|s| s.len() < 16) {
                bail!(
                    "secret (at least 16 characters) is required when the DC has several members"
                );
            }
        }
        let (min, max) = self.election_timeout_ms;
        if min < 50 || max <= min {
            bail!("election_timeout_ms must be (min >= 50, max > min), got ({min}, {max})");
        }
        if self.write_timeout_ms < 100 {
            bail!(
                "write_timeout_ms must be at least 100, got {}",
                self.write_timeout_ms
            );
        }
        if !self.remote_dcs.is_empty() {
            if self.remote_dcs.contains_key(&self.dc) {
                bail!("remote_dcs must not list this node's own DC {:?}", self.dc);
            }
            if let Some((dc, _)) = self.remote_dcs.iter().find(|(_, m)| m.is_empty()) {
                bail!("remote_dcs: DC {dc:?} has no nodes");
            }
            if self.secret.as_ref().is_none_or(|s| s.len() < 16) {
                bail!("secret (at least 16 characters) is required when remote_dcs is set");
            }
        }
        if !self.remote_dcs.is_empty() && self.placement_members.is_empty() {
            bail!("placement_members is required when remote_dcs is set");
        }
        if let Some(id) = self.placement_node_id {
            match self.placement_members.get(&id) {
                None => bail!("placement_node_id {id} is not one of placement_members"),
                Some(m) if m.dc != self.dc => bail!(
                    "placement member {id} belongs to DC {:?}, not this node's DC {:?}",
                    m.dc,
                    self.dc
                ),
                Some(_) if self.internal_listen.is_none() => {
                    bail!("internal_listen is required on a placement member")
                }
                Some(_) => {}
            }
        }
        let (min, max) = self.placement_election_timeout_ms;
        if min < 50 || max <= min {
            bail!(
                "placement_election_timeout_ms must be (min >= 50, max > min), got ({min}, {max})"
            );
        }
        if self.lease_ms < 300 || self.lease_ms > 600_000 {
            bail!(
                "lease_ms must be between 300 and 600000, got {}",
                self.lease_ms
            );
        }
        if self.max_clock_offset_ms.saturating_mul(2) >= self.lease_ms {
            bail!(
                "max_clock_offset_ms {} must be less than half of lease_ms {}",
                self.max_clock_offset_ms,
                self.lease_ms
            );
        }
        // A handover needs a few renewals (every third of a lease) to freeze and complete.
        if self.handover_timeout_ms < self.lease_ms || self.handover_timeout_ms > 3_600_000 {
            bail!(
                "handover_timeout_ms must be between lease_ms ({}) and 3600000, got {}",
                self.lease_ms,
                self.handover_timeout_ms
            );
        }
        if !(100..=60_000).contains(&self.replication_wait_ms) {
            bail!(
                "replication_wait_ms must be between 100 and 60000, got {}",
                self.replication_wait_ms
            );
        }
        if !(1..=100_000).contains(&self.replication_max_records) {
            bail!(
                "replication_max_records must be between 1 and 100000, got {}",
                self.replication_max_records
            );
        }
        if !(1..=16).contains(&self.replication_pipeline) {
            bail!(
                "replication_pipeline must be between 1 and 16, got {}",
                self.replication_pipeline
            );
        }
        for (name, ms) in [
            ("api_request_timeout_ms", self.api_request_timeout_ms),
            (
                "internal_request_timeout_ms",
                self.internal_request_timeout_ms,
            ),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                bail!("{name} must be between 100 and 3600000, got {ms}");
            }
        }
        for (name, n) in [
            (
                "api_max_concurrent_requests",
                self.api_max_concurrent_requests,
            ),
            (
                "internal_max_concurrent_requests",
                self.internal_max_concurrent_requests,
            ),
            (
                "max_client_writes_in_flight",
                self.max_client_writes_in_flight,
            ),
        ] {
            if !(1..=1_000_000).contains(&n) {
                bail!("{name} must be between 1 and 1000000, got {n}");
            }
        }
        if let Some(key) = &self.admin_key {
            if key.len() < 8 {
                bail!("admin_key must be at least 8 characters");
            }
        }
        Ok(())
    }

    /// Whether the deployment spans several DCs (and so has a placement group and leases).
    pub fn multi_dc(&self) -> bool {
        !self.remote_dcs.is_empty()
    }

    /// The initial shard map over this DC and `remote_dcs`.
    pub fn initial_map(&self) -> crate::placement::ShardMap {
        let own = (!self.witness).then(|| self.dc.clone());
        crate::placement::ShardMap::initial(
            own.into_iter().chain(self.remote_dcs.keys().cloned()),
            self.shard_count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admission and write-queue bounds are accepted at their limits and refused one
    /// past them, with an error naming the option.
    #[test]
    fn admission_bounds_are_checked_at_their_limits() {
        let valid = |tweak: fn(&mut ServerConfig)| {
            let mut config = ServerConfig::default();
            tweak(&mut config);
            config.validate().map_err(|e| e.to_string())
        };
        assert!(valid(|c| c.api_request_timeout_ms = 100).is_ok());
        let refused = valid(|c| c.api_request_timeout_ms = 99).expect_err("below 100 ms");
        assert!(refused.contains("api_request_timeout_ms"), "{refused}");
        assert!(valid(|c| c.internal_request_timeout_ms = 3_600_000).is_ok());
        let refused = valid(|c| c.internal_request_timeout_ms = 3_600_001).expect_err("above");
        assert!(refused.contains("internal_request_timeout_ms"), "{refused}");
        assert!(valid(|c| c.max_client_writes_in_flight = 1).is_ok());
        let refused = valid(|c| c.max_client_writes_in_flight = 0).expect_err("no place");
        assert!(refused.contains("max_client_writes_in_flight"), "{refused}");
        assert!(valid(|c| c.api_max_concurrent_requests = 1_000_000).is_ok());
        let refused = valid(|c| c.api_max_concurrent_requests = 1_000_001).expect_err("above");
        assert!(refused.contains("api_max_concurrent_requests"), "{refused}");
        let refused = valid(|c| c.internal_max_concurrent_requests = 0).expect_err("no place");
        assert!(
            refused.contains("internal_max_concurrent_requests"),
            "{refused}"
        );
        // Every pull a replica keeps in flight holds one of the owner's replication slots.
        assert!(valid(|c| c.replication_pipeline = 16).is_ok());
        let refused = valid(|c| c.replication_pipeline = 17).expect_err("above 16");
        assert!(refused.contains("replication_pipeline"), "{refused}");
        let refused = valid(|c| c.replication_pipeline = 0).expect_err("no pull");
        assert!(refused.contains("replication_pipeline"), "{refused}");
    }
}
