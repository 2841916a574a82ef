//! Deterministic simulation of a whole node, from one seed.
//!
//! Senders make requests; the gateway's admission ([`nublar_ingest::admission`])
//! turns each into a batch; the log appends it on simulated storage (torn
//! writes, failed fsync, a full disk, power loss at any step) and the request
//! is acknowledged only when the append returns; the real processors read the
//! log and snapshot now and then; the sink, its decisions made by the real
//! [`nublar_sink::SinkCore`], lands the log in a modelled Delta lake and
//! commits its group; and the node restarts, cleanly or after a power loss,
//! whenever the seed says. There is one thread and a manual clock, so the same
//! seed makes the same run, and the run's trace hashes to the same value.
//!
//! After every step the run checks what a user relies on:
//! - no acknowledged event is lost: every acknowledged record stays readable
//!   at its offset with its bytes (checked in full after every restart, and
//!   the log's end never falls below the last acknowledgement);
//! - offsets never go back: the log's ends, the group's offsets, and each
//!   table's recorded positions only grow;
//! - no record lands in the lake twice.
//!
//! And at the end, after a drain: every record of the log is in the lake
//! exactly once, and what the processors emitted across all their crashes
//! equals one replay of the log from its start.
//!
//! What the model leaves out: the schema registry is kept in memory rather
//! than in its topic (so it survives restarts by construction), the lake's
//! store fails only cleanly (a commit either happens or not), processors emit
//! into a map rather than into topics of the log, and no absence ticks are
//! taken.

pub mod lake;
pub mod processors;
pub mod senders;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nublar_ingest::TELEMETRY_TOPIC;
use nublar_ingest::admission::{self, Payload, PrecisionChoice, Unbounded};
use nublar_ingest::schema::{Bounds, Schema};
use nublar_log::storage::sim::SimStorage;
use nublar_log::{Durability, Log, ManualClock, OpenOptions, TopicConfig};
use nublar_model::Precision;
use nublar_sink::Limits;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Steps a run takes unless told otherwise.
pub const STEPS_DEFAULT: usize = 400;
const DIR: &str = "/park/log";
const PARTITIONS: u32 = 3;
/// The clock starts on 2026-01-01.
const EPOCH_MS: i64 = 1_767_225_600_000;

/// A run that kept every invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// xxh3 of the run's trace: the same for the same seed and steps.
    pub trace_hash: u64,
    pub acknowledged_records: usize,
    pub rows_in_lake: usize,
    pub restarts: usize,
    pub processor_items: usize,
}

/// A run that broke an invariant (or could not go on), with how to run exactly it again.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub steps: usize,
    pub step: usize,
    pub what: String,
    /// The last lines of the trace, for the story before the failure.
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {} of {}: {}",
            self.seed, self.step, self.steps, self.what
        )?;
        writeln!(f, "the last steps:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "rerun exactly this: cargo run -p nublar-dst -- --seed {} --steps {}",
            self.seed, self.steps
        )
    }
}

/// Everything one run holds: the world outside the node, and the node.
struct World {
    rng: StdRng,
    storage: SimStorage,
    clock: Arc<ManualClock>,
    log: Option<Log>,
    zero_fill: bool,
    schema: Schema,
    lake: lake::Lake,
    sink: Option<lake::Sink>,
    processors_durable: processors::Durable,
    processors: Option<processors::Processors>,
    /// Partition → offset → digest of every acknowledged record's value.
    acknowledged: Vec<BTreeMap<i64, u64>>,
    /// Highest log end, group offset, seen per partition.
    ends: Vec<i64>,
    group: Vec<i64>,
    /// Requests that failed, to be sent again with their key.
    retries: Vec<(u16, Vec<u8>, String, bool)>,
    next_key: u64,
    fail_lake_commit: bool,
    restarts: usize,
    trace: Vec<String>,
}

