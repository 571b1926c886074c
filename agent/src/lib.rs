//! The host agent: loads the kernel programs, drains their records, decodes and attributes
//! them, and hands them to a sink.

pub mod attribute;
pub mod cli;
pub mod decode;
pub mod event;
pub mod layout;
pub mod output;
pub mod platform;
pub mod proctable;
pub mod reader;
pub mod sensors;

use std::{
    io::{self, BufWriter, Write},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::sync_channel,
    },
    time::Duration,
};

use agent_common::{
    config::{CONFIG_GLOBAL, CaptureConfig},
    event::EVENTS_MAP,
    layout::LAYOUT_GLOBAL,
};
use anyhow::Context as _;
use aya::EbpfLoader;
use tracing::{info, warn};

use crate::{
    attribute::Attributor,
    cli::Cli,
    event::{Body, Event, GapSource},
    output::{WallClock, write_json},
    proctable::ProcessTable,
    reader::{Reader, boot_ns},
};

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// Batches in flight between the reader and the consumer. When the consumer falls behind,
/// the reader blocks, the ring buffer fills and the kernel counts what it cannot submit:
/// backpressure ends in exact gap records, never in silent drops.
const BATCHES_IN_FLIGHT: usize = 64;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Release);
}

pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    platform::check_privileges()?;
    for fs in platform::ensure_mounts()? {
        info!(fs, "mounted");
    }
    let layout = layout::resolve(&cli.btf)?;
    let config = CaptureConfig {
        argv_max: cli.argv_max_bytes,
        agent_tgid: std::process::id(),
        wakeup_bytes: cli.wakeup_bytes.unwrap_or(u64::from(cli.ring_bytes) / 8),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(LAYOUT_GLOBAL, &layout, true)
        .override_global(CONFIG_GLOBAL, &config, true)
        .map_max_entries(EVENTS_MAP, cli.ring_bytes)
        .load(EBPF_OBJECT)
        .context("loading the kernel programs")?;
    let report = sensors::attach_all(&mut ebpf)?;
    let reader = Reader::new(&mut ebpf, Duration::from_millis(cli.drain_ms))?;
    // Seeded after attaching, so a process is either in the seed or seen forking.
    let mut table = ProcessTable::from_proc();
    let mut attributor = Attributor::new();

    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, request_stop as *const () as libc::sighandler_t) };
    }
    info!(
        attached = report.attached.len(),
        skipped = report.skipped.len(),
        processes = table.len(),
        "capturing"
    );

    let (tx, rx) = sync_channel(BATCHES_IN_FLIGHT);
    let reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || reader.run(&tx, &STOP))?;

    let mut out = cli
        .stdout
        .then(|| BufWriter::with_capacity(1 << 20, io::stdout().lock()));
    let mut stats = Stats::default();
    let mut clock = WallClock::now();
    for batch in rx {
        clock.follow_steps();
        for record in batch.records() {
            let mut event = decode::decode(record).unwrap_or_else(|error| {
                warn!(%error, "undecodable kernel record");
                undecodable(record.len())
            });
            let root = table.observe(&mut event);
            stats.count(&event);
            if let Some(out) = &mut out {
                let identity = event.process.as_ref().map(|p| attributor.identify(p));
                write_json(out, &event, identity, root, &clock)?;
            }
        }
        for gap in &batch.gaps {
            warn!(?gap.body, "kernel lost records");
            stats.count(gap);
            if let Some(out) = &mut out {
                write_json(out, gap, None, None, &clock)?;
            }
        }
        if let Some(out) = &mut out {
            out.flush()?;
        }
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    drop(ebpf);
    info!(
        events = stats.events,
        tty_bytes = stats.tty_bytes,
        lost_records = stats.lost_records,
        lost_bytes = stats.lost_bytes,
        "stopped"
    );
    Ok(())
}

/// What the agent delivered and what it knows it lost, reported when it stops.
#[derive(Default)]
struct Stats {
    events: u64,
    tty_bytes: u64,
    lost_records: u64,
    lost_bytes: u64,
}

impl Stats {
    fn count(&mut self, event: &Event) {
        match &event.body {
            Body::Gap { records, bytes, .. } => {
                self.lost_records += records;
                self.lost_bytes += bytes;
            }
            Body::Tty { data, .. } => {
                self.events += 1;
                self.tty_bytes += data.len() as u64;
            }
            _ => self.events += 1,
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
