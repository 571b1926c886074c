//! `--format ocsf`: stored events as events of the Open Cybersecurity Schema Framework, one
//! JSON object per line, for SIEMs that ingest OCSF. docs/siem.md is the mapping, kind by
//! kind, and says why each class was chosen.
//!
//! A kind OCSF has no honest class for (terminal data, gaps, chain starts, alerts, …) is a
//! Base Event with the recorder's own JSON (docs/events.md) under `unmapped`: a SIEM rule
//! written for a class must never match something that is not that thing. Every line,
//! mapped or not, carries the record's references under `unmapped` (`host`, `chain_id`,
//! `seq`, `hash`), so a finding in a SIEM leads back to the record `recorder verify` checks.

use std::{borrow::Cow, path::Path};

use proto::{
    kind::Kind,
    v1::{
        Event, Exec, Exit, GrantChange, Identity, Kill, Process, StoredEvent, Violation,
        event::Body, identity,
    },
};
use serde_json::{Map, Value, json};

use crate::render;

/// The OCSF schema version every line follows and names in `metadata.version`: 1.8.0, the
/// newest 1.x release.
const VERSION: &str = "1.8.0";

/// The Linux extension (uid 1) of the same schema release, whose `linux_users` profile
/// holds the process's audit and effective ids.
const LINUX_USERS: &str = "linux/linux_users";

/// The profile that puts `device` on classes without one of their own (Remediation).
const HOST: &str = "host";

/// An OCSF event class: its id, its name and its category.
#[derive(Clone, Copy)]
struct Class {
    uid: u32,
    name: &'static str,
    category: (u32, &'static str),
}

const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category: (0, "Uncategorized"),
};
const PROCESS_ACTIVITY: Class = Class {
    uid: 1007,
    name: "Process Activity",
    category: (1, "System Activity"),
};
const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category: (2, "Findings"),
};
const USER_ACCESS: Class = Class {
    uid: 3005,
    name: "User Access Management",
    category: (3, "Identity & Access Management"),
};
const REMEDIATION_ACTIVITY: Class = Class {
    uid: 7001,
    name: "Remediation Activity",
    category: (7, "Remediation"),
};
const PROCESS_REMEDIATION: Class = Class {
    uid: 7003,
    name: "Process Remediation Activity",
    category: (7, "Remediation"),
};

/// An enumerated value: its id and its caption (an activity, a status, a severity).
type Enum<'a> = (u32, &'a str);

const INFORMATIONAL: Enum = (1, "Informational");
const MEDIUM: Enum = (3, "Medium");
const HIGH: Enum = (4, "High");
const SUCCESS: Enum = (1, "Success");
const FAILURE: Enum = (2, "Failure");
/// Remediation Activity's status when there was nothing left to remediate.
const DOES_NOT_EXIST: Enum = (3, "Does Not Exist");
/// Process Activity's activities.
const LAUNCH: Enum = (1, "Launch");
const TERMINATE: Enum = (2, "Terminate");
/// Process Activity's launch types: the two steps of Unix process creation.
const FORK: Enum = (2, "Fork");
const EXEC: Enum = (3, "Exec");
/// The D3FEND tactic Remediation Activity's activities follow: killing a process evicts it.
const EVICT: Enum = (2, "Evict");
/// File types.
const UNKNOWN_FILE: Enum = (0, "Unknown");
const EXECUTABLE_FILE: Enum = (8, "Executable File");

/// What a grant lets its identity do (docs/grants.md): privileged activity (an exec as root
/// in a human session, any activity of a guarded identity) without a violation.
const PRIVILEGE: &str = "privileged activity";

/// The OCSF lines of one stored event: one, except for a kill of several processes, which is
/// one Process Remediation Activity per process killed.
#[must_use]
pub fn lines(stored: &StoredEvent) -> Vec<Value> {
    let record = Record::new(stored);
    let Some(event) = &stored.event else {
        return vec![record.unmapped()];
    };
    let p = event.process.as_ref();
    match (&event.body, p) {
        (Some(Body::Exec(x)), Some(p)) => vec![record.exec(p, x)],
        (Some(Body::Fork(_)), Some(p)) => vec![record.fork(p)],
        (Some(Body::Exit(x)), Some(p)) => vec![record.exit(p, x)],
        (Some(Body::Violation(v)), _) => vec![record.violation(p, v)],
        (Some(Body::Kill(k)), _) => record.kill(p, k),
        (Some(Body::GrantChange(c)), _) => {
            vec![record.grant(c).unwrap_or_else(|| record.unmapped())]
        }
        // No honest class (docs/siem.md), or an event without what its class requires: a
        // process event without its process.
        _ => vec![record.unmapped()],
    }
}

