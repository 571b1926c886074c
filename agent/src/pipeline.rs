//! Wiring only: the stages, each a tokio task, joined by bounded channels, and the control
//! channels between them and the enforcer. Data flows one way:
//!
//! ```text
//! reader ─► decode ─► attribute ─► judge ─► encode ─► [stdout] ─► chain+spool ─► ship ═► collector
//!              │                     │                                ▲   ▲         │
//!              └─ kernel kills ─┐    └─ actions ─┐                    │   └─ trims ─┤ control
//!                               ▼                ▼                    │             │ (acks,
//!                               enforcer ◄─ grant views ──────────────┼─────────────┘  views)
//!                               └──────────── kill events ───────────┘
//! ```
//!
//! Only the reader drops batches, and counts what it drops (`capture::reader`); every later
//! stage waits for room, so a stalled stage backs up into the reader's channel, where the
//! loss is counted and becomes a gap record. The spool is made durable once per batch.

use std::sync::Arc;

use proto::v1;
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet, block_in_place},
};
use tonic::transport::Endpoint;
use tracing::Instrument as _;
use tracing::info_span;

use crate::{
    capture::{decode, event::Event, reader::Batch},
    enforce::{Enforcer, Inputs, Outputs, judge::Judge, rules::Rules},
    evidence::{Evidence, control::Control, encode::Encode, ship::Shipper},
    identity::attribute::Attribute,
    sinks::{metrics::Health, stdout::Stdout},
};

/// Batches in flight between two stages after the reader.
const STAGE_DEPTH: usize = 16;

/// What the events are for. Without any, the pipeline only decodes and counts.
pub struct Sinks {
    pub stdout: Option<Stdout>,
    pub evidence: Option<Evidence>,
    /// The collector the evidence is shipped to.
    pub collector: Option<Endpoint>,
}

/// The running stages, and the ship stage, which outlives them: it sends what they made
/// durable until it catches up or is given up on.
pub struct Running {
    pub stages: JoinSet<anyhow::Result<()>>,
    pub ship: Option<JoinHandle<()>>,
}

/// Starts the stages on the current tokio runtime, fed by `batches`. They finish, in order,
/// once the reader hangs up and each has passed on everything it received.
pub fn spawn(
    batches: mpsc::Receiver<Batch>,
    attribute: Attribute,
    rules: Rules,
    enforcer: Enforcer,
    sinks: Sinks,
    health: &Arc<Health>,
) -> Running {
    let mut stages = JoinSet::new();
    let (kills_tx, kills_rx) = mpsc::unbounded_channel();
    if sinks.stdout.is_none() && sinks.evidence.is_none() {
        drop(kills_rx);
        stages.spawn(
            decode_stage(batches, Arc::clone(health), None, kills_tx).instrument(info_span!("decode")),
        );
        return Running { stages, ship: None };
    }
    let (decoded_tx, decoded_rx) = mpsc::channel(STAGE_DEPTH);
    let (modelled_tx, modelled_rx) = mpsc::channel(STAGE_DEPTH);
    let (enforced_tx, enforced_rx) = mpsc::channel(STAGE_DEPTH);
    let (actions_tx, actions_rx) = mpsc::unbounded_channel();
    let (views_tx, views_rx) = watch::channel(None);
    let (view_tx, view_rx) = watch::channel(enforcer.view());
    let (trims_tx, trims_rx) = mpsc::unbounded_channel();

    stages.spawn(
        decode_stage(batches, Arc::clone(health), Some(decoded_tx), kills_tx)
            .instrument(info_span!("decode")),
    );
    let judge = Judge::new(rules, enforcer.view());
    stages.spawn(
        attribute_stage(decoded_rx, attribute, judge, view_rx, actions_tx, modelled_tx)
            .instrument(info_span!("attribute")),
    );
    let inputs = Inputs {
        views: views_rx,
        actions: actions_rx,
        kernel_kills: kills_rx,
    };
    let outputs = Outputs {
        view: view_tx,
        events: enforced_tx,
    };
    stages.spawn(
        async move {
            enforcer.run(inputs, outputs).await;
            Ok(())
        }
        .instrument(info_span!("enforce")),
    );
    let mut ship = None;
    let durable = sinks.evidence.as_ref().map(|evidence| {
        let (durable_tx, durable_rx) = watch::channel(evidence.durable());
        if let Some(endpoint) = sinks.collector {
            let shipper = Shipper {
                endpoint,
                dir: evidence.dir().to_path_buf(),
                host: evidence.host().to_owned(),
                durable: durable_rx,
                control: Control {
                    views: views_tx,
                    trims: trims_tx,
                },
            };
            ship = Some(tokio::spawn(shipper.run().instrument(info_span!("ship"))));
        }
        durable_tx
    });
    let evidence = EvidenceStage {
        stdout: sinks.stdout,
        evidence: sinks.evidence,
        durable,
        health: Arc::clone(health),
    };
    stages.spawn(
        evidence
            .run(modelled_rx, enforced_rx, trims_rx)
            .instrument(info_span!("evidence")),
    );
    Running { stages, ship }
}

