//! The data plane following the store: builds a [`berth_lb::Config`] from
//! the `/lb/` records (load balancers, target groups, registered targets)
//! and applies it on every change, then reports the data plane's view back:
//! each registered target's health (written only when it changes), when a
//! draining target has no request left in flight (`drained`), and the
//! address each listener is served on (`/lb/bound/...`, so port 0 works).
//!
//! [`lb_config`] is shared with the standalone `berth lb --server`, which
//! fetches the same records over HTTP instead of watching the store.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth_lb::{Algorithm, Config, HealthCheck, Lb, ListenerConfig, Rule, TargetGroupConfig};
use berth_model::Timestamp;
use berth_model::{LbAlgorithm, LoadBalancerDef, TargetGroup, TargetHealthRecord, TargetRecord};
use berth_records::{Env, keys};
use berth_store::{CmpOp, Compare, DynStore, Op, RangeRequest, Revision, TxnRequest, WatchBatch};
use tokio::sync::watch;

use crate::ControlError;

/// The listener name of a load balancer's port in the data plane.
pub fn listener_name(lb: &str, port: u16) -> String {
    format!("{lb}:{port}")
}

/// The data plane configuration for these records: one listener per load
/// balancer port (bound on `bind_ip`), one group per target group with the
/// targets in state `registered` (draining ones are left out, so the data
/// plane drains them).
pub fn lb_config(
    lbs: &[LoadBalancerDef],
    groups: &[TargetGroup],
    targets: &[(String, TargetRecord)],
    bind_ip: IpAddr,
) -> Config {
    let mut cfg = Config::default();
    for g in groups {
        let addrs: Vec<SocketAddr> = targets
            .iter()
            .filter(|(name, t)| *name == g.target_group_name && t.state == "registered")
            .filter_map(|(_, t)| t.id.parse().ok())
            .collect();
        let mut tg = TargetGroupConfig::new(g.target_group_name.clone(), addrs);
        tg.algorithm = match g.algorithm {
            LbAlgorithm::RoundRobin => Algorithm::RoundRobin,
            LbAlgorithm::LeastOutstanding => Algorithm::LeastOutstanding,
        };
        let hc = &g.health_check;
        tg.health_check = Some(HealthCheck {
            path: hc.path.clone(),
            interval: Duration::from_secs(u64::from(hc.interval_seconds)),
            timeout: Duration::from_secs(u64::from(hc.timeout_seconds)),
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
            matcher: hc
                .matcher_ranges()
                .unwrap_or_else(|_| vec![(200, 399)])
                .into_iter()
                .map(|(a, b)| a..=b)
                .collect(),
        });
        tg.deregistration_delay = Duration::from_secs(u64::from(g.deregistration_delay_seconds));
        tg.request_timeout = Duration::from_secs(u64::from(g.request_timeout_seconds.max(1)));
        cfg.target_groups.push(tg);
    }
    let known = |n: &str| groups.iter().any(|g| g.target_group_name == n);
    for lb in lbs {
        for l in &lb.listeners {
            cfg.listeners.push(ListenerConfig {
                name: listener_name(&lb.load_balancer_name, l.port),
                bind: Some(SocketAddr::new(bind_ip, l.port)),
                rules: l
                    .rules
                    .iter()
                    .filter(|r| known(&r.target_group))
                    .map(|r| Rule {
                        host: r.host.clone(),
                        path_prefix: r.path_prefix.clone(),
                        target_group: r.target_group.clone(),
                    })
                    .collect(),
                default_target_group: l.default_target_group.clone().filter(|d| known(d)),
            });
        }
    }
    cfg
}

/// The records behind a configuration.
#[derive(Debug, Default, Clone)]
pub struct LbRecords {
    pub lbs: Vec<LoadBalancerDef>,
    pub groups: Vec<TargetGroup>,
    pub targets: Vec<(String, TargetRecord)>,
}

