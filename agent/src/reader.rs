//! Drains the kernel ring buffer in batches and turns loss-counter increases into gap
//! events. Submits normally do not wake this thread (see `emit.rs` in agent-ebpf); it polls
//! with a short timeout and drains whatever accumulated, and the kernel forces a wakeup only
//! when the backlog passes a threshold.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
    time::Duration,
};

use agent_common::{
    event::{EVENTS_MAP, kind},
    loss::{LOSS_MAP, LossCounters},
};
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, RingBuf},
};

use crate::event::{Body, Event, GapSource};

/// Batches are handed on once they reach this many bytes, so one stalled drain cannot
/// build an unbounded buffer.
const BATCH_BYTES: usize = 4 << 20;

/// Records copied out of the ring buffer back to back, plus the gaps found with them.
#[derive(Default)]
pub struct Batch {
    data: Vec<u8>,
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

    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.gaps.is_empty()
    }
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
}

pub struct Reader {
    ring: RingBuf<MapData>,
    loss: PerCpuArray<MapData, LossCounters>,
    seen: LossCounters,
    interval: Duration,
}

impl Reader {
    pub fn new(ebpf: &mut Ebpf, interval: Duration) -> Result<Self, ReaderError> {
        let take = |ebpf: &mut Ebpf, name| ebpf.take_map(name).ok_or(ReaderError::MissingMap(name));
        let ring =
            RingBuf::try_from(take(ebpf, EVENTS_MAP)?).map_err(|source| ReaderError::Map {
                name: EVENTS_MAP,
                source,
            })?;
        let loss =
            PerCpuArray::try_from(take(ebpf, LOSS_MAP)?).map_err(|source| ReaderError::Map {
                name: LOSS_MAP,
                source,
            })?;
        Ok(Self {
            ring,
            loss,
            seen: LossCounters::default(),
            interval,
        })
    }

    /// Runs until `stop` is set, then drains once more so nothing submitted before the stop
    /// is left behind. Returns when the receiver hangs up, too.
    pub fn run(mut self, tx: &SyncSender<Batch>, stop: &AtomicBool) -> Result<(), ReaderError> {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if !stopping {
                self.wait();
            }
            loop {
                let batch = self.drain()?;
                if batch.is_empty() {
                    break;
                }
                let full = batch.data.len() >= BATCH_BYTES;
                if tx.send(batch).is_err() {
                    return Ok(());
                }
                if !full {
                    break;
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    fn wait(&self) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(self.interval.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd. EINTR and timeouts both just lead to a drain.
        unsafe { libc::poll(&raw mut pfd, 1, timeout) };
    }

    fn drain(&mut self) -> Result<Batch, ReaderError> {
        let mut batch = Batch::default();
        while batch.data.len() < BATCH_BYTES {
            let Some(item) = self.ring.next() else { break };
            batch.data.extend_from_slice(&item);
            batch.ends.push(batch.data.len());
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

/// `CLOCK_BOOTTIME` now, in the kernel records' time base.
#[must_use]
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-parameter.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    // Both clocks are non-negative by definition.
    ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs()
}
