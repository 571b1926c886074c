//! The host's Merkle log (docs/evidence.md): its leaves are the chain record hashes in
//! spool order, across chains and restarts. The ship stage feeds it every record it reads
//! from the spool, signs checkpoints of it with the host's enrolled key, and keeps the
//! collector's cosigned checkpoints as receipts.
//!
//! The tree's compact range is kept in `log.state` (0600) next to the spool, with the record
//! it ends at. It is written at the end of each sealed segment read, before the segment can
//! be deleted, so every deleted record is in it. When it is lost, the collector's Welcome
//! gives the range of the leaves it holds.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use proto::v1::{self, Checkpoint, CheckpointAck, LogState};
use serde::{Deserialize, Serialize};
use tlog::{CompactRange, CosignatureVerifier, Signer};

use super::write_private;

const STATE: &str = "log.state";
const RECEIPTS: &str = "receipts";

/// What `log.state` holds.
#[derive(Serialize, Deserialize)]
struct State {
    size: u64,
    /// The compact range, base64 hashes, largest subtree first.
    frontier: Vec<String>,
    /// The last record in the log: its chain and seq.
    chain_id: String,
    seq: u64,
}

/// Which spool records are leaves already.
enum Covered {
    /// Everything up to this record, in spool order (chains in the order `chains` lists).
    UpTo {
        chain: usize,
        seq: u64,
    },
    /// Records the collector holds: below each chain's next seq in the Welcome.
    Held(std::collections::HashMap<String, u64>),
    Nothing,
}

/// The log as one connection builds it from the spool.
pub struct HostLog {
    dir: PathBuf,
    range: CompactRange,
    last: Option<(String, u64)>,
    covered: Covered,
    chains: Vec<String>,
    signer: Signer,
    /// Leaves covered by the last checkpoint sent.
    signed_size: Option<u64>,
    pub receipts: Arc<Receipts>,
}

