//! Harness for the kernel and end-to-end tiers: runs the real agent binary, reads its JSON
//! lines, and drives real processes on real ptys. Nothing here is mocked.
#![expect(
    clippy::missing_panics_doc,
    reason = "a test harness reports failure by panicking"
)]

pub mod agent;
pub mod pty;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// Root of the workspace this crate lives in.
#[must_use]
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Whether a privileged test can run. Without root it is skipped with a message, except under
/// `CI=true`, where a privileged test that cannot run is a failure.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (CAP_BPF, CAP_PERFMON) and CI=true forbids skipping it"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// A string no other process on the host will use, to find one test's events.
#[must_use]
pub fn marker(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "recorder-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A test pattern in which every 4 KiB block names its own index, so any captured block can
/// be checked in place even when others were lost.
#[must_use]
pub fn block_pattern(blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * 4096);
    for b in 0..blocks {
        let start = out.len();
        let mut line = 0;
        while out.len() - start < 4096 {
            let text = format!("block {b:06} line {line:03} the quick brown fox\n");
            let room = 4096 - (out.len() - start);
            out.extend_from_slice(&text.as_bytes()[..text.len().min(room)]);
            line += 1;
        }
    }
    out
}
