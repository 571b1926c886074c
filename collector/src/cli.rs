//! Command line.

use std::net::SocketAddr;

use clap::Parser;

/// Collector of the privileged-activity recorder: verifies and stores agents' chains, and
/// serves queries over them.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// Address the gRPC services (Ingest and Query) listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Where evidence is stored: `sqlite://PATH`.
    #[arg(long, default_value = "sqlite:///var/lib/recorder/collector.db")]
    pub store: String,
}
