//! The messages the measurement sends: GPS fixes encoded as JSON, either one fix per message or
//! a batch of fixes in one JSON array. Generation is deterministic (fixed seed) and happens before
//! any timing starts, so it never counts against a client.
//!
//! This module does no I/O.

use std::fmt::Write as _;

/// The operational states a vehicle reports, with rough real-world frequencies built in by
/// repetition (most fixes come from vehicles that are idle or on a trip).
const STATES: [&str; 8] = [
    "idle",
    "on_trip",
    "on_trip",
    "on_trip",
    "idle",
    "charging",
    "on_trip",
    "maintenance",
];

/// 2026-11-18T00:00:00Z in epoch milliseconds; fixes are timestamped after it.
const T0_MS: u64 = 1_795_564_800_000;

/// A small deterministic PRNG (splitmix64), the same one engine-compare uses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Writes one fix as a JSON object, e.g.
/// `{"vehicle_id":"scooter-000123","ts":1795564800000,"lat":37.566512,"lon":126.978011,
/// "battery_pct":81.5,"state":"on_trip"}`. Coordinates fall in a box around central Seoul.
fn write_fix(out: &mut String, rng: &mut Rng, seq: u64) {
    let vehicle = rng.next() % 200_000;
    let ts = T0_MS + seq * 250 + rng.next() % 250;
    let lat = 37.45 + rng.unit() * 0.25;
    let lon = 126.80 + rng.unit() * 0.35;
    let battery = (rng.unit() * 1000.0).round() / 10.0;
    let state = STATES[(rng.next() % STATES.len() as u64) as usize];
    write!(
        out,
        r#"{{"vehicle_id":"scooter-{vehicle:06}","ts":{ts},"lat":{lat:.6},"lon":{lon:.6},"battery_pct":{battery:.1},"state":"{state}"}}"#
    )
    .expect("writing to a String cannot fail");
}

/// `count` distinct messages, each one JSON array of `fixes_per_message` fixes.
pub(crate) fn batch_messages(count: usize, fixes_per_message: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut seq = 0;
    (0..count)
        .map(|_| {
            let mut s = String::with_capacity(fixes_per_message * 120 + 2);
            s.push('[');
            for i in 0..fixes_per_message {
                if i > 0 {
                    s.push(',');
                }
                write_fix(&mut s, &mut rng, seq);
                seq += 1;
            }
            s.push(']');
            s.into_bytes()
        })
        .collect()
}

/// `count` distinct messages, each a single fix as one JSON object.
pub(crate) fn single_fix_messages(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..count as u64)
        .map(|seq| {
            let mut s = String::with_capacity(128);
            write_fix(&mut s, &mut rng, seq);
            s.into_bytes()
        })
        .collect()
}

/// The "trivial processing" a consumer does with a delivery: check that the body looks like one
/// JSON value (an array or an object) and return its length. It is deliberately cheap, so that
/// the consumer's CPU time is dominated by the client library, not by our work.
pub(crate) fn check_body(body: &[u8]) -> Option<usize> {
    match (body.first(), body.last()) {
        (Some(b'['), Some(b']')) | (Some(b'{'), Some(b'}')) => Some(body.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_a_json_array_of_fixes_of_about_100_kb() {
        let msgs = batch_messages(2, 1_000, 7);
        assert_ne!(msgs[0], msgs[1]);
        for m in &msgs {
            let v: serde_json::Value = serde_json::from_slice(m).expect("valid JSON");
            let fixes = v.as_array().expect("an array");
            assert_eq!(fixes.len(), 1_000);
            assert!(
                fixes[0]["vehicle_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("scooter-")
            );
            assert!(fixes[0]["lat"].as_f64().unwrap() > 37.0);
            assert!((90_000..130_000).contains(&m.len()), "size {}", m.len());
            assert_eq!(check_body(m), Some(m.len()));
        }
    }

    #[test]
    fn single_fix_is_a_json_object_of_about_120_bytes() {
        for m in single_fix_messages(50, 9) {
            let v: serde_json::Value = serde_json::from_slice(&m).expect("valid JSON");
            assert!(v.is_object());
            assert!((100..140).contains(&m.len()), "size {}", m.len());
        }
    }

    #[test]
    fn check_body_rejects_non_json_shapes() {
        assert_eq!(check_body(b""), None);
        assert_eq!(check_body(b"[1"), None);
        assert_eq!(check_body(b"{}"), Some(2));
    }
}
