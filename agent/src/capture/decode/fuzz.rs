//! Hostile kernel records: whatever bytes arrive, the decode stage neither panics nor drops
//! a record uncounted, and allocates nothing a length field claims before checking it.

use std::{mem::offset_of, sync::atomic::Ordering::Relaxed};

use agent_common::{
    enforce::KillRecord,
    event::{Header, kind},
    exec::{ARGV_CAP, CWD_CAP, EXEC_FIXED, ExecRecord, FILENAME_CAP, INTERP_CAP, flags},
    task::TaskRecord,
    tty::{CHUNK, TTY_FIXED, TtyRecord},
};
use bytes::Bytes;
use proptest::{prelude::*, sample::Index, strategy::Union};

use super::{decode, process};
use crate::{
    capture::{
        event::{Body, GapSource},
        reader::Batch,
    },
    sinks::metrics::Health,
    testing::largest_allocation,
};

/// Kinds the kernel submits.
const KINDS: [u32; 6] = [
    kind::EXEC,
    kind::FORK,
    kind::EXIT,
    kind::TTY_OUT,
    kind::TTY_IN,
    kind::KILL,
];

/// Far above what decoding records within their caps allocates (8 KiB of NULs is 8,192
/// empty argv strings: 192 KiB of `Vec`s), far below what a length field can claim.
const HEAP_BOUND: usize = 1 << 20;

fn get(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn put(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

/// `put` for the exec record's `u64` lengths.
fn put64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

/// Sets the size field to the record's length.
fn agree(bytes: &mut [u8]) {
    let len = bytes.len() as u32;
    put(bytes, offset_of!(Header, size), len);
}

/// A kind's fixed part, and where its body's length field is and what caps it.
fn layout(kind_id: u32) -> (usize, Option<(usize, usize)>) {
    match kind_id {
        kind::EXEC => (
            EXEC_FIXED,
            Some((offset_of!(ExecRecord, argv_len), ARGV_CAP)),
        ),
        kind::TTY_OUT | kind::TTY_IN => (TTY_FIXED, Some((offset_of!(TtyRecord, len), CHUNK))),
        kind::KILL => (size_of::<KillRecord>(), None),
        _ => (size_of::<TaskRecord>(), None),
    }
}

/// A record of `kind_id` as the kernel submits it: `noise` fills every field, then the kind,
/// size and length fields are set to agree with `body` (cut to the kind's cap).
fn record(kind_id: u32, noise: &[u8], body: &[u8], filename_len: u32, cwd_len: u64) -> Vec<u8> {
    let (fixed, length) = layout(kind_id);
    let body = &body[..body.len().min(length.map_or(0, |(_, cap)| cap))];
    let mut bytes = [&noise[..fixed], body].concat();
    if kind_id == kind::EXEC {
        // The working directory follows argv, then the executable's and the interpreter's
        // paths (of lengths derived from the directory's, to vary with it): any bytes will
        // do.
        let cwd_len = usize::try_from(cwd_len).unwrap();
        let (exe, interp) = tail_lens(cwd_len);
        bytes.extend(noise.iter().cycle().take(cwd_len + exe + interp));
    }
    put(&mut bytes, offset_of!(Header, kind), kind_id);
    agree(&mut bytes);
    if let Some((at, _)) = length {
        put(&mut bytes, at, body.len() as u32);
    }
    if kind_id == kind::EXEC {
        put(
            &mut bytes,
            offset_of!(ExecRecord, filename_len),
            filename_len,
        );
        put64(&mut bytes, offset_of!(ExecRecord, cwd_len), cwd_len);
        let (exe, interp) = tail_lens(usize::try_from(cwd_len).unwrap());
        put64(&mut bytes, offset_of!(ExecRecord, exe_len), exe as u64);
        put64(
            &mut bytes,
            offset_of!(ExecRecord, interp_len),
            interp as u64,
        );
    }
    if kind_id == kind::TTY_OUT || kind_id == kind::TTY_IN {
        // Records with data; redacted ones have none, and a test of their own.
        put(&mut bytes, offset_of!(TtyRecord, flags), 0);
    }
    bytes
}

/// The executable's and the interpreter's path lengths that go with a working directory's.
fn tail_lens(cwd_len: usize) -> (usize, usize) {
    (cwd_len * 3 % CWD_CAP, cwd_len * 7 % INTERP_CAP)
}

fn record_of(kind_id: u32) -> impl Strategy<Value = Vec<u8>> {
    // Mostly short bodies: a long one costs a thousand times more to generate, and the
    // length checks care about the edges, not the bulk.
    let body = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 0..=ARGV_CAP),
    ];
    (
        prop::collection::vec(any::<u8>(), EXEC_FIXED),
        body,
        0..=FILENAME_CAP as u32,
        0..=CWD_CAP as u64,
    )
        .prop_map(move |(noise, body, filename_len, cwd_len)| {
            record(kind_id, &noise, &body, filename_len, cwd_len)
        })
}

