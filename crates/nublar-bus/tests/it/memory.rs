//! The bus contract, held against the bus in memory.

use nublar_bus::{Bus, MemoryBus};

nublar_bus::contract_tests!((MemoryBus::new().into_shared(), ()));

#[tokio::test]
async fn a_full_memory_bus_refuses_appends_and_says_so() {
    let bus = MemoryBus::with_bytes_max(4096);
    bus.ensure_topic("t", nublar_bus::TopicConfig::default())
        .await
        .unwrap();
    let mut refused = None;
    for n in 0..100 {
        let mut builder = nublar_bus::BatchBuilder::new(nublar_bus::Compression::None);
        builder.push(None, &[n as u8; 512], &[]);
        match bus.append("t", 0, builder.finish().unwrap()).await {
            Ok(_) => {}
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let error = refused.expect("a 4 KiB bus refuses 50 KiB");
    assert!(error.is_retryable(), "{error}");
    assert!(matches!(error, nublar_bus::BusError::Full(_)));
}

fn batch_of(n: u8) -> nublar_bus::Batch {
    let mut builder = nublar_bus::BatchBuilder::new(nublar_bus::Compression::None);
    builder.push(None, &[n; 512], &[]);
    builder.finish().unwrap()
}

#[tokio::test]
async fn retention_by_size_keeps_what_a_required_group_has_yet_to_read() {
    let bus = MemoryBus::new();
    let config = nublar_bus::TopicConfig {
        retention_bytes: Some(2048),
        ..nublar_bus::TopicConfig::default()
    };
    bus.ensure_topic("t", config).await.unwrap();
    bus.require_group("lake", "t").await.unwrap();
    for n in 0..10 {
        bus.append("t", 0, batch_of(n)).await.unwrap();
    }
    // Past its size, but the required group has read nothing: all kept.
    assert_eq!(bus.offsets("t", 0).await.unwrap().start, 0);

    // The group has read six: the next append drops what it read, down to the size.
    bus.commit("lake", &[("t", 0, 6)]).await.unwrap();
    bus.append("t", 0, batch_of(10)).await.unwrap();
    let range = bus.offsets("t", 0).await.unwrap();
    assert_eq!(range.start, 6, "{range:?}");
    assert_eq!(range.end, 11);
    let error = bus
        .read("t", 0, nublar_bus::Start::Offset(5), 1 << 20)
        .await;
    assert!(
        matches!(
            error,
            Err(nublar_bus::BusError::OffsetOutOfRange { start: 6, .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn retention_by_size_without_a_required_group_keeps_the_newest() {
    let bus = MemoryBus::new();
    let config = nublar_bus::TopicConfig {
        retention_bytes: Some(2048),
        ..nublar_bus::TopicConfig::default()
    };
    bus.ensure_topic("t", config).await.unwrap();
    for n in 0..10 {
        bus.append("t", 0, batch_of(n)).await.unwrap();
    }
    let range = bus.offsets("t", 0).await.unwrap();
    assert_eq!(range.end, 10);
    assert!(range.start > 0, "{range:?}");
    // What is kept is within the bound plus the batch that pushed past it.
    let kept = bus
        .read("t", 0, nublar_bus::Start::Offset(range.start), 1 << 20)
        .await
        .unwrap();
    assert_eq!(kept.iter().count() as i64, range.end - range.start);
    assert!(kept.iter().count() <= 5, "{range:?}");
}
