//! An async BFD speaker for RFC 5881 single hop, around the sans-IO [`Session`].
//!
//! **One tokio task owns every session, socket and timer.** The [`Speaker`] handle talks to it
//! over a bounded command channel and hears state changes on a broadcast channel. One task needs
//! no locks, and a timer heap in it costs one `sleep_until` for any number of sessions, where a
//! task or thread per session would multiply wake-ups and make counters racy.
//!
//! Sockets follow RFC 5881: one receive socket per address family on port 3784 that learns each
//! datagram's TTL and destination through `recvmsg` control messages and drops anything whose
//! TTL is not 255 (section 5); one transmit socket per session, bound to the session's local
//! address and a source port from 49152-65535 (section 4), sending with TTL 255. A packet is
//! matched to its session by Your Discriminator, or by (local address, peer address) while the
//! peer does not know our discriminator yet (RFC 5880 section 6.8.6, RFC 5881 section 3).
//! The peer's source port is not checked: BIRD sends from outside 49152-65535.
//!
//! **A bad datagram never stops the speaker**: it is dropped and counted by reason, either in
//! the speaker's [`SpeakerCounters`] (before a session is known) or in the session's
//! [`SessionCounters`]. A broken invariant in the core is an `assert!`; it ends the task, and
//! every later call on the handle says [`SpeakerStopped`].
//!
//! Multihop sessions (RFC 5883) are the same sessions on other sockets: the speaker listens on
//! port 4784 once asked to ([`Speaker::listen_multihop`]), sends with TTL 255 too, and takes a
//! packet for a multihop session only from the multihop socket and with a TTL of at least the
//! session's minimum, and for a single-hop session only from the single-hop socket.
//!
//! Not implemented yet: IPv6 link-local sessions (they need a scope id and a
//! device binding), Echo and Demand mode (the core lacks the last two).
//! Sessions are told apart by local and peer address only, not by interface.

mod socket;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::num::NonZeroU32;

use std::time::{Duration, SystemTime};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::{AuthenticationMode, Authenticator};
use crate::demux::{self, AcceptPolicy, Arrival, Bound, Dropped, Multihop, Received, Route};
use crate::limits::{
    MULTIHOP_CONTROL_PORT, PACKET_BYTES_MAX, RECEIVE_BATCH_DATAGRAMS_MAX, RECEIVE_BUFFER_BYTES,
    SINGLE_HOP_CONTROL_PORT, SPEAKER_COMMAND_CHANNEL_CAPACITY, SPEAKER_EVENT_CHANNEL_CAPACITY,
    SPEAKER_SESSIONS_MAX, TRANSMIT_SOURCE_PORT_MAX, TRANSMIT_SOURCE_PORT_MIN,
};
use crate::packet::{Diagnostic, State};
use crate::session::{
    Actions, Jitter, ParameterError, Parameters, ReceiveError, Session, SessionConfig,
    SplitMix64Jitter,
};

/// Where the speaker listens. `None` leaves that address family out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub ipv4_bind: Option<SocketAddrV4>,
    pub ipv6_bind: Option<SocketAddrV6>,
}

/// One session to run.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// Our address on the link: the transmit socket binds to it, and packets to any other
    /// address are not this session's.
    pub local: IpAddr,
    pub peer: IpAddr,
    /// Where our packets go. RFC 5881 fixes 3784; it is a field so that two speakers can share
    /// one host in tests.
    pub peer_port: u16,
    pub parameters: Parameters,
    pub authentication: Option<AuthenticationMode>,
    /// Wait for the peer to speak first (RFC 5880 section 6.1), so a side that should only ever
    /// answer never sends to an address where nobody runs BFD.
    pub passive: bool,
    /// A multihop session (RFC 5883) instead of single hop: received on the multihop port (see
    /// [`Speaker::listen_multihop`]) with a TTL of at least `min_ttl` instead of exactly 255.
    pub multihop: Option<Multihop>,
}

/// Names a session for as long as the speaker runs; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

/// A session changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEvent {
    pub session: SessionId,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub from: State,
    pub to: State,
    /// Our diagnostic after the change: why we left Up, for example.
    pub diagnostic: Diagnostic,
    /// The peer said AdminDown: it is draining, not dead, and RFC 5882 asks clients not to
    /// treat this Down as a path failure.
    pub remote_admin_down: bool,
}

/// A snapshot of one session, for operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStatus {
    pub id: SessionId,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub source_port: u16,
    pub state: State,
    pub remote_state: State,
    pub local_diagnostic: Diagnostic,
    pub remote_diagnostic: Diagnostic,
    pub local_discriminator: u32,
    /// Zero until the peer's is learned, and again after a detection time of silence.
    pub remote_discriminator: u32,
    /// The negotiated periodic transmit interval before jitter.
    pub transmit_interval: Duration,
    /// `None` until a packet has been received.
    pub detection_time: Option<Duration>,
    pub poll_active: bool,
    /// Started by the speaker for a peer its [`AcceptPolicy`] admits, not by
    /// [`Speaker::add_session`].
    pub accepted: bool,
    pub multihop: bool,
    pub counters: SessionCounters,
}

