//! The events the park's sensors send, on a virtual clock, with staged incidents and
//! injected faults.
//!
//! # Measurements
//!
//! | measurement | tags | fields |
//! | --- | --- | --- |
//! | `collar` | `animal`, `species`, `paddock` | `lat`, `lon`, `heart_bpm`, `speed_ms` |
//! | `weather` | `habitat`, `station` | `temp_c`, `humidity`, `wind_ms` |
//! | `fence` | `paddock`, `segment` | `voltage_kv` |
//! | `gate` | `gate`, `paddock` | `open` |
//!
//! Every field is a float except `open`, a boolean. Units are in the names (`_bpm` beats per
//! minute, `_ms` metres per second, `_c` degrees Celsius, `_kv` kilovolts); `lat` and `lon` are
//! WGS 84 degrees rounded to 1e-7, `humidity` is relative humidity in percent. A collar's
//! `paddock` is the animal's home paddock, wherever the animal is.
//!
//! Tags and fields are written in the order of this table; with
//! [`GeneratorConfig::unique_field`] every line gets one more field, an integer, last. Every
//! line carries its timestamp in nanoseconds. Tag values are the names of the park (see
//! [`crate::park`]); the `segment` tag is the segment's name, such as `savanna-1/3`.
//!
//! - Collars: an animal walks at random inside its home paddock, mostly slowly; now and then
//!   it heads for a point on its fence and stops against it, and a step that would leave the
//!   paddock ends just inside the fence instead. Every position a collar reports before the
//!   breach is one [`Paddock::contains`] said was inside. `speed_ms` is the distance covered
//!   since the previous report divided by the reporting period; the heart rate rises with it.
//! - Weather: `temp_c` follows a daily cosine, warmest at 15:00 and coldest at 03:00 local
//!   solar time (UTC shifted by the station's longitude), around the habitat's mean; humidity
//!   moves the other way; wind is a bounded random walk.
//! - Fences: `voltage_kv` is between 8.2 and 9.8 kV; a breached segment reports 0 to 0.15 kV.
//! - Gates: `open` flips with a probability of one in ten per report.
//!
//! # Clock and schedule
//!
//! Slot `k` of the run is at `start_ns + k · 10⁹ / events_per_second` (rounded down). The
//! sensors are shuffled once, from the seed, and slot `k` belongs to sensor `k mod sensors`
//! of that order, so every sensor reports exactly once per period of
//! `sensors / events_per_second` seconds. A silenced station's slots stay empty, so that
//! every other sensor keeps its period; a duplicate takes no slot of its own.
//!
//! The sensors' values come from one random stream and the faults from another, and every
//! report draws the same count of numbers whatever happens (a silenced station's reports are
//! computed and dropped), so a staged incident or a fault changes nothing but what it is
//! about: the other sensors report exactly what they would have reported without it. The one
//! exception is the unique field, which counts the events actually sent, so that its values
//! have no gaps for a loss count to mistake for lost events.
//!
//! # Stages
//!
//! Which animal breaches, through which segment, and which station falls silent are drawn
//! from the seed when the generator is built, whether or not the stages are enabled, and
//! shown by [`Generator::plan`]: the animal is a uniformly drawn one of the park, the segment
//! a uniformly drawn edge of that animal's home paddock, the station a uniformly drawn one.
//!
//! - Breach, from [`GeneratorConfig::stage_breach_at_ns`]: the segment's voltage drops to
//!   near 0 at once; at its first report from then on the animal turns and runs (at 6 m/s or
//!   half its top speed, whichever is more) to a point just outside the middle of that
//!   segment, and from there wanders outside its paddock, never to re-enter. Its `paddock` tag
//!   stays its home paddock, which is what a geofence rule checks it against.
//! - Silence, from [`GeneratorConfig::stage_silence_at_ns`]: the station sends nothing more.
//!
//! # Faults
//!
//! Each slot's event is independently, with the configured shares: made malformed (the
//! [`SimLine::Malformed`] variant carries raw bytes that the line protocol parser rejects,
//! with the event it was made from), timestamped early (moved back by 1 ns to
//! [`GeneratorConfig::out_of_order_max_ns`]), and sent twice (the next event is the same
//! [`SimEvent`] again, marked as the duplicate). A duplicate repeats the unique field's value
//! too, so that a receiver can count the copies.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use nublar_model::line_protocol::TIMESTAMP_NS_MAX;
use nublar_model::{Event, Field, FieldValue, Tag, write_line};

