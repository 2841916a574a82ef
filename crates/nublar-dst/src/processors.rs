//! The real processors (duplicates, windows, alerts, latest state) over the
//! log's telemetry, one pipeline per partition, snapshotted now and then and
//! restored after each crash the way the node's runner does: from the last
//! snapshot, reading again from its position and emitting only the items
//! past what the outputs hold. The outputs here are a durable map from item
//! id to item; an item emitted again must be the same item.

use std::collections::{BTreeMap, VecDeque};

use nublar_ingest::TELEMETRY_TOPIC;
use nublar_log::Log;
use nublar_process::alerts::{Rule, RuleKind};
use nublar_process::dedup::DedupConfig;
use nublar_process::pipeline::{
    AlertsConfig, Emitted, ItemId, Pipeline, PipelineConfig, PipelineState,
};
use nublar_process::windows::WindowConfig;

const READ_BYTES: usize = 8 * 1024;

pub fn config() -> PipelineConfig {
    PipelineConfig {
        dedup: Some(DedupConfig {
            window_ns: 60_000_000_000,
            keys_max: 10_000,
        }),
        windows: Some(WindowConfig {
            width_ns: 10_000_000_000,
            allowed_lateness_ns: 5_000_000_000,
            open_aggregates_max: 10_000,
        }),
        alerts: Some(AlertsConfig {
            rules: vec![Rule {
                name: "hot".into(),
                measurement: "weather".into(),
                kind: RuleKind::Threshold {
                    field: "temp_c".into(),
                    above: Some(30.0),
                    below: None,
                    for_ns: 0,
                },
            }],
            series_max: 1000,
        }),
        latest_series_max: Some(1000),
    }
}

/// Items by output name, partition and id, as text.
pub type Outputs = BTreeMap<(&'static str, u32, ItemId), String>;

/// What survives a crash: each partition's last snapshot and the outputs.
#[derive(Default)]
pub struct Durable {
    /// Partition → (snapshot bytes, the position it was taken at).
    pub snapshots: BTreeMap<u32, (Vec<u8>, i64)>,
    pub outputs: Outputs,
}

/// The running pipelines: lost at a crash.
pub struct Processors {
    pipelines: Vec<(Pipeline, i64)>,
}

impl Processors {
    pub fn start(durable: &Durable, partitions: u32) -> Result<Processors, String> {
        let config = config();
        let mut pipelines = Vec::new();
        for partition in 0..partitions {
            pipelines.push(match durable.snapshots.get(&partition) {
                Some((bytes, position)) => {
                    let state = PipelineState::read(bytes)
                        .map_err(|error| format!("snapshot of {partition}: {error}"))?;
                    (Pipeline::restore(&config, state), *position)
                }
                None => (Pipeline::new(&config), 0),
            });
        }
        Ok(Processors { pipelines })
    }

    /// Where the pipeline of `partition` reads next.
    pub fn next(&self, partition: u32) -> i64 {
        self.pipelines[partition as usize].1
    }

    /// Processes what one read of `partition` returns; emits into the outputs (checking
    /// that an item emitted again is the same), and snapshots when `snapshot`.
    pub fn step(
        &mut self,
        log: &Log,
        durable: &mut Durable,
        partition: u32,
        snapshot: bool,
        trace: &mut Vec<String>,
    ) -> Result<(), String> {
        let (pipeline, next) = &mut self.pipelines[partition as usize];
        let batches = log
            .read(TELEMETRY_TOPIC, partition, *next, READ_BYTES)
            .map_err(|error| format!("processors read {partition}@{next}: {error}"))?;
        let mut out = Emitted::default();
        let mut ticks = VecDeque::new();
        for view in batches.iter() {
            pipeline
                .process_batch(&view, *next, &mut ticks, &mut out)
                .map_err(|broken| format!("processors: unreadable at {}", broken.offset))?;
            *next = view.next_offset();
        }
        let emitted = emit(&mut durable.outputs, partition, &out)?;
        if emitted > 0 {
            trace.push(format!("processors {partition} emit {emitted} to {next}"));
        }
        if snapshot {
            let mut bytes = Vec::new();
            pipeline
                .write_state(&mut bytes)
                .map_err(|error| format!("snapshot: {error}"))?;
            durable.snapshots.insert(partition, (bytes, *next));
            trace.push(format!("processors {partition} snapshot at {next}"));
        }
        Ok(())
    }
}

/// Puts each item of `out` in `outputs`; an item already there must be the same.
fn emit(outputs: &mut Outputs, partition: u32, out: &Emitted) -> Result<usize, String> {
    let mut emitted = 0;
    let mut put = |name: &'static str, id: ItemId, item: String| -> Result<(), String> {
        match outputs.get(&(name, partition, id)) {
            Some(held) if *held != item => Err(format!(
                "INVARIANT: {name} item {id:?} of partition {partition} emitted again differs: \
                 {held} then {item}"
            )),
            Some(_) => Ok(()),
            None => {
                outputs.insert((name, partition, id), item);
                emitted += 1;
                Ok(())
            }
        }
    };
    for kept in &out.kept {
        for (id, key, value) in kept.records() {
            put(
                "deduplicated",
                id,
                format!("{:?} {key:?} {value:?}", kept.db),
            )?;
        }
    }
    for (id, aggregate) in &out.aggregates {
        put("aggregates", *id, format!("{aggregate:?}"))?;
    }
    for (id, alert) in &out.alerts {
        put("alerts", *id, format!("{alert:?}"))?;
    }
    for (id, late) in &out.late {
        put("late", *id, format!("{late:?}"))?;
    }
    Ok(emitted)
}

/// What the processors emit over the whole log from the start, in one run: what the
/// outputs must hold once every partition is processed to its end.
pub fn replay(log: &Log, partitions: u32) -> Result<Outputs, String> {
    let config = config();
    let mut outputs = Outputs::new();
    for partition in 0..partitions {
        let mut pipeline = Pipeline::new(&config);
        let mut next = log
            .start_offset(TELEMETRY_TOPIC, partition)
            .map_err(|error| error.to_string())?;
        loop {
            let batches = log
                .read(TELEMETRY_TOPIC, partition, next, READ_BYTES)
                .map_err(|error| error.to_string())?;
            let Some(end) = batches.next_offset() else {
                break;
            };
            let mut out = Emitted::default();
            for view in batches.iter() {
                pipeline
                    .process_batch(&view, next, &mut VecDeque::new(), &mut out)
                    .map_err(|broken| format!("replay: unreadable at {}", broken.offset))?;
            }
            emit(&mut outputs, partition, &out)?;
            next = end;
        }
    }
    Ok(outputs)
}
