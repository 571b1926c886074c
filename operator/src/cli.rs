//! Command-line settings of the operators' client.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use proto::v1::{IdentitySelector, identity::Kind};

#[derive(Debug, Parser)]
#[command(
    name = "recorder",
    version,
    about = "Reads the collector's evidence and manages just-in-time grants"
)]
pub struct Cli {
    /// The collector's URL: `https://` (mutual TLS, as the certificate below), or `http://`
    /// for a collector serving plaintext on loopback.
    #[arg(long, global = true, default_value = "https://127.0.0.1:7443")]
    pub collector: String,

    /// Where the operator's certificate is: `ca.pem`, `operator.pem`, `operator.key`
    /// (`cargo xtask run` makes them for the local operator).
    #[arg(long, global = true, default_value = "/var/lib/recorder/pki")]
    pub pki_dir: PathBuf,

    /// The operator's certificate, instead of the one in `--pki-dir`.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<PathBuf>,

    /// Its key.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<PathBuf>,

    /// The CA to check the collector by, instead of the one in `--pki-dir`.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,

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
        #[command(flatten)]
        output: Output,
    },
    /// Stored events in a time window, oldest first.
    Search(Search),
    /// List login sessions, who is behind them, and the terminals each one used.
    Sessions(Sessions),
    /// Play a session's terminal back with its original timing: the login terminal, as the
    /// user saw it, unless told otherwise.
    Replay(Replay),
    /// Every host the collector knows: live or silent, its last contact, agent version and
    /// newest chain.
    Hosts {
        #[arg(long)]
        json: bool,
    },
    /// Check everything stored: chains, hosts' signed logs, columns, grants; exits
    /// non-zero if anything fails. The collector checks and says so, or, with `--local`,
    /// this client checks the raw evidence itself.
    Verify {
        #[arg(long)]
        host: Option<String>,
        #[arg(long, conflicts_with = "local")]
        chain: Option<String>,
        #[arg(long)]
        json: bool,
        /// Fetch the stored records, checkpoints, certificates and prune records and check
        /// them here, trusting only the CA certificate, not the collector's verdict.
        #[arg(long)]
        local: bool,
        /// The CA certificate `--local` trusts; default: the one the connection is checked
        /// with (`--ca`, else `ca.pem` in `--pki-dir`).
        #[arg(long, requires = "local")]
        trust: Option<PathBuf>,
    },
    /// Write a session's evidence bundle: its records, each with a proof of inclusion in
    /// its host's signed and witnessed log, for offline verification (docs/evidence.md).
    Export {
        /// A session key from `sessions`.
        #[arg(long)]
        session: String,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Exempt a session from pruning (a legal hold, admin); chained at the collector.
    Hold {
        /// A session key from `sessions`.
        session: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Check an evidence bundle offline, trusting only the CA certificate (`--ca`, else
    /// `ca.pem` in `--pki-dir`); exits non-zero if anything in it fails.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
    },
    /// Just-in-time grants: create, list, revoke, extend.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Join tokens, with which hosts enroll (admin).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The deployment's hosts (admin).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// The deployment's CA and its certificates, made here, offline (docs/pki.md).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
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
pub enum TokenCommand {
    /// A single-use join token for one host; prints it once (the collector keeps its hash).
    Create {
        /// The host id it enrolls (`/etc/machine-id` of the host).
        #[arg(long)]
        host: String,
        /// How long it may be used.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Refuse the host's certificates from now on.
    Revoke {
        host: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// What a new grant asks for.
#[derive(Clone, Debug, Args)]
pub struct NewGrant {
    #[command(flatten)]
    pub identity: Selector,
    /// A host it applies on, by id or display name (repeatable); without one, every host.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// How long it lasts from its start (for example 30m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// What the agent does to the identity's sessions when the grant ends.
    #[arg(long, value_enum, default_value_t = OnExpiry::Alert)]
    pub on_expiry: OnExpiry,
    /// The ticket or reason it is asked for.
    #[arg(long)]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Let an identity do privileged activity for a while, approved by you. Prints the
    /// grant, its id first. Refused when the policy requires a second person.
    Create(NewGrant),
    /// Ask for a grant for someone else to approve; it covers nothing until then.
    Request(NewGrant),
    /// Approve a grant someone else requested.
    Approve {
        id: String,
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

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA in DIR: `ca.pem`, and `ca.key` (mode 0600, in a 0700 directory).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by a CA made with `pki init`.
    #[command(subcommand)]
    Issue(Issue),
}

#[derive(Debug, Subcommand)]
pub enum Issue {
    /// For a collector: the names and addresses its clients dial.
    Collector {
        /// The CA's directory.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A DNS name clients dial (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address clients dial (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Writes OUT.pem and OUT.key.
        #[arg(long)]
        out: PathBuf,
    },
    /// For a collector's witness key, which cosigns hosts' checkpoints and signs its own
    /// log (docs/evidence.md): `witness.pem` and `witness.key` beside its certificate.
    Witness {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The collector's name.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Writes OUT.pem and OUT.key.
        #[arg(long)]
        out: PathBuf,
    },
    /// For an operator, with their role.
    Operator {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long, default_value_t = 90)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// For the agent of one host, for sites that run their own PKI (agents otherwise make
    /// their key themselves and join with a token).
    Agent {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The host id (`/etc/machine-id`).
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

/// What an operator may do: each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    /// Read the evidence: tail, search, sessions, replay, verify, review, grant list.
    Auditor,
    /// Also create, approve, extend and revoke grants.
    Approver,
    /// Also manage join tokens and hosts.
    Admin,
}

impl From<Role> for pki::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Auditor => Self::Auditor,
            Role::Approver => Self::Approver,
            Role::Admin => Self::Admin,
        }
    }
}

#[derive(Debug, Args)]
pub struct Sessions {
    #[arg(long)]
    pub host: Option<String>,
    /// Only sessions active this recently.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    #[arg(long)]
    pub json: bool,
    /// At most this many sessions; when more match, standard error says how to go on.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub limit: u64,
    /// Continue where an earlier listing with the same filters stopped.
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct Search {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// How far back the window starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub since: Duration,
    /// At most this many events; when more match, standard error says how to go on.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub limit: u64,
    /// Continue where an earlier search with the same filters stopped.
    #[arg(long)]
    pub page_token: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// How `tail` and `search` print each event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A line of text for people: time host identity session kind detail.
    #[default]
    Text,
    /// One JSON object per event, in the schema of docs/events.md.
    Json,
    /// One OCSF 1.8.0 event per line, for SIEMs (docs/siem.md); a kill of several processes
    /// is one line per process.
    Ocsf,
}

/// `--format`, with `--json`, which scripts written before it use, as its alias.
#[derive(Clone, Copy, Debug, Args)]
pub struct Output {
    /// How each event is printed.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// The same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

impl Output {
    #[must_use]
    pub fn format(self) -> Format {
        if self.json { Format::Json } else { self.format }
    }
}

#[derive(Debug, Args)]
pub struct Replay {
    /// A session key, as `sessions` lists it.
    pub session: String,
    /// Play this terminal (`major:minor`, as `sessions --json` lists them: sudo's own pty,
    /// a tmux pane) instead of the login terminal.
    #[arg(long, conflicts_with = "all_ttys")]
    pub tty: Option<String>,
    /// Every terminal of the session, interleaved in time (output shown by an inner
    /// terminal and again by the login terminal then appears twice).
    #[arg(long)]
    pub all_ttys: bool,
    /// Show typed input too, inline, escaped and marked `⟦typed: …⟧`; it is never played as
    /// output.
    #[arg(long)]
    pub input: bool,
    /// Play this many times faster; 0 plays without waiting.
    #[arg(long, default_value = "1", value_parser = Speed::parse)]
    pub speed: Speed,
    /// Longest pause between two writes, in seconds, whatever the recording says.
    #[arg(long, default_value = "5", value_parser = max_wait)]
    pub max_wait: Duration,
    /// `terminal` plays it here; `asciicast` writes an asciicast v2 file to standard output
    /// (output and typed input, input typed without echo as `*`s), at once, and a sidecar
    /// naming the stored records it came from.
    #[arg(long, value_enum, default_value_t = ReplayFormat::Terminal)]
    pub format: ReplayFormat,
    /// Where the asciicast's sidecar goes; default `SESSION.cast.json` here, the key's `:`
    /// as `_`.
    #[arg(long, requires = "format")]
    pub sidecar: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    Terminal,
    Asciicast,
}

/// A replay speed: finite and not negative; 0 means no waiting.
#[derive(Clone, Copy, Debug)]
pub struct Speed(f64);

impl Speed {
    fn parse(s: &str) -> Result<Self, String> {
        let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
        if !v.is_finite() || v < 0.0 || (v > 0.0 && v < 1e-6) || v > 1e6 {
            return Err(format!(
                "{s} is not a speed: give 0 (no waiting) or a factor from 0.000001 to 1000000"
            ));
        }
        Ok(Self(v))
    }

    /// The factor, or `None` to play without waiting.
    #[must_use]
    pub fn get(self) -> Option<f64> {
        (self.0 > 0.0).then_some(self.0)
    }
}

/// The longest pause a replay makes: 0 to a day.
fn max_wait(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{s} is not a pause: give 0 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
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
    /// Event kinds: `exec`, `fork`, `exit`, `tty_out`, `tty_in` (`tty` for both),
    /// `tty_resize`, `image`, `gap`,
    /// `chain_start`, `alert`, `violation`, `kill`, `grant_change` (repeatable).
    #[arg(long = "kind", value_parser = kind)]
    pub kinds: Vec<String>,
}

/// A kind filter word, checked here so a typo fails before any request.
fn kind(word: &str) -> Result<String, String> {
    proto::kind::Kind::parse_filter(word)
        .map(|_| word.to_owned())
        .map_err(|e| e.to_string())
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
