//! The one compare-and-swap loop. Every writer reads, decides, and commits
//! a transaction that compares what it read; when another writer got there
//! first the commit fails and the writer reads and decides again, up to a
//! [`Budget`] of attempts.
//!
//! - [`update`]: one record (and whatever else the decision adds to the
//!   same transaction); index keys of the record follow it ([`Record`]).
//! - [`transact`]: a transaction built from any number of reads.

use std::future::Future;

use berth_model::{
    Cluster, ContainerInstance, LoadBalancerDef, Service, Tag, TargetGroup, TargetHealthRecord, TargetRecord, Task,
    TaskDefinition,
};
use berth_store::{CmpOp, Compare, DynStore, Op, Revision, TxnRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{RecordsError, Stored, codec, keys};

/// How many times a compare-and-swap is attempted before giving up with
/// [`RecordsError::Conflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub usize);

impl Budget {
    /// Enough for every writer of one record to win once under heavy
    /// contention (64 parallel RunTask callers in the API tests).
    pub const DEFAULT: Budget = Budget(64);
}

impl Default for Budget {
    fn default() -> Self {
        Budget::DEFAULT
    }
}

/// What one attempt of [`transact`] decided.
#[derive(Debug)]
pub enum Attempt<R> {
    /// Commit this transaction; when its compares hold, the result is `R`.
    Commit(TxnRequest, R),
    /// Nothing to write: the result is `R`.
    Done(R),
    /// Read again (something this attempt did changed what it reads).
    Retry,
}

/// Runs `attempt` until its transaction commits, it decides there is
/// nothing to write, or `budget` attempts have lost to other writers.
pub async fn transact<R, E, F, Fut>(store: &DynStore, budget: Budget, what: &str, attempt: F) -> Result<R, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<R>, E>>,
    E: From<RecordsError>,
{
    Ok(transact_at(store, budget, what, attempt).await?.0)
}

/// [`transact`], also returning the revision of the commit (`None` when
/// the attempt decided there was nothing to write).
pub async fn transact_at<R, E, F, Fut>(
    store: &DynStore,
    budget: Budget,
    what: &str,
    mut attempt: F,
) -> Result<(R, Option<Revision>), E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<R>, E>>,
    E: From<RecordsError>,
{
    for _ in 0..budget.0 {
        match attempt().await? {
            Attempt::Done(r) => return Ok((r, None)),
            Attempt::Retry => {}
            Attempt::Commit(txn, r) => {
                let resp = store.txn(txn).await.map_err(RecordsError::from)?;
                if resp.succeeded {
                    return Ok((r, Some(resp.revision)));
                }
            }
        }
    }
    Err(RecordsError::Conflict {
        what: what.to_string(),
        attempts: budget.0,
    }
    .into())
}

/// A record type, and the keys that follow it (written in the same
/// transaction as the record).
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// Ops that move the record's side keys from `old` to `new`.
    fn side_ops(_old: Option<&Self>, _new: Option<&Self>) -> Vec<Op> {
        Vec::new()
    }
}

impl Record for Task {
    fn side_ops(old: Option<&Self>, new: Option<&Self>) -> Vec<Op> {
        keys::task_index_ops(old, new)
    }
}

macro_rules! plain_records {
    ($($t:ty),*) => { $(impl Record for $t {})* };
}
plain_records!(
    Cluster,
    ContainerInstance,
    Service,
    TaskDefinition,
    TargetGroup,
    LoadBalancerDef,
    TargetRecord,
    TargetHealthRecord,
    Vec<Tag>,
    serde_json::Value
);

/// What [`update`]'s decision does to the record, plus anything else to
/// compare or write in the same transaction.
#[derive(Debug)]
pub struct Change<T> {
    kind: Kind<T>,
    extra: TxnRequest,
}

#[derive(Debug)]
enum Kind<T> {
    Keep,
    Put(T, Option<Map<String, Value>>),
    Delete,
}

impl<T> Change<T> {
    /// Leave the record as it is (and write nothing).
    pub fn keep() -> Self {
        Change {
            kind: Kind::Keep,
            extra: TxnRequest::new(),
        }
    }

    /// Write `value` (members of the stored JSON it lacks are kept).
    pub fn put(value: T) -> Self {
        Change {
            kind: Kind::Put(value, None),
            extra: TxnRequest::new(),
        }
    }

    /// Write `value` with these members besides its own (for writers that
    /// own members the model does not carry, and may remove them).
    pub fn put_with(value: T, raw: Map<String, Value>) -> Self {
        Change {
            kind: Kind::Put(value, Some(raw)),
            extra: TxnRequest::new(),
        }
    }

