//! Geofences: what a zone means ([`ZoneKind`]), the area it covers ([`Area`], read from and
//! written to GeoJSON Polygon / MultiPolygon geometry and validated on the way in), the exact
//! point-in-area test, and [`ZoneIndex`], which finds every zone containing a fix.
//!
//! **Architecture Invariant:** nothing here does I/O; building an index and querying it are pure
//! functions of their inputs.
//!
//! # Containment
//!
//! A point is in a polygon by the even-odd rule over all of the polygon's rings (ray casting in
//! `f64` on degrees, longitude as x and latitude as y), which is "inside the exterior ring and not
//! inside a hole" for a valid polygon and works for either winding (RFC 7946 says parsers should
//! not reject by winding, so none is enforced). A point is in an area if it is in any polygon.
//!
//! Points exactly on the boundary follow the half-open crossing rule: a boundary point counts as
//! inside exactly when the points infinitesimally north-east of it are inside (up to rounding on
//! slanted edges). A square therefore
//! contains its south and west edges and its south-west corner but not the other edges or corners,
//! and two zones sharing an edge never both claim a point on it.
//!
//! # Antimeridian
//!
//! RFC 7946 §3.1.9 says geometries crossing the antimeridian should be cut in two; such a
//! MultiPolygon needs nothing special. A polygon that does not follow that advice, with a ring
//! whose consecutive positions jump by more than 180° of longitude (179.9 → -179.9), is taken to
//! cross: all of its longitudes are unwrapped (negative ones get 360 added) for containment and
//! validation, and its [`ZoneBBox`] has `west > east`. The meridian ±180° itself is one line only
//! for such crossing polygons; elsewhere -180 and 180 are different longitudes. A jump from
//! exactly -180 to exactly 180 is read as an edge around the world (a box from -180 to 180), not
//! as a crossing.
//!
//! # The index
//!
//! [`ZoneIndex`] is a hierarchy of uniform grids with cells of 2^-L degrees for L from 10 (1/1024°,
//! about 110 m of latitude) down to -2 (4°); only levels that hold a zone are probed. Each zone is
//! put on the finest level at which its polygons' bounding boxes cover at most
//! [`MAX_CELLS_PER_ZONE`] cells, so a 50–300 m no-parking zone sits in 1–12 small cells and a city
//! operating area in a few hundred cells of about 1.5 km. Every (cell, polygon) pair is
//! classified when the index is built: *inside* when the whole cell lies inside the polygon (the
//! lookup reports the zone with no polygon test), or *partial* when a ring passes within
//! [`CELL_MARGIN`] of the cell (the lookup runs the exact test); cells wholly outside hold no
//! entry. The margin makes the classification agree exactly with [`Area::contains`] despite
//! rounding, and tests check that agreement on random zones and points, boundaries included.
//!
//! A lookup is bound by memory latency, so the layout keeps the chain of dependent loads short:
//! a small hash table (multiplicative hash, linear probing) maps blocks of 8 × 8 cells to dense
//! arrays of per-cell offsets; a cell's entries are contiguous and carry the zone's slot and its
//! polygon's bounding box (in `f32`, rounded outwards), so most candidates are settled without
//! touching the polygon; a small polygon's exact bounds and edges are stored together. The exact
//! test rejects by bounds, then casts the ray through the edges of the point's latitude slab only
//! (a polygon of more than 16 edges cuts its latitude span into up to n/2 slabs), so even a
//! partial cell of a 5,000-vertex operating area costs a handful of edge tests. Zones too large
//! even for 4° cells (a continent) and hand-built areas that [`Area::from_geojson`] would refuse
//! (non-finite or out-of-range coordinates, unclosed rings) are kept in a short list tested
//! exactly at every lookup.
//!
//! **Memory bound:** besides its edges (32 bytes each, slab copies capped at [`SLAB_COPIES`] times
//! the edge count, plus 32 bytes of bounds per small polygon and 64 bytes of header per polygon),
//! a zone adds at most about [`MAX_CELLS_PER_ZONE`] entries of 32 bytes (16 KB) and the 8 × 8-cell
//! blocks they touch, 292 bytes each at most, shared with other zones in the same blocks. That
//! is at most about 55 KB for a zone (a 1 × 512-cell strip) and about 1–2 KB for a small one:
//! 10,000 city zones take about 10 MB in all.

use serde_json::{Value, json};

/// The most positions accepted in one ring.
pub const MAX_RING_POSITIONS: usize = 10_000;

/// The most positions accepted in one area, all rings of all polygons together.
pub const MAX_AREA_POSITIONS: usize = 100_000;

/// The most polygons accepted in one MultiPolygon.
pub const MAX_POLYGONS: usize = 1_000;

/// The most grid cells a zone may cover on its level of [`ZoneIndex`] (see the module docs).
pub const MAX_CELLS_PER_ZONE: u64 = 512;

/// How close in degrees (about 1 cm) a ring may come to an index cell before the cell needs the
/// exact test; far larger than the rounding error of the ray-casting test.
pub const CELL_MARGIN: f64 = 1e-7;

/// The cap on the edge copies a polygon's latitude slabs may hold, as a multiple of its edges.
pub const SLAB_COPIES: usize = 4;

/// The finest grid level: cells of 2^-10 degrees.
const FINEST_LEVEL: i32 = 10;

/// The coarsest grid level: cells of 4 degrees, the coarsest power of two that divides 180.
const COARSEST_LEVEL: i32 = -2;

/// What a zone means for the vehicles in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// Where the service runs; leaving it ends or restricts the ride.
    OperatingArea,
    /// Where a ride may not end.
    NoParking,
    /// Where the speed is capped.
    SlowZone,
    /// Where riding is not allowed at all.
    NoRide,
}

impl ZoneKind {
    /// Every kind, in declaration order.
    pub const ALL: [ZoneKind; 4] = [
        ZoneKind::OperatingArea,
        ZoneKind::NoParking,
        ZoneKind::SlowZone,
        ZoneKind::NoRide,
    ];

    /// The kind's name as written in JSON and query strings (`no_parking`).
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::OperatingArea => "operating_area",
            ZoneKind::NoParking => "no_parking",
            ZoneKind::SlowZone => "slow_zone",
            ZoneKind::NoRide => "no_ride",
        }
    }

    /// The kind named `s`, as written by [`ZoneKind::as_str`].
    pub fn parse(s: &str) -> Option<ZoneKind> {
        ZoneKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One polygon: the exterior ring first, then holes. Positions are (lon, lat) in degrees, rings
/// closed (first == last) as in GeoJSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Polygon {
    /// The rings: exterior first, then holes, each a closed list of `[lon, lat]` positions.
    pub rings: Vec<Vec<[f64; 2]>>,
}

/// A zone's area: one or more polygons. `single` remembers whether it came as a GeoJSON Polygon
/// (so it is written back the same way).
#[derive(Clone, Debug, PartialEq)]
pub struct Area {
    /// The polygons; a point in any of them is in the area.
    pub polygons: Vec<Polygon>,
    /// Whether the area was a GeoJSON Polygon rather than a MultiPolygon.
    pub single: bool,
}

/// Why a GeoJSON geometry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct GeometryError {
    /// Where in the geometry object the problem is: `type`, `coordinates[0][3]`,
    /// `coordinates[1][0]`.
    pub path: String,
    /// What is wrong there, as a sentence fragment for people.
    pub reason: String,
}

impl GeometryError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> GeometryError {
        GeometryError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A bounding box in degrees; when `west > east` it crosses the antimeridian (RFC 7946 §5.2).
/// The box of an area without positions is empty: `south > north`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZoneBBox {
    /// The smallest latitude.
    pub south: f64,
    /// The western edge's longitude.
    pub west: f64,
    /// The largest latitude.
    pub north: f64,
    /// The eastern edge's longitude; less than `west` when the box crosses the antimeridian.
    pub east: f64,
}

impl ZoneBBox {
    /// Whether the point lies in the box, edges included; longitudes -180 and 180 are taken as
    /// the same meridian here, so the box is never smaller than the area it bounds.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if !(self.south <= lat && lat <= self.north) {
            return false;
        }
        let within = |x: f64| {
            if self.west <= self.east {
                self.west <= x && x <= self.east
            } else {
                x >= self.west || x <= self.east
            }
        };
        within(lon) || (lon == 180.0 && within(-180.0)) || (lon == -180.0 && within(180.0))
    }
}

impl Area {
    /// Parses and validates a GeoJSON Polygon or MultiPolygon geometry object.
    ///
    /// Refused, with the path of the offending member: another or a missing `type`; a missing
    /// or wrongly nested `coordinates`; a position that is not 2 or 3 numbers, or whose longitude
    /// is outside [-180, 180] or latitude outside [-90, 90] (an altitude is accepted and dropped);
    /// a ring of fewer than 4 positions or more than [`MAX_RING_POSITIONS`], not closed, of zero
    /// area, touching itself, or still jumping more than 180° of longitude when read as crossing
    /// the antimeridian; a polygon without an exterior ring, or with a hole whose first
    /// position is not inside (or on) the exterior; a MultiPolygon without polygons or with more
    /// than [`MAX_POLYGONS`]; more than [`MAX_AREA_POSITIONS`] positions in all. Holes are not
    /// checked against each other.
    pub fn from_geojson(v: &Value) -> Result<Area, GeometryError> {
        let Some(obj) = v.as_object() else {
            return Err(GeometryError::new(
                "geometry",
                "must be a JSON object with \"type\" and \"coordinates\"",
            ));
        };
        let single = match obj.get("type") {
            Some(Value::String(s)) if s == "Polygon" => true,
            Some(Value::String(s)) if s == "MultiPolygon" => false,
            Some(Value::String(s)) => {
                return Err(GeometryError::new(
                    "type",
                    format!("must be \"Polygon\" or \"MultiPolygon\", not {s:?}"),
                ));
            }
            Some(_) => return Err(GeometryError::new("type", "must be a string")),
            None => return Err(GeometryError::new("type", "is missing")),
        };
        let Some(coords) = obj.get("coordinates") else {
            return Err(GeometryError::new("coordinates", "is missing"));
        };
        let mut budget = MAX_AREA_POSITIONS;
        let polygons = if single {
            vec![parse_polygon(coords, "coordinates", &mut budget)?]
        } else {
            let Some(list) = coords.as_array() else {
                return Err(GeometryError::new(
                    "coordinates",
                    "must be an array of polygons",
                ));
            };
            if list.is_empty() {
                return Err(GeometryError::new(
                    "coordinates",
                    "a MultiPolygon needs at least one polygon",
                ));
            }
            if list.len() > MAX_POLYGONS {
                return Err(GeometryError::new(
                    "coordinates",
                    format!(
                        "has {} polygons, more than the limit of {MAX_POLYGONS}",
                        list.len()
                    ),
                ));
            }
            let mut polygons = Vec::with_capacity(list.len());
            for (i, p) in list.iter().enumerate() {
                polygons.push(parse_polygon(p, &format!("coordinates[{i}]"), &mut budget)?);
            }
            polygons
        };
        Ok(Area { polygons, single })
    }

