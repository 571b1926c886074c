use std::mem::offset_of;

use agent_common::{
    event::kind,
    tty::{CHUNK, TTY_FIXED, TtyRecord},
};

use super::{DecodeError, read, slice};
use crate::capture::event::{Body, Device};

pub(super) fn decode(bytes: &[u8], kind_id: u32) -> Result<Body, DecodeError> {
    let device: u32 = read(bytes, offset_of!(TtyRecord, device))?;
    let fd: u32 = read(bytes, offset_of!(TtyRecord, fd))?;
    let offset: u64 = read(bytes, offset_of!(TtyRecord, offset))?;
    let len: u32 = read(bytes, offset_of!(TtyRecord, len))?;
    let data = slice(bytes, TTY_FIXED, len as usize, CHUNK, "tty data")?;
    if TTY_FIXED + data.len() != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            claimed: TTY_FIXED + data.len(),
            got: bytes.len(),
        });
    }
    Ok(Body::Tty {
        input: kind_id == kind::TTY_IN,
        device: Device::from_kernel(device),
        fd,
        offset,
        data: data.to_vec(),
    })
}
