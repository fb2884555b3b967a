//! Target groups: their targets, which of them are in service, and the round-robin choice of
//! the next one. The health checker ([`crate::health`]) is the only writer of a target's
//! health; requests only read it.

use crate::config::{HealthCheckConfig, TargetGroupConfig};
use crate::error::GatewayError;
use http::uri::Authority;
use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One target: a process that serves the group's requests.
#[derive(Debug)]
pub struct Target {
    /// `host:port`, the authority of the URLs sent to it (and its label in metrics and logs).
    pub(crate) authority: Authority,
    /// Whether the health checks last found it healthy. Targets start healthy (see
    /// docs/gateway.md), so a fresh gateway routes at once.
    healthy: AtomicBool,
}

impl Target {
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// A target group, ready for requests.
#[derive(Debug)]
pub struct TargetGroup {
    pub(crate) name: String,
    pub(crate) targets: Vec<Target>,
    /// Indexes of the healthy targets. When it is empty every target is used (fail open, as
    /// ALB does). Replaced as a whole by the health checker when a target changes state, so a
    /// request reads one consistent list without taking a lock for longer than a clone.
    in_service: RwLock<Arc<[usize]>>,
    /// The round-robin position: the count of choices made so far.
    next: AtomicUsize,
    /// How long a target has to answer with its response headers.
    pub(crate) request_timeout: Duration,
    /// The checked health check settings.
    pub(crate) health: HealthCheck,
}

/// Checked health check settings.
#[derive(Clone, Debug)]
pub(crate) struct HealthCheck {
    pub enabled: bool,
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub success: SuccessCodes,
}

/// The status codes a health check accepts, as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SuccessCodes(Vec<(u16, u16)>);

impl SuccessCodes {
    /// Parses `"200"`, `"200-299"` or `"200,204,301-302"`.
    pub fn parse(s: &str) -> Result<SuccessCodes, String> {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let code = |v: &str| -> Result<u16, String> {
                match v.trim().parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => Ok(c),
                    _ => Err(format!(
                        "{part:?} is not a status code or a range of them (100 to 599)"
                    )),
                }
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!("the range {part:?} is empty"));
            }
            ranges.push((lo, hi));
        }
        Ok(SuccessCodes(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl TargetGroup {
    /// Checks one `[[gateway.target_groups]]` entry; `at` names it in errors.
    pub(crate) fn new(config: &TargetGroupConfig, at: &str) -> Result<TargetGroup, GatewayError> {
        let err =
            |field: &str, reason: String| GatewayError::config(format!("{at}.{field}"), reason);
        if config.name.is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        let mut targets = Vec::with_capacity(config.targets.len());
        for (i, raw) in config.targets.iter().enumerate() {
            let authority =
                parse_target(raw).map_err(|reason| err(&format!("targets[{i}]"), reason))?;
            if targets.iter().any(|t: &Target| t.authority == authority) {
                return Err(err(
                    &format!("targets[{i}]"),
                    format!("{raw:?} is listed twice"),
                ));
            }
            targets.push(Target {
                authority,
                healthy: AtomicBool::new(true),
            });
        }
        if config.request_timeout_ms == 0 {
            return Err(err("request_timeout_ms", "must be above 0".into()));
        }
        let health = check_health(&config.health_check)
            .map_err(|(field, reason)| err(&format!("health_check.{field}"), reason))?;
        let all: Arc<[usize]> = (0..targets.len()).collect();
        Ok(TargetGroup {
            name: config.name.clone(),
            targets,
            in_service: RwLock::new(all),
            next: AtomicUsize::new(0),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            health,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next target in round-robin order among the healthy ones, or among all of them when
    /// none is healthy. `None` only when the group has no target at all.
    pub(crate) fn pick(&self) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let in_service = self.in_service.read().clone();
        if in_service.is_empty() {
            return Some(&self.targets[turn % self.targets.len()]);
        }
        Some(&self.targets[in_service[turn % in_service.len()]])
    }

    /// Records the health checker's verdict on target `index`; returns whether it changed.
    pub(crate) fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let was = self.targets[index].healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            let list: Arc<[usize]> = (0..self.targets.len())
                .filter(|&i| self.targets[i].is_healthy())
                .collect();
            *self.in_service.write() = list;
        }
        was != healthy
    }
}

/// Parses `host:port` or `http://host:port` (a trailing `/` allowed).
fn parse_target(raw: &str) -> Result<Authority, String> {
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{raw:?}: the scheme {scheme:?} is not supported; targets are plain HTTP"
            ));
        }
        None => raw,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: Authority = rest
        .parse()
        .map_err(|_| format!("{raw:?} is not a host:port"))?;
    if authority.as_str().contains('@') || rest.contains('/') {
        return Err(format!("{raw:?} must be only host:port"));
    }
    match authority.port_u16() {
        Some(p) if p > 0 => {}
        _ => return Err(format!("{raw:?} has no port; write it as host:port")),
    }
    if authority.host().is_empty() {
        return Err(format!("{raw:?} has no host"));
    }
    Ok(authority)
}

fn check_health(c: &HealthCheckConfig) -> Result<HealthCheck, (&'static str, String)> {
    if !c.path.starts_with('/') {
        return Err(("path", format!("{:?} must start with `/`", c.path)));
    }
    let path = c
        .path
        .parse::<http::uri::PathAndQuery>()
        .map_err(|_| ("path", format!("{:?} is not a valid URL path", c.path)))?;
    if c.interval_ms < 10 {
        return Err(("interval_ms", "must be at least 10".into()));
    }
    if c.timeout_ms == 0 || c.timeout_ms >= c.interval_ms {
        return Err((
            "timeout_ms",
            format!(
                "must be above 0 and less than interval_ms ({})",
                c.interval_ms
            ),
        ));
    }
    for (field, v) in [
        ("healthy_threshold", c.healthy_threshold),
        ("unhealthy_threshold", c.unhealthy_threshold),
    ] {
        if !(1..=10).contains(&v) {
            return Err((field, format!("{v} is out of range (1 to 10)")));
        }
    }
    let success = SuccessCodes::parse(&c.success_codes).map_err(|e| ("success_codes", e))?;
    Ok(HealthCheck {
        enabled: c.enabled,
        path,
        interval: Duration::from_millis(c.interval_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        healthy_threshold: c.healthy_threshold,
        unhealthy_threshold: c.unhealthy_threshold,
        success,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_codes() {
        let c = SuccessCodes::parse("200,204, 301-302").unwrap();
        assert!(c.contains(200) && c.contains(204) && c.contains(302));
        assert!(!c.contains(201) && !c.contains(500));
        for bad in ["", "abc", "200-", "99", "600", "300-200", "200,,204", "2OO"] {
            assert!(SuccessCodes::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn targets() {
        for good in [
            "127.0.0.1:80",
            "http://api-1:8080",
            "http://[::1]:9000/",
            "a.b:1",
        ] {
            parse_target(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "",
            "host",
            "https://host:443",
            "host:0",
            "host:99999",
            "user@host:80",
            "host:80/path",
            ":80",
            "ho st:80",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
