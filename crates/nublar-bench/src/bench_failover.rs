//! `nublar bench failover`: what freezing the active gateway costs a sender, with BFD and
//! without it, measured in the same run.
//!
//! Two `nublar serve` (this executable) run on 127.0.0.2 and 127.0.0.3 and answer BFD from
//! 127.0.0.0/8; one `nublar sim` sends to both under a steady load. The benchmark freezes the
//! gateway in use with SIGSTOP, holds it frozen, resumes it and lets it recover, then freezes the
//! other, and so on: a sender stays where it works, so the gateways take turns. The simulator
//! records, for every move, the time from the last acknowledgement by the gateway it left to
//! the first by the next one. The same run is made twice: once with `--bfd` (the gateway is
//! left within the detection time) and once without, where only the sender's HTTP time-out
//! notices the frozen gateway.

use std::io::{BufRead, BufReader, IsTerminal};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;

use crate::node_child::{ChildGuard, quantile};

#[derive(Args)]
pub struct FailoverArgs {
    /// Where the gateways keep their data; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Freezes of the active gateway in each run.
    #[arg(long, default_value_t = 20)]
    freezes: u32,
    /// Events per second the simulator sends throughout.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Lines per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// BFD transmit and receive interval of the sender's sessions (and the gateways').
    #[arg(long, default_value_t = 50)]
    interval_ms: u32,
    #[arg(long, default_value_t = 3)]
    multiplier: u8,
    /// The sender's HTTP time-out, in seconds, in the run without BFD (and in the one with).
    #[arg(long, default_value_t = 5.0)]
    http_timeout: f64,
    /// Seconds a gateway stays frozen in the run with BFD; without BFD it stays frozen for
    /// the HTTP time-out and one second more, so that the time-out can fire.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// Seconds between resuming a gateway and freezing the other: the resumed one must be Up
    /// again before it is needed.
    #[arg(long, default_value_t = 3.0)]
    recover: f64,
    /// Only the run with BFD.
    #[arg(long)]
    bfd_only: bool,
}

const GATEWAYS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const SENDER: &str = "127.0.0.1";
/// From starting the simulator to the first freeze: BFD sessions come Up at the slow rate of
/// one packet a second, and the simulator waits for both for up to three seconds.
const WARM_UP: Duration = Duration::from_secs(6);
/// After the last recovery, before the simulator's run ends on its own.
const COOL_DOWN: Duration = Duration::from_secs(2);

pub fn run(args: FailoverArgs) -> anyhow::Result<()> {
    ensure!(args.freezes > 0, "--freezes must be at least 1");
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-failover-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    println!(
        "machine: {} cores; two gateways and one sender on this host; {} events/s in batches \
         of {}; {} freezes per run",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.rate,
        args.batch,
        args.freezes
    );
    let mut results = vec![measure(&args, root.path(), true)?];
    if !args.bfd_only {
        results.push(measure(&args, root.path(), false)?);
    }
    println!();
    println!(
        "{:<34} {:>7} {:>9} {:>6} {:>8} {:>8} {:>8} {:>11} {:>11} {:>7}",
        "sender",
        "freezes",
        "failovers",
        "gaps",
        "p50 ms",
        "p99 ms",
        "max ms",
        "sent",
        "acked",
        "resent"
    );
    for result in &results {
        println!(
            "{:<34} {:>7} {:>9} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>11} {:>11} {:>7}",
            result.name,
            args.freezes,
            result.failovers,
            result.gaps.len(),
            quantile(&result.gaps, 0.5),
            quantile(&result.gaps, 0.99),
            result.gaps.last().copied().unwrap_or(0.0),
            result.sent,
            result.acknowledged,
            result.resent
        );
    }
    if let [with, without] = &results[..] {
        println!(
            "p99 failover with BFD is {:.1}x faster than with the HTTP time-out alone",
            quantile(&without.gaps, 0.99) / quantile(&with.gaps, 0.99).max(1.0)
        );
    }
    for result in &results {
        if result.acknowledged != result.sent {
            println!(
                "{}: {} events were not acknowledged",
                result.name,
                result.sent - result.acknowledged
            );
        }
        if result.failovers != u64::from(args.freezes) {
            println!(
                "{}: {} failovers for {} freezes: a gateway was left without being frozen \
                 (a false Down) or a freeze went unnoticed",
                result.name, result.failovers, args.freezes
            );
        }
    }
    Ok(())
}

struct RunResult {
    name: String,
    failovers: u64,
    /// Sorted, in milliseconds.
    gaps: Vec<f64>,
    sent: u64,
    acknowledged: u64,
    resent: usize,
}

