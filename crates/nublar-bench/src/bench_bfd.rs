//! `nublar bench bfd-sessions`: the cost of many BFD sessions between two nublar processes.
//!
//! Issue 6 asks that 1,000 sessions at 100 ms between two processes cost under 10% of one core
//! on each side. **Two processes, not two speakers in one**, because that is the deployment and
//! because `/proc/<pid>/stat` can then charge each side its own CPU time, kernel work of sending
//! and receiving included. The benchmark starts its second side by running its own executable
//! again with a hidden `--peer-of` flag and talks to it over the child's stdin and stdout.
//!
//! Every session has its own address pair (127.1.x.y on this side, 127.2.x.y on the other), so
//! the speaker has to demultiplex by (local, peer) address until the discriminators are known,
//! exactly as with many routers on one link. Linux routes all of 127.0.0.0/8 to the loopback
//! device, so no address has to be configured and no packet leaves the host.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use nublar_bfd::limits::SPEAKER_SESSIONS_MAX;
use nublar_bfd::{Parameters, SessionSpec, Speaker, SpeakerConfig, State};
use tokio::sync::{broadcast, mpsc};

#[derive(Args)]
pub struct BfdSessionsArgs {
    /// Sessions on each side, each on its own pair of loopback addresses.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Desired Min TX and Required Min RX of every session, in milliseconds.
    #[arg(long, default_value_t = 100)]
    interval_ms: u32,
    /// Detect Mult of every session.
    #[arg(long, default_value_t = 3)]
    multiplier: u8,
    /// How long CPU time and packets are measured once every session is Up.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// UDP port of this process's speaker; the second process takes the next one. 0 lets the
    /// system pick both, so that several runs can share a host.
    #[arg(long, default_value_t = 0)]
    base_port: u16,
    /// Run as the second process, towards a speaker on this port (the benchmark starts it).
    #[arg(long, hide = true)]
    peer_of: Option<u16>,
}

/// Bring-up runs at the slow rate of one packet a second (RFC 5880 section 6.8.3), so a few
/// seconds suffice; the rest is headroom for a machine busy with other builds.
const UP_WAIT: Duration = Duration::from_secs(30);

/// After the last session comes Up, its Poll sequence to the fast rate still has to finish;
/// measuring before that would count slow-rate seconds.
const SETTLE: Duration = Duration::from_secs(1);

/// How long the second process may take to start, or to answer one request.
const SECOND_PROCESS_ANSWER_WAIT: Duration = Duration::from_secs(10);

const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(200);

/// The window is bounded so that a mistyped argument cannot keep two processes busy for days.
const SECONDS_MAX: f64 = 3600.0;

/// File descriptors besides the sessions' transmit sockets: stdio, pipes, epoll, the receive
/// socket, with room to spare.
const FILE_DESCRIPTOR_MARGIN: u64 = 64;

/// Second octets of the two sides' addresses.
const NETWORK_A: u8 = 1;
const NETWORK_B: u8 = 2;

pub fn run(args: BfdSessionsArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=SPEAKER_SESSIONS_MAX).contains(&args.sessions),
        "--sessions must be 1 to {SPEAKER_SESSIONS_MAX}, the most one speaker runs"
    );
    ensure!(
        args.seconds > 0.0 && args.seconds <= SECONDS_MAX,
        "--seconds must be above 0 and at most {SECONDS_MAX}"
    );
    ensure!(
        args.base_port < u16::MAX,
        "--base-port must leave room for the second process's port"
    );
    parameters(&args).validate()?;
    raise_open_file_limit(args.sessions as u64 + FILE_DESCRIPTOR_MARGIN)?;
    // One thread, like the speaker's one task: the figures are then the speaker's cost, not
    // that of idle worker threads waking each other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.peer_of {
        Some(peer_port) => {
            // A second process must never outlive the benchmark, however that ends. The signal
            // is tied to the thread that forked us, which is the parent's main thread.
            // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            }
            runtime.block_on(second_side(&args, peer_port))
        }
        None => runtime.block_on(first_side(&args)),
    }
}

fn parameters(args: &BfdSessionsArgs) -> Parameters {
    let interval_us = args.interval_ms.saturating_mul(1000);
    Parameters {
        desired_min_tx_interval_us: interval_us,
        required_min_rx_interval_us: interval_us,
        detect_multiplier: args.multiplier,
    }
}

/// Session `index`'s address on one side. The last octet avoids 0 and 255, which look like
/// network and broadcast addresses to anyone reading a capture.
fn address(network: u8, index: usize) -> Ipv4Addr {
    let third = u8::try_from(index / 250).expect("at most SPEAKER_SESSIONS_MAX sessions");
    let fourth = u8::try_from(index % 250 + 1).expect("below 251");
    Ipv4Addr::new(127, network, third, fourth)
}

