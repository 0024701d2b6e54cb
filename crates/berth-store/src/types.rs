//! The journal's vocabulary: key/value records, transactions, events, errors.

use bytes::Bytes;

/// A global, strictly increasing revision. 0 means "none" (absent key, or
/// "start from now" for watches).
pub type Revision = i64;

/// A lease handle. 0 means no lease.
pub type LeaseId = i64;

/// Errors from any backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The requested revision was compacted away.
    #[error("revision {requested} is compacted (oldest available is {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// A revision in the future was requested.
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    /// The lease does not exist or has expired.
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The data file is not a Berth store, is from an unknown format version,
    /// or is damaged. Never "repaired" silently.
    #[error("store file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// The backend failed (I/O, network, server error).
    #[error("{backend} backend: {message}")]
    Backend { backend: &'static str, message: String },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

/// One stored record as seen at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 1 on creation, +1 on every put; reset by delete.
    pub version: i64,
    pub lease: LeaseId,
}

/// Comparison operator for [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    pub(crate) fn holds<T: Ord + ?Sized>(self, actual: &T, expected: &T) -> bool {
        match self {
            CmpOp::Equal => actual == expected,
            CmpOp::NotEqual => actual != expected,
            CmpOp::Less => actual < expected,
            CmpOp::Greater => actual > expected,
        }
    }
}

/// What a compare looks at. An absent key has mod_revision, create_revision
/// and version 0; its value compares as absent (only `NotEqual` holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmpTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(i64),
    Value(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub op: CmpOp,
    pub target: CmpTarget,
}

impl Compare {
    pub fn mod_revision(key: impl AsRef<[u8]>, op: CmpOp, rev: Revision) -> Self {
        Compare {
            key: Bytes::copy_from_slice(key.as_ref()),
            op,
            target: CmpTarget::ModRevision(rev),
        }
    }

    pub fn create_revision(key: impl AsRef<[u8]>, op: CmpOp, rev: Revision) -> Self {
        Compare {
            key: Bytes::copy_from_slice(key.as_ref()),
            op,
            target: CmpTarget::CreateRevision(rev),
        }
    }

    pub fn version(key: impl AsRef<[u8]>, op: CmpOp, version: i64) -> Self {
        Compare {
            key: Bytes::copy_from_slice(key.as_ref()),
            op,
            target: CmpTarget::Version(version),
        }
    }

    pub fn value(key: impl AsRef<[u8]>, op: CmpOp, value: impl AsRef<[u8]>) -> Self {
        Compare {
            key: Bytes::copy_from_slice(key.as_ref()),
            op,
            target: CmpTarget::Value(Bytes::copy_from_slice(value.as_ref())),
        }
    }

    /// The key exists.
    pub fn exists(key: impl AsRef<[u8]>) -> Self {
        Self::version(key, CmpOp::Greater, 0)
    }

    /// The key does not exist.
    pub fn missing(key: impl AsRef<[u8]>) -> Self {
        Self::version(key, CmpOp::Equal, 0)
    }

    /// Evaluates against the key's current record.
    pub(crate) fn evaluate(&self, current: Option<&KeyValue>) -> bool {
        match (&self.target, current) {
            (CmpTarget::ModRevision(r), kv) => self.op.holds(&kv.map_or(0, |k| k.mod_revision), r),
            (CmpTarget::CreateRevision(r), kv) => self.op.holds(&kv.map_or(0, |k| k.create_revision), r),
            (CmpTarget::Version(v), kv) => self.op.holds(&kv.map_or(0, |k| k.version), v),
            (CmpTarget::Value(v), Some(kv)) => self.op.holds(kv.value.as_ref(), v.as_ref()),
            (CmpTarget::Value(_), None) => self.op == CmpOp::NotEqual,
        }
    }
}

/// One operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        lease: LeaseId,
    },
    Delete {
        key: Bytes,
    },
    /// Deletes every key starting with the prefix.
    DeletePrefix {
        prefix: Bytes,
    },
    /// Reads a key as of the transaction's view (before this txn's writes).
    Get {
        key: Bytes,
    },
}

impl Op {
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        Op::Put {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
            lease: 0,
        }
    }

    pub fn put_with_lease(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, lease: LeaseId) -> Self {
        Op::Put {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
            lease,
        }
    }

    pub fn delete(key: impl AsRef<[u8]>) -> Self {
        Op::Delete {
            key: Bytes::copy_from_slice(key.as_ref()),
        }
    }

    pub fn delete_prefix(prefix: impl AsRef<[u8]>) -> Self {
        Op::DeletePrefix {
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
        }
    }

    pub fn get(key: impl AsRef<[u8]>) -> Self {
        Op::Get {
            key: Bytes::copy_from_slice(key.as_ref()),
        }
    }
}

/// A transaction: compares, then the ops of the branch they select.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl TxnRequest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    pub fn otherwise(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }

    /// Rejects transactions a backend cannot apply atomically: a key written
    /// twice in one branch (etcd refuses these too).
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        for branch in [&self.success, &self.failure] {
            let mut seen = std::collections::BTreeSet::new();
            for op in branch {
                if let Op::Put { key, .. } | Op::Delete { key } = op
                    && !seen.insert(key.clone())
                {
                    return Err(StoreError::InvalidRequest(format!(
                        "key {:?} is written twice in one transaction",
                        String::from_utf8_lossy(key)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Result of one op, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    Put,
    /// How many keys were deleted.
    Delete(u64),
    Get(Option<KeyValue>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store revision after this transaction (the new one if it wrote).
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}

/// A range read: keys in `[start, end)`, where by default `start` is the
/// prefix and `end` the end of the prefix. Set `start` past the prefix start
/// to page; `revision` 0 reads the current state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    pub prefix: Bytes,
    /// Resume strictly after this key (for paging).
    pub after: Option<Bytes>,
    /// 0: no limit.
    pub limit: usize,
    pub revision: Revision,
    /// Count only; return no records.
    pub count_only: bool,
}

impl RangeRequest {
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        RangeRequest {
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            ..Default::default()
        }
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    pub fn after(mut self, key: impl AsRef<[u8]>) -> Self {
        self.after = Some(Bytes::copy_from_slice(key.as_ref()));
        self
    }

    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// The first key to include: just after `after`, else the prefix.
    pub(crate) fn start_key(&self) -> Vec<u8> {
        match &self.after {
            Some(k) if k.as_ref() >= self.prefix.as_ref() => {
                let mut s = k.to_vec();
                s.push(0);
                s
            }
            _ => self.prefix.to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// Keys matched in all (from the start key on).
    pub count: u64,
    /// The revision the read was served at.
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv` holds the key, an empty value and the
/// deleting revision as `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// Every change a single revision made under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// The smallest key greater than every key with this prefix (empty: no end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bumps_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
    }

    #[test]
    fn compares_on_absent_keys() {
        assert!(Compare::missing("k").evaluate(None));
        assert!(!Compare::exists("k").evaluate(None));
        assert!(Compare::mod_revision("k", CmpOp::Equal, 0).evaluate(None));
        assert!(!Compare::value("k", CmpOp::Equal, "v").evaluate(None));
        assert!(Compare::value("k", CmpOp::NotEqual, "v").evaluate(None));
    }
}
