//! The latest-state port: the newest fix of every vehicle and a spatial index over them, for
//! the queries operators and rider apps ask most (`GET /vehicles/{id}`, `near`, `bbox`, the fleet
//! summary).
//!
//! [`MemoryState`] is the embedded default: sharded maps behind read-write locks (no global
//! lock: a worker's write blocks only the readers of one shard of sixteen), a grid of
//! ~550 m cells for the spatial queries. It holds nothing on disk: on start it is rebuilt from
//! the history store's latest fixes, which is what makes a restart lose no vehicle.
//!
//! **Contract:** the latest state never moves back in time: `apply` ignores a fix that is not
//! newer than the one held.

use crate::FastMap;
use kickstand_domain::geo::{self, BBox};
use kickstand_domain::{Fix, Point, VehicleId, VehicleState};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod redis;

/// Which latest-state store to run, and its settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub kind: StateKind,
    /// Used when `kind` is `redis`.
    pub redis: RedisStateConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// [`MemoryState`], rebuilt from history at every start.
    #[default]
    Memory,
    /// [`redis::RedisState`], shared by every process of a deployment.
    Redis,
}

/// Settings of [`redis::RedisState`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisStateConfig {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Every key of the store lives under `{<key_prefix>}:` (one hash tag, so one cluster
    /// slot). Two deployments sharing a server need different prefixes.
    pub key_prefix: String,
    /// Connections kept open at most.
    pub pool_size: usize,
    /// Connect, read and write timeout of every round trip, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RedisStateConfig {
    fn default() -> Self {
        RedisStateConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "kickstand".into(),
            pool_size: 8,
            timeout_ms: 2000,
        }
    }
}

/// A vehicle and its newest fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VehicleView {
    pub vehicle_id: VehicleId,
    pub point: Point,
}

/// Filters shared by the list queries.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateFilter {
    pub state: Option<VehicleState>,
    /// Battery strictly below this, in 0.1 % (vehicles that report no battery never match).
    pub battery_below_dpct: Option<u16>,
}

impl StateFilter {
    fn matches(&self, p: &Point) -> bool {
        if let Some(s) = self.state
            && p.state != Some(s)
        {
            return false;
        }
        if let Some(b) = self.battery_below_dpct
            && p.battery_dpct.is_none_or(|v| v >= b)
        {
            return false;
        }
        true
    }
}

/// Counts over the whole fleet.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FleetSummary {
    pub vehicles: u64,
    /// Vehicles by the state of their newest fix; `unknown` when it carried none.
    pub by_state: BTreeMap<String, u64>,
    /// Vehicles by battery in steps of 10 %: `0-10`, `10-20`, … `90-100` (100 % counts in the
    /// last), and `unknown`.
    pub battery: BTreeMap<String, u64>,
    /// Vehicles whose newest fix is older than the stale threshold.
    pub stale: u64,
}

/// The state store could not answer (a shared store that is down or unreachable). The caller
/// may retry; HTTP answers 503 with `Retry-After`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the latest-state store is unavailable: {0}")]
pub struct StateError(pub String);

pub type StateResult<T> = Result<T, StateError>;

/// The battery steps of [`FleetSummary::battery`].
const BATTERY_STEPS: [&str; 10] = [
    "0-10", "10-20", "20-30", "30-40", "40-50", "50-60", "60-70", "70-80", "80-90", "90-100",
];

impl FleetSummary {
    /// Every state and battery step present, at zero (the answer lists them all).
    pub(crate) fn zeroed() -> FleetSummary {
        let mut s = FleetSummary::default();
        for state in VehicleState::ALL {
            s.by_state.insert(state.as_str().to_owned(), 0);
        }
        s.by_state.insert("unknown".into(), 0);
        for step in BATTERY_STEPS.iter().chain(&["unknown"]) {
            s.battery.insert((*step).to_owned(), 0);
        }
        s
    }

    /// Counts one vehicle's newest fix.
    pub(crate) fn count(&mut self, p: &Point, stale_before_ms: i64) {
        self.vehicles += 1;
        let state = p.state.map_or("unknown", |st| st.as_str());
        *self
            .by_state
            .get_mut(state)
            .expect("every state is present") += 1;
        let step = match p.battery_dpct {
            Some(b) => BATTERY_STEPS[usize::from(b / 100).min(9)],
            None => "unknown",
        };
        *self.battery.get_mut(step).expect("every step is present") += 1;
        if p.ts < stale_before_ms {
            self.stale += 1;
        }
    }
}

