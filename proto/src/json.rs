//! The one JSON form of an event (docs/events.md), written by `agent --stdout` and by the
//! operators' `--json` output alike: flat process fields, `null` where an event has no
//! process, identity and session root as objects, then the fields of the event's kind.
//! Bytes are base64; argv strings are lossy UTF-8 (the exact bytes stay in the chain).

use std::{borrow::Cow, io};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Serialize;

use crate::{
    kind::Kind,
    session,
    time::rfc3339_nanos,
    v1::{Event, Grant, Image, event::Body},
};

/// Where an event sits, when the writer knows: the host it came from, and for a stored
/// event its place in its chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    pub host: Option<&'a str>,
    pub chain_id: Option<&'a str>,
    pub seq: Option<u64>,
    pub hash: Option<&'a [u8]>,
}

/// Writes one JSON object for `event` and a newline.
pub fn write_line(out: &mut impl io::Write, event: &Event, context: Context<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Line::new(event, context))?;
    out.write_all(b"\n")
}

/// The JSON object for `event`, as a value.
#[must_use]
pub fn value(event: &Event, context: Context<'_>) -> serde_json::Value {
    serde_json::to_value(Line::new(event, context)).unwrap_or(serde_json::Value::Null)
}

/// The JSON object for a grant.
#[must_use]
pub fn grant(grant: &Grant) -> serde_json::Value {
    serde_json::to_value(GrantLine::new(grant)).unwrap_or(serde_json::Value::Null)
}

/// An audit id: a number, or "unset" where the kernel has none.
#[derive(Serialize)]
#[serde(untagged)]
enum AuditId {
    Set(u32),
    Unset(&'static str),
}

fn audit(v: Option<u32>) -> AuditId {
    v.map_or(AuditId::Unset("unset"), AuditId::Set)
}

/// Lowercase hex, as every hash and key is written in JSON and text.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn skip_empty(s: &&str) -> bool {
    s.is_empty()
}

#[derive(Serialize)]
struct IdentityLine<'a> {
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "skip_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "skip_empty")]
    grant: &'a str,
}

#[derive(Serialize)]
struct RootLine {
    pid: u32,
    start: String,
    start_unix_nano: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    kind: &'static str,
    time: String,
    time_unix_nano: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    /// The session key, where the host and the session's root are known.
    session: Option<String>,
    pid: Option<u32>,
    tgid: Option<u32>,
    ppid: Option<u32>,
    uid: Option<u32>,
    euid: Option<u32>,
    gid: Option<u32>,
    loginuid: Option<AuditId>,
    sessionid: Option<AuditId>,
    cgroup_id: Option<u64>,
    /// The controlling terminal; on terminal events, the terminal the bytes belong to.
    tty: Option<&'a str>,
    comm: Option<&'a str>,
    /// Present, true, only on a process of a human acting as root (`Process.elevated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    elevated: Option<bool>,
    identity: Option<IdentityLine<'a>>,
    session_root: Option<RootLine>,
    #[serde(flatten)]
    body: BodyLine<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BodyLine<'a> {
    Exec {
        filename: &'a str,
        filename_truncated: bool,
        argv: Vec<Cow<'a, str>>,
        argv_truncated: bool,
        argv_unreadable: bool,
        result: i32,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        tried: &'a [String],
        cwd: &'a str,
        #[serde(skip_serializing_if = "is_false")]
        cwd_truncated: bool,
        #[serde(skip_serializing_if = "is_false")]
        cwd_deleted: bool,
        #[serde(skip_serializing_if = "is_false")]
        cwd_unreachable: bool,
        #[serde(skip_serializing_if = "str::is_empty")]
        interpreter: &'a str,
        #[serde(skip_serializing_if = "is_false")]
        interpreter_truncated: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        executable: Option<PathLine<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<ImageLine<'a>>,
    },
    Exit {
        exit_code: i32,
        filename: &'a str,
    },
    Tty {
        fd: u32,
        offset: u64,
        data: String,
        #[serde(skip_serializing_if = "is_zero")]
        redacted_bytes: u64,
        #[serde(skip_serializing_if = "is_zero")]
        writes: u64,
        #[serde(skip_serializing_if = "is_zero")]
        span_nanos: u64,
        #[serde(skip_serializing_if = "is_false")]
        injected: bool,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        write_bytes: &'a [u32],
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        write_gap_nanos: &'a [u64],
    },
    TtyResize {
        rows: u32,
        cols: u32,
    },
    Image {
        image: ImageLine<'a>,
    },
    Gap {
        source: String,
        lost_kind: &'a str,
        lost_records: u64,
        lost_bytes: u64,
    },
    ChainStart {
        chain_start: ChainStartLine<'a>,
    },
    Alert {
        alert: AlertLine<'a>,
    },
    Violation {
        violation: ViolationLine<'a>,
    },
    Kill {
        kill: KillLine<'a>,
    },
    GrantChange {
        grant_change: GrantChangeLine<'a>,
    },
    Registration {
        registration: RegistrationLine<'a>,
    },
    Access {
        access: AccessLine<'a>,
    },
    Admin {
        admin: AdminLine<'a>,
    },
    Receipt {
        receipt: NoteLine<'a>,
    },
    Prune {
        prune: NoteLine<'a>,
    },
    ChainStop {
        chain_stop: StopLine<'a>,
    },
    None {},
}

