//! The operations services inside `kickstand run`, against the real binary with API keys on:
//! a fleet event from the pipeline fires a rule that sends one message through the messenger to
//! a real webhook receiver (and the cool-down holds); the scheduler runs a registered script on
//! its own through the process's in-memory key; `kickstand ops` sends, runs and lists.

mod common;

use common::{Server, client, get_json, get_json_with_key, now_ms};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Seen = Arc<Mutex<Vec<(axum::http::HeaderMap, Value, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1:0 that records every request's headers and body.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    s.lock().unwrap().push((headers, v, body.to_vec()));
                    axum::http::StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

const CONFIG: &str = r#"
[[messenger.channels]]
name = "crew"
kind = "webhook"
url_env = "TEST_CREW_URL"
secret_env = "TEST_CREW_SECRET"

[messenger.retry]
base_ms = 200
max_attempts = 3
jitter = false
"#;

async fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_low_event_sends_one_message_per_vehicle_within_the_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kickstand.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let (url, seen) = receiver().await;
    let data = dir.path().join("data");
    let (server, admin) = Server::start_secure_with(
        &data,
        &[
            ("KICKSTAND_CONFIG", config.to_str().unwrap()),
            ("TEST_CREW_URL", &url),
            ("TEST_CREW_SECRET", "s3cret-signing-key"),
        ],
    );
    let c = client();
    let put = c
        .put(server.url("/api/v1/templates/battery-low"))
        .bearer_auth(&admin)
        .json(&json!({
            "subject": "Low battery: {{ vehicle }}",
            "body": "Scooter {{ vehicle }} is at {{ pct }} %."
        }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    let rule = c
        .post(server.url("/api/v1/rules"))
        .bearer_auth(&admin)
        .json(&json!({
            "name": "swap crew: low battery",
            "kinds": ["battery_low"],
            "action": {"message": {
                "channel": "crew",
                "to": "swap-crew",
                "template": "battery-low",
                "vars": {"vehicle": "{{ event.vehicle_id }}", "pct": "{{ event.battery_pct }}"}
            }},
            "cooldown_secs": 3600
        }))
        .send()
        .await
        .unwrap();
    let status = rule.status();
    let rule: Value = rule.json().await.unwrap();
    assert_eq!(status, 201, "{rule}");
    let rule_id = rule["id"].as_str().unwrap().to_owned();

    // s-1 goes low, recovers, goes low again (within the cool-down); s-2 goes low once.
    let t0 = now_ms() - 60_000;
    let battery = [80, 10, 60, 9];
    let mut fixes = Vec::new();
    for (i, pct) in battery.iter().enumerate() {
        fixes.push(json!({"vehicle_id": "s-1", "ts": t0 + i as i64 * 5_000,
            "lat": 37.5665, "lon": 126.978, "battery_pct": pct, "state": "available"}));
    }
    fixes.push(
        json!({"vehicle_id": "s-2", "ts": t0, "lat": 37.5665, "lon": 126.978,
        "battery_pct": 70, "state": "available"}),
    );
    fixes.push(
        json!({"vehicle_id": "s-2", "ts": t0 + 5_000, "lat": 37.5665, "lon": 126.978,
        "battery_pct": 8, "state": "available"}),
    );
    // One fix per request, in order, as devices send them.
    for f in &fixes {
        let r = c
            .post(server.url("/api/v1/telemetry"))
            .bearer_auth(&admin)
            .json(&json!([f]))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    // The pipeline stored three battery_low events.
    let events: Value =
        get_json_with_key(&c, &server.url("/api/v1/events?kind=battery_low"), &admin).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 3, "{events}");

    let started = Instant::now();
    while seen.lock().unwrap().len() < 2 {
        if started.elapsed() > Duration::from_secs(30) {
            let get = |path: String| {
                let c = c.clone();
                let admin = admin.clone();
                async move {
                    c.get(path)
                        .bearer_auth(admin)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap()
                }
            };
            panic!(
                "timed out waiting for two messages: rule history {}, messages {}",
                get(server.url(&format!("/api/v1/rules/{rule_id}/history"))).await,
                get(server.url("/api/v1/messages")).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a wrong third one to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one message per vehicle: {got:?}");
    let mut bodies: Vec<String> = got
        .iter()
        .map(|(_, v, _)| v["body"].as_str().unwrap_or("").to_owned())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            "Scooter s-1 is at 10.0 %.".to_owned(),
            "Scooter s-2 is at 8.0 %.".to_owned()
        ]
    );
    // Each is signed with the channel's secret, over the bytes sent.
    for (headers, _, raw) in &got {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let now = (now_ms() / 1000) as u64;
        kickstand_webhooks::signing::verify(
            "s3cret-signing-key",
            &header(kickstand_webhooks::signing::TIMESTAMP_HEADER),
            &header(kickstand_webhooks::signing::SIGNATURE_HEADER),
            raw,
            now,
            300,
        )
        .unwrap();
    }
    let history: Value = get_json_with_key(
        &c,
        &server.url(&format!("/api/v1/rules/{rule_id}/history")),
        &admin,
    )
    .await;
    let text = history.to_string();
    assert!(text.contains("suppressed"), "{text}");

    // The messages are in the messenger's log as sent, with the receiver's answer.
    let sent: Value =
        get_json_with_key(&c, &server.url("/api/v1/messages?status=sent"), &admin).await;
    assert_eq!(sent["messages"].as_array().map(Vec::len), Some(2), "{sent}");
    // The secret and the receiver's URL never appear in answers.
    let channels = c
        .get(server.url("/api/v1/channels"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !channels.contains("s3cret") && !channels.contains(&url),
        "{channels}"
    );
    server.stop();
}

fn write_script(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("hello.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n# Prints its arguments, one a line, and the API it was given.\nfor a in \"$@\"; do printf 'arg:%s\\n' \"$a\"; done\nprintf 'api:%s\\n' \"$KICKSTAND_API_URL\"\necho oops >&2\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("hello.toml"),
        r#"name = "hello"
description = "Says hello."
command = "hello.sh"
timeout_secs = 30
# The job below runs it every second; a run the scheduler started just before the pause must
# not turn the CLI's run into a 429.
max_concurrent = 4
env = ["KICKSTAND_API_URL", "KICKSTAND_API_KEY"]

[[args]]
name = "who"
type = "string"
required = true
"#,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_a_script_and_the_cli_sends_runs_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    write_script(&scripts);
    // The shipped scripts too, run against this real server below.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
    for name in ["low-battery.toml", "low-battery.py", "kickstand_api.py"] {
        std::fs::copy(shipped.join(name), scripts.join(name)).unwrap();
    }
    let config = dir.path().join("kickstand.toml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}\n[runner]\nscripts_dir = {:?}\n",
            scripts.to_str().unwrap()
        ),
    )
    .unwrap();
    let (url, seen) = receiver().await;
    let data = dir.path().join("data");
    let (server, admin) = Server::start_secure_with(
        &data,
        &[
            ("KICKSTAND_CONFIG", config.to_str().unwrap()),
            ("TEST_CREW_URL", &url),
            ("TEST_CREW_SECRET", "another-secret"),
        ],
    );
    let base = format!("http://{}", server.addr);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kickstand"))
            .arg("ops")
            .args(args)
            .env("KICKSTAND_URL", &base)
            .env("KICKSTAND_API_KEY", &admin)
            .output()
            .unwrap()
    };

    // A job every second runs the script through the process's own key.
    let out = cli(&[
        "job",
        "add",
        "--name",
        "hello every second",
        "--every",
        "1s",
        "--script",
        "hello",
        "--arg",
        "who=scheduler",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let c = client();
    let runs_of_job = || {
        let c = c.clone();
        let url = server.url(&format!("/api/v1/jobs/{job_id}/runs"));
        let admin = admin.clone();
        async move { get_json_with_key(&c, &url, &admin).await }
    };
    let started = Instant::now();
    loop {
        let runs = runs_of_job().await;
        let ok = runs["runs"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["outcome"] == "succeeded").count())
            .unwrap_or(0);
        if ok >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job did not run the script twice: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = cli(&["job", "pause", &job_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["job", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&job_id) && listing.contains("paused"),
        "{listing}"
    );
    // The runs the scheduler started are in the runner's log, started by the process's key.
    let runs: Value =
        get_json_with_key(&c, &server.url("/api/v1/scripts/runs?script=hello"), &admin).await;
    let text = runs.to_string();
    assert!(text.contains("kickstand"), "{text}");

    // `kickstand ops script run` streams the output and exits with the script's status; an
    // argument that a shell would act on arrives as written.
    let out = cli(&[
        "script",
        "run",
        "hello",
        "--arg",
        "who=$(touch /tmp/kickstand-pwned); x",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("$(touch /tmp/kickstand-pwned); x"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("api:http://{}", server.addr)),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    assert!(!std::path::Path::new("/tmp/kickstand-pwned").exists());
    // An unknown script: a clear error and a failing exit status.
    let out = cli(&["script", "run", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // The shipped low-battery script, through the runner, against this server's real API with
    // the process's own key: the two scooters under 20 %, lowest first.
    let now = now_ms();
    let fleet: Vec<Value> = [("a-1", 55.0), ("a-2", 12.0), ("a-3", 4.0), ("a-4", 19.5)]
        .iter()
        .map(|(id, pct)| {
            json!({"vehicle_id": id, "ts": now - 1_000, "lat": 37.5665, "lon": 126.978,
                   "battery_pct": pct, "state": "available"})
        })
        .collect();
    c.post(server.url("/api/v1/telemetry"))
        .bearer_auth(&admin)
        .json(&fleet)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let out = cli(&["script", "run", "low-battery", "--arg", "below=20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    assert_eq!(ids, vec!["a-3", "a-2", "a-4"], "{csv}");

    // The API's document describes the operations routes too, behind a key.
    let doc = get_json(&c, &server.url("/api/v1/openapi.json")).await;
    for path in [
        "/api/v1/messages",
        "/api/v1/templates/{name}",
        "/api/v1/scripts/{name}/runs",
        "/api/v1/jobs",
        "/api/v1/rules",
        "/api/v1/tasks/{task}",
        "/api/v1/telemetry",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is not in the document"
        );
    }
    assert!(
        doc["paths"]["/api/v1/jobs"]["post"]["security"].is_array(),
        "{}",
        doc["paths"]["/api/v1/jobs"]
    );

    // `kickstand ops message send` through the webhook channel.
    let out = cli(&[
        "message",
        "send",
        "--channel",
        "crew",
        "--to",
        "ops",
        "--subject",
        "Hi",
        "--body",
        "Hello {{ name }}",
        "--var",
        "name=crew",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the CLI's message", 20, || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(seen.lock().unwrap()[0].1["body"], "Hello crew");
    // A wrong key is refused with the server's reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kickstand"))
        .args(["ops", "job", "list"])
        .env("KICKSTAND_URL", &base)
        .env("KICKSTAND_API_KEY", "ks_wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    server.stop();
}
