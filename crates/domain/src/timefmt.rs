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

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` to `out`, without allocating.
pub fn write_ms(out: &mut String, ms: i64) {
    match rfc3339_bytes(ms) {
        Some(b) => out.push_str(std::str::from_utf8(&b).expect("ASCII digits")),
        None => {
            use std::fmt::Write;
            let _ = write!(out, "{ms}");
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` as bytes, or `None` outside the years 0–9999.
pub fn rfc3339_bytes(ms: i64) -> Option<[u8; 24]> {
    Rfc3339Writer::default().format(ms)
}

/// Formats many timestamps in a row, computing the calendar date only when the day changes (a
/// 24-hour track prints 86,400 timestamps over one or two dates).
#[derive(Default)]
pub struct Rfc3339Writer {
    /// The day (since the epoch) whose date is in `date`, if any.
    day: Option<i64>,
    /// `YYYY-MM-DD` of `day`.
    date: [u8; 10],
}

fn two(b: &mut [u8], v: u32) {
    b[0] = b'0' + (v / 10) as u8;
    b[1] = b'0' + (v % 10) as u8;
}

impl Rfc3339Writer {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms`, or `None` outside the years 0–9999.
    pub fn format(&mut self, ms: i64) -> Option<[u8; 24]> {
        if !(-62_167_219_200_000..=253_402_300_799_999).contains(&ms) {
            return None;
        }
        let secs = ms.div_euclid(1000);
        let millis = ms.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        if self.day != Some(days) {
            self.date = civil_date(days);
            self.day = Some(days);
        }
        let mut buf = [0u8; 24];
        buf[..10].copy_from_slice(&self.date);
        buf[10] = b'T';
        two(&mut buf[11..13], sod / 3600);
        buf[13] = b':';
        two(&mut buf[14..16], sod / 60 % 60);
        buf[16] = b':';
        two(&mut buf[17..19], sod % 60);
        buf[19] = b'.';
        buf[20] = b'0' + (millis / 100) as u8;
        two(&mut buf[21..23], millis % 100);
        buf[23] = b'Z';
        Some(buf)
    }
}

/// `YYYY-MM-DD` of a day since the epoch (Hinnant's `civil_from_days`), years 0–9999.
fn civil_date(days: i64) -> [u8; 10] {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    let mut buf = [0u8; 10];
    two(&mut buf[0..2], year / 100);
    two(&mut buf[2..4], year % 100);
    buf[4] = b'-';
    two(&mut buf[5..7], month);
    buf[7] = b'-';
    two(&mut buf[8..10], day);
    buf
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
    fn the_fast_formatter_agrees_with_the_time_crate() {
        use time::format_description::well_known::Rfc3339;
        let mut ms = -62_135_596_800_000i64; // 0001-01-01
        while ms < 253_402_300_799_999 {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
            let want = t.format(&Rfc3339).unwrap();
            let got = format_ms(ms);
            assert_eq!(parse_rfc3339_ms(&got), Some(ms), "{got}");
            assert_eq!(&got[..19], &want[..19]);
            ms += 7_777_777_777_777 / 97 + 13;
        }
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn negative_epochs_format_before_1970() {
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
