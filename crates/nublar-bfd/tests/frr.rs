//! Interop with FRRouting's bfdd (Debian 12 `frr` 8.4), over a veth pair between two network
//! namespaces this test creates: bfdd and its zebra/staticd/watchfrr run in one, our `Speaker`
//! in the other, entered from a dedicated thread with `setns`. No traffic leaves them.
//! Sessions: single hop over IPv4 and IPv6, and multihop (RFC 5883) over IPv4.
//!
//! Needs root, `ip` and FRR. Without them the test prints why and passes, unless `CI=true`,
//! where a missing piece is a failure: CI must really run it.

mod lab;

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab::{command_exists, find, run, wait_for_status};
use nublar_bfd::{
    Diagnostic, Parameters, SessionId, SessionSpec, Speaker, SpeakerConfig, State, StateEvent,
    limits,
};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

const FRR_DIRECTORY: &str = "/usr/lib/frr";
const FRR_ADDRESS_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OUR_ADDRESS_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const FRR_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const OUR_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// A second pair on the same link for a multihop session (RFC 5883): FRR keys sessions by
/// address pair and kind, and a pair of its own keeps the single-hop one unambiguous.
const FRR_MULTIHOP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const OUR_MULTIHOP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const FRR_INTERFACE: &str = "nbfdfrr0";
const OUR_INTERFACE: &str = "nbfdus0";

/// Both sides start at the slow rate of one packet a second; FRR needs a moment to start too.
const STATE_WAIT: Duration = Duration::from_secs(20);
/// Timer granularity plus scheduling on a loaded two-core machine.
const DETECTION_MARGIN: Duration = Duration::from_millis(250);

#[test]
fn speaker_interoperates_with_frr_bfdd() {
    if !lab::ready("the FRR interop test", requirements) {
        return;
    }
    let started = std::time::Instant::now();
    let lab = Lab::create();
    let frr = lab.frr.clone();
    let our_namespace = lab.our_namespace.clone();
    // The lab's Drop cleans up and shows FRR's log if the scenario panics.
    lab::run_in_namespace(our_namespace, move || async move { scenario(&frr).await });
    drop(lab);
    let _ = writeln!(
        std::io::stderr(),
        "FRR interop test took {:?}",
        started.elapsed()
    );
}

