//! Every bound the BFD core relies on, in one place.
//!
//! Names put the unit last (`_us`, `_bytes`, `_packets`) so a reader never has to guess whether
//! an interval is in microseconds or milliseconds. Relationships between limits are checked at
//! compile time below, so changing one number cannot silently break another.

/// The only protocol version RFC 5880 defines; anything else is dropped on receipt.
pub const PROTOCOL_VERSION: u8 = 1;

/// The mandatory section of a Control packet (RFC 5880 section 4.1).
pub const MANDATORY_SECTION_BYTES: usize = 24;

/// The smallest Length an authenticated packet may claim: the mandatory section plus the Auth Type
/// and Auth Len bytes (RFC 5880 section 6.8.6).
pub const AUTHENTICATED_PACKET_BYTES_MIN: usize = MANDATORY_SECTION_BYTES + 2;

/// Simple Password section header: Auth Type, Auth Len, Auth Key ID (RFC 5880 section 4.2).
pub const SIMPLE_PASSWORD_HEADER_BYTES: usize = 3;
/// Simple passwords are 1 to 16 bytes long (RFC 5880 section 4.2).
pub const SIMPLE_PASSWORD_BYTES_MIN: usize = 1;
/// See [`SIMPLE_PASSWORD_BYTES_MIN`].
pub const SIMPLE_PASSWORD_BYTES_MAX: usize = 16;

/// Keyed MD5 digest length (RFC 5880 section 4.3).
pub const MD5_DIGEST_BYTES: usize = 16;
/// Keyed MD5 Auth Len: type, length, key ID, reserved, sequence number, digest.
pub const MD5_SECTION_BYTES: usize = 8 + MD5_DIGEST_BYTES;

/// Keyed SHA1 hash length, which is also the longest key (RFC 5880 section 4.4).
pub const SHA1_HASH_BYTES: usize = 20;
/// SHA1 keys are zero padded to the hash length, so a key may be 1 to 20 bytes.
pub const SHA1_KEY_BYTES_MIN: usize = 1;
/// See [`SHA1_KEY_BYTES_MIN`].
pub const SHA1_KEY_BYTES_MAX: usize = SHA1_HASH_BYTES;
/// Keyed SHA1 Auth Len: type, length, key ID, reserved, sequence number, hash.
pub const SHA1_SECTION_BYTES: usize = 8 + SHA1_HASH_BYTES;

/// The longest packet this crate ever encodes; a transmit buffer of this size always suffices.
pub const PACKET_BYTES_MAX: usize = MANDATORY_SECTION_BYTES + SHA1_SECTION_BYTES;

/// While a session is not Up, Desired Min TX must be at least one second (RFC 5880 section 6.8.3).
pub const SLOW_TX_INTERVAL_US_MIN: u32 = 1_000_000;

/// The smallest interval a local configuration may ask for. Software BFD on a general purpose
/// host cannot keep sub-millisecond timers, and RFC 7419's smallest common interval is 3.3 ms.
pub const CONFIGURED_INTERVAL_US_MIN: u32 = 1_000;
/// The largest interval a local configuration may ask for (FRR's limit too: 60 s).
pub const CONFIGURED_INTERVAL_US_MAX: u32 = 60_000_000;

/// Detect Mult must be nonzero (RFC 5880 section 4.1).
pub const DETECT_MULTIPLIER_MIN: u8 = 1;

/// Periodic transmissions are shortened by a random amount of up to this share of the interval
/// (RFC 5880 section 6.8.7: the interval falls in 75-100%).
pub const JITTER_REDUCTION_PERCENT_MAX: u64 = 25;
/// With Detect Mult 1 the interval must be at most 90% so that one packet is never late by a
/// whole detection time (RFC 5880 section 6.8.7).
pub const JITTER_REDUCTION_PERCENT_MIN_WHEN_MULTIPLIER_ONE: u64 = 10;

/// Keyed authentication accepts sequence numbers up to this many times the Detect Mult ahead of
/// the last accepted one (RFC 5880 section 6.7.3 and 6.7.4).
pub const AUTH_SEQUENCE_WINDOW_DETECT_MULTIPLIERS: u32 = 3;
/// After this many detection times without a valid packet, the receive sequence number is
/// forgotten (RFC 5880 section 6.8.1, bfd.AuthSeqKnown).
pub const AUTH_SEQUENCE_FORGET_DETECTION_TIMES: u32 = 2;

/// A session entering AdminDown keeps sending AdminDown for at least one detection time
/// (RFC 5880 section 6.8.16 SHOULD) and, because the slow rate of one second may be longer than
/// that, for at least this many packets, so a single lost datagram does not hide the shutdown.
pub const ADMIN_DOWN_PACKETS_MIN: u32 = 3;

/// The UDP port of single-hop Control packets (RFC 5881 section 4).
pub const SINGLE_HOP_CONTROL_PORT: u16 = 3784;

/// The UDP port of multihop Control packets (RFC 5883 section 5).
pub const MULTIHOP_CONTROL_PORT: u16 = 4784;

