//! A daemon's settings (docs/deploy.md): its command-line flags, and a TOML file whose keys
//! are the same flags' long names. A flag on the command line overrides the file;
//! `--config PATH` picks another file than the daemon's default; `--print-config` shows
//! every effective setting and where it came from.
//!
//! The file is turned into the flags it stands for and parsed with them by the daemon's own
//! `clap` definition, so each flag has one parser and one set of checks whichever way it is
//! given, and a flag added to a daemon is a setting of its file at once.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, parser::ValueSource,
};
use toml::{Spanned, Value};

const CONFIG: &str = "config";
const PRINT_CONFIG: &str = "print-config";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path} line {line}: {message}")]
    Setting {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The command line (with the file's settings) is wrong; clap's own error, which also
    /// carries `--help` and `--version`.
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

/// A daemon's settings, parsed.
#[derive(Debug)]
pub struct Settings<C> {
    pub cli: C,
    /// Every setting's effective value and origin, in the order the daemon defines them:
    /// what `--print-config` prints.
    pub effective: String,
    /// Whether `--print-config` was given: print `effective` and exit.
    pub print_only: bool,
}

/// Where one flag's value came from.
enum Origin {
    CommandLine,
    File { line: usize },
    Default,
}

/// A daemon's start: its settings from the process's arguments and `default_file`. Help,
/// version and command-line errors are printed by clap, which exits; with
/// `--print-config` the effective settings are printed and `None` returned: the daemon
/// exits without starting.
pub fn daemon<C: CommandFactory + FromArgMatches>(
    default_file: &Path,
) -> Result<Option<C>, SettingsError> {
    match load::<C>(default_file) {
        Ok(settings) if settings.print_only => {
            print!("{}", settings.effective);
            Ok(None)
        }
        Ok(settings) => Ok(Some(settings.cli)),
        Err(SettingsError::Cli(e)) => e.exit(),
        Err(e) => Err(e),
    }
}

/// Parses the process's arguments and `default_file` (or `--config`'s file) into `C`.
/// `default_file` may be missing; a `--config` file must exist.
pub fn load<C: CommandFactory + FromArgMatches>(
    default_file: &Path,
) -> Result<Settings<C>, SettingsError> {
    load_from(std::env::args_os().collect(), default_file)
}

/// [`load`] from the given arguments (the program name first).
pub fn load_from<C: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
    default_file: &Path,
) -> Result<Settings<C>, SettingsError> {
    let command = with_config_flags(C::command(), default_file);
    // First pass: which flags the command line gives, and which file to read. Required
    // flags may come from the file, so nothing is required yet.
    let mut relaxed = command.clone().mut_args(|a| a.required(false));
    let groups: Vec<String> = relaxed
        .get_groups()
        .map(|g| g.get_id().to_string())
        .collect();
    for group in groups {
        relaxed = relaxed.mut_group(group, |g| g.required(false));
    }
    let given = relaxed.try_get_matches_from(&args)?;
    let path = given
        .get_one::<PathBuf>(CONFIG)
        .cloned()
        .unwrap_or_else(|| default_file.to_path_buf());
    let explicit = given.value_source(CONFIG) == Some(ValueSource::CommandLine);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
        Err(e) => {
            return Err(SettingsError::File {
                path,
                message: e.to_string(),
            });
        }
    };
    let from_file = file_flags(&command, &given, &path, &text)?;

    let mut full = Vec::with_capacity(args.len() + from_file.len());
    let mut rest = args.into_iter();
    full.extend(rest.next());
    let mut lines = BTreeMap::new();
    for flag in from_file {
        lines.insert(flag.id, (flag.long, flag.line));
        full.extend(flag.tokens);
    }
    full.extend(rest);
    let matches = command.clone().try_get_matches_from(full).map_err(|e| {
        // A bad value from the file: say which line it is on.
        let culprit = e
            .get(clap::error::ContextKind::InvalidArg)
            .map(ToString::to_string)
            .unwrap_or_default();
        let from_file = lines.values().find(|(long, _)| {
            culprit == format!("--{long}") || culprit.starts_with(&format!("--{long} "))
        });
        match from_file {
            Some((_, line)) => SettingsError::Setting {
                path: path.clone(),
                line: *line,
                message: e
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned(),
            },
            None => SettingsError::Cli(e),
        }
    })?;
    let effective = describe(&command, &matches, &lines, &path);
    let print_only = matches.get_flag(PRINT_CONFIG);
    let cli = C::from_arg_matches(&matches)?;
    Ok(Settings {
        cli,
        effective,
        print_only,
    })
}

fn with_config_flags(command: Command, default_file: &Path) -> Command {
    command
        .arg(
            Arg::new(CONFIG)
                .long(CONFIG)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "The settings file: TOML whose keys are these flags' long names; flags \
                     given here override it [default: {}]",
                    default_file.display()
                )),
        )
        .arg(
            Arg::new(PRINT_CONFIG)
                .long(PRINT_CONFIG)
                .action(ArgAction::SetTrue)
                .help("Print every effective setting and where it came from, then exit"),
        )
}

