//! Simulated scooters that behave like real ones: parked (available) most of the time, then a
//! trip (on_trip) at 10–25 km/h along a street grid with turns and stops; battery draining with
//! distance; GPS noise. Deterministic for a seed. Used by `kickstand bench` (and the demo fleet).

use kickstand_domain::{Fix, Point, VehicleId, VehicleState};

/// A small, fast, deterministic PRNG (xorshift64*).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A city to drive in: its centre and the spacing of its street grid.
#[derive(Clone, Copy)]
pub struct City {
    pub lat: f64,
    pub lon: f64,
    /// Half the side of the service area in metres.
    pub radius_m: f64,
    pub block_m: f64,
}

pub const SEOUL: City = City {
    lat: 37.5665,
    lon: 126.9780,
    radius_m: 5_000.0,
    block_m: 120.0,
};

const M_PER_DEG_LAT: f64 = 111_195.0;

/// One scooter.
pub struct Scooter {
    pub id: VehicleId,
    /// Position in metres east/north of the city centre.
    x: f64,
    y: f64,
    /// Direction of travel: 0 = north, 1 = east, 2 = south, 3 = west.
    dir: u8,
    speed_kmh: f64,
    battery: f64,
    odometer_m: f64,
    state: VehicleState,
    /// Seconds left in the current phase (parked, trip, stop at a junction).
    phase_left: f64,
    stopped: f64,
    rng: Rng,
}

impl Scooter {
    pub fn new(index: usize, city: &City, seed: u64) -> Scooter {
        let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x1234_5678_9ABC_DEF1));
        let snap = |v: f64| (v / city.block_m).round() * city.block_m;
        let x = snap(rng.range(-city.radius_m, city.radius_m));
        let y = snap(rng.range(-city.radius_m, city.radius_m));
        let battery = rng.range(20.0, 100.0);
        let trip = rng.unit() < 0.15;
        let phase_left = if trip {
            rng.range(120.0, 900.0)
        } else {
            rng.range(60.0, 3600.0)
        };
        Scooter {
            id: VehicleId::new(&format!("scooter-{index:06}")).expect("a valid id"),
            x,
            y,
            dir: (rng.next_u64() % 4) as u8,
            speed_kmh: 0.0,
            battery,
            odometer_m: rng.range(0.0, 2_000_000.0),
            state: if trip {
                VehicleState::OnTrip
            } else {
                VehicleState::Available
            },
            phase_left,
            stopped: 0.0,
            rng,
        }
    }

    /// Whether the scooter is on a trip (and so reports every interval).
    pub fn is_riding(&self) -> bool {
        self.state == VehicleState::OnTrip
    }

    /// Advances the scooter by `dt` seconds.
    pub fn step(&mut self, dt: f64, city: &City) {
        self.phase_left -= dt;
        match self.state {
            VehicleState::OnTrip => {
                if self.phase_left <= 0.0 {
                    self.state = if self.battery < 10.0 {
                        VehicleState::NonOperational
                    } else {
                        VehicleState::Available
                    };
                    self.speed_kmh = 0.0;
                    self.phase_left = self.rng.range(300.0, 5400.0);
                    return;
                }
                if self.stopped > 0.0 {
                    self.stopped -= dt;
                    self.speed_kmh = 0.0;
                    return;
                }
                let target = 10.0 + 15.0 * self.rng.unit();
                self.speed_kmh =
                    (self.speed_kmh + (target - self.speed_kmh) * 0.3).clamp(0.0, 25.0);
                let d = self.speed_kmh / 3.6 * dt;
                let (px, py) = (self.x, self.y);
                match self.dir {
                    0 => self.y += d,
                    1 => self.x += d,
                    2 => self.y -= d,
                    _ => self.x -= d,
                }
                self.odometer_m += d;
                self.battery = (self.battery - d / 250.0).max(0.0);
                // Crossing a junction: maybe turn, maybe stop at the light.
                let b = city.block_m;
                let crossed = (px / b).floor() != (self.x / b).floor()
                    || (py / b).floor() != (self.y / b).floor();
                if crossed {
                    if self.rng.unit() < 0.3 {
                        self.x = (self.x / b).round() * b;
                        self.y = (self.y / b).round() * b;
                        self.dir = (self.dir + if self.rng.unit() < 0.5 { 1 } else { 3 }) % 4;
                    }
                    if self.rng.unit() < 0.2 {
                        self.stopped = self.rng.range(5.0, 40.0);
                    }
                }
                // Keep inside the service area: turn back at its edge.
                if self.x.abs() > city.radius_m || self.y.abs() > city.radius_m {
                    self.dir = (self.dir + 2) % 4;
                    self.x = self.x.clamp(-city.radius_m, city.radius_m);
                    self.y = self.y.clamp(-city.radius_m, city.radius_m);
                }
            }
            _ => {
                if self.phase_left <= 0.0 {
                    if self.state == VehicleState::NonOperational {
                        // The swap crew came by.
                        self.battery = 100.0;
                        self.state = VehicleState::Available;
                        self.phase_left = self.rng.range(60.0, 1800.0);
                    } else {
                        self.state = VehicleState::OnTrip;
                        self.phase_left = self.rng.range(180.0, 1500.0);
                    }
                }
            }
        }
    }

    /// The fix the scooter would report now: true position plus GPS noise.
    pub fn fix(&mut self, ts: i64, city: &City) -> Fix {
        let noise = 1.5;
        let nx = self.x + noise * self.rng.normal();
        let ny = self.y + noise * self.rng.normal();
        let lat = city.lat + ny / M_PER_DEG_LAT;
        let lon = city.lon + nx / (M_PER_DEG_LAT * city.lat.to_radians().cos());
        let moving = self.state == VehicleState::OnTrip;
        Fix {
            vehicle_id: self.id.clone(),
            point: Point {
                ts,
                lat_e6: (lat * 1e6).round() as i32,
                lon_e6: (lon * 1e6).round() as i32,
                speed_dkmh: Some((self.speed_kmh * 10.0).round() as u16),
                heading_ddeg: Some(u16::from(self.dir) * 900),
                battery_dpct: Some((self.battery * 10.0).round() as u16),
                accuracy_dm: Some((self.rng.range(3.0, 8.0) * 10.0).round() as u32),
                altitude_dm: None,
                odometer_m: Some(self.odometer_m as u64),
                state: Some(self.state),
                locked: Some(!moving),
                quality: Default::default(),
            },
        }
    }
}

