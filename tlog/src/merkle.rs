//! RFC 6962 Merkle tree hashing (RFC 9162 §2.1.1) and the compact range an appender keeps.

use sha2::{Digest, Sha256};

/// A SHA-256 output: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The most hashes a frontier holds: one per bit of a `u64` size.
pub const MAX_FRONTIER: usize = 64;

/// The leaf hash of a log entry, `SHA-256(0x00 || record_hash)`. The log's entries are the
/// 32-byte chain record hashes, so the entry is always exactly those 32 bytes.
#[must_use]
pub fn leaf_hash(record_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(record_hash);
    h.finalize().into()
}

/// An interior node, `SHA-256(0x01 || left || right)`. The prefix differs from the leaf's so
/// that no leaf can pass for a node.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n`, for `n >= 2`: where RFC 6962 splits a tree.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (n - 1).ilog2()
}

/// The Merkle Tree Hash (RFC 6962 §2.1) over `leaves`, which are leaf hashes. The reference
/// definition, straight from the RFC's recursion: tests hold the fast paths to it.
#[must_use]
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => EMPTY_ROOT,
        [leaf] => *leaf,
        _ => {
            let k = split_point(leaves.len() as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Why a compact range could not be built, decoded or grown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompactRangeError {
    #[error("a compact range of {size} leaves has {expected} frontier hashes, not {actual}")]
    Count {
        size: u64,
        expected: usize,
        actual: usize,
    },
    #[error("compact range encoding version {0} is unknown")]
    Version(u8),
    #[error("a compact range encoding is {expected} bytes, not {actual}")]
    Length { expected: usize, actual: usize },
    #[error("the tree holds 2^64 - 1 leaves and can take no more")]
    Full,
}

/// The right frontier of a tree: the roots of its perfect subtrees, one per set bit of the
/// size, largest (leftmost) first. It is all an appender needs to extend the tree and compute
/// its root, so the agent keeps this and not the leaves. Fixed-size, so appending never
/// allocates; each append hashes once per trailing one bit of the size, amortized once.
#[derive(Clone)]
pub struct CompactRange {
    size: u64,
    frontier: [Hash; MAX_FRONTIER],
}

impl std::fmt::Debug for CompactRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactRange")
            .field("size", &self.size)
            .field("frontier", &self.frontier())
            .finish()
    }
}

/// Slots past the frontier hold stale hashes, so equality is over the size and frontier only.
impl PartialEq for CompactRange {
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size && self.frontier() == other.frontier()
    }
}

impl Eq for CompactRange {}

impl Default for CompactRange {
    fn default() -> Self {
        Self::new()
    }
}

/// The first byte of [`CompactRange::to_bytes`], so a later layout can be told apart.
const COMPACT_RANGE_VERSION: u8 = 1;

