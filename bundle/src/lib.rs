//! Evidence bundles (docs/evidence.md, "Bundles"): one session's records, each with an
//! inclusion proof in its host's signed and witnessed log, and the certificates and trust
//! policy to check them with; and [`verify`], which checks a bundle against the CA alone,
//! with no network.
//!
//! A bundle is JSON of exactly the documented fields: an unknown or repeated field is refused
//! rather than ignored, since nothing would check what it says. Every other byte of a bundle
//! is bound by a signature, a hash or a canonical form (certificates, the policy, base64 and
//! the session key must each be the one spelling of what they hold), so one changed byte
//! fails verification; the exception is `exported_unix_nano`, which nothing signs.

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use pki::{Peer, PkiError};
use prost::Message as _;
use proto::session::Key;
use serde::{Deserialize, Serialize};
use tlog::{
    CosignatureError, CosignatureVerifier, Hash, Policy, PolicyError, ProofError, SignedCheckpoint,
    TlogProof, TlogProofError, Verifier, VerifyError,
};

/// The `format` of every bundle this crate writes and reads.
pub const FORMAT: &str = "recorder-evidence-bundle/v1";

/// The policy's name for the quorum: any one of the witnesses.
const QUORUM: &str = "w";

/// One session's evidence, as written to a bundle file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The session key, `HOST:SESSIONID:ROOT_START`.
    pub session: String,
    pub host: String,
    /// `D/recorder/host/HOST`, the host's log.
    pub origin: String,
    /// When the bundle was written. Unsigned: for people, not for verification.
    pub exported_unix_nano: u64,
    /// PEM: the certificates of the keys that signed and cosigned the checkpoints.
    pub certificates: Vec<String>,
    /// The c2sp.org/tlog-policy the checkpoints are checked under, as [`policy`] writes it.
    pub policy: String,
    /// The session's records, in log order.
    pub records: Vec<Record>,
}

/// One record of the session and its proof of inclusion in the host's log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub chain_id: String,
    pub seq: u64,
    /// The record's leaf index in the host's log.
    pub log_index: u64,
    /// The hash of the record before it in its chain (32 zero bytes for seq 0); base64 in
    /// JSON.
    #[serde(with = "base64_bytes")]
    pub prev: Vec<u8>,
    /// The record's exact event bytes (`recorder.v1.Event`); base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub event: Vec<u8>,
    /// A c2sp.org/tlog-proof of the record's inclusion against a cosigned checkpoint.
    pub proof: String,
}

/// Bytes as standard padded base64 (RFC 4648 §4), decoded strictly: the base64 crate refuses
/// non-zero trailing bits and missing padding, so each byte string has one spelling.
mod base64_bytes {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

impl Bundle {
    /// The bundle as compact JSON (UTF-8).
    ///
    /// # Panics
    ///
    /// Never: a bundle is strings, numbers and bytes, which always serialize.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a bundle is plain data and always serializes")
    }

    /// Parses a bundle file: JSON of exactly the documented fields, base64 strict. Checks
    /// nothing else; [`verify`] does.
    pub fn from_json(bytes: &[u8]) -> Result<Bundle, BundleError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Why a bundle failed verification.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a bundle (JSON of the documented fields only, base64 strict): {0}")]
    Json(#[from] serde_json::Error),
    #[error("format {0:?} is not {FORMAT}")]
    Format(String),
    #[error("the trusted CA certificate: {0}")]
    Ca(#[source] PkiError),
    #[error("host {0:?} is not a host id")]
    Host(String),
    #[error("origin {found:?} is not the host's log under this CA, {expected:?}")]
    Origin { found: String, expected: String },
    #[error(
        "session {0:?} is not a session key of the host (HOST:SESSIONID:ROOT_START, decimal without leading zeros)"
    )]
    Session(String),
    #[error("certificate {index}: {reason}")]
    Certificate { index: usize, reason: String },
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("policy line {line}: {reason}")]
    PolicyKey { line: usize, reason: String },
    #[error("the policy names no witness, so nothing vouches for the host's checkpoints")]
    NoWitness,
    #[error(
        "the policy is not the one its keys give (log lines, witness lines w1.., `group w any`, `quorum w`)"
    )]
    PolicyForm,
    #[error("the bundle holds no records")]
    NoRecords,
    #[error(
        "record {index} (seq {seq}): log index {log_index} is not above the previous record's {previous}"
    )]
    Order {
        index: usize,
        seq: u64,
        log_index: u64,
        previous: u64,
    },
    #[error("record {index} (seq {seq}): {error}")]
    Record {
        index: usize,
        seq: u64,
        #[source]
        error: RecordError,
    },
}

