//! Kernel tier: the real agent, its real kernel programs, real processes and ptys. Needs
//! root; under `CI=true` a run without root fails instead of skipping.

use std::{
    fs,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Mount, Scratch, TestCgroup,
    agent::{Agent, LOSSY, Sink, binary, lost, tty_data},
    block_pattern, marker, privileged,
    pty::{Pty, in_new_session, set_window},
    with_loginuid,
};

const WAIT: Duration = Duration::from_secs(30);

fn argv_of(v: &Value) -> Vec<String> {
    v["argv"]
        .as_array()
        .expect("argv array")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// 40 args, one of them 3 KiB: argv comes back exactly, with every identity field.
#[test]
fn exec_argv_is_exact_within_the_bound() {
    if !privileged("exec_argv_is_exact_within_the_bound") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("argv");
    let mut args: Vec<String> = (0..38).map(|i| format!("arg-{i}")).collect();
    args.insert(7, "x".repeat(3072));
    args.push(mark.clone());
    let child = Command::new("/bin/echo")
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn echo");
    let pid = child.id();
    let output = child.wait_with_output().expect("echo");
    assert!(output.status.success());

    let ev = agent.exec_with_arg(&mark);
    let mut expected = vec!["/bin/echo".to_owned()];
    expected.extend(args);
    assert_eq!(expected.len(), 41);
    assert_eq!(argv_of(&ev), expected);
    assert_eq!(ev["argv_truncated"], false);
    assert_eq!(ev["filename"], "/bin/echo");
    assert_eq!(ev["result"], 0);
    assert_eq!(ev["pid"], pid);
    assert_eq!(ev["tgid"], pid);
    assert_eq!(ev["ppid"], std::process::id());
    assert_eq!(ev["comm"], "echo");
    // SAFETY: getters without preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!(
        (ev["uid"].as_u64(), ev["euid"].as_u64(), ev["gid"].as_u64()),
        (Some(uid.into()), Some(uid.into()), Some(gid.into()))
    );
    for field in ["time", "loginuid", "sessionid", "cgroup_id", "tty"] {
        assert!(ev.get(field).is_some(), "missing {field}: {ev}");
    }
    let out = agent.stop();
    assert!(out.success, "agent failed:\n{}", out.stderr);
}

/// Past the configured bound, argv is cut exactly there and flagged.
#[test]
fn exec_argv_is_truncated_and_flagged_at_the_bound() {
    if !privileged("exec_argv_is_truncated_and_flagged_at_the_bound") {
        return;
    }
    let agent = Agent::start(&["--argv-max-bytes", "1024"]);
    let mark = marker("trunc");
    let long = "y".repeat(3000);
    let status = Command::new("/bin/echo")
        .arg(&mark)
        .arg(&long)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["argv_truncated"], true);
    let full = format!("/bin/echo\0{mark}\0{long}\0");
    assert_eq!(argv_of(&ev).join("\0"), full[..1024]);
}

/// A failed exec is an event too, with its errno.
#[test]
fn failed_exec_reports_errno() {
    if !privileged("failed_exec_reports_errno") {
        return;
    }
    let agent = Agent::start(&[]);
    let missing = format!("/nonexistent/{}", marker("enoent"));
    assert!(Command::new(&missing).arg("a1").status().is_err());
    let scratch = Scratch::new("eacces");
    let dir = scratch.join("not-executable");
    fs::write(&dir, "not executable").unwrap();
    assert!(Command::new(&dir).status().is_err());

    let ev = agent.exec_of(&missing);
    assert_eq!(ev["result"], -libc::ENOENT);
    assert_eq!(argv_of(&ev), [missing.as_str(), "a1"]);
    let path = dir.to_str().unwrap();
    let ev = agent.exec_of(path);
    assert_eq!(ev["result"], -libc::EACCES);
}

/// Fork and exit keep the process table: the exit names the image that ran.
#[test]
fn fork_and_exit_are_reported_once_per_process() {
    if !privileged("fork_and_exit_are_reported_once_per_process") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("exit");
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exit 3 # {mark}"))
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(3));
    let exit = agent
        .wait_for(WAIT, |v| v["kind"] == "exit" && v["pid"] == pid)
        .expect("exit event");
    assert_eq!(exit["exit_code"], 3 << 8);
    assert_eq!(exit["filename"], "/bin/sh");
    let out = agent.stop();
    let forks = out
        .events
        .iter()
        .filter(|v| v["kind"] == "fork" && v["pid"] == pid)
        .count();
    let exits = out
        .events
        .iter()
        .filter(|v| v["kind"] == "exit" && v["pid"] == pid)
        .count();
    assert_eq!((forks, exits), (1, 1));
    let fork = out
        .events
        .iter()
        .find(|v| v["kind"] == "fork" && v["pid"] == pid)
        .unwrap();
    assert_eq!(fork["ppid"], std::process::id());
}

/// Writes `data` to a fresh pty's slave through `dd` in `block`-byte writes, and returns the
/// writer's pid and the pty.
fn write_through_pty(data: &[u8], block: usize) -> (u32, Pty) {
    let mut pty = Pty::open();
    let drain = pty.drain_master();
    let scratch = Scratch::new("pattern");
    let file = scratch.join("pattern");
    fs::write(&file, data).unwrap();
    let slave = pty.take_slave();
    let child = Command::new("dd")
        .arg(format!("if={}", file.display()))
        .arg(format!("bs={block}"))
        .arg("status=none")
        .stdout(Stdio::from(slave))
        .spawn()
        .expect("spawn dd");
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(
        drain.join().unwrap(),
        data.len() as u64,
        "the pty carried every byte"
    );
    (pid, pty)
}

/// 1 MiB through a pty comes back byte for byte, or every missing byte is counted.
#[test]
fn pty_output_is_captured_byte_for_byte() {
    if !privileged("pty_output_is_captured_byte_for_byte") {
        return;
    }
    let agent = Agent::start(&[]);
    let pattern = block_pattern(256);
    let (pid, pty) = write_through_pty(&pattern, 65536);
    agent.sync();
    let out = agent.stop();
    let chunks: Vec<&Value> = out
        .events
        .iter()
        .filter(|v| v["kind"] == "tty_out" && v["pid"] == pid)
        .collect();
    let (lost_records, lost_bytes) = lost(&out.events, "tty_out");
    let captured: Vec<u8> = chunks.iter().flat_map(|v| tty_data(v)).collect();
    assert_eq!(captured.len() as u64 + lost_bytes, pattern.len() as u64);
    if lost_records == 0 {
        assert_eq!(
            captured, pattern,
            "concatenated tty_out differs from what was written"
        );
    }
    for v in &chunks {
        assert_eq!(v["tty"], pty.device());
        assert_eq!(v["comm"], "dd");
    }
}

const BURSTS: usize = 40;
const BURST_WRITES: usize = 16;
const SMALL_WRITE: usize = 64;

/// Write `w` of burst `b` by writer `t` (`A` or `B`): 64 bytes that say whose and which.
fn burst_write(mark: &str, t: u8, b: usize, w: usize) -> Vec<u8> {
    let mut bytes = format!("{mark}|{}{b:03}.{w:02}|", char::from(t)).into_bytes();
    bytes.resize(SMALL_WRITE, t);
    bytes
}

/// Two threads, `A` and `B`, take turns writing `BURSTS` bursts of small writes to `slave`,
/// `A` first; returns their thread ids.
fn write_in_turns(slave: &fs::File, mark: &str) -> [i32; 2] {
    std::thread::scope(|scope| {
        let (turn_tx, turn_rx): (Vec<_>, Vec<_>) =
            (0..2).map(|_| std::sync::mpsc::channel::<usize>()).unzip();
        let writers: Vec<_> = [b'A', b'B']
            .into_iter()
            .zip(turn_rx)
            .enumerate()
            .map(|(i, (t, turns))| {
                let next = turn_tx[(i + 1) % 2].clone();
                scope.spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    for b in turns.iter().take_while(|b| *b < BURSTS) {
                        for w in 0..BURST_WRITES {
                            (&*slave).write_all(&burst_write(mark, t, b, w)).unwrap();
                        }
                        let _ = next.send(b + 1);
                    }
                    let _ = next.send(BURSTS);
                    tid
                })
            })
            .collect();
        turn_tx[0].send(0).unwrap();
        let mut tids = [0; 2];
        for (tid, writer) in tids.iter_mut().zip(writers) {
            *tid = writer.join().unwrap();
        }
        tids
    })
}

