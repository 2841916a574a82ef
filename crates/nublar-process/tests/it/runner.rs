//! The processors on a real log: their outputs are what the pipeline computes from the input,
//! and a runner stopped dead at any moment and started again writes no item twice and loses
//! none.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use nublar_bus::MemoryBus;
use nublar_bus::{BatchBuilder, Bus, Compression, Start, TopicConfig};
use nublar_model::{Field, FieldValue, ParsedLine, Tag, stored};
use nublar_process::alerts::{Rule, RuleKind};
use nublar_process::dedup::DedupConfig;
use nublar_process::pipeline::{AlertsConfig, Emitted, Output, Pipeline, PipelineConfig};
use nublar_process::runner::{
    AGGREGATES_TOPIC, ALERTS_TOPIC, DEAD_LETTERS_TOPIC, DEDUPLICATED_TOPIC, ReplayFrom, Runner,
    RunnerConfig, RunnerShared, aggregate_json, alert_json, replay,
};
use nublar_process::windows::WindowConfig;
use tokio::sync::watch;

const SECOND: i64 = 1_000_000_000;
const PARTITIONS: u32 = 2;

struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        dedup: Some(DedupConfig {
            window_ns: 60 * SECOND,
            keys_max: 100_000,
        }),
        windows: Some(WindowConfig {
            width_ns: 10 * SECOND,
            allowed_lateness_ns: 5 * SECOND,
            open_aggregates_max: 100_000,
        }),
        alerts: Some(AlertsConfig {
            rules: vec![
                Rule {
                    name: "fence-down".into(),
                    measurement: "fence".into(),
                    kind: RuleKind::Threshold {
                        field: "voltage_kv".into(),
                        above: None,
                        below: Some(2.0),
                        for_ns: 0,
                    },
                },
                Rule {
                    name: "fence-silent".into(),
                    measurement: "fence".into(),
                    kind: RuleKind::Absence {
                        for_ns: 300_000_000,
                    },
                },
            ],
            series_max: 1000,
        }),
        latest_series_max: Some(1000),
    }
}

/// Batches of fence readings: five segments per partition, one-second steps, now and then a
/// reading out of order, a reading far too late, a repeated batch, a low voltage.
fn input_batches(rng: &mut Rng, partition: u32, first_second: i64, count: usize) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    let mut second = first_second;
    for _ in 0..count {
        let mut builder = BatchBuilder::new(Compression::Lz4);
        for record in 0..(1 + rng.below(6)) {
            second += 1;
            let mut time = second;
            match rng.below(20) {
                0 => time -= 3 + rng.below(5) as i64,
                1 => time -= 40,
                _ => {}
            }
            let voltage = if rng.below(8) == 0 {
                0.5
            } else {
                8.0 + rng.below(10) as f64 / 10.0
            };
            let segment = format!("p{partition}-s{}", rng.below(5));
            let line = ParsedLine {
                measurement: "fence".into(),
                tags: vec![Tag {
                    key: "segment".into(),
                    value: segment.into(),
                }],
                fields: vec![Field {
                    key: "voltage_kv".into(),
                    value: FieldValue::F64(voltage),
                }],
                timestamp_ns: Some(time * SECOND),
            };
            let mut value = Vec::new();
            stored::encode(&line, &mut value);
            let headers: &[(&str, &[u8])] = if record == 0 {
                &[("db", b"park"), ("sender", b"2001:db8::7")]
            } else {
                &[]
            };
            builder.push(None, &value, headers);
        }
        let bytes = builder.finish().unwrap().into_bytes();
        if rng.below(10) == 0 {
            batches.push(bytes.clone());
        }
        batches.push(bytes);
    }
    batches
}

async fn append_all(bus: &Arc<dyn Bus>, partition: u32, batches: &[Vec<u8>]) {
    for bytes in batches {
        let batch = nublar_bus::Batch::from_bytes(bytes.clone()).unwrap();
        bus.append("telemetry", partition, batch).await.unwrap();
    }
}

