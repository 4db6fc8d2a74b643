//! The provisioner API: register, heartbeat, unregister, take a task, finish a task (and the
//! superadmin's `GET /v2/provisioners/{id}`, in `tenants.rs` with the listing).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Json;
use coopr_state::{Command, Outcome, ProvisionerInfo, TaskResult};
use coopr_types::{JsonMap, TaskId};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, ProvisionerAuth};
use super::limits;
use super::views;
use crate::App;

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    super::routes::Routes::new("provisioner")
        .route(
            "/v2/provisioners/{id}",
            put(register)
                .delete(unregister)
                .get(super::tenants::show_provisioner),
            &[
                (Method::PUT, "Register a provisioner"),
                (Method::DELETE, "Unregister a provisioner"),
                (Method::GET, "A provisioner (superadmin)"),
            ],
        )
        .route(
            "/v2/provisioners/{id}/heartbeat",
            post(heartbeat),
            &[(Method::POST, "A provisioner's heartbeat")],
        )
        .route(
            "/v2/tasks/take",
            post(take),
            &[(Method::POST, "Take a task")],
        )
        .route(
            "/v2/tasks/finish",
            post(finish),
            &[(Method::POST, "Report a task's result")],
        )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    id: Option<String>,
    host: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::lenient_u64_opt")]
    port: Option<u64>,
    #[serde(default, deserialize_with = "super::lenient::lenient_u64_opt")]
    capacity_total: Option<u64>,
}

async fn register(
    State(app): State<Arc<App>>,
    _: ProvisionerAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> ApiResult<Response> {
    super::lenient::valid_name("provisioner id", &id)?;
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::bad_request(
            "id_mismatch",
            "the body's id differs from the path's",
        ));
    }
    let host = body
        .host
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_field", "host is required"))?;
    limits::text("host", &host, limits::MAX_DNS_NAME_BYTES)?;
    let port = body
        .port
        .ok_or_else(|| ApiError::bad_request("missing_field", "port is required"))?;
    let port = u16::try_from(port)
        .map_err(|_| ApiError::bad_request("invalid_port", "port must be at most 65535"))?;
    let capacity_total = match body.capacity_total {
        Some(c) if (1..=10_000).contains(&c) => c as u32,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_capacity",
                "capacityTotal must be between 1 and 10000",
            ))
        }
    };
    let info = ProvisionerInfo {
        id: id.clone(),
        host,
        port,
        capacity_total,
    };
    app.heartbeat(&id);
    // A provisioner registers when it starts: whatever tasks an earlier incarnation held are
    // lost with it, so they are retried now rather than when their timeout runs out.
    let holds_tasks = app.core.read().tasks_held_by(&id) > 0;
    if holds_tasks {
        app.propose(Command::ReleaseProvisioner { id: id.clone() }, None)
            .await??;
    }
    if app.core.read().local.provisioners.get(&id) == Some(&info) {
        return Ok(StatusCode::OK.into_response());
    }
    app.propose(Command::RegisterProvisioner { info }, None)
        .await??;
    Ok(StatusCode::OK.into_response())
}

async fn unregister(
    State(app): State<Arc<App>>,
    _: ProvisionerAuth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    app.propose(Command::ReleaseProvisioner { id: id.clone() }, None)
        .await??;
    app.propose(Command::UnregisterProvisioner { id: id.clone() }, None)
        .await??;
    app.forget_provisioner(&id);
    Ok(StatusCode::OK.into_response())
}

