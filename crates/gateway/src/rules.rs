//! The routing table: listener rules checked and compiled from [`GatewayConfig`], and the
//! choice of the rule that handles a request. This module does no I/O; the actions are carried
//! out by [`crate::proxy`].

use crate::config::{
    ActionConfig, ConditionsConfig, FixedResponseConfig, ForwardConfig, GatewayConfig,
    RedirectConfig,
};
use crate::error::GatewayError;
use crate::pattern::{Case, Kind, Pattern};
use crate::target::TargetGroup;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The longest body of a fixed response, in bytes (ALB's limit).
pub const MAX_FIXED_BODY: usize = 1024;

/// The most weight a target group can have in a forward action (ALB's limit).
pub const MAX_WEIGHT: u32 = 999;

/// The compiled rules, lowest priority number first, and the default rule.
#[derive(Debug)]
pub(crate) struct Routes {
    rules: Vec<Rule>,
    default: Option<Rule>,
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    /// The rule's priority; `None` for the default rule.
    priority: Option<u32>,
    /// The metric and log label: the priority, or `default`.
    pub label: String,
    conditions: Vec<Condition>,
    pub action: Action,
}

/// One compiled condition; its values are alternatives.
#[derive(Debug)]
enum Condition {
    Path(Vec<Pattern>),
    Host(Vec<Pattern>),
    Method(Vec<Method>),
    Header {
        name: HeaderName,
        values: Vec<Pattern>,
    },
    Query(Vec<(Option<Pattern>, Pattern)>),
    SourceIp(Vec<IpNet>),
}

/// What a rule does.
#[derive(Debug)]
pub(crate) enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Fixed(Fixed),
}

/// A forward action: target groups with their cumulative weights.
#[derive(Debug)]
pub(crate) struct Forward {
    /// Each group with the sum of the weights up to and including it; groups of weight 0 are
    /// left out.
    groups: Vec<(Arc<TargetGroup>, u32)>,
    /// The sum of all weights.
    total: u32,
}

impl Forward {
    /// The target group for one request: a weighted random choice.
    pub fn choose(&self) -> &Arc<TargetGroup> {
        if self.groups.len() == 1 {
            return &self.groups[0].0;
        }
        let ticket = fastrand::u32(0..self.total);
        let i = self.groups.partition_point(|(_, upto)| *upto <= ticket);
        &self.groups[i].0
    }
}

/// One part of a redirect template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Protocol,
    Host,
    Port,
    Path,
    Query,
}

/// A redirect action.
#[derive(Debug)]
pub(crate) struct Redirect {
    /// `None`: the request's own protocol.
    protocol: Option<&'static str>,
    host: Vec<Piece>,
    /// `None`: the listener's port.
    port: Option<u16>,
    path: Vec<Piece>,
    query: Vec<Piece>,
    pub status: StatusCode,
}

/// The parts of a request a redirect can reuse.
pub(crate) struct RequestParts<'a> {
    pub protocol: &'static str,
    pub host: &'a str,
    pub port: u16,
    /// The path without its leading `/` (as ALB's `#{path}`).
    pub path: &'a str,
    pub query: &'a str,
}

impl Redirect {
    /// The `Location` for a request, or `None` when the result is not a valid header value.
    pub fn location(&self, req: &RequestParts<'_>) -> Option<HeaderValue> {
        let fill = |pieces: &[Piece], out: &mut String| {
            for piece in pieces {
                match piece {
                    Piece::Literal(s) => out.push_str(s),
                    Piece::Protocol => out.push_str(req.protocol),
                    Piece::Host => out.push_str(req.host),
                    Piece::Port => out.push_str(&req.port.to_string()),
                    Piece::Path => out.push_str(req.path),
                    Piece::Query => out.push_str(req.query),
                }
            }
        };
        let protocol = self.protocol.unwrap_or(req.protocol);
        let port = self.port.unwrap_or(req.port);
        let mut url = format!("{protocol}://");
        fill(&self.host, &mut url);
        let default_port = if protocol == "https" { 443 } else { 80 };
        if port != default_port {
            url.push(':');
            url.push_str(&port.to_string());
        }
        let path_start = url.len();
        fill(&self.path, &mut url);
        if !url[path_start..].starts_with('/') {
            url.insert(path_start, '/');
        }
        let mut query = String::new();
        fill(&self.query, &mut query);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        HeaderValue::from_str(&url).ok()
    }
}

