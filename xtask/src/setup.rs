//! `cargo xtask setup`: idempotent. Each step checks first and installs only what is missing.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Pinned: newer bpf-linker releases need a system LLVM this machine kind does not have.
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages the build uses (`protoc`, for `proto/`) and the test suite and
/// benchmarks run: `dd`, `cat`, `true`, `echo` and `sh`, a real login (sshd with PAM, the
/// ssh client, sudo, useradd), tmux (a program with terminals of its own), and systemd (its
/// `systemd-analyze` checks the units in deploy/systemd, which run under it as PID 1 of a
/// PID namespace), `dpkg-shlibdeps` (`cargo xtask package`, which the tests install), and a
/// PostgreSQL server (the collector's tests run on both backends; each test run starts a
/// server of its own), and the capture benchmark's peers: auditd for the exec loop (the
/// benchmark starts and stops it, and nothing else runs it) and tlog for the pty floods.
const DEBIAN_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "coreutils",
    "dash",
    "openssh-server",
    "openssh-client",
    "sudo",
    "passwd",
    "tmux",
    "systemd",
    "dpkg-dev",
    "postgresql",
    "auditd",
    "tlog",
];

/// Python packages the tests use: a Python client generated from `proto/` (the end-to-end
/// tier), and X.509 and Ed25519 for the independent bundle verifier (`tests/verify_bundle.py`).
const PYTHON_PACKAGES: &[&str] = &["grpcio", "grpcio-tools", "cryptography"];

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    python_packages()
}

fn python_packages() -> anyhow::Result<()> {
    if output("python3", &["-c", "import grpc, grpc_tools, cryptography"]).is_some() {
        return Ok(());
    }
    let mut args = vec!["-m", "pip", "install", "--quiet"];
    args.extend(PYTHON_PACKAGES);
    run_step("Python packages", "python3", &args)
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_step(what: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("setup: {what}: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("{what}: cannot run {program}"))?;
    if !status.success() {
        bail!(
            "{what}: `{program} {}` failed with {status}",
            args.join(" ")
        );
    }
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])
        .context("rustup is needed to build the eBPF programs")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run_step(
            "nightly toolchain",
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run_step(
            "nightly rust-src",
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output("bpf-linker", &["--version"]).unwrap_or_default();
    if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    run_step("bpf-linker", &cargo, &["install", &spec, "--locked"])
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {missing:?}: run `cargo xtask setup` as root, or apt-get install them"
        );
    }
    run_step("apt index", "apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    run_step("Debian packages", "apt-get", &args)
}
