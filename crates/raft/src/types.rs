//! The one openraft type configuration shared by every Raft group of coopr, and the opaque
//! payloads it carries.
//!
//! ```text
//!   TypeConfig { D = Batch, R = Batch, NodeId = u64, Node = BasicNode { addr },
//!                SnapshotData = a snapshot file (or bytes in memory), AsyncRuntime = tokio }
//!   Batch = [Payload]            one log entry: the writes group-committed together
//!   Payload = bytes              one application command (or the response to one)
//! ```
//!
//! Entries and responses are opaque bytes, so the DC log and the placement group (and any
//! later group) use the same type configuration and differ only in their [`crate::StateMachine`].
//!
//! # Serialized form
//! A [`Batch`] is a sequence of [`Payload`]s; in JSON (stored entries and the HTTP transport)
//! that is an array of lowercase hex strings, e.g. `{"Normal": ["0a1b", "ff"]}` inside an
//! openraft entry. A bare hex string (the format before batching, one payload per entry) still
//! deserializes, as a batch of one, so logs written by earlier builds stay readable. The
//! response of an entry is a [`Batch`] too: one response per payload, in order (empty for
//! blank and membership entries).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

openraft::declare_raft_types!(
    /// The openraft type configuration of every coopr Raft group.
    pub TypeConfig:
        D = Batch,
        R = Batch,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot::SnapshotData,
        AsyncRuntime = crate::runtime::Runtime,
);

/// A Raft node id (unique inside one group).
pub type NodeId = u64;

/// An opaque application payload: a command in a log entry, or the response to one.
///
/// Serialized as a lowercase hex string in human-readable formats (the JSON of the HTTP
/// transport and of the stored entries), so that it costs 2 bytes per byte rather than the
/// 2-4 of a JSON array of numbers, and as plain bytes in binary formats.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Payload(pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        write!(f, "Payload({} bytes: ", self.0.len())?;
        for byte in self.0.iter().take(SHOWN) {
            write!(f, "{byte:02x}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "..")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(bytes)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&hex_encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string or bytes")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Payload, E> {
                hex_decode(value)
                    .map(Payload)
                    .ok_or_else(|| E::custom("invalid hex payload"))
            }
            fn visit_bytes<E: serde::de::Error>(self, value: &[u8]) -> Result<Payload, E> {
                Ok(Payload(value.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, value: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(value))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(Visitor)
        } else {
            deserializer.deserialize_byte_buf(Visitor)
        }
    }
}

/// The payloads of one log entry, applied in order: the writes that [`crate::RaftHandle::write`]
/// group-committed together (see the module doc for the serialized form).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Batch(pub Vec<Payload>);

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.0.iter().map(|payload| payload.0.len()).sum();
        write!(f, "{} payloads, {bytes} bytes", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of payloads (or one hex payload)")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Batch, A::Error> {
                let mut payloads = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(payload) = seq.next_element::<Payload>()? {
                    payloads.push(payload);
                }
                Ok(Batch(payloads))
            }
            // Entries written before batching: one hex payload.
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Batch, E> {
                hex_decode(value)
                    .map(|bytes| Batch(vec![Payload(bytes)]))
                    .ok_or_else(|| E::custom("invalid hex payload"))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Visitor)
        } else {
            deserializer.deserialize_seq(Visitor)
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() & 1 == 1 {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_json_is_hex_and_round_trips() {
        let payload = Payload(vec![0, 1, 0xab, 0xff]);
        let json = serde_json::to_string(&payload).unwrap();
        assert_eq!(json, "\"0001abff\"");
        assert_eq!(serde_json::from_str::<Payload>(&json).unwrap(), payload);
        assert!(serde_json::from_str::<Payload>("\"0g\"").is_err());
        assert!(serde_json::from_str::<Payload>("\"abc\"").is_err());
    }

    #[test]
    fn batch_json_is_an_array_and_reads_the_old_single_payload() {
        let batch = Batch(vec![Payload(vec![1, 0xab]), Payload(Vec::new())]);
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(json, r#"["01ab",""]"#);
        assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), batch);
        assert_eq!(
            serde_json::from_str::<Batch>("\"0001\"").unwrap(),
            Batch(vec![Payload(vec![0, 1])])
        );
        assert!(serde_json::from_str::<Batch>("[\"0g\"]").is_err());
        assert!(serde_json::from_str::<Batch>("7").is_err());
    }
}
