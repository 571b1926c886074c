//! Export: one session's evidence bundle (docs/evidence.md, "Bundles"): its records as
//! stored, each with an inclusion proof in its host's log against the latest cosigned
//! checkpoint, the notes, the verifier keys as a tlog-policy and the certificates, for a
//! verifier with no network and no trust in this collector.
//!
//! The proofs of all the session's records need the roots of a few hundred complete
//! subtrees at most; they are found in one pass over the log's stored leaves, so an export
//! reads the log once whatever the session's size.

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    ops::ControlFlow,
};

use proto::{chain::GENESIS, session::Key};
use tlog::{CompactRange, Hash, Subtrees};

use crate::{error::QueryError, store::Store, witness::Witness};

/// Leaves read at a time.
const PAGE: usize = 10_000;

/// The bundle of session `key`, as the file's bytes.
pub(crate) fn bundle(
    store: &dyn Store,
    witness: &Witness,
    key: &str,
    now_unix_nano: u64,
) -> Result<Vec<u8>, QueryError> {
    let parsed: Key = key
        .parse()
        .map_err(|e| QueryError::Invalid(format!("session {key:?}: {e}")))?;
    let host = parsed.host;
    let leaves = store.session_leaves(key)?;
    let Some(first) = leaves.first() else {
        return Err(QueryError::NotFound(format!(
            "no record of session {key} is in a signed log"
        )));
    };
    let checkpoint = store
        .log_checkpoints(&host)?
        .into_iter()
        .max_by_key(|c| c.size)
        .filter(|c| c.size > first.log_index)
        .ok_or_else(|| {
            QueryError::NotFound(format!(
                "no cosigned checkpoint of host {host}'s log covers session {key} yet; \
                 agents sign one every second while records flow"
            ))
        })?;
    let note = tlog::Note::parse(checkpoint.note.as_bytes())
        .map_err(|e| internal(format!("the stored checkpoint note: {e}")))?;
    // Records after the checkpoint cannot be proven yet: a bundle never claims to hold
    // every record of the session (docs/evidence.md).
    let covered: Vec<_> = leaves
        .into_iter()
        .filter(|l| l.log_index < checkpoint.size)
        .collect();
    let mut needed = Needed::default();
    for leaf in &covered {
        tlog::inclusion_proof(leaf.log_index, checkpoint.size, &mut needed)
            .map_err(|e| internal(format!("{e:?}")))?;
    }
    let pruned = match store.prune(&host)? {
        Some(p) => CompactRange::from_bytes(&p.frontier)
            .map_err(|e| internal(format!("the stored prune of host {host}: {e}")))?,
        None => CompactRange::new(),
    };
    let mut known = subtree_roots(store, &host, checkpoint.size, &pruned, &needed.0)?;
    // The hash before a record whose predecessor was pruned is where its prune record
    // says the chain resumes.
    let own = crate::verify::OwnRecords::read(store)?;
    let trust = own.trust(witness, &mut Vec::new());
    let cuts = own
        .prunes(&trust, &mut Vec::new())
        .by_host
        .remove(&host)
        .map(|p| p.cuts)
        .unwrap_or_default();
    let mut records = Vec::with_capacity(covered.len());
    for leaf in covered {
        let proof =
            tlog::inclusion_proof(leaf.log_index, checkpoint.size, &mut known).map_err(|e| {
                internal(format!(
                    "the inclusion proof of leaf {}: {e:?}",
                    leaf.log_index
                ))
            })?;
        let proof = tlog::TlogProof::new(leaf.log_index, proof, note.clone())
            .map_err(|e| internal(e.to_string()))?;
        let prev = match (leaf.seq, cuts.get(&leaf.chain_id)) {
            (0, _) => GENESIS.to_vec(),
            (seq, Some(cut)) if cut.first_kept == seq => cut.prev.to_vec(),
            (seq, _) => store.hash_at(&leaf.chain_id, seq - 1)?.ok_or_else(|| {
                internal(format!("chain {} lacks seq {}", leaf.chain_id, seq - 1))
            })?,
        };
        records.push(bundle::Record {
            chain_id: leaf.chain_id,
            seq: leaf.seq,
            log_index: leaf.log_index,
            prev,
            event: leaf.event,
            proof: proof.to_text(),
        });
    }
    let host_key = pki::verify_cert(&witness.ca_pem, &checkpoint.cert_pem, None)
        .ok()
        .and_then(|info| info.ed25519_public_key)
        .ok_or_else(|| internal("the host certificate of the checkpoint has no key".into()))?;
    let host_key = tlog::Verifier::from_public_key(&witness.origin(&host), &host_key)
        .map_err(|e| internal(e.to_string()))?;
    let (cosigner_pem, cosigner_key) = cosigner(&trust, witness, &note);
    let bundle = bundle::Bundle {
        format: bundle::FORMAT.into(),
        session: key.to_owned(),
        origin: witness.origin(&host),
        host,
        exported_unix_nano: now_unix_nano,
        // In the one strict PEM spelling the bundle format allows.
        certificates: [&checkpoint.cert_pem, cosigner_pem]
            .into_iter()
            .map(|pem| pki::CertInfo::from_pem(pem).map(|c| c.pem()))
            .collect::<Result<_, _>>()
            .map_err(|e| internal(format!("a certificate of the bundle: {e}")))?,
        policy: bundle::policy(&[host_key], &[cosigner_key]),
        records,
    };
    Ok(bundle.to_json())
}

