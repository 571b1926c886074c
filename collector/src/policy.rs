//! The policy agents enforce: which activity needs a grant, and what activity without one
//! does. Read once at start from `--policy FILE` (JSON; docs/grants.md), and sent to every
//! agent in its `GrantView`.

use std::path::{Path, PathBuf};

use proto::v1::{IdentitySelector, Policy, identity::Kind, policy::Mode};
use serde::Deserialize;

use crate::grants::rules::check_selector;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the policy file {path} is not a valid policy: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the policy file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file's form. Unknown fields are refused: a misspelt rule would otherwise be silently
/// off.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    mode: FileMode,
    #[serde(default = "yes")]
    root_exec: bool,
    #[serde(default)]
    guarded: Vec<Guarded>,
    /// Every grant needs two people: direct creation is refused.
    #[serde(default)]
    require_approval: bool,
    /// Exec records lost while kill-mode grants are in use: kill those sessions, or alert.
    #[serde(default)]
    fail_closed_on_loss: FileMode,
}

fn yes() -> bool {
    true
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileMode {
    #[default]
    Alert,
    Kill,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Guarded {
    /// An identity kind's name (`proto::identity`), as every side spells it.
    kind: String,
    name: String,
}

/// Without `--policy`: activity without a grant raises alerts, and a human's exec as root
/// needs a grant.
#[must_use]
pub fn default_policy() -> Policy {
    Policy {
        mode: Mode::Alert.into(),
        root_exec: true,
        guarded: Vec::new(),
        require_approval: false,
        fail_closed_on_loss: Mode::Alert.into(),
    }
}

/// Reads and checks the policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: PolicyFile = serde_json::from_str(&text).map_err(|source| PolicyError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let mut guarded = Vec::with_capacity(file.guarded.len());
    let invalid = |message: String| PolicyError::Invalid {
        path: path.to_owned(),
        message: format!("guarded: {message}"),
    };
    for g in file.guarded {
        let kind = Kind::from_name(&g.kind).ok_or_else(|| {
            invalid(format!(
                "identity kind {:?} is not one a grant can name: human, service, workload or registered",
                g.kind
            ))
        })?;
        let selector = IdentitySelector {
            kind: kind.into(),
            name: g.name,
        };
        check_selector(Some(&selector)).map_err(|e| invalid(e.to_string()))?;
        guarded.push(selector);
    }
    Ok(Policy {
        mode: file.mode.into(),
        root_exec: file.root_exec,
        guarded,
        require_approval: file.require_approval,
        fail_closed_on_loss: file.fail_closed_on_loss.into(),
    })
}

impl From<FileMode> for i32 {
    fn from(mode: FileMode) -> Self {
        match mode {
            FileMode::Alert => Mode::Alert,
            FileMode::Kill => Mode::Kill,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Policy, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn a_policy_file_reads_into_the_policy_agents_are_sent() {
        let policy = load_text(
            r#"{"mode": "kill", "root_exec": false, "fail_closed_on_loss": "kill",
                "guarded": [{"kind": "service", "name": "nginx.service"},
                            {"kind": "registered", "name": "deploy-bot"}]}"#,
        )
        .unwrap();
        assert_eq!(policy.mode(), Mode::Kill);
        assert!(!policy.root_exec);
        assert_eq!(policy.fail_closed_on_loss(), Mode::Kill);
        assert_eq!(
            policy.guarded,
            [
                IdentitySelector {
                    kind: Kind::Service.into(),
                    name: "nginx.service".into()
                },
                IdentitySelector {
                    kind: Kind::Registered.into(),
                    name: "deploy-bot".into()
                }
            ]
        );
        assert_eq!(load_text("{}").unwrap(), default_policy());
    }

    #[test]
    fn a_bad_policy_file_is_refused_with_the_reason() {
        for (text, needle) in [
            (r#"{"mode": "block"}"#, "unknown variant"),
            (r#"{"root-exec": false}"#, "unknown field"),
            (r#"{"guarded": [{"kind": "service", "name": ""}]}"#, "empty"),
            (
                r#"{"guarded": [{"kind": "unknown", "name": "x"}]}"#,
                "identity kind \"unknown\"",
            ),
            ("{", "EOF"),
        ] {
            let e = load_text(text).unwrap_err().to_string();
            assert!(
                e.contains("policy.json") && e.contains(needle),
                "{text}: {e}"
            );
        }
    }
}
