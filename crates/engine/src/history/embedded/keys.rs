//! Key layouts of the history engine's keyspaces. Big-endian, sign-flipped integers so byte
//! order is numeric order.
//!
//! - `chunks`: `vehicle_id | 0x00 | bucket_start | chunk_seq` → encoded points. The key order
//!   `(vehicle_id, bucket_start)` is the compound index that track queries range-scan. A closed
//!   bucket is compacted to a single chunk with `chunk_seq = 0`.
//! - `by_time`: `bucket_start | vehicle_id` → empty: the time-ordered index for fleet-wide scans
//!   and retention.
//! - `dirty`: same key as `by_time`: buckets holding more than one chunk, to be compacted once
//!   they close.
//! - `latest`: `vehicle_id` → one encoded point, the newest fix of the vehicle.
//! - `meta`: `ckpt/<shard>` → the last WAL segment checkpointed; `seq` → the next chunk seq;
//!   `span` → the bucket span in ms (fixed for the life of the store).

/// Vehicle ids never contain 0x00, so it separates the id from what follows and keeps one
/// vehicle's keys contiguous.
const SEP: u8 = 0;

pub fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn ts_from(bytes: &[u8]) -> Option<i64> {
    let b: [u8; 8] = bytes.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// The prefix of every chunk of `vehicle`.
pub fn vehicle_prefix(vehicle: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(vehicle.len() + 1);
    k.extend_from_slice(vehicle.as_bytes());
    k.push(SEP);
    k
}

/// The prefix of every chunk of one bucket.
pub fn bucket_prefix(vehicle: &str, bucket_start: i64) -> Vec<u8> {
    let mut k = vehicle_prefix(vehicle);
    k.extend_from_slice(&ts_bytes(bucket_start));
    k
}

pub fn chunk_key(vehicle: &str, bucket_start: i64, seq: u64) -> Vec<u8> {
    let mut k = bucket_prefix(vehicle, bucket_start);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn time_key(bucket_start: i64, vehicle: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + vehicle.len());
    k.extend_from_slice(&ts_bytes(bucket_start));
    k.extend_from_slice(vehicle.as_bytes());
    k
}

pub fn parse_time_key(key: &[u8]) -> Option<(i64, &str)> {
    let start = ts_from(key.get(..8)?)?;
    Some((start, std::str::from_utf8(key.get(8..)?).ok()?))
}

pub fn ckpt_key(shard: usize) -> Vec<u8> {
    format!("ckpt/{shard}").into_bytes()
}

pub const SEQ_KEY: &[u8] = b"seq";

/// The bucket span in ms the store was created with.
pub const SPAN_KEY: &[u8] = b"span";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_numeric_order() {
        let mut v = [-5_000i64, -1, 0, 1, 3_600_000, i64::MIN, i64::MAX];
        let mut keys: Vec<_> = v.iter().map(|&t| ts_bytes(t)).collect();
        v.sort();
        keys.sort();
        let back: Vec<_> = keys.iter().map(|k| ts_from(k).unwrap()).collect();
        assert_eq!(back, v);
    }

    #[test]
    fn one_vehicle_does_not_prefix_another() {
        // "a" must not range over "a1"'s chunks.
        let a = chunk_key("a", 0, 0);
        let a1 = chunk_key("a1", 0, 0);
        assert!(!a1.starts_with(&vehicle_prefix("a")));
        assert!(a.starts_with(&vehicle_prefix("a")));
        assert_eq!(parse_time_key(&time_key(42, "v:1")), Some((42, "v:1")));
    }
}
