//! The operators' client under test: the real `recorder` binary that `cargo xtask tail`,
//! `replay`, `sessions` and `verify` run.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc::{Receiver, channel},
};

use serde_json::Value;

/// The client binary: `RECORDER_OPERATOR_BIN`, else the workspace's debug build.
#[must_use]
pub fn binary() -> PathBuf {
    crate::binary("RECORDER_OPERATOR_BIN", "recorder")
}

/// Runs one command against the collector at `url` to completion.
#[must_use]
pub fn run(url: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .args(["--collector", url])
        .args(args)
        .output()
        .expect("run the operator client")
}

/// Each line of a successful command's output, parsed as JSON.
#[must_use]
pub fn json_lines(url: &str, args: &[&str]) -> Vec<Value> {
    let out = run(url, args);
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

/// A running `tail --json`, its lines arriving on `lines`.
pub struct Tail {
    child: Child,
    pub lines: Receiver<Value>,
}

impl Tail {
    #[must_use]
    pub fn start(url: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["--collector", url, "tail", "--json"])
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