    /// The area as a GeoJSON geometry object: a Polygon if it came as one, else a MultiPolygon.
    pub fn to_geojson(&self) -> Value {
        let polygon = |p: &Polygon| {
            Value::Array(
                p.rings
                    .iter()
                    .map(|r| Value::Array(r.iter().map(|q| json!([q[0], q[1]])).collect()))
                    .collect(),
            )
        };
        match &self.polygons[..] {
            [p] if self.single => json!({"type": "Polygon", "coordinates": polygon(p)}),
            ps => json!({
                "type": "MultiPolygon",
                "coordinates": Value::Array(ps.iter().map(polygon).collect()),
            }),
        }
    }

    /// Whether the point lies in the area (inside an exterior ring and not inside one of its
    /// holes). Boundary points follow the half-open rule of the module docs: inside exactly when
    /// the points just north-east of them are.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        self.polygons.iter().any(|p| p.contains(lat, lon))
    }

    /// The bounding box, antimeridian-safe: the smallest box around all polygons, crossing the
    /// antimeridian (`west > east`) when that is narrower.
    pub fn bbox(&self) -> ZoneBBox {
        let (mut south, mut north) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut pieces: Vec<(f64, f64)> = Vec::new();
        for p in &self.polygons {
            let b = Bounds::of(p, crosses_antimeridian(p));
            if !b.is_finite() {
                continue;
            }
            south = south.min(b.min_y);
            north = north.max(b.max_y);
            let (mut west, mut east) = (b.min_x, b.max_x);
            if west >= 180.0 {
                west -= 360.0;
                east -= 360.0;
            }
            if east > 180.0 {
                pieces.push((west, 180.0));
                pieces.push((-180.0, east - 360.0));
            } else {
                pieces.push((west, east));
            }
        }
        if pieces.is_empty() {
            return ZoneBBox {
                south: f64::INFINITY,
                west: f64::INFINITY,
                north: f64::NEG_INFINITY,
                east: f64::NEG_INFINITY,
            };
        }
        pieces.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut merged: Vec<(f64, f64)> = Vec::with_capacity(pieces.len());
        for (w, e) in pieces {
            match merged.last_mut() {
                Some(last) if w <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((w, e)),
            }
        }
        // The box is the complement of the widest gap between the merged longitude intervals;
        // the gap across the antimeridian wins ties, so an uncut area never gets a crossing box.
        let (first, last) = (merged[0], merged[merged.len() - 1]);
        let mut widest = first.0 + 360.0 - last.1;
        let (mut west, mut east) = (first.0, last.1);
        for pair in merged.windows(2) {
            let gap = pair[1].0 - pair[0].1;
            if gap > widest {
                widest = gap;
                (west, east) = (pair[1].0, pair[0].1);
            }
        }
        ZoneBBox {
            south,
            west,
            north,
            east,
        }
    }
}

impl Polygon {
    /// Whether the point lies in the polygon (even-odd over all rings, see the module docs).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let crossing = crosses_antimeridian(self);
        let px = frame_x(crossing, lon);
        if !Bounds::of(self, crossing).contains(px, lat) {
            return false;
        }
        let mut inside = false;
        for ring in &self.rings {
            for w in ring.windows(2) {
                inside ^= crosses(&canonical(frame_edge(crossing, w[0], w[1])), px, lat);
            }
        }
        inside
    }
}

/// A box of points, in millionths of a degree with both ends included, that lie in the same
/// zones ([`ZoneIndex::containing_stable`]). Its edges keep at least one millionth of a degree
/// (about 11 cm) from the cell edges and bounding boxes that made them, so rounding in the
/// lookup can never put a point of the box on the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StableBox {
    pub lat: [i32; 2],
    pub lon: [i32; 2],
}

impl StableBox {
    fn everywhere() -> StableBox {
        StableBox {
            lat: [i32::MIN, i32::MAX],
            lon: [i32::MIN, i32::MAX],
        }
    }

    pub fn contains(&self, lat_e6: i32, lon_e6: i32) -> bool {
        self.lat[0] <= lat_e6
            && lat_e6 <= self.lat[1]
            && self.lon[0] <= lon_e6
            && lon_e6 <= self.lon[1]
    }

    /// Keeps the part inside `side` × `side` cells from cell (`y`, `x`) at `scale` cells per
    /// degree. Cell edges are exact in `f64` (a power of two divides them).
    fn cut_to_cell(&mut self, scale: f64, y: i64, x: i64, side: i64) {
        let edge = |c: i64| c as f64 * 1e6 / scale;
        // The integers n with edge(c) <= n < edge(c + side), one unit in from each end.
        let inner =
            |c: i64| -> [i64; 2] { [edge(c).ceil() as i64 + 1, edge(c + side).ceil() as i64 - 2] };
        let clamp = |v: i64| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        let [lo, hi] = inner(y);
        self.lat = [self.lat[0].max(clamp(lo)), self.lat[1].min(clamp(hi))];
        let [lo, hi] = inner(x);
        self.lon = [self.lon[0].max(clamp(lo)), self.lon[1].min(clamp(hi))];
    }

    /// Keeps a part that does not meet the box `[w, s, e, n]` (degrees), which the point
    /// (`lat`, `lon`) lies outside of: of the sides the point is beyond, the one farthest from
    /// it is the cut, which keeps the most room around the point. Returns `false` (and empties
    /// the box) when the point is not outside it.
    fn exclude(&mut self, lat: f64, lon: f64, [w, s, e, n]: [f64; 4]) -> bool {
        // (how far beyond, which side)
        let mut best = (0.0, 4);
        for (gap, side) in [(w - lon, 0), (lon - e, 1), (s - lat, 2), (lat - n, 3)] {
            if gap > best.0 {
                best = (gap, side);
            }
        }
        let below = |d: f64| {
            ((d * 1e6).ceil() - 2.0).clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        };
        let above = |d: f64| {
            ((d * 1e6).floor() + 2.0).clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        };
        match best.1 {
            0 => self.lon[1] = self.lon[1].min(below(w)),
            1 => self.lon[0] = self.lon[0].max(above(e)),
            2 => self.lat[1] = self.lat[1].min(below(s)),
            3 => self.lat[0] = self.lat[0].max(above(n)),
            _ => {
                self.lat = [1, 0];
                return false;
            }
        }
        true
    }
}

/// Finds the zones that contain a point, testing only candidate zones (see the module docs for
/// the design and its memory bound).
#[derive(Clone)]
pub struct ZoneIndex {
    /// How many zones were given.
    zones: usize,
    /// The grid levels that hold at least one zone, finest first.
    levels: Vec<Level>,
    /// Every cell's entries, contiguous per cell, one per (cell, polygon).
    entries: Vec<Entry>,
    /// Every polygon of every zone, prepared for the exact test.
    polygons: PolygonSet,
    /// Zones on no grid (too large, or malformed), tested at every lookup: slot and polygons.
    unindexed: Vec<(u32, std::ops::Range<u32>)>,
}

impl std::fmt::Debug for ZoneIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneIndex")
            .field("zones", &self.zones)
            .field("levels", &self.levels.len())
            .field(
                "blocks",
                &self.levels.iter().map(|l| l.blocks.len).sum::<usize>(),
            )
            .field("entries", &self.entries.len())
            .field("polygons", &self.polygons.headers.len())
            .field("edge_copies", &self.polygons.edges.len())
            .field("unindexed", &self.unindexed.len())
            .finish()
    }
}

