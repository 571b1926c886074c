//! `tail`, `search`, `sessions` and `verify`: reads of the stored evidence.

use std::{io, time::Duration};

use anyhow::bail;
use proto::{
    time::ago,
    v1::{
        HostsRequest, SearchRequest, Session, SessionsRequest, StoredEvent, TailRequest,
        VerifyRequest, VerifyResponse, query_client::QueryClient,
    },
};
use tonic::transport::Channel;

use crate::{
    cli::{FilterArgs, Format, Search, Sessions},
    hosts::Names,
    ocsf, render,
};

/// The most events one Search page carries, and sessions one Sessions page.
const EVENTS_PAGE_MAX: usize = 10_000;
const SESSIONS_PAGE_MAX: usize = 1000;

fn print(
    out: &mut impl io::Write,
    stored: &StoredEvent,
    format: Format,
    names: &Names,
) -> io::Result<()> {
    match format {
        Format::Text => writeln!(out, "{}", render::line(stored, names)),
        Format::Json => writeln!(out, "{}", render::json(stored)),
        Format::Ocsf => ocsf::lines(stored)
            .iter()
            .try_for_each(|line| writeln!(out, "{line}")),
    }
}

pub async fn tail(
    client: &mut QueryClient<Channel>,
    filter: &FilterArgs,
    since: Option<Duration>,
    format: Format,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let names = names_for(client, format == Format::Text).await?;
    let mut stream = client
        .tail(TailRequest {
            filter: Some(filter.to_proto()),
            since_unix_nano: since.map_or(0, ago),
        })
        .await?
        .into_inner();
    while let Some(stored) = stream.message().await? {
        print(out, &stored, format, &names)?;
        out.flush()?;
    }
    bail!("the collector ended the tail");
}

/// The hosts' names, fetched only for text output: JSON carries the id alone, as stored.
pub(crate) async fn names_for(
    client: &mut QueryClient<Channel>,
    text: bool,
) -> anyhow::Result<Names> {
    if text {
        Names::fetch(client).await
    } else {
        Ok(Names::default())
    }
}

/// One page of a paged call: its items, and the token of the next page (empty: none).
struct Page<T> {
    items: Vec<T>,
    next: String,
}

/// Prints up to `limit` items of a paged call, page by page from `token` (empty: the first
/// page), asking `fetch` for at most `page_max` at a time. When more match, says so on
/// standard error with the token that continues from there: a truncated answer is never
/// silent. Nor is an empty one: standard output stays empty, and standard error says that
/// nothing matched.
async fn follow<T, W: io::Write>(
    what: &str,
    limit: u64,
    page_max: usize,
    mut token: String,
    mut fetch: impl AsyncFnMut(u32, String) -> anyhow::Result<Page<T>>,
    print: impl Fn(&mut W, &T) -> io::Result<()>,
    out: &mut W,
) -> anyhow::Result<()> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = if token.is_empty() { "" } else { "more " };
    let mut shown = 0;
    loop {
        let want = (limit - shown).min(page_max);
        let page = fetch(u32::try_from(want).unwrap_or(u32::MAX), token).await?;
        for item in &page.items {
            print(out, item)?;
        }
        shown += page.items.len();
        if page.next.is_empty() || page.items.is_empty() {
            if shown == 0 {
                eprintln!("no {more}{what} match");
            }
            return Ok(());
        }
        if shown >= limit {
            out.flush()?;
            eprintln!(
                "more {what} match: these are the first {shown}; continue with \
                 `--page-token {}` (same filters), or raise --limit",
                page.next
            );
            return Ok(());
        }
        token = page.next;
    }
}

