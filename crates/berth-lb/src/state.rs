//! Runtime state behind a configuration: targets with their health, outlier
//! and in-flight counts, groups with their budget and counters, and the
//! routing snapshot that requests read. `apply` builds a new snapshot that
//! reuses the state of targets that stay, so health and pools survive
//! config changes, and keeps removed targets draining.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::balance::{Candidate, error_penalty, next_error_score};
use crate::budget::RetryBudget;
use crate::config::{Config, ListenerConfig, TargetGroupConfig};
use crate::health::{HealthCheck, HealthState, HealthStatus};
use crate::metrics::Counters;
use crate::outlier::{Outcome, OutlierState};

/// Instants as nanoseconds since a process-wide epoch, for atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn to_nanos(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// Locks a mutex, recovering the data if a holder panicked: the states kept
/// here stay consistent field by field.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct TargetPolicy {
    health: HealthState,
    outlier: OutlierState,
}

/// One registered (or draining) target.
#[derive(Debug)]
pub(crate) struct Target {
    pub addr: SocketAddr,
    pub authority: http::uri::Authority,
    pub outstanding: AtomicU32,
    pub counters: Counters,
    status: AtomicU8,
    ejected_until: AtomicU64,
    draining: AtomicBool,
    drain_deadline: Mutex<Option<Instant>>,
    /// Generation of the health checker that may run; bumping it stops the
    /// running one.
    pub checker_gen: AtomicU64,
    health_check: Mutex<Option<HealthCheck>>,
    policy: Mutex<TargetPolicy>,
    /// Recent failures, see [`crate::balance::next_error_score`].
    error_score: AtomicU32,
    /// The outlier state is not clean: successes must be recorded under the
    /// lock. Lets the common case (success on a clean target) skip it.
    suspect: AtomicBool,
}

fn status_code(s: HealthStatus) -> u8 {
    match s {
        HealthStatus::Initial => 0,
        HealthStatus::Healthy => 1,
        HealthStatus::Unhealthy => 2,
    }
}

impl Target {
    fn new(addr: SocketAddr, check: Option<HealthCheck>) -> Self {
        let health = HealthState::new(check.is_some());
        Self {
            addr,
            authority: http::uri::Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1")),
            outstanding: AtomicU32::new(0),
            counters: Counters::default(),
            status: AtomicU8::new(status_code(health.status())),
            ejected_until: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drain_deadline: Mutex::new(None),
            checker_gen: AtomicU64::new(0),
            health_check: Mutex::new(check),
            policy: Mutex::new(TargetPolicy {
                health,
                outlier: OutlierState::default(),
            }),
            suspect: AtomicBool::new(false),
            error_score: AtomicU32::new(0),
        }
    }

    pub fn health(&self) -> HealthStatus {
        match self.status.load(Relaxed) {
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Unhealthy,
            _ => HealthStatus::Initial,
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        to_nanos(now) < self.ejected_until.load(Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn health_check(&self) -> Option<HealthCheck> {
        lock(&self.health_check).clone()
    }

    pub fn candidate(&self, now: Instant, max_pending: u32) -> Candidate {
        let outstanding = self.outstanding.load(Relaxed);
        Candidate {
            healthy: self.health() == HealthStatus::Healthy,
            ejected: self.is_ejected(now),
            draining: self.is_draining(),
            saturated: outstanding >= max_pending,
            outstanding,
            penalty: error_penalty(self.error_score.load(Relaxed)),
        }
    }

    /// Records an attempt for outlier detection; true when it ejected the
    /// target.
    pub fn record(&self, outcome: Outcome, now: Instant, group: &TargetGroupConfig) -> bool {
        let failed = outcome != Outcome::Success;
        let score = self.error_score.load(Relaxed);
        if failed || score != 0 {
            // Racy read-modify-write: an approximate score is good enough.
            self.error_score.store(next_error_score(score, failed), Relaxed);
        }
        if !failed && !self.suspect.load(Relaxed) {
            return false;
        }
        let mut p = lock(&self.policy);
        let ejected = p.outlier.record(outcome, now, &group.outlier);
        self.suspect.store(!p.outlier.is_clean(), Relaxed);
        match ejected {
            Some(until) => {
                self.ejected_until.store(to_nanos(until), Relaxed);
                self.counters.ejection();
                tracing::warn!(target = %self.addr, ejections = p.outlier.ejections(), "target ejected");
                true
            }
            None => false,
        }
    }

    /// Records a health probe.
    pub fn observe(&self, passed: bool, check: &HealthCheck) {
        let mut p = lock(&self.policy);
        if let Some(s) = p.health.observe(passed, check) {
            self.status.store(status_code(s), Relaxed);
            tracing::info!(target = %self.addr, status = s.as_str(), "target health changed");
        }
    }

    /// Its state as shown in metrics and status.
    pub fn state_name(&self, now: Instant) -> &'static str {
        if self.is_draining() {
            "draining"
        } else if self.is_ejected(now) {
            "ejected"
        } else {
            self.health().as_str()
        }
    }

    fn drained(&self, now: Instant) -> bool {
        self.outstanding.load(Relaxed) == 0 || lock(&self.drain_deadline).is_some_and(|d| now >= d)
    }
}

/// Counts a request against a target while it is outstanding.
#[derive(Debug)]
pub(crate) struct InFlight(pub Arc<Target>);

impl InFlight {
    pub fn new(t: Arc<Target>) -> Self {
        t.outstanding.fetch_add(1, Relaxed);
        Self(t)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Relaxed);
    }
}

/// Group state that outlives config versions.
#[derive(Debug)]
pub(crate) struct GroupShared {
    pub budget: Mutex<RetryBudget>,
    /// `counters.requests` when the budget last got its deposit.
    pub budget_seen: AtomicU64,
    pub cursor: AtomicU64,
    pub counters: Counters,
    pub in_flight: AtomicU64,
}

impl GroupShared {
    /// Deposits the requests seen since the last call, then asks for one
    /// retry.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut b = lock(&self.budget);
        let total = self.counters.requests();
        let seen = self.budget_seen.swap(total, Relaxed);
        b.deposit(total.saturating_sub(seen));
        b.try_withdraw(now)
    }
}

