//! The processors on the bus: one task per partition of the input topic reads it as the
//! consumer group, runs the [`Pipeline`] over each read, and appends what it emits to the
//! output topics.
//!
//! # Nothing twice, nothing lost
//!
//! Every output batch carries, in the headers of its first record, where it came from (`src`:
//! input topic and partition; `proc`: the group) and the id of its last item (`through`, see
//! [`ItemId`]); its batch key is derived from the id of its first item. Each partition's state
//! is snapshotted to `<state_dir>/<input>/<partition>.snapshot` now and then, with the input
//! position it stands at and the end of every output partition at that moment; only then is the
//! group's offset committed.
//!
//! After a crash the partition starts from its snapshot and first reads its outputs from the
//! recorded ends: the greatest `through` of each output says which items that output already
//! holds. It then reads its input again from the snapshot's position, and because the same
//! input gives the same items under the same ids, it writes exactly the items past those ids.
//! Absence alerts are the one thing driven by the clock: a tick that raised alerts is written
//! as a batch of its own with a `tick` header (its position and the clock's time), and the
//! recovery takes those ticks again at the same positions with the same times. A tick that
//! raised nothing changed nothing and is not needed.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nublar_bus::{
    Batch, BatchBuilder, Bus, BusError, Compression, ReadBatches, Stalls, Start, TopicConfig,
    Unreadable,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::alerts::{Alert, AlertState};
use crate::latest::{Latest, SeriesState};
use crate::pipeline::{
    Bounds, Emitted, ItemId, LateEvent, Output, Pipeline, PipelineConfig, PipelineCounters,
    PipelineState, Tick,
};
use crate::windows::Aggregate;

/// The consumer group the processors read their input as.
pub const GROUP: &str = "processors";
/// The topic the deduplicated stream is written to.
pub const DEDUPLICATED_TOPIC: &str = "_telemetry_dedup";
pub const AGGREGATES_TOPIC: &str = "_agg_1m";
pub const ALERTS_TOPIC: &str = "_alerts";
/// Where late events go (the gateway's dead letters topic).
pub const DEAD_LETTERS_TOPIC: &str = "_dead_letters";

/// How often a stalled partition looks for an operator's word, besides being woken.
const STALL_POLL: Duration = Duration::from_secs(1);
/// An output batch is closed at about this many bytes.
const OUTPUT_BATCH_BYTES: usize = 1 << 20;

/// The clock absence reads, in nanoseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i64)
    })
}

/// How the runner runs; the node's configuration documents each option and its default.
#[derive(Clone)]
pub struct RunnerConfig {
    pub input: String,
    pub group: String,
    pub pipeline: PipelineConfig,
    /// The topic of each output, by [`Output::index`].
    pub outputs: [String; 4],
    pub state_dir: PathBuf,
    pub snapshot_interval: Duration,
    /// How often absence rules look at the clock.
    pub tick_interval: Duration,
    /// Bytes asked of the bus per read.
    pub read_bytes: usize,
    pub retry_after: Duration,
    /// Where a partition with neither snapshot nor committed offset starts: the committed
    /// offset of this group if it has one (the lake's, so that switching duplicates on does
    /// not send the lake what it holds), else the topic's start.
    pub first_start_from_group: Option<String>,
    pub clock: Clock,
    /// Where a partition that meets an unreadable batch stops, shared with the node.
    pub stalls: Arc<Stalls>,
}

impl RunnerConfig {
    pub fn new(state_dir: PathBuf, pipeline: PipelineConfig) -> RunnerConfig {
        RunnerConfig {
            input: "telemetry".into(),
            group: GROUP.into(),
            pipeline,
            outputs: [
                DEDUPLICATED_TOPIC.into(),
                AGGREGATES_TOPIC.into(),
                ALERTS_TOPIC.into(),
                DEAD_LETTERS_TOPIC.into(),
            ],
            state_dir,
            snapshot_interval: Duration::from_secs(10),
            tick_interval: Duration::from_secs(1),
            read_bytes: 4 << 20,
            retry_after: Duration::from_secs(1),
            first_start_from_group: None,
            clock: system_clock(),
            stalls: Arc::new(Stalls::default()),
        }
    }

