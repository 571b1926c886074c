//! Types shared by `agent-ebpf` (kernel side) and `agent` (user side).
//!
//! Every record is a `#[repr(C)]` [`event::Header`] followed by a payload. Kind ids are
//! explicit and never reused, fields carry no implicit padding and no `bool`, and each
//! layout is pinned by a compile-time size assertion so both sides agree byte for byte.
#![no_std]

pub mod config;
pub mod enforce;
pub mod event;
pub mod exec;
pub mod layout;
pub mod loss;
pub mod task;
pub mod tty;

/// Implements `aya::Pod` for the user side, so maps and globals can carry the type.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), all fields are integers or integer arrays, no padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
