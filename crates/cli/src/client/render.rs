//! The client's decisions and formatting, with no I/O: duration parsing, server error bodies,
//! table layout and "is this wait over?" verdicts. Everything here is a plain function so it can
//! be unit-tested without a server.

use std::fmt;

use coopr_types::{ClusterAction, ClusterStatus, JobStatus};
use serde::Deserialize;

/// Quota values the server shows for "no limit" (Java's `Integer.MAX_VALUE`).
const UNLIMITED_QUOTA: u64 = 2_147_483_647;

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// Parses a duration such as `2h`, `90m`, `1h30m`, `45s`, `500ms` or `2d` into milliseconds.
///
/// A bare number is rejected because it is ambiguous (the server's own lease durations are in
/// milliseconds, while people usually mean seconds).
pub(crate) fn parse_duration_ms(input: &str) -> Result<u64, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration; expected something like 2h, 30m, 1h30m or 500ms".into());
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(format!(
                "invalid duration {input:?}: expected a number at {rest:?}"
            ));
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let unit_len = after_digits
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (unit, after_unit) = after_digits.split_at(unit_len);
        let unit_ms: u64 = match unit.to_ascii_lowercase().as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "invalid duration {input:?}: {digits} has no unit (use ms, s, m, h or d)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ))
            }
        };
        let amount: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: {digits} is too large"))?;
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        rest = after_unit;
    }
    Ok(total_ms)
}

/// Parses a `--config`-style argument: a JSON object.
pub(crate) fn parse_json_object(input: &str) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        serde_json::from_str(input).map_err(|e| format!("invalid JSON: {e}"))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err("expected a JSON object, e.g. '{\"hadoop\":{\"replication\":2}}'".into())
    }
}

/// Checks a value that goes into a URL path segment (service names and the like), so that a
/// stray `/` or `?` cannot turn one request into another. Coopr names match `[A-Za-z0-9_.-]+`.
pub(crate) fn path_segment(what: &str, value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() < 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "invalid {what} {value:?}: names match [A-Za-z0-9_.-]+"
        ))
    }
}

/// Turns a `--status pending,Active` filter into the canonical query value, rejecting unknown
/// statuses (the server would silently ignore them and return an unfiltered-looking result).
pub(crate) fn status_filter(input: &str) -> Result<String, String> {
    let mut names = Vec::new();
    for token in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let status = ClusterStatus::parse_ignore_case(token).ok_or_else(|| {
            let known: Vec<&str> = ClusterStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "unknown cluster status {token:?} (known: {})",
                known.join(", ")
            )
        })?;
        names.push(status.as_str());
    }
    if names.is_empty() {
        return Err("empty status filter".into());
    }
    Ok(names.join(","))
}

// ---------------------------------------------------------------------------------------------
// Server errors
// ---------------------------------------------------------------------------------------------

/// A non-2xx reply from the server, shown as `<status> <code>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