impl World {
    fn now_ms(&self) -> i64 {
        use nublar_log::Clock;
        self.clock.now_ms()
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("the node is running")
    }

    fn open_log(&mut self) -> Result<(), String> {
        let options = OpenOptions {
            storage: Arc::new(self.storage.clone()),
            clock: self.clock.clone(),
            quota_bytes: None,
            read_only: false,
            background: false,
        };
        let log = Log::open_with(DIR, options).map_err(|error| format!("open: {error}"))?;
        let config = TopicConfig {
            partitions: PARTITIONS,
            durability: Durability::Fsync,
            segment_bytes: 64 * 1024,
            zero_fill: self.zero_fill,
            ..TopicConfig::default()
        };
        log.create_topic(TELEMETRY_TOPIC, config)
            .map_err(|error| format!("create topic: {error}"))?;
        self.log = Some(log);
        self.sink = None;
        self.processors = None;
        Ok(())
    }

    /// Stops the node; with `power_loss`, the disk keeps only what reached it.
    fn restart(&mut self, power_loss: bool) -> Result<(), String> {
        self.log = None;
        self.sink = None;
        self.processors = None;
        if power_loss {
            let seed = self.rng.random();
            self.storage.crash(seed);
        }
        self.storage.faults.unlimited_space();
        self.storage
            .faults
            .short_writes
            .store(false, Ordering::SeqCst);
        self.storage
            .faults
            .fail_next_sync
            .store(false, Ordering::SeqCst);
        self.storage
            .faults
            .fail_next_sync_keeping_pages
            .store(false, Ordering::SeqCst);
        self.restarts += 1;
        self.trace.push(format!(
            "restart{}",
            if power_loss { " after power loss" } else { "" }
        ));
        self.open_log()?;
        self.check_acknowledged()
    }

    fn limits() -> Limits {
        Limits {
            rows_max: 40,
            bytes_max: 64 * 1024,
            commit_interval: Duration::from_millis(500),
        }
    }

    /// One request from a sender, or a retry of one that failed.
    fn send(&mut self) -> Result<(), String> {
        let (sender, body, key, partial) = if !self.retries.is_empty() && self.rng.random_bool(0.5)
        {
            let index = self.rng.random_range(0..self.retries.len());
            self.retries.swap_remove(index)
        } else {
            let sender = self.rng.random_range(0..senders::SENDERS);
            let now_ns = self.now_ms() * 1_000_000;
            let body = senders::body(&mut self.rng, sender, now_ns);
            self.next_key += 1;
            let key = format!("park/request-{}", self.next_key);
            (sender, body, key, self.rng.random_bool(0.5))
        };
        let request = admission::Request {
            payload: Payload::LineProtocol,
            db: "park",
            body: &body,
            precision: PrecisionChoice::Fixed(Precision::Ns),
            accept_partial: partial,
            sender: senders::sender_address(sender),
            batch_key: Some((&key, None)),
            partitions: PARTITIONS,
        };
        let admitted = admission::admit(
            &request,
            &self.schema,
            self.now_ms() * 1_000_000,
            &mut Unbounded,
        )
        .map_err(|failure| format!("admission refused a simulated request: {}", failure.message))?;
        let Some(batch) = admitted.batch else {
            self.trace.push(format!(
                "{key}: nothing stored, {} rejected",
                admitted.rejected_total
            ));
            return Ok(());
        };
        self.schema.register("park", &admitted.pending);
        let values: Vec<u64> = {
            let view = batch.view();
            let records = view
                .records()
                .map_err(|error| format!("admitted batch: {error}"))?;
            records
                .iter()
                .map(|record| record.map(|record| xxh3_64(record.value)))
                .collect::<Result<_, _>>()
                .map_err(|error| format!("admitted batch: {error}"))?
        };
        match self
            .log()
            .append(TELEMETRY_TOPIC, admitted.partition, batch)
        {
            Ok(outcome) => {
                let acknowledged = &mut self.acknowledged[admitted.partition as usize];
                for (offset, digest) in (outcome.base_offset..).zip(&values) {
                    if let Some(before) = acknowledged.insert(offset, *digest)
                        && before != *digest
                    {
                        return Err(format!(
                            "INVARIANT: offset {}@{offset} acknowledged twice with different records",
                            admitted.partition
                        ));
                    }
                }
                self.trace.push(format!(
                    "{key}: acknowledged {}@{}..={}{}",
                    admitted.partition,
                    outcome.base_offset,
                    outcome.last_offset,
                    if outcome.deduplicated { " (again)" } else { "" }
                ));
            }
            Err(error) => {
                self.trace.push(format!("{key}: refused: {error}"));
                self.retries.push((sender, body, key, partial));
                if self.retries.len() > 32 {
                    self.retries.remove(0);
                }
            }
        }
        Ok(())
    }