async fn decode_stage(
    mut batches: mpsc::Receiver<Batch>,
    health: Arc<Health>,
    next: Option<mpsc::Sender<Vec<Event>>>,
    kills: mpsc::UnboundedSender<Vec<Event>>,
) -> anyhow::Result<()> {
    while let Some(batch) = batches.recv().await {
        let decoded = decode::process(batch, &health);
        if !decoded.kills.is_empty() {
            // Without an enforcer (`--discard`) nobody names them; they are counted above.
            let _ = kills.send(decoded.kills);
        }
        if let Some(next) = &next
            && next.send(decoded.events).await.is_err()
        {
            break;
        }
    }
    Ok(())
}

/// Attribute, judge and encode, one batch at a time.
async fn attribute_stage(
    mut decoded: mpsc::Receiver<Vec<Event>>,
    mut attribute: Attribute,
    mut judge: Judge,
    mut view: watch::Receiver<Option<Arc<crate::enforce::rules::View>>>,
    actions: mpsc::UnboundedSender<Vec<crate::enforce::judge::Action>>,
    next: mpsc::Sender<Vec<v1::Event>>,
) -> anyhow::Result<()> {
    let mut encode = Encode::default();
    while let Some(events) = decoded.recv().await {
        if view.has_changed().unwrap_or(false) {
            judge.adopt(view.borrow_and_update().clone());
        }
        let (judged, acts) = judge.process(attribute.process(events));
        if !acts.is_empty() {
            // The enforcer runs as long as this stage does.
            let _ = actions.send(acts);
        }
        if next.send(encode.process(judged)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Where the pipeline's events and the enforcer's meet: written to standard output when
/// asked, then chained and made durable.
struct EvidenceStage {
    stdout: Option<Stdout>,
    evidence: Option<Evidence>,
    durable: Option<watch::Sender<crate::evidence::spool::Durable>>,
    health: Arc<Health>,
}

impl EvidenceStage {
    async fn run(
        mut self,
        mut modelled: mpsc::Receiver<Vec<v1::Event>>,
        mut enforced: mpsc::Receiver<Vec<v1::Event>>,
        mut trims: mpsc::UnboundedReceiver<crate::evidence::control::Trim>,
    ) -> anyhow::Result<()> {
        self.gauges();
        let (mut pipeline_open, mut enforcer_open) = (true, true);
        while pipeline_open || enforcer_open {
            let events = tokio::select! {
                events = modelled.recv(), if pipeline_open => {
                    let Some(events) = events else {
                        pipeline_open = false;
                        continue;
                    };
                    events
                }
                events = enforced.recv(), if enforcer_open => {
                    let Some(events) = events else {
                        enforcer_open = false;
                        continue;
                    };
                    events
                }
                Some(trim) = trims.recv() => {
                    if let Some(evidence) = &mut self.evidence {
                        block_in_place(|| evidence.trim(&trim));
                        self.gauges();
                    }
                    continue;
                }
            };
            // Standard output may be a pipe its reader has stalled, and the spool syncs:
            // block this thread, not the runtime's other stages.
            block_in_place(|| self.write(&events))?;
        }
        Ok(())
    }

    fn write(&mut self, events: &[v1::Event]) -> anyhow::Result<()> {
        if let Some(stdout) = &mut self.stdout {
            stdout.process(events)?;
        }
        if let Some(evidence) = &mut self.evidence {
            let durable = evidence.process(events)?;
            if let Some(tx) = &self.durable {
                tx.send_replace(durable);
            }
            self.gauges();
        }
        Ok(())
    }

    fn gauges(&self) {
        if let Some(evidence) = &self.evidence {
            use std::sync::atomic::Ordering::Relaxed;
            self.health
                .spool_bytes
                .store(evidence.spool_bytes(), Relaxed);
            self.health
                .spool_refused
                .store(evidence.refused_total(), Relaxed);
        }
    }
}