impl ZoneIndex {
    /// Builds the index over zones given as (slot, area); slots are the caller's small integer
    /// handles (u32). A slot may appear more than once; it is then reported when any of its areas
    /// contains the point. Areas are expected to come from [`Area::from_geojson`]; others are
    /// still answered exactly, only more slowly.
    pub fn build<'a>(zones: impl IntoIterator<Item = (u32, &'a Area)>) -> ZoneIndex {
        let mut list: Vec<(u32, &Area)> = zones.into_iter().collect();
        list.sort_by_key(|&(slot, _)| slot);
        let level_count = (FINEST_LEVEL - COARSEST_LEVEL + 1) as usize;
        let mut per_level: Vec<Vec<(u64, Entry)>> = vec![Vec::new(); level_count];
        let mut polygons = PolygonSet::default();
        let mut unindexed = Vec::new();
        let mut cells: Vec<(u64, bool)> = Vec::new();
        for &(slot, area) in &list {
            let first = polygons.headers.len();
            for p in &area.polygons {
                polygons.add(p);
            }
            let range = index_u32(first)..index_u32(polygons.headers.len());
            let Some(level) = grid_level(area, &polygons.headers[first..]) else {
                unindexed.push((slot, range));
                continue;
            };
            let scale = level_scale(level);
            let bucket = &mut per_level[(FINEST_LEVEL - level) as usize];
            for i in range {
                cells.clear();
                polygons.classify(i as usize, scale, &mut cells);
                let h = &polygons.headers[i as usize];
                let b = h.bounds;
                for &(key, inside) in &cells {
                    let entry = Entry {
                        slot,
                        polygon: i << 2 | u32::from(h.crossing) << 1 | u32::from(inside),
                        from: h.from,
                        len: if h.slabs == 1 { h.to - h.from } else { 0 },
                        bbox: [
                            f32_down(b.min_x),
                            f32_down(b.min_y),
                            f32_up(b.max_x),
                            f32_up(b.max_y),
                        ],
                    };
                    bucket.push((key, entry));
                }
            }
        }
        let mut levels = Vec::new();
        let mut entries = Vec::new();
        for (i, mut pairs) in per_level.into_iter().enumerate() {
            if pairs.is_empty() {
                continue;
            }
            pairs.sort_by_key(|&(key, e)| {
                let (block, cell) = block_of(key);
                (block, cell, e.slot, e.polygon)
            });
            let mut blocks: Vec<(u64, u32)> = Vec::new();
            let mut starts: Vec<u32> = Vec::new();
            for (key, entry) in pairs {
                let (block, cell) = block_of(key);
                if blocks.last().is_none_or(|b| b.0 != block) {
                    blocks.push((block, index_u32(blocks.len())));
                    starts.extend([index_u32(entries.len()); BLOCK_CELLS + 1]);
                }
                // Every later cell of the block starts one entry later.
                let base = starts.len() - BLOCK_CELLS - 1;
                for s in &mut starts[base + cell + 1..] {
                    *s += 1;
                }
                entries.push(entry);
            }
            levels.push(Level {
                scale: level_scale(FINEST_LEVEL - i as i32),
                blocks: CellTable::new(&blocks),
                starts,
            });
        }
        ZoneIndex {
            zones: list.len(),
            levels,
            entries,
            polygons,
            unindexed,
        }
    }

    /// Appends to `out` the slots of every zone containing the point, in ascending slot order,
    /// without duplicates. `out` is not cleared. The point is tested as `f64::from(lat_e6) / 1e6`
    /// degrees, so the answer is exactly that of [`Area::contains`] for those degrees.
    pub fn containing(&self, lat_e6: i32, lon_e6: i32, out: &mut Vec<u32>) {
        self.lookup::<false>(lat_e6, lon_e6, out);
    }

    /// [`ZoneIndex::containing`], which also returns, when it can, a box around the point in
    /// which every point lies in the same zones, so a caller whose next point falls in the box
    /// can keep the answer (a scooter moves a few metres between fixes). The box is the part of
    /// the point's cell on each level (its whole block when the block is empty) that meets
    /// neither the bounding box of a polygon the cell holds only partly nor, when the point is
    /// inside that box, the box of any of the polygon's edges. `None` when no such part holds
    /// the point (it lies in the box of a slanted edge, or of a polygon of many slabs), or
    /// zones are tested outside the grid.
    pub fn containing_stable(
        &self,
        lat_e6: i32,
        lon_e6: i32,
        out: &mut Vec<u32>,
    ) -> Option<StableBox> {
        self.lookup::<true>(lat_e6, lon_e6, out)
    }

    /// The lookup, with the stable box worked out when `BOX` (the plain lookup does not pay
    /// for it).
    fn lookup<const BOX: bool>(
        &self,
        lat_e6: i32,
        lon_e6: i32,
        out: &mut Vec<u32>,
    ) -> Option<StableBox> {
        let start = out.len();
        let (lat_n, lon_n) = (f64::from(lat_e6), f64::from(lon_e6));
        let (lat, lon) = (lat_n / 1e6, lon_n / 1e6);
        let mut stable = (BOX && self.unindexed.is_empty()).then(StableBox::everywhere);
        for level in &self.levels {
            // Scaling by a power of two is exact and the division is correctly rounded, so the
            // floor is the exact cell even on a cell boundary.
            let y = (lat_n * level.scale / 1e6).floor() as i64;
            let x = (lon_n * level.scale / 1e6).floor() as i64;
            let Some(block) = level.blocks.get(cell_key(y >> BLOCK_BITS, x >> BLOCK_BITS)) else {
                if let Some(b) = &mut stable {
                    let side = 1 << BLOCK_BITS;
                    b.cut_to_cell(
                        level.scale,
                        (y >> BLOCK_BITS) * side,
                        (x >> BLOCK_BITS) * side,
                        side,
                    );
                }
                continue;
            };
            if let Some(b) = &mut stable {
                b.cut_to_cell(level.scale, y, x, 1);
            }
            let cell = block as usize * (BLOCK_CELLS + 1) + block_cell(y, x);
            let cell = level.starts[cell] as usize..level.starts[cell + 1] as usize;
            for e in &self.entries[cell] {
                if e.polygon & 1 == 1 {
                    out.push(e.slot);
                    continue;
                }
                let crossing = e.polygon & 2 != 0;
                if crossing {
                    // Boxes are kept in plain longitudes, not in a crossing polygon's frame.
                    stable = None;
                }
                let px = frame_x(crossing, lon);
                let [w, s, east, n] = e.bbox.map(f64::from);
                if !(w <= px && px <= east && s <= lat && lat <= n) {
                    if let Some(b) = &mut stable {
                        b.exclude(lat, lon, [w, s, east, n]);
                    }
                    continue;
                }
                let inside = if e.len > 0 {
                    // `PolygonSet::contains_frame` for one slab, without the header.
                    let from = e.from as usize;
                    let [w, s, east, n] = self.polygons.edges[from - 1];
                    let edges = &self.polygons.edges[from..from + e.len as usize];
                    let mut inside = false;
                    if w <= px && px <= east && s <= lat && lat <= n {
                        for edge in edges {
                            inside ^= crosses(edge, px, lat);
                        }
                        // A box that meets no edge lies wholly inside or wholly outside.
                        if let Some(b) = &mut stable {
                            for &[x0, y0, x1, y1] in edges {
                                let edge_box = [x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)];
                                if !b.exclude(lat, lon, edge_box) {
                                    stable = None;
                                    break;
                                }
                            }
                        }
                    } else if let Some(b) = &mut stable {
                        b.exclude(lat, lon, [w, s, east, n]);
                    }
                    inside
                } else {
                    // Many slabs: not worth following their edges here.
                    stable = None;
                    self.polygons
                        .contains_frame((e.polygon >> 2) as usize, px, lat)
                };
                if inside {
                    out.push(e.slot);
                }
            }
        }
        for (slot, polygons) in &self.unindexed {
            if polygons
                .clone()
                .any(|i| self.polygons.contains(i as usize, lat, lon))
            {
                out.push(*slot);
            }
        }
        if out.len() - start > 1 {
            out[start..].sort_unstable();
            let mut kept = start + 1;
            for i in start + 1..out.len() {
                if out[i] != out[kept - 1] {
                    out[kept] = out[i];
                    kept += 1;
                }
            }
            out.truncate(kept);
        }
        stable.filter(|b| b.contains(lat_e6, lon_e6))
    }

    /// The number of zones given to [`ZoneIndex::build`].
    pub fn len(&self) -> usize {
        self.zones
    }

    /// Whether the index holds no zones.
    pub fn is_empty(&self) -> bool {
        self.zones == 0
    }
}

/// One (cell, polygon) pair of the grid, with what a lookup needs to settle most candidates
/// without touching the polygon.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The zone's slot, reported when the point is inside.
    slot: u32,
    /// `polygon index << 2 | crossing << 1 | inside`; `inside` means the whole cell is inside.
    polygon: u32,
    /// With one slab, where the polygon's edges start in [`PolygonSet::edges`], its bounds
    /// just before them; lets the lookup skip the header.
    from: u32,
    /// With one slab, how many edges the polygon has; 0 sends the lookup through the header.
    len: u32,
    /// The polygon's bounds in its frame (west, south, east, north), rounded outwards to `f32`.
    bbox: [f32; 4],
}

/// One grid level of the index.
#[derive(Clone)]
struct Level {
    /// Cells per degree, 2^level.
    scale: f64,
    /// The blocks of this level that hold an entry, keyed by block row and column, each to its
    /// number in `starts`.
    blocks: CellTable,
    /// Per block, where each of its cells' entries start, plus one end: block `b`'s cell `c`
    /// holds `entries[starts[b * (BLOCK_CELLS + 1) + c]..starts[b * (BLOCK_CELLS + 1) + c + 1]]`.
    starts: Vec<u32>,
}

/// A block is 2^`BLOCK_BITS` cells square.
const BLOCK_BITS: u32 = 3;

/// The number of cells in a block.
const BLOCK_CELLS: usize = 1 << (2 * BLOCK_BITS);

/// The block key of a cell key and the cell's number within its block.
fn block_of(key: u64) -> (u64, usize) {
    let (y, x) = (
        i64::from((key >> 32) as u32 as i32),
        i64::from(key as u32 as i32),
    );
    (cell_key(y >> BLOCK_BITS, x >> BLOCK_BITS), block_cell(y, x))
}

/// The number of cell (`y`, `x`) within its block.
fn block_cell(y: i64, x: i64) -> usize {
    let mask = (1 << BLOCK_BITS) - 1;
    ((y & mask) << BLOCK_BITS | (x & mask)) as usize
}

/// Polygons ready for repeated tests, stored contiguously: each polygon's edges are in its
/// longitude frame and grouped by latitude slab. Answers are bit-for-bit those of
/// [`Polygon::contains`], because the same bounds check and the same crossing test are applied
/// to every edge that can straddle the point's latitude.
#[derive(Clone, Default)]
struct PolygonSet {
    /// One header per polygon.
    headers: Vec<PolygonHeader>,
    /// Canonical edges `[x0, y0, x1, y1]`, polygon after polygon and slab after slab; an edge is
    /// copied into every slab its latitude span touches.
    edges: Vec<[f64; 4]>,
    /// For polygons with several slabs: where each slab's edges start, plus one end.
    slab_starts: Vec<u32>,
}

/// Where a polygon's data lies in its [`PolygonSet`], and its bounds.
#[derive(Clone, Copy, Debug)]
struct PolygonHeader {
    /// The bounds in the frame, all rings included.
    bounds: Bounds,
    /// The latitude where slab 0 starts.
    slab_y0: f64,
    /// Slabs per degree of latitude (0 with one slab).
    slab_scale: f64,
    /// With one slab, the polygon's edges are `edges[from..to]`; with more, slab `s` holds
    /// `edges[slab_starts[from + s]..slab_starts[from + s + 1]]`.
    from: u32,
    /// See `from`.
    to: u32,
    /// The number of slabs.
    slabs: u32,
    /// Whether longitudes are unwrapped across the antimeridian.
    crossing: bool,
}

impl PolygonSet {
    /// Prepares `p`; its index is the number of polygons added before it.
    fn add(&mut self, p: &Polygon) {
        let crossing = crosses_antimeridian(p);
        let bounds = Bounds::of(p, crossing);
        let edges: Vec<[f64; 4]> = p
            .rings
            .iter()
            .flat_map(|r| {
                r.windows(2)
                    .map(|w| canonical(frame_edge(crossing, w[0], w[1])))
            })
            .collect();
        let n = edges.len();
        let height = bounds.max_y - bounds.min_y;
        let mut slabs = if n <= 16 || !(height > 0.0 && height.is_finite()) {
            1
        } else {
            (n / 2).min(1 << 16)
        };
        loop {
            let mut header = PolygonHeader {
                bounds,
                slab_y0: bounds.min_y,
                slab_scale: if slabs == 1 {
                    0.0
                } else {
                    slabs as f64 / height
                },
                from: 0,
                to: 0,
                slabs: index_u32(slabs),
                crossing,
            };
            if slabs == 1 {
                // The bounds go just before the edges, so that a lookup finds both together.
                self.edges
                    .push([bounds.min_x, bounds.min_y, bounds.max_x, bounds.max_y]);
                header.from = index_u32(self.edges.len());
                self.edges.extend_from_slice(&edges);
                header.to = index_u32(self.edges.len());
                self.headers.push(header);
                return;
            }
            let span = |e: &[f64; 4]| {
                let lo = header.slab_of(e[1]);
                (lo, header.slab_of(e[3]).max(lo))
            };
            let mut counts = vec![0usize; slabs + 1];
            for e in &edges {
                let (lo, hi) = span(e);
                for c in &mut counts[lo + 1..=hi + 1] {
                    *c += 1;
                }
            }
            let total: usize = counts.iter().sum();
            if total > SLAB_COPIES * n {
                slabs /= 2;
                continue;
            }
            counts[0] = self.edges.len();
            for s in 1..=slabs {
                counts[s] += counts[s - 1];
            }
            let mut fill = counts.clone();
            self.edges.resize(counts[slabs], [0.0; 4]);
            for e in &edges {
                let (lo, hi) = span(e);
                for f in &mut fill[lo..=hi] {
                    self.edges[*f] = *e;
                    *f += 1;
                }
            }
            header.from = index_u32(self.slab_starts.len());
            self.slab_starts.extend(counts.into_iter().map(index_u32));
            self.headers.push(header);
            return;
        }
    }

