//! The Ingest service, the RPC edge agents stream their chains to: it checks what each
//! stream sends (`check`), hands checked batches to the writer, and acknowledges each one
//! once the writer reports it durable. It also keeps each agent's view of its host's grants
//! fresh: a `GrantView` after Welcome, at every grant change, and every `VIEW_REFRESH`.

pub(crate) mod check;

use std::{collections::HashMap, sync::Arc, time::Duration};

use pki::{CertInfo, ConnInfo};
use proto::v1::{
    Ack, AgentMessage, Alert, ChainHead, Checkpoint, CollectorMessage, Hello, LogState, Welcome,
    agent_message::Msg, collector_message, event::Body, ingest_server::Ingest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::{Caller, Gate, Revoked},
    error::IngestError,
    grants::views::Views,
    liveness::{self, Liveness},
    store::{ChainState, Store, StoreError, blocking},
    witness::Witness,
    writer::{Batch, CheckpointRequest, Own, Pending, PendingCheckpoint, WriterHandle},
};

/// The largest message a stream may send; a larger one ends the stream with tonic's
/// `OUT_OF_RANGE` status. Agents size their batches below it.
pub(crate) const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Batches a stream may have in the writer's queue before it waits for their acks; they are
/// what lets one agent's batches share a commit.
const IN_FLIGHT: usize = 16;
/// A stream is sent a fresh `GrantView` at least this often, even when nothing changed:
/// agents count their view's staleness from its `issued_unix_nano`.
const VIEW_REFRESH: Duration = Duration::from_secs(30);

/// The statuses of collector.proto's Ingest contract.
impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let message = e.to_string();
        match e {
            IngestError::Invalid(_) => Self::invalid_argument(message),
            IngestError::Gap(_) => Self::failed_precondition(message),
            IngestError::Fork(_) => Self::already_exists(message),
            IngestError::Store(StoreError::Full(_)) => Self::resource_exhausted(message),
            IngestError::Internal(_) | IngestError::Store(_) => Self::internal(message),
            IngestError::Unavailable => Self::unavailable(message),
        }
    }
}

pub(crate) struct IngestService {
    store: Arc<dyn Store>,
    witness: Option<Arc<Witness>>,
    writer: WriterHandle,
    views: Views,
    gate: Gate,
    revoked: Revoked,
    liveness: Arc<Liveness>,
}

impl IngestService {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        witness: Option<Arc<Witness>>,
        writer: WriterHandle,
        views: Views,
        gate: Gate,
        revoked: Revoked,
        liveness: Arc<Liveness>,
    ) -> Self {
        Self {
            store,
            witness,
            writer,
            views,
            gate,
            revoked,
            liveness,
        }
    }
}

/// Whom a stream speaks for: the one host an agent's certificate names (`None`: the
/// collector runs without TLS, and takes the Hello's word).
#[derive(Clone)]
struct Speaker {
    caller: Caller,
    host: Option<String>,
    /// The agent's certificate on this connection: its key signs the host's checkpoints.
    cert: Option<Arc<CertInfo>>,
    gate: Gate,
    revoked: Revoked,
}

impl Speaker {
    /// Refuses what the certificate does not allow: speaking for another host, or for a
    /// revoked one. Each refusal is chained.
    async fn may_speak_for(&self, host: &str, what: &str) -> Result<(), Status> {
        let why = if self.revoked.contains(host) {
            format!("host {host} is revoked")
        } else if self.host.as_deref().is_some_and(|own| own != host) {
            format!(
                "its certificate is for host {}, and it sent {what} of host {host}",
                self.host.as_deref().unwrap_or_default()
            )
        } else {
            return Ok(());
        };
        self.gate.refused(&self.caller.name(), host, &why).await;
        Err(Status::permission_denied(why))
    }

    /// A chain id names its host first (`HOST:BOOT_ID:START`). One that is malformed is
    /// left for the batch's checks to refuse, with their reason.
    async fn may_ship_chain(&self, chain_id: &str) -> Result<(), Status> {
        if check::malformed_id(chain_id) {
            return Ok(());
        }
        let host = chain_id.rsplitn(3, ':').nth(2).unwrap_or_default();
        self.may_speak_for(host, &format!("chain {chain_id}")).await
    }
}

