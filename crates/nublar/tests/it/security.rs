//! Safe by default, tested from where an attacker would be: a client in a network namespace
//! of its own, joined to the node's by a veth pair, talks to a node (and to a real nginx in
//! front of it) in another. Protected mode answers reads and operator commands only to
//! clients on the node's host, also when a local proxy makes every TCP peer local; forged
//! forwarding headers of both kinds change nothing; the access rules reload without a
//! restart.
//!
//! The namespace tests need root, `ip` (iproute2) and nginx (Debian's package); without them
//! they say why and pass, except with `CI=true`, where a missing component fails them.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Namespace, missing_component, skip};
use common::{NodeProcess, request};

/// The node's host and the park's client, on the two ends of a veth pair.
const NODE_V6: &str = "fd00:7::1";
const PARK_V6: &str = "fd00:7::2";
const NODE_V4: &str = "10.77.0.1";
const PARK_V4: &str = "10.77.0.2";

struct Park {
    node: Namespace,
    client: Namespace,
}

fn park() -> Result<Park, String> {
    if let Some(reason) = missing_component() {
        return Err(reason);
    }
    let node = Namespace::create("node")?;
    let client = Namespace::create("park")?;
    node.link(
        &client,
        &[
            (&format!("{NODE_V6}/64"), &format!("{PARK_V6}/64")),
            (&format!("{NODE_V4}/24"), &format!("{PARK_V4}/24")),
        ],
    );
    Ok(Park { node, client })
}