#[derive(Deserialize)]
struct CodedErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MissingFieldsBody {
    missing_fields: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Interprets an error body. The server normally sends `{"code","message"}`; Coopr's own
/// handlers send plain text (the code is then the HTTP reason phrase), and a provider that lacks
/// fields answers `{"missingFields":[{field: spec, ..}, ..]}` with one alternative per element.
pub(crate) fn parse_error_body(status: u16, reason: &str, body: &str) -> ServerError {
    let trimmed = body.trim();
    if let Ok(coded) = serde_json::from_str::<CodedErrorBody>(trimmed) {
        let message = if coded.message.is_empty() {
            "(no message)".to_owned()
        } else {
            coded.message
        };
        return ServerError {
            status,
            code: coded.code,
            message,
        };
    }
    if let Ok(missing) = serde_json::from_str::<MissingFieldsBody>(trimmed) {
        let alternatives: Vec<String> = missing
            .missing_fields
            .iter()
            .map(|set| {
                let names: Vec<&str> = set.keys().map(String::as_str).collect();
                format!("[{}]", names.join(", "))
            })
            .collect();
        return ServerError {
            status,
            code: "missing_fields".to_owned(),
            message: format!(
                "provider fields are required; supply one of: {} (with --provider-fields)",
                alternatives.join(" or ")
            ),
        };
    }
    let code = if reason.is_empty() {
        "error".to_owned()
    } else {
        reason.to_owned()
    };
    let message = if trimmed.is_empty() {
        "(empty response)".to_owned()
    } else {
        // Keep a runaway HTML page or stack trace from flooding the terminal.
        let mut text: String = trimmed.chars().take(2_000).collect();
        if text.len() < trimmed.len() {
            text.push_str("...");
        }
        text
    };
    ServerError {
        status,
        code,
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

/// Lays out rows under a header, columns separated by two spaces, no trailing spaces.
pub(crate) fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        assert_eq!(
            row.len(),
            header.len(),
            "table row has the wrong number of cells"
        );
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NameRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Progress {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub actionstatus: String,
    #[serde(default)]
    pub stepstotal: u64,
    #[serde(default)]
    pub stepscompleted: u64,
}

/// One element of `GET /clusters` (only the fields the table shows).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterSummary {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub cluster_template: Option<NameRef>,
    #[serde(default)]
    pub num_nodes: u64,
    #[serde(default)]
    pub progress: Option<Progress>,
}

pub(crate) fn format_cluster_table(clusters: &[ClusterSummary]) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            let template = c
                .cluster_template
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default();
            let (action, steps) = match &c.progress {
                Some(p) if !p.action.is_empty() => (
                    format!("{}/{}", p.action, p.actionstatus),
                    format!("{}/{}", p.stepscompleted, p.stepstotal),
                ),
                _ => ("-".to_owned(), "-".to_owned()),
            };
            vec![
                c.id.clone(),
                c.name.clone(),
                c.status.clone(),
                template,
                c.num_nodes.to_string(),
                action,
                steps,
            ]
        })
        .collect();
    format_table(
        &[
            "ID", "NAME", "STATUS", "TEMPLATE", "NODES", "ACTION", "STEPS",
        ],
        &rows,
    )
}

/// One element of `GET /tenants`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TenantSummary {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub workers: u64,
    #[serde(default)]
    pub max_clusters: Option<u64>,
    #[serde(default)]
    pub max_nodes: Option<u64>,
}

fn quota(value: Option<u64>) -> String {
    match value {
        None | Some(UNLIMITED_QUOTA) => "unlimited".to_owned(),
        Some(n) => n.to_string(),
    }
}

pub(crate) fn format_tenant_table(tenants: &[TenantSummary]) -> String {
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.workers.to_string(),
                quota(t.max_clusters),
                quota(t.max_nodes),
            ]
        })
        .collect();
    format_table(&["NAME", "WORKERS", "MAX_CLUSTERS", "MAX_NODES"], &rows)
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// The reply of `GET /clusters/{id}/status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StatusReply {
    #[serde(default)]
    pub clusterid: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub actionstatus: String,
    #[serde(default)]
    pub stepstotal: u64,
    #[serde(default)]
    pub stepscompleted: u64,
}

impl StatusReply {
    /// A one-line summary for progress messages and errors.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({}/{} steps, cluster {})",
            self.action, self.actionstatus, self.stepscompleted, self.stepstotal, self.status
        )
    }

    fn job_status(&self) -> Option<JobStatus> {
        JobStatus::parse_ignore_case(&self.actionstatus)
    }

    fn action(&self) -> Option<ClusterAction> {
        ClusterAction::parse_ignore_case(&self.action)
    }
}

/// What a `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitGoal {
    /// The job with this action (just submitted) finishes. A cluster create runs `solve_layout`
    /// first and then `cluster_create`; the wait spans both.
    Job(ClusterAction),
    /// Whatever job the cluster runs now finishes (`status --wait`).
    CurrentJob,
    /// The cluster reaches `terminated` (`delete --wait`).
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    KeepWaiting,
    Done,
    Failed(String),
}

