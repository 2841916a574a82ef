//! The processors of one input partition, chained: each record is decoded once and passed
//! through duplicates, windows, alerts and latest state in that order, so that the events a
//! later processor sees are the deduplicated ones, as if it read the deduplicated topic.
//!
//! Everything a processor emits is an item with an [`ItemId`]: the position after the input
//! record that caused it (its offset + 1, or, for an absence tick, the position the tick was
//! taken at) and its index among the items of that position in its output. Ids only grow, and
//! the same input (with the same ticks at the same positions) gives the same items under the
//! same ids. That is what lets the runner find, after a crash, which items its outputs already
//! hold, and emit exactly the rest (see `runner`).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use nublar_bus::{BatchView, Unreadable};
use nublar_model::{ParsedLine, stored};
use serde::{Deserialize, Serialize};

use crate::alerts::{Alert, Alerts, AlertsState, Rule};
use crate::dedup::{Dedup, DedupConfig, Seen};
use crate::latest::Latest;
use crate::series::series_digest;
use crate::windows::{Added, Aggregate, WindowConfig, Windows};

/// Which processors run, and how.
#[derive(Clone, Debug, Default)]
pub struct PipelineConfig {
    pub dedup: Option<DedupConfig>,
    pub windows: Option<WindowConfig>,
    pub alerts: Option<AlertsConfig>,
    /// Series kept at most by latest state, when it runs.
    pub latest_series_max: Option<usize>,
}

impl PipelineConfig {
    /// Whether the processors configured write `output`.
    pub fn runs(&self, output: Output) -> bool {
        match output {
            Output::Deduplicated => self.dedup.is_some(),
            Output::Aggregates | Output::Late => self.windows.is_some(),
            Output::Alerts => self.alerts.is_some(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AlertsConfig {
    pub rules: Vec<Rule>,
    /// Series watched per rule at most.
    pub series_max: usize,
}

/// Where an item stands in its output: after input position `position`, the `index`th item
/// of that position. Ordered by position, then index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemId {
    pub position: i64,
    pub index: u32,
}

impl ItemId {
    /// As carried in an output batch's `through` header: `position.index`.
    pub fn to_header(self) -> String {
        format!("{}.{}", self.position, self.index)
    }

    pub fn from_header(text: &str) -> Option<ItemId> {
        let (position, index) = text.split_once('.')?;
        Some(ItemId {
            position: position.parse().ok()?,
            index: index.parse().ok()?,
        })
    }
}

/// The outputs a pipeline writes, one stream of items each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Output {
    /// The deduplicated stream of events, batch by batch as they came.
    Deduplicated,
    /// Closed one-minute aggregates.
    Aggregates,
    /// Alerts firing and resolving.
    Alerts,
    /// Events too late for their window, for the dead letters.
    Late,
}

impl Output {
    pub const ALL: [Output; 4] = [
        Output::Deduplicated,
        Output::Aggregates,
        Output::Alerts,
        Output::Late,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Output::Deduplicated => "deduplicated",
            Output::Aggregates => "aggregates",
            Output::Alerts => "alerts",
            Output::Late => "late",
        }
    }
}

/// The next id of each output: the position of the last item and how many items it had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounter {
    position: i64,
    count: u32,
}

impl IdCounter {
    fn next(&mut self, position: i64) -> ItemId {
        if position != self.position {
            self.position = position;
            self.count = 0;
        }
        let id = ItemId {
            position,
            index: self.count,
        };
        self.count += 1;
        id
    }
}

/// One input batch's events that were not duplicates, to be written as one batch with the
/// input batch's headers.
#[derive(Debug, Default)]
pub struct KeptBatch {
    pub db: Option<String>,
    pub sender: Option<String>,
    /// The kept records' keys and values back to back: one buffer per batch rather than one
    /// allocation per record.
    data: Vec<u8>,
    /// Each kept record: its id, and where its key and value are in `data`.
    spans: Vec<(ItemId, Option<Span>, Span)>,
}

/// Start and end of some bytes in a buffer.
type Span = (usize, usize);

impl KeptBatch {
    /// Each kept record: its id, key and value as read.
    pub fn records(&self) -> impl Iterator<Item = (ItemId, Option<&[u8]>, &[u8])> + '_ {
        self.spans.iter().map(|(id, key, value)| {
            (
                *id,
                key.map(|(start, end)| &self.data[start..end]),
                &self.data[value.0..value.1],
            )
        })
    }

    fn push(&mut self, id: ItemId, key: Option<&[u8]>, value: &[u8]) {
        let mut span = |bytes: &[u8]| {
            let start = self.data.len();
            self.data.extend_from_slice(bytes);
            (start, self.data.len())
        };
        let key = key.map(&mut span);
        let value = span(value);
        self.spans.push((id, key, value));
    }
}

