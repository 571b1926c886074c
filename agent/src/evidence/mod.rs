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
use proto::limits::EVENT_BYTES_MAX;
use proto::v1;
use tracing::{debug, debug_span, info, warn};

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

/// `value` as JSON, written as `write_private` writes: the agent's state files in the spool.
pub fn write_json_private<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> std::io::Result<()> {
    write_private(
        path,
        &serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )
}

/// A state file written by `write_json_private`, or `None` when it is missing or does not
/// hold a `T`: the caller starts afresh rather than from something it cannot read.
#[must_use]
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// This agent instance's chain, stored in the spool. The first record (seq 0) is a
/// `ChainStart` naming the head of whatever chain the spool held, so a restart is always
/// visible in the evidence.
pub struct Evidence {
    chain: Chain,
    spool: Spool,
    dir: PathBuf,
    host: String,
    /// The host's display name, as its `ChainStart` says.
    name: String,
    /// Events refused for lack of room (records, bytes), not yet recorded as a gap.
    refused: (u64, u64),
    /// Events refused since start.
    refused_total: u64,
    /// Reused for each event's serialized bytes.
    scratch: Vec<u8>,
    /// Where the spool was last durable, while a failed write is still to be undone.
    undo: Option<Mark>,
    /// What was added since the last commit, and where to undo it to.
    uncommitted: Option<Uncommitted>,
    /// The last batch could not be written: said once, not once per batch.
    failing: bool,
}

/// Events added since the last commit: how many, their encoded bytes, and the state to
/// return to if they cannot be made durable.
struct Uncommitted {
    mark: Mark,
    events: u64,
    bytes: u64,
}

/// The spool and chain as they were durable, before a batch.
struct Mark {
    durable: Durable,
    total: u64,
    chain: Chain,
    refused: (u64, u64),
    refused_total: u64,
}

impl Evidence {
    /// Opens the spool in `dir`, bounded to `max_bytes`, and starts this instance's chain
    /// as `host`'s, named `name`.
    pub fn open(dir: &Path, max_bytes: u64, host: &str, name: &str) -> anyhow::Result<Self> {
        let (host, boot_id) = (host.to_owned(), host::boot_id()?);
        private_dir(dir)?;
        let start = WallClock::now().unix_ns(boot_ns());
        let chain_id = format!("{host}:{boot_id}:{start}");
        let (spool, recovered) = Spool::open(dir, max_bytes)?;
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
            name: name.to_owned(),
            refused: (0, 0),
            refused_total: 0,
            scratch: Vec::new(),
            undo: None,
            uncommitted: None,
            failing: false,
        };
        let start_record = v1::Event {
            time_unix_nano: start,
            body: Some(v1::event::Body::ChainStart(v1::ChainStart {
                host,
                boot_id,
                previous_chain_id: previous.chain_id,
                previous_seq: previous.seq,
                previous_hash: previous.hash,
                host_name: name.to_owned(),
            })),
            ..v1::Event::default()
        };
        // Past the size bound too: an agent that starts with a full spool still says so.
        this.try_store(&start_record, false)?;
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

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Chains and appends a batch, and makes it durable: [`Evidence::add`], then
    /// [`Evidence::commit`]. Returns how far the spool is durable.
    pub fn process(&mut self, events: &[v1::Event]) -> Durable {
        self.add(events);
        self.commit()
    }

