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
