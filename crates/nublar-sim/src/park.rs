//! The park: habitats, fenced paddocks, gates, weather stations, species and individual
//! animals, every sensor with its own IPv6 address inside one prefix.
//!
//! A park is either generated from a seed ([`Park::generate`]) or read from the GeoJSON that
//! [`Park::to_geojson`] writes, so that the simulator, the processors' geofence rules and the
//! demo all work on the same fences. Both ways check the same invariants, and a [`Park`] can
//! be built no other way, so everything holding one may rely on them: names are unique per
//! kind, addresses are unique and inside the prefix, fences are simple polygons, every animal
//! starts inside its home paddock, and every index points at something.
//!
//! # A generated park
//!
//! Paddocks sit on a square grid of cells 800 m wide around the configured centre, a
//! habitat's paddocks in consecutive cells, so that no two fences cross. A fence is
//! star-shaped around its cell's centre: its corners go round in angular order at random
//! distances of 75 to 100 % of 360 m, which always makes a simple polygon. Every second
//! paddock gets one corner pulled in to a tenth of that distance, a notch that makes the fence
//! concave, because real fences follow rivers and ridges and a geofence that only works for
//! convex shapes would pass its tests and fail in the park. Corners are counter-clockwise.
//!
//! Fence segment `i` of a paddock is the edge from corner `i` to corner `i + 1` (the last
//! edge closes the ring); each has its own voltage monitor. Gates lie on a random segment of a
//! random paddock; a habitat's weather stations stand inside random paddocks of it; animals are
//! dealt to the paddocks in turn (animal `i` to paddock `i mod paddocks`), each of a species
//! the paddock allows. Addresses are drawn at random from the prefix (never the all-zero host,
//! the subnet-router anycast address), collars first, then weather stations, fence segments
//! and gates.
//!
//! Coordinates are rounded to 1e-7 degrees (about 1 cm) so that they survive GeoJSON and line
//! protocol exactly.
//!
//! # GeoJSON schema (format 1)
//!
//! One `FeatureCollection` (RFC 7946; positions are `[lon, lat]`), written one feature per
//! line, with a foreign member `nublar` for what has no geometry:
//!
//! ```text
//! {"type": "FeatureCollection",
//!  "nublar": {"format": 1, "prefix": "2001:db8:7::/48",
//!             "habitats": [{"habitat": "savanna", "temp_c_mean": 24.0,
//!                           "temp_c_daily_amplitude": 7.0, "humidity_mean": 45.0}, ...],
//!             "species": [{"species": "zebra", "habitat": "savanna",
//!                          "heart_bpm_rest": 45.0, "speed_ms_max": 16.0}, ...]},
//!  "features": [
//!   {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[lon, lat], ...]]},
//!    "properties": {"kind": "paddock", "paddock": "savanna-1", "habitat": "savanna",
//!                   "species_allowed": ["zebra", "giraffe"],
//!                   "segments": [{"segment": "savanna-1/0", "address": "2001:db8:7::..."}, ...]}},
//!   {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
//!    "properties": {"kind": "gate", "gate": "gate-1", "paddock": "savanna-1", "segment": 3,
//!                   "address": "..."}},
//!   {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
//!    "properties": {"kind": "weather_station", "station": "savanna-ws1", "habitat": "savanna",
//!                   "address": "..."}},
//!   {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
//!    "properties": {"kind": "animal", "animal": "zebra-00001", "species": "zebra",
//!                   "paddock": "savanna-1", "address": "..."}}
//!  ]}
//! ```
//!
//! - A paddock's ring is closed (its last position repeats the first) and has no holes; its
//!   `segments` list the monitors of the edges in ring order, one per edge. Either orientation
//!   is read, as RFC 7946 asks of parsers; the order of corners is kept, since it numbers the
//!   segments.
//! - A gate's `segment` is the index of the paddock edge it sits on (within 1 m of it).
//! - An animal's point is where it starts; its home paddock is its `paddock` property.
//! - Features may come in any order; within a kind, the order of the file is the order of the
//!   park (and of the simulator's sensors). Generated files list paddocks, gates, weather
//!   stations and animals, in that order.
//! - Unknown properties and members are ignored; a third coordinate (altitude) is ignored.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv6Addr;

use serde_json::{Value, json};

use crate::geo::{self, GeoPoint, LocalFrame};
use crate::limits::{
    ANIMALS_MAX, FENCE_SEGMENTS_PER_PADDOCK_MAX, FENCE_SEGMENTS_PER_PADDOCK_MIN,
    FENCE_VERTICES_MIN, GATES_MAX, GEOJSON_BYTES_MAX, HABITATS_MAX, NAME_BYTES_MAX, PADDOCKS_MAX,
    PADDOCKS_PER_HABITAT_MAX, PREFIX_ADDRESSES_PER_SENSOR_MIN, SENSORS_MAX,
    WEATHER_STATIONS_PER_HABITAT_MAX,
};
use crate::prefix::Ipv6Prefix;
use crate::rng::SimRng;

/// What to generate; [`ParkConfig::default`] is a small park that shows every feature.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkConfig {
    pub seed: u64,
    pub habitats: usize,
    pub paddocks_per_habitat: usize,
    pub animals: usize,
    pub weather_stations_per_habitat: usize,
    pub fence_segments_per_paddock: usize,
    pub gates: usize,
    pub ipv6_prefix: Ipv6Prefix,
    pub centre: GeoPoint,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Park {
    prefix: Ipv6Prefix,
    habitats: Vec<Habitat>,
    species: Vec<Species>,
    paddocks: Vec<Paddock>,
    gates: Vec<Gate>,
    weather_stations: Vec<WeatherStation>,
    animals: Vec<Animal>,
}