fn valid_record() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KINDS.to_vec()).prop_flat_map(record_of)
}

/// One way a record can be wrong. Each leaves it undecodable: every kind's length is fixed
/// by its fields, so no cut or extension can be right.
#[derive(Clone, Debug)]
enum Harm {
    /// The size field disagrees with the bytes that arrived.
    Size(u32),
    /// A kind id this agent does not know.
    Kind(u32),
    /// Cut short, the size field (where it survives) rewritten to agree.
    Cut(Index),
    /// Bytes appended, the size field rewritten to agree.
    Trail(Vec<u8>),
    /// The argv or terminal data length disagrees with the bytes that arrived.
    BodyLen(u32),
    /// An exec's filename length is past its buffer.
    FilenameLen(u32),
    /// An exec's working directory length is past its buffer.
    CwdLen(u64),
    /// An exec's executable path length is past its buffer.
    ExeLen(u64),
    /// An exec's interpreter path length is past its buffer.
    InterpLen(u64),
}

/// The harms that apply to a record of `kind_id`.
fn harm_of(kind_id: u32) -> impl Strategy<Value = Harm> {
    let mut harms = vec![
        any::<u32>().prop_map(Harm::Size).boxed(),
        any::<u32>()
            .prop_filter("an unknown kind", |k| !KINDS.contains(k))
            .prop_map(Harm::Kind)
            .boxed(),
        any::<Index>().prop_map(Harm::Cut).boxed(),
        prop::collection::vec(any::<u8>(), 1..64)
            .prop_map(Harm::Trail)
            .boxed(),
    ];
    if layout(kind_id).1.is_some() {
        harms.push(any::<u32>().prop_map(Harm::BodyLen).boxed());
    }
    if kind_id == kind::EXEC {
        harms.push(
            (FILENAME_CAP as u32 + 1..)
                .prop_map(Harm::FilenameLen)
                .boxed(),
        );
        harms.push((CWD_CAP as u64 + 1..).prop_map(Harm::CwdLen).boxed());
        harms.push((CWD_CAP as u64 + 1..).prop_map(Harm::ExeLen).boxed());
        harms.push((INTERP_CAP as u64 + 1..).prop_map(Harm::InterpLen).boxed());
    }
    Union::new(harms)
}

/// Sets the field at `at` to `value`, or to another value where `value` is the one there.
fn change(bytes: &mut [u8], at: usize, value: u32) {
    let value = if get(bytes, at) == value {
        value.wrapping_add(1)
    } else {
        value
    };
    put(bytes, at, value);
}

fn harm(mut bytes: Vec<u8>, harm: &Harm) -> Vec<u8> {
    let size_at = offset_of!(Header, size);
    match harm {
        Harm::Size(size) => change(&mut bytes, size_at, *size),
        Harm::Kind(k) => put(&mut bytes, offset_of!(Header, kind), *k),
        Harm::Cut(at) => {
            bytes.truncate(at.index(bytes.len()));
            if bytes.len() >= size_at + 4 {
                agree(&mut bytes);
            }
        }
        Harm::Trail(extra) => {
            bytes.extend(extra);
            agree(&mut bytes);
        }
        Harm::BodyLen(len) => {
            let kind_id = get(&bytes, offset_of!(Header, kind));
            let (at, _) = layout(kind_id).1.expect("only kinds with a body length");
            change(&mut bytes, at, *len);
        }
        Harm::FilenameLen(len) => put(&mut bytes, offset_of!(ExecRecord, filename_len), *len),
        Harm::CwdLen(len) => put64(&mut bytes, offset_of!(ExecRecord, cwd_len), *len),
        Harm::ExeLen(len) => put64(&mut bytes, offset_of!(ExecRecord, exe_len), *len),
        Harm::InterpLen(len) => put64(&mut bytes, offset_of!(ExecRecord, interp_len), *len),
    }
    bytes
}

