//! The one writer: ingest streams hand it checked batches, it checks each against the chain
//! heads it keeps (so continuity is judged against exactly what it commits), commits
//! everything queued in one transaction, and only then replies. After each commit it tells
//! tailers how far the store reaches.
//!
//! Grant changes go through it too, so two changes to one grant never race: each is applied
//! to the grant as the commits before it left it, and chained into the collector's own chain
//! in the same transaction as the grant it changes. The writer does not know the grant
//! rules: a change reaches it as a closure (`Decide`) that the grants service made from
//! them, which it calls with the grant as it stands. Grants depend on the writer, never the
//! other way.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use prost::Message as _;
use proto::{
    chain::{Chain, chain_hash},
    kind::Kind,
    time::now_unix_nano,
    v1::{AdminAct, Alert, ChainStart, Event, Grant, GrantChange, Hole, event::Body},
};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use proto::v1::CheckpointAck;
use tlog::{CompactRange, Evidence, SignedCheckpoint, Verdict, WitnessState};

use verifier::{
    columns::Derived,
    prune::{Cut, PruneNote},
};

use crate::{
    error::{AdminError, GrantError, IngestError},
    store::{
        Append, COLLECTOR_HOST, ChainState, Commit, Conflict, Decisions, ForkRow, HoldRow,
        LogCheckpoint, LogRow, PruneRow, Record, RevokedHost, Store, StoreError, TokenRow,
    },
    witness::Witness,
};

/// Requests queued for the writer; senders wait when it is this far behind. Many hosts'
/// small batches fit at once, so when the writer falls behind, its next group holds several
/// batches of each host: a commit writes a page per host in each per-host index, so a
/// backlog is cleared in fewer pages an event than it was made with.
const QUEUE: usize = 4_096;
/// Bytes of batches queued for the writer, as they are held in memory: past them senders
/// wait too, whatever the count, so the queue's memory stays bounded when batches are large
/// or hold many small records. A batch larger than this waits until the queue holds none.
const QUEUE_BYTES: usize = 64 << 20;
/// A group commit takes at most this many records, so one commit's latency stays bounded.
const GROUP_RECORDS: usize = 100_000;
/// Times a group is committed again, its own records chained on the fresh head, when
/// another collector of the same name keeps moving its chain first.
const RECHAIN_TRIES: usize = 3;
/// The collector's own log is signed at most this often.
const OWN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Records of one chain, contiguous, each hash already checked against the one before it.
/// Only the first record's link to the stored head is left for the writer.
#[derive(Debug)]
pub(crate) struct Batch {
    pub host: String,
    pub chain_id: String,
    pub records: Vec<Record>,
    /// `Some`: the records follow a hole the agent declared (collector.proto, `SpoolHole`).
    /// The first record, when there is one, is the anchor, which may jump past the stored
    /// head; with none, the chain's records from the stored head on are lost.
    pub lost: Option<Lost>,
}

/// Why records before a batch are lost, as the agent declared it.
#[derive(Debug)]
pub(crate) struct Lost {
    /// "corrupt" or "missing".
    pub cause: &'static str,
    pub skipped_bytes: u64,
}

/// A host's checkpoint, its signature checked against the key of the host's certificate.
#[derive(Debug)]
pub(crate) struct CheckpointRequest {
    pub host: String,
    pub checkpoint: SignedCheckpoint,
    /// The size the agent last heard cosigned.
    pub old_size: u64,
    /// The host's certificate (PEM), kept with what its key signed.
    pub cert_pem: String,
}

/// A host's log as the writer keeps it: every leaf stored (as a compact range) and the last
/// checkpoint cosigned.
#[derive(Clone, Debug, Default)]
struct HostLog {
    range: CompactRange,
    cosigned: Option<WitnessState>,
    cosigned_note: String,
}

impl HostLog {
    fn from_row(row: &LogRow) -> Result<Self, StoreError> {
        let range = CompactRange::from_bytes(&row.frontier).map_err(|e| {
            StoreError::Backend(std::sync::Arc::new(std::io::Error::other(format!(
                "the stored log of host {} is damaged: {e}",
                row.host
            ))))
        })?;
        Ok(Self {
            range,
            cosigned: (row.cosigned_size > 0 || !row.cosigned_note.is_empty()).then_some(
                WitnessState {
                    size: row.cosigned_size,
                    root: row.cosigned_root,
                },
            ),
            cosigned_note: row.cosigned_note.clone(),
        })
    }

    fn row(&self, host: &str) -> LogRow {
        let cosigned = self.cosigned.unwrap_or(WitnessState {
            size: 0,
            root: tlog::EMPTY_ROOT,
        });
        LogRow {
            host: host.to_owned(),
            size: self.range.size(),
            frontier: self.range.to_bytes(),
            cosigned_size: cosigned.size,
            cosigned_root: cosigned.root,
            cosigned_note: self.cosigned_note.clone(),
        }
    }
}

/// Decides a grant change from the grant as it stands (`None`: no grant has the id) and the
/// time: the change to record, its `grant` being the grant as it becomes; or why not. It may
/// be asked again, against the store as it then is (`DECIDE_TRIES`).
pub(crate) type Decide =
    Arc<dyn Fn(Option<Grant>, u64) -> Result<GrantChange, GrantError> + Send + Sync>;

/// An administrative change, decided like a grant change: from the join token it concerns
/// as it stands (when it concerns one) and the time. The writer applies what it returns and
/// chains its act; it knows none of the rules.
pub(crate) type DecideAdmin =
    Arc<dyn Fn(Option<TokenRow>, u64) -> Result<AdminChange, AdminError> + Send + Sync>;

/// Times a decision is made, when other collectors of the store keep deciding something
/// between its read of the store and its commit (which then stores nothing).
const DECIDE_TRIES: usize = 5;

/// What an administrative change writes.
#[derive(Debug, Default)]
pub(crate) struct AdminChange {
    pub token: Option<TokenRow>,
    pub revoked: Option<RevokedHost>,
    pub hold: Option<HoldRow>,
    pub act: AdminAct,
}

type Reply = oneshot::Sender<Result<u64, IngestError>>;
type CheckpointReply = oneshot::Sender<Result<CheckpointAck, IngestError>>;
type GrantReply = oneshot::Sender<Result<GrantChange, GrantError>>;
type AdminReply = oneshot::Sender<Result<AdminAct, AdminError>>;

enum Request {
    /// A batch, and its share of `QUEUE_BYTES`, given back once the writer takes it.
    Batch(Batch, Reply, OwnedSemaphorePermit),
    Checkpoint(Box<CheckpointRequest>, CheckpointReply),
    Grant {
        id: String,
        decide: Decide,
        reply: GrantReply,
    },
    Admin {
        token: Option<[u8; 32]>,
        decide: DecideAdmin,
        reply: AdminReply,
    },
    /// An event of the collector's own (an alert, a read of the evidence) to chain.
    Own(Box<Own>, Reply),
    /// Re-read `host`'s chain heads and log from the store before a new stream of it is
    /// welcomed: another collector on the same database may have stored its records since.
    Refresh {
        host: String,
        reply: oneshot::Sender<Result<(), IngestError>>,
    },
    /// Retention: prune `host`'s log of what is older than the cutoff.
    Prune {
        host: String,
        cutoff_unix_nano: u64,
        reply: Reply,
    },
}

/// An answer owed once the group it belongs to is committed (or has failed).
enum Outcome {
    Seq(Reply, Result<u64, IngestError>),
    Checkpoint(CheckpointReply, Result<CheckpointAck, IngestError>),
    Grant(GrantReply, Result<GrantChange, GrantError>),
    Admin(AdminReply, Result<AdminAct, AdminError>),
}

impl Outcome {
    /// Sends the answer; when the commit failed, the failure instead.
    fn send(self, failure: Option<&StoreError>) {
        match self {
            Self::Seq(reply, result) => {
                let _ = reply.send(failure.map_or(result, |f| Err(f.clone().into())));
            }
            Self::Checkpoint(reply, result) => {
                let _ = reply.send(failure.map_or(result, |f| Err(f.clone().into())));
            }
            Self::Grant(reply, result) => {
                let _ = reply.send(failure.map_or(result, |f| Err(f.clone().into())));
            }
            Self::Admin(reply, result) => {
                let _ = reply.send(failure.map_or(result, |f| Err(f.clone().into())));
            }
        }
    }
}