/// Two threads take turns writing a burst of small writes each to one pty. The agent joins
/// each thread's writes in a row into fewer records, and never a byte of one into the
/// other's: read in order, the records give exactly the bytes written, in the order written,
/// each under the thread that wrote it.
#[test]
fn small_writes_in_a_row_are_joined_and_keep_their_order_and_writer() {
    if !privileged("small_writes_in_a_row_are_joined_and_keep_their_order_and_writer") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("joined");
    let mut tids = [0; 2];
    let pty = Pty::written_by(|slave| tids = write_in_turns(slave, &mark));
    let last = burst_write(&mark, b'B', BURSTS - 1, BURST_WRITES - 1);
    agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_out" && tty_data(v).ends_with(&last)
        })
        .expect("the last write arrives");
    let out = agent.stop();
    let records: Vec<&Value> = out
        .events
        .iter()
        .filter(|v| v["kind"] == "tty_out" && v["tty"] == pty.device().as_str())
        .collect();
    let read: Vec<u8> = records.iter().flat_map(|v| tty_data(v)).collect();
    let written: Vec<u8> = (0..BURSTS)
        .flat_map(|b| (0..BURST_WRITES).map(move |w| (b, w)))
        .flat_map(|(b, w)| burst_write(&mark, [b'A', b'B'][b % 2], b, w))
        .collect();
    assert_eq!(
        read, written,
        "the records give the bytes in the order written"
    );
    let mut writes = 0;
    for v in &records {
        let data = tty_data(v);
        let by = data[mark.len() + 1];
        let tid = tids[usize::from(by - b'A')];
        assert_eq!(v["pid"], tid, "{} is written by {tid}: {v}", char::from(by));
        assert!(
            data.chunks(SMALL_WRITE).all(|w| w[mark.len() + 1] == by),
            "one writer's bytes a record: {} (pid {}, {} writes)",
            String::from_utf8_lossy(&data),
            v["pid"],
            v["writes"]
        );
        let joined = v["writes"].as_u64().unwrap_or(1);
        assert_eq!(joined, (data.len() / SMALL_WRITE) as u64, "{v}");
        let span = v["span_nanos"].as_u64().unwrap_or(0);
        assert!(span <= 10_000_000, "{v}");
        // Each write's bytes, and the times between them adding up to the span: what
        // replay plays each write at. A record of one write has none.
        let numbers = |key: &str| -> Vec<u64> {
            v[key].as_array().map_or_else(Vec::new, |a| {
                a.iter().map(|n| n.as_u64().unwrap()).collect()
            })
        };
        let sizes = numbers("write_bytes");
        let expected = if joined > 1 {
            vec![SMALL_WRITE as u64; data.len() / SMALL_WRITE]
        } else {
            Vec::new()
        };
        assert_eq!(sizes, expected, "{v}");
        let gaps = numbers("write_gap_nanos");
        assert_eq!(gaps.len() + 1, sizes.len().max(1), "{v}");
        assert_eq!(gaps.iter().sum::<u64>(), span, "{v}");
        writes += joined;
    }
    assert_eq!(writes, (BURSTS * BURST_WRITES) as u64);
    assert!(
        records.len() < BURSTS * BURST_WRITES / 2,
        "{} records for {} writes: a burst's writes are joined",
        records.len(),
        BURSTS * BURST_WRITES
    );
}

/// With a tiny ring buffer and a slow reader the kernel must lose records, and the gap
/// records must account for every lost chunk and byte exactly.
#[test]
fn ring_buffer_loss_is_counted_exactly() {
    if !privileged("ring_buffer_loss_is_counted_exactly") {
        return;
    }
    let agent = Agent::start(&LOSSY);
    let pattern = block_pattern(1024);
    let (pid, _pty) = write_through_pty(&pattern, 4096);
    agent.sync();
    let out = agent.stop();
    let (lost_records, lost_bytes) = lost(&out.events, "tty_out");
    assert!(
        lost_records > 0,
        "a 64 KiB ring drained every 500 ms cannot hold 4 MiB"
    );
    let mut seen = vec![false; 1024];
    for v in out
        .events
        .iter()
        .filter(|v| v["kind"] == "tty_out" && v["pid"] == pid)
    {
        let data = tty_data(v);
        assert_eq!(
            (data.len(), v["offset"].as_u64()),
            (4096, Some(0)),
            "one 4 KiB write per record"
        );
        let block: usize = std::str::from_utf8(&data[6..12]).unwrap().parse().unwrap();
        assert_eq!(
            data,
            pattern[block * 4096..(block + 1) * 4096],
            "block {block} intact"
        );
        assert!(!seen[block], "block {block} captured twice");
        seen[block] = true;
    }
    let missing = seen.iter().filter(|s| !**s).count() as u64;
    assert_eq!(
        (lost_records, lost_bytes),
        (missing, missing * 4096),
        "gaps account for exactly the missing blocks"
    );
}

/// A flood of 64-byte terminal writes is drained once per interval, or when the backlog
/// passes the kernel's wakeup threshold, never a record or two at a time: a ring buffer
/// polls readable while it holds a byte, and a reader that waited on that handed the decode
/// stage one tiny batch after another until its channel was full and it dropped records.
/// With the threshold at half the ring, nothing is lost.
#[test]
fn a_small_write_flood_is_drained_in_batches_not_per_record() {
    const INTERVAL_MS: u128 = 500;
    const WAKEUP: usize = 8 << 20;
    const WRITE: usize = 64;
    const TOTAL: usize = 8 << 20;
    if !privileged("a_small_write_flood_is_drained_in_batches_not_per_record") {
        return;
    }
    let started = Instant::now();
    let agent = Agent::start_with(
        Sink::Discard,
        &[
            "--drain-ms",
            &INTERVAL_MS.to_string(),
            "--wakeup-bytes",
            &WAKEUP.to_string(),
        ],
    );
    let mut pty = Pty::open();
    let drain = pty.drain_master();
    let slave = fs::File::from(pty.take_slave());
    let block = [b'x'; WRITE];
    for _ in 0..TOTAL / WRITE {
        (&slave).write_all(&block).unwrap();
    }
    drop(slave);
    assert_eq!(
        drain.join().unwrap(),
        TOTAL as u64,
        "the pty carried every byte"
    );
    let out = agent.stop();
    let elapsed = started.elapsed().as_millis();
    let total = |key| out.total(key).unwrap_or_else(|| panic!("no {key} total"));
    assert!(
        total("tty_bytes") >= TOTAL as u64 && total("lost_records") == 0,
        "every byte captured, none lost: {}",
        out.stderr
    );
    // One drain per interval; past that, one per wakeup at the threshold (these records
    // are under 256 bytes each) and per full 4 MiB batch.
    let record_bytes = (TOTAL / WRITE * 256) as u128;
    let bound =
        elapsed / INTERVAL_MS + record_bytes / WAKEUP as u128 + record_bytes / (4 << 20) + 4;
    let batches = u128::from(total("batches"));
    assert!(
        batches <= bound,
        "{batches} batches in {elapsed} ms of {TOTAL} bytes in {WRITE}-byte writes: more than \
         one per {INTERVAL_MS} ms interval and per wakeup ({bound})"
    );
}

/// An idle agent does not wake at every drain interval: after drains that find nothing, its
/// reader's wait doubles up to 32 ms, so it sleeps about 30 times a second, not 500. Each
/// drain that finds records (other activity on this host) starts it over at the interval,
/// so the bound allows a ramp of empty drains after each.
#[test]
fn an_idle_reader_backs_off() {
    if !privileged("an_idle_reader_backs_off") {
        return;
    }
    let started = Instant::now();
    let agent = Agent::start_with(Sink::Discard, &[]);
    let task = fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .map(|t| t.unwrap().path())
        .find(|t| fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "reader"))
        .expect("the agent's reader thread");
    std::thread::sleep(Duration::from_secs(3));
    // Each wait of the reader is one voluntary switch: it blocks nowhere else.
    let waits: u64 = fs::read_to_string(task.join("status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("voluntary_ctxt_switches")
        .trim()
        .parse()
        .unwrap();
    let elapsed = started.elapsed().as_millis();
    let out = agent.stop();
    let batches = u128::from(out.total("batches").expect("batches total"));
    let empty = u128::from(waits).saturating_sub(batches);
    // At most four empty drains (2 + 4 + 8 + 16 ms from the shortest interval) before the
    // wait reaches 32 ms again.
    let bound = elapsed / 32 + 4 * batches + 16;
    assert!(
        empty <= bound,
        "{empty} empty drains ({waits} waits, {batches} batches) in {elapsed} ms: more than \
         one per 32 ms and a ramp per batch ({bound})"
    );
}

/// Bytes written to a pty master are typed input of the session on its slave.
#[test]
fn pty_master_writes_are_tty_input_of_that_session() {
    if !privileged("pty_master_writes_are_tty_input_of_that_session") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut pty = Pty::open();
    let mark = marker("typed");
    let child = pty.shell("read line; /bin/echo \"$line\"");
    let drain = pty.drain_master();
    let mut master = fs::File::from(pty.master.try_clone().unwrap());
    master.write_all(format!("{mark}\n").as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    drop(master);

    let input = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_in" && tty_data(v).starts_with(mark.as_bytes())
        })
        .expect("typed bytes arrive as tty_in");
    assert_eq!(tty_data(&input), format!("{mark}\n").as_bytes());
    assert_eq!(input["tty"], pty.device());
    assert_eq!(input["tgid"], std::process::id());
    let echo = agent.exec_with_arg(&mark);
    assert_eq!(
        echo["tty"],
        pty.device(),
        "the session's controlling tty is the same terminal"
    );
    let output = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_out" && v["tty"] == pty.device().as_str()
        })
        .expect("the echo is tty_out on the same terminal");
    assert_eq!(output["pid"], echo["pid"]);
    drop(pty);
    drop(drain);
}

