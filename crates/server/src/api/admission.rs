//! Admission of requests on every listener: a per-class concurrency limit that sheds load
//! instead of queueing it, and a per-class request timeout, so that one tenant's flood (or
//! slow client) cannot stall the node, and user load never sheds the node's internal calls.
//!
//! ```text
//!  request --> class by listener and path:
//!    API port:      /internal/...                 replication  (internal limit; timeout +
//!                                                               the long poll's MAX_WAIT_MS)
//!                   /status /v2/status /ready     health       (HEALTH_MAX_CONCURRENT_REQUESTS)
//!                   /metrics
//!                   everything else               api          (api limit and timeout)
//!    internal port: everything (Raft RPCs of the DC log and of the placement group, lease
//!                   renewals, placement calls)    internal     (internal limit and timeout)
//!  --> a free permit of the class? no: 503 `overloaded` + Retry-After (never queued)
//!  --> answered within the class's timeout? no: 503 `request_timeout` + Retry-After
//! ```
//!
//! Each class has its own semaphore: a saturated user API leaves replication, health checks
//! and the internal port untouched. A timed-out request's handler is dropped; a write it had
//! proposed may still commit, as after `no_quorum`, which is why the answer is a retryable 503
//! (the client retries with its `Idempotency-Key`) rather than a 408 that blames the client.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::config::ServerConfig;
use crate::replication::owner::MAX_WAIT_MS;

/// Most `/status`, `/v2/status`, `/ready` and `/metrics` requests served at once (health checkers and
/// scrapers: a handful).
pub const HEALTH_MAX_CONCURRENT_REQUESTS: usize = 64;

/// One class of requests: its permits and its timeout.
struct Pool {
    class: &'static str,
    permits: Arc<Semaphore>,
    capacity: usize,
    timeout: Duration,
}

impl Pool {
    fn new(class: &'static str, capacity: usize, timeout: Duration) -> Pool {
        Pool {
            class,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            timeout,
        }
    }
}

/// The pools of one listener and how its requests are classified.
pub struct Admission {
    pools: Vec<Pool>,
    /// The index in `pools` of a request's class, from its path.
    classify: fn(&str) -> usize,
}

impl Admission {
    /// The API port's pools: `api`, `health` and `replication`.
    pub fn public(config: &ServerConfig) -> Arc<Admission> {
        Arc::new(Admission {
            pools: vec![
                Pool::new(
                    "api",
                    config.api_max_concurrent_requests,
                    Duration::from_millis(config.api_request_timeout_ms),
                ),
                Pool::new(
                    "health",
                    HEALTH_MAX_CONCURRENT_REQUESTS,
                    Duration::from_millis(config.api_request_timeout_ms),
                ),
                Pool::new(
                    "replication",
                    config.internal_max_concurrent_requests,
                    Duration::from_millis(config.internal_request_timeout_ms + MAX_WAIT_MS),
                ),
            ],
            classify: |path| {
                if path.starts_with("/internal/") {
                    2
                } else if matches!(path, "/status" | "/v2/status" | "/ready" | "/metrics") {
                    1
                } else {
                    0
                }
            },
        })
    }

    /// The internal port's pools: `internal`, and `snapshot` for the snapshot chunks of the
    /// Raft groups, whose last chunk is answered only once the node installed the snapshot
    /// (minutes for millions of clusters): the leader's own bound on it
    /// (`coopr_raft::SNAPSHOT_INSTALL_TIMEOUT_MS`) applies, not the internal one.
    pub fn internal(config: &ServerConfig) -> Arc<Admission> {
        Arc::new(Admission {
            pools: vec![
                Pool::new(
                    "internal",
                    config.internal_max_concurrent_requests,
                    Duration::from_millis(config.internal_request_timeout_ms),
                ),
                Pool::new(
                    "snapshot",
                    config.internal_max_concurrent_requests,
                    Duration::from_millis(
                        config
                            .internal_request_timeout_ms
                            .max(coopr_raft::SNAPSHOT_INSTALL_TIMEOUT_MS),
                    ),
                ),
            ],
            classify: |path| usize::from(path.ends_with(coopr_raft::network::SNAPSHOT_PATH)),
        })
    }

    /// Wraps `router` (every route, the fallback included) in this admission.
    pub fn layer(self: Arc<Self>, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(self, admit))
    }
}

/// The middleware: a permit of the request's class or 503 `overloaded`; an answer within the
/// class's timeout or 503 `request_timeout`.
pub async fn admit(
    State(admission): State<Arc<Admission>>,
    request: Request,
    next: Next,
) -> Response {
    let index = (admission.classify)(request.uri().path());
    let Some(pool) = admission.pools.get(index) else {
        return next.run(request).await;
    };
    let Ok(_permit) = pool.permits.clone().try_acquire_owned() else {
        metrics::counter!("coopr_requests_shed_total", "class" => pool.class).increment(1);
        return ApiError::unavailable(
            "overloaded",
            format!(
                "this node is serving its limit of {} concurrent {} requests; retry later",
                pool.capacity, pool.class
            ),
        )
        .into_response();
    };
    match tokio::time::timeout(pool.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            metrics::counter!("coopr_request_timeouts_total", "class" => pool.class).increment(1);
            ApiError::unavailable(
                "request_timeout",
                format!(
                    "no answer within {} ms; a write may still be applied: retry with the same \
                     Idempotency-Key",
                    pool.timeout.as_millis()
                ),
            )
            .into_response()
        }
    }
}
