//! BFD in `nublar serve`: two nodes on loopback (each with its own address and UDP port) bring
//! a session Up, `nublar bfd status` shows it on both sides, and a SIGTERM on one makes the
//! other see the peer's AdminDown (a drain), not a detection timeout.

use crate::common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::NodeProcess;

const ADMIN_TOKEN: &str = "bfd-test-admin-secret";

/// A UDP port nobody uses on `ip` right now: bound to port 0, then released.
fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node listening for BFD on `local:listen_port` with one session to `peer:peer_port`.
fn bfd_config(local: &str, listen_port: u16, peer: &str, peer_port: u16) -> String {
    format!(
        r#"
[bfd]
enabled = true
ipv4_listen = "{local}:{listen_port}"
ipv6_listen = ""
desired_min_tx_ms = 100
required_min_rx_ms = 100
detect_multiplier = 3

[[bfd.peers]]
local = "{local}"
peer = "{peer}"
peer_port = {peer_port}

[[access.tokens]]
name = "operator"
secret = "{ADMIN_TOKEN}"
scopes = ["admin"]
"#
    )
}

fn start(data: &Path, config: Option<&str>) -> NodeProcess {
    std::fs::create_dir_all(data).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .args(["--partitions", "1", "--drain-seconds", "5"]);
    if let Some(config) = config {
        let path = data.join("node.toml");
        std::fs::write(&path, config).unwrap();
        command.args(["--config", path.to_str().unwrap()]);
    }
    let stderr = data.join("stderr.txt");
    command.stderr(std::fs::File::create(&stderr).unwrap());
    NodeProcess::spawn(command, move || {
        std::fs::read_to_string(&stderr).unwrap_or_default()
    })
}

/// `nublar bfd status` against the node on `data`: whether it succeeded, and what it printed.
fn bfd_status(data: &Path, token: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["bfd", "status", "--data", data.to_str().unwrap()])
        .env_remove("NUBLAR_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let output = command.output().unwrap();
    let text = if output.status.success() {
        String::from_utf8(output.stdout).unwrap()
    } else {
        String::from_utf8(output.stderr).unwrap()
    };
    (output.status.success(), text)
}

/// The one session's row: local, peer, state, remote state, diagnostic, remote diagnostic, TX
/// ms, detection ms, sent, received, drops.
fn session_row(data: &Path) -> Vec<String> {
    let (ok, text) = bfd_status(data, Some(ADMIN_TOKEN));
    assert!(ok, "bfd status failed: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "one header and one session expected:\n{text}"
    );
    assert!(lines[0].starts_with("LOCAL"), "{text}");
    let row: Vec<String> = lines[1].split_whitespace().map(str::to_owned).collect();
    assert_eq!(row.len(), 12, "{text}");
    assert_eq!(row[11], "peer", "a configured session: {text}");
    row
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_come_up_and_a_sigterm_is_seen_as_admin_down() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let port_a = free_udp_port("127.0.0.1");
    let port_b = free_udp_port("127.0.0.2");
    let mut a = start(
        &data_a,
        Some(&bfd_config("127.0.0.1", port_a, "127.0.0.2", port_b)),
    );
    let mut b = start(
        &data_b,
        Some(&bfd_config("127.0.0.2", port_b, "127.0.0.1", port_a)),
    );

    // The operator route wants the admin token.
    let (ok, text) = bfd_status(&data_a, None);
    assert!(!ok && text.contains("401"), "{text}");

    for (data, local, peer) in [
        (&data_a, "127.0.0.1", "127.0.0.2"),
        (&data_b, "127.0.0.2", "127.0.0.1"),
    ] {
        wait_for(
            Duration::from_secs(15),
            "the session comes Up at 100 ms",
            || {
                let row = session_row(data);
                // Up, and the Poll that leaves the 1 s rate of Down behind has finished.
                row[2] == "Up" && row[3] == "Up" && row[6] == "100" && row[7] == "300"
            },
        );
        let row = session_row(data);
        assert_eq!((row[0].as_str(), row[1].as_str()), (local, peer));
        assert_eq!(row[4], "none", "{row:?}");
        assert_eq!(row[6], "100", "negotiated TX interval: {row:?}");
        assert_eq!(row[7], "300", "detection time: {row:?}");
        let (sent, received) = (
            row[8].parse::<u64>().unwrap(),
            row[9].parse::<u64>().unwrap(),
        );
        assert!(sent > 0 && received > 0, "{row:?}");
        assert_eq!(row[10], "0", "drops: {row:?}");
    }

    // /metrics shows the session too.
    let metrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(a.http).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    for line in [
        "nublar_bfd_session_up{local=\"127.0.0.1\",peer=\"127.0.0.2\"} 1",
        "nublar_bfd_session_state{local=\"127.0.0.1\",peer=\"127.0.0.2\"} 3",
        "nublar_bfd_session_detection_time_seconds{local=\"127.0.0.1\",peer=\"127.0.0.2\"} 0.3",
        "nublar_bfd_sessions_accepted_total 0",
        "nublar_bfd_datagrams_dropped_total{reason=\"wrong_ttl\"} 0",
        "nublar_bfd_datagrams_received_total ",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // B drains: A must see the peer's AdminDown, not a detection timeout.
    b.signal(libc::SIGTERM);
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(10), "A hears B's AdminDown", || {
        let row = session_row(&data_a);
        seen.push(row.clone());
        assert_ne!(
            row[4], "control-detection-time-expired",
            "A timed out instead of hearing AdminDown: {seen:?}"
        );
        row[2] == "Down"
    });
    eprintln!("A's session while B drained: {seen:?}");
    let row = seen.last().unwrap();
    assert_eq!(row[4], "neighbor-signaled-session-down", "{seen:?}");
    assert_eq!(row[3], "AdminDown", "{seen:?}");
    assert_eq!(row[5], "administratively-down", "{seen:?}");
    let status = b.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "B: {status:?}\n{}",
        std::fs::read_to_string(data_b.join("stderr.txt")).unwrap_or_default()
    );
    let stderr_b = std::fs::read_to_string(data_b.join("stderr.txt")).unwrap();
    assert!(stderr_b.contains("AdminDown"), "{stderr_b}");
    assert!(stderr_b.contains("stopped cleanly"), "{stderr_b}");
    eprintln!("B's stderr:\n{stderr_b}");

    // With B gone and silent, A stays Down for the reason it was given.
    std::thread::sleep(Duration::from_millis(500));
    let row = session_row(&data_a);
    assert_eq!(row[2], "Down", "{row:?}");
    assert_eq!(row[4], "neighbor-signaled-session-down", "{row:?}");

    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "A: {status:?}\n{}",
        std::fs::read_to_string(data_a.join("stderr.txt")).unwrap_or_default()
    );
}

#[test]
fn without_a_bfd_section_the_node_runs_no_speaker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut node = start(&data, None);
    let (ok, text) = bfd_status(&data, None);
    assert!(!ok, "{text}");
    assert!(
        text.contains("404") && text.contains("not enabled"),
        "{text}"
    );
    let stderr = std::fs::read_to_string(data.join("stderr.txt")).unwrap();
    assert!(!stderr.contains("bfd listening"), "{stderr}");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(20)).success());
}
