//! What the interop tests against real routers share: checking that the lab can be built,
//! running commands, entering a network namespace, and waiting on the speaker. Each router's
//! test is a binary of its own, apart from `tests/it`: its sessions run on detection times of
//! about a second, and a process of its own shares the CPU with nothing else of
//! the suite.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use nublar_bfd::{SessionId, SessionStatus, Speaker};
use tokio::time::Instant;

/// Whether the lab can run: root, `ip`, and what `more` checks. Without them a test prints why
/// and returns false, unless `CI=true`, where a missing piece is a failure: CI must run it.
pub fn ready(test: &str, more: impl FnOnce() -> Result<(), String>) -> bool {
    let checked = root_and_ip().and_then(|()| more());
    let Err(reason) = checked else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip that nobody
    // sees looks like a pass.
    let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
    false
}

fn root_and_ip() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need it)".into());
    }
    if !command_exists("ip") {
        return Err("`ip` (iproute2) not found".into());
    }
    Ok(())
}

pub fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|path| path.join(name).is_file()))
        .unwrap_or(false)
}

/// Runs a command that must succeed, and returns what it printed.
pub fn run(program: &str, arguments: &[&str]) -> String {
    let output = Command::new(program)
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("{program} {arguments:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {arguments:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Moves the calling thread (only it) into a named network namespace.
pub fn enter_namespace(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open namespace");
    // SAFETY: the descriptor is a valid network namespace file for the duration of the call.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
}

pub fn find(sessions: &[SessionStatus], id: SessionId) -> &SessionStatus {
    sessions
        .iter()
        .find(|status| status.id == id)
        .expect("session listed")
}

/// Polls the speaker's sessions until `condition` holds, at most `wait`.
pub async fn wait_for_status(
    speaker: &Speaker,
    wait: Duration,
    condition: impl Fn(&[SessionStatus]) -> bool,
) -> Vec<SessionStatus> {
    let deadline = Instant::now() + wait;
    loop {
        let sessions = speaker.sessions().await.expect("speaker runs");
        if condition(&sessions) {
            return sessions;
        }
        assert!(
            Instant::now() < deadline,
            "condition never held: {sessions:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `scenario` on a thread of its own inside `namespace`, on a runtime of its own, and
/// passes on its panic: the caller's lab (whose Drop cleans up) is dropped while it unwinds.
pub fn run_in_namespace<F, Fut>(namespace: String, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let outcome = std::thread::spawn(move || {
        enter_namespace(&namespace);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(scenario());
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
