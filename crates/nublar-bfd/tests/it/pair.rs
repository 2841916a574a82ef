//! Two sessions talking through a virtual network: the behaviours an operator would notice.

use crate::common;

use std::time::Duration;

use common::{Pair, Record, Side, config, ms, parameters};
use nublar_bfd::{
    AuthenticationMode, Authenticator, Diagnostic, Session, SessionConfig, Sha1Key,
    SplitMix64Jitter, State,
};

fn fast_pair() -> Pair {
    Pair::new(
        config(parameters(100, 100, 3)),
        config(parameters(100, 100, 3)),
    )
}

/// Brings a pair Up and lets the Poll sequences that lift the slow rate finish.
fn settled_pair() -> Pair {
    let mut pair = fast_pair();
    pair.run_until_condition(ms(10_000), |pair| pair.both_up())
        .expect("pair comes Up");
    pair.run_until_condition(ms(20_000), |pair| {
        !pair.a.poll_active() && !pair.b.poll_active()
    })
    .expect("polls finish");
    let settle = pair.now + ms(500);
    pair.run_until(settle);
    pair
}

#[test]
fn two_sessions_come_up_through_the_three_way_handshake() {
    let mut pair = fast_pair();
    let up_at = pair
        .run_until_condition(ms(10_000), |pair| pair.both_up())
        .expect("Up");
    // Each side sends at the slow rate while not Up, so a handshake takes at most a few seconds.
    assert!(up_at <= ms(3_000), "came up at {up_at:?}");
    for side in [Side::A, Side::B] {
        let path: Vec<State> = pair
            .changes_of(side)
            .iter()
            .map(|(_, change)| change.to)
            .collect();
        assert!(
            path == [State::Init, State::Up] || path == [State::Up],
            "{side:?} went through {path:?}"
        );
        // Nobody goes Up before having heard a packet naming them (Your Discriminator).
        let (went_up_at, _) = *pair.changes_of(side).last().unwrap();
        let heard_init_or_up = pair.log.iter().any(|record| match record {
            Record::Delivered { at, to, packet } => {
                *to == side
                    && *at <= went_up_at
                    && matches!(packet.state, State::Init | State::Up)
                    && packet.your_discriminator == pair_discriminator(side)
            }
            _ => false,
        });
        assert!(heard_init_or_up, "{side:?} went Up without the handshake");
    }
    assert_eq!(pair.a.remote_discriminator(), 0xb);
    assert_eq!(pair.b.remote_discriminator(), 0xa);
}

fn pair_discriminator(side: Side) -> u32 {
    match side {
        Side::A => 0xa,
        Side::B => 0xb,
    }
}

#[test]
fn after_coming_up_the_sessions_poll_their_fast_timers_into_use() {
    let pair = settled_pair();
    for session in [&pair.a, &pair.b] {
        assert_eq!(session.announced_parameters(), parameters(100, 100, 3));
        assert_eq!(session.transmit_interval(), ms(100));
        assert_eq!(session.detection_time(), Some(ms(300)));
    }
    // While not Up the packets carried at least one second; the Poll carried the fast values.
    let sent = pair.sent_by(Side::A);
    assert!(
        sent.iter()
            .filter(|(_, packet)| packet.state != State::Up)
            .all(|(_, packet)| { packet.desired_min_tx_interval_us >= 1_000_000 })
    );
    let first_poll = sent
        .iter()
        .find(|(_, packet)| packet.poll)
        .expect("a Poll was sent");
    assert_eq!(first_poll.1.state, State::Up);
    assert_eq!(first_poll.1.desired_min_tx_interval_us, 100_000);
    assert!(
        pair.sent_by(Side::B)
            .iter()
            .any(|(_, packet)| packet.final_)
    );
}

