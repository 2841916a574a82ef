//! What every bus promises, as checks an implementation's tests run.
//!
//! [`contract_tests!`](crate::contract_tests) expands to one test per check
//! against a bus the caller makes; each check takes a fresh bus. What only
//! some buses do (the embedded log's batch key deduplication, its retention
//! by segment) is tested beside that bus, not here.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Batch, BatchBuilder, Bus, BusError, Compression, ReadBatches, Start, TopicConfig};

/// One test per check, each on a bus from `$make` (an expression giving
/// `(Arc<dyn Bus>, guard)`, the guard kept alive for the test, such as the
/// temporary directory the bus lives in). The caller depends on tokio with
/// its `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! contract_tests {
    ($make:expr) => {
        $crate::contract_tests!(@each $make;
            topics_are_created_once_and_named_errors_follow,
            appended_batches_read_back_in_order_with_their_headers,
            reads_honour_their_start_and_byte_budget,
            a_read_by_time_starts_at_the_first_later_append,
            a_waiting_reader_wakes_on_append_and_times_out_otherwise,
            group_commits_are_all_or_nothing_and_kept_per_group,
            concurrent_appends_get_distinct_contiguous_offsets,
            a_healthy_bus_reports_no_problems,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (bus, _guard) = $make;
                $crate::contract::$check(bus).await;
            }
        )*
    };
}

fn batch(values: &[&str]) -> Batch {
    let mut builder = BatchBuilder::new(Compression::Lz4);
    for value in values {
        builder.push(None, value.as_bytes(), &[("sender", b"2001:db8::7")]);
    }
    builder.finish().expect("a small batch builds")
}

/// The values of the records at or after `from`, in order.
fn values(batches: &ReadBatches, from: i64) -> Vec<String> {
    let mut out = Vec::new();
    for view in batches.iter() {
        for record in view.records().expect("records decode").iter() {
            let record = record.expect("a record decodes");
            if record.offset >= from {
                out.push(String::from_utf8(record.value.to_vec()).expect("utf-8"));
            }
        }
    }
    out
}

/// Everything in a partition from `from` to its end, read in small steps.
async fn read_all(bus: &dyn Bus, topic: &str, partition: u32, from: i64) -> Vec<String> {
    let end = bus.offsets(topic, partition).await.unwrap().end;
    let (mut next, mut out) = (from, Vec::new());
    while next < end {
        let read = bus
            .read(topic, partition, Start::Offset(next), 256)
            .await
            .unwrap();
        out.extend(values(&read, next));
        next = read
            .next_offset()
            .expect("a read before the end is not empty");
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn topics_are_created_once_and_named_errors_follow(bus: Arc<dyn Bus>) {
    bus.ensure_topic("telemetry", TopicConfig::with_partitions(4))
        .await
        .unwrap();
    bus.ensure_topic("telemetry", TopicConfig::with_partitions(4))
        .await
        .unwrap();
    assert_eq!(bus.partitions("telemetry").await.unwrap(), 4);
    assert!(matches!(
        bus.ensure_topic("telemetry", TopicConfig::with_partitions(2))
            .await,
        Err(BusError::Invalid(_))
    ));
    assert_eq!(
        bus.partitions("telemetry").await.unwrap(),
        4,
        "a refused configuration changes nothing"
    );
    assert!(matches!(
        bus.ensure_topic("nothing", TopicConfig::with_partitions(0))
            .await,
        Err(BusError::Invalid(_))
    ));
    assert!(matches!(
        bus.partitions("nothing").await,
        Err(BusError::UnknownTopic(_))
    ));
    assert!(matches!(
        bus.append("nope", 0, batch(&["x"])).await,
        Err(BusError::UnknownTopic(_))
    ));
    assert!(matches!(
        bus.read("nope", 0, Start::Offset(0), 1024).await,
        Err(BusError::UnknownTopic(_))
    ));
    assert!(matches!(
        bus.append("telemetry", 4, batch(&["x"])).await,
        Err(BusError::PartitionOutOfRange {
            partition: 4,
            partitions: 4,
            ..
        })
    ));
    assert!(matches!(
        bus.offsets("telemetry", 9).await,
        Err(BusError::PartitionOutOfRange { .. })
    ));
}

pub async fn appended_batches_read_back_in_order_with_their_headers(bus: Arc<dyn Bus>) {
    bus.ensure_topic("t", TopicConfig::with_partitions(2))
        .await
        .unwrap();
    let first = bus.append("t", 1, batch(&["a", "b"])).await.unwrap();
    let second = bus.append("t", 1, batch(&["c"])).await.unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 1));
    assert_eq!((second.base_offset, second.last_offset), (2, 2));
    assert!(!first.deduplicated);
    let range = bus.offsets("t", 1).await.unwrap();
    assert_eq!((range.start, range.end), (0, 3));
    assert_eq!(
        bus.offsets("t", 0).await.unwrap().end,
        0,
        "partitions are apart"
    );

    let read = bus.read("t", 1, Start::Offset(0), 1 << 20).await.unwrap();
    assert_eq!(values(&read, 0), ["a", "b", "c"]);
    assert_eq!(read.next_offset(), Some(3));
    let view = read.iter().next().unwrap();
    let records = view.records().unwrap();
    let record = records.iter().next().unwrap().unwrap();
    assert_eq!(record.header("sender"), Some(&b"2001:db8::7"[..]));
    assert!(
        view.max_timestamp() > 0,
        "the bus stamps when it took the batch"
    );
}

