//! The columns queries find a record by, derived from its bytes: at ingest, to store them,
//! and at verify, to compare what is stored with what the bytes say. Setting `kind = 'fork'`
//! on a violation would otherwise hide it from review, and nothing would notice.

use std::{
    ops::Range,
    sync::mpsc::{SyncSender, sync_channel},
    thread::JoinHandle,
};

use bytes::{Buf, Bytes};
use prost::Message as _;
use proto::{
    kind::Kind,
    session::{sessionid_of, write_key},
    v1::{Event, Finding, event::Body},
};

use crate::ChainRow;

/// The alerts an agent may chain: a collector that lost what it acknowledged, a process
/// of a login session that changed its loginuid, exec records lost while sessions held
/// kill-mode grants (docs/grants.md), a machine id that no longer matches the host's
/// enrolled identity, and spool bytes skipped because their frames did not check.
const AGENT_ALERTS: [&str; 5] = [
    "collector_rollback",
    "loginuid_change",
    "exec_lost",
    "machine_id_change",
    "spool_corrupt",
];

/// The columns queries find a record by, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns<'a> {
    pub host: &'a str,
    pub time_unix_nano: u64,
    pub kind: &'a str,
    pub session: &'a str,
    pub sessionid: Option<u32>,
    pub tty: &'a str,
    pub identity_kind: i32,
    pub identity_name: &'a str,
    pub grant: &'a str,
    pub tty_bytes: u64,
}

/// A record's columns as its bytes give them.
#[derive(Clone, Debug)]
pub struct Derived {
    /// The host the record is about: its chain's host.
    pub host: String,
    pub time_unix_nano: u64,
    pub kind: Kind,
    /// `HOST:SESSIONID:ROOT_START` (`proto::session::Key`), empty outside an audit session.
    pub session: String,
    pub sessionid: Option<u32>,
    /// The terminal (`major:minor`, [`terminal`]).
    pub tty: String,
    pub identity_kind: i32,
    pub identity_name: String,
    /// The grant the activity is covered by (`Identity.grant`); empty outside any.
    pub grant: String,
    /// Bytes of terminal data, for tty events.
    pub tty_bytes: u64,
    /// Why the bytes are not a record an agent may send, when they are not: the record is
    /// kept verbatim as kind `malformed`, since refusing it would stop the host's shipping
    /// for good.
    pub fault: Option<String>,
}

impl<'a> Columns<'a> {
    /// Columns that say nothing but a host and a kind: a malformed record's, and tests' of
    /// what reads no more.
    pub(crate) fn bare(host: &'a str, kind: &'a str) -> Self {
        Self {
            host,
            time_unix_nano: 0,
            kind,
            session: "",
            sessionid: None,
            tty: "",
            identity_kind: 0,
            identity_name: "",
            grant: "",
            tty_bytes: 0,
        }
    }
}

impl Derived {
    /// A record found by its host, time and kind alone.
    #[must_use]
    pub fn bare(host: String, time_unix_nano: u64, kind: Kind) -> Self {
        Self {
            host,
            time_unix_nano,
            kind,
            session: String::new(),
            sessionid: None,
            tty: String::new(),
            identity_kind: 0,
            identity_name: String::new(),
            grant: String::new(),
            tty_bytes: 0,
            fault: None,
        }
    }

    #[must_use]
    pub fn columns(&self) -> Columns<'_> {
        Columns {
            host: &self.host,
            time_unix_nano: self.time_unix_nano,
            kind: self.kind.name(),
            session: &self.session,
            sessionid: self.sessionid,
            tty: &self.tty,
            identity_kind: self.identity_kind,
            identity_name: &self.identity_name,
            grant: &self.grant,
            tty_bytes: self.tty_bytes,
        }
    }
}

/// The terminal `event` is on: a tty event's device, otherwise its process's controlling
/// terminal; empty when there is none.
#[must_use]
pub fn terminal(event: &Event) -> &str {
    match &event.body {
        Some(Body::Tty(tty)) => &tty.device,
        Some(Body::TtyResize(resize)) => &resize.device,
        _ => event.process.as_ref().map_or("", |p| p.tty.as_str()),
    }
}

/// Decodes record `seq` of an agent of `host` for its columns. What an agent may not send is
/// `malformed`, with the fault named, except at seq 0: a chain that does not begin with
/// its host's `chain_start` is refused, since every link between chains rests on it.
/// Bytes given as `Bytes` are decoded without copying the event's byte fields.
pub fn derive(host: &str, seq: u64, bytes: impl Buf) -> Result<Derived, String> {
    let mut session = String::new();
    let parsed = decode(seq, bytes).and_then(|event| {
        parse(host, seq, &event, &mut session).map(|(kind, c)| Derived {
            host: c.host.to_owned(),
            time_unix_nano: c.time_unix_nano,
            kind,
            session: c.session.to_owned(),
            sessionid: c.sessionid,
            tty: c.tty.to_owned(),
            identity_kind: c.identity_kind,
            identity_name: c.identity_name.to_owned(),
            grant: c.grant.to_owned(),
            tty_bytes: c.tty_bytes,
            fault: None,
        })
    });
    match parsed {
        Err(fault) if seq > 0 => Ok(Derived {
            fault: Some(fault),
            ..Derived::bare(host.to_owned(), 0, Kind::Malformed)
        }),
        parsed => parsed,
    }
}

