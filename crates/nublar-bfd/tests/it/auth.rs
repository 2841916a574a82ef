//! Authentication (RFC 5880 section 6.7): digests, passwords and sequence number windows.

use nublar_bfd::limits::PACKET_BYTES_MAX;
use nublar_bfd::{
    AuthenticationError, AuthenticationMode, AuthenticationSection, Authenticator, ControlPacket,
    Diagnostic, Md5Section, Sha1Key, SimplePassword, State,
};

fn up_packet() -> ControlPacket {
    ControlPacket {
        diagnostic: Diagnostic::NoDiagnostic,
        state: State::Up,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_multiplier: 3,
        my_discriminator: 0x0102_0304,
        your_discriminator: 0x0a0b_0c0d,
        desired_min_tx_interval_us: 100_000,
        required_min_rx_interval_us: 200_000,
        required_min_echo_rx_interval_us: 0,
        authentication: None,
    }
}

fn keyed_sha1() -> AuthenticationMode {
    AuthenticationMode::KeyedSha1 {
        key_id: 1,
        key: Sha1Key::new(b"nublar-test-key").unwrap(),
    }
}

fn meticulous_sha1() -> AuthenticationMode {
    AuthenticationMode::MeticulousKeyedSha1 {
        key_id: 1,
        key: Sha1Key::new(b"nublar-test-key").unwrap(),
    }
}

fn simple_password() -> AuthenticationMode {
    AuthenticationMode::SimplePassword {
        key_id: 9,
        password: SimplePassword::new(b"opensesame").unwrap(),
    }
}

/// Seals `packet` as a sender whose next sequence number is `sequence_number`.
fn sealed(mode: AuthenticationMode, sequence_number: u32, packet: &ControlPacket) -> Vec<u8> {
    let mut sender = Authenticator::new(mode, sequence_number);
    let mut packet = packet.clone();
    sender.seal(&mut packet).unwrap();
    let mut buffer = [0; PACKET_BYTES_MAX];
    let length = packet.encode(&mut buffer).unwrap();
    buffer[..length].to_vec()
}

