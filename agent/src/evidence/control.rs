//! The inbound half of the ingest stream: what the collector tells this agent. Acks say
//! how much of each chain it holds durably, which decides the spool segments that can go
//! (deleted by the evidence stage, which owns the spool); cosigned checkpoints become
//! receipts; grant views go to the enforcer.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use std::sync::Arc;

use anyhow::Context as _;
use proto::v1::{self, CollectorMessage, GrantView, collector_message::Msg};
use tokio::sync::{mpsc, watch};

use super::log::Receipts;

/// A sealed spool segment the collector holds entirely.
#[derive(Debug)]
pub struct Trim {
    pub segment: PathBuf,
    pub bytes: u64,
}

/// To the evidence stage, which owns the spool.
pub type Trims = mpsc::UnboundedSender<Trim>;

/// Where the collector's word goes.
pub struct Control {
    pub views: watch::Sender<Option<GrantView>>,
    pub trims: Trims,
    pub receipts: Arc<Receipts>,
    /// Events to chain: receipts, and alerts about the collector.
    pub events: mpsc::Sender<Vec<v1::Event>>,
}

impl Control {
    /// Takes one message of the collector's. Fails when a cosigned checkpoint does not
    /// verify: this collector's word cannot be kept.
    pub async fn receive(
        &self,
        message: CollectorMessage,
        ledger: &Ledger,
        signer: Option<&tlog::Signer>,
    ) -> anyhow::Result<()> {
        match message.msg {
            Some(Msg::Ack(ack)) => match ack.checkpoint {
                Some(answer) => {
                    let signer = signer.context("a checkpoint answer, but none was sent")?;
                    if let Some(receipt) = self.receipts.answer(signer, &answer)? {
                        self.chain(receipt).await;
                    }
                }
                None => ledger.acked(ack.chain_id, ack.seq, &self.trims),
            },
            Some(Msg::Grants(view)) => {
                self.views.send_replace(Some(view));
            }
            Some(Msg::Welcome(_)) | None => {}
        }
        Ok(())
    }

    /// The collector holds fewer leaves of this host's log than a checkpoint it cosigned:
    /// it was rolled back (a restored backup, a replaced database). Chained as an alert;
    /// the spool is trimmed only as far as the collector holds now.
    pub async fn rollback(&self, host: &str, holds: u64, cosigned: u64) {
        let message = format!(
            "the collector holds {holds} leaves of this host's log, but cosigned a checkpoint of {cosigned}: it was rolled back"
        );
        tracing::error!(holds, cosigned, "{message}");
        self.chain(alert(host, "collector_rollback", "", cosigned, message))
            .await;
    }

    async fn chain(&self, event: v1::Event) {
        // The evidence stage has ended once the agent stops.
        let _ = self.events.send(vec![event]).await;
    }
}

/// An alert the agent chains about its own evidence (event.proto, `Alert`).
#[must_use]
pub fn alert(host: &str, kind: &str, chain_id: &str, seq: u64, message: String) -> v1::Event {
    v1::Event {
        time_unix_nano: proto::time::now_unix_nano(),
        body: Some(v1::event::Body::Alert(v1::Alert {
            kind: kind.to_owned(),
            host: host.to_owned(),
            chain_id: chain_id.to_owned(),
            seq,
            message,
            hole: None,
        })),
        ..v1::Event::default()
    }
}

/// A sealed segment read to its end.
struct Read {
    segment: PathBuf,
    chain: String,
    last_seq: u64,
    bytes: u64,
}

/// What the collector holds, and which read segments can go once it holds all of them.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Highest seq the collector holds durably, by chain.
    acked: HashMap<String, u64>,
    read: Vec<Read>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The collector holds `chain` up to `seq`.
    pub fn acked(&self, chain: String, seq: u64, trims: &Trims) {
        let mut inner = self.lock();
        inner.acked.insert(chain, seq);
        inner.trim(trims);
    }

    /// A sealed segment was read to its end.
    pub fn segment_read(
        &self,
        segment: PathBuf,
        chain: String,
        last_seq: u64,
        bytes: u64,
        trims: &Trims,
    ) {
        let mut inner = self.lock();
        inner.read.push(Read {
            segment,
            chain,
            last_seq,
            bytes,
        });
        inner.trim(trims);
    }
}

impl Inner {
    /// Hands over every read segment the collector holds entirely.
    fn trim(&mut self, trims: &Trims) {
        let acked = &self.acked;
        self.read.retain(|r| {
            if acked.get(&r.chain).is_none_or(|a| *a < r.last_seq) {
                return true;
            }
            // The evidence stage has ended once the agent stops; the next start trims it.
            let _ = trims.send(Trim {
                segment: r.segment.clone(),
                bytes: r.bytes,
            });
            false
        });
    }
}