/// The lowest TTL a multihop session accepts unless told otherwise: one router away at most,
/// as FRR's default. RFC 5883 section 5 leaves the value to configuration; BIRD sends 64.
pub const MULTIHOP_MIN_TTL_DEFAULT: u8 = 254;

/// Single-hop packets are sent with this TTL or hop limit, and received ones must carry it: a
/// packet that crossed a router cannot have it any more (RFC 5881 section 5, GTSM).
pub const SINGLE_HOP_TTL: u8 = 255;

/// Source ports of Control packets come from this range (RFC 5881 section 4).
pub const TRANSMIT_SOURCE_PORT_MIN: u16 = 49152;
/// See [`TRANSMIT_SOURCE_PORT_MIN`].
pub const TRANSMIT_SOURCE_PORT_MAX: u16 = 65535;

/// The IP TOS / IPv6 traffic class of sent packets: CS6, network control, as FRR sends too, so
/// that queues which protect routing traffic protect BFD as well.
pub const TRANSMIT_TRAFFIC_CLASS: u8 = 0xc0;

/// Sessions one speaker runs at most. Each owns a transmit socket and a source port; RFC 5881
/// section 4 asks for unique source ports up to 16384 sessions, far above what a host needs.
pub const SPEAKER_SESSIONS_MAX: usize = 1024;

/// Commands (add, remove, change a session) queued for the speaker task before callers wait.
pub const SPEAKER_COMMAND_CHANNEL_CAPACITY: usize = 64;

/// State changes buffered per subscriber; a subscriber that falls further behind is told how
/// many it missed (tokio broadcast `Lagged`) instead of slowing the speaker down.
pub const SPEAKER_EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Datagrams read from one socket before the speaker task looks at its timers and commands
/// again, so a flood on one socket cannot starve the sessions' transmissions.
pub const RECEIVE_BATCH_DATAGRAMS_MAX: usize = 64;

/// The receive buffer: any Length fits (it is one byte), and extra bytes are ignored.
pub const RECEIVE_BUFFER_BYTES: usize = 512;

const _: () = assert!(MANDATORY_SECTION_BYTES == 24);
const _: () = assert!(AUTHENTICATED_PACKET_BYTES_MIN == 26);
const _: () = assert!(
    MANDATORY_SECTION_BYTES + SIMPLE_PASSWORD_HEADER_BYTES + SIMPLE_PASSWORD_BYTES_MAX
        <= PACKET_BYTES_MAX
);
const _: () = assert!(MANDATORY_SECTION_BYTES + MD5_SECTION_BYTES <= PACKET_BYTES_MAX);
const _: () = assert!(MD5_SECTION_BYTES == 24 && SHA1_SECTION_BYTES == 28);
// The Length field is one byte wide.
const _: () = assert!(PACKET_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(SIMPLE_PASSWORD_BYTES_MIN >= 1);
const _: () = assert!(SIMPLE_PASSWORD_BYTES_MIN <= SIMPLE_PASSWORD_BYTES_MAX);
const _: () = assert!(SHA1_KEY_BYTES_MIN >= 1 && SHA1_KEY_BYTES_MAX == SHA1_HASH_BYTES);
const _: () = assert!(CONFIGURED_INTERVAL_US_MIN > 0);
const _: () = assert!(CONFIGURED_INTERVAL_US_MIN <= SLOW_TX_INTERVAL_US_MIN);
const _: () = assert!(SLOW_TX_INTERVAL_US_MIN <= CONFIGURED_INTERVAL_US_MAX);
const _: () = assert!(DETECT_MULTIPLIER_MIN >= 1);
const _: () =
    assert!(JITTER_REDUCTION_PERCENT_MIN_WHEN_MULTIPLIER_ONE < JITTER_REDUCTION_PERCENT_MAX);
const _: () = assert!(JITTER_REDUCTION_PERCENT_MAX < 100);
// The widest receive window must stay far inside half the 32-bit sequence space, or "ahead" and
// "behind" become ambiguous under wrap-around.
const _: () = assert!(AUTH_SEQUENCE_WINDOW_DETECT_MULTIPLIERS * (u8::MAX as u32) < u32::MAX / 2);
const _: () = assert!(AUTH_SEQUENCE_FORGET_DETECTION_TIMES >= 1);
const _: () = assert!(ADMIN_DOWN_PACKETS_MIN >= 1);
// Every session gets its own source port (the subtraction also fails to compile if MIN > MAX).
const _: () = assert!(
    SPEAKER_SESSIONS_MAX <= (TRANSMIT_SOURCE_PORT_MAX - TRANSMIT_SOURCE_PORT_MIN) as usize + 1
);
const _: () = assert!(RECEIVE_BUFFER_BYTES > u8::MAX as usize);
const _: () = assert!(SPEAKER_COMMAND_CHANNEL_CAPACITY >= 1 && SPEAKER_EVENT_CHANNEL_CAPACITY >= 1);
const _: () = assert!(RECEIVE_BATCH_DATAGRAMS_MAX >= 1);
