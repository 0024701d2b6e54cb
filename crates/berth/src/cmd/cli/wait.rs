//! `--wait`: poll DescribeServices until the service is steady (running ==
//! desired, one deployment), with a progress bar and a deadline.

use std::time::{Duration, Instant};

use berth_client::Client;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::{exit, fail, n};

/// How often the service is polled.
const POLL: Duration = Duration::from_millis(500);

/// A `--timeout` value: `90`, `30s`, `5m`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    berth_client::compose::parse_duration_secs(s).map(|secs| Duration::from_secs(u64::from(secs)))
}

/// Whether a DescribeServices entry is steady.
pub fn is_steady(svc: &Value) -> bool {
    let deployments = svc["deployments"].as_array().map_or(0, Vec::len);
    svc["status"] == "ACTIVE" && deployments <= 1 && n(svc, "runningCount") == n(svc, "desiredCount")
}

pub async fn steady(client: &Client, cluster: &str, service: &str, timeout: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} running ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let r = client
            .call("DescribeServices", &json!({"cluster": cluster, "services": [service]}))
            .await?;
        let Some(svc) = r["services"].as_array().and_then(|a| a.first()).cloned() else {
            bar.abandon();
            return Err(fail(
                exit::NOT_FOUND,
                format!("service {service} not found in cluster {cluster}"),
                None,
            ));
        };
        let (running, desired) = (n(&svc, "runningCount"), n(&svc, "desiredCount"));
        let deployments = svc["deployments"].as_array().map_or(0, Vec::len);
        bar.set_length(desired.max(0) as u64);
        bar.set_position(running.max(0) as u64);
        bar.set_message(format!("{service}: {deployments} deployment(s)"));
        bar.tick();
        if is_steady(&svc) {
            bar.finish_and_clear();
            return Ok(svc);
        }
        let now = Instant::now();
        if now >= deadline {
            bar.abandon();
            return Err(fail(
                exit::TIMEOUT,
                format!(
                    "service {service} not steady after {}s: {running}/{desired} running, {} pending, {deployments} deployment(s)",
                    timeout.as_secs(),
                    n(&svc, "pendingCount")
                ),
                Some("`berth service describe` and `berth explain TASK` show why; raise --timeout to wait longer"),
            ));
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steadiness() {
        let v = json!({"status": "ACTIVE", "runningCount": 2, "desiredCount": 2, "deployments": [{}]});
        assert!(is_steady(&v));
        let v = json!({"status": "ACTIVE", "runningCount": 1, "desiredCount": 2, "deployments": [{}]});
        assert!(!is_steady(&v));
        let v = json!({"status": "ACTIVE", "runningCount": 2, "desiredCount": 2, "deployments": [{}, {}]});
        assert!(!is_steady(&v));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_timeout("never").is_err());
    }
}
