//! Identity: the process table (parents, images, audit sessions and their roots), the
//! registrations brokers make, cgroup paths, and the attribute stage that puts them
//! together for every event.

pub mod attribute;
pub mod cgroup;
pub mod proctable;
pub mod registry;