fn same_job_kind(expected: ClusterAction, seen: ClusterAction) -> bool {
    use ClusterAction::{ClusterConfigure, ClusterConfigureWithRestart};
    // The server picks the configure variant from the `restart` flag; accept either.
    expected == seen
        || matches!(
            (expected, seen),
            (ClusterConfigure, ClusterConfigureWithRestart)
                | (ClusterConfigureWithRestart, ClusterConfigure)
        )
}

/// Decides from one status reply whether a wait is over.
pub(crate) fn judge(goal: WaitGoal, reply: &StatusReply) -> Verdict {
    let failed = || {
        Verdict::Failed(format!(
            "cluster {}: {} failed; cluster status is {}",
            reply.clusterid, reply.action, reply.status
        ))
    };
    let job = reply.job_status();
    let action = reply.action();
    match goal {
        WaitGoal::Terminated => {
            if ClusterStatus::parse_ignore_case(&reply.status) == Some(ClusterStatus::Terminated) {
                Verdict::Done
            } else if action == Some(ClusterAction::ClusterDelete) && job == Some(JobStatus::Failed)
            {
                failed()
            } else {
                Verdict::KeepWaiting
            }
        }
        WaitGoal::CurrentJob | WaitGoal::Job(_) => {
            // Layout solving is always followed by cluster_create; its success is not the end.
            if action == Some(ClusterAction::SolveLayout) {
                return match job {
                    Some(JobStatus::Failed) => failed(),
                    _ => Verdict::KeepWaiting,
                };
            }
            if let WaitGoal::Job(expected) = goal {
                match action {
                    Some(seen) if same_job_kind(expected, seen) => {}
                    // Another job (an older one) is still the latest: ours has not shown up yet.
                    _ => return Verdict::KeepWaiting,
                }
            }
            match job {
                Some(JobStatus::Complete) => Verdict::Done,
                Some(JobStatus::Failed) => failed(),
                _ => Verdict::KeepWaiting,
            }
        }
    }
}

