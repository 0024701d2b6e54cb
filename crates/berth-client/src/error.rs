//! The one error type of the client.

/// Why a call, a settings lookup or a compose translation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an ECS error (`__type` and `message`).
    #[error("{kind}: {message}")]
    Api { kind: String, message: String, status: u16 },
    /// Nothing answered at the endpoint (refused, unreachable, timed out).
    #[error("cannot reach {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    /// The server answered with something that is not an ECS response.
    #[error("unexpected response from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    /// The server does not have a Berth extension the caller needs.
    #[error("not available yet: this server has no {what} (tried {endpoint})")]
    NotAvailable { what: String, endpoint: String },
    /// Flags, environment, config or credentials file are wrong.
    #[error("{0}")]
    Settings(String),
    /// A compose file or a task definition file cannot be used; `location`
    /// is `FILE:LINE:COLUMN` when known.
    #[error("{location}: {message}")]
    Input { location: String, message: String },
}

impl ClientError {
    /// The ECS error type (`ClusterNotFoundException`, ...), for API errors.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}
