//! `cargo xtask package`: Debian packages of the agent, the collector and the operators'
//! client, each built with `dpkg-deb` from a staging tree written here (docs/deploy.md,
//! "Packages"). The staging trees sit in `OUT/stage/debian/PACKAGE`, the layout
//! `dpkg-shlibdeps` expects.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Whom the packages name as their maintainer: the project's own commit identity.
const MAINTAINER: &str =
    "Privileged-activity recorder maintainers <maintainers@users.noreply.b-seed-c53d704b.example>";

/// One package: a binary of the workspace under its installed name, and what goes with it.
struct Package {
    name: &'static str,
    /// The binary as cargo builds it, and as installed in `/usr/bin`.
    built: &'static str,
    installed: &'static str,
    summary: &'static str,
    description: &'static str,
    /// Its unit, from `deploy/systemd`.
    unit: Option<&'static str>,
    /// Its settings file from `deploy/etc`, installed in `/etc/recorder` as a conffile, with
    /// the mode it ships with (postinst gives the collector's to its user's group).
    config: Option<(&'static str, u32)>,
    /// Maintainer scripts from `deploy/debian`, named `PACKAGE.SCRIPT`.
    scripts: &'static [&'static str],
    /// Dependencies besides the shared libraries the binary links.
    depends: &'static [&'static str],
    recommends: &'static [&'static str],
}

const PACKAGES: [Package; 3] = [
    Package {
        name: "recorder-agent",
        built: "agent",
        installed: "recorder-agent",
        summary: "Privileged-activity recorder: host agent",
        description: "Records every exec and terminal write on this host with eBPF tracepoints, \
                      chains the evidence, spools it durably and ships it to the collector \
                      over mutual TLS; enforces just-in-time grants. It runs as root \
                      (recorder-agent.service), started by nothing until enabled.",
        unit: Some("recorder-agent.service"),
        config: Some(("agent.toml", 0o644)),
        scripts: &["postinst", "prerm", "postrm"],
        depends: &[],
        recommends: &[],
    },
    Package {
        name: "recorder-collector",
        built: "collector",
        installed: "recorder-collector",
        summary: "Privileged-activity recorder: collector",
        description: "Verifies and stores the agents' chained evidence, serves the operators' \
                      queries and keeps the just-in-time grants the agents enforce. It runs \
                      as the system user recorder (recorder-collector.service), started by \
                      nothing until enabled.",
        unit: Some("recorder-collector.service"),
        config: Some(("collector.toml", 0o640)),
        scripts: &["postinst", "prerm", "postrm"],
        depends: &["adduser"],
        // Its certificates are made with `recorder pki`.
        recommends: &["recorder"],
    },
    Package {
        name: "recorder",
        built: "recorder",
        installed: "recorder",
        summary: "Privileged-activity recorder: operators' client",
        description: "Follows, searches, replays, exports and verifies the evidence the \
                      collector stores; manages grants, hosts, join tokens and the \
                      deployment's CA.",
        unit: None,
        config: None,
        scripts: &[],
        depends: &[],
        recommends: &[],
    },
];

/// Builds the three packages from the binaries in `bin_dir` into `out`; returns their paths.
pub fn build(bin_dir: &Path, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let arch = output("dpkg", &["--print-architecture"])?;
    let version = env!("CARGO_PKG_VERSION");
    let workspace = tests::workspace_root();
    let head = output(
        "git",
        &[
            "-C",
            workspace.to_str().context("a UTF-8 workspace path")?,
            "log",
            "-1",
            "--date=format:%Y",
            "--format=%H%n%aD%n%ad",
        ],
    )?;
    let mut head = head.lines();
    let head = Head {
        commit: head.next().unwrap_or_default(),
        date: head.next().unwrap_or_default(),
        year: head.next().unwrap_or_default(),
    };
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    // dpkg-shlibdeps reads the source package's control file, whatever it says.
    dir(&stage.join("debian"))?;
    fs::write(
        stage.join("debian/control"),
        "Source: recorder\n\nPackage: recorder\nArchitecture: any\n",
    )?;
    PACKAGES
        .iter()
        .map(|package| {
            let root = stage.join("debian").join(package.name);
            let depends = stage_tree(package, bin_dir, &root, &stage)?;
            doc(package, &root, version, &head)?;
            md5sums(&root)?;
            control(package, &root, version, &arch, &depends)?;
            let deb = out.join(format!("{}_{version}_{arch}.deb", package.name));
            // Its progress on standard error: standard output lists the packages alone.
            run(Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&root)
                .arg(&deb)
                .stdout(std::io::stderr()))?;
            Ok(deb)
        })
        .collect()
}

