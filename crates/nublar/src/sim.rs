//! `nublar sim`: the park simulator as a load generator. The park and its
//! events come from `nublar-sim`; this module paces them, sends them over
//! HTTP (keep-alive, several connections, resending a failed batch with the
//! same Idempotency-Key) or UDP, shows progress and prints a summary.
//!
//! With `--bind-prefix` every body holds the lines of one sensor and is sent
//! from that sensor's own IPv6 address, so that a gateway's prefix allow-list
//! sees the addresses a real fleet would send from. Each sender keeps a small
//! least-recently-used cache of sockets bound to sensor addresses: thousands
//! of sensors then share a bounded number of file descriptors.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use nublar_sim::{Generator, GeneratorConfig, Park, ParkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Mutex;

use crate::failover::{BfdOptions, Monitor, Targets};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Http,
    Udp,
}

#[derive(Args)]
pub struct SimArgs {
    /// Where to send: `http://host:port` (HTTP) or `host:port` (UDP). Repeatable: the
    /// simulator sends to one gateway while it works and moves to the next when a request to
    /// it fails (connection error or --http-timeout), or with --bfd as soon as its BFD session
    /// goes Down; a batch not acknowledged is sent again with the same Idempotency-Key.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Seconds to wait for a gateway to connect, or to answer a request, before giving up on
    /// it (and moving to the next --target).
    #[arg(long, default_value_t = 10.0)]
    http_timeout: f64,
    /// Run a BFD session (RFC 5880/5881) to every target's host and send only to a gateway
    /// whose session is Up: a frozen or dead gateway is left within the detection time
    /// (interval x multiplier) instead of --http-timeout. A gateway that sets its session
    /// AdminDown (a node draining on SIGTERM) is left too, counted as a drain. The gateways
    /// must answer BFD from this host's address (`[bfd] accept_from` or a configured peer).
    #[arg(long)]
    bfd: bool,
    /// The BFD port, where the gateways listen and where this simulator listens (RFC 5881:
    /// 3784). Another port only makes sense for tests on one host.
    #[arg(long, default_value_t = nublar_bfd::limits::SINGLE_HOP_CONTROL_PORT)]
    bfd_port: u16,
    /// This host's address for the BFD sessions (and its receive socket); by default the
    /// address the routing table picks towards each target.
    #[arg(long)]
    bfd_local: Option<std::net::IpAddr>,
    /// Desired transmit and required receive interval of the BFD sessions, in milliseconds.
    #[arg(long, default_value_t = 50)]
    bfd_interval_ms: u32,
    /// BFD detect multiplier: missed packets before a gateway counts as dead.
    #[arg(long, default_value_t = 3)]
    bfd_multiplier: u8,
    /// Also write the summary as JSON to this file: counts, errors, latency, failovers with
    /// the gap each cost, and the Idempotency-Keys of batches sent to a second gateway.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Database (bucket) to write to.
    #[arg(long, default_value = "park")]
    db: String,
    /// Sensors in the park (collars make up what the stations, fences and gates do not).
    #[arg(long, default_value_t = 1000)]
    sensors: usize,
    /// Events per second to send; 0 sends as fast as the targets acknowledge.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds to run (ignored with --events).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Events to send in all, instead of a duration.
    #[arg(long)]
    events: Option<u64>,
    /// Lines per request (HTTP) or per datagram at most (UDP, also bounded by 60 KB).
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// HTTP connections sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, value_enum, default_value = "http")]
    protocol: Protocol,
    /// Seed of the park and of its events: the same seed sends the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Token sent as `Authorization: Token <token>`.
    #[arg(long, env = "NUBLAR_TOKEN")]
    token: Option<String>,
    /// Add an integer field of this name with a value unique to every event.
    #[arg(long)]
    unique_field: Option<String>,
    /// Seconds into the run when an animal walks out and its fence loses voltage.
    #[arg(long)]
    stage_breach: Option<f64>,
    /// Seconds into the run when a weather station stops sending.
    #[arg(long)]
    stage_silence: Option<f64>,
    /// Share (0 to 1) of lines made malformed.
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Share of events sent twice.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of events whose timestamp moves back (up to a minute).
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// IPv6 prefix of the sensors' addresses (carried in the data).
    #[arg(long, default_value = "2001:db8:7::/48")]
    prefix: String,
    /// Send every request or datagram from the IPv6 address of the sensor whose lines it
    /// carries, so that a gateway's prefix allow-list is tested with real source addresses.
    /// Bodies then hold one sensor's lines each (held about a second at most for more of
    /// its own), targets must be IPv6 addresses, and the sensors' prefix must be routed to
    /// this host, for instance `ip -6 route add local 2001:db8:7::/48 dev lo`: sockets are
    /// bound with IPV6_FREEBIND, so the addresses need not be assigned one by one, but the
    /// answers must come back here. At most 256 connections (or UDP sockets) are open at
    /// once, reused per address and closed least recently used first.
    #[arg(long)]
    bind_prefix: bool,
    /// Read the park from this GeoJSON file instead of generating it.
    #[arg(long)]
    park: Option<PathBuf>,
    /// Write the park as GeoJSON to this file (and stop, unless targets are given).
    #[arg(long)]
    park_out: Option<PathBuf>,
    /// Write the line protocol to this file instead of sending it.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let park = match &args.park {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Park::from_geojson(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => {
            let config = ParkConfig {
                seed: args.seed,
                ipv6_prefix: args
                    .prefix
                    .parse()
                    .map_err(|error| anyhow::anyhow!("--prefix: {error}"))?,
                ..ParkConfig::default()
            }
            .with_sensors(args.sensors);
            Park::generate(&config)?
        }
    };
    if let Some(path) = &args.park_out {
        std::fs::write(path, park.to_geojson())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote the park ({} sensors) to {}",
            park.sensor_count(),
            path.display()
        );
        if args.targets.is_empty() && args.out.is_none() {
            return Ok(());
        }
    }
    if args.out.is_some() && args.events.is_none() && args.rate == 0 {
        bail!("--out with --rate 0 needs --events: a file has no acknowledgements to pace it");
    }
    let start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    let rate_for_clock = if args.rate == 0 { 100_000 } else { args.rate };
    let at = |seconds: Option<f64>| seconds.map(|seconds| start_ns + (seconds * 1e9) as i64);
    let config = GeneratorConfig {
        seed: args.seed,
        start_ns,
        events_per_second: rate_for_clock,
        unique_field: args.unique_field.clone(),
        stage_breach_at_ns: at(args.stage_breach),
        stage_silence_at_ns: at(args.stage_silence),
        malformed_share: args.malformed,
        duplicate_share: args.duplicates,
        out_of_order_share: args.out_of_order,
        ..GeneratorConfig::default()
    };
    let mut generator = Generator::new(park, config)?;
    // --events bounds the count; otherwise the duration bounds the time (and,
    // at a fixed rate, the count too).
    let total = match (args.events, args.rate) {
        (Some(events), _) => events,
        (None, 0) => u64::MAX,
        (None, rate) => (rate as f64 * args.duration) as u64,
    };
    let deadline = args
        .events
        .is_none()
        .then(|| Duration::from_secs_f64(args.duration));

    if let Some(path) = &args.out {
        let mut out = BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        let written = nublar_sim::write_lines(&mut generator, total, &mut out)?;
        out.flush()?;
        eprintln!("wrote {written} lines to {}", path.display());
        return Ok(());
    }
    if args.targets.is_empty() {
        bail!("nothing to do: give --target URL (repeatable), --out FILE or --park-out FILE");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(send(args, generator, total, deadline))
}

