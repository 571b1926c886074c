//! The checks of c2sp.org/tlog-witness `add-checkpoint`, without the HTTP: given what a
//! witness last cosigned for a log and an incoming checkpoint (whose log signature the caller
//! has verified, e.g. with [`crate::open_checkpoint`]), whether to cosign it.
//!
//! The caller must make the decision and the state update atomic per origin, as the spec
//! requires: otherwise two requests can both pass and roll the state back.

use crate::checkpoint::Checkpoint;
use crate::merkle::{EMPTY_ROOT, Hash};
use crate::proof::{ProofError, verify_consistency};

/// What a witness keeps per origin: the size and root of the last checkpoint it cosigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessState {
    /// The tree size last cosigned.
    pub size: u64,
    /// The root cosigned at that size.
    pub root: Hash,
}

/// How the witness is shown that the new checkpoint extends what it cosigned.
#[derive(Debug, Clone, Copy)]
pub enum Evidence<'a> {
    /// A consistency proof from the old size to the checkpoint's size, as tlog-witness
    /// carries it.
    Proof(&'a [Hash]),
    /// The root the witness computed itself over its own copy of the log's first
    /// `checkpoint.size()` leaves, which extend those it cosigned before. (The project's
    /// collector holds every record, so it can check the root directly.)
    Recomputed(Hash),
}

/// Why a checkpoint is refused as invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("old size {old} is larger than the checkpoint's size {new}")]
    OldSizeTooLarge { old: u64, new: u64 },
    #[error("a checkpoint of size zero must have the empty tree's root")]
    EmptyTreeRoot,
    #[error("the consistency proof from size zero must be empty")]
    ProofFromEmpty,
    #[error("the consistency proof does not verify: {0}")]
    Inconsistent(ProofError),
    #[error("the checkpoint's root is not the root of the witness's own copy of the log")]
    RootMismatch { recomputed: Hash },
}

/// The witness's decision on a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Cosign, after recording `state` as the origin's new state.
    Accept { state: WitnessState },
    /// The old size is not the last cosigned size (`current_size`, zero if none); the client
    /// retries from there. Rollbacks land here or in [`Invalid::OldSizeTooLarge`].
    Conflict { current_size: u64 },
    /// A checkpoint of the size already cosigned with another root: evidence that the log
    /// signed two trees of one size.
    Fork {
        /// The size in question.
        size: u64,
        /// The root the witness cosigned at that size.
        cosigned: Hash,
        /// The other root the log signed.
        offered: Hash,
    },
    /// The request is malformed or the proof does not hold.
    Invalid(Invalid),
}

impl Verdict {
    /// The HTTP status tlog-witness gives this verdict: 200, 409, 400 or 422.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Accept { .. } => 200,
            Self::Conflict { .. } => 409,
            Self::Invalid(Invalid::OldSizeTooLarge { .. }) => 400,
            Self::Fork { .. } | Self::Invalid(_) => 422,
        }
    }
}

