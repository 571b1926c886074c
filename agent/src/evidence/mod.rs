//! Evidence: events in the versioned model (`encode`), chained (`chain`), appended durably
//! to the host's spool (`spool`), shipped to the collector (`ship`, over the mutual-TLS
//! `link`), and what the collector says back (`control`). The [`Evidence`] stage is the one place events are ordered: the
//! pipeline's and the enforcer's meet here.

pub mod chain;
pub mod control;
pub mod encode;
pub mod link;
pub mod log;
pub mod ship;
pub mod spool;

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use prost::Message as _;
use proto::v1;
use tracing::{debug_span, info, warn};

use self::{
    chain::Chain,
    control::Trim,
    spool::{Durable, Head, Spool, SpoolError},
};
use crate::{
    clock::{WallClock, boot_ns},
    host,
};

/// Creates `dir` as a directory only its owner can enter (0700), narrowing an existing one:
/// the spool and the state next to it are evidence.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `path` (mode 0600) so that a crash leaves the old or the new contents, never a
/// mix.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    pki::replace_private(path, bytes).map_err(std::io::Error::other)
}

/// This agent instance's chain, stored in the spool. The first record (seq 0) is a
/// `ChainStart` naming the head of whatever chain the spool held, so a restart is always
/// visible in the evidence.
pub struct Evidence {
    chain: Chain,
    spool: Spool,
    dir: PathBuf,
    host: String,
    /// Events refused for lack of room (records, bytes), not yet recorded as a gap.
    refused: (u64, u64),
    /// Events refused since start.
    refused_total: u64,
    /// Reused for each event's serialized bytes.
    scratch: Vec<u8>,
}

impl Evidence {
    /// Opens the spool in `dir`, bounded to `max_bytes`, and starts this instance's chain.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let (host, boot_id) = (host::host_id(), host::boot_id()?);
        private_dir(dir)?;
        let start = WallClock::now().unix_ns(boot_ns());
        let chain_id = format!("{host}:{boot_id}:{start}");
        let (spool, recovered) = Spool::open(dir, &format!("{start:020}"), max_bytes)?;
        if recovered.torn_bytes > 0 {
            warn!(
                bytes = recovered.torn_bytes,
                "cut a torn frame off the spool's tail"
            );
        }
        let previous = recovered.head.unwrap_or(Head {
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
            dir: dir.to_path_buf(),
            host: host.clone(),
            refused: (0, 0),
            refused_total: 0,
            scratch: Vec::new(),
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
        this.spool.sync()?;
        Ok(this)
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Chains and appends a batch, and makes it durable.
    pub fn process(&mut self, events: &[v1::Event]) -> Result<Durable, SpoolError> {
        let _span = debug_span!("batch", events = events.len()).entered();
        self.append(events)?;
        self.sync()
    }

    /// Chains and appends a batch, handing it to the kernel but not yet durable.
    pub fn append(&mut self, events: &[v1::Event]) -> Result<(), SpoolError> {
        for event in events {
            self.store(event)?;
        }
        self.spool.flush()
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> Result<Durable, SpoolError> {
        self.spool.sync()?;
        Ok(self.spool.durable())
    }

    /// How far the spool is durable.
    #[must_use]
    pub fn durable(&self) -> Durable {
        self.spool.durable()
    }

    /// Bytes the spool holds.
    #[must_use]
    pub fn spool_bytes(&self) -> u64 {
        self.spool.total()
    }

    /// Events refused since start for lack of room.
    #[must_use]
    pub fn refused_total(&self) -> u64 {
        self.refused_total
    }

    /// Ends the chain in good order: its last record says why the agent stopped, so a
    /// chain without one ended in a crash or a kill.
    pub fn stop(&mut self, reason: &str) -> Result<Durable, SpoolError> {
        let stop = v1::Event {
            time_unix_nano: WallClock::now().unix_ns(boot_ns()),
            body: Some(v1::event::Body::ChainStop(v1::ChainStop {
                reason: reason.to_owned(),
            })),
            ..v1::Event::default()
        };
        self.process(std::slice::from_ref(&stop))
    }

    /// Deletes a segment the collector holds entirely.
    pub fn trim(&mut self, trim: &Trim) {
        if let Err(error) = self.spool.remove(&trim.segment, trim.bytes) {
            warn!(%error, "cannot delete an acknowledged segment");
        }
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
        self.scratch.clear();
        event.encode_raw(&mut self.scratch);
        if !self.spool.fits(Spool::frame_bound(
            self.chain.id().len(),
            self.scratch.len(),
        )) {
            return Ok(false);
        }
        let record = self.chain.link(&self.scratch);
        self.spool.append(&record)?;
        Ok(true)
    }
}
