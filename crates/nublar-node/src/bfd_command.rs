//! `nublar bfd status`: the BFD sessions of a running node, asked over its operator API.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use nublar_bfd::{Diagnostic, SessionStatus, SpeakerCounters, State};

/// Where a node answers `nublar bfd status` (admin scope).
pub const OPERATOR_PATH: &str = "/api/v1/admin/bfd";

/// `nublar bfd [--node URL] [--token T] [--ca-file PEM] …`
#[derive(clap::Args)]
pub struct BfdArgs {
    #[command(flatten)]
    target: crate::log_command::NodeTarget,
    #[command(subcommand)]
    command: BfdCommand,
}

#[derive(Subcommand)]
pub enum BfdCommand {
    /// One line per session: addresses, state, the peer's state, diagnostics, negotiated
    /// timers and counters.
    Status,
}

pub fn run(data: &Path, args: BfdArgs) -> anyhow::Result<()> {
    match args.command {
        BfdCommand::Status => {
            let text = crate::log_command::post_to_node(data, &args.target, OPERATOR_PATH, b"")?;
            print!("{text}");
        }
    }
    Ok(())
}

/// The status table; what a node without BFD answers is said by its caller.
pub fn render(sessions: &[SessionStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<24} {:<9} {:<9} {:<30} {:<30} {:>8} {:>9} {:>8} {:>8} {:>6} ORIGIN",
        "LOCAL",
        "PEER",
        "STATE",
        "REMOTE",
        "DIAGNOSTIC",
        "REMOTE DIAGNOSTIC",
        "TX MS",
        "DETECT MS",
        "SENT",
        "RECEIVED",
        "DROPS",
    );
    for session in sessions {
        let drops = session.counters.drops;
        let detection = session
            .detection_time
            .map_or("-".to_string(), |time| milliseconds(time).to_string());
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:<9} {:<9} {:<30} {:<30} {:>8} {:>9} {:>8} {:>8} {:>6} {}",
            session.local.to_string(),
            session.peer.to_string(),
            state_name(session.state),
            state_name(session.remote_state),
            diagnostic_name(session.local_diagnostic),
            diagnostic_name(session.remote_diagnostic),
            milliseconds(session.transmit_interval),
            detection,
            session.counters.packets_sent,
            session.counters.packets_received,
            drops.authentication + drops.address_mismatch + drops.rejected,
            match (session.accepted, session.multihop) {
                (true, _) => "accepted",
                (false, false) => "peer",
                (false, true) => "peer,multihop",
            },
        );
    }
    out
}

/// The sessions as Prometheus gauges and counters for the node's `/metrics`,
/// one series per session labelled by its local and peer address. States are
/// numbered as in RFC 5880: 0 AdminDown, 1 Down, 2 Init, 3 Up.
pub fn prometheus(sessions: &[SessionStatus]) -> String {
    type Value = fn(&SessionStatus) -> f64;
    let series: [(&str, &str, Value); 8] = [
        ("nublar_bfd_session_up", "gauge", |session| {
            f64::from(u8::from(session.state == State::Up))
        }),
        ("nublar_bfd_session_state", "gauge", |session| {
            f64::from(session.state.code())
        }),
        ("nublar_bfd_session_remote_state", "gauge", |session| {
            f64::from(session.remote_state.code())
        }),
        (
            "nublar_bfd_session_transmit_interval_seconds",
            "gauge",
            |session| session.transmit_interval.as_secs_f64(),
        ),
        (
            "nublar_bfd_session_detection_time_seconds",
            "gauge",
            |session| {
                session
                    .detection_time
                    .map_or(0.0, |time| time.as_secs_f64())
            },
        ),
        (
            "nublar_bfd_session_packets_sent_total",
            "counter",
            |session| session.counters.packets_sent as f64,
        ),
        (
            "nublar_bfd_session_packets_received_total",
            "counter",
            |session| session.counters.packets_received as f64,
        ),
        (
            "nublar_bfd_session_transmit_errors_total",
            "counter",
            |session| session.counters.transmit_errors as f64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, value) in series {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for session in sessions {
            let (local, peer) = (session.local, session.peer);
            let _ = writeln!(
                out,
                "{name}{{local=\"{local}\",peer=\"{peer}\"}} {}",
                value(session)
            );
        }
    }
    out
}

/// The speaker's own counters for `/metrics`: datagrams, accepted sessions, and datagrams
/// dropped before a session was found, by reason.
pub fn speaker_prometheus(counters: &SpeakerCounters) -> String {
    let drops = counters.drops;
    let mut out = String::new();
    for (name, value) in [
        (
            "nublar_bfd_datagrams_received_total",
            counters.datagrams_received,
        ),
        ("nublar_bfd_receive_errors_total", counters.receive_errors),
        (
            "nublar_bfd_sessions_accepted_total",
            counters.sessions_accepted,
        ),
        (
            "nublar_bfd_sessions_expired_total",
            counters.sessions_expired,
        ),
    ] {
        let _ = writeln!(out, "# TYPE {name} counter\n{name} {value}");
    }
    let name = "nublar_bfd_datagrams_dropped_total";
    let _ = writeln!(out, "# TYPE {name} counter");
    for (reason, value) in [
        ("malformed", drops.malformed),
        ("wrong_ttl", drops.wrong_ttl),
        ("unknown_discriminator", drops.unknown_discriminator),
        ("unknown_peer", drops.unknown_peer),
        ("accept_authentication", drops.accept_authentication),
        ("accept_limit", drops.accept_limit),
    ] {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {value}");
    }
    out
}

fn milliseconds(time: Duration) -> u128 {
    time.as_millis()
}

fn state_name(state: State) -> &'static str {
    match state {
        State::AdminDown => "AdminDown",
        State::Down => "Down",
        State::Init => "Init",
        State::Up => "Up",
    }
}

/// The RFC 5880 section 4.1 names, lower case, with dashes for the table's columns.
fn diagnostic_name(diagnostic: Diagnostic) -> String {
    match diagnostic {
        Diagnostic::NoDiagnostic => "none".into(),
        Diagnostic::ControlDetectionTimeExpired => "control-detection-time-expired".into(),
        Diagnostic::EchoFunctionFailed => "echo-function-failed".into(),
        Diagnostic::NeighborSignaledSessionDown => "neighbor-signaled-session-down".into(),
        Diagnostic::ForwardingPlaneReset => "forwarding-plane-reset".into(),
        Diagnostic::PathDown => "path-down".into(),
        Diagnostic::ConcatenatedPathDown => "concatenated-path-down".into(),
        Diagnostic::AdministrativelyDown => "administratively-down".into(),
        Diagnostic::ReverseConcatenatedPathDown => "reverse-concatenated-path-down".into(),
        Diagnostic::Unassigned(_) => format!("unassigned-{}", diagnostic.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_named_diagnostic_has_a_name() {
        for state in [State::AdminDown, State::Down, State::Init, State::Up] {
            assert!(!state_name(state).is_empty());
        }
        assert_eq!(
            diagnostic_name(Diagnostic::AdministrativelyDown),
            "administratively-down"
        );
        let header = render(&[]);
        assert_eq!(header.lines().count(), 1);
        assert!(header.starts_with("LOCAL"), "{header}");
    }
}
