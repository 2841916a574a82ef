//! BFD authentication (RFC 5880 section 6.7): Simple Password, Keyed SHA1 and Meticulous Keyed
//! SHA1, with the sequence number state of section 6.8.1.
//!
//! An [`Authenticator`] belongs to one session: it owns the transmit sequence number
//! (bfd.XmitAuthSeq) and the receive window (bfd.RcvAuthSeq, bfd.AuthSeqKnown). Only one key is
//! configured at a time; RFC 5880 allows several keys in flight for rollover, which a later step
//! can add by holding more than one [`AuthenticationMode`].
//!
//! Keyed MD5 is deliberately absent: RFC 5880 section 6.7 requires only the SHA1 types, and MD5
//! sections are still decoded by [`crate::packet`] so a peer using them is reported as
//! [`AuthenticationError::TypeMismatch`].

use std::fmt;

use sha1::{Digest, Sha1};

use crate::limits::{
    AUTH_SEQUENCE_WINDOW_DETECT_MULTIPLIERS, PACKET_BYTES_MAX, SHA1_HASH_BYTES, SHA1_KEY_BYTES_MAX,
    SHA1_KEY_BYTES_MIN,
};
use crate::packet::{
    AUTH_TYPE_KEYED_SHA1, AUTH_TYPE_METICULOUS_KEYED_SHA1, AUTH_TYPE_SIMPLE_PASSWORD,
    AuthenticationSection, ControlPacket, EncodeError, SHA1_HASH_OFFSET, Sha1Section,
    SimplePassword,
};

/// Which authentication a session uses, with its one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthenticationMode {
    SimplePassword {
        key_id: u8,
        password: SimplePassword,
    },
    KeyedSha1 {
        key_id: u8,
        key: Sha1Key,
    },
    MeticulousKeyedSha1 {
        key_id: u8,
        key: Sha1Key,
    },
}

/// A SHA1 key of 1 to 20 bytes, stored zero padded to 20 bytes as RFC 5880 section 4.4 hashes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sha1Key {
    padded: [u8; SHA1_HASH_BYTES],
}

/// Seals outgoing packets and checks incoming ones for one session.
#[derive(Clone, Debug)]
pub struct Authenticator {
    mode: AuthenticationMode,
    /// bfd.XmitAuthSeq.
    transmit_sequence_number: u32,
    /// bfd.RcvAuthSeq, meaningful only while `receive_sequence_known` (bfd.AuthSeqKnown).
    receive_sequence_number: u32,
    receive_sequence_known: bool,
    /// The last sealed packet without its authentication section. Keyed SHA1 reuses a sequence
    /// number while the contents stay the same, so a replay can only repeat what is true anyway.
    last_sealed_contents: Option<ControlPacket>,
}

/// Why [`Authenticator::verify`] rejected a packet; one variant per RFC 5880 section 6.7 rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthenticationError {
    /// The A bit is clear but this session requires authentication.
    Missing,
    TypeMismatch {
        expected: u8,
        received: u8,
    },
    KeyIdMismatch {
        expected: u8,
        received: u8,
    },
    PasswordMismatch,
    HashMismatch,
    /// The sequence number is outside the window after the last accepted one.
    SequenceNumberOutOfWindow {
        received: u32,
        last_accepted: u32,
    },
    /// The bytes handed in are not the encoding of the packet handed in: a caller bug, reported
    /// rather than trusted, since the hash covers the bytes and the session acts on the packet.
    WireBytesMismatch,
}

impl Sha1Key {
    /// `None` unless the key is 1 to 20 bytes long.
    pub fn new(key: &[u8]) -> Option<Sha1Key> {
        if !(SHA1_KEY_BYTES_MIN..=SHA1_KEY_BYTES_MAX).contains(&key.len()) {
            return None;
        }
        let mut padded = [0; SHA1_HASH_BYTES];
        padded[..key.len()].copy_from_slice(key);
        Some(Sha1Key { padded })
    }
}

