use coopr_types::TaskId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why the state machine rejected a command. A rejected command changes nothing. Each variant has a
/// stable code and one HTTP status; all are terminal for the request as sent (retrying the same
/// command gets the same answer).
#[derive(Debug, Clone, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandError {
    #[error("{what} {name} not found")]
    NotFound { what: String, name: String },
    #[error("{message}")]
    Conflict { code: String, message: String },
    #[error("{message}")]
    Invalid { code: String, message: String },
    #[error("tenant {tenant} would exceed its quota: {message}")]
    QuotaExceeded { tenant: String, message: String },
    #[error("task {task} is not owned by worker {worker}")]
    NotTaskOwner { task: TaskId, worker: String },
    #[error("provisioner {id} is not registered")]
    UnknownProvisioner { id: String },
    #[error("{message}")]
    Forbidden { message: String },
}

impl CommandError {
    pub fn not_found(what: &str, name: impl ToString) -> Self {
        CommandError::NotFound {
            what: what.to_string(),
            name: name.to_string(),
        }
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        CommandError::Conflict {
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        CommandError::Invalid {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            CommandError::NotFound { .. } => "not_found",
            CommandError::Conflict { code, .. } | CommandError::Invalid { code, .. } => code,
            CommandError::QuotaExceeded { .. } => "quota_exceeded",
            CommandError::NotTaskOwner { .. } => "not_task_owner",
            CommandError::UnknownProvisioner { .. } => "unknown_provisioner",
            CommandError::Forbidden { .. } => "forbidden",
        }
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
