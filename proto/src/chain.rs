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

/// A chain being built: seq contiguous from 0, each hash over the one before. Every chain
/// maker (an agent instance, the collector's own chain, a test's forged one) links through
/// this, so they cannot drift from the verifier.
#[derive(Clone, Debug)]
pub struct Chain {
    id: String,
    next_seq: u64,
    head: [u8; 32],
}

impl Chain {
    #[must_use]
    pub fn new(id: String) -> Self {
        Self::resume(id, 0, GENESIS)
    }

    /// Continues a chain that holds `next_seq` records, the last hashing to `head`.
    #[must_use]
    pub fn resume(id: String, next_seq: u64, head: [u8; 32]) -> Self {
        Self { id, next_seq, head }
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last record's hash; `GENESIS` while empty.
    #[must_use]
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Places `event` (its exact serialized bytes) next: returns its seq and hash.
    pub fn link(&mut self, event: &[u8]) -> (u64, [u8; 32]) {
        let seq = self.next_seq;
        let hash = chain_hash(&self.id, seq, &self.head, event);
        self.head = hash;
        self.next_seq += 1;
        (seq, hash)
    }

    /// Places `event` next, as the record an agent ships: its batch names the chain.
    pub fn record(&mut self, event: impl Into<bytes::Bytes>) -> crate::v1::ChainedEvent {
        let event = event.into();
        let (seq, hash) = self.link(&event);
        crate::v1::ChainedEvent {
            chain_id: String::new(),
            seq,
            event,
            hash: hash.to_vec(),
        }
    }
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

    #[test]
    fn links_commit_to_their_predecessors() {
        let mut chain = Chain::new("host:boot:1".into());
        let (s0, a) = chain.link(b"first");
        let (s1, b) = chain.link(b"second");
        assert_eq!((s0, s1, chain.next_seq(), chain.head()), (0, 1, 2, b));
        assert_eq!(a, chain_hash("host:boot:1", 0, &GENESIS, b"first"));
        assert_eq!(b, chain_hash("host:boot:1", 1, &a, b"second"));
        assert_ne!(
            b,
            chain_hash("host:boot:2", 1, &a, b"second"),
            "the id is bound"
        );
        assert_ne!(
            b,
            chain_hash("host:boot:1", 2, &a, b"second"),
            "the seq is bound"
        );
        let mut resumed = Chain::resume("host:boot:1".into(), 1, a);
        assert_eq!(resumed.link(b"second"), (1, b));
    }
}
