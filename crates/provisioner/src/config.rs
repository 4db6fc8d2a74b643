//! Provisioner configuration: one struct, with defaults and `validate()`.

use crate::plugin::PluginRegistry;

/// How a provisioner finds its servers and what it offers them.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// Base URLs of the servers, without `/v2` (e.g. `http://10.0.0.1:55054`). Plain HTTP only.
    /// Requests go to one server at a time; a connection error moves on to the next one.
    /// Required, at least one.
    pub servers: Vec<String>,
    /// This provisioner's id, unique among the provisioners of a deployment. Required.
    pub provisioner_id: String,
    /// Host the server can reach this provisioner on, sent at registration.
    /// Default `127.0.0.1`.
    pub host: String,
    /// Port sent at registration. Default 55056.
    pub port: u16,
    /// Number of workers, i.e. tasks run at once; sent as `capacityTotal`.
    /// Default 1, at most [`ProvisionerConfig::MAX_CAPACITY`].
    pub capacity: u32,
    /// Take tasks of this tenant (its id, not its name) only; `None` (or empty) takes tasks of
    /// any tenant. Default `None`.
    pub tenant_id: Option<String>,
    /// Sent as the `Coopr-ApiKey` header on every request. Default `None` (no header).
    pub api_key: Option<String>,
    /// Wait between polls when the queue is empty, and backoff after errors. Default 1000.
    pub poll_interval_ms: u64,
    /// Interval between heartbeats. Default 10000.
    pub heartbeat_interval_ms: u64,
    /// The plugins tasks are dispatched to.
    pub plugins: PluginRegistry,
}

/// A configuration value that cannot work, naming the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no servers configured")]
    NoServers,
    #[error("server URL {url:?} is not a plain http:// URL (TLS is not supported)")]
    UnsupportedServerUrl { url: String },
    #[error("provisioner_id is empty")]
    EmptyProvisionerId,
    #[error("host is empty")]
    EmptyHost,
    #[error("capacity {capacity} is outside 1..={max}", max = ProvisionerConfig::MAX_CAPACITY)]
    CapacityOutOfRange { capacity: u32 },
    #[error("{field} must be at least 1 ms")]
    ZeroInterval { field: &'static str },
}

impl ProvisionerConfig {
    pub const DEFAULT_HOST: &'static str = "127.0.0.1";
    pub const DEFAULT_PORT: u16 = 55056;
    pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
    pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 10_000;
    /// Workers are tokio tasks, but each may hold a plugin process; this bounds them.
    pub const MAX_CAPACITY: u32 = 1024;

    /// A configuration with every optional field at its default.
    pub fn new(
        servers: Vec<String>,
        provisioner_id: impl Into<String>,
        plugins: PluginRegistry,
    ) -> Self {
        ProvisionerConfig {
            servers,
            provisioner_id: provisioner_id.into(),
            host: Self::DEFAULT_HOST.to_string(),
            port: Self::DEFAULT_PORT,
            capacity: 1,
            tenant_id: None,
            api_key: None,
            poll_interval_ms: Self::DEFAULT_POLL_INTERVAL_MS,
            heartbeat_interval_ms: Self::DEFAULT_HEARTBEAT_INTERVAL_MS,
            plugins,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        if let Some(url) = self.servers.iter().find(|url| !is_plain_http(url)) {
            return Err(ConfigError::UnsupportedServerUrl { url: url.clone() });
        }
        if self.provisioner_id.trim().is_empty() {
            return Err(ConfigError::EmptyProvisionerId);
        }
        if self.host.trim().is_empty() {
            return Err(ConfigError::EmptyHost);
        }
        if !(1..=Self::MAX_CAPACITY).contains(&self.capacity) {
            return Err(ConfigError::CapacityOutOfRange {
                capacity: self.capacity,
            });
        }
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::ZeroInterval {
                field: "poll_interval_ms",
            });
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::ZeroInterval {
                field: "heartbeat_interval_ms",
            });
        }
        Ok(())
    }

    /// The tenant filter, with an empty string meaning "any tenant".
    pub(crate) fn tenant_filter(&self) -> Option<&str> {
        self.tenant_id.as_deref().filter(|t| !t.is_empty())
    }
}

fn is_plain_http(url: &str) -> bool {
    url.strip_prefix("http://")
        .is_some_and(|rest| !rest.trim_matches('/').is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_value() {
        let good = ProvisionerConfig::new(
            vec!["http://127.0.0.1:55054".into()],
            "p1",
            PluginRegistry::new(),
        );
        assert_eq!(good.validate(), Ok(()));

        let mut https = good.clone();
        https.servers.push("https://x:1".into());
        assert_eq!(
            https.validate(),
            Err(ConfigError::UnsupportedServerUrl {
                url: "https://x:1".into()
            })
        );
        let mut none = good.clone();
        none.servers.clear();
        assert_eq!(none.validate(), Err(ConfigError::NoServers));
        let mut zero = good.clone();
        zero.capacity = 0;
        assert_eq!(
            zero.validate(),
            Err(ConfigError::CapacityOutOfRange { capacity: 0 })
        );
        let mut fast = good;
        fast.poll_interval_ms = 0;
        assert!(fast.validate().is_err());
    }
}
