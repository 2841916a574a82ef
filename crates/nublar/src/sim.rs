//! `nublar sim`: the park simulator as a load generator. The park and its
//! events come from `nublar-sim`; this module paces them, sends them over
//! HTTP (keep-alive, several connections, resending a failed batch with the
//! same Idempotency-Key) or UDP, shows progress and prints a summary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use nublar_sim::{Generator, GeneratorConfig, Park, ParkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Http,
    Udp,
}

#[derive(Args)]
pub struct SimArgs {
    /// Where to send: `http://host:port` (HTTP) or `host:port` (UDP). Repeatable;
    /// batches go to the targets in turn.
    #[arg(long = "target")]
    targets: Vec<String>,
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
            let base = ParkConfig::default();
            let fixed = base.habitats * base.weather_stations_per_habitat
                + base.habitats * base.paddocks_per_habitat * base.fence_segments_per_paddock
                + base.gates;
            let config = ParkConfig {
                seed: args.seed,
                animals: args.sensors.saturating_sub(fixed).max(1),
                ipv6_prefix: args
                    .prefix
                    .parse()
                    .map_err(|error| anyhow::anyhow!("--prefix: {error}"))?,
                ..base
            };
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
    let run_id = format!("sim-{}-{}", args.seed, std::process::id());
    let (queue, receiver) = tokio::sync::mpsc::channel::<Body>(args.concurrency.max(1) * 2);
    let receiver = Arc::new(Mutex::new(receiver));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let started = Instant::now();

    // The generator runs on its own thread and paces the bodies it makes.
    let batch = if args.protocol == Protocol::Udp {
        args.batch.min(500)
    } else {
        args.batch
    };
    let rate = args.rate;
    let producer = std::thread::spawn(move || {
        let mut produced = 0u64;
        let mut sequence = 0u64;
        let mut line = Vec::with_capacity(256);
        while produced < total && deadline.is_none_or(|deadline| started.elapsed() < deadline) {
            let mut body = Body {
                bytes: Vec::new(),
                lines: 0,
                malformed: 0,
                sequence,
            };
            while body.lines < batch as u64 && produced < total {
                let Some(event) = generator.next_event() else {
                    break;
                };
                line.clear();
                event.write(&mut line);
                let copies = if event.faults.duplicate { 2 } else { 1 };
                for _ in 0..copies {
                    body.bytes.extend_from_slice(&line);
                    body.lines += 1;
                    body.malformed += u64::from(event.is_malformed());
                }
                produced += 1;
            }
            if body.lines == 0 {
                break;
            }
            if rate > 0 {
                let due = Duration::from_secs_f64(produced as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            sequence += 1;
            if queue.blocking_send(body).is_err() {
                break;
            }
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
    for worker in 0..args.concurrency.max(1) {
        let receiver = receiver.clone();
        let tally = tally.clone();
        let errors = errors.clone();
        let latency = latency.clone();
        let target = targets[worker % targets.len()];
        let db = args.db.clone();
        let token = args.token.clone();
        let run_id = run_id.clone();
        let protocol = args.protocol;
        workers.push(tokio::spawn(async move {
            let mut sender = match protocol {
                Protocol::Http => Sender::Http(HttpSender::new(target)),
                Protocol::Udp => Sender::Udp(
                    tokio::net::UdpSocket::bind(if target.is_ipv6() {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    })
                    .await?,
                    target,
                ),
            };
            loop {
                let Some(body) = receiver.lock().await.recv().await else {
                    return anyhow::Ok(());
                };
                tally.sent_lines.fetch_add(body.lines, Ordering::Relaxed);
                let key = format!("{run_id}-{}", body.sequence);
                let sent = Instant::now();
                let outcome = sender
                    .deliver(&db, token.as_deref(), &key, &body.bytes, &errors)
                    .await;
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

enum Sender {
    Http(HttpSender),
    Udp(tokio::net::UdpSocket, SocketAddr),
}

impl Sender {
    async fn deliver(
        &mut self,
        db: &str,
        token: Option<&str>,
        key: &str,
        body: &[u8],
        errors: &std::sync::Mutex<BTreeMap<String, u64>>,
    ) -> Delivery {
        let count = |kind: String| *errors.lock().unwrap().entry(kind).or_default() += 1;
        match self {
            Sender::Udp(socket, target) => {
                // Datagrams stay under 60 KB: split the body at line ends.
                let mut rest = body;
                while !rest.is_empty() {
                    let mut cut = rest.len().min(60_000);
                    if cut < rest.len() {
                        cut = rest[..cut]
                            .iter()
                            .rposition(|&byte| byte == b'\n')
                            .map_or(cut, |at| at + 1);
                    }
                    if let Err(error) = socket.send_to(&rest[..cut], *target).await {
                        count(format!("udp: {}", error.kind()));
                        return Delivery::Failed;
                    }
                    rest = &rest[cut..];
                }
                Delivery::Sent
            }
            Sender::Http(http) => {
                // A batch that failed is resent with the same key until it is
                // acknowledged or refused for good, bounded in tries and time.
                for attempt in 0..8u32 {
                    match http.post(db, token, key, body).await {
                        Ok(204) => return Delivery::All,
                        Ok(400) => return Delivery::Partial,
                        Ok(status) if status == 503 || status >= 500 => {
                            count(format!("http {status}"));
                        }
                        Ok(status) => {
                            count(format!("http {status}"));
                            return Delivery::Failed;
                        }
                        Err(error) => count(format!("connection: {}", error.kind())),
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
                Delivery::Failed
            }
        }
    }
}

/// A keep-alive HTTP/1.1 connection to one gateway, reopened when it breaks.
struct HttpSender {
    target: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl HttpSender {
    fn new(target: SocketAddr) -> HttpSender {
        HttpSender {
            target,
            stream: None,
            buffer: Vec::with_capacity(64 * 1024),
        }
    }

    async fn post(
        &mut self,
        db: &str,
        token: Option<&str>,
        key: &str,
        body: &[u8],
    ) -> std::io::Result<u16> {
        let result = self.exchange(db, token, key, body).await;
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
            let stream =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.target))
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
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s")
            })?
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
