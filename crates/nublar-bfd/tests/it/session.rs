//! One session driven by hand: the RFC 5880 state table, timers and reception rules.

use crate::common;

use std::time::Duration;

use common::{
    GreatestJitter, PEER, config, deliver, discriminator, ms, parameters, peer_packet, wire,
};
use nublar_bfd::{
    AuthenticationError, AuthenticationMode, Authenticator, ControlPacket, Diagnostic, Jitter,
    NoJitter, ParameterError, Parameters, ReceiveError, Session, SessionConfig, Sha1Key, State,
};

const LOCAL: u32 = 0xa;

fn new_session<J: Jitter>(parameters: Parameters, jitter: J) -> Session<J> {
    Session::new(config(parameters), discriminator(LOCAL), jitter).unwrap()
}

/// A session brought into `state` by the shortest legal path, with the clock at one second.
fn session_in(state: State) -> Session<NoJitter> {
    let mut session = new_session(parameters(100, 100, 3), NoJitter);
    let now = ms(1_000);
    match state {
        State::Down => {}
        State::AdminDown => {
            let _ = session.set_admin_down(now);
        }
        State::Init => {
            let _ = deliver(&mut session, now, &peer_packet(State::Down, 0));
        }
        State::Up => {
            let _ = deliver(&mut session, now, &peer_packet(State::Down, 0));
            let _ = deliver(&mut session, now, &peer_packet(State::Up, LOCAL));
        }
    }
    assert_eq!(session.state(), state);
    session
}

/// The new state, its diagnostic and whether the peer signalled AdminDown; `None` for no change.
type Outcome = Option<(State, Diagnostic, bool)>;

/// RFC 5880 section 6.2 and the pseudo-code of 6.8.6: every local state against every received
/// state. `None` means no state change.
#[test]
fn follows_the_state_transition_table() {
    use State::{AdminDown, Down, Init, Up};
    const NEIGHBOR: Diagnostic = Diagnostic::NeighborSignaledSessionDown;
    const NONE: Diagnostic = Diagnostic::NoDiagnostic;
    #[rustfmt::skip]
    let table: [(State, State, Outcome); 16] = [
        (AdminDown, AdminDown, None),
        (AdminDown, Down,      None),
        (AdminDown, Init,      None),
        (AdminDown, Up,        None),
        (Down,      AdminDown, None),
        (Down,      Down,      Some((Init, NONE, false))),
        (Down,      Init,      Some((Up, NONE, false))),
        (Down,      Up,        None),
        (Init,      AdminDown, Some((Down, NEIGHBOR, true))),
        (Init,      Down,      None),
        (Init,      Init,      Some((Up, NONE, false))),
        (Init,      Up,        Some((Up, NONE, false))),
        (Up,        AdminDown, Some((Down, NEIGHBOR, true))),
        (Up,        Down,      Some((Down, NEIGHBOR, false))),
        (Up,        Init,      None),
        (Up,        Up,        None),
    ];
    for (local, received, expected) in table {
        let mut session = session_in(local);
        let your_discriminator = if received.allows_zero_your_discriminator() {
            0
        } else {
            LOCAL
        };
        let actions = deliver(
            &mut session,
            ms(1_010),
            &peer_packet(received, your_discriminator),
        );
        let change = actions.state_change.map(|change| {
            assert_eq!(change.from, local);
            (change.to, change.diagnostic, change.remote_admin_down)
        });
        assert_eq!(change, expected, "local {local:?}, received {received:?}");
        let state_after = expected.map_or(local, |(to, _, _)| to);
        assert_eq!(
            session.state(),
            state_after,
            "local {local:?}, received {received:?}"
        );
    }
}

#[test]
fn detection_timeout_takes_init_and_up_down_with_its_diagnostic() {
    for local in [State::Init, State::Up] {
        let mut session = session_in(local);
        let detection_time = session.detection_time().unwrap();
        assert_eq!(
            detection_time,
            ms(300),
            "3 x max(our 100 ms rx, their 100 ms tx)"
        );
        let deadline = ms(1_000) + detection_time;
        let early = session.on_timer(deadline - Duration::from_micros(1));
        assert!(early.state_change.is_none());
        let actions = session.on_timer(deadline);
        let change = actions.state_change.expect("timeout");
        assert_eq!((change.from, change.to), (local, State::Down));
        assert_eq!(change.diagnostic, Diagnostic::ControlDetectionTimeExpired);
        assert_eq!(session.remote_discriminator(), 0);
        // The packet sent at that moment already says Down, with the diagnostic.
        if let Some(packet) = actions.transmit {
            assert_eq!(packet.state, State::Down);
            assert_eq!(packet.your_discriminator, 0);
        }
    }
}