async fn scenario(frr: &Frr) {
    frr.wait_until_responsive().await;
    let speaker = Speaker::bind(SpeakerConfig::standard()).expect("bind 3784 in our namespace");
    let mut events = speaker.subscribe();
    // 300 ms rather than a deployment's 100: the test is about the protocol, and the virtual
    // machines it runs on pause for a few hundred milliseconds at times, which is no
    // protocol's doing. How fast detection is gets measured by `nublar bench failover`.
    let fast = Parameters {
        desired_min_tx_interval_us: 300_000,
        required_min_rx_interval_us: 300_000,
        detect_multiplier: 3,
    };
    let ipv4 = speaker
        .add_session(SessionSpec::single_hop(
            IpAddr::V4(OUR_ADDRESS_V4),
            IpAddr::V4(FRR_ADDRESS_V4),
            fast,
        ))
        .await
        .expect("IPv4 session");
    let ipv6 = speaker
        .add_session(SessionSpec::single_hop(
            IpAddr::V6(OUR_ADDRESS_V6),
            IpAddr::V6(FRR_ADDRESS_V6),
            fast,
        ))
        .await
        .expect("IPv6 session");
    speaker
        .listen_multihop(
            Some(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                limits::MULTIHOP_CONTROL_PORT,
            )),
            None,
        )
        .await
        .expect("bind 4784 in our namespace");
    let multihop = speaker
        .add_session(SessionSpec::multihop(
            IpAddr::V4(OUR_MULTIHOP_V4),
            IpAddr::V4(FRR_MULTIHOP_V4),
            fast,
            limits::MULTIHOP_MIN_TTL_DEFAULT,
        ))
        .await
        .expect("multihop session");

    // All three sessions come Up.
    wait_for_events(
        &mut events,
        &[(ipv4, State::Up), (ipv6, State::Up), (multihop, State::Up)],
    )
    .await;
    eprintln!("single-hop IPv4 and IPv6 and multihop sessions Up");

    // FRR agrees: its view of each peer matches ours, discriminators crosswise.
    let settled = wait_for_status(&speaker, STATE_WAIT, |sessions| {
        sessions.iter().all(|status| {
            status.state == State::Up
                && !status.poll_active
                && status.transmit_interval == Duration::from_millis(300)
                && status.detection_time == Some(Duration::from_millis(900))
        })
    })
    .await;
    for status in &settled {
        let peer = frr
            .wait_for_peer(status.local, |peer| peer["status"] == "up")
            .await;
        assert_eq!(peer["id"], u64::from(status.remote_discriminator), "{peer}");
        assert_eq!(
            peer["remote-id"],
            u64::from(status.local_discriminator),
            "{peer}"
        );
        assert_eq!(peer["remote-receive-interval"], 300, "{peer}");
        assert_eq!(peer["remote-transmit-interval"], 300, "{peer}");
        assert_eq!(peer["remote-detect-multiplier"], 3, "{peer}");
        assert_eq!(peer["multihop"] == true, status.multihop, "{peer}");
        assert_eq!(status.remote_state, State::Up);
    }
    eprintln!("vtysh agrees with our state");

    // FRR changes its timers for the IPv4 peer: a Poll reaches us, we answer with a Final, and
    // our negotiated transmit interval (its RX 750 ms) and detection time (3 x its TX 600 ms)
    // change.
    let before = find(&settled, ipv4).counters;
    frr.configure_peer_timers(OUR_ADDRESS_V4, 600, 750);
    let renegotiated = wait_for_status(&speaker, STATE_WAIT, |sessions| {
        let status = find(sessions, ipv4);
        status.transmit_interval == Duration::from_millis(750)
            && status.detection_time == Some(Duration::from_millis(1800))
    })
    .await;
    let after = find(&renegotiated, ipv4).counters;
    assert!(after.poll_packets_received > before.poll_packets_received);
    assert!(after.final_packets_sent > before.final_packets_sent);
    assert_eq!(find(&renegotiated, ipv4).state, State::Up);
    let untouched = find(&renegotiated, ipv6);
    assert_eq!(untouched.transmit_interval, Duration::from_millis(300));
    let peer = frr
        .wait_for_peer(IpAddr::V4(OUR_ADDRESS_V4), |peer| {
            peer["transmit-interval"] == 600 && peer["receive-interval"] == 750
        })
        .await;
    assert_eq!(peer["status"], "up", "{peer}");
    eprintln!("Poll/Final renegotiation seen: {before:?} -> {after:?}");

    // bfdd freezes: each session goes Down within its own detection time.
    let frozen = frr.freeze();
    let mut pending = vec![
        (ipv4, Duration::from_millis(1800)),
        (ipv6, Duration::from_millis(900)),
        (multihop, Duration::from_millis(900)),
    ];
    while !pending.is_empty() {
        let event = next_event(&mut events).await;
        let Some(index) = pending.iter().position(|(id, _)| *id == event.session) else {
            continue;
        };
        assert_eq!(event.to, State::Down, "{event:?}");
        assert_eq!(event.diagnostic, Diagnostic::ControlDetectionTimeExpired);
        let elapsed = frozen.frozen_at.elapsed();
        let (_, detection_time) = pending.swap_remove(index);
        eprintln!(
            "{} Down after {elapsed:?} (detection time {detection_time:?})",
            event.peer
        );
        assert!(
            elapsed <= detection_time + DETECTION_MARGIN,
            "{} detected after {elapsed:?}, detection time {detection_time:?}",
            event.peer
        );
    }
    drop(frozen);

    // Thawed, bfdd times out its side too and every session comes Up again.
    wait_for_events(
        &mut events,
        &[(ipv4, State::Up), (ipv6, State::Up), (multihop, State::Up)],
    )
    .await;
    eprintln!("all sessions Up again after thawing bfdd");

    // Our AdminDown reaches FRR, which reports the neighbour's signal (RFC 5880 6.8.6).
    speaker.set_admin_down(ipv6).await.expect("admin down");
    let peer = frr
        .wait_for_peer(IpAddr::V6(OUR_ADDRESS_V6), |peer| peer["status"] == "down")
        .await;
    assert_eq!(
        peer["diagnostic"], "neighbor signaled session down",
        "{peer}"
    );
    assert_eq!(peer["remote-diagnostic"], "administratively down", "{peer}");

    let counters = speaker.counters().await.expect("speaker runs");
    assert_eq!(
        counters.drops.wrong_ttl, 0,
        "FRR sends TTL 255: {counters:?}"
    );
    assert_eq!(counters.drops.malformed, 0, "{counters:?}");
    speaker.stop().await;
}

async fn next_event(events: &mut broadcast::Receiver<StateEvent>) -> StateEvent {
    timeout(STATE_WAIT, events.recv())
        .await
        .expect("a state change within the wait")
        .expect("event stream open")
}

/// Waits until each (session, state) has been reached, in any order.
async fn wait_for_events(
    events: &mut broadcast::Receiver<StateEvent>,
    wanted: &[(SessionId, State)],
) {
    let mut missing = wanted.to_vec();
    while !missing.is_empty() {
        let event = next_event(events).await;
        eprintln!("event: {event:?}");
        missing.retain(|(id, state)| !(*id == event.session && *state == event.to));
    }
}