/// One setting of the file, as the flag it stands for.
struct FileFlag {
    id: String,
    long: String,
    line: usize,
    tokens: Vec<OsString>,
}

/// The flags the file's settings stand for, except those the command line gives itself.
fn file_flags(
    command: &Command,
    given: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<FileFlag>, SettingsError> {
    let table: BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => SettingsError::Setting {
                path: path.to_path_buf(),
                line: line_of(text, span.start),
                message: e.message().to_owned(),
            },
            None => SettingsError::File {
                path: path.to_path_buf(),
                message: e.message().to_owned(),
            },
        })?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let line = line_of(text, key.span().start);
        let bad = |message: String| SettingsError::Setting {
            path: path.to_path_buf(),
            line,
            message,
        };
        let name = key.get_ref();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && !is_meta(a))
            .ok_or_else(|| bad(format!("unknown setting `{name}`")))?;
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let flag = format!("--{name}");
        let tokens = match (arg.get_action(), value.get_ref()) {
            (ArgAction::SetTrue, Value::Boolean(true)) => vec![flag.into()],
            (ArgAction::SetTrue, Value::Boolean(false)) => Vec::new(),
            (ArgAction::SetTrue, _) => return Err(bad(format!("`{name}` is true or false"))),
            (ArgAction::Append, Value::Array(items)) => items
                .iter()
                .map(|item| scalar(item).map(|v| format!("{flag}={v}").into()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("`{name}` is a list of strings or numbers")))?,
            (ArgAction::Set | ArgAction::Append, v) => {
                let v =
                    scalar(v).ok_or_else(|| bad(format!("`{name}` is a string or a number")))?;
                vec![format!("{flag}={v}").into()]
            }
            _ => return Err(bad(format!("`{name}` cannot be set in a file"))),
        };
        flags.push(FileFlag {
            id: arg.get_id().to_string(),
            long: name.clone(),
            line,
            tokens,
        });
    }
    Ok(flags)
}