/// Prints up to `--limit` events, page by page (`follow`).
pub async fn search<W: io::Write>(
    client: &mut QueryClient<Channel>,
    search: Search,
    out: &mut W,
) -> anyhow::Result<()> {
    let filter = search.filter.to_proto();
    let since = ago(search.since);
    let format = search.output.format();
    let names = names_for(client, format == Format::Text).await?;
    let fetch = async |limit, page_token| {
        let page = client
            .search(SearchRequest {
                filter: Some(filter.clone()),
                since_unix_nano: since,
                until_unix_nano: 0,
                limit,
                page_token,
            })
            .await?
            .into_inner();
        Ok(Page {
            items: page.events,
            next: page.next_page_token,
        })
    };
    let token = search.page_token.unwrap_or_default();
    let print = |out: &mut W, stored: &StoredEvent| print(out, stored, format, &names);
    follow(
        "events",
        search.limit,
        EVENTS_PAGE_MAX,
        token,
        fetch,
        print,
        out,
    )
    .await
}

/// Prints up to `--limit` sessions, page by page (`follow`).
pub async fn sessions<W: io::Write>(
    client: &mut QueryClient<Channel>,
    sessions: Sessions,
    out: &mut W,
) -> anyhow::Result<()> {
    let host = sessions.host.unwrap_or_default();
    let since = sessions.since.map_or(0, ago);
    let names = names_for(client, !sessions.json).await?;
    let fetch = async |limit, page_token| {
        let page = client
            .sessions(SessionsRequest {
                host: host.clone(),
                since_unix_nano: since,
                limit,
                page_token,
            })
            .await?
            .into_inner();
        Ok(Page {
            items: page.sessions,
            next: page.next_page_token,
        })
    };
    let token = sessions.page_token.unwrap_or_default();
    let json = sessions.json;
    let print = |out: &mut W, s: &Session| {
        if json {
            writeln!(out, "{}", render::session_json(s))
        } else {
            writeln!(out, "{}", render::session_line(s, &names))
        }
    };
    follow(
        "sessions",
        sessions.limit,
        SESSIONS_PAGE_MAX,
        token,
        fetch,
        print,
        out,
    )
    .await
}

pub async fn hosts(
    client: &mut QueryClient<Channel>,
    json: bool,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let hosts = client.hosts(HostsRequest {}).await?.into_inner().hosts;
    if hosts.is_empty() {
        eprintln!("no hosts: none has shipped to this store yet");
    }
    for h in &hosts {
        if json {
            writeln!(out, "{}", render::host_json(h))?;
        } else {
            writeln!(out, "{}", render::host_line(h))?;
        }
    }
    Ok(())
}

/// Prints the collector's verdict per chain and per log, and every finding; fails when
/// anything does.
pub async fn verify(
    client: &mut QueryClient<Channel>,
    host: Option<String>,
    chain: Option<String>,
    json: bool,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let report = client
        .verify(VerifyRequest {
            host: host.unwrap_or_default(),
            chain_id: chain.unwrap_or_default(),
        })
        .await?
        .into_inner();
    print_report(&report, json, out)
}

/// Prints a verdict per chain and per log, and every finding; fails when anything does.
pub fn print_report(
    report: &VerifyResponse,
    json: bool,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let chains = &report.chains;
    let mut failed = 0;
    for c in chains {
        if json {
            writeln!(out, "{}", render::verdict_json(c))?;
        } else {
            writeln!(out, "{}", render::verdict_line(c))?;
        }
        failed += usize::from(!c.ok);
    }
    let mut logs_failed = 0;
    for l in &report.logs {
        if json {
            writeln!(out, "{}", render::log_verdict_json(l))?;
        } else {
            writeln!(out, "{}", render::log_verdict_line(l))?;
        }
        logs_failed += usize::from(!l.ok);
    }
    for f in &report.findings {
        if json {
            writeln!(out, "{}", render::finding_json(f))?;
        } else {
            writeln!(out, "{}", render::finding_line(f))?;
        }
    }
    if failed + logs_failed > 0 || !report.findings.is_empty() || !report.ok {
        bail!(
            "verification failed: {failed} of {}, {logs_failed} of {}, {}",
            render::counted(chains.len() as u64, "chain"),
            render::counted(report.logs.len() as u64, "log"),
            render::counted(report.findings.len() as u64, "finding")
        );
    }
    if chains.is_empty() {
        eprintln!("no chains stored");
    }
    Ok(())
}
