//! `nublar bench memory`: a node's peak resident memory under the worst load its bounds
//! allow, beside the bound the documentation states.
//!
//! Every connection the node allows sends, again and again, the most expensive gzip body
//! it accepts, half of them line protocol and half JSON: bodies of events of fifty tiny
//! number fields, each of which takes several times its text in the log's stored layout,
//! and as many of them as make the largest batch a reader takes (one more event and the
//! body gets 413). What a request is charged grows with its text and its batch; no other
//! shape makes both as large within the limits. The
//! node runs its gateway and log only (lake and processors off: they have bounds of their
//! own), at its default limits apart from the connection bound. The benchmark samples the
//! node's resident set while the load runs and reads its high-water mark (`VmHWM`) at the
//! end, and compares it with the stated bound:
//!
//! `peak RSS <= RSS at start + http.in_flight_bytes_max + http.connections_max x 256 KiB`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::node_child::{Connection, start_node};

#[derive(Args)]
pub struct MemoryBenchArgs {
    /// Where to write; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Connections sending at once; the node's `http.connections_max` is set to it.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds the load runs.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Requests each connection sends at most.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// The node's `http.in_flight_bytes_max`.
    #[arg(long, default_value_t = nublar_ingest::IngestConfig::default().in_flight_bytes_max)]
    in_flight_bytes_max: usize,
    /// Events per body [default: the most whose batch a reader takes, 64 MiB in the log's
    /// stored layout; one more and the body gets 413].
    #[arg(long)]
    events: Option<usize>,
}

/// What the bound allows each connection besides its request: its read buffer
/// (`CONNECTION_BUFFER_BYTES_MAX`), what its response and socket hold, and one line's lists
/// of tags and fields.
pub const CONNECTION_BYTES: u64 = 256 * 1024;