/// Keys are secrets: a debug print shows nothing of them.
impl fmt::Debug for Sha1Key {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Sha1Key(..)")
    }
}

impl Authenticator {
    /// RFC 5880 section 6.8.1 requires bfd.XmitAuthSeq to start at a random value; the caller
    /// supplies it so this crate never picks randomness on its own.
    pub fn new(mode: AuthenticationMode, initial_transmit_sequence_number: u32) -> Authenticator {
        Authenticator {
            mode,
            transmit_sequence_number: initial_transmit_sequence_number,
            receive_sequence_number: 0,
            receive_sequence_known: false,
            last_sealed_contents: None,
        }
    }

    pub fn mode(&self) -> &AuthenticationMode {
        &self.mode
    }

    /// Adds the authentication section to `packet`, computing the SHA1 hash when keyed, so that
    /// `packet.encode` afterwards produces bytes the peer accepts. Call it once per transmitted
    /// packet: the meticulous type advances the sequence number on every call.
    pub fn seal(&mut self, packet: &mut ControlPacket) -> Result<(), EncodeError> {
        packet.authentication = None;
        let contents_changed = self.last_sealed_contents.as_ref() != Some(&*packet);
        let first_packet = self.last_sealed_contents.is_none();
        let advance = match self.mode {
            AuthenticationMode::SimplePassword { .. } => false,
            AuthenticationMode::KeyedSha1 { .. } => contents_changed && !first_packet,
            AuthenticationMode::MeticulousKeyedSha1 { .. } => !first_packet,
        };
        if advance {
            self.transmit_sequence_number = self.transmit_sequence_number.wrapping_add(1);
        }
        self.last_sealed_contents = Some(packet.clone());
        let sequence_number = self.transmit_sequence_number;
        match &self.mode {
            AuthenticationMode::SimplePassword { key_id, password } => {
                packet.authentication = Some(AuthenticationSection::SimplePassword {
                    key_id: *key_id,
                    password: password.clone(),
                });
                Ok(())
            }
            AuthenticationMode::KeyedSha1 { key_id, key }
            | AuthenticationMode::MeticulousKeyedSha1 { key_id, key } => {
                let section = Sha1Section {
                    key_id: *key_id,
                    sequence_number,
                    hash: key.padded,
                };
                packet.authentication = Some(match self.mode {
                    AuthenticationMode::KeyedSha1 { .. } => {
                        AuthenticationSection::KeyedSha1(section)
                    }
                    _ => AuthenticationSection::MeticulousKeyedSha1(section),
                });
                // RFC 5880 section 6.7.4: hash the packet with the key in the hash field.
                let mut wire = [0; PACKET_BYTES_MAX];
                let length = packet.encode(&mut wire)?;
                let hash = sha1_of(&wire[..length]);
                match &mut packet.authentication {
                    Some(
                        AuthenticationSection::KeyedSha1(section)
                        | AuthenticationSection::MeticulousKeyedSha1(section),
                    ) => section.hash = hash,
                    _ => unreachable!("the SHA1 section was set just above"),
                }
                Ok(())
            }
        }
    }