/// What one session sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub packets_sent: u64,
    /// Packets the session accepted.
    pub packets_received: u64,
    /// Sends the operating system refused (a full buffer, an address gone).
    pub transmit_errors: u64,
    /// Accepted packets with the Poll bit, and the Finals we answered with: together they show
    /// a peer's timer renegotiation (RFC 5880 section 6.5).
    pub poll_packets_received: u64,
    pub final_packets_sent: u64,
    pub drops: SessionDrops,
}

/// Packets that named this session but were dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionDrops {
    /// Missing, unexpected or wrong authentication.
    pub authentication: u64,
    /// The discriminator was ours but the packet came from another peer or to another local
    /// address.
    pub address_mismatch: u64,
    /// Any other rule of RFC 5880 section 6.8.6 the session enforces.
    pub rejected: u64,
}

/// Datagrams the speaker handled before, or instead of, finding a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeakerCounters {
    pub datagrams_received: u64,
    /// Sessions started for peers the [`AcceptPolicy`] admits.
    pub sessions_accepted: u64,
    /// Accepted sessions removed after their idle time.
    pub sessions_expired: u64,
    /// `recvmsg` failures other than "nothing queued".
    pub receive_errors: u64,
    pub drops: SpeakerDrops,
}

/// Datagrams dropped before a session was found, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeakerDrops {
    /// Not a Control packet by RFC 5880 section 6.8.6.
    pub malformed: u64,
    /// TTL or hop limit other than 255, or not reported by the kernel (RFC 5881 section 5).
    pub wrong_ttl: u64,
    /// Your Discriminator is nonzero and no session has it.
    pub unknown_discriminator: u64,
    /// Your Discriminator is zero and no session has this (local, peer) address pair, and the
    /// accept policy (if any) does not cover the peer.
    pub unknown_peer: u64,
    /// From an admitted peer, but the accept policy's authentication refused the packet.
    pub accept_authentication: u64,
    /// From an admitted peer, but the policy's `sessions_max` (or the speaker's limit) is reached.
    pub accept_limit: u64,
}

/// Why [`Speaker::bind`] failed.
#[derive(Debug)]
pub enum BindError {
    NoAddressFamily,
    Ipv4(io::Error),
    Ipv6(io::Error),
}

/// Why [`Speaker::add_session`] refused.
#[derive(Debug)]
pub enum AddSessionError {
    Stopped,
    SessionLimitReached,
    /// Local and peer addresses are of different families.
    AddressFamilyMismatch,
    /// The speaker has no receive socket for the session's address family.
    AddressFamilyNotBound,
    /// A multihop session, but the speaker does not listen on the multihop port of its family.
    MultihopNotListening,
    /// IPv6 link-local sessions need an interface, which this speaker does not handle yet.
    LinkLocalUnsupported,
    /// A session for this (local, peer) pair exists; the pair is what tells sessions apart.
    DuplicateSession {
        existing: SessionId,
    },
    InvalidParameters(ParameterError),
    NoFreeSourcePort,
    TransmitSocket(io::Error),
}

/// Why a call about an existing session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    Stopped,
    UnknownSession,
    InvalidParameters(ParameterError),
}

/// The speaker task has ended: [`Speaker::stop`] was called or an invariant broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerStopped;

/// The handle of a running speaker. Dropping it stops the speaker at once, without telling peers
/// (they see a detection timeout); to drain, call [`Speaker::set_admin_down_all`] and wait a
/// detection time first.
#[derive(Debug)]
pub struct Speaker {
    commands: mpsc::Sender<Command>,
    /// Never read; only there to `resubscribe` from. Holding a receiver instead of a sender
    /// means only the task owns a sender, so subscribers see `Closed` when it ends.
    events: broadcast::Receiver<StateEvent>,
    task: JoinHandle<()>,
    ipv4_address: Option<SocketAddrV4>,
    ipv6_address: Option<SocketAddrV6>,
}

impl SpeakerConfig {
    /// Both families on the wildcard address and port 3784, as a router would run it.
    pub fn standard() -> SpeakerConfig {
        SpeakerConfig {
            ipv4_bind: Some(SocketAddrV4::new(
                std::net::Ipv4Addr::UNSPECIFIED,
                SINGLE_HOP_CONTROL_PORT,
            )),
            ipv6_bind: Some(SocketAddrV6::new(
                std::net::Ipv6Addr::UNSPECIFIED,
                SINGLE_HOP_CONTROL_PORT,
                0,
                0,
            )),
        }
    }
}

impl SessionSpec {
    /// An unauthenticated session to the standard port.
    pub fn single_hop(local: IpAddr, peer: IpAddr, parameters: Parameters) -> SessionSpec {
        SessionSpec {
            local,
            peer,
            peer_port: SINGLE_HOP_CONTROL_PORT,
            parameters,
            authentication: None,
            passive: false,
            multihop: None,
        }
    }

    /// An unauthenticated multihop session to the standard multihop port, accepting packets
    /// that crossed at most 255 - `min_ttl` routers.
    pub fn multihop(
        local: IpAddr,
        peer: IpAddr,
        parameters: Parameters,
        min_ttl: u8,
    ) -> SessionSpec {
        SessionSpec {
            peer_port: MULTIHOP_CONTROL_PORT,
            multihop: Some(Multihop { min_ttl }),
            ..SessionSpec::single_hop(local, peer, parameters)
        }
    }
}