/// Why one record failed verification.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("prev is {0} bytes, not 32")]
    PrevLength(usize),
    #[error("chain {0:?} is not a chain of the bundle's host")]
    ChainHost(String),
    #[error("proof: {0}")]
    Proof(#[source] TlogProofError),
    #[error("the proof has an `extra` line, which nothing signs")]
    Extra,
    #[error("the proof is for index {proof}, not log_index {log_index}")]
    Index { proof: u64, log_index: u64 },
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] VerifyError),
    #[error("the checkpoint is of {0:?}, not of the bundle's origin")]
    CheckpointOrigin(String),
    #[error(
        "the checkpoint carries a signature by {name}+{key_id:08x}, a key the policy does not hold"
    )]
    UnknownSigner { name: String, key_id: u32 },
    #[error("no certificate of {key} was valid at the cosignature's time (unix {time})")]
    NotValid { key: String, time: u64 },
    #[error("the record is not in the checkpoint's tree: {0}")]
    Inclusion(#[source] ProofError),
    #[error("the event is not a recorder.v1.Event: {0}")]
    Event(#[source] prost::DecodeError),
    #[error(
        "the event is of session id {sessionid:?} and root start {root_start:?}, not of the session"
    )]
    OtherSession {
        sessionid: Option<u32>,
        root_start: Option<u64>,
    },
}

/// What a valid bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub session: String,
    pub host: String,
    pub records: usize,
    /// Distinct checkpoint notes the records are proven against.
    pub checkpoints: usize,
}

/// The tlog-policy text of docs/evidence.md: a `log` line per host key, a `witness` line per
/// witness key (named `w1`, `w2`, ...), and the quorum `w`, a group needing any one of them.
/// Keys given twice are listed once. With no witness, the quorum is `none`, which [`verify`]
/// refuses.
#[must_use]
pub fn policy(host_keys: &[Verifier], witnesses: &[CosignatureVerifier]) -> String {
    let mut lines = Vec::new();
    let mut seen = Vec::new();
    for key in host_keys {
        if !seen.contains(key.public_key()) {
            seen.push(*key.public_key());
            lines.push(format!("log {}\n", key.to_text()));
        }
    }
    let mut names = Vec::new();
    seen.clear();
    for key in witnesses {
        if !seen.contains(key.public_key()) {
            seen.push(*key.public_key());
            let name = format!("{QUORUM}{}", names.len() + 1);
            lines.push(format!("witness {name} {}\n", key.to_text()));
            names.push(name);
        }
    }
    if names.is_empty() {
        lines.push("quorum none\n".into());
    } else {
        lines.push(format!("group {QUORUM} any {}\n", names.join(" ")));
        lines.push(format!("quorum {QUORUM}\n"));
    }
    lines.concat()
}

/// A certificate of the bundle, checked against the CA, and its Ed25519 key.
struct Cert {
    info: pki::CertInfo,
    key: [u8; 32],
}

/// Checks a bundle file against the trusted CA (docs/evidence.md, checks 1 to 5), with no
/// network.
pub fn verify(bytes: &[u8], ca_pem: &str) -> Result<Verified, BundleError> {
    let bundle = Bundle::from_json(bytes)?;
    if bundle.format != FORMAT {
        return Err(BundleError::Format(bundle.format));
    }
    // 1. The names, from the trusted CA.
    let deployment = pki::deployment_id(ca_pem).map_err(BundleError::Ca)?;
    pki::check_name(&bundle.host).map_err(|_| BundleError::Host(bundle.host.clone()))?;
    let origin = pki::host_log(&deployment, &bundle.host);
    if bundle.origin != origin {
        return Err(BundleError::Origin {
            found: bundle.origin,
            expected: origin,
        });
    }
    let session = session_key(&bundle)?;
    // 2, 3. The keys, and the policy they make.
    let certs = certificates(&bundle, ca_pem)?;
    let policy = check_policy(&bundle.policy, &deployment, &origin, &certs)?;
    // 4, 5. The records.
    if bundle.records.is_empty() {
        return Err(BundleError::NoRecords);
    }
    let context = Context {
        deployment: &deployment,
        host: &bundle.host,
        origin: &origin,
        session: &session,
        policy: &policy,
        certs: &certs,
    };
    let mut checkpoints = HashMap::new();
    let mut previous: Option<u64> = None;
    for (index, record) in bundle.records.iter().enumerate() {
        if let Some(previous) = previous.filter(|&p| record.log_index <= p) {
            return Err(BundleError::Order {
                index,
                seq: record.seq,
                log_index: record.log_index,
                previous,
            });
        }
        previous = Some(record.log_index);
        context
            .record(record, &mut checkpoints)
            .map_err(|error| BundleError::Record {
                index,
                seq: record.seq,
                error,
            })?;
    }
    Ok(Verified {
        session: bundle.session,
        host: bundle.host,
        records: bundle.records.len(),
        checkpoints: checkpoints.len(),
    })
}

