//! The retry budget: retries may add at most `ratio` of the original
//! requests, plus a small floor per second, so that retries cannot amplify an
//! outage. Pure: the caller passes `now`.

use std::time::{Duration, Instant};

/// Settings of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Fraction of original requests that may be retried (0.2 = 20%).
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic (so that a quiet
    /// group can still retry).
    pub min_per_sec: f64,
    /// Most retries that may be saved up for a burst.
    pub max_balance: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10.0,
            max_balance: 100.0,
        }
    }
}

/// A token bucket filled by original requests and by time.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    cfg: RetryBudgetConfig,
    balance: f64,
    last_refill: Instant,
}

impl RetryBudget {
    pub fn new(cfg: RetryBudgetConfig, now: Instant) -> Self {
        Self {
            cfg,
            balance: cfg.min_per_sec.min(cfg.max_balance),
            last_refill: now,
        }
    }

    pub fn config(&self) -> RetryBudgetConfig {
        self.cfg
    }

    /// Records `n` original (non-retry) requests. Callers may batch: the
    /// proxy counts requests in an atomic and deposits the difference when it
    /// wants a retry.
    pub fn deposit(&mut self, n: u64) {
        self.balance = (self.balance + self.cfg.ratio * n as f64).min(self.cfg.max_balance);
    }

    /// Takes one retry from the budget; `false` means the retry must not
    /// happen.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last_refill);
        if elapsed > Duration::ZERO {
            self.balance = (self.balance + elapsed.as_secs_f64() * self.cfg.min_per_sec).min(self.cfg.max_balance);
            self.last_refill = now;
        }
        if self.balance >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_ratio_during_an_outage() {
        let t0 = Instant::now();
        let cfg = RetryBudgetConfig {
            ratio: 0.2,
            min_per_sec: 0.0,
            max_balance: 50.0,
        };
        let mut b = RetryBudget::new(cfg, t0);
        let mut retries = 0;
        for _ in 0..10_000 {
            b.deposit(1);
            // Every request fails and wants a retry.
            if b.try_withdraw(t0) {
                retries += 1;
            }
        }
        assert!((1_999..=2_000).contains(&retries), "retries={retries}");
    }

    #[test]
    fn batched_deposits_equal_single_ones_below_the_cap() {
        let t0 = Instant::now();
        let cfg = RetryBudgetConfig {
            ratio: 0.25,
            min_per_sec: 0.0,
            max_balance: 1000.0,
        };
        let mut b = RetryBudget::new(cfg, t0);
        b.deposit(40);
        let n = std::iter::from_fn(|| b.try_withdraw(t0).then_some(())).count();
        assert_eq!(n, 10);
    }

    #[test]
    fn time_refills_the_floor_and_the_balance_is_capped() {
        let t0 = Instant::now();
        let cfg = RetryBudgetConfig {
            ratio: 0.0,
            min_per_sec: 10.0,
            max_balance: 5.0,
        };
        let mut b = RetryBudget::new(cfg, t0);
        let mut n = 0;
        while b.try_withdraw(t0) {
            n += 1;
        }
        assert_eq!(n, 5);
        assert!(!b.try_withdraw(t0 + Duration::from_millis(50)));
        assert!(b.try_withdraw(t0 + Duration::from_millis(200)));
        // An hour of idleness saves at most max_balance.
        let later = t0 + Duration::from_secs(3600);
        let mut m = 0;
        while b.try_withdraw(later) {
            m += 1;
        }
        assert_eq!(m, 5);
    }
}

/// How one attempt ended, as far as the retry decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The target answered with this status.
    Status(u16),
    /// The request never reached the target (connect refused or timed out).
    NotSent,
    /// No answer within the request timeout.
    TimedOut,
    /// The connection broke after the request may have been sent.
    Broken,
}

/// Whether a failed attempt may be tried again on another target, before
/// asking the budget. Requests that never reached a target are always safe;
/// the others only when the method is idempotent. A request whose body was
/// streamed (not kept) cannot be sent twice.
pub fn retryable(attempt: Attempt, idempotent: bool, replayable: bool) -> bool {
    if !replayable {
        return false;
    }
    match attempt {
        Attempt::NotSent => true,
        Attempt::Status(s) => idempotent && matches!(s, 500 | 502 | 503 | 504),
        Attempt::TimedOut | Attempt::Broken => idempotent,
    }
}

/// Idempotent methods (RFC 9110 section 9.2.2).
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod decision_tests {
    use super::*;

    #[test]
    fn retry_decisions() {
        assert!(retryable(Attempt::NotSent, false, true));
        assert!(!retryable(Attempt::NotSent, true, false));
        assert!(retryable(Attempt::Status(503), true, true));
        assert!(!retryable(Attempt::Status(503), false, true));
        assert!(!retryable(Attempt::Status(501), true, true));
        assert!(!retryable(Attempt::Status(404), true, true));
        assert!(retryable(Attempt::TimedOut, true, true));
        assert!(!retryable(Attempt::Broken, false, true));
        assert!(is_idempotent(&http::Method::GET) && !is_idempotent(&http::Method::POST));
    }
}
