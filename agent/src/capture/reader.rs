//! The reader stage: drains the kernel ring buffer in batches and turns loss-counter
//! increases into gap events. Submits normally do not wake this thread (see `emit.rs` in
//! agent-ebpf); it waits with a short timeout and drains whatever accumulated, and the
//! kernel forces a wakeup only when the backlog passes a threshold. The wait is on the
//! kernel's wakeups alone (edge-triggered epoll): a ring buffer polls readable whenever it
//! holds a byte, so a level-triggered wait returned at once under a flood and the reader
//! handed on a tiny batch per record or two, filling the decode stage's channel with them.
//!
//! This is the pipeline's one drop point. When the next stage's bounded channel is full,
//! the terminal's ring is drained regardless and its records dropped here, counted by record
//! kind; the counts travel as `Pipeline` gap events with the next batch the stage accepts.
//! Draining on keeps that ring from filling, so the kernel keeps submitting the records that
//! follow. The exec, fork, exit and kill records are not drained meanwhile: they wait in
//! their own rings until there is room, so a terminal flood cannot make the pipeline drop
//! them (if such a ring fills, the kernel counts what it refuses).

use std::{
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use agent_common::{
    enforce::KILLS_MAP,
    event::{CONTROL_MAP, EVENTS_MAP, kind},
    exec::EXEC_FIXED,
    loss::{LOSS_MAP, LossCounters},
    tty::TTY_FIXED,
};
use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{Sender, error::TrySendError};

use super::{
    event::{Body, Event, GapSource},
    sensors::Programs,
};
use crate::clock::boot_ns;

/// Batches are handed on once they reach this many bytes, so one stalled drain cannot
/// build an unbounded buffer.
const BATCH_BYTES: usize = 4 << 20;

/// While drains find nothing, the wait doubles from the drain interval up to this (or the
/// interval, if longer): an idle host would otherwise wake the agent at every interval (at
/// 2 ms, about 1% of a core here). The first record after a quiet spell waits at most this.
const IDLE_WAIT: Duration = Duration::from_millis(32);

/// Records copied out of the ring buffer back to back, plus the gaps found with them. This
/// is the one copy of their bytes: decoded events hold views of it (`Bytes`), so argv
/// strings and terminal data are shared from stage to stage until they are serialized.
#[derive(Default)]
pub struct Batch {
    data: BytesMut,
    ends: Vec<usize>,
    pub gaps: Vec<Event>,
}

impl Batch {
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.data[s..e])
    }

    /// Each record as a view of the batch's one buffer, and the gaps.
    pub fn into_records(self) -> (impl Iterator<Item = Bytes>, Vec<Event>) {
        let data = self.data.freeze();
        let mut start = 0;
        let records = self.ends.into_iter().map(move |end| {
            let record = data.slice(start..end);
            start = end;
            record
        });
        (records, self.gaps)
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.gaps.is_empty()
    }

    /// Kernel records held.
    #[must_use]
    pub fn len_records(&self) -> usize {
        self.ends.len()
    }

    /// Appends one record as the kernel submitted it (the reader's drain, and benchmarks
    /// that feed the stages records of their own).
    pub fn push_record(&mut self, record: &[u8]) {
        self.data.extend_from_slice(record);
        self.ends.push(self.data.len());
    }

    /// Bytes of kernel records held.
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        self.data.len()
    }
}

/// What the next stage had no room for, not yet reported.
#[derive(Default)]
struct Dropped {
    counts: LossCounters,
    /// Gap events that rode on dropped batches: they are counts, so they are kept.
    gaps: Vec<Event>,
}

impl Dropped {
    fn add(&mut self, batch: Batch) {
        for record in batch.records() {
            let Some(kind) = record
                .get(..4)
                .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]) as usize)
                .filter(|&k| k < kind::SLOTS)
            else {
                // Malformed: the decode stage would have counted it as a decode gap.
                self.counts.records[0] += 1;
                self.counts.bytes[0] += record.len() as u64;
                continue;
            };
            self.counts.records[kind] += 1;
            self.counts.bytes[kind] += payload_len(kind, record.len());
        }
        self.gaps.extend(batch.gaps);
    }

    /// Moves the counts, as `Pipeline` gap events, and the carried gaps into `batch`.
    fn report_into(&mut self, batch: &mut Batch) {
        let now = boot_ns();
        for k in 0..kind::SLOTS {
            let (records, bytes) = (self.counts.records[k], self.counts.bytes[k]);
            if records > 0 {
                batch.gaps.push(Event {
                    ktime_ns: now,
                    process: None,
                    body: Body::Gap {
                        source: GapSource::Pipeline,
                        lost_kind: k as u32,
                        records,
                        bytes,
                    },
                });
            }
        }
        batch.gaps.append(&mut self.gaps);
        self.counts = LossCounters::default();
    }

    fn is_empty(&self) -> bool {
        self.gaps.is_empty() && self.counts.records.iter().all(|&r| r == 0)
    }
}

