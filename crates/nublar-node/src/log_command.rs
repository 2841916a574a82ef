//! `nublar log …`: an operator's look inside a commit log that no process owns.
//!
//! Everything here opens the log read-only: nothing is truncated, recovered or
//! appended, so looking can never change what a crashed node left behind.
//! The exceptions are `reclaim` and `skip`, which exist to change things.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use nublar_bus::Stalls;
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
        /// How many records from the end (at most 100000).
        #[arg(long, short = 'n', default_value_t = 10,
              value_parser = clap::value_parser!(i64).range(0..=TAIL_LINES_MAX))]
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
        /// Stop after this many batches (at most 100000).
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u64).range(1..=DUMP_BATCHES_MAX))]
        batches: u64,
        /// Print each record too.
        #[arg(long)]
        records: bool,
    },
    /// Apply a topic's retention now even where a required consumer group has
    /// not consumed the data: the operator's way to free a full disk. Every
    /// record dropped that way is logged and counted.
    Reclaim { topic: String },
    /// List where a running node's consumers (the lake sinks, the processors) stopped at a
    /// batch they cannot read.
    Stalls,
    /// Move a consumer group past a batch it cannot read: on a running node, the stalled
    /// partition goes on from --to (default: the batch after the bad one); with no node,
    /// the group's committed offset is set to --to. What lies between is not consumed.
    Skip {
        topic: String,
        #[arg(long, short)]
        partition: u32,
        /// The consumer group: lake, lake-dead-letters, lake-agg-1m, lake-alerts, processors.
        #[arg(long)]
        group: String,
        /// The offset to go on from.
        #[arg(long)]
        to: Option<i64>,
    },
}

/// `nublar log [--node URL] [--token T] [--ca-file PEM] …`
#[derive(clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    target: NodeTarget,
    #[command(subcommand)]
    command: LogCommand,
}

/// Which node an operator command asks, and how: the node that owns the data directory (its
/// address is in `node.json`), or with `--node` any node, on this host or not.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NodeTarget {
    /// Ask the node at this URL (`http://HOST:PORT`, `https://…`) instead of the one running
    /// on --data; the command then always goes to the node.
    #[arg(long, env = "NUBLAR_NODE", value_name = "URL", global = true)]
    pub node: Option<String>,
    /// Token for the node (`Authorization: Token …`): the admin scope for operator commands,
    /// read for `latest`.
    #[arg(long, env = "NUBLAR_TOKEN", global = true)]
    pub token: Option<String>,
    /// PEM certificates to trust for an `https://` --node, instead of the system's roots.
    #[arg(long, env = "NUBLAR_CA_FILE", value_name = "PEM", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl NodeTarget {
    /// Whether the command must go to a node named by URL.
    pub fn remote(&self) -> bool {
        self.node.is_some()
    }
}

/// How the node's operator API parses what a client sends: the same
/// subcommands as on the command line.
#[derive(clap::Parser)]
#[command(name = "log")]
pub struct RemoteLogCommand {
    #[command(subcommand)]
    pub command: LogCommand,
}

/// Records `log tail` prints at most.
pub const TAIL_LINES_MAX: i64 = 100_000;
/// Batches `log dump` prints at most.
pub const DUMP_BATCHES_MAX: u64 = 100_000;
/// The most text an operator command answers with, here or over a node's API: past it the
/// answer stops with a line saying where, and how to ask for the rest.
pub const ANSWER_BYTES_MAX: usize = 16 << 20;

/// The file a running node writes beside its log, saying where to ask it.
pub const NODE_FILE: &str = "node.json";