/// One stored event and what every line made from it shares.
struct Record<'a> {
    stored: &'a StoredEvent,
    event: Option<&'a Event>,
    /// The event in the recorder's own schema (docs/events.md), with its references.
    own: Value,
}

impl<'a> Record<'a> {
    fn new(stored: &'a StoredEvent) -> Self {
        Self {
            stored,
            event: stored.event.as_ref(),
            own: render::json(stored),
        }
    }

    fn time_unix_nano(&self) -> u64 {
        self.event.map_or(0, |e| e.time_unix_nano)
    }

    fn hash(&self) -> &str {
        self.own["hash"].as_str().unwrap_or_default()
    }

    fn session_key(&self) -> Option<&str> {
        Some(self.stored.session.as_str()).filter(|s| !s.is_empty())
    }

    /// The host the record came from. Only records of agents' chains are mapped to classes
    /// that name a device: the collector's own chain is not a host.
    fn device(&self) -> Value {
        json!({"uid": self.stored.host, "type_id": 0, "type": "Unknown"})
    }

    /// The recorder's own fields named by `keys`, with the record's references: what OCSF
    /// has no attribute for, under the names docs/events.md gives them.
    fn own_fields(&self, keys: &[&str]) -> Value {
        const REFERENCES: [&str; 8] = [
            "kind",
            "host",
            "chain_id",
            "seq",
            "hash",
            "session",
            "identity",
            "cgroup_id",
        ];
        let mut out = Map::new();
        for key in REFERENCES.iter().chain(keys) {
            if let Some(v) = self.own.get(*key).filter(|v| !v.is_null()) {
                out.insert((*key).to_owned(), v.clone());
            }
        }
        Value::Object(out)
    }

