//! Command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::Limits;

/// Collector of the privileged-activity recorder: verifies and stores agents' chains, serves
/// queries over them, and keeps the just-in-time grants agents enforce.
/// The settings file read unless `--config` names another (docs/deploy.md): TOML whose keys
/// are these flags' long names.
pub const CONFIG: &str = "/etc/recorder/collector.toml";

#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// Address the gRPC services (Ingest, Query, Grants, Admin and Enrollment) listen on; port 0 picks a free
    /// one.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Where evidence is stored: `sqlite://PATH`, or a PostgreSQL database as a
    /// `postgres://` URL (docs/scaling.md).
    #[arg(long, default_value = "sqlite:///var/lib/recorder/collector.db")]
    pub store: String,
    /// CA certificates (PEM) that a PostgreSQL store's server certificate must chain to: the
    /// collector then connects only over TLS, and the certificate must name the URL's host
    /// (libpq's `sslmode=verify-full`). Without it a URL asking for TLS is refused.
    #[arg(long)]
    pub store_ca: Option<PathBuf>,
    /// The certificate (PEM) the collector presents to a PostgreSQL store over TLS, for its
    /// `cert` authentication; with `--store-key`, and `--store-ca`.
    #[arg(long)]
    pub store_cert: Option<PathBuf>,
    /// The key of `--store-cert` (PEM). Keep it readable by the collector's user alone.
    #[arg(long)]
    pub store_key: Option<PathBuf>,
    /// The policy agents enforce, a JSON file (docs/grants.md). Without it: mode alert, a
    /// human's exec as root needs a grant, no guarded identities.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The collector's certificates (docs/pki.md): `ca.pem`, `collector.pem`,
    /// `collector.key`, and `ca.key` to sign the certificates of hosts that enroll.
    #[arg(long, default_value = "/var/lib/recorder/pki")]
    pub pki_dir: PathBuf,
    /// Where the collector keeps the latest signed checkpoint of its own log, outside the
    /// database (docs/evidence.md, "The collector's log"): a database restored to an older
    /// state then disagrees with it.
    #[arg(long, default_value = "/var/lib/recorder/collector-state")]
    pub state_dir: PathBuf,
    /// Serve without TLS: anyone who reaches the port may read and write everything. Only
    /// for a collector listening on loopback, which is refused otherwise.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Delete records older than this (for example 90d), a prefix of each host's log at a
    /// time, each deletion first chained as a signed prune record (docs/evidence.md,
    /// "Retention"). Without it nothing is ever deleted.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retain: Option<Duration>,
    /// One host's own limit, `HOST=DURATION`; repeatable.
    #[arg(long = "retain-host", value_parser = host_limit)]
    pub retain_host: Vec<(String, Duration)>,
    /// A host not heard from for this long (agents send a heartbeat every 5 s) is silent: a
    /// `host_silent` alert is chained, and `host_back` when it speaks again.
    #[arg(long, default_value = "30s", value_parser = silence)]
    pub silent_after: Duration,
    /// Connections held at once, TLS handshakes included (docs/limits.md); one more is
    /// closed as it is accepted. Keep it under the process's open-file limit.
    #[arg(long, default_value_t = Limits::DEFAULT.connections.total, value_parser = at_least_one)]
    pub max_connections: usize,
    /// Connections held at once from one IP address; one more from it is closed as it is
    /// accepted. At most --max-connections.
    #[arg(long, default_value_t = Limits::DEFAULT.connections.per_peer, value_parser = at_least_one)]
    pub max_connections_per_peer: usize,
    /// Calls open at once on one connection (HTTP/2 streams); a client queues more until
    /// one ends.
    #[arg(long, default_value_t = Limits::DEFAULT.streams_per_connection, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
}

impl Cli {
    /// The limits the flags set, or why they contradict each other.
    pub fn limits(&self) -> Result<Limits, String> {
        if self.max_connections_per_peer > self.max_connections {
            return Err(format!(
                "--max-connections-per-peer {} is more than --max-connections {}",
                self.max_connections_per_peer, self.max_connections
            ));
        }
        Ok(Limits {
            connections: pki::ConnectionLimits {
                total: self.max_connections,
                per_peer: self.max_connections_per_peer,
            },
            streams_per_connection: self.max_streams_per_connection,
        })
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

fn silence(text: &str) -> Result<Duration, String> {
    let limit = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if limit < Duration::from_secs(1) {
        return Err(format!(
            "{text:?}: at least 1s (silence is looked for once a second)"
        ));
    }
    Ok(limit)
}

fn host_limit(text: &str) -> Result<(String, Duration), String> {
    let (host, limit) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected HOST=DURATION, for example db1=30d"))?;
    pki::check_name(host).map_err(|e| format!("{host:?}: {e}"))?;
    let limit = humantime::parse_duration(limit).map_err(|e| format!("{limit:?}: {e}"))?;
    Ok((host.to_owned(), limit))
}
