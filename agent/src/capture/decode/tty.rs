use std::mem::offset_of;

use agent_common::{
    event::kind,
    tty::{
        CHUNK, NO_LEADER, TTY_FIXED, TTY_INJECTED, TTY_REDACTED, TTY_RESIZE, TTY_UNSEEN, TtyRecord,
        unpack_readers,
    },
};
use bytes::Bytes;

use super::{DecodeError, read, slice};
use crate::capture::event::{Body, Device, GapSource, Readers};

const INJECTED_REDACTED: u32 = TTY_INJECTED | TTY_REDACTED;

pub(super) fn decode(bytes: &Bytes, kind_id: u32) -> Result<Body, DecodeError> {
    let device: u32 = read(bytes, offset_of!(TtyRecord, device))?;
    let fd: u32 = read(bytes, offset_of!(TtyRecord, fd))?;
    let offset: u64 = read(bytes, offset_of!(TtyRecord, offset))?;
    let len: u32 = read(bytes, offset_of!(TtyRecord, len))?;
    let flags: u32 = read(bytes, offset_of!(TtyRecord, flags))?;
    // A pushed byte's record holds its readers where others hold their position.
    let (offset, injected) = if flags & TTY_INJECTED == 0 {
        (offset, None)
    } else {
        (0, Some(readers(offset)))
    };
    match flags {
        0 => {}
        // A byte pushed into a terminal's input, or through its master: a byte at a time.
        TTY_INJECTED if len == 1 => {}
        // Only the count of bytes typed (or pushed) without echo: the record ends before
        // `data`.
        TTY_REDACTED | INJECTED_REDACTED if kind_id == kind::TTY_IN && bytes.len() == TTY_FIXED => {
            return Ok(Body::Tty {
                input: true,
                device: Device::from_kernel(device),
                fd,
                offset,
                data: Bytes::new(),
                redacted_bytes: u64::from(len),
                injected,
                writes: 1,
                span_ns: 0,
                write_bytes: Vec::new(),
                write_gap_ns: Vec::new(),
            });
        }
        // A window size: rows and columns in place of the position and the length.
        TTY_RESIZE if bytes.len() == TTY_FIXED => {
            // Each is an unsigned short in `struct winsize`.
            let size = |field, value: u64| {
                u16::try_from(value)
                    .map(u32::from)
                    .map_err(|_| DecodeError::Length {
                        field,
                        len: usize::try_from(value).unwrap_or(usize::MAX),
                        cap: usize::from(u16::MAX),
                    })
            };
            return Ok(Body::TtyResize {
                device: Device::from_kernel(device),
                rows: size("rows", offset)?,
                cols: size("cols", u64::from(len))?,
            });
        }
        // Written by sendfile or splice: counted, never read.
        TTY_UNSEEN if bytes.len() == TTY_FIXED => {
            return Ok(Body::Gap {
                source: GapSource::Unseen,
                lost_kind: kind_id,
                records: 1,
                bytes: u64::from(len),
            });
        }
        _ => {
            return Err(DecodeError::TtyFlags {
                flags,
                got: bytes.len(),
            });
        }
    }
    let data = slice(bytes, TTY_FIXED, len as usize, CHUNK, "tty data")?;
    if TTY_FIXED + data.len() != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            claimed: TTY_FIXED + data.len(),
            got: bytes.len(),
        });
    }
    Ok(Body::Tty {
        input: kind_id == kind::TTY_IN,
        device: Device::from_kernel(device),
        fd,
        offset,
        data: bytes.slice_ref(data),
        redacted_bytes: 0,
        injected,
        writes: 1,
        span_ns: 0,
        write_bytes: Vec::new(),
        write_gap_ns: Vec::new(),
    })
}

/// The readers of a `TTY_INJECTED` record, from where its position would be.
fn readers(packed: u64) -> Readers {
    let (session, foreground) = unpack_readers(packed);
    let leader = |euid| (euid != NO_LEADER).then_some(euid);
    Readers {
        session_euid: leader(session),
        foreground_euid: leader(foreground),
    }
}

#[cfg(test)]
mod tests {
    use agent_common::tty::pack_readers;

    use super::*;
    use crate::capture::decode::{
        decode as decode_record,
        tests::{raw, test_header},
    };

    fn record(kind_id: u32, data: &[u8], len: u32, flags: u32) -> Vec<u8> {
        let mut rec = TtyRecord {
            header: test_header(kind_id, TTY_FIXED + data.len()),
            device: agent_common::event::make_dev(136, 3),
            fd: 0,
            offset: 0,
            len,
            flags,
            data: [0; CHUNK],
        };
        rec.data[..data.len()].copy_from_slice(data);
        raw(&rec)[..TTY_FIXED + data.len()].to_vec()
    }

    /// Terminal data is not copied out of the batch it arrived in: the event holds a view.
    #[test]
    fn data_is_a_view_of_the_record() {
        let bytes = Bytes::from(record(kind::TTY_OUT, b"ls\r\n", 4, 0));
        let Body::Tty { data, .. } = decode_record(&bytes).unwrap().body else {
            panic!()
        };
        assert_eq!(&data[..], b"ls\r\n");
        assert!(bytes.as_ptr_range().contains(&data.as_ptr()));
    }

