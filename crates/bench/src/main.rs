//! `coopr-bench`: measures what one coopr node costs, next to the floor the disk sets.
//!
//! ```text
//!  ops:   reqwest clients --HTTP/loopback--> coopr server (redb, fsync) <--take/finish-- provisioner
//!           | create → ACTIVE, delete → TERMINATED,               | group commit       (fake cloud,
//!           | expireTime writes                                   v                    0 ms latency)
//!           '------------------------------------------ fsync floor: write 100 B + sync_data
//!
//!  big:   POST /v2/clusters of 1,000 / 10,000 nodes while probe clients write and read
//!
//!  dclog: coopr-bench --REST--> `coopr server` processes (1-node and 3-node DC, Raft, fsync)
//!                    --/v3/kv/put--> 3-member etcd cluster on loopback (same machine)
//!
//!  wan:   coopr-bench --REST--> 3 DCs of `coopr server` processes, every cross-DC link through
//!         a delay proxy (coopr-testkit): local vs forwarded writes, replication lag
//!
//!  plan:  examples/catalog.json --> solve_layout --> plan --> State::apply(CreateCluster)
//!         (pure functions, no I/O; 100 / 1,000 / 10,000 nodes)
//!
//!  catchup: 3-node DC of `coopr server` processes holding N clusters (generated offline into
//!         the leader's DC log) --> a wiped node's catch-up through the snapshot, end to end
//!
//!  reads: 1-node DC holding N clusters (generated offline) --> the cost of reads any caller
//!         may send, alone and to other tenants' writes while they run
//!
//!  scale: N ACTIVE clusters built through State::apply --> heap bytes (counting allocator)
//!         and snapshot bytes, per cluster and per part of a cluster record
//! ```
//!
//! Benchmarks are not timed tests: they print figures (a markdown table on stdout, progress on
//! stderr) and never fail on a threshold. Every scenario is bounded by a count, so it finishes
//! in well under a minute on two cores with the defaults. `BENCHMARKS.md` at the repository root
//! records the figures with the command that produced them.
//!
//! `wan` and `dclog` also draw PNG charts of the samples behind their tables (latency CDFs,
//! replication lag over time; module `plot`) into the directory given by `--plots` (default: the
//! current directory), and say where.

mod big;
mod breakdown;
mod catchup;
mod dclog;
mod failover;
mod fsync;
mod memory;
mod ops;
mod plan;
mod plot;
mod reads;
mod replica_seed;
mod reseed;
mod scale;
mod stats;
mod wan;

use clap::{Parser, Subcommand};

/// Counts heap bytes for `scale` (one relaxed atomic add per allocation elsewhere).
#[global_allocator]
static ALLOCATOR: scale::Counting = scale::Counting;

#[derive(Parser, Debug)]
#[command(name = "coopr-bench", about = "Benchmarks of the coopr server")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// One node on a real redb store (fsync), in-process fake-cloud provisioner, REST clients:
    /// create latency, cluster operations per second, durable metadata write latency.
    Ops(ops::OpsArgs),
    /// Layout, planning and state-machine apply time for big clusters (no I/O).
    Plan(plan::PlanArgs),
    /// One very large cluster create through REST while probe clients write and read: how
    /// long the create holds up other requests.
    Big(big::BigArgs),
    /// Durable write latency and throughput of 1-node and 3-node DCs (real `coopr server`
    /// processes) next to a 3-member etcd cluster, both over HTTP+JSON on loopback.
    Dclog(dclog::DcLogArgs),
    /// Three DCs (real `coopr server` processes) with a WAN-like delay on every cross-DC link:
    /// latency of a write at the owner DC and at another DC (forwarded), replication lag.
    Wan(wan::WanArgs),
    /// Three DCs (real `coopr server` processes) under a create load; the DC owning the most
    /// shards is killed (`kill -9`) and restarted, repeatedly: RTO, in-flight jobs finished at
    /// the new owner, RPO exposure, lost-operations report, rejoin time.
    Failover(failover::FailoverArgs),
    /// The CPU cost of re-seeding one shard's copy from a snapshot of the owner's (no network).
    Reseed(reseed::ReseedArgs),
    /// What a cluster costs the state in memory and in snapshots, by part (no I/O).
    Scale(scale::ScaleArgs),
    /// Resident memory and disk of a real 1-node DC holding N ACTIVE clusters, with finished
    /// jobs in memory and retired to the job archive.
    Memory(memory::MemoryArgs),
    /// A wiped node of a 3-node DC holding N clusters (real `coopr server` processes, the
    /// clusters generated into the leader's state offline) catching up: the survivors' restart
    /// from their snapshots, the snapshot transfer and install.
    Catchup(catchup::CatchupArgs),
    /// A replica DC re-seeded with every shard of an owner DC holding N clusters (real
    /// `coopr server` processes, the clusters generated into the owner's state offline).
    ReplicaSeed(replica_seed::ReplicaSeedArgs),
    /// What the API's reads cost a real node holding N clusters (generated offline), alone
    /// and to the writes of others while they run.
    Reads(reads::ReadsArgs),
    /// The offline step of `catchup` (run by it in a process of its own).
    #[command(hide = true)]
    CatchupGrow(catchup::GrowArgs),
}

/// Runs `future` on a multi-threaded tokio runtime.
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Ops(args) => block_on(ops::run(args)),
        Scenario::Plan(args) => plan::run(args),
        Scenario::Big(args) => block_on(big::run(args)),
        Scenario::Dclog(args) => block_on(dclog::run(args)),
        Scenario::Wan(args) => block_on(wan::run(args)),
        Scenario::Failover(args) => block_on(failover::run(args)),
        Scenario::Reseed(args) => reseed::run(args),
        Scenario::Scale(args) => scale::run(args),
        Scenario::Memory(args) => block_on(memory::run(args)),
        Scenario::Catchup(args) => block_on(catchup::run(args)),
        Scenario::ReplicaSeed(args) => block_on(replica_seed::run(args)),
        Scenario::Reads(args) => block_on(reads::run(args)),
        Scenario::CatchupGrow(args) => block_on(catchup::grow(args)),
    }
}
