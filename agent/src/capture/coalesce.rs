//! Small terminal writes, joined. A program that writes its output a few bytes at a time
//! makes a kernel record per write, and each record costs the agent and the collector the
//! same work whatever its size: chaining, spooling, shipping, storing (docs/capture.md put
//! it at about 8 µs of CPU a 64-byte write). Records that follow each other in a drained
//! batch, of one task writing to one terminal through one descriptor, with nothing between
//! them, become one record of their bytes in order: up to `CHUNK` bytes, and `SPAN_MAX`
//! from the first to the last. Another writer, another terminal, any other record, a gap,
//! or the end of the batch (the reader's drain tick) ends a join; so does anything that
//! changed about the task (its credentials, its audit session, its cgroup, its name), since
//! the kernel reports who acted on every record.
//!
//! Input typed without echo (a password: only counted, never read) is held instead, across
//! batches and other tasks' records, and its keystrokes are added into one record: until
//! anything else is written on its terminal (output, input with echo, another writer's
//! input), a gap, its writer's exit, or `HOLD_INPUT`. A record a keystroke would give away
//! the time of every keystroke, and the intervals between keystrokes are what
//! keystroke-timing attacks recover typed text from. The held record is chained when it is
//! released, after records that came meanwhile; its time is still its first keystroke's.

use std::time::Duration;

use agent_common::tty::CHUNK;
use bytes::BytesMut;
use tokio::time::Instant;

use super::event::{Body, Event};

/// The longest time a joined record of output or echoed input spans. Each write keeps its
/// own time in the record (`write_gap_ns`), but searches and the store's time column know
/// the record by its first write's: none is dated more than this before it was written.
const SPAN_MAX: u64 = 10_000_000;
/// The longest input typed without echo is held, from its first keystroke: a prompt
/// answered within it is one record, whatever the pace of typing.
pub const HOLD_INPUT: Duration = Duration::from_secs(30);
/// Records of input typed without echo held at once, at most one a terminal; past it, such
/// input is passed on as it comes.
const HELD_MAX: usize = 1024;

/// The joining stage's state: input typed without echo being held, oldest first.
#[derive(Default)]
pub struct Coalesce {
    held: Vec<Held>,
}

struct Held {
    since: Instant,
    event: Event,
}

impl Coalesce {
    /// `events` (one drained batch, in the kernel's order) with each run of joinable terminal
    /// writes made one record and input typed without echo held; first, whatever was held
    /// for `HOLD_INPUT` at `now`.
    pub fn process(&mut self, events: Vec<Event>, now: Instant) -> Vec<Event> {
        let mut out = self.release(|h| now.duration_since(h.since) >= HOLD_INPUT);
        out.reserve(events.len());
        let mut run: Option<Run> = None;
        for event in events {
            let event = match &mut run {
                Some(r) => match r.add(event) {
                    None => continue,
                    Some(event) => event,
                },
                None => event,
            };
            out.extend(run.take().map(Run::finish));
            if unechoed(&event) {
                self.hold(event, now, &mut out);
                continue;
            }
            out.extend(self.released_by(&event));
            match &event.body {
                Body::Tty { offset, data, .. } => {
                    let next_offset = offset.saturating_add(data.len() as u64);
                    run = Some(Run {
                        first: event,
                        joined: None,
                        next_offset,
                    });
                }
                _ => out.push(event),
            }
        }
        out.extend(run.map(Run::finish));
        out
    }

    /// Whether input is held: the stage then wakes by itself even without batches.
    #[must_use]
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Everything held, oldest first, as at a stop.
    pub fn drain(&mut self) -> Vec<Event> {
        self.held.drain(..).map(|h| h.event).collect()
    }

