//! The one conformance suite every [`Store`] backend must pass.
//!
//! Each check is an `async fn(DynStore)` that panics with a message when the
//! backend misbehaves; backends' test files run every check listed in
//! [`CHECKS`] against a fresh store (see `tests/conformance.rs`). Checks only
//! compare revisions relative to each other, so they hold on etcd (whose
//! revisions start at 1) and on the journal alike.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::{CmpOp, Compare, DynStore, EventKind, Op, OpResponse, RangeRequest, StoreError, StoreExt, TxnRequest};

/// A named check.
pub type Check = (&'static str, fn(DynStore) -> Pin<Box<dyn Future<Output = ()> + Send>>);

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, by name.
        pub const CHECKS: &[Check] = &[$((stringify!($name), |s| Box::pin($name(s)))),*];
    };
}

checks!(
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

/// Runs one named check.
pub async fn run(name: &str, store: DynStore) {
    let (_, f) = CHECKS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no conformance check named {name}"));
    f(store).await;
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn put_get_and_revisions(store: DynStore) {
    let r0 = store.revision().await.expect("revision");
    assert!(store.get(b"/c/a").await.expect("get").is_none());
    let r1 = store.put(b"/c/a", b"1").await.expect("put");
    assert!(r1 > r0, "a write advances the revision ({r0} -> {r1})");
    let kv = store.get(b"/c/a").await.expect("get").expect("present");
    assert_eq!(kv.value.as_ref(), b"1");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r1, 1));
    let r2 = store.put(b"/c/a", b"2").await.expect("put");
    assert_eq!(r2, r1 + 1, "each committed write is the next revision");
    let kv = store.get(b"/c/a").await.expect("get").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r2, 2));
    assert_eq!(store.revision().await.expect("revision"), r2);
    // A binary key and value round-trip exactly.
    let key = [b'/', 0, 0xff, 7];
    store.put(&key, &[0, 1, 2, 0xff]).await.expect("put");
    assert_eq!(
        store.get(&key).await.expect("get").expect("present").value.as_ref(),
        &[0, 1, 2, 0xff]
    );
}

