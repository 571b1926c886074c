//! Trust II at the collector tier (docs/evidence.md): a real collector process, over mutual
//! TLS, witnesses a host's signed checkpoints, and its verify catches what a database admin
//! can do to the store: every attack here must be found.

use std::{path::Path, path::PathBuf};

use proto::{
    chain::chain_hash,
    v1::{Checkpoint, Event, Exec, Filter, LogVerdict, Process, VerifyResponse, event::Body},
};
use tests::collector::{Collector, same_pki, scratch_dir};
use tests::grpc::{Agent, Chain, search_all, verify_all};
use tests::python::{generate_protos, python_ready, python_verify};
use tlog::{CompactRange, CosignatureVerifier, Signer};
use tonic::Code;

const HOST: &str = "host-e";
const T0: u64 = 1_800_000_000_000_000_000;

fn exec(n: u64) -> Event {
    Event {
        time_unix_nano: T0 + n,
        process: Some(Process {
            pid: 1000 + u32::try_from(n).unwrap(),
            ..Process::default()
        }),
        body: Some(Body::Exec(Exec {
            filename: "/usr/bin/true".into(),
            argv: vec![format!("true {n}").into_bytes().into()],
            ..Exec::default()
        })),
        ..Event::default()
    }
}

fn test_chain(id: &str, len: u64) -> Chain {
    let mut chain = Chain::start(id, HOST, T0);
    for n in 1..len {
        chain.push(&exec(n));
    }
    chain
}

/// The host's agent as far as its log goes: its enrolled key, under its log's name, and the
/// leaves it has appended.
struct HostLog {
    signer: Signer,
    range: CompactRange,
}

impl HostLog {
    fn of(collector: &Collector, host: &str) -> Self {
        let dir = collector.pki.as_ref().unwrap().agent(host);
        let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let key = std::fs::read_to_string(dir.join("agent.key")).unwrap();
        let name = pki::host_log(&pki::deployment_id(&ca).unwrap(), host);
        let seed = pki::ed25519_seed_from_pkcs8_pem(&key).unwrap();
        Self {
            signer: Signer::from_seed(&name, seed).unwrap(),
            range: CompactRange::new(),
        }
    }

    fn append(&mut self, chain: &Chain, range: std::ops::Range<usize>) {
        for r in &chain.records[range] {
            let hash: [u8; 32] = r.hash.as_slice().try_into().unwrap();
            self.range.append(tlog::leaf_hash(&hash)).unwrap();
        }
    }

    /// A signed checkpoint of the leaves appended, extending `old_size`.
    fn checkpoint(&self, old_size: u64) -> Checkpoint {
        self.checkpoint_of(self.range.size(), self.range.root(), old_size)
    }

    fn checkpoint_of(&self, size: u64, root: tlog::Hash, old_size: u64) -> Checkpoint {
        let body = tlog::Checkpoint::new(self.signer.name(), size, root).unwrap();
        Checkpoint {
            note: tlog::sign_checkpoint(&self.signer, &body)
                .unwrap()
                .to_text(),
            old_size,
        }
    }
}

/// The witness key the collector's Welcome names, checked against the CA.
fn witness_of(collector: &Collector, welcome: &proto::v1::Welcome) -> CosignatureVerifier {
    let ca = std::fs::read_to_string(collector.pki.as_ref().unwrap().ca_pem()).unwrap();
    let log = welcome
        .log
        .as_ref()
        .expect("the Welcome names the host's log");
    let info = pki::verify_cert(&ca, &log.witness_cert_pem, None).unwrap();
    let pki::Peer::Witness { name } = &info.peer else {
        panic!("{}", info.peer)
    };
    let name = pki::witness_key(&pki::deployment_id(&ca).unwrap(), name);
    CosignatureVerifier::from_public_key(&name, &info.ed25519_public_key.unwrap()).unwrap()
}

/// The stored events of `kind`.
async fn of_kind(collector: &Collector, kind: &str) -> Vec<proto::v1::StoredEvent> {
    let filter = Filter {
        kinds: vec![kind.into()],
        ..Filter::default()
    };
    search_all(collector, filter, 100).await
}

/// The verdict on the host's chain, among the collector's own and the host's.
fn host_chain(report: &VerifyResponse) -> &proto::v1::ChainVerdict {
    report
        .chains
        .iter()
        .find(|c| c.host == HOST)
        .unwrap_or_else(|| panic!("no verdict on {HOST}'s chain: {report:?}"))
}

/// Whether verify found something of a subject beginning `subject`, for a reason holding
/// `reason`.
fn found(report: &VerifyResponse, subject: &str, reason: &str) -> bool {
    report
        .findings
        .iter()
        .any(|f| f.subject.starts_with(subject) && f.reason.contains(reason))
}

fn log_of<'a>(report: &'a VerifyResponse, host: &str) -> &'a LogVerdict {
    report
        .logs
        .iter()
        .find(|l| l.host == host)
        .unwrap_or_else(|| panic!("no verdict on {host}'s log: {report:?}"))
}