/// An event too late for its window.
#[derive(Clone, Debug, PartialEq)]
pub struct LateEvent {
    pub db: String,
    pub sender: Option<String>,
    /// The event as line protocol.
    pub line: String,
    /// When the log took it, in nanoseconds.
    pub received_ns: i64,
    pub window_start_ns: i64,
    pub watermark_ns: i64,
}

/// What processing emitted, in order within each output.
#[derive(Debug, Default)]
pub struct Emitted {
    pub kept: Vec<KeptBatch>,
    pub aggregates: Vec<(ItemId, Aggregate)>,
    pub alerts: Vec<(ItemId, Alert)>,
    pub late: Vec<(ItemId, LateEvent)>,
}

impl Emitted {
    pub fn clear(&mut self) {
        self.kept.clear();
        self.aggregates.clear();
        self.alerts.clear();
        self.late.clear();
    }
}

/// Counts since the pipeline started (or was restored), for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineCounters {
    pub events: u64,
    /// Records that were not a readable event, or had no database: passed on, not processed.
    pub unreadable: u64,
    pub duplicates: u64,
    pub late: u64,
    pub aggregates: u64,
    pub alerts: u64,
}

/// The processors' memory bounds: what they hold, and what they left out to stay within
/// them. Counted since the partition's state began, snapshots included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Duplicate digests held (`keys_max`).
    pub dedup_keys: usize,
    /// Digests forgotten while their events were still within the window, to keep
    /// `keys_max`: a repeat of one of them passes.
    pub dedup_forgotten_early: u64,
    /// Events older than the window, passed on unchecked.
    pub dedup_too_old_to_check: u64,
    /// Events of series that alert rules could not watch (`series_max`).
    pub alerts_series_unwatched: u64,
    /// Events of series that latest state could not hold (`series_max`).
    pub latest_series_dropped: u64,
}

impl PipelineCounters {
    /// Adds another partition's counts to these.
    pub fn add(&mut self, other: &PipelineCounters) {
        self.events += other.events;
        self.unreadable += other.unreadable;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.aggregates += other.aggregates;
        self.alerts += other.alerts;
    }
}

impl Bounds {
    /// Adds another partition's figures to these.
    pub fn add(&mut self, other: &Bounds) {
        self.dedup_keys += other.dedup_keys;
        self.dedup_forgotten_early += other.dedup_forgotten_early;
        self.dedup_too_old_to_check += other.dedup_too_old_to_check;
        self.alerts_series_unwatched += other.alerts_series_unwatched;
        self.latest_series_dropped += other.latest_series_dropped;
    }
}

/// A tick of the clock for absence, at an input position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// Taken after every input record below this position and none at or above it.
    pub at: i64,
    pub now_ns: i64,
}

/// The state of every processor of one partition, and the id counters of its outputs.
pub struct Pipeline {
    dedup: Option<Dedup>,
    windows: Option<Windows>,
    alerts: Option<Alerts>,
    latest: Option<Arc<Mutex<Latest>>>,
    ids: [IdCounter; 4],
    counters: PipelineCounters,
    /// The latest append time of the input processed, in nanoseconds.
    received_ns: Option<i64>,
    /// Scratch space reused for every aggregate closed and alert raised.
    closed: Vec<Aggregate>,
    raised: Vec<Alert>,
}

/// What a snapshot keeps of a pipeline: everything its outputs depend on.
#[derive(Serialize, Deserialize)]
pub struct PipelineState {
    dedup: Option<Dedup>,
    windows: Option<Windows>,
    alerts: Option<AlertsState>,
    latest: Option<Latest>,
    ids: [IdCounter; 4],
    counters: PipelineCounters,
}

/// [`PipelineState`] by reference: the same encoding.
#[derive(Serialize)]
struct PipelineStateRef<'a> {
    dedup: Option<&'a Dedup>,
    windows: Option<&'a Windows>,
    alerts: Option<&'a AlertsState>,
    latest: Option<&'a Latest>,
    ids: &'a [IdCounter; 4],
    counters: &'a PipelineCounters,
}

