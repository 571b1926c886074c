//! `cargo bench -p collector --bench ingest`: durable ingest and verify speed of the real
//! collector (gRPC over loopback TCP, `SQLite` with `synchronous=FULL`), against the raw chain
//! hash measured in the same run: the one cost neither can avoid.
//!
//! Prints, for exec-sized events: events/s acknowledged durable with one agent stream and with
//! several, and events/s a Verify call recomputes on its one core, each as a ratio to
//! `chain_hash` alone over the same records.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prost::Message as _;
use proto::{
    chain::{GENESIS, chain_hash},
    v1::{
        AgentMessage, ChainStart, ChainedEvent, Event, EventBatch, Exec, Hello, Identity, Process,
        SessionRoot, VerifyRequest, agent_message::Msg, collector_message, event::Body,
        identity::Kind, ingest_client::IngestClient, query_client::QueryClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const HOST: &str = "bench-host";
/// Records per chain in the ingest runs.
const EVENTS: u64 = 400_000;
/// Records per batch, as the agent sends about 1 MiB at a time.
const BATCH: usize = 2_000;
/// Agent streams in the concurrent run.
const STREAMS: usize = 4;

/// An exec event as the agent makes one for a command in a login session.
fn exec_event(n: u64) -> Event {
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
            sessionid: Some(7),
            cgroup_id: 4242,
            tty: "136:3".into(),
            comm: "systemctl".into(),
        }),
        identity: Some(Identity {
            kind: Kind::Human.into(),
            name: "alice".into(),
            ..Identity::default()
        }),
        session_root: Some(SessionRoot {
            pid: 3999,
            start_unix_nano: 1_789_999_000_000_000_000,
        }),
        body: Some(Body::Exec(Exec {
            filename: "/usr/bin/systemctl".into(),
            argv: vec![
                b"systemctl".to_vec(),
                b"restart".to_vec(),
                format!("nginx-{n}.service").into_bytes(),
            ],
            ..Exec::default()
        })),
    }
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
                        host: HOST.into(),
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
                event,
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

/// Ships `records` over one Ingest stream and waits for the ack of the last one.
async fn ship(url: String, id: String, records: Vec<ChainedEvent>) -> Duration {
    let last = records.last().unwrap().seq;
    let (tx, out) = mpsc::channel(32);
    tx.send(AgentMessage {
        msg: Some(Msg::Hello(Hello {
            host: HOST.into(),
            chain_ids: vec![id.clone()],
            agent_version: "bench".into(),
        })),
    })
    .await
    .unwrap();
    let mut client = IngestClient::connect(url)
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);
    let start = Instant::now();
    let mut rx = client
        .stream(ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
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

#[expect(clippy::cast_precision_loss, reason = "rates for display")]
fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = collector::open_store(&url).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(collector::serve(
        listener,
        Arc::clone(&store),
        collector::policy::default_policy(),
        collector::Transport::InsecurePlaintext,
    ));

    let single = chain("bench:single:0", EVENTS);
    let event_bytes: usize = single.iter().map(|r| r.event.len()).sum();
    let hashing = hash_only("bench:single:0", &single);
    let hash_rate = per_sec(EVENTS, hashing);
    println!(
        "collector ingest: {EVENTS} exec-sized events per chain ({} B each on average), batches of {BATCH}",
        event_bytes / EVENTS as usize
    );
    println!("  chain_hash alone (baseline): {hash_rate:>10.0} events/s on one core");

    let one = ship(endpoint.clone(), "bench:single:0".into(), single).await;
    let rate = per_sec(EVENTS, one);
    println!(
        "  durable ingest, 1 stream:    {rate:>10.0} events/s  ({:.1}× the baseline's time)",
        hash_rate / rate
    );

    let chains: Vec<(String, Vec<ChainedEvent>)> = (0..STREAMS)
        .map(|i| {
            let id = format!("bench:multi:{i}");
            let records = chain(&id, EVENTS);
            (id, records)
        })
        .collect();
    let start = Instant::now();
    let streams: Vec<_> = chains
        .into_iter()
        .map(|(id, records)| tokio::spawn(ship(endpoint.clone(), id, records)))
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    let many = start.elapsed();
    let total = EVENTS * STREAMS as u64;
    let rate = per_sec(total, many);
    println!(
        "  durable ingest, {STREAMS} streams:   {rate:>10.0} events/s  ({:.1}× the baseline's time)",
        hash_rate / rate
    );

    let mut query = QueryClient::connect(endpoint).await.unwrap();
    let start = Instant::now();
    let verdicts = query
        .verify(VerifyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .chains;
    let verifying = start.elapsed();
    let checked: u64 = verdicts.iter().map(|v| v.records).sum();
    assert!(
        verdicts.iter().all(|v| v.ok),
        "every chain verifies: {verdicts:?}"
    );
    assert_eq!(checked, total + EVENTS, "verify read every record");
    let rate = per_sec(checked, verifying);
    println!(
        "  verify, one core:            {rate:>10.0} events/s  ({:.1}× the baseline's time; {} chains)",
        hash_rate / rate,
        verdicts.len()
    );
}