/// A climate: the weather stations of a habitat report around these values.
#[derive(Debug, Clone, PartialEq)]
pub struct Habitat {
    pub name: String,
    pub temp_c_mean: f64,
    /// Half the difference between the warmest (15:00 local solar time) and the coldest
    /// (03:00) hour of a day.
    pub temp_c_daily_amplitude: f64,
    pub humidity_mean: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Species {
    pub name: String,
    /// Index into [`Park::habitats`].
    pub habitat: usize,
    pub heart_bpm_rest: f64,
    pub speed_ms_max: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Paddock {
    pub name: String,
    /// Index into [`Park::habitats`].
    pub habitat: usize,
    /// Indexes into [`Park::species`].
    pub species_allowed: Vec<usize>,
    /// The corners of the fence, the ring not closed: edge `i` runs from corner `i` to corner
    /// `(i + 1) % len`.
    pub fence: Vec<GeoPoint>,
    /// One monitor per edge, in the order of the edges.
    pub segments: Vec<FenceSegment>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FenceSegment {
    pub name: String,
    pub address: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub name: String,
    /// Index into [`Park::paddocks`].
    pub paddock: usize,
    /// The edge of the paddock's fence the gate sits on.
    pub segment: usize,
    pub position: GeoPoint,
    pub address: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeatherStation {
    pub name: String,
    /// Index into [`Park::habitats`].
    pub habitat: usize,
    pub position: GeoPoint,
    pub address: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Animal {
    pub name: String,
    /// Index into [`Park::species`].
    pub species: usize,
    /// The home paddock, an index into [`Park::paddocks`].
    pub paddock: usize,
    /// Where the simulation starts it; always inside the home paddock.
    pub start: GeoPoint,
    /// The address of its collar.
    pub address: Ipv6Addr,
}

/// One sensor of the park, by the indexes of what it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sensor {
    Collar { animal: usize },
    Weather { station: usize },
    Fence { paddock: usize, segment: usize },
    Gate { gate: usize },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParkConfigError {
    #[error("{what} must be from {min} to {max}, not {value}")]
    OutOfRange {
        what: &'static str,
        value: usize,
        min: usize,
        max: usize,
    },
    #[error(
        "prefix {prefix} is too small for {sensors} sensors: it needs at least \
         {PREFIX_ADDRESSES_PER_SENSOR_MIN} addresses per sensor"
    )]
    PrefixTooSmall { prefix: Ipv6Prefix, sensors: usize },
    #[error("the park centre must lie within 80° of the equator and 179° of Greenwich")]
    Centre,
}

#[derive(Debug, thiserror::Error)]
pub enum GeoJsonError {
    #[error("the park file is {bytes} bytes long, more than the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("the park file is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `at` names the place in the document, such as `features[3].properties.paddock`.
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
}

impl Default for ParkConfig {
    fn default() -> Self {
        ParkConfig {
            seed: 0,
            habitats: 4,
            paddocks_per_habitat: 3,
            animals: 60,
            weather_stations_per_habitat: 2,
            fence_segments_per_paddock: 8,
            gates: 6,
            ipv6_prefix: Ipv6Prefix::new(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 0), 48)
                .expect("48 is a prefix length"),
            centre: GeoPoint {
                lat: -2.3333,
                lon: 34.8333,
            },
        }
    }
}

impl ParkConfig {
    pub fn sensor_count(&self) -> usize {
        self.animals + self.fixed_sensors()
    }

    /// This park with as many animals as make `sensors` in all (at least one): stations,
    /// fences and gates stay as they are, collars make up the rest.
    pub fn with_sensors(self, sensors: usize) -> ParkConfig {
        ParkConfig {
            animals: sensors.saturating_sub(self.fixed_sensors()).max(1),
            ..self
        }
    }

    fn fixed_sensors(&self) -> usize {
        self.habitats * self.weather_stations_per_habitat
            + self.habitats * self.paddocks_per_habitat * self.fence_segments_per_paddock
            + self.gates
    }

    fn validate(&self) -> Result<(), ParkConfigError> {
        let ranges = [
            ("habitats", self.habitats, 1, HABITATS_MAX),
            (
                "paddocks per habitat",
                self.paddocks_per_habitat,
                1,
                PADDOCKS_PER_HABITAT_MAX,
            ),
            ("animals", self.animals, 0, ANIMALS_MAX),
            (
                "weather stations per habitat",
                self.weather_stations_per_habitat,
                0,
                WEATHER_STATIONS_PER_HABITAT_MAX,
            ),
            (
                "fence segments per paddock",
                self.fence_segments_per_paddock,
                FENCE_SEGMENTS_PER_PADDOCK_MIN,
                FENCE_SEGMENTS_PER_PADDOCK_MAX,
            ),
            ("gates", self.gates, 0, GATES_MAX),
        ];
        for (what, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ParkConfigError::OutOfRange {
                    what,
                    value,
                    min,
                    max,
                });
            }
        }
        let sensors = self.sensor_count();
        if sensors > SENSORS_MAX {
            return Err(ParkConfigError::OutOfRange {
                what: "sensors",
                value: sensors,
                min: 0,
                max: SENSORS_MAX,
            });
        }
        if !(self.centre.lat.abs() <= 80.0 && self.centre.lon.abs() <= 179.0) {
            return Err(ParkConfigError::Centre);
        }
        if !prefix_holds(self.ipv6_prefix, sensors) {
            return Err(ParkConfigError::PrefixTooSmall {
                prefix: self.ipv6_prefix,
                sensors,
            });
        }
        Ok(())
    }
}

