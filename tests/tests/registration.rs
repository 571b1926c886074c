//! Kernel tier, registration: a broker registers a session or a cgroup as an identity under
//! a grant over the agent's Unix-socket gRPC API, and later events carry it. Needs root;
//! under `CI=true` a run without root fails instead of skipping.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use proto::v1::{
    RegisterRequest, register_request::Scope, registration_client::RegistrationClient,
};
use serde_json::{Value, json};
use tests::{TestCgroup, agent::Agent, marker, privileged, with_loginuid};

/// Calls Register over the Unix socket, as a broker would.
fn register(
    socket: &Path,
    scope: Option<Scope>,
    identity: &str,
    grant: &str,
) -> Result<(), tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = socket.to_path_buf();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connect to the registration socket");
        let request = RegisterRequest {
            scope,
            identity: identity.into(),
            grant: grant.into(),
        };
        RegistrationClient::new(channel)
            .register(request)
            .await
            .map(|_| ())
    })
}

fn identity_of(agent: &Agent, mark: &str) -> Value {
    agent.exec_with_arg(mark)["identity"].clone()
}

/// After registering a session as deploy-bot under G1, that session's later events carry
/// both; the socket is root's alone, and bad requests are refused with a clear status.
#[test]
fn a_registered_session_carries_its_identity_and_grant() {
    if !privileged("a_registered_session_carries_its_identity_and_grant") {
        return;
    }
    let socket: PathBuf = std::env::temp_dir().join(marker("reg")).join("agent.sock");
    let agent = Agent::start(&["--registration", socket.to_str().unwrap()]);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let refused = register(&socket, None, "deploy-bot", "G1").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    let refused = register(&socket, Some(Scope::Sessionid(1)), "", "G1").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");

    // A session of its own (a fresh loginuid gives a fresh audit session), which waits for
    // the registration before running its command.
    let mark = marker("registered");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(format!(
        "cat /proc/self/sessionid; echo; read go; /bin/true {mark}"
    ));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    with_loginuid(&mut cmd, Some(0));
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let session: u32 = line.trim().parse().unwrap();
    register(&socket, Some(Scope::Sessionid(session)), "deploy-bot", "G1").unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        identity_of(&agent, &mark),
        json!({"kind": "registered", "name": "deploy-bot", "grant": "G1"})
    );

    let cgroup = TestCgroup::create(&marker("ci-job"));
    register(&socket, Some(Scope::CgroupId(cgroup.id())), "ci-runner", "").unwrap();
    let mark = marker("in-cgroup");
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&mark);
    with_loginuid(&mut cmd, None);
    cgroup.enter(&mut cmd);
    assert!(cmd.status().unwrap().success());
    assert_eq!(
        identity_of(&agent, &mark),
        json!({"kind": "registered", "name": "ci-runner"})
    );
    assert!(agent.stop().success);
    std::fs::remove_dir_all(socket.parent().unwrap()).unwrap();
}