    #[test]
    fn redacted_input_is_a_count_without_bytes() {
        let ev = decode_record(&record(kind::TTY_IN, b"", 9, TTY_REDACTED).into()).unwrap();
        let Body::Tty {
            input,
            data,
            redacted_bytes,
            ..
        } = ev.body
        else {
            panic!("{:?}", ev.body)
        };
        assert_eq!((input, data.len(), redacted_bytes), (true, 0, 9));
    }

    /// A byte pushed by `TIOCSTI` is marked so, with its byte, or only counted when the
    /// terminal hid input; its readers come in place of its position, a missing leader as
    /// none. Pushed through a master, it is output.
    #[test]
    fn pushed_bytes_are_marked_with_their_readers() {
        let readers = |session, foreground| Readers {
            session_euid: session,
            foreground_euid: foreground,
        };
        let none = pack_readers(NO_LEADER, NO_LEADER);
        for (kind_id, data, flags, packed, want) in [
            (
                kind::TTY_IN,
                &b"x"[..],
                TTY_INJECTED,
                pack_readers(1000, 0),
                (b"x".to_vec(), 0, readers(Some(1000), Some(0))),
            ),
            (
                kind::TTY_IN,
                &b""[..],
                TTY_INJECTED | TTY_REDACTED,
                pack_readers(NO_LEADER, 7),
                (Vec::new(), 1, readers(None, Some(7))),
            ),
            (
                kind::TTY_OUT,
                &b"y"[..],
                TTY_INJECTED,
                none,
                (b"y".to_vec(), 0, readers(None, None)),
            ),
        ] {
            let mut bytes = record(kind_id, data, 1, flags);
            let at = offset_of!(TtyRecord, offset);
            bytes[at..at + 8].copy_from_slice(&packed.to_ne_bytes());
            let ev = decode_record(&bytes.into()).unwrap();
            let Body::Tty {
                input,
                offset,
                data,
                redacted_bytes,
                injected,
                ..
            } = ev.body
            else {
                panic!("{:?}", ev.body)
            };
            assert_eq!(input, kind_id == kind::TTY_IN);
            assert_eq!(offset, 0, "the readers are not a position");
            assert_eq!((data.to_vec(), redacted_bytes, injected.unwrap()), want);
        }
    }

    #[test]
    fn unseen_bytes_are_a_gap_of_the_writer() {
        let ev = decode_record(&record(kind::TTY_OUT, b"", 4096, TTY_UNSEEN).into()).unwrap();
        assert_eq!(
            ev.body,
            Body::Gap {
                source: GapSource::Unseen,
                lost_kind: kind::TTY_OUT,
                records: 1,
                bytes: 4096
            }
        );
        assert_eq!(ev.process.unwrap().tgid, 10);
    }

    /// A window size: rows in place of the position, columns in place of the length; a
    /// size no `struct winsize` holds is an error.
    #[test]
    fn a_resize_is_its_rows_and_columns() {
        let mut bytes = record(kind::TTY_IN, b"", 132, TTY_RESIZE);
        let at = offset_of!(TtyRecord, offset);
        bytes[at..at + 8].copy_from_slice(&43u64.to_ne_bytes());
        let ev = decode_record(&bytes.clone().into()).unwrap();
        assert_eq!(
            ev.body,
            Body::TtyResize {
                device: Device::from_kernel(agent_common::event::make_dev(136, 3)),
                rows: 43,
                cols: 132
            }
        );
        bytes[at..at + 8].copy_from_slice(&(1u64 << 16).to_ne_bytes());
        assert_eq!(
            decode_record(&bytes.into()),
            Err(DecodeError::Length {
                field: "rows",
                len: 1 << 16,
                cap: 0xffff
            })
        );
    }

    #[test]
    fn flags_that_do_not_fit_are_errors() {
        // A redacted or unseen record carrying bytes, redacted output and unknown flags: none
        // of these is what the kernel program writes, so none is trusted.
        for (kind_id, data, flags) in [
            (kind::TTY_IN, &b"hunter2"[..], TTY_REDACTED),
            (kind::TTY_OUT, &b""[..], TTY_REDACTED),
            (kind::TTY_IN, &b"ls"[..], 8),
            (kind::TTY_IN, &b"ls"[..], TTY_INJECTED),
            (kind::TTY_OUT, &b"ls"[..], TTY_INJECTED),
            (kind::TTY_IN, &b"l"[..], TTY_INJECTED | TTY_REDACTED),
            (kind::TTY_OUT, &b""[..], TTY_INJECTED | TTY_REDACTED),
            (kind::TTY_OUT, &b"ls"[..], TTY_UNSEEN),
            (kind::TTY_OUT, &b"ls"[..], TTY_RESIZE),
        ] {
            let bytes = record(kind_id, data, data.len() as u32, flags);
            assert!(
                matches!(
                    decode_record(&bytes.into()),
                    Err(DecodeError::TtyFlags { .. })
                ),
                "{kind_id} {flags}"
            );
        }
    }
}