    /// The attributes every line has (classification, time, metadata, message) around the
    /// class's own `fields`. `part` tells apart the lines of one record (the pid of a
    /// kill's line); `correlation` ties related lines together (a session, a grant).
    #[expect(
        clippy::too_many_arguments,
        reason = "each kind decides each of them; a struct would only rename them"
    )]
    fn line(
        &self,
        class: Class,
        activity: Enum<'_>,
        severity: Enum<'_>,
        profiles: &[&str],
        part: Option<u32>,
        correlation: Option<&str>,
        fields: Value,
        unmapped: Value,
    ) -> Value {
        let uid = match part {
            Some(part) => format!("{}:{part}", self.hash()),
            None => self.hash().to_owned(),
        };
        let extensions = profiles
            .contains(&LINUX_USERS)
            .then(|| json!([{"name": "linux", "uid": "1", "version": VERSION}]));
        let mut line = json!({
            "class_uid": class.uid,
            "class_name": class.name,
            "category_uid": class.category.0,
            "category_name": class.category.1,
            "activity_id": activity.0,
            "activity_name": activity.1,
            "type_uid": u64::from(class.uid) * 100 + u64::from(activity.0),
            "type_name": format!("{}: {}", class.name, activity.1),
            "severity_id": severity.0,
            "severity": severity.1,
            "time": self.time_unix_nano() / 1_000_000,
            "timezone_offset": 0,
            "message": self.event.map(render::detail),
            "metadata": {
                "version": VERSION,
                "product": {"name": "recorder", "version": env!("CARGO_PKG_VERSION")},
                "uid": uid,
                "original_event_uid": format!("{}:{}", self.stored.chain_id, self.stored.seq),
                "correlation_uid": correlation,
                "profiles": (!profiles.is_empty()).then_some(profiles),
                "extensions": extensions,
            },
        });
        if let (Value::Object(line), Value::Object(fields)) = (&mut line, fields) {
            line.extend(fields);
        }
        compact(&mut line);
        line["unmapped"] = unmapped;
        line
    }

    /// A Base Event: the record as the recorder's own JSON under `unmapped`, classed as
    /// nothing it is not.
    fn unmapped(&self) -> Value {
        let kind = self.event.and_then(Kind::of);
        let severity = match kind {
            // Lost evidence needs a look; a collector alert needs one now.
            Some(Kind::Gap) => MEDIUM,
            Some(Kind::Alert) => HIGH,
            _ => INFORMATIONAL,
        };
        self.line(
            BASE_EVENT,
            (99, kind.map_or("unknown", Kind::name)),
            severity,
            &[],
            None,
            self.session_key(),
            json!({}),
            self.own.clone(),
        )
    }

    /// The process OCSF's process object describes, with the Linux profile's ids and its
    /// audit session.
    fn process(&self, p: &Process) -> Value {
        json!({
            "pid": p.tgid,
            "ptid": p.pid,
            "name": non_empty(&p.comm),
            "user": {"uid": p.uid.to_string()},
            "group": {"uid": p.gid.to_string()},
            "auid": p.loginuid.and_then(integer),
            "euid": integer(p.euid),
            "parent_process": {"pid": p.ppid},
            "session": self.session(p),
        })
    }

    /// The process as the actor of its own activity: the one that execs or exits.
    fn itself(p: &Process) -> Value {
        json!({"pid": p.tgid, "ptid": p.pid})
    }

    /// The audit session: its key (unique across hosts and boots) as `uid`, the kernel's
    /// session id as `uid_alt`, when its root process started, the controlling terminal.
    fn session(&self, p: &Process) -> Option<Value> {
        let sessionid = p.sessionid?;
        Some(json!({
            "uid": self.session_key(),
            "uid_alt": sessionid.to_string(),
            "created_time": self
                .event
                .and_then(|e| e.session_root.as_ref())
                .map(|r| r.start_unix_nano / 1_000_000),
            "terminal": non_empty(&p.tty),
        }))
    }

    /// Who acted: `process`, the identity behind it (a person by login uid, a service, a
    /// workload, a registered identity) and the audit session.
    fn actor(&self, process: &Value, p: &Process) -> Value {
        json!({
            "process": process,
            "user": self.event
                .and_then(|e| e.identity.as_ref())
                .and_then(|i| identity_user(i, p.loginuid)),
            "session": self.session(p),
        })
    }

    /// The recorder's own fields that OCSF's 32-bit `auid` and `euid` cannot hold.
    fn wide_ids(p: &Process) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if p.loginuid.is_some_and(|v| integer(v).is_none()) {
            keys.push("loginuid");
        }
        if integer(p.euid).is_none() {
            keys.push("euid");
        }
        keys
    }

    fn process_activity(
        &self,
        p: &Process,
        activity: Enum<'_>,
        status: Enum<'_>,
        fields: Value,
        own: &[&str],
    ) -> Value {
        let mut keys = Self::wide_ids(p);
        keys.extend(own);
        self.line(
            PROCESS_ACTIVITY,
            activity,
            INFORMATIONAL,
            &[LINUX_USERS],
            None,
            self.session_key(),
            merge(
                json!({
                    "device": self.device(),
                    "status_id": status.0,
                    "status": status.1,
                }),
                fields,
            ),
            self.own_fields(&keys),
        )
    }

    /// Launch, of the exec kind: the process is the new image; the actor, the same process
    /// before it.
    fn exec(&self, p: &Process, x: &Exec) -> Value {
        let ok = x.result == 0;
        let mut process = self.process(p);
        process["cmd_line"] = x
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a))
            .collect::<Vec<_>>()
            .join(" ")
            .into();
        // A failed exec names a file that may not exist, or not be executable.
        process["file"] = file(&x.filename, if ok { EXECUTABLE_FILE } else { UNKNOWN_FILE });
        if !x.cwd.is_empty() {
            process["working_directory"] = x.cwd.clone().into();
        }
        let errno = x.result.checked_neg().filter(|_| !ok);
        self.process_activity(
            p,
            LAUNCH,
            if ok { SUCCESS } else { FAILURE },
            json!({
                "launch_type_id": EXEC.0,
                "launch_type": EXEC.1,
                "process": process,
                "actor": self.actor(&Self::itself(p), p),
                "status_code": errno.map(|_| x.result.to_string()),
                "status_detail": errno.map(|e| std::io::Error::from_raw_os_error(e).to_string()),
            }),
            &[
                "argv",
                "argv_truncated",
                "argv_unreadable",
                "filename_truncated",
                "result",
                "interpreter",
                "interpreter_truncated",
                "executable",
                "image",
            ],
        )
    }

    /// Launch, of the fork kind: the process is the child; the actor, its parent.
    fn fork(&self, p: &Process) -> Value {
        let mut process = self.process(p);
        process["created_time"] = (self.time_unix_nano() / 1_000_000).into();
        self.process_activity(
            p,
            LAUNCH,
            SUCCESS,
            json!({
                "launch_type_id": FORK.0,
                "launch_type": FORK.1,
                "process": process,
                "actor": self.actor(&json!({"pid": p.ppid}), p),
            }),
            &[],
        )
    }

    /// Terminate, reflexive: the process ended itself or was ended by a signal.
    fn exit(&self, p: &Process, x: &Exit) -> Value {
        let mut process = self.process(p);
        if !x.filename.is_empty() {
            process["file"] = file(&x.filename, EXECUTABLE_FILE);
        }
        process["terminated_time"] = (self.time_unix_nano() / 1_000_000).into();
        // A wait status: the exit code in bits 8-15, or the signal that ended it in bits
        // 0-6. OCSF's exit code is the former only.
        let signal = x.exit_code & 0x7f;
        self.process_activity(
            p,
            TERMINATE,
            SUCCESS,
            json!({
                "process": process,
                "actor": self.actor(&Self::itself(p), p),
                "exit_code": (signal == 0).then_some((x.exit_code >> 8) & 0xff),
                "status_detail": (signal != 0).then(|| format!("killed by signal {signal}")),
            }),
            &["exit_code"],
        )
    }

    /// A Detection Finding: privileged activity without a grant, with the process and the
    /// identity it is about as evidence when the violation carries them.
    fn violation(&self, p: Option<&Process>, v: &Violation) -> Value {
        let mut keys = p.map(Self::wide_ids).unwrap_or_default();
        keys.push("violation");
        let evidence = p.map(|p| {
            json!([{
                "actor": self.actor(&Self::itself(p), p),
                "process": self.process(p),
            }])
        });
        self.line(
            DETECTION_FINDING,
            (1, "Create"),
            HIGH,
            if p.is_some() { &[LINUX_USERS] } else { &[] },
            None,
            self.session_key(),
            json!({
                "finding_info": {
                    "uid": self.hash(),
                    "title": format!("Privileged activity without a grant ({})", v.rule),
                    "desc": v.detail,
                    "types": [v.rule],
                    "analytic": {"name": v.rule, "type_id": 1, "type": "Rule"},
                    "created_time": self.time_unix_nano() / 1_000_000,
                },
                "evidences": evidence,
                "device": self.device(),
                "is_alert": true,
                "status_id": 1,
                "status": "New",
            }),
            self.own_fields(&keys),
        )
    }

    /// Process Remediation Activity per process killed. A kill that found no process left is
    /// a Remediation Activity whose target does not exist.
    fn kill(&self, p: Option<&Process>, k: &Kill) -> Vec<Value> {
        let cause = if k.grant_id.is_empty() {
            k.reason.clone()
        } else {
            format!("grant {} {}", k.grant_id, k.reason)
        };
        let fields = |process: Option<Value>| {
            json!({
                "command_uid": self.hash(),
                "process": process,
                "countermeasures": [{
                    "d3f_tactic": {"name": EVICT.1},
                    "d3f_technique": {"uid": "D3-PT", "name": "Process Termination"},
                }],
                "remediation": {"desc": format!("SIGKILL sent by the {}: {cause}", k.by)},
                "device": self.device(),
            })
        };
        let grant = Some(k.grant_id.as_str()).filter(|g| !g.is_empty());
        let own = self.own_fields(&["kill"]);
        if k.pids.is_empty() {
            return vec![self.line(
                REMEDIATION_ACTIVITY,
                EVICT,
                INFORMATIONAL,
                &[HOST],
                None,
                grant,
                merge(
                    fields(None),
                    json!({"status_id": DOES_NOT_EXIST.0, "status": DOES_NOT_EXIST.1}),
                ),
                own,
            )];
        }
        k.pids
            .iter()
            .map(|&pid| {
                // The kernel's kills carry the task they killed; the agent's name a session or
                // a cgroup and the pids it found in it.
                let process = match p {
                    Some(p) if p.tgid == pid => self.process(p),
                    _ => json!({
                        "pid": pid,
                        "session": k.sessionid.map(|s| json!({"uid_alt": s.to_string()})),
                    }),
                };
                self.line(
                    PROCESS_REMEDIATION,
                    EVICT,
                    INFORMATIONAL,
                    &[HOST, LINUX_USERS],
                    Some(pid),
                    grant,
                    merge(
                        fields(Some(process)),
                        json!({"status_id": SUCCESS.0, "status": SUCCESS.1}),
                    ),
                    own.clone(),
                )
            })
            .collect()
    }

    /// User Access Management: a grant assigns its identity privileged activity, a revocation
    /// takes it back; a request (which covers nothing yet) and an extension are other
    /// activities of the class. None for a change that names no identity OCSF's `user`
    /// (required) can hold.
    fn grant(&self, c: &GrantChange) -> Option<Value> {
        let grant = c.grant.as_ref()?;
        let who = grant.identity.as_ref()?;
        let user = user(who.kind(), &who.name, None)?;
        let activity = match c.action.as_str() {
            "create" | "approve" => (1, "Assign Privileges"),
            "revoke" => (2, "Revoke Privileges"),
            "request" => (99, "Request"),
            "extend" => (99, "Extend"),
            other => (99, other),
        };
        let hosts: Vec<Value> = grant
            .hosts
            .iter()
            .map(|h| json!({"uid": h, "type": "host"}))
            .collect();
        Some(self.line(
            USER_ACCESS,
            activity,
            INFORMATIONAL,
            &[],
            None,
            Some(&grant.id),
            json!({
                "user": user,
                "privileges": [PRIVILEGE],
                "resources": (!hosts.is_empty()).then_some(hosts),
                "actor": non_empty(&c.actor).map(|a| json!({"user": {"name": a}})),
                "status_id": SUCCESS.0,
                "status": SUCCESS.1,
            }),
            self.own_fields(&["grant_change"]),
        ))
    }
}

