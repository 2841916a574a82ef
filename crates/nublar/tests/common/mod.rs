//! A `nublar serve` child process as the process tests drive it: started from
//! a prepared command, its bound addresses read from its first line, signalled,
//! waited for, and killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
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
