//! What keeps one client from hurting the others or the pipeline: per-token
//! rate limits, batches no reader could read refused before they are stored,
//! access rules replaced while the gateway runs, and metrics behind a scope.

use crate::common;

use std::io::Write;

use common::{node_on, request, topic_values};
use nublar_ingest::{AccessConfig, IngestConfig, TELEMETRY_TOPIC, Token};

fn token(name: &str, scopes: &[&str], events_per_second_max: Option<u64>) -> Token {
    Token {
        name: name.into(),
        secret: format!("secret-{name}"),
        scopes: scopes.iter().map(|scope| scope.parse().unwrap()).collect(),
        allow: Vec::new(),
        events_per_second_max,
    }
}

fn lines(count: usize) -> String {
    (0..count)
        .map(|index| format!("collar,animal=a{index} heart_bpm=71.5 {index}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_stores_nothing() {
    let config = IngestConfig {
        partitions: 1,
        access: AccessConfig {
            tokens: vec![
                token("collars", &["write:park"], Some(100)),
                token("weather", &["write:park"], None),
            ],
            ..AccessConfig::default()
        },
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    let write = |name: &str, body: String| {
        let authorization = format!("Token secret-{name}");
        async move {
            request(
                node.http,
                "POST",
                "/api/v2/write?bucket=park",
                &[("Authorization", &authorization)],
                body.as_bytes(),
            )
            .await
        }
    };
    // One request larger than a second's worth goes through, and puts the token in debt.
    assert_eq!(write("collars", lines(1000)).await.status, 204);
    let refused = write("collars", lines(1)).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((8..=10).contains(&wait), "Retry-After {wait}");
    assert!(
        refused.body.contains("100 events per second"),
        "{}",
        refused.body
    );
    assert_eq!(refused.json()["code"], "too many requests");
    // Another token is not held back by it.
    assert_eq!(write("weather", lines(5)).await.status, 204);
    assert_eq!(topic_values(&node.bus, TELEMETRY_TOPIC).await.len(), 1005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_batch_no_reader_could_decompress_gets_413_and_stores_nothing() {
    let node = node_on(
        "127.0.0.1:0",
        IngestConfig {
            partitions: 1,
            ..IngestConfig::default()
        },
    )
    .await;
    // Fifty one-letter float fields a line: about four bytes each as text, about eleven in the
    // stored layout, so 30 MiB of text (a small gzip body) would be a 79 MiB batch.
    let fields: Vec<String> = (0..50)
        .map(|index| {
            let name = char::from(b'A' + (index % 26) as u8);
            let suffix = if index < 26 { "" } else { "x" };
            format!("{name}{suffix}=1")
        })
        .collect();
    let line = format!("m {} 1\n", fields.join(","));
    let gzip = |body: String| {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(body.as_bytes()).unwrap();
        let gzipped = gzip.finish().unwrap();
        assert!(gzipped.len() < IngestConfig::default().body_bytes_max);
        gzipped
    };
    let gzipped = gzip(line.repeat(30 * 1024 * 1024 / line.len()));
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[("Content-Encoding", "gzip")],
        &gzipped,
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(
        reply.body.contains("67108864 bytes"),
        "names the limit: {}",
        reply.body
    );
    assert!(topic_values(&node.bus, TELEMETRY_TOPIC).await.is_empty());
    // Half as many lines fit, and are read back.
    let half = gzip(line.repeat(12 * 1024 * 1024 / line.len()));
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[("Content-Encoding", "gzip")],
        &half,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert!(!topic_values(&node.bus, TELEMETRY_TOPIC).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_access_rules_apply_to_the_next_request() {
    let node = node_on(
        "127.0.0.1:0",
        IngestConfig {
            partitions: 1,
            access: AccessConfig {
                tokens: vec![token("old", &["write:park"], None)],
                ..AccessConfig::default()
            },
            ..IngestConfig::default()
        },
    )
    .await;
    let write = |secret: &'static str| async move {
        let authorization = format!("Token {secret}");
        request(
            node.http,
            "POST",
            "/api/v2/write?bucket=park",
            &[("Authorization", &authorization)],
            b"m f=1 1\n",
        )
        .await
        .status
    };
    assert_eq!(write("secret-old").await, 204);
    assert_eq!(write("secret-new").await, 401);
    node.gateway
        .set_access(AccessConfig {
            tokens: vec![token("new", &["write:park"], None)],
            ..AccessConfig::default()
        })
        .unwrap();
    assert_eq!(write("secret-new").await, 204);
    assert_eq!(
        write("secret-old").await,
        401,
        "a removed token stops at once"
    );
    // Invalid rules are refused whole; the ones in force stay.
    let duplicate = AccessConfig {
        tokens: vec![token("x", &["admin"], None), token("x", &["admin"], None)],
        ..AccessConfig::default()
    };
    assert!(node.gateway.set_access(duplicate).is_err());
    assert_eq!(write("secret-new").await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_can_be_kept_to_a_scope() {
    let proxied = AccessConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        protect_metrics: true,
        ..AccessConfig::default()
    };
    let node = node_on(
        "127.0.0.1:0",
        IngestConfig {
            partitions: 1,
            access: proxied.clone(),
            ..IngestConfig::default()
        },
    )
    .await;
    let from_afar = [("X-Forwarded-For", "198.51.100.4")];
    for path in ["/metrics", "/ready"] {
        assert_eq!(
            request(node.http, "GET", path, &[], b"").await.status,
            200,
            "{path}"
        );
        let refused = request(node.http, "GET", path, &from_afar, b"").await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
    }
    assert_eq!(
        request(node.http, "GET", "/health", &from_afar, b"")
            .await
            .status,
        200
    );
    node.gateway
        .set_access(AccessConfig {
            tokens: vec![
                token("scraper", &["metrics"], None),
                token("writer", &["write:*"], None),
            ],
            ..proxied
        })
        .unwrap();
    let with = |secret: &str| format!("Bearer {secret}");
    for (secret, status) in [("secret-scraper", 200), ("secret-writer", 403)] {
        let authorization = with(secret);
        let headers = [("Authorization", authorization.as_str()), from_afar[0]];
        assert_eq!(
            request(node.http, "GET", "/metrics", &headers, b"")
                .await
                .status,
            status,
            "{secret}"
        );
    }
    assert_eq!(
        request(node.http, "GET", "/metrics", &[], b"").await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_charged_for_what_it_holds_not_for_what_it_sent() {
    let node = node_on(
        "127.0.0.1:0",
        IngestConfig {
            partitions: 1,
            body_bytes_max: 1 << 20,
            decompressed_bytes_max: 8 << 20,
            in_flight_bytes_max: 16 << 20,
            ..IngestConfig::default()
        },
    )
    .await;
    // Fifty float fields a line: a 100 KB gzip body of 6 MiB that makes a batch of about
    // 16 MiB. Its body fits the in-flight bound; what it holds while it is read does not.
    let fields: Vec<String> = (0..50).map(|index| format!("f{index}=1")).collect();
    let line = format!("m {} 1\n", fields.join(","));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(line.repeat(6 * 1024 * 1024 / line.len()).as_bytes())
        .unwrap();
    let body = gzip.finish().unwrap();
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[("Content-Encoding", "gzip")],
        &body,
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("in-flight limit"), "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(topic_values(&node.bus, TELEMETRY_TOPIC).await.is_empty());
    // What it held is given back: a small write goes through at once.
    let small = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[],
        b"m f=1 1\n",
    )
    .await;
    assert_eq!(small.status, 204, "{}", small.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_line_is_kept_and_answered_in_part_only() {
    let node = node_on(
        "127.0.0.1:0",
        IngestConfig {
            partitions: 1,
            ..IngestConfig::default()
        },
    )
    .await;
    let long = format!("m s=\"{}\",f=tru 1\n", "x".repeat(1_500_000));
    let reply = request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park",
        &[],
        long.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let original = reply.json()["data"][0]["original_line"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(original.len() < 70 * 1024, "{} bytes", original.len());
    assert!(
        original.ends_with("(1500014 bytes in all)"),
        "{}",
        &original[original.len() - 40..]
    );
}
