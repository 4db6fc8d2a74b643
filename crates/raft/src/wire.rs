//! The binary body of the Raft RPCs that carry bulk bytes (append entries, snapshot chunks):
//! a small JSON header, then the bulk bytes as they are.
//!
//! ```text
//!   "CRW1" ‖ header length (4, BE) ‖ header: JSON {"request": .., "attachments": [len, ..]}
//!          ‖ attachment 1 ‖ attachment 2 ‖ ..
//! ```
//!
//! The request in the header has its bulk bytes taken out (a snapshot chunk's `data`, every
//! payload of an append's entries), in the order [`Bulk::take_bulk`] walks them; the receiver
//! puts them back in the same order. In plain JSON a snapshot chunk was an array of numbers
//! (about 3.5 bytes per byte) and a payload a hex string (2 bytes per byte); here every bulk
//! byte costs one byte, so what the sender may build is bounded by [`MAX_RPC_BODY_BYTES`]
//! with room to spare (see there).

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::TypeConfig;

/// The content type of a body in this format; a body of another type is read as plain JSON
/// (what nodes built before this format send).
pub const CONTENT_TYPE: &str = "application/x-coopr-raft";

/// The largest RPC body a node accepts on its Raft routes, and the largest one it sends: 64 MiB.
///
/// What the sender builds: a snapshot chunk is at most [`crate::node::MAX_SNAPSHOT_CHUNK_BYTES`]
/// (32 MiB; default 1 MiB) plus a header of a few hundred bytes; an append carries at most
/// `max_payload_entries` entries (32 by default) and an entry holds either a batch of at most
/// 1 MiB of payloads or a single payload of at most [`crate::node::MAX_PAYLOAD_BYTES`]
/// (32 MiB, e.g. a DC-log entry holding a whole replicated shard snapshot). An append that
/// would exceed the limit is never sent: the sender asks openraft to retry with fewer entries
/// (`PayloadTooLarge`), down to one entry, which always fits.
pub const MAX_RPC_BODY_BYTES: usize = 64 * 1024 * 1024;

const MAGIC: &[u8; 4] = b"CRW1";

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("body does not start with CRW1")]
    Magic,
    #[error("body truncated: {0}")]
    Truncated(&'static str),
    #[error("bad header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("attachments do not match the request: {0}")]
    Attachments(String),
}

/// A request whose bulk bytes travel as attachments.
pub trait Bulk: Serialize + DeserializeOwned {
    /// Takes the bulk bytes out of the request, in a fixed order.
    fn take_bulk(&mut self) -> Vec<Vec<u8>>;
    /// Puts back what [`Bulk::take_bulk`] took, in the same order; fails (without panicking)
    /// when their number does not match the request.
    fn put_bulk(&mut self, bulk: Vec<Vec<u8>>) -> Result<(), WireError>;
}

impl Bulk for InstallSnapshotRequest<TypeConfig> {
    fn take_bulk(&mut self) -> Vec<Vec<u8>> {
        vec![std::mem::take(&mut self.data)]
    }

    fn put_bulk(&mut self, bulk: Vec<Vec<u8>>) -> Result<(), WireError> {
        let [data]: [Vec<u8>; 1] = bulk.try_into().map_err(|bulk: Vec<Vec<u8>>| {
            WireError::Attachments(format!("a snapshot chunk has 1, not {}", bulk.len()))
        })?;
        self.data = data;
        Ok(())
    }
}

impl Bulk for AppendEntriesRequest<TypeConfig> {
    fn take_bulk(&mut self) -> Vec<Vec<u8>> {
        let mut bulk = Vec::new();
        for entry in &mut self.entries {
            if let EntryPayload::Normal(batch) = &mut entry.payload {
                bulk.extend(
                    batch
                        .0
                        .iter_mut()
                        .map(|payload| std::mem::take(&mut payload.0)),
                );
            }
        }
        bulk
    }

