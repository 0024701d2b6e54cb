//! Active health-check state: consecutive passes and failures move a target
//! between healthy and unhealthy. Pure: the shell runs the probes.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Settings of active health checks for a target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path probed with GET.
    pub path: String,
    pub interval: Duration,
    /// A probe without an answer in this time fails.
    pub timeout: Duration,
    /// Consecutive passes that make a target healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a target unhealthy.
    pub unhealthy_threshold: u32,
    /// Status codes that pass (e.g. `200..=299`).
    pub matcher: Vec<RangeInclusive<u16>>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            matcher: vec![200..=399],
        }
    }
}

impl HealthCheck {
    pub fn matches(&self, status: u16) -> bool {
        self.matcher.iter().any(|r| r.contains(&status))
    }
}

/// Where a target stands with its health checks (ALB's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Registered; not enough passes yet.
    Initial,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Initial => "initial",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// Per-target health-check state.
#[derive(Debug, Clone)]
pub struct HealthState {
    status: HealthStatus,
    passes: u32,
    failures: u32,
}

impl HealthState {
    /// A new target: `Initial`, or `Healthy` straight away when its group
    /// has no health check.
    pub fn new(checked: bool) -> Self {
        let status = if checked {
            HealthStatus::Initial
        } else {
            HealthStatus::Healthy
        };
        Self {
            status,
            passes: 0,
            failures: 0,
        }
    }

    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Records one probe; returns the new status when it changed.
    pub fn observe(&mut self, passed: bool, check: &HealthCheck) -> Option<HealthStatus> {
        let before = self.status;
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.passes >= check.healthy_threshold.max(1) {
                self.status = HealthStatus::Healthy;
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= check.unhealthy_threshold.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_move_between_states() {
        let hc = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        };
        let mut s = HealthState::new(true);
        assert_eq!(s.status(), HealthStatus::Initial);
        assert_eq!(s.observe(true, &hc), None);
        assert_eq!(s.observe(true, &hc), Some(HealthStatus::Healthy));
        assert_eq!(s.observe(false, &hc), None);
        assert_eq!(s.observe(false, &hc), None);
        assert_eq!(s.observe(true, &hc), None);
        assert_eq!(s.observe(false, &hc), None);
        assert_eq!(s.observe(false, &hc), None);
        assert_eq!(s.observe(false, &hc), Some(HealthStatus::Unhealthy));
        assert_eq!(s.observe(true, &hc), None);
        assert_eq!(s.observe(true, &hc), Some(HealthStatus::Healthy));
    }

    #[test]
    fn matcher_uses_ranges_and_unchecked_targets_start_healthy() {
        let hc = HealthCheck {
            matcher: vec![200..=200, 204..=204],
            ..HealthCheck::default()
        };
        assert!(hc.matches(200) && hc.matches(204));
        assert!(!hc.matches(201) && !hc.matches(500));
        assert_eq!(HealthState::new(false).status(), HealthStatus::Healthy);
    }
}