impl LbRecords {
    /// Decodes records from `(key, value)` pairs under `/lb/`.
    pub fn from_kvs<'a>(kvs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> LbRecords {
        let mut r = LbRecords::default();
        for (k, v) in kvs {
            let Ok(k) = std::str::from_utf8(k) else { continue };
            if k.starts_with(keys::LOADBALANCERS) {
                if let Ok(lb) = serde_json::from_slice(v) {
                    r.lbs.push(lb);
                }
            } else if k.starts_with(keys::TARGETGROUPS) {
                if let Ok(g) = serde_json::from_slice(v) {
                    r.groups.push(g);
                }
            } else if let Some(rest) = k.strip_prefix(keys::TARGETS)
                && let Some((g, _)) = rest.split_once('/')
                && let Ok(t) = serde_json::from_slice(v)
            {
                r.targets.push((g.to_string(), t));
            }
        }
        r
    }

    pub fn config(&self, bind_ip: IpAddr) -> Config {
        lb_config(&self.lbs, &self.groups, &self.targets, bind_ip)
    }
}

/// A health or listener-address report of the data plane.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// `(group, addr)` → state.
    pub health: BTreeMap<(String, String), (String, u32)>,
    /// `(load balancer, port)` → bound address.
    pub bound: BTreeMap<(String, u16), String>,
}

/// What the data plane reports for the registered targets of `records`.
pub fn report(lb: &Lb, records: &LbRecords) -> Report {
    let mut out = Report::default();
    let status = lb.status();
    for s in &status {
        let addr = s.addr.to_string();
        let registered = records
            .targets
            .iter()
            .any(|(g, t)| *g == s.group && t.id == addr && t.state == "registered");
        if registered {
            out.health
                .insert((s.group.clone(), addr), (s.state.to_string(), s.in_flight));
        }
    }
    // Draining targets: `drained` once the data plane holds no request for
    // them (it lists a target while draining and drops it when idle). One
    // it still lists in another state has not seen the change yet.
    for (g, t) in records.targets.iter().filter(|(_, t)| t.state == "draining") {
        let addr: Option<std::net::SocketAddr> = t.id.parse().ok();
        let seen = status.iter().find(|s| s.group == *g && Some(s.addr) == addr);
        let state = match seen {
            None => ("drained".to_string(), 0),
            Some(s) if s.state == "draining" && s.in_flight == 0 => ("drained".to_string(), 0),
            Some(s) if s.state == "draining" => ("draining".to_string(), s.in_flight),
            Some(_) => continue,
        };
        out.health.insert((g.clone(), t.id.clone()), state);
    }
    for l in &records.lbs {
        for p in &l.listeners {
            if let Some(a) = lb.listener_addr(&listener_name(&l.load_balancer_name, p.port)) {
                out.bound.insert((l.load_balancer_name.clone(), p.port), a.to_string());
            }
        }
    }
    out
}

/// Writes what changed in a report to the store.
async fn write_report(store: &DynStore, old: &Report, new: &Report, now: Timestamp) -> Result<(), ControlError> {
    for ((g, a), (state, in_flight)) in &new.health {
        if old.health.get(&(g.clone(), a.clone())).map(|(s, _)| s) == Some(state) {
            continue;
        }
        let key = keys::target_health(g, a);
        let cur = store.get(key.as_bytes()).await?;
        let same = cur
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<TargetHealthRecord>(&kv.value).ok())
            .is_some_and(|h| h.state == *state);
        if same {
            continue;
        }
        let rec = TargetHealthRecord {
            state: state.clone(),
            since: now,
            in_flight: *in_flight,
        };
        // Only while the target is still registered.
        let txn = TxnRequest::new()
            .when(Compare::exists(keys::target(g, a)))
            .when(Compare::mod_revision(
                &key,
                CmpOp::Equal,
                cur.map_or(0, |kv| kv.mod_revision),
            ))
            .then(Op::put(&key, berth_records::to_json(&rec)?));
        store.txn(txn).await?;
    }
    for ((l, p), a) in &new.bound {
        if old.bound.get(&(l.clone(), *p)) != Some(a) {
            let key = keys::lb_bound(l, *p);
            store
                .txn(
                    TxnRequest::new()
                        .when(Compare::exists(keys::loadbalancer(l)))
                        .then(Op::put(&key, a.as_bytes())),
                )
                .await?;
        }
    }
    Ok(())
}

