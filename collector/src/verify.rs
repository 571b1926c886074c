//! Verification of what the store holds (docs/chain.md, docs/evidence.md), by the shared
//! checks of the `verifier` crate, which `recorder verify --local` runs too over the
//! Evidence stream: each chain's continuity, every hash recomputed from the stored bytes,
//! and the size against the recorded head; every stored column against what the record's
//! bytes say; the `grants` table against the chained grant changes; and each host's log:
//! the host's signature and the collector's cosignature of every stored checkpoint, its root
//! recomputed from the stored bytes, and the leaves stored against the size it attests.
//! This module only reads: it sits above the `Store` trait and reads rows a page at a time,
//! so every backend is checked by this one implementation and no backend can be lenient
//! about its own tampering.

use std::{collections::HashMap, ops::ControlFlow};

use proto::v1::{ChainVerdict, Finding, Grant, LogVerdict};
use verifier::{
    Head, Report, Trust, Walk,
    columns::Checks,
    grants::Grants,
    hole::{self, Holes},
    log::{Checkpoint, Leaf, LogCheck, Next},
    prune::{self, Prunes},
};

use crate::{
    store::{COLLECTOR_HOST, ChainRow, ChainState, Store, StoreError},
    witness::Witness,
};

/// Checks the chains of `host` (empty: all), or the one chain `chain_id`, the columns of
/// their records, and, with a witness, the logs of those hosts. The `grants` table is
/// checked whenever every collector's chain is.
///
/// Each record is read once where it can be: a host's log is walked first, and each of its
/// leaves is also the next record of its chain's walk, whose verified hash the log takes.
/// The chains' walks then go on from where the log left them.
pub(crate) fn verify_all(
    store: &dyn Store,
    witness: Option<&Witness>,
    host: &str,
    chain_id: &str,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let own = OwnRecords::read(store)?;
    let trust = witness.map(|w| own.trust(w, &mut report.findings));
    let mut prunes = match &trust {
        Some(trust) => own.prunes(trust, &mut report.findings),
        None => Prunes::default(),
    };
    let holes = own.holes();
    // The collectors' chains are walked as far as the grants table read with them.
    let snapshot = (host.is_empty() || host == COLLECTOR_HOST)
        .then(|| grants_snapshot(store))
        .transpose()?;
    let chains: Vec<ChainState> = store
        .chains()?
        .into_iter()
        .filter(|c| c.host != COLLECTOR_HOST)
        .chain(snapshot.iter().flat_map(|(heads, _)| heads.iter().cloned()))
        .filter(|c| host.is_empty() || c.host == host)
        .filter(|c| chain_id.is_empty() || c.chain_id == chain_id)
        .collect();
    let mut walks = ChainWalks::new(&chains, &prunes, &holes);
    let mut checks = Checks::default();
    // The hosts whose logs are checked: only with a witness, and not for one chain.
    let hosts = match (&trust, chain_id.is_empty()) {
        (Some(trust), true) => {
            let mut hosts: Vec<String> = store.logs()?.into_iter().map(|l| l.host).collect();
            hosts.extend(store.checkpointed_hosts()?);
            hosts.sort();
            hosts.dedup();
            Some((trust, hosts))
        }
        _ => None,
    };
    if let Some((trust, hosts)) = &hosts {
        for h in hosts.iter().filter(|h| host.is_empty() || **h == host) {
            let prune = prunes.by_host.remove(h);
            let log = LogCheck::new(trust, h, prune).with_holes(holes.clone());
            let verdict = verify_log(store, h, log, &mut walks, &mut checks, &mut report.findings)?;
            report.logs.push(verdict);
        }
    }
    let mut grants = Grants::default();
    for (chain, walk) in chains.iter().zip(walks.walks) {
        let collector = chain.host == COLLECTOR_HOST;
        let end = if collector { chain.next_seq } else { u64::MAX };
        let mut derive = |row: &ChainRow<'_>| {
            if collector {
                grants.replay(&chain.chain_id, row, &mut report.findings);
            } else {
                checks.push(&chain.host, &chain.chain_id, row);
            }
        };
        let verdict = verify_chain(store, chain, PAGE, walk, end, &mut derive)?;
        report.chains.push(verdict);
    }
    if let Some((_, rows)) = snapshot.filter(|_| chain_id.is_empty()) {
        grants.compare(rows, &mut report.findings);
    }
    report.findings.extend(checks.finish());
    // The collectors' chains say which hosts' logs they cosigned.
    if let Some((_, hosts)) = &hosts {
        grants.deleted_hosts(hosts, host, &mut report.findings);
    }
    if let Some((chain, why)) = witness
        .filter(|_| chain_id.is_empty())
        .map(|w| w.own_log_disagreement(store))
        .transpose()?
        .flatten()
    {
        report.findings.push(Finding {
            subject: format!("chain {chain}"),
            reason: why,
        });
    }
    verifier::chain::name_endings(&mut report.chains);
    Ok(report)
}

