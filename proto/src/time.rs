//! Wall-clock time as every side prints and compares it: Unix nanoseconds, and RFC 3339 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in Unix nanoseconds (0 before 1970, the maximum after 2554).
#[must_use]
pub fn now_unix_nano() -> u64 {
    ago(Duration::ZERO)
}

/// `span` before now, in Unix nanoseconds.
#[must_use]
pub fn ago(span: Duration) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(span);
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC to the nanosecond: exact, for machines.
#[must_use]
pub fn rfc3339_nanos(unix_nano: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(unix_nano)).to_string()
}

/// RFC 3339 UTC to the millisecond: short, for people.
#[must_use]
pub fn rfc3339_millis(unix_nano: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_nano)).to_string()
}

/// Nanoseconds in `d`, saturating.
#[must_use]
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
