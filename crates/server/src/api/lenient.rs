//! Coopr's lenient input: integers may come as numeric strings (`"numMachines":"5"`), booleans
//! as `"true"`/`"false"` (`"restart":"false"`), and names match `[A-Za-z0-9_.-]+` (under 256
//! characters).

use super::error::ApiError;

// Gson's leniency, shared with the catalog types: integers and booleans may come as strings.
pub use coopr_types::lenient::{
    bool_opt as lenient_bool_opt, boolean as lenient_bool, u32 as lenient_u32,
    u64_opt as lenient_u64_opt,
};

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