impl Park {
    /// The same config, seed included, always gives the same park.
    pub fn generate(config: &ParkConfig) -> Result<Park, ParkConfigError> {
        config.validate()?;
        let mut rng = SimRng::new(config.seed);
        let mut habitats = Vec::with_capacity(config.habitats);
        let mut species = Vec::new();
        for (habitat_index, climate) in HABITAT_CATALOGUE.iter().take(config.habitats).enumerate() {
            habitats.push(Habitat {
                name: climate.name.to_owned(),
                temp_c_mean: climate.temp_c_mean,
                temp_c_daily_amplitude: climate.temp_c_daily_amplitude,
                humidity_mean: climate.humidity_mean,
            });
            for entry in SPECIES_CATALOGUE
                .iter()
                .filter(|entry| entry.habitat == climate.name)
            {
                species.push(Species {
                    name: entry.name.to_owned(),
                    habitat: habitat_index,
                    heart_bpm_rest: entry.heart_bpm_rest,
                    speed_ms_max: entry.speed_ms_max,
                });
            }
        }

        let paddock_count = config.habitats * config.paddocks_per_habitat;
        let columns = (paddock_count as f64).sqrt().ceil() as usize;
        let rows = paddock_count.div_ceil(columns);
        let park_frame = LocalFrame::new(config.centre);
        let mut paddocks = Vec::with_capacity(paddock_count);
        for (habitat_index, habitat) in habitats.iter().enumerate() {
            let mut habitat_species: Vec<usize> = (0..species.len())
                .filter(|&index| species[index].habitat == habitat_index)
                .collect();
            for number in 0..config.paddocks_per_habitat {
                let cell = paddocks.len();
                let x = ((cell % columns) as f64 - (columns - 1) as f64 / 2.0) * CELL_M;
                let y = ((cell / columns) as f64 - (rows - 1) as f64 / 2.0) * CELL_M;
                let fence = star_fence(
                    &mut rng,
                    park_frame.point_at(x, y),
                    config.fence_segments_per_paddock,
                    cell % 2 == 1,
                );
                rng.shuffle(&mut habitat_species);
                let allowed_count = 1 + rng.index(habitat_species.len());
                let mut species_allowed = habitat_species[..allowed_count].to_vec();
                species_allowed.sort_unstable();
                paddocks.push(Paddock {
                    name: format!("{}-{}", habitat.name, number + 1),
                    habitat: habitat_index,
                    species_allowed,
                    fence,
                    segments: Vec::new(),
                });
            }
        }

        let mut addresses = AddressDrawer::new(config.ipv6_prefix);
        let mut animals = Vec::with_capacity(config.animals);
        for number in 0..config.animals {
            let paddock_index = number % paddocks.len();
            let paddock = &paddocks[paddock_index];
            let species_index = paddock.species_allowed[rng.index(paddock.species_allowed.len())];
            animals.push(Animal {
                name: format!("{}-{:05}", species[species_index].name, number + 1),
                species: species_index,
                paddock: paddock_index,
                start: random_point_inside(&mut rng, &paddock.fence),
                address: Ipv6Addr::UNSPECIFIED,
            });
        }
        let mut weather_stations = Vec::new();
        for (habitat_index, habitat) in habitats.iter().enumerate() {
            let first_paddock = habitat_index * config.paddocks_per_habitat;
            for number in 0..config.weather_stations_per_habitat {
                let paddock = first_paddock + rng.index(config.paddocks_per_habitat);
                weather_stations.push(WeatherStation {
                    name: format!("{}-ws{}", habitat.name, number + 1),
                    habitat: habitat_index,
                    position: random_point_inside(&mut rng, &paddocks[paddock].fence),
                    address: Ipv6Addr::UNSPECIFIED,
                });
            }
        }
        let mut gates = Vec::with_capacity(config.gates);
        for number in 0..config.gates {
            let paddock = rng.index(paddocks.len());
            let segment = rng.index(paddocks[paddock].fence.len());
            let (start, end) = paddocks[paddock].edge(segment);
            let along = rng.range(0.25, 0.75);
            gates.push(Gate {
                name: format!("gate-{}", number + 1),
                paddock,
                segment,
                position: geo::quantize(GeoPoint {
                    lat: start.lat + along * (end.lat - start.lat),
                    lon: start.lon + along * (end.lon - start.lon),
                }),
                address: Ipv6Addr::UNSPECIFIED,
            });
        }

        for animal in &mut animals {
            animal.address = addresses.draw(&mut rng);
        }
        for station in &mut weather_stations {
            station.address = addresses.draw(&mut rng);
        }
        for paddock in &mut paddocks {
            paddock.segments = (0..paddock.fence.len())
                .map(|edge| FenceSegment {
                    name: format!("{}/{}", paddock.name, edge),
                    address: addresses.draw(&mut rng),
                })
                .collect();
        }
        for gate in &mut gates {
            gate.address = addresses.draw(&mut rng);
        }

        let park = Park {
            prefix: config.ipv6_prefix,
            habitats,
            species,
            paddocks,
            gates,
            weather_stations,
            animals,
        };
        if let Err((at, reason)) = park.check() {
            panic!("generated park breaks an invariant at {at}: {reason}");
        }
        Ok(park)
    }

    pub fn prefix(&self) -> Ipv6Prefix {
        self.prefix
    }

    pub fn habitats(&self) -> &[Habitat] {
        &self.habitats
    }

    pub fn species(&self) -> &[Species] {
        &self.species
    }

    pub fn paddocks(&self) -> &[Paddock] {
        &self.paddocks
    }

    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    pub fn weather_stations(&self) -> &[WeatherStation] {
        &self.weather_stations
    }

    pub fn animals(&self) -> &[Animal] {
        &self.animals
    }

