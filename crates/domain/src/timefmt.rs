//! Timestamps: accepted as RFC 3339 or epoch milliseconds, returned as RFC 3339 in UTC with
//! millisecond precision (DESIGN.md, API conventions).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 timestamp into epoch milliseconds (sub-millisecond digits are truncated).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_ms(&mut out, ms);
    out
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` to `out`, without allocating a temporary.
pub fn write_ms(out: &mut String, ms: i64) {
    use std::fmt::Write;
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                millis
            );
        }
        // Out of `time`'s range: validation never lets such a value in, but formatting must
        // not panic on a corrupt record either.
        Err(_) => {
            let _ = write!(out, "{ms}");
        }
    }
}

/// Parses a query-string time: RFC 3339 or epoch milliseconds.
pub fn parse_query_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    parse_rfc3339_ms(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_millisecond_precision() {
        let ms = parse_rfc3339_ms("2026-11-25T10:20:30.123456Z").unwrap();
        assert_eq!(ms, 1_795_602_030_123);
        assert_eq!(format_ms(ms), "2026-11-25T10:20:30.123Z");
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let a = parse_rfc3339_ms("2026-11-25T19:20:30+09:00").unwrap();
        let b = parse_rfc3339_ms("2026-11-25T10:20:30Z").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_query_time("1700000000000"), Some(1_700_000_000_000));
    }

    #[test]
    fn negative_epochs_format_before_1970() {
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
