//! The write-ahead log of one shard: the durable record of every fix acked but not yet
//! checkpointed into the history engine.
//!
//! A shard's log is a directory of segments `NNNNNNNNNNNNNNNN.wal` (hex sequence numbers). A
//! segment is a run of records, each `len: u32 LE | crc32: u32 LE | payload` (CRC-32/ISO-HDLC, as `crc32fast` computes it), one record per
//! group commit. The payload is the fixes of the group in a fixed binary layout (about 30 bytes a
//! fix, never the raw JSON). A record is acked only after `fdatasync`, so a torn record can only
//! be the last of the newest segment, and was never acked: replay stops there.
//!
//! A group whose events went to the fleet store's event journal while its fixes were written
//! here starts with a link, `0u8 | journal record: u64 LE` ([`put_link`]; a fix never starts with
//! a 0 byte, its vehicle id is never empty): replay hands the number to its caller, which drops
//! the record unless that journal record is durable (ADR 0024).
//!
//! **Architecture Invariant:** this module writes and reads bytes; it knows nothing of buckets.

use kickstand_domain::{Fix, Point, VehicleId, VehicleState};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// One open segment being appended to.
pub struct Segment {
    file: File,
    /// The segment's sequence number, which orders segments and names the file.
    pub seq: u64,
}

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// The sequence numbers of the segments in `dir`, in order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(seqs),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name.strip_suffix(".wal")
            && let Ok(seq) = u64::from_str_radix(hex, 16)
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Makes a directory entry durable (a new or removed file survives a crash only once its
/// directory is synced).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Segment {
    /// Creates segment `seq` in `dir` (which must exist) and makes its name durable.
    pub fn create(dir: &Path, seq: u64) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(segment_path(dir, seq))?;
        sync_dir(dir)?;
        Ok(Segment { file, seq })
    }

    /// Writes one record holding `payload` and waits until it is on disk.
    pub fn append_durable(&mut self, framed: &mut [u8]) -> io::Result<()> {
        seal(framed);
        self.file.write_all(framed)?;
        self.file.sync_data()
    }
}

/// Fills in the header of a record started with [`begin_record`]: the payload's length and
/// checksum.
pub fn seal(framed: &mut [u8]) {
    let payload_len = framed.len() - 8;
    let crc = crc32fast::hash(&framed[8..]);
    framed[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    framed[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Hands `visit` the payload of every intact record in `bytes`, in order, until it returns
/// `false`. Returns `true` when the bytes end in a torn or corrupt record (replay stops there).
pub fn read_records(bytes: &[u8], mut visit: impl FnMut(&[u8]) -> bool) -> bool {
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + 8) else {
            return true;
        };
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            return true;
        };
        if crc32fast::hash(payload) != crc {
            return true;
        }
        if !visit(payload) {
            return false;
        }
        pos += 8 + len;
    }
    false
}

/// Starts a record buffer: 8 header bytes that [`Segment::append_durable`] fills in.
pub fn begin_record(buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0; 8]);
}

/// Links the record being built (right after [`begin_record`]) to event journal record
/// `journal_record`.
pub fn put_link(buf: &mut Vec<u8>, journal_record: u64) {
    buf.push(0);
    buf.extend_from_slice(&journal_record.to_le_bytes());
}

const F_SPEED: u16 = 1;
const F_HEADING: u16 = 1 << 1;
const F_BATTERY: u16 = 1 << 2;
const F_ACCURACY: u16 = 1 << 3;
const F_ALTITUDE: u16 = 1 << 4;
const F_ODOMETER: u16 = 1 << 5;
const F_STATE: u16 = 1 << 6;
const F_LOCKED: u16 = 1 << 7;
const F_QUALITY: u16 = 1 << 8;

