//! The stages after the reader: decode → attribute (process table, identity) → the sinks
//! (JSON lines, and chain → spool). One batch of kernel records at a time; the spool is
//! made durable once per batch.

use std::{
    io::{self, BufWriter, Write as _},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use anyhow::Context as _;
use prost::Message as _;
use proto::v1;
use tracing::{info, warn};

use crate::{
    attribute::Attributor,
    chain::Chain,
    decode,
    event::{Body, Event, GapSource},
    metrics::Health,
    model::to_proto,
    output::{WallClock, write_json},
    proctable::ProcessTable,
    reader::{Batch, boot_ns},
    registry::Registry,
    spool::{Spool, SpoolError},
};

pub struct Pipeline {
    table: ProcessTable,
    attributor: Attributor,
    clock: WallClock,
    stdout: Option<BufWriter<io::StdoutLock<'static>>>,
    spool: Option<ChainedSpool>,
    health: Arc<Health>,
}

impl Pipeline {
    #[must_use]
    pub fn new(
        table: ProcessTable,
        stdout: bool,
        spool: Option<ChainedSpool>,
        health: Arc<Health>,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            table,
            attributor: Attributor::new(registry),
            clock: WallClock::now(),
            stdout: stdout.then(|| BufWriter::with_capacity(1 << 20, io::stdout().lock())),
            spool,
            health,
        }
    }

    pub fn batch(&mut self, batch: Batch) -> anyhow::Result<()> {
        self.clock.follow_steps();
        for record in batch.records() {
            let event = decode::decode(record).unwrap_or_else(|error| {
                warn!(%error, "undecodable kernel record");
                undecodable(record.len())
            });
            self.event(event)?;
        }
        for gap in batch.gaps {
            warn!(?gap.body, "kernel lost records");
            self.event(gap)?;
        }
        if let Some(out) = &mut self.stdout {
            out.flush()?;
        }
        if let Some(spool) = &mut self.spool {
            spool.sync()?;
            self.health.spool_bytes.store(spool.spool.total(), Relaxed);
            self.health
                .spool_refused
                .store(spool.refused_total, Relaxed);
        }
        Ok(())
    }

    fn event(&mut self, mut event: Event) -> anyhow::Result<()> {
        let root = self.table.observe(&mut event);
        count(&self.health, &event);
        if self.stdout.is_none() && self.spool.is_none() {
            return Ok(());
        }
        let identity = event.process.as_ref().map(|p| self.attributor.identify(p));
        if let Some(out) = &mut self.stdout {
            write_json(out, &event, identity, root, &self.clock)?;
        }
        if let Some(spool) = &mut self.spool {
            spool.store(&to_proto(event, identity, root, &self.clock))?;
        }
        Ok(())
    }

    /// Logs what was delivered and what is known lost.
    pub fn report(&self) {
        let h = &self.health;
        info!(
            events = h.events.load(Relaxed),
            tty_bytes = h.tty_bytes.load(Relaxed),
            lost_records = h.lost_records.load(Relaxed),
            lost_bytes = h.lost_bytes.load(Relaxed),
            spool_refused = h.spool_refused.load(Relaxed),
            "stopped"
        );
    }
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
    /// Events refused for lack of room (records, bytes), not yet recorded as a gap.
    refused: (u64, u64),
    /// Events refused since start.
    refused_total: u64,
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
            refused: (0, 0),
            refused_total: 0,
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
        let bytes = event.encode_to_vec();
        if !self
            .spool
            .fits(Spool::frame_bound(self.chain.id().len(), bytes.len()))
        {
            return Ok(false);
        }
        let record = self.chain.link(bytes);
        self.spool.append(&record)?;
        Ok(true)
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        self.spool.sync()
    }
}

/// This host's stable id: systemd's machine id, else the host name.
fn host_id() -> String {
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