    /// Every sensor: collars, weather stations, fence segments, gates, each in park order.
    pub fn sensors(&self) -> impl Iterator<Item = Sensor> + '_ {
        let collars = (0..self.animals.len()).map(|animal| Sensor::Collar { animal });
        let stations = (0..self.weather_stations.len()).map(|station| Sensor::Weather { station });
        let fences = self
            .paddocks
            .iter()
            .enumerate()
            .flat_map(|(paddock, fence)| {
                (0..fence.segments.len()).map(move |segment| Sensor::Fence { paddock, segment })
            });
        let gates = (0..self.gates.len()).map(|gate| Sensor::Gate { gate });
        collars.chain(stations).chain(fences).chain(gates)
    }

    pub fn sensor_count(&self) -> usize {
        self.animals.len()
            + self.weather_stations.len()
            + self
                .paddocks
                .iter()
                .map(|paddock| paddock.segments.len())
                .sum::<usize>()
            + self.gates.len()
    }

    /// Panics for a sensor of another park (an index out of range), which is a bug.
    pub fn address(&self, sensor: Sensor) -> Ipv6Addr {
        match sensor {
            Sensor::Collar { animal } => self.animals[animal].address,
            Sensor::Weather { station } => self.weather_stations[station].address,
            Sensor::Fence { paddock, segment } => self.paddocks[paddock].segments[segment].address,
            Sensor::Gate { gate } => self.gates[gate].address,
        }
    }

    /// See the module documentation for the schema.
    pub fn to_geojson(&self) -> String {
        let habitats: Vec<Value> = self
            .habitats
            .iter()
            .map(|habitat| {
                json!({
                    "habitat": habitat.name,
                    "temp_c_mean": habitat.temp_c_mean,
                    "temp_c_daily_amplitude": habitat.temp_c_daily_amplitude,
                    "humidity_mean": habitat.humidity_mean,
                })
            })
            .collect();
        let species: Vec<Value> = self
            .species
            .iter()
            .map(|species| {
                json!({
                    "species": species.name,
                    "habitat": self.habitats[species.habitat].name,
                    "heart_bpm_rest": species.heart_bpm_rest,
                    "speed_ms_max": species.speed_ms_max,
                })
            })
            .collect();
        let header = json!({
            "format": GEOJSON_FORMAT,
            "prefix": self.prefix.to_string(),
            "habitats": habitats,
            "species": species,
        });
        // One feature per line keeps a large park readable and its diffs small; each is
        // written as soon as it is built, so that a park of a million animals never holds a
        // million JSON trees at once.
        let mut text = String::new();
        write!(
            text,
            "{{\"type\":\"FeatureCollection\",\"nublar\":{header},\"features\":["
        )
        .expect("writing to a String cannot fail");
        let mut first = true;
        let mut push = |feature: Value| {
            let separator = if first { "\n" } else { ",\n" };
            first = false;
            write!(text, "{separator}{feature}").expect("writing to a String cannot fail");
        };
        for paddock in &self.paddocks {
            let mut ring: Vec<Value> = paddock
                .fence
                .iter()
                .map(|&corner| position(corner))
                .collect();
            ring.push(position(paddock.fence[0]));
            let species_allowed: Vec<&str> = paddock
                .species_allowed
                .iter()
                .map(|&index| self.species[index].name.as_str())
                .collect();
            let segments: Vec<Value> = paddock
                .segments
                .iter()
                .map(|segment| {
                    json!({"segment": segment.name, "address": segment.address.to_string()})
                })
                .collect();
            push(feature(
                json!({"type": "Polygon", "coordinates": [ring]}),
                json!({
                    "kind": "paddock",
                    "paddock": paddock.name,
                    "habitat": self.habitats[paddock.habitat].name,
                    "species_allowed": species_allowed,
                    "segments": segments,
                }),
            ));
        }
        for gate in &self.gates {
            push(feature(
                point(gate.position),
                json!({
                    "kind": "gate",
                    "gate": gate.name,
                    "paddock": self.paddocks[gate.paddock].name,
                    "segment": gate.segment,
                    "address": gate.address.to_string(),
                }),
            ));
        }
        for station in &self.weather_stations {
            push(feature(
                point(station.position),
                json!({
                    "kind": "weather_station",
                    "station": station.name,
                    "habitat": self.habitats[station.habitat].name,
                    "address": station.address.to_string(),
                }),
            ));
        }
        for animal in &self.animals {
            push(feature(
                point(animal.start),
                json!({
                    "kind": "animal",
                    "animal": animal.name,
                    "species": self.species[animal.species].name,
                    "paddock": self.paddocks[animal.paddock].name,
                    "address": animal.address.to_string(),
                }),
            ));
        }
        text.push_str("\n]}\n");
        text
    }

    /// Checks everything a generated park guarantees, so that a hand-edited file cannot give
    /// the simulator or a geofence rule a fence that crosses itself or an animal outside its
    /// paddock.
    pub fn from_geojson(text: &str) -> Result<Park, GeoJsonError> {
        if text.len() > GEOJSON_BYTES_MAX {
            return Err(GeoJsonError::TooLarge {
                bytes: text.len(),
                max: GEOJSON_BYTES_MAX,
            });
        }
        let document: Value = serde_json::from_str(text)?;
        let park = read_park(&document)?;
        park.check()
            .map_err(|(at, reason)| GeoJsonError::Invalid { at, reason })?;
        Ok(park)
    }

    /// The invariants of the module documentation; the error names where and why.
    fn check(&self) -> Result<(), (String, String)> {
        let fail = |at: String, reason: &str| Err((at, reason.to_owned()));
        let counts = [
            ("habitats", self.habitats.len(), HABITATS_MAX),
            ("paddocks", self.paddocks.len(), PADDOCKS_MAX),
            ("animals", self.animals.len(), ANIMALS_MAX),
            ("gates", self.gates.len(), GATES_MAX),
            (
                "weather stations",
                self.weather_stations.len(),
                HABITATS_MAX * WEATHER_STATIONS_PER_HABITAT_MAX,
            ),
            ("sensors", self.sensor_count(), SENSORS_MAX),
        ];
        for (what, count, max) in counts {
            if count > max {
                return fail(
                    what.to_owned(),
                    &format!("{count} is more than the limit of {max}"),
                );
            }
        }
        if self.paddocks.is_empty() {
            return fail("paddocks".to_owned(), "a park needs at least one paddock");
        }
        check_names(
            "habitats",
            self.habitats.iter().map(|habitat| &habitat.name),
        )?;
        check_names("species", self.species.iter().map(|species| &species.name))?;
        check_names(
            "paddocks",
            self.paddocks.iter().map(|paddock| &paddock.name),
        )?;
        check_names(
            "fence segments",
            self.paddocks
                .iter()
                .flat_map(|paddock| paddock.segments.iter().map(|segment| &segment.name)),
        )?;
        check_names("gates", self.gates.iter().map(|gate| &gate.name))?;
        check_names(
            "weather stations",
            self.weather_stations.iter().map(|station| &station.name),
        )?;
        check_names("animals", self.animals.iter().map(|animal| &animal.name))?;

        for habitat in &self.habitats {
            let values = [
                habitat.temp_c_mean,
                habitat.temp_c_daily_amplitude,
                habitat.humidity_mean,
            ];
            if !values.iter().all(|value| value.is_finite())
                || !(0.0..=100.0).contains(&habitat.humidity_mean)
                || habitat.temp_c_daily_amplitude < 0.0
            {
                return fail(
                    format!("habitat {}", habitat.name),
                    "climate values out of range",
                );
            }
        }
        for species in &self.species {
            if species.habitat >= self.habitats.len()
                || !(species.heart_bpm_rest.is_finite() && species.heart_bpm_rest > 0.0)
                || !(species.speed_ms_max.is_finite() && species.speed_ms_max > 0.0)
            {
                return fail(
                    format!("species {}", species.name),
                    "habitat or values out of range",
                );
            }
        }
        for paddock in &self.paddocks {
            let at = format!("paddock {}", paddock.name);
            if paddock.habitat >= self.habitats.len() {
                return fail(at, "unknown habitat");
            }
            if paddock
                .species_allowed
                .iter()
                .any(|&index| index >= self.species.len())
            {
                return fail(at, "unknown species");
            }
            if !(FENCE_VERTICES_MIN..=FENCE_SEGMENTS_PER_PADDOCK_MAX).contains(&paddock.fence.len())
            {
                return fail(
                    at,
                    &format!(
                        "a fence needs {FENCE_VERTICES_MIN} to {FENCE_SEGMENTS_PER_PADDOCK_MAX} \
                         corners"
                    ),
                );
            }
            if !paddock.fence.iter().all(|&corner| valid_position(corner)) {
                return fail(at, "a corner is not a valid latitude and longitude");
            }
            if !geo::is_simple_polygon(&paddock.fence) {
                return fail(at, "the fence crosses or touches itself");
            }
            if paddock.segments.len() != paddock.fence.len() {
                return fail(at, "there must be one fence segment per edge");
            }
        }
        for gate in &self.gates {
            let at = format!("gate {}", gate.name);
            let Some(paddock) = self.paddocks.get(gate.paddock) else {
                return fail(at, "unknown paddock");
            };
            if gate.segment >= paddock.fence.len() || !valid_position(gate.position) {
                return fail(at, "unknown segment or invalid position");
            }
            let (start, end) = paddock.edge(gate.segment);
            let frame = LocalFrame::new(start);
            if frame.distance_to_segment(gate.position, start, end) > GATE_OFF_FENCE_M_MAX {
                return fail(at, "the gate is not on its fence segment");
            }
        }
        for station in &self.weather_stations {
            if station.habitat >= self.habitats.len() || !valid_position(station.position) {
                return fail(
                    format!("weather station {}", station.name),
                    "unknown habitat or invalid position",
                );
            }
        }
        for animal in &self.animals {
            let at = format!("animal {}", animal.name);
            let Some(paddock) = self.paddocks.get(animal.paddock) else {
                return fail(at, "unknown paddock");
            };
            if !paddock.species_allowed.contains(&animal.species) {
                return fail(at, "its paddock does not allow its species");
            }
            if !paddock.contains(animal.start.lat, animal.start.lon) {
                return fail(at, "it does not start inside its paddock");
            }
        }
        let mut seen = HashSet::with_capacity(self.sensor_count());
        for sensor in self.sensors() {
            let address = self.address(sensor);
            if !self.prefix.contains(address) {
                return fail(
                    format!("{sensor:?}"),
                    &format!("address {address} is outside {}", self.prefix),
                );
            }
            if !seen.insert(address) {
                return fail(
                    format!("{sensor:?}"),
                    &format!("address {address} is used twice"),
                );
            }
        }
        Ok(())
    }
}