/// The latest-state port. Implementations that talk to a server (Redis) block the calling
/// thread for one round trip; callers on an async runtime must allow that (the Redis store uses
/// `block_in_place`).
pub trait StateStore: Send + Sync + 'static {
    /// Moves each vehicle's state forward to the newest of `fixes` (older ones are ignored).
    fn apply(&self, fixes: &[Fix]) -> StateResult<()>;
    fn get(&self, id: &VehicleId) -> StateResult<Option<Point>>;
    /// Vehicles within `radius_m` of a point, nearest first, with their distance in metres.
    fn near(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        filter: StateFilter,
        limit: usize,
    ) -> StateResult<Vec<(VehicleView, f64)>>;
    /// Vehicles inside `bbox`, in vehicle id order, starting after the id `after` (the cursor).
    fn within(
        &self,
        bbox: BBox,
        filter: StateFilter,
        after: Option<&VehicleId>,
        limit: usize,
    ) -> StateResult<Vec<VehicleView>>;
    /// Counts by state and battery; `stale_before_ms` is the time before which a vehicle's
    /// newest fix makes it stale.
    fn summary(&self, stale_before_ms: i64) -> StateResult<FleetSummary>;
    /// Vehicles in `bbox` whose state changed after change number `since` (0: all of them),
    /// appended to `out`. Returns the change number to pass next time. This is what the live
    /// stream polls: each vehicle appears once however often it changed (coalescing). A store
    /// that was emptied and rebuilt since `since` answers as for 0.
    fn changes_since(
        &self,
        bbox: &BBox,
        since: u64,
        out: &mut Vec<VehicleView>,
    ) -> StateResult<u64>;
    fn len(&self) -> StateResult<usize>;
    /// Calls `visit` with every vehicle and its newest point, in no particular order. A
    /// vehicle may be visited more than once (a shared store's scan may return an entry twice,
    /// and starts over after a lost connection); each visit carries a point the vehicle held
    /// during the scan. A worker that takes a shard over seeds its fleet watch from this.
    fn for_each_vehicle(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> StateResult<()>;
    fn is_empty(&self) -> StateResult<bool> {
        Ok(self.len()? == 0)
    }
    /// Whether the store holds the fleet: false for a shared store that is new or was emptied
    /// (a Redis restart or flush) and must be rebuilt from history. Always true in memory, which
    /// the engine fills at start.
    fn is_primed(&self) -> StateResult<bool> {
        Ok(true)
    }
    /// Records that the store was rebuilt from history.
    fn mark_primed(&self) -> StateResult<()> {
        Ok(())
    }
}

