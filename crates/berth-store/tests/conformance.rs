//! The conformance suite, run against every backend: each check is its own
//! test per backend, on a fresh store.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::sync::Arc;

use berth_store::{DynStore, Journal, conformance};

fn memory() -> (DynStore, Box<dyn std::any::Any>) {
    (Arc::new(Journal::new()), Box::new(()))
}

fn embedded() -> (DynStore, Box<dyn std::any::Any>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Journal::open(dir.path().join("berth.db")).expect("open embedded store");
    (Arc::new(store), Box::new(dir))
}

#[cfg(feature = "etcd")]
async fn etcd() -> (DynStore, Box<dyn std::any::Any>) {
    let server = berth_store::testing::EtcdServer::start().expect("start etcd (scripts/test installs etcd-server)");
    let store = berth_store::EtcdStore::connect(std::slice::from_ref(&server.endpoint))
        .await
        .expect("connect to etcd");
    (Arc::new(store), Box::new(server))
}

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _guard) = super::memory();
                    berth_store::conformance::run(stringify!($check), store).await;
                }
            )*
        }
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _guard) = super::embedded();
                    berth_store::conformance::run(stringify!($check), store).await;
                }
            )*
        }
        #[cfg(feature = "etcd")]
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _guard) = super::etcd().await;
                    berth_store::conformance::run(stringify!($check), store).await;
                }
            )*
        }
    };
}

suite!(
    put_get_and_revisions,
    range_prefix_limit_and_paging,
    range_at_past_revision,
    txn_compares,
    txn_failure_branch_and_gets,
    delete_and_delete_prefix,
    watch_from_revision_in_order,
    watch_live_and_resume,
    watch_many_writes_exactly_once,
    compaction,
    leases_expire_and_revoke,
    last_memory_claim_race,
);

#[test]
fn every_check_is_run_here() {
    let listed = [
        "put_get_and_revisions",
        "range_prefix_limit_and_paging",
        "range_at_past_revision",
        "txn_compares",
        "txn_failure_branch_and_gets",
        "delete_and_delete_prefix",
        "watch_from_revision_in_order",
        "watch_live_and_resume",
        "watch_many_writes_exactly_once",
        "compaction",
        "leases_expire_and_revoke",
        "last_memory_claim_race",
    ];
    let names: Vec<_> = conformance::CHECKS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, listed,
        "a conformance check is missing from this file's suite! list"
    );
}
