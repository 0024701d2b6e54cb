//! AWS Signature Version 4 signing of an ECS request (header form).
//!
//! Every header present is signed (always `host` and `x-amz-date`), the body
//! hash covers the exact bytes sent, and the scope is `DATE/REGION/ecs`.

use berth_sigv4::{Request, Scope};

pub use berth_sigv4::format_amz_date;

/// What a signature covers besides the headers: method, path, query, body.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Without the `?`; pairs must already be URI-encoded.
    pub query: &'a str,
    pub body: &'a [u8],
}

/// Signs a request: returns the `x-amz-date` value and the `Authorization`
/// header for `headers` (lower-case names, plus `host`), which must be
/// exactly the headers sent besides those two.
pub fn sign(
    target: Target<'_>,
    headers: &[(String, String)],
    access_key_id: &str,
    secret: &str,
    region: &str,
    now_epoch: i64,
) -> (String, String) {
    let Target {
        method,
        path,
        query,
        body,
    } = target;
    let amz_date = format_amz_date(now_epoch);
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), berth_sigv4::canonical_header_value(v)))
        .collect();
    all.push(("x-amz-date".into(), amz_date.clone()));
    all.sort();
    let req = Request {
        method,
        path,
        query,
        headers: &all,
        body,
    };
    let scope = Scope {
        date: amz_date[..8].to_string(),
        region: region.to_string(),
        service: "ecs".to_string(),
    };
    let signature = berth_sigv4::signature(&req, &amz_date, &scope, secret);
    let auth = berth_sigv4::authorization(access_key_id, &scope, &req.signed_headers(), &signature);
    (amz_date, auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &[u8]) -> Target<'_> {
        Target {
            method: "POST",
            path: "/",
            query: "",
            body,
        }
    }

    #[test]
    fn signs_every_header_and_the_body() {
        let headers = vec![
            ("Host".to_string(), "127.0.0.1:8080".to_string()),
            (
                "X-Amz-Target".to_string(),
                "AmazonEC2ContainerServiceV20141113.ListClusters".to_string(),
            ),
        ];
        let (date, auth) = sign(post(b"{}"), &headers, "AKID", "secret", "eu-west-1", 1_440_938_160);
        assert_eq!(date, "20150830T123600Z");
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20150830/eu-west-1/ecs/aws4_request, "));
        assert!(auth.contains("SignedHeaders=host;x-amz-date;x-amz-target, "), "{auth}");
        let (_, other) = sign(post(b"{ }"), &headers, "AKID", "secret", "eu-west-1", 1_440_938_160);
        assert_ne!(auth, other, "the body is covered");
    }
}