type Reply = Result<CollectorMessage, Status>;

/// What the stream owes the agent, in the order its messages came.
enum Step {
    Ack(String, Pending),
    Checkpoint(PendingCheckpoint),
    Fail(Status),
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Reply>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = crate::auth::remote(&request);
        let caller = crate::auth::identify(&request)?;
        let host = match &caller {
            Caller::Agent { host } => Some(host.clone()),
            Caller::Insecure => None,
            Caller::Operator { .. } => {
                let why = "only agents ship evidence";
                self.gate.refused(&caller.name(), "", why).await;
                return Err(Status::permission_denied(why));
            }
        };
        let cert = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|i| i.cert.clone());
        let speaker = Speaker {
            caller,
            host,
            cert,
            gate: self.gate.clone(),
            revoked: self.revoked.clone(),
        };
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
                witness: self.witness.clone(),
                writer: self.writer.clone(),
                views: self.views.clone(),
                speaker,
                out: out.clone(),
                steps,
                acks_ended,
                liveness: Arc::clone(&self.liveness),
            },
        ));
        tokio::spawn(acknowledge(steps_rx, out, peer, acks_done));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What the reading side of one stream works with.
struct Reader {
    store: Arc<dyn Store>,
    witness: Option<Arc<Witness>>,
    writer: WriterHandle,
    views: Views,
    speaker: Speaker,
    out: mpsc::Sender<Reply>,
    steps: mpsc::Sender<Step>,
    acks_ended: oneshot::Receiver<()>,
    liveness: Arc<Liveness>,
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
        let reply = match views.view(&host).await {
            Ok(view) => Ok(CollectorMessage {
                msg: Some(collector_message::Msg::Grants(view)),
            }),
            Err(e) => {
                tracing::error!(%host, error = %e, "cannot make the grant view; ending the stream");
                Err(IngestError::from(e).into())
            }
        };
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
            Step::Ack(chain_id, pending) => pending
                .wait()
                .await
                .map(|seq| CollectorMessage {
                    msg: Some(collector_message::Msg::Ack(Ack {
                        chain_id,
                        seq,
                        checkpoint: None,
                    })),
                })
                .map_err(Status::from),
            Step::Checkpoint(pending) => pending
                .wait()
                .await
                .map(|answer| CollectorMessage {
                    msg: Some(collector_message::Msg::Ack(Ack {
                        chain_id: String::new(),
                        seq: 0,
                        checkpoint: Some(answer),
                    })),
                })
                .map_err(Status::from),
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

/// What one message of the stream after its Hello asks of the writer, once the speaker may
/// send it.
async fn step(
    writer: &WriterHandle,
    witness: Option<&Witness>,
    speaker: &Speaker,
    host: &str,
    msg: Msg,
) -> Result<Step, Status> {
    let chain_id = match &msg {
        Msg::Batch(b) => Some(&b.chain_id),
        Msg::Hole(h) => Some(&h.chain_id),
        Msg::Checkpoint(_) | Msg::Hello(_) | Msg::Heartbeat(_) => None,
    };
    if let Some(chain_id) = chain_id {
        speaker.may_ship_chain(chain_id).await?;
    }
    if let Msg::Checkpoint(checkpoint) = msg {
        return Ok(Step::Checkpoint(
            witness_checkpoint(writer, witness, speaker, host, checkpoint).await?,
        ));
    }
    Ok(step_checked(writer, host, msg).await?)
}

/// Checks a checkpoint's signature against the key of the host's certificate on this
/// connection, and hands it to the writer for the witness's decision.
async fn witness_checkpoint(
    writer: &WriterHandle,
    witness: Option<&Witness>,
    speaker: &Speaker,
    host: &str,
    checkpoint: Checkpoint,
) -> Result<PendingCheckpoint, IngestError> {
    let (Some(witness), Some(cert)) = (witness, &speaker.cert) else {
        return Err(IngestError::Invalid(
            "this collector serves without TLS: it has no witness key and cosigns nothing".into(),
        ));
    };
    if checkpoint.note.len() > tlog::MAX_NOTE_BYTES {
        return Err(IngestError::Invalid(format!(
            "a checkpoint note is at most {} bytes",
            tlog::MAX_NOTE_BYTES
        )));
    }
    let signed = witness
        .open(host, cert, &checkpoint.note)
        .map_err(|e| IngestError::Invalid(format!("checkpoint refused: {e}")))?;
    writer
        .checkpoint(CheckpointRequest {
            host: host.to_owned(),
            checkpoint: signed,
            old_size: checkpoint.old_size,
            cert_pem: cert.pem(),
        })
        .await
}

async fn step_checked(writer: &WriterHandle, host: &str, msg: Msg) -> Result<Step, IngestError> {
    match msg {
        Msg::Hello(_) => Err(IngestError::Invalid("Hello sent twice".into())),
        Msg::Heartbeat(_) => Err(IngestError::Internal(
            "a heartbeat reached the batch path".into(),
        )),
        Msg::Batch(batch) => {
            let chain_id = batch.chain_id.clone();
            let batch = if check::is_small(&batch) {
                check::batch(host, batch)?
            } else {
                let host = host.to_owned();
                tokio::task::spawn_blocking(move || check::batch(&host, batch))
                    .await
                    .map_err(|e| IngestError::Internal(format!("batch check failed: {e}")))??
            };
            let malformed = malformed_alert(&batch);
            let pending = writer.append(batch).await?;
            if let Some(alert) = malformed {
                writer.record(alert).await?;
            }
            Ok(Step::Ack(chain_id, pending))
        }
        Msg::Hole(hole) => {
            let chain_id = hole.chain_id.clone();
            let batch = check::hole(host, hole)?;
            Ok(Step::Ack(chain_id, writer.append(batch).await?))
        }
        Msg::Checkpoint(_) => Err(IngestError::Internal(
            "a checkpoint reached the batch path".into(),
        )),
    }
}

/// One alert for the malformed records of a batch, which are stored as they came: an
/// agent's bug or a hostile agent must neither stop its host's shipping nor flood the
/// collector's chain with an alert per record.
fn malformed_alert(batch: &Batch) -> Option<Own> {
    let mut faulty = batch
        .records
        .iter()
        .filter_map(|r| Some((r.seq, r.derived.fault.as_deref()?)));
    let (first, fault) = faulty.next()?;
    let more = faulty.count();
    tracing::warn!(
        host = batch.host,
        chain = batch.chain_id,
        seq = first,
        more,
        fault,
        "malformed records kept, flagged"
    );
    Some(Own::alert(
        &batch.host,
        Body::Alert(Alert {
            kind: "malformed_record".into(),
            host: batch.host.clone(),
            chain_id: batch.chain_id.clone(),
            seq: first,
            message: format!(
                "{} record(s) of this batch, from seq {first}, are not records an agent may \
                 send; they are kept verbatim as kind malformed. The first: {fault}",
                more + 1
            ),
            hole: None,
        }),
    ))
}

/// Reads the agent's messages: Hello first, then batches and checkpoints.
async fn read(mut inbound: Streaming<AgentMessage>, reader: Reader) {
    let Reader {
        store,
        witness,
        writer,
        views,
        speaker,
        out,
        steps,
        acks_ended,
        liveness,
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
    if let Err(e) = check::hello(&hello) {
        return fail(e.into()).await;
    }
    if let Err(status) = speaker.may_speak_for(&hello.host, "a Hello").await {
        return fail(status).await;
    }
    for chain_id in &hello.chain_ids {
        if let Err(status) = speaker.may_ship_chain(chain_id).await {
            return fail(status).await;
        }
    }
    // Another collector on the same database may have stored this host's records since the
    // writer last read them: the batches of this stream are judged against the store.
    if let Err(e) = writer.refresh(hello.host.clone()).await {
        return fail(e.into()).await;
    }
    let welcome = match welcome(&store, witness.as_deref(), &hello).await {
        Ok(w) => w,
        Err(e) => return fail(e.into()).await,
    };
    tracing::info!(host = %hello.host, name = %hello.host_name, version = %hello.agent_version, chains = hello.chain_ids.len(), "agent connected");
    let contact = Contact::open(&liveness, &writer, &hello).await;
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
                msg: Some(Msg::Heartbeat(_)),
            })) => {
                contact.heard(&writer).await;
                continue;
            }
            Ok(Some(AgentMessage { msg: Some(msg) })) => {
                contact.heard(&writer).await;
                step(&writer, witness.as_deref(), &speaker, &hello.host, msg)
                    .await
                    .unwrap_or_else(Step::Fail)
            }
        };
        let failed = matches!(step, Step::Fail(_));
        if steps.send(step).await.is_err() || failed {
            return;
        }
    }
}

