//! One script process: started directly from its file with an argument vector (never a
//! shell), a cleared environment, stdin from `/dev/null`, in a process group of its own; its
//! pipes read into the run's [`LiveOutput`]; ended by SIGTERM to the whole group on timeout or
//! cancel, then SIGKILL after the grace period.
//!
//! Whatever way the script ends, the group is sent SIGKILL afterwards, so a grandchild left
//! behind (a daemonised helper, a `sleep` in the background) does not outlive its run. A
//! process that leaves the group on purpose (`setsid`) escapes this; scripts are trusted
//! code registered by an administrator, and the runner does not sandbox them.

use crate::output::{LiveOutput, Stream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// How long the pipes may stay open after the group was killed (a process that left the group
/// may hold them).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// One read from a pipe.
const READ_CHUNK: usize = 16 * 1024;

/// What to start.
#[derive(Debug)]
pub struct Launch {
    pub exe: PathBuf,
    pub argv: Vec<String>,
    /// The complete environment besides `PATH`.
    pub env: Vec<(String, String)>,
    pub path_env: String,
    pub work_dir: PathBuf,
    pub timeout: Duration,
    pub grace: Duration,
}

/// Why the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Exited,
    TimedOut,
    Cancelled,
}

/// How the process ended.
#[derive(Debug)]
pub struct Exit {
    pub ending: Ending,
    pub status: ExitStatus,
}

impl Exit {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
}

/// Sends `signal` to the process group `pgid`; a group already gone is fine.
fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg only sends a signal; pgid is the group of a child we started with
    // process_group(0) (its own pid), never 0 or negative.
    if pgid > 0 {
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// Kills the group if the supervising task is dropped before it could (runtime shutdown).
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

/// Starts the process; returns once it has ended and its group is gone. `started` is called
/// with the pid once the process runs.
pub async fn run(
    launch: Launch,
    output: Arc<LiveOutput>,
    cancel: CancellationToken,
    started: impl FnOnce(u32),
) -> std::io::Result<Exit> {
    let mut cmd = tokio::process::Command::new(&launch.exe);
    cmd.args(&launch.argv)
        .env_clear()
        .env("PATH", &launch.path_env)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // ETXTBSY: another thread of this process forked while holding the script open for
    // writing (a deploy just wrote it); the fork's copy closes at its exec, so retry briefly.
    let mut attempt = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            other => break other?,
        }
    };
    let pid = child.id().unwrap_or(0);
    let guard = GroupGuard(pid as i32);
    started(pid);
    let readers = [
        child
            .stdout
            .take()
            .map(|p| tokio::spawn(read_pipe(p, Stream::Stdout, output.clone()))),
        child
            .stderr
            .take()
            .map(|p| tokio::spawn(read_pipe(p, Stream::Stderr, output.clone()))),
    ];
    let (ending, status) = tokio::select! {
        status = child.wait() => (Ending::Exited, status?),
        () = tokio::time::sleep(launch.timeout) => {
            (Ending::TimedOut, terminate(&mut child, guard.0, launch.grace).await?)
        }
        () = cancel.cancelled() => {
            (Ending::Cancelled, terminate(&mut child, guard.0, launch.grace).await?)
        }
    };
    // Whatever is left of the group (grandchildren) goes now.
    drop(guard);
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, reader).await.is_err() {
            abort.abort();
        }
    }
    output.flush();
    Ok(Exit { ending, status })
}

/// SIGTERM to the group, SIGKILL after `grace` if the leader has not exited.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: i32,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    signal_group(pgid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, libc::SIGKILL);
            child.wait().await
        }
    }
}

async fn read_pipe(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    output: Arc<LiveOutput>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => output.push(stream, &buf[..n]),
        }
    }
}
