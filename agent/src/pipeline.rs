//! The stages after the reader, each a tokio task joined to the next by a bounded channel:
//! decode → attribute (process table, identity, the model and the JSON sink) → chain and
//! spool. Only the reader drops batches, and counts what it drops (`reader.rs`); every later
//! stage waits for room, so a stalled stage backs up into the reader's channel, where the
//! loss is counted and becomes a gap record. The spool is made durable once per batch.

use std::{
    io::{self, BufWriter, Write as _},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use anyhow::Context as _;
use prost::Message as _;
use proto::v1;
use tokio::{
    sync::{
        mpsc::{self, Receiver, Sender},
        watch,
    },
    task::{JoinSet, block_in_place},
};
use tonic::transport::Endpoint;
use tracing::{Instrument as _, debug_span, info, info_span, warn};

use crate::{
    attribute::{Attributor, Identity},
    chain::Chain,
    decode,
    enforce::{self, Judgement},
    event::{Body, Event, GapSource},
    metrics::Health,
    model::to_proto,
    output::{WallClock, write_json},
    proctable::ProcessTable,
    reader::{Batch, boot_ns},
    registry::Registry,
    ship::{Durable, Shipper},
    spool::{Spool, SpoolError},
};

/// Batches in flight between two stages after the reader.
const STAGE_DEPTH: usize = 16;

/// What the stages write to.
pub struct Sinks {
    /// JSON lines on standard output.
    pub stdout: bool,
    pub spool: Option<ChainedSpool>,
    /// The collector the spool is shipped to.
    pub collector: Option<Endpoint>,
    /// Grants and policy: judged against events, enforced on the expiry clock.
    pub enforcer: enforce::Shared,
}

/// The running stages, and the ship stage, which outlives them: it sends what they made
/// durable until it catches up or is given up on.
pub struct Running {
    pub stages: JoinSet<anyhow::Result<()>>,
    pub ship: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the stages on the current tokio runtime, fed by `batches`. They finish, in order,
/// once the reader hangs up and each has passed on everything it received.
pub fn spawn(
    batches: Receiver<Batch>,
    table: ProcessTable,
    registry: Arc<Registry>,
    sinks: Sinks,
    health: &Arc<Health>,
) -> Running {
    let mut stages = JoinSet::new();
    let mut ship = None;
    let (decoded_tx, decoded_rx) = mpsc::channel(STAGE_DEPTH);
    let (views_tx, views_rx) = watch::channel(None);
    let clock = enforce::clock(
        Arc::clone(&sinks.enforcer),
        views_rx,
        decoded_tx.downgrade(),
    );
    stages.spawn(
        async {
            clock.await;
            Ok(())
        }
        .instrument(info_span!("enforce")),
    );
    stages.spawn(decode_stage(batches, decoded_tx).instrument(info_span!("decode")));
    let model_tx = sinks.spool.map(|spool| {
        let (tx, rx) = mpsc::channel(STAGE_DEPTH);
        let (durable_tx, durable_rx) = watch::channel(spool.durable());
        if let Some(endpoint) = sinks.collector {
            let shipper = Shipper {
                endpoint,
                dir: spool.dir.clone(),
                host: spool.host.clone(),
                durable: durable_rx,
                freed: Arc::clone(&spool.freed),
                grants: views_tx,
            };
            ship = Some(tokio::spawn(shipper.run().instrument(info_span!("ship"))));
        }
        stages.spawn(
            spool_stage(spool, rx, durable_tx, Arc::clone(health)).instrument(info_span!("spool")),
        );
        tx
    });
    let attribute = Attribute {
        table,
        attributor: Attributor::new(registry),
        clock: WallClock::now(),
        stdout: sinks
            .stdout
            .then(|| BufWriter::with_capacity(1 << 20, io::stdout())),
        health: Arc::clone(health),
        enforcer: sinks.enforcer,
    };
    stages.spawn(
        attribute
            .run(decoded_rx, model_tx)
            .instrument(info_span!("attribute")),
    );
    Running { stages, ship }
}

async fn decode_stage(
    mut batches: Receiver<Batch>,
    next: Sender<Vec<Event>>,
) -> anyhow::Result<()> {
    while let Some(batch) = batches.recv().await {
        let events = {
            let _span = debug_span!("batch", bytes = batch.len_bytes()).entered();
            let mut events = Vec::new();
            for record in batch.records() {
                events.push(decode::decode(record).unwrap_or_else(|error| {
                    warn!(%error, "undecodable kernel record");
                    undecodable(record.len())
                }));
            }
            for gap in batch.gaps {
                warn!(?gap.body, "records lost");
                events.push(gap);
            }
            events
        };
        if next.send(events).await.is_err() {
            break;
        }
    }
    Ok(())
}

struct Attribute {
    table: ProcessTable,
    attributor: Attributor,
    clock: WallClock,
    stdout: Option<BufWriter<io::Stdout>>,
    health: Arc<Health>,
    enforcer: enforce::Shared,
}

impl Attribute {
    async fn run(
        mut self,
        mut decoded: Receiver<Vec<Event>>,
        next: Option<Sender<Vec<v1::Event>>>,
    ) -> anyhow::Result<()> {
        while let Some(events) = decoded.recv().await {
            let modelled = if self.stdout.is_some() {
                // Standard output may be a pipe its reader has stalled: block this thread,
                // not the runtime's other stages.
                block_in_place(|| self.batch(events, next.is_some()))
            } else {
                self.batch(events, next.is_some())
            }?;
            if let Some(next) = &next
                && next.send(modelled).await.is_err()
            {
                break;
            }
        }
        Ok(())
    }

    /// Attributes one batch, writes it as JSON when asked, and returns its model events
    /// when a later stage wants them.
    fn batch(&mut self, events: Vec<Event>, model: bool) -> io::Result<Vec<v1::Event>> {
        let _span = debug_span!("batch", events = events.len()).entered();
        self.clock.follow_steps();
        let mut modelled = Vec::with_capacity(if model { events.len() } else { 0 });
        let mut queue = std::collections::VecDeque::from(events);
        while let Some(mut event) = queue.pop_front() {
            let root = self.table.observe(&mut event);
            count(&self.health, &event);
            if self.stdout.is_none() && !model {
                continue;
            }
            let identity = event.process.as_ref().map(|p| self.attributor.identify(p));
            let mut judgement = Judgement::default();
            if matches!(
                event.body,
                Body::Exec { .. } | Body::Tty { .. } | Body::Kill(_)
            ) {
                let mut enforcer = enforce::lock(&self.enforcer);
                if let Body::Kill(kill) = &mut event.body {
                    enforcer.resolve(kill);
                }
                judgement = enforcer.judge(&event, identity, self.clock.unix_ns(event.ktime_ns));
            }
            let granted;
            let identity = match (judgement.grant, identity) {
                (Some(grant), Some(i)) => {
                    granted = Identity {
                        grant: Some(grant),
                        ..i.clone()
                    };
                    Some(&granted)
                }
                (_, identity) => identity,
            };
            if let Some(out) = &mut self.stdout {
                write_json(out, &event, identity, root, &self.clock)?;
            }
            if model {
                modelled.push(to_proto(event, identity, root, &self.clock));
            }
            for (i, follow) in judgement.follow.into_iter().enumerate() {
                queue.insert(i, follow);
            }
        }
        if let Some(out) = &mut self.stdout {
            out.flush()?;
        }
        Ok(modelled)
    }
}

async fn spool_stage(
    mut spool: ChainedSpool,
    mut modelled: Receiver<Vec<v1::Event>>,
    durable: watch::Sender<Durable>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    while let Some(events) = modelled.recv().await {
        block_in_place(|| {
            let _span = debug_span!("batch", events = events.len()).entered();
            spool.spool.forget(spool.freed.swap(0, Relaxed));
            for event in &events {
                spool.store(event)?;
            }
            spool.sync()
        })?;
        durable.send_replace(spool.durable());
        health.spool_bytes.store(spool.spool.total(), Relaxed);
        health.spool_refused.store(spool.refused_total, Relaxed);
    }
    Ok(())
}

/// Logs what was delivered and what is known lost.
pub fn report(health: &Health) {
    info!(
        events = health.events.load(Relaxed),
        tty_bytes = health.tty_bytes.load(Relaxed),
        lost_records = health.lost_records.load(Relaxed),
        lost_bytes = health.lost_bytes.load(Relaxed),
        spool_refused = health.spool_refused.load(Relaxed),
        "stopped"
    );
}

fn count(health: &Health, event: &Event) {
    match &event.body {
        Body::Gap { records, bytes, .. } => {
            health.lost_records.fetch_add(*records, Relaxed);
            health.lost_bytes.fetch_add(*bytes, Relaxed);
        }
        Body::Tty { data, .. } => {
            health.events.fetch_add(1, Relaxed);
            health.tty_bytes.fetch_add(data.len() as u64, Relaxed);
        }
        _ => {
            health.events.fetch_add(1, Relaxed);
        }
    }
}

/// A record that arrived but could not be decoded is evidence lost, so it becomes a gap.
fn undecodable(len: usize) -> Event {
    Event {
        ktime_ns: boot_ns(),
        process: None,
        body: Body::Gap {
            source: GapSource::Decode,
            lost_kind: 0,
            records: 1,
            bytes: len as u64,
        },
    }
}

/// This agent instance's chain, stored in the spool. The first record (seq 0) is a
/// `ChainStart` naming the head of whatever chain the spool held, so a restart is always
/// visible in the evidence.
pub struct ChainedSpool {
    chain: Chain,
    spool: Spool,
    dir: std::path::PathBuf,
    host: String,
    /// Bytes of segments the ship stage deleted, not yet taken off the spool's total.
    freed: Arc<std::sync::atomic::AtomicU64>,
    /// Events refused for lack of room (records, bytes), not yet recorded as a gap.
    refused: (u64, u64),
    /// Events refused since start.
    refused_total: u64,
    /// Reused for each event's serialized bytes.
    scratch: Vec<u8>,
}

impl ChainedSpool {
    pub fn open(dir: &std::path::Path, max_bytes: u64) -> anyhow::Result<Self> {
        let (host, boot_id) = (host_id(), boot_id()?);
        let start = WallClock::now().unix_ns(boot_ns());
        let chain_id = format!("{host}:{boot_id}:{start}");
        let (spool, recovered) = Spool::open(dir, &format!("{start:020}"), max_bytes)?;
        if recovered.torn_bytes > 0 {
            warn!(
                bytes = recovered.torn_bytes,
                "cut a torn frame off the spool's tail"
            );
        }
        let previous = recovered.head.unwrap_or(crate::spool::Head {
            chain_id: String::new(),
            seq: 0,
            hash: Vec::new(),
        });
        info!(
            chain = chain_id,
            previous = previous.chain_id,
            previous_seq = previous.seq,
            "chain started"
        );
        let mut this = Self {
            chain: Chain::new(chain_id),
            spool,
            dir: dir.to_path_buf(),
            host: host.clone(),
            freed: Arc::default(),
            refused: (0, 0),
            refused_total: 0,
            scratch: Vec::new(),
        };
        let start_record = v1::Event {
            time_unix_nano: start,
            body: Some(v1::event::Body::ChainStart(v1::ChainStart {
                host,
                boot_id,
                previous_chain_id: previous.chain_id,
                previous_seq: previous.seq,
                previous_hash: previous.hash,
            })),
            ..v1::Event::default()
        };
        anyhow::ensure!(
            this.try_store(&start_record)?,
            "the spool in {} is full",
            dir.display()
        );
        this.sync()?;
        Ok(this)
    }

    /// Chains and appends `event`, or counts it as refused when the spool is full. Refused
    /// events become one chained gap record as soon as there is room for it.
    fn store(&mut self, event: &v1::Event) -> Result<(), SpoolError> {
        if self.refused.0 > 0 {
            let gap = v1::Event {
                time_unix_nano: event.time_unix_nano,
                body: Some(v1::event::Body::Gap(v1::Gap {
                    source: v1::gap::Source::SpoolFull.into(),
                    lost_kind: "event".into(),
                    records: self.refused.0,
                    bytes: self.refused.1,
                })),
                ..v1::Event::default()
            };
            if self.try_store(&gap)? {
                self.refused = (0, 0);
            }
        }
        if self.refused.0 > 0 || !self.try_store(event)? {
            self.refused.0 += 1;
            self.refused_total += 1;
            self.refused.1 += event.encoded_len() as u64;
        }
        Ok(())
    }

    fn try_store(&mut self, event: &v1::Event) -> Result<bool, SpoolError> {
        self.scratch.clear();
        event.encode_raw(&mut self.scratch);
        if !self.spool.fits(Spool::frame_bound(
            self.chain.id().len(),
            self.scratch.len(),
        )) {
            return Ok(false);
        }
        let record = self.chain.link(&self.scratch);
        self.spool.append(&record)?;
        Ok(true)
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        self.spool.sync()
    }

    /// How far the spool is durable, after a `sync`.
    fn durable(&self) -> Durable {
        let (segment, len) = self.spool.position();
        Durable {
            segment: segment.to_path_buf(),
            len,
        }
    }
}

/// This host's stable id: systemd's machine id, else the host name.
pub(crate) fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

fn boot_id() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading the boot id")?
        .trim()
        .to_owned())
}