/// What the lab needs beyond root and `ip`.
fn requirements() -> Result<(), String> {
    if !command_exists("vtysh") {
        return Err("`vtysh` not found (apt-get install frr)".into());
    }
    for program in ["bfdd", "zebra", "staticd", "watchfrr", "frrinit.sh"] {
        if !Path::new(FRR_DIRECTORY).join(program).exists() {
            return Err(format!(
                "{FRR_DIRECTORY}/{program} not found (apt-get install frr)"
            ));
        }
    }
    Ok(())
}

/// How to reach the FRR instance; FRR's "pathspace" is named like its namespace, which is how
/// `watchfrr --netns` finds the namespace and `vtysh -N` the sockets in /var/run/frr/NAME.
#[derive(Clone)]
struct Frr {
    pathspace: String,
}

/// Everything the test created; Drop removes it all, on success and on panic alike.
struct Lab {
    frr: Frr,
    our_namespace: String,
    config_directory: PathBuf,
    log_file: PathBuf,
}

/// bfdd is stopped (SIGSTOP) while this lives; Drop lets it go on.
struct Frozen {
    pid: i32,
    frozen_at: Instant,
}

impl Lab {
    fn create() -> Lab {
        let suffix = std::process::id();
        let frr_namespace = format!("nbfdfrr{suffix}");
        let lab = Lab {
            frr: Frr {
                pathspace: frr_namespace.clone(),
            },
            our_namespace: format!("nbfdus{suffix}"),
            config_directory: PathBuf::from(format!("/etc/frr/{frr_namespace}")),
            log_file: PathBuf::from(format!("/var/log/frr/{frr_namespace}.log")),
        };
        // From here on the guard exists, so a failure half way still cleans up.
        let frr_ns = lab.frr.pathspace.as_str();
        let our_ns = lab.our_namespace.as_str();
        run("ip", &["netns", "add", frr_ns]);
        run("ip", &["netns", "add", our_ns]);
        run(
            "ip",
            &[
                "link",
                "add",
                FRR_INTERFACE,
                "netns",
                frr_ns,
                "type",
                "veth",
                "peer",
                "name",
                OUR_INTERFACE,
                "netns",
                our_ns,
            ],
        );
        for (namespace, interface, v4, v6, multihop) in [
            (
                frr_ns,
                FRR_INTERFACE,
                FRR_ADDRESS_V4,
                FRR_ADDRESS_V6,
                FRR_MULTIHOP_V4,
            ),
            (
                our_ns,
                OUR_INTERFACE,
                OUR_ADDRESS_V4,
                OUR_ADDRESS_V6,
                OUR_MULTIHOP_V4,
            ),
        ] {
            let v4 = format!("{v4}/24");
            let v6 = format!("{v6}/64");
            run(
                "ip",
                &["-n", namespace, "addr", "add", &v4, "dev", interface],
            );
            // nodad: binding a tentative IPv6 address fails until duplicate detection ends.
            run(
                "ip",
                &[
                    "-n", namespace, "addr", "add", &v6, "dev", interface, "nodad",
                ],
            );
            let multihop = format!("{multihop}/24");
            run(
                "ip",
                &["-n", namespace, "addr", "add", &multihop, "dev", interface],
            );
            run("ip", &["-n", namespace, "link", "set", "lo", "up"]);
            run("ip", &["-n", namespace, "link", "set", interface, "up"]);
        }
        lab.write_frr_config();
        run(&format!("{FRR_DIRECTORY}/frrinit.sh"), &["start", frr_ns]);
        lab
    }