/// One request's worth of lines.
struct Body {
    bytes: Vec<u8>,
    lines: u64,
    malformed: u64,
    sequence: u64,
    /// With `--bind-prefix`, the one sensor whose lines these are and whose address sends them.
    sender: Option<Ipv6Addr>,
}

impl Body {
    fn new(sender: Option<Ipv6Addr>) -> Body {
        Body {
            bytes: Vec::new(),
            lines: 0,
            malformed: 0,
            sequence: 0,
            sender,
        }
    }

    /// Appends one event's line, twice when the event is a planned duplicate.
    fn push(&mut self, line: &[u8], duplicate: bool, malformed: bool) {
        let copies = if duplicate { 2 } else { 1 };
        for _ in 0..copies {
            self.bytes.extend_from_slice(line);
            self.lines += 1;
            self.malformed += u64::from(malformed);
        }
    }
}

/// When the producer must stop and how fast it may go.
#[derive(Clone, Copy)]
struct Pace {
    started: Instant,
    /// Events per second; 0 for as fast as the senders take bodies.
    rate: u64,
    total: u64,
    deadline: Option<Duration>,
}

impl Pace {
    fn running(&self, produced: u64) -> bool {
        produced < self.total
            && self
                .deadline
                .is_none_or(|deadline| self.started.elapsed() < deadline)
    }

