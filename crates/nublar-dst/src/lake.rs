//! The lake sink, driven the way the node drives it (its decisions are the
//! real [`SinkCore`]), against a modelled Delta lake: tables whose commits
//! are atomic and durable, each recording per partition the last offset its
//! rows hold, and which may fail as a store may.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nublar_ingest::TELEMETRY_TOPIC;
use nublar_log::Log;
use nublar_model::stored;
use nublar_sink::{AfterPass, CommitStep, Limits, SinkCore, start_at};
use xxhash_rust::xxh3::xxh3_64;

/// The sink's consumer group in the log.
pub const GROUP: &str = "lake";
/// Bytes asked of the log per read: small, so that reads end inside the log.
const READ_BYTES: usize = 8 * 1024;

/// One table of the modelled lake: what its commits made durable.
#[derive(Default)]
pub struct Table {
    /// (partition, offset) → digest of the record's value.
    pub rows: BTreeMap<(u32, i64), u64>,
    /// Per partition, the last offset a commit recorded.
    pub positions: BTreeMap<u32, i64>,
}

impl Table {
    fn holds(&self, partition: u32, offset: i64) -> bool {
        self.positions
            .get(&partition)
            .is_some_and(|last| offset <= *last)
    }
}

/// The modelled lake: (database, measurement) → table. It survives every crash.
#[derive(Default)]
pub struct Lake {
    pub tables: BTreeMap<(String, String), Table>,
}

/// A row waiting in a buffer: where its record is, and its value's digest.
type Row = (u32, i64, u64);

/// One run of the sink: lost with its buffers at a crash or a failed commit.
pub struct Sink {
    core: SinkCore,
    /// Table of each slot of the core.
    slots: Vec<(String, String)>,
    by_name: HashMap<(String, String), usize>,
    buffers: Vec<Vec<Row>>,
    began_ms: i64,
}

/// Why a sink run ended early; the driver starts another from the group's offsets.
#[derive(Debug)]
pub struct RunFailed(pub String);

impl Sink {
    pub fn start(log: &Log, now_ms: i64, limits: Limits) -> Result<Sink, RunFailed> {
        let partitions = log
            .topic_config(TELEMETRY_TOPIC)
            .map(|config| config.partitions)
            .ok_or_else(|| RunFailed("no telemetry topic".into()))?;
        let mut starts = Vec::new();
        for partition in 0..partitions {
            let first = log
                .start_offset(TELEMETRY_TOPIC, partition)
                .map_err(|error| RunFailed(error.to_string()))?;
            let committed = log.committed(GROUP, TELEMETRY_TOPIC, partition);
            starts.push(start_at(committed, first).offset);
        }
        Ok(Sink {
            core: SinkCore::new(starts, limits),
            slots: Vec::new(),
            by_name: HashMap::new(),
            buffers: Vec::new(),
            began_ms: now_ms,
        })
    }

    /// One pass over every partition, and what the core says after it. `fail_commit` makes
    /// the next table commit fail, as a store may. Answers whether a drain finished.
    pub fn pass(
        &mut self,
        log: &Log,
        lake: &mut Lake,
        now_ms: i64,
        stopping: bool,
        fail_commit: &mut bool,
        trace: &mut Vec<String>,
    ) -> Result<bool, RunFailed> {
        let now = Duration::from_millis((now_ms - self.began_ms).max(0) as u64);
        loop {
            let mut read_any = false;
            for partition in 0..self.core.partitions() {
                read_any |= self.read(log, lake, partition, now)?;
                if self.core.full() {
                    self.commit(log, lake, fail_commit, trace)?;
                }
            }
            match self.core.pass_done(read_any, stopping, now) {
                AfterPass::FetchEnds => {
                    let mut ends = Vec::new();
                    for partition in 0..self.core.partitions() {
                        ends.push(
                            log.end_offset(TELEMETRY_TOPIC, partition)
                                .map_err(|error| RunFailed(error.to_string()))?,
                        );
                    }
                    self.core.drain_to(ends);
                }
                AfterPass::Go { commit, done, .. } => {
                    if commit {
                        self.commit(log, lake, fail_commit, trace)?;
                    }
                    // A drain passes until done; otherwise one pass is one step.
                    if done || !stopping {
                        return Ok(done);
                    }
                }
            }
        }
    }