fn verify(receiver: &mut Authenticator, wire: &[u8]) -> Result<(), AuthenticationError> {
    let packet = ControlPacket::decode(wire).expect("test packets decode");
    receiver.verify(&packet, wire)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Expected hashes were computed independently with Python's hashlib over the packet with the
/// zero padded key in the hash field, as RFC 5880 section 6.7.4 describes.
#[test]
fn sha1_hashes_match_an_independent_computation() {
    let wire = sealed(keyed_sha1(), 0x1122_3344, &up_packet());
    assert_eq!(&wire[24..32], &[4, 28, 1, 0, 0x11, 0x22, 0x33, 0x44]);
    assert_eq!(hex(&wire[32..]), "1183097bcf608b1f750b2dfb354e8c3b50d8fffb");

    let wire = sealed(meticulous_sha1(), 0x1122_3344, &up_packet());
    assert_eq!(hex(&wire[32..]), "253e4f3d4c038f33ccc4251c79dcc3a82e4835ec");
}

#[test]
fn sealed_packets_verify_for_every_mode() {
    for mode in [simple_password(), keyed_sha1(), meticulous_sha1()] {
        let wire = sealed(mode.clone(), 77, &up_packet());
        let mut receiver = Authenticator::new(mode.clone(), 0);
        assert_eq!(verify(&mut receiver, &wire), Ok(()), "{mode:?}");
    }
}

#[test]
fn any_flipped_byte_breaks_a_sha1_packet() {
    for mode in [keyed_sha1(), meticulous_sha1()] {
        let wire = sealed(mode.clone(), 1000, &up_packet());
        for index in 0..wire.len() {
            for flip in [0x01, 0x80] {
                let mut tampered = wire.clone();
                tampered[index] ^= flip;
                let mut receiver = Authenticator::new(mode.clone(), 0);
                // Either the packet no longer parses, or the authenticator refuses it.
                if let Ok(packet) = ControlPacket::decode(&tampered) {
                    assert!(
                        receiver.verify(&packet, &tampered).is_err(),
                        "byte {index} flipped by {flip:#x} was accepted"
                    );
                }
            }
        }
    }
}

#[test]
fn the_reserved_byte_is_covered_by_the_hash() {
    // Reserved is ignored by the parser but still hashed: changing it is tampering.
    let mut wire = sealed(keyed_sha1(), 5, &up_packet());
    wire[27] = 1;
    let mut receiver = Authenticator::new(keyed_sha1(), 0);
    assert_eq!(
        verify(&mut receiver, &wire),
        Err(AuthenticationError::HashMismatch)
    );
}

#[test]
fn a_wrong_password_is_refused() {
    let wrong = AuthenticationMode::SimplePassword {
        key_id: 9,
        password: SimplePassword::new(b"opensesamf").unwrap(),
    };
    let wire = sealed(wrong, 0, &up_packet());
    let mut receiver = Authenticator::new(simple_password(), 0);
    assert_eq!(
        verify(&mut receiver, &wire),
        Err(AuthenticationError::PasswordMismatch)
    );

    let shorter = AuthenticationMode::SimplePassword {
        key_id: 9,
        password: SimplePassword::new(b"opensesam").unwrap(),
    };
    let wire = sealed(shorter, 0, &up_packet());
    assert_eq!(
        verify(&mut receiver, &wire),
        Err(AuthenticationError::PasswordMismatch)
    );
}

#[test]
fn a_wrong_key_is_refused() {
    let other_key = AuthenticationMode::KeyedSha1 {
        key_id: 1,
        key: Sha1Key::new(b"other").unwrap(),
    };
    let wire = sealed(other_key, 0, &up_packet());
    let mut receiver = Authenticator::new(keyed_sha1(), 0);
    assert_eq!(
        verify(&mut receiver, &wire),
        Err(AuthenticationError::HashMismatch)
    );
}

#[test]
fn key_id_type_and_presence_must_match() {
    let mut receiver = Authenticator::new(keyed_sha1(), 0);
    let other_id = AuthenticationMode::KeyedSha1 {
        key_id: 2,
        key: Sha1Key::new(b"nublar-test-key").unwrap(),
    };
    assert_eq!(
        verify(&mut receiver, &sealed(other_id, 0, &up_packet())),
        Err(AuthenticationError::KeyIdMismatch {
            expected: 1,
            received: 2
        })
    );
    assert_eq!(
        verify(&mut receiver, &sealed(meticulous_sha1(), 0, &up_packet())),
        Err(AuthenticationError::TypeMismatch {
            expected: 4,
            received: 5
        })
    );
    let mut md5 = up_packet();
    md5.authentication = Some(AuthenticationSection::KeyedMd5(Md5Section {
        key_id: 1,
        sequence_number: 0,
        digest: [0; 16],
    }));
    let mut buffer = [0; PACKET_BYTES_MAX];
    let length = md5.encode(&mut buffer).unwrap();
    assert_eq!(
        verify(&mut receiver, &buffer[..length]),
        Err(AuthenticationError::TypeMismatch {
            expected: 4,
            received: 2
        })
    );
    let length = up_packet().encode(&mut buffer).unwrap();
    assert_eq!(
        verify(&mut receiver, &buffer[..length]),
        Err(AuthenticationError::Missing)
    );
}

#[test]
fn bytes_that_are_not_the_packet_are_refused() {
    let wire = sealed(keyed_sha1(), 3, &up_packet());
    let mut packet = ControlPacket::decode(&wire).unwrap();
    packet.state = State::Down;
    let mut receiver = Authenticator::new(keyed_sha1(), 0);
    assert_eq!(
        receiver.verify(&packet, &wire),
        Err(AuthenticationError::WireBytesMismatch)
    );
    assert_eq!(receiver.receive_sequence_number(), None);
}

#[test]
fn meticulous_refuses_a_replay_and_anything_not_strictly_newer() {
    let mut receiver = Authenticator::new(meticulous_sha1(), 0);
    let first = sealed(meticulous_sha1(), 500, &up_packet());
    assert_eq!(verify(&mut receiver, &first), Ok(()));
    assert_eq!(receiver.receive_sequence_number(), Some(500));
    assert_eq!(
        verify(&mut receiver, &first),
        Err(AuthenticationError::SequenceNumberOutOfWindow {
            received: 500,
            last_accepted: 500
        })
    );
    let older = sealed(meticulous_sha1(), 499, &up_packet());
    assert!(matches!(
        verify(&mut receiver, &older),
        Err(AuthenticationError::SequenceNumberOutOfWindow { .. })
    ));
    assert_eq!(
        verify(&mut receiver, &sealed(meticulous_sha1(), 501, &up_packet())),
        Ok(())
    );
}

#[test]
fn keyed_accepts_a_repeat_but_not_an_older_number() {
    let mut receiver = Authenticator::new(keyed_sha1(), 0);
    let current = sealed(keyed_sha1(), 500, &up_packet());
    assert_eq!(verify(&mut receiver, &current), Ok(()));
    assert_eq!(verify(&mut receiver, &current), Ok(()));
    let older = sealed(keyed_sha1(), 499, &up_packet());
    assert_eq!(
        verify(&mut receiver, &older),
        Err(AuthenticationError::SequenceNumberOutOfWindow {
            received: 499,
            last_accepted: 500
        })
    );
}

/// The window is 3 * Detect Mult ahead of the last accepted number, across the 2^32 wrap.
#[test]
fn the_window_ends_three_detect_multipliers_ahead_and_wraps() {
    for mode in [keyed_sha1(), meticulous_sha1()] {
        let start = u32::MAX - 4;
        let window = 3 * 3;
        let mut receiver = Authenticator::new(mode.clone(), 0);
        assert_eq!(
            verify(&mut receiver, &sealed(mode.clone(), start, &up_packet())),
            Ok(())
        );
        let beyond = start.wrapping_add(window + 1);
        assert!(
            verify(&mut receiver, &sealed(mode.clone(), beyond, &up_packet())).is_err(),
            "{mode:?}"
        );
        let edge = start.wrapping_add(window);
        assert_eq!(
            verify(&mut receiver, &sealed(mode.clone(), edge, &up_packet())),
            Ok(())
        );
        assert_eq!(receiver.receive_sequence_number(), Some(4));
    }
}

#[test]
fn a_forged_packet_does_not_move_the_window() {
    let mut receiver = Authenticator::new(meticulous_sha1(), 0);
    assert_eq!(
        verify(&mut receiver, &sealed(meticulous_sha1(), 10, &up_packet())),
        Ok(())
    );
    let mut forged = sealed(meticulous_sha1(), 15, &up_packet());
    forged[40] ^= 1;
    assert_eq!(
        verify(&mut receiver, &forged),
        Err(AuthenticationError::HashMismatch)
    );
    assert_eq!(receiver.receive_sequence_number(), Some(10));
    assert_eq!(
        verify(&mut receiver, &sealed(meticulous_sha1(), 11, &up_packet())),
        Ok(())
    );
}

#[test]
fn forgetting_the_sequence_number_accepts_a_restarted_peer() {
    let mut receiver = Authenticator::new(meticulous_sha1(), 0);
    assert_eq!(
        verify(
            &mut receiver,
            &sealed(meticulous_sha1(), 1_000_000, &up_packet())
        ),
        Ok(())
    );
    let restarted = sealed(meticulous_sha1(), 42, &up_packet());
    assert!(verify(&mut receiver, &restarted).is_err());
    receiver.forget_receive_sequence_number();
    assert_eq!(receiver.receive_sequence_number(), None);
    assert_eq!(verify(&mut receiver, &restarted), Ok(()));
}

#[test]
fn meticulous_advances_on_every_packet_and_keyed_only_on_change() {
    let mut meticulous = Authenticator::new(meticulous_sha1(), u32::MAX);
    let mut keyed = Authenticator::new(keyed_sha1(), 7);
    let mut sent_meticulous = Vec::new();
    let mut sent_keyed = Vec::new();
    for state in [State::Up, State::Up, State::Down, State::Down, State::Up] {
        let mut packet = up_packet();
        packet.state = state;
        let mut copy = packet.clone();
        meticulous.seal(&mut copy).unwrap();
        sent_meticulous.push(meticulous.transmit_sequence_number());
        keyed.seal(&mut packet).unwrap();
        sent_keyed.push(keyed.transmit_sequence_number());
    }
    assert_eq!(sent_meticulous, [u32::MAX, 0, 1, 2, 3]);
    assert_eq!(sent_keyed, [7, 7, 8, 8, 9]);
}

#[test]
fn sha1_keys_are_one_to_twenty_bytes_and_never_printed() {
    assert!(Sha1Key::new(b"").is_none());
    assert!(Sha1Key::new(&[1; 21]).is_none());
    assert!(Sha1Key::new(&[1; 20]).is_some());
    assert_eq!(
        format!("{:?}", Sha1Key::new(b"topsecret").unwrap()),
        "Sha1Key(..)"
    );
}
