//! One BFD session in asynchronous mode (RFC 5880 section 6), as a pure state machine.
//!
//! **The session never reads the clock, never touches a socket and never picks randomness.**
//! The caller hands in `now` (a [`Duration`] since any epoch it likes, as long as it never goes
//! back), received packets, and a [`Jitter`] source; the session answers with [`Actions`] and says
//! when it next wants [`Session::on_timer`] through [`Session::next_deadline`]. That is what lets
//! the tests drive two sessions through a virtual network with exact timing.
//!
//! Not implemented, on purpose for this step:
//! * Demand mode (section 6.6): we never set the D bit. A peer's D bit is honoured as far as
//!   section 6.8.7 requires of us: while both sides are Up and no Poll is running we stop
//!   periodic transmission.
//! * The Echo function (section 6.4): we always advertise Required Min Echo RX 0.
//! * Demultiplexing by address before the peer's discriminator is known (RFC 5881 section 3):
//!   the caller picks the session; the session only checks Your Discriminator.

use std::cmp::{max, min};
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::auth::{AuthenticationError, Authenticator};
use crate::limits::{
    ADMIN_DOWN_PACKETS_MIN, AUTH_SEQUENCE_FORGET_DETECTION_TIMES, CONFIGURED_INTERVAL_US_MAX,
    CONFIGURED_INTERVAL_US_MIN, DETECT_MULTIPLIER_MIN, JITTER_REDUCTION_PERCENT_MAX,
    JITTER_REDUCTION_PERCENT_MIN_WHEN_MULTIPLIER_ONE, SLOW_TX_INTERVAL_US_MIN,
};
use crate::packet::{ControlPacket, Diagnostic, State};

/// The timer values an operator chooses (bfd.DesiredMinTxInterval, bfd.RequiredMinRxInterval,
/// bfd.DetectMult).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parameters {
    pub desired_min_tx_interval_us: u32,
    pub required_min_rx_interval_us: u32,
    pub detect_multiplier: u8,
}

/// Everything a session needs at creation.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub parameters: Parameters,
    /// `None` runs the session unauthenticated; packets with the A bit are then dropped.
    pub authentication: Option<Authenticator>,
    /// The Passive role (RFC 5880 section 6.1): stay silent until the peer has been heard, and
    /// again after a detection time without it. Lets one side of a link wait for the other,
    /// for example a server that should never probe clients which are not there.
    pub passive: bool,
}

/// A source of randomness for transmit jitter (RFC 5880 section 6.8.7), passed in so that tests
/// can make it exact and production can seed it from the operating system.
pub trait Jitter {
    /// Returns a value in `0..=upper_inclusive_us`. The session clamps anything larger, so a
    /// faulty source can skew the distribution but never break the RFC's bounds.
    fn sample_us(&mut self, upper_inclusive_us: u64) -> u64;
}

/// No randomness: every interval is the longest the RFC allows. For tests only: RFC 5880
/// section 6.8.7 requires every periodic packet to be jittered, so that many sessions started
/// together do not stay in lockstep.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJitter;

/// A small deterministic generator (SplitMix64). Seed it from real randomness in production; the
/// modulo bias it has is far below anything that matters for spreading timers.
#[derive(Clone, Debug)]
pub struct SplitMix64Jitter {
    state: u64,
}

/// What the caller must do after handing an event to the session.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// A packet to encode and send now.
    pub transmit: Option<ControlPacket>,
    pub state_change: Option<StateChange>,
}

/// A change of bfd.SessionState.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub from: State,
    pub to: State,
    /// bfd.LocalDiag after the change.
    pub diagnostic: Diagnostic,
    /// The peer said AdminDown. RFC 5882 section 3.2 asks clients not to treat this Down as a
    /// path failure: the peer is draining or disabling BFD, not dead. FRR sends AdminDown with
    /// diagnostic 0, so this is judged by the state alone, never by the peer's diagnostic.
    pub remote_admin_down: bool,
}