pub fn run(data: &Path, args: LogArgs) -> anyhow::Result<()> {
    let dir = data.join("log");
    let command = args.command;
    if args.target.remote() {
        print!("{}", ask_node(data, &args.target, &command)?);
        return Ok(());
    }
    let reclaim = matches!(
        command,
        LogCommand::Reclaim { .. } | LogCommand::Skip { .. }
    );
    let opened = if reclaim {
        let options = OpenOptions {
            background: false,
            ..OpenOptions::default()
        };
        Log::open_with(&dir, options).with_context(|| format!("opening {}", dir.display()))
    } else {
        open_read_only(&dir)
    };
    match opened {
        Ok(log) => {
            print!("{}", render(&log, None, &command)?);
            if reclaim {
                log.close()?;
            }
            Ok(())
        }
        // A node owns the directory: ask it instead.
        Err(error) if is_locked(&error) && data.join(NODE_FILE).exists() => {
            print!("{}", ask_node(data, &args.target, &command)?);
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// The text a command prints, from an open log (this process's or a node's, with the node's
/// consumer stalls).
pub fn render(log: &Log, stalls: Option<&Stalls>, command: &LogCommand) -> anyhow::Result<String> {
    let mut out = String::new();
    match command {
        LogCommand::Stalls => match stalls {
            None => writeln!(
                out,
                "no node owns this directory: consumers run inside a node, which says where \
                 they stopped"
            )?,
            Some(stalls) => {
                let list = stalls.list();
                if list.is_empty() {
                    writeln!(out, "no consumer is stopped")?;
                }
                for stall in list {
                    let resume = stall
                        .resume_at
                        .map_or("unknown".to_string(), |offset| offset.to_string());
                    writeln!(
                        out,
                        "group {} stopped in {}/{} at offset {} (next batch at {resume}): {}",
                        stall.group, stall.topic, stall.partition, stall.offset, stall.reason
                    )?;
                }
            }
        },
        LogCommand::Skip {
            topic,
            partition,
            group,
            to,
        } => skip(log, stalls, topic, *partition, group, *to, &mut out)?,
        LogCommand::Topics => topics(log, &mut out)?,
        LogCommand::Describe { topic } => describe(log, topic, &mut out)?,
        LogCommand::Tail {
            topic,
            partition,
            lines,
        } => tail(log, topic, *partition, *lines, &mut out)?,
        LogCommand::Dump {
            topic,
            partition,
            from,
            batches,
            records,
        } => dump(log, topic, *partition, *from, *batches, *records, &mut out)?,
        LogCommand::Reclaim { topic } => {
            let outcomes = log.reclaim(topic)?;
            for (topic, partition, outcome) in &outcomes {
                let dropped = match outcome.dropped_uncommitted {
                    Some((from, to)) => {
                        format!(
                            ", {} records no required group had consumed ({from}..{to})",
                            to - from
                        )
                    }
                    None => String::new(),
                };
                writeln!(
                    out,
                    "{topic}/{partition}: deleted {} segments, {} bytes{dropped}",
                    outcome.deleted_segments, outcome.deleted_bytes
                )?;
            }
            if outcomes.is_empty() {
                writeln!(
                    out,
                    "nothing to reclaim: no sealed segment of {topic} is past its retention"
                )?;
            }
        }
    }
    Ok(out)
}

impl LogCommand {
    /// The command as the words that would be typed for it.
    fn to_args(&self) -> Vec<String> {
        match self {
            LogCommand::Topics => vec!["topics".into()],
            LogCommand::Describe { topic } => vec!["describe".into(), topic.clone()],
            LogCommand::Tail {
                topic,
                partition,
                lines,
            } => {
                let mut args = vec!["tail".into(), topic.clone()];
                args.extend([
                    "--partition".into(),
                    partition.to_string(),
                    "--lines".into(),
                    lines.to_string(),
                ]);
                args
            }
            LogCommand::Dump {
                topic,
                partition,
                from,
                batches,
                records,
            } => {
                let mut args = vec![
                    "dump".into(),
                    topic.clone(),
                    "--partition".into(),
                    partition.to_string(),
                ];
                if let Some(from) = from {
                    args.extend(["--from".into(), from.to_string()]);
                }
                args.extend(["--batches".into(), batches.to_string()]);
                if *records {
                    args.push("--records".into());
                }
                args
            }
            LogCommand::Reclaim { topic } => vec!["reclaim".into(), topic.clone()],
            LogCommand::Stalls => vec!["stalls".into()],
            LogCommand::Skip {
                topic,
                partition,
                group,
                to,
            } => {
                let mut args = vec![
                    "skip".into(),
                    topic.clone(),
                    "--partition".into(),
                    partition.to_string(),
                    "--group".into(),
                    group.clone(),
                ];
                if let Some(to) = to {
                    args.extend(["--to".into(), to.to_string()]);
                }
                args
            }
        }
    }
}

/// `nublar log skip`: through the running node's stalls, or, with no node, by setting the
/// group's committed offset.
fn skip(
    log: &Log,
    stalls: Option<&Stalls>,
    topic: &str,
    partition: u32,
    group: &str,
    to: Option<i64>,
    out: &mut String,
) -> anyhow::Result<()> {
    if let Some(stalls) = stalls {
        let (from, to) = stalls
            .skip(group, topic, partition, to)
            .map_err(|reason| anyhow::anyhow!(reason))?;
        writeln!(
            out,
            "group {group} goes on in {topic}/{partition} from offset {to}; offsets {from}..{to} \
             will not be consumed"
        )?;
        return Ok(());
    }
    let to = to.context(
        "with no node running, say where the group goes on with --to (`nublar log dump` shows \
         the batches)",
    )?;
    let end = log.end_offset(topic, partition)?;
    let committed = log.committed(group, topic, partition);
    anyhow::ensure!(
        to <= end,
        "--to {to} is past the end of {topic}/{partition} ({end})"
    );
    anyhow::ensure!(
        committed.is_none_or(|committed| to > committed),
        "--to {to} is not past offset {}, where group {group} has committed",
        committed.unwrap_or_default()
    );
    log.commit(group, &[(topic, partition, to)])?;
    tracing::warn!(
        group,
        topic,
        partition,
        to,
        "group moved on an operator's word"
    );
    let from = committed.map_or("its start".to_string(), |offset| format!("offset {offset}"));
    writeln!(
        out,
        "group {group} goes on in {topic}/{partition} from offset {to} (it had committed \
         {from}); what lies between will not be consumed"
    )?;
    Ok(())
}

/// Whether a running node owns `data` (it holds the log's lock and says where it listens).
pub fn node_owns(data: &Path) -> bool {
    matches!(open_read_only(&data.join("log")), Err(error) if is_locked(&error))
        && data.join(NODE_FILE).exists()
}

fn is_locked(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<nublar_log::LogError>(),
            Some(nublar_log::LogError::Locked(_))
        )
    })
}