/// Appends the binary form of one fix to a record.
pub fn put_fix(buf: &mut Vec<u8>, fix: &Fix) {
    let id = fix.vehicle_id.as_str().as_bytes();
    buf.push(id.len() as u8);
    buf.extend_from_slice(id);
    let p = &fix.point;
    buf.extend_from_slice(&p.ts.to_le_bytes());
    buf.extend_from_slice(&p.lat_e6.to_le_bytes());
    buf.extend_from_slice(&p.lon_e6.to_le_bytes());
    let flags = p.speed_dkmh.map_or(0, |_| F_SPEED)
        | p.heading_ddeg.map_or(0, |_| F_HEADING)
        | p.battery_dpct.map_or(0, |_| F_BATTERY)
        | p.accuracy_dm.map_or(0, |_| F_ACCURACY)
        | p.altitude_dm.map_or(0, |_| F_ALTITUDE)
        | p.odometer_m.map_or(0, |_| F_ODOMETER)
        | p.state.map_or(0, |_| F_STATE)
        | p.locked.map_or(0, |_| F_LOCKED)
        | if p.quality.is_good() { 0 } else { F_QUALITY };
    buf.extend_from_slice(&flags.to_le_bytes());
    if let Some(v) = p.speed_dkmh {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(v) = p.heading_ddeg {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(v) = p.battery_dpct {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(v) = p.accuracy_dm {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(v) = p.altitude_dm {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(v) = p.odometer_m {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(v) = p.state {
        buf.push(v.code());
    }
    if let Some(v) = p.locked {
        buf.push(u8::from(v));
    }
    if !p.quality.is_good() {
        buf.push(p.quality.0);
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.bytes.get(self.pos..self.pos + N)?;
        self.pos += N;
        s.try_into().ok()
    }
    fn slice(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
}

fn read_fix(c: &mut Cursor<'_>) -> Option<Fix> {
    let [len] = c.take::<1>()?;
    let id = std::str::from_utf8(c.slice(usize::from(len))?).ok()?;
    let vehicle_id = VehicleId::new(id).ok()?;
    let ts = i64::from_le_bytes(c.take()?);
    let lat_e6 = i32::from_le_bytes(c.take()?);
    let lon_e6 = i32::from_le_bytes(c.take()?);
    let flags = u16::from_le_bytes(c.take()?);
    let mut p = Point {
        ts,
        lat_e6,
        lon_e6,
        ..Point::default()
    };
    if flags & F_SPEED != 0 {
        p.speed_dkmh = Some(u16::from_le_bytes(c.take()?));
    }
    if flags & F_HEADING != 0 {
        p.heading_ddeg = Some(u16::from_le_bytes(c.take()?));
    }
    if flags & F_BATTERY != 0 {
        p.battery_dpct = Some(u16::from_le_bytes(c.take()?));
    }
    if flags & F_ACCURACY != 0 {
        p.accuracy_dm = Some(u32::from_le_bytes(c.take()?));
    }
    if flags & F_ALTITUDE != 0 {
        p.altitude_dm = Some(i32::from_le_bytes(c.take()?));
    }
    if flags & F_ODOMETER != 0 {
        p.odometer_m = Some(u64::from_le_bytes(c.take()?));
    }
    if flags & F_STATE != 0 {
        p.state = Some(VehicleState::from_code(c.take::<1>()?[0])?);
    }
    if flags & F_LOCKED != 0 {
        p.locked = Some(c.take::<1>()?[0] != 0);
    }
    if flags & F_QUALITY != 0 {
        p.quality = kickstand_domain::Quality(c.take::<1>()?[0]);
    }
    Some(Fix {
        vehicle_id,
        point: p,
    })
}

/// What replaying a segment found.
#[derive(Debug, Default)]
pub struct Replay {
    pub fixes: Vec<Fix>,
    /// True when the segment ended in a torn or corrupt record (its tail was never acked when
    /// it is the newest segment).
    pub torn_tail: bool,
    /// The journal records of the linked records left out because `keep` refused them.
    pub dropped: Vec<u64>,
}

/// Reads every intact record of segment `seq` in `dir`; a record linked to an event journal
/// record is kept only if `keep` says so.
pub fn replay(dir: &Path, seq: u64, keep: &dyn Fn(u64) -> bool) -> io::Result<Replay> {
    let mut bytes = Vec::new();
    File::open(segment_path(dir, seq))?.read_to_end(&mut bytes)?;
    let mut out = Replay::default();
    let mut unreadable = false;
    out.torn_tail = read_records(&bytes, |payload| {
        let mut c = Cursor {
            bytes: payload,
            pos: 0,
        };
        if payload.first() == Some(&0) {
            c.pos = 1;
            let Some(link) = c.take::<8>().map(u64::from_le_bytes) else {
                unreadable = true;
                return false;
            };
            if !keep(link) {
                out.dropped.push(link);
                return true;
            }
        }
        let before = out.fixes.len();
        while c.pos < payload.len() {
            match read_fix(&mut c) {
                Some(fix) => out.fixes.push(fix),
                None => {
                    // A record that passed its checksum but does not parse is a bug, not a
                    // torn write: keep nothing of it and say so.
                    out.fixes.truncate(before);
                    unreadable = true;
                    return false;
                }
            }
        }
        true
    });
    out.torn_tail |= unreadable;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(id: &str, ts: i64) -> Fix {
        Fix {
            vehicle_id: VehicleId::new(id).unwrap(),
            point: Point {
                ts,
                lat_e6: 37_000_000,
                lon_e6: -122_000_000,
                battery_dpct: Some(455),
                state: Some(VehicleState::OnTrip),
                locked: Some(false),
                odometer_m: Some(u64::MAX),
                ..Point::default()
            },
        }
    }

    #[test]
    fn records_replay_exactly_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 7).unwrap();
        let mut buf = Vec::new();
        begin_record(&mut buf);
        put_fix(&mut buf, &fix("a", 1));
        put_fix(&mut buf, &fix("bb", 2));
        seg.append_durable(&mut buf).unwrap();
        begin_record(&mut buf);
        put_fix(&mut buf, &fix("c", 3));
        seg.append_durable(&mut buf).unwrap();
        drop(seg);
        // A torn third record: half a header.
        let path = segment_path(dir.path(), 7);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        let r = replay(dir.path(), 7, &|_| true).unwrap();
        assert_eq!(r.fixes, vec![fix("a", 1), fix("bb", 2), fix("c", 3)]);
        assert!(r.torn_tail);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![7]);
    }

    #[test]
    fn a_corrupt_record_stops_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        begin_record(&mut buf);
        put_fix(&mut buf, &fix("a", 1));
        seg.append_durable(&mut buf).unwrap();
        begin_record(&mut buf);
        put_fix(&mut buf, &fix("b", 2));
        seg.append_durable(&mut buf).unwrap();
        drop(seg);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let r = replay(dir.path(), 1, &|_| true).unwrap();
        assert_eq!(r.fixes, vec![fix("a", 1)]);
        assert!(r.torn_tail);
    }

    #[test]
    fn a_linked_record_is_kept_only_when_its_journal_record_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        begin_record(&mut buf);
        put_fix(&mut buf, &fix("plain", 1));
        seg.append_durable(&mut buf).unwrap();
        for (journal, id) in [(7, "seven"), (8, "eight")] {
            begin_record(&mut buf);
            put_link(&mut buf, journal);
            put_fix(&mut buf, &fix(id, 2));
            put_fix(&mut buf, &fix(id, 3));
            seg.append_durable(&mut buf).unwrap();
        }
        drop(seg);
        let r = replay(dir.path(), 1, &|j| j == 7).unwrap();
        assert_eq!(
            r.fixes,
            vec![fix("plain", 1), fix("seven", 2), fix("seven", 3)]
        );
        assert_eq!(r.dropped, vec![8]);
        assert!(!r.torn_tail);
        let r = replay(dir.path(), 1, &|_| true).unwrap();
        assert_eq!(r.fixes.len(), 5);
        assert!(r.dropped.is_empty());
    }
}

#[cfg(test)]
mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Replaying any bytes never panics, and whatever it returns is a prefix of valid fixes.
        #[test]
        fn replaying_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
            let r = replay(dir.path(), 1, &|j| j % 2 == 0).unwrap();
            for fix in &r.fixes {
                prop_assert!(!fix.vehicle_id.as_str().is_empty());
            }
        }
    }
}
