//! Command-line settings of the operators' client.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "recorder", version, about = "Reads the collector's evidence")]
pub struct Cli {
    /// The collector's URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7443")]
    pub collector: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow events as they are stored: time, host, identity, session, kind, and the
    /// command line or terminal text.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        /// Start this far back in stored history (for example 10m, 2h) before following.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// One JSON object per line instead of readable text.
        #[arg(long)]
        json: bool,
    },
    /// Stored events in a time window, oldest first.
    Search {
        #[command(flatten)]
        filter: FilterArgs,
        /// How far back the window starts.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        since: Duration,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// List login sessions and the identities behind them.
    Sessions {
        #[arg(long)]
        host: Option<String>,
        /// Only sessions active this recently.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Play a session's terminal output back with its original timing.
    Replay {
        /// A session key, as `sessions` lists it.
        session: String,
        /// Play this many times faster (0: no waiting at all).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between two writes, in seconds, whatever the recording says.
        #[arg(long, default_value_t = 5.0)]
        max_wait: f64,
    },
    /// Recompute every stored chain; exits non-zero if any fails.
    Verify {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        chain: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Debug, Default, Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub host: Option<String>,
    /// Identity name: a user, unit, container id or registered identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// A session key from `sessions`, or an audit session id.
    #[arg(long)]
    pub session: Option<String>,
    /// Event kinds: `exec`, `fork`, `exit`, `tty`, `gap`, `chain_start`, `alert` (repeatable).
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
}

impl FilterArgs {
    #[must_use]
    pub fn to_proto(&self) -> proto::v1::Filter {
        proto::v1::Filter {
            host: self.host.clone().unwrap_or_default(),
            identity: self.identity.clone().unwrap_or_default(),
            session: self.session.clone().unwrap_or_default(),
            kinds: self.kinds.clone(),
        }
    }
}
