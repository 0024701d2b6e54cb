//! The client side of Berth's ECS JSON API, as the `berth` CLI uses it: one
//! [`Client`] that sends AWS JSON 1.1 requests (`POST /` with
//! `X-Amz-Target`) signed with SigV4, [`Settings`] resolved from flags,
//! environment variables, the AWS shared-credentials file and Berth's own
//! config file, and the pure docker-compose → task definition translation
//! ([`compose::translate`]).
//!
//! This crate speaks the wire protocol only: it must not depend on the
//! server, store or scheduler crates, so it works against any ECS-compatible
//! endpoint and can never reach around the API.
//!
//! # Layout
//! - `client`: the HTTP calls and error decoding.
//! - `sigv4`: request signing (header form, HMAC-SHA256).
//! - `settings`: where the endpoint, region and keys come from.
//! - [`compose`]: docker-compose files to task definitions (no I/O).

mod client;
pub mod compose;
mod error;
mod settings;
mod sigv4;

pub use client::{CA_CERT_ENV, Client, TARGET_PREFIX, get_agent_json};
pub use error::ClientError;
pub use settings::{
    ConfigFile, DEFAULT_ENDPOINT, DEFAULT_REGION, Keys, Overrides, Settings, config_path, parse_credentials,
};
pub use sigv4::{Target, format_amz_date, sign};
