//! `verify --local`: the checks of the collector's verify (the `verifier` crate), run here
//! over what the collector stores, as its `Evidence` stream gives it, trusting only the CA
//! certificate: every key is taken from a certificate that chains to it, and nothing the
//! collector says about its own evidence is believed.

use std::{collections::HashMap, convert::Infallible, io};

use anyhow::{Context as _, anyhow, bail};
use proto::{
    chain::GENESIS,
    kind::Kind,
    v1::{
        EvidenceRequest, Grant, LogStart, RawRecord, StoredChain, StoredCheckpoint, VerifyResponse,
        evidence_item::Item, query_client::QueryClient,
    },
};
use tonic::transport::Channel;
use verifier::{
    COLLECTOR_HOST, ChainRow, Columns, Head, Report, Trust, Walk,
    columns::Checks,
    grants::Grants,
    hole::{self, Holes},
    log::{Checkpoint, Leaf, LogCheck, Next},
    prune::{self, Prunes},
};

/// Checks the evidence of `host` (every host, then the collector's own log, without one)
/// against the CA certificate `ca_pem`, and prints the verdicts as `verify` does.
pub async fn verify(
    client: &mut QueryClient<Channel>,
    host: Option<String>,
    ca_pem: &str,
    json: bool,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let host = host.unwrap_or_default();
    let mut stream = client
        .evidence(EvidenceRequest { host: host.clone() })
        .await
        .map_err(|s| anyhow!("the collector refused the evidence: {}", s.message()))?
        .into_inner();
    let first = stream.message().await?.and_then(|i| i.item);
    let Some(Item::CollectorCertificatePem(pem)) = first else {
        bail!("the collector's evidence does not begin with its certificate");
    };
    let mut trust = Trust::from_witness_cert(ca_pem, &pem)
        .map_err(|e| anyhow!(e))
        .context("the collector's evidence cannot be checked against this CA")?;
    // The other collectors of the store come next, before any evidence they vouch for.
    let mut findings = Vec::new();
    let mut next = stream.message().await?;
    while let Some(Item::WitnessCertificatePem(pem)) = next.as_ref().and_then(|i| i.item.as_ref()) {
        let subject = "a witness certificate of the collector's chain".to_owned();
        trust.add_witness(subject, pem, &mut findings);
        next = stream.message().await?;
    }
    let mut local = Local::new(&trust, host);
    while let Some(item) = next {
        let item = item
            .item
            .ok_or_else(|| anyhow!("an evidence item of a kind this client does not know"))?;
        local.take(item)?;
        next = stream.message().await?;
    }
    let mut report = local.finish();
    report.findings.extend(findings);
    verifier::chain::name_endings(&mut report.chains);
    let ok = report.ok();
    let response = VerifyResponse {
        chains: report.chains,
        logs: report.logs,
        findings: report.findings,
        ok,
    };
    crate::query::print_report(&response, json, out)
}

/// The checks of the stream so far.
struct Local<'t> {
    trust: &'t Trust,
    /// The host asked for; empty: every one.
    host: String,
    report: Report,
    /// The hosts whose logs were given, sorted at the end.
    hosts: Vec<String>,
    log: Option<Log<'t>>,
    /// The prune notes and holes the host logs were given, to be found in the collector's
    /// chain.
    given: Given,
    /// What the collector's chain says, once it was given.
    own: Option<Own>,
    /// The columns of every host's records, checked beside the walks.
    checks: Checks,
}

/// The log being read.
enum Log<'t> {
    Host(Box<HostLog<'t>>),
    Own(Box<Own>),
}

/// A host's log: its prune records and certificates come first, then its checkpoints,
/// chains and records.
struct HostLog<'t> {
    start: LogStart,
    prunes: Prunes,
    holes: Holes,
    certificates: Vec<String>,
    check: Option<LogCheck<'t>>,
    chains: ChainWalks,
}

/// The chains of a log being walked, in the order they were met.
#[derive(Default)]
struct ChainWalks {
    order: Vec<String>,
    walks: HashMap<String, (Head, Walk)>,
}

impl ChainWalks {
    fn head(&mut self, chain: StoredChain, prunes: &Prunes, holes: &Holes) -> anyhow::Result<()> {
        let head = Head {
            // As the store reads a head hash that is not 32 bytes: as the empty chain's.
            head_hash: chain.head_hash.as_slice().try_into().unwrap_or(GENESIS),
            chain_id: chain.chain_id,
            host: chain.host,
            next_seq: chain.next_seq,
            checkpoint: chain.checkpoint_size,
        };
        let cut = prunes.cuts().get(head.chain_id.as_str()).copied().cloned();
        let walk = Walk::new(&head.chain_id, cut.as_ref()).with_holes(holes.of(&head.chain_id));
        self.order.push(head.chain_id.clone());
        if self
            .walks
            .insert(head.chain_id.clone(), (head, walk))
            .is_some()
        {
            bail!("the evidence names one chain twice");
        }
        Ok(())
    }

