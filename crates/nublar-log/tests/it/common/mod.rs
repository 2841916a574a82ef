#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use nublar_log::storage::Storage;
use nublar_log::{Batch, BatchBuilder, Clock, Compression, Log, OpenOptions, TopicConfig};

pub fn batch(values: &[&str]) -> Batch {
    keyed_batch(None, values)
}

pub fn keyed_batch(key: Option<&str>, values: &[&str]) -> Batch {
    let mut builder = BatchBuilder::new(Compression::None);
    if let Some(key) = key {
        builder = builder.batch_key(key).unwrap();
    }
    for value in values {
        builder.push(None, value.as_bytes(), &[]);
    }
    builder.finish().unwrap()
}

/// Every record value of a partition from `from` to its end, with its offset.
pub fn read_all(log: &Log, topic: &str, partition: u32, from: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let batches = log.read(topic, partition, offset, 64 * 1024).unwrap();
        if batches.is_empty() {
            return out;
        }
        for view in batches.iter() {
            for record in view.records().unwrap().iter() {
                let record = record.unwrap();
                if record.offset >= offset {
                    out.push((
                        record.offset,
                        String::from_utf8(record.value.to_vec()).unwrap(),
                    ));
                }
            }
        }
        offset = batches.next_offset().unwrap();
    }
}

pub fn options(storage: Arc<dyn Storage>, clock: Arc<dyn Clock>) -> OpenOptions {
    OpenOptions {
        storage,
        clock,
        background: false,
        ..OpenOptions::default()
    }
}

pub fn small_segments() -> TopicConfig {
    TopicConfig {
        segment_bytes: 64 * 1024,
        ..TopicConfig::default()
    }
}

pub fn open(dir: &Path) -> Log {
    Log::open_with(
        dir,
        OpenOptions {
            background: false,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}
