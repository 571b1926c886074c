//! `fork` and `exit` records, which keep the agent's process table.

use crate::event::Header;

/// For `fork`, the header describes the new process (pid/tgid of the child, ppid of the
/// forking process, credentials inherited from it). For `exit`, the exiting process, sent
/// once the last thread of the group is gone.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskRecord {
    pub header: Header,
    /// `exit`: the wait status (`code << 8 | signal`); `fork`: 0.
    pub exit_code: i32,
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<TaskRecord>() == 88);

crate::user_pod!(TaskRecord);
