//! The job engine: what a cluster operation does, as pure logic with no I/O.
//!
//! ```text
//!  POST /clusters ──► layout::solve_layout ──► nodes (nodenum 1000.., services per node)
//!                                                 │
//!  any operation ──────────────────────► planner::plan ──► stages: [[task, ..], [task, ..], ..]
//!                                                 │
//!                                          job::JobRun::new
//!                                                 │
//!        ┌─────────── ready_tasks / take ─────────┤
//!        ▼                                        │
//!  provisioner worker ── finish(ok | failed) ──► JobRun ──► JobEffect (retry, next stage,
//!        (deadline) ───── expire(now) ─────────►            node replaced, job finished
//!                                                           + the cluster status it leaves)
//! ```
//!
//! Nothing here reads a clock, draws a random number or touches the network or disk: time comes
//! in as `now` (ms since the epoch) and every decision comes back as a value or a list of
//! [`job::JobEffect`]s for the caller to apply. That is what lets the server, the simulation and
//! the tests drive the same code.
//!
//! - [`layout`]: which services go on which machine (template constraints, dependencies).
//! - [`planner`]: an operation's stages of tasks, ordered by service dependencies.
//! - [`job`]: the job state machine (hand out, finish, retry, time out, abort, pause, resume).
//! - [`macros`]: Coopr's `%...%` macros in config and action data, expanded for a task's node.
//! - [`template`]: a cluster template's parents and partial templates merged into it.

pub mod job;
pub mod layout;
pub mod macros;
pub mod planner;
pub mod template;

pub use job::{cluster_status_after, JobEffect, JobError, JobRun};
pub use layout::{
    solve_added_services, solve_layout, AddServicesRequest, LayoutError, LayoutRequest, NodeLayout,
    FIRST_NODENUM,
};
pub use macros::{
    expand_str, expand_value, MacroContext, MacroError, MacroNode, MAX_EXPANSION_BYTES,
};
pub use planner::{plan, task_sequence, PlanInput, PlannedTask};
