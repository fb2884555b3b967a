//! The OsmAnd protocol as Traccar speaks it, and the JSON body of Traccar Client 9+, mapped onto
//! Kickstand fixes. This module owns the parameter names, the units and the timestamp forms of
//! that protocol; the rules a fix must satisfy stay in [`FixInput::validate`], which every report
//! goes through. It does no I/O: the HTTP layer hands over the query string and the body.
//!
//! # Query string or form body (`GET /?…`, `POST /` with `application/x-www-form-urlencoded`)
//!
//! | Parameter              | Field          | Conversion                                         |
//! |------------------------|----------------|----------------------------------------------------|
//! | `id`, `deviceid`       | `vehicle_id`   | none; the [`VehicleId`](crate::VehicleId) rules    |
//! | `lat`, `lon`           | `lat`, `lon`   | decimal degrees                                    |
//! | `location=lat,lon`     | `lat`, `lon`   | decimal degrees                                    |
//! | `timestamp`            | `ts`           | see below; missing or empty: the server's `now_ms` |
//! | `speed`                | `speed_kmh`    | knots × 1.852; negative: unknown (absent)          |
//! | `bearing`, `heading`   | `heading_deg`  | degrees; negative: unknown (absent)                |
//! | `altitude`             | `altitude_m`   | metres                                             |
//! | `accuracy`             | `accuracy_m`   | metres                                             |
//! | `batt`                 | `battery_pct`  | percent, 0–100                                     |
//!
//! `timestamp` is a plain decimal number, epoch seconds when below 2³¹ and epoch milliseconds
//! otherwise, which may carry a fraction (digits below the millisecond are dropped); or an
//! ISO 8601 / RFC 3339 date-time with a UTC offset (`2024-05-01T12:00:00.123+02:00`); or
//! `2024-05-01 12:00:00` (optionally with a fraction), which Traccar reads as server time and
//! Kickstand as UTC.
//!
//! Names and values are percent-decoded as `application/x-www-form-urlencoded` (`+` is a space)
//! by the `form_urlencoded` crate, which is lenient: a `%` not followed by two hex digits stays
//! as it is and bytes that are not UTF-8 become U+FFFD, so such a value is refused by the check
//! of its own field (a number, the id rules) and never silently accepted. Names are matched
//! case-sensitively, as Traccar does. When a parameter (or an alias: `id`/`deviceid`,
//! `bearing`/`heading`, `lat`/`lon`/`location`) appears more than once, the last one counts and
//! the earlier ones are not checked. Other parameters (`valid`, `hdop`, `charge`, `event`,
//! `motion`, `driverUniqueId`, `cell`, `wifi`, …) are ignored: Traccar keeps them as attributes,
//! and a fix has no place for them. An empty optional parameter (`speed=`) counts as absent.
//!
//! # JSON body (Traccar Client 9+, `application/json`)
//!
//! | Member                               | Field         | Conversion                       |
//! |--------------------------------------|---------------|----------------------------------|
//! | `device_id`                          | `vehicle_id`  | none                             |
//! | `location.timestamp`                 | `ts`          | as the parameter `timestamp`     |
//! | `location.coords.latitude/longitude` | `lat`, `lon`  | decimal degrees                  |
//! | `location.coords.speed`              | `speed_kmh`   | m/s × 3.6; negative: absent      |
//! | `location.coords.heading`            | `heading_deg` | degrees; negative: absent        |
//! | `location.coords.accuracy`           | `accuracy_m`  | metres                           |
//! | `location.coords.altitude`           | `altitude_m`  | metres                           |
//! | `location.odometer`                  | `odometer_m`  | metres                           |
//! | `location.battery.level`             | `battery_pct` | 0–1 × 100; negative: absent      |
//!
//! `null` counts as absent. Every other member (`is_moving`, `event`, `activity`, `mock`,
//! `battery.is_charging`, `extras`, …) is ignored: the body comes from a third-party app and
//! grows, and a fix has no field for motion or activity. A `location` that is an array (a batch)
//! is refused, since one request yields one fix here.
//!
//! # Errors
//!
//! A refused report yields one [`FixError`] naming the parameter or JSON path *as the device sent
//! it* (`deviceid`, `location`, `location.coords.speed`), so the person reading it can find it in
//! the client's settings or the request log; limits of converted values say in which unit they
//! are stated.

use crate::fix::{Fix, FixError, FixInput};
use crate::timefmt::parse_rfc3339_ms;
use serde_json::{Map, Value};
use std::borrow::Cow;
use time::macros::format_description;
use time::{PrimitiveDateTime, format_description::BorrowedFormatItem};

