//! The gateway against real backends on real sockets: rules, conditions, actions, target
//! groups, health checks, failures and streaming.

mod common;

use bytes::Bytes;
use common::{Backend, client, eventually, gateway, get_json, parse};
use kickstand_gateway::Gateway;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A target group section with health checks off.
fn group(name: &str, targets: &[&Backend]) -> String {
    let list: Vec<String> = targets.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "[[gateway.target_groups]]\nname = \"{name}\"\ntargets = [{}]\nhealth_check.enabled = false\n",
        list.join(", ")
    )
}

fn fixed_rule(priority: u32, conditions: &str, body: &str) -> String {
    format!(
        "[[gateway.rules]]\npriority = {priority}\nconditions = {{ {conditions} }}\naction.fixed_response = {{ body = \"{body}\" }}\n"
    )
}

async fn text(url: &str) -> (u16, String) {
    let resp = client().get(url).send().await.expect("the gateway answers");
    (resp.status().as_u16(), resp.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_number_wins_and_default_is_last() {
    // Written out of order on purpose: the priority decides, not the position.
    let config = [
        "[gateway]\ndefault_action.fixed_response = { body = \"default\" }\n".to_owned(),
        fixed_rule(10, "path = [\"/api/*\"]", "ten"),
        fixed_rule(
            5,
            "path = [\"/api/v1/messages\", \"/api/v1/messages/*\"]",
            "five",
        ),
        fixed_rule(7, "path = [\"/api/v1/messages/*\"]", "seven"),
    ]
    .concat();
    let gw = gateway(&config).await;
    assert_eq!(
        text(&gw.url("/api/v1/messages/1")).await,
        (200, "five".into())
    );
    assert_eq!(
        text(&gw.url("/api/v1/messages")).await,
        (200, "five".into())
    );
    assert_eq!(text(&gw.url("/api/v1/scripts")).await, (200, "ten".into()));
    assert_eq!(text(&gw.url("/elsewhere")).await, (200, "default".into()));
    assert_eq!(text(&gw.url("/")).await, (200, "default".into()));
    gw.stop().await;

    // Without a default action, an unmatched request gets a 404 problem.
    let gw = gateway(&fixed_rule(1, "path = [\"/a\"]", "a")).await;
    let resp = client().get(gw.url("/b")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_condition_kind() {
    let config = [
        "[gateway]\ndefault_action.fixed_response = { status_code = 404, body = \"none\" }\n"
            .to_owned(),
        fixed_rule(1, "path = [\"/p/v?/x\"]", "path"),
        fixed_rule(2, "host = [\"*.Ops.Example.com\"]", "host"),
        fixed_rule(3, "method = [\"DELETE\", \"PATCH\"]", "method"),
        fixed_rule(
            4,
            "header = [{ name = \"X-Fleet\", values = [\"north-*\", \"south\"] }]",
            "header",
        ),
        fixed_rule(
            5,
            "query = [{ key = \"ver*\", value = \"2\" }, { value = \"*beta*\" }]",
            "query",
        ),
        fixed_rule(6, "source_ip = [\"10.0.0.0/8\", \"fd00::/8\"]", "never"),
        fixed_rule(
            7,
            "source_ip = [\"127.0.0.0/8\"], path = [\"/src\"]",
            "source",
        ),
        // Two conditions: both must hold.
        fixed_rule(8, "path = [\"/both\"], method = [\"POST\"]", "both"),
    ]
    .concat();
    let gw = gateway(&config).await;
    let c = client();
    let body = |r: reqwest::Response| async move { r.text().await.unwrap() };

    assert_eq!(
        body(c.get(gw.url("/p/v1/x")).send().await.unwrap()).await,
        "path"
    );
    assert_eq!(
        body(c.get(gw.url("/p/v12/x")).send().await.unwrap()).await,
        "none"
    );
    assert_eq!(
        body(c.get(gw.url("/P/v1/x")).send().await.unwrap()).await,
        "none"
    );

    let host = |h: &'static str| c.get(gw.url("/h")).header("host", h);
    assert_eq!(
        body(host("api.ops.example.COM").send().await.unwrap()).await,
        "host"
    );
    assert_eq!(
        body(host("api.ops.example.com:8443").send().await.unwrap()).await,
        "host"
    );
    assert_eq!(
        body(host("ops.example.com").send().await.unwrap()).await,
        "none"
    );

    assert_eq!(
        body(c.delete(gw.url("/m")).send().await.unwrap()).await,
        "method"
    );
    assert_eq!(
        body(c.get(gw.url("/m")).send().await.unwrap()).await,
        "none"
    );

    let hdr = |v: &'static str| c.get(gw.url("/x")).header("x-fleet", v);
    assert_eq!(body(hdr("NORTH-3").send().await.unwrap()).await, "header");
    assert_eq!(body(hdr("south").send().await.unwrap()).await, "header");
    assert_eq!(body(hdr("southwest").send().await.unwrap()).await, "none");

    assert_eq!(
        body(c.get(gw.url("/q?version=2")).send().await.unwrap()).await,
        "query"
    );
    assert_eq!(
        body(c.get(gw.url("/q?a=1&VER=2")).send().await.unwrap()).await,
        "query"
    );
    assert_eq!(
        body(c.get(gw.url("/q?x=is%20Beta%21")).send().await.unwrap()).await,
        "query"
    );
    assert_eq!(
        body(c.get(gw.url("/q?version=3")).send().await.unwrap()).await,
        "none"
    );

    assert_eq!(
        body(c.get(gw.url("/src")).send().await.unwrap()).await,
        "source"
    );

    assert_eq!(
        body(c.post(gw.url("/both")).send().await.unwrap()).await,
        "both"
    );
    assert_eq!(
        body(c.get(gw.url("/both")).send().await.unwrap()).await,
        "none"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_with_the_setting_named() {
    let fwd = "action.forward.target_group = \"g\"";
    let g = "[[gateway.target_groups]]\nname = \"g\"\ntargets = [\"127.0.0.1:9\"]\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.path = [\"/a\"]\n{fwd}\n[[gateway.rules]]\npriority = 1\nconditions.path = [\"/b\"]\n{fwd}\n"),
            "gateway.rules[1].priority",
        ),
        (
            format!("[[gateway.rules]]\npriority = 1\nconditions.path = [\"/a\"]\n{fwd}\n"),
            "gateway.rules[0].action.forward.target_group",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.path = [\"no-slash\"]\n{fwd}\n"),
            "gateway.rules[0].conditions.path[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.path = [\"\"]\n{fwd}\n"),
            "gateway.rules[0].conditions.path[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.host = [\"bad host\"]\n{fwd}\n"),
            "gateway.rules[0].conditions.host[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.path = [\"/{}\"]\n{fwd}\n", "a".repeat(200)),
            "gateway.rules[0].conditions.path[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.source_ip = [\"10.0.0.0/33\"]\n{fwd}\n"),
            "gateway.rules[0].conditions.source_ip[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.source_ip = [\"not-an-ip\"]\n{fwd}\n"),
            "gateway.rules[0].conditions.source_ip[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.method = [\"get\"]\n{fwd}\n"),
            "gateway.rules[0].conditions.method[0]",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions.header = [{{ name = \"bad name\", values = [\"x\"] }}]\n{fwd}\n"),
            "gateway.rules[0].conditions.header[0].name",
        ),
        (
            format!("{g}[[gateway.rules]]\npriority = 1\nconditions = {{}}\n{fwd}\n"),
            "gateway.rules[0].conditions",
        ),
        (
            format!("default_action.forward = {{ target_groups = [{{ name = \"g\", weight = 0 }}] }}\n{g}"),
            "gateway.default_action.forward.target_groups",
        ),
        (
            format!("default_action.forward = {{ target_groups = [{{ name = \"g\", weight = 1000 }}] }}\n{g}"),
            "gateway.default_action.forward.target_groups[0].weight",
        ),
        (
            format!("default_action.forward = {{ target_group = \"g\", target_groups = [{{ name = \"g\", weight = 1 }}] }}\n{g}"),
            "gateway.default_action.forward",
        ),
        (
            "default_action.redirect = {}\n".to_owned(),
            "gateway.default_action.redirect",
        ),
        (
            "default_action.redirect = { path = \"/#{nope}\" }\n".to_owned(),
            "gateway.default_action.redirect.path",
        ),
        (
            "default_action.redirect = { status_code = 307, protocol = \"HTTPS\" }\n".to_owned(),
            "gateway.default_action.redirect.status_code",
        ),
        (
            "default_action.fixed_response = { status_code = 302 }\n".to_owned(),
            "gateway.default_action.fixed_response.status_code",
        ),
        (
            format!("default_action.fixed_response = {{ body = \"{}\" }}\n", "x".repeat(1025)),
            "gateway.default_action.fixed_response.body",
        ),
        (
            "[[gateway.target_groups]]\nname = \"g\"\ntargets = [\"nohost\"]\n".to_owned(),
            "gateway.target_groups[0].targets[0]",
        ),
        (
            "[[gateway.target_groups]]\nname = \"g\"\nhealth_check.success_codes = \"200-abc\"\n".to_owned(),
            "gateway.target_groups[0].health_check.success_codes",
        ),
        (
            "[[gateway.target_groups]]\nname = \"g\"\nhealth_check = { interval_ms = 1000, timeout_ms = 1000 }\n".to_owned(),
            "gateway.target_groups[0].health_check.timeout_ms",
        ),
        (
            format!("{g}{g}"),
            "gateway.target_groups[1].name",
        ),
    ];
    for (body, at) in cases {
        let text = format!("[gateway]\n{body}");
        let config = parse(&text).unwrap_or_else(|e| panic!("{text}\ndoes not parse: {e}"));
        let Err(error) = Gateway::start(config).await else {
            panic!("accepted:\n{text}");
        };
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{at}: ")),
            "for\n{text}\nexpected an error at {at}, got: {message}"
        );
    }
    // Unknown settings are refused by the parser.
    for text in [
        "[gateway]\nlisten = \"0.0.0.0:80\"\nlistne = 1\n",
        "[gateway]\ndefault_action.fixed_response = { bdy = \"x\" }\n",
        "[gateway]\ndefault_action.teleport = {}\n",
        "[gateway]\nlisten = \"not an address\"\n",
    ] {
        assert!(parse(text).is_err(), "parsed:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weird_requests_get_an_answer_and_break_nothing() {
    let backend = Backend::start("b").await;
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n{}{}{}",
        group("g", &[&backend]),
        fixed_rule(
            1,
            "header = [{ name = \"x-odd\", values = [\"*é*\"] }]",
            "odd"
        ),
        fixed_rule(2, "query = [{ key = \"k\", value = \"*\" }]", "query"),
    );
    let gw = gateway(&config).await;
    let long_path = format!("/{}", "x".repeat(60_000));
    let requests: Vec<Vec<u8>> = vec![
        b"GET /%00%ff/../?a=%zz&&=&k HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a@b:80\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Odd: \xc3\xa9\xff\xfe\r\n\r\n".to_vec(),
        b"GET http://other.example:1/abs?k=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
    ];
    for raw in requests {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(&raw).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buf[..n]);
                        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "no answer to {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        );
        // Either a response or a closed connection; never a hang or a crash.
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1."),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    // Still serving.
    let (status, body) = get_json(&gw.url("/after")).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/after");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_method_path_query_body_and_forwarded_headers() {
    let backend = Backend::start("api").await;
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"api\"\n{}",
        group("api", &[&backend])
    );
    let gw = gateway(&config).await;
    let resp = client()
        .patch(gw.url("/api/v1/jobs/7?x=1&y=%20z"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "secret")
        .header("x-keep", "kept")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["backend"], "api");
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/api/v1/jobs/7");
    assert_eq!(seen["query"], "x=1&y=%20z");
    assert_eq!(seen["body"], "the body");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-port"], gw.addr.port().to_string());
    assert_eq!(h["host"], gw.addr.to_string(), "Host passes through");
    assert_eq!(h["x-keep"], "kept");
    assert!(
        h.get("x-drop-me").is_none(),
        "a header named by Connection was forwarded"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_the_targets() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n{}",
        group("g", &[&a, &b, &c])
    );
    let gw = gateway(&config).await;
    let mut order = Vec::new();
    for _ in 0..9 {
        let (_, body) = get_json(&gw.url("/x")).await;
        order.push(body["backend"].as_str().unwrap().to_owned());
    }
    assert_eq!(a.hits(), 3);
    assert_eq!(b.hits(), 3);
    assert_eq!(c.hits(), 3);
    // Strict rotation: no target twice in a row.
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_forward_follows_the_weights() {
    let (a, b, z) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("z").await,
    );
    let config = format!(
        "[gateway]\n\
         default_action.forward.target_groups = [{{ name = \"a\", weight = 3 }}, {{ name = \"b\", weight = 1 }}, {{ name = \"z\", weight = 0 }}]\n{}{}{}",
        group("a", &[&a]),
        group("b", &[&b]),
        group("z", &[&z]),
    );
    let gw = gateway(&config).await;
    let c = client();
    for _ in 0..400 {
        let resp = c.get(gw.url("/w")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let share = a.hits() as f64 / 400.0;
    assert!(
        (0.65..=0.85).contains(&share),
        "a got {share} of the requests, expected about 0.75"
    );
    assert_eq!(a.hits() + b.hits(), 400);
    assert_eq!(z.hits(), 0, "a group of weight 0 got requests");
    gw.stop().await;
}

fn health_group(name: &str, targets: &[&Backend]) -> String {
    let list: Vec<String> = targets.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "[[gateway.target_groups]]\nname = \"{name}\"\ntargets = [{}]\n\
         health_check = {{ path = \"/healthz\", interval_ms = 100, timeout_ms = 90, healthy_threshold = 3, unhealthy_threshold = 2, success_codes = \"200-204\" }}\n",
        list.join(", ")
    )
}

