//! The fleet watch of one worker: the quality filters and the event state machines of the
//! vehicles its shard owns ([`kickstand_domain::watch::VehicleWatch`]), fed in order.
//!
//! A vehicle's watch is created the first time the worker sees it, seeded from the latest
//! state (so a restart or a shard moving to another worker neither repeats nor invents
//! events), and forgotten when a group fails to store, so the retry computes the same events
//! again (their ids are deterministic and the store keeps them once).

use crate::FastMap;
use crate::fleet::FleetStore;
use crate::fleet::zones::{ZoneMemo, Zones};
use crate::state::StateStore;
use kickstand_domain::event::{Event, EventKind};
use kickstand_domain::watch::{EventConfig, QualityConfig, QualityRules, VehicleWatch, Verdict};
use kickstand_domain::{Fix, Quality, VehicleId};
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a worker sweeps its vehicles for `stale`, at most (more often when the threshold
/// is short, so the event is at most a quarter of it late).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What every worker of an engine shares.
pub struct FleetWatch {
    pub quality: QualityConfig,
    pub events: EventConfig,
    pub zones: Arc<Zones>,
    pub store: Arc<dyn FleetStore>,
}

struct Watched {
    watch: VehicleWatch,
    rules: QualityRules,
    zones: ZoneMemo,
}

/// One worker's watches.
pub struct ShardWatcher {
    shared: Arc<FleetWatch>,
    state: Arc<dyn StateStore>,
    watches: FastMap<VehicleId, Watched>,
    slots: Vec<u32>,
    /// Events computed but not stored yet (the store failed during a sweep); retried first.
    pending: Vec<Event>,
    last_sweep: Instant,
}

impl ShardWatcher {
    pub fn new(shared: Arc<FleetWatch>, state: Arc<dyn StateStore>) -> ShardWatcher {
        ShardWatcher {
            shared,
            state,
            watches: FastMap::default(),
            slots: Vec::new(),
            pending: Vec::new(),
            last_sweep: Instant::now(),
        }
    }

    /// The store the events go to.
    pub fn store(&self) -> &Arc<dyn FleetStore> {
        &self.shared.store
    }

    /// Starts watching vehicles known before this worker started (from the latest state), so
    /// a vehicle that never reports again still becomes `stale`.
    pub fn seed(&mut self, fixes: impl IntoIterator<Item = Fix>) {
        let zones = self.shared.zones.current();
        let mut inside = Vec::new();
        for fix in fixes {
            if !fix.point.quality.is_good() {
                continue;
            }
            zones.containing(&fix.point, &mut self.slots, &mut inside);
            let rules = self.shared.quality.rules_for(fix.vehicle_id.as_str());
            let watch = VehicleWatch::seeded(fix.point, &inside, &self.shared.events);
            self.watches.insert(
                fix.vehicle_id,
                Watched {
                    watch,
                    rules,
                    zones: ZoneMemo::default(),
                },
            );
        }
    }

    /// Checks every fix (in order), flags the bad ones in place, and appends the events of
    /// the good ones to `events`. Returns how many fixes were flagged.
    pub fn process(&mut self, fixes: &mut [Fix], now_ms: i64, events: &mut Vec<Event>) -> usize {
        let ShardWatcher {
            shared,
            state,
            watches,
            slots,
            ..
        } = self;
        shared.zones.refresh();
        let zones = shared.zones.current();
        let cfg = shared.events.enabled.then_some(&shared.events);
        let mut inside = Vec::new();
        let mut flagged = 0;
        for fix in fixes.iter_mut() {
            // One lookup for a vehicle already watched (the common case).
            let w = match watches.entry(fix.vehicle_id.clone()) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    let seeded = match state.get(&fix.vehicle_id) {
                        Ok(Some(last)) => {
                            zones.containing(&last, slots, &mut inside);
                            VehicleWatch::seeded(last, &inside, &shared.events)
                        }
                        Ok(None) => VehicleWatch::default(),
                        Err(error) => {
                            // Without the newest fix the watch would take this one as the
                            // first ever; flag nothing and make no event rather than wrong ones.
                            tracing::debug!(message = "latest state unavailable for the watch", %error);
                            continue;
                        }
                    };
                    let rules = shared.quality.rules_for(fix.vehicle_id.as_str());
                    v.insert(Watched {
                        watch: seeded,
                        rules,
                        zones: ZoneMemo::default(),
                    })
                }
            };
            if cfg.is_some() {
                zones.containing_memo(&fix.point, &mut w.zones, slots, &mut inside);
            } else {
                inside.clear();
            }
            match w.watch.observe(fix, &inside, &w.rules, cfg, now_ms, events) {
                Verdict::Flagged(q) => {
                    fix.point.quality = q;
                    flagged += 1;
                }
                Verdict::Latest | Verdict::Late => {}
            }
        }
        flagged
    }

    /// Forgets the vehicles of `fixes`, so they are seeded afresh from the latest state: after
    /// a group failed to store, the retry must compute the same events again.
    pub fn forget(&mut self, fixes: &[Fix]) {
        for f in fixes {
            self.watches.remove(&f.vehicle_id);
        }
    }

    /// Every few seconds: `stale` events for the silent vehicles, stored with any events still
    /// pending from a failed sweep.
    pub fn tick(&mut self, now_ms: i64) {
        let every = SWEEP_EVERY
            .min(Duration::from_millis(
                self.shared.events.stale_after_ms() as u64 / 4,
            ))
            .max(Duration::from_millis(100));
        if self.last_sweep.elapsed() < every {
            return;
        }
        self.last_sweep = Instant::now();
        if self.shared.events.enabled {
            for (id, w) in self.watches.iter_mut() {
                w.watch
                    .sweep(id, &self.shared.events, now_ms, &mut self.pending);
            }
        }
        if self.pending.is_empty() {
            return;
        }
        match self.shared.store.append_events(&self.pending, now_ms) {
            Ok(_) => {
                count_events(&self.pending);
                self.pending.clear();
            }
            Err(error) => {
                tracing::warn!(message = "storing stale events failed; retrying", %error);
                // Bounded: the sweep makes each stale event once per vehicle and silence.
                if self.pending.len() > 1_000_000 {
                    self.pending.clear();
                }
            }
        }
    }

    pub fn vehicles(&self) -> usize {
        self.watches.len()
    }
}

/// Counts the flags of a fix that was stored (not of a duplicate).
pub fn count_flags(q: Quality) {
    for (flag, name) in Quality::NAMED {
        if q.has(flag) {
            metrics::counter!(crate::metrics::FIXES_FLAGGED_TOTAL, "reason" => name).increment(1);
        }
    }
}

/// Counts stored events by kind: one registry lookup per kind present, not one per event.
pub fn count_events(events: &[Event]) {
    let mut counts = [0u64; EventKind::ALL.len()];
    for e in events {
        if let Some(i) = EventKind::ALL.iter().position(|k| *k == e.kind) {
            counts[i] += 1;
        }
    }
    for (kind, n) in EventKind::ALL.iter().zip(counts) {
        if n > 0 {
            metrics::counter!(crate::metrics::EVENTS_TOTAL, "kind" => kind.as_str()).increment(n);
        }
    }
}
