//! `nublar log …`: an operator's look inside a commit log that no process owns.
//!
//! Everything here opens the log read-only: nothing is truncated, recovered or
//! appended, so looking can never change what a crashed node left behind.
//! The one exception is `reclaim`, which exists to change things.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use nublar_log::{BatchView, Log, OpenOptions};

#[derive(Subcommand)]
pub enum LogCommand {
    /// List topics with their partitions, policy and size.
    Topics,
    /// Show a topic's configuration, and per partition its offsets, size,
    /// segments, state and every group's committed offset.
    Describe { topic: String },
    /// Print the last records of a partition.
    Tail {
        topic: String,
        #[arg(long, short, default_value_t = 0)]
        partition: u32,
        /// How many records from the end.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: i64,
    },
    /// Print the batches of a partition with their header fields, CRC check
    /// and (with --records) every record.
    Dump {
        topic: String,
        #[arg(long, short, default_value_t = 0)]
        partition: u32,
        /// First offset to dump (default: the partition's start).
        #[arg(long)]
        from: Option<i64>,
        /// Stop after this many batches.
        #[arg(long, default_value_t = 100)]
        batches: usize,
        /// Print each record too.
        #[arg(long)]
        records: bool,
    },
    /// Apply a topic's retention now even where a required consumer group has
    /// not consumed the data: the operator's way to free a full disk. Every
    /// record dropped that way is logged and counted.
    Reclaim { topic: String },
}

pub fn run(data: &Path, command: LogCommand) -> anyhow::Result<()> {
    let dir = data.join("log");
    match command {
        LogCommand::Topics => topics(&open_read_only(&dir)?),
        LogCommand::Describe { topic } => describe(&open_read_only(&dir)?, &topic),
        LogCommand::Tail {
            topic,
            partition,
            lines,
        } => tail(&open_read_only(&dir)?, &topic, partition, lines),
        LogCommand::Dump {
            topic,
            partition,
            from,
            batches,
            records,
        } => dump(
            &open_read_only(&dir)?,
            &topic,
            partition,
            from,
            batches,
            records,
        ),
        LogCommand::Reclaim { topic } => {
            let log = Log::open_with(
                &dir,
                OpenOptions {
                    background: false,
                    ..OpenOptions::default()
                },
            )
            .with_context(|| format!("opening {}", dir.display()))?;
            let outcomes = log.reclaim(&topic)?;
            for (topic, partition, outcome) in &outcomes {
                let dropped = match outcome.dropped_uncommitted {
                    Some((from, to)) => format!(
                        ", {} records no required group had consumed ({from}..{to})",
                        to - from
                    ),
                    None => String::new(),
                };
                println!(
                    "{topic}/{partition}: deleted {} segments, {} bytes{dropped}",
                    outcome.deleted_segments, outcome.deleted_bytes
                );
            }
            if outcomes.is_empty() {
                println!("nothing to reclaim: no sealed segment of {topic} is past its retention");
            }
            log.close().map_err(anyhow::Error::from)
        }
    }
}

fn open_read_only(dir: &Path) -> anyhow::Result<Log> {
    let options = OpenOptions {
        read_only: true,
        background: false,
        ..OpenOptions::default()
    };
    Log::open_with(dir, options).with_context(|| format!("opening the log in {}", dir.display()))
}

fn topics(log: &Log) -> anyhow::Result<()> {
    let mut out = String::new();
    writeln!(
        out,
        "{:<24} {:>10} {:>14} {:>14} {:>16}",
        "TOPIC", "PARTITIONS", "DURABILITY", "RECORDS", "BYTES"
    )?;
    for (name, config) in log.topics() {
        let mut records = 0;
        let mut bytes = 0;
        for partition in 0..config.partitions {
            let info = log.partition_info(&name, partition)?;
            records += info.end_offset - info.start_offset;
            bytes += info.size_bytes;
        }
        writeln!(
            out,
            "{:<24} {:>10} {:>14} {:>14} {:>16}",
            name,
            config.partitions,
            config.durability.to_string(),
            records,
            bytes
        )?;
    }
    print!("{out}");
    Ok(())
}

