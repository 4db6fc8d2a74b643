//! The web console in a real browser: headless Chromium driven through `chromedriver` (Debian's
//! `chromium` and `chromium-driver`) over the W3C WebDriver protocol, against a `coopr demo`
//! of three DCs. Skipped, saying so, where either is missing (`.ci/run` installs them).
//!
//! With `COOPR_SCREENSHOTS=DIR` set, it saves a screenshot of each page there (how
//! `docs/console/*.png` are made).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any condition in the browser is waited for.
const DEADLINE: Duration = Duration::from_secs(60);
/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn installed(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One WebDriver session of headless Chromium.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: common::Process,
    /// The `TMPDIR` of the driver and of the browser it starts, removed after the driver is
    /// killed: Chromium leaves its profile folders (`org.chromium.Chromium.*`) in it, two per
    /// session, which in `/tmp` outlived every run.
    _tmp: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = common::free_base_port(1);
        let tmp = tempfile::tempdir().expect("a temporary folder for the browser");
        let driver = common::Process(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .env("TMPDIR", tmp.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DEADLINE;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"
            ]},
            // A confirmation dialog stays open until the test accepts or dismisses it.
            "unhandledPromptBehavior": "ignore"
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{session}"),
            _driver: driver,
            _tmp: tmp,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let answer: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver JSON");
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` in the page (a function body; `arguments` are `args`) and returns its value.
    async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Waits until `script` returns something other than `null` or `false`; returns it.
    async fn wait(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.eval(script, args.clone()).await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            if Instant::now() > deadline {
                let page = self
                    .eval(
                        "return document.getElementById('main').innerText",
                        json!([]),
                    )
                    .await;
                panic!("timed out waiting for {what}; the page shows: {page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Does `act` to the element `css` finds, finding it again while the page replaced it
    /// meanwhile (its live parts are redrawn every second: a stale reference).
    async fn on_element(&self, css: &str, act: &[(&str, Value)]) {
        for _ in 0..50 {
            let id = self.element(css).await;
            let mut stale = false;
            for (what, body) in act {
                let answer = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/element/{id}/{what}"),
                        body.clone(),
                    )
                    .await;
                if answer["error"] == "stale element reference" {
                    stale = true;
                    break;
                }
                assert!(answer["error"].is_null(), "{what} on {css}: {answer}");
            }
            if !stale {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{css} kept going stale");
    }

    async fn click(&self, css: &str) {
        self.on_element(css, &[("click", json!({}))]).await;
    }

    async fn fill(&self, css: &str, text: &str) {
        self.on_element(
            css,
            &[("clear", json!({})), ("value", json!({ "text": text }))],
        )
        .await;
    }

    /// Accepts the confirmation dialog that is open now; returns its text.
    async fn accept(&self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self
                .call(reqwest::Method::GET, "/alert/text", Value::Null)
                .await;
            if let Some(text) = text.as_str() {
                self.call(reqwest::Method::POST, "/alert/accept", json!({}))
                    .await;
                return text.to_string();
            }
            assert!(Instant::now() < deadline, "no confirmation dialog opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn log_in(&self, tenant: &str, user: &str, key: &str) {
        self.fill("#login input[name=tenant]", tenant).await;
        self.fill("#login input[name=user]", user).await;
        self.fill("#login input[name=key]", key).await;
        self.click("#login button").await;
    }

    /// Saves the page as `DIR/name.png` when `COOPR_SCREENSHOTS=DIR` is set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("COOPR_SCREENSHOTS") else {
            return;
        };
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(png.as_str().unwrap_or_default())
                .expect("a base64 screenshot")
        };
        let path = Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
    }

    async fn close(self) {
        let _ = self
            .http
            .delete(&self.session)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
    }
}

/// An operator's first session: log in as the superadmin and see three DCs on the shard map
/// and the Datacenters page; log in as the demo user, create a cluster (confirming) and watch
/// it become active; back as the superadmin, hand a shard over (confirming) and see the map
/// show its new owner at the next epoch, and the handover among the events.
#[test]
fn the_console_shows_the_dcs_and_drives_a_cluster_and_a_handover() {
    if !installed("chromedriver") || !installed("chromium") {
        eprintln!(
            "skipped: chromium and chromedriver are needed (apt-get install -y chromium chromium-driver)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = common::Demo::start(
        3,
        dir.path(),
        &["--workers", "2", "--fake-latency-ms", "20"],
    );
    let url = demo.url(0);
    common::run_serially(async move {
        let browser = Browser::start().await;
        browser.go(&format!("{url}/ui/")).await;
        browser
            .wait(
                "the login form",
                "return !!document.getElementById('login')",
                json!([]),
            )
            .await;
        browser.screenshot("login").await;
        browser.log_in("superadmin", "admin", "admin-key").await;

        // The shard map: every shard, owned by the three DCs.
        let owners = browser
            .wait(
                "a shard map with three owners",
                "const cells = [...document.querySelectorAll('#shard-grid .shard')];
                 const owners = [...new Set(cells.map(c => c.dataset.owner))].sort();
                 return cells.length > 1 && owners.length === 3 ? owners : null;",
                json!([]),
            )
            .await;
        assert_eq!(owners, json!(["a", "b", "c"]));
        browser.screenshot("shard-map").await;

        browser.go(&format!("{url}/ui/#/dcs")).await;
        let dcs = browser
            .wait(
                "three DCs renewing their leases, each node ready",
                "const rows = [...document.querySelectorAll('#dcs tr[data-dc]')];
                 return rows.length === 3 && rows.every(r => r.querySelector('.lease').innerText === 'renewing'
                     && r.innerText.includes(r.dataset.dc + '1') && r.innerText.includes('ready')
                     && /lease \\d+ ms left/.test(r.innerText)
                     && !r.innerText.includes('unreachable') && !r.innerText.includes('not ready'))
                   ? rows.map(r => r.dataset.dc) : null;",
                json!([]),
            )
            .await;
        assert_eq!(dcs, json!(["a", "b", "c"]));
        browser.screenshot("datacenters").await;
        browser.go(&format!("{url}/ui/#/replication")).await;
        browser
            .wait(
                "the lag chart",
                "return !!document.querySelector('svg.chart')",
                json!([]),
            )
            .await;
        browser.screenshot("replication").await;

        // A tenant user creates a cluster and watches it become active.
        browser.click("#logout").await;
        browser.log_in("demo", "demo", "demo-key").await;
        browser
            .wait(
                "the create form with the templates",
                "const form = document.getElementById('create');
                 return form && form.template.options.length > 0;",
                json!([]),
            )
            .await;
        // Typing keeps the focus in the form, which the page does not redraw meanwhile.
        browser
            .fill("#create input[name=name]", "from-the-console")
            .await;
        browser
            .eval(
                "const t = document.getElementById('create').template; t.value = 'base';",
                json!([]),
            )
            .await;
        browser.click("#create button").await;
        let question = browser.accept().await;
        assert!(question.contains("from-the-console"), "{question}");
        let id = browser
            .wait(
                "the new cluster to be active",
                "const row = [...document.querySelectorAll('#clusters tr[data-cluster]')]
                   .find(r => r.innerText.includes('from-the-console'));
                 return row && row.dataset.status === 'active' ? row.dataset.cluster : null;",
                json!([]),
            )
            .await;
        browser.screenshot("clusters").await;
        let id = id.as_str().expect("cluster id").to_string();
        browser.go(&format!("{url}/ui/#/clusters/{id}")).await;
        browser
            .wait(
                "the cluster page",
                "const s = document.getElementById('cluster-status');
                 return s && s.innerText === 'active';",
                json!([]),
            )
            .await;
        browser.screenshot("cluster").await;

        // The superadmin hands a shard of a over to b and sees the map change.
        browser.click("#logout").await;
        browser.log_in("superadmin", "admin", "admin-key").await;
        let shard = browser
            .wait(
                "a shard of a",
                "const cell = [...document.querySelectorAll('#shard-grid .shard')]
                   .find(c => c.dataset.owner === 'a' && c.dataset.shard !== 'global'
                              && c.dataset.status === 'active');
                 return cell ? [cell.dataset.shard, Number(cell.dataset.epoch)] : null;",
                json!([]),
            )
            .await;
        let (number, epoch) = (
            shard[0].as_str().expect("shard"),
            shard[1].as_u64().expect("epoch"),
        );
        browser
            .eval(
                "const f = document.getElementById('handover');
                 f.shard.value = arguments[0]; f.to.value = 'b'; f.to.focus();",
                json!([number]),
            )
            .await;
        browser.click("#handover button").await;
        let question = browser.accept().await;
        assert!(question.contains(&format!("shard {number}")), "{question}");
        browser
            .wait(
                "the shard at b, one epoch later",
                "const cell = document.querySelector(`#shard-grid .shard[data-shard='${arguments[0]}']`);
                 return cell && cell.dataset.owner === 'b' && Number(cell.dataset.epoch) === arguments[1]
                   && cell.dataset.status === 'active';",
                json!([number, epoch + 1]),
            )
            .await;
        assert_eq!(
            browser
                .eval(
                    "return document.getElementById('handover-error').innerText",
                    json!([])
                )
                .await,
            json!("")
        );
        browser.go(&format!("{url}/ui/#/events")).await;
        browser
            .wait(
                "the handover among the events",
                "const rows = [...document.querySelectorAll('#history tr')];
                 return rows.some(r => r.innerText.includes('a → b'));",
                json!([]),
            )
            .await;
        browser.screenshot("events").await;

        // Maintenance from the Datacenters page: drain c, then undrain it.
        browser.go(&format!("{url}/ui/#/dcs")).await;
        for (button, question, shown) in [
            ("drain", "Drain datacenter c?", "draining"),
            ("undrain", "Undrain datacenter c?", "undrained"),
        ] {
            browser
                .wait(
                    "the maintenance buttons",
                    "return !!document.querySelector(`[data-${arguments[0]}='c']`)",
                    json!([button]),
                )
                .await;
            browser.click(&format!("[data-{button}='c']")).await;
            let asked = browser.accept().await;
            assert!(asked.starts_with(question), "{asked}");
            browser
                .wait(
                    &format!("c's maintenance to show {shown}"),
                    "const cell = document.querySelector(\"#dcs tr[data-dc='c'] .maintenance\");
                     if (!cell) return null;
                     return arguments[0] === 'draining' ? cell.innerText === 'draining'
                       : cell.innerText !== 'draining';",
                    json!([shown]),
                )
                .await;
        }
        browser.close().await;
    });
    drop(demo);
}
