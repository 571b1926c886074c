//! Pure checks of what an agent stream sends, against the contract (collector.proto,
//! docs/chain.md): bounds, contiguous seqs, each hash against the one before it, and each
//! event decoded for the columns queries use. Only a batch's link to the stored head is left
//! for the writer, which holds the heads.

use bytes::Bytes;
use proto::{
    chain::chain_hash,
    limits::EVENT_BYTES_MAX,
    v1::{EventBatch, Hello, SpoolHole},
};

use crate::{
    error::IngestError,
    store::Record,
    writer::{Batch, Lost},
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

/// Checks a Hello's host and chain ids, and bounds what it says of itself: the collector
/// holds both for as long as the host is known.
pub(crate) fn hello(hello: &Hello) -> Result<(), IngestError> {
    check_id("host", &hello.host)?;
    for (what, text) in [
        ("host_name", &hello.host_name),
        ("agent_version", &hello.agent_version),
    ] {
        if text.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "{what} must be at most {MAX_ID_BYTES} bytes, not {}",
                text.len()
            )));
        }
    }
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

/// The most events, and bytes of events, of a batch checked on its stream's own task
/// (`is_small`).
const INLINE_EVENTS: usize = 64;
const INLINE_BYTES: usize = 16 << 10;

/// Whether `batch` is small enough to check on its stream's own task: hashing and decoding
/// at most `INLINE_EVENTS` events and `INLINE_BYTES` of them is short, and a hand-off to a
/// blocking thread and back costs a wake-up on each side, for every batch
/// (docs/reliability.md, "A small batch checked where it arrives"). A larger batch, up to
/// `MAX_BATCH_EVENTS` events in an 8 MiB message, goes to the blocking pool, so that it
/// never holds up a runtime thread.
pub(crate) fn is_small(batch: &EventBatch) -> bool {
    batch.events.len() <= INLINE_EVENTS
        && batch.events.iter().map(|e| e.event.len()).sum::<usize>() <= INLINE_BYTES
}

/// Checks a batch of the agent that said Hello as `host`, and makes its records.
pub(crate) fn batch(host: &str, batch: EventBatch) -> Result<Batch, IngestError> {
    let chain_id = batch.chain_id;
    self::chain_id(&chain_id)?;
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
        lost: None,
    })
}

/// Checks a hole an agent declares (collector.proto, `SpoolHole`): its anchor as a batch of
/// one record.
pub(crate) fn hole(host: &str, hole: SpoolHole) -> Result<Batch, IngestError> {
    let events = hole.anchor.map(|anchor| vec![anchor]).unwrap_or_default();
    let mut checked = if events.is_empty() {
        chain_id(&hole.chain_id)?;
        Batch {
            host: host.to_owned(),
            chain_id: hole.chain_id,
            records: Vec::new(),
            lost: None,
        }
    } else {
        batch(
            host,
            EventBatch {
                chain_id: hole.chain_id,
                events,
            },
        )?
    };
    let cause = match hole.cause.as_str() {
        "corrupt" => "corrupt",
        "missing" => "missing",
        other => {
            return Err(invalid(format!(
                "a hole's cause is \"corrupt\" or \"missing\", not {other:?}"
            )));
        }
    };
    checked.lost = Some(Lost {
        cause,
        skipped_bytes: hole.skipped_bytes,
    });
    Ok(checked)
}

/// Checks the id of an agent's chain.
fn chain_id(chain_id: &str) -> Result<(), IngestError> {
    check_id("chain_id", chain_id)?;
    if verifier::is_collector_chain(chain_id) {
        return Err(invalid(format!(
            "chain id {chain_id:?} is a collector's own"
        )));
    }
    Ok(())
}