/// A handle on the writer, for ingest streams and the grants service.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Request>,
    /// `QUEUE_BYTES`, less the bytes of the batches queued.
    queued_bytes: Arc<Semaphore>,
}

/// A request in the writer's queue: resolves once it is durable, or refused.
pub(crate) struct Pending(oneshot::Receiver<Result<u64, IngestError>>);

impl Pending {
    /// The seq to acknowledge (for a checkpoint, its size).
    pub async fn wait(self) -> Result<u64, IngestError> {
        self.0.await.map_err(|_| IngestError::Unavailable)?
    }
}

/// A checkpoint in the writer's queue: resolves once the witness decided and, when it
/// cosigned, once the cosigned note is durable.
pub(crate) struct PendingCheckpoint(oneshot::Receiver<Result<CheckpointAck, IngestError>>);

impl PendingCheckpoint {
    pub async fn wait(self) -> Result<CheckpointAck, IngestError> {
        self.0.await.map_err(|_| IngestError::Unavailable)?
    }
}

impl WriterHandle {
    /// Queues a batch; waits only while the queue is full.
    pub async fn append(&self, batch: Batch) -> Result<Pending, IngestError> {
        let bytes: usize = batch.records.iter().map(Record::memory).sum();
        // At most the whole budget, so that no batch waits for ever.
        let bytes = u32::try_from(bytes.min(QUEUE_BYTES)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.queued_bytes)
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| IngestError::Unavailable)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Batch(batch, reply, permit))
            .await
            .map_err(|_| IngestError::Unavailable)?;
        Ok(Pending(rx))
    }

    /// Queues a host's checkpoint for the witness's decision; waits only while the queue is
    /// full.
    pub async fn checkpoint(
        &self,
        checkpoint: CheckpointRequest,
    ) -> Result<PendingCheckpoint, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Checkpoint(Box::new(checkpoint), reply))
            .await
            .map_err(|_| IngestError::Unavailable)?;
        Ok(PendingCheckpoint(rx))
    }

    /// Changes grant `id` as `decide` says, and waits until the grant and its `GrantChange`
    /// record are durable; returns that record. When another collector of the store decided
    /// something meanwhile, nothing was stored, and the change is decided again.
    pub async fn change_grant(
        &self,
        id: String,
        decide: Decide,
    ) -> Result<GrantChange, GrantError> {
        self.decided(
            |reply| Request::Grant {
                id: id.clone(),
                decide: Arc::clone(&decide),
                reply,
            },
            |e| matches!(e, GrantError::Store(e) if e.is_moved()),
            || GrantError::Unavailable,
        )
        .await
    }

    /// Sends the request `ask` makes around its reply channel and waits for the reply. While
    /// the reply is that another collector of the store decided something first (`moved`:
    /// nothing was stored), asks again, up to `DECIDE_TRIES` in all.
    async fn decided<T, E>(
        &self,
        ask: impl Fn(oneshot::Sender<Result<T, E>>) -> Request,
        moved: impl Fn(&E) -> bool,
        unavailable: impl Fn() -> E,
    ) -> Result<T, E> {
        let mut tries = 1;
        loop {
            let (reply, rx) = oneshot::channel();
            self.tx.send(ask(reply)).await.map_err(|_| unavailable())?;
            match rx.await.map_err(|_| unavailable())? {
                Err(e) if moved(&e) && tries < DECIDE_TRIES => tries += 1,
                result => return result,
            }
        }
    }
}

impl WriterHandle {
    /// Prunes `host`'s log of the records older than `cutoff_unix_nano` (docs/evidence.md,
    /// "Retention"), and waits until it is durable; returns the log's first kept leaf.
    pub async fn prune(&self, host: String, cutoff_unix_nano: u64) -> Result<u64, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Prune {
                host,
                cutoff_unix_nano,
                reply,
            })
            .await
            .map_err(|_| IngestError::Unavailable)?;
        rx.await.map_err(|_| IngestError::Unavailable)?
    }

    /// Makes the writer take `host`'s chain heads and log from the store (after every
    /// commit queued before), so that what a new stream of the host is welcomed with is what
    /// the writer judges its batches against, whichever collector stored them.
    pub async fn refresh(&self, host: String) -> Result<(), IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Refresh { host, reply })
            .await
            .map_err(|_| IngestError::Unavailable)?;
        rx.await.map_err(|_| IngestError::Unavailable)?
    }

    /// Chains an event of the collector's own, and waits until it is durable.
    pub async fn record(&self, own: Own) -> Result<(), IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Own(Box::new(own), reply))
            .await
            .map_err(|_| IngestError::Unavailable)?;
        rx.await.map_err(|_| IngestError::Unavailable)?.map(|_| ())
    }

    /// Applies an administrative change as `decide` says (given the join token of hash
    /// `token` as it stands), and waits until it and its act are durable. Decided again, as
    /// a grant change is, when another collector's decision came first.
    pub async fn admin(
        &self,
        token: Option<[u8; 32]>,
        decide: DecideAdmin,
    ) -> Result<AdminAct, AdminError> {
        self.decided(
            |reply| Request::Admin {
                token,
                decide: Arc::clone(&decide),
                reply,
            },
            |e| matches!(e, AdminError::Store(e) if e.is_moved()),
            || AdminError::Unavailable,
        )
        .await
    }
}