async fn range_prefix_limit_and_paging(store: DynStore) {
    for i in 0..25 {
        store.put(format!("/r/k{i:03}").as_bytes(), b"v").await.expect("put");
    }
    store.put(b"/r", b"parent").await.expect("put");
    store.put(b"/rx/other", b"v").await.expect("put");
    let all = store.range(RangeRequest::prefix(b"/r/")).await.expect("range");
    assert_eq!(all.kvs.len(), 25);
    assert!(!all.more);
    let keys: Vec<_> = all.kvs.iter().map(|k| s(&k.key)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "range returns keys in order");
    let counted = store
        .range(RangeRequest::prefix(b"/r/").count_only())
        .await
        .expect("count");
    assert_eq!(counted.count, 25);
    assert!(counted.kvs.is_empty());
    // Page through 10 at a time, pinned at the first page's revision, while
    // writes land: the pages still add up to the original 25 keys.
    let mut seen = Vec::new();
    let mut after: Option<bytes::Bytes> = None;
    let mut at = 0;
    loop {
        let mut req = RangeRequest::prefix(b"/r/").limit(10).at(at);
        if let Some(a) = &after {
            req = req.after(a);
        }
        let page = store.range(req).await.expect("page");
        at = page.revision;
        store
            .put(format!("/r/new{}", seen.len()).as_bytes(), b"v")
            .await
            .expect("put");
        store.delete(b"/r/k024").await.expect("delete");
        seen.extend(page.kvs.iter().map(|k| s(&k.key)));
        after = page.kvs.last().map(|k| k.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(
        seen, keys,
        "paging at a fixed revision is stable under concurrent writes"
    );
}

async fn range_at_past_revision(store: DynStore) {
    let r1 = store.put(b"/h/a", b"1").await.expect("put");
    store.put(b"/h/b", b"1").await.expect("put");
    store.put(b"/h/a", b"2").await.expect("put");
    store.delete(b"/h/b").await.expect("delete");
    store.put(b"/h/c", b"1").await.expect("put");
    let past = store
        .range(RangeRequest::prefix(b"/h/").at(r1 + 1))
        .await
        .expect("range");
    let view: Vec<_> = past.kvs.iter().map(|k| (s(&k.key), s(&k.value))).collect();
    assert_eq!(view, vec![("/h/a".into(), "1".into()), ("/h/b".into(), "1".into())]);
    assert_eq!(past.revision, r1 + 1);
    let now = store.range(RangeRequest::prefix(b"/h/")).await.expect("range");
    let view: Vec<_> = now.kvs.iter().map(|k| (s(&k.key), s(&k.value))).collect();
    assert_eq!(view, vec![("/h/a".into(), "2".into()), ("/h/c".into(), "1".into())]);
    let future = store.range(RangeRequest::prefix(b"/h/").at(now.revision + 100)).await;
    assert!(matches!(future, Err(StoreError::FutureRevision { .. })), "{future:?}");
}

async fn txn_compares(store: DynStore) {
    let rev = store.put(b"/t/x", b"a").await.expect("put");
    let ok = |c: Compare| {
        let store = store.clone();
        async move {
            store
                .txn(TxnRequest::new().when(c).then(Op::put(b"/t/flag", b"1")))
                .await
                .expect("txn")
                .succeeded
        }
    };
    assert!(ok(Compare::mod_revision(b"/t/x", CmpOp::Equal, rev)).await);
    assert!(!ok(Compare::mod_revision(b"/t/x", CmpOp::Equal, rev - 1)).await);
    assert!(ok(Compare::mod_revision(b"/t/x", CmpOp::Less, rev + 1)).await);
    assert!(ok(Compare::version(b"/t/x", CmpOp::Equal, 1)).await);
    assert!(!ok(Compare::version(b"/t/x", CmpOp::Greater, 1)).await);
    assert!(ok(Compare::create_revision(b"/t/x", CmpOp::Equal, rev)).await);
    assert!(ok(Compare::value(b"/t/x", CmpOp::Equal, b"a")).await);
    assert!(!ok(Compare::value(b"/t/x", CmpOp::Equal, b"b")).await);
    assert!(ok(Compare::value(b"/t/x", CmpOp::NotEqual, b"b")).await);
    assert!(ok(Compare::exists(b"/t/x")).await);
    assert!(!ok(Compare::missing(b"/t/x")).await);
    assert!(ok(Compare::missing(b"/t/absent")).await);
    assert!(!ok(Compare::exists(b"/t/absent")).await);
    // Create-if-absent succeeds once.
    let create = || {
        TxnRequest::new()
            .when(Compare::missing(b"/t/once"))
            .then(Op::put(b"/t/once", b"v"))
    };
    assert!(store.txn(create()).await.expect("txn").succeeded);
    assert!(!store.txn(create()).await.expect("txn").succeeded);
    // All compares must hold.
    let both = TxnRequest::new()
        .when(Compare::exists(b"/t/x"))
        .when(Compare::exists(b"/t/absent"))
        .then(Op::put(b"/t/never", b"v"));
    assert!(!store.txn(both).await.expect("txn").succeeded);
    assert!(store.get(b"/t/never").await.expect("get").is_none());
    // A multi-key success branch commits atomically at one revision.
    let r = store
        .txn(
            TxnRequest::new()
                .then(Op::put(b"/t/m1", b"1"))
                .then(Op::put(b"/t/m2", b"2")),
        )
        .await
        .expect("txn");
    let m1 = store.get(b"/t/m1").await.expect("get").expect("m1");
    let m2 = store.get(b"/t/m2").await.expect("get").expect("m2");
    assert_eq!((m1.mod_revision, m2.mod_revision), (r.revision, r.revision));
}

async fn txn_failure_branch_and_gets(store: DynStore) {
    let rev = store.put(b"/f/k", b"current").await.expect("put");
    let resp = store
        .txn(
            TxnRequest::new()
                .when(Compare::mod_revision(b"/f/k", CmpOp::Equal, rev + 5))
                .then(Op::put(b"/f/k", b"won"))
                .otherwise(Op::get(b"/f/k"))
                .otherwise(Op::put(b"/f/lost", b"1")),
        )
        .await
        .expect("txn");
    assert!(!resp.succeeded);
    match &resp.responses[..] {
        [OpResponse::Get(Some(kv)), OpResponse::Put] => assert_eq!(kv.value.as_ref(), b"current"),
        other => panic!("unexpected responses {other:?}"),
    }
    assert_eq!(
        store.get(b"/f/k").await.expect("get").expect("k").value.as_ref(),
        b"current"
    );
    assert!(store.get(b"/f/lost").await.expect("get").is_some());
    // A compare-only read txn does not advance the revision.
    let before = store.revision().await.expect("rev");
    let r = store.txn(TxnRequest::new().then(Op::get(b"/f/k"))).await.expect("txn");
    assert_eq!(r.revision, before);
    assert_eq!(store.revision().await.expect("rev"), before);
}

async fn delete_and_delete_prefix(store: DynStore) {
    for k in ["/d/a/1", "/d/a/2", "/d/a/3", "/d/b/1"] {
        store.put(k.as_bytes(), b"v").await.expect("put");
    }
    let before = store.revision().await.expect("rev");
    let r = store
        .txn(TxnRequest::new().then(Op::delete(b"/d/nope")))
        .await
        .expect("txn");
    assert_eq!(r.responses, vec![OpResponse::Delete(0)]);
    assert_eq!(r.revision, before, "deleting nothing is not a write");
    let r = store
        .txn(TxnRequest::new().then(Op::delete_prefix(b"/d/a/")))
        .await
        .expect("txn");
    assert_eq!(r.responses, vec![OpResponse::Delete(3)]);
    assert_eq!(r.revision, before + 1, "a prefix delete is one revision");
    let left = store.range(RangeRequest::prefix(b"/d/")).await.expect("range");
    assert_eq!(
        left.kvs.iter().map(|k| s(&k.key)).collect::<Vec<_>>(),
        vec!["/d/b/1".to_string()]
    );
    // Re-creating a deleted key starts a new life: version 1, new create_revision.
    let rc = store.put(b"/d/a/1", b"again").await.expect("put");
    let kv = store.get(b"/d/a/1").await.expect("get").expect("kv");
    assert_eq!((kv.version, kv.create_revision), (1, rc));
    // Writing one key twice in one transaction is refused.
    let dup = store
        .txn(
            TxnRequest::new()
                .then(Op::put(b"/d/z", b"1"))
                .then(Op::put(b"/d/z", b"2")),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::InvalidRequest(_))), "{dup:?}");
}