impl SessionId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Speaker {
    /// Opens the receive sockets and starts the speaker task.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O and time enabled.
    pub fn bind(config: SpeakerConfig) -> Result<Speaker, BindError> {
        if config.ipv4_bind.is_none() && config.ipv6_bind.is_none() {
            return Err(BindError::NoAddressFamily);
        }
        let ipv4 = config
            .ipv4_bind
            .map(|address| tokio_receive_socket(SocketAddr::V4(address)))
            .transpose()
            .map_err(BindError::Ipv4)?;
        let ipv6 = config
            .ipv6_bind
            .map(|address| tokio_receive_socket(SocketAddr::V6(address)))
            .transpose()
            .map_err(BindError::Ipv6)?;
        let ipv4_address = match &ipv4 {
            Some(socket) => match socket.local_addr().map_err(BindError::Ipv4)? {
                SocketAddr::V4(address) => Some(address),
                SocketAddr::V6(_) => unreachable!("an IPv4 socket has an IPv4 address"),
            },
            None => None,
        };
        let ipv6_address = match &ipv6 {
            Some(socket) => match socket.local_addr().map_err(BindError::Ipv6)? {
                SocketAddr::V6(address) => Some(address),
                SocketAddr::V4(_) => unreachable!("an IPv6 socket has an IPv6 address"),
            },
            None => None,
        };
        let (command_sender, command_receiver) = mpsc::channel(SPEAKER_COMMAND_CHANNEL_CAPACITY);
        let (event_sender, event_receiver) = broadcast::channel(SPEAKER_EVENT_CHANNEL_CAPACITY);
        let mut random = SplitMix64Jitter::new(random_seed());
        let source_port_span = u64::from(TRANSMIT_SOURCE_PORT_MAX - TRANSMIT_SOURCE_PORT_MIN) + 1;
        let first_source_port = TRANSMIT_SOURCE_PORT_MIN
            + u16::try_from(random.sample_us(source_port_span - 1))
                .expect("the span of the port range fits a port");
        let driver = Driver {
            epoch: Instant::now(),
            commands: command_receiver,
            events: event_sender,
            ipv4,
            ipv6,
            multihop_ipv4: None,
            multihop_ipv6: None,
            sessions: HashMap::new(),
            by_discriminator: HashMap::new(),
            by_addresses: HashMap::new(),
            timers: BTreeSet::new(),
            next_session_id: 1,
            next_source_port: first_source_port,
            random,
            counters: SpeakerCounters::default(),
            accept: None,
            accepted_sessions: 0,
            next_sweep: None,
        };
        let task = tokio::spawn(driver.run());
        Ok(Speaker {
            commands: command_sender,
            events: event_receiver,
            task,
            ipv4_address,
            ipv6_address,
        })
    }

    /// The IPv4 receive socket's address, with the port the system picked if the config said 0.
    pub fn ipv4_address(&self) -> Option<SocketAddrV4> {
        self.ipv4_address
    }

    /// See [`Speaker::ipv4_address`].
    pub fn ipv6_address(&self) -> Option<SocketAddrV6> {
        self.ipv6_address
    }

    /// Starts a session; unless passive it begins sending Down packets at once.
    pub async fn add_session(&self, spec: SessionSpec) -> Result<SessionId, AddSessionError> {
        self.request(|reply| Command::Add { spec, reply })
            .await
            .map_err(|SpeakerStopped| AddSessionError::Stopped)?
    }

    /// Forgets a session without telling the peer, which sees a detection timeout. Call
    /// [`Speaker::set_admin_down`] and wait a detection time first to tell it.
    pub async fn remove_session(&self, id: SessionId) -> Result<(), SessionError> {
        self.session_request(|reply| Command::Remove { id, reply })
            .await
    }

    /// Changes a session's timers; while Up this runs a Poll sequence with the peer.
    pub async fn set_parameters(
        &self,
        id: SessionId,
        parameters: Parameters,
    ) -> Result<(), SessionError> {
        self.session_request(|reply| Command::SetParameters {
            id,
            parameters,
            reply,
        })
        .await
    }

    pub async fn set_admin_down(&self, id: SessionId) -> Result<(), SessionError> {
        self.session_request(|reply| Command::SetAdmin {
            id,
            down: true,
            reply,
        })
        .await
    }

    pub async fn set_admin_up(&self, id: SessionId) -> Result<(), SessionError> {
        self.session_request(|reply| Command::SetAdmin {
            id,
            down: false,
            reply,
        })
        .await
    }

    /// Puts every session in AdminDown: the way to drain before stopping.
    pub async fn set_admin_down_all(&self) -> Result<(), SpeakerStopped> {
        self.request(|reply| Command::SetAdminDownAll { reply })
            .await
    }

