//! The bus contract, held against the embedded log, and what only this bus
//! does: batch keys deduplicated, and a topic's log settings kept.

use std::sync::Arc;

use nublar_bus::{BatchBuilder, Bus, Compression, Start, TopicConfig};
use nublar_bus_embedded::EmbeddedBus;
use nublar_bus_embedded::nublar_log::{self, Log, ManualClock, OpenOptions};

fn embedded() -> (Arc<dyn Bus>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap().into_shared();
    (bus, dir)
}

nublar_bus::contract_tests!(embedded());

fn keyed(key: &str, values: &[&str]) -> nublar_bus::Batch {
    let mut builder = BatchBuilder::new(Compression::Lz4).batch_key(key).unwrap();
    for value in values {
        builder.push(None, value.as_bytes(), &[]);
    }
    builder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_key_gets_its_first_offsets_and_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(5_000));
    let bus = EmbeddedBus::open_with(
        dir.path(),
        OpenOptions {
            clock: clock.clone(),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    bus.ensure_topic("telemetry", TopicConfig::with_partitions(4))
        .await
        .unwrap();
    let first = bus
        .append("telemetry", 2, keyed("req-1", &["a", "b"]))
        .await
        .unwrap();
    clock.advance(1_000);
    let retried = bus
        .append("telemetry", 2, keyed("req-1", &["a", "b"]))
        .await
        .unwrap();
    assert!(!first.deduplicated);
    assert!(retried.deduplicated);
    assert_eq!(
        (retried.base_offset, retried.last_offset),
        (first.base_offset, first.last_offset)
    );
    assert_eq!(bus.offsets("telemetry", 2).await.unwrap().end, 2);
    let keys = bus.batch_keys("telemetry", 2).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0].key.as_str(), keys[0].last_offset, keys[0].append_ms),
        ("req-1", 1, 5_000)
    );
    let read = bus
        .read("telemetry", 2, Start::Time(5_500), 1 << 20)
        .await
        .unwrap();
    assert!(read.is_empty(), "the retry appended nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_made_with_its_own_log_settings_is_still_ensured_by_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic(
        "t",
        nublar_log::TopicConfig {
            segment_bytes: 64 * 1024,
            ..nublar_log::TopicConfig::with_partitions(2)
        },
    )
    .unwrap();
    let bus = EmbeddedBus::new(log.clone());
    bus.ensure_topic("t", TopicConfig::with_partitions(2))
        .await
        .unwrap();
    assert!(
        bus.ensure_topic("t", TopicConfig::with_partitions(3))
            .await
            .is_err()
    );
    assert_eq!(log.topic_config("t").unwrap().segment_bytes, 64 * 1024);
}
