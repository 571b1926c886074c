//! `cargo xtask bench pipeline`: events per second through the agent's stages as they run
//! (decode → attribute → judge → encode → chain and spool), on one core, for exec-sized
//! records and 4 KiB terminal chunks, against raw SHA-256 over the same stored bytes
//! measured in the same run. Each stage's own `process` is called, batch by batch as the
//! reader hands them on; the judge holds a grant that covers the events and a policy, so
//! coverage is looked up for every one. Timed up to handing the frames to the kernel: the
//! fsync is outside the timing, and each run stays within one segment (64 MiB) so no
//! rotation syncs either. The host log's work (docs/evidence.md), done by the ship stage
//! per record read, is timed on the same number of records and added.

use std::{hint::black_box, sync::Arc, time::Instant};

use agent::{
    capture::{decode, reader::Batch},
    enforce::{
        judge::Judge,
        rules::{Rules, View},
    },
    evidence::{Evidence, encode::Encode},
    identity::{attribute::Attribute, proctable::ProcessTable},
    sinks::metrics::Health,
};
use agent_common::{
    event::{Header, kind, make_dev},
    exec::{ARGV_CAP, CWD_CAP, EXEC_FIXED, ExecRecord, FILENAME_CAP, ImageId},
    tty::{CHUNK, TTY_FIXED, TtyRecord},
};
use proto::{
    chain::chain_hash,
    v1::{Grant, GrantView, IdentitySelector, Policy, policy::Mode},
};

/// Records per batch, about what the reader drains per tick under load.
const BATCH: usize = 1024;

fn header(kind: u32, size: usize) -> Header {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"bash");
    Header {
        kind,
        size: size as u32,
        ktime_ns: agent::clock::boot_ns(),
        pid: 4242,
        tgid: 4242,
        ppid: 4000,
        uid: 1000,
        euid: 0,
        gid: 1000,
        loginuid: 1000,
        sessionid: 7,
        cgroup_id: 1,
        tty: make_dev(136, 3),
        cpu: 0,
        comm,
    }
}

fn bytes_of<T>(value: &T, len: usize) -> Vec<u8> {
    // SAFETY: T is a repr(C) record without padding; len is within it.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), len) }.to_vec()
}

/// A successful exec of `/usr/bin/sudo -n systemctl restart nginx.service`, as the kernel
/// submits it.
fn exec_record() -> Vec<u8> {
    let argv = b"sudo\0-n\0systemctl\0restart\0nginx.service\0";
    let mut rec = ExecRecord {
        header: header(kind::EXEC, EXEC_FIXED + argv.len() + 5 + 13),
        result: 0,
        flags: 0,
        filename_len: 13,
        argv_len: argv.len() as u32,
        cwd_len: 5,
        interp_len: 0,
        exe_len: 13,
        image: ImageId {
            inode: 1_234_567,
            size: 277_936,
            mtime_sec: 1_700_000_000,
            ctime_sec: 1_700_000_000,
            dev: 8 << 20 | 1,
            mtime_nsec: 0,
            ctime_nsec: 0,
        },
        filename: [0; FILENAME_CAP],
        argv: [0; ARGV_CAP],
        cwd: [0; CWD_CAP],
        exe: [0; CWD_CAP],
    };
    rec.filename[..13].copy_from_slice(b"/usr/bin/sudo");
    rec.argv[..argv.len()].copy_from_slice(argv);
    // The working directory and the executable's path follow argv, as the kernel sends
    // them.
    rec.argv[argv.len()..argv.len() + 18].copy_from_slice(b"/root/usr/bin/sudo");
    bytes_of(&rec, EXEC_FIXED + argv.len() + 18)
}

fn tty_record() -> Vec<u8> {
    let mut rec = TtyRecord {
        header: header(kind::TTY_OUT, TTY_FIXED + CHUNK),
        device: make_dev(136, 3),
        fd: 1,
        offset: 0,
        len: CHUNK as u32,
        flags: 0,
        data: [0; CHUNK],
    };
    for (i, b) in rec.data.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    bytes_of(&rec, TTY_FIXED + CHUNK)
}

/// A view whose one grant covers whoever `record` is attributed to, in alert mode.
fn covering_view(attribute: &mut Attribute, record: &[u8]) -> View {
    let mut batch = Batch::default();
    batch.push_record(record);
    let events = decode::process(batch, &Health::default()).events;
    let identity = attribute.process(events)[0]
        .identity
        .clone()
        .expect("an identity");
    let grant = Grant {
        id: "g-bench".into(),
        identity: Some(IdentitySelector {
            kind: identity.kind.into(),
            name: identity.name.clone(),
        }),
        not_before_unix_nano: 0,
        expires_at_unix_nano: u64::MAX / 2,
        ..Grant::default()
    };
    let policy = Policy {
        mode: Mode::Alert.into(),
        root_exec: true,
        guarded: Vec::new(),
        require_approval: false,
        fail_closed_on_loss: Mode::Alert.into(),
    };
    View::adopt(
        None,
        GrantView {
            grants: vec![grant],
            policy: Some(policy),
            issued_unix_nano: proto::time::now_unix_nano(),
        },
        0,
    )
}