/// One stream's part in its host's liveness: counted while open, and every message is
/// contact.
struct Contact {
    liveness: Arc<Liveness>,
    host: String,
}

impl Contact {
    async fn open(liveness: &Arc<Liveness>, writer: &WriterHandle, hello: &Hello) -> Self {
        let back = liveness.connected(hello);
        let contact = Self {
            liveness: Arc::clone(liveness),
            host: hello.host.clone(),
        };
        if back {
            contact.back(writer).await;
        }
        contact
    }

    async fn heard(&self, writer: &WriterHandle) {
        if self.liveness.heard(&self.host) {
            self.back(writer).await;
        }
    }

    async fn back(&self, writer: &WriterHandle) {
        tracing::info!(host = %self.host, "host back");
        let alert = liveness::alert(
            "host_back",
            &self.host,
            "heard from again after it was silent".into(),
        );
        if let Err(error) = writer.record(alert).await {
            tracing::error!(%error, "cannot chain a host_back alert");
        }
    }
}

impl Drop for Contact {
    fn drop(&mut self) {
        self.liveness.disconnected(&self.host);
    }
}

/// Checks the Hello, and answers where each chain it names stands in the store. Only the
/// host's own chains are read, so a connection costs what its host has stored, not what
/// every host has; a chain stored as another host's is answered as empty (the writer
/// refuses its records from this host anyway), and says nothing of that host.
async fn welcome(
    store: &Arc<dyn Store>,
    witness: Option<&Witness>,
    hello: &Hello,
) -> Result<CollectorMessage, IngestError> {
    check::hello(hello)?;
    let log = match witness {
        Some(witness) => {
            let (store, host) = (Arc::clone(store), hello.host.clone());
            let row = blocking(move || store.log(&host)).await?;
            Some(log_state(witness, &hello.host, row)?)
        }
        None => None,
    };
    let (store, host) = (Arc::clone(store), hello.host.clone());
    let chains: HashMap<String, ChainState> = blocking(move || store.host_chains(&host))
        .await?
        .into_iter()
        .map(|c| (c.chain_id.clone(), c))
        .collect();
    let heads = hello
        .chain_ids
        .iter()
        .map(|id| {
            let stored = chains.get(id);
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
        msg: Some(collector_message::Msg::Welcome(Welcome { heads, log })),
    })
}

/// The host's log as Welcome tells it: its size, compact range and last cosigned note.
fn log_state(
    witness: &Witness,
    host: &str,
    row: Option<crate::store::LogRow>,
) -> Result<LogState, IngestError> {
    let (size, frontier, cosigned) = match row {
        Some(row) => {
            let range = tlog::CompactRange::from_bytes(&row.frontier).map_err(|e| {
                IngestError::Internal(format!("the stored log of host {host} is damaged: {e}"))
            })?;
            let frontier = range.frontier().iter().map(|h| h.to_vec()).collect();
            (row.size, frontier, row.cosigned_note)
        }
        None => (0, Vec::new(), String::new()),
    };
    Ok(LogState {
        origin: witness.origin(host),
        size,
        frontier,
        cosigned,
        witness_cert_pem: witness.cert_pem.clone(),
    })
}
