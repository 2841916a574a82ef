//! Alert rules: each alert fires once and resolves once; thresholds held for a duration, rates
//! of change, absence by a clock the test controls, and geofences with concave paddocks.

use std::collections::HashMap;

use nublar_model::geo::GeoPoint;
use nublar_model::{Field, FieldValue, ParsedLine, Tag};
use nublar_process::alerts::{Alert, AlertState, Alerts, Rule, RuleKind};
use nublar_sim::{Park, ParkConfig};

const SECOND: i64 = 1_000_000_000;

fn event(measurement: &str, tags: &[(&str, &str)], fields: &[(&str, f64)]) -> ParsedLine<'static> {
    ParsedLine {
        measurement: measurement.to_owned().into(),
        tags: tags
            .iter()
            .map(|(key, value)| Tag {
                key: key.to_string().into(),
                value: value.to_string().into(),
            })
            .collect(),
        fields: fields
            .iter()
            .map(|(key, value)| Field {
                key: key.to_string().into(),
                value: FieldValue::F64(*value),
            })
            .collect(),
        timestamp_ns: None,
    }
}

/// (state, time in seconds) of each alert.
fn changes(alerts: &[Alert]) -> Vec<(AlertState, i64)> {
    alerts
        .iter()
        .map(|alert| (alert.state, alert.time_ns / SECOND))
        .collect()
}

#[test]
fn a_threshold_fires_once_after_its_duration_and_resolves_once() {
    let mut alerts = Alerts::new(
        vec![Rule {
            name: "fence-down".into(),
            measurement: "fence".into(),
            kind: RuleKind::Threshold {
                field: "voltage_kv".into(),
                above: None,
                below: Some(5.0),
                for_ns: 10 * SECOND,
            },
        }],
        100,
    );
    let mut out = Vec::new();
    let tags = [("paddock", "p1"), ("segment", "s3")];
    for (second, kv) in [
        (0, 8.0),
        (1, 2.0),
        (5, 2.0),
        // Back up before the duration: the run starts again.
        (6, 7.5),
        (7, 1.0),
        (16, 1.0),
        (17, 0.5),
        (18, 0.0),
        (19, 8.0),
        (20, 8.0),
        (21, 1.0),
    ] {
        alerts.observe(
            "park",
            &event("fence", &tags, &[("voltage_kv", kv)]),
            second * SECOND,
            0,
            &mut out,
        );
    }
    assert_eq!(
        changes(&out),
        [(AlertState::Firing, 17), (AlertState::Resolved, 19)]
    );
    assert_eq!(out[0].series, "paddock=p1,segment=s3");
    assert_eq!(out[0].values, [0.5]);
    assert_eq!(out[0].rule, "fence-down");
}

#[test]
fn an_older_event_arriving_late_changes_no_state() {
    // A sender that retries a batch after a newer one landed delivers readings the state has
    // already moved past; an alert follows the newest reading, so they raise nothing.
    let mut alerts = Alerts::new(
        vec![
            Rule {
                name: "fence-down".into(),
                measurement: "fence".into(),
                kind: RuleKind::Threshold {
                    field: "voltage_kv".into(),
                    above: None,
                    below: Some(5.0),
                    for_ns: 0,
                },
            },
            Rule {
                name: "breach".into(),
                measurement: "collar".into(),
                kind: RuleKind::Geofence {
                    paddock_tag: "paddock".into(),
                    paddocks: HashMap::from([(
                        "square".to_owned(),
                        vec![
                            GeoPoint { lat: 0.0, lon: 0.0 },
                            GeoPoint { lat: 0.0, lon: 1.0 },
                            GeoPoint { lat: 1.0, lon: 1.0 },
                            GeoPoint { lat: 1.0, lon: 0.0 },
                        ],
                    )]),
                },
            },
        ],
        100,
    );
    let mut out = Vec::new();
    let fence = [("segment", "s1")];
    for (second, kv) in [
        (0, 8.0),
        (10, 1.0),
        (5, 8.0),
        (9, 9.0),
        (11, 0.5),
        (12, 8.0),
    ] {
        alerts.observe(
            "park",
            &event("fence", &fence, &[("voltage_kv", kv)]),
            second * SECOND,
            0,
            &mut out,
        );
    }
    assert_eq!(
        changes(&out),
        [(AlertState::Firing, 10), (AlertState::Resolved, 12)]
    );
    out.clear();
    let collar = [("animal", "rex"), ("paddock", "square")];
    for (second, lat) in [(0, 0.5), (10, 2.0), (5, 0.5), (11, 2.0), (12, 0.5)] {
        alerts.observe(
            "park",
            &event("collar", &collar, &[("lat", lat), ("lon", 0.5)]),
            second * SECOND,
            0,
            &mut out,
        );
    }
    assert_eq!(
        changes(&out),
        [(AlertState::Firing, 10), (AlertState::Resolved, 12)]
    );
}

