//! The configuration pushed into [`crate::Lb::apply`]: listeners with rules,
//! and target groups with their targets and policies. Plain data; the store
//! integration builds it from its own records.

use std::net::SocketAddr;
use std::time::Duration;

use crate::balance::Algorithm;
use crate::budget::RetryBudgetConfig;
use crate::error::LbError;
use crate::health::HealthCheck;
use crate::outlier::OutlierConfig;

/// Everything the data plane serves. Applying a new one replaces the old one
/// atomically; requests in flight finish on the targets they started on.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub target_groups: Vec<TargetGroupConfig>,
}

/// A listener and its routing table.
#[derive(Debug, Clone, Default)]
pub struct ListenerConfig {
    pub name: String,
    /// Where [`crate::Lb::run`] binds it. `None`: the caller hands a socket
    /// to [`crate::Lb::serve`] (or [`crate::Lb::serve_threads`]) itself.
    pub bind: Option<SocketAddr>,
    /// Tried in order; the first match wins.
    pub rules: Vec<Rule>,
    /// Target group for requests no rule matches (404 when `None`).
    pub default_target_group: Option<String>,
}

/// Matches requests by host header and path prefix.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Exact host (port ignored, case-insensitive), or `*.suffix`; `None`
    /// matches any host.
    pub host: Option<String>,
    /// `None` matches any path.
    pub path_prefix: Option<String>,
    pub target_group: String,
}

/// A set of targets with health checks and failure policies.
#[derive(Debug, Clone)]
pub struct TargetGroupConfig {
    pub name: String,
    pub targets: Vec<SocketAddr>,
    pub algorithm: Algorithm,
    /// `None`: targets count as healthy as soon as they are registered.
    pub health_check: Option<HealthCheck>,
    pub outlier: OutlierConfig,
    pub retry_budget: RetryBudgetConfig,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Circuit breaker: requests outstanding on one target beyond which it
    /// takes no more.
    pub max_pending_per_target: u32,
    /// How long a deregistered target keeps finishing its requests.
    pub deregistration_delay: Duration,
    /// Time from sending a request to the target's response head.
    pub request_timeout: Duration,
}

impl TargetGroupConfig {
    /// A group with default policies.
    pub fn new(name: impl Into<String>, targets: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            targets,
            algorithm: Algorithm::LeastOutstanding,
            health_check: Some(HealthCheck::default()),
            outlier: OutlierConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
            max_attempts: 3,
            max_pending_per_target: 1024,
            deregistration_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Settings of the listening side, fixed for the life of an [`crate::Lb`].
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Largest request head (431 beyond). At least 8 KiB.
    pub max_header_bytes: usize,
    /// Largest request body (413 beyond).
    pub max_body_bytes: u64,
    /// Bodies up to this size are kept so that the request can be retried;
    /// larger ones are streamed and tried once.
    pub retry_buffer_bytes: u64,
    /// A client connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A request head must arrive within this time.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections kept per target.
    pub pool_max_idle_per_target: usize,
    /// Time to establish a connection to a target.
    pub connect_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            retry_buffer_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            pool_max_idle_per_target: 256,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// Checks references and names; [`crate::Lb::apply`] calls it.
    pub fn validate(&self) -> Result<(), LbError> {
        let mut names = std::collections::HashSet::new();
        for g in &self.target_groups {
            if g.name.is_empty() || !names.insert(g.name.as_str()) {
                return Err(LbError::Config(format!(
                    "target group name '{}' is empty or repeated",
                    g.name
                )));
            }
            if g.max_attempts == 0 || g.max_pending_per_target == 0 {
                return Err(LbError::Config(format!(
                    "target group '{}': max_attempts and max_pending_per_target must be at least 1",
                    g.name
                )));
            }
        }
        let mut listeners = std::collections::HashSet::new();
        for l in &self.listeners {
            if !listeners.insert(l.name.as_str()) {
                return Err(LbError::Config(format!("listener name '{}' is repeated", l.name)));
            }
            let refs = l
                .rules
                .iter()
                .map(|r| &r.target_group)
                .chain(l.default_target_group.as_ref());
            for tg in refs {
                if !names.contains(tg.as_str()) {
                    return Err(LbError::Config(format!(
                        "listener '{}' routes to unknown target group '{tg}'",
                        l.name
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Rule {
    /// Whether the rule takes a request for `host` (without port,
    /// lowercase) and `path`.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match self.host.as_deref() {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1 && host.ends_with(suffix) && {
                        let cut = host.len() - suffix.len();
                        host.as_bytes()[cut - 1] == b'.'
                    }
                }
                None => h.eq_ignore_ascii_case(host),
            },
        };
        host_ok && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: Option<&str>, prefix: Option<&str>) -> Rule {
        Rule {
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            target_group: "g".into(),
        }
    }

    #[test]
    fn rules_match_host_and_prefix() {
        assert!(rule(None, None).matches("a", "/"));
        assert!(rule(Some("api.example.com"), None).matches("api.example.com", "/x"));
        assert!(!rule(Some("api.example.com"), None).matches("web.example.com", "/x"));
        assert!(rule(Some("*.example.com"), Some("/v1")).matches("api.example.com", "/v1/x"));
        assert!(!rule(Some("*.example.com"), Some("/v1")).matches("api.example.com", "/v2"));
        assert!(!rule(Some("*.example.com"), None).matches("example.com", "/"));
        assert!(!rule(Some("*.example.com"), None).matches("badexample.com", "/"));
    }

    #[test]
    fn validation_catches_dangling_references() {
        let mut c = Config {
            listeners: vec![ListenerConfig {
                name: "l".into(),
                rules: vec![rule(None, None)],
                ..Default::default()
            }],
            target_groups: vec![TargetGroupConfig::new("g", vec![])],
        };
        assert!(c.validate().is_ok());
        c.listeners[0].default_target_group = Some("nope".into());
        assert!(c.validate().is_err());
        c.listeners[0].default_target_group = None;
        c.target_groups.push(TargetGroupConfig::new("g", vec![]));
        assert!(c.validate().is_err());
    }
}