async fn heartbeat(
    State(app): State<Arc<App>>,
    _: ProvisionerAuth,
    Path(id): Path<String>,
    JsonBody(_body): JsonBody<Option<Value>>,
) -> ApiResult<Response> {
    if !app.core.read().local.provisioners.contains_key(&id) {
        return Err(ApiError::not_found("provisioner", &id));
    }
    app.heartbeat(&id);
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TakeBody {
    provisioner_id: String,
    worker_id: String,
    #[serde(default)]
    tenant_id: Option<String>,
}

async fn take(
    State(app): State<Arc<App>>,
    _: ProvisionerAuth,
    JsonBody(body): JsonBody<TakeBody>,
) -> ApiResult<Response> {
    // The worker id is stored with the task it takes.
    limits::text("provisionerId", &body.provisioner_id, limits::MAX_ID_BYTES)?;
    limits::text("workerId", &body.worker_id, limits::MAX_ID_BYTES)?;
    // The shards whose tasks this DC may hand out now (its lease's; `None`: a single DC).
    let runnable = app.runnable_shards();
    let (held, queued) = {
        let state = app.core.read();
        if !state.local.provisioners.contains_key(&body.provisioner_id) {
            return Err(ApiError::forbidden(format!(
                "provisioner {} is not registered",
                body.provisioner_id
            )));
        }
        // Every poll shows the provisioner is alive, also one that finds the queue empty
        // (otherwise an idle provisioner would be declared dead between its heartbeats).
        app.heartbeat(&body.provisioner_id);
        let held = state
            .task_held_by_worker(&body.provisioner_id, &body.worker_id)
            .and_then(|task| {
                let shard = state.task(task)?.cluster_id().shard(app.config.shard_count);
                Some((task, shard))
            });
        (held, state.queued_task_count())
    };
    // A worker asking for work while the log says it holds a task lost the answer to its take
    // (e.g. the leader died before answering): it gets that task again, if this DC may still
    // write the task's shard now (the check a write of its result makes). A shard taken over
    // while this DC was cut off still shows the task held here until the DC demotes it, and
    // the new owner runs the task itself: handing it out again would run it in two DCs at once.
    let held = held
        .filter(|(_, shard)| !app.config.multi_dc() || app.fence(Some(*shard), true).is_ok())
        .map(|(task, _)| task);
    // Polling an empty queue must not cost a log write, and neither should polls racing for
    // fewer queued tasks than there are takes already on their way to the log.
    if held.is_none() && app.takes_in_flight.load(Ordering::Acquire) >= queued {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if let Some(held) = held {
        return hand_out(&app, &body.provisioner_id, &body.worker_id, held).await;
    }
    app.takes_in_flight.fetch_add(1, Ordering::AcqRel);
    let _in_flight = InFlight(&app.takes_in_flight);
    let (provisioner_id, worker_id) = (body.provisioner_id, body.worker_id);
    let command = Command::TakeTask {
        provisioner_id: provisioner_id.clone(),
        worker_id: worker_id.clone(),
        tenant_id: body.tenant_id,
        timeout_ms: app.config.task_timeout_ms,
        shards: runnable,
    };
    let Outcome::TaskTaken {
        task: Some(task_id),
    } = app.propose(command, None).await??
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    hand_out(&app, &provisioner_id, &worker_id, task_id).await
}

/// Answers a take with the task `worker_id` holds. When the cluster config's macros cannot be
/// expanded for it, the attempt fails on the worker's behalf (status -1, the reason in its
/// stderr and in the job's message, as Coopr fails such a task; retried like any failed
/// attempt, then the job fails) and the worker gets no task (204).
async fn hand_out(
    app: &App,
    provisioner_id: &str,
    worker_id: &str,
    task_id: TaskId,
) -> ApiResult<Response> {
    let view = {
        let state = app.core.read();
        let task = state
            .task(task_id)
            .ok_or_else(|| ApiError::not_found("task", task_id))?;
        views::task_for_provisioner(&state, task)
            .ok_or_else(|| ApiError::not_found("task", task_id))?
    };
    let error = match view {
        Ok(view) => return Ok(Json(view).into_response()),
        Err(e) => e,
    };
    tracing::warn!(task = %task_id, code = error.code(), error = %error, "macro expansion failed");
    metrics::counter!("coopr_macro_expansion_failures_total").increment(1);
    let result = TaskResult {
        provisioner_id: provisioner_id.to_string(),
        worker_id: worker_id.to_string(),
        task: task_id,
        status: -1,
        stdout: String::new(),
        stderr: format!(
            "Exception while expanding macros ({}): {error}",
            error.code()
        ),
        hostname: None,
        ipaddresses: None,
        result: JsonMap::new(),
    };
    app.propose(Command::FinishTask(Box::new(result)), None)
        .await??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Counts a take proposal as in flight until it is answered (or its request is dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FinishBody {
    provisioner_id: Option<String>,
    worker_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    tenant_id: Option<String>,
    task_id: Option<String>,
    status: Option<Value>,
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    ipaddresses: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    result: Option<JsonMap>,
}

/// Bounds what a result stores beyond the task's own output (which the body's string bound
/// covers): the hostname, addresses and result become the node's and travel in records.
fn check_finish_limits(
    provisioner_id: &str,
    worker_id: &str,
    hostname: &Option<String>,
    ipaddresses: &Option<std::collections::BTreeMap<String, String>>,
    result: &Option<JsonMap>,
) -> ApiResult<()> {
    limits::text("provisionerId", provisioner_id, limits::MAX_ID_BYTES)?;
    limits::text("workerId", worker_id, limits::MAX_ID_BYTES)?;
    limits::text_opt("hostname", hostname.as_deref(), limits::MAX_DNS_NAME_BYTES)?;
    limits::value("ipaddresses", ipaddresses)?;
    limits::value("result", result)
}

/// Code of a result for a task of a shard this DC does not own (409, terminal).
pub const TASK_NOT_HERE: &str = "task_not_here";

fn required(v: Option<String>, field: &str) -> ApiResult<String> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_field", format!("{field} is required")))
}

async fn finish(
    State(app): State<Arc<App>>,
    _: ProvisionerAuth,
    JsonBody(body): JsonBody<FinishBody>,
) -> ApiResult<Response> {
    let provisioner_id = required(body.provisioner_id, "provisionerId")?;
    let worker_id = required(body.worker_id, "workerId")?;
    let task: TaskId =
        required(body.task_id, "taskId")?
            .parse()
            .map_err(|e: coopr_types::IdError| {
                ApiError::bad_request("invalid_task_id", e.to_string())
            })?;
    let status = match body.status {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request("missing_field", "status must be an integer"))?;
    check_finish_limits(
        &provisioner_id,
        &worker_id,
        &body.hostname,
        &body.ipaddresses,
        &body.result,
    )?;
    // A task belongs to its cluster's shard, which only the owner DC writes. Provisioners
    // serve one DC, so a result for another DC's shard will never be taken here: retrying it
    // cannot succeed (a task of a shard that moved away was stopped with the move).
    let shard = task.job.cluster.shard(app.config.shard_count);
    if !app.owns(shard) {
        let owner = app.placement().owner(shard).to_string();
        return Err(ApiError::conflict(
            TASK_NOT_HERE,
            format!(
                "task {task} belongs to shard {shard}, which datacenter {owner} owns, not {}",
                app.config.dc
            ),
        ));
    }
    app.heartbeat(&provisioner_id);
    let result = TaskResult {
        provisioner_id,
        worker_id,
        task,
        status,
        stdout: body.stdout.unwrap_or_default(),
        stderr: body.stderr.unwrap_or_default(),
        hostname: body.hostname,
        ipaddresses: body.ipaddresses,
        result: body.result.unwrap_or_default(),
    };
    app.propose(Command::FinishTask(Box::new(result)), None)
        .await??;
    Ok(StatusCode::OK.into_response())
}
