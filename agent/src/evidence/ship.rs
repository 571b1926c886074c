//! The ship stage: sends what the spool holds durably to the collector over the Ingest
//! stream, and deletes a spool segment once the collector has acknowledged all of it.
//!
//! Every connection starts with a Hello naming the chains in the spool; the collector's
//! Welcome says how much of each it holds, and shipping resumes right after that. Records the
//! collector already holds are skipped, never trusted to a second copy: the collector acks a
//! resend of stored records again, so a lost ack costs a resend, not evidence. When the
//! collector is unreachable the stage retries with exponential backoff while the spool keeps
//! filling up to its bound. The Welcome's heads count as acknowledged only once each is seen
//! to be this host's own record; a head that is not ends the connection.
//!
//! With TLS the stage also keeps the host's Merkle log (`log`): every record read is a leaf,
//! and a signed checkpoint follows the records it covers, at most every second while records
//! flow and every minute when none do.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use proto::v1::{
    self, AgentMessage, ChainedEvent, CollectorMessage, EventBatch, Heartbeat, Hello, SpoolHole,
    Welcome, agent_message::Msg, collector_message, ingest_client::IngestClient,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    control::{self, Control, Ledger, Trims},
    link::{Link, SigningIdentity},
    log::HostLog,
    spool::{self, Durable, FRAME_HEADER, read_frames},
};

/// Bytes of frames read from the spool per batch sent.
const BATCH_BYTES: usize = 1 << 20;
/// Batches sent ahead of the collector's acks.
const IN_FLIGHT: usize = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Checkpoints are signed at most this often while records flow.
const CHECKPOINT_BUSY: Duration = Duration::from_secs(1);
/// And at least this often when none do, so that "nothing happened" is attested too.
const CHECKPOINT_IDLE: Duration = Duration::from_mins(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the agent tells the collector it is alive when it has nothing else to say
/// (docs/grants.md, "Liveness").
const HEARTBEAT: Duration = Duration::from_secs(5);

pub struct Shipper {
    pub link: Link,
    pub dir: PathBuf,
    pub host: String,
    /// The display name its chains give the host, said again in each Hello.
    pub name: String,
    pub durable: watch::Receiver<Durable>,
    pub control: Control,
    /// Corrupt spool regions (segment, offset) already chained as `spool_corrupt`: every
    /// connection reads them again, and each is told once.
    pub skips: Arc<Mutex<HashSet<(PathBuf, u64)>>>,
}

impl Shipper {
    /// Ships until the spool stage ends, reconnecting with backoff whenever the collector is
    /// unreachable or ends the stream.
    pub async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        // The collector shipped to: the first, and after a failure the next, at once. It
        // waits only once every collector has failed in turn.
        let mut at = 0;
        loop {
            let url = self.link.urls[at].clone();
            match self.connection(&url).await {
                Ok(()) => return,
                Err(e) => {
                    at = (at + 1) % self.link.urls.len();
                    if at == 0 {
                        warn!(collector = %url, error = format!("{e:#}"), retry_in = ?backoff, "shipping to the collector");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        warn!(collector = %url, error = format!("{e:#}"), next = %self.link.urls[at], "shipping to the collector: failing over");
                    }
                }
            }
            if self.durable.has_changed().is_err() {
                return;
            }
        }
    }

    /// One connection: Hello, Welcome, then records out and acks in until either side ends.
    /// `Ok` only when the spool stage has ended and everything durable was sent.
    /// The host's log as this connection continues it, after the Welcome's log state is
    /// checked against this host's receipts: a collector behind one it cosigned is chained
    /// as rolled back.
    async fn host_log(
        &mut self,
        identity: &SigningIdentity,
        welcome: &Welcome,
        chains: &[String],
    ) -> anyhow::Result<HostLog> {
        let state = welcome
            .log
            .as_ref()
            .context("the collector sent no log state: it predates signed checkpoints")?;
        if state.origin != identity.signer.name() {
            bail!(
                "the collector names this host's log {:?}, not {:?}: another deployment's CA?",
                state.origin,
                identity.signer.name()
            );
        }
        if let Some(largest) =
            self.control
                .receipts
                .welcome(&identity.ca_pem, &identity.deployment, state)?
        {
            self.control.rollback(&self.host, state.size, largest).await;
        }
        HostLog::open(
            &self.dir,
            chains,
            identity.signer.clone(),
            welcome,
            Arc::clone(&self.control.receipts),
        )
    }

    async fn connection(&mut self, url: &str) -> anyhow::Result<()> {
        let channel = self
            .link
            .endpoint(url)?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        // The largest view a collector sends (`proto::limits`), not tonic's 4 MiB default.
        let mut client =
            IngestClient::new(channel).max_decoding_message_size(proto::limits::VIEW_BYTES_MAX);
        let chains = chains_in(&self.dir)?;
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        put(
            &tx,
            Msg::Hello(Hello {
                host: self.host.clone(),
                chain_ids: chains.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                host_name: self.name.clone(),
            }),
        )
        .await?;
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("opening the ingest stream")?
            .into_inner();
        let Some(CollectorMessage {
            msg: Some(collector_message::Msg::Welcome(welcome)),
        }) = inbound.message().await?
        else {
            bail!("the collector did not answer Hello with Welcome");
        };
        let ledger = Arc::new(Ledger::default());
        let identity = self.link.signing_identity(&self.host)?;
        let log = match &identity {
            Some(identity) => Some(self.host_log(identity, &welcome, &chains).await?),
            None => None,
        };
        let mut next = HashMap::new();
        let mut heads = HashMap::new();
        for head in welcome.heads {
            if head.next_seq > 0 {
                heads.insert(head.chain_id.clone(), (head.next_seq - 1, head.head_hash));
            }
            next.insert(head.chain_id, head.next_seq);
        }
        info!(collector = %url, chains = chains.len(), "shipping to the collector");

        let mut sender = tokio::spawn(send(
            Reading {
                dir: self.dir.clone(),
                durable: self.durable.clone(),
                next,
                heads,
                log,
                corruption: Corruption {
                    host: self.host.clone(),
                    events: self.control.events.clone(),
                    told: Arc::clone(&self.skips),
                },
            },
            Arc::clone(&ledger),
            self.control.trims.clone(),
            tx.clone(),
        ));
        let signer = identity.map(|i| i.signer);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                sent = &mut sender => {
                    return sent.context("the spool reader panicked")?;
                }
                _ = heartbeat.tick() => {
                    let beat = AgentMessage { msg: Some(Msg::Heartbeat(Heartbeat {})) };
                    // A full queue already tells the collector this host is alive.
                    let _ = tx.try_send(beat);
                }
                message = inbound.message() => {
                    let Some(message) = message.context("the collector ended the stream")? else {
                        sender.abort();
                        bail!("the collector closed the stream");
                    };
                    self.control.receive(message, &ledger, signer.as_ref()).await?;
                }
            }
        }
    }
}

