//! Watching a vehicle: the quality filters a fix must pass, and the fleet events its fixes
//! cause, as one state machine per vehicle ([`VehicleWatch`]).
//!
//! The worker that owns a vehicle feeds it the vehicle's fixes in arrival order. A fix that is
//! not newer than the newest good one (a late fix, a duplicate) causes no event; a fix that
//! fails a quality filter is flagged ([`Quality`]), causes no event and does not move the
//! watch forward. Events carry deterministic ids ([`Event::make_id`]), so feeding the same
//! fixes again (a replay after a crash) makes the same events, which the event store keeps once.
//!
//! **Architecture Invariant:** no I/O and no clock; the zones containing a fix are looked up by
//! the caller ([`crate::zone::ZoneIndex`]) and `now` is a parameter.

use crate::event::{Event, EventKind};
use crate::fix::{Fix, Point, Quality, VehicleState};
use crate::geo::distance_m;
use crate::zone::ZoneKind;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The quality filters (`[quality]` in the config file); `fleets` override them for the
/// vehicles whose id starts with a prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// A fix that implies a speed above this from the vehicle's previous good fix is a GPS
    /// jump. 0 turns the filter off.
    pub max_speed_kmh: f64,
    /// Jumps shorter than this are never flagged (GPS noise between close fixes implies high
    /// speeds over short times).
    pub min_jump_m: f64,
    /// A fix whose reported accuracy is worse (larger) than this is flagged. 0 turns it off.
    pub max_accuracy_m: f64,
    /// Flag fixes at exactly 0°, 0° (a receiver without a position).
    pub reject_zero: bool,
    /// A fix older than this when it arrives is flagged as out of date. 0 turns it off.
    pub max_age_secs: u64,
    /// Overrides for the vehicles whose id starts with `prefix` (the longest prefix wins).
    pub fleets: Vec<FleetQuality>,
}

/// The quality filters of one fleet: unset fields keep the values of `[quality]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetQuality {
    pub prefix: String,
    pub max_speed_kmh: Option<f64>,
    pub min_jump_m: Option<f64>,
    pub max_accuracy_m: Option<f64>,
    pub reject_zero: Option<bool>,
    pub max_age_secs: Option<u64>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            max_speed_kmh: 150.0,
            min_jump_m: 200.0,
            max_accuracy_m: 100.0,
            reject_zero: true,
            max_age_secs: 7 * 86_400,
            fleets: Vec::new(),
        }
    }
}

/// The quality filters of one vehicle, resolved from [`QualityConfig`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QualityRules {
    pub max_speed_kmh: f64,
    pub min_jump_m: f64,
    pub max_accuracy_dm: Option<u32>,
    pub reject_zero: bool,
    pub max_age_ms: Option<i64>,
}

impl QualityConfig {
    /// The filters that apply to `vehicle_id`.
    pub fn rules_for(&self, vehicle_id: &str) -> QualityRules {
        let fleet = self
            .fleets
            .iter()
            .filter(|f| vehicle_id.starts_with(f.prefix.as_str()))
            .max_by_key(|f| f.prefix.len());
        let pick = |own: f64, f: Option<f64>| f.unwrap_or(own);
        let max_accuracy_m = pick(self.max_accuracy_m, fleet.and_then(|f| f.max_accuracy_m));
        let max_age = fleet
            .and_then(|f| f.max_age_secs)
            .unwrap_or(self.max_age_secs);
        QualityRules {
            max_speed_kmh: pick(self.max_speed_kmh, fleet.and_then(|f| f.max_speed_kmh)),
            min_jump_m: pick(self.min_jump_m, fleet.and_then(|f| f.min_jump_m)),
            max_accuracy_dm: (max_accuracy_m > 0.0).then_some((max_accuracy_m * 10.0) as u32),
            reject_zero: fleet
                .and_then(|f| f.reject_zero)
                .unwrap_or(self.reject_zero),
            max_age_ms: (max_age > 0).then_some(max_age.saturating_mul(1000) as i64),
        }
    }

    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("quality.{name} must be a number >= 0"))
            }
        };
        check("max_speed_kmh", self.max_speed_kmh)?;
        check("min_jump_m", self.min_jump_m)?;
        check("max_accuracy_m", self.max_accuracy_m)?;
        for f in &self.fleets {
            if f.prefix.is_empty() {
                return Err("quality.fleets: prefix must not be empty".into());
            }
            for (name, v) in [
                ("max_speed_kmh", f.max_speed_kmh),
                ("min_jump_m", f.min_jump_m),
                ("max_accuracy_m", f.max_accuracy_m),
            ] {
                if let Some(v) = v {
                    check(&format!("fleets.{name}"), v)?;
                }
            }
        }
        Ok(())
    }
}