    fn contains(&self, i: usize, lat: f64, lon: f64) -> bool {
        self.contains_frame(i, frame_x(self.headers[i].crossing, lon), lat)
    }

    fn contains_frame(&self, i: usize, px: f64, py: f64) -> bool {
        let h = &self.headers[i];
        if !h.bounds.contains(px, py) {
            return false;
        }
        let (from, to) = if h.slabs == 1 {
            (h.from as usize, h.to as usize)
        } else {
            let s = h.from as usize + h.slab_of(py);
            (
                self.slab_starts[s] as usize,
                self.slab_starts[s + 1] as usize,
            )
        };
        let mut inside = false;
        for e in &self.edges[from..to] {
            inside ^= crosses(e, px, py);
        }
        inside
    }

    /// All edges of polygon `i`, some perhaps more than once.
    fn edges_of(&self, i: usize) -> &[[f64; 4]] {
        let h = &self.headers[i];
        if h.slabs == 1 {
            &self.edges[h.from as usize..h.to as usize]
        } else {
            let from = self.slab_starts[h.from as usize] as usize;
            let to = self.slab_starts[(h.from + h.slabs) as usize] as usize;
            &self.edges[from..to]
        }
    }

    /// Appends polygon `i`'s cells at `scale` cells per degree: `true` for a cell wholly inside,
    /// `false` for a cell that a ring passes near. Cells wholly outside are left out.
    fn classify(&self, i: usize, scale: f64, out: &mut Vec<(u64, bool)>) {
        let h = self.headers[i];
        let b = h.bounds;
        if !b.is_finite() {
            return;
        }
        let (cx0, cx1) = (
            (b.min_x * scale).floor() as i64,
            (b.max_x * scale).floor() as i64,
        );
        let (cy0, cy1) = (
            (b.min_y * scale).floor() as i64,
            (b.max_y * scale).floor() as i64,
        );
        let nx = (cx1 - cx0 + 1) as usize;
        let ny = (cy1 - cy0 + 1) as usize;
        let mut near = vec![false; nx * ny];
        let m = CELL_MARGIN;
        for &[x0, y0, x1, y1] in self.edges_of(i) {
            let (ylo, yhi) = (y0.min(y1), y0.max(y1));
            let (dx, dy) = (x1 - x0, y1 - y0);
            // Past two rows the edge is steep enough to clip per row without losing precision.
            let steep = (yhi - ylo) * scale >= 2.0;
            let slack = m + 1e-9 * (1.0 + dx.abs());
            let r0 = (((ylo - m) * scale).floor() as i64).max(cy0);
            let r1 = (((yhi + m) * scale).floor() as i64).min(cy1);
            for r in r0..=r1 {
                let (mut a, mut z) = (x0.min(x1), x0.max(x1));
                if steep {
                    let t0 = ((r as f64 / scale - m - y0) / dy).clamp(0.0, 1.0);
                    let t1 = (((r + 1) as f64 / scale + m - y0) / dy).clamp(0.0, 1.0);
                    let (xa, xb) = (x0 + t0 * dx, x0 + t1 * dx);
                    (a, z) = (xa.min(xb), xa.max(xb));
                }
                let c0 = (((a - slack) * scale).floor() as i64).max(cx0);
                let c1 = (((z + slack) * scale).floor() as i64).min(cx1);
                let row = (r - cy0) as usize * nx;
                for c in c0..=c1 {
                    near[row + (c - cx0) as usize] = true;
                }
            }
        }
        let half = (180.0 * scale) as i64;
        for y in cy0..=cy1 {
            for x in cx0..=cx1 {
                let center = ((x as f64 + 0.5) / scale, (y as f64 + 0.5) / scale);
                let inside = if near[(y - cy0) as usize * nx + (x - cx0) as usize] {
                    false
                } else if self.contains_frame(i, center.0, center.1) {
                    true
                } else {
                    continue;
                };
                // Map the frame column back to the grid's longitudes: in an unwrapped frame,
                // columns east of 180° are the western hemisphere, and the column starting at
                // 180° also holds longitudes just east of -180°.
                if h.crossing && x >= half {
                    out.push((cell_key(y, x - 2 * half), inside));
                    if x == half {
                        out.push((cell_key(y, x), inside));
                    }
                } else {
                    out.push((cell_key(y, x), inside));
                }
            }
        }
    }
}

impl PolygonHeader {
    /// The slab of latitude `y`; monotonic in `y`, so an edge's slabs cover every latitude it
    /// straddles.
    fn slab_of(&self, y: f64) -> usize {
        let s = (y - self.slab_y0) * self.slab_scale;
        if s > 0.0 {
            (s as usize).min(self.slabs as usize - 1)
        } else {
            0
        }
    }
}

/// `v` rounded down to an `f32`.
fn f32_down(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) > v { f.next_down() } else { f }
}

/// `v` rounded up to an `f32`.
fn f32_up(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) < v { f.next_up() } else { f }
}

/// A count or index as `u32`; the index is far smaller than 2^32 items in practice.
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).expect("a zone index holds fewer than 2^32 polygons, edges and entries")
}

/// An axis-aligned box in a polygon's frame (x is the possibly unwrapped longitude).
#[derive(Clone, Copy, Debug)]
struct Bounds {
    min_x: f64,
    min_y: f64,
    max_x: f64,
    max_y: f64,
}

impl Bounds {
    fn of(p: &Polygon, crossing: bool) -> Bounds {
        let mut b = Bounds {
            min_x: f64::INFINITY,
            min_y: f64::INFINITY,
            max_x: f64::NEG_INFINITY,
            max_y: f64::NEG_INFINITY,
        };
        for q in p.rings.iter().flatten() {
            let x = frame_x(crossing, q[0]);
            b.min_x = b.min_x.min(x);
            b.max_x = b.max_x.max(x);
            b.min_y = b.min_y.min(q[1]);
            b.max_y = b.max_y.max(q[1]);
        }
        b
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        self.min_x <= x && x <= self.max_x && self.min_y <= y && y <= self.max_y
    }

    fn is_finite(&self) -> bool {
        self.min_x.is_finite()
            && self.max_x.is_finite()
            && self.min_y.is_finite()
            && self.max_y.is_finite()
    }
}

/// One table slot: a key and its value; `used` tells empty slots apart.
#[derive(Clone, Copy, Debug, Default)]
struct TableSlot {
    key: u64,
    value: u32,
    used: bool,
}

/// An open-addressing hash table from grid key to a number, linear probing, at most half full.
#[derive(Clone)]
struct CellTable {
    slots: Vec<TableSlot>,
    /// How many slots are used.
    len: usize,
    /// `64 - log2(slots.len())`: the hash is the top bits of a multiplicative scramble.
    shift: u32,
}

impl CellTable {
    fn new(pairs: &[(u64, u32)]) -> CellTable {
        let size = (pairs.len() * 2).next_power_of_two().max(8);
        let mut table = CellTable {
            slots: vec![TableSlot::default(); size],
            len: pairs.len(),
            shift: 64 - size.trailing_zeros(),
        };
        let mask = size - 1;
        for &(key, value) in pairs {
            let mut i = table.home(key);
            while table.slots[i].used {
                i = (i + 1) & mask;
            }
            table.slots[i] = TableSlot {
                key,
                value,
                used: true,
            };
        }
        table
    }

    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn get(&self, key: u64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if !s.used {
                return None;
            }
            if s.key == key {
                return Some(s.value);
            }
            i = (i + 1) & mask;
        }
    }
}

/// The table key of grid cell (row `y`, column `x`).
fn cell_key(y: i64, x: i64) -> u64 {
    (u64::from(y as i32 as u32) << 32) | u64::from(x as i32 as u32)
}

/// Cells per degree at `level`.
fn level_scale(level: i32) -> f64 {
    2f64.powi(level)
}

/// The finest level at which the area's polygon boxes cover at most [`MAX_CELLS_PER_ZONE`]
/// cells, or `None` when the area belongs in the always-tested list: it is too large, or it has
/// coordinates [`Area::from_geojson`] would refuse, for which the grid's reasoning does not hold.
fn grid_level(area: &Area, polygons: &[PolygonHeader]) -> Option<i32> {
    let well_formed = area.polygons.iter().flat_map(|p| &p.rings).all(|r| {
        r.first() == r.last()
            && r.iter()
                .all(|q| (-180.0..=180.0).contains(&q[0]) && (-90.0..=90.0).contains(&q[1]))
    });
    if !well_formed {
        return None;
    }
    (COARSEST_LEVEL..=FINEST_LEVEL).rev().find(|&level| {
        let scale = level_scale(level);
        let span = |lo: f64, hi: f64| ((hi * scale).floor() - (lo * scale).floor() + 1.0) as u64;
        let cells: u64 = polygons
            .iter()
            .filter(|h| h.bounds.is_finite())
            .map(|h| {
                let b = h.bounds;
                span(b.min_x, b.max_x) * span(b.min_y, b.max_y)
            })
            .sum();
        cells <= MAX_CELLS_PER_ZONE
    })
}

/// Longitude in the frame of an antimeridian-crossing polygon: negative longitudes move east.
fn frame_x(crossing: bool, lon: f64) -> f64 {
    if crossing && lon < 0.0 {
        lon + 360.0
    } else {
        lon
    }
}

/// The edge from `a` to `b` as `[x0, y0, x1, y1]` in the polygon's frame.
fn frame_edge(crossing: bool, a: [f64; 2], b: [f64; 2]) -> [f64; 4] {
    [frame_x(crossing, a[0]), a[1], frame_x(crossing, b[0]), b[1]]
}

/// Whether a polygon crosses the antimeridian: a ring jumps by more than 180° of longitude.
/// A jump from -180 to 180 (or back) is not a crossing but an edge around the whole world, as
/// in a box from -180 to 180, since read as a crossing it would have no length.
fn crosses_antimeridian(p: &Polygon) -> bool {
    p.rings.iter().any(|r| {
        r.windows(2).any(|w| {
            let (a, b) = (w[0][0], w[1][0]);
            (b - a).abs() > 180.0 && !(a.abs() == 180.0 && b.abs() == 180.0)
        })
    })
}

