//! Leadership: only one scheduler process ticks jobs and follows events at a time.
//!
//! Without Redis (`kickstand run`) this process is always the leader. With Redis the leader
//! holds the key `<prefix>:scheduler:leader` = its token, taken with `SET NX PX ttl`, renewed
//! every `renew` by a Lua compare-and-`PEXPIRE`, and released at shutdown by a Lua
//! compare-and-`DEL`. A process counts itself leader only until `ttl − renew` after the start
//! of its last successful renewal (its own clock), so it stops ticking before another process
//! can take the expired key. A process that dies without releasing is replaced at most `ttl`
//! (plus one `renew` for the follower's next try) later.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return 0
end"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end"#;

/// Whether this process leads, as seen by the tick loops.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<State>,
}

struct State {
    /// Always the leader (no Redis).
    local: bool,
    /// Leader until this instant (unless `local`).
    until: Deadline,
    /// Whether the lease was held at the last look (for logging changes).
    held: AtomicBool,
}

impl Leadership {
    /// Always the leader.
    pub fn local() -> Leadership {
        Leadership {
            inner: Arc::new(State {
                local: true,
                until: Default::default(),
                held: AtomicBool::new(true),
            }),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.inner.local || self.inner.until.get().is_some_and(|t| Instant::now() < t)
    }
}

/// The Redis lease and its renewal loop.
pub struct RedisLease {
    conn: redis::aio::MultiplexedConnection,
    key: String,
    token: String,
    ttl: Duration,
    renew: Duration,
    leadership: Leadership,
}

impl RedisLease {
    pub async fn connect(
        url: &str,
        key: String,
        token: String,
        ttl: Duration,
        renew: Duration,
    ) -> Result<RedisLease, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(RedisLease {
            conn,
            key,
            token,
            ttl,
            renew,
            leadership: Leadership {
                inner: Arc::new(State {
                    local: false,
                    until: Default::default(),
                    held: AtomicBool::new(false),
                }),
            },
        })
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// One attempt to take or keep the lease; updates the leadership.
    pub async fn step(&mut self) {
        let started = Instant::now();
        let ttl_ms = self.ttl.as_millis() as u64;
        let was = self.leadership.inner.held.load(Ordering::Relaxed);
        let result: Result<bool, redis::RedisError> = if was {
            redis::Script::new(RENEW)
                .key(&self.key)
                .arg(&self.token)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut self.conn)
                .await
                .map(|n| n == 1)
        } else {
            redis::cmd("SET")
                .arg(&self.key)
                .arg(&self.token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<Option<String>>(&mut self.conn)
                .await
                .map(|r| r.is_some())
        };
        match result {
            Ok(true) => {
                // Leader until the key could expire, less a renewal period of margin.
                self.leadership
                    .inner
                    .until
                    .set(Some(started + self.ttl.saturating_sub(self.renew)));
                if !was {
                    tracing::info!(message = "scheduler lease taken: this process leads", key = %self.key);
                }
                self.leadership.inner.held.store(true, Ordering::Relaxed);
            }
            Ok(false) => {
                if was {
                    tracing::warn!(message = "scheduler lease lost to another process", key = %self.key);
                }
                self.leadership.inner.until.set(None);
                self.leadership.inner.held.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                // Keep what we had: the deadline ends leadership if Redis stays away.
                tracing::warn!(message = "scheduler lease: Redis failed", %error);
            }
        }
    }

    /// Renews (or tries to take) the lease until `stop`, then releases it if held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(self.renew) => {}
                _ = stop.changed() => break,
            }
        }
        self.leadership.inner.until.set(None);
        if self.leadership.inner.held.swap(false, Ordering::Relaxed) {
            let released: Result<i64, _> = redis::Script::new(RELEASE)
                .key(&self.key)
                .arg(&self.token)
                .invoke_async(&mut self.conn)
                .await;
            if let Err(error) = released {
                tracing::warn!(message = "scheduler lease: release failed; it expires on its own", %error);
            }
        }
    }
}

/// An `Option<Instant>` behind a std mutex (never held across an await).
#[derive(Default)]
struct Deadline(std::sync::Mutex<Option<Instant>>);

impl Deadline {
    fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, v: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}
