//! `reseed`: what re-seeding one shard's copy from a snapshot of the owner's costs, without the
//! network: a shard of N ACTIVE one-machine `lamp` clusters (created and driven through
//! `State::apply`, as the owner's DC log would), then the steps a re-seed takes:
//!
//! ```text
//!  owner: State::seed_of(shard) -> JSON -> deflate        (POST /internal/replication/seed)
//!  replica: inflate -> JSON -> DC-log entry (encode_entry) -> State::apply(SeedReplica)
//! ```
//!
//! The DC log then replicates that one entry to the replica DC's other nodes (a Raft append of
//! the entry's size) and the link carries the deflated answer: add those at the link's speed.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use coopr_state::{encode_entry, Command, Entry, Outcome, ProvisionerInfo, State, TaskResult};
use coopr_types::ShardId;

use crate::plan::Catalog;
use crate::stats::ms;

#[derive(clap::Args, Debug)]
pub struct ReseedArgs {
    /// Clusters in the shard.
    #[arg(long, default_value_t = 10_000)]
    clusters: u32,
}

pub(crate) fn apply(
    state: &mut State,
    now_ms: &mut u64,
    command: Command,
) -> anyhow::Result<Outcome> {
    *now_ms += 1;
    state
        .apply(&Entry {
            now_ms: *now_ms,
            idempotency_key: None,
            fence: None,
            command,
        })
        .map_err(|e| anyhow!("{e}"))
}

/// A state whose shard 0 holds `clusters` ACTIVE one-machine clusters.
pub(crate) fn owner(catalog: &Catalog, clusters: u32) -> anyhow::Result<State> {
    build(catalog, catalog.state()?, clusters, 1, None)
}

/// Adds `clusters` ACTIVE one-machine clusters to `state`, cluster i in shard i mod `shards`.
/// With `upkeep = Some(n)`, every n clusters it does what a DC in steady state does: trims
/// every outbox (all replicas caught up) and retires every finished job
/// (`job_retention_ms = 0`), so the state holds what a long-lived DC holds.
pub(crate) fn build(
    catalog: &Catalog,
    state: State,
    clusters: u32,
    shards: u32,
    upkeep: Option<u32>,
) -> anyhow::Result<State> {
    let generate = Generate {
        clusters,
        shards,
        upkeep,
        shard_stride: 1,
        shard_offset: 0,
        tenant: None,
        start_ms: 1_700_000_000_000,
    };
    build_into(catalog, state, &generate, |_| ())
}

/// What [`build_into`] adds to a state.
pub(crate) struct Generate<'a> {
    pub clusters: u32,
    pub shards: u32,
    pub upkeep: Option<u32>,
    /// Only every `shard_stride`-th shard from `shard_offset` on gets clusters (the shards one
    /// DC of several owns); cluster i goes to the (i mod their number)-th of them.
    pub shard_stride: u32,
    pub shard_offset: u32,
    /// The tenant of the clusters (it must be in the state); `None`: the catalog's own.
    pub tenant: Option<&'a str>,
    /// The wall time of the first entry; every entry is 1 ms after the one before.
    pub start_ms: u64,
}

/// [`build`] as `generate` says, handing the retired jobs to `archive` (as a node's job
/// archive takes them).
pub(crate) fn build_into(
    catalog: &Catalog,
    mut state: State,
    generate: &Generate<'_>,
    mut archive: impl FnMut(coopr_state::ArchiveEffect),
) -> anyhow::Result<State> {
    let Generate {
        clusters,
        shards,
        upkeep,
        ..
    } = *generate;
    let stride = generate.shard_stride.max(1);
    let used = (shards.saturating_sub(generate.shard_offset))
        .div_ceil(stride)
        .max(1);
    let mut now = generate.start_ms;
    apply(
        &mut state,
        &mut now,
        Command::RegisterProvisioner {
            info: ProvisionerInfo {
                id: "p".into(),
                host: "127.0.0.1".into(),
                port: 1,
                capacity_total: 1,
            },
        },
    )?;
    let entry = catalog.create_entry(&catalog.layout(1)?);
    let Command::CreateCluster { mut spec, .. } = entry.command else {
        bail!("the catalog's create entry is not a create");
    };
    if let Some(tenant) = generate.tenant {
        spec.tenant = tenant.to_string();
    }
    for i in 0..clusters {
        if upkeep.is_some_and(|n| i > 0 && i % n == 0) {
            trim_outboxes(&mut state, &mut now)?;
            retire_jobs(&mut state, &mut now, &mut archive)?;
        }
        let create = Command::CreateCluster {
            shard: ShardId(generate.shard_offset + (i % used) * stride),
            spec: spec.clone(),
        };
        apply(&mut state, &mut now, create)?;
        // Drive the cluster's tasks to the end (one at a time, as one worker would).
        loop {
            let taken = apply(
                &mut state,
                &mut now,
                Command::TakeTask {
                    provisioner_id: "p".into(),
                    worker_id: "w".into(),
                    tenant_id: None,
                    timeout_ms: 60_000,
                    shards: None,
                },
            )?;
            let Outcome::TaskTaken { task: Some(task) } = taken else {
                break;
            };
            let result = TaskResult {
                provisioner_id: "p".into(),
                worker_id: "w".into(),
                task,
                status: 0,
                stdout: String::new(),
                stderr: String::new(),
                hostname: Some(format!("host-{}", task.job.cluster)),
                ipaddresses: None,
                result: serde_json::Map::from_iter([(
                    "providerid".into(),
                    serde_json::Value::from(format!("i-{task}")),
                )]),
            };
            apply(&mut state, &mut now, Command::FinishTask(Box::new(result)))?;
        }
    }
    if upkeep.is_some() {
        trim_outboxes(&mut state, &mut now)?;
        retire_jobs(&mut state, &mut now, &mut archive)?;
    }
    Ok(state)
}

