//! `kickstand history copy` between real stores: a real server's embedded data directory to
//! PostgreSQL (interrupted by --max-buckets, then resumed) and back to a new data directory;
//! every fix arrives exactly once, as `kickstand export` on each store shows.

mod common;

use common::{Server, client, fix, now_ms};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn kickstand(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kickstand"));
    cmd.args(args).env("KICKSTAND_LOG__LEVEL", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every fix of every vehicle in the range, as sorted NDJSON lines.
fn export_lines(data: &Path, env: &[(&str, &str)], from: i64, to: i64) -> Vec<String> {
    let (from, to) = (from.to_string(), to.to_string());
    let data = data.to_str().unwrap();
    let out = kickstand(
        &["export", "--data", data, "--from", &from, "--to", &to],
        env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_embedded_to_postgres_resumably_and_back() {
    let Some(url) = kickstand_engine::testing::service_url("POSTGRES") else {
        return;
    };
    let schema = kickstand_engine::testing::unique_name("copy");
    let pg = format!("{url}?schema={schema}");
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    let progress = work.path().join("progress.json");

    // A real server writes the source: 5 vehicles, 12 hours, a fix every 10 minutes.
    let s = Server::start(&a);
    let t0 = now_ms() / 3_600_000 * 3_600_000 - 14 * 3_600_000;
    let batch: Vec<Value> = (0..72)
        .flat_map(|i| {
            (0..5).map(move |v| {
                fix(
                    &format!("v{v}"),
                    t0 + i * 600_000 + v,
                    37.0 + i as f64 * 1e-4,
                    127.0 + v as f64 * 1e-3,
                )
            })
        })
        .collect();
    let r = client()
        .post(s.url("/api/v1/telemetry"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    s.stop();
    let (from, to) = (t0 - 1, t0 + 13 * 3_600_000);
    let source = export_lines(&a, &[], from, to);
    assert_eq!(source.len(), 360);

    let src = format!("embedded:{}", a.display());
    let p = progress.to_str().unwrap();
    let copy = |from: &str, to: &str, extra: &[&str]| {
        let mut args = vec![
            "history",
            "copy",
            "--from",
            from,
            "--to",
            to,
            "--progress",
            p,
        ];
        args.extend_from_slice(extra);
        kickstand(&args, &[])
    };
    // Interrupted after 7 of the 60 buckets (12 hours × 5 vehicles).
    let first = copy(&src, &pg, &["--max-buckets", "7", "--batch", "10"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("stopped at --max-buckets"),
        "{}",
        stderr(&first)
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(saved["done"], false);
    assert!(saved["next_bucket"].as_i64().unwrap() > t0, "{saved}");

    // Run again: it resumes where it stopped and completes.
    let second = copy(&src, &pg, &["--batch", "10"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let said = stderr(&second);
    assert!(
        said.contains("resuming from") && said.contains("copy complete"),
        "{said}"
    );
    let again = copy(&src, &pg, &[]);
    assert!(
        stderr(&again).contains("already complete"),
        "{}",
        stderr(&again)
    );

    let pg_env = common::pg_env(&url, &schema);
    assert_eq!(
        export_lines(&a, &pg_env, from, to),
        source,
        "PostgreSQL holds each fix once"
    );

    // And back, into a new data directory.
    std::fs::remove_file(&progress).unwrap();
    let back = copy(&pg, &format!("embedded:{}", b.display()), &[]);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(export_lines(&b, &[], from, to), source);

    // Garbage in: clear errors, nothing written.
    let bad = copy("redis://localhost", &pg, &[]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("is not a store"), "{}", stderr(&bad));
    let missing = copy(
        &format!("embedded:{}", work.path().join("none").display()),
        &pg,
        &["--restart"],
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no history"),
        "{}",
        stderr(&missing)
    );

    common::drop_pg_schema(url, schema).await;
}
