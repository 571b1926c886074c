//! The Ingest service: checks what each agent stream sends against the contract
//! (collector.proto, docs/chain.md), hands verified batches to the writer, and acknowledges
//! each one once the writer reports it durable. It also keeps each agent's view of its
//! host's grants fresh: a `GrantView` after Welcome, at every grant change, and every
//! `VIEW_REFRESH`.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use proto::{
    chain::chain_hash,
    v1::{
        Ack, AgentMessage, ChainHead, CollectorMessage, Event, EventBatch, Hello, Welcome,
        agent_message::Msg, collector_message, event::Body, ingest_server::Ingest,
    },
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    grants::Views,
    store::{COLLECTOR_CHAIN, Record, Store, blocking},
    writer::{Batch, CheckpointRequest, Pending, WriterHandle},
};

/// The largest message a stream may send; a larger one ends the stream with tonic's
/// `OUT_OF_RANGE` status. Agents size their batches below it.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Records in one batch.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Serialized bytes of one event.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Bytes of a chain id or host id.
pub const MAX_ID_BYTES: usize = 256;
/// Chains named in one Hello.
pub const MAX_HELLO_CHAINS: usize = 4096;
/// Batches a stream may have in the writer's queue before it waits for their acks; they are
/// what lets one agent's batches share a commit.
const IN_FLIGHT: usize = 16;
/// A stream is sent a fresh `GrantView` at least this often, even when nothing changed:
/// agents count their view's staleness from its `issued_unix_nano`.
pub const VIEW_REFRESH: Duration = Duration::from_secs(30);

pub struct IngestService {
    store: Arc<dyn Store>,
    writer: WriterHandle,
    views: Views,
}

impl IngestService {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, writer: WriterHandle, views: Views) -> Self {
        Self {
            store,
            writer,
            views,
        }
    }
}

type Reply = Result<CollectorMessage, Status>;

/// What the stream owes the agent, in the order its messages came.
enum Step {
    Ack(String, Pending),
    Checkpoint(Pending),
    Fail(Status),
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Reply>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(IN_FLIGHT * 2);
        let (steps, steps_rx) = mpsc::channel(IN_FLIGHT);
        // Dropped when the acks end, which ends the grant views too: the stream closes once
        // the agent's side has and every ack is out.
        let (acks_done, acks_ended) = oneshot::channel();
        tokio::spawn(read(
            inbound,
            Reader {
                store: Arc::clone(&self.store),
                writer: self.writer.clone(),
                views: self.views.clone(),
                out: out.clone(),
                steps,
                acks_ended,
            },
        ));
        tokio::spawn(acknowledge(steps_rx, out, peer, acks_done));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What the reading side of one stream works with.
struct Reader {
    store: Arc<dyn Store>,
    writer: WriterHandle,
    views: Views,
    out: mpsc::Sender<Reply>,
    steps: mpsc::Sender<Step>,
    acks_ended: oneshot::Receiver<()>,
}

/// Sends `host`'s grant view now, again at each grant change, and every `VIEW_REFRESH`, until
/// `acks_ended`.
async fn push_views(
    views: Views,
    host: String,
    out: mpsc::Sender<Reply>,
    mut acks_ended: oneshot::Receiver<()>,
) {
    let mut changed = views.subscribe();
    let mut refresh = tokio::time::interval(VIEW_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut acks_ended => return,
            _ = refresh.tick() => {}
            changed = changed.changed() => if changed.is_err() { return },
        }
        refresh.reset();
        let reply = views.view(&host).await.map(|view| CollectorMessage {
            msg: Some(collector_message::Msg::Grants(view)),
        });
        if let Err(status) = &reply {
            tracing::error!(%host, message = status.message(), "cannot make the grant view; ending the stream");
        }
        let failed = reply.is_err();
        if out.send(reply).await.is_err() || failed {
            return;
        }
    }
}

/// Sends acks in order as the writer reports batches durable; the first failure ends the
/// stream. `_done` is dropped when it returns.
async fn acknowledge(
    mut steps: mpsc::Receiver<Step>,
    out: mpsc::Sender<Reply>,
    peer: String,
    _done: oneshot::Sender<()>,
) {
    while let Some(step) = steps.recv().await {
        let reply = match step {
            Step::Ack(chain_id, pending) => pending.wait().await.map(|seq| CollectorMessage {
                msg: Some(collector_message::Msg::Ack(Ack { chain_id, seq })),
            }),
            Step::Checkpoint(pending) => match pending.wait().await {
                Ok(_) => continue,
                Err(status) => Err(status),
            },
            Step::Fail(status) => Err(status),
        };
        if let Err(status) = &reply {
            tracing::warn!(%peer, code = ?status.code(), message = status.message(), "ingest stream refused");
        }
        let failed = reply.is_err();
        if out.send(reply).await.is_err() || failed {
            return;
        }
    }
}

