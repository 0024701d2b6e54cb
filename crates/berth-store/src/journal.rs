//! The journal engine behind the `memory` and `embedded` backends: a redb
//! database (in memory, or one durable file) written by a single writer
//! thread that group-commits every transaction waiting in its queue.
//!
//! Why one writer: redb allows one write transaction at a time, and an fsync
//! per client commit would cap throughput at the disk's fsync rate. The writer
//! drains its queue, evaluates each transaction's compares against the state
//! left by the ones before it (so the batch is serializable), applies them
//! with consecutive revisions, commits once, and only then answers every
//! caller and publishes the batch to watchers. A write is acknowledged only
//! after it is durable.
//!
//! Tables: `meta` (format marker, revision, compaction point, lease counter),
//! `kv` (current records), `log` (per revision, the events with the records
//! they replaced; feeds watches and reads at past revisions), `leases`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::codec::{LoggedEvent, decode_log, decode_record, encode_log, encode_record, record_lease};
use crate::types::{
    Event, EventKind, KeyValue, LeaseId, Op, OpResponse, RangeRequest, RangeResponse, Revision, StoreError, TxnRequest,
    TxnResponse, WatchBatch, prefix_end,
};
use crate::watch::{LogSource, watch_stream};
use crate::{Store, WatchStream};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"berth-journal-v1";
const REV_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";
const LEASE_KEY: &str = "next-lease";

/// Most requests folded into one commit.
const MAX_BATCH: usize = 4096;
/// Live watch channel depth, in revisions; slower watchers replay from the log.
const WATCH_CHANNEL: usize = 8192;

/// The memory backend: the journal on redb's in-memory storage.
pub type MemoryStore = Journal;
/// The embedded backend: the journal in one durable redb file.
pub type EmbeddedStore = Journal;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Txn(TxnRequest, Reply<TxnResponse>),
    Compact(Revision, Reply<()>),
    LeaseGrant(i64, Reply<LeaseId>),
    LeaseKeepAlive(LeaseId, Reply<i64>),
    LeaseRevoke(LeaseId, Reply<()>),
}

/// A journal handle; clones share one database and writer.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("backend", &self.inner.backend)
            .field("path", &self.inner.path)
            .finish()
    }
}

struct Inner {
    backend: &'static str,
    path: String,
    db: Arc<Database>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    events: broadcast::Sender<Arc<WatchBatch>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it drains; joining releases
        // the file lock before a reopen.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock()
            && let Some(h) = w.take()
        {
            let _ = h.join();
        }
    }
}