use crate::geo::{self, GeoPoint, LocalFrame};
use crate::limits::{
    EVENTS_PER_SECOND_MAX, OUT_OF_ORDER_NS_MAX, START_NS_MAX, STEP_M_MAX, UNIQUE_FIELD_BYTES_MAX,
};
use crate::park::{Paddock, Park, Sensor};
use crate::rng::SimRng;

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// The virtual clock's first slot, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// Slots per second of virtual time, over all sensors together.
    pub events_per_second: u64,
    /// The name of an extra integer field whose value is unique per slot: 0, 1, 2, ...
    pub unique_field: Option<String>,
    /// Virtual time (nanoseconds since the epoch, the clock of the timestamps) from which the
    /// planned animal breaks out and its fence segment loses voltage.
    pub stage_breach_at_ns: Option<i64>,
    /// Virtual time from which the planned weather station sends nothing.
    pub stage_silence_at_ns: Option<i64>,
    /// Shares from 0 to 1 of the slots whose event is malformed, sent twice, or timestamped
    /// early.
    pub malformed_share: f64,
    pub duplicate_share: f64,
    pub out_of_order_share: f64,
    /// How far back an early timestamp moves at most.
    pub out_of_order_max_ns: u64,
}

/// One thing a sensor sends: a valid event or, by fault injection, a malformed line.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    /// The sensor's address, the address it would send from.
    pub sender: Ipv6Addr,
    pub sensor: Sensor,
    pub line: SimLine,
    pub faults: Faults,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimLine {
    Valid(Event),
    /// Deliberately broken, so that it cannot be an [`Event`]: the receiver must reject it.
    Malformed(Malformed),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// One line without its `\n`; never blank and never a comment, so a parser cannot skip it.
    pub bytes: Vec<u8>,
    pub corruption: Corruption,
    /// The event the line was made from (unique field and early timestamp included).
    pub intended: Event,
}

/// How a malformed line is broken; each breaks one rule of line protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Corruption {
    /// The series key alone, without fields or timestamp.
    MissingFields,
    /// The first field's value replaced by an unquoted word.
    BareWordValue,
    /// The first field's value replaced by a string that is never closed.
    UnterminatedString,
    /// A letter appended to the timestamp.
    BadTimestamp,
    /// A byte `0xFF` after the measurement name.
    InvalidUtf8,
    /// The measurement name prefixed with `_`, which is reserved.
    ReservedMeasurement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// This is the second send of the previous event.
    pub duplicate: bool,
    /// How far the timestamp was moved back; 0 for an event in order.
    pub shifted_back_ns: u64,
}

