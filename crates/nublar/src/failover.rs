//! Which gateway a sender uses, and when it moves to another.
//!
//! A sender given several gateways sends to one of them, the active one, and keeps to it while
//! it works: moving back and forth would spread one sender's batches over several logs for no
//! gain. It moves when the active gateway fails a request (a connection error or the HTTP
//! time-out), or, with BFD, as soon as the gateway's BFD session leaves Up: a frozen gateway is
//! then noticed within a detection time instead of an HTTP time-out, and the request waiting on
//! it is abandoned and sent again, with the same Idempotency-Key, to the next gateway that is Up.
//!
//! A session that goes Down because the gateway said AdminDown is a drain, not a failure
//! (RFC 5882 section 3.2): the sender moves away the same way but counts it apart, and lets the
//! requests already sent finish, since a draining gateway answers them.
//!
//! The time from the last acknowledgement by the gateway left behind to the first by the next
//! one is recorded for every move: it is what a failover costs the park.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use nublar_bfd::{
    Parameters, SessionId, SessionSpec, Speaker, SpeakerConfig, State as BfdState, StateEvent,
};
use tokio::sync::{broadcast, watch};

/// What the sender knows of one gateway's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No BFD: nothing is known, so the gateway is tried.
    Unmonitored,
    /// BFD has not seen the session Up yet, or saw it fail.
    Down,
    Up,
    /// The gateway set its session AdminDown: it is shutting down in order.
    Draining,
}

impl Health {
    fn usable(self) -> bool {
        matches!(self, Health::Unmonitored | Health::Up)
    }
}

/// Why the sender left a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    Failure,
    Drain,
}

/// The gateways, the active one, and the record of every move.
pub struct Targets {
    addresses: Vec<SocketAddr>,
    state: Mutex<TargetsState>,
    /// Bumped on every change of health or of the active gateway, so waiters look again.
    changed: watch::Sender<u64>,
}

struct TargetsState {
    health: Vec<Health>,
    active: usize,
    last_acknowledged: Vec<Option<Instant>>,
    /// A move that has not yet been acknowledged by the new gateway: the gateway left behind.
    moving_from: Option<usize>,
    failovers: u64,
    drains: u64,
    gaps: Vec<Duration>,
}

/// Figures for the summary.
#[derive(Clone, Debug, Default)]
pub struct FailoverReport {
    pub failovers: u64,
    pub drains: u64,
    /// From the last acknowledgement by the gateway left behind to the first by the next, per
    /// move, in order.
    pub gaps: Vec<Duration>,
}

