//! `--stdout`: one JSON object per event per line, with stable field names. For operators
//! and tests; the shipping path to the collector is a separate sink.

use std::{
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Serialize;

use crate::{
    attribute::Identity,
    event::{Body, Event, GapSource, kind_name},
    proctable::SessionRoot,
    reader::{boot_ns, clock_ns},
};

/// Maps the kernel's boot-relative clock onto wall-clock time. The offset is checked once
/// per batch but only moves when the wall clock has stepped (by more than
/// [`STEP_NS`]): sampling the two clocks is never exact, and re-applying that jitter
/// would give one instant (a session's start, say) a different time on every batch.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_boot: i128,
}

const STEP_NS: i128 = 1_000_000;

impl WallClock {
    #[must_use]
    pub fn now() -> Self {
        let boot = boot_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_boot: i128::from(real) - i128::from(boot),
        }
    }

    /// Adopts the current offset if the wall clock stepped since the last one.
    pub fn follow_steps(&mut self) {
        let now = Self::now();
        if (now.realtime_minus_boot - self.realtime_minus_boot).abs() > STEP_NS {
            *self = now;
        }
    }

    /// Nanoseconds since the Unix epoch for a `CLOCK_BOOTTIME` instant.
    #[must_use]
    pub fn unix_ns(&self, ktime_ns: u64) -> u64 {
        u64::try_from(i128::from(ktime_ns) + self.realtime_minus_boot).unwrap_or(0)
    }

    #[must_use]
    pub fn format(&self, ktime_ns: u64) -> String {
        humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(self.unix_ns(ktime_ns)))
            .to_string()
    }
}

/// loginuid and sessionid: a number, or "unset" where the kernel has none.
#[derive(Serialize)]
#[serde(untagged)]
enum AuditId {
    Set(u32),
    Unset(&'static str),
}

impl From<Option<u32>> for AuditId {
    fn from(v: Option<u32>) -> Self {
        v.map_or(Self::Unset("unset"), Self::Set)
    }
}

/// The process an audit session began in, and when it started.
#[derive(Serialize)]
struct RootLine {
    pid: u32,
    start: String,
}

#[derive(Serialize)]
struct IdentityLine<'a> {
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<&'a str>,
}

/// Process fields are always present (null on gaps); kind-specific ones only on their kind.
#[derive(Serialize)]
struct Line<'a> {
    kind: &'static str,
    time: String,
    pid: Option<u32>,
    tgid: Option<u32>,
    ppid: Option<u32>,
    uid: Option<u32>,
    euid: Option<u32>,
    gid: Option<u32>,
    loginuid: Option<AuditId>,
    sessionid: Option<AuditId>,
    cgroup_id: Option<u64>,
    tty: Option<String>,
    comm: Option<&'a str>,
    identity: Option<IdentityLine<'a>>,
    session_root: Option<RootLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv_unreadable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    violation: Option<ViolationLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill: Option<KillLine<'a>>,
}

#[derive(Serialize)]
struct ViolationLine<'a> {
    rule: &'static str,
    action: &'static str,
    detail: &'a str,
}

#[derive(Serialize)]
struct KillLine<'a> {
    grant_id: &'a str,
    reason: &'static str,
    sessionid: Option<u32>,
    cgroup_id: u64,
    pids: &'a [u32],
    by: &'static str,
}

impl<'a> Line<'a> {
    fn new(
        event: &'a Event,
        identity: Option<&'a Identity>,
        root: Option<SessionRoot>,
        clock: &WallClock,
    ) -> Self {
        let p = event.process.as_ref();
        let mut line = Line {
            kind: event.kind_name(),
            time: clock.format(event.ktime_ns),
            pid: p.map(|p| p.pid),
            tgid: p.map(|p| p.tgid),
            ppid: p.map(|p| p.ppid),
            uid: p.map(|p| p.uid),
            euid: p.map(|p| p.euid),
            gid: p.map(|p| p.gid),
            loginuid: p.map(|p| p.loginuid.into()),
            sessionid: p.map(|p| p.sessionid.into()),
            cgroup_id: p.map(|p| p.cgroup_id),
            tty: p.and_then(|p| p.tty).map(|d| d.to_string()),
            comm: p.map(|p| p.comm.as_str()),
            identity: identity.map(|i| IdentityLine {
                kind: i.kind.as_str(),
                name: &i.name,
                reason: i.reason.as_deref(),
                grant: i.grant.as_deref(),
            }),
            session_root: root.map(|r| RootLine {
                pid: r.pid,
                start: clock.format(r.start_ns),
            }),
            filename: None,
            filename_truncated: None,
            argv: None,
            argv_truncated: None,
            argv_unreadable: None,
            result: None,
            exit_code: None,
            fd: None,
            offset: None,
            data: None,
            source: None,
            lost_kind: None,
            lost_records: None,
            lost_bytes: None,
            violation: None,
            kill: None,
        };
        line.body(&event.body);
        line
    }

