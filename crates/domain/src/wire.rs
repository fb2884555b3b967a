//! The message format of the scale-out transport: a batch of validated fixes as it travels from
//! an ingest process to the worker that owns their vehicles (through RabbitMQ).
//!
//! Binary, little-endian, versioned by a magic number, about 30 bytes per fix:
//!
//! ```text
//! "KSW1"  u32 count
//! count × { u8 id_len, id bytes, u16 present, i64 ts, i32 lat_e6, i32 lon_e6, optional fields }
//! ```
//!
//! `present` has one bit per optional field (speed, heading, battery, accuracy, altitude,
//! odometer, state, locked); a field is written only when present.
//!
//! **Decoding validates everything again** (the id's characters, every range of
//! [`crate::fix`]): a message is untrusted input to the worker. Anything that does not decode is a
//! poison message, and the error says why.

use crate::fix::{Fix, Point, VehicleId, VehicleState};

const MAGIC: &[u8; 4] = b"KSW1";

const SPEED: u16 = 1;
const HEADING: u16 = 1 << 1;
const BATTERY: u16 = 1 << 2;
const ACCURACY: u16 = 1 << 3;
const ALTITUDE: u16 = 1 << 4;
const ODOMETER: u16 = 1 << 5;
const STATE: u16 = 1 << 6;
const LOCKED: u16 = 1 << 7;
const KNOWN: u16 = (1 << 8) - 1;

/// Why a message did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fix {index}: {reason}")]
pub struct WireError {
    /// The fix at fault (0 for the header).
    pub index: usize,
    pub reason: String,
}

