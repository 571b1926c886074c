//! Identity: the process table (parents, images, audit sessions and their roots), the
//! registrations brokers make, cgroup paths, and the attribute stage that puts them
//! together for every event.

pub mod attribute;
pub mod cgroup;
pub mod proctable;
pub mod registry;

use proto::v1::identity::Kind;

/// Who is behind an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub kind: Kind,
    /// User name, unit name or container id; empty when unknown.
    pub name: String,
    /// Why the identity is unknown.
    pub reason: Option<String>,
    /// The grant a registered identity acts under.
    pub grant: Option<String>,
}
