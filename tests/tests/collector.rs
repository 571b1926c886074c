//! Collector tier: the real collector binary with a real store, driven by a real gRPC client
//! that ships chains built as an agent builds them (`proto::chain::chain_hash` over
//! serialized `recorder.v1.Event`s). No root needed. `cargo xtask test` runs this tier twice:
//! on `SQLite`, and with `RECORDER_TEST_STORE=postgres` on a real PostgreSQL server.

use std::{fmt::Write as _, io::Write as _, path::Path, time::Duration};

use pki::Role;
use prost::Message as _;
use proto::{
    chain::chain_hash,
    v1::{
        ChainedEvent, CreateGrantRequest, Event, EventBatch, Exec, Filter, GrantChange, Hello,
        HostsRequest, Identity, IdentitySelector, Process, ReplayRequest, RevokeHostRequest,
        SearchRequest, SessionRoot, SessionsRequest, SpoolHole, StoredEvent, TailRequest, Tty,
        admin_client::AdminClient, event::Body, grant::OnExpiry, grants_client::GrantsClient,
        identity::Kind,
    },
};
use tests::collector::{Backend, Collector, backend, run_to_exit, scratch_dir};
use tests::grpc::{Agent, As, Chain, channel, query, search_all, try_verify, verify, verify_all};
use tests::{Mount, privileged};
use tonic::Code;

const HOST: &str = "host-a";
const T0: u64 = 1_800_000_000_000_000_000;
/// Sessions of the test chains: (audit session id, identity, root start).
const ALICE: (u32, &str, u64) = (7, "alice", T0 - 5_000);
const BOB: (u32, &str, u64) = (8, "bob", T0 - 9_000);

fn session_key(s: (u32, &str, u64)) -> String {
    format!("{HOST}:{}:{}", s.0, s.2)
}

fn process(pid: u32, s: (u32, &str, u64)) -> Process {
    Process {
        pid,
        tgid: pid,
        ppid: 1,
        uid: 0,
        euid: 0,
        loginuid: Some(1000 + s.0),
        sessionid: Some(s.0),
        tty: "136:3".into(),
        comm: "bash".into(),
        ..Process::default()
    }
}

/// Event `n` of a test chain: exec and tty events, alternating between two sessions.
fn event(n: u64) -> Event {
    let s = if n.is_multiple_of(3) { BOB } else { ALICE };
    let body = if n.is_multiple_of(2) {
        Body::Exec(Exec {
            filename: "/usr/bin/systemctl".into(),
            argv: vec![
                b"systemctl".to_vec().into(),
                b"restart".to_vec().into(),
                format!("svc-{n}").into_bytes().into(),
            ],
            ..Exec::default()
        })
    } else {
        Body::Tty(Tty {
            direction: 1,
            device: "136:3".into(),
            fd: 1,
            offset: 0,
            data: format!("line {n}\n").into_bytes().into(),
            redacted_bytes: 0,
            writes: 0,
            span_nanos: 0,
            write_bytes: Vec::new(),
            write_gap_nanos: Vec::new(),
            injected: false,
        })
    };
    Event {
        time_unix_nano: T0 + n * 1_000,
        process: Some(process(4000 + s.0, s)),
        identity: Some(Identity {
            kind: Kind::Human.into(),
            name: s.1.into(),
            ..Identity::default()
        }),
        session_root: Some(SessionRoot {
            pid: 4000 + s.0,
            start_unix_nano: s.2,
        }),
        body: Some(body),
    }
}

/// A chain as an agent makes it: record 0 is its `ChainStart`, then `event(1..len)`.
fn test_chain(id: &str, len: u64) -> Chain {
    host_chain(HOST, id, len)
}

/// `test_chain` of another host.
fn host_chain(host: &str, id: &str, len: u64) -> Chain {
    let mut chain = Chain::start(id, host, T0);
    for n in 1..len {
        chain.push(&event(n));
    }
    chain
}

