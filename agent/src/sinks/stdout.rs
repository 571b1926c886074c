//! `--stdout`: one JSON object per event per line, in the schema every part of the system
//! writes (`proto::json`, docs/events.md). For operators and tests; the chain is a separate
//! sink.

use std::io::{self, BufWriter, Write as _};

use proto::{json, v1};

pub struct Stdout {
    out: BufWriter<io::Stdout>,
    host: String,
}

impl Stdout {
    #[must_use]
    pub fn new(host: String) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, io::stdout()),
            host,
        }
    }

    /// Writes a batch and flushes it.
    pub fn process(&mut self, events: &[v1::Event]) -> io::Result<()> {
        let context = json::Context {
            host: Some(&self.host),
            ..json::Context::default()
        };
        for event in events {
            json::write_line(&mut self.out, event, context)?;
        }
        self.out.flush()
    }
}
