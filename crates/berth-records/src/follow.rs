//! The loop every watch-driven reader runs (the informer pattern): load a
//! view of the store at one revision, follow the store's watch from there,
//! fold each batch (and whatever else is already waiting) into the view, and
//! take a step when a batch touched what the reader plans from, or when its
//! last step asked to be woken at a given time. A watch that ends or falls
//! below the compaction point loads the view again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_model::Timestamp;
use berth_store::{DynStore, Revision, StoreError, WatchBatch};
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::RecordsError;
use crate::clock::Clock;

/// A reader that [`follow`] drives.
pub trait Follower: Send {
    /// What it plans from.
    type View: Send + Sync;
    type Error: From<RecordsError> + Send;
    /// For the log.
    const NAME: &'static str;

    /// The key prefix it watches.
    fn prefix(&self) -> &[u8] {
        b"/"
    }

    /// Loads the view and the revision it is at.
    fn load_view(&mut self) -> impl Future<Output = Result<(Self::View, Revision), Self::Error>> + Send;

    /// Folds a batch into the view; whether a step is due.
    fn fold(&mut self, view: &mut Self::View, batch: &WatchBatch) -> bool;

    /// Acts on the view; when to step again if nothing changes before.
    fn step(&mut self, view: &mut Self::View) -> impl Future<Output = Result<Option<Timestamp>, Self::Error>> + Send;
}

/// Runs `f` until `shutdown` completes (see the module docs). `clock` turns
/// the wake times `f` asks for into timers.
pub async fn follow<F: Follower>(
    store: DynStore,
    clock: Arc<dyn Clock>,
    mut f: F,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), F::Error> {
    tokio::pin!(shutdown);
    loop {
        let (mut view, revision) = f.load_view().await?;
        let mut watch = store
            .watch(f.prefix(), revision + 1)
            .await
            .map_err(RecordsError::from)?;
        let mut due = true;
        let mut view_revision = revision;
        let mut wake: Option<tokio::time::Instant> = None;
        loop {
            if due {
                let span = tracing::debug_span!("step", controller = F::NAME, revision = view_revision);
                wake = f.step(&mut view).instrument(span).await?.map(|at| {
                    tokio::time::Instant::now() + Duration::from_secs_f64((at - clock.now()).clamp(0.0, 3600.0) + 0.01)
                });
                due = false;
            }
            let sleep = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = sleep => { due = true; continue; }
                b = watch.next() => b,
            };
            match batch {
                Some(Ok(b)) => {
                    due |= f.fold(&mut view, &b);
                    view_revision = b.revision;
                    while let Some(Some(Ok(b))) = watch.next().now_or_never() {
                        due |= f.fold(&mut view, &b);
                        view_revision = b.revision;
                    }
                }
                Some(Err(StoreError::Compacted { .. })) | None => break,
                Some(Err(e)) => return Err(RecordsError::from(e).into()),
            }
        }
        tracing::info!(controller = F::NAME, "watch ended; loading the view again");
    }
}
