//! The placement state machine as a Raft group's application ([`coopr_raft::StateMachine`]).
//!
//! Entries are JSON-serialized [`Command`]s; each response is the JSON of its [`Outcome`]. The
//! snapshot is one part ([`SNAPSHOT_PART`]) holding the whole state as JSON (`null` before the
//! bootstrap): the state is small (a shard map, one lease per DC, a bounded history).

use std::sync::{Mutex, MutexGuard};

use anyhow::Context as _;

use coopr_raft::{collect_parts, PartSink, Parts, TakenSnapshot};

use crate::command::{Command, Outcome, Rejected};
use crate::state::{apply_command, PlacementState};

/// The snapshot part id of the whole placement state.
pub const SNAPSHOT_PART: u32 = 0;

/// The placement group's state, shared between the Raft driver and the readers (routing, the
/// placement leader's decision loop, the admin API).
#[derive(Debug, Default)]
pub struct PlacementMachine {
    state: Mutex<Option<PlacementState>>,
}

impl PlacementMachine {
    pub fn new() -> PlacementMachine {
        PlacementMachine::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<PlacementState>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the current state (`None` before the bootstrap).
    pub fn state(&self) -> Option<PlacementState> {
        self.lock().clone()
    }

    /// Reads the current state without copying it.
    pub fn read<T>(&self, read: impl FnOnce(Option<&PlacementState>) -> T) -> T {
        read(self.lock().as_ref())
    }

    /// Applies one command directly (tests and single-node tools; the server goes through Raft).
    pub fn apply_command(&self, command: &Command) -> Outcome {
        apply_command(&mut self.lock(), command)
    }

    /// Encodes a command as a log entry.
    pub fn encode_command(command: &Command) -> Vec<u8> {
        serde_json::to_vec(command).expect("commands serialize")
    }

    /// Decodes a response of [`coopr_raft::StateMachine::apply`].
    pub fn decode_outcome(response: &[u8]) -> anyhow::Result<Outcome> {
        serde_json::from_slice(response).context("placement response is not an outcome")
    }
}

impl coopr_raft::StateMachine for PlacementMachine {
    fn apply(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let mut state = self.lock();
        entries
            .iter()
            .map(|(_index, bytes)| {
                // A malformed entry is answered, not fatal: every node answers it the same way.
                let outcome = match serde_json::from_slice::<Command>(bytes) {
                    Ok(command) => apply_command(&mut state, &command),
                    Err(error) => Err(Rejected::Malformed {
                        reason: error.to_string(),
                    }),
                };
                serde_json::to_vec(&outcome).expect("outcomes serialize")
            })
            .collect()
    }

    fn snapshot(&self) -> TakenSnapshot {
        // The state is small: encoded under the lock.
        let bytes = serde_json::to_vec(&*self.lock()).expect("the placement state serializes");
        Box::new(move |out: PartSink<'_>| out(SNAPSHOT_PART, &bytes))
    }

    fn restore(&self, parts: Parts<'_>) -> anyhow::Result<()> {
        let parts = collect_parts(parts)?;
        let restored = match parts.get(&SNAPSHOT_PART) {
            None if parts.is_empty() => None,
            None => anyhow::bail!("placement snapshot has no part {SNAPSHOT_PART}"),
            Some(bytes) => serde_json::from_slice::<Option<PlacementState>>(bytes)
                .context("placement snapshot does not decode")?,
        };
        if let Some(extra) = parts.keys().find(|id| **id != SNAPSHOT_PART) {
            anyhow::bail!("placement snapshot has an unexpected part {extra}");
        }
        *self.lock() = restored;
        Ok(())
    }
}
