//! The encode stage: attributed events to the versioned model in `proto/`, the form that is
//! chained, stored and shipped. Argument strings and terminal bytes stay bytes: nothing is
//! lossily re-encoded, and each event is consumed, so its bytes move instead of being
//! copied.

use proto::v1;
use tracing::debug_span;

use crate::{
    capture::event::{Body, GapSource, Image, Target, lost_kind_name},
    clock::WallClock,
    identity::attribute::Attributed,
};

/// The stage: it owns the mapping of kernel time to wall-clock time, and the boot's mapping
/// of session roots' starts (`WallClock::for_sessions`).
pub struct Encode {
    clock: WallClock,
    sessions: WallClock,
}

impl Default for Encode {
    fn default() -> Self {
        Self::new(WallClock::now())
    }
}

impl Encode {
    #[must_use]
    pub fn new(sessions: WallClock) -> Self {
        Self {
            clock: WallClock::now(),
            sessions,
        }
    }

    pub fn process(&mut self, batch: Vec<Attributed>) -> Vec<v1::Event> {
        let _span = debug_span!("batch", events = batch.len()).entered();
        self.clock.follow_steps();
        batch
            .into_iter()
            .map(|a| encode(a, &self.clock, &self.sessions))
            .collect()
    }
}

/// One event in the versioned model, its time mapped through `clock` and its session
/// root's start through `sessions`, which never moves within a boot: that start is part of
/// the session's key.
#[must_use]
pub fn encode(item: Attributed, clock: &WallClock, sessions: &WallClock) -> v1::Event {
    let Attributed {
        event,
        identity,
        root,
        grant,
        elevated,
    } = item;
    v1::Event {
        time_unix_nano: clock.unix_ns(event.ktime_ns),
        process: event.process.map(|p| v1::Process {
            pid: p.pid,
            tgid: p.tgid,
            ppid: p.ppid,
            uid: p.uid,
            euid: p.euid,
            gid: p.gid,
            loginuid: p.loginuid,
            sessionid: p.sessionid,
            cgroup_id: p.cgroup_id,
            tty: p.tty.map(|d| d.to_string()).unwrap_or_default(),
            comm: p.comm,
            elevated,
        }),
        identity: identity.map(|i| v1::Identity {
            kind: i.kind.into(),
            name: i.name.clone(),
            reason: i.reason.clone().unwrap_or_default(),
            grant: i
                .grant
                .clone()
                .or_else(|| grant.map(|g| g.to_string()))
                .unwrap_or_default(),
        }),
        session_root: root.map(|r| v1::SessionRoot {
            pid: r.pid,
            start_unix_nano: sessions.unix_ns(r.start_ns),
        }),
        body: Some(body(event.body)),
    }
}

