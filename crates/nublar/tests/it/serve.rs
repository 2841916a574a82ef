//! `nublar serve` as a process: the first line, writes over IPv4 and IPv6,
//! idempotent retries across a SIGKILL and restart, and a SIGTERM drain.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::NodeProcess;

type Node = NodeProcess;

trait Start {
    fn start(data: &Path, http: &str) -> Node;
    fn start_with(data: &Path, http: &str, extra: &[&str]) -> Node;
}

impl Start for NodeProcess {
    fn start(data: &Path, http: &str) -> Node {
        Node::start_with(data, http, &[])
    }

    fn start_with(data: &Path, http: &str, extra: &[&str]) -> Node {
        let stderr = data.join("stderr.txt");
        let mut command = Command::new(env!("CARGO_BIN_EXE_nublar"));
        command
            .args(["serve", "--data", data.to_str().unwrap(), "--http", http])
            .args(["--udp", "127.0.0.1:0", "--partitions", "2"])
            .args(extra)
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&stderr)
                    .unwrap(),
            );
        NodeProcess::spawn(command, move || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        })
    }
}

fn post(address: SocketAddr, target: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let (status, body) = common::request(address, "POST", target, headers, body.as_bytes());
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn stored_records(data: &Path) -> i64 {
    let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .args(["log", "topics", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("telemetry"))
        .unwrap_or_else(|| panic!("{text}"));
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn a_node_takes_writes_over_ipv4_and_ipv6_and_drains_on_sigterm() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let data = tempfile::tempdir().unwrap();
        let mut node = Node::start(data.path(), bind);
        let (status, reply) = post(
            node.http,
            "/api/v2/write?bucket=park",
            &[],
            "weather,station=s1 temp_c=21.5 1\n",
        );
        assert_eq!(status, 204, "{reply}");
        node.signal(libc::SIGTERM);
        let status = node.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "exit status {status:?}");
        assert_eq!(stored_records(data.path()), 1);
    }
}

#[test]
fn a_retry_after_a_crash_and_restart_stores_no_second_copy() {
    let data = tempfile::tempdir().unwrap();
    let body =
        "collar,animal=a1 lat=-1.25,lon=36.75 100\ncollar,animal=a1 lat=-1.26,lon=36.76 200\n";
    let headers = [("Idempotency-Key", "batch-7")];
    let node = Node::start(data.path(), "127.0.0.1:0");
    assert_eq!(
        post(node.http, "/api/v3/write_lp?db=park", &headers, body).0,
        204
    );
    node.signal(libc::SIGKILL);
    drop(node);
    let mut node = Node::start(data.path(), "127.0.0.1:0");
    assert_eq!(
        post(node.http, "/api/v3/write_lp?db=park", &headers, body).0,
        204
    );
    node.signal(libc::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(data.path().join("stderr.txt")).unwrap_or_default()
    );
    assert_eq!(
        stored_records(data.path()),
        2,
        "the retried batch is stored once"
    );
}

#[test]
fn a_configuration_file_sets_tokens_and_flags_override_it() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("nublar.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:1\"\n\n[[access.tokens]]\nname = \"ops\"\nsecret = \"t0k3n\"\nscopes = [\"write:park\"]\n",
    )
    .unwrap();
    // The flag's ephemeral port wins over the file's port 1.
    let mut node = Node::start_with(
        data.path(),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    assert_ne!(node.http.port(), 1);
    assert_eq!(
        post(node.http, "/api/v2/write?bucket=park", &[], "m f=1 1\n").0,
        401
    );
    let token = [("Authorization", "Token t0k3n")];
    assert_eq!(
        post(node.http, "/api/v2/write?bucket=park", &token, "m f=1 1\n").0,
        204
    );
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(20)).success());

    std::fs::write(&config, "[http]\nlisten_on = \"127.0.0.1:0\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .args([
            "serve",
            "--data",
            data.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("listen_on") && error.contains("nublar.toml"),
        "{error}"
    );
}

#[test]
fn the_simulator_writes_files_and_sends_to_a_node_over_http() {
    let data = tempfile::tempdir().unwrap();
    let park = data.path().join("park.geojson");
    let lines = data.path().join("lines.lp");
    let sim = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
            .arg("sim")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    sim(&["--park-out", park.to_str().unwrap(), "--sensors", "200"]);
    let geojson: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&park).unwrap()).unwrap();
    assert_eq!(geojson["type"], "FeatureCollection");
    sim(&[
        "--park",
        park.to_str().unwrap(),
        "--out",
        lines.to_str().unwrap(),
        "--events",
        "1000",
    ]);
    let text = std::fs::read_to_string(&lines).unwrap();
    assert_eq!(text.lines().count(), 1000);
    let parsed = nublar_model::parse_lines(
        text.as_bytes(),
        nublar_model::Precision::Ns,
        Default::default(),
    );
    assert!(parsed.into_iter().all(|(_, line)| line.is_ok()));

    let mut node = Node::start(data.path(), "127.0.0.1:0");
    let target = format!("http://{}", node.http);
    let summary = sim(&[
        "--target",
        &target,
        "--rate",
        "0",
        "--events",
        "20000",
        "--batch",
        "1000",
        "--unique-field",
        "uid",
    ]);
    assert!(
        summary.contains("20000 events sent, 20000 acknowledged"),
        "{summary}"
    );
    assert!(summary.contains("errors: none"), "{summary}");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    assert_eq!(stored_records(data.path()), 20000);
}

#[test]
fn log_commands_ask_the_running_node_with_an_admin_token() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("nublar.toml");
    std::fs::write(
        &config,
        "[[access.tokens]]\nname = \"ops\"\nsecret = \"adm1n\"\nscopes = [\"admin\"]\n\n\
         [[access.tokens]]\nname = \"collars\"\nsecret = \"wr1te\"\nscopes = [\"write:park\"]\n",
    )
    .unwrap();
    let mut node = Node::start_with(
        data.path(),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let token = [("Authorization", "Token wr1te")];
    let body = "weather,station=s1 temp_c=21.5 1\nweather,station=s2 temp_c=22.5 2\n";
    assert_eq!(
        post(
            node.http,
            "/api/v3/write_lp?db=park&precision=ns",
            &token,
            body
        )
        .0,
        204
    );
    let log = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nublar"))
            .args(["log", "--data", data.path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let refused = log(&["topics"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let forbidden = log(&["--token", "wr1te", "topics"]);
    assert!(String::from_utf8_lossy(&forbidden.stderr).contains("403"));
    let topics = log(&["--token", "adm1n", "topics"]);
    assert!(
        topics.status.success(),
        "{}",
        String::from_utf8_lossy(&topics.stderr)
    );
    let text = String::from_utf8(topics.stdout).unwrap();
    let telemetry = text
        .lines()
        .find(|line| line.starts_with("telemetry"))
        .unwrap();
    assert_eq!(telemetry.split_whitespace().nth(3), Some("2"), "{text}");
    // The partition the sender's batch went to holds both lines.
    let mut tails = String::new();
    for partition in ["0", "1"] {
        let tail = log(&[
            "--token",
            "adm1n",
            "tail",
            "telemetry",
            "-p",
            partition,
            "-n",
            "5",
        ]);
        assert!(tail.status.success());
        tails.push_str(&String::from_utf8(tail.stdout).unwrap());
    }
    assert!(
        tails.contains("weather,station=s2 temp_c=22.5 2"),
        "{tails}"
    );
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    assert!(
        !data.path().join("node.json").exists(),
        "a stopped node takes its address file away"
    );
}