    /// Chains and appends a batch, not yet durable: the events added since the last
    /// [`Evidence::commit`] become durable together, with one sync.
    ///
    /// A write or sync that fails (a full disk, an I/O error) loses every event added since
    /// the last commit as a full spool would: the spool is cut back to where it was durable,
    /// the chain to its head there, and the events are counted in the next spool-full gap.
    /// The agent goes on, and enforcement with it; until the spool can be cut back, every
    /// batch is counted so.
    pub fn add(&mut self, events: &[v1::Event]) {
        let _span = debug_span!("batch", events = events.len()).entered();
        if let Some(mark) = self.undo.take()
            && self.spool.rollback(&mark.durable, mark.total).is_err()
        {
            self.refuse_all(events);
            self.undo = Some(mark);
            return;
        }
        // A disk the spool filled gets room back as the collector acknowledges what it
        // holds, and only whole segments are deleted then: the one that filled it is sealed.
        if self.failing
            && self.uncommitted.is_none()
            && let Err(error) = self.spool.seal(self.chain.next_seq())
        {
            debug!(%error, "cannot begin a new segment yet");
            self.refuse_all(events);
            return;
        }
        let uncommitted = self.uncommitted.get_or_insert_with(|| Uncommitted {
            mark: Mark {
                durable: self.spool.durable(),
                total: self.spool.total(),
                chain: self.chain.clone(),
                refused: self.refused,
                refused_total: self.refused_total,
            },
            events: 0,
            bytes: 0,
        });
        uncommitted.events += events.len() as u64;
        uncommitted.bytes += events.iter().map(|e| e.encoded_len() as u64).sum::<u64>();
        if let Err(error) = self.append(events) {
            self.fail(&error);
        }
    }

    /// Makes every event added since the last commit durable, or loses them all (see
    /// [`Evidence::add`]). Returns how far the spool is durable.
    pub fn commit(&mut self) -> Durable {
        if self.uncommitted.is_some() {
            match self.spool.sync() {
                Ok(()) => {
                    self.uncommitted = None;
                    if std::mem::take(&mut self.failing) {
                        info!("the spool writes again; what it lost is chained as a gap");
                    }
                }
                Err(error) => self.fail(&error),
            }
        }
        self.durable()
    }

    /// Whether events were added since the last commit.
    #[must_use]
    pub fn uncommitted(&self) -> bool {
        self.uncommitted.is_some()
    }

    /// Undoes everything added since the last commit, after `error`, and counts it lost.
    fn fail(&mut self, error: &SpoolError) {
        let Some(Uncommitted {
            mark,
            events,
            bytes,
        }) = self.uncommitted.take()
        else {
            return;
        };
        if !std::mem::replace(&mut self.failing, true) {
            warn!(%error, "cannot write the spool: events are counted as lost until it can");
        }
        self.chain = mark.chain.clone();
        self.refused = (mark.refused.0 + events, mark.refused.1 + bytes);
        self.refused_total = mark.refused_total + events;
        if let Err(error) = self.spool.rollback(&mark.durable, mark.total) {
            warn!(%error, "the spool cannot be cut back to its last durable record yet");
            self.undo = Some(mark);
        }
    }

    /// Chains and appends a batch, handing it to the kernel but not yet durable: with
    /// `sync`, what `process` does, without undoing a failure.
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

