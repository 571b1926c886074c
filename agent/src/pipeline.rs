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
//! The decode stage also looks up each exec's file digest (`capture::image`); a file not
//! yet read goes to the image reader thread, whose digest events join the attribute stage's
//! input.
//!
//! Only the reader drops batches, and counts what it drops (`capture::reader`); every later
//! stage waits for room, so a stalled stage backs up into the reader's channel, where the
//! loss is counted and becomes a gap record. The spool is made durable once per batch.

use std::sync::{Arc, OnceLock};

use proto::v1;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet, block_in_place},
    time::Instant,
};
use tracing::Instrument as _;
use tracing::info_span;

use crate::{
    capture::{
        coalesce::Coalesce,
        decode,
        event::Event,
        fold::{Fold, HOLD},
        image::Images,
        reader::Batch,
    },
    enforce::{
        Enforcer, Inputs, Outputs,
        judge::Judge,
        rules::{Rules, View},
    },
    evidence::{
        Evidence,
        control::Control,
        encode::Encode,
        link::{self, Link},
        log::Receipts,
        ship::Shipper,
    },
    identity::attribute::Attribute,
    sinks::{metrics::Health, stdout::Stdout},
};

/// Batches in flight between two stages after the reader.
const STAGE_DEPTH: usize = 16;
/// The spool is made durable at most this often while batches keep coming (the rings are
/// drained every `--drain-ms`, or sooner under a flood); a batch after a quiet spell is
/// synced at once. Each sync is also a batch shipped and a commit at the collector, and an
/// `fdatasync` here: at 10 ms, a loop of execs spent a quarter of the agent's CPU in the
/// sync alone (docs/capture.md, "One sync each 50 ms"). Every batch is written to the file
/// as it comes, so killing the agent loses none of it; only a crash of the host can lose
/// what this interval holds.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What the events are for. Without any, the pipeline only decodes and counts.
pub struct Sinks {
    pub stdout: Option<Stdout>,
    pub evidence: Option<Evidence>,
    /// The collector the evidence is shipped to.
    pub collector: Option<Link>,
    /// Why the agent is stopping, once it is asked to: the chain's last record says so.
    pub stop_reason: Arc<OnceLock<&'static str>>,
}

/// The running stages, and the ship stage, which outlives them: it sends what they made
/// durable until it catches up or is given up on.
pub struct Running {
    pub stages: JoinSet<anyhow::Result<()>>,
    pub ship: Option<JoinHandle<()>>,
}

/// What the stages are made of, besides the kernel's batches.
pub struct Parts {
    pub attribute: Attribute,
    pub encode: Encode,
    pub rules: Rules,
    pub enforcer: Enforcer,
    /// The view the enforcer publishes to the judge (and the registration API).
    pub view: watch::Sender<Option<Arc<View>>>,
    /// Events the agent itself makes (kills, registrations), to be chained; the sender is
    /// shared with the registration API.
    pub agent_events: (mpsc::Sender<Vec<v1::Event>>, mpsc::Receiver<Vec<v1::Event>>),
}