    pub fn delete() -> Self {
        Change {
            kind: Kind::Delete,
            extra: TxnRequest::new(),
        }
    }

    /// Also compare `c` in the same transaction.
    pub fn when(mut self, c: Compare) -> Self {
        self.extra = self.extra.when(c);
        self
    }

    /// Also apply `op` in the same transaction.
    pub fn then(mut self, op: Op) -> Self {
        self.extra = self.extra.then(op);
        self
    }
}

/// Reads the record at `key`, asks `decide` what to do with it (`None`:
/// there is no record), and commits that compared on the record's revision,
/// retrying within `budget`. Returns the record as it is afterwards.
pub async fn update<T, E>(
    store: &DynStore,
    key: &str,
    budget: Budget,
    mut decide: impl FnMut(Option<&Stored<T>>) -> Result<Change<T>, E>,
) -> Result<Option<Stored<T>>, E>
where
    T: Record,
    E: From<RecordsError>,
{
    for _ in 0..budget.0 {
        let current = codec::get::<T>(store, key).await?;
        let change = decide(current.as_ref())?;
        let rev = current.as_ref().map_or(0, |s| s.mod_revision);
        let mut txn = change.extra.when(Compare::mod_revision(key, CmpOp::Equal, rev));
        let old = current.as_ref().map(|s| &s.value);
        let after = match change.kind {
            Kind::Keep => return Ok(current),
            Kind::Delete => {
                txn = txn.then(Op::delete(key));
                for op in T::side_ops(old, None) {
                    txn = txn.then(op);
                }
                None
            }
            Kind::Put(value, raw) => {
                let raw = raw.unwrap_or_else(|| current.as_ref().map(|s| s.raw.clone()).unwrap_or_default());
                txn = txn.then(Op::put(key, codec::encode(&value, &raw)?));
                for op in T::side_ops(old, Some(&value)) {
                    txn = txn.then(op);
                }
                Some((value, raw))
            }
        };
        let resp = store.txn(txn).await.map_err(RecordsError::from)?;
        if resp.succeeded {
            return Ok(after.map(|(value, raw)| Stored {
                value,
                raw,
                mod_revision: resp.revision,
            }));
        }
    }
    Err(RecordsError::Conflict {
        what: format!("updating {key}"),
        attempts: budget.0,
    }
    .into())
}

/// The transaction that replaces `old` (as read) with `new` at `key` only
/// if the stored record is still `old`, keeping its extra members and its
/// side keys in step: for writers that decide from a cache and leave the
/// retry to their next pass.
pub fn replace<T: Record>(key: &str, old: &Stored<T>, new: &T) -> Result<TxnRequest, RecordsError> {
    let mut txn = TxnRequest::new()
        .when(Compare::mod_revision(key, CmpOp::Equal, old.mod_revision))
        .then(Op::put(key, codec::encode(new, &old.raw)?));
    for op in T::side_ops(Some(&old.value), Some(new)) {
        txn = txn.then(op);
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_store::MemoryStore;
    use serde_json::json;
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_updates_all_land_and_extras_survive() {
        let store: DynStore = Arc::new(MemoryStore::new());
        store
            .txn(TxnRequest::new().then(Op::put("/k", json!({"n": 0, "keep": "me"}).to_string())))
            .await
            .unwrap();
        let mut joins = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            joins.push(tokio::spawn(async move {
                update::<Value, RecordsError>(&store, "/k", Budget::DEFAULT, |cur| {
                    let mut v = cur.map(|s| s.value.clone()).unwrap_or(json!({"n": 0}));
                    v["n"] = json!(v["n"].as_u64().unwrap_or(0) + 1);
                    Ok(Change::put(v))
                })
                .await
                .unwrap()
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        let after = codec::get::<Value>(&store, "/k").await.unwrap().unwrap();
        assert_eq!(after.value, json!({"n": 8, "keep": "me"}));
    }

    #[tokio::test]
    async fn a_lost_race_past_the_budget_is_a_conflict_naming_the_work() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let r: Result<(), RecordsError> = transact(&store, Budget(3), "testing", || async {
            // Compares something that never holds.
            Ok(Attempt::Commit(
                TxnRequest::new()
                    .when(Compare::exists("/never"))
                    .then(Op::put("/x", "1")),
                (),
            ))
        })
        .await;
        let e = r.unwrap_err();
        assert!(matches!(&e, RecordsError::Conflict { attempts: 3, .. }), "{e}");
        assert!(e.to_string().contains("testing"), "{e}");
        assert!(store.get(b"/x").await.unwrap().is_none());
    }
}
