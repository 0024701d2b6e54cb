//! The watch stream shared by the journal backends: replay the committed log
//! from the requested revision, then follow live commits, delivering every
//! revision exactly once and in order. A watcher that falls behind the live
//! channel re-reads the gap from the log instead of losing events.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::WatchStream;
use crate::types::{Revision, StoreError, WatchBatch};

/// Where a watch replays history from.
pub(crate) trait LogSource: Send + Sync + 'static {
    /// `(current revision, compacted revision)`.
    fn revisions(&self) -> Result<(Revision, Revision), StoreError>;
    /// Committed batches with `from <= revision <= to`, at most `limit`.
    fn read_log(&self, from: Revision, to: Revision, limit: usize) -> Result<Vec<Arc<WatchBatch>>, StoreError>;
}

const REPLAY_CHUNK: usize = 1024;

struct State {
    source: Arc<dyn LogSource>,
    rx: broadcast::Receiver<Arc<WatchBatch>>,
    prefix: Bytes,
    /// The next revision to deliver.
    next: Revision,
    /// Replay from the log up to and including this revision before live.
    replay_to: Revision,
    replayed: VecDeque<Arc<WatchBatch>>,
    live: VecDeque<Arc<WatchBatch>>,
    done: bool,
}

impl State {
    fn filter(&self, batch: &WatchBatch) -> Option<WatchBatch> {
        let events: Vec<_> = batch
            .events
            .iter()
            .filter(|e| e.kv.key.starts_with(&self.prefix))
            .cloned()
            .collect();
        (!events.is_empty()).then(|| WatchBatch {
            revision: batch.revision,
            events,
        })
    }

    fn fail(&mut self, e: StoreError) -> Option<Result<WatchBatch, StoreError>> {
        self.done = true;
        Some(Err(e))
    }

    async fn next_item(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(b) = self.replayed.pop_front() {
                if b.revision < self.next {
                    continue;
                }
                self.next = b.revision + 1;
                match self.filter(&b) {
                    Some(f) => return Some(Ok(f)),
                    None => continue,
                }
            }
            if self.next <= self.replay_to {
                match self.source.read_log(self.next, self.replay_to, REPLAY_CHUNK) {
                    // Nothing logged in the range: skip it.
                    Ok(batches) if batches.is_empty() => self.next = self.replay_to + 1,
                    Ok(batches) => self.replayed.extend(batches),
                    Err(e) => return self.fail(e),
                }
                continue;
            }
            if let Some(b) = self.live.pop_front() {
                if b.revision < self.next {
                    continue;
                }
                if b.revision > self.next {
                    // A gap (the live channel dropped some): fill it from the log first.
                    self.replay_to = b.revision - 1;
                    self.live.push_front(b);
                    continue;
                }
                self.next = b.revision + 1;
                match self.filter(&b) {
                    Some(f) => return Some(Ok(f)),
                    None => continue,
                }
            }
            match self.rx.recv().await {
                Ok(b) => self.live.push_back(b),
                Err(broadcast::error::RecvError::Lagged(_)) => match self.source.revisions() {
                    Ok((current, _)) => self.replay_to = current,
                    Err(e) => return self.fail(e),
                },
                Err(broadcast::error::RecvError::Closed) => return self.fail(StoreError::Closed),
            }
        }
    }
}

/// Builds a watch over `prefix` from `from` (0: from the next commit).
/// `rx` must be subscribed before this reads the current revision, so that
/// no commit falls between replay and live delivery.
pub(crate) fn watch_stream(
    source: Arc<dyn LogSource>,
    rx: broadcast::Receiver<Arc<WatchBatch>>,
    prefix: &[u8],
    from: Revision,
) -> Result<WatchStream, StoreError> {
    let (current, compacted) = source.revisions()?;
    if from < 0 {
        return Err(StoreError::InvalidRequest(format!("negative watch revision {from}")));
    }
    if from != 0 && from < compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compacted,
        });
    }
    let next = if from == 0 { current + 1 } else { from };
    let state = State {
        source,
        rx,
        prefix: Bytes::copy_from_slice(prefix),
        next,
        replay_to: current,
        replayed: VecDeque::new(),
        live: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let item = st.next_item().await?;
        Some((item, st))
    });
    Ok(Box::pin(stream))
}
