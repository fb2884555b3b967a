//! Fast, allocation-light JSON output of fixes. Coordinates and the other fixed-point fields
//! are printed from their stored integers, so the output is exact to stored precision and
//! needs no float formatting.

use kickstand_domain::timefmt::write_ms;
use kickstand_domain::{Point, VehicleId};
use std::fmt::Write;

/// Writes `value / 10^decimals` as a JSON number, trailing zeros trimmed.
pub fn fixed(out: &mut String, value: i64, decimals: u32) {
    let scale = 10i64.pow(decimals);
    if value < 0 {
        out.push('-');
    }
    let v = value.unsigned_abs();
    let (int, frac) = (v / scale as u64, v % scale as u64);
    let _ = write!(out, "{int}");
    if frac != 0 {
        let mut digits = format!("{frac:0width$}", width = decimals as usize);
        while digits.ends_with('0') {
            digits.pop();
        }
        out.push('.');
        out.push_str(&digits);
    }
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
        out.push_str(if l { ",\"locked\":true" } else { ",\"locked\":false" });
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
        let cases = [(37_566_500, 6, "37.5665"), (-1, 6, "-0.000001"), (0, 1, "0"), (1000, 1, "100"), (-126_978_000, 6, "-126.978")];
        for (v, d, want) in cases {
            let mut s = String::new();
            fixed(&mut s, v, d);
            assert_eq!(s, want);
            assert_eq!(s.parse::<f64>().unwrap(), v as f64 / 10f64.powi(d as i32));
        }
    }
}