fn backend_err(backend: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend,
        message: e.to_string(),
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    /// A fresh in-memory journal (the `memory` backend).
    pub fn new() -> Self {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| backend_err("memory", e))
            .and_then(|db| Self::start(db, "memory", ":memory:".into(), Durability::None));
        match db {
            Ok(j) => j,
            // An in-memory redb cannot fail to initialise short of allocation failure.
            Err(e) => panic!("in-memory journal failed to start: {e}"),
        }
    }

    /// Opens (or creates) the durable journal file at `path` (the `embedded`
    /// backend). A file that is not a Berth journal, or is damaged, is
    /// refused with [`StoreError::Corrupt`]; nothing is rewritten.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let corrupt = |reason: String| StoreError::Corrupt {
            path: shown.clone(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| backend_err("embedded", format!("{}: {e}", parent.display())))?;
        }
        let existed = path.metadata().map(|m| m.len() > 0).unwrap_or(false);
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                backend_err("embedded", format!("{shown} is already open by another Berth process"))
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if !matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::Other | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                backend_err("embedded", format!("{shown}: {io}"))
            }
            other => corrupt(format!("not a readable Berth store ({other})")),
        })?;
        if existed {
            let rtx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
            let format = match rtx.open_table(META) {
                Ok(t) => t
                    .get(FORMAT_KEY)
                    .map_err(|e| corrupt(e.to_string()))?
                    .map(|v| v.value().to_vec()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(corrupt(e.to_string())),
            };
            match format {
                Some(f) if f == FORMAT => {}
                Some(f) => {
                    return Err(corrupt(format!(
                        "unknown journal format {:?} (this Berth reads {:?})",
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT)
                    )));
                }
                None => {
                    return Err(corrupt(
                        "a redb database, but not a Berth store (no format marker)".into(),
                    ));
                }
            }
        }
        Self::start(db, "embedded", shown, Durability::Immediate)
    }

    fn start(db: Database, backend: &'static str, path: String, durability: Durability) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        };
        // Create tables and the format marker on first use.
        {
            let mut wtx = db.begin_write().map_err(|e| err(&e))?;
            wtx.set_durability(durability).map_err(|e| err(&e))?;
            {
                let mut meta = wtx.open_table(META).map_err(|e| err(&e))?;
                if meta.get(FORMAT_KEY).map_err(|e| err(&e))?.is_none() {
                    meta.insert(FORMAT_KEY, FORMAT).map_err(|e| err(&e))?;
                    meta.insert(REV_KEY, 1i64.to_le_bytes().as_slice())
                        .map_err(|e| err(&e))?;
                    meta.insert(COMPACTED_KEY, 0i64.to_le_bytes().as_slice())
                        .map_err(|e| err(&e))?;
                    meta.insert(LEASE_KEY, 1i64.to_le_bytes().as_slice())
                        .map_err(|e| err(&e))?;
                }
                wtx.open_table(KV).map_err(|e| err(&e))?;
                wtx.open_table(LOG).map_err(|e| err(&e))?;
                wtx.open_table(LEASES).map_err(|e| err(&e))?;
            }
            wtx.commit().map_err(|e| err(&e))?;
        }
        let db = Arc::new(db);
        let (events, _) = broadcast::channel(WATCH_CHANNEL);
        let mut writer = Writer::load(db.clone(), backend, durability, events.clone()).map_err(|e| match e {
            StoreError::Corrupt { reason, .. } => StoreError::Corrupt {
                path: path.clone(),
                reason,
            },
            other => other,
        })?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("berth-{backend}-writer"))
            .spawn(move || writer.run(rx))
            .map_err(|e| backend_err(backend, e))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                backend,
                path,
                db,
                tx: Mutex::new(Some(tx)),
                events,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        backend_err(self.inner.backend, e)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        {
            let tx = self.inner.tx.lock().map_err(|_| StoreError::Closed)?;
            let tx = tx.as_ref().ok_or(StoreError::Closed)?;
            tx.send(make(reply)).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn read_revisions(&self, rtx: &redb::ReadTransaction) -> Result<(Revision, Revision), StoreError> {
        let meta = rtx.open_table(META).map_err(|e| self.err(e))?;
        Ok((meta_i64(&meta, REV_KEY)?, meta_i64(&meta, COMPACTED_KEY)?))
    }
}

