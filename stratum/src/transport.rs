//! Getting a byte stream to a pool: pool URLs (`stratum+tcp://`, `stratum+ssl://`), TCP, and TLS
//! with rustls.
//!
//! Kept apart from the session so that the protocol code only ever sees an
//! `AsyncRead + AsyncWrite` stream ([`BoxedStream`]), and tests can hand it an in-memory pipe
//! through their own [`Connector`].
//!
//! TLS trusts the system roots (rustls-native-certs), optionally with extra roots from a PEM
//! file, or, with a pinned SHA-256 fingerprint, exactly one certificate (self-signed pool
//! certificates included). The crypto provider is ring, chosen explicitly per config, so the
//! process-wide default provider is never needed.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rigfleet_engine::algo::sha256::sha256;
use rigfleet_engine::hex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Default limit for TCP connect plus TLS handshake: pools that take longer are as good as down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub use rigfleet_proto::pool_url::{PoolUrl, Scheme, UrlError};

/// How a TLS pool's certificate is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Accept exactly the certificate with this SHA-256 fingerprint (of its DER bytes) and
    /// nothing else, ignoring its issuer, name and dates: the way to trust a self-signed pool.
    pub pin_sha256: Option<[u8; 32]>,
    /// Extra trusted roots (PEM), added to the system roots.
    pub ca_file: Option<PathBuf>,
}

impl TlsOptions {
    /// Parses a fingerprint as 64 hex digits, with or without colons (the form
    /// `openssl x509 -noout -fingerprint -sha256` prints).
    pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TransportError> {
        let digits: String = text.trim().chars().filter(|&c| c != ':').collect();
        hex::decode_array::<32>(&digits.to_ascii_lowercase()).map_err(|_| {
            TransportError::BadPin(format!(
                "{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
            ))
        })
    }
}

/// The SHA-256 fingerprint of a DER certificate as lowercase hex: what [`TlsOptions`] pins.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(&sha256(der))
}

/// Why a pool could not be reached or its TLS set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// TCP connect failed (refused, unreachable, name not found).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// Connect plus TLS handshake took too long.
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The limit.
        after: Duration,
    },
    /// The TLS handshake failed (certificate not trusted, pin mismatch, protocol error).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// What rustls reported.
        source: std::io::Error,
    },
    /// A TLS URL without a TLS configuration (a caller bug or a missing option).
    #[error("{0} needs TLS but no TLS configuration was given")]
    TlsNotConfigured(String),
    /// The pinned fingerprint is malformed.
    #[error("bad certificate pin: {0}")]
    BadPin(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Both a pin and a CA file: they would contradict each other.
    #[error("give either a pinned certificate or a CA file, not both")]
    PinAndCaFile,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A bidirectional byte stream to a pool.
pub trait PoolStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PoolStream for T {}

/// A boxed pool stream: plain TCP, TLS, or a test pipe.
pub type BoxedStream = Box<dyn PoolStream>;

/// A future returned by [`Connector::connect`].
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BoxedStream, TransportError>> + Send + 'a>>;

/// Where to connect: the address and, for TLS, the client configuration.
#[derive(Clone)]
pub struct Endpoint {
    /// The pool.
    pub url: PoolUrl,
    /// Set for [`Scheme::Tls`] URLs.
    pub tls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.to_string())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Opens streams to pools. The client uses [`NetConnector`]; tests plug in pipes.
pub trait Connector: Send + Sync + 'static {
    /// Opens a stream to `endpoint`. The caller bounds the time it takes.
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a>;
}

/// Real sockets: TCP, and TLS through rustls.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetConnector;

impl Connector for NetConnector {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a> {
        Box::pin(connect(endpoint))
    }
}

/// Connects over TCP (and TLS for TLS URLs), without a time limit of its own; see
/// [`connect_timeout`].
pub async fn connect(endpoint: &Endpoint) -> Result<BoxedStream, TransportError> {
    let url = &endpoint.url;
    let addr = format!("{}:{}", url.host, url.port);
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|source| TransportError::Connect {
            addr: addr.clone(),
            source,
        })?;
    // Shares and job switches are small messages where latency matters more than batching.
    let _ = tcp.set_nodelay(true);
    match url.scheme {
        Scheme::Tcp => Ok(Box::new(tcp)),
        Scheme::Tls => {
            let config = endpoint
                .tls
                .clone()
                .ok_or_else(|| TransportError::TlsNotConfigured(url.to_string()))?;
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| TransportError::Config(format!("server name {}: {e}", url.host)))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| TransportError::Tls { addr, source })?;
            Ok(Box::new(tls))
        }
    }
}

/// [`connect`] within `limit`.
pub async fn connect_timeout(
    connector: &dyn Connector,
    endpoint: &Endpoint,
    limit: Duration,
) -> Result<BoxedStream, TransportError> {
    match tokio::time::timeout(limit, connector.connect(endpoint)).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout {
            addr: format!("{}:{}", endpoint.url.host, endpoint.url.port),
            after: limit,
        }),
    }
}

