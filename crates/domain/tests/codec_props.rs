//! Property tests of the point codec: exact round trips of any valid run of points, robustness
//! against garbage, and the compactness of realistic 1 Hz scooter traces.

use kickstand_domain::codec::{self, CodecError};
use kickstand_domain::{Point, VehicleState};
use proptest::prelude::*;

mod traces;
use traces::{Rng, moving_trace, parked_trace};

/// A run of points whose columns each follow a pattern picked from `seed`: absent, constant,
/// a slow walk, random over the type's full range, or a mix, with random presence.
fn patterned_trace(seed: u64, n: usize) -> Vec<Point> {
    let mut rng = Rng::new(seed);
    let mut ts = rng.range(-62_135_596_800_000, 253_402_300_799_999 - 10_000_000_000);
    let ts_pattern = rng.range(0, 2);
    let mut cols: Vec<(i64, i64, i64)> = Vec::new(); // (value pattern, presence pattern, state)
    for _ in 0..10 {
        cols.push((rng.range(0, 4), rng.range(0, 4), 0));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        ts += match ts_pattern {
            0 => 1000,
            1 => {
                1000 + if rng.chance(0.1) {
                    rng.range(-400, 400)
                } else {
                    0
                }
            }
            _ => rng.range(1, 100_000),
        };
        if ts > 253_402_300_799_999 {
            break;
        }
        let mut vals = [0i64; 10];
        let mut present = [true; 10];
        for (c, (pattern, presence, state)) in cols.iter_mut().enumerate() {
            let (lo, hi) = [
                (-90_000_000, 90_000_000),
                (-180_000_000, 180_000_000),
                (0, 2500),
                (0, 3600),
                (0, 1000),
                (0, u32::MAX as i64),
                (i32::MIN as i64, i32::MAX as i64),
                (0, 1_000_000_000_000),
                (1, 6),
                (0, 1),
            ][c];
            if i == 0 {
                *state = rng.range(lo, hi);
            }
            *state = match pattern {
                0 => *state,
                1 => (*state + rng.range(-3, 3)).clamp(lo, hi),
                2 => rng.range(lo, hi),
                _ if rng.chance(0.05) => rng.range(lo, hi),
                _ => *state,
            };
            vals[c] = *state;
            present[c] = match presence {
                0 => true,
                1 => false,
                2 => rng.chance(0.5),
                _ => (i / 37) % 2 == 0,
            };
        }
        out.push(Point {
            ts,
            lat_e6: vals[0] as i32,
            lon_e6: vals[1] as i32,
            speed_dkmh: present[2].then_some(vals[2] as u16),
            heading_ddeg: present[3].then_some(vals[3] as u16),
            battery_dpct: present[4].then_some(vals[4] as u16),
            accuracy_dm: present[5].then_some(vals[5] as u32),
            altitude_dm: present[6].then_some(vals[6] as i32),
            odometer_m: present[7].then_some(vals[7] as u64),
            state: present[8].then(|| VehicleState::from_code(vals[8] as u8).unwrap()),
            locked: present[9].then_some(vals[9] == 1),
            quality: Default::default(),
        });
    }
    out
}

fn encoded(points: &[Point]) -> Vec<u8> {
    let mut buf = Vec::new();
    codec::encode(points, &mut buf);
    buf
}

/// Decodes `bytes`, which must not panic; checks that a success agrees with the header and that
/// a failure leaves the output as it was.
fn decode_checked(bytes: &[u8]) -> Result<Vec<Point>, CodecError> {
    let keep = Point {
        ts: 7,
        ..Point::default()
    };
    let mut out = vec![keep];
    match codec::decode(bytes, &mut out) {
        Ok(()) => {
            assert_eq!(out[0], keep);
            assert_eq!(Ok(out.len() - 1), codec::count(bytes));
            out.remove(0);
            Ok(out)
        }
        Err(e) => {
            assert_eq!(out, vec![keep]);
            Err(e)
        }
    }
}

fn assert_round_trip(points: &[Point]) {
    let bytes = encoded(points);
    assert_eq!(codec::count(&bytes), Ok(points.len()));
    assert_eq!(decode_checked(&bytes).as_deref(), Ok(points));
}

#[test]
fn realistic_moving_trace_is_compact() {
    for seed in 1..=5 {
        let points = moving_trace(seed, 3600);
        let bytes = encoded(&points);
        let per_point = bytes.len() as f64 / points.len() as f64;
        println!("moving trace, seed {seed}: {per_point:.3} bytes/point");
        assert!(per_point <= 6.0, "{per_point} bytes/point");
        assert_round_trip(&points);
    }
}

