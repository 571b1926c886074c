//! The host agent: loads the kernel programs, drains their records, and runs them through
//! the stages of the data path (`pipeline` wires them): capture → identity → enforce →
//! evidence, with sinks beside.

pub mod capture;
pub mod cli;
pub mod clock;
pub mod enforce;
pub mod evidence;
pub mod host;
pub mod identity;
pub mod pipeline;
pub mod sinks;
#[cfg(test)]
mod testing;

use std::{
    io::{self, IsTerminal as _},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::{
    config::{CONFIG_GLOBAL, CaptureConfig},
    event::{CONTROL_MAP, EVENTS_MAP},
    layout::LAYOUT_GLOBAL,
};
use anyhow::Context as _;
use aya::EbpfLoader;
use proto::v1::identity::Kind;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    capture::{
        kernel_log, platform,
        reader::Reader,
        sensors::{Programs, Report},
    },
    cli::Cli,
    clock::WallClock,
    enforce::{
        Enforcer, Kernel,
        cache::Cache,
        rules::{FailClosed, Rules},
    },
    evidence::{Evidence, encode::Encode},
    identity::{attribute::Attribute, proctable::ProcessTable, registry::Registry},
    pipeline::Sinks,
    sinks::{metrics, stdout::Stdout},
};

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// Batches in flight between the reader and the decode stage. Past it, the reader drops
/// and counts (see `capture::reader`): up to 64 batches of at most 4 MiB absorb a sink's
/// stall of about a second at full terminal speed.
const BATCHES_IN_FLIGHT: usize = 64;

/// Batches of the agent's own events (kills, registrations) in flight to the chain.
const AGENT_EVENTS_IN_FLIGHT: usize = 64;

/// How long a stopping agent keeps shipping what it spooled last.
const SHIP_GRACE: Duration = Duration::from_secs(3);

/// Logs to standard error, in colour only on a terminal (a file or the journal gets plain
/// text). Records of the `log` crate join in (tracing-subscriber's `tracing-log` feature):
/// that is how the kernel programs' messages arrive, through aya-log.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    platform::check_privileges()?;
    let pins = enforce::pin_dir(&cli.bpf_dir);
    let sweeper = enforce::reaper::Reaper {
        pins: pins.clone(),
        agent_lock: cli.lock_file.clone(),
        spool: cli.spool.clone(),
    };
    if cli.reaper {
        return sweeper.run();
    }
    if cli.uninstall {
        return uninstall(&pins);
    }
    record(cli, &pins, sweeper)
}

/// The agent proper: capture, attribute, enforce, chain and ship until stopped.
fn record(
    cli: &Cli,
    pins: &std::path::Path,
    sweeper: enforce::reaper::Reaper,
) -> anyhow::Result<()> {
    let _lock = host::lock_instance(&cli.lock_file)?;
    let (programs, report, reader, kernel_log) = load(cli, pins)?;
    let collector = link(cli)?;
    let (host, evidence) = open_evidence(cli, collector.as_ref())?;
    // Seeded after attaching, so a process is either in the seed or seen forking.
    let table = ProcessTable::from_proc();
    let processes = table.len();
    let health = serve_metrics(cli)?;
    let boot_id = host::boot_id()?;
    let sessions = WallClock::for_sessions(cli.spool.as_deref(), &boot_id);
    let enforcer = Enforcer::new(
        cli.spool.as_deref().map(Cache::new),
        Some(Kernel::new(Arc::clone(&programs), pins)?),
        Some(sweeper),
        sessions,
    );
    let (view, _) = tokio::sync::watch::channel(enforcer.view());
    let agent_events = tokio::sync::mpsc::channel(AGENT_EVENTS_IN_FLIGHT);
    let registry = Arc::new(Registry::open(cli.spool.as_deref(), &boot_id));
    if let Some(socket) = &cli.registration {
        let service = identity::registry::Service::new(
            Arc::clone(&registry),
            grant_is_live(view.subscribe(), host.clone()),
            agent_events.0.clone(),
        );
        identity::registry::serve(socket, service)?;
    }
    let rules = Rules {
        host: host.clone(),
        fail_closed: cli.fail_closed_after.map(|after| FailClosed {
            after,
            kill: cli.fail_closed_kill,
        }),
    };
    let stop_reason = Arc::new(OnceLock::new());
    let sinks = Sinks {
        stdout: cli.stdout.then(|| Stdout::new(host.clone())),
        evidence,
        collector: collector.clone(),
        stop_reason: Arc::clone(&stop_reason),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pipeline")
        .enable_all()
        .build()
        .context("starting the pipeline runtime")?;
    if let Some(kernel_log) = kernel_log {
        runtime.spawn(kernel_log);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let _context = runtime.enter();
        stop_on_signals(Arc::clone(&stop), stop_reason)?;
    }
    if let Some(link) = &collector {
        runtime.block_on(evidence::link::ensure_enrolled(
            link,
            &host,
            cli.join.as_deref().zip(cli.ca.as_deref()),
        ))?;
    }
    info!(
        attached = report.attached.len(),
        skipped = report.skipped.len(),
        processes,
        "capturing"
    );
    sinks::notify::ready("capturing");
    if let Some(period) = sinks::notify::watchdog_period() {
        // On the runtime every stage runs on, beside them: the pings prove that the process
        // lives and that this runtime still schedules tasks and fires timers, so a runtime
        // wedged (its workers stuck in a call outside `block_in_place`, a deadlock) stops
        // them and the manager restarts the agent, a restart its chain records. They do not
        // prove that events flow: an idle host has none, and a stage stuck in
        // `block_in_place` (a hung disk under the spool) leaves the runtime free; the reader
        // counts what that loses as gap records, and the metrics show it.
        runtime.spawn(sinks::notify::watchdog(period));
    }

    let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || reader.run(&tx, &stop))?
    };
    let parts = pipeline::Parts {
        attribute: Attribute::new(table, registry),
        encode: Encode::new(sessions),
        rules,
        enforcer,
        view,
        agent_events,
    };
    let running = {
        let _context = runtime.enter();
        pipeline::spawn(rx, parts, sinks, &health)
    };
    let stages = runtime.block_on(join(running, &stop, &health, cli.health_every));
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    health.log_totals();
    drop(programs);
    stages
}

