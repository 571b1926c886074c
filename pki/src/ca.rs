//! The CA: one ECDSA P-256 key that signs every certificate of a deployment. P-256 because
//! every TLS stack verifies it, a Python grpcio operator client's included.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use rustls_pki_types::{CertificateSigningRequestDer, DnsName, pem::PemObject as _};
use time::OffsetDateTime;
use x509_parser::{
    certification_request::X509CertificationRequest, oid_registry::OID_SIG_ED25519,
    prelude::FromDer as _,
};

use crate::{
    PkiError, Role,
    identity::{Peer, check_name, system_time},
};

const KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "ca.pem";

/// How long a new CA is valid: its certificates cannot outlive it, and replacing it means
/// re-enrolling everything.
const CA_VALIDITY: Duration = Duration::from_hours(10 * 365 * 24);

/// The extended key usage of a witness certificate: id-kp-documentSigning (RFC 9336), the
/// purpose closest to signing checkpoints and the only one it has.
const WITNESS_EKU: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 36];

/// 9999-12-31T23:59:59Z, the last time an X.509 certificate can name.
const LAST_X509_SECOND: u64 = 253_402_300_799;

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// How far before now a new certificate's validity starts, so that a peer whose clock is
    /// a little behind the CA's does not refuse it as not yet valid.
    pub const BACKDATE: Duration = Duration::from_mins(5);

    /// Valid from [`BACKDATE`](Self::BACKDATE) ago until `lifetime` from now (or the end of
    /// the year 9999, X.509's last date, when that comes first).
    #[must_use]
    pub fn from_now(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_X509_SECOND);
        Validity {
            not_before: now - Self::BACKDATE,
            not_after: now.checked_add(lifetime).map_or(last, |t| t.min(last)),
        }
    }
}