pub async fn reads_honour_their_start_and_byte_budget(bus: Arc<dyn Bus>) {
    bus.ensure_topic("t", TopicConfig::default()).await.unwrap();
    for round in 0..10 {
        let values: Vec<String> = (0..3).map(|i| format!("v{round}-{i}")).collect();
        let borrowed: Vec<&str> = values.iter().map(String::as_str).collect();
        bus.append("t", 0, batch(&borrowed)).await.unwrap();
    }
    // A budget smaller than one batch still returns one whole batch.
    let one = bus.read("t", 0, Start::Offset(0), 1).await.unwrap();
    assert_eq!(one.iter().count(), 1);
    assert_eq!(values(&one, 0), ["v0-0", "v0-1", "v0-2"]);
    // A start inside a batch returns that whole batch: the reader skips.
    let inside = bus.read("t", 0, Start::Offset(4), 1).await.unwrap();
    assert_eq!(values(&inside, 0), ["v1-0", "v1-1", "v1-2"]);
    assert_eq!(values(&inside, 4), ["v1-1", "v1-2"]);
    // Small steps see every record once, in order.
    let all = read_all(bus.as_ref(), "t", 0, 0).await;
    assert_eq!(all.len(), 30);
    assert_eq!(all.first().map(String::as_str), Some("v0-0"));
    assert_eq!(all.last().map(String::as_str), Some("v9-2"));
    // At the end: nothing yet; past it: an error naming the range.
    assert!(
        bus.read("t", 0, Start::Offset(30), 1024)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        bus.read("t", 0, Start::Offset(31), 1024).await,
        Err(BusError::OffsetOutOfRange {
            requested: 31,
            start: 0,
            end: 30
        })
    ));
}

