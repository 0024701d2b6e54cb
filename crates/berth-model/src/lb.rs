//! Load balancers (Berth's ALB): listeners on host ports with rules by host
//! header and path prefix, target groups with health-check settings, and the
//! targets registered in them. Shapes follow the ELBv2 API (camelCase here,
//! like the rest of Berth's JSON).

use serde::{Deserialize, Serialize};

use crate::validate::check_name;
use crate::{Timestamp, Validate, ValidationError};

/// How a target group spreads requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbAlgorithm {
    RoundRobin,
    #[default]
    LeastOutstanding,
}

/// Active health-check settings of a target group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealthCheck {
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Status codes that pass: `200`, `200-299`, `200,302`.
    #[serde(default = "default_matcher")]
    pub matcher: String,
}

fn default_path() -> String {
    "/".into()
}
fn default_interval() -> u32 {
    5
}
fn default_timeout() -> u32 {
    2
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    2
}
fn default_matcher() -> String {
    "200-399".into()
}

impl Default for TargetHealthCheck {
    fn default() -> Self {
        TargetHealthCheck {
            path: default_path(),
            interval_seconds: default_interval(),
            timeout_seconds: default_timeout(),
            healthy_threshold: default_healthy(),
            unhealthy_threshold: default_unhealthy(),
            matcher: default_matcher(),
        }
    }
}

impl TargetHealthCheck {
    /// The matcher as inclusive ranges of status codes.
    pub fn matcher_ranges(&self) -> Result<Vec<(u16, u16)>, ValidationError> {
        let bad = || {
            ValidationError::new(
                "matcher",
                format!("'{}' is not like 200, 200-299 or 200,302", self.matcher),
            )
        };
        let mut out = Vec::new();
        for part in self.matcher.split(',') {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad());
            }
            out.push((lo, hi));
        }
        Ok(out)
    }
}

impl Validate for TargetHealthCheck {
    fn validate(&self) -> Result<(), ValidationError> {
        if !self.path.starts_with('/') || self.path.len() > 1024 || self.path.chars().any(char::is_whitespace) {
            return Err(ValidationError::new("path", "must start with / and have no spaces"));
        }
        for (field, v, lo, hi) in [
            ("intervalSeconds", self.interval_seconds, 1, 300),
            ("timeoutSeconds", self.timeout_seconds, 1, 120),
            ("healthyThreshold", self.healthy_threshold, 1, 10),
            ("unhealthyThreshold", self.unhealthy_threshold, 1, 10),
        ] {
            if v < lo || v > hi {
                return Err(ValidationError::new(field, format!("{v} is not within {lo}..={hi}")));
            }
        }
        if self.timeout_seconds > self.interval_seconds {
            return Err(ValidationError::new(
                "timeoutSeconds",
                "must not be longer than intervalSeconds",
            ));
        }
        self.matcher_ranges().map(|_| ())
    }
}

/// A target group (`/lb/targetgroups/{name}`).
/// The name of a target group given by name or ARN
/// (`arn:aws:elasticloadbalancing:R:A:targetgroup/NAME/ID`).
pub fn target_group_name(s: &str) -> &str {
    if s.starts_with("arn:") {
        s.split_once(":targetgroup/")
            .map_or(s, |(_, rest)| rest.split('/').next().unwrap_or(rest))
    } else {
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetGroup {
    pub target_group_name: String,
    #[serde(default)]
    pub target_group_arn: String,
    /// Only `HTTP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub health_check: TargetHealthCheck,
    #[serde(default = "default_delay")]
    pub deregistration_delay_seconds: u32,
    #[serde(default)]
    pub algorithm: LbAlgorithm,
    /// Time from sending a request to a target to its response head.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u32,
}

fn default_request_timeout() -> u32 {
    30
}

fn default_protocol() -> String {
    "HTTP".into()
}
fn default_delay() -> u32 {
    30
}

impl Validate for TargetGroup {
    fn validate(&self) -> Result<(), ValidationError> {
        check_name("targetGroupName", &self.target_group_name)?;
        if self.target_group_name.len() > 32 {
            return Err(ValidationError::new("targetGroupName", "must be at most 32 characters"));
        }
        if self.protocol != "HTTP" {
            return Err(ValidationError::new(
                "protocol",
                format!("'{}' is not supported; only HTTP", self.protocol),
            ));
        }
        if !(1..=3600).contains(&self.request_timeout_seconds) {
            return Err(ValidationError::new("requestTimeoutSeconds", "must be 1 to 3600"));
        }
        if self.deregistration_delay_seconds > 3600 {
            return Err(ValidationError::new("deregistrationDelaySeconds", "must be 0 to 3600"));
        }
        self.health_check.validate().map_err(|e| e.within("healthCheck"))
    }
}

/// A routing rule of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerRule {
    /// Exact host or `*.suffix`; absent matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Absent matches any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Target group name (or ARN).
    pub target_group: String,
}

/// A listener: a host port and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Host port; 0 lets the data plane pick one (it reports the address).
    pub port: u16,
    #[serde(default)]
    pub rules: Vec<ListenerRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target_group: Option<String>,
}

/// A load balancer (`/lb/loadbalancers/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerDef {
    pub load_balancer_name: String,
    #[serde(default)]
    pub load_balancer_arn: String,
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub created_at: Timestamp,
}

impl Validate for LoadBalancerDef {
    fn validate(&self) -> Result<(), ValidationError> {
        check_name("loadBalancerName", &self.load_balancer_name)?;
        if self.listeners.is_empty() {
            return Err(ValidationError::new("listeners", "at least one listener is needed"));
        }
        let mut ports = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.port != 0 && !ports.insert(l.port) {
                return Err(ValidationError::new(
                    format!("listeners[{i}].port"),
                    format!("port {} is used twice", l.port),
                ));
            }
            for (j, r) in l.rules.iter().enumerate() {
                if let Some(p) = &r.path_prefix
                    && !p.starts_with('/')
                {
                    return Err(ValidationError::new(
                        format!("listeners[{i}].rules[{j}].pathPrefix"),
                        "must start with /",
                    ));
                }
                if r.host
                    .as_deref()
                    .is_some_and(|h| h.is_empty() || h.contains(['/', ' ']))
                {
                    return Err(ValidationError::new(
                        format!("listeners[{i}].rules[{j}].host"),
                        "must be a host name or *.suffix",
                    ));
                }
            }
            if l.rules.is_empty() && l.default_target_group.is_none() {
                return Err(ValidationError::new(
                    format!("listeners[{i}].defaultTargetGroup"),
                    "a listener needs rules or a default target group",
                ));
            }
        }
        Ok(())
    }
}

/// A registered target (`/lb/targets/{group}/{ip:port}`), written by the
/// reconciler's target controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRecord {
    /// `ip:port`.
    pub id: String,
    #[serde(default)]
    pub task_arn: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub service: String,
    /// `registered` or `draining`.
    pub state: String,
    pub registered_at: Timestamp,
    /// When draining: the time the task may be stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until: Option<Timestamp>,
}

/// A target's health as the data plane sees it (`/lb/health/{group}/{ip:port}`),
/// written on change only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealthRecord {
    /// `initial`, `healthy`, `unhealthy`, `ejected` or `draining`.
    pub state: String,
    /// Since when it is in this state.
    pub since: Timestamp,
    #[serde(default)]
    pub in_flight: u32,
}
