//! A `nublar serve` child process as the process tests drive it: started from
//! a prepared command, its bound addresses read from its first line, signalled,
//! waited for, and killed when dropped.
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct NodeProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
}

impl NodeProcess {
    /// Spawns `command` (a `nublar serve …`) and reads its first line;
    /// `describe_failure` says what to print if that line is not the
    /// expected one (the node's stderr, for example).
    pub fn spawn(mut command: Command, describe_failure: impl Fn() -> String) -> NodeProcess {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let Some(rest) = first.strip_prefix("nublar listening http=") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("first line {first:?}; {}", describe_failure());
        };
        let (http, udp) = rest.trim().split_once(" udp=").unwrap();
        NodeProcess {
            child,
            http: http.parse().unwrap(),
            udp: udp.parse().unwrap(),
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request through the project's client, waited for: the status and the body as bytes.
pub fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let client = nublar_client::Client::new(nublar_client::ClientOptions::default()).unwrap();
    let method = nublar_client::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client
        .request(method, &format!("http://{address}{target}"))
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let answer = nublar_client::Client::block_on(request.send()).unwrap();
    (answer.status.as_u16(), answer.body)
}

/// `nublar serve` on `data` with `config` as its TOML file, HTTP on `http`; its stderr is
/// appended to `stderr.txt` there, so that restarts keep what earlier runs said.
pub fn start_node(data: &Path, config: &str, http: &str) -> NodeProcess {
    let file = data.join("node.toml");
    std::fs::write(&file, config).unwrap();
    let stderr = data.join("stderr.txt");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--config", file.to_str().unwrap()])
        .args(["--http", http, "--udp", "127.0.0.1:0"])
        .args(["--partitions", "2", "--drain-seconds", "20"])
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&stderr)
                .unwrap(),
        );
    NodeProcess::spawn(command, move || {
        std::fs::read_to_string(&stderr).unwrap_or_default()
    })
}

/// `nublar --data dir …`, run to its end.
pub fn nublar(dir: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nublar"))
        .args(["--data", dir])
        .args(args)
        .output()
        .unwrap()
}

/// What `nublar --data dir …` printed; it must succeed.
pub fn nublar_ok(dir: &str, args: &[&str]) -> String {
    let output = nublar(dir, args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A port nothing listens on now, for a node that must come back at the same address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
