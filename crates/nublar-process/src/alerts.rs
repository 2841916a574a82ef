//! Alert rules over events: a threshold held for a duration, a rate of change, a series gone
//! silent, and a collar outside its paddock. Each alert fires once and resolves once: a rule
//! keeps, per series, whether it is firing, and emits only the changes.
//!
//! Thresholds, rates and geofences read event times only, so a replay of the same input gives
//! the same alerts. Absence cannot: a series is silent when the clock says so, so the caller
//! passes the clock's time to [`Alerts::observe`] and [`Alerts::tick`], and a replay passes
//! the times it wants (a replay in event time passes each event's own time).
//!
//! The series tracked per rule are bounded by `series_max`; events of new series past the bound
//! are not watched, and counted.

use std::collections::HashMap;

use nublar_model::geo::{GeoPoint, polygon_contains};
use nublar_model::{FieldValue, ParsedLine};
use serde::{Deserialize, Serialize};

use crate::series::{ByDigest, canonical_series, series_digest};

/// One rule of the configuration.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule's name, carried by its alerts.
    pub name: String,
    /// The measurement whose events the rule watches.
    pub measurement: String,
    pub kind: RuleKind,
}

#[derive(Clone, Debug)]
pub enum RuleKind {
    /// `field` above `above` or below `below` in every event for at least `for_ns` of event
    /// time; resolves at the first event back within the bounds.
    Threshold {
        field: String,
        above: Option<f64>,
        below: Option<f64>,
        for_ns: i64,
    },
    /// `field` changing faster than `per_second_max` (either way) between two consecutive
    /// events of a series; resolves at the first change within the bound.
    RateOfChange { field: String, per_second_max: f64 },
    /// No event of a series for `for_ns` by the clock; resolves when one comes.
    Absence { for_ns: i64 },
    /// The position (`lat`, `lon` fields) outside the polygon of the paddock named by the
    /// `paddock_tag` tag; resolves when back inside. Paddocks not in the map are not watched.
    Geofence {
        paddock_tag: String,
        paddocks: HashMap<String, Vec<GeoPoint>>,
    },
}

/// A change of an alert's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub db: String,
    pub measurement: String,
    /// The series' canonical tag set.
    pub series: String,
    pub state: AlertState,
    /// The event time (or, for absence, the clock's time) of the change.
    pub time_ns: i64,
    /// The value that crossed, or the position as `[lat, lon]`, when there is one.
    pub values: Vec<f64>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// What a rule remembers of one series.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Watch {
    db: String,
    /// The series' canonical tag set.
    series: String,
    firing: bool,
    /// Threshold: when the current run of out-of-bounds values began.
    breached_since_ns: Option<i64>,
    /// Threshold, rate of change and geofence: the time and value of the newest event
    /// evaluated. An older event (a retried batch, a late sender) arrives after the state it
    /// would describe has passed, so these rules skip it rather than flap on it.
    previous: Option<(i64, f64)>,
    /// Absence: the clock's time of the latest event.
    seen_ns: i64,
}

/// What one rule knows, by series digest ([`series_digest`]).
type SeriesWatches = HashMap<u128, Watch, ByDigest>;

/// What the rules know of their series, by rule name, for a snapshot.
#[derive(Clone, Serialize, Deserialize)]
pub struct AlertsState {
    watches: Vec<(String, SeriesWatches)>,
    series_unwatched: u64,
}

pub struct Alerts {
    rules: Vec<Rule>,
    /// Per rule: the series' digest → what the rule knows of it.
    watches: Vec<SeriesWatches>,
    series_max: usize,
    series_unwatched: u64,
}

impl Alerts {
    pub fn new(rules: Vec<Rule>, series_max: usize) -> Alerts {
        let watches = rules.iter().map(|_| HashMap::default()).collect();
        Alerts {
            rules,
            watches,
            series_max,
            series_unwatched: 0,
        }
    }

