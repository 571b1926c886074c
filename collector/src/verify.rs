//! Verification of what the store holds (docs/chain.md, docs/evidence.md): each chain's
//! continuity, every hash recomputed from the stored bytes, and the size against the
//! recorded head; every stored column against what the record's bytes say; the `grants`
//! table against the chained grant changes; and each host's log: the host's signature and
//! the collector's cosignature of every stored checkpoint, its root recomputed from the
//! stored bytes, and the leaves stored against the size it attests. It sits above the
//! `Store` trait and reads rows a page at a time, so every backend is checked by this one
//! implementation and no backend can be lenient about its own tampering.

use std::{
    collections::{BTreeMap, HashMap},
    ops::ControlFlow,
    time::{Duration, SystemTime},
};

use prost::Message as _;
use proto::{
    chain::GENESIS,
    chain::chain_hash,
    kind::Kind,
    v1::{ChainVerdict, Event, Finding, Grant, LogVerdict, event::Body},
};
use tlog::CompactRange;

use crate::{
    ingest::check,
    prune::{Cut, PruneNote},
    store::{COLLECTOR_CHAIN, ChainRow, ChainState, LogCheckpoint, Store, StoreError},
    witness::Witness,
};

/// Everything verify found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub chains: Vec<ChainVerdict>,
    pub logs: Vec<LogVerdict>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub(crate) fn ok(&self) -> bool {
        self.chains.iter().all(|c| c.ok)
            && self.logs.iter().all(|l| l.ok)
            && self.findings.is_empty()
    }
}

/// Checks the chains of `host` (empty: all), or the one chain `chain_id`, the columns of
/// their records, and, with a witness, the logs of those hosts. The `grants` table is
/// checked whenever the collector's chain is.
pub(crate) fn verify_all(
    store: &dyn Store,
    witness: Option<&Witness>,
    host: &str,
    chain_id: &str,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let prunes = match witness {
        Some(witness) => read_prunes(store, witness, &mut report.findings)?,
        None => HashMap::new(),
    };
    let cuts: HashMap<&str, &Cut> = prunes
        .values()
        .flat_map(|p| p.cuts.iter().map(|(chain, cut)| (chain.as_str(), cut)))
        .collect();
    let chains = store.chains()?;
    let mut grants = Grants::default();
    for chain in chains
        .iter()
        .filter(|c| host.is_empty() || c.host == host)
        .filter(|c| chain_id.is_empty() || c.chain_id == chain_id)
    {
        let collector = chain.chain_id == COLLECTOR_CHAIN;
        let mut derive = |row: &ChainRow<'_>| {
            if collector {
                grants.replay(row, &mut report.findings);
            } else {
                check_columns(&chain.host, &chain.chain_id, row, &mut report.findings);
            }
        };
        let cut = cuts.get(chain.chain_id.as_str()).copied();
        report
            .chains
            .push(verify_chain(store, chain, PAGE, cut, &mut derive)?);
        if collector {
            grants.compare(store, &mut report.findings)?;
        }
    }
    if let Some(why) = witness
        .filter(|_| chain_id.is_empty())
        .map(|w| w.own_log_disagreement(store))
        .transpose()?
        .flatten()
    {
        report.findings.push(Finding {
            subject: format!("chain {COLLECTOR_CHAIN}"),
            reason: why,
        });
    }
    if let (Some(witness), true) = (witness, chain_id.is_empty()) {
        let mut hosts: Vec<String> = store.logs()?.into_iter().map(|l| l.host).collect();
        hosts.extend(store.checkpointed_hosts()?);
        hosts.sort();
        hosts.dedup();
        for h in grants
            .logs_started
            .iter()
            .filter(|h| host.is_empty() || **h == host)
        {
            if hosts.binary_search(h).is_err() {
                report.findings.push(Finding {
                    subject: format!("host {h}"),
                    reason: "the collector's chain says it cosigned this host's log, but the \
                             store holds none of it: the host was deleted"
                        .into(),
                });
            }
        }
        for h in hosts.iter().filter(|h| host.is_empty() || **h == host) {
            let prune = prunes.get(h);
            report
                .logs
                .push(verify_log(store, witness, h, prune, &mut report.findings)?);
        }
    }
    Ok(report)
}

