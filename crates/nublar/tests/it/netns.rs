//! `nublar sim --bind-prefix` against `nublar serve` behind a prefix allow-list, for real:
//! both run inside a network namespace this test creates, where the sensors' prefix is
//! routed on the loopback device, so that every sensor address is a local address the
//! simulator can send from and the node sees as the sender.
//!
//! Needs root and `ip` (iproute2). Without them the test says why and passes, except with
//! `CI=true`, where a missing component fails it. Nothing leaves the namespace: the node
//! listens on an address that exists only there, and the namespace is deleted at the end,
//! also when an assertion fails.

use crate::common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::NodeProcess;
use common::netns::Namespace;
use nublar_log::{Log, OpenOptions};

/// The sensors' prefix: routed as local on the namespace's loopback and the only prefix
/// the node admits.
const SENSOR_PREFIX: &str = "2001:db8:7::/48";
/// The node's own address, outside the sensors' prefix: what a client sends from when it
/// does not bind, since it is the only global address in the namespace.
const NODE_ADDRESS: &str = "2001:db8:ff::1";
const TOKEN: &str = "netns-test-secret";
/// The database UDP datagrams go to, apart from the HTTP writes' `park`.
const UDP_DB: &str = "udp";
const PARTITIONS: u32 = 4;

fn in_sensor_prefix(address: Ipv6Addr) -> bool {
    address.segments()[..3] == [0x2001, 0xdb8, 0x7]
}

/// A network namespace of this test's own, with the sensors' prefix routed on `lo` and the
/// node's address on `lo`; deleted when dropped. `Err` when the namespace cannot be created
/// at all (a missing privilege or tool), so the caller can skip.
fn sensor_namespace() -> Result<Namespace, String> {
    let namespace = Namespace::create("sensors")?;
    // A local route makes the kernel take every address of the prefix as its own, the
    // way a lab host or an anycast node does; the simulator binds with IPV6_FREEBIND
    // because Linux lets IPv6 sockets bind only to assigned addresses otherwise.
    namespace.ip(&["-6", "route", "add", "local", SENSOR_PREFIX, "dev", "lo"]);
    // nodad: usable at once, without waiting for duplicate address detection.
    let node = format!("{NODE_ADDRESS}/128");
    namespace.ip(&["-6", "addr", "add", &node, "dev", "lo", "nodad"]);
    Ok(namespace)
}

fn skip(reason: &str) {
    common::netns::skip("the network namespace test", reason);
}

