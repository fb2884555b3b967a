//! API keys on a real server: the first run's admin URL, `kickstand key`, and every scope
//! against every route group.

mod common;

use common::{Server, client, fix, now_ms};
use std::process::Command;

fn key(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kickstand"))
        .arg("key")
        .args(args)
        .arg("--data")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn every_scope_against_every_route_group() {
    let dir = tempfile::tempdir().unwrap();
    let (s, first_line) = Server::start_secure(dir.path());
    let admin = first_line
        .split("?token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .expect("the first run prints a URL with an admin key")
        .to_owned();
    assert!(admin.starts_with("ks_"));
    let ingest = key(
        dir.path(),
        &["create", "--name", "devices", "--scope", "ingest"],
    )
    .trim()
    .to_owned();
    let read = key(
        dir.path(),
        &["create", "--name", "dashboard", "--scope", "read"],
    )
    .trim()
    .to_owned();
    let revoked = key(
        dir.path(),
        &["create", "--name", "old", "--scope", "ingest,read"],
    )
    .trim()
    .to_owned();
    let listing = key(dir.path(), &["list"]);
    assert!(
        listing.contains("devices") && listing.contains("dashboard") && !listing.contains(&ingest)
    );
    let old_id = listing
        .lines()
        .find(|l| l.contains(" old "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    key(dir.path(), &["revoke", &old_id]);
    // The server picks up key changes within a second.
    std::thread::sleep(std::time::Duration::from_millis(1200));

    let c = client();
    let body = serde_json::json!([fix("v1", now_ms() - 1000, 1.0, 1.0)]);
    let send = |method: &str, path: &str, token: Option<&str>| {
        let c = c.clone();
        let url = s.url(path);
        let method = method.to_owned();
        let token = token.map(str::to_owned);
        let body = body.clone();
        async move {
            let mut req = if method == "POST" {
                c.post(url).json(&body)
            } else {
                c.get(url)
            };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            if status == 401 || status == 403 {
                assert_eq!(r.headers()["content-type"], "application/problem+json");
            }
            if status == 401 {
                assert_eq!(r.headers()["www-authenticate"], "Bearer");
            }
            status
        }
    };
    let ingest_route = [("POST", "/api/v1/telemetry")];
    let read_routes = [
        ("GET", "/api/v1/vehicles/v1"),
        ("GET", "/api/v1/vehicles?bbox=0,0,2,2"),
        ("GET", "/api/v1/vehicles/v1/track"),
        ("GET", "/api/v1/fleet/summary"),
        ("GET", "/api/v1/map/config"),
        ("GET", "/metrics"),
    ];
    let open_routes = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/")];
    // Write first with the ingest key, so the reads below find the vehicle.
    assert_eq!(send("POST", "/api/v1/telemetry", Some(&ingest)).await, 202);
    for (token, can_ingest, can_read) in [
        (None, false, false),
        (Some("ks_not_a_key"), false, false),
        (Some(revoked.as_str()), false, false),
        (Some(ingest.as_str()), true, false),
        (Some(read.as_str()), false, true),
        (Some(admin.as_str()), true, true),
    ] {
        let denied = if token.is_some_and(|t| t == ingest || t == read) {
            403
        } else {
            401
        };
        for (m, p) in ingest_route {
            let want = if can_ingest { 202 } else { denied };
            assert_eq!(send(m, p, token).await, want, "{m} {p} with {token:?}");
        }
        for (m, p) in read_routes {
            let want = if can_read { 200 } else { denied };
            assert_eq!(send(m, p, token).await, want, "{m} {p} with {token:?}");
        }
        for (m, p) in open_routes {
            assert_eq!(send(m, p, token).await, 200, "{m} {p} is open");
        }
    }
    // The live stream takes the key in the query (EventSource cannot send headers).
    let r = c
        .get(s.url(&format!("/api/v1/stream?access_token={read}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let r = c
        .get(s.url(&format!("/api/v1/stream?access_token={ingest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.get(s.url("/api/v1/stream")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A second run on the same directory prints no key, and the keys still work.
    s.stop();
    let (s2, line) = Server::start_secure(dir.path());
    assert!(!line.contains("token=ks_"), "{line}");
    let r = c
        .get(s2.url("/api/v1/fleet/summary"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn auth_off_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kickstand"))
        .args(["run", "--auth", "off", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{out:?}"
    );
}
