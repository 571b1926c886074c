//! SIEM output: the real `recorder` reads a real collector, which stores a host's chain of
//! every kind of event (shipped over mutual TLS by a client speaking as the host's agent)
//! and the grant changes its operators made through the same client. Every line of
//! `--format ocsf` conforms to OCSF 1.8.0 for its class (tests/data/ocsf-1.8.0.txt), each
//! kind lands in the class docs/siem.md names, and each line names the record it came
//! from, which `verify` checks. No root needed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Output,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pki::Role;
use proto::v1::{
    Event, Exec, Exit, Fork, Gap, Identity, Kill, Process, Registered, SessionRoot, Tty, Violation,
    event::Body, gap::Source, identity::Kind, tty::Direction,
};
use serde_json::{Value, json};
use tests::{
    collector::{Collector, scratch_dir},
    grpc::{Agent, Chain},
    ocsf::Schema,
    operator::{self, Tail},
};

const HOST: &str = "3d1219c7c4c5407a9d3c2a1b0e9f8d7c";
const SECOND: u64 = 1_000_000_000;
/// Alice's audit session.
const SESSIONID: u32 = 7;
/// A login uid past OCSF's 32-bit integers.
const WIDE_UID: u32 = 3_000_000_123;
/// The grant whose end the kills of the chain enforce.
const GRANT: &str = "g-3f0c9a61d2b84e17";

fn now() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

fn alice(pid: u32, comm: &str) -> Process {
    Process {
        pid,
        tgid: pid,
        ppid: 4100,
        uid: 1000,
        euid: 0,
        gid: 1000,
        loginuid: Some(1000),
        sessionid: Some(SESSIONID),
        cgroup_id: 5012,
        tty: "136:0".into(),
        comm: comm.into(),
        elevated: false,
    }
}

fn human(name: &str) -> Identity {
    Identity {
        kind: Kind::Human.into(),
        name: name.into(),
        ..Identity::default()
    }
}

/// An event at `time` of alice's session, which began ten minutes before `t`.
fn of_alice(t: u64, time: u64, process: Process, body: Body) -> Event {
    Event {
        time_unix_nano: time,
        process: Some(process),
        identity: Some(human("alice")),
        session_root: Some(SessionRoot {
            pid: 4090,
            start_unix_nano: t - 600 * SECOND,
        }),
        body: Some(body),
    }
}

fn exec(argv: &[&str], result: i32) -> Body {
    Body::Exec(Exec {
        filename: format!("/usr/bin/{}", argv[0]),
        argv: argv.iter().map(|a| a.as_bytes().to_vec().into()).collect(),
        result,
        ..Exec::default()
    })
}

/// Alice's process events: execs (one failed), a fork, exits (one by a signal), and her
/// terminal.
fn process_events(t: u64) -> Vec<Event> {
    let at = |n: u64| t + n * SECOND;
    let tty = |direction: Direction, fd, data: &[u8]| {
        Body::Tty(Tty {
            direction: direction.into(),
            device: "136:0".into(),
            fd,
            offset: 0,
            data: data.to_vec().into(),
            redacted_bytes: 0,
            writes: 0,
            span_nanos: 0,
            write_bytes: Vec::new(),
            write_gap_nanos: Vec::new(),
            injected: false,
        })
    };
    let exit = |status, image: &str| {
        Body::Exit(Exit {
            exit_code: status,
            filename: image.into(),
        })
    };
    vec![
        of_alice(t, at(1), alice(4242, "sudo"), exec(&["sudo", "-i"], 0)),
        of_alice(t, at(2), alice(4243, "bash"), exec(&["nosuch", "--x"], -2)),
        of_alice(t, at(3), alice(4244, "bash"), Body::Fork(Fork {})),
        of_alice(t, at(4), alice(4244, "ls"), exit(2 << 8, "/usr/bin/ls")),
        of_alice(t, at(5), alice(4245, "sleep"), exit(9, "/usr/bin/sleep")),
        of_alice(
            t,
            at(6),
            alice(4242, "bash"),
            tty(Direction::Output, 1, b"# "),
        ),
        of_alice(
            t,
            at(7),
            alice(4242, "bash"),
            tty(Direction::Input, 0, b"id\r"),
        ),
    ]
}