/// A fixed-response action.
#[derive(Debug)]
pub(crate) struct Fixed {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: bytes::Bytes,
}

/// What the conditions look at in a request.
pub(crate) struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The host without its port, when the request names one.
    pub host: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub source: IpAddr,
}

impl Routes {
    /// Checks the rules of `config` and compiles them against the target groups.
    pub fn new(
        config: &GatewayConfig,
        groups: &HashMap<String, Arc<TargetGroup>>,
    ) -> Result<Routes, GatewayError> {
        let mut seen = HashMap::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rc) in config.rules.iter().enumerate() {
            let at = format!("gateway.rules[{i}]");
            if let Some(other) = seen.insert(rc.priority, i) {
                return Err(GatewayError::config(
                    format!("{at}.priority"),
                    format!(
                        "priority {} is already used by gateway.rules[{other}]; priorities must be unique",
                        rc.priority
                    ),
                ));
            }
            let conditions = conditions(&rc.conditions, &format!("{at}.conditions"))?;
            if conditions.is_empty() {
                return Err(GatewayError::config(
                    format!("{at}.conditions"),
                    "a rule needs at least one condition; use default_action for the rule that matches everything",
                ));
            }
            rules.push(Rule {
                priority: Some(rc.priority),
                label: rc.priority.to_string(),
                conditions,
                action: action(&rc.action, &format!("{at}.action"), groups)?,
            });
        }
        rules.sort_by_key(|r| r.priority);
        let default = match &config.default_action {
            Some(a) => Some(Rule {
                priority: None,
                label: "default".into(),
                conditions: Vec::new(),
                action: action(a, "gateway.default_action", groups)?,
            }),
            None => None,
        };
        Ok(Routes { rules, default })
    }

    /// The rule that handles `req`: the first whose conditions all match, else the default.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.conditions.iter().all(|c| c.matches(req)))
            .or(self.default.as_ref())
    }
}

impl Condition {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        match self {
            Condition::Path(ps) => ps.iter().any(|p| p.matches(req.path)),
            Condition::Host(ps) => req.host.is_some_and(|h| ps.iter().any(|p| p.matches(h))),
            Condition::Method(ms) => ms.contains(req.method),
            Condition::Header { name, values } => req.headers.get_all(name).iter().any(|v| {
                // A value that is not text (obs-text bytes) matches no pattern.
                v.to_str()
                    .is_ok_and(|v| values.iter().any(|p| p.matches(v)))
            }),
            Condition::Query(pairs) => req.query.is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes()).any(|(k, v)| {
                    pairs.iter().any(|(kp, vp)| {
                        kp.as_ref().is_none_or(|kp| kp.matches(&k)) && vp.matches(&v)
                    })
                })
            }),
            Condition::SourceIp(nets) => nets.iter().any(|n| n.contains(&req.source)),
        }
    }
}

fn patterns(
    values: &[String],
    kind: Kind,
    case: Case,
    at: &str,
) -> Result<Vec<Pattern>, GatewayError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Pattern::new(v, kind, case)
                .map_err(|e| GatewayError::config(format!("{at}[{i}]"), format!("{v:?}: {e}")))
        })
        .collect()
}

