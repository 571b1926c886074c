//! The chain stage: every event's exact serialized bytes get a sequence number and a
//! SHA-256 hash that commits to everything before them. docs/chain.md is the definition;
//! `chain_hash` is its only implementation in the agent.

use proto::v1::ChainedEvent;
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

/// One agent instance's chain: seq is contiguous from 0.
pub struct Chain {
    id: String,
    next_seq: u64,
    head: [u8; 32],
}

impl Chain {
    #[must_use]
    pub fn new(id: String) -> Self {
        Self {
            id,
            next_seq: 0,
            head: GENESIS,
        }
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Places `event` (serialized bytes) next in the chain.
    pub fn link(&mut self, event: Vec<u8>) -> ChainedEvent {
        let seq = self.next_seq;
        let hash = chain_hash(&self.id, seq, &self.head, &event);
        self.head = hash;
        self.next_seq += 1;
        ChainedEvent {
            chain_id: self.id.clone(),
            seq,
            event,
            hash: hash.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_commit_to_their_predecessors() {
        let mut chain = Chain::new("host:boot:1".into());
        let a = chain.link(b"first".to_vec());
        let b = chain.link(b"second".to_vec());
        assert_eq!((a.seq, b.seq), (0, 1));
        assert_eq!(a.hash, chain_hash("host:boot:1", 0, &GENESIS, b"first"));
        let prev: [u8; 32] = a.hash.clone().try_into().unwrap();
        assert_eq!(b.hash, chain_hash("host:boot:1", 1, &prev, b"second"));
        assert_ne!(
            b.hash,
            chain_hash("host:boot:2", 1, &prev, b"second"),
            "the chain id is bound"
        );
        assert_ne!(
            b.hash,
            chain_hash("host:boot:1", 2, &prev, b"second"),
            "the position is bound"
        );
    }

    /// A fixed vector, so an independent verifier can check its implementation against ours.
    #[test]
    fn known_answer() {
        let hash = chain_hash("c", 0, &GENESIS, b"e");
        let hex = hash.iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        assert_eq!(hex, KNOWN);
    }

    /// Computed independently (Python hashlib) from docs/chain.md.
    const KNOWN: &str = "8b14064edcf5ba09ac3cea98448122f64a170c880f98b4ca0cd1d961479d27c4";
}