/// Decodes an event for the columns it is found by, refusing what an agent may not send
/// (`verifier::columns::derive`, which verify derives the stored columns again with).
pub(crate) fn record(
    host: &str,
    seq: u64,
    bytes: Bytes,
    hash: [u8; 32],
) -> Result<Record, IngestError> {
    // A view of the batch's bytes: the event's byte fields are decoded without copies.
    let derived = verifier::columns::derive(host, seq, bytes.clone()).map_err(invalid)?;
    Ok(Record {
        seq,
        derived,
        event: bytes,
        hash,
        log_index: None,
    })
}

/// Hostile agent streams: whatever an `EventBatch` or `Hello` holds, the checks answer without
/// panicking, and a batch passes only when its seqs run on and its hashes chain.
#[cfg(test)]
mod tests {
    use proptest::{prelude::*, sample::Index};
    use prost::Message as _;
    use proto::{
        chain::Chain,
        kind::Kind,
        v1::{
            AdminAct, Alert, ChainStart, ChainedEvent, Event, Exec, GrantChange, Prune, event::Body,
        },
    };

    use super::*;

    const HOST: &str = "h";

    /// `events` as an agent sends them: chained after `first` records hashing to `head`.
    fn chained(chain_id: &str, first: u64, head: [u8; 32], events: Vec<Vec<u8>>) -> EventBatch {
        let mut chain = Chain::resume(chain_id.to_owned(), first, head);
        let events = events
            .into_iter()
            .map(|event| chain.record(event))
            .collect();
        EventBatch {
            chain_id: chain_id.to_owned(),
            events,
        }
    }

    #[test]
    fn a_batch_is_small_up_to_both_bounds_and_no_further() {
        let batch =
            |events: usize, bytes: usize| chained("c", 1, [0; 32], vec![vec![7; bytes]; events]);
        assert!(is_small(&batch(
            INLINE_EVENTS,
            INLINE_BYTES / INLINE_EVENTS
        )));
        assert!(is_small(&batch(1, INLINE_BYTES)));
        assert!(!is_small(&batch(INLINE_EVENTS + 1, 1)));
        assert!(!is_small(&batch(1, INLINE_BYTES + 1)));
        let mut over = batch(INLINE_EVENTS, INLINE_BYTES / INLINE_EVENTS);
        let last = &mut over.events[INLINE_EVENTS - 1];
        last.event = vec![7; last.event.len() + 1].into();
        assert!(!is_small(&over));
    }