    fn put_bulk(&mut self, bulk: Vec<Vec<u8>>) -> Result<(), WireError> {
        let expected: usize = self
            .entries
            .iter()
            .map(|entry| match &entry.payload {
                EntryPayload::Normal(batch) => batch.0.len(),
                _ => 0,
            })
            .sum();
        if expected != bulk.len() {
            return Err(WireError::Attachments(format!(
                "the entries hold {expected} payloads, the body {}",
                bulk.len()
            )));
        }
        let mut bulk = bulk.into_iter();
        for entry in &mut self.entries {
            if let EntryPayload::Normal(batch) = &mut entry.payload {
                for (payload, bytes) in batch.0.iter_mut().zip(&mut bulk) {
                    payload.0 = bytes;
                }
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct HeaderOut<'a, R> {
    request: &'a R,
    attachments: Vec<u64>,
}

#[derive(Deserialize)]
struct HeaderIn<R> {
    request: R,
    attachments: Vec<u64>,
}

/// Encodes `request` (consumed: its bulk bytes move into the body without a copy of the
/// request).
pub fn encode<R: Bulk>(mut request: R) -> Result<Vec<u8>, serde_json::Error> {
    let bulk = request.take_bulk();
    let header = serde_json::to_vec(&HeaderOut {
        request: &request,
        attachments: bulk.iter().map(|bytes| bytes.len() as u64).collect(),
    })?;
    let header_len = u32::try_from(header.len())
        .map_err(|_| serde::ser::Error::custom("header longer than 4 GiB"))?;
    let bulk_len: usize = bulk.iter().map(Vec::len).sum();
    let mut body = Vec::with_capacity(MAGIC.len() + 4 + header.len() + bulk_len);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&header_len.to_be_bytes());
    body.extend_from_slice(&header);
    for bytes in &bulk {
        body.extend_from_slice(bytes);
    }
    Ok(body)
}

/// Decodes a body built by [`encode`]; never panics on malformed input.
pub fn decode<R: Bulk>(body: &[u8]) -> Result<R, WireError> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(WireError::Magic)?;
    let (header_len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(WireError::Truncated("header length"))?;
    let header_len = usize::try_from(u32::from_be_bytes(*header_len))
        .map_err(|_| WireError::Truncated("header"))?;
    if rest.len() < header_len {
        return Err(WireError::Truncated("header"));
    }
    let (header, mut rest) = rest.split_at(header_len);
    let HeaderIn {
        mut request,
        attachments,
    } = serde_json::from_slice::<HeaderIn<R>>(header)?;
    let mut bulk = Vec::with_capacity(attachments.len().min(rest.len() + 1));
    for len in attachments {
        let len = usize::try_from(len).map_err(|_| WireError::Truncated("attachment"))?;
        if rest.len() < len {
            return Err(WireError::Truncated("attachment"));
        }
        let (bytes, tail) = rest.split_at(len);
        bulk.push(bytes.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(WireError::Attachments(format!(
            "{} bytes after the last attachment",
            rest.len()
        )));
    }
    request.put_bulk(bulk)?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, LogId, SnapshotMeta, StoredMembership, Vote};

    use super::*;
    use crate::types::{Batch, Payload};

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    /// The requests implement no `PartialEq`: compare their whole JSON forms.
    fn json(request: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(request).unwrap()
    }

    fn append() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(6)),
            entries: vec![
                Entry {
                    log_id: log_id(7),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(8),
                    payload: EntryPayload::Normal(Batch(vec![
                        Payload(vec![1, 2, 3]),
                        Payload(Vec::new()),
                        Payload(vec![0xff; 1000]),
                    ])),
                },
                Entry {
                    log_id: log_id(9),
                    payload: EntryPayload::Normal(Batch(vec![Payload(b"last".to_vec())])),
                },
            ],
            leader_commit: Some(log_id(7)),
        }
    }

    fn chunk() -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(9)),
                last_membership: StoredMembership::default(),
                snapshot_id: "3-1-9".into(),
            },
            offset: 1 << 20,
            data: (0..=255).cycle().take(70_000).collect(),
            done: false,
        }
    }

    #[test]
    fn append_round_trips_with_one_byte_per_payload_byte() {
        let request = append();
        let body = encode(request.clone()).unwrap();
        // 1007 payload bytes: as hex, they alone would take 2014.
        assert!(body.len() < 1007 + 1000, "body of {} bytes", body.len());
        let decoded: AppendEntriesRequest<TypeConfig> = decode(&body).unwrap();
        assert_eq!(json(&decoded), json(&request));
    }

    #[test]
    fn snapshot_chunk_round_trips_with_one_byte_per_data_byte() {
        let request = chunk();
        let body = encode(request.clone()).unwrap();
        assert!(body.len() < 70_000 + 1000, "body of {} bytes", body.len());
        let decoded: InstallSnapshotRequest<TypeConfig> = decode(&body).unwrap();
        assert_eq!(json(&decoded), json(&request));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let body = encode(append()).unwrap();
        for cut in [0, 3, 6, 20, body.len() - 1] {
            assert!(
                decode::<AppendEntriesRequest<TypeConfig>>(&body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&longer).is_err());
        // A chunk's body read as an append: one attachment, no payloads.
        let chunk_body = encode(chunk()).unwrap();
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&chunk_body).is_err());
        assert!(decode::<InstallSnapshotRequest<TypeConfig>>(&body).is_err());
        // A huge announced header length.
        let mut huge = b"CRW1".to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&huge).is_err());
    }
}
