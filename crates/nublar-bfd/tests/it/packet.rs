//! Control packet encoding and the session-free reception checks of RFC 5880 section 6.8.6.

use nublar_bfd::limits::PACKET_BYTES_MAX;
use nublar_bfd::{
    AuthenticationSection, ControlPacket, Diagnostic, EncodeError, Md5Section, PacketError,
    Sha1Section, SimplePassword, State,
};
use proptest::prelude::*;

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
        required_min_echo_rx_interval_us: 50_000,
        authentication: None,
    }
}

fn encoded(packet: &ControlPacket) -> Vec<u8> {
    let mut buffer = [0; PACKET_BYTES_MAX];
    let length = packet.encode(&mut buffer).expect("valid packet");
    buffer[..length].to_vec()
}

#[test]
fn encodes_the_mandatory_section_byte_for_byte() {
    let mut packet = up_packet();
    packet.diagnostic = Diagnostic::NeighborSignaledSessionDown;
    packet.poll = true;
    packet.control_plane_independent = true;
    packet.demand = true;
    let expected: [u8; 24] = [
        0x23, // version 1, diagnostic 3
        0xea, // Up (3), P, C, D
        3, 24, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x01, 0x86, 0xa0, 0x00, 0x03,
        0x0d, 0x40, 0x00, 0x00, 0xc3, 0x50,
    ];
    assert_eq!(encoded(&packet), expected);
    assert_eq!(ControlPacket::decode(&expected), Ok(packet));
}

