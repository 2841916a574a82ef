//! The BFD Control packet (RFC 5880 section 4) and the reception checks that need no session.
//!
//! Decoding is total: any byte string yields either a packet or one [`PacketError`] naming the
//! first rule it broke, so the socket layer can count drops by reason. Encoding refuses to build a
//! packet that [`ControlPacket::decode`] would reject, so what we send always passes our own
//! checks (and, we expect, the peer's).

use std::fmt;

use crate::limits::{
    AUTHENTICATED_PACKET_BYTES_MIN, MANDATORY_SECTION_BYTES, MD5_DIGEST_BYTES, MD5_SECTION_BYTES,
    PROTOCOL_VERSION, SHA1_HASH_BYTES, SHA1_SECTION_BYTES, SIMPLE_PASSWORD_BYTES_MAX,
    SIMPLE_PASSWORD_BYTES_MIN, SIMPLE_PASSWORD_HEADER_BYTES,
};

/// One BFD Control packet, with the fields RFC 5880 section 4.1 lets a sender choose.
///
/// The version (always 1), the Length (derived from the authentication section), the A bit
/// (present exactly when `authentication` is `Some`) and the M bit (always clear) are not stored:
/// storing them would allow values that can never be sent or received.
///
/// The Demand bit is carried so a peer's wish is visible, but this crate does not implement
/// Demand mode itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPacket {
    pub diagnostic: Diagnostic,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub control_plane_independent: bool,
    pub demand: bool,
    pub detect_multiplier: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx_interval_us: u32,
    pub required_min_rx_interval_us: u32,
    pub required_min_echo_rx_interval_us: u32,
    pub authentication: Option<AuthenticationSection>,
}

/// Session state as carried in the Sta field (RFC 5880 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

/// The reason for the sender's most recent state change (RFC 5880 section 4.1).
///
/// Codes the RFC does not name are kept rather than rejected: IANA has assigned more since
/// (RFC 6428 uses 9), and a peer's diagnostic is only ever reported, never acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Diagnostic {
    NoDiagnostic,
    ControlDetectionTimeExpired,
    EchoFunctionFailed,
    NeighborSignaledSessionDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    Unassigned(UnassignedDiagnostic),
}

/// A diagnostic code from 9 to 31. Only [`Diagnostic::from_code`] makes one, so an
/// `Unassigned` value can never alias a named code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnassignedDiagnostic(u8);

/// The optional authentication section (RFC 5880 sections 4.2 to 4.4).
///
/// MD5 sections are decoded so that a peer using them is reported precisely, but this crate
/// neither computes nor checks MD5 digests (RFC 5880 section 6.7 only requires the SHA1 types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthenticationSection {
    SimplePassword {
        key_id: u8,
        password: SimplePassword,
    },
    KeyedMd5(Md5Section),
    MeticulousKeyedMd5(Md5Section),
    KeyedSha1(Sha1Section),
    MeticulousKeyedSha1(Sha1Section),
}

/// A simple password of 1 to 16 bytes; constructing one is the only way to check the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SimplePassword {
    bytes: [u8; SIMPLE_PASSWORD_BYTES_MAX],
    length: u8,
}

/// The body of a Keyed MD5 or Meticulous Keyed MD5 section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Md5Section {
    pub key_id: u8,
    pub sequence_number: u32,
    pub digest: [u8; MD5_DIGEST_BYTES],
}

/// The body of a Keyed SHA1 or Meticulous Keyed SHA1 section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha1Section {
    pub key_id: u8,
    pub sequence_number: u32,
    pub hash: [u8; SHA1_HASH_BYTES],
}

/// Why [`ControlPacket::decode`] dropped a datagram; one variant per RFC 5880 section 6.8.6 rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than the mandatory section.
    PayloadTooShort {
        payload_bytes: usize,
    },
    UnsupportedVersion {
        version: u8,
    },
    /// Length below 24, or below 26 with the A bit set.
    LengthTooShort {
        length: u8,
    },
    LengthExceedsPayload {
        length: u8,
        payload_bytes: usize,
    },
    ZeroDetectMultiplier,
    MultipointSet,
    /// RFC 5880 section 6.5 forbids a packet with both Poll and Final. Section 6.8.6 does not
    /// list it as a discard rule, but no meaning can be given to such a packet, and dropping it
    /// keeps decode and encode exact inverses.
    PollAndFinal,
    ZeroMyDiscriminator,
    /// Your Discriminator may only be zero while the sender is Down or AdminDown.
    ZeroYourDiscriminator {
        state: State,
    },
    UnknownAuthenticationType {
        auth_type: u8,
    },
    /// Auth Len is impossible for the Auth Type.
    AuthenticationLengthInvalid {
        auth_type: u8,
        auth_len: u8,
    },
    /// Length is not the mandatory section plus Auth Len.
    AuthenticationLengthMismatch {
        length: u8,
        auth_len: u8,
    },
}

