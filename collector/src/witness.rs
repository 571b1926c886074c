//! The collector as witness of its hosts' logs (docs/evidence.md): its cosigning key, the
//! names it signs under, and the check of a host's signed checkpoint against the key of the
//! certificate the host connected with. Whether to cosign is decided by the writer, against
//! the leaves it stored; this module only knows keys and notes.

use std::path::Path;

use pki::{CertInfo, Peer, PkiError};
use tlog::{Cosigner, SignedCheckpoint};

/// The witness key certificate and key in the collector's PKI directory.
const CERT: &str = "witness.pem";
const KEY: &str = "witness.key";
/// The collector's own log's latest checkpoint, in the state directory.
const OWN_CHECKPOINT: &str = "collector-log.checkpoint";
/// Beside it: the last checkpoint the collector kept of the one chain every collector of a
/// store shared before each had its own (`COLLECTOR_HOST`), set aside when it first started
/// on a chain of its own, and checked against that chain ever after.
const SHARED_CHECKPOINT: &str = "collector-log.shared.checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {message}")]
    Key { path: String, message: String },
}

/// The collector's witness identity.
pub struct Witness {
    /// The deployment id of the CA (`pki::deployment_id`).
    pub deployment: String,
    /// The collector's name, as its witness certificate says.
    pub name: String,
    pub cosigner: Cosigner,
    /// The witness certificate, PEM: agents check cosignatures against it.
    pub cert_pem: String,
    /// The deployment's CA certificate, PEM: verify checks the certificates of every
    /// signature against it.
    pub ca_pem: String,
    /// Where the latest signed checkpoint of the collector's own log is kept, outside the
    /// database (`--state-dir`); `None`: it is not kept.
    pub own_checkpoint: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("cosigner", &self.cosigner)
            .finish_non_exhaustive()
    }
}