/// What the sending side of one connection reads: the spool, how far it is durable, the
/// first seq of each chain the collector lacks, and the host's log (`None` without TLS).
struct Reading {
    dir: PathBuf,
    durable: watch::Receiver<Durable>,
    next: HashMap<String, u64>,
    /// The collector's last record of each chain it holds: its seq and hash.
    heads: HashMap<String, (u64, Vec<u8>)>,
    log: Option<HostLog>,
    corruption: Corruption,
}

/// Where corrupt spool regions are told: chained as `spool_corrupt` alerts, once each.
struct Corruption {
    host: String,
    /// Where the agent's own alerts are chained.
    events: mpsc::Sender<Vec<v1::Event>>,
    told: Arc<Mutex<HashSet<(PathBuf, u64)>>>,
}

impl Corruption {
    /// Chains a `spool_corrupt` alert for `bytes` of `segment` from `at` that were skipped,
    /// unless this region was told already.
    async fn tell(&self, segment: &Path, at: u64, bytes: u64, chain: Option<&str>) {
        let first = self
            .told
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((segment.to_path_buf(), at));
        if !first {
            return;
        }
        let message = format!(
            "{bytes} bytes of spool segment {} from byte {at} are not frames that check: the \
             records they held are lost, and shipping goes on after them",
            segment.display()
        );
        warn!(bytes, at, segment = %segment.display(), "{message}");
        let alert = control::alert(
            &self.host,
            "spool_corrupt",
            chain.unwrap_or_default(),
            0,
            message,
        );
        // The evidence stage has ended once the agent stops.
        let _ = self.events.send(vec![alert]).await;
    }
}

/// Spool bytes skipped since the last record read, and the chain of the record before them.
struct Skip {
    chain: Option<String>,
    bytes: u64,
}

