//! How stored events read: one line of text for people, one JSON object for programs (the
//! schema every part of the system writes, `proto::json`). Text output escapes control
//! characters in everything that came from a host (argv, terminal text, host and chain ids,
//! identity names), so a crafted argument cannot move the cursor, clear the screen or forge
//! a line on an operator's terminal.

use std::{borrow::Cow, fmt::Write as _};

use proto::{
    grant::{State, state},
    identity::label,
    json,
    kind::Kind,
    time::rfc3339_millis as time,
    v1::{
        ChainVerdict, Event, Finding, Grant, HostLiveness, IdentityReview, IdentitySelector, Image,
        LogVerdict, Session, StoredEvent, Tty, event::Body,
    },
};
use serde_json::{Value, json};

use crate::hosts::Names;

/// Longest terminal text shown on one line.
const TEXT_MAX: usize = 160;

/// `s` with control characters (C0, DEL, C1: escape sequences, carriage returns, bells)
/// written as escapes; everything printable, non-ASCII included, as it is.
#[must_use]
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().fold(String::new(), |mut out, c| {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    }))
}

/// Bytes as escaped text (invalid UTF-8 replaced).
#[must_use]
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes)).into_owned()
}

/// The argument strings joined as a shell would show them.
fn command_line(argv: &[bytes::Bytes]) -> String {
    argv.iter()
        .map(|a| escape_bytes(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Terminal bytes as one printable line: control characters escaped, cut at `TEXT_MAX`.
fn printable(data: &[u8]) -> String {
    let text = escape_bytes(data);
    if text.chars().count() > TEXT_MAX {
        let cut: String = text.chars().take(TEXT_MAX).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Input typed while the terminal did not echo: the agent kept only its length.
pub(crate) fn redacted(bytes: u64) -> String {
    format!(
        "[{} typed without echo, not recorded]",
        counted(bytes, "byte")
    )
}

/// A terminal record's bytes, or their count when typed without echo; input another process
/// pushed (`TIOCSTI`) is said to be.
fn terminal_bytes(t: &Tty) -> String {
    let shown = if t.redacted_bytes > 0 {
        redacted(t.redacted_bytes)
    } else {
        printable(&t.data)
    };
    if t.injected {
        format!("INJECTED by ioctl(TIOCSTI): {shown}")
    } else {
        shown
    }
}

/// An executed file's digest, as an `image` event names it.
fn image(i: &Image) -> String {
    let digest = if i.sha256.is_empty() {
        format!("not hashed ({})", escape(&i.unhashed))
    } else {
        format!("sha256 {}", json::hex(&i.sha256))
    };
    format!(
        "file dev {} inode {} size {}: {digest}",
        i.dev, i.inode, i.size
    )
}

/// What happened, in a few words, control characters escaped.
pub(crate) fn detail(event: &Event) -> String {
    match &event.body {
        Some(Body::Exec(x)) => {
            let mut s = command_line(&x.argv);
            if x.result != 0 {
                let _ = write!(s, "  (failed: {})", x.result);
            }
            if !x.tried.is_empty() {
                let tried: Vec<Cow<'_, str>> = x.tried.iter().map(|t| escape(t)).collect();
                let _ = write!(s, "  (not found first: {})", tried.join(" "));
            }
            s
        }
        Some(Body::Exit(x)) => format!("status {} {}", x.exit_code, escape(&x.filename)),
        Some(Body::Tty(t)) => terminal_bytes(t),
        Some(Body::TtyResize(r)) => format!("window {} columns × {} rows", r.cols, r.rows),
        Some(Body::Image(i)) => image(i),
        Some(Body::Gap(g)) => format!(
            "LOST {} {} {}, {} ({})",
            g.records,
            escape(&g.lost_kind),
            plural(g.records, "record"),
            counted(g.bytes, "byte"),
            g.source().as_str_name()
        ),
        Some(Body::ChainStart(c)) => format!(
            "chain start; previous {} at seq {}",
            if c.previous_chain_id.is_empty() {
                Cow::Borrowed("none")
            } else {
                escape(&c.previous_chain_id)
            },
            c.previous_seq
        ),
        Some(Body::Alert(a)) => format!("ALERT {}: {}", escape(&a.kind), escape(&a.message)),
        Some(Body::Violation(v)) => format!(
            "VIOLATION {} ({}): {}",
            escape(&v.rule),
            escape(&v.action),
            escape(&v.detail)
        ),
        Some(Body::Kill(k)) => format!(
            "KILLED by {} pids {:?}: {} {}",
            escape(&k.by),
            k.pids,
            escape(&k.reason),
            if k.grant_id.is_empty() {
                String::new()
            } else {
                format!("grant {}", escape(&k.grant_id))
            }
        ),
        Some(Body::GrantChange(c)) => c.grant.as_ref().map_or_else(String::new, |g| {
            format!(
                "GRANT {} {} for {} by {}",
                escape(&c.action),
                escape(&g.id),
                escape(g.identity.as_ref().map_or("", |i| i.name.as_str())),
                escape(&c.actor)
            )
        }),
        Some(Body::Registration(r)) => format!(
            "REGISTERED {} as {}{} by pid {} uid {}",
            r.sessionid.map_or_else(
                || format!("cgroup {}", r.cgroup_id),
                |s| format!("session {s}")
            ),
            escape(&r.identity),
            if r.grant.is_empty() {
                String::new()
            } else {
                format!(" under grant {}", escape(&r.grant))
            },
            r.peer_pid,
            r.peer_uid
        ),
        Some(Body::Access(a)) => format!(
            "ACCESS {} by {} ({}){}{}",
            escape(&a.method),
            escape(&a.actor),
            escape(&a.role),
            if a.detail.is_empty() { "" } else { ": " },
            escape(&a.detail)
        ),
        Some(Body::Admin(a)) => format!(
            "ADMIN {} {} by {}: {}",
            escape(&a.action),
            escape(&a.host),
            escape(&a.actor),
            if a.action == verifier::COLLECTOR_STARTED {
                certificate(&a.detail)
            } else {
                escape(&a.detail)
            }
        ),
        Some(Body::Receipt(r)) => format!("RECEIPT {}", note_head(&r.note)),
        Some(Body::Prune(p)) => format!("PRUNE {}", note_head(&p.note)),
        Some(Body::ChainStop(s)) => format!("chain stop: {}", escape(&s.reason)),
        Some(Body::Fork(_)) | None => String::new(),
    }
}

/// A certificate chained as PEM (a collector's witness certificate), named as a person
/// checks one: its subject, serial and end. The PEM itself is in the JSON output; one that
/// does not parse is shown escaped, as it is.
fn certificate(pem: &str) -> Cow<'_, str> {
    let Ok(cert) = pki::CertInfo::from_pem(pem) else {
        return escape(pem);
    };
    let until = cert
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, proto::time::nanos);
    Cow::Owned(format!(
        "certificate {}, serial {}, valid until {}",
        escape(&cert.subject),
        cert.serial_hex,
        time(until)
    ))
}

/// A signed note's text before its signatures, on one line, escaped.
fn note_head(note: &str) -> Cow<'_, str> {
    let text = note.split("\n\n").next().unwrap_or_default();
    escape(text.trim_end())
}

/// `time host identity session kind [pid uid euid] detail`.
#[must_use]
pub(crate) fn line(stored: &StoredEvent, names: &Names) -> String {
    let Some(event) = &stored.event else {
        let what = if stored.malformed.is_empty() {
            Cow::Borrowed("no event")
        } else {
            Cow::Owned(format!(
                "MALFORMED, kept as sent: {}",
                escape(&stored.malformed)
            ))
        };
        return format!(
            "{} {} seq {}: {what}",
            escape(&names.label(&stored.host)),
            escape(&stored.chain_id),
            stored.seq
        );
    };
    let session = if stored.session.is_empty() {
        Cow::Borrowed("-")
    } else {
        escape(&stored.session)
    };
    let who = event
        .process
        .as_ref()
        .map(|p| format!(" pid {} uid {} euid {}", p.pid, p.uid, p.euid))
        .unwrap_or_default();
    format!(
        "{} {} {} {} {}{} {}",
        time(event.time_unix_nano),
        escape(&names.label(&stored.host)),
        event
            .identity
            .as_ref()
            .map_or_else(|| "-".to_owned(), |i| escape(&label(i)).into_owned()),
        session,
        Kind::of(event).map_or("unknown", Kind::name),
        who,
        detail(event)
    )
}

/// The event in the one JSON schema, with where it is stored.
#[must_use]
pub fn json(stored: &StoredEvent) -> Value {
    let Some(event) = &stored.event else {
        if !stored.malformed.is_empty() {
            return json!({
                "kind": "malformed", "malformed": stored.malformed, "host": stored.host,
                "chain_id": stored.chain_id, "seq": stored.seq, "session": stored.session,
            });
        }
        return json!({
            "kind": "unknown", "host": stored.host, "chain_id": stored.chain_id,
            "seq": stored.seq, "session": stored.session,
        });
    };
    json::value(
        event,
        json::Context {
            host: Some(&stored.host),
            chain_id: Some(&stored.chain_id),
            seq: Some(stored.seq),
            hash: Some(&stored.hash),
        },
    )
}

/// `key host identity root pid …`.
#[must_use]
pub(crate) fn session_line(s: &Session, names: &Names) -> String {
    let inner: Vec<&str> = s
        .terminals
        .iter()
        .map(|t| t.device.as_str())
        .filter(|d| *d != s.login_tty)
        .collect();
    format!(
        "{:<44} {:<20} {:<24} root pid {:<7} {} → {}  {}, {}, {}  tty {}{}{}",
        escape(&s.key),
        escape(&names.label(&s.host)),
        s.identity
            .as_ref()
            .map_or_else(|| "-".to_owned(), |i| escape(&label(i)).into_owned()),
        s.root_pid,
        time(s.first_unix_nano),
        time(s.last_unix_nano),
        counted(s.events, "event"),
        counted(s.execs, "exec"),
        counted(s.tty_bytes, "tty byte"),
        if s.login_tty.is_empty() {
            "-"
        } else {
            &s.login_tty
        },
        if inner.is_empty() {
            String::new()
        } else {
            format!(" (inner {})", escape(&inner.join(",")))
        },
        if s.kills == 0 { "" } else { "  KILLED" }
    )
}

#[must_use]
pub fn session_json(s: &Session) -> Value {
    json!({
        "key": s.key, "host": s.host, "sessionid": s.sessionid, "root_pid": s.root_pid,
        "root_start_unix_nano": s.root_start_unix_nano,
        "identity": s.identity.as_ref().map(|i| json!({
            "kind": i.kind().name(), "name": i.name, "reason": i.reason, "grant": i.grant,
        })),
        "first": time(s.first_unix_nano), "last": time(s.last_unix_nano),
        "events": s.events, "execs": s.execs, "tty_bytes": s.tty_bytes, "kills": s.kills,
        "login_tty": s.login_tty,
        "terminals": s.terminals.iter().map(|t| json!({
            "device": t.device,
            "first": time(t.first_unix_nano), "last": time(t.last_unix_nano),
            "output_bytes": t.output_bytes, "input_bytes": t.input_bytes,
            "opened_by": (t.opened_by_pid != 0).then(|| json!({
                "pid": t.opened_by_pid, "comm": t.opened_by_comm,
            })),
        })).collect::<Vec<_>>(),
    })
}

/// `3d1219c7…  db1  live    last contact 2026-12-02T15:00:00Z  agent 0.1.0  1 stream  chain … 1234 records`
#[must_use]
pub fn host_line(h: &HostLiveness) -> String {
    let contact = if h.last_contact_unix_nano == 0 {
        "not since the collector started".to_owned()
    } else {
        time(h.last_contact_unix_nano)
    };
    let head = h.head.as_ref().map_or_else(
        || "no chain".to_owned(),
        |c| {
            format!(
                "chain {} {}",
                escape(&c.chain_id),
                counted(c.next_seq, "record")
            )
        },
    );
    format!(
        "{:<34} {:<16} {:<7} last contact {contact}  agent {}  {}  {head}",
        escape(&h.host),
        if h.name.is_empty() {
            "-".into()
        } else {
            escape(&h.name)
        },
        h.state,
        if h.agent_version.is_empty() {
            "-".into()
        } else {
            escape(&h.agent_version)
        },
        counted(u64::from(h.streams), "stream"),
    )
}

#[must_use]
pub fn host_json(h: &HostLiveness) -> Value {
    json!({
        "host": h.host, "name": h.name, "state": h.state,
        "last_contact": (h.last_contact_unix_nano != 0).then(|| time(h.last_contact_unix_nano)),
        "last_contact_unix_nano": h.last_contact_unix_nano,
        "agent_version": h.agent_version, "streams": h.streams,
        "head": h.head.as_ref().map(|c| json!({"chain_id": c.chain_id, "next_seq": c.next_seq})),
    })
}

#[must_use]
pub fn verdict_json(c: &ChainVerdict) -> Value {
    json!({
        "host": c.host, "chain_id": c.chain_id, "ok": c.ok,
        "records": c.records, "first_bad_seq": c.first_bad_seq,
        "reason": c.reason, "expected_size": c.expected_size,
        "ended": (!c.ended.is_empty()).then_some(&c.ended),
        "lost": c.lost,
    })
}

#[must_use]
pub fn verdict_line(c: &ChainVerdict) -> String {
    if c.ok {
        let ended = if c.ended.is_empty() {
            String::new()
        } else {
            format!(", {}", c.ended)
        };
        // Records the host's spool lost are named, never passed over: verify accepts them
        // only as the collector's chain declares them.
        let lost = if c.lost == 0 {
            String::new()
        } else {
            format!(
                ", {} lost in the host's spool before shipping (spool_hole)",
                c.lost
            )
        };
        format!(
            "ok    {} {}  {}{lost}{ended}",
            escape(&c.host),
            escape(&c.chain_id),
            counted(c.records, "record")
        )
    } else {
        let at = c
            .first_bad_seq
            .map_or_else(String::new, |s| format!(" at seq {s}"));
        format!(
            "FAIL  {} {}{at}: {}",
            escape(&c.host),
            escape(&c.chain_id),
            escape(&c.reason)
        )
    }
}

#[must_use]
pub fn log_verdict_json(l: &LogVerdict) -> Value {
    json!({
        "log": l.origin, "host": l.host, "ok": l.ok, "leaves": l.leaves,
        "pruned": l.pruned, "checkpoints": l.checkpoints,
        "attested_size": l.attested_size, "reason": l.reason,
    })
}

#[must_use]
pub fn log_verdict_line(l: &LogVerdict) -> String {
    if l.ok {
        format!(
            "ok    log {}  {}, {}, attested {}",
            escape(&l.origin),
            counted_as(l.leaves, "leaf", "leaves"),
            counted(l.checkpoints, "signed checkpoint"),
            l.attested_size
        )
    } else {
        format!("FAIL  log {}: {}", escape(&l.origin), escape(&l.reason))
    }
}

#[must_use]
pub fn finding_json(f: &Finding) -> Value {
    json!({ "finding": f.subject, "reason": f.reason })
}

#[must_use]
pub fn finding_line(f: &Finding) -> String {
    format!("FAIL  {}: {}", escape(&f.subject), escape(&f.reason))
}

/// A span of nanoseconds to the second, for example `1h 30m`.
fn span(nanos: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(nanos / 1_000_000_000)).to_string()
}

/// `name(kind)`.
fn selector(s: Option<&IdentitySelector>) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| format!("{}({})", escape(&s.name), s.kind().name()),
    )
}