/// `nublar serve` inside the node's namespace, listening on every address there.
fn start_node(namespace: &Namespace, data: &Path, config: &str) -> NodeProcess {
    let file = data.join("node.toml");
    std::fs::write(&file, config).unwrap();
    let stderr = data.join("node.stderr");
    let mut command = namespace.command(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--config", file.to_str().unwrap()])
        .args(["--http", "[::]:0", "--udp", "[::1]:0", "--partitions", "2"])
        .stderr(std::fs::File::create(&stderr).unwrap());
    NodeProcess::spawn(command, move || {
        std::fs::read_to_string(&stderr).unwrap_or_default()
    })
}

/// One request from inside `namespace`, retried while the veth link comes up.
fn ask(
    namespace: &Namespace,
    address: SocketAddr,
    method: &'static str,
    target: &str,
    headers: &[(&'static str, &'static str)],
    body: &[u8],
) -> (u16, String) {
    let (target, headers, body) = (target.to_owned(), headers.to_vec(), body.to_vec());
    namespace.on_thread(move || {
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{address} unreachable"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, body) = request(address, method, &target, &headers, &body);
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

const QUERY: &str = "/api/v3/query_sql?db=park&q=SELECT%201";
const OPERATOR: &str = "/api/v1/admin/log";

#[test]
fn protected_mode_answers_reads_and_operator_commands_only_on_the_nodes_host() {
    let park = match park() {
        Ok(park) => park,
        Err(reason) => return skip("the protected mode test", &reason),
    };
    let data = tempfile::tempdir().unwrap();
    let mut node = start_node(&park.node, data.path(), "");
    let port = node.http.port();
    let remote_v6: SocketAddr = format!("[{NODE_V6}]:{port}").parse().unwrap();
    let remote_v4: SocketAddr = format!("{NODE_V4}:{port}").parse().unwrap();
    let local_v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let local_v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // From the park, over IPv6 and IPv4 (mapped on the dual-stack socket): writes go in...
    for address in [remote_v6, remote_v4] {
        let (status, body) = ask(
            &park.client,
            address,
            "POST",
            "/api/v2/write?bucket=park",
            &[],
            b"gate,gate=g1 open=true\n",
        );
        assert_eq!(status, 204, "{address}: {body}");
        // ...and nothing that reads or deletes answers, whatever the client claims.
        for (method, target, body) in [
            ("GET", QUERY, &b""[..]),
            ("GET", "/api/v1/latest?db=park", b""),
            ("POST", OPERATOR, br#"["topics"]"#),
            ("POST", OPERATOR, br#"["reclaim","telemetry"]"#),
            ("POST", "/api/v1/admin/lake", br#"["vacuum"]"#),
        ] {
            for forged in [
                &[][..],
                &[("X-Forwarded-For", "127.0.0.1")],
                &[("Forwarded", "for=\"[::1]\"")],
            ] {
                let (status, answer) = ask(&park.client, address, method, target, forged, body);
                assert_eq!(status, 403, "{address} {target} {forged:?}: {answer}");
                assert!(answer.contains("protected mode"), "{answer}");
            }
        }
        let (status, _) = ask(&park.client, address, "GET", "/metrics", &[], b"");
        assert_eq!(
            status, 200,
            "metrics stay open unless protect_metrics is set"
        );
    }
    // On the node's host, over loopback, all of it answers.
    for address in [local_v6, local_v4] {
        let (status, body) = ask(&park.node, address, "GET", QUERY, &[], b"");
        assert_eq!(status, 200, "{address}: {body}");
        let (status, body) = ask(&park.node, address, "POST", OPERATOR, &[], br#"["topics"]"#);
        assert_eq!(status, 200, "{address}: {body}");
        assert!(body.contains("telemetry"), "{body}");
    }
    let stderr = data.path().join("node.stderr");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    drop(node);
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        said.contains("reads and operator commands are answered only to clients on this host"),
        "{said}"
    );

    // Opened on purpose, it says so loudly and answers everyone.
    let mut node = start_node(
        &park.node,
        data.path(),
        "[access]\nprotected_mode = false\n",
    );
    let remote: SocketAddr = format!("[{NODE_V6}]:{}", node.http.port()).parse().unwrap();
    let (status, body) = ask(&park.client, remote, "GET", QUERY, &[], b"");
    assert_eq!(status, 200, "{body}");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(said.contains("WARNING: the node is OPEN"), "{said}");
}

/// nginx as the Debian package installs it, with a configuration of the test's own.
struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|path| Path::new(path).exists())
}

/// nginx in `namespace`, on `listen` (IPv6 and loopback), in front of the node on `upstream`,
/// appending the peer to X-Forwarded-For as a park's ingress does.
fn start_nginx(namespace: &Namespace, dir: &Path, listen: u16, upstream: u16) -> Nginx {
    let config = format!(
        "daemon off;\n\
         master_process off;\n\
         error_log {dir}/error.log info;\n\
         pid {dir}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {dir}/body;\n\
           proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n\
           uwsgi_temp_path {dir}/uwsgi;\n\
           scgi_temp_path {dir}/scgi;\n\
           upstream nublar {{ server [::1]:{upstream}; keepalive 4; }}\n\
           server {{\n\
             listen [{NODE_V6}]:{listen};\n\
             listen [::1]:{listen};\n\
             location / {{\n\
               proxy_pass http://nublar;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             }}\n\
           }}\n\
         }}\n",
        dir = dir.display()
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, config).unwrap();
    let child = namespace
        .command(nginx_binary().unwrap())
        .args(["-p", dir.to_str().unwrap(), "-c", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap())
        .spawn()
        .unwrap();
    Nginx { child }
}

/// The sender header of every telemetry batch the node stored, through `nublar log tail`.
fn stored_senders(data: &Path) -> Vec<String> {
    let mut senders = Vec::new();
    for partition in ["0", "1"] {
        let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
            .args(["--data", data.to_str().unwrap()])
            .args(["log", "tail", "telemetry", "-p", partition, "-n", "100"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        senders.extend(text.split_whitespace().filter_map(|word| {
            word.strip_prefix("sender=")
                .map(|sender| sender.trim_matches(|c| c == '"' || c == ',').to_owned())
        }));
    }
    senders
}

#[test]
fn behind_nginx_forged_headers_change_nothing_and_a_proxied_client_is_never_local() {
    let park = match park() {
        Ok(park) => park,
        Err(reason) => return skip("the nginx test", &reason),
    };
    if nginx_binary().is_none() {
        return skip(
            "the nginx test",
            "nginx is not installed (apt-get install nginx)",
        );
    }
    let data = tempfile::tempdir().unwrap();
    let trusting = "[access]\ntrusted_proxies = [\"::1\", \"127.0.0.1\"]\n";
    let mut node = start_node(&park.node, data.path(), trusting);
    let nginx_dir = tempfile::tempdir().unwrap();
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let _nginx = start_nginx(&park.node, nginx_dir.path(), listen, node.http.port());
    let ingress: SocketAddr = format!("[{NODE_V6}]:{listen}").parse().unwrap();
    let local_ingress: SocketAddr = format!("[::1]:{listen}").parse().unwrap();

    // A park client claiming to be the node's host, in either header, is still the park.
    for forged in [
        &[][..],
        &[("X-Forwarded-For", "127.0.0.1")],
        &[("X-Forwarded-For", "::1, 127.0.0.1")],
        &[("Forwarded", "for=127.0.0.1")],
        &[("Forwarded", "for=\"[::1]\""), ("X-Forwarded-For", "::1")],
    ] {
        let (status, body) = ask(&park.client, ingress, "GET", QUERY, forged, b"");
        assert_eq!(status, 403, "{forged:?}: {body}");
        let (status, body) = ask(
            &park.client,
            ingress,
            "POST",
            "/api/v2/write?bucket=park",
            forged,
            b"fence,segment=s1 voltage_kv=8.1\n",
        );
        assert_eq!(status, 204, "{forged:?}: {body}");
    }
    // An operator on the node's host, through the same local nginx, is local.
    let (status, body) = ask(&park.node, local_ingress, "GET", QUERY, &[], b"");
    assert_eq!(status, 200, "{body}");

    // Without nginx among the trusted proxies (reloaded on SIGHUP), its requests are not
    // believed, nor are they local: every TCP peer is ::1, yet nothing reads from the park.
    std::fs::write(data.path().join("node.toml"), "").unwrap();
    node.signal(libc::SIGHUP);
    let stderr = data.path().join("node.stderr");
    let reloaded = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("access rules reloaded")
    {
        assert!(reloaded.elapsed() < Duration::from_secs(10), "no reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = ask(&park.client, ingress, "GET", QUERY, &[], b"");
    assert_eq!(status, 403, "{body}");
    let (status, body) = ask(&park.node, local_ingress, "GET", QUERY, &[], b"");
    assert_eq!(status, 403, "a proxied request is not this host's: {body}");
    let (status, _) = ask(
        &park.client,
        ingress,
        "POST",
        "/api/v2/write?bucket=park",
        &[("X-Forwarded-For", "198.51.100.9")],
        b"fence,segment=s2 voltage_kv=7.7\n",
    );
    assert_eq!(status, 204);

    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    drop(node);
    let mut senders = stored_senders(data.path());
    senders.sort();
    // Five writes through the trusting node, each the park client's; one through the
    // untrusting node, the proxy's own address.
    assert_eq!(
        senders,
        [vec!["::1".to_string()], vec![PARK_V6.to_string(); 5]].concat(),
        "stored senders"
    );
}

#[test]
fn tokens_reload_when_the_file_changes_and_a_broken_file_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let token = |name: &str| {
        format!(
            "[[access.tokens]]\nname = \"{name}\"\nsecret = \"secret-{name}\"\n\
             scopes = [\"write:park\"]\n"
        )
    };
    let mut node = common::start_node(data.path(), &token("first"), "127.0.0.1:0");
    let write = |secret: &str| {
        let authorization = format!("Token {secret}");
        request(
            node.http,
            "POST",
            "/api/v2/write?bucket=park",
            &[("Authorization", &authorization)],
            b"m f=1\n",
        )
        .0
    };
    assert_eq!(write("secret-first"), 204);
    assert_eq!(write("secret-second"), 401);
    // No signal: the changed file alone is read again within a few seconds.
    let file = data.path().join("node.toml");
    std::fs::write(&file, token("second")).unwrap();
    let changed = Instant::now();
    while write("secret-second") != 204 {
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the new token never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(write("secret-first"), 401, "the removed token stopped");
    // A file that does not parse is refused whole, and says why.
    std::fs::write(&file, "[[access.tokens]]\nname = \"broken\"\n").unwrap();
    node.signal(libc::SIGHUP);
    let stderr = data.path().join("stderr.txt");
    let sent = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("not applied")
    {
        assert!(sent.elapsed() < Duration::from_secs(10), "no complaint");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(write("secret-second"), 204, "the rules in force stay");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
}

/// A self-signed certificate for this host's names, as PEM files in `dir`.
fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// curl's status code for `url` (000 when the connection or the handshake failed), trusting
/// only `ca`, and the body.
fn curl(ca: &Path, url: &str, data: Option<&str>) -> (String, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-o", "-", "-w", "\n%{http_code}", url]);
    if let Some(data) = data {
        command.args(["--data-binary", data]);
    }
    let output = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// A TLS connection kept open, trusting only `ca`, on which requests follow one another.
struct KeptConnection {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl KeptConnection {
    fn open(address: SocketAddr, ca: &Path) -> KeptConnection {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let socket = std::net::TcpStream::connect(address).unwrap();
        KeptConnection {
            stream: rustls::StreamOwned::new(connection, socket),
        }
    }

    /// `GET /health` on the open connection: its body.
    fn health(&mut self) -> String {
        use std::io::{Read, Write};
        self.stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|n| n.trim().parse().unwrap())
            })
            .unwrap();
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

fn curl_missing() -> Option<String> {
    match Command::new("curl").arg("--version").output() {
        Ok(output) if output.status.success() => None,
        _ => Some("curl is not installed".into()),
    }
}

#[test]
fn https_serves_with_a_certificate_that_changes_without_dropping_connections() {
    if let Some(reason) = curl_missing() {
        return skip("the HTTPS test", &reason);
    }
    let data = tempfile::tempdir().unwrap();
    let certificates = tempfile::tempdir().unwrap();
    let (first, first_key) = certificate(certificates.path(), "first");
    let (second, second_key) = certificate(certificates.path(), "second");
    let (served, served_key) = (
        certificates.path().join("served.pem"),
        certificates.path().join("served.key"),
    );
    std::fs::copy(&first, &served).unwrap();
    std::fs::copy(&first_key, &served_key).unwrap();
    let config = format!(
        "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        served.display(),
        served_key.display()
    );
    let mut node = common::start_node(data.path(), &config, "127.0.0.1:0");
    let base = format!("https://127.0.0.1:{}", node.http.port());
    assert_eq!(
        curl(&first, &format!("{base}/health"), None),
        ("200".into(), "ok\n".into())
    );
    let (status, body) = curl(
        &first,
        &format!("{base}/api/v2/write?bucket=park"),
        Some("gate,gate=g1 open=true"),
    );
    assert_eq!(status, "204", "{body}");
    // Plain HTTP on the HTTPS port gets no answer, and is counted.
    let (status, _) = curl(
        &first,
        &format!("http://127.0.0.1:{}/health", node.http.port()),
        None,
    );
    assert_ne!(status, "200");
    let mut kept = KeptConnection::open(node.http, &first);
    assert_eq!(kept.health(), "ok\n");

    // The certificate changes on disk: new handshakes get it, the open connection goes on.
    std::fs::copy(&second_key, &served_key).unwrap();
    std::fs::copy(&second, &served).unwrap();
    let changed = Instant::now();
    while curl(&second, &format!("{base}/health"), None).0 != "200" {
        assert!(
            changed.elapsed() < Duration::from_secs(15),
            "the new certificate never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(
        curl(&first, &format!("{base}/health"), None).0,
        "200",
        "the old one is gone"
    );
    assert_eq!(kept.health(), "ok\n", "the open connection was not dropped");
    // A key that does not belong to the certificate changes nothing.
    std::fs::copy(&first_key, &served_key).unwrap();
    node.signal(libc::SIGHUP);
    let stderr = data.path().join("stderr.txt");
    let sent = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("TLS certificate not reloaded")
    {
        assert!(sent.elapsed() < Duration::from_secs(10), "no complaint");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(curl(&second, &format!("{base}/health"), None).0, "200");
    // This host's operator commands go on over the node's plain loopback listener.
    let topics = common::nublar_ok(data.path().to_str().unwrap(), &["log", "topics"]);
    assert!(topics.contains("telemetry"), "{topics}");
    let metrics = curl(&second, &format!("{base}/metrics"), None).1;
    assert!(
        metrics.contains("nublar_http_tls_handshake_failures_total")
            && !metrics.contains("nublar_http_tls_handshake_failures_total 0"),
        "{metrics}"
    );
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
}
