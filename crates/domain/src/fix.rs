//! A fix is one position report of one vehicle. Fixes are validated once, at the edge, and are
//! held at *stored precision* from then on, so what a device is acked for is bit for bit what the
//! history returns.
//!
//! Stored precision: time in milliseconds; latitude and longitude in millionths of a degree
//! (about 11 cm, far below GPS noise); speed in 0.1 km/h; heading in 0.1°; battery in 0.1 %;
//! accuracy and altitude in 0.1 m; odometer in whole metres.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How far into the future a fix's `ts` may lie, to allow for clock skew on devices.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// A validated vehicle id: 1–64 characters of `[A-Za-z0-9_.:-]`. Ids of up to 24 bytes are
/// stored inline, without a heap allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VehicleId(CompactString);

impl VehicleId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<VehicleId, &'static str> {
        if id.is_empty() {
            return Err("must not be empty");
        }
        if id.len() > 64 {
            return Err("must be at most 64 characters");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err("may contain only A-Z, a-z, 0-9, '_', '.', ':' and '-'");
        }
        Ok(VehicleId(CompactString::new(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stable 64-bit hash (FNV-1a) of the id. Stable across processes and versions, so every
    /// process of a deployment agrees on which shard owns a vehicle.
    pub fn stable_hash(&self) -> u64 {
        fnv1a64(self.0.as_bytes())
    }
}

/// 64-bit FNV-1a: stable across processes and versions (shard ownership and stored keys rely
/// on it), not meant to resist chosen inputs.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a64::default();
    std::hash::Hasher::write(&mut h, bytes);
    h.0
}

/// [`fnv1a64`] fed in pieces (a [`Hasher`](std::hash::Hasher)): the same value as
/// `fnv1a64` of the pieces concatenated. Only `write` is meant to be used; `Hash` impls add
/// bytes of their own.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl fmt::Debug for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VehicleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        VehicleId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A vehicle's operational state, aligned with MDS 2.0 `vehicle_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VehicleState {
    Available,
    Reserved,
    OnTrip,
    NonOperational,
    Elsewhere,
    Removed,
}

impl VehicleState {
    pub const ALL: [VehicleState; 6] = [
        VehicleState::Available,
        VehicleState::Reserved,
        VehicleState::OnTrip,
        VehicleState::NonOperational,
        VehicleState::Elsewhere,
        VehicleState::Removed,
    ];