fn meta_i64(meta: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<i64, StoreError> {
    let v = meta
        .get(key)
        .map_err(|e| crate::codec::corrupt(&e.to_string()))?
        .ok_or_else(|| crate::codec::corrupt(&format!("meta entry {key}")))?;
    let b: [u8; 8] = v
        .value()
        .try_into()
        .map_err(|_| crate::codec::corrupt(&format!("meta entry {key}")))?;
    Ok(i64::from_le_bytes(b))
}

impl LogSource for Journal {
    fn revisions(&self) -> Result<(Revision, Revision), StoreError> {
        let rtx = self.inner.db.begin_read().map_err(|e| self.err(e))?;
        self.read_revisions(&rtx)
    }

    fn read_log(&self, from: Revision, to: Revision, limit: usize) -> Result<Vec<Arc<WatchBatch>>, StoreError> {
        let rtx = self.inner.db.begin_read().map_err(|e| self.err(e))?;
        let (_, compacted) = self.read_revisions(&rtx)?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let log = rtx.open_table(LOG).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in log.range(from..=to).map_err(|e| self.err(e))?.take(limit) {
            let (rev, buf) = entry.map_err(|e| self.err(e))?;
            let events = decode_log(buf.value())?.into_iter().map(|l| l.event).collect();
            out.push(Arc::new(WatchBatch {
                revision: rev.value(),
                events,
            }));
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for Journal {
    fn backend(&self) -> &'static str {
        self.inner.backend
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(LogSource::revisions(self)?.0)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let rtx = self.inner.db.begin_read().map_err(|e| self.err(e))?;
        let kv = rtx.open_table(KV).map_err(|e| self.err(e))?;
        let found = kv.get(key).map_err(|e| self.err(e))?;
        found.map(|v| decode_record(key, v.value())).transpose()
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let rtx = self.inner.db.begin_read().map_err(|e| self.err(e))?;
        let (current, compacted) = self.read_revisions(&rtx)?;
        let at = if req.revision == 0 { current } else { req.revision };
        if at > current {
            return Err(StoreError::FutureRevision { requested: at, current });
        }
        if at < compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted,
            });
        }
        let start = req.start_key();
        let end = prefix_end(&req.prefix);
        let in_range = |k: &[u8]| k >= start.as_slice() && (end.is_empty() || k < end.as_slice());
        // Records changed after `at`, with their state as of `at` (None: absent then).
        let mut undo: BTreeMap<Bytes, Option<KeyValue>> = BTreeMap::new();
        if at < current {
            let log = rtx.open_table(LOG).map_err(|e| self.err(e))?;
            for entry in log.range(at + 1..=current).map_err(|e| self.err(e))? {
                let (_, buf) = entry.map_err(|e| self.err(e))?;
                for l in decode_log(buf.value())? {
                    if in_range(&l.event.kv.key) {
                        undo.entry(l.event.kv.key.clone()).or_insert(l.prev);
                    }
                }
            }
        }
        let kv = rtx.open_table(KV).map_err(|e| self.err(e))?;
        let iter = if end.is_empty() {
            kv.range::<&[u8]>(start.as_slice()..)
        } else {
            kv.range::<&[u8]>(start.as_slice()..end.as_slice())
        }
        .map_err(|e| self.err(e))?;
        let limit = if req.limit == 0 { usize::MAX } else { req.limit };
        let mut kvs = Vec::new();
        let mut count = 0u64;
        let mut more = false;
        let mut undo_iter = undo.into_iter().peekable();
        let mut emit = |item: KeyValue, kvs: &mut Vec<KeyValue>| -> bool {
            count += 1;
            if req.count_only {
                return true;
            }
            if kvs.len() >= limit {
                more = true;
                return false;
            }
            kvs.push(item);
            true
        };
        let mut current_iter = iter.peekable();
        loop {
            // Merge current records with the undo map, in key order.
            let next_cur = match current_iter.peek() {
                Some(Ok((k, _))) => Some(k.value().to_vec()),
                Some(Err(_)) => {
                    if let Some(Err(e)) = current_iter.next() {
                        return Err(self.err(e));
                    }
                    None
                }
                None => None,
            };
            let next_undo = undo_iter.peek().map(|(k, _)| k.clone());
            let take_undo = match (&next_cur, &next_undo) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(c), Some(u)) => u.as_ref() <= c.as_slice(),
            };
            let item = if take_undo {
                let (k, old) = undo_iter.next().ok_or_else(|| self.err("merge"))?;
                if next_cur.as_deref() == Some(k.as_ref()) {
                    current_iter.next();
                }
                old
            } else {
                let (k, v) = current_iter
                    .next()
                    .ok_or_else(|| self.err("merge"))?
                    .map_err(|e| self.err(e))?;
                Some(decode_record(k.value(), v.value())?)
            };
            if let Some(item) = item
                && !emit(item, &mut kvs)
            {
                break;
            }
        }
        Ok(RangeResponse {
            kvs,
            more,
            count,
            revision: at,
        })
    }

    async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, StoreError> {
        txn.check()?;
        self.call(|r| Request::Txn(txn, r)).await
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError> {
        let rx = self.inner.events.subscribe();
        watch_stream(Arc::new(self.clone()), rx, prefix, from_revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.call(|r| Request::Compact(revision, r)).await
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        if ttl_secs <= 0 {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL must be positive, got {ttl_secs}"
            )));
        }
        self.call(|r| Request::LeaseGrant(ttl_secs, r)).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError> {
        self.call(|r| Request::LeaseKeepAlive(lease, r)).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(|r| Request::LeaseRevoke(lease, r)).await
    }
}

