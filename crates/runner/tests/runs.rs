//! Runs of real processes through the real HTTP API, on SQLite and on PostgreSQL.

mod common;

use common::{Harness, Store, write_script};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Generates `<name>_sqlite` and `<name>_postgres` tests from `async fn name(store)`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Postgres).await;
                }
            )*
        }
    };
}

both_stores!(
    arguments_reach_the_script_verbatim_in_a_clean_environment,
    timeout_kills_the_whole_process_group,
    output_is_bounded_and_flagged,
    output_streams_while_running_then_cancel_and_limits,
    refusals_are_problems,
    idempotency_key_returns_the_same_run,
    secrets_are_passed_but_never_stored_or_answered,
    a_restarted_runner_fails_what_it_left_running,
    manifests_reload_on_change,
);

fn argv_script(scripts: &Path, out: &Path) {
    write_script(
        scripts,
        "argv.sh",
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$OUT/argv\"\nenv > \"$OUT/env\"\npwd > \"$OUT/pwd\"\n",
    );
    std::fs::write(
        scripts.join("argv.toml"),
        format!(
            r#"
name = "argv"
description = "Writes its argv and environment."
command = "argv.sh"
argv = "positional"
env = ["KICKSTAND_API_URL"]
[set_env]
OUT = "{}"
[[args]]
name = "a"
type = "string"
required = true
[[args]]
name = "b"
type = "string"
default = "-rf"
"#,
            out.display()
        ),
    )
    .unwrap();
}

async fn arguments_reach_the_script_verbatim_in_a_clean_environment(store: Store) {
    // SAFETY (edition 2024 requires unsafe): set once, before this test's runner starts; no
    // other thread of this test reads the environment meanwhile.
    unsafe { std::env::set_var("KICKSTAND_TEST_SECRET", "do-not-leak") };
    let Some(h) = common::start(store, argv_script).await else {
        return;
    };
    let pwned = h.out.join("pwned");
    let nasty = format!(
        "; rm -rf / ; $(touch {p}) `touch {p}` 'single' \"double\" \nnew line\t|| touch {p} && echo $HOME > {p}",
        p = pwned.display()
    );
    let (status, run) = h
        .start_run("argv", json!({"args": {"a": nasty, "b": "--help"}}))
        .await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["status"], "queued");
    let id = run["run_id"].as_str().unwrap();
    let done = h.wait_run(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["started_by"], "anonymous");
    let argv = std::fs::read(h.out.join("argv")).unwrap();
    let parts: Vec<&[u8]> = argv.split(|&b| b == 0).filter(|p| !p.is_empty()).collect();
    assert_eq!(parts, [nasty.as_bytes(), b"--help"]);
    assert!(!pwned.exists(), "an argument was interpreted by a shell");
    // A clean environment: PATH, the declared and the runner's own variables, nothing else.
    let env = std::fs::read_to_string(h.out.join("env")).unwrap();
    assert!(!env.contains("do-not-leak"), "{env}");
    assert!(!env.contains("KICKSTAND_TEST_SECRET"), "{env}");
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| *k != "PWD" && *k != "SHLVL" && *k != "_")
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "HOME",
            "KICKSTAND_API_URL",
            "KICKSTAND_RUN_ID",
            "KICKSTAND_RUN_SCRIPT",
            "LANG",
            "OUT",
            "PATH",
            "TMPDIR"
        ]
    );
    assert!(env.contains("PATH=/usr/local/bin:/usr/bin:/bin\n"), "{env}");
    // It ran in its own working directory, removed afterwards.
    let pwd = std::fs::read_to_string(h.out.join("pwd")).unwrap();
    assert!(pwd.trim().ends_with(id), "{pwd}");
    assert!(!Path::new(pwd.trim()).exists());
    // The audit log has the start and the end.
    let (_, audit) = h.get("/api/v1/scripts/audit").await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("finish", "succeeded"), ("start", "accepted")]);
    h.finish().await;
}