/// The walks of the chains verify checks, one per chain in `chains`' order, which a log's
/// walk drives: a record read as a leaf is its chain's next record too.
struct ChainWalks<'c> {
    chains: &'c [ChainState],
    walks: Vec<Walk>,
    /// The host chains' walks by chain id: the collectors' chains are no host's log.
    by_id: HashMap<&'c str, usize>,
    /// The last chain found: leaves come a chain at a time.
    last: Option<usize>,
}

impl<'c> ChainWalks<'c> {
    fn new(chains: &'c [ChainState], prunes: &Prunes, holes: &Holes) -> Self {
        let cuts = prunes.cuts();
        let walks = chains
            .iter()
            .map(|c| {
                let cut = cuts.get(c.chain_id.as_str()).copied();
                Walk::new(&c.chain_id, cut).with_holes(holes.of(&c.chain_id))
            })
            .collect();
        let by_id = chains
            .iter()
            .enumerate()
            .filter(|(_, c)| c.host != COLLECTOR_HOST)
            .map(|(i, c)| (c.chain_id.as_str(), i))
            .collect();
        Self {
            chains,
            walks,
            by_id,
            last: None,
        }
    }

    /// The walk of host chain `chain_id`, if verify checks it.
    fn find(&mut self, chain_id: &str) -> Option<usize> {
        let i = match self.last {
            Some(i) if self.chains[i].chain_id == chain_id => i,
            _ => *self.by_id.get(chain_id)?,
        };
        self.last = Some(i);
        Some(i)
    }
}

/// Times the collectors' chains and the `grants` table are read again when a commit came
/// between them.
const SNAPSHOT_TRIES: usize = 10;

/// The collectors' chains as they stand, and the `grants` table with them. Every grant
/// change is chained in the commit that writes its row, so rows read while the chains stood
/// still are exactly what their records up to their heads give, however busy the
/// collectors are.
pub(crate) fn grants_snapshot(
    store: &dyn Store,
) -> Result<(Vec<ChainState>, Vec<Grant>), StoreError> {
    let mut chains = store.host_chains(COLLECTOR_HOST)?;
    let mut grants = store.grants(0)?;
    for _ in 0..SNAPSHOT_TRIES {
        let after = store.host_chains(COLLECTOR_HOST)?;
        if after == chains {
            break;
        }
        chains = after;
        grants = store.grants(0)?;
    }
    Ok((chains, grants))
}

/// What the rest of the store is checked with, from the collectors' chains, read in one
/// pass: their prune records, their spool holes, and the witness certificates collectors
/// started with.
#[derive(Default)]
pub(crate) struct OwnRecords {
    /// Every prune record's note, with where it is chained.
    pub prune_notes: Vec<(String, String)>,
    /// The `spool_hole` records: the host each concerns, and its bytes.
    pub holes: Vec<(String, Vec<u8>)>,
    /// The witness certificate of each `COLLECTOR_STARTED` record, with where it is chained.
    pub witnesses: Vec<(String, String)>,
}

