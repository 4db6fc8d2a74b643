//! The `exec` plugin: runs an executable per task and speaks JSON over its stdin and stdout.
//!
//! ```text
//!   task JSON ──stdin──► executable ──stdout──► {"status":0,"stdout":"..","stderr":"..",
//!                                                "hostname":"..","ipaddresses":{..},"result":{..}}
//! ```
//!
//! The protocol is documented for plugin authors in `examples/plugins/README.md`. In short: the
//! answer is one JSON object on stdout; a non-zero exit, output that is not such an object, or
//! running past the timeout (the process is killed) all report status 1 with the process's
//! stderr, so a broken plugin fails its task instead of wedging the worker.
//!
//! Which executable runs is an [`ExecProgram`]: one fixed in the registry (a plugin name mapped to
//! a path), or the one the task names: `config.provider.provisioner.script` for provider tasks,
//! `config.service.action.fields.script` for service tasks.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use coopr_types::TaskName;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::plugin::{str_at, Plugin, PluginFuture, PluginResult};

/// Output kept from a misbehaving process, per stream, in failure messages.
const MAX_CAPTURED_BYTES: usize = 64 * 1024;

/// Which executable an [`ExecPlugin`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecProgram {
    /// The script the task names (see the module doc). A BOOTSTRAP, which names no script,
    /// succeeds without running anything.
    FromTask,
    /// Always this program, with these leading arguments.
    Command { program: PathBuf, args: Vec<String> },
}

/// Runs an executable per task. See the module doc for the protocol.
#[derive(Debug, Clone)]
pub struct ExecPlugin {
    name: String,
    program: ExecProgram,
    timeout_ms: u64,
}

impl ExecPlugin {
    /// Default time a process may run before it is killed: 10 minutes.
    pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;

    /// A plugin named `name` that runs the script each task names.
    pub fn from_task(name: impl Into<String>) -> Self {
        Self::new(name, ExecProgram::FromTask)
    }

    /// A plugin named `name` that always runs `program` (a registry entry mapping a plugin name
    /// to an executable).
    pub fn program(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self::command(name, program, Vec::new())
    }

    /// A plugin named `name` that always runs `program args...` (e.g. `sh script.sh`).
    pub fn command(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
    ) -> Self {
        Self::new(
            name,
            ExecProgram::Command {
                program: program.into(),
                args,
            },
        )
    }

    pub fn new(name: impl Into<String>, program: ExecProgram) -> Self {
        ExecPlugin {
            name: name.into(),
            program,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
        }
    }

    /// Sets how long a process may run before it is killed and the task fails.
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    async fn run_task(&self, task: &Value) -> PluginResult {
        match &self.program {
            ExecProgram::Command { program, args } => self.execute(program, args, task).await,
            ExecProgram::FromTask => {
                let task_name = task
                    .get("taskName")
                    .and_then(Value::as_str)
                    .and_then(TaskName::parse_ignore_case);
                let (pointer, field) = match task_name {
                    Some(name) if name.is_provider_task() => (
                        "/config/provider/provisioner/script",
                        "config.provider.provisioner.script",
                    ),
                    Some(TaskName::Bootstrap) => {
                        return PluginResult::success(format!(
                            "{}: no script to run for BOOTSTRAP",
                            self.name
                        ));
                    }
                    _ => (
                        "/config/service/action/fields/script",
                        "config.service.action.fields.script",
                    ),
                };
                match str_at(task, pointer) {
                    Some(script) => self.execute(Path::new(script), &[], task).await,
                    None => PluginResult::failure(format!(
                        "{}: task has no {field} naming the executable to run",
                        self.name
                    )),
                }
            }
        }
    }

