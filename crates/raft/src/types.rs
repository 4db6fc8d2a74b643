//! The one openraft type configuration shared by every Raft group of coopr, and the opaque
//! payload it carries.
//!
//! ```text
//!   TypeConfig { D = Payload, R = Payload, NodeId = u64, Node = BasicNode { addr },
//!                SnapshotData = Cursor<Vec<u8>>, AsyncRuntime = tokio }
//! ```
//!
//! Entries and responses are opaque bytes, so the DC log and the placement group (and any
//! later group) use the same type configuration and differ only in their [`crate::StateMachine`].

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

openraft::declare_raft_types!(
    /// The openraft type configuration of every coopr Raft group.
    pub TypeConfig:
        D = Payload,
        R = Payload,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
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
}
