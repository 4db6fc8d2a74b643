//! Where a write's time goes inside a coopr DC: the nodes' own stage histograms
//! (`GET /metrics`, Prometheus summaries with `_sum` and `_count`), read before and after a
//! phase, give each stage's mean over the phase's writes:
//!
//! ```text
//!  client ── HTTP ──▶ leader: propose ─────────────────────────────────────────▶ answer
//!                       coopr_commit_seconds (queue, batch, Raft write, apply)
//!                       ├ coopr_raft_log_append_seconds       leader's append + fsync
//!                       ├ coopr_raft_append_rpc_seconds       append round trip to a follower
//!                       │   └ coopr_raft_append_handle_seconds  (follower: take + its fsync)
//!                       │       └ coopr_raft_log_append_seconds (follower's append + fsync)
//!                       └ coopr_raft_apply_seconds            state machine apply
//! ```
//!
//! What is left of the client's latency once the commit is taken out is HTTP, JSON, the
//! request's checks and the answer; what is left of the commit once its stages are taken out
//! is openraft's own scheduling between them (and the leader's append overlapping the
//! replication, where it does).

use std::collections::BTreeMap;
use std::time::Duration;

/// `(sum in seconds, count)` per `(series name, labels)` as a node exposes them.
pub(crate) type Scrape = BTreeMap<(String, String), (f64, u64)>;

/// Reads the `_sum` and `_count` lines of every summary or histogram a node exposes.
pub(crate) fn parse(text: &str) -> Scrape {
    let mut out: Scrape = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        if let Some(base) = name.strip_suffix("_sum") {
            out.entry((base.to_string(), labels.to_string()))
                .or_default()
                .0 = value;
        } else if let Some(base) = name.strip_suffix("_count") {
            out.entry((base.to_string(), labels.to_string()))
                .or_default()
                .1 = value as u64;
        }
    }
    out
}

/// Scrapes `url`'s metrics; empty when the node does not answer (the row then shows `-`).
pub(crate) async fn scrape(http: &reqwest::Client, url: &str) -> Scrape {
    let answer = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    match answer {
        Ok(r) if r.status() == 200 => parse(&r.text().await.unwrap_or_default()),
        _ => Scrape::new(),
    }
}

/// Scrapes every node of `urls`, in order.
pub(crate) async fn scrape_all(http: &reqwest::Client, urls: &[String]) -> Vec<Scrape> {
    let mut scrapes = Vec::new();
    for url in urls {
        scrapes.push(scrape(http, url).await);
    }
    scrapes
}

/// The mean of a series over what happened between two scrapes, and how many samples it had,
/// summed over every label set whose labels contain `labels` (e.g. `group="dc-`).
pub(crate) fn mean(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    labels: &str,
) -> Option<(Duration, u64)> {
    mean_over([(before, after)], name, labels)
}

/// [`mean`] over the samples of several nodes together, each with its scrapes before and after.
fn mean_over<'a>(
    nodes: impl IntoIterator<Item = (&'a Scrape, &'a Scrape)>,
    name: &str,
    labels: &str,
) -> Option<(Duration, u64)> {
    let (mut sum, mut count) = (0.0, 0u64);
    for (before, after) in nodes {
        for ((series, l), (s, c)) in after {
            if series != name || !l.contains(labels) {
                continue;
            }
            let (s0, c0) = before
                .get(&(series.clone(), l.clone()))
                .copied()
                .unwrap_or_default();
            sum += s - s0;
            count += c.saturating_sub(c0);
        }
    }
    (count > 0).then(|| (Duration::from_secs_f64(sum / count as f64), count))
}

/// One stage: what, where, its mean, and how many samples per write.
pub(crate) struct Stage {
    pub what: &'static str,
    pub mean: Option<Duration>,
    pub per_write: f64,
}