/// The witness certificate and cosignature key of the collector of the store that cosigned
/// `note`: this one, or another.
fn cosigner<'a>(
    trust: &'a verifier::Trust,
    witness: &'a Witness,
    note: &tlog::Note,
) -> (&'a str, tlog::CosignatureVerifier) {
    let other = tlog::Checkpoint::parse_body(note.text())
        .ok()
        .and_then(|c| trust.cosignature(note, &c).ok()?.1);
    match other {
        Some(other) => (&other.cert_pem, other.witness.clone()),
        None => (&witness.cert_pem, witness.cosigner.verifier()),
    }
}

fn internal(message: String) -> QueryError {
    QueryError::Store(crate::store::StoreError::Backend(std::sync::Arc::new(
        std::io::Error::other(message),
    )))
}

/// The complete subtrees inclusion proofs ask for.
#[derive(Default)]
struct Needed(BTreeSet<(u64, u64)>);

impl Subtrees for Needed {
    type Error = Infallible;

    fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, Infallible> {
        self.0.insert((start, size));
        Ok([0; 32])
    }
}

/// The roots of the complete subtrees found in one pass.
struct Known(HashMap<(u64, u64), Hash>);

impl Subtrees for Known {
    type Error = (u64, u64);

    fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, (u64, u64)> {
        self.0.get(&(start, size)).copied().ok_or((start, size))
    }
}

/// Reads leaves `0 .. size` of `host`'s log (after the `pruned` ones, which are their
/// compact range) and keeps the roots of the `needed` complete subtrees, merging as a
/// compact range does: every complete subtree appears on the way.
fn subtree_roots(
    store: &dyn Store,
    host: &str,
    size: u64,
    pruned: &CompactRange,
    needed: &BTreeSet<(u64, u64)>,
) -> Result<Known, QueryError> {
    let mut known = HashMap::with_capacity(needed.len());
    let mut stack: Vec<(u64, u64, Hash)> = Vec::with_capacity(64);
    // The pruned leaves' perfect subtrees, largest first: the bits of their count.
    let mut start = 0;
    let mut roots = pruned.frontier().iter();
    for bit in (0..64).rev() {
        let width = 1u64 << bit;
        if pruned.size() & width != 0 {
            let root = *roots
                .next()
                .ok_or_else(|| internal("a short frontier".into()))?;
            if needed.contains(&(start, width)) {
                known.insert((start, width), root);
            }
            stack.push((start, width, root));
            start += width;
        }
    }
    let mut next = pruned.size();
    let mut gap = None;
    while next < size && gap.is_none() {
        let before = next;
        let want = usize::try_from(size - next).unwrap_or(usize::MAX).min(PAGE);
        store.log_leaves(host, next, want, &mut |leaf| {
            let hash: Option<[u8; 32]> = leaf.hash.try_into().ok();
            let Some(hash) = hash.filter(|_| leaf.log_index == next) else {
                gap = Some(next);
                return ControlFlow::Break(());
            };
            stack.push((next, 1, tlog::leaf_hash(&hash)));
            next += 1;
            loop {
                let &(start, width, root) = stack.last().expect("just pushed");
                if needed.contains(&(start, width)) {
                    known.insert((start, width), root);
                }
                let n = stack.len();
                if n < 2 || stack[n - 2].1 != width {
                    break;
                }
                let (left, right) = (stack[n - 2], stack[n - 1]);
                stack.truncate(n - 2);
                stack.push((left.0, width * 2, tlog::node_hash(&left.2, &right.2)));
            }
            ControlFlow::Continue(())
        })?;
        if next == before && gap.is_none() {
            gap = Some(next);
        }
    }
    match gap {
        Some(index) => Err(internal(format!(
            "the store lacks leaf {index} of host {host}'s log"
        ))),
        None => Ok(Known(known)),
    }
}
