//! The columnar encoding of a run of one vehicle's points (a bucket, or a chunk of one).
//!
//! **Contract:** `encode` takes points in strictly increasing `ts` order (checked in debug
//! builds only); `decode(encode(p))` returns exactly `p`. The arithmetic wraps, so every
//! sequence of [`Point`]s round-trips, whatever its values. `decode` never panics on any input,
//! allocates at most a small multiple of the input's length, and gives a [`CodecError`] for
//! anything that is not exactly one encoding (trailing bytes included). On error, `decode`
//! leaves `out` as it found it.
//!
//! # Format, version 2
//!
//! All multi-byte integers are unsigned LEB128 varints (7 bits a byte, least significant group
//! first, high bit set on every byte but the last, at most 10 bytes). A signed integer `v` is
//! stored as its zigzag form `(v << 1) ^ (v >> 63)`. Differences are taken with wrapping 64-bit
//! arithmetic, and values are widened to `i64` first (an `odometer_m` is reinterpreted as
//! `i64`, bit for bit).
//!
//! An encoding is a header followed by eleven or twelve columns, in this order:
//!
//! 1. The header: the version byte `2`, then the point count `n` as a varint. When `n` is 0,
//!    the encoding ends here.
//! 2. `ts`: the first timestamp (zigzag). When `n >= 2`, the first difference `ts[1] - ts[0]`
//!    (zigzag) and then a *stream* of the `n - 2` second differences
//!    `(ts[i] - ts[i-1]) - (ts[i-1] - ts[i-2])`, so a steady 1 Hz report costs almost nothing.
//! 3. `lat_e6`, then `lon_e6`: the first value (zigzag), then a stream of the `n - 1`
//!    differences `v[i] - v[i-1]`.
//! 4. The optional columns `speed_dkmh`, `heading_ddeg`, `battery_dpct`, `accuracy_dm`,
//!    `altitude_dm`, `odometer_m`, `state` (its [`VehicleState::code`]), `locked` (0 or 1)
//!    and, only when some point has a quality flag, `quality` (its [`Quality`] bits, 1..=255;
//!    a point without a flag is "absent" in this column). An encoding without that last column
//!    is a run of good points, which is how encodings made before the column existed read.
//!    Each starts with a presence byte:
//!    - `0`: absent from every point; nothing follows.
//!    - `1`: present in every point.
//!    - `2`: runs: a varint `k`, then `k` varint run lengths summing to `n` that alternate
//!      between present and absent, starting with present (the first run may be empty).
//!    - `3`: a bitmap of `ceil(n / 8)` bytes; bit `i % 8` of byte `i / 8` is set when point `i`
//!      has the value.
//!
//!    In the `heading_ddeg` column only, bit 2 (value 4) may be added to modes 1–3: every
//!    value then lies in `0..=3600` and the differences go the short way around the circle of
//!    3601 values, so each value is `(previous + difference)` reduced modulo 3601 into
//!    `0..=3600`. A heading that wobbles around north thus costs no more than any other.
//!
//!    When `p`, the number of points that have the value, is not 0, the column continues like a
//!    mandatory one over those `p` values: the first (zigzag), then a stream of the `p - 1`
//!    differences.
//!
//! A *stream* of `m` signed residuals is cut into blocks of 128 (the last may be shorter; a
//! stream of 0 residuals has no block). A block of `b` residuals is:
//!
//! - A header byte: bit 7 is the mode, bit 6 says whether exceptions follow, bits 0–5 are the
//!   bit width `w` (0..=63).
//! - In frame-of-reference mode (bit 7 set), a zigzag varint `base`; each residual is
//!   `base + u` (wrapping), where `u` is an unsigned 64-bit code. In zigzag mode (bit 7 clear)
//!   each residual is the zigzag decoding of `u`.
//! - The low `w` bits of each of the `b` codes, packed little-endian: code `j` occupies bits
//!   `j * w .. (j + 1) * w` of the section, bit `k` being bit `k % 8` of byte `k / 8`. The
//!   section is `ceil(b * w / 8)` bytes; unused high bits of its last byte are 0.
//! - When bit 6 is set, the exceptions, for codes that do not fit in `w` bits: a varint count
//!   `e` (1..=b), then `e` pairs of varints: a gap and the high part. The first exception's
//!   index in the block is its gap; each later one's is the previous index plus one plus its
//!   gap. The high part is `u >> w`, so `u = low | high << w`.
//!
//! The encoder picks, per block, the mode and width that make the block smallest (codes wider
//! than the width become exceptions, as in patched frame-of-reference), so a column that
//! rarely changes costs about a byte per block plus two bytes per change.