impl OwnRecords {
    pub(crate) fn read(store: &dyn Store) -> Result<Self, StoreError> {
        let mut own = Self::default();
        for chain in store.host_chains(COLLECTOR_HOST)? {
            own_rows(store, &chain.chain_id, &mut |row| {
                let (kind, event) = (row.columns.kind, row.event);
                let at = || verifier::record_subject(&chain.chain_id, row.seq);
                if let Some(note) = prune::note_of(kind, event) {
                    own.prune_notes.push((at(), note));
                } else if let Some(host) = hole::host_of(kind, event) {
                    own.holes.push((host, event.to_vec()));
                } else if let Some(pem) = verifier::started_witness(kind, event) {
                    own.witnesses.push((at(), pem));
                }
            })?;
        }
        Ok(own)
    }

    /// The keys evidence in the store is checked with: `witness`'s, and those of every
    /// other collector whose chain says it started on the store. A chained certificate the
    /// CA did not issue to a witness is a finding, and vouches for nothing.
    pub(crate) fn trust(&self, witness: &Witness, findings: &mut Vec<Finding>) -> Trust {
        let mut trust = witness.trust();
        for (at, pem) in &self.witnesses {
            trust.add_witness(at.clone(), pem, findings);
        }
        trust
    }

    /// The prune records whose signature (a collector's log key) holds, by host. One that
    /// does not verify is a finding, and covers nothing.
    pub(crate) fn prunes(&self, trust: &Trust, findings: &mut Vec<Finding>) -> Prunes {
        let mut prunes = Prunes::default();
        for (at, note) in &self.prune_notes {
            prunes.add(trust, at, note, findings);
        }
        prunes
    }

    /// The holes chained in the collectors' chains. Those are verified with them: a hole
    /// forged into one breaks it.
    fn holes(&self) -> Holes {
        let mut holes = Holes::default();
        for (_, event) in &self.holes {
            holes.read(proto::kind::Kind::Alert.name(), event);
        }
        holes
    }
}