    fn topic(&self, output: Output) -> &str {
        &self.outputs[output.index()]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
}

/// What every partition has done, and its latest state, for `/metrics` and queries.
#[derive(Default)]
pub struct RunnerShared {
    partitions: Mutex<Vec<PartitionStatus>>,
}

#[derive(Clone, Default)]
struct PartitionStatus {
    counters: PipelineCounters,
    position: i64,
    open_aggregates: usize,
    bounds: Bounds,
    snapshots: u64,
    failed_rounds: u64,
    latest: Option<Arc<Mutex<Latest>>>,
}

/// Sums over the partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerTotals {
    pub counters: PipelineCounters,
    pub open_aggregates: usize,
    pub bounds: Bounds,
    pub snapshots: u64,
    pub failed_rounds: u64,
}

impl RunnerShared {
    fn update(&self, partition: u32, change: impl FnOnce(&mut PartitionStatus)) {
        let mut partitions = self.partitions.lock().expect("runner status lock");
        let index = partition as usize;
        if partitions.len() <= index {
            partitions.resize(index + 1, PartitionStatus::default());
        }
        change(&mut partitions[index]);
    }

    pub fn totals(&self) -> RunnerTotals {
        let partitions = self.partitions.lock().expect("runner status lock");
        let mut totals = RunnerTotals::default();
        for status in partitions.iter() {
            totals.counters.add(&status.counters);
            totals.open_aggregates += status.open_aggregates;
            totals.bounds.add(&status.bounds);
            totals.snapshots += status.snapshots;
            totals.failed_rounds += status.failed_rounds;
        }
        totals
    }

    /// The input position of each partition.
    pub fn positions(&self) -> Vec<i64> {
        let partitions = self.partitions.lock().expect("runner status lock");
        partitions.iter().map(|status| status.position).collect()
    }