/// `recorder verify --local` (with `extra` arguments) against `collector`: whether it
/// passed, and what it printed.
fn verify_local(collector: &Collector, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["verify", "--local"];
    args.extend_from_slice(extra);
    let out = tests::operator::run(&collector.url(), &args);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// The collector cosigns a host's checkpoint whose root its stored leaves give, after the
/// records it covers; the cosignature verifies under the witness certificate of the
/// Welcome; verify checks both signatures and the root.
#[tokio::test]
async fn a_host_checkpoint_is_cosigned_and_verified() {
    let dir = scratch_dir("evidence-cosign");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-e:boot:1", 100);
    let (mut agent, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let witness = witness_of(&collector, &welcome);
    let state = welcome.log.as_ref().unwrap();
    assert_eq!((state.size, state.cosigned.as_str()), (0, ""));
    let mut log = HostLog::of(&collector, HOST);
    assert_eq!(state.origin, log.signer.name());

    assert_eq!(agent.ship(chain.batch(0..100)).await.unwrap(), 99);
    log.append(&chain, 0..100);
    agent.checkpoint(log.checkpoint(0)).await;
    let answer = agent.checkpoint_ack().await.unwrap();
    assert_eq!((answer.size, answer.cosigned_size), (100, 100));
    assert!(answer.refused.is_empty(), "{answer:?}");
    let signed = tlog::open_checkpoint(answer.cosigned.as_bytes(), &log.signer.verifier()).unwrap();
    witness
        .verify_in_note(&signed.note, &signed.checkpoint)
        .expect("the collector's cosignature verifies");

    // The next checkpoint must extend the cosigned one; an idle one of the same size is
    // cosigned again, with a fresh timestamp.
    agent.checkpoint(log.checkpoint(0)).await;
    let refused = agent.checkpoint_ack().await.unwrap();
    assert!(refused.cosigned.is_empty());
    assert_eq!(refused.cosigned_size, 100, "{refused:?}");
    assert!(refused.refused.contains("100"), "{refused:?}");
    agent.checkpoint(log.checkpoint(100)).await;
    assert!(!agent.checkpoint_ack().await.unwrap().cosigned.is_empty());

    let report = verify_all(&collector).await;
    assert!(report.ok, "{report:?}");
    let verdict = log_of(&report, HOST);
    assert_eq!(
        (verdict.leaves, verdict.attested_size, verdict.checkpoints),
        (100, 100, 2)
    );

    // A reconnecting agent is told where its log stands.
    drop(agent);
    let (_, welcome) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let state = welcome.log.unwrap();
    assert_eq!(state.size, 100);
    let frontier: Vec<[u8; 32]> = state
        .frontier
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    assert_eq!(
        CompactRange::from_frontier(100, &frontier).unwrap().root(),
        log.range.root()
    );
    assert!(
        state
            .cosigned
            .starts_with(&format!("{}\n100\n", log.signer.name()))
    );
}

/// The witness rules, each attacked: another host's key, a size the collector does not
/// hold, a root its leaves do not give (a fork, kept and alerted), a second root for a
/// cosigned size, and an old spool replayed from a copied host.
#[tokio::test]
async fn the_witness_refuses_what_the_rules_refuse() {
    let dir = scratch_dir("evidence-witness");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-e:boot:2", 50);
    let mut log = HostLog::of(&collector, HOST);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    agent.ship(chain.batch(0..50)).await.unwrap();
    log.append(&chain, 0..50);

    // Signed by another host's key, under this host's log name.
    let other = HostLog::of(&collector, "host-other");
    let forged = Signer::from_seed(log.signer.name(), other.signer.seed()).unwrap();
    let forged = HostLog {
        signer: forged,
        range: log.range.clone(),
    };
    agent.checkpoint(forged.checkpoint(0)).await;
    let status = agent.checkpoint_ack().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // More leaves than stored.
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    agent
        .checkpoint(log.checkpoint_of(51, log.range.root(), 0))
        .await;
    let status = agent.checkpoint_ack().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("holds 50"), "{status:?}");

    // A root the stored leaves do not give: a fork.
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    agent.checkpoint(log.checkpoint_of(50, [7; 32], 0)).await;
    let status = agent.checkpoint_ack().await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // The honest one is cosigned; then a second root for its size is a fork too.
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    agent.checkpoint(log.checkpoint(0)).await;
    assert!(!agent.checkpoint_ack().await.unwrap().cosigned.is_empty());
    agent.checkpoint(log.checkpoint_of(50, [9; 32], 50)).await;
    let status = agent.checkpoint_ack().await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // A copied host replaying its old spool: a checkpoint below the cosigned size.
    let mut old = HostLog::of(&collector, HOST);
    old.append(&chain, 0..30);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(
        agent.ship(chain.batch(0..30)).await.unwrap(),
        29,
        "a resend is acked"
    );
    agent.checkpoint(old.checkpoint(50)).await;
    let status = agent.checkpoint_ack().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Both forks are kept and alerted; the forged and refused ones changed nothing.
    let alerts = of_kind(&collector, "alert").await;
    let forks = alerts
        .iter()
        .filter(|a| matches!(&a.event.as_ref().unwrap().body, Some(Body::Alert(x)) if x.kind == "checkpoint_fork"))
        .count();
    assert_eq!(forks, 2, "{alerts:?}");
    drop(collector.stop());
    let conn = rusqlite::Connection::open(dir.join("c.db")).unwrap();
    let kept: i64 = conn
        .query_row("SELECT COUNT(*) FROM checkpoint_forks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 2);
    let cosigned: Vec<i64> = conn
        .prepare("SELECT size FROM log_checkpoints")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(cosigned, [50]);
}

/// A stopped store of 1,000 records of one chain with a cosigned checkpoint at 1,000.
async fn stored_log(dir: &Path, chain: &Chain) -> PathBuf {
    let path = dir.join("pristine.db");
    let collector = Collector::start(&path);
    let mut log = HostLog::of(&collector, HOST);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..1000)).await.unwrap(), 999);
    log.append(chain, 0..1000);
    agent.checkpoint(log.checkpoint(0)).await;
    assert!(!agent.checkpoint_ack().await.unwrap().cosigned.is_empty());
    let grant = tests::operator::run(
        &collector.url(),
        &[
            "grant", "create", "--user", "alice", "--ttl", "1h", "--reason", "CHG-1",
        ],
    );
    assert!(grant.status.success(), "{grant:?}");
    let report = verify_all(&collector).await;
    assert!(report.ok, "{report:?}");
    drop(collector.stop());
    path
}

/// Copies the store (with its WAL) to a fresh file served with the same PKI, and lets
/// `tamper` at it.
fn tampered(pristine: &Path, name: &str, tamper: impl FnOnce(&rusqlite::Connection)) -> PathBuf {
    let copy = pristine.with_file_name(name);
    for suffix in ["", "-wal", "-shm"] {
        let from = format!("{}{suffix}", pristine.display());
        if Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{suffix}", copy.display())).unwrap();
        }
    }
    same_pki(pristine, &copy);
    tamper(&rusqlite::Connection::open(&copy).unwrap());
    copy
}

const ROWS: &str = "(SELECT id FROM chains WHERE chain_id = 'host-e:boot:3')";

