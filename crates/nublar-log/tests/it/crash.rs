//! A real process appending under `fsync` is killed with SIGKILL at random
//! moments; after each kill every offset it saw acknowledged is in the log,
//! intact and exactly once.
//!
//! The child is this test binary itself, started again with
//! `NUBLAR_CRASH_CHILD` set and told to run only [`crash_child_process`].

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{keyed_batch, read_all};
use nublar_log::{Log, OpenOptions, TopicConfig};

const CHILD_ENV: &str = "NUBLAR_CRASH_CHILD";
const APPENDERS: usize = 4;
const KILLS: usize = 6;

/// The child's work when started by the crash test; returns at once in a
/// normal test run.
#[test]
fn crash_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, run) = spec.split_once('|').expect("dir|run");
    let log = Log::open(dir).unwrap();
    // Zero-filled segments: a kill leaves zeros past the data, which recovery
    // must tell from a torn batch.
    let config = TopicConfig {
        segment_bytes: 256 * 1024,
        zero_fill: true,
        ..TopicConfig::default()
    };
    log.create_topic("crash", config).unwrap();
    let threads: Vec<_> = (0..APPENDERS)
        .map(|appender| {
            let log = log.clone();
            let run = run.to_owned();
            std::thread::spawn(move || {
                for sequence in 0.. {
                    let values: Vec<String> = (0..3)
                        .map(|record| format!("{run}/{appender}/{sequence}/{record}"))
                        .collect();
                    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                    let key = format!("{run}/{appender}/{sequence}");
                    let outcome = log
                        .append("crash", 0, keyed_batch(Some(&key), &refs))
                        .unwrap();
                    // One line per acknowledgement, written whole.
                    println!(
                        "ack {} {} {run}/{appender}/{sequence}",
                        outcome.base_offset, outcome.last_offset
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: HashMap<i64, String> = HashMap::new();
    let mut seed = 0x5eed_u64;
    for run in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::crash_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{run}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let lifetime = Duration::from_millis(100 + (seed >> 33) % 400);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            lines
        });
        let started = Instant::now();
        std::thread::sleep(lifetime);
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut acks_this_run = 0;
        for line in lines {
            let Some(rest) = line.strip_prefix("ack ") else {
                continue;
            };
            let mut parts = rest.split(' ');
            let (Some(base), Some(last), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue; // a line cut by the kill was never a complete acknowledgement
            };
            let (Ok(base), Ok(last)) = (base.parse::<i64>(), last.parse::<i64>()) else {
                continue;
            };
            assert_eq!(last - base, 2);
            for (record, offset) in (base..=last).enumerate() {
                let previous = acknowledged.insert(offset, format!("{id}/{record}"));
                assert!(previous.is_none(), "offset {offset} acknowledged twice");
            }
            acks_this_run += 1;
        }
        assert!(
            acks_this_run > 0 || started.elapsed() < Duration::from_millis(50),
            "run {run} acknowledged nothing"
        );

        let log = Log::open_with(
            dir.path(),
            OpenOptions {
                background: false,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let records = read_all(&log, "crash", 0, 0);
        let mut seen = HashSet::new();
        for (offset, value) in &records {
            assert!(
                seen.insert(value.clone()),
                "record {value} stored twice (second at {offset})"
            );
        }
        let stored: HashMap<i64, &String> = records
            .iter()
            .map(|(offset, value)| (*offset, value))
            .collect();
        for (offset, value) in &acknowledged {
            assert_eq!(
                stored.get(offset),
                Some(&value),
                "acknowledged offset {offset} after kill {run}"
            );
        }
        // Whatever survived without an acknowledgement is now part of the log.
        for (offset, value) in records {
            acknowledged.entry(offset).or_insert(value);
        }
    }
    assert!(
        acknowledged.len() > 100,
        "the children appended too little to prove anything"
    );
}
