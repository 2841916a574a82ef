//! The generator: determinism, the schedule, the walk, the stages, the daily cycle and the
//! faults, each checked on what a receiver would see.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use nublar_model::{Event, FieldValue, ParseErrorKind, ParseLimits, Precision, parse_lines};
use nublar_sim::{
    Corruption, Generator, GeneratorConfig, GeneratorConfigError, Park, ParkConfig, Sensor,
    SimEvent, SimLine,
};
use proptest::prelude::*;

fn park(seed: u64) -> Park {
    Park::generate(&ParkConfig {
        seed,
        ..ParkConfig::default()
    })
    .unwrap()
}

fn events(park: &Park, config: GeneratorConfig, count: usize) -> Vec<SimEvent> {
    Generator::new(park.clone(), config)
        .unwrap()
        .take(count)
        .collect()
}

fn body(events: &[SimEvent]) -> Vec<u8> {
    let mut body = Vec::new();
    for event in events {
        event.write(&mut body);
    }
    body
}

fn float(event: &Event, key: &str) -> f64 {
    match event.field(key) {
        Some(FieldValue::F64(value)) => *value,
        other => panic!("{key} is {other:?}"),
    }
}

fn paddock_by_name(park: &Park) -> HashMap<String, usize> {
    park.paddocks()
        .iter()
        .enumerate()
        .map(|(index, paddock)| (paddock.name.clone(), index))
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_others() {
    let config = GeneratorConfig {
        seed: 11,
        unique_field: Some("seq".to_owned()),
        malformed_share: 0.05,
        duplicate_share: 0.05,
        out_of_order_share: 0.05,
        stage_breach_at_ns: Some(GeneratorConfig::default().start_ns + 30_000_000_000),
        stage_silence_at_ns: Some(GeneratorConfig::default().start_ns + 30_000_000_000),
        ..GeneratorConfig::default()
    };
    let first = body(&events(&park(1), config.clone(), 5_000));
    let again = body(&events(&park(1), config.clone(), 5_000));
    assert_eq!(first, again);
    let other_generator_seed = body(&events(
        &park(1),
        GeneratorConfig {
            seed: 12,
            ..config.clone()
        },
        5_000,
    ));
    assert_ne!(first, other_generator_seed);
    let other_park = body(&events(&park(2), config, 5_000));
    assert_ne!(first, other_park);
}

#[test]
fn a_park_read_from_geojson_gives_the_same_run() {
    let generated = park(4);
    let read = Park::from_geojson(&generated.to_geojson()).unwrap();
    let config = GeneratorConfig::default();
    assert_eq!(
        body(&events(&generated, config.clone(), 3_000)),
        body(&events(&read, config, 3_000))
    );
}

#[test]
fn every_sensor_reports_once_per_period_at_its_own_address() {
    let park = park(2);
    let sensors = park.sensor_count();
    let config = GeneratorConfig {
        events_per_second: 50,
        ..GeneratorConfig::default()
    };
    let generator = Generator::new(park.clone(), config.clone()).unwrap();
    let period_ns = generator.period_ns() as i64;
    assert_eq!(period_ns, sensors as i64 * 1_000_000_000 / 50);
    let run: Vec<SimEvent> = generator.take(sensors * 4).collect();
    let mut reports: HashMap<Sensor, Vec<i64>> = HashMap::new();
    for (slot, event) in run.iter().enumerate() {
        assert_eq!(event.sender, park.address(event.sensor));
        let time = event.intended().timestamp_ns.unwrap();
        assert_eq!(time, config.start_ns + slot as i64 * 1_000_000_000 / 50);
        reports.entry(event.sensor).or_default().push(time);
    }
    assert_eq!(reports.len(), sensors);
    for (sensor, times) in reports {
        assert_eq!(times.len(), 4, "{sensor:?}");
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], period_ns, "{sensor:?}");
        }
    }
    let kinds: Vec<&str> = run[..sensors]
        .iter()
        .map(|event| event.intended().measurement.as_ref())
        .collect();
    for measurement in ["collar", "weather", "fence", "gate"] {
        assert!(kinds.contains(&measurement));
    }
}

