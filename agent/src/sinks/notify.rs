//! What a service manager is told, through the `sd_notify` protocol when `NOTIFY_SOCKET` is
//! set (systemd, the main job, the tests): readiness once capture is live, a one-line status
//! whenever something an operator would check changes, and, when the manager asks for them
//! (`WatchdogSec=`), watchdog pings.

use std::{fmt::Write as _, time::Duration};

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

/// How often to ping the service manager's watchdog: half the interval it asked for, so one
/// late ping is not yet a missed one. `None` when it asked for none.
#[must_use]
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|interval| interval / 2)
}

/// Pings the watchdog every `period`, for as long as the runtime it is spawned on polls it.
pub async fn watchdog(period: Duration) {
    let mut ticks = tokio::time::interval(period);
    // After a stall, one ping and the normal pace again: pings made up in a burst would
    // claim liveness for the time the stall took.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "cannot notify the service manager");
    }
}
