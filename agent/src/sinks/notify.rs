//! What a service manager is told, through the `sd_notify` protocol when `NOTIFY_SOCKET` is
//! set (systemd, the main job, the tests): readiness once capture is live, and a one-line
//! status whenever something an operator would check changes.

use std::fmt::Write as _;

use sd_notify::NotifyState;
use tracing::warn;

/// Grant ids a status names before it says how many more there are.
const IDS_SHOWN: usize = 16;

/// Ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The grants the agent now enforces.
pub fn grants<'a>(ids: impl ExactSizeIterator<Item = &'a str>) {
    let count = ids.len();
    let mut text = format!("grant view adopted: {count} grants");
    for (i, id) in ids.enumerate() {
        if i == IDS_SHOWN {
            let _ = write!(text, " +{} more", count - IDS_SHOWN);
            break;
        }
        text.push(' ');
        text.push_str(id);
    }
    send(&[NotifyState::Status(&text)]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "cannot notify the service manager");
    }
}
