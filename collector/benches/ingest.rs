//! `cargo bench -p collector --bench ingest`: durable ingest and verify speed of the real
//! collector (gRPC over loopback TCP, `SQLite` with `synchronous=FULL`), against the raw chain
//! hash measured in the same run: the one cost neither can avoid.
//!
//! Two collectors run side by side on stores of their own: one over mutual TLS, as deployed
//! (docs/pki.md), and one in plaintext, the baseline for what TLS costs. Prints, for
//! exec-sized events: events/s acknowledged durable with one agent stream and with several,
//! over each transport, and the ratio TLS/plaintext; the time from dialling to the
//! collector's `Welcome` for a new agent connection over each; events/s a Verify call
//! recomputes (one thread walking the store, one checking columns), as a ratio to
//! `chain_hash` alone over the same records, and per second of CPU time the call took (a
//! core's rate); and events/s an operator's search pages
//! through the same store.
//!
//! With `RECORDER_BENCH_POSTGRES` set, every collector runs on a PostgreSQL database of its
//! own instead, and a last run ships several hosts at once through one collector, then
//! through two that share one database (docs/scaling.md); `--scaling` runs only that. With
//! `RECORDER_BENCH_FIGURES` set, the medians are also written to that file, one per line.
//!
//! With `--reads` it measures only this: hosts shipping at once through two collectors on
//! one store (`SQLite`, or PostgreSQL with `RECORDER_BENCH_POSTGRES`), with and without an
//! operator reading through each collector all the while, the collectors sharing one chain
//! (one witness certificate) or having a chain each; events/s of each, and the batches the
//! collectors refused, which the hosts sent again from the heads of a new `Welcome`.
//!
//! With `--export` it measures only this: a host log of 10,000,000 records with a signed
//! and cosigned checkpoint every 1,000,000, whose last 10,000 are one login session; the
//! size of that session's evidence bundle (records, inclusion proofs, checkpoints) and the
//! time to export it, and to verify it offline; then `recorder verify` and `recorder verify
//! --local` of the whole store.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use pki::{Ca, ClientIdentity, Role, Validity};
use prost::Message as _;
use proto::{
    chain::{GENESIS, chain_hash},
    v1::{
        AgentMessage, ChainStart, ChainedEvent, Checkpoint, CollectorMessage, Event, EventBatch,
        Exec, ExportRequest, Hello, HostsRequest, Identity, Process, SearchRequest, SessionRoot,
        SessionsRequest, VerifyRequest, agent_message::Msg, collector_message, event::Body,
        identity::Kind, ingest_client::IngestClient, query_client::QueryClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::transport::{Channel, Endpoint};

const HOST: &str = "bench-host";
/// Records per chain in the ingest runs.
const EVENTS: u64 = 200_000;
/// Records per batch, as the agent sends about 1 MiB at a time.
const BATCH: usize = 2_000;
/// Agent streams in the concurrent run.
const STREAMS: usize = 4;
/// Ingest runs over each transport, alternating.
const ROUNDS: usize = 4;
/// New agent connections timed per transport.
const CONNECTIONS: usize = 200;

/// An exec event as the agent makes one for a command in a login session.
fn exec_event(n: u64) -> Event {
    session_exec(n, 7)
}

/// An exec event of audit session `session` (its root started `session` seconds in).
fn session_exec(n: u64, session: u32) -> Event {
    Event {
        time_unix_nano: 1_790_000_000_000_000_000 + n * 1_000,
        process: Some(Process {
            pid: 40_000 + (n % 1000) as u32,
            tgid: 40_000 + (n % 1000) as u32,
            ppid: 3999,
            uid: 1000,
            euid: 0,
            gid: 1000,
            loginuid: Some(1000),
            sessionid: Some(session),
            cgroup_id: 4242,
            tty: "136:3".into(),
            comm: "systemctl".into(),
            elevated: true,
        }),
        identity: Some(Identity {
            kind: Kind::Human.into(),
            name: "alice".into(),
            ..Identity::default()
        }),
        session_root: Some(SessionRoot {
            pid: 3999,
            start_unix_nano: 1_789_999_000_000_000_000 + u64::from(session) * 1_000_000_000,
        }),
        body: Some(Body::Exec(Exec {
            filename: "/usr/bin/systemctl".into(),
            argv: vec![
                b"systemctl".to_vec().into(),
                b"restart".to_vec().into(),
                format!("nginx-{n}.service").into_bytes().into(),
            ],
            ..Exec::default()
        })),
    }
}

/// The host a chain id names first (`HOST:BOOT_ID:START`).
fn host_of(id: &str) -> &str {
    id.split(':').next().unwrap_or_default()
}

/// A chain as an agent makes it: `ChainStart`, then exec events.
fn chain(id: &str, len: u64) -> Vec<ChainedEvent> {
    let mut prev = GENESIS;
    (0..len)
        .map(|seq| {
            let event = if seq == 0 {
                Event {
                    time_unix_nano: 1_790_000_000_000_000_000,
                    body: Some(Body::ChainStart(ChainStart {
                        host: host_of(id).into(),
                        boot_id: "bench".into(),
                        ..ChainStart::default()
                    })),
                    ..Event::default()
                }
            } else {
                exec_event(seq)
            }
            .encode_to_vec();
            prev = chain_hash(id, seq, &prev, &event);
            ChainedEvent {
                chain_id: String::new(),
                seq,
                event: event.into(),
                hash: prev.to_vec(),
            }
        })
        .collect()
}

/// Recomputes every hash of `records`: the baseline.
fn hash_only(id: &str, records: &[ChainedEvent]) -> Duration {
    let start = Instant::now();
    let mut prev = GENESIS;
    for r in records {
        prev = chain_hash(id, r.seq, &prev, &r.event);
    }
    assert_eq!(prev[..], records.last().unwrap().hash[..]);
    start.elapsed()
}

/// The store of the collector `name`: an `SQLite` file in `dir`; or, with
/// `RECORDER_BENCH_POSTGRES` (a `postgresql://` URL with `{db}` where the database's name
/// goes), a database of its own on that server, made afresh.
fn store_url(name: &str, dir: &std::path::Path) -> String {
    let Ok(template) = std::env::var("RECORDER_BENCH_POSTGRES") else {
        return format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    };
    let db = database(name);
    postgres_run(
        &template.replace("{db}", "postgres"),
        &[
            format!("DROP DATABASE IF EXISTS {db}"),
            format!("CREATE DATABASE {db}"),
        ],
    );
    template.replace("{db}", &db)
}

/// With `RECORDER_BENCH_POSTGRES`, analyzes the store of the collector `name`, as
/// autovacuum soon does to a store that runs: the reads timed next are planned on the
/// store's statistics, not on none, which a store filled a moment ago would have
/// (docs/scaling.md, "Reads").
fn analyze(name: &str) {
    if let Ok(template) = std::env::var("RECORDER_BENCH_POSTGRES") {
        postgres_run(
            &template.replace("{db}", &database(name)),
            &["ANALYZE".to_owned()],
        );
    }
}

/// The PostgreSQL database of the collector `name`.
fn database(name: &str) -> String {
    format!("bench_{}", name.replace('-', "_"))
}

/// Runs `statements` on the PostgreSQL database at `url`, each on its own (`DROP DATABASE`
/// refuses to run in a transaction with others).
fn postgres_run(url: &str, statements: &[String]) {
    let (url, statements) = (url.to_owned(), statements.to_vec());
    // The driver runs a runtime of its own, which cannot start on one of the bench's.
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for sql in &statements {
            client.batch_execute(sql).unwrap();
        }
    })
    .join()
    .unwrap();
}

