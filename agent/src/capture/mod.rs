//! Capture: what the host must provide, the kernel programs and their lifecycle, the
//! struct offsets they read (from BTF), the reader that drains them, the decode stage
//! that turns their records into typed events (joining small terminal writes and folding
//! failed PATH lookups), and the programs' rare log messages.

pub(crate) mod coalesce;
pub mod decode;
pub mod event;
pub(crate) mod fold;
pub(crate) mod image;
pub(crate) mod kernel_log;
pub mod layout;
pub mod platform;
pub mod reader;
pub mod sensors;