#[test]
fn a_silent_peer_is_declared_down_within_the_detection_time() {
    let mut pair = settled_pair();
    let silenced_at = pair.now;
    pair.drop_from_a = true;
    let down_at = pair
        .run_until_condition(silenced_at + ms(5_000), |pair| {
            pair.b.state() == State::Down
        })
        .expect("B notices");
    let detection_time = ms(300);
    assert!(
        down_at > silenced_at && down_at <= silenced_at + detection_time,
        "down at {down_at:?}"
    );
    // Exactly one detection time after the last packet B heard.
    assert_eq!(
        down_at,
        pair.last_delivery_to(Side::B).unwrap() + detection_time
    );
    let (_, change) = *pair.changes_of(Side::B).last().unwrap();
    assert_eq!(change.from, State::Up);
    assert_eq!(change.diagnostic, Diagnostic::ControlDetectionTimeExpired);
    assert!(!change.remote_admin_down);
    assert_eq!(
        pair.b.remote_discriminator(),
        0,
        "RFC 5880 6.8.1 forgets the peer"
    );

    // A hears B's Down packets and goes Down too, with Neighbor Signaled Session Down.
    pair.run_until_condition(pair.now + ms(5_000), |pair| pair.a.state() == State::Down)
        .expect("A follows");
    assert_eq!(
        pair.a.local_diagnostic(),
        Diagnostic::NeighborSignaledSessionDown
    );
}

#[test]
fn the_pair_recovers_when_the_path_heals() {
    let mut pair = settled_pair();
    pair.drop_from_a = true;
    pair.run_until_condition(pair.now + ms(5_000), |pair| pair.a.state() == State::Down)
        .expect("both go Down");
    pair.drop_from_a = false;
    pair.run_until_condition(pair.now + ms(10_000), |pair| pair.both_up())
        .expect("back Up");
}

#[test]
fn a_slower_transmit_rate_takes_effect_only_after_the_final() {
    let mut pair = settled_pair();
    let now = pair.now;
    pair.a.set_parameters(now, parameters(300, 100, 3)).unwrap();
    assert!(pair.a.poll_active());
    // The increase waits for the Final: the peer's detection time still assumes 100 ms.
    assert_eq!(pair.a.transmit_interval(), ms(100));
    let poll_sent_at = pair
        .run_until_condition(now + ms(1_000), |pair| {
            pair.sent_by(Side::A)
                .iter()
                .any(|(at, packet)| *at >= now && packet.poll)
        })
        .unwrap();
    // The Poll rides on the next periodic packet: no extra packet (RFC 5880 section 6.5).
    let previous_send = pair.sent_by(Side::A).iter().rev().nth(1).unwrap().0;
    assert!(poll_sent_at - previous_send >= ms(75));
    let final_at = pair
        .run_until_condition(now + ms(1_000), |pair| !pair.a.poll_active())
        .unwrap();
    assert_eq!(
        final_at,
        poll_sent_at + 2 * pair.latency,
        "B answers the Poll at once"
    );
    assert_eq!(pair.a.transmit_interval(), ms(300));
    assert_eq!(pair.b.detection_time(), Some(ms(900)));
    // The next packets are spaced by 225 to 300 ms and B never loses the session.
    let end = pair.now + ms(3_000);
    pair.run_until(end);
    let gaps = gaps_after(&pair, Side::A, final_at);
    assert!(gaps.len() >= 8);
    assert!(
        gaps.iter().all(|gap| (ms(225)..=ms(300)).contains(gap)),
        "{gaps:?}"
    );
    assert!(pair.both_up());
}

#[test]
fn a_shorter_detection_time_takes_effect_only_after_the_final() {
    let mut pair = Pair::new(
        config(parameters(100, 100, 3)),
        config(parameters(20, 20, 3)),
    );
    pair.run_until_condition(ms(10_000), |pair| pair.both_up())
        .unwrap();
    pair.run_until_condition(ms(20_000), |pair| {
        !pair.a.poll_active() && !pair.b.poll_active()
    })
    .unwrap();
    assert_eq!(pair.a.detection_time(), Some(ms(300)));
    let now = pair.now;
    pair.a.set_parameters(now, parameters(100, 30, 3)).unwrap();
    // B still sends every 100 ms until it hears the new Required Min RX, so A keeps 300 ms.
    assert_eq!(pair.a.detection_time(), Some(ms(300)));
    pair.run_until_condition(now + ms(1_000), |pair| !pair.a.poll_active())
        .unwrap();
    assert_eq!(pair.a.detection_time(), Some(ms(90)));
    assert_eq!(pair.b.transmit_interval(), ms(30));
    let end = pair.now + ms(2_000);
    pair.run_until(end);
    assert!(pair.both_up());
    assert!(
        pair.changes_of(Side::A)
            .iter()
            .all(|(_, change)| change.to != State::Down)
    );
}

