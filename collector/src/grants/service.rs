//! The Grants service, the RPC edge operators change grants through: it lets the caller in
//! by role (the actor of every change is the caller's certificate), checks the request by
//! the grant rules, and hands the change to the writer as a closure over those rules, so it
//! is decided against the grant exactly as committed.

use std::{io::Read as _, sync::Arc};

use pki::Role;
use proto::{
    time::now_unix_nano,
    v1::{
        ApproveRequest, CreateGrantRequest, ExtendGrantRequest, Grant, ListGrantsRequest,
        ListGrantsResponse, ReviewRequest, ReviewResponse, RevokeGrantRequest, grants_server,
    },
};
use tonic::{Request, Response, Status};

use super::{
    review::review,
    rules::{self, Op},
    views::Views,
};
use crate::{
    auth::{Caller, Gate},
    error::GrantError,
    query::{at, params},
    store::{Store, StoreError, blocking},
    writer::WriterHandle,
};

/// The statuses of grants.proto's Grants contract.
impl From<GrantError> for Status {
    fn from(e: GrantError) -> Self {
        let message = e.to_string();
        match e {
            GrantError::Invalid(_) => Self::invalid_argument(message),
            GrantError::NotFound(_) => Self::not_found(message),
            GrantError::Exists(_) => Self::already_exists(message),
            GrantError::Ended(_) => Self::failed_precondition(message),
            GrantError::Denied(_) => Self::permission_denied(message),
            GrantError::Store(StoreError::Full(_)) | GrantError::Exhausted(_) => {
                Self::resource_exhausted(message)
            }
            GrantError::Store(e) if e.is_moved() => Self::aborted(format!("{message}; try again")),
            GrantError::Random(_) | GrantError::Store(_) => Self::internal(message),
            GrantError::Unavailable => Self::unavailable(message),
        }
    }
}

pub(crate) struct GrantsService {
    store: Arc<dyn Store>,
    writer: WriterHandle,
    gate: Gate,
    /// What agents are sent: a new grant must leave every host's view in bounds.
    views: Views,
    /// Held from the room check to the commit of a new grant, so two creates cannot both
    /// take the last room.
    creating: tokio::sync::Mutex<()>,
    /// The policy's `require_approval`: every grant needs two people.
    require_approval: bool,
}

impl GrantsService {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        writer: WriterHandle,
        gate: Gate,
        views: Views,
        require_approval: bool,
    ) -> Self {
        Self {
            store,
            writer,
            gate,
            views,
            creating: tokio::sync::Mutex::new(()),
            require_approval,
        }
    }

    /// Has the writer apply `op` for `caller`; returns the grant as it becomes. A refusal
    /// of what the caller may not do is chained.
    async fn change(&self, op: Op, caller: &Caller) -> Result<Response<Grant>, Status> {
        let (id, actor) = (op.id().to_owned(), caller.name());
        let change = self
            .writer
            .change_grant(
                id,
                Arc::new(move |current, now| op.clone().apply(current, now, actor.clone())),
            )
            .await;
        match change {
            // `Op::apply` always records the grant it leaves.
            Ok(change) => Ok(Response::new(change.grant.unwrap_or_default())),
            Err(e @ GrantError::Denied(_)) => {
                self.gate.refused(&caller.name(), "", &e.to_string()).await;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A new grant for `caller`: effective, or `pending` an approval.
    async fn make(
        &self,
        request: CreateGrantRequest,
        caller: &Caller,
        pending: bool,
    ) -> Result<Response<Grant>, Status> {
        let grant = rules::new_grant(request, new_id()?, now_unix_nano(), &caller.name(), pending)?;
        let _one_at_a_time = self.creating.lock().await;
        self.views.check_room(&grant).await?;
        self.change(Op::Create(Box::new(grant)), caller).await
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

#[tonic::async_trait]
impl grants_server::Grants for GrantsService {
    async fn create(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let caller = self
            .gate
            .operator(&request, Role::Approver, "creating a grant")
            .await?;
        if self.require_approval {
            return Err(GrantError::Ended(
                "the policy requires every grant to be approved by a second person: use \
                 `grant request`, and have someone else `grant approve` it"
                    .into(),
            )
            .into());
        }
        self.make(request.into_inner(), &caller, false).await
    }

    async fn request(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let caller = self
            .gate
            .operator(&request, Role::Approver, "requesting a grant")
            .await?;
        self.make(request.into_inner(), &caller, true).await
    }

    async fn approve(&self, request: Request<ApproveRequest>) -> Result<Response<Grant>, Status> {
        let caller = self
            .gate
            .operator(&request, Role::Approver, "approving a grant")
            .await?;
        self.change(Op::approve(request.into_inner().id)?, &caller)
            .await
    }

    async fn list(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let caller = self
            .gate
            .operator(&request, Role::Auditor, "listing grants")
            .await?;
        let include_ended = request.into_inner().include_ended;
        self.gate
            .read(
                &caller,
                "ListGrants",
                format!("include_ended={include_ended}"),
            )
            .await?;
        let ended_after = if include_ended { 0 } else { now_unix_nano() };
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
        let caller = self
            .gate
            .operator(&request, Role::Approver, "revoking a grant")
            .await?;
        let RevokeGrantRequest { id, reason } = request.into_inner();
        self.change(Op::revoke(id, reason)?, &caller).await
    }

    async fn extend(
        &self,
        request: Request<ExtendGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let caller = self
            .gate
            .operator(&request, Role::Approver, "extending a grant")
            .await?;
        let ExtendGrantRequest { id, extend_millis } = request.into_inner();
        self.change(Op::extend(id, extend_millis)?, &caller).await
    }

    async fn review(
        &self,
        request: Request<ReviewRequest>,
    ) -> Result<Response<ReviewResponse>, Status> {
        let caller = self
            .gate
            .operator(&request, Role::Auditor, "reviewing grants")
            .await?;
        let since = request.into_inner().since_unix_nano;
        self.gate
            .read(&caller, "Review", params(&[("since", at(since))]))
            .await?;
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