    /// The stable one-byte code used in storage (0 is reserved for "absent").
    pub fn code(self) -> u8 {
        match self {
            VehicleState::Available => 1,
            VehicleState::Reserved => 2,
            VehicleState::OnTrip => 3,
            VehicleState::NonOperational => 4,
            VehicleState::Elsewhere => 5,
            VehicleState::Removed => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<VehicleState> {
        VehicleState::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VehicleState::Available => "available",
            VehicleState::Reserved => "reserved",
            VehicleState::OnTrip => "on_trip",
            VehicleState::NonOperational => "non_operational",
            VehicleState::Elsewhere => "elsewhere",
            VehicleState::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Option<VehicleState> {
        VehicleState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One fix of one vehicle at stored precision, without the vehicle id (a bucket holds the id
/// once for all its points).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Point {
    /// Epoch milliseconds, UTC.
    pub ts: i64,
    /// Latitude in millionths of a degree, -90e6..=90e6.
    pub lat_e6: i32,
    /// Longitude in millionths of a degree, -180e6..=180e6.
    pub lon_e6: i32,
    /// Speed in 0.1 km/h, 0..=2500.
    pub speed_dkmh: Option<u16>,
    /// Heading in 0.1°, 0..=3600.
    pub heading_ddeg: Option<u16>,
    /// Battery in 0.1 %, 0..=1000.
    pub battery_dpct: Option<u16>,
    /// Horizontal accuracy in 0.1 m.
    pub accuracy_dm: Option<u32>,
    /// Altitude in 0.1 m.
    pub altitude_dm: Option<i32>,
    /// Odometer in metres.
    pub odometer_m: Option<u64>,
    pub state: Option<VehicleState>,
    pub locked: Option<bool>,
    /// The quality filters this fix failed; empty for a good fix. A flagged fix is kept in
    /// history but never becomes the latest state or an event.
    pub quality: Quality,
}

/// The quality filters a fix failed, as a set of bits (see the constants). Stored with the
/// fix in history; empty (0) for a good fix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quality(pub u8);

impl Quality {
    /// Moving there from the vehicle's previous good fix implies an impossible speed.
    pub const JUMP: Quality = Quality(1);
    /// The reported accuracy is worse than the limit.
    pub const INACCURATE: Quality = Quality(1 << 1);
    /// Latitude and longitude are both zero ("null island"): a receiver without a fix.
    pub const ZERO: Quality = Quality(1 << 2);
    /// The fix is far older than the time it arrived.
    pub const OUT_OF_DATE: Quality = Quality(1 << 3);
    /// Every flag, with its name.
    pub const NAMED: [(Quality, &'static str); 4] = [
        (Quality::JUMP, "jump"),
        (Quality::INACCURATE, "inaccurate"),
        (Quality::ZERO, "zero_coordinates"),
        (Quality::OUT_OF_DATE, "out_of_date"),
    ];

    pub fn is_good(self) -> bool {
        self.0 == 0
    }

    pub fn has(self, flag: Quality) -> bool {
        self.0 & flag.0 != 0
    }

    pub fn insert(&mut self, flag: Quality) {
        self.0 |= flag.0;
    }

    /// The names of the flags set, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Quality::NAMED
            .into_iter()
            .filter(move |(f, _)| self.has(*f))
            .map(|(_, n)| n)
    }
}

impl Point {
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e6) / 1e6
    }
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e6) / 1e6
    }
    pub fn speed_kmh(&self) -> Option<f64> {
        self.speed_dkmh.map(|v| f64::from(v) / 10.0)
    }
    pub fn heading_deg(&self) -> Option<f64> {
        self.heading_ddeg.map(|v| f64::from(v) / 10.0)
    }
    pub fn battery_pct(&self) -> Option<f64> {
        self.battery_dpct.map(|v| f64::from(v) / 10.0)
    }
    pub fn accuracy_m(&self) -> Option<f64> {
        self.accuracy_dm.map(|v| f64::from(v) / 10.0)
    }
    pub fn altitude_m(&self) -> Option<f64> {
        self.altitude_dm.map(|v| f64::from(v) / 10.0)
    }
}

/// A validated fix: a vehicle id and a point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    pub vehicle_id: VehicleId,
    pub point: Point,
}

/// Why a fix was refused: the field and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {reason}")]
pub struct FixError {
    /// The offending field, or `""` when the item as a whole is wrong (not an object, say).
    pub field: String,
    pub reason: String,
}

impl FixError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FixError {
        FixError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The unvalidated numbers of a fix, as a device sent them.
#[derive(Clone, Debug, Default)]
pub struct FixInput<'a> {
    pub vehicle_id: &'a str,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: Option<f64>,
    pub heading_deg: Option<f64>,
    pub battery_pct: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub altitude_m: Option<f64>,
    pub odometer_m: Option<f64>,
    pub state: Option<VehicleState>,
    pub locked: Option<bool>,
}

fn scaled(field: &str, v: f64, min: f64, max: f64, scale: f64) -> Result<i64, FixError> {
    if !v.is_finite() {
        return Err(FixError::new(field, "must be a finite number"));
    }
    if v < min || v > max {
        return Err(FixError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok((v * scale).round() as i64)
}

fn opt_scaled(
    field: &str,
    v: Option<f64>,
    min: f64,
    max: f64,
    scale: f64,
) -> Result<Option<i64>, FixError> {
    v.map(|v| scaled(field, v, min, max, scale)).transpose()
}

impl FixInput<'_> {
    /// Validates the input against the rules of DESIGN.md and rounds it to stored precision.
    /// `now_ms` is the server's clock, used to refuse fixes from the future.
    pub fn validate(&self, now_ms: i64) -> Result<Fix, FixError> {
        let vehicle_id =
            VehicleId::new(self.vehicle_id).map_err(|r| FixError::new("vehicle_id", r))?;
        if self.ts_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(FixError::new("ts", "is more than 5 minutes in the future"));
        }
        // Year 0 .. 9999 keeps every timestamp formattable as RFC 3339.
        if !(-62_135_596_800_000..=253_402_300_799_999).contains(&self.ts_ms) {
            return Err(FixError::new("ts", "is out of range"));
        }
        let point = Point {
            ts: self.ts_ms,
            lat_e6: scaled("lat", self.lat, -90.0, 90.0, 1e6)? as i32,
            lon_e6: scaled("lon", self.lon, -180.0, 180.0, 1e6)? as i32,
            speed_dkmh: opt_scaled("speed_kmh", self.speed_kmh, 0.0, 250.0, 10.0)?
                .map(|v| v as u16),
            heading_ddeg: opt_scaled("heading_deg", self.heading_deg, 0.0, 360.0, 10.0)?
                .map(|v| v as u16),
            battery_dpct: opt_scaled("battery_pct", self.battery_pct, 0.0, 100.0, 10.0)?
                .map(|v| v as u16),
            accuracy_dm: opt_scaled("accuracy_m", self.accuracy_m, 0.0, 100_000.0, 10.0)?
                .map(|v| v as u32),
            altitude_dm: opt_scaled("altitude_m", self.altitude_m, -1_000.0, 20_000.0, 10.0)?
                .map(|v| v as i32),
            odometer_m: opt_scaled("odometer_m", self.odometer_m, 0.0, 1e12, 1.0)?
                .map(|v| v as u64),
            state: self.state,
            locked: self.locked,
            quality: Default::default(),
        };
        Ok(Fix { vehicle_id, point })
    }
}

