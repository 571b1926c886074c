//! The one writer: ingest streams hand it verified batches, it checks each against the chain
//! heads it keeps (so continuity is judged against exactly what it commits), commits
//! everything queued in one transaction, and only then replies. After each commit it tells
//! tailers how far the store reaches. Grant changes go through it too: each is chained into
//! the collector's own chain in the same transaction as the grant it changes, and applied to
//! the grant as the commits before it left it, so two changes to one grant never race.

use std::{collections::HashMap, sync::Arc};

use prost::Message as _;
use proto::{
    chain::{GENESIS, chain_hash},
    v1::{Alert, ChainStart, Event, Grant, GrantChange, event::Body},
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::Status;

use crate::{
    grants::{self, now},
    store::{
        Append, COLLECTOR_CHAIN, ChainState, CheckpointRow, Commit, Conflict, Record, Store,
        StoreError,
    },
};

/// Requests queued for the writer; senders wait when it is this far behind.
const QUEUE: usize = 256;
/// A group commit takes at most this many records, so one commit's latency stays bounded.
const GROUP_RECORDS: usize = 100_000;

/// Records of one chain, contiguous, each hash already checked against the one before it.
/// Only the first record's link to the stored head is left for the writer.
#[derive(Debug)]
pub struct Batch {
    pub host: String,
    pub chain_id: String,
    pub records: Vec<Record>,
}

#[derive(Debug)]
pub struct CheckpointRequest {
    pub host: String,
    pub chain_id: String,
    pub size: u64,
    pub head_hash: Vec<u8>,
    pub time_unix_nano: u64,
}

/// A change an operator asked for. `Create` carries the whole new grant; the others name the
/// grant they change.
#[derive(Debug)]
pub enum GrantOp {
    Create(Box<Grant>),
    Revoke { id: String, reason: String },
    Extend { id: String, nanos: u64 },
}

type Reply = oneshot::Sender<Result<u64, Status>>;
type GrantReply = oneshot::Sender<Result<Grant, Status>>;

enum Request {
    Batch(Batch, Reply),
    Checkpoint(CheckpointRequest, Reply),
    Grant {
        op: GrantOp,
        actor: String,
        reply: GrantReply,
    },
}

/// An answer owed once the group it belongs to is committed (or has failed).
enum Outcome {
    Seq(Reply, Result<u64, Status>),
    Grant(GrantReply, Result<Grant, Status>),
}

impl Outcome {
    /// Sends the answer; when the commit failed, the failure instead.
    fn send(self, failure: Option<&Status>) {
        match self {
            Self::Seq(reply, result) => {
                let _ = reply.send(failure.map_or(result, |f| Err(f.clone())));
            }
            Self::Grant(reply, result) => {
                let _ = reply.send(failure.map_or(result, |f| Err(f.clone())));
            }
        }
    }
}

/// The ingest side's handle on the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
}

fn gone() -> Status {
    Status::unavailable("the collector's writer has stopped")
}

/// A request in the writer's queue: resolves once it is durable, or refused.
pub struct Pending(oneshot::Receiver<Result<u64, Status>>);

impl Pending {
    /// The seq to acknowledge (for a checkpoint, its size).
    pub async fn wait(self) -> Result<u64, Status> {
        self.0.await.map_err(|_| gone())?
    }
}

