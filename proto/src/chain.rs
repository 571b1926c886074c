//! The chain hash of docs/chain.md: part of the contract, so the agent that makes chains and
//! the collector that verifies them share this one implementation. (The test suite's
//! independent verifier deliberately does not.)

use sha2::{Digest, Sha256};

/// Separates this hash from any other SHA-256 use of the same bytes.
pub const DOMAIN_TAG: &[u8] = b"recorder.chain.v1\0";

/// The previous hash of the first record of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// `SHA-256(tag || len(chain_id) || chain_id || seq || prev || len(event) || event)`, with
/// lengths and `seq` as big-endian u64.
#[must_use]
pub fn chain_hash(chain_id: &str, seq: u64, prev: &[u8; 32], event: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN_TAG);
    h.update((chain_id.len() as u64).to_be_bytes());
    h.update(chain_id.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update((event.len() as u64).to_be_bytes());
    h.update(event);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed vector, so an independent verifier can check its implementation against ours.
    #[test]
    fn known_answer() {
        let hash = chain_hash("c", 0, &GENESIS, b"e");
        let hex = hash.iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        // Computed independently (Python hashlib) from docs/chain.md.
        assert_eq!(
            hex,
            "8b14064edcf5ba09ac3cea98448122f64a170c880f98b4ca0cd1d961479d27c4"
        );
    }
}