    fn hold(&mut self, event: Event, now: Instant, out: &mut Vec<Event>) {
        if let Some(held) = self.held.iter_mut().find(|h| h.takes(&event)) {
            held.add(&event);
            return;
        }
        // What another writer or descriptor typed on this terminal goes first: a
        // terminal's input stays in order.
        out.extend(self.release(|h| same_terminal(&h.event, &event)));
        if self.held.len() >= HELD_MAX {
            out.push(event);
            return;
        }
        self.held.push(Held { since: now, event });
    }

    /// What `event` ends the holding of: anything else on a held record's terminal, a gap
    /// (keystrokes may be lost in it: the count before it is kept apart), and the exit of
    /// a held record's writer.
    fn released_by(&mut self, event: &Event) -> Vec<Event> {
        match (&event.body, &event.process) {
            (Body::Tty { .. }, _) => self.release(|h| same_terminal(&h.event, event)),
            (Body::Gap { .. }, _) => self.release(|_| true),
            (Body::Exit { .. }, Some(exited)) => self.release(|h| {
                h.event
                    .process
                    .as_ref()
                    .is_some_and(|p| p.tgid == exited.tgid)
            }),
            _ => Vec::new(),
        }
    }

    /// The held records `which` picks, oldest first, no longer held.
    fn release(&mut self, which: impl Fn(&Held) -> bool) -> Vec<Event> {
        // Looked for first: a terminal's output flood passes here record by record while
        // a prompt elsewhere waits.
        if !self.held.iter().any(&which) {
            return Vec::new();
        }
        let (gone, kept): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(which);
        self.held = kept;
        gone.into_iter().map(|h| h.event).collect()
    }
}

fn unechoed(event: &Event) -> bool {
    matches!(event.body, Body::Tty { redacted_bytes, .. } if redacted_bytes > 0)
}

/// Whether `a` and `b` are records of one terminal.
fn same_terminal(a: &Event, b: &Event) -> bool {
    let terminal = |e: &Event| match e.body {
        Body::Tty { device, .. } => device,
        _ => None,
    };
    terminal(a).is_some() && terminal(a) == terminal(b)
}

/// Whether terminal record `event` could be more of terminal record `first` (joined so far):
/// the same task, terminal, descriptor and direction, pushed by `TIOCSTI` or not alike,
/// and not before the last record joined.
fn continues(first: &Event, event: &Event) -> bool {
    match (&first.body, &event.body) {
        (
            Body::Tty {
                input,
                device,
                fd,
                injected,
                span_ns,
                ..
            },
            Body::Tty {
                input: input2,
                device: device2,
                fd: fd2,
                injected: injected2,
                ..
            },
        ) => {
            input == input2
                && device == device2
                && fd == fd2
                && injected == injected2
                && event.ktime_ns >= first.ktime_ns.saturating_add(*span_ns)
                && event.process.is_some()
                && event.process == first.process
        }
        _ => false,
    }
}

impl Held {
    /// Whether `event`, typed without echo, is more of this record.
    fn takes(&self, event: &Event) -> bool {
        continues(&self.event, event)
    }

    fn add(&mut self, event: &Event) {
        let first_ns = self.event.ktime_ns;
        if let (
            Body::Tty {
                redacted_bytes,
                writes,
                span_ns,
                ..
            },
            Body::Tty {
                redacted_bytes: more,
                writes: more_writes,
                ..
            },
        ) = (&mut self.event.body, &event.body)
        {
            *redacted_bytes = redacted_bytes.saturating_add(*more);
            *writes = writes.saturating_add(*more_writes);
            *span_ns = event.ktime_ns - first_ns;
        }
    }
}

/// A terminal record being joined: the first record, whose body becomes the joined one.
struct Run {
    first: Event,
    /// The bytes once a second record joined; until then, the first's own view.
    joined: Option<BytesMut>,
    /// Where in its syscall's bytes a continuation of the last record would start.
    next_offset: u64,
}

