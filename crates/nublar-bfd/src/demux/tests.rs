use std::collections::HashMap;
use std::net::Ipv6Addr;

use proptest::prelude::*;

use super::*;
use crate::packet::{Diagnostic, SimplePassword};

const LOCAL: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
const PEER: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
const OTHER: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3));

/// Sessions by discriminator and by address pair, as the speaker keeps them.
#[derive(Default)]
struct Table {
    by_discriminator: HashMap<u32, u8>,
    by_addresses: HashMap<(IpAddr, IpAddr), u8>,
}

impl Sessions<u8> for Table {
    fn by_discriminator(&self, discriminator: u32) -> Option<u8> {
        self.by_discriminator.get(&discriminator).copied()
    }

    fn by_addresses(&self, local: IpAddr, peer: IpAddr) -> Option<u8> {
        self.by_addresses.get(&(local, peer)).copied()
    }
}

fn one_session() -> Table {
    let mut table = Table::default();
    table.by_discriminator.insert(7, 1);
    table.by_addresses.insert((LOCAL, PEER), 1);
    table
}

fn packet(state: State, your_discriminator: u32) -> ControlPacket {
    ControlPacket {
        diagnostic: Diagnostic::NoDiagnostic,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_multiplier: 3,
        my_discriminator: 99,
        your_discriminator,
        desired_min_tx_interval_us: 300_000,
        required_min_rx_interval_us: 300_000,
        required_min_echo_rx_interval_us: 0,
        authentication: None,
    }
}

fn wire(packet: &ControlPacket) -> Vec<u8> {
    let mut buffer = [0u8; 128];
    let length = packet.encode(&mut buffer).unwrap();
    buffer[..length].to_vec()
}

fn arrival(hop_limit: Option<u8>) -> Arrival {
    Arrival {
        source: PEER,
        destination: Some(LOCAL),
        hop_limit,
        multihop: false,
    }
}

fn policy(sessions_max: usize, authentication: Option<AuthenticationMode>) -> AcceptPolicy {
    AcceptPolicy {
        admit: Arc::new(|address| address == PEER),
        parameters: Parameters {
            desired_min_tx_interval_us: 300_000,
            required_min_rx_interval_us: 300_000,
            detect_multiplier: 3,
        },
        authentication,
        sessions_max,
        idle: Duration::from_secs(60),
    }
}

#[test]
fn single_hop_takes_only_ttl_255_and_multihop_any_ttl_it_is_told() {
    let bytes = wire(&packet(State::Up, 7));
    for hop_limit in [None, Some(254), Some(1)] {
        assert_eq!(
            route(&arrival(hop_limit), &bytes, &one_session()).unwrap_err(),
            Dropped::WrongTtl
        );
    }
    let (_, routed) = route(&arrival(Some(255)), &bytes, &one_session()).unwrap();
    assert_eq!(routed, Route::Session(1));
    let multihop = Arrival {
        multihop: true,
        ..arrival(Some(250))
    };
    assert_eq!(
        route(&multihop, &bytes, &one_session()).unwrap().1,
        Route::Session(1)
    );
    let untold = Arrival {
        multihop: true,
        ..arrival(None)
    };
    assert_eq!(
        route(&untold, &bytes, &one_session()).unwrap_err(),
        Dropped::WrongTtl
    );
}

#[test]
fn a_discriminator_names_its_session_and_zero_falls_back_to_the_addresses() {
    let table = one_session();
    let by_addresses = wire(&packet(State::Down, 0));
    assert_eq!(
        route(&arrival(Some(255)), &by_addresses, &table).unwrap().1,
        Route::Session(1)
    );
    let unknown = wire(&packet(State::Up, 8));
    assert_eq!(
        route(&arrival(Some(255)), &unknown, &table).unwrap_err(),
        Dropped::UnknownDiscriminator
    );
    let stranger = Arrival {
        source: OTHER,
        ..arrival(Some(255))
    };
    assert_eq!(
        route(&stranger, &by_addresses, &table).unwrap().1,
        Route::Stranger
    );
    assert_eq!(
        route(&arrival(Some(255)), b"\x20\x40", &table).unwrap_err(),
        Dropped::Malformed
    );
}

