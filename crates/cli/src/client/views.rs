//! Tables for people of what the admin and cluster endpoints answer in JSON (`--json` prints
//! the JSON itself). Pure functions of the replies: a field the server left out shows as `-`,
//! never as a failure, so a newer or older server still gets a table.

use serde_json::Value;

use super::render::format_table;

/// A string field, or `-`.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "-".to_owned(),
    }
}

/// `items` joined by `separator`, or `-` when there are none.
fn joined(items: &[String], separator: &str) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(separator)
    }
}

/// A position `{epoch, seq}` as `epoch:seq`, or `-`.
fn position(value: &Value) -> String {
    match (value["epoch"].as_u64(), value["seq"].as_u64()) {
        (Some(epoch), Some(seq)) => format!("{epoch}:{seq}"),
        _ => "-".to_owned(),
    }
}

/// A duration in ms as `12 ms`, `3.4 s` or `5 min`; `-` when absent. The server reports an
/// unknown lag as `u64::MAX`, shown as `never`.
fn millis(value: &Value) -> String {
    match value.as_u64() {
        None => "-".to_owned(),
        Some(u64::MAX) => "never".to_owned(),
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) if ms < 600_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        Some(ms) => format!("{} min", ms / 60_000),
    }
}

/// A shard's phase: `active`, or e.g. `handing_over to b`, `taking_over a -> c`.
fn shard_status(value: &Value) -> String {
    let (name, fields) = match value {
        Value::String(s) => return s.clone(),
        Value::Object(map) => (map.get("status").map(text).unwrap_or_default(), value),
        _ => return "-".to_owned(),
    };
    match (fields["from"].as_str(), fields["to"].as_str()) {
        (Some(from), Some(to)) => format!("{name} {from} -> {to}"),
        (None, Some(to)) => format!("{name} to {to}"),
        _ => name,
    }
}

/// `coopr admin shards`: one row per shard (owner, epoch, phase, replica DCs with their lag as
/// the answering DC knows it), then the DCs' leases. `replication` is that DC's
/// `/admin/replication` answer (the lag of a shard's replicas is known at its owner; a replica
/// knows its own).
pub(crate) fn format_shards(map: &Value, replication: &Value) -> String {
    let here = map["dc"].as_str().unwrap_or_default();
    let lag_of = |shard: &str, replica: &str| -> Option<String> {
        let report = replication["shards"]
            .as_array()?
            .iter()
            .find(|s| s["shard"] == shard)?;
        if let Some(by) = report.get("by_replica") {
            return Some(millis(&by[replica]["lag_ms"]));
        }
        (replica == here).then(|| millis(&report["local"]["lag_ms"]))
    };
    let rows: Vec<Vec<String>> = map["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let shard = text(&s["shard"]);
            let replicas: Vec<String> = s["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|r| match lag_of(&shard, r) {
                    Some(lag) => format!("{r} ({lag})"),
                    None => r.to_owned(),
                })
                .collect();
            vec![
                shard,
                text(&s["owner"]),
                text(&s["epoch"]),
                shard_status(&s["status"]),
                joined(&replicas, ", "),
            ]
        })
        .collect();
    let mut out = format_table(
        &["SHARD", "OWNER", "EPOCH", "STATUS", "REPLICAS (LAG)"],
        &rows,
    );
    let leases: Vec<Vec<String>> = map["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let owned = map["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["owner"] == l["dc"])
                .count();
            vec![text(&l["dc"]), text(&l["sequence"]), owned.to_string()]
        })
        .collect();
    if !leases.is_empty() {
        out.push('\n');
        out.push_str(&format_table(
            &["DC", "LEASE SEQUENCE", "SHARDS OWNED"],
            &leases,
        ));
    }
    out
}