    /// The walk of `chain_id`, and whether its chain was given.
    fn walk(
        &mut self,
        chain_id: &str,
        host: &str,
        prunes: &Prunes,
        holes: &Holes,
    ) -> (&mut Walk, &Head, bool) {
        let known = self.walks.contains_key(chain_id);
        if !known {
            let cut = prunes.cuts().get(chain_id).copied().cloned();
            let head = Head {
                chain_id: chain_id.to_owned(),
                host: host.to_owned(),
                next_seq: 0,
                head_hash: GENESIS,
                checkpoint: None,
            };
            self.order.push(chain_id.to_owned());
            self.walks.insert(
                chain_id.to_owned(),
                (
                    head,
                    Walk::new(chain_id, cut.as_ref()).with_holes(holes.of(chain_id)),
                ),
            );
        }
        let (head, walk) = self.walks.get_mut(chain_id).expect("just inserted");
        (walk, head, known)
    }

    fn verdicts(mut self, report: &mut Report) {
        for id in self.order {
            if let Some((head, walk)) = self.walks.remove(&id) {
                report.chains.push(walk.verdict(&head));
            }
        }
    }
}

/// The collector's own log: its chain, the checkpoint of it kept outside its database,
/// the `grants` table.
struct Own {
    /// The serving collector's own chain, which its kept checkpoint covers.
    chain_id: String,
    chains: ChainWalks,
    grants: Grants,
    rows: Vec<Grant>,
    /// The kept checkpoint and the size it attests, with the leaves of that many records of
    /// the serving collector's chain.
    kept: Option<(String, u64)>,
    range: tlog::CompactRange,
    /// The prune records chained, with where.
    prunes: Vec<(String, String)>,
    /// The `spool_hole` records chained: their bytes.
    holes: Vec<Vec<u8>>,
}

/// The stored columns of a record.
fn stored_columns(r: &RawRecord) -> Columns<'_> {
    Columns {
        host: &r.host,
        time_unix_nano: r.time_unix_nano,
        kind: &r.kind,
        session: &r.session,
        sessionid: r.sessionid,
        tty: &r.tty,
        identity_kind: r.identity_kind,
        identity_name: &r.identity_name,
        grant: &r.grant,
        tty_bytes: r.tty_bytes,
    }
}

fn row(r: &RawRecord) -> ChainRow<'_> {
    ChainRow {
        row: i64::try_from(r.log_index).unwrap_or(i64::MAX),
        seq: r.seq,
        event: &r.event,
        hash: &r.hash,
        columns: stored_columns(r),
    }
}

impl<'t> Local<'t> {
    fn new(trust: &'t Trust, host: String) -> Self {
        Self {
            trust,
            host,
            report: Report::default(),
            hosts: Vec::new(),
            log: None,
            given: Given::default(),
            own: None,
            checks: Checks::default(),
        }
    }

    fn take(&mut self, item: Item) -> anyhow::Result<()> {
        if let Item::Log(start) = item {
            self.end_log();
            self.log = Some(if start.host == COLLECTOR_HOST {
                Log::Own(Box::new(Own {
                    // A collector from before each had a chain of its own names none.
                    chain_id: if start.chain_id.is_empty() {
                        COLLECTOR_HOST.to_owned()
                    } else {
                        start.chain_id
                    },
                    chains: ChainWalks::default(),
                    grants: Grants::default(),
                    rows: Vec::new(),
                    kept: None,
                    range: tlog::CompactRange::new(),
                    prunes: Vec::new(),
                    holes: Vec::new(),
                }))
            } else {
                self.hosts.push(start.host.clone());
                Log::Host(Box::new(HostLog {
                    start,
                    prunes: Prunes::default(),
                    holes: Holes::default(),
                    certificates: Vec::new(),
                    check: None,
                    chains: ChainWalks::default(),
                }))
            });
            return Ok(());
        }
        let findings = &mut self.report.findings;
        match &mut self.log {
            Some(Log::Host(log)) => log.take(
                self.trust,
                item,
                findings,
                &mut self.given,
                &mut self.checks,
            ),
            Some(Log::Own(own)) => own.take(item, findings),
            None => bail!("the collector's evidence gives items outside any log"),
        }
    }