impl HostLog {
    /// The log of the spool in `dir`, whose chains are `chains` (oldest first): from
    /// `log.state` when there is one, else from the collector's `welcome` (its heads, and
    /// the compact range of what it holds).
    pub fn open(
        dir: &Path,
        chains: &[String],
        signer: Signer,
        welcome: &v1::Welcome,
        receipts: Arc<Receipts>,
    ) -> anyhow::Result<Self> {
        let path = dir.join(STATE);
        let held = welcome.log.as_ref().map_or(0, |l| l.size);
        let (range, last, covered) = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                // A collector holding fewer leaves than the state lost some it had
                // acknowledged (a restored backup), and the spool no longer has them: the log
                // goes on from what the collector holds, and the receipts say it was rolled
                // back. Signing on from the state would give roots it can never match.
                if state.size > held {
                    tracing::warn!(
                        state = state.size,
                        held,
                        "the collector holds fewer leaves of this host's log than the agent \
                         recorded: the log goes on from the collector's"
                    );
                    return Self::from_welcome(dir, chains, signer, welcome, receipts);
                }
                let frontier = state
                    .frontier
                    .iter()
                    .map(|h| STANDARD.decode(h))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("reading {}", path.display()))?;
                let range = range_of(state.size, &frontier)
                    .with_context(|| format!("reading {}", path.display()))?;
                let covered = match chains.iter().position(|c| *c == state.chain_id) {
                    Some(chain) => Covered::UpTo {
                        chain,
                        seq: state.seq,
                    },
                    // Its chain's segments are all deleted: every record left is after it.
                    None => Covered::Nothing,
                };
                (range, Some((state.chain_id, state.seq)), covered)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::from_welcome(dir, chains, signer, welcome, receipts);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            range,
            last,
            covered,
            chains: chains.to_vec(),
            signer,
            signed_size: None,
            receipts,
        })
    }

    /// The log as the collector's Welcome says it holds it: its compact range, and each
    /// chain's records below its next seq.
    fn from_welcome(
        dir: &Path,
        chains: &[String],
        signer: Signer,
        welcome: &v1::Welcome,
        receipts: Arc<Receipts>,
    ) -> anyhow::Result<Self> {
        let (size, frontier) = welcome
            .log
            .as_ref()
            .map_or((0, &[][..]), |l| (l.size, l.frontier.as_slice()));
        let range = range_of(size, frontier).context("the collector's log state")?;
        let held = welcome
            .heads
            .iter()
            .map(|h| (h.chain_id.clone(), h.next_seq))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            range,
            last: None,
            covered: Covered::Held(held),
            chains: chains.to_vec(),
            signer,
            signed_size: None,
            receipts,
        })
    }

    /// Adds a record read from the spool, unless it is a leaf already.
    pub fn read(&mut self, chain_id: &str, seq: u64, hash: &[u8]) -> anyhow::Result<()> {
        let covered = match &self.covered {
            Covered::UpTo { chain, seq: last } => {
                let at = self.chains.iter().position(|c| c == chain_id);
                at.is_some_and(|at| at < *chain || (at == *chain && seq <= *last))
            }
            Covered::Held(held) => held.get(chain_id).is_some_and(|next| seq < *next),
            Covered::Nothing => false,
        };
        if covered {
            return Ok(());
        }
        let hash: [u8; 32] = hash
            .try_into()
            .context("a spool record's hash is not 32 bytes")?;
        self.range.append(tlog::leaf_hash(&hash))?;
        self.last = Some((chain_id.to_owned(), seq));
        Ok(())
    }

    /// Makes the log's state durable: called at the end of a sealed segment, before it may
    /// be deleted.
    pub fn save(&self) -> anyhow::Result<()> {
        let Some((chain_id, seq)) = &self.last else {
            return Ok(());
        };
        let state = State {
            size: self.range.size(),
            frontier: self
                .range
                .frontier()
                .iter()
                .map(|h| STANDARD.encode(h))
                .collect(),
            chain_id: chain_id.clone(),
            seq: *seq,
        };
        write_private(&self.dir.join(STATE), &serde_json::to_vec(&state)?)
            .with_context(|| format!("writing {}", self.dir.join(STATE).display()))
    }

    /// A signed checkpoint of the log as read so far, when it has grown since the last one
    /// or `again` (an idle host attests that nothing happened).
    pub fn checkpoint(&mut self, again: bool) -> anyhow::Result<Option<Checkpoint>> {
        let size = self.range.size();
        if !worth_signing(size, self.signed_size, self.receipts.cosigned_size(), again) {
            return Ok(None);
        }
        let body = tlog::Checkpoint::new(self.signer.name(), size, self.range.root())?;
        let note = tlog::sign_checkpoint(&self.signer, &body)?;
        self.signed_size = Some(size);
        Ok(Some(Checkpoint {
            note: note.to_text(),
            old_size: self.receipts.cosigned_size(),
        }))
    }
}

/// Whether a checkpoint of `size` leaves is worth signing, the last signed being of
/// `signed` and the collector's last cosigned of `cosigned`. Not below `cosigned`: after a
/// restart the log is rebuilt by reading the spool again from `log.state`, which is saved
/// only at the end of a sealed segment, so it passes through sizes the collector cosigned
/// long ago. A witness refuses those (its old size is larger), and the refusal ended the
/// stream, which read the spool again from the start: a host whose unsealed segment held
/// more than a second of reading never shipped again.
fn worth_signing(size: u64, signed: Option<u64>, cosigned: u64, again: bool) -> bool {
    size >= cosigned && (again || signed != Some(size))
}

