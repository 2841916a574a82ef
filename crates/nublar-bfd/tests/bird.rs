//! Interop of BFD authentication with BIRD 2 (Debian 12 `bird2` 2.0.12; FRR 8.4 has none), over
//! veth pairs between two network namespaces this test creates: BIRD runs in one, our `Speaker`
//! in the other, entered from a dedicated thread with `setns`. No traffic leaves them.
//!
//! BIRD configures authentication per interface, not per neighbour, so every case gets its own
//! veth pair and /29, and all cases run at once against one BIRD.
//!
//! BIRD is then killed and started again: it comes back with new random sequence numbers, which
//! our sessions must accept once they have heard nothing for a while.
//!
//! Needs root, `ip` and BIRD. Without them the test prints why and passes, unless `CI=true`,
//! where a missing piece is a failure: CI must really run it.

mod lab;

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lab::{command_exists, find, run, wait_for_status};
use nublar_bfd::{
    AuthenticationMode, Diagnostic, Parameters, SessionId, SessionSpec, SessionStatus, Sha1Key,
    SimplePassword, Speaker, SpeakerConfig, State, StateEvent,
};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::{Instant, timeout};

/// Case `i` lives on 198.51.100.8i/29: BIRD at .8i+1, we at .8i+2.
const SUBNET_V4: [u8; 3] = [198, 51, 100];
const BIRD_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
const OUR_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 2);
/// Interface names get the case number appended.
const BIRD_INTERFACE_PREFIX: &str = "nbird";
const OUR_INTERFACE_PREFIX: &str = "nbirdus";
const BIRD_PROTOCOL: &str = "nublar";

/// Both sides start at the slow rate of one packet a second; BIRD needs a moment to start too.
const STATE_WAIT: Duration = Duration::from_secs(20);
/// Longer than BIRD's keyed SHA1 sequence number step (about once a second, 2^20 µs), so both
/// sides see the other's sequence number advance while Up.
const STEADY_WINDOW: Duration = Duration::from_millis(1_500);
/// Rejected packets a mismatched session must count; BIRD sends about one a second while Down.
const REJECTED_PACKETS_MIN: u64 = 3;
/// How long BIRD stays stopped: well past our detection time (300 ms) and the two more of
/// silence after which the peer's sequence number must be forgotten (RFC 5880 section 6.8.1).
const BIRD_STOPPED: Duration = Duration::from_millis(1_500);

/// One veth pair with one authentication setup on each side.
struct Case {
    name: &'static str,
    /// BIRD's `authentication` option for the interface.
    bird_authentication: &'static str,
    bird_password: &'static str,
    bird_key_id: u8,
    ours: AuthenticationMode,
    matching: bool,
    /// Also runs an IPv6 session over the same pair.
    ipv6: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "simple password",
            bird_authentication: "simple",
            bird_password: "nublar-simple",
            bird_key_id: 1,
            ours: simple_password(1, "nublar-simple"),
            matching: true,
            ipv6: false,
        },
        Case {
            name: "keyed SHA1",
            bird_authentication: "keyed sha1",
            bird_password: "nublar-keyed",
            bird_key_id: 2,
            ours: keyed_sha1(2, "nublar-keyed"),
            matching: true,
            ipv6: false,
        },
        Case {
            name: "meticulous keyed SHA1",
            bird_authentication: "meticulous keyed sha1",
            bird_password: "nublar-meticulous",
            bird_key_id: 3,
            ours: meticulous_keyed_sha1(3, "nublar-meticulous"),
            matching: true,
            ipv6: true,
        },
        // Same lengths as the right passwords, so only the contents differ.
        Case {
            name: "simple password, wrong password",
            bird_authentication: "simple",
            bird_password: "nublar-simple",
            bird_key_id: 4,
            ours: simple_password(4, "nublar-sample"),
            matching: false,
            ipv6: false,
        },
        Case {
            name: "keyed SHA1, wrong key",
            bird_authentication: "keyed sha1",
            bird_password: "nublar-keyed",
            bird_key_id: 5,
            ours: keyed_sha1(5, "nublar-kayed"),
            matching: false,
            ipv6: false,
        },
        Case {
            name: "meticulous keyed SHA1, wrong key id",
            bird_authentication: "meticulous keyed sha1",
            bird_password: "nublar-meticulous",
            bird_key_id: 6,
            ours: meticulous_keyed_sha1(7, "nublar-meticulous"),
            matching: false,
            ipv6: false,
        },
    ]
}

