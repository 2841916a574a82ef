//! A batch that no consumer can read (a bit flipped on disk) stops the lake sink and the
//! processors at it, says so in `/ready`, `/metrics` and `nublar log stalls`, and stays there
//! until an operator moves each group past it with `nublar log skip`; the rest goes on.

use crate::common;

use std::time::{Duration, Instant};

use common::{nublar, nublar_ok, request, start_node};

const CONFIG_WITHOUT_CONSUMERS: &str = "[lake]\nenabled = false\n[processors]\nenabled = false\n";

fn write(node: &common::NodeProcess, lines: &str) {
    let (status, body) = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park&precision=s",
        &[],
        lines.as_bytes(),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
}

/// `(base offset, bytes)` of every batch in `telemetry`/`partition`, from `nublar log dump`.
fn batches(dir: &str, partition: &str) -> Vec<(i64, u64)> {
    nublar_ok(dir, &["log", "dump", "telemetry", "-p", partition])
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let offsets = words.get(2)?.split_once("..=")?.0.parse().ok()?;
            let bytes = words
                .iter()
                .position(|word| *word == "bytes")
                .and_then(|at| words.get(at + 1)?.parse().ok())?;
            Some((offsets, bytes))
        })
        .collect()
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(node: &common::NodeProcess) -> String {
    let (status, body) = request(
        node.http,
        "GET",
        "/api/v3/query_sql?db=park&format=csv&q=SELECT%20count(*)%20FROM%20gate",
        &[],
        b"",
    );
    let body = String::from_utf8_lossy(&body).into_owned();
    if status == 200 {
        body.lines().nth(1).unwrap_or_default().to_owned()
    } else {
        format!("{status}: {body}")
    }
}

#[test]
fn an_unreadable_batch_stops_each_consumer_until_an_operator_moves_it_on() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    // Three requests from one sender land in one partition, with no consumer running yet.
    let mut node = start_node(data.path(), CONFIG_WITHOUT_CONSUMERS, "127.0.0.1:0");
    write(
        &node,
        "gate,gate=g1 open=true 1700000001\ngate,gate=g2 open=true 1700000002\n",
    );
    write(&node, "gate,gate=g3 open=false 1700000003\n");
    write(&node, "gate,gate=g4 open=true 1700000004\n");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    drop(node);
    let (partition, found) = ["0", "1"]
        .into_iter()
        .map(|partition| (partition, batches(dir, partition)))
        .find(|(_, found)| found.len() == 3)
        .expect("one partition holds the three batches");
    // A bit of the second batch flips at rest.
    let segment = data.path().join(format!(
        "log/topics/telemetry/{partition}/00000000000000000000.log"
    ));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[found[0].1 as usize + 80] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let mut node = start_node(data.path(), "", "127.0.0.1:0");
    until("both consumers stop at the damage", || {
        let (status, body) = request(node.http, "GET", "/ready", &[], b"");
        let body = String::from_utf8_lossy(&body);
        status == 503 && body.contains("lake stopped in") && body.contains("processors stopped in")
    });
    until("the first batch's rows are in the lake", || {
        count(&node) == "2"
    });
    let stalled = nublar_ok(dir, &["log", "stalls"]);
    for group in ["lake", "processors"] {
        assert!(
            stalled.contains(&format!(
                "group {group} stopped in telemetry/{partition} at offset 2"
            )),
            "{stalled}"
        );
    }
    let metrics = String::from_utf8(request(node.http, "GET", "/metrics", &[], b"").1).unwrap();
    assert!(
        metrics.contains("nublar_consumer_stalled_partitions 2"),
        "{metrics}"
    );
    // Where the next batch starts is not known from a batch whose CRC fails: --to says it.
    let refused = nublar(
        dir,
        &[
            "log",
            "skip",
            "telemetry",
            "-p",
            partition,
            "--group",
            "lake",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--to"));
    let to = found[2].0.to_string();
    for group in ["lake", "processors"] {
        let said = nublar_ok(
            dir,
            &[
                "log",
                "skip",
                "telemetry",
                "-p",
                partition,
                "--group",
                group,
                "--to",
                &to,
            ],
        );
        assert!(said.contains("offsets 2..3 will not be consumed"), "{said}");
    }
    until("the lake goes on past the damage", || count(&node) == "3");
    // Readiness no longer names the consumers. (It still names the partition itself: the
    // log found the damage inside acknowledged data when it opened, and takes no more writes
    // there until an operator looks, which is the log's own rule.)
    until("the consumers leave readiness", || {
        let (_, body) = request(node.http, "GET", "/ready", &[], b"");
        let body = String::from_utf8_lossy(&body);
        !body.contains("lake stopped in") && !body.contains("processors stopped in")
    });
    let ready = String::from_utf8(request(node.http, "GET", "/ready", &[], b"").1).unwrap();
    let log_stop = format!("telemetry/{partition} stopped: corrupt batch");
    assert!(ready.contains(&log_stop), "{ready}");
    let metrics = String::from_utf8(request(node.http, "GET", "/metrics", &[], b"").1).unwrap();
    assert!(
        metrics.contains("nublar_consumer_skips_total 2"),
        "{metrics}"
    );
    // It exits with the stopped partition's error: the log cannot close it cleanly.
    node.signal(libc::SIGTERM);
    node.wait_exit(Duration::from_secs(30));
    drop(node);
    // The groups were committed past the damage: a restart does not stop at it again.
    let described = nublar_ok(dir, &["log", "describe", "telemetry"]);
    for group in ["lake", "processors"] {
        assert!(
            described.contains(&format!("group {group} (required): committed 4")),
            "{described}"
        );
    }
}
