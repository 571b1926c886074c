//! Time as the agent reads it. The kernel stamps records with `CLOCK_BOOTTIME` (monotonic,
//! counting suspend); evidence carries wall-clock time. [`WallClock`] maps one onto the
//! other.

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
}