fn conditions(c: &ConditionsConfig, at: &str) -> Result<Vec<Condition>, GatewayError> {
    let mut out = Vec::new();
    if !c.path.is_empty() {
        out.push(Condition::Path(patterns(
            &c.path,
            Kind::Path,
            Case::Sensitive,
            &format!("{at}.path"),
        )?));
    }
    if !c.host.is_empty() {
        out.push(Condition::Host(patterns(
            &c.host,
            Kind::Host,
            Case::Insensitive,
            &format!("{at}.host"),
        )?));
    }
    if !c.method.is_empty() {
        let mut methods = Vec::new();
        for (i, m) in c.method.iter().enumerate() {
            let ok = !m.is_empty()
                && m.len() <= 40
                && m.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            let method = Method::from_bytes(m.as_bytes()).ok().filter(|_| ok);
            match method {
                Some(method) => methods.push(method),
                None => {
                    return Err(GatewayError::config(
                        format!("{at}.method[{i}]"),
                        format!("{m:?} is not a method name (upper-case letters, `-` and `_`)"),
                    ));
                }
            }
        }
        out.push(Condition::Method(methods));
    }
    for (i, h) in c.header.iter().enumerate() {
        let hat = format!("{at}.header[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            GatewayError::config(
                format!("{hat}.name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        if h.values.is_empty() {
            return Err(GatewayError::config(
                format!("{hat}.values"),
                "give at least one value pattern",
            ));
        }
        let values = patterns(
            &h.values,
            Kind::Value,
            Case::Insensitive,
            &format!("{hat}.values"),
        )?;
        out.push(Condition::Header { name, values });
    }
    if !c.query.is_empty() {
        let mut pairs = Vec::new();
        for (i, q) in c.query.iter().enumerate() {
            let qat = format!("{at}.query[{i}]");
            let key =
                match &q.key {
                    Some(k) => Some(Pattern::new(k, Kind::Value, Case::Insensitive).map_err(
                        |e| GatewayError::config(format!("{qat}.key"), format!("{k:?}: {e}")),
                    )?),
                    None => None,
                };
            let value = Pattern::new(&q.value, Kind::Value, Case::Insensitive).map_err(|e| {
                GatewayError::config(format!("{qat}.value"), format!("{:?}: {e}", q.value))
            })?;
            pairs.push((key, value));
        }
        out.push(Condition::Query(pairs));
    }
    if !c.source_ip.is_empty() {
        let mut nets = Vec::new();
        for (i, s) in c.source_ip.iter().enumerate() {
            let net: IpNet = s.trim().parse().map_err(|_| {
                GatewayError::config(
                    format!("{at}.source_ip[{i}]"),
                    format!("{s:?} is not a CIDR block like 10.0.0.0/8 or fd00::/8"),
                )
            })?;
            nets.push(net.trunc());
        }
        out.push(Condition::SourceIp(nets));
    }
    Ok(out)
}

fn action(
    a: &ActionConfig,
    at: &str,
    groups: &HashMap<String, Arc<TargetGroup>>,
) -> Result<Action, GatewayError> {
    Ok(match a {
        ActionConfig::Forward(f) => Action::Forward(forward(f, &format!("{at}.forward"), groups)?),
        ActionConfig::Redirect(r) => Action::Redirect(redirect(r, &format!("{at}.redirect"))?),
        ActionConfig::FixedResponse(f) => Action::Fixed(fixed(f, &format!("{at}.fixed_response"))?),
    })
}

fn forward(
    f: &ForwardConfig,
    at: &str,
    known: &HashMap<String, Arc<TargetGroup>>,
) -> Result<Forward, GatewayError> {
    let lookup = |name: &str, field: String| {
        known.get(name).cloned().ok_or_else(|| {
            GatewayError::config(
                field,
                format!("there is no target group named {name:?} in gateway.target_groups"),
            )
        })
    };
    let weighted: Vec<(Arc<TargetGroup>, u32)> = match (&f.target_group, f.target_groups.is_empty())
    {
        (Some(name), true) => vec![(lookup(name, format!("{at}.target_group"))?, 1)],
        (None, false) => {
            let mut out = Vec::new();
            for (i, w) in f.target_groups.iter().enumerate() {
                let group = lookup(&w.name, format!("{at}.target_groups[{i}].name"))?;
                if w.weight > MAX_WEIGHT {
                    return Err(GatewayError::config(
                        format!("{at}.target_groups[{i}].weight"),
                        format!("{} is above the most, {MAX_WEIGHT}", w.weight),
                    ));
                }
                if out
                    .iter()
                    .any(|(g, _): &(Arc<TargetGroup>, u32)| g.name == w.name)
                {
                    return Err(GatewayError::config(
                        format!("{at}.target_groups[{i}].name"),
                        format!("{:?} is listed twice", w.name),
                    ));
                }
                out.push((group, w.weight));
            }
            out
        }
        _ => {
            return Err(GatewayError::config(
                at,
                "give either target_group or target_groups (with weights), not both or neither",
            ));
        }
    };
    let mut total = 0;
    let mut groups = Vec::new();
    for (g, w) in weighted {
        if w > 0 {
            total += w;
            groups.push((g, total));
        }
    }
    if total == 0 {
        return Err(GatewayError::config(
            format!("{at}.target_groups"),
            "every weight is 0; at least one target group needs a weight above 0",
        ));
    }
    Ok(Forward { groups, total })
}

/// Splits a redirect template into literals and placeholders.
fn template(
    s: &str,
    field: &str,
    at: &str,
    allowed: fn(char) -> bool,
) -> Result<Vec<Piece>, GatewayError> {
    let err = |reason: String| GatewayError::config(format!("{at}.{field}"), reason);
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        match rest.find("#{") {
            Some(0) => {
                let end = rest.find('}').ok_or_else(|| {
                    err(format!(
                        "{s:?}: a placeholder `#{{` is not closed with `}}`"
                    ))
                })?;
                out.push(match &rest[2..end] {
                    "protocol" => Piece::Protocol,
                    "host" => Piece::Host,
                    "port" => Piece::Port,
                    "path" => Piece::Path,
                    "query" => Piece::Query,
                    other => {
                        return Err(err(format!(
                            "{s:?}: unknown placeholder #{{{other}}}; use #{{protocol}}, #{{host}}, #{{port}}, #{{path}} or #{{query}}"
                        )));
                    }
                });
                rest = &rest[end + 1..];
            }
            found => {
                let end = found.unwrap_or(rest.len());
                let lit = &rest[..end];
                if let Some(bad) = lit.chars().find(|&c| !allowed(c)) {
                    return Err(err(format!("{s:?}: {bad:?} is not allowed here")));
                }
                out.push(Piece::Literal(lit.to_owned()));
                rest = &rest[end..];
            }
        }
    }
    Ok(out)
}

