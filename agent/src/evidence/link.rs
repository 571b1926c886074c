//! The agent's link to its collector: mutual TLS with the host's certificate (docs/pki.md),
//! joining with a single-use token when the host has none yet, and renewing the
//! certificate over the authenticated channel before it expires. The key is made here and
//! never leaves the host; it also signs the host's checkpoints.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use pki::{AgentKey, CertInfo, ClientIdentity};
use proto::v1::{EnrollRequest, RenewRequest, enrollment_client::EnrollmentClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::{info, warn};

use super::write_private;

const CA: &str = "ca.pem";
const CERT: &str = "agent.pem";
const KEY: &str = "agent.key";
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the certificate's remaining life is looked at.
const RENEW_CHECK: Duration = Duration::from_hours(1);

/// Where and how the agent ships.
#[derive(Clone, Debug)]
pub struct Link {
    /// The collectors, in order of preference (at least one): collectors that share one
    /// database, so that any of them continues where another stopped (docs/scaling.md).
    pub urls: Vec<String>,
    /// The agent's certificates (`ca.pem`, `agent.pem`, `agent.key`); `None` for a
    /// collector that serves plaintext on loopback, on purpose.
    pub pki_dir: Option<PathBuf>,
}

impl Link {
    /// The endpoint of the collector at `url`, with this host's identity as it is on disk
    /// now (so a renewed certificate is used from the next connection on).
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let Some(dir) = &self.pki_dir else {
            return Ok(Endpoint::from_shared(url.to_owned())?.connect_timeout(CONNECT_TIMEOUT));
        };
        let identity = ClientIdentity::load(&dir.join(CA), &dir.join(CERT), &dir.join(KEY))
            .with_context(|| format!("loading this host's certificate from {}", dir.display()))?;
        Ok(pki::endpoint(url, &identity, None)?.connect_timeout(CONNECT_TIMEOUT))
    }

    /// A channel to the first collector that answers, in order of preference, made by
    /// `endpoint` from each URL.
    async fn first_answering(
        &self,
        endpoint: impl Fn(&str) -> anyhow::Result<Endpoint>,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let mut failures = Vec::new();
        for url in &self.urls {
            match endpoint(url)?.connect().await {
                Ok(channel) => return Ok(channel),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        bail!("no collector answered: {}", failures.join("; "))
    }
}

impl Link {
    /// The host this one is enrolled as, when it has a certificate: its identity from then
    /// on, whatever `/etc/machine-id` says later (a re-imaged or cloned disk changes it, and
    /// a host that stopped shipping for that would be silenced by its own disk).
    pub fn enrolled_host(&self) -> anyhow::Result<Option<String>> {
        let Some(dir) = &self.pki_dir else {
            return Ok(None);
        };
        let path = dir.join(CERT);
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match CertInfo::from_pem(&pem)?.peer {
            pki::Peer::Agent { host } => Ok(Some(host)),
            other => bail!("{} is {other}, not a host's certificate", path.display()),
        }
    }
}

/// What signs this host's checkpoints: the enrolled key, under the log name its CA gives.
pub struct SigningIdentity {
    pub signer: tlog::Signer,
    pub ca_pem: String,
    /// The deployment id of the CA.
    pub deployment: String,
}

impl Link {
    /// The host's checkpoint signer, from the key on disk; `None` without TLS.
    pub fn signing_identity(&self, host: &str) -> anyhow::Result<Option<SigningIdentity>> {
        let Some(dir) = &self.pki_dir else {
            return Ok(None);
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let ca_pem = read(CA)?;
        let deployment = pki::deployment_id(&ca_pem)?;
        let seed = pki::ed25519_seed_from_pkcs8_pem(&read(KEY)?)?;
        let signer = tlog::Signer::from_seed(&pki::host_log(&deployment, host), seed)?;
        Ok(Some(SigningIdentity {
            signer,
            ca_pem,
            deployment,
        }))
    }
}

/// Checks that the host has a certificate, enrolling as `host` with `join` (a token, and
/// the CA to trust) when it has none. Fails, saying what to do, when it has neither. A
/// certificate there is a host's own, naming `host`: `Link::enrolled_host` read it first.
pub async fn ensure_enrolled(
    link: &Link,
    host: &str,
    join: Option<(&str, &Path)>,
) -> anyhow::Result<()> {
    let Some(dir) = &link.pki_dir else {
        return Ok(());
    };
    if dir.join(CERT).exists() && dir.join(KEY).exists() {
        return Ok(());
    }
    let Some((token, ca)) = join else {
        bail!(
            "this host has no certificate in {}: join with `--join TOKEN --ca ca.pem` (an admin \
             makes the token with `recorder token create --host {host}`)",
            dir.display()
        );
    };
    pki::create_private_dir(dir)?;
    let ca_pem =
        std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let key = AgentKey::generate()?;
    write_private(&dir.join(KEY), key.key_pem.as_bytes())?;
    pki::install_crypto_provider();
    // No certificate yet: the collector's is checked against the CA, ours is the token.
    let channel = link
        .first_answering(|url| {
            Ok(Endpoint::from_shared(url.to_owned())?
                .connect_timeout(CONNECT_TIMEOUT)
                .tls_config(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)),
                )?)
        })
        .await
        .context("connecting to enroll")?;
    let answer = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_owned(),
            csr_pem: key.csr_pem,
            host: host.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the collector refused to enroll this host: {}", s.message()))?
        .into_inner();
    if answer.host != host {
        bail!(
            "the token enrolls host {}, but this host is {host}",
            answer.host
        );
    }
    write_private(&dir.join(CA), ca_pem.as_bytes())?;
    write_private(&dir.join(CERT), answer.cert_pem.as_bytes())?;
    info!(host, dir = %dir.display(), "enrolled");
    Ok(())
}

/// Renews the certificate when a third of its life is left, for as long as the agent runs.
pub async fn renew_in_time(link: Link) {
    let Some(dir) = link.pki_dir.clone() else {
        return;
    };
    loop {
        match renew_if_due(&link, &dir).await {
            Ok(true) => info!("certificate renewed"),
            Ok(false) => {}
            Err(error) => warn!(
                error = format!("{error:#}"),
                "cannot renew the certificate yet"
            ),
        }
        tokio::time::sleep(RENEW_CHECK).await;
    }
}

async fn renew_if_due(link: &Link, dir: &Path) -> anyhow::Result<bool> {
    let info = CertInfo::from_pem(&std::fs::read_to_string(dir.join(CERT))?)?;
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if left > life / 3 {
        return Ok(false);
    }
    let key = std::fs::read_to_string(dir.join(KEY))?;
    let csr_pem = AgentKey::csr_for_key(&key)?;
    let channel = link.first_answering(|url| link.endpoint(url)).await?;
    let answer = EnrollmentClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|s| anyhow::anyhow!("the collector refused: {}", s.message()))?
        .into_inner();
    write_private(&dir.join(CERT), answer.cert_pem.as_bytes())?;
    Ok(true)
}