/// The in-process data plane of `berth dev` / `berth server`: follows the
/// store's `/lb/` records into `lb` and reports health back.
pub struct LbFollower {
    store: DynStore,
    lb: Lb,
    bind_ip: IpAddr,
    env: Env,
}

impl LbFollower {
    pub fn new(store: DynStore, lb: Lb, bind_ip: IpAddr) -> Self {
        LbFollower {
            store,
            lb,
            bind_ip,
            env: Env::system(),
        }
    }

    /// Stamps health records with `env`'s clock.
    pub fn with_env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    /// Runs until `shutdown` completes: the records layer's `follow` loop
    /// over `/lb/`, which applies every change to the data plane, and a
    /// report of the data plane's view every 200 ms.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ControlError> {
        let (tx, rx) = watch::channel(Config::default());
        let lb = self.lb.clone();
        let runner = tokio::spawn(async move { lb.run(rx, 1).await });
        let store = self.store.clone();
        let clock = self.env.clock.clone();
        let result = berth_records::follow(
            store,
            clock,
            Following {
                follower: self,
                tx,
                last: Report::default(),
            },
            shutdown,
        )
        .await;
        let _ = runner.await;
        result
    }
}

/// How often the data plane's view is reported.
const REPORT_EVERY: f64 = 0.2;

/// The `/lb/` records as stored, and whether the data plane has them yet.
struct LbKvs {
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    records: LbRecords,
    applied: bool,
}

/// The follower's state across reloads (the data plane outlives them).
struct Following {
    follower: LbFollower,
    tx: watch::Sender<Config>,
    last: Report,
}

impl berth_records::Follower for Following {
    type View = LbKvs;
    type Error = ControlError;
    const NAME: &'static str = "load balancer follower";

    fn prefix(&self) -> &[u8] {
        keys::LB.as_bytes()
    }

    async fn load_view(&mut self) -> Result<(LbKvs, Revision), ControlError> {
        let resp = self
            .follower
            .store
            .range(RangeRequest::prefix(keys::LB.as_bytes()))
            .await?;
        let kvs: BTreeMap<Vec<u8>, Vec<u8>> = resp
            .kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect();
        let records = LbRecords::from_kvs(kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        Ok((
            LbKvs {
                kvs,
                records,
                applied: false,
            },
            resp.revision,
        ))
    }

    fn fold(&mut self, view: &mut LbKvs, b: &WatchBatch) -> bool {
        let mut relevant = false;
        for e in &b.events {
            let k = e.kv.key.to_vec();
            // What the data plane itself reports does not change its configuration.
            if k.starts_with(keys::TARGET_HEALTH.as_bytes()) || k.starts_with(keys::LB_BOUND.as_bytes()) {
                continue;
            }
            relevant = true;
            match e.kind {
                berth_store::EventKind::Put => {
                    view.kvs.insert(k, e.kv.value.to_vec());
                }
                berth_store::EventKind::Delete => {
                    view.kvs.remove(&k);
                }
            }
        }
        if relevant {
            view.records = LbRecords::from_kvs(view.kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            view.applied = false;
        }
        relevant
    }

    async fn step(&mut self, view: &mut LbKvs) -> Result<Option<Timestamp>, ControlError> {
        let f = &self.follower;
        if !view.applied {
            self.tx.send_replace(view.records.config(f.bind_ip));
            // Re-report everything against the new records.
            self.last = Report::default();
            view.applied = true;
        }
        let r = report(&f.lb, &view.records);
        if r != self.last {
            write_report(&f.store, &self.last, &r, f.env.now()).await?;
            self.last = r;
        }
        Ok(Some(f.env.now() + REPORT_EVERY))
    }
}