fn event_at(conn: &rusqlite::Connection, seq: u64) -> Vec<u8> {
    conn.query_row(
        &format!("SELECT event FROM events WHERE chain = {ROWS} AND seq = ?1"),
        [seq],
        |r| r.get(0),
    )
    .unwrap()
}

/// Rewrites seq 500 and recomputes every hash from there, as docs/chain.md says, with the
/// head to match: a chain that verifies on its own.
fn rewrite_from_500(conn: &rusqlite::Connection) {
    let mut prev: [u8; 32] = conn
        .query_row(
            &format!("SELECT hash FROM events WHERE chain = {ROWS} AND seq = 499"),
            [],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .unwrap()
        .try_into()
        .unwrap();
    for seq in 500..1000 {
        let mut event = event_at(conn, seq);
        if seq == 500 {
            event = prost::Message::encode_to_vec(&exec(123_456));
        }
        let hash = chain_hash("host-e:boot:3", seq, &prev, &event);
        conn.execute(
            &format!("UPDATE events SET event = ?1, hash = ?2 WHERE chain = {ROWS} AND seq = ?3"),
            rusqlite::params![event, &hash[..], seq],
        )
        .unwrap();
        prev = hash;
    }
    conn.execute(
        &format!("UPDATE chains SET head_hash = ?1 WHERE id = {ROWS}"),
        [&prev[..]],
    )
    .unwrap();
}

/// Makes the stored grant end a day later, in both its columns and its body.
fn extend_the_grant(conn: &rusqlite::Connection) {
    conn.execute_batch("UPDATE grants SET ends = ends + 86400000000000;")
        .unwrap();
    let mut body: Vec<u8> = conn
        .query_row("SELECT body FROM grants", [], |r| r.get(0))
        .unwrap();
    let mut grant: proto::v1::Grant = prost::Message::decode(body.as_slice()).unwrap();
    grant.expires_at_unix_nano += 86_400_000_000_000;
    body = prost::Message::encode_to_vec(&grant);
    conn.execute("UPDATE grants SET body = ?1", [body]).unwrap();
}

/// What a database admin can do to the store, and what verify says of it: each is found,
/// by the chain, the log or a finding, naming what is at fault.
#[tokio::test]
async fn verify_finds_what_an_admin_does_to_the_store() {
    let dir = scratch_dir("evidence-tamper");
    let chain = test_chain("host-e:boot:3", 1000);
    let pristine = stored_log(&dir, &chain).await;
    let root_mismatch = "do not give the signed root of size 1000";

    // One flipped byte: the chain names its seq, and the root no longer matches.
    let copy = tampered(&pristine, "flipped.db", |conn| {
        let mut event = event_at(conn, 500);
        event[5] ^= 0x01;
        conn.execute(
            &format!("UPDATE events SET event = ?1 WHERE chain = {ROWS} AND seq = 500"),
            [event],
        )
        .unwrap();
    });
    let report = verify_all(&Collector::start(&copy)).await;
    assert!(!report.ok);
    assert_eq!(host_chain(&report).first_bad_seq, Some(500), "{report:?}");
    assert!(
        log_of(&report, HOST).reason.contains(root_mismatch),
        "{report:?}"
    );

    // The last 100 records deleted, and the chains table made to match: the signed
    // checkpoint still tells.
    let copy = tampered(&pristine, "truncated.db", |conn| {
        conn.execute_batch(&format!(
            "DELETE FROM events WHERE chain = {ROWS} AND seq >= 900;
             UPDATE chains SET next_seq = 900, head_hash = (SELECT hash FROM events
               WHERE chain = {ROWS} AND seq = 899) WHERE id = {ROWS};"
        ))
        .unwrap();
    });
    let report = verify_all(&Collector::start(&copy)).await;
    assert!(
        host_chain(&report).ok,
        "the chain alone is consistent: {report:?}"
    );
    let log = log_of(&report, HOST);
    assert!(
        !log.ok && log.reason.contains("stored 900, attested 1000"),
        "{log:?}"
    );
    assert!(!report.ok);

    // A record rewritten and every hash after it recomputed as docs/chain.md says: the
    // chain verifies, the host's signature over the root does not.
    let copy = tampered(&pristine, "rewritten.db", rewrite_from_500);
    let report = verify_all(&Collector::start(&copy)).await;
    assert!(host_chain(&report).ok, "{report:?}");
    assert!(
        log_of(&report, HOST).reason.contains(root_mismatch),
        "{report:?}"
    );
    assert!(!report.ok);

    // A derived column changed: the kind (hiding a record from kind searches) and the
    // identity name.
    for (name, set) in [
        ("kind.db", "kind = 'fork'"),
        ("identity.db", "identity_name = 'mallory'"),
    ] {
        let copy = tampered(&pristine, name, |conn| {
            conn.execute_batch(&format!(
                "UPDATE events SET {set} WHERE chain = {ROWS} AND seq = 10;"
            ))
            .unwrap();
        });
        let report = verify_all(&Collector::start(&copy)).await;
        assert!(!report.ok, "{name}");
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.subject == format!("chain {} seq 10", chain.id)),
            "{name}: {report:?}"
        );
    }

    // A grant row edited to last longer.
    let copy = tampered(&pristine, "grant.db", extend_the_grant);
    let report = verify_all(&Collector::start(&copy)).await;
    assert!(!report.ok);
    assert!(
        found(&report, "grant ", "differs from its chained grant changes"),
        "{report:?}"
    );

    // And the operator's command fails on it, naming the log.
    let collector = Collector::start(&copy);
    let cli = tests::operator::run(&collector.url(), &["verify"]);
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(!cli.status.success(), "{printed}");
    assert!(printed.contains("FAIL  grant "), "{printed}");

    let report = verify_all(&Collector::start(&pristine)).await;
    assert!(report.ok, "{report:?}");
}

