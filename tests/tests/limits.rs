//! Collector tier, resource limits (docs/limits.md): the real collector binary over mutual
//! TLS with a real `SQLite` store, and the real operators' client. Search and Sessions come
//! in bounded pages; connections over the per-address and total limits are closed as they
//! are accepted; calls past a connection's stream limit wait; Welcome reads only the
//! connecting host's chains. No root needed.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use prost::Message as _;
use proto::v1::{
    Event, Exec, Filter, HostsRequest, Identity, Process, ReplayRequest, SearchRequest,
    SessionRoot, SessionsRequest, TailRequest, Tty, event::Body, identity::Kind,
};
use tests::collector::{Collector, scratch_dir};
use tests::grpc::{Agent, Chain, query};
use tokio::{io::AsyncReadExt as _, net::TcpSocket};
use tonic::Code;

const HOST: &str = "host-a";
const T0: u64 = 1_800_000_000_000_000_000;
/// The most bytes a Search or Sessions response carries.
const PAGE_BYTES: usize = 3 << 20;

/// An exec of audit session `sessionid` (its root started at `T0 - sessionid`), at
/// `T0 + sessionid` µs: each session's first event, in the order of their ids.
fn session_exec(sessionid: u32) -> Event {
    Event {
        time_unix_nano: T0 + u64::from(sessionid) * 1_000,
        process: Some(Process {
            pid: 1000 + sessionid,
            tgid: 1000 + sessionid,
            sessionid: Some(sessionid),
            loginuid: Some(1000),
            tty: "136:1".into(),
            comm: "bash".into(),
            ..Process::default()
        }),
        identity: Some(Identity {
            kind: Kind::Human.into(),
            name: format!("user-{sessionid}"),
            ..Identity::default()
        }),
        session_root: Some(SessionRoot {
            pid: 1000 + sessionid,
            start_unix_nano: T0 - u64::from(sessionid),
        }),
        body: Some(Body::Exec(Exec {
            filename: "/bin/true".into(),
            ..Exec::default()
        })),
    }
}

fn session_key(sessionid: u32) -> String {
    format!("{HOST}:{sessionid}:{}", T0 - u64::from(sessionid))
}

/// Every page of Sessions from the first, `limit` asked for each: the keys of each page.
async fn session_pages(collector: &Collector, limit: u32) -> Vec<Vec<String>> {
    let mut client = query(collector).await;
    let (mut pages, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client
            .sessions(SessionsRequest {
                limit,
                page_token,
                ..SessionsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.encoded_len() <= PAGE_BYTES);
        pages.push(page.sessions.into_iter().map(|s| s.key).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

/// 1,100 sessions: pages of 100 by default and at most 1,000, each session once and in order
/// across pages; `recorder sessions` stops at its --limit and says how to go on, and follows
/// the collector's pages up to it.
#[tokio::test]
async fn sessions_come_in_bounded_pages_each_once() {
    const SESSIONS: u32 = 1100;
    let dir = scratch_dir("limits-sessions");
    let collector = Collector::start(&dir.join("c.db"));
    let mut chain = Chain::start("host-a:boot:sessions", HOST, T0);
    for sessionid in 1..=SESSIONS {
        chain.push(&session_exec(sessionid));
    }
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let len = chain.records.len();
    assert_eq!(
        agent.ship(chain.batch(0..len)).await.unwrap(),
        len as u64 - 1
    );
    let all: Vec<String> = (1..=SESSIONS).map(session_key).collect();

    let pages = session_pages(&collector, 0).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [100; 11],
        "100 a page unless asked"
    );
    assert_eq!(pages.concat(), all, "every session once, in order");
    let pages = session_pages(&collector, 1_000_000).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [1000, 100]);
    assert_eq!(pages.concat(), all);
    let pages = session_pages(&collector, 7).await;
    assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 7));
    assert_eq!(pages.concat(), all);

    let refused = query(&collector)
        .await
        .sessions(SessionsRequest {
            page_token: "not a token".into(),
            ..SessionsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    let url = collector.url();
    let listed = |args: &[&str]| {
        let out = tests::operator::run(&url, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let keys: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let session: serde_json::Value = serde_json::from_str(l).unwrap();
                session["key"].as_str().unwrap().to_owned()
            })
            .collect();
        (keys, String::from_utf8(out.stderr).unwrap())
    };
    let (first, said) = listed(&["sessions", "--json"]);
    assert_eq!(first, all[..1000], "--limit 1000 by default");
    let token = said
        .split("--page-token ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no token in {said:?}"));
    assert!(said.contains("more sessions match"), "{said}");
    let (rest, said) = listed(&["sessions", "--json", "--page-token", token]);
    assert_eq!(rest, all[1000..]);
    assert!(said.is_empty(), "{said}");
    let (everything, said) = listed(&["sessions", "--json", "--limit", "5000"]);
    assert_eq!(everything, all, "two of the collector's pages, followed");
    assert!(said.is_empty(), "{said}");
}

