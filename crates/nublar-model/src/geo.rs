//! Plane geometry on latitude and longitude, good for an area a few kilometres across:
//! points and simple polygons (a paddock's fence).
//!
//! Polygons are tested in degrees directly (longitude as x, latitude as y): inside-ness does
//! not depend on the scale of the axes, so no projection can make a point change sides.

/// A position in degrees (WGS 84). GeoJSON writes it `[lon, lat]`; everything else in nublar
/// says `lat, lon`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

/// Points on the boundary count as either inside or outside: the crossing rule decides by
/// floating-point arithmetic. The simulator never depends on it, since it keeps an animal
/// at positions this function said were inside.
pub fn polygon_contains(ring: &[GeoPoint], point: GeoPoint) -> bool {
    let Some(&last) = ring.last() else {
        return false;
    };
    let mut inside = false;
    let mut previous = last;
    for &current in ring {
        // The half-open comparison counts a vertex exactly at the point's latitude for one of
        // its two edges only, which is what makes the even-odd rule right at vertices and for
        // concave rings.
        if (current.lat > point.lat) != (previous.lat > point.lat) {
            let crossing_lon = current.lon
                + (point.lat - current.lat) * (previous.lon - current.lon)
                    / (previous.lat - current.lat);
            if point.lon < crossing_lon {
                inside = !inside;
            }
        }
        previous = current;
    }
    inside
}

/// A ring is simple when no two edges meet except adjacent edges at their shared corner, no
/// edge has zero length and the ring encloses an area.
pub fn is_simple_polygon(ring: &[GeoPoint]) -> bool {
    let count = ring.len();
    if count < 3 || signed_area(ring) == 0.0 {
        return false;
    }
    for first in 0..count {
        let (a, b) = (ring[first], ring[(first + 1) % count]);
        if a == b {
            return false;
        }
        for second in first + 1..count {
            let (c, d) = (ring[second], ring[(second + 1) % count]);
            let adjacent = second == first + 1 || (first == 0 && second == count - 1);
            if adjacent {
                // Adjacent edges share one corner; they must not fold back onto each other.
                let (corner, before, after) = if second == first + 1 {
                    (b, a, d)
                } else {
                    (a, b, c)
                };
                let cross = orientation(before, corner, after);
                let dot = (before.lon - corner.lon) * (after.lon - corner.lon)
                    + (before.lat - corner.lat) * (after.lat - corner.lat);
                if cross == 0.0 && dot > 0.0 {
                    return false;
                }
            } else if segments_meet(a, b, c, d) {
                return false;
            }
        }
    }
    true
}

/// Positive for a counter-clockwise ring (the orientation RFC 7946 asks of exterior rings),
/// in square degrees.
pub fn signed_area(ring: &[GeoPoint]) -> f64 {
    let mut twice_area = 0.0;
    for index in 0..ring.len() {
        let (a, b) = (ring[index], ring[(index + 1) % ring.len()]);
        twice_area += a.lon * b.lat - b.lon * a.lat;
    }
    twice_area / 2.0
}

/// Whether every corner turns the same way; a simple ring that is not convex has a notch.
pub fn is_convex_polygon(ring: &[GeoPoint]) -> bool {
    let count = ring.len();
    let mut sign = 0.0;
    for index in 0..count {
        let turn = orientation(
            ring[index],
            ring[(index + 1) % count],
            ring[(index + 2) % count],
        );
        if turn != 0.0 {
            if sign != 0.0 && turn.signum() != sign {
                return false;
            }
            sign = turn.signum();
        }
    }
    true
}

/// Twice the signed area of the triangle: positive when `a`, `b`, `c` turn left.
fn orientation(a: GeoPoint, b: GeoPoint, c: GeoPoint) -> f64 {
    (b.lon - a.lon) * (c.lat - a.lat) - (b.lat - a.lat) * (c.lon - a.lon)
}

/// Whether the closed segments `ab` and `cd` share any point, touching included.
fn segments_meet(a: GeoPoint, b: GeoPoint, c: GeoPoint, d: GeoPoint) -> bool {
    let (o1, o2) = (orientation(a, b, c), orientation(a, b, d));
    let (o3, o4) = (orientation(c, d, a), orientation(c, d, b));
    if o1 * o2 < 0.0 && o3 * o4 < 0.0 {
        return true;
    }
    (o1 == 0.0 && within_box(a, b, c))
        || (o2 == 0.0 && within_box(a, b, d))
        || (o3 == 0.0 && within_box(c, d, a))
        || (o4 == 0.0 && within_box(c, d, b))
}

