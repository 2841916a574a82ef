//! Who may do what: tokens with scopes per database, prefix allow-lists,
//! protected mode, per-token rate limits, and the client address behind
//! trusted proxies.
//!
//! With no token configured, anyone who reaches the node may write (and the
//! node says so loudly at start-up), but reads, operator commands and, when
//! asked, metrics are answered only to clients on this host: protected mode,
//! as Redis has it. "On this host" is judged by the whole path of the
//! request: the client address, the TCP peer and every trusted proxy the
//! request passed are loopback addresses, and no untrusted hop left a
//! forwarding header behind. `protected_mode = false` opens the node
//! wholesale. With tokens, every request needs `Authorization: Token
//! <secret>` (InfluxDB 2) or `Bearer <secret>` (InfluxDB 3) whose scopes
//! cover it; UDP, which carries no token, is then admitted only from the
//! global allow-list.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address prefix such as `2001:db8:7::/48` or `192.0.2.0/24`; a bare
/// address is a prefix of full length. A prefix holds addresses of its own
/// family only: `::/0` is every IPv6 address and no IPv4 one. An IPv4-mapped
/// IPv6 prefix (`::ffff:192.0.2.0/120`) is the IPv4 prefix it maps
/// (`192.0.2.0/24`), since a dual-stack socket shows IPv4 senders in that
/// form; one shorter than /96 would reach past the mapped range and is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Canonical (IPv4 for a mapped prefix), with the bits past `length` cleared.
    network: IpAddr,
    length: u8,
}

/// Where IPv4 sits inside IPv6: `::ffff:0:0/96`.
const MAPPED_PREFIX_LENGTH: u8 = 96;

impl Prefix {
    /// Whether `candidate` lies inside the prefix. A mapped IPv6 candidate is
    /// the IPv4 address it maps.
    pub fn contains(&self, candidate: IpAddr) -> bool {
        match (self.network, crate::canonical_ip(candidate)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                masked(u128::from(u32::from(address)), self.length, 32)
                    == u128::from(u32::from(network))
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                masked(u128::from(address), self.length, 128) == u128::from(network)
            }
            _ => false,
        }
    }

    pub fn length(&self) -> u8 {
        self.length
    }
}