fn describe(log: &Log, topic: &str) -> anyhow::Result<()> {
    let config = log
        .topic_config(topic)
        .with_context(|| format!("unknown topic {topic:?}"))?;
    println!("topic {topic}");
    println!("{}", serde_json::to_string_pretty(&config)?);
    let groups = log.groups();
    for partition in 0..config.partitions {
        let info = log.partition_info(topic, partition)?;
        println!(
            "partition {partition}: offsets {}..{}, {} bytes in {} segments, {} batch keys remembered, {}",
            info.start_offset,
            info.end_offset,
            info.size_bytes,
            info.segments,
            info.remembered_keys,
            match &info.stopped {
                Some(reason) => format!("STOPPED: {reason}"),
                None => "taking writes".into(),
            }
        );
        for (group, state) in &groups {
            let committed = state.offsets.get(&(topic.to_owned(), partition));
            let required = if state.required_topics.contains(topic) {
                " (required)"
            } else {
                ""
            };
            if committed.is_some() || !required.is_empty() {
                let committed = committed.map_or("none".to_string(), i64::to_string);
                let lag = state
                    .offsets
                    .get(&(topic.to_owned(), partition))
                    .map(|&offset| info.end_offset - offset);
                let lag = lag.map_or(String::new(), |lag| format!(", lag {lag}"));
                println!("  group {group}{required}: committed {committed}{lag}");
            }
        }
    }
    Ok(())
}

fn tail(log: &Log, topic: &str, partition: u32, lines: i64) -> anyhow::Result<()> {
    let end = log.end_offset(topic, partition)?;
    let start = (end - lines.max(0)).max(log.start_offset(topic, partition)?);
    let mut offset = start;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while offset < end {
        let batches = log.read(topic, partition, offset, 1 << 20)?;
        let Some(next) = batches.next_offset() else {
            break;
        };
        for view in batches.iter() {
            let records = view.records()?;
            for record in records.iter() {
                let record = record?;
                if record.offset >= offset {
                    writeln!(out, "{}", format_record(&record))?;
                }
            }
        }
        offset = next;
    }
    Ok(())
}

fn dump(
    log: &Log,
    topic: &str,
    partition: u32,
    from: Option<i64>,
    batches_max: usize,
    with_records: bool,
) -> anyhow::Result<()> {
    let mut offset = match from {
        Some(offset) => offset,
        None => log.start_offset(topic, partition)?,
    };
    let end = log.end_offset(topic, partition)?;
    let mut printed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while offset < end && printed < batches_max {
        let batches = log.read(topic, partition, offset, 1 << 20)?;
        let Some(next) = batches.next_offset() else {
            break;
        };
        for view in batches.iter() {
            if printed == batches_max {
                break;
            }
            writeln!(out, "{}", format_batch(&view))?;
            if with_records {
                for record in view.records()?.iter() {
                    writeln!(out, "  {}", format_record(&record?))?;
                }
            }
            printed += 1;
        }
        offset = next;
    }
    Ok(())
}

fn format_batch(view: &BatchView<'_>) -> String {
    let codec = view
        .compression()
        .map(|codec| codec.name())
        .unwrap_or("unknown");
    let crc = if view.verify_crc().is_ok() {
        "ok"
    } else {
        "MISMATCH"
    };
    format!(
        "batch offsets {}..={} records {} bytes {} magic {} codec {} crc {:#010x} ({crc}) time {} producer {}/{}/{}",
        view.base_offset(),
        view.last_offset(),
        view.record_count(),
        view.len_bytes(),
        view.magic(),
        codec,
        view.stored_crc(),
        view.max_timestamp(),
        view.producer_id(),
        view.producer_epoch(),
        view.base_sequence(),
    )
}

fn format_record(record: &nublar_log::Record<'_>) -> String {
    let mut line = format!("{} t={}", record.offset, record.timestamp_ms);
    if let Some(key) = record.key {
        let _ = write!(line, " key={}", printable(key));
    }
    for (name, value) in record.headers().flatten() {
        let _ = write!(line, " {}={}", printable(name), printable(value));
    }
    let _ = write!(line, " {}", printable(record.value));
    line
}

/// Bytes as text, with anything that is not printable UTF-8 escaped, so a
/// binary value cannot garble the terminal.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(char::escape_debug)
        .collect()
}
