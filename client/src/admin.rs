//! Admin requests (spec section 5.30): operating a deployment with an
//! admin's session. Every one answers `FORBIDDEN` to anyone else.

use natter_proto::wire::{self, request::Body, response};

use crate::{unexpected, Client, ClientError};

impl Client {
    /// A page of accounts in the order they were made, from `after` (the
    /// previous page's `next`); `prefix` keeps those whose email or name
    /// starts with it.
    ///
    /// # Errors
    /// `FORBIDDEN` (not an admin), `INVALID_ARGUMENT` (a cursor this server did not give).
    pub async fn admin_users(&self, prefix: &str, after: &str, limit: u32) -> Result<wire::AdminUsers, ClientError> {
        let body = Body::AdminListUsers(wire::AdminListUsers { prefix: prefix.into(), after: after.into(), limit });
        match self.request(body).await? {
            response::Result::AdminUsers(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// One account (by email or user id) with its sessions and identities.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND`, `INVALID_ARGUMENT`.
    pub async fn admin_user(&self, user: &str) -> Result<wire::AdminUserDetail, ClientError> {
        match self.request(Body::AdminGetUser(wire::AdminGetUser { user: user.into() })).await? {
            response::Result::AdminUser(detail) => Ok(detail),
            other => Err(unexpected(&other)),
        }
    }

    /// Disables (closing its connections everywhere) or enables an account;
    /// returns whether that changed anything.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND`, `INVALID_ARGUMENT` (your own account), `CONFLICT`.
    pub async fn admin_set_disabled(&self, user: &str, disabled: bool, reason: &str) -> Result<bool, ClientError> {
        let body =
            Body::AdminSetDisabled(wire::AdminSetDisabled { user: user.into(), disabled, reason: reason.into() });
        self.admin_done(body).await.map(|n| n > 0)
    }

    /// Deletes a group: its members removed, its messages' content and files
    /// erased; returns whether it was deleted now (false: it was already,
    /// and the erasure was finished).
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND` (also a direct conversation).
    pub async fn admin_delete_group(&self, conversation_id: &str) -> Result<bool, ClientError> {
        let body = Body::AdminDeleteGroup(wire::AdminDeleteGroup { conversation_id: conversation_id.into() });
        self.admin_done(body).await.map(|n| n > 0)
    }

    /// Deletes an account for good (spec section 5.31); returns how many
    /// messages were erased and uploads deleted.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND`, `INVALID_ARGUMENT` (one's own account).
    pub async fn admin_delete_user(&self, user: &str) -> Result<(u64, u32), ClientError> {
        match self.request(Body::AdminDeleteUser(wire::AdminDeleteUser { user: user.into() })).await? {
            response::Result::AccountDeleted(d) => Ok((d.messages, d.media)),
            other => Err(crate::unexpected(&other)),
        }
    }

    /// Revokes one session of an account (`session_id`), or all; returns how many.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND` (the account, or no such session of it).
    pub async fn admin_revoke_sessions(&self, user: &str, session_id: Option<&str>) -> Result<u32, ClientError> {
        let body = Body::AdminRevokeSessions(wire::AdminRevokeSessions {
            user: user.into(),
            session_id: session_id.unwrap_or_default().into(),
        });
        self.admin_done(body).await
    }

    /// Turns an account's TOTP off; returns whether it was on.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND`.
    pub async fn admin_reset_mfa(&self, user: &str) -> Result<bool, ClientError> {
        self.admin_done(Body::AdminResetMfa(wire::AdminResetMfa { user: user.into() })).await.map(|n| n > 0)
    }

    /// Grants or withdraws the admin role; returns whether that changed anything.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND`, `INVALID_ARGUMENT` (withdrawing your own).
    pub async fn admin_set_admin(&self, user: &str, admin: bool) -> Result<bool, ClientError> {
        self.admin_done(Body::AdminSetAdmin(wire::AdminSetAdmin { user: user.into(), admin })).await.map(|n| n > 0)
    }

    /// Audit entries after `after`, oldest first, of `actor` (email or id)
    /// when given, at or after `since_ms`.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND` (no such actor).
    pub async fn admin_audit(
        &self,
        after: u64,
        actor: Option<&str>,
        since_ms: u64,
        limit: u32,
    ) -> Result<wire::AuditPage, ClientError> {
        let body =
            Body::AdminAudit(wire::AdminAudit { after, actor: actor.unwrap_or_default().into(), since_ms, limit });
        match self.request(body).await? {
            response::Result::Audit(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of groups in the order they were made, from `after` (the
    /// previous page's `next`); `prefix` keeps those whose name starts with it.
    ///
    /// # Errors
    /// `FORBIDDEN`, `INVALID_ARGUMENT` (a cursor this server did not give).
    pub async fn admin_groups(&self, prefix: &str, after: &str, limit: u32) -> Result<wire::AdminGroups, ClientError> {
        let body = Body::AdminListGroups(wire::AdminListGroups { prefix: prefix.into(), after: after.into(), limit });
        match self.request(body).await? {
            response::Result::AdminGroups(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// One group with its members and their roles.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_FOUND` (no such group; direct conversations are not shown), `INVALID_ARGUMENT`.
    pub async fn admin_group(&self, conversation_id: &str) -> Result<wire::AdminGroupDetail, ClientError> {
        let body = Body::AdminGetGroup(wire::AdminGetGroup { conversation_id: conversation_id.into() });
        match self.request(body).await? {
            response::Result::AdminGroup(detail) => Ok(detail),
            other => Err(unexpected(&other)),
        }
    }

    /// The deployment's status as the node answering sees it.
    ///
    /// # Errors
    /// `FORBIDDEN`.
    pub async fn admin_status(&self) -> Result<wire::ServerStatus, ClientError> {
        match self.request(Body::AdminStatus(wire::AdminStatus {})).await? {
            response::Result::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    async fn admin_done(&self, body: Body) -> Result<u32, ClientError> {
        match self.request(body).await? {
            response::Result::AdminDone(done) => Ok(done.changed),
            other => Err(unexpected(&other)),
        }
    }
}
