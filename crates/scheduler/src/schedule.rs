//! When a job runs: a cron expression with seconds in an IANA time zone, a fixed interval, or
//! one time. Pure computation: no clock, no I/O; times are epoch milliseconds (UTC).
//!
//! Cron expressions are evaluated by `croner` in the job's time zone (`chrono-tz`), so DST is
//! handled the way croner documents it: a fixed-time job whose time falls into a spring-forward
//! gap runs at the first valid time after the gap, once; in the fall-back overlap it runs once,
//! at the first occurrence. Wildcard and step fields skip times inside the gap and match both
//! passes of the repeated hour.

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// A schedule as the API takes and shows it: exactly one of `cron`, `every` or `at`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression with six fields, seconds first: `sec min hour day-of-month month
    /// day-of-week` (for example `0 */15 * * * *` or `0 0 6 * * MON-FRI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone a `cron` expression is read in (default `UTC`), e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A fixed interval (`30s`, `5m`, `1h 30m`; at least 1 s), counted from the job's creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// One run at this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    Cron {
        cron: Box<Cron>,
        tz: Tz,
    },
    /// Ticks at `anchor + n · every`.
    Every {
        every_ms: i64,
        anchor: i64,
    },
    Once {
        at: i64,
    },
}

/// A schedule that cannot be used; `field` names the part at fault (`schedule.cron`, …).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub detail: String,
}

fn err(field: &'static str, detail: impl Into<String>) -> ScheduleError {
    ScheduleError {
        field,
        detail: detail.into(),
    }
}

