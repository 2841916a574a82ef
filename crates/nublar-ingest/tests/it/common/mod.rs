//! The test harness every gateway test shares: a node on a log in a
//! temporary (or given) directory, a plain HTTP/1.1 exchange as curl makes
//! it, and the values stored in a topic.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use nublar_bus::{Bus, Start};
use nublar_bus_embedded::EmbeddedBus;
use nublar_ingest::{Gateway, IngestConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Node {
    pub http: SocketAddr,
    pub bus: Arc<dyn Bus>,
    pub gateway: Gateway,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

/// A node on the log in `dir` (opened, or reopened after a shut-down).
pub async fn start_in(dir: &Path, bind: &str, config: IngestConfig) -> Node {
    let bus: Arc<dyn Bus> = EmbeddedBus::open(dir).unwrap().into_shared();
    start_on_bus(bus, bind, config).await
}

/// A node writing through `bus`.
pub async fn start_on_bus(bus: Arc<dyn Bus>, bind: &str, config: IngestConfig) -> Node {
    let gateway = Gateway::new(bus.clone(), config).await.unwrap();
    let listener = TcpListener::bind(bind).await.unwrap();
    let http = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = gateway.clone();
    let serving = tokio::spawn(async move {
        serving
            .serve_http(listener, async move { stopped.await.unwrap_or(()) })
            .await
            .unwrap();
    });
    Node {
        http,
        bus,
        gateway,
        stop,
        serving,
        _dir: None,
    }
}

/// A node on a log in a fresh temporary directory.
pub async fn node_on(bind: &str, config: IngestConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_in(dir.path(), bind, config).await;
    node._dir = Some(dir);
    node
}

/// A node on 127.0.0.1 with two telemetry partitions.
pub async fn node() -> Node {
    node_on(
        "127.0.0.1:0",
        IngestConfig {
            partitions: 2,
            ..IngestConfig::default()
        },
    )
    .await
}

impl Node {
    /// Stops serving and drops every handle on the log, so it can be reopened.
    pub async fn shut_down(self) {
        let Node {
            bus,
            gateway,
            stop,
            serving,
            ..
        } = self;
        stop.send(()).unwrap();
        serving.await.unwrap();
        drop(gateway);
        drop(bus);
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The v3 `data` entries as (line number, error message).
    pub fn rejected(&self) -> Vec<(u64, String)> {
        self.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                let message = entry["error_message"].as_str().unwrap().to_owned();
                (entry["line_number"].as_u64().unwrap(), message)
            })
            .collect()
    }
}

/// A plain HTTP/1.1 exchange, as curl would make it.
pub async fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
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
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Every record value of a topic, over all its partitions, as text: the telemetry topic's
/// events (which must be in the stored layout) as the line protocol they stand for.
pub async fn topic_values(bus: &Arc<dyn Bus>, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    for partition in 0..bus.partitions(topic).await.unwrap() {
        let batches = bus
            .read(topic, partition, Start::Offset(0), 1 << 24)
            .await
            .unwrap();
        for view in batches.iter() {
            for record in view.records().unwrap().iter() {
                out.push(value_text(topic, record.unwrap().value));
            }
        }
    }
    out
}

/// A record's value as text; see [`topic_values`].
pub fn value_text(topic: &str, value: &[u8]) -> String {
    if topic == nublar_ingest::TELEMETRY_TOPIC {
        assert!(
            nublar_model::stored::is_stored_layout(value),
            "telemetry holds events in the stored layout: {value:?}"
        );
        nublar_model::stored::display(value).expect("a readable stored event")
    } else {
        String::from_utf8(value.to_vec()).unwrap()
    }
}