fn decode(seq: u64, bytes: impl Buf) -> Result<Event, String> {
    Event::decode(bytes).map_err(|e| format!("seq {seq} is not a recorder.v1.Event: {e}"))
}

/// The kind and columns of record `seq`, decoded as `event`, borrowed from it; `session`
/// holds the session's key. Verify checks every record this way, so for a record an agent
/// may send nothing here allocates but a session key longer than any before it.
fn parse<'a>(
    host: &'a str,
    seq: u64,
    event: &'a Event,
    session: &'a mut String,
) -> Result<(Kind, Columns<'a>), String> {
    if event.time_unix_nano > i64::MAX as u64 {
        return Err(format!("seq {seq}: time out of range"));
    }
    let Some(kind) = Kind::of(event) else {
        return Err(format!("seq {seq} has no body"));
    };
    match &event.body {
        Some(Body::ChainStart(start)) if start.host != host => {
            return Err(format!(
                "seq {seq} starts a chain of host {:?}, but this agent said Hello as {host:?}",
                start.host
            ));
        }
        // An agent raises two alerts only: about the collector itself, and about a process
        // that changed its audit session.
        Some(Body::Alert(alert)) if !AGENT_ALERTS.contains(&alert.kind.as_str()) => {
            return Err(format!(
                "seq {seq} is an alert: only the collector raises alerts, but {}",
                AGENT_ALERTS.join(" and ")
            ));
        }
        Some(Body::GrantChange(_)) => {
            return Err(format!(
                "seq {seq} is a grant change: only the collector records those"
            ));
        }
        Some(Body::Access(_)) => {
            return Err(format!(
                "seq {seq} is an access record: only the collector records reads"
            ));
        }
        Some(Body::Admin(_) | Body::Prune(_)) => {
            return Err(format!(
                "seq {seq} is {kind}: only the collector chains administrative acts and prunes"
            ));
        }
        _ => {}
    }
    if seq == 0 && kind != Kind::ChainStart {
        return Err(format!("seq 0 is {kind}: a chain begins with chain_start"));
    }
    let tty_bytes = match &event.body {
        Some(Body::Tty(t)) => t.data.len() as u64,
        _ => 0,
    };
    let sessionid = sessionid_of(event);
    session.clear();
    if let (Some(sessionid), Some(root)) = (sessionid, &event.session_root) {
        // Writing to a String cannot fail.
        let _ = write_key(session, host, sessionid, root.start_unix_nano);
    }
    let identity = event.identity.as_ref();
    let columns = Columns {
        host,
        time_unix_nano: event.time_unix_nano,
        kind: kind.name(),
        session,
        sessionid,
        tty: terminal(event),
        identity_kind: identity.map_or(0, |i| i.kind),
        identity_name: identity.map_or("", |i| i.name.as_str()),
        grant: identity.map_or("", |i| i.grant.as_str()),
        tty_bytes,
    };
    Ok((kind, columns))
}

/// A finding when record `row` of chain `chain_id` (an agent's of `host`), whose bytes
/// `bytes` holds, has stored columns that differ from what its bytes say, or bytes no agent
/// may send. `session` is a buffer kept from record to record.
fn check(
    host: &str,
    chain_id: &str,
    row: &ChainRow<'_>,
    bytes: Bytes,
    session: &mut String,
    findings: &mut Vec<Finding>,
) {
    // Named only when there is a finding: most records have none.
    let subject = || crate::record_subject(chain_id, row.seq);
    let event = decode(row.seq, bytes);
    let parsed = match &event {
        Ok(event) => parse(host, row.seq, event, session).map(|(_, columns)| columns),
        Err(fault) => Err(fault.clone()),
    };
    let derived = match parsed {
        Ok(columns) => columns,
        // Stored as `malformed`, as `derive` makes it.
        Err(_) if row.seq > 0 => Columns::bare(host, Kind::Malformed.name()),
        Err(e) => {
            findings.push(Finding {
                subject: subject(),
                reason: format!("its bytes are not a record an agent may send: {e}"),
            });
            return;
        }
    };
    if derived != row.columns {
        findings.push(Finding {
            subject: subject(),
            reason: format!(
                "its stored columns differ from what its bytes say: {}",
                differences(&row.columns, &derived)
            ),
        });
    }
}

