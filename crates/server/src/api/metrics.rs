//! Coopr's metrics routes (`AdminHandler`'s queue metrics, `MetricHandler`'s node usage):
//!
//! - `GET /v2/metrics/queues` (tenant admin: its tenant; superadmin: every tenant) →
//!   `{"<tenant>": {"queued", "inProgress", "total"}}`: the tasks of this DC's task queue.
//! - `GET /v2/metrics/nodes/usage[?tenant&user&cluster&clustertemplate&start&end&groupby&timeunit]`
//!   (admins) → `{"start", "end", "data": [{"time", "value"}]}`: node time between each
//!   node's completed CREATE and its completed DELETE (or now), clipped to `[start, end]`
//!   (Unix seconds), per interval of `groupby` (`hour|day|week|month|year`; one interval when
//!   absent), in `timeunit` (Java's `TimeUnit` names, default seconds). A tenant admin asking
//!   for another tenant gets 405, as in Coopr.
//!
//! Both count the clusters of the shards this DC owns: a DC's task queue holds its own
//! clusters' tasks, and node actions are not replicated.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use coopr_types::{TaskName, TaskStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, SUPERADMIN};
use super::limits::{self, MAX_ID_BYTES};
use crate::App;

pub fn routes() -> super::routes::Routes {
    use axum::http::Method;
    super::routes::Routes::new("metrics")
        .route(
            "/v2/metrics/queues",
            get(queues),
            &[(Method::GET, "Task queue lengths")],
        )
        .route(
            "/v2/metrics/nodes/usage",
            get(nodes_usage),
            &[(Method::GET, "Node usage over a time window")],
        )
}

#[derive(Default, Clone, Copy)]
struct QueueMetrics {
    queued: u64,
    in_progress: u64,
}

async fn queues(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let state = app.core.read();
    let mut by_tenant = BTreeMap::<String, QueueMetrics>::new();
    if caller.is_superadmin() {
        for name in app.global(&state).tenants.keys() {
            by_tenant.insert(name.clone(), QueueMetrics::default());
        }
    } else {
        by_tenant.insert(caller.tenant.clone(), QueueMetrics::default());
    }
    for task in state.queued_tasks() {
        if let Some(record) = state.cluster(task.job.cluster) {
            if let Some(m) = by_tenant.get_mut(record.cluster.account.tenant_id.as_str()) {
                m.queued += 1;
            }
        }
    }
    // The tasks workers hold (the state's index of them), not every cluster's jobs.
    for (task, _) in state.held_tasks() {
        if let Some(record) = state.cluster(task.job.cluster) {
            if let Some(m) = by_tenant.get_mut(record.cluster.account.tenant_id.as_str()) {
                m.in_progress += 1;
            }
        }
    }
    let out: serde_json::Map<String, Value> = by_tenant
        .into_iter()
        .map(|(tenant, m)| {
            let view = json!({"queued": m.queued, "inProgress": m.in_progress,
                              "total": m.queued + m.in_progress});
            (tenant, view)
        })
        .collect();
    Ok(Json(Value::Object(out)))
}

#[derive(Deserialize)]
struct UsageQuery {
    tenant: Option<String>,
    user: Option<String>,
    cluster: Option<String>,
    clustertemplate: Option<String>,
    start: Option<String>,
    end: Option<String>,
    groupby: Option<String>,
    timeunit: Option<String>,
}

/// Most intervals one node-usage answer may hold (an hour's intervals over about 12 weeks).
pub const MAX_USAGE_INTERVALS: usize = 2048;

/// Java's `TimeUnit`, the unit of the usage values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl TimeUnit {
    fn parse(s: &str) -> Option<TimeUnit> {
        Some(match s.to_ascii_uppercase().as_str() {
            "NANOSECONDS" => TimeUnit::Nanoseconds,
            "MICROSECONDS" => TimeUnit::Microseconds,
            "MILLISECONDS" => TimeUnit::Milliseconds,
            "SECONDS" => TimeUnit::Seconds,
            "MINUTES" => TimeUnit::Minutes,
            "HOURS" => TimeUnit::Hours,
            "DAYS" => TimeUnit::Days,
            _ => return None,
        })
    }

    /// Milliseconds in this unit, truncated as `TimeUnit.convert` does.
    fn of_ms(self, ms: u64) -> u64 {
        match self {
            TimeUnit::Nanoseconds => ms.saturating_mul(1_000_000),
            TimeUnit::Microseconds => ms.saturating_mul(1_000),
            TimeUnit::Milliseconds => ms,
            TimeUnit::Seconds => ms / 1_000,
            TimeUnit::Minutes => ms / 60_000,
            TimeUnit::Hours => ms / 3_600_000,
            TimeUnit::Days => ms / 86_400_000,
        }
    }
}

