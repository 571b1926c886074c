//! Identity kinds: the one place their names are spelled (JSON, text output, grant
//! selectors, policy files).

use crate::v1::{Identity, IdentitySelector, identity::Kind};

impl Kind {
    /// The lowercase name: `human`, `service`, `workload`, `registered`, `unknown`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Service => "service",
            Self::Workload => "workload",
            Self::Registered => "registered",
            Self::Unknown | Self::Unspecified => "unknown",
        }
    }

    /// The kind a name spells; `unknown` and unspecified are not kinds one can name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Human, Self::Service, Self::Workload, Self::Registered]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// Whether a grant's or the policy's selector names the identity of kind `kind` called
/// `name`.
#[must_use]
pub fn selects(selector: &IdentitySelector, kind: Kind, name: &str) -> bool {
    selector.kind == i32::from(kind) && selector.name == name
}

/// `name(kind)[grant G]`, or `kind` alone when the identity has no name.
#[must_use]
pub fn label(identity: &Identity) -> String {
    let kind = identity.kind().name();
    let mut s = if identity.name.is_empty() {
        kind.to_owned()
    } else {
        format!("{}({kind})", identity.name)
    };
    if !identity.grant.is_empty() {
        s.push_str("[grant ");
        s.push_str(&identity.grant);
        s.push(']');
    }
    s
}
