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
    pub fn link<'a>(&'a mut self, event: &'a [u8]) -> Link<'a> {
        let seq = self.next_seq;
        let hash = chain_hash(&self.id, seq, &self.head, event);
        self.head = hash;
        self.next_seq += 1;
        Link {
            chain_id: &self.id,
            seq,
            event,
            hash,
        }
    }
}

/// A chained record as the spool stores it: a `ChainedEvent` that borrows its chain id and
/// event bytes, so linking at line rate copies neither.
#[derive(Clone, Copy, Debug)]
pub struct Link<'a> {
    pub chain_id: &'a str,
    pub seq: u64,
    pub event: &'a [u8],
    pub hash: [u8; 32],
}

impl Link<'_> {
    /// Appends the `ChainedEvent` encoding of this record to `buf`: the same bytes prost
    /// writes for the owned message (fields in number order, defaults left out).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        use prost::encoding::{WireType, encode_key, encode_varint, uint64};
        fn field(tag: u32, data: &[u8], buf: &mut Vec<u8>) {
            if !data.is_empty() {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(data.len() as u64, buf);
                buf.extend_from_slice(data);
            }
        }
        field(1, self.chain_id.as_bytes(), buf);
        if self.seq != 0 {
            uint64::encode(2, &self.seq, buf);
        }
        field(3, self.event, buf);
        field(4, &self.hash, buf);
    }

    #[must_use]
    pub fn to_owned(&self) -> ChainedEvent {
        ChainedEvent {
            chain_id: self.chain_id.to_owned(),
            seq: self.seq,
            event: self.event.to_vec(),
            hash: self.hash.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn links_commit_to_their_predecessors() {
        let mut chain = Chain::new("host:boot:1".into());
        let a = chain.link(b"first").to_owned();
        let b = chain.link(b"second").to_owned();
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

    #[test]
    fn a_link_encodes_as_its_owned_message() {
        let mut chain = Chain::new("host:boot:1".into());
        for event in [&b""[..], b"x", &[7; 300]] {
            let link = chain.link(event);
            let mut buf = Vec::new();
            link.encode(&mut buf);
            assert_eq!(buf, link.to_owned().encode_to_vec(), "seq {}", link.seq);
        }
    }
}