/// `--config`, `--print-config`, `--help` and `--version` are about the file, not in it.
fn is_meta(arg: &Arg) -> bool {
    matches!(
        arg.get_id().as_str(),
        CONFIG | PRINT_CONFIG | "help" | "version"
    )
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// One TOML line per setting: its effective value (commented out when unset) and where it
/// came from.
fn describe(
    command: &Command,
    matches: &ArgMatches,
    lines: &BTreeMap<String, (String, usize)>,
    path: &Path,
) -> String {
    let mut out = String::new();
    for arg in command.get_arguments().filter(|a| !is_meta(a)) {
        let (Some(name), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        let origin = match (lines.get(id), matches.value_source(id)) {
            (Some((_, line)), _) => Origin::File { line: *line },
            (None, Some(ValueSource::CommandLine)) => Origin::CommandLine,
            _ => Origin::Default,
        };
        let origin = match origin {
            Origin::CommandLine => "command line".to_owned(),
            Origin::File { line } => format!("{} line {line}", path.display()),
            Origin::Default => "default".to_owned(),
        };
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            Some(matches.get_flag(id).to_string())
        } else {
            matches.get_raw(id).map(|values| {
                let quoted: Vec<String> = values
                    .map(|v| toml_string(&without_passwords(&v.to_string_lossy())))
                    .collect();
                if matches!(arg.get_action(), ArgAction::Append) {
                    format!("[{}]", quoted.join(", "))
                } else {
                    quoted.join(", ")
                }
            })
        };
        let _ = match value {
            Some(value) => writeln!(out, "{name} = {value}  # {origin}"),
            None => writeln!(out, "# {name} is not set"),
        };
    }
    out
}

/// `value` with the password of a URL's user (`scheme://user:password@host/...`) and the
/// value of a `password=` query parameter (libpq takes both) shown as `***`: a setting may
/// name a database with its credentials, and what is printed or logged must not.
#[must_use]
pub fn without_passwords(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let user_password = authority
        .rsplit_once('@')
        .and_then(|(user, host)| Some((user.split_once(':')?.0, host)));
    let authority = match user_password {
        Some((name, host)) => format!("{name}:***@{host}"),
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query
                .split_once('#')
                .map_or((query, None), |(q, f)| (q, Some(f)));
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => p.to_owned(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", params.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// A TOML basic string (numbers stay numbers).
fn toml_string(s: &str) -> String {
    if s.parse::<i64>().is_ok() {
        return s.to_owned();
    }
    Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Daemon {
        #[arg(long, default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, default_value_t = 10)]
        max_bytes: u64,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        peer: Vec<String>,
        #[arg(long)]
        policy: Option<PathBuf>,
    }

    fn load(file: &str, args: &[&str]) -> Result<Settings<Daemon>, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, file).unwrap();
        let mut all = vec![OsString::from("d")];
        all.extend(args.iter().map(OsString::from));
        load_from(all, &path)
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        for (value, shown) in [
            (
                "postgresql://rec:s3cret@db:5432/ev?sslmode=require",
                "postgresql://rec:***@db:5432/ev?sslmode=require",
            ),
            (
                "postgresql:///ev?user=rec&password=s3cret&host=/run",
                "postgresql:///ev?user=rec&password=***&host=/run",
            ),
            ("postgres://a:b:c@h/d#p", "postgres://a:***@h/d#p"),
            ("postgres://rec@db/ev", "postgres://rec@db/ev"),
            ("sqlite:///var/lib/r.db", "sqlite:///var/lib/r.db"),
            ("127.0.0.1:7443", "127.0.0.1:7443"),
        ] {
            assert_eq!(without_passwords(value), shown, "{value}");
        }
        let s = load("", &["--listen", "postgresql://rec:s3cret@db/ev"]).unwrap();
        assert!(!s.effective.contains("s3cret"), "{}", s.effective);
    }

    #[test]
    fn the_file_sets_and_the_command_line_overrides() {
        let s = load(
            "listen = \"0.0.0.0:9\"\nmax-bytes = 5\nverbose = true\npeer = [\"a\", \"b\"]\n",
            &["--max-bytes", "7"],
        )
        .unwrap();
        assert_eq!(s.cli.listen, "0.0.0.0:9");
        assert_eq!(s.cli.max_bytes, 7);
        assert!(s.cli.verbose);
        assert_eq!(s.cli.peer, ["a", "b"]);
        assert!(!s.print_only);
        assert!(
            s.effective.contains("listen = \"0.0.0.0:9\"  # "),
            "{}",
            s.effective
        );
        assert!(s.effective.contains("d.toml line 1"), "{}", s.effective);
        assert!(
            s.effective.contains("max-bytes = 7  # command line"),
            "{}",
            s.effective
        );
        assert!(
            s.effective.contains("peer = [\"a\", \"b\"]"),
            "{}",
            s.effective
        );
        assert!(
            s.effective.contains("# policy is not set"),
            "{}",
            s.effective
        );
    }

    #[test]
    fn a_list_on_the_command_line_replaces_the_files() {
        let s = load("peer = [\"a\"]\n", &["--peer", "c"]).unwrap();
        assert_eq!(s.cli.peer, ["c"]);
    }

    #[test]
    fn no_file_is_fine_unless_named() {
        let s = load_from::<Daemon>(vec!["d".into()], Path::new("/nonexistent/d.toml")).unwrap();
        assert_eq!(s.cli.max_bytes, 10);
        assert!(
            s.effective.contains("max-bytes = 10  # default"),
            "{}",
            s.effective
        );
        let e = load_from::<Daemon>(
            vec!["d".into(), "--config".into(), "/nonexistent/x.toml".into()],
            Path::new("/nonexistent/d.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/x.toml: "), "{e}");
    }

    #[test]
    fn bad_settings_name_the_file_and_line() {
        let cases = [
            (
                "listen = \"x\"\nlisen = \"y\"\n",
                2,
                "unknown setting `lisen`",
            ),
            ("\n\nmax-bytes = \"many\"\n", 3, "invalid value"),
            ("verbose = 3\n", 1, "true or false"),
            ("listen = [1]\n", 1, "string or a number"),
            ("max-bytes = \n", 1, ""),
            ("config = \"x\"\n", 1, "unknown setting `config`"),
        ];
        for (file, line, needle) in cases {
            match load(file, &[]) {
                Err(SettingsError::Setting {
                    line: got, message, ..
                }) => {
                    assert_eq!(got, line, "{file:?}: {message}");
                    assert!(message.contains(needle), "{file:?}: {message}");
                }
                other => panic!("{file:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_required_flag_may_come_from_the_file() {
        #[derive(Debug, Parser)]
        #[command(group = clap::ArgGroup::new("sink").required(true).args(["spool", "stdout"]))]
        struct Agent {
            #[arg(long)]
            spool: Option<PathBuf>,
            #[arg(long)]
            stdout: bool,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "spool = \"/var/spool/x\"\n").unwrap();
        let s = load_from::<Agent>(vec!["a".into()], &path).unwrap();
        assert_eq!(s.cli.spool.as_deref(), Some(Path::new("/var/spool/x")));
        std::fs::write(&path, "").unwrap();
        let e = load_from::<Agent>(vec!["a".into()], &path).unwrap_err();
        assert!(matches!(e, SettingsError::Cli(_)), "{e}");
    }

    #[test]
    fn print_config_is_a_flag() {
        let s = load("", &["--print-config"]).unwrap();
        assert!(s.print_only);
    }
}
