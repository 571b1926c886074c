//! One host's log (docs/evidence.md): every stored checkpoint's host signature (by the key
//! of a host certificate of the CA, valid when it was cosigned) and collector cosignature;
//! its leaves recomputed from the stored bytes in log order, with the links between the
//! host's chains, against the root of every signed checkpoint (which makes successive
//! checkpoints consistent); and the leaves stored against the size attested.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use proto::{
    chain::{GENESIS, chain_hash},
    v1::{Event, Finding, LogVerdict, event::Body},
};
use tlog::{CompactRange, Hash};

use crate::{Trust, hole::Holes, prune::HostPrune};

/// A stored checkpoint: the note, with the host's signature and the collector's
/// cosignature, the size and root stored beside it, and the certificate whose key signed it.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint<'a> {
    pub size: u64,
    pub root: Hash,
    pub note: &'a str,
    pub cert_pem: &'a str,
}

/// A stored leaf: record `seq` of chain `chain_id`, its bytes `event` and stored hash
/// `hash`, stored at `log_index`.
#[derive(Clone, Copy, Debug)]
pub struct Leaf<'a> {
    pub log_index: u64,
    pub chain_id: &'a str,
    pub seq: u64,
    pub hash: &'a [u8],
    pub event: &'a [u8],
    /// The record's chain walk has just verified it (`Walk::holds`): its stored hash is
    /// taken, not recomputed. Otherwise only a hole's anchor stands on its stored hash.
    pub verified: bool,
}

/// What the walk wants after a leaf.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// The log has failed: no leaf after can change its verdict.
    Stop,
    /// The leaf was not taken: it is the first of its chain in the log, but not seq 0, so
    /// the walk needs the hash of the record before it (`prev_found`), which predates the
    /// log.
    NeedPrev {
        chain_id: String,
        seq: u64,
    },
}

/// The check of one host's log: shown its checkpoints, then its leaves in log order.
pub struct LogCheck<'t> {
    trust: &'t Trust,
    host: String,
    verdict: LogVerdict,
    failures: Vec<String>,
    /// Root by size, from the checkpoints whose signatures hold.
    roots: BTreeMap<u64, Hash>,
    /// A host signs with one certificate for many checkpoints: each is checked against the
    /// CA once.
    certs: HashMap<String, Result<pki::CertInfo, String>>,
    prune: Option<HostPrune>,
    /// The holes of the host's chains: their anchors' hashes stand as stored.
    holes: Holes,
    /// `None` until the first leaf: the checkpoints come first.
    walk: Option<LeafWalk>,
}

/// The leaves of a log, recomputed from the stored bytes.
struct LeafWalk {
    range: CompactRange,
    failure: Option<String>,
    /// Each chain's last record in the log so far, recomputed: the next one links to it.
    heads: HashMap<String, (u64, [u8; 32])>,
    links: Links,
}

impl<'t> LogCheck<'t> {
    /// `prune`: what the valid prune records of the host's log say.
    #[must_use]
    pub fn new(trust: &'t Trust, host: &str, prune: Option<HostPrune>) -> Self {
        Self {
            trust,
            host: host.to_owned(),
            verdict: LogVerdict {
                origin: trust.origin(host),
                host: host.to_owned(),
                ..LogVerdict::default()
            },
            failures: Vec::new(),
            roots: BTreeMap::new(),
            certs: HashMap::new(),
            prune,
            holes: Holes::default(),
            walk: None,
        }
    }

    /// The log's chains may resume at the anchors of these holes.
    #[must_use]
    pub fn with_holes(mut self, holes: Holes) -> Self {
        self.holes = holes;
        self
    }

