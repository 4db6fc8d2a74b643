use coopr_types::TaskId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why the state machine rejected a command. A rejected command changes nothing. Each variant has a
/// stable code and one HTTP status; all are terminal for the request as sent (retrying the same
/// command gets the same answer).
///
/// Serialized inside log outcomes, the idempotency table and snapshots: a `Conflict`'s or an
/// `Invalid`'s code serializes as its string ([`ErrorCode::as_str`]), as when it was a string.
#[derive(Debug, Clone, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandError {
    #[error("{what} {name} not found")]
    NotFound { what: String, name: String },
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
    #[error("tenant {tenant} would exceed its quota: {message}")]
    QuotaExceeded { tenant: String, message: String },
    #[error("task {task} is not owned by worker {worker}")]
    NotTaskOwner { task: TaskId, worker: String },
    #[error("provisioner {id} is not registered")]
    UnknownProvisioner { id: String },
    #[error("{message}")]
    Forbidden { message: String },
}

/// The stable machine-readable code of a [`CommandError`], as clients read it in error bodies
/// (`"code": "stale_epoch"`). Callers match on this, never on the string; the string of each
/// code never changes (it is stored in snapshots and sent between DCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // ---- the codes of the fixed variants
    /// [`CommandError::NotFound`].
    NotFound,
    /// [`CommandError::QuotaExceeded`].
    QuotaExceeded,
    /// [`CommandError::NotTaskOwner`].
    NotTaskOwner,
    /// [`CommandError::UnknownProvisioner`].
    UnknownProvisioner,
    /// [`CommandError::Forbidden`].
    Forbidden,

    // ---- fencing: retryable at the shard's current owner
    /// The write was proposed under another ownership epoch of its shard.
    StaleEpoch,
    /// This DC holds the shard as a replica.
    NotOwner,
    /// The shard is frozen for a handover.
    HandingOver,
    /// A create for a tenant with a quota reached a DC that does not write the global shard
    /// (it moved): the retry is routed to the new owner.
    QuotaElsewhere,

    // ---- tenants and catalog
    /// A tenant with live clusters cannot be deleted.
    TenantHasClusters,
    /// A tenant with workers assigned cannot be deleted (set its workers to 0 first, as in
    /// Coopr).
    TenantHasWorkers,
    /// The tenant was deleted and created again since the request was checked.
    TenantChanged,
    /// A create-only write of a catalog entity that exists.
    EntityExists,

    // ---- plugin resources (see `crate::resources`)
    /// A resource version larger than `MAX_RESOURCE_BYTES` (413 at the API).
    ResourceTooLarge,
    /// The tenant's resources would pass `MAX_TENANT_RESOURCE_BYTES`.
    ResourceQuotaExceeded,
    /// The deployment's stored resources would pass `MAX_STORED_RESOURCE_BYTES`.
    ResourceStoreFull,
    /// A delete of a resource version that is not inactive.
    ResourceNotInactive,

    // ---- clusters and jobs
    ClusterNotActive,
    ClusterPending,
    JobInProgress,
    InvalidAction,
    AbortNotSupported,
    TaskNotReady,
    /// A retried request whose operation was lost in a failover.
    OperationLost,

    // ---- shards, ownership changes and replication
    InvalidShard,
    InvalidEpoch,
    InvalidSeed,
    RetireBatchTooLarge,
    ShardBusy,
    NotAReplica,
    NotCaughtUp,
    TrimBeyondOutbox,
    ReplicationNeedsSeed,
    ReplicationAlreadyApplied,
    ReplicationOutOfOrder,
    ReplicationWrongEpoch,
    ReplicationWrongShard,
    ReplicationWrongOwner,
    ReplicationUnappliable,
    ReplicationSealed,

    // ---- the log
    /// An entry this build cannot decode.
    UndecodableEntry,

    /// A code this build does not know (written by a newer version, read in a mixed-version
    /// deployment or from its snapshot): decoded rather than refused; shown as `unknown`.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 42] = [
        ErrorCode::NotFound,
        ErrorCode::QuotaExceeded,
        ErrorCode::NotTaskOwner,
        ErrorCode::UnknownProvisioner,
        ErrorCode::Forbidden,
        ErrorCode::StaleEpoch,
        ErrorCode::NotOwner,
        ErrorCode::HandingOver,
        ErrorCode::QuotaElsewhere,
        ErrorCode::TenantHasClusters,
        ErrorCode::TenantHasWorkers,
        ErrorCode::TenantChanged,
        ErrorCode::EntityExists,
        ErrorCode::ResourceTooLarge,
        ErrorCode::ResourceQuotaExceeded,
        ErrorCode::ResourceStoreFull,
        ErrorCode::ResourceNotInactive,
        ErrorCode::ClusterNotActive,
        ErrorCode::ClusterPending,
        ErrorCode::JobInProgress,
        ErrorCode::InvalidAction,
        ErrorCode::AbortNotSupported,
        ErrorCode::TaskNotReady,
        ErrorCode::OperationLost,
        ErrorCode::InvalidShard,
        ErrorCode::InvalidEpoch,
        ErrorCode::InvalidSeed,
        ErrorCode::RetireBatchTooLarge,
        ErrorCode::ShardBusy,
        ErrorCode::NotAReplica,
        ErrorCode::NotCaughtUp,
        ErrorCode::TrimBeyondOutbox,
        ErrorCode::ReplicationNeedsSeed,
        ErrorCode::ReplicationAlreadyApplied,
        ErrorCode::ReplicationOutOfOrder,
        ErrorCode::ReplicationWrongEpoch,
        ErrorCode::ReplicationWrongShard,
        ErrorCode::ReplicationWrongOwner,
        ErrorCode::ReplicationUnappliable,
        ErrorCode::ReplicationSealed,
        ErrorCode::UndecodableEntry,
        ErrorCode::Unknown,
    ];

    /// The code as clients see it, and as it is serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::NotTaskOwner => "not_task_owner",
            ErrorCode::UnknownProvisioner => "unknown_provisioner",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::HandingOver => "handing_over",
            ErrorCode::QuotaElsewhere => "quota_elsewhere",
            ErrorCode::TenantHasClusters => "tenant_has_clusters",
            ErrorCode::TenantHasWorkers => "tenant_has_workers",
            ErrorCode::TenantChanged => "tenant_changed",
            ErrorCode::EntityExists => "entity_exists",
            ErrorCode::ResourceTooLarge => "resource_too_large",
            ErrorCode::ResourceQuotaExceeded => "resource_quota_exceeded",
            ErrorCode::ResourceStoreFull => "resource_store_full",
            ErrorCode::ResourceNotInactive => "resource_not_inactive",
            ErrorCode::ClusterNotActive => "cluster_not_active",
            ErrorCode::ClusterPending => "cluster_pending",
            ErrorCode::JobInProgress => "job_in_progress",
            ErrorCode::InvalidAction => "invalid_action",
            ErrorCode::AbortNotSupported => "abort_not_supported",
            ErrorCode::TaskNotReady => "task_not_ready",
            ErrorCode::OperationLost => "operation_lost",
            ErrorCode::InvalidShard => "invalid_shard",
            ErrorCode::InvalidEpoch => "invalid_epoch",
            ErrorCode::InvalidSeed => "invalid_seed",
            ErrorCode::RetireBatchTooLarge => "retire_batch_too_large",
            ErrorCode::ShardBusy => "shard_busy",
            ErrorCode::NotAReplica => "not_a_replica",
            ErrorCode::NotCaughtUp => "not_caught_up",
            ErrorCode::TrimBeyondOutbox => "trim_beyond_outbox",
            ErrorCode::ReplicationNeedsSeed => "replication_needs_seed",
            ErrorCode::ReplicationAlreadyApplied => "replication_already_applied",
            ErrorCode::ReplicationOutOfOrder => "replication_out_of_order",
            ErrorCode::ReplicationWrongEpoch => "replication_wrong_epoch",
            ErrorCode::ReplicationWrongShard => "replication_wrong_shard",
            ErrorCode::ReplicationWrongOwner => "replication_wrong_owner",
            ErrorCode::ReplicationUnappliable => "replication_unappliable",
            ErrorCode::ReplicationSealed => "replication_sealed",
            ErrorCode::UndecodableEntry => "undecodable_entry",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CommandError {
    pub fn not_found(what: &str, name: impl ToString) -> Self {
        CommandError::NotFound {
            what: what.to_string(),
            name: name.to_string(),
        }
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The stable code: what callers match on.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            CommandError::NotFound { .. } => ErrorCode::NotFound,
            CommandError::Conflict { code, .. } | CommandError::Invalid { code, .. } => *code,
            CommandError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            CommandError::NotTaskOwner { .. } => ErrorCode::NotTaskOwner,
            CommandError::UnknownProvisioner { .. } => ErrorCode::UnknownProvisioner,
            CommandError::Forbidden { .. } => ErrorCode::Forbidden,
        }
    }

    /// The stable machine-readable code, as error bodies carry it.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The HTTP status Coopr uses for this outcome.
    pub fn http_status(&self) -> u16 {
        match self {
            CommandError::NotFound { .. } => 404,
            CommandError::Conflict { .. } | CommandError::QuotaExceeded { .. } => 409,
            CommandError::Invalid { .. } => 400,
            CommandError::NotTaskOwner { .. } => 417,
            CommandError::UnknownProvisioner { .. } | CommandError::Forbidden { .. } => 403,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each code's string, pinned: clients, other DCs and stored snapshots read these.
    const PINNED: [(ErrorCode, &str); 42] = [
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::QuotaExceeded, "quota_exceeded"),
        (ErrorCode::NotTaskOwner, "not_task_owner"),
        (ErrorCode::UnknownProvisioner, "unknown_provisioner"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::StaleEpoch, "stale_epoch"),
        (ErrorCode::NotOwner, "not_owner"),
        (ErrorCode::HandingOver, "handing_over"),
        (ErrorCode::QuotaElsewhere, "quota_elsewhere"),
        (ErrorCode::TenantHasClusters, "tenant_has_clusters"),
        (ErrorCode::TenantHasWorkers, "tenant_has_workers"),
        (ErrorCode::TenantChanged, "tenant_changed"),
        (ErrorCode::EntityExists, "entity_exists"),
        (ErrorCode::ResourceTooLarge, "resource_too_large"),
        (ErrorCode::ResourceQuotaExceeded, "resource_quota_exceeded"),
        (ErrorCode::ResourceStoreFull, "resource_store_full"),
        (ErrorCode::ResourceNotInactive, "resource_not_inactive"),
        (ErrorCode::ClusterNotActive, "cluster_not_active"),
        (ErrorCode::ClusterPending, "cluster_pending"),
        (ErrorCode::JobInProgress, "job_in_progress"),
        (ErrorCode::InvalidAction, "invalid_action"),
        (ErrorCode::AbortNotSupported, "abort_not_supported"),
        (ErrorCode::TaskNotReady, "task_not_ready"),
        (ErrorCode::OperationLost, "operation_lost"),
        (ErrorCode::InvalidShard, "invalid_shard"),
        (ErrorCode::InvalidEpoch, "invalid_epoch"),
        (ErrorCode::InvalidSeed, "invalid_seed"),
        (ErrorCode::RetireBatchTooLarge, "retire_batch_too_large"),
        (ErrorCode::ShardBusy, "shard_busy"),
        (ErrorCode::NotAReplica, "not_a_replica"),
        (ErrorCode::NotCaughtUp, "not_caught_up"),
        (ErrorCode::TrimBeyondOutbox, "trim_beyond_outbox"),
        (ErrorCode::ReplicationNeedsSeed, "replication_needs_seed"),
        (
            ErrorCode::ReplicationAlreadyApplied,
            "replication_already_applied",
        ),
        (ErrorCode::ReplicationOutOfOrder, "replication_out_of_order"),
        (ErrorCode::ReplicationWrongEpoch, "replication_wrong_epoch"),
        (ErrorCode::ReplicationWrongShard, "replication_wrong_shard"),
        (ErrorCode::ReplicationWrongOwner, "replication_wrong_owner"),
        (ErrorCode::ReplicationUnappliable, "replication_unappliable"),
        (ErrorCode::ReplicationSealed, "replication_sealed"),
        (ErrorCode::UndecodableEntry, "undecodable_entry"),
        (ErrorCode::Unknown, "unknown"),
    ];

    #[test]
    fn every_code_keeps_its_string() {
        for (code, string) in PINNED {
            assert_eq!(code.as_str(), string);
            assert_eq!(code.to_string(), string);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{string}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        // Every code is pinned once, and `ALL` lists each once.
        let pinned: std::collections::BTreeSet<ErrorCode> =
            PINNED.iter().map(|(c, _)| *c).collect();
        let all: std::collections::BTreeSet<ErrorCode> = ErrorCode::ALL.into_iter().collect();
        assert_eq!(pinned.len(), PINNED.len());
        assert_eq!(all.len(), ErrorCode::ALL.len());
        assert_eq!(pinned, all);
        let strings: std::collections::BTreeSet<&str> = PINNED.iter().map(|(_, s)| *s).collect();
        assert_eq!(strings.len(), PINNED.len(), "two codes share a string");
    }

    /// A code a newer version wrote decodes as `Unknown` instead of failing the whole outcome.
    #[test]
    fn an_unknown_code_decodes() {
        let code: ErrorCode = serde_json::from_str("\"a_code_from_the_future\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }

    /// A new variant must be added to `ALL` (and so to `PINNED`): this match stops compiling
    /// when one is missing from it.
    #[test]
    fn all_lists_every_variant() {
        for code in ErrorCode::ALL {
            match code {
                ErrorCode::NotFound
                | ErrorCode::QuotaExceeded
                | ErrorCode::NotTaskOwner
                | ErrorCode::UnknownProvisioner
                | ErrorCode::Forbidden
                | ErrorCode::StaleEpoch
                | ErrorCode::NotOwner
                | ErrorCode::HandingOver
                | ErrorCode::QuotaElsewhere
                | ErrorCode::TenantHasClusters
                | ErrorCode::TenantHasWorkers
                | ErrorCode::TenantChanged
                | ErrorCode::EntityExists
                | ErrorCode::ResourceTooLarge
                | ErrorCode::ResourceQuotaExceeded
                | ErrorCode::ResourceStoreFull
                | ErrorCode::ResourceNotInactive
                | ErrorCode::ClusterNotActive
                | ErrorCode::ClusterPending
                | ErrorCode::JobInProgress
                | ErrorCode::InvalidAction
                | ErrorCode::AbortNotSupported
                | ErrorCode::TaskNotReady
                | ErrorCode::OperationLost
                | ErrorCode::InvalidShard
                | ErrorCode::InvalidEpoch
                | ErrorCode::InvalidSeed
                | ErrorCode::RetireBatchTooLarge
                | ErrorCode::ShardBusy
                | ErrorCode::NotAReplica
                | ErrorCode::NotCaughtUp
                | ErrorCode::TrimBeyondOutbox
                | ErrorCode::ReplicationNeedsSeed
                | ErrorCode::ReplicationAlreadyApplied
                | ErrorCode::ReplicationOutOfOrder
                | ErrorCode::ReplicationWrongEpoch
                | ErrorCode::ReplicationWrongShard
                | ErrorCode::ReplicationWrongOwner
                | ErrorCode::ReplicationUnappliable
                | ErrorCode::ReplicationSealed
                | ErrorCode::UndecodableEntry
                | ErrorCode::Unknown => {}
            }
        }
    }

    /// Outcomes in the log, the idempotency table and snapshots keep their form: the code is
    /// the same string inside the same object as when it was a `String`.
    #[test]
    fn command_errors_serialize_as_before() {
        let conflict = CommandError::conflict(ErrorCode::StaleEpoch, "moved");
        let json = serde_json::to_string(&conflict).unwrap();
        assert_eq!(
            json,
            r#"{"Conflict":{"code":"stale_epoch","message":"moved"}}"#
        );
        let invalid = CommandError::invalid(ErrorCode::InvalidShard, "no such shard");
        let json = serde_json::to_string(&invalid).unwrap();
        assert_eq!(
            json,
            r#"{"Invalid":{"code":"invalid_shard","message":"no such shard"}}"#
        );
        // What an earlier build stored reads back.
        let stored = r#"{"Err":{"Conflict":{"code":"tenant_has_clusters","message":"m"}}}"#;
        let read: Result<(), CommandError> = serde_json::from_str(stored).unwrap();
        assert_eq!(
            read,
            Err(CommandError::conflict(ErrorCode::TenantHasClusters, "m"))
        );
        assert_eq!(read.unwrap_err().code(), "tenant_has_clusters");
    }

    #[test]
    fn fixed_variants_keep_their_codes() {
        assert_eq!(CommandError::not_found("cluster", 1).code(), "not_found");
        let quota = CommandError::QuotaExceeded {
            tenant: "t".into(),
            message: "m".into(),
        };
        assert_eq!(quota.code(), "quota_exceeded");
        let forbidden = CommandError::Forbidden {
            message: "m".into(),
        };
        assert_eq!(forbidden.code(), "forbidden");
        let unknown = CommandError::UnknownProvisioner { id: "p".into() };
        assert_eq!(unknown.code(), "unknown_provisioner");
    }
}