/// Why a session dropped a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiveError {
    /// The packet breaks a rule [`ControlPacket::decode`] enforces; only possible for packets
    /// built by hand rather than decoded.
    Invalid(crate::packet::PacketError),
    /// Your Discriminator is nonzero and not ours (RFC 5880 section 6.8.6).
    YourDiscriminatorMismatch {
        received: u32,
    },
    /// The A bit is set but this session has no authentication configured.
    AuthenticationUnexpected,
    Authentication(AuthenticationError),
}

/// Why [`Parameters`] were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterError {
    DesiredMinTxOutOfRange { interval_us: u32 },
    RequiredMinRxOutOfRange { interval_us: u32 },
    ZeroDetectMultiplier,
}

/// One BFD session. `J` supplies jitter randomness.
#[derive(Clone, Debug)]
pub struct Session<J> {
    local_discriminator: NonZeroU32,
    jitter: J,
    authentication: Option<Authenticator>,
    /// bfd.SessionRole is Passive.
    passive: bool,
    /// bfd.SessionState.
    state: State,
    /// bfd.LocalDiag.
    local_diagnostic: Diagnostic,
    /// The operator's latest wish.
    configured: Parameters,
    /// What our packets carry: `configured` with the slow floor while not Up, and while a Poll
    /// is running, the values being polled (a later change waits for the Final).
    announced: Parameters,
    /// The Desired Min TX our own transmission rate uses. It lags an increase until the Final
    /// (RFC 5880 section 6.8.3), since the peer's detection time still assumes the old rate.
    transmit_desired_min_tx_us: u32,
    /// The Required Min RX our detection time uses. It lags a decrease until the Final, since
    /// the peer keeps sending at the old, slower rate until it has seen the new value.
    detection_required_min_rx_us: u32,
    poll_active: bool,
    remote: RemoteView,
    last_transmit_at: Option<Duration>,
    next_transmit_at: Option<Duration>,
    /// The unjittered interval `next_transmit_at` was computed with.
    scheduled_interval_us: u32,
    detection_deadline: Option<Duration>,
    /// bfd.AuthSeqKnown is cleared for a packet received after this: two detection times
    /// after the last valid packet (RFC 5880 section 6.8.1).
    authentication_forget_at: Option<Duration>,
    admin_down: Option<AdminDownProgress>,
}

impl Parameters {
    pub fn validate(&self) -> Result<(), ParameterError> {
        let allowed = CONFIGURED_INTERVAL_US_MIN..=CONFIGURED_INTERVAL_US_MAX;
        if !allowed.contains(&self.desired_min_tx_interval_us) {
            return Err(ParameterError::DesiredMinTxOutOfRange {
                interval_us: self.desired_min_tx_interval_us,
            });
        }
        // Zero would mean "do not send to me", which only makes sense with Demand mode or Echo;
        // neither is implemented, so the session would have no way to detect a failure.
        if !allowed.contains(&self.required_min_rx_interval_us) {
            return Err(ParameterError::RequiredMinRxOutOfRange {
                interval_us: self.required_min_rx_interval_us,
            });
        }
        if self.detect_multiplier < DETECT_MULTIPLIER_MIN {
            return Err(ParameterError::ZeroDetectMultiplier);
        }
        Ok(())
    }
}

impl SplitMix64Jitter {
    pub fn new(seed: u64) -> SplitMix64Jitter {
        SplitMix64Jitter { state: seed }
    }
}

impl Jitter for NoJitter {
    fn sample_us(&mut self, _upper_inclusive_us: u64) -> u64 {
        0
    }
}

impl Jitter for SplitMix64Jitter {
    fn sample_us(&mut self, upper_inclusive_us: u64) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^= mixed >> 31;
        match upper_inclusive_us.checked_add(1) {
            Some(bound) => mixed % bound,
            None => mixed,
        }
    }
}

