//! The operators' client of the collector: `tail`, `search`, `sessions`, `replay` and
//! `verify` over its Query service (`query`, `replay`), `verify --local`, which checks the
//! stored evidence itself (`local`), `export` and the offline
//! `verify-bundle` (`evidence`), `grant` and `review` over its
//! Grants service (`grant`), as readable text or JSON lines (`render`), and events as OCSF
//! for SIEMs (`ocsf`). `cargo xtask` runs it.

mod admin;
mod asciicast;
mod certs;
pub mod cli;
mod evidence;
mod grant;
mod hosts;
mod local;
mod ocsf;
mod query;
mod render;
mod replay;

use std::{io, path::PathBuf, time::Duration};

use anyhow::{Context as _, anyhow};
use pki::ClientIdentity;
use proto::v1::{
    admin_client::AdminClient, grants_client::GrantsClient, query_client::QueryClient,
};
use tonic::{Status, transport::Channel};

use crate::cli::{Cli, Command, Search, Sessions};

/// The exit status when whatever reads standard output stopped reading (`recorder search
/// | head`): what a shell reports for a process that SIGPIPE ended, 128 + 13.
const READER_GONE: i32 = 141;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let result = dispatch(cli);
    if let Err(error) = &result
        && reader_gone(error)
    {
        // Not an error to report: the reader has what it wanted. Never a success either,
        // so that a `verify` cut short is not read as one that passed.
        std::process::exit(READER_GONE);
    }
    result
}

/// Whether `error` is a write to standard output that failed because its reader closed the
/// pipe. Only an `io::Error` of our own writes counts: every other failure, a broken
/// connection to the collector included, comes as a status or with context over it.
fn reader_gone(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pki { command } => return certs::run(command),
        Command::VerifyBundle { file } => {
            let ca = cli.ca.unwrap_or_else(|| cli.pki_dir.join("ca.pem"));
            return evidence::verify_bundle(&file, &ca, &mut io::stdout().lock());
        }
        _ => {}
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command(cli))
        .map_err(in_own_words)
}

/// A request the collector refused, in its own words: its message and the status code, on
/// one line. A status with a cause under it (the connection failed) stays as it is, with the
/// cause.
fn in_own_words(error: anyhow::Error) -> anyhow::Error {
    match error.downcast_ref::<Status>() {
        // A cause under the status, or context over it, makes the chain longer than one.
        Some(status) if error.chain().count() == 1 => {
            anyhow!(
                "the collector refused: {} ({:?})",
                status.message(),
                status.code()
            )
        }
        _ => error,
    }
}

/// A channel to the collector: mutual TLS with the operator's certificate for `https://`,
/// plaintext for `http://` (a collector on loopback started so on purpose).
async fn connect(cli: &Cli) -> anyhow::Result<Channel> {
    let url = &cli.collector;
    let endpoint = if url.starts_with("https://") {
        let file = |given: &Option<PathBuf>, name: &str| {
            given.clone().unwrap_or_else(|| cli.pki_dir.join(name))
        };
        let identity = ClientIdentity::load(
            &file(&cli.ca, "ca.pem"),
            &file(&cli.cert, "operator.pem"),
            &file(&cli.key, "operator.key"),
        )
        .context(
            "loading the operator's certificate (--pki-dir, or --cert/--key/--ca; `recorder pki \
             issue operator` makes one)",
        )?;
        pki::endpoint(url, &identity, None)?
    } else {
        tonic::transport::Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("{url} is not a collector URL (https://HOST:PORT)"))?
    };
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the collector at {url}"))
}

async fn command(cli: Cli) -> anyhow::Result<()> {
    let channel = connect(&cli).await?;
    let mut client = QueryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut out = io::stdout().lock();
    let mut cli = cli;
    match &mut cli.command {
        Command::Tail { filter, .. } | Command::Search(Search { filter, .. }) => {
            hosts::resolve(&mut client, &mut filter.host).await?;
        }
        Command::Sessions(Sessions { host, .. }) | Command::Verify { host, .. } => {
            hosts::resolve(&mut client, host).await?;
        }
        _ => {}
    }
    match cli.command {
        Command::Tail {
            filter,
            since,
            output,
        } => query::tail(&mut client, &filter, since, output.format(), &mut out).await,
        Command::Search(search) => query::search(&mut client, search, &mut out).await,
        Command::Sessions(sessions) => query::sessions(&mut client, sessions, &mut out).await,
        Command::Replay(replay) => replay::play(&mut client, replay, &mut out).await,
        Command::Hosts { json } => query::hosts(&mut client, json, &mut out).await,
        Command::Verify {
            host,
            json,
            local: true,
            trust,
            ..
        } => {
            let ca = trust
                .or_else(|| cli.ca.clone())
                .unwrap_or_else(|| cli.pki_dir.join("ca.pem"));
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading the CA certificate {}", ca.display()))?;
            local::verify(&mut client, host, &ca_pem, json, &mut out).await
        }
        Command::Verify {
            host, chain, json, ..
        } => query::verify(&mut client, host, chain, json, &mut out).await,
        Command::Grant { mut command } => {
            let names = grant::names_for(&mut client, &mut command).await?;
            grant::grant(GrantsClient::new(channel), command, &names, &mut out).await
        }
        Command::Review { since, json } => {
            let names = query::names_for(&mut client, !json).await?;
            let client = GrantsClient::new(channel).max_decoding_message_size(64 << 20);
            grant::review(client, since, json, &names, &mut out).await
        }
        Command::Token { command } => {
            admin::token(AdminClient::new(channel), command, &mut out).await
        }
        Command::Host { command } => admin::host(AdminClient::new(channel), command).await,
        Command::Hold { session, reason } => {
            admin::hold(AdminClient::new(channel), session, reason).await
        }
        Command::Export { session, output } => {
            evidence::export(&mut client, session, &output, &mut out).await
        }
        Command::Pki { .. } | Command::VerifyBundle { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal is one line in the collector's words; a status with a cause under it, or an
    /// error a command put in context, is left whole.
    #[test]
    fn only_a_bare_refusal_is_put_in_the_collectors_words() {
        let refused = in_own_words(Status::not_found("no grant has the id \"g-1\"").into());
        assert_eq!(
            format!("{refused:#}"),
            "the collector refused: no grant has the id \"g-1\" (NotFound)"
        );
        let cause = std::io::Error::other("connection reset by peer");
        let failed = in_own_words(Status::from_error(Box::new(cause)).into());
        assert!(
            format!("{failed:#}").contains("connection reset by peer"),
            "{failed:#}"
        );
        assert!(failed.downcast_ref::<Status>().is_some(), "{failed:#}");
        let told = in_own_words(anyhow::Error::from(Status::not_found("x")).context("reading"));
        let told = format!("{told:#}");
        assert!(
            told.starts_with("reading: ") && !told.contains("the collector refused"),
            "{told}"
        );
    }
}
