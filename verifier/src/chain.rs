//! One chain's records walked in seq order (docs/chain.md): each hash recomputed from the
//! stored bytes and the hash before it, no seq missing or out of place, and the records
//! stored against the size the chain's recorded head (or its last checkpoint) claims.

use std::ops::ControlFlow;

use std::collections::HashMap;

use proto::{
    chain::{GENESIS, chain_hash},
    kind::Kind,
    v1::ChainVerdict,
};

use crate::{Columns, hole::Hole, prune::Cut};

/// One stored record as the verifier reads it: exactly what is stored, nothing derived, and
/// borrowed from its source, so reading a chain copies nothing.
#[derive(Clone, Copy, Debug)]
pub struct ChainRow<'a> {
    /// Where it is stored: storage order, which within a chain is seq order.
    pub row: i64,
    pub seq: u64,
    pub event: &'a [u8],
    pub hash: &'a [u8],
    /// The columns stored beside the bytes, which verify derives again from them.
    pub columns: Columns<'a>,
}

/// Where a stored chain says it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub chain_id: String,
    /// The host of the chain's `ChainStart`.
    pub host: String,
    pub next_seq: u64,
    /// `GENESIS` while the chain is empty.
    pub head_hash: [u8; 32],
    /// The size the chain's latest checkpoint claims: checkpoints of single chains, as
    /// collectors before host logs stored them.
    pub checkpoint: Option<u64>,
}

/// Where a walk along a chain's stored records stands.
#[derive(Debug)]
pub struct Walk {
    chain_id: String,
    /// The seq the next record must have: records before it all verified.
    expected: u64,
    /// The hash of the last verified record.
    prev: [u8; 32],
    prev_row: i64,
    /// A record whose hash did not recompute (seq, row), waiting for the row after it to
    /// tell edited bytes from a changed seq.
    bad: Option<(u64, i64)>,
    /// The first bad seq and why, once known.
    failure: Option<(u64, String)>,
    /// The last verified record is a `chain_stop`.
    stopped: bool,
    /// The chain's holes: the only jumps it may make.
    holes: Vec<Hole>,
    /// Records the holes jumped over.
    lost: u64,
}

impl Walk {
    /// A walk from the chain's first record, or, for a chain cut by a valid prune record,
    /// from where the cut says it resumes.
    #[must_use]
    pub fn new(chain_id: &str, cut: Option<&Cut>) -> Self {
        Self {
            chain_id: chain_id.to_owned(),
            expected: cut.map_or(0, |c| c.first_kept),
            prev: cut.map_or(GENESIS, |c| c.prev),
            prev_row: i64::MIN,
            bad: None,
            failure: None,
            stopped: false,
            holes: Vec::new(),
            lost: 0,
        }
    }

    /// The walk may jump over these holes of the chain, and no other seqs.
    #[must_use]
    pub fn with_holes(mut self, holes: Vec<Hole>) -> Self {
        self.holes = holes;
        self
    }