/// Known cities for `--city`.
pub fn city(name: &str) -> Option<City> {
    let (lat, lon) = match name {
        "seoul" => (37.5665, 126.9780),
        "paris" => (48.8566, 2.3522),
        "berlin" => (52.5200, 13.4050),
        "new-york" => (40.7128, -74.0060),
        "sao-paulo" => (-23.5505, -46.6333),
        _ => return None,
    };
    Some(City { lat, lon, ..SEOUL })
}

/// A fleet of scooters reporting together, with the faults real devices have: now and then a
/// report arrives late (held back a tick) or twice (a retry after a lost answer).
pub struct Fleet {
    pub scooters: Vec<Scooter>,
    city: City,
    rng: Rng,
    /// Reports held back, sent with the next tick.
    late: Vec<Fix>,
    /// Ticks so far: a parked scooter reports on every `PARKED_EVERY`-th tick only.
    ticks: u64,
}

/// A parked scooter's device reports this much less often than a riding one (a heartbeat), as
/// real trackers do to save battery.
const PARKED_EVERY: u64 = 30;

/// Share of reports that arrive one tick late, and share sent twice.
const LATE: f64 = 0.003;
const DUPLICATED: f64 = 0.003;

impl Fleet {
    pub fn new(vehicles: usize, city: City, seed: u64) -> Fleet {
        Fleet {
            scooters: (0..vehicles)
                .map(|i| Scooter::new(i, &city, seed))
                .collect(),
            city,
            rng: Rng::new(seed ^ 0xF1EE7),
            late: Vec::new(),
            ticks: 0,
        }
    }

