//! Kernel tier, registration: a broker registers a session or a cgroup as an identity under
//! a grant over the agent's Unix-socket gRPC API, and later events carry it. A real
//! collector holds the grants. Needs root; under `CI=true` a run without root fails instead
//! of skipping.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use proto::v1::{
    RegisterRequest, register_request::Scope, registration_client::RegistrationClient,
};
use serde_json::{Value, json};
use tests::{
    TestCgroup,
    agent::{Agent, Sink},
    collector::Collector,
    marker, operator, privileged, with_loginuid,
};

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

/// `register` from a thread whose credentials are `uid`'s alone (a raw `setresuid` changes
/// only the calling thread), as an unprivileged broker would call.
fn register_as(
    uid: u32,
    socket: &Path,
    scope: Option<Scope>,
    identity: &str,
    grant: &str,
) -> Result<(), tonic::Status> {
    let (socket, identity, grant) = (socket.to_path_buf(), identity.to_owned(), grant.to_owned());
    std::thread::spawn(move || {
        // SAFETY: a plain syscall on this thread's own credentials.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        register(&socket, scope, &identity, &grant)
    })
    .join()
    .unwrap()
}

fn identity_of(agent: &Agent, mark: &str) -> Value {
    agent.exec_with_arg(mark)["identity"].clone()
}

/// A process in a session of its own (a fresh loginuid gives a fresh audit session), which
/// waits for the registration before running `/bin/true MARK`.
struct Waiting {
    child: std::process::Child,
    session: u32,
}

impl Waiting {
    fn start(mark: &str) -> Self {
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
        let session = line.trim().parse().unwrap();
        Self { child, session }
    }

    fn go(mut self) {
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

fn refuses_malformed_requests(socket: &Path) {
    let refused = register(socket, None, "deploy-bot", "").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    let refused = register(socket, Some(Scope::Sessionid(1)), "", "").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    let refused = register(
        socket,
        Some(Scope::Sessionid(1)),
        "deploy-bot",
        "g-0000000000000000",
    )
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
}

/// Registering a session as deploy-bot under a live grant for deploy-bot makes that
/// session's later events carry both, and the registration itself is chained; a grant that
/// is not live for it is refused, as are a non-root peer and malformed requests; the socket
/// is root's alone from the start; a cgroup registration holds across an agent restart.
#[test]
fn a_registered_session_carries_its_identity_and_grant() {
    if !privileged("a_registered_session_carries_its_identity_and_grant") {
        return;
    }
    let dir = tests::Scratch::new("reg");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let socket: PathBuf = dir.join("run/agent.sock");
    let spool = dir.join("spool");
    let start = || {
        Agent::shipping_with(
            Sink::Collect,
            &spool,
            &url,
            &["--registration", socket.to_str().unwrap()],
        )
    };
    let agent = start();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(agent.wait_for_status(Duration::from_secs(20), "grant view adopted"));

    refuses_malformed_requests(&socket);

    // A grant for deploy-bot, and one for someone else.
    let create = |who: &str| -> String {
        let lines = operator::json_lines(
            &url,
            &[
                "grant",
                "create",
                "--identity",
                who,
                "--ttl",
                "10m",
                "--reason",
                "CI-7",
                "--json",
            ],
        );
        let id = lines[0]["id"].as_str().unwrap().to_owned();
        assert!(agent.wait_for_status(Duration::from_secs(10), &format!(" {id}")));
        id
    };
    let grant = create("deploy-bot");
    let other = create("release-bot");
    let refused = register(&socket, Some(Scope::Sessionid(1)), "deploy-bot", &other).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");

    // The socket is root's; were it opened to all, a non-root peer is still refused.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused =
        register_as(65534, &socket, Some(Scope::Sessionid(1)), "deploy-bot", "").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mark = marker("registered");
    let waiting = Waiting::start(&mark);
    let session = waiting.session;
    register(
        &socket,
        Some(Scope::Sessionid(session)),
        "deploy-bot",
        &grant,
    )
    .unwrap();
    waiting.go();
    assert_eq!(
        identity_of(&agent, &mark),
        json!({"kind": "registered", "name": "deploy-bot", "grant": grant})
    );
    let record = agent
        .wait_for(Duration::from_secs(10), |v| v["kind"] == "registration")
        .expect("the registration is chained");
    assert_eq!(record["registration"]["sessionid"], session, "{record}");
    assert_eq!(record["registration"]["identity"], "deploy-bot", "{record}");
    assert_eq!(record["registration"]["grant"], grant.as_str(), "{record}");
    assert_eq!(record["registration"]["peer_uid"], 0, "{record}");

    let cgroup = TestCgroup::create(&marker("ci-job"));
    register(&socket, Some(Scope::CgroupId(cgroup.id())), "ci-runner", "").unwrap();
    let in_cgroup = |agent: &Agent| {
        let mark = marker("in-cgroup");
        let mut cmd = Command::new("/bin/true");
        cmd.arg(&mark);
        with_loginuid(&mut cmd, None);
        cgroup.enter(&mut cmd);
        assert!(cmd.status().unwrap().success());
        identity_of(agent, &mark)
    };
    assert_eq!(
        in_cgroup(&agent),
        json!({"kind": "registered", "name": "ci-runner"})
    );
    assert!(agent.stop().success);

    // Kept in the state directory: the restarted agent still knows it.
    let agent = start();
    assert_eq!(
        in_cgroup(&agent),
        json!({"kind": "registered", "name": "ci-runner"})
    );
    assert!(agent.stop().success);
    all_private(&spool);
}

/// The directory is 0700 and every file in it 0600.
fn all_private(dir: &Path) {
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{} is private", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{} is private", path.display());
    }
}