/// Where the grant stands at `now`.
fn grant_state(g: &Grant, now: u64) -> String {
    match state(g, now) {
        State::Requested => format!("requested by {}, awaiting approval", escape(&g.requester)),
        State::Revoked(at) => format!("revoked {}", time(at)),
        State::Expired => "expired".into(),
        State::Pending => "pending".into(),
        State::Live(left) => format!("live, {} left", span(left)),
    }
}

/// `ID identity hosts from → to state on-expiry reason approver`: the id first.
#[must_use]
pub(crate) fn grant_line(g: &Grant, now: u64, names: &Names) -> String {
    let hosts = if g.hosts.is_empty() {
        "every host".to_owned()
    } else {
        let labels: Vec<Cow<'_, str>> = g.hosts.iter().map(|h| names.label(h)).collect();
        escape(&labels.join(",")).into_owned()
    };
    format!(
        "{}  {}  on {}  {} → {}  {}  on expiry {}  reason {:?}  requester {:?}  approver {:?}",
        escape(&g.id),
        selector(g.identity.as_ref()),
        hosts,
        time(g.not_before_unix_nano),
        time(g.expires_at_unix_nano),
        grant_state(g, now),
        g.on_expiry().as_str_name().to_lowercase(),
        g.reason,
        g.requester,
        g.approver,
    )
}

