//! Inclusion and consistency proofs: generated as RFC 9162 §2.1.3.1 and §2.1.4.1 define them,
//! verified with the algorithms of §2.1.3.2 and §2.1.4.2.

use crate::merkle::{EMPTY_ROOT, Hash, node_hash, root_of, split_point};

/// The hashes of complete subtrees, from wherever the caller keeps its leaves: proofs need
/// only `O(log n)` of them, so a large log need not be in memory to prove anything.
pub trait Subtrees {
    /// Why a subtree could not be had (e.g. a storage error).
    type Error;

    /// The Merkle Tree Hash of leaves `[start, start + size)`. Only ever asked for a complete
    /// subtree: `size` is a power of two and `start` a multiple of it, within the tree the
    /// proof is for.
    fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, Self::Error>;
}

/// A [`Subtrees`] source asked for leaves it does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("leaves [{start}, {start} + {size}) were asked for, but only {available} are held")]
pub struct MissingLeaves {
    /// The first leaf asked for.
    pub start: u64,
    /// How many leaves were asked for.
    pub size: u64,
    /// How many leaves the source holds.
    pub available: u64,
}

/// Leaf hashes held in memory, for tests and small trees: each subtree is recomputed, so a
/// proof costs `O(n)` hashing.
impl Subtrees for &[Hash] {
    type Error = MissingLeaves;

    fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, MissingLeaves> {
        let missing = MissingLeaves {
            start,
            size,
            available: self.len() as u64,
        };
        let range = start
            .checked_add(size)
            .and_then(|end| Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?));
        match range.and_then(|r| self.get(r)) {
            Some(leaves) => Ok(root_of(leaves)),
            None => Err(missing),
        }
    }
}

/// Why a proof could not be generated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProveError<E> {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder { old: u64, new: u64 },
    #[error("reading a subtree: {0}")]
    Subtrees(#[source] E),
}

/// The MTH of leaves `[start, start + size)` where `start` is aligned as RFC 6962's
/// recursion leaves it: complete subtrees come from `src`, the ragged right edge is hashed
/// here.
fn range_root<S: Subtrees + ?Sized>(src: &mut S, start: u64, size: u64) -> Result<Hash, S::Error> {
    if size.is_power_of_two() {
        return src.subtree(start, size);
    }
    let k = split_point(size);
    let left = src.subtree(start, k)?;
    let right = range_root(src, start + k, size - k)?;
    Ok(node_hash(&left, &right))
}

/// PATH(index, D[start : start + size]) of RFC 9162 §2.1.3.1, appended to `out` leaf-side
/// first.
fn path<S: Subtrees + ?Sized>(
    index: u64,
    start: u64,
    size: u64,
    src: &mut S,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if size <= 1 {
        return Ok(());
    }
    let k = split_point(size);
    if index < k {
        path(index, start, k, src, out)?;
        out.push(range_root(src, start + k, size - k)?);
    } else {
        path(index - k, start + k, size - k, src, out)?;
        out.push(src.subtree(start, k)?);
    }
    Ok(())
}

