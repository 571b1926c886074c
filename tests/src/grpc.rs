//! What the collector-tier tests share: chains built as an agent builds them
//! (`proto::chain::Chain` over serialized `recorder.v1.Event`s), an ingest stream that
//! speaks as an agent, and Query helpers. Behind the `grpc` feature, so `cargo xtask`, which
//! builds this crate before setup has installed `protoc`, does without it.

use std::{collections::VecDeque, time::Duration};

use crate::collector::Collector;
use pki::{ClientIdentity, Role};
use prost::Message as _;
use proto::{
    chain,
    v1::{
        AgentMessage, ChainStart, ChainVerdict, ChainedEvent, Checkpoint, CheckpointAck,
        CollectorMessage, Event, EventBatch, Filter, GrantView, Heartbeat, Hello, SearchRequest,
        SpoolHole, StoredEvent, VerifyRequest, VerifyResponse, Welcome, agent_message::Msg,
        collector_message, event::Body, ingest_client::IngestClient, query_client::QueryClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, transport::Channel};

/// A chain as an agent makes it: record 0 is its `ChainStart`.
pub struct Chain {
    pub id: String,
    pub records: Vec<ChainedEvent>,
    builder: chain::Chain,
}

impl Chain {
    /// A chain of `host` holding only its `ChainStart`, made at `time`.
    #[must_use]
    pub fn start(id: &str, host: &str, time: u64) -> Self {
        Self::start_after(id, host, time, None)
    }

    /// A chain of `host` whose `ChainStart` names `previous` (its chain and record count)
    /// as the head of the spool it started on, as a restarted agent's does.
    #[must_use]
    pub fn start_after(id: &str, host: &str, time: u64, previous: Option<(&Chain, usize)>) -> Self {
        let mut chain = Self {
            id: id.into(),
            records: Vec::new(),
            builder: chain::Chain::new(id.into()),
        };
        chain.push(&Event {
            time_unix_nano: time,
            body: Some(Body::ChainStart(ChainStart {
                host: host.into(),
                boot_id: "boot".into(),
                previous_chain_id: previous.map(|(c, _)| c.id.clone()).unwrap_or_default(),
                previous_seq: previous.map_or(0, |(_, len)| len as u64 - 1),
                previous_hash: previous.map(|(c, len)| c.head(len)).unwrap_or_default(),
                host_name: format!("name-of-{host}"),
            })),
            ..Event::default()
        });
        chain
    }

    pub fn push(&mut self, event: &Event) {
        self.push_bytes(event.encode_to_vec());
    }

    /// Chains `bytes` as they are, whatever they are.
    pub fn push_bytes(&mut self, bytes: Vec<u8>) {
        self.records.push(self.builder.record(bytes));
    }

    #[must_use]
    pub fn batch(&self, range: std::ops::Range<usize>) -> EventBatch {
        EventBatch {
            chain_id: self.id.clone(),
            events: self.records[range].to_vec(),
        }
    }

    #[must_use]
    pub fn head(&self, len: usize) -> Vec<u8> {
        self.records[len - 1].hash.clone()
    }
}

/// One agent stream.
#[derive(Debug)]
pub struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<CollectorMessage>,
    /// Grant views that arrived while an ack was awaited.
    views: VecDeque<GrantView>,
}

impl Agent {
    /// Connects as `who` and says `hello`: the Welcome, or the status that refused it.
    pub async fn try_connect(
        collector: &Collector,
        who: As<'_>,
        hello: Hello,
    ) -> Result<(Self, Welcome), Status> {
        let (tx, out) = mpsc::channel(64);
        tx.send(AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await
        .unwrap();
        let mut client = IngestClient::new(channel(collector, who).await);
        let mut rx = client.stream(ReceiverStream::new(out)).await?.into_inner();
        match rx.message().await? {
            Some(CollectorMessage {
                msg: Some(collector_message::Msg::Welcome(w)),
            }) => Ok((
                Self {
                    tx,
                    rx,
                    views: VecDeque::new(),
                },
                w,
            )),
            other => Err(Status::unknown(format!("expected Welcome, got {other:?}"))),
        }
    }

    /// Says Hello as `host`, naming `chain_ids`, and returns the Welcome.
    pub async fn connect(collector: &Collector, host: &str, chain_ids: &[&str]) -> (Self, Welcome) {
        let (tx, out) = mpsc::channel(64);
        tx.send(AgentMessage {
            msg: Some(Msg::Hello(Hello {
                host: host.into(),
                chain_ids: chain_ids.iter().map(|s| (*s).to_owned()).collect(),
                agent_version: "test".into(),
                host_name: String::new(),
            })),
        })
        .await
        .unwrap();
        let mut client = IngestClient::new(channel(collector, As::Agent(host)).await);
        let mut rx = client
            .stream(ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        let welcome = match rx.message().await.unwrap() {
            Some(CollectorMessage {
                msg: Some(collector_message::Msg::Welcome(w)),
            }) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        (
            Self {
                tx,
                rx,
                views: VecDeque::new(),
            },
            welcome,
        )
    }

    pub async fn send(&self, batch: EventBatch) {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Batch(batch)),
            })
            .await
            .unwrap();
    }