/// One target group in one routing snapshot.
#[derive(Debug)]
pub(crate) struct Group {
    pub cfg: TargetGroupConfig,
    pub targets: Vec<Arc<Target>>,
    pub draining: Vec<Arc<Target>>,
    pub shared: Arc<GroupShared>,
}

/// What requests read: immutable, swapped whole by `apply`.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    pub listeners: HashMap<String, ListenerConfig>,
    pub groups: HashMap<String, Arc<Group>>,
}

impl Routing {
    /// The group for a request on `listener`, or `None` (404).
    pub fn route(&self, listener: &str, host: &str, path: &str) -> Option<&Arc<Group>> {
        let l = self.listeners.get(listener)?;
        let name = l.rules.iter().find(|r| r.matches(host, path)).map(|r| &r.target_group);
        self.groups.get(name.or(l.default_target_group.as_ref())?)
    }
}

/// Builds the next snapshot from `old` and `cfg`. Returns it with the targets
/// that are new (they need health checkers).
pub(crate) fn build(old: &Routing, cfg: Config, now: Instant) -> (Routing, Vec<Arc<Target>>) {
    let mut fresh = Vec::new();
    let mut groups = HashMap::new();
    let mut kept: std::collections::HashSet<*const Target> = std::collections::HashSet::new();
    for gcfg in cfg.target_groups {
        let prev = old.groups.get(&gcfg.name);
        let shared = match prev {
            Some(p) => {
                let mut b = lock(&p.shared.budget);
                if b.config() != gcfg.retry_budget {
                    *b = RetryBudget::new(gcfg.retry_budget, now);
                }
                drop(b);
                p.shared.clone()
            }
            None => Arc::new(GroupShared {
                budget: Mutex::new(RetryBudget::new(gcfg.retry_budget, now)),
                budget_seen: AtomicU64::new(0),
                cursor: AtomicU64::new(0),
                counters: Counters::default(),
                in_flight: AtomicU64::new(0),
            }),
        };
        let mut targets = Vec::new();
        for addr in &gcfg.targets {
            if targets.iter().any(|t: &Arc<Target>| t.addr == *addr) {
                continue;
            }
            let reuse = prev.and_then(|p| p.targets.iter().chain(p.draining.iter()).find(|t| t.addr == *addr));
            let t = match reuse {
                Some(t) => {
                    let was_draining = t.draining.swap(false, Relaxed);
                    *lock(&t.drain_deadline) = None;
                    let mut hc = lock(&t.health_check);
                    let had = hc.is_some();
                    *hc = gcfg.health_check.clone();
                    if hc.is_some() && (was_draining || !had) {
                        fresh.push(t.clone());
                    }
                    if hc.is_none() {
                        t.status.store(status_code(HealthStatus::Healthy), Relaxed);
                    }
                    drop(hc);
                    t.clone()
                }
                None => {
                    let t = Arc::new(Target::new(*addr, gcfg.health_check.clone()));
                    if gcfg.health_check.is_some() {
                        fresh.push(t.clone());
                    }
                    t
                }
            };
            kept.insert(Arc::as_ptr(&t));
            targets.push(t);
        }
        let mut draining = Vec::new();
        if let Some(p) = prev {
            for t in p.targets.iter().chain(p.draining.iter()) {
                if kept.contains(&Arc::as_ptr(t)) {
                    continue;
                }
                if !t.is_draining() {
                    t.draining.store(true, Relaxed);
                    *lock(&t.drain_deadline) = Some(now + gcfg.deregistration_delay);
                }
                if !t.drained(now) {
                    draining.push(t.clone());
                }
            }
        }
        groups.insert(
            gcfg.name.clone(),
            Arc::new(Group {
                cfg: gcfg,
                targets,
                draining,
                shared,
            }),
        );
    }
    // Targets of groups that disappeared, and drained ones, stop checking.
    for g in old.groups.values() {
        for t in g.targets.iter().chain(g.draining.iter()) {
            if !kept.contains(&Arc::as_ptr(t)) {
                t.draining.store(true, Relaxed);
                t.checker_gen.fetch_add(1, Relaxed);
            }
        }
    }
    let listeners = cfg.listeners.into_iter().map(|l| (l.name.clone(), l)).collect();
    (Routing { listeners, groups }, fresh)
}