#[test]
fn realistic_parked_trace_is_compact() {
    for seed in 1..=5 {
        let points = parked_trace(seed, 3600);
        let bytes = encoded(&points);
        let per_point = bytes.len() as f64 / points.len() as f64;
        println!("parked trace, seed {seed}: {per_point:.3} bytes/point");
        assert!(per_point <= 1.5, "{per_point} bytes/point");
        assert_round_trip(&points);
    }
}

#[test]
fn chunks_of_realistic_traces_round_trip() {
    let points = moving_trace(11, 3600);
    for len in [0, 1, 2, 3, 127, 128, 129, 130, 255, 256, 257, 1000] {
        assert_round_trip(&points[..len]);
        assert_round_trip(&points[points.len() - len..]);
    }
}

fn point() -> impl Strategy<Value = Point> {
    use proptest::option::of;
    (
        (
            -62_135_596_800_000i64..=253_402_300_799_999,
            -90_000_000i32..=90_000_000,
            -180_000_000i32..=180_000_000,
            of(0u16..=2500),
            of(0u16..=3600),
            of(0u16..=1000),
        ),
        (
            of(any::<u32>()),
            of(any::<i32>()),
            of(0u64..=1_000_000_000_000),
            of(proptest::sample::select(VehicleState::ALL.to_vec())),
            of(any::<bool>()),
            // Mostly good fixes, sometimes a flag, as in real data.
            prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        ),
    )
        .prop_map(
            |(
                (ts, lat_e6, lon_e6, speed_dkmh, heading_ddeg, battery_dpct),
                (accuracy_dm, altitude_dm, odometer_m, state, locked, quality),
            )| Point {
                ts,
                lat_e6,
                lon_e6,
                speed_dkmh,
                heading_ddeg,
                battery_dpct,
                accuracy_dm,
                altitude_dm,
                odometer_m,
                state,
                locked,
                quality: kickstand_domain::Quality(quality),
            },
        )
}

/// Runs of up to 2,000 points: timestamps anywhere in years 0..9999, or close together.
fn points() -> impl Strategy<Value = Vec<Point>> {
    let sparse = proptest::collection::vec(point(), 0..2000).prop_map(|mut v| {
        v.sort_by_key(|p| p.ts);
        v.dedup_by_key(|p| p.ts);
        v
    });
    let dense = (
        -62_135_596_800_000i64..=253_402_300_799_999 - 2000 * 5000,
        proptest::collection::vec((1i64..5000, point()), 0..2000),
    )
        .prop_map(|(start, v)| {
            let mut ts = start;
            v.into_iter()
                .map(|(step, p)| {
                    ts += step;
                    Point { ts, ..p }
                })
                .collect()
        });
    prop_oneof![sparse, dense]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_run_round_trips(points in points()) {
        assert_round_trip(&points);
    }

    #[test]
    fn patterned_runs_round_trip(seed in any::<u64>(), n in 0usize..2000) {
        assert_round_trip(&patterned_trace(seed, n));
    }

    #[test]
    fn truncations_and_bit_flips_never_panic(
        seed in any::<u64>(),
        n in 1usize..600,
        cut in any::<proptest::sample::Index>(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..8), 1..4),
    ) {
        let points = if seed % 2 == 0 { moving_trace(seed, n) } else { patterned_trace(seed, n) };
        let bytes = encoded(&points);
        // Every strict prefix is refused.
        let at = cut.index(bytes.len());
        prop_assert!(decode_checked(&bytes[..at]).is_err());
        let mut flipped = bytes.clone();
        for (i, bit) in flips {
            let i = i.index(flipped.len());
            flipped[i] ^= 1 << bit;
        }
        let _ = decode_checked(&flipped);
        let _ = codec::count(&flipped);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..600), v2 in any::<bool>()) {
        if v2 && !bytes.is_empty() {
            bytes[0] = 2;
        }
        let _ = codec::count(&bytes);
        let _ = decode_checked(&bytes);
    }
}

#[test]
fn garbage_counts_do_not_allocate() {
    // A header claiming 2^63 points in a few bytes is refused before anything is allocated.
    let mut bytes = vec![2];
    bytes.extend_from_slice(&[0xff; 8]);
    bytes.extend_from_slice(&[0x7f, 0, 0, 0, 0]);
    assert!(decode_checked(&bytes).is_err());
    // So is a million points in a hundred bytes.
    let mut bytes = vec![2, 0xc0, 0x84, 0x3d];
    bytes.resize(100, 0);
    assert!(matches!(
        decode_checked(&bytes),
        Err(CodecError::Corrupt(_))
    ));
}