/// A stored column that differs from what the record's bytes say.
fn check_columns(host: &str, chain_id: &str, row: &ChainRow<'_>, findings: &mut Vec<Finding>) {
    let hash = row.hash.try_into().unwrap_or([0; 32]);
    let subject = format!("chain {chain_id} seq {}", row.seq);
    let derived = match check::record(host, row.seq, row.event.to_vec(), hash) {
        Ok(derived) => derived,
        Err(e) => {
            findings.push(Finding {
                subject,
                reason: format!("its bytes are not a record an agent may send: {e}"),
            });
            return;
        }
    };
    let derived = derived.columns();
    if derived != row.columns {
        findings.push(Finding {
            subject,
            reason: format!(
                "its stored columns differ from what its bytes say: stored {:?}, derived {:?}",
                row.columns, derived
            ),
        });
    }
}

/// The grants as the collector's chained grant changes leave them, and the hosts whose
/// logs the chain says it started.
#[derive(Default)]
struct Grants {
    replayed: BTreeMap<String, Grant>,
    logs_started: Vec<String>,
}

impl Grants {
    fn replay(&mut self, row: &ChainRow<'_>, findings: &mut Vec<Finding>) {
        let Ok(event) = Event::decode(row.event) else {
            findings.push(Finding {
                subject: format!("chain {COLLECTOR_CHAIN} seq {}", row.seq),
                reason: "its bytes are not a recorder.v1.Event".into(),
            });
            return;
        };
        let kind = Kind::of(&event).map_or("", Kind::name);
        if kind != row.columns.kind {
            findings.push(Finding {
                subject: format!("chain {COLLECTOR_CHAIN} seq {}", row.seq),
                reason: format!(
                    "its stored kind is {:?}, its bytes say {kind:?}",
                    row.columns.kind
                ),
            });
        }
        match event.body {
            Some(Body::GrantChange(change)) => {
                if let Some(grant) = change.grant {
                    self.replayed.insert(grant.id.clone(), grant);
                }
            }
            Some(Body::Admin(act)) if act.action == "log_started" => {
                self.logs_started.push(act.host);
            }
            _ => {}
        }
    }

    /// The `grants` table must be exactly what the changes give.
    fn compare(&self, store: &dyn Store, findings: &mut Vec<Finding>) -> Result<(), StoreError> {
        let stored: BTreeMap<String, Grant> = store
            .grants(0)?
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        for (id, grant) in &stored {
            if self.replayed.get(id) != Some(grant) {
                findings.push(Finding {
                    subject: format!("grant {id}"),
                    reason: "the grants table differs from its chained grant changes".into(),
                });
            }
        }
        for id in self.replayed.keys().filter(|id| !stored.contains_key(*id)) {
            findings.push(Finding {
                subject: format!("grant {id}"),
                reason: "chained grant changes make it, but the grants table lacks it".into(),
            });
        }
        Ok(())
    }
}

/// What the valid prune records of one host's log say: the latest one's range and
/// frontier, and where each chain they cut resumes.
pub(crate) struct HostPrune {
    end: u64,
    frontier: Vec<tlog::Hash>,
    checkpoint: (u64, tlog::Hash),
    pub cuts: HashMap<String, Cut>,
}

/// The prune records chained in the collector's chain whose signature (the collector's log
/// key) holds, by host. One that does not verify is a finding, and covers nothing.
pub(crate) fn read_prunes(
    store: &dyn Store,
    witness: &Witness,
    findings: &mut Vec<Finding>,
) -> Result<HashMap<String, HostPrune>, StoreError> {
    let verifier = witness.log_signer().map(|s| s.verifier()).ok();
    let prefix = witness.origin("");
    let mut notes = Vec::new();
    let mut from = 0;
    loop {
        let mut read = 0;
        store.chain_rows(COLLECTOR_CHAIN, from, PAGE, &mut |row| {
            read += 1;
            from = row.seq + 1;
            if row.columns.kind == Kind::Prune.name()
                && let Ok(Event {
                    body: Some(Body::Prune(prune)),
                    ..
                }) = Event::decode(row.event)
            {
                notes.push((row.seq, prune.note));
            }
            ControlFlow::Continue(())
        })?;
        if read < PAGE {
            break;
        }
    }
    let mut prunes: HashMap<String, HostPrune> = HashMap::new();
    for (seq, text) in notes {
        let opened = verifier
            .as_ref()
            .ok_or_else(|| "the collector has no log key".to_owned())
            .and_then(|verifier| {
                let note = tlog::Note::parse(text.as_bytes()).map_err(|e| e.to_string())?;
                note.verify(verifier).map_err(|e| e.to_string())?;
                PruneNote::parse_body(note.text())
            });
        let note = match opened {
            Ok(note) => note,
            Err(why) => {
                findings.push(Finding {
                    subject: format!("chain {COLLECTOR_CHAIN} seq {seq}"),
                    reason: format!("a prune record that does not verify: {why}"),
                });
                continue;
            }
        };
        let Some(host) = note.log.strip_prefix(&prefix) else {
            findings.push(Finding {
                subject: format!("chain {COLLECTOR_CHAIN} seq {seq}"),
                reason: format!(
                    "a prune record of {}, not a host of this deployment",
                    note.log
                ),
            });
            continue;
        };
        let entry = prunes.entry(host.to_owned()).or_insert_with(|| HostPrune {
            end: 0,
            frontier: Vec::new(),
            checkpoint: (0, tlog::EMPTY_ROOT),
            cuts: HashMap::new(),
        });
        if note.end > entry.end {
            entry.end = note.end;
            entry.frontier = note.frontier;
            entry.checkpoint = note.checkpoint;
        }
        for cut in note.cuts {
            entry.cuts.insert(cut.chain_id.clone(), cut);
        }
    }
    Ok(prunes)
}

