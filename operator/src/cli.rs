//! Command-line settings of the operators' client.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use proto::v1::{IdentitySelector, identity::Kind};

#[derive(Debug, Parser)]
#[command(
    name = "recorder",
    version,
    about = "Reads the collector's evidence and manages just-in-time grants"
)]
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
    /// Just-in-time grants: create, list, revoke, extend.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Per identity: the grants it held and for how long, grants never used, violations
    /// (privileged activity outside any grant), and the grants to revoke and why.
    Review {
        /// How far back to look (for example 7d, 24h).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: Duration,
        /// One JSON object per identity instead of readable text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Let an identity do privileged activity for a while. Prints the grant, its id first.
    Create {
        #[command(flatten)]
        identity: Selector,
        /// A host id it applies on (repeatable); without one, every host.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// How long it lasts from now (for example 30m, 2h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// What the agent does to the identity's sessions when the grant ends.
        #[arg(long, value_enum, default_value_t = OnExpiry::Alert)]
        on_expiry: OnExpiry,
        /// The ticket or reason it is asked for.
        #[arg(long)]
        reason: String,
        /// Who approved it [default: `$SUDO_USER`, else `$USER`].
        #[arg(long)]
        approver: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Grants not ended yet, oldest first.
    List {
        /// Also grants that expired or were revoked.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// End a grant now (its sessions are killed when its on-expiry is kill).
    Revoke {
        /// The grant's id, as `create` and `list` print it.
        id: String,
        /// Why; the collector logs it.
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a live grant's expiry later.
    Extend {
        id: String,
        /// How much later (for example 15m).
        #[arg(long, value_parser = humantime::parse_duration)]
        by: Duration,
        #[arg(long)]
        json: bool,
    },
}

/// Whose activity a grant covers: exactly one of these.
#[derive(Clone, Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Selector {
    /// A person, by user name.
    #[arg(long)]
    pub user: Option<String>,
    /// A systemd unit, for example nginx.service.
    #[arg(long)]
    pub unit: Option<String>,
    /// A container, by id.
    #[arg(long)]
    pub container: Option<String>,
    /// A registered identity.
    #[arg(long)]
    pub identity: Option<String>,
}

impl Selector {
    #[must_use]
    pub fn to_proto(&self) -> IdentitySelector {
        let (kind, name) = [
            (Kind::Human, &self.user),
            (Kind::Service, &self.unit),
            (Kind::Workload, &self.container),
            (Kind::Registered, &self.identity),
        ]
        .into_iter()
        .find_map(|(kind, name)| Some((kind, name.clone()?)))
        .unwrap_or((Kind::Unspecified, String::new()));
        IdentitySelector {
            kind: kind.into(),
            name,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnExpiry {
    /// Record it and raise an alert.
    Alert,
    /// Kill the sessions working under the grant.
    Kill,
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
    /// Event kinds: `exec`, `fork`, `exit`, `tty`, `gap`, `chain_start`, `alert`,
    /// `violation`, `kill`, `grant_change` (repeatable).
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