/// Whole chains and whole hosts deleted from the store are found: by the host's signed
/// log, and, when that is deleted too, by the collector's chain.
#[tokio::test]
async fn verify_finds_deleted_chains_and_hosts() {
    let dir = scratch_dir("evidence-deleted");
    let chain = test_chain("host-e:boot:3", 1000);
    let pristine = stored_log(&dir, &chain).await;
    // The whole chain deleted.
    let copy = tampered(&pristine, "deleted.db", |conn| {
        conn.execute_batch(&format!(
            "DELETE FROM events WHERE chain = {ROWS}; DELETE FROM chains WHERE id = {ROWS};"
        ))
        .unwrap();
    });
    let report = verify_all(&Collector::start(&copy)).await;
    assert!(report.chains.iter().all(|c| c.chain_id != chain.id));
    let log = log_of(&report, HOST);
    assert!(
        !log.ok && log.reason.contains("stored 0, attested 1000"),
        "{log:?}"
    );

    // The host deleted whole: its records, chains, log and checkpoints. The collector's
    // chain still says it cosigned the host's log.
    let copy = tampered(&pristine, "host.db", |conn| {
        conn.execute_batch(
            "DELETE FROM events WHERE host = 'host-e' AND log_index IS NOT NULL;
             DELETE FROM chains WHERE host = 'host-e'; DELETE FROM logs;
             DELETE FROM log_checkpoints;",
        )
        .unwrap();
    });
    let report = verify_all(&Collector::start(&copy)).await;
    assert!(report.logs.is_empty(), "{report:?}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.subject == format!("host {HOST}") && f.reason.contains("deleted")),
        "{report:?}"
    );
}

/// A chain whose first records predate its host's log, as in a store kept from before
/// host logs: verify walks those as the chain's records only, then each later one once as
/// both the chain's next record and a leaf. Had the log's walk fed the chain's without
/// them, the chain would fail at seq 0.
#[tokio::test]
async fn a_chain_that_begins_before_its_hosts_log_verifies() {
    let dir = scratch_dir("evidence-predates");
    let chain = test_chain("host-e:boot:3", 1000);
    let pristine = stored_log(&dir, &chain).await;
    let copy = tampered(&pristine, "predates.db", |conn| {
        conn.execute_batch(&format!(
            "UPDATE events SET log_index = NULL WHERE chain = {ROWS} AND seq < 10;
             UPDATE events SET log_index = log_index - 10 WHERE chain = {ROWS} AND seq >= 10;"
        ))
        .unwrap();
    });
    let report = verify_all(&Collector::start(&copy)).await;
    let verdict = report
        .chains
        .iter()
        .find(|c| c.chain_id == chain.id)
        .expect("the chain's verdict");
    assert!(verdict.ok, "{report:?}");
    assert_eq!(verdict.records, 1000, "{report:?}");
    let log = log_of(&report, HOST);
    assert_eq!(log.leaves, 990, "{report:?}");
    // The host signed 1,000 leaves: the log rightly fails, on its size alone.
    assert!(log.reason.contains("stored 990, attested 1000"), "{log:?}");
    assert!(
        report
            .findings
            .iter()
            .all(|f| !f.subject.starts_with("chain ")),
        "{report:?}"
    );
}

/// An event of audit session 7, whose root started at `T0 - 5_000`.
fn in_session(n: u64) -> Event {
    let mut event = exec(n);
    event.process.as_mut().unwrap().sessionid = Some(7);
    event.session_root = Some(proto::v1::SessionRoot {
        pid: 900,
        start_unix_nano: T0 - 5_000,
    });
    event
}

/// `recorder export` writes a session's bundle, which `recorder verify-bundle` checks with
/// no collector, trusting only the CA; one flipped byte anywhere fails it.
#[tokio::test]
async fn an_exported_session_verifies_offline_and_a_flipped_byte_does_not() {
    let dir = scratch_dir("evidence-export");
    let collector = Collector::start(&dir.join("c.db"));
    let mut chain = Chain::start("host-e:boot:4", HOST, T0);
    for n in 1..300 {
        chain.push(&if n % 3 == 0 { in_session(n) } else { exec(n) });
    }
    let mut log = HostLog::of(&collector, HOST);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    agent.ship(chain.batch(0..300)).await.unwrap();
    log.append(&chain, 0..300);
    agent.checkpoint(log.checkpoint(0)).await;
    assert!(!agent.checkpoint_ack().await.unwrap().cosigned.is_empty());

    let key = format!("{HOST}:7:{}", T0 - 5_000);
    let file = dir.join("session.bundle");
    let url = collector.url();
    let export = tests::operator::run(
        &url,
        &["export", "--session", &key, "-o", file.to_str().unwrap()],
    );
    assert!(export.status.success(), "{export:?}");
    assert!(
        String::from_utf8_lossy(&export.stdout).contains("99 records"),
        "{export:?}"
    );
    let ca = collector.pki.as_ref().unwrap().ca_pem();
    let ca = ca.to_str().unwrap();
    let verify = |path: &Path| {
        tests::operator::run(&url, &["verify-bundle", path.to_str().unwrap(), "--ca", ca])
    };
    let checked = verify(&file);
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("99 records"),
        "{checked:?}"
    );
    // And by the independent verifier, written from docs/evidence.md alone.
    let python = python_ready().then(|| generate_protos(&dir));
    if let Some(protos) = &python {
        let out = python_verify(&file, Path::new(ca), protos);
        assert!(out.status.success(), "{out:?}");
    }
    // The export itself is chained: it is a read of the evidence.
    let reads = of_kind(&collector, "access").await;
    assert!(
        reads.iter().any(|r| format!("{r:?}").contains("Export")),
        "{reads:?}"
    );

    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at =
        |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle}")) + needle.len() + 4;
    for (what, offset) in [
        ("an event", at("\"event\":\"")),
        ("a proof hash", at("index ")),
        ("a certificate", at("BEGIN CERTIFICATE-----\\n")),
        ("the policy", at("\"policy\":\"log ")),
    ] {
        let mut flipped = bytes.clone();
        flipped[offset] = if flipped[offset] == b'A' { b'B' } else { b'A' };
        let path = dir.join("flipped.bundle");
        std::fs::write(&path, &flipped).unwrap();
        let refused = verify(&path);
        assert!(!refused.status.success(), "{what}: {refused:?}");
        if let Some(protos) = &python {
            let out = python_verify(&path, Path::new(ca), protos);
            assert!(!out.status.success(), "python, {what}: {out:?}");
        }
    }
}

