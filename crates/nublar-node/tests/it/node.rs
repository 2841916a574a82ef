//! A node started and stopped in this process: what it acknowledged is in the log and, once
//! stopped, in the lake; its announcement for local commands comes and goes with it.

use std::net::{SocketAddr, TcpStream};

use nublar_client::{Client, ClientOptions, Method};
use nublar_lake::query::{self, Format, QueryConfig};
use nublar_node::config::NodeConfig;
use nublar_node::node::{Node, NodeOptions};

/// A node's configuration on loopback, on ports the system picks.
fn loopback_config() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.udp.listen = "127.0.0.1:0".parse().unwrap();
    config.http.drain_seconds = 5;
    config
}

/// One request through the project's client: the status code and the body.
async fn request(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let client = Client::new(ClientOptions::default()).unwrap();
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let answer = client
        .request(method, &format!("http://{address}{path}"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (answer.status.as_u16(), answer.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_this_process_serves_and_stops_with_everything_acknowledged_in_the_lake() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(NodeOptions {
        data: data.path().to_path_buf(),
        config: loopback_config(),
        config_path: None,
        lake_work: tokio::runtime::Handle::current(),
    })
    .await
    .unwrap();
    let http = node.http_address();
    assert_ne!(http.port(), 0, "the bound address, not the configured one");
    assert!(
        data.path().join("node.json").exists(),
        "local commands find the node"
    );

    let body = "weather,station=ws-1 temp_c=21.5 1700000000000000000\n\
                weather,station=ws-2 temp_c=19.0 1700000000000000001\n\
                fence,segment=f-1 volts=8100i 1700000000000000002\n";
    let (status, answer) =
        request(http, "POST", "/api/v2/write?bucket=park", body.as_bytes()).await;
    assert_eq!(status, 204, "{answer}");
    let (status, _) = request(http, "GET", "/ready", b"").await;
    assert_eq!(status, 200);

    node.stop().await.unwrap();
    assert!(
        !data.path().join("node.json").exists(),
        "a stopped node is not announced"
    );
    assert!(
        TcpStream::connect(http).is_err(),
        "a stopped node no longer listens"
    );
    // Stopping committed what the sink had read: the rows are in the lake without a restart.
    let lake = data.path().join("lake");
    let result = query::query(
        &lake,
        "park",
        "SELECT station, temp_c FROM weather ORDER BY station",
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(query::render(&result, Format::Csv).unwrap()).unwrap();
    assert_eq!(text, "station,temp_c\nws-1,21.5\nws-2,19.0\n");
    let fence = query::query(
        &lake,
        "park",
        "SELECT volts FROM fence",
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(fence.rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_starts_again_on_the_same_directory_in_the_same_process() {
    let data = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let node = Node::start(NodeOptions {
            data: data.path().to_path_buf(),
            config: loopback_config(),
            config_path: None,
            lake_work: tokio::runtime::Handle::current(),
        })
        .await
        .unwrap_or_else(|error| panic!("start {round}: {error:#}"));
        let http = node.http_address();
        let line = format!(
            "gate,gate=g-1 open=true {}\n",
            1_700_000_000_000_000_000i64 + round
        );
        let (status, answer) =
            request(http, "POST", "/api/v2/write?bucket=park", line.as_bytes()).await;
        assert_eq!(status, 204, "{answer}");
        node.stop().await.unwrap();
    }
    let gates = query::query(
        &data.path().join("lake"),
        "park",
        "SELECT open FROM gate",
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        gates.rows(),
        2,
        "the log's lock was let go, and both writes landed"
    );
}