    /// A batch an agent could send past seq 0: any event bytes, chained.
    fn valid_batch(events: std::ops::Range<usize>) -> impl Strategy<Value = EventBatch> {
        (
            "[a-z0-9:-]{1,64}",
            prop_oneof![1..1000u64, 1..=i64::MAX as u64 - 16],
            any::<[u8; 32]>(),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..128), events),
        )
            .prop_map(|(id, first, head, events)| chained(&id, first, head, events))
    }

    /// One way a batch of at least two records can be wrong. The first record's own bytes
    /// and hash are bound only by the stored head, which the writer checks, so these
    /// harm what the batch itself binds.
    #[derive(Clone, Debug)]
    enum Harm {
        /// A later record's seq is not the one after its predecessor's.
        Seq(Index, u64),
        /// A bit of a hash flipped: the record after it, or it, no longer chains.
        Hash(Index, Index),
        /// A hash that is not 32 bytes.
        HashLen(Index, Vec<u8>),
        /// A later record's event bytes changed under its hash.
        Event(Index, Vec<u8>),
        /// A record naming another chain.
        RecordChain(Index, String),
        /// The batch relabelled to another chain id (empty, too long, the collector's).
        BatchChain(String),
    }

    fn harm() -> impl Strategy<Value = Harm> {
        prop_oneof![
            (any::<Index>(), any::<u64>()).prop_map(|(i, s)| Harm::Seq(i, s)),
            (any::<Index>(), any::<Index>()).prop_map(|(i, b)| Harm::Hash(i, b)),
            (any::<Index>(), prop::collection::vec(any::<u8>(), 0..64))
                .prop_filter("not 32 bytes", |(_, h)| h.len() != 32)
                .prop_map(|(i, h)| Harm::HashLen(i, h)),
            (any::<Index>(), prop::collection::vec(any::<u8>(), 0..128))
                .prop_map(|(i, e)| Harm::Event(i, e)),
            (any::<Index>(), "\\PC{1,80}").prop_map(|(i, c)| Harm::RecordChain(i, c)),
            prop_oneof![
                Just(String::new()),
                Just(verifier::COLLECTOR_HOST.to_owned()),
                Just(verifier::collector_chain("c2")),
                Just("c".repeat(MAX_ID_BYTES + 1)),
                "\\PC{1,80}",
            ]
            .prop_map(Harm::BatchChain),
        ]
    }

    fn harmed(mut batch: EventBatch, harm: &Harm) -> EventBatch {
        let n = batch.events.len();
        // A record after the first.
        let later = |i: &Index| 1 + i.index(n - 1);
        match harm {
            Harm::Seq(i, seq) => {
                let e = &mut batch.events[later(i)];
                e.seq = if e.seq == *seq {
                    seq.wrapping_add(1)
                } else {
                    *seq
                };
            }
            Harm::Hash(i, bit) => {
                let hash = &mut batch.events[i.index(n)].hash;
                hash[bit.index(256) / 8] ^= 1 << (bit.index(256) % 8);
            }
            Harm::HashLen(i, hash) => batch.events[i.index(n)].hash.clone_from(hash),
            Harm::Event(i, event) => {
                let e = &mut batch.events[later(i)];
                e.event = if e.event == *event {
                    [&event[..], &[0]].concat().into()
                } else {
                    event.clone().into()
                };
            }
            Harm::RecordChain(i, chain) => {
                let e = &mut batch.events[i.index(n)];
                e.chain_id = if *chain == batch.chain_id {
                    format!("{chain}x")
                } else {
                    chain.clone()
                };
            }
            Harm::BatchChain(chain) => {
                if *chain == batch.chain_id {
                    batch.chain_id.push('x');
                } else {
                    batch.chain_id.clone_from(chain);
                }
            }
        }
        batch
    }

    /// Anything in every field, a valid batch, or a harmed one.
    fn any_batch() -> impl Strategy<Value = EventBatch> {
        let record = (
            prop_oneof![Just(String::new()), "\\PC{0,8}"],
            prop_oneof![0..4u64, any::<u64>()],
            prop::collection::vec(any::<u8>(), 0..64),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 32),
                prop::collection::vec(any::<u8>(), 0..40)
            ],
        )
            .prop_map(|(chain_id, seq, event, hash)| ChainedEvent {
                chain_id,
                seq,
                event: event.into(),
                hash,
            });
        prop_oneof![
            ("\\PC{0,8}", prop::collection::vec(record, 0..4))
                .prop_map(|(chain_id, events)| EventBatch { chain_id, events }),
            valid_batch(1..6),
            (valid_batch(2..6), harm()).prop_map(|(b, h)| harmed(b, &h)),
        ]
    }

    /// Whether `batch` is what the contract lets through: a chain id of the agent's, 1 to
    /// 10,000 records with seqs running on in range, each in the batch's chain, within
    /// the event limit, and each hash 32 bytes chaining from the one before it.
    fn well_formed(batch: &EventBatch) -> bool {
        let (id, events) = (&batch.chain_id, &batch.events);
        let Some(first) = events.first() else {
            return false;
        };
        !id.is_empty()
            && id.len() <= MAX_ID_BYTES
            && !verifier::is_collector_chain(id)
            && events.len() <= MAX_BATCH_EVENTS
            && first
                .seq
                .checked_add(events.len() as u64)
                .is_some_and(|end| i64::try_from(end).is_ok())
            && events.iter().enumerate().all(|(i, e)| {
                e.seq == first.seq + i as u64
                    && (e.chain_id.is_empty() || e.chain_id == *id)
                    && e.event.len() <= EVENT_BYTES_MAX
                    && e.hash.len() == 32
            })
            && events.windows(2).all(|w| {
                let prev: [u8; 32] = w[0].hash[..].try_into().unwrap();
                chain_hash(id, w[1].seq, &prev, &w[1].event)[..] == w[1].hash[..]
            })
    }

    /// The checks accept `batch` only when it is well formed, and then keep every record's
    /// seq, bytes and hash. Past seq 0 no event bytes are refused (they are kept as
    /// `malformed`), so there a well-formed batch is accepted too.
    fn check_batch(batch: EventBatch) -> Result<(), TestCaseError> {
        let well_formed = well_formed(&batch);
        let starts_a_chain = batch.events.first().is_some_and(|e| e.seq == 0);
        let sent: Vec<(u64, Bytes, Vec<u8>)> = batch
            .events
            .iter()
            .map(|e| (e.seq, e.event.clone(), e.hash.clone()))
            .collect();
        let id = batch.chain_id.clone();
        match super::batch(HOST, batch) {
            Ok(b) => {
                prop_assert!(well_formed, "accepted");
                prop_assert_eq!((&b.host[..], &b.chain_id), (HOST, &id));
                let kept: Vec<_> = b
                    .records
                    .into_iter()
                    .map(|r| (r.seq, r.event, r.hash.to_vec()))
                    .collect();
                prop_assert_eq!(kept, sent);
            }
            Err(e) => prop_assert!(!well_formed || starts_a_chain, "refused: {e}"),
        }
        Ok(())
    }

    /// At any seq past 0, any bytes derive: as their kind, or as `malformed` with the
    /// fault named.
    fn check_derive(seq: u64, bytes: &[u8]) -> Result<(), TestCaseError> {
        let d = verifier::columns::derive(HOST, seq, bytes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&d.host, HOST);
        prop_assert_eq!(d.kind == Kind::Malformed, d.fault.is_some());
        Ok(())
    }

    /// Empty, or of up to 300 characters: past the limit in bytes, often.
    fn id() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "\\PC{1,300}"]
    }

    /// Events an agent sends, and some only the collector may chain.
    fn sample_events() -> Vec<Vec<u8>> {
        let event = |body| {
            Event {
                time_unix_nano: 7,
                body: Some(body),
                ..Event::default()
            }
            .encode_to_vec()
        };
        vec![
            event(Body::ChainStart(ChainStart {
                host: HOST.into(),
                ..ChainStart::default()
            })),
            event(Body::Exec(Exec {
                filename: "/usr/bin/sudo".into(),
                ..Exec::default()
            })),
            event(Body::Alert(Alert {
                kind: "fork".into(),
                ..Alert::default()
            })),
            event(Body::GrantChange(GrantChange::default())),
            event(Body::Admin(AdminAct::default())),
            event(Body::Prune(Prune::default())),
            Event::default().encode_to_vec(),
        ]
    }

    /// Sample events with a few bytes overwritten, and cut anywhere.
    fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            (
                prop::sample::select(sample_events()),
                prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
                any::<Index>(),
            )
                .prop_map(|(mut bytes, flips, cut)| {
                    if !bytes.is_empty() {
                        for (at, b) in flips {
                            let at = at.index(bytes.len());
                            bytes[at] = b;
                        }
                    }
                    bytes.truncate(cut.index(bytes.len() + 1));
                    bytes
                }),
        ]
    }

    /// The corpus: the edges of each bound, and records only the collector may chain.
    #[test]
    fn seed_batches_and_events_are_judged_by_the_contract() {
        let events = sample_events();
        let start = chained("c", 0, [0; 32], events[..1].to_vec());
        let d = batch(HOST, start.clone()).unwrap().records[0]
            .derived
            .clone();
        assert_eq!((d.kind, d.fault), (Kind::ChainStart, None));
        let from_another_host = batch("other", start);
        assert!(
            from_another_host.is_err(),
            "seq 0 must start a chain of its host"
        );
        for batch in [
            chained("c", 5, [1; 32], events.clone()),
            chained("c", i64::MAX as u64 - 1, [0; 32], vec![vec![]]),
            chained(&"c".repeat(MAX_ID_BYTES), 1, [0; 32], vec![vec![]]),
            chained("c", i64::MAX as u64, [0; 32], vec![vec![]]),
            EventBatch {
                chain_id: "c".into(),
                events: vec![ChainedEvent {
                    seq: u64::MAX,
                    hash: vec![0; 32],
                    ..ChainedEvent::default()
                }],
            },
            chained("c", 1, [0; 32], vec![vec![0; EVENT_BYTES_MAX]]),
            chained("c", 1, [0; 32], vec![vec![0; EVENT_BYTES_MAX + 1]]),
            chained("c", 1, [0; 32], vec![vec![]; MAX_BATCH_EVENTS + 1]),
            chained("c", 1, [0; 32], vec![]),
            chained(verifier::COLLECTOR_HOST, 1, [0; 32], vec![vec![]]),
            chained(&verifier::collector_chain("c2"), 1, [0; 32], vec![vec![]]),
        ] {
            check_batch(batch).unwrap();
        }
        for (bytes, kind) in events.iter().zip([
            Kind::ChainStart,
            Kind::Exec,
            Kind::Malformed,
            Kind::Malformed,
            Kind::Malformed,
            Kind::Malformed,
            Kind::Malformed,
        ]) {
            check_derive(3, bytes).unwrap();
            assert_eq!(
                verifier::columns::derive(HOST, 3, &bytes[..]).unwrap().kind,
                kind
            );
        }
        let mut hello = Hello {
            host: HOST.into(),
            chain_ids: vec!["c".into(); MAX_HELLO_CHAINS],
            ..Hello::default()
        };
        assert!(super::hello(&hello).is_ok());
        hello.host_name = "n".repeat(MAX_ID_BYTES);
        assert!(super::hello(&hello).is_ok());
        hello.host_name.push('n');
        assert!(super::hello(&hello).is_err());
        hello.host_name.clear();
        hello.chain_ids.push("c".into());
        assert!(super::hello(&hello).is_err());
    }

    proptest! {
        // About 1 s each in a debug build.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn harmed_batches_are_refused(
            batch in (valid_batch(2..6), harm()).prop_map(|(b, h)| harmed(b, &h)),
        ) {
            prop_assert!(!well_formed(&batch));
            prop_assert!(super::batch(HOST, batch).is_err());
        }

        #[test]
        fn any_batch_passes_exactly_when_it_chains(batch in any_batch()) {
            check_batch(batch)?;
        }

        #[test]
        fn any_hello_passes_exactly_when_its_ids_are_in_bounds(
            host in id(),
            chain_ids in prop::collection::vec(id(), 0..4),
        ) {
            let in_bounds = |id: &String| (1..=MAX_ID_BYTES).contains(&id.len());
            let expected = in_bounds(&host) && chain_ids.iter().all(in_bounds);
            let hello = Hello { host, chain_ids, ..Hello::default() };
            prop_assert_eq!(super::hello(&hello).is_ok(), expected);
        }
    }

    proptest! {
        // Cheaper: about 0.4 s each.
        #![proptest_config(ProptestConfig::with_cases(5000))]

        #[test]
        fn any_event_bytes_past_seq_0_derive(seq in 1..u64::MAX, bytes in event_bytes()) {
            check_derive(seq, &bytes)?;
        }

        #[test]
        fn any_event_bytes_at_seq_0_are_a_chain_start_or_refused(bytes in event_bytes()) {
            if let Ok(d) = verifier::columns::derive(HOST, 0, &bytes[..]) {
                prop_assert_eq!((d.kind, d.fault), (Kind::ChainStart, None));
            }
        }
    }
}
