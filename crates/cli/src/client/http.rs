//! The HTTP side of the client: identity headers, idempotency keys and retries.
//!
//! ```text
//!   request ──► send ──► 2xx ──────────────► JSON (or Null for an empty body)
//!                 │  └─► 4xx/5xx ──────────► ServerError {status, code, message}
//!                 └─ connect error / timeout / 503 ──► back off, resend (same Idempotency-Key)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tracing::debug;

use super::render::parse_error_body;
use super::Connection;

/// Attempts per request, including the first.
const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF_MS: u64 = 200;
const MAX_BACKOFF_MS: u64 = 2_000;
/// Bounds one HTTP exchange; a wait is many of these.
const REQUEST_TIMEOUT_SECS: u64 = 30;

/// A connection to the user API (`<server>/v2`) on behalf of one user of one tenant.
pub(crate) struct Api {
    http: reqwest::Client,
    base_url: String,
}

impl Api {
    pub fn new(conn: &Connection) -> anyhow::Result<Api> {
        let mut headers = HeaderMap::new();
        for (name, value, sensitive) in [
            ("coopr-userid", &conn.user, false),
            ("coopr-tenantid", &conn.tenant, false),
            ("coopr-apikey", &conn.api_key, true),
        ] {
            let mut value = HeaderValue::from_str(value)
                .with_context(|| format!("{name} header value {value:?} is not valid in HTTP"))?;
            value.set_sensitive(sensitive);
            headers.insert(HeaderName::from_static(name), value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base_url: base_url(&conn.server),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None, None).await
    }

    /// Sends a request; `path` is relative to `/v2` (e.g. `/clusters/00000079/status`).
    ///
    /// Writes always carry an `Idempotency-Key` (the caller's, or a fresh one), and every retry of
    /// one call reuses it, so a POST whose reply was lost is not applied twice.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base_url, path);
        let key = match (idempotency_key, method == Method::GET) {
            (Some(key), _) => Some(key.to_owned()),
            (None, false) => Some(new_idempotency_key()),
            (None, true) => None,
        };
        let mut attempt = 1;
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key.as_str());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let retry_reason = match request.send().await {
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(error_from(response).await.into());
                    }
                    "503 Service Unavailable".to_owned()
                }
                Ok(response) => {
                    return read_reply(response, &method, &url).await;
                }
                Err(e) if (e.is_connect() || e.is_timeout()) && attempt < MAX_ATTEMPTS => {
                    e.to_string()
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("{method} {url} (after {attempt} attempt(s))")))
                }
            };
            let backoff = backoff_ms(attempt);
            debug!(%method, %url, attempt, backoff_ms = backoff, reason = %retry_reason, "retrying request");
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            attempt += 1;
        }
    }
}

/// Turns a reply into JSON. A server error is returned bare (no URL context) so that it prints
/// as exactly `<status> <code>: <message>`.
async fn read_reply(
    response: reqwest::Response,
    method: &Method,
    url: &str,
) -> anyhow::Result<Value> {
    if !response.status().is_success() {
        return Err(error_from(response).await.into());
    }
    let text = response
        .text()
        .await
        .with_context(|| format!("{method} {url}: reading the reply body"))?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{method} {url}: the reply is not valid JSON"))
}

async fn error_from(response: reqwest::Response) -> super::render::ServerError {
    let status = response.status();
    // A body that cannot be read still leaves the status to report.
    let body = response.text().await.unwrap_or_default();
    parse_error_body(
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        &body,
    )
}

/// `http://host:55054`, `http://host:55054/` and `http://host:55054/v2` all mean the same API.
fn base_url(server: &str) -> String {
    let trimmed = server.trim_end_matches('/');
    let root = trimmed.strip_suffix("/v2").unwrap_or(trimmed);
    format!("{root}/v2")
}

fn backoff_ms(attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(10);
    (FIRST_BACKOFF_MS << shift).min(MAX_BACKOFF_MS)
}

/// A key unique to this call: wall time, process id and a per-process counter.
pub(crate) fn new_idempotency_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cli-{nanos:x}-{:x}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_common_spellings() {
        for server in [
            "http://h:55054",
            "http://h:55054/",
            "http://h:55054/v2",
            "http://h:55054/v2/",
        ] {
            assert_eq!(base_url(server), "http://h:55054/v2", "{server}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 200);
        assert_eq!(backoff_ms(2), 400);
        assert_eq!(backoff_ms(3), 800);
        assert_eq!(backoff_ms(5), 2_000);
        assert_eq!(backoff_ms(u32::MAX), 2_000);
    }

    #[test]
    fn idempotency_keys_are_unique_within_a_process() {
        let a = new_idempotency_key();
        let b = new_idempotency_key();
        assert_ne!(a, b);
        assert!(a.starts_with("cli-"));
    }
}
