use std::mem::offset_of;

use agent_common::{
    event::{dev_major, dev_minor},
    exec::{ARGV_CAP, CWD_CAP, EXEC_FIXED, ExecRecord, FILENAME_CAP, INTERP_CAP, ImageId, flags},
};
use bytes::Bytes;

use super::{DecodeError, read, slice};
use crate::capture::event::{Body, Image, Interpreter, ResolvedPath};

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
    // The paths follow argv, in order (`slice` refuses one past its bound, read or not: the
    // record is malformed either way).
    let mut at = EXEC_FIXED + argv.len();
    let mut next = |len_at: usize, cap: usize, what: &'static str| {
        let len: u64 = read(bytes, len_at)?;
        let bytes = slice(
            bytes,
            at,
            usize::try_from(len).unwrap_or(usize::MAX),
            cap,
            what,
        )?;
        at += bytes.len();
        Ok::<_, DecodeError>(bytes)
    };
    let cwd = next(offset_of!(ExecRecord, cwd_len), CWD_CAP, "cwd")?;
    let exe = next(offset_of!(ExecRecord, exe_len), CWD_CAP, "executable")?;
    let interp = next(
        offset_of!(ExecRecord, interp_len),
        INTERP_CAP,
        "interpreter",
    )?;
    let cwd = (flag_bits & flags::CWD_UNREADABLE == 0).then(|| resolved(cwd, flag_bits));
    let executable = (!exe.is_empty() && flag_bits & flags::EXE_UNREADABLE == 0)
        .then(|| resolved(exe, flag_bits >> flags::EXE_SHIFT));
    let claimed = at;
    if claimed != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            claimed,
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
        executable,
        interpreter: (!interp.is_empty()).then(|| Interpreter {
            path: String::from_utf8_lossy(interp).into_owned(),
            truncated: flag_bits & flags::INTERP_TRUNCATED != 0,
        }),
        image: (result == 0 && flag_bits & flags::IMAGE_UNREADABLE == 0)
            .then(|| read(bytes, offset_of!(ExecRecord, image)))
            .transpose()?
            .map(|id| image(id, flag_bits & flags::IMAGE_INTERPRETER != 0)),
    })
}

/// A walked path, with its flags shifted down to the working directory's.
fn resolved(path: &[u8], flag_bits: u32) -> ResolvedPath {
    ResolvedPath {
        path: String::from_utf8_lossy(path).into_owned(),
        truncated: flag_bits & flags::CWD_TRUNCATED != 0,
        deleted: flag_bits & flags::CWD_DELETED != 0,
        unreachable: flag_bits & flags::CWD_UNREACHABLE != 0,
    }
}

/// The kernel's nanoseconds may carry flag bits above the value (multigrain ctime, 6.13+);
/// a valid value is below 10^9 < 2^30.
const NSEC_MASK: u32 = (1 << 30) - 1;