impl<J: Jitter> Session<J> {
    /// A new session starts Down (RFC 5880 section 6.8.1) and, unless passive, wants to send its
    /// first packet at once: its first deadline is the epoch, which is never later than `now`.
    pub fn new(
        config: SessionConfig,
        local_discriminator: NonZeroU32,
        jitter: J,
    ) -> Result<Session<J>, ParameterError> {
        config.parameters.validate()?;
        let announced = with_slow_floor(config.parameters);
        Ok(Session {
            local_discriminator,
            jitter,
            authentication: config.authentication,
            passive: config.passive,
            state: State::Down,
            local_diagnostic: Diagnostic::NoDiagnostic,
            configured: config.parameters,
            announced,
            transmit_desired_min_tx_us: announced.desired_min_tx_interval_us,
            detection_required_min_rx_us: announced.required_min_rx_interval_us,
            poll_active: false,
            remote: RemoteView::unknown(),
            last_transmit_at: None,
            next_transmit_at: (!config.passive).then_some(Duration::ZERO),
            scheduled_interval_us: 0,
            detection_deadline: None,
            authentication_forget_at: None,
            admin_down: None,
        })
    }

    /// Handles one received packet (RFC 5880 section 6.8.6). `wire` is the UDP payload the
    /// packet was decoded from; only authentication looks at it, because the SHA1 hash covers
    /// the bytes as sent.
    pub fn on_packet(
        &mut self,
        now: Duration,
        packet: &ControlPacket,
        wire: &[u8],
    ) -> Result<Actions, ReceiveError> {
        check_decodable(packet)?;
        if packet.your_discriminator != 0
            && packet.your_discriminator != self.local_discriminator.get()
        {
            return Err(ReceiveError::YourDiscriminatorMismatch {
                received: packet.your_discriminator,
            });
        }
        let silent_too_long = self
            .authentication_forget_at
            .is_some_and(|deadline| now > deadline);
        match (&mut self.authentication, &packet.authentication) {
            (None, Some(_)) => return Err(ReceiveError::AuthenticationUnexpected),
            (None, None) => {}
            (Some(authenticator), _) => {
                if silent_too_long {
                    authenticator.forget_receive_sequence_number();
                }
                authenticator
                    .verify(packet, wire)
                    .map_err(ReceiveError::Authentication)?;
            }
        }

        self.remote = RemoteView {
            discriminator: packet.my_discriminator,
            state: packet.state,
            diagnostic: packet.diagnostic,
            demand: packet.demand,
            desired_min_tx_us: packet.desired_min_tx_interval_us,
            required_min_rx_us: packet.required_min_rx_interval_us,
            detect_multiplier: packet.detect_multiplier,
        };
        // Fixed now, while the detection time is known: a detection timeout forgets the peer's
        // timers, and the sequence number must still be forgotten after that silence, since
        // a peer that restarted begins at a new random one.
        self.authentication_forget_at = self
            .detection_time()
            .map(|time| now.saturating_add(time * AUTH_SEQUENCE_FORGET_DETECTION_TIMES));
        if packet.final_ && self.poll_active {
            self.finish_poll();
        }

        let mut actions = Actions::default();
        if self.state == State::AdminDown {
            // Section 6.8.6 discards the packet here, after learning the peer's variables;
            // that includes not answering a Poll.
            self.refresh_transmit_schedule(now);
            return Ok(actions);
        }
        self.detection_deadline = self.detection_time().map(|time| now.saturating_add(time));

        let transition = match (self.state, packet.state) {
            (State::Init | State::Up, State::AdminDown) => {
                Some((State::Down, Diagnostic::NeighborSignaledSessionDown, true))
            }
            (State::Down, State::Down) => Some((State::Init, Diagnostic::NoDiagnostic, false)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                Some((State::Up, Diagnostic::NoDiagnostic, false))
            }
            (State::Up, State::Down) => {
                Some((State::Down, Diagnostic::NeighborSignaledSessionDown, false))
            }
            _ => None,
        };
        if let Some((to, diagnostic, remote_admin_down)) = transition {
            actions.state_change = Some(self.change_state(now, to, diagnostic, remote_admin_down));
        }
        self.refresh_transmit_schedule(now);
        if packet.poll {
            // Section 6.8.7: the Final goes out at once, outside the periodic schedule.
            actions.transmit = Some(self.build_packet(false, true));
        }
        Ok(actions)
    }