    /// The seq to read on from.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.bad.map_or(self.expected, |(seq, _)| seq + 1)
    }

    /// Whether record `seq`, the last one stepped, verified: its stored hash is the one its
    /// bytes and the verified record before it give (or, for a hole's anchor, the one the
    /// hole names). A log walk over the same records may take its stored hash as is.
    #[must_use]
    pub fn holds(&self, seq: u64) -> bool {
        self.failure.is_none() && self.bad.is_none() && self.expected == seq + 1
    }

    /// Whether the walk has failed, so no record after can change its verdict.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Takes the next stored record; `derive` is shown it when its hash verifies. Breaks
    /// once the chain has failed.
    pub fn step(
        &mut self,
        record: ChainRow<'_>,
        derive: &mut dyn FnMut(&ChainRow<'_>),
    ) -> ControlFlow<()> {
        if self.failure.is_some() {
            return ControlFlow::Break(());
        }
        if let Some((seq, row)) = self.bad {
            self.failure = Some(self.bad_hash(seq, row, Some(record.row)));
            return ControlFlow::Break(());
        }
        if record.seq != self.expected
            && let Some(anchor) = self
                .holes
                .iter()
                .filter(|h| h.first_lost == self.expected)
                .find_map(|h| h.anchor.as_ref())
                .filter(|a| a.is(record.seq, record.hash, record.event))
        {
            // The record before the anchor is lost: its hash stands as the hole names it.
            derive(&record);
            self.stopped = record.columns.kind == Kind::ChainStop.name();
            self.lost += record.seq - self.expected;
            self.prev = anchor.hash;
            self.prev_row = record.row;
            self.expected = record.seq + 1;
            return ControlFlow::Continue(());
        }
        if record.seq != self.expected {
            let reason = format!(
                "seq {} is missing (the next stored seq is {})",
                self.expected, record.seq
            );
            self.failure = Some((self.expected, reason));
            return ControlFlow::Break(());
        }
        let hash = chain_hash(&self.chain_id, record.seq, &self.prev, record.event);
        if hash[..] == *record.hash {
            derive(&record);
            // The column is checked against the bytes by `derive`'s caller.
            self.stopped = record.columns.kind == Kind::ChainStop.name();
            self.prev = hash;
            self.prev_row = record.row;
            self.expected += 1;
        } else {
            self.bad = Some((record.seq, record.row));
        }
        ControlFlow::Continue(())
    }

    /// Why the hash of `seq`, stored at `row`, did not recompute. Within a chain, storage
    /// order is seq order: a row stored out of place had its seq changed, which is a
    /// different tampering from edited bytes.
    fn bad_hash(&self, seq: u64, row: i64, next_row: Option<i64>) -> (u64, String) {
        let reordered = row < self.prev_row || next_row.is_some_and(|n| n < row);
        let reason = if reordered {
            format!(
                "seq {seq} is reordered: the record stored there belongs elsewhere in the chain"
            )
        } else {
            format!("the hash of seq {seq} does not recompute from its stored bytes")
        };
        (seq, reason)
    }

    /// The verdict, once every stored record was shown, against where `head` says the
    /// chain stands.
    #[must_use]
    pub fn verdict(mut self, head: &Head) -> ChainVerdict {
        let expected_size = head.next_seq.max(head.checkpoint.unwrap_or(0));
        let mut verdict = ChainVerdict {
            host: head.host.clone(),
            chain_id: head.chain_id.clone(),
            ok: false,
            records: 0,
            first_bad_seq: None,
            reason: String::new(),
            expected_size,
            ended: String::new(),
            lost: self.lost,
        };
        if let (None, Some((seq, row))) = (&self.failure, self.bad) {
            self.failure = Some(self.bad_hash(seq, row, None));
        }
        if let Some((seq, reason)) = self.failure {
            verdict.records = seq + 1;
            verdict.first_bad_seq = Some(seq);
            verdict.reason = reason;
            return verdict;
        }
        let stored = self.expected;
        verdict.records = stored - self.lost;
        if stored < expected_size {
            let claims = match (
                head.next_seq == expected_size,
                head.checkpoint == Some(expected_size),
            ) {
                (true, true) => "the recorded head and the last checkpoint claim",
                (true, false) => "the recorded head claims",
                _ => "the last checkpoint claims",
            };
            verdict.first_bad_seq = Some(stored);
            verdict.reason = format!(
                "{stored} records stored, but {claims} {expected_size}: records are missing from the tail"
            );
        } else if stored == head.next_seq && head.head_hash != self.prev {
            verdict.first_bad_seq = Some(stored.saturating_sub(1));
            "the last record's hash differs from the recorded head".clone_into(&mut verdict.reason);
        } else {
            verdict.ok = true;
            if self.stopped {
                STOPPED.clone_into(&mut verdict.ended);
            }
        }
        verdict
    }
}

const STOPPED: &str = "stopped";

/// Says how each chain that did not stop in good order ended: one that a later chain of
/// its host follows crashed or was killed; the newest of its host is left as running.
/// `chains` are in the order they began. The collectors' chains are left alone: each
/// collector has its own, and they run side by side, none after another.
pub fn name_endings(chains: &mut [ChainVerdict]) {
    let newest: HashMap<&str, usize> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.host.as_str(), i))
        .collect();
    let followed: Vec<bool> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| newest.get(c.host.as_str()).is_some_and(|n| *n != i))
        .collect();
    for (chain, followed) in chains.iter_mut().zip(followed) {
        if chain.ok && chain.ended.is_empty() && followed && chain.host != crate::COLLECTOR_HOST {
            "crashed or killed".clone_into(&mut chain.ended);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(host: &str, chain_id: &str) -> ChainVerdict {
        ChainVerdict {
            host: host.into(),
            chain_id: chain_id.into(),
            ok: true,
            ..ChainVerdict::default()
        }
    }

    /// A host's chain followed by a later one of its host crashed or was killed; the
    /// collectors' chains, side by side, are none of each other's successors.
    #[test]
    fn a_chain_followed_by_its_hosts_next_ended_and_collector_chains_did_not() {
        let mut chains = vec![
            verdict("h", "h:boot:1"),
            verdict(crate::COLLECTOR_HOST, crate::COLLECTOR_HOST),
            verdict(crate::COLLECTOR_HOST, &crate::collector_chain("a")),
            verdict("h", "h:boot:2"),
            verdict(crate::COLLECTOR_HOST, &crate::collector_chain("b")),
        ];
        name_endings(&mut chains);
        let ended: Vec<&str> = chains.iter().map(|c| c.ended.as_str()).collect();
        assert_eq!(ended, ["crashed or killed", "", "", "", ""]);
    }
}
