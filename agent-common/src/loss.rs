//! Per-CPU loss counters: every record the kernel could not submit is counted here, and the
//! agent turns increases into gap records.

use crate::event::kind;

pub const LOSS_MAP: &str = "LOSS";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounters {
    /// Records not submitted, by kind id.
    pub records: [u64; kind::SLOTS],
    /// Payload bytes those records would have carried (tty data, argv), by kind id.
    pub bytes: [u64; kind::SLOTS],
}

crate::user_pod!(LossCounters);