/// Coopr's `groupby` periods, in ms (a month is 30 days, a year 12 months).
fn period_ms(groupby: &str) -> Option<u64> {
    const DAY: u64 = 86_400_000;
    Some(match groupby {
        "hour" => 3_600_000,
        "day" => DAY,
        "week" => 7 * DAY,
        "month" => 30 * DAY,
        "year" => 360 * DAY,
        _ => return None,
    })
}

/// What a usage query asks, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageWindow {
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub period_ms: Option<u64>,
    pub unit: TimeUnit,
}

/// One node's life: its CREATE's completion, and its DELETE's if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLife {
    pub created_ms: u64,
    pub deleted_ms: Option<u64>,
}

/// The usage time series (`{"start","end","data"}`, times in Unix seconds), or `None` when the
/// window would need more than [`MAX_USAGE_INTERVALS`] intervals. With no node, the window
/// starts at `start` (else 0) and holds one empty interval, as in Coopr; otherwise it starts
/// at `start` (else the first creation) and ends at `end` (else `now_ms`).
pub fn node_usage(window: &UsageWindow, nodes: &[NodeLife], now_ms: u64) -> Option<Value> {
    let start_ms = window
        .start_ms
        .unwrap_or_else(|| nodes.iter().map(|n| n.created_ms).min().unwrap_or_default());
    let end_ms = window.end_ms.unwrap_or(now_ms).max(start_ms);
    if nodes.is_empty() {
        let data = json!([{"time": start_ms / 1000, "value": 0}]);
        return Some(json!({"start": start_ms / 1000, "end": end_ms / 1000, "data": data}));
    }
    // Interval starts: the window's start, then every multiple of the period after it.
    let mut starts = vec![start_ms];
    if let Some(period) = window.period_ms {
        let mut next = start_ms - start_ms % period + period;
        while next < end_ms {
            if starts.len() >= MAX_USAGE_INTERVALS {
                return None;
            }
            starts.push(next);
            next += period;
        }
    }
    let mut values = vec![0u64; starts.len()];
    for node in nodes {
        let from = node.created_ms.max(start_ms);
        let to = node.deleted_ms.unwrap_or(now_ms).min(end_ms);
        if from >= to {
            continue;
        }
        // The interval holding `from`, then each one up to `to`.
        let first = starts.partition_point(|s| *s <= from).saturating_sub(1);
        for i in first..starts.len() {
            let interval_end = starts.get(i + 1).copied().unwrap_or(end_ms);
            if starts[i] >= to {
                break;
            }
            let overlap = to.min(interval_end).saturating_sub(from.max(starts[i]));
            values[i] = values[i].saturating_add(window.unit.of_ms(overlap));
        }
    }
    let data: Vec<Value> = starts
        .iter()
        .zip(values)
        .map(|(s, v)| json!({"time": s / 1000, "value": v}))
        .collect();
    Some(json!({"start": start_ms / 1000, "end": end_ms / 1000, "data": data}))
}

fn seconds_param(name: &str, value: Option<&str>) -> ApiResult<Option<u64>> {
    value
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_time",
                        format!("{name} must be a Unix time in seconds, got {v:?}"),
                    )
                })
        })
        .transpose()
}