/// The user an identity names; none for an unknown one.
fn identity_user(identity: &Identity, loginuid: Option<u32>) -> Option<Value> {
    let kind = identity.kind();
    let uid = loginuid.filter(|_| kind == identity::Kind::Human);
    if identity.name.is_empty() && uid.is_none() {
        return None;
    }
    user(kind, &identity.name, uid)
}

/// An identity as OCSF's user: a person (by login uid), a service account (a systemd unit),
/// or another kind OCSF has no type for, named by the recorder's word.
fn user(kind: identity::Kind, name: &str, uid: Option<u32>) -> Option<Value> {
    let (type_id, type_name) = match kind {
        identity::Kind::Human => (1, "User"),
        identity::Kind::Service => (4, "Service"),
        identity::Kind::Workload | identity::Kind::Registered => (99, kind.name()),
        identity::Kind::Unknown | identity::Kind::Unspecified => return None,
    };
    Some(json!({
        "name": non_empty(name),
        "uid": uid.map(|u| u.to_string()),
        "type_id": type_id,
        "type": type_name,
    }))
}

/// A file by its path.
fn file(path: &str, kind: Enum<'_>) -> Value {
    if path.is_empty() {
        return Value::Null;
    }
    let name = Path::new(path)
        .file_name()
        .map_or(Cow::Borrowed(path), |n| n.to_string_lossy());
    json!({"name": name, "path": path, "type_id": kind.0, "type": kind.1})
}

