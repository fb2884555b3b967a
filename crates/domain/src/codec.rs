//! The columnar encoding of a run of one vehicle's points (a bucket, or a chunk of one).
//!
//! Baseline format (version 1): a header (version, count), then one column per field, each
//! column zigzag-delta encoded as LEB128 varints; optional columns carry a presence bitmap.
//! Time uses delta-of-delta, so a steady 1 Hz stream costs one byte per point.
//!
//! **Contract:** `encode` takes points in strictly increasing `ts` order; `decode(encode(p))`
//! returns exactly `p`. `decode` never panics on any input; garbage gives a [`CodecError`].

use crate::fix::{Point, VehicleState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("encoded points are truncated")]
    Truncated,
    #[error("unknown encoding version {0}")]
    Version(u8),
    #[error("encoded points are corrupt: {0}")]
    Corrupt(&'static str),
}

const VERSION: u8 = 1;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.bytes.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(CodecError::Corrupt("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Corrupt("varint too long"))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
}

fn encode_deltas(out: &mut Vec<u8>, values: impl Iterator<Item = i64>) {
    let mut prev = 0i64;
    for v in values {
        put_varint(out, zigzag(v.wrapping_sub(prev)));
        prev = v;
    }
}

fn decode_deltas(
    r: &mut Reader<'_>,
    n: usize,
    mut put: impl FnMut(usize, i64),
) -> Result<(), CodecError> {
    let mut prev = 0i64;
    for i in 0..n {
        prev = prev.wrapping_add(unzigzag(r.varint()?));
        put(i, prev);
    }
    Ok(())
}

/// An optional column: a presence bitmap (omitted when all or none are present) and the deltas
/// of the present values.
fn encode_optional(out: &mut Vec<u8>, values: &[Option<i64>]) {
    let present = values.iter().filter(|v| v.is_some()).count();
    if present == 0 {
        out.push(0);
        return;
    }
    if present == values.len() {
        out.push(1);
    } else {
        out.push(2);
        let mut bitmap = vec![0u8; values.len().div_ceil(8)];
        for (i, v) in values.iter().enumerate() {
            if v.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
    }
    encode_deltas(out, values.iter().flatten().copied());
}

fn decode_optional(r: &mut Reader<'_>, n: usize) -> Result<Vec<Option<i64>>, CodecError> {
    let mut values = vec![None; n];
    let present: Vec<usize> = match r.byte()? {
        0 => return Ok(values),
        1 => (0..n).collect(),
        2 => {
            let bitmap = r.bytes(n.div_ceil(8))?;
            (0..n)
                .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .collect()
        }
        _ => return Err(CodecError::Corrupt("bad presence tag")),
    };
    let mut prev = 0i64;
    for i in present {
        prev = prev.wrapping_add(unzigzag(r.varint()?));
        values[i] = Some(prev);
    }
    Ok(values)
}

/// Appends the encoding of `points` to `out`.
pub fn encode(points: &[Point], out: &mut Vec<u8>) {
    debug_assert!(
        points.windows(2).all(|w| w[0].ts < w[1].ts),
        "points must be in ts order"
    );
    out.push(VERSION);
    put_varint(out, points.len() as u64);
    // Time: first value, then delta-of-delta.
    let mut prev_ts = 0i64;
    let mut prev_delta = 0i64;
    for (i, p) in points.iter().enumerate() {
        if i == 0 {
            put_varint(out, zigzag(p.ts));
        } else {
            let delta = p.ts.wrapping_sub(prev_ts);
            put_varint(out, zigzag(delta.wrapping_sub(prev_delta)));
            prev_delta = delta;
        }
        prev_ts = p.ts;
    }
    encode_deltas(out, points.iter().map(|p| i64::from(p.lat_e6)));
    encode_deltas(out, points.iter().map(|p| i64::from(p.lon_e6)));
    let columns: [fn(&Point) -> Option<i64>; 8] = [
        |p| p.speed_dkmh.map(i64::from),
        |p| p.heading_ddeg.map(i64::from),
        |p| p.battery_dpct.map(i64::from),
        |p| p.accuracy_dm.map(i64::from),
        |p| p.altitude_dm.map(i64::from),
        |p| p.odometer_m.map(|v| v as i64),
        |p| p.state.map(|s| i64::from(s.code())),
        |p| p.locked.map(i64::from),
    ];
    let mut column = Vec::with_capacity(points.len());
    for get in columns {
        column.clear();
        column.extend(points.iter().map(get));
        encode_optional(out, &column);
    }
}

/// The number of points in an encoding, read from its header.
pub fn count(bytes: &[u8]) -> Result<usize, CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.byte()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    usize::try_from(r.varint()?).map_err(|_| CodecError::Corrupt("count"))
}

/// Decodes `bytes` and appends the points to `out`.
pub fn decode(bytes: &[u8], out: &mut Vec<Point>) -> Result<(), CodecError> {
    let n = count(bytes)?;
    let mut r = Reader { bytes, pos: 0 };
    r.byte()?;
    r.varint()?;
    // Every point costs at least one byte per mandatory column, so a count larger than the
    // input is corrupt; checking first stops a garbage header from allocating gigabytes.
    if n > bytes.len() {
        return Err(CodecError::Corrupt("count larger than the encoding"));
    }
    let base = out.len();
    out.resize(base + n, Point::default());
    let pts = &mut out[base..];
    let mut prev_ts = 0i64;
    let mut prev_delta = 0i64;
    for i in 0..n {
        let v = unzigzag(r.varint()?);
        if i == 0 {
            prev_ts = v;
        } else {
            prev_delta = prev_delta.wrapping_add(v);
            prev_ts = prev_ts.wrapping_add(prev_delta);
        }
        pts[i].ts = prev_ts;
    }
    let mut bad = false;
    decode_deltas(&mut r, n, |i, v| {
        bad |= i32::try_from(v).is_err();
        pts[i].lat_e6 = v as i32;
    })?;
    decode_deltas(&mut r, n, |i, v| {
        bad |= i32::try_from(v).is_err();
        pts[i].lon_e6 = v as i32;
    })?;
    if bad {
        return Err(CodecError::Corrupt("coordinate out of range"));
    }
    let speed = decode_optional(&mut r, n)?;
    let heading = decode_optional(&mut r, n)?;
    let battery = decode_optional(&mut r, n)?;
    let accuracy = decode_optional(&mut r, n)?;
    let altitude = decode_optional(&mut r, n)?;
    let odometer = decode_optional(&mut r, n)?;
    let state = decode_optional(&mut r, n)?;
    let locked = decode_optional(&mut r, n)?;
    fn narrow<T: TryFrom<i64>>(v: Option<i64>) -> Result<Option<T>, CodecError> {
        v.map(|v| T::try_from(v).map_err(|_| CodecError::Corrupt("value out of range")))
            .transpose()
    }
    for (i, p) in pts.iter_mut().enumerate() {
        p.speed_dkmh = narrow(speed[i])?;
        p.heading_ddeg = narrow(heading[i])?;
        p.battery_dpct = narrow(battery[i])?;
        p.accuracy_dm = narrow(accuracy[i])?;
        p.altitude_dm = narrow(altitude[i])?;
        p.odometer_m = narrow(odometer[i])?;
        p.state = match state[i] {
            None => None,
            Some(c) => Some(
                u8::try_from(c)
                    .ok()
                    .and_then(VehicleState::from_code)
                    .ok_or(CodecError::Corrupt("unknown state code"))?,
            ),
        };
        p.locked = match locked[i] {
            None => None,
            Some(0) => Some(false),
            Some(1) => Some(true),
            Some(_) => return Err(CodecError::Corrupt("locked is not a boolean")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_small() {
        let pts = vec![
            Point {
                ts: 1000,
                lat_e6: 37_000_000,
                lon_e6: 127_000_000,
                battery_dpct: Some(900),
                ..Point::default()
            },
            Point {
                ts: 2000,
                lat_e6: 37_000_010,
                lon_e6: 126_999_990,
                state: Some(VehicleState::OnTrip),
                locked: Some(false),
                ..Point::default()
            },
        ];
        let mut buf = Vec::new();
        encode(&pts, &mut buf);
        let mut out = Vec::new();
        decode(&buf, &mut out).unwrap();
        assert_eq!(out, pts);
        assert_eq!(count(&buf).unwrap(), 2);
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [&[][..], &[1], &[1, 200], &[9, 1, 2], &[1, 3, 0, 0]] {
            let mut out = Vec::new();
            assert!(decode(bytes, &mut out).is_err());
        }
    }
}
