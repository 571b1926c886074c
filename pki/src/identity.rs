//! Who a certificate speaks for (docs/pki.md): one `urn:recorder:` URI in its subject
//! alternative names. The URI, not the common name, is the identity: it has one spelling, so
//! the collector and an offline checker read the same peer from the same bytes.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime},
};

use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, oid_registry::OID_SIG_ED25519,
    prelude::FromDer,
};

use crate::PkiError;

/// The prefix of every identity URI. Scheme and namespace are compared case-insensitively
/// when counting a certificate's identities, so a differently-cased second one cannot hide.
const PREFIX: &str = "urn:recorder:";

/// The longest name: a DNS name's limit, which host names and machine ids fit in.
pub const MAX_NAME_LEN: usize = 253;

/// What an operator may do. Ordered: each role may do everything the ones below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads evidence: search, tail, replay, verify.
    Auditor,
    /// Also approves and revokes grants.
    Approver,
    /// Also administers: enrollment, revocation of hosts.
    Admin,
}

impl Role {
    /// The role as identities spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Auditor => "auditor",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auditor" => Ok(Role::Auditor),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            _ => Err(PkiError::Identity(format!("unknown role {s:?}"))),
        }
    }
}

/// The party at the other end of a connection, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The agent of one host; its Ed25519 key also signs the host's checkpoints.
    Agent { host: String },
    /// A person, with what they may do.
    Operator { name: String, role: Role },
    /// A collector.
    Collector { name: String },
    /// A collector's witness key: it cosigns hosts' checkpoints and signs the collector's
    /// own log. Never a party to a connection.
    Witness { name: String },
}

impl Peer {
    /// The identity URI that names this peer in a certificate.
    #[must_use]
    pub fn uri(&self) -> String {
        match self {
            Peer::Agent { host } => format!("{PREFIX}agent:host:{host}"),
            Peer::Operator { name, role } => format!("{PREFIX}operator:{role}:{name}"),
            Peer::Collector { name } => format!("{PREFIX}collector:{name}"),
            Peer::Witness { name } => format!("{PREFIX}witness:{name}"),
        }
    }

    /// Parses an identity URI; anything but the exact spelling `uri` produces is refused.
    pub fn from_uri(uri: &str) -> Result<Peer, PkiError> {
        let bad = || PkiError::Identity(format!("not a recorder identity: {:?}", clip(uri)));
        let rest = uri.strip_prefix(PREFIX).ok_or_else(bad)?;
        let peer = match rest.split(':').collect::<Vec<_>>().as_slice() {
            ["agent", "host", host] => Peer::Agent {
                host: (*host).to_owned(),
            },
            ["operator", role, name] => Peer::Operator {
                name: (*name).to_owned(),
                role: role.parse()?,
            },
            ["collector", name] => Peer::Collector {
                name: (*name).to_owned(),
            },
            ["witness", name] => Peer::Witness {
                name: (*name).to_owned(),
            },
            _ => return Err(bad()),
        };
        check_name(peer.name())?;
        Ok(peer)
    }

    /// The host, operator or collector name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Peer::Agent { host: name }
            | Peer::Operator { name, .. }
            | Peer::Collector { name }
            | Peer::Witness { name } => name,
        }
    }

    /// Reads the peer from a DER certificate: exactly one identity URI, well formed. The
    /// certificate's signature and validity are not checked here; the TLS handshake did that.
    pub fn from_cert_der(der: &[u8]) -> Result<Peer, PkiError> {
        Ok(CertInfo::from_der(der)?.peer)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Checks a host, operator or collector name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters,
/// digits, `.`, `_`, `-` and `@`, starting with a letter or digit. No `:` (the URI's
/// separator), no spaces or controls (names reach logs and terminals).
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok_first && ok_rest && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(PkiError::Identity(format!(
            "invalid name {:?}: 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ - @, starting with a letter or digit",
            clip(name)
        )))
    }
}

