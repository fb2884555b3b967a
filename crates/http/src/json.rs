//! Fast, allocation-light JSON output of fixes, shared by the API and `kickstand export`.
//! Coordinates and the other fixed-point fields are printed from their stored integers, so the
//! output is exact to stored precision and needs no float formatting. Output goes to a byte
//! buffer (everything written is ASCII), which skips UTF-8 checks on the hot path: a 24-hour
//! track is 86,400 objects.

use kickstand_domain::timefmt::Rfc3339Writer;
use kickstand_domain::{Point, VehicleId};

/// Two ASCII digits for every number below 100.
const DIGITS2: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `value / 10^decimals` as a JSON number, trailing zeros trimmed.
pub fn fixed(out: &mut Vec<u8>, value: i64, decimals: u32) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let mut v = value.unsigned_abs();
    // Fraction digits, skipping trailing zeros.
    let mut started = false;
    for _ in 0..decimals {
        let d = (v % 10) as u8;
        v /= 10;
        if d != 0 || started {
            started = true;
            i -= 1;
            buf[i] = b'0' + d;
        }
    }
    if started {
        i -= 1;
        buf[i] = b'.';
    }
    // The integer part, two digits at a time.
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    if value < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes a timestamp as a quoted RFC 3339 string (UTC, milliseconds). `clock` caches the date
/// between calls.
pub fn ts(out: &mut Vec<u8>, clock: &mut Rfc3339Writer, ms: i64) {
    out.push(b'"');
    match clock.format(ms) {
        Some(b) => out.extend_from_slice(&b),
        // Validation keeps stored times within the years 0–9999; print the number otherwise.
        None => out.extend_from_slice(ms.to_string().as_bytes()),
    }
    out.push(b'"');
}

/// Writes an id as a JSON string. Vehicle ids are validated to `[A-Za-z0-9_.:-]`, which needs
/// no escaping.
pub fn id(out: &mut Vec<u8>, id: &VehicleId) {
    out.push(b'"');
    out.extend_from_slice(id.as_str().as_bytes());
    out.push(b'"');
}

/// Writes the fields of a point (without braces), starting with `"ts"`.
pub fn point_fields(out: &mut Vec<u8>, clock: &mut Rfc3339Writer, p: &Point) {
    out.extend_from_slice(b"\"ts\":");
    ts(out, clock, p.ts);
    out.extend_from_slice(b",\"lat\":");
    fixed(out, i64::from(p.lat_e6), 6);
    out.extend_from_slice(b",\"lon\":");
    fixed(out, i64::from(p.lon_e6), 6);
    let opt = |out: &mut Vec<u8>, name: &[u8], v: Option<i64>, d: u32| {
        if let Some(v) = v {
            out.extend_from_slice(name);
            fixed(out, v, d);
        }
    };
    opt(out, b",\"speed_kmh\":", p.speed_dkmh.map(i64::from), 1);
    opt(out, b",\"heading_deg\":", p.heading_ddeg.map(i64::from), 1);
    opt(out, b",\"battery_pct\":", p.battery_dpct.map(i64::from), 1);
    opt(out, b",\"accuracy_m\":", p.accuracy_dm.map(i64::from), 1);
    opt(out, b",\"altitude_m\":", p.altitude_dm.map(i64::from), 1);
    opt(out, b",\"odometer_m\":", p.odometer_m.map(|v| v as i64), 0);
    if let Some(s) = p.state {
        out.extend_from_slice(b",\"state\":\"");
        out.extend_from_slice(s.as_str().as_bytes());
        out.push(b'"');
    }
    if let Some(l) = p.locked {
        out.extend_from_slice(if l {
            b",\"locked\":true"
        } else {
            b",\"locked\":false"
        });
    }
    if !p.quality.is_good() {
        out.extend_from_slice(b",\"quality\":[");
        for (i, name) in p.quality.names().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
        }
        out.push(b']');
    }
}

/// A vehicle's latest state (or one fix of it) as a JSON object; `distance_m` for `near`.
pub fn vehicle(out: &mut Vec<u8>, vehicle: &VehicleId, p: &Point, distance_m: Option<f64>) {
    out.extend_from_slice(b"{\"vehicle_id\":");
    id(out, vehicle);
    out.push(b',');
    point_fields(out, &mut Rfc3339Writer::default(), p);
    if let Some(d) = distance_m {
        out.extend_from_slice(b",\"distance_m\":");
        fixed(out, (d * 10.0).round() as i64, 1);
    }
    out.push(b'}');
}

/// How a track is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackFormat {
    /// Kickstand's JSON: the range, the count and the fixes in time order.
    Json,
    /// A GeoJSON Feature: a LineString of `[lon, lat]` with the times in its properties.
    GeoJson,
}