/// A certificate and the private key it was issued for, both PEM (the key PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The CA, loaded: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a CA in `dir` (made mode 0700, created if missing): `ca.key` (0600) and
    /// `ca.pem`. Refuses a directory that already holds either.
    pub fn init(dir: &Path) -> Result<Ca, PkiError> {
        create_private_dir(dir)?;
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        if crate::exists(&cert_path)? || crate::exists(&key_path)? {
            return Err(PkiError::file(dir, "a CA exists here already"));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(key_error)?;
        // A random part in the name tells one deployment's CA from another's in listings.
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!(
            "recorder CA {}",
            &crate::identity::hex(&random::<4>()?)
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::from_now(CA_VALIDITY))?;
        params.serial_number = Some(serial()?);
        let cert_pem = params.self_signed(&key).map_err(cert_error)?.pem();
        // The key first: its exclusive creation is what refuses a concurrent second init.
        crate::write_private(&key_path, key.serialize_pem().as_bytes())?;
        if let Err(e) = write_public(&cert_path, cert_pem.as_bytes()) {
            let _ = fs::remove_file(&key_path);
            return Err(e);
        }
        Ca::from_parts(cert_pem, key)
    }

    /// Loads the CA of `dir`. Refuses a key file that others may read.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let key_path = dir.join(KEY_FILE);
        let mode = fs::metadata(&key_path)
            .map_err(|e| PkiError::file(&key_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(PkiError::file(
                &key_path,
                format!(
                    "mode {:o}: group and others must have no access",
                    mode & 0o777
                ),
            ));
        }
        let key = KeyPair::from_pem(&crate::read_to_string(&key_path)?).map_err(key_error)?;
        Ca::from_parts(crate::read_to_string(&dir.join(CERT_FILE))?, key)
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Result<Ca, PkiError> {
        let der = crate::cert_der_from_pem(&cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Certificate(format!("CA certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Key(
                "the CA key is not the CA certificate's".into(),
            ));
        }
        let not_after = system_time(cert.validity().not_after.timestamp())?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(cert_error)?;
        Ok(Ca {
            cert_pem,
            issuer,
            not_after,
        })
    }

    /// The CA certificate, PEM: every peer's trust anchor.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A collector's server certificate, with a new P-256 key. `dns_names` and `ip_addrs`
    /// are what clients dial; at least one is needed.
    pub fn issue_collector(
        &self,
        name: &str,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        if dns_names.is_empty() && ip_addrs.is_empty() {
            return Err(PkiError::Identity(
                "a collector certificate needs a DNS name or an IP address".into(),
            ));
        }
        let mut sans = Vec::with_capacity(dns_names.len() + ip_addrs.len());
        for dns in dns_names {
            DnsName::try_from(dns.as_str())
                .map_err(|e| PkiError::Identity(format!("DNS name {dns:?}: {e}")))?;
            sans.push(SanType::DnsName(
                dns.clone().try_into().map_err(cert_error)?,
            ));
        }
        sans.extend(ip_addrs.iter().copied().map(SanType::IpAddress));
        self.issue_new_key(
            &Peer::Collector { name: name.into() },
            &format!("recorder collector {name}"),
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
            &PKCS_ECDSA_P256_SHA256,
        )
    }

    /// An operator's client certificate, with a new P-256 key.
    pub fn issue_operator(
        &self,
        name: &str,
        role: Role,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        self.issue_new_key(
            &Peer::Operator {
                name: name.into(),
                role,
            },
            &format!("recorder operator {name} ({role})"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
            &PKCS_ECDSA_P256_SHA256,
        )
    }

    /// An agent's client certificate with an Ed25519 key made here, for sites that issue
    /// keys centrally; enrollment ([`sign_agent_csr`](Self::sign_agent_csr)) keeps the key
    /// on its host instead.
    pub fn issue_agent(&self, host: &str, validity: Validity) -> Result<Issued, PkiError> {
        self.issue_new_key(
            &agent(host),
            &agent_cn(host),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
            &PKCS_ED25519,
        )
    }

    /// A collector's witness certificate, with a new Ed25519 key: the key cosigns hosts'
    /// checkpoints and signs the collector's own log (docs/evidence.md). Its extended key
    /// usage is neither client nor server authentication: it is never a party to a
    /// connection.
    pub fn issue_witness(&self, name: &str, validity: Validity) -> Result<Issued, PkiError> {
        self.issue_new_key(
            &Peer::Witness { name: name.into() },
            &format!("recorder witness {name}"),
            Vec::new(),
            ExtendedKeyUsagePurpose::Other(WITNESS_EKU.to_vec()),
            validity,
            &PKCS_ED25519,
        )
    }

    /// Signs an agent's CSR (PEM or DER) for `host`, the host its join token was made for.
    /// Everything the CSR asks for but its key is ignored: the certificate names `host`,
    /// whatever names the CSR holds. The CSR must be signed by its own key, an Ed25519 one
    /// (it will also sign the host's checkpoints).
    pub fn sign_agent_csr(
        &self,
        csr: &[u8],
        host: &str,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
            CertificateSigningRequestDer::from_pem_slice(csr)
                .map_err(|e| PkiError::Csr(format!("unreadable PEM: {e}")))?
        } else {
            CertificateSigningRequestDer::from(csr.to_vec())
        };
        let (rest, request) = X509CertificationRequest::from_der(&der)
            .map_err(|e| PkiError::Csr(format!("not a CSR: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::Csr("trailing bytes after the CSR".into()));
        }
        let spki = &request.certification_request_info.subject_pki;
        if spki.algorithm.algorithm != OID_SIG_ED25519 || spki.subject_public_key.data.len() != 32 {
            return Err(PkiError::Csr("the key is not an Ed25519 key".into()));
        }
        request
            .verify_signature()
            .map_err(|e| PkiError::Csr(format!("bad self-signature: {e}")))?;
        let key =
            SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| PkiError::Csr(e.to_string()))?;
        let params = self.leaf_params(
            &agent(host),
            &agent_cn(host),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )?;
        Ok(params
            .signed_by(&key, &self.issuer)
            .map_err(cert_error)?
            .pem())
    }

    fn issue_new_key(
        &self,
        peer: &Peer,
        common: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<Issued, PkiError> {
        let params = self.leaf_params(peer, common, sans, usage, validity)?;
        let key = KeyPair::generate_for(alg).map_err(key_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// What every certificate the CA issues has: the identity URI, a common name for people,
    /// a random serial, one extended key usage (client or server, never both), no CA rights.
    fn leaf_params(
        &self,
        peer: &Peer,
        common: &str,
        mut sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Result<CertificateParams, PkiError> {
        check_name(peer.name())?;
        if validity.not_after > self.not_after {
            return Err(PkiError::Certificate(
                "the validity ends after the CA's".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(common);
        sans.insert(0, SanType::URI(peer.uri().try_into().map_err(cert_error)?));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        set_validity(&mut params, validity)?;
        Ok(params)
    }
}

/// Creates `dir` (and missing parents) mode 0700, or narrows an existing one to 0700: it is
/// about to hold a private key.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PkiError::file(dir, e))?;
    let meta = fs::metadata(dir).map_err(|e| PkiError::file(dir, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| PkiError::file(dir, e))?;
    }
    Ok(())
}

/// Writes a new world-readable file (a certificate); an existing one is refused.
fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| PkiError::file(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| PkiError::file(path, e))
}

fn agent(host: &str) -> Peer {
    Peer::Agent { host: host.into() }
}

fn agent_cn(host: &str) -> String {
    format!("recorder agent {host}")
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Validity) -> Result<(), PkiError> {
    if validity.not_after <= validity.not_before {
        return Err(PkiError::Certificate(
            "the validity ends before it starts".into(),
        ));
    }
    params.not_before = offset(validity.not_before)?;
    params.not_after = offset(validity.not_after)?;
    Ok(())
}

fn offset(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()),
        Err(before) => i64::try_from(before.duration().as_secs()).map(|s| -s),
    };
    secs.ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| PkiError::Certificate(format!("time out of range: {t:?}")))
}

/// A random positive 16-byte serial, so that no two certificates share one: revocation
/// lists and alerts name certificates by serial.
fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = random::<16>()?;
    // Positive, and with a non-zero first byte so its DER length is always 16.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N], PkiError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Key("the system's random source failed".into()))?;
    Ok(bytes)
}

#[expect(clippy::needless_pass_by_value, reason = "used with map_err")]
fn key_error(e: rcgen::Error) -> PkiError {
    PkiError::Key(e.to_string())
}

#[expect(clippy::needless_pass_by_value, reason = "used with map_err")]
fn cert_error(e: rcgen::Error) -> PkiError {
    PkiError::Certificate(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::{AgentKey, CertInfo, ed25519_public_key_from_pkcs8_pem};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn day() -> Validity {
        Validity::from_now(Duration::from_hours(24))
    }

    fn new_ca() -> (tempfile::TempDir, Ca) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::init(&tmp.path().join("ca")).unwrap();
        (tmp, ca)
    }

    #[test]
    fn files_are_private() {
        let (tmp, ca) = new_ca();
        let dir = tmp.path().join("ca");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CERT_FILE)) & 0o022, 0);
        let err = Ca::init(&dir).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        let loaded = Ca::load(&dir).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());

        let issued = loaded.issue_operator("alice", Role::Admin, day()).unwrap();
        let key_path = tmp.path().join("alice.key");
        crate::write_private(&key_path, issued.key_pem.as_bytes()).unwrap();
        assert_eq!(mode(&key_path), 0o600);
        assert!(
            crate::write_private(&key_path, b"again").is_err(),
            "overwrote"
        );
        assert_eq!(fs::read_to_string(&key_path).unwrap(), issued.key_pem);

        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Ca::load(&dir).is_err(), "loaded a group-readable key");
    }

    #[test]
    fn an_existing_open_directory_is_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Ca::init(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn identities_and_keys_of_issued_certificates() {
        let (_tmp, ca) = new_ca();
        let collector = ca
            .issue_collector(
                "c1",
                &["collector.example".into()],
                &["127.0.0.1".parse().unwrap()],
                day(),
            )
            .unwrap();
        let info = CertInfo::from_pem(&collector.cert_pem).unwrap();
        assert_eq!(info.peer, Peer::Collector { name: "c1".into() });
        assert!(info.subject.contains("c1"));
        assert!(ca.issue_collector("c1", &[], &[], day()).is_err());
        assert!(
            ca.issue_collector("c1", &["not a name".into()], &[], day())
                .is_err()
        );

        let agent = ca.issue_agent("web-1", day()).unwrap();
        let info = CertInfo::from_pem(&agent.cert_pem).unwrap();
        assert_eq!(
            info.peer,
            Peer::Agent {
                host: "web-1".into()
            }
        );
        assert_eq!(
            info.ed25519_public_key,
            Some(ed25519_public_key_from_pkcs8_pem(&agent.key_pem).unwrap())
        );

        let a = ca.issue_operator("bob", Role::Auditor, day()).unwrap();
        let b = ca.issue_operator("bob", Role::Auditor, day()).unwrap();
        let (a, b) = (
            CertInfo::from_pem(&a.cert_pem).unwrap(),
            CertInfo::from_pem(&b.cert_pem).unwrap(),
        );
        assert_eq!(a.serial_hex.len(), 32);
        assert_ne!(a.serial_hex, b.serial_hex);

        assert!(
            ca.issue_operator("bob:admin", Role::Auditor, day())
                .is_err()
        );
        for lifetime in [2 * CA_VALIDITY, Duration::MAX] {
            assert!(
                ca.issue_agent("web-1", Validity::from_now(lifetime))
                    .is_err(),
                "outlives the CA"
            );
        }
        let now = SystemTime::now();
        let backwards = Validity {
            not_before: now,
            not_after: now - Duration::from_secs(1),
        };
        assert!(ca.issue_agent("web-1", backwards).is_err());
    }

    /// Whatever names the CSR asks for, the certificate carries the host it is signed for.
    #[test]
    fn a_csr_is_bound_to_the_given_host() {
        let (_tmp, ca) = new_ca();
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = CertificateParams::new(vec!["collector.example".to_owned()]).unwrap();
        params.distinguished_name = common_name("recorder operator root (admin)");
        params.subject_alt_names.push(SanType::URI(
            "urn:recorder:operator:admin:root".try_into().unwrap(),
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params.serialize_request(&key).unwrap();

        for input in [csr.pem().unwrap().into_bytes(), csr.der().to_vec()] {
            let pem = ca.sign_agent_csr(&input, "web-1", day()).unwrap();
            let info = CertInfo::from_pem(&pem).unwrap();
            assert_eq!(
                info.peer,
                Peer::Agent {
                    host: "web-1".into()
                }
            );
            assert!(!info.subject.contains("root"), "{}", info.subject);
            let der = crate::cert_der_from_pem(&pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let sans = &cert.subject_alternative_name().unwrap().unwrap().value;
            assert_eq!(sans.general_names.len(), 1, "{sans:?}");
            assert!(!cert.is_ca());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
            assert_eq!(info.ed25519_public_key.as_slice(), [key.public_key_raw()]);
        }
    }

    #[test]
    fn agent_enrollment_keeps_the_key() {
        let (_tmp, ca) = new_ca();
        let agent = AgentKey::generate().unwrap();
        let pem = ca
            .sign_agent_csr(agent.csr_pem.as_bytes(), "web-2", day())
            .unwrap();
        let public = ed25519_public_key_from_pkcs8_pem(&agent.key_pem).unwrap();
        assert_eq!(
            CertInfo::from_pem(&pem).unwrap().ed25519_public_key,
            Some(public)
        );
        let seed = crate::ed25519_seed_from_pkcs8_pem(&agent.key_pem).unwrap();
        assert_eq!(
            ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes(),
            public
        );
        // Renewal: a new CSR for the same key.
        let renewal = AgentKey::csr_for_key(&agent.key_pem).unwrap();
        let pem = ca
            .sign_agent_csr(renewal.as_bytes(), "web-2", day())
            .unwrap();
        assert_eq!(
            CertInfo::from_pem(&pem).unwrap().ed25519_public_key,
            Some(public)
        );
        let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(AgentKey::csr_for_key(&p256.serialize_pem()).is_err());
        assert!(crate::ed25519_seed_from_pkcs8_pem(&p256.serialize_pem()).is_err());
    }

    #[test]
    fn bad_csrs_are_refused() {
        let (_tmp, ca) = new_ca();
        let agent = AgentKey::generate().unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(agent.csr_pem.as_bytes())
            .unwrap()
            .to_vec();
        // The signature is the last 64 bytes.
        let mut forged = der.clone();
        *forged.last_mut().unwrap() ^= 1;
        let err = ca.sign_agent_csr(&forged, "web-1", day()).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");

        let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&p256)
            .unwrap();
        let err = ca
            .sign_agent_csr(csr.pem().unwrap().as_bytes(), "web-1", day())
            .unwrap_err();
        assert!(err.to_string().contains("Ed25519"), "{err}");

        assert!(ca.sign_agent_csr(&der, "bad host", day()).is_err());
        for len in 0..der.len() {
            assert!(ca.sign_agent_csr(&der[..len], "web-1", day()).is_err());
        }
        assert!(
            ca.sign_agent_csr(
                b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n",
                "web-1",
                day()
            )
            .is_err()
        );
    }
}