    /// Listens for multihop Control packets (RFC 5883, port 4784) too, on these addresses; the
    /// answer holds the bound addresses, with the port the system picked for port 0.
    pub async fn listen_multihop(
        &self,
        ipv4: Option<SocketAddrV4>,
        ipv6: Option<SocketAddrV6>,
    ) -> Result<(Option<SocketAddrV4>, Option<SocketAddrV6>), BindError> {
        if ipv4.is_none() && ipv6.is_none() {
            return Err(BindError::NoAddressFamily);
        }
        let ipv4 = ipv4
            .map(|address| tokio_receive_socket(SocketAddr::V4(address)))
            .transpose()
            .map_err(BindError::Ipv4)?;
        let ipv6 = ipv6
            .map(|address| tokio_receive_socket(SocketAddr::V6(address)))
            .transpose()
            .map_err(BindError::Ipv6)?;
        let bound = (
            match &ipv4 {
                Some(socket) => match socket.local_addr().map_err(BindError::Ipv4)? {
                    SocketAddr::V4(address) => Some(address),
                    SocketAddr::V6(_) => unreachable!("an IPv4 socket has an IPv4 address"),
                },
                None => None,
            },
            match &ipv6 {
                Some(socket) => match socket.local_addr().map_err(BindError::Ipv6)? {
                    SocketAddr::V6(address) => Some(address),
                    SocketAddr::V4(_) => unreachable!("an IPv6 socket has an IPv6 address"),
                },
                None => None,
            },
        );
        self.request(|reply| Command::ListenMultihop { ipv4, ipv6, reply })
            .await
            .map_err(|SpeakerStopped| {
                BindError::Ipv4(io::Error::other("the BFD speaker has stopped"))
            })?;
        Ok(bound)
    }

    /// Answers unknown peers inside the policy's prefixes from now on (`None`: only sessions
    /// added with [`Speaker::add_session`]). Sessions already accepted keep running; the new
    /// policy's `idle` applies to them too.
    pub async fn set_accept_policy(
        &self,
        policy: Option<AcceptPolicy>,
    ) -> Result<(), AddSessionError> {
        if let Some(policy) = &policy {
            policy
                .parameters
                .validate()
                .map_err(AddSessionError::InvalidParameters)?;
        }
        self.request(|reply| Command::SetAcceptPolicy { policy, reply })
            .await
            .map_err(|SpeakerStopped| AddSessionError::Stopped)
    }

    /// State changes from now on; `Closed` once the speaker has stopped. A subscriber more than
    /// [`SPEAKER_EVENT_CHANNEL_CAPACITY`] events behind gets `Lagged` and misses some; the
    /// speaker never waits for subscribers.
    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.resubscribe()
    }

    /// Every session, ordered by id.
    pub async fn sessions(&self) -> Result<Vec<SessionStatus>, SpeakerStopped> {
        self.request(|reply| Command::Sessions { reply }).await
    }

    pub async fn counters(&self) -> Result<SpeakerCounters, SpeakerStopped> {
        self.request(|reply| Command::Counters { reply }).await
    }

    /// Stops the task and waits until its sockets are closed. Peers are not told.
    pub async fn stop(mut self) {
        self.task.abort();
        // The task either ran to an end or was cancelled; both leave nothing to report.
        let _ = (&mut self.task).await;
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpeakerStopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SpeakerStopped)?;
        answer.await.map_err(|_| SpeakerStopped)
    }

    async fn session_request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), SessionError>>) -> Command,
    ) -> Result<(), SessionError> {
        self.request(command)
            .await
            .map_err(|SpeakerStopped| SessionError::Stopped)?
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::NoAddressFamily => {
                write!(formatter, "BFD speaker configured with no address family")
            }
            BindError::Ipv4(error) => write!(formatter, "BFD IPv4 receive socket: {error}"),
            BindError::Ipv6(error) => write!(formatter, "BFD IPv6 receive socket: {error}"),
        }
    }
}

impl std::error::Error for BindError {}

impl fmt::Display for AddSessionError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddSessionError::Stopped => SpeakerStopped.fmt(formatter),
            AddSessionError::SessionLimitReached => write!(
                formatter,
                "BFD speaker already runs {SPEAKER_SESSIONS_MAX} sessions"
            ),
            AddSessionError::AddressFamilyMismatch => {
                write!(
                    formatter,
                    "BFD session local and peer address families differ"
                )
            }
            AddSessionError::AddressFamilyNotBound => {
                write!(
                    formatter,
                    "BFD speaker has no receive socket for this address family"
                )
            }
            AddSessionError::MultihopNotListening => write!(
                formatter,
                "BFD speaker does not listen for multihop packets of this address family"
            ),
            AddSessionError::LinkLocalUnsupported => {
                write!(
                    formatter,
                    "BFD sessions on IPv6 link-local addresses are not supported"
                )
            }
            AddSessionError::DuplicateSession { existing } => write!(
                formatter,
                "BFD session {} already runs between these addresses",
                existing.0
            ),
            AddSessionError::InvalidParameters(error) => error.fmt(formatter),
            AddSessionError::NoFreeSourcePort => write!(
                formatter,
                "no free BFD source port in {TRANSMIT_SOURCE_PORT_MIN}-{TRANSMIT_SOURCE_PORT_MAX}"
            ),
            AddSessionError::TransmitSocket(error) => {
                write!(formatter, "BFD transmit socket: {error}")
            }
        }
    }
}

impl std::error::Error for AddSessionError {}

impl fmt::Display for SessionError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Stopped => SpeakerStopped.fmt(formatter),
            SessionError::UnknownSession => write!(formatter, "no such BFD session"),
            SessionError::InvalidParameters(error) => error.fmt(formatter),
        }
    }
}

impl std::error::Error for SessionError {}

impl fmt::Display for SpeakerStopped {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "BFD speaker has stopped")
    }
}

impl std::error::Error for SpeakerStopped {}

