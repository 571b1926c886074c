//! `replay`: a session's terminal as the user saw it. One terminal by default (the login
//! terminal: sudo, tmux and `script` run inner terminals whose output the login terminal
//! shows again), with the recorded timing to the nanosecond, divided by `--speed`, and idle
//! stretches capped at `--max-wait`. Typed input is never played as output; `--input` shows
//! it inline, escaped and marked.

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
    render::{escape_bytes, redacted},
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
    let start = Instant::now();
    // Where the replay stands on the recording's own clock, scaled and capped.
    let mut played = Duration::ZERO;
    let mut previous: Option<u64> = None;
    while let Some(stored) = stream.message().await? {
        let Some(event) = stored.event else { continue };
        let Some(Body::Tty(tty)) = &event.body else {
            continue;
        };
        if let Some(prev) = previous
            && let Some(speed) = replay.speed.get()
        {
            let gap = Duration::from_nanos(event.time_unix_nano.saturating_sub(prev));
            played += gap.div_f64(speed).min(replay.max_wait);
            if let Some(wait) = played.checked_sub(start.elapsed()) {
                out.flush()?;
                tokio::time::sleep(wait).await;
            }
        }
        previous = Some(event.time_unix_nano);
        // Pushed by another process (`TIOCSTI`), not typed: said so.
        let how = if tty.injected { "injected" } else { "typed" };
        if tty.redacted_bytes > 0 {
            write!(
                out,
                "\u{27e6}{how}: {}\u{27e7}",
                redacted(tty.redacted_bytes)
            )?;
        } else if tty.direction() == Direction::Input {
            write!(out, "\u{27e6}{how}: {}\u{27e7}", escape_bytes(&tty.data))?;
        } else {
            out.write_all(&tty.data)?;
        }
    }
    out.flush()?;
    Ok(())
}
