//! The Grants service, the RPC edge operators change grants through: it reads who asks,
//! checks the request by the grant rules, and hands the change to the writer as a closure
//! over those rules, so it is decided against the grant exactly as committed.

use std::{io::Read as _, sync::Arc};

use proto::{
    time::now_unix_nano,
    v1::{
        CreateGrantRequest, ExtendGrantRequest, Grant, ListGrantsRequest, ListGrantsResponse,
        ReviewRequest, ReviewResponse, RevokeGrantRequest, grants_server,
    },
};
use tonic::{Request, Response, Status};

use super::{
    review::review,
    rules::{self, MAX_NAME_BYTES, Op},
};
use crate::{
    error::GrantError,
    store::{Store, blocking},
    writer::WriterHandle,
};

/// The request header that says who asks for a change.
const ACTOR_HEADER: &str = "x-recorder-actor";

/// The statuses of grants.proto's Grants contract.
impl From<GrantError> for Status {
    fn from(e: GrantError) -> Self {
        let message = e.to_string();
        match e {
            GrantError::Invalid(_) => Self::invalid_argument(message),
            GrantError::NotFound(_) => Self::not_found(message),
            GrantError::Exists(_) => Self::already_exists(message),
            GrantError::Ended(_) => Self::failed_precondition(message),
            GrantError::Random(_) | GrantError::Store(_) => Self::internal(message),
            GrantError::Unavailable => Self::unavailable(message),
        }
    }
}

pub(crate) struct GrantsService {
    store: Arc<dyn Store>,
    writer: WriterHandle,
}

impl GrantsService {
    pub(crate) fn new(store: Arc<dyn Store>, writer: WriterHandle) -> Self {
        Self { store, writer }
    }

    /// Has the writer apply `op`, asked by `actor`; returns the grant as it becomes.
    async fn change(&self, op: Op, actor: String) -> Result<Response<Grant>, Status> {
        let id = op.id().to_owned();
        let change = self
            .writer
            .change_grant(
                id,
                Box::new(move |current, now| op.apply(current, now, actor)),
            )
            .await?;
        // `Op::apply` always records the grant it leaves.
        Ok(Response::new(change.grant.unwrap_or_default()))
    }
}

/// A fresh grant id: `g-` and 16 hex digits from the kernel's random source.
fn new_id() -> Result<String, GrantError> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(GrantError::Random)?;
    Ok(format!("g-{:016x}", u64::from_be_bytes(bytes)))
}

/// Who asks, from the request's `x-recorder-actor` header; "unknown" without one.
fn actor<T>(request: &Request<T>) -> Result<String, GrantError> {
    let Some(value) = request.metadata().get(ACTOR_HEADER) else {
        return Ok("unknown".into());
    };
    let actor = value
        .to_str()
        .map_err(|_| GrantError::Invalid(format!("{ACTOR_HEADER} is not printable ASCII")))?;
    if actor.trim().is_empty() {
        return Ok("unknown".into());
    }
    rules::bounded(ACTOR_HEADER, actor, MAX_NAME_BYTES)?;
    Ok(actor.to_owned())
}

#[tonic::async_trait]
impl grants_server::Grants for GrantsService {
    async fn create(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let actor = actor(&request)?;
        let grant = rules::new_grant(request.into_inner(), new_id()?, now_unix_nano())?;
        self.change(Op::Create(Box::new(grant)), actor).await
    }

    async fn list(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let ended_after = if request.into_inner().include_ended {
            0
        } else {
            now_unix_nano()
        };
        let store = Arc::clone(&self.store);
        let grants = blocking(move || store.grants(ended_after))
            .await
            .map_err(GrantError::from)?;
        Ok(Response::new(ListGrantsResponse { grants }))
    }

    async fn revoke(
        &self,
        request: Request<RevokeGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let actor = actor(&request)?;
        let RevokeGrantRequest { id, reason } = request.into_inner();
        self.change(Op::revoke(id, reason)?, actor).await
    }

    async fn extend(
        &self,
        request: Request<ExtendGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let actor = actor(&request)?;
        let ExtendGrantRequest { id, extend_millis } = request.into_inner();
        self.change(Op::extend(id, extend_millis)?, actor).await
    }

    async fn review(
        &self,
        request: Request<ReviewRequest>,
    ) -> Result<Response<ReviewResponse>, Status> {
        let since = request.into_inner().since_unix_nano;
        let store = Arc::clone(&self.store);
        let identities = blocking(move || review(store.as_ref(), since, now_unix_nano()))
            .await
            .map_err(GrantError::from)?;
        Ok(Response::new(ReviewResponse { identities }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_ids_are_fresh() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert!(a.starts_with("g-") && a.len() == 18, "{a}");
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
