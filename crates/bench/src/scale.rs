//! `scale`: what a cluster costs the state a DC keeps in memory and in its snapshots, measured
//! with a counting allocator (no I/O).
//!
//! ```text
//!  State (tenant + catalog) ──apply: create + take/finish every task──► N ACTIVE one-machine
//!  lamp clusters in one shard (as the owner's DC log builds them)
//!      │
//!      ├─ heap bytes live (counting allocator): the whole state, per cluster
//!      ├─ heap bytes of each part of a cluster record (measured as the allocations of a clone)
//!      └─ snapshot bytes (`encode_parts`: JSON per shard), per cluster
//! ```
//!
//! Resident memory of a server adds what is not in the state (the DC log's cached entries,
//! buffers, the allocator's fragmentation); this measures the state itself, the part that grows
//! with the number of clusters.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use coopr_state::ClusterRecord;

use crate::plan::Catalog;

/// The system allocator, counting the bytes currently allocated.
pub struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
/// The most bytes allocated at once since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Live allocations by size (upper bounds of [`SIZE_CLASSES`], the last one unbounded).
static LIVE: [AtomicUsize; SIZE_CLASSES.len() + 1] = [const { AtomicUsize::new(0) }; 9];
const SIZE_CLASSES: [usize; 8] = [8, 16, 24, 40, 64, 128, 256, 1024];
/// What glibc's malloc takes for the live allocations: a chunk of the size plus its 8-byte
/// header, rounded up to 16, at least 32 bytes.
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

fn size_class(bytes: usize) -> usize {
    SIZE_CLASSES
        .iter()
        .position(|&bound| bytes <= bound)
        .unwrap_or(SIZE_CLASSES.len())
}

fn chunk(bytes: usize) -> usize {
    (bytes + 8).next_multiple_of(16).max(32)
}

fn count_up(bytes: usize) {
    let now = ALLOCATED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
    LIVE[size_class(bytes)].fetch_add(1, Ordering::Relaxed);
    CHUNKS.fetch_add(chunk(bytes), Ordering::Relaxed);
}

fn count_down(bytes: usize) {
    ALLOCATED.fetch_sub(bytes, Ordering::Relaxed);
    LIVE[size_class(bytes)].fetch_sub(1, Ordering::Relaxed);
    CHUNKS.fetch_sub(chunk(bytes), Ordering::Relaxed);
}

/// Live allocations now, by size class, and the bytes glibc's chunks for them take.
fn live_allocations() -> ([usize; SIZE_CLASSES.len() + 1], usize) {
    (
        std::array::from_fn(|i| LIVE[i].load(Ordering::Relaxed)),
        CHUNKS.load(Ordering::Relaxed),
    )
}

/// Starts measuring the peak from what is allocated now.
fn reset_peak() {
    PEAK.store(allocated(), Ordering::Relaxed);
}

/// The most heap bytes allocated at once since [`reset_peak`].
fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

// SAFETY: every call is passed to the system allocator unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_up(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_up(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count_down(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count_down(layout.size());
            count_up(new_size);
        }
        p
    }
}

