//! `nublar bench processors`: events per second through the processors on one core.
//!
//! The simulator's park makes the events (with its share of duplicates and out-of-order
//! timestamps, some of them later than the windows wait, and the staged breach and silence
//! so that alerts fire); they are stored as the gateway stores them, one batch per request,
//! before the clock starts. Then one thread runs the pipeline over every batch, as a
//! partition's task does: each record decoded once, then duplicates, windows (late events to
//! the dead letters), alerts (the node's default rules, the geofence on the park's paddocks)
//! and latest state, every output item encoded as the runner writes it. The same input is
//! then run through each processor alone, to show where the time goes.

use std::collections::VecDeque;
use std::time::Instant;

use clap::Args;
use nublar_bus::{BatchBuilder, Compression, ReadBatches};
use nublar_log::{Durability, Log, OpenOptions, TopicConfig};
use nublar_process::alerts::{Rule, RuleKind};
use nublar_process::dedup::DedupConfig;
use nublar_process::pipeline::{AlertsConfig, Emitted, Pipeline, PipelineConfig, Tick};
use nublar_process::runner::{aggregate_json, alert_json};
use nublar_process::windows::WindowConfig;
use nublar_sim::{Generator, GeneratorConfig, Park, ParkConfig, SimLine};

#[derive(Args)]
pub struct ProcessorsBenchArgs {
    /// Events to run through the processors.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Sensors in the park (each is a series).
    #[arg(long, default_value_t = 10_000)]
    sensors: usize,
    /// Events per batch, as one request of that many lines is stored.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Share of events sent twice.
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    /// Share of events whose timestamp moves back (up to a minute: some of them past the
    /// windows' 30 s of lateness, into the dead letters).
    #[arg(long, default_value_t = 0.01)]
    out_of_order: f64,
    /// Where the log the events are stored in lives while the program runs.
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
}

/// Events per second of the simulated clock: the windows see this much event time pass.
const SIMULATED_RATE: u64 = 100_000;

pub fn run(args: ProcessorsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > 0 && args.batch > 0 && args.sensors > 0,
        "--events, --batch and --sensors must be positive"
    );
    let park = Park::generate(&ParkConfig::default().with_sensors(args.sensors))?;
    let start_ns = 1_767_225_600_000_000_000;
    let seconds = args.events as f64 / SIMULATED_RATE as f64;
    let mut generator = Generator::new(
        park.clone(),
        GeneratorConfig {
            start_ns,
            events_per_second: SIMULATED_RATE,
            stage_breach_at_ns: Some(start_ns + (seconds * 0.2 * 1e9) as i64),
            stage_silence_at_ns: Some(start_ns + (seconds * 0.2 * 1e9) as i64),
            duplicate_share: args.duplicates,
            out_of_order_share: args.out_of_order,
            out_of_order_max_ns: 60_000_000_000,
            ..GeneratorConfig::default()
        },
    )?;
    println!(
        "machine: {} cores; {} events of {} sensors ({:.1} s of simulated time), batches of {}, \
         {:.1}% duplicates, {:.1}% out of order; one thread",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.events,
        park.sensor_count(),
        seconds,
        args.batch,
        args.duplicates * 100.0,
        args.out_of_order * 100.0,
    );
    let prepared = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-processors-")
        .tempdir_in(&args.dir)?;
    let log = Log::open_with(
        root.path().join("log"),
        OpenOptions {
            background: false,
            ..OpenOptions::default()
        },
    )?;
    let batches = stored_batches(&log, &mut generator, args.events, args.batch)?;
    println!(
        "{} batches stored in the log and read back in {:.1} s (not timed)",
        batches
            .iter()
            .map(|read| read.iter().count())
            .sum::<usize>(),
        prepared.elapsed().as_secs_f64()
    );
    let paddocks = park
        .paddocks()
        .iter()
        .map(|paddock| (paddock.name.clone(), paddock.fence.clone()))
        .collect();
    let rules = vec![
        Rule {
            name: "fence_voltage_low".into(),
            measurement: "fence".into(),
            kind: RuleKind::Threshold {
                field: "voltage_kv".into(),
                above: None,
                below: Some(5.0),
                for_ns: 0,
            },
        },
        Rule {
            name: "collar_outside_paddock".into(),
            measurement: "collar".into(),
            kind: RuleKind::Geofence {
                paddock_tag: "paddock".into(),
                paddocks,
            },
        },
        Rule {
            name: "weather_station_silent".into(),
            measurement: "weather".into(),
            kind: RuleKind::Absence {
                for_ns: 30_000_000_000,
            },
        },
    ];
    let alerts = AlertsConfig {
        rules,
        series_max: 1_000_000,
    };
    let all = PipelineConfig {
        dedup: Some(DedupConfig::default()),
        windows: Some(WindowConfig::default()),
        alerts: Some(alerts.clone()),
        latest_series_max: Some(1_000_000),
    };
    let runs = [
        (
            "all: duplicates, windows, dead letters, alerts, latest",
            all.clone(),
        ),
        (
            "all but duplicates (as the node runs by default)",
            PipelineConfig {
                dedup: None,
                ..all.clone()
            },
        ),
        (
            "duplicates alone",
            PipelineConfig {
                dedup: Some(DedupConfig::default()),
                ..PipelineConfig::default()
            },
        ),
        (
            "windows alone",
            PipelineConfig {
                windows: Some(WindowConfig::default()),
                ..PipelineConfig::default()
            },
        ),
        (
            "alerts alone",
            PipelineConfig {
                alerts: Some(alerts),
                ..PipelineConfig::default()
            },
        ),
        (
            "latest alone",
            PipelineConfig {
                latest_series_max: Some(1_000_000),
                ..PipelineConfig::default()
            },
        ),
        ("decoding alone", PipelineConfig::default()),
    ];
    for (name, config) in runs {
        let result = run_once(&config, &batches)?;
        println!(
            "{name:<56} {:>6.2} M events/s  ({:.2} s; {} duplicates, {} late, {} aggregates, {} alerts)",
            args.events as f64 / result.seconds / 1e6,
            result.seconds,
            result.duplicates,
            result.late,
            result.aggregates,
            result.alerts,
        );
    }
    Ok(())
}