#[test]
fn measurements_have_the_documented_schema_and_ranges() {
    let park = park(3);
    for event in events(&park, GeneratorConfig::default(), 3_000) {
        let event = event.intended().clone();
        let keys = |items: Vec<&str>| items.join(",");
        let tags = keys(event.tags.iter().map(|tag| tag.key.as_ref()).collect());
        let fields = keys(
            event
                .fields
                .iter()
                .map(|field| field.key.as_ref())
                .collect(),
        );
        match event.measurement.as_ref() {
            "collar" => {
                assert_eq!(
                    (tags.as_str(), fields.as_str()),
                    ("animal,species,paddock", "lat,lon,heart_bpm,speed_ms")
                );
                assert!(float(&event, "heart_bpm") > 10.0);
                assert!(float(&event, "speed_ms") >= 0.0);
            }
            "weather" => {
                assert_eq!(
                    (tags.as_str(), fields.as_str()),
                    ("habitat,station", "temp_c,humidity,wind_ms")
                );
                assert!((1.0..=100.0).contains(&float(&event, "humidity")));
                assert!((0.0..=25.0).contains(&float(&event, "wind_ms")));
            }
            "fence" => {
                assert_eq!(
                    (tags.as_str(), fields.as_str()),
                    ("paddock,segment", "voltage_kv")
                );
                assert!((8.2..=9.8).contains(&float(&event, "voltage_kv")));
            }
            "gate" => {
                assert_eq!((tags.as_str(), fields.as_str()), ("gate,paddock", "open"));
                assert!(matches!(event.field("open"), Some(FieldValue::Bool(_))));
            }
            other => panic!("unexpected measurement {other}"),
        }
    }
}

/// Every collar position of a run, checked against the animal's home paddock; returns how
/// many animals came within `near_m` of their fence.
fn check_animals_stay_home(park: &Park, run: &[SimEvent], near_m: f64) -> usize {
    let paddocks = paddock_by_name(park);
    let mut near_fence = std::collections::HashSet::new();
    for event in run {
        let event = event.intended();
        if event.measurement != "collar" {
            continue;
        }
        let paddock = &park.paddocks()[paddocks[event.tag("paddock").unwrap()]];
        let (lat, lon) = (float(event, "lat"), float(event, "lon"));
        assert!(
            paddock.contains(lat, lon),
            "{} left {} at {lat}, {lon}",
            event.tag("animal").unwrap(),
            paddock.name
        );
        if paddock.distance_to_fence_m(lat, lon) < near_m {
            near_fence.insert(event.tag("animal").unwrap().to_owned());
        }
    }
    near_fence.len()
}

#[test]
fn animals_stay_in_their_paddock_and_now_and_then_come_close_to_the_fence() {
    let park = park(6);
    // 300 periods of 0.1 s of simulated time each would show no walk: slow the clock so that
    // each period is a minute.
    let config = GeneratorConfig {
        events_per_second: (park.sensor_count() / 60).max(1) as u64,
        ..GeneratorConfig::default()
    };
    let run = events(&park, config, park.sensor_count() * 300);
    let near = check_animals_stay_home(&park, &run, 2.0);
    assert!(
        near >= park.animals().len() / 2,
        "only {near} of {} animals came within 2 m of their fence",
        park.animals().len()
    );
    // They do move: the first and last positions of most animals differ.
    let paddocks = paddock_by_name(&park);
    let _ = paddocks;
    let mut first_positions: HashMap<&str, (f64, f64)> = HashMap::new();
    let mut moved = 0;
    for event in &run {
        let event = event.intended();
        if event.measurement == "collar" {
            let position = (float(event, "lat"), float(event, "lon"));
            let animal = event.tag("animal").unwrap();
            match first_positions.get(animal) {
                None => {
                    first_positions.insert(animal, position);
                }
                Some(&first) if first != position => moved += 1,
                Some(_) => {}
            }
        }
    }
    assert!(moved > run.len() / park.sensor_count() * park.animals().len() / 2);
}