fn simple_password(key_id: u8, password: &str) -> AuthenticationMode {
    AuthenticationMode::SimplePassword {
        key_id,
        password: SimplePassword::new(password.as_bytes()).expect("valid password"),
    }
}

fn keyed_sha1(key_id: u8, key: &str) -> AuthenticationMode {
    AuthenticationMode::KeyedSha1 {
        key_id,
        key: Sha1Key::new(key.as_bytes()).expect("valid key"),
    }
}

fn meticulous_keyed_sha1(key_id: u8, key: &str) -> AuthenticationMode {
    AuthenticationMode::MeticulousKeyedSha1 {
        key_id,
        key: Sha1Key::new(key.as_bytes()).expect("valid key"),
    }
}

fn bird_interface(case: usize) -> String {
    format!("{BIRD_INTERFACE_PREFIX}{case}")
}

fn our_interface(case: usize) -> String {
    format!("{OUR_INTERFACE_PREFIX}{case}")
}

fn bird_address_v4(case: usize) -> Ipv4Addr {
    let [a, b, c] = SUBNET_V4;
    Ipv4Addr::new(a, b, c, u8::try_from(8 * case + 1).expect("few cases"))
}

fn our_address_v4(case: usize) -> Ipv4Addr {
    let [a, b, c] = SUBNET_V4;
    Ipv4Addr::new(a, b, c, u8::try_from(8 * case + 2).expect("few cases"))
}

/// One session of ours and the BIRD session it talks to.
struct Peering {
    name: String,
    session: SessionId,
    our_address: IpAddr,
    bird_interface: String,
    matching: bool,
}

#[test]
fn speaker_authenticates_with_bird() {
    if !lab::ready("the BIRD interop test", requirements) {
        return;
    }
    let started = std::time::Instant::now();
    let cases = cases();
    let lab = Lab::create(&cases);
    let bird = lab.bird.clone();
    let our_namespace = lab.our_namespace.clone();
    // The lab's Drop cleans up and shows BIRD's log if the scenario panics.
    lab::run_in_namespace(our_namespace, move || async move {
        scenario(&bird, cases).await
    });
    drop(lab);
    let _ = writeln!(
        std::io::stderr(),
        "BIRD interop test took {:?}",
        started.elapsed()
    );
}

