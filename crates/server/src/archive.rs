//! The node's job archive: finished jobs retired out of memory (see
//! `coopr_state::machine::retire`), kept in `raft/archive.redb` and served to
//! `GET /clusters/{id}/plans[/{job}]`.
//!
//! ```text
//!  DcStateMachine::apply ──State::take_archive_effects──► JobArchive::apply_effects
//!                                                          (one durable write per batch)
//!  DcStateMachine::snapshot ──► JobArchive::view() (a read transaction, under the state lock),
//!                               then write_parts(view): chunks of ≤ ~4 MiB, in key order
//!  DcStateMachine::restore  ──► JobArchive::clear, then restore_part(each archive part)
//! ```
//!
//! The archive is part of the DC log's snapshots, so it needs no durability of its own: after
//! a restart it is replaced by the snapshot's copy and the log after the snapshot retires the
//! same jobs again. A node that catches up from a snapshot gets the whole history with it.
//! Runs are stored as deflated JSON (about a fifth of their JSON).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use coopr_engine::job::JobRun;
use coopr_raft::PartSink;
use coopr_state::{archive_part, ArchiveEffect};
use coopr_store::{Archive, ArchiveKey, ArchiveView, StoreError};
use coopr_types::{ClusterId, JobId};

/// Bytes of one archive part of a snapshot (a chunk of the archive's export): big enough that
/// a million retired jobs make a few hundred parts, small enough to hold one in memory.
pub const ARCHIVE_PART_BYTES: usize = 4 << 20;

/// Why the archive could not be written into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveExportError {
    /// The archive could not be read.
    #[error("job archive: {0}")]
    Store(#[from] StoreError),
    /// The snapshot could not be written.
    #[error("snapshot: {0}")]
    Sink(std::io::Error),
}

/// Deflated JSON of a run.
pub fn encode_run(run: &JobRun) -> Vec<u8> {
    let json = serde_json::to_vec(run).expect("runs serialize to JSON");
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(&json)
        .and_then(|()| encoder.finish())
        .expect("deflating into memory cannot fail")
}

/// A run from [`encode_run`]'s bytes.
pub fn decode_run(bytes: &[u8]) -> anyhow::Result<JobRun> {
    let mut json = Vec::new();
    flate2::read::DeflateDecoder::new(bytes).read_to_end(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

/// The archive of one node's DC-log state machine.
pub struct JobArchive {
    store: Arc<Archive>,
    shard_count: u32,
    /// Runs a failed write could not store: kept here (and in snapshots) until a write works.
    unwritten: Mutex<BTreeMap<ArchiveKey, Vec<u8>>>,
}

impl JobArchive {
    pub fn new(store: Arc<Archive>, shard_count: u32) -> JobArchive {
        JobArchive {
            store,
            shard_count,
            unwritten: Mutex::new(BTreeMap::new()),
        }
    }

    fn unwritten(&self) -> std::sync::MutexGuard<'_, BTreeMap<ArchiveKey, Vec<u8>>> {
        self.unwritten
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Carries out the effects of applied entries, in order: one durable write per run of
    /// retirements, the drops of shards between them.
    pub fn apply_effects(&self, effects: Vec<ArchiveEffect>) {
        if effects.is_empty() {
            return;
        }
        let mut puts: Vec<(ArchiveKey, Vec<u8>)> = Vec::new();
        for effect in effects {
            match effect {
                ArchiveEffect::Retired(run) => {
                    let id = run.job.id;
                    puts.push(((id.cluster.0, id.seq), encode_run(&run)));
                }
                ArchiveEffect::DropShard(shard) => {
                    self.write(std::mem::take(&mut puts), None);
                    let drop =
                        move |cluster: u64| ClusterId(cluster).shard(self.shard_count) == shard;
                    self.unwritten().retain(|(cluster, _), _| !drop(*cluster));
                    self.write(Vec::new(), Some(&drop));
                }
            }
        }
        self.write(puts, None);
    }

    fn write(&self, puts: Vec<(ArchiveKey, Vec<u8>)>, drop: Option<&dyn Fn(u64) -> bool>) {
        let mut unwritten = self.unwritten();
        let mut all: Vec<(ArchiveKey, Vec<u8>)> =
            std::mem::take(&mut *unwritten).into_iter().collect();
        all.extend(puts);
        if all.is_empty() && drop.is_none() {
            return;
        }
        if let Err(e) = self.store.write(&all, drop) {
            metrics::counter!("coopr_archive_write_errors_total").increment(1);
            tracing::error!(error = %e, jobs = all.len(), "cannot write the job archive; the jobs stay in memory until a write works");
            unwritten.extend(all);
        } else {
            metrics::counter!("coopr_archive_jobs_written_total").increment(all.len() as u64);
        }
    }

    /// A retired job's run, if this node's archive holds it.
    pub fn job(&self, id: JobId) -> anyhow::Result<Option<JobRun>> {
        let key = (id.cluster.0, id.seq);
        let bytes = match self.unwritten().get(&key) {
            Some(bytes) => Some(bytes.clone()),
            None => self.store.get(key)?,
        };
        bytes.map(|b| decode_run(&b)).transpose()
    }

    /// Every retired job of `cluster`, by sequence number.
    pub fn jobs_of(&self, cluster: ClusterId) -> anyhow::Result<Vec<JobRun>> {
        let mut found: BTreeMap<u32, Vec<u8>> =
            self.store.of_cluster(cluster.0)?.into_iter().collect();
        found.extend(
            self.unwritten()
                .range((cluster.0, 0)..=(cluster.0, u32::MAX))
                .map(|((_, seq), bytes)| (*seq, bytes.clone())),
        );
        found.values().map(|b| decode_run(b)).collect()
    }

    /// The archive as it is now, for a snapshot to write out later ([`JobArchive::write_parts`])
    /// while retirements go on.
    pub fn view(&self) -> Result<ArchiveView, StoreError> {
        let mut unwritten = self.unwritten();
        if !unwritten.is_empty() {
            // Writing them now puts them in the view; if that fails too, so does the view.
            let rows: Vec<_> = unwritten.iter().map(|(k, v)| (*k, v.clone())).collect();
            self.store.write(&rows, None)?;
            unwritten.clear();
        }
        drop(unwritten);
        self.store.view()
    }

    /// Writes a view of the archive as snapshot parts, one at a time: chunks of its export of
    /// about [`ARCHIVE_PART_BYTES`], in key order, numbered by [`archive_part`].
    pub fn write_parts(view: &ArchiveView, out: PartSink<'_>) -> Result<(), ArchiveExportError> {
        let mut chunk = 0;
        view.export_chunks::<ArchiveExportError>(ARCHIVE_PART_BYTES, |bytes| {
            out(archive_part(chunk), bytes).map_err(ArchiveExportError::Sink)?;
            chunk += 1;
            Ok(())
        })
    }

    /// Empties the archive (and what it could not write), before a snapshot's parts refill it.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.unwritten().clear();
        self.store.clear()
    }

    /// Adds the jobs of one archive part of a snapshot; returns how many.
    pub fn restore_part(&self, bytes: &[u8]) -> Result<usize, StoreError> {
        self.store.insert_export(bytes)
    }
}