/// loginuid and sessionid come from the kernel's audit fields.
#[test]
fn loginuid_and_sessionid_follow_the_process() {
    if !privileged("loginuid_and_sessionid_follow_the_process") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("login");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("cat /proc/self/sessionid; /bin/true {mark}"));
    with_loginuid(&mut cmd, Some(4242));
    let out = cmd.output().expect("run with a loginuid");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["loginuid"], 4242);
    assert_eq!(ev["sessionid"], session);
    let mine = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "fork" && v["ppid"] == std::process::id()
        })
        .unwrap();
    let own: String = fs::read_to_string("/proc/self/loginuid").unwrap();
    if own.trim() == "4294967295" {
        assert_eq!(
            mine["loginuid"], "unset",
            "an unset loginuid is printed as unset"
        );
    }
}

/// The cgroup id is the cgroup v2 directory's inode.
#[test]
fn cgroup_id_is_the_cgroup_of_the_process() {
    if !privileged("cgroup_id_is_the_cgroup_of_the_process") {
        return;
    }
    let cgroup = TestCgroup::create(&marker("cg"));
    let agent = Agent::start(&[]);
    let mark = marker("cgexec");
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&mark);
    cgroup.enter(&mut cmd);
    assert!(cmd.status().expect("run in cgroup").success());
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["cgroup_id"].as_u64(), Some(cgroup.id()));
}

/// An exec storm is captured completely, or its shortfall is covered by the counted loss.
/// (The loss counts execs of the whole host: on a busy machine another process's execs may
/// be lost in the same storm, so the count may exceed the storm's own shortfall.)
#[test]
fn exec_storm_is_complete_or_loss_is_counted() {
    const EXECS: u64 = 10_000;
    if !privileged("exec_storm_is_complete_or_loss_is_counted") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("storm");
    let script = format!("i=0; while [ $i -lt {EXECS} ]; do /bin/true {mark}; i=$((i+1)); done");
    let shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    assert!(shell.wait_with_output().unwrap().status.success());
    agent.sync();
    let out = agent.stop();
    let seen = out
        .events
        .iter()
        .filter(|v| v["kind"] == "exec" && v["ppid"] == shell_pid && v["argv"][1] == mark.as_str())
        .count() as u64;
    let (lost_execs, _) = lost(&out.events, "exec");
    assert!(seen <= EXECS);
    assert!(
        EXECS - seen <= lost_execs,
        "seen {seen} of {EXECS}, counted lost {lost_execs}: a silent loss"
    );
}

/// Every program passes the verifier and attaches on this kernel; none is skipped.
#[test]
fn every_program_loads_on_this_kernel() {
    if !privileged("every_program_loads_on_this_kernel") {
        return;
    }
    let out = Agent::start(&[]).stop();
    for program in [
        "exec_sched_process_exec",
        "exec_sys_enter_execve",
        "exec_sys_enter_execveat",
        "exec_sys_exit_execve",
        "exec_sys_exit_execveat",
        "task_sched_process_fork",
        "task_sched_process_exit",
        "tty_sys_enter_write",
        "tty_sys_enter_writev",
    ] {
        let line = format!("program=\"{program}\"");
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains("attached") && l.contains(&line)),
            "{program} not attached:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("skipped=0") && !out.stderr.contains(": skipped"),
        "{}",
        out.stderr
    );
}

/// Without privileges the agent says what it needs and exits non-zero.
#[test]
fn unprivileged_run_names_the_missing_capability() {
    if !privileged("unprivileged_run_names_the_missing_capability") {
        return;
    }
    // The checkout may sit in a directory only root can enter: run a world-readable copy.
    let scratch = Scratch::new("agent-copy");
    let copy = scratch.join("agent");
    fs::copy(binary(), &copy).unwrap();
    fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(&copy)
        .arg("--stdout")
        .uid(65534)
        .gid(65534)
        .env("NO_COLOR", "1")
        .output()
        .expect("run agent as nobody");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CAP_BPF"), "{stderr}");
}

/// Concatenated `tty_out` bytes this process wrote to `pty`, checking that chunk offsets
/// within each syscall run contiguously from 0.
fn own_output(events: &[Value], pty: &Pty) -> Vec<u8> {
    let mut out = Vec::new();
    let mut expected_offset = 0u64;
    for v in events.iter().filter(|v| {
        v["kind"] == "tty_out"
            && v["tgid"] == std::process::id()
            && v["tty"] == pty.device().as_str()
    }) {
        let offset = v["offset"].as_u64().unwrap();
        if offset == 0 {
            expected_offset = 0;
        }
        assert_eq!(
            offset, expected_offset,
            "chunks of one syscall arrive in order"
        );
        let data = tty_data(v);
        expected_offset += data.len() as u64;
        out.extend(data);
    }
    out
}

/// writev's iovecs, empty ones included, come back as one ordered byte stream.
#[test]
fn writev_to_a_pty_is_captured_in_order() {
    if !privileged("writev_to_a_pty_is_captured_in_order") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("writev");
    let big = block_pattern(2);
    let parts: [&[u8]; 4] = [mark.as_bytes(), b"", &big[..6000], b"-tail"];
    let pty = Pty::written_by(|slave| {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: the iovecs point into live buffers.
        let n = unsafe { libc::writev(slave.as_raw_fd(), iov.as_ptr(), 4) };
        assert_eq!(
            usize::try_from(n).unwrap(),
            parts.iter().map(|p| p.len()).sum::<usize>()
        );
    });
    agent.sync();
    let out = agent.stop();
    assert_eq!(own_output(&out.events, &pty), parts.concat());
}

/// `pwritev2` at the current position (offset -1) writes to a terminal as `writev` does, and
/// is captured as such; `pwrite64` and `pwritev` at an offset are refused by a terminal
/// (`ESPIPE`), so nothing of theirs reaches it or the record.
#[test]
fn pwritev2_to_a_pty_is_captured_and_refused_pwrites_are_not() {
    if !privileged("pwritev2_to_a_pty_is_captured_and_refused_pwrites_are_not") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("pwritev2");
    let refused = marker("espipe");
    let parts: [&[u8]; 2] = [mark.as_bytes(), b"-second"];
    let pty = Pty::written_by(|slave| {
        let fd = slave.as_raw_fd();
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            })
            .collect();
        // The raw syscall: a C library may turn a -1 offset into writev itself. On x86-64
        // the offset is passed as its low and high words.
        // SAFETY: the iovecs point into live buffers.
        let n = unsafe { libc::syscall(libc::SYS_pwritev2, fd, iov.as_ptr(), 2, -1i64, 0, 0) };
        assert_eq!(
            usize::try_from(n).unwrap(),
            parts.iter().map(|p| p.len()).sum::<usize>()
        );
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::pwrite(fd, refused.as_ptr().cast(), refused.len(), 0) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ESPIPE)
        );
    });
    agent.sync();
    let out = agent.stop();
    assert_eq!(own_output(&out.events, &pty), parts.concat());
}

/// One unseen gap of `bytes` of terminal output, as `own_unseen_gaps` lists it.
fn out_gap(bytes: u64) -> (String, u64, u64) {
    ("tty_out".to_owned(), 1, bytes)
}