/// Shows `each` every record of the collector's chain `chain_id`, a page at a time.
fn own_rows(
    store: &dyn Store,
    chain_id: &str,
    each: &mut dyn FnMut(&ChainRow<'_>),
) -> Result<(), StoreError> {
    let mut from = 0;
    loop {
        let mut read = 0;
        store.chain_rows(chain_id, from, PAGE, &mut |row| {
            read += 1;
            from = row.seq + 1;
            each(&row);
            ControlFlow::Continue(())
        })?;
        if read < PAGE {
            return Ok(());
        }
    }
}

/// Host `host`'s log, checked by `log`: every stored checkpoint's signatures, its root against
/// the leaves recomputed from the stored bytes, and the leaves stored against the size
/// attested. Each leaf is stepped on its chain's walk in `walks` first, which queues its
/// columns on `checks`.
fn verify_log(
    store: &dyn Store,
    host: &str,
    mut log: LogCheck<'_>,
    walks: &mut ChainWalks<'_>,
    checks: &mut Checks,
    findings: &mut Vec<Finding>,
) -> Result<LogVerdict, StoreError> {
    for c in store.log_checkpoints(host)? {
        let checkpoint = Checkpoint {
            size: c.size,
            root: c.root,
            note: &c.note,
            cert_pem: &c.cert_pem,
        };
        log.checkpoint(checkpoint, findings);
    }
    // A commit writes a log's leaves, row and checkpoints at once: with the row read after
    // the checkpoints and the leaves walked up to its size, a log that grows meanwhile is
    // checked as it stood.
    let row = store.log(host)?;
    let end = row.as_ref().map_or(u64::MAX, |r| r.size);
    // The record before a chain's first leaf predates the log: its stored hash is looked
    // up between pages. A chain's records before its first leaf are walked between pages
    // too, so that its walk takes the leaf as its next record.
    let (mut lookup, mut catch_up, mut caught_up) = (None, None, None);
    loop {
        let before = log.next_index();
        store.log_leaves(host, before, PAGE, &mut |leaf| {
            if leaf.log_index >= end {
                return ControlFlow::Break(());
            }
            let mut verified = false;
            if let Some(i) = walks.find(leaf.chain_id) {
                let (chain, walk) = (&walks.chains[i], &mut walks.walks[i]);
                if walk.next_seq() < leaf.seq && !walk.failed() && caught_up != Some((i, leaf.seq))
                {
                    catch_up = Some((i, leaf.seq));
                    return ControlFlow::Break(());
                }
                let row = ChainRow {
                    row: leaf.row,
                    seq: leaf.seq,
                    event: leaf.event,
                    hash: leaf.hash,
                    columns: leaf.columns,
                };
                // A leaf its chain's walk has passed (the log holds a record twice, or
                // this leaf waited on a lookup) is the log's alone to check. A walk that
                // breaks has failed, which `holds` says.
                verified = walk.next_seq() <= leaf.seq && {
                    let _ = walk.step(row, &mut |row| {
                        checks.push(&chain.host, &chain.chain_id, row);
                    });
                    walk.holds(leaf.seq)
                };
            }
            let leaf = Leaf {
                log_index: leaf.log_index,
                chain_id: leaf.chain_id,
                seq: leaf.seq,
                hash: leaf.hash,
                event: leaf.event,
                verified,
            };
            match log.leaf(leaf, findings) {
                Next::Continue => ControlFlow::Continue(()),
                Next::Stop => ControlFlow::Break(()),
                Next::NeedPrev { chain_id, seq } => {
                    lookup = Some((chain_id, seq));
                    ControlFlow::Break(())
                }
            }
        })?;
        if log.failed() {
            break;
        }
        if let Some((i, seq)) = catch_up.take() {
            let chain = &walks.chains[i];
            walk_chain(store, chain, PAGE, &mut walks.walks[i], seq, &mut |row| {
                checks.push(&chain.host, &chain.chain_id, row);
            })?;
            caught_up = Some((i, seq));
            continue;
        }
        if let Some((chain, seq)) = lookup.take() {
            let prev = store
                .hash_at(&chain, seq - 1)?
                .and_then(|h| <[u8; 32]>::try_from(h).ok());
            log.prev_found(chain, seq, prev);
            continue;
        }
        if log.next_index() == before {
            break;
        }
    }
    let row = row.as_ref().map(|r| (r.size, r.frontier.as_slice()));
    Ok(log.finish(row, findings))
}

/// Records read at a time: bounds memory whatever a chain's length.
const PAGE: usize = 10_000;

/// Where a stored chain says it stands.
fn head(store: &dyn Store, chain: &ChainState) -> Result<Head, StoreError> {
    Ok(Head {
        chain_id: chain.chain_id.clone(),
        host: chain.host.clone(),
        next_seq: chain.next_seq,
        head_hash: chain.head_hash,
        checkpoint: store.last_checkpoint(&chain.chain_id)?,
    })
}

/// The verdict on one chain, walked on by `walk` up to seq `end`; `derive` is shown each
/// record whose hash verifies.
fn verify_chain(
    store: &dyn Store,
    chain: &ChainState,
    page: usize,
    mut walk: Walk,
    end: u64,
    derive: &mut dyn FnMut(&ChainRow<'_>),
) -> Result<ChainVerdict, StoreError> {
    let head = head(store, chain)?;
    walk_chain(store, chain, page, &mut walk, end, derive)?;
    Ok(walk.verdict(&head))
}

/// Steps `walk` along the chain's stored records, `page` at a time, up to seq `end`.
fn walk_chain(
    store: &dyn Store,
    chain: &ChainState,
    page: usize,
    walk: &mut Walk,
    end: u64,
    derive: &mut dyn FnMut(&ChainRow<'_>),
) -> Result<(), StoreError> {
    loop {
        let (mut read, mut ended) = (0, false);
        store.chain_rows(&chain.chain_id, walk.next_seq(), page, &mut |record| {
            if record.seq >= end {
                ended = true;
                return ControlFlow::Break(());
            }
            read += 1;
            walk.step(record, derive)
        })?;
        if walk.failed() || ended || read < page {
            return Ok(());
        }
    }
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
        verify_chain(
            &store.store,
            chain,
            page,
            Walk::new(CHAIN, None),
            u64::MAX,
            &mut |_| {},
        )
        .unwrap()
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
        let all = verify_all(&store.store, None, "h", "").unwrap().chains;
        assert_eq!(all.len(), 1);
        assert!(
            verify_all(&store.store, None, "other-host", "")
                .unwrap()
                .chains
                .is_empty()
        );
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