/// Writes a track in pieces of about `piece_bytes`, handing each to `emit` as soon as it is
/// full, so a long track streams while it is written and is never held whole in memory.
/// `emit` returns `false` to stop (the client went away).
pub fn track_pieces(
    format: TrackFormat,
    vehicle: &VehicleId,
    (from, to): (i64, i64),
    points: &[Point],
    piece_bytes: usize,
    emit: &mut dyn FnMut(Vec<u8>) -> bool,
) {
    let mut out = Vec::with_capacity(piece_bytes + 512);
    let mut clock = Rfc3339Writer::default();
    // Emits the piece when full; false when the receiver is gone.
    let mut flush = |out: &mut Vec<u8>, force: bool| -> bool {
        if out.len() >= piece_bytes || (force && !out.is_empty()) {
            let piece = std::mem::replace(out, Vec::with_capacity(piece_bytes + 512));
            return emit(piece);
        }
        true
    };
    match format {
        TrackFormat::GeoJson => {
            out.extend_from_slice(
                b"{\"type\":\"Feature\",\"geometry\":{\"type\":\"LineString\",\"coordinates\":[",
            );
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                fixed(&mut out, i64::from(p.lon_e6), 6);
                out.push(b',');
                fixed(&mut out, i64::from(p.lat_e6), 6);
                out.push(b']');
                if !flush(&mut out, false) {
                    return;
                }
            }
            out.extend_from_slice(b"]},\"properties\":{\"vehicle_id\":");
            id(&mut out, vehicle);
            out.extend_from_slice(b",\"times\":[");
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                ts(&mut out, &mut clock, p.ts);
                if !flush(&mut out, false) {
                    return;
                }
            }
            out.extend_from_slice(b"]}}");
        }
        TrackFormat::Json => {
            out.extend_from_slice(b"{\"vehicle_id\":");
            id(&mut out, vehicle);
            out.extend_from_slice(b",\"from\":");
            ts(&mut out, &mut clock, from);
            out.extend_from_slice(b",\"to\":");
            ts(&mut out, &mut clock, to);
            out.extend_from_slice(b",\"count\":");
            out.extend_from_slice(points.len().to_string().as_bytes());
            out.extend_from_slice(b",\"fixes\":[");
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                point_fields(&mut out, &mut clock, p);
                out.push(b'}');
                if !flush(&mut out, false) {
                    return;
                }
            }
            out.extend_from_slice(b"]}");
        }
    }
    flush(&mut out, true);
}

/// A whole track in one buffer.
pub fn track(
    format: TrackFormat,
    vehicle: &VehicleId,
    range: (i64, i64),
    points: &[Point],
) -> Vec<u8> {
    let mut all = Vec::new();
    track_pieces(format, vehicle, range, points, 1 << 16, &mut |piece| {
        all.extend_from_slice(&piece);
        true
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_numbers_are_exact() {
        let cases = [
            (37_566_500, 6, "37.5665"),
            (-1, 6, "-0.000001"),
            (0, 1, "0"),
            (1000, 1, "100"),
            (-126_978_000, 6, "-126.978"),
            (i64::MIN, 0, "-9223372036854775808"),
            (123_000_450, 6, "123.00045"),
            (9, 0, "9"),
            (10, 0, "10"),
            (99, 0, "99"),
            (100, 0, "100"),
            (12_345, 2, "123.45"),
            (-1_000_000, 6, "-1"),
        ];
        for (v, d, want) in cases {
            let mut s = Vec::new();
            fixed(&mut s, v, d);
            let s = String::from_utf8(s).unwrap();
            assert_eq!(s, want);
            assert_eq!(s.parse::<f64>().unwrap(), v as f64 / 10f64.powi(d as i32));
        }
    }

    #[test]
    fn output_is_valid_json_that_round_trips() {
        let p = Point {
            ts: 1_795_602_030_123,
            lat_e6: 37_566_500,
            lon_e6: -126_978_000,
            battery_dpct: Some(555),
            state: Some(kickstand_domain::VehicleState::OnTrip),
            locked: Some(false),
            ..Point::default()
        };
        let id = VehicleId::new("v:1").unwrap();
        let out = track(TrackFormat::Json, &id, (0, 1), &[p, p]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["count"], 2);
        assert_eq!(v["fixes"][0]["ts"], "2026-11-25T10:20:30.123Z");
        assert_eq!(v["fixes"][1]["lon"], -126.978);
        assert_eq!(v["fixes"][1]["battery_pct"], 55.5);
        let out = track(TrackFormat::GeoJson, &id, (0, 1), &[p]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["geometry"]["coordinates"][0][1], 37.5665);
        // Pieces of any size concatenate to the same document.
        let many: Vec<Point> = (0..1000).map(|i| Point { ts: i, ..p }).collect();
        let whole = track(TrackFormat::Json, &id, (0, 1), &many);
        let mut pieces = Vec::new();
        track_pieces(TrackFormat::Json, &id, (0, 1), &many, 100, &mut |piece| {
            assert!(!piece.is_empty());
            pieces.push(piece);
            true
        });
        assert!(pieces.len() > 100);
        assert_eq!(pieces.concat(), whole);
    }
}
