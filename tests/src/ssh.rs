//! Real SSH logins for the end-to-end tier: a test account with a key and a sudo rule, and
//! an sshd of our own on loopback, going through PAM (`pam_loginuid`) like any login.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::marker;

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test account: a shell, a home, no password (`*`, not locked, so key login works), a
/// sudo rule for `id` and `whoami` only, and a key pair to log in with. The sudo rule and the key go
/// when it drops.
pub struct User {
    pub name: String,
    pub uid: u32,
    keys: PathBuf,
}

impl User {
    /// A user who may `sudo` `/usr/bin/id` and `/usr/bin/whoami` only.
    #[must_use]
    pub fn ensure(name: &str) -> Self {
        Self::ensure_with(name, "/usr/bin/id, /usr/bin/whoami")
    }

    /// A user who may `sudo` `commands` (a sudoers command list, `ALL` for a root shell).
    #[must_use]
    pub fn ensure_with(name: &str, commands: &str) -> Self {
        Self::ensure_as(name, commands, None)
    }

    /// A user whose password is `password`, which sudo asks for before `commands`.
    #[must_use]
    pub fn ensure_with_password(name: &str, commands: &str, password: &str) -> Self {
        Self::ensure_as(name, commands, Some(password))
    }

    fn ensure_as(name: &str, commands: &str, password: Option<&str>) -> Self {
        let exists = Command::new("id")
            .arg("-u")
            .arg(name)
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            run(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", name]));
        }
        // Through chpasswd's standard input: a password on a command line would be in every
        // exec record of it.
        let tag = if let Some(password) = password {
            let mut chpasswd = Command::new("chpasswd")
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(
                &mut chpasswd.stdin.take().unwrap(),
                format!("{name}:{password}\n").as_bytes(),
            )
            .unwrap();
            assert!(chpasswd.wait().unwrap().success(), "chpasswd {name}");
            ""
        } else {
            run(Command::new("usermod").args(["--password", "*", name]));
            "NOPASSWD: "
        };
        let rule = format!("/etc/sudoers.d/{name}");
        // `use_pty` (Debian's default): sudo runs the command on a pty of its own and relays
        // its output to the login terminal, which is what replay must not show twice.
        fs::write(
            &rule,
            format!("Defaults:{name} use_pty\n{name} ALL=(root) {tag}{commands}\n"),
        )
        .unwrap();
        fs::set_permissions(&rule, fs::Permissions::from_mode(0o440)).unwrap();
        let out = Command::new("id").arg("-u").arg(name).output().unwrap();
        let uid = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let keys = std::env::temp_dir().join(marker("client"));
        fs::create_dir_all(&keys).unwrap();
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(keys.join("id_ed25519")));
        let ssh_dir = PathBuf::from(format!("/home/{name}/.ssh"));
        fs::create_dir_all(&ssh_dir).unwrap();
        fs::copy(keys.join("id_ed25519.pub"), ssh_dir.join("authorized_keys")).unwrap();
        run(Command::new("chown")
            .args(["-R", &format!("{name}:{name}")])
            .arg(&ssh_dir));
        Self {
            name: name.to_owned(),
            uid,
            keys,
        }
    }

    /// `ssh -tt user@127.0.0.1 command`, not yet run: the caller spawns or runs it.
    #[must_use]
    pub fn ssh(&self, sshd: &Sshd, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-tt")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg("-i")
            .arg(self.keys.join("id_ed25519"))
            .args(["-p", &sshd.port.to_string()])
            .arg(format!("{}@127.0.0.1", self.name))
            .arg(command)
            .stdin(Stdio::null());
        cmd
    }

    /// Logs in with a forced pty, runs `command`, and returns what it printed.
    #[must_use]
    pub fn login(&self, sshd: &Sshd, command: &str) -> String {
        let out = self.ssh(sshd, command).output().expect("run ssh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ssh failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/etc/sudoers.d/{}", self.name));
        let _ = fs::remove_dir_all(&self.keys);
    }
}

/// An sshd of our own on 127.0.0.1, killed when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Sshd {
    #[must_use]
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(marker("sshd"));
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key));
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nUsePAM yes\nPidFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 AuthorizedKeysFile .ssh/authorized_keys\nStrictModes no\n",
                host_key.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, dir }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