/// The shortest interval.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl Schedule {
    /// Parses `spec`; `anchor` (epoch ms) is where an interval's ticks are counted from.
    pub fn parse(spec: &ScheduleSpec, anchor: i64) -> Result<Schedule, ScheduleError> {
        let given = [spec.cron.is_some(), spec.every.is_some(), spec.at.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if given != 1 {
            return Err(err(
                "schedule",
                "give exactly one of `cron`, `every` or `at`",
            ));
        }
        if spec.time_zone.is_some() && spec.cron.is_none() {
            return Err(err(
                "schedule.time_zone",
                "a time zone only applies to a `cron` schedule",
            ));
        }
        if let Some(expr) = &spec.cron {
            let tz: Tz = match &spec.time_zone {
                None => Tz::UTC,
                Some(name) => name.parse().map_err(|_| {
                    err(
                        "schedule.time_zone",
                        format!("{name:?} is not an IANA time zone name (like Europe/Berlin)"),
                    )
                })?,
            };
            if expr.split_whitespace().count() != 6 {
                return Err(err(
                    "schedule.cron",
                    "a cron expression has six fields, seconds first: sec min hour day month weekday",
                ));
            }
            let cron = CronParser::builder()
                .seconds(Seconds::Required)
                .build()
                .parse(expr)
                .map_err(|e| err("schedule.cron", format!("{expr:?}: {e}")))?;
            // An expression that never matches (30 February) is refused now, not at run time.
            let s = Schedule::Cron {
                cron: Box::new(cron),
                tz,
            };
            if s.next_after(anchor).is_none() {
                return Err(err("schedule.cron", format!("{expr:?} never matches")));
            }
            return Ok(s);
        }
        if let Some(every) = &spec.every {
            let d = humantime::parse_duration(every).map_err(|e| {
                err(
                    "schedule.every",
                    format!("{every:?} is not a duration like 30s, 5m or 1h: {e}"),
                )
            })?;
            if d < MIN_EVERY || d > Duration::from_secs(366 * 86_400) {
                return Err(err(
                    "schedule.every",
                    "the interval must be between 1 s and 366 days",
                ));
            }
            return Ok(Schedule::Every {
                every_ms: d.as_millis() as i64,
                anchor,
            });
        }
        let at = spec.at.as_deref().unwrap_or_default();
        let t = chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
            err(
                "schedule.at",
                format!("{at:?} is not an RFC 3339 time like 2026-06-01T06:00:00Z: {e}"),
            )
        })?;
        Ok(Schedule::Once {
            at: t.timestamp_millis(),
        })
    }

    /// The first tick strictly after `after_ms`; `None` when there is none (a one-off job
    /// whose time has passed, a cron expression with no more matches).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Cron { cron, tz } => {
                let start =
                    tz.from_utc_datetime(&Utc.timestamp_millis_opt(after_ms).single()?.naive_utc());
                cron.find_next_occurrence(&start, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
            Schedule::Every { every_ms, anchor } => {
                if after_ms < *anchor {
                    return Some(*anchor);
                }
                let n = (after_ms - anchor) / every_ms + 1;
                Some(anchor + n * every_ms)
            }
            Schedule::Once { at } => (*at > after_ms).then_some(*at),
        }
    }

    /// The first tick at or after `from_ms`.
    pub fn next_from(&self, from_ms: i64) -> Option<i64> {
        self.next_after(from_ms - 1)
    }

    /// The latest tick at or before `now` among the ticks from `first_due` on (which is at or
    /// before `now`), and the first tick after `now`. Walks at most `limit` ticks of a cron
    /// schedule (an interval is computed); a schedule that far behind reports the last walked.
    pub fn catch_up(&self, first_due: i64, now: i64, limit: usize) -> (i64, Option<i64>) {
        match self {
            Schedule::Every { every_ms, anchor } if first_due >= *anchor => {
                let latest = anchor + (now - anchor) / every_ms * every_ms;
                (latest.max(first_due), self.next_after(now))
            }
            _ => {
                let mut latest = first_due;
                for _ in 0..limit {
                    match self.next_after(latest) {
                        Some(t) if t <= now => latest = t,
                        _ => break,
                    }
                }
                (latest, self.next_after(now.max(latest)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(
            &ScheduleSpec {
                cron: Some(expr.into()),
                time_zone: Some(tz.into()),
                ..ScheduleSpec::default()
            },
            0,
        )
        .unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn cron_with_seconds_in_a_time_zone() {
        let s = cron("15 30 6 * * *", "Europe/Berlin");
        // 06:30:15 in Berlin in winter is 05:30:15 UTC.
        assert_eq!(
            s.next_after(ms("2026-01-10T00:00:00Z")),
            Some(ms("2026-01-10T05:30:15Z"))
        );
        // In summer (UTC+2) it is 04:30:15 UTC.
        assert_eq!(
            s.next_after(ms("2026-07-10T00:00:00Z")),
            Some(ms("2026-07-10T04:30:15Z"))
        );
        let every_10s = cron("*/10 * * * * *", "UTC");
        assert_eq!(
            every_10s.next_after(ms("2026-01-10T00:00:01Z")),
            Some(ms("2026-01-10T00:00:10Z"))
        );
        // Strictly after: a tick time itself gives the next one.
        assert_eq!(
            every_10s.next_after(ms("2026-01-10T00:00:10Z")),
            Some(ms("2026-01-10T00:00:20Z"))
        );
    }

    #[test]
    fn cron_across_dst_changes() {
        // Berlin springs forward on 29 March 2026 at 02:00 to 03:00: 02:30 does not exist.
        let s = cron("0 30 2 * * *", "Europe/Berlin");
        let first = s.next_after(ms("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            first,
            ms("2026-03-29T01:00:00Z"),
            "03:00 CEST, right after the gap"
        );
        let second = s.next_after(first).unwrap();
        assert_eq!(
            second,
            ms("2026-03-30T00:30:00Z"),
            "02:30 CEST the next day"
        );
        // It falls back on 25 October 2026 at 03:00 to 02:00: 02:30 happens twice, runs once.
        let a = s.next_after(ms("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(a, ms("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        let b = s.next_after(a).unwrap();
        assert_eq!(b, ms("2026-10-26T01:30:00Z"), "not the second 02:30 (CET)");
        // Local midnight keeps its wall-clock time across the change.
        let midnight = cron("0 0 0 * * *", "America/New_York");
        assert_eq!(
            midnight.next_after(ms("2026-03-08T12:00:00Z")),
            Some(ms("2026-03-09T04:00:00Z"))
        );
        assert_eq!(
            midnight.next_after(ms("2026-03-07T12:00:00Z")),
            Some(ms("2026-03-08T05:00:00Z"))
        );
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let s = Schedule::parse(
            &ScheduleSpec {
                every: Some("30s".into()),
                ..ScheduleSpec::default()
            },
            1_000,
        )
        .unwrap();
        assert_eq!(s.next_after(0), Some(1_000));
        assert_eq!(s.next_after(1_000), Some(31_000));
        assert_eq!(s.next_after(30_999), Some(31_000));
        assert_eq!(s.next_from(31_000), Some(31_000));
        // Far behind: the latest due tick and the next, computed without walking.
        assert_eq!(s.catch_up(1_000, 1_000_000, 10), (991_000, Some(1_021_000)));
    }

    #[test]
    fn one_off_runs_once() {
        let s = Schedule::parse(
            &ScheduleSpec {
                at: Some("2026-06-01T06:00:00+02:00".into()),
                ..ScheduleSpec::default()
            },
            0,
        )
        .unwrap();
        let at = ms("2026-06-01T04:00:00Z");
        assert_eq!(s.next_after(at - 1), Some(at));
        assert_eq!(s.next_after(at), None);
        assert_eq!(s.catch_up(at, at + 60_000, 10), (at, None));
    }

    #[test]
    fn bad_schedules_name_their_field() {
        let check = |spec: serde_json::Value, field: &str| {
            let spec: ScheduleSpec = serde_json::from_value(spec).unwrap();
            let e = Schedule::parse(&spec, 0).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        check(serde_json::json!({}), "schedule");
        check(serde_json::json!({"cron": "* * * * *"}), "schedule.cron");
        check(serde_json::json!({"cron": "61 * * * * *"}), "schedule.cron");
        check(serde_json::json!({"cron": "0 0 0 30 2 *"}), "schedule.cron");
        check(serde_json::json!({"cron": "; rm -rf /"}), "schedule.cron");
        check(
            serde_json::json!({"cron": "0 * * * * *", "time_zone": "Mars/Olympus"}),
            "schedule.time_zone",
        );
        check(serde_json::json!({"every": "0s"}), "schedule.every");
        check(serde_json::json!({"every": "soon"}), "schedule.every");
        check(serde_json::json!({"at": "tomorrow"}), "schedule.at");
        check(
            serde_json::json!({"every": "1s", "at": "2026-01-01T00:00:00Z"}),
            "schedule",
        );
    }
}
