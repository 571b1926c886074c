//! Just-in-time grants, collector side: the real collector binary and the real `recorder`
//! client, with an ingest stream that speaks as an agent. No root needed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Output,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pki::Role;
use prost::Message as _;
use proto::limits::{VIEW_BYTES_MAX, VIEW_GRANTS_MAX};
use proto::v1::{
    CreateGrantRequest, Event, Exec, Filter, Grant, GrantView, Identity, IdentitySelector,
    ListGrantsRequest, Policy, Process, SessionRoot, Violation, event::Body, grant::OnExpiry,
    grants_client::GrantsClient, identity::Kind, policy::Mode,
};
use serde_json::Value;
use tests::collector::{Collector, run_to_exit_with, scratch_dir};
use tests::grpc::{Agent, As, Chain, channel, search_all, verify};
use tonic::Code;

const MINUTE: u64 = 60_000_000_000;
const HOUR: u64 = 60 * MINUTE;

fn now() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

/// Runs `recorder` against the collector as the approver dave, whose certificate says so.
fn recorder(collector: &Collector, args: &[&str]) -> Output {
    let dave = collector
        .pki
        .as_ref()
        .unwrap()
        .operator("dave", Role::Approver);
    tests::operator::run_as(&collector.url(), &dave, args)
}

/// The output of a command that must succeed.
fn ok(collector: &Collector, args: &[&str]) -> String {
    let out = recorder(collector, args);
    assert!(
        out.status.success(),
        "recorder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The error message of a command that must fail.
fn refused(collector: &Collector, args: &[&str]) -> String {
    let out = recorder(collector, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "recorder {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Each line of a `--json` command's output.
fn json_lines(collector: &Collector, args: &[&str]) -> Vec<Value> {
    ok(collector, args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Creates a grant through the CLI with `args` (split at spaces) and returns its id.
fn create(collector: &Collector, args: &str) -> String {
    let mut all = vec!["grant", "create"];
    all.extend(args.split_whitespace());
    let line = ok(collector, &all);
    let id = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        id.starts_with("g-") && id.len() > 2,
        "the id comes first: {line}"
    );
    id
}

async fn grants(collector: &Collector) -> GrantsClient<tonic::transport::Channel> {
    GrantsClient::new(channel(collector, As::Operator("dave", Role::Approver)).await)
}

/// Every grant, as the collector holds it.
async fn stored_grants(collector: &Collector) -> BTreeMap<String, Grant> {
    grants(collector)
        .await
        .list(ListGrantsRequest {
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .grants
        .into_iter()
        .map(|g| (g.id.clone(), g))
        .collect()
}

/// The `GrantChange` records of the collector's chain, in order: (action, actor, grant,
/// reason).
async fn grant_changes(collector: &Collector) -> Vec<(String, String, Grant, String)> {
    let filter = Filter {
        kinds: vec!["grant_change".into()],
        ..Filter::default()
    };
    search_all(collector, filter, 100)
        .await
        .into_iter()
        .map(|stored| {
            assert!(
                stored.chain_id.starts_with("collector/"),
                "{}",
                stored.chain_id
            );
            let Some(Body::GrantChange(change)) = stored.event.unwrap().body else {
                panic!("not a grant change")
            };
            (
                change.action,
                change.actor,
                change.grant.unwrap(),
                change.reason,
            )
        })
        .collect()
}

fn ids(view: &GrantView) -> Vec<&str> {
    let mut ids: Vec<&str> = view.grants.iter().map(|g| g.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

fn sorted<'a>(ids: &[&'a str]) -> Vec<&'a str> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// Create, list, extend and revoke through `recorder grant`; every change is a `GrantChange`
/// in the collector's chain, which verifies.
#[tokio::test]
async fn grants_are_created_listed_extended_and_revoked_through_the_cli() {
    let dir = scratch_dir("grants-cli");
    let collector = Collector::start(&dir.join("c.db"));
    let before = now();
    let alice = create(
        &collector,
        "--user alice --host host-a --ttl 30m --on-expiry kill --reason CHG-1",
    );
    let args = "grant create --unit nginx.service --ttl 1h --reason CHG-2 --json";
    let nginx = json_lines(&collector, &args.split(' ').collect::<Vec<_>>());
    assert_eq!(nginx.len(), 1, "{nginx:?}");
    assert_eq!(nginx[0]["identity"]["kind"], "service");
    assert_eq!(nginx[0]["identity"]["name"], "nginx.service");
    assert_eq!(nginx[0]["on_expiry"], "alert", "the default");
    assert_eq!(
        nginx[0]["approver"], "dave",
        "the certificate says who approves"
    );
    assert_eq!(nginx[0]["hosts"], serde_json::json!([]));
    let nginx = nginx[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(alice, nginx);

    let stored = stored_grants(&collector).await;
    let a = &stored[&alice];
    assert_eq!(
        a.identity,
        Some(IdentitySelector {
            kind: Kind::Human.into(),
            name: "alice".into()
        })
    );
    assert_eq!(a.hosts, ["host-a"]);
    assert_eq!(a.on_expiry(), OnExpiry::Kill);
    assert_eq!(a.reason, "CHG-1");
    assert_eq!(
        (a.approver.as_str(), a.requester.as_str()),
        ("dave", "dave"),
        "the certificate says who asks and approves"
    );
    assert!(a.not_before_unix_nano >= before && a.not_before_unix_nano <= now());
    assert_eq!(a.created_unix_nano, a.not_before_unix_nano);
    assert_eq!(a.expires_at_unix_nano, a.not_before_unix_nano + 30 * MINUTE);
    assert_eq!(a.revoked_unix_nano, 0);

    let listed = json_lines(&collector, &["grant", "list", "--json"]);
    let listed: Vec<&str> = listed.iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [alice.as_str(), nginx.as_str()], "oldest first");

    let extended = ok(&collector, &["grant", "extend", &alice, "--by", "15m"]);
    assert!(extended.starts_with(&alice), "{extended}");
    let a = stored_grants(&collector).await[&alice].clone();
    assert_eq!(a.expires_at_unix_nano, a.not_before_unix_nano + 45 * MINUTE);

    let revoked = ok(&collector, &["grant", "revoke", &alice, "--reason", "done"]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let listed = ok(&collector, &["grant", "list"]);
    assert!(
        !listed.contains(&alice) && listed.contains(&nginx),
        "{listed}"
    );
    let all = json_lines(&collector, &["grant", "list", "--all", "--json"]);
    let gone = all.iter().find(|g| g["id"] == alice.as_str()).unwrap();
    assert!(gone["revoked_at"].is_string(), "{gone}");
    let revoked_at = stored_grants(&collector).await[&alice].revoked_unix_nano;
    assert!(revoked_at > a.not_before_unix_nano && revoked_at <= now());

    let changes = grant_changes(&collector).await;
    let summary: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|(action, actor, g, _)| (action.as_str(), g.id.as_str(), actor.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("create", alice.as_str(), "dave"),
            ("create", nginx.as_str(), "dave"),
            ("extend", alice.as_str(), "dave"),
            ("revoke", alice.as_str(), "dave"),
        ]
    );
    assert_eq!(
        changes[2].2.expires_at_unix_nano,
        changes[0].2.expires_at_unix_nano + 15 * MINUTE,
        "each change records the grant after it"
    );
    assert_eq!(changes[3].2.revoked_unix_nano, revoked_at);
    assert_eq!(changes[3].3, "done", "a revocation records why");
    let by_identity = search_all(
        &collector,
        Filter {
            identity: "alice".into(),
            ..Filter::default()
        },
        100,
    )
    .await;
    assert_eq!(
        by_identity.len(),
        3,
        "a search by identity finds its changes"
    );

    // The chain start, four changes, and a record of each read (list, search, verify).
    let verified = ok(&collector, &["verify"]);
    assert!(
        verified.contains("ok    collector collector") && !verified.contains("FAIL"),
        "{verified}"
    );
}

/// Bad input is refused with a clear message and a non-zero exit, and changes nothing: an
/// unknown id, a change to an ended grant, a zero ttl, no selector or two, and what only a
/// gRPC client can send (an unknown kind, an over-long name, no on-expiry).
#[tokio::test]
async fn bad_grant_requests_are_refused_clearly_and_change_nothing() {
    let dir = scratch_dir("grants-refused");
    let collector = Collector::start(&dir.join("c.db"));
    let ended = create(&collector, "--user alice --ttl 30m --reason CHG-1");
    ok(&collector, &["grant", "revoke", &ended]);
    let before = stored_grants(&collector).await;
    for (args, needle) in [
        (
            vec!["grant", "revoke", ended.as_str()],
            "has already ended: it was revoked",
        ),
        (
            vec!["grant", "extend", ended.as_str(), "--by", "5m"],
            "has already ended",
        ),
        (
            vec!["grant", "revoke", "g-0000000000000000"],
            "no grant has the id \"g-0000000000000000\"",
        ),
        (
            vec![
                "grant", "create", "--user", "bob", "--ttl", "0s", "--reason", "x",
            ],
            "ttl_millis must be more than 0",
        ),
        (
            vec!["grant", "create", "--ttl", "10m", "--reason", "x"],
            "--user",
        ),
        (
            vec![
                "grant", "create", "--user", "bob", "--unit", "x", "--ttl", "10m", "--reason", "x",
            ],
            "cannot be used with",
        ),
    ] {
        let stderr = refused(&collector, &args);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // What the CLI cannot send, straight over gRPC.
    let good = CreateGrantRequest {
        identity: Some(IdentitySelector {
            kind: Kind::Human.into(),
            name: "bob".into(),
        }),
        ttl_millis: 60_000,
        on_expiry: OnExpiry::Alert.into(),
        ..CreateGrantRequest::default()
    };
    for (request, needle) in [
        (
            CreateGrantRequest {
                identity: Some(IdentitySelector {
                    kind: Kind::Unknown.into(),
                    name: "bob".into(),
                }),
                ..good.clone()
            },
            "kind",
        ),
        (
            CreateGrantRequest {
                identity: Some(IdentitySelector {
                    kind: Kind::Human.into(),
                    name: "b".repeat(300),
                }),
                ..good.clone()
            },
            "identity name",
        ),
        (
            CreateGrantRequest {
                on_expiry: OnExpiry::Unspecified.into(),
                ..good.clone()
            },
            "on_expiry",
        ),
    ] {
        let status = grants(&collector).await.create(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.message().contains(needle), "{needle}: {status}");
    }
    assert_eq!(
        stored_grants(&collector).await,
        before,
        "nothing refused is stored"
    );
    let verdict = verify(&collector, "collector/test").await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(
        grant_changes(&collector).await.len(),
        2,
        "create, revoke: no refused change"
    );
}

/// A host's view stays readable whatever the grants hold: a grant's other hosts are left
/// out of it, and a grant that would put more than `VIEW_GRANTS_MAX` on one host is
/// refused with `RESOURCE_EXHAUSTED`, so no script of creates can make a view its agent
/// cannot decode. Other hosts keep their room.
#[tokio::test]
async fn a_hosts_view_stays_bounded() {
    let dir = scratch_dir("grants-bounded");
    let collector = Collector::start(&dir.join("c.db"));
    let client = grants(&collector).await;
    let request = |hosts: Vec<String>| CreateGrantRequest {
        identity: Some(IdentitySelector {
            kind: Kind::Human.into(),
            name: "alice".into(),
        }),
        hosts,
        ttl_millis: 1_800_000,
        reason: "CHG-9".repeat(200),
        on_expiry: OnExpiry::Alert.into(),
        ..CreateGrantRequest::default()
    };
    let wide: Vec<String> = std::iter::once("host-a".to_owned())
        .chain((1..1024).map(|i| format!("host-{i:04}-{}", "x".repeat(200))))
        .collect();
    client.clone().create(request(wide)).await.unwrap();
    let mut creates = tokio::task::JoinSet::new();
    for _ in 1..VIEW_GRANTS_MAX {
        let (mut client, request) = (client.clone(), request(vec!["host-a".into()]));
        creates.spawn(async move { client.create(request).await.map(|_| ()) });
    }
    while let Some(created) = creates.join_next().await {
        created.unwrap().unwrap();
    }
    for hosts in [vec!["host-a".to_owned()], Vec::new()] {
        let refused = client.clone().create(request(hosts)).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
        assert!(refused.message().contains("host-a"), "{refused}");
    }
    client
        .clone()
        .create(request(vec!["host-b".into()]))
        .await
        .unwrap();

    let (mut agent, _) = Agent::connect(&collector, "host-a", &[]).await;
    let view = agent.grant_view().await;
    assert_eq!(view.grants.len(), VIEW_GRANTS_MAX);
    assert!(view.grants.iter().all(|g| g.hosts == ["host-a"]));
    eprintln!(
        "a view of {} grants, reasons of 1 KB: {} bytes",
        view.grants.len(),
        view.encoded_len()
    );
    assert!(view.encoded_len() < VIEW_BYTES_MAX / 2);
}

/// After Welcome an agent stream is sent the grants of its host (and of every host), not
/// those of other hosts, with the default policy; a revocation sends a fresh view at once;
/// acks keep coming.
#[tokio::test]
async fn an_agent_is_sent_its_hosts_grants_after_welcome_and_at_each_change() {
    let dir = scratch_dir("grants-view");
    let collector = Collector::start(&dir.join("c.db"));
    let on_a = create(
        &collector,
        "--user alice --host host-a --ttl 30m --reason CHG-1",
    );
    let on_b = create(
        &collector,
        "--user bob --host host-b --ttl 30m --reason CHG-2",
    );
    let everywhere = create(
        &collector,
        "--container c0ffee --ttl 2h --on-expiry kill --reason CHG-3",
    );
    let chain = Chain::start("host-a:boot:1", "host-a", now());
    let before = now();
    let (mut agent, _) = Agent::connect(&collector, "host-a", &[chain.id.as_str()]).await;
    let view = agent.grant_view().await;
    assert_eq!(ids(&view), sorted(&[&on_a, &everywhere]), "not {on_b}");
    assert_eq!(
        view.policy,
        Some(Policy {
            require_approval: false,
            mode: Mode::Alert.into(),
            root_exec: true,
            guarded: Vec::new(),
            fail_closed_on_loss: Mode::Alert.into(),
        }),
        "the default policy"
    );
    assert!(view.issued_unix_nano >= before && view.issued_unix_nano <= now());
    let stored = stored_grants(&collector).await;
    for g in &view.grants {
        assert_eq!(g, &stored[&g.id], "the whole grant");
    }

    let (mut on_host_b, _) = Agent::connect(&collector, "host-b", &[]).await;
    assert_eq!(
        ids(&on_host_b.grant_view().await),
        sorted(&[&on_b, &everywhere])
    );

    ok(&collector, &["grant", "revoke", &on_a]);
    let view = tokio::time::timeout(Duration::from_secs(5), agent.grant_view())
        .await
        .expect("a fresh view within 5 s of the revocation");
    assert_eq!(
        ids(&view),
        sorted(&[&on_a, &everywhere]),
        "a revoked grant stays in the view"
    );
    let revoked = view.grants.iter().find(|g| g.id == on_a).unwrap();
    assert_ne!(revoked.revoked_unix_nano, 0);
    assert_eq!(revoked, &stored_grants(&collector).await[&on_a]);
    let untouched = view.grants.iter().find(|g| g.id == everywhere).unwrap();
    assert_eq!(untouched.revoked_unix_nano, 0);
    // host-b learns of the change too, and still sees no grant of host-a.
    assert_eq!(
        ids(&on_host_b.grant_view().await),
        sorted(&[&on_b, &everywhere])
    );

    assert_eq!(agent.ship(chain.batch(0..1)).await.unwrap(), 0);
    let verdict = verify(&collector, &chain.id).await;
    assert!(verdict.ok, "{verdict:?}");
}

/// A grant's `--host` may name a host by the name its agent gives it, and grants show hosts
/// by name; a host the store does not know is kept as given, an id yet to be heard of, with
/// a note: a grant on a mistyped host covers nothing.
#[tokio::test]
async fn a_grants_host_may_be_given_by_name_and_an_unknown_one_is_noted() {
    let dir = scratch_dir("grants-host-names");
    let collector = Collector::start(&dir.join("c.db"));
    let chain = Chain::start("host-a:boot:1", "host-a", now());
    let (mut agent, _) = Agent::connect(&collector, "host-a", &[chain.id.as_str()]).await;
    assert_eq!(agent.ship(chain.batch(0..1)).await.unwrap(), 0);
    let new = |host: &str| {
        recorder(
            &collector,
            &[
                "grant", "create", "--user", "carol", "--host", host, "--ttl", "30m", "--reason",
                "CHG-4", "--json",
            ],
        )
    };
    let by_name = new("name-of-host-a");
    assert!(by_name.status.success(), "{by_name:?}");
    let grant: Value = serde_json::from_slice(&by_name.stdout).unwrap();
    assert_eq!(grant["hosts"], serde_json::json!(["host-a"]), "{grant}");
    assert!(by_name.stderr.is_empty(), "{by_name:?}");
    let listed = ok(&collector, &["grant", "list"]);
    assert!(listed.contains("  on name-of-host-a[host-a]  "), "{listed}");
    let unknown = new("name-of-host-b");
    assert!(unknown.status.success(), "{unknown:?}");
    let grant: Value = serde_json::from_slice(&unknown.stdout).unwrap();
    assert_eq!(
        grant["hosts"],
        serde_json::json!(["name-of-host-b"]),
        "{grant}"
    );
    let note = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        note.contains("no host of this store has the id or name \"name-of-host-b\""),
        "{note}"
    );
}

/// `--policy FILE` is what agents are sent; a malformed or missing file stops the collector
/// at start with an error naming the file.
#[tokio::test]
async fn the_policy_file_is_sent_to_agents_and_a_bad_one_stops_the_collector() {
    let dir = scratch_dir("grants-policy");
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"mode": "kill", "root_exec": false, "fail_closed_on_loss": "kill", "guarded": [
            {"kind": "service", "name": "nginx.service"},
            {"kind": "registered", "name": "deploy-bot"}]}"#,
    )
    .unwrap();
    let collector = Collector::start_with(
        &dir.join("c.db"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &["--policy", policy.to_str().unwrap()],
    );
    let (mut agent, _) = Agent::connect(&collector, "host-a", &[]).await;
    assert_eq!(
        agent.grant_view().await.policy,
        Some(Policy {
            require_approval: false,
            mode: Mode::Kill.into(),
            fail_closed_on_loss: Mode::Kill.into(),
            root_exec: false,
            guarded: vec![
                IdentitySelector {
                    kind: Kind::Service.into(),
                    name: "nginx.service".into(),
                },
                IdentitySelector {
                    kind: Kind::Registered.into(),
                    name: "deploy-bot".into(),
                },
            ],
        })
    );

    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, r#"{"mode": "block", "root_exec": true}"#).unwrap();
    for (file, needle) in [
        (&malformed, "unknown variant `block`"),
        (&dir.join("missing.json"), "cannot read the policy file"),
    ] {
        let out = run_to_exit_with(&dir.join("other.db"), &["--policy", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Grants, their revocations and the collector's chain of their changes survive a crash and
/// restart, and later changes continue that chain.
#[tokio::test]
async fn grants_survive_a_collector_restart() {
    let dir = scratch_dir("grants-restart");
    let collector = Collector::start(&dir.join("c.db"));
    let kept = create(&collector, "--identity deploy-bot --ttl 1h --reason CHG-1");
    let ended = create(&collector, "--user alice --ttl 1h --reason CHG-2");
    ok(&collector, &["grant", "revoke", &ended]);
    let before = stored_grants(&collector).await;

    let collector = collector.restart();
    assert_eq!(stored_grants(&collector).await, before);
    let (mut agent, _) = Agent::connect(&collector, "host-a", &[]).await;
    assert_eq!(ids(&agent.grant_view().await), sorted(&[&kept, &ended]));
    ok(&collector, &["grant", "extend", &kept, "--by", "30m"]);
    assert_eq!(
        stored_grants(&collector).await[&kept].expires_at_unix_nano,
        before[&kept].expires_at_unix_nano + 30 * MINUTE
    );
    let verdict = verify(&collector, "collector/test").await;
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(
        grant_changes(&collector).await.len(),
        4,
        "two creates and a revoke, then the extend"
    );
}

fn exec(time: u64, who: (Kind, &str), grant: &str) -> Event {
    Event {
        time_unix_nano: time,
        process: Some(Process {
            pid: 4242,
            tgid: 4242,
            uid: 1000,
            euid: 0,
            loginuid: Some(1000),
            sessionid: Some(3),
            comm: "systemctl".into(),
            ..Process::default()
        }),
        identity: Some(Identity {
            kind: who.0.into(),
            name: who.1.into(),
            grant: grant.into(),
            ..Identity::default()
        }),
        session_root: Some(SessionRoot {
            pid: 4000,
            start_unix_nano: time - HOUR,
        }),
        body: Some(Body::Exec(Exec {
            filename: "/usr/bin/systemctl".into(),
            argv: vec![
                b"systemctl".to_vec().into(),
                b"restart".to_vec().into(),
                b"nginx".to_vec().into(),
            ],
            ..Exec::default()
        })),
    }
}

/// A violation following `exec(time, who, "")`.
fn violation(time: u64, who: (Kind, &str)) -> Event {
    Event {
        body: Some(Body::Violation(Violation {
            rule: "root_exec".into(),
            action: "alert".into(),
            detail: format!("systemctl restart nginx at {time}"),
        })),
        ..exec(time, who, "")
    }
}

/// The review's entry for the identity named `name`.
fn entry<'a>(review: &'a [Value], name: &str) -> &'a Value {
    review
        .iter()
        .find(|r| r["identity"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {review:?}"))
}

/// Review counts the events recorded under each grant and the violations of each identity in
/// the window, and names the grants to revoke: never used, or live but idle for over 24 h.
#[tokio::test]
async fn review_counts_grant_use_and_violations_and_names_grants_to_revoke() {
    let dir = scratch_dir("grants-review");
    let collector = Collector::start(&dir.join("c.db"));
    let used = create(
        &collector,
        "--user alice --host host-a --ttl 2h --reason CHG-1",
    );
    let unused = create(&collector, "--user bob --ttl 1h --reason CHG-2");
    let idle = create(&collector, "--unit backup.service --ttl 72h --reason CHG-3");
    let at = now();
    let alice = (Kind::Human, "alice");
    let carol = (Kind::Human, "carol");
    let nginx = (Kind::Service, "nginx.service");
    let mut chain = Chain::start("host-a:boot:review", "host-a", at - 50 * HOUR);
    let backup = (Kind::Service, "backup.service");
    chain.push(&exec(at - 49 * HOUR, backup, &idle));
    for minutes in [30, 20, 10] {
        chain.push(&exec(at - minutes * MINUTE, alice, &used));
    }
    // Outside any grant: not counted as use.
    chain.push(&exec(at - 9 * MINUTE, alice, ""));
    // Before the window: not counted.
    chain.push(&violation(at - 10 * 24 * HOUR, carol));
    for minutes in [5, 4, 3] {
        chain.push(&exec(at - minutes * MINUTE, carol, ""));
        chain.push(&violation(at - minutes * MINUTE, carol));
    }
    chain.push(&violation(at - 2 * MINUTE, nginx));
    let (mut agent, _) = Agent::connect(&collector, "host-a", &[chain.id.as_str()]).await;
    let len = chain.records.len();
    assert_eq!(
        agent.ship(chain.batch(0..len)).await.unwrap(),
        len as u64 - 1
    );

    let review = json_lines(&collector, &["review", "--since", "7d", "--json"]);
    let names: Vec<&str> = review
        .iter()
        .map(|r| r["identity"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["alice", "bob", "carol", "backup.service", "nginx.service"],
        "every identity with grants or violations, humans first"
    );

    let alice = entry(&review, "alice");
    assert_eq!(alice["grants"][0]["grant"]["id"], used.as_str());
    assert_eq!(alice["grants"][0]["events"], 3);
    assert!(alice["grants"][0]["first_use"].is_string(), "{alice}");
    assert!(alice["grants"][0]["last_use"].is_string(), "{alice}");
    assert_eq!(alice["grants"][0]["revoke_because"], "");
    assert_eq!(alice["violations"], 0);
    assert_eq!(alice["to_revoke"], serde_json::json!([]));

    let bob = entry(&review, "bob");
    assert_eq!(bob["grants"][0]["events"], 0);
    assert_eq!(bob["never_used"], serde_json::json!([unused]));
    assert_eq!(
        bob["to_revoke"],
        serde_json::json!([{"id": unused, "because": "never used"}])
    );
    assert!(bob["granted_nanos"].as_u64().unwrap() < HOUR, "{bob}");

    let backup = entry(&review, "backup.service");
    assert_eq!(backup["identity"]["kind"], "service");
    assert_eq!(backup["grants"][0]["events"], 1);
    let because = backup["grants"][0]["revoke_because"].as_str().unwrap();
    assert!(because.starts_with("unused for 2days 1h"), "{because}");

    let carol = entry(&review, "carol");
    assert_eq!(carol["grants"], serde_json::json!([]));
    assert_eq!(
        carol["violations"], 3,
        "the one 10 days ago is outside --since 7d"
    );
    let recent: Vec<&str> = carol["recent_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["kind"], "violation");
            assert_eq!(v["violation"]["rule"], "root_exec");
            v["violation"]["detail"].as_str().unwrap()
        })
        .collect();
    let detail = |m: u64| format!("systemctl restart nginx at {}", at - m * MINUTE);
    assert_eq!(recent, [detail(3), detail(4), detail(5)], "newest first");

    let nginx = entry(&review, "nginx.service");
    assert_eq!(nginx["violations"], 1);
    assert_eq!(nginx["identity"]["kind"], "service");

    let all_time = json_lines(&collector, &["review", "--since", "3650d", "--json"]);
    assert_eq!(entry(&all_time, "carol")["violations"], 4);

    let text = ok(&collector, &["review"]);
    assert!(
        text.contains(&format!("to revoke: {unused} (never used)")),
        "{text}"
    );
    assert!(
        text.contains("carol(human): 0 grants, held 0s in all, 0 never used; 3 violations"),
        "{text}"
    );
    assert!(text.contains("VIOLATION root_exec (alert)"), "{text}");
    // A host by its name, as search and sessions show it.
    assert!(
        text.contains(" name-of-host-a[host-a] carol(human) "),
        "{text}"
    );
}

/// A grant may start later: Create keeps its `not_before`, `grant list` shows it pending, and
/// agents are sent it before it starts.
#[tokio::test]
async fn a_grant_may_start_later_and_is_sent_before_it_starts() {
    let dir = scratch_dir("grants-later");
    let collector = Collector::start(&dir.join("c.db"));
    let start = now() + HOUR;
    let grant = grants(&collector)
        .await
        .create(CreateGrantRequest {
            identity: Some(IdentitySelector {
                kind: Kind::Human.into(),
                name: "alice".into(),
            }),
            hosts: vec!["host-a".into()],
            not_before_unix_nano: start,
            ttl_millis: 600_000,
            reason: "maintenance window".into(),
            on_expiry: OnExpiry::Kill.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grant.not_before_unix_nano, start);
    assert_eq!(grant.expires_at_unix_nano, start + 10 * MINUTE);
    let listed = ok(&collector, &["grant", "list"]);
    assert!(listed.contains("pending"), "{listed}");
    let (mut agent, _) = Agent::connect(&collector, "host-a", &[]).await;
    assert_eq!(agent.grant_view().await.grants, [grant]);
}
