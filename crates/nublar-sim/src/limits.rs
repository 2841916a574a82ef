//! Every bound the simulator enforces, in one place, with the unit last in each name.
//!
//! The park is built in memory and every sensor gets a state and an address, so the size of
//! a park is bounded here rather than by whatever a command line asks for.

/// The habitat catalogue has this many climates and species lists; a park uses a prefix of it.
pub const HABITATS_MAX: usize = 16;
pub const PADDOCKS_PER_HABITAT_MAX: usize = 64;
pub const PADDOCKS_MAX: usize = HABITATS_MAX * PADDOCKS_PER_HABITAT_MAX;
/// A fence needs five corners before a notch can make it concave (see `park`), and each
/// corner is a segment monitor with its own address, so the upper bound keeps fences plausible.
pub const FENCE_SEGMENTS_PER_PADDOCK_MIN: usize = 5;
pub const FENCE_SEGMENTS_PER_PADDOCK_MAX: usize = 64;
/// A file may describe fences with fewer corners than generated ones (a triangle is a fence).
pub const FENCE_VERTICES_MIN: usize = 3;
pub const WEATHER_STATIONS_PER_HABITAT_MAX: usize = 64;
pub const ANIMALS_MAX: usize = 1_000_000;
pub const GATES_MAX: usize = 10_000;
/// Every sensor has an address and a state in the generator: about 100 bytes each.
pub const SENSORS_MAX: usize = 2_000_000;
/// Addresses are drawn at random from the prefix and redrawn on a collision; at least this
/// many times more host addresses than sensors keeps the expected number of draws below two.
pub const PREFIX_ADDRESSES_PER_SENSOR_MIN: u128 = 2;
/// A GeoJSON park is read whole into memory. An animal takes about 250 bytes of GeoJSON, so a
/// park at every limit above is written in about 250 MB; reading one that large needs a few
/// GB of memory for the parsed document, which is why the bound is not higher.
pub const GEOJSON_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Names in a park file (paddocks, animals, ...) become tag values on every event.
pub const NAME_BYTES_MAX: usize = 256;
/// The virtual clock's rate; a higher rate would put several events on the same nanosecond.
pub const EVENTS_PER_SECOND_MAX: u64 = 1_000_000_000;
/// The virtual clock starts at or after the Unix epoch and early enough that a long run does
/// not reach the end of the line protocol's time range (about the year 2262): this is in 2096.
pub const START_NS_MAX: i64 = 4_000_000_000_000_000_000;
/// Out-of-order timestamps move back by at most this much: far enough to reorder any batch,
/// near enough to stay in the same lake partition most of the time.
pub const OUT_OF_ORDER_NS_MAX: u64 = 24 * 60 * 60 * 1_000_000_000;
/// One request body; at roughly 150 bytes a line this stays below 8 MiB, under the gateway's
/// default request bound.
pub const BATCH_LINES_MAX: usize = 50_000;
/// The longest field name `--unique-field` accepts.
pub const UNIQUE_FIELD_BYTES_MAX: usize = 64;
/// An animal moves at most this far between two reports, however long the period, so that a
/// slow run still shows a walk rather than jumps across the paddock.
pub const STEP_M_MAX: f64 = 150.0;

const _: () = assert!(PADDOCKS_MAX * FENCE_SEGMENTS_PER_PADDOCK_MAX + ANIMALS_MAX < SENSORS_MAX);
const _: () = assert!(FENCE_VERTICES_MIN <= FENCE_SEGMENTS_PER_PADDOCK_MIN);
const _: () = assert!(START_NS_MAX < nublar_model::line_protocol::TIMESTAMP_NS_MAX / 2);
// An early timestamp of the first slot at the earliest start is still a valid timestamp.
const _: () =
    assert!(-(OUT_OF_ORDER_NS_MAX as i64) > nublar_model::line_protocol::TIMESTAMP_NS_MIN);
/// Lines held back by a batcher that groups by sender, over all senders together: with a
/// sensor reporting once per period, per-sender batches fill slowly, and two million senders
/// times a full batch each would not fit in memory. At the bound every pending batch is sent.
pub const BATCHER_PENDING_LINES_MAX: usize = 200_000;

const _: () = assert!(BATCH_LINES_MAX <= BATCHER_PENDING_LINES_MAX);
