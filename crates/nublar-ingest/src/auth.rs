//! Who may write where: tokens with scopes per database, prefix allow-lists,
//! and the client address behind a trusted proxy.
//!
//! With no token configured the gateway is open (and says so loudly at
//! start-up). With tokens, an HTTP write needs `Authorization: Token <secret>`
//! (InfluxDB 2) or `Bearer <secret>` (InfluxDB 3) whose scopes cover the
//! database; UDP, which carries no token, is then admitted only from the
//! global allow-list.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address prefix such as `2001:db8:7::/48` or `192.0.2.0/24`; a bare
/// address is a prefix of full length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    address: IpAddr,
    length: u8,
}

impl Prefix {
    pub fn contains(&self, candidate: IpAddr) -> bool {
        match (self.address, candidate) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                masked(u128::from(u32::from(network)), self.length, 32)
                    == masked(u128::from(u32::from(address)), self.length, 32)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                masked(u128::from(network), self.length, 128)
                    == masked(u128::from(address), self.length, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, length: u8, width: u8) -> u128 {
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
        Ok(Prefix {
            address: crate::canonical_ip(address),
            length,
        })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.address, self.length)
    }
}

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `write:<db>` or `write:*`.
    Write(String),
    /// `read:<db>` or `read:*`.
    Read(String),
    /// Operator commands on the node.
    Admin,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Scope, String> {
        match text.split_once(':') {
            _ if text == "admin" => Ok(Scope::Admin),
            Some(("write", db)) if !db.is_empty() => Ok(Scope::Write(db.to_owned())),
            Some(("read", db)) if !db.is_empty() => Ok(Scope::Read(db.to_owned())),
            _ => Err(format!(
                "unknown scope {text:?}: expected write:<db>, read:<db> (or * for all) or admin"
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessConfig {
    pub tokens: Vec<Token>,
    /// When not empty, only senders in these prefixes may write at all (and,
    /// once tokens are configured, the only way UDP is admitted).
    pub allow: Vec<Prefix>,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers are believed.
    pub trusted_proxies: Vec<Prefix>,
}

/// Why a request may not write.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No usable token: 401.
    Unauthenticated(String),
    /// A token or sender without the right: 403.
    Forbidden(String),
}

impl AccessConfig {
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the nearest address in the forwarding headers that is not one.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = crate::canonical_ip(peer);
        if !self
            .trusted_proxies
            .iter()
            .any(|proxy| proxy.contains(peer))
        {
            return peer;
        }
        let mut chain: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("forwarded") {
            let Ok(value) = value.to_str() else { continue };
            for element in value.split(',') {
                for pair in element.split(';') {
                    let Some((key, value)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    if key.eq_ignore_ascii_case("for")
                        && let Some(address) = forwarded_for(value)
                    {
                        chain.push(address);
                    }
                }
            }
        }
        if chain.is_empty() {
            for value in headers.get_all("x-forwarded-for") {
                let Ok(value) = value.to_str() else { continue };
                chain.extend(
                    value
                        .split(',')
                        .filter_map(|part| part.trim().parse().ok())
                        .map(crate::canonical_ip),
                );
            }
        }
        // Walk from the nearest hop outwards; the first address that is not a
        // trusted proxy is the client (anything further out is the client's word).
        chain
            .into_iter()
            .rev()
            .find(|address| {
                !self
                    .trusted_proxies
                    .iter()
                    .any(|proxy| proxy.contains(*address))
            })
            .unwrap_or(peer)
    }

    /// Whether `sender` with these headers may write to `db` over HTTP.
    pub fn check_write(&self, sender: IpAddr, headers: &HeaderMap, db: &str) -> Result<(), Denied> {
        self.check(
            sender,
            headers,
            &format!("write to {db:?}"),
            |scope| match scope {
                Scope::Write(scoped) => scoped == "*" || scoped == db,
                Scope::Admin => true,
                Scope::Read(_) => false,
            },
        )
    }

    /// Whether `sender` with these headers may query `db`.
    pub fn check_read(&self, sender: IpAddr, headers: &HeaderMap, db: &str) -> Result<(), Denied> {
        self.check(
            sender,
            headers,
            &format!("read {db:?}"),
            |scope| match scope {
                Scope::Read(scoped) => scoped == "*" || scoped == db,
                Scope::Admin => true,
                Scope::Write(_) => false,
            },
        )
    }

    /// Whether `sender` with these headers may run operator commands.
    pub fn check_admin(&self, sender: IpAddr, headers: &HeaderMap) -> Result<(), Denied> {
        self.check(sender, headers, "run operator commands", |scope| {
            *scope == Scope::Admin
        })
    }

    fn check(
        &self,
        sender: IpAddr,
        headers: &HeaderMap,
        action: &str,
        grants: impl Fn(&Scope) -> bool,
    ) -> Result<(), Denied> {
        if !self.allow.is_empty() && !self.allow.iter().any(|prefix| prefix.contains(sender)) {
            return Err(Denied::Forbidden(format!(
                "{sender} is not in the allowed prefixes"
            )));
        }
        if self.is_open() {
            return Ok(());
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
        if token.scopes.iter().any(grants) {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "token {:?} may not {action}",
                token.name
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

/// The address in a `Forwarded` header's `for=` value: `192.0.2.60`,
/// `"192.0.2.60:4711"` or `"[2001:db8::17]:4711"`; `unknown` and obfuscated
/// names are not addresses.
fn forwarded_for(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    let host = match value.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None if value.matches(':').count() == 1 => value.split(':').next()?,
        None => value,
    };
    host.parse().ok().map(crate::canonical_ip)
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

    fn prefix(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_match_their_addresses_only() {
        let cases = [
            ("2001:db8:7::/48", "2001:db8:7:1::9", true),
            ("2001:db8:7::/48", "2001:db8:8::1", false),
            ("192.0.2.0/24", "192.0.2.77", true),
            ("192.0.2.0/24", "192.0.3.1", false),
            ("192.0.2.0/24", "::ffff:192.0.2.5", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("::/0", "::1", true),
            ("::1", "::1", true),
            ("::1", "::2", false),
        ];
        for (network, address, expected) in cases {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(
                prefix(network).contains(address),
                expected,
                "{network} {address}"
            );
        }
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
        assert_eq!(prefix("::ffff:10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let config = AccessConfig {
            trusted_proxies: vec![prefix("10.0.0.0/8")],
            ..AccessConfig::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.1.1.1".parse().unwrap());
        let proxy: IpAddr = "10.2.2.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            config.client_address(proxy, &headers),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            config.client_address(stranger, &headers),
            stranger,
            "an untrusted peer's header is ignored"
        );
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            "forwarded",
            "for=\"[2001:db8::5]:4711\";proto=http".parse().unwrap(),
        );
        assert_eq!(
            config.client_address(proxy, &forwarded),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
    }
}
