//! Latency summaries and formatting shared by the scenarios.

use std::time::Duration;

/// Percentiles of a set of latencies (nearest rank on the sorted samples).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub total: Duration,
}

impl Summary {
    pub fn of(latencies: &[Duration]) -> Summary {
        assert!(!latencies.is_empty(), "a summary needs at least one sample");
        let mut sorted = latencies.to_vec();
        sorted.sort();
        let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        Summary {
            samples: sorted.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: sorted[sorted.len() - 1],
            total: sorted.iter().sum(),
        }
    }

    /// The mean latency.
    pub fn mean(&self) -> Duration {
        self.total / u32::try_from(self.samples).unwrap_or(u32::MAX)
    }
}

/// Milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// A rate with no decimals above 100, one below.
pub fn rate(count: f64, elapsed: Duration) -> String {
    let per_s = count / elapsed.as_secs_f64().max(1e-9);
    if per_s >= 100.0 {
        format!("{per_s:.0}")
    } else {
        format!("{per_s:.1}")
    }
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (Linux; 10 ms
/// resolution, assuming the usual 100 clock ticks per second). `None` elsewhere.
pub fn process_cpu_time() -> Option<Duration> {
    cpu_time_of("self")
}

/// [`process_cpu_time`] of process `pid` (`"self"`: this one).
pub fn cpu_time_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start with field 3, `state`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A memory field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`; `pid` `"self"`: this
/// process), in bytes (Linux). `None` elsewhere.
pub fn memory_of(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU used between two readings, as a percentage of one core.
pub fn cpu_percent(before: Option<Duration>, after: Option<Duration>, elapsed: Duration) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.0}%",
            (a.saturating_sub(b)).as_secs_f64() / elapsed.as_secs_f64().max(1e-9) * 100.0
        ),
        _ => "n/a".into(),
    }
}

/// Median of repeated measurements.
pub fn median(samples: &mut [Duration]) -> Duration {
    assert!(!samples.is_empty());
    samples.sort();
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
    }
}
