mod bench;
mod package;
mod pki;
mod run;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker, Debian packages.
    Setup,
    /// Set up, build, and run the collector on the embedded store and the agent on this
    /// host, connected. Stop both with Ctrl-C.
    Run {
        /// Where the collector listens (the operator tools' default is this address).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: String,
        /// The collector's SQLite store.
        #[arg(long, default_value = "/var/lib/recorder/collector.db")]
        store: PathBuf,
        /// The agent's spool.
        #[arg(long, default_value = "/var/spool/recorder")]
        spool: PathBuf,
        /// The local PKI (made on first start): the CA, and the collector's, the agent's and
        /// the local operator's certificates.
        #[arg(long, default_value = "/var/lib/recorder/pki")]
        pki_dir: PathBuf,
        /// Run the binaries in this directory as they are, instead of setting up and building
        /// release ones.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Extra agent flags, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Follow stored events live: `tail [--since 10m] [--host H] [--identity I] [--session S]
    /// [--kind K] [--json]`.
    Tail(Operator),
    /// Stored events in a time window: `search [--since 1h] [filters] [--json]`.
    Search(Operator),
    /// List login sessions and who is behind them: `sessions [--host H] [--json] [--limit N]`.
    Sessions(Operator),
    /// Play a session's terminal output back: `replay SESSION [--speed N]`.
    Replay(Operator),
    /// The hosts: live or silent, last contact, agent version, newest chain:
    /// `hosts [--json]`.
    Hosts(Operator),
    /// Check everything stored (chains, hosts' signed logs, columns, grants); non-zero exit
    /// on any failure: `verify [--host H]`, or, checked here trusting only the CA,
    /// `verify --local [--host H]`.
    Verify(Operator),
    /// A session's evidence bundle, for offline checking: `export --session KEY -o FILE`.
    Export(Operator),
    /// Check an evidence bundle with no network: `verify-bundle FILE [--ca ca.pem]`.
    VerifyBundle(Operator),
    /// Exempt a session from retention (a legal hold): `hold KEY [--reason R]`.
    Hold(Operator),
    /// Just-in-time grants: `grant create (--user U | --unit U | --container C | --identity I)
    /// [--host H] --ttl 30m [--on-expiry kill|alert] --reason R`, `grant list [--all]`,
    /// `grant revoke ID`, `grant extend ID --by 15m`.
    Grant(Operator),
    /// Per identity: grants held, grants never used, violations, grants to revoke:
    /// `review [--since 7d] [--json]`.
    Review(Operator),
    /// Set up, build, and run every test tier (unit, kernel, end to end).
    Test {
        /// Extra arguments for the test binaries, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build in release mode, and build the Debian packages recorder-agent,
    /// recorder-collector and recorder (docs/deploy.md, "Packages").
    Package {
        /// Package the binaries in this directory as they are (a debug build, say), instead
        /// of setting up and building release ones.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Where the packages go [default: target/debian].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Set up, build in release mode, and run a benchmark.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// One timed loop of a syscall, for `bench enforce`: run in a process of its own, so the
    /// bench's own threads (which read the agent's and the collector's output) neither share
    /// its CPU time nor move it between CPUs.
    #[command(hide = true)]
    SyscallLoop {
        #[arg(value_enum)]
        call: bench::Call,
    },
}

/// Arguments for the operators' client (`operator/`), passed through as they are; its
/// `--collector URL` (default `http://127.0.0.1:7443`) says which collector to ask.
#[derive(clap::Args)]
struct Operator {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let task = Cli::parse().task;
    let operator = |name: &str, op: Operator| -> anyhow::Result<()> {
        setup::run()?;
        let mut args = vec![
            "run",
            "--quiet",
            "--release",
            "--package",
            "operator",
            "--",
            name,
        ];
        args.extend(op.args.iter().map(String::as_str));
        let status = cargo_command(&args)
            .status()
            .context("running the operators' client")?;
        if !status.success() {
            // The client (or cargo) has said what failed: its exit status is passed on as
            // it is, with no second message (`verify`'s says whether the evidence held).
            std::process::exit(status.code().unwrap_or(1));
        }
        Ok(())
    };
    match task {
        Task::Setup => setup::run(),
        Task::Run {
            listen,
            store,
            spool,
            pki_dir,
            bin_dir,
            args,
        } => {
            let bin_dir = if let Some(dir) = bin_dir {
                dir
            } else {
                setup::run()?;
                build_binaries(&["--release"])?;
                tests::workspace_root().join("target/release")
            };
            run::main_job(&run::MainJob {
                bin_dir,
                listen: &listen,
                store: &store,
                spool: &spool,
                pki_dir: &pki_dir,
                agent_args: &args,
            })
        }
        Task::Tail(op) => operator("tail", op),
        Task::Search(op) => operator("search", op),
        Task::Sessions(op) => operator("sessions", op),
        Task::Replay(op) => operator("replay", op),
        Task::Verify(op) => operator("verify", op),
        Task::Export(op) => operator("export", op),
        Task::VerifyBundle(op) => operator("verify-bundle", op),
        Task::Hold(op) => operator("hold", op),
        Task::Hosts(op) => operator("hosts", op),
        Task::Grant(op) => operator("grant", op),
        Task::Review(op) => operator("review", op),
        Task::Test { args } => test(&args),
        Task::Package { bin_dir, out } => {
            let bin_dir = if let Some(dir) = bin_dir {
                dir
            } else {
                setup::run()?;
                build_binaries(&["--release"])?;
                target_dir().join("release")
            };
            let out = out.unwrap_or_else(|| target_dir().join("debian"));
            for deb in package::build(&bin_dir, &out)? {
                println!("{}", deb.display());
            }
            Ok(())
        }
        Task::Bench { which } => {
            setup::run()?;
            build_binaries(&["--release"])?;
            bench::run(&which)
        }
        Task::SyscallLoop { call } => {
            bench::syscall_loop(call);
            Ok(())
        }
    }
}

/// The whole suite (`args` go to every test binary), then the tiers that run on both stores
/// again on PostgreSQL; one line totals both.
fn test(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    build_binaries(&[])?;
    // Every tier runs even when one fails, and the job still fails. One test at a
    // time: the kernel tier runs real agents, and two at once would each see (and
    // count the loss of) the other's workload; one agent per host is the rule anyway.
    let mut test = vec!["test", "--no-fail-fast", "--", "--test-threads=1"];
    test.extend(args.iter().map(String::as_str));
    let sqlite = test_with_summary(&test, &[]);
    // The collector and end-to-end tiers again, on a PostgreSQL server of their own:
    // both backends pass the same tests.
    let mut again = vec!["test", "-p", "tests", "--no-fail-fast"];
    again.extend(["--test", "collector", "--test", "end_to_end"]);
    again.extend(["--", "--test-threads=1"]);
    again.extend(args.iter().map(String::as_str));
    let postgres = test_with_summary(&again, &[("RECORDER_TEST_STORE", "postgres")]);
    let (sqlite, postgres) = (sqlite?, postgres?);
    println!(
        "tests: {} passed, {} failed",
        sqlite.0 + postgres.0,
        sqlite.1 + postgres.1
    );
    if sqlite.1 + postgres.1 > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// Runs `cargo test` with `env`, passing its output through; returns the tests passed and
/// failed in every test binary, or an error if cargo failed (a build, say) with none failed.
fn test_with_summary(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(u64, u64)> {
    let mut child = cargo_command(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in
        std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped")))
    {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .split_whitespace()
                            .last()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("cargo test failed with {status}");
    }
    Ok((passed, failed))
}

/// cargo with `args`, in the workspace root, with the same toolchain that runs xtask.
fn cargo_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(tests::workspace_root());
    cmd
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else the workspace's `target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| tests::workspace_root().join("target"), PathBuf::from)
}

/// Builds the three binaries: agent, collector and the operators' client.
fn build_binaries(profile: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["build"];
    args.extend(profile);
    args.extend([
        "--package",
        "agent",
        "--package",
        "collector",
        "--package",
        "operator",
    ]);
    cargo(&args)
}

/// Runs cargo in the workspace root.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// Runs cargo in the workspace root with `env` added to its environment.
fn cargo_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
    let status = cargo_command(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}