/// Writes the package's files under `root`; returns its dependencies: the shared libraries
/// its binary links, as `dpkg-shlibdeps` finds them, and the package's own.
fn stage_tree(
    package: &Package,
    bin_dir: &Path,
    root: &Path,
    stage: &Path,
) -> anyhow::Result<String> {
    let deploy = tests::workspace_root().join("deploy");
    let binary = root.join("usr/bin").join(package.installed);
    dir(binary.parent().unwrap())?;
    // As dh_strip does: no symbols or debug information in the installed binary.
    run(Command::new("strip")
        .args(["--remove-section=.comment", "--remove-section=.note", "-o"])
        .arg(&binary)
        .arg(bin_dir.join(package.built)))?;
    set_mode(&binary, 0o755)?;
    if let Some(unit) = package.unit {
        let to = root.join("usr/lib/systemd/system");
        dir(&to)?;
        file(&deploy.join("systemd").join(unit), &to.join(unit), 0o644)?;
    }
    let debian = root.join("DEBIAN");
    dir(&debian)?;
    if let Some((name, mode)) = package.config {
        let etc = root.join("etc/recorder");
        dir(&etc)?;
        file(&deploy.join("etc").join(name), &etc.join(name), mode)?;
        fs::write(debian.join("conffiles"), format!("/etc/recorder/{name}\n"))?;
        set_mode(&debian.join("conffiles"), 0o644)?;
    }
    for script in package.scripts {
        let from = deploy
            .join("debian")
            .join(format!("{}.{script}", package.name));
        file(&from, &debian.join(script), 0o755)?;
    }
    let shlibs = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(binary.strip_prefix(stage).unwrap())
        .current_dir(stage)
        .output()
        .context("running dpkg-shlibdeps (apt-get install dpkg-dev)")?;
    if !shlibs.status.success() {
        bail!(
            "dpkg-shlibdeps {}: {}",
            binary.display(),
            String::from_utf8_lossy(&shlibs.stderr)
        );
    }
    let shlibs = String::from_utf8(shlibs.stdout)?;
    let linked = shlibs
        .trim()
        .strip_prefix("shlibs:Depends=")
        .with_context(|| format!("dpkg-shlibdeps said {shlibs:?}"))?;
    Ok(std::iter::once(linked)
        .chain(package.depends.iter().copied())
        .collect::<Vec<_>>()
        .join(", "))
}

/// `DEBIAN/md5sums`, which `dpkg --verify` checks the installed files against; not the
/// conffiles (all of `/etc`), which dpkg keeps sums of itself.
fn md5sums(root: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    let mut next = vec![root.to_path_buf()];
    while let Some(dir) = next.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path != root.join("DEBIAN") && path != root.join("etc") {
                    next.push(path);
                }
            } else {
                files.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
    }
    files.sort();
    let sums = Command::new("md5sum")
        .args(&files)
        .current_dir(root)
        .output()
        .context("running md5sum")?;
    if !sums.status.success() {
        bail!("md5sum: {}", String::from_utf8_lossy(&sums.stderr));
    }
    let path = root.join("DEBIAN/md5sums");
    fs::write(&path, sums.stdout)?;
    set_mode(&path, 0o644)
}

/// `DEBIAN/control`, once the tree is complete: its size is one of the fields.
fn control(
    package: &Package,
    root: &Path,
    version: &str,
    arch: &str,
    depends: &str,
) -> anyhow::Result<()> {
    let mut text = format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {}\nDepends: {depends}\n",
        package.name,
        seal(root)?,
    );
    if !package.recommends.is_empty() {
        let _ = writeln!(text, "Recommends: {}", package.recommends.join(", "));
    }
    let _ = write!(
        text,
        "Section: admin\nPriority: optional\nDescription: {}\n{}",
        package.summary,
        wrap(package.description),
    );
    let path = root.join("DEBIAN/control");
    fs::write(&path, text)?;
    set_mode(&path, 0o644)
}

/// The description's extended lines: each starting with a space, at most 80 columns.
fn wrap(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > 78 {
            let _ = writeln!(out, " {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, " {line}");
    out
}

/// Gives every directory under `root` mode 0755 whatever the umask (dpkg-deb refuses a
/// `DEBIAN` directory with another, and installs directories with the mode staged); returns
/// what the files outside `DEBIAN` take, in KiB, as `Installed-Size` counts it.
fn seal(root: &Path) -> anyhow::Result<u64> {
    let mut kib = 0;
    let mut next = vec![root.to_path_buf()];
    while let Some(dir) = next.pop() {
        set_mode(&dir, 0o755)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                next.push(entry.path());
            } else if !entry.path().starts_with(root.join("DEBIAN")) {
                kib += entry.metadata()?.len().div_ceil(1024);
            }
        }
    }
    Ok(kib)
}

/// The commit built, with its date: the changelog's one entry, and the copyright's year.
struct Head<'a> {
    commit: &'a str,
    /// RFC 2822, as a changelog's trailer has it.
    date: &'a str,
    year: &'a str,
}

/// `/usr/share/doc/PACKAGE`: `copyright`, and `changelog.gz` as a native package has it,
/// one entry naming the commit built.
fn doc(package: &Package, root: &Path, version: &str, head: &Head) -> anyhow::Result<()> {
    let doc = root.join("usr/share/doc").join(package.name);
    dir(&doc)?;
    let year = head.year;
    fs::write(
        doc.join("copyright"),
        format!(
            "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: recorder

Files: *
Copyright: {year} the privileged-activity recorder's authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
"
        ),
    )?;
    set_mode(&doc.join("copyright"), 0o644)?;
    let changelog = doc.join("changelog");
    fs::write(
        &changelog,
        format!(
            "{} ({version}) unstable; urgency=medium\n\n  * Built from commit {}.\n\n \
             -- {MAINTAINER}  {}\n",
            package.name, head.commit, head.date,
        ),
    )?;
    // -n: no name or time stamp in the header, so the same input gives the same bytes.
    run(Command::new("gzip").args(["-9nf"]).arg(&changelog))?;
    set_mode(&doc.join("changelog.gz"), 0o644)
}

fn dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

fn file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