/// The inclusion proof of leaf `index` in the tree of `tree_size` leaves: the sibling hashes
/// from the leaf's up to the root's children (RFC 9162 §2.1.3.1).
pub fn inclusion_proof<S: Subtrees + ?Sized>(
    index: u64,
    tree_size: u64,
    src: &mut S,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if index >= tree_size {
        return Err(ProveError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    let mut out = Vec::with_capacity(64);
    path(index, 0, tree_size, src, &mut out).map_err(ProveError::Subtrees)?;
    Ok(out)
}

/// SUBPROOF(old, D[start : start + size], complete) of RFC 9162 §2.1.4.1.
fn subproof<S: Subtrees + ?Sized>(
    old: u64,
    start: u64,
    size: u64,
    complete: bool,
    src: &mut S,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if old == size {
        if !complete {
            out.push(range_root(src, start, size)?);
        }
        return Ok(());
    }
    let k = split_point(size);
    if old <= k {
        subproof(old, start, k, complete, src, out)?;
        out.push(range_root(src, start + k, size - k)?);
    } else {
        subproof(old - k, start + k, size - k, false, src, out)?;
        out.push(src.subtree(start, k)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `old_size` leaves to that of `new_size` (RFC 9162
/// §2.1.4.1). Empty when the sizes are equal or the old tree is empty: the empty tree is a
/// prefix of every tree, and the proofs of tlog-witness carry nothing for it.
pub fn consistency_proof<S: Subtrees + ?Sized>(
    old_size: u64,
    new_size: u64,
    src: &mut S,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if old_size > new_size {
        return Err(ProveError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    let mut out = Vec::with_capacity(64);
    if old_size > 0 {
        subproof(old_size, 0, new_size, true, src, &mut out).map_err(ProveError::Subtrees)?;
    }
    Ok(out)
}

/// Why a proof did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof does not lead to the old root")]
    OldRootMismatch,
    #[error("the proof does not lead to the root")]
    RootMismatch,
}

/// Shifts `fn_` and `sn` right together until `fn_` is odd or zero: the steps of RFC 9162's
/// algorithms where the path runs along the right edge of a subtree.
fn skip_right_edge(fn_: &mut u64, sn: &mut u64) {
    while *fn_ & 1 == 0 && *fn_ != 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// The root an inclusion proof leads to from `leaf` at `index` in a tree of `tree_size`
/// leaves (RFC 9162 §2.1.3.2, without the final comparison).
pub fn root_from_inclusion(
    leaf: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    let mut fn_ = index;
    let mut sn = tree_size - 1;
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            skip_right_edge(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

/// Checks that `leaf` is leaf `index` of the tree of `tree_size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion(leaf, index, tree_size, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2 for `0 < old_size < new_size`).
/// RFC 9162 leaves the edges to the caller; here, as tlog-witness has them, an old size of
/// zero takes an empty proof (and the old root must be the empty tree's), and equal sizes take
/// an empty proof and equal roots.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if old_size == 0 && *old_root != EMPTY_ROOT {
            return Err(ProofError::OldRootMismatch);
        }
        if (new_size == 0 && *new_root != EMPTY_ROOT) || (old_size > 0 && old_root != new_root) {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // 1. An empty path fails.
    let Some((head, tail)) = proof.split_first() else {
        return Err(ProofError::WrongLength);
    };
    // 2. A perfect old tree is its own first node, so the proof leaves it out.
    let (first, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (head, tail)
    };
    // 3, 4.
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5, 6.
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            skip_right_edge(&mut fn_, &mut sn);
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // 7.
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::testutil::{leaves, sample_tree, unhex32};

    const N: usize = 64;

    /// [`root_of`] over ranges of one list of leaves, memoized so the exhaustive tests stay
    /// quick in debug builds; also a [`Subtrees`] source.
    struct Memo<'a> {
        leaves: &'a [Hash],
        cache: HashMap<(usize, usize), Hash>,
    }

    impl<'a> Memo<'a> {
        fn new(leaves: &'a [Hash]) -> Self {
            Self {
                leaves,
                cache: HashMap::new(),
            }
        }

        fn root(&mut self, start: usize, len: usize) -> Hash {
            let leaves = self.leaves;
            *self
                .cache
                .entry((start, len))
                .or_insert_with(|| root_of(&leaves[start..start + len]))
        }
    }

    impl Subtrees for Memo<'_> {
        type Error = std::convert::Infallible;

        fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, Self::Error> {
            Ok(self.root(start as usize, size as usize))
        }
    }

    /// PATH(m, D[start : start + len]) straight from RFC 9162, independent of the
    /// [`Subtrees`] plumbing.
    fn naive_path(m: usize, start: usize, len: usize, mth: &mut Memo) -> Vec<Hash> {
        if len <= 1 {
            return Vec::new();
        }
        let k = split_point(len as u64) as usize;
        let (mut out, other) = if m < k {
            (naive_path(m, start, k, mth), mth.root(start + k, len - k))
        } else {
            (
                naive_path(m - k, start + k, len - k, mth),
                mth.root(start, k),
            )
        };
        out.push(other);
        out
    }

    /// SUBPROOF(m, D[start : start + len], complete) straight from RFC 9162.
    fn naive_subproof(
        m: usize,
        start: usize,
        len: usize,
        complete: bool,
        mth: &mut Memo,
    ) -> Vec<Hash> {
        if m == len {
            return if complete {
                Vec::new()
            } else {
                vec![mth.root(start, len)]
            };
        }
        let k = split_point(len as u64) as usize;
        let (mut out, other) = if m <= k {
            (
                naive_subproof(m, start, k, complete, mth),
                mth.root(start + k, len - k),
            )
        } else {
            (
                naive_subproof(m - k, start + k, len - k, false, mth),
                mth.root(start, k),
            )
        };
        out.push(other);
        out
    }

    fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
        let mut bad = proof.to_vec();
        bad[i][7] ^= 0x20;
        bad
    }

    #[test]
    fn every_inclusion_proof_up_to_64_leaves() {
        let leaves = leaves(N);
        let mut mth = Memo::new(&leaves);
        for n in 1..=N {
            let root = mth.root(0, n);
            for i in 0..n {
                let proof = inclusion_proof(i as u64, n as u64, &mut mth).unwrap();
                assert_eq!(proof, naive_path(i, 0, n, &mut mth), "path {i} of {n}");
                let (i64_, n64) = (i as u64, n as u64);
                verify_inclusion(&leaves[i], i64_, n64, &proof, &root).unwrap();
                // Tampered hashes, leaf, index, size, root and lengths all fail.
                for j in 0..proof.len() {
                    assert!(
                        verify_inclusion(&leaves[i], i64_, n64, &flip(&proof, j), &root).is_err()
                    );
                }
                let other = leaves[(i + 1) % n];
                if n > 1 {
                    assert!(verify_inclusion(&other, i64_, n64, &proof, &root).is_err());
                    assert!(
                        verify_inclusion(&leaves[i], (i64_ + 1) % n64, n64, &proof, &root).is_err()
                    );
                }
                // Claimed in the next tree, against that tree's root.
                if n < N {
                    let next = mth.root(0, n + 1);
                    assert!(verify_inclusion(&leaves[i], i64_, n64 + 1, &proof, &next).is_err());
                }
                assert!(verify_inclusion(&leaves[i], i64_, n64, &proof, &[0; 32]).is_err());
                let mut longer = proof.clone();
                longer.push([0; 32]);
                assert_eq!(
                    verify_inclusion(&leaves[i], i64_, n64, &longer, &root),
                    Err(ProofError::WrongLength)
                );
                if !proof.is_empty() {
                    assert_eq!(
                        verify_inclusion(&leaves[i], i64_, n64, &proof[1..], &root),
                        Err(ProofError::WrongLength)
                    );
                }
            }
            assert_eq!(
                verify_inclusion(&leaves[0], n as u64, n as u64, &[], &root),
                Err(ProofError::IndexOutOfRange {
                    index: n as u64,
                    size: n as u64
                })
            );
        }
    }

    #[test]
    fn every_consistency_proof_up_to_64_leaves() {
        let leaves = leaves(N);
        let mut mth = Memo::new(&leaves);
        let prefix: Vec<Hash> = (0..=N).map(|n| root_of(&leaves[..n])).collect();
        for n in 0..=N {
            let new_root = prefix[n];
            for m in 0..=n {
                let old_root = prefix[m];
                let proof = consistency_proof(m as u64, n as u64, &mut mth).unwrap();
                if m > 0 {
                    assert_eq!(proof, naive_subproof(m, 0, n, true, &mut mth), "{m} -> {n}");
                } else {
                    assert!(proof.is_empty());
                }
                let (m64, n64) = (m as u64, n as u64);
                verify_consistency(m64, n64, &proof, &old_root, &new_root).unwrap();
                for j in 0..proof.len() {
                    assert!(
                        verify_consistency(m64, n64, &flip(&proof, j), &old_root, &new_root)
                            .is_err(),
                        "{m} -> {n}, hash {j} tampered"
                    );
                }
                let wrong = [0xaa; 32];
                assert!(verify_consistency(m64, n64, &proof, &wrong, &new_root).is_err());
                // The empty tree is a prefix of every tree, whatever its root.
                if m > 0 {
                    assert!(verify_consistency(m64, n64, &proof, &old_root, &wrong).is_err());
                }
                let mut longer = proof.clone();
                longer.push([0; 32]);
                assert!(verify_consistency(m64, n64, &longer, &old_root, &new_root).is_err());
                if !proof.is_empty() {
                    let shorter = &proof[..proof.len() - 1];
                    assert!(verify_consistency(m64, n64, shorter, &old_root, &new_root).is_err());
                }
                if m < n {
                    // The same proof for other sizes does not pass.
                    let shrunk = prefix[n - 1];
                    if m > 0 {
                        assert!(
                            verify_consistency(m64, n64 - 1, &proof, &old_root, &shrunk).is_err(),
                            "{m} -> {n} as {m} -> {}",
                            n - 1
                        );
                    }
                    let grown = prefix[m + 1];
                    // (Growing 0 -> 1 into 1 -> 1 is a true claim with the same empty proof.)
                    assert!(
                        m + 1 == n
                            || verify_consistency(m64 + 1, n64, &proof, &grown, &new_root).is_err(),
                        "{m} -> {n} as {} -> {n}",
                        m + 1
                    );
                    assert_eq!(
                        verify_consistency(n64, m64, &proof, &new_root, &old_root),
                        Err(ProofError::SizeOrder { old: n64, new: m64 })
                    );
                }
            }
        }
    }

    #[test]
    fn proof_generation_refuses_bad_ranges() {
        let leaves = leaves(8);
        assert_eq!(
            inclusion_proof(8, 8, &mut &leaves[..]),
            Err(ProveError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert_eq!(
            consistency_proof(9, 8, &mut &leaves[..]),
            Err(ProveError::SizeOrder { old: 9, new: 8 })
        );
        // The source holds 8 leaves; a proof in a tree of 9 needs the ninth.
        assert!(matches!(
            inclusion_proof(0, 9, &mut &leaves[..]),
            Err(ProveError::Subtrees(MissingLeaves { available: 8, .. }))
        ));
        assert!(matches!(
            consistency_proof(3, 12, &mut &leaves[..]),
            Err(ProveError::Subtrees(_))
        ));
    }

    /// Proofs over a huge tree ask only for aligned complete subtrees and stay short.
    #[test]
    fn proofs_in_a_huge_tree_ask_only_for_complete_subtrees() {
        struct Synthetic(u32);
        impl Subtrees for Synthetic {
            type Error = std::convert::Infallible;
            fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, Self::Error> {
                assert!(size.is_power_of_two() && start.is_multiple_of(size));
                self.0 += 1;
                let mut h = [0; 32];
                h[..8].copy_from_slice(&start.to_be_bytes());
                h[8..16].copy_from_slice(&size.to_be_bytes());
                Ok(h)
            }
        }
        let mut src = Synthetic(0);
        let size = u64::MAX - 12_345;
        let proof = inclusion_proof(size - 7, size, &mut src).unwrap();
        assert!(proof.len() <= 64);
        let proof = consistency_proof(1 << 40 | 0x4d, size, &mut src).unwrap();
        assert!(proof.len() <= 128);
        assert!(src.0 < 1000);
    }

    #[test]
    fn empty_and_equal_trees() {
        let leaves = leaves(3);
        let root = root_of(&leaves);
        verify_consistency(0, 0, &[], &EMPTY_ROOT, &EMPTY_ROOT).unwrap();
        verify_consistency(0, 3, &[], &EMPTY_ROOT, &root).unwrap();
        assert_eq!(
            verify_consistency(0, 3, &[], &root, &root),
            Err(ProofError::OldRootMismatch)
        );
        assert_eq!(
            verify_consistency(0, 3, &[root], &EMPTY_ROOT, &root),
            Err(ProofError::WrongLength)
        );
        assert_eq!(
            verify_consistency(0, 0, &[], &EMPTY_ROOT, &root),
            Err(ProofError::RootMismatch)
        );
        verify_consistency(3, 3, &[], &root, &root).unwrap();
        assert_eq!(
            verify_consistency(3, 3, &[], &root, &EMPTY_ROOT),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(3, 3, &[root], &root, &root),
            Err(ProofError::WrongLength)
        );
        assert_eq!(
            verify_consistency(1, 3, &[], &leaves[0], &root),
            Err(ProofError::WrongLength)
        );
    }

    /// Inclusion and consistency proofs of the RFC 6962 sample tree (see
    /// `merkle::tests::rfc6962_sample_tree_roots`), recomputed with Python's hashlib.
    #[test]
    fn rfc6962_sample_tree_proofs() {
        let tree = sample_tree();
        let hashes = |list: &[&str]| list.iter().map(|h| unhex32(h)).collect::<Vec<_>>();
        let inclusion: [(u64, u64, Vec<Hash>); 4] = [
            (
                0,
                8,
                hashes(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                5,
                8,
                hashes(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                3,
                hashes(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            ),
            (
                6,
                7,
                hashes(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
        ];
        for (index, size, want) in inclusion {
            let proof = inclusion_proof(index, size, &mut &tree[..]).unwrap();
            assert_eq!(proof, want, "inclusion {index} in {size}");
            let root = root_of(&tree[..size as usize]);
            verify_inclusion(&tree[index as usize], index, size, &proof, &root).unwrap();
        }
        let consistency: [(u64, u64, Vec<Hash>); 4] = [
            (
                1,
                8,
                hashes(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hashes(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                hashes(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
            (
                3,
                7,
                hashes(&[
                    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                    "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e",
                ]),
            ),
        ];
        for (old, new, want) in consistency {
            let proof = consistency_proof(old, new, &mut &tree[..]).unwrap();
            assert_eq!(proof, want, "consistency {old} -> {new}");
            let old_root = root_of(&tree[..old as usize]);
            let new_root = root_of(&tree[..new as usize]);
            verify_consistency(old, new, &proof, &old_root, &new_root).unwrap();
        }
    }
}