#[test]
fn detection_timeout_while_down_forgets_the_peer_without_a_state_change() {
    let mut session = session_in(State::Down);
    let _ = deliver(&mut session, ms(1_000), &peer_packet(State::Up, LOCAL));
    assert_eq!(session.state(), State::Down);
    assert_eq!(session.remote_discriminator(), PEER);
    let actions = session.on_timer(ms(4_000));
    assert!(actions.state_change.is_none());
    assert_eq!(session.remote_discriminator(), 0);
}

#[test]
fn detection_time_is_remote_multiplier_times_the_slower_of_our_rx_and_their_tx() {
    let mut session = new_session(parameters(100, 100, 3), NoJitter);
    let mut packet = peer_packet(State::Down, 0);
    packet.detect_multiplier = 5;
    packet.desired_min_tx_interval_us = 250_000;
    let _ = deliver(&mut session, ms(0), &packet);
    assert_eq!(session.detection_time(), Some(ms(1_250)));
    packet.desired_min_tx_interval_us = 40_000;
    let _ = deliver(&mut session, ms(10), &packet);
    assert_eq!(session.detection_time(), Some(ms(500)));
    // After the first packet the next deadline is the detection timer, not the 1 s transmit.
    assert!(session.on_timer(ms(10)).transmit.is_some());
    assert_eq!(session.next_deadline(), Some(ms(10) + ms(500)));
}

#[test]
fn transmit_interval_is_the_slower_of_our_tx_and_their_rx() {
    let mut session = session_in(State::Up);
    // Up, but the Poll lifting the slow floor has not been answered: 1 s is still in use.
    assert!(session.poll_active());
    assert_eq!(
        session.transmit_interval(),
        ms(100),
        "a faster rate applies at once"
    );
    let mut packet = peer_packet(State::Up, LOCAL);
    packet.required_min_rx_interval_us = 700_000;
    let _ = deliver(&mut session, ms(1_020), &packet);
    assert_eq!(session.transmit_interval(), ms(700));
}

#[test]
fn jitter_keeps_intervals_between_75_and_100_percent() {
    for (multiplier, longest) in [(3, ms(1_000)), (1, ms(900))] {
        let shortest = ms(750);
        let mut least = new_session(parameters(100, 100, multiplier), NoJitter);
        let mut most = new_session(parameters(100, 100, multiplier), GreatestJitter);
        for session_gap in [gap(&mut least), gap(&mut most)]
            .into_iter()
            .zip([longest, shortest])
        {
            assert_eq!(session_gap.0, session_gap.1, "multiplier {multiplier}");
        }
    }
}

/// Sends the first packet, then returns the time until the next one.
fn gap<J: Jitter>(session: &mut Session<J>) -> Duration {
    let start = ms(5);
    assert!(session.on_timer(start).transmit.is_some());
    let next = session.next_deadline().unwrap();
    assert!(session.on_timer(next).transmit.is_some());
    next - start
}

#[test]
fn a_peer_requiring_zero_rx_stops_our_periodic_packets() {
    let mut session = session_in(State::Down);
    assert!(session.on_timer(ms(1_000)).transmit.is_some());
    let mut packet = peer_packet(State::Down, 0);
    packet.required_min_rx_interval_us = 0;
    // The peer keeps talking for three seconds; we say nothing, and only the detection
    // deadline stays scheduled.
    for step in 1..=30 {
        let now = ms(1_000 + 100 * step);
        let actions = deliver(&mut session, now, &packet);
        assert!(actions.transmit.is_none());
        assert_eq!(session.next_deadline(), Some(now + ms(300)));
        assert!(session.on_timer(now).transmit.is_none());
    }
    assert_eq!(session.state(), State::Init);
    // Periodic packets resume as soon as the peer lifts the restriction.
    packet.required_min_rx_interval_us = 100_000;
    let _ = deliver(&mut session, ms(4_050), &packet);
    let due = session.next_deadline().unwrap();
    assert!(
        due <= ms(4_050),
        "the last packet went out long ago: {due:?}"
    );
    let sent = session
        .on_timer(ms(4_050))
        .transmit
        .expect("periodic packets resume");
    assert_eq!(sent.state, State::Init);
}

