//! BFD (RFC 5880 asynchronous mode, RFC 5881 single hop) as a sans-IO core.
//!
//! **This crate knows nothing about sockets, tokio or the clock.** [`packet`] turns bytes into
//! [`ControlPacket`]s and back, [`auth`] seals and checks them, and [`Session`] is a pure state
//! machine that is handed `now` and answers with [`Actions`]. A later crate layer owns the UDP
//! sockets (port 3784, TTL 255 checks of RFC 5881 section 5), the clock and demultiplexing.
//!
//! Failures are kept apart: a bad datagram is an expected error with a named reason
//! ([`PacketError`], [`ReceiveError`]) that the caller counts and drops; a broken internal
//! invariant is an `assert!`.

pub mod auth;
pub mod limits;
pub mod packet;
pub mod session;

pub use auth::{AuthenticationError, AuthenticationMode, Authenticator, Sha1Key};
pub use packet::{
    AuthenticationSection, ControlPacket, Diagnostic, EncodeError, Md5Section, PacketError,
    Sha1Section, SimplePassword, State,
};
pub use session::{
    Actions, Jitter, NoJitter, ParameterError, Parameters, ReceiveError, Session, SessionConfig,
    SplitMix64Jitter, StateChange,
};