fn healthy(gw: &Gateway, target: &Backend) -> bool {
    let addr = target.addr.to_string();
    gw.target_health()
        .iter()
        .find(|t| t.target == addr)
        .expect("the target is listed")
        .healthy
}

async fn spread(gw: &common::Running, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get_json(&gw.url("/spread")).await;
        assert_eq!(status, 200);
        *seen
            .entry(body["backend"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_remove_a_failing_target_and_return_it() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n{}",
        health_group("g", &[&a, &b])
    );
    let gw = gateway(&config).await;
    // Targets start healthy and get requests at once.
    assert_eq!(spread(&gw, 4).await.len(), 2);

    b.set_health(503);
    eventually(10, "b out of service", || !healthy(&gw.gateway, &b)).await;
    assert!(healthy(&gw.gateway, &a));
    let seen = spread(&gw, 6).await;
    assert_eq!(seen.get("a"), Some(&6), "{seen:?}");

    // 204 is inside the success range 200-204.
    b.set_health(204);
    eventually(10, "b back in service", || healthy(&gw.gateway, &b)).await;
    let seen = spread(&gw, 6).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&3), Some(&3)),
        "{seen:?}"
    );

    // Fail open: when every target is unhealthy, all of them get requests.
    a.set_health(500);
    b.set_health(500);
    eventually(10, "both out of service", || {
        !healthy(&gw.gateway, &a) && !healthy(&gw.gateway, &b)
    })
    .await;
    let seen = spread(&gw, 6).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&3), Some(&3)),
        "{seen:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_target_is_taken_out_by_its_health_checks() {
    let a = Backend::start("a").await;
    // A port that was bound and released: nothing listens there.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n\
         [[gateway.target_groups]]\nname = \"g\"\ntargets = [\"{}\", \"{dead_addr}\"]\n\
         health_check = {{ path = \"/healthz\", interval_ms = 100, timeout_ms = 90 }}\n",
        a.addr
    );
    let gw = gateway(&config).await;
    let dead_label = dead_addr.to_string();
    eventually(10, "the dead target out of service", || {
        gw.gateway
            .target_health()
            .iter()
            .any(|t| t.target == dead_label && !t.healthy)
    })
    .await;
    assert_eq!(spread(&gw, 5).await.get("a"), Some(&5));
    gw.stop().await;
}

