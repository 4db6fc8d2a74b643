//! The fake cloud's wire format, shared by its HTTP server (`server.rs`), its HTTP client
//! (`remote.rs`) and the in-process cloud, with the limits every request is checked against.
//!
//! ```text
//!   POST /machines/{node_id}/create   CreateRequest ──► CreateAnswer   (idempotent on node id)
//!   POST /machines/{node_id}/confirm  Injection     ──► MachineAnswer  (machine: null if none)
//!   POST /machines/{node_id}/delete   Injection     ──► MachineAnswer  (the deleted machine)
//!   GET  /machines/{node_id}                        ──► FakeMachine    (alive or not; 404)
//!   GET  /machines                                  ──► MachineList    (every node id ever seen)
//!   errors: ApiError {code, message}; 400 bad input, 413 body too large, 503 injected failure
//! ```
//!
//! The checks here are plain functions so the server and tests agree on the limits.

use serde::{Deserialize, Serialize};

use super::FakeMachine;

/// Longest request body the server reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest node id. Coopr's node ids are 36-character UUIDs; tests use short names.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Longest hostname, cluster name or DNS suffix (a DNS name is at most 253 characters).
pub const MAX_NAME_BYTES: usize = 253;
/// Longest injected latency: the server's default task timeout, after which the task is
/// re-issued anyway.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// Per-operation overrides of the cloud's injected latency and failure rate (a task's
/// `config.provider.provisioner.latency_ms` / `failure_rate`). Absent fields use the cloud's
/// defaults. Also the body of confirm and delete (an empty body is all defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Injection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
}

/// What a new machine is named after (see `hostname_for` in the module above), and the
/// operation's injection overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    /// A hostname the server assigned; wins over the derived one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodenum: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
}

impl CreateRequest {
    pub fn injection(&self) -> Injection {
        Injection {
            latency_ms: self.latency_ms,
            failure_rate: self.failure_rate,
        }
    }
}

/// The answer to a create: the node's machine, and whether this call created it (false when
/// the node already had a live machine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateAnswer {
    pub machine: FakeMachine,
    pub created: bool,
}

/// The answer to a confirm (the live machine) or a delete (the machine deleted now); `null`
/// when the node has no live machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineAnswer {
    pub machine: Option<FakeMachine>,
}

/// `GET /machines`: every node id the cloud has seen, alive or deleted, with its counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineList {
    /// Creations ever, over all nodes.
    pub machines_created: u64,
    pub machines_alive: usize,
    /// By node id.
    pub machines: Vec<FakeMachine>,
}

/// Every error answer: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// Why a request is refused before it reaches the cloud. Each maps to a 400 with its code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("node id is empty or longer than {MAX_NODE_ID_BYTES} bytes ({length} bytes)")]
    NodeIdLength { length: usize },
    #[error("node id {node_id:?} has characters other than [A-Za-z0-9._:-]")]
    NodeIdCharacters { node_id: String },
    #[error("{field} is empty, longer than {MAX_NAME_BYTES} bytes or has control characters")]
    BadName { field: &'static str },
    #[error("latencyMs {latency_ms} exceeds {MAX_LATENCY_MS}")]
    LatencyTooLong { latency_ms: u64 },
    #[error("failureRate {failure_rate} is not between 0 and 1")]
    FailureRateOutOfRange { failure_rate: f64 },
}

impl InvalidRequest {
    pub fn code(&self) -> &'static str {
        match self {
            InvalidRequest::NodeIdLength { .. } | InvalidRequest::NodeIdCharacters { .. } => {
                "invalid_node_id"
            }
            InvalidRequest::BadName { .. } => "invalid_name",
            InvalidRequest::LatencyTooLong { .. }
            | InvalidRequest::FailureRateOutOfRange { .. } => "invalid_injection",
        }
    }
}

/// Node ids go into URL paths and the state file's keys: short, and plain characters only.
pub fn validate_node_id(node_id: &str) -> Result<(), InvalidRequest> {
    if node_id.is_empty() || node_id.len() > MAX_NODE_ID_BYTES {
        return Err(InvalidRequest::NodeIdLength {
            length: node_id.len(),
        });
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if !node_id.bytes().all(plain) {
        return Err(InvalidRequest::NodeIdCharacters {
            node_id: node_id.to_string(),
        });
    }
    Ok(())
}

impl Injection {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        if let Some(latency_ms) = self.latency_ms.filter(|ms| *ms > MAX_LATENCY_MS) {
            return Err(InvalidRequest::LatencyTooLong { latency_ms });
        }
        if let Some(failure_rate) = self.failure_rate.filter(|rate| !(0.0..=1.0).contains(rate)) {
            return Err(InvalidRequest::FailureRateOutOfRange { failure_rate });
        }
        Ok(())
    }
}

impl CreateRequest {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        for (field, value) in [
            ("hostname", &self.hostname),
            ("clusterName", &self.cluster_name),
            ("dnsSuffix", &self.dns_suffix),
        ] {
            if value.as_deref().is_some_and(|name| !is_name(name)) {
                return Err(InvalidRequest::BadName { field });
            }
        }
        self.injection().validate()
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each limit holds at its value and refuses one past it.
    #[test]
    fn limits_hold_at_the_limit_and_refuse_past_it() {
        assert!(validate_node_id(&"n".repeat(MAX_NODE_ID_BYTES)).is_ok());
        assert_eq!(
            validate_node_id(&"n".repeat(MAX_NODE_ID_BYTES + 1)),
            Err(InvalidRequest::NodeIdLength {
                length: MAX_NODE_ID_BYTES + 1
            })
        );
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("0000-00:a_b.c").is_ok());
        assert_eq!(
            validate_node_id("a/b").unwrap_err().code(),
            "invalid_node_id"
        );

        let at = CreateRequest {
            hostname: Some("h".repeat(MAX_NAME_BYTES)),
            latency_ms: Some(MAX_LATENCY_MS),
            failure_rate: Some(1.0),
            ..CreateRequest::default()
        };
        assert_eq!(at.validate(), Ok(()));
        let long_name = CreateRequest {
            hostname: Some("h".repeat(MAX_NAME_BYTES + 1)),
            ..at.clone()
        };
        assert_eq!(long_name.validate().unwrap_err().code(), "invalid_name");
        let slow = CreateRequest {
            latency_ms: Some(MAX_LATENCY_MS + 1),
            ..at.clone()
        };
        assert_eq!(slow.validate().unwrap_err().code(), "invalid_injection");
        for rate in [-0.1, 1.1, f64::NAN] {
            let bad = Injection {
                failure_rate: Some(rate),
                ..Injection::default()
            };
            assert!(bad.validate().is_err(), "{rate}");
        }
    }
}