/// Sends every durable record the collector lacks, oldest segment first, then follows the
/// spool as it grows, with a signed checkpoint of the host's log after the records it
/// covers. Returns when the spool stage has ended and all it made durable is sent.
async fn send(
    reading: Reading,
    ledger: Arc<Ledger>,
    trims: Trims,
    tx: mpsc::Sender<AgentMessage>,
) -> anyhow::Result<()> {
    let Reading {
        dir,
        mut durable,
        mut next,
        heads,
        mut log,
        corruption,
    } = reading;
    let mut cursor = Cursor::default();
    let mut skip: Option<Skip> = None;
    // The first checkpoint is due at once: it tells the collector where the log stands.
    let mut last_checkpoint: Option<tokio::time::Instant> = None;
    let mut grown = false;
    let checkpoint = async |log: &mut Option<HostLog>, again: bool| -> anyhow::Result<()> {
        let Some(checkpoint) = log
            .as_mut()
            .map(|l| l.checkpoint(again))
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        put(&tx, Msg::Checkpoint(checkpoint)).await
    };
    loop {
        let limit = durable.borrow_and_update().clone();
        let read = tokio::task::block_in_place(|| cursor.read(&dir, &limit))?;
        match read {
            Read::Records(records) => {
                let Some(last) = records.last() else { continue };
                if let Some(log) = &mut log {
                    for r in &records {
                        log.read(&r.chain_id, r.seq, &r.hash)?;
                    }
                }
                check_heads(&records, &heads, &ledger, &trims)?;
                let chain_id = last.chain_id.clone();
                // What the collector holds, and what this connection sent it since.
                let from = next.insert(chain_id.clone(), last.seq + 1).unwrap_or(0);
                grown = true;
                let messages = messages(chain_id, records, from, skip.take());
                if messages.is_empty() {
                    continue;
                }
                for message in messages {
                    put(&tx, message).await?;
                }
                if last_checkpoint.is_none_or(|t| t.elapsed() >= CHECKPOINT_BUSY) {
                    checkpoint(&mut log, false).await?;
                    last_checkpoint = Some(tokio::time::Instant::now());
                    grown = false;
                }
            }
            Read::Skipped {
                segment,
                at,
                bytes,
                chain,
            } => {
                corruption.tell(&segment, at, bytes, chain.as_deref()).await;
                skip.get_or_insert(Skip { chain, bytes: 0 }).bytes += bytes;
            }
            Read::SegmentDone(path, chain, last_seq, bytes) => {
                // Durable before the segment can go: every deleted record is in the state.
                if let Some(log) = &log {
                    tokio::task::block_in_place(|| log.save())?;
                }
                ledger.segment_read(path, chain, last_seq, bytes, &trims);
            }
            // An error means the spool stage has ended and its last sync was seen.
            Read::CaughtUp => {
                if log.is_none() {
                    if durable.changed().await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                let wait = if grown {
                    CHECKPOINT_BUSY
                } else {
                    CHECKPOINT_IDLE
                };
                let due = last_checkpoint.map_or_else(tokio::time::Instant::now, |t| t + wait);
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() {
                        checkpoint(&mut log, false).await?;
                        return Ok(());
                    },
                    () = tokio::time::sleep_until(due) => {
                        checkpoint(&mut log, !grown).await?;
                        last_checkpoint = Some(tokio::time::Instant::now());
                        grown = false;
                    }
                }
            }
        }
    }
}

/// Sends one message on the ingest stream.
async fn put(tx: &mpsc::Sender<AgentMessage>, msg: Msg) -> anyhow::Result<()> {
    tx.send(AgentMessage { msg: Some(msg) })
        .await
        .context("the ingest stream closed")
}

