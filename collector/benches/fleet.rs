//! `cargo bench -p collector --bench fleet [-- --hosts N --rate R --seconds S
//! --stop-at A --stop-for D]`: many agents against one collector, at a fixed rate for a
//! fixed time.
//!
//! The collector runs in a process of its own (this binary again, with `--serve`), on a
//! `SQLite` store with `synchronous=FULL`, over mutual TLS, so that its resident memory can be
//! read apart from the simulated agents'. Each simulated host has its own certificate, its
//! own connection and Ingest stream, and its own chain, which it extends by `R` exec-sized
//! events a second, in five batches a second as an agent's spool drains. Prints acked
//! events/s, the ack latency of every batch (p50, p99, max), the collector's resident memory
//! every ten seconds with the ratio of the last to the first once every host is connected,
//! the seconds of the run in which the batches acked only after a second or more were sent
//! (a stall shows as a few adjacent seconds) with what the collector and the machine did in
//! and around them, second by second, and verify's verdict: every chain verifies and holds
//! every record sent, so nothing was lost.
//!
//! With `--stop-at A --stop-for D` it stops the collector (`SIGSTOP`) at second A of the
//! timed run and lets it go on D seconds later: a stall made on purpose, the same in every
//! run, and prints how long after it went on the batches sent were acked late again.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use pki::{Ca, ClientIdentity, Role, Validity};
use prost::Message as _;
use proto::{
    chain::Chain,
    v1::{
        AgentMessage, ChainStart, ChainedEvent, Event, EventBatch, Exec, Hello, Process,
        VerifyRequest, agent_message::Msg, collector_message, event::Body,
        ingest_client::IngestClient, query_client::QueryClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Batches a simulated agent sends a second.
const BATCHES_PER_SECOND: u64 = 5;
/// How long the hosts take to connect, spread evenly, before the timed run.
const RAMP: Duration = Duration::from_secs(10);

struct Args {
    hosts: usize,
    rate: u64,
    seconds: u64,
    /// The second of the timed run the collector is stopped at, and for how many.
    stop: Option<(u64, u64)>,
}

fn args() -> Args {
    let mut args = Args {
        hosts: 1000,
        rate: 50,
        seconds: 300,
        stop: None,
    };
    let (mut stop_at, mut stop_for) = (None, None);
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = || words.next().expect("a value after the flag");
        match word.as_str() {
            "--hosts" => args.hosts = value().parse().expect("--hosts N"),
            "--rate" => args.rate = value().parse().expect("--rate EVENTS_PER_SECOND"),
            "--seconds" => args.seconds = value().parse().expect("--seconds S"),
            "--stop-at" => stop_at = Some(value().parse().expect("--stop-at SECOND")),
            "--stop-for" => stop_for = Some(value().parse().expect("--stop-for SECONDS")),
            // cargo bench passes this to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        args.rate.is_multiple_of(BATCHES_PER_SECOND) && args.rate > 0,
        "--rate must be a multiple of {BATCHES_PER_SECOND}"
    );
    args.stop = match (stop_at, stop_for) {
        (Some(at), Some(seconds)) if at + seconds < args.seconds => Some((at, seconds)),
        (None, None) => None,
        _ => panic!("--stop-at and --stop-for go together, and end before --seconds"),
    };
    args
}

/// Stops the collector `pid` at second `at` of the run begun at `zero`, for `seconds`.
async fn stop_collector(pid: u32, zero: tokio::time::Instant, at: u64, seconds: u64) {
    let signal = |signal| {
        let pid = libc::pid_t::try_from(pid).expect("a pid");
        // SAFETY: kill only sends a signal, to the collector this bench started.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "signal the collector"
        );
    };
    tokio::time::sleep_until(zero + Duration::from_secs(at)).await;
    signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    signal(libc::SIGCONT);
}

fn host_name(i: usize) -> String {
    format!("fleet-{i:05}")
}

/// Event `seq` of a simulated host's chain: its `ChainStart`, then execs.
fn event(host: &str, seq: u64) -> Vec<u8> {
    let time_unix_nano = proto::time::now_unix_nano();
    let body = if seq == 0 {
        Body::ChainStart(ChainStart {
            host: host.to_owned(),
            boot_id: "fleet".into(),
            ..ChainStart::default()
        })
    } else {
        Body::Exec(Exec {
            filename: "/usr/bin/systemctl".into(),
            argv: vec![
                b"systemctl".to_vec().into(),
                b"status".to_vec().into(),
                format!("unit-{seq}.service").into_bytes().into(),
            ],
            ..Exec::default()
        })
    };
    Event {
        time_unix_nano,
        process: (seq > 0).then(|| Process {
            pid: 5000 + (seq % 1000) as u32,
            tgid: 5000 + (seq % 1000) as u32,
            ppid: 1,
            comm: "systemctl".into(),
            ..Process::default()
        }),
        body: Some(body),
        ..Event::default()
    }
    .encode_to_vec()
}

/// Files the collector process reads its TLS identity from.
const SERVE_FILES: [&str; 5] = [
    "ca.pem",
    "collector.pem",
    "collector.key",
    "witness.pem",
    "witness.key",
];

/// The collector process: serves until killed, after saying where it listens.
async fn serve(dir: &Path) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let [ca_pem, cert_pem, key_pem, witness_pem, witness_key] = SERVE_FILES.map(read);
    let store = collector::open_store(
        &format!("sqlite://{}", dir.join("store.db").display()),
        &collector::StoreTls::default(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let witness =
        collector::witness::Witness::from_pem(&ca_pem, &witness_pem, &witness_key).unwrap();
    // Every simulated host dials from 127.0.0.1: the per-address limit is the fleet's.
    let limits = collector::Limits {
        connections: pki::ConnectionLimits {
            total: 8192,
            per_peer: 8192,
        },
        ..collector::Limits::DEFAULT
    };
    collector::serve(
        listener,
        store,
        collector::policy::default_policy(),
        collector::Transport::Tls {
            ca_pem,
            cert_pem,
            key_pem,
            ca: None,
            witness: Arc::new(witness),
        },
        collector::Retention::default(),
        Duration::from_secs(30),
        limits,
    )
    .await
    .unwrap();
}

/// Ack latency from which a batch counts as slow, and the second it was sent in is named.
const SLOW: Duration = Duration::from_secs(1);

/// What one simulated host saw: events acknowledged, each batch's ack latency, and the
/// second of the timed run each slow batch was sent in (negative: during the ramp).
#[derive(Default)]
struct HostRun {
    acked: u64,
    sent: u64,
    latencies: Vec<Duration>,
    slow: Vec<i64>,
}

/// The whole second of the timed run (begun at `zero`) that `at` falls in; negative when
/// before it.
fn second_of(at: Instant, zero: Instant) -> i64 {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    match at.checked_duration_since(zero) {
        Some(after) => secs(after),
        None => -secs(zero - at) - 1,
    }
}

/// One simulated agent: connects at `start`, then sends `rate` events a second until `end`,
/// and waits for the last ack. `zero` is when the timed run begins.
async fn agent(
    url: String,
    identity: ClientIdentity,
    host: String,
    rate: u64,
    start: tokio::time::Instant,
    zero: tokio::time::Instant,
    end: tokio::time::Instant,
) -> HostRun {
    tokio::time::sleep_until(start).await;
    let channel = pki::endpoint(&url, &identity, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let id = format!("{host}:fleet:1");
    let (tx, out) = mpsc::channel(16);
    tx.send(AgentMessage {
        msg: Some(Msg::Hello(Hello {
            host: host.clone(),
            chain_ids: vec![id.clone()],
            agent_version: "fleet".into(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut rx = IngestClient::new(channel)
        .stream(ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    let mut chain = Chain::new(id.clone());
    let mut run = HostRun::default();
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let per_batch = rate / BATCHES_PER_SECOND;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / BATCHES_PER_SECOND as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = true;
    loop {
        tokio::select! {
            _ = tick.tick(), if sending => {
                if tokio::time::Instant::now() >= end {
                    sending = false;
                    if pending.is_empty() {
                        break;
                    }
                    continue;
                }
                let events: Vec<ChainedEvent> = (0..per_batch)
                    .map(|_| chain.record(event(&host, chain.next_seq())))
                    .collect();
                run.sent += events.len() as u64;
                pending.push_back((chain.next_seq() - 1, Instant::now()));
                let batch = EventBatch { chain_id: id.clone(), events };
                tx.send(AgentMessage { msg: Some(Msg::Batch(batch)) }).await.unwrap();
            }
            message = rx.message() => {
                let Some(message) = message.unwrap() else { break };
                if let Some(collector_message::Msg::Ack(ack)) = message.msg
                    && ack.chain_id == id
                {
                    while pending.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                        let (_, sent) = pending.pop_front().unwrap();
                        let latency = sent.elapsed();
                        if latency >= SLOW {
                            run.slow.push(second_of(sent, zero.into_std()));
                        }
                        run.latencies.push(latency);
                    }
                    run.acked = ack.seq + 1;
                    if !sending && pending.is_empty() {
                        break;
                    }
                }
            }
        }
    }
    run
}

/// What the collector process and the machine had done by a second of the timed run: the
/// counters a stall would move. Disk reads and major faults of the collector, or file pages
/// read again after the kernel reclaimed them, say it waited on the disk for its own pages;
/// CPU time that stops growing while the disk's writes go on says it waited on its syncs.
struct Sample {
    second: u64,
    rss_mib: f64,
    /// The collector's user and system time, in clock ticks.
    cpu_ticks: u64,
    major_faults: u64,
    read_bytes: u64,
    write_bytes: u64,
    /// The machine's file pages read back in after being reclaimed.
    refaults: u64,
    /// The store's WAL: frames written since it last restarted, and frames the checkpoints
    /// have copied into the database. A gap that grows says the checkpoint falls behind;
    /// past `WAL_BYTES_MAX` the writer checkpoints inside its commits.
    wal_frames: u32,
    wal_backfilled: u32,
    threads: Vec<Thread>,
}

/// The checkpoint thread's name as `/proc` shows it: the kernel keeps 15 bytes of a name.
const CHECKPOINT_THREAD: &str = "store-checkpoin";

/// One thread of the collector: which of them does the work, and which of them writes.
struct Thread {
    tid: u32,
    name: String,
    cpu_ticks: u64,
    write_bytes: u64,
}

/// What a `stat` file of a process or thread says: its name, its user and system time in
/// clock ticks, and its major faults.
fn parse_stat(stat: &str) -> (String, u64, u64) {
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // state is field 3, so field n is at n - 3.
    let open = stat.find('(').map_or(0, |i| i + 1);
    let close = stat.rfind(')').unwrap_or(stat.len());
    let after: Vec<u64> = stat[(close + 2).min(stat.len())..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |n: usize| after.get(n - 3).copied().unwrap_or(0);
    (
        stat[open..close.max(open)].to_owned(),
        at(14) + at(15),
        at(12),
    )
}

/// The number after `name` on its line of a `/proc` file such as `io` or `status`; zero
/// when the line is missing.
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The WAL's frames in use and frames copied back, from its index (the `-shm` file), laid
/// out as SQLite documents it (walformat.html): the header's `mxFrame` is the `u32` at byte
/// 16, and the checkpoint information's `nBackfill` the one at byte 96, in the machine's
/// byte order. A store not yet opened reads as zeros.
fn wal_state(store: &Path) -> (u32, u32) {
    let mut shm = store.as_os_str().to_owned();
    shm.push("-shm");
    let Ok(bytes) = std::fs::read(&shm) else {
        return (0, 0);
    };
    let at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()))
    };
    (at(16), at(96))
}

/// Each thread of process `pid`, as its `task` directory shows it now.
fn threads(pid: u32) -> Vec<Thread> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let (name, cpu_ticks, _) =
                parse_stat(&std::fs::read_to_string(task.path().join("stat")).ok()?);
            let io = std::fs::read_to_string(task.path().join("io")).ok()?;
            let write_bytes = field(&io, "write_bytes:");
            Some(Thread {
                tid,
                name,
                cpu_ticks,
                write_bytes,
            })
        })
        .collect()
}

/// A thread, and the CPU ticks and bytes written it added between two samples.
type ThreadDelta<'a> = (&'a Thread, u64, u64);

impl Sample {
    /// What the checkpoint thread, and the busiest other thread (under load the writer), did
    /// between `self` and `later`. A thread that started in between counts from zero.
    fn threads_to<'a>(
        &self,
        later: &'a Self,
    ) -> (Option<ThreadDelta<'a>>, Option<ThreadDelta<'a>>) {
        let moved = later.threads.iter().map(|t| {
            let before = self.threads.iter().find(|b| b.tid == t.tid);
            (
                t,
                t.cpu_ticks
                    .saturating_sub(before.map_or(0, |b| b.cpu_ticks)),
                t.write_bytes
                    .saturating_sub(before.map_or(0, |b| b.write_bytes)),
            )
        });
        let (checkpoint, others): (Vec<_>, Vec<_>) =
            moved.partition(|(t, ..)| t.name == CHECKPOINT_THREAD);
        let busiest = others.into_iter().max_by_key(|(_, ticks, _)| *ticks);
        (checkpoint.into_iter().next(), busiest)
    }

    fn take(pid: u32, store: &Path, second: u64) -> Self {
        let read = |path: String| std::fs::read_to_string(path).unwrap();
        let (_, cpu_ticks, major_faults) = parse_stat(&read(format!("/proc/{pid}/stat")));
        let io = read(format!("/proc/{pid}/io"));
        let (wal_frames, wal_backfilled) = wal_state(store);
        #[expect(clippy::cast_precision_loss, reason = "MiB for display")]
        let rss_mib = field(&read(format!("/proc/{pid}/status")), "VmRSS:") as f64 / 1024.0;
        Self {
            second,
            rss_mib,
            cpu_ticks,
            major_faults,
            read_bytes: field(&io, "read_bytes:"),
            write_bytes: field(&io, "write_bytes:"),
            refaults: field(&read("/proc/vmstat".into()), "workingset_refault_file "),
            wal_frames,
            wal_backfilled,
            threads: threads(pid),
        }
    }

    /// What happened between `self` and the `later` sample, as one line named for the
    /// second of the run that `self` begins.
    fn to(&self, later: &Self) -> String {
        #[expect(clippy::cast_precision_loss, reason = "rates for display")]
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let percent = |ticks: u64| ticks * 100 / ticks_per_second();
        let (checkpoint, busiest) = self.threads_to(later);
        let checkpoint = checkpoint.map_or("none".to_owned(), |(_, ticks, written)| {
            format!("{}%, {:.1} MB", percent(ticks), mb(written))
        });
        let busiest = busiest.map_or("none".to_owned(), |(t, ticks, written)| {
            format!(
                "{} {}: {}%, {:.1} MB",
                t.name,
                t.tid,
                percent(ticks),
                mb(written)
            )
        });
        format!(
            "second {}: collector CPU {}% of a core, major faults {}, read {:.1} MB, written {:.1} MB; \
             checkpoint thread {checkpoint}; busiest other thread {busiest}; \
             WAL at its end {} frames, {} copied back; machine refaults {}",
            self.second,
            percent(later.cpu_ticks.saturating_sub(self.cpu_ticks)),
            later.major_faults.saturating_sub(self.major_faults),
            mb(later.read_bytes.saturating_sub(self.read_bytes)),
            mb(later.write_bytes.saturating_sub(self.write_bytes)),
            later.wal_frames,
            later.wal_backfilled,
            later.refaults.saturating_sub(self.refaults),
        )
    }
}

/// Prints the collector's resident memory over the run, and what the run cost it: CPU time
/// an event (its writer's and checkpoint thread's shares), the WAL's most frames, and its
/// disk writes. `samples` has one for the start and one for each second of the run.
fn report_costs(samples: &[Sample], rss_idle: f64, offered_per_second: u64) {
    let series: Vec<&Sample> = samples.iter().step_by(10).collect();
    let listed: Vec<String> = series
        .iter()
        .map(|s| format!("{}s {:.0}", s.second, s.rss_mib))
        .collect();
    println!(
        "  collector RSS, MiB: idle {rss_idle:.0}; {}",
        listed.join(", ")
    );
    println!(
        "  collector RSS, last / first with every host connected: {:.2}",
        series[series.len() - 1].rss_mib / series[0].rss_mib
    );
    // The caches fill in the first minutes (docs/limits.md); a slope that lasts past them
    // is what a daemon running for months would pay.
    let (half, end) = (&samples[samples.len() / 2], &samples[samples.len() - 1]);
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let minutes = (end.second - half.second).max(1) as f64 / 60.0;
    println!(
        "  collector RSS over the second half of the run: {:.1} → {:.1} MiB ({:+.2} MiB a minute)",
        half.rss_mib,
        end.rss_mib,
        (end.rss_mib - half.rss_mib) / minutes
    );
    // What the timed run cost the collector, and the share of it of its busiest thread,
    // the writer, and of the checkpoint thread.
    let seconds = samples.len() as u64 - 1;
    let offered = offered_per_second * seconds;
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let (checkpoint, writer) = first.threads_to(last);
    let ticks = |delta: Option<ThreadDelta>| delta.map_or(0, |(_, ticks, _)| ticks);
    let (checkpoint, writer) = (ticks(checkpoint), ticks(writer));
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let per_event =
        |ticks: u64| ticks as f64 * 1e6 / ticks_per_second() as f64 / offered.max(1) as f64;
    println!(
        "  collector CPU over the timed run: {:.1} µs an event offered; its busiest thread (the writer) {:.1} µs, the checkpoint thread {:.1} µs",
        per_event(last.cpu_ticks - first.cpu_ticks),
        per_event(writer),
        per_event(checkpoint),
    );
    // Past `WAL_BYTES_MAX` (4,096 frames of 16 KiB) the writer checkpoints in its commits.
    let wal_most = samples.iter().map(|s| s.wal_frames).max().unwrap_or(0);
    let behind_most = samples
        .iter()
        .map(|s| s.wal_frames.saturating_sub(s.wal_backfilled))
        .max()
        .unwrap_or(0);
    println!(
        "  store WAL at the end of each second: at most {wal_most} frames, at most {behind_most} not yet copied back"
    );
    // Every commit writes each page it touched whole to the WAL, and the checkpoint writes
    // it again: what a store on this disk must sustain (docs/limits.md).
    let written = last.write_bytes - first.write_bytes;
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let (gb, per_second) = (written as f64 / 1e9, written as f64 / 1e6 / seconds as f64);
    println!(
        "  collector disk writes over the timed run: {gb:.1} GB, {per_second:.0} MB/s, {} B an event offered",
        written / offered.max(1)
    );
}

/// The unit of `Sample::cpu_ticks`.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100)
}

/// Raises this process's open-file limit to its hard limit: a connection is a file.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to a rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

/// Starts the collector process on a fresh store with `ca`'s certificates; returns it and
/// its URL.
fn start_collector(ca: &Ca, dir: &Path, validity: Validity) -> (std::process::Child, String) {
    let server = ca
        .issue_collector("fleet", &[], &[IpAddr::from([127, 0, 0, 1])], validity)
        .unwrap();
    let witness = ca.issue_witness("fleet", validity).unwrap();
    let serve_dir = dir.join("serve");
    std::fs::create_dir(&serve_dir).unwrap();
    for (name, pem) in SERVE_FILES.iter().zip([
        ca.cert_pem(),
        &server.cert_pem,
        &server.key_pem,
        &witness.cert_pem,
        &witness.key_pem,
    ]) {
        std::fs::write(serve_dir.join(name), pem).unwrap();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .arg(&serve_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("listening ").unwrap().to_owned();
    (child, format!("https://{addr}"))
}

fn client(ca: &Ca, issued: pki::Issued) -> ClientIdentity {
    ClientIdentity {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints what the hosts saw; returns the events sent and the spans of adjacent seconds
/// (first, last) in which the batches acked late were sent.
fn report(runs: &[HostRun], elapsed: Duration, offered: u64) -> (u64, Vec<(i64, i64)>) {
    let sent: u64 = runs.iter().map(|r| r.sent).sum();
    let acked: u64 = runs.iter().map(|r| r.acked).sum();
    let mut latencies: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    latencies.sort();
    let n = latencies.len();
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = acked as f64 / elapsed.as_secs_f64();
    println!(
        "  acked {acked} of {sent} events sent: {rate:.0} events/s (offered {offered} events/s)"
    );
    println!(
        "  ack latency of {n} batches: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(latencies[n / 2]),
        ms(latencies[n * 99 / 100]),
        ms(latencies[n - 1])
    );
    let mut slow: Vec<i64> = runs.iter().flat_map(|r| r.slow.iter().copied()).collect();
    slow.sort_unstable();
    // Adjacent seconds are one span: a stall shows as one span, a backlog as a long one.
    let mut spans: Vec<(i64, i64, usize)> = Vec::new();
    for &s in &slow {
        match spans.last_mut() {
            Some((_, last, count)) if s <= *last + 1 => (*last, *count) = (s, *count + 1),
            _ => spans.push((s, s, 1)),
        }
    }
    let named: Vec<String> = spans
        .iter()
        .map(|(first, last, count)| format!("{first}–{last} s ({count})"))
        .collect();
    println!(
        "  batches acked after {} s or more: {}{}",
        SLOW.as_secs(),
        slow.len(),
        if named.is_empty() {
            String::new()
        } else {
            format!(
                ", sent in these seconds of the run (batches): {}",
                named.join(", ")
            )
        }
    );
    (
        sent,
        spans
            .iter()
            .map(|&(first, last, _)| (first, last))
            .collect(),
    )
}

/// Verify over the whole store: every chain verifies and the fleet's hold `sent` records.
async fn verify(url: &str, admin: &ClientIdentity, sent: u64) {
    let channel = pki::endpoint(url, admin, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let verdicts = QueryClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .verify(VerifyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .chains;
    let fleet: Vec<_> = verdicts
        .iter()
        .filter(|v| v.host.starts_with("fleet-"))
        .collect();
    let stored: u64 = fleet.iter().map(|v| v.records).sum();
    let ok = verdicts.iter().all(|v| v.ok) && stored == sent;
    println!(
        "  verify: {} ({} chains, {stored} records stored of {sent} sent)",
        if ok { "ok, nothing lost" } else { "FAILED" },
        fleet.len()
    );
    assert!(ok, "{verdicts:?}");
}

#[tokio::main]
async fn main() {
    pki::install_crypto_provider();
    raise_open_files();
    let mut words = std::env::args().skip(1);
    if words.next().as_deref() == Some("--serve") {
        serve(Path::new(&words.next().expect("--serve DIR"))).await;
        return;
    }
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca")).unwrap();
    let validity = Validity::from_now(Duration::from_hours(2));
    let (mut child, url) = start_collector(&ca, dir.path(), validity);
    let pid = child.id();
    let store = dir.path().join("serve").join("store.db");
    println!(
        "collector fleet: {} hosts × {} events/s for {} s, each host on its own mutual-TLS \
         connection, {} batches a second; collector pid {pid}",
        args.hosts, args.rate, args.seconds, BATCHES_PER_SECOND
    );
    let rss_idle = Sample::take(pid, &store, 0).rss_mib;

    let began = Instant::now();
    let now = tokio::time::Instant::now();
    let zero = now + RAMP;
    let end = zero + Duration::from_secs(args.seconds);
    let hosts = u32::try_from(args.hosts).expect("hosts fit u32");
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..hosts {
        let host = host_name(i as usize);
        let identity = client(&ca, ca.issue_agent(&host, validity).unwrap());
        let start = now + RAMP / hosts * i;
        let url = url.clone();
        agents.spawn(agent(url, identity, host, args.rate, start, zero, end));
    }
    if let Some((at, seconds)) = args.stop {
        tokio::spawn(stop_collector(pid, zero, at, seconds));
    }
    tokio::time::sleep_until(zero).await;
    // A sample each second of the timed run, on ticks from `zero`, so that sample n is
    // taken at the end of second n - 1 of the run.
    let mut samples = vec![Sample::take(pid, &store, 0)];
    let mut each_second =
        tokio::time::interval_at(zero + Duration::from_secs(1), Duration::from_secs(1));
    for second in 1..=args.seconds {
        each_second.tick().await;
        samples.push(Sample::take(pid, &store, second));
    }
    let mut runs = Vec::with_capacity(args.hosts);
    while let Some(run) = agents.join_next().await {
        runs.push(run.unwrap());
    }
    // Over the whole run, the ramp included: the rate understates the steady one slightly.
    let (sent, spans) = report(&runs, began.elapsed(), u64::from(hosts) * args.rate);
    for (first, last) in spans {
        // The pairs of samples that bound the seconds from three before the span to three
        // after it: pair k covers second k of the run. The ramp's seconds have none.
        let to = usize::try_from(last + 5).unwrap_or(0).min(samples.len());
        let from = usize::try_from(first - 3).unwrap_or(0).min(to);
        if to - from < 2 {
            println!("  the batches sent in {first}–{last} s: before the timed run, not sampled");
            continue;
        }
        println!("  around the batches sent in {first}–{last} s, second by second:");
        for pair in samples[from..to].windows(2) {
            println!("    {}", pair[0].to(&pair[1]));
        }
    }
    if let Some((at, seconds)) = args.stop {
        let went_on = i64::try_from(at + seconds).expect("seconds fit i64");
        let last_late = runs.iter().flat_map(|r| r.slow.iter()).copied().max();
        match last_late.filter(|late| *late >= went_on) {
            Some(late) => println!(
                "  stopped in seconds {at}–{went_on}: batches sent up to second {late} were acked late, {} s after the collector went on",
                late + 1 - went_on
            ),
            None => println!(
                "  stopped in seconds {at}–{went_on}: no batch sent after the collector went on was acked late"
            ),
        }
    }
    report_costs(&samples, rss_idle, u64::from(hosts) * args.rate);
    let admin = client(
        &ca,
        ca.issue_operator("fleet", Role::Admin, validity).unwrap(),
    );
    verify(&url, &admin, sent).await;
    let _ = child.kill();
    let _ = child.wait();
}
