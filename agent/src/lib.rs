//! The host agent: loads the kernel programs, drains their records, decodes and attributes
//! them, and hands them to a sink.

pub mod attribute;
pub mod chain;
pub mod cli;
pub mod decode;
pub mod enforce;
pub mod event;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod platform;
pub mod proctable;
pub mod reader;
pub mod registry;
pub mod sensors;
pub mod ship;
pub mod spool;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
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
use tracing::{error, info};

use crate::{
    cli::Cli,
    pipeline::{ChainedSpool, Sinks},
    proctable::ProcessTable,
    reader::Reader,
};

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// Batches in flight between the reader and the decode stage. Past it, the reader drops
/// and counts (see `reader.rs`): up to 64 batches of at most 4 MiB absorb a sink's stall of
/// about a second at full terminal speed.
const BATCHES_IN_FLIGHT: usize = 64;

/// How long a stopping agent keeps shipping what it spooled last.
const SHIP_GRACE: Duration = Duration::from_secs(3);

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
    let spool = cli
        .spool
        .as_deref()
        .map(|dir| ChainedSpool::open(dir, cli.spool_max_bytes))
        .transpose()?;
    // Seeded after attaching, so a process is either in the seed or seen forking.
    let table = ProcessTable::from_proc();
    let processes = table.len();
    let health = Arc::new(metrics::Health::default());
    if let Some(addr) = cli.metrics {
        let bound = metrics::serve(addr, Arc::clone(&health))
            .with_context(|| format!("serving metrics on {addr}"))?;
        info!("metrics at http://{bound}/metrics");
    }
    let registry = Arc::new(registry::Registry::default());
    if let Some(socket) = &cli.registration {
        registry::serve(socket, Arc::clone(&registry))?;
    }
    let enforcer = enforce::Enforcer::new(
        pipeline::host_id(),
        cli.spool.as_deref(),
        Some(enforce::Kernel::new(ebpf)?),
        cli.fail_closed_after.map(|after| enforce::FailClosed {
            after,
            kill: cli.fail_closed_kill,
        }),
    );
    let sinks = Sinks {
        stdout: cli.stdout,
        spool,
        collector: cli.collector.clone(),
        enforcer: Arc::new(std::sync::Mutex::new(enforcer)),
    };

    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, request_stop as *const () as libc::sighandler_t) };
    }
    info!(
        attached = report.attached.len(),
        skipped = report.skipped.len(),
        processes,
        "capturing"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pipeline")
        .enable_all()
        .build()
        .context("starting the pipeline runtime")?;
    let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
    let reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || reader.run(&tx, &STOP))?;
    let stages = runtime.block_on(async {
        let running = pipeline::spawn(rx, table, registry, sinks, &health);
        let mut stages = running.stages;
        let reporting = tokio::spawn(metrics::report_every(
            Duration::from_secs(cli.health_every),
            Arc::clone(&health),
        ));
        let mut result = Ok(());
        while let Some(stage) = stages.join_next().await {
            let outcome = stage.context("a pipeline stage panicked").and_then(|r| r);
            if let Err(e) = outcome {
                error!(error = format!("{e:#}"), "pipeline stage failed");
                // The reader sees the stage hang up and stops too.
                STOP.store(true, Ordering::Release);
                result = result.and(Err(e));
            }
        }
        reporting.abort();
        if let Some(mut ship) = running.ship
            && tokio::time::timeout(SHIP_GRACE, &mut ship).await.is_err()
        {
            info!("the collector has not taken everything yet: the spool keeps the rest");
            ship.abort();
        }
        result
    });
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    pipeline::report(&health);
    stages
}
