//! The windows against a reference model that keeps every event and computes each window from
//! scratch: events out of order, late within the lateness and too late, in any arrival order.

use std::collections::BTreeMap;

use nublar_model::{Field, FieldValue, ParsedLine, Tag};
use nublar_process::windows::{Added, Aggregate, WindowConfig, Windows};
use proptest::prelude::*;

const WIDTH: i64 = 60_000_000_000;
const LATENESS: i64 = 20_000_000_000;

fn event(station: u8, value: f64) -> ParsedLine<'static> {
    ParsedLine {
        measurement: "weather".into(),
        tags: vec![Tag {
            key: "station".into(),
            value: format!("ws-{station}").into(),
        }],
        fields: vec![
            Field {
                key: "temp_c".into(),
                value: FieldValue::F64(value),
            },
            Field {
                key: "ok".into(),
                value: FieldValue::Bool(true),
            },
        ],
        timestamp_ns: None,
    }
}

/// One arriving event: its time, series and value.
#[derive(Clone, Debug)]
struct Arrival {
    time_ns: i64,
    station: u8,
    value: f64,
}

type ByWindowAndSeries = BTreeMap<(i64, String), Aggregate>;
/// Each kept event of a window and series: time, arrival index, value.
type Kept = BTreeMap<(i64, String), Vec<(i64, usize, f64)>>;

/// The windows a reader who saw every event would compute, and the indexes of the late events.
/// An event is late when, at its arrival, the latest time seen before it is at or past its
/// window's end plus the lateness.
fn reference(arrivals: &[Arrival]) -> (ByWindowAndSeries, Vec<usize>) {
    let mut late = Vec::new();
    let mut kept = Kept::new();
    let mut watermark: Option<i64> = None;
    for (index, arrival) in arrivals.iter().enumerate() {
        let start = arrival.time_ns.div_euclid(WIDTH) * WIDTH;
        if watermark.is_some_and(|watermark| start + WIDTH + LATENESS <= watermark) {
            late.push(index);
        } else {
            kept.entry((start, format!("station=ws-{}", arrival.station)))
                .or_default()
                .push((arrival.time_ns, index, arrival.value));
        }
        watermark = Some(watermark.map_or(arrival.time_ns, |w| w.max(arrival.time_ns)));
    }
    let aggregates = kept
        .into_iter()
        .map(|((start, series), values)| {
            let (last_time_ns, _, last) = *values
                .iter()
                .max_by_key(|(time, index, _)| (*time, *index))
                .unwrap();
            let aggregate = Aggregate {
                window_start_ns: start,
                key: nublar_process::windows::SeriesField {
                    db: "park".into(),
                    measurement: "weather".into(),
                    series: series.clone(),
                    field: "temp_c".into(),
                },
                count: values.len() as u64,
                min: values.iter().map(|v| v.2).fold(f64::INFINITY, f64::min),
                max: values.iter().map(|v| v.2).fold(f64::NEG_INFINITY, f64::max),
                sum: values.iter().map(|v| v.2).sum(),
                last,
                last_time_ns,
            };
            ((start, series), aggregate)
        })
        .collect();
    (aggregates, late)
}

fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
    // Mostly moving forward, with jumps back of up to two minutes: within and past the
    // lateness, across window edges. Whole seconds, so that times fall exactly on window edges
    // and on each other often.
    prop::collection::vec((0i64..40, -120i64..5, 0u8..3, -40i32..60), 1..200).prop_map(|steps| {
        let mut time_ns = 1_700_000_000_000_000_000i64;
        steps
            .into_iter()
            .map(|(forward, back_seconds, station, value)| {
                time_ns += forward * 1_000_000_000;
                let at = if back_seconds < 0 {
                    time_ns + back_seconds * 1_000_000_000
                } else {
                    time_ns
                };
                Arrival {
                    time_ns: at,
                    station,
                    value: f64::from(value) / 4.0,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn windows_equal_the_reference_model(arrivals in arrivals()) {
        let mut windows = Windows::new(WindowConfig {
            width_ns: WIDTH,
            allowed_lateness_ns: LATENESS,
            open_aggregates_max: usize::MAX,
        });
        let mut closed = Vec::new();
        let mut late = Vec::new();
        for (index, arrival) in arrivals.iter().enumerate() {
            let before = closed.len();
            match windows.add("park", &event(arrival.station, arrival.value), arrival.time_ns, &mut closed) {
                Added::Counted => {}
                Added::Late { window_start_ns, watermark_ns } => {
                    prop_assert!(window_start_ns + WIDTH + LATENESS <= watermark_ns);
                    late.push(index);
                }
            }
            // Whatever closed now is past the watermark and its lateness, and whatever is
            // past it has closed.
            let watermark = windows.watermark_ns().unwrap();
            for aggregate in &closed[before..] {
                prop_assert!(aggregate.window_start_ns + WIDTH + LATENESS <= watermark);
            }
            for start in windows.open_windows() {
                prop_assert!(start + WIDTH + LATENESS > watermark);
            }
        }
        windows.flush(&mut closed);
        prop_assert_eq!(windows.open_aggregates(), 0);
        let (expected, expected_late) = reference(&arrivals);
        prop_assert_eq!(late, expected_late);
        let mut actual = BTreeMap::new();
        for aggregate in closed {
            let key = (aggregate.window_start_ns, aggregate.key.series.clone());
            prop_assert!(actual.insert(key, aggregate).is_none(), "a window emitted twice");
        }
        prop_assert_eq!(actual, expected);
    }

    #[test]
    fn the_memory_bound_closes_windows_early_and_never_emits_one_twice(arrivals in arrivals()) {
        let mut windows = Windows::new(WindowConfig {
            width_ns: WIDTH,
            allowed_lateness_ns: LATENESS,
            open_aggregates_max: 2,
        });
        let mut closed = Vec::new();
        let mut counted = 0u64;
        for arrival in &arrivals {
            if windows.add("park", &event(arrival.station, arrival.value), arrival.time_ns, &mut closed)
                == Added::Counted
            {
                counted += 1;
            }
            prop_assert!(windows.open_aggregates() <= 2);
        }
        windows.flush(&mut closed);
        let mut seen = std::collections::HashSet::new();
        for aggregate in &closed {
            prop_assert!(seen.insert((aggregate.window_start_ns, aggregate.key.series.clone())));
        }
        prop_assert_eq!(closed.iter().map(|a| a.count).sum::<u64>(), counted);
    }
}

#[test]
fn a_late_event_within_the_lateness_updates_its_window_and_a_later_one_does_not() {
    let mut windows = Windows::new(WindowConfig {
        width_ns: WIDTH,
        allowed_lateness_ns: LATENESS,
        open_aggregates_max: 100,
    });
    let mut closed = Vec::new();
    let second = 1_000_000_000i64;
    let base = 1_700_000_040_000_000_000i64.div_euclid(WIDTH) * WIDTH;
    let mut add = |time_ns: i64, value: f64, closed: &mut Vec<Aggregate>| {
        windows.add("park", &event(1, value), time_ns, closed)
    };
    assert_eq!(add(base + 10 * second, 1.0, &mut closed), Added::Counted);
    // The next window starts; the first one waits for its lateness.
    assert_eq!(add(base + 70 * second, 5.0, &mut closed), Added::Counted);
    assert_eq!(add(base + 20 * second, 3.0, &mut closed), Added::Counted);
    assert!(closed.is_empty());
    // The watermark passes the first window's end plus the lateness: it closes.
    assert_eq!(add(base + 80 * second, 6.0, &mut closed), Added::Counted);
    assert_eq!(closed.len(), 1);
    let first = &closed[0];
    assert_eq!(
        (
            first.window_start_ns,
            first.count,
            first.min,
            first.max,
            first.last
        ),
        (base, 2, 1.0, 3.0, 3.0)
    );
    assert_eq!(first.mean(), 2.0);
    assert_eq!(first.key.series, "station=ws-1");
    assert_eq!(
        add(base + 30 * second, 9.0, &mut closed),
        Added::Late {
            window_start_ns: base,
            watermark_ns: base + 80 * second
        }
    );
    assert_eq!(closed.len(), 1);
}

#[test]
fn times_at_the_ends_of_the_range_do_not_overflow() {
    let mut windows = Windows::new(WindowConfig::default());
    let mut closed = Vec::new();
    for time_ns in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
        windows.add("park", &event(1, 1.0), time_ns, &mut closed);
    }
    assert_eq!(windows.window_start(i64::MIN + 1), i64::MIN);
    assert_eq!(windows.window_start(-1), -60_000_000_000);
    windows.flush(&mut closed);
    assert_eq!(windows.open_aggregates(), 0);
    assert!(closed.iter().map(|a| a.count).sum::<u64>() >= 2);
}