impl Witness {
    /// Loads `witness.pem` and `witness.key` from `dir`, checked against the CA of `ca_pem`.
    pub fn load(dir: &Path, ca_pem: &str) -> Result<Self, WitnessError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| WitnessError::Key {
                path: dir.join(name).display().to_string(),
                message: format!(
                    "{e} (every collector cosigns with a witness key: recorder pki issue witness)"
                ),
            })
        };
        Self::from_pem(ca_pem, &read(CERT)?, &read(KEY)?).map_err(|e| match e {
            WitnessError::Key { message, .. } => WitnessError::Key {
                path: dir.join(CERT).display().to_string(),
                message,
            },
            other @ WitnessError::Pki(_) => other,
        })
    }

    /// The witness of the certificate `cert_pem` (issued by the CA of `ca_pem`) and its key
    /// (PKCS#8 PEM).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, WitnessError> {
        let bad = |message: String| WitnessError::Key {
            path: CERT.into(),
            message,
        };
        let info = pki::verify_cert(ca_pem, cert_pem, None)?;
        let Peer::Witness { name } = &info.peer else {
            return Err(bad(format!("{} is not a witness certificate", info.peer)));
        };
        let deployment = pki::deployment_id(ca_pem)?;
        let seed = pki::ed25519_seed_from_pkcs8_pem(key_pem)?;
        let cosigner = Cosigner::from_seed(&pki::witness_key(&deployment, name), seed)
            .map_err(|e| bad(e.to_string()))?;
        if Some(*cosigner.verifier().public_key()) != info.ed25519_public_key {
            return Err(bad(format!("{KEY} is not the key of the certificate")));
        }
        Ok(Self {
            name: name.clone(),
            deployment,
            cosigner,
            cert_pem: cert_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
            own_checkpoint: None,
        })
    }

    /// The key of the collector's own log (docs/evidence.md): the witness key's seed as a
    /// plain Ed25519 note key under the log's name. It signs prune records.
    pub fn log_signer(&self) -> Result<tlog::Signer, tlog::KeyError> {
        tlog::Signer::from_seed(
            &pki::collector_log(&self.deployment, &self.name),
            self.cosigner.seed(),
        )
    }

    /// Keeps the collector's own log's latest checkpoint in `dir` (created 0700).
    pub fn keep_checkpoint_in(mut self, dir: &Path) -> Result<Self, WitnessError> {
        pki::create_private_dir(dir)?;
        self.own_checkpoint = Some(dir.join(OWN_CHECKPOINT));
        Ok(self)
    }

    /// The origin of the collector's own log.
    #[must_use]
    pub fn own_origin(&self) -> String {
        pki::collector_log(&self.deployment, &self.name)
    }

    /// The id of the collector's own chain, whose records are its own log's leaves.
    #[must_use]
    pub fn own_chain(&self) -> String {
        verifier::collector_chain(&self.name)
    }

    /// The keys verify checks evidence with: the CA, and this collector's own
    /// (`verify::OwnRecords::trust` adds the other collectors of the store).
    #[must_use]
    pub fn trust(&self) -> verifier::Trust {
        verifier::Trust {
            ca_pem: self.ca_pem.clone(),
            deployment: self.deployment.clone(),
            witness: self.cosigner.verifier(),
            log: self.log_signer().map(|s| s.verifier()).ok(),
            others: Vec::new(),
        }
    }

    /// The latest signed checkpoint of the collector's own log kept outside the database,
    /// if one is.
    pub(crate) fn kept_checkpoint(&self) -> Result<Option<Vec<u8>>, String> {
        self.own_checkpoint.as_deref().map_or(Ok(None), kept)
    }

    /// Whether the collector's own chain in `store` disagrees with the checkpoint of it kept
    /// outside the database, or the shared chain with the checkpoint of it set aside: which
    /// chain, and why, if one does (a database restored to an older state, or its chain cut
    /// short). Nothing kept yet is no disagreement.
    pub(crate) fn own_log_disagreement(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<Option<(String, String)>, crate::store::StoreError> {
        let shared = self
            .own_checkpoint
            .as_ref()
            .map(|p| p.with_file_name(SHARED_CHECKPOINT));
        for (chain, path) in [
            (self.own_chain(), self.own_checkpoint.clone()),
            (crate::store::COLLECTOR_HOST.to_owned(), shared),
        ] {
            let why = match path.as_deref().map(kept) {
                Some(Ok(Some(text))) => {
                    verifier::own_log_disagreement(&text, &self.trust(), |size| {
                        own_log(store, &chain, size)
                    })?
                }
                Some(Err(why)) => Some(why),
                Some(Ok(None)) | None => None,
            };
            if let Some(why) = why {
                return Ok(Some((chain, why)));
            }
        }
        Ok(None)
    }

    /// A collector that kept checkpoints of the one chain every collector of the store
    /// shared, starting for the first time on a chain of its own: the checkpoint it kept,
    /// when the shared chain gives it, is set aside, to be checked against that chain from
    /// now on, and its own log starts empty. A kept checkpoint the shared chain does not
    /// give stays where it is, for `own_log_disagreement` to report.
    pub(crate) fn set_shared_checkpoint_aside(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<(), crate::store::StoreError> {
        let Some(path) = &self.own_checkpoint else {
            return Ok(());
        };
        let Ok(Some(text)) = kept(path) else {
            return Ok(());
        };
        let chains = store.host_chains(crate::store::COLLECTOR_HOST)?;
        let (own, shared) = (self.own_chain(), crate::store::COLLECTOR_HOST);
        let has = |id: &str| chains.iter().any(|c| c.chain_id == id);
        if has(&own) || !has(shared) {
            return Ok(());
        }
        let given = verifier::own_log_disagreement(&text, &self.trust(), |size| {
            own_log(store, shared, size)
        })?
        .is_none();
        if given {
            let aside = path.with_file_name(SHARED_CHECKPOINT);
            match std::fs::rename(path, &aside) {
                Ok(()) => tracing::info!(
                    kept = %aside.display(),
                    "this collector now chains into a chain of its own; the checkpoint it kept of the chain collectors shared is set aside, and checked against that chain"
                ),
                Err(error) => tracing::error!(
                    path = %path.display(),
                    %error,
                    "cannot set the checkpoint of the shared chain aside"
                ),
            }
        }
        Ok(())
    }

    /// The origin of `host`'s log.
    #[must_use]
    pub fn origin(&self, host: &str) -> String {
        pki::host_log(&self.deployment, host)
    }

    /// Opens a checkpoint note of `host`'s log, signed with the key of `cert`, the host's
    /// certificate on this connection.
    pub fn open(
        &self,
        host: &str,
        cert: &CertInfo,
        note: &str,
    ) -> Result<SignedCheckpoint, String> {
        verifier::open_checkpoint(&self.origin(host), cert, note)
    }
}

/// The checkpoint kept at `path`, if one is.
fn kept(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The collector's own log as its stored chain `chain_id` gives it: the leaves of its first
/// `size` records (fewer when it holds fewer), from their stored hashes.
pub(crate) fn own_log(
    store: &dyn crate::store::Store,
    chain_id: &str,
    size: u64,
) -> Result<tlog::CompactRange, crate::store::StoreError> {
    let mut range = tlog::CompactRange::new();
    extend_own_log(store, chain_id, &mut range, size)?;
    Ok(range)
}

/// Extends `range`, the collector's own log (of its chain `chain_id`) as far as it goes,
/// with the stored records after it, up to `size` leaves.
pub(crate) fn extend_own_log(
    store: &dyn crate::store::Store,
    chain_id: &str,
    range: &mut tlog::CompactRange,
    size: u64,
) -> Result<(), crate::store::StoreError> {
    while range.size() < size {
        let before = range.size();
        let want = usize::try_from(size - before)
            .unwrap_or(usize::MAX)
            .min(10_000);
        store.chain_rows(
            chain_id,
            before,
            want,
            &mut |row| match <[u8; 32]>::try_from(row.hash) {
                Ok(hash) if row.seq == range.size() => {
                    let _ = range.append(tlog::leaf_hash(&hash));
                    std::ops::ControlFlow::Continue(())
                }
                _ => std::ops::ControlFlow::Break(()),
            },
        )?;
        if range.size() - before < want as u64 {
            break;
        }
    }
    Ok(())
}