    /// Handles every deadline that has passed by `now`; calling it early does nothing.
    pub fn on_timer(&mut self, now: Duration) -> Actions {
        let mut actions = Actions::default();
        if let Some(deadline) = self.detection_deadline
            && now >= deadline
        {
            // Section 6.8.1: what we knew about the peer is stale after a detection time of
            // silence. Forgetting Required Min RX too means a peer that had told us to stop
            // sending will hear from us again when it comes back.
            self.detection_deadline = None;
            self.remote = RemoteView::unknown();
            if matches!(self.state, State::Init | State::Up) {
                actions.state_change = Some(self.change_state(
                    now,
                    State::Down,
                    Diagnostic::ControlDetectionTimeExpired,
                    false,
                ));
            }
            self.refresh_transmit_schedule(now);
        }
        if let Some(transmit_at) = self.next_transmit_at
            && now >= transmit_at
        {
            actions.transmit = Some(self.build_packet(self.poll_active, false));
            self.last_transmit_at = Some(now);
            if let Some(progress) = &mut self.admin_down {
                progress.packets_sent += 1;
            }
            self.next_transmit_at = None;
            self.refresh_transmit_schedule(now);
        }
        // Everything due has been done; a deadline at or before `now` would make a driver
        // that loops on `next_deadline` spin.
        assert!(
            self.next_deadline().is_none_or(|deadline| deadline > now),
            "on_timer left work due at {now:?}"
        );
        actions
    }

    /// Moves to AdminDown (section 6.8.16). The session keeps sending AdminDown for at least one
    /// detection time and at least [`ADMIN_DOWN_PACKETS_MIN`] packets, then falls silent.
    pub fn set_admin_down(&mut self, now: Duration) -> Actions {
        let mut actions = Actions::default();
        if self.state != State::AdminDown {
            actions.state_change = Some(self.change_state(
                now,
                State::AdminDown,
                Diagnostic::AdministrativelyDown,
                false,
            ));
            self.refresh_transmit_schedule(now);
        }
        actions
    }

    /// Leaves AdminDown for Down; the handshake then starts again.
    pub fn set_admin_up(&mut self, now: Duration) -> Actions {
        let mut actions = Actions::default();
        if self.state == State::AdminDown {
            actions.state_change =
                Some(self.change_state(now, State::Down, Diagnostic::NoDiagnostic, false));
            self.refresh_transmit_schedule(now);
        }
        actions
    }

    /// Changes the timers. While Up this starts a Poll sequence (section 6.8.3): the next
    /// periodic packets carry P and the new values, a slower transmit rate and a shorter
    /// detection time take effect only when the Final arrives. A change made while a Poll is
    /// running waits for that Poll's Final and then starts its own.
    pub fn set_parameters(
        &mut self,
        now: Duration,
        parameters: Parameters,
    ) -> Result<(), ParameterError> {
        parameters.validate()?;
        self.configured = parameters;
        if self.state == State::Up {
            if !self.poll_active && self.configured != self.announced {
                self.begin_poll();
            }
        } else {
            self.apply_slow_parameters();
        }
        self.refresh_transmit_schedule(now);
        Ok(())
    }

