//! An IPv6 prefix such as `2001:db8:7::/48`: where the park's sensors live in the address
//! space, so that a gateway's prefix allow-list can admit or refuse them as a group.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix {
    network: Ipv6Addr,
    length: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixParseError {
    #[error(
        "`{0}` is not a prefix: expected an IPv6 address, `/` and a length, as in 2001:db8::/48"
    )]
    MissingLength(String),
    #[error("`{0}` is not an IPv6 address")]
    Address(String),
    #[error("`{0}` is not a prefix length from 0 to 128")]
    Length(String),
}

impl Ipv6Prefix {
    /// Host bits set in `address` are cleared, as `ip route` does, so that `2001:db8::1/48`
    /// and `2001:db8::/48` name the same prefix.
    pub fn new(address: Ipv6Addr, length: u8) -> Option<Ipv6Prefix> {
        if length > 128 {
            return None;
        }
        let network = Ipv6Addr::from(u128::from(address) & network_mask(length));
        Some(Ipv6Prefix { network, length })
    }

    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    pub fn length(&self) -> u8 {
        self.length
    }

    pub fn contains(&self, address: Ipv6Addr) -> bool {
        u128::from(address) & network_mask(self.length) == u128::from(self.network)
    }

    /// How many addresses the prefix holds, saturated at `u128::MAX` for `::/0`.
    pub fn address_count(&self) -> u128 {
        1u128
            .checked_shl(128 - u32::from(self.length))
            .unwrap_or(u128::MAX)
    }

    /// The address whose host bits are `host` (the bits above the prefix's host part must be
    /// zero).
    pub(crate) fn host(&self, host: u128) -> Ipv6Addr {
        assert_eq!(
            host & network_mask(self.length),
            0,
            "host bits beyond the prefix"
        );
        Ipv6Addr::from(u128::from(self.network) | host)
    }

    pub(crate) fn host_mask(&self) -> u128 {
        !network_mask(self.length)
    }
}

fn network_mask(length: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0)
}

impl FromStr for Ipv6Prefix {
    type Err = PrefixParseError;

    fn from_str(text: &str) -> Result<Ipv6Prefix, PrefixParseError> {
        let (address, length) = text
            .split_once('/')
            .ok_or_else(|| PrefixParseError::MissingLength(text.to_owned()))?;
        let address: Ipv6Addr = address
            .parse()
            .map_err(|_| PrefixParseError::Address(address.to_owned()))?;
        // `u8::from_str` takes a leading `+`; a prefix length never has one.
        if !length.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(PrefixParseError::Length(length.to_owned()));
        }
        let length: u8 = length
            .parse()
            .map_err(|_| PrefixParseError::Length(length.to_owned()))?;
        Ipv6Prefix::new(address, length).ok_or_else(|| PrefixParseError::Length(length.to_string()))
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.network, self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_prefixes() {
        let cases: [(&str, Option<&str>); 11] = [
            ("2001:db8:7::/48", Some("2001:db8:7::/48")),
            ("2001:db8:7::1/48", Some("2001:db8:7::/48")),
            ("::/0", Some("::/0")),
            ("2001:db8::1/128", Some("2001:db8::1/128")),
            ("fd00::/8", Some("fd00::/8")),
            ("2001:db8::/129", None),
            ("2001:db8::/+48", None),
            ("2001:db8::/", None),
            ("2001:db8::", None),
            ("10.0.0.0/8", None),
            ("2001:db8:::/48", None),
        ];
        for (text, expected) in cases {
            let parsed = text.parse::<Ipv6Prefix>();
            match expected {
                Some(printed) => assert_eq!(parsed.unwrap().to_string(), printed, "{text}"),
                None => assert!(parsed.is_err(), "{text} parsed as {parsed:?}"),
            }
        }
    }

    #[test]
    fn contains_exactly_the_prefix() {
        let prefix: Ipv6Prefix = "2001:db8:7::/48".parse().unwrap();
        let cases = [
            ("2001:db8:7::", true),
            ("2001:db8:7:ffff:ffff:ffff:ffff:ffff", true),
            ("2001:db8:8::", false),
            ("2001:db8:6:ffff:ffff:ffff:ffff:ffff", false),
            ("::1", false),
        ];
        for (address, expected) in cases {
            assert_eq!(
                prefix.contains(address.parse().unwrap()),
                expected,
                "{address}"
            );
        }
        assert_eq!(prefix.address_count(), 1u128 << 80);
        assert_eq!(
            "::/0".parse::<Ipv6Prefix>().unwrap().address_count(),
            u128::MAX
        );
        assert_eq!("::1/128".parse::<Ipv6Prefix>().unwrap().address_count(), 1);
    }
}