    /// Takes the next stored checkpoint, in the order they were cosigned.
    pub fn checkpoint(&mut self, checkpoint: Checkpoint<'_>, findings: &mut Vec<Finding>) {
        self.verdict.checkpoints += 1;
        match self.open(checkpoint) {
            Ok((size, root)) => {
                if (size, root) != (checkpoint.size, checkpoint.root) {
                    findings.push(Finding {
                        subject: format!(
                            "host {} checkpoint of size {}",
                            self.host, checkpoint.size
                        ),
                        reason: format!(
                            "its size and root columns differ from its signed note (size {size})"
                        ),
                    });
                }
                if self
                    .roots
                    .insert(size, root)
                    .is_some_and(|other| other != root)
                {
                    self.failures
                        .push(format!("two signed roots for size {size}"));
                }
                self.verdict.attested_size = self.verdict.attested_size.max(size);
            }
            Err(why) => self
                .failures
                .push(format!("the checkpoint of size {}: {why}", checkpoint.size)),
        }
    }

    /// A checkpoint's host signature and the collector's cosignature: its size and root.
    fn open(&mut self, checkpoint: Checkpoint<'_>) -> Result<(u64, Hash), String> {
        let (trust, host) = (self.trust, &self.host);
        let info = self
            .certs
            .entry(checkpoint.cert_pem.to_owned())
            .or_insert_with(|| {
                let info = pki::verify_cert(&trust.ca_pem, checkpoint.cert_pem, None)
                    .map_err(|e| format!("its host certificate: {e}"))?;
                if info.peer != (pki::Peer::Agent { host: host.clone() }) {
                    return Err(format!("signed by {}, not by host {host}", info.peer));
                }
                Ok(info)
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let signed = crate::open_checkpoint(&trust.origin(host), info, checkpoint.note)?;
        let (time, _) = trust
            .cosignature(&signed.note, &signed.checkpoint)
            .map_err(|e| format!("the collector's cosignature: {e}"))?;
        info.valid_at(SystemTime::UNIX_EPOCH + Duration::from_secs(time))
            .map_err(|e| format!("its host certificate: {e}"))?;
        Ok((signed.checkpoint.size(), *signed.checkpoint.root()))
    }

    /// The walk, started from the pruned leaves' compact range (so the roots of the rest
    /// still compute) once every checkpoint was shown.
    fn walk(&mut self) -> (&BTreeMap<u64, Hash>, &mut LeafWalk) {
        if self.walk.is_none() {
            let walk = self.start();
            self.walk = Some(walk);
        }
        (&self.roots, self.walk.as_mut().expect("just started"))
    }

    fn start(&mut self) -> LeafWalk {
        let mut walk = LeafWalk {
            range: CompactRange::new(),
            failure: None,
            heads: HashMap::new(),
            links: Links::default(),
        };
        if let Some(prune) = &self.prune {
            self.verdict.pruned = prune.end;
            if self.roots.get(&prune.checkpoint.0) != Some(&prune.checkpoint.1) {
                self.failures.push(format!(
                    "the prune record of leaves 0 to {} names a checkpoint of size {} that no \
                     stored, signed checkpoint matches",
                    prune.end, prune.checkpoint.0
                ));
            }
            match CompactRange::from_frontier(prune.end, &prune.frontier) {
                Ok(range) => walk.range = range,
                Err(e) => {
                    walk.failure = Some(format!("the prune record's frontier: {e}"));
                    return walk;
                }
            }
            walk.heads = prune
                .cuts
                .iter()
                .filter(|(_, c)| c.first_kept > 0)
                .map(|(chain, c)| (chain.clone(), (c.first_kept - 1, c.prev)))
                .collect();
        }
        if let Some(root) = self.roots.get(&walk.range.size())
            && walk.range.size() > 0
            && *root != walk.range.root()
        {
            walk.failure = Some(format!(
                "the prune record's frontier does not give the signed root of size {}",
                walk.range.size()
            ));
        }
        if self.roots.get(&0).is_some_and(|r| *r != tlog::EMPTY_ROOT) {
            walk.failure = Some("the checkpoint of size 0 does not have the empty root".into());
        }
        walk
    }

    /// The log index the next leaf must have.
    pub fn next_index(&mut self) -> u64 {
        self.walk().1.range.size()
    }

    /// Whether the log has failed.
    pub fn failed(&mut self) -> bool {
        self.walk().1.failure.is_some()
    }

    /// Takes the next stored leaf.
    pub fn leaf(&mut self, leaf: Leaf<'_>, findings: &mut Vec<Finding>) -> Next {
        let Leaf {
            log_index,
            chain_id,
            seq,
            hash,
            event,
            verified,
        } = leaf;
        let anchor = self.holes.anchors(chain_id, seq, hash, event);
        let (roots, walk) = self.walk();
        if walk.failure.is_some() {
            return Next::Stop;
        }
        if log_index != walk.range.size() {
            walk.failure = Some(format!(
                "leaf {} is missing (the next stored is {log_index})",
                walk.range.size(),
            ));
            return Next::Stop;
        }
        let prev = match walk.heads.get(chain_id) {
            _ if anchor || verified => None,
            Some((held, hash)) if held + 1 == seq => Some(*hash),
            _ if seq == 0 => Some(GENESIS),
            _ => {
                return Next::NeedPrev {
                    chain_id: chain_id.to_owned(),
                    seq,
                };
            }
        };
        // A hole's anchor links to a lost record: its hash stands as stored, which the
        // hole binds (with its bytes) in the collector's chain. A verified record's stands
        // as its chain's walk recomputed it.
        let hash = prev.map_or_else(
            || <[u8; 32]>::try_from(hash).unwrap_or(GENESIS),
            |prev| chain_hash(chain_id, seq, &prev, event),
        );
        if seq == 0 {
            walk.links.check(chain_id, event, &walk.heads, findings);
        }
        walk.links.walked(chain_id, seq, hash);
        // Most leaves follow one of their chain's: its entry is updated in place.
        match walk.heads.get_mut(chain_id) {
            Some(head) => *head = (seq, hash),
            None => {
                walk.heads.insert(chain_id.to_owned(), (seq, hash));
            }
        }
        let _ = walk.range.append(tlog::leaf_hash(&hash));
        if let Some(root) = roots.get(&walk.range.size())
            && *root != walk.range.root()
        {
            walk.failure = Some(format!(
                "the stored records do not give the signed root of size {}: a record among the first {} was changed",
                walk.range.size(),
                walk.range.size()
            ));
            return Next::Stop;
        }
        Next::Continue
    }

    /// The stored hash of the record before seq `seq` of `chain_id`, asked for by
    /// `Next::NeedPrev`; `None` when it is not stored.
    pub fn prev_found(&mut self, chain_id: String, seq: u64, hash: Option<[u8; 32]>) {
        self.walk()
            .1
            .heads
            .insert(chain_id, (seq - 1, hash.unwrap_or(GENESIS)));
    }

    /// The verdict, once every stored leaf was shown. `logs_row`: the size and compact
    /// range (`CompactRange::to_bytes`) the store's `logs` table keeps for the log, if any.
    #[must_use]
    pub fn finish(
        mut self,
        logs_row: Option<(u64, &[u8])>,
        findings: &mut Vec<Finding>,
    ) -> LogVerdict {
        let walk = self.walk.take().unwrap_or_else(|| self.start());
        let mut verdict = self.verdict;
        let mut failures = self.failures;
        verdict.leaves = walk.range.size() - verdict.pruned;
        failures.extend(walk.failure);
        if walk.range.size() < verdict.attested_size {
            failures.push(format!(
                "stored {}, attested {}: leaves are missing from the log's tail",
                walk.range.size(),
                verdict.attested_size
            ));
        }
        if let Some((size, frontier)) = logs_row
            && (size != walk.range.size() || frontier != walk.range.to_bytes())
        {
            findings.push(Finding {
                subject: format!("host {} log", self.host),
                reason: format!(
                    "the logs table says {size} leaves with another tree; the stored records give {}",
                    walk.range.size()
                ),
            });
        }
        verdict.ok = failures.is_empty();
        verdict.reason = failures.join("; ");
        verdict
    }
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
    /// Leaf `seq` of `chain_id` was the last walked.
    fn walked(&mut self, chain_id: &str, seq: u64, hash: [u8; 32]) {
        match &mut self.last {
            Some((chain, held, last)) if chain == chain_id => (*held, *last) = (seq, hash),
            last => *last = Some((chain_id.to_owned(), seq, hash)),
        }
    }

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
