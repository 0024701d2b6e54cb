//! Validation with errors that name the field and the reason.

/// A validation failure: the member at fault (a dotted path such as
/// `containerDefinitions[0].memory`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field with its parent path.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Implemented by every model type that arrives from outside.
pub trait Validate {
    fn validate(&self) -> Result<(), ValidationError>;
}

/// ECS names: 1-255 letters, digits, hyphens and underscores.
pub(crate) fn check_name(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || value.len() > 255 {
        return Err(ValidationError::new(field, "must be 1 to 255 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(ValidationError::new(
            field,
            format!("'{value}' contains '{c}'; only letters, digits, hyphens and underscores are allowed"),
        ));
    }
    Ok(())
}

pub(crate) fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), ValidationError> {
    if value < min || value > max {
        return Err(ValidationError::new(
            field,
            format!("{value} is out of range; must be between {min} and {max}"),
        ));
    }
    Ok(())
}
