//! Request bodies into fixes: one JSON object, a JSON array of objects, or NDJSON (one object a
//! line). Every item is judged on its own: good items are kept, and every refused item yields a
//! [`Rejection`] with its index, the field and the reason. Only a body that cannot be read at all
//! (empty, not JSON, neither object nor array) is a [`BodyError`].
//!
//! The fast path deserialises each item straight into borrowed fields; only a refused item is
//! parsed a second time, with `serde_path_to_error`, to name the field that failed.

use crate::fix::{Fix, FixError, FixInput, VehicleState};
use crate::timefmt::parse_rfc3339_ms;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one object or an array of objects.
    Json,
    /// `application/x-ndjson`: one object per line; blank lines are ignored.
    Ndjson,
}

/// One refused item of a body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Zero-based position of the item: its index in the array, or its line number (from 0)
    /// in NDJSON.
    pub index: usize,
    /// The field at fault, or `""` when the item as a whole is wrong.
    pub field: String,
    pub reason: String,
}

/// A body that could be read: its good fixes and its refused items.
#[derive(Debug, Default)]
pub struct ParsedBody {
    pub fixes: Vec<Fix>,
    pub rejected: Vec<Rejection>,
}

impl ParsedBody {
    /// Number of items the body held.
    pub fn items(&self) -> usize {
        self.fixes.len() + self.rejected.len()
    }
}

/// A body that could not be read at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    #[error("the body must be a JSON object or an array of objects")]
    NotObjectOrArray,
    #[error("the body holds no fixes")]
    NoItems,
}

