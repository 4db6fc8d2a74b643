//! Checksummed encodings of the values stored on disk.
//!
//! ```text
//! entry: crc32(index ‖ bytes) (4, LE) ‖ bytes
//! part:  crc32(part ‖ last_index ‖ bytes) (4, LE) ‖ last_index (8, LE) ‖ bytes
//! meta:  u64 (8, LE)
//! app meta: crc32(key ‖ bytes) (4, LE) ‖ bytes
//! ```
//!
//! Decoders never panic: a short value or a checksum mismatch is an error.

use crate::{LogIndex, PartId, SnapshotPart, StoreError};

const CRC_LEN: usize = 4;
const INDEX_LEN: usize = 8;

fn entry_crc(index: LogIndex, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

fn part_crc(part: PartId, last_index: LogIndex, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&part.to_le_bytes());
    hasher.update(&last_index.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

pub(crate) fn encode_entry(index: LogIndex, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + bytes.len());
    value.extend_from_slice(&entry_crc(index, bytes).to_le_bytes());
    value.extend_from_slice(bytes);
    value
}

pub(crate) fn decode_entry(index: LogIndex, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let (crc, bytes) = split_u32(value).ok_or(StoreError::Corrupt { index })?;
    if crc != entry_crc(index, bytes) {
        return Err(StoreError::Corrupt { index });
    }
    Ok(bytes.to_vec())
}

pub(crate) fn encode_part(part: PartId, last_index: LogIndex, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + INDEX_LEN + bytes.len());
    value.extend_from_slice(&part_crc(part, last_index, bytes).to_le_bytes());
    value.extend_from_slice(&last_index.to_le_bytes());
    value.extend_from_slice(bytes);
    value
}

pub(crate) fn decode_part(part: PartId, value: &[u8]) -> Result<SnapshotPart, StoreError> {
    let corrupt = StoreError::CorruptPart { part };
    let (crc, rest) = split_u32(value).ok_or(corrupt)?;
    let (last_index, bytes) = split_u64(rest).ok_or(StoreError::CorruptPart { part })?;
    if crc != part_crc(part, last_index, bytes) {
        return Err(StoreError::CorruptPart { part });
    }
    Ok(SnapshotPart {
        last_index,
        bytes: bytes.to_vec(),
    })
}

fn app_meta_crc(key: &str, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key.as_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

pub(crate) fn encode_app_meta(key: &str, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + bytes.len());
    value.extend_from_slice(&app_meta_crc(key, bytes).to_le_bytes());
    value.extend_from_slice(bytes);
    value
}

pub(crate) fn decode_app_meta(key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let corrupt = || StoreError::CorruptMetadata {
        key: "app_meta",
        reason: format!("value of `{key}` fails its checksum or is truncated"),
    };
    let (crc, bytes) = split_u32(value).ok_or_else(corrupt)?;
    if crc != app_meta_crc(key, bytes) {
        return Err(corrupt());
    }
    Ok(bytes.to_vec())
}

pub(crate) fn encode_u64(value: u64) -> [u8; INDEX_LEN] {
    value.to_le_bytes()
}

pub(crate) fn decode_u64(key: &'static str, value: &[u8]) -> Result<u64, StoreError> {
    match split_u64(value) {
        Some((number, [])) => Ok(number),
        _ => Err(StoreError::CorruptMetadata {
            key,
            reason: format!("expected 8 bytes, found {}", value.len()),
        }),
    }
}

fn split_u32(value: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = value.split_first_chunk::<CRC_LEN>()?;
    Some((u32::from_le_bytes(*head), rest))
}

fn split_u64(value: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = value.split_first_chunk::<INDEX_LEN>()?;
    Some((u64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every truncation and every single-bit flip of an encoded entry or part is detected.
    #[test]
    fn damaged_values_are_reported_not_decoded() {
        let entry = encode_entry(7, b"hello");
        assert_eq!(decode_entry(7, &entry).unwrap(), b"hello");
        assert!(matches!(
            decode_entry(8, &entry),
            Err(StoreError::Corrupt { index: 8 })
        ));
        for len in 0..entry.len() {
            assert!(
                decode_entry(7, &entry[..len]).is_err(),
                "truncated to {len}"
            );
        }
        for bit in 0..entry.len() * 8 {
            let mut damaged = entry.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_entry(7, &damaged).is_err(), "bit {bit} flipped");
        }

        let part = encode_part(3, 42, b"shard state");
        assert_eq!(decode_part(3, &part).unwrap().last_index, 42);
        assert!(decode_part(4, &part).is_err());
        for len in 0..part.len() {
            assert!(decode_part(3, &part[..len]).is_err(), "truncated to {len}");
        }
        for bit in 0..part.len() * 8 {
            let mut damaged = part.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_part(3, &damaged).is_err(), "bit {bit} flipped");
        }

        let meta = encode_app_meta("vote", b"v");
        assert_eq!(decode_app_meta("vote", &meta).unwrap(), b"v");
        assert!(decode_app_meta("other", &meta).is_err());
        for len in 0..meta.len() {
            assert!(decode_app_meta("vote", &meta[..len]).is_err());
        }

        assert_eq!(decode_u64("k", &encode_u64(9)).unwrap(), 9);
        assert!(decode_u64("k", &[1, 2, 3]).is_err());
        assert!(decode_u64("k", &[0; 9]).is_err());
    }
}