fn measure(args: &FailoverArgs, root: &Path, bfd: bool) -> anyhow::Result<RunResult> {
    let name = if bfd {
        format!("BFD {} ms x {}", args.interval_ms, args.multiplier)
    } else {
        format!("HTTP time-out {} s, no BFD", args.http_timeout)
    };
    println!("{name}: starting two gateways and the sender");
    let dir = root.join(if bfd { "bfd" } else { "timeout" });
    let bfd_port = shared_udp_port()?;
    let mut gateways = Vec::new();
    for host in GATEWAYS {
        gateways.push(Gateway::start(&dir.join(host), host, bfd_port, args)?);
    }
    let hold = if bfd {
        Duration::from_secs_f64(args.hold)
    } else {
        Duration::from_secs_f64(args.http_timeout + 1.0)
    };
    let recover = Duration::from_secs_f64(args.recover);
    let run_time = WARM_UP + (hold + recover) * args.freezes + COOL_DOWN;
    let summary_path = dir.join("summary.json");
    let executable = std::env::current_exe().context("finding the nublar executable")?;
    let mut sim = Command::new(executable);
    sim.arg("sim")
        .args(["--rate", &args.rate.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--duration", &run_time.as_secs_f64().to_string()])
        .args(["--concurrency", "4", "--unique-field", "uid"])
        .args(["--http-timeout", &args.http_timeout.to_string()])
        .args([
            "--summary-json",
            summary_path.to_str().context("a UTF-8 path")?,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for gateway in &gateways {
        sim.args(["--target", &format!("http://{}", gateway.http)]);
    }
    if bfd {
        sim.args(["--bfd", "--bfd-local", SENDER])
            .args(["--bfd-port", &bfd_port.to_string()])
            .args(["--bfd-interval-ms", &args.interval_ms.to_string()])
            .args(["--bfd-multiplier", &args.multiplier.to_string()]);
    }
    let mut sim = ChildGuard(sim.spawn().context("starting the simulator")?);
    let started = Instant::now();
    std::thread::sleep(WARM_UP);
    for freeze in 0..args.freezes {
        // The sender starts on the first gateway and stays wherever it works, so the gateway in
        // use alternates.
        let victim = &gateways[freeze as usize % 2];
        victim.signal(libc::SIGSTOP)?;
        std::thread::sleep(hold);
        victim.signal(libc::SIGCONT)?;
        std::thread::sleep(recover);
        if std::io::stdout().is_terminal() {
            print!("\r{name}: {}/{} freezes", freeze + 1, args.freezes);
            std::io::Write::flush(&mut std::io::stdout())?;
        }
    }
    if std::io::stdout().is_terminal() {
        println!();
    }
    let limit = run_time + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = sim.0.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            bail!("the simulator did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "the simulator ended with {status}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary_path).context("reading the simulator's summary")?,
    )?;
    let mut gaps: Vec<f64> = summary["failover_gaps_ms"]
        .as_array()
        .context("failover_gaps_ms in the summary")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    gaps.sort_by(f64::total_cmp);
    drop(gateways);
    std::fs::remove_dir_all(&dir).ok();
    Ok(RunResult {
        name,
        failovers: summary["failovers"].as_u64().unwrap_or(0),
        gaps,
        sent: summary["sent"].as_u64().unwrap_or(0),
        acknowledged: summary["acknowledged"].as_u64().unwrap_or(0),
        resent: summary["resent_keys"].as_array().map_or(0, Vec::len),
    })
}

struct Gateway {
    process: ChildGuard,
    http: String,
}

impl Gateway {
    fn start(
        data: &Path,
        host: &str,
        bfd_port: u16,
        args: &FailoverArgs,
    ) -> anyhow::Result<Gateway> {
        std::fs::create_dir_all(data)?;
        let config = data.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[bfd]\nenabled = true\nipv4_listen = \"{host}:{bfd_port}\"\nipv6_listen = \"\"\n\
                 desired_min_tx_ms = {interval}\nrequired_min_rx_ms = {interval}\n\
                 detect_multiplier = {multiplier}\naccept_from = [\"127.0.0.0/8\"]\n",
                interval = args.interval_ms,
                multiplier = args.multiplier
            ),
        )?;
        let http_port = TcpListener::bind((host, 0))?.local_addr()?.port();
        let executable = std::env::current_exe().context("finding the nublar executable")?;
        let mut child = Command::new(executable)
            .args(["serve", "--data", data.to_str().context("a UTF-8 path")?])
            .args(["--config", config.to_str().context("a UTF-8 path")?])
            .args(["--http", &format!("{host}:{http_port}")])
            .args(["--udp", &format!("{host}:0")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a gateway")?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let process = ChildGuard(child);
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let Some(rest) = first.strip_prefix("nublar listening http=") else {
            bail!("the gateway on {host} did not start: {first:?}");
        };
        let http = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(Gateway { process, http })
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: a signal to our own child's pid.
        let result = unsafe { libc::kill(self.process.0.id() as i32, signal) };
        ensure!(
            result == 0,
            "signalling a gateway: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }
}

/// A UDP port free on the sender's and both gateways' addresses now: BFD answers on the port
/// it listens on, so all three listen on the same port, each on its own address.
fn shared_udp_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = UdpSocket::bind((SENDER, 0))?.local_addr()?.port();
        if GATEWAYS
            .iter()
            .all(|host| UdpSocket::bind((*host, port)).is_ok())
        {
            return Ok(port);
        }
    }
    bail!("no UDP port free on {SENDER} and {GATEWAYS:?}")
}