/// Exports session `key` through `collector` into `file` and checks it offline with
/// `recorder verify-bundle` against the CA (and with the independent Python verifier, where
/// it runs): the bundle, and what `verify-bundle` printed.
fn exported_and_checked(collector: &Collector, key: &str, file: &Path) -> (String, String) {
    let url = collector.url();
    let export = tests::operator::run(
        &url,
        &["export", "--session", key, "-o", file.to_str().unwrap()],
    );
    assert!(export.status.success(), "{export:?}");
    let ca = collector.pki.as_ref().unwrap().ca_pem();
    let checked = tests::operator::run(
        &url,
        &[
            "verify-bundle",
            file.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(checked.status.success(), "session {key}: {checked:?}");
    // And by the independent verifier, written from docs/evidence.md alone.
    if python_ready() {
        let protos = generate_protos(file.parent().unwrap());
        let out = python_verify(file, &ca, &protos);
        assert!(out.status.success(), "{out:?}");
    }
    (
        std::fs::read_to_string(file).unwrap(),
        String::from_utf8_lossy(&checked.stdout).into_owned(),
    )
}

/// Two collectors of one store, each with a witness certificate of its own, as on two
/// machines (docs/scaling.md): a host's checkpoints cosigned by either verify through both,
/// by their verify and by the operator's own, and a session's bundle exported through one
/// names the other's key when the other cosigned its checkpoint. A collector of another
/// CA that starts on the store is named by verify, and vouches for nothing.
#[tokio::test]
async fn checkpoints_cosigned_by_each_collector_of_a_store_verify_through_either() {
    let dir = scratch_dir("evidence-witnesses");
    let store = dir.join("c.db");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let first = Collector::start(&store);
    let pki = first.pki.clone().unwrap();
    let own = |name: &str, pki_dir: &Path| {
        let state = dir.join(format!("{name}-state"));
        Collector::start_with(
            &store,
            any,
            &[
                "--pki-dir",
                pki_dir.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
        )
    };
    let second = own("second", &pki.collector_named("second"));
    // The second's start is chained in its own chain (a read through the second waits for
    // it), which the first never writes: the first's records (the host's log started, at
    // its first cosignature) go into the first's chain, with no collision to retry.
    let _ = of_kind(&second, "admin").await;
    let mut chain = Chain::start("host-e:boot:8", HOST, T0);
    for n in 1..200 {
        chain.push(&if n % 3 == 0 { in_session(n) } else { exec(n) });
    }
    let mut log = HostLog::of(&first, HOST);
    let mut old_size = 0;
    for (collector, range) in [(&first, 0..100), (&second, 100..200)] {
        let (mut agent, welcome) = Agent::connect(collector, HOST, &[chain.id.as_str()]).await;
        let witness = witness_of(collector, &welcome);
        agent.ship(chain.batch(range.clone())).await.unwrap();
        log.append(&chain, range);
        agent.checkpoint(log.checkpoint(old_size)).await;
        let answer = agent.checkpoint_ack().await.unwrap();
        let signed =
            tlog::open_checkpoint(answer.cosigned.as_bytes(), &log.signer.verifier()).unwrap();
        witness
            .verify_in_note(&signed.note, &signed.checkpoint)
            .expect("cosigned by the collector the host is connected to");
        old_size = answer.cosigned_size;
    }
    assert_eq!(old_size, 200);
    // Each chains its own records in a chain of its own: neither waits on the other.
    for collector in [&first, &second] {
        let log = collector.stderr();
        assert!(!log.contains("another collector"), "{log}");
    }
    for collector in [&first, &second] {
        let report = verify_all(collector).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(log_of(&report, HOST).checkpoints, 2, "{report:?}");
        let (ok, printed) = verify_local(collector, &[]);
        assert!(ok, "{printed}");
    }

    // The latest checkpoint is the second's: a bundle exported through the first holds
    // the second's certificate and key, and verifies offline.
    let key = format!("{HOST}:7:{}", T0 - 5_000);
    let (bundle, checked) = exported_and_checked(&first, &key, &dir.join("session.bundle"));
    assert!(checked.contains("66 records"), "{checked}");
    assert!(bundle.contains("/recorder/witness/second+"), "{bundle}");

    // A collector of another deployment's CA on the same store.
    let stranger = tests::pki::TestPki::new();
    let stranger = own("stranger", &stranger.collector_dir());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let started = of_kind(&first, "admin")
            .await
            .iter()
            .filter(|e| format!("{e:?}").contains("collector_started"))
            .count();
        if started == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{started} starts chained"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(stranger.stop());
    let report = verify_all(&first).await;
    assert!(!report.ok, "{report:?}");
    assert!(
        found(&report, "chain collector/", "no witness's"),
        "{report:?}"
    );
    let (ok, printed) = verify_local(&first, &[]);
    assert!(!ok && printed.contains("no witness's"), "{printed}");
}

/// The links between a host's chains: a restart names the record before it in the log; a
/// wiped spool names none, and a restored snapshot an older record: each is a finding naming
/// the chain. A cloned host names the same record as another chain: that chain is refused
/// at ingest, with a `host_cloned` alert, so nothing of it joins the host's log.
#[tokio::test]
async fn verify_checks_the_links_between_a_hosts_chains() {
    let dir = scratch_dir("evidence-links");
    let collector = Collector::start(&dir.join("c.db"));
    let first = test_chain("host-e:boot:10", 20);
    let restarted = Chain::start_after("host-e:boot:11", HOST, T0 + 100, Some((&first, 20)));
    let ids = [first.id.as_str(), restarted.id.as_str()];
    let (mut agent, _) = Agent::connect(&collector, HOST, &ids).await;
    agent.ship(first.batch(0..20)).await.unwrap();
    agent.ship(restarted.batch(0..1)).await.unwrap();
    let report = verify_all(&collector).await;
    assert!(report.ok, "a restart links: {report:?}");
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(ok, "a restart links: {printed}");

    let cases = [
        (
            "wiped",
            Chain::start("host-e:boot:12", HOST, T0 + 200),
            "spool was wiped",
        ),
        (
            "snapshot",
            Chain::start_after("host-e:boot:13", HOST, T0 + 300, Some((&first, 10))),
            "restored snapshot",
        ),
    ];
    for (what, chain, reason) in cases {
        let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
        agent.ship(chain.batch(0..1)).await.unwrap();
        let report = verify_all(&collector).await;
        assert!(!report.ok, "{what}: {report:?}");
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.subject == format!("chain {} seq 0", chain.id)
                    && f.reason.contains(reason)),
            "{what}: {report:?}"
        );
        let (ok, printed) = verify_local(&collector, &[]);
        assert!(!ok, "{what}: {printed}");
        assert!(
            printed.contains(&format!("FAIL  chain {} seq 0: ", chain.id))
                && printed.contains(reason),
            "{what}: {printed}"
        );
    }

    // The copy retries, as its agent does: refused each time, told once.
    let clone = Chain::start_after("host-e:boot:14", HOST, T0 + 400, Some((&first, 20)));
    for _ in 0..3 {
        let (mut agent, _) = Agent::connect(&collector, HOST, &[clone.id.as_str()]).await;
        let refused = agent.ship(clone.batch(0..1)).await.unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
        assert!(
            refused.message().contains(&format!(
                "as chain {} already does: two machines run from copies of one spool",
                restarted.id
            )),
            "{refused:?}"
        );
    }
    let alerts = of_kind(&collector, "alert").await;
    let told = alerts
        .iter()
        .filter(|a| {
            matches!(
                a.event.as_ref().and_then(|e| e.body.as_ref()),
                Some(Body::Alert(alert)) if alert.kind == "host_cloned" && alert.chain_id == clone.id
            )
        })
        .count();
    assert_eq!(told, 1, "{alerts:?}");
    let stored = of_kind(&collector, "chain_start").await;
    assert!(
        stored.iter().all(|e| e.chain_id != clone.id),
        "nothing of the clone's chain is stored"
    );
}

/// An exec at `time`, in audit session `session` (whose root started at `T0`) if any.
fn exec_at(n: u64, time: u64, session: Option<u32>) -> Event {
    let mut event = exec(n);
    event.time_unix_nano = time;
    if let Some(id) = session {
        event.process.as_mut().unwrap().sessionid = Some(id);
        event.session_root = Some(proto::v1::SessionRoot {
            pid: 900,
            start_unix_nano: T0,
        });
    }
    event
}

/// `--retain` deletes the records older than the limit, a prefix of the host's log, only
/// after chaining a signed prune record, and never past a session on hold: verify still
/// passes, and bundles of kept sessions still verify offline. Deleting records without a
/// prune record fails verify.
#[tokio::test]
async fn retention_prunes_with_a_signed_record_and_keeps_what_is_held() {
    let dir = scratch_dir("evidence-retain");
    let (store, addr) = (dir.join("c.db"), free_addr());
    let collector = Collector::start_at(&store, addr);
    let now = proto::time::now_unix_nano();
    let old = now - 2 * 3_600_000_000_000;
    let mut chain = Chain::start("host-e:boot:20", HOST, old);
    for n in 1..1000 {
        let (time, session) = match n {
            ..400 => (old, (n % 10 == 0).then_some(8)),
            400..600 => (old, (n % 7 == 0).then_some(9)),
            _ => (now, (n % 5 == 0).then_some(10)),
        };
        chain.push(&exec_at(n, time, session));
    }
    let mut log = HostLog::of(&collector, HOST);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    agent.ship(chain.batch(0..1000)).await.unwrap();
    log.append(&chain, 0..1000);
    agent.checkpoint(log.checkpoint(0)).await;
    assert!(!agent.checkpoint_ack().await.unwrap().cosigned.is_empty());
    drop(agent);
    let url = collector.url();
    let session = |id: u32| format!("{HOST}:{id}:{T0}");
    let held = tests::operator::run(&url, &["hold", &session(9), "--reason", "case 42"]);
    assert!(held.status.success(), "{held:?}");
    let pki = collector.pki.clone().unwrap();
    drop(collector.stop());

    // Another collector of the store, with a witness of its own, started with a limit of
    // an hour: the old records go, up to the first held one (seq 406, session 9's first
    // record). The checkpoint it verifies and the sessions it exports were cosigned by the
    // first.
    let other_pki = pki.collector_named("pruner");
    let state = dir.join("pruner-state");
    let collector = Collector::start_with(
        &store,
        addr,
        &[
            "--retain",
            "1h",
            "--pki-dir",
            other_pki.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let report = loop {
        let report = verify_all(&collector).await;
        if log_of(&report, HOST).pruned > 0 || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(report.ok, "{report:?}");
    let verdict = log_of(&report, HOST);
    assert_eq!((verdict.pruned, verdict.leaves), (406, 594), "{verdict:?}");
    // The client, given the signed prune record, accepts the missing leaves too.
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(ok, "{printed}");
    assert!(printed.contains("594 leaves"), "{printed}");
    let chain_verdict = report
        .chains
        .iter()
        .find(|c| c.chain_id == chain.id)
        .unwrap();
    assert!(chain_verdict.ok, "{chain_verdict:?}");

    // Bundles of the kept sessions verify offline: the held one and a recent one.
    for id in [9, 10] {
        let file = dir.join(format!("session-{id}.bundle"));
        let _ = exported_and_checked(&collector, &session(id), &file);
    }
    drop(collector.stop());
    // The first collector trusts the prune record the other signed.
    let collector = Collector::start(&store);
    let report = verify_all(&collector).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(log_of(&report, HOST).pruned, 406, "{report:?}");
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(ok, "{printed}");
    drop(collector.stop());
    let conn = rusqlite::Connection::open(&store).unwrap();
    let (left, prunes): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM events WHERE host = 'host-e' AND log_index < 406), \
             (SELECT COUNT(*) FROM events WHERE kind = 'prune')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((left, prunes), (0, 1));

    // Old rows deleted with no prune record for them: verify fails.
    let copy = tampered(&store, "unpruned.db", |conn| {
        conn.execute_batch("DELETE FROM events WHERE host = 'host-e' AND log_index < 420;")
            .unwrap();
    });
    let collector = Collector::start(&copy);
    let report = verify_all(&collector).await;
    assert!(!report.ok);
    assert!(
        log_of(&report, HOST).reason.contains("leaf 406 is missing"),
        "{report:?}"
    );
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(!ok && printed.contains("leaf 406 is missing"), "{printed}");
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Copies a stopped collector's store (with its WAL) over `to`.
fn restore(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let (src, dst) = (
            format!("{}{suffix}", from.display()),
            format!("{}{suffix}", to.display()),
        );
        let _ = std::fs::remove_file(&dst);
        if Path::new(&src).exists() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Makes grants one after another, more than a second apart, so that the collector signs
/// a checkpoint of its own log after the last.
fn grants(url: &str, n: usize) {
    for i in 0..n {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let made = tests::operator::run(
            url,
            &[
                "grant",
                "create",
                "--user",
                &format!("u{i}"),
                "--ttl",
                "1h",
                "--reason",
                "x",
            ],
        );
        assert!(made.status.success(), "{made:?}");
    }
}

/// The collector keeps the latest signed checkpoint of its own log outside the database. A
/// database restored to an older copy disagrees with it: verify says so, the collector
/// chains a `store_rollback` alert, and the kept checkpoint is not overwritten.
#[tokio::test]
async fn a_restored_database_disagrees_with_the_collectors_own_checkpoint() {
    let dir = scratch_dir("evidence-own-log");
    let (store, backup, addr) = (dir.join("c.db"), dir.join("backup.db"), free_addr());
    let kept = dir.join("c.state/collector-log.checkpoint");
    let collector = Collector::start_at(&store, addr);
    let url = collector.url();
    grants(&url, 2);
    drop(collector.stop());
    restore(&store, &backup);
    let signed_before = std::fs::read_to_string(&kept).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    let collector = Collector::start_at(&store, addr);
    assert!(verify_all(&collector).await.ok, "an untouched store agrees");
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(ok, "an untouched store agrees: {printed}");
    grants(&url, 2);
    drop(collector.stop());
    let signed_after = std::fs::read_to_string(&kept).unwrap();
    assert_ne!(signed_before, signed_after, "the later commits were signed");

    restore(&backup, &store);
    let collector = Collector::start_at(&store, addr);
    let report = verify_all(&collector).await;
    assert!(!report.ok);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.subject == "chain collector/test"
                && f.reason.contains("restored to an older state")),
        "{report:?}"
    );
    // The client checks the kept checkpoint, which the collector's log key signed, itself.
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("FAIL  chain collector/test: ")
            && printed.contains("restored to an older state"),
        "{printed}"
    );
    let alerts = of_kind(&collector, "alert").await;
    assert!(
        alerts
            .iter()
            .any(|a| format!("{a:?}").contains("store_rollback")),
        "{alerts:?}"
    );
    drop(collector.stop());
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        signed_after,
        "the kept checkpoint is left as it was"
    );
}

/// Flips one character of the host's signature in every stored checkpoint note.
fn forge_checkpoint_signatures(conn: &rusqlite::Connection) {
    let notes: Vec<(i64, String)> = conn
        .prepare("SELECT rowid, note FROM log_checkpoints")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (row, note) in notes {
        // The first signature line: "— NAME BASE64"; a character in its middle.
        let line = note.find("\n\u{2014} ").unwrap() + 1;
        let at = line + note[line..].find('\n').unwrap() - 10;
        let mut bytes = note.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let note = String::from_utf8(bytes).unwrap();
        conn.execute(
            "UPDATE log_checkpoints SET note = ?1 WHERE rowid = ?2",
            rusqlite::params![note, row],
        )
        .unwrap();
    }
}

/// `recorder verify --local` runs verify's checks on the client, over the raw records,
/// chains, checkpoints, certificates and grants the collector streams, trusting only the CA
/// certificate: it passes on an untouched store, and given another CA than the
/// deployment's, it fails.
#[tokio::test]
async fn verify_local_passes_on_an_untouched_store_under_its_ca_only() {
    let dir = scratch_dir("evidence-local");
    let chain = test_chain("host-e:boot:3", 1000);
    let pristine = stored_log(&dir, &chain).await;

    let collector = Collector::start(&pristine);
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(ok, "{printed}");
    assert!(
        printed.contains(&format!("ok    {HOST} {}  1000 records", chain.id))
            && printed.contains("1000 leaves, 1 signed checkpoint, attested 1000")
            && printed.contains("ok    collector collector"),
        "{printed}"
    );
    let (ok, printed) = verify_local(&collector, &["--host", HOST]);
    assert!(ok, "{printed}");
    // The read of the evidence is itself chained.
    let reads = of_kind(&collector, "access").await;
    assert!(
        reads.iter().any(|r| format!("{r:?}").contains("Evidence")),
        "{reads:?}"
    );

    // Another CA than the deployment's: nothing the collector sends chains to it.
    let other = tests::pki::TestPki::new();
    let other_ca = other.ca_pem();
    let (ok, printed) = verify_local(&collector, &["--trust", other_ca.to_str().unwrap()]);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("cannot be checked against this CA"),
        "{printed}"
    );
}

