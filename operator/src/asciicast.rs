//! `replay --format asciicast`: a session's terminal as an asciicast v2 file
//! (docs.asciinema.org/manual/asciicast/v2), which asciinema and its web player play, and a
//! sidecar naming every stored record it was made from, so the file can be traced back to
//! the chain and checked against it (`recorder export` makes the self-checking bundle).

use std::{io, path::Path, time::Duration};

use proto::{
    json::hex,
    v1::{StoredEvent, event::Body, tty::Direction},
};
use serde_json::{Value, json};

use crate::render::detail;

/// The window size in the header until the recording says otherwise (a `tty_resize` before
/// anything is drawn): the common default.
const WIDTH: u32 = 80;
const HEIGHT: u32 = 24;
/// Placeholders for one record of input typed without echo, at most.
const REDACTED_SHOWN_MAX: u64 = 1 << 20;

/// Text of a byte stream cut into writes at arbitrary points: a UTF-8 sequence split
/// between two writes is held until it is whole; bytes that can never be UTF-8 become
/// U+FFFD, as a terminal shows them.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    let Some(bad) = e.error_len() else {
                        // An incomplete sequence at the end: wait for the next write.
                        rest = after;
                        break;
                    };
                    text.push('\u{fffd}');
                    rest = &after[bad..];
                }
            }
        }
        self.pending = rest.to_vec();
        text
    }

    /// What is left at the end: an incomplete sequence, shown as a terminal would.
    fn finish(&mut self) -> String {
        if std::mem::take(&mut self.pending).is_empty() {
            String::new()
        } else {
            "\u{fffd}".into()
        }
    }
}

/// A cast being written, one terminal record at a time.
pub(crate) struct Cast<'a, W: io::Write> {
    session: &'a str,
    out: W,
    start: Option<u64>,
    /// The window the header gives: the last size set before the first event line.
    size: (u32, u32),
    header_written: bool,
    last: f64,
    output: Utf8Stream,
    input: Utf8Stream,
    records: Vec<Value>,
}

impl<'a, W: io::Write> Cast<'a, W> {
    pub(crate) fn new(session: &'a str, out: W) -> Self {
        Self {
            session,
            out,
            start: None,
            size: (WIDTH, HEIGHT),
            header_written: false,
            last: 0.0,
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
            records: Vec::new(),
        }
    }

    /// Adds a record of the Replay stream: terminal bytes become `o` and `i` events, one for
    /// each write a record joins, at its own time; window sizes the header's size or `r`
    /// events; the rest is passed over.
    pub(crate) fn push(&mut self, stored: &StoredEvent) -> io::Result<()> {
        let Some(event) = &stored.event else {
            return Ok(());
        };
        // (nanoseconds after the record's time, code, text) of each line it makes.
        let lines: Vec<(u64, &str, String)> = match &event.body {
            Some(Body::Tty(tty)) if tty.redacted_bytes > 0 => {
                // Typed without echo: as many placeholders as bytes were typed.
                let shown = tty.redacted_bytes.min(REDACTED_SHOWN_MAX);
                vec![(
                    0,
                    "i",
                    "*".repeat(usize::try_from(shown).unwrap_or_default()),
                )]
            }
            Some(Body::Tty(tty)) => {
                let (code, stream) = if tty.direction() == Direction::Input {
                    ("i", &mut self.input)
                } else {
                    ("o", &mut self.output)
                };
                proto::tty::writes(tty)
                    .into_iter()
                    .map(|(after, bytes)| (after, code, stream.push(bytes)))
                    .collect()
            }
            // A window of no columns or rows is none a player can draw.
            Some(Body::TtyResize(r)) if r.cols > 0 && r.rows > 0 => {
                if self.header_written {
                    vec![(0, "r", format!("{}x{}", r.cols, r.rows))]
                } else {
                    self.size = (r.cols, r.rows);
                    vec![(0, "r", String::new())]
                }
            }
            // How the session ended: a marker, which players let a viewer jump to.
            Some(Body::Kill(_)) => vec![(0, "m", detail(event))],
            _ => return Ok(()),
        };
        let start = *self.start.get_or_insert(event.time_unix_nano);
        self.records.push(json!({
            "chain_id": stored.chain_id, "seq": stored.seq, "hash": hex(&stored.hash),
        }));
        for (after, code, text) in lines {
            // Seconds since the first record, never going back: players need them in order.
            let time = event.time_unix_nano.saturating_add(after);
            let at = Duration::from_nanos(time.saturating_sub(start)).as_secs_f64();
            self.last = f64::max(self.last, at);
            if !text.is_empty() {
                self.header()?;
                writeln!(self.out, "{}", json!([self.last, code, text]))?;
            }
        }
        Ok(())
    }