/// The messages that send what the collector lacks of `records` (read from the spool, all
/// of `chain_id`): the seqs from `from` on, as a batch. Holes (collector.proto, `SpoolHole`)
/// come first: after skipped spool bytes, the chain before them lost its tail when they end
/// it, and the first record after them anchors the rest; and a first record past `from`
/// anchors seqs that neither the spool nor the collector holds any more.
fn messages(
    chain_id: String,
    records: Vec<ChainedEvent>,
    from: u64,
    skip: Option<Skip>,
) -> Vec<Msg> {
    let mut records: Vec<ChainedEvent> = records
        .into_iter()
        .filter(|r| r.seq >= from)
        .map(|r| ChainedEvent {
            chain_id: String::new(),
            ..r
        })
        .collect();
    let mut messages = Vec::new();
    let (cause, skipped_bytes) = match skip {
        Some(Skip { chain, bytes }) => {
            if let Some(before) = chain.filter(|c| *c != chain_id) {
                messages.push(Msg::Hole(SpoolHole {
                    chain_id: before,
                    anchor: None,
                    skipped_bytes: bytes,
                    cause: "corrupt".into(),
                }));
            }
            ("corrupt", bytes)
        }
        None => ("missing", 0),
    };
    // Without records, the collector holds the first one after the bytes already.
    if records
        .first()
        .is_some_and(|r| r.seq > from || cause == "corrupt")
    {
        messages.push(Msg::Hole(SpoolHole {
            chain_id: chain_id.clone(),
            anchor: Some(records.remove(0)),
            skipped_bytes,
            cause: cause.into(),
        }));
    }
    if !records.is_empty() {
        messages.push(Msg::Batch(EventBatch {
            chain_id,
            events: records,
        }));
    }
    messages
}

/// Checks the collector's heads against the records read. A collector whose head is not
/// this host's record at that seq holds another history: nothing more goes to it, and
/// nothing it acknowledged is trimmed. What it holds counts as acknowledged only once its
/// head is seen to be this host's own record.
fn check_heads(
    records: &[ChainedEvent],
    heads: &HashMap<String, (u64, Vec<u8>)>,
    ledger: &Ledger,
    trims: &Trims,
) -> anyhow::Result<()> {
    for r in records {
        let Some((seq, hash)) = heads.get(&r.chain_id).filter(|(seq, _)| *seq == r.seq) else {
            continue;
        };
        if *hash != r.hash {
            bail!(
                "the collector's head of chain {} at seq {seq} is not this host's record: it \
                 holds another history",
                r.chain_id
            );
        }
        ledger.acked(r.chain_id.clone(), r.seq, trims);
    }
    Ok(())
}

/// A read position in the spool.
#[derive(Default)]
struct Cursor {
    segment: Option<PathBuf>,
    offset: u64,
    /// Chain and seq of the last record read from `segment`.
    last: Option<(String, u64)>,
}

enum Read {
    Records(Vec<ChainedEvent>),
    /// Bytes of `segment` from offset `at` whose frames do not check were skipped, up to
    /// the next frame that does or to the end of what is durable. `chain`: the chain of
    /// the last record read before them in the segment.
    Skipped {
        segment: PathBuf,
        at: u64,
        bytes: u64,
        chain: Option<String>,
    },
    /// A sealed segment was read to its end: its path, chain, last seq and size.
    SegmentDone(PathBuf, String, u64, u64),
    /// Everything durable has been read.
    CaughtUp,
}

impl Cursor {
    fn read(&mut self, dir: &Path, durable: &Durable) -> anyhow::Result<Read> {
        // The directory is listed only to find where to begin and where to go on: each
        // read while records flow would otherwise list it again.
        let segment = match self.segment.clone() {
            Some(segment) => segment,
            None => match spool::segments(dir).context("listing the spool")?.first() {
                Some(first) => first.clone(),
                None => return Ok(Read::CaughtUp),
            },
        };
        let active = segment == durable.segment;
        let end = if active {
            durable.len
        } else {
            std::fs::metadata(&segment)
                .with_context(|| format!("reading {}", segment.display()))?
                .len()
        };
        if self.offset < end {
            let bytes = read_at(&segment, self.offset, end)
                .with_context(|| format!("reading {}", segment.display()))?;
            let (records, used) = read_frames(&bytes);
            if used == 0 {
                // Corruption: everything up to the next frame that checks is skipped, so one
                // bad frame costs what it held and stops nothing after it.
                let rest = read_to(&segment, self.offset, end)
                    .with_context(|| format!("reading {}", segment.display()))?;
                let skipped = spool::resync(&rest).unwrap_or(rest.len()) as u64;
                let at = self.offset;
                self.offset += skipped;
                self.segment = Some(segment.clone());
                return Ok(Read::Skipped {
                    segment,
                    at,
                    bytes: skipped,
                    chain: self.last.as_ref().map(|(chain, _)| chain.clone()),
                });
            }
            self.segment = Some(segment);
            self.offset += used as u64;
            self.last = records.last().map(|r| (r.chain_id.clone(), r.seq));
            return Ok(Read::Records(records));
        }
        if active {
            self.segment = Some(segment);
            return Ok(Read::CaughtUp);
        }
        // A sealed segment, read to its end: move on to the one after it, once there is one.
        let segments = spool::segments(dir).context("listing the spool")?;
        let Some(following) = segments.iter().find(|s| **s > segment).cloned() else {
            self.segment = Some(segment);
            return Ok(Read::CaughtUp);
        };
        self.segment = Some(following);
        self.offset = 0;
        Ok(match self.last.take() {
            Some((chain, seq)) => Read::SegmentDone(segment, chain, seq, end),
            None => Read::Records(Vec::new()),
        })
    }
}

