//! Coopr's lenient scalars. Coopr parsed its JSON with Gson, whose number adapters also read a
//! string holding a number (`"min": "1"`) and whose boolean adapter also reads a string
//! (`"restart": "false"`); Coopr's own docs send both. These deserializers accept the same,
//! and nothing looser: a string that is not a number (or `true`/`false`, in any case) is an
//! error, where Gson would have failed or silently read `false`.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A non-negative integer given as a JSON number or as a string of digits.
pub fn u64_from(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean given as a JSON boolean or as the string `true` or `false` (any case).
pub fn bool_from(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    u64_from(&v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a non-negative integer, got {v}"))
        })
}

/// Like [`u32`], for an upper bound whose `null` means "no bound" (`u32::MAX`).
pub fn u32_or_unbounded<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(u32::MAX);
    }
    u64_from(&v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a non-negative integer, got {v}"))
        })
}

pub fn u64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    u64_from(&v).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("expected a non-negative integer, got {v}"))
    })
}

/// A boolean (`null` reads as `false`, as an absent field does).
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(false);
    }
    bool_from(&v)
        .ok_or_else(|| serde::de::Error::custom(format!("expected true or false, got {v}")))
}

pub fn bool_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    bool_from(&v)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("expected true or false, got {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_as_coopr_read_them() {
        let numbers = [
            (json!(1), Some(1)),
            (json!("1"), Some(1)),
            (json!(" 42 "), Some(42)),
            (json!("-1"), None),
            (json!(-1), None),
            (json!("1.5"), None),
            (json!("x"), None),
            (json!(true), None),
            (json!(null), None),
        ];
        for (value, expected) in numbers {
            assert_eq!(u64_from(&value), expected, "{value}");
        }
        let booleans = [
            (json!(true), Some(true)),
            (json!("false"), Some(false)),
            (json!("TRUE"), Some(true)),
            (json!("yes"), None),
            (json!(0), None),
            (json!(""), None),
        ];
        for (value, expected) in booleans {
            assert_eq!(bool_from(&value), expected, "{value}");
        }
    }
}
