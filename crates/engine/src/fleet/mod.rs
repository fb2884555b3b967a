//! The fleet store: geofences and fleet events, for every process of a deployment.
//!
//! [`FleetStore`] is the port; [`sqlite::SqliteFleetStore`] is the embedded default (one SQLite
//! file in the data directory) and [`postgres::PgFleetStore`] the store that the processes of a
//! scale-out deployment share; [`config::open`] opens the one `[fleet] store` names. Workers
//! append the events they compute; the API lists geofences and events; the webhook dispatcher
//! and the live stream follow events by their sequence number.
//!
//! **Contract:** `append_events` returns once the events are durable, and a query made after it
//! returned sees them (the embedded store makes them durable in its journal and indexes them in
//! the background; its queries wait for that); appending an event whose id is already stored
//! does nothing (ids are deterministic, see [`Event::make_id`]), so a batch processed twice
//! stores its events once; sequence numbers only grow, so "everything after `seq`" never misses
//! an event that was committed before the call. `stage_events` is `append_events` in two steps
//! for a worker that writes the group's fixes meanwhile (ADR 0024): the events are durable once
//! `StagedEvents::durable` returned, and a store that cannot split the work stores them at once.

mod blocks;
pub mod config;
mod journal;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;
mod vindex;
pub mod zones;

pub use config::{FleetConfig, FleetPostgresConfig, FleetStoreKind};

use kickstand_domain::event::{Event, EventKind};
use kickstand_domain::zone::{Area, ZoneKind};
use kickstand_domain::{VehicleId, VehicleState};
use serde::{Deserialize, Serialize};

/// A geofence.
#[derive(Clone, Debug, PartialEq)]
pub struct Geofence {
    /// Chosen by the client (`[A-Za-z0-9_.:-]`, 1–64) or generated.
    pub id: String,
    pub name: String,
    pub kind: ZoneKind,
    /// `slow_zone`: the limit.
    pub max_speed_kmh: Option<f64>,
    pub area: Area,
    /// Epoch ms.
    pub created_at: i64,
    pub updated_at: i64,
}

/// An event as stored: with the sequence number the store gave it and when it was stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub recorded_at: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// A query over stored events.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub vehicle_id: Option<VehicleId>,
    pub kinds: Vec<EventKind>,
    pub zone_id: Option<String>,
    /// Event time (`ts`) at or after this, epoch ms.
    pub from: Option<i64>,
    /// Event time before this, epoch ms.
    pub to: Option<i64>,
    /// Only events with a sequence number above this (the cursor of the previous page).
    pub after_seq: u64,
    pub limit: usize,
}

/// The fleet store failed (I/O, a corrupt file, a server that is down). HTTP answers 503.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the fleet store failed: {0}")]
pub struct FleetError(pub String);

pub type FleetResult<T> = Result<T, FleetError>;

/// Events on their way to being durable ([`FleetStore::stage_events`]).
#[must_use = "staged events are durable only once `durable` returned"]
pub struct StagedEvents {
    /// The number of the journal record that holds them, while it may not be durable yet.
    pub record: Option<u64>,
    finish: Option<Box<dyn FnOnce() -> FleetResult<()> + Send>>,
}

impl StagedEvents {
    /// Events that are durable already.
    pub fn durable_now() -> StagedEvents {
        StagedEvents {
            record: None,
            finish: None,
        }
    }

    /// Events in journal record `record`, durable once `finish` returned `Ok`.
    pub fn in_record(
        record: u64,
        finish: impl FnOnce() -> FleetResult<()> + Send + 'static,
    ) -> StagedEvents {
        StagedEvents {
            record: Some(record),
            finish: Some(Box::new(finish)),
        }
    }

    /// Waits until the events are durable (and hands them on to be indexed). Dropping staged
    /// events does the same without the answer: a staged record is always handed on, or the
    /// store would wait for it forever.
    pub fn durable(mut self) -> FleetResult<()> {
        self.finish.take().map_or(Ok(()), |f| f())
    }
}

impl Drop for StagedEvents {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            let _ = f();
        }
    }
}

/// The fleet store port.
pub trait FleetStore: Send + Sync + 'static {
    /// Inserts or replaces a geofence (by id) and bumps the geofence version.
    fn put_geofence(&self, g: &Geofence) -> FleetResult<()>;
    /// Deletes a geofence; `false` when there was none with that id.
    fn delete_geofence(&self, id: &str) -> FleetResult<bool>;
    fn geofence(&self, id: &str) -> FleetResult<Option<Geofence>>;
    /// Every geofence, by id.
    fn geofences(&self) -> FleetResult<Vec<Geofence>>;
    /// A number that changes whenever a geofence is put or deleted (by any process).
    fn geofences_version(&self) -> FleetResult<u64>;

    /// Stores the events not stored yet (by id), in order, durably before it returns.
    fn append_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<()>;
    /// Starts storing `events` like `append_events`, without waiting for them to be durable
    /// when the store can: the events are in a journal record (`record`) whose sync runs while
    /// the caller writes the group's fixes, and `durable` waits for it. A caller that lets the
    /// fixes become durable first must make history drop them at recovery unless
    /// [`event_record_durable`](FleetStore::event_record_durable) says the record is (ADR
    /// 0024). Stores without a journal store the events here, durably.
    fn stage_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<StagedEvents> {
        self.append_events(events, recorded_at)?;
        Ok(StagedEvents::durable_now())
    }
    /// Whether journal record `record` was durable when the store opened (asked while
    /// history recovers, before anything new is staged). Stores without a journal: always.
    fn event_record_durable(&self, _record: u64) -> bool {
        true
    }
    /// Events matching `q`, by sequence number.
    fn events(&self, q: &EventQuery) -> FleetResult<Vec<StoredEvent>>;
    /// The highest sequence number given so far (0 when there is none).
    fn event_head(&self) -> FleetResult<u64>;
    /// Drops events older than `ts` (retention); returns how many.
    fn drop_events_before(&self, ts: i64) -> FleetResult<usize>;
    /// For every vehicle that ever ended a trip, when it last did (the `ts` of its newest
    /// `state_changed` event from `on_trip`).
    fn last_trip_ends(&self) -> FleetResult<Vec<(VehicleId, i64)>>;
    /// The newest `state_changed` or `stale` event of each of `vehicles` (MDS vehicle status).
    fn last_state_events(&self, vehicles: &[VehicleId]) -> FleetResult<Vec<Event>>;
}

/// Whether an event's `to_state` ends a trip.
pub fn ends_trip(e: &Event) -> bool {
    e.kind == EventKind::StateChanged
        && e.from_state == Some(VehicleState::OnTrip)
        && e.to_state != Some(VehicleState::OnTrip)
}