    /// When [`Session::on_timer`] next has work; `None` when nothing is scheduled (for example
    /// after AdminDown has been announced long enough).
    pub fn next_deadline(&self) -> Option<Duration> {
        match (self.next_transmit_at, self.detection_deadline) {
            (Some(transmit), Some(detection)) => Some(min(transmit, detection)),
            (transmit, detection) => transmit.or(detection),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local_diagnostic(&self) -> Diagnostic {
        self.local_diagnostic
    }

    pub fn local_discriminator(&self) -> NonZeroU32 {
        self.local_discriminator
    }

    /// bfd.RemoteDiscr; zero until learned and again after a detection time of silence.
    pub fn remote_discriminator(&self) -> u32 {
        self.remote.discriminator
    }

    /// bfd.RemoteSessionState.
    pub fn remote_state(&self) -> State {
        self.remote.state
    }

    /// The diagnostic in the peer's last packet.
    pub fn remote_diagnostic(&self) -> Diagnostic {
        self.remote.diagnostic
    }

    /// The peer's last packet said AdminDown: it is draining or disabling BFD (RFC 5882), which
    /// clients should not treat as a path failure.
    pub fn remote_signaled_admin_down(&self) -> bool {
        self.remote.state == State::AdminDown
    }

    pub fn poll_active(&self) -> bool {
        self.poll_active
    }

    /// The values our packets currently carry.
    pub fn announced_parameters(&self) -> Parameters {
        self.announced
    }

    /// The periodic transmit interval before jitter (section 6.8.7): the larger of the Desired
    /// Min TX in use and the peer's Required Min RX.
    pub fn transmit_interval(&self) -> Duration {
        Duration::from_micros(u64::from(self.transmit_interval_us()))
    }

    /// The asynchronous mode detection time (section 6.8.4): the peer's Detect Mult times the
    /// larger of our Required Min RX in use and the peer's Desired Min TX. `None` until a
    /// packet has been received.
    pub fn detection_time(&self) -> Option<Duration> {
        if self.remote.detect_multiplier == 0 {
            return None;
        }
        let interval_us = max(
            self.detection_required_min_rx_us,
            self.remote.desired_min_tx_us,
        );
        Some(Duration::from_micros(
            u64::from(self.remote.detect_multiplier) * u64::from(interval_us),
        ))
    }
}

impl ReceiveError {
    /// A stable snake_case name, for drop counters labelled by reason.
    pub fn name(&self) -> &'static str {
        match self {
            ReceiveError::Invalid(error) => error.name(),
            ReceiveError::YourDiscriminatorMismatch { .. } => "your_discriminator_mismatch",
            ReceiveError::AuthenticationUnexpected => "authentication_unexpected",
            ReceiveError::Authentication(error) => error.name(),
        }
    }
}

impl fmt::Display for ReceiveError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiveError::Invalid(error) => error.fmt(formatter),
            ReceiveError::YourDiscriminatorMismatch { received } => {
                write!(
                    formatter,
                    "BFD Your Discriminator {received} is not this session's"
                )
            }
            ReceiveError::AuthenticationUnexpected => {
                write!(
                    formatter,
                    "BFD packet is authenticated but the session is not"
                )
            }
            ReceiveError::Authentication(error) => error.fmt(formatter),
        }
    }
}

impl std::error::Error for ReceiveError {}

impl fmt::Display for ParameterError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParameterError::DesiredMinTxOutOfRange { interval_us } => write!(
                formatter,
                "Desired Min TX {interval_us} us outside {CONFIGURED_INTERVAL_US_MIN}..={CONFIGURED_INTERVAL_US_MAX}"
            ),
            ParameterError::RequiredMinRxOutOfRange { interval_us } => write!(
                formatter,
                "Required Min RX {interval_us} us outside {CONFIGURED_INTERVAL_US_MIN}..={CONFIGURED_INTERVAL_US_MAX}"
            ),
            ParameterError::ZeroDetectMultiplier => write!(formatter, "Detect Mult is zero"),
        }
    }
}

impl std::error::Error for ParameterError {}

/// What the peer's last valid packet told us (the bfd.Remote* variables of section 6.8.1).
#[derive(Clone, Copy, Debug)]
struct RemoteView {
    discriminator: u32,
    state: State,
    diagnostic: Diagnostic,
    demand: bool,
    desired_min_tx_us: u32,
    required_min_rx_us: u32,
    /// Zero while unknown; a received packet always has a nonzero one.
    detect_multiplier: u8,
}

