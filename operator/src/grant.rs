//! `grant create|list|revoke|extend` and `review`: the collector's Grants service. Every
//! change names who asked (`x-recorder-actor`), which the collector records with it.

use std::{io, time::Duration};

use anyhow::anyhow;
use proto::v1::{
    CreateGrantRequest, ExtendGrantRequest, Grant, ListGrantsRequest, ReviewRequest,
    RevokeGrantRequest, grant::OnExpiry, grants_client::GrantsClient,
};
use tonic::{Request, Status, metadata::MetadataValue, transport::Channel};

use crate::{
    cli::{self, GrantCommand},
    render,
};
use proto::time::{ago as since, now_unix_nano as now};

/// The person at the keyboard, as `sudo` leaves it: `$SUDO_USER`, else `$USER`.
fn user() -> Option<String> {
    ["SUDO_USER", "USER"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
}

/// A request that names who asks.
fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let actor = user()
        .and_then(|u| MetadataValue::try_from(u).ok())
        .unwrap_or_else(|| MetadataValue::from_static("unknown"));
    request.metadata_mut().insert("x-recorder-actor", actor);
    request
}

/// The collector's refusal in its own words.
fn refused(status: &Status) -> anyhow::Error {
    anyhow!(
        "the collector refused: {} ({:?})",
        status.message(),
        status.code()
    )
}

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

pub async fn grant(
    mut client: GrantsClient<Channel>,
    command: GrantCommand,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let (grant, json) = match command {
        GrantCommand::Create {
            identity,
            hosts,
            ttl,
            on_expiry,
            reason,
            approver,
            json,
        } => {
            let on_expiry = match on_expiry {
                cli::OnExpiry::Alert => OnExpiry::Alert,
                cli::OnExpiry::Kill => OnExpiry::Kill,
            };
            let create = CreateGrantRequest {
                identity: Some(identity.to_proto()),
                hosts,
                not_before_unix_nano: 0,
                ttl_millis: millis(ttl),
                reason,
                approver: approver.or_else(user).unwrap_or_default(),
                on_expiry: on_expiry.into(),
            };
            (client.create(request(create)).await, json)
        }
        GrantCommand::List { all, json } => {
            let grants = client
                .list(request(ListGrantsRequest { include_ended: all }))
                .await
                .map_err(|s| refused(&s))?
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
        GrantCommand::Revoke { id, reason, json } => (
            client
                .revoke(request(RevokeGrantRequest { id, reason }))
                .await,
            json,
        ),
        GrantCommand::Extend { id, by, json } => (
            client
                .extend(request(ExtendGrantRequest {
                    id,
                    extend_millis: millis(by),
                }))
                .await,
            json,
        ),
    };
    print(out, &grant.map_err(|s| refused(&s))?.into_inner(), json)?;
    Ok(())
}

pub async fn review(
    mut client: GrantsClient<Channel>,
    ago: Duration,
    json: bool,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let identities = client
        .review(request(ReviewRequest {
            since_unix_nano: since(ago),
        }))
        .await
        .map_err(|s| refused(&s))?
        .into_inner()
        .identities;
    let now = now();
    for r in &identities {
        if json {
            writeln!(out, "{}", render::review_json(r))?;
        } else {
            write!(out, "{}", render::review_text(r, now))?;
        }
    }
    if identities.is_empty() && !json {
        eprintln!("no grants or violations in that time");
    }
    Ok(())
}