async fn scenario(bird: &Bird, cases: Vec<Case>) {
    let session_count = cases.iter().map(|case| 1 + usize::from(case.ipv6)).sum();
    bird.wait_until_responsive(session_count).await;
    let speaker = Speaker::bind(SpeakerConfig::standard()).expect("bind 3784 in our namespace");
    let mut events = speaker.subscribe();
    let fast = Parameters {
        desired_min_tx_interval_us: 100_000,
        required_min_rx_interval_us: 100_000,
        detect_multiplier: 3,
    };
    let mut peerings = Vec::new();
    for (index, case) in cases.into_iter().enumerate() {
        let mut addresses = vec![(
            IpAddr::V4(our_address_v4(index)),
            IpAddr::V4(bird_address_v4(index)),
        )];
        if case.ipv6 {
            addresses.push((IpAddr::V6(OUR_ADDRESS_V6), IpAddr::V6(BIRD_ADDRESS_V6)));
        }
        for (local, peer) in addresses {
            let spec = SessionSpec {
                authentication: Some(case.ours.clone()),
                ..SessionSpec::single_hop(local, peer, fast)
            };
            let session = speaker
                .add_session(spec)
                .await
                .unwrap_or_else(|error| panic!("{} session {local}: {error:?}", case.name));
            peerings.push(Peering {
                name: format!("{} ({local})", case.name),
                session,
                our_address: local,
                bird_interface: bird_interface(index),
                matching: case.matching,
            });
        }
    }
    let (matching, mismatched): (Vec<&Peering>, Vec<&Peering>) =
        peerings.iter().partition(|peering| peering.matching);
    let never_up: Vec<SessionId> = mismatched.iter().map(|peering| peering.session).collect();

    // Every session with matching keys comes Up; the others do not even reach Init.
    let wanted: Vec<SessionId> = matching.iter().map(|peering| peering.session).collect();
    wait_until_up(&mut events, &wanted, &never_up).await;
    eprintln!("all sessions with matching keys Up");

    let settled = wait_until_agreed(&speaker, bird, &matching).await;
    eprintln!("birdc agrees with our state");

    // Up sessions stay Up while sequence numbers advance: keyed SHA1 by about one a second on
    // BIRD's side, meticulous on every packet on both. A replay check that rejected a valid
    // packet would show here as a drop, and on BIRD's side as a timeout and a state change.
    tokio::time::sleep(STEADY_WINDOW).await;
    let steady = speaker.sessions().await.expect("speaker runs");
    for peering in &matching {
        let before = find(&settled, peering.session);
        let after = find(&steady, peering.session);
        assert_eq!(after.state, State::Up, "{}: {after:?}", peering.name);
        assert_eq!(
            after.counters.drops.authentication, 0,
            "{}: {after:?}",
            peering.name
        );
        // At 100 ms less up to 25% jitter the window holds 15 to 20 packets; 10 leaves room
        // for a loaded machine.
        assert!(
            after.counters.packets_received >= before.counters.packets_received + 10,
            "{}: {before:?} -> {after:?}",
            peering.name
        );
    }
    assert_no_state_changes(&mut events);
    eprintln!("sessions with matching keys stayed Up for {STEADY_WINDOW:?}");

    // Mismatched keys: we drop what BIRD sends, BIRD drops what we send, nobody leaves Down.
    let rejected = wait_for_status(&speaker, STATE_WAIT, |sessions| {
        mismatched.iter().all(|peering| {
            find(sessions, peering.session)
                .counters
                .drops
                .authentication
                >= REJECTED_PACKETS_MIN
        })
    })
    .await;
    let bird_sessions = bird.sessions();
    let bird_log = bird.log();
    for peering in &mismatched {
        let ours = find(&rejected, peering.session);
        assert_eq!(ours.state, State::Down, "{}: {ours:?}", peering.name);
        assert_eq!(
            ours.counters.packets_received, 0,
            "{}: {ours:?}",
            peering.name
        );
        assert_eq!(ours.remote_discriminator, 0, "{}: {ours:?}", peering.name);
        let theirs = bird_session(&bird_sessions, peering.our_address);
        assert_eq!(theirs.state, "Down", "{}: {theirs:?}", peering.name);
        // BIRD logs each rejection (L_AUTH, not rate limited) as
        // "Authentication failed for ADDRESS - REASON".
        let failure = format!("Authentication failed for {} -", peering.our_address);
        let rejection = bird_log
            .lines()
            .find(|line| line.contains(&failure))
            .unwrap_or_else(|| panic!("{}: BIRD never rejected our packets", peering.name));
        eprintln!(
            "{}: Down, {} of BIRD's packets dropped for authentication; BIRD: {rejection}",
            peering.name, ours.counters.drops.authentication
        );
    }
    assert_no_state_changes(&mut events);

    // BIRD dies without a word and comes back with new random sequence numbers. Our sessions
    // must have forgotten the old ones after the silence, or they take every keyed SHA1 packet
    // of the new BIRD for a replay and never leave Down.
    bird.stop().expect("stop BIRD");
    tokio::time::sleep(BIRD_STOPPED).await;
    let stopped = speaker.sessions().await.expect("speaker runs");
    while let Ok(event) = events.try_recv() {
        eprintln!("event: {event:?}");
        assert!(
            wanted.contains(&event.session)
                && event.to == State::Down
                && event.diagnostic == Diagnostic::ControlDetectionTimeExpired,
            "only timeouts of Up sessions expected: {event:?}"
        );
    }
    for peering in &matching {
        let ours = find(&stopped, peering.session);
        assert_eq!(ours.state, State::Down, "{}: {ours:?}", peering.name);
        assert_eq!(
            ours.local_diagnostic,
            Diagnostic::ControlDetectionTimeExpired,
            "{}: {ours:?}",
            peering.name
        );
    }
    assert_no_state_changes(&mut events);
    eprintln!("sessions with matching keys timed out while BIRD was stopped");

    bird.start();
    wait_until_up(&mut events, &wanted, &never_up).await;
    let restarted = wait_until_agreed(&speaker, bird, &matching).await;
    for peering in &matching {
        let ours = find(&restarted, peering.session);
        assert_eq!(
            ours.counters.drops.authentication, 0,
            "{}: {ours:?}",
            peering.name
        );
    }
    eprintln!("sessions with matching keys Up again after BIRD restarted");

    // The new BIRD talks to the mismatched sessions too, and is still refused both ways.
    let rejected = wait_for_status(&speaker, STATE_WAIT, |sessions| {
        mismatched.iter().all(|peering| {
            find(sessions, peering.session)
                .counters
                .drops
                .authentication
                > find(&stopped, peering.session)
                    .counters
                    .drops
                    .authentication
        })
    })
    .await;
    let bird_sessions = bird.sessions();
    for peering in &mismatched {
        let ours = find(&rejected, peering.session);
        assert_eq!(ours.state, State::Down, "{}: {ours:?}", peering.name);
        assert_eq!(
            ours.counters.packets_received, 0,
            "{}: {ours:?}",
            peering.name
        );
        let theirs = bird_session(&bird_sessions, peering.our_address);
        assert_eq!(theirs.state, "Down", "{}: {theirs:?}", peering.name);
    }
    assert_no_state_changes(&mut events);

    // The log holds both of BIRD's runs.
    let bird_log = bird.log();
    for peering in &matching {
        let failure = format!("Authentication failed for {} -", peering.our_address);
        assert!(
            !bird_log.contains(&failure),
            "{}: BIRD rejected one of our packets",
            peering.name
        );
    }

    let counters = speaker.counters().await.expect("speaker runs");
    assert_eq!(
        counters.drops.wrong_ttl, 0,
        "BIRD sends TTL 255: {counters:?}"
    );
    assert_eq!(counters.drops.malformed, 0, "{counters:?}");
    speaker.stop().await;
}