#[derive(Clone, Copy, Debug)]
struct AdminDownProgress {
    since: Duration,
    /// The detection time when AdminDown began: the peer needs that long to give up on us.
    detection_time: Duration,
    packets_sent: u32,
}

impl RemoteView {
    /// Section 6.8.1 initial values; Required Min RX starts at 1 us so we may send at once.
    fn unknown() -> RemoteView {
        RemoteView {
            discriminator: 0,
            state: State::Down,
            diagnostic: Diagnostic::NoDiagnostic,
            demand: false,
            desired_min_tx_us: 0,
            required_min_rx_us: 1,
            detect_multiplier: 0,
        }
    }
}

impl<J: Jitter> Session<J> {
    fn change_state(
        &mut self,
        now: Duration,
        to: State,
        diagnostic: Diagnostic,
        remote_admin_down: bool,
    ) -> StateChange {
        let from = self.state;
        assert_ne!(from, to, "a state change must change the state");
        self.state = to;
        self.local_diagnostic = diagnostic;
        self.admin_down = None;
        match to {
            State::Up => {
                // The slow floor no longer applies; lowering it is a parameter change, so it
                // goes through a Poll like any other.
                if self.configured != self.announced {
                    self.begin_poll();
                }
            }
            State::AdminDown => {
                self.apply_slow_parameters();
                self.admin_down = Some(AdminDownProgress {
                    since: now,
                    detection_time: self.detection_time().unwrap_or(Duration::ZERO),
                    packets_sent: 0,
                });
                self.detection_deadline = None;
            }
            State::Down | State::Init => self.apply_slow_parameters(),
        }
        StateChange {
            from,
            to,
            diagnostic,
            remote_admin_down,
        }
    }

    /// Outside Up there is no Poll: values apply at once, with the one second transmit floor.
    fn apply_slow_parameters(&mut self) {
        self.poll_active = false;
        self.announced = with_slow_floor(self.configured);
        self.transmit_desired_min_tx_us = self.announced.desired_min_tx_interval_us;
        self.detection_required_min_rx_us = self.announced.required_min_rx_interval_us;
    }

    fn begin_poll(&mut self) {
        let target = self.configured;
        // A faster transmit rate and a longer detection time are safe at once; the opposite
        // waits for the Final.
        self.transmit_desired_min_tx_us = min(
            self.transmit_desired_min_tx_us,
            target.desired_min_tx_interval_us,
        );
        self.detection_required_min_rx_us = max(
            self.detection_required_min_rx_us,
            target.required_min_rx_interval_us,
        );
        self.announced = target;
        self.poll_active = true;
    }

    fn finish_poll(&mut self) {
        self.poll_active = false;
        self.transmit_desired_min_tx_us = self.announced.desired_min_tx_interval_us;
        self.detection_required_min_rx_us = self.announced.required_min_rx_interval_us;
        if self.state == State::Up && self.configured != self.announced {
            self.begin_poll();
        }
    }

    fn transmit_interval_us(&self) -> u32 {
        max(
            self.transmit_desired_min_tx_us,
            self.remote.required_min_rx_us,
        )
    }

    /// Section 6.8.7: 75-100% of the interval, or 75-90% with a Detect Mult of 1.
    fn jittered_interval(&mut self) -> Duration {
        let interval_us = u64::from(self.transmit_interval_us());
        let reduction_max_us = interval_us * JITTER_REDUCTION_PERCENT_MAX / 100;
        let reduction_min_us = if self.announced.detect_multiplier == 1 {
            (interval_us * JITTER_REDUCTION_PERCENT_MIN_WHEN_MULTIPLIER_ONE).div_ceil(100)
        } else {
            0
        };
        let spread_us = reduction_max_us - reduction_min_us;
        let reduction_us = reduction_min_us + min(self.jitter.sample_us(spread_us), spread_us);
        Duration::from_micros(interval_us - reduction_us)
    }

