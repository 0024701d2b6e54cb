//! The crate's one error type.

/// Errors of the load balancer and its load generator.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The configuration is inconsistent (unknown group, repeated name...).
    #[error("invalid load balancer config: {0}")]
    Config(String),
    /// A socket or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A URL could not be used.
    #[error("invalid URL '{url}': {reason}")]
    Url { url: String, reason: String },
    /// A helper process (backend, nginx) misbehaved.
    #[error("{0}")]
    Process(String),
}

impl LbError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LbError::Io {
            context: context.into(),
            source,
        }
    }
}
