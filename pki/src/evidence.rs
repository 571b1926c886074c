//! What the evidence's signatures are checked with, offline (docs/evidence.md): the names of
//! a deployment's logs and keys, derived from its CA, and certificates checked against that
//! CA with no TLS connection involved, as a verifier of old evidence must.

use std::time::SystemTime;

use sha2::{Digest as _, Sha256};
use x509_parser::{certificate::X509Certificate, prelude::FromDer as _};

use crate::{CertInfo, PkiError, cert_der_from_pem};

/// A deployment's id: the first 16 hex digits of SHA-256 over its CA certificate (DER). It
/// prefixes every log and key name, so evidence names the CA it is checked under.
pub fn deployment_id(ca_pem: &str) -> Result<String, PkiError> {
    let der = cert_der_from_pem(ca_pem)?;
    let digest = Sha256::digest(der.as_ref());
    Ok(crate::identity::hex(&digest[..8]))
}

/// The origin of host `host`'s log, and the name of the key that signs its checkpoints.
#[must_use]
pub fn host_log(deployment: &str, host: &str) -> String {
    format!("{deployment}/recorder/host/{host}")
}

/// The origin of collector `name`'s own log (its chain of alerts, grant changes, reads and
/// prune records), and the name of the key that signs its checkpoints: the witness key.
#[must_use]
pub fn collector_log(deployment: &str, name: &str) -> String {
    format!("{deployment}/recorder/collector/{name}")
}

/// The name of collector `name`'s witness key as it cosigns hosts' checkpoints.
#[must_use]
pub fn witness_key(deployment: &str, name: &str) -> String {
    format!("{deployment}/recorder/witness/{name}")
}

/// Checks that `cert_pem` was issued by the CA of `ca_pem` (issuer name and signature), is
/// an end-entity certificate, names a recorder identity and, when `at` is given, was valid
/// then; returns what it says. Evidence is checked at the time it was signed, so a
/// certificate that has expired since is still good for what it signed while it was valid.
pub fn verify_cert(
    ca_pem: &str,
    cert_pem: &str,
    at: Option<SystemTime>,
) -> Result<CertInfo, PkiError> {
    let ca_der = cert_der_from_pem(ca_pem)?;
    let der = cert_der_from_pem(cert_pem)?;
    let ca = parse(&ca_der)?;
    let cert = parse(&der)?;
    if cert.issuer() != ca.subject() {
        return Err(PkiError::Certificate(format!(
            "issued by {}, not by the CA ({})",
            cert.issuer(),
            ca.subject()
        )));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::Certificate(format!("the CA's signature does not verify: {e}")))?;
    if cert.is_ca() {
        return Err(PkiError::Certificate("a CA certificate, not a leaf".into()));
    }
    let info = CertInfo::from_der(&der)?;
    if let Some(at) = at {
        info.valid_at(at)?;
    }
    Ok(info)
}

impl CertInfo {
    /// Whether the certificate was valid at `at`: what it signed then still stands after it
    /// has expired.
    pub fn valid_at(&self, at: SystemTime) -> Result<(), PkiError> {
        if at < self.not_before || at > self.not_after {
            return Err(PkiError::Certificate(format!(
                "{} was not valid at that time (valid {} to {})",
                self.peer,
                unix(self.not_before),
                unix(self.not_after)
            )));
        }
        Ok(())
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Certificate(format!("not an X.509 certificate: {e}")))
}

/// Seconds since the epoch, for messages.
fn unix(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or_else(
        |_| "before 1970".into(),
        |d| format!("unix {}", d.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Ca, Peer, Validity};

    const HOUR: Duration = Duration::from_hours(1);

    #[test]
    fn names_derive_from_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca")).unwrap();
        let id = deployment_id(ca.cert_pem()).unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let other = Ca::init(&dir.path().join("other")).unwrap();
        assert_ne!(id, deployment_id(other.cert_pem()).unwrap());
        assert_eq!(host_log(&id, "h1"), format!("{id}/recorder/host/h1"));
        assert_eq!(
            collector_log(&id, "c"),
            format!("{id}/recorder/collector/c")
        );
        assert_eq!(witness_key(&id, "c"), format!("{id}/recorder/witness/c"));
    }

    #[test]
    fn a_certificate_is_checked_against_its_ca_and_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca")).unwrap();
        let other = Ca::init(&dir.path().join("other")).unwrap();
        let witness = ca.issue_witness("c1", Validity::from_now(HOUR)).unwrap();
        let info = verify_cert(ca.cert_pem(), &witness.cert_pem, Some(SystemTime::now())).unwrap();
        assert_eq!(info.peer, Peer::Witness { name: "c1".into() });
        assert!(
            info.ed25519_public_key.is_some(),
            "a witness key is Ed25519"
        );

        let refused = verify_cert(other.cert_pem(), &witness.cert_pem, None).unwrap_err();
        assert!(refused.to_string().contains("not by the CA"), "{refused}");
        let later = SystemTime::now() + 2 * HOUR;
        let refused = verify_cert(ca.cert_pem(), &witness.cert_pem, Some(later)).unwrap_err();
        assert!(
            refused.to_string().contains("not valid at that time"),
            "{refused}"
        );
        let refused = verify_cert(ca.cert_pem(), ca.cert_pem(), None).unwrap_err();
        assert!(refused.to_string().contains("not a leaf"), "{refused}");

        // A certificate whose bytes were changed after signing.
        let agent = ca.issue_agent("h1", Validity::from_now(HOUR)).unwrap();
        let mut der = cert_der_from_pem(&agent.cert_pem).unwrap().to_vec();
        let at = der.len() - 80;
        der[at] ^= 1;
        let forged = pem_of(&der);
        assert!(verify_cert(ca.cert_pem(), &forged, None).is_err());
    }

    fn pem_of(der: &[u8]) -> String {
        crate::identity::pem_of_der(der)
    }
}
