//! The park simulator: a seeded, deterministic model of a wildlife park (habitats, fenced
//! paddocks, gates, weather stations, animals with GPS collars) that is also nublar's load
//! generator.
//!
//! **This crate does no I/O** beyond writing to a caller's [`std::io::Write`]: it owns no
//! socket, no file and no clock. Time is a virtual clock inside the [`Generator`], so that one
//! seed replays a whole run byte for byte, and the sending over HTTP or UDP is the binary's.
//!
//! - [`park`]: the park itself, generated from a seed or read from GeoJSON, and its schema.
//! - [`generator`]: the events the park's sensors send, the staged incidents and the faults,
//!   with the measurement schema.
//! - [`output`]: canonical line protocol for files and request bodies.
//! - [`limits`]: every bound the simulator enforces.

pub mod generator;
pub mod geo;
pub mod limits;
pub mod output;
pub mod park;
pub mod prefix;
mod rng;

pub use generator::{
    BreachPlan, Corruption, Faults, Generator, GeneratorConfig, GeneratorConfigError, Malformed,
    SimEvent, SimLine, StagePlan,
};
pub use geo::GeoPoint;
pub use output::{Batch, Batcher, BatcherConfigError, Grouping, next_batch, write_lines};
pub use park::{
    Animal, FenceSegment, Gate, GeoJsonError, Habitat, Paddock, Park, ParkConfig, ParkConfigError,
    Sensor, Species, WeatherStation,
};
pub use prefix::{Ipv6Prefix, PrefixParseError};