struct RunResult {
    seconds: f64,
    duplicates: u64,
    late: u64,
    aggregates: u64,
    alerts: u64,
}

/// Runs one pipeline over every read, as a partition's task does, taking the clock for absence
/// after each read (the log's append time of the newest record read).
fn run_once(config: &PipelineConfig, reads: &[ReadBatches]) -> anyhow::Result<RunResult> {
    let mut pipeline = Pipeline::new(config);
    let mut emitted = Emitted::default();
    let mut encoded_bytes = 0usize;
    let started = Instant::now();
    for read in reads {
        let mut position = 0;
        let mut now_ns = 0;
        for view in read.iter() {
            pipeline.process_batch(&view, 0, &mut VecDeque::new(), &mut emitted)?;
            position = view.next_offset();
            now_ns = view.max_timestamp().saturating_mul(1_000_000);
        }
        pipeline.tick(
            Tick {
                at: position,
                now_ns,
            },
            &mut emitted,
        );
        // What the runner does with the outputs before appending them.
        for (_, aggregate) in &emitted.aggregates {
            encoded_bytes += aggregate_json(aggregate).len();
        }
        for (_, alert) in &emitted.alerts {
            encoded_bytes += alert_json(alert).len();
        }
        encoded_bytes += emitted.late.len();
        emitted.clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(encoded_bytes);
    let counters = pipeline.counters();
    Ok(RunResult {
        seconds,
        duplicates: counters.duplicates,
        late: counters.late,
        aggregates: counters.aggregates,
        alerts: counters.alerts,
    })
}

/// The events as the gateway stores them (one LZ4 batch per `batch` events, the database and
/// sender on the first record) appended to a log, then read back as a partition's task reads
/// them, 4 MB at a time.
fn stored_batches(
    log: &Log,
    generator: &mut Generator,
    events: u64,
    batch: usize,
) -> anyhow::Result<Vec<ReadBatches>> {
    log.create_topic(
        "telemetry",
        TopicConfig {
            durability: Durability::None,
            ..TopicConfig::with_partitions(1)
        },
    )?;
    let mut builder = BatchBuilder::new(Compression::Lz4);
    let mut value = Vec::new();
    let mut made = 0u64;
    while made < events {
        let Some(event) = generator.next_event() else {
            break;
        };
        let SimLine::Valid(line) = &event.line else {
            continue;
        };
        made += 1;
        value.clear();
        nublar_model::stored::encode(line, &mut value);
        let sender = event.sender.to_string();
        let headers: [(&str, &[u8]); 2] = [("db", b"park"), ("sender", sender.as_bytes())];
        let first = builder.is_empty();
        builder.push(None, &value, if first { &headers } else { &[] });
        if builder.len() >= batch || made == events {
            let full = std::mem::replace(&mut builder, BatchBuilder::new(Compression::Lz4));
            log.append("telemetry", 0, full.finish()?)?;
        }
    }
    let mut reads = Vec::new();
    let mut offset = 0;
    loop {
        let read = log.read("telemetry", 0, offset, 4 << 20)?;
        let Some(next) = read.next_offset() else {
            break;
        };
        offset = next;
        reads.push(read);
    }
    Ok(reads)
}