fn image(id: ImageId, interpreter: bool) -> Image {
    let time = |sec: i64, nsec: u32| {
        sec.saturating_mul(1_000_000_000)
            .saturating_add(i64::from(nsec & NSEC_MASK))
    };
    // Widened from the kernel's `u32` dev_t by the program; a wider value is hostile, and
    // saturates to a device no file has.
    let dev = u32::try_from(id.dev).unwrap_or(u32::MAX);
    Image {
        dev: libc::makedev(dev_major(dev), dev_minor(dev)),
        inode: id.inode,
        size: id.size,
        mtime_ns: time(id.mtime_sec, id.mtime_nsec),
        ctime_ns: time(id.ctime_sec, id.ctime_nsec),
        interpreter,
        digest: None,
    }
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
    use agent_common::event::{Header, kind};

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
            interp_len: 0,
            exe_len: 0,
            image: ImageId {
                inode: 42,
                size: 1234,
                mtime_sec: 1_700_000_000,
                ctime_sec: 1_700_000_001,
                // 8:1 in the kernel's encoding (20 minor bits).
                dev: 8 << 20 | 1,
                mtime_nsec: 5,
                // Bit 31 is multigrain ctime's flag, not part of the value.
                ctime_nsec: 1 << 31 | 7,
            },
            filename: [0; FILENAME_CAP],
            argv: [0; ARGV_CAP],
            cwd: [0; CWD_CAP],
            exe: [0; CWD_CAP],
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

    /// A successful exec carries its image: the device in stat(2)'s encoding, the times in
    /// nanoseconds without the kernel's flag bits. A failed exec, or one whose image the
    /// kernel could not read, carries none.
    #[test]
    fn a_successful_exec_names_its_image() {
        let image_of = |result: i32, flag_bits: u32| {
            let mut bytes = record(b"foo\0", flag_bits);
            let at = offset_of!(ExecRecord, result);
            bytes[at..at + 4].copy_from_slice(&result.to_ne_bytes());
            let Body::Exec { image, .. } = decode_record(&bytes.into()).unwrap().body else {
                panic!()
            };
            image
        };
        let image = image_of(0, 0).expect("image");
        assert_eq!(
            image,
            Image {
                dev: libc::makedev(8, 1),
                inode: 42,
                size: 1234,
                mtime_ns: 1_700_000_000_000_000_005,
                ctime_ns: 1_700_000_001_000_000_007,
                interpreter: false,
                digest: None,
            }
        );
        assert!(image_of(0, flags::IMAGE_INTERPRETER).unwrap().interpreter);
        assert_eq!(image_of(0, flags::IMAGE_UNREADABLE), None);
        assert_eq!(image_of(-2, 0), None);
    }

    /// After the working directory come the executable's resolved path (its flags shifted
    /// above the directory's) and a script's interpreter path, cut off when the kernel says
    /// so; a length past the record is refused.
    #[test]
    fn a_script_names_its_executable_and_interpreter_after_its_directory() {
        const EXE: &[u8] = b"/usr/bin/dash";
        let script = |interp: &[u8], flag_bits: u32| {
            let mut bytes = record(b"foo\0", flags::IMAGE_INTERPRETER | flag_bits);
            bytes.extend_from_slice(b"/tmp");
            bytes.extend_from_slice(EXE);
            bytes.extend_from_slice(interp);
            let size = u32::try_from(bytes.len()).unwrap();
            let at = offset_of!(Header, size);
            bytes[at..at + 4].copy_from_slice(&size.to_ne_bytes());
            for (field, len) in [
                (offset_of!(ExecRecord, cwd_len), 4u64),
                (offset_of!(ExecRecord, exe_len), EXE.len() as u64),
                (offset_of!(ExecRecord, interp_len), interp.len() as u64),
            ] {
                bytes[field..field + 8].copy_from_slice(&len.to_ne_bytes());
            }
            bytes
        };
        let decoded = |bytes: Vec<u8>| {
            let Body::Exec {
                cwd,
                executable,
                interpreter,
                ..
            } = decode_record(&bytes.into()).unwrap().body
            else {
                panic!()
            };
            (cwd.unwrap(), executable.unwrap(), interpreter)
        };
        let (cwd, exe, interp) = decoded(script(b"/bin/sh", flags::EXE_DELETED));
        assert_eq!((cwd.path.as_str(), cwd.deleted), ("/tmp", false));
        assert_eq!(
            exe,
            ResolvedPath {
                path: "/usr/bin/dash".into(),
                truncated: false,
                deleted: true,
                unreachable: false,
            }
        );
        assert_eq!(
            interp,
            Some(Interpreter {
                path: "/bin/sh".into(),
                truncated: false
            })
        );
        let (cwd, exe, _) = decoded(script(b"", flags::CWD_UNREACHABLE | flags::EXE_TRUNCATED));
        assert!(cwd.unreachable && !cwd.truncated && exe.truncated && !exe.unreachable);
        let (_, _, cut) = decoded(script(b"/usr/bin/pyth", flags::INTERP_TRUNCATED));
        assert!(cut.is_some_and(|i| i.truncated && i.path == "/usr/bin/pyth"));
        assert_eq!(decoded(script(b"", 0)).2, None);
        let mut past = script(b"/bin/sh", 0);
        let at = offset_of!(ExecRecord, interp_len);
        past[at..at + 8].copy_from_slice(&8u64.to_ne_bytes());
        assert!(decode_record(&past.into()).is_err());
        let mut past = script(b"/bin/sh", 0);
        let at = offset_of!(ExecRecord, exe_len);
        past[at..at + 8].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert!(decode_record(&past.into()).is_err());
    }

    #[test]
    fn argv_length_beyond_the_record_is_rejected() {
        let mut bytes = record(b"foo\0", 0);
        let at = offset_of!(ExecRecord, argv_len);
        bytes[at..at + 4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(decode_record(&bytes.into()).is_err());
    }
}
