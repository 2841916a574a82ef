//! BFD (RFC 5880 asynchronous mode, RFC 5881 single hop): a sans-IO core and a tokio speaker.
//!
//! **The core knows nothing about sockets, tokio or the clock.** [`packet`] turns bytes into
//! [`ControlPacket`]s and back, [`auth`] seals and checks them, and [`Session`] is a pure state
//! machine that is handed `now` and answers with [`Actions`]. Only [`runtime`] does I/O: it owns
//! the UDP sockets (port 3784), reads the clock and hands each datagram to [`demux`], which
//! decides without I/O which session it is for (the TTL 255 check of RFC 5881 section 5, the
//! discriminator and address lookups, the accept policy); nothing in the core depends on it.
//!
//! Failures are kept apart: a bad datagram is an expected error with a named reason
//! ([`PacketError`], [`ReceiveError`]) that the caller counts and drops; a broken internal
//! invariant is an `assert!`.

pub mod auth;
pub mod demux;
pub mod limits;
pub mod packet;
pub mod runtime;
pub mod session;

pub use auth::{AuthenticationError, AuthenticationMode, Authenticator, Sha1Key};
pub use demux::{AcceptPolicy, Multihop};
pub use packet::{
    AuthenticationSection, ControlPacket, Diagnostic, EncodeError, Md5Section, PacketError,
    Sha1Section, SimplePassword, State,
};
pub use runtime::{
    AddSessionError, BindError, SessionCounters, SessionDrops, SessionError, SessionId,
    SessionSpec, SessionStatus, Speaker, SpeakerConfig, SpeakerCounters, SpeakerDrops,
    SpeakerStopped, StateEvent,
};
pub use session::{
    Actions, Jitter, NoJitter, ParameterError, Parameters, ReceiveError, Session, SessionConfig,
    SplitMix64Jitter, StateChange,
};
