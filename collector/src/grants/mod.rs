//! Just-in-time grants (grants.proto, docs/grants.md): the rules of a grant and its changes
//! (`rules`), what agents are told (`views`), the review of how grants were used (`review`),
//! and the Grants service operators call (`service`).

pub(crate) mod review;
pub(crate) mod rules;
pub(crate) mod service;
pub(crate) mod views;