async fn nodes_usage(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    for (field, value) in [
        ("tenant", &q.tenant),
        ("user", &q.user),
        ("cluster", &q.cluster),
        ("clustertemplate", &q.clustertemplate),
    ] {
        limits::text_opt(field, value.as_deref(), MAX_ID_BYTES)?;
    }
    let tenant = match q.tenant {
        Some(t) if caller.tenant != SUPERADMIN && t != caller.tenant => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "tenant_not_allowed",
                format!(
                    "tenant {} may not read the usage of tenant {t}",
                    caller.tenant
                ),
            ))
        }
        Some(t) => Some(t),
        None if caller.tenant == SUPERADMIN => None,
        None => Some(caller.tenant.clone()),
    };
    let window = UsageWindow {
        start_ms: seconds_param("start", q.start.as_deref())?,
        end_ms: seconds_param("end", q.end.as_deref())?,
        period_ms: q
            .groupby
            .as_deref()
            .map(|g| {
                period_ms(g).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_groupby",
                        format!("groupby must be hour, day, week, month or year, got {g:?}"),
                    )
                })
            })
            .transpose()?,
        unit: match q.timeunit.as_deref() {
            None => TimeUnit::Seconds,
            Some(u) => TimeUnit::parse(u).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_timeunit",
                    format!("timeunit must be one of Java's TimeUnit names, got {u:?}"),
                )
            })?,
        },
    };
    let nodes: Vec<NodeLife> = {
        let state = app.core.read();
        // A tenant's usage visits its own clusters only (the state's tenant index).
        let clusters: Box<dyn Iterator<Item = &coopr_state::ClusterRecord>> = match &tenant {
            Some(t) => Box::new(state.tenant_clusters(t)),
            None => Box::new(state.clusters()),
        };
        clusters
            .filter(|r| {
                let c = &r.cluster;
                tenant.as_ref().is_none_or(|t| c.account.tenant_id == *t)
                    && q.user.as_ref().is_none_or(|u| c.account.user_id == *u)
                    && q.cluster.as_ref().is_none_or(|id| c.id.to_string() == *id)
                    && q.clustertemplate
                        .as_ref()
                        .is_none_or(|t| c.cluster_template.name == *t)
            })
            .flat_map(|r| r.nodes.values())
            .filter_map(|node| {
                let completed = |name: TaskName| {
                    node.actions
                        .iter()
                        .filter(|a| a.action == name && a.status == TaskStatus::Complete)
                        .map(|a| a.status_time)
                        .min()
                };
                Some(NodeLife {
                    created_ms: completed(TaskName::Create)?,
                    deleted_ms: completed(TaskName::Delete),
                })
            })
            .collect()
    };
    node_usage(&window, &nodes, app.clock.wall_ms())
        .map(Json)
        .ok_or_else(|| {
            ApiError::bad_request(
                "too_many_intervals",
                format!(
                    "the window holds more than {MAX_USAGE_INTERVALS} intervals \
                     (MAX_USAGE_INTERVALS); narrow it or group by a longer period"
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn window(start: Option<u64>, end: Option<u64>, period: Option<u64>) -> UsageWindow {
        UsageWindow {
            start_ms: start,
            end_ms: end,
            period_ms: period,
            unit: TimeUnit::Seconds,
        }
    }

    #[test]
    fn no_nodes_is_one_empty_interval() {
        let v = node_usage(&window(Some(5_000), None, None), &[], 9_000).unwrap();
        assert_eq!(
            v,
            json!({"start": 5, "end": 9, "data": [{"time": 5, "value": 0}]})
        );
    }

    /// Coopr's example: node seconds of every node between its creation and deletion (or now),
    /// clipped to the window.
    #[test]
    fn node_seconds_are_summed_and_clipped() {
        let nodes = [
            NodeLife {
                created_ms: 10_000,
                deleted_ms: Some(70_000),
            },
            NodeLife {
                created_ms: 40_000,
                deleted_ms: None,
            },
        ];
        let all = node_usage(&window(None, None, None), &nodes, 100_000).unwrap();
        assert_eq!(
            all,
            json!({"start": 10, "end": 100, "data": [{"time": 10, "value": 60 + 60}]})
        );
        let clipped = node_usage(&window(Some(50_000), Some(80_000), None), &nodes, 100_000);
        assert_eq!(clipped.unwrap()["data"][0]["value"], 20 + 30);
    }

    #[test]
    fn groupby_splits_at_period_boundaries() {
        let nodes = [NodeLife {
            created_ms: HOUR / 2,
            deleted_ms: Some(2 * HOUR + HOUR / 4),
        }];
        let mut w = window(Some(0), Some(3 * HOUR), Some(HOUR));
        w.unit = TimeUnit::Minutes;
        let v = node_usage(&w, &nodes, 10 * HOUR).unwrap();
        assert_eq!(
            v["data"],
            json!([{"time": 0, "value": 30}, {"time": 3600, "value": 60},
                   {"time": 7200, "value": 15}])
        );
    }

    #[test]
    fn intervals_are_bounded() {
        let nodes = [NodeLife {
            created_ms: 0,
            deleted_ms: None,
        }];
        let limit = MAX_USAGE_INTERVALS as u64;
        let at_limit = window(Some(0), Some(limit * HOUR), Some(HOUR));
        assert_eq!(
            node_usage(&at_limit, &nodes, limit * HOUR).unwrap()["data"]
                .as_array()
                .unwrap()
                .len(),
            MAX_USAGE_INTERVALS
        );
        let over = window(Some(0), Some((limit + 1) * HOUR), Some(HOUR));
        assert!(node_usage(&over, &nodes, limit * HOUR).is_none());
    }

    #[test]
    fn time_units_and_periods_parse_as_coopr_names_them() {
        assert_eq!(TimeUnit::parse("hours"), Some(TimeUnit::Hours));
        assert_eq!(TimeUnit::parse("SECONDS"), Some(TimeUnit::Seconds));
        assert_eq!(TimeUnit::parse("fortnights"), None);
        assert_eq!(TimeUnit::Hours.of_ms(2 * HOUR + 1), 2);
        assert_eq!(period_ms("week"), Some(7 * 24 * HOUR));
        assert_eq!(period_ms("Week"), None);
    }
}
