//! Shared test helpers: parameter shorthands and a two-session harness that wires two
//! `Session`s through an in-memory network on a virtual clock.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::time::Duration;

use nublar_bfd::limits::PACKET_BYTES_MAX;
use nublar_bfd::{
    Actions, ControlPacket, Diagnostic, Jitter, Parameters, Session, SessionConfig,
    SplitMix64Jitter, State, StateChange,
};

pub fn ms(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds)
}

pub fn parameters(tx_ms: u32, rx_ms: u32, detect_multiplier: u8) -> Parameters {
    Parameters {
        desired_min_tx_interval_us: tx_ms * 1000,
        required_min_rx_interval_us: rx_ms * 1000,
        detect_multiplier,
    }
}

pub fn config(parameters: Parameters) -> SessionConfig {
    SessionConfig {
        parameters,
        authentication: None,
        passive: false,
    }
}

pub fn discriminator(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

/// A jitter source that always asks for the largest reduction, i.e. the shortest interval.
#[derive(Clone, Debug)]
pub struct GreatestJitter;

impl Jitter for GreatestJitter {
    fn sample_us(&mut self, _upper_inclusive_us: u64) -> u64 {
        u64::MAX
    }
}

/// A packet from a hypothetical peer with discriminator `PEER`.
pub const PEER: u32 = 0xbeef;

pub fn peer_packet(state: State, your_discriminator: u32) -> ControlPacket {
    ControlPacket {
        diagnostic: Diagnostic::NoDiagnostic,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_multiplier: 3,
        my_discriminator: PEER,
        your_discriminator,
        desired_min_tx_interval_us: 100_000,
        required_min_rx_interval_us: 100_000,
        required_min_echo_rx_interval_us: 0,
        authentication: None,
    }
}

pub fn wire(packet: &ControlPacket) -> Vec<u8> {
    let mut buffer = [0; PACKET_BYTES_MAX];
    let length = packet
        .encode(&mut buffer)
        .expect("sessions and tests build valid packets");
    buffer[..length].to_vec()
}

/// Feeds a packet through its encoding, as the socket layer will.
pub fn deliver<J: Jitter>(
    session: &mut Session<J>,
    now: Duration,
    packet: &ControlPacket,
) -> Actions {
    let bytes = wire(packet);
    let decoded = ControlPacket::decode(&bytes).expect("valid packet");
    session
        .on_packet(now, &decoded, &bytes)
        .expect("packet accepted")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Record {
    Sent {
        at: Duration,
        from: Side,
        packet: ControlPacket,
    },
    Delivered {
        at: Duration,
        to: Side,
        packet: ControlPacket,
    },
    Changed {
        at: Duration,
        side: Side,
        change: StateChange,
    },
    Refused {
        at: Duration,
        to: Side,
        reason: &'static str,
    },
}

/// Two sessions and the network between them. Every event happens at an exact virtual time,
/// so a run is a pure function of the configuration and the jitter seeds.
pub struct Pair {
    pub now: Duration,
    pub a: Session<SplitMix64Jitter>,
    pub b: Session<SplitMix64Jitter>,
    pub latency: Duration,
    /// Packets sent by a side whose flag is set are lost.
    pub drop_from_a: bool,
    pub drop_from_b: bool,
    pub log: Vec<Record>,
    in_flight: Vec<(Duration, Side, Vec<u8>)>,
}

impl Pair {
    pub fn new(a: SessionConfig, b: SessionConfig) -> Pair {
        Pair {
            now: Duration::ZERO,
            a: Session::new(a, discriminator(0xa), SplitMix64Jitter::new(1)).unwrap(),
            b: Session::new(b, discriminator(0xb), SplitMix64Jitter::new(2)).unwrap(),
            latency: ms(1),
            drop_from_a: false,
            drop_from_b: false,
            log: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    pub fn session(&mut self, side: Side) -> &mut Session<SplitMix64Jitter> {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Runs events up to and including `end`, then sets the clock to `end`.
    pub fn run_until(&mut self, end: Duration) {
        while self.step(end) {}
        self.now = max_duration(self.now, end);
    }

    /// Runs until `condition` holds (checked after every event) or the clock passes `limit`.
    /// Returns the time the condition first held.
    pub fn run_until_condition(
        &mut self,
        limit: Duration,
        mut condition: impl FnMut(&Pair) -> bool,
    ) -> Option<Duration> {
        loop {
            if condition(self) {
                return Some(self.now);
            }
            if !self.step(limit) {
                return None;
            }
        }
    }

    pub fn both_up(&self) -> bool {
        self.a.state() == State::Up && self.b.state() == State::Up
    }

    pub fn apply(&mut self, side: Side, actions: Actions) {
        if let Some(change) = actions.state_change {
            self.log.push(Record::Changed {
                at: self.now,
                side,
                change,
            });
        }
        if let Some(packet) = actions.transmit {
            let bytes = wire(&packet);
            self.log.push(Record::Sent {
                at: self.now,
                from: side,
                packet,
            });
            let dropped = match side {
                Side::A => self.drop_from_a,
                Side::B => self.drop_from_b,
            };
            if !dropped {
                self.in_flight
                    .push((self.now + self.latency, side.other(), bytes));
            }
        }
    }

    pub fn sent_by(&self, side: Side) -> Vec<(Duration, ControlPacket)> {
        self.log
            .iter()
            .filter_map(|record| match record {
                Record::Sent { at, from, packet } if *from == side => Some((*at, packet.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn changes_of(&self, side: Side) -> Vec<(Duration, StateChange)> {
        self.log
            .iter()
            .filter_map(|record| match record {
                Record::Changed {
                    at,
                    side: changed,
                    change,
                } if *changed == side => Some((*at, *change)),
                _ => None,
            })
            .collect()
    }

    pub fn last_delivery_to(&self, side: Side) -> Option<Duration> {
        self.log.iter().rev().find_map(|record| match record {
            Record::Delivered { at, to, .. } if *to == side => Some(*at),
            _ => None,
        })
    }

    /// Handles the earliest event at or before `limit`; false when there is none.
    fn step(&mut self, limit: Duration) -> bool {
        let delivery = self
            .in_flight
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, _, _))| *at)
            .map(|(index, (at, _, _))| (*at, index));
        let candidates = [
            delivery.map(|(at, _)| at),
            self.a.next_deadline(),
            self.b.next_deadline(),
        ];
        let Some(next) = candidates.into_iter().flatten().min() else {
            return false;
        };
        if next > limit {
            return false;
        }
        self.now = max_duration(self.now, next);
        if let Some((at, index)) = delivery
            && at <= self.now
        {
            let (_, to, bytes) = self.in_flight.remove(index);
            self.receive(to, &bytes);
            return true;
        }
        for side in [Side::A, Side::B] {
            if self
                .session(side)
                .next_deadline()
                .is_some_and(|deadline| deadline <= self.now)
            {
                let now = self.now;
                let actions = self.session(side).on_timer(now);
                self.apply(side, actions);
                return true;
            }
        }
        unreachable!("some event was due at {:?}", self.now)
    }

    fn receive(&mut self, to: Side, bytes: &[u8]) {
        let now = self.now;
        let packet = match ControlPacket::decode(bytes) {
            Ok(packet) => packet,
            Err(error) => {
                self.log.push(Record::Refused {
                    at: now,
                    to,
                    reason: error.name(),
                });
                return;
            }
        };
        match self.session(to).on_packet(now, &packet, bytes) {
            Ok(actions) => {
                self.log.push(Record::Delivered {
                    at: now,
                    to,
                    packet,
                });
                self.apply(to, actions);
            }
            Err(error) => self.log.push(Record::Refused {
                at: now,
                to,
                reason: error.name(),
            }),
        }
    }
}

fn max_duration(left: Duration, right: Duration) -> Duration {
    if left > right { left } else { right }
}
