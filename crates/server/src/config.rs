//! Server configuration: one struct, validated, every option with its default.

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
    /// Log entries between snapshots (default 10,000).
    pub snapshot_every: u64,
    /// Seed the demo tenant, keys and example catalog (fixed keys: demo mode only).
    pub demo: bool,
    /// The superadmin key to create at first start outside demo mode (else one is generated and
    /// written to `<data_dir>/admin-key`).
    pub admin_key: Option<String>,
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
            demo: false,
            admin_key: None,
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
        if let Some(key) = &self.admin_key {
            if key.len() < 8 {
                bail!("admin_key must be at least 8 characters");
            }
        }
        Ok(())
    }
}