/// A stored checkpoint's host signature (by the key of a host certificate of the CA, valid
/// when it was cosigned) and the collector's cosignature: its size and root.
fn check_checkpoint(
    witness: &Witness,
    host: &str,
    checkpoint: &LogCheckpoint,
    certs: &mut HashMap<String, Result<pki::CertInfo, String>>,
) -> Result<(u64, tlog::Hash), String> {
    // A host signs with one certificate for many checkpoints: each is checked against the
    // CA once.
    let info = certs
        .entry(checkpoint.cert_pem.clone())
        .or_insert_with(|| {
            let info = pki::verify_cert(&witness.ca_pem, &checkpoint.cert_pem, None)
                .map_err(|e| format!("its host certificate: {e}"))?;
            if info.peer
                != (pki::Peer::Agent {
                    host: host.to_owned(),
                })
            {
                return Err(format!("signed by {}, not by host {host}", info.peer));
            }
            Ok(info)
        })
        .as_ref()
        .map_err(Clone::clone)?;
    let signed = witness.open(host, info, &checkpoint.note)?;
    let time = witness
        .cosigner
        .verifier()
        .verify_in_note(&signed.note, &signed.checkpoint)
        .map_err(|e| format!("the collector's cosignature: {e}"))?;
    info.valid_at(SystemTime::UNIX_EPOCH + Duration::from_secs(time))
        .map_err(|e| format!("its host certificate: {e}"))?;
    Ok((signed.checkpoint.size(), *signed.checkpoint.root()))
}

/// Host `host`'s log: every stored checkpoint's signatures, its root against the leaves
/// recomputed from the stored bytes, and the leaves stored against the size attested.
fn verify_log(
    store: &dyn Store,
    witness: &Witness,
    host: &str,
    prune: Option<&HostPrune>,
    findings: &mut Vec<Finding>,
) -> Result<LogVerdict, StoreError> {
    let mut verdict = LogVerdict {
        origin: witness.origin(host),
        host: host.to_owned(),
        ..LogVerdict::default()
    };
    let mut failures = Vec::new();
    // Root by size, from the checkpoints whose signatures hold.
    let mut roots: BTreeMap<u64, tlog::Hash> = BTreeMap::new();
    let mut certs = HashMap::new();
    for checkpoint in store.log_checkpoints(host)? {
        verdict.checkpoints += 1;
        match check_checkpoint(witness, host, &checkpoint, &mut certs) {
            Ok((size, root)) => {
                if (size, root) != (checkpoint.size, checkpoint.root) {
                    findings.push(Finding {
                        subject: format!("host {host} checkpoint of size {}", checkpoint.size),
                        reason: format!(
                            "its size and root columns differ from its signed note (size {size})"
                        ),
                    });
                }
                if roots.insert(size, root).is_some_and(|other| other != root) {
                    failures.push(format!("two signed roots for size {size}"));
                }
                verdict.attested_size = verdict.attested_size.max(size);
            }
            Err(why) => failures.push(format!("the checkpoint of size {}: {why}", checkpoint.size)),
        }
    }
    if let Some(prune) = prune {
        verdict.pruned = prune.end;
        if roots.get(&prune.checkpoint.0) != Some(&prune.checkpoint.1) {
            failures.push(format!(
                "the prune record of leaves 0 to {} names a checkpoint of size {} that no \
                 stored, signed checkpoint matches",
                prune.end, prune.checkpoint.0
            ));
        }
    }
    let walk = walk_leaves(store, host, &roots, prune, findings)?;
    verdict.leaves = walk.range.size() - verdict.pruned;
    failures.extend(walk.failure);
    if walk.range.size() < verdict.attested_size {
        failures.push(format!(
            "stored {}, attested {}: leaves are missing from the log's tail",
            walk.range.size(),
            verdict.attested_size
        ));
    }
    if let Some(row) = store.log(host)?
        && (row.size != walk.range.size() || row.frontier != walk.range.to_bytes())
    {
        findings.push(Finding {
            subject: format!("host {host} log"),
            reason: format!(
                "the logs table says {} leaves with another tree; the stored records give {}",
                row.size,
                walk.range.size()
            ),
        });
    }
    verdict.ok = failures.is_empty();
    verdict.reason = failures.join("; ");
    Ok(verdict)
}

