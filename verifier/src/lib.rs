//! The checks of stored evidence (docs/evidence.md, "Verify"), with no source of their own:
//! fed the records, chain heads, checkpoints, prune records and grants that something holds,
//! they say what is wrong with them, naming the record, checkpoint or row at fault. The
//! collector's `Query.Verify` feeds them from its store a page at a time; `recorder verify
//! --local` feeds them from the `Query.Evidence` stream, trusting only the CA certificate.
//! One implementation, so the client checks exactly what the collector does and neither can
//! be lenient where the other is not.

pub mod chain;
pub mod columns;
pub mod grants;
pub mod hole;
pub mod log;
pub mod prune;

use pki::{CertInfo, Peer};
use proto::v1::{ChainVerdict, Finding, LogVerdict};
use tlog::{CosignatureVerifier, SignedCheckpoint, Verifier};

pub use chain::{ChainRow, Head, Walk};
pub use columns::Columns;

/// The host of the collectors' own chains, which hold their alerts, grant changes and
/// reads; also the id of the one chain every collector of a store shared before each had its
/// own (`collector_chain`), which a collector without a witness still writes. Agents' chain
/// ids are `HOST:BOOT_ID:START`, so none of these can collide.
pub const COLLECTOR_HOST: &str = "collector";

/// The chain of the collector whose witness certificate names it `name`: its own log.
#[must_use]
pub fn collector_chain(name: &str) -> String {
    format!("{COLLECTOR_HOST}/{name}")
}

/// How a finding names record `seq` of chain `chain_id`.
#[must_use]
pub fn record_subject(chain_id: &str, seq: u64) -> String {
    format!("chain {chain_id} seq {seq}")
}

/// Whether `chain_id` is a collector's chain, which no agent may write.
#[must_use]
pub fn is_collector_chain(chain_id: &str) -> bool {
    chain_id
        .strip_prefix(COLLECTOR_HOST)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Everything verify found.
#[derive(Debug, Default)]
pub struct Report {
    pub chains: Vec<ChainVerdict>,
    pub logs: Vec<LogVerdict>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Every chain and log verified, and nothing was found.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.chains.iter().all(|c| c.ok)
            && self.logs.iter().all(|l| l.ok)
            && self.findings.is_empty()
    }
}

/// The keys evidence is checked with, all vouched for by the deployment's CA: host
/// certificates are checked against `ca_pem` as they are met, and each collector's two keys
/// are those of its witness certificate.
pub struct Trust {
    /// The deployment's CA certificate, PEM.
    pub ca_pem: String,
    /// Its deployment id (`pki::deployment_id`): the names of the logs and keys.
    pub deployment: String,
    /// The collector's cosignature key.
    pub witness: CosignatureVerifier,
    /// The key of the collector's own log, which signs its prune records and its own
    /// checkpoints; `None` when the collector has none.
    pub log: Option<Verifier>,
    /// The other collectors of the same store (docs/scaling.md), as their witness
    /// certificates chained in the collector's chain (`COLLECTOR_STARTED`) name them: the
    /// checkpoints they cosigned and the prune records they signed are theirs to vouch for.
    pub others: Vec<OtherWitness>,
}

/// Another collector of the store: its witness certificate and the keys it holds.
pub struct OtherWitness {
    pub cert_pem: String,
    pub witness: CosignatureVerifier,
    pub log: Verifier,
}

/// The action of the `admin` record a collector chains in the collector's chain when it
/// first serves a store: its `actor` names the collector's witness (`witness NAME`), its
/// `detail` is that witness's certificate (PEM). Verify learns every collector of the
/// store from them.
pub const COLLECTOR_STARTED: &str = "collector_started";

/// The witness certificate a record of the collector's chain says a collector started
/// with, if it is a `COLLECTOR_STARTED` record.
#[must_use]
pub fn started_witness(kind: &str, event: &[u8]) -> Option<String> {
    use prost::Message as _;
    use proto::v1::{Event, event::Body};
    if kind != proto::kind::Kind::Admin.name() {
        return None;
    }
    match Event::decode(event).ok()?.body? {
        Body::Admin(act) if act.action == COLLECTOR_STARTED => Some(act.detail),
        _ => None,
    }
}

/// The name and keys of the witness certificate `cert_pem`, which must be issued by the CA
/// of `ca_pem` to a witness.
fn witness_keys(
    ca_pem: &str,
    deployment: &str,
    cert_pem: &str,
) -> Result<(CosignatureVerifier, Verifier), String> {
    let info = pki::verify_cert(ca_pem, cert_pem, None)
        .map_err(|e| format!("the collector's witness certificate: {e}"))?;
    let Peer::Witness { name } = &info.peer else {
        return Err(format!(
            "the collector's witness certificate is of {}, not of a witness",
            info.peer
        ));
    };
    let key = info
        .ed25519_public_key
        .ok_or("the collector's witness certificate holds no Ed25519 key")?;
    let witness = CosignatureVerifier::from_public_key(&pki::witness_key(deployment, name), &key)
        .map_err(|e| e.to_string())?;
    let log = Verifier::from_public_key(&pki::collector_log(deployment, name), &key)
        .map_err(|e| e.to_string())?;
    Ok((witness, log))
}