/// Waits until every session in `matching` is Up with the fast timers on our side and on BIRD's,
/// and returns our view.
async fn wait_until_agreed(
    speaker: &Speaker,
    bird: &Bird,
    matching: &[&Peering],
) -> Vec<SessionStatus> {
    let settled = wait_for_status(speaker, STATE_WAIT, |sessions| {
        matching.iter().all(|peering| {
            let status = find(sessions, peering.session);
            status.state == State::Up
                && status.remote_state == State::Up
                && !status.poll_active
                && status.transmit_interval == Duration::from_millis(100)
                && status.detection_time == Some(Duration::from_millis(300))
        })
    })
    .await;

    // BIRD agrees, timers included: 100 ms each way, detection 3 x 100 ms.
    let bird_sessions = bird
        .wait_for_sessions(|sessions| {
            matching.iter().all(|peering| {
                let theirs = bird_session(sessions, peering.our_address);
                theirs.state == "Up" && theirs.interval == "0.100" && theirs.timeout == "0.300"
            })
        })
        .await;
    for peering in matching {
        // The session took its authentication from this interface's block.
        let theirs = bird_session(&bird_sessions, peering.our_address);
        assert_eq!(theirs.interface, peering.bird_interface, "{}", peering.name);
    }
    settled
}

/// Waits until every session in `wanted` is Up, in any order; a session in `never_up` changing
/// state at all is a failure.
async fn wait_until_up(
    events: &mut broadcast::Receiver<StateEvent>,
    wanted: &[SessionId],
    never_up: &[SessionId],
) {
    let mut missing = wanted.to_vec();
    while !missing.is_empty() {
        let event = timeout(STATE_WAIT, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no state change within {STATE_WAIT:?}, not Up: {missing:?}")
            })
            .expect("event stream open");
        eprintln!("event: {event:?}");
        assert!(
            !never_up.contains(&event.session),
            "a session with mismatched keys changed state: {event:?}"
        );
        missing.retain(|id| !(*id == event.session && event.to == State::Up));
    }
}

/// Once every session has settled, any state change is a failure.
fn assert_no_state_changes(events: &mut broadcast::Receiver<StateEvent>) {
    match events.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!("no state change expected, got {other:?}"),
    }
}

/// What the lab needs beyond root and `ip`.
fn requirements() -> Result<(), String> {
    for program in ["bird", "birdc"] {
        if !command_exists(program) {
            return Err(format!("`{program}` not found (apt-get install bird2)"));
        }
    }
    Ok(())
}