#[test]
fn encodes_authentication_sections_with_their_lengths() {
    let mut packet = up_packet();
    packet.authentication = Some(AuthenticationSection::SimplePassword {
        key_id: 7,
        password: SimplePassword::new(b"secret").unwrap(),
    });
    let bytes = encoded(&packet);
    assert_eq!(bytes.len(), 24 + 3 + 6);
    assert_eq!(bytes[1] & 0b100, 0b100, "A bit");
    assert_eq!(bytes[3], 33, "Length");
    assert_eq!(&bytes[24..27], &[1, 9, 7]);
    assert_eq!(&bytes[27..], b"secret");

    packet.authentication = Some(AuthenticationSection::MeticulousKeyedSha1(Sha1Section {
        key_id: 2,
        sequence_number: 0xdead_beef,
        hash: [0x55; 20],
    }));
    let bytes = encoded(&packet);
    assert_eq!(bytes.len(), 52);
    assert_eq!(&bytes[24..32], &[5, 28, 2, 0, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(&bytes[32..], &[0x55; 20]);
    assert_eq!(ControlPacket::decode(&bytes), Ok(packet));
}

#[test]
fn keeps_every_diagnostic_code() {
    let named = [
        (0, Diagnostic::NoDiagnostic),
        (1, Diagnostic::ControlDetectionTimeExpired),
        (2, Diagnostic::EchoFunctionFailed),
        (3, Diagnostic::NeighborSignaledSessionDown),
        (4, Diagnostic::ForwardingPlaneReset),
        (5, Diagnostic::PathDown),
        (6, Diagnostic::ConcatenatedPathDown),
        (7, Diagnostic::AdministrativelyDown),
        (8, Diagnostic::ReverseConcatenatedPathDown),
    ];
    for (code, diagnostic) in named {
        assert_eq!(Diagnostic::from_code(code), diagnostic);
        assert_eq!(diagnostic.code(), code);
    }
    for code in 9..32 {
        let diagnostic = Diagnostic::from_code(code);
        assert!(
            matches!(diagnostic, Diagnostic::Unassigned(_)),
            "code {code}"
        );
        assert_eq!(diagnostic.code(), code);
        let mut packet = up_packet();
        packet.diagnostic = diagnostic;
        assert_eq!(
            ControlPacket::decode(&encoded(&packet)).unwrap().diagnostic,
            diagnostic
        );
    }
}

/// One row per discard rule: a mutation of a valid packet and the reason it must be dropped for.
#[test]
fn drops_each_malformed_packet_for_its_own_reason() {
    type Mutation = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Mutation, PacketError)> = vec![
        (
            "payload shorter than 24",
            |bytes| bytes.truncate(23),
            PacketError::PayloadTooShort { payload_bytes: 23 },
        ),
        (
            "version 0",
            |bytes| bytes[0] &= 0x1f,
            PacketError::UnsupportedVersion { version: 0 },
        ),
        (
            "version 2",
            |bytes| bytes[0] = (2 << 5) | (bytes[0] & 0x1f),
            PacketError::UnsupportedVersion { version: 2 },
        ),
        (
            "Length 23",
            |bytes| bytes[3] = 23,
            PacketError::LengthTooShort { length: 23 },
        ),
        (
            "A bit with Length 25",
            |bytes| {
                bytes[1] |= 0b100;
                bytes[3] = 25;
            },
            PacketError::LengthTooShort { length: 25 },
        ),
        (
            "Length beyond payload",
            |bytes| bytes[3] = 25,
            PacketError::LengthExceedsPayload {
                length: 25,
                payload_bytes: 24,
            },
        ),
        (
            "Detect Mult 0",
            |bytes| bytes[2] = 0,
            PacketError::ZeroDetectMultiplier,
        ),
        ("M bit", |bytes| bytes[1] |= 1, PacketError::MultipointSet),
        (
            "Poll and Final",
            |bytes| bytes[1] |= 0b0011_0000,
            PacketError::PollAndFinal,
        ),
        (
            "My Discriminator 0",
            |bytes| bytes[4..8].fill(0),
            PacketError::ZeroMyDiscriminator,
        ),
        (
            "Your Discriminator 0 while Up",
            |bytes| bytes[8..12].fill(0),
            PacketError::ZeroYourDiscriminator { state: State::Up },
        ),
        (
            "Your Discriminator 0 while Init",
            |bytes| {
                bytes[1] = (2 << 6) | (bytes[1] & 0x3f);
                bytes[8..12].fill(0);
            },
            PacketError::ZeroYourDiscriminator { state: State::Init },
        ),
        (
            "Auth Type 0",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[0, 3, 1]);
                bytes[3] = 27;
            },
            PacketError::UnknownAuthenticationType { auth_type: 0 },
        ),
        (
            "Auth Type 6",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[6, 3, 1]);
                bytes[3] = 27;
            },
            PacketError::UnknownAuthenticationType { auth_type: 6 },
        ),
        (
            "simple password of length 0",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[1, 3, 1]);
                bytes[3] = 27;
            },
            PacketError::AuthenticationLengthInvalid {
                auth_type: 1,
                auth_len: 3,
            },
        ),
        (
            "simple password of length 17",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[1, 20, 1]);
                bytes.extend_from_slice(&[b'x'; 17]);
                bytes[3] = 44;
            },
            PacketError::AuthenticationLengthInvalid {
                auth_type: 1,
                auth_len: 20,
            },
        ),
        (
            "SHA1 Auth Len 24",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[4, 24, 1, 0]);
                bytes.extend_from_slice(&[0; 20]);
                bytes[3] = 48;
            },
            PacketError::AuthenticationLengthInvalid {
                auth_type: 4,
                auth_len: 24,
            },
        ),
        (
            "MD5 Auth Len 28",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[2, 28, 1, 0]);
                bytes.extend_from_slice(&[0; 24]);
                bytes[3] = 52;
            },
            PacketError::AuthenticationLengthInvalid {
                auth_type: 2,
                auth_len: 28,
            },
        ),
        (
            "Auth Len shorter than Length says",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[1, 5, 1, b'a', b'b', b'c']);
                bytes[3] = 30;
            },
            PacketError::AuthenticationLengthMismatch {
                length: 30,
                auth_len: 5,
            },
        ),
        (
            "Auth Len longer than Length says",
            |bytes| {
                bytes[1] |= 0b100;
                bytes.extend_from_slice(&[1, 6, 1, b'a', b'b', b'c']);
                bytes[3] = 29;
            },
            PacketError::AuthenticationLengthMismatch {
                length: 29,
                auth_len: 6,
            },
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut bytes = encoded(&up_packet());
        mutate(&mut bytes);
        assert_eq!(ControlPacket::decode(&bytes), Err(expected), "{name}");
        assert!(!expected.name().is_empty() && !expected.to_string().is_empty());
    }
}

