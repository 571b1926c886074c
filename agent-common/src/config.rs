//! Runtime settings the agent writes into the kernel programs' read-only globals.

pub const CONFIG_GLOBAL: &str = "CAPTURE_CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CaptureConfig {
    /// argv bytes kept per exec (at most `exec::ARGV_CAP`).
    pub argv_max: u32,
    /// The agent's own tgid: its writes are never captured, or a terminal running
    /// `agent --stdout` would record its own output forever.
    pub agent_tgid: u32,
    /// Unread ring-buffer bytes above which a submit wakes the reader; below it the reader
    /// drains on its own timer, which saves a wakeup per record.
    pub wakeup_bytes: u64,
    /// Nonzero: record the bytes typed while a terminal does not echo (passwords). By
    /// default only their count is recorded.
    pub record_no_echo_input: u64,
}

impl CaptureConfig {
    #[must_use]
    pub const fn zeroed() -> Self {
        Self {
            argv_max: 0,
            agent_tgid: 0,
            wakeup_bytes: 0,
            record_no_echo_input: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 24);

crate::user_pod!(CaptureConfig);
