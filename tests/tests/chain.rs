//! Kernel tier, chain and spool: an independent verifier, written from docs/chain.md with
//! its own hashing, checks everything the agent spooled. Needs root; under `CI=true` a run
//! without root fails instead of skipping.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use prost::Message as _;
use proto::v1::{self, ChainedEvent, event::Body};
use sha2::{Digest, Sha256};
use tests::{
    Mount, Scratch,
    agent::{Agent, LOSSY, Sink, lost, lost_where, tty_data},
    block_pattern, marker, privileged,
    pty::Pty,
};

/// One verified chain: its id, its events in seq order, and its last hash.
struct Verified {
    id: String,
    events: Vec<v1::Event>,
    head: Vec<u8>,
}

/// Reads every segment in name order, checks every frame's CRC, every chain's seq run and
/// every hash, and returns the chains in the order they start.
fn verify_spool(dir: &Path) -> Vec<Verified> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    paths.sort();
    let mut chains: Vec<Verified> = Vec::new();
    for path in paths {
        let bytes = fs::read(&path).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            let payload = &bytes[at + 8..at + 8 + len];
            assert_eq!(
                crc32fast::hash(payload),
                crc,
                "CRC of the frame at {at} in {}",
                path.display()
            );
            at += 8 + len;
            let record = ChainedEvent::decode(payload).expect("a ChainedEvent");
            if chains.last().is_none_or(|c| c.id != record.chain_id) {
                assert_eq!(record.seq, 0, "a chain starts at seq 0");
                chains.push(Verified {
                    id: record.chain_id.clone(),
                    events: Vec::new(),
                    head: vec![0; 32],
                });
            }
            let chain = chains.last_mut().unwrap();
            assert_eq!(
                record.seq,
                chain.events.len() as u64,
                "seq is contiguous in {}",
                chain.id
            );
            let mut h = Sha256::new();
            h.update(b"recorder.chain.v1\0");
            h.update((record.chain_id.len() as u64).to_be_bytes());
            h.update(record.chain_id.as_bytes());
            h.update(record.seq.to_be_bytes());
            h.update(&chain.head);
            h.update((record.event.len() as u64).to_be_bytes());
            h.update(&record.event);
            assert_eq!(
                h.finalize().to_vec(),
                record.hash,
                "hash of seq {} in {}",
                record.seq,
                chain.id
            );
            chain.head = record.hash;
            chain
                .events
                .push(v1::Event::decode(&record.event[..]).expect("an Event"));
        }
    }
    chains
}

/// Whether any spool segment in `dir` holds `bytes`.
fn spool_holds(dir: &Path, bytes: &[u8]) -> bool {
    fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        path.extension().is_some_and(|e| e == "seg")
            && fs::read(&path).is_ok_and(|segment| segment.windows(bytes.len()).any(|w| w == bytes))
    })
}

fn chain_start(chain: &Verified) -> &v1::ChainStart {
    match &chain.events[0].body {
        Some(Body::ChainStart(start)) => start,
        other => panic!("seq 0 of {} is not a ChainStart: {other:?}", chain.id),
    }
}

fn has_exec_with(chain: &Verified, arg: &str) -> bool {
    chain.events.iter().any(
        |e| matches!(&e.body, Some(Body::Exec(x)) if x.argv.iter().any(|a| a == arg.as_bytes())),
    )
}

fn spool_dir(tag: &str) -> Scratch {
    Scratch::new(tag)
}

/// What the agent spooled verifies independently, and carries the events that happened.
#[test]
fn spooled_events_verify_independently() {
    if !privileged("spooled_events_verify_independently") {
        return;
    }
    let dir = spool_dir("spool");
    let agent = Agent::start(&["--spool", dir.to_str().unwrap()]);
    let mark = marker("chained");
    assert!(
        Command::new("/bin/echo")
            .arg(&mark)
            .output()
            .unwrap()
            .status
            .success()
    );
    let _pty = Pty::written_by(|slave| {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(slave.as_raw_fd(), mark.as_ptr().cast(), mark.len()) };
        assert_eq!(n, mark.len().cast_signed());
    });
    agent.sync();
    assert!(agent.stop().success);

    let chains = verify_spool(&dir);
    assert_eq!(chains.len(), 1);
    let chain = &chains[0];
    assert_eq!(
        chain_start(chain).previous_chain_id,
        "",
        "a first start names no previous chain"
    );
    assert!(has_exec_with(chain, &mark));
    let typed = chain
        .events
        .iter()
        .any(|e| matches!(&e.body, Some(Body::Tty(t)) if t.data == mark.as_bytes()));
    assert!(typed, "the pty write is in the chain, byte for byte");
    assert!(
        matches!(&chain.events.last().unwrap().body, Some(Body::ChainStop(s)) if s.reason == "SIGINT"),
        "a stopped agent's chain ends with why it stopped"
    );
}