struct Run {
    name: &'static str,
    events: u64,
    stored_bytes: u64,
    payload_bytes: u64,
    pipeline_s: f64,
    hash_s: f64,
    /// The ship stage's log work on the same number of records: a leaf hash and a compact
    /// range append each (docs/evidence.md).
    merkle_s: f64,
}

fn run(name: &'static str, record: &[u8], events: u64, payload: u64) -> Run {
    let dir = std::env::temp_dir()
        .join(format!("bench-pipeline-{}-{name}", std::process::id()).replace(' ', "-"));
    let _ = std::fs::remove_dir_all(&dir);
    let health = Health::default();
    let mut attribute = Attribute::new(ProcessTable::default(), Arc::default());
    let view = covering_view(&mut attribute, record);
    let rules = Rules {
        host: "bench-host".into(),
        fail_closed: None,
    };
    let mut judge = Judge::new(rules, Some(Arc::new(view)));
    let mut encode = Encode::default();
    let mut evidence = Evidence::open(&dir, u64::MAX, "bench-host", "bench").expect("spool");
    let before = evidence.spool_bytes();

    let batches: Vec<Batch> = (0..events.div_ceil(BATCH as u64))
        .map(|b| {
            let mut batch = Batch::default();
            let n = (events - b * BATCH as u64).min(BATCH as u64);
            for _ in 0..n {
                batch.push_record(record);
            }
            batch
        })
        .collect();
    let start = Instant::now();
    let mut covered = 0;
    for batch in batches {
        let decoded = decode::process(batch, &health);
        let (judged, _actions) = judge.process(attribute.process(decoded.events));
        covered += judged.iter().filter(|a| a.grant.is_some()).count();
        evidence.append(&encode.process(judged)).expect("append");
    }
    let pipeline_s = start.elapsed().as_secs_f64();
    evidence.sync().expect("sync");
    assert_eq!(covered as u64, events, "the grant covers every event");
    let stored_bytes = evidence.spool_bytes() - before;

    // The same number of events and bytes per event, hashed and nothing else.
    let event_bytes = vec![7u8; usize::try_from(stored_bytes / events).expect("fits")];
    let start = Instant::now();
    let mut prev = [0u8; 32];
    for seq in 0..events {
        prev = chain_hash(
            "bench-host:bench-boot:1",
            seq,
            &prev,
            black_box(&event_bytes),
        );
    }
    black_box(prev);
    let hash_s = start.elapsed().as_secs_f64();
    let mut log = tlog::CompactRange::new();
    let start = Instant::now();
    let mut record_hash = [0u8; 32];
    for seq in 0..events {
        record_hash[..8].copy_from_slice(&seq.to_le_bytes());
        log.append(tlog::leaf_hash(black_box(&record_hash)))
            .expect("room");
    }
    black_box(log.root());
    let merkle_s = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir).expect("clean up");
    Run {
        name,
        events,
        stored_bytes,
        payload_bytes: payload * events,
        pipeline_s,
        hash_s,
        merkle_s,
    }
}

/// Microseconds to sign one checkpoint: the agent signs at most one a second.
fn checkpoint_sign_us() -> f64 {
    let signer = tlog::Signer::from_seed("bench/recorder/host/h", [7; 32]).expect("a key");
    let body = tlog::Checkpoint::new(signer.name(), 1_000_000, [1; 32]).expect("a checkpoint");
    let start = Instant::now();
    for _ in 0..1000 {
        black_box(tlog::sign_checkpoint(&signer, black_box(&body)).expect("signed"));
    }
    start.elapsed().as_secs_f64() * 1e6 / 1000.0
}

#[expect(clippy::cast_precision_loss, reason = "rates for display")]
fn main() {
    // `cargo bench --bench pipeline -- exec` runs only the runs whose name starts so, for
    // profiling one path at a time.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str()));
    let mut runs = Vec::new();
    if wanted("exec") {
        runs.push(run("exec", &exec_record(), 300_000, 0));
    }
    if wanted("tty") {
        runs.push(run("tty 4 KiB", &tty_record(), 15_000, CHUNK as u64));
    }
    println!(
        "pipeline benchmark: decode → attribute → judge → encode → chain → spool (written, fsync not timed), one core; \
         +log: the host log's leaf hash and compact range append per record"
    );
    println!(
        "{:<10} {:>10} {:>12} {:>14} {:>14} {:>14} {:>12} {:>14} {:>16}",
        "events",
        "count",
        "stored B/ev",
        "pipeline ev/s",
        "+log ev/s",
        "payload MB/s",
        "sha256 ev/s",
        "pipeline/sha",
        "chain+log/chain"
    );
    for r in runs {
        println!(
            "{:<10} {:>10} {:>12} {:>14.0} {:>14.0} {:>14.1} {:>12.0} {:>13.2}x {:>15.2}x",
            r.name,
            r.events,
            r.stored_bytes / r.events,
            r.events as f64 / r.pipeline_s,
            r.events as f64 / (r.pipeline_s + r.merkle_s),
            r.payload_bytes as f64 / r.pipeline_s / 1e6,
            r.events as f64 / r.hash_s,
            r.pipeline_s / r.hash_s,
            (r.hash_s + r.merkle_s) / r.hash_s,
        );
    }
    println!(
        "checkpoint: {:.1} µs to sign (at most one a second)",
        checkpoint_sign_us()
    );
}
