//! [`RedisState`]: the latest state in Redis, shared by every process of a deployment, with
//! the same answers as [`MemoryState`](super::MemoryState) for the same fixes.
//!
//! # Keys
//!
//! Every key carries the hash tag `{<prefix>}`, so a script or pipeline touches one cluster
//! slot:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{p}:v` | hash | vehicle id → its newest point, [encoded](encode_point) (41 bytes) |
//! | `{p}:geo` | geo set | the position of every vehicle within Redis' GEO latitudes |
//! | `{p}:polar` | set | the vehicles beyond them (see below) |
//! | `{p}:chg` | sorted set | vehicle id scored by the change number of its last update |
//! | `{p}:seq` | string | the change counter, incremented once by each `apply` that changes something |
//! | `{p}:epoch` | string | a random number in `1..=65535`, created when missing |
//! | `{p}:primed` | string | set once the store was rebuilt from history |
//!
//! # The poles
//!
//! Redis' GEO commands refuse latitudes beyond ±85.05112878° (the Web Mercator limit). A
//! vehicle there is stored in the hash like any other, and its id is kept in `{p}:polar`
//! instead of `{p}:geo`; `near` and `within` add the polar vehicles to their candidates
//! whenever the area they search reaches beyond that latitude, then filter every candidate
//! exactly. So the poles answer exactly like the rest of the world, at the cost of reading
//! every polar vehicle for such queries (there are normally none). Likewise a vehicle at
//! longitude exactly 180° is indexed a hair (0.1 m) west of it, since Redis would file it under
//! −180°, where a search from the eastern side misses it. The index only picks candidates: the
//! answers always come from the exact point in the hash.
//!
//! # Change numbers
//!
//! `changes_since` hands out `(epoch << 40) | seq`. A server that was flushed or restarted
//! without persistence loses `{p}:epoch` with the rest and makes a new one, so a cursor from
//! before answers with every vehicle, as the port requires.
//!
//! # Blocking
//!
//! Each method blocks for one or a few round trips; inside a multi-threaded tokio runtime it
//! runs under [`tokio::task::block_in_place`], so the other tasks of the worker move on.

use super::RedisStateConfig;
use super::{FleetSummary, StateError, StateFilter, StateResult, StateStore, VehicleView};
use crate::FastSet;
use kickstand_domain::geo::{self, BBox};
use kickstand_domain::{Fix, Point, VehicleId, VehicleState};
use parking_lot::{Condvar, Mutex};
use redis::{Connection, RedisError, RedisResult};
use std::time::Duration;

/// Fixes per script call: large batches are cut so one call never blocks Redis for long.
const APPLY_CHUNK: usize = 2_000;
/// Fields per HMGET and HSCAN page.
const PAGE: usize = 1_000;
/// Redis' GEO commands accept latitudes up to this (inclusive), in millionths of a degree
/// rounded down (the limit is 85.05112878°).
const GEO_LAT_LIMIT_E6: i32 = 85_051_128;
const GEO_LAT_LIMIT: f64 = 85.051_128;
/// The Earth radius Redis' GEO commands compute with.
const REDIS_EARTH_RADIUS_M: f64 = 6_372_797.560_856;
/// Bits of the change counter in a change number; the epoch sits above them.
const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// The size of an encoded point.
pub const ENCODED_LEN: usize = 41;
const ENCODING_VERSION: u8 = 1;

/// Encodes a point as a fixed record of [`ENCODED_LEN`] bytes: `ts` as a big-endian `i64`
/// first (the apply script reads it as a signed and an unsigned 32-bit half, exact in Lua's
/// doubles), then the version byte, then little-endian `lat_e6`, `lon_e6`, a presence byte
/// (bits 0–5: speed, heading, battery, accuracy, altitude, odometer; bit 6: locked is present;
/// bit 7: its value), the state code (0 when absent), and the six optional fields at their
/// full width (0 when absent).
pub fn encode_point(p: &Point) -> [u8; ENCODED_LEN] {
    let mut b = [0u8; ENCODED_LEN];
    b[0..8].copy_from_slice(&p.ts.to_be_bytes());
    b[8] = ENCODING_VERSION;
    b[9..13].copy_from_slice(&p.lat_e6.to_le_bytes());
    b[13..17].copy_from_slice(&p.lon_e6.to_le_bytes());
    let mut flags = 0u8;
    let mut put = |bit: u8, range: std::ops::Range<usize>, bytes: Option<&[u8]>| {
        if let Some(bytes) = bytes {
            flags |= 1 << bit;
            b[range].copy_from_slice(bytes);
        }
    };
    put(
        0,
        19..21,
        p.speed_dkmh.map(u16::to_le_bytes).as_ref().map(|x| &x[..]),
    );
    put(
        1,
        21..23,
        p.heading_ddeg
            .map(u16::to_le_bytes)
            .as_ref()
            .map(|x| &x[..]),
    );
    put(
        2,
        23..25,
        p.battery_dpct
            .map(u16::to_le_bytes)
            .as_ref()
            .map(|x| &x[..]),
    );
    put(
        3,
        25..29,
        p.accuracy_dm.map(u32::to_le_bytes).as_ref().map(|x| &x[..]),
    );
    put(
        4,
        29..33,
        p.altitude_dm.map(i32::to_le_bytes).as_ref().map(|x| &x[..]),
    );
    put(
        5,
        33..41,
        p.odometer_m.map(u64::to_le_bytes).as_ref().map(|x| &x[..]),
    );
    match p.locked {
        Some(true) => flags |= 0b1100_0000,
        Some(false) => flags |= 0b0100_0000,
        None => {}
    }
    b[17] = flags;
    b[18] = p.state.map_or(0, VehicleState::code);
    b
}

/// Decodes what [`encode_point`] made; `None` for anything else.
pub fn decode_point(b: &[u8]) -> Option<Point> {
    let b: &[u8; ENCODED_LEN] = b.try_into().ok()?;
    if b[8] != ENCODING_VERSION {
        return None;
    }
    let flags = b[17];
    if flags & 0b1000_0000 != 0 && flags & 0b0100_0000 == 0 {
        return None;
    }
    let arr = |r: std::ops::Range<usize>| -> &[u8] { &b[r] };
    let has = |bit: u8| flags & (1 << bit) != 0;
    let u16_at = |bit, r| has(bit).then(|| u16::from_le_bytes(arr(r).try_into().unwrap()));
    let state = match b[18] {
        0 => None,
        c => Some(VehicleState::from_code(c)?),
    };
    Some(Point {
        ts: i64::from_be_bytes(b[0..8].try_into().unwrap()),
        lat_e6: i32::from_le_bytes(b[9..13].try_into().unwrap()),
        lon_e6: i32::from_le_bytes(b[13..17].try_into().unwrap()),
        speed_dkmh: u16_at(0, 19..21),
        heading_ddeg: u16_at(1, 21..23),
        battery_dpct: u16_at(2, 23..25),
        accuracy_dm: has(3).then(|| u32::from_le_bytes(b[25..29].try_into().unwrap())),
        altitude_dm: has(4).then(|| i32::from_le_bytes(b[29..33].try_into().unwrap())),
        odometer_m: has(5).then(|| u64::from_le_bytes(b[33..41].try_into().unwrap())),
        state,
        locked: has(6).then_some(has(7)),
        quality: Default::default(),
    })
}