/// How to reach, start and stop the BIRD instance. Its control socket is a file, so `birdc`
/// works from any network namespace.
#[derive(Clone)]
struct Bird {
    control_socket: PathBuf,
    log_file: PathBuf,
    config: PathBuf,
    namespace: String,
    /// Shared between the lab, whose Drop must end BIRD whatever happened, and the scenario,
    /// which restarts it.
    process: Arc<Mutex<Option<Child>>>,
}

/// One row of `birdc show bfd sessions`.
#[derive(Debug)]
struct BirdSession {
    address: IpAddr,
    interface: String,
    state: String,
    /// Seconds with three decimals, as BIRD prints them.
    interval: String,
    timeout: String,
}

fn bird_session(sessions: &[BirdSession], our_address: IpAddr) -> &BirdSession {
    sessions
        .iter()
        .find(|session| session.address == our_address)
        .unwrap_or_else(|| panic!("BIRD has no session to {our_address}: {sessions:#?}"))
}

/// Everything the test created; Drop removes it all, on success and on panic alike.
struct Lab {
    bird: Bird,
    our_namespace: String,
    directory: PathBuf,
}

impl Lab {
    fn create(cases: &[Case]) -> Lab {
        let suffix = std::process::id();
        let directory = std::env::temp_dir().join(format!("nbird{suffix}"));
        let lab = Lab {
            bird: Bird {
                control_socket: directory.join("bird.ctl"),
                log_file: directory.join("bird.log"),
                config: directory.join("bird.conf"),
                namespace: format!("nbird{suffix}"),
                process: Arc::default(),
            },
            our_namespace: format!("nbirdus{suffix}"),
            directory,
        };
        // From here on the guard exists, so a failure half way still cleans up.
        fs::create_dir_all(&lab.directory).expect("BIRD directory");
        let bird_ns = lab.bird.namespace.as_str();
        let our_ns = lab.our_namespace.as_str();
        run("ip", &["netns", "add", bird_ns]);
        run("ip", &["netns", "add", our_ns]);
        for namespace in [bird_ns, our_ns] {
            run("ip", &["-n", namespace, "link", "set", "lo", "up"]);
        }
        for (index, case) in cases.iter().enumerate() {
            let bird_interface = bird_interface(index);
            let our_interface = our_interface(index);
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &bird_interface,
                    "netns",
                    bird_ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &our_interface,
                    "netns",
                    our_ns,
                ],
            );
            for (namespace, interface, v4, v6) in [
                (
                    bird_ns,
                    &bird_interface,
                    bird_address_v4(index),
                    BIRD_ADDRESS_V6,
                ),
                (
                    our_ns,
                    &our_interface,
                    our_address_v4(index),
                    OUR_ADDRESS_V6,
                ),
            ] {
                let v4 = format!("{v4}/29");
                run(
                    "ip",
                    &["-n", namespace, "addr", "add", &v4, "dev", interface],
                );
                if case.ipv6 {
                    let v6 = format!("{v6}/64");
                    // nodad: binding a tentative IPv6 address fails until duplicate detection
                    // ends.
                    run(
                        "ip",
                        &[
                            "-n", namespace, "addr", "add", &v6, "dev", interface, "nodad",
                        ],
                    );
                }
                run("ip", &["-n", namespace, "link", "set", interface, "up"]);
            }
        }
        fs::write(&lab.bird.config, lab.bird_config(cases)).expect("write BIRD config");
        let config = lab.bird.config.to_str().expect("UTF-8 path");
        // A config error shows here at once instead of as a BIRD that never answers.
        run("bird", &["-p", "-c", config]);
        lab.bird.start();
        lab
    }

    fn bird_config(&self, cases: &[Case]) -> String {
        let mut interfaces = String::new();
        let mut neighbors = String::new();
        for (index, case) in cases.iter().enumerate() {
            let interface = bird_interface(index);
            interfaces.push_str(&format!(
                "  interface \"{interface}\" {{\n    \
                     min rx interval 100 ms;\n    \
                     min tx interval 100 ms;\n    \
                     multiplier 3;\n    \
                     authentication {};\n    \
                     password \"{}\" {{ id {}; }};\n  \
                   }};\n",
                case.bird_authentication, case.bird_password, case.bird_key_id,
            ));
            neighbors.push_str(&format!(
                "  neighbor {} dev \"{interface}\";\n",
                our_address_v4(index)
            ));
            if case.ipv6 {
                neighbors.push_str(&format!(
                    "  neighbor {OUR_ADDRESS_V6} dev \"{interface}\";\n"
                ));
            }
        }
        // `protocol device` tells BIRD about the interfaces; BFD needs them for direct sessions.
        format!(
            "router id {};\n\
             log \"{}\" all;\n\
             debug protocols {{ states, events }};\n\
             protocol device {{ }}\n\
             protocol bfd {BIRD_PROTOCOL} {{\n\
             {interfaces}{neighbors}\
             }}\n",
            bird_address_v4(0),
            self.bird.log_file.display(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = fs::read_to_string(&self.bird.log_file)
        {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.bird.log_file.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // Cleanup must go on past any single failure, so results are only reported.
        if let Err(error) = self.bird.stop() {
            eprintln!("cleanup: stop bird: {error}");
        }
        for namespace in [&self.bird.namespace, &self.our_namespace] {
            match Command::new("ip")
                .args(["netns", "del", namespace])
                .output()
            {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!(
                    "cleanup: ip netns del {namespace}: {}",
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(error) => eprintln!("cleanup: ip netns del {namespace}: {error}"),
            }
        }
        if let Err(error) = fs::remove_dir_all(&self.directory)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: remove {}: {error}", self.directory.display());
        }
    }
}

impl Bird {
    fn start(&self) {
        let mut process = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(process.is_none(), "BIRD runs already");
        let config = self.config.to_str().expect("UTF-8 path");
        let control_socket = self.control_socket.to_str().expect("UTF-8 path");
        // In the foreground, so the child is BIRD itself (`ip netns exec` execs it) and can be
        // ended without trusting a pid file.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "bird", "-f", "-c", config])
            .args(["-s", control_socket])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start bird");
        *process = Some(child);
    }

    /// SIGKILL, so BIRD goes silent at once, as a crashed peer would, without telling its
    /// neighbours anything. Reports instead of panicking, for Drop's sake.
    fn stop(&self) -> std::io::Result<()> {
        let process = self
            .process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut process) = process else {
            return Ok(());
        };
        let killed = process.kill();
        // Reaped even if the kill failed, which may mean BIRD had already exited.
        let waited = process.wait();
        killed.and(waited.map(drop))
    }

    fn birdc(&self) -> Command {
        let mut command = Command::new("birdc");
        command.arg("-s").arg(&self.control_socket);
        command
    }

    fn sessions(&self) -> Vec<BirdSession> {
        let output = self
            .birdc()
            .args(["show", "bfd", "sessions"])
            .output()
            .expect("run birdc");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "birdc failed: {text}");
        parse_bird_sessions(&text)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_file).expect("read BIRD log")
    }

    /// BIRD answers on its control socket once it runs, and lists its configured neighbours
    /// once the BFD protocol has started.
    async fn wait_until_responsive(&self, session_count: usize) {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let output = self
                .birdc()
                .args(["show", "bfd", "sessions"])
                .output()
                .expect("run birdc");
            if output.status.success()
                && parse_bird_sessions(&String::from_utf8_lossy(&output.stdout)).len()
                    == session_count
            {
                return;
            }
            assert!(Instant::now() < deadline, "BIRD never answered: {output:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_sessions(
        &self,
        condition: impl Fn(&[BirdSession]) -> bool,
    ) -> Vec<BirdSession> {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let sessions = self.sessions();
            if condition(&sessions) {
                return sessions;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD's sessions never matched: {sessions:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Rows look like `198.51.100.2  nbird0  Up  07:36:13.116  0.100  0.300`; the Since column may
/// hold a date with a space in it, so Interval and Timeout are taken from the end.
fn parse_bird_sessions(text: &str) -> Vec<BirdSession> {
    text.lines()
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            if columns.len() < 6 {
                return None;
            }
            Some(BirdSession {
                address: columns[0].parse().ok()?,
                interface: columns[1].to_string(),
                state: columns[2].to_string(),
                interval: columns[columns.len() - 2].to_string(),
                timeout: columns[columns.len() - 1].to_string(),
            })
        })
        .collect()
}