#[test]
fn the_breach_takes_the_planned_animal_out_and_its_segment_down() {
    let park = park(8);
    let start_ns = GeneratorConfig::default().start_ns;
    let events_per_second = (park.sensor_count() / 10) as u64; // a period of 10 s
    let breach_at_ns = start_ns + 600 * 1_000_000_000;
    let breached = GeneratorConfig {
        seed: 5,
        events_per_second,
        stage_breach_at_ns: Some(breach_at_ns),
        ..GeneratorConfig::default()
    };
    let generator = Generator::new(park.clone(), breached.clone()).unwrap();
    let plan = generator.plan().breach.unwrap();
    let animal = &park.animals()[plan.animal];
    assert_eq!(plan.paddock, animal.paddock);
    let paddock = &park.paddocks()[plan.paddock];
    let segment_name = &paddock.segments[plan.segment].name;
    let run: Vec<SimEvent> = generator.take(park.sensor_count() * 200).collect();

    let mut left_at = None;
    let mut positions_outside = std::collections::HashSet::new();
    for event in &run {
        let event = event.intended();
        let time = event.timestamp_ns.unwrap();
        match event.measurement.as_ref() {
            "collar" if event.tag("animal") == Some(animal.name.as_str()) => {
                assert_eq!(event.tag("paddock"), Some(paddock.name.as_str()));
                let inside = paddock.contains(float(event, "lat"), float(event, "lon"));
                if time < breach_at_ns {
                    assert!(inside, "out before the breach");
                } else if left_at.is_some() {
                    assert!(!inside, "back inside after leaving");
                    positions_outside
                        .insert((float(event, "lat").to_bits(), float(event, "lon").to_bits()));
                } else if !inside {
                    left_at = Some(time);
                }
            }
            "fence" => {
                let voltage = float(event, "voltage_kv");
                if time >= breach_at_ns && event.tag("segment") == Some(segment_name.as_str()) {
                    assert!(voltage < 0.2, "{voltage} kV on the breached segment");
                } else {
                    assert!((8.2..=9.8).contains(&voltage), "{voltage} kV");
                }
            }
            _ => {}
        }
    }
    let left_at = left_at.expect("the animal never left");
    assert!(
        positions_outside.len() > 10,
        "outside, the animal keeps wandering"
    );
    // At 6 m/s or more it crosses a paddock 720 m wide within 15 periods.
    assert!(
        left_at - breach_at_ns <= 150 * 1_000_000_000,
        "left {} s late",
        (left_at - breach_at_ns) / 1_000_000_000
    );

    // Every other sensor reports exactly what it would have reported without the breach.
    let calm = events(
        &park,
        GeneratorConfig {
            stage_breach_at_ns: None,
            ..breached
        },
        run.len(),
    );
    let breach_sensors = [
        Sensor::Collar {
            animal: plan.animal,
        },
        Sensor::Fence {
            paddock: plan.paddock,
            segment: plan.segment,
        },
    ];
    let mut differing = 0;
    for (with, without) in run.iter().zip(&calm) {
        if breach_sensors.contains(&with.sensor) {
            differing += usize::from(with != without);
        } else {
            assert_eq!(with, without);
        }
    }
    assert!(differing > 0);
}

