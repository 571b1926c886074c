//! The recorder's external contract: protobuf types generated from `recorder/v1/*.proto`
//! (the source of truth), and the vocabulary every side shares, each with one owner here:
//! the chain hash and builder, event kinds, identity kinds, session keys, grant rules, time
//! formats, the JSON form of an event, and the limits both ends of a stream hold to.

pub mod chain;
pub mod grant;
pub mod identity;
pub mod json;
pub mod kind;
pub mod limits;
pub mod session;
pub mod time;
pub mod tty;

#[expect(clippy::pedantic, reason = "generated code")]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/recorder.v1.rs"));
}
