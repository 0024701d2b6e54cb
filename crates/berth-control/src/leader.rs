//! Leader election over the store, for controllers that must run on one
//! server at a time when several servers share a store (the service
//! reconciler, the target controller, the compactor).
//!
//! The leader holds a key created under a lease (`Compare` create revision
//! = 0, then put with the lease) and keeps the lease alive; it steps down
//! when a keep-alive fails or the lease has expired, and the others, which
//! watch the key, campaign again as soon as it is deleted (the lease's
//! expiry deletes it). Two servers can therefore never both believe they
//! lead for longer than one keep-alive interval, and every controller
//! commit still compares what it read, so even that overlap cannot
//! over-commit.

use std::time::Duration;

use berth_store::{CmpOp, Compare, DynStore, EventKind, LeaseId, Op, StoreError, TxnRequest};
use futures::StreamExt;
use tokio::sync::watch;

use crate::ControlError;

/// Campaigns for one role (`key`).
#[derive(Clone)]
pub struct Elector {
    store: DynStore,
    key: String,
    id: String,
    ttl_secs: i64,
}

/// Held while this server leads; [`Leadership::lost`] completes when it
/// stops leading. Dropping it resigns (the lease is revoked).
pub struct Leadership {
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    store: DynStore,
    lease: LeaseId,
}

impl Leadership {
    /// Completes once leadership is lost.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Steps down now: stops the keep-alive and revokes the lease (which
    /// deletes the leader key, so another server takes over at once).
    pub async fn resign(self) {
        self.keeper.abort();
        let _ = self.store.lease_revoke(self.lease).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Elector {
    /// `key` names the role (e.g. `/leader/reconciler`); `id` this server.
    pub fn new(store: DynStore, key: impl Into<String>, id: impl Into<String>, ttl: Duration) -> Self {
        Elector {
            store,
            key: key.into(),
            id: id.into(),
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1),
        }
    }

    /// The id of the current leader, if any.
    pub async fn leader(&self) -> Result<Option<String>, ControlError> {
        Ok(self
            .store
            .get(self.key.as_bytes())
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Waits until this server leads.
    pub async fn campaign(&self) -> Result<Leadership, ControlError> {
        loop {
            let lease = self.store.lease_grant(self.ttl_secs).await?;
            let won = self
                .store
                .txn(
                    TxnRequest::new()
                        .when(Compare::create_revision(&self.key, CmpOp::Equal, 0))
                        .then(Op::put_with_lease(&self.key, &self.id, lease)),
                )
                .await?;
            if won.succeeded {
                tracing::info!(role = %self.key, id = %self.id, "leading");
                return Ok(self.lead(lease));
            }
            let _ = self.store.lease_revoke(lease).await;
            self.wait_for_vacancy().await?;
        }
    }

    /// Returns once the leader key is gone (or after one TTL, to look again).
    async fn wait_for_vacancy(&self) -> Result<(), ControlError> {
        let Some(kv) = self.store.get(self.key.as_bytes()).await? else {
            return Ok(());
        };
        let ttl = Duration::from_secs(u64::try_from(self.ttl_secs).unwrap_or(1));
        let mut watch = match self.store.watch(self.key.as_bytes(), kv.mod_revision + 1).await {
            Ok(w) => w,
            Err(StoreError::Compacted { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let vacated = async {
            while let Some(batch) = watch.next().await {
                let Ok(batch) = batch else { return };
                if batch
                    .events
                    .iter()
                    .any(|e| e.kind == EventKind::Delete && e.kv.key.as_ref() == self.key.as_bytes())
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(ttl, vacated).await;
        Ok(())
    }

    fn lead(&self, lease: LeaseId) -> Leadership {
        let (tx, rx) = watch::channel(false);
        let store = self.store.clone();
        let every =
            Duration::from_millis(u64::try_from(self.ttl_secs).unwrap_or(1) * 1000 / 3).max(Duration::from_millis(100));
        let role = self.key.clone();
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.lease_keep_alive(lease).await {
                    Ok(ttl) if ttl > 0 => {}
                    other => {
                        tracing::warn!(role = %role, result = ?other, "lost leadership");
                        let _ = tx.send(true);
                        return;
                    }
                }
            }
        });
        Leadership {
            lost: rx,
            keeper,
            store: self.store.clone(),
            lease,
        }
    }
}

/// Runs `work` whenever this server leads `role`, until `shutdown`: campaign,
/// run until leadership is lost, campaign again. `work` gets a future that
/// completes when it must stop.
pub async fn run_as_leader<F, Fut>(
    elector: Elector,
    shutdown: impl std::future::Future<Output = ()> + Send,
    mut work: F,
) -> Result<(), ControlError>
where
    F: FnMut(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ControlError>>,
{
    tokio::pin!(shutdown);
    loop {
        let lead = tokio::select! {
            l = elector.campaign() => l?,
            () = &mut shutdown => return Ok(()),
        };
        let lost = lead.lost();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        };
        let stop_or_lost: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
            tokio::select! {
                () = lost => {}
                () = stop => {}
            }
        });
        let result = tokio::select! {
            r = work(stop_or_lost) => r,
            () = &mut shutdown => {
                let _ = stop_tx.send(true);
                lead.resign().await;
                return Ok(());
            }
        };
        drop(stop_tx);
        lead.resign().await;
        result?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_store::Journal;
    use std::sync::Arc;

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_successor_when_it_resigns() {
        let store: DynStore = Arc::new(Journal::new());
        let a = Elector::new(store.clone(), "/leader/test", "a", Duration::from_secs(2));
        let b = Elector::new(store.clone(), "/leader/test", "b", Duration::from_secs(2));
        let la = a.campaign().await.unwrap();
        assert_eq!(a.leader().await.unwrap().as_deref(), Some("a"));
        let b_campaign = tokio::spawn(async move { b.campaign().await.map(|l| (l, b)) });
        // b waits while a leads (a keeps its lease alive past the TTL).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!b_campaign.is_finished(), "b must not lead while a does");
        la.resign().await;
        let (lb, b) = tokio::time::timeout(Duration::from_secs(5), b_campaign)
            .await
            .expect("b takes over within the deadline")
            .unwrap()
            .unwrap();
        assert_eq!(b.leader().await.unwrap().as_deref(), Some("b"));
        lb.resign().await;
    }

    #[tokio::test]
    async fn a_leader_whose_lease_is_gone_learns_it_lost() {
        let store: DynStore = Arc::new(Journal::new());
        let a = Elector::new(store.clone(), "/leader/test", "a", Duration::from_secs(1));
        let la = a.campaign().await.unwrap();
        // Someone (an operator, or expiry during a partition) removes the lease.
        store.lease_revoke(la.lease).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), la.lost())
            .await
            .expect("the keep-alive notices within the deadline");
    }
}