async fn watch_from_revision_in_order(store: DynStore) {
    store.put(b"/other", b"x").await.expect("put");
    let r1 = store.put(b"/w/a", b"1").await.expect("put");
    store.put(b"/other", b"y").await.expect("put");
    store.put(b"/w/b", b"1").await.expect("put");
    store.delete(b"/w/a").await.expect("delete");
    let mut w = store.watch(b"/w/", r1).await.expect("watch");
    let mut got = Vec::new();
    for _ in 0..3 {
        let b = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch delivers within the deadline")
            .expect("stream open")
            .expect("batch");
        for e in &b.events {
            assert_eq!(e.kv.mod_revision, b.revision);
            got.push((b.revision, e.kind, s(&e.kv.key)));
        }
    }
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], (r1, EventKind::Put, "/w/a".to_string()));
    assert_eq!(got[1].2, "/w/b");
    assert_eq!((got[2].1, got[2].2.as_str()), (EventKind::Delete, "/w/a"));
    assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "revisions increase: {got:?}");
}

async fn watch_live_and_resume(store: DynStore) {
    let mut w = store.watch(b"/l/", 0).await.expect("watch");
    let r1 = store.put(b"/l/1", b"a").await.expect("put");
    let b = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("deadline")
        .expect("open")
        .expect("ok");
    assert_eq!(b.revision, r1);
    drop(w);
    // Writes while nobody watches, then resume from the last seen + 1.
    let r2 = store.put(b"/l/2", b"b").await.expect("put");
    let r3 = store.put(b"/l/3", b"c").await.expect("put");
    let mut w = store.watch(b"/l/", r1 + 1).await.expect("watch");
    let r4 = store.put(b"/l/4", b"d").await.expect("put");
    let mut revs = Vec::new();
    while revs.len() < 3 {
        let b = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("deadline")
            .expect("open")
            .expect("ok");
        revs.push(b.revision);
    }
    assert_eq!(
        revs,
        vec![r2, r3, r4],
        "resumed watch misses nothing and repeats nothing"
    );
    // A multi-key txn arrives as one batch.
    let r = store
        .txn(
            TxnRequest::new()
                .then(Op::put(b"/l/x", b"1"))
                .then(Op::put(b"/l/y", b"1")),
        )
        .await
        .expect("txn");
    let b = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("deadline")
        .expect("open")
        .expect("ok");
    assert_eq!((b.revision, b.events.len()), (r.revision, 2));
}