struct LeaseState {
    ttl: i64,
    deadline: Instant,
    keys: BTreeSet<Bytes>,
}

/// The single writer: owns revision counters and lease deadlines.
struct Writer {
    db: Arc<Database>,
    backend: &'static str,
    durability: Durability,
    events: broadcast::Sender<Arc<WatchBatch>>,
    revision: Revision,
    compacted: Revision,
    next_lease: LeaseId,
    leases: HashMap<LeaseId, LeaseState>,
}

/// A reply to send once the batch is durable.
enum Done {
    Txn(Reply<TxnResponse>, Result<TxnResponse, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Lease(Reply<LeaseId>, Result<LeaseId, StoreError>),
}

struct Tables<'t> {
    kv: Table<'t, &'static [u8], &'static [u8]>,
    log: Table<'t, i64, &'static [u8]>,
    leases: Table<'t, i64, i64>,
}

impl Writer {
    fn load(
        db: Arc<Database>,
        backend: &'static str,
        durability: Durability,
        events: broadcast::Sender<Arc<WatchBatch>>,
    ) -> Result<Self, StoreError> {
        let mut w = Writer {
            db,
            backend,
            durability,
            events,
            revision: 0,
            compacted: 0,
            next_lease: 1,
            leases: HashMap::new(),
        };
        w.reload()?;
        Ok(w)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        backend_err(self.backend, e)
    }

