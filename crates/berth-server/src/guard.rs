//! Authentication for routes that live outside this crate (the service
//! plan of `berth-control`, the discovery listing of `berth-dns`): they
//! only answer, this layer checks the caller first and refuses with the
//! API's error shape, so those crates need not know about SigV4.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::Auth;
use crate::auth::sigv4::SignedRequest;
use crate::error::ApiError;
use crate::server::error_response;

/// The largest body these routes accept (they take small JSON requests).
const MAX_BODY: usize = 1024 * 1024;

/// `router` behind `auth`: each request is verified as `operation` before
/// it reaches the route; a refused one gets the API's status and
/// `{__type, message}` body.
pub fn authenticated(router: Router, auth: Auth, default_region: String, operation: &'static str) -> Router {
    let st = Arc::new((auth, default_region));
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let st = st.clone();
        async move {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                let e = ApiError::Client(format!("request body is larger than {MAX_BODY} bytes"));
                return error_response(&e, "");
            };
            let signed = SignedRequest {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                headers: &parts.headers,
                body: &bytes,
            };
            if let Err(e) = st.0.check(&signed, operation, &st.1) {
                return error_response(&e, "");
            }
            let resp: Response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
            resp
        }
    }))
}
