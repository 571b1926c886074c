//! The recorder's trust (docs/pki.md): one CA; certificates that name an agent's host, an
//! operator and their role, or a collector; enrollment of agents by CSR and join token; and
//! mutual TLS for tonic, with the server side reporting every refused handshake so the
//! collector can raise an `auth_failure` alert for it.
//!
//! Crypto is rcgen's and rustls's, with ring as the one provider.

mod agent;
mod ca;
mod client;
mod evidence;
mod identity;
mod limit;
mod server;
mod token;

use std::{fs, io, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use rustls_pki_types::{CertificateDer, pem::PemObject as _};

/// The rustls of [`HandshakeError::Tls`], to match its errors with.
pub use rustls;

pub use agent::{AgentKey, ed25519_public_key_from_pkcs8_pem, ed25519_seed_from_pkcs8_pem};
pub use ca::{Ca, Issued, Validity, create_private_dir};
pub use client::{ClientIdentity, endpoint, server_checking_config};
pub use evidence::{collector_log, deployment_id, host_log, verify_cert, witness_key};
pub use identity::{CertInfo, MAX_NAME_LEN, OfferedCert, Peer, Role, check_name, host_id};
pub use limit::ConnectionLimits;
pub use server::{
    ClientCert, Conn, ConnInfo, DEFAULT_HANDSHAKE_TIMEOUT, HandshakeError, HandshakeFailure,
    Incoming, TlsAcceptor, plaintext_incoming, server_config,
};
pub use token::{TOKEN_PREFIX, Token, token_hash};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// A certificate's identity is missing, ambiguous or malformed, or a name given to
    /// issue one is.
    #[error("identity: {0}")]
    Identity(String),
    /// Bytes that should be a certificate, CSR or key are not a usable one.
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("CSR refused: {0}")]
    Csr(String),
    #[error("key: {0}")]
    Key(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl PkiError {
    fn file(path: &Path, e: impl std::fmt::Display) -> PkiError {
        PkiError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Installs ring as the process's rustls crypto provider, for whatever builds a rustls
/// configuration without naming one (tonic's client does). Idempotent; a provider already
/// installed stays.
pub fn install_crypto_provider() {
    // An Err only says that a provider is installed already, which is all this wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Writes a new private file, mode 0600 from its creation: the mode is given to `open`, so
/// there is no moment when the key is readable by others, and an existing file (or a link
/// planted in its place) is refused rather than overwritten.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| PkiError::file(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| PkiError::file(path, e))
}

/// Replaces a private file (mode 0600) so that a crash leaves the old or the new contents,
/// never a mix: written beside it, synced, renamed over it, and the directory synced.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| PkiError::file(path, e))
}

/// Reads a file into a string, naming the file in the error.
fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::file(path, e))
}

/// The first certificate of a PEM text.
fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Certificate(format!("no PEM certificate: {e}")))
}

/// Every certificate of a PEM text (a chain, or a CA bundle), at least one.
fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Certificate(format!("unreadable PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(PkiError::Certificate("no PEM certificate".into()));
    }
    Ok(chain)
}

/// Whether a file exists, an error other than "not found" being one.
fn exists(path: &Path) -> Result<bool, PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PkiError::file(path, e)),
    }
}

/// The CA certificates of `ca_pem` (more than one during a CA change) as rustls roots.
fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs_from_pem(ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| PkiError::Certificate(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}