/// Reads the agent's messages: Hello first, then batches and checkpoints.
async fn read(mut inbound: Streaming<AgentMessage>, reader: Reader) {
    let Reader {
        store,
        writer,
        views,
        out,
        steps,
        acks_ended,
    } = reader;
    let fail = async |status| {
        let _ = steps.send(Step::Fail(status)).await;
    };
    let hello = match inbound.message().await {
        Ok(Some(AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })) => hello,
        Ok(None) => return,
        Ok(Some(_)) => {
            return fail(Status::invalid_argument("the first message must be Hello")).await;
        }
        Err(status) => return fail(status).await,
    };
    let welcome = match welcome(&store, &hello).await {
        Ok(w) => w,
        Err(status) => return fail(status).await,
    };
    tracing::info!(host = %hello.host, version = %hello.agent_version, chains = hello.chain_ids.len(), "agent connected");
    if out.send(Ok(welcome)).await.is_err() {
        return;
    }
    tokio::spawn(push_views(views, hello.host.clone(), out, acks_ended));
    loop {
        let step = match inbound.message().await {
            Ok(None) => return,
            Err(status) => Step::Fail(status),
            Ok(Some(AgentMessage { msg: None })) => {
                Step::Fail(Status::invalid_argument("empty message"))
            }
            Ok(Some(AgentMessage {
                msg: Some(Msg::Hello(_)),
            })) => Step::Fail(Status::invalid_argument("Hello sent twice")),
            Ok(Some(AgentMessage {
                msg: Some(Msg::Batch(batch)),
            })) => {
                let chain_id = batch.chain_id.clone();
                let host = hello.host.clone();
                match tokio::task::spawn_blocking(move || verify(&host, batch)).await {
                    Ok(Ok(batch)) => match writer.append(batch).await {
                        Ok(pending) => Step::Ack(chain_id, pending),
                        Err(status) => Step::Fail(status),
                    },
                    Ok(Err(status)) => Step::Fail(status),
                    Err(e) => Step::Fail(Status::internal(e.to_string())),
                }
            }
            Ok(Some(AgentMessage {
                msg: Some(Msg::Checkpoint(c)),
            })) => {
                let request = CheckpointRequest {
                    host: hello.host.clone(),
                    chain_id: c.chain_id,
                    size: c.size,
                    head_hash: c.head_hash,
                    time_unix_nano: c.time_unix_nano,
                };
                match writer.checkpoint(request).await {
                    Ok(pending) => Step::Checkpoint(pending),
                    Err(status) => Step::Fail(status),
                }
            }
        };
        let failed = matches!(step, Step::Fail(_));
        if steps.send(step).await.is_err() || failed {
            return;
        }
    }
}

fn check_id(what: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes, not {}",
            id.len()
        )));
    }
    Ok(())
}

