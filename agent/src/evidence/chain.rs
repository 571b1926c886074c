//! The chain stage: every event's exact serialized bytes get a sequence number and a
//! SHA-256 hash that commits to everything before them. docs/chain.md is the definition;
//! `proto::chain` is its only implementation, shared with the collector.

use proto::v1::ChainedEvent;

/// One agent instance's chain: seq is contiguous from 0.
#[derive(Clone)]
pub struct Chain(proto::chain::Chain);

impl Chain {
    #[must_use]
    pub fn new(id: String) -> Self {
        Self(proto::chain::Chain::new(id))
    }

    #[must_use]
    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// The seq the next record gets.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.0.next_seq()
    }

    /// Places `event` (serialized bytes) next in the chain.
    pub fn link<'a>(&'a mut self, event: &'a [u8]) -> Link<'a> {
        let (seq, hash) = self.0.link(event);
        Link {
            chain_id: self.0.id(),
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
            event: bytes::Bytes::copy_from_slice(self.event),
            hash: self.hash.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

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
