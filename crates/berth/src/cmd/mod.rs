//! One module per top-level verb.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod dev;
pub mod lb;
pub mod sched;
pub mod server;
pub mod store;
pub mod tls;
