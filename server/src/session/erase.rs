//! Deleting an account (spec section 5.31): the user's own `DeleteAccount`,
//! or an admin's `AdminDeleteUser`. The log forgets by the rewrite that
//! `store::erasure` describes; this adds what lives beside the log (codes,
//! counters and session addresses in the auth state, MLS key packages, the
//! blobs of the user's uploads) and the caches of this node.

use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;

use super::admin::audit_entry;
use super::{Identity, Service, Session, WireError};
use crate::blob::BlobId;
use crate::domain::{Event, UserId};
use crate::store::erasure::{self, Erased, ERASE_ACTION};
use crate::store::{ExpectedVersion, NewEvent, StreamAppend, StreamName, UserRecord};

impl Session {
    /// `DeleteAccount`: the caller's own account, after its password (and
    /// second factor, when on). The connection stays, signed out.
    pub(super) async fn delete_account(&mut self, req: wire::DeleteAccount) -> Result<Reply, WireError> {
        let me = self.require_identity()?.clone();
        let user = self.service.deletion_allowed(&me, req).await?;
        // Signed out first: the revocations close the account's other
        // connections, and this one answers.
        self.sign_out();
        self.acks = None;
        match self.service.erase_account(&user, None, None).await {
            Ok(done) => Ok(Reply::AccountDeleted(deleted(&done))),
            Err(e) => {
                self.sign_in(me);
                Err(e)
            }
        }
    }
}

impl Service {
    /// The caller's account, when `req` proves it is theirs to delete.
    async fn deletion_allowed(&self, me: &Identity, req: wire::DeleteAccount) -> Result<UserRecord, WireError> {
        let user = self.user(me.user_id).await?;
        if let Some(stored) = user.password_hash.clone() {
            let ok = self.verify_password(req.password, Some(stored)).await?;
            if let Some(email) = &user.email {
                self.record_login(email, ok).await?;
            }
            if !ok {
                return Err(WireError::new(ErrorCode::INVALID_CREDENTIALS, "the password is wrong"));
            }
        }
        if user.totp_sealed_secret.is_some() {
            if req.code.is_empty() {
                return Err(WireError::new(ErrorCode::MFA_REQUIRED, "give a code from the authenticator app"));
            }
            self.current_factor(me, &req.code).await?;
        }
        Ok(user)
    }

    /// `AdminDeleteUser`.
    pub(super) async fn admin_delete_user(
        &self,
        admin: &UserRecord,
        from: String,
        target: UserRecord,
    ) -> Result<Reply, WireError> {
        if target.user_id == admin.user_id {
            return Err(super::invalid("user", "delete your own account with DeleteAccount (natter account delete)"));
        }
        let done = self.erase_account(&target, Some(admin.user_id), Some(from)).await?;
        Ok(Reply::AccountDeleted(deleted(&done)))
    }

    /// Erases `user` (see `store::erasure`): the log rewritten with the
    /// sessions revoked (their connections close on every node), the audit
    /// entry when an admin (`by`, connected `from`) asked; then what lives
    /// beside the log.
    async fn erase_account(
        &self,
        user: &UserRecord,
        by: Option<UserId>,
        from: Option<String>,
    ) -> Result<Erased, WireError> {
        if user.erased {
            return Err(WireError::new(ErrorCode::NOT_FOUND, "no such account"));
        }
        let at = self.now();
        let id = user.user_id;
        // Out of every group first, handing ownership over as leaving does:
        // no group is left with a deleted owner.
        for c in self.store.readable_conversations(id).await? {
            if c.left_at.is_none() && c.name.is_some() {
                let leave = |s: &crate::domain::conversation::ConversationState| {
                    crate::domain::conversation::decide_leave(s, id, at)
                };
                match self.change_group(id, &c.conversation.to_string(), leave).await {
                    Ok(_) => {}
                    // Left meanwhile.
                    Err(e) if e.code == ErrorCode::NOT_A_MEMBER => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let sessions = self.store.sessions_of(id).await?;
        let appends = |plan: &erasure::Plan| {
            let mut events: Vec<NewEvent> = sessions
                .iter()
                .map(|s| NewEvent::fresh(Event::SessionRevoked { user_id: id, token_hash: s.token_hash, at }))
                .collect();
            events.push(NewEvent::fresh(Event::AccountErased { user_id: id, by, registered_at: user.created_at, at }));
            let user_stream = StreamName::user(id);
            let mut appends = vec![StreamAppend::new(user_stream, ExpectedVersion::Exact(plan.user_version), events)];
            if let Some(from) = &from {
                let detail = format!("{} messages, {} uploads", plan.messages, plan.blobs.len());
                appends.push(audit_entry(by, ERASE_ACTION, id, detail, from.clone(), at));
            }
            appends
        };
        let done = erasure::erase(self.store.as_ref(), id, at, appends).await?;
        let security = &self.security;
        security.auth_state.forget(id, done.subjects.clone(), done.tokens.clone()).await?;
        self.mls.key_packages.forget(id).await?;
        if let (Some(cluster), Some(email)) = (self.store.cluster(), &user.email) {
            cluster.login_succeeded(email).await?;
        }
        for sha256 in &done.blobs {
            // Bytes another upload shares stay (it refers to them).
            if let Err(e) = crate::media::gc::collect_unreferenced(
                self.store.as_ref(),
                self.media.blob.as_ref(),
                BlobId(*sha256),
                at,
            )
            .await
            {
                tracing::warn!(error = %e, "an erased account's blob was not deleted; the collector will");
            }
        }
        self.forget_user_info(id);
        self.admin.metrics.messages_erased("account", done.messages);
        tracing::info!(user = %id, messages = done.messages, uploads = done.blobs.len(), "account erased");
        Ok(done)
    }
}

fn deleted(done: &Erased) -> wire::AccountDeleted {
    wire::AccountDeleted { messages: done.messages, media: done.blobs.len() as u32 }
}
