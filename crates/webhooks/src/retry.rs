//! When to try again: exponential backoff with full jitter.
//!
//! This module owns the retry schedule only: no I/O, no clock, no sleeping. The caller asks
//! [`RetryPolicy::delay`] how long to wait and does the waiting, so the same policy serves the
//! webhook dispatcher and the ops messenger, and tests pass a seeded [`Jitter`].

use std::time::Duration;

/// Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS architecture
/// blog): after the `n`th failed attempt (1-based) the wait is uniform in
/// `[0, min(max_delay, base · factor^(n-1))]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The cap of the first wait.
    pub base: Duration,
    /// How much the cap grows per attempt (2 doubles it).
    pub factor: f64,
    /// The largest cap.
    pub max_delay: Duration,
    /// Attempts in all (the first one included) before giving up; at least 1.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 1 s, doubling, at most 1 h between attempts, 8 attempts.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(3600),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The largest wait after failed attempt `attempt` (1-based; 0 is taken as 1).
    pub fn cap(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1024) as i32;
        let secs = self.base.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let max = self.max_delay.as_secs_f64();
        // `min` also turns an overflowed `inf` into the cap.
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The wait after failed attempt `attempt` (1-based): uniform in `[0, cap(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut Jitter) -> Duration {
        self.cap(attempt).mul_f64(rng.unit())
    }

    /// Whether another attempt follows failed attempt `attempt` (1-based).
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }
}

/// A small, fast, seedable random source for jitter (SplitMix64). Not for secrets.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator whose sequence is fixed by `seed` (tests).
    pub fn from_seed(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// A generator seeded from the operating system.
    pub fn from_entropy() -> Jitter {
        let mut seed = [0u8; 8];
        // Jitter only spreads retries out: a fixed seed if the OS refuses is harmless.
        let _ = getrandom::fill(&mut seed);
        Jitter(u64::from_le_bytes(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1]`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_grow_exponentially_up_to_the_maximum() {
        let p = RetryPolicy::default();
        let caps: Vec<u64> = (1..=14).map(|a| p.cap(a).as_secs()).collect();
        assert_eq!(
            caps,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600
            ]
        );
        assert_eq!(p.cap(0), p.cap(1));
        assert_eq!(p.cap(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn delays_stay_within_zero_and_the_cap_and_spread_out() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            factor: 3.0,
            max_delay: Duration::from_secs(5),
            max_attempts: 6,
        };
        let mut rng = Jitter::from_seed(42);
        for attempt in 1..=10 {
            let cap = p.cap(attempt);
            let delays: Vec<Duration> = (0..1000).map(|_| p.delay(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= cap), "attempt {attempt}");
            // Full jitter: both ends of the range are reached.
            assert!(delays.iter().any(|d| *d < cap / 10), "attempt {attempt}");
            assert!(
                delays.iter().any(|d| *d > cap * 9 / 10),
                "attempt {attempt}"
            );
        }
        // The same seed gives the same schedule.
        let a: Vec<_> = (1..6)
            .map(|n| p.delay(n, &mut Jitter::from_seed(7)))
            .collect();
        let b: Vec<_> = (1..6)
            .map(|n| p.delay(n, &mut Jitter::from_seed(7)))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn attempts_end_at_the_maximum() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(p.retries_after(1));
        assert!(p.retries_after(2));
        assert!(!p.retries_after(3));
        let once = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(!once.retries_after(1));
    }

    #[test]
    fn unit_is_within_bounds() {
        let mut rng = Jitter::from_seed(0);
        for _ in 0..10_000 {
            let u = rng.unit();
            assert!((0.0..=1.0).contains(&u));
        }
    }
}