/// A terminal write of `bytes` bytes at `T0 + n` µs, in audit session 7.
fn large_output(n: u64, bytes: usize) -> Event {
    Event {
        time_unix_nano: T0 + n * 1_000,
        body: Some(Body::Tty(Tty {
            direction: 1,
            device: "136:1".into(),
            fd: 1,
            offset: 0,
            data: vec![b'a' + n as u8; bytes].into(),
            redacted_bytes: 0,
            writes: 0,
            span_nanos: 0,
            write_bytes: Vec::new(),
            write_gap_nanos: Vec::new(),
            injected: false,
        })),
        ..session_exec(7)
    }
}

/// Eight events of 900 kB: a Search page ends before the event that would take it past
/// 3 MiB, with a token, whatever the limit asked; following the tokens yields every event
/// once. Tail and Replay read them in bounded pages too, and miss none.
#[tokio::test]
async fn search_pages_stop_at_their_bytes_and_miss_nothing() {
    let dir = scratch_dir("limits-search");
    let collector = Collector::start(&dir.join("c.db"));
    let mut chain = Chain::start("host-a:boot:large", HOST, T0);
    for n in 1..=8 {
        chain.push(&large_output(n, 900_000));
    }
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..9)).await.unwrap(), 8);

    let mut client = query(&collector).await;
    let (mut pages, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client
            .search(SearchRequest {
                filter: Some(Filter {
                    host: HOST.into(),
                    ..Filter::default()
                }),
                limit: 10_000,
                page_token,
                ..SearchRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.encoded_len() <= PAGE_BYTES, "{}", page.encoded_len());
        pages.push(page.events.iter().map(|e| e.seq).collect::<Vec<_>>());
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        pages,
        [vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8]],
        "three of 900 kB fit in 3 MiB, four do not"
    );

    let mut tail = client
        .tail(TailRequest {
            filter: Some(Filter {
                host: HOST.into(),
                ..Filter::default()
            }),
            since_unix_nano: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut tailed = Vec::new();
    while tailed.len() < 9 {
        let stored = tokio::time::timeout(Duration::from_secs(10), tail.message())
            .await
            .expect("tail delivers within 10 s")
            .unwrap()
            .unwrap();
        tailed.push(stored.seq);
    }
    assert_eq!(tailed, (0..9).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), tail.message())
            .await
            .is_err(),
        "nothing twice"
    );

    let mut replay = client
        .replay(ReplayRequest {
            session: session_key(7),
            ..ReplayRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    while let Some(stored) = replay.message().await.unwrap() {
        replayed.push(stored.seq);
    }
    assert_eq!(replayed, (1..9).collect::<Vec<_>>());
}

/// What became of a TCP connection the collector accepted.
enum Fate {
    /// Closed at once, before any handshake.
    Closed,
    /// Still open, waiting for its TLS handshake.
    Held(tokio::net::TcpStream),
}

/// Connects from `from` (any loopback address is this host's) and waits up to 3 s, well
/// within the 10 s handshake timeout, for the collector to close the connection.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> Fate {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let mut byte = [0; 1];
    match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte)).await {
        Err(_) => Fate::Held(stream),
        Ok(Ok(0) | Err(_)) => Fate::Closed,
        Ok(Ok(_)) => panic!("the collector spoke before the client's hello"),
    }
}