/// Each column where `stored` differs from `derived`, named, with both values.
fn differences(stored: &Columns<'_>, derived: &Columns<'_>) -> String {
    let both = |f: fn(&Columns<'_>) -> String| (f(stored), f(derived));
    [
        ("host", both(|c| format!("{:?}", c.host))),
        ("time_unix_nano", both(|c| c.time_unix_nano.to_string())),
        ("kind", both(|c| format!("{:?}", c.kind))),
        ("session", both(|c| format!("{:?}", c.session))),
        ("sessionid", both(|c| format!("{:?}", c.sessionid))),
        ("tty", both(|c| format!("{:?}", c.tty))),
        ("identity_kind", both(|c| c.identity_kind.to_string())),
        ("identity_name", both(|c| format!("{:?}", c.identity_name))),
        ("grant", both(|c| format!("{:?}", c.grant))),
        ("tty_bytes", both(|c| c.tty_bytes.to_string())),
    ]
    .into_iter()
    .filter(|(_, (s, d))| s != d)
    .map(|(name, (s, d))| format!("{name} {s} where its bytes say {d}"))
    .collect::<Vec<_>>()
    .join("; ")
}

/// Records whose columns are checked (`check`) on a thread of their own, beside the walk
/// that verifies their hashes: decoding every record for its columns costs as much as the
/// walk itself, and the two need nothing of each other. Records are copied a batch at a
/// time; what the thread finds comes back with `finish`.
pub struct Checks {
    batch: Batch,
    to_worker: Option<SyncSender<Batch>>,
    worker: Option<JoinHandle<Vec<Finding>>>,
}

/// Records of one chain, copied into one buffer.
#[derive(Default)]
struct Batch {
    host: String,
    chain_id: String,
    bytes: Vec<u8>,
    records: Vec<Copied>,
}

/// A record of a batch: its bytes and text columns as ranges of the batch's buffer.
struct Copied {
    seq: u64,
    row: i64,
    event: Range<usize>,
    /// host, kind, session, tty, identity name, grant.
    text: [Range<usize>; 6],
    time_unix_nano: u64,
    sessionid: Option<u32>,
    identity_kind: i32,
    tty_bytes: u64,
}

/// Records a batch holds before it is handed over.
const BATCH: usize = 4_096;
/// Batches handed over and not yet checked: bounds the memory a fast reader can take.
const QUEUED: usize = 2;

impl Default for Checks {
    fn default() -> Self {
        let (to_worker, batches) = sync_channel::<Batch>(QUEUED);
        let worker = std::thread::spawn(move || {
            let mut findings = Vec::new();
            for batch in batches {
                batch.check(&mut findings);
            }
            findings
        });
        Self {
            batch: Batch::default(),
            to_worker: Some(to_worker),
            worker: Some(worker),
        }
    }
}

impl Checks {
    /// Queues the check of `row`, record of chain `chain_id` of an agent of `host`.
    pub fn push(&mut self, host: &str, chain_id: &str, row: &ChainRow<'_>) {
        if self.batch.records.len() >= BATCH
            || self.batch.chain_id != chain_id
            || self.batch.host != host
        {
            self.hand_over();
            host.clone_into(&mut self.batch.host);
            chain_id.clone_into(&mut self.batch.chain_id);
        }
        self.batch.copy(row);
    }

    fn hand_over(&mut self) {
        if self.batch.records.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        // The worker stops only by panicking, which `finish` passes on.
        if let Some(to_worker) = &self.to_worker {
            let _ = to_worker.send(batch);
        }
    }

    /// What the checks found, once every record was pushed.
    #[must_use]
    pub fn finish(mut self) -> Vec<Finding> {
        self.hand_over();
        self.to_worker = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(findings)) => findings,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Vec::new(),
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        // Unfinished (an error ended the walk): the worker ends with the channel.
        self.to_worker = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Batch {
    fn copy(&mut self, row: &ChainRow<'_>) {
        let mut put = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        };
        let c = &row.columns;
        let event = put(row.event);
        let text =
            [c.host, c.kind, c.session, c.tty, c.identity_name, c.grant].map(|t| put(t.as_bytes()));
        self.records.push(Copied {
            seq: row.seq,
            row: row.row,
            event,
            text,
            time_unix_nano: c.time_unix_nano,
            sessionid: c.sessionid,
            identity_kind: c.identity_kind,
            tty_bytes: c.tty_bytes,
        });
    }

    fn check(self, findings: &mut Vec<Finding>) {
        // Events are decoded from views of the buffer: their byte fields are not copied.
        let bytes = Bytes::from(self.bytes);
        // Copied from text, so always text again.
        let text = |r: &Range<usize>| std::str::from_utf8(&bytes[r.clone()]).unwrap_or("");
        let mut key = String::new();
        for r in &self.records {
            let [host, kind, session, tty, identity_name, grant] = &r.text;
            let row = ChainRow {
                row: r.row,
                seq: r.seq,
                event: &bytes[r.event.clone()],
                hash: &[],
                columns: Columns {
                    host: text(host),
                    time_unix_nano: r.time_unix_nano,
                    kind: text(kind),
                    session: text(session),
                    sessionid: r.sessionid,
                    tty: text(tty),
                    identity_kind: r.identity_kind,
                    identity_name: text(identity_name),
                    grant: text(grant),
                    tty_bytes: r.tty_bytes,
                },
            };
            let event = bytes.slice(r.event.clone());
            check(&self.host, &self.chain_id, &row, event, &mut key, findings);
        }
    }
}

/// Ingest stores what `derive` gives, and verify compares it with what `check` derives on
/// the column thread: the two must agree on every record, and `check` must see any one
/// stored column changed.
#[cfg(test)]
mod tests {
    use proto::v1::{Exec, Identity, Process, SessionRoot, Tty};

    use super::*;

    const HOST: &str = "3d1219c7c4c5";
    const CHAIN: &str = "3d1219c7c4c5:boot:1";

    fn records() -> Vec<(u64, Vec<u8>)> {
        let exec = Event {
            time_unix_nano: 1_700_000_000_000_000_000,
            process: Some(Process {
                sessionid: Some(7),
                tty: "136:2".into(),
                ..Process::default()
            }),
            identity: Some(Identity {
                kind: 1,
                name: "alice".into(),
                grant: "g-1".into(),
                ..Identity::default()
            }),
            session_root: Some(SessionRoot {
                pid: 100,
                start_unix_nano: 1_600_000_000_000_000_000,
            }),
            body: Some(Body::Exec(Exec {
                filename: "/usr/bin/id".into(),
                argv: vec![b"id".to_vec().into(), b"-u".to_vec().into()],
                ..Exec::default()
            })),
        };
        let tty = Event {
            body: Some(Body::Tty(Tty {
                device: "136:2".into(),
                data: vec![b'x'; 4_096].into(),
                ..Tty::default()
            })),
            ..exec.clone()
        };
        let no_body = Event {
            body: None,
            ..exec.clone()
        };
        vec![
            (3, exec.encode_to_vec()),
            (4, tty.encode_to_vec()),
            (5, no_body.encode_to_vec()),
            (6, b"\xff\xff not protobuf".to_vec()),
        ]
    }

    /// The findings of checking `columns` as record `seq`'s stored columns.
    fn findings(seq: u64, event: &[u8], columns: Columns<'_>) -> Vec<Finding> {
        let mut checks = Checks::default();
        let row = ChainRow {
            row: 1,
            seq,
            event,
            hash: &[],
            columns,
        };
        checks.push(HOST, CHAIN, &row);
        checks.finish()
    }

    #[test]
    fn what_ingest_stores_checks_and_any_column_changed_does_not() {
        for (seq, event) in records() {
            let derived = derive(HOST, seq, &event[..]).unwrap();
            let stored = derived.columns();
            assert_eq!(findings(seq, &event, stored), [], "seq {seq}: {derived:?}");
            let changed = [
                Columns {
                    host: "another",
                    ..stored
                },
                Columns {
                    time_unix_nano: stored.time_unix_nano + 1,
                    ..stored
                },
                Columns {
                    kind: "fork",
                    ..stored
                },
                Columns {
                    session: "3d1219c7c4c5:8:1",
                    ..stored
                },
                Columns {
                    sessionid: Some(9),
                    ..stored
                },
                Columns {
                    tty: "4:1",
                    ..stored
                },
                Columns {
                    identity_kind: stored.identity_kind + 1,
                    ..stored
                },
                Columns {
                    identity_name: "mallory",
                    ..stored
                },
                Columns {
                    grant: "g-2",
                    ..stored
                },
                Columns {
                    tty_bytes: stored.tty_bytes + 1,
                    ..stored
                },
            ];
            for columns in changed {
                let found = findings(seq, &event, columns);
                assert_eq!(found.len(), 1, "seq {seq}: {columns:?}");
                assert!(
                    found[0].reason.starts_with("its stored columns differ"),
                    "{found:?}"
                );
            }
        }
    }

    #[test]
    fn a_first_record_that_is_not_a_chain_start_is_found_whatever_its_columns() {
        let (_, event) = records().swap_remove(0);
        assert!(derive(HOST, 0, &event[..]).is_err());
        let found = findings(0, &event, Columns::bare(HOST, Kind::Exec.name()));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .reason
                .starts_with("its bytes are not a record an agent may send: seq 0 is exec"),
            "{found:?}"
        );
    }
}
