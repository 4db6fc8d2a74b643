//! Coopr's lenient input: integers may come as numeric strings (`"numMachines":"5"`), and names
//! match `[A-Za-z0-9_.-]+` (under 256 characters).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::ApiError;

fn number_from(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    number_from(&v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a non-negative integer, got {v}"))
        })
}

pub fn lenient_u64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    number_from(&v).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("expected a non-negative integer, got {v}"))
    })
}

pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub fn valid_name(field: &str, name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!("{field} must match [A-Za-z0-9_.-]+ and be under 256 characters"),
        ))
    }
}