/// `nublar serve` inside the namespace, killed when dropped.
fn start_node(namespace: &Namespace, data: &Path, config: &Path) -> NodeProcess {
    let listen = format!("[{NODE_ADDRESS}]:0");
    let stderr_path = data.join("node.stderr");
    let mut command = namespace.command(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .args(["--http", &listen, "--udp", &listen])
        .stderr(File::create(&stderr_path).unwrap());
    NodeProcess::spawn(command, || {
        format!(
            "stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        )
    })
}

/// `nublar sim` inside the namespace with `args`; its summary (stdout). The simulator
/// ends with success even when the node refused everything: refusals are in the summary.
fn sim(namespace: &Namespace, args: &[&str]) -> String {
    let output = namespace
        .command(env!("CARGO_BIN_EXE_nublar"))
        .arg("sim")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "nublar sim {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A counter from the node's /metrics, asked from inside the namespace.
fn metric(namespace: &Namespace, http: SocketAddr, name: &str) -> u64 {
    let text = namespace.on_thread(move || {
        let mut stream = TcpStream::connect(http).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    });
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn udp_drops(namespace: &Namespace, http: SocketAddr) -> u64 {
    metric(namespace, http, "nublar_udp_dropped_datagrams_total")
}

/// Waits until the node has stored nothing new for a while: it has read every datagram
/// of a burst. Datagrams sent while its receive buffer is still full of the last burst
/// would be lost in the kernel, where the node cannot count them.
fn wait_until_idle(namespace: &Namespace, http: SocketAddr) {
    let accepted = || metric(namespace, http, "nublar_ingest_accepted_lines_total");
    let started = Instant::now();
    let mut last = accepted();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = accepted();
        if now == last {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the node is still storing after 20 s"
        );
        last = now;
    }
}

/// One stored batch of `telemetry`: its database, sender and record count, from the
/// headers the gateway puts on a batch's first record.
#[derive(Debug)]
struct StoredBatch {
    db: String,
    sender: Ipv6Addr,
    records: u64,
}

/// Every batch in `telemetry`, read from the log the stopped node left.
fn stored_batches(data: &Path) -> Vec<StoredBatch> {
    let options = OpenOptions {
        read_only: true,
        background: false,
        ..OpenOptions::default()
    };
    let log = Log::open_with(data.join("log"), options).unwrap();
    let mut stored = Vec::new();
    for partition in 0..PARTITIONS {
        let mut offset = log.start_offset("telemetry", partition).unwrap();
        let end = log.end_offset("telemetry", partition).unwrap();
        while offset < end {
            let batches = log.read("telemetry", partition, offset, 1 << 20).unwrap();
            for view in batches.iter() {
                let records = view.records().unwrap();
                let first = records.iter().next().unwrap().unwrap();
                let header =
                    |name: &str| String::from_utf8(first.header(name).unwrap().to_vec()).unwrap();
                stored.push(StoredBatch {
                    db: header("db"),
                    // The gateway writes IPv6 senders in full, never IPv4-mapped here.
                    sender: header("sender").parse().unwrap(),
                    records: view.record_count() as u64,
                });
            }
            offset = batches.next_offset().unwrap();
        }
    }
    stored
}

#[test]
fn bind_prefix_sends_from_the_sensors_addresses_which_the_allow_list_admits() {
    if let Some(reason) = common::netns::missing_component() {
        return skip(&reason);
    }
    let namespace = match sensor_namespace() {
        Ok(namespace) => namespace,
        // Root without CAP_SYS_ADMIN (a container) cannot create namespaces.
        Err(error) => return skip(&error),
    };
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("nublar.toml");
    std::fs::write(
        &config,
        format!(
            "[udp]\ndb = \"{UDP_DB}\"\n\n[log]\npartitions = {PARTITIONS}\n\n\
             [access]\nallow = [\"{SENSOR_PREFIX}\"]\n\n\
             [[access.tokens]]\nname = \"park\"\nsecret = \"{TOKEN}\"\nscopes = [\"write:park\"]\n"
        ),
    )
    .unwrap();
    let mut node = start_node(&namespace, data.path(), &config);
    let http = format!("http://{}", node.http);
    let udp = node.udp.to_string();
    // Few lines per sensor, so most bodies are small, and more sensors than the simulator
    // keeps connections open: its connection cache evicts and reconnects.
    let common = ["--sensors", "400", "--rate", "0", "--seed", "7"];

    // HTTP from the sensors' own addresses: every event acknowledged.
    let summary = sim(
        &namespace,
        &[
            &common[..],
            &[
                "--bind-prefix",
                "--target",
                &http,
                "--token",
                TOKEN,
                "--events",
                "3000",
            ],
            &["--batch", "100"],
        ]
        .concat(),
    );
    assert!(
        summary.contains("3000 events sent, 3000 acknowledged"),
        "{summary}"
    );
    assert!(summary.contains("errors: none"), "{summary}");

    // The same without --bind-prefix comes from the node's own address, outside the
    // allow-list: a valid token does not help, every request gets 403.
    let refused = sim(
        &namespace,
        &[
            &common[..],
            &[
                "--target", &http, "--token", TOKEN, "--events", "500", "--batch", "100",
            ],
        ]
        .concat(),
    );
    assert!(
        refused.contains("500 events sent, 0 acknowledged"),
        "{refused}"
    );
    assert!(refused.contains("http 403: 5"), "{refused}");

    // UDP carries no token, so with tokens configured only the allow-list admits it: from
    // the sensors' addresses the node takes every datagram it reads (the kernel may lose
    // some of a burst of one datagram per sensor in a full receive buffer)...
    let sent = sim(
        &namespace,
        &[
            &common[..],
            &[
                "--protocol",
                "udp",
                "--bind-prefix",
                "--target",
                &udp,
                "--events",
                "1000",
            ],
        ]
        .concat(),
    );
    assert!(sent.contains("1000 events sent"), "{sent}");
    assert!(sent.contains("errors: none"), "{sent}");
    wait_until_idle(&namespace, node.http);
    assert_eq!(udp_drops(&namespace, node.http), 0);
    // ...and from the node's own address it drops them: ten datagrams of 100 lines.
    let sent = sim(
        &namespace,
        &[
            &common[..],
            &[
                "--protocol",
                "udp",
                "--target",
                &udp,
                "--events",
                "1000",
                "--batch",
                "100",
            ],
        ]
        .concat(),
    );
    assert!(sent.contains("1000 events sent"), "{sent}");
    assert!(sent.contains("errors: none"), "{sent}");
    // Each datagram is dropped as the node reads it; wait until it has read them all.
    let waited = Instant::now();
    while udp_drops(&namespace, node.http) < 10 && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        udp_drops(&namespace, node.http),
        10,
        "one per datagram; the node's stderr:\n{}",
        std::fs::read_to_string(data.path().join("node.stderr")).unwrap_or_default()
    );

    node.signal(libc::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the node's exit: {status:?}");
    drop(node);

    let batches = stored_batches(data.path());
    let outside: Vec<&StoredBatch> = batches
        .iter()
        .filter(|batch| !in_sensor_prefix(batch.sender))
        .collect();
    assert!(
        outside.is_empty(),
        "stored from outside the prefix: {outside:?}"
    );
    let count = |db: &str| -> u64 {
        batches
            .iter()
            .filter(|batch| batch.db == db)
            .map(|batch| batch.records)
            .sum()
    };
    assert_eq!(
        count("park"),
        3000,
        "every acknowledged HTTP event is stored"
    );
    // Loopback UDP may lose datagrams in a full receive buffer, never gain any.
    let udp_stored = count(UDP_DB);
    assert!(
        udp_stored > 0 && udp_stored <= 1000,
        "UDP records: {udp_stored}"
    );
    let mut senders: Vec<Ipv6Addr> = batches.iter().map(|batch| batch.sender).collect();
    senders.sort();
    senders.dedup();
    // One body per sensor: many senders, each a sensor's address (checked above), and
    // never the loopback or the node's own address.
    assert!(senders.len() > 100, "distinct senders: {}", senders.len());
    eprintln!(
        "netns test: {} batches from {} sensor addresses, {udp_stored} of 1000 UDP events \
         stored, {:.1} s",
        batches.len(),
        senders.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn bind_prefix_refuses_an_ipv4_target_with_a_clear_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .args(["sim", "--bind-prefix", "--target", "http://127.0.0.1:9"])
        .args(["--events", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("--bind-prefix") && error.contains("IPv6"),
        "{error}"
    );
}