/// The session key, which must be of the bundle's host and spelled as keys are written.
fn session_key(bundle: &Bundle) -> Result<Key, BundleError> {
    bundle
        .session
        .parse::<Key>()
        .ok()
        .filter(|key| key.host == bundle.host && key.to_string() == bundle.session)
        .ok_or_else(|| BundleError::Session(bundle.session.clone()))
}

/// Check 2: each certificate is the CA's, an agent certificate of the host or a witness
/// certificate, with an Ed25519 key, and written as the one PEM spelling of its DER.
fn certificates(bundle: &Bundle, ca_pem: &str) -> Result<Vec<Cert>, BundleError> {
    let mut certs = Vec::with_capacity(bundle.certificates.len());
    for (index, pem) in bundle.certificates.iter().enumerate() {
        let bad = |reason: String| BundleError::Certificate { index, reason };
        let info = pki::verify_cert(ca_pem, pem, None).map_err(|e| bad(e.to_string()))?;
        if info.pem() != *pem {
            return Err(bad(
                "not exactly one certificate in strict PEM (64-character lines, \\n endings)"
                    .into(),
            ));
        }
        match &info.peer {
            Peer::Agent { host } if *host == bundle.host => {}
            Peer::Witness { .. } => {}
            other => {
                return Err(bad(format!(
                    "{other} is neither the host's agent nor a witness"
                )));
            }
        }
        let key = info
            .ed25519_public_key
            .ok_or_else(|| bad(format!("{} holds no Ed25519 key", info.peer)))?;
        certs.push(Cert { info, key });
    }
    Ok(certs)
}

/// Check 3: each log key is the host's, each witness key a witness's, each certified; at
/// least one witness; and the text is exactly what [`policy`] makes of those keys.
fn check_policy(
    text: &str,
    deployment: &str,
    origin: &str,
    certs: &[Cert],
) -> Result<Policy, BundleError> {
    let policy = Policy::parse(text.as_bytes())?;
    let mut line = 0;
    for log in policy.logs() {
        line += 1;
        let key = &log.verifier;
        let reason = if key.name() != origin {
            Some(format!(
                "the log key is named {:?}, not the origin",
                key.name()
            ))
        } else if !certs
            .iter()
            .any(|c| matches!(c.info.peer, Peer::Agent { .. }) && c.key == *key.public_key())
        {
            Some("the log key is not the key of an agent certificate of the bundle".into())
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(BundleError::PolicyKey { line, reason });
        }
    }
    for witness in policy.witnesses() {
        line += 1;
        let key = &witness.verifier;
        let certified = certs.iter().any(|c| match &c.info.peer {
            Peer::Witness { name } => {
                key.name() == pki::witness_key(deployment, name) && c.key == *key.public_key()
            }
            _ => false,
        });
        if !certified {
            return Err(BundleError::PolicyKey {
                line,
                reason: format!(
                    "{:?} is not the key of the witness certificate it names",
                    key.name()
                ),
            });
        }
    }
    if policy.witnesses().is_empty() {
        return Err(BundleError::NoWitness);
    }
    let logs: Vec<Verifier> = policy.logs().iter().map(|l| l.verifier.clone()).collect();
    let witnesses: Vec<CosignatureVerifier> = policy
        .witnesses()
        .iter()
        .map(|w| w.verifier.clone())
        .collect();
    if self::policy(&logs, &witnesses) != text {
        return Err(BundleError::PolicyForm);
    }
    Ok(policy)
}

/// What every record is checked against.
struct Context<'a> {
    deployment: &'a str,
    host: &'a str,
    origin: &'a str,
    session: &'a Key,
    policy: &'a Policy,
    certs: &'a [Cert],
}

