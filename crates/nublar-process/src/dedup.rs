//! Duplicate events: the same series, timestamp and field values seen again within a window
//! of event time count once.
//!
//! An event is remembered by a 128-bit digest of its database, measurement, canonical tag set,
//! timestamp and fields (names, types and values, floats by their bits), so that memory per
//! event is fixed whatever its size. The window follows the watermark (the latest event time
//! seen): digests of events older than `watermark - window` are forgotten, and an event that old
//! is passed on unchecked. At most `keys_max` digests are kept; past that the oldest are
//! forgotten first, and counted.
//!
//! Like the other processors this reads no clock: the same input gives the same decisions.

use std::collections::{BTreeMap, HashSet};

use nublar_model::{FieldValue, ParsedLine};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::series::{ByDigest, series_digest};

/// How long and how many events are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupConfig {
    /// Event time behind the watermark within which a repeat is a duplicate, in nanoseconds.
    pub window_ns: i64,
    /// Digests kept at most.
    pub keys_max: usize,
}

impl Default for DedupConfig {
    fn default() -> DedupConfig {
        DedupConfig {
            window_ns: 5 * 60 * 1_000_000_000,
            keys_max: 2_000_000,
        }
    }
}

/// What became of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First seen: pass it on.
    New,
    /// The same event was seen within the window: drop it.
    Duplicate,
    /// Older than the window: passed on without a check.
    TooOldToCheck,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupCounters {
    pub duplicates: u64,
    pub too_old_to_check: u64,
    /// Digests forgotten before the window passed them, to keep `keys_max`.
    pub forgotten_early: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Dedup {
    config: DedupConfig,
    watermark_ns: Option<i64>,
    digests: HashSet<u128, ByDigest>,
    /// Event time → digests of that time, for forgetting in time order.
    by_time: BTreeMap<i64, Vec<u128>>,
    counters: DedupCounters,
    #[serde(skip)]
    scratch: Vec<u8>,
}

impl Dedup {
    pub fn new(config: DedupConfig) -> Dedup {
        Dedup {
            config,
            watermark_ns: None,
            digests: HashSet::default(),
            by_time: BTreeMap::new(),
            counters: DedupCounters::default(),
            scratch: Vec::new(),
        }
    }

    /// What these digests are under another configuration: a shorter window or a lower bound
    /// forgets the surplus at the next event.
    pub fn with_config(mut self, config: DedupConfig) -> Dedup {
        self.config = config;
        self
    }

    pub fn counters(&self) -> DedupCounters {
        self.counters
    }

    /// Digests held now.
    pub fn keys(&self) -> usize {
        self.digests.len()
    }

    /// Decides for the event of database `db` at `time_ns`, and remembers it if new.
    pub fn check(&mut self, db: &str, event: &ParsedLine<'_>, time_ns: i64) -> Seen {
        let series = series_digest(db, &event.measurement, &event.tags);
        self.check_series(series, event, time_ns)
    }

    /// [`Dedup::check`] for a caller that has the event's [`series_digest`] already.
    pub fn check_series(&mut self, series: u128, event: &ParsedLine<'_>, time_ns: i64) -> Seen {
        if let Some(watermark) = self.watermark_ns
            && time_ns < watermark.saturating_sub(self.config.window_ns)
        {
            self.counters.too_old_to_check += 1;
            return Seen::TooOldToCheck;
        }
        let digest = digest(&mut self.scratch, series, event, time_ns);
        if !self.digests.insert(digest) {
            self.counters.duplicates += 1;
            return Seen::Duplicate;
        }
        self.by_time.entry(time_ns).or_default().push(digest);
        let watermark = self.watermark_ns.map_or(time_ns, |old| old.max(time_ns));
        self.watermark_ns = Some(watermark);
        let horizon = watermark.saturating_sub(self.config.window_ns);
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() >= horizon && self.digests.len() <= self.config.keys_max {
                break;
            }
            let early = *entry.key() >= horizon;
            for digest in entry.remove() {
                self.digests.remove(&digest);
                if early {
                    self.counters.forgotten_early += 1;
                }
            }
        }
        Seen::New
    }
}

/// The event's identity: its series (tags in any order), time, and fields in the order sent
/// (a sender that repeats an event repeats its line), each name and string with its length so
/// that no two different events give the same bytes.
fn digest(scratch: &mut Vec<u8>, series: u128, event: &ParsedLine<'_>, time_ns: i64) -> u128 {
    // One pass over bytes laid out in a reused buffer: the one-shot hash is several times
    // quicker than the streaming one on inputs this short.
    scratch.clear();
    scratch.extend_from_slice(&series.to_le_bytes());
    scratch.extend_from_slice(&time_ns.to_le_bytes());
    for field in &event.fields {
        scratch.extend_from_slice(&(field.key.len() as u64).to_le_bytes());
        scratch.extend_from_slice(field.key.as_bytes());
        match &field.value {
            FieldValue::F64(value) => {
                scratch.push(0);
                scratch.extend_from_slice(&value.to_bits().to_le_bytes());
            }
            FieldValue::I64(value) => {
                scratch.push(1);
                scratch.extend_from_slice(&value.to_le_bytes());
            }
            FieldValue::U64(value) => {
                scratch.push(2);
                scratch.extend_from_slice(&value.to_le_bytes());
            }
            FieldValue::Bool(value) => scratch.extend_from_slice(&[3, u8::from(*value)]),
            FieldValue::Str(value) => {
                scratch.push(4);
                scratch.extend_from_slice(&(value.len() as u64).to_le_bytes());
                scratch.extend_from_slice(value.as_bytes());
            }
        }
    }
    xxh3_128(scratch)
}
