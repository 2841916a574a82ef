//! Two real speakers on loopback: sockets, TTL checks, demultiplexing and timers, end to end.
//!
//! Every speaker binds port 0, so tests run in parallel without colliding; sessions are told
//! where the other speaker listens through `SessionSpec::peer_port`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::time::Duration;

use nublar_bfd::{
    AuthenticationMode, ControlPacket, Diagnostic, Parameters, SessionId, SessionSpec,
    SessionStatus, Sha1Key, Speaker, SpeakerConfig, SpeakerCounters, State, StateEvent,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

const LOCALHOST_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// The handshake runs at the slow rate of one packet a second (RFC 5880 section 6.8.3), and the
/// machine is shared with other builds, so waits for a state are generous.
const STATE_WAIT: Duration = Duration::from_secs(10);

/// How late a detection may be beyond the detection time: timer granularity plus scheduling on a
/// loaded two-core machine.
const DETECTION_MARGIN: Duration = Duration::from_millis(250);

fn fast() -> Parameters {
    Parameters {
        desired_min_tx_interval_us: 100_000,
        required_min_rx_interval_us: 100_000,
        detect_multiplier: 3,
    }
}

fn speaker_on(address: IpAddr) -> Speaker {
    let config = match address {
        IpAddr::V4(address) => SpeakerConfig {
            ipv4_bind: Some(SocketAddrV4::new(address, 0)),
            ipv6_bind: None,
        },
        IpAddr::V6(address) => SpeakerConfig {
            ipv4_bind: None,
            ipv6_bind: Some(SocketAddrV6::new(address, 0, 0, 0)),
        },
    };
    Speaker::bind(config).expect("bind on loopback")
}

fn port_of(speaker: &Speaker) -> u16 {
    speaker
        .ipv4_address()
        .map(|address| address.port())
        .or(speaker.ipv6_address().map(|address| address.port()))
        .expect("a bound family")
}

fn spec_towards(peer: &Speaker, address: IpAddr, parameters: Parameters) -> SessionSpec {
    SessionSpec {
        peer_port: port_of(peer),
        ..SessionSpec::single_hop(address, address, parameters)
    }
}

struct Side {
    speaker: Speaker,
    session: SessionId,
    events: broadcast::Receiver<StateEvent>,
}

/// Two speakers on `address` with one session each, towards each other.
async fn pair_with(
    address: IpAddr,
    parameters_a: Parameters,
    parameters_b: Parameters,
    authentication: (Option<AuthenticationMode>, Option<AuthenticationMode>),
) -> (Side, Side) {
    let speaker_a = speaker_on(address);
    let speaker_b = speaker_on(address);
    let events_a = speaker_a.subscribe();
    let events_b = speaker_b.subscribe();
    let spec_a = SessionSpec {
        authentication: authentication.0,
        ..spec_towards(&speaker_b, address, parameters_a)
    };
    let spec_b = SessionSpec {
        authentication: authentication.1,
        ..spec_towards(&speaker_a, address, parameters_b)
    };
    let session_a = speaker_a.add_session(spec_a).await.expect("add session A");
    let session_b = speaker_b.add_session(spec_b).await.expect("add session B");
    (
        Side {
            speaker: speaker_a,
            session: session_a,
            events: events_a,
        },
        Side {
            speaker: speaker_b,
            session: session_b,
            events: events_b,
        },
    )
}

async fn up_pair(address: IpAddr) -> (Side, Side) {
    let (mut a, mut b) = pair_with(address, fast(), fast(), (None, None)).await;
    wait_for_state(&mut a, State::Up).await;
    wait_for_state(&mut b, State::Up).await;
    (a, b)
}

async fn wait_for_state(side: &mut Side, state: State) -> StateEvent {
    let session = side.session;
    let events = &mut side.events;
    timeout(STATE_WAIT, async {
        loop {
            let event = events.recv().await.expect("event stream open");
            if event.session == session && event.to == state {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("session did not reach {state:?} within {STATE_WAIT:?}"))
}

async fn status(side: &Side) -> SessionStatus {
    let sessions = side.speaker.sessions().await.expect("speaker runs");
    sessions
        .into_iter()
        .find(|status| status.id == side.session)
        .expect("session listed")
}

/// Polls `condition` on the session's status until it holds or `STATE_WAIT` passes.
async fn wait_for_status(side: &Side, condition: impl Fn(&SessionStatus) -> bool) -> SessionStatus {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        let current = status(side).await;
        if condition(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "condition never held; last status {current:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_counters(
    speaker: &Speaker,
    condition: impl Fn(&SpeakerCounters) -> bool,
) -> SpeakerCounters {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        let counters = speaker.counters().await.expect("speaker runs");
        if condition(&counters) {
            return counters;
        }
        assert!(
            Instant::now() < deadline,
            "counters never matched: {counters:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn down_packet(my_discriminator: u32, your_discriminator: u32, state: State) -> Vec<u8> {
    let packet = ControlPacket {
        diagnostic: Diagnostic::NoDiagnostic,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_multiplier: 3,
        my_discriminator,
        your_discriminator,
        desired_min_tx_interval_us: 1_000_000,
        required_min_rx_interval_us: 1_000_000,
        required_min_echo_rx_interval_us: 0,
        authentication: None,
    };
    let mut buffer = [0u8; 64];
    let length = packet.encode(&mut buffer).expect("valid packet");
    buffer[..length].to_vec()
}

fn sender_with_ttl(ttl: u32) -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sender");
    socket.set_ttl(ttl).expect("set TTL");
    socket
}

#[tokio::test]
async fn two_speakers_come_up_over_ipv4() {
    let (a, b) = up_pair(LOCALHOST_V4).await;
    let status_a = status(&a).await;
    let status_b = status(&b).await;
    assert_eq!(status_a.remote_discriminator, status_b.local_discriminator);
    assert_eq!(status_b.remote_discriminator, status_a.local_discriminator);
    for status in [&status_a, &status_b] {
        assert_eq!(status.state, State::Up);
        assert!(
            (49152..=65535).contains(&status.source_port),
            "source port {} outside RFC 5881 range",
            status.source_port
        );
        assert!(status.counters.packets_sent > 0 && status.counters.packets_received > 0);
    }
}

#[tokio::test]
async fn two_speakers_come_up_over_ipv6() {
    let (a, b) = up_pair(LOCALHOST_V6).await;
    let status_a = status(&a).await;
    let status_b = status(&b).await;
    assert_eq!(status_a.remote_discriminator, status_b.local_discriminator);
    assert_eq!(status_b.remote_discriminator, status_a.local_discriminator);
    assert_eq!(status_a.state, State::Up);
    assert_eq!(status_b.state, State::Up);
}

#[tokio::test]
async fn a_stopped_peer_is_detected_within_the_detection_time() {
    let (mut a, b) = up_pair(LOCALHOST_V4).await;
    // Once the Polls that leave the slow start rate are done, the detection time is 3 x 100 ms.
    let settled = wait_for_status(&a, |status| {
        !status.poll_active && status.detection_time == Some(Duration::from_millis(300))
    })
    .await;
    // Let the peer's own Poll finish as well, so its transmit rate is 100 ms.
    wait_for_status(&b, |status| !status.poll_active).await;
    let detection_time = settled.detection_time.expect("known while Up");

    let stopped_at = Instant::now();
    b.speaker.stop().await;
    let event = wait_for_state(&mut a, State::Down).await;
    let elapsed = stopped_at.elapsed();

    assert_eq!(event.diagnostic, Diagnostic::ControlDetectionTimeExpired);
    assert!(!event.remote_admin_down);
    assert!(
        elapsed <= detection_time + DETECTION_MARGIN,
        "detected after {elapsed:?}, detection time {detection_time:?}"
    );
    // The peer's last packet left at most one transmit interval (100 ms) before it stopped.
    assert!(
        elapsed >= detection_time - Duration::from_millis(100),
        "went Down after only {elapsed:?}, before the detection time could have passed"
    );
    let after = status(&a).await;
    assert_eq!(
        after.remote_discriminator, 0,
        "RFC 5880 6.8.1: forget RemoteDiscr"
    );
}

#[tokio::test]
async fn admin_down_propagates_and_admin_up_recovers() {
    let (mut a, mut b) = up_pair(LOCALHOST_V6).await;
    a.speaker
        .set_admin_down(a.session)
        .await
        .expect("admin down");

    let local = wait_for_state(&mut a, State::AdminDown).await;
    assert_eq!(local.diagnostic, Diagnostic::AdministrativelyDown);
    let remote = wait_for_state(&mut b, State::Down).await;
    assert_eq!(remote.diagnostic, Diagnostic::NeighborSignaledSessionDown);
    assert!(
        remote.remote_admin_down,
        "RFC 5882: the peer must see this is not a path failure"
    );
    assert_eq!(status(&b).await.remote_state, State::AdminDown);

    a.speaker.set_admin_up(a.session).await.expect("admin up");
    wait_for_state(&mut a, State::Up).await;
    wait_for_state(&mut b, State::Up).await;
}

#[tokio::test]
async fn a_poll_from_the_peer_changes_the_negotiated_intervals() {
    let (a, b) = up_pair(LOCALHOST_V4).await;
    let settled = wait_for_status(&b, |status| {
        !status.poll_active && status.transmit_interval == Duration::from_millis(100)
    })
    .await;
    assert_eq!(settled.detection_time, Some(Duration::from_millis(300)));

    // A asks B to send no faster than every 250 ms and itself sends every 200 ms.
    let slower = Parameters {
        desired_min_tx_interval_us: 200_000,
        required_min_rx_interval_us: 250_000,
        detect_multiplier: 3,
    };
    a.speaker
        .set_parameters(a.session, slower)
        .await
        .expect("valid parameters");
    let renegotiated = wait_for_status(&b, |status| {
        status.transmit_interval == Duration::from_millis(250)
            && status.detection_time == Some(Duration::from_millis(600))
    })
    .await;
    assert!(renegotiated.counters.poll_packets_received > settled.counters.poll_packets_received);
    assert!(renegotiated.counters.final_packets_sent > settled.counters.final_packets_sent);
    wait_for_status(&a, |status| !status.poll_active).await;
    assert_eq!(status(&a).await.state, State::Up);
}

#[tokio::test]
async fn sessions_with_matching_sha1_keys_come_up() {
    let mode = || AuthenticationMode::MeticulousKeyedSha1 {
        key_id: 7,
        key: Sha1Key::new(b"shared secret").expect("valid key"),
    };
    let (mut a, mut b) =
        pair_with(LOCALHOST_V4, fast(), fast(), (Some(mode()), Some(mode()))).await;
    wait_for_state(&mut a, State::Up).await;
    wait_for_state(&mut b, State::Up).await;
    assert_eq!(status(&a).await.counters.drops.authentication, 0);
}

#[tokio::test]
async fn packets_with_the_wrong_key_are_dropped_and_counted() {
    let key = |secret: &[u8]| AuthenticationMode::KeyedSha1 {
        key_id: 1,
        key: Sha1Key::new(secret).expect("valid key"),
    };
    let (a, b) = pair_with(
        LOCALHOST_V4,
        fast(),
        fast(),
        (Some(key(b"one key")), Some(key(b"another key"))),
    )
    .await;
    let dropped = wait_for_status(&a, |status| status.counters.drops.authentication >= 2).await;
    assert_eq!(dropped.state, State::Down);
    assert_eq!(dropped.counters.packets_received, 0);
    assert_eq!(status(&b).await.state, State::Down);
}

#[tokio::test]
async fn a_datagram_with_ttl_other_than_255_is_dropped_and_counted() {
    let speaker = speaker_on(LOCALHOST_V4);
    let destination = SocketAddr::new(LOCALHOST_V4, port_of(&speaker));
    let packet = down_packet(0x1234, 0, State::Down);

    sender_with_ttl(64)
        .send_to(&packet, destination)
        .expect("send");
    let counters = wait_for_counters(&speaker, |counters| counters.datagrams_received == 1).await;
    assert_eq!(counters.drops.wrong_ttl, 1);

    // The same packet at TTL 255 passes the check and only fails to find a session.
    sender_with_ttl(255)
        .send_to(&packet, destination)
        .expect("send");
    let counters = wait_for_counters(&speaker, |counters| counters.datagrams_received == 2).await;
    assert_eq!(counters.drops.wrong_ttl, 1);
    assert_eq!(counters.drops.unknown_peer, 1);
}

#[tokio::test]
async fn garbage_and_unknown_discriminators_are_dropped_and_counted() {
    let (a, _b) = up_pair(LOCALHOST_V4).await;
    let destination = SocketAddr::new(LOCALHOST_V4, port_of(&a.speaker));
    let sender = sender_with_ttl(255);
    let mut version_zero = down_packet(0x1234, 0, State::Down);
    version_zero[0] &= 0b0001_1111;
    sender.send_to(&[0xff; 10], destination).expect("send");
    sender.send_to(&version_zero, destination).expect("send");
    sender.send_to(&[], destination).expect("send");
    sender
        .send_to(&down_packet(0x1234, 0xdead_beef, State::Up), destination)
        .expect("send");

    let counters = wait_for_counters(&a.speaker, |counters| {
        counters.drops.malformed == 3 && counters.drops.unknown_discriminator == 1
    })
    .await;
    assert_eq!(counters.drops.wrong_ttl, 0);
    // None of it disturbed the session.
    assert_eq!(status(&a).await.state, State::Up);
}

#[tokio::test]
async fn a_packet_from_another_peer_with_our_discriminator_is_not_accepted() {
    let (a, _b) = up_pair(LOCALHOST_V4).await;
    let our_discriminator = status(&a).await.local_discriminator;
    let destination = SocketAddr::new(LOCALHOST_V4, port_of(&a.speaker));
    // 127.0.0.2 is loopback too, but not the session's peer.
    let stranger = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind 127.0.0.2");
    stranger.set_ttl(255).expect("set TTL");
    stranger
        .send_to(
            &down_packet(0x1234, our_discriminator, State::Down),
            destination,
        )
        .expect("send");
    let dropped = wait_for_status(&a, |status| status.counters.drops.address_mismatch == 1).await;
    assert_eq!(
        dropped.state,
        State::Up,
        "a spoofed Down must not tear the session down"
    );
}

#[tokio::test]
async fn adding_sessions_checks_families_and_duplicates() {
    let speaker = speaker_on(LOCALHOST_V4);
    let v6_spec = SessionSpec::single_hop(LOCALHOST_V6, LOCALHOST_V6, fast());
    assert!(matches!(
        speaker.add_session(v6_spec).await,
        Err(nublar_bfd::AddSessionError::AddressFamilyNotBound)
    ));
    let mixed = SessionSpec::single_hop(LOCALHOST_V4, LOCALHOST_V6, fast());
    assert!(matches!(
        speaker.add_session(mixed).await,
        Err(nublar_bfd::AddSessionError::AddressFamilyMismatch)
    ));
    let spec = SessionSpec::single_hop(LOCALHOST_V4, LOCALHOST_V4, fast());
    let first = speaker.add_session(spec.clone()).await.expect("first");
    match speaker.add_session(spec.clone()).await {
        Err(nublar_bfd::AddSessionError::DuplicateSession { existing }) => {
            assert_eq!(existing, first)
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let zero_multiplier = Parameters {
        detect_multiplier: 0,
        ..fast()
    };
    let other_peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    assert!(matches!(
        speaker
            .add_session(SessionSpec::single_hop(
                LOCALHOST_V4,
                other_peer,
                zero_multiplier
            ))
            .await,
        Err(nublar_bfd::AddSessionError::InvalidParameters(_))
    ));
    speaker.remove_session(first).await.expect("remove");
    assert!(speaker.sessions().await.expect("runs").is_empty());
    assert_eq!(
        speaker.remove_session(first).await,
        Err(nublar_bfd::SessionError::UnknownSession)
    );
    // The pair is free again.
    speaker.add_session(spec).await.expect("re-add");
}

#[tokio::test]
async fn a_passive_session_waits_for_the_peer_then_comes_up() {
    let passive_speaker = speaker_on(LOCALHOST_V4);
    let active_speaker = speaker_on(LOCALHOST_V4);
    let mut passive = Side {
        session: passive_speaker
            .add_session(SessionSpec {
                passive: true,
                ..spec_towards(&active_speaker, LOCALHOST_V4, fast())
            })
            .await
            .expect("add passive session"),
        events: passive_speaker.subscribe(),
        speaker: passive_speaker,
    };
    // Longer than the one second slow rate: an active session would have sent by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let silent = status(&passive).await;
    assert_eq!(silent.counters.packets_sent, 0, "{silent:#?}");

    let mut active = Side {
        session: active_speaker
            .add_session(spec_towards(&passive.speaker, LOCALHOST_V4, fast()))
            .await
            .expect("add active session"),
        events: active_speaker.subscribe(),
        speaker: active_speaker,
    };
    wait_for_state(&mut passive, State::Up).await;
    wait_for_state(&mut active, State::Up).await;
    assert!(status(&passive).await.counters.packets_sent > 0);
}

#[tokio::test]
async fn subscribers_learn_that_the_speaker_stopped() {
    let speaker = speaker_on(LOCALHOST_V4);
    let mut events = speaker.subscribe();
    speaker.stop().await;
    let outcome = timeout(STATE_WAIT, events.recv()).await.expect("no hang");
    assert_eq!(outcome, Err(broadcast::error::RecvError::Closed));
}

/// Junk at full speed on the IPv4 socket leaves an IPv6 session Up: the speaker keeps reading
/// the other socket, sending and timing. The session runs over IPv6 because junk in the same
/// socket's kernel buffer would crowd out the peer's packets, which no scheduling can prevent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_on_one_socket_leaves_a_session_on_the_other_up() {
    let speaker_a = Speaker::bind(SpeakerConfig {
        ipv4_bind: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        ipv6_bind: Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0)),
    })
    .expect("bind both families");
    let speaker_b = speaker_on(LOCALHOST_V6);
    let mut a = Side {
        session: speaker_a
            .add_session(spec_towards(&speaker_b, LOCALHOST_V6, fast()))
            .await
            .expect("add A"),
        events: speaker_a.subscribe(),
        speaker: speaker_a,
    };
    let port_a_v6 = a.speaker.ipv6_address().expect("bound").port();
    let mut b = Side {
        session: speaker_b
            .add_session(SessionSpec {
                peer_port: port_a_v6,
                ..SessionSpec::single_hop(LOCALHOST_V6, LOCALHOST_V6, fast())
            })
            .await
            .expect("add B"),
        events: speaker_b.subscribe(),
        speaker: speaker_b,
    };
    wait_for_state(&mut a, State::Up).await;
    wait_for_state(&mut b, State::Up).await;
    for side in [&a, &b] {
        wait_for_status(side, |status| {
            !status.poll_active && status.detection_time == Some(Duration::from_millis(300))
        })
        .await;
    }

    let flooded = SocketAddr::V4(a.speaker.ipv4_address().expect("bound"));
    let flood = std::thread::spawn(move || {
        let sender = sender_with_ttl(255);
        let junk = [0xffu8; 24];
        let until = std::time::Instant::now() + Duration::from_millis(1_500);
        while std::time::Instant::now() < until {
            // A full receive buffer only drops junk; the point is to keep the socket readable.
            let _ = sender.send_to(&junk, flooded);
        }
    });
    // Five detection times: any starvation of A shows as a Down on either side.
    let outcome = timeout(Duration::from_millis(1_500), async {
        tokio::select! {
            event = wait_for_state(&mut a, State::Down) => event,
            event = wait_for_state(&mut b, State::Down) => event,
        }
    })
    .await;
    tokio::task::spawn_blocking(move || flood.join().expect("flood thread"))
        .await
        .expect("join");
    assert!(outcome.is_err(), "went Down under the flood: {outcome:?}");
    let counters = a.speaker.counters().await.expect("speaker runs");
    assert!(counters.drops.malformed > 1_000, "{counters:?}");
    assert_eq!(status(&a).await.state, State::Up);
    assert_eq!(status(&b).await.state, State::Up);
}
