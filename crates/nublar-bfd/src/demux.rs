//! Which session a datagram is for, and whether an unknown peer gets one: pure functions of
//! what `recvmsg` said, the payload, a view of the sessions and the accept policy.
//!
//! The speaker ([`crate::runtime`]) owns the sockets and the sessions; it asks [`route`] where
//! a datagram goes, [`accept`] whether a stranger's first packet starts a passive session, and
//! [`admit_to`] whether a session may take the packet, and counts each [`Dropped`] under its
//! reason. The rules, in order (RFC 5880 section 6.8.6, RFC 5881 sections 3 and 5, RFC 5883):
//!
//! 1. A single-hop datagram must arrive with TTL (hop limit) 255; a multihop one must say its
//!    TTL at all (its session's minimum is checked once the session is known).
//! 2. It must decode as a Control packet.
//! 3. A nonzero Your Discriminator names the session; zero falls back to the (local address,
//!    peer address) pair, and past that to the accept policy.
//! 4. The session must be the packet's: same peer, same local address, the same kind (a
//!    single-hop session never takes a packet from the multihop socket, whose TTL was only
//!    checked against a minimum), and for multihop, a TTL of at least its minimum.
//! 5. A stranger gets a session only when the policy admits its address, its packet says Down,
//!    the kernel said where it was sent, the packet passes the policy's authentication, and
//!    the policy's number of accepted sessions is not reached.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthenticationMode, Authenticator};
use crate::limits::SINGLE_HOP_TTL;
use crate::packet::{ControlPacket, State};
use crate::session::Parameters;

/// How a multihop session checks the TTL of what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Multihop {
    pub min_ttl: u8,
}

/// Which unknown peers the speaker answers, and how: a router or a gateway cannot list every
/// sender that may want a session with it, so a Down packet with Your Discriminator zero from an
/// address `admit` says yes to starts a passive session (local address = where the packet was
/// sent, peer = where it came from, answered on the port the speaker listens on).
#[derive(Clone)]
pub struct AcceptPolicy {
    /// Usually a prefix allow-list; a function so the speaker does not fix how it is written.
    pub admit: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
    pub parameters: Parameters,
    /// When set, the first packet must already pass it, so that unauthenticated packets never
    /// make the speaker open sockets.
    pub authentication: Option<AuthenticationMode>,
    /// Accepted sessions alive at once at most; further peers are refused and counted.
    pub sessions_max: usize,
    /// An accepted session that is not Up and has heard nothing for this long is removed, so
    /// senders that went away do not keep sockets and slow transmissions forever.
    pub idle: Duration,
}

/// What the kernel said of one datagram besides its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub source: IpAddr,
    /// The destination address of the IP header; `None` if the kernel did not say.
    pub destination: Option<IpAddr>,
    /// The received TTL or hop limit; `None` if the kernel did not say.
    pub hop_limit: Option<u8>,
    /// Whether it came in on the multihop socket (port 4784).
    pub multihop: bool,
}

/// A session as the demultiplexer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub local: IpAddr,
    pub peer: IpAddr,
    pub multihop: Option<Multihop>,
}

/// The sessions, looked up the two ways a packet names one.
pub trait Sessions<Id> {
    fn by_discriminator(&self, discriminator: u32) -> Option<Id>;
    fn by_addresses(&self, local: IpAddr, peer: IpAddr) -> Option<Id>;
}

/// Why a datagram goes no further. The first six are counted by the speaker
/// ([`SpeakerDrops`](crate::SpeakerDrops)), `AddressMismatch` by the session it named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    Malformed,
    WrongTtl,
    UnknownDiscriminator,
    UnknownPeer,
    AcceptAuthentication,
    AcceptLimit,
    AddressMismatch,
}

/// Where a datagram that decoded goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<Id> {
    /// To this session (still to be checked with [`admit_to`]).
    Session(Id),
    /// Nobody's yet: a stranger, for [`accept`].
    Stranger,
}

/// A datagram that decoded, and the bytes an authenticated packet's digest covers.
#[derive(Debug)]
pub struct Received<'a> {
    pub packet: ControlPacket,
    pub wire: &'a [u8],
}

/// Rules 1 to 3: the packet, and which session it names.
pub fn route<'a, Id>(
    arrival: &Arrival,
    payload: &'a [u8],
    sessions: &impl Sessions<Id>,
) -> Result<(Received<'a>, Route<Id>), Dropped> {
    let ttl_ok = match arrival.hop_limit {
        None => false,
        Some(_) if arrival.multihop => true,
        Some(ttl) => ttl == SINGLE_HOP_TTL,
    };
    if !ttl_ok {
        return Err(Dropped::WrongTtl);
    }
    let packet = ControlPacket::decode(payload).map_err(|_| Dropped::Malformed)?;
    // Decoding checked that the payload holds Length bytes; the digest covers exactly those.
    let wire = &payload[..usize::from(payload[3])];
    let route = if packet.your_discriminator != 0 {
        match sessions.by_discriminator(packet.your_discriminator) {
            Some(id) => Route::Session(id),
            None => return Err(Dropped::UnknownDiscriminator),
        }
    } else {
        match arrival
            .destination
            .and_then(|destination| sessions.by_addresses(destination, arrival.source))
        {
            Some(id) => Route::Session(id),
            None => Route::Stranger,
        }
    };
    Ok((Received { packet, wire }, route))
}

/// Rule 4: whether the session `bound` may take a packet that arrived so.
pub fn admit_to(arrival: &Arrival, bound: &Bound) -> Result<(), Dropped> {
    if bound.peer != arrival.source
        || arrival.destination.is_some_and(|to| to != bound.local)
        || bound.multihop.is_some() != arrival.multihop
    {
        return Err(Dropped::AddressMismatch);
    }
    if let (Some(rule), Some(ttl)) = (bound.multihop, arrival.hop_limit)
        && ttl < rule.min_ttl
    {
        return Err(Dropped::WrongTtl);
    }
    Ok(())
}

/// Rule 5: whether a stranger's packet starts a passive session, given the policy (if any)
/// and how many accepted sessions are alive; the session's local address when it does.
pub fn accept(
    policy: Option<&AcceptPolicy>,
    accepted_sessions: usize,
    arrival: &Arrival,
    received: &Received<'_>,
) -> Result<IpAddr, Dropped> {
    // RFC 5880 section 6.8.6: with Your Discriminator zero only Down (or AdminDown, which
    // starts nothing) is valid.
    let (Some(policy), Some(local), State::Down) = (
        policy.filter(|policy| (policy.admit)(arrival.source)),
        arrival.destination,
        received.packet.state,
    ) else {
        return Err(Dropped::UnknownPeer);
    };
    let authenticated = match &policy.authentication {
        None => received.packet.authentication.is_none(),
        Some(mode) => Authenticator::new(mode.clone(), 0)
            .verify(&received.packet, received.wire)
            .is_ok(),
    };
    if !authenticated {
        return Err(Dropped::AcceptAuthentication);
    }
    if accepted_sessions >= policy.sessions_max {
        return Err(Dropped::AcceptLimit);
    }
    Ok(local)
}

#[cfg(test)]
mod tests;