impl StateStore for MemoryState {
    fn apply(&self, fixes: &[Fix]) -> StateResult<()> {
        MemoryState::apply(self, fixes);
        Ok(())
    }
    fn get(&self, id: &VehicleId) -> StateResult<Option<Point>> {
        Ok(MemoryState::get(self, id))
    }
    fn near(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        filter: StateFilter,
        limit: usize,
    ) -> StateResult<Vec<(VehicleView, f64)>> {
        Ok(MemoryState::near(self, lat, lon, radius_m, filter, limit))
    }
    fn within(
        &self,
        bbox: BBox,
        filter: StateFilter,
        after: Option<&VehicleId>,
        limit: usize,
    ) -> StateResult<Vec<VehicleView>> {
        Ok(MemoryState::within(self, bbox, filter, after, limit))
    }
    fn summary(&self, stale_before_ms: i64) -> StateResult<FleetSummary> {
        Ok(MemoryState::summary(self, stale_before_ms))
    }
    fn changes_since(
        &self,
        bbox: &BBox,
        since: u64,
        out: &mut Vec<VehicleView>,
    ) -> StateResult<u64> {
        Ok(MemoryState::changes_since(self, bbox, since, out))
    }
    fn len(&self) -> StateResult<usize> {
        Ok(MemoryState::len(self))
    }
    fn for_each_vehicle(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> StateResult<()> {
        MemoryState::for_each_vehicle(self, visit);
        Ok(())
    }
}

const SHARDS: usize = 16;

struct Slot {
    id: VehicleId,
    point: Point,
    cell: u64,
    /// The change number of the last update (see `MemoryState::changes`).
    changed: u64,
}

#[derive(Default)]
struct Shard {
    index: FastMap<VehicleId, u32>,
    slots: Vec<Slot>,
    grid: FastMap<u64, Vec<u32>>,
}

impl Shard {
    fn apply(&mut self, fix: &Fix, change: u64) {
        let p = fix.point;
        let cell = geo::cell_of(p.lat_e6, p.lon_e6);
        match self.index.get(&fix.vehicle_id) {
            Some(&i) => {
                let slot = &mut self.slots[i as usize];
                if p.ts <= slot.point.ts {
                    return;
                }
                slot.point = p;
                slot.changed = change;
                if slot.cell != cell {
                    let old = std::mem::replace(&mut slot.cell, cell);
                    if let Some(members) = self.grid.get_mut(&old) {
                        if let Some(pos) = members.iter().position(|&m| m == i) {
                            members.swap_remove(pos);
                        }
                        if members.is_empty() {
                            self.grid.remove(&old);
                        }
                    }
                    self.grid.entry(cell).or_default().push(i);
                }
            }
            None => {
                let i = self.slots.len() as u32;
                self.slots.push(Slot {
                    id: fix.vehicle_id.clone(),
                    point: p,
                    cell,
                    changed: change,
                });
                self.index.insert(fix.vehicle_id.clone(), i);
                self.grid.entry(cell).or_default().push(i);
            }
        }
    }
}

/// The embedded latest-state store.
pub struct MemoryState {
    shards: Vec<RwLock<Shard>>,
    /// Change numbers: every `apply` takes the next one and stamps the slots it changes.
    changes: std::sync::atomic::AtomicU64,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            changes: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

fn shard_of(id: &VehicleId) -> usize {
    // The high bits: the workers shard on the low ones, so this spreads one worker's
    // vehicles over every state shard.
    (id.stable_hash() >> 60) as usize % SHARDS
}

/// Calls `f` with every slot index in the cells covering `bbox`, or in the whole shard when
/// that is cheaper than visiting the cells.
fn for_cells(shard: &Shard, bbox: &BBox, mut f: impl FnMut(&Slot)) {
    let (y0, x0) = geo::cell_xy(bbox.min_lat, bbox.min_lon);
    let (y1, x1) = geo::cell_xy(bbox.max_lat, bbox.max_lon);
    let cells = ((y1 - y0 + 1) as u128) * ((x1 - x0 + 1) as u128);
    if cells > shard.grid.len() as u128 {
        shard.slots.iter().for_each(f);
        return;
    }
    for y in y0..=y1 {
        for x in x0..=x1 {
            if let Some(members) = shard.grid.get(&geo::cell_key(y, x)) {
                for &i in members {
                    f(&shard.slots[i as usize]);
                }
            }
        }
    }
}

/// The queries, infallible in memory; [`StateStore`] wraps them.
impl MemoryState {
    pub fn apply(&self, fixes: &[Fix]) {
        use std::sync::atomic::Ordering;
        let change = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
        if fixes.len() < 32 {
            for fix in fixes {
                self.shards[shard_of(&fix.vehicle_id)]
                    .write()
                    .apply(fix, change);
            }
            return;
        }
        // Take each shard's lock once per batch.
        let owners: Vec<u8> = fixes
            .iter()
            .map(|f| shard_of(&f.vehicle_id) as u8)
            .collect();
        for (s, shard) in self.shards.iter().enumerate() {
            let mut guard = None;
            for (fix, &o) in fixes.iter().zip(&owners) {
                if usize::from(o) == s {
                    guard
                        .get_or_insert_with(|| shard.write())
                        .apply(fix, change);
                }
            }
        }
    }

    pub fn get(&self, id: &VehicleId) -> Option<Point> {
        let shard = self.shards[shard_of(id)].read();
        shard.index.get(id).map(|&i| shard.slots[i as usize].point)
    }