    pub fn state(&self) -> AlertsState {
        AlertsState {
            watches: self
                .rules
                .iter()
                .zip(&self.watches)
                .map(|(rule, watches)| (rule.name.clone(), watches.clone()))
                .collect(),
            series_unwatched: self.series_unwatched,
        }
    }

    /// The rules of `rules` with what `state` knew of the rules of the same name; a rule that
    /// is new starts knowing nothing, and what removed rules knew is forgotten.
    pub fn restore(rules: Vec<Rule>, series_max: usize, state: AlertsState) -> Alerts {
        let mut known: HashMap<String, SeriesWatches> = state.watches.into_iter().collect();
        let watches = rules
            .iter()
            .map(|rule| known.remove(&rule.name).unwrap_or_default())
            .collect();
        Alerts {
            rules,
            watches,
            series_max,
            series_unwatched: state.series_unwatched,
        }
    }

    /// Events of series not watched because a rule's bound was reached.
    pub fn series_unwatched(&self) -> u64 {
        self.series_unwatched
    }

    /// Runs every rule of the event's measurement over it; `now_ns` is the clock's time, for
    /// absence. Appends the alerts that change state.
    pub fn observe(
        &mut self,
        db: &str,
        event: &ParsedLine<'_>,
        time_ns: i64,
        now_ns: i64,
        out: &mut Vec<Alert>,
    ) {
        let series = series_digest(db, &event.measurement, &event.tags);
        self.observe_series(db, series, event, time_ns, now_ns, out);
    }