    fn periodic_transmission_allowed(&self, now: Duration) -> bool {
        if self.remote.required_min_rx_us == 0 {
            return false;
        }
        if self.passive && self.remote.discriminator == 0 {
            return false;
        }
        let remote_in_demand_mode =
            self.remote.demand && self.state == State::Up && self.remote.state == State::Up;
        if remote_in_demand_mode && !self.poll_active {
            return false;
        }
        if let Some(progress) = &self.admin_down {
            let announced_long_enough =
                now >= progress.since.saturating_add(progress.detection_time);
            if announced_long_enough && progress.packets_sent >= ADMIN_DOWN_PACKETS_MIN {
                return false;
            }
        }
        true
    }

    /// Keeps `next_transmit_at` consistent with the current interval. A change we caused keeps
    /// an earlier deadline already planned, so the packet announcing the change (AdminDown, Down,
    /// a Poll) is not held back by the new, slower rate while the peer's detection timer still
    /// runs on the old one. A larger Required Min RX from the peer always reschedules, because
    /// sending faster than the peer asked is forbidden (section 6.8.7).
    fn refresh_transmit_schedule(&mut self, now: Duration) {
        if !self.periodic_transmission_allowed(now) {
            self.next_transmit_at = None;
            return;
        }
        let interval_us = self.transmit_interval_us();
        if self.next_transmit_at.is_some() && interval_us == self.scheduled_interval_us {
            return;
        }
        let candidate = match self.last_transmit_at {
            Some(last) => max(last.saturating_add(self.jittered_interval()), now),
            None => now,
        };
        self.next_transmit_at = Some(match self.next_transmit_at {
            Some(existing) if self.scheduled_interval_us >= self.remote.required_min_rx_us => {
                min(existing, candidate)
            }
            _ => candidate,
        });
        self.scheduled_interval_us = interval_us;
    }

    fn build_packet(&mut self, poll: bool, final_: bool) -> ControlPacket {
        let mut packet = ControlPacket {
            diagnostic: self.local_diagnostic,
            state: self.state,
            poll,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_multiplier: self.announced.detect_multiplier,
            my_discriminator: self.local_discriminator.get(),
            your_discriminator: self.remote.discriminator,
            desired_min_tx_interval_us: self.announced.desired_min_tx_interval_us,
            required_min_rx_interval_us: self.announced.required_min_rx_interval_us,
            required_min_echo_rx_interval_us: 0,
            authentication: None,
        };
        if let Some(authenticator) = &mut self.authentication {
            authenticator
                .seal(&mut packet)
                .expect("a session only builds packets that encode");
        }
        packet
    }
}

fn with_slow_floor(parameters: Parameters) -> Parameters {
    Parameters {
        desired_min_tx_interval_us: max(
            parameters.desired_min_tx_interval_us,
            SLOW_TX_INTERVAL_US_MIN,
        ),
        ..parameters
    }
}

/// The session-free rules of section 6.8.6 that a hand-built packet could break; a decoded
/// packet always passes.
fn check_decodable(packet: &ControlPacket) -> Result<(), ReceiveError> {
    use crate::packet::PacketError;
    if packet.detect_multiplier == 0 {
        return Err(ReceiveError::Invalid(PacketError::ZeroDetectMultiplier));
    }
    if packet.my_discriminator == 0 {
        return Err(ReceiveError::Invalid(PacketError::ZeroMyDiscriminator));
    }
    if packet.poll && packet.final_ {
        return Err(ReceiveError::Invalid(PacketError::PollAndFinal));
    }
    if packet.your_discriminator == 0 && !packet.state.allows_zero_your_discriminator() {
        return Err(ReceiveError::Invalid(PacketError::ZeroYourDiscriminator {
            state: packet.state,
        }));
    }
    Ok(())
}
