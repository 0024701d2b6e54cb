//! The records layer's one error type.

/// Errors reading or writing records.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// A stored record is not the JSON its key promises.
    #[error("record {key} is not valid: {reason}")]
    Decode { key: String, reason: String },
    /// A record could not be turned into JSON (a bug, not bad input).
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// Every attempt of a compare-and-swap lost to another writer.
    #[error("too many conflicting writers while {what} ({attempts} attempts)")]
    Conflict { what: String, attempts: usize },
}
