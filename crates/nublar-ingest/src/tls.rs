//! HTTPS on the gateway's listener: rustls with a certificate chain and key from PEM files,
//! replaced while the node runs.
//!
//! The server configuration asks a resolver for its certificate at every handshake; a
//! reload swaps what the resolver hands out. Connections already open keep the certificate
//! they were made with, and new handshakes get the new one: nothing is dropped. A reload
//! whose files do not load (a key that does not match the certificate, a file half
//! written) changes nothing and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The crypto every TLS configuration of the node uses, named rather than left to a
/// process default: the dependency tree enables two providers, and rustls then refuses to
/// pick one itself.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate the listener presents, and where it comes from.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The files' bytes as last loaded, to tell whether they changed.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

impl Tls {
    /// Loads the certificate chain and private key (PEM; the key PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Tls, String> {
        let provider = crypto_provider();
        let (cert_bytes, key_bytes) = read_pair(cert_path, key_path)?;
        let key = certified_key(&cert_bytes, &key_bytes, &provider, cert_path, key_path)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS: {error}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // The gateway speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resolver,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            loaded: Mutex::new((cert_bytes, key_bytes)),
        })
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files again if their contents changed since the last load; `Ok(true)` when
    /// the new certificate is in use from the next handshake on.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let (cert_bytes, key_bytes) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self.loaded.lock().unwrap();
        if loaded.0 == cert_bytes && loaded.1 == key_bytes {
            return Ok(false);
        }
        let key = certified_key(
            &cert_bytes,
            &key_bytes,
            &crypto_provider(),
            &self.cert_path,
            &self.key_path,
        )?;
        *self.resolver.current.write().unwrap() = Arc::new(key);
        *loaded = (cert_bytes, key_bytes);
        Ok(true)
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| format!("reading {}: {error}", path.display()))
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn certified_key(
    cert_bytes: &[u8],
    key_bytes: &[u8],
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            format!(
                "{}: not a PEM certificate chain: {error}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_bytes)
        .map_err(|error| format!("{}: not a PEM private key: {error}", key_path.display()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        format!(
            "{} and {}: {error} (does the key belong to the certificate?)",
            cert_path.display(),
            key_path.display()
        )
    })
}
