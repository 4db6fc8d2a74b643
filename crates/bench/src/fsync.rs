//! The physical floor of a durable write on this filesystem: how long one small `write` +
//! `sync_data` takes, and one `RedbStore::append` of one entry (what the server's log pays per
//! batch). Same method as `crates/store/examples/append_latency.rs`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use coopr_store::{LogStore, RedbStore, WalStore};

pub const RECORD_LEN_BYTES: usize = 100;

/// Appends 100 bytes to a file and `sync_data`s it, `rounds` times.
pub fn raw_fsync(dir: &Path, rounds: usize) -> std::io::Result<Vec<Duration>> {
    let mut file = std::fs::File::create(dir.join("raw.log"))?;
    let record = [0xCD; RECORD_LEN_BYTES];
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

/// Appends one 100-byte entry to a fresh redb log, `rounds` times (after a short warm-up).
pub fn redb_append(dir: &Path, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    store_append(&RedbStore::open(dir.join("floor.redb"))?, rounds)
}

/// Appends one 100-byte entry to a fresh WAL (the Raft logs' store), `rounds` times (after a
/// short warm-up): what a node's log append costs without openraft and the runtime around it.
pub fn wal_append(dir: &Path, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    store_append(&WalStore::open(dir.join("floor-wal"))?, rounds)
}

fn store_append(store: &dyn LogStore, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let batch = vec![vec![0xAB; RECORD_LEN_BYTES]];
    for _ in 0..20 {
        store.append(&batch)?;
    }
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        store.append(&batch)?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

/// The mount a path lives on, as `device fstype` (from `/proc/mounts`; Linux only).
pub fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "unknown".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let fstype = fields.next()?;
            path.starts_with(mount_point).then(|| {
                (
                    mount_point.len(),
                    format!("{device} {fstype} (mounted on {mount_point})"),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}