impl CompactRange {
    /// The empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self {
            size: 0,
            frontier: [[0; 32]; MAX_FRONTIER],
        }
    }

    /// Rebuilds a range from its size and its frontier hashes, largest subtree first; there
    /// must be exactly one hash per set bit of `size`.
    pub fn from_frontier(size: u64, hashes: &[Hash]) -> Result<Self, CompactRangeError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(CompactRangeError::Count {
                size,
                expected,
                actual: hashes.len(),
            });
        }
        let mut range = Self::new();
        range.size = size;
        range.frontier[..expected].copy_from_slice(hashes);
        Ok(range)
    }

    /// The number of leaves appended.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier hashes, largest subtree first.
    #[must_use]
    pub fn frontier(&self) -> &[Hash] {
        &self.frontier[..self.size.count_ones() as usize]
    }

    /// Appends one leaf hash (see [`leaf_hash`]).
    pub fn append(&mut self, leaf: Hash) -> Result<(), CompactRangeError> {
        let new_size = self.size.checked_add(1).ok_or(CompactRangeError::Full)?;
        // Each trailing one bit of the old size is a perfect subtree the same height as the
        // node being carried up: merge them, right to left.
        let mut count = self.size.count_ones() as usize;
        let mut node = leaf;
        for _ in 0..self.size.trailing_ones() {
            count -= 1;
            node = node_hash(&self.frontier[count], &node);
        }
        self.frontier[count] = node;
        self.size = new_size;
        Ok(())
    }

    /// The tree's root: the frontier folded from the right, as RFC 6962's recursion splits
    /// off the largest perfect subtree on the left at each level.
    #[must_use]
    pub fn root(&self) -> Hash {
        let frontier = self.frontier();
        let Some((last, rest)) = frontier.split_last() else {
            return EMPTY_ROOT;
        };
        rest.iter()
            .rev()
            .fold(*last, |right, left| node_hash(left, &right))
    }

    /// `version (1) || size (u64, big-endian) || frontier hashes`: 9 + 32 × popcount(size)
    /// bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let frontier = self.frontier();
        let mut out = Vec::with_capacity(9 + 32 * frontier.len());
        out.push(COMPACT_RANGE_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        for hash in frontier {
            out.extend_from_slice(hash);
        }
        out
    }

    /// Decodes [`Self::to_bytes`]; any other length or version is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CompactRangeError> {
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(CompactRangeError::Length {
                expected: 9,
                actual: 0,
            });
        };
        if version != COMPACT_RANGE_VERSION {
            return Err(CompactRangeError::Version(version));
        }
        let Some((size, hashes)) = rest.split_first_chunk::<8>() else {
            return Err(CompactRangeError::Length {
                expected: 9,
                actual: bytes.len(),
            });
        };
        let size = u64::from_be_bytes(*size);
        let expected = 9 + 32 * size.count_ones() as usize;
        if bytes.len() != expected {
            return Err(CompactRangeError::Length {
                expected,
                actual: bytes.len(),
            });
        }
        let mut range = Self::new();
        range.size = size;
        for (slot, chunk) in range.frontier.iter_mut().zip(hashes.chunks_exact(32)) {
            slot.copy_from_slice(chunk);
        }
        Ok(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hex, leaves, sample_tree};

    /// A naive MTH written independently of [`root_of`]: split by searching for the power of
    /// two, over owned vectors.
    fn naive_mth(leaves: &[Hash]) -> Hash {
        if leaves.is_empty() {
            return Sha256::digest(b"").into();
        }
        if leaves.len() == 1 {
            return leaves[0];
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        let left = naive_mth(&leaves[..k]);
        let right = naive_mth(&leaves[k..]);
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&left);
        bytes.extend_from_slice(&right);
        Sha256::digest(&bytes).into()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, <Hash>::from(Sha256::digest(b"")));
        assert_eq!(root_of(&[]), EMPTY_ROOT);
        assert_eq!(CompactRange::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn leaf_and_node_domain_separation() {
        let x = [7u8; 32];
        let mut leaf_input = vec![0u8];
        leaf_input.extend_from_slice(&x);
        assert_eq!(leaf_hash(&x), <Hash>::from(Sha256::digest(&leaf_input)));
        let mut node_input = vec![1u8];
        node_input.extend_from_slice(&x);
        node_input.extend_from_slice(&[9u8; 32]);
        assert_eq!(
            node_hash(&x, &[9u8; 32]),
            <Hash>::from(Sha256::digest(&node_input))
        );
    }

    /// The eight-leaf sample tree of the Certificate Transparency reference tests, whose roots
    /// were recomputed here with Python's hashlib from the RFC 6962 definition.
    #[test]
    fn rfc6962_sample_tree_roots() {
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves = sample_tree();
        let mut range = CompactRange::new();
        for (n, want) in (1..=8).zip(roots) {
            range.append(leaves[n - 1]).unwrap();
            assert_eq!(hex(&root_of(&leaves[..n])), want, "root_of size {n}");
            assert_eq!(hex(&range.root()), want, "compact range size {n}");
        }
    }

    #[test]
    fn root_of_matches_naive_for_small_trees() {
        let leaves = leaves(8);
        for n in 0..=8 {
            assert_eq!(root_of(&leaves[..n]), naive_mth(&leaves[..n]), "size {n}");
        }
    }

    /// Every size up to 1,000: the compact range's root, and its root after a round trip
    /// through bytes and through its frontier, equal the reference.
    #[test]
    fn compact_range_matches_reference_up_to_1000() {
        let leaves = leaves(1000);
        let mut range = CompactRange::new();
        for n in 0..=1000 {
            let want = root_of(&leaves[..n]);
            assert_eq!(range.root(), want, "size {n}");
            assert_eq!(range.size(), n as u64);
            let decoded = CompactRange::from_bytes(&range.to_bytes()).unwrap();
            assert_eq!(decoded, range);
            assert_eq!(decoded.root(), want);
            let rebuilt = CompactRange::from_frontier(range.size(), range.frontier()).unwrap();
            assert_eq!(rebuilt, range);
            if n < 1000 {
                range.append(leaves[n]).unwrap();
            }
        }
        assert_eq!(naive_mth(&leaves), range.root());
    }

    /// A range restored from bytes keeps growing the same tree as one never stored.
    #[test]
    fn restored_range_keeps_appending() {
        let leaves = leaves(300);
        let mut range = CompactRange::new();
        for leaf in &leaves[..137] {
            range.append(*leaf).unwrap();
        }
        let mut restored = CompactRange::from_bytes(&range.to_bytes()).unwrap();
        for leaf in &leaves[137..] {
            restored.append(*leaf).unwrap();
        }
        assert_eq!(restored.root(), root_of(&leaves));
    }

    #[test]
    fn hostile_compact_range_bytes_are_errors() {
        let mut range = CompactRange::new();
        for leaf in leaves(5) {
            range.append(leaf).unwrap();
        }
        let good = range.to_bytes();
        assert_eq!(good.len(), 9 + 2 * 32);
        for cut in 0..good.len() {
            assert!(CompactRange::from_bytes(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(CompactRange::from_bytes(&long).is_err());
        let mut version = good.clone();
        version[0] = 2;
        assert_eq!(
            CompactRange::from_bytes(&version),
            Err(CompactRangeError::Version(2))
        );
        // A size claiming 64 subtrees with no hashes behind it.
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            CompactRange::from_bytes(&huge),
            Err(CompactRangeError::Length {
                expected: 9 + 64 * 32,
                actual: 9
            })
        );
        assert!(CompactRange::from_frontier(5, &[[0; 32]]).is_err());
        assert!(CompactRange::from_frontier(5, &[[0; 32]; 3]).is_err());
    }

    #[test]
    fn full_range_refuses_to_append() {
        let mut range = CompactRange::from_frontier(u64::MAX, &[[3; 32]; 64]).unwrap();
        assert_eq!(range.append([0; 32]), Err(CompactRangeError::Full));
        assert_eq!(range.size(), u64::MAX);
        // The largest possible size still has a root.
        let _ = range.root();
    }
}