/// What the recorder reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub peer: Peer,
    /// The serial number, lowercase hex without separators, as printed in listings.
    pub serial_hex: String,
    /// The subject distinguished name, for people (RFC 4514 style).
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The subject's Ed25519 public key, when it has one (an agent's): it verifies the host's
    /// signed checkpoints.
    pub ed25519_public_key: Option<[u8; 32]>,
    /// The certificate itself (DER), so what it vouched for can be checked again later.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate (a single one, nothing after it) and its identity.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, PkiError> {
        let cert = parse(der)?;
        Ok(CertInfo {
            peer: peer_of(&cert)?,
            serial_hex: hex(cert.raw_serial()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: system_time(cert.validity().not_before.timestamp())?,
            not_after: system_time(cert.validity().not_after.timestamp())?,
            ed25519_public_key: ed25519_key(&cert),
            der: der.to_vec(),
        })
    }

    /// Parses the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<CertInfo, PkiError> {
        CertInfo::from_der(&crate::cert_der_from_pem(pem)?)
    }

    /// The certificate as PEM.
    #[must_use]
    pub fn pem(&self) -> String {
        pem_of_der(&self.der)
    }
}

/// A DER certificate as PEM (RFC 7468): base64 in lines of 64.
#[must_use]
pub fn pem_of_der(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What a refused client's certificate said, as far as it can be read: it chained to
/// nothing we trust, or had expired, so none of it is vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedCert {
    /// Subject and issuer names, serial (hex) and expiry; `None` when the bytes are not an
    /// X.509 certificate at all.
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub serial_hex: Option<String>,
    pub not_after: Option<SystemTime>,
    /// The recorder identity it claims, or why it has none.
    pub peer: Result<Peer, PkiError>,
}

impl OfferedCert {
    /// Reads what it can of `der`; never fails, whatever the bytes.
    #[must_use]
    pub fn from_der(der: &[u8]) -> OfferedCert {
        match parse(der) {
            Ok(cert) => OfferedCert {
                subject: Some(cert.subject().to_string()),
                issuer: Some(cert.issuer().to_string()),
                serial_hex: Some(hex(cert.raw_serial())),
                not_after: system_time(cert.validity().not_after.timestamp()).ok(),
                peer: peer_of(&cert),
            },
            Err(e) => OfferedCert {
                subject: None,
                issuer: None,
                serial_hex: None,
                not_after: None,
                peer: Err(e),
            },
        }
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Certificate(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// The one identity URI among the subject alternative names.
fn peer_of(cert: &X509Certificate<'_>) -> Result<Peer, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Identity(format!("unreadable subject alternative names: {e}")))?
        .ok_or_else(|| PkiError::Identity("no subject alternative names".into()))?;
    let mut ours = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri)
                if uri
                    .get(..PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX)) =>
            {
                Some(*uri)
            }
            _ => None,
        });
    match (ours.next(), ours.next()) {
        (Some(uri), None) => Peer::from_uri(uri),
        (None, _) => Err(PkiError::Identity("no recorder identity URI".into())),
        (Some(_), Some(_)) => Err(PkiError::Identity(
            "more than one recorder identity URI".into(),
        )),
    }
}

fn ed25519_key(cert: &X509Certificate<'_>) -> Option<[u8; 32]> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return None;
    }
    spki.subject_public_key.data.as_ref().try_into().ok()
}

/// A certificate time (seconds since the epoch, negative before it) as a `SystemTime`.
pub(crate) fn system_time(unix: i64) -> Result<SystemTime, PkiError> {
    let delta = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(delta)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(delta)
    }
    .ok_or_else(|| PkiError::Certificate(format!("time out of range: {unix}")))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// At most 80 characters of hostile text, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// This host's id, as its agent's certificate and chains name it: systemd's machine id,
