//! The client against real servers on loopback: bodies with a length, chunked and gzip, both
//! ways; connections reused; timeouts and bounds; HTTPS trusting only a CA file.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use nublar_client::{Client, ClientError, ClientOptions};

/// The test server: one route per behaviour.
fn router() -> axum::Router {
    axum::Router::new()
        .route("/plain", get(|| async { "a body with a length" }))
        .route(
            "/gzip",
            get(|| async {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder
                    .write_all(&b"weather temp_c=21.5\n".repeat(1000))
                    .unwrap();
                (
                    [(header::CONTENT_ENCODING, "gzip")],
                    encoder.finish().unwrap(),
                )
            }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: Bytes| async move {
                let gzip = headers
                    .get(header::CONTENT_ENCODING)
                    .is_some_and(|value| value == "gzip");
                let body = if gzip {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                } else {
                    body.to_vec()
                };
                let token = headers
                    .get(header::AUTHORIZATION)
                    .map(|value| value.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                (
                    StatusCode::ACCEPTED,
                    format!("{gzip} {token} {}", String::from_utf8(body).unwrap()),
                )
            }),
        )
}

/// A server that answers every request on a connection with one chunked answer, written by
/// hand, so the chunks are exactly what the client must join.
async fn serve_chunked() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    let read = stream.read(&mut buffer).await.unwrap();
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                let mut answer =
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        .to_vec();
                for index in 0..50 {
                    let chunk = format!("{index},");
                    answer
                        .extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
                }
                answer.extend_from_slice(b"0\r\n\r\n");
                stream.write_all(&answer).await.unwrap();
            });
        }
    });
    address
}

async fn serve_plain() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router().into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    address
}

fn client() -> Client {
    Client::new(ClientOptions {
        timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn bodies_come_whole_with_a_length_chunked_or_gzip() {
    let plain = serve_plain().await;
    let client = client();
    let answer = client
        .get(&format!("http://{plain}/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "a body with a length");

    let answer = client
        .get(&format!("http://{plain}/gzip"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.body, b"weather temp_c=21.5\n".repeat(1000));

    let chunked = serve_chunked().await;
    let answer = client
        .get(&format!("http://{chunked}/"))
        .send()
        .await
        .unwrap();
    let expected: String = (0..50).map(|index| format!("{index},")).collect();
    assert_eq!(answer.text(), expected);
}

#[tokio::test]
async fn a_request_body_goes_plain_or_gzip_with_the_token() {
    let plain = serve_plain().await;
    let client = client();
    let url = format!("http://{plain}/echo");
    let answer = client
        .post(&url)
        .token(Some("park-admin"))
        .body("gate open=true")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.text(), "false Token park-admin gate open=true");
    let answer = client
        .post(&url)
        .body("gate open=false")
        .gzip()
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text(), "true  gate open=false");
}

#[tokio::test]
async fn connections_are_kept_and_reused() {
    let plain = serve_plain().await;
    let client = client();
    let url = format!("http://{plain}/peer");
    let first = client.get(&url).send().await.unwrap().text();
    let second = client.get(&url).send().await.unwrap().text();
    assert_eq!(
        first, second,
        "the second request came from the same connection"
    );
    let other = Client::new(ClientOptions::default()).unwrap();
    let third = other.get(&url).send().await.unwrap().text();
    assert_ne!(first, third, "another client has connections of its own");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_a_large_one_is_refused() {
    let plain = serve_plain().await;
    let started = std::time::Instant::now();
    let error = client()
        .get(&format!("http://{plain}/slow"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let small = Client::new(ClientOptions {
        body_bytes_max: 1000,
        ..ClientOptions::default()
    })
    .unwrap();
    let error = small
        .get(&format!("http://{plain}/gzip"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::TooLarge { .. }), "{error}");
}

#[tokio::test]
async fn refusals_say_what_went_wrong() {
    let error = client()
        .get("ftp://example.invalid/")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Url(_)), "{error}");
    // A port nothing listens on: bound, then let go.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = client()
        .get(&format!("http://{free}/"))
        .send()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    let missing = Client::new(ClientOptions {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..ClientOptions::default()
    })
    .err()
    .unwrap();
    assert!(
        missing.to_string().contains("/nonexistent/ca.pem"),
        "{missing}"
    );
}

/// An HTTPS server with a self-signed certificate for 127.0.0.1; the certificate's PEM.
async fn serve_https() -> (SocketAddr, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from(format!("secure, to {peer}"))),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, cert.pem())
}

#[tokio::test]
async fn https_trusts_the_ca_file_and_nothing_else_when_given_one() {
    let (address, pem) = serve_https().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("park-ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let trusting = Client::new(ClientOptions {
        ca_file: Some(ca),
        ..ClientOptions::default()
    })
    .unwrap();
    let url = format!("https://{address}/");
    let answer = trusting.get(&url).send().await.unwrap();
    assert!(
        answer.text().starts_with("secure, to 127.0.0.1:"),
        "{}",
        answer.text()
    );

    // The system's roots do not know the park's own certificate.
    let error = client().get(&url).send().await.unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    let not_a_pem = dir.path().join("empty.pem");
    std::fs::write(&not_a_pem, "nothing here\n").unwrap();
    let refused = Client::new(ClientOptions {
        ca_file: Some(not_a_pem),
        ..ClientOptions::default()
    })
    .err()
    .unwrap();
    assert!(
        refused.to_string().contains("holds no certificate"),
        "{refused}"
    );
}

#[test]
fn a_caller_outside_a_runtime_blocks_on_one_request() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let plain = runtime.block_on(serve_plain());
    let client = Client::new(ClientOptions::default()).unwrap();
    let answer = Client::block_on(client.get(&format!("http://{plain}/plain")).send()).unwrap();
    assert_eq!(answer.text(), "a body with a length");
}