#[test]
fn a_poll_is_answered_at_once_with_final_and_without_poll() {
    for local in [State::Down, State::Init, State::Up] {
        let mut session = session_in(local);
        let mut packet = peer_packet(State::Up, LOCAL);
        packet.state = if local == State::Down {
            State::Down
        } else {
            State::Up
        };
        packet.your_discriminator = if local == State::Down { 0 } else { LOCAL };
        packet.poll = true;
        let reply = deliver(&mut session, ms(1_001), &packet)
            .transmit
            .expect("Final");
        assert!(reply.final_ && !reply.poll, "{local:?}");
        assert_eq!(reply.your_discriminator, PEER);
    }
}

#[test]
fn an_admin_down_session_ignores_packets_and_polls() {
    let mut session = session_in(State::AdminDown);
    let mut packet = peer_packet(State::Init, LOCAL);
    packet.poll = true;
    let actions = deliver(&mut session, ms(1_001), &packet);
    assert_eq!(actions, Default::default());
    assert_eq!(session.state(), State::AdminDown);
}

#[test]
fn admin_down_from_frr_with_diagnostic_zero_is_still_admin_down() {
    let mut session = session_in(State::Up);
    let mut packet = peer_packet(State::AdminDown, LOCAL);
    packet.diagnostic = Diagnostic::NoDiagnostic;
    let change = deliver(&mut session, ms(1_001), &packet)
        .state_change
        .unwrap();
    assert_eq!(change.to, State::Down);
    assert_eq!(change.diagnostic, Diagnostic::NeighborSignaledSessionDown);
    assert!(change.remote_admin_down);
    assert!(session.remote_signaled_admin_down());
    assert_eq!(session.remote_diagnostic(), Diagnostic::NoDiagnostic);
}

#[test]
fn packets_for_another_discriminator_are_refused() {
    let mut session = session_in(State::Init);
    let packet = peer_packet(State::Up, LOCAL + 1);
    let bytes = wire(&packet);
    assert_eq!(
        session.on_packet(ms(1_001), &packet, &bytes),
        Err(ReceiveError::YourDiscriminatorMismatch {
            received: LOCAL + 1
        })
    );
    assert_eq!(session.state(), State::Init);
}

#[test]
fn hand_built_packets_that_decode_would_refuse_are_refused() {
    let mut session = session_in(State::Down);
    let mut packet = peer_packet(State::Up, 0);
    let bytes = wire(&peer_packet(State::Down, 0));
    assert!(matches!(
        session.on_packet(ms(1), &packet, &bytes),
        Err(ReceiveError::Invalid(_))
    ));
    packet = peer_packet(State::Down, 0);
    packet.my_discriminator = 0;
    assert!(matches!(
        session.on_packet(ms(1), &packet, &bytes),
        Err(ReceiveError::Invalid(_))
    ));
    assert_eq!(session.remote_discriminator(), 0);
}

#[test]
fn authentication_must_be_present_exactly_when_configured() {
    let mut plain = session_in(State::Down);
    let mut sender = Authenticator::new(
        AuthenticationMode::KeyedSha1 {
            key_id: 1,
            key: Sha1Key::new(b"k").unwrap(),
        },
        0,
    );
    let mut packet = peer_packet(State::Down, 0);
    sender.seal(&mut packet).unwrap();
    let bytes = wire(&packet);
    assert_eq!(
        plain.on_packet(ms(1), &packet, &bytes),
        Err(ReceiveError::AuthenticationUnexpected)
    );

    let mut secured = Session::new(
        SessionConfig {
            parameters: parameters(100, 100, 3),
            authentication: Some(Authenticator::new(
                AuthenticationMode::KeyedSha1 {
                    key_id: 1,
                    key: Sha1Key::new(b"k").unwrap(),
                },
                0,
            )),
            passive: false,
        },
        discriminator(LOCAL),
        NoJitter,
    )
    .unwrap();
    let unsigned = peer_packet(State::Down, 0);
    assert_eq!(
        secured.on_packet(ms(1), &unsigned, &wire(&unsigned)),
        Err(ReceiveError::Authentication(AuthenticationError::Missing))
    );
    assert!(secured.on_packet(ms(1), &packet, &bytes).is_ok());
    assert_eq!(secured.state(), State::Init);
    // What the session sends is sealed: it verifies on the peer's side.
    let sent = secured.on_timer(ms(2)).transmit.unwrap();
    assert!(matches!(
        sent.authentication,
        Some(nublar_bfd::AuthenticationSection::KeyedSha1(_))
    ));
    let sent_bytes = wire(&sent);
    assert_eq!(
        sender.verify(&ControlPacket::decode(&sent_bytes).unwrap(), &sent_bytes),
        Ok(())
    );
}

