//! Generated protobuf types. `recorder/v1/*.proto` is the source of truth.

#[expect(clippy::pedantic, reason = "generated code")]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/recorder.v1.rs"));
}