/// `bits` (an address `width` bits wide) with everything after the first
/// `length` bits cleared. `length` is at most `width`.
fn masked(bits: u128, length: u8, width: u8) -> u128 {
    debug_assert!(length <= width && width <= 128);
    if length == 0 {
        return 0;
    }
    let shift = u32::from(width - length);
    (bits >> shift) << shift
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Prefix, String> {
        let (address, length) = match text.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or prefix"))?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let length = match length {
            None => width,
            Some(length) => length
                .parse::<u8>()
                .ok()
                .filter(|&length| length <= width)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {width}"))?,
        };
        // The width must be taken in the family the address ends up in: a
        // mapped /120 is an IPv4 /24, and a mapped prefix shorter than /96
        // reaches past the mapped range, where no IPv4 address lives.
        let (network, length) = match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if length >= MAPPED_PREFIX_LENGTH => {
                    (IpAddr::V4(v4), length - MAPPED_PREFIX_LENGTH)
                }
                Some(_) => {
                    return Err(format!(
                        "{text:?}: an IPv4-mapped prefix must be /{MAPPED_PREFIX_LENGTH} or \
                         longer (::ffff:a.b.c.d/{} is a.b.c.d/n); write the IPv4 prefix instead",
                        u16::from(MAPPED_PREFIX_LENGTH) + 24
                    ));
                }
                None => (IpAddr::V6(v6), length),
            },
            v4 => (v4, length),
        };
        let network = match network {
            IpAddr::V4(v4) => {
                IpAddr::V4((masked(u128::from(u32::from(v4)), length, 32) as u32).into())
            }
            IpAddr::V6(v6) => IpAddr::V6(masked(u128::from(v6), length, 128).into()),
        };
        Ok(Prefix { network, length })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.network, self.length)
    }
}

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `write:<db>` or `write:*`.
    Write(String),
    /// `read:<db>` or `read:*`: SQL and latest state.
    Read(String),
    /// `metrics`: `/metrics` and `/ready`, when `protect_metrics` is set.
    Metrics,
    /// Operator commands on the node; implies every other scope.
    Admin,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Scope, String> {
        match text.split_once(':') {
            _ if text == "admin" => Ok(Scope::Admin),
            _ if text == "metrics" => Ok(Scope::Metrics),
            Some(("write", db)) if !db.is_empty() => Ok(Scope::Write(db.to_owned())),
            Some(("read", db)) if !db.is_empty() => Ok(Scope::Read(db.to_owned())),
            _ => Err(format!(
                "unknown scope {text:?}: expected write:<db>, read:<db> (or * for all), \
                 metrics or admin"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// A name for logs and metrics; the secret is never logged.
    pub name: String,
    pub secret: String,
    pub scopes: Vec<Scope>,
    /// When not empty, the token is accepted only from these prefixes.
    pub allow: Vec<Prefix>,
    /// Events per second the token may write, on average; `None`: no limit.
    pub events_per_second_max: Option<u64>,
}

/// Which header the trusted proxies write the client's address into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …`, as nginx's
    /// `$proxy_add_x_forwarded_for` writes it.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

impl FromStr for ForwardedHeader {
    type Err = String;
    fn from_str(text: &str) -> Result<ForwardedHeader, String> {
        if text.eq_ignore_ascii_case("x-forwarded-for") {
            Ok(ForwardedHeader::XForwardedFor)
        } else if text.eq_ignore_ascii_case("forwarded") {
            Ok(ForwardedHeader::Forwarded)
        } else {
            Err(format!(
                "unknown forwarding header {text:?}: expected X-Forwarded-For or Forwarded"
            ))
        }
    }
}

/// Headers that say a request came through a proxy, whichever the proxy is.
const FORWARDING_HEADERS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessConfig {
    pub tokens: Vec<Token>,
    /// When not empty, only senders in these prefixes may write at all (and,
    /// once tokens are configured, the only way UDP is admitted).
    pub allow: Vec<Prefix>,
    /// Proxies whose forwarding header is believed.
    pub trusted_proxies: Vec<Prefix>,
    /// The one header the trusted proxies write; any other is ignored.
    pub forwarded_header: ForwardedHeader,
    /// With no token configured, answer reads and operator commands only to
    /// clients on this host.
    pub protected_mode: bool,
    /// `/metrics` and `/ready` need the `metrics` scope (or, with no token
    /// configured, a client on this host).
    pub protect_metrics: bool,
}

impl Default for AccessConfig {
    fn default() -> AccessConfig {
        AccessConfig {
            tokens: Vec::new(),
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            protected_mode: true,
            protect_metrics: false,
        }
    }
}

/// Who sent a request, as far as the node can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the TCP peer's, or the one trusted proxies name.
    pub address: IpAddr,
    /// The request never left this host: client, peer and every trusted
    /// proxy between are loopback addresses, and no untrusted proxy marked it.
    pub local: bool,
}

/// What a request asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    Write(&'a str),
    Read(&'a str),
    /// `/metrics` and `/ready`.
    Metrics,
    Admin,
}

/// What an admitted request was admitted as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The token's name, when one was presented.
    pub token: Option<String>,
    pub events_per_second_max: Option<u64>,
}

/// Why a request may not proceed.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No usable token: 401.
    Unauthenticated(String),
    /// A token or sender without the right: 403.
    Forbidden(String),
}

impl Denied {
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            Denied::Unauthenticated(_) => axum::http::StatusCode::UNAUTHORIZED,
            Denied::Forbidden(_) => axum::http::StatusCode::FORBIDDEN,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Denied::Unauthenticated(message) | Denied::Forbidden(message) => message,
        }
    }
}

impl AccessConfig {
    /// No token is configured.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Everything that reads or deletes is open to any address: no token and
    /// protected mode off.
    pub fn is_unprotected(&self) -> bool {
        self.is_open() && !self.protected_mode
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for token in &self.tokens {
            if token.name.is_empty() {
                return Err("a token has an empty name".into());
            }
            if !names.insert(token.name.as_str()) {
                return Err(format!("two tokens are named {:?}", token.name));
            }
            if token.secret.is_empty() {
                return Err(format!("token {:?} has an empty secret", token.name));
            }
            if token.events_per_second_max == Some(0) {
                return Err(format!(
                    "token {:?}: events_per_second_max must be at least 1 (leave it out for \
                     no limit)",
                    token.name
                ));
            }
        }
        Ok(())
    }

