//! A small HTTP/1.1 client on hyper for the load generator (`bench`) and the simulator (`sim`):
//! one connection per task, kept alive, no pooling or TLS.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

pub type Connection = SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request and reads the whole answer.
pub async fn request(
    sender: &mut Connection,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let (status, _, body) = request_with(sender, method, path, None, body).await?;
    Ok((status, body))
}

/// Sends one request with an optional bearer token; returns status, headers and body.
pub async fn request_with(
    sender: &mut Connection,
    method: hyper::Method,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
    sender.ready().await?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "kickstand")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// `host:port` and the path prefix of an `http://host:port/prefix` URL.
pub fn parse_target(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!(
            "--target must be an http:// URL (TLS belongs to a proxy in front of Kickstand)"
        )
    })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
    Ok((
        addr,
        format!("/{}", path.trim_end_matches('/')).replace("//", "/"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed() {
        let (addr, prefix) = parse_target("http://127.0.0.1:8080").unwrap();
        assert_eq!(addr.port(), 8080);
        assert_eq!(prefix, "/");
        assert_eq!(
            parse_target("http://127.0.0.1:80/kick/").unwrap().1,
            "/kick"
        );
        assert!(parse_target("https://127.0.0.1:8080").is_err());
        assert!(parse_target("127.0.0.1:8080").is_err());
    }
}
