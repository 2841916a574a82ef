//! The gateway over real sockets on 127.0.0.1 and ::1, as InfluxDB clients
//! and curl use it.

use crate::common;

use std::io::Write;
use std::sync::Arc;

use common::{Node, Reply, node, node_on, request};

use nublar_bus::{Bus, Start};
use nublar_ingest::{IngestConfig, TELEMETRY_TOPIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn write(node: &Node, target: &str, body: &str) -> Reply {
    request(node.http, "POST", target, &[], body.as_bytes()).await
}

/// Every stored record: (db header of its batch, sender header, value).
async fn stored(bus: &Arc<dyn Bus>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for partition in 0..bus.partitions(TELEMETRY_TOPIC).await.unwrap() {
        let batches = bus
            .read(TELEMETRY_TOPIC, partition, Start::Offset(0), 1 << 24)
            .await
            .unwrap();
        for view in batches.iter() {
            let records = view.records().unwrap();
            let mut batch_headers = (String::new(), String::new());
            for (index, record) in records.iter().enumerate() {
                let record = record.unwrap();
                if index == 0 {
                    let header =
                        |name| String::from_utf8(record.header(name).unwrap().to_vec()).unwrap();
                    batch_headers = (header("db"), header("sender"));
                }
                let value = common::value_text(TELEMETRY_TOPIC, record.value);
                out.push((batch_headers.0.clone(), batch_headers.1.clone(), value));
            }
        }
    }
    out
}

fn values(records: &[(String, String, String)]) -> Vec<&str> {
    records.iter().map(|(_, _, value)| value.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_write_stores_canonical_lines_with_database_and_sender() {
    let node = node().await;
    let body = "weather,station=ws-1,habitat=savanna temp_c=23.5,humidity=41i 1700000000000000000\n\
                # a comment\n\r\n\
                fence,paddock=p\\ 1 voltage_kv=9.1 1700000000\r\n";
    let reply = write(
        &node,
        "/api/v2/write?org=park&bucket=park&precision=s",
        body,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    // The first line's timestamp is too large for seconds; the second is fine.
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("line 1"), "{message}");
    let records = stored(&node.bus).await;
    assert_eq!(
        values(&records),
        ["fence,paddock=p\\ 1 voltage_kv=9.1 1700000000000000000"]
    );
    assert_eq!(
        (records[0].0.as_str(), records[0].1.as_str()),
        ("park", "127.0.0.1")
    );

    let reply = write(
        &node,
        "/api/v2/write?bucket=park",
        "weather,station=ws-1 temp_c=20 1700000000000000001\n",
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(stored(&node.bus).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_partial_writes_store_the_valid_lines_and_list_the_rejected_ones() {
    let node = node().await;
    let body = "gate,gate=g1 open=true 1\n_secret,a=b x=1 2\ngate,gate=g2 open=F 3\ngate,gate=g3 time=4i 4\n";
    let reply = write(&node, "/api/v3/write_lp?db=park&precision=ns", body).await;
    assert_eq!(reply.status, 400);
    let json = reply.json();
    assert_eq!(json["error"], "partial write of line protocol occurred");
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["line_number"], 2);
    assert_eq!(data[0]["original_line"], "_secret,a=b x=1 2");
    assert!(data[0]["error_message"].as_str().unwrap().contains('_'));
    assert_eq!(data[1]["line_number"], 4);
    assert_eq!(
        values(&stored(&node.bus).await),
        ["gate,gate=g1 open=true 1", "gate,gate=g2 open=false 3"]
    );

    let reply = write(&node, "/api/v3/write_lp?db=park&accept_partial=false", body).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["error"],
        "parsing failed for write_lp endpoint"
    );
    assert_eq!(
        stored(&node.bus).await.len(),
        2,
        "nothing stored when partial writes are refused"
    );
    assert_eq!(
        node.gateway.metrics().rejected_lines_total("reserved_name"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precision_auto_guesses_the_unit_from_the_magnitude() {
    let node = node().await;
    let body = "m f=1 1700000000\nm f=2 1700000000000\nm f=3 1700000000000000\nm f=4 1700000000000000000\n";
    assert_eq!(
        write(&node, "/api/v3/write_lp?db=park", body).await.status,
        204
    );
    let stored = stored(&node.bus).await;
    for (_, _, value) in &stored {
        assert!(value.ends_with(" 1700000000000000000"), "{value}");
    }
    assert_eq!(stored.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_accepted_and_bombs_stop_at_the_limit() {
    let config = IngestConfig {
        partitions: 1,
        body_bytes_max: 64 * 1024,
        decompressed_bytes_max: 256 * 1024,
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    let gzip = |text: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap()
    };
    let body = gzip(b"weather,station=a temp_c=1 1\nweather,station=b temp_c=2 2\n");
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[("Content-Encoding", "gzip")],
        &body,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(stored(&node.bus).await.len(), 2);

    let bomb = gzip(&vec![b'#'; 10 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[("Content-Encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("decompressed")
    );

    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[],
        &vec![b'#'; 100 * 1024],
    )
    .await;
    assert_eq!(reply.status, 413);
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=park",
        &[("Content-Encoding", "br")],
        b"x",
    )
    .await;
    assert_eq!(reply.status, 415);
    assert_eq!(
        stored(&node.bus).await.len(),
        2,
        "refused requests store nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_gets_the_same_answer_and_no_second_copy() {
    let node = node().await;
    let body = b"collar,animal=a1 lat=-1.5,lon=36.8 10\ncollar,animal=a2 lat=x 11\n";
    let headers = [("Idempotency-Key", "req-42")];
    let first = request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park",
        &headers,
        body,
    )
    .await;
    let second = request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park",
        &headers,
        body,
    )
    .await;
    assert_eq!(first.status, 400);
    assert_eq!(
        (second.status, second.body.as_str()),
        (first.status, first.body.as_str())
    );
    assert_eq!(stored(&node.bus).await.len(), 1, "one copy only");
    // The same key in another database is another request.
    request(node.http, "POST", "/api/v3/write_lp?db=zoo", &headers, body).await;
    assert_eq!(stored(&node.bus).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_recorded_with_their_address() {
    let node = node_on("[::1]:0", IngestConfig::default()).await;
    let reply = write(&node, "/api/v2/write?bucket=park", "m f=1 1\n").await;
    assert_eq!(reply.status, 204);
    let records = stored(&node.bus).await;
    assert_eq!(records[0].1, "::1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_answers() {
    let node = node().await;
    let cases = [
        ("/api/v2/write", 400, "bucket is required"),
        (
            "/api/v2/write?bucket=park&precision=h",
            400,
            "invalid precision",
        ),
        ("/api/v2/write?bucket=_internal", 400, "reserved"),
        ("/api/v2/write?bucket=a/b", 400, "database names"),
        ("/api/v3/write_lp", 400, "db is required"),
        (
            "/api/v3/write_lp?db=park&accept_partial=maybe",
            400,
            "accept_partial",
        ),
    ];
    for (target, status, text) in cases {
        let reply = write(&node, target, "m f=1 1\n").await;
        assert_eq!(reply.status, status, "{target}: {}", reply.body);
        assert!(reply.body.contains(text), "{target}: {}", reply.body);
    }
    assert!(stored(&node.bus).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_bound_answers_503_with_retry_after() {
    let config = IngestConfig {
        partitions: 1,
        in_flight_bytes_max: 3072,
        body_bytes_max: 2048,
        decompressed_bytes_max: 3072,
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    // A slow client that declared 2 KiB and sent only part of it holds its
    // share of the bound while it dawdles.
    let mut slow = TcpStream::connect(node.http).await.unwrap();
    let head = "POST /api/v2/write?bucket=park HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\nm f=1 1\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let body = vec![b'#'; 2000];
    let reply = request(node.http, "POST", "/api/v2/write?bucket=park", &[], &body).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    drop(slow);
    // Once the slow client is gone, its share comes back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = write(&node, "/api/v2/write?bucket=park", "m f=2 2\n").await;
        if reply.status == 204 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bound never freed: {}",
            reply.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(values(&stored(&node.bus).await), ["m f=2.0 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let node = node().await;
    write(&node, "/api/v2/write?bucket=park", "m f=1 1\nm f= 2\n").await;
    assert_eq!(
        request(node.http, "GET", "/health", &[], b"").await.status,
        200
    );
    assert_eq!(
        request(node.http, "GET", "/ready", &[], b"").await.status,
        200
    );
    let metrics = request(node.http, "GET", "/metrics", &[], b"").await.body;
    assert!(
        metrics.contains("nublar_ingest_accepted_lines_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nublar_ingest_rejected_lines_total{reason="),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("nublar_http_request_duration_seconds_count{endpoint=\"/api/v2/write\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nublar_ingest_append_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nublar_ingest_append_duration_seconds_bucket{le=\"+Inf\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nublar_http_requests_total{endpoint=\"/api/v2/write\",status=\"400\"} 1"),
        "{metrics}"
    );
    node.gateway.start_draining();
    let ready = request(node.http, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_land_in_the_configured_database() {
    let node = node().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let gateway = node.gateway.clone();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        gateway
            .serve_udp(socket, async move { stopped.await.unwrap_or(()) })
            .await
    });
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender
        .send_to(
            b"weather,station=u temp_c=5 7\nweather,station=v temp_c=6 8\n",
            address,
        )
        .await
        .unwrap();
    sender.send_to(b"not line protocol", address).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored(&node.bus).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "datagram never stored"
        );
        node.bus
            .wait(TELEMETRY_TOPIC, 0, 0, std::time::Duration::from_millis(50))
            .await
            .unwrap();
    }
    let records = stored(&node.bus).await;
    assert_eq!(
        values(&records),
        [
            "weather,station=u temp_c=5.0 7",
            "weather,station=v temp_c=6.0 8"
        ]
    );
    assert_eq!(records[0].0, "park");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_a_connection_and_connections_are_bounded() {
    let config = IngestConfig {
        partitions: 1,
        connections_max: 2,
        header_read_timeout_ms: 300,
        body_read_timeout_ms: 300,
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    let read_until_closed = |mut stream: TcpStream| async move {
        let mut reply = Vec::new();
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut reply),
        )
        .await;
        assert!(outcome.is_ok(), "the gateway kept a slow connection open");
        String::from_utf8_lossy(&reply).into_owned()
    };

    // Headers that never finish: the connection is closed.
    let mut silent = TcpStream::connect(node.http).await.unwrap();
    silent
        .write_all(b"POST /api/v2/write?bucket=park HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    read_until_closed(silent).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A body that never finishes: 408 and nothing stored.
    let mut dawdler = TcpStream::connect(node.http).await.unwrap();
    dawdler
        .write_all(b"POST /api/v2/write?bucket=park HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nm f=1 1\n")
        .await
        .unwrap();
    let reply = read_until_closed(dawdler).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    // Two idle connections take the whole bound: a third is closed at once.
    let _first = TcpStream::connect(node.http).await.unwrap();
    let _second = TcpStream::connect(node.http).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let third = TcpStream::connect(node.http).await.unwrap();
    let reply = read_until_closed(third).await;
    assert!(reply.is_empty(), "{reply}");
    let metrics = {
        drop(_first);
        drop(_second);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        request(node.http, "GET", "/metrics", &[], b"").await.body
    };
    assert!(
        metrics.contains("nublar_http_refused_connections_total 1"),
        "{metrics}"
    );
    assert!(stored(&node.bus).await.is_empty());
}

fn access_config() -> nublar_ingest::AccessConfig {
    let token = |name: &str, secret: &str, scopes: &[&str], allow: &[&str]| nublar_ingest::Token {
        name: name.into(),
        secret: secret.into(),
        scopes: scopes.iter().map(|scope| scope.parse().unwrap()).collect(),
        allow: allow.iter().map(|prefix| prefix.parse().unwrap()).collect(),
        events_per_second_max: None,
    };
    nublar_ingest::AccessConfig {
        tokens: vec![
            token("collars", "s3cret-collars", &["write:park"], &[]),
            token("reader", "s3cret-reader", &["read:park"], &[]),
            token("local-only", "s3cret-local", &["write:*"], &["10.0.0.0/8"]),
        ],
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..nublar_ingest::AccessConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_decide_who_writes_where() {
    let config = IngestConfig {
        partitions: 1,
        access: access_config(),
        ..IngestConfig::default()
    };
    let node = node_on("127.0.0.1:0", config).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case; 7] = [
        ("/api/v2/write?bucket=park", &[], 401),
        (
            "/api/v2/write?bucket=park",
            &[("Authorization", "Token wrong")],
            401,
        ),
        (
            "/api/v2/write?bucket=park",
            &[("Authorization", "Token s3cret-reader")],
            403,
        ),
        (
            "/api/v2/write?bucket=zoo",
            &[("Authorization", "Token s3cret-collars")],
            403,
        ),
        (
            "/api/v2/write?bucket=park",
            &[("Authorization", "Token s3cret-local")],
            403,
        ),
        (
            "/api/v2/write?bucket=park",
            &[("Authorization", "Token s3cret-collars")],
            204,
        ),
        (
            "/api/v3/write_lp?db=park",
            &[("Authorization", "Bearer s3cret-collars")],
            204,
        ),
    ];
    for (target, headers, status) in cases {
        let reply = request(node.http, "POST", target, headers, b"m f=1 1\n").await;
        assert_eq!(reply.status, status, "{target} {headers:?}: {}", reply.body);
    }
    assert_eq!(stored(&node.bus).await.len(), 2);
    // Behind a trusted proxy (the test runs on 127.0.0.1), the forwarded
    // client is the sender, and the token's prefix list applies to it.
    let forwarded = [
        ("Authorization", "Token s3cret-local"),
        ("X-Forwarded-For", "10.9.8.7"),
    ];
    let reply = request(
        node.http,
        "POST",
        "/api/v2/write?bucket=zoo",
        &forwarded,
        b"m f=2 2\n",
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let records = stored(&node.bus).await;
    assert!(
        records
            .iter()
            .any(|(db, sender, _)| db == "zoo" && sender == "10.9.8.7"),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_allow_list_admits_http_and_udp_senders() {
    let access = nublar_ingest::AccessConfig {
        allow: vec!["::1/128".parse().unwrap()],
        ..access_config()
    };
    let config = IngestConfig {
        partitions: 1,
        access,
        ..IngestConfig::default()
    };
    let v6 = node_on("[::1]:0", config.clone()).await;
    let v4 = node_on("127.0.0.1:0", config).await;
    let token = [("Authorization", "Token s3cret-collars")];
    assert_eq!(
        request(
            v6.http,
            "POST",
            "/api/v2/write?bucket=park",
            &token,
            b"m f=1 1\n"
        )
        .await
        .status,
        204
    );
    let refused = request(
        v4.http,
        "POST",
        "/api/v2/write?bucket=park",
        &token,
        b"m f=1 1\n",
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("not in the allowed prefixes"));

    // UDP carries no token: with tokens configured only the allow-list admits it.
    for (node, from) in [(&v6, "[::1]:0"), (&v4, "127.0.0.1:0")] {
        let socket = UdpSocket::bind(if from.starts_with('[') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .await
        .unwrap();
        let address = socket.local_addr().unwrap();
        let gateway = node.gateway.clone();
        tokio::spawn(async move { gateway.serve_udp(socket, std::future::pending()).await });
        let sender = UdpSocket::bind(from).await.unwrap();
        sender.send_to(b"udp f=1 5\n", address).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored(&v6.bus).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the allowed datagram never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        stored(&v4.bus).await.is_empty(),
        "127.0.0.1 is not in the allow-list"
    );
    let metrics = request(v4.http, "GET", "/metrics", &[], b"").await.body;
    assert!(
        metrics.contains("nublar_udp_dropped_datagrams_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_the_kernel_dropped_are_counted_so_every_datagram_is_accounted_for() {
    let node = node().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    // A small receive buffer, so that it overflows whatever the machine's default.
    let size: libc::c_int = 16 * 1024;
    let set = unsafe {
        // SAFETY: the descriptor is the open socket above, and the option value is a c_int
        // whose size is passed with it.
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    // Nobody reads yet: the socket's receive buffer fills and the kernel drops the rest.
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = 3_000u64;
    let padding = "x".repeat(900);
    for n in 0..sent {
        let datagram = format!("udp,n=n{n} f=1,pad=\"{padding}\" 5\n");
        sender.send_to(datagram.as_bytes(), address).await.unwrap();
    }
    let gateway = node.gateway.clone();
    tokio::spawn(async move { gateway.serve_udp(socket, std::future::pending()).await });
    let metric = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .map(|value| value.parse().unwrap())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = request(node.http, "GET", "/metrics", &[], b"").await.body;
        // Absent until the task just spawned has taken the socket over.
        let Some(dropped) = metric(&metrics, "nublar_udp_kernel_dropped_datagrams_total") else {
            assert!(
                std::time::Instant::now() < deadline,
                "no kernel drop count in {metrics}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let stored = stored(&node.bus).await.len() as u64;
        if stored + dropped == sent {
            assert!(dropped > 0, "the buffer never overflowed: {metrics}");
            assert_eq!(
                metric(&metrics, "nublar_udp_dropped_datagrams_total"),
                Some(0)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{stored} stored and {dropped} dropped of {sent} sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