    /// Latest state of every partition matching the query, ordered by measurement and series.
    pub fn latest(
        &self,
        db: &str,
        measurement: Option<&str>,
        tags: &[(&str, &str)],
    ) -> Vec<SeriesState> {
        let states: Vec<Arc<Mutex<Latest>>> = self
            .partitions
            .lock()
            .expect("runner status lock")
            .iter()
            .filter_map(|status| status.latest.clone())
            .collect();
        let mut found: Vec<SeriesState> = states
            .iter()
            .flat_map(|latest| {
                latest
                    .lock()
                    .expect("latest state lock")
                    .query(db, measurement, tags)
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        found.sort_by(|a, b| (&a.measurement, &a.series).cmp(&(&b.measurement, &b.series)));
        found
    }
}

pub struct Runner {
    bus: Arc<dyn Bus>,
    config: RunnerConfig,
    shared: Arc<RunnerShared>,
}

impl Runner {
    pub fn new(bus: Arc<dyn Bus>, config: RunnerConfig) -> Runner {
        Runner {
            bus,
            config,
            shared: Arc::new(RunnerShared::default()),
        }
    }

    pub fn shared(&self) -> Arc<RunnerShared> {
        self.shared.clone()
    }

    /// Runs every partition until `stop` turns true; each then writes a last snapshot. A
    /// partition whose round fails starts again from its snapshot after `retry_after`.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), RunnerError> {
        let partitions = self.prepare().await?;
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..partitions {
            let this = this.clone();
            let mut stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    match this.partition(partition, &mut stop).await {
                        Ok(()) => return,
                        Err(error) => {
                            this.shared
                                .update(partition, |status| status.failed_rounds += 1);
                            tracing::warn!(%error, partition, "processors failed; starting again from the snapshot");
                            tokio::select! {
                                () = tokio::time::sleep(this.config.retry_after) => {}
                                _ = stop.wait_for(|stopped| *stopped) => return,
                            }
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Creates the output topics the pipeline writes (as many partitions as the input, except
    /// a topic that already exists) and requires the group on the input.
    pub async fn prepare(&self) -> Result<u32, RunnerError> {
        let partitions = self.bus.partitions(&self.config.input).await?;
        for output in Output::ALL {
            if !self.config.pipeline.runs(output) {
                continue;
            }
            let topic = self.config.topic(output);
            if let Err(BusError::UnknownTopic(_)) = self.bus.partitions(topic).await {
                self.bus
                    .ensure_topic(topic, TopicConfig::with_partitions(partitions))
                    .await?;
            }
        }
        self.bus
            .require_group(&self.config.group, &self.config.input)
            .await?;
        std::fs::create_dir_all(self.state_dir()).map_err(|error| RunnerError::Snapshot {
            path: self.state_dir(),
            reason: error.to_string(),
        })?;
        Ok(partitions)
    }

    fn stalls(&self) -> &Stalls {
        &self.config.stalls
    }

    /// Stops `partition` at a batch it cannot read, for readiness and an operator to see.
    fn stall(&self, partition: u32, unreadable: &Unreadable) {
        self.stalls().stall(
            &self.config.group,
            &self.config.input,
            partition,
            unreadable.offset,
            unreadable.resume_at,
            &unreadable.reason,
        );
        self.shared
            .update(partition, |status| status.position = unreadable.offset);
    }

    fn state_dir(&self) -> PathBuf {
        self.config.state_dir.join(&self.config.input)
    }

    fn snapshot_path(&self, partition: u32) -> PathBuf {
        self.state_dir().join(format!("{partition}.snapshot"))
    }

    fn source(&self, partition: u32) -> String {
        format!("{}/{partition}", self.config.input)
    }

    /// One partition from its snapshot until stopped (Ok) or until something fails (Err).
    async fn partition(
        &self,
        partition: u32,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        let mut run = self.recover(partition).await?;
        let latest = run.pipeline.as_ref().and_then(Pipeline::latest);
        self.shared.update(partition, |status| {
            status.latest = latest;
            status.position = run.position;
        });
        let mut last_snapshot = Instant::now();
        let mut last_tick = Instant::now();
        let mut emitted = Emitted::default();
        let (group, input) = (self.config.group.as_str(), self.config.input.as_str());
        let mut stalled: Option<Unreadable> = None;
        loop {
            let stopping = *stop.borrow();
            if let Some(stall) = &stalled {
                match self.stalls().skip_to(group, input, partition) {
                    Some(to) => {
                        // The operator's word: what lies between is not consumed.
                        run.position = to;
                        self.stalls().resumed(group, input, partition, to);
                        stalled = None;
                        self.snapshot(partition, &mut run).await?;
                        last_snapshot = Instant::now();
                    }
                    None if stopping => {
                        self.snapshot(partition, &mut run).await?;
                        return Ok(());
                    }
                    None => {
                        tracing::debug!(partition, offset = stall.offset, "stalled");
                        tokio::select! {
                            () = self.stalls().changed() => {}
                            () = tokio::time::sleep(STALL_POLL) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
            let read = self
                .bus
                .read(
                    input,
                    partition,
                    Start::Offset(run.position),
                    self.config.read_bytes,
                )
                .await;
            let batches = match read {
                Ok(batches) => batches,
                Err(BusError::Corruption(reason)) => {
                    let unreadable = Unreadable {
                        offset: run.position,
                        resume_at: None,
                        reason,
                    };
                    self.stall(partition, &unreadable);
                    stalled = Some(unreadable);
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let read_any = batches.next_offset().is_some();
            if read_any {
                let next = batches.next_offset().expect("a batch was read");
                let (pipeline, journal, processed, broken) =
                    self.process(&mut run, batches, emitted).await;
                run.pipeline = Some(pipeline);
                run.journal = journal;
                emitted = processed;
                run.position = broken.as_ref().map_or(next, |broken| broken.offset);
                self.write(partition, &mut run, &mut emitted, None).await?;
                if let Some(broken) = broken {
                    self.stall(partition, &broken);
                    stalled = Some(broken);
                    continue;
                }
            } else {
                // At the end of the input: the recovery's ticks taken here are due now.
                let pipeline = run.pipeline.as_mut().expect("the pipeline is home");
                while let Some(tick) = run.journal.front().copied() {
                    if tick.at > run.position {
                        break;
                    }
                    run.journal.pop_front();
                    pipeline.tick(tick, &mut emitted);
                }
                self.write(partition, &mut run, &mut emitted, None).await?;
            }
            let caught_up = run.journal.is_empty() && run.replay_through <= run.position;
            if caught_up && last_tick.elapsed() >= self.config.tick_interval {
                last_tick = Instant::now();
                let pipeline = run.pipeline.as_mut().expect("the pipeline is home");
                // Behind its input (a backlog after a restart, a burst), a partition's clock
                // is the append time of what it has read: a series is silent only if the log
                // holds nothing of it, not because its events wait to be read.
                let end = self.bus.offsets(&self.config.input, partition).await?.end;
                let clock = (self.config.clock)();
                let now_ns = match pipeline.received_ns() {
                    Some(received) if run.position < end => received.min(clock),
                    _ => clock,
                };
                let tick = Tick {
                    at: run.position,
                    now_ns,
                };
                pipeline.tick(tick, &mut emitted);
                self.write(partition, &mut run, &mut emitted, Some(tick))
                    .await?;
            }
            let pipeline = run.pipeline.as_ref().expect("the pipeline is home");
            let (counters, open, bounds) = (
                pipeline.counters(),
                pipeline.open_aggregates(),
                pipeline.bounds(),
            );
            self.shared.update(partition, |status| {
                status.counters = counters;
                status.open_aggregates = open;
                status.bounds = bounds;
                status.position = run.position;
            });
            if stopping && !read_any {
                self.snapshot(partition, &mut run).await?;
                return Ok(());
            }
            if last_snapshot.elapsed() >= self.config.snapshot_interval {
                self.snapshot(partition, &mut run).await?;
                last_snapshot = Instant::now();
            }
            if !read_any {
                let until_tick = self
                    .config
                    .tick_interval
                    .saturating_sub(last_tick.elapsed());
                let until_snapshot = self
                    .config
                    .snapshot_interval
                    .saturating_sub(last_snapshot.elapsed());
                tokio::select! {
                    _ = self.bus.wait(
                        &self.config.input,
                        partition,
                        run.position,
                        until_tick.min(until_snapshot),
                    ) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Runs the pipeline over `batches` on the blocking pool: it is all computation. A batch
    /// that cannot be read ends the work there: what came before it is processed and emitted,
    /// and the error says where the partition stands.
    async fn process(
        &self,
        run: &mut PartitionRun,
        batches: ReadBatches,
        mut emitted: Emitted,
    ) -> (Pipeline, VecDeque<Tick>, Emitted, Option<Unreadable>) {
        let mut pipeline = run.pipeline.take().expect("the pipeline is home");
        let mut journal = std::mem::take(&mut run.journal);
        let from = run.position;
        let work = tokio::task::spawn_blocking(move || {
            let mut broken = None;
            for view in batches.iter() {
                if let Err(error) = pipeline.process_batch(&view, from, &mut journal, &mut emitted)
                {
                    broken = Some(error);
                    break;
                }
            }
            (pipeline, journal, emitted, broken)
        });
        work.await.expect("processing does not panic")
    }

    /// Appends what was emitted, without the items the outputs already hold, and clears it.
    async fn write(
        &self,
        partition: u32,
        run: &mut PartitionRun,
        emitted: &mut Emitted,
        tick: Option<Tick>,
    ) -> Result<(), RunnerError> {
        let source = self.source(partition);
        let group = &self.config.group;
        let held = run.held;
        let fresh =
            |output: Output, id: &ItemId| held[output.index()].is_none_or(|held| *id > held);
        for kept in emitted.kept.drain(..) {
            let records: Vec<_> = kept
                .records()
                .filter(|(id, _, _)| fresh(Output::Deduplicated, id))
                .collect();
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                continue;
            };
            let mut builder = BatchBuilder::new(Compression::Lz4)
                .batch_key(&format!("{group}/{source}/{}", first.0.to_header()))
                .expect("the key is short");
            let through = last.0.to_header();
            for (index, (_, key, value)) in records.iter().enumerate() {
                if index == 0 {
                    let mut headers: Vec<(&str, &[u8])> = vec![
                        ("src", source.as_bytes()),
                        ("proc", group.as_bytes()),
                        ("through", through.as_bytes()),
                    ];
                    if let Some(db) = &kept.db {
                        headers.push(("db", db.as_bytes()));
                    }
                    if let Some(sender) = &kept.sender {
                        headers.push(("sender", sender.as_bytes()));
                    }
                    builder.push(*key, value, &headers);
                } else {
                    builder.push(*key, value, &[]);
                }
            }
            self.append(Output::Deduplicated, partition, builder, run)
                .await?;
            run.held[Output::Deduplicated.index()] = Some(last.0);
        }
        let aggregates: Vec<_> = emitted
            .aggregates
            .drain(..)
            .filter(|(id, _)| fresh(Output::Aggregates, id))
            .map(|(id, aggregate)| (id, aggregate_json(&aggregate)))
            .collect();
        self.append_json(Output::Aggregates, partition, run, aggregates, None)
            .await?;
        let alerts: Vec<_> = emitted
            .alerts
            .drain(..)
            .filter(|(id, _)| fresh(Output::Alerts, id))
            .map(|(id, alert)| (id, alert_json(&alert)))
            .collect();
        self.append_json(Output::Alerts, partition, run, alerts, tick)
            .await?;
        let late: Vec<_> = emitted
            .late
            .drain(..)
            .filter(|(id, _)| fresh(Output::Late, id))
            .map(|(id, late)| (id, late_json(&late)))
            .collect();
        self.append_json(Output::Late, partition, run, late, None)
            .await?;
        emitted.clear();
        Ok(())
    }

    /// Appends JSON items as batches of about [`OUTPUT_BATCH_BYTES`]; a tick's items go in
    /// batches that carry the tick, so that a recovery can take it again.
    async fn append_json(
        &self,
        output: Output,
        partition: u32,
        run: &mut PartitionRun,
        items: Vec<(ItemId, Vec<u8>)>,
        tick: Option<Tick>,
    ) -> Result<(), RunnerError> {
        let source = self.source(partition);
        let group = &self.config.group;
        let tick_header = tick.map(|tick| format!("{}:{}", tick.at, tick.now_ns));
        let mut rest = items.as_slice();
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .position(|(_, value)| {
                    bytes += value.len();
                    bytes > OUTPUT_BATCH_BYTES
                })
                .map_or(rest.len(), |index| index.max(1));
            let (chunk, after) = rest.split_at(take);
            rest = after;
            let first = chunk[0].0;
            let last = chunk[chunk.len() - 1].0;
            let through = last.to_header();
            let mut builder = BatchBuilder::new(Compression::Lz4)
                .batch_key(&format!("{group}/{source}/{}", first.to_header()))
                .expect("the key is short");
            for (index, (_, value)) in chunk.iter().enumerate() {
                if index == 0 {
                    let mut headers: Vec<(&str, &[u8])> = vec![
                        ("src", source.as_bytes()),
                        ("proc", group.as_bytes()),
                        ("through", through.as_bytes()),
                    ];
                    if let Some(tick) = &tick_header {
                        headers.push(("tick", tick.as_bytes()));
                    }
                    builder.push(None, value, &headers);
                } else {
                    builder.push(None, value, &[]);
                }
            }
            self.append(output, partition, builder, run).await?;
            run.held[output.index()] = Some(last);
        }
        Ok(())
    }

    async fn append(
        &self,
        output: Output,
        partition: u32,
        builder: BatchBuilder,
        run: &PartitionRun,
    ) -> Result<(), RunnerError> {
        let batch: Batch = builder
            .finish()
            .map_err(|error| BusError::Invalid(error.to_string()))?;
        let topic = self.config.topic(output);
        let target = partition % run.output_partitions[output.index()].max(1);
        self.bus.append(topic, target, batch).await?;
        Ok(())
    }

    /// The partition's state from its snapshot (or new), with what its outputs already hold
    /// and the ticks to take again.
    async fn recover(&self, partition: u32) -> Result<PartitionRun, RunnerError> {
        let path = self.snapshot_path(partition);
        let snapshot = tokio::task::spawn_blocking({
            let path = path.clone();
            move || read_snapshot(&path)
        })
        .await
        .expect("reading a snapshot does not panic")?;
        let input = &self.config.input;
        let range = self.bus.offsets(input, partition).await?;
        let mut output_partitions = [0u32; 4];
        for output in Output::ALL {
            if self.config.pipeline.runs(output) {
                output_partitions[output.index()] =
                    self.bus.partitions(self.config.topic(output)).await?;
            }
        }
        let (pipeline, position, output_ends) = match snapshot {
            Some(snapshot) => {
                if snapshot.input != *input || snapshot.partition != partition {
                    return Err(RunnerError::Snapshot {
                        path,
                        reason: format!(
                            "it is of {}/{}, not {input}/{partition}",
                            snapshot.input, snapshot.partition
                        ),
                    });
                }
                (
                    Pipeline::restore(&self.config.pipeline, snapshot.pipeline),
                    snapshot.position,
                    snapshot.outputs,
                )
            }
            None => {
                let committed = self
                    .bus
                    .committed(&self.config.group, input, partition)
                    .await?;
                let borrowed = match &self.config.first_start_from_group {
                    Some(group) => self.bus.committed(group, input, partition).await?,
                    None => None,
                };
                let position = committed.or(borrowed).unwrap_or(range.start);
                let mut run = PartitionRun {
                    pipeline: Some(Pipeline::new(&self.config.pipeline)),
                    position,
                    journal: VecDeque::new(),
                    held: [None; 4],
                    replay_through: position,
                    output_partitions,
                };
                // A snapshot at once, so that a crash before the next one knows where the
                // outputs stood before anything was written.
                self.snapshot(partition, &mut run).await?;
                return Ok(run);
            }
        };
        let mut position = position;
        if position < range.start {
            tracing::warn!(
                input,
                partition,
                lost = range.start - position,
                "records the processors had not read were reclaimed from the log; going on from its start"
            );
            position = range.start;
        }
        let mut run = PartitionRun {
            pipeline: Some(pipeline),
            position,
            journal: VecDeque::new(),
            held: [None; 4],
            replay_through: position,
            output_partitions,
        };
        let source = self.source(partition);
        for output in Output::ALL {
            if output_partitions[output.index()] == 0 {
                continue;
            }
            let topic = self.config.topic(output);
            let target = partition % output_partitions[output.index()];
            let from = output_ends
                .iter()
                .find(|(name, part, _)| name == topic && *part == target)
                .map(|(_, _, end)| *end);
            let Some(mut offset) = from else {
                continue;
            };
            loop {
                let batches = self
                    .bus
                    .read(topic, target, Start::Offset(offset), self.config.read_bytes)
                    .await?;
                let Some(next) = batches.next_offset() else {
                    break;
                };
                for view in batches.iter() {
                    let records = view
                        .records()
                        .map_err(|error| BusError::Corruption(error.to_string()))?;
                    let Some(first) = records.iter().next() else {
                        continue;
                    };
                    let first = first.map_err(|error| BusError::Corruption(error.to_string()))?;
                    let header = |name: &str| {
                        first
                            .header(name)
                            .and_then(|value| std::str::from_utf8(value).ok())
                    };
                    if first.offset < offset
                        || header("src") != Some(source.as_str())
                        || header("proc") != Some(self.config.group.as_str())
                    {
                        continue;
                    }
                    let Some(through) = header("through").and_then(ItemId::from_header) else {
                        continue;
                    };
                    let held = &mut run.held[output.index()];
                    *held = Some(held.map_or(through, |held| held.max(through)));
                    run.replay_through = run.replay_through.max(through.position);
                    if let Some((at, now_ns)) = header("tick").and_then(|tick| {
                        let (at, now) = tick.split_once(':')?;
                        Some((at.parse().ok()?, now.parse().ok()?))
                    }) {
                        run.journal.push_back(Tick { at, now_ns });
                    }
                }
                offset = next;
            }
        }
        run.journal.make_contiguous().sort_by_key(|tick| tick.at);
        if run.replay_through > run.position {
            tracing::info!(
                input,
                partition,
                from = run.position,
                through = run.replay_through,
                "processors reading again what they had processed before stopping"
            );
        }
        Ok(run)
    }

    /// Writes the partition's state with its position and where its outputs end now, then
    /// commits the position for the group.
    async fn snapshot(&self, partition: u32, run: &mut PartitionRun) -> Result<(), RunnerError> {
        let mut outputs = Vec::new();
        for output in Output::ALL {
            let partitions = run.output_partitions[output.index()];
            if partitions == 0 {
                continue;
            }
            let topic = self.config.topic(output);
            let target = partition % partitions;
            let end = self.bus.offsets(topic, target).await?.end;
            outputs.push((topic.to_owned(), target, end));
        }
        let pipeline = run.pipeline.take().expect("the pipeline is home");
        let header = SnapshotHeader {
            version: SNAPSHOT_VERSION,
            input: self.config.input.clone(),
            partition,
            position: run.position,
            outputs,
        };
        let path = self.snapshot_path(partition);
        let (pipeline, result) = tokio::task::spawn_blocking(move || {
            let result = write_snapshot(&path, &header, &pipeline);
            (pipeline, result)
        })
        .await
        .expect("writing a snapshot does not panic");
        run.pipeline = Some(pipeline);
        result?;
        self.bus
            .commit(
                &self.config.group,
                &[(&self.config.input, partition, run.position)],
            )
            .await?;
        self.shared
            .update(partition, |status| status.snapshots += 1);
        Ok(())
    }
}

/// One partition's run: its pipeline (away on the blocking pool while it works), where it
/// stands, and what the recovery found.
struct PartitionRun {
    pipeline: Option<Pipeline>,
    position: i64,
    /// Ticks to take again, by position.
    journal: VecDeque<Tick>,
    /// By output: the id of the last item it holds.
    held: [Option<ItemId>; 4],
    /// The input position up to which outputs already hold items: no new tick before it.
    replay_through: i64,
    /// By output: its partition count (0: not written).
    output_partitions: [u32; 4],
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"NBPS";
const SNAPSHOT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    version: u32,
    input: String,
    partition: u32,
    position: i64,
    /// (topic, partition, end offset) of each output when the snapshot was taken.
    outputs: Vec<(String, u32, i64)>,
}

struct Snapshot {
    input: String,
    partition: u32,
    position: i64,
    outputs: Vec<(String, u32, i64)>,
    pipeline: PipelineState,
}

/// `NBPS`, CRC-32C of the rest (LE), then the header and the pipeline state, postcard encoded.
/// Written to a temporary file, synced, renamed over the old one, and the directory synced.
fn write_snapshot(
    path: &Path,
    header: &SnapshotHeader,
    pipeline: &Pipeline,
) -> Result<(), RunnerError> {
    let error = |reason: String| RunnerError::Snapshot {
        path: path.to_owned(),
        reason,
    };
    let mut body = postcard::to_stdvec(header).map_err(|e| error(e.to_string()))?;
    pipeline
        .write_state(&mut body)
        .map_err(|e| error(e.to_string()))?;
    let temporary = path.with_extension("snapshot.tmp");
    let mut file = std::fs::File::create(&temporary).map_err(|e| error(e.to_string()))?;
    file.write_all(SNAPSHOT_MAGIC)
        .and_then(|()| file.write_all(&crc32c::crc32c(&body).to_le_bytes()))
        .and_then(|()| file.write_all(&body))
        .and_then(|()| file.sync_all())
        .map_err(|e| error(e.to_string()))?;
    std::fs::rename(&temporary, path).map_err(|e| error(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| error(e.to_string()))?;
    }
    Ok(())
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, RunnerError> {
    let error = |reason: String| RunnerError::Snapshot {
        path: path.to_owned(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
    };
    if bytes.len() < 8 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(error("not a processor snapshot".into()));
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("four bytes"));
    let body = &bytes[8..];
    if crc32c::crc32c(body) != crc {
        return Err(error("its checksum does not match: it is damaged".into()));
    }
    let (header, rest): (SnapshotHeader, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| error(e.to_string()))?;
    if header.version != SNAPSHOT_VERSION {
        let written_by = if header.version > SNAPSHOT_VERSION {
            "a newer nublar"
        } else {
            "an older nublar"
        };
        return Err(error(format!(
            "it is of version {}, written by {written_by}; this one reads version \
             {SNAPSHOT_VERSION}",
            header.version
        )));
    }
    let pipeline = PipelineState::read(rest).map_err(|e| error(e.to_string()))?;
    Ok(Some(Snapshot {
        input: header.input,
        partition: header.partition,
        position: header.position,
        outputs: header.outputs,
        pipeline,
    }))
}

/// A late event as a dead letter, in the gateway's shape, with reason `late_event`.
pub fn late_json(late: &LateEvent) -> Vec<u8> {
    serde_json::json!({
        "db": late.db,
        "line_number": 0,
        "reason": "late_event",
        "message": format!(
            "the window starting at {} ns had closed: the latest event time was {} ns",
            late.window_start_ns, late.watermark_ns
        ),
        "raw": late.line,
        "sender": late.sender.as_deref().unwrap_or_default(),
        "received_ns": late.received_ns,
    })
    .to_string()
    .into_bytes()
}

/// Where a replay starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// (partition, offset); `None` for every partition. Partitions not named are not read.
    Offsets(Vec<(Option<u32>, i64)>),
    /// The first record appended at or after this time, in milliseconds since the epoch, in
    /// every partition.
    Time(i64),
}

/// What a replay read and emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayTotals {
    pub events: u64,
    pub items: u64,
    /// Whether it stopped at `items_max` before the end.
    pub truncated: bool,
}

/// Recomputes the outputs of `pipeline` from a point of `input` up to where each partition
/// ends now, with state starting empty, and gives each item to `emit` as (partition, output,
/// JSON as its topic holds it; deduplicated events as `{"db","line"}`). Nothing is written to
/// the bus. Absence reads the log's append time of the newest record read as its clock (the
/// live runner reads the node's clock when it has read everything), so a replay of absence
/// raises an alert at the first record read after the silence, where the live one raised it
/// when the clock said so.
pub async fn replay(
    bus: &Arc<dyn Bus>,
    input: &str,
    pipeline: &PipelineConfig,
    from: &ReplayFrom,
    items_max: u64,
    mut emit: impl FnMut(u32, Output, Vec<u8>),
) -> Result<ReplayTotals, RunnerError> {
    let partitions = bus.partitions(input).await?;
    let mut totals = ReplayTotals::default();
    for partition in 0..partitions {
        let start = match from {
            ReplayFrom::Time(ms) => Start::Time(*ms),
            ReplayFrom::Offsets(offsets) => {
                let named = offsets
                    .iter()
                    .find(|(named, _)| *named == Some(partition))
                    .or_else(|| offsets.iter().find(|(named, _)| named.is_none()));
                match named {
                    Some((_, offset)) => Start::Offset(*offset),
                    None => continue,
                }
            }
        };
        let range = bus.offsets(input, partition).await?;
        let mut position = match start {
            Start::Offset(offset) if offset < range.start || offset > range.end => {
                return Err(BusError::OffsetOutOfRange {
                    requested: offset,
                    start: range.start,
                    end: range.end,
                }
                .into());
            }
            Start::Offset(offset) => offset,
            Start::Time(_) => {
                let first = bus.read(input, partition, start, 1).await?;
                match first.iter().next() {
                    Some(view) => view.base_offset().max(range.start),
                    None => range.end,
                }
            }
        };
        let mut pipeline = Pipeline::new(pipeline);
        let mut emitted = Emitted::default();
        let mut no_ticks = VecDeque::new();
        while position < range.end && !totals.truncated {
            let batches = bus
                .read(input, partition, Start::Offset(position), 4 << 20)
                .await?;
            let Some(next) = batches.next_offset() else {
                break;
            };
            for view in batches.iter() {
                if view.base_offset() >= range.end {
                    break;
                }
                pipeline.process_batch(&view, position, &mut no_ticks, &mut emitted)?;
            }
            position = next;
            if let Some(now_ns) = pipeline.received_ns() {
                pipeline.tick(
                    Tick {
                        at: position,
                        now_ns,
                    },
                    &mut emitted,
                );
            }
            let mut items: Vec<(Output, Vec<u8>)> = Vec::new();
            for kept in emitted.kept.drain(..) {
                for (_, _, value) in kept.records() {
                    let line = nublar_model::stored::display(value).unwrap_or_default();
                    let db = kept.db.as_deref().unwrap_or_default();
                    items.push((
                        Output::Deduplicated,
                        serde_json::json!({ "db": db, "line": line })
                            .to_string()
                            .into_bytes(),
                    ));
                }
            }
            items.extend(
                emitted
                    .aggregates
                    .drain(..)
                    .map(|(_, a)| (Output::Aggregates, aggregate_json(&a))),
            );
            items.extend(
                emitted
                    .alerts
                    .drain(..)
                    .map(|(_, a)| (Output::Alerts, alert_json(&a))),
            );
            items.extend(
                emitted
                    .late
                    .drain(..)
                    .map(|(_, l)| (Output::Late, late_json(&l))),
            );
            for (output, item) in items {
                if totals.items >= items_max {
                    totals.truncated = true;
                    break;
                }
                totals.items += 1;
                emit(partition, output, item);
            }
        }
        totals.events += pipeline.counters().events;
    }
    Ok(totals)
}

/// An aggregate as the `_agg_1m` topic holds it.
pub fn aggregate_json(aggregate: &Aggregate) -> Vec<u8> {
    serde_json::json!({
        "db": aggregate.key.db,
        "window_start_ns": aggregate.window_start_ns,
        "measurement": aggregate.key.measurement,
        "series": aggregate.key.series,
        "field": aggregate.key.field,
        "count": aggregate.count,
        "min": aggregate.min,
        "max": aggregate.max,
        "mean": aggregate.mean(),
        "last": aggregate.last,
    })
    .to_string()
    .into_bytes()
}

/// An alert as the `_alerts` topic holds it: `value` for a threshold or a rate, `lat` and
/// `lon` for a geofence.
pub fn alert_json(alert: &Alert) -> Vec<u8> {
    let mut object = serde_json::json!({
        "db": alert.db,
        "time_ns": alert.time_ns,
        "rule": alert.rule,
        "measurement": alert.measurement,
        "series": alert.series,
        "state": match alert.state {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        },
        "message": alert.message,
    });
    match alert.values.as_slice() {
        [value] => object["value"] = (*value).into(),
        [lat, lon] => {
            object["lat"] = (*lat).into();
            object["lon"] = (*lon).into();
        }
        _ => {}
    }
    object.to_string().into_bytes()
}
