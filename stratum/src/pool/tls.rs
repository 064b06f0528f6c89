//! A self-signed TLS identity for serving `stratum+ssl://` in tests and the demo.
//!
//! Real pools have certificates from a CA; a test pool has none, so it makes one on start and
//! hands out the certificate for the client to pin or trust.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::config::PoolError;

/// A freshly generated certificate and the server configuration that uses it.
#[derive(Clone, Debug)]
pub struct SelfSignedTls {
    /// Put into [`super::PoolConfig::tls`].
    pub server_config: Arc<rustls::ServerConfig>,
    /// The certificate (DER), for a client's root store or pin.
    pub certificate_der: CertificateDer<'static>,
    /// The same certificate as PEM text.
    pub certificate_pem: String,
}

/// Makes a self-signed certificate for the given names (DNS names or IP addresses, such as
/// `localhost` and `127.0.0.1`) and a rustls server configuration with the ring provider.
pub fn self_signed(names: &[&str]) -> Result<SelfSignedTls, PoolError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| PoolError::Tls(e.to_string()))?;
    let certificate_der = certified.cert.der().clone();
    let certificate_pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    // The provider is named rather than taken from the process default, so this works whatever
    // else in the process installed one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PoolError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![certificate_der.clone()], key)
        .map_err(|e| PoolError::Tls(e.to_string()))?;
    Ok(SelfSignedTls {
        server_config: Arc::new(server_config),
        certificate_der,
        certificate_pem,
    })
}