/// KEYS: v, geo, polar, chg, seq, epoch. ARGV: a candidate epoch, then per fix: id, encoded
/// point, lon, lat (both empty beyond the GEO latitudes). Returns the number of vehicles
/// changed.
const APPLY_SCRIPT: &str = r#"
local v, geo, polar, chg, seqk, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
redis.call('SET', epoch, ARGV[1], 'NX')
local seq = nil
local changed = 0
for i = 2, #ARGV, 4 do
  local id, val = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', v, id)
  local newer = true
  if old then
    local oh, ol = struct.unpack('>i4I4', old)
    local nh, nl = struct.unpack('>i4I4', val)
    newer = nh > oh or (nh == oh and nl > ol)
  end
  if newer then
    if not seq then seq = redis.call('INCR', seqk) end
    redis.call('HSET', v, id, val)
    local lon = ARGV[i + 2]
    if lon ~= '' then
      redis.call('GEOADD', geo, lon, ARGV[i + 3], id)
      if old then redis.call('SREM', polar, id) end
    else
      redis.call('SADD', polar, id)
      if old then redis.call('ZREM', geo, id) end
    end
    redis.call('ZADD', chg, seq, id)
    changed = changed + 1
  end
end
return changed
"#;

struct Keys {
    v: String,
    geo: String,
    polar: String,
    chg: String,
    seq: String,
    epoch: String,
    primed: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let k = |suffix: &str| format!("{{{prefix}}}:{suffix}");
        Keys {
            v: k("v"),
            geo: k("geo"),
            polar: k("polar"),
            chg: k("chg"),
            seq: k("seq"),
            epoch: k("epoch"),
            primed: k("primed"),
        }
    }

    fn all(&self) -> [&str; 7] {
        [
            &self.v,
            &self.geo,
            &self.polar,
            &self.chg,
            &self.seq,
            &self.epoch,
            &self.primed,
        ]
    }
}

/// `url` with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // `redis://secret@host` is a password alone.
        None => "***".to_owned(),
    };
    format!(
        "{}{user}{}",
        &url[..scheme_end],
        &rest[at..] // "@host..."
    )
}

/// Runs a blocking round trip: under `block_in_place` on a multi-threaded tokio runtime's
/// thread, directly anywhere else.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

struct PoolState {
    idle: Vec<Connection>,
    /// Connections in existence: idle and leased.
    open: usize,
}

/// A few synchronous connections, made on demand up to `size`. A connection that saw an
/// error is dropped, never reused.
struct Pool {
    client: redis::Client,
    url: String,
    size: usize,
    timeout: Duration,
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// A connection taken from the pool: given back by [`Lease::give_back`], dropped (and its
/// place freed) otherwise.
struct Lease<'a> {
    pool: &'a Pool,
    con: Option<Connection>,
    /// Taken idle from the pool (it may have died while it waited there).
    reused: bool,
}

impl Lease<'_> {
    fn give_back(mut self) {
        if let Some(con) = self.con.take() {
            self.pool.state.lock().idle.push(con);
            self.pool.freed.notify_one();
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.con.take().is_some() {
            self.pool.state.lock().open -= 1;
            self.pool.freed.notify_one();
        }
    }
}

impl Pool {
    fn connect(&self) -> Result<Connection, StateError> {
        let con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| self.error("connect", &e))?;
        con.set_read_timeout(Some(self.timeout))
            .and_then(|()| con.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.error("connect", &e))?;
        Ok(con)
    }

    /// A connection: an idle one unless `fresh`, when the idle ones are suspect (one of them
    /// just turned out dead) and are closed.
    fn take(&self, fresh: bool) -> Result<Lease<'_>, StateError> {
        let mut st = self.state.lock();
        if fresh {
            st.open -= st.idle.len();
            st.idle.clear();
        }
        loop {
            if let Some(con) = st.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    con: Some(con),
                    reused: true,
                });
            }
            if st.open < self.size {
                st.open += 1;
                drop(st);
                return match self.connect() {
                    Ok(con) => Ok(Lease {
                        pool: self,
                        con: Some(con),
                        reused: false,
                    }),
                    Err(e) => {
                        self.state.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            if self.freed.wait_for(&mut st, self.timeout).timed_out() {
                return Err(StateError(format!(
                    "redis at {}: all {} connections stayed busy for {} ms",
                    self.url,
                    self.size,
                    self.timeout.as_millis()
                )));
            }
        }
    }

    fn error(&self, what: &str, e: &RedisError) -> StateError {
        StateError(format!("redis at {}: {what}: {e}", self.url))
    }

    /// Runs `f` on a connection. A connection that had been waiting in the pool and turns out
    /// dead (the server restarted, or closed it) is replaced once: every operation of this
    /// store can be repeated safely (`apply` only ever moves a vehicle forward).
    fn run<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> StateResult<T> {
        blocking(|| {
            let mut lease = self.take(false)?;
            loop {
                let con = lease.con.as_mut().expect("a lease holds a connection");
                match f(con) {
                    Ok(v) => {
                        lease.give_back();
                        return Ok(v);
                    }
                    Err(e) => {
                        let retry = lease.reused
                            && (e.is_connection_dropped() || e.is_io_error())
                            && !e.is_timeout();
                        drop(lease);
                        if !retry {
                            return Err(self.error(what, &e));
                        }
                        tracing::debug!(error = %e, "redis connection lost, reconnecting");
                        lease = self.take(true)?;
                    }
                }
            }
        })
    }
}

/// The latest-state store in Redis. See the [module documentation](self).
pub struct RedisState {
    pool: Pool,
    keys: Keys,
    apply_script: redis::Script,
}

impl RedisState {
    /// Connects to `cfg.url` and loads the apply script.
    pub fn open(cfg: &RedisStateConfig) -> StateResult<RedisState> {
        let url = redact_url(&cfg.url);
        if cfg.key_prefix.is_empty() || cfg.key_prefix.contains(['{', '}']) {
            return Err(StateError(format!(
                "redis key prefix {:?} must be non-empty and contain no braces",
                cfg.key_prefix
            )));
        }
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| StateError(format!("redis URL {url} is invalid: {e}")))?;
        let state = RedisState {
            pool: Pool {
                client,
                url,
                size: cfg.pool_size.max(1),
                timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            keys: Keys::new(&cfg.key_prefix),
            apply_script: redis::Script::new(APPLY_SCRIPT),
        };
        state.pool.run("load the apply script", |con| {
            state.apply_script.prepare_invoke().load(con).map(drop)
        })?;
        Ok(state)
    }

    /// Deletes every key of this store (tests; resetting a deployment).
    pub fn delete_all(&self) -> StateResult<()> {
        self.pool.run("delete", |con| {
            redis::cmd("DEL").arg(&self.keys.all()[..]).query::<()>(con)
        })
    }

