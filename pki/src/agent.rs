//! The agent's side of enrollment: its key is made on its host and never leaves it; the
//! CSR carries only the public half to the CA. The same Ed25519 key signs the host's
//! checkpoints, so its raw seed is handed to the signing code too.

use ed25519_dalek::{SigningKey, pkcs8::DecodePrivateKey as _};
use rcgen::{CertificateParams, KeyPair, PKCS_ED25519};

use crate::PkiError;

/// A new agent key and a CSR for it, both PEM (the key PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// Makes an Ed25519 key and its CSR.
    pub fn generate() -> Result<AgentKey, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| PkiError::Key(e.to_string()))?;
        let key_pem = key.serialize_pem();
        Ok(AgentKey {
            csr_pem: AgentKey::csr_for_key(&key_pem)?,
            key_pem,
        })
    }

    /// A CSR for an existing agent key: renewal keeps the key, and with it the key the
    /// host's checkpoints are verified with. The CSR names nothing: the CA binds the
    /// certificate to the host of the join token, whatever a CSR asks for.
    pub fn csr_for_key(key_pem: &str) -> Result<String, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Key(e.to_string()))?;
        if !key.is_compatible(&PKCS_ED25519) {
            return Err(PkiError::Key("an agent key must be Ed25519".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| PkiError::Csr(e.to_string()))
    }
}

/// The 32-byte Ed25519 seed (RFC 8032's private key) of a PKCS#8 PEM key, for signing
/// checkpoints with it. A v2 PKCS#8 key's public half must match the seed.
pub fn ed25519_seed_from_pkcs8_pem(pem: &str) -> Result<[u8; 32], PkiError> {
    Ok(signing_key(pem)?.to_bytes())
}

/// The 32-byte Ed25519 public key of a PKCS#8 PEM key.
pub fn ed25519_public_key_from_pkcs8_pem(pem: &str) -> Result<[u8; 32], PkiError> {
    Ok(signing_key(pem)?.verifying_key().to_bytes())
}

fn signing_key(pem: &str) -> Result<SigningKey, PkiError> {
    SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| PkiError::Key(format!("not a PKCS#8 Ed25519 key: {e}")))
}