    fn write_frr_config(&self) {
        fs::create_dir_all(&self.config_directory).expect("FRR config directory");
        // watchfrr, zebra and staticd always start; zebra and staticd only listen on loopback.
        let daemons = "bfdd=yes\nvtysh_enable=yes\nzebra_options=\"-A 127.0.0.1 -s 90000000\"\n\
                       staticd_options=\"-A 127.0.0.1\"\nbfdd_options=\"-A 127.0.0.1\"\n\
                       watchfrr_options=\"--netns\"\n";
        let config = format!(
            "frr defaults traditional\n\
             hostname {pathspace}\n\
             log file {log} debugging\n\
             service integrated-vtysh-config\n\
             !\n\
             debug bfd peer\n\
             !\n\
             bfd\n \
              profile fast\n  \
               transmit-interval 300\n  \
               receive-interval 300\n  \
               detect-multiplier 3\n \
              !\n \
              peer {OUR_ADDRESS_V4} interface {FRR_INTERFACE}\n  \
               profile fast\n \
              !\n \
              peer {OUR_ADDRESS_V6} local-address {FRR_ADDRESS_V6} interface {FRR_INTERFACE}\n  \
               profile fast\n \
              !\n \
              peer {OUR_MULTIHOP_V4} multihop local-address {FRR_MULTIHOP_V4}\n  \
               profile fast\n \
              !\n\
             !\n",
            pathspace = self.frr.pathspace,
            log = self.log_file.display(),
        );
        let files = [
            ("daemons", daemons.to_string(), "frr:frr"),
            ("frr.conf", config, "frr:frr"),
            (
                "vtysh.conf",
                "service integrated-vtysh-config\n".to_string(),
                "frr:frrvty",
            ),
        ];
        for (name, contents, owner) in files {
            let path = self.config_directory.join(name);
            fs::write(&path, contents).expect("write FRR config");
            let path = path.to_str().expect("UTF-8 path");
            run("chown", &[owner, path]);
            run("chmod", &["640", path]);
        }
        run(
            "chown",
            &[
                "frr:frr",
                self.config_directory.to_str().expect("UTF-8 path"),
            ],
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = fs::read_to_string(&self.log_file)
        {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.log_file.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // Cleanup must go on past any single failure, so results are only reported.
        if let Some(pid) = self.frr.bfdd_pid() {
            // SAFETY: kill has no memory preconditions; a stale pid only makes it fail.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        let steps: [(&str, Vec<&str>); 3] = [
            (
                &format!("{FRR_DIRECTORY}/frrinit.sh"),
                vec!["stop", self.frr.pathspace.as_str()],
            ),
            ("ip", vec!["netns", "del", self.frr.pathspace.as_str()]),
            ("ip", vec!["netns", "del", self.our_namespace.as_str()]),
        ];
        for (program, arguments) in steps {
            match Command::new(program).args(&arguments).output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!(
                    "cleanup: {program} {arguments:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(error) => eprintln!("cleanup: {program} {arguments:?}: {error}"),
            }
        }
        for path in [
            self.config_directory.clone(),
            PathBuf::from(format!("/var/run/frr/{}", self.frr.pathspace)),
        ] {
            if let Err(error) = fs::remove_dir_all(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("cleanup: remove {}: {error}", path.display());
            }
        }
        let _ = fs::remove_file(&self.log_file);
    }
}

impl Frr {
    fn vtysh(&self, commands: &[&str]) -> String {
        let mut arguments = vec!["-N", self.pathspace.as_str()];
        for command in commands {
            arguments.push("-c");
            arguments.push(command);
        }
        run("vtysh", &arguments)
    }

    fn peers(&self) -> Vec<Value> {
        let text = self.vtysh(&["show bfd peers json"]);
        match serde_json::from_str(&text) {
            Ok(Value::Array(peers)) => peers,
            other => panic!("unexpected `show bfd peers json`: {other:?} from {text}"),
        }
    }

    /// bfdd answers on its vty once it has read its configuration.
    async fn wait_until_responsive(&self) {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let output = Command::new("vtysh")
                .args(["-N", &self.pathspace, "-c", "show bfd peers json"])
                .output()
                .expect("run vtysh");
            if output.status.success()
                && let Ok(Value::Array(peers)) = serde_json::from_slice(&output.stdout)
                && peers.len() == 3
            {
                return;
            }
            assert!(Instant::now() < deadline, "bfdd never answered: {output:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// FRR's entry for the peer at `our_address`, once `condition` holds for it.
    async fn wait_for_peer(
        &self,
        our_address: IpAddr,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let peers = self.peers();
            let peer = peers
                .iter()
                .find(|peer| peer["peer"] == our_address.to_string())
                .unwrap_or_else(|| panic!("FRR has no peer {our_address}: {peers:?}"));
            if condition(peer) {
                return peer.clone();
            }
            assert!(Instant::now() < deadline, "FRR peer never matched: {peer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Peer-level timers; FRR applies them with a Poll sequence.
    fn configure_peer_timers(&self, our_address: Ipv4Addr, transmit_ms: u32, receive_ms: u32) {
        let peer = format!("peer {our_address} interface {FRR_INTERFACE}");
        let transmit = format!("transmit-interval {transmit_ms}");
        let receive = format!("receive-interval {receive_ms}");
        self.vtysh(&[
            "configure terminal",
            "bfd",
            &peer,
            &transmit,
            &receive,
            "end",
        ]);
    }

    fn bfdd_pid(&self) -> Option<i32> {
        fs::read_to_string(format!("/var/run/frr/{}/bfdd.pid", self.pathspace))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn freeze(&self) -> Frozen {
        let pid = self.bfdd_pid().expect("bfdd pid file");
        // SAFETY: kill has no memory preconditions.
        let result = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(
            result,
            0,
            "SIGSTOP bfdd: {}",
            std::io::Error::last_os_error()
        );
        Frozen {
            pid,
            frozen_at: Instant::now(),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in `Frr::freeze`.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}