pub fn run(args: MemoryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.seconds > 0.0 && args.requests > 0,
        "--connections, --seconds and --requests must be positive"
    );
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-memory-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    let config = root.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nconnections_max = {}\nin_flight_bytes_max = {}\n\
             [lake]\nenabled = false\n[processors]\nenabled = false\n",
            args.connections, args.in_flight_bytes_max
        ),
    )?;
    let (mut node, http) = start_node(
        &root.path().join("node"),
        &["--config", &config.to_string_lossy()],
    )?;
    let pid = node.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let at_start = status_kib(pid, "VmRSS")? * 1024;
    let events = match args.events {
        Some(events) => events,
        None => events_in_the_largest_batch()?,
    };
    let (line_protocol, json) = (worst_line_protocol(events), worst_json(events));
    let (line_protocol_gzip, json_gzip) = (gzip(&line_protocol)?, gzip(&json)?);
    println!("{}", crate::machine::machine_line());
    println!(
        "one node, gateway and log only: http.in_flight_bytes_max {} MiB, http.connections_max \
         {}, other limits at their defaults; {} connections send for {} s bodies of {} events \
         of 50 number fields: line protocol gzip {:.1} MiB of {:.1} MiB, JSON gzip {:.1} MiB \
         of {:.1} MiB",
        args.in_flight_bytes_max >> 20,
        args.connections,
        args.connections,
        args.seconds,
        events,
        mib(line_protocol_gzip.len() as u64),
        mib(line_protocol.len() as u64),
        mib(json_gzip.len() as u64),
        mib(json.len() as u64),
    );
    drop((line_protocol, json));
    let bodies = Arc::new([
        ("/api/v3/write_lp?db=memory", line_protocol_gzip),
        ("/api/v1/events?db=memory", json_gzip),
    ]);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let statuses: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let others: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..args.connections)
        .map(|index| {
            let (bodies, statuses, others) = (bodies.clone(), statuses.clone(), others.clone());
            let requests = args.requests;
            std::thread::spawn(move || {
                let mut connection = Connection::new(http);
                let (target, body) = &bodies[index % 2];
                for _ in 0..requests {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let answered = connection.request_with(
                        "POST",
                        target,
                        &[("Content-Encoding", "gzip")],
                        body,
                    );
                    let slot = match answered {
                        Ok((204, _)) => 0,
                        Ok((503, _)) => 1,
                        Ok((413, _)) => 2,
                        Ok((400, _)) => 3,
                        Ok((status, _)) => {
                            *others.lock().unwrap().entry(status).or_default() += 1;
                            4
                        }
                        Err(_) => 5,
                    };
                    statuses[slot].fetch_add(1, Ordering::Relaxed);
                    if slot == 1 {
                        // Retry-After is a second; a sender that honours it waits a little.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut highest = 0u64;
            while !done.load(Ordering::Relaxed) {
                highest = highest.max(status_kib(pid, "VmRSS").unwrap_or(0) * 1024);
                std::thread::sleep(Duration::from_millis(50));
            }
            highest
        })
    };
    for sender in senders {
        let _ = sender.join();
    }
    done.store(true, Ordering::Relaxed);
    let sampled = sampler.join().unwrap_or(0);
    let peak = status_kib(pid, "VmHWM")? * 1024;
    let bound =
        at_start + args.in_flight_bytes_max as u64 + args.connections as u64 * CONNECTION_BYTES;
    let counts: Vec<u64> = statuses
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    println!(
        "answers: {} stored (204), {} asked to come back (503), {} too large (413), {} \
         refused (400), {} other {:?}; {} requests ended by the node closing the connection \
         (an early 503 before the body was read)",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        others.lock().unwrap(),
        counts[5]
    );
    println!(
        "RSS at start {:.0} MiB; peak {:.0} MiB (highest sample {:.0} MiB); bound {:.0} MiB \
         = start + {} MiB in flight + {} connections x {} KiB: {}",
        mib(at_start),
        mib(peak),
        mib(sampled),
        mib(bound),
        args.in_flight_bytes_max >> 20,
        args.connections,
        CONNECTION_BYTES / 1024,
        if peak <= bound {
            "within it"
        } else {
            "PAST IT"
        }
    );
    node.terminate(Duration::from_secs(60))?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The fifty fields of an event, `f0` to `f49`, each a one-digit number: a few bytes of text
/// each, and thirteen in the log's stored layout.
fn field_names() -> Vec<String> {
    (0..50).map(|index| format!("f{index}")).collect()
}

fn line(time: u64) -> String {
    let fields: Vec<String> = field_names()
        .iter()
        .map(|name| format!("{name}=1"))
        .collect();
    format!("m {} {time}\n", fields.join(","))
}

/// How many such events make the largest batch a reader takes, with a margin for the
/// batch's headers.
fn events_in_the_largest_batch() -> anyhow::Result<usize> {
    let text = line(1_700_000_000_000_000_000);
    let (_, parsed) = nublar_model::parse_lines(
        text.as_bytes(),
        nublar_model::Precision::Ns,
        nublar_model::ParseLimits::default(),
    )
    .next()
    .context("a line")?;
    let mut stored = Vec::new();
    nublar_model::stored::encode(
        &parsed.map_err(|error| anyhow::anyhow!("{error}"))?,
        &mut stored,
    );
    // A record adds its length, attributes, deltas, key and header count.
    let record = stored.len() + 16;
    Ok((nublar_bus::BATCH_RECORDS_BYTES_MAX - (1 << 20)) / record)
}

/// `events` lines of line protocol.
fn worst_line_protocol(events: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for index in 0..events {
        body.extend_from_slice(line(1_700_000_000_000_000_000 + index as u64).as_bytes());
    }
    body
}

/// The same events as JSON, one per line.
fn worst_json(events: usize) -> Vec<u8> {
    let fields: Vec<String> = field_names()
        .iter()
        .map(|name| format!("\"{name}\":1"))
        .collect();
    let fields = fields.join(",");
    let mut body = Vec::new();
    for index in 0..events {
        let time = 1_700_000_000_000_000_000u64 + index as u64;
        body.extend_from_slice(
            format!("{{\"measurement\":\"m\",\"fields\":{{{fields}}},\"time\":{time}}}\n")
                .as_bytes(),
        );
    }
    body
}

fn gzip(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body)?;
    Ok(encoder.finish()?)
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, name: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {name} in /proc/{pid}/status"))
}