/// `coopr admin replication`: per shard and replica, where the copy is and how far behind.
/// Rows of shards the answering DC owns show each replica's cursor as last reported; rows of
/// shards it copies show its own copy.
pub(crate) fn format_replication(report: &Value) -> String {
    let here = text(&report["dc"]);
    let mut rows = Vec::new();
    for s in report["shards"].as_array().into_iter().flatten() {
        let shard = text(&s["shard"]);
        let owner = text(&s["owner"]);
        if let Some(by) = s["by_replica"].as_object() {
            for (replica, r) in by {
                rows.push(vec![
                    shard.clone(),
                    owner.clone(),
                    replica.clone(),
                    position(&r["cursor"]),
                    position(&s["last"]),
                    text(&r["unreplicated_records"]),
                    millis(&r["lag_ms"]),
                    "-".to_owned(),
                ]);
            }
        } else if let Some(local) = s.get("local") {
            rows.push(vec![
                shard.clone(),
                owner.clone(),
                here.clone(),
                position(&local["watermark"]),
                position(&local["owner_last"]),
                "-".to_owned(),
                millis(&local["lag_ms"]),
                text(&local["stopped"]),
            ]);
        }
    }
    format_table(
        &[
            "SHARD",
            "OWNER",
            "REPLICA",
            "AT",
            "OWNER AT",
            "UNREPLICATED",
            "LAG",
            "STOPPED",
        ],
        &rows,
    )
}

/// `coopr admin provisioners`: id, address, capacity and what each tenant uses.
pub(crate) fn format_provisioners(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let usage: Vec<String> = p["usage"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(tenant, n)| format!("{tenant}={}", text(n)))
                .collect();
            vec![
                text(&p["id"]),
                format!("{}:{}", text(&p["host"]), text(&p["port"])),
                text(&p["capacityTotal"]),
                text(&p["capacityFree"]),
                joined(&usage, ", "),
            ]
        })
        .collect();
    format_table(
        &["ID", "ADDRESS", "CAPACITY", "FREE", "IN USE BY TENANT"],
        &rows,
    )
}

/// `coopr admin dcs`: one row per node of every DC, as it answered for itself.
pub(crate) fn format_dcs(reply: &Value) -> String {
    let rows: Vec<Vec<String>> = reply["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let reachable = n["reachable"].as_bool().unwrap_or(false);
            let ready = match (reachable, n["ready"].as_bool()) {
                (false, _) => "unreachable".to_owned(),
                (true, Some(true)) => "ready".to_owned(),
                (true, _) => format!("not ready: {}", text(&n["reason"])),
            };
            vec![
                text(&n["dc"]),
                text(&n["node"]),
                text(&n["role"]),
                text(&n["leader"]),
                text(&n["term"]),
                text(&n["placement_role"]),
                millis(&n["lease_remaining_ms"]),
                ready,
            ]
        })
        .collect();
    format_table(
        &[
            "DC",
            "NODE",
            "ROLE",
            "LEADER",
            "TERM",
            "PLACEMENT",
            "LEASE LEFT",
            "READY",
        ],
        &rows,
    )
}

/// The progress of a cluster's current or last job: `action status completed/total`.
fn progress(p: &Value) -> String {
    if p["action"].as_str().is_none_or(str::is_empty) {
        return "-".to_owned();
    }
    format!(
        "{} {} ({}/{} steps)",
        text(&p["action"]),
        text(&p["actionstatus"]).to_lowercase(),
        text(&p["stepscompleted"]),
        text(&p["stepstotal"])
    )
}

