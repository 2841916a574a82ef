//! Duplicate events: the same series, timestamp and field values seen again within a window
//! of event time count once.
//!
//! An event is remembered by a 128-bit digest of its database, measurement, canonical tag set,
//! timestamp and fields (names, types and values, floats by their bits), so that memory per
//! event is fixed whatever its size. The window follows the watermark (the latest event time
//! seen): an event older than `watermark - window` is passed on unchecked, and the digests
//! of such events are forgotten.
//!
//! Digests are held in slices of event time, each a 256th of the window. A repeat has
//! the same timestamp as its first copy, so it is looked for in one slice only, and the
//! slice that the newest events fill is small enough to stay in the processor's cache where
//! one set of the whole window would not. Forgetting drops a whole slice once all of it is
//! behind the window, so a digest may be held up to one slice longer than the window; that
//! changes no decision, since events that old are not checked. At most `keys_max` digests
//! are kept: past that the oldest slices are forgotten first, and their digests counted.
//!
//! Like the other processors this reads no clock: the same input gives the same decisions.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound::{Excluded, Unbounded};

use nublar_model::{FieldValue, ParsedLine};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::series::{ByDigest, series_digest};

/// Slices per window.
const SLICES: i64 = 256;

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

impl DedupConfig {
    fn slice_ns(&self) -> i64 {
        (self.window_ns / SLICES).max(1)
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
    /// Digests forgotten before the window passed their slice, to keep `keys_max`.
    pub forgotten_early: u64,
}

/// The digests of events in `[start, end)` of event time.
#[derive(Clone, Serialize, Deserialize)]
struct Slice {
    end_ns: i64,
    digests: HashSet<u128, ByDigest>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Dedup {
    config: DedupConfig,
    watermark_ns: Option<i64>,
    /// Slices by start, never overlapping.
    slices: BTreeMap<i64, Slice>,
    keys: usize,
    counters: DedupCounters,
    #[serde(skip)]
    scratch: Vec<u8>,
}

impl Dedup {
    pub fn new(config: DedupConfig) -> Dedup {
        Dedup {
            config,
            watermark_ns: None,
            slices: BTreeMap::new(),
            keys: 0,
            counters: DedupCounters::default(),
            scratch: Vec::new(),
        }
    }

    /// What these digests are under another configuration: a shorter window or a lower bound
    /// forgets the surplus at the next event. Slices already made keep their length; new
    /// ones take the new window's.
    pub fn with_config(mut self, config: DedupConfig) -> Dedup {
        self.config = config;
        self
    }

    pub fn counters(&self) -> DedupCounters {
        self.counters
    }

    /// Digests held now.
    pub fn keys(&self) -> usize {
        self.keys
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
        if !self.slice_for(time_ns).digests.insert(digest) {
            self.counters.duplicates += 1;
            return Seen::Duplicate;
        }
        self.keys += 1;
        let watermark = self.watermark_ns.map_or(time_ns, |old| old.max(time_ns));
        self.watermark_ns = Some(watermark);
        let horizon = watermark.saturating_sub(self.config.window_ns);
        while let Some(oldest) = self.slices.first_entry() {
            let behind = oldest.get().end_ns <= horizon;
            if !behind && self.keys <= self.config.keys_max {
                break;
            }
            let forgotten = oldest.remove().digests.len();
            self.keys -= forgotten;
            if !behind {
                self.counters.forgotten_early += forgotten as u64;
            }
        }
        Seen::New
    }

    /// The slice holding `time_ns`, made if there is none: aligned to the slice length, and
    /// cut short where it would overlap a slice made under another window.
    fn slice_for(&mut self, time_ns: i64) -> &mut Slice {
        let before = self.slices.range(..=time_ns).next_back();
        let start = match before {
            Some((&start, slice)) if slice.end_ns > time_ns => start,
            _ => {
                let length = self.config.slice_ns();
                let mut start = time_ns - time_ns.rem_euclid(length);
                let mut end_ns = start.saturating_add(length);
                // The newest slice's size is the best guess of this one's, and growing a
                // set from empty rehashes it several times.
                let mut capacity = 0;
                if let Some((_, slice)) = before {
                    start = start.max(slice.end_ns);
                    capacity = slice.digests.len();
                }
                if let Some((&next, _)) = self.slices.range((Excluded(time_ns), Unbounded)).next() {
                    end_ns = end_ns.min(next);
                }
                let digests = HashSet::with_capacity_and_hasher(capacity, ByDigest::default());
                self.slices.insert(start, Slice { end_ns, digests });
                start
            }
        };
        self.slices
            .get_mut(&start)
            .expect("slice just found or made")
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
