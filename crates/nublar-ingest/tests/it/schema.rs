//! The schema registry over real sockets: type and kind conflicts across and
//! within requests, the registry kept on the bus (one record per column, and
//! the same verdicts after a restart), and all-or-nothing requests.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::{Node, Reply, request, topic_values};

use nublar_ingest::{IngestConfig, SCHEMAS_TOPIC, TELEMETRY_TOPIC};
use serde_json::{Value, json};

/// A node on the log in `dir` (opened, or reopened after a shut-down).
async fn start(dir: &Path) -> Node {
    common::start_in(
        dir,
        "127.0.0.1:0",
        IngestConfig {
            partitions: 2,
            ..IngestConfig::default()
        },
    )
    .await
}

async fn write(node: &Node, target: &str, body: &str) -> Reply {
    request(node.http, "POST", target, &[], body.as_bytes()).await
}

async fn write_v3(node: &Node, db: &str, body: &str) -> Reply {
    write(
        node,
        &format!("/api/v3/write_lp?db={db}&precision=ns"),
        body,
    )
    .await
}

async fn stored(node: &Node) -> Vec<String> {
    let mut lines = topic_values(&node.bus, TELEMETRY_TOPIC).await;
    lines.sort();
    lines
}

async fn registrations(node: &Node) -> Vec<Value> {
    topic_values(&node.bus, SCHEMAS_TOPIC)
        .await
        .iter()
        .map(|value| serde_json::from_str(value).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_conflict_across_requests_is_rejected_with_a_clear_reason_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let reply = write_v3(&node, "park", "weather,station=ws-1 temp_c=20.5 1\n").await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let reply = write_v3(
        &node,
        "park",
        "weather,station=ws-1 temp_c=21i 2\nweather,station=ws-1 temp_c=22 3\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "partial write of line protocol occurred"
    );
    assert_eq!(
        reply.rejected(),
        [(
            1,
            "field \"temp_c\" of measurement \"weather\" is float in database \"park\"; \
             got integer"
                .to_owned()
        )]
    );
    assert_eq!(
        reply.json()["data"][0]["original_line"],
        "weather,station=ws-1 temp_c=21i 2"
    );
    assert_eq!(
        stored(&node).await,
        [
            "weather,station=ws-1 temp_c=20.5 1",
            "weather,station=ws-1 temp_c=22.0 3"
        ]
    );

    // The v2 endpoint names the line and the reason in its message.
    let reply = write(
        &node,
        "/api/v2/write?bucket=park",
        "weather,station=ws-1 temp_c=\"hot\" 4\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("line 1: field \"temp_c\" of measurement \"weather\" is float")
            && message.contains("got string"),
        "{message}"
    );

    // Counted by reason, in the API and in /metrics.
    let metrics = node.gateway.metrics();
    assert_eq!(metrics.rejected_lines_total("field_type_conflict"), 2);
    let text = request(node.http, "GET", "/metrics", &[], b"").await.body;
    assert!(
        text.contains("nublar_ingest_rejected_lines_total{reason=\"field_type_conflict\"} 2"),
        "{text}"
    );

    // Schemas are per database: another database may use another type.
    let reply = write_v3(&node, "zoo", "weather,station=ws-1 temp_c=21i 5\n").await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    node.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_one_request_the_first_line_decides() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let reply = write_v3(
        &node,
        "park",
        "gate open=1i 1\ngate open=true 2\ngate open=3i 3\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.rejected(),
        [(
            2,
            "field \"open\" of measurement \"gate\" is integer in database \"park\"; got boolean"
                .to_owned()
        )]
    );
    assert_eq!(stored(&node).await, ["gate open=1i 1", "gate open=3i 3"]);
    assert_eq!(
        registrations(&node).await,
        [
            json!({"db": "park", "measurement": "gate", "column": "open", "kind": "field",
                "type": "integer"})
        ]
    );
    // A line rejected for another reason decides nothing.
    let reply = write_v3(&node, "park", "fence volt=oops 1\nfence volt=9.5 2\n").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.rejected()[0].0, 1);
    assert_eq!(
        registrations(&node).await[1],
        json!({"db": "park", "measurement": "fence", "column": "volt", "kind": "field",
               "type": "float"})
    );
    node.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_be_a_tag_in_one_line_and_a_field_in_another() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let reply = write_v3(
        &node,
        "park",
        "collar,animal=rex bpm=60i 1\ncollar animal=7i 2\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.rejected(),
        [(
            2,
            "field \"animal\" of measurement \"collar\" is a tag in database \"park\"; \
             a key cannot be both tag and field"
                .to_owned()
        )]
    );
    let reply = write_v3(&node, "park", "collar,bpm=high speed=1.5 3\n").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.rejected(),
        [(
            1,
            "tag \"bpm\" of measurement \"collar\" is a field (integer) in database \"park\"; \
             a key cannot be both tag and field"
                .to_owned()
        )]
    );
    // The rejected line registered nothing, not even its valid new column.
    let columns: Vec<String> = registrations(&node)
        .await
        .iter()
        .map(|record| record["column"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(columns, ["animal", "bpm"]);
    assert_eq!(
        node.gateway
            .metrics()
            .rejected_lines_total("column_kind_conflict"),
        2
    );
    assert_eq!(stored(&node).await, ["collar,animal=rex bpm=60i 1"]);
    node.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let reply = write_v3(
        &node,
        "park",
        "weather,station=ws-1 temp_c=20.5,wind=3u 1\n",
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    node.shut_down().await;

    let node = start(dir.path()).await;
    let reply = write_v3(
        &node,
        "park",
        "weather,station=ws-1 temp_c=20i 2\nweather station=\"x\" 3\nweather wind=4u 4\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let rejected = reply.rejected();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].0, 1);
    assert!(rejected[0].1.contains("is float"), "{rejected:?}");
    assert_eq!(rejected[1].0, 2);
    assert!(rejected[1].1.contains("is a tag"), "{rejected:?}");
    // Nothing was registered twice.
    assert_eq!(registrations(&node).await.len(), 3);
    assert_eq!(
        stored(&node).await,
        [
            "weather wind=4u 4",
            "weather,station=ws-1 temp_c=20.5,wind=3u 1"
        ]
    );
    node.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_holds_exactly_one_record_per_column() {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(start(dir.path()).await);
    // Concurrent requests introducing the same columns register them once.
    let mut writers = Vec::new();
    for writer in 0..8 {
        let node = node.clone();
        writers.push(tokio::spawn(async move {
            let body = format!(
                "weather,station=ws-{writer},habitat=h temp_c=2{writer}.5,humidity=40i {writer}\n\
                 fence,paddock=p{writer} voltage_kv=9.{writer} {writer}\n"
            );
            write_v3(&node, "park", &body).await.status
        }));
    }
    for writer in writers {
        assert_eq!(writer.await.unwrap(), 204);
    }
    let reply = write_v3(
        &node,
        "park",
        "weather,station=ws-9 temp_c=1,humidity=2i 9\n",
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let mut records = registrations(&node).await;
    records.sort_by_key(|record| {
        (
            record["measurement"].as_str().unwrap().to_owned(),
            record["column"].as_str().unwrap().to_owned(),
        )
    });
    assert_eq!(
        records,
        [
            json!({"db": "park", "measurement": "fence", "column": "paddock", "kind": "tag"}),
            json!({"db": "park", "measurement": "fence", "column": "voltage_kv", "kind": "field",
                   "type": "float"}),
            json!({"db": "park", "measurement": "weather", "column": "habitat", "kind": "tag"}),
            json!({"db": "park", "measurement": "weather", "column": "humidity", "kind": "field",
                   "type": "integer"}),
            json!({"db": "park", "measurement": "weather", "column": "station", "kind": "tag"}),
            json!({"db": "park", "measurement": "weather", "column": "temp_c", "kind": "field",
                   "type": "float"}),
        ]
    );
    assert_eq!(stored(&node).await.len(), 17);
    let node = Arc::into_inner(node).unwrap();
    node.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_or_nothing_request_with_a_conflict_stores_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let reply = write_v3(&node, "park", "weather temp_c=20.5 1\n").await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let target = "/api/v3/write_lp?db=park&precision=ns&accept_partial=false";
    let reply = write(
        &node,
        target,
        "fence,paddock=p1 voltage_kv=9.1 2\nweather temp_c=21i 3\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "parsing failed for write_lp endpoint"
    );
    assert_eq!(reply.rejected()[0].0, 2);
    // A parse error likewise keeps the valid line's new columns out, and the
    // answer lists the schema conflicts too.
    let body = "gate,gate=g1 open=true 4\ngate open=\nweather temp_c=\"warm\" 5\n";
    let reply = write(&node, target, body).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let lines: Vec<u64> = reply.rejected().iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [2, 3]);

    assert_eq!(stored(&node).await, ["weather temp_c=20.5 1"]);
    assert_eq!(registrations(&node).await.len(), 1);
    assert_eq!(
        node.gateway
            .metrics()
            .rejected_lines_total("field_type_conflict"),
        2
    );
    // The columns are still free: the same lines, alone, are accepted.
    let reply = write(
        &node,
        target,
        "fence,paddock=p1 voltage_kv=9.1 2\ngate,gate=g1 open=true 4\n",
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(registrations(&node).await.len(), 5);
    node.shut_down().await;
}