#[test]
fn accepts_zero_your_discriminator_while_down_or_admin_down() {
    for state in [State::Down, State::AdminDown] {
        let mut packet = up_packet();
        packet.state = state;
        packet.your_discriminator = 0;
        assert_eq!(ControlPacket::decode(&encoded(&packet)), Ok(packet));
    }
}

#[test]
fn ignores_bytes_after_length() {
    let packet = up_packet();
    let mut bytes = encoded(&packet);
    bytes.extend_from_slice(&[0xff; 10]);
    assert_eq!(ControlPacket::decode(&bytes), Ok(packet));
}

#[test]
fn decodes_md5_sections_without_judging_them() {
    let mut packet = up_packet();
    packet.authentication = Some(AuthenticationSection::KeyedMd5(Md5Section {
        key_id: 1,
        sequence_number: 9,
        digest: [3; 16],
    }));
    let bytes = encoded(&packet);
    assert_eq!(bytes.len(), 48);
    assert_eq!(ControlPacket::decode(&bytes), Ok(packet));
}

#[test]
fn ignores_the_reserved_byte_of_keyed_sections() {
    let mut packet = up_packet();
    packet.authentication = Some(AuthenticationSection::KeyedSha1(Sha1Section {
        key_id: 1,
        sequence_number: 9,
        hash: [3; 20],
    }));
    let mut bytes = encoded(&packet);
    bytes[27] = 0xff;
    assert_eq!(ControlPacket::decode(&bytes), Ok(packet));
}

#[test]
fn refuses_to_encode_what_a_peer_must_drop() {
    let mut buffer = [0; PACKET_BYTES_MAX];
    let mut packet = up_packet();
    packet.poll = true;
    packet.final_ = true;
    assert_eq!(packet.encode(&mut buffer), Err(EncodeError::PollAndFinal));

    let mut packet = up_packet();
    packet.detect_multiplier = 0;
    assert_eq!(
        packet.encode(&mut buffer),
        Err(EncodeError::ZeroDetectMultiplier)
    );

    let mut packet = up_packet();
    packet.my_discriminator = 0;
    assert_eq!(
        packet.encode(&mut buffer),
        Err(EncodeError::ZeroMyDiscriminator)
    );

    let mut packet = up_packet();
    packet.your_discriminator = 0;
    assert_eq!(
        packet.encode(&mut buffer),
        Err(EncodeError::ZeroYourDiscriminator { state: State::Up })
    );

    assert_eq!(
        up_packet().encode(&mut buffer[..23]),
        Err(EncodeError::BufferTooSmall {
            needed_bytes: 24,
            available_bytes: 23
        })
    );
}

#[test]
fn simple_passwords_are_one_to_sixteen_bytes() {
    assert!(SimplePassword::new(b"").is_none());
    assert!(SimplePassword::new(&[b'p'; 17]).is_none());
    assert_eq!(SimplePassword::new(b"p").unwrap().as_bytes(), b"p");
    assert_eq!(
        SimplePassword::new(&[b'p'; 16]).unwrap().as_bytes(),
        &[b'p'; 16]
    );
    assert_eq!(
        format!("{:?}", SimplePassword::new(b"hunter2").unwrap()),
        "SimplePassword(7 bytes)"
    );
}

fn arbitrary_state() -> impl Strategy<Value = State> {
    (0u8..4).prop_map(State::from_code)
}