/// Enforcement: an exec without a grant and its violation, then kills: the agent's of two
/// processes of the session, the kernel's of one task, and one that found none left.
fn enforcement_events(t: u64) -> Vec<Event> {
    let at = |n: u64| t + n * SECOND;
    let kill = |time, pids: Vec<u32>, grant: &str, reason: &str| Event {
        time_unix_nano: time,
        body: Some(Body::Kill(Kill {
            grant_id: grant.into(),
            reason: reason.into(),
            sessionid: Some(SESSIONID),
            pids,
            by: "agent".into(),
            ..Kill::default()
        })),
        ..Event::default()
    };
    let restart = exec(&["systemctl", "restart", "nginx"], 0);
    let violation = Body::Violation(Violation {
        rule: "root_exec".into(),
        action: "kill".into(),
        detail: "systemctl restart nginx".into(),
    });
    let by_kernel = Body::Kill(Kill {
        grant_id: GRANT.into(),
        reason: "expired".into(),
        pids: vec![4247],
        by: "kernel".into(),
        ..Kill::default()
    });
    vec![
        of_alice(t, at(8), alice(4246, "systemctl"), restart),
        of_alice(t, at(8), alice(4246, "systemctl"), violation),
        kill(at(9), vec![4242, 4246], "", "violation"),
        of_alice(t, at(10), alice(4247, "bash"), by_kernel),
        kill(at(11), Vec::new(), GRANT, "revoked"),
    ]
}

/// A gap, a registration, and an exec by a login uid OCSF's integers cannot hold.
fn other_events(t: u64) -> Vec<Event> {
    let at = |n: u64| t + n * SECOND;
    let gap = Body::Gap(Gap {
        source: Source::KernelRingbuf.into(),
        lost_kind: "tty_out".into(),
        records: 3,
        bytes: 300,
    });
    let registration = Body::Registration(Registered {
        sessionid: Some(8),
        identity: "deploy-bot".into(),
        peer_pid: 900,
        ..Registered::default()
    });
    let wide = Process {
        loginuid: Some(WIDE_UID),
        euid: WIDE_UID,
        ..alice(4248, "id")
    };
    vec![
        Event {
            time_unix_nano: at(12),
            body: Some(gap),
            ..Event::default()
        },
        Event {
            time_unix_nano: at(13),
            body: Some(registration),
            ..Event::default()
        },
        Event {
            identity: Some(human(&format!("uid:{WIDE_UID}"))),
            ..of_alice(t, at(14), wide, exec(&["id"], 0))
        },
    ]
}

/// The host's chain, begun at `t`: every kind an agent records, in the variants the mapping
/// tells apart.
fn host_chain(t: u64) -> Chain {
    let mut chain = Chain::start(&format!("{HOST}:boot:1"), HOST, t);
    for event in [process_events(t), enforcement_events(t), other_events(t)].concat() {
        chain.push(&event);
    }
    chain
}

fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "recorder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `recorder` as the harness's admin operator.
fn recorder(url: &str, args: &[&str]) -> String {
    succeeded(args, operator::run(url, args))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The grant id a `grant create|request` line starts with.
fn grant_id(line: &str) -> String {
    let id = line.split_whitespace().next().unwrap_or_default();
    assert!(id.starts_with("g-"), "{line}");
    id.to_owned()
}

/// Every departure from the schema of every line, with the line's record.
fn departures(schema: &Schema, lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|l| {
            schema.check(l).into_iter().map(|e| {
                format!(
                    "{} seq {} ({}): {e}",
                    l["unmapped"]["chain_id"], l["unmapped"]["seq"], l["unmapped"]["kind"]
                )
            })
        })
        .collect()
}

/// The OCSF lines of each record, by seq.
fn by_seq(lines: &[Value]) -> BTreeMap<u64, Vec<&Value>> {
    let mut out: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for l in lines {
        out.entry(l["unmapped"]["seq"].as_u64().unwrap())
            .or_default()
            .push(l);
    }
    out
}