/// Trims every outbox through its last record (every replica caught up).
pub(crate) fn trim_outboxes(state: &mut State, now: &mut u64) -> anyhow::Result<()> {
    for (shard, through_seq) in state.outbox_ends(1) {
        apply(state, now, Command::TrimOutbox { shard, through_seq })?;
    }
    Ok(())
}

/// Retires every finished job, in entries of at most `MAX_RETIRE_BATCH`, handing each archive
/// effect to `archive`.
pub(crate) fn retire_jobs(
    state: &mut State,
    now: &mut u64,
    mut archive: impl FnMut(coopr_state::ArchiveEffect),
) -> anyhow::Result<()> {
    let last = state.shard_count() - 1;
    loop {
        let jobs = state.retirable_jobs(0..=last, u64::MAX, coopr_state::MAX_RETIRE_BATCH);
        if jobs.is_empty() {
            return Ok(());
        }
        apply(state, now, Command::RetireJobs { jobs })?;
        state
            .take_archive_effects()
            .into_iter()
            .for_each(&mut archive);
    }
}

pub fn run(args: ReseedArgs) -> anyhow::Result<()> {
    let catalog = Catalog::load(1)?;
    let built = Instant::now();
    let owner = owner(&catalog, args.clusters)?;
    eprintln!(
        "-- {} clusters built in {:?}",
        args.clusters,
        built.elapsed()
    );
    let shard = ShardId(0);
    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<Duration> {
        let started = Instant::now();
        f()?;
        Ok(started.elapsed())
    };
    let mut seed = None;
    let take = time(&mut || {
        seed = owner.seed_of(shard, "owner");
        Ok(())
    })?;
    let seed = seed.ok_or_else(|| anyhow!("no seed"))?;
    let mut json = Vec::new();
    let encode = time(&mut || {
        json = serde_json::to_vec(&seed)?;
        Ok(())
    })?;
    let mut deflated = Vec::new();
    let deflate = time(&mut || {
        deflated = coopr_server::replication::deflate(&json);
        Ok(())
    })?;
    let mut inflated = Vec::new();
    let inflate = time(&mut || {
        inflated = coopr_server::replication::inflate(&deflated)?;
        Ok(())
    })?;
    let mut decoded = None;
    let decode = time(&mut || {
        // As the replica's puller decodes a seed: equal templates decoded once.
        let _memo = coopr_types::shared_json::Memo::open();
        decoded = Some(serde_json::from_slice::<coopr_state::ReplicaShard>(
            &inflated,
        )?);
        Ok(())
    })?;
    let decoded = decoded.ok_or_else(|| anyhow!("no seed decoded"))?;
    let entry = Entry {
        now_ms: 1,
        idempotency_key: None,
        fence: None,
        command: Command::SeedReplica {
            seed: Box::new(decoded),
        },
    };
    let mut bytes = Vec::new();
    let log = time(&mut || {
        bytes = encode_entry(&entry);
        Ok(())
    })?;
    let mut replica = catalog.state()?;
    let applied = time(&mut || {
        replica.apply(&entry).map_err(|e| anyhow!("{e}"))?;
        Ok(())
    })?;
    let Some(copy) = replica.replica(shard) else {
        bail!("no copy after the seed");
    };
    // Both views stay alive until the adoption is timed: dropped here, their allocations (as
    // large as the shard) would be sorted into malloc's bins by the adoption's first
    // allocations, and timed with it (they made 87 % of its time).
    let owner_view = owner.replicated_view(shard);
    let copy_view = copy.view();
    if copy_view != owner_view {
        bail!("the seeded copy differs from the owner's shard");
    }
    // The owner dies: the replica adopts the shard (one DC-log entry, applied under the state's
    // write lock) and writes it from then on; its data projects to the same view.
    let after = copy.watermark;
    let adopt = Entry {
        now_ms: 2,
        idempotency_key: None,
        fence: None,
        command: Command::AdoptShard {
            shard,
            epoch: after.epoch + 1,
            after,
        },
    };
    let adopted = time(&mut || {
        replica.apply(&adopt).map_err(|e| anyhow!("{e}"))?;
        Ok(())
    })?;
    if replica.replicated_view(shard) != owner_view {
        bail!("the adopted shard differs from the owner's");
    }
    drop(copy_view);
    let total = take + encode + deflate + inflate + decode + log + applied;
    println!(
        "\nRe-seed of one shard of {} ACTIVE one-machine clusters (no network)\n",
        args.clusters
    );
    println!("| step | time | size |");
    println!("| --- | ---: | ---: |");
    let kib = |n: usize| format!("{:.0} KiB", n as f64 / 1024.0);
    println!(
        "| owner: snapshot the shard (`seed_of`) | {} ms | |",
        ms(take)
    );
    println!(
        "| owner: encode JSON | {} ms | {} |",
        ms(encode),
        kib(json.len())
    );
    println!(
        "| owner: deflate | {} ms | {} |",
        ms(deflate),
        kib(deflated.len())
    );
    println!("| replica: inflate | {} ms | |", ms(inflate));
    println!("| replica: decode JSON | {} ms | |", ms(decode));
    println!(
        "| replica: encode the DC-log entry | {} ms | {} |",
        ms(log),
        kib(bytes.len())
    );
    println!("| replica: apply `SeedReplica` | {} ms | |", ms(applied));
    println!("| total CPU | {} ms | |", ms(total));
    println!(
        "| then, the owner dead: replica: apply `AdoptShard` | {} ms | |",
        ms(adopted)
    );
    Ok(())
}