/// With at most 2 connections from one address and 3 in all: a third from the same address
/// is closed as it is accepted, one from another address is held, and past 3 in all
/// another is closed; the operators' client says it cannot reach the collector; the
/// connections held go on serving, and once they close, new ones are served again.
#[tokio::test]
async fn connections_past_the_limits_are_closed_at_accept() {
    let dir = scratch_dir("limits-connections");
    let extra = ["--max-connections", "3", "--max-connections-per-peer", "2"];
    let collector = Collector::start_with(
        &dir.join("c.db"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &extra,
    );
    let mut first = query(&collector).await;
    let mut second = query(&collector).await;
    for client in [&mut first, &mut second] {
        client.hosts(HostsRequest {}).await.unwrap();
    }
    let local = Ipv4Addr::LOCALHOST;
    assert!(
        matches!(connect_from(local, collector.addr).await, Fate::Closed),
        "a third connection from 127.0.0.1 is closed"
    );
    let refused = tests::operator::run(&collector.url(), &["hosts"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("cannot reach the collector"), "{said}");
    let Fate::Held(other) = connect_from(Ipv4Addr::new(127, 0, 0, 2), collector.addr).await else {
        panic!("a connection from another address was closed under the total");
    };
    assert!(
        matches!(
            connect_from(Ipv4Addr::new(127, 0, 0, 3), collector.addr).await,
            Fate::Closed
        ),
        "a fourth connection in all is closed"
    );
    for client in [&mut first, &mut second] {
        client.hosts(HostsRequest {}).await.unwrap();
    }
    drop((first, second, other));
    // The collector gives their places back once it sees them closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !tests::operator::run(&collector.url(), &["hosts"])
        .status
        .success()
    {
        assert!(tokio::time::Instant::now() < deadline, "not served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        collector.stderr().contains("connection closed at accept"),
        "{}",
        collector.stderr()
    );
}

/// With 2 calls at once on a connection, a third on it waits until one of them ends.
#[tokio::test]
async fn a_call_past_the_stream_limit_waits_for_one_to_end() {
    let dir = scratch_dir("limits-streams");
    let collector = Collector::start_with(
        &dir.join("c.db"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &["--max-streams-per-connection", "2"],
    );
    let mut client = query(&collector).await;
    let follow = TailRequest::default();
    let first = client.tail(follow.clone()).await.unwrap().into_inner();
    let _second = client.tail(follow).await.unwrap().into_inner();
    let mut third = client.clone();
    let hosts = tokio::spawn(async move { third.hosts(HostsRequest {}).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!hosts.is_finished(), "a third call ran beside two");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(10), hosts)
        .await
        .expect("the third call runs once one ends")
        .unwrap();
    answered.unwrap();
}

/// Welcome names the heads of the connecting host's chains only: among forty hosts' chains,
/// a chain of another host named in a Hello is answered as empty (here over plaintext,
/// where no certificate stops a host from naming it).
#[tokio::test]
async fn welcome_answers_from_the_hosts_own_chains() {
    let dir = scratch_dir("limits-welcome");
    let collector = Collector::start_with(
        &dir.join("c.db"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &["--insecure-plaintext"],
    );
    let mut chains = Vec::new();
    for h in 0..40 {
        let host = format!("host-{h:02}");
        let mut chain = Chain::start(&format!("{host}:boot:1"), &host, T0);
        for n in 0..h {
            chain.push(&large_output(n, 10));
        }
        let (mut agent, _) = Agent::connect(&collector, &host, &[chain.id.as_str()]).await;
        let len = chain.records.len();
        assert_eq!(
            agent.ship(chain.batch(0..len)).await.unwrap(),
            len as u64 - 1
        );
        chains.push(chain);
    }
    let (own, other) = (&chains[7], &chains[8]);
    let named = [own.id.as_str(), other.id.as_str(), "host-07:boot:2"];
    let (_, welcome) = Agent::connect(&collector, "host-07", &named).await;
    let heads: Vec<(&str, u64, &[u8])> = welcome
        .heads
        .iter()
        .map(|h| (h.chain_id.as_str(), h.next_seq, h.head_hash.as_slice()))
        .collect();
    assert_eq!(
        heads,
        [
            (own.id.as_str(), 8, own.head(8).as_slice()),
            (other.id.as_str(), 0, [].as_slice()),
            ("host-07:boot:2", 0, [].as_slice()),
        ]
    );
    let (_, welcome) = Agent::connect(&collector, "host-08", &[other.id.as_str()]).await;
    assert_eq!(welcome.heads[0].next_seq, 9, "its own host is answered");
}
