-- Kickstand history, version 1. Times are milliseconds since the Unix epoch (UTC), the unit of
-- the API; `points` is the columnar encoding of crates/domain/src/codec.rs (version 2).

-- Settings a store was created with (the bucket span); a store opened with others is refused.
CREATE TABLE history_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per chunk: some of one vehicle's fixes within one bucket. A group commit writes one
-- new chunk per (vehicle, bucket) it touches (appending never rewrites a stored value); once a
-- bucket has closed, upkeep merges its chunks into one row per vehicle.
-- Partitioned by day on bucket_start, so retention drops whole partitions; the engine creates
-- partitions ahead (history_chunks_pYYYYMMDD).
CREATE TABLE history_chunks (
    vehicle_id   text COLLATE "C" NOT NULL,
    bucket_start bigint  NOT NULL,
    first_ts     bigint  NOT NULL,
    last_ts      bigint  NOT NULL,
    count        integer NOT NULL,
    -- Bounding box of the chunk's points, in millionths of a degree.
    min_lat_e6   integer NOT NULL,
    min_lon_e6   integer NOT NULL,
    max_lat_e6   integer NOT NULL,
    max_lon_e6   integer NOT NULL,
    points       bytea   NOT NULL,
    -- Track queries: one vehicle, a range of buckets. first_ts makes a chunk's key unique.
    PRIMARY KEY (vehicle_id, bucket_start, first_ts)
) PARTITION BY RANGE (bucket_start);

-- Fleet-wide time scans, in (bucket, vehicle) order without a sort.
CREATE INDEX history_chunks_time ON history_chunks (bucket_start, vehicle_id);

-- The newest fix of every vehicle (a one-point encoding), written in the same transaction as
-- its chunk: what the latest state is rebuilt from, and where a writer learns a vehicle's
-- newest stored ts for the duplicate check.
-- Half-full pages leave room for the new version of a row next to the old one, so the update
-- of every group commit is a HOT update (no index write; ts and point are not indexed).
CREATE TABLE history_latest (
    vehicle_id text COLLATE "C" PRIMARY KEY,
    ts         bigint NOT NULL,
    point      bytea  NOT NULL
) WITH (fillfactor = 50);

-- Buckets that may hold more than one chunk per vehicle: written by a writer the first time
-- it writes into an open bucket and every time it writes into a closed one; upkeep compacts
-- the closed ones and deletes exactly the markers it read. Rows, not a unique key, so writers
-- never wait for each other here.
CREATE TABLE history_dirty (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket_start bigint NOT NULL
);
CREATE INDEX history_dirty_bucket ON history_dirty (bucket_start);