fn harmed_record() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KINDS.to_vec())
        .prop_flat_map(|k| (record_of(k), harm_of(k)))
        .prop_map(|(bytes, h)| harm(bytes, &h))
}

/// A valid record with a few bytes anywhere overwritten: a bit flipped in the ring.
fn flipped_record() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_record(),
        prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    )
        .prop_map(|(mut bytes, flips)| {
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes
        })
}

fn any_record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        valid_record(),
        harmed_record(),
        flipped_record(),
    ]
}

/// Decodes `records` as one batch and checks that each became exactly one event, in order:
/// its decoding, or a decode gap of its length, and that the health counters agree.
fn check_batch(records: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut batch = Batch::default();
    for r in records {
        batch.push_record(r);
    }
    let health = Health::default();
    let (out, largest) = largest_allocation(|| process(batch, &health));
    prop_assert!(largest <= HEAP_BOUND, "allocated {largest} bytes at once");
    prop_assert_eq!(out.events.len() + out.kills.len(), records.len());
    let (mut events, mut kills) = (out.events.iter(), out.kills.iter());
    let (mut decoded, mut lost_bytes) = (0, 0);
    for r in records {
        if let Ok(expected) = decode(&Bytes::copy_from_slice(r)) {
            let got = if matches!(expected.body, Body::Kill(_)) {
                kills.next()
            } else {
                events.next()
            };
            prop_assert_eq!(got, Some(&expected));
            decoded += 1;
        } else {
            let counted = Body::Gap {
                source: GapSource::Decode,
                lost_kind: 0,
                records: 1,
                bytes: r.len() as u64,
            };
            prop_assert_eq!(events.next().map(|e| &e.body), Some(&counted));
            lost_bytes += r.len() as u64;
        }
    }
    let lost = (records.len() - decoded) as u64;
    prop_assert_eq!(health.events.load(Relaxed), decoded as u64);
    prop_assert_eq!(health.lost_records.load(Relaxed), lost);
    prop_assert_eq!(health.lost_bytes.load(Relaxed), lost_bytes);
    Ok(())
}

/// `bytes` is not decodable, and the decode stage counts it as one lost record of its size.
fn check_rejected(bytes: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        decode(&Bytes::copy_from_slice(bytes)).is_err(),
        "decoded {bytes:?}"
    );
    check_batch(&[bytes.to_vec()])
}

