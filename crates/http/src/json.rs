//! Fast, allocation-light JSON output of fixes. Coordinates and the other fixed-point fields
//! are printed from their stored integers, so the output is exact to stored precision and
//! needs no float formatting.

use kickstand_domain::timefmt::write_ms;
use kickstand_domain::{Point, VehicleId};

/// Writes `value / 10^decimals` as a JSON number, trailing zeros trimmed, without allocating.
pub fn fixed(out: &mut String, value: i64, decimals: u32) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let mut v = value.unsigned_abs();
    let mut frac_digits = 0;
    // Fraction digits, skipping trailing zeros.
    let mut started = false;
    for _ in 0..decimals {
        let d = (v % 10) as u8;
        v /= 10;
        if d != 0 || started {
            started = true;
            i -= 1;
            buf[i] = b'0' + d;
            frac_digits += 1;
        }
    }
    if frac_digits > 0 {
        i -= 1;
        buf[i] = b'.';
    }
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if value < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

/// Writes the fields of a point (without braces), starting with `"ts"`.
pub fn point_fields(out: &mut String, p: &Point) {
    out.push_str("\"ts\":\"");
    write_ms(out, p.ts);
    out.push_str("\",\"lat\":");
    fixed(out, i64::from(p.lat_e6), 6);
    out.push_str(",\"lon\":");
    fixed(out, i64::from(p.lon_e6), 6);
    let opt = |out: &mut String, name: &str, v: Option<i64>, d: u32| {
        if let Some(v) = v {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            fixed(out, v, d);
        }
    };
    opt(out, "speed_kmh", p.speed_dkmh.map(i64::from), 1);
    opt(out, "heading_deg", p.heading_ddeg.map(i64::from), 1);
    opt(out, "battery_pct", p.battery_dpct.map(i64::from), 1);
    opt(out, "accuracy_m", p.accuracy_dm.map(i64::from), 1);
    opt(out, "altitude_m", p.altitude_dm.map(i64::from), 1);
    opt(out, "odometer_m", p.odometer_m.map(|v| v as i64), 0);
    if let Some(s) = p.state {
        out.push_str(",\"state\":\"");
        out.push_str(s.as_str());
        out.push('"');
    }
    if let Some(l) = p.locked {
        out.push_str(if l {
            ",\"locked\":true"
        } else {
            ",\"locked\":false"
        });
    }
}

/// A vehicle's latest state as a JSON object; `distance_m` for `near` results.
pub fn vehicle(out: &mut String, id: &VehicleId, p: &Point, distance_m: Option<f64>) {
    // Vehicle ids are validated to a JSON-safe alphabet: no escaping needed.
    out.push_str("{\"vehicle_id\":\"");
    out.push_str(id.as_str());
    out.push_str("\",");
    point_fields(out, p);
    if let Some(d) = distance_m {
        out.push_str(",\"distance_m\":");
        fixed(out, (d * 10.0).round() as i64, 1);
    }
    out.push('}');
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
        ];
        for (v, d, want) in cases {
            let mut s = String::new();
            fixed(&mut s, v, d);
            assert_eq!(s, want);
            assert_eq!(s.parse::<f64>().unwrap(), v as f64 / 10f64.powi(d as i32));
        }
    }
}