/// Starts the stages on the current tokio runtime, fed by `batches`. They finish, in order,
/// once the reader hangs up and each has passed on everything it received.
pub fn spawn(
    batches: mpsc::Receiver<Batch>,
    parts: Parts,
    sinks: Sinks,
    health: &Arc<Health>,
) -> Running {
    let mut stages = JoinSet::new();
    let (kills_tx, kills_rx) = mpsc::unbounded_channel();
    if sinks.stdout.is_none() && sinks.evidence.is_none() {
        drop((kills_rx, parts));
        stages.spawn(
            decode_stage(batches, Arc::clone(health), None, kills_tx)
                .instrument(info_span!("decode")),
        );
        return Running { stages, ship: None };
    }
    let Parts {
        attribute,
        encode,
        rules,
        enforcer,
        view: view_tx,
        agent_events: (agent_events_tx, agent_events_rx),
    } = parts;
    let (decoded_tx, decoded_rx) = mpsc::channel(STAGE_DEPTH);
    let (modelled_tx, modelled_rx) = mpsc::channel(STAGE_DEPTH);
    let (actions_tx, actions_rx) = mpsc::unbounded_channel();
    let (views_tx, views_rx) = watch::channel(None);
    let view_rx = view_tx.subscribe();
    let (trims_tx, trims_rx) = mpsc::unbounded_channel();

    stages.spawn(
        decode_stage(batches, Arc::clone(health), Some(decoded_tx), kills_tx)
            .instrument(info_span!("decode")),
    );
    let judge = Judge::new(rules, enforcer.view());
    stages.spawn(
        attribute_stage(
            decoded_rx,
            attribute,
            encode,
            judge,
            view_rx,
            actions_tx,
            modelled_tx,
        )
        .instrument(info_span!("attribute")),
    );
    let inputs = Inputs {
        views: views_rx,
        actions: actions_rx,
        kernel_kills: kills_rx,
    };
    let outputs = Outputs {
        view: view_tx,
        events: agent_events_tx.clone(),
    };
    let (enforcer_done, enforcer_done_rx) = oneshot::channel();
    stages.spawn(
        async move {
            enforcer.run(inputs, outputs).await;
            let _ = enforcer_done.send(());
            Ok(())
        }
        .instrument(info_span!("enforce")),
    );
    let mut ship = None;
    let durable = sinks.evidence.as_ref().map(|evidence| {
        let (durable_tx, durable_rx) = watch::channel(evidence.durable());
        if let Some(link) = sinks.collector {
            tokio::spawn(link::renew_in_time(link.clone()).instrument(info_span!("renew")));
            let shipper = Shipper {
                link,
                dir: evidence.dir().to_path_buf(),
                host: evidence.host().to_owned(),
                name: evidence.name().to_owned(),
                durable: durable_rx,
                control: Control {
                    views: views_tx,
                    trims: trims_tx,
                    receipts: Arc::new(Receipts::open(evidence.dir())),
                    events: agent_events_tx.clone(),
                },
                skips: Arc::default(),
            };
            ship = Some(tokio::spawn(shipper.run().instrument(info_span!("ship"))));
        }
        durable_tx
    });
    let evidence = EvidenceStage::new(
        sinks.stdout,
        sinks.evidence,
        durable,
        Arc::clone(health),
        sinks.stop_reason,
    );
    stages.spawn(
        evidence
            .run(modelled_rx, agent_events_rx, enforcer_done_rx, trims_rx)
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
    let mut fold = Fold::default();
    let mut coalesce = Coalesce::default();
    // Digests are for the events' sinks: without any, nothing is read.
    let mut images = next
        .as_ref()
        .map(|n| Images::start(n.clone()))
        .transpose()?;
    loop {
        // While misses or typed input are held, wake by their deadlines even if no batch
        // comes.
        let batch = if fold.holding() || coalesce.holding() {
            match tokio::time::timeout(HOLD, batches.recv()).await {
                Ok(batch) => batch,
                Err(_) => Some(Batch::default()),
            }
        } else {
            batches.recv().await
        };
        let Some(batch) = batch else { break };
        let decoded = decode::process(batch, &health);
        if !decoded.kills.is_empty() {
            // Without an enforcer (`--discard`) nobody names them; they are counted above.
            let _ = kills.send(decoded.kills);
        }
        let now = Instant::now();
        let mut events = fold.process(coalesce.process(decoded.events, now), now);
        if let Some(images) = &mut images {
            images.process(&mut events);
        }
        if let Some(next) = &next
            && !events.is_empty()
            && next.send(events).await.is_err()
        {
            return Ok(());
        }
        // Only now may the digests of its execs follow the batch: sent earlier, a digest
        // could reach the attribute stage before the fork and exec of its process.
        if let Some(images) = &images {
            images.passed_on();
        }
    }
    if let Some(next) = &next {
        let mut events = coalesce.drain();
        events.extend(fold.drain());
        if let Some(images) = &mut images {
            images.process(&mut events);
        }
        let _ = next.send(events).await;
        if let Some(images) = &images {
            images.passed_on();
        }
    }
    Ok(())
}

/// Attribute, judge and encode, one batch at a time.
async fn attribute_stage(
    mut decoded: mpsc::Receiver<Vec<Event>>,
    mut attribute: Attribute,
    mut encode: Encode,
    mut judge: Judge,
    mut view: watch::Receiver<Option<Arc<View>>>,
    actions: mpsc::UnboundedSender<Vec<crate::enforce::judge::Action>>,
    next: mpsc::Sender<Vec<v1::Event>>,
) -> anyhow::Result<()> {
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

/// Where the pipeline's events and those the agent makes itself (the enforcer's kills, the
/// registrations) meet: written to standard output when asked, then chained and made
/// durable.
struct EvidenceStage {
    stdout: Option<Stdout>,
    evidence: Option<Evidence>,
    durable: Option<watch::Sender<crate::evidence::spool::Durable>>,
    health: Arc<Health>,
    stop_reason: Arc<OnceLock<&'static str>>,
    /// When the spool was last made durable.
    committed: Instant,
}

impl EvidenceStage {
    fn new(
        stdout: Option<Stdout>,
        evidence: Option<Evidence>,
        durable: Option<watch::Sender<crate::evidence::spool::Durable>>,
        health: Arc<Health>,
        stop_reason: Arc<OnceLock<&'static str>>,
    ) -> Self {
        Self {
            stdout,
            evidence,
            durable,
            health,
            stop_reason,
            committed: Instant::now(),
        }
    }

    async fn run(
        mut self,
        mut modelled: mpsc::Receiver<Vec<v1::Event>>,
        mut own: mpsc::Receiver<Vec<v1::Event>>,
        mut enforcer_done: oneshot::Receiver<()>,
        mut trims: mpsc::UnboundedReceiver<crate::evidence::control::Trim>,
    ) -> anyhow::Result<()> {
        self.gauges();
        let mut pipeline_open = true;
        let mut enforcer_running = true;
        // When the events added since the last commit are to be made durable.
        let mut commit_at: Option<Instant> = None;
        while pipeline_open || enforcer_running {
            let events = tokio::select! {
                () = tokio::time::sleep_until(commit_at.unwrap_or_else(Instant::now)),
                    if commit_at.is_some() =>
                {
                    commit_at = None;
                    block_in_place(|| self.commit());
                    continue;
                }
                events = modelled.recv(), if pipeline_open => {
                    let Some(events) = events else {
                        pipeline_open = false;
                        continue;
                    };
                    events
                }
                Some(events) = own.recv() => events,
                _ = &mut enforcer_done, if enforcer_running => {
                    enforcer_running = false;
                    continue;
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
            // A batch after a quiet spell is durable at once; batches that follow closer
            // than `COMMIT_EVERY` wait for it and share one sync, one shipped batch and the
            // collector's one commit, instead of one each per drain of the rings.
            if commit_at.is_none() && self.evidence.as_ref().is_some_and(Evidence::uncommitted) {
                let due = self.committed + COMMIT_EVERY;
                if Instant::now() >= due {
                    block_in_place(|| self.commit());
                } else {
                    commit_at = Some(due);
                }
            }
        }
        // The enforcer's last kills, and registrations made while stopping.
        while let Ok(events) = own.try_recv() {
            block_in_place(|| self.write(&events))?;
        }
        block_in_place(|| self.commit());
        if let (Some(evidence), Some(reason)) = (&mut self.evidence, self.stop_reason.get()) {
            let durable = block_in_place(|| evidence.stop(reason));
            if let Some(tx) = &self.durable {
                tx.send_replace(durable);
            }
        }
        Ok(())
    }

    fn write(&mut self, events: &[v1::Event]) -> anyhow::Result<()> {
        if let Some(stdout) = &mut self.stdout {
            stdout.process(events)?;
        }
        if let Some(evidence) = &mut self.evidence {
            evidence.add(events);
            self.gauges();
        }
        Ok(())
    }

    /// Makes what was written durable, and tells the ship stage how far the spool now is.
    fn commit(&mut self) {
        self.committed = Instant::now();
        if let Some(evidence) = &mut self.evidence {
            let durable = evidence.commit();
            if let Some(tx) = &self.durable {
                tx.send_replace(durable);
            }
            self.gauges();
        }
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
