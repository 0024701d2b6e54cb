//! The one error type of the crate.

/// Everything the engine can refuse. Placement itself never fails: a task
/// that cannot be placed is reported in [`crate::Plan::unplaced`] with reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// A `memberOf` expression that does not parse; `position` is the byte
    /// offset into the expression where `expected` was wanted.
    #[error("invalid expression at position {position}: expected {expected}, found {found}")]
    Parse {
        position: usize,
        expected: &'static str,
        found: String,
    },
    /// A placement strategy this engine does not know (`type` / `field`).
    #[error(
        "invalid placement strategy '{0}': expected binpack[(cpu|memory)], spread(attribute:NAME|instanceId) or random"
    )]
    Strategy(String),
    /// A placement constraint type other than `distinctInstance` / `memberOf`.
    #[error("invalid placement constraint '{0}': expected distinctInstance or memberOf(EXPRESSION)")]
    Constraint(String),
    /// A release or lookup named an instance the snapshot does not hold.
    #[error("unknown container instance '{0}'")]
    UnknownInstance(String),
    /// A workload file or generator spec that is malformed.
    #[error("invalid workload: {0}")]
    Workload(String),
}