/// The compact range of `size` leaves from its frontier hashes, largest subtree first.
fn range_of(size: u64, frontier: &[Vec<u8>]) -> anyhow::Result<CompactRange> {
    let hashes = frontier
        .iter()
        .map(|h| <[u8; 32]>::try_from(h.as_slice()).context("a hash is not 32 bytes"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CompactRange::from_frontier(size, &hashes)?)
}

/// The collector's cosigned checkpoints of this host's log, kept in the spool directory
/// (`receipts`, one note after another, append-only): what the collector acknowledged it
/// holds, in its own signature.
pub struct Receipts {
    path: PathBuf,
    inner: Mutex<ReceiptsInner>,
}

#[derive(Default)]
struct ReceiptsInner {
    /// The size the collector last said it cosigned (its refusal may lower it).
    cosigned_size: u64,
    /// The largest size of a receipt kept.
    largest: u64,
    /// Size of the last receipt chained as an event.
    chained: u64,
    witness: Option<CosignatureVerifier>,
}

impl Receipts {
    /// The receipts kept in `dir`. Unreadable ones are reported: a rollback of the
    /// collector cannot be told until the next receipt.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(RECEIPTS);
        let largest = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .split("\n\n\n")
                .filter_map(|note| note.lines().nth(1)?.parse::<u64>().ok())
                .max()
                .unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read the receipts");
                0
            }
        };
        Self {
            path,
            inner: Mutex::new(ReceiptsInner {
                largest,
                chained: largest,
                ..ReceiptsInner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReceiptsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[must_use]
    pub fn cosigned_size(&self) -> u64 {
        self.lock().cosigned_size
    }

    /// Takes the collector's word on a connection: its log, and the witness key that
    /// cosigns (its certificate checked against the CA). Returns the size of the largest
    /// receipt when the collector holds fewer leaves: it was rolled back.
    pub fn welcome(
        &self,
        ca_pem: &str,
        deployment: &str,
        log: &LogState,
    ) -> anyhow::Result<Option<u64>> {
        let info = pki::verify_cert(ca_pem, &log.witness_cert_pem, None)
            .context("the collector's witness certificate")?;
        let (pki::Peer::Witness { name }, Some(key)) = (&info.peer, info.ed25519_public_key) else {
            anyhow::bail!("the collector's witness certificate is {}", info.peer);
        };
        let verifier =
            CosignatureVerifier::from_public_key(&pki::witness_key(deployment, name), &key)?;
        let cosigned_size = if log.cosigned.is_empty() {
            0
        } else {
            tlog::Note::parse(log.cosigned.as_bytes())
                .ok()
                .and_then(|n| tlog::Checkpoint::parse_body(n.text()).ok())
                .map_or(0, |c| c.size())
        };
        let mut inner = self.lock();
        inner.witness = Some(verifier);
        inner.cosigned_size = cosigned_size;
        Ok((log.size < inner.largest).then_some(inner.largest))
    }

    /// Takes the collector's answer to a checkpoint: a cosigned note is checked (the host's
    /// own signature and the witness's cosignature) and kept. Returns the `receipt` event to
    /// chain, if this one is to be.
    pub fn answer(
        &self,
        signer: &Signer,
        ack: &CheckpointAck,
    ) -> anyhow::Result<Option<v1::Event>> {
        let mut inner = self.lock();
        inner.cosigned_size = ack.cosigned_size;
        if ack.cosigned.is_empty() {
            tracing::info!(reason = %ack.refused, cosigned_size = ack.cosigned_size, "checkpoint not cosigned; the next one continues from the collector's size");
            return Ok(None);
        }
        let cosigned = tlog::open_checkpoint(ack.cosigned.as_bytes(), &signer.verifier())
            .context("the cosigned checkpoint is not this host's")?;
        let witness = inner
            .witness
            .as_ref()
            .context("a cosigned checkpoint before the witness key")?;
        witness
            .verify_in_note(&cosigned.note, &cosigned.checkpoint)
            .context("the collector's cosignature does not verify")?;
        let size = cosigned.checkpoint.size();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        write!(file, "{}\n\n", ack.cosigned)?;
        file.sync_data()?;
        inner.largest = inner.largest.max(size);
        // A receipt adds a leaf: one whose log grew by that leaf alone is kept, not
        // chained, so receipts do not beget receipts.
        if size <= inner.chained + 1 {
            return Ok(None);
        }
        inner.chained = size;
        Ok(Some(v1::Event {
            time_unix_nano: proto::time::now_unix_nano(),
            body: Some(v1::event::Body::Receipt(v1::Receipt {
                note: ack.cosigned.clone(),
            })),
            ..v1::Event::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::worth_signing;

    #[test]
    fn a_log_being_rebuilt_signs_nothing_below_what_the_collector_cosigned() {
        // Rebuilding from log.state towards the collector's 269,069.
        assert!(!worth_signing(12_006, None, 269_069, false));
        assert!(
            !worth_signing(12_006, None, 269_069, true),
            "not even to attest idleness"
        );
        assert!(
            worth_signing(269_069, None, 269_069, false),
            "the cosigned size itself"
        );
        assert!(worth_signing(270_391, Some(269_069), 269_069, false));
        // As before: a size already signed only to attest an idle host.
        assert!(!worth_signing(270_391, Some(270_391), 269_069, false));
        assert!(worth_signing(270_391, Some(270_391), 269_069, true));
        // A fresh log with nothing cosigned.
        assert!(worth_signing(0, None, 0, true));
    }
}
