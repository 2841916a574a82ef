//! Line protocol out of the generator: files and request bodies.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use nublar_sim::{
    Batch, Batcher, BatcherConfigError, Generator, GeneratorConfig, Grouping, Park, ParkConfig,
    SimEvent, next_batch, write_lines,
};

fn generator() -> Generator {
    let park = Park::generate(&ParkConfig::default()).unwrap();
    let config = GeneratorConfig {
        malformed_share: 0.05,
        duplicate_share: 0.05,
        unique_field: Some("seq".to_owned()),
        ..GeneratorConfig::default()
    };
    Generator::new(park, config).unwrap()
}

fn expected_body(count: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for event in generator().take(count) {
        event.write(&mut body);
    }
    body
}

#[test]
fn write_lines_writes_count_lines_of_the_run() {
    for count in [0, 1, 7, 5_000] {
        let mut out = Vec::new();
        let written = write_lines(&mut generator(), count, &mut out).unwrap();
        assert_eq!(written, count);
        assert_eq!(out, expected_body(count as usize), "{count} lines");
        assert_eq!(
            out.iter().filter(|&&byte| byte == b'\n').count() as u64,
            count
        );
    }
    // Two calls continue the same run.
    let mut generator = generator();
    let mut out = Vec::new();
    write_lines(&mut generator, 1_000, &mut out).unwrap();
    write_lines(&mut generator, 2_000, &mut out).unwrap();
    assert_eq!(out, expected_body(3_000));
}

#[test]
fn next_batch_cuts_the_run_into_bodies_of_n_lines() {
    let mut generator = generator();
    let mut joined = Vec::new();
    for _ in 0..10 {
        let batch = next_batch(&mut generator, 300).unwrap();
        assert_eq!(batch.lines, 300);
        assert_eq!(batch.sender, None);
        assert_eq!(
            batch.body.iter().filter(|&&byte| byte == b'\n').count(),
            300
        );
        joined.extend_from_slice(&batch.body);
    }
    assert_eq!(joined, expected_body(3_000));
}

fn push_all(batcher: &mut Batcher, events: &[SimEvent]) -> Vec<Batch> {
    let mut ready = Vec::new();
    for event in events {
        batcher.push(event, &mut ready);
    }
    batcher.finish(&mut ready);
    ready
}

#[test]
fn mixed_batches_keep_the_run_in_order() {
    let events: Vec<SimEvent> = generator().take(1_050).collect();
    let batches = push_all(&mut Batcher::new(100, Grouping::Mixed).unwrap(), &events);
    assert_eq!(batches.len(), 11);
    assert!(batches[..10].iter().all(|batch| batch.lines == 100));
    assert_eq!(batches[10].lines, 50);
    let joined: Vec<u8> = batches
        .iter()
        .flat_map(|batch| batch.body.clone())
        .collect();
    assert_eq!(joined, expected_body(1_050));
}

#[test]
fn batches_by_sender_hold_one_sender_each_in_its_order() {
    let events: Vec<SimEvent> = generator().take(4_000).collect();
    let batches = push_all(&mut Batcher::new(3, Grouping::BySender).unwrap(), &events);
    let mut expected: HashMap<Ipv6Addr, Vec<u8>> = HashMap::new();
    for event in &events {
        event.write(expected.entry(event.sender).or_default());
    }
    let mut actual: BTreeMap<Ipv6Addr, Vec<u8>> = BTreeMap::new();
    let mut full = 0;
    for batch in &batches {
        let sender = batch.sender.expect("grouped by sender");
        assert!(batch.lines >= 1 && batch.lines <= 3);
        full += usize::from(batch.lines == 3);
        actual
            .entry(sender)
            .or_default()
            .extend_from_slice(&batch.body);
    }
    assert!(full > 0);
    assert_eq!(actual.len(), expected.len());
    for (sender, body) in actual {
        assert_eq!(body, expected[&sender], "{sender}");
    }
    assert_eq!(
        batches.iter().map(|batch| batch.lines).sum::<usize>(),
        4_000
    );
}

#[test]
fn a_batch_size_out_of_range_is_refused() {
    assert_eq!(
        Batcher::new(0, Grouping::Mixed).unwrap_err(),
        BatcherConfigError(0)
    );
    assert_eq!(
        Batcher::new(50_001, Grouping::BySender).unwrap_err(),
        BatcherConfigError(50_001)
    );
    assert!(Batcher::new(50_000, Grouping::BySender).is_ok());
}

#[test]
fn batches_by_sender_are_all_sent_when_too_many_lines_wait() {
    // 90 sensors, 50 000 lines per batch: no sender fills a batch in 200 000 events, so only
    // the bound on waiting lines can make batches come out.
    let park = Park::generate(&ParkConfig::default()).unwrap();
    let mut generator = Generator::new(park, GeneratorConfig::default()).unwrap();
    let mut batcher = Batcher::new(50_000, Grouping::BySender).unwrap();
    let mut ready = Vec::new();
    for _ in 0..nublar_sim::limits::BATCHER_PENDING_LINES_MAX - 1 {
        batcher.push(&generator.next_event().unwrap(), &mut ready);
    }
    assert!(ready.is_empty());
    batcher.push(&generator.next_event().unwrap(), &mut ready);
    assert_eq!(
        ready.iter().map(|batch| batch.lines).sum::<usize>(),
        nublar_sim::limits::BATCHER_PENDING_LINES_MAX
    );
    let mut rest = Vec::new();
    batcher.finish(&mut rest);
    assert!(rest.is_empty());
}