/// The stages of a phase of `writes` writes at `leader` (index into the scrapes), from the
/// scrapes of every node before and after it.
pub(crate) fn stages(
    before: &[Scrape],
    after: &[Scrape],
    leader: usize,
    writes: u64,
) -> Vec<Stage> {
    let dc = "group=\"dc-";
    let at =
        |node: usize, name: &str, labels: &str| mean(&before[node], &after[node], name, labels);
    let followers = |name: &str| {
        let nodes = (0..after.len())
            .filter(|n| *n != leader)
            .map(|n| (&before[n], &after[n]));
        mean_over(nodes, name, dc)
    };
    let stage = |what, found: Option<(Duration, u64)>| Stage {
        what,
        mean: found.map(|(m, _)| m),
        per_write: found.map_or(0.0, |(_, c)| c as f64 / writes.max(1) as f64),
    };
    vec![
        stage(
            "commit at the leader (propose → outcome)",
            at(leader, "coopr_commit_seconds", ""),
        ),
        stage(
            "leader: log append + fsync",
            at(leader, "coopr_raft_log_append_seconds", dc),
        ),
        stage(
            "leader: append round trip to a follower",
            at(leader, "coopr_raft_append_rpc_seconds", dc),
        ),
        stage(
            "follower: takes the append (its fsync included)",
            followers("coopr_raft_append_handle_seconds"),
        ),
        stage(
            "follower: log append + fsync",
            followers("coopr_raft_log_append_seconds"),
        ),
        stage("leader: apply", at(leader, "coopr_raft_apply_seconds", "")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_come_from_sum_and_count_differences() {
        let before = parse(
            "# TYPE coopr_commit_seconds summary\n\
             coopr_commit_seconds{quantile=\"0.5\"} 0.001\n\
             coopr_commit_seconds_sum 1.0\n\
             coopr_commit_seconds_count 100\n\
             coopr_raft_log_append_seconds_sum{group=\"dc-a\"} 0.5\n\
             coopr_raft_log_append_seconds_count{group=\"dc-a\"} 100\n\
             coopr_raft_log_append_seconds_sum{group=\"placement\"} 9\n\
             coopr_raft_log_append_seconds_count{group=\"placement\"} 9\n",
        );
        let after = parse(
            "coopr_commit_seconds_sum 1.3\n\
             coopr_commit_seconds_count 200\n\
             coopr_raft_log_append_seconds_sum{group=\"dc-a\"} 0.6\n\
             coopr_raft_log_append_seconds_count{group=\"dc-a\"} 150\n\
             coopr_raft_log_append_seconds_sum{group=\"placement\"} 19\n\
             coopr_raft_log_append_seconds_count{group=\"placement\"} 10\n",
        );
        let (commit, n) = mean(&before, &after, "coopr_commit_seconds", "").expect("commit");
        assert_eq!(n, 100);
        assert!((commit.as_secs_f64() - 0.003).abs() < 1e-9, "{commit:?}");
        // Only the DC log's appends, not the placement group's.
        let (append, n) = mean(
            &before,
            &after,
            "coopr_raft_log_append_seconds",
            "group=\"dc-",
        )
        .expect("append");
        assert_eq!(n, 50);
        assert!((append.as_secs_f64() - 0.002).abs() < 1e-9, "{append:?}");
        assert!(mean(&before, &after, "coopr_raft_apply_seconds", "").is_none());
        let stages = stages(&[before], &[after], 0, 100);
        assert_eq!(stages[0].per_write, 1.0);
        assert_eq!(stages[1].per_write, 0.5);
        assert!(stages[3].mean.is_none(), "no followers");

        // Followers' samples are pooled (not their means averaged): 10 in 0.1 s at one, 30 in
        // 0.9 s at the other: 1.0 s over 40.
        let follower = |sum: f64, count: u64| {
            parse(&format!(
                "coopr_raft_append_handle_seconds_sum{{group=\"dc-a\"}} {sum}\n\
                 coopr_raft_append_handle_seconds_count{{group=\"dc-a\"}} {count}\n"
            ))
        };
        let empty = Scrape::new();
        let before = [empty.clone(), empty.clone(), empty];
        let after = [Scrape::new(), follower(0.1, 10), follower(0.9, 30)];
        let pooled_stages = super::stages(&before, &after, 0, 20);
        let pooled = pooled_stages[3].mean.expect("followers' mean");
        assert!((pooled.as_secs_f64() - 0.025).abs() < 1e-9, "{pooled:?}");
        assert_eq!(pooled_stages[3].per_write, 2.0);
    }
}
