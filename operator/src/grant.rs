//! `grant create|request|approve|list|revoke|extend` and `review`: the collector's Grants
//! service. Who asks is the operator's certificate; the collector records it with every
//! change.

use std::{io, time::Duration};

use proto::{
    time::{ago as since, now_unix_nano as now},
    v1::{
        ApproveRequest, CreateGrantRequest, ExtendGrantRequest, Grant, ListGrantsRequest,
        ReviewRequest, RevokeGrantRequest, grant::OnExpiry, grants_client::GrantsClient,
        query_client::QueryClient,
    },
};
use tonic::transport::Channel;

use crate::{
    cli::{self, GrantCommand, NewGrant},
    hosts::Names,
    render,
};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn print(out: &mut impl io::Write, grant: &Grant, json: bool, names: &Names) -> io::Result<()> {
    if json {
        writeln!(out, "{}", render::grant_json(grant))
    } else {
        writeln!(out, "{}", render::grant_line(grant, now(), names))
    }
}

/// The hosts' names, where the command needs them: to take a new grant's `--host` by name
/// as well as by id, and to show hosts by name in text. A `--host` that no host of the store
/// has, as id or name, is kept as given, an id the collector may yet hear of, with a note: a
/// grant on a mistyped host would otherwise cover nothing, silently.
pub async fn names_for(
    client: &mut QueryClient<Channel>,
    command: &mut GrantCommand,
) -> anyhow::Result<Names> {
    let (hosts, json) = match command {
        GrantCommand::Create(new) | GrantCommand::Request(new) => (Some(&mut new.hosts), new.json),
        GrantCommand::Approve { json, .. }
        | GrantCommand::List { json, .. }
        | GrantCommand::Revoke { json, .. }
        | GrantCommand::Extend { json, .. } => (None, *json),
    };
    if json && hosts.as_ref().is_none_or(|h| h.is_empty()) {
        return Ok(Names::default());
    }
    let names = Names::fetch(client).await?;
    for host in hosts.into_iter().flatten() {
        let id = names.resolve(host)?;
        if !names.knows(&id) {
            eprintln!(
                "note: no host of this store has the id or name {host:?}; the grant applies on \
                 the host whose id it is, once that host ships (`recorder hosts` lists them)"
            );
        }
        *host = id;
    }
    Ok(names)
}

fn create_request(new: &NewGrant) -> CreateGrantRequest {
    let on_expiry = match new.on_expiry {
        cli::OnExpiry::Alert => OnExpiry::Alert,
        cli::OnExpiry::Kill => OnExpiry::Kill,
    };
    CreateGrantRequest {
        identity: Some(new.identity.to_proto()),
        hosts: new.hosts.clone(),
        not_before_unix_nano: 0,
        ttl_millis: millis(new.ttl),
        reason: new.reason.clone(),
        on_expiry: on_expiry.into(),
    }
}

pub async fn grant(
    mut client: GrantsClient<Channel>,
    command: GrantCommand,
    names: &Names,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let (grant, json) = match command {
        GrantCommand::Create(new) => (client.create(create_request(&new)).await, new.json),
        GrantCommand::Request(new) => (client.request(create_request(&new)).await, new.json),
        GrantCommand::Approve { id, json } => (client.approve(ApproveRequest { id }).await, json),
        GrantCommand::List { all, json } => {
            let grants = client
                .list(ListGrantsRequest { include_ended: all })
                .await?
                .into_inner()
                .grants;
            for g in &grants {
                print(out, g, json, names)?;
            }
            if grants.is_empty() && !json {
                eprintln!("no grants{}", if all { "" } else { " live or pending" });
            }
            return Ok(());
        }
        GrantCommand::Revoke { id, reason, json } => {
            (client.revoke(RevokeGrantRequest { id, reason }).await, json)
        }
        GrantCommand::Extend { id, by, json } => (
            client
                .extend(ExtendGrantRequest {
                    id,
                    extend_millis: millis(by),
                })
                .await,
            json,
        ),
    };
    print(out, &grant?.into_inner(), json, names)?;
    Ok(())
}

pub async fn review(
    mut client: GrantsClient<Channel>,
    ago: Duration,
    json: bool,
    names: &Names,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let identities = client
        .review(ReviewRequest {
            since_unix_nano: since(ago),
        })
        .await?
        .into_inner()
        .identities;
    let now = now();
    for r in &identities {
        if json {
            writeln!(out, "{}", render::review_json(r))?;
        } else {
            write!(out, "{}", render::review_text(r, now, names))?;
        }
    }
    if identities.is_empty() && !json {
        eprintln!("no grants or violations in that time");
    }
    Ok(())
}