async fn watch_many_writes_exactly_once(store: DynStore) {
    let mut w = store.watch(b"/m/", 0).await.expect("watch");
    let writers = 8;
    let per = 100;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let st = store.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..per {
                st.put(format!("/m/{i}/{j}").as_bytes(), b"v").await.expect("put");
            }
        }));
    }
    let mut keys = BTreeSet::new();
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.len() < writers * per {
        let left = deadline.saturating_duration_since(Instant::now());
        let b = tokio::time::timeout(left, w.next())
            .await
            .expect("deadline")
            .expect("open")
            .expect("ok");
        assert!(b.revision > last, "revision order: {} after {last}", b.revision);
        last = b.revision;
        for e in b.events {
            assert!(
                keys.insert(e.kv.key.clone()),
                "event for {} delivered twice",
                s(&e.kv.key)
            );
        }
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

async fn compaction(store: DynStore) {
    let r1 = store.put(b"/k/a", b"1").await.expect("put");
    let r2 = store.put(b"/k/a", b"2").await.expect("put");
    let r3 = store.put(b"/k/a", b"3").await.expect("put");
    store.compact(r2).await.expect("compact");
    let old = store.range(RangeRequest::prefix(b"/k/").at(r1)).await;
    assert!(matches!(old, Err(StoreError::Compacted { .. })), "{old:?}");
    let w = store.watch(b"/k/", r1).await;
    assert!(
        matches!(w, Err(StoreError::Compacted { .. })),
        "watch below compaction: {:?}",
        w.err()
    );
    let at2 = store
        .range(RangeRequest::prefix(b"/k/").at(r2))
        .await
        .expect("range at compaction point");
    assert_eq!(at2.kvs[0].value.as_ref(), b"2");
    let mut w = store.watch(b"/k/", r3).await.expect("watch above compaction");
    let b = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("deadline")
        .expect("open")
        .expect("ok");
    assert_eq!(b.revision, r3);
    assert_eq!(store.get(b"/k/a").await.expect("get").expect("kv").value.as_ref(), b"3");
    let future = store.compact(r3 + 100).await;
    assert!(matches!(future, Err(StoreError::FutureRevision { .. })), "{future:?}");
}

async fn leases_expire_and_revoke(store: DynStore) {
    // Revoke: keys go at once.
    let l1 = store.lease_grant(30).await.expect("grant");
    store
        .txn(TxnRequest::new().then(Op::put_with_lease(b"/lease/r", b"v", l1)))
        .await
        .expect("put");
    assert_eq!(store.get(b"/lease/r").await.expect("get").expect("kv").lease, l1);
    store.lease_revoke(l1).await.expect("revoke");
    assert!(store.get(b"/lease/r").await.expect("get").is_none());
    let ka = store.lease_keep_alive(l1).await;
    assert!(matches!(ka, Err(StoreError::LeaseNotFound(_))), "{ka:?}");
    // A put with an unknown lease is refused and writes nothing.
    let bad = store
        .txn(TxnRequest::new().then(Op::put_with_lease(b"/lease/bad", b"v", l1)))
        .await;
    assert!(bad.is_err(), "{bad:?}");
    assert!(store.get(b"/lease/bad").await.expect("get").is_none());
    // Kept alive, a lease outlives its TTL; left alone, it expires and a
    // watcher sees the delete.
    let l2 = store.lease_grant(2).await.expect("grant");
    store
        .txn(TxnRequest::new().then(Op::put_with_lease(b"/lease/e", b"v", l2)))
        .await
        .expect("put");
    let mut w = store.watch(b"/lease/e", 0).await.expect("watch");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        store.lease_keep_alive(l2).await.expect("keep alive");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        store.get(b"/lease/e").await.expect("get").is_some(),
        "kept-alive lease expired"
    );
    let b = tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("lease expiry within the deadline")
        .expect("open")
        .expect("ok");
    assert_eq!(b.events[0].kind, EventKind::Delete);
    assert!(store.get(b"/lease/e").await.expect("get").is_none());
}

/// The design's heart: two writers read the same instance record and race to
/// claim its last 2048 MiB; exactly one commit wins, every time.
async fn last_memory_claim_race(store: DynStore) {
    let rounds = 1000;
    let claims = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for round in 0..rounds {
        let key = format!("/instances/c/i-{round}");
        store.put(key.as_bytes(), b"2048").await.expect("put");
        let kv = store.get(key.as_bytes()).await.expect("get").expect("kv");
        let mut racers = Vec::new();
        for who in 0..2 {
            let st = store.clone();
            let key = key.clone();
            let claims = claims.clone();
            let seen = kv.mod_revision;
            racers.push(tokio::spawn(async move {
                let r = st
                    .txn(
                        TxnRequest::new()
                            .when(Compare::mod_revision(key.as_bytes(), CmpOp::Equal, seen))
                            .then(Op::put(key.as_bytes(), b"0"))
                            .then(Op::put(format!("{key}/task-{who}").as_bytes(), b"2048")),
                    )
                    .await
                    .expect("txn");
                if r.succeeded {
                    claims.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                r.succeeded
            }));
        }
        let mut wins = 0;
        for r in racers {
            wins += usize::from(r.await.expect("racer"));
        }
        assert_eq!(wins, 1, "round {round}: exactly one claim commits");
        let tasks = store
            .range(RangeRequest::prefix(format!("{key}/").as_bytes()))
            .await
            .expect("range");
        assert_eq!(tasks.kvs.len(), 1, "round {round}: only the winner's task exists");
    }
    assert_eq!(claims.load(std::sync::atomic::Ordering::SeqCst), rounds);
}
