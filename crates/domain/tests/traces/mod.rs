//! Realistic 1 Hz scooter traces for the codec's tests and benchmark: a deterministic PRNG,
//! a moving trace (trips on a street grid with stops, turns and 1.5 m GPS noise) and a parked
//! one. Shared by `tests/codec_props.rs` and `benches/codec.rs` (through `#[path]`).

#![allow(dead_code)]

use kickstand_domain::{Point, VehicleState};

/// xorshift64* with Box–Muller Gaussians; deterministic for a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    pub fn gauss(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Units of 1e-6 degree per metre at latitude 37.57°.
const LAT_PER_M: f64 = 9.0;
const LON_PER_M: f64 = 9.0 / 0.7927;

/// The next timestamp of a 1 Hz stream: mostly exactly 1000 ms, sometimes jittered, rarely a gap.
pub fn next_ts(rng: &mut Rng, nominal: &mut i64) -> i64 {
    *nominal += 1000;
    if rng.chance(0.002) {
        *nominal += rng.range(1, 120) * 1000;
    }
    if rng.chance(0.03) {
        *nominal + rng.range(-40, 40)
    } else {
        *nominal
    }
}

/// A ridden scooter: a street grid at 10–25 km/h with turns and stops, 1.5 m GPS noise.
pub fn moving_trace(seed: u64, n: usize) -> Vec<Point> {
    let mut rng = Rng::new(seed);
    let mut nominal = 1_767_225_600_000i64;
    let (mut lat, mut lon) = (37_566_500.0f64, 126_978_000.0f64);
    let mut dir = 0usize; // 0 N, 1 E, 2 S, 3 W
    let mut kmh = 15.0f64;
    let mut stop = 0i64;
    let mut battery = 850u16;
    let mut accuracy = 45i64;
    let mut altitude = 380i32;
    let mut odometer = 123_456.0f64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ts = next_ts(&mut rng, &mut nominal);
        let parked = i < 60;
        if !parked && stop == 0 && rng.chance(0.01) {
            stop = rng.range(5, 40);
        }
        let speed = if parked || stop > 0 {
            stop = (stop - 1).max(0);
            0.0
        } else {
            kmh = (kmh + rng.gauss() * 0.3).clamp(10.0, 25.0);
            kmh
        };
        if speed > 0.0 && rng.chance(1.0 / 60.0) {
            dir = (dir + if rng.chance(0.5) { 1 } else { 3 }) % 4;
        }
        let metres = speed / 3.6;
        odometer += metres;
        match dir {
            0 => lat += metres * LAT_PER_M,
            1 => lon += metres * LON_PER_M,
            2 => lat -= metres * LAT_PER_M,
            _ => lon -= metres * LON_PER_M,
        }
        if rng.chance(1.0 / 30.0) {
            battery = battery.saturating_sub(1);
        }
        if rng.chance(0.15) {
            accuracy = (accuracy + rng.range(-5, 5)).clamp(30, 80);
        }
        if rng.chance(0.2) {
            altitude += rng.range(-1, 1) as i32;
        }
        let heading = (speed > 0.0).then(|| {
            ((dir as f64 * 900.0 + rng.gauss() * 5.0).round() as i64).rem_euclid(3600) as u16
        });
        out.push(Point {
            ts,
            lat_e6: (lat + rng.gauss() * 1.5 * LAT_PER_M).round() as i32,
            lon_e6: (lon + rng.gauss() * 1.5 * LON_PER_M).round() as i32,
            speed_dkmh: Some((speed * 10.0).round() as u16),
            heading_ddeg: heading,
            battery_dpct: Some(battery),
            accuracy_dm: Some(accuracy as u32),
            altitude_dm: Some(altitude),
            odometer_m: Some(odometer.round() as u64),
            state: Some(if parked {
                VehicleState::Available
            } else {
                VehicleState::OnTrip
            }),
            locked: Some(parked),
            quality: Default::default(),
        });
    }
    out
}

/// A parked scooter: the GPS holds its position (static hold) and re-fixes now and then, each
/// time with fresh 1.5 m noise; speed 0, no heading, no altitude, locked and available.
pub fn parked_trace(seed: u64, n: usize) -> Vec<Point> {
    let mut rng = Rng::new(seed);
    let mut nominal = 1_767_225_600_000i64;
    let (lat, lon) = (37_566_500.0f64, 126_978_000.0f64);
    let (mut lat_e6, mut lon_e6) = (lat as i32, lon as i32);
    let mut battery = 640u16;
    let mut accuracy = 40i64;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ts = next_ts(&mut rng, &mut nominal);
        if rng.chance(0.1) {
            lat_e6 = (lat + rng.gauss() * 1.5 * LAT_PER_M).round() as i32;
            lon_e6 = (lon + rng.gauss() * 1.5 * LON_PER_M).round() as i32;
        }
        if rng.chance(1.0 / 120.0) {
            battery = battery.saturating_sub(1);
        }
        if rng.chance(0.05) {
            accuracy = (accuracy + rng.range(-5, 5)).clamp(30, 80);
        }
        out.push(Point {
            ts,
            lat_e6,
            lon_e6,
            speed_dkmh: Some(0),
            heading_ddeg: None,
            battery_dpct: Some(battery),
            accuracy_dm: Some(accuracy as u32),
            altitude_dm: None,
            odometer_m: Some(98_765),
            state: Some(VehicleState::Available),
            locked: Some(true),
            quality: Default::default(),
        });
    }
    out
}