/// Who the stages are about; see the module documentation for how they are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlan {
    /// The breaching animal and the segment of its home paddock's fence; `None` for a park
    /// without animals.
    pub breach: Option<BreachPlan>,
    /// The station that falls silent; `None` for a park without weather stations.
    pub silenced_station: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreachPlan {
    pub animal: usize,
    pub paddock: usize,
    pub segment: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeneratorConfigError {
    #[error("events per second must be from 1 to {EVENTS_PER_SECOND_MAX}, not {0}")]
    EventsPerSecond(u64),
    #[error("the start time must be from 0 to {START_NS_MAX} ns, not {0}")]
    Start(i64),
    #[error("the {what} share must be from 0 to 1, not {value}")]
    Share { what: &'static str, value: f64 },
    #[error("the out-of-order bound must be from 1 to {OUT_OF_ORDER_NS_MAX} ns, not {0}")]
    OutOfOrderMax(u64),
    #[error("the unique field {name:?} cannot be used: {reason}")]
    UniqueField { name: String, reason: &'static str },
    #[error("a breach needs an animal, and the park has none")]
    NoAnimalToBreach,
    #[error("silence needs a weather station, and the park has none")]
    NoStationToSilence,
}

#[derive(Debug)]
pub struct Generator {
    park: Park,
    config: GeneratorConfig,
    plan: StagePlan,
    /// Slot `k` belongs to `schedule[k % len]`.
    schedule: Vec<Sensor>,
    period_s: f64,
    slot: u64,
    next_unique: i64,
    values: SimRng,
    faults: SimRng,
    animals: Vec<AnimalState>,
    winds_ms: Vec<f64>,
    gates_open: Vec<bool>,
    pending_duplicate: Option<SimEvent>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 0,
            // 2026-01-01T00:00:00Z.
            start_ns: 1_767_225_600_000_000_000,
            events_per_second: 1_000,
            unique_field: None,
            stage_breach_at_ns: None,
            stage_silence_at_ns: None,
            malformed_share: 0.0,
            duplicate_share: 0.0,
            out_of_order_share: 0.0,
            out_of_order_max_ns: 5_000_000_000,
        }
    }
}

impl GeneratorConfig {
    fn validate(&self, park: &Park) -> Result<(), GeneratorConfigError> {
        if !(1..=EVENTS_PER_SECOND_MAX).contains(&self.events_per_second) {
            return Err(GeneratorConfigError::EventsPerSecond(
                self.events_per_second,
            ));
        }
        if !(0..=START_NS_MAX).contains(&self.start_ns) {
            return Err(GeneratorConfigError::Start(self.start_ns));
        }
        let shares = [
            ("malformed", self.malformed_share),
            ("duplicate", self.duplicate_share),
            ("out-of-order", self.out_of_order_share),
        ];
        for (what, value) in shares {
            if !(0.0..=1.0).contains(&value) {
                return Err(GeneratorConfigError::Share { what, value });
            }
        }
        if !(1..=OUT_OF_ORDER_NS_MAX).contains(&self.out_of_order_max_ns) {
            return Err(GeneratorConfigError::OutOfOrderMax(
                self.out_of_order_max_ns,
            ));
        }
        if let Some(name) = &self.unique_field
            && let Some(reason) = unique_field_problem(name)
        {
            return Err(GeneratorConfigError::UniqueField {
                name: name.clone(),
                reason,
            });
        }
        if self.stage_breach_at_ns.is_some() && park.animals().is_empty() {
            return Err(GeneratorConfigError::NoAnimalToBreach);
        }
        if self.stage_silence_at_ns.is_some() && park.weather_stations().is_empty() {
            return Err(GeneratorConfigError::NoStationToSilence);
        }
        Ok(())
    }
}

impl SimEvent {
    /// Appends the line as it goes on the wire, `\n` included: canonical line protocol for a
    /// valid event, the raw bytes for a malformed one.
    pub fn write(&self, out: &mut Vec<u8>) {
        match &self.line {
            SimLine::Valid(event) => write_line(event, out),
            SimLine::Malformed(malformed) => {
                out.extend_from_slice(&malformed.bytes);
                out.push(b'\n');
            }
        }
    }

    /// The event the sensor meant to send, whether or not it was sent intact.
    pub fn intended(&self) -> &Event {
        match &self.line {
            SimLine::Valid(event) => event,
            SimLine::Malformed(malformed) => &malformed.intended,
        }
    }

    pub fn is_malformed(&self) -> bool {
        matches!(self.line, SimLine::Malformed(_))
    }
}

impl Corruption {
    pub const ALL: [Corruption; 6] = [
        Corruption::MissingFields,
        Corruption::BareWordValue,
        Corruption::UnterminatedString,
        Corruption::BadTimestamp,
        Corruption::InvalidUtf8,
        Corruption::ReservedMeasurement,
    ];
}

impl Generator {
    pub fn new(park: Park, config: GeneratorConfig) -> Result<Generator, GeneratorConfigError> {
        config.validate(&park)?;
        let mut stages = SimRng::stream(config.seed, STREAM_STAGES);
        let breach = (!park.animals().is_empty()).then(|| {
            let animal = stages.index(park.animals().len());
            let paddock = park.animals()[animal].paddock;
            let segment = stages.index(park.paddocks()[paddock].fence.len());
            BreachPlan {
                animal,
                paddock,
                segment,
            }
        });
        let silenced_station = (!park.weather_stations().is_empty())
            .then(|| stages.index(park.weather_stations().len()));
        let mut schedule: Vec<Sensor> = park.sensors().collect();
        SimRng::stream(config.seed, STREAM_SCHEDULE).shuffle(&mut schedule);
        let mut values = SimRng::stream(config.seed, STREAM_VALUES);
        let animals = park
            .animals()
            .iter()
            .map(|animal| AnimalState {
                position: animal.start,
                heading: values.range(0.0, std::f64::consts::TAU),
                mode: Mode::Wander,
            })
            .collect();
        let winds_ms = park
            .weather_stations()
            .iter()
            .map(|_| values.range(1.0, 6.0))
            .collect();
        let gates_open = vec![false; park.gates().len()];
        Ok(Generator {
            period_s: schedule.len() as f64 / config.events_per_second as f64,
            plan: StagePlan {
                breach,
                silenced_station,
            },
            schedule,
            slot: 0,
            next_unique: 0,
            faults: SimRng::stream(config.seed, STREAM_FAULTS),
            values,
            animals,
            winds_ms,
            gates_open,
            pending_duplicate: None,
            park,
            config,
        })
    }

    pub fn park(&self) -> &Park {
        &self.park
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    pub fn plan(&self) -> StagePlan {
        self.plan
    }

    /// How often each sensor reports, in virtual nanoseconds (rounded down).
    pub fn period_ns(&self) -> u64 {
        (self.schedule.len() as u128 * NS_PER_S / u128::from(self.config.events_per_second)) as u64
    }

    /// The time of the next slot; `None` once the clock has passed the last timestamp line
    /// protocol can carry, which ends the run.
    pub fn now_ns(&self) -> Option<i64> {
        let offset = u128::from(self.slot) * NS_PER_S / u128::from(self.config.events_per_second);
        let time = i128::from(self.config.start_ns) + i128::try_from(offset).ok()?;
        i64::try_from(time)
            .ok()
            .filter(|&time| time <= TIMESTAMP_NS_MAX)
    }

    /// The next thing to send; `None` only at the end of time (see [`Generator::now_ns`]).
    pub fn next_event(&mut self) -> Option<SimEvent> {
        if let Some(duplicate) = self.pending_duplicate.take() {
            return Some(duplicate);
        }
        loop {
            let time_ns = self.now_ns()?;
            let sensor = self.schedule[(self.slot % self.schedule.len() as u64) as usize];
            self.slot += 1;
            // Always drawn, so that one slot's faults never shift another's.
            let draws: [f64; 5] = std::array::from_fn(|_| self.faults.unit());
            let mut event = self.measure(sensor, time_ns);
            if let Sensor::Weather { station } = sensor
                && self.is_silenced(station, time_ns)
            {
                continue;
            }
            if let Some(name) = &self.config.unique_field {
                event.fields.push(Field {
                    key: Cow::Owned(name.clone()),
                    value: FieldValue::I64(self.next_unique),
                });
                self.next_unique += 1;
            }
            let mut faults = Faults::default();
            if draws[0] < self.config.out_of_order_share {
                let shift = 1 + (draws[1] * self.config.out_of_order_max_ns as f64) as u64;
                let shift = shift.min(self.config.out_of_order_max_ns);
                faults.shifted_back_ns = shift;
                event.timestamp_ns = Some(time_ns - shift as i64);
            }
            let line = if draws[2] < self.config.malformed_share {
                let corruption =
                    Corruption::ALL[(draws[3] * Corruption::ALL.len() as f64) as usize];
                SimLine::Malformed(Malformed {
                    bytes: corrupt(&event, corruption),
                    corruption,
                    intended: event,
                })
            } else {
                SimLine::Valid(event)
            };
            let sim_event = SimEvent {
                sender: self.park.address(sensor),
                sensor,
                line,
                faults,
            };
            if draws[4] < self.config.duplicate_share {
                let mut duplicate = sim_event.clone();
                duplicate.faults.duplicate = true;
                self.pending_duplicate = Some(duplicate);
            }
            return Some(sim_event);
        }
    }

    fn is_silenced(&self, station: usize, time_ns: i64) -> bool {
        self.plan.silenced_station == Some(station)
            && self
                .config
                .stage_silence_at_ns
                .is_some_and(|at| time_ns >= at)
    }

    fn is_breached(&self, time_ns: i64) -> bool {
        self.config
            .stage_breach_at_ns
            .is_some_and(|at| time_ns >= at)
    }

    fn measure(&mut self, sensor: Sensor, time_ns: i64) -> Event {
        match sensor {
            Sensor::Collar { animal } => self.collar(animal, time_ns),
            Sensor::Weather { station } => self.weather(station, time_ns),
            Sensor::Fence { paddock, segment } => self.fence(paddock, segment, time_ns),
            Sensor::Gate { gate } => self.gate(gate, time_ns),
        }
    }

    fn collar(&mut self, animal_index: usize, time_ns: i64) -> Event {
        let draws: [f64; 7] = std::array::from_fn(|_| self.values.unit());
        let animal = &self.park.animals()[animal_index];
        let paddock = &self.park.paddocks()[animal.paddock];
        let species = &self.park.species()[animal.species];
        let breach = self
            .plan
            .breach
            .filter(|plan| plan.animal == animal_index && self.is_breached(time_ns));
        let state = &mut self.animals[animal_index];
        if let Some(plan) = breach
            && matches!(state.mode, Mode::Wander | Mode::SeekFence { .. })
        {
            state.mode = Mode::Breach {
                target: breach_target(paddock, plan.segment),
            };
        }
        let frame = LocalFrame::new(state.position);
        let mut speed_ms = species.speed_ms_max * 0.4 * draws[0].powi(3);
        match state.mode {
            Mode::Wander => {
                state.heading += (draws[1] - 0.5) * 1.2;
                if draws[2] < SEEK_FENCE_CHANCE {
                    let segment = (draws[3] * paddock.fence.len() as f64) as usize;
                    let (start, end) = paddock.edge(segment);
                    let along = 0.1 + 0.8 * draws[4];
                    state.mode = Mode::SeekFence {
                        target: GeoPoint {
                            lat: start.lat + along * (end.lat - start.lat),
                            lon: start.lon + along * (end.lon - start.lon),
                        },
                    };
                }
            }
            Mode::SeekFence { target } | Mode::Breach { target } => {
                let (x, y) = frame.metres_of(target);
                state.heading = y.atan2(x);
                speed_ms = species.speed_ms_max * 0.3;
                if matches!(state.mode, Mode::Breach { .. }) {
                    speed_ms = (species.speed_ms_max * 0.5).max(BREACH_SPEED_MS);
                }
            }
            Mode::Escaped => state.heading += (draws[1] - 0.5) * 1.2,
        }
        let step_m = (speed_ms * self.period_s).min(STEP_M_MAX);
        let (dx, dy) = (step_m * state.heading.cos(), step_m * state.heading.sin());
        match state.mode {
            Mode::Wander | Mode::SeekFence { .. } => {
                let candidate = geo::quantize(frame.point_at(dx, dy));
                if paddock.contains(candidate.lat, candidate.lon) {
                    state.position = candidate;
                    if let Mode::SeekFence { target } = state.mode {
                        let (x, y) = LocalFrame::new(candidate).metres_of(target);
                        if x.hypot(y) < FENCE_REACHED_M {
                            state.mode = Mode::Wander;
                        }
                    }
                } else {
                    state.position = last_inside(paddock, &frame, dx, dy);
                    state.heading = draws[5] * std::f64::consts::TAU;
                    state.mode = Mode::Wander;
                }
            }
            Mode::Breach { target } => {
                let (x, y) = frame.metres_of(target);
                if x.hypot(y) <= step_m {
                    state.position = target;
                    state.mode = Mode::Escaped;
                } else {
                    state.position = geo::quantize(frame.point_at(dx, dy));
                }
            }
            Mode::Escaped => {
                let candidate = geo::quantize(frame.point_at(dx, dy));
                if paddock.contains(candidate.lat, candidate.lon) {
                    state.heading = draws[5] * std::f64::consts::TAU;
                } else {
                    state.position = candidate;
                }
            }
        }
        let (moved_x, moved_y) = frame.metres_of(state.position);
        let moved_m = moved_x.hypot(moved_y);
        let reported_speed_ms = if self.period_s > 0.0 {
            moved_m / self.period_s
        } else {
            0.0
        };
        let excitement = if matches!(state.mode, Mode::Breach { .. } | Mode::Escaped) {
            1.5
        } else {
            1.0
        };
        let heart_bpm = species.heart_bpm_rest
            * excitement
            * (1.0 + 0.6 * (reported_speed_ms / species.speed_ms_max).min(1.5))
            + (draws[6] - 0.5) * 6.0;
        let position = state.position;
        line(
            "collar",
            [
                ("animal", &animal.name),
                ("species", &species.name),
                ("paddock", &paddock.name),
            ],
            vec![
                ("lat", FieldValue::F64(position.lat)),
                ("lon", FieldValue::F64(position.lon)),
                ("heart_bpm", FieldValue::F64(round(heart_bpm, 10.0))),
                ("speed_ms", FieldValue::F64(round(reported_speed_ms, 100.0))),
            ],
            time_ns,
        )
    }

    fn weather(&mut self, station_index: usize, time_ns: i64) -> Event {
        let draws: [f64; 3] = std::array::from_fn(|_| self.values.unit());
        let station = &self.park.weather_stations()[station_index];
        let habitat = &self.park.habitats()[station.habitat];
        let cycle = daily_cycle(time_ns, station.position.lon);
        let temp_c =
            habitat.temp_c_mean + habitat.temp_c_daily_amplitude * cycle + (draws[0] - 0.5);
        let humidity = (habitat.humidity_mean - 1.5 * habitat.temp_c_daily_amplitude * cycle
            + (draws[1] - 0.5) * 4.0)
            .clamp(1.0, 100.0);
        let wind = &mut self.winds_ms[station_index];
        *wind = (*wind + (draws[2] - 0.5) * 2.0).clamp(0.0, WIND_MS_MAX);
        let wind_ms = *wind;
        line(
            "weather",
            [("habitat", &habitat.name), ("station", &station.name)],
            vec![
                ("temp_c", FieldValue::F64(round(temp_c, 100.0))),
                ("humidity", FieldValue::F64(round(humidity, 10.0))),
                ("wind_ms", FieldValue::F64(round(wind_ms, 100.0))),
            ],
            time_ns,
        )
    }

    fn fence(&mut self, paddock_index: usize, segment: usize, time_ns: i64) -> Event {
        let draw = self.values.unit();
        let breached = self.is_breached(time_ns)
            && self
                .plan
                .breach
                .is_some_and(|plan| plan.paddock == paddock_index && plan.segment == segment);
        let voltage_kv = if breached {
            draw * 0.15
        } else {
            8.2 + draw * 1.6
        };
        let paddock = &self.park.paddocks()[paddock_index];
        line(
            "fence",
            [
                ("paddock", &paddock.name),
                ("segment", &paddock.segments[segment].name),
            ],
            vec![("voltage_kv", FieldValue::F64(round(voltage_kv, 1000.0)))],
            time_ns,
        )
    }

    fn gate(&mut self, gate_index: usize, time_ns: i64) -> Event {
        let draw = self.values.unit();
        if draw < GATE_FLIP_CHANCE {
            self.gates_open[gate_index] = !self.gates_open[gate_index];
        }
        let gate = &self.park.gates()[gate_index];
        line(
            "gate",
            [
                ("gate", &gate.name),
                ("paddock", &self.park.paddocks()[gate.paddock].name),
            ],
            vec![("open", FieldValue::Bool(self.gates_open[gate_index]))],
            time_ns,
        )
    }
}

impl Iterator for Generator {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        self.next_event()
    }
}

const NS_PER_S: u128 = 1_000_000_000;
const STREAM_STAGES: u64 = 1;
const STREAM_SCHEDULE: u64 = 2;
const STREAM_VALUES: u64 = 3;
const STREAM_FAULTS: u64 = 4;
/// Per report of a wandering animal: about one report in twenty-five sends it to a fence.
const SEEK_FENCE_CHANCE: f64 = 0.04;
const FENCE_REACHED_M: f64 = 3.0;
const BREACH_SPEED_MS: f64 = 6.0;
const GATE_FLIP_CHANCE: f64 = 0.1;
const WIND_MS_MAX: f64 = 25.0;
/// Keys the simulator writes; the unique field may not take one of them.
const RESERVED_KEYS: [&str; 17] = [
    "time",
    "animal",
    "species",
    "paddock",
    "lat",
    "lon",
    "heart_bpm",
    "speed_ms",
    "habitat",
    "station",
    "temp_c",
    "humidity",
    "wind_ms",
    "segment",
    "voltage_kv",
    "gate",
    "open",
];

#[derive(Debug, Clone)]
struct AnimalState {
    position: GeoPoint,
    /// Radians counter-clockwise from east.
    heading: f64,
    mode: Mode,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Wander,
    SeekFence { target: GeoPoint },
    Breach { target: GeoPoint },
    Escaped,
}

fn unique_field_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > UNIQUE_FIELD_BYTES_MAX {
        return Some("it must be 1 to 64 bytes long");
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    {
        return Some("it may hold only ASCII letters, digits, `_` and `-`");
    }
    if name.starts_with('_') {
        return Some("names starting with `_` are reserved");
    }
    if RESERVED_KEYS.contains(&name) {
        return Some("the simulator already writes a tag or field of that name");
    }
    None
}

fn line<const TAGS: usize>(
    measurement: &'static str,
    tags: [(&'static str, &String); TAGS],
    fields: Vec<(&'static str, FieldValue<'static>)>,
    time_ns: i64,
) -> Event {
    Event {
        measurement: Cow::Borrowed(measurement),
        tags: tags
            .into_iter()
            .map(|(key, value)| Tag {
                key: Cow::Borrowed(key),
                value: Cow::Owned(value.clone()),
            })
            .collect(),
        fields: fields
            .into_iter()
            .map(|(key, value)| Field {
                key: Cow::Borrowed(key),
                value,
            })
            .collect(),
        timestamp_ns: Some(time_ns),
    }
}

/// Rounds to `1 / scale`, so that values print short: `72.4`, not `72.38119...`.
fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

/// From -1 at 03:00 to 1 at 15:00 local solar time.
fn daily_cycle(time_ns: i64, lon: f64) -> f64 {
    const DAY_S: f64 = 86_400.0;
    let local_s = time_ns as f64 / NS_PER_S as f64 + lon / 360.0 * DAY_S;
    let hour = local_s.rem_euclid(DAY_S) / 3_600.0;
    (std::f64::consts::TAU * (hour - 15.0) / 24.0).cos()
}

/// The farthest point on the way to the step's end that is still inside: bisection keeps
/// `inside` a point [`Paddock::contains`] accepted, starting from the current position.
fn last_inside(paddock: &Paddock, frame: &LocalFrame, dx: f64, dy: f64) -> GeoPoint {
    let mut inside_share = 0.0;
    let mut outside_share = 1.0;
    let mut inside = geo::quantize(frame.point_at(0.0, 0.0));
    for _ in 0..BISECTION_STEPS {
        let middle = (inside_share + outside_share) / 2.0;
        let candidate = geo::quantize(frame.point_at(dx * middle, dy * middle));
        if paddock.contains(candidate.lat, candidate.lon) {
            inside_share = middle;
            inside = candidate;
        } else {
            outside_share = middle;
        }
    }
    inside
}

/// Enough halvings of a step of at most 150 m to come within the 1 cm grid of the fence.
const BISECTION_STEPS: usize = 16;

/// A point outside the paddock beyond the middle of the segment: along the segment's outward
/// normal at 20 m, 40 m, 80 m, ... until outside. Far enough out every point is beyond the
/// fence's bounding box, so the search ends.
fn breach_target(paddock: &Paddock, segment: usize) -> GeoPoint {
    let (start, end) = paddock.edge(segment);
    let middle = GeoPoint {
        lat: (start.lat + end.lat) / 2.0,
        lon: (start.lon + end.lon) / 2.0,
    };
    let frame = LocalFrame::new(middle);
    let (ex, ey) = frame.metres_of(end);
    let (sx, sy) = frame.metres_of(start);
    let (edge_x, edge_y) = (ex - sx, ey - sy);
    let length = edge_x.hypot(edge_y);
    // For a counter-clockwise ring the inside is on the left of each edge.
    let orientation = geo::signed_area(&paddock.fence).signum();
    let (normal_x, normal_y) = (
        orientation * edge_y / length,
        -orientation * edge_x / length,
    );
    (0..64)
        .map(|doubling| {
            let distance = 20.0 * f64::powi(2.0, doubling);
            geo::quantize(frame.point_at(normal_x * distance, normal_y * distance))
        })
        .find(|candidate| !paddock.contains(candidate.lat, candidate.lon))
        .expect("a point beyond the fence's bounding box is outside the fence")
}

/// The valid line is written canonically first and then broken, so that a malformed line
/// differs from a good one in exactly one place.
fn corrupt(event: &Event, corruption: Corruption) -> Vec<u8> {
    let mut series_event = event.clone();
    series_event.fields.clear();
    series_event.timestamp_ns = None;
    let mut series = Vec::new();
    write_line(&series_event, &mut series);
    // Without fields and timestamp the writer ends with the field separator and `\n`.
    series.truncate(series.len() - 2);
    let mut canonical = Vec::new();
    write_line(event, &mut canonical);
    canonical.pop();
    let first_key = event.fields.first().map_or("value", |field| &field.key);
    let timestamp = event.timestamp_ns.unwrap_or_default();
    match corruption {
        Corruption::MissingFields => series,
        Corruption::BareWordValue => {
            let mut bytes = series;
            bytes.extend_from_slice(format!(" {first_key}=oops {timestamp}").as_bytes());
            bytes
        }
        Corruption::UnterminatedString => {
            let mut bytes = series;
            bytes.extend_from_slice(format!(" {first_key}=\"unterminated {timestamp}").as_bytes());
            bytes
        }
        Corruption::BadTimestamp => {
            let mut bytes = canonical;
            bytes.push(b'x');
            bytes
        }
        Corruption::InvalidUtf8 => {
            let mut bytes = canonical;
            bytes.insert(event.measurement.len(), 0xff);
            bytes
        }
        Corruption::ReservedMeasurement => {
            let mut bytes = canonical;
            bytes.insert(0, b'_');
            bytes
        }
    }
}