#[test]
fn a_longer_detection_time_applies_at_once() {
    let mut pair = settled_pair();
    let now = pair.now;
    pair.a.set_parameters(now, parameters(100, 500, 3)).unwrap();
    assert_eq!(pair.a.detection_time(), Some(ms(1_500)));
}

#[test]
fn a_change_during_a_poll_waits_for_its_final_and_polls_again() {
    let mut pair = settled_pair();
    let now = pair.now;
    pair.a.set_parameters(now, parameters(200, 100, 3)).unwrap();
    pair.a.set_parameters(now, parameters(400, 100, 3)).unwrap();
    assert_eq!(pair.a.announced_parameters(), parameters(200, 100, 3));
    pair.run_until_condition(now + ms(2_000), |pair| {
        pair.a.announced_parameters() == parameters(400, 100, 3) && !pair.a.poll_active()
    })
    .expect("second poll completes");
    assert_eq!(pair.a.transmit_interval(), ms(400));
    assert!(pair.both_up());
}

#[test]
fn a_down_session_sends_at_the_slow_rate() {
    let mut pair = fast_pair();
    // B never hears A, and A never hears B: both stay Down.
    pair.drop_from_a = true;
    pair.drop_from_b = true;
    pair.run_until(ms(60_000));
    assert_eq!(pair.a.state(), State::Down);
    let sent = pair.sent_by(Side::A);
    assert!(sent.len() >= 60, "sent {}", sent.len());
    assert_eq!(
        sent[0].0,
        Duration::ZERO,
        "the first packet goes out at once"
    );
    let gaps = gaps_after(&pair, Side::A, Duration::ZERO);
    assert!(
        gaps.iter().all(|gap| (ms(750)..=ms(1_000)).contains(gap)),
        "{gaps:?}"
    );
    assert!(sent.iter().all(|(_, packet)| {
        packet.state == State::Down
            && packet.desired_min_tx_interval_us == 1_000_000
            && packet.your_discriminator == 0
    }));
    // The jitter spreads the packets rather than always using the same reduction.
    let shortest = gaps.iter().min().unwrap();
    let longest = gaps.iter().max().unwrap();
    assert!(*longest - *shortest > ms(100), "{shortest:?}..{longest:?}");
}

#[test]
fn admin_down_is_propagated_and_not_mistaken_for_a_failure() {
    let mut pair = settled_pair();
    let now = pair.now;
    let actions = pair.a.set_admin_down(now);
    pair.apply(Side::A, actions);
    assert_eq!(pair.a.state(), State::AdminDown);
    pair.run_until_condition(now + ms(2_000), |pair| pair.b.state() == State::Down)
        .expect("B hears AdminDown");
    let (_, change) = *pair.changes_of(Side::B).last().unwrap();
    assert_eq!(change.diagnostic, Diagnostic::NeighborSignaledSessionDown);
    assert!(
        change.remote_admin_down,
        "RFC 5882: a peer's AdminDown is not a path failure"
    );
    assert!(pair.b.remote_signaled_admin_down());

    // A keeps announcing AdminDown for a detection time and at least three packets, then stops.
    let end = now + ms(10_000);
    pair.run_until(end);
    let admin_down: Vec<Duration> = pair
        .sent_by(Side::A)
        .iter()
        .filter(|(_, packet)| packet.state == State::AdminDown)
        .map(|(at, packet)| {
            assert_eq!(packet.diagnostic, Diagnostic::AdministrativelyDown);
            *at
        })
        .collect();
    assert!(admin_down.len() >= 3, "{admin_down:?}");
    assert!(*admin_down.last().unwrap() >= now + ms(300));
    assert!(*admin_down.last().unwrap() <= now + ms(4_000));
    assert!(pair.a.next_deadline().is_none());
    assert_eq!(
        pair.a.state(),
        State::AdminDown,
        "B's Down packets are ignored"
    );
    assert_eq!(
        pair.b.state(),
        State::Down,
        "AdminDown never brings B back up"
    );

    let now = pair.now;
    let actions = pair.a.set_admin_up(now);
    pair.apply(Side::A, actions);
    pair.run_until_condition(now + ms(10_000), |pair| pair.both_up())
        .expect("back Up");
}