/// The payload bytes a record carries, counted the way the kernel's loss counters count
/// them: argv for execs, data for terminal writes.
fn payload_len(kind: usize, record_len: usize) -> u64 {
    let fixed = match kind as u32 {
        kind::EXEC => EXEC_FIXED,
        kind::TTY_OUT | kind::TTY_IN => TTY_FIXED,
        _ => return 0,
    };
    record_len.saturating_sub(fixed) as u64
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("map {0} is missing from the embedded object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
}

pub struct Reader {
    ring: RingBuf<MapData>,
    /// Exec, fork and exit records: drained before the terminal's, so a process's exec is
    /// handed on before the output it makes.
    control: RingBuf<MapData>,
    /// The enforcement program's ring: pinned, so it also holds the kills made while no
    /// agent ran. Each kill wakes the reader.
    kills: RingBuf<MapData>,
    loss: PerCpuArray<MapData, LossCounters>,
    seen: LossCounters,
    interval: Duration,
    /// The three rings, edge-triggered: ready only when the kernel wakes a reader.
    epoll: OwnedFd,
}

impl Reader {
    pub fn new(programs: &Programs, interval: Duration) -> Result<Self, ReaderError> {
        let take = |name| programs.take_map(name).ok_or(ReaderError::MissingMap(name));
        let ring = RingBuf::try_from(take(EVENTS_MAP)?).map_err(|source| ReaderError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        let control = RingBuf::try_from(take(CONTROL_MAP)?).map_err(|source| ReaderError::Map {
            name: CONTROL_MAP,
            source,
        })?;
        let kills = RingBuf::try_from(take(KILLS_MAP)?).map_err(|source| ReaderError::Map {
            name: KILLS_MAP,
            source,
        })?;
        let loss = PerCpuArray::try_from(take(LOSS_MAP)?).map_err(|source| ReaderError::Map {
            name: LOSS_MAP,
            source,
        })?;
        let epoll = edge_triggered(&[ring.as_raw_fd(), control.as_raw_fd(), kills.as_raw_fd()])
            .map_err(ReaderError::Epoll)?;
        Ok(Self {
            ring,
            control,
            kills,
            loss,
            seen: LossCounters::default(),
            interval,
            epoll,
        })
    }

    /// Runs until `stop` is set, then drains once more so nothing submitted before the stop
    /// is left behind, and waits for room to report what it dropped. Returns when the
    /// receiver hangs up, too.
    pub fn run(mut self, tx: &Sender<Batch>, stop: &AtomicBool) -> Result<(), ReaderError> {
        let mut dropped = Dropped::default();
        let mut timeout = self.interval;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if !stopping {
                self.wait(timeout);
            }
            let mut found = false;
            loop {
                // Room is taken before the drain: without it, only the terminal's ring is
                // drained (and dropped).
                let permit = if stopping {
                    None
                } else {
                    match tx.try_reserve() {
                        Ok(permit) => Some(permit),
                        Err(TrySendError::Full(())) => None,
                        Err(TrySendError::Closed(())) => return Ok(()),
                    }
                };
                let mut batch = self.drain(stopping || permit.is_some())?;
                if batch.is_empty() && dropped.is_empty() {
                    break;
                }
                found = true;
                let full = batch.data.len() >= BATCH_BYTES;
                if stopping {
                    dropped.report_into(&mut batch);
                    if tx.blocking_send(batch).is_err() {
                        return Ok(());
                    }
                } else if let Some(permit) = permit {
                    dropped.report_into(&mut batch);
                    permit.send(batch);
                } else {
                    dropped.add(batch);
                }
                if !full {
                    break;
                }
            }
            if stopping {
                return Ok(());
            }
            timeout = if found {
                self.interval
            } else {
                timeout.saturating_mul(2).min(IDLE_WAIT.max(self.interval))
            };
        }
    }

    /// Until the kernel wakes a reader (a kill, or a backlog past the threshold) or
    /// `timeout` passes.
    fn wait(&self, timeout: Duration) {
        // One event per ring it watches; which ones fired does not matter, every drain
        // reads all three.
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 3];
        let room = i32::try_from(events.len()).unwrap_or(1);
        let timeout = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: a valid epoll fd, and `room` events at `events`. EINTR and timeouts both
        // just lead to a drain.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), room, timeout) };
    }

    /// A batch of what the rings hold: the kills', the control ring's and the terminal's
    /// records, in that order; the terminal's alone without `control`.
    fn drain(&mut self, control: bool) -> Result<Batch, ReaderError> {
        let mut batch = Batch::default();
        while control && let Some(item) = self.kills.next() {
            batch.push_record(&item);
        }
        while control && batch.data.len() < BATCH_BYTES {
            let Some(item) = self.control.next() else {
                break;
            };
            batch.push_record(&item);
        }
        while batch.data.len() < BATCH_BYTES {
            let Some(item) = self.ring.next() else { break };
            batch.push_record(&item);
        }
        batch.gaps = self.gaps()?;
        Ok(batch)
    }

    /// One gap event per record kind whose loss counters grew since the last look.
    fn gaps(&mut self) -> Result<Vec<Event>, ReaderError> {
        let per_cpu = self.loss.get(&0, 0).map_err(|source| ReaderError::Map {
            name: LOSS_MAP,
            source,
        })?;
        let mut total = LossCounters::default();
        for cpu in per_cpu.iter() {
            for k in 0..kind::SLOTS {
                total.records[k] += cpu.records[k];
                total.bytes[k] += cpu.bytes[k];
            }
        }
        let mut gaps = Vec::new();
        for k in 0..kind::SLOTS {
            let records = total.records[k] - self.seen.records[k];
            let bytes = total.bytes[k] - self.seen.bytes[k];
            if records > 0 || bytes > 0 {
                gaps.push(Event {
                    ktime_ns: boot_ns(),
                    process: None,
                    body: Body::Gap {
                        source: GapSource::Kernel,
                        lost_kind: k as u32,
                        records,
                        bytes,
                    },
                });
            }
        }
        self.seen = total;
        Ok(gaps)
    }
}

/// An epoll instance watching `fds` for the wakeups their producers send.
fn edge_triggered(fds: &[i32]) -> std::io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    for &fd in fds {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET).cast_unsigned(),
            u64: 0,
        };
        // SAFETY: valid fds and event.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut event) }
            < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(epoll)
}
