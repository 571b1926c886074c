//! `grant create|request|approve|list|revoke|extend` and `review`: the collector's Grants
//! service. Who asks is the operator's certificate; the collector records it with every
//! change.

use std::{io, time::Duration};

use proto::{
    time::{ago as since, now_unix_nano as now},
    v1::{
        ApproveRequest, CreateGrantRequest, ExtendGrantRequest, Grant, ListGrantsRequest,
        ReviewRequest, RevokeGrantRequest, grant::OnExpiry, grants_client::GrantsClient,
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

fn print(out: &mut impl io::Write, grant: &Grant, json: bool) -> io::Result<()> {
    if json {
        writeln!(out, "{}", render::grant_json(grant))
    } else {
        writeln!(out, "{}", render::grant_line(grant, now()))
    }
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
                print(out, g, json)?;
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
    print(out, &grant?.into_inner(), json)?;
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