/// `--uninstall`: what the agent pinned goes, and enforcement with it.
fn uninstall(pins: &std::path::Path) -> anyhow::Result<()> {
    for path in enforce::uninstall(pins)? {
        info!(path = %path.display(), "unpinned");
    }
    Ok(())
}

/// Whether a grant covers a registered identity now, by the enforcer's latest view: the
/// registration API asks before it accepts a registration under that grant.
fn grant_is_live(
    views: tokio::sync::watch::Receiver<Option<Arc<enforce::rules::View>>>,
    host: String,
) -> identity::registry::GrantIsLive {
    Box::new(move |grant: &str, identity: &str| {
        views.borrow().as_ref().is_some_and(|v| {
            let now = v.at(clock::boot_ns());
            v.grants.iter().any(|(id, g)| {
                **id == *grant && proto::grant::covers(g, Kind::Registered, identity, &host, now)
            })
        })
    })
}

/// The health counters, served when `--metrics` asks.
fn serve_metrics(cli: &Cli) -> anyhow::Result<Arc<metrics::Health>> {
    let health = Arc::new(metrics::Health::default());
    if let Some(addr) = cli.metrics {
        let bound = metrics::serve(addr, Arc::clone(&health))
            .with_context(|| format!("serving metrics on {addr}"))?;
        info!("metrics at http://{bound}/metrics");
    }
    Ok(health)
}

/// This host's identity (the one it enrolled as, else its machine id), and its spool with
/// this instance's chain started.
fn open_evidence(
    cli: &Cli,
    collector: Option<&evidence::link::Link>,
) -> anyhow::Result<(String, Option<Evidence>)> {
    let machine = host::host_id();
    let enrolled = collector
        .map(evidence::link::Link::enrolled_host)
        .transpose()?
        .flatten();
    let host = enrolled.unwrap_or_else(|| machine.clone());
    let mut evidence = cli
        .spool
        .as_deref()
        .map(|dir| {
            let name = host::display_name(cli.host_name.as_deref());
            Evidence::open(dir, cli.spool_max_bytes, &host, &name)
        })
        .transpose()?;
    if host != machine {
        warn!(
            enrolled = host,
            machine_id = machine,
            "the machine id changed since this host enrolled: it records and ships as enrolled"
        );
        if let Some(evidence) = &mut evidence {
            evidence.process(&[machine_id_change(&host, &machine)]);
        }
    }
    Ok((host, evidence))
}

