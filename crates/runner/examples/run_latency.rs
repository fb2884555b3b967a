//! Measures what the runner adds to a script: start-to-recorded-end time of a trivial script
//! (`/bin/true` through a manifest), one run after another, on a SQLite ops database.
//!
//! `cargo run --release -p kickstand-runner --example run_latency -- 200`

use kickstand_runner::{Runner, RunnerConfig};
use kickstand_service::{Caller, Db};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts)?;
    // A copy: a symlink out of the scripts directory would be refused.
    std::fs::copy("/bin/true", scripts.join("true"))?;
    std::fs::write(
        scripts.join("noop.toml"),
        "name = \"noop\"\ncommand = \"true\"\nmax_concurrent = 8\n",
    )?;
    let config = RunnerConfig {
        scripts_dir: scripts,
        work_dir: Some(dir.path().join("work")),
        reload_interval_secs: 0,
        ..RunnerConfig::default()
    };
    let runner = Runner::start(config, Db::open_sqlite(&dir.path().join("ops.db"))?).await?;
    let caller = Caller::anonymous();
    let args = serde_json::Map::new();
    let mut times = Vec::with_capacity(n);
    let all = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let started = runner.start_run("noop", &args, &caller, None).await?;
        loop {
            let rec = runner.run(&started.run.id).await?.expect("the run exists");
            if rec.status.is_final() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(t.elapsed());
    }
    let total = all.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{n} runs of /bin/true one after another: {:.1} runs/s; start to recorded end p50 {:?}, p99 {:?}",
        n as f64 / total.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    runner.shutdown().await;
    Ok(())
}
