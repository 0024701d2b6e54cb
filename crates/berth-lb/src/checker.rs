//! Active health checks: one small task per checked target, probing with GET
//! until the target leaves (its checker generation moves on) or is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use http_body_util::BodyExt;

use crate::proxy::UpstreamClient;
use crate::state::Target;

/// Starts the checker for `target`, replacing any earlier one.
pub(crate) fn spawn(client: UpstreamClient, target: &Arc<Target>) {
    let generation = target.checker_gen.fetch_add(1, Relaxed) + 1;
    let weak = Arc::downgrade(target);
    tokio::spawn(run(client, weak, generation));
}

async fn run(client: UpstreamClient, target: Weak<Target>, generation: u64) {
    loop {
        let (addr, check) = {
            let Some(t) = target.upgrade() else { return };
            if t.checker_gen.load(Relaxed) != generation {
                return;
            }
            let Some(check) = t.health_check() else { return };
            (t.addr, check)
        };
        let uri = format!("http://{addr}{}", check.path);
        let passed = match http::Request::get(&uri)
            .header(http::header::USER_AGENT, "berth-lb-health")
            .body(crate::proxy::empty_upstream())
        {
            Err(_) => false,
            Ok(req) => {
                let probe = async {
                    let resp = client.request(req).await.ok()?;
                    let status = resp.status().as_u16();
                    // Read the body so that the connection goes back to the pool.
                    resp.into_body().collect().await.ok()?;
                    Some(status)
                };
                match tokio::time::timeout(check.timeout, probe).await {
                    Ok(Some(status)) => check.matches(status),
                    _ => false,
                }
            }
        };
        match target.upgrade() {
            Some(t) if t.checker_gen.load(Relaxed) == generation => t.observe(passed, &check),
            _ => return,
        }
        tokio::time::sleep(check.interval).await;
    }
}