/// The event rules (`[events]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventConfig {
    /// Compute events at all. Off, the workers only filter and store fixes.
    pub enabled: bool,
    /// `battery_low` when the battery falls below this percentage…
    pub battery_low_pct: f64,
    /// …and `battery_recovered` once it is back at or above this one (hysteresis: a battery
    /// wobbling around one threshold makes no flood of events).
    pub battery_recovered_pct: f64,
    /// `stale` after this many seconds without a fix (default 15 minutes).
    pub stale_after_secs: u64,
    /// A locked vehicle is moving when it reports at least this speed (km/h)…
    pub locked_moving_kmh: f64,
    /// …or is this far from where it was locked (metres).
    pub locked_moving_m: f64,
    /// A vehicle that is not on a trip and reports at most this speed (km/h) is parked.
    pub parked_max_kmh: f64,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            enabled: true,
            battery_low_pct: 15.0,
            battery_recovered_pct: 20.0,
            stale_after_secs: 900,
            locked_moving_kmh: 5.0,
            locked_moving_m: 50.0,
            parked_max_kmh: 1.0,
        }
    }
}

impl EventConfig {
    pub fn validate(&self) -> Result<(), String> {
        let pct = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
        if !pct(self.battery_low_pct) || !pct(self.battery_recovered_pct) {
            return Err("events.battery_low_pct and battery_recovered_pct must be 0..=100".into());
        }
        if self.battery_recovered_pct < self.battery_low_pct {
            return Err("events.battery_recovered_pct must be >= battery_low_pct".into());
        }
        if self.stale_after_secs == 0 {
            return Err("events.stale_after_secs must be at least 1".into());
        }
        for (name, v) in [
            ("locked_moving_kmh", self.locked_moving_kmh),
            ("locked_moving_m", self.locked_moving_m),
            ("parked_max_kmh", self.parked_max_kmh),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("events.{name} must be a number >= 0"));
            }
        }
        Ok(())
    }

    pub fn stale_after_ms(&self) -> i64 {
        (self.stale_after_secs.saturating_mul(1000)).min(i64::MAX as u64) as i64
    }
}

/// A geofence as the watch sees it: its id, what it means, its speed limit.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRef {
    pub id: Arc<str>,
    pub kind: ZoneKind,
    /// `slow_zone`: the limit in 0.1 km/h.
    pub limit_dkmh: Option<u16>,
    /// [`id_hash`] of `id`, computed once: the watch compares a fix's zones with the previous
    /// fix's by these, without reading each id's text (a cache miss per zone per fix).
    sig: u64,
}

impl ZoneRef {
    pub fn new(id: Arc<str>, kind: ZoneKind, limit_dkmh: Option<u16>) -> ZoneRef {
        ZoneRef {
            sig: id_hash(&id),
            id,
            kind,
            limit_dkmh,
        }
    }
}

/// The state machine of one vehicle.
#[derive(Clone, Debug, Default)]
pub struct VehicleWatch {
    /// The newest good fix.
    last: Option<Point>,
    /// The zones `last` lies in, sorted by id.
    inside: Vec<Arc<str>>,
    /// [`zone_sig`] of `inside`: kept in the watch itself so that the common case, a fix in
    /// the same zones as the previous one, is recognised without reading `inside` (another
    /// cache line per vehicle, cold at a fleet's scale).
    inside_sig: u64,
    /// Whether `last` lies in an operating area.
    in_operating_area: bool,
    /// The newest state reported (a fix without a state keeps it).
    state: Option<VehicleState>,
    battery_low: bool,
    stale: bool,
    /// No-parking zones a `parked_in_no_parking` was sent for, until the vehicle moves or
    /// leaves them.
    parked_reported: Vec<Arc<str>>,
    /// Slow zones a `speeding_in_slow_zone` was sent for, until the speed drops or the vehicle
    /// leaves them.
    speeding_reported: Vec<Arc<str>>,
    /// `moving_while_locked` was sent; reset when the vehicle reports being unlocked.
    locked_alarm: bool,
    /// Where the vehicle was when it was first seen locked in the current locked period.
    locked_at: Option<(i32, i32)>,
    /// A fix flagged as a jump, kept to see if the next agrees with it (then the vehicle
    /// really moved, say on a truck, and the watch follows).
    jump_candidate: Option<Point>,
}

/// What a fix was found to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A good fix, newer than the newest: it is the vehicle's latest state.
    Latest,
    /// A good fix, but not newer than the newest (late or duplicate): history only.
    Late,
    /// Failed a quality filter: history only, with the flags.
    Flagged(Quality),
}