/// Every record value of `topic`, by the `src` header of its batch.
async fn outputs(bus: &Arc<dyn Bus>, topic: &str) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut found: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for partition in 0..bus.partitions(topic).await.unwrap() {
        let mut offset = 0;
        loop {
            let batches = bus
                .read(topic, partition, Start::Offset(offset), 1 << 20)
                .await
                .unwrap();
            let Some(next) = batches.next_offset() else {
                break;
            };
            for view in batches.iter() {
                let records = view.records().unwrap();
                let mut source = None;
                for record in records.iter() {
                    let record = record.unwrap();
                    if source.is_none() {
                        source = Some(
                            record
                                .header("src")
                                .map(|src| String::from_utf8(src.to_vec()).unwrap())
                                .unwrap_or_default(),
                        );
                    }
                    found
                        .entry(source.clone().unwrap())
                        .or_default()
                        .push(record.value.to_vec());
                }
            }
            offset = next;
        }
    }
    found
}

/// What the pipeline computes from each partition's input, read back from the log, with no
/// clock ticks: (deduplicated values, aggregates, alerts of rule `fence-down`, late raw lines).
async fn expected(bus: &Arc<dyn Bus>) -> BTreeMap<String, [Vec<Vec<u8>>; 4]> {
    let mut expected = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let mut pipeline = Pipeline::new(&pipeline_config());
        let mut emitted = Emitted::default();
        let mut offset = 0;
        loop {
            let batches = bus
                .read("telemetry", partition, Start::Offset(offset), 1 << 20)
                .await
                .unwrap();
            let Some(next) = batches.next_offset() else {
                break;
            };
            for view in batches.iter() {
                pipeline
                    .process_batch(&view, offset, &mut VecDeque::new(), &mut emitted)
                    .unwrap();
            }
            offset = next;
        }
        let kept = emitted
            .kept
            .iter()
            .flat_map(|batch| batch.records().map(|(_, _, value)| value.to_vec()))
            .collect();
        let aggregates = emitted
            .aggregates
            .iter()
            .map(|(_, aggregate)| aggregate_json(aggregate))
            .collect();
        let alerts = emitted
            .alerts
            .iter()
            .filter(|(_, alert)| alert.rule == "fence-down")
            .map(|(_, alert)| alert_json(alert))
            .collect();
        let late = emitted
            .late
            .iter()
            .map(|(_, late)| late.line.clone().into_bytes())
            .collect();
        expected.insert(
            format!("telemetry/{partition}"),
            [kept, aggregates, alerts, late],
        );
    }
    expected
}

/// Asserts two streams of records are equal, naming the first difference briefly.
fn same(got: Option<&Vec<Vec<u8>>>, want: &[Vec<u8>], what: &str) {
    let got = got.map(Vec::as_slice).unwrap_or_default();
    let text = |value: &Vec<u8>| String::from_utf8_lossy(value).into_owned();
    if let Some(index) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} records, {} expected; first difference at {index}: {:?} instead of {:?}",
            got.len(),
            want.len(),
            got.get(index).map(text),
            want.get(index).map(text),
        );
    }
}

fn json(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value).unwrap()
}