use crate::fix::{Point, Quality, VehicleState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("encoded points are truncated")]
    Truncated,
    #[error("unknown encoding version {0}")]
    Version(u8),
    #[error("encoded points are corrupt: {0}")]
    Corrupt(&'static str),
}

const VERSION: u8 = 2;
/// Residuals per block.
const BLOCK: usize = 128;
/// The widest packed width; wider codes are exceptions.
const MAX_WIDTH: u32 = 63;
const MODE_FOR: u8 = 0x80;
const HAS_EXCEPTIONS: u8 = 0x40;
const WIDTH_MASK: u8 = 0x3f;

const PRESENT_NONE: u8 = 0;
const PRESENT_ALL: u8 = 1;
const PRESENT_RUNS: u8 = 2;
const PRESENT_BITMAP: u8 = 3;
/// Set in a presence byte when the column's differences are taken around a circle.
const CIRCULAR: u8 = 4;
/// The circle of headings, 0..=3600 tenths of a degree.
const HEADING_CIRCLE: i64 = 3601;

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

fn varint_len(v: u64) -> u64 {
    u64::from(bit_len(v).max(1).div_ceil(7))
}

/// The number of significant bits of `v` (0 for 0).
fn bit_len(v: u64) -> u32 {
    64 - v.leading_zeros()
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// A histogram of the bit lengths of a block's codes.
type Histogram = [u32; 65];

/// The bit-length histograms of `codes(v)` over `vals`, built four ways at once so that runs of
/// equal lengths do not wait on each other's increments.
fn histogram(vals: &[i64], code: impl Fn(i64) -> u64) -> Histogram {
    let mut parts = [[0u32; 65]; 4];
    let mut chunks = vals.chunks_exact(4);
    for c in &mut chunks {
        for k in 0..4 {
            parts[k][bit_len(code(c[k])) as usize] += 1;
        }
    }
    for &v in chunks.remainder() {
        parts[0][bit_len(code(v)) as usize] += 1;
    }
    let mut hist = parts[0];
    for part in &parts[1..] {
        for (h, p) in hist.iter_mut().zip(part) {
            *h += p;
        }
    }
    hist
}

/// The width that minimises the size in bits of a block of `b` codes with the bit-length
/// histogram `hist`, counting each exception at two bytes plus its high part's varint; and
/// that size and the number of exceptions.
fn best_width(hist: &Histogram, b: usize) -> (u32, u64, u64) {
    let max_len = (0..=64).rev().find(|&l| hist[l] != 0).unwrap_or(0) as u32;
    let top = max_len.min(MAX_WIDTH);
    let mut best = (top, u64::MAX, 0);
    // From the widest down: once the exceptions alone cost as much as the best so far, no
    // narrower width can do better, since narrowing only adds exceptions.
    let mut above = 0u64; // codes longer than w
    for l in top + 1..=max_len {
        above += u64::from(hist[l as usize]);
    }
    for w in (0..=top).rev() {
        if 16 * above >= best.1 {
            break;
        }
        let mut cost = b as u64 * u64::from(w);
        for l in w + 1..=max_len {
            cost += u64::from(hist[l as usize]) * (8 + 8 * u64::from((l - w).div_ceil(7)));
        }
        if above > 0 {
            cost += 8 * varint_len(above);
        }
        if cost < best.1 {
            best = (w, cost, above);
        }
        above += u64::from(hist[w as usize]);
    }
    best
}

/// Packs the low `w` bits (`w <= 63`) of every code.
fn pack(out: &mut Vec<u8>, codes: impl Iterator<Item = u64>, w: u32) {
    if w == 0 {
        return;
    }
    let mask = (1u64 << w) - 1;
    let mut acc = 0u64;
    let mut bits = 0u32;
    for code in codes {
        let v = code & mask;
        acc |= v << bits;
        bits += w;
        if bits >= 64 {
            out.extend_from_slice(&acc.to_le_bytes());
            bits -= 64;
            acc = if bits == 0 { 0 } else { v >> (w - bits) };
        }
    }
    out.extend_from_slice(&acc.to_le_bytes()[..bits.div_ceil(8) as usize]);
}

/// Writes a block's header, base, packed codes and exceptions.
fn put_block(
    out: &mut Vec<u8>,
    base: Option<i64>,
    codes: impl Iterator<Item = u64> + Clone,
    w: u32,
    exceptions: u64,
) {
    let mode = if base.is_some() { MODE_FOR } else { 0 };
    let flag = if exceptions > 0 { HAS_EXCEPTIONS } else { 0 };
    out.push(mode | flag | w as u8);
    if let Some(base) = base {
        put_varint(out, zigzag(base));
    }
    pack(out, codes.clone(), w);
    if exceptions > 0 {
        put_varint(out, exceptions);
        let mut next = 0u64;
        for (j, u) in codes.enumerate() {
            if u >> w != 0 {
                put_varint(out, j as u64 - next);
                put_varint(out, u >> w);
                next = j as u64 + 1;
            }
        }
    }
}

fn encode_block(out: &mut Vec<u8>, vals: &[i64]) {
    let (mut lo, mut hi) = (vals[0], vals[0]);
    for &v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo == hi {
        if lo == 0 {
            out.push(0);
        } else {
            out.push(MODE_FOR);
            put_varint(out, zigzag(lo));
        }
        return;
    }
    let b = vals.len();
    let fr = histogram(vals, |v| v.wrapping_sub(lo) as u64);
    let (fw, fcost, fexc) = best_width(&fr, b);
    let fcost = fcost.saturating_add(8 * varint_len(zigzag(lo)));
    // With no negative residual, every frame-of-reference code is at most the zigzag code.
    if lo < 0 {
        let zz = histogram(vals, zigzag);
        let (zw, zcost, zexc) = best_width(&zz, b);
        if zcost <= fcost {
            put_block(out, None, vals.iter().map(|&v| zigzag(v)), zw, zexc);
            return;
        }
    }
    put_block(
        out,
        Some(lo),
        vals.iter().map(|&v| v.wrapping_sub(lo) as u64),
        fw,
        fexc,
    );
}

fn encode_stream(out: &mut Vec<u8>, residuals: &[i64]) {
    for block in residuals.chunks(BLOCK) {
        encode_block(out, block);
    }
}

/// Writes the first of `values` and the stream of their differences, using `scratch`.
/// With a `circle`, all values lie in `0..circle` and each difference is taken the short way
/// around it, in `-circle / 2..=circle / 2`.
fn encode_values(
    out: &mut Vec<u8>,
    scratch: &mut Vec<i64>,
    values: impl Iterator<Item = i64>,
    circle: Option<i64>,
) {
    scratch.clear();
    let mut first = None;
    let mut prev = 0i64;
    for v in values {
        if first.is_none() {
            first = Some(v);
        } else {
            let d = v.wrapping_sub(prev);
            scratch.push(match circle {
                Some(c) if d.rem_euclid(c) > c / 2 => d.rem_euclid(c) - c,
                Some(c) => d.rem_euclid(c),
                None => d,
            });
        }
        prev = v;
    }
    if let Some(first) = first {
        put_varint(out, zigzag(first));
        encode_stream(out, scratch);
    }
}

/// Calls `f` with the lengths of the runs of points that have and lack the value, alternating
/// and starting with a (possibly empty) run of points that have it.
fn for_each_run(points: &[Point], get: &impl Fn(&Point) -> Option<i64>, mut f: impl FnMut(u64)) {
    let mut present = true;
    let mut len = 0u64;
    for p in points {
        let here = get(p).is_some();
        if here != present {
            f(len);
            present = here;
            len = 0;
        }
        len += 1;
    }
    f(len);
}

fn encode_optional(
    out: &mut Vec<u8>,
    scratch: &mut Vec<i64>,
    points: &[Point],
    get: impl Fn(&Point) -> Option<i64>,
    circle: Option<i64>,
) {
    let n = points.len();
    let present = points.iter().filter(|p| get(p).is_some()).count();
    if present == 0 {
        out.push(PRESENT_NONE);
        return;
    }
    let circle = circle.filter(|&c| points.iter().filter_map(&get).all(|v| (0..c).contains(&v)));
    let flag = if circle.is_some() { CIRCULAR } else { 0 };
    if present == n {
        out.push(PRESENT_ALL | flag);
    } else {
        let mut k = 0u64;
        let mut run_bytes = 0u64;
        for_each_run(points, &get, |len| {
            k += 1;
            run_bytes += varint_len(len);
        });
        if varint_len(k) + run_bytes <= n.div_ceil(8) as u64 {
            out.push(PRESENT_RUNS | flag);
            put_varint(out, k);
            for_each_run(points, &get, |len| put_varint(out, len));
        } else {
            out.push(PRESENT_BITMAP | flag);
            let start = out.len();
            out.resize(start + n.div_ceil(8), 0);
            for (i, p) in points.iter().enumerate() {
                if get(p).is_some() {
                    out[start + i / 8] |= 1 << (i % 8);
                }
            }
        }
    }
    encode_values(out, scratch, points.iter().filter_map(get), circle);
}

/// Appends the encoding of `points` to `out`.
pub fn encode(points: &[Point], out: &mut Vec<u8>) {
    debug_assert!(
        points.windows(2).all(|w| w[0].ts < w[1].ts),
        "points must be in ts order"
    );
    out.push(VERSION);
    put_varint(out, points.len() as u64);
    let Some(first) = points.first() else {
        return;
    };
    put_varint(out, zigzag(first.ts));
    let mut scratch: Vec<i64> = Vec::with_capacity(points.len());
    if let [a, b, ..] = points {
        put_varint(out, zigzag(b.ts.wrapping_sub(a.ts)));
        scratch.extend(points.windows(3).map(|w| {
            let d1 = w[1].ts.wrapping_sub(w[0].ts);
            let d2 = w[2].ts.wrapping_sub(w[1].ts);
            d2.wrapping_sub(d1)
        }));
        encode_stream(out, &scratch);
    }
    let lat = points.iter().map(|p| i64::from(p.lat_e6));
    encode_values(out, &mut scratch, lat, None);
    let lon = points.iter().map(|p| i64::from(p.lon_e6));
    encode_values(out, &mut scratch, lon, None);
    let s = &mut scratch;
    let heading = Some(HEADING_CIRCLE);
    encode_optional(out, s, points, |p| p.speed_dkmh.map(i64::from), None);
    encode_optional(out, s, points, |p| p.heading_ddeg.map(i64::from), heading);
    encode_optional(out, s, points, |p| p.battery_dpct.map(i64::from), None);
    encode_optional(out, s, points, |p| p.accuracy_dm.map(i64::from), None);
    encode_optional(out, s, points, |p| p.altitude_dm.map(i64::from), None);
    encode_optional(out, s, points, |p| p.odometer_m.map(|v| v as i64), None);
    encode_optional(
        out,
        s,
        points,
        |p| p.state.map(|s| i64::from(s.code())),
        None,
    );
    encode_optional(out, s, points, |p| p.locked.map(i64::from), None);
    // The quality column is written only when a point has a flag, so the encoding of good
    // points is the same as before the column existed, and older encodings still decode.
    if points.iter().any(|p| !p.quality.is_good()) {
        let quality = |p: &Point| (!p.quality.is_good()).then_some(i64::from(p.quality.0));
        encode_optional(out, s, points, quality, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

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
        for shift in (0..64).step_by(7) {
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

    fn len(&mut self) -> Result<usize, CodecError> {
        usize::try_from(self.varint()?).map_err(|_| CodecError::Corrupt("length overflows"))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

const UNPACK_BUF: usize = BLOCK * 8 + 16;

/// Unpacks `codes.len()` codes of `w` bits (`1..=63`) from `packed`, which holds exactly
/// `ceil(codes.len() * w / 8)` bytes.
fn unpack(packed: &[u8], w: u32, codes: &mut [u64], buf: &mut [u8; UNPACK_BUF]) {
    // A zero-padded copy lets every code be read with one unaligned 8-byte load plus, for wide
    // codes at odd offsets, one more byte.
    let Some(dst) = buf.get_mut(..packed.len() + 16) else {
        return;
    };
    let (dst, pad) = dst.split_at_mut(packed.len());
    dst.copy_from_slice(packed);
    pad.fill(0);
    let mask = (1u64 << w) - 1;
    let w = w as usize;
    for (j, code) in codes.iter_mut().enumerate() {
        let bit = j * w;
        let at = bit / 8;
        let shift = (bit % 8) as u32;
        let mut word = [0u8; 8];
        word.copy_from_slice(&buf[at..at + 8]);
        let mut v = u64::from_le_bytes(word) >> shift;
        if shift as usize + w > 64 {
            v |= u64::from(buf[at + 8]) << (64 - shift);
        }
        *code = v & mask;
    }
}

/// Reads a stream of `len` residuals, calling `sink(index, residual)` for each in order.
fn decode_stream(
    r: &mut Reader<'_>,
    len: usize,
    mut sink: impl FnMut(usize, i64),
) -> Result<(), CodecError> {
    let mut codes = [0u64; BLOCK];
    let mut buf = [0u8; UNPACK_BUF];
    let mut done = 0;
    while done < len {
        let b = BLOCK.min(len - done);
        let header = r.byte()?;
        let w = u32::from(header & WIDTH_MASK);
        let base = if header & MODE_FOR != 0 {
            Some(unzigzag(r.varint()?))
        } else {
            None
        };
        let codes = &mut codes[..b];
        if w == 0 {
            codes.fill(0);
        } else {
            unpack(r.bytes((b * w as usize).div_ceil(8))?, w, codes, &mut buf);
        }
        if header & HAS_EXCEPTIONS != 0 {
            let count = r.len()?;
            if count == 0 || count > b {
                return Err(CodecError::Corrupt("bad exception count"));
            }
            let mut next = 0usize;
            for _ in 0..count {
                let at = next
                    .checked_add(r.len()?)
                    .filter(|&at| at < b)
                    .ok_or(CodecError::Corrupt("exception index out of block"))?;
                let high = r.varint()?;
                if high.leading_zeros() < w {
                    return Err(CodecError::Corrupt("exception overflows 64 bits"));
                }
                codes[at] |= high << w;
                next = at + 1;
            }
        }
        match base {
            Some(base) => {
                for (j, &u) in codes.iter().enumerate() {
                    sink(done + j, base.wrapping_add(u as i64));
                }
            }
            None => {
                for (j, &u) in codes.iter().enumerate() {
                    sink(done + j, unzigzag(u));
                }
            }
        }
        done += b;
    }
    Ok(())
}

/// Reads a first value and a stream of `len - 1` differences, calling `sink(index, value)`.
/// With a `circle`, each value is the previous one plus the difference, modulo the circle.
fn decode_values(
    r: &mut Reader<'_>,
    len: usize,
    circle: Option<i64>,
    mut sink: impl FnMut(usize, i64),
) -> Result<(), CodecError> {
    if len == 0 {
        return Ok(());
    }
    let mut prev = unzigzag(r.varint()?);
    sink(0, prev);
    match circle {
        None => decode_stream(r, len - 1, |j, d| {
            prev = prev.wrapping_add(d);
            sink(j + 1, prev);
        }),
        Some(c) => decode_stream(r, len - 1, |j, d| {
            prev = prev.wrapping_add(d).rem_euclid(c);
            sink(j + 1, prev);
        }),
    }
}

/// Reads an optional column into `pts`; `set` stores a value and says whether it fits.
fn decode_optional(
    r: &mut Reader<'_>,
    pts: &mut [Point],
    index: &mut Vec<u32>,
    circle: Option<i64>,
    mut set: impl FnMut(&mut Point, i64) -> bool,
) -> Result<(), CodecError> {
    let n = pts.len();
    index.clear();
    let mut ok = true;
    let mode = r.byte()?;
    let circle = match (mode & CIRCULAR != 0, circle) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => return Err(CodecError::Corrupt("circular column that is no circle")),
    };
    match mode & !CIRCULAR {
        PRESENT_NONE if circle.is_none() => return Ok(()),
        PRESENT_ALL => decode_values(r, n, circle, |i, v| ok &= set(&mut pts[i], v))?,
        mode @ (PRESENT_RUNS | PRESENT_BITMAP) => {
            if mode == PRESENT_RUNS {
                let k = r.len()?;
                let mut at = 0usize;
                for run in 0..k {
                    let end = at
                        .checked_add(r.len()?)
                        .filter(|&end| end <= n)
                        .ok_or(CodecError::Corrupt("presence runs exceed the count"))?;
                    if run % 2 == 0 {
                        // n fits in u32 (checked in `decode`).
                        index.extend(at as u32..end as u32);
                    }
                    at = end;
                }
                if at != n {
                    return Err(CodecError::Corrupt("presence runs fall short of the count"));
                }
            } else {
                let bitmap = r.bytes(n.div_ceil(8))?;
                for (byte_at, &byte) in bitmap.iter().enumerate() {
                    let mut bits = byte;
                    while bits != 0 {
                        let i = byte_at * 8 + bits.trailing_zeros() as usize;
                        if i >= n {
                            return Err(CodecError::Corrupt("presence bitmap beyond the count"));
                        }
                        index.push(i as u32);
                        bits &= bits - 1;
                    }
                }
            }
            let index = &index[..];
            decode_values(r, index.len(), circle, |j, v| {
                ok &= set(&mut pts[index[j] as usize], v);
            })?;
        }
        _ => return Err(CodecError::Corrupt("bad presence mode")),
    }
    if ok {
        Ok(())
    } else {
        Err(CodecError::Corrupt("value out of range"))
    }
}

/// Stores `v` in `field` when it fits `T`.
fn narrow<T: TryFrom<i64>>(field: &mut Option<T>, v: i64) -> bool {
    match T::try_from(v) {
        Ok(v) => {
            *field = Some(v);
            true
        }
        Err(_) => false,
    }
}

fn header(r: &mut Reader<'_>) -> Result<usize, CodecError> {
    let version = r.byte()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    r.len()
}

/// The number of points in an encoding, read from its header.
pub fn count(bytes: &[u8]) -> Result<usize, CodecError> {
    header(&mut Reader { bytes, pos: 0 })
}

/// Decodes `bytes` and appends the points to `out`.
pub fn decode(bytes: &[u8], out: &mut Vec<Point>) -> Result<(), CodecError> {
    let base = out.len();
    let result = decode_into(bytes, out);
    if result.is_err() {
        out.truncate(base);
    }
    result
}

fn decode_into(bytes: &[u8], out: &mut Vec<Point>) -> Result<(), CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let n = header(&mut r)?;
    if n == 0 {
        return if r.remaining() == 0 {
            Ok(())
        } else {
            Err(CodecError::Corrupt("trailing bytes"))
        };
    }
    // The smallest encoding of n points has a header byte per block of each mandatory column,
    // their first values and the eight presence bytes; checking before allocating stops a
    // garbage count from allocating more than a few points per input byte.
    let min_len = usize::from(n >= 2) * (1 + n.saturating_sub(2).div_ceil(BLOCK))
        + 2 * (1 + (n - 1).div_ceil(BLOCK))
        + 1
        + 8;
    if n > u32::MAX as usize || min_len > r.remaining() {
        return Err(CodecError::Corrupt("count larger than the encoding"));
    }
    let base = out.len();
    out.resize(base + n, Point::default());
    let pts = &mut out[base..];

    let ts0 = unzigzag(r.varint()?);
    pts[0].ts = ts0;
    if n >= 2 {
        let mut delta = unzigzag(r.varint()?);
        let mut ts = ts0.wrapping_add(delta);
        pts[1].ts = ts;
        decode_stream(&mut r, n - 2, |j, dd| {
            delta = delta.wrapping_add(dd);
            ts = ts.wrapping_add(delta);
            pts[j + 2].ts = ts;
        })?;
    }
    let mut ok = true;
    decode_values(&mut r, n, None, |i, v| {
        ok &= i32::try_from(v).is_ok();
        pts[i].lat_e6 = v as i32;
    })?;
    decode_values(&mut r, n, None, |i, v| {
        ok &= i32::try_from(v).is_ok();
        pts[i].lon_e6 = v as i32;
    })?;
    if !ok {
        return Err(CodecError::Corrupt("coordinate out of range"));
    }
    let mut index = Vec::new();
    let ix = &mut index;
    decode_optional(&mut r, pts, ix, None, |p, v| narrow(&mut p.speed_dkmh, v))?;
    decode_optional(&mut r, pts, ix, Some(HEADING_CIRCLE), |p, v| {
        narrow(&mut p.heading_ddeg, v)
    })?;
    decode_optional(&mut r, pts, ix, None, |p, v| narrow(&mut p.battery_dpct, v))?;
    decode_optional(&mut r, pts, ix, None, |p, v| narrow(&mut p.accuracy_dm, v))?;
    decode_optional(&mut r, pts, ix, None, |p, v| narrow(&mut p.altitude_dm, v))?;
    decode_optional(&mut r, pts, ix, None, |p, v| {
        p.odometer_m = Some(v as u64);
        true
    })?;
    decode_optional(&mut r, pts, ix, None, |p, v| {
        p.state = u8::try_from(v).ok().and_then(VehicleState::from_code);
        p.state.is_some()
    })?;
    decode_optional(&mut r, pts, ix, None, |p, v| {
        p.locked = match v {
            0 => Some(false),
            1 => Some(true),
            _ => return false,
        };
        true
    })?;
    // The quality column is written only when some point has a flag, so one that says
    // "absent everywhere" is not an encoding.
    if r.remaining() != 0 && r.bytes[r.pos] != 0 {
        decode_optional(&mut r, pts, ix, None, |p, v| match u8::try_from(v) {
            Ok(q) if q != 0 => {
                p.quality = Quality(q);
                true
            }
            _ => false,
        })?;
    }
    if r.remaining() != 0 {
        return Err(CodecError::Corrupt("trailing bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(points: &[Point]) -> Vec<u8> {
        let mut buf = vec![0xAA]; // encode appends
        encode(points, &mut buf);
        let bytes = &buf[1..];
        assert_eq!(count(bytes), Ok(points.len()));
        let sentinel = Point {
            ts: 42,
            ..Point::default()
        };
        let mut out = vec![sentinel]; // decode appends
        decode(bytes, &mut out).unwrap();
        assert_eq!(out[0], sentinel);
        assert_eq!(&out[1..], points);
        bytes.to_vec()
    }

    fn full(ts: i64) -> Point {
        Point {
            ts,
            lat_e6: 37_000_000,
            lon_e6: 127_000_000,
            speed_dkmh: Some(150),
            heading_ddeg: Some(900),
            battery_dpct: Some(800),
            accuracy_dm: Some(50),
            altitude_dm: Some(380),
            odometer_m: Some(12_345),
            state: Some(VehicleState::OnTrip),
            locked: Some(false),
            quality: Default::default(),
        }
    }

    #[test]
    fn empty_is_two_bytes() {
        assert_eq!(round_trip(&[]), vec![VERSION, 0]);
    }

    #[test]
    fn one_point() {
        round_trip(&[full(1_700_000_000_000)]);
        round_trip(&[Point::default()]);
    }

    #[test]
    fn two_and_three_points() {
        round_trip(&[full(0), full(1)]);
        round_trip(&[full(-5), full(1), full(1_000_000)]);
    }

    #[test]
    fn all_optionals_absent() {
        let pts: Vec<Point> = (0..300)
            .map(|i| Point {
                ts: i * 1000,
                lat_e6: 1 + i as i32,
                lon_e6: -(i as i32),
                ..Point::default()
            })
            .collect();
        round_trip(&pts);
    }

    #[test]
    fn extreme_values() {
        let lo = Point {
            ts: -62_135_596_800_000,
            lat_e6: -90_000_000,
            lon_e6: -180_000_000,
            speed_dkmh: Some(0),
            heading_ddeg: Some(0),
            battery_dpct: Some(0),
            accuracy_dm: Some(0),
            altitude_dm: Some(i32::MIN),
            odometer_m: Some(0),
            state: Some(VehicleState::Available),
            locked: Some(false),
            quality: Default::default(),
        };
        let hi = Point {
            ts: 253_402_300_799_999,
            lat_e6: 90_000_000,
            lon_e6: 180_000_000,
            speed_dkmh: Some(u16::MAX),
            heading_ddeg: Some(u16::MAX),
            battery_dpct: Some(u16::MAX),
            accuracy_dm: Some(u32::MAX),
            altitude_dm: Some(i32::MAX),
            odometer_m: Some(u64::MAX),
            state: Some(VehicleState::Removed),
            locked: Some(true),
            quality: Default::default(),
        };
        let mid = Point {
            ts: 0,
            odometer_m: Some(1 << 63),
            ..lo
        };
        round_trip(&[lo, mid, hi]);
        let mut alternating = Vec::new();
        for i in 0..400 {
            let p = if i % 2 == 0 { lo } else { hi };
            alternating.push(Point {
                ts: i64::MIN / 2 + i * (i64::MAX / 400),
                ..p
            });
        }
        round_trip(&alternating);
        // Whole i64 range, where deltas wrap.
        round_trip(&[
            Point { ts: i64::MIN, ..lo },
            Point { ts: -1, ..hi },
            Point { ts: i64::MAX, ..lo },
        ]);
    }

    #[test]
    fn huge_time_gaps() {
        let mut pts = Vec::new();
        let mut ts = -62_135_596_800_000;
        for i in 0..1000i64 {
            ts += if i % 97 == 0 {
                1_000_000_000_000
            } else {
                1000 + i % 3
            };
            pts.push(full(ts));
        }
        round_trip(&pts);
    }

    #[test]
    fn presence_patterns() {
        let n = 1000;
        let pattern = |i: usize, k: usize| match k {
            0 => i.is_multiple_of(2),
            1 => i < n / 2,
            2 => i % 300 > 10,
            3 => i == n - 1,
            4 => i == 0,
            5 => (i * 7919) % 13 < 5,
            _ => i % 128 == 127,
        };
        for k in 0..7 {
            let pts: Vec<Point> = (0..n)
                .map(|i| {
                    let mut p = full(i as i64 * 1000);
                    if !pattern(i, k) {
                        p.speed_dkmh = None;
                        p.state = None;
                        p.locked = None;
                    }
                    if pattern(i, k) {
                        p.odometer_m = None;
                    }
                    p
                })
                .collect();
            round_trip(&pts);
        }
    }

    #[test]
    fn steady_stream_is_tiny() {
        let pts: Vec<Point> = (0..3600).map(|i| full(i * 1000)).collect();
        let bytes = round_trip(&pts);
        assert!(bytes.len() < 500, "{} bytes", bytes.len());
    }

    #[test]
    fn packing_every_width() {
        for w in 1..=63u32 {
            let codes: Vec<u64> = (0..BLOCK as u64)
                .map(|j| j.wrapping_mul(0x9E37_79B9_7F4A_7C15) & ((1 << w) - 1))
                .collect();
            for b in [1, 2, 7, 63, BLOCK] {
                let mut packed = Vec::new();
                pack(&mut packed, codes[..b].iter().copied(), w);
                assert_eq!(packed.len(), (b * w as usize).div_ceil(8));
                let mut back = [0u64; BLOCK];
                unpack(&packed, w, &mut back[..b], &mut [0xff; UNPACK_BUF]);
                assert_eq!(&back[..b], &codes[..b], "w {w} b {b}");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let cases: [&[u8]; 9] = [
            &[],
            &[2],
            &[2, 200],
            &[9, 1, 2],
            &[1, 3, 0, 0],
            &[
                2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[2, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0],
            &[2, 0, 0],
            &[2, 3, 0, 0, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for bytes in cases {
            let mut out = vec![Point::default()];
            assert!(decode(bytes, &mut out).is_err(), "{bytes:?}");
            assert_eq!(out.len(), 1);
        }
        assert_eq!(count(&[1, 5]), Err(CodecError::Version(1)));
    }

    #[test]
    fn headings_wrap_around_north() {
        let headings = [3598u16, 2, 3600, 0, 1799, 3600, 1800, 0, 5, 3595];
        let pts: Vec<Point> = (0..1000)
            .map(|i| Point {
                heading_ddeg: Some(headings[i % headings.len()]),
                ..full(i as i64 * 1000)
            })
            .collect();
        let bytes = round_trip(&pts);
        assert!(bytes.contains(&(PRESENT_ALL | CIRCULAR)));
        // A value off the circle turns the circle off for the whole column.
        let mut off = pts.clone();
        off[500].heading_ddeg = Some(3601);
        round_trip(&off);
        off[500].heading_ddeg = None;
        round_trip(&off);
    }

    #[test]
    fn quality_flags_round_trip_and_good_points_encode_as_before() {
        let good = [full(1), full(2), full(3)];
        let mut plain = Vec::new();
        encode(&good, &mut plain);
        let mut flagged = good;
        flagged[1].quality = Quality(Quality::JUMP.0 | Quality::INACCURATE.0);
        let bytes = round_trip(&flagged);
        // Good points: no quality column at all, so encodings made before it existed decode.
        assert!(bytes.len() > plain.len());
        assert_eq!(
            &bytes[..plain.len()],
            &plain[..],
            "the columns before quality are unchanged"
        );
        let mut out = Vec::new();
        decode(&plain, &mut out).unwrap();
        assert!(out.iter().all(|p| p.quality.is_good()));
        // A quality column holding a zero is not an encoding.
        let mut zero = plain.clone();
        zero.extend_from_slice(&[PRESENT_ALL, 0]);
        assert!(decode(&zero, &mut Vec::new()).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = Vec::new();
        encode(&[full(1), full(2)], &mut buf);
        buf.push(0);
        assert!(decode(&buf, &mut Vec::new()).is_err());
    }
}