/// A way to tamper with a stopped store.
type Tamper = Box<dyn Fn(&rusqlite::Connection)>;

/// What a database admin can do to the store of `stored_log`, and what `verify --local`
/// must print of each.
fn tamperings(chain_id: &str) -> Vec<(&'static str, Tamper, Vec<String>)> {
    let row_of = |seq: u64| format!("chain {chain_id} seq {seq}");
    vec![
        (
            "flipped.db",
            Box::new(|conn| {
                let mut event = event_at(conn, 500);
                event[5] ^= 0x01;
                conn.execute(
                    &format!("UPDATE events SET event = ?1 WHERE chain = {ROWS} AND seq = 500"),
                    [event],
                )
                .unwrap();
            }),
            vec![
                format!("{chain_id} at seq 500: the hash of seq 500 does not recompute"),
                "do not give the signed root of size 1000".into(),
            ],
        ),
        (
            "truncated.db",
            Box::new(|conn| {
                conn.execute_batch(&format!(
                    "DELETE FROM events WHERE chain = {ROWS} AND seq >= 900;
                     UPDATE chains SET next_seq = 900, head_hash = (SELECT hash FROM events
                       WHERE chain = {ROWS} AND seq = 899) WHERE id = {ROWS};"
                ))
                .unwrap();
            }),
            vec!["stored 900, attested 1000".into()],
        ),
        (
            "kind.db",
            Box::new(|conn| {
                conn.execute_batch(&format!(
                    "UPDATE events SET kind = 'fork' WHERE chain = {ROWS} AND seq = 10;"
                ))
                .unwrap();
            }),
            // Named, with both values, and only it.
            vec![format!(
                "{}: its stored columns differ from what its bytes say: kind \"fork\" where its \
                 bytes say \"exec\"\n",
                row_of(10)
            )],
        ),
        (
            "grant.db",
            Box::new(extend_the_grant),
            vec!["differs from its chained grant changes".into()],
        ),
        (
            "forged.db",
            Box::new(forge_checkpoint_signatures),
            vec!["the checkpoint of size 1000:".into()],
        ),
        (
            "rewritten.db",
            Box::new(rewrite_from_500),
            vec!["do not give the signed root of size 1000".into()],
        ),
        (
            "deleted.db",
            Box::new(|conn| {
                conn.execute_batch(&format!(
                    "DELETE FROM events WHERE chain = {ROWS}; DELETE FROM chains WHERE id = {ROWS};"
                ))
                .unwrap();
            }),
            vec!["stored 0, attested 1000".into()],
        ),
    ]
}