#[derive(Serialize)]
struct ChainStartLine<'a> {
    host: &'a str,
    boot_id: &'a str,
    previous_chain_id: &'a str,
    previous_seq: u64,
    previous_hash: String,
    host_name: &'a str,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A path the kernel resolved, with what is known to be wrong with it.
#[derive(Serialize)]
struct PathLine<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    truncated: bool,
    #[serde(skip_serializing_if = "is_false")]
    deleted: bool,
    #[serde(skip_serializing_if = "is_false")]
    unreachable: bool,
}

/// The file an exec mapped, as its inode said then, and its contents' SHA-256 (hex) or why
/// not.
#[derive(Serialize)]
struct ImageLine<'a> {
    dev: u64,
    inode: u64,
    size: i64,
    mtime_unix_nano: i64,
    ctime_unix_nano: i64,
    #[serde(skip_serializing_if = "is_false")]
    interpreter: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    sha256: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    unhashed: &'a str,
}

impl<'a> ImageLine<'a> {
    fn new(i: &'a Image) -> Self {
        Self {
            dev: i.dev,
            inode: i.inode,
            size: i.size,
            mtime_unix_nano: i.mtime_unix_nano,
            ctime_unix_nano: i.ctime_unix_nano,
            interpreter: i.interpreter,
            sha256: hex(&i.sha256),
            unhashed: &i.unhashed,
        }
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
struct AlertLine<'a> {
    kind: &'a str,
    host: &'a str,
    chain_id: &'a str,
    seq: u64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hole: Option<HoleLine>,
}

#[derive(Serialize)]
struct HoleLine {
    first_lost: u64,
    anchor_hash: String,
    anchor_event_sha256: String,
    skipped_bytes: u64,
    cause: String,
}

#[derive(Serialize)]
struct ViolationLine<'a> {
    rule: &'a str,
    action: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct KillLine<'a> {
    grant_id: &'a str,
    reason: &'a str,
    sessionid: Option<u32>,
    cgroup_id: u64,
    pids: &'a [u32],
    by: &'a str,
}

#[derive(Serialize)]
struct GrantChangeLine<'a> {
    action: &'a str,
    actor: &'a str,
    reason: &'a str,
    grant: Option<GrantLine<'a>>,
    decision: u64,
}

#[derive(Serialize)]
struct RegistrationLine<'a> {
    sessionid: Option<u32>,
    cgroup_id: u64,
    identity: &'a str,
    grant: &'a str,
    peer_pid: u32,
    peer_uid: u32,
}

#[derive(Serialize)]
struct AccessLine<'a> {
    actor: &'a str,
    role: &'a str,
    method: &'a str,
    detail: &'a str,
}

