//! The bus contract, checked against the embedded log. A Kafka
//! implementation is held to the same tests.

use std::sync::Arc;
use std::time::Duration;

use nublar_bus::{
    Batch, BatchBuilder, Bus, BusError, Compression, EmbeddedBus, Start, TopicConfig,
};
use nublar_log::{Log, ManualClock, OpenOptions};

fn batch(key: Option<&str>, values: &[&str]) -> Batch {
    let mut builder = BatchBuilder::new(Compression::Lz4);
    if let Some(key) = key {
        builder = builder.batch_key(key).unwrap();
    }
    for value in values {
        builder.push(None, value.as_bytes(), &[("sender", b"2001:db8::7")]);
    }
    builder.finish().unwrap()
}

fn values(batches: &nublar_bus::ReadBatches, from: i64) -> Vec<String> {
    let mut out = Vec::new();
    for view in batches.iter() {
        for record in view.records().unwrap().iter() {
            let record = record.unwrap();
            if record.offset >= from {
                out.push(String::from_utf8(record.value.to_vec()).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_commit_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(5_000));
    let log = Log::open_with(
        dir.path(),
        OpenOptions {
            clock: clock.clone(),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let bus: Arc<dyn Bus> = EmbeddedBus::new(log).into_shared();
    bus.ensure_topic("telemetry", TopicConfig::with_partitions(4))
        .await
        .unwrap();
    bus.ensure_topic("telemetry", TopicConfig::with_partitions(4))
        .await
        .unwrap();
    assert!(matches!(
        bus.ensure_topic("telemetry", TopicConfig::with_partitions(2))
            .await,
        Err(BusError::Invalid(_))
    ));
    assert_eq!(bus.partitions("telemetry").await.unwrap(), 4);

    let first = bus
        .append("telemetry", 2, batch(Some("req-1"), &["a", "b"]))
        .await
        .unwrap();
    clock.advance(1_000);
    let second = bus
        .append("telemetry", 2, batch(None, &["c"]))
        .await
        .unwrap();
    let retried = bus
        .append("telemetry", 2, batch(Some("req-1"), &["a", "b"]))
        .await
        .unwrap();
    assert_eq!((first.base_offset, second.base_offset), (0, 2));
    assert!(retried.deduplicated);
    assert_eq!(retried.base_offset, first.base_offset);

    let all = bus
        .read("telemetry", 2, Start::Offset(0), 1 << 20)
        .await
        .unwrap();
    assert_eq!(values(&all, 0), ["a", "b", "c"]);
    let records = all.iter().next().unwrap().records().unwrap();
    let first_record = records.iter().next().unwrap().unwrap();
    assert_eq!(first_record.header("sender"), Some(&b"2001:db8::7"[..]));
    let by_time = bus
        .read("telemetry", 2, Start::Time(5_500), 1 << 20)
        .await
        .unwrap();
    assert_eq!(values(&by_time, 0), ["c"]);
    let range = bus.offsets("telemetry", 2).await.unwrap();
    assert_eq!((range.start, range.end), (0, 3));
    assert!(matches!(
        bus.read("telemetry", 2, Start::Offset(9), 100).await,
        Err(BusError::OffsetOutOfRange {
            requested: 9,
            start: 0,
            end: 3
        })
    ));
    assert!(matches!(
        bus.append("telemetry", 4, batch(None, &["x"])).await,
        Err(BusError::PartitionOutOfRange { .. })
    ));
    assert!(matches!(
        bus.append("nope", 0, batch(None, &["x"])).await,
        Err(BusError::UnknownTopic(_))
    ));

    bus.require_group("sink", "telemetry").await.unwrap();
    bus.commit("sink", &[("telemetry", 2, 3), ("telemetry", 0, 0)])
        .await
        .unwrap();
    assert_eq!(
        bus.committed("sink", "telemetry", 2).await.unwrap(),
        Some(3)
    );
    assert_eq!(bus.committed("sink", "telemetry", 1).await.unwrap(), None);
    assert!(matches!(
        bus.commit("sink", &[("telemetry", 2, 99)]).await,
        Err(BusError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_wakes_on_append_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::new(Log::open(dir.path()).unwrap());
    bus.ensure_topic("t", TopicConfig::default()).await.unwrap();
    assert!(
        !bus.wait("t", 0, 0, Duration::from_millis(30))
            .await
            .unwrap()
    );
    let producer = bus.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        producer
            .append("t", 0, batch(None, &["late"]))
            .await
            .unwrap();
    });
    let started = std::time::Instant::now();
    assert!(bus.wait("t", 0, 0, Duration::from_secs(10)).await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(5));
    append.await.unwrap();
    let read = bus.read("t", 0, Start::Offset(0), 1024).await.unwrap();
    assert_eq!(values(&read, 0), ["late"]);
}
