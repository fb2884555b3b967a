//! CPU-time readings and latency percentiles.
//!
//! The machine has two cores that this program shares with the broker, so CPU time per message
//! matters as much as wall-clock throughput. This module reads the CPU time of this process
//! (`getrusage(RUSAGE_SELF)`, all threads, microsecond resolution) and, when it can find it, of
//! the broker's `beam.smp` process (`/proc/<pid>/stat`, clock-tick resolution, 10 ms here).

use std::time::Duration;

/// User + system CPU time consumed so far by every thread of this process.
pub(crate) fn process_cpu() -> Duration {
    // SAFETY: `getrusage` only writes into the struct we pass; a zeroed `rusage` is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` and RUSAGE_SELF is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(
        rc, 0,
        "getrusage(RUSAGE_SELF) cannot fail with valid arguments"
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The broker's operating-system process, so that its CPU time can be read around each phase.
pub(crate) struct BrokerProcess {
    /// Process id of the broker's Erlang VM (`beam.smp`).
    pid: u32,
    /// Kernel clock ticks per second, the unit of `/proc/<pid>/stat` times.
    ticks_per_sec: u64,
}

impl BrokerProcess {
    /// Uses `KS_BROKER_PID` when set, otherwise the only process whose name is `beam.smp`. Returns
    /// `None` when there is no such process or more than one (then broker CPU is not reported).
    pub(crate) fn find() -> Option<BrokerProcess> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks_per_sec = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
        let pid = match std::env::var("KS_BROKER_PID") {
            Ok(s) => s.parse().ok()?,
            Err(_) => {
                let mut found = Vec::new();
                for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                    let Some(pid) = entry
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
                        && comm.trim_end() == "beam.smp"
                    {
                        found.push(pid);
                    }
                }
                if found.len() != 1 {
                    return None;
                }
                found[0]
            }
        };
        let broker = BrokerProcess { pid, ticks_per_sec };
        broker.cpu().map(|_| broker)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// User + system CPU time the broker has consumed so far.
    pub(crate) fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name (field 2) is in parentheses and may contain spaces; fields after the
        // closing parenthesis are space separated, starting with field 3 (state).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let ticks = utime + stime;
        Some(Duration::from_micros(
            ticks * 1_000_000 / self.ticks_per_sec,
        ))
    }
}

/// CPU time used over an interval.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuUsage {
    /// This process, all threads (the client library's I/O threads and tasks included).
    pub client: Duration,
    /// The broker, when its process was found.
    pub broker: Option<Duration>,
}

/// A reading taken at the start of an interval.
pub(crate) struct CpuMark {
    /// Process CPU time at the mark.
    client: Duration,
    /// Broker CPU time at the mark.
    broker: Option<Duration>,
}

/// Reads CPU time at the start and end of each timed section. The clients call it at the same
/// points where they start and stop the wall clock, so setup (opening channels, QoS) is excluded.
pub(crate) struct Meter {
    /// The broker's process, if found.
    pub broker: Option<BrokerProcess>,
}

impl Meter {
    pub(crate) fn mark(&self) -> CpuMark {
        CpuMark {
            client: process_cpu(),
            broker: self.broker.as_ref().and_then(BrokerProcess::cpu),
        }
    }

    pub(crate) fn since(&self, mark: &CpuMark) -> CpuUsage {
        let now = self.mark();
        CpuUsage {
            client: now.client.saturating_sub(mark.client),
            broker: match (mark.broker, now.broker) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
        }
    }
}

/// The value below which `q` (0..=1) of the sorted samples fall (nearest-rank method).
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&v[..1], 0.99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn process_cpu_is_monotonic() {
        let a = process_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_cpu() >= a);
    }
}