extern "C" {
    /// glibc: gives free memory at the top of the heap and free whole pages inside it back to
    /// the system; 1 if any was.
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Bytes currently allocated on the heap.
pub fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Heap bytes a value owns, measured as what a clone of it allocates.
fn heap_of<T: Clone>(value: &T) -> usize {
    cost_of(value).0
}

/// Heap bytes and allocations a value owns, measured as what a clone of it allocates.
fn cost_of<T: Clone>(value: &T) -> (usize, usize) {
    let live = || live_allocations().0.iter().sum::<usize>();
    let (before, before_count) = (allocated(), live());
    let copy = value.clone();
    let (after, after_count) = (allocated(), live());
    drop(copy);
    (
        after.saturating_sub(before),
        after_count.saturating_sub(before_count),
    )
}

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// ACTIVE one-machine clusters in the state.
    #[arg(long, default_value_t = 10_000)]
    clusters: u32,
    /// Cluster shards of the state; cluster i goes to shard i mod shards.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Build the state as a DC in steady state holds it: every 1,000 clusters the outboxes are
    /// trimmed (replicas caught up) and finished jobs retired (`job_retention_ms = 0`). The
    /// way to reach 1,000,000 clusters within the machine's memory.
    #[arg(long)]
    steady: bool,
    /// With `--steady`: also write the snapshot as a node does (one file, part by part, in a
    /// new directory under this one) and restore a state from it, measuring time, file size
    /// and the heap each needs beyond the state.
    #[arg(long)]
    snapshot_dir: Option<std::path::PathBuf>,
}

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.shards > 0, "--shards must be positive");
    let catalog = Catalog::load(1)?;
    let empty = catalog.state_with(args.shards.max(64))?;
    let base = allocated();
    let base_allocations: usize = live_allocations().0.iter().sum();
    let started = Instant::now();
    let upkeep = args.steady.then_some(1_000);
    let mut state = crate::reseed::build(&catalog, empty, args.clusters, args.shards, upkeep)?;
    let built = started.elapsed();
    let total = allocated().saturating_sub(base);
    let total_allocations = live_allocations()
        .0
        .iter()
        .sum::<usize>()
        .saturating_sub(base_allocations);
    eprintln!("-- {} clusters built in {built:?}", args.clusters);
    let n = f64::from(args.clusters.max(1));

    // Parts of the records, each summed over every cluster; then the shards' and the DC's own.
    let records: Vec<&ClusterRecord> = state.clusters().collect();
    let mut parts: Vec<Part> = vec![
        Part::of_records(
            &records,
            "cluster (spec, config, provider, template)",
            |r| &r.cluster,
        ),
        Part::of_records(
            &records,
            "nodes (properties, actions, provisioner results)",
            |r| &r.nodes,
        ),
        Part::of_records(&records, "jobs (finished jobs with their tasks)", |r| {
            &r.jobs
        }),
        Part::of_records(&records, "service definitions (the planner's input)", |r| {
            &r.service_defs
        }),
        Part::of_records(&records, "in-flight operation as shipped", |r| &r.shipped),
        Part::of_records(&records, "retired jobs' summaries", |r| &r.retired_jobs),
        Part::of_shards(&state, "replication outboxes (records for replicas)", |s| {
            &s.replication
        }),
        Part::of_shards(&state, "idempotency keys of the shards", |s| &s.keys),
        Part::of("DC-local (idempotency table, provisioners)", &state.local),
    ];
    let counted: usize = parts.iter().map(|p| p.heap).sum();
    parts.push(Part {
        name: "not attributed (allocation slack: clones above are compact)",
        heap: total.saturating_sub(counted),
        allocations: None,
        json: None,
    });

    let snapshot = Streamed::of(&state)?;
    // What another DC holds of these clusters once it caught up (not part of this state).
    let copies: Vec<coopr_state::replication::ClusterShardView> = state
        .shards
        .keys()
        .filter_map(|shard| state.replica_copy(*shard))
        .collect();
    let (copy_heap, copy_allocations) = cost_of(&copies);

    println!(
        "\nState of {} ACTIVE one-machine `lamp` clusters in {} shard(s){} (built in {:.1} s)\n",
        args.clusters,
        args.shards,
        if args.steady {
            ", outboxes trimmed and finished jobs retired as they went"
        } else {
            ""
        },
        built.as_secs_f64()
    );
    println!("| part | heap | per cluster | allocations per cluster | snapshot JSON per cluster |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mb = |b: usize| format!("{:.1} MB", b as f64 / 1e6);
    let per = |b: usize| format!("{:.2} KB", b as f64 / n / 1e3);
    for part in &parts {
        let json = part.json.map_or(String::new(), per);
        let allocations = part
            .allocations
            .map_or(String::new(), |a| format!("{:.1}", a as f64 / n));
        println!(
            "| {} | {} | {} | {allocations} | {json} |",
            part.name,
            mb(part.heap),
            per(part.heap)
        );
    }
    println!(
        "| **total** | **{}** | **{}** | {:.1} | **{}** |",
        mb(total),
        per(total),
        total_allocations as f64 / n,
        per(snapshot.cluster_bytes)
    );
    println!(
        "\nA replica copy of these clusters (what another DC holds of them, templates shared): \
         {} ({} per cluster, {:.1} allocations per cluster).",
        mb(copy_heap),
        per(copy_heap),
        copy_allocations as f64 / n
    );
    drop(copies);
    println!(
        "\nSnapshot, one part at a time (as a node would stream it): {} ({} per cluster) in {} \
         parts, the largest {}; encoded in {} ms, decoded (installed) in {} ms.",
        mb(snapshot.bytes),
        per(snapshot.bytes),
        snapshot.parts,
        mb(snapshot.largest),
        snapshot.encode.as_millis(),
        snapshot.decode.as_millis()
    );
    let (rss, peak) = resident();
    println!(
        "Process resident memory: {} now, {} at most (the allocator's and the build's overhead \
         on top of the state's heap).",
        mb(rss),
        mb(peak)
    );
    let (live, chunks) = live_allocations();
    let count: usize = live.iter().sum();
    let classes: Vec<String> = SIZE_CLASSES
        .iter()
        .map(|bound| format!("≤ {bound} B"))
        .chain([format!("> {} B", SIZE_CLASSES[SIZE_CLASSES.len() - 1])])
        .zip(live)
        .map(|(class, count)| format!("{class}: {:.1}", count as f64 / n))
        .collect();
    println!(
        "Live allocations: {count} in the process ({:.1} per cluster; by size, per cluster: {}); \
         glibc's chunks for them (size + 8-byte header, to 16, at least 32 B): {} ({} per \
         cluster).",
        count as f64 / n,
        classes.join(", "),
        mb(chunks),
        per(chunks)
    );
    // SAFETY: glibc's `malloc_trim` only returns free memory of the heap to the system.
    let trimmed = unsafe { malloc_trim(0) };
    let (rss_trimmed, _) = resident();
    println!(
        "After `malloc_trim(0)` (free pages inside the heap given back{}): {} resident.",
        if trimmed == 1 { "" } else { "; none was" },
        mb(rss_trimmed)
    );
    // What the leader's driver does every tick (200 ms) under the state's read lock.
    let started = Instant::now();
    let orphans = state.orphaned_clusters().len();
    let orphan_scan = started.elapsed();
    let started = Instant::now();
    let slice = state.shard_count().div_ceil(50);
    let retirable = state
        .retirable_jobs(0..=slice - 1, u64::MAX, coopr_state::MAX_RETIRE_BATCH)
        .len();
    let retire_scan = started.elapsed();
    println!(
        "Driver tick: the orphan scan (every cluster) takes {:.1} ms ({orphans} found), the \
         retirement scan of {slice} shard(s) {:.2} ms ({retirable} found).",
        orphan_scan.as_secs_f64() * 1e3,
        retire_scan.as_secs_f64() * 1e3
    );
    println!(
        "\nInline sizes: task {} B, node action {} B, node {} B, replication record {} B, \
         cluster record {} B.",
        std::mem::size_of::<coopr_types::Task>(),
        std::mem::size_of::<coopr_types::NodeAction>(),
        std::mem::size_of::<coopr_types::Node>(),
        std::mem::size_of::<coopr_state::replication::Record>(),
        std::mem::size_of::<coopr_state::ClusterRecord>(),
    );
    let tasks: usize = records
        .iter()
        .flat_map(|r| r.jobs.values())
        .map(|j| j.tasks.len())
        .sum();
    let actions: usize = records
        .iter()
        .flat_map(|r| r.nodes.values())
        .map(|node| node.actions.len())
        .sum();
    let outbox_records: usize = state
        .shards
        .values()
        .map(|s| s.replication.records.len())
        .sum();
    println!(
        "Per cluster: {:.1} tasks in its jobs, {:.1} node actions, {:.1} outbox records.",
        tasks as f64 / n,
        actions as f64 / n,
        outbox_records as f64 / n
    );
    if args.steady {
        drop(records);
        if let Some(dir) = &args.snapshot_dir {
            let dir = tempfile::tempdir_in(dir)?;
            snapshot_through_a_file(state, dir.path(), n)?;
        }
        return Ok(());
    }
    // Once every replica acknowledged the records, the owner drops them (`TrimOutbox`).
    let outbox: usize = state.shards.values().map(|s| heap_of(&s.replication)).sum();
    let before_trim = allocated();
    let mut now = 1_800_000_000_000;
    crate::reseed::trim_outboxes(&mut state, &mut now)?;
    let trimmed = total.saturating_sub(before_trim.saturating_sub(allocated()));
    println!(
        "\nWith the outbox trimmed (every replica caught up; it held {} before): {} ({} per \
         cluster). At that rate 1,000,000 such clusters need {:.1} GB of heap for the state.",
        mb(outbox),
        mb(trimmed),
        per(trimmed),
        trimmed as f64 / n * 1e6 / 1e9
    );
    // Past the job retention the finished jobs go to the archive on disk (deflated JSON).
    let before_retire = allocated();
    let mut archived = 0;
    crate::reseed::retire_jobs(&mut state, &mut now, |effect| {
        if let coopr_state::ArchiveEffect::Retired(run) = effect {
            archived += coopr_server::archive::encode_run(&run).len();
        }
    })?;
    let retired = trimmed.saturating_sub(before_retire.saturating_sub(allocated()));
    println!(
        "With the finished jobs retired too: {} ({} per cluster; 1,000,000 clusters: {:.1} GB); \
         the archive on disk holds {} of them ({} per cluster).",
        mb(retired),
        per(retired),
        retired as f64 / n * 1e6 / 1e9,
        mb(archived),
        per(archived)
    );
    Ok(())
}

