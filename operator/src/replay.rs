//! `replay`: a session's terminal as the user saw it. One terminal by default (the login
//! terminal: sudo, tmux and `script` run inner terminals whose output the login terminal
//! shows again), with the recorded timing to the nanosecond (each write a record joins at its
//! own time), divided by `--speed`, and idle stretches capped at `--max-wait`. Typed input
//! is never played as output; `--input` shows it inline, escaped and marked, a mark a record
//! at its first keystroke's time. A session a kill ended ends with the kill, marked: the
//! kill is filed under the session, not under a terminal.

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use proto::v1::{ReplayRequest, event::Body, query_client::QueryClient, tty::Direction};
use tonic::transport::Channel;

use crate::{
    asciicast::Cast,
    cli::{Replay, ReplayFormat},
    render::{detail, escape_bytes, redacted},
};

pub async fn play(
    client: &mut QueryClient<Channel>,
    replay: Replay,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let cast = replay.format == ReplayFormat::Asciicast;
    let mut stream = client
        .replay(ReplayRequest {
            session: replay.session.clone(),
            tty: replay.tty.unwrap_or_default(),
            all_ttys: replay.all_ttys,
            input: replay.input || cast,
        })
        .await?
        .into_inner();
    if cast {
        let sidecar = replay.sidecar.unwrap_or_else(|| {
            PathBuf::from(format!("{}.cast.json", replay.session.replace(':', "_")))
        });
        let mut cast = Cast::new(&replay.session, out);
        while let Some(stored) = stream.message().await? {
            cast.push(&stored)?;
        }
        cast.finish(&sidecar)?;
        eprintln!("the sidecar is {}", sidecar.display());
        return Ok(());
    }
    let mut clock = Clock {
        start: Instant::now(),
        played: Duration::ZERO,
        previous: None,
        speed: replay.speed.get(),
        max_wait: replay.max_wait,
    };
    while let Some(stored) = stream.message().await? {
        let Some(event) = stored.event else { continue };
        let tty = match &event.body {
            Some(Body::Tty(tty)) => tty,
            // The collector sends the session's kills after its terminal.
            Some(Body::Kill(_)) => {
                clock.reach(event.time_unix_nano, out).await?;
                write!(out, "\r\n\u{27e6}{}\u{27e7}\r\n", detail(&event))?;
                continue;
            }
            _ => continue,
        };
        // Pushed by another process (`TIOCSTI`), not typed: said so.
        let how = if tty.injected { "injected" } else { "typed" };
        if tty.redacted_bytes > 0 || tty.direction() == Direction::Input {
            // Typed input is a note beside the output, one for the record: a paste cut into
            // a mark a keystroke would hide what was typed.
            clock.reach(event.time_unix_nano, out).await?;
            let typed = if tty.redacted_bytes > 0 {
                redacted(tty.redacted_bytes)
            } else {
                escape_bytes(&tty.data)
            };
            write!(out, "\u{27e6}{how}: {typed}\u{27e7}")?;
        } else {
            for (after, bytes) in proto::tty::writes(tty) {
                clock
                    .reach(event.time_unix_nano.saturating_add(after), out)
                    .await?;
                out.write_all(bytes)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Where the replay stands on the recording's own clock, scaled and capped.
struct Clock {
    start: Instant,
    played: Duration,
    previous: Option<u64>,
    /// `None`: no waiting.
    speed: Option<f64>,
    max_wait: Duration,
}

impl Clock {
    /// Waits until the recording's `time` (Unix nanoseconds) is due, after flushing what
    /// was written before it.
    async fn reach(&mut self, time: u64, out: &mut impl io::Write) -> io::Result<()> {
        if let Some(prev) = self.previous.replace(time)
            && let Some(speed) = self.speed
        {
            let gap = Duration::from_nanos(time.saturating_sub(prev));
            self.played += gap.div_f64(speed).min(self.max_wait);
            if let Some(wait) = self.played.checked_sub(self.start.elapsed()) {
                out.flush()?;
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }
}
