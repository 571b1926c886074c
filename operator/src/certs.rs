//! `recorder pki`: the deployment's CA and the certificates it issues, made on this machine
//! with no collector involved (docs/pki.md). Keys are written mode 0600 and never
//! overwritten.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Context as _;
use pki::{Ca, Issued, Validity};

use crate::cli::{Issue, PkiCommand};

const DAY: Duration = Duration::from_hours(24);

pub fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir } => {
            Ca::init(&dir).with_context(|| format!("creating a CA in {}", dir.display()))?;
            println!(
                "CA created: {0}/ca.pem (give it to every agent, collector and operator) and \
                 {0}/ca.key (keep it where only the collector and you can read it)",
                dir.display()
            );
            Ok(())
        }
        PkiCommand::Issue(issue) => {
            let (ca_dir, out, issued) = match issue {
                Issue::Collector {
                    ca_dir,
                    name,
                    dns,
                    ip,
                    days,
                    out,
                } => {
                    let ca = load(&ca_dir)?;
                    let ips: Vec<IpAddr> = ip;
                    let issued = ca.issue_collector(&name, &dns, &ips, validity(days))?;
                    (ca_dir, out, issued)
                }
                Issue::Witness {
                    ca_dir,
                    name,
                    days,
                    out,
                } => {
                    let ca = load(&ca_dir)?;
                    let issued = ca.issue_witness(&name, validity(days))?;
                    (ca_dir, out, issued)
                }
                Issue::Operator {
                    ca_dir,
                    name,
                    role,
                    days,
                    out,
                } => {
                    let ca = load(&ca_dir)?;
                    let issued = ca.issue_operator(&name, role.into(), validity(days))?;
                    (ca_dir, out, issued)
                }
                Issue::Agent {
                    ca_dir,
                    host,
                    days,
                    out,
                } => {
                    let ca = load(&ca_dir)?;
                    let issued = ca.issue_agent(&host, validity(days))?;
                    (ca_dir, out, issued)
                }
            };
            write(&out, &issued)?;
            println!(
                "issued {0}.pem and {0}.key (mode 0600), signed by the CA in {1}",
                out.display(),
                ca_dir.display()
            );
            Ok(())
        }
    }
}

fn load(dir: &Path) -> anyhow::Result<Ca> {
    Ca::load(dir).with_context(|| format!("loading the CA in {}", dir.display()))
}

fn validity(days: u32) -> Validity {
    Validity::from_now(DAY * days)
}

/// `PREFIX.key` (0600) then `PREFIX.pem`; neither may exist yet.
fn write(prefix: &Path, issued: &Issued) -> anyhow::Result<()> {
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        std::path::PathBuf::from(name)
    };
    pki::write_private(&with(".key"), issued.key_pem.as_bytes())?;
    std::fs::write(with(".pem"), &issued.cert_pem)
        .with_context(|| format!("writing {}", with(".pem").display()))?;
    Ok(())
}