#[test]
fn silence_stops_exactly_the_planned_station() {
    let park = park(9);
    let start_ns = GeneratorConfig::default().start_ns;
    let silence_at_ns = start_ns + 2_000_000_000;
    let config = GeneratorConfig {
        stage_silence_at_ns: Some(silence_at_ns),
        ..GeneratorConfig::default()
    };
    let generator = Generator::new(park.clone(), config).unwrap();
    let silent = generator.plan().silenced_station.unwrap();
    let silent_address = park.weather_stations()[silent].address;
    let run: Vec<SimEvent> = generator.take(park.sensor_count() * 100).collect();
    let mut before = 0;
    let mut others_after: HashMap<Ipv6Addr, usize> = HashMap::new();
    for event in &run {
        let time = event.intended().timestamp_ns.unwrap();
        if event.sender == silent_address {
            assert!(time < silence_at_ns, "the silenced station sent at {time}");
            assert_eq!(event.sensor, Sensor::Weather { station: silent });
            before += 1;
        } else if time >= silence_at_ns && event.intended().measurement == "weather" {
            *others_after.entry(event.sender).or_default() += 1;
        }
    }
    assert!(before > 0);
    assert_eq!(others_after.len(), park.weather_stations().len() - 1);
}

#[test]
fn temperature_follows_the_daily_cycle() {
    // A tiny park and one event per second: a day is 86 400 events.
    let park = Park::generate(&ParkConfig {
        habitats: 2,
        paddocks_per_habitat: 1,
        animals: 0,
        weather_stations_per_habitat: 1,
        fence_segments_per_paddock: 5,
        gates: 0,
        ..ParkConfig::default()
    })
    .unwrap();
    let config = GeneratorConfig {
        events_per_second: 1,
        ..GeneratorConfig::default()
    };
    let mut midday = Vec::new();
    let mut night = Vec::new();
    for event in events(&park, config, 2 * 86_400) {
        let SimEvent {
            sensor: Sensor::Weather { station },
            ..
        } = event
        else {
            continue;
        };
        let lon = park.weather_stations()[station].position.lon;
        let time_s = event.intended().timestamp_ns.unwrap() as f64 / 1e9;
        let local_hour = (time_s + lon / 15.0 * 3_600.0).rem_euclid(86_400.0) / 3_600.0;
        let temp_c = float(event.intended(), "temp_c");
        if (12.0..16.0).contains(&local_hour) {
            midday.push((station, temp_c));
        } else if (0.0..4.0).contains(&local_hour) {
            night.push((station, temp_c));
        }
    }
    for station in 0..park.weather_stations().len() {
        let mean = |samples: &[(usize, f64)]| {
            let values: Vec<f64> = samples
                .iter()
                .filter(|(which, _)| *which == station)
                .map(|(_, value)| *value)
                .collect();
            assert!(values.len() > 100);
            values.iter().sum::<f64>() / values.len() as f64
        };
        let (warm, cold) = (mean(&midday), mean(&night));
        let amplitude =
            park.habitats()[park.weather_stations()[station].habitat].temp_c_daily_amplitude;
        assert!(warm - cold > amplitude, "midday {warm} °C, night {cold} °C");
    }
}