    async fn execute(&self, program: &Path, args: &[String], task: &Value) -> PluginResult {
        let shown = program.display();
        let input = match serde_json::to_vec(task) {
            Ok(input) => input,
            Err(e) => {
                return PluginResult::failure(format!("{}: cannot encode task: {e}", self.name))
            }
        };
        let mut child = match tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the child (on timeout, or when the worker is cancelled) kills it.
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return PluginResult::failure(format!("{}: cannot start {shown}: {e}", self.name))
            }
        };
        let stdin = child.stdin.take();
        // Feed stdin while collecting output: a process that writes before reading all of its
        // input would otherwise deadlock against us on full pipes.
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A process that exits without reading its input closes the pipe; that is its
                // business, and its exit status and output still decide the result.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let run = async {
            let ((), output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        match tokio::time::timeout(Duration::from_millis(self.timeout_ms), run).await {
            Err(_elapsed) => PluginResult::failure(format!(
                "{}: {shown} timed out after {} ms and was killed",
                self.name, self.timeout_ms
            )),
            Ok(Err(e)) => PluginResult::failure(format!("{}: running {shown}: {e}", self.name)),
            Ok(Ok(output)) => self.interpret(&shown.to_string(), output),
        }
    }

    fn interpret(&self, shown: &str, output: Output) -> PluginResult {
        let process_stderr = captured(&output.stderr);
        if !output.status.success() {
            let mut failure = PluginResult::failure(format!(
                "{}: {shown} exited with {}\n{process_stderr}",
                self.name, output.status
            ));
            failure.stdout = captured(&output.stdout);
            return failure;
        }
        match parse_answer(&output.stdout) {
            Ok(mut answer) => {
                if answer.stderr.is_empty() {
                    answer.stderr = process_stderr;
                }
                answer
            }
            Err(problem) => {
                let mut failure = PluginResult::failure(format!(
                    "{}: {shown} did not answer with a JSON object: {problem}\n{process_stderr}",
                    self.name
                ));
                failure.stdout = captured(&output.stdout);
                failure
            }
        }
    }
}

impl Plugin for ExecPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn run<'a>(&'a self, task: &'a Value) -> PluginFuture<'a> {
        Box::pin(self.run_task(task))
    }
}

/// Parses a plugin's stdout. `status` is required and may be a number or a numeric string;
/// other fields are optional; unknown fields are ignored.
fn parse_answer(stdout: &[u8]) -> Result<PluginResult, String> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    let Value::Object(mut answer) = value else {
        return Err("the output is JSON but not an object".to_string());
    };
    let status = match answer.get("status") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .and_then(|s| i32::try_from(s).ok())
    .ok_or("\"status\" is missing or not an integer")?;
    let mut text = |key: &str| match answer.remove(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => Err(format!("{key:?} is not a string")),
    };
    let stdout = text("stdout")?;
    let stderr = text("stderr")?;
    let hostname = Some(text("hostname")?).filter(|h| !h.is_empty());
    let mut object = |key: &str| match answer.remove(key) {
        Some(Value::Object(map)) => Ok(Some(map)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(format!("{key:?} is not an object")),
    };
    let ipaddresses = object("ipaddresses")?;
    let result = object("result")?.unwrap_or_else(Map::new);
    Ok(PluginResult {
        status,
        stdout,
        stderr,
        hostname,
        ipaddresses,
        result,
    })
}