fn chain_filter() -> Filter {
    Filter {
        host: HOST.into(),
        ..Filter::default()
    }
}

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Sessions groups the events of `event(1..3000)` under their two sessions.
async fn check_sessions(collector: &Collector) {
    let sessions = query(collector)
        .await
        .sessions(SessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for (s, members) in [
        (
            ALICE,
            (1..3000).filter(|n| n % 3 != 0).collect::<Vec<u64>>(),
        ),
        (BOB, (1..3000).filter(|n| n % 3 == 0).collect()),
    ] {
        let found = sessions
            .iter()
            .find(|x| x.key == session_key(s))
            .unwrap_or_else(|| panic!("session {} in {sessions:?}", session_key(s)));
        assert_eq!(found.host, HOST);
        assert_eq!(found.sessionid, s.0);
        assert_eq!(found.root_pid, 4000 + s.0);
        assert_eq!(found.root_start_unix_nano, s.2);
        assert_eq!(found.identity.as_ref().unwrap().name, s.1);
        assert_eq!(found.events, members.len() as u64);
        assert_eq!(
            found.execs,
            members.iter().filter(|n| *n % 2 == 0).count() as u64
        );
        let tty_bytes: usize = members
            .iter()
            .filter(|n| *n % 2 == 1)
            .map(|n| format!("line {n}\n").len())
            .sum();
        assert_eq!(found.tty_bytes, tty_bytes as u64);
        assert_eq!(found.first_unix_nano, T0 + members[0] * 1_000);
        assert_eq!(found.last_unix_nano, T0 + members.last().unwrap() * 1_000);
    }
}

/// Replay returns the tty output of a session, in time order.
async fn check_replay(collector: &Collector) {
    let mut replay = query(collector)
        .await
        .replay(ReplayRequest {
            session: session_key(ALICE),
            ..ReplayRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut times = Vec::new();
    while let Some(e) = replay.message().await.unwrap() {
        let event = e.event.unwrap();
        times.push(event.time_unix_nano);
        let Some(Body::Tty(tty)) = event.body else {
            panic!("replay returned {event:?}")
        };
        text.push_str(std::str::from_utf8(&tty.data).unwrap());
    }
    let expected: String =
        (1..3000)
            .filter(|n| n % 3 != 0 && n % 2 == 1)
            .fold(String::new(), |mut s, n| {
                writeln!(s, "line {n}").unwrap();
                s
            });
    assert_eq!(text, expected);
    assert!(times.is_sorted());
}

/// 3,000 records in batches of 500: each batch is acknowledged at its own last seq and never
/// beyond what was sent, and every query returns what the filters select.
#[tokio::test]
async fn a_valid_chain_is_acknowledged_and_queryable() {
    let dir = scratch_dir("collector-valid");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:1", 3000);
    let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(welcome.heads[0].next_seq, 0);
    assert!(welcome.heads[0].head_hash.is_empty());

    assert_eq!(agent.ship(chain.batch(0..500)).await.unwrap(), 499);
    // Pipelined: the acks come in order, one per batch, each at the batch's last seq.
    for start in (500..3000).step_by(500) {
        agent.send(chain.batch(start..start + 500)).await;
    }
    for start in (500..3000u64).step_by(500) {
        assert_eq!(agent.ack().await.unwrap(), start + 499);
    }

    let all = search_all(&collector, chain_filter(), 700).await;
    assert_eq!(
        seqs(&all),
        (0..3000).collect::<Vec<_>>(),
        "oldest first, no repeats"
    );
    for (stored, sent) in all.iter().zip(&chain.records) {
        assert_eq!(stored.hash, sent.hash);
        assert_eq!(stored.event.as_ref().unwrap().encode_to_vec(), sent.event);
        assert_eq!(stored.chain_id, chain.id);
    }

    let alice_execs = search_all(
        &collector,
        Filter {
            identity: "alice".into(),
            kinds: vec!["exec".into()],
            ..Filter::default()
        },
        1000,
    )
    .await;
    let expected: Vec<u64> = (1..3000).filter(|n| n % 3 != 0 && n % 2 == 0).collect();
    assert_eq!(seqs(&alice_execs), expected);
    assert!(alice_execs.iter().all(|e| e.session == session_key(ALICE)));

    let bob_by_id = search_all(
        &collector,
        Filter {
            session: BOB.0.to_string(),
            ..Filter::default()
        },
        1000,
    )
    .await;
    let bob_by_key = search_all(
        &collector,
        Filter {
            session: session_key(BOB),
            ..Filter::default()
        },
        1000,
    )
    .await;
    assert_eq!(
        seqs(&bob_by_id),
        (1..3000).filter(|n| n % 3 == 0).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&bob_by_id), seqs(&bob_by_key));

    let elsewhere = search_all(
        &collector,
        Filter {
            host: "host-b".into(),
            ..Filter::default()
        },
        1000,
    )
    .await;
    assert!(elsewhere.is_empty());

    let window = query(&collector)
        .await
        .search(SearchRequest {
            since_unix_nano: T0 + 100 * 1_000,
            until_unix_nano: T0 + 200 * 1_000,
            ..SearchRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&window.events), (100..200).collect::<Vec<_>>());
    assert!(window.next_page_token.is_empty());

    let refused = query(&collector)
        .await
        .search(SearchRequest {
            filter: Some(Filter {
                kinds: vec!["nonsense".into()],
                ..Filter::default()
            }),
            ..SearchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    check_sessions(&collector).await;
    check_replay(&collector).await;

    let verdict = verify(&collector, &chain.id).await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.records, 3000);
}

/// A Tail from a past time returns the stored history from then, then live events, each
/// once; a Tail without a time returns only what is stored after it began.
#[tokio::test]
async fn tail_returns_history_then_live_events_once() {
    let dir = scratch_dir("collector-tail");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:2", 130);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..100)).await.unwrap(), 99);
    // Stored last but older than the Tail's start time: history leaves it out, and it must
    // not come back as a live event either.
    let older = test_chain("host-a:boot:2-older", 10);
    let (mut other, _) = Agent::connect(&collector, HOST, &[older.id.as_str()]).await;
    assert_eq!(other.ship(older.batch(0..10)).await.unwrap(), 9);

    let mut client = query(&collector).await;
    let mut from_50 = client
        .tail(TailRequest {
            filter: Some(chain_filter()),
            since_unix_nano: T0 + 50 * 1_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut from_now = client
        .tail(TailRequest {
            filter: Some(chain_filter()),
            since_unix_nano: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Live events arrive while the history is still being read.
    agent.send(chain.batch(100..110)).await;
    assert_eq!(agent.ack().await.unwrap(), 109);
    for start in (110..130).step_by(5) {
        assert_eq!(
            agent.ship(chain.batch(start..start + 5)).await.unwrap(),
            start as u64 + 4
        );
    }

    let mut got = Vec::new();
    while got.len() < 80 {
        let e = tokio::time::timeout(Duration::from_secs(10), from_50.message())
            .await
            .expect("tail delivers within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(e.chain_id, chain.id);
        got.push(e.seq);
    }
    assert_eq!(got, (50..130).collect::<Vec<_>>());
    let mut live = Vec::new();
    while live.len() < 30 {
        live.push(from_now.message().await.unwrap().unwrap().seq);
    }
    assert_eq!(live, (100..130).collect::<Vec<_>>());
    // Nothing more: a duplicate would show up here.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), from_50.message())
            .await
            .is_err()
    );
}

/// A resend of stored records is acknowledged again and stored once; a stored seq resent with
/// a different hash is a fork: refused, kept as evidence, and raised as an alert.
#[tokio::test]
async fn a_resend_is_acknowledged_and_a_fork_raises_an_alert() {
    let dir = scratch_dir("collector-fork");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:3", 120);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..100)).await.unwrap(), 99);
    assert_eq!(agent.ship(chain.batch(50..100)).await.unwrap(), 99);
    assert_eq!(agent.ship(chain.batch(80..120)).await.unwrap(), 119);
    let stored = search_all(&collector, chain_filter(), 1000).await;
    assert_eq!(seqs(&stored), (0..120).collect::<Vec<_>>());

    // Seq 60 again, with other bytes, hashed correctly over the stored seq 59.
    let mut forked = event(60);
    forked.time_unix_nano += 1;
    let bytes = forked.encode_to_vec();
    let prev: [u8; 32] = chain.records[59].hash.clone().try_into().unwrap();
    let fork = ChainedEvent {
        chain_id: String::new(),
        seq: 60,
        hash: chain_hash(&chain.id, 60, &prev, &bytes).to_vec(),
        event: bytes.into(),
    };
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let refused = agent
        .ship(EventBatch {
            chain_id: chain.id.clone(),
            events: vec![fork],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused}");
    assert!(refused.message().contains("fork"), "{refused}");

    let after: Vec<StoredEvent> = search_all(&collector, chain_filter(), 1000)
        .await
        .into_iter()
        .filter(|e| e.chain_id == chain.id)
        .collect();
    assert_eq!(after, stored, "the stored chain is untouched");
    assert!(verify(&collector, &chain.id).await.ok);

    let alert_filter = Filter {
        kinds: vec!["alert".into()],
        ..Filter::default()
    };
    let alerts = search_all(&collector, alert_filter.clone(), 10).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let Some(Body::Alert(alert)) = alerts[0].event.clone().unwrap().body else {
        panic!("not an alert: {:?}", alerts[0]);
    };
    assert_eq!(
        (
            alert.kind.as_str(),
            alert.host.as_str(),
            alert.chain_id.as_str(),
            alert.seq
        ),
        ("fork", HOST, chain.id.as_str(), 60)
    );
    let mut tail = query(&collector)
        .await
        .tail(TailRequest {
            filter: Some(alert_filter),
            since_unix_nano: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tail.message().await.unwrap().unwrap(), alerts[0]);
    // The alert is chained evidence too.
    assert!(verify(&collector, &alerts[0].chain_id).await.ok);
    assert!(
        collector.stderr().contains("ERROR") && collector.stderr().contains("fork"),
        "{}",
        collector.stderr()
    );
}

/// A hash that does not recompute, a gap, and fields out of bounds are each refused with the
/// documented status, and nothing of the refused batch is stored.
#[tokio::test]
async fn bad_batches_are_refused_and_store_nothing() {
    let dir = scratch_dir("collector-bad");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:4", 40);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..10)).await.unwrap(), 9);

    let mut bad = chain.batch(10..20);
    bad.events[5].hash[0] ^= 1;
    let refused = agent.ship(bad).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("does not recompute"),
        "{refused}"
    );

    // The first record of a batch links to the stored head.
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let mut bad = chain.batch(10..20);
    bad.events[0].event = event(999).encode_to_vec().into();
    let refused = agent.ship(bad).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let refused = agent.ship(chain.batch(12..20)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");

    for (batch, needle) in [
        (
            EventBatch {
                chain_id: "x".repeat(300),
                events: chain.records[10..11].to_vec(),
            },
            "chain_id",
        ),
        (
            EventBatch {
                chain_id: chain.id.clone(),
                events: Vec::new(),
            },
            "batch",
        ),
        (
            EventBatch {
                chain_id: chain.id.clone(),
                events: vec![ChainedEvent {
                    hash: vec![0; 5],
                    ..chain.records[10].clone()
                }],
            },
            "32",
        ),
    ] {
        let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
        let refused = agent.ship(batch).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains(needle), "{refused}");
    }

    assert_eq!(
        seqs(&search_all(&collector, chain_filter(), 1000).await),
        (0..10).collect::<Vec<_>>()
    );
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(10..40)).await.unwrap(), 39);
    assert!(verify(&collector, &chain.id).await.ok);
}

/// Records an agent may not send (bytes that are no event, a time past 2262, an event with
/// no body, a grant change only the collector records) are kept verbatim as `malformed`,
/// with one alert for their batch, and the host goes on shipping: refusing them would stop
/// it for good, since the agent can only send them again.
#[tokio::test]
async fn malformed_records_are_kept_flagged_and_shipping_goes_on() {
    let dir = scratch_dir("collector-malformed");
    let collector = Collector::start(&dir.join("c.db"));
    let mut chain = test_chain("host-a:boot:9", 5);
    chain.push_bytes(b"\xff\xff not protobuf".to_vec());
    chain.push(&Event {
        time_unix_nano: u64::MAX,
        ..event(6)
    });
    chain.push(&Event {
        body: None,
        ..event(7)
    });
    chain.push(&Event {
        body: Some(Body::GrantChange(GrantChange::default())),
        ..event(8)
    });
    for n in 9..12 {
        chain.push(&event(n));
    }
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..5)).await.unwrap(), 4);
    assert_eq!(agent.ship(chain.batch(5..12)).await.unwrap(), 11);

    let of_chain = |events: Vec<StoredEvent>| -> Vec<StoredEvent> {
        events
            .into_iter()
            .filter(|e| e.chain_id == chain.id)
            .collect()
    };
    // A malformed record has no time of its own to be found by: it sorts first.
    let stored = of_chain(search_all(&collector, chain_filter(), 100).await);
    assert_eq!(
        seqs(&stored),
        [5, 6, 7, 8, 0, 1, 2, 3, 4, 9, 10, 11],
        "all kept"
    );
    let malformed = of_chain(
        search_all(
            &collector,
            Filter {
                kinds: vec!["malformed".into()],
                ..chain_filter()
            },
            100,
        )
        .await,
    );
    assert_eq!(seqs(&malformed), [5, 6, 7, 8]);
    for (m, fault) in malformed.iter().zip([
        "not a recorder.v1.Event",
        "time out of range",
        "no body",
        "grant change",
    ]) {
        assert!(m.event.is_none(), "{m:?}");
        assert!(m.malformed.contains(fault), "{m:?}");
    }
    let changes = search_all(
        &collector,
        Filter {
            kinds: vec!["grant_change".into()],
            ..chain_filter()
        },
        100,
    )
    .await;
    assert!(
        of_chain(changes).is_empty(),
        "nothing passes for what it claims"
    );

    let alerts = search_all(
        &collector,
        Filter {
            kinds: vec!["alert".into()],
            ..Filter::default()
        },
        10,
    )
    .await;
    assert_eq!(alerts.len(), 1, "one alert for the batch: {alerts:?}");
    let Some(Body::Alert(alert)) = alerts[0].event.clone().unwrap().body else {
        panic!("not an alert: {:?}", alerts[0]);
    };
    assert_eq!(
        (alert.kind.as_str(), alert.chain_id.as_str(), alert.seq),
        ("malformed_record", chain.id.as_str(), 5)
    );
    assert!(alert.message.contains("4 record(s)"), "{}", alert.message);
    assert!(verify(&collector, &chain.id).await.ok);
}

/// `kill -9` of the collector while an agent streams batches, 20 times at other moments of
/// its group commits: after each restart the collector holds everything it acknowledged,
/// the agent resumes from the head it is welcomed with, and verify passes at the end.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_kills_mid_commit_lose_nothing_acknowledged() {
    const BATCH: u64 = 50;
    let dir = scratch_dir("collector-kills");
    let store = dir.join("c.db");
    // Longer than 20 rounds can stream at any speed this machine kind reaches (each round is
    // killed within 170 ms; one idle host here acknowledged 100,000 records in 20 rounds of
    // up to 320 ms), so every kill lands mid-stream.
    let chain = test_chain("host-a:boot:kills", 200_000);
    let len = chain.records.len() as u64;
    let batch = |from: u64| {
        let to = (from + BATCH).min(len);
        chain.batch(from as usize..to as usize)
    };
    let mut collector = Collector::start(&store);
    let mut acked = 0;
    let mut kills = 0;
    for round in 0..20u64 {
        let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
        let held = welcome
            .heads
            .iter()
            .find(|h| h.chain_id == chain.id)
            .map_or(0, |h| h.next_seq);
        assert!(
            held >= acked,
            "round {round}: the collector holds {held} records but acknowledged {acked}"
        );
        let pid = libc::pid_t::try_from(collector.pid()).unwrap();
        let kill_after = Duration::from_millis(20 + round * 53 % 150);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // SAFETY: signalling the test's own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let (mut next, mut in_flight) = (held, 0);
        'stream: loop {
            while in_flight < 8 && next < len {
                if !agent.try_send(batch(next)).await {
                    break 'stream;
                }
                next = (next + BATCH).min(len);
                in_flight += 1;
            }
            match agent.ack().await {
                Ok(seq) => {
                    acked = acked.max(seq + 1);
                    in_flight -= 1;
                }
                Err(_) => break,
            }
        }
        killer.join().unwrap();
        kills += 1;
        drop(collector.stop());
        collector = Collector::start(&store);
    }
    assert!(
        acked < len,
        "the chain outlasts the kills: {acked} of {len}"
    );
    let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let held = welcome
        .heads
        .iter()
        .find(|h| h.chain_id == chain.id)
        .unwrap()
        .next_seq;
    assert!(held >= acked, "{held} < {acked}");
    let mut next = held;
    while next < len {
        agent.ship(batch(next)).await.unwrap();
        next = (next + BATCH).min(len);
    }
    let verdict = verify(&collector, &chain.id).await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.records, len);
    eprintln!("{kills} kills; {acked} records acknowledged before the last");
}