impl PipelineState {
    pub fn read(bytes: &[u8]) -> Result<PipelineState, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

impl Pipeline {
    pub fn new(config: &PipelineConfig) -> Pipeline {
        Pipeline {
            dedup: config.dedup.map(Dedup::new),
            windows: config.windows.map(Windows::new),
            alerts: config
                .alerts
                .as_ref()
                .map(|alerts| Alerts::new(alerts.rules.clone(), alerts.series_max)),
            latest: config
                .latest_series_max
                .map(|series_max| Arc::new(Mutex::new(Latest::new(series_max)))),
            ids: Default::default(),
            counters: PipelineCounters::default(),
            received_ns: None,
            closed: Vec::new(),
            raised: Vec::new(),
        }
    }

    /// A pipeline as it was when `state` was taken, under `config` now. A processor that was
    /// off then starts empty; one whose settings changed keeps what it knew only where that
    /// still means the same (see each processor's `restore`).
    pub fn restore(config: &PipelineConfig, state: PipelineState) -> Pipeline {
        let mut pipeline = Pipeline::new(config);
        if let (Some(config), Some(dedup)) = (config.dedup, state.dedup) {
            pipeline.dedup = Some(dedup.with_config(config));
        }
        if let (Some(config), Some(windows)) = (config.windows, state.windows) {
            pipeline.windows = Some(windows.with_config(config));
        }
        if let (Some(alerts), Some(saved)) = (&config.alerts, state.alerts) {
            pipeline.alerts = Some(Alerts::restore(
                alerts.rules.clone(),
                alerts.series_max,
                saved,
            ));
        }
        if let (Some(series_max), Some(latest)) = (config.latest_series_max, state.latest) {
            pipeline.latest = Some(Arc::new(Mutex::new(latest.with_series_max(series_max))));
        }
        pipeline.ids = state.ids;
        pipeline.counters = state.counters;
        pipeline
    }