/// Binds the wildcard address: a socket on 127.0.0.1 would not receive what the peer sends to
/// 127.1.x.y or 127.2.x.y.
fn bind(port: u16) -> anyhow::Result<Speaker> {
    Ok(Speaker::bind(SpeakerConfig {
        ipv4_bind: Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        ipv6_bind: None,
    })?)
}

fn port_of(speaker: &Speaker) -> u16 {
    speaker
        .ipv4_address()
        .expect("the speaker was bound for IPv4")
        .port()
}

async fn add_sessions(
    speaker: &Speaker,
    args: &BfdSessionsArgs,
    (local, peer): (u8, u8),
    peer_port: u16,
) -> anyhow::Result<()> {
    for index in 0..args.sessions {
        speaker
            .add_session(SessionSpec {
                peer_port,
                ..SessionSpec::single_hop(
                    IpAddr::V4(address(local, index)),
                    IpAddr::V4(address(peer, index)),
                    parameters(args),
                )
            })
            .await
            .with_context(|| format!("adding session {index}"))?;
    }
    Ok(())
}

/// The second process: runs its sessions and answers `status` lines until told to quit or
/// until its stdin closes, which happens when the first process ends in any way.
async fn second_side(args: &BfdSessionsArgs, peer_port: u16) -> anyhow::Result<()> {
    let speaker = bind(args.base_port)?;
    let downs = DownCounter::start(&speaker);
    add_sessions(&speaker, args, (NETWORK_B, NETWORK_A), peer_port).await?;
    let mut commands = lines_of(BufReader::new(std::io::stdin()));
    println!("ready {}", port_of(&speaker));
    while let Some(line) = commands.recv().await {
        match line.trim() {
            "status" => println!("{}", SideStatus::of(&speaker, &downs).await?.encode()),
            "quit" => break,
            other => bail!("unknown request from the first process: {other:?}"),
        }
    }
    speaker.stop().await;
    Ok(())
}

