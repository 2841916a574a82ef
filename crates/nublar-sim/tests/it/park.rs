//! The park: generation, addresses, fences, and the GeoJSON that carries it to the
//! processors and the demo.

use std::collections::HashSet;
use std::net::Ipv6Addr;

use nublar_sim::geo::{is_convex_polygon, is_simple_polygon};
use nublar_sim::{GeoJsonError, GeoPoint, Ipv6Prefix, Park, ParkConfig, ParkConfigError};
use serde_json::{Value, json};

fn config(seed: u64) -> ParkConfig {
    ParkConfig {
        seed,
        ..ParkConfig::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_park_and_another_seed_another() {
    let first = Park::generate(&config(7)).unwrap();
    let again = Park::generate(&config(7)).unwrap();
    assert_eq!(first, again);
    assert_eq!(first.to_geojson(), again.to_geojson());
    let other = Park::generate(&config(8)).unwrap();
    assert_ne!(first.to_geojson(), other.to_geojson());
    assert_ne!(first.paddocks()[0].fence, other.paddocks()[0].fence);
    assert_ne!(first.animals()[0].address, other.animals()[0].address);
}

#[test]
fn every_sensor_has_a_unique_address_inside_the_prefix() {
    let prefixes = [
        "2001:db8:7::/48",
        "fd00:abcd:1:2::/64",
        "2001:db8::ff00/117",
    ];
    for (seed, prefix) in prefixes.into_iter().enumerate() {
        let prefix: Ipv6Prefix = prefix.parse().unwrap();
        let park = Park::generate(&ParkConfig {
            seed: seed as u64,
            ipv6_prefix: prefix,
            ..ParkConfig::default()
        })
        .unwrap();
        let addresses: Vec<Ipv6Addr> = park.sensors().map(|sensor| park.address(sensor)).collect();
        assert_eq!(addresses.len(), park.sensor_count());
        assert_eq!(addresses.len(), ParkConfig::default().sensor_count());
        let unique: HashSet<Ipv6Addr> = addresses.iter().copied().collect();
        assert_eq!(unique.len(), addresses.len(), "{prefix}");
        for address in addresses {
            assert!(prefix.contains(address), "{address} outside {prefix}");
            assert_ne!(
                address,
                prefix.network(),
                "the subnet-router anycast address"
            );
        }
    }
}

#[test]
fn a_config_out_of_range_is_refused_with_its_reason() {
    let small_prefix: Ipv6Prefix = "2001:db8::/120".parse().unwrap();
    let cases: Vec<(ParkConfig, &str)> = vec![
        (
            ParkConfig {
                habitats: 0,
                ..config(0)
            },
            "habitats",
        ),
        (
            ParkConfig {
                habitats: 17,
                ..config(0)
            },
            "habitats",
        ),
        (
            ParkConfig {
                paddocks_per_habitat: 0,
                ..config(0)
            },
            "paddocks per habitat",
        ),
        (
            ParkConfig {
                fence_segments_per_paddock: 4,
                ..config(0)
            },
            "fence segments",
        ),
        (
            ParkConfig {
                fence_segments_per_paddock: 65,
                ..config(0)
            },
            "fence segments",
        ),
        (
            ParkConfig {
                animals: 1_000_001,
                ..config(0)
            },
            "animals",
        ),
        (
            ParkConfig {
                gates: 10_001,
                ..config(0)
            },
            "gates",
        ),
        (
            ParkConfig {
                ipv6_prefix: small_prefix,
                ..config(0)
            },
            "too small",
        ),
        (
            ParkConfig {
                centre: GeoPoint {
                    lat: 89.0,
                    lon: 0.0,
                },
                ..config(0)
            },
            "centre",
        ),
    ];
    for (config, expected) in cases {
        let error = Park::generate(&config).unwrap_err();
        assert!(
            error.to_string().contains(expected),
            "{error} lacks {expected}"
        );
    }
    // 127 sensors need 254 addresses; a /120 holds 255 usable ones.
    let fits = ParkConfig {
        habitats: 1,
        paddocks_per_habitat: 2,
        fence_segments_per_paddock: 5,
        animals: 113,
        weather_stations_per_habitat: 2,
        gates: 2,
        ipv6_prefix: small_prefix,
        ..config(0)
    };
    assert_eq!(fits.sensor_count(), 127);
    let park = Park::generate(&fits).unwrap();
    assert_eq!(park.sensor_count(), 127);
    let one_more = ParkConfig {
        animals: 114,
        ..fits
    };
    assert_eq!(
        Park::generate(&one_more).unwrap_err(),
        ParkConfigError::PrefixTooSmall {
            prefix: small_prefix,
            sensors: 128
        }
    );
}

#[test]
fn fences_are_simple_apart_and_every_second_one_concave() {
    for seed in 0..20 {
        let park = Park::generate(&ParkConfig {
            seed,
            fence_segments_per_paddock: 5 + seed as usize % 10,
            ..ParkConfig::default()
        })
        .unwrap();
        for (index, paddock) in park.paddocks().iter().enumerate() {
            assert!(
                is_simple_polygon(&paddock.fence),
                "seed {seed} {}",
                paddock.name
            );
            assert_eq!(paddock.fence.len(), 5 + seed as usize % 10);
            assert_eq!(paddock.segments.len(), paddock.fence.len());
            assert_eq!(
                is_convex_polygon(&paddock.fence),
                paddock.is_convex(),
                "the method and the function agree"
            );
            if index % 2 == 1 {
                assert!(
                    !paddock.is_convex(),
                    "seed {seed} {} has no notch",
                    paddock.name
                );
            }
            for other in park
                .paddocks()
                .iter()
                .filter(|other| other.name != paddock.name)
            {
                for corner in &paddock.fence {
                    assert!(!other.contains(corner.lat, corner.lon), "fences overlap");
                }
            }
        }
    }
}

#[test]
fn animals_start_at_home_and_gates_sit_on_their_fence() {
    let park = Park::generate(&ParkConfig {
        animals: 500,
        gates: 40,
        ..config(3)
    })
    .unwrap();
    for animal in park.animals() {
        let paddock = &park.paddocks()[animal.paddock];
        assert!(
            paddock.contains(animal.start.lat, animal.start.lon),
            "{}",
            animal.name
        );
        assert!(paddock.species_allowed.contains(&animal.species));
    }
    // Animals are dealt to paddocks in turn, so every paddock has some.
    for index in 0..park.paddocks().len() {
        assert!(park.animals().iter().any(|animal| animal.paddock == index));
    }
    for gate in park.gates() {
        let paddock = &park.paddocks()[gate.paddock];
        assert!(paddock.distance_to_fence_m(gate.position.lat, gate.position.lon) < 0.05);
    }
    for station in park.weather_stations() {
        let habitat_paddocks = park
            .paddocks()
            .iter()
            .filter(|paddock| paddock.habitat == station.habitat);
        assert!(
            habitat_paddocks
                .into_iter()
                .any(|paddock| paddock.contains(station.position.lat, station.position.lon)),
            "{} stands outside its habitat",
            station.name
        );
    }
}

#[test]
fn geojson_round_trips_exactly() {
    for seed in 0..10 {
        let park = Park::generate(&ParkConfig {
            seed,
            animals: 200,
            ..ParkConfig::default()
        })
        .unwrap();
        let text = park.to_geojson();
        let read = Park::from_geojson(&text).unwrap();
        assert_eq!(read, park, "seed {seed}");
        assert_eq!(read.to_geojson(), text);
    }
}

#[test]
fn geojson_is_a_feature_collection_of_the_documented_shape() {
    let park = Park::generate(&config(1)).unwrap();
    let document: Value = serde_json::from_str(&park.to_geojson()).unwrap();
    assert_eq!(document["type"], "FeatureCollection");
    assert_eq!(document["nublar"]["format"], 1);
    assert_eq!(document["nublar"]["prefix"], "2001:db8:7::/48");
    let features = document["features"].as_array().unwrap();
    let count = |kind: &str| {
        features
            .iter()
            .filter(|feature| feature["properties"]["kind"] == kind)
            .count()
    };
    assert_eq!(count("paddock"), park.paddocks().len());
    assert_eq!(count("gate"), park.gates().len());
    assert_eq!(count("weather_station"), park.weather_stations().len());
    assert_eq!(count("animal"), park.animals().len());
    let paddock = &features[0];
    assert_eq!(paddock["geometry"]["type"], "Polygon");
    let ring = paddock["geometry"]["coordinates"][0].as_array().unwrap();
    assert_eq!(ring.first(), ring.last(), "rings are closed");
    // RFC 7946 positions are [lon, lat].
    let first = &park.paddocks()[0].fence[0];
    assert_eq!(ring[0], json!([first.lon, first.lat]));
    assert!(
        nublar_sim::geo::signed_area(&park.paddocks()[0].fence) > 0.0,
        "counter-clockwise"
    );
    assert_eq!(paddock["properties"]["paddock"], park.paddocks()[0].name);
    assert!(
        !paddock["properties"]["species_allowed"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let animal = features
        .iter()
        .find(|feature| feature["properties"]["kind"] == "animal")
        .unwrap();
    assert_eq!(animal["properties"]["paddock"], park.paddocks()[0].name);
}

/// Edits a generated park's GeoJSON and expects the reader to refuse it, naming the place.
fn check_refused(edit: impl FnOnce(&mut Value), at: &str, reason: &str) {
    let park = Park::generate(&config(5)).unwrap();
    let mut document: Value = serde_json::from_str(&park.to_geojson()).unwrap();
    edit(&mut document);
    match Park::from_geojson(&document.to_string()) {
        Err(GeoJsonError::Invalid {
            at: actual_at,
            reason: actual_reason,
        }) => {
            assert!(actual_at.contains(at), "at {actual_at:?}, expected {at:?}");
            assert!(
                actual_reason.contains(reason),
                "reason {actual_reason:?}, expected {reason:?}"
            );
        }
        other => panic!("expected a refusal at {at}, got {other:?}"),
    }
}

fn kind_index(document: &Value, kind: &str) -> usize {
    document["features"]
        .as_array()
        .unwrap()
        .iter()
        .position(|feature| feature["properties"]["kind"] == kind)
        .unwrap()
}

#[test]
fn geojson_that_breaks_an_invariant_is_refused() {
    check_refused(
        |document| {
            document.as_object_mut().unwrap().remove("nublar");
        },
        "nublar",
        "missing",
    );
    check_refused(
        |document| document["type"] = json!("Feature"),
        "type",
        "FeatureCollection",
    );
    check_refused(
        |document| {
            document["features"][0]["geometry"]["coordinates"][0]
                .as_array_mut()
                .unwrap()
                .pop();
        },
        "features[0].geometry.coordinates[0]",
        "closed",
    );
    check_refused(
        |document| {
            let ring = document["features"][0]["geometry"]["coordinates"][0]
                .as_array_mut()
                .unwrap();
            ring.swap(1, 3);
        },
        "paddock",
        "crosses",
    );
    check_refused(
        |document| {
            let ring = document["features"][0]["geometry"]["coordinates"][0].clone();
            document["features"][0]["geometry"]["coordinates"] = json!([ring.clone(), ring]);
        },
        "features[0].geometry.coordinates",
        "without holes",
    );
    check_refused(
        |document| {
            let animal = kind_index(document, "animal");
            document["features"][animal]["geometry"]["coordinates"] = json!([0.0, 0.0]);
        },
        "animal",
        "does not start inside",
    );
    check_refused(
        |document| {
            let animal = kind_index(document, "animal");
            document["features"][animal]["properties"]["address"] = json!("2001:db8:8::1");
        },
        "Collar",
        "outside",
    );
    check_refused(
        |document| {
            let gate = kind_index(document, "gate");
            let copied = document["features"][0]["properties"]["segments"][0]["address"].clone();
            document["features"][gate]["properties"]["address"] = copied;
        },
        "Gate",
        "used twice",
    );
    check_refused(
        |document| {
            let gate = kind_index(document, "gate");
            document["features"][gate]["properties"]["paddock"] = json!("nowhere");
        },
        "properties.paddock",
        "not defined",
    );
    check_refused(
        |document| {
            let gate = kind_index(document, "gate");
            document["features"][gate]["properties"]["segment"] = json!(99);
        },
        "gate gate-1",
        "unknown segment",
    );
    check_refused(
        |document| document["features"][0]["properties"]["kind"] = json!("pond"),
        "features[0].properties.kind",
        "unknown kind",
    );
    check_refused(
        |document| {
            let gate = kind_index(document, "gate");
            document["features"][gate]["properties"]["gate"] = json!("bad\\name");
        },
        "gates",
        "backslash",
    );
    check_refused(
        |document| {
            let gate = kind_index(document, "gate");
            let name = document["features"][gate]["properties"]["gate"].clone();
            document["features"][gate + 1]["properties"]["gate"] = name;
        },
        "gates",
        "used twice",
    );
    check_refused(
        |document| {
            document["features"][0]["properties"]["segments"]
                .as_array_mut()
                .unwrap()
                .pop();
        },
        "paddock",
        "one fence segment per edge",
    );
    check_refused(
        |document| document["nublar"]["format"] = json!(2),
        "nublar.format",
        "format 1",
    );
    assert!(matches!(
        Park::from_geojson("{\"type\":"),
        Err(GeoJsonError::Json(_))
    ));
}