/// Starts the writer on the blocking pool. `live` is marked after each commit;
/// `grants_changed` after each commit that changed a grant.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    witness: Option<Arc<Witness>>,
    live: watch::Sender<()>,
    grants_changed: watch::Sender<()>,
) -> Result<WriterHandle, StoreError> {
    let heads = store
        .chains()?
        .into_iter()
        .map(|c| (c.chain_id.clone(), c))
        .collect();
    let logs = store
        .logs()?
        .iter()
        .map(|row| Ok((row.host.clone(), HostLog::from_row(row)?)))
        .collect::<Result<_, StoreError>>()?;
    // Without a witness, the one chain collectors shared before each had its own.
    let own_id = witness
        .as_ref()
        .map_or_else(|| COLLECTOR_HOST.to_owned(), |w| w.own_chain());
    let own = crate::witness::own_log(store.as_ref(), &own_id, u64::MAX)?;
    // A kept checkpoint the database does not hold is evidence: it is never overwritten.
    let rolled_back = match &witness {
        Some(witness) => {
            witness.set_shared_checkpoint_aside(store.as_ref())?;
            witness.own_log_disagreement(store.as_ref())?
        }
        None => None,
    };
    let own_frozen = rolled_back
        .as_ref()
        .is_some_and(|(chain, _)| *chain == own_id);
    // A collector new to the store says so in its chain, with its witness
    // certificate; one that has said so before does not again.
    let announce = match &witness {
        Some(witness) => !crate::verify::OwnRecords::read(store.as_ref())?
            .witnesses
            .iter()
            .any(|(_, pem)| *pem == witness.cert_pem),
        None => false,
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = Writer {
        announce,
        store,
        witness,
        heads,
        logs,
        own_id,
        own,
        own_signed: None,
        rolled_back,
        own_frozen,
        copies_told: HashSet::new(),
        rx,
        live,
        grants_changed,
    };
    tokio::task::spawn_blocking(move || writer.run());
    Ok(WriterHandle {
        tx,
        queued_bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
    })
}

struct Writer {
    store: Arc<dyn Store>,
    /// `None` without TLS: no checkpoint is cosigned.
    witness: Option<Arc<Witness>>,
    /// Every chain's committed head.
    heads: HashMap<String, ChainState>,
    /// Every host's committed log.
    logs: HashMap<String, HostLog>,
    /// The id of the collector's own chain (`verifier::collector_chain`).
    own_id: String,
    /// The collector's own log: its chain's committed record hashes.
    own: CompactRange,
    /// When its checkpoint was last signed, and its size then.
    own_signed: Option<(std::time::Instant, u64)>,
    /// Which collector chain a kept checkpoint disagrees with, and why, when one does:
    /// alerted once the writer runs.
    rolled_back: Option<(String, String)>,
    /// Whether the checkpoint kept of the collector's own log is the one that disagrees:
    /// it is then never overwritten.
    own_frozen: bool,
    /// Whether the collector's chain holds no `COLLECTOR_STARTED` record of this
    /// collector's witness certificate yet: it chains one before anything else.
    announce: bool,
    /// Chains refused as a copy's (`check_lineage`) whose alert is committed: a copy retries
    /// every few seconds, and its alert is chained once per run of the collector, not at
    /// every retry.
    copies_told: HashSet<String>,
    rx: mpsc::Receiver<Request>,
    live: watch::Sender<()>,
    grants_changed: watch::Sender<()>,
}

/// One group commit in the making.
#[derive(Default)]
struct Group {
    commit: Commit,
    /// Heads as they will be once `commit` is durable.
    heads: HashMap<String, ChainState>,
    /// Hosts' logs as they will be once `commit` is durable.
    logs: HashMap<String, HostLog>,
    replies: Vec<Outcome>,
    records: usize,
    /// Chains refused as a copy's whose alert this group chains.
    copies_told: Vec<String>,
    /// The store's count of decisions, read before the group's first decision
    /// (`Commit::decisions`).
    made: Option<u64>,
    /// Decisions the group numbered: its grant changes (`GrantChange::decision`).
    decided: u64,
    /// Every event the group chains into the collector's chain, in order: chained again on
    /// the fresh head when only that head was moved by another collector of the same name.
    chained: Vec<Own>,
    /// The collector's own events asked for alone (`Request::Own`), and who waits for each:
    /// chained again on the fresh head when the group fails because another collector
    /// moved that head.
    owns: Vec<(Own, Reply)>,
}

/// An event the collector chains into its own chain, and the columns it is found by.
#[derive(Clone, Debug)]
pub(crate) struct Own {
    kind: Kind,
    host: String,
    identity_kind: i32,
    identity_name: String,
    body: Body,
}

impl Own {
    /// An alert about `host` (empty: none in particular).
    pub(crate) fn alert(host: &str, body: Body) -> Self {
        Self {
            kind: Kind::Alert,
            host: if host.is_empty() {
                COLLECTOR_HOST.into()
            } else {
                host.into()
            },
            identity_kind: 0,
            identity_name: String::new(),
            body,
        }
    }

    /// The collector's first start on this store: its witness certificate, under its name,
    /// so that verify trusts what it cosigns through any collector of the store.
    fn started(witness: &Witness) -> Self {
        Self {
            kind: Kind::Admin,
            host: COLLECTOR_HOST.into(),
            identity_kind: 0,
            identity_name: witness.name.clone(),
            body: Body::Admin(AdminAct {
                action: verifier::COLLECTOR_STARTED.into(),
                host: String::new(),
                actor: format!("witness {}", witness.name),
                detail: witness.cert_pem.clone(),
            }),
        }
    }

    /// A read of the evidence by the operator `actor`: found by their name.
    pub(crate) fn access(actor: &str, body: Body) -> Self {
        Self {
            kind: Kind::Access,
            host: COLLECTOR_HOST.into(),
            identity_kind: 0,
            identity_name: actor.into(),
            body,
        }
    }
}

/// Whether `commit` holds a change decided against what the store held (a grant, a
/// token's use, a revocation, a hold, a prune). The store's count of decisions serializes
/// those between collectors (`Commit::decisions`), so when another collector moved it first
/// they are decided again, by their callers, never committed as they were.
fn decided(commit: &Commit) -> bool {
    !(commit.grants.is_empty()
        && commit.tokens.is_empty()
        && commit.revoked_hosts.is_empty()
        && commit.holds.is_empty()
        && commit.prunes.is_empty())
}

/// A request that must wait for the group before it to be committed: it reads records that
/// are not yet in the store.
struct Later(Request);

impl Writer {
    fn run(mut self) {
        if let Some((chain_id, why)) = self.rolled_back.take() {
            tracing::error!(chain = %chain_id, "{why}; the kept checkpoint is left as it is");
            let seq = self.heads.get(&chain_id).map_or(0, |h| h.next_seq);
            let mut group = Group::default();
            self.chain_own(
                &mut group,
                Own::alert(
                    "",
                    Body::Alert(Alert {
                        kind: "store_rollback".into(),
                        host: String::new(),
                        chain_id,
                        seq,
                        message: why,
                        hole: None,
                    }),
                ),
            );
            self.flush(group);
        }
        if let Some(witness) = self.witness.clone().filter(|_| self.announce) {
            let mut group = Group::default();
            self.chain_own(&mut group, Own::started(&witness));
            self.flush(group);
        }
        let mut pending = None;
        while let Some(first) = pending.take().or_else(|| self.rx.blocking_recv()) {
            let mut group = Group::default();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                if let Err(Later(request)) = self.apply(&mut group, request) {
                    pending = Some(request);
                    break;
                }
                if group.records < GROUP_RECORDS {
                    next = self.rx.try_recv().ok();
                }
            }
            self.flush(group);
        }
        tracing::debug!("writer stopped: every ingest stream has closed");
    }

    /// Commits the group and answers everyone in it. The collector's own events asked for
    /// alone are chained again and committed once more when the group failed: another
    /// collector on the same database may have moved the collector's chain first.
    fn flush(&mut self, mut group: Group) {
        let owns = std::mem::take(&mut group.owns);
        let Err(error) = self.commit(group) else {
            for (_, reply) in owns {
                let _ = reply.send(Ok(0));
            }
            return;
        };
        let retried = if owns.is_empty() || matches!(error, StoreError::Full(_)) {
            Err(error)
        } else {
            let mut again = Group::default();
            for (own, _) in &owns {
                self.chain_own(&mut again, own.clone());
            }
            self.commit(again)
        };
        for (_, reply) in owns {
            let _ = reply.send(retried.clone().map(|()| 0).map_err(IngestError::from));
        }
    }

    fn commit(&mut self, mut group: Group) -> Result<(), StoreError> {
        group.commit.logs = group.logs.iter().map(|(h, l)| l.row(h)).collect();
        if decided(&group.commit) {
            // Every decision read the count first (`decisions_read`). Were one not to, 0 is
            // still safe: the commit fails unless no collector has decided anything yet.
            let made = group.made.unwrap_or(0);
            group.commit.decisions = Some(Decisions {
                made,
                after: made + group.decided.max(1),
            });
        }
        if group.commit.is_empty() {
            for outcome in group.replies {
                outcome.send(None);
            }
            return Ok(());
        }
        let mut result = self.store.commit(&group.commit);
        for _ in 0..RECHAIN_TRIES {
            let moved_own =
                matches!(&result, Err(e) if e.moved_chain() == Some(self.own_id.as_str()));
            if !moved_own || decided(&group.commit) || !self.rechain_own(&mut group) {
                break;
            }
            result = self.store.commit(&group.commit);
        }
        match result {
            Ok(()) => {
                self.heads.extend(group.heads);
                self.logs.extend(group.logs);
                self.copies_told.extend(group.copies_told);
                for append in group
                    .commit
                    .appends
                    .iter()
                    .filter(|a| a.chain_id == self.own_id)
                {
                    for r in &append.records {
                        let _ = self.own.append(tlog::leaf_hash(&r.hash));
                    }
                }
                self.sign_own();
                // Before the replies: once an operator's change returns, every agent stream
                // has been told to send a fresh view.
                if !group.commit.grants.is_empty() {
                    self.grants_changed.send_replace(());
                }
                for outcome in group.replies {
                    outcome.send(None);
                }
                self.live.send_replace(());
                Ok(())
            }
            Err(e) => {
                if e.is_moved() {
                    tracing::warn!(error = %e, "another collector on this database stored first; nothing of this group is acknowledged, and the store is read again");
                } else {
                    tracing::error!(error = %e, "commit failed; nothing of this group is acknowledged");
                }
                for outcome in group.replies {
                    outcome.send(Some(&e));
                }
                // What the writer holds of the chains and logs the group touched may be
                // behind the store, when another collector wrote them first: read them again,
                // so that the next commit is judged against what is stored.
                if !matches!(e, StoreError::Full(_))
                    && let Err(again) = self.reload(&group.commit)
                {
                    tracing::error!(error = %again, "cannot read the store's heads again");
                }
                Err(e)
            }
        }
    }

    /// Chains the collector's own records of `group` again, on its chain's head as the
    /// store has it now: another collector of the same witness name moved it first, and
    /// nothing else in the group depended on it. False when the store cannot be read.
    fn rechain_own(&mut self, group: &mut Group) -> bool {
        let fresh = self.refresh(COLLECTOR_HOST).and_then(|()| {
            crate::witness::extend_own_log(
                self.store.as_ref(),
                &self.own_id,
                &mut self.own,
                u64::MAX,
            )
        });
        if let Err(e) = fresh {
            tracing::error!(error = %e, "cannot read the collector's chain again");
            return false;
        }
        tracing::info!(
            chain = %self.own_id,
            "another collector of this name moved its chain first; this group's records of it are chained again on its head"
        );
        let own_id = &self.own_id;
        group.commit.appends.retain(|a| a.chain_id != *own_id);
        group.heads.remove(own_id);
        for own in std::mem::take(&mut group.chained) {
            self.chain_own(group, own);
        }
        true
    }

    /// Takes from the store the heads and logs of every host `commit` touched, and the
    /// collector's own log past what the writer holds of it.
    fn reload(&mut self, commit: &Commit) -> Result<(), StoreError> {
        let hosts: HashSet<String> = commit
            .appends
            .iter()
            .map(|a| a.chain_host.clone())
            .chain(commit.logs.iter().map(|l| l.host.clone()))
            .collect();
        for host in hosts {
            self.refresh(&host)?;
        }
        crate::witness::extend_own_log(self.store.as_ref(), &self.own_id, &mut self.own, u64::MAX)
    }

    /// Takes `host`'s chain heads and log from the store: the collectors' chains when
    /// `host` is `COLLECTOR_HOST`.
    fn refresh(&mut self, host: &str) -> Result<(), StoreError> {
        for chain in self.store.host_chains(host)? {
            self.heads.insert(chain.chain_id.clone(), chain);
        }
        match self.store.log(host)? {
            Some(row) => {
                self.logs.insert(host.to_owned(), HostLog::from_row(&row)?);
            }
            None => {
                self.logs.remove(host);
            }
        }
        Ok(())
    }

    fn head(&self, group: &Group, chain_id: &str) -> Option<ChainState> {
        group
            .heads
            .get(chain_id)
            .or_else(|| self.heads.get(chain_id))
            .cloned()
    }

    /// Whether checking `seq` of `chain_id` against the store would need records this group
    /// has not committed yet.
    fn needs_commit(&self, group: &Group, chain_id: &str, seq: u64) -> bool {
        group.heads.contains_key(chain_id)
            && self.head(group, chain_id).is_some_and(|h| seq < h.next_seq)
    }

    fn apply(&mut self, group: &mut Group, request: Request) -> Result<(), Later> {
        match request {
            Request::Batch(batch, reply, queued) => {
                let first = batch.records.first().map_or(0, |r| r.seq);
                if self.needs_commit(group, &batch.chain_id, first) {
                    return Err(Later(Request::Batch(batch, reply, queued)));
                }
                drop(queued);
                let result = self.append(group, batch);
                group.replies.push(Outcome::Seq(reply, result));
            }
            Request::Checkpoint(checkpoint, reply) => {
                // A root below the log's size is read from the store, so it must hold every
                // leaf this group adds first.
                let size = checkpoint.checkpoint.checkpoint.size();
                if group
                    .logs
                    .get(&checkpoint.host)
                    .is_some_and(|l| size < l.range.size())
                {
                    return Err(Later(Request::Checkpoint(checkpoint, reply)));
                }
                let result = self.checkpoint(group, *checkpoint);
                group.replies.push(Outcome::Checkpoint(reply, result));
            }
            Request::Grant { id, decide, reply } => {
                let result = self.change_grant(group, &id, &decide);
                group.replies.push(Outcome::Grant(reply, result));
            }
            Request::Admin {
                token,
                decide,
                reply,
            } => {
                let result = self.change_admin(group, token, &decide);
                group.replies.push(Outcome::Admin(reply, result));
            }
            Request::Own(own, reply) => {
                self.chain_own(group, (*own).clone());
                group.owns.push((*own, reply));
            }
            Request::Refresh { host, reply } => {
                if group.logs.contains_key(&host)
                    || group.commit.appends.iter().any(|a| a.chain_host == host)
                {
                    return Err(Later(Request::Refresh { host, reply }));
                }
                let _ = reply.send(self.refresh(&host).map_err(IngestError::from));
            }
            Request::Prune {
                host,
                cutoff_unix_nano,
                reply,
            } => {
                // It reads the leaves it deletes from the store, and one prune per group
                // keeps each reading the last one's result.
                if group.logs.contains_key(&host) || !group.commit.prunes.is_empty() {
                    return Err(Later(Request::Prune {
                        host,
                        cutoff_unix_nano,
                        reply,
                    }));
                }
                let result = self.prune(group, &host, cutoff_unix_nano);
                group.replies.push(Outcome::Seq(reply, result));
            }
        }
        Ok(())
    }

    fn stored_hash(&self, chain_id: &str, seq: u64) -> Result<Vec<u8>, IngestError> {
        self.store.hash_at(chain_id, seq)?.ok_or_else(|| {
            IngestError::Internal(format!("stored chain {chain_id} lacks seq {seq}"))
        })
    }

    fn append(&self, group: &mut Group, mut batch: Batch) -> Result<u64, IngestError> {
        let (first, last) = match (batch.records.first(), batch.records.last()) {
            (Some(first), Some(last)) => (first.seq, last.seq),
            // A hole with no anchor names no record: it starts at the stored head.
            _ if batch.lost.is_some() => {
                let next = self.head(group, &batch.chain_id).map_or(0, |h| h.next_seq);
                (next, next.saturating_sub(1))
            }
            _ => return Err(IngestError::Invalid("empty batch".into())),
        };
        let mut head = self.head(group, &batch.chain_id).unwrap_or(ChainState {
            chain_id: batch.chain_id.clone(),
            host: batch.host.clone(),
            next_seq: 0,
            head_hash: proto::chain::GENESIS,
        });
        if head.host != batch.host {
            return Err(IngestError::Invalid(format!(
                "chain {} belongs to host {:?}, not {:?}",
                batch.chain_id, head.host, batch.host
            )));
        }
        let overlap = usize::try_from(head.next_seq.min(last + 1).saturating_sub(first))
            .unwrap_or(usize::MAX);
        if let Some(lost) = &batch.lost
            && (batch.records.is_empty() || first > head.next_seq)
        {
            // The anchor's hash stands as the agent sent it: the record it would link to is
            // lost. The hole chained here binds its bytes.
            self.hole(group, &batch, &head, lost);
        } else if first > head.next_seq {
            return Err(IngestError::Gap(format!(
                "seq {first} does not continue chain {}: the collector holds seq 0 to {} (next_seq {})",
                batch.chain_id,
                head.next_seq.saturating_sub(1),
                head.next_seq
            )));
        } else if overlap > 0 {
            self.check_resend(group, &batch, overlap)?;
        } else {
            if first == 0 {
                self.check_lineage(group, &batch)?;
            }
            let r = &batch.records[0];
            if chain_hash(&batch.chain_id, r.seq, &head.head_hash, &r.event) != r.hash {
                return Err(IngestError::Invalid(format!(
                    "the hash of seq {} of chain {} does not recompute over the stored head",
                    r.seq, batch.chain_id
                )));
            }
        }
        let mut records: Vec<Record> = batch.records.drain(overlap..).collect();
        if !records.is_empty() {
            self.add_leaves(group, &batch.host, &mut records)?;
        }
        if let Some(new_last) = records.last() {
            head.next_seq = new_last.seq + 1;
            head.head_hash = new_last.hash;
            group.records += records.len();
            group.heads.insert(batch.chain_id.clone(), head);
            group.commit.appends.push(Append {
                chain_id: batch.chain_id,
                chain_host: batch.host,
                records,
            });
        }
        Ok(last)
    }

    /// Chains a `spool_hole` alert: the records of the batch's chain from the stored head up
    /// to its anchor (its first record), or all of them from the head on when it has none,
    /// were lost in the agent's spool before they were shipped.
    fn hole(&self, group: &mut Group, batch: &Batch, head: &ChainState, lost: &Lost) {
        let Lost {
            cause,
            skipped_bytes,
        } = *lost;
        let first_lost = head.next_seq;
        let (seq, which, hole) = match batch.records.first() {
            Some(anchor) => (
                anchor.seq,
                format!(
                    "records {first_lost} to {} are lost; shipping resumed at seq {}, which \
                     cannot be linked to the record before it",
                    anchor.seq - 1,
                    anchor.seq
                ),
                Hole {
                    first_lost,
                    anchor_hash: anchor.hash.to_vec(),
                    anchor_event_sha256: Sha256::digest(&anchor.event).to_vec(),
                    skipped_bytes,
                    cause: cause.into(),
                },
            ),
            None => (
                0,
                format!("its records from seq {first_lost} on are lost"),
                Hole {
                    first_lost,
                    skipped_bytes,
                    cause: cause.into(),
                    ..Hole::default()
                },
            ),
        };
        let why = if cause == "corrupt" {
            format!("its agent skipped {skipped_bytes} spool bytes whose frames did not check")
        } else {
            "its agent's spool no longer holds them, and neither does this collector, which \
             acknowledged them before (a database restored from a backup?)"
                .to_owned()
        };
        let message = format!(
            "host {:?}, chain {}: {which}: {why}",
            batch.host, batch.chain_id
        );
        tracing::error!(host = %batch.host, chain = %batch.chain_id, first_lost, "{message}");
        self.chain_own(
            group,
            Own::alert(
                &batch.host,
                Body::Alert(Alert {
                    kind: "spool_hole".into(),
                    host: batch.host.clone(),
                    chain_id: batch.chain_id.clone(),
                    seq,
                    message,
                    hole: Some(hole),
                }),
            ),
        );
    }

    /// A new chain's `ChainStart` names the record of the host's spool it started after. A
    /// second chain naming the same record means two machines run from copies of one spool
    /// (a cloned disk or VM image, enrolled key and all): the first lineage stored goes on,
    /// and the later one is refused before anything of it joins the host's log, where its
    /// records would contradict every checkpoint the first one signs. An alert names both,
    /// once per collector run for each refused chain.
    fn check_lineage(&self, group: &mut Group, batch: &Batch) -> Result<(), IngestError> {
        let named = |bytes: &[u8]| match Event::decode(bytes).map(|e| e.body) {
            Ok(Some(Body::ChainStart(start))) if !start.previous_chain_id.is_empty() => {
                Some((start.previous_chain_id, start.previous_seq))
            }
            _ => None,
        };
        let Some(before) = batch.records.first().and_then(|r| named(&r.event)) else {
            return Ok(());
        };
        let pending = group
            .commit
            .appends
            .iter()
            .filter(|a| a.chain_host == batch.host)
            .filter_map(|a| {
                let r = a.records.first().filter(|r| r.seq == 0)?;
                Some((a.chain_id.clone(), r.event.to_vec()))
            });
        let stored = self.store.chain_starts(&batch.host)?;
        let Some(other) = stored
            .into_iter()
            .chain(pending)
            .find(|(id, event)| *id != batch.chain_id && named(event).as_ref() == Some(&before))
            .map(|(id, _)| id)
        else {
            return Ok(());
        };
        let message = format!(
            "host {:?}: chain {} names seq {} of chain {} as the record before it, as chain \
             {other} already does: two machines run from copies of one spool (a cloned disk \
             or VM). Nothing of chain {} is stored; enroll the copy as a new host (docs/pki.md)",
            batch.host, batch.chain_id, before.1, before.0, batch.chain_id
        );
        let told = self.copies_told.contains(&batch.chain_id)
            || group.copies_told.contains(&batch.chain_id);
        if !told {
            tracing::error!(host = %batch.host, chain = %batch.chain_id, other = %other, "{message}");
            self.chain_own(
                group,
                Own::alert(
                    &batch.host,
                    Body::Alert(Alert {
                        kind: "host_cloned".into(),
                        host: batch.host.clone(),
                        chain_id: batch.chain_id.clone(),
                        seq: 0,
                        message: message.clone(),
                        hole: None,
                    }),
                ),
            );
            group.copies_told.push(batch.chain_id.clone());
        }
        Err(IngestError::Fork(message))
    }

    /// The first `overlap` records are already stored. The batch's hashes link to each other,
    /// so when the last overlapping one matches the store, all of them do.
    fn check_resend(
        &self,
        group: &mut Group,
        batch: &Batch,
        overlap: usize,
    ) -> Result<(), IngestError> {
        let chain_id = &batch.chain_id;
        let differs = |r: &Record| -> Result<Option<Vec<u8>>, IngestError> {
            let stored = self.stored_hash(chain_id, r.seq)?;
            Ok((stored != r.hash).then_some(stored))
        };
        if differs(&batch.records[overlap - 1])?.is_none() {
            return Ok(());
        }
        for r in &batch.records[..overlap] {
            if let Some(stored_hash) = differs(r)? {
                let message = format!(
                    "fork: host {:?} resent seq {} of chain {chain_id} with a different hash; the stored chain is kept",
                    batch.host, r.seq
                );
                tracing::error!(host = %batch.host, chain = %chain_id, seq = r.seq, "{message}");
                group.commit.conflicts.push(Conflict {
                    chain_id: chain_id.clone(),
                    seq: r.seq,
                    event: r.event.clone(),
                    hash: r.hash.to_vec(),
                    stored_hash,
                    received_unix_nano: now_unix_nano(),
                });
                self.chain_own(
                    group,
                    Own::alert(
                        &batch.host,
                        Body::Alert(Alert {
                            kind: "fork".into(),
                            host: batch.host.clone(),
                            chain_id: chain_id.clone(),
                            seq: r.seq,
                            message: message.clone(),
                            hole: None,
                        }),
                    ),
                );
                return Err(IngestError::Fork(message));
            }
        }
        Err(IngestError::Internal(
            "resend differs from the store, yet no record does".into(),
        ))
    }

    /// The grant as committed, or as a change earlier in this group left it.
    fn current_grant(&self, group: &Group, id: &str) -> Result<Option<Grant>, StoreError> {
        match group.commit.grants.iter().rev().find(|g| g.id == id) {
            Some(g) => Ok(Some(g.clone())),
            None => self.store.grant(id),
        }
    }

    /// Applies a grant change to the group: the grant as it becomes, and its `GrantChange`
    /// record in the collector's chain.
    fn change_grant(
        &self,
        group: &mut Group,
        id: &str,
        decide: &Decide,
    ) -> Result<GrantChange, GrantError> {
        let made = self.decisions_read(group)?;
        let mut change = decide(self.current_grant(group, id)?, now_unix_nano())?;
        group.decided += 1;
        change.decision = made + group.decided;
        let selector = change
            .grant
            .as_ref()
            .and_then(|g| g.identity.clone())
            .unwrap_or_default();
        tracing::info!(grant = %id, action = %change.action, actor = %change.actor, identity = %selector.name, "grant changed");
        self.chain_own(
            group,
            Own {
                kind: Kind::GrantChange,
                host: COLLECTOR_HOST.into(),
                // So that a search by identity finds the changes to its grants.
                identity_kind: selector.kind,
                identity_name: selector.name,
                body: Body::GrantChange(change.clone()),
            },
        );
        group.commit.grants.extend(change.grant.clone());
        Ok(change)
    }

    /// The join token of `hash` as committed, or as a change earlier in this group left it.
    fn current_token(
        &self,
        group: &Group,
        hash: &[u8; 32],
    ) -> Result<Option<TokenRow>, StoreError> {
        match group.commit.tokens.iter().rev().find(|t| t.hash == *hash) {
            Some(t) => Ok(Some(t.clone())),
            None => self.store.token(hash),
        }
    }

    /// Applies an administrative change to the group, and chains its act.
    fn change_admin(
        &self,
        group: &mut Group,
        token: Option<[u8; 32]>,
        decide: &DecideAdmin,
    ) -> Result<AdminAct, AdminError> {
        self.decisions_read(group)?;
        let current = match token {
            Some(hash) => self.current_token(group, &hash)?,
            None => None,
        };
        let change = decide(current, now_unix_nano())?;
        tracing::info!(action = %change.act.action, host = %change.act.host, actor = %change.act.actor, "administration");
        self.chain_own(
            group,
            Own {
                kind: Kind::Admin,
                host: change.act.host.clone(),
                identity_kind: 0,
                identity_name: change.act.actor.clone(),
                body: Body::Admin(change.act.clone()),
            },
        );
        group.commit.tokens.extend(change.token);
        group.commit.revoked_hosts.extend(change.revoked);
        group.commit.holds.extend(change.hold);
        Ok(change.act)
    }

    /// The store's count of decisions, read once per group, before its first decision reads
    /// what it decides against: its commit then fails if another collector decided anything
    /// since (`Commit::decisions`).
    fn decisions_read(&self, group: &mut Group) -> Result<u64, StoreError> {
        if let Some(made) = group.made {
            return Ok(made);
        }
        let made = self.store.decisions()?;
        group.made = Some(made);
        Ok(made)
    }

    /// Chains an event of the collector's own into its chain, which starts like any other.
    fn chain_own(&self, group: &mut Group, own: Own) {
        group.chained.push(own.clone());
        let mut chain = match self.head(group, &self.own_id) {
            Some(head) => Chain::resume(head.chain_id, head.next_seq, head.head_hash),
            None => Chain::new(self.own_id.clone()),
        };
        let time = now_unix_nano();
        let mut owns = Vec::with_capacity(2);
        if chain.next_seq() == 0 {
            owns.push(Own {
                kind: Kind::ChainStart,
                host: COLLECTOR_HOST.to_owned(),
                identity_kind: 0,
                identity_name: String::new(),
                body: Body::ChainStart(ChainStart {
                    host: COLLECTOR_HOST.into(),
                    ..ChainStart::default()
                }),
            });
        }
        owns.push(own);
        let records = owns
            .into_iter()
            .map(|own| {
                let event = Event {
                    time_unix_nano: time,
                    body: Some(own.body),
                    ..Event::default()
                }
                .encode_to_vec();
                let (seq, hash) = chain.link(&event);
                Record {
                    seq,
                    derived: Derived {
                        identity_kind: own.identity_kind,
                        identity_name: own.identity_name,
                        ..Derived::bare(own.host, time, own.kind)
                    },
                    event: event.into(),
                    hash,
                    log_index: None,
                }
            })
            .collect();
        group.heads.insert(
            self.own_id.clone(),
            ChainState {
                chain_id: self.own_id.clone(),
                host: COLLECTOR_HOST.into(),
                next_seq: chain.next_seq(),
                head_hash: chain.head(),
            },
        );
        group.commit.appends.push(Append {
            chain_id: self.own_id.clone(),
            chain_host: COLLECTOR_HOST.into(),
            records,
        });
    }

    /// Signs a checkpoint of the collector's own log, at most once a second, and keeps it
    /// outside the database (docs/evidence.md, "The collector's log").
    fn sign_own(&mut self) {
        let Some(witness) = &self.witness else {
            return;
        };
        let Some(path) = &witness.own_checkpoint else {
            return;
        };
        if self.own_frozen {
            return;
        }
        let size = self.own.size();
        if self
            .own_signed
            .is_some_and(|(at, signed)| signed == size || at.elapsed() < OWN_EVERY)
        {
            return;
        }
        let signed = witness
            .log_signer()
            .map_err(|e| e.to_string())
            .and_then(|key| {
                let body = tlog::Checkpoint::new(&witness.own_origin(), size, self.own.root())
                    .map_err(|e| e.to_string())?;
                tlog::sign_checkpoint(&key, &body).map_err(|e| e.to_string())
            })
            .and_then(|note| {
                pki::replace_private(path, note.to_text().as_bytes()).map_err(|e| e.to_string())
            });
        match signed {
            Ok(()) => self.own_signed = Some((std::time::Instant::now(), size)),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot keep the collector log's checkpoint");
            }
        }
    }

    /// The host's log as committed, or as this group leaves it.
    fn log(&self, group: &Group, host: &str) -> HostLog {
        group
            .logs
            .get(host)
            .or_else(|| self.logs.get(host))
            .cloned()
            .unwrap_or_default()
    }

    /// Makes `records` the next leaves of `host`'s log, in order.
    fn add_leaves(
        &self,
        group: &mut Group,
        host: &str,
        records: &mut [Record],
    ) -> Result<(), IngestError> {
        let mut log = self.log(group, host);
        for r in records {
            r.log_index = Some(log.range.size());
            log.range
                .append(tlog::leaf_hash(&r.hash))
                .map_err(|e| IngestError::Invalid(format!("host {host}'s log: {e}")))?;
        }
        group.logs.insert(host.to_owned(), log);
        Ok(())
    }

    /// Extends `range`, the compact range of `host`'s first `range.size()` leaves, with the
    /// stored leaves up to `end`, showing `each` every leaf on the way.
    fn extend_from_store(
        &self,
        host: &str,
        mut range: CompactRange,
        end: u64,
        each: &mut dyn FnMut(&crate::store::LeafRow<'_>, [u8; 32]),
    ) -> Result<CompactRange, IngestError> {
        let mut failure = None;
        while range.size() < end && failure.is_none() {
            let before = range.size();
            let want = usize::try_from(end - before)
                .unwrap_or(usize::MAX)
                .min(10_000);
            self.store.log_leaves(host, before, want, &mut |leaf| {
                let hash: Option<[u8; 32]> = leaf.hash.try_into().ok();
                match hash {
                    Some(hash) if leaf.log_index == range.size() => {
                        let _ = range.append(tlog::leaf_hash(&hash));
                        each(&leaf, hash);
                        std::ops::ControlFlow::Continue(())
                    }
                    _ => {
                        failure = Some(range.size());
                        std::ops::ControlFlow::Break(())
                    }
                }
            })?;
            if range.size() == before && failure.is_none() {
                failure = Some(before);
            }
        }
        match failure {
            Some(index) => Err(IngestError::Internal(format!(
                "the store lacks leaf {index} of host {host}'s log"
            ))),
            None => Ok(range),
        }
    }

    /// The compact range of the leaves of `host`'s log that were pruned.
    fn pruned(&self, host: &str) -> Result<CompactRange, IngestError> {
        match self.store.prune(host)? {
            Some(p) => CompactRange::from_bytes(&p.frontier).map_err(|e| {
                IngestError::Internal(format!("the stored prune of host {host}: {e}"))
            }),
            None => Ok(CompactRange::new()),
        }
    }

    /// The root of the first `size` leaves of `host`'s log, from the store.
    fn stored_root(&self, host: &str, size: u64) -> Result<tlog::Hash, IngestError> {
        let pruned = self.pruned(host)?;
        if size < pruned.size() {
            return Err(IngestError::Invalid(format!(
                "a checkpoint of size {size}, but leaves 0 to {} of host {host}'s log are pruned",
                pruned.size()
            )));
        }
        Ok(self
            .extend_from_store(host, pruned, size, &mut |_, _| {})?
            .root())
    }

    /// Deletes the leaves of `host`'s log older than the cutoff, up to the first kept one
    /// and never past the last cosigned checkpoint, by chaining a signed prune record in the
    /// same transaction. Returns the log's first kept leaf.
    fn prune(&self, group: &mut Group, host: &str, cutoff: u64) -> Result<u64, IngestError> {
        let Some(witness) = &self.witness else {
            return Err(IngestError::Invalid(
                "this collector serves without TLS: it keeps no signed logs to prune".into(),
            ));
        };
        self.decisions_read(group)?;
        let log = self.log(group, host);
        let Some(cosigned) = log.cosigned else {
            return Ok(0);
        };
        let pruned = self.pruned(host)?;
        let start = pruned.size();
        let end = self
            .store
            .first_kept(host, start, cutoff)?
            .unwrap_or(log.range.size())
            .min(cosigned.size);
        if end <= start {
            return Ok(start);
        }
        let mut cuts: std::collections::BTreeMap<String, (u64, [u8; 32])> =
            std::collections::BTreeMap::new();
        let range = self.extend_from_store(host, pruned, end, &mut |leaf, hash| {
            cuts.insert(leaf.chain_id.to_owned(), (leaf.seq, hash));
        })?;
        let note = PruneNote {
            log: witness.origin(host),
            end,
            frontier: range.frontier().to_vec(),
            cuts: cuts
                .into_iter()
                .map(|(chain_id, (seq, prev))| Cut {
                    chain_id,
                    first_kept: seq + 1,
                    prev,
                })
                .collect(),
            checkpoint: (cosigned.size, cosigned.root),
        };
        let key = witness
            .log_signer()
            .map_err(|e| IngestError::Internal(format!("the collector's log key: {e}")))?;
        let mut signed = tlog::Note::new(note.to_body())
            .map_err(|e| IngestError::Internal(format!("a prune note: {e}")))?;
        signed
            .sign(&key)
            .map_err(|e| IngestError::Internal(format!("signing a prune note: {e}")))?;
        tracing::info!(
            host,
            end,
            "pruned the log's leaves older than the retention limit"
        );
        self.chain_own(
            group,
            Own {
                kind: Kind::Prune,
                host: host.to_owned(),
                identity_kind: 0,
                identity_name: String::new(),
                body: Body::Prune(proto::v1::Prune {
                    note: signed.to_text(),
                }),
            },
        );
        group.commit.prunes.push(PruneRow {
            host: host.to_owned(),
            end,
            frontier: range.to_bytes(),
        });
        Ok(end)
    }

    /// Chains that the collector cosigned `host`'s log for the first time: the collector's
    /// chain then says which hosts have logs, so a host deleted whole from the store is
    /// still missed by verify.
    fn chain_log_started(&self, group: &mut Group, witness: &Witness, host: &str) {
        self.chain_own(
            group,
            Own {
                kind: Kind::Admin,
                host: host.to_owned(),
                identity_kind: 0,
                identity_name: String::new(),
                body: Body::Admin(AdminAct {
                    action: "log_started".into(),
                    host: host.to_owned(),
                    actor: witness.own_origin(),
                    detail: witness.origin(host),
                }),
            },
        );
    }

    /// The witness's decision on a host's checkpoint (docs/evidence.md, "The collector as
    /// witness"), against the leaves stored for its log.
    fn checkpoint(
        &self,
        group: &mut Group,
        c: CheckpointRequest,
    ) -> Result<CheckpointAck, IngestError> {
        let Some(witness) = &self.witness else {
            return Err(IngestError::Invalid(
                "this collector serves without TLS: it has no witness key and cosigns nothing"
                    .into(),
            ));
        };
        let mut log = self.log(group, &c.host);
        let checkpoint = &c.checkpoint.checkpoint;
        let (size, stored) = (checkpoint.size(), log.range.size());
        if size > stored {
            return Err(IngestError::Gap(format!(
                "a checkpoint of size {size}, but the collector holds {stored} leaves of host {}'s log",
                c.host
            )));
        }
        let recomputed = if size == stored {
            log.range.root()
        } else {
            self.stored_root(&c.host, size)?
        };
        let verdict = tlog::decide(
            log.cosigned.as_ref(),
            c.old_size,
            checkpoint,
            Evidence::Recomputed(recomputed),
        );
        let why = match verdict {
            Verdict::Accept { state } => {
                let time = now_unix_nano() / 1_000_000_000;
                let mut note = c.checkpoint.note.clone();
                tlog::add_cosignature(&mut note, &witness.cosigner, checkpoint, time)
                    .map_err(|e| IngestError::Internal(format!("cannot cosign: {e}")))?;
                let text = note.to_text();
                if log.cosigned.is_none() {
                    self.chain_log_started(group, witness, &c.host);
                }
                log.cosigned = Some(state);
                log.cosigned_note.clone_from(&text);
                group.logs.insert(c.host.clone(), log);
                group.commit.log_checkpoints.push(LogCheckpoint {
                    host: c.host,
                    size,
                    root: state.root,
                    note: text.clone(),
                    cert_pem: c.cert_pem,
                    received_unix_nano: now_unix_nano(),
                });
                return Ok(CheckpointAck {
                    size,
                    cosigned: text,
                    refused: String::new(),
                    cosigned_size: size,
                });
            }
            Verdict::Conflict { current_size } => {
                return Ok(CheckpointAck {
                    size,
                    cosigned: String::new(),
                    refused: format!(
                        "old size {} is not the size last cosigned for this log, {current_size}",
                        c.old_size
                    ),
                    cosigned_size: current_size,
                });
            }
            Verdict::Invalid(tlog::Invalid::RootMismatch { .. }) => format!(
                "host {}'s checkpoint of size {size} has a root its {size} stored leaves do not give",
                c.host
            ),
            Verdict::Fork { .. } => format!(
                "host {} signed a second root for size {size}, which the collector cosigned with another",
                c.host
            ),
            Verdict::Invalid(invalid) => {
                return Err(IngestError::Invalid(format!(
                    "checkpoint refused: {invalid}"
                )));
            }
        };
        Err(self.fork(group, &c, size, &why))
    }

    /// A checkpoint that contradicts the stored log: kept, alerted, refused.
    fn fork(&self, group: &mut Group, c: &CheckpointRequest, size: u64, why: &str) -> IngestError {
        tracing::error!(host = %c.host, size, "{why}");
        group.commit.forks.push(ForkRow {
            host: c.host.clone(),
            size,
            note: c.checkpoint.note.to_text(),
            received_unix_nano: now_unix_nano(),
        });
        self.chain_own(
            group,
            Own::alert(
                &c.host,
                Body::Alert(Alert {
                    kind: "checkpoint_fork".into(),
                    host: c.host.clone(),
                    chain_id: String::new(),
                    seq: size,
                    message: why.to_owned(),
                    hole: None,
                }),
            ),
        );
        IngestError::Fork(format!("{why}; the checkpoint is kept as evidence"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;
    use crate::store::sqlite::Sqlite;

    fn grant_change(action: &str, grant: Grant) -> GrantChange {
        GrantChange {
            action: action.into(),
            grant: Some(grant),
            actor: "test".into(),
            ..GrantChange::default()
        }
    }

    /// Witnesses of one CA, named `names`.
    fn witnesses(dir: &std::path::Path, names: [&str; 2]) -> [Witness; 2] {
        let ca = pki::Ca::init(&dir.join("ca")).unwrap();
        names.map(|name| {
            let issued = ca
                .issue_witness(
                    name,
                    pki::Validity::from_now(std::time::Duration::from_hours(1)),
                )
                .unwrap();
            Witness::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
        })
    }

    /// Two writers on one store, each a collector with a chain of its own.
    fn two_writers(dir: &std::path::Path) -> (Arc<dyn Store>, WriterHandle, WriterHandle) {
        let path = dir.join("c.db");
        let open = || -> Arc<dyn Store> { Arc::new(Sqlite::open(path.to_str().unwrap()).unwrap()) };
        let (store, other) = (open(), open());
        let [mine, theirs] = witnesses(dir, ["a", "b"]);
        let channels = || (watch::channel(()).0, watch::channel(()).0);
        let (live, changed) = channels();
        let writer = spawn(Arc::clone(&store), Some(Arc::new(mine)), live, changed).unwrap();
        let (live, changed) = channels();
        let another = spawn(other, Some(Arc::new(theirs)), live, changed).unwrap();
        (store, writer, another)
    }

    fn create(id: String) -> Decide {
        Arc::new(move |_, _| {
            Ok(grant_change(
                "create",
                Grant {
                    id: id.clone(),
                    expires_at_unix_nano: u64::MAX >> 1,
                    ..Grant::default()
                },
            ))
        })
    }

    /// Counts its calls; the first `races` times, `other` first decides a grant of its own
    /// (`theirs-LABEL-N`). Called from a decision, that is after the writer read the store
    /// and before it commits.
    fn racer(
        other: &WriterHandle,
        label: &'static str,
        races: usize,
    ) -> (impl Fn() + Send + Sync + 'static, Arc<AtomicUsize>) {
        let (other, asked) = (other.clone(), Arc::new(AtomicUsize::new(0)));
        let calls = Arc::clone(&asked);
        let race = move || {
            let n = calls.fetch_add(1, SeqCst);
            if n < races {
                let id = format!("theirs-{label}-{n}");
                tokio::runtime::Handle::current()
                    .block_on(other.change_grant(id.clone(), create(id)))
                    .unwrap();
            }
        };
        (race, asked)
    }

    /// Batches of `tty` events of `bytes` bytes of data each, continuing `chain` (a new one
    /// begins with its `ChainStart`), checked as ingest checks them.
    fn tty_batch(chain: &mut Chain, events: usize, bytes: usize) -> Batch {
        let tty = (0..events).map(|n| Event {
            time_unix_nano: 2 + n as u64,
            body: Some(Body::Tty(proto::v1::Tty {
                data: vec![b'x'; bytes].into(),
                ..proto::v1::Tty::default()
            })),
            ..Event::default()
        });
        crate::testing::batch(chain, "h", tty)
    }

    /// The queue's bytes are given back as the writer takes each batch, and a batch larger
    /// than all of them is still taken: appends of 2 and then 70 MiB, each acknowledged
    /// before the next, would otherwise wait for ever.
    #[tokio::test]
    async fn the_queue_gives_its_bytes_back_and_takes_a_batch_larger_than_them() {
        const MIB: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(Sqlite::open(dir.path().join("c.db").to_str().unwrap()).unwrap());
        let writer = spawn(store, None, watch::channel(()).0, watch::channel(()).0).unwrap();
        let mut chain = Chain::new("h:boot:1".into());
        let mut acked = 0;
        for events in [2, 70] {
            let batch = tty_batch(&mut chain, events, MIB - 64);
            let pending =
                tokio::time::timeout(std::time::Duration::from_secs(20), writer.append(batch))
                    .await
                    .expect("the writer takes the batch")
                    .unwrap();
            acked = pending.wait().await.unwrap();
            assert_eq!(acked + 1, chain.next_seq());
        }
        assert_eq!(acked, 72);
        assert_eq!(writer.queued_bytes.available_permits(), QUEUE_BYTES);
    }

    /// Two collectors on one store, each with its own chain. A decision is refused when the
    /// other collector committed a decision of its own (a change to another grant) between
    /// its read of the store and its commit, and it stores nothing, though the chain it would
    /// extend did not move. It is then decided again against the store as it is: stored,
    /// after the other's, once the other lets it; refused after `DECIDE_TRIES` otherwise.
    /// Verify replays both chains' changes in the order of their decisions.
    #[tokio::test]
    async fn decisions_of_two_collectors_are_made_one_after_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, another) = two_writers(dir.path());
        let (always, asked) = racer(&another, "always", usize::MAX);
        let mine = create("g-1".into());
        let refused = writer
            .change_grant(
                "g-1".into(),
                Arc::new(move |current, now| {
                    always();
                    mine(current, now)
                }),
            )
            .await;
        assert!(
            matches!(&refused, Err(GrantError::Store(e)) if e.is_moved()),
            "{refused:?}"
        );
        assert_eq!(asked.load(SeqCst), DECIDE_TRIES);
        assert_eq!(store.grant("g-1").unwrap(), None);
        let last = format!("theirs-always-{}", DECIDE_TRIES - 1);
        assert!(store.grant(&last).unwrap().is_some());

        let (once, asked) = racer(&another, "once", 1);
        let mine = create("g-1".into());
        let mine = writer
            .change_grant(
                "g-1".into(),
                Arc::new(move |current, now| {
                    once();
                    mine(current, now)
                }),
            )
            .await
            .unwrap();
        assert_eq!(asked.load(SeqCst), 2);
        assert_eq!(mine.decision, DECIDE_TRIES as u64 + 2, "after the other's");
        let mut chains: Vec<String> = store
            .host_chains(COLLECTOR_HOST)
            .unwrap()
            .into_iter()
            .map(|c| c.chain_id)
            .collect();
        chains.sort();
        assert_eq!(chains, ["collector/a", "collector/b"]);
        let report = crate::verify::verify_all(store.as_ref(), None, "", "").unwrap();
        assert!(report.ok(), "{report:?}");
    }

    /// An administrative change (here a revocation) that another collector's decision
    /// overtook is decided again, as a grant change is, and stored.
    #[tokio::test]
    async fn an_administrative_change_overtaken_is_decided_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, another) = two_writers(dir.path());
        let (once, asked) = racer(&another, "once", 1);
        let revoked = writer
            .admin(
                None,
                Arc::new(move |_, now| {
                    once();
                    Ok(AdminChange {
                        revoked: Some(RevokedHost {
                            host: "h".into(),
                            time_unix_nano: now,
                            actor: "dave".into(),
                            reason: "gone".into(),
                        }),
                        act: AdminAct {
                            action: "host_revoked".into(),
                            host: "h".into(),
                            ..AdminAct::default()
                        },
                        ..AdminChange::default()
                    })
                }),
            )
            .await;
        assert_eq!(revoked.unwrap().action, "host_revoked");
        assert_eq!(asked.load(SeqCst), 2, "decided twice");
        assert_eq!(store.revoked_hosts().unwrap().len(), 1);
        let report = crate::verify::verify_all(store.as_ref(), None, "", "").unwrap();
        assert!(report.ok(), "{report:?}");
    }

    /// A store from before each collector had a chain of its own: the one shared chain,
    /// and the checkpoint of it the collector kept. The collector, starting on a chain of its
    /// own, sets that checkpoint aside rather than find its own new, empty chain short of
    /// it, and goes on checking the shared chain against it: cut short, verify names it.
    #[tokio::test]
    async fn the_checkpoint_kept_of_the_shared_chain_is_set_aside_and_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store: Arc<dyn Store> = Arc::new(Sqlite::open(path.to_str().unwrap()).unwrap());
        let [witness, _] = witnesses(dir.path(), ["a", "b"]);
        let channels = || (watch::channel(()).0, watch::channel(()).0);
        // Written as collectors wrote it before: into the chain `collector`.
        let (live, changed) = channels();
        let shared = spawn(Arc::clone(&store), None, live, changed).unwrap();
        for _ in 0..3 {
            shared
                .record(Own::alert("", Body::Alert(Alert::default())))
                .await
                .unwrap();
        }
        let state = dir.path().join("state");
        let witness = witness.keep_checkpoint_in(&state).unwrap();
        let range = crate::witness::own_log(store.as_ref(), COLLECTOR_HOST, u64::MAX).unwrap();
        assert_eq!(range.size(), 4);
        let body = tlog::Checkpoint::new(&witness.own_origin(), 4, range.root()).unwrap();
        let note = tlog::sign_checkpoint(&witness.log_signer().unwrap(), &body).unwrap();
        std::fs::write(state.join("collector-log.checkpoint"), note.to_text()).unwrap();

        let (live, changed) = channels();
        let witness = Arc::new(witness);
        let own = spawn(
            Arc::clone(&store),
            Some(Arc::clone(&witness)),
            live,
            changed,
        )
        .unwrap();
        own.record(Own::alert("", Body::Alert(Alert::default())))
            .await
            .unwrap();
        assert!(state.join("collector-log.shared.checkpoint").exists());
        let report = crate::verify::verify_all(store.as_ref(), Some(&witness), "", "").unwrap();
        assert!(report.ok(), "{report:?}");
        let kinds = store.host_chains(COLLECTOR_HOST).unwrap();
        assert_eq!(kinds.len(), 2, "{kinds:?}");

        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM events WHERE chain = (SELECT id FROM chains WHERE chain_id = 'collector') \
               AND seq = 3;
             UPDATE chains SET next_seq = 3, head_hash = (SELECT hash FROM events \
               WHERE chain = chains.id AND seq = 2) WHERE chain_id = 'collector';",
        )
        .unwrap();
        let report = crate::verify::verify_all(store.as_ref(), Some(&witness), "", "").unwrap();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.subject == "chain collector" && f.reason.contains("cut short")),
            "{report:?}"
        );
    }

    /// The writer applies whatever rule it is handed to the grant as committed or as the
    /// change before it in the same group left it, records each change in its own chain, and
    /// records nothing of a refusal.
    #[tokio::test]
    async fn grant_changes_are_decided_against_the_grant_as_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store: Arc<dyn Store> = Arc::new(Sqlite::open(path.to_str().unwrap()).unwrap());
        let (live, _) = watch::channel(());
        let (changed, told) = watch::channel(());
        let writer = spawn(Arc::clone(&store), None, live, changed).unwrap();
        let new = Grant {
            id: "g-1".into(),
            expires_at_unix_nano: u64::MAX >> 1,
            ..Grant::default()
        };
        let create: Decide = Arc::new(move |current, _| {
            assert_eq!(current, None);
            Ok(grant_change("create", new.clone()))
        });
        let revoke: Decide = Arc::new(|current, now| {
            let mut grant = current.expect("the create before it");
            grant.revoked_unix_nano = now;
            Ok(grant_change("revoke", grant))
        });
        let refuse: Decide = Arc::new(|_, _| Err(GrantError::Ended("no".into())));
        let (created, revoked, refused) = tokio::join!(
            writer.change_grant("g-1".into(), create),
            writer.change_grant("g-1".into(), revoke),
            writer.change_grant("g-1".into(), refuse),
        );
        assert_eq!(created.unwrap().action, "create");
        let revoked = revoked.unwrap().grant.unwrap();
        assert_ne!(revoked.revoked_unix_nano, 0);
        assert!(matches!(refused, Err(GrantError::Ended(_))));
        assert_eq!(store.grant("g-1").unwrap(), Some(revoked));
        assert!(told.has_changed().unwrap(), "agents' views are refreshed");
        let verdicts = crate::verify::verify_all(store.as_ref(), None, "", COLLECTOR_HOST)
            .unwrap()
            .chains;
        assert!(verdicts[0].ok, "{verdicts:?}");
        assert_eq!(
            verdicts[0].records, 3,
            "chain start, create, revoke: not the refusal"
        );
    }
}