/// One target's state, for `berth targets` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub group: String,
    pub addr: SocketAddr,
    /// `initial`, `healthy`, `unhealthy`, `ejected` or `draining`.
    pub state: &'static str,
    pub in_flight: u32,
    /// Attempts sent to it.
    pub requests: u64,
    pub ejections: u64,
}

pub(crate) fn status(r: &Routing, now: Instant) -> Vec<TargetStatus> {
    let mut out = Vec::new();
    for (name, g) in &r.groups {
        // Draining targets are listed until they finish (or their delay ends).
        let draining = g.draining.iter().filter(|t| !t.drained(now));
        for t in g.targets.iter().chain(draining) {
            out.push(TargetStatus {
                group: name.clone(),
                addr: t.addr,
                state: t.state_name(now),
                in_flight: t.outstanding.load(Relaxed),
                requests: t.counters.requests(),
                ejections: t.counters.snapshot().ejections,
            });
        }
    }
    out.sort_by(|a, b| (&a.group, a.addr).cmp(&(&b.group, b.addr)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn cfg(targets: &[u16]) -> Config {
        let mut api = TargetGroupConfig::new("api", targets.iter().map(|p| addr(*p)).collect());
        api.health_check = None;
        let mut web = TargetGroupConfig::new("web", vec![addr(9)]);
        web.health_check = None;
        Config {
            listeners: vec![ListenerConfig {
                bind: None,
                name: "l".into(),
                rules: vec![
                    Rule {
                        host: Some("api.example.com".into()),
                        path_prefix: None,
                        target_group: "api".into(),
                    },
                    Rule {
                        host: None,
                        path_prefix: Some("/api/".into()),
                        target_group: "api".into(),
                    },
                ],
                default_target_group: Some("web".into()),
            }],
            target_groups: vec![api, web],
        }
    }

    #[test]
    fn routes_by_host_then_prefix_then_default() {
        let (r, _) = build(&Routing::default(), cfg(&[1]), Instant::now());
        let group = |host: &str, path: &str| r.route("l", host, path).map(|g| g.cfg.name.clone());
        assert_eq!(group("api.example.com", "/"), Some("api".into()));
        assert_eq!(group("www.example.com", "/api/v1"), Some("api".into()));
        assert_eq!(group("www.example.com", "/"), Some("web".into()));
        assert_eq!(r.route("other-listener", "x", "/").map(|g| g.cfg.name.clone()), None);
    }

    #[test]
    fn apply_keeps_targets_and_drains_removed_ones_until_idle() {
        let t0 = Instant::now();
        let (r1, _) = build(&Routing::default(), cfg(&[1, 2]), t0);
        let kept = r1.groups["api"].targets[0].clone();
        let removed = r1.groups["api"].targets[1].clone();
        let busy = InFlight::new(removed.clone());
        let (r2, _) = build(&r1, cfg(&[1, 3]), t0);
        let g = &r2.groups["api"];
        assert!(Arc::ptr_eq(&g.targets[0], &kept), "a kept target lost its state");
        assert_eq!(g.targets.len(), 2);
        assert!(removed.is_draining());
        assert_eq!(
            g.draining.len(),
            1,
            "a busy removed target must stay listed while draining"
        );
        assert_eq!(status(&r2, t0).iter().filter(|s| s.state == "draining").count(), 1);
        drop(busy);
        let (r3, _) = build(&r2, cfg(&[1, 3]), t0);
        assert!(r3.groups["api"].draining.is_empty());
        // Re-registering a drained target brings it back.
        let (r4, _) = build(&r3, cfg(&[1, 2, 3]), t0);
        assert_eq!(r4.groups["api"].targets.len(), 3);
        assert!(r4.groups["api"].targets.iter().all(|t| !t.is_draining()));
    }

    #[test]
    fn draining_ends_at_the_deregistration_delay_even_when_busy() {
        let t0 = Instant::now();
        let (r1, _) = build(&Routing::default(), cfg(&[1, 2]), t0);
        let removed = r1.groups["api"].targets[1].clone();
        let _busy = InFlight::new(removed);
        let (r2, _) = build(&r1, cfg(&[1]), t0);
        assert_eq!(r2.groups["api"].draining.len(), 1);
        let later = t0 + Duration::from_secs(31);
        let (r3, _) = build(&r2, cfg(&[1]), later);
        assert!(r3.groups["api"].draining.is_empty());
    }
}
