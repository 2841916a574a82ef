//! Dead letters over real sockets: rejected lines land in `_dead_letters`
//! with their reason, raw text, sender and time, within the per-request
//! bound; requests refused before parsing leave none.

use std::net::SocketAddr;
use std::sync::Arc;

use nublar_bus::{Bus, EmbeddedBus, Start};
use nublar_ingest::{
    AccessConfig, DEAD_LETTERS_TOPIC, Gateway, IngestConfig, Scope, TELEMETRY_TOPIC, Token,
};
use nublar_log::Log;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Node {
    http: SocketAddr,
    bus: Arc<dyn Bus>,
    gateway: Gateway,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn node_on(bind: &str, config: IngestConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = EmbeddedBus::new(Log::open(dir.path()).unwrap()).into_shared();
    let gateway = Gateway::new(bus.clone(), config).await.unwrap();
    let listener = TcpListener::bind(bind).await.unwrap();
    let http = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = gateway.clone();
    tokio::spawn(async move {
        serving
            .serve_http(listener, async move { stopped.await.unwrap_or(()) })
            .await
            .unwrap();
    });
    Node {
        http,
        bus,
        gateway,
        _dir: dir,
        _stop: stop,
    }
}

async fn node() -> Node {
    let config = IngestConfig {
        partitions: 2,
        ..IngestConfig::default()
    };
    node_on("127.0.0.1:0", config).await
}

async fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn values(bus: &Arc<dyn Bus>, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    for partition in 0..bus.partitions(topic).await.unwrap() {
        let batches = bus
            .read(topic, partition, Start::Offset(0), 1 << 24)
            .await
            .unwrap();
        for view in batches.iter() {
            for record in view.records().unwrap().iter() {
                out.push(String::from_utf8(record.unwrap().value.to_vec()).unwrap());
            }
        }
    }
    out
}

async fn dead_letters(node: &Node) -> Vec<Value> {
    values(&node.bus, DEAD_LETTERS_TOPIC)
        .await
        .iter()
        .map(|value| serde_json::from_str(value).unwrap())
        .collect()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_are_kept_with_reason_raw_text_sender_and_time() {
    let node = node_on("[::1]:0", IngestConfig::default()).await;
    let before = now_ns();
    let body = "weather temp_c=20.5 1\nweather temp_c=21i 2\n_bad x=1 3\r\nweather temp_c=22 4\n";
    let (status, reply) = request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park&precision=ns",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    let letters = dead_letters(&node).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let first = &letters[0];
    assert_eq!(first["db"], "park");
    assert_eq!(first["line_number"], 2);
    assert_eq!(first["reason"], "field_type_conflict");
    assert_eq!(
        first["message"],
        "field \"temp_c\" of measurement \"weather\" is float in database \"park\"; got integer"
    );
    assert_eq!(first["raw"], "weather temp_c=21i 2");
    assert_eq!(first["sender"], "::1");
    let received = first["received_ns"].as_i64().unwrap();
    assert!(before <= received && received <= now_ns(), "{received}");
    assert_eq!(letters[1]["line_number"], 3);
    assert_eq!(letters[1]["reason"], "reserved_name");
    assert_eq!(letters[1]["raw"], "_bad x=1 3");
    // The data are stored as before; the dead letters are apart from them.
    assert_eq!(values(&node.bus, TELEMETRY_TOPIC).await.len(), 2);
    assert_eq!(node.gateway.metrics().dead_letters_total(), 2);

    // An all-or-nothing request keeps its bad lines too, and nothing else.
    let (status, _) = request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=zoo&accept_partial=false",
        &[],
        b"gate open=true 1\ngate open=\n",
    )
    .await;
    assert_eq!(status, 400);
    let letters = dead_letters(&node).await;
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[2]["db"], "zoo");
    assert_eq!(letters[2]["raw"], "gate open=");
    let metrics = request(node.http, "GET", "/metrics", &[], b"").await.1;
    assert!(
        metrics.contains("nublar_ingest_dead_letters_total 3")
            && metrics.contains("nublar_ingest_dead_letters_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_the_per_request_bound_is_kept_and_the_rest_counted() {
    let node = node().await;
    let mut body = String::from("weather temp_c=1 1\n");
    for _ in 0..150 {
        body.push_str("weather temp_c=\n");
    }
    let (status, _) = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    let letters = dead_letters(&node).await;
    assert_eq!(letters.len(), 100);
    // The first rejected lines are the ones kept.
    assert_eq!(letters[0]["line_number"], 2);
    assert_eq!(letters[99]["line_number"], 101);
    assert_eq!(letters[0]["sender"], "127.0.0.1");
    let metrics = node.gateway.metrics();
    assert_eq!(metrics.dead_letters_total(), 100);
    assert_eq!(metrics.dead_letters_dropped_total(), 50);

    // A retried request (same Idempotency-Key) keeps no second copy.
    let headers = [("Idempotency-Key", "retry-1")];
    for _ in 0..2 {
        let (status, _) = request(
            node.http,
            "POST",
            "/api/v2/write?bucket=park",
            &headers,
            b"weather temp_c=2 2\nweather temp_c=\"warm\" 3\n",
        )
        .await;
        assert_eq!(status, 400);
    }
    assert_eq!(dead_letters(&node).await.len(), 101);
    assert_eq!(metrics.dead_letters_total(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_parsing_leave_no_dead_letters() {
    let config = IngestConfig {
        partitions: 1,
        body_bytes_max: 64,
        access: AccessConfig {
            tokens: vec![Token {
                name: "writer".into(),
                secret: "s3cret".into(),
                scopes: vec![Scope::Write("park".into())],
                allow: Vec::new(),
            }],
            ..AccessConfig::default()
        },
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    let target = "/api/v2/write?bucket=park";
    let bad = b"_bad x=1\n";
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8], u16);
    let cases: [Case; 3] = [
        (&[], bad, 401),
        (&[("Authorization", "Token s3cret")], &[b'x'; 100], 413),
        (&[("Authorization", "Token s3cret")], bad, 400),
    ];
    for (headers, body, expected) in cases {
        let (status, reply) = request(node.http, "POST", target, headers, body).await;
        assert_eq!(status, expected, "{reply}");
    }
    // Only the request that was parsed left a dead letter.
    let letters = dead_letters(&node).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["raw"], "_bad x=1");
    assert_eq!(node.gateway.metrics().dead_letters_dropped_total(), 0);
}
