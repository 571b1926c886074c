//! The decode stage: raw kernel records to [`Event`]s, one unmarshal module per sensor.
//! Every length in a record is checked against the bytes actually received; a malformed
//! record is a `decode` gap, never a panic or an out-of-bounds read. Kernel kill records
//! leave the pipeline here for the enforcer, which alone knows what caused them.

mod exec;
#[cfg(test)]
mod fuzz;
mod kill;
mod task;
mod tty;

use std::sync::atomic::Ordering::Relaxed;

use agent_common::event::{Header, kind};
use bytes::Bytes;
use tracing::{debug_span, warn};

use super::{
    event::{Body, Device, Event, GapSource, Process, audit_id},
    reader::Batch,
};
use crate::{clock::boot_ns, sinks::metrics::Health};

/// One batch, decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    /// In the order the kernel submitted them, then the batch's gaps.
    pub events: Vec<Event>,
    /// Tasks the kernel killed, for the enforcer to name the grant and reason of.
    pub kills: Vec<Event>,
}

/// Decodes a drained batch and counts what it holds in `health`.
#[must_use]
pub fn process(batch: Batch, health: &Health) -> Decoded {
    let _span = debug_span!("batch", bytes = batch.len_bytes()).entered();
    health.batches.fetch_add(1, Relaxed);
    let mut out = Decoded {
        events: Vec::with_capacity(batch.len_records() + batch.gaps.len()),
        kills: Vec::new(),
    };
    let (records, gaps) = batch.into_records();
    for record in records {
        let event = decode(&record).unwrap_or_else(|error| {
            warn!(%error, "undecodable kernel record");
            undecodable(record.len())
        });
        count(health, &event);
        if matches!(event.body, Body::Kill(_)) {
            out.kills.push(event);
        } else {
            out.events.push(event);
        }
    }
    for gap in gaps {
        warn!(?gap.body, "records lost");
        count(health, &gap);
        out.events.push(gap);
    }
    out
}

fn count(health: &Health, event: &Event) {
    match &event.body {
        Body::Gap { records, bytes, .. } => {
            health.lost_records.fetch_add(*records, Relaxed);
            health.lost_bytes.fetch_add(*bytes, Relaxed);
        }
        Body::Tty { data, .. } => {
            health.events.fetch_add(1, Relaxed);
            health.tty_bytes.fetch_add(data.len() as u64, Relaxed);
        }
        _ => {
            health.events.fetch_add(1, Relaxed);
        }
    }
}

/// A record that arrived but could not be decoded is evidence lost, so it becomes a gap.
fn undecodable(len: usize) -> Event {
    Event {
        ktime_ns: boot_ns(),
        process: None,
        body: Body::Gap {
            source: GapSource::Decode,
            lost_kind: 0,
            records: 1,
            bytes: len as u64,
        },
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need} its kind needs")]
    Short { got: usize, need: usize },
    #[error("record says it is {claimed} bytes but {got} arrived")]
    SizeMismatch { claimed: usize, got: usize },
    #[error("record kind {0} is unknown to this agent")]
    UnknownKind(u32),
    #[error("{field} length {len} exceeds its buffer of {cap}")]
    Length {
        field: &'static str,
        len: usize,
        cap: usize,
    },
    #[error("terminal record of {got} bytes has flags {flags:#x}, which no such record has")]
    TtyFlags { flags: u32, got: usize },
}

/// Decodes one record; the bytes an event carries are views of `bytes`.
pub(crate) fn decode(bytes: &Bytes) -> Result<Event, DecodeError> {
    let header: Header = read(bytes, 0)?;
    if header.size as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            claimed: header.size as usize,
            got: bytes.len(),
        });
    }
    let process = process_of(&header);
    let body = match header.kind {
        kind::EXEC => exec::decode(bytes)?,
        kind::FORK | kind::EXIT => task::decode(bytes, header.kind)?,
        kind::TTY_OUT | kind::TTY_IN => tty::decode(bytes, header.kind)?,
        kind::KILL => kill::decode(bytes)?,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event {
        ktime_ns: header.ktime_ns,
        process: Some(process),
        body,
    })
}

fn process_of(h: &Header) -> Process {
    Process {
        pid: h.pid,
        tgid: h.tgid,
        ppid: h.ppid,
        uid: h.uid,
        euid: h.euid,
        gid: h.gid,
        loginuid: audit_id(h.loginuid),
        sessionid: audit_id(h.sessionid),
        cgroup_id: h.cgroup_id,
        tty: Device::from_kernel(h.tty),
        comm: c_string(&h.comm),
    }
}

/// Reads a plain-old-data `T` at `offset`, bounds-checked.
fn read<T: Copy>(bytes: &[u8], offset: usize) -> Result<T, DecodeError> {
    let need = offset + size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: in bounds (checked above); T is a repr(C) integer record, valid for any bytes.
    Ok(unsafe { bytes.as_ptr().add(offset).cast::<T>().read_unaligned() })
}

/// A fixed-size record: a `T` and not a byte more, since bytes past it would be dropped
/// uncounted.
fn whole<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > size_of::<T>() {
        return Err(DecodeError::SizeMismatch {
            claimed: size_of::<T>(),
            got: bytes.len(),
        });
    }
    read(bytes, 0)
}

/// `len` bytes at `offset`, which must lie within both the record and a `cap`-byte field.
fn slice<'a>(
    bytes: &'a [u8],
    offset: usize,
    len: usize,
    cap: usize,
    field: &'static str,
) -> Result<&'a [u8], DecodeError> {
    if len > cap {
        return Err(DecodeError::Length { field, len, cap });
    }
    bytes.get(offset..offset + len).ok_or(DecodeError::Short {
        got: bytes.len(),
        need: offset + len,
    })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn test_header(kind: u32, size: usize) -> Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        Header {
            kind,
            size: size as u32,
            ktime_ns: 42,
            pid: 10,
            tgid: 10,
            ppid: 1,
            uid: 1000,
            euid: 0,
            gid: 1000,
            loginuid: 1000,
            sessionid: u32::MAX,
            cgroup_id: 7,
            tty: agent_common::event::make_dev(136, 3),
            cpu: 0,
            comm,
        }
    }

    pub(super) fn raw<T>(value: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) record without padding.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn header_fields_map_to_process() {
        let rec = agent_common::task::TaskRecord {
            header: test_header(kind::FORK, 88),
            exit_code: 0,
            reserved: 0,
        };
        let ev = decode(&raw(&rec).into()).unwrap();
        let p = ev.process.unwrap();
        assert_eq!(
            (p.pid, p.uid, p.euid, p.loginuid, p.sessionid),
            (10, 1000, 0, Some(1000), None)
        );
        assert_eq!(
            p.tty,
            Some(Device {
                major: 136,
                minor: 3
            })
        );
        assert_eq!(p.comm, "bash");
        assert_eq!(ev.body, Body::Fork);
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(matches!(
            decode(&Bytes::from_static(&[0u8; 10])),
            Err(DecodeError::Short { .. })
        ));
        let rec = agent_common::task::TaskRecord {
            header: test_header(kind::EXIT, 99),
            exit_code: 0,
            reserved: 0,
        };
        assert_eq!(
            decode(&raw(&rec).into()),
            Err(DecodeError::SizeMismatch {
                claimed: 99,
                got: 88
            })
        );
        let rec = agent_common::task::TaskRecord {
            header: test_header(77, 88),
            exit_code: 0,
            reserved: 0,
        };
        assert_eq!(decode(&raw(&rec).into()), Err(DecodeError::UnknownKind(77)));
    }
}