    /// Advances every scooter by `dt` seconds and returns this tick's reports, stamped `ts_ms`.
    pub fn tick(&mut self, dt: f64, ts_ms: i64) -> Vec<Fix> {
        let mut out = Vec::with_capacity(self.scooters.len() + self.late.len());
        // Last tick's held-back reports go after this tick's: they arrive out of order.
        let held = std::mem::take(&mut self.late);
        let tick = self.ticks;
        self.ticks += 1;
        for (i, s) in self.scooters.iter_mut().enumerate() {
            s.step(dt, &self.city);
            // Spread the heartbeats of parked scooters over the ticks.
            if !s.is_riding() && !(tick + i as u64).is_multiple_of(PARKED_EVERY) {
                continue;
            }
            let fix = s.fix(ts_ms, &self.city);
            let r = self.rng.unit();
            if r < LATE {
                self.late.push(fix);
            } else if r < LATE + DUPLICATED {
                out.push(fix.clone());
                out.push(fix);
            } else {
                out.push(fix);
            }
        }
        out.extend(held);
        out
    }
}

/// Appends the JSON wire form of a fix, as a device sends it.
pub fn write_json(out: &mut Vec<u8>, fix: &Fix) {
    use std::io::Write;
    let p = &fix.point;
    let _ = write!(
        out,
        "{{\"vehicle_id\":\"{}\",\"ts\":{},\"lat\":{},\"lon\":{}",
        fix.vehicle_id,
        p.ts,
        p.lat(),
        p.lon()
    );
    if let Some(v) = p.speed_kmh() {
        let _ = write!(out, ",\"speed_kmh\":{v}");
    }
    if let Some(v) = p.heading_deg() {
        let _ = write!(out, ",\"heading_deg\":{v}");
    }
    if let Some(v) = p.battery_pct() {
        let _ = write!(out, ",\"battery_pct\":{v}");
    }
    if let Some(v) = p.accuracy_m() {
        let _ = write!(out, ",\"accuracy_m\":{v}");
    }
    if let Some(v) = p.odometer_m {
        let _ = write!(out, ",\"odometer_m\":{v}");
    }
    if let Some(s) = p.state {
        let _ = write!(out, ",\"state\":\"{}\"", s.as_str());
    }
    if let Some(l) = p.locked {
        let _ = write!(out, ",\"locked\":{l}");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_is_deterministic_and_has_late_and_repeated_reports() {
        let run = |seed| {
            let mut f = Fleet::new(500, SEOUL, seed);
            (0..60)
                .flat_map(|t| f.tick(1.0, 1_800_000_000_000 + t * 1000))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        // Late: a report older than one of the same vehicle that came before it.
        let mut newest = std::collections::HashMap::new();
        let mut late = false;
        for f in &a {
            let n = newest.entry(f.vehicle_id.clone()).or_insert(i64::MIN);
            late |= f.point.ts < *n;
            *n = (*n).max(f.point.ts);
        }
        assert!(late, "some reports arrive late");
        let mut keys: Vec<_> = a
            .iter()
            .map(|f| (f.vehicle_id.clone(), f.point.ts))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert!(keys.len() < n, "some reports are sent twice");
        // Riding scooters report every second, parked ones every 30 s: over 60 ticks every
        // scooter reported, and far fewer than 500 × 60 reports were sent.
        let reporting: std::collections::HashSet<_> =
            a.iter().map(|f| f.vehicle_id.clone()).collect();
        assert_eq!(reporting.len(), 500);
        assert!(a.len() < 500 * 60 / 2, "{} reports", a.len());
        let states: std::collections::HashSet<_> = a.iter().filter_map(|f| f.point.state).collect();
        assert!(
            states.contains(&VehicleState::Available) && states.contains(&VehicleState::OnTrip)
        );
    }

    #[test]
    fn the_simulation_is_deterministic_and_valid() {
        let run = || {
            let mut s = Scooter::new(7, &SEOUL, 42);
            let mut out = Vec::new();
            for t in 0..3600 {
                s.step(1.0, &SEOUL);
                out.push(s.fix(1_800_000_000_000 + t * 1000, &SEOUL));
            }
            out
        };
        let a = run();
        assert_eq!(a, run());
        // Every fix survives the real parser and validation unchanged.
        for fix in a.iter().step_by(97) {
            let mut json = Vec::new();
            write_json(&mut json, fix);
            let parsed = kickstand_domain::input::parse_item(
                std::str::from_utf8(&json).unwrap(),
                1_800_000_000_000 + 4_000_000,
            )
            .unwrap();
            assert_eq!(&parsed, fix);
        }
    }
}