/// The edge with its endpoints ordered by latitude, so that an edge shared by two polygons
/// gives both the same crossing point whatever their windings.
fn canonical(e: [f64; 4]) -> [f64; 4] {
    let [x0, y0, x1, y1] = e;
    if y0 > y1 { [x1, y1, x0, y0] } else { e }
}

/// Whether the eastward ray from `(px, py)` crosses the canonical edge, by the half-open rule:
/// the edge straddles the latitude (`y0 <= py < y1`) and the point is west of it.
#[inline(always)]
fn crosses(e: &[f64; 4], px: f64, py: f64) -> bool {
    let [x0, y0, x1, y1] = *e;
    (y0 > py) != (y1 > py) && (px - x0) * (y1 - y0) < (x1 - x0) * (py - y0)
}

fn parse_polygon(v: &Value, path: &str, budget: &mut usize) -> Result<Polygon, GeometryError> {
    let Some(list) = v.as_array() else {
        return Err(GeometryError::new(path, "must be an array of linear rings"));
    };
    if list.is_empty() {
        return Err(GeometryError::new(path, "a polygon needs an exterior ring"));
    }
    let mut rings = Vec::with_capacity(list.len());
    for (r, ring) in list.iter().enumerate() {
        let ring_path = || format!("{path}[{r}]");
        let Some(positions) = ring.as_array() else {
            return Err(GeometryError::new(
                ring_path(),
                "must be an array of positions (a linear ring)",
            ));
        };
        if positions.len() > MAX_RING_POSITIONS {
            return Err(GeometryError::new(
                ring_path(),
                format!(
                    "has {} positions, more than the limit of {MAX_RING_POSITIONS}",
                    positions.len()
                ),
            ));
        }
        if positions.len() > *budget {
            return Err(GeometryError::new(
                ring_path(),
                format!("the area has more than the limit of {MAX_AREA_POSITIONS} positions"),
            ));
        }
        *budget -= positions.len();
        let mut parsed = Vec::with_capacity(positions.len());
        for (i, p) in positions.iter().enumerate() {
            parsed.push(parse_position(p, &format!("{path}[{r}][{i}]"))?);
        }
        if parsed.len() < 4 {
            return Err(GeometryError::new(
                ring_path(),
                format!(
                    "a linear ring needs at least 4 positions, found {}",
                    parsed.len()
                ),
            ));
        }
        if parsed.first() != parsed.last() {
            return Err(GeometryError::new(
                ring_path(),
                "the ring is not closed: its last position must equal its first",
            ));
        }
        rings.push(parsed);
    }
    let polygon = Polygon { rings };
    validate_polygon(&polygon, path)?;
    Ok(polygon)
}

fn parse_position(v: &Value, path: &str) -> Result<[f64; 2], GeometryError> {
    let Some(a) = v.as_array() else {
        return Err(GeometryError::new(
            path,
            "must be a position: an array [lon, lat] of numbers",
        ));
    };
    if a.first().is_some_and(Value::is_array) {
        return Err(GeometryError::new(
            path,
            "is nested one level too deep: expected a position [lon, lat]",
        ));
    }
    if !(2..=3).contains(&a.len()) {
        return Err(GeometryError::new(
            path,
            format!("a position has 2 or 3 numbers, found {}", a.len()),
        ));
    }
    let mut numbers = [0.0; 3];
    for (k, x) in a.iter().enumerate() {
        match x.as_f64() {
            Some(f) if f.is_finite() => numbers[k] = f,
            _ => {
                return Err(GeometryError::new(
                    format!("{path}[{k}]"),
                    "must be a finite number",
                ));
            }
        }
    }
    let [lon, lat, _] = numbers;
    if !(-180.0..=180.0).contains(&lon) {
        return Err(GeometryError::new(
            format!("{path}[0]"),
            format!("longitude {lon} is outside [-180, 180]"),
        ));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(GeometryError::new(
            format!("{path}[1]"),
            format!("latitude {lat} is outside [-90, 90]"),
        ));
    }
    Ok([lon, lat])
}

/// Checks the shape of a polygon whose rings are already closed and in range.
fn validate_polygon(p: &Polygon, path: &str) -> Result<(), GeometryError> {
    let crossing = crosses_antimeridian(p);
    let mut exterior: Vec<[f64; 2]> = Vec::new();
    for (r, ring) in p.rings.iter().enumerate() {
        let ring_path = || format!("{path}[{r}]");
        // The ring in the frame without repeated consecutive positions and without the closing
        // position, with each vertex's index in the input for error messages.
        let mut pts: Vec<[f64; 2]> = Vec::with_capacity(ring.len());
        let mut index: Vec<usize> = Vec::with_capacity(ring.len());
        for (i, q) in ring.iter().enumerate() {
            let f = [frame_x(crossing, q[0]), q[1]];
            if pts.last() != Some(&f) {
                pts.push(f);
                index.push(i);
            }
        }
        if pts.len() > 1 {
            pts.pop();
            index.pop();
        }
        let n = pts.len();
        if n < 3 {
            return Err(GeometryError::new(
                ring_path(),
                "the ring has zero area: fewer than 3 distinct positions",
            ));
        }
        for i in 0..n {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            if crossing && (b[0] - a[0]).abs() > 180.0 {
                return Err(GeometryError::new(
                    format!("{path}[{r}][{}]", index[i]),
                    "the next position is more than 180° of longitude away even when the ring \
                     is read as crossing the antimeridian",
                ));
            }
        }
        // Twice the area, and how far the ring strays from the line through its first vertex and
        // the vertex farthest from it; below `noise` either is rounding error.
        let o = pts[0];
        let far = pts
            .iter()
            .copied()
            .max_by(|a, b| {
                let d = |q: &[f64; 2]| (q[0] - o[0]).powi(2) + (q[1] - o[1]).powi(2);
                d(a).total_cmp(&d(b))
            })
            .unwrap_or(o);
        let (mut twice_area, mut stray, mut extent) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            twice_area += (a[0] - o[0]) * (b[1] - o[1]) - (b[0] - o[0]) * (a[1] - o[1]);
            stray = stray.max(orient(o, far, a).abs());
            extent = extent.max((a[0] - o[0]).abs()).max((a[1] - o[1]).abs());
        }
        let noise = n as f64 * 16.0 * f64::EPSILON * extent * extent;
        if stray <= noise {
            return Err(GeometryError::new(
                ring_path(),
                "the ring has zero area: its positions lie on one line",
            ));
        }
        if let Some((i, j)) = self_intersection(&pts) {
            return Err(GeometryError::new(
                ring_path(),
                format!(
                    "the ring touches itself: the edge from position {} meets the edge from \
                     position {}",
                    index[i], index[j]
                ),
            ));
        }
        if twice_area.abs() <= noise {
            return Err(GeometryError::new(ring_path(), "the ring has zero area"));
        }
        if r == 0 {
            exterior = pts;
        } else {
            let q = pts[0];
            let m = exterior.len();
            let mut inside = false;
            let mut on_edge = false;
            for i in 0..m {
                let (a, b) = (exterior[i], exterior[(i + 1) % m]);
                inside ^= crosses(&canonical([a[0], a[1], b[0], b[1]]), q[0], q[1]);
                on_edge |= orient(a, b, q) == 0.0 && within_box(a, b, q);
            }
            if !(inside || on_edge) {
                return Err(GeometryError::new(
                    ring_path(),
                    "the hole is not inside the exterior ring",
                ));
            }
        }
    }
    Ok(())
}

/// Two edges of an open ring (edge `i` runs from `pts[i]` to the next) that touch where they
/// should not: anywhere for edges that are not neighbours, beyond their shared vertex for
/// neighbours. Edges are swept in order of their western end, so typical rings cost about
/// n log n.
fn self_intersection(pts: &[[f64; 2]]) -> Option<(usize, usize)> {
    let n = pts.len();
    let seg = |i: usize| (pts[i], pts[(i + 1) % n]);
    let west = |i: usize| pts[i][0].min(pts[(i + 1) % n][0]);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| west(a).total_cmp(&west(b)));
    for (k, &i) in order.iter().enumerate() {
        let (a, b) = seg(i);
        let east = a[0].max(b[0]);
        for &j in &order[k + 1..] {
            if west(j) > east {
                break;
            }
            let (c, d) = seg(j);
            let bad = if (i + 1) % n == j {
                folds_back(a, b, d)
            } else if (j + 1) % n == i {
                folds_back(c, d, b)
            } else {
                segments_touch(a, b, c, d)
            };
            if bad {
                return Some((i.min(j), i.max(j)));
            }
        }
    }
    None
}

/// Whether the edges `p → shared` and `shared → q` overlap beyond their shared vertex.
fn folds_back(p: [f64; 2], shared: [f64; 2], q: [f64; 2]) -> bool {
    let dot = (p[0] - shared[0]) * (q[0] - shared[0]) + (p[1] - shared[1]) * (q[1] - shared[1]);
    orient(p, shared, q) == 0.0 && dot > 0.0
}

/// Whether the closed segments `ab` and `cd` share a point.
fn segments_touch(a: [f64; 2], b: [f64; 2], c: [f64; 2], d: [f64; 2]) -> bool {
    let (d1, d2) = (orient(c, d, a), orient(c, d, b));
    let (d3, d4) = (orient(a, b, c), orient(a, b, d));
    let opposite = |u: f64, v: f64| (u > 0.0 && v < 0.0) || (u < 0.0 && v > 0.0);
    if opposite(d1, d2) && opposite(d3, d4) {
        return true;
    }
    (d1 == 0.0 && within_box(c, d, a))
        || (d2 == 0.0 && within_box(c, d, b))
        || (d3 == 0.0 && within_box(a, b, c))
        || (d4 == 0.0 && within_box(a, b, d))
}