impl WriterHandle {
    /// Queues a batch; waits only while the queue is full.
    pub async fn append(&self, batch: Batch) -> Result<Pending, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Batch(batch, reply))
            .await
            .map_err(|_| gone())?;
        Ok(Pending(rx))
    }

    pub async fn checkpoint(&self, checkpoint: CheckpointRequest) -> Result<Pending, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Checkpoint(checkpoint, reply))
            .await
            .map_err(|_| gone())?;
        Ok(Pending(rx))
    }

    /// Applies a grant change and waits until it and its `GrantChange` record are durable;
    /// returns the grant as it now is.
    pub async fn change_grant(&self, op: GrantOp, actor: String) -> Result<Grant, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Grant { op, actor, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Starts the writer on the blocking pool. `live` receives the highest stored row id after
/// each commit; `grants_changed` is marked after each commit that changed a grant.
pub fn spawn(
    store: Arc<dyn Store>,
    live: broadcast::Sender<i64>,
    grants_changed: watch::Sender<()>,
) -> Result<WriterHandle, StoreError> {
    let heads = store
        .chains()?
        .into_iter()
        .map(|c| (c.chain_id.clone(), c))
        .collect();
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = Writer {
        store,
        heads,
        rx,
        live,
        grants_changed,
    };
    tokio::task::spawn_blocking(move || writer.run());
    Ok(WriterHandle { tx })
}

struct Writer {
    store: Arc<dyn Store>,
    /// Every chain's committed head.
    heads: HashMap<String, ChainState>,
    rx: mpsc::Receiver<Request>,
    live: broadcast::Sender<i64>,
    grants_changed: watch::Sender<()>,
}

/// One group commit in the making.
#[derive(Default)]
struct Group {
    commit: Commit,
    /// Heads as they will be once `commit` is durable.
    heads: HashMap<String, ChainState>,
    replies: Vec<Outcome>,
    records: usize,
}

/// An event the collector chains into its own chain, and the columns it is found by.
struct Own {
    kind: &'static str,
    host: String,
    identity_kind: i32,
    identity_name: String,
    body: Body,
}

/// A request that must wait for the group before it to be committed: it reads records that
/// are not yet in the store.
struct Later(Request);

impl Writer {
    fn run(mut self) {
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

    fn flush(&mut self, group: Group) {
        if group.commit.is_empty() {
            for outcome in group.replies {
                outcome.send(None);
            }
            return;
        }
        match self.store.commit(&group.commit) {
            Ok(last_row) => {
                self.heads.extend(group.heads);
                // Before the replies: once an operator's change returns, every agent stream
                // has been told to send a fresh view.
                if !group.commit.grants.is_empty() {
                    self.grants_changed.send_replace(());
                }
                for outcome in group.replies {
                    outcome.send(None);
                }
                // No tailer listening is not an error.
                let _ = self.live.send(last_row);
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; nothing of this group is acknowledged");
                let failure = Status::internal(format!("store commit failed: {e}"));
                for outcome in group.replies {
                    outcome.send(Some(&failure));
                }
            }
        }
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
            Request::Batch(batch, reply) => {
                let first = batch.records.first().map_or(0, |r| r.seq);
                if self.needs_commit(group, &batch.chain_id, first) {
                    return Err(Later(Request::Batch(batch, reply)));
                }
                let result = self.append(group, batch);
                group.replies.push(Outcome::Seq(reply, result));
            }
            Request::Checkpoint(checkpoint, reply) => {
                if self.needs_commit(group, &checkpoint.chain_id, checkpoint.size) {
                    return Err(Later(Request::Checkpoint(checkpoint, reply)));
                }
                let result = self.checkpoint(group, checkpoint);
                group.replies.push(Outcome::Seq(reply, result));
            }
            Request::Grant { op, actor, reply } => {
                let result = self.change_grant(group, op, actor);
                group.replies.push(Outcome::Grant(reply, result));
            }
        }
        Ok(())
    }

    fn stored_hash(&self, chain_id: &str, seq: u64) -> Result<Vec<u8>, Status> {
        self.store
            .hash_at(chain_id, seq)
            .map_err(|e| Status::internal(format!("store read failed: {e}")))?
            .ok_or_else(|| Status::internal(format!("stored chain {chain_id} lacks seq {seq}")))
    }

    fn append(&self, group: &mut Group, mut batch: Batch) -> Result<u64, Status> {
        let (Some(first), Some(last)) = (batch.records.first(), batch.records.last()) else {
            return Err(Status::invalid_argument("empty batch"));
        };
        let (first, last) = (first.seq, last.seq);
        let mut head = self.head(group, &batch.chain_id).unwrap_or(ChainState {
            chain_id: batch.chain_id.clone(),
            host: batch.host.clone(),
            next_seq: 0,
            head_hash: GENESIS,
        });
        if head.host != batch.host {
            return Err(Status::invalid_argument(format!(
                "chain {} belongs to host {:?}, not {:?}",
                batch.chain_id, head.host, batch.host
            )));
        }
        if first > head.next_seq {
            return Err(Status::failed_precondition(format!(
                "seq {first} does not continue chain {}: the collector holds seq 0 to {} (next_seq {})",
                batch.chain_id,
                head.next_seq.saturating_sub(1),
                head.next_seq
            )));
        }
        let overlap = usize::try_from(head.next_seq.min(last + 1) - first).unwrap_or(usize::MAX);
        if overlap > 0 {
            self.check_resend(group, &batch, overlap)?;
        } else {
            let r = &batch.records[0];
            if chain_hash(&batch.chain_id, r.seq, &head.head_hash, &r.event) != r.hash {
                return Err(Status::invalid_argument(format!(
                    "the hash of seq {} of chain {} does not recompute over the stored head",
                    r.seq, batch.chain_id
                )));
            }
        }
        let records: Vec<Record> = batch.records.drain(overlap..).collect();
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

    /// The first `overlap` records are already stored. The batch's hashes link to each other,
    /// so when the last overlapping one matches the store, all of them do.
    fn check_resend(&self, group: &mut Group, batch: &Batch, overlap: usize) -> Result<(), Status> {
        let chain_id = &batch.chain_id;
        let matches = |r: &Record| -> Result<Option<Vec<u8>>, Status> {
            let stored = self.stored_hash(chain_id, r.seq)?;
            Ok((stored != r.hash).then_some(stored))
        };
        if matches(&batch.records[overlap - 1])?.is_none() {
            return Ok(());
        }
        for r in &batch.records[..overlap] {
            if let Some(stored_hash) = matches(r)? {
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
                    received_unix_nano: now(),
                });
                self.chain_own(
                    group,
                    Own {
                        kind: "alert",
                        host: batch.host.clone(),
                        identity_kind: 0,
                        identity_name: String::new(),
                        body: Body::Alert(Alert {
                            kind: "fork".into(),
                            host: batch.host.clone(),
                            chain_id: chain_id.clone(),
                            seq: r.seq,
                            message: message.clone(),
                        }),
                    },
                );
                return Err(Status::already_exists(message));
            }
        }
        Err(Status::internal(
            "resend differs from the store, yet no record does",
        ))
    }

    /// The grant as committed, or as a change earlier in this group left it.
    fn current_grant(&self, group: &Group, id: &str) -> Result<Option<Grant>, Status> {
        if let Some(g) = group.commit.grants.iter().rev().find(|g| g.id == id) {
            return Ok(Some(g.clone()));
        }
        self.store
            .grant(id)
            .map_err(|e| Status::internal(format!("store read failed: {e}")))
    }

    /// Applies a grant change to the group: the grant as it becomes, and its `GrantChange`
    /// record in the collector's chain.
    fn change_grant(&self, group: &mut Group, op: GrantOp, actor: String) -> Result<Grant, Status> {
        let time = now();
        let live = |id: &str| -> Result<Grant, Status> {
            let grant = self
                .current_grant(group, id)?
                .ok_or_else(|| Status::not_found(format!("no grant has the id {id:?}")))?;
            match grants::ended(&grant, time) {
                Some(why) => Err(Status::failed_precondition(format!(
                    "grant {id} has already ended: {why}"
                ))),
                None => Ok(grant),
            }
        };
        let (action, grant, reason) = match op {
            GrantOp::Create(grant) => {
                if self.current_grant(group, &grant.id)?.is_some() {
                    return Err(Status::already_exists(format!(
                        "a grant with the id {} exists already",
                        grant.id
                    )));
                }
                ("create", *grant, String::new())
            }
            GrantOp::Revoke { id, reason } => {
                let mut grant = live(&id)?;
                grant.revoked_unix_nano = time;
                ("revoke", grant, reason)
            }
            GrantOp::Extend { id, nanos } => {
                let mut grant = live(&id)?;
                grant.expires_at_unix_nano = grant
                    .expires_at_unix_nano
                    .checked_add(nanos)
                    .filter(|t| *t <= grants::MAX_TIME)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "extending grant {id} by {nanos} ns would take it past the year 2262"
                        ))
                    })?;
                ("extend", grant, String::new())
            }
        };
        let selector = grant.identity.clone().unwrap_or_default();
        tracing::info!(grant = %grant.id, action, %actor, identity = %selector.name, "grant changed");
        self.chain_own(
            group,
            Own {
                kind: "grant_change",
                host: COLLECTOR_CHAIN.into(),
                // So that a search by identity finds the changes to its grants.
                identity_kind: selector.kind,
                identity_name: selector.name,
                body: Body::GrantChange(GrantChange {
                    action: action.into(),
                    grant: Some(grant.clone()),
                    actor,
                    reason,
                }),
            },
        );
        group.commit.grants.push(grant.clone());
        Ok(grant)
    }

    /// Chains an event of the collector's own into its chain, which starts like any other.
    fn chain_own(&self, group: &mut Group, own: Own) {
        let mut head = self.head(group, COLLECTOR_CHAIN).unwrap_or(ChainState {
            chain_id: COLLECTOR_CHAIN.into(),
            host: COLLECTOR_CHAIN.into(),
            next_seq: 0,
            head_hash: GENESIS,
        });
        let time = now();
        let mut owns = Vec::new();
        if head.next_seq == 0 {
            owns.push(Own {
                kind: "chain_start",
                host: COLLECTOR_CHAIN.to_owned(),
                identity_kind: 0,
                identity_name: String::new(),
                body: Body::ChainStart(ChainStart {
                    host: COLLECTOR_CHAIN.into(),
                    ..ChainStart::default()
                }),
            });
        }
        owns.push(own);
        let mut records = Vec::new();
        for Own {
            kind,
            host,
            identity_kind,
            identity_name,
            body,
        } in owns
        {
            let event = Event {
                time_unix_nano: time,
                body: Some(body),
                ..Event::default()
            }
            .encode_to_vec();
            let hash = chain_hash(COLLECTOR_CHAIN, head.next_seq, &head.head_hash, &event);
            records.push(Record {
                seq: head.next_seq,
                host,
                time_unix_nano: time,
                kind,
                session: String::new(),
                sessionid: None,
                identity_kind,
                identity_name,
                grant: String::new(),
                tty_bytes: 0,
                event,
                hash,
            });
            head.next_seq += 1;
            head.head_hash = hash;
        }
        group.heads.insert(COLLECTOR_CHAIN.into(), head);
        group.commit.appends.push(Append {
            chain_id: COLLECTOR_CHAIN.into(),
            chain_host: COLLECTOR_CHAIN.into(),
            records,
        });
    }

    fn checkpoint(&self, group: &mut Group, c: CheckpointRequest) -> Result<u64, Status> {
        let head = self.head(group, &c.chain_id).ok_or_else(|| {
            Status::failed_precondition(format!("checkpoint of unknown chain {}", c.chain_id))
        })?;
        if head.host != c.host {
            return Err(Status::invalid_argument(format!(
                "chain {} belongs to host {:?}, not {:?}",
                c.chain_id, head.host, c.host
            )));
        }
        if c.size > head.next_seq {
            return Err(Status::failed_precondition(format!(
                "checkpoint of chain {} claims {} records; the collector holds {}",
                c.chain_id, c.size, head.next_seq
            )));
        }
        let stored = match c.size {
            0 => Vec::new(),
            n if n == head.next_seq => head.head_hash.to_vec(),
            n => self.stored_hash(&c.chain_id, n - 1)?,
        };
        if stored != c.head_hash {
            return Err(Status::invalid_argument(format!(
                "checkpoint of chain {} at size {}: its head hash differs from the stored record",
                c.chain_id, c.size
            )));
        }
        group.commit.checkpoints.push(CheckpointRow {
            chain_id: c.chain_id,
            size: c.size,
            head_hash: c.head_hash,
            time_unix_nano: c.time_unix_nano,
            received_unix_nano: now(),
        });
        Ok(c.size)
    }
}
