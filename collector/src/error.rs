//! The collector's domain errors: what went wrong in its own terms. Each RPC edge turns them
//! into the gRPC statuses its clients see (`impl From<..> for tonic::Status` in
//! `ingest`, `grants::service` and `query`), so nothing below the edges knows of gRPC.

use crate::store::StoreError;

/// Why a batch, a checkpoint or a Hello is refused, or a stream ends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// Malformed input, a hash that does not recompute, a field too large.
    #[error("{0}")]
    Invalid(String),
    /// A seq past the stored head, or a checkpoint the store cannot back yet.
    #[error("{0}")]
    Gap(String),
    /// A stored seq resent with a different hash.
    #[error("{0}")]
    Fork(String),
    /// The collector's own failure: a store that disagrees with itself (a record its head
    /// counts is not there), a check that panicked.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the collector's writer has stopped")]
    Unavailable,
}

/// Why a grant change or a grants request is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrantError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A create with an id that is taken.
    #[error("{0}")]
    Exists(String),
    /// A revoke or an extend of a grant that has ended, an approval of one that needs none,
    /// a create the policy refuses.
    #[error("{0}")]
    Ended(String),
    /// The caller may not: an approver approving their own request.
    #[error("{0}")]
    Denied(String),
    #[error("cannot read /dev/urandom for a grant id: {0}")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the collector's writer has stopped")]
    Unavailable,
    /// A create that would pass a limit (`proto::limits::VIEW_GRANTS_MAX`).
    #[error("{0}")]
    Exhausted(String),
}

/// Why a query is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an administrative call (tokens, hosts, enrollment) is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("{0}")]
    Invalid(String),
    /// A join token that is unknown, used, expired or for another host.
    #[error("{0}")]
    Token(String),
    /// Issuing or signing failed: the CA, the CSR.
    #[error("{0}")]
    Pki(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the collector's writer has stopped")]
    Unavailable,
}
