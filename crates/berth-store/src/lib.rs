//! Berth's single source of truth: a transactional journal of byte keys and
//! values, modeled on the cluster-state journal behind Amazon ECS and on etcd.
//!
//! Every committed write gets the next global revision; each key carries its
//! `create_revision`, `mod_revision` and `version`. Writers read, then commit
//! with a [`Txn`] whose compares check that what they read is still current
//! (optimistic concurrency). [`Store::watch`] streams every change exactly
//! once, in revision order, and resumes from any uncompacted revision.
//! Leases give liveness records a TTL.
//!
//! Backends, all behind the [`Store`] trait and all checked by the one
//! [`conformance`] suite: [`MemoryStore`] (tests), [`EmbeddedStore`] (the
//! default: one durable redb file with group commit) and, with the `etcd`
//! feature, `EtcdStore` (a real etcd cluster).
//!
//! This crate knows nothing about clusters, tasks or any other Berth type: it
//! must not depend on `berth-model` or on any crate above it.
//!
//! # Layout
//! - `types`: keys, values, compares, ops, events, errors.
//! - `journal`: the redb-backed engine shared by the memory and embedded
//!   backends (single writer thread, group commit, MVCC history, log).
//! - `watch`: the replay-then-live watch stream shared by those backends.
//! - `files`: the embedded file's name inside a data directory.
//! - `etcd`: the etcd backend.
//! - `conformance`: the suite every backend must pass.

pub mod bench;
mod codec;
pub mod conformance;
mod files;
mod journal;
pub mod testing;
mod types;
mod watch;

#[cfg(feature = "etcd")]
mod etcd;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use files::{DATA_FILE, OLD_DATA_FILE, data_file};
pub use journal::{EmbeddedStore, Journal, MemoryStore};
pub use types::{
    CmpOp, CmpTarget, Compare, Event, EventKind, KeyValue, LeaseId, Op, OpResponse, RangeRequest, RangeResponse,
    Revision, StoreError, TxnRequest, TxnResponse, WatchBatch, prefix_end,
};

#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;

/// A stream of committed changes, one [`WatchBatch`] per revision.
pub type WatchStream = BoxStream<'static, Result<WatchBatch, StoreError>>;

/// The journal every Berth component reads and writes.
///
/// Implementations must be linearizable: a read issued after a write was
/// acknowledged sees it, and a watch delivers each revision once, in order.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's name (`memory`, `embedded`, `etcd`).
    fn backend(&self) -> &'static str;

    /// The current revision (of the last committed write).
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// One key at the current revision.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under a prefix, in key order, optionally at a past revision.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError>;

    /// Atomically: if every compare holds, apply `success`, else `failure`.
    async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, StoreError>;

    /// Every change under `prefix` from `from_revision` on (0: from now).
    /// Fails with [`StoreError::Compacted`] if that revision was compacted.
    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError>;

    /// Forgets history before `revision`; reads and watches below it fail.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// A lease that expires `ttl_secs` after its last keep-alive; keys put
    /// with it are deleted when it expires or is revoked.
    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, StoreError>;

    /// Refreshes a lease; returns its TTL, or [`StoreError::LeaseNotFound`].
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError>;

    /// Ends a lease now, deleting its keys.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
}

/// A shared handle to any backend.
pub type DynStore = Arc<dyn Store>;

/// Convenience calls built on [`Store::txn`].
#[async_trait]
pub trait StoreExt: Store {
    /// Unconditional put; returns the revision it committed at.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<Revision, StoreError> {
        let resp = self.txn(TxnRequest::new().then(Op::put(key, value))).await?;
        Ok(resp.revision)
    }

    /// Unconditional delete; returns the revision (unchanged if nothing was deleted).
    async fn delete(&self, key: &[u8]) -> Result<Revision, StoreError> {
        let resp = self.txn(TxnRequest::new().then(Op::delete(key))).await?;
        Ok(resp.revision)
    }

    /// Put only if the key's mod_revision is still `expected` (0: key absent).
    /// `Ok(Some(rev))` on success, `Ok(None)` on conflict.
    async fn compare_and_put(
        &self,
        key: &[u8],
        expected_mod_revision: Revision,
        value: &[u8],
    ) -> Result<Option<Revision>, StoreError> {
        let resp = self
            .txn(
                TxnRequest::new()
                    .when(Compare::mod_revision(key, CmpOp::Equal, expected_mod_revision))
                    .then(Op::put(key, value)),
            )
            .await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