    fn sink_pass(&mut self, stopping: bool) -> Result<bool, String> {
        if self.sink.is_none() {
            match lake::Sink::start(self.log(), self.now_ms(), Self::limits()) {
                Ok(sink) => self.sink = Some(sink),
                Err(lake::RunFailed(why)) => {
                    self.trace.push(format!("sink cannot start: {why}"));
                    return Ok(false);
                }
            }
        }
        let now_ms = self.now_ms();
        let log = self.log.as_ref().expect("the node is running");
        let sink = self.sink.as_mut().expect("started above");
        match sink.pass(
            log,
            &mut self.lake,
            now_ms,
            stopping,
            &mut self.fail_lake_commit,
            &mut self.trace,
        ) {
            Ok(done) => Ok(done),
            Err(lake::RunFailed(why)) if why.starts_with("INVARIANT") => Err(why),
            Err(lake::RunFailed(why)) => {
                self.trace.push(format!("sink run failed: {why}"));
                self.sink = None;
                Ok(false)
            }
        }
    }

    fn processors_step(&mut self, partition: u32) -> Result<(), String> {
        if self.processors.is_none() {
            self.processors = Some(processors::Processors::start(
                &self.processors_durable,
                PARTITIONS,
            )?);
        }
        let snapshot = self.rng.random_bool(0.3);
        let log = self.log.as_ref().expect("the node is running");
        let running = self.processors.as_mut().expect("started above");
        match running.step(
            log,
            &mut self.processors_durable,
            partition,
            snapshot,
            &mut self.trace,
        ) {
            Err(why) if why.starts_with("INVARIANT") => Err(why),
            Err(why) => {
                self.trace.push(format!("processors failed: {why}"));
                self.processors = None;
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Every acknowledged record is in the log at its offset with its bytes.
    fn check_acknowledged(&self) -> Result<(), String> {
        for (partition, acknowledged) in self.acknowledged.iter().enumerate() {
            let stored = read_partition(self.log(), partition as u32)?;
            for (offset, digest) in acknowledged {
                match stored.get(offset) {
                    Some(found) if found == digest => {}
                    Some(_) => {
                        return Err(format!(
                            "INVARIANT: acknowledged record {partition}@{offset} changed"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "INVARIANT: acknowledged record {partition}@{offset} is lost"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// What is checked after every step.
    fn check_step(&mut self) -> Result<(), String> {
        let log = self.log.as_ref().expect("the node is running");
        for partition in 0..PARTITIONS {
            let index = partition as usize;
            let end = log
                .end_offset(TELEMETRY_TOPIC, partition)
                .map_err(|error| error.to_string())?;
            let acknowledged_end = self.acknowledged[index]
                .last_key_value()
                .map_or(0, |(offset, _)| offset + 1);
            if end < acknowledged_end {
                return Err(format!(
                    "INVARIANT: partition {partition} ends at {end}, before acknowledged {acknowledged_end}"
                ));
            }
            if end < self.ends[index] {
                return Err(format!(
                    "INVARIANT: partition {partition}'s end went back from {} to {end}",
                    self.ends[index]
                ));
            }
            self.ends[index] = end;
            let group = log
                .committed(lake::GROUP, TELEMETRY_TOPIC, partition)
                .unwrap_or(0);
            if group < self.group[index] {
                return Err(format!(
                    "INVARIANT: the group's offset of {partition} went back from {} to {group}",
                    self.group[index]
                ));
            }
            self.group[index] = group;
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        match self.rng.random_range(0..100) {
            0..40 => self.send()?,
            40..58 => {
                self.sink_pass(false)?;
            }
            58..72 => {
                let partition = self.rng.random_range(0..PARTITIONS);
                self.processors_step(partition)?;
            }
            72..84 => {
                let ms = self.rng.random_range(1..800);
                self.clock.advance(ms);
                self.trace.push(format!("clock +{ms} ms"));
            }
            84..87 => {
                self.storage
                    .faults
                    .fail_next_sync
                    .store(true, Ordering::SeqCst);
                self.trace.push("fault: the next fsync fails".into());
            }
            87 => {
                self.storage
                    .faults
                    .fail_next_sync_keeping_pages
                    .store(true, Ordering::SeqCst);
                self.trace
                    .push("fault: the next fsync fails, keeping its pages".into());
            }
            88..90 => {
                let on = !self.storage.faults.short_writes.load(Ordering::SeqCst);
                self.storage.faults.short_writes.store(on, Ordering::SeqCst);
                self.trace.push(format!("fault: short writes {on}"));
            }
            90..92 => {
                let bytes = self.rng.random_range(0..20_000);
                self.storage.faults.limit_space(bytes);
                self.trace
                    .push(format!("fault: {bytes} bytes of disk left"));
            }
            92..94 => {
                self.storage.faults.unlimited_space();
                self.trace.push("the disk has room again".into());
            }
            94 => {
                self.fail_lake_commit = true;
                self.trace.push("fault: the next lake commit fails".into());
            }
            95..97 => self.restart(false)?,
            _ => self.restart(true)?,
        }
        // A partition stopped by a failed fsync needs a restart; the node's operator (or its
        // supervisor) gives it one soon.
        if !self.log().stopped_partitions().is_empty() && self.rng.random_bool(0.5) {
            let power_loss = self.rng.random_bool(0.5);
            self.restart(power_loss)?;
        }
        self.check_step()
    }

    /// Drains: the disk recovers, the node restarts cleanly, the sink reads to the end and
    /// the processors too; then the lake and the outputs are checked against the log.
    fn finish(&mut self) -> Result<(usize, usize), String> {
        self.fail_lake_commit = false;
        self.restart(false)?;
        let mut done = false;
        for _ in 0..10_000 {
            if self.sink_pass(true)? {
                done = true;
                break;
            }
        }
        if !done {
            return Err("the sink did not finish its drain".into());
        }
        let mut in_log = BTreeMap::new();
        for partition in 0..PARTITIONS {
            for (offset, digest) in read_partition(self.log(), partition)? {
                in_log.insert((partition, offset), digest);
            }
        }
        let mut in_lake = BTreeMap::new();
        for ((db, measurement), table) in &self.lake.tables {
            for (position, digest) in &table.rows {
                if in_lake.insert(*position, *digest).is_some() {
                    return Err(format!(
                        "INVARIANT: record {position:?} is in {db}.{measurement} and another table"
                    ));
                }
            }
        }
        if in_lake != in_log {
            let missing = in_log.keys().find(|key| !in_lake.contains_key(key));
            let extra = in_lake.keys().find(|key| !in_log.contains_key(key));
            return Err(format!(
                "INVARIANT: the lake does not hold the log exactly once: {} rows for {} \
                 records; first missing {missing:?}, first not in the log {extra:?}",
                in_lake.len(),
                in_log.len()
            ));
        }
        for partition in 0..PARTITIONS {
            let end = self
                .log()
                .end_offset(TELEMETRY_TOPIC, partition)
                .map_err(|error| error.to_string())?;
            for _ in 0..10_000 {
                self.processors_step(partition)?;
                if self
                    .processors
                    .as_ref()
                    .is_some_and(|running| running.next(partition) >= end)
                {
                    break;
                }
            }
        }
        let replayed = processors::replay(self.log(), PARTITIONS)?;
        if replayed != self.processors_durable.outputs {
            let differs = replayed
                .iter()
                .find(|(key, item)| self.processors_durable.outputs.get(key) != Some(item))
                .map(|(key, _)| *key)
                .or_else(|| {
                    self.processors_durable
                        .outputs
                        .keys()
                        .find(|key| !replayed.contains_key(key))
                        .copied()
                });
            return Err(format!(
                "INVARIANT: the processors' outputs ({} items) differ from a replay of the log \
                 ({} items), first at {differs:?}",
                self.processors_durable.outputs.len(),
                replayed.len()
            ));
        }
        Ok((in_lake.len(), replayed.len()))
    }
}

/// Offset → digest of every record of a partition of the telemetry topic.
fn read_partition(log: &Log, partition: u32) -> Result<BTreeMap<i64, u64>, String> {
    let mut records = BTreeMap::new();
    let mut next = log
        .start_offset(TELEMETRY_TOPIC, partition)
        .map_err(|error| error.to_string())?;
    loop {
        let batches = log
            .read(TELEMETRY_TOPIC, partition, next, 64 * 1024)
            .map_err(|error| format!("read {partition}@{next}: {error}"))?;
        let Some(end) = batches.next_offset() else {
            return Ok(records);
        };
        for view in batches.iter() {
            let decoded = view.records().map_err(|error| error.to_string())?;
            for record in decoded.iter() {
                let record = record.map_err(|error| error.to_string())?;
                records.insert(record.offset, xxh3_64(record.value));
            }
        }
        next = end;
    }
}

/// Runs one seed for `steps` steps, then drains and checks the end state.
pub fn run(seed: u64, steps: usize) -> Result<Outcome, Failure> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zero_fill = rng.random_bool(0.5);
    let mut world = World {
        rng,
        storage: SimStorage::new(),
        clock: Arc::new(ManualClock::new(EPOCH_MS)),
        log: None,
        zero_fill,
        schema: Schema::new(Bounds {
            columns_max: 1000,
            bytes_max: 1 << 20,
            database_bytes_max: 1 << 20,
        }),
        lake: lake::Lake::default(),
        sink: None,
        processors_durable: processors::Durable::default(),
        processors: None,
        acknowledged: vec![BTreeMap::new(); PARTITIONS as usize],
        ends: vec![0; PARTITIONS as usize],
        group: vec![0; PARTITIONS as usize],
        retries: Vec::new(),
        next_key: 0,
        fail_lake_commit: false,
        restarts: 0,
        trace: Vec::new(),
    };
    let fail = |world: &World, step: usize, what: String| Failure {
        seed,
        steps,
        step,
        what,
        trace_tail: world.trace.iter().rev().take(30).rev().cloned().collect(),
    };
    if let Err(what) = world.open_log() {
        return Err(fail(&world, 0, what));
    }
    for step in 1..=steps {
        if let Err(what) = world.step() {
            return Err(fail(&world, step, what));
        }
    }
    let (rows_in_lake, processor_items) = world
        .finish()
        .map_err(|what| fail(&world, steps + 1, what))?;
    let mut hasher = Xxh3::new();
    for line in &world.trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    Ok(Outcome {
        trace_hash: hasher.digest(),
        acknowledged_records: world.acknowledged.iter().map(BTreeMap::len).sum(),
        rows_in_lake,
        restarts: world.restarts,
        processor_items,
    })
}