    /// Sends one batch; false when the stream has ended (the collector went away).
    pub async fn try_send(&self, batch: EventBatch) -> bool {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Batch(batch)),
            })
            .await
            .is_ok()
    }

    /// Says the agent is alive, as a real one does every few seconds.
    pub async fn heartbeat(&self) {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Heartbeat(Heartbeat {})),
            })
            .await
            .unwrap();
    }

    pub async fn checkpoint(&self, checkpoint: Checkpoint) {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Checkpoint(checkpoint)),
            })
            .await
            .unwrap();
    }

    /// The collector's next message, or the status that ended the stream.
    async fn next(&mut self) -> Result<collector_message::Msg, Status> {
        let next = tokio::time::timeout(Duration::from_secs(30), self.rx.message())
            .await
            .expect("an answer within 30 s")?;
        next.and_then(|m| m.msg)
            .ok_or_else(|| Status::unknown("the stream ended without a status"))
    }

    /// The next ack's seq, or the status that ended the stream. Grant views on the way are
    /// kept for `grant_view`.
    pub async fn ack(&mut self) -> Result<u64, Status> {
        loop {
            match self.next().await? {
                collector_message::Msg::Ack(ack) => return Ok(ack.seq),
                collector_message::Msg::Grants(view) => self.views.push_back(view),
                other @ collector_message::Msg::Welcome(_) => {
                    panic!("expected Ack, got {other:?}")
                }
            }
        }
    }

    /// The answer to the next checkpoint, or the status that ended the stream. Acks of
    /// batches and grant views on the way are passed over.
    pub async fn checkpoint_ack(&mut self) -> Result<CheckpointAck, Status> {
        loop {
            match self.next().await? {
                collector_message::Msg::Ack(ack) => {
                    if let Some(answer) = ack.checkpoint {
                        return Ok(answer);
                    }
                }
                collector_message::Msg::Grants(view) => self.views.push_back(view),
                other @ collector_message::Msg::Welcome(_) => {
                    panic!("expected Ack, got {other:?}")
                }
            }
        }
    }

    /// Declares a hole in the spool (collector.proto, `SpoolHole`) and returns its answer.
    pub async fn hole(&mut self, hole: SpoolHole) -> Result<u64, Status> {
        self.tx
            .send(AgentMessage {
                msg: Some(Msg::Hole(hole)),
            })
            .await
            .unwrap();
        self.ack().await
    }

    /// Sends one batch and returns its answer.
    pub async fn ship(&mut self, batch: EventBatch) -> Result<u64, Status> {
        self.send(batch).await;
        self.ack().await
    }

    /// The next grant view the collector sent.
    pub async fn grant_view(&mut self) -> GrantView {
        if let Some(view) = self.views.pop_front() {
            return view;
        }
        match self.next().await {
            Ok(collector_message::Msg::Grants(view)) => view,
            other => panic!("expected a GrantView, got {other:?}"),
        }
    }
}

/// Whom a test's gRPC client speaks as.
#[derive(Clone, Copy, Debug)]
pub enum As<'a> {
    /// The agent of this host.
    Agent(&'a str),
    Operator(&'a str, Role),
}

/// A channel to `collector` presenting `who`'s certificate from the collector's test PKI
/// (plaintext when it serves plaintext).
pub async fn channel(collector: &Collector, who: As<'_>) -> Channel {
    let Some(pki) = &collector.pki else {
        return tonic::transport::Endpoint::from_shared(collector.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
    };
    let (dir, name) = match who {
        As::Agent(host) => (pki.agent(host), "agent"),
        As::Operator(operator, role) => (pki.operator(operator, role), "operator"),
    };
    let identity = ClientIdentity::load(
        &dir.join("ca.pem"),
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
    )
    .unwrap();
    pki::endpoint(&collector.url(), &identity, None)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The Query service, as an admin operator.
pub async fn query(collector: &Collector) -> QueryClient<Channel> {
    QueryClient::new(channel(collector, As::Operator("test-admin", Role::Admin)).await)
}

/// Every stored event matching `filter`, through all pages of `limit`.
pub async fn search_all(collector: &Collector, filter: Filter, limit: u32) -> Vec<StoredEvent> {
    let mut client = query(collector).await;
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .search(SearchRequest {
                filter: Some(filter.clone()),
                limit,
                page_token,
                ..SearchRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= limit as usize);
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// Everything verify checks: every chain, every host's log, and what it found.
pub async fn verify_all(collector: &Collector) -> VerifyResponse {
    query(collector)
        .await
        .verify(VerifyRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// The verdicts on one stored chain, or the collector's refusal.
pub async fn try_verify(
    collector: &Collector,
    chain_id: &str,
) -> Result<Vec<ChainVerdict>, tonic::Status> {
    Ok(query(collector)
        .await
        .verify(VerifyRequest {
            chain_id: chain_id.into(),
            ..VerifyRequest::default()
        })
        .await?
        .into_inner()
        .chains)
}

/// The verdict on one stored chain.
pub async fn verify(collector: &Collector, chain_id: &str) -> ChainVerdict {
    let mut verdicts = try_verify(collector, chain_id).await.unwrap();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    verdicts.remove(0)
}