    /// Who sent a request that arrived from `peer` with `headers`.
    ///
    /// From a trusted proxy, the configured forwarding header is walked from
    /// the right (the hop nearest the node) outwards: trusted proxies are
    /// skipped and the first other address is the client. A hop that is not
    /// an address (`unknown`, an obfuscated `_name`, garbage) ends the walk,
    /// and the request is the last trusted hop's: anything further out is
    /// the client's own word. From any other peer no header is believed.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let peer = crate::canonical_ip(peer);
        if !self.is_trusted_proxy(peer) {
            // A proxy on this host that is not trusted still marks what it
            // forwards: its clients are not this host's, whatever the peer.
            let proxied = FORWARDING_HEADERS
                .iter()
                .any(|name| headers.contains_key(*name));
            return Client {
                address: peer,
                local: peer.is_loopback() && !proxied,
            };
        }
        let mut last_trusted = peer;
        let mut path_local = peer.is_loopback();
        for hop in forwarding_hops(headers, self.forwarded_header)
            .into_iter()
            .rev()
        {
            match hop {
                Some(address) if self.is_trusted_proxy(address) => {
                    last_trusted = address;
                    path_local &= address.is_loopback();
                }
                Some(address) => {
                    return Client {
                        address,
                        local: path_local && address.is_loopback(),
                    };
                }
                None => break,
            }
        }
        Client {
            address: last_trusted,
            local: path_local,
        }
    }

    fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|proxy| proxy.contains(address))
    }

    /// Whether `client`, presenting `headers`, may do `action`.
    pub fn authorize(
        &self,
        client: &Client,
        headers: &HeaderMap,
        action: Action<'_>,
    ) -> Result<Grant, Denied> {
        if action == Action::Metrics && !self.protect_metrics {
            return Ok(Grant::default());
        }
        let sender = client.address;
        if !self.allow.is_empty() && !self.allow.iter().any(|prefix| prefix.contains(sender)) {
            return Err(Denied::Forbidden(format!(
                "{sender} is not in the allowed prefixes"
            )));
        }
        if self.is_open() {
            let protected = self.protected_mode && !matches!(action, Action::Write(_));
            if protected && !client.local {
                return Err(Denied::Forbidden(format!(
                    "{} is answered only to clients on this host while no token is configured \
                     (protected mode); configure [[access.tokens]], or set \
                     access.protected_mode = false to open the node to every address",
                    action.describe()
                )));
            }
            return Ok(Grant::default());
        }
        let secret = presented_secret(headers).ok_or_else(|| {
            Denied::Unauthenticated("a token is required: Authorization: Token <token>".into())
        })?;
        let token = self
            .tokens
            .iter()
            .find(|token| constant_time_equal(token.secret.as_bytes(), secret.as_bytes()))
            .ok_or_else(|| Denied::Unauthenticated("the token is not valid".into()))?;
        if !token.allow.is_empty() && !token.allow.iter().any(|prefix| prefix.contains(sender)) {
            return Err(Denied::Forbidden(format!(
                "token {:?} is not accepted from {sender}",
                token.name
            )));
        }
        if token.scopes.iter().any(|scope| action.granted_by(scope)) {
            Ok(Grant {
                token: Some(token.name.clone()),
                events_per_second_max: token.events_per_second_max,
            })
        } else {
            Err(Denied::Forbidden(format!(
                "token {:?} may not {}",
                token.name,
                action.describe()
            )))
        }
    }

    /// Whether a UDP datagram from `sender` is admitted.
    pub fn check_udp(&self, sender: IpAddr) -> bool {
        let listed = self.allow.iter().any(|prefix| prefix.contains(sender));
        if self.is_open() {
            self.allow.is_empty() || listed
        } else {
            listed
        }
    }
}

impl Action<'_> {
    fn granted_by(self, scope: &Scope) -> bool {
        match (self, scope) {
            (_, Scope::Admin) => true,
            (Action::Write(db), Scope::Write(scoped)) | (Action::Read(db), Scope::Read(scoped)) => {
                scoped == "*" || scoped == db
            }
            (Action::Metrics, Scope::Metrics) => true,
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Action::Write(db) => format!("write to {db:?}"),
            Action::Read(db) => format!("read {db:?}"),
            Action::Metrics => "read metrics and readiness".into(),
            Action::Admin => "run operator commands".into(),
        }
    }
}

