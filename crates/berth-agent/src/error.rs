//! The agent's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the agent or a driver.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The image is not on this host and there is no registry to pull from.
    /// The message starts with ECS's error name so it reads the same in
    /// `stoppedReason`.
    #[error(
        "CannotPullContainerError: image '{image}' is not present on this host and Berth does not pull from \
         registries; load it first (docker load -i FILE, or the driver's load_image)"
    )]
    ImageNotFound { image: String },
    /// A container the driver does not know (never created, or removed).
    #[error("container '{0}' not found")]
    NotFound(String),
    /// The driver could not create or start a container.
    #[error("CannotStartContainerError: container '{container}': {reason}")]
    CannotStart { container: String, reason: String },
    /// The Docker engine answered with an error.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// No Docker engine to talk to.
    #[error("docker engine unavailable: {0}")]
    DockerUnavailable(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A file in the agent's state dir could not be read back.
    #[error("state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    /// The server broke the protocol or the connection failed.
    #[error("agent stream: {0}")]
    Stream(String),
    /// The server refused this agent (wrong token, unknown cluster).
    #[error("server refused the agent: {code}: {message}")]
    Refused { code: String, message: String },
    /// TLS to the server cannot work as configured (an untrusted
    /// certificate, plain HTTP on one side and TLS on the other).
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting or request that cannot be acted on.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl AgentError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The agent's result type.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