/// RFC 5880 section 6.8.1: bfd.AuthSeqKnown resets after two detection times of silence, so
/// a restarted peer with a new random sequence number is accepted again.
#[test]
fn the_receive_sequence_number_is_forgotten_after_two_detection_times() {
    let mode = AuthenticationMode::MeticulousKeyedSha1 {
        key_id: 1,
        key: Sha1Key::new(b"k").unwrap(),
    };
    let mut session = Session::new(
        SessionConfig {
            parameters: parameters(100, 100, 3),
            authentication: Some(Authenticator::new(mode.clone(), 0)),
            passive: false,
        },
        discriminator(LOCAL),
        NoJitter,
    )
    .unwrap();
    let signed = |sequence_number: u32| {
        let mut packet = peer_packet(State::Down, 0);
        Authenticator::new(mode.clone(), sequence_number)
            .seal(&mut packet)
            .unwrap();
        let bytes = wire(&packet);
        (packet, bytes)
    };
    let (packet, bytes) = signed(1_000_000);
    assert!(session.on_packet(ms(0), &packet, &bytes).is_ok());
    let detection_time = session.detection_time().unwrap();
    assert_eq!(detection_time, ms(300));
    let (restarted, restarted_bytes) = signed(5);
    assert!(matches!(
        session.on_packet(2 * detection_time, &restarted, &restarted_bytes),
        Err(ReceiveError::Authentication(
            AuthenticationError::SequenceNumberOutOfWindow { .. }
        ))
    ));
    let later = 2 * detection_time + Duration::from_micros(1);
    assert!(
        session
            .on_packet(later, &restarted, &restarted_bytes)
            .is_ok()
    );
}

#[test]
fn parameters_are_checked() {
    let invalid = [
        (
            parameters(0, 100, 3),
            ParameterError::DesiredMinTxOutOfRange { interval_us: 0 },
        ),
        (
            parameters(61_000, 100, 3),
            ParameterError::DesiredMinTxOutOfRange {
                interval_us: 61_000_000,
            },
        ),
        (
            parameters(100, 0, 3),
            ParameterError::RequiredMinRxOutOfRange { interval_us: 0 },
        ),
        (
            parameters(100, 100, 0),
            ParameterError::ZeroDetectMultiplier,
        ),
    ];
    for (parameters, expected) in invalid {
        assert_eq!(
            Session::new(config(parameters), discriminator(1), NoJitter).err(),
            Some(expected)
        );
        let mut session = new_session(common::parameters(100, 100, 3), NoJitter);
        assert_eq!(session.set_parameters(ms(0), parameters), Err(expected));
        assert_eq!(
            session.announced_parameters().desired_min_tx_interval_us,
            1_000_000
        );
    }
}

#[test]
fn changes_while_not_up_apply_at_once_with_the_slow_floor() {
    let mut session = new_session(parameters(100, 100, 3), NoJitter);
    session
        .set_parameters(ms(0), parameters(2_000, 50, 5))
        .unwrap();
    assert!(!session.poll_active());
    assert_eq!(session.announced_parameters(), parameters(2_000, 50, 5));
    session
        .set_parameters(ms(0), parameters(10, 50, 5))
        .unwrap();
    assert_eq!(session.announced_parameters(), parameters(1_000, 50, 5));
    let packet = session.on_timer(ms(0)).transmit.unwrap();
    assert_eq!(packet.desired_min_tx_interval_us, 1_000_000);
    assert_eq!(packet.required_min_rx_interval_us, 50_000);
    assert_eq!(packet.detect_multiplier, 5);
    assert!(!packet.poll);
}

