//! Statuses and action names exactly as Coopr has them. Values serialize in lowercase (as Coopr's
//! API shows cluster, job and node-action statuses) except task names, which are uppercase.

use serde::{Deserialize, Serialize};

macro_rules! names {
    ($t:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub const ALL: &'static [$t] = &[$($t::$v),*];
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),* }
            }
            /// Parses the name, ignoring ASCII case (Coopr's `?status=` filters are case-insensitive).
            pub fn parse_ignore_case(s: &str) -> Option<$t> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterStatus {
    Pending,
    Active,
    Incomplete,
    Inconsistent,
    Terminated,
}
names!(ClusterStatus { Pending => "pending", Active => "active", Incomplete => "incomplete",
    Inconsistent => "inconsistent", Terminated => "terminated" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    NotSubmitted,
    Running,
    Complete,
    Failed,
    Paused,
}
names!(JobStatus { NotSubmitted => "not_submitted", Running => "running", Complete => "complete",
    Failed => "failed", Paused => "paused" });

impl JobStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Complete | JobStatus::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    NotSubmitted,
    InProgress,
    Complete,
    Failed,
    Dropped,
}
names!(TaskStatus { NotSubmitted => "not_submitted", InProgress => "in_progress", Complete => "complete",
    Failed => "failed", Dropped => "dropped" });

/// A task type. Node-level tasks (CREATE, CONFIRM, BOOTSTRAP, DELETE) go to the provider or to
/// every automator; service tasks go to the service's action plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskName {
    Create,
    Confirm,
    Bootstrap,
    Install,
    Remove,
    Initialize,
    Configure,
    Start,
    Stop,
    Delete,
}
names!(TaskName { Create => "CREATE", Confirm => "CONFIRM", Bootstrap => "BOOTSTRAP", Install => "INSTALL",
    Remove => "REMOVE", Initialize => "INITIALIZE", Configure => "CONFIGURE", Start => "START",
    Stop => "STOP", Delete => "DELETE" });

impl TaskName {
    /// Whether the task acts on a service (and so names one) rather than on the machine.
    pub fn is_service_task(self) -> bool {
        !matches!(
            self,
            TaskName::Create | TaskName::Confirm | TaskName::Bootstrap | TaskName::Delete
        )
    }

    /// Whether the provider plugin (rather than an automator) runs this task.
    pub fn is_provider_task(self) -> bool {
        matches!(
            self,
            TaskName::Create | TaskName::Confirm | TaskName::Delete
        )
    }

    /// The key of a service's `provisioner.actions` map for this task (`install`, `start`, ...).
    pub fn action_key(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

/// A cluster operation (a job's action). Lowercase in `/status`, uppercase in plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterAction {
    SolveLayout,
    ClusterCreate,
    ClusterDelete,
    ClusterConfigure,
    ClusterConfigureWithRestart,
    StopServices,
    StartServices,
    RestartServices,
    AddServices,
}
names!(ClusterAction { SolveLayout => "solve_layout", ClusterCreate => "cluster_create",
    ClusterDelete => "cluster_delete", ClusterConfigure => "cluster_configure",
    ClusterConfigureWithRestart => "cluster_configure_with_restart", StopServices => "stop_services",
    StartServices => "start_services", RestartServices => "restart_services", AddServices => "add_services" });

impl ClusterAction {
    /// The uppercase form used in plans (`CLUSTER_CREATE`).
    pub fn plan_name(self) -> String {
        self.as_str().to_ascii_uppercase()
    }
}
