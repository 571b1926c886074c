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
    tonic_prost_build::configure()
        // Event bytes are copied once, out of the kernel's ring buffer: the argv strings and
        // terminal data an event carries, and a chained record's serialized event, are
        // `Bytes` views of the buffer they arrived in, shared from stage to stage and
        // decoded from a gRPC frame without a copy.
        .bytes(".recorder.v1.Exec.argv")
        .bytes(".recorder.v1.Tty.data")
        .bytes(".recorder.v1.ChainedEvent.event")
        .compile_protos(&protos, &["."])
}