struct Node {
    _dir: tempfile::TempDir,
    bus: Arc<dyn Bus>,
    config: RunnerConfig,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let bus = MemoryBus::new().into_shared();
    bus.ensure_topic("telemetry", TopicConfig::with_partitions(PARTITIONS))
        .await
        .unwrap();
    bus.ensure_topic(DEAD_LETTERS_TOPIC, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    let mut config = RunnerConfig::new(dir.path().join("processors"), pipeline_config());
    config.snapshot_interval = Duration::from_millis(250);
    config.tick_interval = Duration::from_millis(20);
    config.read_bytes = 2048;
    config.retry_after = Duration::from_millis(50);
    Node {
        _dir: dir,
        bus,
        config,
    }
}

/// Waits until every partition's position reaches the end of its input.
async fn caught_up(runner: &Arc<RunnerShared>, bus: &Arc<dyn Bus>) {
    for _ in 0..500 {
        let positions = runner.positions();
        let mut done = positions.len() == PARTITIONS as usize;
        for partition in 0..PARTITIONS {
            let end = bus.offsets("telemetry", partition).await.unwrap().end;
            done &= positions.get(partition as usize) == Some(&end);
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the processors did not catch up in 10 s");
}

/// Checks every output against the pipeline's own computation, and that each series' absence
/// alerts alternate and start firing.
async fn check_outputs(bus: &Arc<dyn Bus>) {
    let expected = expected(bus).await;
    let deduplicated = outputs(bus, DEDUPLICATED_TOPIC).await;
    let aggregates = outputs(bus, AGGREGATES_TOPIC).await;
    let alerts = outputs(bus, ALERTS_TOPIC).await;
    let late = outputs(bus, DEAD_LETTERS_TOPIC).await;
    for (source, [kept, want_aggregates, want_alerts, want_late]) in &expected {
        assert!(!want_aggregates.is_empty() && !want_alerts.is_empty() && !want_late.is_empty());
        same(
            deduplicated.get(source),
            kept,
            &format!("deduplicated stream of {source}"),
        );
        same(
            aggregates.get(source),
            want_aggregates,
            &format!("aggregates of {source}"),
        );
        let threshold: Vec<Vec<u8>> = alerts[source]
            .iter()
            .filter(|alert| json(alert)["rule"] == "fence-down")
            .cloned()
            .collect();
        same(
            Some(&threshold),
            want_alerts,
            &format!("threshold alerts of {source}"),
        );
        let lines: Vec<Vec<u8>> = late[source]
            .iter()
            .map(|letter| {
                let letter = json(letter);
                assert_eq!(letter["reason"], "late_event");
                letter["raw"].as_str().unwrap().as_bytes().to_vec()
            })
            .collect();
        same(Some(&lines), want_late, &format!("late events of {source}"));
        let mut absence: HashMap<String, Vec<String>> = HashMap::new();
        for alert in &alerts[source] {
            let alert = json(alert);
            if alert["rule"] == "fence-silent" {
                absence
                    .entry(alert["series"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(alert["state"].as_str().unwrap().to_owned());
            }
        }
        assert!(!absence.is_empty(), "no series of {source} fell silent");
        for (series, states) in absence {
            for (index, state) in states.iter().enumerate() {
                let want = if index % 2 == 0 { "firing" } else { "resolved" };
                assert_eq!(state, want, "absence alerts of {series}: {states:?}");
            }
        }
    }
}

/// Runs a runner until it has read all input and every series has been silent past its
/// absence rule, then stops it.
async fn run_until_silent(node: &Node) -> Arc<RunnerShared> {
    let runner = Runner::new(node.bus.clone(), node.config.clone());
    let shared = runner.shared();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    caught_up(&shared, &node.bus).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    shared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_what_the_pipeline_computes_from_the_input() {
    let node = node().await;
    let mut rng = Rng(0x5eed);
    for partition in 0..PARTITIONS {
        append_all(
            &node.bus,
            partition,
            &input_batches(&mut rng, partition, 1_000, 150),
        )
        .await;
    }
    let shared = run_until_silent(&node).await;
    let totals = shared.totals();
    assert!(totals.counters.duplicates > 0 && totals.counters.late > 0);
    let fences = shared.latest("park", Some("fence"), &[]);
    assert_eq!(fences.len(), 10, "five segments in each partition");
    check_outputs(&node.bus).await;

    // A replay from the start gives what the live run wrote, item for item (absence aside:
    // its clock differs), and writes nothing.
    let ends = |bus: Arc<dyn Bus>| async move {
        let mut ends = Vec::new();
        for topic in [
            AGGREGATES_TOPIC,
            ALERTS_TOPIC,
            DEAD_LETTERS_TOPIC,
            DEDUPLICATED_TOPIC,
        ] {
            for partition in 0..bus.partitions(topic).await.unwrap() {
                ends.push(bus.offsets(topic, partition).await.unwrap().end);
            }
        }
        ends
    };
    let before = ends(node.bus.clone()).await;
    let mut replayed: BTreeMap<(u32, Output), Vec<Vec<u8>>> = BTreeMap::new();
    let totals = replay(
        &node.bus,
        "telemetry",
        &pipeline_config(),
        &ReplayFrom::Offsets(vec![(None, 0)]),
        u64::MAX,
        |partition, output, item| replayed.entry((partition, output)).or_default().push(item),
    )
    .await
    .unwrap();
    assert!(!totals.truncated && totals.items > 0);
    assert_eq!(
        ends(node.bus.clone()).await,
        before,
        "a replay writes nothing"
    );
    let aggregates = outputs(&node.bus, AGGREGATES_TOPIC).await;
    let alerts = outputs(&node.bus, ALERTS_TOPIC).await;
    let late = outputs(&node.bus, DEAD_LETTERS_TOPIC).await;
    let threshold = |items: &[Vec<u8>]| -> Vec<Vec<u8>> {
        items
            .iter()
            .filter(|alert| json(alert)["rule"] == "fence-down")
            .cloned()
            .collect()
    };
    for partition in 0..PARTITIONS {
        let source = format!("telemetry/{partition}");
        let get = |output| {
            replayed
                .get(&(partition, output))
                .cloned()
                .unwrap_or_default()
        };
        same(
            aggregates.get(&source),
            &get(Output::Aggregates),
            "replayed aggregates",
        );
        same(
            late.get(&source),
            &get(Output::Late),
            "replayed late events",
        );
        same(
            Some(&threshold(&alerts[&source])),
            &threshold(&get(Output::Alerts)),
            "replayed threshold alerts",
        );
    }

    // One partition from an offset; and a bound on the items.
    let mut partitions = std::collections::BTreeSet::new();
    replay(
        &node.bus,
        "telemetry",
        &pipeline_config(),
        &ReplayFrom::Offsets(vec![(Some(1), 40)]),
        u64::MAX,
        |partition, _, _| {
            partitions.insert(partition);
        },
    )
    .await
    .unwrap();
    assert_eq!(partitions.into_iter().collect::<Vec<_>>(), [1]);
    let bounded = replay(
        &node.bus,
        "telemetry",
        &pipeline_config(),
        &ReplayFrom::Time(0),
        5,
        |_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!((bounded.items, bounded.truncated), (5, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_stopped_dead_and_started_again_writes_each_item_once() {
    let node = node().await;
    let mut rng = Rng(0xdead_beef);
    let mut second = 1_000;
    for round in 0..16 {
        for partition in 0..PARTITIONS {
            append_all(
                &node.bus,
                partition,
                &input_batches(&mut rng, partition, second, 25),
            )
            .await;
        }
        second += 200;
        // Reads of another size each time cut the input differently, so that the batches
        // written again do not fall on the batch keys of those written before.
        let mut config = node.config.clone();
        config.read_bytes = 512 + rng.below(8192) as usize;
        let runner = Runner::new(node.bus.clone(), config);
        let (_stop, stopped) = watch::channel(false);
        let task = tokio::spawn(runner.run(stopped));
        // Dead at a moment that differs from round to round: mid-read, mid-append, between
        // snapshots, or idle and ticking.
        tokio::time::sleep(Duration::from_millis(5 + rng.below(400) + 40 * (round % 3))).await;
        task.abort();
        let _ = task.await;
        // What the blocking pool was still doing finishes, as the writes of a dying process
        // reach the disk or do not.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run_until_silent(&node).await;
    check_outputs(&node.bus).await;
}
