use agent_common::enforce::KillRecord;
use tracing::warn;

use super::{DecodeError, whole};
use crate::capture::event::{Body, Kill, Killer};

pub(super) fn decode(bytes: &[u8]) -> Result<Body, DecodeError> {
    let rec: KillRecord = whole(bytes)?;
    if rec.result != 0 {
        // The agent's own kill from userspace covers the task; the failure is still news.
        warn!(
            pid = rec.header.tgid,
            error = rec.result,
            "the kernel could not signal a denied task"
        );
    }
    Ok(Body::Kill(Kill {
        by: Killer::Kernel,
        cause: rec.cause,
        grant_id: String::new(),
        reason: "",
        target: None,
        pids: vec![rec.header.tgid],
    }))
}