/// A signed note, verbatim (docs/evidence.md).
#[derive(Serialize)]
struct NoteLine<'a> {
    note: &'a str,
}

#[derive(Serialize)]
struct StopLine<'a> {
    reason: &'a str,
}

#[derive(Serialize)]
struct AdminLine<'a> {
    action: &'a str,
    host: &'a str,
    actor: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct SelectorLine<'a> {
    kind: &'static str,
    name: &'a str,
}

#[derive(Serialize)]
struct GrantLine<'a> {
    id: &'a str,
    identity: Option<SelectorLine<'a>>,
    hosts: &'a [String],
    not_before: String,
    expires_at: String,
    not_before_unix_nano: u64,
    expires_at_unix_nano: u64,
    revoked_at: Option<String>,
    reason: &'a str,
    requester: &'a str,
    requested_at: Option<String>,
    approver: &'a str,
    pending: bool,
    on_expiry: String,
}

impl<'a> GrantLine<'a> {
    fn new(g: &'a Grant) -> Self {
        Self {
            id: &g.id,
            identity: g.identity.as_ref().map(|i| SelectorLine {
                kind: i.kind().name(),
                name: &i.name,
            }),
            hosts: &g.hosts,
            not_before: rfc3339_nanos(g.not_before_unix_nano),
            expires_at: rfc3339_nanos(g.expires_at_unix_nano),
            not_before_unix_nano: g.not_before_unix_nano,
            expires_at_unix_nano: g.expires_at_unix_nano,
            revoked_at: (g.revoked_unix_nano != 0).then(|| rfc3339_nanos(g.revoked_unix_nano)),
            reason: &g.reason,
            requester: &g.requester,
            requested_at: (g.requested_unix_nano != 0)
                .then(|| rfc3339_nanos(g.requested_unix_nano)),
            approver: &g.approver,
            pending: g.pending,
            on_expiry: g.on_expiry().as_str_name().to_lowercase(),
        }
    }
}

impl<'a> Line<'a> {
    fn new(event: &'a Event, context: Context<'a>) -> Self {
        let p = event.process.as_ref();
        let session = match (
            context.host,
            session::sessionid_of(event),
            &event.session_root,
        ) {
            (Some(host), Some(sessionid), Some(root)) => Some(
                session::Key {
                    host: host.to_owned(),
                    sessionid,
                    start_unix_nano: root.start_unix_nano,
                }
                .to_string(),
            ),
            _ => None,
        };
        let mut tty = p.map(|p| p.tty.as_str()).filter(|t| !t.is_empty());
        match &event.body {
            Some(Body::Tty(t)) => tty = Some(t.device.as_str()).filter(|t| !t.is_empty()),
            Some(Body::TtyResize(r)) => tty = Some(r.device.as_str()).filter(|t| !t.is_empty()),
            _ => {}
        }
        Self {
            kind: Kind::of(event).map_or("unknown", Kind::name),
            time: rfc3339_nanos(event.time_unix_nano),
            time_unix_nano: event.time_unix_nano,
            host: context.host,
            chain_id: context.chain_id,
            seq: context.seq,
            hash: context.hash.map(hex),
            session,
            pid: p.map(|p| p.pid),
            tgid: p.map(|p| p.tgid),
            ppid: p.map(|p| p.ppid),
            uid: p.map(|p| p.uid),
            euid: p.map(|p| p.euid),
            gid: p.map(|p| p.gid),
            loginuid: p.map(|p| audit(p.loginuid)),
            sessionid: p.map(|p| audit(p.sessionid)),
            cgroup_id: p.map(|p| p.cgroup_id),
            tty,
            comm: p.map(|p| p.comm.as_str()),
            elevated: p.and_then(|p| p.elevated.then_some(true)),
            identity: event.identity.as_ref().map(|i| IdentityLine {
                kind: i.kind().name(),
                name: &i.name,
                reason: &i.reason,
                grant: &i.grant,
            }),
            session_root: event.session_root.as_ref().map(|r| RootLine {
                pid: r.pid,
                start: rfc3339_nanos(r.start_unix_nano),
                start_unix_nano: r.start_unix_nano,
            }),
            body: BodyLine::new(event.body.as_ref()),
        }
    }
}

