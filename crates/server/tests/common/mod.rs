//! Test helpers: an in-process server on loopback (shut down when the test ends, also on
//! failure), an HTTP client that fails the test on any 5xx, and a fake provisioner worker that
//! drives tasks through the provisioner API.

#![allow(dead_code)]

pub mod dcs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coopr_server::{ServerConfig, ServerHandle, StartOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Longest any condition is waited for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Who calls the user API.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No identity headers at all.
    Anonymous,
    /// Demo tenant user `demo` with `demo-key`.
    Demo,
    /// `admin` of the `superadmin` tenant with `admin-key`.
    Superadmin,
    /// Any user, tenant and key.
    As {
        user: String,
        tenant: String,
        key: String,
    },
}

impl Auth {
    pub fn of(user: &str, tenant: &str, key: &str) -> Auth {
        Auth::As {
            user: user.into(),
            tenant: tenant.into(),
            key: key.into(),
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let (user, tenant, key) = match self {
            Auth::Anonymous => return Vec::new(),
            Auth::Demo => ("demo", "demo", "demo-key"),
            Auth::Superadmin => ("admin", "superadmin", "admin-key"),
            Auth::As { user, tenant, key } => (user.as_str(), tenant.as_str(), key.as_str()),
        };
        vec![
            ("Coopr-UserID", user.to_string()),
            ("Coopr-TenantID", tenant.to_string()),
            ("Coopr-ApiKey", key.to_string()),
        ]
    }
}

/// A response: status plus the body as JSON (`Null` when empty, a string when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts a 4xx error with the `{code, message}` body.
    pub fn assert_error(&self, status: u16) -> &str {
        assert_eq!(self.status.as_u16(), status, "unexpected reply {self:?}");
        let code = self.body["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error without code: {self:?}"));
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {self:?}"
        );
        code
    }

    /// A header's value as text (`None` when absent).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "unexpected reply {self:?}");
        &self.body
    }
}

pub struct Client {
    http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(base: String) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            base,
        }
    }

    /// Sends a request with a raw body; fails the test on any 5xx.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        auth: &Auth,
        extra_headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        for (k, v) in auth.headers() {
            req = req.header(k, v);
        }
        for (k, v) in extra_headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            !status.is_server_error(),
            "{method} {path} answered {status}: {text}"
        );
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
        };
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: &Auth,
        body: Option<Value>,
    ) -> Reply {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.raw(method, path, auth, &[], bytes).await
    }

    pub async fn get(&self, path: &str, auth: &Auth) -> Reply {
        self.call(Method::GET, path, auth, None).await
    }

    pub async fn post(&self, path: &str, auth: &Auth, body: Value) -> Reply {
        self.call(Method::POST, path, auth, Some(body)).await
    }

    pub async fn put(&self, path: &str, auth: &Auth, body: Value) -> Reply {
        self.call(Method::PUT, path, auth, Some(body)).await
    }

    pub async fn delete(&self, path: &str, auth: &Auth) -> Reply {
        self.call(Method::DELETE, path, auth, None).await
    }

    /// Provisioner API call (superadmin key only).
    pub async fn prov(&self, method: Method, path: &str, body: Value) -> Reply {
        let bytes = serde_json::to_vec(&body).expect("json");
        self.raw(
            method,
            path,
            &Auth::Anonymous,
            &[("Coopr-ApiKey", "admin-key")],
            Some(bytes),
        )
        .await
    }

    /// Creates a cluster as the demo user; returns its id.
    pub async fn create_cluster(&self, template: &str, machines: u32) -> String {
        let reply = self
            .post(
                "/v2/clusters",
                &Auth::Demo,
                json!({"name": "dev", "clusterTemplate": template, "numMachines": machines}),
            )
            .await;
        reply.assert_ok()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {reply:?}"))
            .to_string()
    }

    pub async fn cluster_status(&self, id: &str) -> Value {
        self.get(&format!("/v2/clusters/{id}/status"), &Auth::Demo)
            .await
            .assert_ok()
            .clone()
    }

    /// Number of clusters the demo tenant admin... the demo user sees.
    pub async fn cluster_count(&self) -> usize {
        self.get("/v2/clusters", &Auth::Demo)
            .await
            .assert_ok()
            .as_array()
            .expect("array")
            .len()
    }
}

/// A server on loopback; shut down by [`TestServer::stop`], or when dropped (a failed test).
pub struct TestServer {
    handle: Option<ServerHandle>,
    pub client: Client,
    pub data_dir: PathBuf,
    /// Keeps the temporary directory alive for restarts; removed when the last user is gone.
    _dir: Option<tempfile::TempDir>,
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=info cargo test ... --
/// --nocapture`); silent otherwise.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn config(data_dir: &Path) -> ServerConfig {
    init_logs();
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        demo: true,
        ..Default::default()
    }
}

