use std::mem::offset_of;

use agent_common::exec::{ARGV_CAP, CWD_CAP, EXEC_FIXED, ExecRecord, FILENAME_CAP, flags};
use bytes::Bytes;

use super::{DecodeError, read, slice};
use crate::capture::event::{Body, Cwd};

pub(super) fn decode(bytes: &Bytes) -> Result<Body, DecodeError> {
    if bytes.len() < EXEC_FIXED {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need: EXEC_FIXED,
        });
    }
    let result: i32 = read(bytes, offset_of!(ExecRecord, result))?;
    let flag_bits: u32 = read(bytes, offset_of!(ExecRecord, flags))?;
    let filename_len: u32 = read(bytes, offset_of!(ExecRecord, filename_len))?;
    let argv_len: u32 = read(bytes, offset_of!(ExecRecord, argv_len))?;
    let filename = slice(
        bytes,
        offset_of!(ExecRecord, filename),
        filename_len as usize,
        FILENAME_CAP,
        "filename",
    )?;
    let argv = slice(bytes, EXEC_FIXED, argv_len as usize, ARGV_CAP, "argv")?;
    let cwd_len: u64 = read(bytes, offset_of!(ExecRecord, cwd_len))?;
    let cwd_len = usize::try_from(cwd_len).unwrap_or(usize::MAX);
    // The path follows argv (`slice` refuses one past its bound, read or not: the record
    // is malformed either way).
    let path = slice(bytes, EXEC_FIXED + argv.len(), cwd_len, CWD_CAP, "cwd")?;
    let cwd = (flag_bits & flags::CWD_UNREADABLE == 0).then(|| Cwd {
        path: String::from_utf8_lossy(path).into_owned(),
        truncated: flag_bits & flags::CWD_TRUNCATED != 0,
        deleted: flag_bits & flags::CWD_DELETED != 0,
        unreachable: flag_bits & flags::CWD_UNREACHABLE != 0,
    });
    if EXEC_FIXED + argv.len() + path.len() != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            claimed: EXEC_FIXED + argv.len() + path.len(),
            got: bytes.len(),
        });
    }
    Ok(Body::Exec {
        filename: String::from_utf8_lossy(filename).into_owned(),
        filename_truncated: flag_bits & flags::FILENAME_TRUNCATED != 0,
        argv: split_argv(bytes, argv),
        argv_truncated: flag_bits & flags::ARGV_TRUNCATED != 0,
        argv_unreadable: flag_bits & flags::ARGV_UNREADABLE != 0,
        result,
        tried: Vec::new(),
        cwd,
    })
}

/// Splits NUL-terminated strings, each a view of `record`, which holds `block`; a cut-off
/// last string (no NUL) is kept as it is.
fn split_argv(record: &Bytes, block: &[u8]) -> Vec<Bytes> {
    let block = block.strip_suffix(&[0]).unwrap_or(block);
    if block.is_empty() {
        return Vec::new();
    }
    block
        .split(|&b| b == 0)
        .map(|s| record.slice_ref(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use agent_common::event::kind;

    use super::*;
    use crate::capture::decode::{
        decode as decode_record,
        tests::{raw, test_header},
    };

    fn record(argv: &[u8], flag_bits: u32) -> Vec<u8> {
        let mut rec = ExecRecord {
            header: test_header(kind::EXEC, EXEC_FIXED + argv.len()),
            result: -2,
            flags: flag_bits,
            filename_len: 8,
            argv_len: argv.len() as u32,
            cwd_len: 0,
            filename: [0; FILENAME_CAP],
            argv: [0; ARGV_CAP],
            cwd: [0; CWD_CAP],
        };
        rec.filename[..8].copy_from_slice(b"/bin/foo");
        rec.argv[..argv.len()].copy_from_slice(argv);
        raw(&rec)[..EXEC_FIXED + argv.len()].to_vec()
    }

    #[test]
    fn argv_block_splits_into_strings() {
        let ev = decode_record(&record(b"foo\0-x\0\0last\0", 0).into()).unwrap();
        let Body::Exec {
            filename,
            argv,
            result,
            argv_truncated,
            ..
        } = ev.body
        else {
            panic!()
        };
        assert_eq!(
            (filename.as_str(), result, argv_truncated),
            ("/bin/foo", -2, false)
        );
        assert_eq!(argv, [&b"foo"[..], b"-x", b"", b"last"]);
        // Views of the record, not copies.
        let bytes = Bytes::from(record(b"foo\0-x\0", 0));
        let Body::Exec { argv, .. } = decode_record(&bytes).unwrap().body else {
            panic!()
        };
        for arg in argv {
            assert!(bytes.as_ptr_range().contains(&arg.as_ptr()));
        }
    }

    #[test]
    fn truncated_argv_keeps_its_partial_last_string() {
        let ev = decode_record(&record(b"foo\0ba", flags::ARGV_TRUNCATED).into()).unwrap();
        let Body::Exec {
            argv,
            argv_truncated,
            ..
        } = ev.body
        else {
            panic!()
        };
        assert_eq!(
            (argv, argv_truncated),
            (
                vec![Bytes::from_static(b"foo"), Bytes::from_static(b"ba")],
                true
            )
        );
    }

    #[test]
    fn argv_length_beyond_the_record_is_rejected() {
        let mut bytes = record(b"foo\0", 0);
        let at = offset_of!(ExecRecord, argv_len);
        bytes[at..at + 4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(decode_record(&bytes.into()).is_err());
    }
}
