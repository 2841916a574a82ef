//! Multihop sessions (RFC 5883) on loopback: they come Up over the multihop port, take packets
//! whose TTL is at least their minimum (not only 255), and never take a packet from the
//! single-hop port, nor give one of theirs to a single-hop session.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use nublar_bfd::{
    AddSessionError, ControlPacket, Diagnostic, Parameters, SessionSpec, SessionStatus, Speaker,
    SpeakerConfig, SpeakerCounters, State,
};
use tokio::time::{Instant, sleep};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const STATE_WAIT: Duration = Duration::from_secs(10);

/// 100 ms both ways, multiplier 3: a detection time of 300 ms.
fn fast() -> Parameters {
    common::parameters(100, 100, 3)
}

/// A speaker on 127.0.0.1 with both ports bound to whatever is free; the multihop port is
/// returned.
async fn speaker() -> (Speaker, u16) {
    let speaker = Speaker::bind(SpeakerConfig {
        ipv4_bind: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        ipv6_bind: None,
    })
    .expect("bind");
    let (ipv4, _) = speaker
        .listen_multihop(Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)), None)
        .await
        .expect("bind the multihop port");
    (speaker, ipv4.expect("an IPv4 multihop address").port())
}

async fn sessions(speaker: &Speaker) -> Vec<SessionStatus> {
    speaker.sessions().await.expect("speaker runs")
}

async fn counters(speaker: &Speaker) -> SpeakerCounters {
    speaker.counters().await.expect("speaker runs")
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + STATE_WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {STATE_WAIT:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// A Down packet with Your Discriminator zero, sent with `ttl` to `port`.
fn send_down(port: u16, ttl: u32) {
    let packet = ControlPacket {
        diagnostic: Diagnostic::NoDiagnostic,
        state: State::Down,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_multiplier: 3,
        my_discriminator: 0x5eed,
        your_discriminator: 0,
        desired_min_tx_interval_us: 1_000_000,
        required_min_rx_interval_us: 1_000_000,
        required_min_echo_rx_interval_us: 0,
        authentication: None,
    };
    let mut buffer = [0u8; 64];
    let length = packet.encode(&mut buffer).unwrap();
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.set_ttl(ttl).unwrap();
    socket
        .send_to(&buffer[..length], (Ipv4Addr::LOCALHOST, port))
        .unwrap();
}

#[tokio::test]
async fn two_multihop_sessions_come_up_over_the_multihop_port() {
    let (a, port_a) = speaker().await;
    let (b, port_b) = speaker().await;
    for (speaker, peer_port) in [(&a, port_b), (&b, port_a)] {
        let spec = SessionSpec {
            peer_port,
            ..SessionSpec::multihop(LOCALHOST, LOCALHOST, fast(), 254)
        };
        speaker
            .add_session(spec)
            .await
            .expect("add a multihop session");
    }
    for speaker in [&a, &b] {
        wait_until("the multihop session is Up", async || {
            sessions(speaker).await[0].state == State::Up
        })
        .await;
        let status = &sessions(speaker).await[0];
        assert!(status.multihop);
        assert_eq!(status.detection_time, Some(Duration::from_millis(300)));
    }
    assert_eq!(
        SessionSpec::multihop(LOCALHOST, LOCALHOST, fast(), 1).peer_port,
        4784
    );
}

#[tokio::test]
async fn the_ttl_must_reach_the_sessions_minimum_and_the_port_must_match_its_kind() {
    let (speaker, multihop_port) = speaker().await;
    let single_hop_port = speaker.ipv4_address().unwrap().port();
    speaker
        .add_session(SessionSpec {
            passive: true,
            ..SessionSpec::multihop(LOCALHOST, LOCALHOST, fast(), 200)
        })
        .await
        .unwrap();

    // Three routers away is too far for a minimum of 200.
    send_down(multihop_port, 64);
    wait_until("the low TTL is counted", async || {
        counters(&speaker).await.drops.wrong_ttl == 1
    })
    .await;
    assert_eq!(sessions(&speaker).await[0].counters.packets_received, 0);

    // On the single-hop port, even with TTL 255, it is not the multihop session's packet.
    send_down(single_hop_port, 255);
    wait_until("the wrong port is counted", async || {
        sessions(&speaker).await[0].counters.drops.address_mismatch == 1
    })
    .await;
    assert_eq!(sessions(&speaker).await[0].counters.packets_received, 0);

    // A TTL above the minimum, though not 255, is taken: the session answers Init.
    send_down(multihop_port, 230);
    wait_until("the packet is taken", async || {
        let status = &sessions(&speaker).await[0];
        status.counters.packets_received == 1 && status.state == State::Init
    })
    .await;
}

#[tokio::test]
async fn a_multihop_session_needs_the_multihop_port_and_single_hop_stays_strict() {
    let plain = Speaker::bind(SpeakerConfig {
        ipv4_bind: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        ipv6_bind: None,
    })
    .unwrap();
    let refused = plain
        .add_session(SessionSpec::multihop(LOCALHOST, LOCALHOST, fast(), 254))
        .await;
    assert!(
        matches!(refused, Err(AddSessionError::MultihopNotListening)),
        "{refused:?}"
    );

    // A single-hop session is not fed by the multihop port, whatever the TTL.
    let (speaker, multihop_port) = speaker().await;
    speaker
        .add_session(SessionSpec {
            passive: true,
            ..SessionSpec::single_hop(LOCALHOST, LOCALHOST, fast())
        })
        .await
        .unwrap();
    send_down(multihop_port, 255);
    wait_until("the mismatch is counted", async || {
        sessions(&speaker).await[0].counters.drops.address_mismatch == 1
    })
    .await;
    assert_eq!(sessions(&speaker).await[0].state, State::Down);
}