    /// Checks a received packet against RFC 5880 sections 6.7.2 and 6.7.4 and, when it passes,
    /// advances the receive window. `wire` must be the payload `packet` was decoded from.
    /// Nothing changes when the packet is rejected, so a forged packet cannot move the window.
    pub fn verify(
        &mut self,
        packet: &ControlPacket,
        wire: &[u8],
    ) -> Result<(), AuthenticationError> {
        let Some(section) = &packet.authentication else {
            return Err(AuthenticationError::Missing);
        };
        let expected_type = self.expected_auth_type();
        if section.auth_type() != expected_type {
            return Err(AuthenticationError::TypeMismatch {
                expected: expected_type,
                received: section.auth_type(),
            });
        }
        match (&self.mode, section) {
            (
                AuthenticationMode::SimplePassword { key_id, password },
                AuthenticationSection::SimplePassword {
                    key_id: received_key_id,
                    password: received,
                },
            ) => {
                check_key_id(*key_id, *received_key_id)?;
                // Equal passwords have equal lengths, which is the Auth Len rule of 6.7.2.
                if !constant_time_equal(password.as_bytes(), received.as_bytes()) {
                    return Err(AuthenticationError::PasswordMismatch);
                }
                Ok(())
            }
            (
                AuthenticationMode::KeyedSha1 { key_id, key }
                | AuthenticationMode::MeticulousKeyedSha1 { key_id, key },
                AuthenticationSection::KeyedSha1(received)
                | AuthenticationSection::MeticulousKeyedSha1(received),
            ) => {
                check_key_id(*key_id, received.key_id)?;
                let meticulous =
                    matches!(self.mode, AuthenticationMode::MeticulousKeyedSha1 { .. });
                if self.receive_sequence_known
                    && !sequence_number_in_window(
                        self.receive_sequence_number,
                        received.sequence_number,
                        packet.detect_multiplier,
                        meticulous,
                    )
                {
                    return Err(AuthenticationError::SequenceNumberOutOfWindow {
                        received: received.sequence_number,
                        last_accepted: self.receive_sequence_number,
                    });
                }
                if ControlPacket::decode(wire).as_ref() != Ok(packet) {
                    return Err(AuthenticationError::WireBytesMismatch);
                }
                let length = packet.length_bytes();
                let mut hashed = [0; PACKET_BYTES_MAX];
                hashed[..length].copy_from_slice(&wire[..length]);
                hashed[SHA1_HASH_OFFSET..SHA1_HASH_OFFSET + SHA1_HASH_BYTES]
                    .copy_from_slice(&key.padded);
                let computed = sha1_of(&hashed[..length]);
                let received_hash = &wire[SHA1_HASH_OFFSET..SHA1_HASH_OFFSET + SHA1_HASH_BYTES];
                if !constant_time_equal(&computed, received_hash) {
                    return Err(AuthenticationError::HashMismatch);
                }
                self.receive_sequence_number = received.sequence_number;
                self.receive_sequence_known = true;
                Ok(())
            }
            _ => unreachable!("the Auth Type was checked against the mode above"),
        }
    }

    /// bfd.AuthSeqKnown = 0: the next valid packet may carry any sequence number. The session
    /// calls this after two detection times of silence (RFC 5880 section 6.8.1), since the
    /// peer may have restarted with a fresh random sequence number.
    pub fn forget_receive_sequence_number(&mut self) {
        self.receive_sequence_known = false;
    }

    /// bfd.RcvAuthSeq when bfd.AuthSeqKnown is set.
    pub fn receive_sequence_number(&self) -> Option<u32> {
        self.receive_sequence_known
            .then_some(self.receive_sequence_number)
    }

    /// The sequence number the most recent sealed packet carried (bfd.XmitAuthSeq).
    pub fn transmit_sequence_number(&self) -> u32 {
        self.transmit_sequence_number
    }

    fn expected_auth_type(&self) -> u8 {
        match self.mode {
            AuthenticationMode::SimplePassword { .. } => AUTH_TYPE_SIMPLE_PASSWORD,
            AuthenticationMode::KeyedSha1 { .. } => AUTH_TYPE_KEYED_SHA1,
            AuthenticationMode::MeticulousKeyedSha1 { .. } => AUTH_TYPE_METICULOUS_KEYED_SHA1,
        }
    }
}

impl AuthenticationError {
    /// A stable snake_case name, for drop counters labelled by reason.
    pub fn name(&self) -> &'static str {
        match self {
            AuthenticationError::Missing => "authentication_missing",
            AuthenticationError::TypeMismatch { .. } => "authentication_type_mismatch",
            AuthenticationError::KeyIdMismatch { .. } => "authentication_key_id_mismatch",
            AuthenticationError::PasswordMismatch => "authentication_password_mismatch",
            AuthenticationError::HashMismatch => "authentication_hash_mismatch",
            AuthenticationError::SequenceNumberOutOfWindow { .. } => {
                "authentication_sequence_number_out_of_window"
            }
            AuthenticationError::WireBytesMismatch => "authentication_wire_bytes_mismatch",
        }
    }
}