/// Sends the command to the node `target` names and returns what it answers.
fn ask_node(data: &Path, target: &NodeTarget, command: &LogCommand) -> anyhow::Result<String> {
    let body = serde_json::to_vec(&command.to_args())?;
    post_to_node(data, target, OPERATOR_PATH, &body)
}

/// POSTs `body` to `path` on the node `target` names (by default the one that owns `data`,
/// whose address is in `node.json`) and returns the text it answers with 200; any other
/// status is an error carrying the node's answer. Shared by the operator commands.
pub fn post_to_node(
    data: &Path,
    target: &NodeTarget,
    path: &str,
    body: &[u8],
) -> anyhow::Result<String> {
    ask_node_with(data, target, "POST", path, body)
}

/// Sends one request with `method` to `path` on the node `target` names; as [`post_to_node`].
pub fn ask_node_with(
    data: &Path,
    target: &NodeTarget,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<String> {
    let base = match &target.node {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{}", owner_address(data)?),
    };
    let answer = send(
        &base,
        target.ca_file.clone(),
        method,
        path,
        target.token.as_deref(),
        body,
    )
    .with_context(|| match &target.node {
        Some(_) => format!("asking the node at {base}"),
        None => format!(
            "a node owns {} but does not answer on {base}",
            data.display()
        ),
    })?;
    if answer.status != hyper::StatusCode::OK {
        anyhow::bail!(
            "the node at {base} answered {}: {}",
            answer.status.as_u16(),
            answer.text().trim()
        );
    }
    Ok(answer.text())
}

/// One request to `path` at `base` (`http://HOST:PORT` or `https://…`), waited for.
fn send(
    base: &str,
    ca_file: Option<std::path::PathBuf>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> anyhow::Result<nublar_client::Response> {
    let client = nublar_client::Client::new(nublar_client::ClientOptions {
        ca_file,
        ..nublar_client::ClientOptions::default()
    })?;
    let method = hyper::Method::from_bytes(method.as_bytes())
        .with_context(|| format!("{method:?} is no HTTP method"))?;
    let url = format!("{base}{path}");
    let request = client
        .request(method, &url)
        .token(token)
        .header("content-type", "application/json")
        .body(body.to_vec());
    Ok(nublar_client::Client::block_on(request.send())?)
}

/// Where the node that owns `data` said it answers, in `node.json`.
fn owner_address(data: &Path) -> anyhow::Result<std::net::SocketAddr> {
    let file = data.join(NODE_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "reading {} (is a node running with --data {}? or name one with --node URL)",
            file.display(),
            data.display()
        )
    })?;
    let node: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
    node["http"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .with_context(|| format!("{} names no HTTP address", file.display()))
}

/// One request to a node: the status and the body, through [`nublar_client`].
pub fn http_request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let answer = send(
        &format!("http://{address}"),
        None,
        method,
        path,
        token,
        body,
    )?;
    Ok((answer.status.as_u16(), answer.text()))
}