impl Context<'_> {
    /// Check 4 for one record. `checkpoints` holds the notes verified so far, by their text:
    /// a session's records share a few checkpoints, each verified once.
    fn record(
        &self,
        record: &Record,
        checkpoints: &mut HashMap<String, SignedCheckpoint>,
    ) -> Result<(), RecordError> {
        let prev: Hash = record
            .prev
            .as_slice()
            .try_into()
            .map_err(|_| RecordError::PrevLength(record.prev.len()))?;
        if record.chain_id.split(':').next() != Some(self.host) {
            return Err(RecordError::ChainHost(record.chain_id.clone()));
        }
        let hash = proto::chain::chain_hash(&record.chain_id, record.seq, &prev, &record.event);
        let proof = TlogProof::parse(record.proof.as_bytes()).map_err(RecordError::Proof)?;
        if !proof.extra().is_empty() {
            return Err(RecordError::Extra);
        }
        if proof.index() != record.log_index {
            return Err(RecordError::Index {
                proof: proof.index(),
                log_index: record.log_index,
            });
        }
        let note = proof.checkpoint().to_text();
        if !checkpoints.contains_key(&note) {
            let signed = self.checkpoint(&proof)?;
            checkpoints.insert(note.clone(), signed);
        }
        let signed = &checkpoints[&note];
        tlog::verify_inclusion(
            &tlog::leaf_hash(&hash),
            proof.index(),
            signed.checkpoint.size(),
            proof.proof(),
            signed.checkpoint.root(),
        )
        .map_err(RecordError::Inclusion)?;
        let event =
            proto::v1::Event::decode(record.event.as_slice()).map_err(RecordError::Event)?;
        let sessionid = proto::session::sessionid_of(&event);
        let root_start = event.session_root.map(|r| r.start_unix_nano);
        if sessionid != Some(self.session.sessionid)
            || root_start != Some(self.session.start_unix_nano)
        {
            return Err(RecordError::OtherSession {
                sessionid,
                root_start,
            });
        }
        Ok(())
    }

    /// A proof's checkpoint note: signed by a log key and cosigned to the quorum, by keys of
    /// the policy only, each certificate valid when the witnesses cosigned.
    fn checkpoint(&self, proof: &TlogProof) -> Result<SignedCheckpoint, RecordError> {
        let note = proof.checkpoint();
        // Lines by keys the policy lacks would be ignored by the policy check, so nothing
        // would catch a change to them.
        let policy = self.policy;
        for line in note.signatures() {
            let known =
                policy.logs().iter().any(|l| {
                    l.verifier.name() == line.name() && l.verifier.key_id() == line.key_id()
                }) || policy.witnesses().iter().any(|w| {
                    w.verifier.name() == line.name() && w.verifier.key_id() == line.key_id()
                });
            if !known {
                return Err(RecordError::UnknownSigner {
                    name: line.name().to_owned(),
                    key_id: line.key_id(),
                });
            }
        }
        let signed = policy
            .verify_note(note.clone())
            .map_err(RecordError::Checkpoint)?;
        if signed.checkpoint.origin() != self.origin {
            return Err(RecordError::CheckpointOrigin(
                signed.checkpoint.origin().to_owned(),
            ));
        }
        // Each witness's certificate at its own cosignature's time; the host's at the first
        // one, the nearest to when it signed.
        let mut first: Option<u64> = None;
        for witness in policy.witnesses() {
            let key = &witness.verifier;
            let time = match key.verify_in_note(note, &signed.checkpoint) {
                Ok(time) => time,
                Err(CosignatureError::Missing { .. }) => continue,
                Err(e) => return Err(RecordError::Checkpoint(e.into())),
            };
            self.valid_at(key.name(), time, |c| {
                matches!(&c.info.peer, Peer::Witness { name } if pki::witness_key(self.deployment, name) == key.name())
                    && c.key == *key.public_key()
            })?;
            first = Some(first.map_or(time, |first| first.min(time)));
        }
        let Some(time) = first else {
            return Err(RecordError::Checkpoint(VerifyError::Quorum));
        };
        for log in policy.logs() {
            let key = &log.verifier;
            if note
                .signatures()
                .iter()
                .any(|line| line.name() == key.name() && line.key_id() == key.key_id())
            {
                self.valid_at(key.name(), time, |c| {
                    matches!(c.info.peer, Peer::Agent { .. }) && c.key == *key.public_key()
                })?;
            }
        }
        Ok(signed)
    }

    /// Whether a certificate of the bundle that `holds` the key was valid at `time` (Unix
    /// seconds): a key may be certified more than once, and one valid certificate is enough.
    fn valid_at(
        &self,
        key: &str,
        time: u64,
        holds: impl Fn(&Cert) -> bool,
    ) -> Result<(), RecordError> {
        let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(time));
        let valid = at.is_some_and(|at| {
            self.certs
                .iter()
                .any(|c| holds(c) && c.info.valid_at(at).is_ok())
        });
        if valid {
            Ok(())
        } else {
            Err(RecordError::NotValid {
                key: key.to_owned(),
                time,
            })
        }
    }
}

#[cfg(test)]
mod tests;