/// How an OsmAnd request carried its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsmandBody<'a> {
    /// The query string of the URL, without or with its leading `?`.
    Query(&'a str),
    /// An `application/x-www-form-urlencoded` body.
    Form(&'a [u8]),
    /// An `application/json` body of Traccar Client 9+.
    Json(&'a [u8]),
}

/// Parses one OsmAnd / Traccar Client report into a validated fix. `now_ms` is the server clock:
/// the time of a report without a timestamp, and the reference for refusing future fixes.
pub fn parse(input: OsmandBody<'_>, now_ms: i64) -> Result<Fix, FixError> {
    parse_merged("", input, now_ms)
}

/// Parses a request whose parameters may sit both in the query string and in the body, as a
/// `POST` may send them. The parameters are merged and the body wins on conflict (the last
/// occurrence counts, and the body comes after the query). A JSON body that is not blank is a
/// complete report on its own and the query is then not read; a blank body of any kind leaves
/// only the query.
pub fn parse_merged(query: &str, body: OsmandBody<'_>, now_ms: i64) -> Result<Fix, FixError> {
    let query = query.strip_prefix('?').unwrap_or(query).as_bytes();
    match body {
        OsmandBody::Json(bytes) if !bytes.trim_ascii().is_empty() => parse_json(bytes, now_ms),
        OsmandBody::Json(_) => parse_params(&[query], now_ms),
        OsmandBody::Query(text) => {
            let text = text.strip_prefix('?').unwrap_or(text);
            parse_params(&[query, text.as_bytes()], now_ms)
        }
        OsmandBody::Form(bytes) => parse_params(&[query, bytes], now_ms),
    }
}

/// A value of an optional or required parameter, already parsed: where it came from (to name it
/// in an error) and the number, `None` when the parameter was sent empty.
type Slot = (&'static str, Result<Option<f64>, FixError>);

/// The parameters that make a fix, the last occurrence of each.
#[derive(Default)]
struct Params {
    /// The id parameter's name as sent (`id` or `deviceid`) and its decoded value.
    id: Option<(&'static str, String)>,
    /// The epoch milliseconds, `None` when sent empty.
    timestamp: Option<Result<Option<i64>, FixError>>,
    /// Degrees, from `lat` or from the first half of `location`.
    lat: Option<Slot>,
    /// Degrees, from `lon` or from the second half of `location`.
    lon: Option<Slot>,
    /// Knots, as sent; converted when the fix is built.
    speed: Option<Slot>,
    /// Degrees, from `bearing` or `heading`.
    heading: Option<Slot>,
    /// Metres.
    altitude: Option<Slot>,
    /// Metres.
    accuracy: Option<Slot>,
    /// Percent.
    batt: Option<Slot>,
}

impl Params {
    fn set(&mut self, name: &str, value: &str) {
        match name {
            "id" => self.id = Some(("id", value.to_owned())),
            "deviceid" => self.id = Some(("deviceid", value.to_owned())),
            "timestamp" => self.timestamp = Some(parse_param_timestamp(value)),
            "lat" => self.lat = Some(("lat", number("lat", value))),
            "lon" => self.lon = Some(("lon", number("lon", value))),
            "location" => {
                let (lat, lon) = location(value);
                self.lat = Some(("location", lat));
                self.lon = Some(("location", lon));
            }
            "speed" => self.speed = Some(("speed", number("speed", value))),
            "bearing" => self.heading = Some(("bearing", number("bearing", value))),
            "heading" => self.heading = Some(("heading", number("heading", value))),
            "altitude" => self.altitude = Some(("altitude", number("altitude", value))),
            "accuracy" => self.accuracy = Some(("accuracy", number("accuracy", value))),
            "batt" => self.batt = Some(("batt", number("batt", value))),
            _ => {}
        }
    }
}

fn parse_params(sources: &[&[u8]], now_ms: i64) -> Result<Fix, FixError> {
    let mut params = Params::default();
    let mut seen = 0usize;
    for source in sources {
        for (name, value) in form_urlencoded::parse(source) {
            seen += 1;
            params.set(&name, &value);
        }
    }
    if seen == 0 {
        return Err(FixError::new(
            "",
            "the request carries neither parameters nor a JSON body; an OsmAnd report needs at \
             least id, lat and lon",
        ));
    }
    let Some((id_param, id)) = &params.id else {
        return Err(FixError::new(
            "id",
            "is missing; send the vehicle id as `id` (or `deviceid`)",
        ));
    };
    let speed_param = param_name(&params.speed, "speed");
    let heading_param = param_name(&params.heading, "bearing");
    let lat_param = param_name(&params.lat, "lat");
    let lon_param = param_name(&params.lon, "lon");
    let missing = "is missing; send `lat` and `lon`, or `location=lat,lon`";
    let lat = required(params.lat, "lat", missing)?;
    let lon = required(params.lon, "lon", missing)?;
    let ts_ms = match params.timestamp {
        Some(ts) => ts?.unwrap_or(now_ms),
        None => now_ms,
    };
    let input = FixInput {
        vehicle_id: id,
        ts_ms,
        lat,
        lon,
        speed_kmh: optional(params.speed)?
            .filter(|v| *v >= 0.0)
            .map(|knots| knots * 1.852),
        heading_deg: optional(params.heading)?.filter(|v| *v >= 0.0),
        battery_pct: optional(params.batt)?,
        accuracy_m: optional(params.accuracy)?,
        altitude_m: optional(params.altitude)?,
        ..FixInput::default()
    };
    let from_location = |param: &str, note| if param == "location" { note } else { "" };
    let lat_note = from_location(lat_param, " (the latitude)");
    let lon_note = from_location(lon_param, " (the longitude)");
    input.validate(now_ms).map_err(|e| {
        rename(
            e,
            &[
                ("vehicle_id", *id_param, ""),
                ("ts", "timestamp", ""),
                ("lat", lat_param, lat_note),
                ("lon", lon_param, lon_note),
                ("speed_kmh", speed_param, " (km/h, converted from knots)"),
                ("heading_deg", heading_param, " (degrees)"),
                ("battery_pct", "batt", " (percent)"),
                ("accuracy_m", "accuracy", " (metres)"),
                ("altitude_m", "altitude", " (metres)"),
            ],
        )
    })
}

fn param_name(slot: &Option<Slot>, default: &'static str) -> &'static str {
    slot.as_ref().map_or(default, |(name, _)| *name)
}

fn required(slot: Option<Slot>, field: &'static str, missing: &str) -> Result<f64, FixError> {
    match slot {
        None => Err(FixError::new(field, missing)),
        Some((name, value)) => {
            value?.ok_or_else(|| FixError::new(name, "is empty; it must be a number in degrees"))
        }
    }
}

fn optional(slot: Option<Slot>) -> Result<Option<f64>, FixError> {
    slot.map_or(Ok(None), |(_, value)| value)
}

/// Parses a decimal number as sent in a parameter; `None` for an empty value.
fn number(field: &str, text: &str) -> Result<Option<f64>, FixError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        Ok(_) => Err(FixError::new(
            field,
            format!("{} is not a finite number", shown(text)),
        )),
        Err(_) => Err(FixError::new(
            field,
            format!("{} is not a number", shown(text)),
        )),
    }
}

/// Splits `location=lat,lon`; a malformed value makes both halves fail with the same error.
fn location(text: &str) -> (Result<Option<f64>, FixError>, Result<Option<f64>, FixError>) {
    let malformed = || {
        FixError::new(
            "location",
            format!(
                "{} is not `latitude,longitude` in decimal degrees",
                shown(text)
            ),
        )
    };
    let parts = text.split_once(',').and_then(|(a, b)| {
        let lat = number("location", a).ok()??;
        let lon = number("location", b).ok()??;
        Some((lat, lon))
    });
    match parts {
        Some((lat, lon)) => (Ok(Some(lat)), Ok(Some(lon))),
        None => (Err(malformed()), Err(malformed())),
    }
}

fn parse_param_timestamp(text: &str) -> Result<Option<i64>, FixError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_timestamp(text)
        .map(Some)
        .map_err(|reason| FixError::new("timestamp", reason))
}

/// The number below which a numeric timestamp is epoch seconds, not milliseconds (2³¹).
const SECONDS_BELOW: i64 = 1 << 31;

/// Parses a timestamp in any form the protocol allows into epoch milliseconds.
fn parse_timestamp(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Some(epoch) = parse_epoch(text) {
        return epoch.map_err(str::to_owned);
    }
    if text.parse::<f64>().is_ok() {
        return Err(format!(
            "{} must be written with plain digits (epoch seconds or milliseconds)",
            shown(text)
        ));
    }
    // `2024-05-01 12:00:00` is Traccar's own form; read it, and its variants with an offset,
    // as the ISO 8601 form with a `T`.
    let space = text.as_bytes().get(10) == Some(&b' ');
    let iso: Cow<'_, str> = if space {
        Cow::Owned(format!("{}T{}", &text[..10], &text[11..]))
    } else {
        Cow::Borrowed(text)
    };
    if let Some(ms) = parse_rfc3339_ms(&iso) {
        return Ok(ms);
    }
    const LOCAL: &[BorrowedFormatItem<'_>] = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    match PrimitiveDateTime::parse(&iso, LOCAL) {
        Ok(t) if space => {
            let nanos = t.assume_utc().unix_timestamp_nanos();
            i64::try_from(nanos.div_euclid(1_000_000)).map_err(|_| "is out of range".to_owned())
        }
        Ok(_) => Err(format!(
            "{} has no UTC offset; end it with Z or an offset such as +02:00",
            shown(text)
        )),
        Err(_) => Err(format!(
            "{} is not a date-time; send epoch seconds, epoch milliseconds or ISO 8601 such as \
             2024-05-01T12:00:00Z",
            shown(text)
        )),
    }
}

/// Parses `[-]digits[.digits]` as epoch seconds (below 2³¹) or milliseconds; `None` when the
/// text has another shape.
fn parse_epoch(text: &str) -> Option<Result<i64, &'static str>> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let Ok(whole) = whole.parse::<i64>() else {
        return Some(Err("is out of range"));
    };
    let value = if negative { -whole } else { whole };
    let ms = if value < SECONDS_BELOW {
        // Milliseconds from the first three digits of the fraction, the rest dropped.
        let millis = fraction
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
        whole
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(millis))
    } else {
        Some(whole)
    };
    Some(match ms {
        Some(ms) if negative => Ok(-ms),
        Some(ms) => Ok(ms),
        None => Err("is out of range"),
    })
}

