//! Trust I (docs/pki.md): every channel is mutual TLS under one CA, and every action is
//! its certificate's. Each refusal below is refused with a clear status, crashes nothing
//! (the collector serves the next good client), and, where a certificate was presented, is
//! chained as an `auth_failure` alert; reads are chained as `access` events. Real collector,
//! real TLS, real agents; the agent parts need root (under `CI=true` a run without root
//! fails instead of skipping).

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use pki::{AgentKey, Role, Validity};
use proto::v1::{
    EnrollRequest, Filter, Hello, SearchRequest, admin_client::AdminClient,
    enrollment_client::EnrollmentClient, query_client::QueryClient,
};
use serde_json::Value;
use tests::{
    Scratch,
    agent::Agent,
    collector::Collector,
    grpc::{As, Chain, channel},
    mark, marker, marker_uid, operator, privileged,
};
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

fn collector(tag: &str) -> (Scratch, Collector) {
    let dir = Scratch::new(tag);
    let collector = Collector::start(&dir.join("store.db"));
    (dir, collector)
}

/// The `auth_failure` alerts the collector has chained, as JSON.
fn auth_failures(collector: &Collector) -> Vec<Value> {
    operator::json_lines(
        &collector.url(),
        &["search", "--json", "--kind", "alert", "--since", "1h"],
    )
    .into_iter()
    .filter(|v| v["alert"]["kind"] == "auth_failure")
    .collect()
}

/// Waits until an `auth_failure` alert whose message holds every one of `words` is chained.
fn chained_refusal(collector: &Collector, words: &[&str]) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = auth_failures(collector).into_iter().find(|v| {
            let message = v["alert"]["message"].as_str().unwrap_or_default();
            words.iter().all(|w| message.contains(w))
        }) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no auth_failure holding {words:?}: {:?}",
            auth_failures(collector)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A good operator still gets in: nothing a refused client did broke the collector.
async fn still_serves(collector: &Collector) {
    let mut client = QueryClient::new(channel(collector, As::Operator("ok", Role::Auditor)).await);
    client
        .search(SearchRequest::default())
        .await
        .expect("the collector still serves");
}

/// A Query call with these client files, or its refusal.
async fn search_with(collector: &Collector, tls: ClientTlsConfig) -> Result<(), tonic::Status> {
    pki::install_crypto_provider();
    let channel = Endpoint::from_shared(collector.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let channel = match channel {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(format!("{e:?}"))),
    };
    QueryClient::new(channel)
        .search(SearchRequest::default())
        .await
        .map(|_| ())
}

fn ca_only(collector: &Collector) -> ClientTlsConfig {
    let ca = std::fs::read_to_string(collector.pki.as_ref().unwrap().ca_pem()).unwrap();
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))
}

fn with_identity(collector: &Collector, cert: &Path, key: &Path) -> ClientTlsConfig {
    ca_only(collector).identity(tonic::transport::Identity::from_pem(
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    ))
}

