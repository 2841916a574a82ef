//! Property tests: whatever arrives, in whatever order, the session neither panics nor breaks
//! the protocol's invariants, and it never reaches Up without the three-way handshake.

use crate::common;

use std::time::Duration;

use common::{config, discriminator, parameters, wire};
use nublar_bfd::{Actions, ControlPacket, Diagnostic, Session, SplitMix64Jitter, State};
use proptest::prelude::*;

const LOCAL: u32 = 0x5e55;

#[derive(Clone, Debug)]
enum Event {
    Advance {
        microseconds: u64,
    },
    Receive(ControlPacket),
    Bytes(Vec<u8>),
    AdminDown,
    AdminUp,
    SetParameters {
        tx_ms: u32,
        rx_ms: u32,
        detect_multiplier: u8,
    },
}

fn arbitrary_peer_packet() -> impl Strategy<Value = ControlPacket> {
    (
        (
            0u8..4,
            prop_oneof![Just(0u32), Just(LOCAL), any::<u32>()],
            0u8..3,
            any::<bool>(),
        ),
        (
            1u8..=5,
            prop_oneof![Just(0u32), 1_000u32..2_000_000],
            0u32..2_000_000,
            0u8..32,
        ),
        prop_oneof![Just(0x77u32), 1u32..4],
    )
        .prop_map(
            |((state, your, poll_final, demand), (multiplier, tx, rx, diagnostic), mine)| {
                let state = State::from_code(state);
                ControlPacket {
                    diagnostic: Diagnostic::from_code(diagnostic),
                    state,
                    poll: poll_final == 1,
                    final_: poll_final == 2,
                    control_plane_independent: false,
                    demand,
                    detect_multiplier: multiplier,
                    my_discriminator: mine,
                    your_discriminator: if your == 0 && !state.allows_zero_your_discriminator() {
                        LOCAL
                    } else {
                        your
                    },
                    desired_min_tx_interval_us: tx,
                    required_min_rx_interval_us: rx,
                    required_min_echo_rx_interval_us: 0,
                    authentication: None,
                }
            },
        )
}

fn arbitrary_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u64..3_000_000).prop_map(|microseconds| Event::Advance { microseconds }),
        6 => arbitrary_peer_packet().prop_map(Event::Receive),
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(Event::Bytes),
        1 => Just(Event::AdminDown),
        1 => Just(Event::AdminUp),
        1 => (1u32..3_000, 1u32..3_000, 1u8..=5).prop_map(|(tx_ms, rx_ms, detect_multiplier)| {
            Event::SetParameters { tx_ms, rx_ms, detect_multiplier }
        }),
    ]
}

/// Checks what one event produced. `received` is the packet the session accepted, if any.
fn check(
    session: &Session<SplitMix64Jitter>,
    before: State,
    actions: &Actions,
    received: Option<&ControlPacket>,
) -> Result<(), TestCaseError> {
    if let Some(change) = &actions.state_change {
        prop_assert_eq!(change.from, before);
        prop_assert_ne!(change.from, change.to);
        prop_assert_eq!(change.to, session.state());
        if change.to == State::Up {
            // The handshake: our Down or Init was answered by a peer naming us.
            let packet = received.expect("only a received packet brings a session Up");
            prop_assert_eq!(packet.your_discriminator, LOCAL);
            match before {
                State::Down => prop_assert_eq!(packet.state, State::Init),
                State::Init => prop_assert!(matches!(packet.state, State::Init | State::Up)),
                other => prop_assert!(false, "went Up from {:?}", other),
            }
        }
        if change.to == State::Init {
            prop_assert_eq!(received.map(|packet| packet.state), Some(State::Down));
        }
    }
    if let Some(packet) = &actions.transmit {
        prop_assert!(!(packet.poll && packet.final_));
        prop_assert_eq!(packet.my_discriminator, LOCAL);
        prop_assert_eq!(packet.state, session.state());
        if packet.state != State::Up {
            prop_assert!(packet.desired_min_tx_interval_us >= 1_000_000);
        }
        let bytes = wire(packet);
        let decoded = ControlPacket::decode(&bytes);
        prop_assert_eq!(decoded.as_ref(), Ok(packet));
        if packet.final_ {
            prop_assert!(received.is_some_and(|received| received.poll));
        }
    }
    if session.state() != State::Up {
        prop_assert!(session.announced_parameters().desired_min_tx_interval_us >= 1_000_000);
        prop_assert!(!session.poll_active());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_event_sequences_keep_the_invariants(
        events in prop::collection::vec(arbitrary_event(), 1..120),
        seed in any::<u64>(),
    ) {
        let mut session = Session::new(
            config(parameters(50, 50, 3)),
            discriminator(LOCAL),
            SplitMix64Jitter::new(seed),
        )
        .unwrap();
        let mut now = Duration::ZERO;
        let mut admin_down = false;
        for event in events {
            let before = session.state();
            match event {
                Event::Advance { microseconds } => {
                    let end = now + Duration::from_micros(microseconds);
                    // Visit every deadline on the way, as a driver would.
                    while let Some(deadline) = session.next_deadline().filter(|deadline| *deadline <= end) {
                        now = now.max(deadline);
                        let before = session.state();
                        let actions = session.on_timer(now);
                        if let Some(change) = &actions.state_change {
                            prop_assert_eq!(change.to, State::Down);
                            prop_assert_eq!(change.diagnostic, Diagnostic::ControlDetectionTimeExpired);
                        }
                        check(&session, before, &actions, None)?;
                    }
                    now = end;
                    let actions = session.on_timer(now);
                    check(&session, before, &actions, None)?;
                }
                Event::Receive(packet) => {
                    let bytes = wire(&packet);
                    if let Ok(actions) = session.on_packet(now, &packet, &bytes) {
                        check(&session, before, &actions, Some(&packet))?;
                    } else {
                        prop_assert_eq!(session.state(), before);
                    }
                }
                Event::Bytes(bytes) => {
                    if let Ok(packet) = ControlPacket::decode(&bytes)
                        && let Ok(actions) = session.on_packet(now, &packet, &bytes)
                    {
                        check(&session, before, &actions, Some(&packet))?;
                    }
                }
                Event::AdminDown => {
                    let actions = session.set_admin_down(now);
                    admin_down = true;
                    check(&session, before, &actions, None)?;
                }
                Event::AdminUp => {
                    let actions = session.set_admin_up(now);
                    admin_down = false;
                    check(&session, before, &actions, None)?;
                }
                Event::SetParameters { tx_ms, rx_ms, detect_multiplier } => {
                    session
                        .set_parameters(now, parameters(tx_ms, rx_ms, detect_multiplier))
                        .unwrap();
                    prop_assert_eq!(session.state(), before);
                }
            }
            prop_assert_eq!(session.state() == State::AdminDown, admin_down);
        }
    }

    /// Two honest sessions on a lossless link always come Up, whatever their timers and jitter.
    #[test]
    fn honest_pairs_always_come_up(
        a in (1u32..2_000, 1u32..2_000, 1u8..=5),
        b in (1u32..2_000, 1u32..2_000, 1u8..=5),
    ) {
        let mut pair = common::Pair::new(
            config(parameters(a.0, a.1, a.2)),
            config(parameters(b.0, b.1, b.2)),
        );
        let up = pair.run_until_condition(Duration::from_secs(30), |pair| pair.both_up());
        prop_assert!(up.is_some());
        let later = pair.now + Duration::from_secs(30);
        pair.run_until(later);
        prop_assert!(pair.both_up(), "flapped: {:?}", pair.changes_of(common::Side::A));
    }
}