    /// The fields of the event's kind.
    fn body(&mut self, body: &'a Body) {
        match body {
            Body::Exec {
                filename,
                filename_truncated,
                argv,
                argv_truncated,
                argv_unreadable,
                result,
            } => {
                self.filename = Some(filename);
                self.filename_truncated = Some(*filename_truncated);
                self.argv = Some(argv.iter().map(|a| String::from_utf8_lossy(a)).collect());
                self.argv_truncated = Some(*argv_truncated);
                self.argv_unreadable = Some(*argv_unreadable);
                self.result = Some(*result);
            }
            Body::Fork => {}
            Body::Exit {
                exit_code,
                filename,
            } => {
                self.exit_code = Some(*exit_code);
                self.filename = filename.as_deref();
            }
            Body::Tty {
                device,
                fd,
                offset,
                data,
                ..
            } => {
                self.tty = device.map(|d| d.to_string());
                self.fd = Some(*fd);
                self.offset = Some(*offset);
                self.data = Some(STANDARD.encode(data));
            }
            Body::Gap {
                source,
                lost_kind,
                records,
                bytes,
            } => {
                self.source = Some(match source {
                    GapSource::Kernel => "kernel_ringbuf",
                    GapSource::Decode => "decode",
                    GapSource::Pipeline => "pipeline",
                });
                self.lost_kind = Some(kind_name(*lost_kind));
                self.lost_records = Some(*records);
                self.lost_bytes = Some(*bytes);
            }
            Body::Violation {
                rule,
                action,
                detail,
            } => {
                self.violation = Some(ViolationLine {
                    rule,
                    action,
                    detail,
                });
            }
            Body::Kill(kill) => {
                self.kill = Some(KillLine {
                    grant_id: &kill.grant_id,
                    reason: kill.reason,
                    sessionid: kill.sessionid(),
                    cgroup_id: kill.cgroup_id(),
                    pids: &kill.pids,
                    by: kill.by.as_str(),
                });
            }
        }
    }
}

/// Writes one JSON line for `event`, attributed to `identity` and to the session begun by
/// `root` when a process made it.
pub fn write_json(
    out: &mut impl Write,
    event: &Event,
    identity: Option<&Identity>,
    root: Option<SessionRoot>,
    clock: &WallClock,
) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Line::new(event, identity, root, clock))?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribute::IdentityKind,
        event::{Device, Process},
    };

    #[test]
    fn tty_line_has_stable_fields_and_unset_ids() {
        let event = Event {
            ktime_ns: 5,
            process: Some(Process {
                pid: 3,
                tgid: 3,
                ppid: 1,
                uid: 0,
                euid: 0,
                gid: 0,
                loginuid: None,
                sessionid: Some(4),
                cgroup_id: 9,
                tty: None,
                comm: "sh".into(),
            }),
            body: Body::Tty {
                input: true,
                device: Some(Device {
                    major: 136,
                    minor: 2,
                }),
                fd: 5,
                offset: 0,
                data: b"ls\r".to_vec(),
            },
        };
        let mut out = Vec::new();
        let identity = Identity {
            kind: IdentityKind::Unknown,
            name: String::new(),
            reason: Some("why".into()),
            grant: None,
        };
        write_json(
            &mut out,
            &event,
            Some(&identity),
            Some(SessionRoot {
                pid: 77,
                start_ns: 0,
            }),
            &WallClock {
                realtime_minus_boot: 1_700_000_000_000_000_000,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "tty_in");
        assert_eq!(v["loginuid"], "unset");
        assert_eq!(v["sessionid"], 4);
        assert_eq!(v["tty"], "136:2");
        assert_eq!(v["data"], "bHMN");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000005Z");
        assert!(v.get("argv").is_none());
        assert_eq!(
            v["identity"],
            serde_json::json!({"kind": "unknown", "name": "", "reason": "why"})
        );
    }

    #[test]
    fn a_stepped_wall_clock_is_followed() {
        let mut stale = WallClock {
            realtime_minus_boot: 0,
        };
        stale.follow_steps();
        assert!(
            stale.realtime_minus_boot > STEP_NS,
            "an offset decades off is replaced"
        );
    }
}