fn redirect(r: &RedirectConfig, at: &str) -> Result<Redirect, GatewayError> {
    let protocol = match r.protocol.as_str() {
        "#{protocol}" => None,
        p if p.eq_ignore_ascii_case("http") => Some("http"),
        p if p.eq_ignore_ascii_case("https") => Some("https"),
        p => {
            return Err(GatewayError::config(
                format!("{at}.protocol"),
                format!("{p:?}: use HTTP, HTTPS or #{{protocol}}"),
            ));
        }
    };
    let port = match r.port.as_str() {
        "#{port}" => None,
        p => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(GatewayError::config(
                    format!("{at}.port"),
                    format!("{p:?}: use a port from 1 to 65535 or #{{port}}"),
                ));
            }
        },
    };
    let host = template(&r.host, "host", at, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '.'
    })?;
    if host.is_empty() {
        return Err(GatewayError::config(
            format!("{at}.host"),
            "must not be empty",
        ));
    }
    if !r.path.starts_with('/') {
        return Err(GatewayError::config(
            format!("{at}.path"),
            format!("{:?} must start with `/`", r.path),
        ));
    }
    let path = template(&r.path, "path", at, |c| {
        c.is_ascii_graphic() && c != '?' && c != '#'
    })?;
    let query = template(&r.query, "query", at, |c| c.is_ascii_graphic() && c != '#')?;
    let status = match r.status_code {
        301 => StatusCode::MOVED_PERMANENTLY,
        302 => StatusCode::FOUND,
        other => {
            return Err(GatewayError::config(
                format!("{at}.status_code"),
                format!("{other}: use 301 or 302"),
            ));
        }
    };
    let unchanged = RedirectConfig::default();
    if protocol.is_none()
        && port.is_none()
        && host == [Piece::Host]
        && r.path == unchanged.path
        && query == [Piece::Query]
    {
        return Err(GatewayError::config(
            at,
            "the redirect would send the client to the very URL it asked for; change at least one part",
        ));
    }
    Ok(Redirect {
        protocol,
        host,
        port,
        path,
        query,
        status,
    })
}

fn fixed(f: &FixedResponseConfig, at: &str) -> Result<Fixed, GatewayError> {
    let status = StatusCode::from_u16(f.status_code)
        .ok()
        .filter(|s| s.is_success() || s.is_client_error() || s.is_server_error())
        .ok_or_else(|| {
            GatewayError::config(
                format!("{at}.status_code"),
                format!("{}: use a 2XX, 4XX or 5XX code", f.status_code),
            )
        })?;
    let content_type = HeaderValue::from_str(&f.content_type)
        .ok()
        .filter(|_| !f.content_type.is_empty())
        .ok_or_else(|| {
            GatewayError::config(
                format!("{at}.content_type"),
                format!("{:?} is not a valid Content-Type", f.content_type),
            )
        })?;
    if f.body.len() > MAX_FIXED_BODY {
        return Err(GatewayError::config(
            format!("{at}.body"),
            format!(
                "{} bytes; at most {MAX_FIXED_BODY} are allowed",
                f.body.len()
            ),
        ));
    }
    Ok(Fixed {
        status,
        content_type,
        body: bytes::Bytes::from(f.body.clone()),
    })
}