    fn end_log(&mut self) {
        match self.log.take() {
            Some(Log::Host(log)) => log.finish(self.trust, &mut self.report),
            Some(Log::Own(own)) => self.own = Some(*own),
            None => {}
        }
    }

    fn finish(mut self) -> Report {
        self.end_log();
        let mut report = self.report;
        report.findings.extend(self.checks.finish());
        if !self.host.is_empty() && self.host != COLLECTOR_HOST && !self.hosts.contains(&self.host)
        {
            report.findings.push(proto::v1::Finding {
                subject: format!("host {}", self.host),
                reason: "the collector's evidence holds no log of it".into(),
            });
        }
        let Some(mut own) = self.own else {
            return report;
        };
        own.chains.verdicts(&mut report);
        own.grants
            .compare(std::mem::take(&mut own.rows), &mut report.findings);
        if let Some((text, _)) = &own.kept
            && let Ok(Some(why)) =
                verifier::own_log_disagreement(text.as_bytes(), self.trust, |_| {
                    Ok::<_, Infallible>(own.range.clone())
                })
        {
            report.findings.push(proto::v1::Finding {
                subject: format!("chain {}", own.chain_id),
                reason: why,
            });
        }
        let mut hosts = self.hosts;
        hosts.sort();
        hosts.dedup();
        own.grants
            .deleted_hosts(&hosts, &self.host, &mut report.findings);
        // Each prune record a host's log was given must be chained; each chained one that
        // no log was given is checked too, as verify checks every one.
        let chained: Vec<&str> = own.prunes.iter().map(|(_, n)| n.as_str()).collect();
        for (host, note) in &self.given.prunes {
            if !chained.contains(&note.as_str()) {
                report.findings.push(proto::v1::Finding {
                    subject: format!("host {host}"),
                    reason: "a prune record of its log that the collector's chain does not hold"
                        .into(),
                });
            }
        }
        let mut scratch = Prunes::default();
        for (at, note) in &own.prunes {
            if !self.given.prunes.iter().any(|(_, n)| n == note) {
                scratch.add(self.trust, at, note, &mut report.findings);
            }
        }
        // Each hole a host's log was given must be chained, and each chained hole of a host
        // checked must have been given: a hole is the only jump a chain may make.
        for (host, event) in &self.given.holes {
            if !own.holes.contains(event) {
                report.findings.push(proto::v1::Finding {
                    subject: format!("host {host}"),
                    reason: "a spool hole of its chains that the collector's chain does not hold"
                        .into(),
                });
            }
        }
        for event in &own.holes {
            let host = hole::host_of(Kind::Alert.name(), event).unwrap_or_default();
            if hosts.contains(&host) && !self.given.holes.iter().any(|(_, e)| e == event) {
                report.findings.push(proto::v1::Finding {
                    subject: format!("host {host}"),
                    reason: "a spool hole of its chains in the collector's chain that its log \
                             was not given"
                        .into(),
                });
            }
        }
        report
    }
}

/// What the host logs were given that the collector's chain must hold.
#[derive(Default)]
struct Given {
    /// Prune notes, by host.
    prunes: Vec<(String, String)>,
    /// `spool_hole` records' bytes, by host.
    holes: Vec<(String, Vec<u8>)>,
}