/// Why [`ControlPacket::encode`] refused; every variant except `BufferTooSmall` is a packet the
/// peer would have to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    BufferTooSmall {
        needed_bytes: usize,
        available_bytes: usize,
    },
    /// RFC 5880 section 6.5: a packet MUST NOT carry both Poll and Final.
    PollAndFinal,
    ZeroDetectMultiplier,
    ZeroMyDiscriminator,
    ZeroYourDiscriminator {
        state: State,
    },
}

impl ControlPacket {
    /// The Length field: the number of bytes [`ControlPacket::encode`] writes.
    pub fn length_bytes(&self) -> usize {
        MANDATORY_SECTION_BYTES
            + self
                .authentication
                .as_ref()
                .map_or(0, |auth| auth.length_bytes())
    }

    /// Writes the packet at the start of `buffer` and returns how many bytes it used.
    pub fn encode(&self, buffer: &mut [u8]) -> Result<usize, EncodeError> {
        if self.poll && self.final_ {
            return Err(EncodeError::PollAndFinal);
        }
        if self.detect_multiplier == 0 {
            return Err(EncodeError::ZeroDetectMultiplier);
        }
        if self.my_discriminator == 0 {
            return Err(EncodeError::ZeroMyDiscriminator);
        }
        if self.your_discriminator == 0 && !self.state.allows_zero_your_discriminator() {
            return Err(EncodeError::ZeroYourDiscriminator { state: self.state });
        }
        let length = self.length_bytes();
        if buffer.len() < length {
            return Err(EncodeError::BufferTooSmall {
                needed_bytes: length,
                available_bytes: buffer.len(),
            });
        }
        let output = &mut buffer[..length];
        output[0] = (PROTOCOL_VERSION << 5) | self.diagnostic.code();
        output[1] = (self.state.code() << 6)
            | (u8::from(self.poll) << 5)
            | (u8::from(self.final_) << 4)
            | (u8::from(self.control_plane_independent) << 3)
            | (u8::from(self.authentication.is_some()) << 2)
            | (u8::from(self.demand) << 1);
        output[2] = self.detect_multiplier;
        output[3] = u8::try_from(length).expect("packet length is bounded by PACKET_BYTES_MAX");
        output[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        output[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        output[12..16].copy_from_slice(&self.desired_min_tx_interval_us.to_be_bytes());
        output[16..20].copy_from_slice(&self.required_min_rx_interval_us.to_be_bytes());
        output[20..24].copy_from_slice(&self.required_min_echo_rx_interval_us.to_be_bytes());
        if let Some(authentication) = &self.authentication {
            authentication.encode(&mut output[MANDATORY_SECTION_BYTES..]);
        }
        Ok(length)
    }

    /// Parses one UDP payload. Bytes after the Length are ignored; RFC 5880 only bounds the
    /// Length by the payload, not the other way round.
    pub fn decode(payload: &[u8]) -> Result<ControlPacket, PacketError> {
        if payload.len() < MANDATORY_SECTION_BYTES {
            return Err(PacketError::PayloadTooShort {
                payload_bytes: payload.len(),
            });
        }
        let version = payload[0] >> 5;
        if version != PROTOCOL_VERSION {
            return Err(PacketError::UnsupportedVersion { version });
        }
        let flags = payload[1];
        let authentication_present = flags & 0b0000_0100 != 0;
        let length = payload[3];
        let length_min = if authentication_present {
            AUTHENTICATED_PACKET_BYTES_MIN
        } else {
            MANDATORY_SECTION_BYTES
        };
        if usize::from(length) < length_min {
            return Err(PacketError::LengthTooShort { length });
        }
        if usize::from(length) > payload.len() {
            return Err(PacketError::LengthExceedsPayload {
                length,
                payload_bytes: payload.len(),
            });
        }
        let detect_multiplier = payload[2];
        if detect_multiplier == 0 {
            return Err(PacketError::ZeroDetectMultiplier);
        }
        if flags & 0b0000_0001 != 0 {
            return Err(PacketError::MultipointSet);
        }
        if flags & 0b0011_0000 == 0b0011_0000 {
            return Err(PacketError::PollAndFinal);
        }
        let my_discriminator = read_u32(payload, 4);
        if my_discriminator == 0 {
            return Err(PacketError::ZeroMyDiscriminator);
        }
        let state = State::from_code(flags >> 6);
        let your_discriminator = read_u32(payload, 8);
        if your_discriminator == 0 && !state.allows_zero_your_discriminator() {
            return Err(PacketError::ZeroYourDiscriminator { state });
        }
        let authentication = if authentication_present {
            Some(AuthenticationSection::decode(
                &payload[MANDATORY_SECTION_BYTES..usize::from(length)],
                length,
            )?)
        } else {
            None
        };
        Ok(ControlPacket {
            diagnostic: Diagnostic::from_code(payload[0] & 0b0001_1111),
            state,
            poll: flags & 0b0010_0000 != 0,
            final_: flags & 0b0001_0000 != 0,
            control_plane_independent: flags & 0b0000_1000 != 0,
            demand: flags & 0b0000_0010 != 0,
            detect_multiplier,
            my_discriminator,
            your_discriminator,
            desired_min_tx_interval_us: read_u32(payload, 12),
            required_min_rx_interval_us: read_u32(payload, 16),
            required_min_echo_rx_interval_us: read_u32(payload, 20),
            authentication,
        })
    }
}

impl State {
    /// The two-bit Sta value.
    pub fn code(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    /// Every two-bit value is a state, so only the low two bits are looked at.
    pub fn from_code(code: u8) -> State {
        match code & 0b11 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// Before the peer's discriminator is learned a sender can only be Down or AdminDown
    /// (RFC 5880 section 6.8.6).
    pub fn allows_zero_your_discriminator(self) -> bool {
        matches!(self, State::AdminDown | State::Down)
    }
}

impl Diagnostic {
    /// The five-bit Diag value.
    pub fn code(self) -> u8 {
        match self {
            Diagnostic::NoDiagnostic => 0,
            Diagnostic::ControlDetectionTimeExpired => 1,
            Diagnostic::EchoFunctionFailed => 2,
            Diagnostic::NeighborSignaledSessionDown => 3,
            Diagnostic::ForwardingPlaneReset => 4,
            Diagnostic::PathDown => 5,
            Diagnostic::ConcatenatedPathDown => 6,
            Diagnostic::AdministrativelyDown => 7,
            Diagnostic::ReverseConcatenatedPathDown => 8,
            Diagnostic::Unassigned(UnassignedDiagnostic(code)) => code,
        }
    }

    /// Only the low five bits are looked at, as the field is five bits wide.
    pub fn from_code(code: u8) -> Diagnostic {
        match code & 0b1_1111 {
            0 => Diagnostic::NoDiagnostic,
            1 => Diagnostic::ControlDetectionTimeExpired,
            2 => Diagnostic::EchoFunctionFailed,
            3 => Diagnostic::NeighborSignaledSessionDown,
            4 => Diagnostic::ForwardingPlaneReset,
            5 => Diagnostic::PathDown,
            6 => Diagnostic::ConcatenatedPathDown,
            7 => Diagnostic::AdministrativelyDown,
            8 => Diagnostic::ReverseConcatenatedPathDown,
            other => Diagnostic::Unassigned(UnassignedDiagnostic(other)),
        }
    }
}

impl AuthenticationSection {
    /// The Auth Type value (RFC 5880 section 4.1).
    pub fn auth_type(&self) -> u8 {
        match self {
            AuthenticationSection::SimplePassword { .. } => AUTH_TYPE_SIMPLE_PASSWORD,
            AuthenticationSection::KeyedMd5(_) => AUTH_TYPE_KEYED_MD5,
            AuthenticationSection::MeticulousKeyedMd5(_) => AUTH_TYPE_METICULOUS_KEYED_MD5,
            AuthenticationSection::KeyedSha1(_) => AUTH_TYPE_KEYED_SHA1,
            AuthenticationSection::MeticulousKeyedSha1(_) => AUTH_TYPE_METICULOUS_KEYED_SHA1,
        }
    }

    /// The Auth Len value.
    pub fn length_bytes(&self) -> usize {
        match self {
            AuthenticationSection::SimplePassword { password, .. } => {
                SIMPLE_PASSWORD_HEADER_BYTES + password.as_bytes().len()
            }
            AuthenticationSection::KeyedMd5(_) | AuthenticationSection::MeticulousKeyedMd5(_) => {
                MD5_SECTION_BYTES
            }
            AuthenticationSection::KeyedSha1(_) | AuthenticationSection::MeticulousKeyedSha1(_) => {
                SHA1_SECTION_BYTES
            }
        }
    }
}

impl SimplePassword {
    /// `None` unless the password is 1 to 16 bytes long (RFC 5880 section 4.2).
    pub fn new(password: &[u8]) -> Option<SimplePassword> {
        if !(SIMPLE_PASSWORD_BYTES_MIN..=SIMPLE_PASSWORD_BYTES_MAX).contains(&password.len()) {
            return None;
        }
        let mut bytes = [0; SIMPLE_PASSWORD_BYTES_MAX];
        bytes[..password.len()].copy_from_slice(password);
        let length = u8::try_from(password.len()).expect("checked against the maximum above");
        Some(SimplePassword { bytes, length })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }
}

/// Passwords are secrets: a debug print shows only the length.
impl fmt::Debug for SimplePassword {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "SimplePassword({} bytes)", self.length)
    }
}

impl PacketError {
    /// A stable snake_case name, for drop counters labelled by reason.
    pub fn name(&self) -> &'static str {
        match self {
            PacketError::PayloadTooShort { .. } => "payload_too_short",
            PacketError::UnsupportedVersion { .. } => "unsupported_version",
            PacketError::LengthTooShort { .. } => "length_too_short",
            PacketError::LengthExceedsPayload { .. } => "length_exceeds_payload",
            PacketError::ZeroDetectMultiplier => "zero_detect_multiplier",
            PacketError::MultipointSet => "multipoint_set",
            PacketError::PollAndFinal => "poll_and_final",
            PacketError::ZeroMyDiscriminator => "zero_my_discriminator",
            PacketError::ZeroYourDiscriminator { .. } => "zero_your_discriminator",
            PacketError::UnknownAuthenticationType { .. } => "unknown_authentication_type",
            PacketError::AuthenticationLengthInvalid { .. } => "authentication_length_invalid",
            PacketError::AuthenticationLengthMismatch { .. } => "authentication_length_mismatch",
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::PayloadTooShort { payload_bytes } => {
                write!(
                    formatter,
                    "BFD payload of {payload_bytes} bytes is shorter than 24"
                )
            }
            PacketError::UnsupportedVersion { version } => {
                write!(formatter, "BFD version {version} is not 1")
            }
            PacketError::LengthTooShort { length } => {
                write!(formatter, "BFD Length {length} is below the minimum")
            }
            PacketError::LengthExceedsPayload {
                length,
                payload_bytes,
            } => write!(
                formatter,
                "BFD Length {length} exceeds the {payload_bytes} byte payload"
            ),
            PacketError::ZeroDetectMultiplier => write!(formatter, "BFD Detect Mult is zero"),
            PacketError::MultipointSet => write!(formatter, "BFD Multipoint bit is set"),
            PacketError::PollAndFinal => write!(formatter, "BFD packet with both Poll and Final"),
            PacketError::ZeroMyDiscriminator => write!(formatter, "BFD My Discriminator is zero"),
            PacketError::ZeroYourDiscriminator { state } => write!(
                formatter,
                "BFD Your Discriminator is zero in state {state:?}"
            ),
            PacketError::UnknownAuthenticationType { auth_type } => {
                write!(formatter, "BFD Auth Type {auth_type} is unknown")
            }
            PacketError::AuthenticationLengthInvalid {
                auth_type,
                auth_len,
            } => write!(
                formatter,
                "BFD Auth Len {auth_len} is invalid for Auth Type {auth_type}"
            ),
            PacketError::AuthenticationLengthMismatch { length, auth_len } => write!(
                formatter,
                "BFD Length {length} does not match Auth Len {auth_len}"
            ),
        }
    }
}

impl std::error::Error for PacketError {}

impl fmt::Display for EncodeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall {
                needed_bytes,
                available_bytes,
            } => write!(
                formatter,
                "BFD packet needs {needed_bytes} bytes, buffer has {available_bytes}"
            ),
            EncodeError::PollAndFinal => write!(formatter, "BFD packet with both Poll and Final"),
            EncodeError::ZeroDetectMultiplier => write!(formatter, "BFD Detect Mult is zero"),
            EncodeError::ZeroMyDiscriminator => write!(formatter, "BFD My Discriminator is zero"),
            EncodeError::ZeroYourDiscriminator { state } => write!(
                formatter,
                "BFD Your Discriminator is zero in state {state:?}"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

pub(crate) const AUTH_TYPE_SIMPLE_PASSWORD: u8 = 1;
pub(crate) const AUTH_TYPE_KEYED_MD5: u8 = 2;
pub(crate) const AUTH_TYPE_METICULOUS_KEYED_MD5: u8 = 3;
pub(crate) const AUTH_TYPE_KEYED_SHA1: u8 = 4;
pub(crate) const AUTH_TYPE_METICULOUS_KEYED_SHA1: u8 = 5;

/// Where the SHA1 hash sits inside an encoded packet; `auth` overwrites it when signing.
pub(crate) const SHA1_HASH_OFFSET: usize = MANDATORY_SECTION_BYTES + 8;

impl AuthenticationSection {
    /// `section` is exactly the bytes from the Auth Type to the end of Length.
    fn decode(section: &[u8], length: u8) -> Result<AuthenticationSection, PacketError> {
        let auth_type = section[0];
        let auth_len = section[1];
        let auth_len_valid = match auth_type {
            AUTH_TYPE_SIMPLE_PASSWORD => (SIMPLE_PASSWORD_HEADER_BYTES + SIMPLE_PASSWORD_BYTES_MIN
                ..=SIMPLE_PASSWORD_HEADER_BYTES + SIMPLE_PASSWORD_BYTES_MAX)
                .contains(&usize::from(auth_len)),
            AUTH_TYPE_KEYED_MD5 | AUTH_TYPE_METICULOUS_KEYED_MD5 => {
                usize::from(auth_len) == MD5_SECTION_BYTES
            }
            AUTH_TYPE_KEYED_SHA1 | AUTH_TYPE_METICULOUS_KEYED_SHA1 => {
                usize::from(auth_len) == SHA1_SECTION_BYTES
            }
            _ => return Err(PacketError::UnknownAuthenticationType { auth_type }),
        };
        if !auth_len_valid {
            return Err(PacketError::AuthenticationLengthInvalid {
                auth_type,
                auth_len,
            });
        }
        // A trailing gap or an overlap between the section and Length would leave bytes that
        // the digest covers but nobody parsed, so the two must agree exactly.
        if usize::from(auth_len) != section.len() {
            return Err(PacketError::AuthenticationLengthMismatch { length, auth_len });
        }
        let key_id = section[2];
        let section = match auth_type {
            AUTH_TYPE_SIMPLE_PASSWORD => AuthenticationSection::SimplePassword {
                key_id,
                password: SimplePassword::new(&section[SIMPLE_PASSWORD_HEADER_BYTES..])
                    .expect("Auth Len was checked against the password bounds"),
            },
            AUTH_TYPE_KEYED_MD5 | AUTH_TYPE_METICULOUS_KEYED_MD5 => {
                let mut digest = [0; MD5_DIGEST_BYTES];
                digest.copy_from_slice(&section[8..MD5_SECTION_BYTES]);
                let body = Md5Section {
                    key_id,
                    sequence_number: read_u32(section, 4),
                    digest,
                };
                if auth_type == AUTH_TYPE_KEYED_MD5 {
                    AuthenticationSection::KeyedMd5(body)
                } else {
                    AuthenticationSection::MeticulousKeyedMd5(body)
                }
            }
            _ => {
                let mut hash = [0; SHA1_HASH_BYTES];
                hash.copy_from_slice(&section[8..SHA1_SECTION_BYTES]);
                let body = Sha1Section {
                    key_id,
                    sequence_number: read_u32(section, 4),
                    hash,
                };
                if auth_type == AUTH_TYPE_KEYED_SHA1 {
                    AuthenticationSection::KeyedSha1(body)
                } else {
                    AuthenticationSection::MeticulousKeyedSha1(body)
                }
            }
        };
        Ok(section)
    }

    /// `output` is exactly `self.length_bytes()` long.
    fn encode(&self, output: &mut [u8]) {
        assert_eq!(output.len(), self.length_bytes());
        output[0] = self.auth_type();
        output[1] = u8::try_from(self.length_bytes()).expect("sections are at most 28 bytes");
        match self {
            AuthenticationSection::SimplePassword { key_id, password } => {
                output[2] = *key_id;
                output[SIMPLE_PASSWORD_HEADER_BYTES..].copy_from_slice(password.as_bytes());
            }
            AuthenticationSection::KeyedMd5(body)
            | AuthenticationSection::MeticulousKeyedMd5(body) => {
                output[2] = body.key_id;
                output[3] = 0;
                output[4..8].copy_from_slice(&body.sequence_number.to_be_bytes());
                output[8..].copy_from_slice(&body.digest);
            }
            AuthenticationSection::KeyedSha1(body)
            | AuthenticationSection::MeticulousKeyedSha1(body) => {
                output[2] = body.key_id;
                output[3] = 0;
                output[4..8].copy_from_slice(&body.sequence_number.to_be_bytes());
                output[8..].copy_from_slice(&body.hash);
            }
        }
    }
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_be_bytes(word)
}