async fn first_side(args: &BfdSessionsArgs) -> anyhow::Result<()> {
    println!("{}", crate::machine::machine_line());
    let speaker = bind(args.base_port)?;
    let downs = DownCounter::start(&speaker);
    let second_port = if args.base_port == 0 {
        0
    } else {
        args.base_port + 1
    };
    let mut second = SecondProcess::start(args, port_of(&speaker), second_port)?;
    let ready = second.next_line().await?;
    let peer_port: u16 = ready
        .strip_prefix("ready ")
        .and_then(|port| port.parse().ok())
        .with_context(|| format!("the second process said {ready:?} instead of ready"))?;
    add_sessions(&speaker, args, (NETWORK_A, NETWORK_B), peer_port).await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let last = args.sessions - 1;
    println!(
        "nublar bench bfd-sessions: {} sessions per side, A {}-{} <-> B {}-{}, TX/RX {} ms, \
         multiplier {}, A pid {} port {}, B pid {} port {}, load average {}",
        args.sessions,
        address(NETWORK_A, 0),
        address(NETWORK_A, last),
        address(NETWORK_B, 0),
        address(NETWORK_B, last),
        args.interval_ms,
        args.multiplier,
        std::process::id(),
        port_of(&speaker),
        second.pid(),
        peer_port,
        load.split_whitespace().next().unwrap_or("?"),
    );

    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let a = SideStatus::of(&speaker, &downs).await?;
        let b = second.status().await?;
        if a.up == args.sessions as u64 && b.up == args.sessions as u64 {
            break;
        }
        if started.elapsed() > UP_WAIT {
            bail!(
                "after {} s only {}/{} sessions are Up on A and {}/{} on B",
                UP_WAIT.as_secs(),
                a.up,
                args.sessions,
                b.up,
                args.sessions
            );
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "bfd-sessions: {:.1} s, Up on A {}/{}, on B {}/{}",
                started.elapsed().as_secs_f64(),
                a.up,
                args.sessions,
                b.up,
                args.sessions
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    println!(
        "all {} sessions Up on both sides after {:.1} s; measuring {:.1} s after {:.1} s to settle",
        args.sessions,
        started.elapsed().as_secs_f64(),
        args.seconds,
        SETTLE.as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;

    // Status requests cost CPU on both sides, so they are made outside the measured window.
    let start_a = SideStatus::of(&speaker, &downs).await?;
    let start_b = second.status().await?;
    let cpu_start_a = CpuTime::of("self")?;
    let cpu_start_b = CpuTime::of(&second.pid().to_string())?;
    let window_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let cpu_end_a = CpuTime::of("self")?;
    let cpu_end_b = CpuTime::of(&second.pid().to_string())?;
    let window = window_started.elapsed().as_secs_f64();
    let end_a = SideStatus::of(&speaker, &downs).await?;
    let end_b = second.status().await?;
    second.stop().await?;
    speaker.stop().await;

    let sessions = args.sessions as u64;
    let user_a = (cpu_end_a.user_s - cpu_start_a.user_s) / window * 100.0;
    let system_a = (cpu_end_a.system_s - cpu_start_a.system_s) / window * 100.0;
    let user_b = (cpu_end_b.user_s - cpu_start_b.user_s) / window * 100.0;
    let system_b = (cpu_end_b.system_s - cpu_start_b.system_s) / window * 100.0;
    let (cpu_a, cpu_b) = (user_a + system_a, user_b + system_b);
    for (name, start, end, user, system) in [
        ("A (this process)", start_a, end_a, user_a, system_a),
        ("B (second process)", start_b, end_b, user_b, system_b),
    ] {
        println!(
            "side {name}: Up {}/{sessions} at start, {}/{sessions} at end, {} changes to Down, \
             {} events missed, sent {:.0}/s, received {:.0}/s, {} transmit errors, {} dropped, \
             CPU {:.1}% of one core (user {user:.1}%, system {system:.1}%)",
            start.up,
            end.up,
            end.downs - start.downs,
            end.lagged - start.lagged,
            (end.sent - start.sent) as f64 / window,
            (end.received - start.received) as f64 / window,
            end.transmit_errors - start.transmit_errors,
            end.dropped - start.dropped,
            user + system,
        );
    }
    let healthy = |start: SideStatus, end: SideStatus| {
        start.up == sessions
            && end.up == sessions
            && end.downs == start.downs
            && end.lagged == start.lagged
    };
    ensure!(
        healthy(start_a, end_a) && healthy(start_b, end_b),
        "FALSE DOWN: a session left Up during the window (or its events were missed)"
    );
    let target = if cpu_a < 10.0 && cpu_b < 10.0 {
        "met"
    } else {
        "NOT met"
    };
    println!(
        "result: no false Down; CPU A {cpu_a:.1}%, B {cpu_b:.1}% of one core \
         (target under 10% per side: {target})"
    );
    Ok(())
}

/// Counts changes to Down as they are announced: a session that drops and comes back between
/// two looks at `sessions()` would otherwise go unnoticed.
#[derive(Default)]
struct DownCounter {
    downs: AtomicU64,
    /// Events the subscriber fell too far behind to see; any of them could have been a Down.
    lagged: AtomicU64,
}

impl DownCounter {
    fn start(speaker: &Speaker) -> Arc<DownCounter> {
        let counter = Arc::new(DownCounter::default());
        let mut events = speaker.subscribe();
        let counting = counter.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) if event.to == State::Down => {
                        counting.downs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        counting.lagged.fetch_add(missed, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        counter
    }
}

/// One side's totals since its speaker started; the report shows differences over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SideStatus {
    up: u64,
    sent: u64,
    received: u64,
    transmit_errors: u64,
    dropped: u64,
    downs: u64,
    lagged: u64,
}

impl SideStatus {
    async fn of(speaker: &Speaker, downs: &DownCounter) -> anyhow::Result<SideStatus> {
        let sessions = speaker.sessions().await?;
        let counters = speaker.counters().await?;
        let drops = counters.drops;
        let mut status = SideStatus {
            dropped: drops.malformed
                + drops.wrong_ttl
                + drops.unknown_discriminator
                + drops.unknown_peer,
            downs: downs.downs.load(Ordering::Relaxed),
            lagged: downs.lagged.load(Ordering::Relaxed),
            ..SideStatus::default()
        };
        for session in &sessions {
            let counters = session.counters;
            status.up += u64::from(session.state == State::Up);
            status.sent += counters.packets_sent;
            status.received += counters.packets_received;
            status.transmit_errors += counters.transmit_errors;
            status.dropped += counters.drops.authentication
                + counters.drops.address_mismatch
                + counters.drops.rejected;
        }
        Ok(status)
    }

    fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("up", self.up),
            ("sent", self.sent),
            ("received", self.received),
            ("transmit_errors", self.transmit_errors),
            ("dropped", self.dropped),
            ("downs", self.downs),
            ("lagged", self.lagged),
        ]
    }

    fn encode(&self) -> String {
        let mut line = String::from("status");
        for (name, value) in self.fields() {
            line.push_str(&format!(" {name}={value}"));
        }
        line
    }

    fn decode(line: &str) -> anyhow::Result<SideStatus> {
        let mut status = SideStatus::default();
        let mut words = line.split_whitespace();
        ensure!(
            words.next() == Some("status"),
            "not a status line: {line:?}"
        );
        for word in words {
            let (name, value) = word
                .split_once('=')
                .with_context(|| format!("bad status field {word:?}"))?;
            let value: u64 = value
                .parse()
                .with_context(|| format!("bad status field {word:?}"))?;
            let slot = match name {
                "up" => &mut status.up,
                "sent" => &mut status.sent,
                "received" => &mut status.received,
                "transmit_errors" => &mut status.transmit_errors,
                "dropped" => &mut status.dropped,
                "downs" => &mut status.downs,
                "lagged" => &mut status.lagged,
                _ => bail!("unknown status field {word:?}"),
            };
            *slot = value;
        }
        Ok(status)
    }
}

