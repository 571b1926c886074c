//! How stored events read: one line of text for people, one JSON object for programs.

use std::fmt::Write as _;

use base64::Engine as _;
use proto::v1::{
    Event, Grant, Identity, IdentityReview, IdentitySelector, Session, StoredEvent, event::Body,
    identity::Kind, tty::Direction,
};
use serde_json::{Value, json};

/// Longest terminal text shown on one line.
const TEXT_MAX: usize = 160;

#[must_use]
pub fn kind(event: &Event) -> &'static str {
    match &event.body {
        Some(Body::Exec(_)) => "exec",
        Some(Body::Fork(_)) => "fork",
        Some(Body::Exit(_)) => "exit",
        Some(Body::Tty(t)) if t.direction() == Direction::Input => "tty_in",
        Some(Body::Tty(_)) => "tty_out",
        Some(Body::Gap(_)) => "gap",
        Some(Body::ChainStart(_)) => "chain_start",
        Some(Body::Alert(_)) => "alert",
        Some(Body::Violation(_)) => "violation",
        Some(Body::Kill(_)) => "kill",
        Some(Body::GrantChange(_)) => "grant_change",
        None => "unknown",
    }
}

/// RFC 3339 UTC with milliseconds.
#[must_use]
pub fn time(unix_nano: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_nano);
    humantime::format_rfc3339_millis(t).to_string()
}

fn identity_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Human => "human",
        Kind::Service => "service",
        Kind::Workload => "workload",
        Kind::Registered => "registered",
        Kind::Unknown | Kind::Unspecified => "unknown",
    }
}

fn identity_json(i: &Identity) -> Value {
    json!({
        "kind": identity_kind(i.kind()),
        "name": i.name,
        "grant": i.grant,
        "reason": i.reason,
    })
}

/// `name(kind)[grant G]`, or `-` without an identity.
#[must_use]
pub fn identity(identity: Option<&Identity>) -> String {
    let Some(i) = identity else {
        return "-".into();
    };
    let kind = identity_kind(i.kind());
    let mut s = if i.name.is_empty() {
        kind.to_owned()
    } else {
        format!("{}({kind})", i.name)
    };
    if !i.grant.is_empty() {
        let _ = write!(s, "[grant {}]", i.grant);
    }
    s
}

