//! Command-line settings of the agent.

use std::path::PathBuf;

use agent_common::{
    event::CONTROL_BYTES,
    exec::{ARGV_CAP, ARGV_DEFAULT},
};
use clap::Parser;

/// The settings file read unless `--config` names another (docs/deploy.md): TOML whose keys
/// are these flags' long names.
pub const CONFIG: &str = "/etc/recorder/agent.toml";

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "Records every exec and terminal write on this host"
)]
#[expect(clippy::struct_excessive_bools, reason = "command-line switches")]
#[command(group = clap::ArgGroup::new("mode").required(true).multiple(true).args(["stdout", "discard", "spool", "uninstall", "reaper"]))]
pub struct Cli {
    /// Print one JSON object per event on standard output (no collector needed).
    #[arg(long)]
    pub stdout: bool,

    /// Drain, decode and count events without printing them, and report the totals at exit:
    /// measures what capture costs the host apart from any sink.
    #[arg(long, conflicts_with_all = ["stdout", "spool"])]
    pub discard: bool,

    /// Chain every event and append it to segment files in this directory, durably, before
    /// anything ships it. A restart continues from what the directory holds.
    #[arg(long)]
    pub spool: Option<PathBuf>,

    /// Ship the spool to the collector at this URL (`https://HOST:PORT`) over gRPC with
    /// mutual TLS. A segment is deleted once the collector has acknowledged all of it; while
    /// the collector is unreachable, the spool holds everything up to its bound. Several
    /// URLs, comma-separated, name collectors that share one database: the agent fails over
    /// to the next when one fails, and resumes where the store stands (docs/scaling.md).
    #[arg(long, value_name = "URL[,URL...]", requires = "spool", value_parser = collector_urls)]
    pub collector: Option<String>,

    /// This host's certificates: `ca.pem`, `agent.pem`, `agent.key` (made by `--join`).
    #[arg(long, default_value = "/var/lib/recorder/pki")]
    pub pki_dir: PathBuf,

    /// Join the deployment with this single-use token (`recorder token create`): the key is
    /// made here, and the collector signs a certificate for this host. Needs `--ca`.
    #[arg(long, value_name = "TOKEN", requires_all = ["ca", "collector"])]
    pub join: Option<String>,

    /// The deployment's CA certificate, to trust the collector by when joining.
    #[arg(long, value_name = "FILE", requires = "join")]
    pub ca: Option<PathBuf>,

    /// Ship over plaintext `http://`, with no certificates: for a collector on loopback
    /// started with `--insecure-plaintext`, never across a network.
    #[arg(long)]
    pub insecure_plaintext: bool,

    /// The name operators see for this host (`hosts`, `tail`, `sessions`, and `--host`
    /// there); chained in each `ChainStart`. Default: the kernel's host name. 1 to 64 bytes,
    /// printable.
    #[arg(long, value_parser = crate::host::parse_name)]
    pub host_name: Option<String>,

    /// Size bound of the spool; past it new events are refused, counted, and recorded as a
    /// gap once there is room.
    #[arg(long, default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,

    /// argv bytes kept per exec (NUL-separated strings); longer argv is cut and flagged
    /// `argv_truncated`.
    #[arg(long, default_value_t = ARGV_DEFAULT, value_parser = clap::value_parser!(u32).range(64..=ARGV_CAP as i64))]
    pub argv_max_bytes: u32,

    /// Size of the kernel ring buffer of terminal records, a power of two of at least one
    /// page. Exec, fork and exit records have a ring of their own, which a terminal flood
    /// cannot fill.
    #[arg(long, default_value_t = 16 << 20, value_parser = ring_size)]
    pub ring_bytes: u32,

    /// Size of the kernel ring buffer of exec, fork and exit records, a power of two of at
    /// least one page. An exec record whose argv alone exceeds it is lost, and counted.
    #[arg(long, default_value_t = CONTROL_BYTES, value_parser = ring_size)]
    pub control_ring_bytes: u32,

    /// Unread bytes in a ring buffer above which the kernel wakes the reader at once
    /// [default: an eighth of the terminal ring].
    #[arg(long)]
    pub wakeup_bytes: Option<u64>,

    /// Record the bytes typed while a terminal does not echo them (passwords at a sudo, su,
    /// ssh or passwd prompt). Off by default: only their count is recorded.
    #[arg(long)]
    pub record_no_echo_input: bool,

    /// How often the reader drains the ring buffer when not woken, in milliseconds, while
    /// events flow; after drains that find nothing, the wait doubles up to 32 ms. 1 to
    /// 60000. Each drain wakes every stage of the pipeline once: at 2 ms those wakeups cost
    /// the agent three times the CPU an exec does at 10 (docs/capture.md).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub drain_ms: u64,

    /// Serve health counters in Prometheus text format at `http://ADDR/metrics` (for example
    /// 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Serve the registration API (gRPC) on this Unix socket, mode 0600 so only root can
    /// register: "audit session S, or cgroup C, acts as identity I under grant G".
    #[arg(long, value_name = "SOCKET")]
    pub registration: Option<PathBuf>,

    /// Fail closed: once the grant view from the collector is older than this (for example
    /// 10m), privileged activity is a violation whatever grants the cache holds. The
    /// collector refreshes the view every 30 s while connected.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub fail_closed_after: Option<std::time::Duration>,

    /// With --fail-closed-after: kill the session of such activity, not only record it.
    #[arg(long, requires = "fail_closed_after")]
    pub fail_closed_kill: bool,

    /// How often to log the health counters, in seconds.
    #[arg(long, default_value_t = 60)]
    pub health_every: u64,

    /// The host-wide lock that keeps a second agent from starting beside this one.
    #[arg(long, default_value = crate::host::LOCK_FILE)]
    pub lock_file: PathBuf,

    /// Where in bpffs enforcement is pinned: the deny maps and the enforcement program's
    /// link outlive the agent there, so deadlines hold while it is down or restarting.
    #[arg(long, default_value = "/sys/fs/bpf/recorder")]
    pub bpf_dir: PathBuf,

    /// Remove what the agent pinned in --bpf-dir (the enforcement program detaches, the
    /// deny maps go, the reaper exits), then exit. Only for taking the agent off a host:
    /// until an agent runs again, nothing enforces grants here.
    #[arg(long, conflicts_with_all = ["stdout", "discard", "collector", "reaper"])]
    pub uninstall: bool,

    /// Run as the reaper the agent starts: kill the idle tasks of denied sessions while no
    /// agent runs (docs/grants.md). Not for use by hand.
    #[arg(long, hide = true, conflicts_with_all = ["stdout", "discard", "collector"])]
    pub reaper: bool,

    /// Kernel BTF to resolve struct offsets from.
    #[arg(long, default_value = crate::capture::layout::VMLINUX_BTF)]
    pub btf: PathBuf,
}

fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 4096 {
        Ok(n)
    } else {
        Err(format!("{n} is not a power of two of at least 4096"))
    }
}

fn collector_urls(s: &str) -> Result<String, String> {
    for url in s.split(',') {
        tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("{url:?} is not a collector URL (https://HOST:PORT): {e}"))?;
    }
    Ok(s.to_owned())
}
