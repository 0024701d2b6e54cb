//! AWS Signature Version 4 verification (header form, HMAC-SHA256).
//!
//! The server recomputes the signature from the request it received: its own
//! hash of the body, the signed headers as they arrived (`host` with the
//! port), and the secret of the access key named in the credential scope.

use berth_sigv4::{Request, Scope};
use http::HeaderMap;

pub use berth_sigv4::{format_amz_date, parse_amz_date, signatures_match};

use crate::error::ApiError;

/// Most a request's `X-Amz-Date` may differ from the server clock.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub access_key_id: String,
    /// `YYYYMMDD` of the scope.
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl AuthHeader {
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

fn incomplete(msg: impl Into<String>) -> ApiError {
    ApiError::IncompleteSignature(msg.into())
}

/// Parses the `Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<AuthHeader, ApiError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| incomplete("Authorization header requires the AWS4-HMAC-SHA256 algorithm"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Authorization header requires 'Credential' parameter"))?;
    let signed = signed.ok_or_else(|| incomplete("Authorization header requires 'SignedHeaders' parameter"))?;
    let signature = signature.ok_or_else(|| incomplete("Authorization header requires 'Signature' parameter"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = parts.as_slice() else {
        return Err(incomplete(format!(
            "Credential '{credential}' must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    };
    if *terminator != "aws4_request" || date.len() != 8 || key.is_empty() || region.is_empty() {
        return Err(incomplete(format!(
            "Credential '{credential}' must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    }
    let signed_headers: Vec<String> = signed.split(';').map(|h| h.trim().to_ascii_lowercase()).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(incomplete("SignedHeaders must include 'host'"));
    }
    Ok(AuthHeader {
        access_key_id: key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

fn canonical_header_value(headers: &HeaderMap, name: &str) -> Result<String, ApiError> {
    let mut values = Vec::new();
    for v in headers.get_all(name) {
        let s = v
            .to_str()
            .map_err(|_| incomplete(format!("signed header '{name}' is not ASCII")))?;
        values.push(berth_sigv4::canonical_header_value(s));
    }
    if values.is_empty() {
        return Err(incomplete(format!(
            "signed header '{name}' is missing from the request"
        )));
    }
    Ok(values.join(","))
}

/// The request parts a signature covers.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The hex signature of `req` for `auth`'s scope, signed headers and `secret`.
pub fn compute_signature(
    req: &SignedRequest<'_>,
    auth: &AuthHeader,
    amz_date: &str,
    secret: &str,
) -> Result<String, ApiError> {
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        signed.push((name.clone(), canonical_header_value(req.headers, name)?));
    }
    let request = Request {
        method: req.method,
        path: req.path,
        query: req.query,
        headers: &signed,
        body: req.body,
    };
    let scope = Scope {
        date: auth.date.clone(),
        region: auth.region.clone(),
        service: auth.service.clone(),
    };
    Ok(berth_sigv4::signature(&request, amz_date, &scope, secret))
}

/// Checks `X-Amz-Date` against the scope date and the clock; returns it.
pub fn check_date<'h>(headers: &'h HeaderMap, auth: &AuthHeader, now_epoch: i64) -> Result<&'h str, ApiError> {
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| incomplete("Authorization requires the X-Amz-Date header"))?;
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| incomplete(format!("X-Amz-Date '{amz_date}' is not in YYYYMMDDTHHMMSSZ form")))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(ApiError::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from X-Amz-Date ({amz_date})"
        )));
    }
    if (when - now_epoch).abs() > MAX_SKEW_SECS {
        return Err(ApiError::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier or later than {} (more than 15 minutes off)",
            format_amz_date(now_epoch)
        )));
    }
    Ok(amz_date)
}

/// Signs a request the way botocore does (for tests and the bench).
pub fn sign(
    headers: &mut HeaderMap,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    region: &str,
    now_epoch: i64,
) -> Result<(), ApiError> {
    let amz_date = format_amz_date(now_epoch);
    let bad = |_| ApiError::Client("cannot build a header".into());
    headers.insert("x-amz-date", amz_date.parse().map_err(bad)?);
    let mut signed: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
    signed.sort();
    signed.dedup();
    let auth = AuthHeader {
        access_key_id: access_key_id.to_string(),
        date: amz_date[..8].to_string(),
        region: region.to_string(),
        service: "ecs".to_string(),
        signed_headers: signed,
        signature: String::new(),
    };
    let req = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers,
        body,
    };
    let sig = compute_signature(&req, &auth, &amz_date, secret)?;
    let scope = Scope {
        date: auth.date.clone(),
        region: auth.region.clone(),
        service: auth.service.clone(),
    };
    let value = berth_sigv4::authorization(access_key_id, &scope, &auth.signed_headers.join(";"), &sig);
    headers.insert("authorization", value.parse().map_err(bad)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The get-vanilla case of the AWS SigV4 test suite.
    #[test]
    fn matches_the_published_vanilla_example() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .unwrap();
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let sig = compute_signature(
            &req,
            &auth,
            "20150830T123600Z",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        )
        .unwrap();
        assert_eq!(sig, auth.signature);
    }

    #[test]
    fn malformed_headers_are_incomplete() {
        for bad in [
            "Basic abc",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AK/2015/us-east-1/ecs/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/ecs/aws4_request, SignedHeaders=x-amz-date, Signature=00",
        ] {
            let e = parse_authorization(bad).unwrap_err();
            assert_eq!(e.error_type(), "IncompleteSignatureException", "{bad}");
        }
    }
}