    pub fn near(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        filter: StateFilter,
        limit: usize,
    ) -> Vec<(VehicleView, f64)> {
        let bbox = BBox::around(lat, lon, radius_m);
        // The box test in stored integers first; the exact distance only for what is inside.
        let lat_lo = (bbox.min_lat * 1e6).floor() as i32;
        let lat_hi = (bbox.max_lat * 1e6).ceil() as i32;
        let lon_lo = (bbox.min_lon * 1e6).floor() as i32;
        let lon_hi = (bbox.max_lon * 1e6).ceil() as i32;
        let m_per_deg = geo::EARTH_RADIUS_M.to_radians();
        let coslat = lat.to_radians().cos();
        let (inner2, outer2) = ((radius_m * 0.999).powi(2), (radius_m * 1.001).powi(2));
        let mut found: Vec<(f64, VehicleView)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read();
            for_cells(&shard, &bbox, |slot| {
                let p = &slot.point;
                if p.lat_e6 < lat_lo || p.lat_e6 > lat_hi || p.lon_e6 < lon_lo || p.lon_e6 > lon_hi
                {
                    return;
                }
                if !filter.matches(p) {
                    return;
                }
                // A flat-earth distance decides all but the points within 0.1 % of the radius,
                // which get the exact great-circle distance.
                let dy = (p.lat() - lat) * m_per_deg;
                let dx = (p.lon() - lon) * m_per_deg * coslat;
                let approx2 = dx * dx + dy * dy;
                if approx2 > outer2 {
                    return;
                }
                let d = if approx2 < inner2 {
                    approx2.sqrt()
                } else {
                    geo::distance_m(lat, lon, p.lat(), p.lon())
                };
                if d <= radius_m {
                    found.push((
                        d,
                        VehicleView {
                            vehicle_id: slot.id.clone(),
                            point: *p,
                        },
                    ));
                }
            });
        }
        let by_distance = |a: &(f64, VehicleView), b: &(f64, VehicleView)| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.vehicle_id.cmp(&b.1.vehicle_id))
        };
        if found.len() > limit && limit > 0 {
            found.select_nth_unstable_by(limit - 1, by_distance);
        }
        found.truncate(limit);
        found.sort_unstable_by(by_distance);
        found.into_iter().map(|(d, v)| (v, d)).collect()
    }

    pub fn within(
        &self,
        bbox: BBox,
        filter: StateFilter,
        after: Option<&VehicleId>,
        limit: usize,
    ) -> Vec<VehicleView> {
        let mut found = Vec::new();
        for shard in &self.shards {
            let shard = shard.read();
            for_cells(&shard, &bbox, |slot| {
                let p = &slot.point;
                if bbox.contains(p.lat(), p.lon())
                    && filter.matches(p)
                    && after.is_none_or(|a| slot.id > *a)
                {
                    found.push(VehicleView {
                        vehicle_id: slot.id.clone(),
                        point: *p,
                    });
                }
            });
        }
        found.sort_unstable_by(|a, b| a.vehicle_id.cmp(&b.vehicle_id));
        found.truncate(limit);
        found
    }

    pub fn summary(&self, stale_before_ms: i64) -> FleetSummary {
        let mut s = FleetSummary::zeroed();
        for shard in &self.shards {
            let shard = shard.read();
            for slot in &shard.slots {
                s.count(&slot.point, stale_before_ms);
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` with every vehicle and its newest point. Each shard is copied under its
    /// read lock and visited after it, so `visit` never holds up a writer.
    pub fn for_each_vehicle(&self, visit: &mut dyn FnMut(VehicleId, Point)) {
        let mut copy = Vec::new();
        for shard in &self.shards {
            copy.clear();
            copy.extend(shard.read().slots.iter().map(|s| (s.id.clone(), s.point)));
            for (id, point) in copy.drain(..) {
                visit(id, point);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().slots.len()).sum()
    }

    pub fn changes_since(&self, bbox: &BBox, since: u64, out: &mut Vec<VehicleView>) -> u64 {
        // Read the counter first: an update racing with the scan is either seen now or has a
        // larger number and is seen next time; never lost.
        let now = self.changes.load(std::sync::atomic::Ordering::Relaxed);
        for shard in &self.shards {
            let shard = shard.read();
            for_cells(&shard, bbox, |slot| {
                let p = &slot.point;
                if slot.changed > since && bbox.contains(p.lat(), p.lon()) {
                    out.push(VehicleView {
                        vehicle_id: slot.id.clone(),
                        point: *p,
                    });
                }
            });
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn state_never_moves_back_in_time() {
        let s = MemoryState::default();
        s.apply(&[fix("a", 2_000, 1.0, 1.0)]);
        s.apply(&[fix("a", 1_000, 2.0, 2.0)]);
        let id = VehicleId::new("a").unwrap();
        assert_eq!(s.get(&id).unwrap().ts, 2_000);
        s.apply(&[fix("a", 3_000, 2.0, 2.0)]);
        assert_eq!(s.get(&id).unwrap().lat_e6, 2_000_000);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn near_is_sorted_and_exact_at_the_radius() {
        let s = MemoryState::default();
        let fixes: Vec<Fix> = (0..100)
            .map(|i| fix(&format!("v{i}"), 1, 37.5 + f64::from(i) * 0.001, 127.0))
            .collect();
        s.apply(&fixes);
        // Each step is ~111 m: v0..v4 are within 500 m.
        let near = s.near(37.5, 127.0, 500.0, StateFilter::default(), 100);
        let ids: Vec<_> = near
            .iter()
            .map(|(v, _)| v.vehicle_id.as_str().to_owned())
            .collect();
        assert_eq!(ids, vec!["v0", "v1", "v2", "v3", "v4"]);
        assert!(near.windows(2).all(|w| w[0].1 <= w[1].1));
        // Moving a vehicle moves it in the grid.
        s.apply(&[fix("v99", 2, 37.5001, 127.0)]);
        let near = s.near(37.5, 127.0, 500.0, StateFilter::default(), 100);
        assert_eq!(near[1].0.vehicle_id.as_str(), "v99");
    }

    #[test]
    fn bbox_pages_with_a_cursor() {
        let s = MemoryState::default();
        let fixes: Vec<Fix> = (0..50)
            .map(|i| fix(&format!("v{i:02}"), 1, 10.0, 10.0 + f64::from(i) * 1e-4))
            .collect();
        s.apply(&fixes);
        let bbox = BBox::parse("9,9,11,11").unwrap();
        let mut seen = Vec::new();
        let mut after: Option<VehicleId> = None;
        loop {
            let page = s.within(bbox, StateFilter::default(), after.as_ref(), 20);
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().vehicle_id.clone());
            seen.extend(page.into_iter().map(|v| v.vehicle_id));
        }
        assert_eq!(seen.len(), 50);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let world = BBox::parse("-180,-90,180,90").unwrap();
        assert_eq!(
            s.within(world, StateFilter::default(), None, 1000).len(),
            50
        );
    }

    #[test]
    fn changes_are_coalesced_and_cut_to_the_box() {
        let s = MemoryState::default();
        let world = BBox::parse("-180,-90,180,90").unwrap();
        let mut out = Vec::new();
        s.apply(&[fix("a", 1, 1.0, 1.0), fix("b", 1, 50.0, 50.0)]);
        let c1 = s.changes_since(&world, 0, &mut out);
        assert_eq!(out.len(), 2, "from 0: everything");
        out.clear();
        // a moves three times, b not at all, c is new far away.
        for t in 2..5 {
            s.apply(&[fix("a", t, 1.0, 1.0 + t as f64 * 1e-4)]);
        }
        s.apply(&[fix("c", 1, -30.0, -30.0)]);
        s.apply(&[fix("b", 0, 50.0, 50.0)]); // older: not a change
        let near_a = BBox::parse("0,0,2,2").unwrap();
        let c2 = s.changes_since(&near_a, c1, &mut out);
        let ids: Vec<_> = out
            .iter()
            .map(|v| v.vehicle_id.as_str().to_owned())
            .collect();
        assert_eq!(
            ids,
            vec!["a"],
            "once, however often it moved; c is outside the box"
        );
        assert_eq!(out[0].point.ts, 4);
        out.clear();
        assert_eq!(s.changes_since(&world, c2, &mut out), c2);
        assert!(out.is_empty());
    }

    #[test]
    fn filters_and_summary() {
        let s = MemoryState::default();
        let mut a = fix("a", 1_000, 1.0, 1.0);
        a.point.battery_dpct = Some(150);
        a.point.state = Some(VehicleState::Available);
        let mut b = fix("b", 5_000, 1.0, 1.0);
        b.point.battery_dpct = Some(1000);
        b.point.state = Some(VehicleState::OnTrip);
        s.apply(&[a, b, fix("c", 5_000, 1.0, 1.0)]);
        let low = StateFilter {
            battery_below_dpct: Some(200),
            ..StateFilter::default()
        };
        let v = s.near(1.0, 1.0, 10.0, low, 10);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.vehicle_id.as_str(), "a");
        let sum = s.summary(2_000);
        assert_eq!(sum.vehicles, 3);
        assert_eq!(sum.by_state["available"], 1);
        assert_eq!(sum.by_state["on_trip"], 1);
        assert_eq!(sum.by_state["unknown"], 1);
        assert_eq!(sum.battery["10-20"], 1);
        assert_eq!(sum.battery["90-100"], 1);
        assert_eq!(sum.battery["unknown"], 1);
        assert_eq!(sum.stale, 1);
    }
}