/// Appends the message for `fixes` to `out`.
pub fn encode(fixes: &[Fix], out: &mut Vec<u8>) {
    out.reserve(8 + fixes.len() * 40);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(fixes.len() as u32).to_le_bytes());
    for fix in fixes {
        let id = fix.vehicle_id.as_str().as_bytes();
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        let p = &fix.point;
        let mut present = 0u16;
        for (bit, on) in [
            (SPEED, p.speed_dkmh.is_some()),
            (HEADING, p.heading_ddeg.is_some()),
            (BATTERY, p.battery_dpct.is_some()),
            (ACCURACY, p.accuracy_dm.is_some()),
            (ALTITUDE, p.altitude_dm.is_some()),
            (ODOMETER, p.odometer_m.is_some()),
            (STATE, p.state.is_some()),
            (LOCKED, p.locked.is_some()),
        ] {
            if on {
                present |= bit;
            }
        }
        out.extend_from_slice(&present.to_le_bytes());
        out.extend_from_slice(&p.ts.to_le_bytes());
        out.extend_from_slice(&p.lat_e6.to_le_bytes());
        out.extend_from_slice(&p.lon_e6.to_le_bytes());
        if let Some(v) = p.speed_dkmh {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(v) = p.heading_ddeg {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(v) = p.battery_dpct {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(v) = p.accuracy_dm {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(v) = p.altitude_dm {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(v) = p.odometer_m {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(s) = p.state {
            out.push(s.code());
        }
        if let Some(l) = p.locked {
            out.push(u8::from(l));
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    index: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, WireError> {
        Err(WireError {
            index: self.index,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        match self.bytes.get(self.at..self.at + n) {
            Some(b) => {
                self.at += n;
                Ok(b)
            }
            None => self.fail("the message ends early"),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let b = self.take(N)?;
        Ok(b.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn checked<T: PartialOrd + std::fmt::Display>(
        &self,
        field: &str,
        v: T,
        min: T,
        max: T,
    ) -> Result<T, WireError> {
        if v < min || v > max {
            return self.fail(format!("{field} {v} is outside {min}..={max}"));
        }
        Ok(v)
    }
}

/// Decodes a message into `out` (appending), validating every fix. On error `out` is left as
/// it was.
pub fn decode(bytes: &[u8], out: &mut Vec<Fix>) -> Result<(), WireError> {
    let start = out.len();
    let result = decode_into(bytes, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn decode_into(bytes: &[u8], out: &mut Vec<Fix>) -> Result<(), WireError> {
    let mut r = Reader {
        bytes,
        at: 0,
        index: 0,
    };
    if r.take(4)? != MAGIC {
        return r.fail("not a Kickstand fix batch (bad magic number)");
    }
    let count = r.u32()? as usize;
    // A count the body cannot hold is refused before anything is reserved for it.
    if count > bytes.len() / 21 {
        return r.fail(format!(
            "the header claims {count} fixes in {} bytes",
            bytes.len()
        ));
    }
    out.reserve(count);
    for index in 0..count {
        r.index = index;
        let len = usize::from(r.u8()?);
        let id = std::str::from_utf8(r.take(len)?)
            .map_err(|_| WireError {
                index,
                reason: "vehicle_id is not UTF-8".into(),
            })
            .and_then(|s| {
                VehicleId::new(s).map_err(|e| WireError {
                    index,
                    reason: format!("vehicle_id {e}"),
                })
            })?;
        let present = r.u16()?;
        if present & !KNOWN != 0 {
            return r.fail(format!("unknown optional fields {present:#06x}"));
        }
        let ts = r.ts()?;
        let lat_e6 = r.i32()?;
        let lat_e6 = r.checked("lat_e6", lat_e6, -90_000_000, 90_000_000)?;
        let lon_e6 = r.i32()?;
        let lon_e6 = r.checked("lon_e6", lon_e6, -180_000_000, 180_000_000)?;
        let mut p = Point {
            ts,
            lat_e6,
            lon_e6,
            speed_dkmh: None,
            heading_ddeg: None,
            battery_dpct: None,
            accuracy_dm: None,
            altitude_dm: None,
            odometer_m: None,
            state: None,
            locked: None,
            quality: Default::default(),
        };
        if present & SPEED != 0 {
            let v = r.u16()?;
            p.speed_dkmh = Some(r.checked("speed_dkmh", v, 0, 2_500)?);
        }
        if present & HEADING != 0 {
            let v = r.u16()?;
            p.heading_ddeg = Some(r.checked("heading_ddeg", v, 0, 3_600)?);
        }
        if present & BATTERY != 0 {
            let v = r.u16()?;
            p.battery_dpct = Some(r.checked("battery_dpct", v, 0, 1_000)?);
        }
        if present & ACCURACY != 0 {
            let v = r.u32()?;
            p.accuracy_dm = Some(r.checked("accuracy_dm", v, 0, 1_000_000)?);
        }
        if present & ALTITUDE != 0 {
            let v = r.i32()?;
            p.altitude_dm = Some(r.checked("altitude_dm", v, -10_000, 200_000)?);
        }
        if present & ODOMETER != 0 {
            let v = r.u64()?;
            p.odometer_m = Some(r.checked("odometer_m", v, 0, 1_000_000_000_000)?);
        }
        if present & STATE != 0 {
            let code = r.u8()?;
            p.state = Some(
                VehicleState::from_code(code)
                    .map_or_else(|| r.fail(format!("unknown state code {code}")), Ok)?,
            );
        }
        if present & LOCKED != 0 {
            p.locked = Some(match r.u8()? {
                0 => false,
                1 => true,
                v => return r.fail(format!("locked is {v}, not 0 or 1")),
            });
        }
        out.push(Fix {
            vehicle_id: id,
            point: p,
        });
    }
    if r.at != bytes.len() {
        return r.fail(format!("{} bytes follow the last fix", bytes.len() - r.at));
    }
    Ok(())
}

impl Reader<'_> {
    fn ts(&mut self) -> Result<i64, WireError> {
        let ts = self.i64()?;
        // The same range as validation at the edge: years 1 to 9999.
        self.checked("ts", ts, -62_135_596_800_000, 253_402_300_799_999)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(id: &str, ts: i64) -> Fix {
        Fix {
            vehicle_id: VehicleId::new(id).unwrap(),
            point: Point {
                ts,
                lat_e6: -90_000_000,
                lon_e6: 180_000_000,
                speed_dkmh: Some(2_500),
                heading_ddeg: Some(3_600),
                battery_dpct: Some(1_000),
                accuracy_dm: Some(1_000_000),
                altitude_dm: Some(-10_000),
                odometer_m: Some(1_000_000_000_000),
                state: Some(VehicleState::OnTrip),
                locked: Some(true),
                quality: Default::default(),
            },
        }
    }

    fn bare(id: &str, ts: i64) -> Fix {
        let mut f = full(id, ts);
        f.point = Point {
            ts,
            lat_e6: 37_566_500,
            lon_e6: 126_978_000,
            speed_dkmh: None,
            heading_ddeg: None,
            battery_dpct: None,
            accuracy_dm: None,
            altitude_dm: None,
            odometer_m: None,
            state: None,
            locked: None,
            quality: Default::default(),
        };
        f
    }

    fn round_trip(fixes: &[Fix]) -> Vec<Fix> {
        let mut buf = Vec::new();
        encode(fixes, &mut buf);
        let mut out = Vec::new();
        decode(&buf, &mut out).unwrap();
        out
    }

    #[test]
    fn every_field_round_trips_at_its_extremes() {
        let fixes = vec![
            full(&"x".repeat(64), 253_402_300_799_999),
            bare("a", -62_135_596_800_000),
            full("s-1", 1_800_000_000_000),
        ];
        assert_eq!(round_trip(&fixes), fixes);
        assert!(round_trip(&[]).is_empty());
    }

    #[test]
    fn garbage_is_refused_with_the_reason_and_leaves_out_untouched() {
        let mut good = Vec::new();
        encode(&[full("s-1", 1), bare("s-2", 2)], &mut good);
        let mut out = vec![bare("kept", 0)];
        let check = |bytes: &[u8], out: &mut Vec<Fix>, want: &str| {
            let err = decode(bytes, out).expect_err("must be refused");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
            assert_eq!(out.len(), 1);
        };
        check(b"", &mut out, "ends early");
        check(b"{\"vehicle_id\":1}", &mut out, "magic");
        check(&good[..good.len() - 1], &mut out, "ends early");
        let mut longer = good.clone();
        longer.push(0);
        check(&longer, &mut out, "follow the last fix");
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&huge, &mut out, "claims");
        // The first fix's id is "s-1": make it invalid.
        let mut bad_id = good.clone();
        bad_id[9] = b' ';
        check(&bad_id, &mut out, "fix 0: vehicle_id");
        // The second fix's latitude, out of range.
        let mut one = Vec::new();
        encode(&[bare("s-2", 2)], &mut one);
        let lat_at = 8 + 1 + 3 + 2 + 8;
        one[lat_at..lat_at + 4].copy_from_slice(&90_000_001i32.to_le_bytes());
        check(&one, &mut out, "lat_e6");
        let mut flags = Vec::new();
        encode(&[bare("s-2", 2)], &mut flags);
        flags[12] = 0xff;
        flags[13] = 0xff;
        check(&flags, &mut out, "unknown optional fields");
    }

    proptest! {
        #[test]
        fn any_valid_fix_round_trips(
            id in "[A-Za-z0-9_.:-]{1,64}",
            ts in -62_135_596_800_000i64..=253_402_300_799_999,
            lat in -90_000_000i32..=90_000_000,
            lon in -180_000_000i32..=180_000_000,
            speed in proptest::option::of(0u16..=2_500),
            battery in proptest::option::of(0u16..=1_000),
            odometer in proptest::option::of(0u64..=1_000_000_000_000),
            state in proptest::option::of(0u8..7),
            locked in proptest::option::of(any::<bool>()),
        ) {
            let mut f = bare(&id, ts);
            f.point.lat_e6 = lat;
            f.point.lon_e6 = lon;
            f.point.speed_dkmh = speed;
            f.point.battery_dpct = battery;
            f.point.odometer_m = odometer;
            f.point.state = state.and_then(VehicleState::from_code);
            f.point.locked = locked;
            prop_assert_eq!(round_trip(std::slice::from_ref(&f)), vec![f]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = decode(&bytes, &mut out);
        }
    }
}
