//! Bounds both ends of the ingest stream hold to, with one owner here: an agent never makes
//! what a collector refuses, and a collector never sends what an agent cannot read. Every
//! limit a client can hit is listed in docs/limits.md.

/// Serialized bytes of one event. An agent chains a larger one as a `too_large` gap
/// instead; a collector refuses a batch that holds one.
pub const EVENT_BYTES_MAX: usize = 1 << 20;

/// Grants that apply on one host (effective, pending, or ended within the hour a view keeps
/// them): a grant that would make more is refused with `RESOURCE_EXHAUSTED`, so a host's
/// view stays under [`VIEW_BYTES_MAX`].
pub const VIEW_GRANTS_MAX: usize = 1_000;

/// Bytes of one message from collector to agent. A view holds at most [`VIEW_GRANTS_MAX`]
/// grants, each with its host list cut to the host it is sent to (a few KiB at the most
/// every field allows), and the policy.
pub const VIEW_BYTES_MAX: usize = 16 << 20;
