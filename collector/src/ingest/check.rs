//! Pure checks of what an agent stream sends, against the contract (collector.proto,
//! docs/chain.md): bounds, contiguous seqs, each hash against the one before it, and each
//! event decoded for the columns queries use. Only a batch's link to the stored head is left
//! for the writer, which holds the heads.

use proto::{
    chain::chain_hash,
    limits::EVENT_BYTES_MAX,
    v1::{EventBatch, Hello},
};

use crate::{
    error::IngestError,
    store::{COLLECTOR_CHAIN, Record},
    writer::Batch,
};

/// Records in one batch.
pub(crate) const MAX_BATCH_EVENTS: usize = 10_000;
/// Bytes of a chain id or host id.
pub(crate) const MAX_ID_BYTES: usize = 256;
/// Chains named in one Hello.
pub(crate) const MAX_HELLO_CHAINS: usize = 4096;

fn invalid(message: String) -> IngestError {
    IngestError::Invalid(message)
}

fn check_id(what: &str, id: &str) -> Result<(), IngestError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes, not {}",
            id.len()
        )));
    }
    Ok(())
}

/// Whether an id is out of bounds (the checks refuse it, saying so).
pub(crate) fn malformed_id(id: &str) -> bool {
    check_id("id", id).is_err()
}

/// Checks a Hello's host and chain ids.
pub(crate) fn hello(hello: &Hello) -> Result<(), IngestError> {
    check_id("host", &hello.host)?;
    if hello.chain_ids.len() > MAX_HELLO_CHAINS {
        return Err(invalid(format!(
            "Hello names {} chains; at most {MAX_HELLO_CHAINS}",
            hello.chain_ids.len()
        )));
    }
    hello
        .chain_ids
        .iter()
        .try_for_each(|id| check_id("chain_id", id))
}

/// Checks a batch of the agent that said Hello as `host`, and makes its records.
pub(crate) fn batch(host: &str, batch: EventBatch) -> Result<Batch, IngestError> {
    let chain_id = batch.chain_id;
    check_id("chain_id", &chain_id)?;
    if chain_id == COLLECTOR_CHAIN {
        return Err(invalid(format!(
            "chain id {COLLECTOR_CHAIN:?} is the collector's own"
        )));
    }
    let count = batch.events.len();
    if count == 0 || count > MAX_BATCH_EVENTS {
        return Err(invalid(format!(
            "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {count}"
        )));
    }
    let first = batch.events[0].seq;
    if first
        .checked_add(count as u64)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(invalid(format!("seq {first} is out of range")));
    }
    let mut records = Vec::with_capacity(count);
    let mut prev: Option<[u8; 32]> = None;
    for (i, ce) in batch.events.into_iter().enumerate() {
        let seq = first + i as u64;
        if ce.seq != seq {
            return Err(invalid(format!(
                "batch of chain {chain_id} is not contiguous: seq {} where {seq} belongs",
                ce.seq
            )));
        }
        if !ce.chain_id.is_empty() && ce.chain_id != chain_id {
            return Err(invalid(format!(
                "seq {seq} names chain {:?} inside a batch of chain {chain_id}",
                ce.chain_id
            )));
        }
        if ce.event.len() > EVENT_BYTES_MAX {
            return Err(invalid(format!(
                "seq {seq} is {} bytes; an event is at most {EVENT_BYTES_MAX}",
                ce.event.len()
            )));
        }
        let hash: [u8; 32] = ce.hash.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "the hash of seq {seq} is {} bytes, not 32",
                ce.hash.len()
            ))
        })?;
        if let Some(prev) = prev
            && chain_hash(&chain_id, seq, &prev, &ce.event) != hash
        {
            return Err(invalid(format!(
                "the hash of seq {seq} of chain {chain_id} does not recompute"
            )));
        }
        prev = Some(hash);
        records.push(record(host, seq, ce.event, hash)?);
    }
    Ok(Batch {
        host: host.to_owned(),
        chain_id,
        records,
    })
}

/// Decodes an event for the columns it is found by, refusing what an agent may not send
/// (`verifier::columns::derive`, which verify derives the stored columns again with).
pub(crate) fn record(
    host: &str,
    seq: u64,
    bytes: Vec<u8>,
    hash: [u8; 32],
) -> Result<Record, IngestError> {
    let derived = verifier::columns::derive(host, seq, &bytes).map_err(invalid)?;
    Ok(Record {
        seq,
        derived,
        event: bytes,
        hash,
        log_index: None,
    })
}
