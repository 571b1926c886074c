//! The client side of mutual TLS: a tonic endpoint that presents an agent's or operator's
//! certificate and accepts only a server whose certificate chains to the CA and names the
//! host dialled (or `server_name`) among its DNS or IP addresses.

use std::path::Path;

use rustls_pki_types::pem::PemObject as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{CertInfo, DEFAULT_HANDSHAKE_TIMEOUT, PkiError};

/// The files a client connects with, PEM: the CA, its certificate and its key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ClientIdentity, PkiError> {
        Ok(ClientIdentity {
            ca_pem: crate::read_to_string(ca)?,
            cert_pem: crate::read_to_string(cert)?,
            key_pem: crate::read_to_string(key)?,
        })
    }

    /// Who this client is, as the collector will read it.
    pub fn cert_info(&self) -> Result<CertInfo, PkiError> {
        CertInfo::from_pem(&self.cert_pem)
    }

    /// tonic's TLS settings for this identity. `server_name` replaces the URL's host for
    /// checking the server certificate (dialling an address the certificate does not name).
    #[must_use]
    pub fn tls_config(&self, server_name: Option<&str>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(DEFAULT_HANDSHAKE_TIMEOUT);
        match server_name {
            Some(name) => config.domain_name(name),
            None => config,
        }
    }
}

/// An endpoint for `url` (`https://host:port`) that connects with mutual TLS as `identity`.
/// In TLS 1.3 the client finishes its handshake before the server has checked the client's
/// certificate: a refused certificate shows as an error of the first call (a fatal alert
/// such as `UnknownCA` or `CertificateExpired` in its source), not of `connect`.
/// Refuses any other scheme: tonic would connect to an `http://` URL in plaintext, TLS
/// settings notwithstanding. Refuses a certificate that names no recorder identity, which
/// the collector would refuse anyway, less clearly.
pub fn endpoint(
    url: &str,
    identity: &ClientIdentity,
    server_name: Option<&str>,
) -> Result<Endpoint, PkiError> {
    if !url.starts_with("https://") {
        return Err(PkiError::Tls(format!(
            "{url}: mutual TLS needs an https:// URL"
        )));
    }
    identity.cert_info()?;
    crate::install_crypto_provider();
    Endpoint::from_shared(url.to_owned())
        .and_then(|endpoint| endpoint.tls_config(identity.tls_config(server_name)))
        .map_err(|e| PkiError::Tls(format!("{url}: {e}")))
}

/// rustls settings for a client that accepts only a server whose certificate chains to a CA
/// of `ca_pem` and names the host dialled, as libpq's `sslmode=verify-full` checks it, and
/// that presents the certificate and key of `client` (PEM) when given: the collector's
/// connections to PostgreSQL, whose `cert` authentication checks that certificate.
pub fn server_checking_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, PkiError> {
    let roots = crate::roots(ca_pem)?;
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| PkiError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let Some((cert_pem, key_pem)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Key(format!("no PEM private key: {e}")))?;
    builder
        .with_client_auth_cert(crate::certs_from_pem(cert_pem)?, key)
        .map_err(|e| PkiError::Tls(e.to_string()))
}
