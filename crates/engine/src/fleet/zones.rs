//! The geofences compiled for the workers: a [`ZoneSet`] (the zones and their index) that is
//! swapped whole when a geofence changes, so a worker tests each group of fixes against one
//! consistent set without taking a lock per fix.

use super::{FleetResult, FleetStore, Geofence};
use kickstand_domain::Point;
use kickstand_domain::watch::ZoneRef;
use kickstand_domain::zone::{StableBox, ZoneIndex, ZoneKind};
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Numbers the sets built in this process, so a [`ZoneMemo`] never outlives its set.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Zones a [`ZoneMemo`] holds at most; a point in more is looked up every time.
const MEMO_SLOTS: usize = 6;

/// One vehicle's last zone lookup, answered again without the index while the vehicle stays
/// in the lookup's stable box ([`ZoneIndex::containing_stable`]) and the set is the same: most
/// fixes of a fleet are a few metres from the previous one, and the index's lookup is a chain
/// of cache misses.
#[derive(Clone, Copy, Debug)]
pub struct ZoneMemo {
    /// The [`ZoneSet`]'s generation; 0 for none.
    generation: u64,
    stable: StableBox,
    len: u8,
    slots: [u32; MEMO_SLOTS],
}

impl Default for ZoneMemo {
    fn default() -> ZoneMemo {
        ZoneMemo {
            generation: 0,
            stable: StableBox {
                lat: [1, 0],
                lon: [1, 0],
            },
            len: 0,
            slots: [0; MEMO_SLOTS],
        }
    }
}

/// The geofences of one version, indexed.
pub struct ZoneSet {
    /// The store's geofence version this set was built from.
    pub version: u64,
    /// Unique in the process (see [`ZoneMemo`]).
    generation: u64,
    /// By slot (the index's handle).
    pub zones: Vec<ZoneRef>,
    index: ZoneIndex,
}

impl ZoneSet {
    pub fn build(version: u64, geofences: &[Geofence]) -> ZoneSet {
        let zones = geofences
            .iter()
            .map(|g| {
                ZoneRef::new(
                    Arc::from(g.id.as_str()),
                    g.kind,
                    match g.kind {
                        ZoneKind::SlowZone => g
                            .max_speed_kmh
                            .map(|v| (v * 10.0).round().clamp(0.0, f64::from(u16::MAX)) as u16),
                        _ => None,
                    },
                )
            })
            .collect();
        let index = ZoneIndex::build(
            geofences
                .iter()
                .enumerate()
                .map(|(slot, g)| (slot as u32, &g.area)),
        );
        ZoneSet {
            version,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            zones,
            index,
        }
    }

    pub fn empty() -> ZoneSet {
        ZoneSet::build(0, &[])
    }

    /// The zones containing `p`; `slots` is scratch space.
    pub fn containing<'a>(&'a self, p: &Point, slots: &mut Vec<u32>, out: &mut Vec<&'a ZoneRef>) {
        out.clear();
        if self.zones.is_empty() {
            return;
        }
        slots.clear();
        self.index.containing(p.lat_e6, p.lon_e6, slots);
        out.extend(slots.iter().map(|s| &self.zones[*s as usize]));
    }

    /// [`ZoneSet::containing`] for a vehicle whose last lookup is in `memo`; `true` when the
    /// memo answered.
    pub fn containing_memo<'a>(
        &'a self,
        p: &Point,
        memo: &mut ZoneMemo,
        slots: &mut Vec<u32>,
        out: &mut Vec<&'a ZoneRef>,
    ) -> bool {
        out.clear();
        if self.zones.is_empty() {
            return false;
        }
        let (lat, lon) = (p.lat_e6, p.lon_e6);
        if memo.generation == self.generation && memo.stable.contains(lat, lon) {
            out.extend(
                memo.slots[..usize::from(memo.len)]
                    .iter()
                    .map(|s| &self.zones[*s as usize]),
            );
            return true;
        }
        slots.clear();
        let stable = self.index.containing_stable(lat, lon, slots);
        *memo = match stable {
            Some(stable) if slots.len() <= MEMO_SLOTS => {
                let mut kept = [0; MEMO_SLOTS];
                kept[..slots.len()].copy_from_slice(slots);
                ZoneMemo {
                    generation: self.generation,
                    stable,
                    len: slots.len() as u8,
                    slots: kept,
                }
            }
            _ => ZoneMemo::default(),
        };
        out.extend(slots.iter().map(|s| &self.zones[*s as usize]));
        false
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

/// The current [`ZoneSet`], rebuilt from the store when its geofence version changes.
pub struct Zones {
    store: Arc<dyn FleetStore>,
    current: RwLock<Arc<ZoneSet>>,
    /// When the version was last compared, so `refresh` asks the store at most once a second.
    checked: Mutex<Instant>,
}

impl Zones {
    /// Loads the geofences from the store.
    pub fn load(store: Arc<dyn FleetStore>) -> FleetResult<Zones> {
        let zones = Zones {
            store,
            current: RwLock::new(Arc::new(ZoneSet::empty())),
            checked: Mutex::new(Instant::now()),
        };
        zones.reload()?;
        Ok(zones)
    }

    /// The set in force.
    pub fn current(&self) -> Arc<ZoneSet> {
        self.current.read().clone()
    }

    /// Rebuilds the set from the store now (after a change made by this process).
    pub fn reload(&self) -> FleetResult<()> {
        let version = self.store.geofences_version()?;
        let geofences = self.store.geofences()?;
        let started = Instant::now();
        let set = ZoneSet::build(version, &geofences);
        tracing::debug!(
            message = "geofences indexed",
            zones = set.len(),
            version,
            elapsed_ms = started.elapsed().as_millis() as u64
        );
        metrics::gauge!(crate::metrics::GEOFENCES).set(set.len() as f64);
        *self.current.write() = Arc::new(set);
        Ok(())
    }

    /// Rebuilds the set when another process changed the geofences; asks the store at most
    /// once a second. A caller that comes while another one asks waits for the answer, so no
    /// caller goes on with a set older than the last check (a worker that takes a shard over
    /// after a long idle time would otherwise place its vehicles in the set of its start).
    pub fn refresh(&self) {
        let mut checked = self.checked.lock();
        if checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        *checked = Instant::now();
        match self.store.geofences_version() {
            Ok(v) if v != self.current().version => {
                if let Err(error) = self.reload() {
                    tracing::warn!(message = "reloading geofences failed", %error);
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(message = "reading the geofence version failed", %error),
        }
    }
}