    /// Sleeps until `produced` events are due.
    fn wait(&self, produced: u64) {
        if self.rate > 0 {
            let due = Duration::from_secs_f64(produced as f64 / self.rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// Bodies of up to `batch` lines with every sensor's lines mixed: one client sending for
/// the whole park.
fn produce_mixed(
    generator: &mut Generator,
    batch: usize,
    pace: Pace,
    queue: &tokio::sync::mpsc::Sender<Body>,
) {
    let mut produced = 0u64;
    let mut sequence = 0u64;
    let mut line = Vec::with_capacity(256);
    while pace.running(produced) {
        let mut body = Body::new(None);
        body.sequence = sequence;
        while body.lines < batch as u64 && produced < pace.total {
            let Some(event) = generator.next_event() else {
                break;
            };
            line.clear();
            event.write(&mut line);
            body.push(&line, event.faults.duplicate, event.is_malformed());
            produced += 1;
        }
        if body.lines == 0 {
            break;
        }
        pace.wait(produced);
        sequence += 1;
        if queue.blocking_send(body).is_err() {
            break;
        }
    }
}

/// How long a sensor's lines wait for more of its own before they are sent anyway: a
/// sensor reporting now and then still sends within a second, not only when its body fills.
const SENDER_HOLD: Duration = Duration::from_secs(1);

/// Bodies of one sensor each (`--bind-prefix`): a body goes out when it holds `batch`
/// lines, and every body held goes out when the oldest has waited [`SENDER_HOLD`], when
/// all held together reach the simulator's bound on held lines, and at the end of the run.
/// The generator is paced in steps of `batch` events, as in the mixed case, but of at most
/// a second's events, so that the hold is checked at least about once a second.
fn produce_by_sender(
    generator: &mut Generator,
    batch: usize,
    pace: Pace,
    queue: &tokio::sync::mpsc::Sender<Body>,
) {
    let mut produced = 0u64;
    let mut sequence = 0u64;
    let mut line = Vec::with_capacity(256);
    // Ordered by address, so that the same seed sends the same bodies in the same order.
    let mut held = BTreeMap::<Ipv6Addr, Body>::new();
    let mut held_lines = 0u64;
    let mut held_since = Instant::now();
    let mut ready = Vec::new();
    let mut ended = false;
    let step = match pace.rate {
        0 => batch as u64,
        rate => (batch as u64).min(rate),
    }
    .max(1);
    while !ended {
        let step_end = produced.saturating_add(step).min(pace.total);
        while produced < step_end {
            let Some(event) = generator.next_event() else {
                ended = true;
                break;
            };
            line.clear();
            event.write(&mut line);
            if held.is_empty() {
                held_since = Instant::now();
            }
            let body = held
                .entry(event.sender)
                .or_insert_with(|| Body::new(Some(event.sender)));
            let before = body.lines;
            body.push(&line, event.faults.duplicate, event.is_malformed());
            held_lines += body.lines - before;
            if body.lines >= batch as u64 {
                held_lines -= body.lines;
                ready.extend(held.remove(&event.sender));
            }
            produced += 1;
        }
        ended |= !pace.running(produced);
        if ended
            || held_lines >= nublar_sim::limits::BATCHER_PENDING_LINES_MAX as u64
            || held_since.elapsed() >= SENDER_HOLD
        {
            ready.extend(std::mem::take(&mut held).into_values());
            held_lines = 0;
        }
        pace.wait(produced);
        for mut body in ready.drain(..) {
            body.sequence = sequence;
            sequence += 1;
            if queue.blocking_send(body).is_err() {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    sent_lines: AtomicU64,
    acknowledged_lines: AtomicU64,
    requests: AtomicU64,
}

async fn send(
    args: SimArgs,
    mut generator: Generator,
    total: u64,
    deadline: Option<Duration>,
) -> anyhow::Result<()> {
    let targets: Vec<SocketAddr> = args
        .targets
        .iter()
        .map(|target| parse_target(target))
        .collect::<anyhow::Result<_>>()?;
    if args.bind_prefix {
        // A socket bound to a sensor's IPv6 address can reach IPv6 destinations only.
        for (target, address) in args.targets.iter().zip(&targets) {
            if !is_plain_ipv6(address) {
                bail!(
                    "--bind-prefix sends from the sensors' IPv6 addresses, so every --target \
                     must be an IPv6 address such as http://[2001:db8::1]:8086, not {target:?}"
                );
            }
        }
    }
    anyhow::ensure!(
        args.http_timeout > 0.0 && args.http_timeout.is_finite(),
        "--http-timeout must be a positive number of seconds"
    );
    let http_timeout = Duration::from_secs_f64(args.http_timeout);
    let targets = Arc::new(Targets::new(targets, args.bfd));
    let monitor = if args.bfd {
        let options = BfdOptions {
            port: args.bfd_port,
            local: args.bfd_local,
            interval: Duration::from_millis(u64::from(args.bfd_interval_ms)),
            multiplier: args.bfd_multiplier,
        };
        let monitor = Monitor::start(targets.clone(), options).await?;
        // The sessions start at the slow rate of one packet a second (RFC 5880 section
        // 6.8.3), so the first comes Up after a second or two.
        if targets.wait_active(BFD_FIRST_UP_WAIT).await.is_none() {
            monitor.stop().await;
            bail!(
                "no BFD session to any target came Up within {} s: do the gateways run BFD \
                 and answer this host (`[bfd] accept_from`)?",
                BFD_FIRST_UP_WAIT.as_secs()
            );
        }
        targets.settle(BFD_SETTLE_WAIT).await;
        Some(monitor)
    } else {
        None
    };
    let run_id = format!("sim-{}-{}", args.seed, std::process::id());
    let (queue, receiver) = tokio::sync::mpsc::channel::<Body>(args.concurrency.max(1) * 2);
    let receiver = Arc::new(Mutex::new(receiver));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let resent = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();

    // The generator runs on its own thread and paces the bodies it makes.
    let batch = if args.protocol == Protocol::Udp {
        args.batch.min(500)
    } else {
        args.batch
    };
    let rate = args.rate;
    let bind_prefix = args.bind_prefix;
    let producer = std::thread::spawn(move || {
        let pace = Pace {
            started,
            rate,
            total,
            deadline,
        };
        if bind_prefix {
            produce_by_sender(&mut generator, batch, pace, &queue);
        } else {
            produce_mixed(&mut generator, batch, pace, &queue);
        }
    });

    let progress = {
        let tally = tally.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            if !std::io::stderr().is_terminal() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let acknowledged = tally.acknowledged_lines.load(Ordering::Relaxed);
                let failed: u64 = errors.lock().unwrap().values().sum();
                eprint!(
                    "\r{:>10.0} events/s  acknowledged {:>12}  errors {:>6}   ",
                    acknowledged as f64 / started.elapsed().as_secs_f64(),
                    acknowledged,
                    failed
                );
            }
        })
    };

    let mut workers = Vec::new();
    // The bound on sockets bound to sensor addresses holds over all workers together (with
    // more workers than the bound, each keeps one).
    let sockets_per_worker = (SOURCE_SOCKETS_MAX / args.concurrency.max(1)).max(1);
    for _ in 0..args.concurrency.max(1) {
        let receiver = receiver.clone();
        let tally = tally.clone();
        let errors = errors.clone();
        let latency = latency.clone();
        let targets = targets.clone();
        let resent = resent.clone();
        let db = args.db.clone();
        let token = args.token.clone();
        let run_id = run_id.clone();
        let protocol = args.protocol;
        let bind_prefix = args.bind_prefix;
        workers.push(tokio::spawn(async move {
            let mut sender = match (protocol, bind_prefix) {
                (Protocol::Http, false) => Sender::Http(
                    (0..targets.len())
                        .map(|index| HttpSender::new(targets.address(index), None, http_timeout))
                        .collect(),
                ),
                (Protocol::Udp, false) => {
                    let mut sockets = Vec::new();
                    for index in 0..targets.len() {
                        let any = if targets.address(index).is_ipv6() {
                            "[::]:0"
                        } else {
                            "0.0.0.0:0"
                        };
                        sockets.push(UdpSocket::bind(any).await?);
                    }
                    Sender::Udp(sockets)
                }
                (Protocol::Http, true) => {
                    Sender::HttpFrom(SourceCache::new(sockets_per_worker), http_timeout)
                }
                (Protocol::Udp, true) => Sender::UdpFrom(SourceCache::new(sockets_per_worker)),
            };
            loop {
                let Some(body) = receiver.lock().await.recv().await else {
                    return anyhow::Ok(());
                };
                tally.sent_lines.fetch_add(body.lines, Ordering::Relaxed);
                let key = format!("{run_id}-{}", body.sequence);
                let sent = Instant::now();
                let job = Job {
                    db: &db,
                    token: token.as_deref(),
                    key: &key,
                    body: &body.bytes,
                    source: body.sender,
                };
                let outcome = deliver(&mut sender, &targets, &job, &errors, &resent).await;
                latency
                    .lock()
                    .unwrap()
                    .record(sent.elapsed().as_micros() as u64)
                    .ok();
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let acknowledged = match outcome {
                    Delivery::All => body.lines,
                    Delivery::Partial => body.lines - body.malformed,
                    Delivery::Sent | Delivery::Failed => 0,
                };
                tally
                    .acknowledged_lines
                    .fetch_add(acknowledged, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    if let Some(monitor) = monitor {
        monitor.stop().await;
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let sent = tally.sent_lines.load(Ordering::Relaxed);
    let acknowledged = tally.acknowledged_lines.load(Ordering::Relaxed);
    let latency = latency.lock().unwrap();
    println!(
        "nublar sim: {sent} events sent, {} acknowledged in {elapsed:.1} s ({:.0} acknowledged events/s), {} requests",
        if args.protocol == Protocol::Udp {
            "none".to_string()
        } else {
            acknowledged.to_string()
        },
        acknowledged as f64 / elapsed,
        tally.requests.load(Ordering::Relaxed),
    );
    println!(
        "request latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.9) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0
    );
    let report = targets.report();
    let resent = resent.lock().unwrap();
    if targets.len() > 1 {
        let mut gaps: Vec<f64> = report
            .gaps
            .iter()
            .map(|gap| gap.as_secs_f64() * 1000.0)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            gaps.get(((gaps.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "failover: {} failovers, {} drains, {} batches resent to another gateway; \
             gap from the last acknowledgement by the old gateway to the first by the new: \
             p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            report.failovers,
            report.drains,
            resent.len(),
            quantile(0.5),
            quantile(0.99),
            gaps.last().copied().unwrap_or(0.0),
        );
    }
    let errors = errors.lock().unwrap();
    if errors.is_empty() {
        println!("errors: none");
    } else {
        let listed: Vec<String> = errors
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect();
        println!("errors: {}", listed.join(", "));
    }
    if let Some(path) = &args.summary_json {
        let milliseconds = |micros: u64| micros as f64 / 1000.0;
        let summary = serde_json::json!({
            "sent": sent,
            "acknowledged": acknowledged,
            "requests": tally.requests.load(Ordering::Relaxed),
            "seconds": elapsed,
            "latency_ms": {
                "p50": milliseconds(latency.value_at_quantile(0.5)),
                "p90": milliseconds(latency.value_at_quantile(0.9)),
                "p99": milliseconds(latency.value_at_quantile(0.99)),
                "max": milliseconds(latency.max()),
            },
            "errors": *errors,
            "failovers": report.failovers,
            "drains": report.drains,
            "failover_gaps_ms": report
                .gaps
                .iter()
                .map(|gap| gap.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
            "resent_keys": *resent,
        });
        std::fs::write(path, format!("{summary:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn parse_target(target: &str) -> anyhow::Result<SocketAddr> {
    let address = target.strip_prefix("http://").unwrap_or(target);
    let address = address.split('/').next().unwrap_or(address);
    address.parse().with_context(|| {
        format!("--target {target:?}: expected http://host:port with an IP address")
    })
}

enum Delivery {
    /// 204: every line stored.
    All,
    /// 400 for the malformed lines only: the valid ones stored.
    Partial,
    /// UDP: sent, nothing acknowledged.
    Sent,
    Failed,
}

/// Whether a target is an IPv6 address that is not IPv4-mapped (`[::ffff:192.0.2.1]` is
/// reached over IPv4, which a socket bound to an IPv6 source address cannot do).
fn is_plain_ipv6(address: &SocketAddr) -> bool {
    match address {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_none(),
        SocketAddr::V4(_) => false,
    }
}

/// Sockets bound to sensor addresses open at once over all workers (`--bind-prefix`): enough
/// to keep the busiest sensors' connections alive, few enough for any file descriptor limit.
const SOURCE_SOCKETS_MAX: usize = 256;

enum Sender {
    /// One keep-alive connection per target.
    Http(Vec<HttpSender>),
    /// One socket per target.
    Udp(Vec<UdpSocket>),
    /// `--bind-prefix`: one keep-alive connection per sensor address and target, least
    /// recently used closed first.
    HttpFrom(SourceCache<(Ipv6Addr, usize), HttpSender>, Duration),
    /// `--bind-prefix`: one socket bound per sensor address.
    UdpFrom(SourceCache<Ipv6Addr, UdpSocket>),
}

/// One body to deliver.
struct Job<'a> {
    db: &'a str,
    token: Option<&'a str>,
    key: &'a str,
    body: &'a [u8],
    /// With `--bind-prefix`, the sensor address it is sent from.
    source: Option<Ipv6Addr>,
}

/// What one try to one gateway came to.
enum Attempt {
    Answered(u16),
    /// No answer: the connection failed or the gateway did not answer in time.
    Broken(std::io::Error),
    /// UDP: sent, nothing acknowledged.
    Sent,
    /// The sensor's address could not be bound (`--bind-prefix`).
    Unbindable(std::io::Error),
}

/// Tries for one body at most, and for at most this long in all.
const DELIVERY_ATTEMPTS_MAX: u32 = 16;
const DELIVERY_TIME_MAX: Duration = Duration::from_secs(60);
/// The first BFD session must come Up within this, or the run stops with a reason.
const BFD_FIRST_UP_WAIT: Duration = Duration::from_secs(15);
/// After the first session is Up, how long the others get to come Up too before sending
/// starts: sessions come Up within about two slow-rate packets of each other.
const BFD_SETTLE_WAIT: Duration = Duration::from_secs(3);

/// Delivers a body to the active gateway, and again to the next one when that one fails
/// before answering (BFD Down, connection error, time-out), with the same Idempotency-Key:
/// the gateway that already stored it answers from its key window, another stores a copy that
/// carries the key. Busy answers (5xx) are retried with backoff. Bounded in tries and time.
async fn deliver(
    sender: &mut Sender,
    targets: &Targets,
    job: &Job<'_>,
    errors: &std::sync::Mutex<BTreeMap<String, u64>>,
    resent: &std::sync::Mutex<Vec<String>>,
) -> Delivery {
    let count = |kind: String| *errors.lock().unwrap().entry(kind).or_default() += 1;
    let started = Instant::now();
    let mut previous: Option<usize> = None;
    for attempt in 0..DELIVERY_ATTEMPTS_MAX {
        let left = DELIVERY_TIME_MAX.saturating_sub(started.elapsed());
        let Some(index) = targets.wait_active(left).await else {
            count("no gateway usable".into());
            return Delivery::Failed;
        };
        if previous.is_some_and(|previous| previous != index) {
            let mut resent = resent.lock().unwrap();
            if resent.last().map(String::as_str) != Some(job.key) {
                resent.push(job.key.to_owned());
            }
        }
        previous = Some(index);
        let outcome = tokio::select! {
            outcome = sender.attempt(index, targets.address(index), job) => outcome,
            () = targets.lost(index) => {
                // The request may be half written: the connection cannot be reused.
                sender.reset(index, job.source);
                count("bfd: gateway down".into());
                continue;
            }
        };
        match outcome {
            Attempt::Answered(status @ (204 | 400)) => {
                targets.acknowledged(index, Instant::now());
                return if status == 204 {
                    Delivery::All
                } else {
                    Delivery::Partial
                };
            }
            Attempt::Answered(status) if status >= 500 => count(format!("http {status}")),
            Attempt::Answered(status) => {
                count(format!("http {status}"));
                return Delivery::Failed;
            }
            Attempt::Sent => return Delivery::Sent,
            Attempt::Unbindable(error) => {
                count(format!("bind: {}", error.kind()));
                return Delivery::Failed;
            }
            Attempt::Broken(error) => {
                count(format!("connection: {}", error.kind()));
                targets.failed(index);
            }
        }
        if targets.active() == Some(index) {
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
        }
    }
    Delivery::Failed
}

impl Sender {
    /// One try of `job` to the gateway `index` at `target`.
    async fn attempt(&mut self, index: usize, target: SocketAddr, job: &Job<'_>) -> Attempt {
        let answered = |result: std::io::Result<u16>| match result {
            Ok(status) => Attempt::Answered(status),
            Err(error) => Attempt::Broken(error),
        };
        match self {
            Sender::Udp(sockets) => send_datagrams(&sockets[index], target, job.body).await,
            Sender::UdpFrom(sockets) => {
                let source = job
                    .source
                    .expect("bodies are grouped by sender with --bind-prefix");
                match sockets.get_or_open(source, || udp_socket_from(source)) {
                    Ok(socket) => send_datagrams(socket, target, job.body).await,
                    Err(error) => Attempt::Unbindable(error),
                }
            }
            Sender::Http(connections) => answered(connections[index].post(job).await),
            Sender::HttpFrom(connections, timeout) => {
                let source = job
                    .source
                    .expect("bodies are grouped by sender with --bind-prefix");
                // Connecting is lazy (in `HttpSender::exchange`), so opening cannot fail here.
                let http = connections
                    .get_or_open((source, index), || {
                        Ok(HttpSender::new(target, Some(source), *timeout))
                    })
                    .expect("creating an HttpSender does not fail");
                answered(http.post(job).await)
            }
        }
    }

    /// Drops the connection to gateway `index` (for `source`), after a try was abandoned.
    fn reset(&mut self, index: usize, source: Option<Ipv6Addr>) {
        match self {
            Sender::Http(connections) => connections[index].stream = None,
            Sender::HttpFrom(connections, _) => {
                if let Some(source) = source {
                    connections.entries.remove(&(source, index));
                }
            }
            Sender::Udp(_) | Sender::UdpFrom(_) => {}
        }
    }
}

/// Sends a body as datagrams under 60 KB each, split at line ends.
async fn send_datagrams(socket: &UdpSocket, target: SocketAddr, body: &[u8]) -> Attempt {
    let mut rest = body;
    while !rest.is_empty() {
        let mut cut = rest.len().min(60_000);
        if cut < rest.len() {
            cut = rest[..cut]
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(cut, |at| at + 1);
        }
        if let Err(error) = socket.send_to(&rest[..cut], target).await {
            return Attempt::Broken(error);
        }
        rest = &rest[cut..];
    }
    Attempt::Sent
}

/// Sockets or connections keyed by the sensor address they are bound to, at most
/// `capacity` at once: to make room, the least recently used one is dropped, which closes
/// it. Eviction scans every entry, which at a few hundred entries costs far less than the
/// connection about to be opened.
struct SourceCache<K, T> {
    capacity: usize,
    /// Counts uses; an entry's stamp is the count at its last use.
    clock: u64,
    entries: HashMap<K, (u64, T)>,
}

impl<K: Copy + Eq + std::hash::Hash, T> SourceCache<K, T> {
    fn new(capacity: usize) -> SourceCache<K, T> {
        SourceCache {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The entry for `address`, opened with `open` when there is none.
    fn get_or_open(
        &mut self,
        address: K,
        open: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<&mut T> {
        self.clock += 1;
        if !self.entries.contains_key(&address) {
            // Close first, so that no more than `capacity` are ever open.
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (used, _))| *used)
                    .map(|(address, _)| *address)
            {
                self.entries.remove(&oldest);
            }
            let opened = open()?;
            self.entries.insert(address, (self.clock, opened));
        }
        let (used, entry) = self
            .entries
            .get_mut(&address)
            .expect("present or inserted above");
        *used = self.clock;
        Ok(entry)
    }
}

/// Lets a socket bind to an address this host does not have assigned. The sensors'
/// addresses are routed here as a whole prefix (`ip -6 route add local PREFIX dev lo`),
/// which answers for every address in it, but Linux lets an IPv6 socket bind only to
/// assigned addresses unless the socket is free-binding (or `net.ipv6.ip_nonlocal_bind` is
/// set for the whole namespace, which a load generator should not need).
fn set_freebind(socket: impl AsFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open for the duration of the call (borrowed), and the option
    // value points at a c_int of the length given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A non-blocking UDP socket bound to `source` (any port). Built with libc because neither
/// std nor tokio can set a socket option between creating a UDP socket and binding it.
fn udp_socket_from(source: Ipv6Addr) -> std::io::Result<UdpSocket> {
    // SAFETY: socket() takes no pointers; a negative result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a socket just created and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_freebind(&fd)?;
    // SAFETY: sockaddr_in6 is plain data for which all zeroes is a valid value.
    let mut address: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    address.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    address.sin6_addr.s6_addr = source.octets();
    // SAFETY: the pointer and length describe `address`, a sockaddr_in6 alive for the call.
    let result = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// A keep-alive HTTP/1.1 connection to one gateway, reopened when it breaks.
struct HttpSender {
    target: SocketAddr,
    /// With `--bind-prefix`, the sensor address the connection is made from.
    source: Option<Ipv6Addr>,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
    /// For connecting, and for the answer to each request.
    timeout: Duration,
}

impl HttpSender {
    fn new(target: SocketAddr, source: Option<Ipv6Addr>, timeout: Duration) -> HttpSender {
        HttpSender {
            target,
            source,
            stream: None,
            buffer: Vec::with_capacity(64 * 1024),
            timeout,
        }
    }

    async fn post(&mut self, job: &Job<'_>) -> std::io::Result<u16> {
        let result = self.exchange(job.db, job.token, job.key, job.body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        db: &str,
        token: Option<&str>,
        key: &str,
        body: &[u8],
    ) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let connect = async {
                match self.source {
                    None => TcpStream::connect(self.target).await,
                    Some(source) => {
                        let socket = TcpSocket::new_v6()?;
                        set_freebind(&socket)?;
                        socket.bind(SocketAddr::from((source, 0)))?;
                        socket.connect(self.target).await
                    }
                }
            };
            let stream = tokio::time::timeout(self.timeout, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut head = format!(
            "POST /api/v3/write_lp?db={db}&precision=ns HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nIdempotency-Key: {key}\r\n",
            self.target,
            body.len()
        );
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Token {token}\r\n"));
        }
        head.push_str("\r\n");
        let exchange = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            read_response(stream, &mut self.buffer).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
    }
}

/// Reads one response (status line, headers, a Content-Length body) and
/// returns its status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    buffer.clear();
    let broken = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > 64 * 1024 {
            return Err(broken("response headers too long"));
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head =
        std::str::from_utf8(&buffer[..header_end]).map_err(|_| broken("response is not text"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| broken("no status"))?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut left = (header_end + length).saturating_sub(buffer.len());
    while left > 0 {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk[..left.min(4096)]).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        left -= read;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_cache_keeps_at_most_its_capacity_and_drops_the_least_recently_used() {
        let mut cache = SourceCache::new(2);
        let address = |host: u16| Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, host);
        let mut opened = Vec::new();
        let mut use_address = |cache: &mut SourceCache<Ipv6Addr, u16>, host: u16| {
            *cache
                .get_or_open(address(host), || {
                    opened.push(host);
                    Ok(host)
                })
                .unwrap()
        };
        assert_eq!(use_address(&mut cache, 1), 1);
        assert_eq!(use_address(&mut cache, 2), 2);
        // 1 is used again, so 2 is the least recently used when 3 needs room.
        assert_eq!(use_address(&mut cache, 1), 1);
        assert_eq!(use_address(&mut cache, 3), 3);
        assert_eq!(cache.entries.len(), 2);
        assert!(cache.entries.contains_key(&address(1)));
        assert!(!cache.entries.contains_key(&address(2)));
        assert_eq!(use_address(&mut cache, 2), 2);
        assert_eq!(opened, [1, 2, 3, 2], "reused entries are not opened again");
    }

    #[test]
    fn a_failed_open_leaves_nothing_behind() {
        let mut cache = SourceCache::<Ipv6Addr, u16>::new(1);
        let address = Ipv6Addr::LOCALHOST;
        let failed =
            cache.get_or_open(address, || Err(std::io::ErrorKind::AddrNotAvailable.into()));
        assert!(failed.is_err());
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn bind_prefix_targets_must_be_plain_ipv6() {
        assert!(is_plain_ipv6(&"[2001:db8::1]:8086".parse().unwrap()));
        assert!(!is_plain_ipv6(&"127.0.0.1:8086".parse().unwrap()));
        assert!(!is_plain_ipv6(&"[::ffff:127.0.0.1]:8086".parse().unwrap()));
    }
}