/// OCSF's `integer_t` is a signed 32-bit integer: an id past 2^31 (a user namespace's range,
/// say) does not fit and is left out, to stay exact under `unmapped`.
fn integer(v: u32) -> Option<i32> {
    i32::try_from(v).ok()
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// `a` with the members of `b` added.
fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        a.extend(b);
    }
    a
}

/// Leaves out the attributes an event does not have: OCSF omits them rather than writing
/// null.
fn compact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(compact);
        }
        Value::Array(items) => items.iter_mut().for_each(compact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{
        Access, AdminAct, Alert, ChainStart, Fork, Gap, Grant, IdentitySelector, Prune, Receipt,
        Registered, SessionRoot, Tty, tty::Direction,
    };

    const T: u64 = 1_796_202_843_120_441_967;
    const ROOT: u64 = 1_796_202_801_000_000_000;
    const KEY: &str = "h:7:1796202801000000000";

    fn process() -> Process {
        Process {
            pid: 4243,
            tgid: 4242,
            ppid: 4100,
            uid: 1000,
            euid: 0,
            gid: 1001,
            loginuid: Some(1000),
            sessionid: Some(7),
            cgroup_id: 5012,
            tty: "136:0".into(),
            comm: "sudo".into(),
            elevated: true,
        }
    }

    fn identity(kind: identity::Kind, name: &str) -> Identity {
        Identity {
            kind: kind.into(),
            name: name.into(),
            ..Identity::default()
        }
    }

    /// An event of alice's session 7 on host `h`.
    fn event(body: Body) -> Event {
        Event {
            time_unix_nano: T,
            process: Some(process()),
            identity: Some(identity(identity::Kind::Human, "alice")),
            session_root: Some(SessionRoot {
                pid: 4090,
                start_unix_nano: ROOT,
            }),
            body: Some(body),
        }
    }

    /// `event` as the collector returns it: record 5 of chain `h:boot:1`.
    fn stored(event: Event) -> StoredEvent {
        let session = if event.session_root.is_some() {
            KEY.into()
        } else {
            String::new()
        };
        StoredEvent {
            host: "h".into(),
            chain_id: "h:boot:1".into(),
            seq: 5,
            session,
            event: Some(event),
            hash: vec![0xab; 32],
            malformed: String::new(),
        }
    }

    fn one(event: Event) -> Value {
        let mut lines = lines(&stored(event));
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines.remove(0)
    }

    fn class(line: &Value) -> (u64, u64) {
        (
            line["class_uid"].as_u64().unwrap(),
            line["activity_id"].as_u64().unwrap(),
        )
    }

    /// What every line carries, whatever its class.
    fn check_common(line: &Value) {
        assert_eq!(line["metadata"]["version"], "1.8.0");
        assert_eq!(line["metadata"]["original_event_uid"], "h:boot:1:5");
        assert_eq!(line["time"], T / 1_000_000);
        let uid = line["class_uid"].as_u64().unwrap();
        assert_eq!(
            line["type_uid"].as_u64().unwrap(),
            uid * 100 + line["activity_id"].as_u64().unwrap()
        );
        for (key, value) in [
            ("host", json!("h")),
            ("chain_id", json!("h:boot:1")),
            ("seq", json!(5)),
            ("hash", json!("ab".repeat(32))),
        ] {
            assert_eq!(line["unmapped"][key], value, "{key} in {line}");
        }
        let mut mapped = line.clone();
        mapped.as_object_mut().unwrap().remove("unmapped");
        assert!(
            !mapped.to_string().contains("null"),
            "absent, not null, outside the record: {line}"
        );
    }

    fn exec(argv: &[&str], result: i32) -> Body {
        Body::Exec(Exec {
            filename: "/usr/bin/sudo".into(),
            argv: argv.iter().map(|a| a.as_bytes().to_vec().into()).collect(),
            result,
            cwd: "/root".into(),
            ..Exec::default()
        })
    }

    #[test]
    fn an_exec_is_a_launch_of_the_exec_kind_with_the_linux_ids_and_the_session() {
        let line = one(event(exec(&["sudo", "-i"], 0)));
        check_common(&line);
        assert_eq!(class(&line), (1007, 1));
        assert_eq!(line["launch_type_id"], 3);
        assert_eq!(
            (&line["status_id"], &line["severity_id"]),
            (&json!(1), &json!(1))
        );
        let p = &line["process"];
        assert_eq!(
            (&p["pid"], &p["ptid"], &p["name"]),
            (&json!(4242), &json!(4243), &json!("sudo"))
        );
        assert_eq!(p["cmd_line"], "sudo -i");
        assert_eq!(p["working_directory"], "/root");
        assert_eq!(
            p["file"],
            json!({"name": "sudo", "path": "/usr/bin/sudo", "type_id": 8, "type": "Executable File"})
        );
        assert_eq!((&p["auid"], &p["euid"]), (&json!(1000), &json!(0)));
        assert_eq!(
            (&p["user"], &p["group"]),
            (&json!({"uid": "1000"}), &json!({"uid": "1001"}))
        );
        assert_eq!(p["parent_process"], json!({"pid": 4100}));
        let session = json!({"uid": KEY, "uid_alt": "7", "created_time": ROOT / 1_000_000, "terminal": "136:0"});
        assert_eq!(p["session"], session);
        assert_eq!(
            line["actor"],
            json!({
                "process": {"pid": 4242, "ptid": 4243},
                "user": {"name": "alice", "uid": "1000", "type_id": 1, "type": "User"},
                "session": session,
            })
        );
        assert_eq!(line["device"]["uid"], "h");
        assert_eq!(line["metadata"]["profiles"], json!(["linux/linux_users"]));
        assert_eq!(line["metadata"]["extensions"][0]["name"], "linux");
        assert_eq!(line["metadata"]["correlation_uid"], KEY);
        assert_eq!(line["unmapped"]["argv"], json!(["sudo", "-i"]));
        assert_eq!(line["unmapped"]["identity"]["kind"], "human");
        assert!(
            line["unmapped"].get("loginuid").is_none(),
            "it fits: {line}"
        );
    }

    #[test]
    fn a_failed_exec_is_a_failed_launch_with_its_errno() {
        let line = one(event(exec(&["sudo"], -13)));
        assert_eq!(
            (&line["status_id"], &line["status_code"]),
            (&json!(2), &json!("-13"))
        );
        assert!(
            line["status_detail"]
                .as_str()
                .unwrap()
                .contains("ermission denied"),
            "{line}"
        );
        assert_eq!(
            line["process"]["file"]["type_id"], 0,
            "not known to be executable"
        );
    }

    #[test]
    fn ids_past_32_bits_stay_exact_under_unmapped() {
        let mut e = event(exec(&["id"], 0));
        let p = e.process.as_mut().unwrap();
        p.loginuid = Some(3_000_000_000);
        p.euid = 4_000_000_000;
        let line = one(e);
        assert!(line["process"].get("auid").is_none() && line["process"].get("euid").is_none());
        assert_eq!(line["unmapped"]["loginuid"], 3_000_000_000_u32);
        assert_eq!(line["unmapped"]["euid"], 4_000_000_000_u32);
        assert_eq!(line["actor"]["user"]["uid"], "3000000000");
    }

    #[test]
    fn actors_are_the_identities_behind_the_process() {
        let user = |kind, name| {
            let mut e = event(exec(&["x"], 0));
            e.identity = Some(identity(kind, name));
            one(e)["actor"].get("user").cloned()
        };
        assert_eq!(
            user(identity::Kind::Service, "nginx.service"),
            Some(json!({"name": "nginx.service", "type_id": 4, "type": "Service"}))
        );
        assert_eq!(
            user(identity::Kind::Registered, "deploy-bot"),
            Some(json!({"name": "deploy-bot", "type_id": 99, "type": "registered"}))
        );
        assert_eq!(
            user(identity::Kind::Workload, "c0ffee"),
            Some(json!({"name": "c0ffee", "type_id": 99, "type": "workload"}))
        );
        assert_eq!(
            user(identity::Kind::Unknown, ""),
            None,
            "the process and session say it"
        );
    }

    #[test]
    fn a_fork_is_a_launch_of_the_fork_kind_by_the_parent() {
        let line = one(event(Body::Fork(Fork {})));
        check_common(&line);
        assert_eq!(
            (class(&line), &line["launch_type_id"]),
            ((1007, 1), &json!(2))
        );
        assert_eq!(line["actor"]["process"], json!({"pid": 4100}));
        assert_eq!(line["process"]["created_time"], T / 1_000_000);
    }

    #[test]
    fn an_exit_is_a_terminate_with_its_code_or_its_signal() {
        let exit = |status| {
            one(event(Body::Exit(Exit {
                exit_code: status,
                filename: "/usr/bin/ls".into(),
            })))
        };
        let line = exit(2 << 8);
        check_common(&line);
        assert_eq!(class(&line), (1007, 2));
        assert_eq!(line["exit_code"], 2);
        assert_eq!(line["process"]["terminated_time"], T / 1_000_000);
        assert_eq!(line["process"]["file"]["path"], "/usr/bin/ls");
        assert_eq!(line["unmapped"]["exit_code"], 2 << 8, "the wait status");
        let killed = exit(9);
        assert!(killed.get("exit_code").is_none(), "{killed}");
        assert_eq!(killed["status_detail"], "killed by signal 9");
    }

    #[test]
    fn a_violation_is_a_detection_finding_with_its_process_as_evidence() {
        let line = one(event(Body::Violation(Violation {
            rule: "root_exec".into(),
            action: "alert".into(),
            detail: "sudo -i".into(),
        })));
        check_common(&line);
        assert_eq!(class(&line), (2004, 1));
        assert_eq!(
            (&line["severity_id"], &line["is_alert"]),
            (&json!(4), &json!(true))
        );
        let info = &line["finding_info"];
        assert_eq!(info["uid"], "ab".repeat(32));
        assert_eq!(
            (&info["types"], &info["desc"]),
            (&json!(["root_exec"]), &json!("sudo -i"))
        );
        assert_eq!(
            info["analytic"],
            json!({"name": "root_exec", "type_id": 1, "type": "Rule"})
        );
        assert_eq!(line["evidences"][0]["process"]["pid"], 4242);
        assert_eq!(line["evidences"][0]["actor"]["user"]["name"], "alice");
        assert_eq!(line["unmapped"]["violation"]["action"], "alert");

        let bare = one(Event {
            time_unix_nano: T,
            body: Some(Body::Violation(Violation::default())),
            ..Event::default()
        });
        check_common(&bare);
        assert_eq!(class(&bare), (2004, 1), "still a finding, without evidence");
        assert!(bare.get("evidences").is_none() && bare["metadata"].get("profiles").is_none());
    }

    fn kill(pids: Vec<u32>, by: &str, grant: &str) -> Body {
        Body::Kill(Kill {
            grant_id: grant.into(),
            reason: if grant.is_empty() {
                "violation"
            } else {
                "expired"
            }
            .into(),
            sessionid: Some(7),
            cgroup_id: 0,
            pids,
            by: by.into(),
        })
    }

    #[test]
    fn a_kill_is_a_process_remediation_per_process_killed() {
        let agent = Event {
            time_unix_nano: T,
            body: Some(kill(vec![11, 12], "agent", "g-1")),
            ..Event::default()
        };
        let lines = lines(&stored(agent));
        assert_eq!(lines.len(), 2);
        for (line, pid) in lines.iter().zip([11, 12]) {
            check_common(line);
            assert_eq!(class(line), (7003, 2));
            assert_eq!(
                line["process"],
                json!({"pid": pid, "session": {"uid_alt": "7"}})
            );
            assert_eq!(line["command_uid"], "ab".repeat(32), "one command");
            assert_eq!(
                line["metadata"]["uid"],
                format!("{}:{pid}", "ab".repeat(32))
            );
            assert_eq!(line["metadata"]["correlation_uid"], "g-1");
            assert_eq!(line["countermeasures"][0]["d3f_technique"]["uid"], "D3-PT");
            assert_eq!(
                line["remediation"]["desc"],
                "SIGKILL sent by the agent: grant g-1 expired"
            );
            assert_eq!(line["unmapped"]["kill"]["pids"], json!([11, 12]));
        }
        let kernel = one(event(kill(vec![4242], "kernel", "")));
        assert_eq!(
            kernel["process"]["auid"], 1000,
            "the task it killed, in full"
        );
        assert!(kernel["metadata"].get("correlation_uid").is_none());
        let none = Event {
            time_unix_nano: T,
            body: Some(kill(Vec::new(), "agent", "g-1")),
            ..Event::default()
        };
        let line = one(none);
        check_common(&line);
        assert_eq!(class(&line), (7001, 2));
        assert_eq!(line["status_id"], 3, "does not exist");
        assert!(line.get("process").is_none());
    }

    fn change(action: &str, kind: identity::Kind, hosts: &[&str]) -> Event {
        Event {
            time_unix_nano: T,
            body: Some(Body::GrantChange(GrantChange {
                action: action.into(),
                actor: "dave".into(),
                reason: String::new(),
                decision: 1,
                grant: Some(Grant {
                    id: "g-1".into(),
                    identity: Some(IdentitySelector {
                        kind: kind.into(),
                        name: "alice".into(),
                    }),
                    hosts: hosts.iter().map(|&h| h.to_owned()).collect(),
                    ..Grant::default()
                }),
            })),
            ..Event::default()
        }
    }

    #[test]
    fn grant_changes_are_user_access_management() {
        for (action, activity) in [
            ("create", (1, "Assign Privileges")),
            ("approve", (1, "Assign Privileges")),
            ("revoke", (2, "Revoke Privileges")),
            ("request", (99, "Request")),
            ("extend", (99, "Extend")),
        ] {
            let line = one(change(action, identity::Kind::Human, &["h1"]));
            check_common(&line);
            assert_eq!(class(&line), (3005, activity.0), "{action}");
            assert_eq!(line["activity_name"], activity.1);
            assert_eq!(
                line["user"],
                json!({"name": "alice", "type_id": 1, "type": "User"})
            );
            assert_eq!(line["actor"], json!({"user": {"name": "dave"}}));
            assert_eq!(line["privileges"], json!([PRIVILEGE]));
            assert_eq!(line["resources"], json!([{"uid": "h1", "type": "host"}]));
            assert_eq!(line["metadata"]["correlation_uid"], "g-1");
            assert!(
                line.get("device").is_none(),
                "the collector's chain is not a host"
            );
            assert_eq!(line["unmapped"]["grant_change"]["action"], action);
        }
        let everywhere = one(change("create", identity::Kind::Human, &[]));
        assert!(everywhere.get("resources").is_none(), "{everywhere}");
        let nobody = one(change("create", identity::Kind::Unspecified, &[]));
        assert_eq!(class(&nobody), (0, 99), "no user to name: not forced");
    }

    #[test]
    fn kinds_without_an_honest_class_are_base_events_keeping_the_record() {
        let bare = |body| Event {
            time_unix_nano: T,
            body: Some(body),
            ..Event::default()
        };
        let tty = |direction: Direction| {
            event(Body::Tty(Tty {
                direction: direction.into(),
                device: "136:0".into(),
                fd: 1,
                offset: 0,
                data: b"\x1b[2Jhi".to_vec().into(),
                redacted_bytes: 0,
                writes: 0,
                span_nanos: 0,
                write_bytes: Vec::new(),
                write_gap_nanos: Vec::new(),
                injected: false,
            }))
        };
        let note = "log\n1\nroot\n\n— sig\n".to_owned();
        for (event, kind, severity) in [
            (tty(Direction::Output), "tty_out", 1),
            (tty(Direction::Input), "tty_in", 1),
            (bare(Body::Gap(Gap::default())), "gap", 3),
            (
                bare(Body::ChainStart(ChainStart::default())),
                "chain_start",
                1,
            ),
            (bare(Body::Alert(Alert::default())), "alert", 4),
            (
                bare(Body::Registration(Registered::default())),
                "registration",
                1,
            ),
            (bare(Body::Access(Access::default())), "access", 1),
            (bare(Body::Admin(AdminAct::default())), "admin", 1),
            (
                bare(Body::Receipt(Receipt { note: note.clone() })),
                "receipt",
                1,
            ),
            (bare(Body::Prune(Prune { note: note.clone() })), "prune", 1),
            // A process event without the process its class requires.
            (bare(Body::Exec(Exec::default())), "exec", 1),
        ] {
            let s = stored(event);
            let line = one(s.event.clone().unwrap());
            check_common(&line);
            assert_eq!(class(&line), (0, 99), "{kind}");
            assert_eq!(
                (&line["activity_name"], &line["severity_id"]),
                (&json!(kind), &json!(severity))
            );
            assert_eq!(
                line["unmapped"],
                render::json(&s),
                "{kind}: the whole record"
            );
            assert!(
                !line["message"].as_str().unwrap().contains('\u{1b}'),
                "escaped: {line}"
            );
        }
    }
}
