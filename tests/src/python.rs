//! The independent Python verifier of evidence bundles (`tests/verify_bundle.py`, written
//! from docs/evidence.md and docs/chain.md alone), for the tests that check bundles with it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::workspace_root;

/// Whether the Python verifier can run here.
#[must_use]
pub fn python_ready() -> bool {
    let ready = Command::new("python3")
        .args(["-c", "import cryptography, grpc_tools"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        ready || std::env::var("CI").as_deref() != Ok("true"),
        "python3 with cryptography and grpcio-tools is missing (`cargo xtask setup` installs them) and CI=true forbids skipping"
    );
    if !ready {
        eprintln!(
            "skipping the Python verifier: python3 with cryptography and grpcio-tools is missing"
        );
    }
    ready
}

/// The Python classes and gRPC stubs of `proto/`, generated into `dir/py`.
#[must_use]
pub fn generate_protos(dir: &Path) -> PathBuf {
    let out = dir.join("py");
    fs::create_dir_all(&out).unwrap();
    let protos: Vec<String> = fs::read_dir(workspace_root().join("proto/recorder/v1"))
        .unwrap()
        .map(|e| format!("recorder/v1/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    let run = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(workspace_root().join("proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[must_use]
pub fn python_verify(bundle: &Path, ca: &Path, protos: &Path) -> Output {
    Command::new("python3")
        .arg(workspace_root().join("tests/verify_bundle.py"))
        .arg(bundle)
        .arg(ca)
        .arg(protos)
        .output()
        .unwrap()
}