#[test]
fn malformed_lines_are_exactly_the_ones_that_fail_to_parse() {
    let park = park(10);
    let config = GeneratorConfig {
        malformed_share: 0.3,
        duplicate_share: 0.05,
        out_of_order_share: 0.1,
        unique_field: Some("seq".to_owned()),
        ..GeneratorConfig::default()
    };
    let run = events(&park, config, 4_000);
    let body = body(&run);
    let parsed: Vec<_> = parse_lines(&body, Precision::Ns, ParseLimits::default()).collect();
    assert_eq!(
        parsed.len(),
        run.len(),
        "no line is skipped as blank or comment"
    );
    let mut seen = HashMap::new();
    for ((line_number, result), event) in parsed.into_iter().zip(&run) {
        assert_eq!(line_number, seen.values().sum::<usize>() + 1);
        match (&event.line, result) {
            (SimLine::Valid(expected), Ok(line)) => {
                assert_eq!(&line.into_owned(), expected);
                *seen.entry(None).or_insert(0) += 1;
            }
            (SimLine::Malformed(malformed), Err(error)) => {
                let expected_kind = match malformed.corruption {
                    Corruption::MissingFields => ParseErrorKind::MissingFields,
                    Corruption::BareWordValue => ParseErrorKind::InvalidFieldValue,
                    Corruption::UnterminatedString => ParseErrorKind::UnterminatedString,
                    Corruption::BadTimestamp => ParseErrorKind::InvalidTimestamp,
                    Corruption::InvalidUtf8 => ParseErrorKind::InvalidUtf8,
                    Corruption::ReservedMeasurement => ParseErrorKind::ReservedName,
                };
                assert_eq!(
                    error.kind(),
                    expected_kind,
                    "{error} for {:?}",
                    malformed.corruption
                );
                assert!(!malformed.bytes.contains(&b'\n'));
                *seen.entry(Some(malformed.corruption)).or_insert(0) += 1;
            }
            (line, result) => panic!("line {line_number}: {line:?} parsed as {result:?}"),
        }
    }
    for corruption in Corruption::ALL {
        assert!(
            seen.get(&Some(corruption)).copied().unwrap_or(0) > 20,
            "{corruption:?}"
        );
    }
    let malformed: usize = Corruption::ALL.iter().map(|kind| seen[&Some(*kind)]).sum();
    assert!(
        (900..1_500).contains(&malformed),
        "{malformed} of 4000 malformed"
    );
}

#[test]
fn the_unique_field_is_unique_except_for_deliberate_duplicates() {
    let park = park(12);
    let config = GeneratorConfig {
        unique_field: Some("seq".to_owned()),
        duplicate_share: 0.2,
        ..GeneratorConfig::default()
    };
    let run = events(&park, config, 5_000);
    let mut next = 0;
    let mut duplicates = 0;
    for (index, event) in run.iter().enumerate() {
        let Some(&FieldValue::I64(value)) = event.intended().field("seq") else {
            panic!("no seq field");
        };
        assert_eq!(event.intended().fields.last().unwrap().key, "seq");
        if event.faults.duplicate {
            duplicates += 1;
            let previous = &run[index - 1];
            assert!(!previous.faults.duplicate);
            assert_eq!(event.line, previous.line);
            assert_eq!(event.sender, previous.sender);
        } else {
            assert_eq!(value, next);
            next += 1;
        }
    }
    assert!(
        (800..1_200).contains(&duplicates),
        "{duplicates} duplicates"
    );
    // Without duplicates every value appears once.
    let unique_run = events(
        &park,
        GeneratorConfig {
            unique_field: Some("seq".to_owned()),
            ..GeneratorConfig::default()
        },
        5_000,
    );
    let values: std::collections::HashSet<String> = unique_run
        .iter()
        .map(|event| format!("{:?}", event.intended().field("seq")))
        .collect();
    assert_eq!(values.len(), 5_000);
}

#[test]
fn out_of_order_timestamps_move_back_within_the_bound() {
    let park = park(13);
    let config = GeneratorConfig {
        out_of_order_share: 0.25,
        out_of_order_max_ns: 3_000_000_000,
        ..GeneratorConfig::default()
    };
    let in_order = events(&park, GeneratorConfig::default(), 4_000);
    let run = events(&park, config, 4_000);
    let mut shifted = 0;
    for (event, original) in run.iter().zip(&in_order) {
        let time = event.intended().timestamp_ns.unwrap();
        let slot_time = original.intended().timestamp_ns.unwrap();
        assert_eq!(time, slot_time - event.faults.shifted_back_ns as i64);
        assert!(event.faults.shifted_back_ns <= 3_000_000_000);
        if event.faults.shifted_back_ns > 0 {
            shifted += 1;
        } else {
            assert_eq!(event, original, "faults change nothing else");
        }
    }
    assert!((850..1_150).contains(&shifted), "{shifted} shifted");
}

