//! c2sp.org/tlog-proof: an offline-verifiable proof that an entry is in a log, made of an
//! optional `extra` line, the entry's index, its inclusion proof and the (cosigned)
//! checkpoint note it is proven against.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! [extra <base64>]
//! index <decimal>
//! <base64 hash>...
//!
//! <checkpoint note>
//! ```

use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::checkpoint::{SignedCheckpoint, parse_decimal, parse_hash};
use crate::merkle::Hash;
use crate::note::{MAX_NOTE_BYTES, Note, NoteError};
use crate::policy::{Policy, VerifyError};
use crate::proof::{ProofError, verify_inclusion};

/// The first line of every proof.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// The most inclusion proof hashes: one per level of a tree of up to 2^64 leaves.
pub const MAX_PROOF_HASHES: usize = 64;

/// The largest proof accepted: a note of the largest size plus room for the header, index,
/// hashes and extra data.
pub const MAX_TLOG_PROOF_BYTES: usize = MAX_NOTE_BYTES + 64 * 1024;

/// Why a proof was refused or did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlogProofError {
    #[error("the proof is larger than {MAX_TLOG_PROOF_BYTES} bytes")]
    TooLarge,
    #[error("the proof is not UTF-8")]
    Utf8,
    #[error("the proof does not start with {TLOG_PROOF_HEADER}")]
    Header,
    #[error("the proof ends early")]
    Truncated,
    #[error("the extra line is not `extra` and non-empty standard padded base64")]
    Extra,
    #[error("the index line is not `index` and a decimal without leading zeros")]
    Index,
    #[error("a proof line is not standard padded base64 of 32 bytes")]
    Hash,
    #[error("the proof has more than {MAX_PROOF_HASHES} hashes")]
    TooManyHashes,
    #[error("checkpoint: {0}")]
    Note(#[from] NoteError),
    #[error(transparent)]
    Policy(#[from] VerifyError),
    #[error("inclusion: {0}")]
    Inclusion(#[from] ProofError),
}

/// A parsed or assembled tlog-proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    extra: Vec<u8>,
    index: u64,
    proof: Vec<Hash>,
    checkpoint: Note,
}

/// Splits off the next newline-terminated line.
fn next_line(rest: &str) -> Result<(&str, &str), TlogProofError> {
    rest.split_once('\n').ok_or(TlogProofError::Truncated)
}

impl TlogProof {
    /// A proof that entry `index` is in the tree of the checkpoint note `checkpoint`, by the
    /// inclusion proof `proof`.
    pub fn new(index: u64, proof: Vec<Hash>, checkpoint: Note) -> Result<Self, TlogProofError> {
        if proof.len() > MAX_PROOF_HASHES {
            return Err(TlogProofError::TooManyHashes);
        }
        Ok(Self {
            extra: Vec::new(),
            index,
            proof,
            checkpoint,
        })
    }

    /// The same proof with opaque, unauthenticated extra data (none when empty).
    #[must_use]
    pub fn with_extra(mut self, extra: Vec<u8>) -> Self {
        self.extra = extra;
        self
    }

    /// The extra data, empty when there is none. Not authenticated by anything.
    #[must_use]
    pub fn extra(&self) -> &[u8] {
        &self.extra
    }

    /// The entry's zero-based index in the log.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The inclusion proof, leaf side first.
    #[must_use]
    pub fn proof(&self) -> &[Hash] {
        &self.proof
    }

    /// The checkpoint note the proof is against.
    #[must_use]
    pub fn checkpoint(&self) -> &Note {
        &self.checkpoint
    }

    /// The proof as text.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = format!("{TLOG_PROOF_HEADER}\n");
        if !self.extra.is_empty() {
            out.push_str("extra ");
            out.push_str(&STANDARD.encode(&self.extra));
            out.push('\n');
        }
        out.push_str("index ");
        out.push_str(&self.index.to_string());
        out.push('\n');
        for hash in &self.proof {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint.to_text());
        out
    }

    /// Parses a proof strictly; the checkpoint note is parsed but not verified.
    pub fn parse(input: &[u8]) -> Result<Self, TlogProofError> {
        if input.len() > MAX_TLOG_PROOF_BYTES {
            return Err(TlogProofError::TooLarge);
        }
        let input = std::str::from_utf8(input).map_err(|_| TlogProofError::Utf8)?;
        let (header, rest) = next_line(input)?;
        if header != TLOG_PROOF_HEADER {
            return Err(TlogProofError::Header);
        }
        let (mut line, mut rest) = next_line(rest)?;
        let mut extra = Vec::new();
        if let Some(b64) = line.strip_prefix("extra ") {
            extra = STANDARD.decode(b64).map_err(|_| TlogProofError::Extra)?;
            if extra.is_empty() {
                return Err(TlogProofError::Extra);
            }
            (line, rest) = next_line(rest)?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(parse_decimal)
            .ok_or(TlogProofError::Index)?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = next_line(rest)?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_HASHES {
                return Err(TlogProofError::TooManyHashes);
            }
            proof.push(parse_hash(line).ok_or(TlogProofError::Hash)?);
        }
        let checkpoint = Note::parse(rest.as_bytes())?;
        Ok(Self {
            extra,
            index,
            proof,
            checkpoint,
        })
    }

    /// Verifies the proof for `leaf` (the leaf hash, see [`crate::leaf_hash`]) as
    /// tlog-proof's steps have it: the checkpoint is signed by a log of `policy` named by its
    /// origin and cosigned to the policy's quorum, and the inclusion proof binds the leaf at
    /// the index to the checkpoint's root. Gives the verified checkpoint.
    pub fn verify(&self, leaf: &Hash, policy: &Policy) -> Result<SignedCheckpoint, TlogProofError> {
        let signed = policy.verify_note(self.checkpoint.clone())?;
        verify_inclusion(
            leaf,
            self.index,
            signed.checkpoint.size(),
            &self.proof,
            signed.checkpoint.root(),
        )?;
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, sign_checkpoint};
    use crate::cosignature::add_cosignature;
    use crate::keys::{Cosigner, Signer};
    use crate::merkle::root_of;
    use crate::proof::inclusion_proof;
    use crate::testutil::leaves;

    const ORIGIN: &str = "example.test/recorder/host/h1";

    struct Fixture {
        leaves: Vec<Hash>,
        policy: Policy,
        proof: TlogProof,
    }

    fn fixture() -> Fixture {
        let leaves = leaves(11);
        let log = Signer::from_seed(ORIGIN, [1; 32]).unwrap();
        let witness = Cosigner::from_seed("example.test/witness", [2; 32]).unwrap();
        let checkpoint = Checkpoint::new(ORIGIN, 11, root_of(&leaves)).unwrap();
        let mut note = sign_checkpoint(&log, &checkpoint).unwrap();
        add_cosignature(&mut note, &witness, &checkpoint, 1_700_000_000).unwrap();
        let proof = inclusion_proof(6, 11, &mut &leaves[..]).unwrap();
        let policy = format!(
            "log {}\nwitness w {}\nquorum w\n",
            log.verifier().to_text(),
            witness.verifier().to_text()
        );
        Fixture {
            policy: Policy::parse(policy.as_bytes()).unwrap(),
            proof: TlogProof::new(6, proof, note).unwrap(),
            leaves,
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let Fixture {
            leaves,
            policy,
            proof,
        } = fixture();
        let text = proof.to_text();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nindex 6\n"));
        let parsed = TlogProof::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed, proof);
        let signed = parsed.verify(&leaves[6], &policy).unwrap();
        assert_eq!(signed.checkpoint.size(), 11);
        assert!(matches!(
            parsed.verify(&leaves[5], &policy),
            Err(TlogProofError::Inclusion(ProofError::RootMismatch))
        ));

        let with_extra = proof.clone().with_extra(b"host h1, record 6".to_vec());
        let text = with_extra.to_text();
        assert!(
            text.starts_with("c2sp.org/tlog-proof@v1\nextra aG9zdCBoMSwgcmVjb3JkIDY=\nindex 6\n")
        );
        assert_eq!(TlogProof::parse(text.as_bytes()).unwrap(), with_extra);

        // A quorum the checkpoint does not meet: a second witness is required too.
        let strict = format!(
            "log {}\nwitness w {}\nwitness v {}\ngroup both all w v\nquorum both\n",
            policy.logs()[0].verifier.to_text(),
            policy.witnesses()[0].verifier.to_text(),
            Cosigner::from_seed("example.test/other", [3; 32])
                .unwrap()
                .verifier()
                .to_text()
        );
        let strict = Policy::parse(strict.as_bytes()).unwrap();
        assert!(matches!(
            proof.verify(&leaves[6], &strict),
            Err(TlogProofError::Policy(VerifyError::Quorum))
        ));
    }

    #[test]
    fn malformed_proofs() {
        let Fixture { proof, .. } = fixture();
        let text = proof.to_text();
        let note = proof.checkpoint().to_text();
        let hash = STANDARD.encode([1u8; 32]);
        let bad = [
            text.replacen("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2", 1),
            text.replacen("index 6", "index 06", 1),
            text.replacen("index 6", "index -6", 1),
            text.replacen("index 6", "index  6", 1),
            text.replacen("index 6", "extra \nindex 6", 1),
            text.replacen("index 6", "extra !!\nindex 6", 1),
            text.replacen("index 6", "extra AA\nindex 6", 1),
            text.replacen("index 6", "index 6\nindex 6", 1),
            format!(
                "{TLOG_PROOF_HEADER}\nindex 0\n{}\n\n{note}",
                hash.trim_end_matches('=')
            ),
            format!(
                "{TLOG_PROOF_HEADER}\nindex 0\n{}\n\n{note}",
                STANDARD.encode([1u8; 64])
            ),
            format!("{TLOG_PROOF_HEADER}\nindex 0\n{hash}\n{note}"),
            format!(
                "{TLOG_PROOF_HEADER}\nindex 0\n{}\n{note}",
                format!("{hash}\n").repeat(65)
            ),
            format!("{TLOG_PROOF_HEADER}\nindex 0\n\n"),
            format!("{TLOG_PROOF_HEADER}\nindex 0\n"),
            format!("{TLOG_PROOF_HEADER}\n"),
            TLOG_PROOF_HEADER.to_owned(),
            String::new(),
            format!("{TLOG_PROOF_HEADER}\r\nindex 0\n\n{note}"),
            format!(
                "{TLOG_PROOF_HEADER}\nindex 0\n\n{}",
                "x".repeat(MAX_TLOG_PROOF_BYTES)
            ),
        ];
        for proof in &bad {
            assert!(TlogProof::parse(proof.as_bytes()).is_err(), "{proof:?}");
        }
        assert!(
            TlogProof::parse(
                format!(
                    "{TLOG_PROOF_HEADER}\nindex 0\n{}\n{note}",
                    format!("{hash}\n").repeat(64)
                )
                .as_bytes()
            )
            .is_ok()
        );
        assert!(TlogProof::new(0, vec![[0; 32]; 65], proof.checkpoint().clone()).is_err());
    }

    #[test]
    fn hostile_proofs_never_panic() {
        let Fixture {
            leaves,
            policy,
            proof,
        } = fixture();
        let extra = vec![7; 10];
        let text = proof.with_extra(extra.clone()).to_text();
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            if let Ok(p) = TlogProof::parse(&bytes[..cut]) {
                let _ = p.verify(&leaves[6], &policy);
            }
        }
        // Every third byte: verifying is slow in debug builds.
        for i in (0..bytes.len()).step_by(3) {
            let mut b = bytes.to_vec();
            b[i] ^= 0x08;
            if let Ok(p) = TlogProof::parse(&b) {
                // The extra data is not authenticated; any other change is caught.
                if p.extra() == extra {
                    assert!(p.verify(&leaves[6], &policy).is_err(), "byte {i}");
                }
            }
        }
    }
}
