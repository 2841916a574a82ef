//! `POST /api/v1/events`: JSON arrays and NDJSON of events, over real sockets.

use crate::common;

use common::{node, request, topic_values};
use nublar_ingest::TELEMETRY_TOPIC;

async fn stored(node: &common::Node) -> Vec<String> {
    let mut values = topic_values(&node.bus, TELEMETRY_TOPIC).await;
    values.sort();
    values
}

/// Fields come out in key order (a JSON object has no order of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_ndjson_events_are_stored_like_lines() {
    let node = node().await;
    let array = r#"[
        {"measurement": "weather", "tags": {"station": "ws 1"}, "fields": {"temp_c": 21, "dry": true}, "time": "2026-11-26T05:00:00Z"},
        {"measurement": "gate", "tags": {"gate": "g1"}, "fields": {"open": false, "note": "wind \"gust\""}, "time": 1795669200000000001}
    ]"#;
    let reply = request(
        node.http,
        "POST",
        "/api/v1/events?db=park",
        &[],
        array.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let ndjson = "{\"measurement\":\"fence\",\"tags\":{\"segment\":\"s1\"},\"fields\":{\"voltage_kv\":9.1},\"time\":7}\n\n";
    let reply = request(
        node.http,
        "POST",
        "/api/v1/events?db=park",
        &[],
        ndjson.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(
        stored(&node).await,
        [
            "fence,segment=s1 voltage_kv=9.1 7",
            "gate,gate=g1 note=\"wind \\\"gust\\\"\",open=false 1795669200000000001",
            "weather,station=ws\\ 1 dry=true,temp_c=21.0 1795669200000000000",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_number_takes_the_known_integer_type() {
    let node = node().await;
    let reply = request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park&precision=ns",
        &[],
        b"counter,k=a n=3i 1\n",
    )
    .await;
    assert_eq!(reply.status, 204);
    let events = r#"[{"measurement":"counter","tags":{"k":"b"},"fields":{"n":4},"time":2},
                     {"measurement":"counter","tags":{"k":"c"},"fields":{"n":4.5},"time":3}]"#;
    let reply = request(
        node.http,
        "POST",
        "/api/v1/events?db=park",
        &[],
        events.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["code"], "invalid");
    assert_eq!(json["rejected"], 1);
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors[0]["event"], 2);
    assert!(
        errors[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("integer"),
        "{json}"
    );
    assert!(
        errors[0]["original_event"]
            .as_str()
            .unwrap()
            .contains("4.5")
    );
    assert_eq!(
        stored(&node).await,
        ["counter,k=a n=3i 1", "counter,k=b n=4i 2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_named_and_bad_bodies_refused() {
    let node = node().await;
    let body = r#"[{"measurement":"m","fields":{"x":1},"time":1},{"measurement":"_m","fields":{"x":1}},{"fields":{"x":1}}]"#;
    let reply = request(
        node.http,
        "POST",
        "/api/v1/events?db=park&accept_partial=false",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["rejected"], 2);
    assert!(
        stored(&node).await.is_empty(),
        "all or nothing: nothing stored"
    );
    let reply = request(
        node.http,
        "POST",
        "/api/v1/events?db=park",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400);
    let events: Vec<u64> = reply.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["event"].as_u64().unwrap())
        .collect();
    assert_eq!(events, [2, 3]);
    assert_eq!(stored(&node).await, ["m x=1.0 1"]);
    let reply = request(
        node.http,
        "POST",
        "/api/v1/events?db=park",
        &[],
        b"{not json",
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{}",
        reply.body
    );
    let reply = request(node.http, "POST", "/api/v1/events", &[], b"[]").await;
    assert_eq!(reply.status, 400);
}