/// Where a node answers `nublar log` commands (admin scope).
pub const OPERATOR_PATH: &str = "/api/v1/admin/log";

fn open_read_only(dir: &Path) -> anyhow::Result<Log> {
    let options = OpenOptions {
        read_only: true,
        background: false,
        ..OpenOptions::default()
    };
    Log::open_with(dir, options).with_context(|| format!("opening the log in {}", dir.display()))
}

fn topics(log: &Log, out: &mut String) -> anyhow::Result<()> {
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
    Ok(())
}

fn describe(log: &Log, topic: &str, out: &mut String) -> anyhow::Result<()> {
    let config = log
        .topic_config(topic)
        .with_context(|| format!("unknown topic {topic:?}"))?;
    writeln!(out, "topic {topic}")?;
    writeln!(out, "{}", serde_json::to_string_pretty(&config)?)?;
    let groups = log.groups();
    for partition in 0..config.partitions {
        let info = log.partition_info(topic, partition)?;
        writeln!(
            out,
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
        )?;
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
                writeln!(out, "  group {group}{required}: committed {committed}{lag}")?;
            }
        }
    }
    Ok(())
}

fn tail(
    log: &Log,
    topic: &str,
    partition: u32,
    lines: i64,
    out: &mut String,
) -> anyhow::Result<()> {
    let end = log.end_offset(topic, partition)?;
    let start = (end - lines.max(0)).max(log.start_offset(topic, partition)?);
    let mut offset = start;
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
                    if out.len() > ANSWER_BYTES_MAX {
                        writeln!(
                            out,
                            "... stopped at offset {} after {ANSWER_BYTES_MAX} bytes; ask for \
                             fewer lines, or `nublar log dump {topic} -p {partition} --from {} \
                             --records`",
                            record.offset, record.offset
                        )?;
                        return Ok(());
                    }
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
    batches_max: u64,
    with_records: bool,
    out: &mut String,
) -> anyhow::Result<()> {
    let mut offset = match from {
        Some(offset) => offset,
        None => log.start_offset(topic, partition)?,
    };
    let end = log.end_offset(topic, partition)?;
    let mut printed = 0;
    while offset < end && printed < batches_max {
        let batches = log.read(topic, partition, offset, 1 << 20)?;
        let Some(next) = batches.next_offset() else {
            break;
        };
        for view in batches.iter() {
            if printed == batches_max {
                break;
            }
            if out.len() > ANSWER_BYTES_MAX {
                writeln!(
                    out,
                    "... stopped at offset {} after {ANSWER_BYTES_MAX} bytes; go on with --from {}",
                    view.base_offset(),
                    view.base_offset()
                )?;
                return Ok(());
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
    // An event in the stored layout is shown as the line protocol it stands for.
    match nublar_model::stored::is_stored_layout(record.value)
        .then(|| nublar_model::stored::display(record.value))
        .flatten()
    {
        Some(text) => {
            let _ = write!(line, " {}", printable(text.as_bytes()));
        }
        None => {
            let _ = write!(line, " {}", printable(record.value));
        }
    }
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