impl fmt::Display for AuthenticationError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthenticationError::Missing => write!(formatter, "BFD packet is not authenticated"),
            AuthenticationError::TypeMismatch { expected, received } => write!(
                formatter,
                "BFD Auth Type {received} received, {expected} configured"
            ),
            AuthenticationError::KeyIdMismatch { expected, received } => write!(
                formatter,
                "BFD Auth Key ID {received} received, {expected} configured"
            ),
            AuthenticationError::PasswordMismatch => write!(formatter, "BFD password mismatch"),
            AuthenticationError::HashMismatch => write!(formatter, "BFD SHA1 hash mismatch"),
            AuthenticationError::SequenceNumberOutOfWindow {
                received,
                last_accepted,
            } => write!(
                formatter,
                "BFD sequence number {received} outside the window after {last_accepted}"
            ),
            AuthenticationError::WireBytesMismatch => {
                write!(formatter, "BFD wire bytes do not encode the packet")
            }
        }
    }
}

impl std::error::Error for AuthenticationError {}

/// RFC 5880 sections 6.7.3 and 6.7.4, in 32-bit circular arithmetic: Keyed accepts
/// [last, last + 3 * DetectMult], Meticulous accepts [last + 1, last + 3 * DetectMult].
///
/// The Detect Mult is the received packet's: the RFC names the field, not a local variable.
fn sequence_number_in_window(
    last_accepted: u32,
    received: u32,
    detect_multiplier: u8,
    meticulous: bool,
) -> bool {
    let ahead = received.wrapping_sub(last_accepted);
    let window = AUTH_SEQUENCE_WINDOW_DETECT_MULTIPLIERS * u32::from(detect_multiplier);
    let lowest_ahead = u32::from(meticulous);
    (lowest_ahead..=window).contains(&ahead)
}

fn check_key_id(expected: u8, received: u8) -> Result<(), AuthenticationError> {
    if expected == received {
        Ok(())
    } else {
        Err(AuthenticationError::KeyIdMismatch { expected, received })
    }
}

fn sha1_of(bytes: &[u8]) -> [u8; SHA1_HASH_BYTES] {
    let mut hasher = Sha1::new();
    hasher.update(bytes);
    hasher.finalize().into()
}

/// Compares secrets in time that does not depend on where they differ, so
/// timing does not reveal how much of a guess was right.
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    left.ct_eq(right).into()
}

#[cfg(test)]
mod tests {
    use super::sequence_number_in_window;

    #[test]
    fn keyed_window_includes_the_last_accepted_number_and_wraps() {
        assert!(sequence_number_in_window(10, 10, 3, false));
        assert!(sequence_number_in_window(10, 19, 3, false));
        assert!(!sequence_number_in_window(10, 20, 3, false));
        assert!(!sequence_number_in_window(10, 9, 3, false));
        assert!(sequence_number_in_window(u32::MAX - 2, 3, 3, false));
        assert!(!sequence_number_in_window(u32::MAX - 2, 7, 3, false));
    }

    #[test]
    fn meticulous_window_excludes_the_last_accepted_number_and_wraps() {
        assert!(!sequence_number_in_window(10, 10, 3, true));
        assert!(sequence_number_in_window(10, 11, 3, true));
        assert!(sequence_number_in_window(10, 19, 3, true));
        assert!(!sequence_number_in_window(10, 20, 3, true));
        assert!(sequence_number_in_window(u32::MAX, 0, 1, true));
        assert!(!sequence_number_in_window(u32::MAX, 3, 1, true));
    }
}