/// A timestamp as sent: epoch milliseconds or RFC 3339.
struct RawTs(Result<i64, &'static str>);

impl<'de> Deserialize<'de> for RawTs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string or epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTs, E> {
                Ok(RawTs(Ok(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTs, E> {
                Ok(RawTs(i64::try_from(v).map_err(|_| "is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawTs, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(RawTs(Ok(v as i64)))
                } else {
                    Ok(RawTs(Err("must be whole epoch milliseconds")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTs, E> {
                Ok(RawTs(parse_rfc3339_ms(v).ok_or(
                    "must be an RFC 3339 timestamp or epoch milliseconds",
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// The wire form of a fix. Unknown fields are refused so a typo never silently drops data.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFix<'a> {
    #[serde(borrow)]
    vehicle_id: Cow<'a, str>,
    ts: RawTs,
    lat: f64,
    lon: f64,
    #[serde(default)]
    speed_kmh: Option<f64>,
    #[serde(default)]
    heading_deg: Option<f64>,
    #[serde(default)]
    battery_pct: Option<f64>,
    #[serde(default)]
    accuracy_m: Option<f64>,
    #[serde(default)]
    altitude_m: Option<f64>,
    #[serde(default)]
    odometer_m: Option<f64>,
    #[serde(default)]
    state: Option<VehicleState>,
    #[serde(default)]
    locked: Option<bool>,
}

impl RawFix<'_> {
    fn validate(&self, now_ms: i64) -> Result<Fix, FixError> {
        let ts_ms = self.ts.0.map_err(|r| FixError::new("ts", r))?;
        FixInput {
            vehicle_id: &self.vehicle_id,
            ts_ms,
            lat: self.lat,
            lon: self.lon,
            speed_kmh: self.speed_kmh,
            heading_deg: self.heading_deg,
            battery_pct: self.battery_pct,
            accuracy_m: self.accuracy_m,
            altitude_m: self.altitude_m,
            odometer_m: self.odometer_m,
            state: self.state,
            locked: self.locked,
        }
        .validate(now_ms)
    }
}

/// Parses one item, judging it completely.
pub fn parse_item(text: &str, now_ms: i64) -> Result<Fix, FixError> {
    // serde would read a struct from an array too; a fix is an object and nothing else.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<de::IgnoredAny>(text) {
            Ok(_) => FixError::new("", "must be a JSON object"),
            Err(e) => FixError::new("", format!("is not valid JSON: {e}")),
        });
    }
    match serde_json::from_str::<RawFix<'_>>(text) {
        Ok(raw) => raw.validate(now_ms),
        Err(_) => Err(explain(text)),
    }
}

/// Re-parses a refused item with path tracking to name the field at fault.
fn explain(text: &str) -> FixError {
    let mut de = serde_json::Deserializer::from_str(text);
    let err = match serde_path_to_error::deserialize::<_, RawFix<'_>>(&mut de) {
        Ok(_) => return FixError::new("", "could not be read"),
        Err(e) => e,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    let mut message = inner.to_string();
    if let Some(at) = message.find(" at line ") {
        message.truncate(at);
    }
    if inner.is_syntax() || inner.is_eof() {
        return FixError::new("", format!("is not valid JSON: {message}"));
    }
    for (prefix, reason) in [
        ("missing field `", "is required"),
        ("unknown field `", "is not a known field"),
        ("duplicate field `", "appears more than once"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let field = rest.split('`').next().unwrap_or_default();
            return FixError::new(field, reason);
        }
    }
    if message.contains("expected struct RawFix") {
        return FixError::new("", "must be a JSON object");
    }
    let field = if path == "." { String::new() } else { path };
    let reason = message
        .replace("variant", "value")
        .replace("f64", "a number")
        .replace("a borrowed string", "a string");
    FixError::new(field, reason)
}

/// Parses a whole body. `now_ms` is the server clock (fixes more than 5 minutes ahead of it are
/// refused).
pub fn parse_body(body: &[u8], format: BodyFormat, now_ms: i64) -> Result<ParsedBody, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut parsed = ParsedBody::default();
    let mut judge = |index: usize, item: &str| match parse_item(item, now_ms) {
        Ok(fix) => parsed.fixes.push(fix),
        Err(e) => parsed.rejected.push(Rejection {
            index,
            field: e.field,
            reason: e.reason,
        }),
    };
    match format {
        BodyFormat::Ndjson => {
            for (index, line) in text.split('\n').enumerate() {
                let line = line.trim();
                if !line.is_empty() {
                    judge(index, line);
                }
            }
        }
        BodyFormat::Json => match trimmed.as_bytes()[0] {
            b'[' => {
                let items: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
                for (index, item) in items.iter().enumerate() {
                    judge(index, item.get());
                }
            }
            b'{' => {
                // Check the framing first: trailing garbage is a malformed body, not a bad item.
                let item: &RawValue =
                    serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
                judge(0, item.get());
            }
            _ => {
                return Err(match serde_json::from_str::<de::IgnoredAny>(text) {
                    Ok(_) => BodyError::NotObjectOrArray,
                    Err(e) => BodyError::Malformed(e.to_string()),
                });
            }
        },
    }
    if parsed.items() == 0 {
        return Err(BodyError::NoItems);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn one(text: &str) -> Result<Fix, FixError> {
        parse_item(text, NOW)
    }

    #[test]
    fn epoch_ms_and_rfc3339_are_both_accepted() {
        let a = one(r#"{"vehicle_id":"v1","ts":1799999999000,"lat":1,"lon":2}"#).unwrap();
        let b = one(r#"{"vehicle_id":"v1","ts":"2027-01-15T07:59:59Z","lat":1,"lon":2}"#).unwrap();
        assert_eq!(a.point.ts, 1_799_999_999_000);
        assert_eq!(b.point.ts, 1_799_999_999_000);
    }

    #[test]
    fn refused_items_name_their_field() {
        let cases = [
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":1}"#,
                "lon",
                "is required",
            ),
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":1,"lon":2,"colour":"red"}"#,
                "colour",
                "is not a known field",
            ),
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":"north","lon":2}"#,
                "lat",
                "invalid type",
            ),
            (
                r#"{"vehicle_id":"v1","ts":"soon","lat":1,"lon":2}"#,
                "ts",
                "RFC 3339",
            ),
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":91,"lon":2}"#,
                "lat",
                "between",
            ),
            (
                r#"{"vehicle_id":"v 1","ts":1,"lat":1,"lon":2}"#,
                "vehicle_id",
                "may contain only",
            ),
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":1,"lon":2,"state":"flying"}"#,
                "state",
                "unknown value",
            ),
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":1,"lon":2,"battery_pct":101}"#,
                "battery_pct",
                "between",
            ),
            (
                r#"{"vehicle_id":"v1","ts":1,"lat":1,"lat":1,"lon":2}"#,
                "lat",
                "more than once",
            ),
            (r#"[1]"#, "", "object"),
            (r#"17"#, "", "object"),
        ];
        for (text, field, reason) in cases {
            let err = one(text).expect_err(text);
            assert_eq!(err.field, field, "{text}: {err}");
            assert!(err.reason.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn a_batch_keeps_its_good_items() {
        let body = br#"[{"vehicle_id":"a","ts":1,"lat":1,"lon":1},
                        {"vehicle_id":"b","ts":1,"lat":100,"lon":1},
                        "nonsense",
                        {"vehicle_id":"c","ts":2,"lat":1,"lon":1}]"#;
        let parsed = parse_body(body, BodyFormat::Json, NOW).unwrap();
        assert_eq!(parsed.fixes.len(), 2);
        let idx: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| (r.index, r.field.as_str()))
            .collect();
        assert_eq!(idx, vec![(1, "lat"), (2, "")]);
    }

    #[test]
    fn ndjson_lines_are_judged_one_by_one() {
        let body = b"{\"vehicle_id\":\"a\",\"ts\":1,\"lat\":1,\"lon\":1}\n\n{broken\r\n{\"vehicle_id\":\"a\",\"ts\":2,\"lat\":1,\"lon\":1}\n";
        let parsed = parse_body(body, BodyFormat::Ndjson, NOW).unwrap();
        assert_eq!(parsed.fixes.len(), 2);
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].index, 2);
        assert!(parsed.rejected[0].reason.contains("not valid JSON"));
    }

    #[test]
    fn unreadable_bodies_are_body_errors() {
        assert_eq!(
            parse_body(b"", BodyFormat::Json, NOW).unwrap_err(),
            BodyError::Empty
        );
        assert_eq!(
            parse_body(b"  \n", BodyFormat::Ndjson, NOW).unwrap_err(),
            BodyError::Empty
        );
        assert_eq!(
            parse_body(b"[]", BodyFormat::Json, NOW).unwrap_err(),
            BodyError::NoItems
        );
        assert_eq!(
            parse_body(b"42", BodyFormat::Json, NOW).unwrap_err(),
            BodyError::NotObjectOrArray
        );
        assert!(matches!(
            parse_body(b"[{", BodyFormat::Json, NOW),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse_body(b"{} x", BodyFormat::Json, NOW),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse_body(b"\xff\xfe", BodyFormat::Json, NOW),
            Err(BodyError::Malformed(_))
        ));
    }
}

#[cfg(test)]
mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No body, however mangled, panics the parser; every item is either a fix or a
        /// rejection with its index.
        #[test]
        fn any_bytes_are_judged_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600), ndjson in any::<bool>()) {
            let format = if ndjson { BodyFormat::Ndjson } else { BodyFormat::Json };
            if let Ok(parsed) = parse_body(&bytes, format, 1_800_000_000_000) {
                prop_assert!(parsed.items() > 0);
            }
        }

        /// Valid-looking fixes with random values are accepted or refused with a named field.
        #[test]
        fn random_values_are_refused_by_field(lat in any::<f64>(), lon in any::<f64>(), battery in any::<f64>(), ts in any::<i64>()) {
            let body = format!(r#"{{"vehicle_id":"v","ts":{ts},"lat":{lat:e},"lon":{lon:e},"battery_pct":{battery:e}}}"#);
            match parse_body(body.as_bytes(), BodyFormat::Json, 1_800_000_000_000) {
                Ok(parsed) => {
                    for r in &parsed.rejected {
                        prop_assert!(["ts", "lat", "lon", "battery_pct"].contains(&r.field.as_str()), "{:?}", r);
                    }
                }
                Err(BodyError::Malformed(_)) => {} // NaN/inf print as tokens that are not JSON
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