#[test]
fn a_session_takes_only_packets_from_its_peer_to_its_address_on_its_socket() {
    let bound = Bound {
        local: LOCAL,
        peer: PEER,
        multihop: None,
    };
    assert_eq!(admit_to(&arrival(Some(255)), &bound), Ok(()));
    let from_elsewhere = Arrival {
        source: OTHER,
        ..arrival(Some(255))
    };
    assert_eq!(
        admit_to(&from_elsewhere, &bound),
        Err(Dropped::AddressMismatch)
    );
    let to_elsewhere = Arrival {
        destination: Some(OTHER),
        ..arrival(Some(255))
    };
    assert_eq!(
        admit_to(&to_elsewhere, &bound),
        Err(Dropped::AddressMismatch)
    );
    let on_the_multihop_socket = Arrival {
        multihop: true,
        ..arrival(Some(255))
    };
    assert_eq!(
        admit_to(&on_the_multihop_socket, &bound),
        Err(Dropped::AddressMismatch),
        "a single-hop session never takes a packet whose TTL met only a minimum"
    );
    let multihop = Bound {
        multihop: Some(Multihop { min_ttl: 250 }),
        ..bound
    };
    let arrived = |ttl| Arrival {
        multihop: true,
        ..arrival(Some(ttl))
    };
    assert_eq!(admit_to(&arrived(250), &multihop), Ok(()));
    assert_eq!(admit_to(&arrived(249), &multihop), Err(Dropped::WrongTtl));
}

#[test]
fn a_stranger_gets_a_session_only_as_the_policy_says() {
    let down = packet(State::Down, 0);
    let bytes = wire(&down);
    let received = |bytes| {
        route(&arrival(Some(255)), bytes, &Table::default())
            .unwrap()
            .0
    };
    let open = policy(2, None);
    assert_eq!(
        accept(Some(&open), 0, &arrival(Some(255)), &received(&bytes)),
        Ok(LOCAL)
    );
    assert_eq!(
        accept(None, 0, &arrival(Some(255)), &received(&bytes)),
        Err(Dropped::UnknownPeer),
        "no policy, no strangers"
    );
    assert_eq!(
        accept(Some(&open), 2, &arrival(Some(255)), &received(&bytes)),
        Err(Dropped::AcceptLimit)
    );
    let not_admitted = Arrival {
        source: OTHER,
        ..arrival(Some(255))
    };
    assert_eq!(
        accept(Some(&open), 0, &not_admitted, &received(&bytes)),
        Err(Dropped::UnknownPeer)
    );
    let admin_down = wire(&packet(State::AdminDown, 0));
    assert_eq!(
        accept(Some(&open), 0, &arrival(Some(255)), &received(&admin_down)),
        Err(Dropped::UnknownPeer),
        "only Down starts a session"
    );
    let unsaid = Arrival {
        destination: None,
        ..arrival(Some(255))
    };
    assert_eq!(
        accept(Some(&open), 0, &unsaid, &received(&bytes)),
        Err(Dropped::UnknownPeer),
        "the local address must be known"
    );

    let mode = AuthenticationMode::SimplePassword {
        key_id: 1,
        password: SimplePassword::new(b"fence").unwrap(),
    };
    let guarded = policy(2, Some(mode.clone()));
    assert_eq!(
        accept(Some(&guarded), 0, &arrival(Some(255)), &received(&bytes)),
        Err(Dropped::AcceptAuthentication),
        "an unauthenticated first packet opens nothing"
    );
    let mut sealed = down.clone();
    Authenticator::new(mode, 0).seal(&mut sealed).unwrap();
    let sealed = wire(&sealed);
    assert_eq!(
        accept(Some(&guarded), 0, &arrival(Some(255)), &received(&sealed)),
        Ok(LOCAL)
    );
}

proptest! {
    #[test]
    fn any_bytes_from_anywhere_route_or_drop_without_panicking(
        payload in proptest::collection::vec(any::<u8>(), 0..80),
        hop_limit in proptest::option::of(any::<u8>()),
        multihop in any::<bool>(),
        to_us in any::<bool>(),
    ) {
        let arrival = Arrival {
            source: PEER,
            destination: to_us.then_some(LOCAL),
            hop_limit,
            multihop,
        };
        let table = one_session();
        if let Ok((received, routed)) = route(&arrival, &payload, &table) {
            prop_assert!(multihop || hop_limit == Some(SINGLE_HOP_TTL));
            prop_assert!(received.wire.len() <= payload.len());
            if routed == Route::Stranger {
                prop_assert_eq!(received.packet.your_discriminator, 0);
                let _ = accept(Some(&policy(1, None)), 0, &arrival, &received);
            }
        }
    }
}
