//! The inbound half of the ingest stream: what the collector tells this agent. Acks say
//! how much of each chain it holds durably, which decides the spool segments that can go
//! (deleted by the evidence stage, which owns the spool); grant views go to the enforcer.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use proto::v1::{Checkpoint, CollectorMessage, GrantView, collector_message::Msg};
use tokio::sync::{mpsc, watch};

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
}

impl Control {
    /// Takes one message of the collector's. An ack is answered with a checkpoint of the
    /// acknowledged head, when that head is the last record sent.
    pub fn receive(&self, message: CollectorMessage, ledger: &Ledger) -> Option<Checkpoint> {
        match message.msg? {
            // TODO(issue 11): signed checkpoints.
            Msg::Ack(ack) => {
                ledger.acked(ack.chain_id, ack.seq, &self.trims);
                None
            }
            Msg::Grants(view) => {
                self.views.send_replace(Some(view));
                None
            }
            Msg::Welcome(_) => None,
        }
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
    /// Hash of the last record sent, by chain and seq, for checkpoints.
    sent: HashMap<String, (u64, Vec<u8>)>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The collector holds `chain` up to `seq`: returns the hash sent at `seq`, when it was
    /// the last record sent, for a checkpoint of the acked head.
    pub fn acked(&self, chain: String, seq: u64, trims: &Trims) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        let head = inner
            .sent
            .get(&chain)
            .filter(|(sent, _)| *sent == seq)
            .map(|(_, hash)| hash.clone());
        inner.acked.insert(chain, seq);
        inner.trim(trims);
        head
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

    /// The last record sent of `chain`.
    pub fn sent(&self, chain: String, seq: u64, hash: Vec<u8>) {
        self.lock().sent.insert(chain, (seq, hash));
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