pub async fn a_read_by_time_starts_at_the_first_later_append(bus: Arc<dyn Bus>) {
    bus.ensure_topic("t", TopicConfig::default()).await.unwrap();
    bus.append("t", 0, batch(&["early"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    bus.append("t", 0, batch(&["late"])).await.unwrap();
    let read = bus
        .read("t", 0, Start::Time(between), 1 << 20)
        .await
        .unwrap();
    assert_eq!(values(&read, 1), ["late"]);
    let future = bus
        .read("t", 0, Start::Time(now_ms() + 3_600_000), 1 << 20)
        .await
        .unwrap();
    assert!(future.is_empty(), "nothing was appended after the future");
}

pub async fn a_waiting_reader_wakes_on_append_and_times_out_otherwise(bus: Arc<dyn Bus>) {
    bus.ensure_topic("t", TopicConfig::default()).await.unwrap();
    assert!(
        !bus.wait("t", 0, 0, Duration::from_millis(30))
            .await
            .unwrap()
    );
    let producer = bus.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        producer.append("t", 0, batch(&["late"])).await.unwrap();
    });
    let started = std::time::Instant::now();
    assert!(bus.wait("t", 0, 0, Duration::from_secs(20)).await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the append, not the timeout"
    );
    append.await.unwrap();
    assert!(
        bus.wait("t", 0, 0, Duration::from_millis(1)).await.unwrap(),
        "a record already there needs no wait"
    );
    assert!(matches!(
        bus.wait("t", 3, 0, Duration::from_millis(1)).await,
        Err(BusError::PartitionOutOfRange { .. })
    ));
}

pub async fn group_commits_are_all_or_nothing_and_kept_per_group(bus: Arc<dyn Bus>) {
    bus.ensure_topic("t", TopicConfig::with_partitions(2))
        .await
        .unwrap();
    bus.append("t", 0, batch(&["a", "b", "c"])).await.unwrap();
    bus.require_group("sink", "t").await.unwrap();
    assert_eq!(bus.committed("sink", "t", 0).await.unwrap(), None);
    bus.commit("sink", &[("t", 0, 3), ("t", 1, 0)])
        .await
        .unwrap();
    assert_eq!(bus.committed("sink", "t", 0).await.unwrap(), Some(3));
    assert_eq!(bus.committed("sink", "t", 1).await.unwrap(), Some(0));
    assert_eq!(
        bus.committed("other", "t", 0).await.unwrap(),
        None,
        "groups are apart"
    );
    assert!(matches!(
        bus.commit("sink", &[("t", 0, 1), ("t", 1, 99)]).await,
        Err(BusError::Invalid(_))
    ));
    assert_eq!(
        bus.committed("sink", "t", 0).await.unwrap(),
        Some(3),
        "a refused commit changes none of its positions"
    );
    bus.commit("sink", &[("t", 0, 2)]).await.unwrap();
    assert_eq!(bus.committed("sink", "t", 0).await.unwrap(), Some(2));
}

pub async fn concurrent_appends_get_distinct_contiguous_offsets(bus: Arc<dyn Bus>) {
    const PRODUCERS: usize = 4;
    const BATCHES: usize = 25;
    bus.ensure_topic("t", TopicConfig::default()).await.unwrap();
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut bases = Vec::new();
            for n in 0..BATCHES {
                let (first, second) = (format!("p{producer}-{n}-a"), format!("p{producer}-{n}-b"));
                let outcome = bus.append("t", 0, batch(&[&first, &second])).await.unwrap();
                assert_eq!(outcome.last_offset, outcome.base_offset + 1);
                bases.push(outcome.base_offset);
            }
            bases
        }));
    }
    let mut bases = Vec::new();
    for task in tasks {
        bases.extend(task.await.unwrap());
    }
    bases.sort_unstable();
    let expected: Vec<i64> = (0..(PRODUCERS * BATCHES) as i64).map(|n| n * 2).collect();
    assert_eq!(bases, expected);
    let all = read_all(bus.as_ref(), "t", 0, 0).await;
    assert_eq!(all.len(), PRODUCERS * BATCHES * 2);
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "every record once");
}

pub async fn a_healthy_bus_reports_no_problems(bus: Arc<dyn Bus>) {
    bus.ensure_topic("t", TopicConfig::default()).await.unwrap();
    bus.append("t", 0, batch(&["a"])).await.unwrap();
    assert_eq!(bus.problems(), Vec::<String>::new());
}
