//! The spool stage: chained events are appended to local segment files before anything
//! ships them, so an agent or collector outage loses nothing. docs/chain.md defines the
//! format; in short, a segment is a run of frames `[len u32 LE][crc32 u32 LE][payload]`
//! whose payload is one serialized `ChainedEvent`.
//!
//! Frames are buffered and made durable together (`sync`, once per drained batch). On open,
//! the newest segment is scanned and a torn tail (a frame cut short by a crash) is cut off;
//! the last whole record is the previous chain's head. A write or sync that fails is undone
//! (`rollback`) to the last durable frame, so the spool never holds a partial frame that
//! whole ones follow. Segment names count up from the newest one there, never from a clock:
//! a clock stepped back across a restart must not sort a new chain before an old one. The spool has a size bound: past it,
//! new events are refused and counted, and the count becomes a chained gap record once
//! there is room again. Segments are never deleted here: that waits for the collector's
//! acknowledgement.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use prost::Message as _;
use proto::v1::ChainedEvent;

use super::chain::Link;

pub const FRAME_HEADER: usize = 8;
/// A frame longer than this is corruption, not a record.
pub const MAX_PAYLOAD: usize = 16 << 20;
const SEGMENT_BYTES: u64 = 64 << 20;
const SUFFIX: &str = ".seg";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("a record of {len} bytes exceeds the spool's frame limit of {MAX_PAYLOAD}")]
    TooLarge { len: usize },
}

/// How far the spool is durable: the segment being appended to, and its synced length.
/// Segments before it are sealed and wholly durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub segment: PathBuf,
    pub len: u64,
}

/// The last record found in the spool at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub chain_id: String,
    pub seq: u64,
    pub hash: Vec<u8>,
}

/// What opening the spool found.
#[derive(Debug)]
pub struct Recovered {
    pub head: Option<Head>,
    /// Bytes of a torn final frame that were cut off.
    pub torn_bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    prefix: String,
    out: BufWriter<File>,
    path: PathBuf,
    segment_len: u64,
    total: u64,
    max_bytes: u64,
    /// Reused for each frame's payload.
    payload: Vec<u8>,
}

/// The whole frames at the start of `bytes`, and how many bytes they span. Each record's
/// event is a view of `bytes`, not a copy.
#[must_use]
pub fn read_frames(bytes: &Bytes) -> (Vec<ChainedEvent>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, len)) = frame_at(bytes, at, MAX_PAYLOAD) {
        records.push(record);
        at += len;
    }
    (records, at)
}

/// The record of the frame at `at` in `bytes` and the frame's length, when it is a whole
/// frame of at most `max_payload` bytes that checks.
fn frame_at(bytes: &Bytes, at: usize, max_payload: usize) -> Option<(ChainedEvent, usize)> {
    let header = bytes.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // Every record has a chain id and a hash, so an empty frame is none the agent wrote:
    // it is zeros, as a crash can leave past the last synced frame.
    if len == 0 || len > max_payload {
        return None;
    }
    let payload = at + FRAME_HEADER..at + FRAME_HEADER + len;
    if crc32fast::hash(bytes.get(payload.clone())?) != crc {
        return None;
    }
    let record = ChainedEvent::decode(bytes.slice(payload)).ok()?;
    Some((record, FRAME_HEADER + len))
}

/// The last record in a segment's bytes, and where its last frame that checks ends.
/// Corruption in the middle is read past, as the ship stage skips it, so that only a torn
/// tail, past every frame that checks, is what a restart cuts.
fn last_frame(bytes: &Bytes) -> (Option<ChainedEvent>, usize) {
    let (mut last, mut at) = (None, 0);
    loop {
        let (records, used) = read_frames(&bytes.slice(at..));
        last = records.into_iter().last().or(last);
        at += used;
        let end = at;
        match resync(&bytes.slice(at..)) {
            Some(skip) => at += skip,
            None => return (last, end),
        }
    }
}