impl VehicleWatch {
    /// A watch that starts from a known newest fix (restored after a restart), lying in
    /// `zones`, without events for it.
    pub fn seeded(last: Point, zones: &[&ZoneRef], events: &EventConfig) -> VehicleWatch {
        let mut w = VehicleWatch {
            last: Some(last),
            ..VehicleWatch::default()
        };
        w.inside = sorted_ids(zones);
        w.inside_sig = zone_sig(zones);
        w.in_operating_area = zones.iter().any(|z| z.kind == ZoneKind::OperatingArea);
        w.state = last.state;
        w.battery_low = last
            .battery_dpct
            .is_some_and(|b| f64::from(b) < events.battery_low_pct * 10.0);
        w.locked_at = (last.locked == Some(true)).then_some((last.lat_e6, last.lon_e6));
        // What the newest fix already reported, so the next fix does not report it again:
        // parked in a no-parking zone, speeding in a slow zone.
        let parked = last.state != Some(VehicleState::OnTrip)
            && last
                .speed_dkmh
                .is_none_or(|s| f64::from(s) <= events.parked_max_kmh * 10.0);
        for z in zones {
            match z.kind {
                ZoneKind::NoParking if parked => w.parked_reported.push(z.id.clone()),
                ZoneKind::SlowZone
                    if last
                        .speed_dkmh
                        .is_some_and(|s| z.limit_dkmh.is_some_and(|l| s > l)) =>
                {
                    w.speeding_reported.push(z.id.clone())
                }
                _ => {}
            }
        }
        w
    }

    /// The newest good fix.
    pub fn last(&self) -> Option<&Point> {
        self.last.as_ref()
    }

    /// Checks `fix` against the quality rules; a good fix newer than the newest moves the
    /// watch forward and appends its events to `out` (when `events` is given). `zones` are the
    /// zones containing the fix. `now_ms` is when the fix arrived.
    pub fn observe(
        &mut self,
        fix: &Fix,
        zones: &[&ZoneRef],
        quality: &QualityRules,
        events: Option<&EventConfig>,
        now_ms: i64,
        out: &mut Vec<Event>,
    ) -> Verdict {
        let p = &fix.point;
        let mut flags = static_quality(p, quality, now_ms);
        if let Some(last) = &self.last
            && p.ts <= last.ts
        {
            // Late or repeated: never an event, never a jump candidate.
            if flags.is_good() && is_jump(last, p, quality) {
                flags.insert(Quality::JUMP);
            }
            return if flags.is_good() {
                Verdict::Late
            } else {
                Verdict::Flagged(flags)
            };
        }
        if flags.is_good()
            && let Some(last) = &self.last
            && is_jump(last, p, quality)
        {
            // Two fixes in a row that agree with each other but not with the newest good
            // one: the vehicle was moved; follow it.
            let confirmed = self
                .jump_candidate
                .as_ref()
                .is_some_and(|c| c.ts < p.ts && !is_jump(c, p, quality));
            if !confirmed {
                self.jump_candidate = Some(*p);
                flags.insert(Quality::JUMP);
            }
        }
        if !flags.is_good() {
            return Verdict::Flagged(flags);
        }
        self.jump_candidate = None;
        if let Some(cfg) = events {
            self.events(fix, zones, cfg, out);
        } else {
            let sig = zone_sig(zones);
            if zones.len() != self.inside.len() || sig != self.inside_sig {
                self.inside = sorted_ids(zones);
                self.inside_sig = sig;
            }
            self.in_operating_area = zones.iter().any(|z| z.kind == ZoneKind::OperatingArea);
            self.state = p.state.or(self.state);
        }
        self.last = Some(*p);
        Verdict::Latest
    }

    /// The periodic sweep: appends `stale` once a vehicle has been silent for the configured
    /// time. The event's `ts` is when it became stale (the last fix plus the threshold), so a
    /// second sweep (another process, a restart) makes the same event id.
    pub fn sweep(
        &mut self,
        fix_id: &crate::VehicleId,
        cfg: &EventConfig,
        now_ms: i64,
        out: &mut Vec<Event>,
    ) {
        let Some(last) = &self.last else { return };
        let after = cfg.stale_after_ms();
        if self.stale || now_ms.saturating_sub(last.ts) < after {
            return;
        }
        self.stale = true;
        let mut e = Event::new(
            fix_id.clone(),
            EventKind::Stale,
            last.ts.saturating_add(after),
            last.lat_e6,
            last.lon_e6,
            None,
        );
        e.last_fix_ts = Some(last.ts);
        e.battery_dpct = last.battery_dpct;
        out.push(e);
    }

