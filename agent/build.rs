//! Builds `agent-ebpf` for the BPF target and leaves the object in `OUT_DIR` for embedding.
//! Missing prerequisites are reported by name with the command that installs them, instead
//! of surfacing as a linker failure deep in a nested cargo run.
//!
//! aya-build relays every line of the nested cargo run as a `cargo:warning`, which cargo
//! shows as dozens of "warning: Compiling …" lines on every fresh build. So this script
//! runs aya-build in a copy of itself and keeps those lines to show only if the nested
//! build fails; its other instructions (`rerun-if-changed`, …) pass through.

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// Set in the copy of this script that runs aya-build.
const NESTED: &str = "RECORDER_EBPF_BUILD_NESTED";

fn main() -> anyhow::Result<()> {
    if env::var_os(NESTED).is_some() {
        return build_ebpf();
    }
    check_prerequisites()?;
    let mut child = Command::new(env::current_exe()?)
        .env(NESTED, "1")
        .stdout(Stdio::piped())
        .spawn()
        .context("running the eBPF build")?;
    let mut output = Vec::new();
    for line in BufReader::new(child.stdout.take().context("piped")?).lines() {
        let line = line?;
        if line.starts_with("cargo:warning=") {
            output.push(line);
        } else {
            println!("{line}");
        }
    }
    if !child.wait()?.success() {
        for line in output {
            println!("{line}");
        }
        bail!("the eBPF build of agent-ebpf failed: its output is above");
    }
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../agent-ebpf");
    let root = root
        .canonicalize()
        .with_context(|| format!("{}", root.display()))?;
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

fn check_prerequisites() -> anyhow::Result<()> {
    const FIX: &str = "run `cargo xtask setup`, which installs every prerequisite";
    if env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        bail!(
            "the eBPF build needs the nightly toolchain (`rustup toolchain install nightly`); {FIX}"
        );
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        bail!(
            "the eBPF build needs nightly's rust-src (`rustup component add rust-src --toolchain nightly`); {FIX}"
        );
    }
    let linker = env::var_os("PATH")
        .is_some_and(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()));
    if !linker {
        bail!(
            "the eBPF build needs bpf-linker on PATH (`cargo install bpf-linker@0.10.3 --locked`); {FIX}"
        );
    }
    Ok(())
}