async fn welcome(store: &Arc<dyn Store>, hello: &Hello) -> Result<CollectorMessage, Status> {
    check_id("host", &hello.host)?;
    if hello.chain_ids.len() > MAX_HELLO_CHAINS {
        return Err(Status::invalid_argument(format!(
            "Hello names {} chains; at most {MAX_HELLO_CHAINS}",
            hello.chain_ids.len()
        )));
    }
    for id in &hello.chain_ids {
        check_id("chain_id", id)?;
    }
    let store = Arc::clone(store);
    let chains = blocking(move || store.chains()).await?;
    let heads = hello
        .chain_ids
        .iter()
        .map(|id| {
            let stored = chains.iter().find(|c| c.chain_id == *id);
            ChainHead {
                chain_id: id.clone(),
                next_seq: stored.map_or(0, |c| c.next_seq),
                head_hash: stored
                    .filter(|c| c.next_seq > 0)
                    .map(|c| c.head_hash.to_vec())
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(CollectorMessage {
        msg: Some(collector_message::Msg::Welcome(Welcome { heads })),
    })
}

/// Checks a batch on its own: bounds, contiguous seqs, each hash against the one before
/// it, and decodes each event for the columns queries use. Only the first record's link to
/// the stored head is left for the writer, which holds the heads.
fn verify(host: &str, batch: EventBatch) -> Result<Batch, Status> {
    let chain_id = batch.chain_id;
    check_id("chain_id", &chain_id)?;
    if chain_id == COLLECTOR_CHAIN {
        return Err(Status::invalid_argument(format!(
            "chain id {COLLECTOR_CHAIN:?} is the collector's own"
        )));
    }
    let count = batch.events.len();
    if count == 0 || count > MAX_BATCH_EVENTS {
        return Err(Status::invalid_argument(format!(
            "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {count}"
        )));
    }
    let first = batch.events[0].seq;
    if first
        .checked_add(count as u64)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(Status::invalid_argument(format!(
            "seq {first} is out of range"
        )));
    }
    let mut records = Vec::with_capacity(count);
    let mut prev: Option<[u8; 32]> = None;
    for (i, ce) in batch.events.into_iter().enumerate() {
        let seq = first + i as u64;
        if ce.seq != seq {
            return Err(Status::invalid_argument(format!(
                "batch of chain {chain_id} is not contiguous: seq {} where {seq} belongs",
                ce.seq
            )));
        }
        if !ce.chain_id.is_empty() && ce.chain_id != chain_id {
            return Err(Status::invalid_argument(format!(
                "seq {seq} names chain {:?} inside a batch of chain {chain_id}",
                ce.chain_id
            )));
        }
        if ce.event.len() > MAX_EVENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "seq {seq} is {} bytes; an event is at most {MAX_EVENT_BYTES}",
                ce.event.len()
            )));
        }
        let hash: [u8; 32] = ce.hash.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "the hash of seq {seq} is {} bytes, not 32",
                ce.hash.len()
            ))
        })?;
        if let Some(prev) = prev
            && chain_hash(&chain_id, seq, &prev, &ce.event) != hash
        {
            return Err(Status::invalid_argument(format!(
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

/// Decodes an event for the columns it is found by.
fn record(host: &str, seq: u64, bytes: Vec<u8>, hash: [u8; 32]) -> Result<Record, Status> {
    let event = Event::decode(bytes.as_slice()).map_err(|e| {
        Status::invalid_argument(format!("seq {seq} is not a recorder.v1.Event: {e}"))
    })?;
    if event.time_unix_nano > i64::MAX as u64 {
        return Err(Status::invalid_argument(format!(
            "seq {seq}: time out of range"
        )));
    }
    let (kind, tty_bytes) = match &event.body {
        Some(Body::Exec(_)) => ("exec", 0),
        Some(Body::Fork(_)) => ("fork", 0),
        Some(Body::Exit(_)) => ("exit", 0),
        Some(Body::Tty(t)) => ("tty", t.data.len() as u64),
        Some(Body::Gap(_)) => ("gap", 0),
        Some(Body::ChainStart(start)) => {
            if start.host != host {
                return Err(Status::invalid_argument(format!(
                    "seq {seq} starts a chain of host {:?}, but this agent said Hello as {host:?}",
                    start.host
                )));
            }
            ("chain_start", 0)
        }
        Some(Body::Violation(_)) => ("violation", 0),
        Some(Body::Kill(_)) => ("kill", 0),
        Some(Body::Alert(_)) => {
            return Err(Status::invalid_argument(format!(
                "seq {seq} is an alert: only the collector raises alerts"
            )));
        }
        Some(Body::GrantChange(_)) => {
            return Err(Status::invalid_argument(format!(
                "seq {seq} is a grant change: only the collector records those"
            )));
        }
        None => return Err(Status::invalid_argument(format!("seq {seq} has no body"))),
    };
    if seq == 0 && kind != "chain_start" {
        return Err(Status::invalid_argument(format!(
            "seq 0 is {kind}: a chain begins with chain_start"
        )));
    }
    let sessionid = event.process.as_ref().and_then(|p| p.sessionid);
    let session = match (sessionid, &event.session_root) {
        (Some(id), Some(root)) => format!("{host}:{id}:{}", root.start_unix_nano),
        _ => String::new(),
    };
    let identity = event.identity.unwrap_or_default();
    Ok(Record {
        seq,
        host: host.to_owned(),
        time_unix_nano: event.time_unix_nano,
        kind,
        session,
        sessionid,
        identity_kind: identity.kind,
        identity_name: identity.name,
        grant: identity.grant,
        tty_bytes,
        event: bytes,
        hash,
    })
}