impl Paddock {
    /// Correct for concave fences (even-odd crossing rule); a point exactly on the fence may
    /// count either way.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        geo::polygon_contains(&self.fence, GeoPoint { lat, lon })
    }

    /// The two ends of fence segment `segment`; panics if there is no such segment.
    pub fn edge(&self, segment: usize) -> (GeoPoint, GeoPoint) {
        (
            self.fence[segment],
            self.fence[(segment + 1) % self.fence.len()],
        )
    }

    /// Metres from the point to the nearest fence segment, inside or out.
    pub fn distance_to_fence_m(&self, lat: f64, lon: f64) -> f64 {
        let point = GeoPoint { lat, lon };
        let frame = LocalFrame::new(point);
        (0..self.fence.len())
            .map(|segment| {
                let (start, end) = self.edge(segment);
                frame.distance_to_segment(point, start, end)
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// Whether every corner turns the same way.
    pub fn is_convex(&self) -> bool {
        geo::is_convex_polygon(&self.fence)
    }
}

const GEOJSON_FORMAT: u64 = 1;
const CELL_M: f64 = 800.0;
const FENCE_RADIUS_M: f64 = 0.45 * CELL_M;
/// Gates are placed on the edge and then rounded to 1 cm; a file may be a little sloppier.
const GATE_OFF_FENCE_M_MAX: f64 = 1.0;

struct HabitatEntry {
    name: &'static str,
    temp_c_mean: f64,
    temp_c_daily_amplitude: f64,
    humidity_mean: f64,
}

struct SpeciesEntry {
    habitat: &'static str,
    name: &'static str,
    heart_bpm_rest: f64,
    speed_ms_max: f64,
}

const fn habitat(
    name: &'static str,
    temp_c_mean: f64,
    temp_c_daily_amplitude: f64,
    humidity_mean: f64,
) -> HabitatEntry {
    HabitatEntry {
        name,
        temp_c_mean,
        temp_c_daily_amplitude,
        humidity_mean,
    }
}

const fn species(
    habitat: &'static str,
    name: &'static str,
    heart_bpm_rest: f64,
    speed_ms_max: f64,
) -> SpeciesEntry {
    SpeciesEntry {
        habitat,
        name,
        heart_bpm_rest,
        speed_ms_max,
    }
}

const HABITAT_CATALOGUE: [HabitatEntry; HABITATS_MAX] = [
    habitat("savanna", 24.0, 7.0, 45.0),
    habitat("wetland", 21.0, 4.0, 85.0),
    habitat("forest", 17.0, 5.0, 75.0),
    habitat("grassland", 19.0, 8.0, 55.0),
    habitat("desert", 29.0, 12.0, 20.0),
    habitat("mountain", 8.0, 6.0, 60.0),
    habitat("river", 20.0, 4.0, 80.0),
    habitat("jungle", 27.0, 4.0, 90.0),
    habitat("tundra", 1.0, 5.0, 70.0),
    habitat("scrubland", 22.0, 9.0, 35.0),
    habitat("lagoon", 25.0, 3.0, 80.0),
    habitat("canyon", 23.0, 11.0, 25.0),
    habitat("marsh", 15.0, 5.0, 85.0),
    habitat("meadow", 16.0, 7.0, 65.0),
    habitat("steppe", 12.0, 10.0, 40.0),
    habitat("coast", 14.0, 3.0, 80.0),
];

const SPECIES_CATALOGUE: [SpeciesEntry; 48] = [
    species("savanna", "lion", 40.0, 15.0),
    species("savanna", "zebra", 45.0, 16.0),
    species("savanna", "giraffe", 65.0, 14.0),
    species("wetland", "hippopotamus", 40.0, 8.0),
    species("wetland", "crocodile", 30.0, 4.0),
    species("wetland", "flamingo", 120.0, 3.0),
    species("forest", "okapi", 60.0, 13.0),
    species("forest", "gorilla", 70.0, 10.0),
    species("forest", "leopard", 60.0, 16.0),
    species("grassland", "bison", 50.0, 15.0),
    species("grassland", "cheetah", 70.0, 30.0),
    species("grassland", "ostrich", 60.0, 19.0),
    species("desert", "camel", 40.0, 18.0),
    species("desert", "oryx", 55.0, 16.0),
    species("desert", "fennec", 140.0, 9.0),
    species("mountain", "snow-leopard", 65.0, 17.0),
    species("mountain", "ibex", 70.0, 12.0),
    species("mountain", "takin", 55.0, 10.0),
    species("river", "otter", 130.0, 5.0),
    species("river", "capybara", 90.0, 9.0),
    species("river", "tapir", 70.0, 8.0),
    species("jungle", "tiger", 55.0, 17.0),
    species("jungle", "orangutan", 80.0, 5.0),
    species("jungle", "jaguar", 60.0, 16.0),
    species("tundra", "reindeer", 55.0, 20.0),
    species("tundra", "musk-ox", 45.0, 16.0),
    species("tundra", "arctic-fox", 120.0, 13.0),
    species("scrubland", "kangaroo", 70.0, 19.0),
    species("scrubland", "emu", 50.0, 14.0),
    species("scrubland", "wallaby", 110.0, 13.0),
    species("lagoon", "pelican", 100.0, 4.0),
    species("lagoon", "manatee", 40.0, 2.0),
    species("lagoon", "heron", 120.0, 3.0),
    species("canyon", "bighorn", 65.0, 13.0),
    species("canyon", "condor", 60.0, 4.0),
    species("canyon", "puma", 65.0, 18.0),
    species("marsh", "moose", 45.0, 15.0),
    species("marsh", "beaver", 80.0, 3.0),
    species("marsh", "crane", 100.0, 4.0),
    species("meadow", "red-deer", 55.0, 18.0),
    species("meadow", "hare", 150.0, 20.0),
    species("meadow", "stork", 110.0, 4.0),
    species("steppe", "saiga", 70.0, 22.0),
    species("steppe", "przewalski-horse", 40.0, 17.0),
    species("steppe", "bactrian-camel", 40.0, 17.0),
    species("coast", "penguin", 80.0, 3.0),
    species("coast", "sea-lion", 90.0, 8.0),
    species("coast", "seal", 70.0, 5.0),
];

const _: () = {
    // Every habitat of the catalogue needs species, or its paddocks could allow none.
    let mut habitat = 0;
    while habitat < HABITAT_CATALOGUE.len() {
        let name = HABITAT_CATALOGUE[habitat].name.as_bytes();
        let mut found = false;
        let mut entry = 0;
        while entry < SPECIES_CATALOGUE.len() {
            let candidate = SPECIES_CATALOGUE[entry].habitat.as_bytes();
            if candidate.len() == name.len() {
                let mut same = true;
                let mut byte = 0;
                while byte < name.len() {
                    if candidate[byte] != name[byte] {
                        same = false;
                    }
                    byte += 1;
                }
                found |= same;
            }
            entry += 1;
        }
        assert!(found, "a habitat of the catalogue has no species");
        habitat += 1;
    }
};

fn prefix_holds(prefix: Ipv6Prefix, sensors: usize) -> bool {
    // The all-zero host is never handed out.
    let usable = prefix.address_count() - 1;
    usable / PREFIX_ADDRESSES_PER_SENSOR_MIN >= sensors as u128
}

/// Unique random addresses inside a prefix. The prefix holds at least twice as many
/// addresses as are drawn (checked by the config), so each draw needs fewer than two tries on
/// average.
struct AddressDrawer {
    prefix: Ipv6Prefix,
    used: HashSet<u128>,
}

impl AddressDrawer {
    fn new(prefix: Ipv6Prefix) -> AddressDrawer {
        AddressDrawer {
            prefix,
            used: HashSet::new(),
        }
    }

    fn draw(&mut self, rng: &mut SimRng) -> Ipv6Addr {
        loop {
            let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let host = random & self.prefix.host_mask();
            if host != 0 && self.used.insert(host) {
                return self.prefix.host(host);
            }
        }
    }
}

/// A star-shaped ring around `centre`: corners in increasing angle (counter-clockwise) at
/// positive distances is always simple. Angles are jittered by at most a tenth of the spacing
/// and a notch corner sits at a tenth of the radius: the chord between its neighbours then
/// passes at least `0.75 * cos(0.4π · 1.1)` ≈ 0.14 radii from the centre for five or more
/// corners, so the notch corner lies inside that chord and the ring is concave there.
fn star_fence(rng: &mut SimRng, centre: GeoPoint, corners: usize, notch: bool) -> Vec<GeoPoint> {
    let frame = LocalFrame::new(centre);
    loop {
        let notch_corner = if notch {
            Some(rng.index(corners))
        } else {
            None
        };
        let fence: Vec<GeoPoint> = (0..corners)
            .map(|corner| {
                let angle =
                    std::f64::consts::TAU * (corner as f64 + rng.range(-0.1, 0.1)) / corners as f64;
                let share = if notch_corner == Some(corner) {
                    0.1
                } else {
                    rng.range(0.75, 1.0)
                };
                let radius = share * FENCE_RADIUS_M;
                geo::quantize(frame.point_at(radius * angle.cos(), radius * angle.sin()))
            })
            .collect();
        // Rounding to 1 cm could in principle break a ring drawn 360 m wide; then draw again.
        if geo::is_simple_polygon(&fence) && (!notch || !geo::is_convex_polygon(&fence)) {
            return fence;
        }
    }
}

/// Uniform over the polygon by rejection from its bounding box; generated fences fill a good
/// share of their box, so the fallback is for pathological shapes only.
fn random_point_inside(rng: &mut SimRng, fence: &[GeoPoint]) -> GeoPoint {
    let (mut lat_min, mut lat_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut lon_min, mut lon_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for corner in fence {
        lat_min = lat_min.min(corner.lat);
        lat_max = lat_max.max(corner.lat);
        lon_min = lon_min.min(corner.lon);
        lon_max = lon_max.max(corner.lon);
    }
    for _ in 0..RANDOM_POINT_TRIES_MAX {
        let candidate = geo::quantize(GeoPoint {
            lat: rng.range(lat_min, lat_max),
            lon: rng.range(lon_min, lon_max),
        });
        if geo::polygon_contains(fence, candidate) {
            return candidate;
        }
    }
    interior_point(fence)
}

const RANDOM_POINT_TRIES_MAX: usize = 10_000;

/// A point inside any simple polygon: on a horizontal line strictly between the two lowest
/// corner latitudes no corner lies, so the line crosses edges properly, and the middle of its
/// first inside stretch is inside.
fn interior_point(fence: &[GeoPoint]) -> GeoPoint {
    let mut latitudes: Vec<f64> = fence.iter().map(|corner| corner.lat).collect();
    latitudes.sort_by(f64::total_cmp);
    latitudes.dedup();
    let lat = (latitudes[0] + latitudes[1]) / 2.0;
    let mut crossings: Vec<f64> = (0..fence.len())
        .filter_map(|index| {
            let (a, b) = (fence[index], fence[(index + 1) % fence.len()]);
            ((a.lat > lat) != (b.lat > lat))
                .then(|| a.lon + (lat - a.lat) * (b.lon - a.lon) / (b.lat - a.lat))
        })
        .collect();
    crossings.sort_by(f64::total_cmp);
    let point = GeoPoint {
        lat,
        lon: (crossings[0] + crossings[1]) / 2.0,
    };
    assert!(
        geo::polygon_contains(fence, point),
        "no interior point found"
    );
    point
}

fn valid_position(point: GeoPoint) -> bool {
    point.lat.is_finite()
        && point.lon.is_finite()
        && point.lat.abs() <= 90.0
        && point.lon.abs() <= 180.0
}

fn check_names<'a>(
    what: &str,
    names: impl Iterator<Item = &'a String>,
) -> Result<(), (String, String)> {
    let mut seen = HashSet::new();
    for name in names {
        // Names become tag values: line protocol cannot carry control characters in them,
        // and a value ending in a backslash does not read back, so backslashes are refused.
        if name.is_empty()
            || name.len() > NAME_BYTES_MAX
            || name
                .chars()
                .any(|character| character.is_control() || character == '\\')
        {
            return Err((
                format!("{what} {name:?}"),
                format!(
                    "a name must be 1 to {NAME_BYTES_MAX} bytes without control characters or \
                     backslashes"
                ),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err((
                format!("{what} {name:?}"),
                "the name is used twice".to_owned(),
            ));
        }
    }
    Ok(())
}

fn position(point: GeoPoint) -> Value {
    json!([point.lon, point.lat])
}

fn point(point: GeoPoint) -> Value {
    json!({"type": "Point", "coordinates": position(point)})
}

fn feature(geometry: Value, properties: Value) -> Value {
    json!({"type": "Feature", "geometry": geometry, "properties": properties})
}

/// Builds a park from the document's structure; [`Park::check`] then judges its content.
fn read_park(document: &Value) -> Result<Park, GeoJsonError> {
    let root = Node::root(document);
    if root.get("type")?.string()? != "FeatureCollection" {
        return Err(root.get("type")?.invalid("expected \"FeatureCollection\""));
    }
    let header = root.get("nublar")?;
    if header.get("format")?.value.as_u64() != Some(GEOJSON_FORMAT) {
        return Err(header.get("format")?.invalid("this version reads format 1"));
    }
    let prefix_node = header.get("prefix")?;
    let prefix = prefix_node
        .string()?
        .parse::<Ipv6Prefix>()
        .map_err(|error| prefix_node.invalid(&error.to_string()))?;

    let mut habitats = Vec::new();
    for node in header.get("habitats")?.array()? {
        habitats.push(Habitat {
            name: node.get("habitat")?.string()?.to_owned(),
            temp_c_mean: node.get("temp_c_mean")?.number()?,
            temp_c_daily_amplitude: node.get("temp_c_daily_amplitude")?.number()?,
            humidity_mean: node.get("humidity_mean")?.number()?,
        });
    }
    let habitat_index = NameIndex::new(&habitats, |habitat| &habitat.name);
    let mut species = Vec::new();
    for node in header.get("species")?.array()? {
        species.push(Species {
            name: node.get("species")?.string()?.to_owned(),
            habitat: habitat_index.find(&node.get("habitat")?)?,
            heart_bpm_rest: node.get("heart_bpm_rest")?.number()?,
            speed_ms_max: node.get("speed_ms_max")?.number()?,
        });
    }

    let species_index = NameIndex::new(&species, |species| &species.name);
    let features = root.get("features")?.array()?;
    if features.len() > SENSORS_MAX + PADDOCKS_MAX {
        return Err(root.get("features")?.invalid("too many features"));
    }
    let mut paddocks = Vec::new();
    for feature in &features {
        let properties = feature.get("properties")?;
        if properties.get("kind")?.string()? != "paddock" {
            continue;
        }
        let fence = polygon(&feature.get("geometry")?)?;
        let mut species_allowed = Vec::new();
        for node in properties.get("species_allowed")?.array()? {
            species_allowed.push(species_index.find(&node)?);
        }
        let mut segments = Vec::new();
        for node in properties.get("segments")?.array()? {
            segments.push(FenceSegment {
                name: node.get("segment")?.string()?.to_owned(),
                address: node.get("address")?.address()?,
            });
        }
        paddocks.push(Paddock {
            name: properties.get("paddock")?.string()?.to_owned(),
            habitat: habitat_index.find(&properties.get("habitat")?)?,
            species_allowed,
            fence,
            segments,
        });
    }
    let paddock_index = NameIndex::new(&paddocks, |paddock| &paddock.name);
    let mut gates = Vec::new();
    let mut weather_stations = Vec::new();
    let mut animals = Vec::new();
    for feature in &features {
        let properties = feature.get("properties")?;
        let kind = properties.get("kind")?;
        match kind.string()? {
            "paddock" => {}
            "gate" => gates.push(Gate {
                name: properties.get("gate")?.string()?.to_owned(),
                paddock: paddock_index.find(&properties.get("paddock")?)?,
                segment: properties.get("segment")?.index()?,
                position: point_geometry(&feature.get("geometry")?)?,
                address: properties.get("address")?.address()?,
            }),
            "weather_station" => weather_stations.push(WeatherStation {
                name: properties.get("station")?.string()?.to_owned(),
                habitat: habitat_index.find(&properties.get("habitat")?)?,
                position: point_geometry(&feature.get("geometry")?)?,
                address: properties.get("address")?.address()?,
            }),
            "animal" => animals.push(Animal {
                name: properties.get("animal")?.string()?.to_owned(),
                species: species_index.find(&properties.get("species")?)?,
                paddock: paddock_index.find(&properties.get("paddock")?)?,
                start: point_geometry(&feature.get("geometry")?)?,
                address: properties.get("address")?.address()?,
            }),
            other => {
                return Err(kind.invalid(&format!(
                    "unknown kind {other:?}: expected paddock, gate, weather_station or animal"
                )));
            }
        }
    }
    Ok(Park {
        prefix,
        habitats,
        species,
        paddocks,
        gates,
        weather_stations,
        animals,
    })
}

/// A value in the document with the path that leads to it, for errors that say where.
struct Node<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Node<'a> {
    fn root(value: &'a Value) -> Node<'a> {
        Node {
            value,
            path: "document".to_owned(),
        }
    }

    fn invalid(&self, reason: &str) -> GeoJsonError {
        GeoJsonError::Invalid {
            at: self.path.clone(),
            reason: reason.to_owned(),
        }
    }

    fn get(&self, key: &str) -> Result<Node<'a>, GeoJsonError> {
        let path = if self.path == "document" {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        match self.value.get(key) {
            Some(value) if self.value.is_object() => Ok(Node { value, path }),
            _ => Err(GeoJsonError::Invalid {
                at: path,
                reason: "missing".to_owned(),
            }),
        }
    }

    fn array(&self) -> Result<Vec<Node<'a>>, GeoJsonError> {
        let items = self
            .value
            .as_array()
            .ok_or_else(|| self.invalid("expected an array"))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(index, value)| Node {
                value,
                path: format!("{}[{index}]", self.path),
            })
            .collect())
    }

    fn string(&self) -> Result<&'a str, GeoJsonError> {
        self.value
            .as_str()
            .ok_or_else(|| self.invalid("expected a string"))
    }

    fn number(&self) -> Result<f64, GeoJsonError> {
        self.value
            .as_f64()
            .ok_or_else(|| self.invalid("expected a number"))
    }

    fn index(&self) -> Result<usize, GeoJsonError> {
        self.value
            .as_u64()
            .and_then(|value| usize::try_from(value).ok())
            .ok_or_else(|| self.invalid("expected a non-negative integer"))
    }

    fn address(&self) -> Result<Ipv6Addr, GeoJsonError> {
        self.string()?
            .parse()
            .map_err(|_| self.invalid("expected an IPv6 address"))
    }

    fn position(&self) -> Result<GeoPoint, GeoJsonError> {
        let items = self.array()?;
        if !(2..=3).contains(&items.len()) {
            return Err(self.invalid("a position is [lon, lat] or [lon, lat, altitude]"));
        }
        Ok(GeoPoint {
            lon: items[0].number()?,
            lat: items[1].number()?,
        })
    }
}

