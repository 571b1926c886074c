//! The operators' client under test: the real `recorder` binary that `cargo xtask tail`,
//! `replay`, `sessions` and `verify` run.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc::{Receiver, channel},
};

use std::time::{Duration, Instant};

use serde_json::Value;

/// The client binary: `RECORDER_OPERATOR_BIN`, else the workspace's debug build.
#[must_use]
pub fn binary() -> PathBuf {
    crate::binary("RECORDER_OPERATOR_BIN", "recorder")
}

/// The operators' client pointed at `url`, as the harness's admin operator when the
/// collector there has a test PKI (or as the operator in `pki_dir`), for a caller that
/// arranges its pipes itself.
#[must_use]
pub fn command(url: &str, pki_dir: Option<PathBuf>) -> Command {
    command_of(&binary(), url, pki_dir)
}

/// [`command`] with the client at `binary`.
fn command_of(binary: &std::path::Path, url: &str, pki_dir: Option<PathBuf>) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["--collector", url]);
    if let Some(dir) = pki_dir.or_else(|| crate::pki::of(url).map(|p| p.admin())) {
        cmd.arg("--pki-dir").arg(dir);
    }
    cmd
}

/// Runs one command against the collector at `url` to completion.
#[must_use]
pub fn run(url: &str, args: &[&str]) -> Output {
    command(url, None)
        .args(args)
        .output()
        .expect("run the operator client")
}

/// Runs one command with the client at `binary` (an installed package's, say).
#[must_use]
pub fn run_binary(binary: &std::path::Path, url: &str, args: &[&str]) -> Output {
    command_of(binary, url, None)
        .args(args)
        .output()
        .expect("run the operator client")
}

/// Runs one command as the operator whose certificates are in `pki_dir`.
#[must_use]
pub fn run_as(url: &str, pki_dir: &std::path::Path, args: &[&str]) -> Output {
    command(url, Some(pki_dir.to_path_buf()))
        .args(args)
        .output()
        .expect("run the operator client")
}

/// Each line of a successful command's output, parsed as JSON.
#[must_use]
pub fn json_lines(url: &str, args: &[&str]) -> Vec<Value> {
    json_lines_of(&binary(), url, args)
}

/// [`json_lines`] with the client at `binary`.
#[must_use]
pub fn json_lines_of(binary: &std::path::Path, url: &str, args: &[&str]) -> Vec<Value> {
    let out = run_binary(binary, url, args);
    assert!(
        out.status.success(),
        "recorder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Whether an exec event's argv holds `arg`.
#[must_use]
pub fn argv_has(event: &Value, arg: &str) -> bool {
    event["kind"] == "exec"
        && event["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == arg))
}

/// Every stored exec of `identity` from the last hour.
#[must_use]
pub fn execs_of(url: &str, identity: &str) -> Vec<Value> {
    execs_of_with(&binary(), url, identity)
}

fn execs_of_with(binary: &std::path::Path, url: &str, identity: &str) -> Vec<Value> {
    json_lines_of(
        binary,
        url,
        &[
            "search",
            "--json",
            "--kind",
            "exec",
            "--since",
            "1h",
            "--identity",
            identity,
            "--limit",
            "100000",
        ],
    )
}

/// Waits until the collector at `url` stores an exec of `identity` carrying `arg`, and
/// returns it. Searching by identity makes it independent of whatever else the host runs.
#[must_use]
pub fn stored_exec(url: &str, identity: &str, arg: &str, within: Duration) -> Value {
    stored_exec_with(&binary(), url, identity, arg, within)
}

/// [`stored_exec`] asked of the client at `binary` (an installed package's, say).
#[must_use]
pub fn stored_exec_with(
    binary: &std::path::Path,
    url: &str,
    identity: &str,
    arg: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = execs_of_with(binary, url, identity)
            .into_iter()
            .find(|v| argv_has(v, arg))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no stored exec of {identity} carrying {arg}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running `tail` printing JSON lines, its lines arriving on `lines`.
pub struct Tail {
    child: Child,
    pub lines: Receiver<Value>,
}

impl Tail {
    /// `tail --json ARGS`.
    #[must_use]
    pub fn start(url: &str, args: &[&str]) -> Self {
        Self::spawn(url, &["tail", "--json"], args)
    }

    /// `tail --format FORMAT ARGS`, for a format of JSON lines (`json`, `ocsf`).
    #[must_use]
    pub fn start_format(url: &str, format: &str, args: &[&str]) -> Self {
        Self::spawn(url, &["tail", "--format", format], args)
    }

    fn spawn(url: &str, tail: &[&str], args: &[&str]) -> Self {
        let mut child = command(url, None)
            .args(tail)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tail");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("tail printed {line:?}: {e}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