impl<'a> BodyLine<'a> {
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per event body, each a plain mapping"
    )]
    fn new(body: Option<&'a Body>) -> Self {
        match body {
            Some(Body::Exec(x)) => Self::Exec {
                filename: &x.filename,
                filename_truncated: x.filename_truncated,
                argv: x.argv.iter().map(|a| String::from_utf8_lossy(a)).collect(),
                argv_truncated: x.argv_truncated,
                argv_unreadable: x.argv_unreadable,
                result: x.result,
                tried: &x.tried,
                cwd: &x.cwd,
                cwd_truncated: x.cwd_truncated,
                cwd_deleted: x.cwd_deleted,
                cwd_unreachable: x.cwd_unreachable,
                interpreter: &x.interpreter,
                interpreter_truncated: x.interpreter_truncated,
                executable: x.executable.as_ref().map(|e| PathLine {
                    path: &e.path,
                    truncated: e.truncated,
                    deleted: e.deleted,
                    unreachable: e.unreachable,
                }),
                image: x.image.as_ref().map(ImageLine::new),
            },
            Some(Body::Exit(x)) => Self::Exit {
                exit_code: x.exit_code,
                filename: &x.filename,
            },
            Some(Body::Tty(t)) => Self::Tty {
                fd: t.fd,
                offset: t.offset,
                data: STANDARD.encode(&t.data),
                redacted_bytes: t.redacted_bytes,
                writes: t.writes.into(),
                span_nanos: t.span_nanos,
                injected: t.injected,
                write_bytes: &t.write_bytes,
                write_gap_nanos: &t.write_gap_nanos,
            },
            Some(Body::TtyResize(r)) => Self::TtyResize {
                rows: r.rows,
                cols: r.cols,
            },
            Some(Body::Image(i)) => Self::Image {
                image: ImageLine::new(i),
            },
            Some(Body::Gap(g)) => Self::Gap {
                source: g.source().as_str_name().to_lowercase(),
                lost_kind: &g.lost_kind,
                lost_records: g.records,
                lost_bytes: g.bytes,
            },
            Some(Body::ChainStart(c)) => Self::ChainStart {
                chain_start: ChainStartLine {
                    host: &c.host,
                    boot_id: &c.boot_id,
                    previous_chain_id: &c.previous_chain_id,
                    previous_seq: c.previous_seq,
                    previous_hash: hex(&c.previous_hash),
                    host_name: &c.host_name,
                },
            },
            Some(Body::Alert(a)) => Self::Alert {
                alert: AlertLine {
                    kind: &a.kind,
                    host: &a.host,
                    chain_id: &a.chain_id,
                    seq: a.seq,
                    message: &a.message,
                    hole: a.hole.as_ref().map(|h| HoleLine {
                        first_lost: h.first_lost,
                        anchor_hash: hex(&h.anchor_hash),
                        anchor_event_sha256: hex(&h.anchor_event_sha256),
                        skipped_bytes: h.skipped_bytes,
                        cause: h.cause.clone(),
                    }),
                },
            },
            Some(Body::Violation(v)) => Self::Violation {
                violation: ViolationLine {
                    rule: &v.rule,
                    action: &v.action,
                    detail: &v.detail,
                },
            },
            Some(Body::Kill(k)) => Self::Kill {
                kill: KillLine {
                    grant_id: &k.grant_id,
                    reason: &k.reason,
                    sessionid: k.sessionid,
                    cgroup_id: k.cgroup_id,
                    pids: &k.pids,
                    by: &k.by,
                },
            },
            Some(Body::GrantChange(c)) => Self::GrantChange {
                grant_change: GrantChangeLine {
                    action: &c.action,
                    actor: &c.actor,
                    reason: &c.reason,
                    grant: c.grant.as_ref().map(GrantLine::new),
                    decision: c.decision,
                },
            },
            Some(Body::Registration(r)) => Self::Registration {
                registration: RegistrationLine {
                    sessionid: r.sessionid,
                    cgroup_id: r.cgroup_id,
                    identity: &r.identity,
                    grant: &r.grant,
                    peer_pid: r.peer_pid,
                    peer_uid: r.peer_uid,
                },
            },
            Some(Body::Access(a)) => Self::Access {
                access: AccessLine {
                    actor: &a.actor,
                    role: &a.role,
                    method: &a.method,
                    detail: &a.detail,
                },
            },
            Some(Body::Admin(a)) => Self::Admin {
                admin: AdminLine {
                    action: &a.action,
                    host: &a.host,
                    actor: &a.actor,
                    detail: &a.detail,
                },
            },
            Some(Body::Receipt(r)) => Self::Receipt {
                receipt: NoteLine { note: &r.note },
            },
            Some(Body::Prune(p)) => Self::Prune {
                prune: NoteLine { note: &p.note },
            },
            Some(Body::ChainStop(s)) => Self::ChainStop {
                chain_stop: StopLine { reason: &s.reason },
            },
            Some(Body::Fork(_)) | None => Self::None {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Identity, Process, SessionRoot, Tty, identity, tty::Direction};

    #[test]
    fn a_terminal_event_has_the_documented_fields() {
        let event = Event {
            time_unix_nano: 1_700_000_000_000_000_005,
            process: Some(Process {
                pid: 3,
                tgid: 3,
                ppid: 1,
                loginuid: None,
                sessionid: Some(4),
                cgroup_id: 9,
                tty: "136:9".into(),
                comm: "sh".into(),
                ..Process::default()
            }),
            identity: Some(Identity {
                kind: identity::Kind::Unknown.into(),
                reason: "why".into(),
                ..Identity::default()
            }),
            session_root: Some(SessionRoot {
                pid: 77,
                start_unix_nano: 5,
            }),
            body: Some(Body::Tty(Tty {
                direction: Direction::Input.into(),
                device: "136:2".into(),
                fd: 5,
                offset: 0,
                data: bytes::Bytes::from_static(b"ls\r"),
                redacted_bytes: 0,
                writes: 0,
                span_nanos: 0,
                write_bytes: Vec::new(),
                write_gap_nanos: Vec::new(),
                injected: false,
            })),
        };
        let v = value(
            &event,
            Context {
                host: Some("h"),
                ..Context::default()
            },
        );
        assert_eq!(v["kind"], "tty_in");
        assert_eq!(v["loginuid"], "unset");
        assert_eq!(v["sessionid"], 4);
        assert_eq!(v["tty"], "136:2", "the terminal the bytes belong to");
        assert_eq!(v["data"], "bHMN");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(v["session"], "h:4:5");
        assert_eq!(v["session_root"]["pid"], 77);
        assert!(v.get("argv").is_none() && v.get("chain_id").is_none());
        assert_eq!(
            v["identity"],
            serde_json::json!({"kind": "unknown", "name": "", "reason": "why"})
        );
    }

    #[test]
    fn a_gap_has_null_process_fields() {
        let event = Event {
            time_unix_nano: 1,
            body: Some(Body::Gap(crate::v1::Gap {
                source: crate::v1::gap::Source::KernelRingbuf.into(),
                lost_kind: "tty_out".into(),
                records: 2,
                bytes: 3,
            })),
            ..Event::default()
        };
        let v = value(&event, Context::default());
        assert_eq!(v["kind"], "gap");
        assert!(v["pid"].is_null() && v["identity"].is_null() && v["session"].is_null());
        assert_eq!(
            (
                &v["source"],
                &v["lost_kind"],
                &v["lost_records"],
                &v["lost_bytes"]
            ),
            (
                &"kernel_ringbuf".into(),
                &"tty_out".into(),
                &2.into(),
                &3.into()
            )
        );
    }
}
