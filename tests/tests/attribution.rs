//! Kernel tier, attribute stage: every event names who is behind it. Needs root; under
//! `CI=true` a run without root fails instead of skipping.

use std::process::Command;

use serde_json::{Value, json};
use tests::{TestCgroup, agent::Agent, marker, privileged, with_loginuid};

/// Runs `/bin/true MARK` with the given loginuid, optionally inside `cgroup`, and returns
/// the identity the agent gave its exec.
fn identity_of_exec(agent: &Agent, loginuid: Option<u32>, cgroup: Option<&TestCgroup>) -> Value {
    let mark = marker("who");
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&mark);
    with_loginuid(&mut cmd, loginuid);
    if let Some(cgroup) = cgroup {
        cgroup.enter(&mut cmd);
    }
    assert!(cmd.status().expect("run /bin/true").success());
    agent.exec_with_arg(&mark)["identity"].clone()
}

/// A human is named by loginuid, whatever uid the process runs as.
#[test]
fn a_loginuid_names_the_human() {
    if !privileged("a_loginuid_names_the_human") {
        return;
    }
    let agent = Agent::start(&[]);
    assert_eq!(
        identity_of_exec(&agent, Some(65534), None),
        json!({"kind": "human", "name": "nobody"})
    );
    assert_eq!(
        identity_of_exec(&agent, Some(0), None),
        json!({"kind": "human", "name": "root"})
    );
    assert_eq!(
        identity_of_exec(&agent, Some(3_999_999), None),
        json!({"kind": "human", "name": "uid:3999999"})
    );
}

/// Without a loginuid, a process in a unit's cgroup is that service.
#[test]
fn a_unit_cgroup_names_the_service() {
    if !privileged("a_unit_cgroup_names_the_service") {
        return;
    }
    let unit = format!("{}.service", marker("unit"));
    let cgroup = TestCgroup::create(&unit);
    let agent = Agent::start(&[]);
    assert_eq!(
        identity_of_exec(&agent, None, Some(&cgroup)),
        json!({"kind": "service", "name": unit})
    );
}

/// Without a loginuid, a process in a container's cgroup is that workload.
#[test]
fn a_container_cgroup_names_the_workload() {
    if !privileged("a_container_cgroup_names_the_workload") {
        return;
    }
    let id = format!(
        "{:0>64x}",
        u128::from(std::process::id()) << 64 | 0x00c0_ffee
    );
    let cgroup = TestCgroup::create(&format!("docker-{id}.scope"));
    let agent = Agent::start(&[]);
    assert_eq!(
        identity_of_exec(&agent, None, Some(&cgroup)),
        json!({"kind": "workload", "name": id})
    );
}

/// With neither, the identity is unknown and says why; a loginuid outranks the cgroup.
#[test]
fn an_unattributable_process_is_unknown_with_a_reason() {
    if !privileged("an_unattributable_process_is_unknown_with_a_reason") {
        return;
    }
    let name = marker("plain");
    let cgroup = TestCgroup::create(&name);
    let agent = Agent::start(&[]);
    let identity = identity_of_exec(&agent, None, Some(&cgroup));
    assert_eq!(identity["kind"], "unknown");
    assert_eq!(identity["name"], "");
    let reason = identity["reason"].as_str().unwrap();
    assert!(
        reason.contains("no loginuid") && reason.contains(&name),
        "{reason}"
    );
    let unit = TestCgroup::create(&format!("{}.service", marker("unit")));
    assert_eq!(
        identity_of_exec(&agent, Some(0), Some(&unit)),
        json!({"kind": "human", "name": "root"})
    );
}