impl Targets {
    pub fn new(addresses: Vec<SocketAddr>, monitored: bool) -> Targets {
        let count = addresses.len();
        let health = if monitored {
            Health::Down
        } else {
            Health::Unmonitored
        };
        Targets {
            addresses,
            state: Mutex::new(TargetsState {
                health: vec![health; count],
                active: 0,
                last_acknowledged: vec![None; count],
                moving_from: None,
                failovers: 0,
                drains: 0,
                gaps: Vec::new(),
            }),
            changed: watch::Sender::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn address(&self, index: usize) -> SocketAddr {
        self.addresses[index]
    }

    /// The gateway to send to now, or `None` while none is usable.
    pub fn active(&self) -> Option<usize> {
        let state = self.state.lock().unwrap();
        state.health[state.active].usable().then_some(state.active)
    }

    /// At the start: waits until every gateway is usable or `grace` has passed, then makes the
    /// first usable one in the order given active, so the first target is the one used when it
    /// works, whichever session happened to come Up first.
    pub async fn settle(&self, grace: Duration) {
        let mut changes = self.changed.subscribe();
        let _ = tokio::time::timeout(grace, async {
            while !self.state.lock().unwrap().health.iter().all(|h| h.usable()) {
                let _ = changes.changed().await;
            }
        })
        .await;
        let mut state = self.state.lock().unwrap();
        if let Some(first) = state.health.iter().position(|health| health.usable()) {
            state.active = first;
        }
        drop(state);
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Waits, at most `limit`, until a gateway is usable, and returns it.
    pub async fn wait_active(&self, limit: Duration) -> Option<usize> {
        let mut changes = self.changed.subscribe();
        tokio::time::timeout(limit, async {
            loop {
                if let Some(index) = self.active() {
                    return index;
                }
                // The sender lives as long as `self`, so the channel cannot close here.
                let _ = changes.changed().await;
            }
        })
        .await
        .ok()
    }

    /// Completes when gateway `index` has failed by BFD (never without BFD, and not for a
    /// drain: a draining gateway still answers what it was sent).
    pub async fn lost(&self, index: usize) {
        let mut changes = self.changed.subscribe();
        loop {
            if self.state.lock().unwrap().health[index] == Health::Down {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A request to `index` failed without an answer: move on to the next usable gateway.
    pub fn failed(&self, index: usize) {
        let mut state = self.state.lock().unwrap();
        if state.active == index && self.addresses.len() > 1 {
            state.move_away(Departure::Failure);
            drop(state);
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// `index` acknowledged a request at `at`.
    pub fn acknowledged(&self, index: usize, at: Instant) {
        let mut state = self.state.lock().unwrap();
        state.last_acknowledged[index] = Some(at);
        if let Some(from) = state.moving_from
            && from != index
        {
            let gap = state.last_acknowledged[from]
                .map_or(Duration::ZERO, |last| at.saturating_duration_since(last));
            state.gaps.push(gap);
            state.moving_from = None;
        }
    }

    /// BFD says what became of every gateway on `host`.
    pub fn set_health(&self, host: IpAddr, health: Health) {
        let mut state = self.state.lock().unwrap();
        for index in 0..self.addresses.len() {
            if self.addresses[index].ip() == host {
                state.health[index] = health;
            }
        }
        let active = state.active;
        if !state.health[active].usable() {
            let why = if state.health[active] == Health::Draining {
                Departure::Drain
            } else {
                Departure::Failure
            };
            state.move_away(why);
        }
        drop(state);
        self.changed.send_modify(|generation| *generation += 1);
    }

    pub fn report(&self) -> FailoverReport {
        let state = self.state.lock().unwrap();
        FailoverReport {
            failovers: state.failovers,
            drains: state.drains,
            gaps: state.gaps.clone(),
        }
    }
}

impl TargetsState {
    /// Makes the next usable gateway after the active one active; with none usable the active
    /// one stays, and the first to become usable is taken then (by `set_health`).
    fn move_away(&mut self, why: Departure) {
        let count = self.health.len();
        let from = self.active;
        let next = (1..count)
            .map(|step| (from + step) % count)
            .find(|index| self.health[*index].usable());
        match next {
            Some(next) => self.active = next,
            None => {
                // Nothing is usable now: remember to take whichever comes Up first.
                if let Some(up) = (0..count).find(|index| self.health[*index].usable()) {
                    self.active = up;
                } else {
                    self.active = (from + 1) % count;
                }
            }
        }
        // Only leaving a gateway that was in use is a move worth counting; finding the first
        // one that is Up at the start is not.
        if self.active != from && self.last_acknowledged[from].is_some() {
            match why {
                Departure::Failure => self.failovers += 1,
                Departure::Drain => self.drains += 1,
            }
            // A second move before the first was acknowledged still counts from the gateway
            // that last worked.
            if self.moving_from.is_none() {
                self.moving_from = Some(from);
            }
        }
    }
}

/// BFD timers and ports for the sender's sessions.
#[derive(Clone, Copy, Debug)]
pub struct BfdOptions {
    /// The port the gateways listen on, and the one this sender listens on (3784).
    pub port: u16,
    /// This sender's address towards the gateways; by default the one the routing table picks.
    pub local: Option<IpAddr>,
    pub interval: Duration,
    pub multiplier: u8,
}

/// A BFD session to every gateway's host; their states drive `targets`.
pub struct Monitor {
    speaker: Speaker,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub async fn start(
        targets: std::sync::Arc<Targets>,
        options: BfdOptions,
    ) -> anyhow::Result<Monitor> {
        let mut hosts: Vec<IpAddr> = (0..targets.len())
            .map(|index| targets.address(index).ip())
            .collect();
        hosts.sort();
        hosts.dedup();
        let mut pairs = Vec::new();
        for host in &hosts {
            let local = match options.local {
                Some(local) => {
                    anyhow::ensure!(
                        local.is_ipv4() == host.is_ipv4(),
                        "--bfd-local {local} is not of the family of the target {host}"
                    );
                    local
                }
                None => route_source(*host)
                    .with_context(|| format!("finding this host's address towards {host}"))?,
            };
            pairs.push((local, *host));
        }
        let bind = |ipv4: bool| {
            let mut locals = pairs
                .iter()
                .filter(|(local, _)| local.is_ipv4() == ipv4)
                .map(|(local, _)| *local);
            let first = locals.next()?;
            // One receive socket per family: on the one local address if all sessions share it,
            // so that other BFD speakers on this host keep their own; else on all of them.
            let address = if locals.all(|other| other == first) {
                first
            } else if ipv4 {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            };
            Some(SocketAddr::new(address, options.port))
        };
        let config = SpeakerConfig {
            ipv4_bind: bind(true).map(|address| match address {
                SocketAddr::V4(v4) => v4,
                SocketAddr::V6(_) => unreachable!("an IPv4 address was picked"),
            }),
            ipv6_bind: bind(false).map(|address| match address {
                SocketAddr::V6(v6) => v6,
                SocketAddr::V4(_) => unreachable!("an IPv6 address was picked"),
            }),
        };
        let speaker = Speaker::bind(config).context("binding the BFD port (--bfd-port)")?;
        let events = speaker.subscribe();
        let interval = u32::try_from(options.interval.as_micros())
            .context("--bfd-interval-ms is too large")?;
        let parameters = Parameters {
            desired_min_tx_interval_us: interval,
            required_min_rx_interval_us: interval,
            detect_multiplier: options.multiplier,
        };
        let mut sessions: Vec<(SessionId, IpAddr)> = Vec::new();
        for (local, host) in pairs {
            let spec = SessionSpec {
                peer_port: options.port,
                ..SessionSpec::single_hop(local, host, parameters)
            };
            let id = speaker
                .add_session(spec)
                .await
                .with_context(|| format!("starting the BFD session {local} -> {host}"))?;
            sessions.push((id, host));
        }
        let task = tokio::spawn(follow(events, targets));
        Ok(Monitor { speaker, task })
    }

    pub async fn stop(self) {
        self.task.abort();
        self.speaker.stop().await;
    }
}

/// Turns session state changes into gateway health.
async fn follow(mut events: broadcast::Receiver<StateEvent>, targets: std::sync::Arc<Targets>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                let health = match event.to {
                    BfdState::Up => Health::Up,
                    BfdState::Down if event.remote_admin_down => Health::Draining,
                    // Init is on the way up, not there yet.
                    BfdState::Down | BfdState::Init | BfdState::AdminDown => Health::Down,
                };
                if event.to != BfdState::Init || event.from == BfdState::Up {
                    targets.set_health(event.peer, health);
                }
            }
            // Missing events would leave health stale, but the speaker keeps 1024 per
            // subscriber and this task only updates a table, so it does not fall behind.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The address this host sends from towards `host`, as the routing table picks it: a UDP
/// socket's connect chooses the route and the source address without sending anything.
fn route_source(host: IpAddr) -> std::io::Result<IpAddr> {
    let unspecified = if host.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = std::net::UdpSocket::bind(unspecified)?;
    socket.connect(SocketAddr::new(host, 9))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Targets {
        Targets::new(
            vec![
                "127.0.0.2:1".parse().unwrap(),
                "127.0.0.3:1".parse().unwrap(),
                "127.0.0.4:1".parse().unwrap(),
            ],
            true,
        )
    }

    fn host(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn nothing_is_used_until_bfd_says_up_and_the_sender_stays_where_it_works() {
        let targets = three();
        assert_eq!(targets.active(), None);
        targets.set_health(host(3), Health::Up);
        assert_eq!(targets.active(), Some(1), "the first to come Up");
        targets.set_health(host(2), Health::Up);
        assert_eq!(targets.active(), Some(1), "no move back while 3 works");
        assert_eq!(
            targets.report().failovers,
            0,
            "starting is not failing over"
        );
    }

    #[test]
    fn a_failure_moves_on_and_the_gap_runs_from_the_last_acknowledgement_of_the_old_gateway() {
        let targets = three();
        for last in 2..=4 {
            targets.set_health(host(last), Health::Up);
        }
        assert_eq!(targets.active(), Some(0));
        let start = Instant::now();
        targets.acknowledged(0, start);
        targets.set_health(host(2), Health::Down);
        assert_eq!(targets.active(), Some(1));
        // A late answer from the old gateway does not end the move; the new one's does.
        targets.acknowledged(0, start + Duration::from_millis(10));
        targets.acknowledged(1, start + Duration::from_millis(150));
        targets.acknowledged(1, start + Duration::from_millis(160));
        let report = targets.report();
        assert_eq!(report.failovers, 1);
        assert_eq!(report.gaps, [Duration::from_millis(140)]);
    }

    #[test]
    fn a_drain_is_counted_apart_from_failures() {
        let targets = three();
        targets.set_health(host(2), Health::Up);
        targets.set_health(host(3), Health::Up);
        targets.acknowledged(0, Instant::now());
        targets.set_health(host(2), Health::Draining);
        assert_eq!(targets.active(), Some(1));
        let report = targets.report();
        assert_eq!((report.failovers, report.drains), (0, 1));
    }

    #[test]
    fn without_bfd_a_failed_request_moves_on_in_turn() {
        let targets = Targets::new(
            vec![
                "127.0.0.2:1".parse().unwrap(),
                "127.0.0.3:1".parse().unwrap(),
            ],
            false,
        );
        assert_eq!(targets.active(), Some(0));
        targets.acknowledged(0, Instant::now());
        targets.failed(1);
        assert_eq!(
            targets.active(),
            Some(0),
            "only the active one's failure moves"
        );
        targets.failed(0);
        assert_eq!(targets.active(), Some(1));
        targets.acknowledged(1, Instant::now());
        targets.failed(1);
        assert_eq!(targets.active(), Some(0));
        assert_eq!(targets.report().failovers, 2);
        let single = Targets::new(vec!["127.0.0.2:1".parse().unwrap()], false);
        single.failed(0);
        assert_eq!(single.active(), Some(0));
        assert_eq!(single.report().failovers, 0);
    }

    #[tokio::test]
    async fn settling_prefers_the_first_target_that_is_up() {
        let targets = three();
        targets.set_health(host(3), Health::Up);
        targets.set_health(host(2), Health::Up);
        assert_eq!(targets.active(), Some(1));
        targets.settle(Duration::from_millis(50)).await;
        assert_eq!(
            targets.active(),
            Some(0),
            "4 is not Up, so the grace runs out"
        );
        assert_eq!(targets.report().failovers, 0);
    }

    #[tokio::test]
    async fn lost_fires_on_a_bfd_failure_but_not_on_a_drain() {
        let targets = std::sync::Arc::new(three());
        targets.set_health(host(2), Health::Up);
        let waiting = {
            let targets = targets.clone();
            tokio::spawn(async move { targets.lost(0).await })
        };
        targets.set_health(host(2), Health::Draining);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        targets.set_health(host(2), Health::Down);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("lost completes")
            .unwrap();
    }
}
