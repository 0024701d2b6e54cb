//! Container health checks from the task definition, run by the agent
//! through the driver's `exec`, with Docker's semantics: failures during
//! `startPeriod` do not count, `retries` consecutive failures make the
//! container UNHEALTHY, one success makes it HEALTHY. Unlike Docker the first
//! probe runs at once rather than after one interval, so a healthy task is
//! known sooner.

use std::sync::Arc;
use std::time::Duration;

use berth_model::{HealthCheck, HealthStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::driver::Driver;

/// The pure part: folds probe results into a status.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    retries: u32,
    start_period: Duration,
    failures: u32,
    status: HealthStatus,
}

impl HealthTracker {
    pub fn new(hc: &HealthCheck) -> Self {
        HealthTracker {
            retries: hc.retries.max(1),
            start_period: Duration::from_secs(u64::from(hc.start_period)),
            failures: 0,
            status: HealthStatus::Unknown,
        }
    }

    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Records one probe `since_start` after the container started; returns
    /// the new status when it changed.
    pub fn observe(&mut self, ok: bool, since_start: Duration) -> Option<HealthStatus> {
        let before = self.status;
        if ok {
            self.failures = 0;
            self.status = HealthStatus::Healthy;
        } else if since_start >= self.start_period || self.status == HealthStatus::Healthy {
            // A failure in the start period counts once the container has
            // been healthy (Docker does the same).
            self.failures += 1;
            if self.failures >= self.retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// The argv a health check command runs: `CMD` args as given, `CMD-SHELL`
/// through `/bin/sh -c`.
pub fn probe_argv(hc: &HealthCheck) -> Option<Vec<String>> {
    let (kind, rest) = hc.command.split_first()?;
    match kind.as_str() {
        "CMD" if !rest.is_empty() => Some(rest.to_vec()),
        "CMD-SHELL" if !rest.is_empty() => Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]),
        _ => None,
    }
}

/// One health report from a checker.
#[derive(Debug, Clone)]
pub(crate) struct HealthReport {
    pub slot: usize,
    pub status: HealthStatus,
    pub output: String,
}

/// Probes container `id` until the receiver goes away (the supervisor
/// aborts this task when the container exits).
pub(crate) async fn check_loop(
    driver: Arc<dyn Driver>,
    id: String,
    slot: usize,
    hc: HealthCheck,
    tx: mpsc::UnboundedSender<HealthReport>,
) {
    let Some(argv) = probe_argv(&hc) else {
        return;
    };
    let started = Instant::now();
    let interval = Duration::from_secs(u64::from(hc.interval.max(1)));
    let timeout = Duration::from_secs(u64::from(hc.timeout.max(1)));
    let mut tracker = HealthTracker::new(&hc);
    loop {
        let probe_at = Instant::now();
        let result = driver.exec(&id, &argv, timeout).await;
        let (ok, output) = match result {
            Ok(r) => (r.success(), r.output),
            Err(e) => (false, e.to_string()),
        };
        if let Some(status) = tracker.observe(ok, probe_at - started)
            && tx.send(HealthReport { slot, status, output }).is_err()
        {
            return;
        }
        tokio::time::sleep_until(probe_at + interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(retries: u32, start_period: u32) -> HealthCheck {
        HealthCheck {
            command: vec!["CMD-SHELL".into(), "curl -f localhost".into(), "|| exit 1".into()],
            interval: 1,
            timeout: 1,
            retries,
            start_period,
        }
    }

    #[test]
    fn retries_and_start_period() {
        let mut t = HealthTracker::new(&hc(2, 10));
        let s = Duration::from_secs;
        assert_eq!(t.observe(false, s(1)), None, "start period failures do not count");
        assert_eq!(t.observe(false, s(9)), None);
        assert_eq!(t.status(), HealthStatus::Unknown);
        assert_eq!(t.observe(false, s(11)), None, "first counted failure");
        assert_eq!(t.observe(false, s(12)), Some(HealthStatus::Unhealthy));
        assert_eq!(t.observe(true, s(13)), Some(HealthStatus::Healthy));
        assert_eq!(t.observe(true, s(14)), None, "no change, no report");
        assert_eq!(t.observe(false, s(15)), None);
        assert_eq!(t.observe(false, s(16)), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn healthy_then_failing_in_start_period_counts() {
        let mut t = HealthTracker::new(&hc(1, 60));
        assert_eq!(t.observe(true, Duration::from_secs(1)), Some(HealthStatus::Healthy));
        assert_eq!(t.observe(false, Duration::from_secs(2)), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn argv_forms() {
        assert_eq!(
            probe_argv(&hc(1, 0)).unwrap(),
            vec!["/bin/sh", "-c", "curl -f localhost || exit 1"]
        );
        let mut c = hc(1, 0);
        c.command = vec!["CMD".into(), "/bin/true".into()];
        assert_eq!(probe_argv(&c).unwrap(), vec!["/bin/true"]);
        c.command = vec!["NONE".into()];
        assert!(probe_argv(&c).is_none());
    }
}