fn image_of(i: Image) -> v1::Image {
    let (sha256, unhashed) = match i.digest {
        Some(Ok(sha)) => (sha.to_vec(), ""),
        Some(Err(why)) => (Vec::new(), why.as_str()),
        None => (Vec::new(), ""),
    };
    v1::Image {
        dev: i.dev,
        inode: i.inode,
        size: i.size,
        mtime_unix_nano: i.mtime_ns,
        ctime_unix_nano: i.ctime_ns,
        interpreter: i.interpreter,
        sha256,
        unhashed: unhashed.into(),
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one arm per event body, each a plain mapping"
)]
fn body(body: Body) -> v1::event::Body {
    use v1::event::Body as B;
    match body {
        Body::Exec {
            filename,
            filename_truncated,
            argv,
            argv_truncated,
            argv_unreadable,
            result,
            tried,
            cwd,
            executable,
            interpreter,
            image,
        } => B::Exec(v1::Exec {
            filename,
            argv,
            argv_truncated,
            filename_truncated,
            argv_unreadable,
            result,
            tried,
            cwd_truncated: cwd.as_ref().is_some_and(|c| c.truncated),
            cwd_deleted: cwd.as_ref().is_some_and(|c| c.deleted),
            cwd_unreachable: cwd.as_ref().is_some_and(|c| c.unreachable),
            cwd: cwd.map(|c| c.path).unwrap_or_default(),
            interpreter_truncated: interpreter.as_ref().is_some_and(|i| i.truncated),
            interpreter: interpreter.map(|i| i.path).unwrap_or_default(),
            executable: executable.map(|e| v1::ResolvedPath {
                path: e.path,
                truncated: e.truncated,
                deleted: e.deleted,
                unreachable: e.unreachable,
            }),
            image: image.map(image_of),
        }),
        Body::ImageDigest(image) => B::Image(image_of(image)),
        Body::Fork => B::Fork(v1::Fork {}),
        Body::Exit {
            exit_code,
            filename,
        } => B::Exit(v1::Exit {
            exit_code,
            filename: filename.unwrap_or_default(),
        }),
        Body::Tty {
            input,
            device,
            fd,
            offset,
            data,
            redacted_bytes,
            injected,
            writes,
            span_ns,
            write_bytes,
            write_gap_ns,
        } => B::Tty(v1::Tty {
            direction: if input {
                v1::tty::Direction::Input
            } else {
                v1::tty::Direction::Output
            }
            .into(),
            device: device.map(|d| d.to_string()).unwrap_or_default(),
            fd,
            offset,
            data,
            redacted_bytes,
            // A record of one write says nothing more, as records did before joining.
            writes: if writes > 1 { writes } else { 0 },
            span_nanos: span_ns,
            injected: injected.is_some(),
            write_bytes,
            write_gap_nanos: write_gap_ns,
        }),
        Body::TtyResize { device, rows, cols } => B::TtyResize(v1::TtyResize {
            device: device.map(|d| d.to_string()).unwrap_or_default(),
            rows,
            cols,
        }),
        Body::Gap {
            source,
            lost_kind,
            records,
            bytes,
        } => B::Gap(v1::Gap {
            source: match source {
                GapSource::Kernel => v1::gap::Source::KernelRingbuf,
                GapSource::Decode => v1::gap::Source::Decode,
                GapSource::Pipeline => v1::gap::Source::Pipeline,
                GapSource::Unseen => v1::gap::Source::Unseen,
            }
            .into(),
            lost_kind: lost_kind_name(lost_kind).to_owned(),
            records,
            bytes,
        }),
        Body::Violation {
            rule,
            action,
            detail,
        } => B::Violation(v1::Violation {
            rule: rule.to_owned(),
            action: action.to_owned(),
            detail,
        }),
        Body::LoginuidChange {
            born_loginuid,
            born_session,
            loginuid,
            session,
        } => alert(
            "loginuid_change",
            format!(
                "wrote its loginuid: {} in session {born_session} became {} in session {}; it \
                 stays attributed to, and enforced as, session {born_session}",
                audit_text(born_loginuid),
                audit_text(loginuid),
                audit_text(session),
            ),
        ),
        Body::ExecLost { records, targets } => exec_lost(records, &targets),
        Body::Kill(kill) => B::Kill(v1::Kill {
            reason: kill.reason.to_owned(),
            sessionid: kill.sessionid(),
            cgroup_id: kill.cgroup_id(),
            by: kill.by.as_str().to_owned(),
            grant_id: kill.grant_id,
            pids: kill.pids,
        }),
    }
}

/// Exec records lost while `targets` held kill-mode grants, under an alerting policy.
fn exec_lost(records: u64, targets: &[Target]) -> v1::event::Body {
    let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
    alert(
        "exec_lost",
        format!(
            "{records} exec records were lost while these held kill-mode grants, and any of \
             them may have made them: {}",
            targets.join(", ")
        ),
    )
}

/// An alert the agent chains about its own host.
fn alert(kind: &str, message: String) -> v1::event::Body {
    v1::event::Body::Alert(v1::Alert {
        kind: kind.to_owned(),
        message,
        ..v1::Alert::default()
    })
}

/// An audit id as the evidence words it: "unset" for the kernel's unset value.
fn audit_text(id: Option<u32>) -> String {
    id.map_or_else(|| "unset".to_owned(), |id| id.to_string())
}
