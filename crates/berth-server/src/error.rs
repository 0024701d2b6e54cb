//! The one error type of the API: each variant is an ECS error shape with its
//! HTTP status. Deterministic failures are 4xx; only real faults are 5xx,
//! because clients retry 5xx.

use berth_model::ValidationError;
use berth_store::StoreError;
use http::StatusCode;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The caller did something wrong that no member names.
    #[error("{0}")]
    Client(String),
    /// A request member is missing, of the wrong type or out of range.
    #[error("{0}")]
    InvalidParameter(String),
    /// The body is not JSON (or not a JSON object).
    #[error("{0}")]
    Serialization(String),
    /// `X-Amz-Target` names no operation this server has.
    #[error("{0}")]
    UnknownOperation(String),
    #[error("Cluster not found.")]
    ClusterNotFound,
    #[error("Service not found.")]
    ServiceNotFound,
    #[error("Service was not ACTIVE.")]
    ServiceNotActive,
    #[error("The cluster cannot be deleted while container instances are active or draining.")]
    ClusterContainsContainerInstances,
    #[error("The cluster cannot be deleted while services are active.")]
    ClusterContainsServices,
    #[error("The cluster cannot be deleted while tasks are active.")]
    ClusterContainsTasks,
    #[error("{0}")]
    ResourceNotFound(String),
    /// An attribute's target does not exist.
    #[error("{0}")]
    TargetNotFound(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    UnsupportedFeature(String),
    /// No such access key.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// The signature does not match, or the request time is off.
    #[error("{0}")]
    InvalidSignature(String),
    /// The Authorization header or a signed part is missing or malformed.
    #[error("{0}")]
    IncompleteSignature(String),
    /// A real fault: the store failed, or a write kept conflicting.
    #[error("{0}")]
    Server(String),
}

impl ApiError {
    /// The ECS error shape name (`__type`).
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Client(_) => "ClientException",
            ApiError::InvalidParameter(_) => "InvalidParameterException",
            ApiError::Serialization(_) => "SerializationException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
            ApiError::ClusterNotFound => "ClusterNotFoundException",
            ApiError::ServiceNotFound => "ServiceNotFoundException",
            ApiError::ServiceNotActive => "ServiceNotActiveException",
            ApiError::ClusterContainsContainerInstances => "ClusterContainsContainerInstancesException",
            ApiError::ClusterContainsServices => "ClusterContainsServicesException",
            ApiError::ClusterContainsTasks => "ClusterContainsTasksException",
            ApiError::ResourceNotFound(_) => "ResourceNotFoundException",
            ApiError::TargetNotFound(_) => "TargetNotFoundException",
            ApiError::AccessDenied(_) => "AccessDeniedException",
            ApiError::UnsupportedFeature(_) => "UnsupportedFeatureException",
            ApiError::UnrecognizedClient => "UnrecognizedClientException",
            ApiError::InvalidSignature(_) => "InvalidSignatureException",
            ApiError::IncompleteSignature(_) => "IncompleteSignatureException",
            ApiError::Server(_) => "ServerException",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnrecognizedClient | ApiError::InvalidSignature(_) | ApiError::IncompleteSignature(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        ApiError::InvalidParameter(format!("{field}: {reason}"))
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::InvalidParameter(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidRequest(m) => ApiError::Server(format!("store rejected a request: {m}")),
            // A read at a revision the journal no longer keeps: a pagination
            // token (or resume point) older than the retention window.
            StoreError::Compacted { requested, compacted } => ApiError::InvalidParameter(format!(
                "nextToken: revision {requested} is no longer kept (history before {compacted} was compacted); start the listing again without nextToken"
            )),
            other => ApiError::Server(format!("store: {other}")),
        }
    }
}

impl From<berth_records::RecordsError> for ApiError {
    fn from(e: berth_records::RecordsError) -> Self {
        use berth_records::RecordsError;
        match e {
            RecordsError::Store(e) => e.into(),
            RecordsError::Conflict { what, .. } => {
                ApiError::Server(format!("{what}: gave up after repeated write conflicts; retry"))
            }
            other => ApiError::Server(other.to_string()),
        }
    }
}

/// Errors of the server as a whole (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bench: {0}")]
    Bench(String),
}