/// One collector under test, and how a client reaches it.
struct Target {
    name: String,
    url: String,
    /// The agent's and the operator's identities; none in plaintext.
    agent: Option<ClientIdentity>,
    admin: Option<ClientIdentity>,
    /// Agent identities of other hosts, by host.
    hosts: HashMap<String, ClientIdentity>,
}

impl Target {
    /// A collector on a store of its own in `dir`: mutual TLS under `tls`, else plaintext.
    async fn start(kind: &str, round: usize, dir: &std::path::Path, tls: Option<&Ca>) -> Self {
        let name = format!("{kind}-{round}");
        let url = store_url(&name, dir);
        Self::on(name, &url, tls.map(|ca| (ca, "bench", &[][..]))).await
    }

    /// A collector named `name` on the store at `store_url`, which another may share; under
    /// TLS, with its witness named as given (collectors of one name share a chain) and an
    /// agent identity for each host given too.
    async fn on(name: String, store_url: &str, tls: Option<(&Ca, &str, &[String])>) -> Self {
        let store = collector::open_store(store_url, &collector::StoreTls::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let validity = Validity::from_now(Duration::from_hours(1));
        let mut hosts = HashMap::new();
        let (transport, url, agent, admin) = match tls {
            Some((ca, witness, others)) => {
                let server = ca
                    .issue_collector("bench", &[], &[IpAddr::from([127, 0, 0, 1])], validity)
                    .unwrap();
                let witness = ca.issue_witness(witness, validity).unwrap();
                let client = |issued: pki::Issued| ClientIdentity {
                    ca_pem: ca.cert_pem().to_owned(),
                    cert_pem: issued.cert_pem,
                    key_pem: issued.key_pem,
                };
                for host in others {
                    hosts.insert(
                        host.clone(),
                        client(ca.issue_agent(host, validity).unwrap()),
                    );
                }
                (
                    collector::Transport::Tls {
                        ca_pem: ca.cert_pem().to_owned(),
                        cert_pem: server.cert_pem,
                        key_pem: server.key_pem,
                        ca: None,
                        witness: std::sync::Arc::new(
                            collector::witness::Witness::from_pem(
                                ca.cert_pem(),
                                &witness.cert_pem,
                                &witness.key_pem,
                            )
                            .unwrap(),
                        ),
                    },
                    format!("https://{addr}"),
                    Some(client(ca.issue_agent(HOST, validity).unwrap())),
                    Some(client(
                        ca.issue_operator("bench", Role::Admin, validity).unwrap(),
                    )),
                )
            }
            None => (
                collector::Transport::InsecurePlaintext,
                format!("http://{addr}"),
                None,
                None,
            ),
        };
        tokio::spawn(collector::serve(
            listener,
            store,
            collector::policy::default_policy(),
            transport,
            collector::Retention::default(),
            std::time::Duration::from_secs(30),
            // `connections` dials CONNECTIONS times in a row from one address, faster than
            // the server sees each earlier one close: the per-address limit (100) would
            // refuse the dials past it, which is what it is for, but not what is timed.
            collector::Limits {
                connections: pki::ConnectionLimits {
                    per_peer: collector::Limits::DEFAULT.connections.total,
                    ..collector::Limits::DEFAULT.connections
                },
                ..collector::Limits::DEFAULT
            },
        ));
        Self {
            name,
            url,
            agent,
            admin,
            hosts,
        }
    }

    fn endpoint(&self, identity: Option<&ClientIdentity>) -> Endpoint {
        match identity {
            Some(identity) => pki::endpoint(&self.url, identity, None).unwrap(),
            None => Endpoint::from_shared(self.url.clone()).unwrap(),
        }
    }

    /// A new connection as the agent.
    async fn agent_channel(&self) -> Channel {
        self.endpoint(self.agent.as_ref()).connect().await.unwrap()
    }

    /// A new connection as the agent of `host`.
    async fn host_channel(&self, host: &str) -> Channel {
        let identity = self.hosts.get(host).or(self.agent.as_ref());
        self.endpoint(identity).connect().await.unwrap()
    }

    /// A new connection as the operator.
    async fn admin_channel(&self) -> Channel {
        self.endpoint(self.admin.as_ref()).connect().await.unwrap()
    }
}

/// Opens an Ingest stream on `channel` as the agent of the host chain `id` names, saying
/// Hello with that chain.
async fn open(
    channel: Channel,
    id: &str,
) -> (
    mpsc::Sender<AgentMessage>,
    tonic::Streaming<proto::v1::CollectorMessage>,
) {
    let (tx, out) = mpsc::channel(32);
    tx.send(AgentMessage {
        msg: Some(Msg::Hello(Hello {
            host: host_of(id).into(),
            chain_ids: vec![id.to_owned()],
            agent_version: "bench".into(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut client = IngestClient::new(channel).max_encoding_message_size(usize::MAX);
    let rx = client
        .stream(ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    (tx, rx)
}

/// Ships `records` over one Ingest stream and waits for the ack of the last one.
async fn ship(channel: Channel, id: String, records: Vec<ChainedEvent>) -> Duration {
    let last = records.last().unwrap().seq;
    let start = Instant::now();
    let (tx, mut rx) = open(channel, &id).await;
    let sender = tokio::spawn(async move {
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let events = records.by_ref().take(BATCH).collect();
            let batch = EventBatch {
                chain_id: id.clone(),
                events,
            };
            if tx
                .send(AgentMessage {
                    msg: Some(Msg::Batch(batch)),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    while let Some(message) = rx.message().await.unwrap() {
        if let Some(collector_message::Msg::Ack(ack)) = message.msg
            && ack.seq == last
        {
            break;
        }
    }
    let elapsed = start.elapsed();
    sender.await.unwrap();
    elapsed
}

/// Dials, says `Hello` as the host and waits for `Welcome`, `CONNECTIONS` times: what a
/// new agent connection costs before its first batch. Sorted.
async fn connections(target: &Target) -> Vec<Duration> {
    let mut times = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let start = Instant::now();
        let mut client = IngestClient::new(target.agent_channel().await);
        let hello = AgentMessage {
            msg: Some(Msg::Hello(Hello {
                host: HOST.into(),
                chain_ids: Vec::new(),
                agent_version: "bench".into(),
                ..Hello::default()
            })),
        };
        let mut rx = client
            .stream(tokio_stream::iter([hello]).chain(tokio_stream::pending()))
            .await
            .unwrap()
            .into_inner();
        let first = rx.message().await.unwrap().expect("a reply to Hello");
        assert!(
            matches!(first.msg, Some(collector_message::Msg::Welcome(_))),
            "{first:?}"
        );
        times.push(start.elapsed());
    }
    times.sort_unstable();
    times
}

/// Ships one chain, then `STREAMS` at once, to `target`: events/s of each.
async fn ingest(target: &Target) -> (f64, f64) {
    let id = format!("{HOST}:{}-single:0", target.name);
    let single = chain(&id, EVENTS);
    let one = ship(target.agent_channel().await, id, single).await;
    let chains: Vec<(String, Vec<ChainedEvent>)> = (0..STREAMS)
        .map(|i| {
            let id = format!("{HOST}:{}-multi{i}:0", target.name);
            let records = chain(&id, EVENTS);
            (id, records)
        })
        .collect();
    let mut channels = Vec::new();
    for _ in 0..STREAMS {
        channels.push(target.agent_channel().await);
    }
    let start = Instant::now();
    let streams: Vec<_> = chains
        .into_iter()
        .zip(channels)
        .map(|((id, records), channel)| tokio::spawn(ship(channel, id, records)))
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    let many = start.elapsed();
    (per_sec(EVENTS, one), per_sec(EVENTS * STREAMS as u64, many))
}

#[expect(clippy::cast_precision_loss, reason = "rates for display")]
fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Median and range of a few runs' rates.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(rates: impl Iterator<Item = f64>) -> Self {
        let mut rates: Vec<f64> = rates.collect();
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        let median = if rates.len().is_multiple_of(2) {
            f64::midpoint(rates[mid - 1], rates[mid])
        } else {
            rates[mid]
        };
        Self {
            median,
            min: rates[0],
            max: rates[rates.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} [{:.0}–{:.0}]", self.median, self.min, self.max)
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca")).unwrap();
    if std::env::args().any(|a| a == "--export") {
        export(&ca, dir.path()).await;
        return;
    }
    if std::env::args().any(|a| a == "--scaling") {
        scaling(dir.path()).await;
        return;
    }
    if std::env::args().any(|a| a == "--reads") {
        reads(&ca, dir.path()).await;
        return;
    }

    let sample = chain(&format!("{HOST}:sample:0"), EVENTS);
    let event_bytes: usize = sample.iter().map(|r| r.event.len()).sum();
    let hashing = hash_only(&format!("{HOST}:sample:0"), &sample);
    drop(sample);
    let hash_rate = per_sec(EVENTS, hashing);
    println!(
        "collector ingest: {EVENTS} exec-sized events per chain ({} B each on average), batches of {BATCH}",
        event_bytes / EVENTS as usize
    );
    println!("  chain_hash alone (baseline): {hash_rate:>10.0} events/s on one core");

    // Pairs in alternating order (plaintext first, then TLS first), each run on a new store
    // (a store's size slows its inserts): drift in this machine's speed lands on both sides.
    let (mut plain_runs, mut tls_runs) = (Vec::new(), Vec::new());
    let (mut plain, mut tls) = (None, None);
    for round in 0..ROUNDS {
        for tls_now in [round % 2 == 1, round % 2 == 0] {
            let name = if tls_now { "mtls" } else { "plaintext" };
            let target = Target::start(name, round, dir.path(), tls_now.then_some(&ca)).await;
            let rates = ingest(&target).await;
            if tls_now {
                tls_runs.push(rates);
                tls = Some(target);
            } else {
                plain_runs.push(rates);
                plain = Some(target);
            }
        }
    }
    let (plain, tls) = (plain.expect("a plaintext run"), tls.expect("a TLS run"));
    for (what, pick) in [
        (
            "1 stream:".to_owned(),
            (|r: &(f64, f64)| r.0) as fn(&(f64, f64)) -> f64,
        ),
        (format!("{STREAMS} streams:"), |r: &(f64, f64)| r.1),
    ] {
        let p = Spread::of(plain_runs.iter().map(pick));
        let t = Spread::of(tls_runs.iter().map(pick));
        let streams = what.trim_end_matches(':');
        figure(&format!("ingest, {streams}, plaintext"), p.median);
        figure(&format!("ingest, {streams}, mutual TLS"), t.median);
        println!(
            "  durable ingest, {what:<11} plaintext {p} events/s ({:.1}× the baseline's time); mutual TLS {t} events/s: TLS/plaintext {:.3}",
            hash_rate / p.median,
            t.median / p.median,
        );
    }

    let plain_dial = connections(&plain).await;
    let tls_dial = connections(&tls).await;
    let median = |t: &[Duration]| t[t.len() / 2];
    let p99 = |t: &[Duration]| t[t.len() * 99 / 100];
    println!(
        "  new agent connection, dial to Welcome ({CONNECTIONS} each): plaintext median {:.0} µs (p99 {:.0}), mutual TLS median {:.0} µs (p99 {:.0}): the handshake adds {:.0} µs",
        micros(median(&plain_dial)),
        micros(p99(&plain_dial)),
        micros(median(&tls_dial)),
        micros(p99(&tls_dial)),
        micros(median(&tls_dial)) - micros(median(&plain_dial)),
    );

    verify(&tls, hash_rate).await;
    search(&tls).await;
    if std::env::var_os("RECORDER_BENCH_POSTGRES").is_some() {
        scaling(dir.path()).await;
    }
    witness_ops(&ca);
}

/// Verify calls timed, one after another on the same store: one call's rate moves with the
/// machine by more than most changes to verify would.
const VERIFY_ROUNDS: usize = 5;

/// Verify of the whole store of `target` (its records hashed at `hash_rate` by `chain_hash`
/// alone), timed `VERIFY_ROUNDS` times.
async fn verify(target: &Target, hash_rate: f64) {
    analyze(&target.name);
    let mut query = QueryClient::new(target.admin_channel().await);
    let (mut walls, mut cpus, mut chains) = (Vec::new(), Vec::new(), 0);
    for _ in 0..VERIFY_ROUNDS {
        let (start, cpu_start) = (Instant::now(), process_cpu());
        let verdicts = query
            .verify(VerifyRequest::default())
            .await
            .unwrap()
            .into_inner()
            .chains;
        let (verifying, cpu) = (start.elapsed(), process_cpu().saturating_sub(cpu_start));
        let host_chains: Vec<_> = verdicts.iter().filter(|v| v.host == HOST).collect();
        let checked: u64 = host_chains.iter().map(|v| v.records).sum();
        assert!(
            verdicts.iter().all(|v| v.ok),
            "every chain verifies: {verdicts:?}"
        );
        assert_eq!(
            checked,
            EVENTS + EVENTS * STREAMS as u64,
            "verify read every record"
        );
        walls.push(per_sec(checked, verifying));
        cpus.push(per_sec(checked, cpu));
        chains = host_chains.len();
    }
    let wall = Spread::of(walls.into_iter());
    let cpu = Spread::of(cpus.into_iter());
    figure("verify", wall.median);
    figure("verify a CPU-second", cpu.median);
    println!(
        "  verify, a walk and a column-check thread, {VERIFY_ROUNDS} calls: {wall} events/s  ({:.1}× the baseline's time at the median; {chains} chains, with the host log's Merkle tree and every record's columns)",
        hash_rate / wall.median,
    );
    // The target is a core's rate: the CPU time of this process (the collectors run in
    // it, idle but for the Verify) over the call, which PostgreSQL's own work is not part of.
    println!("  verify's CPU time: {cpu} events a CPU-second (one core's rate)");
}

/// Adds `name`'s median rate to the file `RECORDER_BENCH_FIGURES` names, when set, as a
/// `name<TAB>rate` line: `cargo xtask bench collector` sets it to compare the runs of the
/// two stores.
fn figure(name: &str, rate: f64) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("RECORDER_BENCH_FIGURES") else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the figures file");
    writeln!(file, "{name}\t{rate:.0}").expect("write the figures file");
}

/// The user and system time this process has used, all its threads together.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, which lives for the call.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1_000,
        )
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Pages of a search a `search` reads and times.
const SEARCH_PAGES: usize = 20;

/// A search of the whole store as an operator pages through it: the first `SEARCH_PAGES`
/// pages of 10,000 events, each page asked for with the last one's token.
async fn search(target: &Target) {
    let mut query = QueryClient::new(target.admin_channel().await);
    let (mut events, mut page_token) = (0, String::new());
    let start = Instant::now();
    for _ in 0..SEARCH_PAGES {
        let page = query
            .search(SearchRequest {
                limit: 10_000,
                page_token,
                ..SearchRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        events += page.events.len();
        page_token = page.next_page_token;
        assert!(!page_token.is_empty(), "the store holds more pages");
    }
    let took = start.elapsed();
    println!(
        "  search, {SEARCH_PAGES} pages of the whole store: {events} events in {:.2} s, {:.0} events/s",
        took.as_secs_f64(),
        per_sec(events as u64, took)
    );
}

/// Hosts shipping at once in the scaling runs, each its own chain and stream.
const SCALE_HOSTS: usize = 4;

/// With PostgreSQL (docs/scaling.md): durable ingest of `SCALE_HOSTS` hosts shipping at once
/// through one collector, then through two on one database (half the hosts each), in
/// alternating rounds on fresh databases, in plaintext; each store is verified after. Prints
/// events/s of each and the ratio two/one of the medians.
async fn scaling(dir: &std::path::Path) {
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for collectors in [1 + round % 2, 2 - round % 2] {
            let name = format!("scale{collectors}-{round}");
            let url = store_url(&name, dir);
            let mut targets = Vec::new();
            for c in 0..collectors {
                targets.push(Target::on(format!("{name}-{c}"), &url, None).await);
            }
            let mut streams = Vec::new();
            for h in 0..SCALE_HOSTS {
                let id = format!("{HOST}-{h}:{name}:0");
                let records = chain(&id, EVENTS);
                let channel = targets[h % collectors].agent_channel().await;
                streams.push((channel, id, records));
            }
            let start = Instant::now();
            let streams: Vec<_> = streams
                .into_iter()
                .map(|(channel, id, records)| tokio::spawn(ship(channel, id, records)))
                .collect();
            for s in streams {
                s.await.unwrap();
            }
            let rate = per_sec(EVENTS * SCALE_HOSTS as u64, start.elapsed());
            if collectors == 1 { &mut one } else { &mut two }.push(rate);
            stored_once(&targets[0], EVENTS * SCALE_HOSTS as u64).await;
        }
    }
    let (one, two) = (Spread::of(one.into_iter()), Spread::of(two.into_iter()));
    println!(
        "  {SCALE_HOSTS} hosts at once on one PostgreSQL database (plaintext): one collector {one} events/s, two collectors {two} events/s: two/one {:.2}",
        two.median / one.median
    );
}

/// What the collectors of `target`'s store stored is one unforked store: every chain whole
/// and verified, and `records` hosts' records in it, each once.
async fn stored_once(target: &Target, records: u64) {
    let verdicts = QueryClient::new(target.admin_channel().await)
        .verify(VerifyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .chains;
    assert!(verdicts.iter().all(|v| v.ok), "{verdicts:?}");
    let stored: u64 = verdicts
        .iter()
        .filter(|v| v.host != "collector")
        .map(|v| v.records)
        .sum();
    assert_eq!(stored, records, "every record stored once");
}

/// Time between two reads of the operator reading through each collector in `reads`.
const READ_EVERY: Duration = Duration::from_millis(10);

/// Two collectors on one store over mutual TLS, `SCALE_HOSTS` hosts shipping at once (half
/// through each), in alternating rounds without and with an operator reading through each
/// collector every `READ_EVERY`, each read chained. The collectors either share a witness
/// certificate, and so one chain, where each keeps finding the head moved by the other, or
/// have one each, and so a chain each. Prints, for each, events/s without and with reads,
/// the ratio, and the batches refused on the way (each sent again).
async fn reads(ca: &Ca, dir: &std::path::Path) {
    let hosts: Vec<String> = (0..SCALE_HOSTS).map(|h| format!("{HOST}-{h}")).collect();
    // Without and with reads, for one shared chain and a chain each.
    let mut rates = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut refused = [[0, 0], [0, 0]];
    let mut done = [[0, 0], [0, 0]];
    for round in 0..ROUNDS / 2 {
        for own in [round % 2 == 1, round % 2 == 0] {
            for reading in [round % 2 == 0, round % 2 == 1] {
                let name = format!("reads{}{}-{round}", u8::from(own), u8::from(reading));
                let url = store_url(&name, dir);
                let mut targets = Vec::new();
                for c in 0..2 {
                    let witness = if own { format!("c{c}") } else { "bench".into() };
                    let tls = (ca, witness.as_str(), hosts.as_slice());
                    let target = Target::on(format!("{name}-{c}"), &url, Some(tls)).await;
                    targets.push(std::sync::Arc::new(target));
                }
                let (rate, sent_again, [answered, not]) =
                    read_round(&targets, &name, reading).await;
                let o = usize::from(own);
                rates[o][usize::from(reading)].push(rate);
                refused[o][usize::from(reading)] += sent_again;
                done[o][0] += answered;
                done[o][1] += not;
                stored_once(&targets[0], EVENTS * SCALE_HOSTS as u64).await;
            }
        }
    }
    for (o, what) in ["one chain for both", "a chain each"].iter().enumerate() {
        let [quiet, read] = std::mem::take(&mut rates[o]).map(|r| Spread::of(r.into_iter()));
        println!(
            "  two collectors on one store, {what}, {SCALE_HOSTS} hosts at once (mutual TLS): {quiet} events/s with no reads ({} batches refused); {read} events/s with {} reads through both, {} of them refused ({} batches refused): with/without {:.2}",
            refused[o][0],
            done[o][0] + done[o][1],
            done[o][1],
            refused[o][1],
            read.median / quiet.median
        );
    }
}

/// One round of `reads` on `targets`: ships every host's chain, half through each, with an
/// operator reading through each all the while when `reading`. Returns events/s, batches
/// sent again, and reads answered and refused.
async fn read_round(
    targets: &[std::sync::Arc<Target>],
    name: &str,
    reading: bool,
) -> (f64, u64, [u64; 2]) {
    let stop = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for target in targets.iter().filter(|_| reading) {
        let (channel, mut stop) = (target.admin_channel().await, stop.1.clone());
        readers.push(tokio::spawn(async move {
            let mut query = QueryClient::new(channel);
            // Reads answered, and refused (a read that cannot be recorded is).
            let mut reads = [0u64; 2];
            while !*stop.borrow_and_update() {
                let answered = query.hosts(HostsRequest::default()).await.is_ok();
                reads[usize::from(!answered)] += 1;
                let _ = tokio::time::timeout(READ_EVERY, stop.changed()).await;
            }
            reads
        }));
    }
    let start = Instant::now();
    let streams: Vec<_> = (0..SCALE_HOSTS)
        .map(|h| {
            let id = format!("{HOST}-{h}:{name}:0");
            let target = std::sync::Arc::clone(&targets[h % 2]);
            tokio::spawn(async move { ship_again(&target, &id, chain(&id, EVENTS)).await })
        })
        .collect();
    let mut sent_again = 0;
    for s in streams {
        sent_again += s.await.unwrap();
    }
    let rate = per_sec(EVENTS * SCALE_HOSTS as u64, start.elapsed());
    let _ = stop.0.send(true);
    let mut done = [0; 2];
    for r in readers {
        let [answered, not] = r.await.unwrap();
        done[0] += answered;
        done[1] += not;
    }
    (rate, sent_again, done)
}

/// Ships `records` of chain `id` through `target` as an agent does: when the collector
/// refuses a batch (ending the stream), it dials again and resends from the head the new
/// `Welcome` gives. Returns how many times it had to.
async fn ship_again(target: &Target, id: &str, records: Vec<ChainedEvent>) -> u64 {
    let last = records.last().unwrap().seq;
    let mut refused = 0;
    loop {
        let (tx, mut rx) = open(target.host_channel(host_of(id)).await, id).await;
        let from = match rx.message().await {
            Ok(Some(CollectorMessage {
                msg: Some(collector_message::Msg::Welcome(welcome)),
            })) => welcome.heads.first().map_or(0, |h| h.next_seq),
            other => panic!("expected Welcome, got {other:?}"),
        };
        let rest: Vec<ChainedEvent> = records.iter().filter(|r| r.seq >= from).cloned().collect();
        if rest.is_empty() {
            return refused;
        }
        let chain_id = id.to_owned();
        let sender = tokio::spawn(async move {
            for events in rest.chunks(BATCH) {
                let batch = EventBatch {
                    chain_id: chain_id.clone(),
                    events: events.to_vec(),
                };
                let message = AgentMessage {
                    msg: Some(Msg::Batch(batch)),
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        loop {
            match rx.message().await {
                Ok(Some(CollectorMessage {
                    msg: Some(collector_message::Msg::Ack(ack)),
                })) if ack.seq == last => {
                    sender.abort();
                    return refused;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
        sender.abort();
    }
}

/// Checkpoints a witness checks (the host's signature) and cosigns per second on one core,
/// as the collector does for each host at most once a second.
fn witness_ops(ca: &Ca) {
    const OPS: u64 = 2_000;
    let validity = Validity::from_now(Duration::from_hours(1));
    let agent = ca.issue_agent(HOST, validity).unwrap();
    let issued = ca.issue_witness("bench", validity).unwrap();
    let witness =
        collector::witness::Witness::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
            .unwrap();
    let cert = pki::CertInfo::from_pem(&agent.cert_pem).unwrap();
    let seed = pki::ed25519_seed_from_pkcs8_pem(&agent.key_pem).unwrap();
    let host_key = tlog::Signer::from_seed(&witness.origin(HOST), seed).unwrap();
    let notes: Vec<String> = (1..=OPS)
        .map(|size| {
            let body = tlog::Checkpoint::new(host_key.name(), size, [3; 32]).unwrap();
            tlog::sign_checkpoint(&host_key, &body).unwrap().to_text()
        })
        .collect();
    let start = Instant::now();
    for note in &notes {
        let mut signed = witness.open(HOST, &cert, note).unwrap();
        tlog::add_cosignature(&mut signed.note, &witness.cosigner, &signed.checkpoint, 1).unwrap();
        std::hint::black_box(signed.note.to_text());
    }
    let rate = per_sec(OPS, start.elapsed());
    println!(
        "  checkpoint verify + cosign, one core: {rate:>8.0} ops/s: 10,000 hosts at one checkpoint a second each need {:.0}% of a core",
        1e6 / rate
    );
}

/// Records in the log of the export run.
const LOG_RECORDS: u64 = 10_000_000;
/// Records of the exported session: the log's last.
const SESSION_RECORDS: u64 = 10_000;
/// Records between two checkpoints of the export run.
const CHECKPOINT_EVERY: u64 = 1_000_000;

/// A session's bundle from a large log: its size, and the time to export and to verify it.
async fn export(ca: &Ca, dir: &std::path::Path) {
    let target = Target::start("export", 0, dir, Some(ca)).await;
    let agent = target.agent.as_ref().expect("TLS");
    let validity = Validity::from_now(Duration::from_hours(1));
    let issued = ca.issue_witness("bench", validity).unwrap();
    let witness =
        collector::witness::Witness::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
            .unwrap();
    let seed = pki::ed25519_seed_from_pkcs8_pem(&agent.key_pem).unwrap();
    let host_key = tlog::Signer::from_seed(&witness.origin(HOST), seed).unwrap();
    let start = Instant::now();
    ship_log(&target, &host_key).await;
    println!(
        "collector export: a host log of {LOG_RECORDS} records shipped, checkpointed every {CHECKPOINT_EVERY} and cosigned in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let mut query =
        QueryClient::new(target.admin_channel().await).max_decoding_message_size(usize::MAX);
    let sessions = query
        .sessions(SessionsRequest {
            host: HOST.into(),
            ..SessionsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let session = sessions
        .iter()
        .find(|s| s.sessionid == 8)
        .expect("the exported session");
    for run in 1..=2 {
        let start = Instant::now();
        let mut chunks = query
            .export(ExportRequest {
                session: session.key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut bundle = Vec::new();
        while let Some(chunk) = chunks.message().await.unwrap() {
            bundle.extend_from_slice(&chunk.data);
        }
        let exporting = start.elapsed();
        let start = Instant::now();
        let checked = bundle::verify(&bundle, ca.cert_pem()).expect("the bundle verifies");
        let verifying = start.elapsed();
        let parsed = bundle::Bundle::from_json(&bundle).expect("a bundle");
        let records = parsed.records.len();
        let record_bytes: usize = parsed.records.iter().map(|r| r.event.len()).sum();
        let proof_bytes: usize = parsed.records.iter().map(|r| r.proof.len()).sum();
        println!(
            "  run {run}: the session's bundle, {records} records ({} in the session): {:.2} MB, of which {:.2} MB record bytes (raw, base64 in the file) and {:.2} MB proofs (tlog-proof text, {} B a record); export {:.2} s, offline verify {:.2} s ({checked:?})",
            session.events,
            mb(bundle.len()),
            mb(record_bytes),
            mb(proof_bytes),
            proof_bytes / records.max(1),
            exporting.as_secs_f64(),
            verifying.as_secs_f64(),
        );
    }
    verify_runs(&target, dir).await;
}

/// `recorder verify` and `recorder verify --local` of the whole store, two rounds in
/// alternating order: the release binary xtask names, run as an operator would.
async fn verify_runs(target: &Target, dir: &std::path::Path) {
    let recorder = std::env::var_os("RECORDER_OPERATOR_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/recorder"),
        std::path::PathBuf::from,
    );
    if !recorder.exists() {
        println!(
            "  (no release `recorder` at {}: verify not timed)",
            recorder.display()
        );
        return;
    }
    let admin = target.admin.as_ref().expect("TLS");
    let pki = dir.join("operator");
    std::fs::create_dir_all(&pki).unwrap();
    for (name, pem) in [
        ("ca.pem", &admin.ca_pem),
        ("operator.pem", &admin.cert_pem),
        ("operator.key", &admin.key_pem),
    ] {
        std::fs::write(pki.join(name), pem).unwrap();
    }
    for round in 0..2 {
        for local in [round % 2 == 1, round % 2 == 0] {
            let mut command = std::process::Command::new(&recorder);
            command
                .args(["--collector", &target.url, "--pki-dir"])
                .arg(&pki)
                .arg("verify")
                .args(local.then_some("--local"));
            let start = Instant::now();
            let out = tokio::task::spawn_blocking(move || command.output())
                .await
                .unwrap()
                .unwrap();
            let took = start.elapsed();
            assert!(
                out.status.success(),
                "verify failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            println!(
                "  round {}: recorder verify{}: {:.1} s, {:.0} records/s",
                round + 1,
                if local { " --local" } else { "" },
                took.as_secs_f64(),
                per_sec(LOG_RECORDS, took)
            );
        }
    }
}

#[expect(clippy::cast_precision_loss, reason = "sizes for display")]
fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// Ships a log of `LOG_RECORDS` records over one stream, as an agent does: the records in
/// batches, a signed checkpoint of the log after each `CHECKPOINT_EVERY` and at the end,
/// each naming the size last cosigned. Returns once the last checkpoint is cosigned.
async fn ship_log(target: &Target, host_key: &tlog::Signer) {
    let id = format!("{HOST}:export:0");
    let (tx, mut rx) = open(target.agent_channel().await, &id).await;
    let (cosigned_tx, mut cosigned) = tokio::sync::watch::channel(0u64);
    let acks = tokio::spawn(async move {
        while let Some(message) = rx.message().await.unwrap() {
            if let Some(collector_message::Msg::Ack(ack)) = message.msg
                && let Some(checkpoint) = ack.checkpoint
            {
                assert!(
                    !checkpoint.cosigned.is_empty(),
                    "checkpoint refused: {}",
                    checkpoint.refused
                );
                cosigned_tx.send_replace(checkpoint.size);
                if checkpoint.size == LOG_RECORDS {
                    return;
                }
            }
        }
    });
    let mut prev = GENESIS;
    let mut range = tlog::CompactRange::new();
    let mut old_size = 0;
    let mut seq = 0;
    while seq < LOG_RECORDS {
        let mut events = Vec::with_capacity(BATCH);
        while events.len() < BATCH && seq < LOG_RECORDS {
            let event = if seq == 0 {
                chain(&id, 1).remove(0).event
            } else {
                let session = if seq >= LOG_RECORDS - SESSION_RECORDS {
                    8
                } else {
                    7
                };
                session_exec(seq, session).encode_to_vec().into()
            };
            prev = chain_hash(&id, seq, &prev, &event);
            range.append(tlog::leaf_hash(&prev)).unwrap();
            events.push(ChainedEvent {
                chain_id: String::new(),
                seq,
                event,
                hash: prev.to_vec(),
            });
            seq += 1;
        }
        let batch = EventBatch {
            chain_id: id.clone(),
            events,
        };
        tx.send(AgentMessage {
            msg: Some(Msg::Batch(batch)),
        })
        .await
        .unwrap();
        if seq % CHECKPOINT_EVERY == 0 {
            let body = tlog::Checkpoint::new(host_key.name(), seq, range.root()).unwrap();
            let note = tlog::sign_checkpoint(host_key, &body).unwrap().to_text();
            tx.send(AgentMessage {
                msg: Some(Msg::Checkpoint(Checkpoint { note, old_size })),
            })
            .await
            .unwrap();
            // The next checkpoint names this one's size: wait until it is cosigned.
            cosigned.wait_for(|size| *size == seq).await.unwrap();
            old_size = seq;
        }
    }
    acks.await.unwrap();
}