/// The other side, as a child process that is killed when this handle goes, so that an error
/// anywhere in the benchmark cannot leave it running.
struct SecondProcess {
    child: Child,
    /// `None` once closed, which tells the child to end.
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl SecondProcess {
    fn start(
        args: &BfdSessionsArgs,
        first_port: u16,
        second_port: u16,
    ) -> anyhow::Result<SecondProcess> {
        let executable = std::env::current_exe().context("finding the nublar executable")?;
        let mut child = Command::new(executable)
            .args(["bench", "bfd-sessions"])
            .args(["--sessions", &args.sessions.to_string()])
            .args(["--interval-ms", &args.interval_ms.to_string()])
            .args(["--multiplier", &args.multiplier.to_string()])
            .args(["--base-port", &second_port.to_string()])
            .args(["--peer-of", &first_port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the second nublar process")?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        Ok(SecondProcess {
            child,
            stdin: Some(stdin),
            lines: lines_of(BufReader::new(stdout)),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn next_line(&mut self) -> anyhow::Result<String> {
        match tokio::time::timeout(SECOND_PROCESS_ANSWER_WAIT, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => bail!("the second process ended (its error is above)"),
            Err(_) => bail!(
                "the second process did not answer within {} s",
                SECOND_PROCESS_ANSWER_WAIT.as_secs()
            ),
        }
    }

    fn send(&mut self, request: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the second process was told to quit")?;
        // A line into a pipe that is read at once: the write does not block the speaker.
        writeln!(stdin, "{request}").context("writing to the second process")?;
        Ok(())
    }

    async fn status(&mut self) -> anyhow::Result<SideStatus> {
        self.send("status")?;
        SideStatus::decode(&self.next_line().await?)
    }

    /// Asks the child to quit and waits for it, killing it if it does not end in time.
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.send("quit")?;
        self.stdin = None;
        let deadline = Instant::now() + SECOND_PROCESS_ANSWER_WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "the second process ended with {status}");
                return Ok(());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        bail!("the second process did not quit; it is killed")
    }
}

impl Drop for SecondProcess {
    fn drop(&mut self) {
        // Errors mean it has ended already, which is the point.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of a blocking reader, from a thread of their own so the speaker's one runtime thread
/// never blocks on a pipe. The channel closes at end of input.
fn lines_of(reader: impl BufRead + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// CPU time of a process since it started, kept apart because sending and receiving on loopback
/// is mostly kernel work: the system share shows what fewer system calls could save.
#[derive(Clone, Copy)]
struct CpuTime {
    user_s: f64,
    system_s: f64,
}

impl CpuTime {
    /// `pid` is a number or `self`.
    fn of(pid: &str) -> anyhow::Result<CpuTime> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
        let after_name = &stat[stat.rfind(')').context("no ')' in /proc/<pid>/stat")? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of proc(5), counted from field 3 (state), which comes first here.
        let ticks = |field: usize| -> anyhow::Result<u64> {
            fields
                .get(field - 3)
                .and_then(|text| text.parse().ok())
                .with_context(|| format!("field {field} of /proc/{pid}/stat"))
        };
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
        Ok(CpuTime {
            user_s: ticks(14)? as f64 / per_second as f64,
            system_s: ticks(15)? as f64 / per_second as f64,
        })
    }
}

/// Every session holds a transmit socket, so 1,000 sessions need over 1,000 descriptors, more
/// than the common soft limit of 1,024. The soft limit is raised up to the hard one.
fn raise_open_file_limit(needed: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live local passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    ensure!(
        limit.rlim_max >= needed,
        "{needed} open files needed but the hard limit is {} (ulimit -Hn)",
        limit.rlim_max
    );
    limit.rlim_cur = needed;
    // SAFETY: setrlimit reads one rlimit from the live local passed to it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}
