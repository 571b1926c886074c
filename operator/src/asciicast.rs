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

/// The recorder does not capture window sizes yet: the header says the common default.
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
            last: 0.0,
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
            records: Vec::new(),
        }
    }

    /// Adds a record of the Replay stream: terminal bytes become events, the rest is passed
    /// over.
    pub(crate) fn push(&mut self, stored: &StoredEvent) -> io::Result<()> {
        let Some(event) = &stored.event else {
            return Ok(());
        };
        let Some(Body::Tty(tty)) = &event.body else {
            return Ok(());
        };
        let start = if let Some(start) = self.start {
            start
        } else {
            self.header(event.time_unix_nano)?;
            event.time_unix_nano
        };
        self.records.push(json!({
            "chain_id": stored.chain_id, "seq": stored.seq, "hash": hex(&stored.hash),
        }));
        // Seconds since the first record, never going back: players need them in order.
        let at = Duration::from_nanos(event.time_unix_nano.saturating_sub(start)).as_secs_f64();
        self.last = f64::max(self.last, at);
        let (code, text) = if tty.redacted_bytes > 0 {
            // Typed without echo: as many placeholders as bytes were typed.
            let shown = tty.redacted_bytes.min(REDACTED_SHOWN_MAX);
            ("i", "*".repeat(usize::try_from(shown).unwrap_or_default()))
        } else if tty.direction() == Direction::Input {
            ("i", self.input.push(&tty.data))
        } else {
            ("o", self.output.push(&tty.data))
        };
        if !text.is_empty() {
            writeln!(self.out, "{}", json!([self.last, code, text]))?;
        }
        Ok(())
    }

    fn header(&mut self, start: u64) -> io::Result<()> {
        self.start = Some(start);
        writeln!(
            self.out,
            "{}",
            json!({
                "version": 2,
                "width": WIDTH,
                "height": HEIGHT,
                "timestamp": start / 1_000_000_000,
                "title": self.session,
            })
        )
    }

    /// Ends the cast and writes its sidecar to `sidecar`.
    pub(crate) fn finish(mut self, sidecar: &Path) -> anyhow::Result<()> {
        if self.start.is_none() {
            self.header(0)?;
        }
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
    use super::*;

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
}
