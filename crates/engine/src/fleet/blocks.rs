//! How the embedded fleet store keeps events in `fleet.db`: in blocks of up to [`BLOCK_EVENTS`]
//! events, one row each, instead of one row (and three index entries) per event.
//!
//! A row of `event_blocks` holds the range of sequence numbers, times and kinds of its events
//! (so a query skips the blocks that cannot match) and the events in a fixed binary layout:
//! per event `seq: u64 | ts: i64 | recorded_at: i64 | kind: u8 | vehicle: u16 len + bytes |
//! zone: u16 len + bytes | body: u32 len + JSON` (little-endian). Sequence numbers inside a
//! block grow; blocks never overlap, so reading blocks by `first_seq` reads events by `seq`.

use kickstand_domain::event::EventKind;

/// Events per block, at most: small enough that fetching one event (a query by vehicle) reads
/// a few pages, large enough that a block is one insert for many events.
pub(crate) const BLOCK_EVENTS: usize = 64;

/// One event as a block holds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BlockEvent<'a> {
    pub seq: u64,
    pub ts: i64,
    pub recorded_at: i64,
    pub kind: EventKind,
    pub vehicle: &'a str,
    pub zone: &'a str,
    pub body: &'a str,
}

/// The bit of `kind` in a block's `kinds` mask.
pub(crate) fn kind_bit(kind: EventKind) -> i64 {
    let i = EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in ALL");
    1 << i
}

/// A block being filled.
#[derive(Default)]
pub(crate) struct Builder {
    pub data: Vec<u8>,
    pub count: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub kinds: i64,
}

impl Builder {
    pub fn push(&mut self, e: &BlockEvent<'_>) {
        if self.count == 0 {
            self.first_seq = e.seq;
            self.min_ts = e.ts;
            self.max_ts = e.ts;
        }
        self.count += 1;
        self.last_seq = e.seq;
        self.min_ts = self.min_ts.min(e.ts);
        self.max_ts = self.max_ts.max(e.ts);
        self.kinds |= kind_bit(e.kind);
        let d = &mut self.data;
        d.extend_from_slice(&e.seq.to_le_bytes());
        d.extend_from_slice(&e.ts.to_le_bytes());
        d.extend_from_slice(&e.recorded_at.to_le_bytes());
        d.push(kind_bit(e.kind).trailing_zeros() as u8);
        for s in [e.vehicle, e.zone] {
            let len = s.len().min(u16::MAX as usize);
            d.extend_from_slice(&(len as u16).to_le_bytes());
            d.extend_from_slice(&s.as_bytes()[..len]);
        }
        d.extend_from_slice(&(e.body.len() as u32).to_le_bytes());
        d.extend_from_slice(e.body.as_bytes());
    }

    pub fn is_full(&self) -> bool {
        self.count >= BLOCK_EVENTS
    }

    pub fn clear(&mut self) {
        *self = Builder {
            data: std::mem::take(&mut self.data),
            ..Builder::default()
        };
        self.data.clear();
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self, len: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// The events of a block, in order; `None` when the bytes are not a block (corruption).
pub(crate) fn decode(data: &[u8]) -> Option<Vec<BlockEvent<'_>>> {
    let mut c = Cursor {
        bytes: data,
        pos: 0,
    };
    let mut out = Vec::new();
    while c.pos < data.len() {
        let seq = c.u64()?;
        let ts = c.u64()? as i64;
        let recorded_at = c.u64()? as i64;
        let kind = *EventKind::ALL.get(usize::from(c.take(1)?[0]))?;
        let vlen = u16::from_le_bytes(c.take(2)?.try_into().ok()?) as usize;
        let vehicle = c.str(vlen)?;
        let zlen = u16::from_le_bytes(c.take(2)?.try_into().ok()?) as usize;
        let zone = c.str(zlen)?;
        let blen = u32::from_le_bytes(c.take(4)?.try_into().ok()?) as usize;
        let body = c.str(blen)?;
        out.push(BlockEvent {
            seq,
            ts,
            recorded_at,
            kind,
            vehicle,
            zone,
            body,
        });
    }
    Some(out)
}

/// The identity of an event for dedupe, beside its `ts`: the first 64 bits of its id (ids are
/// 128-bit hashes of vehicle, kind, time and zone, in hex), or a hash of the id if it is not.
pub(crate) fn identity(id: &str) -> i64 {
    match id.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()) {
        Some(h) => h as i64,
        None => kickstand_domain::fnv1a64(id.as_bytes()) as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_garbage_is_refused() {
        let events = [
            BlockEvent {
                seq: 7,
                ts: -5,
                recorded_at: 10,
                kind: EventKind::GeofenceEntered,
                vehicle: "v-1",
                zone: "zone é",
                body: "{\"a\":1}",
            },
            BlockEvent {
                seq: 9,
                ts: 1_800_000_000_000,
                recorded_at: 11,
                kind: EventKind::ReportingAgain,
                vehicle: "v-2",
                zone: "",
                body: "{}",
            },
        ];
        let mut b = Builder::default();
        for e in &events {
            b.push(e);
        }
        assert_eq!((b.first_seq, b.last_seq, b.count), (7, 9, 2));
        assert_eq!((b.min_ts, b.max_ts), (-5, 1_800_000_000_000));
        assert_eq!(
            b.kinds,
            kind_bit(EventKind::GeofenceEntered) | kind_bit(EventKind::ReportingAgain)
        );
        assert_eq!(decode(&b.data).unwrap(), events.to_vec());
        // Cut anywhere but between events, or a kind that does not exist: refused, never a
        // panic.
        for cut in 1..b.data.len() {
            let got = decode(&b.data[..cut]);
            assert!(got.is_none_or(|v| v == events[..1]), "cut at {cut}");
        }
        let mut bad = b.data.clone();
        bad[24] = 200;
        assert!(decode(&bad).is_none());
        b.clear();
        assert_eq!(b.count, 0);
        assert!(b.data.is_empty());
    }

    #[test]
    fn identity_reads_the_id_hash_and_hashes_other_ids() {
        assert_eq!(
            identity("00000000000000ff0123456789abcdef"),
            0xff,
            "the first 16 hex digits"
        );
        assert_ne!(identity("not-hex"), identity("not-hex2"));
        assert_eq!(identity("not-hex"), identity("not-hex"));
    }
}
