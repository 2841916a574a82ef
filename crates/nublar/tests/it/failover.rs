//! Sub-second failover of a sender between two gateways, end to end: two `nublar serve` on
//! their own loopback addresses answer BFD from 127.0.0.0/8, and `nublar sim --bfd` sends to
//! them under load while one gateway is killed (and restarted), the other frozen with SIGSTOP,
//! and the first finally drained with SIGTERM. Afterwards both logs are read: every event the
//! simulator sent is there, and the only second copies are of batches the simulator reports
//! having resent to another gateway, recognisable by the Idempotency-Key each copy carries.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::NodeProcess;
use nublar_log::{Log, OpenOptions};

const SENDER: &str = "127.0.0.1";
const GATEWAY_A: &str = "127.0.0.2";
const GATEWAY_B: &str = "127.0.0.3";

/// A UDP port free on the sender's and both gateways' addresses right now: BFD answers on the
/// port it listens on, so all three share one port on their own addresses.
fn shared_port() -> u16 {
    loop {
        let port = UdpSocket::bind((SENDER, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if [GATEWAY_A, GATEWAY_B]
            .iter()
            .all(|host| UdpSocket::bind((*host, port)).is_ok())
        {
            return port;
        }
    }
}

fn gateway_config(host: &str, bfd_port: u16) -> String {
    format!(
        r#"
[bfd]
enabled = true
ipv4_listen = "{host}:{bfd_port}"
ipv6_listen = ""
desired_min_tx_ms = 50
required_min_rx_ms = 50
detect_multiplier = 3
accept_from = ["127.0.0.0/8"]
"#
    )
}

/// Starts (or restarts, on the same data and ports) the gateway on `host`.
fn start_gateway(data: &Path, host: &str, http_port: u16, bfd_port: u16) -> NodeProcess {
    std::fs::create_dir_all(data).unwrap();
    let config = data.join("node.toml");
    std::fs::write(&config, gateway_config(host, bfd_port)).unwrap();
    let stderr_path = data.join(format!(
        "stderr-{}.txt",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut command = Command::new(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .args(["--http", &format!("{host}:{http_port}")])
        .args(["--udp", &format!("{host}:0")])
        .args(["--drain-seconds", "5"])
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    NodeProcess::spawn(command, move || {
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    })
}

/// Every `telemetry` record of the log in `data`: its unique field's value and the key of the
/// batch it came in.
fn stored(data: &Path) -> Vec<(i64, String)> {
    let log = Log::open_with(
        data.join("log"),
        OpenOptions {
            read_only: true,
            background: false,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let partitions = log
        .topics()
        .into_iter()
        .find(|(name, _)| name == "telemetry")
        .map_or(0, |(_, config)| config.partitions);
    let mut found = Vec::new();
    for partition in 0..partitions {
        let mut offset = log.start_offset("telemetry", partition).unwrap();
        let end = log.end_offset("telemetry", partition).unwrap();
        while offset < end {
            let batches = log.read("telemetry", partition, offset, 1 << 20).unwrap();
            for view in batches.iter() {
                let key = view.batch_key().unwrap().expect("the simulator sends keys");
                for record in view.records().unwrap().iter() {
                    let record = record.unwrap();
                    let event = nublar_model::stored::decode(record.value).unwrap();
                    let uid = match event.field("uid") {
                        Some(nublar_model::FieldValue::I64(uid)) => *uid,
                        _ => panic!("no uid in {event:?}"),
                    };
                    found.push((uid, key.clone()));
                }
            }
            offset = batches.next_offset().unwrap();
        }
    }
    found
}

fn sleep_until(start: Instant, seconds: f64) {
    if let Some(wait) = Duration::from_secs_f64(seconds).checked_sub(start.elapsed()) {
        std::thread::sleep(wait);
    }
}

#[test]
fn a_sender_fails_over_between_gateways_without_losing_an_event() {
    let root = tempfile::tempdir().unwrap();
    let bfd_port = shared_port();
    let free_tcp = |host: &str| {
        std::net::TcpListener::bind((host, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (http_a, http_b) = (free_tcp(GATEWAY_A), free_tcp(GATEWAY_B));
    let (data_a, data_b) = (root.path().join("a"), root.path().join("b"));
    let mut a = start_gateway(&data_a, GATEWAY_A, http_a, bfd_port);
    let mut b = start_gateway(&data_b, GATEWAY_B, http_b, bfd_port);
    let summary_path: PathBuf = root.path().join("summary.json");
    let sim_output = root.path().join("sim.txt");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .arg("sim")
        .args(["--target", &format!("http://{GATEWAY_A}:{http_a}")])
        .args(["--target", &format!("http://{GATEWAY_B}:{http_b}")])
        .args(["--bfd", "--bfd-local", SENDER])
        .args(["--bfd-port", &bfd_port.to_string()])
        .args(["--rate", "10000", "--duration", "16", "--batch", "250"])
        .args(["--concurrency", "4", "--unique-field", "uid"])
        .args(["--summary-json", summary_path.to_str().unwrap()])
        .stdout(std::fs::File::create(&sim_output).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();

    // Killed: its connections break at once, and its BFD session times out.
    sleep_until(start, 4.5);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    a = start_gateway(&data_a, GATEWAY_A, http_a, bfd_port);
    // Frozen: its sockets stay open and silent; only BFD notices.
    sleep_until(start, 8.5);
    b.signal(libc::SIGSTOP);
    sleep_until(start, 10.5);
    b.signal(libc::SIGCONT);
    // Drained: the node says AdminDown first, and the sender moves without calling it a failure.
    sleep_until(start, 13.5);
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(20)).success());

    let status = sim.wait().unwrap();
    let printed = std::fs::read_to_string(&sim_output).unwrap();
    assert!(status.success(), "{printed}");
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(20)).success());

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let sent = summary["sent"].as_i64().unwrap();
    assert!(sent > 50_000, "{printed}");
    assert_eq!(summary["acknowledged"].as_i64(), Some(sent), "{printed}");
    assert!(summary["failovers"].as_u64().unwrap() >= 2, "{printed}");
    assert!(summary["drains"].as_u64().unwrap() >= 1, "{printed}");
    let resent: BTreeSet<String> = summary["resent_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| format!("park/{}", key.as_str().unwrap()))
        .collect();

    let mut copies = BTreeMap::<i64, Vec<String>>::new();
    for (uid, key) in stored(&data_a).into_iter().chain(stored(&data_b)) {
        copies.entry(uid).or_default().push(key);
    }
    let missing: Vec<i64> = (0..sent).filter(|uid| !copies.contains_key(uid)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are in neither log, first {:?}; {printed}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        copies.len() as i64,
        sent,
        "no event the simulator did not send"
    );
    let mut second_copies = 0;
    for (uid, keys) in &copies {
        if keys.len() > 1 {
            second_copies += keys.len() - 1;
            for key in keys {
                assert!(
                    resent.contains(key),
                    "event {uid} is stored {} times, but its batch {key} was never resent",
                    keys.len()
                );
            }
        }
    }
    eprintln!(
        "failover test: {sent} events, {} batches resent, {second_copies} second copies; {}",
        resent.len(),
        printed
            .lines()
            .find(|line| line.starts_with("failover:"))
            .unwrap_or("")
    );
}
