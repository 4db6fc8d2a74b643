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

use anyhow::anyhow;
use coopr_state::ClusterRecord;
use coopr_types::ShardId;

use crate::plan::Catalog;

/// The system allocator, counting the bytes currently allocated.
pub struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Bytes currently allocated on the heap.
pub fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Heap bytes a value owns, measured as what a clone of it allocates.
fn heap_of<T: Clone>(value: &T) -> usize {
    let before = allocated();
    let copy = value.clone();
    let after = allocated();
    drop(copy);
    after.saturating_sub(before)
}

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// ACTIVE one-machine clusters in the shard.
    #[arg(long, default_value_t = 10_000)]
    clusters: u32,
}

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    let catalog = Catalog::load(1)?;
    let empty = catalog.state()?;
    let base = allocated();
    let started = Instant::now();
    let mut state = crate::reseed::owner(&catalog, args.clusters)?;
    let built = started.elapsed();
    let total = allocated().saturating_sub(base);
    drop(empty);
    eprintln!("-- {} clusters built in {built:?}", args.clusters);
    let n = f64::from(args.clusters.max(1));
    let shard = state
        .shards
        .get(&ShardId(0))
        .ok_or_else(|| anyhow!("no shard 0"))?;

    // Parts of the records, each summed over every cluster; then the shard's and the DC's own.
    let records: Vec<&ClusterRecord> = shard.clusters.values().collect();
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
        Part::of(
            "replication outbox (records for replicas)",
            &shard.replication,
        ),
        Part::of("idempotency keys of the shard", &shard.keys),
        Part::of("DC-local (idempotency table, provisioners)", &state.local),
    ];
    let counted: usize = parts.iter().map(|p| p.heap).sum();
    parts.push(Part {
        name: "not attributed (allocation slack: clones above are compact)",
        heap: total.saturating_sub(counted),
        json: None,
    });

    let snapshot_started = Instant::now();
    let snapshot = coopr_state::encode_parts(&state);
    let snapshot_time = snapshot_started.elapsed();
    let snapshot_bytes: usize = snapshot.values().map(Vec::len).sum();
    let shard_json = snapshot.get(&0).map_or(0, Vec::len);

    println!(
        "\nState of one shard of {} ACTIVE one-machine `lamp` clusters (built in {:.1} s)\n",
        args.clusters,
        built.as_secs_f64()
    );
    println!("| part | heap | per cluster | snapshot JSON per cluster |");
    println!("| --- | ---: | ---: | ---: |");
    let mb = |b: usize| format!("{:.1} MB", b as f64 / 1e6);
    let per = |b: usize| format!("{:.2} KB", b as f64 / n / 1e3);
    for part in &parts {
        let json = part.json.map_or(String::new(), per);
        println!(
            "| {} | {} | {} | {json} |",
            part.name,
            mb(part.heap),
            per(part.heap)
        );
    }
    println!(
        "| **total** | **{}** | **{}** | **{}** |",
        mb(total),
        per(total),
        per(shard_json)
    );
    println!(
        "\nSnapshot (`encode_parts`, every part): {} ({} per cluster), built in memory in {} ms.",
        mb(snapshot_bytes),
        per(snapshot_bytes),
        snapshot_time.as_millis()
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
    let tasks: usize = shard
        .clusters
        .values()
        .flat_map(|r| r.jobs.values())
        .map(|j| j.tasks.len())
        .sum();
    let actions: usize = shard
        .clusters
        .values()
        .flat_map(|r| r.nodes.values())
        .map(|node| node.actions.len())
        .sum();
    println!(
        "Per cluster: {:.1} tasks in its jobs, {:.1} node actions, {:.1} outbox records.",
        tasks as f64 / n,
        actions as f64 / n,
        shard.replication.records.len() as f64 / n
    );
    // Once every replica acknowledged the records, the owner drops them (`TrimOutbox`).
    let outbox = heap_of(&shard.replication);
    let through_seq = shard.replication.next_seq.saturating_sub(1);
    let before_trim = allocated();
    crate::reseed::apply(
        &mut state,
        &mut 1_800_000_000_000,
        coopr_state::Command::TrimOutbox {
            shard: ShardId(0),
            through_seq,
        },
    )?;
    let steady = total.saturating_sub(before_trim.saturating_sub(allocated()));
    println!(
        "\nWith the outbox trimmed (every replica caught up; it held {} before): {} ({} per \
         cluster). At that rate 1,000,000 such clusters need {:.1} GB of heap for the state.",
        mb(outbox),
        mb(steady),
        per(steady),
        steady as f64 / n * 1e6 / 1e9
    );
    Ok(())
}

/// One row of the table: heap bytes a part owns, and its JSON's length if it has one.
struct Part {
    name: &'static str,
    heap: usize,
    json: Option<usize>,
}

impl Part {
    fn of<T: Clone + serde::Serialize>(name: &'static str, value: &T) -> Part {
        Part {
            name,
            heap: heap_of(value),
            json: Some(json_len(value)),
        }
    }

    /// A part of every cluster record, summed.
    fn of_records<T: Clone + serde::Serialize>(
        records: &[&ClusterRecord],
        name: &'static str,
        field: impl Fn(&ClusterRecord) -> &T,
    ) -> Part {
        Part {
            name,
            heap: records.iter().map(|r| heap_of(field(r))).sum(),
            json: Some(records.iter().map(|r| json_len(field(r))).sum()),
        }
    }
}

/// Length of a value's JSON.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}