/// Twice the signed area of the triangle `abc`: positive when `c` is left of `a → b`.
fn orient(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

/// Whether `q` lies in the box spanned by `a` and `b`.
fn within_box(a: [f64; 2], b: [f64; 2], q: [f64; 2]) -> bool {
    a[0].min(b[0]) <= q[0]
        && q[0] <= a[0].max(b[0])
        && a[1].min(b[1]) <= q[1]
        && q[1] <= a[1].max(b[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(v: Value) -> Area {
        match Area::from_geojson(&v) {
            Ok(a) => a,
            Err(e) => panic!("{v} was refused: {e}"),
        }
    }

    /// A closed counter-clockwise box ring `[lon, lat]`.
    fn box_ring(west: f64, south: f64, east: f64, north: f64) -> Value {
        json!([
            [west, south],
            [east, south],
            [east, north],
            [west, north],
            [west, south]
        ])
    }

    fn polygon(rings: Vec<Value>) -> Value {
        json!({"type": "Polygon", "coordinates": rings})
    }

    /// Checks `(lat, lon, expected)` cases against the area and against an index of it.
    fn check_points(a: &Area, cases: &[(f64, f64, bool)]) {
        let index = ZoneIndex::build([(7, a)]);
        for &(lat, lon, expected) in cases {
            assert_eq!(
                a.contains(lat, lon),
                expected,
                "Area::contains({lat}, {lon})"
            );
            let mut out = Vec::new();
            index.containing(
                (lat * 1e6).round() as i32,
                (lon * 1e6).round() as i32,
                &mut out,
            );
            let want: &[u32] = if expected { &[7] } else { &[] };
            assert_eq!(out, want, "ZoneIndex::containing({lat}, {lon})");
            if expected {
                assert!(
                    a.bbox().contains(lat, lon),
                    "bbox of a point inside ({lat}, {lon})"
                );
            }
        }
    }

    #[test]
    fn zone_kinds_round_trip_through_their_names() {
        for k in ZoneKind::ALL {
            assert_eq!(ZoneKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).expect("a kind serializes");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ZoneKind>(&json).ok(), Some(k));
        }
        assert_eq!(ZoneKind::parse("NoParking"), None);
        assert_eq!(ZoneKind::parse(""), None);
    }

    #[test]
    fn a_point_in_a_hole_is_outside() {
        let a = area(polygon(vec![
            box_ring(0.0, 0.0, 10.0, 10.0),
            box_ring(4.0, 4.0, 6.0, 6.0),
        ]));
        check_points(
            &a,
            &[
                (2.0, 2.0, true),
                (5.0, 5.0, false),
                (5.0, 3.9, true),
                (5.0, 6.1, true),
                (9.9, 9.9, true),
                (5.0, 12.0, false),
                (-0.1, 5.0, false),
            ],
        );
    }

    #[test]
    fn both_windings_give_the_same_answers() {
        let ccw = box_ring(0.0, 0.0, 3.0, 2.0);
        let mut cw = ccw.clone();
        cw.as_array_mut().expect("a ring is an array").reverse();
        let (a, b) = (area(polygon(vec![ccw])), area(polygon(vec![cw])));
        for i in -5..40 {
            for j in -5..30 {
                let (lat, lon) = (f64::from(j) * 0.1, f64::from(i) * 0.1);
                assert_eq!(a.contains(lat, lon), b.contains(lat, lon), "({lat}, {lon})");
            }
        }
        // A clockwise exterior with a counter-clockwise hole, the reverse of RFC 7946's advice.
        let mut hole = box_ring(1.0, 0.5, 2.0, 1.5);
        hole.as_array_mut().expect("a ring is an array").reverse();
        let mut exterior = box_ring(0.0, 0.0, 3.0, 2.0);
        exterior
            .as_array_mut()
            .expect("a ring is an array")
            .reverse();
        let c = area(polygon(vec![exterior, hole]));
        check_points(
            &c,
            &[(1.0, 1.5, false), (0.25, 1.5, true), (1.0, 2.5, true)],
        );
    }

    #[test]
    fn a_multipolygon_contains_the_points_of_each_polygon() {
        let a = area(json!({
            "type": "MultiPolygon",
            "coordinates": [
                [box_ring(0.0, 0.0, 1.0, 1.0)],
                [box_ring(5.0, 5.0, 6.0, 6.0), box_ring(5.4, 5.4, 5.6, 5.6)],
            ],
        }));
        check_points(
            &a,
            &[
                (0.5, 0.5, true),
                (5.2, 5.2, true),
                (5.5, 5.5, false),
                (3.0, 3.0, false),
            ],
        );
        let b = a.bbox();
        assert_eq!((b.south, b.west, b.north, b.east), (0.0, 0.0, 6.0, 6.0));
    }

    #[test]
    fn boundary_points_belong_to_the_zone_north_east_of_them() {
        let a = area(polygon(vec![box_ring(0.0, 0.0, 1.0, 1.0)]));
        check_points(
            &a,
            &[
                (0.5, 0.0, true),  // west edge
                (0.0, 0.5, true),  // south edge
                (0.5, 1.0, false), // east edge
                (1.0, 0.5, false), // north edge
                (0.0, 0.0, true),  // south-west corner
                (0.0, 1.0, false), // south-east corner
                (1.0, 0.0, false), // north-west corner
                (1.0, 1.0, false), // north-east corner
            ],
        );
        // Two zones sharing an edge never both claim a point on it.
        let west = area(polygon(vec![box_ring(0.0, 0.0, 1.0, 1.0)]));
        let east = area(polygon(vec![box_ring(1.0, 0.0, 2.0, 1.0)]));
        let index = ZoneIndex::build([(1, &west), (2, &east)]);
        let mut out = Vec::new();
        index.containing(500_000, 1_000_000, &mut out);
        assert_eq!(out, [2]);
        // A slanted edge shared by two triangles.
        let lower = area(polygon(vec![json!([[0, 0], [2, 0], [2, 1], [0, 0]])]));
        let upper = area(polygon(vec![json!([[0, 0], [2, 1], [0, 1], [0, 0]])]));
        for k in 1..20 {
            let (lat, lon) = (f64::from(k) * 0.05, f64::from(k) * 0.1);
            assert!(
                lower.contains(lat, lon) != upper.contains(lat, lon),
                "({lat}, {lon})"
            );
        }
    }

    #[test]
    fn a_polygon_across_the_antimeridian_contains_points_on_both_sides() {
        let a = area(polygon(vec![json!([
            [179.9, -1.0],
            [-179.9, -1.0],
            [-179.9, 1.0],
            [179.9, 1.0],
            [179.9, -1.0]
        ])]));
        check_points(
            &a,
            &[
                (0.0, 179.95, true),
                (0.0, -179.95, true),
                (0.0, 180.0, true),
                (0.0, -180.0, true),
                (0.5, -179.91, true),
                (0.0, 0.0, false),
                (0.0, 179.8, false),
                (0.0, -179.8, false),
                (1.5, 179.95, false),
            ],
        );
        let b = a.bbox();
        assert_eq!(
            (b.south, b.west, b.north, b.east),
            (-1.0, 179.9, 1.0, -179.9)
        );
        assert!(b.contains(0.0, 179.95) && b.contains(0.0, -179.95) && b.contains(0.0, 180.0));
        assert!(!b.contains(0.0, 0.0) && !b.contains(0.0, 179.0) && !b.contains(2.0, 180.0));

        // A triangle whose crossing edge is not axis-aligned, with a hole on the western side.
        let t = area(polygon(vec![
            json!([[179.0, -2.0], [-178.0, 0.0], [179.0, 2.0], [179.0, -2.0]]),
            json!([
                [-179.5, -0.1],
                [-179.3, -0.1],
                [-179.3, 0.1],
                [-179.5, 0.1],
                [-179.5, -0.1]
            ]),
        ]));
        check_points(
            &t,
            &[
                (0.0, 179.5, true),
                (0.0, -178.5, true),
                (0.0, -179.4, false),
                (0.0, -177.9, false),
                (1.9, -178.5, false),
            ],
        );
    }

    #[test]
    fn an_area_cut_at_the_antimeridian_has_a_crossing_box() {
        let a = area(json!({"type": "MultiPolygon", "coordinates": [
            [box_ring(170.0, -20.0, 180.0, -10.0)],
            [box_ring(-180.0, -20.0, -175.0, -15.0)],
        ]}));
        let b = a.bbox();
        assert_eq!(
            (b.south, b.west, b.north, b.east),
            (-20.0, 170.0, -10.0, -175.0)
        );
        check_points(
            &a,
            &[
                (-16.0, 175.0, true),
                (-16.0, -176.0, true),
                (-16.0, 0.0, false),
            ],
        );
        // Far-apart polygons in one hemisphere keep an ordinary box.
        let c = area(json!({"type": "MultiPolygon", "coordinates": [
            [box_ring(-60.0, 0.0, -50.0, 1.0)],
            [box_ring(50.0, 0.0, 60.0, 1.0)],
        ]}));
        let b = c.bbox();
        assert_eq!((b.west, b.east), (-60.0, 60.0));
        // ...unless the short way round is across the antimeridian.
        let d = area(json!({"type": "MultiPolygon", "coordinates": [
            [box_ring(-170.0, 0.0, -160.0, 1.0)],
            [box_ring(100.0, 0.0, 110.0, 1.0)],
        ]}));
        let b = d.bbox();
        assert_eq!((b.west, b.east), (100.0, -160.0));
    }

    /// Checks that `v` is refused at `path` with a reason containing `reason`.
    fn check_refused(v: Value, path: &str, reason: &str) {
        match Area::from_geojson(&v) {
            Ok(_) => panic!("{v} was accepted, expected {path}: {reason}"),
            Err(e) => {
                assert_eq!(e.path, path, "{v}: {e}");
                assert!(e.reason.contains(reason), "{v}: {e}, expected {reason:?}");
            }
        }
    }

    #[test]
    fn invalid_geometries_are_refused_naming_the_place() {
        let square = box_ring(0.0, 0.0, 1.0, 1.0);
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([1, 2]), "geometry", "JSON object"),
            (json!({"coordinates": [square]}), "type", "missing"),
            (
                json!({"type": 3, "coordinates": [square]}),
                "type",
                "string",
            ),
            (
                json!({"type": "Point", "coordinates": [0, 0]}),
                "type",
                "\"Point\"",
            ),
            (
                json!({"type": "GeometryCollection", "geometries": []}),
                "type",
                "\"Polygon\" or \"MultiPolygon\"",
            ),
            (
                json!({"type": "Feature", "geometry": polygon(vec![square.clone()])}),
                "type",
                "Feature",
            ),
            (json!({"type": "Polygon"}), "coordinates", "missing"),
            (
                json!({"type": "Polygon", "coordinates": {}}),
                "coordinates",
                "array of linear rings",
            ),
            (
                json!({"type": "Polygon", "coordinates": []}),
                "coordinates",
                "exterior ring",
            ),
            (
                json!({"type": "MultiPolygon", "coordinates": []}),
                "coordinates",
                "at least one",
            ),
            (
                json!({"type": "MultiPolygon", "coordinates": 5}),
                "coordinates",
                "array of polygons",
            ),
            // One level too shallow: a Polygon given a ring's positions.
            (
                json!({"type": "Polygon", "coordinates": [[0, 0], [1, 0], [1, 1], [0, 0]]}),
                "coordinates[0][0]",
                "must be a position",
            ),
            // One level too deep: a Polygon given a MultiPolygon's coordinates.
            (
                json!({"type": "Polygon", "coordinates": [[square.clone()]]}),
                "coordinates[0][0]",
                "nested one level too deep",
            ),
            // A MultiPolygon given a Polygon's coordinates.
            (
                json!({"type": "MultiPolygon", "coordinates": [square.clone()]}),
                "coordinates[0][0][0]",
                "must be a position",
            ),
            (
                polygon(vec![json!(7)]),
                "coordinates[0]",
                "array of positions",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0.5]])]),
                "coordinates[0]",
                "not closed",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 0], [0, 0]])]),
                "coordinates[0]",
                "at least 4",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 0], [1, 91], [0, 0]])]),
                "coordinates[0][2][1]",
                "latitude 91",
            ),
            (
                polygon(vec![json!([[0, 0], [181, 0], [1, 1], [0, 0]])]),
                "coordinates[0][1][0]",
                "longitude 181",
            ),
            (
                polygon(vec![json!([[0, 0], [1, "0"], [1, 1], [0, 0]])]),
                "coordinates[0][1][1]",
                "number",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 0], [null, 1], [0, 0]])]),
                "coordinates[0][2][0]",
                "number",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 0], [1, 1, "high"], [0, 0]])]),
                "coordinates[0][2][2]",
                "number",
            ),
            (
                polygon(vec![json!([[0, 0], [1], [1, 1], [0, 0]])]),
                "coordinates[0][1]",
                "found 1",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 0, 0, 0], [1, 1], [0, 0]])]),
                "coordinates[0][1]",
                "found 4",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 1], [2, 2], [0, 0]])]),
                "coordinates[0]",
                "zero area",
            ),
            (
                polygon(vec![json!([[0, 0], [1, 1], [1, 1], [0, 0]])]),
                "coordinates[0]",
                "zero area",
            ),
            (
                polygon(vec![json!([[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]])]),
                "coordinates[0]",
                "edge from position 0 meets the edge from position 2",
            ),
            // A ring that touches itself at a vertex.
            (
                polygon(vec![json!([
                    [0, 0],
                    [2, 0],
                    [1, 1],
                    [2, 2],
                    [0, 2],
                    [1, 1],
                    [0, 0]
                ])]),
                "coordinates[0]",
                "touches itself",
            ),
            // A spike going out and back along the same line.
            (
                polygon(vec![json!([
                    [0, 0],
                    [2, 0],
                    [3, 0],
                    [2, 0],
                    [2, 2],
                    [0, 0]
                ])]),
                "coordinates[0]",
                "touches itself",
            ),
            (
                polygon(vec![square.clone(), box_ring(5.0, 5.0, 6.0, 6.0)]),
                "coordinates[1]",
                "hole is not inside",
            ),
            (
                polygon(vec![
                    square.clone(),
                    json!([[0.2, 0.2], [0.4, 0.2], [0.2, 0.2], [0.2, 0.2]]),
                ]),
                "coordinates[1]",
                "zero area",
            ),
            (
                json!({"type": "MultiPolygon", "coordinates": [
                    [square.clone()],
                    [json!([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0.5]])],
                ]}),
                "coordinates[1][0]",
                "not closed",
            ),
            (
                json!({"type": "MultiPolygon", "coordinates": [[square.clone()], []]}),
                "coordinates[1]",
                "exterior ring",
            ),
            // Still more than 180° apart after unwrapping across the antimeridian.
            (
                polygon(vec![json!([[170, 0], [-170, 0], [5, 1], [170, 0]])]),
                "coordinates[0][1]",
                "more than 180°",
            ),
        ];
        for (v, path, reason) in cases {
            check_refused(v, path, reason);
        }
    }

    #[test]
    fn oversized_geometries_are_refused() {
        let ring = |n: usize| {
            let mut r: Vec<Value> = (0..n - 1)
                .map(|i| {
                    let a = i as f64 / (n - 1) as f64 * std::f64::consts::TAU;
                    json!([a.cos(), a.sin()])
                })
                .collect();
            r.push(r[0].clone());
            Value::Array(r)
        };
        assert!(Area::from_geojson(&polygon(vec![ring(MAX_RING_POSITIONS)])).is_ok());
        check_refused(
            polygon(vec![ring(MAX_RING_POSITIONS + 1)]),
            "coordinates[0]",
            "more than the limit",
        );
        let many: Vec<Value> = (0..=MAX_POLYGONS)
            .map(|i| json!([box_ring(i as f64 * 0.1, 0.0, i as f64 * 0.1 + 0.05, 0.05)]))
            .collect();
        check_refused(
            json!({"type": "MultiPolygon", "coordinates": many}),
            "coordinates",
            "1001 polygons",
        );
        let big: Vec<Value> = (0..11)
            .map(|i| {
                let mut r = ring(MAX_RING_POSITIONS);
                for q in r.as_array_mut().expect("a ring is an array") {
                    q[0] = json!(q[0].as_f64().expect("a number") + 3.0 * f64::from(i));
                }
                json!([r])
            })
            .collect();
        check_refused(
            json!({"type": "MultiPolygon", "coordinates": big}),
            "coordinates[10][0]",
            "100000 positions",
        );
    }

    #[test]
    fn geojson_round_trips() {
        let inputs = [
            polygon(vec![
                box_ring(0.5, 0.25, 10.5, 10.25),
                box_ring(4.5, 4.5, 6.5, 6.5),
            ]),
            json!({"type": "MultiPolygon", "coordinates": [[box_ring(0.5, 0.5, 1.5, 1.5)]]}),
            json!({"type": "MultiPolygon", "coordinates": [
                [box_ring(126.97, 37.55, 126.98, 37.56)],
                [
                    box_ring(127.01, 37.51, 127.02, 37.52),
                    box_ring(127.012, 37.512, 127.014, 37.514),
                ],
            ]}),
            polygon(vec![json!([
                [179.9, -1.5],
                [-179.9, -1.5],
                [-179.9, 1.5],
                [179.9, 1.5],
                [179.9, -1.5]
            ])]),
        ];
        for v in inputs {
            let a = area(v.clone());
            assert_eq!(a.to_geojson(), v);
            assert_eq!(Area::from_geojson(&a.to_geojson()), Ok(a));
        }
        let a = area(polygon(vec![box_ring(0.5, 0.5, 1.5, 1.5)]));
        assert!(a.single);
        assert_eq!(a.to_geojson()["type"], "Polygon");
        // Integers and altitudes are read; they come back as plain `[lon, lat]` numbers.
        let b = area(polygon(vec![json!([
            [0, 0, 5],
            [1, 0, 5],
            [1, 1, 5],
            [0, 0, 5]
        ])]));
        assert_eq!(b.polygons[0].rings[0][1], [1.0, 0.0]);
        assert_eq!(Area::from_geojson(&b.to_geojson()), Ok(b));
    }

    /// A small deterministic PRNG (xorshift64) for the randomized tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn between(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.unit()
        }
    }

    /// A star-shaped polygon with vertices on the microdegree grid (so test points can land
    /// exactly on vertices), longitudes wrapped into [-180, 180], maybe with a hole, maybe wound
    /// clockwise. `None` when rounding made it invalid.
    fn star(rng: &mut XorShift, lat: f64, lon: f64, radius: f64, vertices: usize) -> Option<Area> {
        let with_hole = vertices >= 6 && rng.below(3) == 0;
        let step = std::f64::consts::TAU / vertices as f64;
        let e6 = |lat: f64, lon: f64| {
            let mut x = (lon * 1e6).round() as i64;
            if x > 180_000_000 {
                x -= 360_000_000;
            } else if x < -180_000_000 {
                x += 360_000_000;
            }
            let y = ((lat * 1e6).round() as i64).clamp(-90_000_000, 90_000_000);
            json!([x as f64 / 1e6, y as f64 / 1e6])
        };
        let mut exterior: Vec<Value> = (0..vertices)
            .map(|i| {
                let a = (i as f64 + rng.between(0.0, 0.8)) * step;
                let r = radius * rng.between(0.35, 1.0);
                e6(lat + r * a.sin(), lon + r * a.cos())
            })
            .collect();
        exterior.push(exterior[0].clone());
        if rng.below(2) == 0 {
            exterior.reverse();
        }
        let mut rings = vec![Value::Array(exterior)];
        if with_hole {
            let h = radius / 8.0;
            let mut hole: Vec<Value> = [(0.0, h), (-h, -h), (h, -h), (0.0, h)]
                .into_iter()
                .map(|(dx, dy)| e6(lat + dy, lon + dx))
                .collect();
            if rng.below(2) == 0 {
                hole.reverse();
            }
            rings.push(Value::Array(hole));
        }
        Area::from_geojson(&polygon(rings)).ok()
    }

    /// The e6 points on and right around the area's vertices and edge midpoints.
    fn points_near(a: &Area, out: &mut Vec<(i32, i32)>) {
        for ring in a.polygons.iter().flat_map(|p| &p.rings) {
            for w in ring.windows(2) {
                let e6 = |d: f64| (d * 1e6).round() as i32;
                let (x, y) = (e6(w[0][0]), e6(w[0][1]));
                let mid = (e6((w[0][0] + w[1][0]) / 2.0), e6((w[0][1] + w[1][1]) / 2.0));
                for (dy, dx) in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1)] {
                    out.push((y + dy, x + dx));
                    out.push((mid.0 + dy, mid.1 + dx));
                }
            }
        }
    }

    /// Checks that the index answers exactly like testing every zone, for every point; returns
    /// the index and how many (point, zone) hits there were.
    fn check_index_against_brute_force(
        zones: &[(u32, Area)],
        points: &[(i32, i32)],
    ) -> (ZoneIndex, usize) {
        let index = ZoneIndex::build(zones.iter().map(|(s, a)| (*s, a)));
        assert_eq!(index.len(), zones.len());
        let boxes: Vec<ZoneBBox> = zones.iter().map(|(_, a)| a.bbox()).collect();
        let mut hits = 0;
        let mut out = vec![u32::MAX];
        for &(lat_e6, lon_e6) in points {
            let (lat, lon) = (f64::from(lat_e6) / 1e6, f64::from(lon_e6) / 1e6);
            // Skipping the exact test outside a zone's box keeps this fast in debug builds; a box
            // too small to hold its zone shows up as a zone the index reports and this misses.
            let mut want: Vec<u32> = Vec::new();
            for ((slot, a), b) in zones.iter().zip(&boxes) {
                if b.contains(lat, lon) && a.contains(lat, lon) {
                    want.push(*slot);
                }
            }
            want.sort_unstable();
            want.dedup();
            out.truncate(1);
            index.containing(lat_e6, lon_e6, &mut out);
            assert_eq!(out[0], u32::MAX, "the output was cleared");
            assert_eq!(out[1..], want[..], "zones containing ({lat}, {lon})");
            hits += want.len();
        }
        (index, hits)
    }

    #[test]
    fn the_index_agrees_with_testing_every_zone_in_a_city() {
        let mut rng = XorShift(0x5EED_CAFE_F00D_0001);
        let (lat0, lon0) = (37.55, 126.98);
        let mut zones = Vec::new();
        for _ in 0..1000 {
            let (lat, lon) = (
                lat0 + rng.between(-0.03, 0.03),
                lon0 + rng.between(-0.03, 0.03),
            );
            let vertices = 3 + rng.below(12) as usize;
            let radius = rng.between(0.0005, 0.003);
            if let Some(a) = star(&mut rng, lat, lon, radius, vertices) {
                zones.push((rng.below(800) as u32, a));
            }
        }
        for _ in 0..2 {
            let (lat, lon) = (
                lat0 + rng.between(-0.01, 0.01),
                lon0 + rng.between(-0.01, 0.01),
            );
            let radius = rng.between(0.015, 0.03);
            let a = star(&mut rng, lat, lon, radius, 200).expect("a large star");
            zones.push((rng.below(800) as u32, a));
        }
        zones.push((
            900,
            star(&mut rng, lat0, lon0, 5.0, 100).expect("a country"),
        ));
        let world = area(polygon(vec![box_ring(-180.0, -89.0, 180.0, 89.0)]));
        zones.push((901, world));
        assert!(
            zones.len() > 950,
            "only {} random zones were valid",
            zones.len()
        );

        let mut points = Vec::new();
        for _ in 0..5000 {
            let lat = lat0 + rng.between(-0.04, 0.04);
            let lon = lon0 + rng.between(-0.04, 0.04);
            points.push(((lat * 1e6) as i32, (lon * 1e6) as i32));
        }
        for (_, a) in zones.iter().take(60) {
            points_near(a, &mut points);
        }
        let (index, hits) = check_index_against_brute_force(&zones, &points);
        assert!(hits > points.len(), "too few hits to mean anything: {hits}");
        // Both kinds of cell entries were exercised, on several levels.
        let inside = index.entries.iter().filter(|e| e.polygon & 1 == 1).count();
        assert!(
            inside > 100 && inside < index.entries.len() / 2,
            "{inside} of {index:?}"
        );
        assert!(index.levels.len() >= 3, "{index:?}");
    }

    #[test]
    fn the_index_agrees_with_testing_every_zone_across_the_antimeridian() {
        let mut rng = XorShift(0x5EED_CAFE_F00D_0002);
        let mut zones = Vec::new();
        for i in 0..150 {
            let lat = -17.0 + rng.between(-0.1, 0.1);
            let lon = 180.0 + rng.between(-0.1, 0.1);
            let vertices = 3 + rng.below(12) as usize;
            let radius = rng.between(0.001, 0.05);
            if let Some(a) = star(&mut rng, lat, lon, radius, vertices) {
                zones.push((i, a));
            }
        }
        let crossing = zones
            .iter()
            .filter(|(_, a)| a.polygons.iter().any(crosses_antimeridian))
            .count();
        assert!(
            crossing > 20,
            "only {crossing} zones cross the antimeridian"
        );
        let mut points = Vec::new();
        for _ in 0..4000 {
            let lat = -17.0 + rng.between(-0.15, 0.15);
            let mut lon = 180.0 + rng.between(-0.15, 0.15);
            if lon > 180.0 {
                lon -= 360.0;
            }
            points.push(((lat * 1e6) as i32, (lon * 1e6) as i32));
        }
        for lat in -171..=-169 {
            points.push((lat * 100_000, 180_000_000));
            points.push((lat * 100_000, -180_000_000));
        }
        for (_, a) in zones.iter().take(40) {
            points_near(a, &mut points);
        }
        points.retain(|&(_, lon)| (-180_000_000..=180_000_000).contains(&lon));
        let (index, hits) = check_index_against_brute_force(&zones, &points);
        assert!(
            hits > points.len() / 4,
            "too few hits to mean anything: {hits}"
        );
        assert!(
            index.entries.iter().any(|e| e.polygon & 1 == 1),
            "{index:?}"
        );
    }

    #[test]
    fn the_index_agrees_with_testing_every_zone_on_coarse_levels() {
        let mut rng = XorShift(0x5EED_CAFE_F00D_0003);
        let mut zones = Vec::new();
        for i in 0..120 {
            let lat = rng.between(-65.0, 65.0);
            let lon = rng.between(-180.0, 180.0);
            let vertices = 3 + rng.below(40) as usize;
            let radius = rng.between(0.2, 20.0);
            if let Some(a) = star(&mut rng, lat, lon, radius, vertices) {
                zones.push((i, a));
            }
        }
        let world = area(polygon(vec![box_ring(-180.0, -89.0, 180.0, 89.0)]));
        zones.push((1000, world));
        let mut points = Vec::new();
        for _ in 0..4000 {
            let lat = rng.between(-90.0, 90.0);
            let lon = rng.between(-180.0, 180.0);
            points.push(((lat * 1e6) as i32, (lon * 1e6) as i32));
        }
        for (_, a) in zones.iter().take(20) {
            points_near(a, &mut points);
        }
        points.retain(|&(lat, lon)| {
            (-90_000_000..=90_000_000).contains(&lat) && (-180_000_000..=180_000_000).contains(&lon)
        });
        let (index, _) = check_index_against_brute_force(&zones, &points);
        assert_eq!(
            index.unindexed.len(),
            1,
            "only the world is too large for the grid"
        );
        assert!(index.levels.len() > 3, "{index:?}");
    }

    #[test]
    fn hand_built_areas_that_would_be_refused_are_answered_exactly() {
        let open = Area {
            polygons: vec![Polygon {
                rings: vec![vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]],
            }],
            single: true,
        };
        let out_of_range = Area {
            polygons: vec![Polygon {
                rings: vec![vec![[170.0, 0.0], [190.0, 0.0], [190.0, 1.0], [170.0, 0.0]]],
            }],
            single: true,
        };
        let empty = Area {
            polygons: vec![
                Polygon { rings: vec![] },
                Polygon {
                    rings: vec![vec![]],
                },
            ],
            single: false,
        };
        let zones = [(1, open), (2, out_of_range), (3, empty)];
        let mut points = Vec::new();
        for lat in -2..12 {
            for lon in -2..12 {
                points.push((lat * 100_000, lon * 100_000));
                points.push((lat * 100_000, 179_000_000 + lon * 100_000));
            }
        }
        check_index_against_brute_force(&zones, &points);
        assert!(zones[2].1.bbox().south > zones[2].1.bbox().north);
    }

    /// Every point of a stable box lies in the same zones as the point it was found for: its
    /// corners and random points inside, over a city of small and large zones; and most points
    /// of the city get a box.
    #[test]
    fn every_point_of_a_stable_box_lies_in_the_same_zones() {
        let mut rng = XorShift(0x5EED_CAFE_F00D_0007);
        let (lat0, lon0) = (37.55, 126.98);
        let mut zones = Vec::new();
        for i in 0..600 {
            let (lat, lon) = (
                lat0 + rng.between(-0.03, 0.03),
                lon0 + rng.between(-0.03, 0.03),
            );
            let a = if i % 2 == 0 {
                let h = rng.between(0.0002, 0.0008);
                Some(area(polygon(vec![box_ring(
                    lon - h,
                    lat - h,
                    lon + h,
                    lat + h,
                )])))
            } else {
                let (radius, vertices) = (rng.between(0.0005, 0.003), 3 + rng.below(12) as usize);
                star(&mut rng, lat, lon, radius, vertices)
            };
            if let Some(a) = a {
                zones.push((i as u32, a));
            }
        }
        let city = star(&mut rng, lat0, lon0, 0.05, 40).expect("an operating area");
        zones.push((9_000, city));
        let index = ZoneIndex::build(zones.iter().map(|(s, a)| (*s, a)));
        let (mut stable, mut checked) = (0, 0);
        for _ in 0..3_000 {
            let p = (
                ((lat0 + rng.between(-0.04, 0.04)) * 1e6) as i32,
                ((lon0 + rng.between(-0.04, 0.04)) * 1e6) as i32,
            );
            let mut want = Vec::new();
            let Some(b) = index.containing_stable(p.0, p.1, &mut want) else {
                continue;
            };
            stable += 1;
            assert!(b.contains(p.0, p.1), "{b:?} holds its point");
            let mut qs = vec![
                (b.lat[0], b.lon[0]),
                (b.lat[0], b.lon[1]),
                (b.lat[1], b.lon[0]),
                (b.lat[1], b.lon[1]),
            ];
            for _ in 0..8 {
                let f = |[lo, hi]: [i32; 2], t: f64| lo + ((f64::from(hi - lo)) * t) as i32;
                qs.push((
                    f(b.lat, rng.between(0.0, 1.0)),
                    f(b.lon, rng.between(0.0, 1.0)),
                ));
            }
            for q in qs {
                let mut got = Vec::new();
                let again = index.containing_stable(q.0, q.1, &mut got);
                assert_eq!(got, want, "{q:?} in the box {b:?} of {p:?}");
                checked += 1;
                // Within the box, a smaller box still holds the point.
                if let Some(inner) = again {
                    assert!(inner.contains(q.0, q.1));
                }
            }
        }
        // A dense city of slanted edges: many points lie in the bounding box of an edge, or in a
        // cell where the 40-edge operating area (many slabs) is partial, where no box is given.
        assert!(stable > 800, "only {stable} of 3,000 points got a box");
        assert!(checked > 7_000);
        // A zone tested outside the grid (the whole world) leaves no box.
        let world = area(polygon(vec![box_ring(-180.0, -89.0, 180.0, 89.0)]));
        let index = ZoneIndex::build(zones.iter().map(|(s, a)| (*s, a)).chain([(9_001, &world)]));
        let mut out = Vec::new();
        assert_eq!(
            index.containing_stable(37_000_000, 126_000_000, &mut out),
            None
        );
        assert_eq!(out, [9_001]);
    }

    #[test]
    fn lookups_report_each_slot_once_in_ascending_order() {
        let big = area(polygon(vec![box_ring(0.0, 0.0, 1.0, 1.0)]));
        let small = area(polygon(vec![box_ring(0.4, 0.4, 0.6, 0.6)]));
        let other = area(polygon(vec![box_ring(0.45, 0.45, 0.5, 0.5)]));
        let index = ZoneIndex::build([(9, &small), (3, &big), (9, &other), (5, &small)]);
        assert_eq!(index.len(), 4);
        assert!(!index.is_empty());
        let mut out = vec![42, 1];
        index.containing(470_000, 470_000, &mut out);
        assert_eq!(out, [42, 1, 3, 5, 9]);
        out.clear();
        index.containing(100_000, 100_000, &mut out);
        assert_eq!(out, [3]);
        out.clear();
        index.containing(2_000_000, 100_000, &mut out);
        assert!(out.is_empty());
        let none = ZoneIndex::build([]);
        assert!(none.is_empty());
        none.containing(0, 0, &mut out);
        assert!(out.is_empty());
    }
}