enum Command {
    Add {
        spec: SessionSpec,
        reply: oneshot::Sender<Result<SessionId, AddSessionError>>,
    },
    Remove {
        id: SessionId,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    SetParameters {
        id: SessionId,
        parameters: Parameters,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    SetAdmin {
        id: SessionId,
        down: bool,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    SetAdminDownAll {
        reply: oneshot::Sender<()>,
    },
    Sessions {
        reply: oneshot::Sender<Vec<SessionStatus>>,
    },
    Counters {
        reply: oneshot::Sender<SpeakerCounters>,
    },
    SetAcceptPolicy {
        policy: Option<AcceptPolicy>,
        reply: oneshot::Sender<()>,
    },
    ListenMultihop {
        ipv4: Option<UdpSocket>,
        ipv6: Option<UdpSocket>,
        reply: oneshot::Sender<()>,
    },
}

/// The state the speaker task owns.
struct Driver {
    /// `now` handed to the sessions is the time since this instant.
    epoch: Instant,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<StateEvent>,
    ipv4: Option<UdpSocket>,
    ipv6: Option<UdpSocket>,
    multihop_ipv4: Option<UdpSocket>,
    multihop_ipv6: Option<UdpSocket>,
    sessions: HashMap<SessionId, Entry>,
    by_discriminator: HashMap<u32, SessionId>,
    by_addresses: HashMap<(IpAddr, IpAddr), SessionId>,
    /// Every session's next deadline, earliest first; an entry's `scheduled` says which element
    /// is its own, so a reschedule removes exactly that one.
    timers: BTreeSet<(Duration, SessionId)>,
    next_session_id: u64,
    /// Where the search for a free source port starts next, so sessions get distinct ports
    /// without trying the ones already taken first every time.
    next_source_port: u16,
    /// Discriminators, jitter seeds and sequence numbers; none of them needs to be secret, only
    /// unpredictable enough not to collide with a previous run's.
    random: SplitMix64Jitter,
    counters: SpeakerCounters,
    accept: Option<AcceptPolicy>,
    /// Accepted sessions alive now.
    accepted_sessions: usize,
    /// When idle accepted sessions are looked for next; `None` while there are none.
    next_sweep: Option<Duration>,
}

struct Entry {
    session: Session<SplitMix64Jitter>,
    local: IpAddr,
    peer: IpAddr,
    destination: SocketAddr,
    socket: StdUdpSocket,
    source_port: u16,
    scheduled: Option<Duration>,
    counters: SessionCounters,
    accepted: bool,
    multihop: Option<Multihop>,
    /// When the session last accepted a packet (or was created).
    last_received: Duration,
}

/// The driver's session maps as the demultiplexer looks them up.
struct Lookup<'a>(&'a Driver);

impl demux::Sessions<SessionId> for Lookup<'_> {
    fn by_discriminator(&self, discriminator: u32) -> Option<SessionId> {
        self.0.by_discriminator.get(&discriminator).copied()
    }

    fn by_addresses(&self, local: IpAddr, peer: IpAddr) -> Option<SessionId> {
        self.0.by_addresses.get(&(local, peer)).copied()
    }
}

/// What woke the task; computed inside `select!` and handled after it, when the futures that
/// borrowed the sockets are gone.
enum Wake {
    Command(Option<Command>),
    Readable(Family, io::Result<()>),
    Timer,
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
    MultihopV4,
    MultihopV6,
}

impl Family {
    fn multihop(self) -> bool {
        matches!(self, Family::MultihopV4 | Family::MultihopV6)
    }
}

impl Driver {
    async fn run(mut self) {
        loop {
            // Due timers run first on every turn, whatever woke the task: a socket that is
            // always readable (a flood of junk on port 3784) must not hold back transmissions
            // and detection, which is what keeps the sessions alive.
            self.fire_timers();
            self.sweep_idle_sessions();
            let next_timer = self.timers.first().map(|(at, _)| *at);
            let deadline = match (next_timer, self.next_sweep) {
                (Some(timer), Some(sweep)) => Some(timer.min(sweep)),
                (timer, sweep) => timer.or(sweep),
            }
            .map(|at| self.epoch + at);
            // Unbiased: tokio picks among ready branches at random, so neither socket nor the
            // command channel can starve the others.
            let wake = tokio::select! {
                command = self.commands.recv() => Wake::Command(command),
                result = readable(self.ipv4.as_ref()) => Wake::Readable(Family::V4, result),
                result = readable(self.ipv6.as_ref()) => Wake::Readable(Family::V6, result),
                result = readable(self.multihop_ipv4.as_ref()) => {
                    Wake::Readable(Family::MultihopV4, result)
                }
                result = readable(self.multihop_ipv6.as_ref()) => {
                    Wake::Readable(Family::MultihopV6, result)
                }
                () = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                // Every handle is gone, so nobody can ask anything any more.
                Wake::Command(None) => return,
                Wake::Command(Some(command)) => self.handle_command(command),
                Wake::Readable(family, Ok(())) => self.drain(family),
                Wake::Readable(family, Err(_)) => {
                    // The reactor gave up on this socket; waiting on it again would spin, so
                    // the family goes silent, its sessions time out, and the counter shows why.
                    self.counters.receive_errors += 1;
                    *self.socket_mut(family) = None;
                }
                // Handled at the top of the loop.
                Wake::Timer => {}
            }
        }
    }