/// `coopr cluster show`: the cluster's summary, then one row per node (hostname, addresses,
/// services, its last action).
pub(crate) fn format_cluster(c: &Value) -> String {
    let name_of = |v: &Value| text(&v["name"]);
    let services: Vec<&str> = c["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let summary = [
        ("id", text(&c["id"])),
        ("name", text(&c["name"])),
        ("status", text(&c["status"])),
        ("template", name_of(&c["clusterTemplate"])),
        ("provider", name_of(&c["provider"])),
        ("owner", text(&c["account"]["userId"])),
        ("services", services.join(", ")),
        ("last job", progress(&c["progress"])),
        ("expires", text(&c["expireTime"])),
    ];
    let mut out = String::new();
    for (key, value) in summary {
        let value = if value.is_empty() { "-".into() } else { value };
        out.push_str(&format!("{key:<10} {value}\n"));
    }
    if let Some(message) = c["message"].as_str() {
        out.push_str(&format!("{:<10} {message}\n", "message"));
    }
    let rows: Vec<Vec<String>> = c["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let properties = &n["properties"];
            let addresses: Vec<String> = properties["ipaddresses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(kind, ip)| format!("{kind}={}", text(ip)))
                .collect();
            let services: Vec<String> = n["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| text(&s["name"]))
                .collect();
            let last = n["actions"].as_array().and_then(|a| a.last());
            let action = last.map_or("-".to_owned(), |a| {
                format!(
                    "{} {}",
                    text(&a["action"]).to_lowercase(),
                    text(&a["status"]).to_lowercase()
                )
            });
            vec![
                text(&n["id"]),
                text(&properties["hostname"]),
                joined(&addresses, " "),
                joined(&services, ","),
                action,
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&format_table(
        &["NODE", "HOSTNAME", "ADDRESSES", "SERVICES", "LAST ACTION"],
        &rows,
    ));
    out
}

/// `coopr cluster status`: the current or last job, as one line per field.
pub(crate) fn format_status(s: &Value) -> String {
    let rows = [
        ("cluster", text(&s["clusterid"])),
        ("status", text(&s["status"])),
        ("action", text(&s["action"])),
        ("job", text(&s["actionstatus"])),
        (
            "steps",
            format!("{}/{}", text(&s["stepscompleted"]), text(&s["stepstotal"])),
        ),
    ];
    rows.iter()
        .map(|(key, value)| format!("{key:<8} {value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shards_show_owner_phase_and_replica_lag() {
        let map = json!({
            "dc": "a",
            "shards": [
                {"shard": "0", "owner": "a", "epoch": 1, "status": "active", "replicas": ["b", "c"]},
                {"shard": "1", "owner": "b", "epoch": 2,
                 "status": {"status": "handing_over", "to": "c"}, "replicas": ["a", "c"]},
                {"shard": "global", "owner": "c", "epoch": 3,
                 "status": {"status": "taking_over", "from": "c", "to": "a"}, "replicas": ["a"]},
            ],
            "leases": [{"dc": "a", "sequence": 7}, {"dc": "b", "sequence": 9}],
        });
        let replication = json!({"shards": [
            {"shard": "0", "owner": "a", "by_replica": {"b": {"lag_ms": 0}, "c": {"lag_ms": 12_500}}},
            {"shard": "1", "owner": "b", "local": {"lag_ms": u64::MAX}},
        ]});
        let table = format_shards(&map, &replication);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SHARD   OWNER  EPOCH  STATUS              REPLICAS (LAG)"
        );
        assert_eq!(
            lines[1],
            "0       a      1      active              b (0 ms), c (12.5 s)"
        );
        assert_eq!(
            lines[2],
            "1       b      2      handing_over to c   a (never), c"
        );
        assert_eq!(lines[3], "global  c      3      taking_over c -> a  a");
        assert_eq!(lines[5], "DC  LEASE SEQUENCE  SHARDS OWNED");
        assert_eq!(lines[6], "a   7               1");
        assert_eq!(lines[7], "b   9               1");
    }

    #[test]
    fn replication_rows_per_replica_at_the_owner_and_own_copy_elsewhere() {
        let report = json!({"dc": "b", "shards": [
            {"shard": "0", "owner": "a", "local": {"watermark": {"epoch": 1, "seq": 4},
             "owner_last": {"epoch": 1, "seq": 5}, "lag_ms": 40, "stopped": null}},
            {"shard": "1", "owner": "b", "last": {"epoch": 2, "seq": 9},
             "by_replica": {"a": {"cursor": {"epoch": 2, "seq": 9}, "unreplicated_records": 0, "lag_ms": 0},
                            "c": {"cursor": null, "unreplicated_records": 9, "lag_ms": 700_000}}},
        ]});
        let table = format_replication(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SHARD  OWNER  REPLICA  AT   OWNER AT  UNREPLICATED  LAG     STOPPED"
        );
        assert_eq!(
            lines[1],
            "0      a      b        1:4  1:5       -             40 ms   -"
        );
        assert_eq!(
            lines[2],
            "1      b      a        2:9  2:9       0             0 ms    -"
        );
        assert_eq!(
            lines[3],
            "1      b      c        -    2:9       9             11 min  -"
        );
    }

    #[test]
    fn a_cluster_shows_its_summary_and_nodes() {
        let cluster = json!({
            "id": "00000042", "name": "web", "status": "active",
            "clusterTemplate": {"name": "lamp"}, "provider": {"name": "fake"},
            "account": {"userId": "demo", "tenantId": "demo"},
            "services": ["apache", "mysql"], "expireTime": 0,
            "progress": {"action": "CLUSTER_CREATE", "actionstatus": "COMPLETE",
                         "stepscompleted": 17, "stepstotal": 17},
            "nodes": [{"id": "n1", "properties": {"hostname": "web-1000.local",
                        "ipaddresses": {"access_v4": "10.0.0.1"}},
                       "services": [{"name": "apache"}],
                       "actions": [{"action": "START", "status": "complete"}]}],
        });
        let text = format_cluster(&cluster);
        assert!(
            text.starts_with(
                "id         00000042\nname       web\nstatus     active\ntemplate   lamp\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("last job   CLUSTER_CREATE complete (17/17 steps)\n"),
            "{text}"
        );
        assert!(text.contains("services   apache, mysql\n"), "{text}");
        assert!(
            text.ends_with("NODE  HOSTNAME        ADDRESSES           SERVICES  LAST ACTION\nn1    web-1000.local  access_v4=10.0.0.1  apache    start complete\n"),
            "{text}"
        );
    }

    #[test]
    fn dcs_show_each_node_or_that_it_is_unreachable() {
        let reply = json!({"nodes": [
            {"dc": "a", "node": "a1", "reachable": true, "role": "leader", "leader": "a1",
             "term": 3, "placement_role": "follower", "ready": true, "lease_remaining_ms": 2400},
            {"dc": "b", "node": "b1", "reachable": true, "role": "follower", "leader": "b2",
             "term": 2, "ready": false, "reason": "no_lease"},
            {"dc": "c", "node": "c1", "reachable": false},
        ]});
        assert_eq!(
            format_dcs(&reply),
            "DC  NODE  ROLE      LEADER  TERM  PLACEMENT  LEASE LEFT  READY\n\
             a   a1    leader    a1      3     follower   2400 ms     ready\n\
             b   b1    follower  b2      2     -          -           not ready: no_lease\n\
             c   c1    -         -       -     -          -           unreachable\n"
        );
    }

    #[test]
    fn missing_fields_show_as_dashes() {
        assert_eq!(
            format_provisioners(&json!([{"id": "p1"}])),
            "ID  ADDRESS  CAPACITY  FREE  IN USE BY TENANT\np1  -:-      -         -     -\n"
        );
        assert_eq!(
            format_status(&json!({"clusterid": "7", "stepstotal": 3})),
            "cluster  7\nstatus   -\naction   -\njob      -\nsteps    -/3\n"
        );
        assert_eq!(
            format_shards(&json!({}), &json!({})),
            "SHARD  OWNER  EPOCH  STATUS  REPLICAS (LAG)\n"
        );
    }
}
