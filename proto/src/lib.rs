//! The recorder's external contract: protobuf types generated from `recorder/v1/*.proto`
//! (the source of truth), and the chain hash that docs/chain.md defines.

pub mod chain;
pub mod grant;

#[expect(clippy::pedantic, reason = "generated code")]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/recorder.v1.rs"));
}