/// `bytes` decodes to the event of its kind, carrying its argv or terminal data whole.
fn check_decoded(bytes: &[u8]) -> Result<(), TestCaseError> {
    let kind_id = get(bytes, offset_of!(Header, kind));
    let event =
        decode(&Bytes::copy_from_slice(bytes)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    match (kind_id, event.body) {
        (
            kind::EXEC,
            Body::Exec {
                filename,
                argv,
                cwd,
                executable,
                interpreter,
                ..
            },
        ) => {
            let at = offset_of!(ExecRecord, filename);
            let len = get(bytes, offset_of!(ExecRecord, filename_len)) as usize;
            prop_assert_eq!(filename, String::from_utf8_lossy(&bytes[at..at + len]));
            let argv_end = EXEC_FIXED + get(bytes, offset_of!(ExecRecord, argv_len)) as usize;
            let cwd_end = argv_end + get(bytes, offset_of!(ExecRecord, cwd_len)) as usize;
            if get(bytes, offset_of!(ExecRecord, flags)) & flags::CWD_UNREADABLE == 0 {
                let path = String::from_utf8_lossy(&bytes[argv_end..cwd_end]);
                prop_assert_eq!(cwd.map(|c| c.path), Some(path.into_owned()));
            } else {
                prop_assert_eq!(cwd, None);
            }
            let exe_end = cwd_end + get(bytes, offset_of!(ExecRecord, exe_len)) as usize;
            let exe = String::from_utf8_lossy(&bytes[cwd_end..exe_end]);
            let exe_readable =
                get(bytes, offset_of!(ExecRecord, flags)) & flags::EXE_UNREADABLE == 0;
            prop_assert_eq!(
                executable.map(|e| e.path),
                (exe_readable && !exe.is_empty()).then(|| exe.into_owned())
            );
            let interp = String::from_utf8_lossy(&bytes[exe_end..]);
            prop_assert_eq!(
                interpreter.map(|i| i.path),
                (!interp.is_empty()).then(|| interp.into_owned())
            );
            let block = &bytes[EXEC_FIXED..argv_end];
            prop_assert_eq!(argv.join(&0), block.strip_suffix(&[0]).unwrap_or(block));
        }
        (kind::TTY_OUT | kind::TTY_IN, Body::Tty { input, data, .. }) => {
            prop_assert_eq!(input, kind_id == kind::TTY_IN);
            prop_assert_eq!(&data[..], &bytes[TTY_FIXED..]);
        }
        (kind::FORK, Body::Fork)
        | (kind::EXIT, Body::Exit { .. })
        | (kind::KILL, Body::Kill(_)) => {}
        (k, body) => return Err(TestCaseError::fail(format!("kind {k} decoded to {body:?}"))),
    }
    check_batch(&[bytes.to_vec()])
}

/// The corpus: one valid record of each kind, the edges of every length field, and claims
/// of 4 GiB on records of a few bytes.
fn seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let noise = [7u8; EXEC_FIXED];
    let argv = b"sudo\0-i\0";
    let valid: Vec<Vec<u8>> = KINDS
        .iter()
        .map(|&k| record(k, &noise, argv, 8, 5))
        .chain([
            record(kind::EXEC, &noise, &[], 0, 0),
            record(
                kind::EXEC,
                &noise,
                &[0; ARGV_CAP],
                FILENAME_CAP as u32,
                CWD_CAP as u64,
            ),
            record(kind::TTY_OUT, &noise, &[b'x'; CHUNK], 0, 0),
        ])
        .collect();
    let exec = record(kind::EXEC, &noise, argv, 8, 5);
    let tty = record(kind::TTY_OUT, &noise, argv, 0, 0);
    let mut rejected = vec![
        Vec::new(),
        vec![0; 7],
        exec[..size_of::<Header>()].to_vec(),
        harm(exec.clone(), &Harm::Size(u32::MAX)),
        harm(exec.clone(), &Harm::Size(0)),
        harm(exec.clone(), &Harm::Kind(0)),
        harm(exec.clone(), &Harm::Kind(u32::MAX)),
        harm(exec.clone(), &Harm::BodyLen(u32::MAX)),
        harm(exec.clone(), &Harm::BodyLen(ARGV_CAP as u32 + 1)),
        harm(exec.clone(), &Harm::FilenameLen(u32::MAX)),
        harm(exec.clone(), &Harm::CwdLen(CWD_CAP as u64 + 1)),
        harm(exec.clone(), &Harm::CwdLen(u64::MAX)),
        harm(tty.clone(), &Harm::BodyLen(u32::MAX)),
        harm(tty, &Harm::Trail(vec![0])),
        harm(record(kind::FORK, &noise, &[], 0, 0), &Harm::Trail(vec![0])),
        harm(
            record(kind::KILL, &noise, &[], 0, 0),
            &Harm::Trail(vec![0; 8]),
        ),
    ];
    // A header claiming 4 GiB, its argv too, on a record of a hundred bytes.
    let mut claim = exec[..100].to_vec();
    put(&mut claim, offset_of!(Header, size), u32::MAX);
    put(&mut claim, offset_of!(ExecRecord, argv_len), u32::MAX);
    rejected.push(claim);
    (valid, rejected)
}

#[test]
fn seed_records_decode_or_are_counted_gaps() {
    let (valid, rejected) = seeds();
    for bytes in &valid {
        check_decoded(bytes).unwrap();
    }
    for bytes in &rejected {
        check_rejected(bytes).unwrap();
    }
    check_batch(&[valid, rejected].concat()).unwrap();
}

// Cases per run: about 2 s each in a debug build.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_records_decode_whole(bytes in valid_record()) {
        check_decoded(&bytes)?;
    }

    #[test]
    fn harmed_records_are_counted_decode_gaps(bytes in harmed_record()) {
        check_rejected(&bytes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_batch_decodes_each_record_or_counts_it(
        records in prop::collection::vec(any_record(), 0..8),
    ) {
        check_batch(&records)?;
    }
}