/// Each tampering of the store fails `recorder verify --local`, naming the fault, with the
/// collector serving the tampered store: the client finds it from the raw evidence, with no
/// verdict of the collector's involved.
#[tokio::test]
async fn verify_local_finds_what_an_admin_does_to_the_store() {
    let dir = scratch_dir("evidence-local-tamper");
    let chain = test_chain("host-e:boot:3", 1000);
    let pristine = stored_log(&dir, &chain).await;
    for (name, tamper, faults) in tamperings(&chain.id) {
        let copy = tampered(&pristine, name, tamper);
        let collector = Collector::start(&copy);
        let (ok, printed) = verify_local(&collector, &[]);
        assert!(!ok, "{name}: {printed}");
        for fault in faults {
            assert!(printed.contains(&fault), "{name}: {fault:?} in {printed}");
        }
    }

    // The host deleted whole: the collector's chain, checked here, still names it.
    let copy = tampered(&pristine, "host.db", |conn| {
        conn.execute_batch(
            "DELETE FROM events WHERE host = 'host-e' AND log_index IS NOT NULL;
             DELETE FROM chains WHERE host = 'host-e'; DELETE FROM logs;
             DELETE FROM log_checkpoints;",
        )
        .unwrap();
    });
    let (ok, printed) = verify_local(&Collector::start(&copy), &[]);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains(&format!("FAIL  host {HOST}: a collector's chain says")),
        "{printed}"
    );

    // The store's count of decisions set back, as if no grant had changed: the next grant
    // change takes the decision number the first one has, so their order is not known.
    let copy = tampered(&pristine, "decisions.db", |conn| {
        conn.execute_batch("UPDATE changes SET count = 0 WHERE kind = 'decisions'")
            .unwrap();
    });
    let collector = Collector::start(&copy);
    let args = [
        "grant", "create", "--user", "bob", "--ttl", "1h", "--reason", "CHG-2",
    ];
    let out = tests::operator::run(&collector.url(), &args);
    assert!(out.status.success(), "{out:?}");
    let twice = "its grant change has decision 1, as the one at chain collector/test seq";
    let report = verify_all(&collector).await;
    assert!(
        found(&report, "chain collector/test seq ", twice),
        "{report:?}"
    );
    let (ok, printed) = verify_local(&collector, &[]);
    assert!(!ok && printed.contains(twice), "{printed}");
}