#[test]
fn a_rate_of_change_fires_on_a_jump_and_resolves_when_calm() {
    let mut alerts = Alerts::new(
        vec![Rule {
            name: "heart".into(),
            measurement: "collar".into(),
            kind: RuleKind::RateOfChange {
                field: "heart_bpm".into(),
                per_second_max: 5.0,
            },
        }],
        100,
    );
    let mut out = Vec::new();
    for (second, bpm) in [
        (0, 60.0),
        (10, 70.0),
        (12, 100.0),
        (11, 0.0),
        (14, 150.0),
        (20, 152.0),
    ] {
        alerts.observe(
            "park",
            &event("collar", &[("animal", "rex")], &[("heart_bpm", bpm)]),
            second * SECOND,
            0,
            &mut out,
        );
    }
    // 10 bpm over 10 s is calm; 30 over 2 s fires; the event from the past is skipped; 50 over
    // 2 s keeps firing without a second alert; 2 over 6 s resolves.
    assert_eq!(
        changes(&out),
        [(AlertState::Firing, 12), (AlertState::Resolved, 20)]
    );
}

#[test]
fn absence_follows_the_clock_it_is_given() {
    let mut alerts = Alerts::new(
        vec![Rule {
            name: "silent".into(),
            measurement: "weather".into(),
            kind: RuleKind::Absence {
                for_ns: 10 * SECOND,
            },
        }],
        100,
    );
    let mut out = Vec::new();
    let weather = |station: &str| event("weather", &[("station", station)], &[("temp_c", 20.0)]);
    alerts.observe("park", &weather("a"), 0, 0, &mut out);
    alerts.observe("park", &weather("b"), 0, 5 * SECOND, &mut out);
    alerts.tick(9 * SECOND, &mut out);
    assert!(out.is_empty());
    alerts.tick(10 * SECOND, &mut out);
    alerts.tick(11 * SECOND, &mut out);
    alerts.tick(15 * SECOND, &mut out);
    let fired: Vec<(&str, i64)> = out
        .iter()
        .map(|alert| (alert.series.as_str(), alert.time_ns / SECOND))
        .collect();
    assert_eq!(fired, [("station=a", 10), ("station=b", 15)]);
    out.clear();
    alerts.observe("park", &weather("a"), 0, 16 * SECOND, &mut out);
    assert_eq!(changes(&out), [(AlertState::Resolved, 16)]);
    out.clear();
    alerts.tick(25 * SECOND, &mut out);
    assert!(out.is_empty(), "b still firing, a seen 9 s ago: {out:?}");
    alerts.tick(26 * SECOND, &mut out);
    assert_eq!(changes(&out), [(AlertState::Firing, 26)]);
    assert_eq!(out[0].series, "station=a");
}

/// One geofence rule, `breach`, on collars over `paddocks`, named by the `paddock` tag.
fn geofence(paddocks: HashMap<String, Vec<GeoPoint>>) -> Alerts {
    Alerts::new(
        vec![Rule {
            name: "breach".into(),
            measurement: "collar".into(),
            kind: RuleKind::Geofence {
                paddock_tag: "paddock".into(),
                paddocks,
            },
        }],
        1_000,
    )
}

#[test]
fn a_geofence_sees_the_notch_of_a_concave_paddock_as_outside() {
    // A U: two arms joined at the bottom; the notch between the arms is outside.
    let u = vec![
        GeoPoint { lat: 0.0, lon: 0.0 },
        GeoPoint { lat: 0.0, lon: 3.0 },
        GeoPoint { lat: 3.0, lon: 3.0 },
        GeoPoint { lat: 3.0, lon: 2.0 },
        GeoPoint { lat: 1.0, lon: 2.0 },
        GeoPoint { lat: 1.0, lon: 1.0 },
        GeoPoint { lat: 3.0, lon: 1.0 },
        GeoPoint { lat: 3.0, lon: 0.0 },
    ];
    let mut alerts = geofence(HashMap::from([("u".to_owned(), u)]));
    let mut out = Vec::new();
    let tags = [("animal", "rex"), ("species", "lion"), ("paddock", "u")];
    for (second, lat, lon) in [
        (0, 2.5, 0.5), // left arm
        (1, 0.5, 1.5), // bottom
        (2, 2.5, 2.5), // right arm
        (3, 2.0, 1.5), // the notch: outside
        (4, 2.5, 1.5), // still outside: no second alert
        (5, 2.9, 0.2), // left arm again
        (6, 5.0, 5.0), // far outside
    ] {
        alerts.observe(
            "park",
            &event("collar", &tags, &[("lat", lat), ("lon", lon)]),
            second * SECOND,
            0,
            &mut out,
        );
    }
    assert_eq!(
        changes(&out),
        [
            (AlertState::Firing, 3),
            (AlertState::Resolved, 5),
            (AlertState::Firing, 6)
        ]
    );
    assert_eq!(out[0].values, [2.0, 1.5]);
    assert!(out[0].message.contains("animal=rex"), "{}", out[0].message);
    assert!(
        out[0].message.contains("species=lion"),
        "{}",
        out[0].message
    );
}