/// Whole frames from `offset`, at most `BATCH_BYTES` of them unless one frame is larger:
/// the one buffer the batch's records are views of.
fn read_at(path: &Path, offset: u64, end: u64) -> io::Result<Bytes> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let available = usize::try_from(end - offset).unwrap_or(usize::MAX);
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact(&mut header)?;
    let first =
        FRAME_HEADER + u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let want = available.min(BATCH_BYTES.max(first));
    let mut bytes = Vec::with_capacity(want);
    bytes.extend_from_slice(&header);
    file.take((want - FRAME_HEADER) as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes.into())
}

/// The bytes of `path` from `offset` to `end`.
fn read_to(path: &Path, offset: u64, end: u64) -> io::Result<Bytes> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(end - offset).read_to_end(&mut bytes)?;
    Ok(bytes.into())
}

/// The chains the spool holds records of, oldest first, from each segment's first record.
fn chains_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut chains: Vec<String> = Vec::new();
    for segment in spool::segments(dir).context("listing the spool")? {
        let bytes = match read_at(&segment, 0, std::fs::metadata(&segment)?.len()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", segment.display())),
        };
        if let Some(first) = read_frames(&bytes).0.into_iter().next()
            && chains.last() != Some(&first.chain_id)
        {
            chains.push(first.chain_id);
        }
    }
    Ok(chains)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(chain_id: &str, seqs: std::ops::Range<u64>) -> Vec<ChainedEvent> {
        seqs.map(|seq| ChainedEvent {
            chain_id: chain_id.into(),
            seq,
            event: vec![1].into(),
            hash: vec![2; 32],
        })
        .collect()
    }

    /// Each message as (kind, chain, anchor seq or first seq, cause).
    fn shape(messages: &[Msg]) -> Vec<(&'static str, String, Option<u64>, String)> {
        messages
            .iter()
            .map(|m| match m {
                Msg::Hole(h) => (
                    "hole",
                    h.chain_id.clone(),
                    h.anchor.as_ref().map(|a| a.seq),
                    h.cause.clone(),
                ),
                Msg::Batch(b) => (
                    "batch",
                    b.chain_id.clone(),
                    b.events.first().map(|e| e.seq),
                    String::new(),
                ),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn records_that_continue_the_collector_are_one_batch() {
        let sent = messages("c".into(), records("c", 3..6), 4, None);
        assert_eq!(
            shape(&sent),
            [("batch", "c".into(), Some(4), String::new())]
        );
        assert!(messages("c".into(), records("c", 3..6), 6, None).is_empty());
    }

    #[test]
    fn records_past_what_the_collector_holds_are_anchored_as_missing() {
        let sent = messages("c".into(), records("c", 7..9), 4, None);
        assert_eq!(
            shape(&sent),
            [
                ("hole", "c".into(), Some(7), "missing".into()),
                ("batch", "c".into(), Some(8), String::new())
            ]
        );
    }

    #[test]
    fn skipped_bytes_anchor_the_next_record_and_end_the_chain_before() {
        let skip = |chain: &str| {
            Some(Skip {
                chain: Some(chain.into()),
                bytes: 99,
            })
        };
        let sent = messages("c".into(), records("c", 5..7), 4, skip("c"));
        assert_eq!(
            shape(&sent),
            [
                ("hole", "c".into(), Some(5), "corrupt".into()),
                ("batch", "c".into(), Some(6), String::new())
            ]
        );
        let sent = messages("d".into(), records("d", 0..1), 0, skip("c"));
        assert_eq!(
            shape(&sent),
            [
                ("hole", "c".into(), None, "corrupt".into()),
                ("hole", "d".into(), Some(0), "corrupt".into())
            ]
        );
    }
}