    /// Appends the state, postcard encoded as [`PipelineState`] reads it, without copying it.
    pub fn write_state(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        let latest = self
            .latest
            .as_ref()
            .map(|latest| latest.lock().expect("latest state lock"));
        let alerts = self.alerts.as_ref().map(Alerts::state);
        let state = PipelineStateRef {
            dedup: self.dedup.as_ref(),
            windows: self.windows.as_ref(),
            alerts: alerts.as_ref(),
            latest: latest.as_deref(),
            ids: &self.ids,
            counters: &self.counters,
        };
        let bytes = postcard::to_stdvec(&state)?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    /// The latest state, shared with whoever answers queries of it.
    pub fn latest(&self) -> Option<Arc<Mutex<Latest>>> {
        self.latest.clone()
    }

    pub fn counters(&self) -> PipelineCounters {
        self.counters
    }

    /// The latest append time of the input processed so far (since the start or restore).
    pub fn received_ns(&self) -> Option<i64> {
        self.received_ns
    }

    /// Open aggregates and watched series, for `/metrics`.
    pub fn open_aggregates(&self) -> usize {
        self.windows.as_ref().map_or(0, Windows::open_aggregates)
    }

    /// What the memory bounds hold and what they left out.
    pub fn bounds(&self) -> Bounds {
        let dedup = self.dedup.as_ref();
        let forgotten = dedup.map(Dedup::counters).unwrap_or_default();
        Bounds {
            dedup_keys: dedup.map_or(0, Dedup::keys),
            dedup_forgotten_early: forgotten.forgotten_early,
            dedup_too_old_to_check: forgotten.too_old_to_check,
            alerts_series_unwatched: self.alerts.as_ref().map_or(0, Alerts::series_unwatched),
            latest_series_dropped: self.latest.as_ref().map_or(0, |latest| {
                latest.lock().expect("latest state lock").series_dropped()
            }),
        }
    }

    /// Processes the records of `batch` at or after `from`; before each record, takes every
    /// tick of `ticks` due at its position (and removes it). Appends what the processors emit.
    pub fn process_batch(
        &mut self,
        batch: &BatchView<'_>,
        from: i64,
        ticks: &mut std::collections::VecDeque<Tick>,
        out: &mut Emitted,
    ) -> Result<(), Unreadable> {
        // What a broken batch leaves: everything before the first record that cannot be read
        // is processed and emitted, and the error says where the rest starts.
        let mut untaken = batch.base_offset().max(from);
        let unreadable = |offset: i64, error: nublar_bus::BatchError| Unreadable {
            offset,
            resume_at: Some(batch.next_offset()),
            reason: error.to_string(),
        };
        let records = batch
            .records()
            .map_err(|error| unreadable(untaken, error))?;
        let received_ns = batch.max_timestamp().saturating_mul(1_000_000);
        self.received_ns = Some(
            self.received_ns
                .map_or(received_ns, |old| old.max(received_ns)),
        );
        let mut db: Option<&str> = None;
        let mut sender: Option<&str> = None;
        let mut kept: Option<KeptBatch> = None;
        let mut event = ParsedLine {
            measurement: Cow::Borrowed(""),
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp_ns: None,
        };
        let latest = self.latest.clone();
        let mut latest = latest
            .as_ref()
            .map(|latest| latest.lock().expect("latest state lock"));
        let mut broken = None;
        for (index, record) in records.iter().enumerate() {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    broken = Some(unreadable(untaken, error));
                    break;
                }
            };
            untaken = untaken.max(record.offset + 1);
            if index == 0 {
                db = record
                    .header("db")
                    .and_then(|value| std::str::from_utf8(value).ok());
                sender = record
                    .header("sender")
                    .and_then(|value| std::str::from_utf8(value).ok());
            }
            if record.offset < from {
                continue;
            }
            while ticks.front().is_some_and(|tick| tick.at <= record.offset) {
                let tick = ticks.pop_front().expect("a tick is due");
                self.tick(tick, out);
            }
            let position = record.offset + 1;
            let readable = db.filter(|_| stored::decode_into(record.value, &mut event).is_ok());
            let Some(db) = readable else {
                self.counters.unreadable += 1;
                if self.dedup.is_some() {
                    keep(&mut kept, db, sender, position, record.key, record.value);
                }
                continue;
            };
            self.counters.events += 1;
            let time_ns = event.timestamp_ns.unwrap_or(received_ns);
            // The series' identity once for every processor: each keys its state by it.
            let series = series_digest(db, &event.measurement, &event.tags);
            if let Some(dedup) = &mut self.dedup {
                if dedup.check_series(series, &event, time_ns) == Seen::Duplicate {
                    self.counters.duplicates += 1;
                    continue;
                }
                keep(
                    &mut kept,
                    Some(db),
                    sender,
                    position,
                    record.key,
                    record.value,
                );
            }
            if let Some(windows) = &mut self.windows {
                if let Added::Late {
                    window_start_ns,
                    watermark_ns,
                } = windows.add_series(db, series, &event, time_ns, &mut self.closed)
                {
                    self.counters.late += 1;
                    let id = self.ids[Output::Late.index()].next(position);
                    out.late.push((
                        id,
                        LateEvent {
                            db: db.to_owned(),
                            sender: sender.map(str::to_owned),
                            line: stored::display(record.value).unwrap_or_default(),
                            received_ns,
                            window_start_ns,
                            watermark_ns,
                        },
                    ));
                }
                for aggregate in self.closed.drain(..) {
                    self.counters.aggregates += 1;
                    let id = self.ids[Output::Aggregates.index()].next(position);
                    out.aggregates.push((id, aggregate));
                }
            }
            if let Some(alerts) = &mut self.alerts {
                alerts.observe_series(db, series, &event, time_ns, received_ns, &mut self.raised);
                for alert in self.raised.drain(..) {
                    self.counters.alerts += 1;
                    let id = self.ids[Output::Alerts.index()].next(position);
                    out.alerts.push((id, alert));
                }
            }
            if let Some(latest) = &mut latest {
                latest.observe_series(db, series, &event, time_ns);
            }
        }
        if let Some(kept) = kept {
            out.kept.push(kept);
        }
        broken.map_or(Ok(()), Err)
    }

    /// Takes the clock's time for absence at a position; its alerts are emitted at it.
    pub fn tick(&mut self, tick: Tick, out: &mut Emitted) {
        let Some(alerts) = &mut self.alerts else {
            return;
        };
        alerts.tick(tick.now_ns, &mut self.raised);
        for alert in self.raised.drain(..) {
            self.counters.alerts += 1;
            let id = self.ids[Output::Alerts.index()].next(tick.at);
            out.alerts.push((id, alert));
        }
    }
}

fn keep(
    kept: &mut Option<KeptBatch>,
    db: Option<&str>,
    sender: Option<&str>,
    position: i64,
    key: Option<&[u8]>,
    value: &[u8],
) {
    let kept = kept.get_or_insert_with(|| KeptBatch {
        db: db.map(str::to_owned),
        sender: sender.map(str::to_owned),
        ..KeptBatch::default()
    });
    // One item per input record, so the index is always 0.
    kept.push(ItemId { position, index: 0 }, key, value);
}