    fn events(&mut self, fix: &Fix, zones: &[&ZoneRef], cfg: &EventConfig, out: &mut Vec<Event>) {
        let p = &fix.point;
        let new = |kind, zone: Option<&str>| {
            let mut e = Event::new(fix.vehicle_id.clone(), kind, p.ts, p.lat_e6, p.lon_e6, zone);
            e.battery_dpct = p.battery_dpct;
            e.speed_dkmh = p.speed_dkmh;
            e
        };
        if self.stale {
            self.stale = false;
            let mut e = new(EventKind::ReportingAgain, None);
            e.last_fix_ts = self.last.map(|l| l.ts);
            out.push(e);
        }
        // State.
        if let Some(to) = p.state {
            let from = self.state.replace(to);
            if from != Some(to) {
                let mut e = new(EventKind::StateChanged, None);
                e.from_state = from;
                e.to_state = Some(to);
                out.push(e);
            }
        }
        // Zones, in id order: exits first, then entries.
        // Most fixes stay in the zones of the previous one: compared without allocating.
        let sig = zone_sig(zones);
        let now_inside = if zones.len() == self.inside.len() && sig == self.inside_sig {
            std::mem::take(&mut self.inside)
        } else {
            let now_inside = sorted_ids(zones);
            for id in &self.inside {
                if now_inside.binary_search(id).is_err() {
                    out.push(new(EventKind::GeofenceExited, Some(id)));
                }
            }
            for id in &now_inside {
                if self.inside.binary_search(id).is_err() {
                    out.push(new(EventKind::GeofenceEntered, Some(id)));
                }
            }
            now_inside
        };
        let in_operating_area = zones.iter().any(|z| z.kind == ZoneKind::OperatingArea);
        if self.in_operating_area && !in_operating_area {
            out.push(new(EventKind::LeftOperatingArea, None));
        }
        // Speed: the reported one, or the one implied since the previous fix.
        let speed_dkmh = p.speed_dkmh.or_else(|| {
            let last = self.last.as_ref()?;
            let dt = (p.ts - last.ts) as f64 / 3_600_000.0;
            (dt > 0.0).then(|| {
                let d = distance_m(last.lat(), last.lon(), p.lat(), p.lon()) / 1000.0;
                ((d / dt) * 10.0).min(f64::from(u16::MAX)) as u16
            })
        });
        // Parked in a no-parking zone: once per zone until the vehicle moves or leaves.
        let parked = p.state != Some(VehicleState::OnTrip)
            && speed_dkmh.is_none_or(|s| f64::from(s) <= cfg.parked_max_kmh * 10.0);
        if parked {
            for z in zones.iter().filter(|z| z.kind == ZoneKind::NoParking) {
                if !self.parked_reported.contains(&z.id) {
                    self.parked_reported.push(z.id.clone());
                    out.push(new(EventKind::ParkedInNoParking, Some(&z.id)));
                }
            }
            self.parked_reported
                .retain(|id| now_inside.binary_search(id).is_ok());
        } else {
            self.parked_reported.clear();
        }
        // Speeding in a slow zone: once per zone until the speed drops or the vehicle leaves.
        self.speeding_reported.retain(|id| {
            zones.iter().any(|z| {
                &z.id == id && speed_dkmh.is_some_and(|s| z.limit_dkmh.is_some_and(|l| s > l))
            })
        });
        if let Some(speed) = speed_dkmh {
            for z in zones.iter().filter(|z| z.kind == ZoneKind::SlowZone) {
                if let Some(limit) = z.limit_dkmh
                    && speed > limit
                    && !self.speeding_reported.contains(&z.id)
                {
                    self.speeding_reported.push(z.id.clone());
                    let mut e = new(EventKind::SpeedingInSlowZone, Some(&z.id));
                    e.speed_dkmh = Some(speed);
                    e.limit_dkmh = Some(limit);
                    out.push(e);
                }
            }
        }
        // Battery, with hysteresis.
        if let Some(b) = p.battery_dpct {
            let b = f64::from(b);
            if !self.battery_low && b < cfg.battery_low_pct * 10.0 {
                self.battery_low = true;
                out.push(new(EventKind::BatteryLow, None));
            } else if self.battery_low && b >= cfg.battery_recovered_pct * 10.0 {
                self.battery_low = false;
                out.push(new(EventKind::BatteryRecovered, None));
            }
        }
        // Moving while locked.
        if p.locked == Some(true) {
            let at = *self.locked_at.get_or_insert((p.lat_e6, p.lon_e6));
            let moved = distance_m(
                f64::from(at.0) / 1e6,
                f64::from(at.1) / 1e6,
                p.lat(),
                p.lon(),
            );
            let moving = speed_dkmh.is_some_and(|s| f64::from(s) >= cfg.locked_moving_kmh * 10.0)
                || moved >= cfg.locked_moving_m;
            if moving && !self.locked_alarm {
                self.locked_alarm = true;
                let mut e = new(EventKind::MovingWhileLocked, None);
                e.speed_dkmh = speed_dkmh;
                out.push(e);
            }
        } else if p.locked == Some(false) {
            self.locked_alarm = false;
            self.locked_at = None;
        }
        self.inside = now_inside;
        self.inside_sig = sig;
        self.in_operating_area = in_operating_area;
    }
}

/// An order-independent 64-bit signature of a set of zones, from their ids (so it survives a
/// reload of the geofences): the sum of a mixed FNV-1a hash of each id. Two different sets of
/// the same size share a signature with a probability of about 2⁻⁶⁴. A zone listed twice
/// changes the signature, which only costs the caller a rebuild of its sorted ids.
fn zone_sig(zones: &[&ZoneRef]) -> u64 {
    zones.iter().fold(0u64, |acc, z| acc.wrapping_add(z.sig))
}

