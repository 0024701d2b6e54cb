//! Bounds the journal: every `interval` it notes the store's current
//! revision, and compacts away the history older than `retention` (the
//! revision it noted that long ago). Watches that resume and pagination
//! tokens within the retention window keep working; older ones get
//! `Compacted`, which the API reports as an expired token. Several servers
//! may each run one: a compaction another server already did is not an
//! error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use berth_store::{DynStore, RangeRequest, Revision, StoreError};

use crate::ControlError;

/// How much history the journal keeps.
#[derive(Debug, Clone, Copy)]
pub struct CompactorConfig {
    pub retention: Duration,
    pub interval: Duration,
}

impl Default for CompactorConfig {
    /// One hour of history, checked every minute.
    fn default() -> Self {
        CompactorConfig {
            retention: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
        }
    }
}

pub struct Compactor {
    store: DynStore,
    config: CompactorConfig,
    marks: VecDeque<(Instant, Revision)>,
    compacted: Revision,
}

impl Compactor {
    pub fn new(store: DynStore, config: CompactorConfig) -> Self {
        Compactor {
            store,
            config,
            marks: VecDeque::new(),
            compacted: 0,
        }
    }

    /// Runs until the store fails for a reason other than a race with
    /// another compactor.
    pub async fn run(mut self) -> Result<(), ControlError> {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.step(Instant::now()).await?;
        }
    }

    /// Notes the current revision at `now` and compacts to the newest mark
    /// at least `retention` old; the revision compacted to, if any.
    pub async fn step(&mut self, now: Instant) -> Result<Option<Revision>, ControlError> {
        let current = self
            .store
            .range(RangeRequest::prefix(b"/clusters/").count_only())
            .await?
            .revision;
        self.marks.push_back((now, current));
        let mut target = None;
        while let Some(&(at, rev)) = self.marks.front() {
            if now.duration_since(at) < self.config.retention {
                break;
            }
            target = Some(rev);
            self.marks.pop_front();
        }
        let Some(rev) = target.filter(|&r| r > self.compacted) else {
            return Ok(None);
        };
        match self.store.compact(rev).await {
            Ok(()) => {
                tracing::info!(revision = rev, "journal compacted");
                self.compacted = rev;
                Ok(Some(rev))
            }
            // Another server got there first.
            Err(StoreError::Compacted { compacted, .. }) => {
                self.compacted = compacted;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_store::{Journal, Op, TxnRequest};
    use std::sync::Arc;

    async fn write(store: &DynStore, n: usize) {
        for i in 0..n {
            store
                .txn(TxnRequest::new().then(Op::put(format!("/clusters/c{}", i % 3), "{}")))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn history_older_than_the_retention_goes_and_newer_stays() {
        let store: DynStore = Arc::new(Journal::new());
        write(&store, 10).await;
        let cfg = CompactorConfig {
            retention: Duration::from_secs(60),
            interval: Duration::from_secs(1),
        };
        let mut c = Compactor::new(store.clone(), cfg);
        let t0 = Instant::now();
        assert_eq!(c.step(t0).await.unwrap(), None, "nothing is old enough yet");
        let first = store.range(RangeRequest::prefix(b"/clusters/")).await.unwrap().revision;
        write(&store, 10).await;
        assert_eq!(c.step(t0 + Duration::from_secs(30)).await.unwrap(), None);
        let middle = store.range(RangeRequest::prefix(b"/clusters/")).await.unwrap().revision;
        write(&store, 10).await;
        // 60 s after the first mark: history before it goes, later history stays.
        assert_eq!(c.step(t0 + Duration::from_secs(60)).await.unwrap(), Some(first));
        let old = store.range(RangeRequest::prefix(b"/clusters/").at(first - 1)).await;
        assert!(matches!(old, Err(StoreError::Compacted { .. })), "{old:?}");
        let kept = store
            .range(RangeRequest::prefix(b"/clusters/").at(middle))
            .await
            .unwrap();
        assert_eq!(kept.kvs.len(), 3, "reads inside the window still work");
        // A compaction another server already made is not an error.
        store.compact(middle).await.unwrap();
        assert_eq!(c.step(t0 + Duration::from_secs(90)).await.unwrap(), None);
    }
}