impl Run {
    /// Joins `event` if it continues this run (`continues`), its bytes where a new write or
    /// the last one's next piece starts, within the bounds. Otherwise `event` is given back.
    /// Input typed without echo never joins: it is held (`Coalesce::hold`).
    fn add(&mut self, event: Event) -> Option<Event> {
        if !continues(&self.first, &event) {
            return Some(event);
        }
        let first_ns = self.first.ktime_ns;
        let (
            Body::Tty {
                data: first_data,
                writes,
                span_ns,
                write_bytes,
                write_gap_ns,
                ..
            },
            Body::Tty {
                offset,
                data,
                redacted_bytes: 0,
                ..
            },
        ) = (&mut self.first.body, &event.body)
        else {
            return Some(event);
        };
        let len = self.joined.as_ref().map_or(first_data.len(), BytesMut::len);
        if !((*offset == 0 || *offset == self.next_offset)
            && len + data.len() <= CHUNK
            && event.ktime_ns - first_ns <= SPAN_MAX)
        {
            return Some(event);
        }
        self.joined
            .get_or_insert_with(|| {
                let mut joined = BytesMut::with_capacity(CHUNK);
                joined.extend_from_slice(first_data);
                joined
            })
            .extend_from_slice(data);
        *writes = writes.saturating_add(1);
        // Each record's bytes and time, kept so that replay shows each where and when it
        // was written. The sizes fit: a joined record holds at most CHUNK bytes.
        if write_bytes.is_empty() {
            write_bytes.push(len as u32);
        }
        write_bytes.push(data.len() as u32);
        let after = event.ktime_ns - first_ns;
        write_gap_ns.push(after - *span_ns);
        *span_ns = after;
        self.next_offset = offset.saturating_add(data.len() as u64);
        None
    }

