//! Dead letters over real sockets: rejected lines land in `_dead_letters`
//! with their reason, raw text, sender and time, within the per-request
//! bound; requests refused before parsing leave none.

use crate::common;

use common::{Node, node, node_on, topic_values};

use nublar_ingest::{
    AccessConfig, DEAD_LETTERS_TOPIC, IngestConfig, Scope, TELEMETRY_TOPIC, Token,
};
use serde_json::Value;

/// One exchange as (status, body).
async fn exchange(
    address: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let reply = common::request(address, method, target, headers, body).await;
    (reply.status, reply.body)
}

async fn dead_letters(node: &Node) -> Vec<Value> {
    topic_values(&node.bus, DEAD_LETTERS_TOPIC)
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
    let (status, reply) = exchange(
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
    assert_eq!(topic_values(&node.bus, TELEMETRY_TOPIC).await.len(), 2);
    assert_eq!(node.gateway.metrics().dead_letters_total(), 2);

    // An all-or-nothing request keeps its bad lines too, and nothing else.
    let (status, _) = exchange(
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
    let metrics = exchange(node.http, "GET", "/metrics", &[], b"").await.1;
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
    let (status, _) = exchange(
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
        let (status, _) = exchange(
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
                events_per_second_max: None,
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
        let (status, reply) = exchange(node.http, "POST", target, headers, body).await;
        assert_eq!(status, expected, "{reply}");
    }
    // Only the request that was parsed left a dead letter.
    let letters = dead_letters(&node).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["raw"], "_bad x=1");
    assert_eq!(node.gateway.metrics().dead_letters_dropped_total(), 0);
}