    fn read(
        &mut self,
        log: &Log,
        lake: &Lake,
        partition: u32,
        now: Duration,
    ) -> Result<bool, RunFailed> {
        let from = self.core.next(partition);
        let batches = log
            .read(TELEMETRY_TOPIC, partition, from, READ_BYTES)
            .map_err(|error| RunFailed(format!("read {partition}@{from}: {error}")))?;
        let Some(next) = batches.next_offset() else {
            return Ok(false);
        };
        for view in batches.iter() {
            let records = view
                .records()
                .map_err(|error| RunFailed(format!("batch at {}: {error}", view.base_offset())))?;
            let mut db = None;
            for (index, record) in records.iter().enumerate() {
                let record = record.map_err(|error| RunFailed(error.to_string()))?;
                if index == 0 {
                    db = record
                        .header("db")
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .map(str::to_owned);
                }
                if record.offset < from {
                    continue;
                }
                let (Some(db), Ok(line)) = (db.as_ref(), stored::decode(record.value)) else {
                    return Err(RunFailed(format!(
                        "record {partition}@{} is no event",
                        record.offset
                    )));
                };
                let name = (db.clone(), line.measurement.to_string());
                let slot = match self.by_name.get(&name) {
                    Some(slot) => *slot,
                    None => {
                        let slot = self.core.add_table();
                        self.slots.push(name.clone());
                        self.buffers.push(Vec::new());
                        self.by_name.insert(name.clone(), slot);
                        slot
                    }
                };
                if lake
                    .tables
                    .get(&name)
                    .is_some_and(|table| table.holds(partition, record.offset))
                {
                    continue;
                }
                self.buffers[slot].push((partition, record.offset, xxh3_64(record.value)));
                // The model's rows are small; a flat size per row stands in for the real
                // buffer's bytes, so that the byte bound is reached now and then too.
                let bytes = self.buffers[slot].len() * 64;
                self.core
                    .row_taken(slot, partition, record.offset, bytes, now);
            }
        }
        self.core.advance(partition, next);
        Ok(true)
    }

    fn commit(
        &mut self,
        log: &Log,
        lake: &mut Lake,
        fail_commit: &mut bool,
        trace: &mut Vec<String>,
    ) -> Result<(), RunFailed> {
        self.core.begin_commit();
        while let Some(step) = self.core.commit_step() {
            match &step {
                CommitStep::Table { table, positions } => {
                    let name = &self.slots[*table];
                    if std::mem::take(fail_commit) {
                        trace.push(format!("lake commit of {}.{} fails", name.0, name.1));
                        return Err(RunFailed("the store refused a commit".into()));
                    }
                    let landing = lake.tables.entry(name.clone()).or_default();
                    for (partition, offset, digest) in self.buffers[*table].drain(..) {
                        if landing.rows.insert((partition, offset), digest).is_some() {
                            return Err(RunFailed(format!(
                                "INVARIANT: record {partition}@{offset} landed in {}.{} twice",
                                name.0, name.1
                            )));
                        }
                    }
                    for (partition, last) in positions {
                        let before = landing.positions.insert(*partition, *last);
                        if before.is_some_and(|before| before > *last) {
                            return Err(RunFailed(format!(
                                "INVARIANT: {}.{} position of partition {partition} went back",
                                name.0, name.1
                            )));
                        }
                    }
                    trace.push(format!("lake commit {}.{} {positions:?}", name.0, name.1));
                }
                CommitStep::Group { offsets } => {
                    let offsets_named: Vec<(&str, u32, i64)> = offsets
                        .iter()
                        .enumerate()
                        .map(|(partition, offset)| (TELEMETRY_TOPIC, partition as u32, *offset))
                        .collect();
                    log.commit(GROUP, &offsets_named)
                        .map_err(|error| RunFailed(format!("group commit: {error}")))?;
                    trace.push(format!("group commit {offsets:?}"));
                }
            }
            self.core.step_done(&step);
        }
        Ok(())
    }
}
