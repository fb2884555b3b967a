-- Kickstand fleet store, version 1: geofences and fleet events, shared by every process of a
-- scale-out deployment. Times are milliseconds since the Unix epoch (UTC), the unit of the API.
-- The layout follows the embedded SQLite store (crates/engine/src/fleet/sqlite.rs).

-- Geofences by id; `geometry` is the GeoJSON Polygon or MultiPolygon the API was given.
CREATE TABLE fleet_geofences (
    id            text COLLATE "C" PRIMARY KEY,
    name          text NOT NULL,
    kind          text NOT NULL,
    max_speed_kmh double precision,
    geometry      jsonb NOT NULL,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL
);

-- Counters bumped in the same transaction as the change they count: `geofences_version` tells
-- every process that its compiled zones are out of date.
CREATE TABLE fleet_counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO fleet_counters (name, value) VALUES ('geofences_version', 0);

-- Events in the order they were stored. `seq` is what followers page by; appenders serialise
-- on an advisory lock so that seq order is commit order (see `append_events` in postgres.rs).
-- `body` is the event as JSON, written and read only by Kickstand (text: no jsonb parse on the
-- ingest path). `zone_id` is '' for an event without a zone, so it can be part of the key.
CREATE TABLE fleet_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL,
    vehicle_id  text COLLATE "C" NOT NULL,
    kind        text NOT NULL,
    ts          bigint NOT NULL,
    zone_id     text COLLATE "C" NOT NULL,
    from_state  text,
    to_state    text,
    recorded_at bigint NOT NULL,
    body        text NOT NULL
);

-- What an event id is derived from, so a repeated event is refused; led by ts, so inserts land
-- at the right edge of the index instead of on random pages (as a hash id would).
CREATE UNIQUE INDEX fleet_events_identity ON fleet_events (ts, vehicle_id, kind, zone_id);
CREATE INDEX fleet_events_by_vehicle ON fleet_events (vehicle_id, seq);
CREATE INDEX fleet_events_by_kind ON fleet_events (kind, seq);
CREATE INDEX fleet_events_trip_ends ON fleet_events (vehicle_id, ts)
    WHERE kind = 'state_changed' AND from_state = 'on_trip';
