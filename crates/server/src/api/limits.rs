//! Bounds on every value a client sends. Each limit is a named constant checked at the API
//! with a 400 that names it, so that a value the API accepts can always be stored, replicated
//! and read again everywhere: records and snapshot parts travel as JSON, whose decoder stops at
//! 128 levels of nesting (`serde_json`'s recursion limit), and every task's view and result
//! carries its cluster's values, so one oversized value would make every one of those bodies
//! too large to deliver.
//!
//! ```text
//!   body ── parse_json: depth <= MAX_JSON_DEPTH, every string <= MAX_STRING_BYTES
//!     └── handler: names, descriptions, dnsSuffix, hosts <= their own limits;
//!                  free-form values (config, providerFields, catalog entities, task
//!                  results) <= MAX_VALUE_BYTES serialized
//! ```

use serde::Serialize;

use super::error::ApiError;

/// Deepest nesting of arrays and objects in a request body (the body itself is level 1).
/// A record wraps a value in fewer than 16 more levels (entry, command, record, pull answer,
/// snapshot part), which leaves a wide margin under the decoder's limit of 128.
pub const MAX_JSON_DEPTH: usize = 32;
/// Longest string anywhere in a request body, in encoded bytes: a backstop above the captured
/// output of a task (64 KiB plus a marker), for strings no tighter limit covers.
pub const MAX_STRING_BYTES: usize = 128 * 1024;
/// Largest free-form JSON value (a cluster's config, provider fields, a catalog entity, a task's
/// result), serialized. Such values are copied into every task of their cluster.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest description (clusters, tenants).
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Longest DNS name (RFC 1035): a dnsSuffix, a host, a hostname.
pub const MAX_DNS_NAME_BYTES: usize = 253;
/// Longest user or tenant ID in the identity headers.
pub const MAX_ID_BYTES: usize = 255;
/// Longest list of names in a request (services of a cluster, properties asked for).
pub const MAX_LIST_LEN: usize = 1000;

/// Code of a body nested deeper than [`MAX_JSON_DEPTH`].
pub const JSON_TOO_DEEP: &str = "json_too_deep";
/// Code of a value over its size limit.
pub const VALUE_TOO_LARGE: &str = "value_too_large";

/// Checks the nesting depth and the string lengths of a JSON text before it is parsed, so
/// that no parser (ours or one of a later layer) ever recurses into it. The text need not be
/// valid JSON: the parser reports what else is wrong.
pub fn check_json_shape(bytes: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_bytes = 0usize;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                continue;
            }
            string_bytes += 1;
            if string_bytes > MAX_STRING_BYTES {
                return Err(too_large("a string in the body", MAX_STRING_BYTES));
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_bytes = 0;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_request(
                        JSON_TOO_DEEP,
                        format!(
                            "the body nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)"
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn too_large(field: &str, max: usize) -> ApiError {
    ApiError::bad_request(
        VALUE_TOO_LARGE,
        format!("{field} is longer than {max} bytes"),
    )
}

/// Checks the length of a string field.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(too_large(field, max));
    }
    Ok(())
}

/// Checks an optional string field.
pub fn text_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| text(field, v, max))
}

/// Checks the serialized size of a free-form value against [`MAX_VALUE_BYTES`].
pub fn value(field: &str, value: &impl Serialize) -> Result<(), ApiError> {
    let mut counter = ByteCounter(0);
    // Serializing a parsed JSON value cannot fail; were it to, the value is refused.
    if serde_json::to_writer(&mut counter, value).is_err() || counter.0 > MAX_VALUE_BYTES {
        return Err(ApiError::bad_request(
            VALUE_TOO_LARGE,
            format!("{field} is larger than {MAX_VALUE_BYTES} bytes serialized (MAX_VALUE_BYTES)"),
        ));
    }
    Ok(())
}

/// Checks the length of a list field.
pub fn list<T>(field: &str, items: &[T]) -> Result<(), ApiError> {
    if items.len() > MAX_LIST_LEN {
        return Err(ApiError::bad_request(
            VALUE_TOO_LARGE,
            format!("{field} has more than {MAX_LIST_LEN} entries (MAX_LIST_LEN)"),
        ));
    }
    Ok(())
}

/// Counts bytes without keeping them.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > MAX_VALUE_BYTES {
            // Stops serializing a value already known to be too large.
            return Err(std::io::Error::other("too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_is_bounded_at_the_limit() {
        assert!(check_json_shape(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let err = check_json_shape(nested(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(
            (err.status.as_u16(), err.code.as_str()),
            (400, JSON_TOO_DEEP)
        );
        // Brackets inside strings do not count, escaped quotes do not end strings.
        let quoted = format!(r#"{{"a":"\"{}"}}"#, "[".repeat(100));
        assert!(check_json_shape(quoted.as_bytes()).is_ok());
    }

    #[test]
    fn strings_are_bounded_at_the_limit() {
        let at = format!("\"{}\"", "x".repeat(MAX_STRING_BYTES));
        assert!(check_json_shape(at.as_bytes()).is_ok());
        let over = format!("\"{}\"", "x".repeat(MAX_STRING_BYTES + 1));
        let err = check_json_shape(over.as_bytes()).unwrap_err();
        assert_eq!(err.code, VALUE_TOO_LARGE);
    }

    #[test]
    fn values_are_bounded_at_the_limit() {
        // A JSON string of n characters serializes to n + 2 bytes.
        let at = serde_json::Value::from("x".repeat(MAX_VALUE_BYTES - 2));
        assert!(value("config", &at).is_ok());
        let over = serde_json::Value::from("x".repeat(MAX_VALUE_BYTES - 1));
        assert_eq!(value("config", &over).unwrap_err().code, VALUE_TOO_LARGE);
        assert!(text("dnsSuffix", &"x".repeat(253), MAX_DNS_NAME_BYTES).is_ok());
        assert!(text("dnsSuffix", &"x".repeat(254), MAX_DNS_NAME_BYTES).is_err());
    }
}
