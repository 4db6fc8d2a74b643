//! The node's clock: the one place where server logic gets the time.
//!
//! ```text
//!   tokio::time::Instant (follows tokio's clock: real, or paused and advanced by a simulation)
//!        |  elapsed since the node started, scaled by the node's drift
//!        v
//!   mono_ms  -- leases, placement timing, heartbeats, pullers, staleness, durations
//!        |  + base (Unix ms) + offset
//!        v
//!   wall_ms  -- Entry.now_ms (task deadlines, commit times, create times)
//! ```
//!
//! Every node gets an `Arc<dyn Clock>` when it starts ([`crate::StartOptions`]); nothing in the
//! server reads `std::time::Instant` or `SystemTime` directly (a unit test below checks the
//! sources). Sleeps and timeouts use `tokio::time`, which follows the same tokio clock, so a
//! simulation that pauses tokio's clock (`tokio::time::pause()`, as turmoil does) drives both
//! the times the logic reads and the times it waits for. Several nodes in one process each have
//! their own clock: their monotonic times start when each node starts, as in separate processes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where a node reads the time.
///
/// An implementation must guarantee:
/// - `mono_ms` never goes backwards and advances with tokio's clock (at most at a bounded
///   drift from it); it means nothing across nodes;
/// - `wall_ms` is Unix time in ms, as the node's OS would tell it: it may be offset from other
///   nodes' (by less than `max_clock_offset_ms` in a healthy deployment) and may jump.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds on this node's monotonic clock (0 around when the node started).
    fn mono_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch on this node's wall clock.
    fn wall_ms(&self) -> u64;
}

/// The production clock: tokio's monotonic clock and the OS's wall clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn mono_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock for simulations and tests: tokio's clock only (never the OS's wall clock), with a
/// per-node offset and drift, so that nodes in one process can have skewed clocks.
///
/// `mono_ms` is the time since the clock was made, scaled by `1 + drift_ppm / 10^6`;
/// `wall_ms` is `base_wall_ms + offset_ms + mono_ms`. Under a paused tokio clock both are a
/// function of the simulated time only, so runs are reproducible.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    /// Unix ms that a node with no offset reads when the clock is made.
    pub base_wall_ms: u64,
    /// How far this node's wall clock is ahead (positive) or behind (negative).
    pub offset_ms: i64,
    /// How much faster (positive) or slower (negative) this node's clock runs than tokio's, in
    /// millionths.
    pub drift_ppm: i64,
}

impl SimClock {
    /// A clock that reads `base_wall_ms + offset_ms` now and runs `drift_ppm` fast.
    ///
    /// # Panics
    /// If the drift is not within ±10% (a clock that far off is not a clock) or the offset
    /// would put the wall clock before 1970.
    pub fn new(base_wall_ms: u64, offset_ms: i64, drift_ppm: i64) -> SimClock {
        assert!(
            drift_ppm.abs() <= 100_000,
            "drift of {drift_ppm} ppm is out of range"
        );
        assert!(
            base_wall_ms as i128 + offset_ms as i128 >= 0,
            "offset {offset_ms} ms puts the wall clock before 1970"
        );
        SimClock {
            start: Instant::now(),
            base_wall_ms,
            offset_ms,
            drift_ppm,
        }
    }
}

impl Clock for SimClock {
    fn mono_ms(&self) -> u64 {
        drifted_ms(self.start.elapsed(), self.drift_ppm)
    }

    fn wall_ms(&self) -> u64 {
        offset_ms(self.base_wall_ms, self.offset_ms, self.mono_ms())
    }
}

/// `elapsed` on a clock that runs `drift_ppm` millionths fast, in whole ms.
fn drifted_ms(elapsed: Duration, drift_ppm: i64) -> u64 {
    let micros = elapsed.as_micros() as i128;
    (micros * (1_000_000 + drift_ppm as i128) / 1_000_000 / 1_000) as u64
}

/// `base + offset + mono`, never before 1970.
fn offset_ms(base_wall_ms: u64, offset_ms: i64, mono_ms: u64) -> u64 {
    (base_wall_ms as i128 + offset_ms as i128 + mono_ms as i128).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's drift scales its monotonic time; its offset shifts its wall time only.
    #[test]
    fn drift_scales_and_offset_shifts() {
        let ten_s = Duration::from_secs(10);
        assert_eq!(drifted_ms(ten_s, 0), 10_000);
        // 1,000 ppm fast: 10 ms more over 10 s; 1,000 ppm slow: 10 ms less.
        assert_eq!(drifted_ms(ten_s, 1_000), 10_010);
        assert_eq!(drifted_ms(ten_s, -1_000), 9_990);
        assert_eq!(drifted_ms(Duration::from_micros(999), 0), 0);
        let base = 1_700_000_000_000;
        assert_eq!(offset_ms(base, 250, 10_000), base + 10_250);
        assert_eq!(offset_ms(base, -1_000, 10_010), base + 9_010);
    }

    /// A fresh `SimClock` reads its base plus offset, then advances with tokio's clock.
    #[tokio::test]
    async fn sim_clock_starts_at_its_offset_and_advances() {
        let base = 1_700_000_000_000;
        let ahead = SimClock::new(base, 250, 0);
        let before = (ahead.mono_ms(), ahead.wall_ms());
        assert!(before.0 < 50 && before.1 >= base + 250 && before.1 < base + 300);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mono, wall) = (ahead.mono_ms(), ahead.wall_ms());
        assert!(mono >= before.0 + 20);
        // Two reads: the second may be a millisecond later.
        assert!((wall - base - 250).abs_diff(mono) <= 1);
        let system = SystemClock::new();
        assert!(system.mono_ms() < 50 && system.wall_ms() > 1_600_000_000_000);
    }

    /// No server logic reads the OS's clocks: `std::time::Instant` and `SystemTime` appear in
    /// this file only. (Sleeps and deadlines through `tokio::time` are fine: they follow the
    /// tokio clock a simulation drives.)
    #[test]
    fn only_the_clock_reads_the_os_clocks() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("clock.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("read source");
                for (n, line) in text.lines().enumerate() {
                    if reads_os_clock(line) {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "read the time through `app.clock` (crate::clock), not the OS:\n{}",
            offenders.join("\n")
        );
    }

    /// Whether a line of source uses `std::time::Instant`, `SystemTime` or `UNIX_EPOCH`
    /// (also when imported in a `use std::time::{...}` group).
    fn reads_os_clock(line: &str) -> bool {
        let code = line.split("//").next().unwrap_or("");
        let from_std_time = code
            .find("std::time::")
            .map(|i| &code[i + "std::time::".len()..])
            .is_some_and(|rest| {
                let words = rest
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .collect::<Vec<_>>();
                words.contains(&"Instant")
            });
        from_std_time || code.contains("SystemTime") || code.contains("UNIX_EPOCH")
    }

    #[test]
    fn the_guard_recognizes_os_clock_reads() {
        assert!(reads_os_clock("use std::time::{Duration, Instant};"));
        assert!(reads_os_clock("let t = std::time::Instant::now();"));
        assert!(reads_os_clock(
            "SystemTime::now().duration_since(UNIX_EPOCH)"
        ));
        assert!(!reads_os_clock("use std::time::Duration;"));
        assert!(!reads_os_clock("let t = tokio::time::Instant::now();"));
        assert!(!reads_os_clock("// std::time::Instant is not used"));
    }
}