/// Bytes that are not HTTP/2 and a 100 MB message each end only their own connection.
#[tokio::test]
async fn garbage_and_oversized_messages_leave_the_collector_serving() {
    let dir = scratch_dir("collector-garbage");
    let mut collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:5", 60);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..30)).await.unwrap(), 29);

    let mut raw = std::net::TcpStream::connect(collector.addr).unwrap();
    let garbage: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // The collector may close the connection before reading it all.
    let _ = raw.write_all(&garbage);
    drop(raw);

    let mut huge = chain.batch(30..31);
    huge.events[0].event = vec![b'x'; 100 << 20].into();
    let refused = agent.ship(huge).await.unwrap_err();
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused}"
    );
    assert!(
        refused.message().contains("message length too large")
            || refused.message().contains("size"),
        "{refused}"
    );

    assert!(collector.running());
    let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(welcome.heads[0].next_seq, 30);
    assert_eq!(agent.ship(chain.batch(30..60)).await.unwrap(), 59);
    assert_eq!(
        seqs(&search_all(&collector, chain_filter(), 1000).await),
        (0..60).collect::<Vec<_>>()
    );
    assert!(verify(&collector, &chain.id).await.ok);
}

/// SIGTERM (a service manager's stop, or `cargo xtask run`'s) stops the collector cleanly:
/// exit status 0, and what it acknowledged is still there for the next one.
#[tokio::test]
async fn sigterm_stops_the_collector_cleanly() {
    let dir = scratch_dir("collector-sigterm");
    let store = dir.join("c.db");
    let collector = Collector::start(&store);
    let chain = test_chain("host-a:boot:9", 20);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..20)).await.unwrap(), 19);
    let (status, log) = collector.terminate();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("stopping on SIGTERM"), "{log}");
    let collector = Collector::start(&store);
    assert!(verify(&collector, &chain.id).await.ok);
    assert_eq!(verify(&collector, &chain.id).await.records, 20);
}

/// After a crash and restart, the Welcome names the stored head of each chain, and the agent
/// resumes from there.
#[tokio::test]
async fn a_restarted_collector_welcomes_with_the_stored_heads() {
    let dir = scratch_dir("collector-restart");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:6", 300);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..200)).await.unwrap(), 199);
    drop(agent);

    let collector = collector.restart();
    let (mut agent, welcome) =
        Agent::connect(&collector, HOST, &[chain.id.as_str(), "host-a:boot:7"]).await;
    assert_eq!(welcome.heads.len(), 2);
    assert_eq!(welcome.heads[0].chain_id, chain.id);
    assert_eq!(welcome.heads[0].next_seq, 200);
    assert_eq!(welcome.heads[0].head_hash, chain.head(200));
    assert_eq!(welcome.heads[1].next_seq, 0);
    assert!(welcome.heads[1].head_hash.is_empty());

    // The agent resumes at the head the Welcome named.
    let next = usize::try_from(welcome.heads[0].next_seq).unwrap();
    assert_eq!(agent.ship(chain.batch(next..300)).await.unwrap(), 299);
    let verdict = verify(&collector, &chain.id).await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.records, 300);
}

/// Two collectors serving one new store at once (docs/scaling.md): its scratch directory,
/// the store, and each collector.
fn two_collectors(tag: &str) -> (tests::Scratch, std::path::PathBuf, Collector, Collector) {
    let dir = scratch_dir(tag);
    let store = dir.join("c.db");
    let first = Collector::start(&store);
    let second = Collector::start(&store);
    (dir, store, first, second)
}

