//! Geometry on the sphere at the scale of a city: distances, bounding boxes, the cells of the
//! spatial grid, and line simplification.

/// Mean Earth radius in metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two points given in degrees (haversine).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// A box in degrees: `min_lon, min_lat, max_lon, max_lat` (the GeoJSON / `bbox=` order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BBox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

impl BBox {
    /// Parses `minLon,minLat,maxLon,maxLat`.
    pub fn parse(text: &str) -> Result<BBox, &'static str> {
        let v: Vec<f64> = text
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| "must be four numbers: minLon,minLat,maxLon,maxLat")?;
        let [min_lon, min_lat, max_lon, max_lat] = v[..] else {
            return Err("must be four numbers: minLon,minLat,maxLon,maxLat");
        };
        let b = BBox {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        };
        if !v.iter().all(|x| x.is_finite())
            || !(-180.0..=180.0).contains(&min_lon)
            || !(-180.0..=180.0).contains(&max_lon)
            || !(-90.0..=90.0).contains(&min_lat)
            || !(-90.0..=90.0).contains(&max_lat)
        {
            return Err("coordinates out of range");
        }
        if min_lon > max_lon || min_lat > max_lat {
            return Err("min must not exceed max");
        }
        Ok(b)
    }

    /// The box around a circle of `radius_m` metres centred on `lat, lon` (clamped at the poles).
    pub fn around(lat: f64, lon: f64, radius_m: f64) -> BBox {
        let dlat = (radius_m / EARTH_RADIUS_M).to_degrees();
        let coslat = lat.to_radians().cos().max(1e-6);
        let dlon = (dlat / coslat).min(180.0);
        BBox {
            min_lon: (lon - dlon).max(-180.0),
            min_lat: (lat - dlat).max(-90.0),
            max_lon: (lon + dlon).min(180.0),
            max_lat: (lat + dlat).min(90.0),
        }
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        lat >= self.min_lat && lat <= self.max_lat && lon >= self.min_lon && lon <= self.max_lon
    }
}

/// The spatial grid: cells of `1 / CELLS_PER_DEGREE` degrees (about 550 m of latitude), keyed
/// by one `u64`, so a 500 m `near` query touches about a dozen cells at mid latitudes.
pub const CELLS_PER_DEGREE: f64 = 200.0;

/// The grid cell holding a point given in millionths of a degree.
pub fn cell_of(lat_e6: i32, lon_e6: i32) -> u64 {
    let (y, x) = cell_xy(f64::from(lat_e6) / 1e6, f64::from(lon_e6) / 1e6);
    cell_key(y, x)
}

/// Row and column of the cell holding a point in degrees.
pub fn cell_xy(lat: f64, lon: f64) -> (i64, i64) {
    (
        ((lat + 90.0) * CELLS_PER_DEGREE).floor() as i64,
        ((lon + 180.0) * CELLS_PER_DEGREE).floor() as i64,
    )
}

pub fn cell_key(y: i64, x: i64) -> u64 {
    ((y as u64) << 32) | (x as u64 & 0xffff_ffff)
}

/// Simplifies a line (Douglas–Peucker) so that no dropped point lies further than
/// `tolerance_m` from the kept line. Returns the indices of the kept points, first and last
/// always included. Distances use a local equirectangular projection, exact enough at city scale.
pub fn simplify(points: &[(f64, f64)], tolerance_m: f64) -> Vec<usize> {
    let n = points.len();
    if n <= 2 {
        return (0..n).collect();
    }
    let lat0 = points[0].0.to_radians().cos();
    let proj: Vec<(f64, f64)> = points
        .iter()
        .map(|&(lat, lon)| {
            (
                lon.to_radians() * lat0 * EARTH_RADIUS_M,
                lat.to_radians() * EARTH_RADIUS_M,
            )
        })
        .collect();
    let mut keep = vec![false; n];
    keep[0] = true;
    keep[n - 1] = true;
    let mut stack = vec![(0usize, n - 1)];
    while let Some((a, b)) = stack.pop() {
        if b <= a + 1 {
            continue;
        }
        let (ax, ay) = proj[a];
        let (bx, by) = proj[b];
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = dx * dx + dy * dy;
        let mut worst = (0.0f64, a);
        for (i, &(px, py)) in proj.iter().enumerate().take(b).skip(a + 1) {
            let d = if len2 == 0.0 {
                ((px - ax).powi(2) + (py - ay).powi(2)).sqrt()
            } else {
                let t = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0);
                ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt()
            };
            if d > worst.0 {
                worst = (d, i);
            }
        }
        if worst.0 > tolerance_m {
            keep[worst.1] = true;
            stack.push((a, worst.1));
            stack.push((worst.1, b));
        }
    }
    (0..n).filter(|&i| keep[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let d = distance_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        assert_eq!(distance_m(37.5, 127.0, 37.5, 127.0), 0.0);
    }

    #[test]
    fn bbox_parsing_refuses_garbage() {
        assert!(BBox::parse("126.9,37.5,127.1,37.6").is_ok());
        assert!(BBox::parse("1,2,3").is_err());
        assert!(BBox::parse("a,b,c,d").is_err());
        assert!(BBox::parse("127.1,37.5,126.9,37.6").is_err());
        assert!(BBox::parse("0,0,0,NaN").is_err());
        assert!(BBox::parse("0,0,0,91").is_err());
    }

    #[test]
    fn the_box_around_a_circle_contains_the_circle() {
        let b = BBox::around(37.5, 127.0, 500.0);
        assert!(b.contains(37.5 + 0.0044, 127.0));
        assert!(!b.contains(37.5 + 0.0046, 127.0));
        let east = 127.0 + 0.0056; // ~494 m east at 37.5°N
        assert!(distance_m(37.5, 127.0, 37.5, east) < 500.0);
        assert!(b.contains(37.5, east));
    }

    #[test]
    fn simplify_keeps_corners_and_drops_collinear_points() {
        // An L: east along the equator, then north.
        let mut line: Vec<(f64, f64)> = (0..=10).map(|i| (0.0, f64::from(i) * 0.001)).collect();
        line.extend((1..=10).map(|i| (f64::from(i) * 0.001, 0.01)));
        let kept = simplify(&line, 1.0);
        assert_eq!(kept, vec![0, 10, 20]);
        assert_eq!(
            simplify(&line, 0.01).len(),
            3,
            "collinear points carry no information"
        );
        assert_eq!(simplify(&line[..2], 5.0), vec![0, 1]);
    }
}