/// This process's `unseen` gaps, as (kind lost, records, bytes) in order.
fn own_unseen_gaps(events: &[Value]) -> Vec<(String, u64, u64)> {
    events
        .iter()
        .filter(|v| {
            v["kind"] == "gap" && v["source"] == "unseen" && v["tgid"] == std::process::id()
        })
        .map(|v| {
            (
                v["lost_kind"].as_str().unwrap().to_owned(),
                v["lost_records"].as_u64().unwrap(),
                v["lost_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Bytes that `sendfile` or `splice` put into a terminal, which no write tracepoint sees,
/// are one gap of source `unseen` per syscall, with the count asked for and the writer.
#[test]
fn sendfile_and_splice_into_a_pty_are_unseen_gaps() {
    if !privileged("sendfile_and_splice_into_a_pty_are_unseen_gaps") {
        return;
    }
    let agent = Agent::start(&[]);
    let scratch = Scratch::new("unseen");
    let file = scratch.join("data");
    fs::write(&file, block_pattern(1)).unwrap();
    let data = fs::File::open(&file).unwrap();
    let pty = Pty::written_by(|slave| {
        let out = slave.as_raw_fd();
        // SAFETY: valid descriptors; a null offset reads from the file's own position.
        let n = unsafe { libc::sendfile(out, data.as_raw_fd(), std::ptr::null_mut(), 4096) };
        assert_eq!(n, 4096, "{}", std::io::Error::last_os_error());
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(&[b'x'; 1000]).unwrap();
        // SAFETY: valid descriptors, null offsets (a pipe and a terminal have none).
        let n = unsafe {
            libc::splice(
                reader.as_raw_fd(),
                std::ptr::null_mut(),
                out,
                std::ptr::null_mut(),
                1000,
                0,
            )
        };
        assert_eq!(n, 1000, "{}", std::io::Error::last_os_error());
        drop(writer);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
        assert!(rest.is_empty());
    });
    agent.sync();
    let out = agent.stop();
    let unseen = own_unseen_gaps(&out.events);
    assert_eq!(unseen, [out_gap(4096), out_gap(1000)]);
    assert!(own_output(&out.events, &pty).is_empty());
}

/// A window size set on a terminal, through the master as sshd does or through the slave as
/// `stty cols` does, is one `tty_resize` event on the slave's device with the size asked
/// for; a size the kernel cannot read (a bad pointer) or set on what is no terminal is none.
#[test]
fn window_sizes_set_on_a_pty_are_recorded() {
    if !privileged("window_sizes_set_on_a_pty_are_recorded") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut pty = Pty::open();
    let slave = pty.take_slave();
    set_window(pty.master.as_raw_fd(), 43, 132).unwrap();
    set_window(slave.as_raw_fd(), 30, 100).unwrap();
    // The kernel reads the command as 32 bits: a raw call with bits set above them is still
    // TIOCSWINSZ, and still recorded.
    let size = libc::winsize {
        ws_row: 50,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid fd and a winsize the kernel only reads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            slave.as_raw_fd(),
            (1u64 << 32) | libc::TIOCSWINSZ,
            &raw const size,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the kernel checks the pointer; this one is unmapped.
    let bad = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, 8usize as *const u8) };
    assert_eq!(bad, -1);
    let scratch = Scratch::new("resize");
    let file = fs::File::create(scratch.join("not-a-terminal")).unwrap();
    assert!(set_window(file.as_raw_fd(), 10, 10).is_err());
    agent.sync();
    let out = agent.stop();
    let sizes: Vec<(u64, u64)> = out
        .events
        .iter()
        .filter(|v| v["kind"] == "tty_resize" && v["tgid"] == std::process::id())
        .map(|v| {
            assert_eq!(v["tty"], pty.device().as_str(), "{v}");
            (v["rows"].as_u64().unwrap(), v["cols"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(sizes, [(43, 132), (30, 100), (50, 160)]);
}

/// Bytes of one write beyond the per-syscall budget (4 MiB) are counted as lost, exactly,
/// and the kernel program's log message, which names the writer, reaches the agent's log.
#[test]
fn a_write_past_the_step_budget_is_counted_not_dropped() {
    const BUDGET: usize = 4 << 20;
    if !privileged("a_write_past_the_step_budget_is_counted_not_dropped") {
        return;
    }
    let agent = Agent::start(&[]);
    let data = block_pattern(1280);
    let pty = Pty::written_by(|slave| {
        // SAFETY: valid fd and buffer; a blocking pty write returns once all is written.
        let n = unsafe { libc::write(slave.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(usize::try_from(n).unwrap(), data.len());
    });
    agent.sync();
    let out = agent.stop();
    assert_eq!(own_output(&out.events, &pty), data[..BUDGET]);
    assert_eq!(
        lost(&out.events, "tty_out"),
        (256, (data.len() - BUDGET) as u64)
    );
    let message = format!(
        "tty: a write of tgid {} ran past its budget of 1024 steps: {} bytes counted as lost",
        std::process::id(),
        data.len() - BUDGET
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&message)),
        "{}",
        out.stderr
    );
}

/// Writes through /dev/tty are output on the controlling terminal behind it.
#[test]
fn dev_tty_writes_land_on_the_controlling_terminal() {
    if !privileged("dev_tty_writes_land_on_the_controlling_terminal") {
        return;
    }
    let agent = Agent::start(&[]);
    let mark = marker("devtty");
    let mut pty = Pty::open();
    let drain = pty.drain_master();
    let slave = pty.take_slave();
    let slave_fd = slave.as_raw_fd();
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(format!("printf {mark} > /dev/tty"))
        .stdout(Stdio::null());
    in_new_session(&mut shell, slave_fd);
    assert!(shell.status().expect("run shell").success());
    drop(slave);
    drain.join().unwrap();
    let ev = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_out" && tty_data(v) == mark.as_bytes()
        })
        .expect("the /dev/tty write is captured");
    assert_eq!(ev["tty"], pty.device());
}

/// Types a secret at a password prompt (lines, no echo), then a line in raw mode (no echo
/// either, as at a readline prompt, whose program echoes itself), into a shell reading both;
/// returns the line and every `tty_in` record of this process on that terminal, in order
/// (the agent joins a task's writes in a row: the secret and the line may share one).
fn type_a_secret_then_a_line(agent: &Agent, secret: &str) -> (String, Vec<Value>) {
    let mut pty = Pty::open();
    let child = pty.shell("read secret; read line; /bin/echo \"$line\"");
    let drain = pty.drain_master();
    let mut master = fs::File::from(pty.master.try_clone().unwrap());
    // The kernel decides at the master write, so the order of writes and termios changes is
    // the whole story, whatever the shell is doing meanwhile.
    pty.password_prompt(true);
    master.write_all(format!("{secret}\n").as_bytes()).unwrap();
    pty.password_prompt(false);
    let line = marker("echoed");
    master.write_all(format!("{line}\n").as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    drop(master);
    drop(pty);
    drain.join().unwrap();
    let with_line = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_in" && contains(&tty_data(v), line.as_bytes())
        })
        .expect("the line typed in raw mode arrives as tty_in");
    let typed = agent.events_where(|v| {
        v["kind"] == "tty_in" && v["tty"] == with_line["tty"] && v["tgid"] == with_line["tgid"]
    });
    (line, typed)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Input typed at a password prompt (the terminal reads lines without echo) is recorded as
/// its byte count only, flagged redacted; input in raw mode after it, which readline and
/// editors echo themselves, is recorded whole, in records of its own.
#[test]
fn input_typed_without_echo_is_counted_not_recorded() {
    if !privileged("input_typed_without_echo_is_counted_not_recorded") {
        return;
    }
    let agent = Agent::start(&[]);
    let secret = marker("no-echo");
    let (line, typed) = type_a_secret_then_a_line(&agent, &secret);
    let (secret_records, shown): (Vec<&Value>, Vec<&Value>) = typed
        .iter()
        .partition(|v| v.get("redacted_bytes").is_some());
    assert!(
        !secret_records.is_empty(),
        "the secret's keystrokes are counted"
    );
    for v in &secret_records {
        assert!(
            tty_data(v).is_empty(),
            "redacted input carries no bytes: {v}"
        );
    }
    let counted: u64 = secret_records
        .iter()
        .map(|v| v["redacted_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, secret.len() as u64 + 1);
    let shown: Vec<u8> = shown.iter().flat_map(|v| tty_data(v)).collect();
    assert_eq!(shown, format!("{line}\n").as_bytes());
    let output = agent.stop();
    let printed = output.printed();
    assert!(
        !printed.contains(&secret) && !output.stderr.contains(&secret),
        "the secret appears nowhere in the agent's output"
    );
}

/// `--record-no-echo-input` records what is typed without echo, for sites that must.
#[test]
fn record_no_echo_input_keeps_what_is_typed_without_echo() {
    if !privileged("record_no_echo_input_keeps_what_is_typed_without_echo") {
        return;
    }
    let agent = Agent::start(&["--record-no-echo-input"]);
    let secret = marker("kept");
    let (line, typed) = type_a_secret_then_a_line(&agent, &secret);
    let bytes: Vec<u8> = typed.iter().flat_map(tty_data).collect();
    assert_eq!(bytes, format!("{secret}\n{line}\n").as_bytes());
    assert!(
        typed.iter().all(|v| v.get("redacted_bytes").is_none()),
        "{typed:?}"
    );
}

/// A shell's script that reads a secret and says how long it was.
const READ_SECRET: &str = "read secret; /bin/echo \"read ${#secret} characters\"";

/// Once `child`, a shell on `pty` ending in [`READ_SECRET`], has ended and its output after
/// the secret has arrived: every `tty_in` record of this process on its terminal.
fn own_input_once_secret_read(
    agent: &Agent,
    pty: Pty,
    child: std::process::Child,
    drain: std::thread::JoinHandle<u64>,
    secret: &str,
) -> Vec<Value> {
    assert!(child.wait_with_output().unwrap().status.success());
    let tty = pty.device();
    drop(pty);
    drain.join().unwrap();
    let shown = format!("read {} characters", secret.len());
    agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_out" && contains(&tty_data(v), shown.as_bytes())
        })
        .expect("the shell read the secret and said so");
    agent.events_where(|v| {
        v["kind"] == "tty_in" && v["tty"] == tty.as_str() && v["tgid"] == std::process::id()
    })
}

/// Keystrokes typed without echo, however far apart, are one record at the first one's time,
/// with their count and no bytes: a record a keystroke would give away the intervals between
/// them, from which keystroke-timing attacks recover typed text.
#[test]
fn keystrokes_typed_without_echo_give_away_no_timing() {
    const PAUSE: Duration = Duration::from_millis(40);
    if !privileged("keystrokes_typed_without_echo_give_away_no_timing") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut pty = Pty::open();
    let child = pty.shell(READ_SECRET);
    let drain = pty.drain_master();
    let mut master = fs::File::from(pty.master.try_clone().unwrap());
    let secret = marker("paced");
    let keystrokes = format!("{secret}\n");
    pty.password_prompt(true);
    // Far enough apart that each lands in a drained batch of its own, and past any join of
    // writes in a row.
    for key in keystrokes.bytes() {
        master.write_all(&[key]).unwrap();
        std::thread::sleep(PAUSE);
    }
    drop(master);
    let typed = own_input_once_secret_read(&agent, pty, child, drain, &secret);
    let n = keystrokes.len() as u64;
    let times: Vec<&Value> = typed.iter().map(|v| &v["time"]).collect();
    assert_eq!(
        typed.len(),
        1,
        "one record for {n} keystrokes, not one at each: {times:?}"
    );
    let v = &typed[0];
    assert_eq!(v["redacted_bytes"], n, "{v}");
    assert_eq!(v["writes"], n, "{v}");
    assert!(tty_data(v).is_empty(), "{v}");
    assert!(
        v.get("write_bytes").is_none() && v.get("write_gap_nanos").is_none(),
        "no keystroke's own time: {v}"
    );
    let span = Duration::from_nanos(v["span_nanos"].as_u64().unwrap());
    assert!(
        span >= PAUSE * (keystrokes.len() as u32 - 1),
        "the record spans from the first keystroke to the last: {v}"
    );
}

/// Pushes `bytes` with `ioctl(TIOCSTI)` on `fd`, a byte at a time, as root may on any
/// terminal.
fn push(fd: std::os::fd::RawFd, bytes: &[u8]) {
    for b in bytes {
        // SAFETY: TIOCSTI reads one byte at the pointer.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCSTI, &raw const *b) };
        assert_eq!(rc, 0, "TIOCSTI: {}", std::io::Error::last_os_error());
    }
}

/// Bytes pushed into a terminal's input with `ioctl(TIOCSTI)`, the way one process types
/// commands into another's shell without its master, are input of the process that pushed
/// them, marked injected; pushed while the terminal hides input, they are only counted, as
/// typed input is.
#[test]
fn input_pushed_by_tiocsti_is_recorded_as_injected_by_its_pusher() {
    if !privileged("input_pushed_by_tiocsti_is_recorded_as_injected_by_its_pusher") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut pty = Pty::open();
    let slave = pty.slave.as_ref().unwrap().try_clone().unwrap();
    let child = pty.shell(&format!(
        "read line; /bin/echo \"ran $line\"; {READ_SECRET}"
    ));
    let drain = pty.drain_master();
    let push = |bytes: &[u8]| push(slave.as_raw_fd(), bytes);
    let command = marker("pushed");
    push(format!("{command}\n").as_bytes());
    agent
        .wait_for(WAIT, |v| {
            v["kind"] == "tty_out" && contains(&tty_data(v), format!("ran {command}").as_bytes())
        })
        .expect("the shell ran the pushed line");
    pty.password_prompt(true);
    let secret = marker("pushed-secret");
    push(format!("{secret}\n").as_bytes());
    drop(slave);
    let pushed = own_input_once_secret_read(&agent, pty, child, drain, &secret);
    assert!(
        pushed.iter().all(|v| v["injected"] == true),
        "every byte pushed is marked: {pushed:?}"
    );
    let (counted, recorded): (Vec<&Value>, Vec<&Value>) = pushed
        .iter()
        .partition(|v| v.get("redacted_bytes").is_some());
    let bytes: Vec<u8> = recorded.iter().flat_map(|v| tty_data(v)).collect();
    assert_eq!(bytes, format!("{command}\n").as_bytes());
    let counted: Vec<&Value> = counted.iter().map(|v| &v["redacted_bytes"]).collect();
    assert_eq!(
        counted,
        [secret.len() + 1],
        "the secret, pushed without echo, counted in one record"
    );
    let output = agent.stop();
    let printed = output.printed();
    assert!(!printed.contains(&secret), "the secret is nowhere");
    assert!(
        !printed.contains("tty_injection"),
        "pushed as root into a terminal read as root: no alert"
    );
}

/// A byte pushed through a pty's master reaches the master's reader (sshd, a terminal
/// emulator), as the terminal's output does, and is shown to its user as if the session had
/// printed it: it is recorded as output of the process that pushed it, marked injected, and
/// raises no `tty_injection` alert (no program of the session reads it).
#[test]
fn output_pushed_through_a_master_is_recorded_as_injected_output() {
    if !privileged("output_pushed_through_a_master_is_recorded_as_injected_output") {
        return;
    }
    let agent = Agent::start(&[]);
    // The slave stays open here, so the master has a terminal behind it.
    let pty = Pty::open();
    let drain = pty.drain_master();
    let shown = marker("shown");
    push(pty.master.as_raw_fd(), shown.as_bytes());
    let tty = pty.device();
    let mine = |v: &Value| v["tty"] == tty.as_str() && v["tgid"] == std::process::id();
    agent
        .wait_for(WAIT, |v| {
            mine(v) && v["kind"] == "tty_out" && contains(&tty_data(v), shown.as_bytes())
        })
        .expect("the pushed output was recorded");
    let pushed = agent.events_where(|v| mine(v) && v["kind"] == "tty_out");
    let bytes: Vec<u8> = pushed.iter().flat_map(tty_data).collect();
    assert_eq!(bytes, shown.as_bytes(), "{pushed:?}");
    assert!(pushed.iter().all(|v| v["injected"] == true), "{pushed:?}");
    assert_eq!(
        agent.events_where(|v| mine(v) && v["kind"] == "tty_in"),
        Vec::<Value>::new(),
        "not input"
    );
    drop(pty);
    drain.join().unwrap();
    let output = agent.stop();
    let printed = output.printed();
    assert!(!printed.contains("tty_injection"), "no alert");
}

/// A process that drops to another user and pushes a command into the terminal it shares
/// with a root shell (how a program run by `su` types into the shell it came from) is
/// recorded pushing it, and followed by a `tty_injection` alert naming who reads it; the
/// root shell then runs the line. Pushed by the terminal's own user (the test above), input
/// raises none.
#[test]
fn input_pushed_into_a_root_shell_by_another_user_is_alerted() {
    // A process may push into its own terminal without CAP_SYS_ADMIN only while this is 1.
    const LEGACY: &str = "/proc/sys/dev/tty/legacy_tiocsti";
    if !privileged("input_pushed_into_a_root_shell_by_another_user_is_alerted") {
        return;
    }
    let legacy = std::fs::read_to_string(LEGACY).expect("this kernel has TIOCSTI");
    std::fs::write(LEGACY, "1").unwrap();
    let agent = Agent::start(&[]);
    let mut pty = Pty::open();
    let command = marker("planted");
    // The shell leads the terminal's session and its foreground group, as root; the pusher
    // is its child, with its terminal, as nobody.
    let mut child = pty.shell(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups perl -e \
         'ioctl(STDIN, 0x5412, $_) or die \"TIOCSTI: $!\" for split //, \"{command}\\n\"'; \
         read line; /bin/echo \"ran $line\""
    ));
    let drain = pty.drain_master();
    let ran = agent.wait_for(WAIT, |v| {
        v["kind"] == "tty_out" && contains(&tty_data(v), format!("ran {command}").as_bytes())
    });
    std::fs::write(LEGACY, legacy.trim()).unwrap();
    if ran.is_none() {
        // Still reading: it would outlive the test, holding its output open.
        child.kill().unwrap();
    }
    ran.expect("the root shell ran the pushed line");
    assert!(child.wait_with_output().unwrap().status.success());
    let tty = pty.device();
    drop(pty);
    drain.join().unwrap();

    let pushed = agent.events_where(|v| {
        v["kind"] == "tty_in" && v["tty"] == tty.as_str() && v["injected"] == true
    });
    let bytes: Vec<u8> = pushed.iter().flat_map(tty_data).collect();
    assert_eq!(bytes, format!("{command}\n").as_bytes(), "{pushed:?}");
    assert!(
        pushed
            .iter()
            .all(|v| v["comm"] == "perl" && v["euid"] == 65_534),
        "pushed by perl as nobody: {pushed:?}"
    );
    let pusher_pid = &pushed[0]["pid"];
    let alerts = agent
        .events_where(|v| v["kind"] == "violation" && v["violation"]["rule"] == "tty_injection");
    assert!(!alerts.is_empty(), "no alert");
    for alert in &alerts {
        assert_eq!(&alert["pid"], pusher_pid, "{alert}");
        assert_eq!(alert["violation"]["action"], "alert", "{alert}");
        assert_eq!(
            alert["violation"]["detail"],
            format!(
                "input pushed into terminal {tty} by euid 65534, read by its session's \
                 leader (euid 0) and its foreground process group's (euid 0)"
            ),
            "{alert}"
        );
    }
    assert!(
        alerts.len() <= pushed.len(),
        "at most one alert a record: {alerts:?}"
    );
}

/// A shell's `PATH` search is one exec naming the paths it tried first; a command found
/// nowhere keeps each miss as a failed exec of its own.
#[test]
fn a_path_search_is_one_exec_naming_the_paths_tried() {
    if !privileged("a_path_search_is_one_exec_naming_the_paths_tried") {
        return;
    }
    let agent = Agent::start(&[]);
    let scratch = Scratch::new("path-search");
    // Directories that do not exist: dash tries `execve` in each, as it walks PATH.
    let (a, b) = (scratch.join("a"), scratch.join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let found = marker("found");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("PATH={a}:{b}:/usr/bin exec env {found}=1 true"))
        .status()
        .unwrap();
    assert!(status.success());
    let nowhere = marker("nowhere");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("PATH={a}:{b} exec {nowhere}"))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(127));

    let env = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "exec" && argv_of(v).contains(&format!("{found}=1"))
        })
        .expect("the exec the search led to");
    assert_eq!(env["filename"], "/usr/bin/env");
    assert_eq!(env["result"], 0);
    assert_eq!(
        env["tried"],
        serde_json::json!([format!("{a}/env"), format!("{b}/env")])
    );
    let misses = |name: &str| {
        agent.events_where(|v| {
            v["kind"] == "exec" && v["filename"].as_str().is_some_and(|f| f.ends_with(name))
        })
    };
    assert!(
        misses("/env").iter().all(|v| v["result"] == 0),
        "the misses are in the exec, not beside it: {:?}",
        misses("/env")
    );
    let lost: Vec<Value> = (0..150)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            misses(&nowhere)
        })
        .find(|m| m.len() == 2)
        .expect("both misses of a command found nowhere arrive");
    assert_eq!(lost[0]["filename"], format!("{a}/{nowhere}"));
    assert_eq!(lost[1]["filename"], format!("{b}/{nowhere}"));
    assert!(
        lost.iter()
            .all(|v| v["result"] == -libc::ENOENT && v.get("tried").is_none())
    );
}

