//! The one HTTP client nublar sends with: the command line asking a node, the webhooks
//! posting alerts, the benchmarks and tests asking for metrics.
//!
//! On hyper's pooled client: connections are kept alive and reused per host; a response's
//! body is read whole whether it came with a length or chunked, and decompressed when the
//! server sent it gzip (the client asks for it), bounded in bytes either way; a request body
//! may be sent gzip. Every request has a connect timeout and an overall timeout. `https://`
//! URLs are checked against the system's roots, or only against the certificates of a CA
//! file when one is given (a park's nodes usually carry a certificate of the park's own CA).
//!
//! The client is async; [`Client::block_on`] runs one request for callers that are not.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
pub use hyper::{Method, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How a [`Client`] connects and what it accepts.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The longest a TCP connection (and its TLS handshake) may take to open.
    pub connect_timeout: Duration,
    /// The longest a whole request may take, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// PEM certificates to trust for `https://`, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The largest answer body taken, after decompression.
    pub body_bytes_max: usize,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            ca_file: None,
            body_bytes_max: 64 << 20,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}: not a URL nublar can send to (http://HOST[:PORT]/PATH or https://…)")]
    Url(String),
    #[error("reading the CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("{url}: no answer within {seconds} s")]
    Timeout { url: String, seconds: f64 },
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

/// An answer: its status, headers, and whole body (decompressed when it came gzip).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pooled: Pooled<HttpsConnector<HttpConnector>, Full<Bytes>>,
    options: Arc<ClientOptions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One request being put together; [`RequestBuilder::send`] sends it.
pub struct RequestBuilder<'a> {
    client: &'a Client,
    method: Method,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    gzip: bool,
    error: Option<ClientError>,
}

impl Client {
    pub fn new(options: ClientOptions) -> Result<Client, ClientError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &options.ca_file {
            Some(path) => ca_roots(path)?,
            None => system_roots(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError::CaFile {
                path: "(TLS settings)".into(),
                message: error.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pooled = Pooled::builder(TokioExecutor::new())
            .pool_idle_timeout(options.idle_timeout)
            .build(connector);
        Ok(Client {
            pooled,
            options: Arc::new(options),
        })
    }

    pub fn request(&self, method: Method, url: &str) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
            gzip: false,
            error: None,
        }
    }

    pub fn get(&self, url: &str) -> RequestBuilder<'_> {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: &str) -> RequestBuilder<'_> {
        self.request(Method::POST, url)
    }

    /// Runs `future` (a request, usually) to its end on a runtime of its own, for callers that
    /// are not async: the command line, the benchmarks' probes. Called from inside a runtime,
    /// it runs on a thread of its own rather than block that runtime's thread.
    pub fn block_on<F>(future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let run = move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime starts")
                .block_on(future)
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                scope
                    .spawn(run)
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            run()
        }
    }
}

impl RequestBuilder<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.headers.push((name, value)),
            _ => {
                self.error.get_or_insert(ClientError::Request {
                    url: self.url.clone(),
                    message: format!("header {name:?} cannot carry {value:?}"),
                });
            }
        }
        self
    }

    /// `Authorization: Token …`, nublar's (and InfluxDB's) scheme, when there is a token.
    pub fn token(self, token: Option<&str>) -> Self {
        match token {
            Some(token) => self.header("authorization", &format!("Token {token}")),
            None => self,
        }
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the body gzip-compressed, with `Content-Encoding: gzip`.
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }

    pub async fn send(self) -> Result<Response, ClientError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let url = self.url;
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.clone()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ClientError::Url(url));
        }
        let body = if self.gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut encoder, &self.body)
                .and_then(|()| encoder.finish())
                .map(Bytes::from)
                .map_err(|error| ClientError::Request {
                    url: url.clone(),
                    message: format!("compressing the body: {error}"),
                })?
        } else {
            self.body
        };
        let mut request = hyper::Request::builder()
            .method(self.method)
            .uri(uri)
            .header(header::ACCEPT_ENCODING, "gzip");
        if self.gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|error| ClientError::Request {
                url: url.clone(),
                message: error.to_string(),
            })?;
        let options = &self.client.options;
        let limit = options.body_bytes_max;
        let exchange = async {
            let response = self.client.pooled.request(request).await.map_err(|error| {
                ClientError::Request {
                    url: url.clone(),
                    message: describe(&error),
                }
            })?;
            let (parts, body) = response.into_parts();
            let raw = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<http_body_util::LengthLimitError>() {
                        ClientError::TooLarge {
                            url: url.clone(),
                            limit,
                        }
                    } else {
                        ClientError::Request {
                            url: url.clone(),
                            message: format!("reading the answer: {error}"),
                        }
                    }
                })?
                .to_bytes();
            Ok::<_, ClientError>((parts, raw))
        };
        let (parts, raw) = tokio::time::timeout(options.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                seconds: options.timeout.as_secs_f64(),
            })??;
        let gzipped = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|encoding| encoding.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = if gzipped {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|error| ClientError::Request {
                    url: url.clone(),
                    message: format!("the gzip answer does not decompress: {error}"),
                })?;
            if out.len() > limit {
                return Err(ClientError::TooLarge { url, limit });
            }
            out
        } else {
            raw.to_vec()
        };
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// The chain of causes of a failed request, most specific last: "connection refused" rather
/// than hyper's "client error (Connect)".
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Every certificate of a PEM file.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    let failed = |message: String| ClientError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&bytes) {
        let certificate = certificate.map_err(|error| failed(error.to_string()))?;
        roots
            .add(certificate)
            .map_err(|error| failed(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(failed("it holds no certificate".into()));
    }
    Ok(roots)
}

/// The system's roots, read once per process; none when the system has none (plain HTTP
/// still works, and HTTPS says the certificate's issuer is unknown).
fn system_roots() -> rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            roots
        })
        .clone()
}