/// Renames the Kickstand field of a validation error to what the device sent: each entry is
/// (Kickstand field, parameter or path, note on the unit the limits are stated in).
fn rename(error: FixError, names: &[(&str, &str, &str)]) -> FixError {
    match names.iter().find(|(field, _, _)| *field == error.field) {
        Some((_, name, note)) => FixError::new(*name, format!("{}{note}", error.reason)),
        None => error,
    }
}

/// A value quoted for an error message, cut short so a hostile request cannot make it huge.
fn shown(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

fn parse_json(bytes: &[u8], now_ms: i64) -> Result<Fix, FixError> {
    let root: Value = serde_json::from_slice(bytes)
        .map_err(|e| FixError::new("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(root) = root else {
        return Err(FixError::new(
            "",
            "the body must be a JSON object with `device_id` and `location`",
        ));
    };
    let device_id = match root.get("device_id") {
        None | Some(Value::Null) => return Err(FixError::new("device_id", "is missing")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(FixError::new("device_id", "must be a string")),
    };
    let location = match root.get("location") {
        None | Some(Value::Null) => return Err(FixError::new("location", "is missing")),
        Some(Value::Object(o)) => o,
        Some(Value::Array(_)) => {
            return Err(FixError::new(
                "location",
                "must be one object; batches of locations are not supported",
            ));
        }
        Some(_) => return Err(FixError::new("location", "must be an object")),
    };
    let coords = object(location, "coords", "location.coords")?
        .ok_or_else(|| FixError::new("location.coords", "is missing"))?;
    let ts_ms = match location.get("timestamp") {
        None | Some(Value::Null) => now_ms,
        Some(Value::String(s)) => {
            parse_timestamp(s).map_err(|r| FixError::new("location.timestamp", r))?
        }
        Some(Value::Number(n)) => {
            parse_timestamp(&n.to_string()).map_err(|r| FixError::new("location.timestamp", r))?
        }
        Some(_) => {
            return Err(FixError::new(
                "location.timestamp",
                "must be an ISO 8601 string such as 2024-05-01T12:00:00.000Z",
            ));
        }
    };
    let lat = json_number(coords, "latitude", "location.coords.latitude")?
        .ok_or_else(|| FixError::new("location.coords.latitude", "is missing"))?;
    let lon = json_number(coords, "longitude", "location.coords.longitude")?
        .ok_or_else(|| FixError::new("location.coords.longitude", "is missing"))?;
    let battery = match object(location, "battery", "location.battery")? {
        Some(b) => json_number(b, "level", "location.battery.level")?,
        None => None,
    };
    let input = FixInput {
        vehicle_id: device_id,
        ts_ms,
        lat,
        lon,
        speed_kmh: json_number(coords, "speed", "location.coords.speed")?
            .filter(|v| *v >= 0.0)
            .map(|mps| mps * 3.6),
        heading_deg: json_number(coords, "heading", "location.coords.heading")?
            .filter(|v| *v >= 0.0),
        battery_pct: battery.filter(|v| *v >= 0.0).map(|level| level * 100.0),
        accuracy_m: json_number(coords, "accuracy", "location.coords.accuracy")?,
        altitude_m: json_number(coords, "altitude", "location.coords.altitude")?,
        odometer_m: json_number(location, "odometer", "location.odometer")?,
        ..FixInput::default()
    };
    input.validate(now_ms).map_err(|e| {
        rename(
            e,
            &[
                ("vehicle_id", "device_id", ""),
                ("ts", "location.timestamp", ""),
                ("lat", "location.coords.latitude", ""),
                ("lon", "location.coords.longitude", ""),
                (
                    "speed_kmh",
                    "location.coords.speed",
                    " (km/h, converted from m/s)",
                ),
                ("heading_deg", "location.coords.heading", " (degrees)"),
                (
                    "battery_pct",
                    "location.battery.level",
                    " (percent, converted from the 0–1 level)",
                ),
                ("accuracy_m", "location.coords.accuracy", " (metres)"),
                ("altitude_m", "location.coords.altitude", " (metres)"),
                ("odometer_m", "location.odometer", " (metres)"),
            ],
        )
    })
}

/// An optional member that must be an object when present.
fn object<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, FixError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(FixError::new(path, "must be an object")),
    }
}

/// An optional member that must be a number when present.
fn json_number(
    parent: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<f64>, FixError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(FixError::new(path, "must be a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::Point;

    /// 2027-01-15T08:00:00Z.
    const NOW: i64 = 1_800_000_000_000;

    /// What a report should become: the vehicle id and the point at stored precision, or the
    /// field of the error and a piece of its reason.
    enum Expect {
        Fix(&'static str, Point),
        Error(&'static str, &'static str),
    }

    fn point(ts: i64, lat_e6: i32, lon_e6: i32) -> Point {
        Point {
            ts,
            lat_e6,
            lon_e6,
            ..Point::default()
        }
    }

    fn check(input: OsmandBody<'_>, expect: Expect) {
        check_result(parse(input, NOW), &format!("{input:?}"), expect);
    }

    fn check_result(got: Result<Fix, FixError>, what: &str, expect: Expect) {
        match expect {
            Expect::Fix(id, want) => {
                let fix = got.unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                assert_eq!(fix.vehicle_id.as_str(), id, "{what}");
                assert_eq!(fix.point, want, "{what}");
            }
            Expect::Error(field, reason) => {
                let err = got.expect_err(what);
                assert_eq!(err.field, field, "{what}: {err}");
                assert!(err.reason.contains(reason), "{what}: {err}");
            }
        }
    }

    fn query(text: &'static str, expect: Expect) {
        check(OsmandBody::Query(text), expect);
    }

    const JAN_2021: i64 = 1_609_459_200_000;

    #[test]
    fn a_full_osmand_query_maps_every_field() {
        query(
            "id=123456&timestamp=1609459200&lat=52.5&lon=13.4&speed=10&bearing=90&altitude=35\
             &accuracy=5&batt=80",
            Expect::Fix(
                "123456",
                Point {
                    speed_dkmh: Some(185), // 10 kn = 18.52 km/h
                    heading_ddeg: Some(900),
                    altitude_dm: Some(350),
                    accuracy_dm: Some(50),
                    battery_dpct: Some(800),
                    ..point(JAN_2021, 52_500_000, 13_400_000)
                },
            ),
        );
    }

    #[test]
    fn aliases_and_the_location_parameter() {
        query(
            "deviceid=scooter-7&location=52.5,13.4&timestamp=2021-01-01T00:00:00Z",
            Expect::Fix("scooter-7", point(JAN_2021, 52_500_000, 13_400_000)),
        );
        query(
            "?id=a&lat=1&lon=2&heading=359.94&timestamp=1609459200",
            Expect::Fix(
                "a",
                Point {
                    heading_ddeg: Some(3599),
                    ..point(JAN_2021, 1_000_000, 2_000_000)
                },
            ),
        );
        // The last occurrence counts, across aliases; earlier ones are not checked.
        query(
            "id=old&deviceid=new&lat=abc&location=1,2&lon=3&timestamp=junk&timestamp=1609459200",
            Expect::Fix("new", point(JAN_2021, 1_000_000, 3_000_000)),
        );
    }

    #[test]
    fn timestamps_in_every_form() {
        // A later clock, so that the largest epoch seconds (in 2038) are not in the future.
        const LATER: i64 = 4_000_000_000_000;
        let at = |ts: &'static str, want: i64| {
            let q = format!("id=v&lat=1&lon=2&timestamp={ts}");
            check_result(
                parse(OsmandBody::Query(&q), LATER),
                &q,
                Expect::Fix("v", point(want, 1_000_000, 2_000_000)),
            );
        };
        at("1609459200", JAN_2021);
        at("1609459200000", JAN_2021);
        at("1609459200123", JAN_2021 + 123);
        at("1609459200.5", JAN_2021 + 500);
        at("1609459200.123999", JAN_2021 + 123);
        at("1609459200123.9", JAN_2021 + 123);
        at("2147483647", 2_147_483_647_000); // the last value read as seconds
        at("2147483648", 2_147_483_648); // the first read as milliseconds
        at("0", 0);
        at("-1.5", -1500);
        at("2021-01-01T00:00:00Z", JAN_2021);
        at("2021-01-01T02:00:00.250%2B02:00", JAN_2021 + 250);
        at("2021-01-01%2000:00:00", JAN_2021);
        at("2021-01-01+00:00:00.5", JAN_2021 + 500);
        at("2021-01-01%2001:00:00%2B01:00", JAN_2021);
        at("", LATER); // empty: server time
        query(
            "id=v&lat=1&lon=2",
            Expect::Fix("v", point(NOW, 1_000_000, 2_000_000)),
        );
    }

    #[test]
    fn a_form_body_and_a_merged_post() {
        check(
            OsmandBody::Form(b"id=v+1&lat=1&lon=2"),
            Expect::Error("id", "may contain only"), // `+` is a space
        );
        check(
            OsmandBody::Form(b"id=v%2D1&lat=1&lon=2&timestamp=2021-01-01+00:00:00&valid=true"),
            Expect::Fix("v-1", point(JAN_2021, 1_000_000, 2_000_000)),
        );
        let merged = parse_merged(
            "id=from-query&lat=1&lon=2&timestamp=1609459200",
            OsmandBody::Form(b"lat=3&id=from-body"),
            NOW,
        );
        check_result(
            merged,
            "merged",
            Expect::Fix("from-body", point(JAN_2021, 3_000_000, 2_000_000)),
        );
        for empty in [OsmandBody::Form(b""), OsmandBody::Json(b" \n")] {
            check_result(
                parse_merged("?id=q&lat=1&lon=2", empty, NOW),
                "empty body",
                Expect::Fix("q", point(NOW, 1_000_000, 2_000_000)),
            );
        }
    }

    #[test]
    fn unknown_and_empty_optional_parameters_are_ignored() {
        query(
            "id=v&lat=1&lon=2&valid=false&charge=true&driverUniqueId=42&event=start&motion=1\
             &hdop=0.9&cell=1,2,3,4&LAT=99&speed=&batt=",
            Expect::Fix("v", point(NOW, 1_000_000, 2_000_000)),
        );
    }

    #[test]
    fn negative_speed_and_bearing_mean_unknown() {
        query(
            "id=v&lat=1&lon=2&speed=-1&bearing=-1",
            Expect::Fix("v", point(NOW, 1_000_000, 2_000_000)),
        );
    }

    const CLIENT_9: &str = r#"{"location":{"timestamp":"2024-05-01T12:00:00.000Z","coords":{"latitude":52.52,"longitude":13.40,"accuracy":5.2,"speed":3.5,"heading":90,"altitude":34.0},"is_moving":true,"odometer":1234.5,"event":"motionchange","battery":{"level":0.83,"is_charging":false},"activity":{"type":"walking"}},"device_id":"scooter-1"}"#;
    const MAY_2024_NOON: i64 = 1_714_564_800_000;

    #[test]
    fn the_traccar_client_9_json_body() {
        check(
            OsmandBody::Json(CLIENT_9.as_bytes()),
            Expect::Fix(
                "scooter-1",
                Point {
                    speed_dkmh: Some(126), // 3.5 m/s = 12.6 km/h
                    heading_ddeg: Some(900),
                    battery_dpct: Some(830),
                    accuracy_dm: Some(52),
                    altitude_dm: Some(340),
                    odometer_m: Some(1235), // 1234.5 m rounds half away from zero
                    ..point(MAY_2024_NOON, 52_520_000, 13_400_000)
                },
            ),
        );
        // Unknown values: speed, heading and battery level of -1; nulls; no timestamp.
        let unknown = CLIENT_9
            .replace(r#""speed":3.5"#, r#""speed":-1"#)
            .replace(r#""heading":90"#, r#""heading":-1"#)
            .replace(r#""level":0.83"#, r#""level":-1"#)
            .replace(r#""altitude":34.0"#, r#""altitude":null"#)
            .replace(r#""odometer":1234.5"#, r#""odometer":null"#)
            .replace(r#""timestamp":"2024-05-01T12:00:00.000Z","#, "");
        check(
            OsmandBody::Json(unknown.as_bytes()),
            Expect::Fix(
                "scooter-1",
                Point {
                    accuracy_dm: Some(52),
                    ..point(NOW, 52_520_000, 13_400_000)
                },
            ),
        );
        let minimal = br#"{"device_id":"v","location":{"timestamp":1609459200,"coords":{"latitude":1,"longitude":2}},"extras":{}}"#;
        check(
            OsmandBody::Json(minimal),
            Expect::Fix("v", point(JAN_2021, 1_000_000, 2_000_000)),
        );
        // A JSON body is a report on its own: the query is not read.
        check_result(
            parse_merged("id=q&lat=5&lon=5", OsmandBody::Json(minimal), NOW),
            "json with query",
            Expect::Fix("v", point(JAN_2021, 1_000_000, 2_000_000)),
        );
    }

    #[test]
    fn refused_queries_name_their_parameter() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"", "", "neither parameters"),
            (b"&&", "", "neither parameters"),
            (b"lat=1&lon=2", "id", "is missing"),
            (b"id=&lat=1&lon=2", "id", "must not be empty"),
            (
                b"deviceid=a%20b&lat=1&lon=2",
                "deviceid",
                "may contain only",
            ),
            (b"id=v&lon=2", "lat", "is missing"),
            (b"id=v&lat=1", "lon", "is missing"),
            (b"id=v&lat=&lon=2", "lat", "is empty"),
            (b"id=v&lat=abc&lon=2", "lat", "\"abc\" is not a number"),
            (b"id=v&lat=52,5&lon=2", "lat", "is not a number"),
            (b"id=v&lat=91&lon=2", "lat", "between -90 and 90"),
            (b"id=v&lat=1&lon=180.0001", "lon", "between -180 and 180"),
            (b"id=v&lat=NaN&lon=2", "lat", "not a finite number"),
            (b"id=v&lat=1e999&lon=2", "lat", "not a finite number"),
            (b"id=v&location=1&lon=2", "location", "latitude,longitude"),
            (b"id=v&location=1,x", "location", "latitude,longitude"),
            (b"id=v&location=95,2", "location", "(the latitude)"),
            (b"id=v&location=5,200", "location", "(the longitude)"),
            (
                b"id=v&lat=1&lon=2&timestamp=notadate",
                "timestamp",
                "not a date-time",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=2021-01-01T00:00:00",
                "timestamp",
                "no UTC offset",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=2021-02-30T00:00:00Z",
                "timestamp",
                "not a date-time",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=1.6e9",
                "timestamp",
                "plain digits",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=99999999999999999999999",
                "timestamp",
                "out of range",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=-9223372036854775808",
                "timestamp",
                "out of range",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=-99999999999",
                "timestamp",
                "out of range",
            ),
            (
                b"id=v&lat=1&lon=2&timestamp=1900000000",
                "timestamp",
                "in the future",
            ),
            (b"id=v&lat=1&lon=2&speed=fast", "speed", "not a number"),
            (
                b"id=v&lat=1&lon=2&speed=135",
                "speed",
                "(km/h, converted from knots)",
            ),
            (
                b"id=v&lat=1&lon=2&heading=361",
                "heading",
                "between 0 and 360",
            ),
            (b"id=v&lat=1&lon=2&batt=101", "batt", "between 0 and 100"),
            (b"id=v&lat=1&lon=2&accuracy=-3", "accuracy", "between 0"),
            (
                b"id=v&lat=1&lon=2&altitude=1e300",
                "altitude",
                "between -1000 and 20000",
            ),
            // Bad percent-encoding stays literal and fails its field's check.
            (b"id=v&lat=%zz&lon=2", "lat", "\"%zz\" is not a number"),
            (b"id=v%&lat=1&lon=2", "id", "may contain only"),
            // Bytes that are not UTF-8, raw or percent-encoded, become U+FFFD.
            (b"id=v\xff&lat=1&lon=2", "id", "may contain only"),
            (b"id=v&lat=1%FF&lon=2", "lat", "is not a number"),
        ];
        for (body, field, reason) in cases {
            let what = String::from_utf8_lossy(body);
            check_result(
                parse(OsmandBody::Form(body), NOW),
                &what,
                Expect::Error(field, reason),
            );
        }
    }

    #[test]
    fn refused_json_names_its_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", "neither parameters nor a JSON body"),
            ("{", "", "not valid JSON"),
            ("[]", "", "must be a JSON object"),
            ("\"x\"", "", "must be a JSON object"),
            (
                r#"{"location":{"coords":{"latitude":1,"longitude":2}}}"#,
                "device_id",
                "is missing",
            ),
            (
                r#"{"device_id":7,"location":{}}"#,
                "device_id",
                "must be a string",
            ),
            (
                r#"{"device_id":"a b","location":{"coords":{"latitude":1,"longitude":2}}}"#,
                "device_id",
                "may contain only",
            ),
            (r#"{"device_id":"v"}"#, "location", "is missing"),
            (r#"{"device_id":"v","location":[]}"#, "location", "batches"),
            (
                r#"{"device_id":"v","location":"here"}"#,
                "location",
                "must be an object",
            ),
            (
                r#"{"device_id":"v","location":{}}"#,
                "location.coords",
                "is missing",
            ),
            (
                r#"{"device_id":"v","location":{"coords":"52.5,13.4"}}"#,
                "location.coords",
                "must be an object",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"longitude":2}}}"#,
                "location.coords.latitude",
                "is missing",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":"1","longitude":2}}}"#,
                "location.coords.latitude",
                "must be a number",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":1,"longitude":1e400}}}"#,
                "",
                "not valid JSON",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":1,"longitude":200}}}"#,
                "location.coords.longitude",
                "between",
            ),
            (
                r#"{"device_id":"v","location":{"timestamp":"soon","coords":{"latitude":1,"longitude":2}}}"#,
                "location.timestamp",
                "not a date-time",
            ),
            (
                r#"{"device_id":"v","location":{"timestamp":true,"coords":{"latitude":1,"longitude":2}}}"#,
                "location.timestamp",
                "ISO 8601",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":1,"longitude":2,"speed":70}}}"#,
                "location.coords.speed",
                "converted from m/s",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":1,"longitude":2},"battery":{"level":1.5}}}"#,
                "location.battery.level",
                "0–1 level",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":1,"longitude":2},"battery":0.5}}"#,
                "location.battery",
                "must be an object",
            ),
            (
                r#"{"device_id":"v","location":{"coords":{"latitude":1,"longitude":2},"odometer":-1}}"#,
                "location.odometer",
                "between",
            ),
        ];
        for (body, field, reason) in cases {
            check_result(
                parse(OsmandBody::Json(body.as_bytes()), NOW),
                body,
                Expect::Error(field, reason),
            );
        }
        check(
            OsmandBody::Json(b"{\"device_id\":\"v\xff\"}"),
            Expect::Error("", "not valid JSON"),
        );
    }
}

#[cfg(test)]
mod garbage {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    proptest! {
        /// No request, however mangled, panics the parser, and a refusal always says why.
        #[test]
        fn any_bytes_are_judged_without_panicking(
            query in ".{0,80}",
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            kind in 0u8..3,
        ) {
            let body = match kind {
                0 => OsmandBody::Form(&bytes),
                1 => OsmandBody::Json(&bytes),
                _ => OsmandBody::Query(&query),
            };
            if let Err(e) = parse_merged(&query, body, NOW) {
                prop_assert!(!e.reason.is_empty());
            }
        }

        /// Well-formed requests with random values are accepted or refused with a named
        /// parameter.
        #[test]
        fn random_values_are_refused_by_parameter(
            lat in ".{0,12}|-?[0-9]{1,3}\\.[0-9]{0,8}",
            ts in ".{0,12}|-?[0-9]{1,20}(\\.[0-9]{0,5})?",
            speed in any::<f64>(),
        ) {
            let mut query = String::new();
            form_urlencoded::Serializer::new(&mut query)
                .append_pair("id", "v")
                .append_pair("lat", &lat)
                .append_pair("lon", "2")
                .append_pair("timestamp", &ts)
                .append_pair("speed", &speed.to_string());
            if let Err(e) = parse(OsmandBody::Query(&query), NOW) {
                prop_assert!(["lat", "timestamp", "speed"].contains(&e.field.as_str()), "{e:?}");
            }
        }

        /// Traccar Client JSON with random numbers is accepted or refused with a named path.
        #[test]
        fn random_json_numbers_are_refused_by_path(
            lat in any::<f64>(), speed in any::<f64>(), level in any::<f64>(), ts in any::<i64>(),
        ) {
            let body = format!(
                r#"{{"device_id":"v","location":{{"timestamp":{ts},"coords":{{"latitude":{lat:e},"longitude":1,"speed":{speed:e}}},"battery":{{"level":{level:e}}}}}}}"#
            );
            if let Err(e) = parse(OsmandBody::Json(body.as_bytes()), NOW) {
                prop_assert!(
                    ["", "location.timestamp", "location.coords.latitude", "location.coords.speed",
                     "location.battery.level"].contains(&e.field.as_str()),
                    "{e:?}"
                );
            }
        }
    }
}