/// The spool's filesystem fills up (a 1 MiB tmpfs, far under `--spool-max-bytes`): the
/// agent goes on, writes no partial frame, and once there is room again, what it could not
/// write is one chained spool-full gap whose count is exact: every event its standard
/// output saw is in the spool or counted there.
#[test]
fn a_full_disk_is_a_chained_gap_with_exact_counts() {
    if !privileged("a_full_disk_is_a_chained_gap_with_exact_counts") {
        return;
    }
    let dir = spool_dir("diskfull");
    let disk = Mount::tmpfs(&dir.join("spool"), "1m");
    let agent = Agent::start(&["--spool", disk.target.to_str().unwrap()]);
    let long = "a".repeat(4000);
    let exec_long = || {
        for _ in 0..20 {
            assert!(
                Command::new("/bin/true")
                    .arg(&long)
                    .status()
                    .unwrap()
                    .success()
            );
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while !agent.log().contains("cannot write the spool") {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never filled its disk:\n{}",
            agent.log()
        );
        exec_long();
    }
    // Lost while the disk stays full.
    exec_long();
    disk.resize("64m");
    let mark = marker("room");
    assert!(
        Command::new("/bin/true")
            .arg(&mark)
            .status()
            .unwrap()
            .success()
    );
    agent.sync();
    let out = agent.stop();
    assert!(out.success, "the agent failed:\n{}", out.stderr);
    assert!(
        out.stderr.contains("the spool writes again"),
        "{}",
        out.stderr
    );
    let refused = out.total("spool_refused").unwrap();
    assert!(refused > 0, "{}", out.stderr);

    let chains = verify_spool(&disk.target);
    assert_eq!(chains.len(), 1);
    let chain = &chains[0];
    assert!(
        has_exec_with(chain, &mark),
        "what came after the room returned"
    );
    let gaps: Vec<&v1::Gap> = chain
        .events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Gap(g)) if g.source == i32::from(v1::gap::Source::SpoolFull) => Some(g),
            _ => None,
        })
        .collect();
    let counted: u64 = gaps.iter().map(|g| g.records).sum();
    eprintln!(
        "refused {refused} in {} gaps; {} events spooled",
        gaps.len(),
        chain.events.len()
    );
    assert_eq!(counted, refused, "the gaps count what the agent refused");
    // The spool holds what standard output saw, less what the gaps count, plus its own
    // records: the chain's start and stop, and the gaps.
    assert_eq!(
        chain.events.len() as u64,
        out.events.len() as u64 - refused + 2 + gaps.len() as u64,
        "every event is spooled or counted"
    );
}

