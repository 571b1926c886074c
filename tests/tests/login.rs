//! End-to-end tier: a real SSH login through sshd and PAM (`pam_loginuid`), and sudo inside
//! it. Needs root; under `CI=true` a run without root fails instead of skipping.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    agent::{Agent, tty_data},
    marker, privileged,
};

const USER: &str = "recorder-login";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test account: a shell, a home, no password (`*`, not locked, so key login works),
/// and a sudo rule for `id` only.
fn ensure_user() -> u32 {
    if Command::new("id")
        .arg("-u")
        .arg(USER)
        .output()
        .unwrap()
        .status
        .code()
        != Some(0)
    {
        run(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", USER]));
    }
    run(Command::new("usermod").args(["--password", "*", USER]));
    fs::write(
        format!("/etc/sudoers.d/{USER}"),
        format!("{USER} ALL=(root) NOPASSWD: /usr/bin/id\n"),
    )
    .unwrap();
    fs::set_permissions(
        format!("/etc/sudoers.d/{USER}"),
        fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    let out = Command::new("id").arg("-u").arg(USER).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// An sshd of our own on 127.0.0.1, killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sshd {
    fn start(client_key: &Path) -> Self {
        let dir = std::env::temp_dir().join(marker("sshd"));
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key));
        let home = PathBuf::from(format!("/home/{USER}"));
        let ssh_dir = home.join(".ssh");
        fs::create_dir_all(&ssh_dir).unwrap();
        fs::copy(
            client_key.with_extension("pub"),
            ssh_dir.join("authorized_keys"),
        )
        .unwrap();
        run(Command::new("chown")
            .args(["-R", &format!("{USER}:{USER}")])
            .arg(&ssh_dir));
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

fn ids(v: &Value) -> (u64, u64) {
    (v["uid"].as_u64().unwrap(), v["euid"].as_u64().unwrap())
}

/// Logs in as the test user with a forced pty, runs `command`, and returns what it printed.
fn ssh_login(key: &Path, port: u16, command: &str) -> String {
    let out = Command::new("ssh")
        .arg("-tt")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(key)
        .args([
            "-p",
            &port.to_string(),
            &format!("{USER}@127.0.0.1"),
            command,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ssh failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `ssh -tt user@127.0.0.1 'id; sudo -n id'`: every exec and tty record of that login is
/// the user's, sudo included, and root's own side of it is not.
#[test]
fn an_ssh_login_and_its_sudo_are_attributed_to_the_user() {
    if !privileged("an_ssh_login_and_its_sudo_are_attributed_to_the_user") {
        return;
    }
    let uid = ensure_user();
    let keys = std::env::temp_dir().join(marker("client"));
    fs::create_dir_all(&keys).unwrap();
    let key = keys.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let sshd = Sshd::start(&key);
    let agent = Agent::start(&[]);
    let mark = marker("login");
    let text = ssh_login(&key, sshd.port, &format!("id; sudo -n id; echo {mark}"));
    assert!(
        text.contains(&format!("uid={uid}({USER})")) && text.contains("uid=0(root)"),
        "{text}"
    );
    agent.sync();
    let out = agent.stop();
    fs::remove_dir_all(&keys).unwrap();
    fs::remove_file(format!("/etc/sudoers.d/{USER}")).unwrap();

    let user = json!({"kind": "human", "name": USER});
    let client = out
        .events
        .iter()
        .find(|v| v["kind"] == "exec" && v["comm"] == "ssh" && v["ppid"] == std::process::id())
        .expect("root's own ssh client exec is recorded");
    assert_ne!(
        client["identity"], user,
        "root's side of the login is not the user: {client}"
    );
    let sudo = out
        .events
        .iter()
        .find(|v| v["kind"] == "exec" && v["comm"] == "sudo")
        .expect("sudo exec");
    assert_eq!(
        ids(sudo),
        (u64::from(uid), 0),
        "sudo is setuid: the user's uid, euid 0"
    );
    let session = sudo["sessionid"]
        .as_u64()
        .expect("a login has an audit session");
    assert_ne!(client["sessionid"].as_u64(), Some(session));
    let in_session: Vec<&Value> = out
        .events
        .iter()
        .filter(|v| v["sessionid"].as_u64() == Some(session))
        .collect();

    let ids_run: Vec<(u64, u64)> = in_session
        .iter()
        .filter(|v| v["kind"] == "exec" && v["filename"] == "/usr/bin/id")
        .map(|v| ids(v))
        .collect();
    assert!(
        ids_run.contains(&(u64::from(uid), u64::from(uid))),
        "plain id as the user: {ids_run:?}"
    );
    assert!(
        ids_run.contains(&(0, 0)),
        "id under sudo runs as root: {ids_run:?}"
    );
    let output: Vec<u8> = in_session
        .iter()
        .filter(|v| v["kind"] == "tty_out")
        .flat_map(|v| tty_data(v))
        .collect();
    let output = String::from_utf8_lossy(&output);
    assert!(
        output.contains("uid=0(root)") && output.contains(&format!("uid={uid}({USER})")),
        "{output}"
    );
    assert!(output.contains(&mark), "{output}");
    let root = &sudo["session_root"];
    for v in &in_session {
        assert_eq!(v["loginuid"], uid, "{v}");
        assert_eq!(
            v["identity"], user,
            "every event of the login is the user's: {v}"
        );
        assert_eq!(
            &v["session_root"], root,
            "one root for the whole login: {v}"
        );
    }
    let root_fork = out
        .events
        .iter()
        .find(|v| v["kind"] == "fork" && v["pid"] == root["pid"])
        .expect("the root's fork is recorded");
    assert_eq!(
        root_fork["comm"], "sshd",
        "the login began in sshd, where pam_loginuid ran: {root_fork}"
    );
    assert!(
        root["start"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{root}"
    );
}
