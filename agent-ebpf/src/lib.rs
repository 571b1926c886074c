//! Empty library target: `agent` takes a build-dependency on this crate so cargo rebuilds the
//! embedded object whenever the kernel programs or their dependencies change.
#![no_std]