/// else the host name.
#[must_use]
pub fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Auditor < Role::Approver && Role::Approver < Role::Admin);
        for role in [Role::Auditor, Role::Approver, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("Admin".parse::<Role>().is_err());
    }

    #[test]
    fn uris_round_trip() {
        for peer in [
            Peer::Agent {
                host: "0123456789abcdef0123456789abcdef".into(),
            },
            Peer::Operator {
                name: "alice@example.com".into(),
                role: Role::Approver,
            },
            Peer::Collector {
                name: "collector-1.example".into(),
            },
        ] {
            assert_eq!(Peer::from_uri(&peer.uri()).unwrap(), peer);
        }
    }

    #[test]
    fn malformed_uris_are_refused() {
        let long = format!("urn:recorder:agent:host:{}", "a".repeat(MAX_NAME_LEN + 1));
        for uri in [
            "",
            "urn:recorder:",
            "urn:recorder:agent:web-1",
            "urn:recorder:agent:host:",
            "urn:recorder:agent:host:web:1",
            "urn:recorder:agent:host:-web",
            "urn:recorder:agent:host:web 1",
            "urn:recorder:agent:host:wéb",
            "urn:recorder:operator:root:alice",
            "urn:recorder:operator:admin",
            "urn:recorder:collector:c:d",
            "URN:RECORDER:agent:host:web-1",
            "urn:other:agent:host:web-1",
            &long,
        ] {
            assert!(Peer::from_uri(uri).is_err(), "{uri:?} accepted");
        }
        let longest = format!("urn:recorder:agent:host:{}", "a".repeat(MAX_NAME_LEN));
        assert!(Peer::from_uri(&longest).is_ok());
    }

    /// A self-signed certificate with these URIs among its alternative names.
    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["web-1.example".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn exactly_one_identity_uri() {
        let one = cert_with_uris(&["https://example.com/", "urn:recorder:agent:host:web-1"]);
        assert_eq!(
            Peer::from_cert_der(&one).unwrap(),
            Peer::Agent {
                host: "web-1".into()
            }
        );
        let info = CertInfo::from_der(&one).unwrap();
        assert_eq!(info.serial_hex.len() % 2, 0);
        assert!(info.not_before < info.not_after);
        assert_eq!(info.ed25519_public_key, None, "a P-256 key");
        for uris in [
            &[][..],
            &["https://example.com/"],
            &[
                "urn:recorder:agent:host:web-1",
                "urn:recorder:agent:host:web-2",
            ],
            &[
                "urn:recorder:agent:host:web-1",
                "URN:Recorder:operator:admin:mallory",
            ],
            &["urn:recorder:agent:host:web 1"],
        ] {
            assert!(
                Peer::from_cert_der(&cert_with_uris(uris)).is_err(),
                "{uris:?}"
            );
        }
        let mut trailing = one.clone();
        trailing.push(0);
        assert!(CertInfo::from_der(&trailing).is_err());
    }

    /// Truncated and corrupted certificates are refused, never a panic.
    #[test]
    fn hostile_certificates() {
        let der = cert_with_uris(&["urn:recorder:operator:admin:alice"]);
        for len in 0..der.len() {
            assert!(Peer::from_cert_der(&der[..len]).is_err());
            let offered = OfferedCert::from_der(&der[..len]);
            assert!(offered.peer.is_err());
        }
        for i in 0..der.len() {
            for bit in [0x01, 0x80] {
                let mut bad = der.clone();
                bad[i] ^= bit;
                let _ = Peer::from_cert_der(&bad);
                let _ = OfferedCert::from_der(&bad);
            }
        }
        assert!(
            OfferedCert::from_der(b"\x16\x03\x01garbage")
                .subject
                .is_none()
        );
    }

    #[test]
    fn times_before_the_epoch() {
        assert_eq!(
            system_time(-1).unwrap(),
            SystemTime::UNIX_EPOCH - Duration::from_secs(1)
        );
    }
}
