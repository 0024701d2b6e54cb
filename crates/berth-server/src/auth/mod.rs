//! Who is calling, and from which region: SigV4 verification against the
//! credentials file, or `--no-auth` for development.

mod credentials;
pub mod sigv4;

use std::time::{SystemTime, UNIX_EPOCH};

pub use credentials::{AccessKey, Credentials};

use crate::error::ApiError;
use sigv4::SignedRequest;

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Development only: every request is accepted, signed or not; a signed
    /// request's credential scope still selects the region.
    Disabled,
    /// Every request must carry a valid SigV4 signature by one of these keys.
    SigV4(Credentials),
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub region: String,
    pub access_key_id: Option<String>,
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Auth {
    /// Verifies `req` for `operation`; the region comes from the credential
    /// scope, else `default_region`.
    pub fn check(&self, req: &SignedRequest<'_>, operation: &str, default_region: &str) -> Result<Caller, ApiError> {
        let header = req.headers.get(http::header::AUTHORIZATION).map(|v| v.to_str());
        match self {
            Auth::Disabled => {
                let region = header
                    .and_then(Result::ok)
                    .and_then(|h| sigv4::parse_authorization(h).ok())
                    .map_or_else(|| default_region.to_string(), |a| a.region);
                Ok(Caller {
                    region,
                    access_key_id: None,
                })
            }
            Auth::SigV4(creds) => {
                let value = match header {
                    None => {
                        return Err(ApiError::IncompleteSignature(
                            "Request is missing the Authorization header (Missing Authentication Token)".into(),
                        ));
                    }
                    Some(Err(_)) => {
                        return Err(ApiError::IncompleteSignature(
                            "Authorization header is not ASCII".into(),
                        ));
                    }
                    Some(Ok(v)) => v,
                };
                let auth = sigv4::parse_authorization(value)?;
                if auth.service != "ecs" {
                    return Err(ApiError::InvalidSignature(format!(
                        "Credential should be scoped to correct service: 'ecs', not '{}'",
                        auth.service
                    )));
                }
                let key = creds.get(&auth.access_key_id).ok_or(ApiError::UnrecognizedClient)?;
                let amz_date = sigv4::check_date(req.headers, &auth, now_epoch())?;
                let expected = sigv4::compute_signature(req, &auth, amz_date, &key.secret_access_key)?;
                if !sigv4::signatures_match(&expected, &auth.signature) {
                    return Err(ApiError::InvalidSignature(
                        "The request signature we calculated does not match the signature you provided. \
                         Check your AWS Secret Access Key and signing method."
                            .into(),
                    ));
                }
                if !key.allows(operation) {
                    return Err(ApiError::AccessDenied(format!(
                        "access key {} (profile {}) is not allowed to call {operation}",
                        key.access_key_id, key.profile
                    )));
                }
                Ok(Caller {
                    region: auth.region,
                    access_key_id: Some(key.access_key_id.clone()),
                })
            }
        }
    }
}