/// Lossy UTF-8 of a process stream, cut to [`MAX_CAPTURED_BYTES`].
fn captured(bytes: &[u8]) -> String {
    let kept = &bytes[..bytes.len().min(MAX_CAPTURED_BYTES)];
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if bytes.len() > MAX_CAPTURED_BYTES {
        text.push_str("\n[output truncated]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/echo-automator.sh")
    }

    fn install_task(script: Option<&Path>) -> Value {
        let mut fields = json!({"run_list": "recipe[zk]"});
        if let Some(script) = script {
            fields["script"] = json!(script.to_str().expect("utf-8 path"));
        }
        json!({"taskId": "00000079-001-004", "jobId": "00000079-001", "clusterId": "00000079",
            "taskName": "INSTALL", "nodeId": "a-node",
            "config": {"hostname": "dev79-1000.local", "nodenum": 1000,
                "service": {"name": "zk", "action": {"type": "exec", "fields": fields}},
                "nodes": {"other": {"hostname": "other.local"}}}})
    }

    /// Runs a throwaway shell script through `sh`, so the test never executes a file another
    /// test thread may still hold open for writing (which fails with ETXTBSY).
    fn shell_plugin(dir: &tempfile::TempDir, body: &str) -> ExecPlugin {
        let path = dir.path().join("plugin.sh");
        std::fs::write(&path, body).expect("write script");
        ExecPlugin::command(
            "scripted",
            "sh",
            vec![path.to_str().expect("utf-8").to_string()],
        )
    }

    /// The shipped example reads the task from stdin and answers valid JSON describing it.
    #[tokio::test]
    async fn example_script_answers_json() {
        let plugin = ExecPlugin::from_task("exec");
        let result = plugin.run(&install_task(Some(&example_script()))).await;
        assert_eq!(result.status, 0, "{result:?}");
        assert_eq!(result.stdout, "echo: INSTALL zk on dev79-1000.local");
        assert_eq!(result.result["echo"]["taskId"], json!("00000079-001-004"));
        assert!(result.result["echo"]["inputBytes"].as_u64().unwrap_or(0) > 100);
    }

    /// A registry entry can pin the executable; the task then needs no script field.
    #[tokio::test]
    async fn fixed_program_runs_without_task_script() {
        let plugin = ExecPlugin::program("echo", example_script());
        let result = plugin.run(&install_task(None)).await;
        assert_eq!(result.status, 0, "{result:?}");
        assert_eq!(plugin.name(), "echo");
    }

    /// A task naming no script fails clearly.
    #[tokio::test]
    async fn missing_script_fails() {
        let result = ExecPlugin::from_task("exec").run(&install_task(None)).await;
        assert_eq!(result.status, 1);
        assert!(result
            .stderr
            .contains("config.service.action.fields.script"));
    }

    /// Output that is not JSON is a failure carrying the process's stderr.
    #[tokio::test]
    async fn garbage_output_fails_with_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = shell_plugin(
            &dir,
            "cat >/dev/null\necho 'this is not json'\necho 'diagnostic line' >&2\n",
        );
        let result = plugin.run(&install_task(None)).await;
        assert_eq!(result.status, 1);
        assert!(result.stderr.contains("did not answer with a JSON object"));
        assert!(
            result.stderr.contains("diagnostic line"),
            "{}",
            result.stderr
        );
        assert_eq!(result.stdout, "this is not json\n");
    }

    /// A non-zero exit is a failure even when the output is valid JSON.
    #[tokio::test]
    async fn non_zero_exit_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = shell_plugin(&dir, "echo '{\"status\":0}'\necho boom >&2\nexit 3\n");
        let result = plugin.run(&install_task(None)).await;
        assert_eq!(result.status, 1);
        assert!(result.stderr.contains("boom"), "{}", result.stderr);
    }

    /// A process past its timeout is killed and the task fails; the worker is not held up.
    #[tokio::test]
    async fn timeout_kills_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = shell_plugin(&dir, "exec sleep 30\n").with_timeout_ms(200);
        let started = std::time::Instant::now();
        let result = plugin.run(&install_task(None)).await;
        assert_eq!(result.status, 1);
        assert!(
            result.stderr.contains("timed out after 200 ms"),
            "{}",
            result.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// The answer's status may be a numeric string; a missing status is rejected.
    #[test]
    fn answer_parsing() {
        let answer = parse_answer(
            br#"{"status":"2","hostname":"h","ipaddresses":{"access_v4":"1.2.3.4"},"extra":1}"#,
        )
        .expect("valid");
        assert_eq!(answer.status, 2);
        assert_eq!(answer.hostname.as_deref(), Some("h"));
        assert!(parse_answer(br#"{"stdout":"x"}"#).is_err());
        assert!(parse_answer(br#"[1]"#).is_err());
        assert!(parse_answer(br#"{"status":0,"result":[]}"#).is_err());
    }
}