#[test]
fn a_geofence_reads_the_paddocks_of_the_park_file() {
    let park = Park::generate(&ParkConfig::default()).unwrap();
    let park = Park::from_geojson(&park.to_geojson()).unwrap();
    let paddocks: HashMap<String, Vec<GeoPoint>> = park
        .paddocks()
        .iter()
        .map(|paddock| (paddock.name.clone(), paddock.fence.clone()))
        .collect();
    let mut alerts = geofence(paddocks);
    let mut out = Vec::new();
    for (index, animal) in park.animals().iter().enumerate() {
        let paddock = &park.paddocks()[animal.paddock].name;
        let tags = [
            ("animal", animal.name.as_str()),
            ("paddock", paddock.as_str()),
        ];
        let at =
            |point: GeoPoint| event("collar", &tags, &[("lat", point.lat), ("lon", point.lon)]);
        alerts.observe("park", &at(animal.start), index as i64, 0, &mut out);
        // A kilometre north of its paddock's northernmost corner.
        let north = park.paddocks()[animal.paddock]
            .fence
            .iter()
            .map(|corner| corner.lat)
            .fold(f64::MIN, f64::max);
        let away = GeoPoint {
            lat: north + 0.01,
            lon: animal.start.lon,
        };
        alerts.observe("park", &at(away), index as i64, 0, &mut out);
    }
    assert_eq!(out.len(), park.animals().len());
    assert!(out.iter().all(|alert| alert.state == AlertState::Firing));
}

#[test]
fn series_past_the_bound_are_counted_not_watched() {
    let mut alerts = Alerts::new(
        vec![Rule {
            name: "silent".into(),
            measurement: "weather".into(),
            kind: RuleKind::Absence { for_ns: SECOND },
        }],
        2,
    );
    let mut out = Vec::new();
    for station in ["a", "b", "c", "d"] {
        alerts.observe(
            "park",
            &event("weather", &[("station", station)], &[("temp_c", 1.0)]),
            0,
            0,
            &mut out,
        );
    }
    assert_eq!(alerts.series_unwatched(), 2);
    alerts.tick(SECOND, &mut out);
    assert_eq!(out.len(), 2);
}

proptest::proptest! {
    /// Whatever the values, times and clock, each series' alerts alternate: fired, resolved,
    /// fired, … never twice the same state in a row.
    #[test]
    fn alerts_of_a_series_alternate_between_firing_and_resolved(
        steps in proptest::collection::vec((0u8..3, 0i64..20, -10.0f64..10.0, proptest::bool::ANY), 1..150),
    ) {
        let rules = vec![
            Rule {
                name: "high".into(),
                measurement: "m".into(),
                kind: RuleKind::Threshold { field: "v".into(), above: Some(2.0), below: None, for_ns: 3 * SECOND },
            },
            Rule {
                name: "jump".into(),
                measurement: "m".into(),
                kind: RuleKind::RateOfChange { field: "v".into(), per_second_max: 1.0 },
            },
            Rule {
                name: "quiet".into(),
                measurement: "m".into(),
                kind: RuleKind::Absence { for_ns: 5 * SECOND },
            },
        ];
        let mut alerts = Alerts::new(rules, 100);
        let mut out = Vec::new();
        let mut time_ns = 0i64;
        for (series, step, value, tick) in steps {
            time_ns += step * SECOND / 4;
            if tick {
                alerts.tick(time_ns, &mut out);
            } else {
                let name = format!("s{series}");
                alerts.observe("park", &event("m", &[("k", &name)], &[("v", value)]), time_ns, time_ns, &mut out);
            }
        }
        let mut last: HashMap<(String, String), AlertState> = HashMap::new();
        for alert in &out {
            let previous = last.insert((alert.rule.clone(), alert.series.clone()), alert.state);
            let expected_before = match alert.state {
                AlertState::Firing => AlertState::Resolved,
                AlertState::Resolved => AlertState::Firing,
            };
            proptest::prop_assert!(
                previous == Some(expected_before) || (previous.is_none() && alert.state == AlertState::Firing),
                "{:?} after {:?}", alert, previous
            );
        }
    }
}
