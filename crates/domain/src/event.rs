//! Fleet events: what a vehicle's fixes mean for an operator (a state change, entering a zone,
//! a low battery, going silent), computed per vehicle, in order, by the worker that owns it.
//!
//! An [`Event`] is a plain value with a *deterministic* id: the same fix seen twice (a device
//! retry, a replayed broker message, a worker that died before acking) yields the same event
//! id, so storing events is idempotent and every event has exactly one effect.

use crate::fix::{VehicleId, VehicleState};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kinds of fleet events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The fix's `state` differs from the vehicle's previous one.
    StateChanged,
    /// The vehicle is now inside a geofence it was outside of.
    GeofenceEntered,
    /// The vehicle is now outside a geofence it was inside of.
    GeofenceExited,
    /// The vehicle left every operating area (it was inside one, and is in none now).
    LeftOperatingArea,
    /// The vehicle stopped (parked: not on a trip and not moving) inside a no-parking zone.
    ParkedInNoParking,
    /// The vehicle went faster than a slow zone allows, inside it.
    SpeedingInSlowZone,
    /// The battery fell below the low threshold.
    BatteryLow,
    /// The battery rose back above the recovery threshold (hysteresis).
    BatteryRecovered,
    /// The vehicle moved while it reported being locked: possible theft.
    MovingWhileLocked,
    /// No fix for the configured number of minutes (found by a periodic sweep).
    Stale,
    /// A fix arrived from a vehicle that was stale.
    ReportingAgain,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::StateChanged,
        EventKind::GeofenceEntered,
        EventKind::GeofenceExited,
        EventKind::LeftOperatingArea,
        EventKind::ParkedInNoParking,
        EventKind::SpeedingInSlowZone,
        EventKind::BatteryLow,
        EventKind::BatteryRecovered,
        EventKind::MovingWhileLocked,
        EventKind::Stale,
        EventKind::ReportingAgain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::StateChanged => "state_changed",
            EventKind::GeofenceEntered => "geofence_entered",
            EventKind::GeofenceExited => "geofence_exited",
            EventKind::LeftOperatingArea => "left_operating_area",
            EventKind::ParkedInNoParking => "parked_in_no_parking",
            EventKind::SpeedingInSlowZone => "speeding_in_slow_zone",
            EventKind::BatteryLow => "battery_low",
            EventKind::BatteryRecovered => "battery_recovered",
            EventKind::MovingWhileLocked => "moving_while_locked",
            EventKind::Stale => "stale",
            EventKind::ReportingAgain => "reporting_again",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fleet event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Deterministic: see [`Event::make_id`].
    pub id: String,
    pub vehicle_id: VehicleId,
    pub kind: EventKind,
    /// Epoch ms of the fix that caused the event; for `stale`, the time of the sweep that
    /// found the vehicle silent.
    pub ts: i64,
    /// Where the vehicle was (the fix's position; for `stale`, the last known one), in
    /// millionths of a degree.
    pub lat_e6: i32,
    pub lon_e6: i32,
    /// The geofence concerned (zone events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
    /// `state_changed`: the previous state (absent when the vehicle reported none before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<VehicleState>,
    /// `state_changed`: the new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<VehicleState>,
    /// Battery in 0.1 % at the fix, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_dpct: Option<u16>,
    /// Speed in 0.1 km/h at the fix, when reported or derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_dkmh: Option<u16>,
    /// `speeding_in_slow_zone`: the zone's limit in 0.1 km/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_dkmh: Option<u16>,
    /// `stale`: epoch ms of the last fix heard; `reporting_again`: of the fix before the gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fix_ts: Option<i64>,
}

impl Event {
    /// A new event with only the mandatory fields set (and its id computed).
    pub fn new(
        vehicle_id: VehicleId,
        kind: EventKind,
        ts: i64,
        lat_e6: i32,
        lon_e6: i32,
        zone_id: Option<&str>,
    ) -> Event {
        let id = Event::make_id(&vehicle_id, kind, ts, zone_id);
        Event {
            id,
            vehicle_id,
            kind,
            ts,
            lat_e6,
            lon_e6,
            zone_id: zone_id.map(str::to_owned),
            from_state: None,
            to_state: None,
            battery_dpct: None,
            speed_dkmh: None,
            limit_dkmh: None,
            last_fix_ts: None,
        }
    }

    /// The id of the event of `kind` caused at `ts` for a vehicle (and zone): 32 hex digits of
    /// a 128-bit FNV-1a hash of those fields. The same inputs always give the same id, so a
    /// fix processed twice cannot make two events.
    pub fn make_id(vehicle_id: &VehicleId, kind: EventKind, ts: i64, zone: Option<&str>) -> String {
        const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
        let mut h = OFFSET;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u128::from(*b);
                h = h.wrapping_mul(PRIME);
            }
            // A separator no field contains, so ("ab","c") and ("a","bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(PRIME);
        };
        feed(vehicle_id.as_str().as_bytes());
        feed(kind.as_str().as_bytes());
        feed(&ts.to_le_bytes());
        feed(zone.unwrap_or("").as_bytes());
        // `format!("{h:032x}")` without the formatting machinery (one of these per event).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(32);
        for shift in (0..32).rev() {
            id.push(char::from(HEX[((h >> (shift * 4)) & 0xf) as usize]));
        }
        id
    }

    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e6) / 1e6
    }

    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e6) / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_pinned_32_lowercase_hex_digits() {
        // Stored ids must never change between versions: values from an independent FNV-1a
        // 128 computation (Python), leading zeros kept.
        let id =
            |v: &str, kind, ts, zone| Event::make_id(&VehicleId::new(v).unwrap(), kind, ts, zone);
        assert_eq!(
            id("scooter-1", EventKind::GeofenceEntered, 1000, Some("z1")),
            "d3e6e7657b3fb9e65835accbe0106346"
        );
        assert_eq!(
            id("v", EventKind::Stale, -5, None),
            "2d94272d0f70cca6aece3447117bd622"
        );
    }

    #[test]
    fn ids_are_deterministic_and_distinguish_every_field() {
        let v = VehicleId::new("s-1").unwrap();
        let a = Event::make_id(&v, EventKind::GeofenceEntered, 1000, Some("z1"));
        assert_eq!(
            a,
            Event::make_id(&v, EventKind::GeofenceEntered, 1000, Some("z1"))
        );
        assert_eq!(a.len(), 32);
        let others = [
            Event::make_id(
                &VehicleId::new("s-2").unwrap(),
                EventKind::GeofenceEntered,
                1000,
                Some("z1"),
            ),
            Event::make_id(&v, EventKind::GeofenceExited, 1000, Some("z1")),
            Event::make_id(&v, EventKind::GeofenceEntered, 1001, Some("z1")),
            Event::make_id(&v, EventKind::GeofenceEntered, 1000, Some("z2")),
            Event::make_id(&v, EventKind::GeofenceEntered, 1000, None),
        ];
        for o in others {
            assert_ne!(a, o);
        }
    }

    #[test]
    fn kinds_parse_back() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(EventKind::parse("nope"), None);
    }
}
