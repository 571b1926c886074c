//! The operators' client of the collector: `tail`, `search`, `sessions`, `replay` and
//! `verify` over its Query service, `grant` and `review` over its Grants service, as readable
//! text or JSON lines. `cargo xtask` runs it.

pub mod cli;
pub mod grant;
pub mod render;

use std::{
    io::{self, Write as _},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use proto::v1::{
    ReplayRequest, SearchRequest, SessionsRequest, StoredEvent, TailRequest, VerifyRequest,
    event::Body, grants_client::GrantsClient, query_client::QueryClient, tty::Direction,
};
use tonic::transport::Channel;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command(cli))
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url} is not a collector URL (http://HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the collector at {url}"))
}

/// Unix nanoseconds `ago` before now.
fn since(ago: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(ago);
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

fn now() -> u64 {
    since(Duration::ZERO)
}

async fn command(cli: Cli) -> anyhow::Result<()> {
    let channel = connect(&cli.collector).await?;
    let mut client = QueryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Tail {
            filter,
            since: ago,
            json,
        } => {
            let mut stream = client
                .tail(TailRequest {
                    filter: Some(filter.to_proto()),
                    since_unix_nano: ago.map_or(0, since),
                })
                .await?
                .into_inner();
            while let Some(stored) = stream.message().await? {
                print(&mut out, &stored, json)?;
                out.flush()?;
            }
            bail!("the collector ended the tail");
        }
        Command::Search {
            filter,
            since: ago,
            limit,
            json,
        } => {
            let mut token = String::new();
            let mut shown = 0;
            loop {
                let page = client
                    .search(SearchRequest {
                        filter: Some(filter.to_proto()),
                        since_unix_nano: since(ago),
                        until_unix_nano: 0,
                        limit: u32::try_from(limit - shown).unwrap_or(u32::MAX).min(10_000),
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                for stored in &page.events {
                    print(&mut out, stored, json)?;
                }
                shown += page.events.len();
                if page.next_page_token.is_empty() || shown >= limit || page.events.is_empty() {
                    return Ok(());
                }
                token = page.next_page_token;
            }
        }
        Command::Sessions {
            host,
            since: ago,
            json,
        } => {
            let sessions = client
                .sessions(SessionsRequest {
                    host: host.unwrap_or_default(),
                    since_unix_nano: ago.map_or(0, since),
                })
                .await?
                .into_inner()
                .sessions;
            for s in &sessions {
                if json {
                    writeln!(out, "{}", render::session_json(s))?;
                } else {
                    writeln!(out, "{}", render::session_line(s))?;
                }
            }
            Ok(())
        }
        Command::Replay {
            session,
            speed,
            max_wait,
        } => replay(&mut client, session, speed, max_wait, &mut out).await,
        Command::Verify { host, chain, json } => {
            verify(&mut client, host, chain, json, &mut out).await
        }
        Command::Grant { command } => {
            grant::grant(GrantsClient::new(channel), command, &mut out).await
        }
        Command::Review { since: ago, json } => {
            let client = GrantsClient::new(channel).max_decoding_message_size(64 << 20);
            grant::review(client, ago, json, &mut out).await
        }
    }
}

fn print(out: &mut impl io::Write, stored: &StoredEvent, json: bool) -> io::Result<()> {
    if json {
        writeln!(out, "{}", render::json(stored))
    } else {
        writeln!(out, "{}", render::line(stored))
    }
}

/// Prints a verdict per chain; fails when any chain does.
async fn verify(
    client: &mut QueryClient<Channel>,
    host: Option<String>,
    chain: Option<String>,
    json: bool,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let chains = client
        .verify(VerifyRequest {
            host: host.unwrap_or_default(),
            chain_id: chain.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .chains;
    let mut failed = 0;
    for c in &chains {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "host": c.host, "chain_id": c.chain_id, "ok": c.ok,
                    "records": c.records, "first_bad_seq": c.first_bad_seq,
                    "reason": c.reason, "expected_size": c.expected_size,
                })
            )?;
        } else if c.ok {
            writeln!(
                out,
                "ok    {} {}  {} records",
                c.host, c.chain_id, c.records
            )?;
        } else {
            let at = c
                .first_bad_seq
                .map_or_else(String::new, |s| format!(" at seq {s}"));
            writeln!(out, "FAIL  {} {}{at}: {}", c.host, c.chain_id, c.reason)?;
        }
        failed += usize::from(!c.ok);
    }
    if failed > 0 {
        bail!("{failed} of {} chains failed verification", chains.len());
    }
    if chains.is_empty() {
        eprintln!("no chains stored");
    }
    Ok(())
}

/// Writes the session's terminal output to `out` with the recorded pauses between writes,
/// divided by `speed` and capped at `max_wait` seconds.
async fn replay(
    client: &mut QueryClient<Channel>,
    session: String,
    speed: f64,
    max_wait: f64,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let mut stream = client.replay(ReplayRequest { session }).await?.into_inner();
    let mut previous: Option<u64> = None;
    while let Some(stored) = stream.message().await? {
        let Some(event) = stored.event else { continue };
        let Some(Body::Tty(tty)) = &event.body else {
            continue;
        };
        if tty.direction() != Direction::Output {
            continue;
        }
        if let Some(prev) = previous
            && speed > 0.0
        {
            #[expect(clippy::cast_precision_loss, reason = "a pause, to the millisecond")]
            let recorded = event.time_unix_nano.saturating_sub(prev) as f64 / 1e9;
            let pause = (recorded / speed).min(max_wait);
            if pause > 0.0 {
                out.flush()?;
                tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            }
        }
        previous = Some(event.time_unix_nano);
        out.write_all(&tty.data)?;
    }
    out.flush()?;
    Ok(())
}
