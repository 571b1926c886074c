//! `token create` and `host revoke`: the collector's Admin service (role admin).

use std::io;

use proto::{
    time::rfc3339_millis,
    v1::{CreateTokenRequest, HoldRequest, RevokeHostRequest, admin_client::AdminClient},
};
use tonic::transport::Channel;

use crate::cli::{HostCommand, TokenCommand};

pub async fn token(
    mut client: AdminClient<Channel>,
    command: TokenCommand,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let TokenCommand::Create { host, ttl } = command;
    let made = client
        .create_token(CreateTokenRequest {
            host: host.clone(),
            ttl_millis: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
        .await?
        .into_inner();
    writeln!(out, "{}", made.token)?;
    eprintln!(
        "single use, for host {host} until {}: on the host, `agent --join TOKEN --ca ca.pem \
         --collector URL ...`",
        rfc3339_millis(made.expires_unix_nano)
    );
    Ok(())
}

/// Puts session `session` on legal hold: retention never prunes its records.
pub async fn hold(
    mut client: AdminClient<Channel>,
    session: String,
    reason: String,
) -> anyhow::Result<()> {
    client
        .hold(HoldRequest {
            session: session.clone(),
            reason,
        })
        .await?;
    eprintln!("session {session} is on hold: retention keeps its records");
    Ok(())
}

pub async fn host(mut client: AdminClient<Channel>, command: HostCommand) -> anyhow::Result<()> {
    let HostCommand::Revoke { host, reason } = command;
    client
        .revoke_host(RevokeHostRequest {
            host: host.clone(),
            reason,
        })
        .await?;
    eprintln!("host {host} revoked: its certificates are refused from now on");
    Ok(())
}
