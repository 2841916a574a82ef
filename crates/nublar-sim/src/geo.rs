//! The simulator's side of geometry: positions rounded to what GeoJSON and line protocol
//! carry exactly, and distances and steps in a local equirectangular frame in metres, whose
//! error over a few kilometres is far below a collar's GPS error. Points and polygons are
//! the model's (`nublar_model::geo`), which the processors share.

pub use nublar_model::geo::{
    GeoPoint, is_convex_polygon, is_simple_polygon, polygon_contains, signed_area,
};

/// Degrees are rounded to 1e-7 (about 1 cm), so that GeoJSON and line protocol carry a
/// short decimal that reads back to exactly the same `f64`.
pub(crate) fn quantize_degrees(degrees: f64) -> f64 {
    (degrees * 1e7).round() / 1e7
}

pub(crate) fn quantize(point: GeoPoint) -> GeoPoint {
    GeoPoint {
        lat: quantize_degrees(point.lat),
        lon: quantize_degrees(point.lon),
    }
}

/// A local flat frame in metres around `origin`: x east, y north.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalFrame {
    origin: GeoPoint,
    metres_per_degree_lon: f64,
}

const METRES_PER_DEGREE_LAT: f64 = 111_320.0;

impl LocalFrame {
    pub(crate) fn new(origin: GeoPoint) -> LocalFrame {
        LocalFrame {
            origin,
            metres_per_degree_lon: METRES_PER_DEGREE_LAT * origin.lat.to_radians().cos(),
        }
    }

    pub(crate) fn metres_of(&self, point: GeoPoint) -> (f64, f64) {
        (
            (point.lon - self.origin.lon) * self.metres_per_degree_lon,
            (point.lat - self.origin.lat) * METRES_PER_DEGREE_LAT,
        )
    }

    pub(crate) fn point_at(&self, x: f64, y: f64) -> GeoPoint {
        GeoPoint {
            lat: self.origin.lat + y / METRES_PER_DEGREE_LAT,
            lon: self.origin.lon + x / self.metres_per_degree_lon,
        }
    }

    /// Distance in metres from `point` to the segment from `a` to `b`.
    pub(crate) fn distance_to_segment(&self, point: GeoPoint, a: GeoPoint, b: GeoPoint) -> f64 {
        let (px, py) = self.metres_of(point);
        let (ax, ay) = self.metres_of(a);
        let (bx, by) = self.metres_of(b);
        let (dx, dy) = (bx - ax, by - ay);
        let length_squared = dx * dx + dy * dy;
        let along = if length_squared == 0.0 {
            0.0
        } else {
            (((px - ax) * dx + (py - ay) * dy) / length_squared).clamp(0.0, 1.0)
        };
        let (cx, cy) = (ax + along * dx, ay + along * dy);
        ((px - cx).powi(2) + (py - cy).powi(2)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_frame_round_trips_and_measures() {
        let frame = LocalFrame::new(GeoPoint {
            lat: -2.3,
            lon: 34.8,
        });
        let point = frame.point_at(120.0, -80.0);
        let (x, y) = frame.metres_of(point);
        assert!((x - 120.0).abs() < 1e-6 && (y + 80.0).abs() < 1e-6);
        let a = frame.point_at(0.0, 0.0);
        let b = frame.point_at(100.0, 0.0);
        let above = frame.point_at(50.0, 30.0);
        assert!((frame.distance_to_segment(above, a, b) - 30.0).abs() < 1e-6);
        let beyond = frame.point_at(103.0, 4.0);
        assert!((frame.distance_to_segment(beyond, a, b) - 5.0).abs() < 1e-6);
    }
}