/// The SHA-256 of `path`'s bytes, in hex.
fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(fs::read(path).unwrap());
    proto::json::hex(&digest)
}

/// Checks an exec's `image` against the inode of `path` now.
fn image_matches(ev: &Value, path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).unwrap();
    let image = &ev["image"];
    let ns = |sec: i64, nsec: i64| sec * 1_000_000_000 + nsec;
    assert_eq!(image["dev"], meta.dev(), "{ev}");
    assert_eq!(image["inode"], meta.ino(), "{ev}");
    assert_eq!(image["size"], meta.size(), "{ev}");
    assert_eq!(
        image["mtime_unix_nano"],
        ns(meta.mtime(), meta.mtime_nsec()),
        "{ev}"
    );
    assert_eq!(
        image["ctime_unix_nano"],
        ns(meta.ctime(), meta.ctime_nsec()),
        "{ev}"
    );
}

/// Rewrites the last 16 bytes of `file` in place and puts its mtime back: only its ctime
/// tells.
fn rewrite_keeping_size_and_mtime(file: &std::path::Path) {
    let mtime = fs::metadata(file).unwrap().modified().unwrap();
    let mut edited = fs::read(file).unwrap();
    let end = edited.len();
    edited[end - 16..].fill(0xff);
    fs::write(file, &edited).unwrap();
    fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
}