#[test]
fn a_final_without_a_poll_changes_nothing() {
    let mut session = session_in(State::Down);
    let mut packet = peer_packet(State::Down, 0);
    packet.final_ = true;
    let actions = deliver(&mut session, ms(1_001), &packet);
    assert_eq!(
        actions.state_change.map(|change| change.to),
        Some(State::Init)
    );
    assert!(!session.poll_active());
}

#[test]
fn a_peer_in_demand_mode_stops_our_periodic_packets_once_both_are_up() {
    let mut session = session_in(State::Up);
    // Let the Poll that lifts the slow floor finish first.
    let mut final_packet = peer_packet(State::Up, LOCAL);
    final_packet.final_ = true;
    let _ = deliver(&mut session, ms(1_001), &final_packet);
    assert!(!session.poll_active());
    let mut demand = peer_packet(State::Up, LOCAL);
    demand.demand = true;
    let _ = deliver(&mut session, ms(1_002), &demand);
    assert_eq!(
        session.next_deadline(),
        Some(ms(1_002) + ms(300)),
        "only detection is left"
    );
    // A Poll of ours must still go out, demand or not.
    session
        .set_parameters(ms(1_003), parameters(200, 100, 3))
        .unwrap();
    let due = session.next_deadline().unwrap();
    assert!(due < ms(1_002) + ms(300));
    assert!(session.on_timer(due).transmit.unwrap().poll);
}

#[test]
fn set_admin_down_and_up_are_idempotent() {
    let mut session = session_in(State::Up);
    let change = session.set_admin_down(ms(1_001)).state_change.unwrap();
    assert_eq!((change.from, change.to), (State::Up, State::AdminDown));
    assert_eq!(change.diagnostic, Diagnostic::AdministrativelyDown);
    assert_eq!(session.set_admin_down(ms(1_002)), Default::default());
    let change = session.set_admin_up(ms(1_003)).state_change.unwrap();
    assert_eq!((change.from, change.to), (State::AdminDown, State::Down));
    assert_eq!(session.set_admin_up(ms(1_004)), Default::default());
    assert_eq!(
        session.announced_parameters().desired_min_tx_interval_us,
        1_000_000
    );
}

#[test]
fn on_timer_before_a_deadline_does_nothing() {
    let mut session = new_session(parameters(100, 100, 3), NoJitter);
    assert!(session.on_timer(ms(0)).transmit.is_some());
    let next = session.next_deadline().unwrap();
    assert_eq!(
        session.on_timer(next - Duration::from_micros(1)),
        Default::default()
    );
}

/// RFC 5880 section 6.8.7: a Passive session does not transmit while bfd.RemoteDiscr is zero,
/// that is before the peer has been heard and again after a detection time of silence.
#[test]
fn a_passive_session_speaks_only_while_it_hears_the_peer() {
    let mut session = Session::new(
        SessionConfig {
            passive: true,
            ..config(parameters(100, 100, 3))
        },
        discriminator(LOCAL),
        NoJitter,
    )
    .unwrap();
    assert_eq!(session.next_deadline(), None);
    assert_eq!(session.on_timer(ms(5_000)).transmit, None);

    let actions = deliver(&mut session, ms(6_000), &peer_packet(State::Down, 0));
    assert_eq!(
        actions.state_change.map(|change| change.to),
        Some(State::Init)
    );
    let answer = session
        .on_timer(session.next_deadline().expect("scheduled once heard"))
        .transmit
        .expect("the passive session answers");
    assert_eq!(answer.state, State::Init);
    assert_eq!(answer.your_discriminator, PEER);

    // The peer goes silent: after the detection time it is forgotten and we fall silent too.
    let detection_deadline = ms(6_000) + session.detection_time().unwrap();
    let mut now = ms(6_000);
    while let Some(deadline) = session.next_deadline() {
        assert!(
            deadline <= detection_deadline + ms(1),
            "still scheduled at {deadline:?}"
        );
        now = deadline;
        let _ = session.on_timer(now);
    }
    assert!(now >= detection_deadline);
    assert_eq!(session.state(), State::Down);
    assert_eq!(session.remote_discriminator(), 0);
    assert_eq!(session.on_timer(now + ms(10_000)).transmit, None);
}