/// Names to indexes, so that reading a million animals does not search the paddocks a million
/// times. A name used twice finds its first holder; [`Park::check`] then refuses the file.
struct NameIndex<'a>(HashMap<&'a str, usize>);

impl<'a> NameIndex<'a> {
    fn new<T>(items: &'a [T], name: impl Fn(&'a T) -> &'a String) -> NameIndex<'a> {
        let mut index = HashMap::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            index.entry(name(item).as_str()).or_insert(position);
        }
        NameIndex(index)
    }

    fn find(&self, node: &Node<'_>) -> Result<usize, GeoJsonError> {
        let wanted = node.string()?;
        self.0
            .get(wanted)
            .copied()
            .ok_or_else(|| node.invalid(&format!("{wanted:?} is not defined")))
    }
}

fn point_geometry(geometry: &Node<'_>) -> Result<GeoPoint, GeoJsonError> {
    if geometry.get("type")?.string()? != "Point" {
        return Err(geometry.get("type")?.invalid("expected \"Point\""));
    }
    geometry.get("coordinates")?.position()
}

fn polygon(geometry: &Node<'_>) -> Result<Vec<GeoPoint>, GeoJsonError> {
    if geometry.get("type")?.string()? != "Polygon" {
        return Err(geometry.get("type")?.invalid("expected \"Polygon\""));
    }
    let coordinates = geometry.get("coordinates")?;
    let rings = coordinates.array()?;
    if rings.len() != 1 {
        return Err(coordinates.invalid("a fence is one ring without holes"));
    }
    let positions = rings[0].array()?;
    if positions.len() > FENCE_SEGMENTS_PER_PADDOCK_MAX + 1 {
        return Err(rings[0].invalid("too many corners"));
    }
    let mut ring = positions
        .iter()
        .map(Node::position)
        .collect::<Result<Vec<GeoPoint>, GeoJsonError>>()?;
    if ring.len() < 2 || ring.first() != ring.last() {
        return Err(rings[0].invalid("a ring must be closed: its last position repeats the first"));
    }
    ring.pop();
    Ok(ring)
}
