//! Tumbling windows by event time: count, min, max, mean and last of every numeric field of
//! every series, per window (one minute by default).
//!
//! Time is the events' own. The watermark is the latest event time seen so far; a window
//! `[start, start + width)` stays open until the watermark reaches `start + width +
//! allowed_lateness`, so that an event arriving late but within the lateness still updates
//! its window. Then the window closes and its aggregates are emitted, once each. An event
//! whose window has already closed is late: nothing of it is counted, and the caller sends it
//! to the dead letters.
//!
//! Everything here depends only on the order of the events given, never on a clock, so that a
//! replay of the same input emits the same aggregates. Integers and unsigned integers are
//! aggregated as `f64`, exact up to 2^53; booleans and strings are not aggregated.
//!
//! Memory is bounded by `open_aggregates_max`: past it, the oldest open window is closed early,
//! and from then on events of that window or an older one count as late.

use std::collections::{BTreeMap, HashMap};

use nublar_model::{FieldValue, ParsedLine};
use serde::{Deserialize, Serialize};

use crate::series::{ByDigest, canonical_series, series_digest};

/// How windows are cut and how long they wait for late events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// The width of a window, in nanoseconds.
    pub width_ns: i64,
    /// How far behind the watermark an event may be and still count.
    pub allowed_lateness_ns: i64,
    /// Aggregates (one per window, series and field) held open at most.
    pub open_aggregates_max: usize,
}

impl Default for WindowConfig {
    fn default() -> WindowConfig {
        WindowConfig {
            width_ns: 60_000_000_000,
            allowed_lateness_ns: 30_000_000_000,
            open_aggregates_max: 1_000_000,
        }
    }
}

/// What one aggregate is of: a numeric field of a series of a measurement of a database.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesField {
    pub db: String,
    pub measurement: String,
    /// The series' canonical tag set ([`canonical_series`]).
    pub series: String,
    pub field: String,
}

/// The values of one field of one series within one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub window_start_ns: i64,
    pub key: SeriesField,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// The value with the latest event time; of equal times, the one that arrived last.
    pub last: f64,
    pub last_time_ns: i64,
}

impl Aggregate {
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// What became of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// Its numeric fields (maybe none) were counted in their window.
    Counted,
    /// Its window had closed: nothing of it was counted.
    Late {
        window_start_ns: i64,
        watermark_ns: i64,
    },
}

/// The open windows of one stream of events (for example one log partition, in which every
/// series keeps its order).
#[derive(Clone, Serialize, Deserialize)]
pub struct Windows {
    config: WindowConfig,
    watermark_ns: Option<i64>,
    /// Window start → the window's series by digest ([`series_digest`]): an event finds its
    /// aggregates without building its series' name, which is made once per window.
    open: BTreeMap<i64, HashMap<u128, OpenSeries, ByDigest>>,
    open_aggregates: usize,
    /// Windows at or before this start were closed early to keep the memory bound.
    closed_early_through: Option<i64>,
    windows_closed_early: u64,
}

/// One series' aggregates within one window.
#[derive(Clone, Serialize, Deserialize)]
struct OpenSeries {
    db: String,
    measurement: String,
    series: String,
    /// By field name; a series has few fields, so a list is the quickest to search.
    fields: Vec<(String, Stats)>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct Stats {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
    last_time_ns: i64,
}

impl Stats {
    fn new(value: f64, time_ns: i64) -> Stats {
        Stats {
            count: 1,
            min: value,
            max: value,
            sum: value,
            last: value,
            last_time_ns: time_ns,
        }
    }

    fn add(&mut self, value: f64, time_ns: i64) {
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        if time_ns >= self.last_time_ns {
            self.last = value;
            self.last_time_ns = time_ns;
        }
    }
}

impl Windows {
    pub fn new(config: WindowConfig) -> Windows {
        assert!(config.width_ns > 0, "a window is at least 1 ns wide");
        assert!(config.allowed_lateness_ns >= 0, "lateness is not negative");
        Windows {
            config,
            watermark_ns: None,
            open: BTreeMap::new(),
            open_aggregates: 0,
            closed_early_through: None,
            windows_closed_early: 0,
        }
    }

    /// These windows under another configuration (after a restart with new settings): the open
    /// windows keep their starts and close by the new width and lateness.
    pub fn with_config(mut self, config: WindowConfig) -> Windows {
        assert!(config.width_ns > 0, "a window is at least 1 ns wide");
        assert!(config.allowed_lateness_ns >= 0, "lateness is not negative");
        self.config = config;
        self
    }

    /// The latest event time seen.
    pub fn watermark_ns(&self) -> Option<i64> {
        self.watermark_ns
    }

    /// Aggregates held open now.
    pub fn open_aggregates(&self) -> usize {
        self.open_aggregates
    }