/// `verify` and `verify --local` while an agent ships and checkpoints and grants change:
/// each checks one state of each log and of the grants, so a store that grows during the
/// read gives no false finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_while_the_store_grows() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let dir = scratch_dir("evidence-local-live");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = test_chain("host-e:boot:30", 30_000);
    let mut log = HostLog::of(&collector, HOST);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let busy = Arc::new(AtomicBool::new(true));
    // Until the agent is done, one operator makes grants while another checks.
    let (url, still) = (collector.url(), Arc::clone(&busy));
    let granting = tokio::task::spawn_blocking(move || {
        let mut made = 0;
        while still.load(Ordering::SeqCst) {
            let user = format!("u{made}");
            let args = [
                "grant", "create", "--user", &user, "--ttl", "1h", "--reason", "x",
            ];
            let out = tests::operator::run(&url, &args);
            assert!(out.status.success(), "{out:?}");
            made += 1;
        }
        made
    });
    let (url, still) = (collector.url(), Arc::clone(&busy));
    let checking = tokio::task::spawn_blocking(move || {
        let mut runs = Vec::new();
        while still.load(Ordering::SeqCst) || runs.len() < 4 {
            let args: &[&str] = if runs.len() % 2 == 0 {
                &["verify", "--local"]
            } else {
                &["verify"]
            };
            let out = tests::operator::run(&url, args);
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            runs.push((out.status.success(), printed));
        }
        runs
    });
    let mut old = 0;
    for lo in (0..30_000).step_by(500) {
        agent.ship(chain.batch(lo..lo + 500)).await.unwrap();
        log.append(&chain, lo..lo + 500);
        agent.checkpoint(log.checkpoint(old)).await;
        assert!(!agent.checkpoint_ack().await.unwrap().cosigned.is_empty());
        old = log.range.size();
    }
    busy.store(false, Ordering::SeqCst);
    let grants = granting.await.unwrap();
    let runs = checking.await.unwrap();
    for (ok, printed) in &runs {
        assert!(ok, "{printed}");
    }
    eprintln!(
        "{} runs of verify and verify --local while shipping and making {grants} grants",
        runs.len()
    );
}