    /// The points of `ids`, `None` where a vehicle is gone (or its value unreadable).
    fn points(&self, con: &mut Connection, ids: &[Vec<u8>]) -> RedisResult<Vec<Option<Point>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE) {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&self.keys.v)
                .arg(chunk)
                .query(con)?;
            out.extend(values.iter().map(|v| v.as_deref().and_then(decode_point)));
        }
        Ok(out)
    }

    /// The ids of every vehicle that may lie inside `bbox` (a superset: the caller filters).
    fn candidates(&self, con: &mut Connection, bbox: &BBox) -> RedisResult<Vec<Vec<u8>>> {
        let mut pipe = redis::pipe();
        let lat_lo = bbox.min_lat.max(-GEO_LAT_LIMIT);
        let lat_hi = bbox.max_lat.min(GEO_LAT_LIMIT);
        let mut queries = 0;
        if lat_lo <= lat_hi {
            // Redis' box: |lat - centre lat| in metres within half the height, and the distance
            // along the vehicle's parallel to the centre's meridian within half the width.
            let (clat, clon) = ((lat_lo + lat_hi) / 2.0, (bbox.min_lon + bbox.max_lon) / 2.0);
            let half_h = REDIS_EARTH_RADIUS_M * ((lat_hi - lat_lo) / 2.0).to_radians();
            // Widest at the latitude of the box nearest the equator.
            let min_abs_lat = if lat_lo <= 0.0 && lat_hi >= 0.0 {
                0.0
            } else {
                lat_lo.abs().min(lat_hi.abs())
            };
            let half_dlon = ((bbox.max_lon - bbox.min_lon) / 2.0).to_radians();
            let half_w = 2.0
                * REDIS_EARTH_RADIUS_M
                * (min_abs_lat.to_radians().cos() * (half_dlon / 2.0).sin())
                    .clamp(0.0, 1.0)
                    .asin();
            // Margins for rounding and for the ~0.6 m precision of a stored geohash.
            let pad = |half: f64| 2.0 * (half * 1.001 + 5.0);
            pipe.cmd("GEOSEARCH")
                .arg(&self.keys.geo)
                .arg("FROMLONLAT")
                .arg(clon)
                .arg(clat)
                .arg("BYBOX")
                .arg(pad(half_w))
                .arg(pad(half_h))
                .arg("m");
            queries += 1;
        }
        if bbox.min_lat < -GEO_LAT_LIMIT || bbox.max_lat > GEO_LAT_LIMIT {
            pipe.cmd("SMEMBERS").arg(&self.keys.polar);
            queries += 1;
        }
        if queries == 0 {
            return Ok(Vec::new());
        }
        let lists: Vec<Vec<Vec<u8>>> = pipe.query(con)?;
        let mut ids: Vec<Vec<u8>> = lists.into_iter().flatten().collect();
        if queries == 2 {
            ids.sort_unstable();
            ids.dedup();
        }
        Ok(ids)
    }

    fn current_change(&self, con: &mut Connection) -> RedisResult<(u64, u64)> {
        let (epoch, seq): (u64, Option<u64>) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&self.keys.epoch)
            .arg(new_epoch())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&self.keys.epoch)
            .cmd("GET")
            .arg(&self.keys.seq)
            .query(con)?;
        Ok((epoch, seq.unwrap_or(0)))
    }
}

/// A random epoch in `1..=65535`.
fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % 65_535 + 1
}

fn view(id: &[u8], point: Point) -> Option<VehicleView> {
    let id = VehicleId::new(std::str::from_utf8(id).ok()?).ok()?;
    Some(VehicleView {
        vehicle_id: id,
        point,
    })
}

/// The distance `MemoryState::near` gives `p` from the centre, or `None` when it leaves `p`
/// out. Mirrors it exactly, so both stores give the same answers.
struct NearTest {
    lat: f64,
    lon: f64,
    radius_m: f64,
    lat_lo: i32,
    lat_hi: i32,
    lon_lo: i32,
    lon_hi: i32,
    m_per_deg: f64,
    coslat: f64,
    inner2: f64,
    outer2: f64,
}

impl NearTest {
    fn new(lat: f64, lon: f64, radius_m: f64) -> (NearTest, BBox) {
        let bbox = BBox::around(lat, lon, radius_m);
        let t = NearTest {
            lat,
            lon,
            radius_m,
            lat_lo: (bbox.min_lat * 1e6).floor() as i32,
            lat_hi: (bbox.max_lat * 1e6).ceil() as i32,
            lon_lo: (bbox.min_lon * 1e6).floor() as i32,
            lon_hi: (bbox.max_lon * 1e6).ceil() as i32,
            m_per_deg: geo::EARTH_RADIUS_M.to_radians(),
            coslat: lat.to_radians().cos(),
            inner2: (radius_m * 0.999).powi(2),
            outer2: (radius_m * 1.001).powi(2),
        };
        // The integer box, in degrees (a hair larger: the candidates must include it).
        let search = BBox {
            min_lat: (f64::from(t.lat_lo) / 1e6 - 1e-6).max(-90.0),
            max_lat: (f64::from(t.lat_hi) / 1e6 + 1e-6).min(90.0),
            min_lon: (f64::from(t.lon_lo) / 1e6 - 1e-6).max(-180.0),
            max_lon: (f64::from(t.lon_hi) / 1e6 + 1e-6).min(180.0),
        };
        (t, search)
    }

    fn distance(&self, p: &Point) -> Option<f64> {
        if p.lat_e6 < self.lat_lo
            || p.lat_e6 > self.lat_hi
            || p.lon_e6 < self.lon_lo
            || p.lon_e6 > self.lon_hi
        {
            return None;
        }
        let dy = (p.lat() - self.lat) * self.m_per_deg;
        let dx = (p.lon() - self.lon) * self.m_per_deg * self.coslat;
        let approx2 = dx * dx + dy * dy;
        if approx2 > self.outer2 {
            return None;
        }
        let d = if approx2 < self.inner2 {
            approx2.sqrt()
        } else {
            geo::distance_m(self.lat, self.lon, p.lat(), p.lon())
        };
        (d <= self.radius_m).then_some(d)
    }
}

/// The newest fix of each vehicle in `fixes` (the first of equal timestamps), in first-seen
/// order.
fn newest_per_vehicle(fixes: &[Fix]) -> Vec<&Fix> {
    let mut at: crate::FastMap<&VehicleId, usize> = crate::FastMap::default();
    let mut out: Vec<&Fix> = Vec::with_capacity(fixes.len());
    for fix in fixes {
        match at.get(&fix.vehicle_id) {
            Some(&i) => {
                if fix.point.ts > out[i].point.ts {
                    out[i] = fix;
                }
            }
            None => {
                at.insert(&fix.vehicle_id, out.len());
                out.push(fix);
            }
        }
    }
    out
}

impl StateStore for RedisState {
    fn apply(&self, fixes: &[Fix]) -> StateResult<()> {
        // Only each vehicle's newest fix of the batch can move it: send Redis just those (a
        // worker's group holds several fixes of a vehicle when its queue had a backlog).
        let newest = newest_per_vehicle(fixes);
        for chunk in newest.chunks(APPLY_CHUNK) {
            let mut inv = self.apply_script.prepare_invoke();
            inv.key(&self.keys.v)
                .key(&self.keys.geo)
                .key(&self.keys.polar)
                .key(&self.keys.chg)
                .key(&self.keys.seq)
                .key(&self.keys.epoch)
                .arg(new_epoch());
            for fix in chunk {
                let p = &fix.point;
                inv.arg(fix.vehicle_id.as_str()).arg(&encode_point(p)[..]);
                if p.lat_e6.abs() <= GEO_LAT_LIMIT_E6 {
                    // Redis files longitude 180 under -180 (its geohash wraps), where a search
                    // on the eastern side does not look; a hair west of it is found. The index
                    // only picks candidates: answers use the exact point from the hash.
                    inv.arg(p.lon().min(179.999_999)).arg(p.lat());
                } else {
                    inv.arg("").arg("");
                }
            }
            self.pool
                .run("apply", |con| inv.invoke::<u64>(con).map(drop))?;
        }
        Ok(())
    }

