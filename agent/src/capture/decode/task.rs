use agent_common::{event::kind, task::TaskRecord};

use super::{DecodeError, whole};
use crate::capture::event::Body;

pub(super) fn decode(bytes: &[u8], kind_id: u32) -> Result<Body, DecodeError> {
    let rec: TaskRecord = whole(bytes)?;
    Ok(if kind_id == kind::FORK {
        Body::Fork
    } else {
        Body::Exit {
            exit_code: rec.exit_code,
            filename: None,
        }
    })
}
