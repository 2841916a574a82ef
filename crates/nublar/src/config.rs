//! The node's configuration: defaults, then a TOML file, then `NUBLAR_*`
//! environment variables, then flags, each overriding the one before.
//!
//! `docs/nublar.example.toml` lists every option with its default; a test
//! checks that it parses to exactly the defaults, so it cannot drift.

use std::net::SocketAddr;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use anyhow::Context;
use nublar_ingest::{AccessConfig, IngestConfig, Prefix, Scope, Token};
use serde::Deserialize;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub http: HttpSection,
    pub udp: UdpSection,
    pub log: LogSection,
    pub access: AccessSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
    pub decompressed_bytes_max: usize,
    pub in_flight_bytes_max: usize,
    pub connections_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub drain_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpSection {
    pub listen: SocketAddr,
    pub db: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub partitions: u32,
    /// 0 means no quota.
    pub disk_quota_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessSection {
    pub allow: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub tokens: Vec<TokenSection>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    pub name: String,
    pub secret: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> HttpSection {
        let ingest = IngestConfig::default();
        HttpSection {
            listen: "[::]:8086".parse().expect("a valid address"),
            body_bytes_max: ingest.body_bytes_max,
            decompressed_bytes_max: ingest.decompressed_bytes_max,
            in_flight_bytes_max: ingest.in_flight_bytes_max,
            connections_max: ingest.connections_max,
            header_read_timeout_ms: ingest.header_read_timeout_ms,
            body_read_timeout_ms: ingest.body_read_timeout_ms,
            drain_seconds: 30,
        }
    }
}

impl Default for UdpSection {
    fn default() -> UdpSection {
        UdpSection {
            listen: "[::]:8089".parse().expect("a valid address"),
            db: IngestConfig::default().udp_db,
        }
    }
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            partitions: IngestConfig::default().partitions,
            disk_quota_bytes: 0,
        }
    }
}

impl NodeConfig {
    /// The defaults overridden by the file at `path`, if given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
        let Some(path) = path else {
            return Ok(NodeConfig::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn ingest(&self) -> anyhow::Result<IngestConfig> {
        let prefixes = |texts: &[String], what: &str| -> anyhow::Result<Vec<Prefix>> {
            texts
                .iter()
                .map(|text| {
                    text.parse::<Prefix>()
                        .map_err(|error| anyhow::anyhow!("{what}: {error}"))
                })
                .collect()
        };
        let mut tokens = Vec::new();
        for token in &self.access.tokens {
            let scopes = token
                .scopes
                .iter()
                .map(|scope| {
                    scope
                        .parse::<Scope>()
                        .map_err(|error| anyhow::anyhow!("token {:?}: {error}", token.name))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(
                !token.secret.is_empty(),
                "token {:?} has an empty secret",
                token.name
            );
            tokens.push(Token {
                name: token.name.clone(),
                secret: token.secret.clone(),
                scopes,
                allow: prefixes(&token.allow, &format!("token {:?} allow", token.name))?,
            });
        }
        let config = IngestConfig {
            partitions: self.log.partitions,
            body_bytes_max: self.http.body_bytes_max,
            decompressed_bytes_max: self.http.decompressed_bytes_max,
            in_flight_bytes_max: self.http.in_flight_bytes_max,
            udp_db: self.udp.db.clone(),
            connections_max: self.http.connections_max,
            header_read_timeout_ms: self.http.header_read_timeout_ms,
            body_read_timeout_ms: self.http.body_read_timeout_ms,
            access: AccessConfig {
                tokens,
                allow: prefixes(&self.access.allow, "access.allow")?,
                trusted_proxies: prefixes(&self.access.trusted_proxies, "access.trusted_proxies")?,
            },
        };
        config
            .validate()
            .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the example configuration lives in the source tree.
    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/nublar.example.toml")
    }

    #[test]
    fn the_example_configuration_lists_exactly_the_defaults() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let parsed: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, NodeConfig::default());
        // Every option appears in it, uncommented, so a reader sees them all.
        for key in [
            "listen",
            "body_bytes_max",
            "decompressed_bytes_max",
            "in_flight_bytes_max",
            "connections_max",
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "drain_seconds",
            "db",
            "partitions",
            "disk_quota_bytes",
            "allow",
            "trusted_proxies",
        ] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{key} ="))),
                "{key} missing"
            );
        }
        parsed.ingest().unwrap();
    }

    #[test]
    fn mistakes_in_a_file_are_named() {
        let unknown = toml::from_str::<NodeConfig>("[http]\nlisten_on = \"[::]:1\"\n").unwrap_err();
        assert!(unknown.to_string().contains("listen_on"), "{unknown}");
        let config: NodeConfig = toml::from_str(
            "[[access.tokens]]\nname = \"t\"\nsecret = \"x\"\nscopes = [\"write\"]\n",
        )
        .unwrap();
        let error = config.ingest().unwrap_err().to_string();
        assert!(error.contains("unknown scope"), "{error}");
        let config: NodeConfig = toml::from_str("[access]\nallow = [\"10.0.0.0/99\"]\n").unwrap();
        assert!(
            config
                .ingest()
                .unwrap_err()
                .to_string()
                .contains("prefix length")
        );
    }
}