    /// Rebuilds in-memory state from the committed database.
    fn reload(&mut self) -> Result<(), StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = rtx.open_table(META).map_err(|e| self.err(e))?;
        self.revision = meta_i64(&meta, REV_KEY)?;
        self.compacted = meta_i64(&meta, COMPACTED_KEY)?;
        self.next_lease = meta_i64(&meta, LEASE_KEY)?;
        self.leases.clear();
        let now = Instant::now();
        let leases = rtx.open_table(LEASES).map_err(|e| self.err(e))?;
        for entry in leases.iter().map_err(|e| self.err(e))? {
            let (id, ttl) = entry.map_err(|e| self.err(e))?;
            // After a restart every lease gets a full TTL again, as in etcd.
            self.leases.insert(
                id.value(),
                LeaseState {
                    ttl: ttl.value(),
                    deadline: now + Duration::from_secs(ttl.value().max(0) as u64),
                    keys: BTreeSet::new(),
                },
            );
        }
        let kv = rtx.open_table(KV).map_err(|e| self.err(e))?;
        for entry in kv.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let lease = record_lease(v.value())?;
            if lease != 0
                && let Some(l) = self.leases.get_mut(&lease)
            {
                l.keys.insert(Bytes::copy_from_slice(k.value()));
            }
        }
        Ok(())
    }

    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let wait = self
                .leases
                .values()
                .map(|l| l.deadline)
                .min()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            let first = match rx.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let base_revision = self.revision;
        let mut done = Vec::with_capacity(batch.len());
        let mut published = Vec::new();
        let outcome = self.apply_batch(batch, &mut done, &mut published);
        match outcome {
            Ok(()) => {
                for d in done {
                    d.send();
                }
                for b in published {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(Arc::new(b));
                }
            }
            Err(e) => {
                tracing::error!(backend = self.backend, error = %e, "journal commit failed");
                for d in done {
                    d.fail(e.clone());
                }
                self.revision = base_revision;
                if let Err(e) = self.reload() {
                    tracing::error!(backend = self.backend, error = %e, "journal reload failed");
                }
            }
        }
    }

    fn apply_batch(
        &mut self,
        batch: Vec<Request>,
        done: &mut Vec<Done>,
        published: &mut Vec<WatchBatch>,
    ) -> Result<(), StoreError> {
        let mut wtx = self.db.begin_write().map_err(|e| self.err(e))?;
        wtx.set_durability(self.durability).map_err(|e| self.err(e))?;
        let mut meta_dirty = false;
        {
            let mut t = Tables {
                kv: wtx.open_table(KV).map_err(|e| self.err(e))?,
                log: wtx.open_table(LOG).map_err(|e| self.err(e))?,
                leases: wtx.open_table(LEASES).map_err(|e| self.err(e))?,
            };
            for req in batch {
                match req {
                    Request::Txn(txn, reply) => {
                        let r = self.apply_txn(&mut t, &txn, published);
                        done.push(Done::Txn(reply, r));
                    }
                    Request::Compact(rev, reply) => {
                        let r = self.compact(&mut t, rev);
                        meta_dirty |= r.is_ok();
                        done.push(Done::Unit(reply, r));
                    }
                    Request::LeaseGrant(ttl, reply) => {
                        let id = self.next_lease;
                        self.next_lease += 1;
                        meta_dirty = true;
                        t.leases.insert(id, ttl).map_err(|e| self.err(e))?;
                        self.leases.insert(
                            id,
                            LeaseState {
                                ttl,
                                deadline: Instant::now() + Duration::from_secs(ttl as u64),
                                keys: BTreeSet::new(),
                            },
                        );
                        done.push(Done::Lease(reply, Ok(id)));
                    }
                    Request::LeaseKeepAlive(id, reply) => {
                        let r = match self.leases.get_mut(&id) {
                            Some(l) => {
                                l.deadline = Instant::now() + Duration::from_secs(l.ttl as u64);
                                Ok(l.ttl)
                            }
                            None => Err(StoreError::LeaseNotFound(id)),
                        };
                        done.push(Done::Lease(reply, r));
                    }
                    Request::LeaseRevoke(id, reply) => {
                        let r = if self.leases.contains_key(&id) {
                            self.revoke(&mut t, id, published)?;
                            self.leases.remove(&id);
                            meta_dirty = true;
                            Ok(())
                        } else {
                            Err(StoreError::LeaseNotFound(id))
                        };
                        done.push(Done::Unit(reply, r));
                    }
                }
            }
            let now = Instant::now();
            let expired: Vec<LeaseId> = self
                .leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                self.revoke(&mut t, id, published)?;
                self.leases.remove(&id);
            }
        }
        if published.is_empty() && !meta_dirty {
            wtx.abort().map_err(|e| self.err(e))?;
            return Ok(());
        }
        {
            let mut meta = wtx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(REV_KEY, self.revision.to_le_bytes().as_slice())
                .map_err(|e| self.err(e))?;
            meta.insert(COMPACTED_KEY, self.compacted.to_le_bytes().as_slice())
                .map_err(|e| self.err(e))?;
            meta.insert(LEASE_KEY, self.next_lease.to_le_bytes().as_slice())
                .map_err(|e| self.err(e))?;
        }
        wtx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn read(&self, t: &Tables<'_>, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let v = t.kv.get(key).map_err(|e| self.err(e))?;
        v.map(|v| decode_record(key, v.value())).transpose()
    }

    fn apply_txn(
        &mut self,
        t: &mut Tables<'_>,
        txn: &TxnRequest,
        published: &mut Vec<WatchBatch>,
    ) -> Result<TxnResponse, StoreError> {
        let mut succeeded = true;
        for c in &txn.compares {
            if !c.evaluate(self.read(t, &c.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        // Validate before touching anything, so a refused txn changes nothing.
        for op in ops {
            if let Op::Put { lease, .. } = op
                && *lease != 0
                && !self.leases.contains_key(lease)
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
        }
        let rev = self.revision + 1;
        let mut logged = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Get { key } => responses.push(OpResponse::Get(self.read(t, key)?)),
                Op::Put { key, value, lease } => {
                    let prev = self.read(t, key)?;
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                    };
                    let mut buf = Vec::with_capacity(32 + value.len());
                    encode_record(&kv, &mut buf);
                    t.kv.insert(key.as_ref(), buf.as_slice()).map_err(|e| self.err(e))?;
                    self.move_lease(key, prev.as_ref().map_or(0, |p| p.lease), *lease);
                    logged.push(LoggedEvent {
                        event: Event {
                            kind: EventKind::Put,
                            kv,
                        },
                        prev,
                    });
                    responses.push(OpResponse::Put);
                }
                Op::Delete { key } => {
                    let n = self.delete_key(t, key, rev, &mut logged)?;
                    responses.push(OpResponse::Delete(n));
                }
                Op::DeletePrefix { prefix } => {
                    let end = prefix_end(prefix);
                    let keys: Vec<Bytes> = {
                        let iter = if end.is_empty() {
                            t.kv.range::<&[u8]>(prefix.as_ref()..)
                        } else {
                            t.kv.range::<&[u8]>(prefix.as_ref()..end.as_slice())
                        }
                        .map_err(|e| self.err(e))?;
                        let mut keys = Vec::new();
                        for entry in iter {
                            let (k, _) = entry.map_err(|e| self.err(e))?;
                            keys.push(Bytes::copy_from_slice(k.value()));
                        }
                        keys
                    };
                    let mut n = 0;
                    for k in keys {
                        n += self.delete_key(t, &k, rev, &mut logged)?;
                    }
                    responses.push(OpResponse::Delete(n));
                }
            }
        }
        if !logged.is_empty() {
            self.commit_revision(t, rev, logged, published)?;
        }
        Ok(TxnResponse {
            succeeded,
            revision: self.revision,
            responses,
        })
    }

    fn commit_revision(
        &mut self,
        t: &mut Tables<'_>,
        rev: Revision,
        logged: Vec<LoggedEvent>,
        published: &mut Vec<WatchBatch>,
    ) -> Result<(), StoreError> {
        t.log
            .insert(rev, encode_log(&logged).as_slice())
            .map_err(|e| self.err(e))?;
        self.revision = rev;
        published.push(WatchBatch {
            revision: rev,
            events: logged.into_iter().map(|l| l.event).collect(),
        });
        Ok(())
    }

    fn delete_key(
        &mut self,
        t: &mut Tables<'_>,
        key: &Bytes,
        rev: Revision,
        logged: &mut Vec<LoggedEvent>,
    ) -> Result<u64, StoreError> {
        let Some(prev) = self.read(t, key)? else {
            return Ok(0);
        };
        t.kv.remove(key.as_ref()).map_err(|e| self.err(e))?;
        self.move_lease(key, prev.lease, 0);
        logged.push(LoggedEvent {
            event: Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                    lease: 0,
                },
            },
            prev: Some(prev),
        });
        Ok(1)
    }

    fn move_lease(&mut self, key: &Bytes, from: LeaseId, to: LeaseId) {
        if from == to {
            return;
        }
        if let Some(l) = self.leases.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&to) {
            l.keys.insert(key.clone());
        }
    }

    /// Deletes a lease's keys as one revision and forgets the lease on disk.
    fn revoke(&mut self, t: &mut Tables<'_>, id: LeaseId, published: &mut Vec<WatchBatch>) -> Result<(), StoreError> {
        let keys: Vec<Bytes> = self
            .leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default();
        t.leases.remove(id).map_err(|e| self.err(e))?;
        let rev = self.revision + 1;
        let mut logged = Vec::new();
        for k in keys {
            self.delete_key(t, &k, rev, &mut logged)?;
        }
        if !logged.is_empty() {
            self.commit_revision(t, rev, logged, published)?;
        }
        Ok(())
    }

    fn compact(&mut self, t: &mut Tables<'_>, rev: Revision) -> Result<(), StoreError> {
        if rev > self.revision {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: self.revision,
            });
        }
        if rev <= self.compacted {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted: self.compacted,
            });
        }
        t.log.retain_in(..rev, |_, _| false).map_err(|e| self.err(e))?;
        self.compacted = rev;
        Ok(())
    }
}

impl Done {
    fn send(self) {
        // A caller that went away no longer needs its answer.
        match self {
            Done::Txn(r, v) => drop(r.send(v)),
            Done::Unit(r, v) => drop(r.send(v)),
            Done::Lease(r, v) => drop(r.send(v)),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Done::Txn(r, _) => drop(r.send(Err(e))),
            Done::Unit(r, _) => drop(r.send(Err(e))),
            Done::Lease(r, _) => drop(r.send(Err(e))),
        }
    }
}
