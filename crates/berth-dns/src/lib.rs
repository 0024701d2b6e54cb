//! Service discovery for Berth: a DNS server and an HTTP listing that answer,
//! for every service `SERVICE` in cluster `NAMESPACE`, where its RUNNING and
//! healthy tasks are — `A` records (host IPs), `SRV` records (dynamic host
//! ports, one per task, target `TASKID.SERVICE.NAMESPACE`) and
//! `GET /v1/discovery/{cluster}/{service}`.
//!
//! It follows the store the way the controllers do: one consistent load of
//! tasks, services and container instances, then every change from the
//! watch, republishing its table after each batch (changes show within
//! milliseconds; no polling). It only reads the store: it must not write
//! records, serve the ECS API, decide placement or talk to agents.
//!
//! # Layout
//! - `table`: which tasks serve traffic and at which IP and port.
//! - `follow`: [`Discovery`], the watch-fed table.
//! - `wire`: the DNS answers, the UDP/TCP listeners and a small client.
//! - `http`: the JSON listing.

mod follow;
mod http;
mod table;
mod wire;

pub use follow::Discovery;
pub use hickory_proto::op::ResponseCode;
pub use hickory_proto::rr::RecordType;
pub use http::{DISCOVERY_PATH, router};
pub use table::{Endpoint, HOST_IP_ATTRIBUTE, ServiceEndpoints, Table, TaskDefInfo, build_cluster, serving};
pub use wire::{Answer, DnsConfig, DnsServer, Reply, TTL, Transport, answer, query};

/// Errors from discovery.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error(transparent)]
    Records(#[from] berth_records::RecordsError),
    #[error("{0}")]
    Io(String),
    #[error("DNS message: {0}")]
    Proto(String),
}
