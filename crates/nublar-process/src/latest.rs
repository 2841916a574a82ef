//! The latest value of every field of every series, for "what does this fence read now?".
//!
//! A field keeps the value with the latest event time; of equal times, the one that arrived
//! last. A series whose events arrive out of order therefore still shows its newest reading.
//! The series held are bounded by `series_max`; events of new series past it are counted and
//! not kept.

use std::collections::{BTreeMap, HashMap};

use nublar_model::{FieldValue, ParsedLine};
use serde::{Deserialize, Serialize};

use crate::series::{ByDigest, canonical_series, series_digest};

/// A field's latest value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub time_ns: i64,
    pub value: FieldValue<'static>,
}

/// One series: its tags and the latest reading of each of its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    pub db: String,
    pub measurement: String,
    /// The canonical tag set ([`canonical_series`]).
    pub series: String,
    /// Tags by key.
    pub tags: BTreeMap<String, String>,
    /// Each field's name and latest reading, in the order first seen: a series has few
    /// fields, and a short list is quicker to search than a map of names.
    pub fields: Vec<(String, Reading)>,
}

impl SeriesState {
    /// The time of the newest reading of any field.
    pub fn time_ns(&self) -> i64 {
        self.fields
            .iter()
            .map(|(_, reading)| reading.time_ns)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// The latest reading of the field `name`.
    pub fn field(&self, name: &str) -> Option<&Reading> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, reading)| reading)
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Latest {
    /// The series' digest ([`series_digest`]) → its state.
    series: HashMap<u128, SeriesState, ByDigest>,
    series_max: usize,
    series_dropped: u64,
}

impl Latest {
    pub fn new(series_max: usize) -> Latest {
        Latest {
            series: HashMap::default(),
            series_max,
            series_dropped: 0,
        }
    }

    /// This state under another bound; series already held are kept.
    pub fn with_series_max(mut self, series_max: usize) -> Latest {
        self.series_max = series_max;
        self
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Events of series not kept because `series_max` was reached.
    pub fn series_dropped(&self) -> u64 {
        self.series_dropped
    }

    pub fn observe(&mut self, db: &str, event: &ParsedLine<'_>, time_ns: i64) {
        let series = series_digest(db, &event.measurement, &event.tags);
        self.observe_series(db, series, event, time_ns);
    }

    /// [`Latest::observe`] for a caller that has the event's [`series_digest`] already.
    pub fn observe_series(&mut self, db: &str, digest: u128, event: &ParsedLine<'_>, time_ns: i64) {
        if !self.series.contains_key(&digest) && self.series.len() >= self.series_max {
            self.series_dropped += 1;
            return;
        }
        let state = self.series.entry(digest).or_insert_with(|| SeriesState {
            db: db.to_owned(),
            measurement: event.measurement.as_ref().to_owned(),
            series: canonical_series(&event.tags),
            tags: event
                .tags
                .iter()
                .map(|tag| (tag.key.as_ref().to_owned(), tag.value.as_ref().to_owned()))
                .collect(),
            fields: Vec::new(),
        });
        for field in &event.fields {
            let key = field.key.as_ref();
            match state
                .fields
                .iter_mut()
                .find(|(name, _)| name == key)
                .map(|(_, reading)| reading)
            {
                Some(reading) if reading.time_ns > time_ns => {}
                Some(reading) => {
                    reading.time_ns = time_ns;
                    reading.value = field.value.clone().into_owned();
                }
                None => {
                    state.fields.push((
                        key.to_owned(),
                        Reading {
                            time_ns,
                            value: field.value.clone().into_owned(),
                        },
                    ));
                }
            }
        }
    }

    /// The series of `db`, of `measurement` when given, whose tags include every pair of
    /// `tags`; ordered by measurement and series.
    pub fn query(
        &self,
        db: &str,
        measurement: Option<&str>,
        tags: &[(&str, &str)],
    ) -> Vec<&SeriesState> {
        let mut found: Vec<&SeriesState> = self
            .series
            .values()
            .filter(|state| state.db == db)
            .filter(|state| measurement.is_none_or(|wanted| state.measurement == wanted))
            .filter(|state| {
                tags.iter()
                    .all(|(key, value)| state.tags.get(*key).is_some_and(|held| held == value))
            })
            .collect();
        found.sort_by(|a, b| (&a.measurement, &a.series).cmp(&(&b.measurement, &b.series)));
        found
    }
}
