//! End-to-end tier: a real SSH login through sshd and PAM (`pam_loginuid`), and sudo inside
//! it. Needs root; under `CI=true` a run without root fails instead of skipping.

use serde_json::{Value, json};
use tests::{
    agent::{Agent, tty_data},
    marker, privileged,
    ssh::{Sshd, User},
};

const USER: &str = "recorder-login";

fn ids(v: &Value) -> (u64, u64) {
    (v["uid"].as_u64().unwrap(), v["euid"].as_u64().unwrap())
}

/// `ssh -tt user@127.0.0.1 'id; sudo -n id'`: every exec and tty record of that login is
/// the user's, sudo included, and root's own side of it is not.
#[test]
fn an_ssh_login_and_its_sudo_are_attributed_to_the_user() {
    if !privileged("an_ssh_login_and_its_sudo_are_attributed_to_the_user") {
        return;
    }
    let account = User::ensure(USER);
    let uid = account.uid;
    let sshd = Sshd::start();
    let agent = Agent::start(&[]);
    let mark = marker("login");
    let text = account.login(&sshd, &format!("id; sudo -n id; echo {mark}"));
    assert!(
        text.contains(&format!("uid={uid}({USER})")) && text.contains("uid=0(root)"),
        "{text}"
    );
    agent.sync();
    let out = agent.stop();
    drop(account);

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
