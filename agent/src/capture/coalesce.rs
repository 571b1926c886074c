//! Small terminal writes, joined. A program that writes its output a few bytes at a time
//! makes a kernel record per write, and each record costs the agent and the collector the
//! same work whatever its size: chaining, spooling, shipping, storing (docs/capture.md put
//! it at about 8 µs of CPU a 64-byte write). Records that follow each other in a drained
//! batch, of one task writing to one terminal through one descriptor, with nothing between
//! them, become one record of their bytes in order: up to `CHUNK` bytes, and `SPAN_MAX`
//! from the first to the last. Another writer, another terminal, any other record, a gap,
//! or the end of the batch (the reader's drain tick) ends a join; so does anything that
//! changed about the task (its credentials, its audit session, its cgroup, its name), since
//! the kernel reports who acted on every record. Input typed without echo joins only other
//! such input, its counts added up.

use agent_common::tty::CHUNK;
use bytes::BytesMut;

use super::event::{Body, Event};

/// The longest time a joined record spans: replay shows its bytes at the first write's
/// time, so none is shown more than this before it was written.
const SPAN_MAX: u64 = 10_000_000;

/// `events` (one drained batch, in the kernel's order) with each run of joinable terminal
/// writes made one record.
pub fn join(events: Vec<Event>) -> Vec<Event> {
    let mut out = Vec::with_capacity(events.len());
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

/// A terminal record being joined: the first record, whose body becomes the joined one.
struct Run {
    first: Event,
    /// The bytes once a second record joined; until then, the first's own view.
    joined: Option<BytesMut>,
    /// Where in its syscall's bytes a continuation of the last record would start.
    next_offset: u64,
}

impl Run {
    /// Joins `event` if it continues this run: the same task, terminal, descriptor and
    /// direction, echo the same, its bytes where a new write or the last one's next
    /// piece starts, within the bounds. Otherwise `event` is given back.
    fn add(&mut self, event: Event) -> Option<Event> {
        let Event {
            ktime_ns,
            process,
            body,
        } = event;
        let first_ns = self.first.ktime_ns;
        let Body::Tty {
            input,
            device,
            fd,
            data: first_data,
            redacted_bytes: redacted_sum,
            writes,
            span_ns,
            ..
        } = &mut self.first.body
        else {
            return Some(Event {
                ktime_ns,
                process,
                body,
            });
        };
        let len = self.joined.as_ref().map_or(first_data.len(), BytesMut::len);
        match body {
            Body::Tty {
                input: input2,
                device: device2,
                fd: fd2,
                offset,
                data,
                redacted_bytes,
                ..
            } if input2 == *input
                && device2 == *device
                && fd2 == *fd
                && (redacted_bytes > 0) == (*redacted_sum > 0)
                && (offset == 0 || offset == self.next_offset)
                && len + data.len() <= CHUNK
                // Not before the last one joined, and within the span.
                && ktime_ns >= first_ns.saturating_add(*span_ns)
                && ktime_ns - first_ns <= SPAN_MAX
                && process.is_some()
                && process == self.first.process =>
            {
                self.joined
                    .get_or_insert_with(|| {
                        let mut joined = BytesMut::with_capacity(CHUNK);
                        joined.extend_from_slice(first_data);
                        joined
                    })
                    .extend_from_slice(&data);
                *redacted_sum = redacted_sum.saturating_add(redacted_bytes);
                *writes = writes.saturating_add(1);
                *span_ns = ktime_ns - first_ns;
                self.next_offset = offset.saturating_add(data.len() as u64);
                None
            }
            body => Some(Event {
                ktime_ns,
                process,
                body,
            }),
        }
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
                writes: 1,
                span_ns: 0,
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

    #[test]
    fn one_tasks_writes_in_a_row_become_one_record_in_order() {
        let out = join(vec![
            write(5, 100, 0, b"ab"),
            write(5, 150, 0, b"cd"),
            write(5, 400, 0, b"e"),
        ]);
        assert_eq!(summary(&out), [(5, b"abcde".to_vec(), 0, 3, 300)]);
        assert_eq!(out[0].ktime_ns, 100, "the first write's time");
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
        let gap = Event {
            ktime_ns: 5,
            process: None,
            body: Body::Gap {
                source: GapSource::Kernel,
                lost_kind: 0,
                records: 1,
                bytes: 1,
            },
        };
        let out = join(vec![
            write(5, 1, 0, b"$"),
            root,
            write(5, 3, 0, b"x"),
            other_fd,
            gap,
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

    #[test]
    fn input_without_echo_joins_only_its_like_and_keeps_its_count() {
        let mut typed = write(5, 4, 0, b"\r");
        if let Body::Tty { input, .. } = &mut typed.body {
            *input = true;
        }
        let out = join(vec![
            typed_without_echo(5, 1, 3),
            typed_without_echo(5, 2, 4),
            typed,
        ]);
        assert_eq!(
            summary(&out),
            [(5, Vec::new(), 7, 2, 1), (5, b"\r".to_vec(), 0, 1, 0)]
        );
    }
}
