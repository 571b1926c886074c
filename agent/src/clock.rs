//! Time as the agent reads it. The kernel stamps records with `CLOCK_BOOTTIME` (monotonic,
//! counting suspend); evidence carries wall-clock time. [`WallClock`] maps one onto the
//! other.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::evidence::{read_json, write_json_private};

/// `CLOCK_BOOTTIME` now, in the kernel records' time base.
#[must_use]
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-parameter.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    // Both clocks are non-negative by definition.
    ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs()
}

/// Maps the kernel's boot-relative clock onto wall-clock time. The offset is checked once
/// per batch but only moves when the wall clock has stepped (by more than [`STEP_NS`]):
/// sampling the two clocks is never exact, and re-applying that jitter would give one
/// instant (a session's start, say) a different time on every batch.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_boot: i128,
}

/// Where the mapping of a boot's session roots is kept, in the spool.
const SESSION_CLOCK_FILE: &str = "session-clock.json";
/// A kept mapping further than this from the one read now is not used: the wall clock was
/// stepped by more since (a clock set days wrong at boot, corrected later), or the file
/// holds something no clock of this boot gave.
const SESSION_CLOCK_DRIFT_MAX_NS: i128 = 86_400 * 1_000_000_000;

/// What is kept: the mapping of the boot it was read in.
#[derive(Serialize, Deserialize)]
struct SessionClock {
    boot_id: String,
    realtime_minus_boot: i64,
}

const STEP_NS: i128 = 1_000_000;

impl WallClock {
    #[must_use]
    pub fn now() -> Self {
        let boot = boot_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_boot: i128::from(real) - i128::from(boot),
        }
    }

    /// Adopts the current offset if the wall clock stepped since the last one.
    pub fn follow_steps(&mut self) {
        let now = Self::now();
        if (now.realtime_minus_boot - self.realtime_minus_boot).abs() > STEP_NS {
            *self = now;
        }
    }

    /// Nanoseconds since the Unix epoch for a `CLOCK_BOOTTIME` instant.
    #[must_use]
    pub fn unix_ns(&self, ktime_ns: u64) -> u64 {
        u64::try_from(i128::from(ktime_ns) + self.realtime_minus_boot).unwrap_or(0)
    }

    /// The mapping a boot's session roots are read through: the first agent of the boot
    /// keeps its own in `dir` (the spool), and every later agent of the same boot reads it
    /// back. A session's key holds its root's start in wall-clock time, so a login that
    /// outlives an agent (an upgrade, a restart by systemd) keeps its key only if every run
    /// maps that start alike; sampling the two clocks afresh would move it by the
    /// sampling's jitter, and a step of the wall clock between two runs by the step. Without
    /// a spool, when the file cannot be read or kept, or when what it keeps is more than a
    /// day from now's mapping, the mapping is read now (and kept).
    #[must_use]
    pub fn for_sessions(dir: Option<&Path>, boot_id: &str) -> Self {
        let now = Self::now();
        let Some(path) = dir.map(|d| d.join(SESSION_CLOCK_FILE)) else {
            return now;
        };
        let kept: Option<SessionClock> = read_json(&path);
        if let Some(kept) = kept.filter(|k| k.boot_id == boot_id) {
            let kept = i128::from(kept.realtime_minus_boot);
            if (kept - now.realtime_minus_boot).abs() <= SESSION_CLOCK_DRIFT_MAX_NS {
                return Self {
                    realtime_minus_boot: kept,
                };
            }
            warn!(path = %path.display(), "the clock of session starts kept for this boot is more than a day from the clock now; it is read again");
        }
        let keep = SessionClock {
            boot_id: boot_id.to_owned(),
            realtime_minus_boot: i64::try_from(now.realtime_minus_boot).unwrap_or(i64::MAX),
        };
        if let Err(error) = write_json_private(&path, &keep) {
            warn!(%error, path = %path.display(), "cannot keep the clock of session starts: a login that outlives this agent may get a second session key");
        }
        now
    }

    /// Wall-clock time now, read through this mapping.
    #[must_use]
    pub fn unix_now(&self) -> u64 {
        self.unix_ns(boot_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stepped_wall_clock_is_followed() {
        let mut stale = WallClock {
            realtime_minus_boot: 0,
        };
        stale.follow_steps();
        assert!(
            stale.realtime_minus_boot > STEP_NS,
            "an offset decades off is replaced"
        );
        let real = proto::time::now_unix_nano();
        assert!(stale.unix_now().abs_diff(real) < 1_000_000_000);
    }

    /// The first run of a boot keeps its mapping, a later run of the same boot reads it back
    /// exactly, and another boot's is not used, nor one a day or more from now's.
    #[test]
    fn session_starts_map_alike_in_every_run_of_a_boot() {
        let dir = crate::testing::Scratch::new("session-clock");
        let first = WallClock::for_sessions(Some(&dir), "boot-a");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = WallClock::for_sessions(Some(&dir), "boot-a");
        assert_eq!(first.realtime_minus_boot, later.realtime_minus_boot);
        let keep = |offset: i128| {
            let kept = SessionClock {
                boot_id: "boot-a".into(),
                realtime_minus_boot: i64::try_from(offset).unwrap(),
            };
            std::fs::write(
                dir.join(SESSION_CLOCK_FILE),
                serde_json::to_vec(&kept).unwrap(),
            )
            .unwrap();
        };
        let an_hour_ago = first.realtime_minus_boot - 3_600_000_000_000;
        keep(an_hour_ago);
        assert_eq!(
            WallClock::for_sessions(Some(&dir), "boot-a").realtime_minus_boot,
            an_hour_ago,
            "a clock stepped by an hour since keeps the mapping"
        );
        let other = WallClock::for_sessions(Some(&dir), "boot-b");
        assert!(
            (other.realtime_minus_boot - first.realtime_minus_boot).abs() < STEP_NS,
            "not the other boot's"
        );
        keep(42);
        let absurd = WallClock::for_sessions(Some(&dir), "boot-a");
        assert!(
            (absurd.realtime_minus_boot - first.realtime_minus_boot).abs() < STEP_NS,
            "not one from 1970"
        );
    }
}
