//! Chain verification (docs/chain.md) of what the store holds: continuity, every hash
//! recomputed from the stored bytes, and the size against the recorded head and the last
//! checkpoint. It sits above the `Store` trait and reads rows a page at a time, so every
//! backend is checked by this one implementation and no backend can be lenient about its
//! own tampering.

use std::ops::ControlFlow;

use proto::{chain::GENESIS, chain::chain_hash, v1::ChainVerdict};

use crate::store::{ChainRow, ChainState, Store, StoreError};

/// Records read at a time: bounds memory whatever a chain's length.
const PAGE: usize = 10_000;

/// The verdict on each chain of `host` (empty: all), or on the one chain `chain_id`, in the
/// order the chains were first stored.
pub(crate) fn verify(
    store: &dyn Store,
    host: &str,
    chain_id: &str,
) -> Result<Vec<ChainVerdict>, StoreError> {
    store
        .chains()?
        .iter()
        .filter(|c| host.is_empty() || c.host == host)
        .filter(|c| chain_id.is_empty() || c.chain_id == chain_id)
        .map(|c| verify_chain(store, c, PAGE))
        .collect()
}

/// Where a walk along a chain's stored records stands.
struct Walk<'a> {
    chain_id: &'a str,
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
}

impl Walk<'_> {
    fn step(&mut self, record: ChainRow<'_>) -> ControlFlow<()> {
        if let Some((seq, row)) = self.bad {
            self.failure = Some(self.bad_hash(seq, row, Some(record.row)));
            return ControlFlow::Break(());
        }
        if record.seq != self.expected {
            let reason = format!(
                "seq {} is missing (the next stored seq is {})",
                self.expected, record.seq
            );
            self.failure = Some((self.expected, reason));
            return ControlFlow::Break(());
        }
        let hash = chain_hash(self.chain_id, record.seq, &self.prev, record.event);
        if hash[..] == *record.hash {
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
}

fn verify_chain(
    store: &dyn Store,
    chain: &ChainState,
    page: usize,
) -> Result<ChainVerdict, StoreError> {
    let checkpoint = store.last_checkpoint(&chain.chain_id)?;
    let expected_size = chain.next_seq.max(checkpoint.unwrap_or(0));
    let mut verdict = ChainVerdict {
        host: chain.host.clone(),
        chain_id: chain.chain_id.clone(),
        ok: false,
        records: 0,
        first_bad_seq: None,
        reason: String::new(),
        expected_size,
    };
    let mut walk = Walk {
        chain_id: &chain.chain_id,
        expected: 0,
        prev: GENESIS,
        prev_row: i64::MIN,
        bad: None,
        failure: None,
    };
    loop {
        let from = walk.bad.map_or(walk.expected, |(seq, _)| seq + 1);
        let mut read = 0;
        store.chain_rows(&chain.chain_id, from, page, &mut |record| {
            read += 1;
            walk.step(record)
        })?;
        if walk.failure.is_some() || read < page {
            break;
        }
    }
    if let (None, Some((seq, row))) = (&walk.failure, walk.bad) {
        walk.failure = Some(walk.bad_hash(seq, row, None));
    }
    if let Some((seq, reason)) = walk.failure {
        verdict.records = seq + 1;
        verdict.first_bad_seq = Some(seq);
        verdict.reason = reason;
        return Ok(verdict);
    }
    let stored = walk.expected;
    verdict.records = stored;
    if stored < expected_size {
        let claims = match (
            chain.next_seq == expected_size,
            checkpoint == Some(expected_size),
        ) {
            (true, true) => "the recorded head and the last checkpoint claim",
            (true, false) => "the recorded head claims",
            _ => "the last checkpoint claims",
        };
        verdict.first_bad_seq = Some(stored);
        verdict.reason = format!(
            "{stored} records stored, but {claims} {expected_size}: records are missing from the tail"
        );
    } else if stored == chain.next_seq && chain.head_hash != walk.prev {
        verdict.first_bad_seq = Some(stored.saturating_sub(1));
        "the last record's hash differs from the recorded head".clone_into(&mut verdict.reason);
    } else {
        verdict.ok = true;
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use proto::v1::{Event, Exec, event::Body};

    use super::*;
    use crate::testing::{self, TestStore};

    const CHAIN: &str = "h:boot:1";

    /// A chain of 10 records (seq 0 to 9) with a checkpoint at 10.
    fn stored() -> TestStore {
        let store = testing::store();
        let events: Vec<Event> = (1..10)
            .map(|n| Event {
                time_unix_nano: 10 * n,
                body: Some(Body::Exec(Exec {
                    filename: format!("/bin/{n}"),
                    ..Exec::default()
                })),
                ..Event::default()
            })
            .collect();
        let hashes = store.ingest(CHAIN, "h", &events);
        store.checkpoint(CHAIN, 10, hashes[9]);
        store
    }

    /// The verdict on `CHAIN`, reading pages of `page` records.
    fn verdict(store: &TestStore, page: usize) -> ChainVerdict {
        let chains = store.store.chains().unwrap();
        let chain = chains.iter().find(|c| c.chain_id == CHAIN).unwrap();
        verify_chain(&store.store, chain, page).unwrap()
    }

    const ROWS: &str = "(SELECT id FROM chains WHERE chain_id = 'h:boot:1')";

    #[test]
    fn an_untouched_chain_verifies_whatever_the_page() {
        let store = stored();
        for page in [1, 3, 10, PAGE] {
            let v = verdict(&store, page);
            assert!(v.ok, "{page}: {v:?}");
            assert_eq!((v.records, v.expected_size), (10, 10), "{page}");
        }
        let all = verify(&store.store, "h", "").unwrap();
        assert_eq!(all.len(), 1);
        assert!(verify(&store.store, "other-host", "").unwrap().is_empty());
    }

    #[test]
    fn verify_finds_a_flipped_byte() {
        let store = stored();
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        let select = format!("SELECT event FROM events WHERE chain = {ROWS} AND seq = 4");
        let mut event: Vec<u8> = conn.query_row(&select, [], |r| r.get(0)).unwrap();
        event[3] ^= 0x20;
        let update = format!("UPDATE events SET event = ?1 WHERE chain = {ROWS} AND seq = 4");
        conn.execute(&update, [event]).unwrap();
        for page in [1, 4, PAGE] {
            let v = verdict(&store, page);
            assert_eq!(v.first_bad_seq, Some(4), "{v:?}");
            assert_eq!(
                v.reason,
                "the hash of seq 4 does not recompute from its stored bytes"
            );
        }
    }

    /// Each tampering, found at its seq with its reason, wherever the page boundaries fall.
    #[test]
    fn verify_finds_each_tampering_with_the_stored_rows() {
        let cases = [
            (
                "a deleted middle row",
                format!("DELETE FROM events WHERE chain = {ROWS} AND seq = 5;"),
                5,
                "seq 5 is missing (the next stored seq is 6)",
            ),
            (
                "two rows swapped",
                format!(
                    "UPDATE events SET seq = -1 WHERE chain = {ROWS} AND seq = 5;
                     UPDATE events SET seq = 5 WHERE chain = {ROWS} AND seq = 7;
                     UPDATE events SET seq = 7 WHERE chain = {ROWS} AND seq = -1;"
                ),
                5,
                "seq 5 is reordered",
            ),
            (
                "a truncated tail",
                format!("DELETE FROM events WHERE chain = {ROWS} AND seq >= 7;"),
                7,
                "7 records stored, but the recorded head and the last checkpoint claim 10",
            ),
            (
                "a truncated tail below the checkpoint, the head rewritten to match",
                format!(
                    "DELETE FROM events WHERE chain = {ROWS} AND seq >= 7;
                     UPDATE chains SET next_seq = 7, head_hash = (SELECT hash FROM events
                       WHERE chain = {ROWS} AND seq = 6) WHERE id = {ROWS};"
                ),
                7,
                "7 records stored, but the last checkpoint claims 10",
            ),
            (
                "a rewritten head",
                format!("UPDATE chains SET head_hash = zeroblob(32) WHERE id = {ROWS};"),
                9,
                "the last record's hash differs from the recorded head",
            ),
        ];
        for (what, sql, bad_seq, reason) in cases {
            for page in [1, 3, 6, PAGE] {
                let store = stored();
                store.sql(&sql);
                let v = verdict(&store, page);
                assert!(!v.ok, "{what}, page {page}: {v:?}");
                assert_eq!(v.first_bad_seq, Some(bad_seq), "{what}, page {page}: {v:?}");
                assert!(v.reason.contains(reason), "{what}, page {page}: {v:?}");
                assert_eq!(v.expected_size, 10, "{what}, page {page}");
            }
        }
    }
}
