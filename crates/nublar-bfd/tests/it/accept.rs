//! Answering unknown peers: a speaker with an [`AcceptPolicy`] starts a passive session for a
//! Down packet from an admitted address, refuses everyone else (counted), checks authentication
//! before it opens anything, keeps to its session limit and forgets idle sessions.
//!
//! Accepted sessions answer on the port their speaker listens on (3784 in real use), so each
//! test puts its speakers on distinct loopback addresses sharing one port.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use nublar_bfd::{
    AcceptPolicy, AuthenticationMode, Parameters, SessionSpec, SessionStatus, Sha1Key, Speaker,
    SpeakerConfig, SpeakerCounters, State,
};
use tokio::time::{Instant, sleep};

const STATE_WAIT: Duration = Duration::from_secs(10);

/// 100 ms both ways, multiplier 3: a detection time of 300 ms.
fn fast() -> Parameters {
    common::parameters(100, 100, 3)
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A port free on every address of `hosts` right now.
fn shared_port(hosts: &[u8]) -> u16 {
    loop {
        let port = UdpSocket::bind((v4(hosts[0]), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if hosts
            .iter()
            .all(|host| UdpSocket::bind((v4(*host), port)).is_ok())
        {
            return port;
        }
    }
}

fn speaker_at(host: u8, port: u16) -> Speaker {
    Speaker::bind(SpeakerConfig {
        ipv4_bind: Some(SocketAddrV4::new(v4(host), port)),
        ipv6_bind: None,
    })
    .expect("bind on loopback")
}

/// Admits the loopback addresses whose last byte is in `hosts`.
fn policy(
    hosts: std::ops::RangeInclusive<u8>,
    authentication: Option<AuthenticationMode>,
) -> AcceptPolicy {
    AcceptPolicy {
        admit: Arc::new(move |address| match address {
            IpAddr::V4(v4) => v4.octets()[..3] == [127, 0, 0] && hosts.contains(&v4.octets()[3]),
            IpAddr::V6(_) => false,
        }),
        parameters: fast(),
        authentication,
        sessions_max: 16,
        idle: Duration::from_secs(2),
    }
}

fn sha1(key: &[u8]) -> AuthenticationMode {
    AuthenticationMode::KeyedSha1 {
        key_id: 7,
        key: Sha1Key::new(key).unwrap(),
    }
}

/// Starts an active session from `from` towards the accepting speaker at 127.0.0.`to`.
async fn initiate(
    speaker: &Speaker,
    from: u8,
    to: u8,
    port: u16,
    authentication: Option<AuthenticationMode>,
) {
    let spec = SessionSpec {
        peer_port: port,
        authentication,
        ..SessionSpec::single_hop(v4(from).into(), v4(to).into(), fast())
    };
    speaker.add_session(spec).await.expect("add session");
}

async fn wait_until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {STATE_WAIT:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

async fn sessions(speaker: &Speaker) -> Vec<SessionStatus> {
    speaker.sessions().await.expect("speaker runs")
}

async fn counters(speaker: &Speaker) -> SpeakerCounters {
    speaker.counters().await.expect("speaker runs")
}

#[tokio::test]
async fn a_peer_in_an_admitted_prefix_gets_a_passive_session_that_comes_up() {
    let port = shared_port(&[11, 12]);
    let sender = speaker_at(11, port);
    let gateway = speaker_at(12, port);
    gateway
        .set_accept_policy(Some(policy(0..=15, None)))
        .await
        .unwrap();
    initiate(&sender, 11, 12, port, None).await;
    let accepted = wait_until("the accepted session is Up", async || {
        let found = sessions(&gateway).await;
        found.into_iter().find(|session| session.state == State::Up)
    })
    .await;
    assert!(accepted.accepted);
    assert_eq!(accepted.local, IpAddr::V4(v4(12)));
    assert_eq!(accepted.peer, IpAddr::V4(v4(11)));
    wait_until("the sender's session is Up", async || {
        sessions(&sender)
            .await
            .iter()
            .any(|session| session.state == State::Up)
            .then_some(())
    })
    .await;
    assert!(!sessions(&sender).await[0].accepted);
    assert_eq!(counters(&gateway).await.sessions_accepted, 1);
    assert_eq!(sessions(&gateway).await.len(), 1, "one peer, one session");
}

#[tokio::test]
async fn a_peer_outside_the_prefixes_is_refused_and_counted() {
    let port = shared_port(&[21, 22]);
    let sender = speaker_at(21, port);
    let gateway = speaker_at(22, port);
    gateway
        .set_accept_policy(Some(policy(22..=22, None)))
        .await
        .unwrap();
    initiate(&sender, 21, 22, port, None).await;
    wait_until("the refusal is counted", async || {
        (counters(&gateway).await.drops.unknown_peer >= 2).then_some(())
    })
    .await;
    assert!(sessions(&gateway).await.is_empty());
    assert_eq!(counters(&gateway).await.sessions_accepted, 0);
    assert_eq!(sessions(&sender).await[0].state, State::Down);
}

#[tokio::test]
async fn authentication_is_checked_before_a_session_is_started() {
    let port = shared_port(&[31, 32, 33]);
    let gateway = speaker_at(31, port);
    gateway
        .set_accept_policy(Some(policy(0..=255, Some(sha1(b"right key")))))
        .await
        .unwrap();
    let forger = speaker_at(32, port);
    initiate(&forger, 32, 31, port, Some(sha1(b"wrong key"))).await;
    let plain = speaker_at(33, port);
    initiate(&plain, 33, 31, port, None).await;
    wait_until("both refusals are counted", async || {
        (counters(&gateway).await.drops.accept_authentication >= 4).then_some(())
    })
    .await;
    assert!(
        sessions(&gateway).await.is_empty(),
        "nothing opened for them"
    );

    let friend = speaker_at(34, port);
    initiate(&friend, 34, 31, port, Some(sha1(b"right key"))).await;
    let accepted = wait_until("the authenticated peer is Up", async || {
        sessions(&gateway)
            .await
            .into_iter()
            .find(|session| session.state == State::Up)
    })
    .await;
    assert_eq!(accepted.peer, IpAddr::V4(v4(34)));
    assert_eq!(sessions(&gateway).await.len(), 1);
}

#[tokio::test]
async fn the_session_limit_holds_and_idle_sessions_are_forgotten() {
    let port = shared_port(&[41, 42, 43]);
    let gateway = speaker_at(41, port);
    gateway
        .set_accept_policy(Some(AcceptPolicy {
            sessions_max: 1,
            ..policy(0..=255, None)
        }))
        .await
        .unwrap();
    let first = speaker_at(42, port);
    initiate(&first, 42, 41, port, None).await;
    wait_until("the first peer is Up", async || {
        sessions(&gateway)
            .await
            .iter()
            .any(|session| session.state == State::Up)
            .then_some(())
    })
    .await;
    let second = speaker_at(43, port);
    initiate(&second, 43, 41, port, None).await;
    wait_until("the second peer is refused", async || {
        (counters(&gateway).await.drops.accept_limit >= 1).then_some(())
    })
    .await;
    assert_eq!(sessions(&gateway).await.len(), 1);

    // The first sender vanishes: its session goes Down by detection time, then is forgotten
    // after the idle time, which makes room for the second.
    first.stop().await;
    wait_until("the vanished peer's session is forgotten", async || {
        (counters(&gateway).await.sessions_expired == 1).then_some(())
    })
    .await;
    let accepted = wait_until("the second peer is Up", async || {
        sessions(&gateway)
            .await
            .into_iter()
            .find(|session| session.state == State::Up)
    })
    .await;
    assert_eq!(accepted.peer, IpAddr::V4(v4(43)));
}