/// `n` and `noun`, in the plural unless `n` is 1: "1 grant", "3 grants".
pub(crate) fn counted(n: u64, noun: &str) -> String {
    format!("{n} {}", plural(n, noun))
}

/// `n` and `one` or `many`, for a noun whose plural is not the singular with an "s".
fn counted_as(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        noun.to_owned()
    } else {
        format!("{noun}s")
    }
}

#[must_use]
pub fn grant_json(g: &Grant) -> Value {
    json::grant(g)
}

/// An identity's review as a few lines: totals, one line per grant and per recent
/// violation, and the grants to revoke with why.
#[must_use]
pub(crate) fn review_text(r: &IdentityReview, now: u64, names: &Names) -> String {
    let never_used = r.grants.iter().filter(|u| u.events == 0).count();
    let mut s = format!(
        "{}: {}, held {} in all, {never_used} never used; {}\n",
        selector(r.identity.as_ref()),
        counted(r.grants.len() as u64, "grant"),
        span(r.granted_nanos),
        counted(r.violations, "violation"),
    );
    for u in &r.grants {
        let Some(g) = &u.grant else { continue };
        let _ = write!(
            s,
            "  grant {}  {} → {}  {}  {}",
            escape(&g.id),
            time(g.not_before_unix_nano),
            time(g.expires_at_unix_nano),
            grant_state(g, now),
            counted(u.events, "event")
        );
        if u.events > 0 {
            let _ = write!(
                s,
                ", used {} → {}",
                time(u.first_use_unix_nano),
                time(u.last_use_unix_nano)
            );
        }
        s.push('\n');
    }
    for v in &r.recent_violations {
        let _ = writeln!(s, "  violation {}", line(v, names));
    }
    let to_revoke: Vec<String> = r
        .grants
        .iter()
        .filter(|u| !u.revoke_because.is_empty())
        .filter_map(|u| {
            Some(format!(
                "{} ({})",
                escape(&u.grant.as_ref()?.id),
                escape(&u.revoke_because)
            ))
        })
        .collect();
    if !to_revoke.is_empty() {
        let _ = writeln!(s, "  to revoke: {}", to_revoke.join("; "));
    }
    s
}