fn pid_alive(pid: i32) -> bool {
    // A zombie (waiting for its reaper) no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

async fn timeout_kills_the_whole_process_group(store: Store) {
    let Some(h) = common::start(store, |scripts, out| {
        // The child ignores SIGTERM (so SIGKILL must follow); its grandchild sleeps.
        write_script(
            scripts,
            "forker.sh",
            "#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho $! > \"$OUT/grandchild\"\necho $$ > \"$OUT/child\"\necho started\nwhile true; do sleep 1; done\n",
        );
        std::fs::write(
            scripts.join("forker.toml"),
            format!(
                "name = \"forker\"\ncommand = \"forker.sh\"\ntimeout_secs = 1\n[set_env]\nOUT = \"{}\"\n",
                out.display()
            ),
        )
        .unwrap();
    })
    .await
    else {
        return;
    };
    let (status, run) = h.start_run("forker", json!({})).await;
    assert_eq!(status, 202, "{run}");
    let done = h.wait_run(run["run_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "timed_out", "{done}");
    assert_eq!(done["signal"], 9, "SIGTERM was ignored, so SIGKILL: {done}");
    assert_eq!(done["stdout"], "started\n");
    let read_pid = |f: &str| -> i32 {
        std::fs::read_to_string(h.out.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (child, grandchild) = (read_pid("child"), read_pid("grandchild"));
    for _ in 0..40 {
        if !pid_alive(child) && !pid_alive(grandchild) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pid_alive(child), "the script survived");
    assert!(!pid_alive(grandchild), "the grandchild survived");
    h.finish().await;
}

async fn output_is_bounded_and_flagged(store: Store) {
    let Some(h) = common::start(store, |scripts, _| {
        write_script(
            scripts,
            "chatty.sh",
            "#!/bin/sh\nhead -c 10000000 /dev/zero | tr '\\0' x\necho done >&2\n",
        );
        std::fs::write(
            scripts.join("chatty.toml"),
            "name = \"chatty\"\ncommand = \"chatty.sh\"\noutput_limit_bytes = 65536\n",
        )
        .unwrap();
    })
    .await
    else {
        return;
    };
    let (_, run) = h.start_run("chatty", json!({})).await;
    let done = h.wait_run(run["run_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{}", done["error"]);
    assert_eq!(done["truncated"], true);
    assert_eq!(done["output_bytes"], 10_000_005);
    let stdout = done["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), 65536);
    assert!(stdout.bytes().all(|b| b == b'x'));
    assert_eq!(
        done["stderr"], "",
        "beyond the limit, stderr is dropped too"
    );
    h.finish().await;
}

fn slow_script(scripts: &Path, _: &Path) {
    write_script(
        scripts,
        "slow.sh",
        "#!/bin/sh\necho first\necho oops >&2\nsleep 30\necho never\n",
    );
    std::fs::write(
        scripts.join("slow.toml"),
        "name = \"slow\"\ncommand = \"slow.sh\"\nmax_concurrent = 1\n[[args]]\nname = \"n\"\ntype = \"int\"\n",
    )
    .unwrap();
}

async fn output_streams_while_running_then_cancel_and_limits(store: Store) {
    let Some(h) = common::start(store, slow_script).await else {
        return;
    };
    let (_, run) = h.start_run("slow", json!({})).await;
    let id = run["run_id"].as_str().unwrap().to_owned();
    // The output arrives while the script still runs.
    let resp = h
        .http
        .get(h.url(&format!("/api/v1/scripts/runs/{id}/output")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !(seen.contains("event: stdout\ndata: \"first\\n\"")
        && seen.contains("event: stderr\ndata: \"oops\\n\""))
    {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("output streams while the script runs")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (_, now) = h.get(&format!("/api/v1/scripts/runs/{id}")).await;
    assert_eq!(now["status"], "running");
    assert_eq!(now["stdout"], "first\n");
    // A second run of a script limited to one is refused.
    let r = h
        .http
        .post(h.url("/api/v1/scripts/slow/runs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Cancel: the stream ends with the run's final record.
    let r = h
        .http
        .post(h.url(&format!("/api/v1/scripts/runs/{id}/cancel")))
        .header("x-test-scopes", "operate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    while !seen.contains("event: end") {
        match tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the stream ends after cancel")
        {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => break,
        }
    }
    let end_line = seen
        .split("event: end\ndata: ")
        .nth(1)
        .expect("an end event")
        .lines()
        .next()
        .unwrap();
    let end: Value = serde_json::from_str(end_line).unwrap();
    assert_eq!(end["status"], "cancelled");
    assert_eq!(end["error"], "cancelled by tester (k_test)");
    assert!(!seen.contains("never"));
    let done = h.wait_run(&id).await;
    assert_eq!(done["status"], "cancelled");
    // Cancelling again: it has ended.
    let r = h
        .http
        .post(h.url(&format!("/api/v1/scripts/runs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // The slot is free again as soon as the run reads as ended (it is given back before the
    // end is recorded); the ended run's output replays from the store.
    let (status, again) = h.start_run("slow", json!({"args": {"n": "3"}})).await;
    assert_eq!(status, 202, "{again}");
    let replay = h
        .http
        .get(h.url(&format!("/api/v1/scripts/runs/{id}/output")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        replay.contains("event: stdout\ndata: \"first\\n\""),
        "{replay}"
    );
    assert!(replay.contains("event: end"), "{replay}");
    // Listing, filtered and paged.
    let (_, page) = h.get("/api/v1/scripts/runs?script=slow&limit=1").await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    assert_eq!(page["runs"][0]["run_id"], again["run_id"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) = h
        .get(&format!(
            "/api/v1/scripts/runs?script=slow&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(page2["runs"][0]["run_id"], id.as_str());
    assert!(page2["next_cursor"].is_null());
    let (_, cancelled) = h.get("/api/v1/scripts/runs?status=cancelled").await;
    assert_eq!(cancelled["runs"].as_array().unwrap().len(), 1);
    // Shutdown cancels the run still going and waits for it.
    let again_id = again["run_id"].as_str().unwrap().to_owned();
    h.runner.shutdown().await;
    let rec = h.runner.store().get(&again_id).await.unwrap().unwrap();
    assert_eq!(rec.status, kickstand_runner::Status::Cancelled);
    assert_eq!(rec.error.as_deref(), Some("runner shutting down"));
    h.finish().await;
}

async fn refusals_are_problems(store: Store) {
    let Some(h) = common::start(store, |scripts, out| {
        argv_script(scripts, out);
        write_script(scripts, "adm.sh", "#!/bin/sh\n");
        std::fs::write(
            scripts.join("adm.toml"),
            "name = \"adm\"\ncommand = \"adm.sh\"\nscope = \"admin\"\n",
        )
        .unwrap();
        std::fs::write(scripts.join("broken.toml"), "name = [").unwrap();
    })
    .await
    else {
        return;
    };
    let post = |path: &str, scopes: &str, body: &'static [u8]| {
        h.http
            .post(h.url(path))
            .header("x-test-scopes", scopes)
            .body(body)
            .send()
    };
    let problem = |r: reqwest::Response| async move {
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let (s, p) = problem(
        post("/api/v1/scripts/nope/runs", "operate", b"{}")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404, "{p}");
    let (s, p) = problem(
        post("/api/v1/scripts/adm/runs", "operate", b"{}")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("admin"), "{p}");
    let (s, p) = problem(
        post("/api/v1/scripts/broken/runs", "admin", b"{}")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 409, "{p}");
    let garbage: [(&[u8], &str); 7] = [
        (b"{", "body"),
        (b"\xff\xfe", "body"),
        (b"[]", "body"),
        (b"{\"args\": 3}", "args"),
        (b"{\"arg\": {}}", "arg"),
        (b"{\"args\": {\"a\": 1}}", "args.a"),
        (b"{\"args\": {}}", "args.a"),
    ];
    for (body, field) in garbage {
        let (s, p) = problem(
            post("/api/v1/scripts/argv/runs", "operate", body)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 400, "{p}");
        assert_eq!(p["field"], field, "{}: {p}", String::from_utf8_lossy(body));
    }
    // Reload and the audit log need admin.
    let (s, _) = problem(
        post("/api/v1/scripts/reload", "operate", b"")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 403);
    let r = h
        .http
        .get(h.url("/api/v1/scripts/audit"))
        .header("x-test-scopes", "operate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for q in ["status=done", "limit=0", "cursor=zz", "colour=red"] {
        let (s, p) = h.get(&format!("/api/v1/scripts/runs?{q}")).await;
        assert_eq!(s, 400, "{q}: {p}");
    }
    let (s, _) = h.get("/api/v1/scripts/runs/run_nope").await;
    assert_eq!(s, 404);
    let (s, _) = h.get("/api/v1/scripts/nope").await;
    assert_eq!(s, 404);
    // The list shows the schema and the refused manifest.
    let (_, list) = h.get("/api/v1/scripts").await;
    assert_eq!(list["scripts"][1]["name"], "argv");
    assert_eq!(list["scripts"][1]["args"][1]["default"], "-rf");
    assert_eq!(list["invalid"][0]["file"], "broken.toml");
    // The refused start is in the audit log.
    let (_, audit) = h.get("/api/v1/scripts/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "refused: missing scope" && e["who"] == "tester (k_test)"),
        "{audit}"
    );
    h.finish().await;
}

async fn idempotency_key_returns_the_same_run(store: Store) {
    let Some(h) = common::start(store, argv_script).await else {
        return;
    };
    let send = |key: &'static str, a: &'static str| {
        h.http
            .post(h.url("/api/v1/scripts/argv/runs"))
            .header("idempotency-key", key)
            .json(&json!({"args": {"a": a}}))
            .send()
    };
    let (first, second) = tokio::join!(send("job-42", "x"), send("job-42", "x"));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (202, 202)
    );
    let replays = [&first, &second]
        .iter()
        .filter(|r| r.headers().contains_key("idempotent-replayed"))
        .count();
    assert_eq!(replays, 1);
    let (a, b): (Value, Value) = (first.json().await.unwrap(), second.json().await.unwrap());
    assert_eq!(a["run_id"], b["run_id"]);
    let r = send("job-42", "other").await.unwrap();
    assert_eq!(r.status(), 422);
    let (_, runs) = h.get("/api/v1/scripts/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    let r = h
        .http
        .post(h.url("/api/v1/scripts/argv/runs"))
        .header("idempotency-key", "has space")
        .json(&json!({"args": {"a": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    h.wait_run(a["run_id"].as_str().unwrap()).await;
    h.finish().await;
}

async fn secrets_are_passed_but_never_stored_or_answered(store: Store) {
    const SECRET: &str = "tok-9f8e7d6c5b4a";
    let Some(h) = common::start(store, |scripts, out| {
        write_script(
            scripts,
            "secret.sh",
            "#!/bin/sh\nprintf '%s' \"$KICKSTAND_SECRET_TOKEN\" > \"$OUT/secret\"\necho \"token is $KICKSTAND_SECRET_TOKEN\"\nprintf '%s\\0' \"$@\" > \"$OUT/argv\"\n",
        );
        std::fs::write(
            scripts.join("secret.toml"),
            format!(
                "name = \"secret\"\ncommand = \"secret.sh\"\n[set_env]\nOUT = \"{}\"\n[[args]]\nname = \"token\"\ntype = \"string\"\nsecret = true\nrequired = true\n[[args]]\nname = \"who\"\ntype = \"string\"\n",
                out.display()
            ),
        )
        .unwrap();
    })
    .await
    else {
        return;
    };
    let (status, run) = h
        .start_run("secret", json!({"args": {"token": SECRET, "who": "crew"}}))
        .await;
    assert_eq!(status, 202);
    assert!(!run.to_string().contains(SECRET));
    let id = run["run_id"].as_str().unwrap();
    let done = h.wait_run(id).await;
    assert_eq!(done["status"], "succeeded");
    // The script got it, through its environment and not its argv.
    assert_eq!(
        std::fs::read_to_string(h.out.join("secret")).unwrap(),
        SECRET
    );
    let argv = std::fs::read(h.out.join("argv")).unwrap();
    assert_eq!(argv, b"--who=crew\0");
    // Answers: masked output, redacted args.
    assert_eq!(done["stdout"], "token is ***\n");
    assert_eq!(done["args"], json!({"token": "***", "who": "crew"}));
    for path in [
        format!("/api/v1/scripts/runs/{id}"),
        "/api/v1/scripts/runs".into(),
        "/api/v1/scripts/audit".into(),
        format!("/api/v1/scripts/runs/{id}/output"),
    ] {
        let text = h
            .http
            .get(h.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(SECRET), "{path}: {text}");
    }
    // The database: no column of any row holds it.
    for table in ["runner_runs", "runner_audit"] {
        let rows =
            h.db.query(&format!("SELECT * FROM {table}"), vec![])
                .await
                .unwrap();
        assert!(!rows.is_empty());
        assert!(!format!("{rows:?}").contains(SECRET), "{table}");
    }
    h.finish().await;
}

async fn a_restarted_runner_fails_what_it_left_running(store: Store) {
    let Some(h) = common::start(store, argv_script).await else {
        return;
    };
    let instance = h.config.instance.clone().unwrap();
    // A run recorded as running by this instance before a crash.
    h.db
        .execute(
            "INSERT INTO runner_runs (id, script, status, args, args_digest, started_by, instance, created_at, started_at, heartbeat_at) \
             VALUES ('run_crashed', 'argv', 'running', '{}', 'd', 'tester', $1, 1, 1, $2)",
            kickstand_service::params![instance.as_str(), kickstand_service::now_ms()],
        )
        .await
        .unwrap();
    // Another instance's run whose heartbeat stopped long ago.
    h.db
        .execute(
            "INSERT INTO runner_runs (id, script, status, args, args_digest, started_by, instance, created_at, started_at, heartbeat_at) \
             VALUES ('run_lost', 'argv', 'running', '{}', 'd', 'tester', 'elsewhere', 1, 1, 1)",
            vec![],
        )
        .await
        .unwrap();
    h.runner.shutdown().await;
    let again = kickstand_runner::Runner::start(h.config.clone(), h.db.clone())
        .await
        .unwrap();
    let crashed = again.store().get("run_crashed").await.unwrap().unwrap();
    assert_eq!(crashed.status, kickstand_runner::Status::Failed);
    assert_eq!(crashed.error.as_deref(), Some("runner restarted"));
    let mut lost = None;
    for _ in 0..100 {
        lost = again.store().get("run_lost").await.unwrap();
        if lost.as_ref().unwrap().status.is_final() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost = lost.unwrap();
    assert_eq!(lost.status, kickstand_runner::Status::Failed);
    assert_eq!(lost.error.as_deref(), Some("runner lost (no heartbeat)"));
    again.shutdown().await;
    h.finish().await;
}

async fn manifests_reload_on_change(store: Store) {
    let Some(h) = common::start(store, argv_script).await else {
        return;
    };
    let names = |list: &Value| -> Vec<String> {
        list["scripts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    write_script(&h.scripts, "new.sh", "#!/bin/sh\necho new\n");
    std::fs::write(
        h.scripts.join("new.toml"),
        "name = \"new\"\ncommand = \"new.sh\"\n",
    )
    .unwrap();
    std::fs::write(
        h.scripts.join("bad.toml"),
        "name = \"bad\"\ncommand = \"../../bin/sh\"\n",
    )
    .unwrap();
    let mut list = Value::Null;
    for _ in 0..100 {
        list = h.get("/api/v1/scripts").await.1;
        if names(&list).contains(&"new".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names(&list), ["argv", "new"]);
    assert_eq!(list["invalid"][0]["file"], "bad.toml");
    assert!(list["invalid"][0]["error"].as_str().unwrap().contains(".."));
    // Breaking a valid manifest removes it whole; the reload endpoint answers the new set.
    std::fs::write(
        h.scripts.join("new.toml"),
        "name = \"new\"\ncommand = \"new.sh\"\ntimeout_secs = -1\n",
    )
    .unwrap();
    let r = h
        .http
        .post(h.url("/api/v1/scripts/reload"))
        .header("x-test-scopes", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(names(&list), ["argv"]);
    assert_eq!(list["invalid"].as_array().unwrap().len(), 2);
    let (s, p) = h.start_run("new", json!({})).await;
    assert_eq!(s, 409, "{p}");
    h.finish().await;
}

#[allow(dead_code)]
fn _uses(_: &Harness) {}