    fn socket_mut(&mut self, family: Family) -> &mut Option<UdpSocket> {
        match family {
            Family::V4 => &mut self.ipv4,
            Family::V6 => &mut self.ipv6,
            Family::MultihopV4 => &mut self.multihop_ipv4,
            Family::MultihopV6 => &mut self.multihop_ipv6,
        }
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    fn handle_command(&mut self, command: Command) {
        // A caller that stopped waiting for its answer needs none, so send errors are ignored.
        match command {
            Command::Add { spec, reply } => {
                let _ = reply.send(self.add_session(spec));
            }
            Command::Remove { id, reply } => {
                let result = match self.remove_session(id) {
                    true => Ok(()),
                    false => Err(SessionError::UnknownSession),
                };
                let _ = reply.send(result);
            }
            Command::SetParameters {
                id,
                parameters,
                reply,
            } => {
                let now = self.now();
                let result = match self.sessions.get_mut(&id) {
                    Some(entry) => entry
                        .session
                        .set_parameters(now, parameters)
                        .map_err(SessionError::InvalidParameters),
                    None => Err(SessionError::UnknownSession),
                };
                if result.is_ok() {
                    self.reschedule(id);
                }
                let _ = reply.send(result);
            }
            Command::SetAdmin { id, down, reply } => {
                let now = self.now();
                let result = match self.sessions.get_mut(&id) {
                    Some(entry) if down => Ok(entry.session.set_admin_down(now)),
                    Some(entry) => Ok(entry.session.set_admin_up(now)),
                    None => Err(SessionError::UnknownSession),
                };
                let _ = reply.send(result.map(|actions| self.apply(id, actions)));
            }
            Command::SetAdminDownAll { reply } => {
                let now = self.now();
                let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
                for id in ids {
                    let entry = self.sessions.get_mut(&id).expect("id was just listed");
                    let actions = entry.session.set_admin_down(now);
                    self.apply(id, actions);
                }
                let _ = reply.send(());
            }
            Command::Sessions { reply } => {
                let mut statuses: Vec<SessionStatus> = self
                    .sessions
                    .iter()
                    .map(|(id, entry)| entry.status(*id))
                    .collect();
                statuses.sort_by_key(|status| status.id);
                let _ = reply.send(statuses);
            }
            Command::Counters { reply } => {
                let _ = reply.send(self.counters);
            }
            Command::SetAcceptPolicy { policy, reply } => {
                self.accept = policy;
                let _ = reply.send(());
            }
            Command::ListenMultihop { ipv4, ipv6, reply } => {
                if ipv4.is_some() {
                    self.multihop_ipv4 = ipv4;
                }
                if ipv6.is_some() {
                    self.multihop_ipv6 = ipv6;
                }
                let _ = reply.send(());
            }
        }
    }

    /// Forgets a session; false when there is none with this id.
    fn remove_session(&mut self, id: SessionId) -> bool {
        let Some(entry) = self.sessions.remove(&id) else {
            return false;
        };
        self.by_discriminator
            .remove(&entry.session.local_discriminator().get());
        self.by_addresses.remove(&(entry.local, entry.peer));
        if let Some(at) = entry.scheduled {
            self.timers.remove(&(at, id));
        }
        if entry.accepted {
            self.accepted_sessions -= 1;
        }
        true
    }

    /// Removes accepted sessions that are not Up and have heard nothing for the policy's idle
    /// time. Runs at most about once a second, and not at all while nothing was accepted.
    fn sweep_idle_sessions(&mut self) {
        let now = self.now();
        if self.next_sweep.is_none_or(|at| at > now) {
            return;
        }
        let idle = self
            .accept
            .as_ref()
            .map_or(Duration::ZERO, |policy| policy.idle);
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, entry)| {
                entry.accepted
                    && !matches!(entry.session.state(), State::Up | State::Init)
                    && now.saturating_sub(entry.last_received) >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_session(id);
            self.counters.sessions_expired += 1;
        }
        self.next_sweep = (self.accepted_sessions > 0).then(|| now + ACCEPTED_SWEEP_INTERVAL);
    }