/// Where the next frame that checks begins, after corruption at the start of `bytes`.
/// Candidates are tried at every offset, so only frames the agent can still ship are
/// sought (at most `proto::limits::EVENT_BYTES_MAX` of event), and only those whose payload
/// starts as every record does, with its chain id: a corrupt region costs a scan, not a
/// checksum per byte.
#[must_use]
pub fn resync(bytes: &Bytes) -> Option<usize> {
    // A record's payload: its event, chain id, seq and hash, with their protobuf framing.
    const RECORD_OVERHEAD: usize = 1024;
    // The tag of `ChainedEvent.chain_id` (field 1, length-delimited), which prost writes
    // first.
    const CHAIN_ID_TAG: u8 = 0x0a;
    let max_payload = proto::limits::EVENT_BYTES_MAX + RECORD_OVERHEAD;
    (1..bytes.len()).find(|&at| {
        bytes.get(at + FRAME_HEADER) == Some(&CHAIN_ID_TAG)
            && frame_at(bytes, at, max_payload).is_some()
    })
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovers its tail, and starts a new segment for
    /// this instance's chain, named to sort after every segment there.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovered), SpoolError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segments = segments(dir).map_err(io_err(dir))?;
        let mut recovered = Recovered {
            head: None,
            torn_bytes: 0,
        };
        for (i, path) in segments.iter().enumerate().rev() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err(path))?;
            let bytes = Bytes::from(bytes);
            let (last, good) = last_frame(&bytes);
            if i == segments.len() - 1 && good < bytes.len() {
                recovered.torn_bytes = (bytes.len() - good) as u64;
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(good as u64))
                    .map_err(io_err(path))?;
            }
            if let Some(last) = last {
                recovered.head = Some(Head {
                    chain_id: last.chain_id,
                    seq: last.seq,
                    hash: last.hash,
                });
                break;
            }
        }
        let mut total = 0;
        for path in &segments {
            total += fs::metadata(path).map_err(io_err(path))?.len();
        }
        // Earlier agents named segments after their start time in nanoseconds: counting on
        // from the largest keeps the order either way.
        let prefix = segments
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .map_or(1, |newest| newest.saturating_add(1));
        let prefix = format!("{prefix:020}");
        let path = dir.join(format!("{prefix}-{:020}{SUFFIX}", 0));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let spool = Self {
            dir: dir.to_path_buf(),
            prefix,
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            segment_len: 0,
            total,
            max_bytes,
            payload: Vec::new(),
        };
        Ok((spool, recovered))
    }

    /// Bytes a frame holding a `ChainedEvent` of `event_len` event bytes may take, at most.
    #[must_use]
    pub fn frame_bound(chain_id_len: usize, event_len: usize) -> u64 {
        (FRAME_HEADER + event_len + chain_id_len + 32 + 32) as u64
    }

    /// Bytes the spool holds, appended frames included.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How far the spool is durable, after a `sync`.
    #[must_use]
    pub fn durable(&self) -> Durable {
        Durable {
            segment: self.path.clone(),
            len: self.segment_len,
        }
    }

    /// Deletes a sealed segment of `bytes` bytes that a collector holds entirely.
    pub fn remove(&mut self, segment: &Path, bytes: u64) -> Result<(), SpoolError> {
        fs::remove_file(segment).map_err(|source| SpoolError::Io {
            path: segment.to_path_buf(),
            source,
        })?;
        self.total = self.total.saturating_sub(bytes);
        Ok(())
    }

    /// Whether `bound` more bytes fit under the size limit.
    #[must_use]
    pub fn fits(&self, bound: u64) -> bool {
        self.total + bound <= self.max_bytes
    }

    /// Appends one record (buffered until `sync`).
    pub fn append(&mut self, record: &Link<'_>) -> Result<(), SpoolError> {
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        record.encode(&mut payload);
        if payload.len() > MAX_PAYLOAD {
            return Err(SpoolError::TooLarge { len: payload.len() });
        }
        let frame_len = (FRAME_HEADER + payload.len()) as u64;
        if self.segment_len > 0 && self.segment_len + frame_len > SEGMENT_BYTES {
            self.rotate(record.seq)?;
        }
        let mut header = [0u8; FRAME_HEADER];
        // Fits: payload.len() <= MAX_PAYLOAD < u32::MAX.
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.out
            .write_all(&header)
            .and_then(|()| self.out.write_all(&payload))
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.segment_len += frame_len;
        self.total += frame_len;
        self.payload = payload;
        Ok(())
    }

    /// Undoes every append since the spool was durable at `to`, holding `total` bytes: the
    /// frames still buffered are dropped, the segment is cut back to its durable length, and
    /// a segment begun since is removed.
    pub fn rollback(&mut self, to: &Durable, total: u64) -> Result<(), SpoolError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&to.segment)
            .map_err(io_err(&to.segment))?;
        file.set_len(to.len).map_err(io_err(&to.segment))?;
        if self.path != to.segment {
            match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err(&self.path)(e));
                }
                _ => {}
            }
        }
        // `into_parts` drops the buffered frames; dropping the writer would write them.
        let (_, _dropped) =
            std::mem::replace(&mut self.out, BufWriter::with_capacity(1 << 20, file)).into_parts();
        self.path.clone_from(&to.segment);
        self.segment_len = to.len;
        self.total = total;
        Ok(())
    }

    /// Hands everything appended so far to the kernel (not yet durable).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.out.flush().map_err(|source| SpoolError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Begins a new segment, unless the current one is empty, so that the current one can
    /// be deleted once the collector holds it.
    pub fn seal(&mut self, next_seq: u64) -> Result<(), SpoolError> {
        if self.segment_len == 0 {
            return Ok(());
        }
        self.rotate(next_seq)
    }

    fn rotate(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        self.sync()?;
        let path = self
            .dir
            .join(format!("{}-{first_seq:020}{SUFFIX}", self.prefix));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        // The new name must survive a crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SpoolError::Io {
                path: self.dir.clone(),
                source,
            })?;
        self.out = BufWriter::with_capacity(1 << 20, file);
        self.path = path;
        self.segment_len = 0;
        Ok(())
    }
}

/// Segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == &SUFFIX[1..]))
        .collect();
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{evidence::chain::Chain, testing::Scratch};

    #[test]
    fn a_torn_tail_is_cut_and_the_head_survives() {
        let dir = Scratch::new("spool-torn");
        let (mut spool, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(recovered.head, None);
        let mut chain = Chain::new("c1".into());
        let mut records = Vec::new();
        for i in 0..3 {
            let event = [i; 10];
            let link = chain.link(&event);
            spool.append(&link).unwrap();
            records.push(link.to_owned());
        }
        spool.sync().unwrap();
        drop(spool);
        let seg = segments(&dir).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);

        let (_spool, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(recovered.torn_bytes, 6);
        let last = &records[2];
        assert_eq!(
            recovered.head,
            Some(Head {
                chain_id: "c1".into(),
                seq: 2,
                hash: last.hash.clone()
            })
        );
        let (read, good) = read_frames(&fs::read(&seg).unwrap().into());
        assert_eq!(
            (read, good as u64),
            (records, fs::metadata(&seg).unwrap().len())
        );
    }

    /// A broken frame in the middle of the newest segment is corruption, not a torn tail:
    /// a restart keeps the frames after it, and its head is the last of them.
    #[test]
    fn a_corrupt_frame_mid_segment_is_not_cut_as_a_torn_tail() {
        let dir = Scratch::new("spool-mid");
        let (mut spool, _) = Spool::open(&dir, 1 << 30).unwrap();
        let mut chain = Chain::new("c1".into());
        let mut last = None;
        for i in 0..5 {
            let event = [i; 10];
            let link = chain.link(&event);
            spool.append(&link).unwrap();
            last = Some(link.to_owned());
        }
        spool.sync().unwrap();
        drop(spool);
        let seg = segments(&dir).unwrap().pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        // The third frame: where it starts and how long it is.
        let len = |at: usize| {
            FRAME_HEADER + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
        };
        let third = len(0) + len(len(0));
        let frame = len(third);
        bytes[third + FRAME_HEADER + 3] ^= 1;
        fs::write(&seg, &bytes).unwrap();

        let (_spool, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(recovered.torn_bytes, 0);
        assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing cut");
        let last = last.unwrap();
        assert_eq!(
            recovered.head.map(|h| (h.seq, h.hash)),
            Some((4, last.hash))
        );
        assert_eq!(resync(&Bytes::from(bytes).slice(third..)), Some(frame));
    }

    #[test]
    fn a_corrupt_frame_ends_the_readable_run() {
        let mut chain = Chain::new("c".into());
        let payload = chain.link(b"x").to_owned().encode_to_vec();
        let mut bytes = Vec::new();
        bytes.extend(u32::try_from(payload.len()).unwrap().to_le_bytes());
        bytes.extend((crc32fast::hash(&payload) ^ 1).to_le_bytes());
        bytes.extend(&payload);
        assert_eq!(read_frames(&bytes.into()), (vec![], 0));
    }

    /// Each start's segments sort after every earlier one's, whatever the clock says, and
    /// after those named by earlier agents for their start time.
    #[test]
    fn segment_names_count_up_from_the_newest() {
        let dir = Scratch::new("spool-names");
        let old = dir.join(format!(
            "{:020}-{:020}{SUFFIX}",
            1_796_000_000_000_000_000u64, 0
        ));
        fs::write(&old, b"").unwrap();
        let first = Spool::open(&dir, 1 << 30).unwrap().0.durable().segment;
        let second = Spool::open(&dir, 1 << 30).unwrap().0.durable().segment;
        assert_eq!(segments(&dir).unwrap(), [old, first, second]);
    }

    #[test]
    fn the_size_bound_is_reported() {
        let dir = Scratch::new("spool-bound");
        let (spool, _) = Spool::open(&dir, 100).unwrap();
        assert!(spool.fits(100) && !spool.fits(101));
    }
}

/// Hostile spool bytes: whatever a segment holds (a crash's torn or zeroed tail, corruption,
/// a length claiming 4 GiB), `read_frames` returns exactly the whole frames that lead it,
/// without panicking or allocating for a length it has not checked.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::{evidence::chain::Chain, testing::largest_allocation};

    /// Far above what reading the inputs here allocates, far below what a length claims.
    const HEAP_BOUND: usize = 1 << 20;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        [
            &len.to_le_bytes()[..],
            &crc32fast::hash(payload).to_le_bytes(),
            payload,
        ]
        .concat()
    }

    /// The frames of a chain `chain_id` of `events`, as the spool appends them, and its
    /// records.
    fn chain_frames(chain_id: &str, events: &[Vec<u8>]) -> (Vec<u8>, Vec<ChainedEvent>) {
        let mut chain = Chain::new(chain_id.to_owned());
        let (mut bytes, mut records) = (Vec::new(), Vec::new());
        for event in events {
            let link = chain.link(event);
            let mut payload = Vec::new();
            link.encode(&mut payload);
            bytes.extend(frame(&payload));
            records.push(link.to_owned());
        }
        (bytes, records)
    }

    /// The ship stage copies no event bytes between the segment and the gRPC encoder: each
    /// record's event is a view of the buffer the segment was read into.
    #[test]
    fn records_read_share_the_buffer_they_were_read_into() {
        let (whole, records) = chain_frames("c", &[vec![7; 300], b"exec".to_vec()]);
        let bytes = Bytes::from(whole);
        let (read, _) = read_frames(&bytes);
        assert_eq!(read, records);
        for record in read {
            assert!(bytes.as_ptr_range().contains(&record.event.as_ptr()));
        }
    }

    /// What follows the last whole frame: anything, or a header claiming any length.
    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (
                any::<u32>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(len, crc, rest)| [
                    &len.to_le_bytes()[..],
                    &crc.to_le_bytes(),
                    &rest
                ]
                .concat()),
        ]
    }

    /// `read_frames` reads `bytes` as `records` spanning `len` bytes, within the heap bound.
    fn check_reads(
        bytes: &[u8],
        records: &[ChainedEvent],
        len: usize,
    ) -> Result<(), TestCaseError> {
        let bytes = Bytes::copy_from_slice(bytes);
        let ((read, used), largest) = largest_allocation(|| read_frames(&bytes));
        prop_assert!(largest <= HEAP_BOUND, "allocated {largest} bytes at once");
        prop_assert_eq!(&read[..], records);
        prop_assert_eq!(used, len);
        Ok(())
    }

    /// Frames of every shape a segment can end in after the whole ones: cut anywhere, a
    /// bad CRC, zeros, lengths of 4 GiB and one past the limit on a few bytes.
    #[test]
    fn seed_segments_read_to_their_last_whole_frame() {
        let (whole, records) = chain_frames("c", &[b"exec".to_vec(), Vec::new(), vec![0; 300]]);
        let (next, _) = chain_frames("c", &[b"next".to_vec()]);
        let mut bad_crc = next.clone();
        bad_crc[4] ^= 1;
        let over = u32::try_from(MAX_PAYLOAD + 1).unwrap();
        let tails: [(&str, &[u8]); 7] = [
            ("nothing", &[]),
            ("a short header", &[0; 7]),
            ("zeros", &[0; 4096]),
            ("a length of 4 GiB", &[0xff; 20]),
            (
                "a length past the limit",
                &[&over.to_le_bytes()[..], &[0; 16]].concat(),
            ),
            ("a cut frame", &next[..next.len() - 1]),
            ("a bad CRC", &bad_crc),
        ];
        for (what, tail) in tails {
            check_reads(&[&whole, tail].concat(), &records, whole.len())
                .and_then(|()| check_reads(tail, &[], 0))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // A frame over the limit that would otherwise read: whole, checking, a record.
        let mut chain = Chain::new("c".into());
        let mut payload = Vec::new();
        chain.link(&vec![0; MAX_PAYLOAD]).encode(&mut payload);
        assert!(payload.len() > MAX_PAYLOAD);
        assert!(ChainedEvent::decode(payload.as_slice()).is_ok());
        assert_eq!(read_frames(&frame(&payload).into()), (vec![], 0));
    }

    proptest! {
        // About 1 s each in a debug build.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn whole_frames_then_garbage_read_as_exactly_the_frames(
            chain_id in "\\PC{1,40}",
            events in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..256), 0..8),
            tail in garbage(),
        ) {
            let (whole, records) = chain_frames(&chain_id, &events);
            check_reads(&[&whole, &tail[..]].concat(), &records, whole.len())?;
        }

        #[test]
        fn any_bytes_read_as_their_longest_run_of_whole_frames(
            bytes in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            let bytes = Bytes::from(bytes);
            let ((records, used), largest) = largest_allocation(|| read_frames(&bytes));
            prop_assert!(largest <= HEAP_BOUND, "allocated {largest} bytes at once");
            prop_assert!(used <= bytes.len());
            // The run ends where the next frame does not read, and re-reads the same.
            prop_assert_eq!(read_frames(&bytes.slice(used..)).1, 0);
            prop_assert_eq!(read_frames(&bytes.slice(..used)), (records, used));
        }
    }
}