/// Runs `program`, which waits on its input, until the agent has reported its exec;
/// returns that exec.
fn run_until_seen(agent: &Agent, program: &std::path::Path) -> Value {
    let mut child = Command::new(program).stdin(Stdio::piped()).spawn().unwrap();
    let ev = agent.exec_of(program.to_str().unwrap());
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    ev
}

/// The digest an exec's image was given: on the exec itself when the agent knew it, else
/// (`pending`) in the `image` event that follows, for the same file and process.
fn digest_of(agent: &Agent, ev: &Value) -> Value {
    let image = &ev["image"];
    if image["unhashed"] != "pending" {
        return image.get("sha256").cloned().unwrap_or(Value::Null);
    }
    let same = |v: &Value| {
        ["dev", "inode", "size", "mtime_unix_nano", "ctime_unix_nano"]
            .iter()
            .all(|f| v["image"][f] == image[f])
    };
    let digest = agent
        .wait_for(WAIT, |v| {
            v["kind"] == "image" && v["tgid"] == ev["tgid"] && same(v)
        })
        .unwrap_or_else(|| panic!("no image event after {ev}"));
    assert!(digest.get("image").is_some(), "{digest}");
    digest["image"]
        .get("sha256")
        .cloned()
        .unwrap_or_else(|| digest["image"]["unhashed"].clone())
}

