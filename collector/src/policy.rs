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
    parse(&text, path)
}

/// Checks `text`, the policy file at `path` (which every error names).
fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let file: PolicyFile = serde_json::from_str(text).map_err(|source| PolicyError::Parse {
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
    use proptest::{prelude::*, sample::Index};
    use serde_json::{Value, json};

    use super::*;
    use crate::grants::rules::MAX_NAME_BYTES;

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

    /// Where the properties say the text came from; every error must name it.
    const PATH: &str = "/etc/recorder/policy.json";

    fn parsed(text: &str) -> Result<Policy, String> {
        parse(text, Path::new(PATH)).map_err(|e| e.to_string())
    }

    /// Any text is a policy or an error naming the file.
    fn check_text(text: &str) -> Result<(), TestCaseError> {
        if let Err(e) = parsed(text) {
            prop_assert!(e.contains(PATH), "{}", e);
        }
        Ok(())
    }

    const FIELDS: [&str; 5] = [
        "mode",
        "root_exec",
        "guarded",
        "require_approval",
        "fail_closed_on_loss",
    ];

    /// JSON of any shape, its keys and strings often the file's own words.
    fn json() -> impl Strategy<Value = Value> {
        let word = || {
            prop_oneof![
                prop::sample::select(
                    [
                        &FIELDS[..],
                        &["kind", "name", "alert", "kill", "human", "service"]
                    ]
                    .concat()
                )
                .prop_map(str::to_owned),
                "\\PC{0,8}",
            ]
        };
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            word().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    fn modes() -> impl Strategy<Value = Mode> {
        prop::sample::select(vec![Mode::Alert, Mode::Kill])
    }

    #[test]
    fn seed_texts_are_policies_or_errors_naming_the_file() {
        let deep = "[".repeat(100_000);
        for text in [
            "",
            "null",
            "[]",
            "\u{feff}{}",
            "{} {}",
            r#"{"mode": null}"#,
            r#"{"mode": "alert", "mode": "kill"}"#,
            r#"{"root_exec": 1}"#,
            r#"{"guarded": {"kind": "human", "name": "alice"}}"#,
            r#"{"guarded": [{"kind": "human", "name": "alice", "grant": "g"}]}"#,
            r#"{"guarded": [{"kind": "human", "name": "   "}]}"#,
            r#"{"guarded": [{"kind": "unknown", "name": "x"}]}"#,
            r#"{"require_approval": true, "fail_closed_on_loss": "KILL"}"#,
            "1e999999",
            &deep,
        ] {
            check_text(text).unwrap();
        }
        let long = format!(
            r#"{{"guarded": [{{"kind": "service", "name": "{}"}}]}}"#,
            "x".repeat(MAX_NAME_BYTES + 1)
        );
        assert!(parsed(&long).unwrap_err().contains("guarded"));
    }

    proptest! {
        // About 1 s each in a debug build.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_text_is_a_policy_or_an_error_naming_the_file(
            text in prop_oneof!["\\PC{0,64}", json().prop_map(|v| v.to_string())],
            cut in any::<Index>(),
        ) {
            check_text(&text)?;
            let cut = text.floor_char_boundary(cut.index(text.len() + 1));
            check_text(&text[..cut])?;
        }

        /// Unknown fields are refused, so whatever parses is an object of the file's fields,
        /// or serde's other form of a struct: its fields in order, with no name to misspell.
        #[test]
        fn any_json_parses_only_as_the_policy_fields(value in json()) {
            check_text(&value.to_string())?;
            if parsed(&value.to_string()).is_ok() {
                match &value {
                    Value::Object(fields) => {
                        prop_assert!(fields.keys().all(|k| FIELDS.contains(&k.as_str())));
                    }
                    Value::Array(fields) => prop_assert!(fields.len() <= FIELDS.len()),
                    other => return Err(TestCaseError::fail(format!("{other} is a policy"))),
                }
            }
        }

        /// A file of the documented fields reads as it says: each field given or its
        /// default, and guarded identities exactly when each names a kind and a name.
        #[test]
        fn a_policy_file_reads_as_it_says(
            mode in prop::option::of(modes()),
            root_exec: Option<bool>,
            guarded in prop::option::of(prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(vec!["human", "service", "workload", "registered"])
                            .prop_map(str::to_owned),
                        prop::sample::select(vec!["unknown", "Human", ""]).prop_map(str::to_owned),
                        "\\PC{0,8}",
                    ],
                    prop_oneof![
                        "[a-z.@-]{1,20}",
                        Just(" ".to_owned()),
                        "x{250,260}",
                        "\\PC{0,12}",
                    ],
                ),
                0..4,
            )),
            require_approval: Option<bool>,
            fail_closed_on_loss in prop::option::of(modes()),
        ) {
            let name = |m: Mode| if m == Mode::Kill { "kill" } else { "alert" };
            let mut file = serde_json::Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    file.insert(key.to_owned(), value);
                }
            };
            put("mode", mode.map(|m| name(m).into()));
            put("root_exec", root_exec.map(Value::from));
            put("guarded", guarded.as_ref().map(|g| {
                g.iter().map(|(kind, name)| json!({"kind": kind, "name": name})).collect()
            }));
            put("require_approval", require_approval.map(Value::from));
            put("fail_closed_on_loss", fail_closed_on_loss.map(|m| name(m).into()));
            let guarded = guarded.unwrap_or_default();
            let nameable = guarded.iter().all(|(kind, name)| {
                Kind::from_name(kind).is_some()
                    && !name.trim().is_empty()
                    && name.len() <= MAX_NAME_BYTES
            });
            match parsed(&Value::Object(file).to_string()) {
                Ok(policy) => {
                    prop_assert!(nameable);
                    prop_assert_eq!(policy.mode(), mode.unwrap_or(Mode::Alert));
                    prop_assert_eq!(policy.root_exec, root_exec.unwrap_or(true));
                    prop_assert_eq!(policy.require_approval, require_approval.unwrap_or(false));
                    prop_assert_eq!(
                        policy.fail_closed_on_loss(),
                        fail_closed_on_loss.unwrap_or(Mode::Alert)
                    );
                    let named: Vec<(String, String)> = policy
                        .guarded
                        .iter()
                        .map(|s| {
                            let kind = Kind::try_from(s.kind).unwrap().name().to_owned();
                            (kind, s.name.clone())
                        })
                        .collect();
                    prop_assert_eq!(named, guarded);
                }
                Err(e) => {
                    prop_assert!(!nameable, "{}", e);
                    prop_assert!(e.contains(PATH) && e.contains("guarded"), "{}", e);
                }
            }
        }
    }
}