    /// Starts a passive session for a stranger when the accept policy admits it (see
    /// [`demux::accept`]); why not when it does not.
    fn accept_peer(
        &mut self,
        now: Duration,
        arrival: &Arrival,
        received: &Received<'_>,
    ) -> Result<SessionId, Dropped> {
        let local = demux::accept(
            self.accept.as_ref(),
            self.accepted_sessions,
            arrival,
            received,
        )?;
        let policy = self
            .accept
            .as_ref()
            .expect("accept admits only under a policy");
        let listen_port = match local {
            IpAddr::V4(_) => self.ipv4.as_ref().and_then(|s| s.local_addr().ok()),
            IpAddr::V6(_) => self.ipv6.as_ref().and_then(|s| s.local_addr().ok()),
        }
        .map_or(SINGLE_HOP_CONTROL_PORT, |address| address.port());
        let spec = SessionSpec {
            local,
            peer: arrival.source,
            peer_port: listen_port,
            parameters: policy.parameters,
            authentication: policy.authentication.clone(),
            passive: true,
            multihop: None,
        };
        let id = self.add_session(spec).map_err(|_| Dropped::AcceptLimit)?;
        let entry = self.sessions.get_mut(&id).expect("just added");
        entry.accepted = true;
        entry.last_received = now;
        self.accepted_sessions += 1;
        self.counters.sessions_accepted += 1;
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + ACCEPTED_SWEEP_INTERVAL);
        }
        Ok(id)
    }

    fn add_session(&mut self, spec: SessionSpec) -> Result<SessionId, AddSessionError> {
        if self.sessions.len() >= SPEAKER_SESSIONS_MAX {
            return Err(AddSessionError::SessionLimitReached);
        }
        let (bound, link_local) = match (spec.local, spec.peer) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (self.ipv4.is_some(), false),
            (IpAddr::V6(local), IpAddr::V6(peer)) => (
                self.ipv6.is_some(),
                local.is_unicast_link_local() || peer.is_unicast_link_local(),
            ),
            _ => return Err(AddSessionError::AddressFamilyMismatch),
        };
        if !bound {
            return Err(AddSessionError::AddressFamilyNotBound);
        }
        let multihop_bound = if spec.local.is_ipv4() {
            self.multihop_ipv4.is_some()
        } else {
            self.multihop_ipv6.is_some()
        };
        if spec.multihop.is_some() && !multihop_bound {
            return Err(AddSessionError::MultihopNotListening);
        }
        if link_local {
            return Err(AddSessionError::LinkLocalUnsupported);
        }
        if let Some(existing) = self.by_addresses.get(&(spec.local, spec.peer)) {
            return Err(AddSessionError::DuplicateSession {
                existing: *existing,
            });
        }
        spec.parameters
            .validate()
            .map_err(AddSessionError::InvalidParameters)?;
        let (socket, source_port) = self.open_transmit_socket(spec.local)?;
        let authentication = spec.authentication.map(|mode| {
            let initial_sequence_number = self.random_u32();
            Authenticator::new(mode, initial_sequence_number)
        });
        let discriminator = loop {
            if let Some(candidate) = NonZeroU32::new(self.random_u32())
                && !self.by_discriminator.contains_key(&candidate.get())
            {
                break candidate;
            }
        };
        let jitter = SplitMix64Jitter::new(self.random.sample_us(u64::MAX));
        let session = Session::new(
            SessionConfig {
                parameters: spec.parameters,
                authentication,
                passive: spec.passive,
            },
            discriminator,
            jitter,
        )
        .map_err(AddSessionError::InvalidParameters)?;
        let id = SessionId(self.next_session_id);
        self.next_session_id += 1;
        self.sessions.insert(
            id,
            Entry {
                session,
                local: spec.local,
                peer: spec.peer,
                destination: SocketAddr::new(spec.peer, spec.peer_port),
                socket,
                source_port,
                scheduled: None,
                counters: SessionCounters::default(),
                accepted: false,
                multihop: spec.multihop,
                last_received: self.now(),
            },
        );
        self.by_discriminator.insert(discriminator.get(), id);
        self.by_addresses.insert((spec.local, spec.peer), id);
        self.reschedule(id);
        Ok(id)
    }

    /// Tries each port of the range at most once, starting after the last one handed out.
    fn open_transmit_socket(
        &mut self,
        local: IpAddr,
    ) -> Result<(StdUdpSocket, u16), AddSessionError> {
        let span = u32::from(TRANSMIT_SOURCE_PORT_MAX - TRANSMIT_SOURCE_PORT_MIN) + 1;
        for _ in 0..span {
            let port = self.next_source_port;
            self.next_source_port = if port == TRANSMIT_SOURCE_PORT_MAX {
                TRANSMIT_SOURCE_PORT_MIN
            } else {
                port + 1
            };
            match socket::transmit_socket(SocketAddr::new(local, port)) {
                Ok(socket) => return Ok((socket, port)),
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => continue,
                Err(error) => return Err(AddSessionError::TransmitSocket(error)),
            }
        }
        Err(AddSessionError::NoFreeSourcePort)
    }

    fn random_u32(&mut self) -> u32 {
        u32::try_from(self.random.sample_us(u64::from(u32::MAX)))
            .expect("the sample is at most u32::MAX")
    }

    /// Reads what is queued on one socket, up to a batch, so timers and commands get their turn.
    fn drain(&mut self, family: Family) {
        let mut buffer = [0u8; RECEIVE_BUFFER_BYTES];
        for _ in 0..RECEIVE_BATCH_DATAGRAMS_MAX {
            let Some(socket) = self.socket_mut(family).as_ref() else {
                return;
            };
            let received = socket.try_io(Interest::READABLE, || {
                socket::receive_with_info(socket, &mut buffer)
            });
            match received {
                Ok(info) => {
                    let now = self.now();
                    self.handle_datagram(now, info, &buffer[..info.length], family.multihop());
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // For example an ICMP error queued on the socket; the next read goes on.
                    self.counters.receive_errors += 1;
                }
            }
        }
    }

    fn handle_datagram(
        &mut self,
        now: Duration,
        info: socket::DatagramInfo,
        payload: &[u8],
        multihop: bool,
    ) {
        self.counters.datagrams_received += 1;
        let arrival = Arrival {
            source: info.source.ip(),
            destination: info.destination,
            hop_limit: info.hop_limit,
            multihop,
        };
        let routed = demux::route(&arrival, payload, &Lookup(self));
        let id = match routed {
            Ok((ref received, Route::Stranger)) => self.accept_peer(now, &arrival, received),
            Ok((_, Route::Session(id))) => Ok(id),
            Err(drop) => Err(drop),
        };
        let (received, id) = match (routed, id) {
            (Ok((received, _)), Ok(id)) => (received, id),
            (_, Err(drop)) => return self.count_drop(drop),
            (Err(_), Ok(_)) => unreachable!("a datagram that did not route names no session"),
        };
        let entry = self
            .sessions
            .get_mut(&id)
            .expect("the lookup maps only name live sessions");
        let bound = Bound {
            local: entry.local,
            peer: entry.peer,
            multihop: entry.multihop,
        };
        match demux::admit_to(&arrival, &bound) {
            Ok(()) => {}
            Err(Dropped::AddressMismatch) => {
                entry.counters.drops.address_mismatch += 1;
                return;
            }
            Err(drop) => return self.count_drop(drop),
        }
        let Received { packet, wire } = received;
        match entry.session.on_packet(now, &packet, wire) {
            Ok(actions) => {
                entry.counters.packets_received += 1;
                entry.last_received = now;
                if packet.poll {
                    entry.counters.poll_packets_received += 1;
                }
                self.apply(id, actions);
            }
            Err(ReceiveError::AuthenticationUnexpected | ReceiveError::Authentication(_)) => {
                entry.counters.drops.authentication += 1;
            }
            Err(ReceiveError::Invalid(_) | ReceiveError::YourDiscriminatorMismatch { .. }) => {
                entry.counters.drops.rejected += 1;
            }
        }
    }

    /// Counts a datagram dropped before a session took it.
    fn count_drop(&mut self, drop: Dropped) {
        let drops = &mut self.counters.drops;
        match drop {
            Dropped::Malformed => drops.malformed += 1,
            Dropped::WrongTtl => drops.wrong_ttl += 1,
            Dropped::UnknownDiscriminator => drops.unknown_discriminator += 1,
            Dropped::UnknownPeer => drops.unknown_peer += 1,
            Dropped::AcceptAuthentication => drops.accept_authentication += 1,
            Dropped::AcceptLimit => drops.accept_limit += 1,
            // Counted by the session it named, which is known only where it is found.
            Dropped::AddressMismatch => {}
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        while let Some(&(at, id)) = self.timers.first()
            && at <= now
        {
            self.timers.pop_first();
            let entry = self
                .sessions
                .get_mut(&id)
                .expect("timers only name live sessions");
            entry.scheduled = None;
            let actions = entry.session.on_timer(now);
            // `apply` reschedules, and the core promises the new deadline is after `now`, so
            // this loop ends.
            self.apply(id, actions);
        }
    }

    /// Sends what the session asked for, announces its state change and puts its next deadline
    /// in the timer set.
    fn apply(&mut self, id: SessionId, actions: Actions) {
        let entry = self
            .sessions
            .get_mut(&id)
            .expect("actions come from a live session");
        if let Some(packet) = actions.transmit {
            let mut buffer = [0u8; PACKET_BYTES_MAX];
            let length = packet
                .encode(&mut buffer)
                .expect("the session builds only packets that encode");
            // A BFD packet that cannot go out now is as good as lost on the wire; the next
            // periodic one follows, so there is no retry and the task never blocks on a send.
            match entry.socket.send_to(&buffer[..length], entry.destination) {
                Ok(_) => {
                    entry.counters.packets_sent += 1;
                    if packet.final_ {
                        entry.counters.final_packets_sent += 1;
                    }
                }
                Err(_) => entry.counters.transmit_errors += 1,
            }
        }
        if let Some(change) = actions.state_change {
            // No subscriber is not an error: state is still visible through `sessions()`.
            let _ = self.events.send(StateEvent {
                session: id,
                local: entry.local,
                peer: entry.peer,
                from: change.from,
                to: change.to,
                diagnostic: change.diagnostic,
                remote_admin_down: change.remote_admin_down,
            });
        }
        self.reschedule(id);
    }

    fn reschedule(&mut self, id: SessionId) {
        let entry = self
            .sessions
            .get_mut(&id)
            .expect("only live sessions are scheduled");
        if let Some(at) = entry.scheduled.take() {
            self.timers.remove(&(at, id));
        }
        if let Some(at) = entry.session.next_deadline() {
            entry.scheduled = Some(at);
            self.timers.insert((at, id));
        }
    }
}