/// The alert chained at each start while `/etc/machine-id` differs from the host's enrolled
/// identity.
fn machine_id_change(enrolled: &str, machine: &str) -> proto::v1::Event {
    proto::v1::Event {
        time_unix_nano: proto::time::now_unix_nano(),
        body: Some(proto::v1::event::Body::Alert(proto::v1::Alert {
            kind: "machine_id_change".into(),
            host: enrolled.to_owned(),
            message: format!(
                "/etc/machine-id now says {machine}, but this host enrolled as {enrolled}: it \
                 records and ships as {enrolled} (a re-imaged or cloned disk, or an edit)"
            ),
            ..proto::v1::Alert::default()
        })),
        ..proto::v1::Event::default()
    }
}

/// Where the evidence is shipped: mutual TLS to an `https://` collector, plaintext only when
/// asked for in so many words.
fn link(cli: &Cli) -> anyhow::Result<Option<evidence::link::Link>> {
    let Some(urls) = &cli.collector else {
        return Ok(None);
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    for url in &urls {
        let plaintext = url.starts_with("http://");
        anyhow::ensure!(
            plaintext == cli.insecure_plaintext,
            "{url}: {}",
            if plaintext {
                "http:// would send the evidence unencrypted to whoever answers: use https:// \
                 (with --pki-dir), or --insecure-plaintext for a collector on loopback"
            } else {
                "--insecure-plaintext needs an http:// URL"
            }
        );
    }
    Ok(Some(evidence::link::Link {
        urls,
        pki_dir: (!cli.insecure_plaintext).then(|| cli.pki_dir.clone()),
    }))
}

/// Checks the host, loads the kernel programs with this kernel's struct offsets, attaches
/// the sensors, and takes the ring buffer for the reader and the programs' log for its
/// forwarder.
fn load(
    cli: &Cli,
    pins: &std::path::Path,
) -> anyhow::Result<(
    Arc<Programs>,
    Report,
    Reader,
    Option<impl Future<Output = ()> + Send + use<>>,
)> {
    for fs in platform::ensure_mounts()? {
        info!(fs, "mounted");
    }
    std::fs::create_dir_all(pins).with_context(|| format!("creating {}", pins.display()))?;
    let layout = capture::layout::resolve(&cli.btf)?;
    let config = CaptureConfig {
        argv_max: cli.argv_max_bytes,
        agent_tgid: std::process::id(),
        wakeup_bytes: cli.wakeup_bytes.unwrap_or(u64::from(cli.ring_bytes) / 8),
        record_no_echo_input: u64::from(cli.record_no_echo_input),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(LAYOUT_GLOBAL, &layout, true)
        .override_global(CONFIG_GLOBAL, &config, true)
        .map_max_entries(EVENTS_MAP, cli.ring_bytes)
        .map_max_entries(CONTROL_MAP, cli.control_ring_bytes)
        .default_map_pin_directory(pins)
        .load(EBPF_OBJECT)
        .context("loading the kernel programs")?;
    let kernel_log = kernel_log::forwarder(&mut ebpf);
    let (programs, report) = Programs::start(ebpf)?;
    let reader = Reader::new(&programs, Duration::from_millis(cli.drain_ms))?;
    Ok((Arc::new(programs), report, reader, kernel_log))
}

/// Waits for the stages to finish (the reader's stop ends them in order), stopping the
/// reader when one fails, then gives the ship stage its grace.
async fn join(
    running: pipeline::Running,
    stop: &AtomicBool,
    health: &Arc<metrics::Health>,
    health_every: u64,
) -> anyhow::Result<()> {
    let mut stages = running.stages;
    let reporting = tokio::spawn(metrics::report_every(
        Duration::from_secs(health_every),
        Arc::clone(health),
    ));
    let mut result = Ok(());
    while let Some(stage) = stages.join_next().await {
        let outcome = stage.context("a pipeline stage panicked").and_then(|r| r);
        if let Err(e) = outcome {
            error!(error = format!("{e:#}"), "pipeline stage failed");
            // The reader sees the stage hang up and stops too.
            stop.store(true, Ordering::Release);
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
}

/// Sets `stop` at SIGINT or SIGTERM: the reader drains what the kernel submitted, and the
/// stages finish in order.
fn stop_on_signals(stop: Arc<AtomicBool>, reason: Arc<OnceLock<&'static str>>) -> io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!("stopping on {signal}");
        let _ = reason.set(signal);
        stop.store(true, Ordering::Release);
    });
    Ok(())
}