/// The hops the forwarding header lists, client first; `None` for a hop that
/// is not an address. Several header lines read as one list, in order.
fn forwarding_hops(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(header.name()) {
        // A value that is not text cannot be trusted in any part; it ends the
        // walk where it stands.
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        // Commas are split on without regard to quotes: a client's unclosed
        // quote must not swallow the element a proxy appended after it.
        for element in value.split(',') {
            let hop = match header {
                ForwardedHeader::XForwardedFor => hop_address(element),
                ForwardedHeader::Forwarded => element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| hop_address(value)),
            };
            hops.push(hop);
        }
    }
    hops
}

/// The address of one hop: `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::17`,
/// `[2001:db8::17]:4711`, optionally quoted; `unknown` and obfuscated names
/// are not addresses.
fn hop_address(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value);
    let host = match value.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
                return None;
            }
            host
        }
        None => match value.split_once(':') {
            // One colon: IPv4 with a port. More: a bare IPv6 address.
            Some((host, port)) if !port.contains(':') => {
                if !is_port(port) {
                    return None;
                }
                host
            }
            _ => value,
        },
    };
    host.parse().ok().map(crate::canonical_ip)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|byte| byte.is_ascii_digit())
}

fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, secret) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| secret.trim().to_owned())
}

/// Compares secrets in time that does not depend on where they differ, so
/// timing does not reveal how much of a guess was right.
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    left.ct_eq(right).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_match_their_addresses_only() {
        let cases = [
            ("2001:db8:7::/48", "2001:db8:7:1::9", true),
            ("2001:db8:7::/48", "2001:db8:8::1", false),
            ("192.0.2.0/24", "192.0.2.77", true),
            ("192.0.2.0/24", "192.0.3.1", false),
            // A dual-stack socket shows IPv4 senders mapped: the same host.
            ("192.0.2.0/24", "::ffff:192.0.2.5", true),
            ("::ffff:192.0.2.0/120", "192.0.2.200", true),
            ("::ffff:192.0.2.0/120", "192.0.3.1", false),
            ("::ffff:192.0.2.0/120", "::ffff:192.0.2.9", true),
            ("::ffff:192.0.2.0/96", "203.0.113.1", true),
            ("::ffff:192.0.2.0/96", "2001:db8::1", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("::/0", "::1", true),
            // IPv6 prefixes hold IPv6 addresses: IPv4 senders are the other family.
            ("::/0", "192.0.2.1", false),
            ("::/0", "::ffff:192.0.2.1", false),
            ("::1", "::1", true),
            ("::1", "::2", false),
            ("192.0.2.77/24", "192.0.2.1", true),
        ];
        for (network, candidate, expected) in cases {
            assert_eq!(
                prefix(network).contains(address(candidate)),
                expected,
                "{network} {candidate}"
            );
        }
        assert_eq!(prefix("::ffff:192.0.2.0/120").to_string(), "192.0.2.0/24");
        assert_eq!(prefix("192.0.2.77/24").to_string(), "192.0.2.0/24");
        assert_eq!(prefix("::ffff:10.1.2.3").to_string(), "10.1.2.3/32");
        for bad in [
            "10.0.0.0/33",
            "nonsense",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
        let error = "::ffff:10.0.0.0/8".parse::<Prefix>().unwrap_err();
        assert!(error.contains("/96 or longer"), "{error}");
    }

    /// The documented meaning, computed another way: every address as 128
    /// bits in the mapped space with its family (IPv4 for a mapped address);
    /// a prefix holds the addresses of its own family whose leading bits are
    /// its own. `None` where the prefix must be refused.
    fn reference_contains(network: IpAddr, length: u8, candidate: IpAddr) -> Option<bool> {
        let mapped = |address: IpAddr| match address {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), true),
            IpAddr::V6(v6) => (u128::from(v6), v6.to_ipv4_mapped().is_some()),
        };
        let (network_bits, network_is_v4) = mapped(network);
        let length = if network.is_ipv4() {
            u32::from(length) + 96
        } else {
            u32::from(length)
        };
        if network_is_v4 && length < 96 {
            return None;
        }
        let (candidate_bits, candidate_is_v4) = mapped(candidate);
        if candidate_is_v4 != network_is_v4 {
            return Some(false);
        }
        let mask = if length == 0 {
            0
        } else {
            u128::MAX << (128 - length)
        };
        Some(network_bits & mask == candidate_bits & mask)
    }

    fn any_address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|bits| IpAddr::V4(bits.into())),
            any::<u128>().prop_map(|bits| IpAddr::V6(bits.into())),
            any::<u32>()
                .prop_map(|bits| IpAddr::V6(std::net::Ipv4Addr::from(bits).to_ipv6_mapped())),
        ]
    }

    proptest! {
        #[test]
        fn prefix_matching_agrees_with_the_mapped_space_reference(
            network in any_address(),
            width in 0u8..=128,
            candidate in any_address(),
            near in any::<bool>(),
            flip in 0u32..128,
        ) {
            let length = if network.is_ipv4() { width % 33 } else { width };
            // Half the candidates are the network with one low bit changed, so
            // that matches are as common as misses.
            let candidate = if near {
                match network {
                    IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) ^ (1 << (flip % 32))).into()),
                    IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) ^ (1 << flip)).into()),
                }
            } else {
                candidate
            };
            let text = format!("{network}/{length}");
            let parsed = text.parse::<Prefix>();
            match reference_contains(network, length, candidate) {
                None => prop_assert!(parsed.is_err(), "{text} should be refused"),
                Some(expected) => {
                    let parsed = parsed.unwrap();
                    prop_assert_eq!(parsed.contains(candidate), expected, "{} {}", text, candidate);
                    // The canonical text means the same prefix.
                    let again: Prefix = parsed.to_string().parse().unwrap();
                    prop_assert_eq!(again, parsed);
                }
            }
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn behind(trusted: &[&str], header: ForwardedHeader) -> AccessConfig {
        AccessConfig {
            trusted_proxies: trusted.iter().map(|text| prefix(text)).collect(),
            forwarded_header: header,
            ..AccessConfig::default()
        }
    }

    #[test]
    fn the_forwarding_chain_is_walked_from_the_right_past_trusted_proxies_only() {
        let config = behind(&["10.0.0.0/8", "::1"], ForwardedHeader::XForwardedFor);
        let check = |peer: &str, pairs: &[(&str, &str)], expected: &str, local: bool| {
            let client = config.resolve(address(peer), &headers(pairs));
            assert_eq!(
                client,
                Client {
                    address: address(expected),
                    local
                },
                "{peer} {pairs:?}"
            );
        };
        let xff = "x-forwarded-for";
        // The client's own claim sits left of what the proxies appended.
        check(
            "10.2.2.2",
            &[(xff, "127.0.0.1, 203.0.113.7, 10.1.1.1")],
            "203.0.113.7",
            false,
        );
        // Two header lines are one list.
        check(
            "10.2.2.2",
            &[(xff, "198.51.100.1"), (xff, "10.1.1.1")],
            "198.51.100.1",
            false,
        );
        // An untrusted peer's header is not believed, nor does it make the peer local.
        check("198.51.100.9", &[(xff, "127.0.0.1")], "198.51.100.9", false);
        check("127.0.0.1", &[(xff, "127.0.0.1")], "127.0.0.1", false);
        check(
            "127.0.0.1",
            &[("forwarded", "for=127.0.0.1")],
            "127.0.0.1",
            false,
        );
        check("127.0.0.1", &[], "127.0.0.1", true);
        // Only the configured header counts: a client's Forwarded is ignored.
        check(
            "::1",
            &[("forwarded", "for=127.0.0.1"), (xff, "2001:db8::5")],
            "2001:db8::5",
            false,
        );
        // A local client through a local trusted proxy is local; through a
        // remote trusted proxy it cannot be.
        check("::1", &[(xff, "::1")], "::1", true);
        check("10.2.2.2", &[(xff, "127.0.0.1")], "127.0.0.1", false);
        // An unparseable hop ends the walk at the last trusted hop.
        check(
            "10.2.2.2",
            &[(xff, "203.0.113.7, unknown, 10.1.1.1")],
            "10.1.1.1",
            false,
        );
        check("::1", &[(xff, "203.0.113.7, _hidden")], "::1", true);
        check(
            "10.2.2.2",
            &[(xff, "203.0.113.7, 10.3.3.3:99999x")],
            "10.2.2.2",
            false,
        );
        // Ports and brackets are a hop's address too.
        check(
            "10.2.2.2",
            &[(xff, "[2001:db8::9]:4711")],
            "2001:db8::9",
            false,
        );
        check("10.2.2.2", &[(xff, "192.0.2.1:80")], "192.0.2.1", false);
        // Every hop trusted: the furthest one is the client.
        check(
            "10.2.2.2",
            &[(xff, "10.4.4.4, 10.5.5.5")],
            "10.4.4.4",
            false,
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_configured_and_then_only_it() {
        let config = behind(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let resolve = |pairs: &[(&str, &str)]| config.resolve(address("10.2.2.2"), &headers(pairs));
        assert_eq!(
            resolve(&[("forwarded", "for=\"[2001:db8::5]:4711\";proto=http")]).address,
            address("2001:db8::5")
        );
        assert_eq!(
            resolve(&[
                ("x-forwarded-for", "192.0.2.1"),
                ("forwarded", "for=198.51.100.4, for=10.1.1.1;by=10.9.9.9")
            ])
            .address,
            address("198.51.100.4")
        );
        assert_eq!(
            resolve(&[("forwarded", "for=192.0.2.3, for=_hidden, for=10.1.1.1")]).address,
            address("10.1.1.1")
        );
        // An unclosed quote of the client's does not swallow the proxy's element.
        assert_eq!(
            resolve(&[("forwarded", "for=\"127.0.0.1, for=203.0.113.50")]).address,
            address("203.0.113.50")
        );
        // An element without for= is not an address either.
        assert_eq!(
            resolve(&[("forwarded", "for=192.0.2.3, proto=https")]).address,
            address("10.2.2.2")
        );
    }

    fn token(name: &str, scopes: &[&str]) -> Token {
        Token {
            name: name.into(),
            secret: format!("secret-{name}"),
            scopes: scopes.iter().map(|scope| scope.parse().unwrap()).collect(),
            allow: Vec::new(),
            events_per_second_max: None,
        }
    }

    fn bearer(name: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer secret-{name}"))])
    }

    #[test]
    fn without_tokens_only_this_host_reads_and_administers_unless_opened() {
        let remote = Client {
            address: address("2001:db8:7::9"),
            local: false,
        };
        let local = Client {
            address: address("::1"),
            local: true,
        };
        let none = HeaderMap::new();
        let protected = AccessConfig::default();
        assert!(
            protected
                .authorize(&remote, &none, Action::Write("park"))
                .is_ok()
        );
        assert!(protected.authorize(&remote, &none, Action::Metrics).is_ok());
        for action in [Action::Read("park"), Action::Admin] {
            let denied = protected.authorize(&remote, &none, action).unwrap_err();
            assert!(denied.message().contains("protected mode"), "{denied:?}");
            assert!(protected.authorize(&local, &none, action).is_ok());
        }
        let metrics_too = AccessConfig {
            protect_metrics: true,
            ..AccessConfig::default()
        };
        assert!(
            metrics_too
                .authorize(&remote, &none, Action::Metrics)
                .is_err()
        );
        assert!(
            metrics_too
                .authorize(&local, &none, Action::Metrics)
                .is_ok()
        );
        let open = AccessConfig {
            protected_mode: false,
            ..AccessConfig::default()
        };
        assert!(open.is_unprotected());
        assert!(open.authorize(&remote, &none, Action::Admin).is_ok());
    }

    #[test]
    fn with_tokens_every_scope_is_checked_even_on_this_host() {
        let config = AccessConfig {
            tokens: vec![
                token("writer", &["write:park"]),
                token("reader", &["read:*"]),
                token("scraper", &["metrics"]),
                token("operator", &["admin"]),
            ],
            protect_metrics: true,
            ..AccessConfig::default()
        };
        let local = Client {
            address: address("127.0.0.1"),
            local: true,
        };
        let cases = [
            ("writer", Action::Write("park"), true),
            ("writer", Action::Write("zoo"), false),
            ("writer", Action::Read("park"), false),
            ("reader", Action::Read("zoo"), true),
            ("reader", Action::Metrics, false),
            ("scraper", Action::Metrics, true),
            ("scraper", Action::Admin, false),
            ("operator", Action::Admin, true),
            ("operator", Action::Metrics, true),
            ("operator", Action::Write("park"), true),
        ];
        for (name, action, allowed) in cases {
            let outcome = config.authorize(&local, &bearer(name), action);
            assert_eq!(outcome.is_ok(), allowed, "{name} {action:?}: {outcome:?}");
        }
        assert!(matches!(
            config.authorize(&local, &HeaderMap::new(), Action::Read("park")),
            Err(Denied::Unauthenticated(_))
        ));
        let grant = config
            .authorize(&local, &bearer("writer"), Action::Write("park"))
            .unwrap();
        assert_eq!(grant.token.as_deref(), Some("writer"));
    }
}
