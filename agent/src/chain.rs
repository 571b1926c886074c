//! The chain stage: every event's exact serialized bytes get a sequence number and a
//! SHA-256 hash that commits to everything before them. docs/chain.md is the definition;
//! `proto::chain::chain_hash` is its only implementation.

pub use proto::chain::{GENESIS, chain_hash};
use proto::v1::ChainedEvent;

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
}
