//! The main job's local PKI (docs/pki.md): on first start, a CA and the certificates of the
//! collector (and its witness key), of this host's agent and of the local operator (an
//! admin), in one private directory. `cargo xtask tail|grant|...` find the operator's
//! there by themselves.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Context as _;
use pki::{Ca, Issued, Role, Validity};

const YEAR: Duration = Duration::from_hours(365 * 24);

/// Makes the local PKI in `dir` unless it is there; the collector's certificate names
/// `localhost`, 127.0.0.1 and `listen_ip`.
pub fn ensure(dir: &Path, listen_ip: IpAddr) -> anyhow::Result<()> {
    if dir.join("ca.pem").exists() {
        if !dir.join("witness.pem").exists() && dir.join("collector.pem").exists() {
            // A local PKI made before collectors had a witness key.
            let ca =
                Ca::load(dir).with_context(|| format!("loading the CA in {}", dir.display()))?;
            write(
                dir,
                "witness",
                &ca.issue_witness("local", Validity::from_now(YEAR))?,
            )?;
        }
        for file in ["collector.pem", "witness.pem", "agent.pem", "operator.pem"] {
            anyhow::ensure!(
                dir.join(file).exists(),
                "{} holds a CA but no {file}: move it away to start afresh",
                dir.display()
            );
        }
        return Ok(());
    }
    let ca = Ca::init(dir).with_context(|| format!("creating a CA in {}", dir.display()))?;
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if !listen_ip.is_unspecified() && !ips.contains(&listen_ip) {
        ips.push(listen_ip);
    }
    let validity = || Validity::from_now(YEAR);
    write(
        dir,
        "collector",
        &ca.issue_collector("local", &["localhost".into()], &ips, validity())?,
    )?;
    write(dir, "witness", &ca.issue_witness("local", validity())?)?;
    write(dir, "agent", &ca.issue_agent(&pki::host_id(), validity())?)?;
    write(
        dir,
        "operator",
        &ca.issue_operator("admin", Role::Admin, validity())?,
    )?;
    eprintln!(
        "main job: made a local PKI in {} (a CA; the collector's, its witness key's, this \
         host's agent's and the local operator's certificates)",
        dir.display()
    );
    Ok(())
}

fn write(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<()> {
    pki::write_private(&dir.join(format!("{name}.key")), issued.key_pem.as_bytes())?;
    pki::write_private(&dir.join(format!("{name}.pem")), issued.cert_pem.as_bytes())?;
    Ok(())
}
