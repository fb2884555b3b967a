//! One request through the gateway: choose the rule, then forward, redirect or answer. Bodies
//! are streamed both ways, never collected. Every failure of a target becomes a problem+json
//! answer (502, 503 or 504); nothing here can panic on what a client or a target sends.

use crate::idle::IdleTimeout;
use crate::metrics;
use crate::rules::{Action, Forward, RequestParts, RequestView, Routes};
use axum::body::Body;
use axum::response::IntoResponse;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use kickstand_service::Problem;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// What a connection knows about itself, for the forwarded headers and redirects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The port the gateway listens on (`X-Forwarded-Port`, `#{port}`).
    pub local_port: u16,
}

/// The headers that describe one connection rather than the message (RFC 9110 section 7.6.1),
/// never forwarded either way.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Answers one request.
pub(crate) async fn handle(
    routes: &Routes,
    client: &Client<HttpConnector, Body>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<Body> {
    let started = Instant::now();
    let source = conn.peer.ip().to_canonical();
    let host = request_host(&req);
    let view = RequestView {
        path: req.uri().path(),
        query: req.uri().query(),
        host: host.as_deref(),
        method: req.method(),
        headers: req.headers(),
        source,
    };
    let (label, response) = match routes.route(&view) {
        None => (
            "none".to_owned(),
            Problem::not_found("no gateway rule matches this request").into_response(),
        ),
        Some(rule) => {
            let response = match &rule.action {
                Action::Fixed(f) => {
                    let mut resp = Response::new(Body::from(f.body.clone()));
                    *resp.status_mut() = f.status;
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, f.content_type.clone());
                    resp
                }
                Action::Redirect(r) => match host.as_deref() {
                    None => Problem::bad_request(
                        "the request has no valid Host header, which the redirect needs",
                    )
                    .into_response(),
                    Some(host) => {
                        let parts = RequestParts {
                            protocol: "http",
                            host,
                            port: conn.local_port,
                            path: req.uri().path().trim_start_matches('/'),
                            query: req.uri().query().unwrap_or(""),
                        };
                        match r.location(&parts) {
                            Some(location) => {
                                let mut resp = Response::new(Body::empty());
                                *resp.status_mut() = r.status;
                                resp.headers_mut().insert(header::LOCATION, location);
                                resp
                            }
                            None => Problem::bad_request(
                                "the redirect made from this request is not a valid URL",
                            )
                            .into_response(),
                        }
                    }
                },
                Action::Forward(f) => forward(f, client, req, conn, source).await,
            };
            (rule.label.clone(), response)
        }
    };
    ::metrics::counter!(metrics::REQUESTS, "rule" => label.clone(), "status" => response.status().as_str().to_owned())
        .increment(1);
    ::metrics::histogram!(metrics::REQUEST_SECONDS, "rule" => label)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The host the request names (from an absolute URL, else the `Host` header), without its
/// port; `None` when it names none or an invalid one.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.host().to_owned());
    }
    let raw = req.headers().get(header::HOST)?.to_str().ok()?;
    let authority: http::uri::Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    Some(authority.host().to_owned())
}

async fn forward(
    f: &Forward,
    client: &Client<HttpConnector, Body>,
    req: Request<Incoming>,
    conn: ConnInfo,
    source: IpAddr,
) -> Response<Body> {
    let group = f.choose();
    let Some(target) = group.pick() else {
        return Problem::unavailable(
            format!(
                "target group {:?} has no target to send the request to",
                group.name()
            ),
            5,
        )
        .into_response();
    };
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme("http")
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build();
    let Ok(uri) = uri else {
        return Problem::bad_request("the request's URL cannot be forwarded").into_response();
    };
    // An absolute-form request names its host in the URL; the target gets it as `Host`.
    if let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, source, conn.local_port);
    let upstream = Request::from_parts(parts, Body::new(body));

    match tokio::time::timeout(group.request_timeout, client.request(upstream)).await {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = IdleTimeout::new(body, group.request_timeout);
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(error)) => {
            let timed_out = is_timeout(&error);
            tracing::warn!(
                message = "gateway target failed",
                group = %group.name(),
                target = %target.authority(),
                error = format!("{error:#}"),
            );
            if timed_out {
                timeout_problem(group.name())
            } else if error.is_connect() {
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway",
                    format!("could not connect to a target of group {:?}", group.name()),
                )
                .into_response()
            } else {
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway",
                    format!(
                        "a target of group {:?} closed the connection or sent an invalid response",
                        group.name()
                    ),
                )
                .into_response()
            }
        }
        Err(_) => {
            tracing::warn!(
                message = "gateway target timed out",
                group = %group.name(),
                target = %target.authority(),
                timeout_ms = group.request_timeout.as_millis() as u64,
            );
            timeout_problem(group.name())
        }
    }
}

fn timeout_problem(group: &str) -> Response<Body> {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway timeout",
        format!("a target of group {group:?} did not answer in time"),
    )
    .into_response()
}

/// Whether an error's causes include an I/O timeout (a connect that timed out).
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Port`, as ALB does. `Host` passes through unchanged.
fn add_forwarded(headers: &mut HeaderMap, source: IpAddr, port: u16) {
    let ip = source.to_string();
    let mut xff: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(v.as_bytes());
    }
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(ip.as_bytes());
    // Every byte came from a valid header value or an IP address, so this cannot fail; should
    // it, the client's own list is dropped rather than the request.
    let value = HeaderValue::from_bytes(&xff)
        .unwrap_or_else(|_| HeaderValue::from_str(&ip).expect("an IP address is a header value"));
    headers.insert(X_FORWARDED_FOR, value);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(port));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        add_forwarded(&mut h, "::1".parse().unwrap(), 8080);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 198.51.100.1, ::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_PORT], "8080");
    }
}