/// The snapshot of a state built and read back one part at a time.
struct Streamed {
    bytes: usize,
    /// Bytes of the cluster shards' parts.
    cluster_bytes: usize,
    parts: usize,
    largest: usize,
    encode: std::time::Duration,
    decode: std::time::Duration,
}

impl Streamed {
    fn of(state: &coopr_state::State) -> anyhow::Result<Streamed> {
        let mut streamed = Streamed {
            bytes: 0,
            cluster_bytes: 0,
            parts: 0,
            largest: 0,
            encode: std::time::Duration::ZERO,
            decode: std::time::Duration::ZERO,
        };
        for data in state.shards.values() {
            let started = Instant::now();
            let bytes = serde_json::to_vec(data)?;
            streamed.encode += started.elapsed();
            let started = Instant::now();
            // As a node decodes a part: equal templates and definitions decoded once.
            let decoded: coopr_state::ClusterShard = {
                let _memo = coopr_types::shared_json::Memo::open();
                serde_json::from_slice(&bytes)?
            };
            streamed.decode += started.elapsed();
            drop(decoded);
            streamed.cluster_bytes += bytes.len();
            streamed.add(bytes.len());
        }
        // The global shard and the DC's own state: small parts.
        let started = Instant::now();
        let global = serde_json::to_vec(&state.global)?.len();
        let local = serde_json::to_vec(&state.local)?.len();
        streamed.encode += started.elapsed();
        streamed.add(global);
        streamed.add(local);
        Ok(streamed)
    }

    fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.parts += 1;
        self.largest = self.largest.max(bytes);
    }
}

/// Writes `state`'s snapshot into a snapshot file as the DC log does (part by part), then, the
/// state dropped as on a node that restarts or was wiped, restores one from the file.
fn snapshot_through_a_file(
    state: coopr_state::State,
    dir: &std::path::Path,
    n: f64,
) -> anyhow::Result<()> {
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership};
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let _guard = runtime.enter();
    let mb = |b: usize| format!("{:.1} MB", b as f64 / 1e6);
    let store = coopr_raft::SnapshotStore::open(dir)?;
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
        last_membership: StoredMembership::default(),
        snapshot_id: "scale".into(),
    };
    let held = allocated();
    reset_peak();
    // What the DC log does under the lock applies take: the rest runs after it.
    let started = Instant::now();
    let taken = coopr_state::StateSnapshot::of(&state);
    let take = started.elapsed();
    let started = Instant::now();
    let mut writer = store.writer(&meta)?;
    taken.for_each_part(|id, bytes| writer.part(id, &bytes))?;
    drop(store.commit(writer)?);
    let written = started.elapsed();
    let write_peak = peak().saturating_sub(held);
    let file: u64 = store
        .files()?
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let shard_count = state.shard_count();
    drop(state);
    let empty = allocated();
    reset_peak();
    let started = Instant::now();
    let mut reader = store.open_current()?.context("the snapshot just written")?;
    let mut decoder = coopr_state::PartsDecoder::new(shard_count);
    // The steps of a restore, one thread (a node decodes on every core): the parts read with
    // their checksums, their JSON decoded, and the decoded parts added to the state.
    let mut steps = [std::time::Duration::ZERO; 3];
    loop {
        let at = Instant::now();
        let Some(part) = reader.next() else {
            break;
        };
        let (id, bytes) = part?;
        steps[0] += at.elapsed();
        let at = Instant::now();
        let decoded = coopr_state::PartsDecoder::decode(id, &bytes)?;
        steps[1] += at.elapsed();
        let at = Instant::now();
        decoder.insert(decoded)?;
        steps[2] += at.elapsed();
    }
    let at = Instant::now();
    let restored = decoder.finish();
    steps[2] += at.elapsed();
    let read = started.elapsed();
    let restored_heap = allocated().saturating_sub(empty);
    let read_peak = peak().saturating_sub(empty);
    println!(
        "\nSnapshot through a snapshot file (`coopr_raft::SnapshotStore`, as the DC log writes \
         and installs it): taken in {:.3} ms (under the lock applies wait for), {} on disk \
         ({:.2} KB per cluster), written and fsync'd in {:.1} s (after the lock) \
         with at most {} of heap beyond the state; restored part by part in {:.1} s (parts \
         read and checked {:.1} s, decoded {:.1} s, added to the state {:.1} s) into a state \
         of {}, with at most {} of heap beyond it.",
        take.as_secs_f64() * 1e3,
        mb(file as usize),
        file as f64 / n / 1e3,
        written.as_secs_f64(),
        mb(write_peak),
        read.as_secs_f64(),
        steps[0].as_secs_f64(),
        steps[1].as_secs_f64(),
        steps[2].as_secs_f64(),
        mb(restored_heap),
        mb(read_peak.saturating_sub(restored_heap)),
    );
    drop(restored);
    Ok(())
}

/// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
fn resident() -> (usize, usize) {
    let field = |name| crate::stats::memory_of("self", name).unwrap_or(0) as usize;
    (field("VmRSS:"), field("VmHWM:"))
}

/// One row of the table: heap bytes and allocations a part owns, and its JSON's length if it
/// has one.
struct Part {
    name: &'static str,
    heap: usize,
    allocations: Option<usize>,
    json: Option<usize>,
}

impl Part {
    fn of<T: Clone + serde::Serialize>(name: &'static str, value: &T) -> Part {
        Part::summed(name, [value])
    }

    /// A part of every cluster shard, summed.
    fn of_shards<T: Clone + serde::Serialize>(
        state: &coopr_state::State,
        name: &'static str,
        field: impl Fn(&coopr_state::ClusterShard) -> &T,
    ) -> Part {
        Part::summed(name, state.shards.values().map(|s| field(s)))
    }

    /// A part of every cluster record, summed.
    fn of_records<T: Clone + serde::Serialize>(
        records: &[&ClusterRecord],
        name: &'static str,
        field: impl Fn(&ClusterRecord) -> &T,
    ) -> Part {
        Part::summed(name, records.iter().map(|r| field(r)))
    }

    fn summed<'a, T: Clone + serde::Serialize + 'a>(
        name: &'static str,
        values: impl IntoIterator<Item = &'a T>,
    ) -> Part {
        let (mut heap, mut allocations, mut json) = (0, 0, 0);
        for value in values {
            let (bytes, count) = cost_of(value);
            heap += bytes;
            allocations += count;
            json += json_len(value);
        }
        Part {
            name,
            heap,
            allocations: Some(allocations),
            json: Some(json),
        }
    }
}

/// Length of a value's JSON.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}