fn arbitrary_authentication() -> impl Strategy<Value = Option<AuthenticationSection>> {
    let password =
        (any::<u8>(), prop::collection::vec(any::<u8>(), 1..=16)).prop_map(|(key_id, password)| {
            AuthenticationSection::SimplePassword {
                key_id,
                password: SimplePassword::new(&password).unwrap(),
            }
        });
    let md5 = (any::<u8>(), any::<u32>(), any::<[u8; 16]>(), any::<bool>()).prop_map(
        |(key_id, sequence_number, digest, meticulous)| {
            let body = Md5Section {
                key_id,
                sequence_number,
                digest,
            };
            if meticulous {
                AuthenticationSection::MeticulousKeyedMd5(body)
            } else {
                AuthenticationSection::KeyedMd5(body)
            }
        },
    );
    let sha1 = (any::<u8>(), any::<u32>(), any::<[u8; 20]>(), any::<bool>()).prop_map(
        |(key_id, sequence_number, hash, meticulous)| {
            let body = Sha1Section {
                key_id,
                sequence_number,
                hash,
            };
            if meticulous {
                AuthenticationSection::MeticulousKeyedSha1(body)
            } else {
                AuthenticationSection::KeyedSha1(body)
            }
        },
    );
    prop::option::of(prop_oneof![password, md5, sha1])
}

/// Any packet that RFC 5880 lets a sender emit.
pub fn arbitrary_valid_packet() -> impl Strategy<Value = ControlPacket> {
    (
        (
            0u8..32,
            arbitrary_state(),
            0u8..3,
            any::<[bool; 2]>(),
            1u8..=255,
        ),
        (1u32.., any::<u32>(), any::<[u32; 3]>()),
        arbitrary_authentication(),
    )
        .prop_map(
            |(
                (diagnostic, state, poll_final, [cpi, demand], detect_multiplier),
                (my_discriminator, your_discriminator, [desired, required, echo]),
                authentication,
            )| {
                let your_discriminator =
                    if state.allows_zero_your_discriminator() || your_discriminator != 0 {
                        your_discriminator
                    } else {
                        1
                    };
                ControlPacket {
                    diagnostic: Diagnostic::from_code(diagnostic),
                    state,
                    poll: poll_final == 1,
                    final_: poll_final == 2,
                    control_plane_independent: cpi,
                    demand,
                    detect_multiplier,
                    my_discriminator,
                    your_discriminator,
                    desired_min_tx_interval_us: desired,
                    required_min_rx_interval_us: required,
                    required_min_echo_rx_interval_us: echo,
                    authentication,
                }
            },
        )
}

proptest! {
    #[test]
    fn decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = ControlPacket::decode(&bytes);
    }

    /// Mostly-valid headers reach the deeper checks far more often than random bytes do.
    #[test]
    fn decoding_near_valid_bytes_never_panics(
        packet in arbitrary_valid_packet(),
        flips in prop::collection::vec((0usize..52, any::<u8>()), 1..4),
        truncate_to in 0usize..60,
    ) {
        let mut bytes = encoded(&packet);
        for (index, value) in flips {
            if let Some(byte) = bytes.get_mut(index) {
                *byte ^= value;
            }
        }
        bytes.truncate(truncate_to);
        let _ = ControlPacket::decode(&bytes);
    }

    #[test]
    fn valid_packets_round_trip(packet in arbitrary_valid_packet()) {
        let bytes = encoded(&packet);
        prop_assert_eq!(bytes.len(), packet.length_bytes());
        prop_assert_eq!(usize::from(bytes[3]), bytes.len());
        prop_assert_eq!(ControlPacket::decode(&bytes), Ok(packet));
    }

    #[test]
    fn whatever_decodes_encodes_back_to_the_same_bytes(
        packet in arbitrary_valid_packet(),
        index in 0usize..52,
        value in any::<u8>(),
    ) {
        let mut bytes = encoded(&packet);
        if let Some(byte) = bytes.get_mut(index) {
            *byte = value;
        }
        if let Ok(decoded) = ControlPacket::decode(&bytes) {
            let again = encoded(&decoded);
            let again_decoded = ControlPacket::decode(&again);
            prop_assert_eq!(again_decoded, Ok(decoded));
        }
    }
}