/// Two collectors of one store, each with a witness certificate of its own and so a chain
/// of its own (docs/evidence.md), while operators create grants through both at once: every
/// grant change is stored once, in the chain of the collector it was made through, each
/// with a decision number of its own, none twice, and verify passes through both. A change
/// that another collector's decision overtook is decided again by the collector; should it
/// still lose, the operator is told to try again (`ABORTED`), and nothing of it is stored.
#[test]
fn grants_made_through_two_collectors_at_once_are_decided_one_after_the_other() {
    const EACH: usize = 12;
    let dir = scratch_dir("collector-decisions");
    let store = dir.join("c.db");
    let first = Collector::start(&store);
    let pki = first.pki.clone().unwrap();
    let state = dir.join("second-state");
    let second = Collector::start_with(
        &store,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        &[
            "--pki-dir",
            pki.collector_named("second").to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let makers: Vec<_> = [first.url(), second.url()]
        .into_iter()
        .enumerate()
        .map(|(c, url)| {
            std::thread::spawn(move || {
                let mut made = 0;
                for n in 0..EACH {
                    let user = format!("u{c}-{n}");
                    let args = [
                        "grant", "create", "--user", &user, "--ttl", "1h", "--reason", "x",
                    ];
                    let out = tests::operator::run(&url, &args);
                    let said = String::from_utf8_lossy(&out.stderr);
                    assert!(out.status.success() || said.contains("try again"), "{said}");
                    made += usize::from(out.status.success());
                }
                made
            })
        })
        .collect();
    let made: usize = makers.into_iter().map(|m| m.join().unwrap()).sum();
    assert!(made > 0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let filter = Filter {
            kinds: vec!["grant_change".into()],
            ..Filter::default()
        };
        let changes = search_all(&first, filter, 1000).await;
        let mut decisions: Vec<u64> = Vec::new();
        let mut chains = std::collections::BTreeSet::new();
        for stored in changes {
            let Some(Body::GrantChange(change)) = stored.event.unwrap().body else {
                panic!("not a grant change")
            };
            decisions.push(change.decision);
            chains.insert(stored.chain_id);
        }
        decisions.sort_unstable();
        let expected: Vec<u64> = (1..=made as u64).collect();
        assert_eq!(decisions, expected, "one decision each, none twice");
        assert_eq!(
            chains.into_iter().collect::<Vec<_>>(),
            ["collector/second", "collector/test"],
            "each collector chains the changes made through it"
        );
        for collector in [&first, &second] {
            let report = verify_all(collector).await;
            assert!(report.ok, "{report:?}");
        }
    });
}

/// Two collectors serving one store at once (docs/scaling.md): a host ships through one,
/// then the other, then the first again, and every record is taken where the store stands,
/// whatever the first collector held of it. Reads through each in turn are each chained
/// into the collector's chain, which the other one has moved in between: none is refused.
#[tokio::test]
async fn two_collectors_on_one_store_take_turns_without_wedging() {
    let (_dir, _, first, second) = two_collectors("collector-two");
    let chain = test_chain("host-a:boot:9", 300);
    for (collector, range) in [(&first, 0..100), (&second, 100..200), (&first, 200..300)] {
        let (mut agent, welcome) = Agent::connect(collector, HOST, &[chain.id.as_str()]).await;
        assert_eq!(welcome.heads[0].next_seq, range.start as u64);
        let last = agent
            .ship(chain.batch(range.clone()))
            .await
            .map_err(|s| s.message().to_owned());
        assert_eq!(last, Ok(range.end as u64 - 1), "records {range:?}");
    }
    for collector in [&first, &second, &first, &second] {
        let stored = search_all(collector, chain_filter(), 1000).await;
        assert_eq!(seqs(&stored), (0..300).collect::<Vec<u64>>());
    }
    for collector in [&first, &second] {
        let report = verify_all(collector).await;
        assert!(report.ok, "{report:?}");
        let ours = report
            .chains
            .iter()
            .find(|c| c.chain_id == chain.id)
            .unwrap();
        assert_eq!(ours.records, 300);
        // Each found the collector's chain moved by the other, and chained its read again
        // within the same commit.
        let log = collector.stderr();
        assert!(log.contains("are chained again on its head"), "{log}");
        assert!(
            !log.contains("nothing of this group is acknowledged"),
            "{log}"
        );
    }
}

/// Two collectors on one store hear each other's changes (docs/scaling.md): a grant made
/// through one reaches an agent connected to the other within a second, not at that
/// collector's next view refresh (30 s). On PostgreSQL they are notified (LISTEN/NOTIFY),
/// also after the connection that listens was lost; on `SQLite` they poll a count of grant
/// changes.
#[tokio::test]
async fn a_grant_made_at_one_collector_reaches_the_others_agents_at_once() {
    let (_dir, store, first, second) = two_collectors("collector-hear");
    let (mut agent, _) = Agent::connect(&second, HOST, &[]).await;
    assert!(agent.grant_view().await.grants.is_empty());

    let mut grants = GrantsClient::new(channel(&first, As::Operator("dave", Role::Approver)).await);
    let mut made = Vec::new();
    for who in ["alice", "bob"] {
        let made_at = std::time::Instant::now();
        made.push(
            grants
                .create(CreateGrantRequest {
                    identity: Some(IdentitySelector {
                        kind: Kind::Human.into(),
                        name: who.into(),
                    }),
                    hosts: vec![HOST.into()],
                    ttl_millis: 600_000,
                    reason: "restart nginx".into(),
                    on_expiry: OnExpiry::Kill.into(),
                    ..CreateGrantRequest::default()
                })
                .await
                .unwrap()
                .into_inner(),
        );
        let view = tokio::time::timeout(Duration::from_secs(1), agent.grant_view())
            .await
            .expect("the other collector's agent is sent the grant within a second");
        eprintln!(
            "{who}'s grant reached the other collector's agent in {:?}",
            made_at.elapsed()
        );
        assert_eq!(view.grants, made);
        if who == "alice" && backend() == Backend::Postgres {
            // The connection that listens is lost: it is dialled again, and what changed
            // meanwhile is sent as if heard.
            let _ = tests::postgres::sql(
                &store,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE query LIKE 'LISTEN%'",
            );
            let view = tokio::time::timeout(Duration::from_secs(5), agent.grant_view())
                .await
                .expect("a fresh view once the listener is back");
            assert_eq!(view.grants, made);
        }
    }
}

/// A host revoked through one collector is refused by another on the same store within a
/// second: heard at once on PostgreSQL, polled on `SQLite`.
#[tokio::test]
async fn a_host_revoked_at_one_collector_is_refused_by_the_other() {
    let (_dir, _, first, second) = two_collectors("collector-revoke");
    drop(Agent::connect(&second, HOST, &[]).await);
    let admin = As::Operator("test-admin", Role::Admin);
    AdminClient::new(channel(&first, admin).await)
        .revoke_host(RevokeHostRequest {
            host: HOST.into(),
            reason: "decommissioned".into(),
        })
        .await
        .unwrap();
    let hello = || Hello {
        host: HOST.into(),
        ..Hello::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let refused = loop {
        match Agent::try_connect(&second, As::Agent(HOST), hello()).await {
            Err(status) => break status,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(_) => panic!("the other collector still lets a revoked host in after a second"),
        }
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("revoked"), "{refused}");
}

/// A tail through one collector shows what another on the same store stores, and misses no
/// row that commits after a row with a higher id was stored (docs/scaling.md). The late
/// commit is made for real: host-a's batch through the first collector is held in its
/// transaction by a lock the test takes on host-a's log row (PostgreSQL), while host-b's
/// later batch through the second commits. Before tails read only settled rows, that tail
/// moved past the held rows and never showed them; before it looked for other collectors'
/// rows, it showed the first one's only at its own next commit; before a running
/// transaction's id counted in how far rows are settled, it moved past them while the held
/// commit was the newest transaction (PostgreSQL's xmax is one past the newest ended one,
/// not past every one handed out). Only this database's transactions may hold a tail back,
/// not one left open in another database.
#[tokio::test]
async fn a_tail_shows_what_every_collector_stores_and_misses_no_late_commit() {
    let (dir, store, first, second) = two_collectors("collector-tail");
    // A transaction left open in another database of the same server holds no tail back.
    let _elsewhere = (backend() == Backend::Postgres).then(|| {
        let mut session = tests::postgres::Session::open(&dir.join("elsewhere.db"));
        // Taking its id makes it a transaction that could write.
        let line = session.line("BEGIN; SELECT pg_current_xact_id() IS NOT NULL;");
        assert_eq!(line, "t");
        session
    });
    let (a, b) = (
        test_chain("host-a:boot:20", 20),
        host_chain("host-b", "host-b:boot:1", 20),
    );
    let (mut agent_a, _) = Agent::connect(&first, HOST, &[a.id.as_str()]).await;
    let (mut agent_b, _) = Agent::connect(&second, "host-b", &[b.id.as_str()]).await;
    assert_eq!(agent_a.ship(a.batch(0..10)).await.unwrap(), 9);
    assert_eq!(agent_b.ship(b.batch(0..10)).await.unwrap(), 9);
    let mut tail = query(&second)
        .await
        .tail(TailRequest::default())
        .await
        .unwrap()
        .into_inner();

    let mut held = (backend() == Backend::Postgres).then(|| {
        let mut session = tests::postgres::Session::open(&store);
        let line = session.line("BEGIN; SELECT 'held' FROM logs WHERE host = 'host-a' FOR UPDATE;");
        assert_eq!(line, "held");
        session
    });
    if held.is_none() {
        // Without a lock to hold, the first collector's commit comes last by waiting.
        assert_eq!(agent_b.ship(b.batch(10..20)).await.unwrap(), 19);
    }
    let batch = a.batch(10..20);
    let shipping = tokio::spawn(async move { agent_a.ship(batch).await });
    if held.is_some() {
        // The first collector's commit has stored host-a's rows and waits for the lock.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tests::postgres::sql(&store, "SELECT count(*) FROM pg_locks WHERE NOT granted").trim()
            != "1"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit never waited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Time for the tail to move past the held rows, if it would, while that commit is
        // the newest transaction and nothing after it has ended.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // A tail from a past time, begun while that commit is held: what it reads as history
    // is still chosen by time, however long the commit takes.
    let mut from_5 = query(&second)
        .await
        .tail(TailRequest {
            filter: None,
            since_unix_nano: T0 + 5 * 1_000,
        })
        .await
        .unwrap()
        .into_inner();
    if let Some(session) = &mut held {
        assert_eq!(agent_b.ship(b.batch(10..20)).await.unwrap(), 19);
        // Time for a tail to show host-b's rows, and move past host-a's, if it would.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(session.line("COMMIT; SELECT 'released';"), "released");
    }
    assert_eq!(shipping.await.unwrap().unwrap(), 19);
    let committed = std::time::Instant::now();

    let ours = |seqs: std::ops::Range<u64>| -> Vec<(String, u64)> {
        ["host-a", "host-b"]
            .into_iter()
            .flat_map(|h| seqs.clone().map(move |seq| (h.to_owned(), seq)))
            .collect()
    };
    let (live, all_shown) = shown(&mut tail, &[&a.id, &b.id], 20).await;
    eprintln!(
        "the tail showed the first collector's last commit {:?} after it",
        all_shown - committed
    );
    assert_eq!(live, ours(10..20));
    assert_eq!(shown(&mut from_5, &[&a.id, &b.id], 30).await.0, ours(5..20));
}

/// The next `count` events of `chains` a tail shows, as (host, seq), sorted, and when the
/// last of them came; then nothing more of them for a moment, so that a duplicate or an
/// extra row shows up.
async fn shown(
    tail: &mut tonic::Streaming<StoredEvent>,
    chains: &[&str],
    count: usize,
) -> (Vec<(String, u64)>, std::time::Instant) {
    let mut shown = Vec::new();
    let mut last = std::time::Instant::now();
    loop {
        let wait = if shown.len() < count { 3000 } else { 300 };
        let Ok(next) = tokio::time::timeout(Duration::from_millis(wait), tail.message()).await
        else {
            assert!(shown.len() >= count, "the tail showed only {shown:?}");
            break;
        };
        let e = next.unwrap().unwrap();
        if chains.contains(&e.chain_id.as_str()) {
            shown.push((e.host, e.seq));
            last = std::time::Instant::now();
        }
    }
    shown.sort();
    (shown, last)
}

/// The `host_silent` and `host_back` alerts about `host` stored, oldest first.
async fn liveness_alerts(collector: &Collector, host: &str) -> Vec<String> {
    let alerts = Filter {
        kinds: vec!["alert".into()],
        ..Filter::default()
    };
    search_all(collector, alerts, 100)
        .await
        .into_iter()
        .filter_map(|e| match e.event?.body? {
            Body::Alert(a) if a.host == host && a.kind.starts_with("host_") => Some(a.kind),
            _ => None,
        })
        .collect()
}

/// Collectors on one store share what they heard (docs/scaling.md): a host that moved to
/// another collector is not reported silent by the one it left, every collector lists it
/// live, and when it does go quiet, one alert says so, not one per collector, nor again
/// after a collector restarts. The host comes back through the first collector, which says
/// so too.
#[tokio::test]
async fn a_host_served_by_another_collector_is_silent_only_when_no_collector_hears_it() {
    let dir = scratch_dir("collector-silent");
    let store = dir.join("c.db");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let quick = ["--silent-after", "2s"];
    let first = Collector::start_with(&store, any, &quick);
    let second = Collector::start_with(&store, any, &quick);
    let chain = test_chain("host-a:boot:30", 20);
    let (mut agent, _) = Agent::connect(&first, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..10)).await.unwrap(), 9);
    drop(agent);
    let (mut agent, _) = Agent::connect(&second, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(10..20)).await.unwrap(), 19);
    // Other hosts heard by the second at the same time: its contacts of one second are
    // noted together.
    let others = ["host-b", "host-c", "host-d"];
    let mut heard = vec![agent];
    for host in others {
        heard.push(Agent::connect(&second, host, &[]).await.0);
    }
    // Well past the limit, with the hosts heard only by the second collector.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for agent in &heard {
            agent.heartbeat().await;
        }
    }
    assert_eq!(liveness_alerts(&first, HOST).await, Vec::<String>::new());
    for collector in [&first, &second] {
        let hosts = query(collector)
            .await
            .hosts(HostsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .hosts;
        for host in std::iter::once(HOST).chain(others) {
            let status = hosts
                .iter()
                .find(|h| h.host == host)
                .unwrap_or_else(|| panic!("{host} listed: {hosts:?}"));
            assert_eq!(status.state, "live", "{status:?}");
            let ago = proto::time::now_unix_nano().saturating_sub(status.last_contact_unix_nano);
            assert!(ago < 3_000_000_000, "last contact {ago} ns ago: {status:?}");
        }
    }
    let agent = heard.remove(0);
    drop(heard);

    drop(agent);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while liveness_alerts(&first, HOST).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no host_silent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both collectors have looked again by now, each more than once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(liveness_alerts(&second, HOST).await, ["host_silent"]);
    // A restarted collector, past the time it gives hosts to reconnect, does not raise it
    // again.
    drop(first.stop());
    let first = Collector::start_with(&store, any, &quick);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(liveness_alerts(&first, HOST).await, ["host_silent"]);

    let (agent, _) = Agent::connect(&first, HOST, &[chain.id.as_str()]).await;
    agent.heartbeat().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while liveness_alerts(&first, HOST).await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no host_back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        liveness_alerts(&second, HOST).await,
        ["host_silent", "host_back"]
    );
}