/// `kill -9` of the agent during spool appends, 20 times, each at another moment of an exec
/// burst: each start cuts a torn tail, every frame left checks, every chain links to the
/// head of the one before it, and the last one still records.
#[test]
fn twenty_kills_during_appends_leave_a_spool_that_verifies() {
    if !privileged("twenty_kills_during_appends_leave_a_spool_that_verifies") {
        return;
    }
    let dir = spool_dir("kills");
    let mut burst = Command::new("/bin/sh")
        .arg("-c")
        .arg("while :; do /bin/true burst; done")
        .spawn()
        .unwrap();
    for round in 0..20u64 {
        let agent = Agent::start(&["--spool", dir.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(50 + round * 37 % 400));
        let _ = agent.kill();
    }
    let last = Agent::start(&["--spool", dir.to_str().unwrap()]);
    let mark = marker("after-kills");
    assert!(
        Command::new("/bin/true")
            .arg(&mark)
            .status()
            .unwrap()
            .success()
    );
    last.sync();
    let _ = burst.kill();
    let _ = burst.wait();
    assert!(last.stop().success);

    let chains = verify_spool(&dir);
    assert_eq!(chains.len(), 21, "one chain per agent instance");
    for pair in chains.windows(2) {
        let start = chain_start(&pair[1]);
        assert_eq!(start.previous_chain_id, pair[0].id);
        assert_eq!(start.previous_seq, pair[0].events.len() as u64 - 1);
        assert_eq!(start.previous_hash, pair[0].head, "{} links", pair[1].id);
    }
    assert!(has_exec_with(&chains[20], &mark));
}

/// Killed with SIGKILL in the middle of an exec burst and started again, the agent loses
/// nothing it had spooled, and its new chain names the old chain's head.
#[test]
fn a_killed_agent_restarts_with_a_visible_link() {
    if !privileged("a_killed_agent_restarts_with_a_visible_link") {
        return;
    }
    let dir = spool_dir("restart");
    let first = Agent::start(&["--spool", dir.to_str().unwrap()]);
    let mark = marker("burst");
    let mut burst = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "i=0; while [ $i -lt 2000 ]; do /bin/true {mark}; i=$((i+1)); done"
        ))
        .spawn()
        .unwrap();
    assert!(
        first
            .wait_for(Duration::from_secs(30), |v| v["argv"][1] == mark.as_str())
            .is_some()
    );
    // Printed first, spooled at the next commit: the kill comes once the spool has some.
    assert!(
        tests::eventually(
            Duration::from_secs(30),
            || spool_holds(&dir, mark.as_bytes()),
            |held| *held
        ),
        "the burst never reached the spool"
    );
    let _ = first.kill();
    let second = Agent::start(&["--spool", dir.to_str().unwrap()]);
    assert!(burst.wait().unwrap().success());
    let after = marker("after");
    assert!(
        Command::new("/bin/true")
            .arg(&after)
            .status()
            .unwrap()
            .success()
    );
    second.sync();
    assert!(second.stop().success);

    let chains = verify_spool(&dir);
    assert_eq!(chains.len(), 2, "one chain per agent instance");
    let (old, new) = (&chains[0], &chains[1]);
    assert!(
        has_exec_with(old, &mark),
        "the killed agent had spooled part of the burst"
    );
    let start = chain_start(new);
    assert_eq!(start.previous_chain_id, old.id);
    assert_eq!(start.previous_seq, old.events.len() as u64 - 1);
    assert_eq!(
        start.previous_hash, old.head,
        "the restart links to the last spooled record"
    );
    assert!(has_exec_with(new, &after));
    let stopped = |chain: &Verified| {
        matches!(
            chain.events.last().map(|e| &e.body),
            Some(Some(Body::ChainStop(_)))
        )
    };
    assert!(!stopped(old), "a killed agent's chain has no stop record");
    assert!(stopped(new), "a stopped one's has");
}

/// Induced kernel loss appears in the chain as gap records whose counts equal the agent's
/// own counters.
#[test]
fn kernel_loss_is_a_chained_gap_with_exact_counts() {
    if !privileged("kernel_loss_is_a_chained_gap_with_exact_counts") {
        return;
    }
    let dir = spool_dir("gaps");
    let agent = Agent::start(&[&["--spool", dir.to_str().unwrap()][..], &LOSSY].concat());
    let pattern = block_pattern(1024);
    let _pty = Pty::written_by(|slave| {
        for block in pattern.chunks(4096) {
            // SAFETY: valid fd and buffer.
            assert_eq!(
                unsafe { libc::write(slave.as_raw_fd(), block.as_ptr().cast(), block.len()) },
                4096
            );
        }
    });
    agent.sync();
    let out = agent.stop();
    let (records, bytes) = (
        out.total("lost_records").unwrap(),
        out.total("lost_bytes").unwrap(),
    );
    assert!(
        records > 0,
        "a 64 KiB ring drained every 500 ms must lose records"
    );

    let chains = verify_spool(&dir);
    let gaps: Vec<&v1::Gap> = chains[0]
        .events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Gap(g)) if g.source == i32::from(v1::gap::Source::KernelRingbuf) => Some(g),
            _ => None,
        })
        .collect();
    let chained = gaps
        .iter()
        .fold((0, 0), |(r, b), g| (r + g.records, b + g.bytes));
    assert_eq!(
        chained,
        (records, bytes),
        "chained gaps equal the kernel's counters"
    );
}

