//! Kernel tier, health: the agent serves its counters in Prometheus text format. Needs root;
//! under `CI=true` a run without root fails instead of skipping.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
};

use tests::{agent::Agent, marker, privileged};

fn get(port: u16, path: &str) -> String {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn value(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{exposition}"))
}

/// `/metrics` counts what the agent delivered, lost and spooled; other paths are 404.
#[test]
fn health_counters_are_served_for_prometheus() {
    if !privileged("health_counters_are_served_for_prometheus") {
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tests::Scratch::new("metrics-spool");
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start(&["--metrics", &addr, "--spool", dir.to_str().unwrap()]);
    let mark = marker("counted");
    assert!(
        Command::new("/bin/true")
            .arg(&mark)
            .status()
            .unwrap()
            .success()
    );
    let counted = agent.exec_with_arg(&mark);
    assert_eq!(counted["result"], 0);

    let response = get(port, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("# TYPE recorder_events_total counter"),
        "{response}"
    );
    assert!(value(&response, "recorder_events_total") > 0);
    assert!(
        value(&response, "recorder_spool_bytes") > 0,
        "the spool holds the chain"
    );
    assert_eq!(value(&response, "recorder_lost_records_total"), 0);
    assert!(get(port, "/other").starts_with("HTTP/1.1 404"));
    let out = agent.stop();
    assert!(out.success);
}