/// The ring provider, stated explicitly so that no other provider (aws-lc) is ever linked in
/// or picked by default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The system's trusted roots, read once per process (reading them walks files).
fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "Could not read some system root certificates");
        }
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "Loaded system root certificates");
        if added == 0 {
            tracing::warn!(
                "No system root certificates found: TLS pools need a pinned certificate or a CA file"
            );
        }
        Arc::new(store)
    }))
}

/// Builds the rustls client configuration for a TLS pool. Errors name the file or option at
/// fault, so that they can be shown to the user at start-up.
pub fn tls_client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let config = match (&options.pin_sha256, &options.ca_file) {
        (Some(_), Some(_)) => return Err(TransportError::PinAndCaFile),
        (Some(pin), None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                fingerprint: *pin,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        (None, ca_file) => {
            let mut roots = (*native_roots()).clone();
            if let Some(path) = ca_file {
                for cert in read_pem_certs(path)? {
                    roots.add(cert).map_err(|e| TransportError::CaFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let err = |reason: String| TransportError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".to_string()));
    }
    Ok(certs)
}

/// Accepts exactly one certificate, by fingerprint. The handshake signature is still checked
/// against that certificate's key, so a man in the middle cannot replay the certificate.
#[derive(Debug)]
struct PinnedCertVerifier {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if sha256(end_entity.as_ref()) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(
                got = %cert_fingerprint(end_entity.as_ref()),
                pinned = %hex::encode(&self.fingerprint),
                "Pool certificate does not match the pinned fingerprint"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(TlsOptions::parse_fingerprint(&plain).unwrap(), [0xab; 32]);
        assert_eq!(TlsOptions::parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(TlsOptions::parse_fingerprint("abcd").is_err());
        assert!(TlsOptions::parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn tls_options_refuse_contradictions_and_missing_files() {
        let both = TlsOptions {
            pin_sha256: Some([0; 32]),
            ca_file: Some("/nonexistent.pem".into()),
        };
        assert!(matches!(
            tls_client_config(&both),
            Err(TransportError::PinAndCaFile)
        ));
        let missing = TlsOptions {
            pin_sha256: None,
            ca_file: Some("/nonexistent/rigfleet-ca.pem".into()),
        };
        let err = tls_client_config(&missing).unwrap_err();
        assert!(err.to_string().contains("rigfleet-ca.pem"), "{err}");
    }

    /// A TLS server on 127.0.0.1 with the given chain that writes one line to each client.
    async fn tls_server(
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> u16 {
        let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"{\"hello\":1}\n").await;
                        let _ = tls.flush().await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }

    async fn first_line(endpoint: &Endpoint) -> Result<String, TransportError> {
        let stream = connect_timeout(&NetConnector, endpoint, Duration::from_secs(5)).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.unwrap();
        Ok(line)
    }

    #[tokio::test]
    async fn tls_with_a_pinned_self_signed_certificate_over_loopback() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pool.invalid".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let port = tls_server(vec![der.clone()], key_der).await;
        let url: PoolUrl = format!("stratum+ssl://127.0.0.1:{port}").parse().unwrap();

        // The right pin: connects although the name and issuer mean nothing.
        let pin = TlsOptions::parse_fingerprint(&cert_fingerprint(der.as_ref())).unwrap();
        let good = Endpoint {
            url: url.clone(),
            tls: Some(
                tls_client_config(&TlsOptions {
                    pin_sha256: Some(pin),
                    ca_file: None,
                })
                .unwrap(),
            ),
        };
        assert_eq!(first_line(&good).await.unwrap(), "{\"hello\":1}\n");

        // Another pin: refused during the handshake.
        let mut wrong_pin = pin;
        wrong_pin[0] ^= 1;
        let bad = Endpoint {
            url: url.clone(),
            tls: Some(
                tls_client_config(&TlsOptions {
                    pin_sha256: Some(wrong_pin),
                    ca_file: None,
                })
                .unwrap(),
            ),
        };
        assert!(matches!(
            first_line(&bad).await,
            Err(TransportError::Tls { .. })
        ));

        // No pin: the system roots do not know this certificate.
        let unpinned = Endpoint {
            url,
            tls: Some(tls_client_config(&TlsOptions::default()).unwrap()),
        };
        assert!(matches!(
            first_line(&unpinned).await,
            Err(TransportError::Tls { .. })
        ));
    }

    #[tokio::test]
    async fn tls_with_a_private_ca_file_over_loopback() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let port = tls_server(vec![leaf.der().clone()], key_der).await;

        let path = std::env::temp_dir().join(format!(
            "rigfleet-test-ca-{}-{port}.pem",
            std::process::id()
        ));
        std::fs::write(&path, ca.pem()).unwrap();
        let config = tls_client_config(&TlsOptions {
            pin_sha256: None,
            ca_file: Some(path.clone()),
        });
        let _ = std::fs::remove_file(&path);
        let endpoint = Endpoint {
            url: format!("stratum+ssl://127.0.0.1:{port}").parse().unwrap(),
            tls: Some(config.unwrap()),
        };
        assert_eq!(first_line(&endpoint).await.unwrap(), "{\"hello\":1}\n");
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        // Bind then drop to get a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = Endpoint {
            url: format!("stratum+tcp://127.0.0.1:{port}").parse().unwrap(),
            tls: None,
        };
        let err = first_line(&endpoint).await.unwrap_err();
        assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    }
}