async fn problem(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_failures_are_502_503_504_problems() {
    let slow = Backend::start("slow").await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let config = format!(
        "[gateway]\n\
         [[gateway.rules]]\npriority = 1\nconditions.path = [\"/slow\"]\naction.forward.target_group = \"slow\"\n\
         [[gateway.rules]]\npriority = 2\nconditions.path = [\"/dead\"]\naction.forward.target_group = \"dead\"\n\
         [[gateway.rules]]\npriority = 3\nconditions.path = [\"/empty\"]\naction.forward.target_group = \"empty\"\n\
         [[gateway.target_groups]]\nname = \"slow\"\ntargets = [\"{}\"]\nrequest_timeout_ms = 300\nhealth_check.enabled = false\n\
         [[gateway.target_groups]]\nname = \"dead\"\ntargets = [\"{dead_addr}\"]\nhealth_check.enabled = false\n\
         [[gateway.target_groups]]\nname = \"empty\"\ntargets = []\n",
        slow.addr
    );
    let gw = gateway(&config).await;
    let c = client();

    let started = Instant::now();
    let (status, body) = problem(c.get(gw.url("/slow")).send().await.unwrap()).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(body["status"], 504);

    let (status, body) = problem(c.get(gw.url("/dead")).send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        !body["detail"]
            .as_str()
            .unwrap()
            .contains(&dead_addr.port().to_string()),
        "the answer names the target's address: {body}"
    );

    let (status, body) = problem(c.get(gw.url("/empty")).send().await.unwrap()).await;
    assert_eq!(status, 503, "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_breaks_the_protocol_gets_502() {
    // A "target" that answers with garbage and closes.
    let bad = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = bad.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
            });
        }
    });
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"bad\"\n\
         [[gateway.target_groups]]\nname = \"bad\"\ntargets = [\"{bad_addr}\"]\nhealth_check.enabled = false\n"
    );
    let gw = gateway(&config).await;
    let (status, _) = problem(client().get(gw.url("/")).send().await.unwrap()).await;
    assert_eq!(status, 502);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_and_fixed_response() {
    let config = "[gateway]\n\
        [[gateway.rules]]\npriority = 1\nconditions.path = [\"/old/*\"]\n\
        action.redirect = { protocol = \"HTTPS\", host = \"new.#{host}\", port = \"443\", path = \"/new/#{path}\", query = \"#{query}&moved=1\", status_code = 302 }\n\
        [[gateway.rules]]\npriority = 2\nconditions.path = [\"/keep-port\"]\n\
        action.redirect = { path = \"/elsewhere\" }\n\
        [[gateway.rules]]\npriority = 3\nconditions.path = [\"/teapot\"]\n\
        action.fixed_response = { status_code = 418, content_type = \"application/json\", body = '{\"short\":\"stout\"}' }\n";
    let gw = gateway(config).await;
    let c = client();
    let resp = c
        .get(gw.url("/old/a/b?x=1"))
        .header("host", "fleet.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://new.fleet.example/new/old/a/b?x=1&moved=1"
    );

    let resp = c.get(gw.url("/keep-port")).send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(
        resp.headers()["location"],
        format!("http://127.0.0.1:{}/elsewhere", gw.addr.port()).as_str()
    );

    let resp = c.get(gw.url("/teapot")).send().await.unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), "{\"short\":\"stout\"}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let backend = Backend::start("b").await;
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n{}",
        group("g", &[&backend])
    );
    let gw = gateway(&config).await;
    let c = client();

    // A large body goes there and back unchanged.
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let resp = c
        .post(gw.url("/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let back = resp.bytes().await.unwrap();
    assert!(
        back.len() == big.len() && back[..] == big[..],
        "the echoed body differs"
    );

    // The request body is streamed: the backend has the first chunk before the client sends
    // the second.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    *backend.state.first_chunk.lock().await = Some(first_tx);
    let (chunks, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let upload = tokio::spawn(
        c.post(gw.url("/upload"))
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .send(),
    );
    chunks
        .send(Ok(Bytes::from_static(b"first;")))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), first_rx)
        .await
        .expect("the first chunk reached the backend while the upload was still open")
        .unwrap();
    assert_eq!(got, 6);
    chunks
        .send(Ok(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(chunks);
    let resp = upload.await.unwrap().unwrap();
    assert_eq!(resp.text().await.unwrap(), "12");

    // A server-sent event stream passes through as it is written.
    let (events, rx) = tokio::sync::mpsc::channel(4);
    *backend.state.sse.lock().await = Some(rx);
    let mut resp = c.get(gw.url("/sse")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    events
        .send(Ok(Bytes::from_static(b"data: one\n\n")))
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the first event arrived before the stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b"data: one\n\n");
    events
        .send(Ok(Bytes::from_static(b"data: two\n\n")))
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the second event arrived")
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b"data: two\n\n");
    drop(events);
    assert!(resp.chunk().await.unwrap().is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_config_parses_and_starts() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml"))
            .expect("the example config exists");
    let config = parse(&text).expect("the example parses");
    let gateway = Gateway::start(config).await.expect("the example is valid");
    assert!(gateway.target_health().len() >= 4);
    gateway.shutdown().await;
    // The defaults parse and start too.
    let gateway = Gateway::start(parse("[gateway]\n").unwrap()).await.unwrap();
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stalls_inside_a_body_is_cut_after_the_timeout() {
    let backend = Backend::start("b").await;
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n\
         [[gateway.target_groups]]\nname = \"g\"\ntargets = [\"{}\"]\nrequest_timeout_ms = 300\nhealth_check.enabled = false\n",
        backend.addr
    );
    let gw = gateway(&config).await;
    let (events, rx) = tokio::sync::mpsc::channel(4);
    *backend.state.sse.lock().await = Some(rx);
    let mut resp = client().get(gw.url("/sse")).send().await.unwrap();
    // Events closer together than the timeout keep the stream alive.
    for i in 0..4 {
        events
            .send(Ok(Bytes::from(format!("data: {i}\n\n"))))
            .await
            .unwrap();
        let chunk = resp.chunk().await.unwrap().unwrap();
        assert_eq!(chunk, format!("data: {i}\n\n").as_bytes());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then the target goes silent with the stream still open.
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the gateway cut the silent stream");
    assert!(end.is_err(), "a cut stream must not look complete: {end:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(events);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish_and_drains_streams_in_time() {
    let backend = Backend::start("b").await;
    let config = format!(
        "[gateway]\ndrain_timeout_ms = 300\ndefault_action.forward.target_group = \"g\"\n{}",
        group("g", &[&backend])
    );
    let mut gw = gateway(&config).await;
    let c = client();

    // An upload in progress when shutdown begins completes.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    *backend.state.first_chunk.lock().await = Some(first_tx);
    let (chunks, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let upload = tokio::spawn(
        c.post(gw.url("/upload"))
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .send(),
    );
    chunks.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    first_rx.await.unwrap();
    gw.signal_stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    chunks.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
    drop(chunks);
    let resp = upload.await.unwrap().unwrap();
    assert_eq!(resp.text().await.unwrap(), "6");

    // No new connection is accepted after shutdown began.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(c.get(gw.url("/late")).send().await.is_err());
    gw.stop().await;

    // A stream that never ends holds the shutdown only for the drain timeout.
    let mut gw = gateway(&config).await;
    let (events, rx) = tokio::sync::mpsc::channel(4);
    *backend.state.sse.lock().await = Some(rx);
    let mut resp = c.get(gw.url("/sse")).send().await.unwrap();
    events
        .send(Ok(Bytes::from_static(b"data: x\n\n")))
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    let started = Instant::now();
    gw.signal_stop();
    gw.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_rule_and_status_and_show_target_health() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = format!(
        "[gateway]\ndefault_action.forward.target_group = \"g\"\n{}{}",
        fixed_rule(4242, "path = [\"/metrics-test\"]", "m"),
        health_group("g", &[&a, &b])
    );
    let gw = gateway(&config).await;
    for _ in 0..3 {
        text(&gw.url("/metrics-test")).await;
    }
    b.set_health(500);
    eventually(10, "b out of service", || !healthy(&gw.gateway, &b)).await;
    let rendered = handle.render();
    assert!(
        rendered.contains("kickstand_gateway_requests_total{rule=\"4242\",status=\"200\"} 3"),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!(
            "kickstand_gateway_target_healthy{{group=\"g\",target=\"{}\"}} 0",
            b.addr
        )),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!(
            "kickstand_gateway_target_healthy{{group=\"g\",target=\"{}\"}} 1",
            a.addr
        )),
        "{rendered}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_disconnected() {
    let gw = gateway(
        "[gateway]\nclient_header_timeout_ms = 200\ndefault_action.fixed_response = { body = \"ok\" }\n",
    )
    .await;
    let read_to_end = |mut s: tokio::net::TcpStream| async move {
        let mut all = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
        (r.is_ok(), all)
    };
    // A client that sends half a request line and stops.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HT").await.unwrap();
    let (closed, _) = read_to_end(slow).await;
    assert!(closed, "a slow client kept its connection");
    // A keep-alive client that goes quiet after one request.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (closed, answer) = read_to_end(idle).await;
    assert!(closed, "an idle client kept its connection");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.stop().await;
}
