//! Generates the Rust types for every `.proto` file, the one way code is generated here.

fn main() -> std::io::Result<()> {
    let protos = [
        "recorder/v1/event.proto",
        "recorder/v1/registration.proto",
        "recorder/v1/collector.proto",
        "recorder/v1/grants.proto",
        "recorder/v1/admin.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if std::process::Command::new(std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into()))
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(std::io::Error::other(
            "protoc is missing: run `cargo xtask setup` (it installs Debian's protobuf-compiler)",
        ));
    }
    tonic_prost_build::configure().compile_protos(&protos, &["."])
}