    /// The start of every open window, oldest first.
    pub fn open_windows(&self) -> impl Iterator<Item = i64> + '_ {
        self.open.keys().copied()
    }

    /// Windows closed before their time to keep `open_aggregates_max`.
    pub fn windows_closed_early(&self) -> u64 {
        self.windows_closed_early
    }

    /// The start of the window holding `time_ns`; the earliest window starts at `i64::MIN`,
    /// where a multiple of the width would not fit.
    pub fn window_start(&self, time_ns: i64) -> i64 {
        time_ns.saturating_sub(time_ns.rem_euclid(self.config.width_ns))
    }

    /// Counts the numeric fields of `event` (of database `db`, at `time_ns`) in their window,
    /// or reports it late; appends to `closed` every window this event's time closed.
    pub fn add(
        &mut self,
        db: &str,
        event: &ParsedLine<'_>,
        time_ns: i64,
        closed: &mut Vec<Aggregate>,
    ) -> Added {
        let series = series_digest(db, &event.measurement, &event.tags);
        self.add_series(db, series, event, time_ns, closed)
    }

    /// [`Windows::add`] for a caller that has the event's [`series_digest`] already.
    pub fn add_series(
        &mut self,
        db: &str,
        series: u128,
        event: &ParsedLine<'_>,
        time_ns: i64,
        closed: &mut Vec<Aggregate>,
    ) -> Added {
        let start = self.window_start(time_ns);
        if let Some(watermark_ns) = self.watermark_ns
            && (self.closes_at(start) <= watermark_ns
                || self
                    .closed_early_through
                    .is_some_and(|through| start <= through))
        {
            return Added::Late {
                window_start_ns: start,
                watermark_ns,
            };
        }
        let numeric = |value: &FieldValue<'_>| match value {
            FieldValue::F64(value) => Some(*value),
            FieldValue::I64(value) => Some(*value as f64),
            FieldValue::U64(value) => Some(*value as f64),
            FieldValue::Bool(_) | FieldValue::Str(_) => None,
        };
        if event
            .fields
            .iter()
            .any(|field| numeric(&field.value).is_some())
        {
            let open = self
                .open
                .entry(start)
                .or_default()
                .entry(series)
                .or_insert_with(|| OpenSeries {
                    db: db.to_owned(),
                    measurement: event.measurement.as_ref().to_owned(),
                    series: canonical_series(&event.tags),
                    fields: Vec::new(),
                });
            for field in &event.fields {
                let Some(value) = numeric(&field.value) else {
                    continue;
                };
                let key = field.key.as_ref();
                match open.fields.iter_mut().find(|(name, _)| name == key) {
                    Some((_, stats)) => stats.add(value, time_ns),
                    None => {
                        open.fields
                            .push((key.to_owned(), Stats::new(value, time_ns)));
                        self.open_aggregates += 1;
                    }
                }
            }
        }
        let watermark_ns = self.watermark_ns.map_or(time_ns, |old| old.max(time_ns));
        self.watermark_ns = Some(watermark_ns);
        while let Some((&oldest, _)) = self.open.first_key_value() {
            if self.closes_at(oldest) > watermark_ns {
                break;
            }
            self.close_oldest(closed);
        }
        while self.open_aggregates > self.config.open_aggregates_max {
            if let Some(start) = self.close_oldest(closed) {
                self.windows_closed_early += 1;
                self.closed_early_through = Some(start);
            }
        }
        Added::Counted
    }

    /// Closes every open window, as if time had run far past them.
    pub fn flush(&mut self, closed: &mut Vec<Aggregate>) {
        while self.close_oldest(closed).is_some() {}
    }

    fn closes_at(&self, start: i64) -> i64 {
        start
            .saturating_add(self.config.width_ns)
            .saturating_add(self.config.allowed_lateness_ns)
    }

    /// Emits the oldest window's aggregates, in key order so that the output is the same on
    /// every run; returns its start.
    fn close_oldest(&mut self, closed: &mut Vec<Aggregate>) -> Option<i64> {
        let (start, window) = self.open.pop_first()?;
        let first = closed.len();
        for open in window.into_values() {
            for (field, stats) in open.fields {
                self.open_aggregates -= 1;
                closed.push(Aggregate {
                    window_start_ns: start,
                    key: SeriesField {
                        db: open.db.clone(),
                        measurement: open.measurement.clone(),
                        series: open.series.clone(),
                        field,
                    },
                    count: stats.count,
                    min: stats.min,
                    max: stats.max,
                    sum: stats.sum,
                    last: stats.last,
                    last_time_ns: stats.last_time_ns,
                });
            }
        }
        closed[first..].sort_by(|a, b| a.key.cmp(&b.key));
        Some(start)
    }
}
