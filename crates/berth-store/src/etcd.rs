//! The etcd backend: the [`Store`] trait mapped natively onto etcd v3 —
//! ranges onto Range, transactions onto Txn (compares and both branches),
//! watches onto one Watch per call (regrouped into one batch per revision),
//! leases onto etcd leases. Used when several Berth servers share state.

use std::collections::VecDeque;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare as ECompare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};

use crate::types::{
    CmpOp, CmpTarget, Event, EventKind, KeyValue, LeaseId, Op, OpResponse, RangeRequest, RangeResponse, Revision,
    StoreError, TxnRequest, TxnResponse, WatchBatch, prefix_end,
};
use crate::{Store, WatchStream};

/// A handle on an etcd cluster; clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn map_err(e: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::LeaseKeepAliveError(msg) = &e
        && msg.contains("not found")
    {
        return StoreError::LeaseNotFound(0);
    }
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested: 0,
                compacted: 0,
            };
        }
        if msg.contains("future revision") {
            return StoreError::FutureRevision {
                requested: 0,
                current: 0,
            };
        }
        if msg.contains("requested lease not found") {
            return StoreError::LeaseNotFound(0);
        }
        if msg.contains("duplicate key") {
            return StoreError::InvalidRequest(msg.to_string());
        }
    }
    StoreError::Backend {
        backend: "etcd",
        message: e.to_string(),
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(kv.key()),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn cmp_op(op: CmpOp) -> CompareOp {
    match op {
        CmpOp::Equal => CompareOp::Equal,
        CmpOp::NotEqual => CompareOp::NotEqual,
        CmpOp::Less => CompareOp::Less,
        CmpOp::Greater => CompareOp::Greater,
    }
}

fn txn_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            TxnOp::put(key.to_vec(), value.to_vec(), opts)
        }
        Op::Delete { key } => TxnOp::delete(key.to_vec(), None),
        Op::DeletePrefix { prefix } => {
            let end = prefix_end(prefix);
            let opts = if end.is_empty() {
                DeleteOptions::new().with_from_key()
            } else {
                DeleteOptions::new().with_range(end)
            };
            TxnOp::delete(prefix.to_vec(), Some(opts))
        }
        Op::Get { key } => TxnOp::get(key.to_vec(), None),
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None).await.map_err(map_err)?;
        let store = EtcdStore { client };
        // Fail now, not on first use, when nothing answers.
        store.revision().await?;
        Ok(store)
    }

    async fn current_and_check(&self, at: Revision) -> Result<(), StoreError> {
        let current = self.revision().await?;
        if at > current {
            return Err(StoreError::FutureRevision { requested: at, current });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(vec![0u8], Some(GetOptions::new().with_count_only()))
            .await
            .map_err(map_err)?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.client.kv_client().get(key.to_vec(), None).await.map_err(map_err)?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        if req.revision != 0 {
            self.current_and_check(req.revision).await?;
        }
        let end = prefix_end(&req.prefix);
        let mut opts = if end.is_empty() {
            GetOptions::new().with_from_key()
        } else {
            GetOptions::new().with_range(end)
        };
        if req.limit > 0 {
            opts = opts.with_limit(req.limit as i64);
        }
        if req.revision > 0 {
            opts = opts.with_revision(req.revision);
        }
        if req.count_only {
            opts = opts.with_count_only();
        }
        let resp = self
            .client
            .kv_client()
            .get(req.start_key(), Some(opts))
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Compacted { .. } => StoreError::Compacted {
                    requested: req.revision,
                    compacted: 0,
                },
                other => other,
            })?;
        let kvs: Vec<KeyValue> = resp.kvs().iter().map(convert).collect();
        let revision = if req.revision > 0 {
            req.revision
        } else {
            resp.header().map_or(0, |h| h.revision())
        };
        Ok(RangeResponse {
            count: if req.count_only {
                resp.count().max(0) as u64
            } else {
                kvs.len() as u64
            },
            more: resp.more(),
            kvs,
            revision,
        })
    }

    async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, StoreError> {
        txn.check()?;
        let compares: Vec<ECompare> = txn
            .compares
            .iter()
            .map(|c| {
                let key = c.key.to_vec();
                let op = cmp_op(c.op);
                match &c.target {
                    CmpTarget::ModRevision(r) => ECompare::mod_revision(key, op, *r),
                    CmpTarget::CreateRevision(r) => ECompare::create_revision(key, op, *r),
                    CmpTarget::Version(v) => ECompare::version(key, op, *v),
                    CmpTarget::Value(v) => ECompare::value(key, op, v.to_vec()),
                }
            })
            .collect();
        let etxn = Txn::new()
            .when(compares)
            .and_then(txn.success.iter().map(txn_op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(txn_op).collect::<Vec<_>>());
        let resp = self.client.kv_client().txn(etxn).await.map_err(map_err)?;
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Put(_) => OpResponse::Put,
                TxnOpResponse::Delete(d) => OpResponse::Delete(d.deleted().max(0) as u64),
                TxnOpResponse::Get(g) => OpResponse::Get(g.kvs().first().map(convert)),
                TxnOpResponse::Txn(_) => OpResponse::Put,
            })
            .collect();
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
            responses,
        })
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError> {
        if from_revision < 0 {
            return Err(StoreError::InvalidRequest(format!(
                "negative watch revision {from_revision}"
            )));
        }
        if from_revision > 0 {
            // Report compaction now rather than as a cancelled stream later.
            let current = self.revision().await?;
            if from_revision <= current {
                self.range(RangeRequest::prefix(prefix).at(from_revision).limit(1).count_only())
                    .await?;
            }
        }
        let end = prefix_end(prefix);
        let mut opts = if end.is_empty() {
            WatchOptions::new().with_from_key()
        } else {
            WatchOptions::new().with_range(end)
        };
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        let stream = self
            .client
            .watch_client()
            .watch(prefix.to_vec(), Some(opts))
            .await
            .map_err(map_err)?;
        struct State {
            stream: etcd_client::WatchStream,
            pending: VecDeque<WatchBatch>,
            done: bool,
        }
        let state = State {
            stream,
            pending: VecDeque::new(),
            done: false,
        };
        let out = futures::stream::unfold(state, move |mut st| async move {
            loop {
                if let Some(b) = st.pending.pop_front() {
                    return Some((Ok(b), st));
                }
                if st.done {
                    return None;
                }
                match st.stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            st.done = true;
                            let err = if resp.compact_revision() > 0 {
                                StoreError::Compacted {
                                    requested: from_revision,
                                    compacted: resp.compact_revision(),
                                }
                            } else {
                                StoreError::Backend {
                                    backend: "etcd",
                                    message: format!("watch cancelled: {}", resp.cancel_reason()),
                                }
                            };
                            return Some((Err(err), st));
                        }
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            let kind = match e.event_type() {
                                EventType::Put => EventKind::Put,
                                EventType::Delete => EventKind::Delete,
                            };
                            let event = Event { kind, kv: convert(kv) };
                            let rev = event.kv.mod_revision;
                            match st.pending.back_mut() {
                                Some(b) if b.revision == rev => b.events.push(event),
                                _ => st.pending.push_back(WatchBatch {
                                    revision: rev,
                                    events: vec![event],
                                }),
                            }
                        }
                    }
                    Ok(None) => {
                        st.done = true;
                        return Some((Err(StoreError::Closed), st));
                    }
                    Err(e) => {
                        st.done = true;
                        return Some((Err(map_err(e)), st));
                    }
                }
            }
        });
        Ok(Box::pin(out))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        self.client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Compacted { .. } => StoreError::Compacted {
                    requested: revision,
                    compacted: 0,
                },
                other => other,
            })?;
        Ok(())
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        if ttl_secs <= 0 {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL must be positive, got {ttl_secs}"
            )));
        }
        let resp = self
            .client
            .lease_client()
            .grant(ttl_secs, None)
            .await
            .map_err(map_err)?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError> {
        let not_found = |e| match map_err(e) {
            StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
            other => other,
        };
        let (mut keeper, mut stream) = self.client.lease_client().keep_alive(lease).await.map_err(not_found)?;
        keeper.keep_alive().await.map_err(not_found)?;
        match stream.message().await.map_err(not_found)? {
            Some(resp) if resp.ttl() > 0 => Ok(resp.ttl()),
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.client
            .lease_client()
            .revoke(lease)
            .await
            .map_err(|e| match map_err(e) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
                other => other,
            })?;
        Ok(())
    }
}