/// The argument strings joined as a shell would show them.
fn command_line(argv: &[Vec<u8>]) -> String {
    argv.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Terminal bytes as one printable line: control characters escaped, cut at `TEXT_MAX`.
fn printable(data: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(data).escape_debug().collect();
    if text.chars().count() > TEXT_MAX {
        let cut: String = text.chars().take(TEXT_MAX).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// What happened, in a few words.
#[must_use]
pub fn detail(event: &Event) -> String {
    match &event.body {
        Some(Body::Exec(x)) => {
            let mut s = command_line(&x.argv);
            if x.result != 0 {
                let _ = write!(s, "  (failed: {})", x.result);
            }
            s
        }
        Some(Body::Exit(x)) => format!("status {} {}", x.exit_code, x.filename),
        Some(Body::Tty(t)) => printable(&t.data),
        Some(Body::Gap(g)) => format!(
            "LOST {} {} records, {} bytes ({})",
            g.records,
            g.lost_kind,
            g.bytes,
            g.source().as_str_name()
        ),
        Some(Body::ChainStart(c)) => format!(
            "chain start; previous {} at seq {}",
            if c.previous_chain_id.is_empty() {
                "none"
            } else {
                &c.previous_chain_id
            },
            c.previous_seq
        ),
        Some(Body::Alert(a)) => format!("ALERT {}: {}", a.kind, a.message),
        Some(Body::Violation(v)) => format!("VIOLATION {} ({}): {}", v.rule, v.action, v.detail),
        Some(Body::Kill(k)) => format!(
            "KILLED by {} pids {:?}: {} {}",
            k.by,
            k.pids,
            k.reason,
            if k.grant_id.is_empty() {
                String::new()
            } else {
                format!("grant {}", k.grant_id)
            }
        ),
        Some(Body::GrantChange(c)) => c.grant.as_ref().map_or_else(String::new, |g| {
            format!(
                "GRANT {} {} for {} by {}",
                c.action,
                g.id,
                g.identity.as_ref().map_or("", |i| i.name.as_str()),
                c.actor
            )
        }),
        Some(Body::Fork(_)) | None => String::new(),
    }
}

/// `time host identity session kind detail`.
#[must_use]
pub fn line(stored: &StoredEvent) -> String {
    let Some(event) = &stored.event else {
        return format!(
            "{} {} seq {}: no event",
            stored.host, stored.chain_id, stored.seq
        );
    };
    let session = if stored.session.is_empty() {
        "-"
    } else {
        &stored.session
    };
    let who = event
        .process
        .as_ref()
        .map(|p| format!(" pid {} uid {} euid {}", p.pid, p.uid, p.euid))
        .unwrap_or_default();
    format!(
        "{} {} {} {} {}{} {}",
        time(event.time_unix_nano),
        stored.host,
        identity(event.identity.as_ref()),
        session,
        kind(event),
        who,
        detail(event)
    )
}

/// Every field an operator or program may want, with bytes as base64 and, for terminal
/// data and argv, also as lossy text.
#[must_use]
pub fn json(stored: &StoredEvent) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut v = json!({
        "host": stored.host,
        "chain_id": stored.chain_id,
        "seq": stored.seq,
        "session": stored.session,
    });
    let Some(event) = &stored.event else {
        return v;
    };
    v["kind"] = kind(event).into();
    v["time"] = time(event.time_unix_nano).into();
    v["time_unix_nano"] = event.time_unix_nano.into();
    if let Some(i) = &event.identity {
        v["identity"] = identity_json(i);
    }
    if let Some(p) = &event.process {
        let audit = |x: Option<u32>| x.map_or(Value::from("unset"), Value::from);
        v["process"] = json!({
            "pid": p.pid, "tgid": p.tgid, "ppid": p.ppid, "uid": p.uid, "euid": p.euid,
            "gid": p.gid, "loginuid": audit(p.loginuid), "sessionid": audit(p.sessionid),
            "cgroup_id": p.cgroup_id, "tty": p.tty, "comm": p.comm,
        });
    }
    match &event.body {
        Some(Body::Exec(x)) => {
            v["filename"] = x.filename.clone().into();
            v["argv"] = x
                .argv
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .into();
            v["result"] = x.result.into();
        }
        Some(Body::Tty(t)) => {
            v["device"] = t.device.clone().into();
            v["data"] = b64(&t.data).into();
            v["text"] = String::from_utf8_lossy(&t.data).into_owned().into();
        }
        Some(Body::Exit(x)) => {
            v["exit_code"] = x.exit_code.into();
            v["filename"] = x.filename.clone().into();
        }
        Some(Body::Gap(g)) => {
            v["source"] = g.source().as_str_name().to_lowercase().into();
            v["lost_kind"] = g.lost_kind.clone().into();
            v["lost_records"] = g.records.into();
            v["lost_bytes"] = g.bytes.into();
        }
        Some(Body::Alert(a)) => {
            v["alert"] =
                json!({"kind": a.kind, "chain_id": a.chain_id, "seq": a.seq, "message": a.message});
        }
        Some(Body::ChainStart(c)) => {
            v["previous_chain_id"] = c.previous_chain_id.clone().into();
            v["previous_seq"] = c.previous_seq.into();
        }
        Some(Body::Violation(x)) => {
            v["violation"] = json!({"rule": x.rule, "action": x.action, "detail": x.detail});
        }
        Some(Body::Kill(k)) => {
            v["kill"] = json!({
                "grant_id": k.grant_id, "reason": k.reason, "sessionid": k.sessionid,
                "cgroup_id": k.cgroup_id, "pids": k.pids, "by": k.by,
            });
        }
        Some(Body::GrantChange(c)) => {
            v["grant_change"] = json!({
                "action": c.action, "actor": c.actor, "reason": c.reason,
                "grant": c.grant.as_ref().map(grant_json),
            });
        }
        Some(Body::Fork(_)) | None => {}
    }
    v
}

#[must_use]
pub fn session_line(s: &Session) -> String {
    format!(
        "{:<44} {:<24} root pid {:<7} {} → {}  {} events, {} execs, {} tty bytes",
        s.key,
        identity(s.identity.as_ref()),
        s.root_pid,
        time(s.first_unix_nano),
        time(s.last_unix_nano),
        s.events,
        s.execs,
        s.tty_bytes
    )
}

#[must_use]
pub fn session_json(s: &Session) -> Value {
    json!({
        "key": s.key, "host": s.host, "sessionid": s.sessionid, "root_pid": s.root_pid,
        "root_start_unix_nano": s.root_start_unix_nano,
        "identity": s.identity.as_ref().map(identity_json),
        "first": time(s.first_unix_nano), "last": time(s.last_unix_nano),
        "events": s.events, "execs": s.execs, "tty_bytes": s.tty_bytes,
    })
}

#[must_use]
pub fn grant_json(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "identity": g.identity.as_ref().map(|i| json!({
            "kind": i.kind().as_str_name().to_lowercase(), "name": i.name,
        })),
        "hosts": g.hosts,
        "not_before": time(g.not_before_unix_nano),
        "expires_at": time(g.expires_at_unix_nano),
        "not_before_unix_nano": g.not_before_unix_nano,
        "expires_at_unix_nano": g.expires_at_unix_nano,
        "revoked_at": (g.revoked_unix_nano != 0).then(|| time(g.revoked_unix_nano)),
        "reason": g.reason,
        "approver": g.approver,
        "on_expiry": g.on_expiry().as_str_name().to_lowercase(),
    })
}