/// For a point already known to be on the line through `a` and `b`: whether it is on the
/// segment.
fn within_box(a: GeoPoint, b: GeoPoint, point: GeoPoint) -> bool {
    point.lon >= a.lon.min(b.lon)
        && point.lon <= a.lon.max(b.lon)
        && point.lat >= a.lat.min(b.lat)
        && point.lat <= a.lat.max(b.lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(points: &[(f64, f64)]) -> Vec<GeoPoint> {
        points
            .iter()
            .map(|&(lon, lat)| GeoPoint { lat, lon })
            .collect()
    }

    /// A U open to the north: x from 0 to 3, y from 0 to 3, the notch x in (1, 2), y in (1, 3).
    fn u_shape() -> Vec<GeoPoint> {
        ring(&[
            (0.0, 0.0),
            (3.0, 0.0),
            (3.0, 3.0),
            (2.0, 3.0),
            (2.0, 1.0),
            (1.0, 1.0),
            (1.0, 3.0),
            (0.0, 3.0),
        ])
    }

    #[test]
    fn point_in_concave_polygon() {
        // (lon, lat, inside)
        let cases = [
            (0.5, 0.5, true),  // bottom bar
            (1.5, 0.5, true),  // bottom bar under the notch
            (2.5, 2.5, true),  // right arm
            (0.5, 2.5, true),  // left arm
            (1.5, 2.0, false), // in the notch, between the arms
            (1.5, 2.99, false),
            (1.5, 1.01, false),
            (0.5, 1.0, true), // at the latitude of the notch's floor, in an arm
            (2.5, 3.0 - 1e-9, true),
            (1.5, 3.5, false), // above the notch
            (-0.5, 1.5, false),
            (3.5, 1.5, false),
            (1.5, -0.1, false),
            (0.5, 3.01, false), // just above the left arm
        ];
        let shape = u_shape();
        assert!(is_simple_polygon(&shape));
        assert!(!is_convex_polygon(&shape));
        for (lon, lat, expected) in cases {
            assert_eq!(
                polygon_contains(&shape, GeoPoint { lat, lon }),
                expected,
                "({lon}, {lat})"
            );
            // The answer must not depend on where the ring starts or which way it turns.
            let mut reversed = shape.clone();
            reversed.reverse();
            assert_eq!(polygon_contains(&reversed, GeoPoint { lat, lon }), expected);
            let mut rotated = shape.clone();
            rotated.rotate_left(3);
            assert_eq!(polygon_contains(&rotated, GeoPoint { lat, lon }), expected);
        }
    }

    #[test]
    fn point_in_l_shaped_polygon() {
        // An L: the square (0..2, 0..2) without its north-east quarter (1..2, 1..2).
        let shape = ring(&[
            (0.0, 0.0),
            (2.0, 0.0),
            (2.0, 1.0),
            (1.0, 1.0),
            (1.0, 2.0),
            (0.0, 2.0),
        ]);
        let cases = [
            (0.5, 0.5, true),
            (1.5, 0.5, true),
            (0.5, 1.5, true),
            (1.5, 1.5, false),
            (1.0 + 1e-9, 1.0 + 1e-9, false),
            (1.0 - 1e-9, 1.0 - 1e-9, true),
            (2.5, 0.5, false),
        ];
        assert!(is_simple_polygon(&shape));
        assert!(!is_convex_polygon(&shape));
        for (lon, lat, expected) in cases {
            assert_eq!(
                polygon_contains(&shape, GeoPoint { lat, lon }),
                expected,
                "({lon}, {lat})"
            );
        }
    }

    #[test]
    fn simple_polygons_are_told_apart() {
        let cases = [
            (vec![(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)], true),
            (vec![(0.0, 0.0), (1.0, 0.0)], false),
            // A bow tie crosses itself.
            (vec![(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)], false),
            // Collinear corners enclose nothing.
            (vec![(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)], false),
            // A repeated corner is an edge of zero length.
            (vec![(0.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, 1.0)], false),
            // A spike that folds back along its own edge.
            (vec![(0.0, 0.0), (2.0, 0.0), (1.0, 0.0), (1.0, 1.0)], false),
            // One corner touching another edge.
            (
                vec![(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (1.0, 0.0), (0.0, 2.0)],
                false,
            ),
        ];
        for (points, expected) in cases {
            assert_eq!(is_simple_polygon(&ring(&points)), expected, "{points:?}");
        }
        assert!(is_simple_polygon(&u_shape()));
    }
}