    fn finish(mut self) -> Event {
        if let (Some(joined), Body::Tty { data, .. }) = (self.joined, &mut self.first.body) {
            *data = joined.freeze();
        }
        self.first
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::capture::event::{Device, GapSource, Process};

    fn process(pid: u32) -> Process {
        Process {
            pid,
            tgid: pid,
            ppid: 1,
            uid: 1000,
            euid: 1000,
            gid: 1000,
            loginuid: Some(1000),
            sessionid: Some(3),
            cgroup_id: 7,
            tty: Some(Device {
                major: 136,
                minor: 0,
            }),
            comm: "sh".into(),
        }
    }

    fn write(pid: u32, ktime_ns: u64, offset: u64, data: &[u8]) -> Event {
        Event {
            ktime_ns,
            process: Some(process(pid)),
            body: Body::Tty {
                input: false,
                device: Some(Device {
                    major: 136,
                    minor: 0,
                }),
                fd: 1,
                offset,
                data: Bytes::copy_from_slice(data),
                redacted_bytes: 0,
                injected: None,
                writes: 1,
                span_ns: 0,
                write_bytes: Vec::new(),
                write_gap_ns: Vec::new(),
            },
        }
    }

    /// One batch through a fresh stage, with whatever it holds after.
    fn join(events: Vec<Event>) -> Vec<Event> {
        let mut coalesce = Coalesce::default();
        let mut out = coalesce.process(events, Instant::now());
        out.extend(coalesce.drain());
        out
    }

    fn gap(ktime_ns: u64) -> Event {
        Event {
            ktime_ns,
            process: None,
            body: Body::Gap {
                source: GapSource::Kernel,
                lost_kind: 0,
                records: 1,
                bytes: 1,
            },
        }
    }

    fn typed_without_echo(pid: u32, ktime_ns: u64, count: u64) -> Event {
        let mut event = write(pid, ktime_ns, 0, b"");
        if let Body::Tty {
            input,
            redacted_bytes,
            ..
        } = &mut event.body
        {
            *input = true;
            *redacted_bytes = count;
        }
        event
    }

    /// (pid, data, redacted count, writes, span) of each record.
    fn summary(events: &[Event]) -> Vec<(u32, Vec<u8>, u64, u32, u64)> {
        events
            .iter()
            .map(|e| match &e.body {
                Body::Tty {
                    data,
                    redacted_bytes,
                    writes,
                    span_ns,
                    ..
                } => (
                    e.process.as_ref().map_or(0, |p| p.pid),
                    data.to_vec(),
                    *redacted_bytes,
                    *writes,
                    *span_ns,
                ),
                _ => (0, b"other".to_vec(), 0, 0, 0),
            })
            .collect()
    }

    /// (bytes of each write, nanoseconds from each write to the next) of each record, all of
    /// them terminal records.
    fn write_times(events: &[Event]) -> Vec<(Vec<u32>, Vec<u64>)> {
        events
            .iter()
            .map(|e| match &e.body {
                Body::Tty {
                    write_bytes,
                    write_gap_ns,
                    ..
                } => (write_bytes.clone(), write_gap_ns.clone()),
                other => panic!("not a terminal record: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_tasks_writes_in_a_row_become_one_record_in_order() {
        let out = join(vec![
            write(5, 100, 0, b"ab"),
            write(5, 150, 0, b"cd"),
            write(5, 400, 0, b"e"),
        ]);
        assert_eq!(summary(&out), [(5, b"abcde".to_vec(), 0, 3, 300)]);
        assert_eq!(out[0].ktime_ns, 100, "the first write's time");
        assert_eq!(
            write_times(&out),
            [(vec![2, 2, 1], vec![50, 250])],
            "each write's bytes, and the time from each to the next"
        );
    }

    #[test]
    fn records_not_joined_and_input_typed_without_echo_keep_no_write_times() {
        let out = join(vec![
            write(5, 1, 0, b"a"),
            write(6, 2, 0, b"b"),
            typed_without_echo(7, 3, 1),
            typed_without_echo(7, 4, 1),
        ]);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(summary(&out)[2], (7, Vec::new(), 2, 2, 1));
        assert_eq!(write_times(&out), vec![(Vec::new(), Vec::new()); 3]);
    }

    #[test]
    fn interleaved_writers_keep_their_order_and_their_own_bytes() {
        let out = join(vec![
            write(5, 1, 0, b"a1"),
            write(5, 2, 0, b"a2"),
            write(6, 3, 0, b"b1"),
            write(5, 4, 0, b"a3"),
            write(6, 5, 0, b"b2"),
            write(6, 6, 0, b"b3"),
        ]);
        assert_eq!(
            summary(&out),
            [
                (5, b"a1a2".to_vec(), 0, 2, 1),
                (6, b"b1".to_vec(), 0, 1, 0),
                (5, b"a3".to_vec(), 0, 1, 0),
                (6, b"b2b3".to_vec(), 0, 2, 1),
            ]
        );
    }

    #[test]
    fn a_changed_task_another_record_or_a_bound_ends_a_join() {
        let mut root = write(5, 2, 0, b"#");
        if let Some(p) = &mut root.process {
            p.euid = 0;
        }
        let mut other_fd = write(5, 4, 0, b"2");
        if let Body::Tty { fd, .. } = &mut other_fd.body {
            *fd = 2;
        }
        let out = join(vec![
            write(5, 1, 0, b"$"),
            root,
            write(5, 3, 0, b"x"),
            other_fd,
            gap(5),
            write(5, 6, 0, b"y"),
            write(5, 6 + SPAN_MAX + 1, 0, b"late"),
            write(5, 6 + SPAN_MAX + 2, 0, &[b'z'; CHUNK - 4]),
            write(5, 6 + SPAN_MAX + 3, 0, b"!"),
        ]);
        let pieces: Vec<Vec<u8>> = summary(&out).into_iter().map(|s| s.1).collect();
        let mut full = b"late".to_vec();
        full.extend([b'z'; CHUNK - 4]);
        assert_eq!(
            pieces,
            [
                b"$".to_vec(),
                b"#".to_vec(),
                b"x".to_vec(),
                b"2".to_vec(),
                b"other".to_vec(),
                b"y".to_vec(),
                full,
                b"!".to_vec(),
            ]
        );
    }

    #[test]
    fn a_writes_pieces_join_only_in_their_order() {
        let out = join(vec![
            write(5, 1, 0, b"abc"),
            write(5, 2, 3, b"def"),
            // Not where the last piece ended: something of that write is missing.
            write(5, 3, 9, b"jkl"),
            write(5, 4, 0, b"new"),
        ]);
        assert_eq!(
            summary(&out),
            [
                (5, b"abcdef".to_vec(), 0, 2, 1),
                (5, b"jklnew".to_vec(), 0, 2, 1),
            ]
        );
    }

    /// Input typed without echo is held across batches and other tasks' records, whatever
    /// the pace of typing, and its keystrokes make one record, at the first one's time,
    /// released by the next write on its terminal.
    #[test]
    fn keystrokes_typed_without_echo_are_one_record_whatever_their_pace() {
        let mut coalesce = Coalesce::default();
        let now = Instant::now();
        let mut elsewhere = write(6, 3, 0, b"elsewhere");
        if let Body::Tty { device, .. } = &mut elsewhere.body {
            *device = Some(Device {
                major: 136,
                minor: 9,
            });
        }
        let mut out = coalesce.process(
            vec![typed_without_echo(5, 1, 1), typed_without_echo(5, 2, 1)],
            now,
        );
        out.extend(coalesce.process(
            vec![elsewhere, typed_without_echo(5, 400_000_000, 2)],
            now + Duration::from_millis(400),
        ));
        assert!(coalesce.holding());
        out.extend(coalesce.process(
            vec![
                typed_without_echo(5, 450_000_000, 1),
                write(7, 500_000_000, 0, b"\r\n"),
            ],
            now + Duration::from_millis(500),
        ));
        assert!(!coalesce.holding());
        assert_eq!(
            summary(&out),
            [
                (6, b"elsewhere".to_vec(), 0, 1, 0),
                (5, Vec::new(), 5, 4, 449_999_999),
                (7, b"\r\n".to_vec(), 0, 1, 0),
            ]
        );
        assert_eq!(out[1].ktime_ns, 1, "the first keystroke's time");
    }

    #[test]
    fn held_input_is_released_by_a_gap_its_writers_exit_another_writer_or_time() {
        let now = Instant::now();
        let mut coalesce = Coalesce::default();
        // The count before a gap is kept apart from what follows it.
        let out = coalesce.process(
            vec![
                typed_without_echo(5, 1, 2),
                gap(2),
                typed_without_echo(5, 3, 1),
            ],
            now,
        );
        assert_eq!(
            summary(&out),
            [(5, Vec::new(), 2, 1, 0), (0, b"other".to_vec(), 0, 0, 0)]
        );
        let exit = Event {
            ktime_ns: 4,
            process: Some(process(5)),
            body: Body::Exit {
                exit_code: 0,
                filename: None,
            },
        };
        let out = coalesce.process(vec![exit], now);
        assert_eq!(
            summary(&out),
            [(5, Vec::new(), 1, 1, 0), (0, b"other".to_vec(), 0, 0, 0)]
        );
        // Another writer on the terminal: what the first typed goes first.
        let out = coalesce.process(
            vec![typed_without_echo(5, 5, 1), typed_without_echo(6, 6, 3)],
            now,
        );
        assert_eq!(summary(&out), [(5, Vec::new(), 1, 1, 0)]);
        let almost = now + HOLD_INPUT - Duration::from_millis(1);
        assert!(coalesce.process(Vec::new(), almost).is_empty());
        let out = coalesce.process(Vec::new(), now + HOLD_INPUT);
        assert_eq!(summary(&out), [(6, Vec::new(), 3, 1, 0)]);
        assert!(!coalesce.holding());
    }
}
