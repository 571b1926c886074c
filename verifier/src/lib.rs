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

/// The chain that holds the collector's own alerts, grant changes and reads. Agents' chain
/// ids are `HOST:BOOT_ID:START`, so this one cannot collide.
pub const COLLECTOR_CHAIN: &str = "collector";

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
/// certificates are checked against `ca_pem` as they are met, and the collector's two keys
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
}

impl Trust {
    /// The keys of the collector's witness certificate `cert_pem`, which must be issued by
    /// the CA of `ca_pem` to a witness.
    pub fn from_witness_cert(ca_pem: &str, cert_pem: &str) -> Result<Self, String> {
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
        let deployment = pki::deployment_id(ca_pem).map_err(|e| e.to_string())?;
        let witness =
            CosignatureVerifier::from_public_key(&pki::witness_key(&deployment, name), &key)
                .map_err(|e| e.to_string())?;
        let log = Verifier::from_public_key(&pki::collector_log(&deployment, name), &key)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            ca_pem: ca_pem.to_owned(),
            deployment,
            witness,
            log: Some(log),
        })
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