#[must_use]
pub fn review_json(r: &IdentityReview) -> Value {
    let use_time = |t: u64| (t != 0).then(|| time(t));
    let id = |u: &proto::v1::GrantUse| u.grant.as_ref().map(|g| g.id.clone());
    json!({
        "identity": r.identity.as_ref().map(|i| json!({
            "kind": i.kind().name(), "name": i.name,
        })),
        "granted_nanos": r.granted_nanos,
        "granted": span(r.granted_nanos),
        "grants": r.grants.iter().map(|u| json!({
            "grant": u.grant.as_ref().map(grant_json),
            "events": u.events,
            "first_use": use_time(u.first_use_unix_nano),
            "last_use": use_time(u.last_use_unix_nano),
            "revoke_because": u.revoke_because,
        })).collect::<Vec<_>>(),
        "never_used": r.grants.iter().filter(|u| u.events == 0).filter_map(id).collect::<Vec<_>>(),
        "violations": r.violations,
        "recent_violations": r.recent_violations.iter().map(json).collect::<Vec<_>>(),
        "to_revoke": r.grants.iter().filter(|u| !u.revoke_because.is_empty())
            .map(|u| json!({"id": id(u), "because": u.revoke_because}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{ChainHead, Exec};

    /// A collector's start names its witness certificate in a few words, not its PEM's
    /// thirteen lines; a detail that is not a certificate is shown as it is, escaped.
    #[test]
    fn a_started_collector_names_its_certificate() {
        let dir = std::env::temp_dir().join(format!("render-cert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = pki::Ca::init(&dir).expect("a CA");
        let issued = ca
            .issue_witness(
                "local",
                pki::Validity::from_now(std::time::Duration::from_hours(1)),
            )
            .expect("a witness certificate");
        std::fs::remove_dir_all(&dir).expect("clean up");
        let started = |detail: &str| Event {
            body: Some(Body::Admin(proto::v1::AdminAct {
                action: verifier::COLLECTOR_STARTED.into(),
                host: String::new(),
                actor: "witness local".into(),
                detail: detail.into(),
            })),
            ..Event::default()
        };
        let line = detail(&started(&issued.cert_pem));
        let serial = pki::CertInfo::from_pem(&issued.cert_pem)
            .expect("parses")
            .serial_hex;
        assert!(
            line.starts_with(&format!(
                "ADMIN collector_started  by witness local: certificate CN=recorder witness \
                 local, serial {serial}, valid until 20"
            )),
            "{line}"
        );
        assert!(!line.contains("BEGIN CERTIFICATE"), "{line}");
        let line = detail(&started("not a\ncertificate"));
        assert!(line.ends_with(": not a\\ncertificate"), "{line}");
    }

    /// A count of one reads in the singular, on the hosts', the review's, verify's and
    /// replay's lines alike.
    #[test]
    fn one_of_a_thing_is_not_plural() {
        let host = HostLiveness {
            host: "h".into(),
            state: "live".into(),
            streams: 1,
            head: Some(ChainHead {
                chain_id: "c".into(),
                next_seq: 1,
                ..ChainHead::default()
            }),
            ..HostLiveness::default()
        };
        let line = host_line(&host);
        assert!(line.contains("  1 stream  chain c 1 record"), "{line}");
        let host = HostLiveness {
            streams: 2,
            head: None,
            ..host
        };
        assert!(host_line(&host).contains("  2 streams  no chain"));
        assert_eq!(
            [
                counted(0, "grant"),
                counted(1, "grant"),
                counted(3, "tty byte")
            ],
            ["0 grants", "1 grant", "3 tty bytes"]
        );
        let log = LogVerdict {
            ok: true,
            origin: "o".into(),
            leaves: 1,
            checkpoints: 1,
            attested_size: 1,
            ..LogVerdict::default()
        };
        assert_eq!(
            log_verdict_line(&log),
            "ok    log o  1 leaf, 1 signed checkpoint, attested 1"
        );
        let log = LogVerdict {
            leaves: 2,
            checkpoints: 2,
            ..log
        };
        assert!(log_verdict_line(&log).contains("2 leaves, 2 signed checkpoints"));
        assert_eq!(redacted(1), "[1 byte typed without echo, not recorded]");
    }

    #[test]
    fn control_characters_from_a_host_are_escaped_in_text() {
        let stored = StoredEvent {
            host: "h\u{1b}[2J".into(),
            chain_id: "c".into(),
            event: Some(Event {
                body: Some(Body::Exec(Exec {
                    argv: vec![
                        b"echo".to_vec().into(),
                        b"\x1b[2J\rforged\x07".to_vec().into(),
                    ],
                    ..Exec::default()
                })),
                ..Event::default()
            }),
            ..StoredEvent::default()
        };
        let text = line(&stored, &Names::default());
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains(r"echo \u{1b}[2J\rforged\u{7}"), "{text}");
        assert!(text.contains(r"h\u{1b}[2J"), "{text}");
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    /// Input another process pushed into a terminal is told apart from what was typed, and
    /// its count alone is shown when the terminal hid it.
    #[test]
    fn injected_input_is_said_to_be() {
        let tty = |data: &[u8], redacted_bytes, injected| {
            terminal_bytes(&Tty {
                data: data.to_vec().into(),
                redacted_bytes,
                injected,
                ..Tty::default()
            })
        };
        assert_eq!(tty(b"id\r", 0, false), "id\\r");
        assert_eq!(tty(b"i", 0, true), "INJECTED by ioctl(TIOCSTI): i");
        assert_eq!(
            tty(b"", 1, true),
            "INJECTED by ioctl(TIOCSTI): [1 byte typed without echo, not recorded]"
        );
    }
}