/// Checks that each stored record of the host became the lines docs/siem.md says, each
/// naming the record, and returns the lines by kind.
fn check_mapping<'a>(records: &[Value], ocsf: &'a [Value]) -> BTreeMap<String, Vec<&'a Value>> {
    let lines = by_seq(ocsf);
    let mut by_kind: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for record in records {
        let seq = record["seq"].as_u64().unwrap();
        let kind = record["kind"].as_str().unwrap();
        let mine = lines.get(&seq).cloned().unwrap_or_default();
        let classes: Vec<u64> = mine
            .iter()
            .map(|l| l["class_uid"].as_u64().unwrap())
            .collect();
        let expected = match kind {
            "exec" | "fork" | "exit" => vec![1007],
            "violation" => vec![2004],
            "kill" => match record["kill"]["pids"].as_array().unwrap().len() {
                0 => vec![7001],
                n => vec![7003; n],
            },
            _ => vec![0],
        };
        assert_eq!(classes, expected, "seq {seq} ({kind}): {mine:?}");
        for line in &mine {
            for key in ["kind", "host", "chain_id", "seq", "hash"] {
                assert_eq!(
                    line["unmapped"][key], record[key],
                    "seq {seq}: {key} leads back to the record"
                );
            }
            assert_eq!(line["metadata"]["version"], "1.8.0");
            assert_eq!(
                line["metadata"]["original_event_uid"],
                format!("{}:{seq}", record["chain_id"].as_str().unwrap())
            );
            if classes == [0] {
                assert_eq!(
                    line["unmapped"], *record,
                    "an unmapped kind keeps the whole record"
                );
                assert_eq!(line["activity_name"], kind);
            }
        }
        by_kind.entry(kind.to_owned()).or_default().extend(mine);
    }
    by_kind
}

/// The lines of each kind, by kind.
type ByKind<'a> = BTreeMap<String, Vec<&'a Value>>;

/// The process events: the process, the person behind it, the Linux profile's ids and the
/// audit session.
fn check_process_lines(by_kind: &ByKind<'_>, session_key: &str) {
    let execs = &by_kind["exec"];
    let sudo = execs[0];
    let field = |line: &Value, path: &str| line.pointer(path).cloned().unwrap_or_default();
    let fields = |line: &Value, paths: &[&str]| -> Vec<Value> {
        paths.iter().map(|p| field(line, p)).collect()
    };
    assert_eq!(
        fields(sudo, &["/activity_id", "/launch_type_id", "/status_id"]),
        [json!(1), json!(3), json!(1)]
    );
    assert_eq!(
        fields(
            sudo,
            &["/process/cmd_line", "/process/file/path", "/process/pid"]
        ),
        [json!("sudo -i"), json!("/usr/bin/sudo"), json!(4242)]
    );
    assert_eq!(
        fields(
            sudo,
            &["/process/auid", "/process/euid", "/process/user/uid"]
        ),
        [json!(1000), json!(0), json!("1000")]
    );
    let session = json!({"uid": session_key, "uid_alt": "7", "terminal": "136:0"});
    for key in ["uid", "uid_alt", "terminal"] {
        assert_eq!(sudo["process"]["session"][key], session[key]);
    }
    assert_eq!(
        sudo["actor"]["user"],
        json!({"name": "alice", "uid": "1000", "type_id": 1, "type": "User"})
    );
    assert_eq!(
        fields(sudo, &["/device/uid", "/metadata/correlation_uid"]),
        [json!(HOST), json!(session_key)]
    );
    assert_eq!(sudo["unmapped"]["argv"], json!(["sudo", "-i"]));
    assert_eq!(
        fields(execs[1], &["/status_id", "/status_code"]),
        [json!(2), json!("-2")],
        "a failed exec"
    );
    let wide = execs.last().unwrap();
    assert_eq!(
        fields(
            wide,
            &["/process/auid", "/unmapped/loginuid", "/actor/user/uid"]
        ),
        [Value::Null, json!(WIDE_UID), json!(WIDE_UID.to_string())],
        "past 32 bits: exact under unmapped, and as a string"
    );
    let fork = by_kind["fork"][0];
    assert_eq!(
        fields(
            fork,
            &["/activity_id", "/launch_type_id", "/actor/process/pid"]
        ),
        [json!(1), json!(2), json!(4100)],
        "the parent forks"
    );
    let exits = &by_kind["exit"];
    assert_eq!(
        fields(exits[0], &["/activity_id", "/exit_code"]),
        [json!(2), json!(2)]
    );
    assert_eq!(
        fields(exits[1], &["/exit_code", "/status_detail"]),
        [Value::Null, json!("killed by signal 9")]
    );
}