/// Decides on `checkpoint`, offered as extending the tree of `old_size` leaves, given the
/// witness's `current` state for its origin (`None` if it never cosigned one). In the order
/// tlog-witness checks them: the old size is at most the new (400), equals the last cosigned
/// size (409), a size-zero tree has the empty root (422), then consistency (422). An equal
/// size with another root is a [`Verdict::Fork`], so one size is never cosigned with two
/// roots.
#[must_use]
pub fn decide(
    current: Option<&WitnessState>,
    old_size: u64,
    checkpoint: &Checkpoint,
    evidence: Evidence<'_>,
) -> Verdict {
    let new = WitnessState {
        size: checkpoint.size(),
        root: *checkpoint.root(),
    };
    if old_size > new.size {
        return Verdict::Invalid(Invalid::OldSizeTooLarge {
            old: old_size,
            new: new.size,
        });
    }
    let current = current.copied().unwrap_or(WitnessState {
        size: 0,
        root: EMPTY_ROOT,
    });
    if old_size != current.size {
        return Verdict::Conflict {
            current_size: current.size,
        };
    }
    if new.size == 0 && new.root != EMPTY_ROOT {
        return Verdict::Invalid(Invalid::EmptyTreeRoot);
    }
    if new.size == current.size && new.root != current.root {
        return Verdict::Fork {
            size: new.size,
            cosigned: current.root,
            offered: new.root,
        };
    }
    match evidence {
        Evidence::Proof(proof) => {
            if old_size == 0 && !proof.is_empty() {
                return Verdict::Invalid(Invalid::ProofFromEmpty);
            }
            if let Err(e) = verify_consistency(old_size, new.size, proof, &current.root, &new.root)
            {
                return Verdict::Invalid(Invalid::Inconsistent(e));
            }
        }
        Evidence::Recomputed(recomputed) => {
            if recomputed != new.root {
                return Verdict::Invalid(Invalid::RootMismatch { recomputed });
            }
        }
    }
    Verdict::Accept { state: new }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::root_of;
    use crate::proof::consistency_proof;
    use crate::testutil::leaves;

    const ORIGIN: &str = "example.test/recorder/host/h1";

    fn checkpoint(size: u64, root: Hash) -> Checkpoint {
        Checkpoint::new(ORIGIN, size, root).unwrap()
    }

    #[test]
    fn a_log_grows_under_the_witness() {
        let leaves = leaves(20);
        let mut state: Option<WitnessState> = None;
        let mut cosigned = 0u64;
        for size in [0u64, 1, 1, 5, 8, 8, 13, 20] {
            let cp = checkpoint(size, root_of(&leaves[..size as usize]));
            let proof = consistency_proof(cosigned, size, &mut &leaves[..]).unwrap();
            let verdict = decide(state.as_ref(), cosigned, &cp, Evidence::Proof(&proof));
            let Verdict::Accept { state: next } = verdict else {
                panic!("{cosigned} -> {size}: {verdict:?}");
            };
            assert_eq!(verdict.http_status(), 200);
            // The collector's own recomputation agrees.
            assert_eq!(
                decide(
                    state.as_ref(),
                    cosigned,
                    &cp,
                    Evidence::Recomputed(*cp.root())
                ),
                verdict
            );
            state = Some(next);
            cosigned = size;
        }
        assert_eq!(state.unwrap().size, 20);
    }

    #[test]
    fn refusals() {
        let leaves = leaves(16);
        let root = |n: usize| root_of(&leaves[..n]);
        let state = WitnessState {
            size: 8,
            root: root(8),
        };
        let current = Some(&state);
        let proof_8_12 = consistency_proof(8, 12, &mut &leaves[..]).unwrap();

        // Old size above the new size: 400.
        let v = decide(current, 8, &checkpoint(6, root(6)), Evidence::Proof(&[]));
        assert_eq!(
            v,
            Verdict::Invalid(Invalid::OldSizeTooLarge { old: 8, new: 6 })
        );
        assert_eq!(v.http_status(), 400);
        // A stale old size, or a rollback to an older checkpoint: 409 with the current size.
        for (old, size) in [(4, 12), (0, 12), (6, 6), (12, 12)] {
            let v = decide(
                current,
                old,
                &checkpoint(size, root(size as usize)),
                Evidence::Proof(&[]),
            );
            assert_eq!(v, Verdict::Conflict { current_size: 8 }, "{old} -> {size}");
            assert_eq!(v.http_status(), 409);
        }
        // A first checkpoint must start from zero.
        assert_eq!(
            decide(None, 3, &checkpoint(8, root(8)), Evidence::Proof(&[])),
            Verdict::Conflict { current_size: 0 }
        );
        // Same size, other root: a fork, whatever the evidence.
        let v = decide(
            current,
            8,
            &checkpoint(8, [1; 32]),
            Evidence::Recomputed([1; 32]),
        );
        assert_eq!(
            v,
            Verdict::Fork {
                size: 8,
                cosigned: root(8),
                offered: [1; 32]
            }
        );
        assert_eq!(v.http_status(), 422);
        // A bad proof, a proof for another size, a proof from empty.
        let mut bad = proof_8_12.clone();
        bad[0][0] ^= 1;
        assert!(matches!(
            decide(current, 8, &checkpoint(12, root(12)), Evidence::Proof(&bad)),
            Verdict::Invalid(Invalid::Inconsistent(_))
        ));
        assert!(matches!(
            decide(
                current,
                8,
                &checkpoint(13, root(13)),
                Evidence::Proof(&proof_8_12)
            ),
            Verdict::Invalid(Invalid::Inconsistent(_))
        ));
        // A root that does not extend the cosigned tree.
        assert!(matches!(
            decide(
                current,
                8,
                &checkpoint(12, [2; 32]),
                Evidence::Proof(&proof_8_12)
            ),
            Verdict::Invalid(Invalid::Inconsistent(ProofError::RootMismatch))
        ));
        assert_eq!(
            decide(
                None,
                0,
                &checkpoint(3, root(3)),
                Evidence::Proof(&proof_8_12)
            ),
            Verdict::Invalid(Invalid::ProofFromEmpty)
        );
        assert_eq!(
            decide(None, 0, &checkpoint(0, [3; 32]), Evidence::Proof(&[])),
            Verdict::Invalid(Invalid::EmptyTreeRoot)
        );
        assert_eq!(
            decide(
                current,
                8,
                &checkpoint(12, root(12)),
                Evidence::Recomputed(root(11))
            ),
            Verdict::Invalid(Invalid::RootMismatch {
                recomputed: root(11)
            })
        );
        // And the good request passes.
        assert!(matches!(
            decide(
                current,
                8,
                &checkpoint(12, root(12)),
                Evidence::Proof(&proof_8_12)
            ),
            Verdict::Accept { .. }
        ));
    }
}