impl Entry {
    fn status(&self, id: SessionId) -> SessionStatus {
        let session = &self.session;
        SessionStatus {
            id,
            local: self.local,
            peer: self.peer,
            source_port: self.source_port,
            state: session.state(),
            remote_state: session.remote_state(),
            local_diagnostic: session.local_diagnostic(),
            remote_diagnostic: session.remote_diagnostic(),
            local_discriminator: session.local_discriminator().get(),
            remote_discriminator: session.remote_discriminator(),
            transmit_interval: session.transmit_interval(),
            detection_time: session.detection_time(),
            poll_active: session.poll_active(),
            accepted: self.accepted,
            multihop: self.multihop.is_some(),
            counters: self.counters,
        }
    }
}

/// How often idle accepted sessions are looked for: their idle time is meant in seconds.
const ACCEPTED_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl fmt::Debug for AcceptPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("AcceptPolicy")
            .field("parameters", &self.parameters)
            .field("authentication", &self.authentication.is_some())
            .field("sessions_max", &self.sessions_max)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

fn tokio_receive_socket(address: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket::receive_socket(address)?)
}

async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(socket) => socket.readable().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Unpredictable across runs without a dependency: std seeds `RandomState` from the operating
/// system's randomness, and the clock separates speakers created in one process.
fn random_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let since_unix_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(since_unix_epoch.as_nanos());
    hasher.finish()
}