fn authenticated(mode: AuthenticationMode, initial_sequence_number: u32) -> SessionConfig {
    SessionConfig {
        parameters: parameters(100, 100, 3),
        authentication: Some(Authenticator::new(mode, initial_sequence_number)),
        passive: false,
    }
}

fn meticulous(key: &[u8]) -> AuthenticationMode {
    AuthenticationMode::MeticulousKeyedSha1 {
        key_id: 3,
        key: Sha1Key::new(key).unwrap(),
    }
}

#[test]
fn authenticated_sessions_come_up_and_stay_up() {
    let mut pair = Pair::new(
        authenticated(meticulous(b"shared"), 0xffff_fff0),
        authenticated(meticulous(b"shared"), 17),
    );
    pair.run_until_condition(ms(10_000), |pair| pair.both_up())
        .expect("Up");
    pair.run_until(ms(15_000));
    assert!(pair.both_up());
    assert!(
        !pair
            .log
            .iter()
            .any(|record| matches!(record, Record::Refused { .. }))
    );
}

#[test]
fn sessions_with_different_keys_never_come_up() {
    let mut pair = Pair::new(
        authenticated(meticulous(b"shared"), 1),
        authenticated(meticulous(b"other"), 1),
    );
    pair.run_until(ms(10_000));
    assert_eq!(pair.a.state(), State::Down);
    assert_eq!(pair.b.state(), State::Down);
    assert!(pair.log.iter().any(|record| matches!(
        record,
        Record::Refused {
            reason: "authentication_hash_mismatch",
            ..
        }
    )));
}

#[test]
fn an_authenticated_session_comes_back_up_after_the_peer_restarts_with_a_new_sequence() {
    let keyed = AuthenticationMode::KeyedSha1 {
        key_id: 4,
        key: Sha1Key::new(b"shared").unwrap(),
    };
    for mode in [meticulous(b"shared"), keyed] {
        let mut pair = Pair::new(
            authenticated(mode.clone(), 5),
            authenticated(mode.clone(), 100),
        );
        pair.run_until_condition(ms(10_000), |pair| pair.both_up())
            .expect("Up");
        // B dies: A times out, and forgets B's timers with it (section 6.8.1).
        pair.drop_from_b = true;
        let died = pair.now;
        pair.run_until_condition(died + ms(2_000), |pair| pair.a.state() == State::Down)
            .expect("A notices");
        pair.run_until(died + ms(5_000));
        // B comes back with a sequence number far outside A's window: A must have forgotten
        // the old one after two detection times of silence, or it never comes Up again.
        pair.b = Session::new(
            authenticated(mode, 0x8000_0000),
            common::discriminator(0xbc),
            SplitMix64Jitter::new(7),
        )
        .unwrap();
        pair.drop_from_b = false;
        let restarted = pair.now;
        pair.run_until_condition(restarted + ms(10_000), |pair| pair.both_up())
            .expect("back Up after the peer's restart");
    }
}

fn gaps_after(pair: &Pair, side: Side, start: Duration) -> Vec<Duration> {
    let times: Vec<Duration> = pair
        .sent_by(side)
        .iter()
        .filter(|(at, packet)| *at >= start && !packet.final_)
        .map(|(at, _)| *at)
        .collect();
    times.windows(2).map(|pair| pair[1] - pair[0]).collect()
}
