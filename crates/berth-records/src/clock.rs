//! Time and ids, injected: every component that stamps a record or names a
//! new one takes an [`Env`], so tests run controllers on a paused or manual
//! clock and with predictable ids.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_model::Timestamp;

/// Where "now" comes from.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// Where new record ids come from.
pub trait Ids: Send + Sync + Debug {
    /// A fresh 32-hex-digit id, the form ECS uses for tasks and instances.
    fn new_id(&self) -> String;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        now()
    }
}

/// Tokio's clock, anchored at the wall clock when made: under tokio's
/// paused time (`test-util`) it moves only as the runtime advances, so a
/// controller's timers and its timestamps agree.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            epoch: now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.epoch + self.start.elapsed().as_secs_f64()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(at: Timestamp) -> Self {
        ManualClock(Mutex::new(at))
    }

    pub fn set(&self, at: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub fn advance(&self, secs: f64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += secs;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Random ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn new_id(&self) -> String {
        new_id()
    }
}

/// `00000000000000000000000000000001`, `...02`, ...: ids a test can name.
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl Ids for SequentialIds {
    fn new_id(&self) -> String {
        format!("{:032x}", self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// The clock and the ids a component uses.
#[derive(Debug, Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn Ids>,
}

impl Env {
    /// The wall clock and random ids.
    pub fn system() -> Self {
        Env {
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_ids(mut self, ids: Arc<dyn Ids>) -> Self {
        self.ids = ids;
        self
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn new_id(&self) -> String {
        self.ids.new_id()
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::system()
    }
}

/// The wall clock, in seconds since the Unix epoch (millisecond precision,
/// as ECS timestamps are).
pub fn now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// A random 32-hex-digit id.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tokio_clock_starts_at_the_wall_clock_and_moves_with_tokio() {
        let c = TokioClock::new();
        let t0 = c.now();
        assert!((t0 - now()).abs() < 5.0);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(c.now() >= t0 + 0.02);
    }

    #[test]
    fn ids_are_32_hex_digits() {
        let s = SequentialIds::default();
        assert_eq!(s.new_id(), "00000000000000000000000000000001");
        let r = new_id();
        assert_eq!(r.len(), 32);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit()));
        let m = ManualClock::new(10.0);
        m.advance(2.5);
        assert_eq!(m.now(), 12.5);
    }
}