    /// How far the spool is durable: while events are uncommitted, or a failed write is
    /// still to be undone, where it was before them.
    #[must_use]
    pub fn durable(&self) -> Durable {
        match (&self.uncommitted, &self.undo) {
            (Some(Uncommitted { mark, .. }), _) | (None, Some(mark)) => mark.durable.clone(),
            (None, None) => self.spool.durable(),
        }
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
    pub fn stop(&mut self, reason: &str) -> Durable {
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

    /// Counts a batch as lost for lack of room.
    fn refuse_all(&mut self, events: &[v1::Event]) {
        for event in events {
            self.refuse(event);
        }
    }

    /// Counts `event` as lost for lack of room.
    fn refuse(&mut self, event: &v1::Event) {
        self.refused.0 += 1;
        self.refused_total += 1;
        self.refused.1 += event.encoded_len() as u64;
    }

    /// Chains and appends `event`, or counts it as refused when the spool is full. Refused
    /// events become one chained gap record as soon as there is room for it. An event larger
    /// than a collector accepts is chained as a gap that says so, never sent to be refused.
    fn store(&mut self, event: &v1::Event) -> Result<(), SpoolError> {
        let len = event.encoded_len();
        if len > EVENT_BYTES_MAX {
            warn!(bytes = len, kind = ?proto::kind::Kind::of(event), "an event too large to ship is a gap");
            let gap = v1::Event {
                time_unix_nano: event.time_unix_nano,
                body: Some(v1::event::Body::Gap(v1::Gap {
                    source: v1::gap::Source::TooLarge.into(),
                    lost_kind: proto::kind::Kind::of(event)
                        .map_or("event", |k| k.name())
                        .into(),
                    records: 1,
                    bytes: len as u64,
                })),
                ..v1::Event::default()
            };
            return self.store(&gap);
        }
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
            if self.try_store(&gap, true)? {
                self.refused = (0, 0);
            }
        }
        if self.refused.0 > 0 || !self.try_store(event, true)? {
            self.refuse(event);
        }
        Ok(())
    }

    /// Chains and appends `event` unless `bounded` and the spool has no room for it.
    fn try_store(&mut self, event: &v1::Event, bounded: bool) -> Result<bool, SpoolError> {
        self.scratch.clear();
        event.encode_raw(&mut self.scratch);
        if bounded
            && !self.spool.fits(Spool::frame_bound(
                self.chain.id().len(),
                self.scratch.len(),
            ))
        {
            return Ok(false);
        }
        let record = self.chain.link(&self.scratch);
        self.spool.append(&record)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scratch;

    /// An event a collector would refuse is never spooled: it is a gap that says what it
    /// was and how large, and the chain goes on.
    #[test]
    fn an_event_too_large_to_ship_is_a_gap() {
        let dir = Scratch::new("evidence-large");
        let mut evidence = Evidence::open(&dir, 1 << 30, "test-host", "test").unwrap();
        let huge = v1::Event {
            body: Some(v1::event::Body::Tty(v1::Tty {
                data: vec![b'x'; EVENT_BYTES_MAX].into(),
                ..v1::Tty::default()
            })),
            ..v1::Event::default()
        };
        let len = huge.encoded_len() as u64;
        let durable = evidence.process(&[huge, v1::Event::default()]);
        let (records, _) = spool::read_frames(&std::fs::read(&durable.segment).unwrap().into());
        assert_eq!(records.len(), 3, "start, the gap, the next event");
        let gap = v1::Event::decode(&records[1].event[..]).unwrap();
        assert_eq!(
            gap.body,
            Some(v1::event::Body::Gap(v1::Gap {
                source: v1::gap::Source::TooLarge.into(),
                lost_kind: "tty_out".into(),
                records: 1,
                bytes: len,
            }))
        );
    }

    /// A spool already over its bound at start: the chain still starts, and what follows
    /// is refused and counted.
    #[test]
    fn a_full_spool_still_starts_its_chain() {
        let dir = Scratch::new("evidence-full");
        let mut evidence = Evidence::open(&dir, 1, "test-host", "test").unwrap();
        let durable = evidence.process(&[v1::Event::default()]);
        assert_eq!(evidence.refused_total(), 1);
        let (records, _) = spool::read_frames(&std::fs::read(&durable.segment).unwrap().into());
        assert!(
            matches!(
                v1::Event::decode(&records[0].event[..]).unwrap().body,
                Some(v1::event::Body::ChainStart(_))
            ),
            "{records:?}"
        );
        assert_eq!(records.len(), 1);
    }

    /// Batches added between two commits are durable together, and the ship stage is never
    /// told of a byte before its sync: `durable` stays where the last commit left it.
    #[test]
    fn added_batches_are_reported_durable_only_once_committed() {
        let dir = Scratch::new("evidence-commit");
        let mut evidence = Evidence::open(&dir, 1 << 20, "test-host", "test").unwrap();
        let before = evidence.durable();
        evidence.add(&[v1::Event::default()]);
        evidence.add(&[v1::Event::default(), v1::Event::default()]);
        assert!(evidence.uncommitted());
        assert_eq!(evidence.durable(), before);
        let after = evidence.commit();
        assert!(!evidence.uncommitted());
        assert_eq!(after, evidence.durable());
        let bytes = std::fs::read(&after.segment).unwrap();
        assert_eq!(bytes.len() as u64, after.len);
        let (records, _) = spool::read_frames(&bytes.into());
        assert_eq!(records.len(), 4, "the chain start and the three events");
    }
}