/// No client certificate, one from another CA, an expired one, and plaintext against the
/// TLS port: each refused, the certificates that were presented chained.
#[tokio::test]
async fn connections_without_a_good_certificate_are_refused() {
    let (_dir, collector) = collector("trust-tls");
    let pki = collector.pki.as_ref().unwrap();

    let refused = search_with(&collector, ca_only(&collector))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    assert!(
        refused.message().contains("client certificate"),
        "{refused}"
    );
    still_serves(&collector).await;

    let other = Scratch::new("other-ca");
    let other_ca = pki::Ca::init(&other.join("ca")).unwrap();
    let stranger = other_ca
        .issue_operator(
            "mallory",
            Role::Admin,
            Validity::from_now(Duration::from_hours(1)),
        )
        .unwrap();
    std::fs::write(other.join("m.pem"), &stranger.cert_pem).unwrap();
    std::fs::write(other.join("m.key"), &stranger.key_pem).unwrap();
    let refused = search_with(
        &collector,
        with_identity(&collector, &other.join("m.pem"), &other.join("m.key")),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("UnknownCA") || refused.code() != Code::Ok,
        "{refused}"
    );
    chained_refusal(
        &collector,
        &["operator:admin:mallory", "TLS handshake refused"],
    );
    still_serves(&collector).await;

    let now = std::time::SystemTime::now();
    let (cert, key) = pki.issue("expired", |ca| {
        ca.issue_operator(
            "old-timer",
            Role::Auditor,
            Validity {
                not_before: now - Duration::from_hours(48),
                not_after: now - Duration::from_hours(24),
            },
        )
        .unwrap()
    });
    let refused = search_with(&collector, with_identity(&collector, &cert, &key))
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    chained_refusal(&collector, &["old-timer", "TLS handshake refused"]);
    still_serves(&collector).await;

    let plaintext = Endpoint::from_shared(format!("http://{}", collector.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let refused = QueryClient::new(channel)
            .search(SearchRequest::default())
            .await
            .unwrap_err();
        assert_ne!(refused.code(), Code::Ok, "{refused}");
    }
    still_serves(&collector).await;
}

/// Roles: an auditor reads but cannot grant; an approver cannot approve their own request,
/// and a second approver can; only an admin makes tokens. The actor of every change is the
/// certificate's, and every read is an `access` event naming its reader.
#[tokio::test]
async fn operators_may_do_what_their_role_allows_and_every_read_is_recorded() {
    let (_dir, collector) = collector("trust-roles");
    let pki = collector.pki.as_ref().unwrap();
    let url = collector.url();
    let (ann, bob, carl) = (
        pki.operator("ann", Role::Auditor),
        pki.operator("bob", Role::Approver),
        pki.operator("carl", Role::Approver),
    );
    let run = |dir: &Path, args: &[&str]| {
        let out = operator::run_as(&url, dir, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, _, why) = run(
        &ann,
        &[
            "grant", "create", "--user", "ann", "--ttl", "1h", "--reason", "x",
        ],
    );
    assert!(
        !ok && why.contains("PermissionDenied") && why.contains("ann is auditor"),
        "{why}"
    );
    chained_refusal(&collector, &["ann", "creating a grant needs approver"]);
    let (ok, _, why) = run(&ann, &["token", "create", "--host", "h1"]);
    assert!(!ok && why.contains("PermissionDenied"), "{why}");

    let (ok, requested, why) = run(
        &bob,
        &[
            "grant", "request", "--user", "bob", "--ttl", "1h", "--reason", "CHG-9", "--json",
        ],
    );
    assert!(ok, "{why}");
    let requested: Value = serde_json::from_str(&requested).unwrap();
    let id = requested["id"].as_str().unwrap();
    assert_eq!(requested["pending"], true);
    let (ok, _, why) = run(&bob, &["grant", "approve", id]);
    assert!(!ok && why.contains("someone else must approve it"), "{why}");
    chained_refusal(&collector, &["bob", "someone else must approve it"]);
    let (ok, approved, why) = run(&carl, &["grant", "approve", id, "--json"]);
    assert!(ok, "{why}");
    let approved: Value = serde_json::from_str(&approved).unwrap();
    assert_eq!(
        (
            &approved["requester"],
            &approved["approver"],
            &approved["pending"]
        ),
        (&"bob".into(), &"carl".into(), &false.into())
    );
    let (ok, _, why) = run(&ann, &["search", "--kind", "exec", "--identity", "nobody"]);
    assert!(ok, "{why}");
    let access = every_read_is_recorded(&url, &ann);
    let by_ann = access
        .iter()
        .find(|v| v["access"]["actor"] == "ann" && v["access"]["method"] == "Search")
        .unwrap_or_else(|| panic!("ann's search is recorded: {access:?}"));
    assert_eq!(by_ann["access"]["role"], "auditor");
    readable_search(by_ann["access"]["detail"].as_str().unwrap());
    let changes = operator::json_lines(
        &url,
        &[
            "search",
            "--json",
            "--kind",
            "grant_change",
            "--since",
            "1h",
        ],
    );
    let actions: Vec<(&str, &str)> = changes
        .iter()
        .map(|v| {
            (
                v["grant_change"]["action"].as_str().unwrap(),
                v["grant_change"]["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("request", "bob"), ("approve", "carl")]);
    let verify = operator::run(&url, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Runs every other read an auditor may make as `auditor` (whose search ran before), and a
/// tail as the harness's admin; checks each is an `access` event naming its reader, and
/// returns the access events stored.
/// The detail of a search's access record names what was asked, its time in RFC 3339 to the
/// nanosecond, and leaves out the parameters left at their default.
fn readable_search(detail: &str) {
    assert!(detail.contains("identity=nobody"), "{detail}");
    let since = detail
        .split(' ')
        .find_map(|w| w.strip_prefix("since="))
        .unwrap_or_else(|| panic!("no since: {detail}"));
    assert!(
        since.len() == 30 && since.as_bytes()[10] == b'T' && since.ends_with('Z'),
        "{detail}"
    );
    assert!(
        !detail.contains("until=") && !detail.contains("page_token="),
        "{detail}"
    );
}

fn every_read_is_recorded(url: &str, auditor: &Path) -> Vec<Value> {
    let run = |args: &[&str]| {
        let out = operator::run_as(url, auditor, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Every other read an auditor may make; a replay of a session that does not exist is
    // still a read of the evidence, and recorded before it fails.
    for read in [
        &["sessions"][..],
        &["replay", "h:1:2:3", "--speed", "0"],
        &["verify"],
        &["review"],
        &["grant", "list"],
    ] {
        let (ok, why) = run(read);
        assert!(ok || read[0] == "replay", "{read:?}: {why}");
    }
    let tail = operator::Tail::start(url, &["--since", "1m"]);
    let access = wait_for_access(url, "test-admin", "Tail");
    drop(tail);
    let mut read_by_ann: Vec<&str> = access
        .iter()
        .filter(|v| v["access"]["actor"] == "ann")
        .map(|v| v["access"]["method"].as_str().unwrap())
        .collect();
    read_by_ann.sort_unstable();
    read_by_ann.dedup();
    assert_eq!(
        read_by_ann,
        // Hosts: text output looks up the hosts' names, a read recorded as any other.
        [
            "Hosts",
            "ListGrants",
            "Replay",
            "Review",
            "Search",
            "Sessions",
            "Verify"
        ],
        "each of ann's reads is recorded"
    );
    access
}

/// The access events stored so far, once one shows `actor` calling `method`.
fn wait_for_access(url: &str, actor: &str, method: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let access = operator::json_lines(
            url,
            &["search", "--json", "--kind", "access", "--since", "1h"],
        );
        if access
            .iter()
            .any(|v| v["access"]["actor"] == actor && v["access"]["method"] == method)
        {
            return access;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {method} by {actor} recorded: {access:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A grant can never be backdated (only a gRPC client can ask for a start in the past).
#[tokio::test]
async fn a_grant_cannot_be_backdated() {
    let (_dir, collector) = collector("trust-backdate");
    let mut grants = proto::v1::grants_client::GrantsClient::new(
        channel(&collector, As::Operator("bob", Role::Approver)).await,
    );
    let refused = grants
        .create(proto::v1::CreateGrantRequest {
            identity: Some(proto::v1::IdentitySelector {
                kind: proto::v1::identity::Kind::Human.into(),
                name: "bob".into(),
            }),
            not_before_unix_nano: proto::time::ago(Duration::from_hours(1)),
            ttl_millis: 7_200_000,
            on_expiry: proto::v1::grant::OnExpiry::Alert.into(),
            reason: "backdated".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("cannot be backdated"),
        "{refused}"
    );
}

/// A policy that requires two people refuses a direct create.
#[tokio::test]
async fn require_approval_refuses_a_grant_made_by_one_person() {
    let dir = Scratch::new("trust-two");
    std::fs::write(dir.join("policy.json"), r#"{"require_approval": true}"#).unwrap();
    let collector = Collector::start_with(
        &dir.join("store.db"),
        "127.0.0.1:0".parse().unwrap(),
        &["--policy", dir.join("policy.json").to_str().unwrap()],
    );
    let out = operator::run(
        &collector.url(),
        &[
            "grant", "create", "--user", "eve", "--ttl", "1h", "--reason", "x",
        ],
    );
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && why.contains("second person"),
        "{why}"
    );
}

/// Join tokens: single use, for one host, for a while; the host's key never leaves it (only
/// its CSR travels); each refusal is chained.
#[tokio::test]
async fn join_tokens_are_single_use_host_bound_and_expire() {
    let (_dir, collector) = collector("trust-tokens");
    let url = collector.url();
    let token = |host: &str, ttl: &str| -> String {
        let lines = operator::run(&url, &["token", "create", "--host", host, "--ttl", ttl]);
        assert!(
            lines.status.success(),
            "{}",
            String::from_utf8_lossy(&lines.stderr)
        );
        String::from_utf8(lines.stdout).unwrap().trim().to_owned()
    };
    let enroll = |token: String, host: &str| {
        let collector = &collector;
        let host = host.to_owned();
        async move {
            pki::install_crypto_provider();
            let channel = Endpoint::from_shared(collector.url())
                .unwrap()
                .tls_config(ca_only(collector))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let key = AgentKey::generate().unwrap();
            EnrollmentClient::new(channel)
                .enroll(EnrollRequest {
                    token,
                    csr_pem: key.csr_pem,
                    host,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let good = token("web-1", "1h");
    let refused = enroll(good.clone(), "web-2").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    assert!(refused.message().contains("is for host web-1"), "{refused}");
    let answer = enroll(good.clone(), "web-1")
        .await
        .expect("the token enrolls its host");
    let info = pki::CertInfo::from_pem(&answer.cert_pem).unwrap();
    assert_eq!(
        info.peer,
        pki::Peer::Agent {
            host: "web-1".into()
        }
    );
    let spent = enroll(good, "web-1").await.unwrap_err();
    assert_eq!(spent.code(), Code::Unauthenticated);
    assert!(spent.message().contains("used already"), "{spent}");
    let short = token("web-3", "1ms");
    std::thread::sleep(Duration::from_millis(20));
    let expired = enroll(short, "web-3").await.unwrap_err();
    assert!(expired.message().contains("expired"), "{expired}");
    let forged = enroll("rjt_not-a-token".into(), "web-1").await.unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    for words in [["is for host web-1"], ["used already"], ["expired"]] {
        chained_refusal(&collector, &words);
    }
    let acts = operator::json_lines(
        &url,
        &["search", "--json", "--kind", "admin", "--since", "1h"],
    );
    let acts: Vec<(&str, &str)> = acts
        .iter()
        .map(|v| {
            (
                v["admin"]["action"].as_str().unwrap(),
                v["admin"]["host"].as_str().unwrap(),
            )
        })
        .collect();
    // After the collector's own first start on the store.
    assert_eq!(
        acts,
        [
            ("collector_started", ""),
            ("token_created", "web-1"),
            ("host_enrolled", "web-1"),
            ("token_created", "web-3")
        ]
    );
    // Nothing of a token is kept but its hash.
    let store = std::fs::read(collector.store.clone()).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&store).contains("rjt_"));
}

/// An agent's certificate speaks for its host only: a Hello as another host, or a chain of
/// another host, is refused and chained; a revoked host is refused from then on.
#[tokio::test]
async fn an_agent_speaks_for_its_own_host_only_until_revoked() {
    let (_dir, collector) = collector("trust-hosts");
    let (_, welcome) = tests::grpc::Agent::connect(&collector, "host-a", &[]).await;
    assert!(welcome.heads.is_empty());
    let refused = tests::grpc::Agent::try_connect(
        &collector,
        As::Agent("host-a"),
        Hello {
            host: "host-b".into(),
            ..Hello::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    chained_refusal(&collector, &["agent:host-a", "Hello of host host-b"]);
    let (mut agent, _) = tests::grpc::Agent::connect(&collector, "host-a", &[]).await;
    let theirs = Chain::start("host-b:boot:1", "host-b", 1_800_000_000_000_000_000);
    let refused = agent.ship(theirs.batch(0..1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    chained_refusal(&collector, &["agent:host-a", "chain host-b:boot:1"]);

    let mut admin =
        AdminClient::new(channel(&collector, As::Operator("test-admin", Role::Admin)).await);
    admin
        .revoke_host(proto::v1::RevokeHostRequest {
            host: "host-a".into(),
            reason: "decommissioned".into(),
        })
        .await
        .unwrap();
    let refused = tests::grpc::Agent::try_connect(
        &collector,
        As::Agent("host-a"),
        Hello {
            host: "host-a".into(),
            ..Hello::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("revoked"), "{refused}");
    chained_refusal(&collector, &["agent:host-a", "host host-a is revoked"]);
    still_serves(&collector).await;
}

/// The collector's store and the agent's spool are private (0600 in 0700), and only the
/// hash of a join token is stored.
#[tokio::test]
async fn the_store_is_private() {
    let (dir, collector) = collector("trust-modes");
    still_serves(&collector).await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("store.db"))
        {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
}

/// A host enrolls with a token (its key made there), ships over mutual TLS, and a forged
/// Hello as that host from another host's certificate is refused while the real agent keeps
/// shipping.
#[test]
fn an_enrolled_agent_ships_and_a_forged_hello_changes_nothing() {
    if !privileged("an_enrolled_agent_ships_and_a_forged_hello_changes_nothing") {
        return;
    }
    let dir = Scratch::new("trust-enroll");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let host = pki::host_id();
    let made = operator::run(&url, &["token", "create", "--host", &host, "--ttl", "10m"]);
    assert!(made.status.success());
    let token = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let ca = collector.pki.as_ref().unwrap().ca_pem();
    let agent_pki = dir.join("agent-pki");
    let spool = dir.join("spool");
    let flags = [
        "--spool",
        spool.to_str().unwrap(),
        "--collector",
        &url,
        "--pki-dir",
        agent_pki.to_str().unwrap(),
    ];
    let mut joining = flags.to_vec();
    joining.extend(["--join", &token, "--ca", ca.to_str().unwrap()]);
    let agent = Agent::start_with(tests::agent::Sink::Spool, &joining);
    let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode_of(&agent_pki), 0o700);
    assert_eq!(mode_of(&agent_pki.join("agent.key")), 0o600);
    let before = marker("enrolled");
    let identity = mark(&before);
    let _ = operator::stored_exec(&url, &identity, &before, Duration::from_secs(30));

    // The token is spent: a second host cannot use it.
    let mut again = tests::agent::command();
    again
        .args([
            "--spool",
            dir.join("spool2").to_str().unwrap(),
            "--collector",
            &url,
        ])
        .args(["--pki-dir", dir.join("pki2").to_str().unwrap()])
        .args([
            "--join",
            &token,
            "--ca",
            ca.to_str().unwrap(),
            "--lock-file",
        ])
        .arg(dir.join("lock2"));
    let refused = again.output().unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("used already"), "{why}");

    // Another host's agent says Hello as this host, naming its live chain.
    let chains = operator::json_lines(&url, &["verify", "--json"]);
    let chain_id = chains.iter().find(|c| c["host"] == host.as_str()).unwrap()["chain_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime
        .block_on(tests::grpc::Agent::try_connect(
            &collector,
            As::Agent("attacker"),
            Hello {
                host: host.clone(),
                chain_ids: vec![chain_id],
                agent_version: "forged".into(),
                ..Hello::default()
            },
        ))
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let after = marker("after-forgery");
    let _ = mark(&after);
    let _ = operator::stored_exec(
        &url,
        &format!("uid:{}", marker_uid()),
        &after,
        Duration::from_secs(30),
    );
    assert!(agent.stop().success);
    let verify = operator::run(&url, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // Filter by host: the real chain is whole and alone.
    let mut query = runtime.block_on(tests::grpc::query(&collector));
    let stored = runtime
        .block_on(query.search(SearchRequest {
            filter: Some(Filter {
                host: host.clone(),
                kinds: vec!["chain_start".into()],
                ..Filter::default()
            }),
            ..SearchRequest::default()
        }))
        .unwrap()
        .into_inner();
    assert_eq!(stored.events.len(), 1, "one chain for this host");
}