impl TestServer {
    /// A demo server on a fresh data dir.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A demo server on a fresh data dir, with config tweaks.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let mut server = Self::start_config(cfg).await;
        server._dir = Some(dir);
        server
    }

    pub async fn start_config(cfg: ServerConfig) -> TestServer {
        Self::start_config_with(cfg, StartOptions::production()).await
    }

    /// A server on the clock and stores of `options` (e.g. in memory, on a simulated clock).
    pub async fn start_config_with(cfg: ServerConfig, options: StartOptions) -> TestServer {
        let data_dir = cfg.data_dir.clone();
        let handle = coopr_server::start_with(cfg, options)
            .await
            .expect("server starts");
        TestServer {
            client: Client::new(handle.url()),
            handle: Some(handle),
            data_dir,
            _dir: None,
        }
    }

    /// Stops the server and returns its data dir (kept alive) for a restart.
    pub async fn stop(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
        (self.data_dir.clone(), self._dir.take())
    }

    pub fn app(&self) -> &coopr_server::App {
        &self.handle.as_ref().expect("running").app
    }

    /// The internal port's address, when the server has one.
    pub fn internal_addr(&self) -> Option<std::net::SocketAddr> {
        self.handle.as_ref().expect("running").internal_addr
    }
}

impl std::ops::Deref for TestServer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Waits until `f` returns `Some`, polling every 20 ms, failing the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// As [`wait_for`], for a condition on something observed: `observe` returns what it saw and
/// whether the condition holds; a timeout shows the last observation.
pub async fn wait_until_seen<T, F, Fut>(what: &str, mut observe: F) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (T, bool)>,
{
    let start = Instant::now();
    loop {
        let (seen, holds) = observe().await;
        if holds {
            return seen;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fake provisioner worker talking to the provisioner API.
pub struct Worker<'a> {
    pub client: &'a Client,
    pub provisioner: String,
    pub worker: String,
}

impl<'a> Worker<'a> {
    /// Registers provisioner `provisioner` and returns a worker of it.
    pub async fn register(client: &'a Client, provisioner: &str, worker: &str) -> Worker<'a> {
        client
            .prov(
                Method::PUT,
                &format!("/v2/provisioners/{provisioner}"),
                json!({"id": provisioner, "host": "127.0.0.1", "port": 1, "capacityTotal": 4}),
            )
            .await
            .assert_ok();
        Worker {
            client,
            provisioner: provisioner.into(),
            worker: worker.into(),
        }
    }

    /// A second worker of the same provisioner (no registration).
    pub fn sibling(&self, worker: &str) -> Worker<'a> {
        Worker {
            client: self.client,
            provisioner: self.provisioner.clone(),
            worker: worker.into(),
        }
    }

    pub async fn take_reply(&self) -> Reply {
        self.client
            .prov(
                Method::POST,
                "/v2/tasks/take",
                json!({"provisionerId": self.provisioner, "workerId": self.worker}),
            )
            .await
    }

    /// The next task, or `None` on 204.
    pub async fn take(&self) -> Option<Value> {
        let reply = self.take_reply().await;
        match reply.status.as_u16() {
            200 => Some(reply.body),
            204 => {
                assert!(reply.text.is_empty(), "204 with a body: {reply:?}");
                None
            }
            _ => panic!("take: {reply:?}"),
        }
    }

    pub async fn finish_reply(&self, task: &Value, status: i64) -> Reply {
        let task_id = task["taskId"].as_str().expect("taskId");
        let mut body = json!({
            "provisionerId": self.provisioner,
            "workerId": self.worker,
            "tenantId": "",
            "taskId": task_id,
            "status": status,
            "stdout": format!("ran {}", task["taskName"]),
            "stderr": "",
        });
        if task["taskName"] == "CREATE" {
            let n = task["config"]["nodenum"].as_u64().unwrap_or(0);
            body["hostname"] = json!(format!("node{n}.test"));
            body["ipaddresses"] = json!({"access_v4": format!("10.0.0.{}", n % 250)});
            body["result"] = json!({"providerid": format!("fake-{n}")});
        }
        self.client
            .prov(Method::POST, "/v2/tasks/finish", body)
            .await
    }

    pub async fn finish(&self, task: &Value, status: i64) {
        self.finish_reply(task, status).await.assert_ok();
    }

    /// Takes and finishes (status 0) tasks until the queue is empty; returns how many ran.
    pub async fn drive(&self) -> usize {
        let mut count = 0;
        while let Some(task) = self.take().await {
            self.finish(&task, 0).await;
            count += 1;
            assert!(count < 10_000, "tasks never run out");
        }
        count
    }
}
