//! Offline evidence: `export` writes a session's evidence bundle (docs/evidence.md,
//! "Bundles") as the collector makes it; `verify-bundle` checks one with no network,
//! trusting only the CA certificate it is given.

use std::{io, path::Path};

use anyhow::Context as _;
use proto::v1::{ExportRequest, query_client::QueryClient};
use tonic::transport::Channel;

use crate::render;

/// Writes session `session`'s bundle to `path` (mode 0600: it holds what was typed).
pub async fn export(
    client: &mut QueryClient<Channel>,
    session: String,
    path: &Path,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let mut stream = client
        .export(ExportRequest {
            session: session.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the collector refused the export: {}", s.message()))?
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await? {
        file.extend_from_slice(&chunk.data);
    }
    pki::write_private(path, &file).with_context(|| format!("writing {}", path.display()))?;
    let records = bundle::Bundle::from_json(&file)
        .map(|b| b.records.len())
        .unwrap_or_default();
    writeln!(
        out,
        "exported session {session}: {} with inclusion proofs to {} ({})",
        render::counted(records as u64, "record"),
        path.display(),
        render::counted(file.len() as u64, "byte")
    )?;
    Ok(())
}

/// Checks the bundle at `path` against the CA certificate at `ca`.
pub fn verify_bundle(path: &Path, ca: &Path, out: &mut impl io::Write) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let ca_pem =
        std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let verified = bundle::verify(&bytes, &ca_pem)
        .with_context(|| format!("{} does not verify", path.display()))?;
    writeln!(
        out,
        "ok    session {}: {} of host {}, each in its signed and witnessed log ({})",
        verified.session,
        render::counted(verified.records as u64, "record"),
        verified.host,
        render::counted(verified.checkpoints as u64, "checkpoint")
    )?;
    Ok(())
}
