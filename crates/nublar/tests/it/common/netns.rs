//! Network namespaces a test creates for itself, so that traffic between a client and a
//! node crosses a real network stack without ever leaving the machine: created with `ip
//! netns add`, entered by child processes (`ip netns exec`) and by test threads (`setns`),
//! and deleted when dropped, also when an assertion fails.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Tells apart the namespaces and links of tests that run at once in one process.
static CREATED: AtomicU32 = AtomicU32::new(0);

pub struct Namespace {
    pub name: String,
    serial: u32,
}

impl Namespace {
    /// A fresh namespace with its loopback up. `Err` when it cannot be created at all (a
    /// missing privilege or tool), so the caller can skip; a failure after that is a
    /// failure of the test.
    pub fn create(tag: &str) -> Result<Namespace, String> {
        // The pid keeps concurrent runs (and a leftover of a killed run) apart, the serial
        // the tests of one run.
        let serial = CREATED.fetch_add(1, Ordering::Relaxed);
        let name = format!("nublar-{tag}-{}-{serial}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        let namespace = Namespace { name, serial };
        namespace.ip(&["link", "set", "lo", "up"]);
        Ok(namespace)
    }

    /// `ip -n <namespace> args…`; panics on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        if let Err(error) = run_ip(&all) {
            panic!("setting up namespace {}: {error}", self.name);
        }
    }

    /// `program` run inside the namespace. `ip netns exec` execs it in place (no fork), so
    /// the child's pid is the program's and signals reach it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `work` on a thread that has entered the namespace (a thread's network namespace
    /// is its own), so the test can talk to the node without leaving traffic outside.
    pub fn on_thread<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let handle = File::open(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
            // SAFETY: setns takes an open namespace descriptor and changes only this thread.
            let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }

    /// Joins this namespace and `other` with a veth pair, `address` here and
    /// `other_address` there (each with its prefix length), both up.
    pub fn link(&self, other: &Namespace, addresses: &[(&str, &str)]) {
        // Interface names are at most 15 bytes.
        let here = format!("v{}-{}", std::process::id() % 100_000, self.serial % 1000);
        let there = format!("w{}-{}", std::process::id() % 100_000, self.serial % 1000);
        self.ip(&[
            "link",
            "add",
            &here,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &other.name,
        ]);
        for (address, other_address) in addresses {
            let extra: &[&str] = if address.contains(':') {
                &["nodad"]
            } else {
                &[]
            };
            self.ip(&[&["addr", "add", address, "dev", &here][..], extra].concat());
            other.ip(&[&["addr", "add", other_address, "dev", &there][..], extra].concat());
        }
        self.ip(&["link", "set", &here, "up"]);
        other.ip(&["link", "set", &there, "up"]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Processes inside were killed by guards dropped before this one; with the name gone
        // the kernel frees the namespace with its addresses, routes and links.
        if let Err(error) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("deleting namespace {}: {error}", self.name);
        }
    }
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Why this machine cannot run a namespace test, if it cannot.
pub fn missing_component() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need it)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => None,
        _ => Some("`ip` (iproute2) is not installed".into()),
    }
}

/// Skips `test` with the reason, or fails under `CI=true`, where every component must be
/// there.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, and {test} cannot run: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
}
