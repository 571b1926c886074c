//! The enforcer's durable state, in the spool directory: the last grant view (so grants hold
//! through restarts and collector outages), where each grant was used (so its end kills
//! what used it, even after a restart), and why each kernel deny entry exists (the entries
//! outlive the agent, and a kill made while it was down must still name its grant). Written atomically, mode 0600: a crash leaves the
//! old or the new contents, never a mix.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use prost::Message as _;
use proto::v1::{GrantView, identity::Kind};
use tracing::{info, warn};

use crate::{
    capture::event::{Event, Target},
    evidence::{read_json, write_json_private, write_private},
    identity::{Identity, attribute::Attributed, proctable::SessionRoot},
};

const VIEW_FILE: &str = "grants.pb";
const USAGE_FILE: &str = "grant-usage.json";
const CAUSES_FILE: &str = "deny-causes.json";

/// Why a kernel deny entry exists: its cause id is the index in the list.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Cause {
    pub grant_id: String,
    /// `expired`, `revoked`, `violation` or `exec_lost`.
    pub reason: String,
    pub target: Target,
    /// Whose the target was; the kill is filed under it. Absent in a cache written before
    /// kills named it, and for a target no judged event named.
    #[serde(default)]
    pub subject: Option<Subject>,
}

/// Whose a target is, as the first of its events the judge acted on said: a kill of the
/// target, even one made while no agent ran, is filed under the session it ended and the
/// identity behind it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    /// As `proto::v1::identity::Kind` numbers it.
    pub kind: i32,
    pub name: String,
    pub root: Option<SessionRoot>,
}

impl Subject {
    #[must_use]
    pub fn of(identity: &Identity, root: Option<SessionRoot>) -> Self {
        Self {
            kind: identity.kind.into(),
            name: identity.name.clone(),
            root,
        }
    }

    /// `event` (a kill) filed under this subject.
    #[must_use]
    pub fn attribute(&self, event: Event) -> Attributed {
        Attributed {
            identity: Some(Arc::new(Identity {
                // A cache edited to hold a kind no identity has says it is unknown.
                kind: Kind::try_from(self.kind).unwrap_or(Kind::Unknown),
                name: self.name.clone(),
                reason: None,
                grant: None,
            })),
            root: self.root,
            ..Attributed::bare(event)
        }
    }
}

/// The reason as the chain spells it; a cache edited to say something else says so.
#[must_use]
pub fn reason(text: &str) -> &'static str {
    match text {
        "expired" => "expired",
        "revoked" => "revoked",
        "violation" => "violation",
        "exec_lost" => "exec_lost",
        _ => "unknown",
    }
}

/// Where each grant was used: what to kill when it ends.
pub type Usage = HashMap<String, BTreeSet<Target>>;

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The cached view; an unreadable one is ignored, with a warning.
    #[must_use]
    pub fn view(&self) -> Option<GrantView> {
        let bytes = fs::read(self.dir.join(VIEW_FILE)).ok()?;
        let view = GrantView::decode(bytes.as_slice())
            .inspect_err(|e| warn!(error = %e, "the cached grant view is unreadable; ignoring it"))
            .ok()?;
        info!(
            grants = view.grants.len(),
            "grant view loaded from the cache"
        );
        Some(view)
    }

    #[must_use]
    pub fn usage(&self) -> Usage {
        read_json(&self.dir.join(USAGE_FILE)).unwrap_or_default()
    }

    #[must_use]
    pub fn causes(&self) -> Vec<Cause> {
        read_json(&self.dir.join(CAUSES_FILE)).unwrap_or_default()
    }

    pub fn save_causes(&self, causes: &[Cause]) {
        if let Err(e) = write_json_private(&self.dir.join(CAUSES_FILE), causes) {
            warn!(error = %e, "cannot save why the kernel denies what it denies");
        }
    }

    pub fn save_view(&self, view: &GrantView) {
        if let Err(e) = write_private(&self.dir.join(VIEW_FILE), &view.encode_to_vec()) {
            warn!(error = %e, "cannot cache the grant view");
        }
    }

    pub fn save_usage(&self, usage: &Usage) {
        if let Err(e) = write_json_private(&self.dir.join(USAGE_FILE), usage) {
            warn!(error = %e, "cannot save where grants were used");
        }
    }
}
