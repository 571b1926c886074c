//! Hosts by name: `--host` takes a host id or a display name, and text output shows names.
//! Names come from the collector's Hosts answer (each host's newest `ChainStart`, else its last
//! Hello). They are labels, not identities: two hosts may share one, so a name that picks
//! more than one host is refused, and text shows the id's first digits beside the name.

use std::{borrow::Cow, collections::HashMap};

use anyhow::bail;
use proto::v1::{HostsRequest, query_client::QueryClient};
use tonic::transport::Channel;

/// Hex digits of the id shown beside a name: enough to tell a fleet's hosts apart by eye.
const ID_SHOWN: usize = 8;

/// Each known host's display name, by host id.
#[derive(Default)]
pub(crate) struct Names(HashMap<String, String>);

impl Names {
    pub(crate) async fn fetch(client: &mut QueryClient<Channel>) -> anyhow::Result<Self> {
        let hosts = client.hosts(HostsRequest {}).await?.into_inner().hosts;
        Ok(Self(hosts.into_iter().map(|h| (h.host, h.name)).collect()))
    }

    /// Whether `host` is the id of a host of the store.
    pub(crate) fn knows(&self, host: &str) -> bool {
        self.0.contains_key(host)
    }

    /// `name[3d1219c7]` for a named host, else its id.
    pub(crate) fn label<'a>(&self, host: &'a str) -> Cow<'a, str> {
        match self.0.get(host).filter(|name| !name.is_empty()) {
            Some(name) => {
                let id: String = host.chars().take(ID_SHOWN).collect();
                Cow::Owned(format!("{name}[{id}]"))
            }
            None => Cow::Borrowed(host),
        }
    }

    /// The host id `given` means: a known id as it is, else the one host of that name. An
    /// unknown value passes as it is, an id the collector may yet hear of.
    pub(crate) fn resolve(&self, given: &str) -> anyhow::Result<String> {
        if self.0.contains_key(given) {
            return Ok(given.to_owned());
        }
        let mut named: Vec<&String> = self
            .0
            .iter()
            .filter(|(_, name)| !name.is_empty() && *name == given)
            .map(|(id, _)| id)
            .collect();
        named.sort();
        match named.as_slice() {
            [] => Ok(given.to_owned()),
            [one] => Ok((*one).clone()),
            many => bail!(
                "{} hosts are named {given:?}: pick one by id ({})",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// `--host` as the collector takes it: a display name becomes its host's id.
pub(crate) async fn resolve(
    client: &mut QueryClient<Channel>,
    given: &mut Option<String>,
) -> anyhow::Result<()> {
    if let Some(host) = given.as_mut() {
        *host = Names::fetch(client).await?.resolve(host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names(
            [
                ("3d1219c7c4c5404aaa1f6d2a48adfda4", "db1"),
                ("aaaaaaaabbbbccccddddeeeeffff0000", "web"),
                ("bbbbbbbbbbbbccccddddeeeeffff0000", "web"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
        )
    }

    #[test]
    fn a_name_resolves_to_its_one_host_and_a_shared_name_is_refused() {
        let names = names();
        assert_eq!(
            names.resolve("db1").unwrap(),
            "3d1219c7c4c5404aaa1f6d2a48adfda4"
        );
        assert_eq!(
            names.resolve("3d1219c7c4c5404aaa1f6d2a48adfda4").unwrap(),
            "3d1219c7c4c5404aaa1f6d2a48adfda4"
        );
        let err = names.resolve("web").unwrap_err().to_string();
        assert!(err.contains("2 hosts are named \"web\""), "{err}");
        assert_eq!(names.resolve("unheard-of").unwrap(), "unheard-of");
        assert_eq!(
            names.label("3d1219c7c4c5404aaa1f6d2a48adfda4"),
            "db1[3d1219c7]"
        );
        assert_eq!(names.label("cafe"), "cafe");
    }
}