/// The violation and the kills.
fn check_enforcement_lines(by_kind: &ByKind<'_>) {
    let finding = by_kind["violation"][0];
    assert_eq!(finding["finding_info"]["uid"], finding["unmapped"]["hash"]);
    assert_eq!(finding["finding_info"]["analytic"]["name"], "root_exec");
    assert_eq!(finding["evidences"][0]["process"]["pid"], 4246);
    assert_eq!(finding["evidences"][0]["actor"]["user"]["name"], "alice");
    assert_eq!(finding["severity_id"], 4);

    let kills = &by_kind["kill"];
    let pids: Vec<u64> = kills
        .iter()
        .filter_map(|k| k["process"]["pid"].as_u64())
        .collect();
    assert_eq!(pids, [4242, 4246, 4247], "one line per process killed");
    assert_eq!(
        kills[0]["command_uid"], kills[1]["command_uid"],
        "one command"
    );
    assert_ne!(kills[0]["metadata"]["uid"], kills[1]["metadata"]["uid"]);
    assert_eq!(kills[0]["process"]["session"]["uid_alt"], "7");
    assert_eq!(
        kills[2]["process"]["auid"], 1000,
        "the kernel's kill names its task"
    );
    assert_eq!(kills[2]["metadata"]["correlation_uid"], GRANT);
    assert_eq!(
        (&kills[3]["class_uid"], &kills[3]["status_id"]),
        (&json!(7001), &json!(3)),
        "nothing left to kill"
    );
}

/// Each grant change is a User Access Management event about the grant's identity, made by
/// the operator whose certificate did it, tied to its grant.
fn check_grant_lines(all: &[Value], granted: &str, requested: &str) {
    let changes: Vec<Vec<Value>> = all
        .iter()
        .filter(|l| l["class_uid"] == 3005)
        .map(|l| {
            [
                "/activity_id",
                "/activity_name",
                "/user/name",
                "/actor/user/name",
            ]
            .iter()
            .map(|p| l.pointer(p).cloned().unwrap_or_default())
            .chain([l["metadata"]["correlation_uid"].clone()])
            .collect()
        })
        .collect();
    assert_eq!(
        changes,
        [
            json!([1, "Assign Privileges", "alice", "dave", granted]),
            json!([99, "Extend", "alice", "dave", granted]),
            json!([2, "Revoke Privileges", "alice", "dave", granted]),
            json!([99, "Request", "backup.service", "dave", requested]),
            json!([1, "Assign Privileges", "backup.service", "erin", requested]),
        ]
        .map(|v| v.as_array().unwrap().clone())
    );
    let create = all.iter().find(|l| l["class_uid"] == 3005).unwrap();
    assert_eq!(create["resources"], json!([{"uid": HOST, "type": "host"}]));
    assert_eq!(create["privileges"], json!(["privileged activity"]));
    assert_eq!(
        create["unmapped"]["grant_change"]["grant"]["reason"],
        "CHG-1"
    );
}

