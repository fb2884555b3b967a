//! Real backends and a real gateway on loopback for the gateway's tests.

#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use futures_util::StreamExt;
use kickstand_gateway::{Gateway, GatewayConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A backend process: answers with its name and what it received.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

pub struct BackendState {
    pub name: String,
    /// The status `/healthz` answers with.
    pub health: AtomicU16,
    /// Requests seen, health checks excluded.
    pub hits: AtomicUsize,
    /// Where `/sse` takes its events from (one stream per backend).
    pub sse: Mutex<Option<mpsc::Receiver<Result<Bytes, std::io::Error>>>>,
    /// Told when `/upload` has received its first chunk.
    pub first_chunk: Mutex<Option<oneshot::Sender<usize>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            health: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
            sse: Mutex::new(None),
            first_chunk: Mutex::new(None),
        });
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/slow", any(slow))
            .route("/echo", any(echo_body))
            .route("/upload", any(upload))
            .route("/sse", get(sse))
            .fallback(describe)
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { addr, state }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }
}

async fn healthz(State(s): State<Arc<BackendState>>) -> StatusCode {
    StatusCode::from_u16(s.health.load(Ordering::SeqCst)).expect("a valid test status")
}

async fn slow(State(s): State<Arc<BackendState>>) -> &'static str {
    s.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    "late"
}

async fn echo_body(State(s): State<Arc<BackendState>>, req: Request) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    Response::new(Body::new(req.into_body()))
}

async fn upload(State(s): State<Arc<BackendState>>, req: Request) -> String {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let mut stream = req.into_body().into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        total += chunk.len();
        if let Some(tx) = s.first_chunk.lock().await.take() {
            let _ = tx.send(total);
        }
    }
    total.to_string()
}

async fn sse(State(s): State<Arc<BackendState>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let Some(rx) = s.sse.lock().await.take() else {
        return StatusCode::CONFLICT.into_response();
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn describe(
    State(s): State<Arc<BackendState>>,
    req: Request,
) -> axum::Json<serde_json::Value> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .keys()
        .map(|k| {
            let all: Vec<String> = req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (
                k.as_str().to_owned(),
                serde_json::Value::from(all.join(", ")),
            )
        })
        .collect();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    axum::Json(serde_json::json!({
        "backend": s.name,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// A gateway serving on loopback.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Completes the shutdown future given to `serve` (without waiting for it to return).
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn stop(mut self) {
        self.signal_stop();
        if let Some(served) = self.served.take() {
            tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .expect("serve returns after shutdown")
                .expect("serve did not panic");
        }
        self.gateway.shutdown().await;
    }
}

/// Parses `[gateway]` TOML the way kickstand.toml holds it.
pub fn parse(toml_text: &str) -> Result<GatewayConfig, toml::de::Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        gateway: GatewayConfig,
    }
    toml::from_str::<File>(toml_text).map(|f| f.gateway)
}

/// Starts a gateway from `[gateway]` TOML.
pub async fn gateway(toml_text: &str) -> Running {
    let config = parse(toml_text).expect("the test's config parses");
    let gateway = Gateway::start(config)
        .await
        .expect("the test's config is valid");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gateway");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(Arc::clone(&gateway).serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        gateway,
        addr,
        stop: Some(stop),
        served: Some(served),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a reqwest client")
}

/// GETs `url` and returns the status and the JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let resp = client().get(url).send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let body = resp.json().await.expect("a JSON body");
    (status, body)
}

/// Waits until `cond` holds, up to `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