    /// [`Alerts::observe`] for a caller that has the event's [`series_digest`] already.
    pub fn observe_series(
        &mut self,
        db: &str,
        digest: u128,
        event: &ParsedLine<'_>,
        time_ns: i64,
        now_ns: i64,
        out: &mut Vec<Alert>,
    ) {
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.measurement != event.measurement {
                continue;
            }
            let watches = &mut self.watches[index];
            if !watches.contains_key(&digest) && watches.len() >= self.series_max {
                self.series_unwatched += 1;
                continue;
            }
            let watch = watches.entry(digest).or_insert_with(|| Watch {
                db: db.to_owned(),
                series: canonical_series(&event.tags),
                ..Watch::default()
            });
            let series = &watch.series;
            let alert = |state: AlertState, values: Vec<f64>, message: String| Alert {
                rule: rule.name.clone(),
                db: db.to_owned(),
                measurement: rule.measurement.clone(),
                series: series.to_owned(),
                state,
                time_ns,
                values,
                message,
            };
            match &rule.kind {
                RuleKind::Threshold {
                    field,
                    above,
                    below,
                    for_ns,
                } => {
                    let Some(value) = number(event, field) else {
                        continue;
                    };
                    if watch
                        .previous
                        .is_some_and(|(newest_ns, _)| time_ns < newest_ns)
                    {
                        continue;
                    }
                    watch.previous = Some((time_ns, value));
                    let out_of_bounds = above.is_some_and(|above| value > above)
                        || below.is_some_and(|below| value < below);
                    if !out_of_bounds {
                        watch.breached_since_ns = None;
                        if watch.firing {
                            watch.firing = false;
                            out.push(alert(
                                AlertState::Resolved,
                                vec![value],
                                format!("{field} = {value}, back within bounds"),
                            ));
                        }
                        continue;
                    }
                    let since = *watch.breached_since_ns.get_or_insert(time_ns);
                    if !watch.firing && time_ns.saturating_sub(since) >= *for_ns {
                        watch.firing = true;
                        out.push(alert(
                            AlertState::Firing,
                            vec![value],
                            format!(
                                "{field} = {value}, out of bounds for {} s",
                                (time_ns - since) as f64 / 1e9
                            ),
                        ));
                    }
                }
                RuleKind::RateOfChange {
                    field,
                    per_second_max,
                } => {
                    let Some(value) = number(event, field) else {
                        continue;
                    };
                    let previous = watch.previous;
                    match previous {
                        // Out of order: no rate to take against an older event.
                        Some((previous_ns, _)) if time_ns <= previous_ns => continue,
                        Some((previous_ns, previous_value)) => {
                            let rate = (value - previous_value).abs()
                                / ((time_ns - previous_ns) as f64 / 1e9);
                            if rate > *per_second_max && !watch.firing {
                                watch.firing = true;
                                out.push(alert(
                                    AlertState::Firing,
                                    vec![value],
                                    format!(
                                        "{field} changed from {previous_value} to {value}: {rate:.3}/s"
                                    ),
                                ));
                            } else if rate <= *per_second_max && watch.firing {
                                watch.firing = false;
                                out.push(alert(
                                    AlertState::Resolved,
                                    vec![value],
                                    format!("{field} changing at {rate:.3}/s"),
                                ));
                            }
                        }
                        None => {}
                    }
                    watch.previous = Some((time_ns, value));
                }
                RuleKind::Absence { .. } => {
                    watch.seen_ns = watch.seen_ns.max(now_ns);
                    if watch.firing {
                        watch.firing = false;
                        out.push(Alert {
                            time_ns: now_ns,
                            ..alert(AlertState::Resolved, Vec::new(), "sending again".into())
                        });
                    }
                }
                RuleKind::Geofence {
                    paddock_tag,
                    paddocks,
                } => {
                    let (Some(lat), Some(lon)) = (number(event, "lat"), number(event, "lon"))
                    else {
                        continue;
                    };
                    let Some((paddock, fence)) = event
                        .tag(paddock_tag)
                        .and_then(|name| Some((name, paddocks.get(name)?)))
                    else {
                        continue;
                    };
                    if watch
                        .previous
                        .is_some_and(|(newest_ns, _)| time_ns < newest_ns)
                    {
                        continue;
                    }
                    watch.previous = Some((time_ns, lat));
                    let inside = polygon_contains(fence, GeoPoint { lat, lon });
                    if !inside && !watch.firing {
                        watch.firing = true;
                        out.push(alert(
                            AlertState::Firing,
                            vec![lat, lon],
                            format!("containment breach: {series} at {lat}, {lon}, outside paddock {paddock}"),
                        ));
                    } else if inside && watch.firing {
                        watch.firing = false;
                        out.push(alert(
                            AlertState::Resolved,
                            vec![lat, lon],
                            format!("back inside paddock {paddock} at {lat}, {lon}"),
                        ));
                    }
                }
            }
        }
    }

    /// Fires the absence rules of every series silent for their duration by `now_ns`.
    pub fn tick(&mut self, now_ns: i64, out: &mut Vec<Alert>) {
        for (index, rule) in self.rules.iter().enumerate() {
            let RuleKind::Absence { for_ns } = rule.kind else {
                continue;
            };
            let mut fired: Vec<(&String, &String, i64)> = self.watches[index]
                .values_mut()
                .filter(|watch| !watch.firing && now_ns.saturating_sub(watch.seen_ns) >= for_ns)
                .map(|watch| {
                    watch.firing = true;
                    (&watch.db, &watch.series, watch.seen_ns)
                })
                .collect();
            // In a stable order, so that the same state gives the same output.
            fired.sort();
            for (db, series, seen_ns) in fired {
                out.push(Alert {
                    rule: rule.name.clone(),
                    db: db.clone(),
                    measurement: rule.measurement.clone(),
                    series: series.clone(),
                    state: AlertState::Firing,
                    time_ns: now_ns,
                    values: Vec::new(),
                    message: format!(
                        "no event for {} s",
                        now_ns.saturating_sub(seen_ns) as f64 / 1e9
                    ),
                });
            }
        }
    }
}

fn number(event: &ParsedLine<'_>, field: &str) -> Option<f64> {
    match event.field(field)? {
        FieldValue::F64(value) => Some(*value),
        FieldValue::I64(value) => Some(*value as f64),
        FieldValue::U64(value) => Some(*value as f64),
        FieldValue::Bool(value) => Some(f64::from(u8::from(*value))),
        FieldValue::Str(_) => None,
    }
}
