//! Passive outlier detection: consecutive server errors or connection
//! failures eject a target for a period that grows with each ejection. Pure:
//! the caller passes `now`.

use std::time::{Duration, Instant};

/// Settings of outlier ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive 5xx answers that eject a target (0 disables).
    pub consecutive_5xx: u32,
    /// Consecutive connect errors or timeouts that eject a target (0 disables).
    pub consecutive_errors: u32,
    /// First ejection period; each further ejection adds one more.
    pub base_ejection: Duration,
    /// Longest ejection period.
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_errors: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// How one attempt on a target ended, as far as outlier detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer below 500.
    Success,
    /// A 5xx answer.
    ServerError,
    /// Could not connect, the connection broke, or no answer in time.
    Failure,
}

/// Per-target outlier state.
#[derive(Debug, Clone, Default)]
pub struct OutlierState {
    consecutive_5xx: u32,
    consecutive_errors: u32,
    /// Ejections in a row, not forgiven yet.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Nothing to remember: no failure streak, no ejection history.
    pub fn is_clean(&self) -> bool {
        self.consecutive_5xx == 0 && self.consecutive_errors == 0 && self.ejections == 0
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records an attempt's outcome; returns the end of a new ejection when
    /// this outcome causes one.
    pub fn record(&mut self, outcome: Outcome, now: Instant, cfg: &OutlierConfig) -> Option<Instant> {
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx = 0;
                self.consecutive_errors = 0;
                // A target that has served well for a whole max period since
                // its last ejection is forgiven its history.
                if let Some(until) = self.ejected_until
                    && now.saturating_duration_since(until) > cfg.max_ejection
                {
                    self.ejections = 0;
                    self.ejected_until = None;
                }
                None
            }
            Outcome::ServerError => {
                self.consecutive_5xx += 1;
                self.trip(
                    cfg.consecutive_5xx > 0 && self.consecutive_5xx >= cfg.consecutive_5xx,
                    now,
                    cfg,
                )
            }
            Outcome::Failure => {
                self.consecutive_errors += 1;
                self.trip(
                    cfg.consecutive_errors > 0 && self.consecutive_errors >= cfg.consecutive_errors,
                    now,
                    cfg,
                )
            }
        }
    }

    fn trip(&mut self, tripped: bool, now: Instant, cfg: &OutlierConfig) -> Option<Instant> {
        if !tripped || self.is_ejected(now) {
            return None;
        }
        self.consecutive_5xx = 0;
        self.consecutive_errors = 0;
        self.ejections = self.ejections.saturating_add(1);
        let period = cfg.base_ejection.saturating_mul(self.ejections).min(cfg.max_ejection);
        let until = now + period;
        self.ejected_until = Some(until);
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_errors: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        }
    }

    #[test]
    fn consecutive_5xx_eject_and_a_success_resets_the_count() {
        let t = Instant::now();
        let mut s = OutlierState::default();
        assert_eq!(s.record(Outcome::ServerError, t, &cfg()), None);
        assert_eq!(s.record(Outcome::ServerError, t, &cfg()), None);
        assert_eq!(s.record(Outcome::Success, t, &cfg()), None);
        assert_eq!(s.record(Outcome::ServerError, t, &cfg()), None);
        assert_eq!(s.record(Outcome::ServerError, t, &cfg()), None);
        assert!(!s.is_ejected(t));
        assert_eq!(
            s.record(Outcome::ServerError, t, &cfg()),
            Some(t + Duration::from_secs(10))
        );
        assert!(s.is_ejected(t + Duration::from_secs(9)));
        assert!(!s.is_ejected(t + Duration::from_secs(10)));
    }

    #[test]
    fn ejection_period_grows_up_to_the_max_and_is_forgiven_later() {
        let mut t = Instant::now();
        let mut s = OutlierState::default();
        let mut periods = vec![];
        for _ in 0..4 {
            s.record(Outcome::Failure, t, &cfg());
            let until = s.record(Outcome::Failure, t, &cfg()).expect("ejected");
            periods.push((until - t).as_secs());
            t = until;
        }
        assert_eq!(periods, vec![10, 20, 25, 25]);
        assert_eq!(s.ejections(), 4);
        // Healthy for longer than max_ejection after the last ejection ended.
        s.record(Outcome::Success, t + Duration::from_secs(26), &cfg());
        assert_eq!(s.ejections(), 0);
        assert!(s.is_clean());
    }

    #[test]
    fn failures_while_ejected_do_not_extend_the_ejection() {
        let t = Instant::now();
        let mut s = OutlierState::default();
        s.record(Outcome::Failure, t, &cfg());
        assert!(s.record(Outcome::Failure, t, &cfg()).is_some());
        assert_eq!(s.record(Outcome::Failure, t, &cfg()), None);
        assert_eq!(s.record(Outcome::Failure, t, &cfg()), None);
        assert_eq!(s.ejections(), 1);
    }

    #[test]
    fn zero_thresholds_disable_ejection() {
        let t = Instant::now();
        let off = OutlierConfig {
            consecutive_5xx: 0,
            consecutive_errors: 0,
            ..cfg()
        };
        let mut s = OutlierState::default();
        for _ in 0..100 {
            assert_eq!(s.record(Outcome::ServerError, t, &off), None);
            assert_eq!(s.record(Outcome::Failure, t, &off), None);
        }
    }
}
