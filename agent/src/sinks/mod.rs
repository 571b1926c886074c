//! Sinks that are not the chain: JSON lines on standard output, and the health counters.

pub mod metrics;
pub mod notify;
pub mod stdout;