/// Every successful exec names the file it mapped by its inode (dev, inode, size, mtime,
/// ctime), read by the kernel from `mm->exe_file`, and by the SHA-256 of its bytes, read off
/// the capture path: `pending` on a file's first exec, with an `image` event after, and on
/// the exec itself once known. Covered: the root filesystem and a tmpfs (a device number of
/// its own); a script, whose image is its interpreter (marked, with its path), running or
/// gone; a process gone at once and
/// one still running; an edit that keeps the size and puts the mtime back (a new ctime, so
/// read anew, never given the old digest); a file past the bound (not read, marked); and a
/// failed exec, which maps nothing.
#[test]
fn an_exec_names_its_file_by_inode_and_digest() {
    if !privileged("an_exec_names_its_file_by_inode_and_digest") {
        return;
    }
    let agent = Agent::start(&[]);
    let scratch = Scratch::new("image");
    let disk = Mount::tmpfs(&scratch.join("mnt"), "4m");
    let copy = |from: &str, to: std::path::PathBuf| {
        let mut bytes = fs::read(from).unwrap();
        // Bytes past the ELF's last section change the file and not what it does.
        bytes.extend_from_slice(&[0; 16]);
        fs::write(&to, bytes).unwrap();
        fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        to
    };
    let run = |file: &std::path::Path, mark: &str| {
        let status = Command::new(file).arg(mark).status().unwrap();
        assert!(status.success());
        agent.exec_with_arg(mark)
    };

    // Gone at once: a new file, so its first exec waits for its digest.
    let file = copy("/bin/true", scratch.join("img-true"));
    let first = run(&file, &marker("image-1"));
    image_matches(&first, &file);
    assert_eq!(first["image"].get("interpreter"), None, "{first}");
    assert_eq!(first["image"]["unhashed"], "pending", "{first}");
    assert_eq!(digest_of(&agent, &first), sha256_hex(&file), "{first}");
    // Known now: the next exec carries it.
    let again = run(&file, &marker("image-again"));
    assert_eq!(again["image"]["sha256"], sha256_hex(&file), "{again}");

    let on_tmpfs = copy("/bin/true", disk.target.join("img-true"));
    let ev = run(&on_tmpfs, &marker("image-tmpfs"));
    image_matches(&ev, &on_tmpfs);
    assert_ne!(ev["image"]["dev"], first["image"]["dev"], "{ev}");
    assert_eq!(digest_of(&agent, &ev), sha256_hex(&on_tmpfs), "{ev}");

    // A script: the kernel maps its interpreter, and the image says so, as does the
    // interpreter's path beside the script's. One script waits on its input until its
    // exec is seen, so its interpreter is reached through the process.
    let script = scratch.join("img-script");
    fs::write(&script, "#!/bin/sh\nread line\nexit 0\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ev = run_until_seen(&agent, &script);
    let sh = std::path::Path::new("/bin/sh");
    image_matches(&ev, sh);
    assert_eq!(ev["image"]["interpreter"], true, "{ev}");
    assert_eq!(ev["interpreter"], "/bin/sh", "{ev}");
    assert_eq!(digest_of(&agent, &ev), sha256_hex(sh), "{ev}");
    // The other exits at once, under an interpreter the agent has not read yet (a copy of
    // the shell): with the process most likely gone, the interpreter's path reaches it.
    let shell = copy("/bin/dash", scratch.join("img-sh"));
    let quick = scratch.join("img-quick");
    fs::write(&quick, format!("#!{}\nexit 0\n", shell.display())).unwrap();
    fs::set_permissions(&quick, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ev = run(&quick, &marker("image-quick"));
    image_matches(&ev, &shell);
    assert_eq!(ev["image"]["interpreter"], true, "{ev}");
    assert_eq!(ev["interpreter"], shell.to_str().unwrap(), "{ev}");
    assert_eq!(ev["filename"], quick.to_str().unwrap(), "{ev}");
    assert_eq!(digest_of(&agent, &ev), sha256_hex(&shell), "{ev}");

    // The same size and mtime, other bytes: only ctime tells, and the digest follows.
    rewrite_keeping_size_and_mtime(&file);
    let second = run(&file, &marker("image-2"));
    image_matches(&second, &file);
    assert_eq!(
        second["image"]["mtime_unix_nano"],
        first["image"]["mtime_unix_nano"]
    );
    assert_ne!(
        second["image"]["ctime_unix_nano"],
        first["image"]["ctime_unix_nano"]
    );
    let digest = digest_of(&agent, &second);
    assert_eq!(digest, sha256_hex(&file), "{second}");
    assert_ne!(digest, again["image"]["sha256"]);

    // Still running, and run by a relative name: reached through the process itself.
    let name = marker("img-sleep");
    let sleeper = copy("/bin/sleep", scratch.join(&name));
    let mut child = Command::new(format!("./{name}"))
        .arg("60")
        .current_dir(scratch.path())
        .spawn()
        .unwrap();
    let relative = format!("./{name}");
    let ev = agent.exec_of(&relative);
    let digest = digest_of(&agent, &ev);
    child.kill().unwrap();
    child.wait().unwrap();
    image_matches(&ev, &sleeper);
    assert_eq!(digest, sha256_hex(&sleeper), "{ev}");

    // Past the bound (a sparse tail, so the test writes little): not read, and marked.
    let big = copy("/bin/true", scratch.join("img-big"));
    fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let mark = marker("image-big");
    assert!(Command::new(&big).arg(&mark).status().unwrap().success());
    let ev = agent.exec_with_arg(&mark);
    image_matches(&ev, &big);
    assert_eq!(ev["image"]["unhashed"], "too_large", "{ev}");
    assert_eq!(ev["image"].get("sha256"), None, "{ev}");

    // A failed exec maps nothing.
    let missing = format!("/nonexistent/{}", marker("image-none"));
    assert!(Command::new(&missing).status().is_err());
    let ev = agent.exec_of(&missing);
    assert_eq!(ev["image"], Value::Null, "{ev}");
    let out = agent.stop();
    assert!(out.success, "agent failed:\n{}", out.stderr);
}

/// Every successful exec names its executable's file (`mm->exe_file`) by the path the
/// kernel resolves: a symlink's target, a relative name made whole, a script's interpreter
/// rather than the script, a file unlinked before it ran (marked deleted, where it was), and
/// a `memfd` (marked unreachable: no directory holds it).
#[test]
fn an_exec_names_its_executable_as_the_kernel_resolves_it() {
    if !privileged("an_exec_names_its_executable_as_the_kernel_resolves_it") {
        return;
    }
    let agent = Agent::start(&[]);
    let scratch = Scratch::new("exe");
    let canonical = |p: &std::path::Path| fs::canonicalize(p).unwrap().display().to_string();
    let true_path = canonical(std::path::Path::new("/bin/true"));
    let executable = |ev: &Value| {
        let e = &ev["executable"];
        let flag = |name: &str| e.get(name).and_then(Value::as_bool).unwrap_or(false);
        (
            e["path"]
                .as_str()
                .unwrap_or_else(|| panic!("no path: {ev}"))
                .to_owned(),
            flag("deleted"),
            flag("unreachable"),
            flag("truncated"),
        )
    };

    let link = scratch.join("exe-link");
    std::os::unix::fs::symlink("/bin/true", &link).unwrap();
    let mark = marker("exe-link");
    assert!(Command::new(&link).arg(&mark).status().unwrap().success());
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["filename"], link.to_str().unwrap(), "{ev}");
    assert_eq!(
        executable(&ev),
        (true_path.clone(), false, false, false),
        "{ev}"
    );

    let copy = scratch.join("exe-copy");
    fs::copy("/bin/true", &copy).unwrap();
    let mark = marker("exe-relative");
    let status = Command::new("./exe-copy")
        .arg(&mark)
        .current_dir(scratch.path())
        .status()
        .unwrap();
    assert!(status.success());
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["filename"], "./exe-copy", "{ev}");
    assert_eq!(
        executable(&ev),
        (canonical(&copy), false, false, false),
        "{ev}"
    );

    let script = scratch.join("exe-script");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mark = marker("exe-script");
    assert!(Command::new(&script).arg(&mark).status().unwrap().success());
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["interpreter"], "/bin/sh", "{ev}");
    let sh = canonical(std::path::Path::new("/bin/sh"));
    assert_eq!(executable(&ev), (sh, false, false, false), "{ev}");

    // Run from a descriptor (fexecve) after its only name is gone.
    let doomed = scratch.join("exe-doomed");
    fs::copy("/bin/true", &doomed).unwrap();
    let where_it_was = canonical(&doomed);
    let mark = marker("exe-deleted");
    fexecve(
        &format!("fd = os.open({where_it_was:?}, os.O_RDONLY)\nos.unlink({where_it_was:?})\n"),
        &mark,
    );
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(executable(&ev), (where_it_was, true, false, false), "{ev}");

    // A file that never had a directory.
    let name = marker("exe-memfd");
    let mark = marker("exe-memfd-arg");
    fexecve(
        &format!(
            "fd = os.memfd_create({name:?}, 0)\ndata = open('/bin/true', 'rb').read()\n\
             while data:\n    data = data[os.write(fd, data):]\n"
        ),
        &mark,
    );
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(
        executable(&ev),
        (format!("/memfd:{name}"), false, true, false),
        "{ev}"
    );

    // A failed exec maps no file.
    let missing = format!("/nonexistent/{}", marker("exe-none"));
    assert!(Command::new(&missing).status().is_err());
    let ev = agent.exec_of(&missing);
    assert_eq!(ev["executable"], Value::Null, "{ev}");
    let out = agent.stop();
    assert!(out.success, "agent failed:\n{}", out.stderr);
}

/// Runs Python's `setup` (which leaves the file to run open as `fd`), then `fexecve`s it
/// with `arg`, and checks it ran.
fn fexecve(setup: &str, arg: &str) {
    let program = format!("import os\n{setup}os.execve(fd, ['fexecve', {arg:?}], {{}})\n");
    let status = Command::new("python3")
        .args(["-c", &program])
        .status()
        .unwrap();
    assert!(status.success(), "python3 -c {program}");
}