impl<'t> HostLog<'t> {
    /// The log's check, begun once its prune records were all given.
    fn check(&mut self, trust: &'t Trust) -> &mut LogCheck<'t> {
        let (host, prunes, holes) = (&self.start.host, &self.prunes, &self.holes);
        self.check.get_or_insert_with(|| {
            LogCheck::new(trust, host, prunes.by_host.get(host).cloned()).with_holes(holes.clone())
        })
    }

    fn take(
        &mut self,
        trust: &'t Trust,
        item: Item,
        findings: &mut Vec<proto::v1::Finding>,
        given: &mut Given,
        checks: &mut Checks,
    ) -> anyhow::Result<()> {
        let host = self.start.host.clone();
        match item {
            Item::PruneNote(note) if self.check.is_none() => {
                let subject = format!("host {host} prune record");
                self.prunes.add(trust, &subject, &note, findings);
                if self.prunes.by_host.keys().any(|h| *h != host) {
                    self.prunes.by_host.retain(|h, _| *h == host);
                    findings.push(proto::v1::Finding {
                        subject,
                        reason: "a prune record of another host's log".into(),
                    });
                }
                given.prunes.push((host, note));
            }
            Item::Hole(event) if self.check.is_none() => {
                self.holes.read(Kind::Alert.name(), &event);
                given.holes.push((host, event));
            }
            Item::CertificatePem(pem) if self.check.is_none() => self.certificates.push(pem),
            Item::Checkpoint(StoredCheckpoint {
                note,
                certificate,
                size,
                root,
            }) => {
                let cert_pem = self
                    .certificates
                    .get(certificate as usize)
                    .cloned()
                    .unwrap_or_default();
                let root = root.as_slice().try_into().unwrap_or([0; 32]);
                let checkpoint = Checkpoint {
                    size,
                    root,
                    note: &note,
                    cert_pem: &cert_pem,
                };
                self.check(trust).checkpoint(checkpoint, findings);
            }
            Item::Chain(chain) => {
                // Chains come after the checkpoints: no prune record or certificate may
                // follow, so the check begins here even for a log without checkpoints.
                self.check(trust);
                self.chains.head(chain, &self.prunes, &self.holes)?;
            }
            Item::Record(r) => self.record(trust, &r, checks, findings),
            _ => bail!("the collector's evidence of host {host} is out of order"),
        }
        Ok(())
    }

    /// A record: the next record of its chain, and a leaf of the log, which takes the
    /// record's hash as its chain's walk verified it.
    fn record(
        &mut self,
        trust: &'t Trust,
        r: &RawRecord,
        checks: &mut Checks,
        findings: &mut Vec<proto::v1::Finding>,
    ) {
        let host = self.start.host.clone();
        let (walk, head, known) = self
            .chains
            .walk(&r.chain_id, &host, &self.prunes, &self.holes);
        if !known {
            findings.push(proto::v1::Finding {
                subject: format!("chain {}", r.chain_id),
                reason: "records of it are in the log, but the chains table lacks it".into(),
            });
        }
        // A walk that breaks has failed, which `holds` says.
        let _ = walk.step(row(r), &mut |row| checks.push(&head.host, &r.chain_id, row));
        let leaf = Leaf {
            log_index: r.log_index,
            chain_id: &r.chain_id,
            seq: r.seq,
            hash: &r.hash,
            event: &r.event,
            verified: walk.holds(r.seq),
        };
        let log = self.check(trust);
        // The record before a chain's first leaf predates the log: this stream holds only
        // the log, so it is taken as not stored.
        while let Next::NeedPrev { chain_id, seq } = log.leaf(leaf, findings) {
            log.prev_found(chain_id, seq, None);
        }
    }

    fn finish(mut self, trust: &'t Trust, report: &mut Report) {
        self.check(trust);
        let check = self.check.take().expect("just begun");
        let row = self
            .start
            .frontier
            .as_deref()
            .map(|f| (self.start.first_index + self.start.leaves, f));
        let verdict = check.finish(row, &mut report.findings);
        self.chains.verdicts(report);
        report.logs.push(verdict);
    }
}

impl Own {
    fn take(&mut self, item: Item, findings: &mut Vec<proto::v1::Finding>) -> anyhow::Result<()> {
        match item {
            Item::Checkpoint(c) => {
                // Its size says how many leaves to keep; its signature is checked at the end.
                let size = tlog::Note::parse(c.note.as_bytes())
                    .ok()
                    .and_then(|n| tlog::Checkpoint::parse_body(n.text()).ok())
                    .map_or(0, |c| c.size());
                self.kept = Some((c.note, size));
            }
            Item::Chain(chain) => {
                self.chains
                    .head(chain, &Prunes::default(), &Holes::default())?;
            }
            Item::Grant(grant) => self.rows.push(grant),
            Item::Record(r) => {
                let kept = self.kept.as_ref().map_or(0, |(_, size)| *size);
                if r.chain_id == self.chain_id
                    && self.range.size() < kept
                    && r.seq == self.range.size()
                    && let Ok(hash) = <[u8; 32]>::try_from(r.hash.as_slice())
                {
                    let _ = self.range.append(tlog::leaf_hash(&hash));
                }
                if let Some(note) = prune::note_of(&r.kind, &r.event) {
                    self.prunes
                        .push((verifier::record_subject(&r.chain_id, r.seq), note));
                }
                if hole::host_of(&r.kind, &r.event).is_some() {
                    self.holes.push(r.event.clone());
                }
                let (walk, _, known) = self.chains.walk(
                    &r.chain_id,
                    COLLECTOR_HOST,
                    &Prunes::default(),
                    &Holes::default(),
                );
                if !known {
                    findings.push(proto::v1::Finding {
                        subject: format!("chain {}", r.chain_id),
                        reason: "records of it are among the collectors' chains, but the \
                                 chains table lacks it"
                            .into(),
                    });
                }
                let grants = &mut self.grants;
                let _ = walk.step(row(&r), &mut |row| {
                    grants.replay(&r.chain_id, row, findings);
                });
            }
            _ => bail!("the collector's evidence of its own log is out of order"),
        }
        Ok(())
    }
}