#[cfg(test)]
mod tests {

    /// The published FNV-1a test vectors: stored index keys and shard ownership depend on them.
    #[test]
    fn fnv1a64_is_the_published_fnv_1a() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        let mut pieces = Fnv1a64::default();
        std::hash::Hasher::write(&mut pieces, b"foo");
        std::hash::Hasher::write(&mut pieces, b"");
        std::hash::Hasher::write(&mut pieces, b"bar");
        assert_eq!(std::hash::Hasher::finish(&pieces), fnv1a64(b"foobar"));
    }
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn ok_input() -> FixInput<'static> {
        FixInput {
            vehicle_id: "scooter-1",
            ts_ms: NOW,
            lat: 37.5665,
            lon: 126.978,
            ..FixInput::default()
        }
    }

    fn check(edit: impl FnOnce(&mut FixInput<'static>), field: &str) {
        let mut input = ok_input();
        edit(&mut input);
        let err = input.validate(NOW).expect_err("must be refused");
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn a_good_fix_is_rounded_to_stored_precision() {
        let mut input = ok_input();
        input.battery_pct = Some(55.55);
        input.speed_kmh = Some(12.34);
        let fix = input.validate(NOW).unwrap();
        assert_eq!(fix.point.lat_e6, 37_566_500);
        assert_eq!(fix.point.lon_e6, 126_978_000);
        assert_eq!(fix.point.battery_dpct, Some(556));
        assert_eq!(fix.point.speed_dkmh, Some(123));
    }

    #[test]
    fn every_rule_names_its_field() {
        check(|i| i.vehicle_id = "", "vehicle_id");
        check(|i| i.vehicle_id = "has space", "vehicle_id");
        check(|i| i.vehicle_id = "x".repeat(65).leak(), "vehicle_id");
        check(|i| i.lat = f64::NAN, "lat");
        check(|i| i.lat = 90.0001, "lat");
        check(|i| i.lon = -180.5, "lon");
        check(|i| i.lon = f64::INFINITY, "lon");
        check(|i| i.ts_ms = NOW + MAX_FUTURE_MS + 1, "ts");
        check(|i| i.battery_pct = Some(100.1), "battery_pct");
        check(|i| i.battery_pct = Some(-1.0), "battery_pct");
        check(|i| i.speed_kmh = Some(250.5), "speed_kmh");
        check(|i| i.heading_deg = Some(361.0), "heading_deg");
        check(|i| i.accuracy_m = Some(f64::NAN), "accuracy_m");
        check(|i| i.odometer_m = Some(-5.0), "odometer_m");
    }

    #[test]
    fn limits_are_inclusive() {
        let mut input = ok_input();
        input.vehicle_id = "A-z_0.9:x";
        input.lat = -90.0;
        input.lon = 180.0;
        input.battery_pct = Some(100.0);
        input.speed_kmh = Some(250.0);
        input.heading_deg = Some(360.0);
        input.ts_ms = NOW + MAX_FUTURE_MS;
        assert!(input.validate(NOW).is_ok());
    }

    #[test]
    fn state_codes_round_trip() {
        for s in VehicleState::ALL {
            assert_eq!(VehicleState::from_code(s.code()), Some(s));
            assert_eq!(VehicleState::parse(s.as_str()), Some(s));
        }
        assert_eq!(VehicleState::from_code(0), None);
        assert_eq!(VehicleState::from_code(7), None);
    }
}