    fn get(&self, id: &VehicleId) -> StateResult<Option<Point>> {
        let value: Option<Vec<u8>> = self.pool.run("get", |con| {
            redis::cmd("HGET")
                .arg(&self.keys.v)
                .arg(id.as_str())
                .query(con)
        })?;
        match value {
            None => Ok(None),
            Some(v) => decode_point(&v).map(Some).ok_or_else(|| {
                StateError(format!("redis holds an unreadable point for vehicle {id}"))
            }),
        }
    }

    fn near(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        filter: StateFilter,
        limit: usize,
    ) -> StateResult<Vec<(VehicleView, f64)>> {
        let (test, search) = NearTest::new(lat, lon, radius_m);
        let (ids, points) = self.pool.run("near", |con| {
            let ids = self.candidates(con, &search)?;
            let points = self.points(con, &ids)?;
            Ok((ids, points))
        })?;
        let mut found: Vec<(f64, VehicleView)> = ids
            .iter()
            .zip(points)
            .filter_map(|(id, p)| {
                let p = p?;
                if !filter.matches(&p) {
                    return None;
                }
                let d = test.distance(&p)?;
                Some((d, view(id, p)?))
            })
            .collect();
        found.sort_unstable_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.vehicle_id.cmp(&b.1.vehicle_id))
        });
        found.truncate(limit);
        Ok(found.into_iter().map(|(d, v)| (v, d)).collect())
    }

    fn within(
        &self,
        bbox: BBox,
        filter: StateFilter,
        after: Option<&VehicleId>,
        limit: usize,
    ) -> StateResult<Vec<VehicleView>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.pool.run("within", |con| {
            let mut ids = self.candidates(con, &bbox)?;
            // Ids compare as bytes exactly as `VehicleId`s do.
            if let Some(a) = after {
                ids.retain(|id| id.as_slice() > a.as_str().as_bytes());
            }
            ids.sort_unstable();
            // Read in id order, only as far as the page needs.
            let mut found = Vec::new();
            for chunk in ids.chunks(PAGE.min(limit.max(64))) {
                let points = self.points(con, chunk)?;
                for (id, p) in chunk.iter().zip(points) {
                    let Some(p) = p else { continue };
                    if bbox.contains(p.lat(), p.lon())
                        && filter.matches(&p)
                        && let Some(v) = view(id, p)
                    {
                        found.push(v);
                        if found.len() == limit {
                            return Ok(found);
                        }
                    }
                }
            }
            Ok(found)
        })
    }

    fn summary(&self, stale_before_ms: i64) -> StateResult<FleetSummary> {
        let mut s = FleetSummary::zeroed();
        self.pool.run("summary", |con| {
            let mut seen: FastSet<Vec<u8>> = FastSet::default();
            // A fresh start on a retry.
            s = FleetSummary::zeroed();
            let mut cursor: u64 = 0;
            loop {
                let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                    .arg(&self.keys.v)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query(con)?;
                let mut it = flat.into_iter();
                while let (Some(id), Some(value)) = (it.next(), it.next()) {
                    let Some(p) = decode_point(&value) else {
                        continue;
                    };
                    // HSCAN may return a field twice.
                    if !seen.insert(id) {
                        continue;
                    }
                    s.count(&p, stale_before_ms);
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })?;
        Ok(s)
    }

    fn changes_since(
        &self,
        bbox: &BBox,
        since: u64,
        out: &mut Vec<VehicleView>,
    ) -> StateResult<u64> {
        let (now, ids, points) = self.pool.run("changes", |con| {
            // The counter first: a change racing with the range read is either seen now or
            // has a larger number and is seen next time; never lost.
            let (epoch, seq) = self.current_change(con)?;
            let from = if since == 0 || since >> SEQ_BITS != epoch {
                0
            } else {
                since & SEQ_MASK
            };
            let ids: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
                .arg(&self.keys.chg)
                .arg(format!("({from}"))
                .arg("+inf")
                .query(con)?;
            let points = self.points(con, &ids)?;
            Ok(((epoch << SEQ_BITS) | (seq & SEQ_MASK), ids, points))
        })?;
        for (id, p) in ids.iter().zip(points) {
            if let Some(p) = p
                && bbox.contains(p.lat(), p.lon())
                && let Some(v) = view(id, p)
            {
                out.push(v);
            }
        }
        Ok(now)
    }

    fn len(&self) -> StateResult<usize> {
        self.pool
            .run("len", |con| redis::cmd("HLEN").arg(&self.keys.v).query(con))
    }

    fn for_each_vehicle(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> StateResult<()> {
        // HSCAN pages of about `PAGE` vehicles: Redis is never blocked for long, and the scan
        // holds one page at a time. A retry on a new connection starts over (the port allows
        // a vehicle to be visited twice).
        self.pool.run("scan", |con| {
            let mut cursor: u64 = 0;
            loop {
                let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                    .arg(&self.keys.v)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query(con)?;
                let mut it = flat.into_iter();
                while let (Some(id), Some(value)) = (it.next(), it.next()) {
                    if let Some(v) = decode_point(&value).and_then(|p| view(&id, p)) {
                        visit(v.vehicle_id, v.point);
                    }
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
    }

    fn is_primed(&self) -> StateResult<bool> {
        self.pool.run("is_primed", |con| {
            redis::cmd("EXISTS").arg(&self.keys.primed).query(con)
        })
    }

    fn mark_primed(&self) -> StateResult<()> {
        self.pool.run("mark_primed", |con| {
            redis::cmd("SET")
                .arg(&self.keys.primed)
                .arg(1)
                .query::<()>(con)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;
    use crate::testing;
    use proptest::prelude::*;
    use std::time::Instant;

    /// A store under a prefix of its own, whose keys are deleted when the test ends (even
    /// when it fails).
    struct TestStore {
        state: RedisState,
        cfg: RedisStateConfig,
    }

    impl std::ops::Deref for TestStore {
        type Target = RedisState;
        fn deref(&self) -> &RedisState {
            &self.state
        }
    }

    impl Drop for TestStore {
        fn drop(&mut self) {
            if let Err(e) = self.state.delete_all() {
                eprintln!("could not delete the keys of {}: {e}", self.cfg.key_prefix);
            }
        }
    }

    fn redis_store() -> Option<TestStore> {
        let url = testing::service_url("REDIS")?;
        let cfg = RedisStateConfig {
            url,
            key_prefix: testing::unique_name("kickstand_test"),
            ..RedisStateConfig::default()
        };
        match RedisState::open(&cfg) {
            Ok(state) => Some(TestStore { state, cfg }),
            Err(e) => testing::unreachable("REDIS", e),
        }
    }

    /// A raw connection to the test server, for what the store does not do itself.
    fn raw(store: &TestStore) -> Connection {
        ::redis::Client::open(store.cfg.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn fix(id: &str, ts: i64, lat: f64, lon: f64) -> Fix {
        Fix {
            vehicle_id: VehicleId::new(id).unwrap(),
            point: Point {
                ts,
                lat_e6: (lat * 1e6) as i32,
                lon_e6: (lon * 1e6) as i32,
                ..Point::default()
            },
        }
    }

    fn ids(views: &[VehicleView]) -> Vec<&str> {
        views.iter().map(|v| v.vehicle_id.as_str()).collect()
    }

    fn world() -> BBox {
        BBox::parse("-180,-90,180,90").unwrap()
    }

    // The bodies of MemoryState's tests, run on both stores.

    fn state_never_moves_back_in_time(s: &dyn StateStore) {
        s.apply(&[fix("a", 2_000, 1.0, 1.0)]).unwrap();
        s.apply(&[fix("a", 1_000, 2.0, 2.0)]).unwrap();
        let id = VehicleId::new("a").unwrap();
        assert_eq!(s.get(&id).unwrap().unwrap().ts, 2_000);
        assert_eq!(s.get(&id).unwrap().unwrap().lat_e6, 1_000_000);
        s.apply(&[fix("a", 3_000, 2.0, 2.0)]).unwrap();
        assert_eq!(s.get(&id).unwrap().unwrap().lat_e6, 2_000_000);
        assert_eq!(s.len().unwrap(), 1);
        // The same ts is not newer either, nor an older one in the same batch.
        s.apply(&[fix("a", 3_000, 3.0, 3.0), fix("a", 2_500, 4.0, 4.0)])
            .unwrap();
        assert_eq!(s.get(&id).unwrap().unwrap().lat_e6, 2_000_000);
        assert_eq!(s.get(&VehicleId::new("nobody").unwrap()).unwrap(), None);
    }

    fn near_is_sorted_and_exact_at_the_radius(s: &dyn StateStore) {
        let fixes: Vec<Fix> = (0..100)
            .map(|i| fix(&format!("v{i}"), 1, 37.5 + f64::from(i) * 0.001, 127.0))
            .collect();
        s.apply(&fixes).unwrap();
        let near = s
            .near(37.5, 127.0, 500.0, StateFilter::default(), 100)
            .unwrap();
        let found: Vec<_> = near.iter().map(|(v, _)| v.vehicle_id.as_str()).collect();
        assert_eq!(found, vec!["v0", "v1", "v2", "v3", "v4"]);
        assert!(near.windows(2).all(|w| w[0].1 <= w[1].1));
        // Exactly at the radius is in; a hair beyond is out.
        let v4 = near[4].0.point;
        let d4 = geo::distance_m(37.5, 127.0, v4.lat(), v4.lon());
        let at = s
            .near(37.5, 127.0, d4, StateFilter::default(), 100)
            .unwrap();
        assert_eq!(at.len(), 5);
        assert_eq!(at[4].1, d4);
        let below = s
            .near(37.5, 127.0, d4 * (1.0 - 1e-12), StateFilter::default(), 100)
            .unwrap();
        assert_eq!(below.len(), 4);
        // Moving a vehicle moves it in the index.
        s.apply(&[fix("v99", 2, 37.5001, 127.0)]).unwrap();
        let near = s
            .near(37.5, 127.0, 500.0, StateFilter::default(), 100)
            .unwrap();
        assert_eq!(near[1].0.vehicle_id.as_str(), "v99");
        assert_eq!(near.len(), 6);
        let two = s
            .near(37.5, 127.0, 500.0, StateFilter::default(), 2)
            .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].0.vehicle_id.as_str(), "v99");
        assert!(
            s.near(37.5, 127.0, 500.0, StateFilter::default(), 0)
                .unwrap()
                .is_empty()
        );
    }

    fn bbox_pages_with_a_cursor(s: &dyn StateStore) {
        let fixes: Vec<Fix> = (0..50)
            .map(|i| fix(&format!("v{i:02}"), 1, 10.0, 10.0 + f64::from(i) * 1e-4))
            .collect();
        s.apply(&fixes).unwrap();
        let bbox = BBox::parse("9,9,11,11").unwrap();
        let mut seen = Vec::new();
        let mut after: Option<VehicleId> = None;
        loop {
            let page = s
                .within(bbox, StateFilter::default(), after.as_ref(), 20)
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().vehicle_id.clone());
            seen.extend(page.into_iter().map(|v| v.vehicle_id));
        }
        assert_eq!(seen.len(), 50);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            s.within(world(), StateFilter::default(), None, 1000)
                .unwrap()
                .len(),
            50
        );
        // The box is exact: v10 ends at 10.001, v11 starts at 10.0011.
        let cut = BBox::parse("10,10,10.001,10").unwrap();
        let page = s.within(cut, StateFilter::default(), None, 1000).unwrap();
        assert_eq!(page.len(), 11);
        assert_eq!(page.last().unwrap().vehicle_id.as_str(), "v10");
    }

    fn changes_are_coalesced_and_cut_to_the_box(s: &dyn StateStore) {
        let world = world();
        let mut out = Vec::new();
        s.apply(&[fix("a", 1, 1.0, 1.0), fix("b", 1, 50.0, 50.0)])
            .unwrap();
        let c1 = s.changes_since(&world, 0, &mut out).unwrap();
        assert_eq!(out.len(), 2, "from 0: everything");
        out.clear();
        for t in 2..5 {
            s.apply(&[fix("a", t, 1.0, 1.0 + t as f64 * 1e-4)]).unwrap();
        }
        s.apply(&[fix("c", 1, -30.0, -30.0)]).unwrap();
        s.apply(&[fix("b", 0, 50.0, 50.0)]).unwrap(); // older: not a change
        let near_a = BBox::parse("0,0,2,2").unwrap();
        let c2 = s.changes_since(&near_a, c1, &mut out).unwrap();
        assert_eq!(
            ids(&out),
            vec!["a"],
            "once, however often it moved; c is outside the box"
        );
        assert_eq!(out[0].point.ts, 4);
        out.clear();
        assert_eq!(s.changes_since(&world, c2, &mut out).unwrap(), c2);
        assert!(out.is_empty());
    }

    fn filters_and_summary(s: &dyn StateStore) {
        let mut a = fix("a", 1_000, 1.0, 1.0);
        a.point.battery_dpct = Some(150);
        a.point.state = Some(VehicleState::Available);
        let mut b = fix("b", 5_000, 1.0, 1.0);
        b.point.battery_dpct = Some(1000);
        b.point.state = Some(VehicleState::OnTrip);
        s.apply(&[a, b, fix("c", 5_000, 1.0, 1.0)]).unwrap();
        let low = StateFilter {
            battery_below_dpct: Some(200),
            ..StateFilter::default()
        };
        let v = s.near(1.0, 1.0, 10.0, low, 10).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.vehicle_id.as_str(), "a");
        let on_trip = StateFilter {
            state: Some(VehicleState::OnTrip),
            ..StateFilter::default()
        };
        assert_eq!(
            ids(&s.within(world(), on_trip, None, 10).unwrap()),
            vec!["b"]
        );
        // The filter is applied before the limit.
        let v = s.near(1.0, 1.0, 10.0, on_trip, 1).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.vehicle_id.as_str(), "b");
        assert_eq!(ids(&s.within(world(), low, None, 1).unwrap()), vec!["a"]);
        let sum = s.summary(2_000).unwrap();
        assert_eq!(sum.vehicles, 3);
        assert_eq!(sum.by_state["available"], 1);
        assert_eq!(sum.by_state["on_trip"], 1);
        assert_eq!(sum.by_state["unknown"], 1);
        assert_eq!(sum.battery["10-20"], 1);
        assert_eq!(sum.battery["90-100"], 1);
        assert_eq!(sum.battery["unknown"], 1);
        assert_eq!(sum.stale, 1);
    }

    /// A vehicle beyond Redis' GEO latitudes is found like any other.
    fn the_poles_answer_too(s: &dyn StateStore) {
        s.apply(&[
            fix("north", 1, 89.0, 10.0),
            fix("edge", 1, 85.051_128, 10.0),
            fix("beyond", 1, 85.051_129, 10.0),
            fix("south", 1, -89.5, -170.0),
            fix("oslo", 1, 59.9, 10.7),
        ])
        .unwrap();
        assert_eq!(
            s.get(&VehicleId::new("north").unwrap())
                .unwrap()
                .unwrap()
                .lat_e6,
            89_000_000
        );
        assert_eq!(s.len().unwrap(), 5);
        let all = s
            .within(world(), StateFilter::default(), None, 100)
            .unwrap();
        assert_eq!(ids(&all), vec!["beyond", "edge", "north", "oslo", "south"]);
        let arctic = BBox::parse("0,80,20,90").unwrap();
        assert_eq!(
            ids(&s.within(arctic, StateFilter::default(), None, 100).unwrap()),
            vec!["beyond", "edge", "north"]
        );
        let polar_only = BBox::parse("0,88,20,90").unwrap();
        assert_eq!(
            ids(&s
                .within(polar_only, StateFilter::default(), None, 100)
                .unwrap()),
            vec!["north"]
        );
        // Centred on the polar vehicle, and reaching it from below the limit.
        let near = s
            .near(89.0, 10.0, 1_000.0, StateFilter::default(), 10)
            .unwrap();
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].0.vehicle_id.as_str(), "north");
        assert_eq!(near[0].1, 0.0);
        let near = s
            .near(85.0, 10.0, 10_000.0, StateFilter::default(), 10)
            .unwrap();
        let found: Vec<_> = near.iter().map(|(v, _)| v.vehicle_id.as_str()).collect();
        assert_eq!(found, vec!["edge", "beyond"]);
        assert_eq!(s.summary(0).unwrap().vehicles, 5);
        let mut out = Vec::new();
        s.changes_since(&arctic, 0, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        // Moving out of the polar set and back.
        s.apply(&[fix("north", 2, 80.0, 10.0)]).unwrap();
        assert_eq!(
            ids(&s
                .within(polar_only, StateFilter::default(), None, 100)
                .unwrap()),
            Vec::<&str>::new()
        );
        assert_eq!(
            ids(&s
                .within(
                    BBox::parse("9,79,11,81").unwrap(),
                    StateFilter::default(),
                    None,
                    9
                )
                .unwrap()),
            vec!["north"]
        );
        s.apply(&[fix("north", 3, 89.0, 10.0)]).unwrap();
        assert_eq!(
            ids(&s
                .within(polar_only, StateFilter::default(), None, 100)
                .unwrap()),
            vec!["north"]
        );
        assert!(
            s.within(
                BBox::parse("9,79,11,81").unwrap(),
                StateFilter::default(),
                None,
                9
            )
            .unwrap()
            .is_empty()
        );
    }

    /// Every vehicle is visited with its newest point, across more than one scan page.
    fn every_vehicle_is_visited(s: &dyn StateStore) {
        let fixes: Vec<Fix> = (0..2_500)
            .map(|i| fix(&format!("v{i}"), 1_000, 1.0, f64::from(i) * 1e-4))
            .collect();
        s.apply(&fixes).unwrap();
        s.apply(&[fix("v7", 2_000, 2.0, 2.0), fix("v8", 500, 3.0, 3.0)])
            .unwrap();
        let mut seen = std::collections::BTreeMap::new();
        s.for_each_vehicle(&mut |id, p| {
            seen.insert(id, p);
        })
        .unwrap();
        assert_eq!(seen.len(), 2_500);
        for f in &fixes {
            let want = if f.vehicle_id.as_str() == "v7" {
                fix("v7", 2_000, 2.0, 2.0).point
            } else {
                f.point
            };
            assert_eq!(seen[&f.vehicle_id], want, "{}", f.vehicle_id);
        }
    }

    macro_rules! on_both_stores {
        ($($name:ident),* $(,)?) => {
            mod memory {
                $(
                    #[test]
                    fn $name() {
                        super::$name(&super::MemoryState::default());
                    }
                )*
            }
            mod redis {
                $(
                    #[test]
                    fn $name() {
                        if let Some(s) = super::redis_store() {
                            super::$name(&*s);
                        }
                    }
                )*
            }
        };
    }

    on_both_stores!(
        state_never_moves_back_in_time,
        near_is_sorted_and_exact_at_the_radius,
        bbox_pages_with_a_cursor,
        changes_are_coalesced_and_cut_to_the_box,
        filters_and_summary,
        the_poles_answer_too,
        every_vehicle_is_visited,
    );

    /// A small deterministic generator (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn random_point(rng: &mut Rng, lat: f64, lon: f64, spread: f64) -> Point {
        let states = VehicleState::ALL;
        Point {
            ts: rng.below(1_000) as i64,
            lat_e6: ((lat + rng.range(-spread, spread)).clamp(-90.0, 90.0) * 1e6) as i32,
            lon_e6: ((lon + rng.range(-spread, spread)).clamp(-180.0, 180.0) * 1e6) as i32,
            battery_dpct: (rng.below(4) > 0).then(|| rng.below(1001) as u16),
            state: (rng.below(4) > 0).then(|| states[rng.below(6) as usize]),
            ..Point::default()
        }
    }

    /// Random fleets around a few places (the equator, Seoul, the antimeridian, the Arctic):
    /// the same fixes give the same answers from both stores.
    #[test]
    fn same_answers_as_memory_state() {
        let Some(r) = redis_store() else { return };
        let seed = std::env::var("KICKSTAND_TEST_SEED").map_or(7, |s| s.parse().unwrap());
        let m = MemoryState::default();
        let mut rng = Rng(seed);
        // Near the equator, in a city, at both ends of the longitudes, at the GEO limit and
        // at a pole.
        let places = [
            (0.0, 0.0),
            (37.55, 126.99),
            (10.0, 179.99),
            (-20.0, -179.99),
            (85.05, 20.0),
            (-89.98, 45.0),
            (-60.0, -70.0),
        ];
        let mut answered = 0;
        for round in 0..4 {
            let fixes: Vec<Fix> = (0..2_000)
                .map(|i| {
                    let (lat, lon) = places[i % places.len()];
                    Fix {
                        vehicle_id: VehicleId::new(&format!("v{}", rng.below(1_500))).unwrap(),
                        point: random_point(&mut rng, lat, lon, 0.05),
                    }
                })
                .collect();
            StateStore::apply(&m, &fixes).unwrap();
            r.apply(&fixes).unwrap();
            assert_eq!(r.len().unwrap(), m.len(), "round {round}");
            for _ in 0..40 {
                let (lat, lon) = places[rng.below(places.len() as u64) as usize];
                let (lat, lon) = (lat + rng.range(-0.03, 0.03), lon + rng.range(-0.03, 0.03));
                let (lat, lon) = (lat.clamp(-90.0, 90.0), lon.clamp(-180.0, 180.0));
                let radius = [50.0, 500.0, 3_000.0, 20_000.0, 3e6][rng.below(5) as usize];
                let filter = StateFilter {
                    state: (rng.below(2) == 0).then(|| VehicleState::ALL[rng.below(6) as usize]),
                    battery_below_dpct: (rng.below(2) == 0).then(|| rng.below(1001) as u16),
                };
                let limit = [1, 7, 50, 10_000][rng.below(4) as usize];
                let near = r.near(lat, lon, radius, filter, limit).unwrap();
                answered += usize::from(!near.is_empty());
                assert_eq!(
                    near,
                    m.near(lat, lon, radius, filter, limit),
                    "near {lat},{lon} {radius} m {filter:?} {limit}"
                );
                let half = [0.001, 0.02, 0.5, 400.0][rng.below(4) as usize];
                let bbox = BBox {
                    min_lat: (lat - half).max(-90.0),
                    max_lat: (lat + half).min(90.0),
                    min_lon: (lon - half).max(-180.0),
                    max_lon: (lon + half).min(180.0),
                };
                let after = VehicleId::new(&format!("v{}", rng.below(1_500))).unwrap();
                let after = (rng.below(2) == 0).then_some(&after);
                let within = r.within(bbox, filter, after, limit).unwrap();
                answered += usize::from(!within.is_empty());
                assert_eq!(
                    within,
                    m.within(bbox, filter, after, limit),
                    "within {bbox:?} {filter:?} {after:?} {limit}"
                );
            }
            for id in ["v0", "v1", "v77", "v1499", "v1500"] {
                let id = VehicleId::new(id).unwrap();
                assert_eq!(r.get(&id).unwrap(), m.get(&id));
            }
            assert_eq!(r.summary(500).unwrap(), m.summary(500));
        }
        assert!(
            answered > 100,
            "most queries find something: {answered} of 320"
        );
    }

    fn arb_point() -> impl Strategy<Value = Point> {
        let state = prop::option::of(prop::sample::select(VehicleState::ALL.to_vec()));
        (
            (any::<i64>(), any::<i32>(), any::<i32>()),
            (
                any::<Option<u16>>(),
                any::<Option<u16>>(),
                any::<Option<u16>>(),
                any::<Option<u32>>(),
            ),
            (
                any::<Option<i32>>(),
                any::<Option<u64>>(),
                state,
                any::<Option<bool>>(),
            ),
        )
            .prop_map(
                |((ts, lat_e6, lon_e6), (sp, hd, bat, acc), (alt, odo, state, locked))| Point {
                    ts,
                    lat_e6,
                    lon_e6,
                    speed_dkmh: sp,
                    heading_ddeg: hd,
                    battery_dpct: bat,
                    accuracy_dm: acc,
                    altitude_dm: alt,
                    odometer_m: odo,
                    state,
                    locked,
                    quality: Default::default(),
                },
            )
    }

    proptest! {
        #[test]
        fn points_round_trip_exactly(p in arb_point()) {
            let b = encode_point(&p);
            prop_assert_eq!(decode_point(&b), Some(p));
            // The first 8 bytes order like ts.
            let q = Point { ts: p.ts.wrapping_add(1), ..p };
            if q.ts > p.ts {
                let hi_lo = |b: &[u8]| (i32::from_be_bytes(b[0..4].try_into().unwrap()),
                                        u32::from_be_bytes(b[4..8].try_into().unwrap()));
                prop_assert!(hi_lo(&encode_point(&q)) > hi_lo(&b));
            }
        }
    }

    #[test]
    fn extremes_and_garbage() {
        let all_some = Point {
            ts: i64::MIN,
            lat_e6: i32::MIN,
            lon_e6: i32::MAX,
            speed_dkmh: Some(u16::MAX),
            heading_ddeg: Some(0),
            battery_dpct: Some(1000),
            accuracy_dm: Some(u32::MAX),
            altitude_dm: Some(i32::MIN),
            odometer_m: Some(u64::MAX),
            state: Some(VehicleState::Removed),
            locked: Some(false),
            quality: Default::default(),
        };
        for p in [
            Point::default(),
            all_some,
            Point {
                ts: i64::MAX,
                locked: Some(true),
                state: Some(VehicleState::Available),
                ..Point::default()
            },
        ] {
            assert_eq!(decode_point(&encode_point(&p)), Some(p));
        }
        let good = encode_point(&all_some);
        assert_eq!(decode_point(&good[..40]), None);
        assert_eq!(decode_point(&[good.as_slice(), &[0]].concat()), None);
        let mut bad = good;
        bad[8] = 9;
        assert_eq!(decode_point(&bad), None);
        let mut bad = good;
        bad[18] = 7;
        assert_eq!(decode_point(&bad), None);
        let mut bad = good;
        bad[17] = 0b1000_0000;
        assert_eq!(decode_point(&bad), None);
    }

    /// Timestamps beyond 2^53 (Lua's doubles) and of either sign still compare exactly.
    #[test]
    fn redis_compares_every_timestamp_exactly() {
        let Some(s) = redis_store() else { return };
        let id = VehicleId::new("t").unwrap();
        let steps = [
            i64::MIN,
            -(1 << 53) - 1,
            -1,
            0,
            1,
            (1 << 32) - 1,
            1 << 32,
            (1 << 53) + 1,
            (1 << 53) + 2,
            i64::MAX - 1,
            i64::MAX,
        ];
        for w in steps.windows(2) {
            s.apply(&[fix("t", w[1], 1.0, 1.0)]).unwrap();
            assert_eq!(s.get(&id).unwrap().unwrap().ts, w[1]);
            s.apply(&[fix("t", w[0], 2.0, 2.0)]).unwrap();
            assert_eq!(
                s.get(&id).unwrap().unwrap().ts,
                w[1],
                "{} after {}",
                w[0],
                w[1]
            );
        }
    }

    /// Two workers applying interleaved old and new fixes never move a vehicle back.
    #[test]
    fn redis_concurrent_writers_keep_the_newest() {
        let Some(s) = redis_store() else { return };
        const VEHICLES: i64 = 200;
        const ROUNDS: i64 = 60;
        std::thread::scope(|scope| {
            for worker in 0..2i64 {
                let s = &*s;
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        // Worker 0 sends even timestamps ascending, worker 1 odd ones
                        // descending; each batch also repeats an old fix.
                        let ts = if worker == 0 {
                            round * 2
                        } else {
                            (ROUNDS - round) * 2 - 1
                        };
                        let fixes: Vec<Fix> = (0..VEHICLES)
                            .flat_map(|v| {
                                let id = format!("v{v}");
                                [
                                    fix(&id, ts, 1.0 + ts as f64 * 1e-5, 1.0),
                                    fix(&id, ts / 3, 5.0, 5.0),
                                ]
                            })
                            .collect();
                        s.apply(&fixes).unwrap();
                    }
                });
            }
        });
        let newest = ROUNDS * 2 - 1; // worker 1's first batch
        for v in 0..VEHICLES {
            let p = s
                .get(&VehicleId::new(&format!("v{v}")).unwrap())
                .unwrap()
                .unwrap();
            assert_eq!(p.ts, newest);
            assert_eq!(p.lat_e6, ((1.0 + newest as f64 * 1e-5) * 1e6) as i32);
        }
        assert_eq!(s.len().unwrap(), VEHICLES as usize);
    }

    #[test]
    fn redis_primed_and_epoch_reset_after_the_keys_are_gone() {
        let Some(s) = redis_store() else { return };
        assert!(!s.is_primed().unwrap());
        s.apply(&[fix("a", 1, 1.0, 1.0), fix("b", 1, 2.0, 2.0)])
            .unwrap();
        s.mark_primed().unwrap();
        assert!(s.is_primed().unwrap());
        let mut out = Vec::new();
        let c1 = s.changes_since(&world(), 0, &mut out).unwrap();
        assert!(c1 >> SEQ_BITS > 0, "an epoch");
        assert_eq!(c1 & SEQ_MASK, 1);
        out.clear();
        assert_eq!(s.changes_since(&world(), c1, &mut out).unwrap(), c1);
        assert!(out.is_empty());
        // As after a flush, or a restart without persistence.
        s.delete_all().unwrap();
        assert!(!s.is_primed().unwrap());
        assert_eq!(s.len().unwrap(), 0);
        s.apply(&[fix("c", 1, 3.0, 3.0)]).unwrap();
        s.apply(&[fix("d", 1, 4.0, 4.0)]).unwrap();
        let c2 = s.changes_since(&world(), c1, &mut out).unwrap();
        assert_ne!(c2 >> SEQ_BITS, c1 >> SEQ_BITS, "a new epoch");
        assert_eq!(
            ids(&out),
            vec!["c", "d"],
            "an old cursor answers everything"
        );
        // A cursor whose counter is past the new one, but of the old epoch, too.
        out.clear();
        s.changes_since(&world(), (c1 & !SEQ_MASK) | 1, &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn redis_keeps_working_after_its_connections_are_killed() {
        let Some(s) = redis_store() else { return };
        s.apply(&[fix("a", 1, 1.0, 1.0)]).unwrap();
        // Several connections in the pool.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        s.len().unwrap();
                    }
                });
            }
        });
        // What a server restart does to the store's connections, without disturbing the
        // other tests' (`CLIENT KILL TYPE normal` would kill those too): kill each of them.
        let ids: Vec<u64> = s
            .pool
            .state
            .lock()
            .idle
            .iter_mut()
            .map(|con| ::redis::cmd("CLIENT").arg("ID").query(con).unwrap())
            .collect();
        assert!(!ids.is_empty());
        let mut admin = raw(&s);
        for id in &ids {
            let killed: u64 = ::redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query(&mut admin)
                .unwrap();
            assert_eq!(killed, 1);
        }
        assert_eq!(s.len().unwrap(), 1);
        s.apply(&[fix("b", 1, 1.0, 1.0)]).unwrap();
        assert_eq!(s.len().unwrap(), 2);
        // The script is gone too after a restart: EVALSHA falls back to loading it.
        ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query::<()>(&mut admin)
            .unwrap();
        s.apply(&[fix("c", 1, 1.0, 1.0)]).unwrap();
        assert_eq!(s.len().unwrap(), 3);
    }

    /// Threads wait for the one connection instead of opening more.
    #[test]
    fn redis_a_pool_of_one_serves_many_threads() {
        let Some(url) = testing::service_url("REDIS") else {
            return;
        };
        let cfg = RedisStateConfig {
            url,
            key_prefix: testing::unique_name("kickstand_test"),
            pool_size: 1,
            ..RedisStateConfig::default()
        };
        let s = match RedisState::open(&cfg) {
            Ok(state) => TestStore { state, cfg },
            Err(e) => return testing::unreachable("REDIS", e).unwrap_or(()),
        };
        std::thread::scope(|scope| {
            for t in 0..4 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..50 {
                        s.apply(&[fix(&format!("t{t}"), i, 1.0, 1.0)]).unwrap();
                        s.len().unwrap();
                    }
                });
            }
        });
        assert_eq!(s.len().unwrap(), 4);
        let st = s.pool.state.lock();
        assert_eq!((st.open, st.idle.len()), (1, 1));
    }

    #[test]
    fn an_unreachable_server_is_a_quick_clear_error() {
        let cfg = RedisStateConfig {
            url: "redis://kick:s3cret@127.0.0.1:1/0".into(),
            timeout_ms: 500,
            ..RedisStateConfig::default()
        };
        let t = Instant::now();
        let e = RedisState::open(&cfg)
            .err()
            .expect("nothing listens on port 1");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let msg = e.to_string();
        assert!(msg.contains("redis://kick:***@127.0.0.1:1/0"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        let bad_prefix = RedisStateConfig {
            key_prefix: "a}b".into(),
            ..RedisStateConfig::default()
        };
        assert!(RedisState::open(&bad_prefix).is_err());
        assert!(
            RedisState::open(&RedisStateConfig {
                url: "http://nope".into(),
                ..RedisStateConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:p@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://p@h/0?x=@"), "redis://***@h/0?x=@");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn redis_summary_counts_more_than_one_page() {
        let Some(s) = redis_store() else { return };
        let m = MemoryState::default();
        let mut rng = Rng(11);
        let fixes: Vec<Fix> = (0..5_000)
            .map(|i| Fix {
                vehicle_id: VehicleId::new(&format!("s{i}")).unwrap(),
                point: random_point(&mut rng, 48.85, 2.35, 0.1),
            })
            .collect();
        s.apply(&fixes).unwrap();
        m.apply(&fixes);
        assert_eq!(s.len().unwrap(), 5_000);
        let sum = s.summary(500).unwrap();
        assert_eq!(sum.vehicles, 5_000);
        assert_eq!(sum, m.summary(500));
    }

    /// The store inside a multi-threaded runtime: `block_in_place` lets it block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_works_on_a_tokio_worker() {
        let Some(s) = redis_store() else { return };
        s.apply(&[fix("a", 1, 1.0, 1.0)]).unwrap();
        assert_eq!(s.len().unwrap(), 1);
    }

    /// Not a test: `cargo test -p kickstand-engine state::redis::tests::apply_throughput --
    /// --ignored --nocapture` prints how fast `apply` writes 10,000 new vehicles.
    #[test]
    #[ignore = "a measurement"]
    fn apply_throughput() {
        let Some(s) = redis_store() else { return };
        let mut rng = Rng(3);
        for round in 0..3 {
            let fixes: Vec<Fix> = (0..10_000)
                .map(|i| Fix {
                    vehicle_id: VehicleId::new(&format!("veh-{round}-{i:05}")).unwrap(),
                    point: Point {
                        ts: 1_800_000_000_000 + i,
                        ..random_point(&mut rng, 37.55, 126.99, 0.1)
                    },
                })
                .collect();
            let t = Instant::now();
            s.apply(&fixes).unwrap();
            let e = t.elapsed();
            println!(
                "apply of 10,000 fixes for 10,000 new vehicles: {:.1} ms, {:.0} fixes/s",
                e.as_secs_f64() * 1e3,
                1e4 / e.as_secs_f64()
            );
        }
        let fixes: Vec<Fix> = (0..10_000)
            .map(|i| fix(&format!("veh-0-{i:05}"), 1_900_000_000_000, 37.5, 127.0))
            .collect();
        let t = Instant::now();
        s.apply(&fixes).unwrap();
        let e = t.elapsed();
        println!(
            "apply of 10,000 newer fixes for existing vehicles: {:.1} ms, {:.0} fixes/s",
            e.as_secs_f64() * 1e3,
            1e4 / e.as_secs_f64()
        );
    }
}