/// A mixed FNV-1a hash of a zone id, the term of [`zone_sig`].
fn id_hash(id: &str) -> u64 {
    let mut h = crate::fnv1a64(id.as_bytes());
    // The finaliser of MurmurHash3, so that sums of related ids do not collide.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn sorted_ids(zones: &[&ZoneRef]) -> Vec<Arc<str>> {
    let mut ids: Vec<Arc<str>> = zones.iter().map(|z| z.id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The filters that need no history: zero coordinates, accuracy, age.
fn static_quality(p: &Point, rules: &QualityRules, now_ms: i64) -> Quality {
    let mut q = Quality::default();
    if rules.reject_zero && p.lat_e6 == 0 && p.lon_e6 == 0 {
        q.insert(Quality::ZERO);
    }
    if let (Some(max), Some(acc)) = (rules.max_accuracy_dm, p.accuracy_dm)
        && acc > max
    {
        q.insert(Quality::INACCURATE);
    }
    if let Some(max_age) = rules.max_age_ms
        && now_ms.saturating_sub(p.ts) > max_age
    {
        q.insert(Quality::OUT_OF_DATE);
    }
    q
}

/// Whether going from `a` to `b` implies a speed above the limit over a distance that counts.
fn is_jump(a: &Point, b: &Point, rules: &QualityRules) -> bool {
    if rules.max_speed_kmh <= 0.0 {
        return false;
    }
    let d = distance_m(a.lat(), a.lon(), b.lat(), b.lon());
    if d < rules.min_jump_m {
        return false;
    }
    let hours = (b.ts - a.ts).unsigned_abs() as f64 / 3_600_000.0;
    hours == 0.0 || d / 1000.0 / hours > rules.max_speed_kmh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VehicleId;

    const T0: i64 = 1_750_000_000_000;
    /// Berlin, roughly.
    const LAT: f64 = 52.52;
    const LON: f64 = 13.40;

    fn fix(ts: i64, lat: f64, lon: f64) -> Fix {
        Fix {
            vehicle_id: VehicleId::new("s-1").unwrap(),
            point: Point {
                ts,
                lat_e6: (lat * 1e6).round() as i32,
                lon_e6: (lon * 1e6).round() as i32,
                ..Point::default()
            },
        }
    }

    fn zone(id: &str, kind: ZoneKind, limit_kmh: Option<u16>) -> ZoneRef {
        ZoneRef::new(Arc::from(id), kind, limit_kmh.map(|v| v * 10))
    }

    /// A watch, the rules, and a way to feed it a fix with its zones and see what happened.
    struct Rig {
        w: VehicleWatch,
        q: QualityRules,
        e: EventConfig,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                w: VehicleWatch::default(),
                q: QualityConfig::default().rules_for("s-1"),
                e: EventConfig::default(),
            }
        }

        fn feed(
            &mut self,
            f: &Fix,
            zones: &[&ZoneRef],
        ) -> (Verdict, Vec<(EventKind, Option<String>)>) {
            let mut out = Vec::new();
            let v = self
                .w
                .observe(f, zones, &self.q, Some(&self.e), f.point.ts, &mut out);
            (v, out.into_iter().map(|e| (e.kind, e.zone_id)).collect())
        }

        fn kinds(&mut self, f: &Fix, zones: &[&ZoneRef]) -> Vec<EventKind> {
            self.feed(f, zones).1.into_iter().map(|(k, _)| k).collect()
        }
    }

    fn with_state(mut f: Fix, s: VehicleState) -> Fix {
        f.point.state = Some(s);
        f
    }

    #[test]
    fn state_changed_once_per_change_never_for_late_or_repeated_fixes() {
        let mut r = Rig::new();
        let a = with_state(fix(T0, LAT, LON), VehicleState::Available);
        assert_eq!(r.kinds(&a, &[]), [EventKind::StateChanged]); // a new vehicle
        assert_eq!(r.kinds(&a, &[]), []); // the same fix again
        let b = with_state(fix(T0 + 10_000, LAT, LON), VehicleState::Available);
        assert_eq!(r.kinds(&b, &[]), []);
        let c = with_state(fix(T0 + 20_000, LAT, LON), VehicleState::OnTrip);
        let mut out = Vec::new();
        r.w.observe(&c, &[], &r.q, Some(&r.e), c.point.ts, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].from_state, Some(VehicleState::Available));
        assert_eq!(out[0].to_state, Some(VehicleState::OnTrip));
        // A late fix with another state changes nothing.
        let late = with_state(fix(T0 + 15_000, LAT, LON), VehicleState::Reserved);
        assert_eq!(r.feed(&late, &[]), (Verdict::Late, vec![]));
        // A fix without a state is no change.
        assert_eq!(r.kinds(&fix(T0 + 30_000, LAT, LON), &[]), []);
        let d = with_state(fix(T0 + 40_000, LAT, LON), VehicleState::OnTrip);
        assert_eq!(r.kinds(&d, &[]), []);
    }

    #[test]
    fn geofence_entered_and_exited_in_id_order() {
        let mut r = Rig::new();
        let z1 = zone("a-zone", ZoneKind::SlowZone, Some(100));
        let z2 = zone("b-zone", ZoneKind::NoParking, None);
        r.feed(&fix(T0, LAT, LON), &[]);
        let (_, ev) = r.feed(&fix(T0 + 1000, LAT, LON), &[&z2, &z1]);
        assert_eq!(
            ev[..2],
            [
                (EventKind::GeofenceEntered, Some("a-zone".into())),
                (EventKind::GeofenceEntered, Some("b-zone".into()))
            ]
        );
        // Still inside both: nothing; a duplicate and a late fix outside: nothing.
        assert!(
            !r.kinds(&fix(T0 + 2000, LAT, LON), &[&z1, &z2])
                .contains(&EventKind::GeofenceEntered)
        );
        assert_eq!(r.feed(&fix(T0 + 2000, LAT, LON), &[]).1, vec![]);
        assert_eq!(r.feed(&fix(T0 + 1500, LAT, LON), &[]).1, vec![]);
        let (_, ev) = r.feed(&fix(T0 + 3000, LAT, LON), &[&z1]);
        assert_eq!(ev, [(EventKind::GeofenceExited, Some("b-zone".into()))]);
    }

    #[test]
    fn left_operating_area_only_when_leaving_the_last_one() {
        let mut r = Rig::new();
        let a = zone("area-a", ZoneKind::OperatingArea, None);
        let b = zone("area-b", ZoneKind::OperatingArea, None);
        r.feed(&fix(T0, LAT, LON), &[&a]);
        assert!(
            !r.kinds(&fix(T0 + 1000, LAT, LON), &[&b])
                .contains(&EventKind::LeftOperatingArea)
        );
        assert!(
            r.kinds(&fix(T0 + 2000, LAT, LON), &[])
                .contains(&EventKind::LeftOperatingArea)
        );
        // Outside already: no second event; a late fix inside changes nothing.
        assert!(
            !r.kinds(&fix(T0 + 3000, LAT, LON), &[])
                .contains(&EventKind::LeftOperatingArea)
        );
        assert_eq!(r.feed(&fix(T0 + 500, LAT, LON), &[&a]).1, vec![]);
    }

    #[test]
    fn parked_in_no_parking_once_until_it_moves() {
        let mut r = Rig::new();
        let np = zone("np", ZoneKind::NoParking, None);
        let on_trip = |ts| with_state(fix(ts, LAT, LON), VehicleState::OnTrip);
        let parked = |ts| with_state(fix(ts, LAT, LON), VehicleState::Available);
        assert!(
            !r.kinds(&on_trip(T0), &[&np])
                .contains(&EventKind::ParkedInNoParking)
        );
        assert!(
            r.kinds(&parked(T0 + 1000), &[&np])
                .contains(&EventKind::ParkedInNoParking)
        );
        assert!(
            !r.kinds(&parked(T0 + 2000), &[&np])
                .contains(&EventKind::ParkedInNoParking)
        );
        assert_eq!(r.feed(&parked(T0 + 2000), &[&np]).1, vec![]);
        // A ride and a new stop in the zone: a new event.
        r.feed(&on_trip(T0 + 3000), &[&np]);
        assert!(
            r.kinds(&parked(T0 + 4000), &[&np])
                .contains(&EventKind::ParkedInNoParking)
        );
    }

    #[test]
    fn a_watch_seeded_after_a_restart_does_not_repeat_what_the_newest_fix_reported() {
        let e = EventConfig::default();
        let q = QualityConfig::default().rules_for("s-1");
        let np = zone("np", ZoneKind::NoParking, None);
        let slow = zone("slow", ZoneKind::SlowZone, Some(10));
        let mut last = with_state(fix(T0, LAT, LON), VehicleState::Available);
        last.point.battery_dpct = Some(100);
        let mut w = VehicleWatch::seeded(last.point, &[&np], &e);
        let mut out = Vec::new();
        let next = with_state(fix(T0 + 1000, LAT, LON), VehicleState::Available);
        w.observe(&next, &[&np], &q, Some(&e), T0, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let mut fast = fix(T0, LAT, LON);
        fast.point.speed_dkmh = Some(200);
        let mut w = VehicleWatch::seeded(fast.point, &[&slow], &e);
        let mut again = fix(T0 + 1000, LAT, LON);
        again.point.speed_dkmh = Some(210);
        w.observe(&again, &[&slow], &q, Some(&e), T0, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A battery already low is not reported again either.
        let mut low = fix(T0, LAT, LON);
        low.point.battery_dpct = Some(50);
        let mut w = VehicleWatch::seeded(low.point, &[], &e);
        let mut still = fix(T0 + 1000, LAT, LON);
        still.point.battery_dpct = Some(40);
        w.observe(&still, &[], &q, Some(&e), T0, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn speeding_in_slow_zone_once_until_it_slows_down() {
        let mut r = Rig::new();
        let slow = zone("slow", ZoneKind::SlowZone, Some(10));
        let at = |ts, kmh: u16| {
            let mut f = fix(ts, LAT, LON);
            f.point.speed_dkmh = Some(kmh * 10);
            f
        };
        assert!(
            !r.kinds(&at(T0, 9), &[&slow])
                .contains(&EventKind::SpeedingInSlowZone)
        );
        let mut out = Vec::new();
        r.w.observe(&at(T0 + 1000, 18), &[&slow], &r.q, Some(&r.e), T0, &mut out);
        let e = out
            .iter()
            .find(|e| e.kind == EventKind::SpeedingInSlowZone)
            .unwrap();
        assert_eq!((e.speed_dkmh, e.limit_dkmh), (Some(180), Some(100)));
        assert!(
            !r.kinds(&at(T0 + 2000, 20), &[&slow])
                .contains(&EventKind::SpeedingInSlowZone)
        );
        // Late and repeated fixes do nothing; slowing down re-arms.
        assert_eq!(r.feed(&at(T0 + 1500, 30), &[&slow]).1, vec![]);
        r.feed(&at(T0 + 3000, 8), &[&slow]);
        assert!(
            r.kinds(&at(T0 + 4000, 15), &[&slow])
                .contains(&EventKind::SpeedingInSlowZone)
        );
        // Fast outside the zone: nothing.
        assert!(
            !r.kinds(&at(T0 + 5000, 40), &[])
                .contains(&EventKind::SpeedingInSlowZone)
        );
    }

    #[test]
    fn battery_low_and_recovered_with_hysteresis() {
        let mut r = Rig::new();
        let at = |ts, pct: u16| {
            let mut f = fix(ts, LAT, LON);
            f.point.battery_dpct = Some(pct * 10);
            f
        };
        let mut seen = Vec::new();
        for (i, pct) in [50, 16, 14, 16, 14, 19, 14, 20, 19, 14]
            .into_iter()
            .enumerate()
        {
            let ts = T0 + i as i64 * 1000;
            seen.extend(r.kinds(&at(ts, pct), &[]));
        }
        assert_eq!(
            seen,
            [
                EventKind::BatteryLow,
                EventKind::BatteryRecovered,
                EventKind::BatteryLow
            ]
        );
        // A late low fix and a repeated one make nothing.
        assert_eq!(r.feed(&at(T0 + 500, 1), &[]).1, vec![]);
        assert_eq!(r.feed(&at(T0 + 9000, 14), &[]).1, vec![]);
    }

    #[test]
    fn moving_while_locked_by_speed_or_distance_once_per_lock() {
        let mut r = Rig::new();
        let locked = |ts, lat: f64| {
            let mut f = fix(ts, lat, LON);
            f.point.locked = Some(true);
            f
        };
        assert_eq!(r.kinds(&locked(T0, LAT), &[]), []);
        assert_eq!(r.kinds(&locked(T0 + 60_000, LAT + 0.0001), &[]), []); // 11 m: GPS noise
        // 111 m from where it was locked, slowly (no speed reported): theft.
        assert!(
            r.kinds(&locked(T0 + 120_000, LAT + 0.001), &[])
                .contains(&EventKind::MovingWhileLocked)
        );
        assert!(
            !r.kinds(&locked(T0 + 180_000, LAT + 0.002), &[])
                .contains(&EventKind::MovingWhileLocked)
        );
        assert_eq!(r.feed(&locked(T0 + 90_000, LAT + 0.005), &[]).1, vec![]); // late
        // Unlocked, then locked again and pushed fast.
        let mut open = fix(T0 + 240_000, LAT + 0.002, LON);
        open.point.locked = Some(false);
        r.feed(&open, &[]);
        let mut fast = locked(T0 + 300_000, LAT + 0.002);
        fast.point.speed_dkmh = Some(80);
        assert!(r.kinds(&fast, &[]).contains(&EventKind::MovingWhileLocked));
    }

    #[test]
    fn stale_from_the_sweep_and_reporting_again() {
        let mut r = Rig::new();
        let id = VehicleId::new("s-1").unwrap();
        r.feed(&fix(T0, LAT, LON), &[]);
        let after = r.e.stale_after_ms();
        let mut out = Vec::new();
        r.w.sweep(&id, &r.e, T0 + after - 1, &mut out);
        assert!(out.is_empty());
        r.w.sweep(&id, &r.e, T0 + after, &mut out);
        r.w.sweep(&id, &r.e, T0 + after * 3, &mut out);
        assert_eq!(out.len(), 1, "one stale event per silence");
        assert_eq!(
            (out[0].kind, out[0].ts, out[0].last_fix_ts),
            (EventKind::Stale, T0 + after, Some(T0))
        );
        // A second sweeper (a restart) makes the same id.
        let mut again = VehicleWatch::seeded(*r.w.last().unwrap(), &[], &r.e);
        let mut out2 = Vec::new();
        again.sweep(&id, &r.e, T0 + after * 2, &mut out2);
        assert_eq!(out2[0].id, out[0].id);
        // A late fix does not end the silence; a new one does.
        assert_eq!(r.feed(&fix(T0 - 1000, LAT, LON), &[]).1, vec![]);
        assert_eq!(
            r.kinds(&fix(T0 + after * 4, LAT, LON), &[]),
            [EventKind::ReportingAgain]
        );
        assert_eq!(r.kinds(&fix(T0 + after * 4 + 1000, LAT, LON), &[]), []);
    }

    #[test]
    fn quality_filters_flag_and_cause_no_events() {
        let mut r = Rig::new();
        let z = zone("z", ZoneKind::NoRide, None);
        r.feed(&fix(T0, LAT, LON), &[]);
        // 11 km in 10 s: a jump. Flagged, no event, the watch stays where it was.
        let far = fix(T0 + 10_000, LAT + 0.1, LON);
        assert_eq!(
            r.feed(&far, &[&z]),
            (Verdict::Flagged(Quality::JUMP), vec![])
        );
        assert_eq!(r.w.last().unwrap().ts, T0);
        // Back near the old position: good again.
        assert_eq!(
            r.feed(&fix(T0 + 20_000, LAT, LON + 0.0001), &[]).0,
            Verdict::Latest
        );
        let mut bad = fix(T0 + 30_000, LAT, LON);
        bad.point.accuracy_dm = Some(5000);
        assert_eq!(r.feed(&bad, &[&z]).0, Verdict::Flagged(Quality::INACCURATE));
        let zero = fix(T0 + 40_000, 0.0, 0.0);
        let (v, ev) = r.feed(&zero, &[]);
        assert!(matches!(v, Verdict::Flagged(q) if q.has(Quality::ZERO)));
        assert!(ev.is_empty());
        let mut out = Vec::new();
        let old = fix(T0 - 8 * 86_400_000, LAT, LON);
        let v = r.w.observe(&old, &[], &r.q, Some(&r.e), T0, &mut out);
        assert_eq!(v, Verdict::Flagged(Quality::OUT_OF_DATE));
        // A late fix far away is a jump too.
        assert_eq!(
            r.feed(&fix(T0 + 15_000, LAT + 0.5, LON), &[]).0,
            Verdict::Flagged(Quality::JUMP)
        );
    }

    #[test]
    fn a_vehicle_really_moved_is_followed_after_two_agreeing_fixes() {
        let mut r = Rig::new();
        r.feed(&fix(T0, LAT, LON), &[]);
        let moved = |ts| fix(ts, LAT + 0.2, LON);
        assert_eq!(
            r.feed(&moved(T0 + 60_000), &[]).0,
            Verdict::Flagged(Quality::JUMP)
        );
        assert_eq!(r.feed(&moved(T0 + 70_000), &[]).0, Verdict::Latest);
        assert_eq!(r.w.last().unwrap().ts, T0 + 70_000);
    }

    #[test]
    fn replaying_fixes_makes_the_same_event_ids() {
        let fixes: Vec<Fix> = (0..20)
            .map(|i| {
                let mut f = with_state(
                    fix(T0 + i * 1000, LAT + i as f64 * 0.0001, LON),
                    if i % 5 == 0 {
                        VehicleState::OnTrip
                    } else {
                        VehicleState::Available
                    },
                );
                f.point.battery_dpct = Some((300 - i * 10) as u16);
                f
            })
            .collect();
        let run = |start: usize| {
            let mut r = Rig::new();
            let mut out = Vec::new();
            for f in &fixes[..start] {
                r.w.observe(f, &[], &r.q, Some(&r.e), f.point.ts, &mut Vec::new());
            }
            // Seeded from the newest fix, as after a restart, then the rest again.
            let mut w = VehicleWatch::seeded(fixes[start - 1].point, &[], &r.e);
            for f in &fixes[start - 1..] {
                w.observe(f, &[], &r.q, Some(&r.e), f.point.ts, &mut out);
            }
            out.into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        let mut r = Rig::new();
        let mut all = Vec::new();
        for f in &fixes {
            r.w.observe(f, &[], &r.q, Some(&r.e), f.point.ts, &mut all);
        }
        let all: Vec<String> = all.into_iter().map(|e| e.id).collect();
        let tail = run(10);
        assert!(!tail.is_empty());
        assert!(
            tail.iter().all(|id| all.contains(id)),
            "a replay makes no new id"
        );
    }

    #[test]
    fn fleet_overrides_pick_the_longest_prefix() {
        let cfg: QualityConfig = serde_json::from_value(serde_json::json!({
            "max_speed_kmh": 100.0,
            "fleets": [
                {"prefix": "bike-", "max_speed_kmh": 60.0},
                {"prefix": "bike-e", "max_accuracy_m": 20.0}
            ]
        }))
        .unwrap();
        assert_eq!(cfg.rules_for("s-1").max_speed_kmh, 100.0);
        assert_eq!(cfg.rules_for("bike-1").max_speed_kmh, 60.0);
        let e = cfg.rules_for("bike-e1");
        assert_eq!((e.max_speed_kmh, e.max_accuracy_dm), (100.0, Some(200)));
        assert!(cfg.validate().is_ok());
        let bad = QualityConfig {
            max_speed_kmh: -1.0,
            ..QualityConfig::default()
        };
        assert!(bad.validate().is_err());
        assert!(
            EventConfig {
                battery_low_pct: 30.0,
                ..EventConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
