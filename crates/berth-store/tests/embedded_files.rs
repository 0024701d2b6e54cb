//! The embedded backend's file handling: reopening keeps everything
//! acknowledged, and a damaged or foreign file is refused with a clear error
//! instead of being overwritten.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use berth_store::{Journal, RangeRequest, Store, StoreError, StoreExt};

#[tokio::test]
async fn reopen_keeps_data_revisions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let (rev, lease) = {
        let store = Journal::open(&path).unwrap();
        for i in 0..100 {
            store.put(format!("/k/{i:03}").as_bytes(), b"v").await.unwrap();
        }
        let lease = store.lease_grant(60).await.unwrap();
        (store.revision().await.unwrap(), lease)
    };
    let store = Journal::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), rev, "revision survives a reopen");
    let all = store.range(RangeRequest::prefix(b"/k/")).await.unwrap();
    assert_eq!(all.kvs.len(), 100);
    // The log survives too: a watch from the first revision replays it.
    use futures::StreamExt;
    let mut w = store.watch(b"/k/", all.kvs[0].mod_revision).await.unwrap();
    let first = w.next().await.unwrap().unwrap();
    assert_eq!(first.events[0].kv.key.as_ref(), b"/k/000");
    // Leases survive with a fresh TTL, and new ones never reuse an id.
    assert_eq!(store.lease_keep_alive(lease).await.unwrap(), 60);
    assert!(store.lease_grant(60).await.unwrap() > lease);
}

#[test]
fn garbage_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let garbage: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("berth.db"), "the error names the file: {err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "a refused file is not modified");
}

#[test]
fn foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = redb_foreign::create(&path);
        drop(db);
    }
    let err = Journal::open(&path).unwrap_err();
    assert!(err.to_string().contains("not a Berth store"), "{err}");
}

#[tokio::test]
async fn second_open_of_a_live_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let _first = Journal::open(&path).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
}

mod redb_foreign {
    use redb::{Database, TableDefinition};

    const T: TableDefinition<&str, &str> = TableDefinition::new("something-else");

    /// A valid redb file written by someone else.
    pub fn create(path: &std::path::Path) -> Database {
        let db = Database::create(path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(T).unwrap().insert("hello", "world").unwrap();
        w.commit().unwrap();
        db
    }
}