/// Makes grant changes of every action through the CLI, as two approvers; returns the ids
/// of the grant created and of the one requested.
fn change_grants(collector: &Collector) -> (String, String) {
    let url = collector.url();
    let test_pki = collector.pki.as_ref().unwrap();
    let dave = test_pki.operator("dave", Role::Approver);
    let erin = test_pki.operator("erin", Role::Approver);
    let as_ = |who: &Path, args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        succeeded(&args, operator::run_as(&url, who, &args))
    };
    let granted = grant_id(&as_(
        &dave,
        &format!(
            "grant create --user alice --host {HOST} --ttl 30m --on-expiry kill --reason CHG-1"
        ),
    ));
    as_(&dave, &format!("grant extend {granted} --by 15m"));
    as_(&dave, &format!("grant revoke {granted} --reason done"));
    let requested = grant_id(&as_(
        &dave,
        "grant request --unit backup.service --ttl 1h --reason CHG-2",
    ));
    as_(&erin, &format!("grant approve {requested}"));
    (granted, requested)
}

/// Reads `want` lines of a running tail.
fn tail_lines(tail: &Tail, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tail.lines.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(e) => panic!("tail gave {} of {want} lines: {e}", got.len()),
        }
    }
    got
}

/// `--json` stays an alias of `--format json`, and text stays the default.
fn check_formats(url: &str) {
    let search = |extra: &str| {
        let args: Vec<String> = format!("search --host {HOST} --since 1h {extra}")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        operator::run(url, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = |extra| {
        let o = search(extra);
        assert!(
            o.status.success(),
            "{extra}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    assert_eq!(out("--json"), out("--format json"));
    assert_eq!(out(""), out("--format text"));
    assert!(
        !search("--json --format ocsf").status.success(),
        "--json and --format conflict"
    );
}

/// Every kind the recorder stores, through `search` and `tail --format ocsf`: each line
/// conforms to OCSF 1.8.0 for its class, each kind is in its class (or a Base Event, the
/// record kept whole), and each line leads back to a record that verifies.
#[tokio::test]
async fn ocsf_lines_conform_to_the_schema_and_lead_back_to_the_evidence() {
    let dir = scratch_dir("siem-ocsf");
    let collector = Collector::start(&dir.join("c.db"));
    let url = collector.url();
    let (granted, requested) = change_grants(&collector);
    let chain = host_chain(now() - 600 * SECOND);
    let (mut agent, _) = Agent::connect(&collector, HOST, &[chain.id.as_str()]).await;
    let len = chain.records.len();
    let last = agent.ship(chain.batch(0..len)).await.unwrap();
    assert_eq!(last, len as u64 - 1);

    let search = |args: &[&str]| {
        let args = [&["search", "--since", "1h", "--limit", "100000"], args].concat();
        json_lines(&recorder(&url, &args))
    };
    let records = search(&["--host", HOST, "--json"]);
    assert_eq!(records.len(), len);
    let ocsf = search(&["--host", HOST, "--format", "ocsf"]);
    let everything = search(&["--format", "ocsf"]);

    let wrong = departures(&Schema::load(), &everything);
    assert!(
        wrong.is_empty(),
        "{} departures:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let classes: BTreeSet<u64> = everything
        .iter()
        .filter_map(|l| l["class_uid"].as_u64())
        .collect();
    assert_eq!(
        classes,
        BTreeSet::from([0, 1007, 2004, 3005, 7001, 7003]),
        "every class the mapping uses is checked"
    );
    let by_kind = check_mapping(&records, &ocsf);
    check_process_lines(&by_kind, records[1]["session"].as_str().unwrap());
    check_enforcement_lines(&by_kind);
    check_grant_lines(&everything, &granted, &requested);
    assert!(
        everything
            .iter()
            .any(|l| l["class_uid"] == 0 && l["unmapped"]["kind"] == "access"),
        "the collector's own records are there too, unmapped"
    );

    // `tail` prints the same lines, stored history first.
    let tail = Tail::start_format(&url, "ocsf", &["--host", HOST, "--since", "1h"]);
    assert_eq!(tail_lines(&tail, ocsf.len()), ocsf);

    // A finding leads back to evidence that verifies.
    let chain_id = by_kind["violation"][0]["unmapped"]["chain_id"]
        .as_str()
        .unwrap();
    let verdict = json_lines(&recorder(&url, &["verify", "--chain", chain_id, "--json"]));
    assert_eq!(verdict[0]["ok"], true, "{verdict:?}");
    assert_eq!(verdict[0]["records"].as_u64(), Some(len as u64));

    check_formats(&url);
}
