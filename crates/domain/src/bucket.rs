//! Time buckets: every fix of one vehicle within one UTC span (default one hour) belongs to the
//! bucket keyed `(vehicle_id, bucket_start)`.

use serde::{Deserialize, Serialize};

/// The length of a bucket in milliseconds. Buckets align to UTC boundaries: a bucket starts at a
/// multiple of the span since the Unix epoch, so an hour bucket starts on the hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpan(i64);

impl BucketSpan {
    /// One UTC hour, the default.
    pub const HOUR: BucketSpan = BucketSpan(3_600_000);

    /// A span of `secs` seconds. It must divide a day evenly so buckets stay aligned to UTC days.
    pub fn from_secs(secs: u64) -> Option<BucketSpan> {
        if secs == 0 || 86_400 % secs != 0 {
            return None;
        }
        Some(BucketSpan(secs as i64 * 1000))
    }

    /// The span in milliseconds.
    pub fn ms(self) -> i64 {
        self.0
    }

    /// The start of the bucket that holds `ts_ms`.
    pub fn start_of(self, ts_ms: i64) -> i64 {
        ts_ms - ts_ms.rem_euclid(self.0)
    }
}

impl Default for BucketSpan {
    fn default() -> Self {
        BucketSpan::HOUR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fix_exactly_on_the_hour_opens_the_next_bucket() {
        let h = BucketSpan::HOUR;
        assert_eq!(h.start_of(7_200_000), 7_200_000);
        assert_eq!(h.start_of(7_199_999), 3_600_000);
        assert_eq!(h.start_of(-1), -3_600_000);
    }

    #[test]
    fn spans_must_divide_a_day() {
        assert!(BucketSpan::from_secs(3600).is_some());
        assert!(BucketSpan::from_secs(86_400).is_some());
        assert!(BucketSpan::from_secs(7).is_none());
        assert!(BucketSpan::from_secs(0).is_none());
    }
}