    /// Writes the header, once: the window size set before the first event line.
    fn header(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.header_written, true) {
            return Ok(());
        }
        let start = self.start.unwrap_or_default();
        writeln!(
            self.out,
            "{}",
            json!({
                "version": 2,
                "width": self.size.0,
                "height": self.size.1,
                "timestamp": start / 1_000_000_000,
                "title": self.session,
            })
        )
    }

    /// Ends the cast and writes its sidecar to `sidecar`.
    pub(crate) fn finish(mut self, sidecar: &Path) -> anyhow::Result<()> {
        self.header()?;
        for (code, tail) in [("o", self.output.finish()), ("i", self.input.finish())] {
            if !tail.is_empty() {
                writeln!(self.out, "{}", json!([self.last, code, tail]))?;
            }
        }
        self.out.flush()?;
        let mut chains: Vec<Value> = Vec::new();
        for r in &self.records {
            match chains.last_mut() {
                Some(c) if c["chain_id"] == r["chain_id"] => c["last_seq"] = r["seq"].clone(),
                _ => chains.push(json!({
                    "chain_id": r["chain_id"], "first_seq": r["seq"], "last_seq": r["seq"],
                })),
            }
        }
        let sidecar_json = json!({
            "session": self.session,
            "format": "asciicast v2",
            "note": "the cast is made from exactly these stored records, in this order; \
                     `recorder export --session` gives their bytes with inclusion proofs",
            "chains": chains,
            "records": self.records,
        });
        std::fs::write(sidecar, format!("{sidecar_json:#}\n"))
            .map_err(|e| anyhow::anyhow!("writing the sidecar {}: {e}", sidecar.display()))
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::{Event, Kill, Tty, TtyResize};

    use super::*;

    fn stored(seq: u64, time_unix_nano: u64, body: Body) -> StoredEvent {
        StoredEvent {
            chain_id: "c".into(),
            seq,
            event: Some(Event {
                time_unix_nano,
                body: Some(body),
                ..Event::default()
            }),
            ..StoredEvent::default()
        }
    }

    fn resize(cols: u32, rows: u32) -> Body {
        Body::TtyResize(TtyResize {
            device: "136:1".into(),
            rows,
            cols,
        })
    }

    fn output(text: &str) -> Body {
        Body::Tty(Tty {
            direction: Direction::Output.into(),
            device: "136:1".into(),
            data: text.as_bytes().to_vec().into(),
            ..Tty::default()
        })
    }

    /// The header has the last size set before the first output (a zero size is none), a
    /// later size is an `r` event in its place, a kill is a marker, never before what came
    /// before it, and every record used is in the sidecar.
    #[test]
    fn window_sizes_shape_the_header_and_become_resize_events() {
        let dir = std::env::temp_dir().join(format!("cast-sizes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sidecar = dir.join("s.cast.json");
        let mut out = Vec::new();
        let mut cast = Cast::new("h:1:2", &mut out);
        let records = [
            resize(80, 24),
            resize(100, 30),
            resize(0, 0),
            output("ready\n"),
            resize(120, 40),
            output("done\n"),
        ];
        for (seq, body) in records.into_iter().enumerate() {
            let seq = seq as u64;
            cast.push(&stored(seq, 1_000_000_000 * (seq + 1), body))
                .unwrap();
        }
        // The kill the collector sends last, stored before the last output was.
        let kill = Body::Kill(Kill {
            grant_id: "g-1".into(),
            reason: "expired".into(),
            pids: vec![7],
            by: "agent".into(),
            ..Kill::default()
        });
        cast.push(&stored(6, 4_500_000_000, kill)).unwrap();
        cast.finish(&sidecar).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            (&lines[0]["width"], &lines[0]["height"]),
            (&json!(100), &json!(30))
        );
        assert_eq!(lines[0]["timestamp"], 1);
        assert_eq!(
            lines[1..],
            [
                json!([3.0, "o", "ready\n"]),
                json!([4.0, "r", "120x40"]),
                json!([5.0, "o", "done\n"]),
                json!([5.0, "m", "KILLED by agent pids [7]: expired grant g-1"])
            ]
        );
        let sidecar: Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
        let seqs: Vec<u64> = sidecar["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [0, 1, 3, 4, 5, 6]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn utf8_split_between_writes_is_joined_and_garbage_is_replaced() {
        let mut s = Utf8Stream::default();
        let e_acute = "é".as_bytes();
        assert_eq!(s.push(&[b'a', e_acute[0]]), "a");
        assert_eq!(s.push(&[e_acute[1], b'b']), "éb");
        assert_eq!(s.push(&[0xff, b'c']), "\u{fffd}c");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.finish(), "");
    }

    /// A record that joins writes gives a line for each, at that write's own time, in
    /// both directions.
    #[test]
    fn each_joined_write_is_a_line_at_its_own_time() {
        let joined = |direction: Direction| {
            Body::Tty(Tty {
                direction: direction.into(),
                device: "136:1".into(),
                data: b"abcdef".to_vec().into(),
                writes: 3,
                span_nanos: 500_000_000,
                write_bytes: vec![2, 3, 1],
                write_gap_nanos: vec![250_000_000, 250_000_000],
                ..Tty::default()
            })
        };
        let mut out = Vec::new();
        let mut cast = Cast::new("h:1:2", &mut out);
        cast.push(&stored(0, 1_000_000_000, joined(Direction::Output)))
            .unwrap();
        cast.push(&stored(1, 2_000_000_000, joined(Direction::Input)))
            .unwrap();
        let sidecar = std::env::temp_dir().join(format!("cast-parts-{}.json", std::process::id()));
        cast.finish(&sidecar).unwrap();
        std::fs::remove_file(&sidecar).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                json!([0.0, "o", "ab"]),
                json!([0.25, "o", "cde"]),
                json!([0.5, "o", "f"]),
                json!([1.0, "i", "ab"]),
                json!([1.25, "i", "cde"]),
                json!([1.5, "i", "f"]),
            ]
        );
    }
}