/// The links between a host's chains (docs/evidence.md, "Verify"): each chain's
/// `ChainStart` must name the record before it in the log, as an agent's restart does.
#[derive(Default)]
struct Links {
    /// The last leaf walked: its chain, seq and recomputed hash.
    last: Option<(String, u64, [u8; 32])>,
    /// Records a `ChainStart` named, and the chain that did.
    named: HashMap<(String, u64), String>,
}

impl Links {
    /// Checks the `ChainStart` of `chain_id`, given where each chain stands in the log.
    fn check(
        &mut self,
        chain_id: &str,
        event: &[u8],
        heads: &HashMap<String, (u64, [u8; 32])>,
        findings: &mut Vec<Finding>,
    ) {
        let subject = format!("chain {chain_id} seq 0");
        let Ok(Some(Body::ChainStart(start))) = Event::decode(event).map(|e| e.body) else {
            findings.push(Finding {
                subject,
                reason: "a chain's first record is not a chain_start".into(),
            });
            return;
        };
        let Some((last_chain, last_seq, last_hash)) = &self.last else {
            // The log's first record: what came before is outside the log.
            return;
        };
        let named = heads.get(&start.previous_chain_id);
        let reason = if start.previous_chain_id.is_empty() {
            Some(format!(
                "it names no chain before it, but the log holds chain {last_chain} to seq \
                 {last_seq} before it: the host's spool was wiped"
            ))
        } else if let Some((held, _)) = named.filter(|(held, _)| start.previous_seq < *held) {
            Some(format!(
                "it names seq {} of chain {}, which the log holds to seq {held}: the host \
                 restarted from an older copy of its spool (a restored snapshot)",
                start.previous_seq, start.previous_chain_id
            ))
        } else if start.previous_chain_id != *last_chain || start.previous_seq != *last_seq {
            Some(format!(
                "it names seq {} of chain {} as the record before it, but the record before \
                 it in the log is seq {last_seq} of chain {last_chain}",
                start.previous_seq, start.previous_chain_id
            ))
        } else if start.previous_hash != last_hash[..] {
            Some(format!(
                "it names seq {last_seq} of chain {last_chain} with another hash than the log's"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            findings.push(Finding {
                subject: subject.clone(),
                reason,
            });
        }
        if !start.previous_chain_id.is_empty()
            && let Some(other) = self.named.insert(
                (start.previous_chain_id.clone(), start.previous_seq),
                chain_id.to_owned(),
            )
        {
            findings.push(Finding {
                subject,
                reason: format!(
                    "chain {other} names the same record before it (seq {} of chain {}): two \
                     hosts run from one spool (a cloned host)",
                    start.previous_seq, start.previous_chain_id
                ),
            });
        }
    }
}

/// The leaves of a log, recomputed from the stored bytes.
struct LeafWalk {
    range: CompactRange,
    failure: Option<String>,
}

fn walk_leaves(
    store: &dyn Store,
    host: &str,
    roots: &BTreeMap<u64, tlog::Hash>,
    prune: Option<&HostPrune>,
    findings: &mut Vec<Finding>,
) -> Result<LeafWalk, StoreError> {
    // The pruned leaves are their compact range: the roots of the rest still compute.
    let range = match prune {
        Some(p) => match CompactRange::from_frontier(p.end, &p.frontier) {
            Ok(range) => range,
            Err(e) => {
                return Ok(LeafWalk {
                    range: CompactRange::new(),
                    failure: Some(format!("the prune record's frontier: {e}")),
                });
            }
        },
        None => CompactRange::new(),
    };
    let mut walk = LeafWalk {
        range,
        failure: None,
    };
    if let Some(root) = roots.get(&walk.range.size())
        && walk.range.size() > 0
        && *root != walk.range.root()
    {
        walk.failure = Some(format!(
            "the prune record's frontier does not give the signed root of size {}",
            walk.range.size()
        ));
    }
    if roots.get(&0).is_some_and(|r| *r != tlog::EMPTY_ROOT) {
        walk.failure = Some("the checkpoint of size 0 does not have the empty root".into());
    }
    // Each chain's last record in the log so far, recomputed: the next one links to it.
    let mut heads: HashMap<String, (u64, [u8; 32])> = prune
        .map(|p| {
            p.cuts
                .iter()
                .filter(|(_, c)| c.first_kept > 0)
                .map(|(chain, c)| (chain.clone(), (c.first_kept - 1, c.prev)))
                .collect()
        })
        .unwrap_or_default();
    let mut links = Links::default();
    let mut lookups = Vec::new();
    loop {
        let before = walk.range.size();
        store.log_leaves(host, before, PAGE, &mut |leaf| {
            if leaf.log_index != walk.range.size() {
                walk.failure = Some(format!(
                    "leaf {} is missing (the next stored is {})",
                    walk.range.size(),
                    leaf.log_index
                ));
                return ControlFlow::Break(());
            }
            let prev = match heads.get(leaf.chain_id) {
                Some((seq, hash)) if seq + 1 == leaf.seq => *hash,
                _ if leaf.seq == 0 => GENESIS,
                // The record before it predates the log: its stored hash, looked up below.
                _ => {
                    lookups.push((leaf.chain_id.to_owned(), leaf.seq));
                    return ControlFlow::Break(());
                }
            };
            let hash = chain_hash(leaf.chain_id, leaf.seq, &prev, leaf.event);
            if leaf.seq == 0 {
                links.check(leaf.chain_id, leaf.event, &heads, findings);
            }
            links.last = Some((leaf.chain_id.to_owned(), leaf.seq, hash));
            heads.insert(leaf.chain_id.to_owned(), (leaf.seq, hash));
            let _ = walk.range.append(tlog::leaf_hash(&hash));
            if let Some(root) = roots.get(&walk.range.size())
                && *root != walk.range.root()
            {
                walk.failure = Some(format!(
                    "the stored records do not give the signed root of size {}: a record among the first {} was changed",
                    walk.range.size(),
                    walk.range.size()
                ));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if walk.failure.is_some() {
            break;
        }
        if let Some((chain, seq)) = lookups.pop() {
            let prev = store
                .hash_at(&chain, seq - 1)?
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .unwrap_or(GENESIS);
            heads.insert(chain, (seq - 1, prev));
            continue;
        }
        if walk.range.size() == before {
            break;
        }
    }
    Ok(walk)
}

/// Records read at a time: bounds memory whatever a chain's length.
const PAGE: usize = 10_000;

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
    fn step(
        &mut self,
        record: ChainRow<'_>,
        derive: &mut dyn FnMut(&ChainRow<'_>),
    ) -> ControlFlow<()> {
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
            derive(&record);
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

/// The verdict on one chain; `derive` is shown each record whose hash verifies. A chain
/// cut by a valid prune record starts where the cut says.
fn verify_chain(
    store: &dyn Store,
    chain: &ChainState,
    page: usize,
    cut: Option<&Cut>,
    derive: &mut dyn FnMut(&ChainRow<'_>),
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
        expected: cut.map_or(0, |c| c.first_kept),
        prev: cut.map_or(GENESIS, |c| c.prev),
        prev_row: i64::MIN,
        bad: None,
        failure: None,
    };
    loop {
        let from = walk.bad.map_or(walk.expected, |(seq, _)| seq + 1);
        let mut read = 0;
        store.chain_rows(&chain.chain_id, from, page, &mut |record| {
            read += 1;
            walk.step(record, derive)
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
        verify_chain(&store.store, chain, page, None, &mut |_| {}).unwrap()
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
