//! Every bound the log enforces, in one place, with the unit last in each name.
//!
//! Defaults live here too, so that the relationships between them can be checked
//! when the crate compiles rather than discovered in production.

/// The codec's bounds on a batch: its size, records, key and what its records decompress to.
pub use nublar_batch::limits::{
    BATCH_BYTES_MAX, BATCH_KEY_BYTES_MAX, BATCH_RECORDS_MAX, DECOMPRESSED_BYTES_MAX,
};

/// The default batch limit of a topic; a topic may lower or raise it up to [`BATCH_BYTES_MAX`].
pub const BATCH_BYTES_DEFAULT: usize = 8 * 1024 * 1024;
/// The largest single record (key, value and headers encoded) a topic accepts by default.
pub const RECORD_BYTES_DEFAULT: usize = 1024 * 1024;

/// Segment positions are stored as `u32` in the offset index, and a segment may
/// overshoot its configured size by one batch, so the configured size stays one
/// batch below 4 GiB.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64 - BATCH_BYTES_MAX as u64;
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
/// A segment older than this is rolled at the next append, so retention by age
/// can delete it once it is old enough.
pub const SEGMENT_MS_DEFAULT: i64 = 60 * 60 * 1000;
/// Offsets within a segment are stored as `u32` relative to its base.
pub const SEGMENT_OFFSETS_MAX: i64 = u32::MAX as i64;

/// One sparse index entry per this many bytes of appended batches.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// How many batch keys a partition remembers by default, and for how long.
pub const DEDUP_KEYS_DEFAULT: usize = 100_000;
pub const DEDUP_WINDOW_MS_DEFAULT: i64 = 15 * 60 * 1000;

/// A reader asks for at most this many bytes in one read.
pub const READ_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How far a read scans forward from an index entry, per step.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Group commit waits at most this long for more appenders to join a sync.
pub const GROUP_COMMIT_WAIT_US_MAX: u64 = 1000;

pub const TOPIC_NAME_BYTES_MAX: usize = 249;
pub const GROUP_NAME_BYTES_MAX: usize = 249;
pub const PARTITIONS_MAX: u32 = 4096;

/// How often the background thread applies retention.
pub const RETENTION_CHECK_MS: u64 = 5_000;

const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(BATCH_BYTES_DEFAULT <= BATCH_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(RECORD_BYTES_DEFAULT <= BATCH_BYTES_DEFAULT);
const _: () = assert!(READ_CHUNK_BYTES <= READ_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= READ_BYTES_MAX);
