use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("malformed {what}: {value:?}")]
    Malformed { what: &'static str, value: String },
}