/// A stalled stage (here, a `--stdout` consumer that stops reading) backs up into the
/// reader's bounded channel. What the reader then drops becomes chained `PIPELINE` gaps whose
/// counts equal the agent's own, and every terminal block is either delivered or counted.
/// Execs made while it is stalled are not dropped for the terminal's flood: they wait in
/// their own ring, and every one is delivered.
#[test]
fn a_stalled_stage_is_a_chained_gap_with_exact_counts() {
    if !privileged("a_stalled_stage_is_a_chained_gap_with_exact_counts") {
        return;
    }
    let dir = spool_dir("stall");
    // The reader drains every 2 ms and hands on a batch per drain that finds records. Its
    // channel holds 64 batches, and the stages after it a few more. A flood written in one
    // go makes batches as large as the reader falls behind, up to 4 MiB, and on a busy
    // machine too few of them to fill the channel. So the 64 MiB come in 1,024 bursts
    // with a pause longer than the drain interval after each: even if the reader, starved,
    // takes several bursts in one drain, they make far more batches than fit.
    let mut agent = Agent::start_with(
        Sink::Stalled,
        &["--spool", dir.to_str().unwrap(), "--drain-ms", "2"],
    );
    let blocks = 16_384;
    let pattern = block_pattern(blocks);
    let pty = Pty::written_by(|slave| {
        for burst in pattern.chunks(16 * 4096) {
            for block in burst.chunks(4096) {
                // SAFETY: valid fd and buffer.
                assert_eq!(
                    unsafe { libc::write(slave.as_raw_fd(), block.as_ptr().cast(), block.len()) },
                    4096
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // The reader's channel is full now, and stays full until the consumer reads again.
    let mark = marker("stalled");
    for n in 0..20 {
        let status = Command::new("/bin/true")
            .arg(format!("{mark}-{n}"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    agent.release_stdout();
    agent.sync();
    let out = agent.stop();
    assert!(out.success, "agent failed:\n{}", out.stderr);
    for n in 0..20 {
        let arg = format!("{mark}-{n}");
        assert!(
            out.events
                .iter()
                .any(|v| tests::operator::argv_has(v, &arg)),
            "the exec of {arg}, made while the pipeline was full, was dropped"
        );
    }
    for kind in ["exec", "fork", "exit", "kill"] {
        let dropped = lost_where(&out.events, |v| {
            v["source"] == "pipeline" && v["lost_kind"] == kind
        });
        assert_eq!(dropped, (0, 0), "{kind} records dropped for the flood");
    }

    let json_pipeline = lost_where(&out.events, |v| v["source"] == "pipeline");
    assert!(
        json_pipeline.0 > 0,
        "64 MiB behind a stalled consumer must overflow the pipeline:\n{}",
        out.stderr
    );
    assert_eq!(
        lost_where(&out.events, |_| true),
        (
            out.total("lost_records").unwrap(),
            out.total("lost_bytes").unwrap()
        ),
        "gap records equal the agent's counters"
    );

    let delivered: usize = out
        .events
        .iter()
        .filter(|v| {
            v["kind"] == "tty_out" && v["tgid"] == std::process::id() && v["tty"] == pty.device()
        })
        .map(|v| tty_data(v).len())
        .sum();
    let (_, lost_bytes) = lost(&out.events, "tty_out");
    assert_eq!(
        delivered as u64 + lost_bytes,
        pattern.len() as u64,
        "every terminal byte is delivered or counted"
    );

    let chains = verify_spool(&dir);
    let chained = chains[0]
        .events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Gap(g)) if g.source == i32::from(v1::gap::Source::Pipeline) => Some(g),
            _ => None,
        })
        .fold((0, 0), |(r, b), g| (r + g.records, b + g.bytes));
    assert_eq!(
        chained, json_pipeline,
        "the chain holds the same pipeline gaps"
    );
}