/// A store of 1,000 records, stopped, for tampering with its chain (tests/tests/evidence.rs
/// tampers with a signed log).
async fn stored_chain(dir: &Path, chain: &Chain) -> std::path::PathBuf {
    let path = dir.join("pristine.db");
    let collector = Collector::start(&path);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..1000)).await.unwrap(), 999);
    assert!(verify(&collector, &chain.id).await.ok);
    drop(collector.stop());
    path
}

/// Copies the store (the `SQLite` file with its WAL, or the database) to a fresh one and
/// applies `sql` to it.
fn tampered(pristine: &Path, name: &str, sql: &str) -> std::path::PathBuf {
    let copy = pristine.with_file_name(name);
    if backend() == Backend::Postgres {
        tests::postgres::copy(pristine, &copy);
        let _ = tests::postgres::sql(&copy, sql);
        return copy;
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = format!("{}{suffix}", pristine.display());
        if Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{suffix}", copy.display())).unwrap();
        }
    }
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute_batch(sql).unwrap();
    copy
}

/// A blob literal of `hex` in the backend's SQL.
fn blob(hex: &str) -> String {
    match backend() {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("'\\x{hex}'::BYTEA"),
    }
}

/// Verify finds each kind of tampering with the stored rows, and names the first bad seq.
#[tokio::test]
async fn verify_finds_tampering_with_the_store() {
    let dir = scratch_dir("collector-tamper");
    let chain = test_chain("host-a:boot:8", 1000);
    let pristine = stored_chain(&dir, &chain).await;
    let rows = "(SELECT id FROM chains WHERE chain_id = 'host-a:boot:8')";
    let cases = [
        (
            "edited.db",
            format!(
                "UPDATE events SET event = {} WHERE chain = {rows} AND seq = 500;",
                blob("0801")
            ),
            500,
            "does not recompute",
        ),
        (
            "deleted.db",
            format!("DELETE FROM events WHERE chain = {rows} AND seq = 300;"),
            300,
            "missing",
        ),
        (
            "swapped.db",
            format!(
                "UPDATE events SET seq = -1 WHERE chain = {rows} AND seq = 400;
                 UPDATE events SET seq = 400 WHERE chain = {rows} AND seq = 600;
                 UPDATE events SET seq = 600 WHERE chain = {rows} AND seq = -1;"
            ),
            400,
            "reordered",
        ),
        (
            "truncated.db",
            format!("DELETE FROM events WHERE chain = {rows} AND seq >= 900;"),
            900,
            "tail",
        ),
    ];
    for (name, sql, bad_seq, reason) in cases {
        let collector = Collector::start(&tampered(&pristine, name, &sql));
        let verdict = verify(&collector, &chain.id).await;
        assert!(!verdict.ok, "{name}: {verdict:?}");
        assert_eq!(verdict.first_bad_seq, Some(bad_seq), "{name}: {verdict:?}");
        assert!(verdict.reason.contains(reason), "{name}: {verdict:?}");
        assert_eq!(verdict.expected_size, 1000, "{name}: {verdict:?}");
        // What an operator runs (`cargo xtask verify`): it names the seq and exits non-zero.
        let cli = tests::operator::run(&collector.url(), &["verify"]);
        let printed = String::from_utf8_lossy(&cli.stdout);
        assert!(!cli.status.success(), "{name}: verify exited 0:\n{printed}");
        assert!(
            printed.contains(&format!("FAIL  {HOST} {} at seq {bad_seq}:", chain.id)),
            "{name}: {printed}"
        );
    }
    let collector = Collector::start(&pristine);
    assert!(verify(&collector, &chain.id).await.ok);
}