/// The answer of a drain or undrain: a line saying what was (or, dry, would be) done, then one
/// row per shard to move: where it is, where it goes, and what blocks it for now.
pub(crate) fn format_maintenance_plan(answer: &serde_json::Value) -> String {
    let dc = answer["dc"].as_str().unwrap_or_default();
    let action = answer["action"].as_str().unwrap_or_default();
    let plan = answer["plan"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = if answer["dry_run"] == true {
        format!(
            "dry run: {action} of {dc} would move {} shard(s)\n",
            plan.len()
        )
    } else {
        format!(
            "{action} of {dc}: {} shard(s) to move, a few at a time; follow with `coopr admin shards`\n",
            plan.len()
        )
    };
    if plan.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|step| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            let blocked = &step["blocked"];
            let why = match blocked["reason"].as_str() {
                None => "-".to_string(),
                Some(reason) => {
                    let details: Vec<String> = blocked
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(key, _)| *key != "reason")
                        .map(|(key, value)| format!("{key}={value}"))
                        .collect();
                    if details.is_empty() {
                        reason.to_string()
                    } else {
                        format!("{reason} ({})", details.join(", "))
                    }
                }
            };
            vec![
                step["shard"].to_string(),
                text(&step["from"]),
                text(&step["to"]),
                why,
            ]
        })
        .collect();
    out.push_str(&format_table(&["SHARD", "FROM", "TO", "BLOCKED"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit_and_compound() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("45s"), Ok(45_000));
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(
            parse_duration_ms(" 1d2h3m4s5ms "),
            Ok(86_400_000 + 7_200_000 + 180_000 + 4_000 + 5)
        );
        assert_eq!(parse_duration_ms("2H"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn durations_that_are_rejected() {
        for bad in ["", "  ", "10", "h", "2x", "1h30", "-5m", "1.5h", "2 h"] {
            assert!(
                parse_duration_ms(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(parse_duration_ms("99999999999999999999s").is_err());
        assert!(
            parse_duration_ms("18446744073709551615d").is_err(),
            "overflow must not wrap"
        );
    }

    #[test]
    fn json_object_arguments() {
        assert!(parse_json_object(r#"{"a":{"b":1}}"#).is_ok());
        assert!(parse_json_object("[1]").is_err());
        assert!(parse_json_object("{").is_err());
    }

    #[test]
    fn path_segments_and_status_filters() {
        assert_eq!(
            path_segment("service", "hadoop-hdfs_2.7"),
            Ok("hadoop-hdfs_2.7".to_owned())
        );
        assert!(path_segment("service", "a/b").is_err());
        assert!(path_segment("service", "").is_err());
        assert_eq!(
            status_filter("Pending, active"),
            Ok("pending,active".to_owned())
        );
        assert!(status_filter("running").is_err());
        assert!(status_filter(",").is_err());
    }

    #[test]
    fn coded_error_body() {
        let e = parse_error_body(
            409,
            "Conflict",
            r#"{"code":"quota_exceeded","message":"tenant demo is at 10 clusters"}"#,
        );
        assert_eq!(
            e.to_string(),
            "409 quota_exceeded: tenant demo is at 10 clusters"
        );
    }

    #[test]
    fn plain_text_and_empty_error_bodies() {
        let e = parse_error_body(404, "Not Found", "cluster 00000079 not found\n");
        assert_eq!(e.to_string(), "404 Not Found: cluster 00000079 not found");
        let e = parse_error_body(403, "Forbidden", "");
        assert_eq!(e.to_string(), "403 Forbidden: (empty response)");
        // JSON without a code is not the coded form: shown as text.
        let e = parse_error_body(400, "Bad Request", r#"{"oops":1}"#);
        assert_eq!(e.code, "Bad Request");
        let long = "x".repeat(5_000);
        assert!(
            parse_error_body(500, "Internal Server Error", &long)
                .message
                .len()
                < 2_100
        );
    }

    #[test]
    fn missing_fields_error_body_lists_alternatives() {
        let body = r#"{"missingFields":[{"access_key":{"label":"k"},"secret_key":{"label":"s"}},{"token":{}}]}"#;
        let e = parse_error_body(400, "Bad Request", body);
        assert_eq!(e.code, "missing_fields");
        assert!(
            e.message.contains("[access_key, secret_key] or [token]"),
            "{}",
            e.message
        );
    }

    /// A drain's plan shows each shard's move and, for a blocked one, the reason with its
    /// details.
    #[test]
    fn maintenance_plan_table() {
        let answer = serde_json::json!({
            "dc": "b", "action": "drain", "dry_run": true, "maintenance": "draining",
            "plan": [
                {"shard": 1, "from": "b", "to": "a"},
                {"shard": 4, "from": "b", "to": null,
                 "blocked": {"reason": "no_target", "down": ["c"], "draining": ["a"]}},
                {"shard": 7, "from": "b", "to": "c",
                 "blocked": {"reason": "handover_in_progress", "to": "c"}},
            ]
        });
        assert_eq!(
            format_maintenance_plan(&answer),
            "dry run: drain of b would move 3 shard(s)\n\
             SHARD  FROM  TO  BLOCKED\n\
             1      b     a   -\n\
             4      b     -   no_target (down=[\"c\"], draining=[\"a\"])\n\
             7      b     c   handover_in_progress (to=\"c\")\n"
        );
        let done =
            serde_json::json!({"dc": "b", "action": "undrain", "dry_run": false, "plan": []});
        assert_eq!(
            format_maintenance_plan(&done),
            "undrain of b: 0 shard(s) to move, a few at a time; follow with `coopr admin shards`\n"
        );
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let table = format_table(
            &["A", "LONGER"],
            &[
                vec!["wide-cell".into(), "x".into()],
                vec!["y".into(), "".into()],
            ],
        );
        assert_eq!(table, "A          LONGER\nwide-cell  x\ny\n");
    }

    #[test]
    fn cluster_table_from_list_reply() {
        let json = r#"[{"id":"00000079","name":"dev","status":"active","numNodes":3,
            "clusterTemplate":{"name":"hadoop","version":1},
            "progress":{"action":"cluster_create","actionstatus":"complete","stepstotal":81,"stepscompleted":81}},
            {"id":"00000080","name":"x","status":"pending"}]"#;
        let clusters: Vec<ClusterSummary> = serde_json::from_str(json).expect("valid list reply");
        let table = format_cluster_table(&clusters);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ID        NAME  STATUS   TEMPLATE  NODES  ACTION                   STEPS"
        );
        assert_eq!(
            lines[1],
            "00000079  dev   active   hadoop    3      cluster_create/complete  81/81"
        );
        assert_eq!(
            lines[2],
            "00000080  x     pending            0      -                        -"
        );
    }

    #[test]
    fn tenant_table_shows_unset_quotas_as_unlimited() {
        let tenants: Vec<TenantSummary> = serde_json::from_str(
            r#"[{"name":"acme","workers":10,"maxClusters":20,"maxNodes":2147483647}]"#,
        )
        .expect("valid tenants reply");
        assert_eq!(
            format_tenant_table(&tenants),
            "NAME  WORKERS  MAX_CLUSTERS  MAX_NODES\nacme  10       20            unlimited\n"
        );
    }

    fn reply(status: &str, action: &str, actionstatus: &str) -> StatusReply {
        StatusReply {
            clusterid: "00000079".into(),
            status: status.into(),
            action: action.into(),
            actionstatus: actionstatus.into(),
            stepstotal: 10,
            stepscompleted: 3,
        }
    }

    #[test]
    fn create_wait_spans_layout_and_create_jobs() {
        let goal = WaitGoal::Job(ClusterAction::ClusterCreate);
        assert_eq!(
            judge(goal, &reply("pending", "solve_layout", "running")),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(goal, &reply("pending", "solve_layout", "complete")),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(goal, &reply("pending", "cluster_create", "running")),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(goal, &reply("pending", "cluster_create", "paused")),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(goal, &reply("active", "cluster_create", "complete")),
            Verdict::Done
        );
        assert_eq!(
            judge(goal, &reply("incomplete", "cluster_create", "failed")),
            Verdict::Failed(
                "cluster 00000079: cluster_create failed; cluster status is incomplete".into()
            )
        );
        assert!(
            matches!(judge(goal, &reply("terminated", "solve_layout", "failed")), Verdict::Failed(m) if m.contains("terminated"))
        );
    }

    #[test]
    fn job_wait_ignores_an_older_job() {
        let goal = WaitGoal::Job(ClusterAction::RestartServices);
        assert_eq!(
            judge(goal, &reply("active", "cluster_create", "complete")),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(goal, &reply("active", "restart_services", "complete")),
            Verdict::Done
        );
        let configure = WaitGoal::Job(ClusterAction::ClusterConfigure);
        assert_eq!(
            judge(
                configure,
                &reply("active", "cluster_configure_with_restart", "complete")
            ),
            Verdict::Done
        );
        assert!(matches!(
            judge(
                configure,
                &reply("inconsistent", "cluster_configure", "failed")
            ),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn current_job_wait_and_delete_wait() {
        assert_eq!(
            judge(
                WaitGoal::CurrentJob,
                &reply("active", "stop_services", "complete")
            ),
            Verdict::Done
        );
        assert_eq!(
            judge(
                WaitGoal::CurrentJob,
                &reply("pending", "solve_layout", "complete")
            ),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(
                WaitGoal::Terminated,
                &reply("active", "cluster_delete", "running")
            ),
            Verdict::KeepWaiting
        );
        // The job completing is not enough for delete: the cluster must be terminated.
        assert_eq!(
            judge(
                WaitGoal::Terminated,
                &reply("active", "cluster_delete", "complete")
            ),
            Verdict::KeepWaiting
        );
        assert_eq!(
            judge(
                WaitGoal::Terminated,
                &reply("terminated", "cluster_delete", "complete")
            ),
            Verdict::Done
        );
        assert!(matches!(
            judge(WaitGoal::Terminated, &reply("inconsistent", "cluster_delete", "failed")),
            Verdict::Failed(m) if m.contains("inconsistent")
        ));
    }
}