/// Every exec names its working directory, resolved by the kernel across mounts: as it is,
/// inside a mount, removed (marked, where it was), outside a chroot (marked unreachable),
/// past the bound (its tail, marked), and the root.
#[test]
fn an_exec_names_its_working_directory() {
    if !privileged("an_exec_names_its_working_directory") {
        return;
    }
    let agent = Agent::start(&[]);
    let scratch = Scratch::new("cwd");
    let run_in = |dir: &std::path::Path, tag: &str| {
        let mark = marker(tag);
        let status = Command::new("/bin/true")
            .arg(&mark)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success());
        agent.exec_with_arg(&mark)
    };
    let real = |dir: &std::path::Path| fs::canonicalize(dir).unwrap().display().to_string();
    let flags = |ev: &Value| {
        ["cwd_truncated", "cwd_deleted", "cwd_unreachable"]
            .map(|f| ev.get(f).and_then(Value::as_bool).unwrap_or(false))
    };

    let plain = scratch.join("with space").join("c");
    fs::create_dir_all(&plain).unwrap();
    let ev = run_in(&plain, "cwd-plain");
    assert_eq!(ev["cwd"], real(&plain), "{ev}");
    assert_eq!(flags(&ev), [false; 3], "{ev}");

    let disk = Mount::tmpfs(&scratch.join("mnt"), "1m");
    let inner = disk.target.join("x").join("y");
    fs::create_dir_all(&inner).unwrap();
    let ev = run_in(&inner, "cwd-mount");
    assert_eq!(ev["cwd"], real(&inner), "{ev}");
    assert_eq!(flags(&ev), [false; 3], "{ev}");

    let ev = run_in(std::path::Path::new("/"), "cwd-root");
    assert_eq!(ev["cwd"], "/", "{ev}");

    let gone = scratch.join("gone");
    fs::create_dir_all(&gone).unwrap();
    let was = real(&gone);
    let mark = marker("cwd-gone");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("rmdir \"$PWD\" && exec /bin/true {mark}"))
        .current_dir(&gone)
        .status()
        .unwrap();
    assert!(status.success());
    let ev = agent.exec_with_arg(&mark);
    assert_eq!(ev["cwd"], was, "{ev}");
    assert_eq!(flags(&ev), [false, true, false], "{ev}");

    // chroot(2) leaves the working directory where it was: outside the new root, which the
    // walk never meets. The new root holds one file that is not executable, so this is the
    // failed exec's path (EACCES), which names its directory too.
    let jail = scratch.join("jail");
    fs::create_dir_all(&jail).unwrap();
    let name = marker("cwd-outside");
    fs::write(jail.join(&name), "not executable").unwrap();
    let outside = scratch.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let root = std::ffi::CString::new(jail.as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = Command::new(format!("/{name}"));
    cmd.current_dir(&outside);
    // SAFETY: chroot(2) is async-signal-safe, and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let err = cmd.status().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let path = format!("/{name}");
    let ev = agent.exec_of(&path);
    assert_eq!(ev["result"], -libc::EACCES, "{ev}");
    assert_eq!(ev["cwd"], real(&outside), "{ev}");
    assert_eq!(flags(&ev), [false, false, true], "{ev}");

    // Twelve components of 53 bytes: over 600 bytes, past the 512 kept.
    let mut deep = scratch.path().to_path_buf();
    for i in 0..12 {
        deep.push(format!("{i:02}-{}", "d".repeat(50)));
    }
    fs::create_dir_all(&deep).unwrap();
    let ev = run_in(&deep, "cwd-deep");
    let cwd = ev["cwd"].as_str().unwrap();
    assert_eq!(flags(&ev), [true, false, false], "{ev}");
    assert!(cwd.starts_with('/') && cwd.len() <= 512, "{ev}");
    assert!(
        real(&deep).ends_with(cwd),
        "{cwd} is not the tail of the path"
    );
    assert!(cwd.len() > 400, "the tail kept is as long as fits: {cwd}");
    let out = agent.stop();
    assert!(out.success, "agent failed:\n{}", out.stderr);
}

/// One `io_uring` request on `fd`, submitted and waited for: `opcode` with `addr` and `len`
/// as the kernel reads them for reads and writes, and `fd_in` for a splice's source (0
/// otherwise). Returns the completion's result. (The few `io_uring` ABI offsets used are
/// fixed by the kernel's uapi.)
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the rings are page-aligned mappings, and the kernel aligns every field in them"
)]
fn io_uring_one(fd: i32, opcode: u8, addr: u64, len: u32, fd_in: i32) -> i32 {
    // struct io_uring_params: 120 bytes; sq_off at 40 (head, tail, ring_mask, ring_entries,
    // flags, dropped, array as u32s), cq_off at 80 (head, tail, ring_mask, ring_entries,
    // overflow, cqes).
    let mut params = [0u32; 30];
    // SAFETY: the params buffer is as large as the kernel's struct.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    assert!(
        ring >= 0,
        "io_uring_setup: {}",
        std::io::Error::last_os_error()
    );
    let ring = ring as i32;
    let (sq_entries, cq_entries) = (params[0], params[1]);
    let (sq, cq) = (&params[10..17], &params[20..26]);
    let map = |len: usize, offset: i64| {
        // SAFETY: a shared mapping of the ring's own regions, at the offsets it defines.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring,
                offset,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        p.cast::<u8>()
    };
    let sq_ring = map(sq[6] as usize + sq_entries as usize * 4, 0);
    let cq_ring = map(cq[5] as usize + cq_entries as usize * 16, 0x800_0000);
    let sqes = map(sq_entries as usize * 64, 0x1000_0000);
    // SAFETY: offsets inside the mappings, as the kernel laid them out.
    unsafe {
        let sqe = sqes;
        std::ptr::write_bytes(sqe, 0, 64);
        *sqe = opcode;
        sqe.add(4).cast::<i32>().write(fd);
        sqe.add(8).cast::<u64>().write(u64::MAX); // the current position
        sqe.add(16).cast::<u64>().write(addr);
        sqe.add(24).cast::<u32>().write(len);
        sqe.add(44).cast::<i32>().write(fd_in);
        let tail = sq_ring
            .add(sq[1] as usize)
            .cast::<std::sync::atomic::AtomicU32>();
        let t = (*tail).load(std::sync::atomic::Ordering::Acquire);
        let mask = sq_ring.add(sq[2] as usize).cast::<u32>().read();
        sq_ring
            .add(sq[6] as usize)
            .cast::<u32>()
            .add((t & mask) as usize)
            .write(0);
        (*tail).store(t + 1, std::sync::atomic::Ordering::Release);
        let n = libc::syscall(libc::SYS_io_uring_enter, ring, 1, 1, 1, 0, 0);
        assert_eq!(n, 1, "io_uring_enter: {}", std::io::Error::last_os_error());
        let head = cq_ring.add(cq[0] as usize).cast::<u32>().read();
        let mask = cq_ring.add(cq[2] as usize).cast::<u32>().read();
        let cqe = cq_ring.add(cq[5] as usize + (head & mask) as usize * 16);
        let res = cqe.add(8).cast::<i32>().read();
        libc::close(ring);
        res
    }
}

/// Writes and splices through `io_uring` reach a terminal without a write syscall: each is an
/// unseen gap with its byte count, a `writev`'s iovecs summed, and a write into a master is
/// counted as typed input. A splice out of a terminal is no gap.
#[test]
fn io_uring_writes_into_a_pty_are_unseen_gaps() {
    const WRITE: u8 = 23;
    const WRITEV: u8 = 2;
    const SPLICE: u8 = 30;
    if !privileged("io_uring_writes_into_a_pty_are_unseen_gaps") {
        return;
    }
    let agent = Agent::start(&[]);
    let pty = Pty::written_by(|slave| {
        let out = slave.as_raw_fd();
        let data = [b'u'; 300];
        assert_eq!(io_uring_one(out, WRITE, data.as_ptr() as u64, 300, 0), 300);
        let (a, b) = ([b'v'; 40], [b'w'; 25]);
        let iov = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut libc::c_void,
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            },
        ];
        assert_eq!(io_uring_one(out, WRITEV, iov.as_ptr() as u64, 2, 0), 65);
        // From a pipe, with no offset on either side (-1).
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(&[b'x'; 500]).unwrap();
        let from = reader.as_raw_fd();
        assert_eq!(io_uring_one(out, SPLICE, u64::MAX, 500, from), 500);
    });
    // Typed input injected through the master is counted as input.
    let typed = Pty::open();
    let keys = b"id -u\n";
    let master = typed.master.as_raw_fd();
    assert_eq!(io_uring_one(master, WRITE, keys.as_ptr() as u64, 6, 0), 6);
    // A splice out of a terminal into a pipe writes to no terminal: nothing is counted.
    // Whether the kernel can splice from a pty or not, both descriptors are looked up.
    let slave = typed.slave.as_ref().unwrap();
    assert_eq!(
        unsafe { libc::write(slave.as_raw_fd(), b"abcd".as_ptr().cast(), 4) },
        4
    );
    let (_reader, writer) = std::io::pipe().unwrap();
    let done = io_uring_one(writer.as_raw_fd(), SPLICE, u64::MAX, 4, master);
    assert!(done <= 4, "{done}");
    agent.sync();
    let out = agent.stop();
    let unseen = own_unseen_gaps(&out.events);
    let tty_in = ("tty_in".to_owned(), 1, 6);
    assert_eq!(unseen, [out_gap(300), out_gap(65), out_gap(500), tty_in]);
    assert!(own_output(&out.events, &pty).is_empty());
}