/// A span of nanoseconds to the second, for example `1h 30m`.
fn span(nanos: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(nanos / 1_000_000_000)).to_string()
}

/// `name(kind)`.
fn selector(s: Option<&IdentitySelector>) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| format!("{}({})", s.name, identity_kind(s.kind())),
    )
}

/// Where the grant stands at `now`.
fn grant_state(g: &Grant, now: u64) -> String {
    if g.revoked_unix_nano != 0 && g.revoked_unix_nano <= g.expires_at_unix_nano {
        format!("revoked {}", time(g.revoked_unix_nano))
    } else if g.expires_at_unix_nano <= now {
        "expired".into()
    } else if g.not_before_unix_nano > now {
        "pending".into()
    } else {
        format!("live, {} left", span(g.expires_at_unix_nano - now))
    }
}

/// `ID identity hosts from → to state on-expiry reason approver`: the id first.
#[must_use]
pub fn grant_line(g: &Grant, now: u64) -> String {
    let hosts = if g.hosts.is_empty() {
        "every host".to_owned()
    } else {
        g.hosts.join(",")
    };
    format!(
        "{}  {}  on {}  {} → {}  {}  on expiry {}  reason {:?}  approver {:?}",
        g.id,
        selector(g.identity.as_ref()),
        hosts,
        time(g.not_before_unix_nano),
        time(g.expires_at_unix_nano),
        grant_state(g, now),
        g.on_expiry().as_str_name().to_lowercase(),
        g.reason,
        g.approver,
    )
}

/// An identity's review as a few lines: totals, one line per grant and per recent
/// violation, and the grants to revoke with why.
#[must_use]
pub fn review_text(r: &IdentityReview, now: u64) -> String {
    let never_used = r.grants.iter().filter(|u| u.events == 0).count();
    let mut s = format!(
        "{}: {} grants, held {} in all, {never_used} never used; {} violations\n",
        selector(r.identity.as_ref()),
        r.grants.len(),
        span(r.granted_nanos),
        r.violations,
    );
    for u in &r.grants {
        let Some(g) = &u.grant else { continue };
        let _ = write!(
            s,
            "  grant {}  {} → {}  {}  {} events",
            g.id,
            time(g.not_before_unix_nano),
            time(g.expires_at_unix_nano),
            grant_state(g, now),
            u.events
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
        let _ = writeln!(s, "  violation {}", line(v));
    }
    let to_revoke: Vec<String> = r
        .grants
        .iter()
        .filter(|u| !u.revoke_because.is_empty())
        .filter_map(|u| Some(format!("{} ({})", u.grant.as_ref()?.id, u.revoke_because)))
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
            "kind": identity_kind(i.kind()), "name": i.name,
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
