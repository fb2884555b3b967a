//! Per-channel rate limits: GCRA (the generic cell rate algorithm, a token bucket kept as one
//! number, the "theoretical arrival time"). A channel with `rate_per_sec = r` and `burst = b`
//! lets `b` messages go at once after a quiet spell, then one every `1/r` seconds.
//!
//! With Redis the state is one key per channel, changed by a Lua script that reads Redis's own
//! clock, so every messenger process shares one limit and their clocks do not matter. Without
//! Redis the state is in this process.
//!
//! A caller asks for a slot with the longest wait it is ready to sleep: if its turn comes
//! within that, the slot is **reserved** (the caller sleeps the returned wait and sends, and
//! no one else gets that slot); otherwise nothing is taken and the caller puts the message
//! back for later. So a message held back by the limit is delayed, never failed.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The answer to a request for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Reserved: send after this wait (zero: now).
    After(Duration),
    /// Not reserved: the turn comes after this wait, more than the caller would sleep.
    Later(Duration),
}

/// Where the limits are kept.
pub enum Limiter {
    Local(Mutex<HashMap<String, f64>>, Instant),
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
        script: redis::Script,
    },
}

/// Redis error, without the server's address.
#[derive(Debug, thiserror::Error)]
#[error("the rate limit in Redis is unavailable: {0}")]
pub struct LimitError(String);

/// KEYS[1] = the channel's key; ARGV = interval µs, burst, longest wait µs.
/// Returns {reserved (1|0), wait µs}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
local wait = allow_at - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, wait} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
";

impl Limiter {
    pub fn local() -> Limiter {
        Limiter::Local(Mutex::new(HashMap::new()), Instant::now())
    }

    /// Connects to Redis; errors never repeat the URL (it may hold a password).
    pub async fn redis(url: &str, prefix: &str) -> Result<Limiter, LimitError> {
        let client =
            redis::Client::open(url).map_err(|_| LimitError("the Redis URL is invalid".into()))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            redis::aio::ConnectionManager::new(client),
        )
        .await
        .map_err(|_| LimitError("no connection within 10 s".into()))?
        .map_err(|e| LimitError(e.to_string()))?;
        Ok(Limiter::Redis {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
        })
    }

    /// Asks for a slot of `channel` (`rate` per second, `burst`), ready to sleep up to
    /// `max_wait`.
    pub async fn acquire(
        &self,
        channel: &str,
        rate: f64,
        burst: u32,
        max_wait: Duration,
    ) -> Result<Slot, LimitError> {
        let interval = 1e6 / rate;
        let max_wait_us = max_wait.as_micros() as f64;
        match self {
            Limiter::Local(state, epoch) => {
                let now = epoch.elapsed().as_micros() as f64;
                let mut map = state.lock();
                let tat = map.get(channel).copied().unwrap_or(0.0).max(now);
                let new_tat = tat + interval;
                let wait = (new_tat - f64::from(burst) * interval - now).max(0.0);
                if wait > max_wait_us {
                    return Ok(Slot::Later(Duration::from_micros(wait as u64)));
                }
                map.insert(channel.to_owned(), new_tat);
                Ok(Slot::After(Duration::from_micros(wait as u64)))
            }
            Limiter::Redis {
                conn,
                prefix,
                script,
            } => {
                let mut conn = conn.clone();
                let (reserved, wait): (i64, i64) = script
                    .key(format!("{prefix}:rate:{channel}"))
                    .arg(interval)
                    .arg(burst)
                    .arg(max_wait_us)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| LimitError(e.to_string()))?;
                let wait = Duration::from_micros(wait.max(0) as u64);
                Ok(if reserved == 1 {
                    Slot::After(wait)
                } else {
                    Slot::Later(wait)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limit_lets_a_burst_through_then_spaces_out() {
        let l = Limiter::local();
        let max = Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(
                l.acquire("a", 10.0, 3, max).await.unwrap(),
                Slot::After(Duration::ZERO)
            );
        }
        // The fourth waits about 100 ms, the fifth about 200 ms: reserved, in order.
        let Slot::After(w4) = l.acquire("a", 10.0, 3, max).await.unwrap() else {
            panic!("not reserved")
        };
        let Slot::After(w5) = l.acquire("a", 10.0, 3, max).await.unwrap() else {
            panic!("not reserved")
        };
        assert!(
            w4 > Duration::from_millis(90) && w4 <= Duration::from_millis(100),
            "{w4:?}"
        );
        assert!(
            w5 > Duration::from_millis(190) && w5 <= Duration::from_millis(200),
            "{w5:?}"
        );
        // Beyond the longest wait nothing is reserved.
        let short = Duration::from_millis(250);
        assert!(matches!(
            l.acquire("a", 10.0, 3, short).await.unwrap(),
            Slot::Later(_)
        ));
        assert!(matches!(
            l.acquire("a", 10.0, 3, short).await.unwrap(),
            Slot::Later(_)
        ));
        // Another channel has its own bucket.
        assert_eq!(
            l.acquire("b", 10.0, 1, max).await.unwrap(),
            Slot::After(Duration::ZERO)
        );
    }
}