impl Trust {
    /// The keys of the collector's witness certificate `cert_pem`, which must be issued by
    /// the CA of `ca_pem` to a witness.
    pub fn from_witness_cert(ca_pem: &str, cert_pem: &str) -> Result<Self, String> {
        let deployment = pki::deployment_id(ca_pem).map_err(|e| e.to_string())?;
        let (witness, log) = witness_keys(ca_pem, &deployment, cert_pem)?;
        Ok(Self {
            ca_pem: ca_pem.to_owned(),
            deployment,
            witness,
            log: Some(log),
            others: Vec::new(),
        })
    }

    /// Trusts another collector of the store, by the witness certificate `cert_pem` its
    /// `COLLECTOR_STARTED` record (`subject`) holds. One the CA did not issue to a witness
    /// is a finding, and vouches for nothing. The collector's own, or one already trusted,
    /// changes nothing.
    pub fn add_witness(&mut self, subject: String, cert_pem: &str, findings: &mut Vec<Finding>) {
        let (witness, log) = match witness_keys(&self.ca_pem, &self.deployment, cert_pem) {
            Ok(keys) => keys,
            Err(why) => {
                findings.push(Finding {
                    subject,
                    reason: format!(
                        "a collector started with a certificate that is no witness's: {why}"
                    ),
                });
                return;
            }
        };
        let known = |w: &CosignatureVerifier| {
            (w.name(), w.public_key()) == (witness.name(), witness.public_key())
        };
        if !known(&self.witness) && !self.others.iter().any(|o| known(&o.witness)) {
            self.others.push(OtherWitness {
                cert_pem: cert_pem.to_owned(),
                witness,
                log,
            });
        }
    }

    /// The time of the collector's cosignature of `checkpoint` in `note`, and which other
    /// collector made it (`None`: this one). A cosignature line of any of them that does
    /// not verify fails it; a note none of them cosigned fails as one without this
    /// collector's cosignature.
    pub fn cosignature(
        &self,
        note: &tlog::Note,
        checkpoint: &tlog::Checkpoint,
    ) -> Result<(u64, Option<&OtherWitness>), String> {
        let own = match self.witness.verify_in_note(note, checkpoint) {
            Ok(time) => return Ok((time, None)),
            Err(missing @ tlog::CosignatureError::Missing { .. }) => missing,
            Err(e) => return Err(e.to_string()),
        };
        for other in &self.others {
            match other.witness.verify_in_note(note, checkpoint) {
                Ok(time) => return Ok((time, Some(other))),
                Err(tlog::CosignatureError::Missing { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(own.to_string())
    }

    /// The log keys prune records may be signed with: this collector's, then the others'.
    pub fn log_keys(&self) -> impl Iterator<Item = &Verifier> {
        self.log.iter().chain(self.others.iter().map(|o| &o.log))
    }

    /// The origin of `host`'s log.
    #[must_use]
    pub fn origin(&self, host: &str) -> String {
        pki::host_log(&self.deployment, host)
    }
}

/// Opens a checkpoint note of the log `origin`, signed with the key of `cert`.
pub fn open_checkpoint(
    origin: &str,
    cert: &CertInfo,
    note: &str,
) -> Result<SignedCheckpoint, String> {
    let key = cert
        .ed25519_public_key
        .ok_or("the host's certificate holds no Ed25519 key")?;
    let verifier = Verifier::from_public_key(origin, &key).map_err(|e| e.to_string())?;
    tlog::open_checkpoint(note.as_bytes(), &verifier).map_err(|e| e.to_string())
}

/// The collector's own log against the checkpoint of it that the collector signed and
/// kept outside its database (`text`): why they disagree, if they do. `range` gives the
/// leaves of the collector's chain's first records, from their stored hashes, up to the
/// size it is asked for.
pub fn own_log_disagreement<E>(
    text: &[u8],
    trust: &Trust,
    range: impl FnOnce(u64) -> Result<tlog::CompactRange, E>,
) -> Result<Option<String>, E> {
    let Some(verifier) = &trust.log else {
        return Ok(Some("the collector has no log key".into()));
    };
    let checkpoint = match tlog::open_checkpoint(text, verifier) {
        Ok(signed) => signed.checkpoint,
        Err(e) => {
            return Ok(Some(format!(
                "the checkpoint of its log it kept does not verify: {e}"
            )));
        }
    };
    let size = checkpoint.size();
    let range = range(size)?;
    Ok(if range.size() < size {
        Some(format!(
            "the collector's chain holds {} records, but the checkpoint of its log it \
             signed and kept outside the database attests {size}: the database was \
             restored to an older state or the chain cut short",
            range.size()
        ))
    } else if range.root() != *checkpoint.root() {
        Some(format!(
            "the collector's chain does not give the root of the checkpoint of size \
             {size} it signed and kept outside the database: the database was restored \
             to an older state and has gone on since, or its records were rewritten"
        ))
    } else {
        None
    })
}