#[test]
fn a_bad_generator_config_is_refused() {
    let park = park(0);
    let no_animals = Park::generate(&ParkConfig {
        animals: 0,
        weather_stations_per_habitat: 0,
        ..ParkConfig::default()
    })
    .unwrap();
    let base = GeneratorConfig::default();
    let cases: Vec<(Park, GeneratorConfig, GeneratorConfigError)> = vec![
        (
            park.clone(),
            GeneratorConfig {
                events_per_second: 0,
                ..base.clone()
            },
            GeneratorConfigError::EventsPerSecond(0),
        ),
        (
            park.clone(),
            GeneratorConfig {
                start_ns: -1,
                ..base.clone()
            },
            GeneratorConfigError::Start(-1),
        ),
        (
            park.clone(),
            GeneratorConfig {
                malformed_share: 1.5,
                ..base.clone()
            },
            GeneratorConfigError::Share {
                what: "malformed",
                value: 1.5,
            },
        ),
        (
            park.clone(),
            GeneratorConfig {
                out_of_order_max_ns: 0,
                ..base.clone()
            },
            GeneratorConfigError::OutOfOrderMax(0),
        ),
        (
            no_animals.clone(),
            GeneratorConfig {
                stage_breach_at_ns: Some(0),
                ..base.clone()
            },
            GeneratorConfigError::NoAnimalToBreach,
        ),
        (
            no_animals,
            GeneratorConfig {
                stage_silence_at_ns: Some(0),
                ..base.clone()
            },
            GeneratorConfigError::NoStationToSilence,
        ),
    ];
    for (park, config, expected) in cases {
        assert_eq!(Generator::new(park, config).err(), Some(expected));
    }
    let share = GeneratorConfig {
        duplicate_share: f64::NAN,
        ..base.clone()
    };
    assert!(matches!(
        Generator::new(park.clone(), share),
        Err(GeneratorConfigError::Share {
            what: "duplicate",
            ..
        })
    ));
    for name in [
        "",
        "_seq",
        "time",
        "lat",
        "paddock",
        "has space",
        "comma,",
        "é",
    ] {
        let config = GeneratorConfig {
            unique_field: Some(name.to_owned()),
            ..base.clone()
        };
        assert!(
            matches!(
                Generator::new(park.clone(), config),
                Err(GeneratorConfigError::UniqueField { .. })
            ),
            "{name:?} accepted"
        );
    }
    let config = GeneratorConfig {
        unique_field: Some("run-seq_1".to_owned()),
        ..base
    };
    assert!(Generator::new(park, config).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// What the simulator writes parses back to the same events, whatever the seeds and the
    /// faults other than malformed lines.
    #[test]
    fn what_the_simulator_writes_parses_back(
        park_seed in any::<u64>(),
        seed in any::<u64>(),
        duplicate_share in 0.0..0.3f64,
        out_of_order_share in 0.0..0.3f64,
        unique in any::<bool>(),
        breach in any::<bool>(),
    ) {
        let park_config = ParkConfig { seed: park_seed, ..ParkConfig::default() };
        let park = Park::generate(&park_config).unwrap();
        let start_ns = GeneratorConfig::default().start_ns;
        let config = GeneratorConfig {
            seed,
            events_per_second: 10,
            duplicate_share,
            out_of_order_share,
            unique_field: unique.then(|| "seq".to_owned()),
            stage_breach_at_ns: breach.then_some(start_ns + 60_000_000_000),
            ..GeneratorConfig::default()
        };
        let run = events(&park, config, 1_500);
        let body = body(&run);
        let parsed: Vec<Event> = parse_lines(&body, Precision::Ns, ParseLimits::default())
            .map(|(_, line)| line.map(|line| line.into_owned()))
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<Event> = run
            .iter()
            .map(|event| match &event.line {
                SimLine::Valid(event) => event.clone(),
                SimLine::Malformed(_) => panic!("malformed with a share of 0"),
            })
            .collect();
        prop_assert_eq!(parsed, expected);
        if !breach {
            check_animals_stay_home(&park, &run, 0.0);
        }
    }
}
