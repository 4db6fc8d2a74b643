//! Measures the cost of a durable append on this machine, next to the raw fsync floor.
//!
//! ```text
//! cargo run --release -p coopr-store --example append_latency [DIR]
//! ```
//!
//! Writes into a temporary directory under DIR (default: the current directory, so the
//! numbers are for the real disk rather than a tmpfs `/tmp`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coopr_store::{LogStore, RedbStore};

const ENTRY_LEN_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = tempfile::tempdir_in(&base)?;
    println!(
        "dir: {} (entries of {ENTRY_LEN_BYTES} bytes)",
        dir.path().display()
    );

    report("raw write+sync_data", 1, &fsync_floor(dir.path(), 1000)?);

    let store = RedbStore::open(dir.path().join("store.redb"))?;
    for (batch_len, batches) in [(1, 1000), (64, 300)] {
        let batch = vec![vec![0xAB; ENTRY_LEN_BYTES]; batch_len];
        // Warm up the file so growth is not measured.
        for _ in 0..20 {
            store.append(&batch)?;
        }
        let mut latencies = Vec::with_capacity(batches);
        for _ in 0..batches {
            let start = Instant::now();
            store.append(&batch)?;
            latencies.push(start.elapsed());
        }
        report(&format!("redb append x{batch_len}"), batch_len, &latencies);
    }
    Ok(())
}

/// Appends 100 bytes to a file and `sync_data`s it, `rounds` times.
fn fsync_floor(dir: &Path, rounds: usize) -> std::io::Result<Vec<Duration>> {
    let mut file = std::fs::File::create(dir.join("raw.log"))?;
    let record = [0xCD; ENTRY_LEN_BYTES];
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

fn report(name: &str, batch_len: usize, latencies: &[Duration]) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let percentile = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let total: Duration = sorted.iter().sum();
    let calls_per_s = sorted.len() as f64 / total.as_secs_f64();
    println!(
        "{name:<22} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms  calls/s={:>8.0}  entries/s={:>9.0}",
        sorted.len(),
        percentile(0.50).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3,
        calls_per_s,
        calls_per_s * batch_len as f64,
    );
}