/// A store file that is not `SQLite` stops the collector at start with a clear message.
/// (A PostgreSQL store: `an_unreachable_database_stops_the_collector_with_a_clear_error`.)
#[test]
fn a_corrupt_store_stops_the_collector_with_a_clear_error() {
    if backend() == Backend::Postgres {
        return;
    }
    let dir = scratch_dir("collector-corrupt");
    let path = dir.join("c.db");
    std::fs::write(
        &path,
        b"this is not a database, just some bytes ".repeat(200),
    )
    .unwrap();
    let out = run_to_exit(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a database"), "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A PostgreSQL store that cannot be reached stops the collector at start, naming the
/// database without its password.
#[test]
fn an_unreachable_database_stops_the_collector_with_a_clear_error() {
    let dir = scratch_dir("collector-no-database");
    let socket = dir.join("no-server-here");
    let out = tests::collector::command()
        .args(["--listen", "127.0.0.1:0", "--insecure-plaintext", "--store"])
        .arg(format!(
            "postgresql://recorder:s3cret@localhost/evidence?host={}",
            socket.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(
        stderr.contains("recorder:***@localhost/evidence"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A PostgreSQL store left by a collector of schema version 3, whose events referenced
/// their chain through an enforced key, is migrated at start: the key is dropped, the
/// version is 4, what the store held verifies, and its chain goes on. (`SQLite` never
/// enforced the key.)
#[tokio::test]
async fn an_older_postgres_store_is_migrated_and_keeps_its_evidence() {
    if backend() != Backend::Postgres {
        return;
    }
    let dir = scratch_dir("collector-migrate");
    let chain = test_chain("host-a:boot:9", 1100);
    let store = stored_chain(&dir, &chain).await;
    let keys = "SELECT count(*) FROM pg_constraint \
                WHERE conrelid = 'events'::regclass AND contype = 'f'";
    // The store as version 3 left it.
    let _ = tests::postgres::sql(
        &store,
        "ALTER TABLE events ADD CONSTRAINT events_chain_fkey \
         FOREIGN KEY (chain) REFERENCES chains(id); UPDATE schema_version SET version = 3",
    );
    assert_eq!(tests::postgres::sql(&store, keys).trim(), "1");

    let collector = Collector::start(&store);
    assert_eq!(tests::postgres::sql(&store, keys).trim(), "0");
    let version = tests::postgres::sql(&store, "SELECT version FROM schema_version");
    assert_eq!(version.trim(), "4");
    let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(welcome.heads[0].next_seq, 1000);
    assert_eq!(agent.ship(chain.batch(1000..1100)).await.unwrap(), 1099);
    let verdict = verify(&collector, &chain.id).await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.records, 1100);
}

/// Paged reads on PostgreSQL take each record once, not a pass over the table per page.
/// A search's pages start at their cursor's time in the time index: each used to scan that
/// index from its first entry. Verify reads a chain and a host's log straight off their
/// indexes even when the statistics are stale (a store just filled, before autovacuum
/// analyzed it): PostgreSQL used to take every row from a page's start on and sort them.
/// Either way the reads grew with the square of the records.
#[tokio::test(flavor = "multi_thread")]
async fn paged_reads_on_postgres_take_each_record_once() {
    const RECORDS: usize = 50_001;
    if backend() != Backend::Postgres {
        return;
    }
    let dir = scratch_dir("collector-paged-reads");
    let store = dir.join("c.db");
    let chain = test_chain("host-a:boot:10", RECORDS as u64);
    let mut collector = Collector::start(&store);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    for start in (0..RECORDS).step_by(1000) {
        let end = (start + 1000).min(RECORDS);
        assert_eq!(
            agent.ship(chain.batch(start..end)).await.unwrap(),
            end as u64 - 1
        );
    }
    drop(agent);
    let sql = |q: &str| -> u64 { tests::postgres::sql(&store, q).trim().parse().unwrap() };
    // What every session read so far: a session adds its own counts when it ends, so each
    // read below runs on a collector stopped after it.
    let time_index = "SELECT idx_tup_read FROM pg_stat_user_indexes \
                      WHERE indexrelname = 'events_time'";
    let heap = "SELECT heap_blks_read + heap_blks_hit FROM pg_statio_user_tables \
                WHERE relname = 'events'";

    let _ = tests::postgres::sql(&store, "ANALYZE events; ANALYZE chains");
    collector = collector.restart();
    let before = sql(time_index);
    assert_eq!(
        search_all(&collector, chain_filter(), 10_000).await.len(),
        RECORDS
    );
    collector = collector.restart();
    let read = sql(time_index) - before;
    assert!(
        read < RECORDS as u64 * 3 / 2,
        "search read {read} entries of the time index for {RECORDS} records"
    );

    let _ = tests::postgres::sql(
        &store,
        "ALTER TABLE events SET (autovacuum_enabled = false); \
         DELETE FROM pg_statistic WHERE starelid IN ('events'::regclass, 'chains'::regclass); \
         UPDATE pg_class SET reltuples = -1 WHERE oid IN ('events'::regclass, 'chains'::regclass)",
    );
    let blocks = sql("SELECT pg_relation_size('events') / current_setting('block_size')::BIGINT");
    for whole in [false, true] {
        let before = sql(heap);
        if whole {
            let report = verify_all(&collector).await;
            let log = report
                .logs
                .iter()
                .find(|l| l.host == HOST)
                .expect("the host's log");
            assert!(log.ok, "{report:?}");
            assert_eq!(log.leaves, RECORDS as u64, "{log:?}");
        } else {
            let verdict = verify(&collector, &chain.id).await;
            assert!(verdict.ok, "{verdict:?}");
            assert_eq!(verdict.records, RECORDS as u64);
        }
        collector = collector.restart();
        let read = sql(heap) - before;
        assert!(
            read < blocks * 3 / 2,
            "verify (whole store: {whole}) read {read} blocks of a {blocks}-block table"
        );
    }
}

/// A PostgreSQL server that may lose a commit it reported (here `synchronous_commit = off`,
/// set for the collector's sessions) is refused at start: an ack would not mean stored.
#[test]
fn a_database_that_may_lose_commits_is_refused() {
    let dir = scratch_dir("collector-not-durable");
    let url = format!(
        "{}&options=-c%20synchronous_commit%3Doff",
        tests::postgres::url(&dir.join("c.db"))
    );
    let out = tests::collector::command()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--store",
            &url,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("synchronous_commit = off"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A PostgreSQL server taking TLS only over TCP, its certificate from a CA made for the
/// test, and another CA; the CAs' certificates written to files named by `ca_pem` and
/// `other_pem`.
struct TlsStore {
    dir: tests::Scratch,
    ca: pki::Ca,
    other: pki::Ca,
    validity: pki::Validity,
    server: tests::postgres::TlsServer,
    ca_pem: String,
    other_pem: String,
}

impl TlsStore {
    /// `clients`: the server lets clients in by a certificate of the CA only.
    fn start(tag: &str, clients: bool) -> Self {
        let dir = scratch_dir(tag);
        let ca = pki::Ca::init(&dir.join("ca")).unwrap();
        let other = pki::Ca::init(&dir.join("other-ca")).unwrap();
        let validity = pki::Validity::from_now(Duration::from_hours(1));
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let cert = ca.issue_collector("db", &[], &[ip], validity).unwrap();
        let clients = clients.then(|| ca.cert_pem());
        let server = tests::postgres::TlsServer::start(&cert.cert_pem, &cert.key_pem, clients);
        server.reset();
        let this = Self {
            ca_pem: String::new(),
            other_pem: String::new(),
            dir,
            ca,
            other,
            validity,
            server,
        };
        Self {
            ca_pem: this.write("ca.pem", this.ca.cert_pem(), 0o644),
            other_pem: this.write("other.pem", this.other.cert_pem(), 0o644),
            ..this
        }
    }

    /// Writes `pem` to the file `name` with `mode`; its path.
    fn write(&self, name: &str, pem: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Starts a collector on it with `args`, has it store and verify a chain, and checks
    /// that every connection it holds is TLS; what it logged.
    async fn stores(&self, args: &[&str]) -> String {
        let collector =
            Collector::start_with(&self.dir.join("c.db"), "127.0.0.1:0".parse().unwrap(), args);
        let chain = test_chain("host-a:boot:tls", 500);
        let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
        assert_eq!(agent.ship(chain.batch(0..500)).await.unwrap(), 499);
        assert!(verify(&collector, &chain.id).await.ok);
        let (all, tls) = self.server.connections();
        assert!(all >= 1, "the collector holds a connection");
        assert_eq!(tls, all, "every connection of the collector is TLS");
        drop(agent);
        collector.stop()
    }
}

/// Runs a collector with `args`, expecting it to refuse to start; what it said.
fn refused_start(args: &[&str]) -> String {
    let mut cmd = tests::collector::command();
    cmd.args(["--listen", "127.0.0.1:0", "--insecure-plaintext"])
        .args(args);
    let out = tests::collector::exit_of(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A PostgreSQL store reached over TCP with `--store-ca` is reached over TLS only, checked:
/// against a server taking TLS only, the collector stores and verifies a chain and every
/// connection it holds is TLS; a server certificate from another CA, or one that does not
/// name the host dialled, stops the collector at start with the reason; a URL asking for
/// TLS without a CA, or for none with one, is refused before any connection. The URL's
/// password is not logged.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_store_over_tls_is_checked_against_its_ca() {
    let store = TlsStore::start("collector-store-tls", false);
    let (ca_pem, other_pem) = (store.ca_pem.as_str(), store.other_pem.as_str());
    let url = store.server.url("127.0.0.1");
    // The server trusts the role, so the password is never asked for; it must not be
    // logged either.
    let with_password = url.replace("recorder@", "recorder:pw-never-logged@");
    let log = store
        .stores(&["--store", &with_password, "--store-ca", ca_pem])
        .await;
    assert!(log.contains("recorder:***@127.0.0.1"), "{log}");
    assert!(!log.contains("pw-never-logged"), "{log}");

    let stderr = refused_start(&["--store", &url, "--store-ca", other_pem]);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    let localhost = store.server.url("localhost");
    let stderr = refused_start(&["--store", &localhost, "--store-ca", ca_pem]);
    assert!(
        stderr.contains("certificate not valid for name \"localhost\""),
        "{stderr}"
    );
    let stderr = refused_start(&["--store", &format!("{url}?sslmode=require")]);
    assert!(stderr.contains("no CA"), "{stderr}");
    let disable = format!("{url}?sslmode=disable");
    let stderr = refused_start(&["--store", &disable, "--store-ca", ca_pem]);
    assert!(stderr.contains("sslmode=disable"), "{stderr}");
}

/// A PostgreSQL store that lets a client in only by its certificate (`cert`
/// authentication) takes the collector given `--store-cert` and `--store-key`, over TLS
/// checked against `--store-ca`; without them, or with a certificate of another CA, the
/// server refuses it and the collector stops at start saying so. A certificate without its
/// key, or without a CA, or a key others may read, is refused before any connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_store_can_require_the_collectors_certificate() {
    let store = TlsStore::start("collector-store-cert", true);
    let ca_pem = store.ca_pem.as_str();
    let issue = |ca: &pki::Ca, name: &str| {
        let issued = ca
            .issue_operator("recorder", Role::Admin, store.validity)
            .unwrap();
        (
            store.write(&format!("{name}.pem"), &issued.cert_pem, 0o644),
            store.write(&format!("{name}.key"), &issued.key_pem, 0o600),
        )
    };
    let (cert, key) = issue(&store.ca, "ours");
    let (other_cert, other_key) = issue(&store.other, "theirs");
    let url = store.server.url("127.0.0.1");
    let with = |tls: &[&str]| -> Vec<String> {
        ["--store", &url]
            .iter()
            .chain(tls)
            .map(|a| (*a).to_owned())
            .collect()
    };
    let args = with(&[
        "--store-ca",
        ca_pem,
        "--store-cert",
        &cert,
        "--store-key",
        &key,
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    store.stores(&args).await;

    let refused = |tls: &[&str]| {
        let args = with(tls);
        refused_start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let stderr = refused(&["--store-ca", ca_pem]);
    assert!(
        stderr.contains("connection requires a valid client certificate"),
        "{stderr}"
    );
    let stderr = refused(&[
        "--store-ca",
        ca_pem,
        "--store-cert",
        &other_cert,
        "--store-key",
        &other_key,
    ]);
    assert!(stderr.contains("UnknownCA"), "{stderr}");
    let stderr = refused(&["--store-ca", ca_pem, "--store-cert", &cert]);
    assert!(stderr.contains("give both"), "{stderr}");
    let stderr = refused(&["--store-cert", &cert, "--store-key", &key]);
    assert!(stderr.contains("needs a CA"), "{stderr}");
    // Readable by others (the tests run as root, whose key may be its group's): refused,
    // as libpq refuses it.
    let key = store.write("ours.key", &std::fs::read_to_string(&key).unwrap(), 0o644);
    let stderr = refused(&[
        "--store-ca",
        ca_pem,
        "--store-cert",
        &cert,
        "--store-key",
        &key,
    ]);
    assert!(stderr.contains("mode 644 lets others read it"), "{stderr}");
}

/// A hundred Search calls at once are all answered, and on PostgreSQL they share at most 32
/// connections besides the writer's and the listener's (`store::postgres::READERS_MAX`,
/// docs/limits.md),
/// watched from the server's own `pg_stat_activity` while they run.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_reads_at_once_are_answered_within_the_connection_bound() {
    const READS: usize = 100;
    let dir = scratch_dir("collector-readers");
    let store = dir.join("c.db");
    let collector = Collector::start(&store);
    let chain = test_chain("host-a:boot:readers", 5000);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..5000)).await.unwrap(), 4999);

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = (backend() == Backend::Postgres).then(|| {
        let (done, store) = (std::sync::Arc::clone(&done), store.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(tests::postgres::connections(&store));
            }
            peak
        })
    });
    let client = query(&collector).await;
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..READS {
        let mut client = client.clone();
        reads.spawn(async move {
            client
                .search(SearchRequest {
                    filter: Some(chain_filter()),
                    limit: 1000,
                    ..SearchRequest::default()
                })
                .await
                .map(|page| page.into_inner().events.len())
        });
    }
    let answered = reads.join_all().await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for page in answered {
        assert_eq!(page.unwrap(), 1000);
    }
    if let Some(watcher) = watcher {
        let peak = watcher.join().unwrap();
        // The readers, the writer, and the connection that listens for other collectors.
        assert!(peak <= 34, "{peak} connections open at once");
        assert!(peak >= 2, "the reads ran while watched: {peak}");
    }
}

/// A terminal event of ALICE's session at `T0 + at_ms` milliseconds.
fn tty(at_ms: u64, device: &str, input: bool, data: &str) -> Event {
    Event {
        time_unix_nano: T0 + at_ms * 1_000_000,
        body: Some(Body::Tty(Tty {
            direction: if input { 2 } else { 1 },
            device: device.into(),
            fd: 1,
            offset: 0,
            data: data.as_bytes().to_vec().into(),
            redacted_bytes: 0,
            writes: 0,
            span_nanos: 0,
            write_bytes: Vec::new(),
            write_gap_nanos: Vec::new(),
            injected: false,
        })),
        ..event(1)
    }
}

/// The operators' `replay` (the real binary): the login terminal by default, an inner one
/// on request, typed input only with `--input` and marked apart, idle stretches capped by
/// `--max-wait`, and flags that make no sense refused before anything is asked.
#[tokio::test]
async fn replay_plays_one_terminal_and_marks_input() {
    let dir = scratch_dir("collector-replay");
    let collector = Collector::start(&dir.join("c.db"));
    let mut chain = Chain::start("host-a:boot:replay", HOST, T0);
    for event in [
        tty(0, "136:3", false, "$ "),
        tty(1, "136:3", true, "sudo id\r"),
        tty(2, "136:4", false, "uid=0(root)\n"),
        tty(3, "136:3", false, "uid=0(root)\r\n"),
        tty(2_003, "136:3", false, "$ "),
    ] {
        chain.push(&event);
    }
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..6)).await.unwrap(), 5);
    let url = collector.url();
    let key = session_key(ALICE);
    let replay = |args: &[&str]| {
        let mut all = vec!["replay", key.as_str()];
        all.extend(args);
        let out = tests::operator::run(&url, &all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, login, _) = replay(&["--speed", "0"]);
    assert!(ok);
    assert_eq!(
        login, "$ uid=0(root)\r\n$ ",
        "the login terminal, output only"
    );
    let (_, inner, _) = replay(&["--speed", "0", "--tty", "136:4"]);
    assert_eq!(inner, "uid=0(root)\n");
    let (_, typed, _) = replay(&["--speed", "0", "--input"]);
    assert_eq!(
        typed,
        "$ \u{27e6}typed: sudo id\\r\u{27e7}uid=0(root)\r\n$ "
    );
    let (_, all, _) = replay(&["--speed", "0", "--all-ttys"]);
    assert_eq!(all, "$ uid=0(root)\nuid=0(root)\r\n$ ");

    // The recording's 2 s pause is capped at 0.3 s.
    let started = std::time::Instant::now();
    let (ok, _, _) = replay(&["--max-wait", "0.3"]);
    let took = started.elapsed();
    assert!(
        ok && took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    for bad in [
        ["--speed", "1e-300"],
        ["--speed", "-1"],
        ["--speed", "NaN"],
        ["--max-wait", "inf"],
        ["--max-wait", "-1"],
    ] {
        let (ok, _, stderr) = replay(&bad);
        assert!(!ok, "{bad:?}");
        assert!(stderr.contains(bad[1]), "{bad:?}: {stderr}");
    }
}

/// A record that joins writes is replayed write by write, each at its own time; one whose
/// sizes do not add up to its bytes is replayed whole, at its time.
#[tokio::test]
async fn replay_plays_each_joined_write_at_its_own_time() {
    let dir = scratch_dir("collector-replay-parts");
    let collector = Collector::start(&dir.join("c.db"));
    let mut chain = Chain::start("host-a:boot:parts", HOST, T0);
    let joined = |at_ms: u64, data: &str, sizes: &[u32], gaps: &[u64]| {
        let mut event = tty(at_ms, "136:3", false, data);
        if let Some(Body::Tty(t)) = &mut event.body {
            t.writes = u32::try_from(sizes.len()).unwrap();
            t.span_nanos = gaps.iter().sum();
            t.write_bytes = sizes.to_vec();
            t.write_gap_nanos = gaps.to_vec();
        }
        event
    };
    // Sizes that do not add up to its bytes, 3 s apart: shown whole, with no wait.
    chain.push(&joined(0, "x-", &[1, 9], &[3_000_000_000]));
    // Its second write 600 ms after its first.
    chain.push(&joined(1, "abcd", &[2, 2], &[600_000_000]));
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..3)).await.unwrap(), 2);
    let key = session_key(ALICE);
    let started = std::time::Instant::now();
    let out = tests::operator::run(&collector.url(), &["replay", &key]);
    let took = started.elapsed();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x-abcd");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(2_500),
        "the second write of the joined record is played 600 ms after its first, and the \
         record that cannot be cut is not played at its writes' times: {took:?}"
    );
}

/// A request the collector refuses reaches the operator in the collector's words, on one
/// line, and the client exits non-zero. An unreachable collector is named with the cause
/// under it.
#[tokio::test]
async fn a_refused_request_reads_in_the_collectors_own_words() {
    let dir = scratch_dir("collector-refusal");
    let collector = Collector::start(&dir.join("c.db"));
    let out = tests::operator::run(&collector.url(), &["replay", "not-a-key"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some(
            "Error: the collector refused: \"not-a-key\" is not a session key \
             (HOST:SESSIONID:ROOT_START, as `sessions` lists them) (InvalidArgument)"
        ),
        "{stderr}"
    );
    let out = tests::operator::run(&collector.url(), &["grant", "revoke", "g-0000000000000000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "Error: the collector refused: no grant has the id \"g-0000000000000000\" (NotFound)"
        ),
        "{stderr}"
    );
    let out = tests::operator::run("http://127.0.0.1:1", &["hosts"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the collector") && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

/// An answer with nothing in it says so on standard error, and standard output stays
/// empty for the programs reading it. A reader that stops reading early (`| head`) ends the
/// client quietly with the status a shell gives SIGPIPE, never 0 and never an error line.
#[tokio::test]
async fn an_empty_answer_says_so_and_a_closed_pipe_ends_quietly() {
    let dir = scratch_dir("collector-empty");
    let collector = Collector::start(&dir.join("c.db"));
    let url = collector.url();
    for (args, said) in [
        (
            &["hosts"][..],
            "no hosts: none has shipped to this store yet",
        ),
        (&["search", "--kind", "violation"][..], "no events match"),
        (&["sessions"][..], "no sessions match"),
    ] {
        let out = tests::operator::run(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {:?}", out.stdout);
        assert_eq!(stderr.trim_end(), said, "{args:?}");
    }
    // The collector's own chain holds its start and every read above: something to print.
    let mut child = tests::operator::command(&url, None)
        .args(["search", "--since", "1h"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the operator client");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("the client ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Records 10 to 12 of a chain were lost in the agent's spool, and it declares the hole: the
/// collector stores the anchor, chains one `spool_hole` alert naming the lost seqs, goes on
/// from the anchor, and verify passes naming 3 records lost. A jump that is not declared is
/// still refused, and a declaration resent is acknowledged again without a second alert.
#[tokio::test]
async fn a_declared_spool_hole_is_chained_and_named_by_verify() {
    let dir = scratch_dir("collector-hole");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:hole", 30);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..10)).await.unwrap(), 9);
    let refused = agent.ship(chain.batch(13..20)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");

    let hole = SpoolHole {
        chain_id: chain.id.clone(),
        anchor: chain.batch(13..14).events.pop(),
        skipped_bytes: 777,
        cause: "corrupt".into(),
    };
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.hole(hole.clone()).await.unwrap(), 13);
    assert_eq!(agent.ship(chain.batch(14..30)).await.unwrap(), 29);
    assert_eq!(
        agent.hole(hole).await.unwrap(),
        13,
        "a resend is acked again"
    );

    let alerts = search_all(
        &collector,
        Filter {
            kinds: vec!["alert".into()],
            ..Filter::default()
        },
        10,
    )
    .await;
    assert_eq!(alerts.len(), 1, "one alert: {alerts:?}");
    let Some(Body::Alert(alert)) = alerts[0].event.clone().unwrap().body else {
        panic!("not an alert: {:?}", alerts[0]);
    };
    let declared = alert.hole.unwrap();
    assert_eq!(
        (
            alert.kind.as_str(),
            alert.seq,
            declared.first_lost,
            declared.skipped_bytes
        ),
        ("spool_hole", 13, 10, 777)
    );
    let verdict = verify(&collector, &chain.id).await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!((verdict.lost, verdict.records), (3, 27));
    let all = verify_all(&collector).await;
    assert!(all.findings.is_empty(), "{all:?}");
    assert!(all.chains.iter().all(|c| c.ok), "{all:?}");
    assert!(all.logs.iter().all(|l| l.ok), "{all:?}");
}

/// The collector's store on a 2 MiB tmpfs fills up while an agent streams: ingest answers
/// `RESOURCE_EXHAUSTED` and acknowledges nothing it could not keep, the collector keeps
/// serving, what it holds verifies, and once the filesystem grows the agent resumes from the
/// head it is welcomed with and every record is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_disk_refuses_then_takes_everything() {
    const BATCH: u64 = 100;
    // A file on a small filesystem of the test's own: PostgreSQL's disk is its server's.
    if backend() == Backend::Postgres
        || !privileged("a_full_store_disk_refuses_then_takes_everything")
    {
        return;
    }
    let dir = scratch_dir("collector-full");
    let disk = Mount::tmpfs(&dir.join("disk"), "2m");
    let collector = Collector::start(&disk.target.join("c.db"));
    let chain = test_chain("host-a:boot:full", 40_000);
    let len = chain.records.len() as u64;
    let batch = |from: u64| chain.batch(from as usize..(from + BATCH).min(len) as usize);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let mut acked = 0;
    let refused = loop {
        assert!(
            acked < len,
            "40,000 records fit in 2 MiB: the test needs more"
        );
        match agent.ship(batch(acked)).await {
            Ok(seq) => acked = seq + 1,
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("disk is full"), "{refused}");
    eprintln!("the disk filled after {acked} records: {refused}");

    let (_, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(
        welcome.heads[0].next_seq, acked,
        "the store holds exactly what was acknowledged"
    );
    // Every read is recorded, and recording needs space: while the disk is full a read is
    // either answered (the WAL had room left) or refused with the reason, never half-done.
    let read = try_verify(&collector, &chain.id).await;
    if let Ok(verdicts) = &read {
        assert!(verdicts.len() == 1 && verdicts[0].ok, "{verdicts:?}");
        assert_eq!(verdicts[0].records, acked, "{verdicts:?}");
    }
    if let Err(status) = read {
        eprintln!("a read while the disk is full: {status}");
        assert_eq!(status.code(), Code::Unavailable, "{status}");
        assert!(
            status.message().contains("the read cannot be recorded"),
            "{status}"
        );
    }

    disk.resize("64m");
    let held = verify(&collector, &chain.id).await;
    assert!(held.ok, "{held:?}");
    assert_eq!(
        held.records, acked,
        "the store holds exactly what was acked"
    );
    let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let mut next = welcome.heads[0].next_seq;
    while next < len {
        next = agent.ship(batch(next)).await.unwrap() + 1;
    }
    let all = verify(&collector, &chain.id).await;
    assert!(all.ok, "{all:?}");
    assert_eq!(all.records, len, "every record stored once");
}

/// `Hosts` names a host as its newest stored `ChainStart` does; until one is stored, as its
/// Hello said. The chained name outranks the unsigned one.
#[tokio::test]
async fn a_hosts_name_is_the_one_its_chain_says() {
    let dir = scratch_dir("collector-names");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-a:boot:names", 10);
    let hello = Hello {
        host: HOST.into(),
        chain_ids: vec![chain.id.clone()],
        host_name: "said-in-hello".into(),
        ..Hello::default()
    };
    let (mut agent, _) = Agent::try_connect(&collector, As::Agent(HOST), hello)
        .await
        .unwrap();
    let mut client = query(&collector).await;
    let mut name = async || {
        let hosts = client.hosts(HostsRequest {}).await.unwrap().into_inner();
        let host = hosts.hosts.into_iter().find(|h| h.host == HOST).unwrap();
        host.name
    };
    assert_eq!(name().await, "said-in-hello");
    assert_eq!(agent.ship(chain.batch(0..10)).await.unwrap(), 9);
    assert_eq!(name().await, format!("name-of-{HOST}"));
}
