//! Operating a running deployment over the protocol (spec section 5.30):
//! accounts, their sessions and second factor, the admin role, the audit
//! trail and the deployment's status. Every request needs an admin's session
//! (granted in the log, or named in `[admin] bootstrap`); every change is
//! appended together with its `AdminActed` entry in the `audit` stream.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use natter_proto::wire::{self, request::Body, response::Result as Reply};
use natter_proto::ErrorCode;
use prost::Message as _;
use uuid::Uuid;

use super::{invalid, Identity, Service, WireError};
use crate::domain::conversation::ConversationKind;
use crate::domain::{AdminAction, ConversationId, Email, Event, Millis, UserId};
use crate::store::{AppendError, ExpectedVersion, NewEvent, StreamAppend, StreamName, UserListEntry, UserRecord};

/// What admin requests need besides the store.
pub struct AdminSetup {
    /// Accounts that hold the role by configuration.
    pub bootstrap: Vec<Email>,
    pub require_totp: bool,
    pub started: Instant,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `sqlite` or `postgres`.
    pub store_kind: &'static str,
}

/// A page of users or audit entries holds at most this many.
const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;
/// Audit entries one request looks at, however few match its filter (the
/// answer's `next` says where to go on).
const AUDIT_SCAN: u32 = 10_000;
/// Tries of a change that lost a race with the account's own activity.
const RACE_TRIES: usize = 5;

/// The actions the audit trail names.
mod action {
    pub const DISABLE: &str = "disable";
    pub const ENABLE: &str = "enable";
    pub const REVOKE_SESSIONS: &str = "revoke_sessions";
    pub const RESET_MFA: &str = "reset_mfa";
    pub const GRANT_ADMIN: &str = "grant_admin";
    pub const REVOKE_ADMIN: &str = "revoke_admin";
    pub const DELETE_GROUP: &str = "delete_group";
}

fn page_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// The audit entry's events for `action` by `actor` on `target`.
pub fn audit_entry(
    actor: Option<UserId>,
    action: &str,
    target: UserId,
    detail: String,
    from: String,
    at: Millis,
) -> StreamAppend {
    let entry = AdminAction { actor, action: action.to_owned(), target, detail, from, at };
    StreamAppend::new(StreamName::audit(), ExpectedVersion::Any, vec![NewEvent::fresh(Event::AdminActed(entry))])
}

/// Grants the admin role to `email`'s account without a server: what
/// `natter-admin grant-admin` does on the store. Answers whether the account
/// held the role already.
///
/// # Errors
/// No such account, or the store failed.
pub async fn grant_offline(store: &dyn crate::store::Store, email: &Email, at: Millis) -> Result<bool, GrantError> {
    let user = store.user_by_email(email).await?.ok_or_else(|| GrantError::NoSuchAccount(email.clone()))?;
    if user.admin {
        return Ok(true);
    }
    let granted = Event::AdminGranted { user_id: user.user_id, by: None, at };
    store
        .append(vec![
            StreamAppend::new(StreamName::user(user.user_id), ExpectedVersion::Any, vec![NewEvent::fresh(granted)]),
            audit_entry(None, action::GRANT_ADMIN, user.user_id, String::new(), "offline".into(), at),
        ])
        .await
        .map_err(|e| match e {
            AppendError::Store(e) => GrantError::Store(e),
            other => GrantError::Store(crate::store::StoreError::Database(other.to_string())),
        })?;
    Ok(false)
}

/// Why [`grant_offline`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("no account has the email {0}")]
    NoSuchAccount(Email),
    #[error("store")]
    Store(#[from] crate::store::StoreError),
}

impl Service {
    /// Handles an admin request from `me`, connected from `from`.
    pub(super) async fn admin(&self, me: Option<&Identity>, from: IpAddr, body: Body) -> Result<Reply, WireError> {
        let me = me.ok_or_else(|| WireError::new(ErrorCode::UNAUTHENTICATED, "sign in first"))?;
        let admin = self.require_admin(me).await?;
        let from = from.to_string();
        match body {
            Body::AdminListUsers(req) => self.admin_list_users(req).await,
            Body::AdminGetUser(req) => self.admin_get_user(req).await,
            Body::AdminSetDisabled(req) => self.admin_set_disabled(&admin, from, req).await,
            Body::AdminRevokeSessions(req) => self.admin_revoke_sessions(&admin, from, req).await,
            Body::AdminResetMfa(req) => self.admin_reset_mfa(&admin, from, req).await,
            Body::AdminSetAdmin(req) => self.admin_set_admin(&admin, from, req).await,
            Body::AdminAudit(req) => self.admin_audit(req).await,
            Body::AdminStatus(_) => self.admin_status().await,
            Body::AdminListGroups(req) => self.admin_list_groups(req).await,
            Body::AdminGetGroup(req) => self.admin_get_group(req).await,
            Body::AdminDeleteGroup(req) => self.admin_delete_group(&admin, from, req).await,
            Body::AdminDeleteUser(req) => {
                let target = self.account_named(&req.user).await?;
                self.admin_delete_user(&admin, from, target).await
            }
            _ => unreachable!("only admin requests are routed here"),
        }
    }

    /// Whether `user` holds the admin role: granted in the log, or named in
    /// `[admin] bootstrap`.
    fn holds_admin(&self, user: &UserRecord) -> bool {
        user.admin || user.email.as_ref().is_some_and(|e| self.admin.bootstrap.contains(e))
    }

    /// The caller's account, read fresh (a withdrawn role counts at once),
    /// when it may make admin requests.
    async fn require_admin(&self, me: &Identity) -> Result<UserRecord, WireError> {
        let user = self.user(me.user_id).await?;
        if !self.holds_admin(&user) {
            return Err(WireError::new(ErrorCode::FORBIDDEN, "this request is for admins only"));
        }
        if self.admin.require_totp && user.totp_sealed_secret.is_none() {
            return Err(WireError::new(
                ErrorCode::FORBIDDEN,
                "admins must have a TOTP second factor on here (admin.require_totp): `natter mfa enable` first",
            ));
        }
        Ok(user)
    }

    /// The account a request names: by user id or by email.
    async fn account_named(&self, name: &str) -> Result<UserRecord, WireError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid("user", "name the account by its email or user id"));
        }
        let user = match Uuid::try_parse(name) {
            Ok(id) => self.store.user_by_id(UserId(id)).await?,
            Err(_) => {
                let email = Email::parse(name).map_err(|_| invalid("user", "neither an email nor a user id"))?;
                self.store.user_by_email(&email).await?
            }
        };
        user.ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "no such account"))
    }

    fn admin_user(&self, entry: &UserListEntry) -> wire::AdminUser {
        let u = &entry.user;
        wire::AdminUser {
            user_id: u.user_id.to_string(),
            email: u.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default(),
            display_name: u.display_name.clone(),
            phone: u.phone.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default(),
            created_at_ms: u.created_at.0,
            email_verified: u.email_verified,
            totp: u.totp_sealed_secret.is_some(),
            admin: self.holds_admin(u),
            disabled: u.disabled,
            sessions: entry.sessions,
        }
    }

    async fn admin_list_users(&self, req: wire::AdminListUsers) -> Result<Reply, WireError> {
        let after = page_cursor(&req.after, |id| Uuid::try_parse(id).ok().map(UserId))?;
        let limit = page_limit(req.limit);
        let page = self.store.users_page(page_prefix(&req.prefix), after, limit).await?;
        let (users, next) =
            self.fit_page(&page, limit, |e| self.admin_user(e), |e| (e.user.created_at, e.user.user_id));
        Ok(Reply::AdminUsers(wire::AdminUsers { users, next }))
    }

    /// As much of a page of a store's list as the frame allows, in wire form,
    /// and the `next` cursor (`<created_at_ms>.<id>` of the last one given)
    /// when more may follow.
    fn fit_page<E, W: prost::Message, Id: std::fmt::Display>(
        &self,
        page: &[E],
        limit: u32,
        to_wire: impl Fn(&E) -> W,
        key: impl Fn(&E) -> (Millis, Id),
    ) -> (Vec<W>, String) {
        let (budget, mut size, mut last) = (self.frame_budget(), 0, None);
        let mut items = Vec::with_capacity(page.len());
        for entry in page {
            let item = to_wire(entry);
            size += item.encoded_len() + 4;
            if size > budget {
                break;
            }
            last = Some(key(entry));
            items.push(item);
        }
        let more = page.len() as u32 == limit || items.len() < page.len();
        let next = match last {
            Some((at, id)) if more => format!("{}.{id}", at.0),
            _ => String::new(),
        };
        (items, next)
    }

    async fn admin_get_user(&self, req: wire::AdminGetUser) -> Result<Reply, WireError> {
        let user = self.account_named(&req.user).await?;
        let sessions = self.session_infos(user.user_id, None).await?;
        let identities = self.store.identities_of(user.user_id).await?;
        let entry = UserListEntry { user, sessions: sessions.len() as u32 };
        Ok(Reply::AdminUser(wire::AdminUserDetail {
            user: Some(self.admin_user(&entry)),
            sessions,
            identities: identities.iter().map(|i| i.provider.as_str().to_owned()).collect(),
        }))
    }

    async fn admin_set_disabled(
        &self,
        admin: &UserRecord,
        from: String,
        req: wire::AdminSetDisabled,
    ) -> Result<Reply, WireError> {
        let target = self.account_named(&req.user).await?;
        if req.reason.len() > 500 {
            return Err(invalid("reason", "at most 500 bytes"));
        }
        if target.user_id == admin.user_id && req.disabled {
            return Err(invalid("user", "an admin cannot disable their own account"));
        }
        let stream = StreamName::user(target.user_id);
        for _ in 0..RACE_TRIES {
            let user = self.user(target.user_id).await?;
            if user.disabled == req.disabled {
                return Ok(Reply::AdminDone(wire::AdminDone { changed: 0 }));
            }
            let at = self.now();
            let by = Some(admin.user_id);
            let appends = if req.disabled {
                // The sessions as of this version of the account's stream: one
                // that starts meanwhile moves the version, and this is retried,
                // so no session outlives the disabling.
                let version = self.store.last_in_stream(&stream).await?.map_or(0, |r| r.version);
                let mut events = vec![NewEvent::fresh(Event::AccountDisabled { user_id: user.user_id, by, at })];
                for s in self.store.sessions_of(user.user_id).await? {
                    let revoked = Event::SessionRevoked { user_id: user.user_id, token_hash: s.token_hash, at };
                    events.push(NewEvent::fresh(revoked));
                }
                StreamAppend::new(stream.clone(), ExpectedVersion::Exact(version), events)
            } else {
                let enabled = Event::AccountEnabled { user_id: user.user_id, by, at };
                StreamAppend::new(stream.clone(), ExpectedVersion::Any, vec![NewEvent::fresh(enabled)])
            };
            let what = if req.disabled { action::DISABLE } else { action::ENABLE };
            let audit = audit_entry(by, what, user.user_id, req.reason.clone(), from.clone(), at);
            match self.store.append(vec![appends, audit]).await {
                Ok(_) => return Ok(Reply::AdminDone(wire::AdminDone { changed: 1 })),
                Err(AppendError::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(WireError::new(ErrorCode::CONFLICT, "the account kept changing; retry"))
    }

    async fn admin_revoke_sessions(
        &self,
        admin: &UserRecord,
        from: String,
        req: wire::AdminRevokeSessions,
    ) -> Result<Reply, WireError> {
        let target = self.account_named(&req.user).await?;
        let sessions = self.store.sessions_of(target.user_id).await?;
        let chosen: Vec<_> = match req.session_id.trim() {
            "" => sessions,
            id => {
                let not_found = || WireError::new(ErrorCode::NOT_FOUND, "the account has no such session");
                let device = Uuid::try_parse(id).map_err(|_| not_found())?;
                vec![sessions.into_iter().find(|s| s.device_id.0 == device).ok_or_else(not_found)?]
            }
        };
        if chosen.is_empty() {
            return Ok(Reply::AdminDone(wire::AdminDone { changed: 0 }));
        }
        let at = self.now();
        let events = chosen
            .iter()
            .map(|s| NewEvent::fresh(Event::SessionRevoked { user_id: target.user_id, token_hash: s.token_hash, at }))
            .collect();
        let detail = match chosen.as_slice() {
            [one] if !req.session_id.trim().is_empty() => one.device_id.to_string(),
            _ => "all".to_owned(),
        };
        self.store
            .append(vec![
                StreamAppend::new(StreamName::user(target.user_id), ExpectedVersion::Any, events),
                audit_entry(Some(admin.user_id), action::REVOKE_SESSIONS, target.user_id, detail, from, at),
            ])
            .await?;
        Ok(Reply::AdminDone(wire::AdminDone { changed: chosen.len() as u32 }))
    }

    async fn admin_reset_mfa(
        &self,
        admin: &UserRecord,
        from: String,
        req: wire::AdminResetMfa,
    ) -> Result<Reply, WireError> {
        let target = self.account_named(&req.user).await?;
        if target.totp_sealed_secret.is_none() {
            return Ok(Reply::AdminDone(wire::AdminDone { changed: 0 }));
        }
        let at = self.now();
        let off = Event::TotpDisabled { user_id: target.user_id, at };
        self.store
            .append(vec![
                StreamAppend::new(StreamName::user(target.user_id), ExpectedVersion::Any, vec![NewEvent::fresh(off)]),
                audit_entry(Some(admin.user_id), action::RESET_MFA, target.user_id, String::new(), from, at),
            ])
            .await?;
        Ok(Reply::AdminDone(wire::AdminDone { changed: 1 }))
    }

    async fn admin_set_admin(
        &self,
        admin: &UserRecord,
        from: String,
        req: wire::AdminSetAdmin,
    ) -> Result<Reply, WireError> {
        let target = self.account_named(&req.user).await?;
        if target.user_id == admin.user_id && !req.admin {
            return Err(invalid("user", "an admin cannot withdraw their own role (ask another admin)"));
        }
        if target.admin == req.admin {
            return Ok(Reply::AdminDone(wire::AdminDone { changed: 0 }));
        }
        let (at, by) = (self.now(), Some(admin.user_id));
        let (event, what) = if req.admin {
            (Event::AdminGranted { user_id: target.user_id, by, at }, action::GRANT_ADMIN)
        } else {
            (Event::AdminRevoked { user_id: target.user_id, by, at }, action::REVOKE_ADMIN)
        };
        self.store
            .append(vec![
                StreamAppend::new(StreamName::user(target.user_id), ExpectedVersion::Any, vec![NewEvent::fresh(event)]),
                audit_entry(by, what, target.user_id, String::new(), from, at),
            ])
            .await?;
        Ok(Reply::AdminDone(wire::AdminDone { changed: 1 }))
    }

    async fn admin_audit(&self, req: wire::AdminAudit) -> Result<Reply, WireError> {
        let actor = match req.actor.trim() {
            "" => None,
            name => Some(self.account_named(name).await?.user_id),
        };
        let limit = page_limit(req.limit) as usize;
        let stream = StreamName::audit();
        let mut entries = Vec::new();
        let mut next = req.after;
        let budget = self.frame_budget();
        let mut size = 0;
        'scan: while next - req.after < u64::from(AUDIT_SCAN) && entries.len() < limit {
            let page = self.store.read_stream(&stream, next, MAX_PAGE).await?;
            let done = page.len() < MAX_PAGE as usize;
            for rec in page {
                let Event::AdminActed(a) = &rec.event else { continue };
                if actor.is_none_or(|who| a.actor == Some(who)) && a.at.0 >= req.since_ms {
                    let entry = self.audit_to_wire(rec.version, a).await?;
                    size += entry.encoded_len() + 4;
                    if size > budget {
                        break 'scan;
                    }
                    entries.push(entry);
                }
                next = rec.version;
                if entries.len() == limit {
                    break 'scan;
                }
            }
            if done {
                break;
            }
        }
        Ok(Reply::Audit(wire::AuditPage { entries, next }))
    }

    async fn audit_to_wire(&self, seq: u64, a: &AdminAction) -> Result<wire::AuditEntry, WireError> {
        let email_of = |u: Option<UserId>| async move {
            match u {
                Some(u) => self.user_info(u).await.map(|i| i.email.as_ref().map(|e| e.as_str().to_owned())),
                None => Ok(None),
            }
        };
        Ok(wire::AuditEntry {
            seq,
            at_ms: a.at.0,
            actor_user_id: a.actor.map(|u| u.to_string()).unwrap_or_default(),
            actor_email: email_of(a.actor).await?.unwrap_or_default(),
            action: a.action.clone(),
            target_user_id: a.target.to_string(),
            target_email: email_of(Some(a.target)).await?.unwrap_or_default(),
            detail: a.detail.clone(),
            from: a.from.clone(),
        })
    }

    async fn admin_list_groups(&self, req: wire::AdminListGroups) -> Result<Reply, WireError> {
        let after = page_cursor(&req.after, |id| ConversationId::parse(id).ok())?;
        let limit = page_limit(req.limit);
        let page = self.store.groups_page(page_prefix(&req.prefix), after, limit).await?;
        let (groups, next) = self.fit_page(&page, limit, admin_group, |g| (g.created_at, g.conversation_id));
        Ok(Reply::AdminGroups(wire::AdminGroups { groups, next }))
    }

    /// Removes every member (`GroupDeleted`, audited), then erases the
    /// content of every message (the retention worker's rewrite, as of the
    /// end of time). Run again, it finishes an erasure that was cut short.
    async fn admin_delete_group(
        &self,
        admin: &UserRecord,
        from: String,
        req: wire::AdminDeleteGroup,
    ) -> Result<Reply, WireError> {
        let id = ConversationId::parse(&req.conversation_id)?;
        let not_found = || WireError::new(ErrorCode::NOT_FOUND, "no such group");
        let state = self.store.conversation(id).await?.ok_or_else(not_found)?;
        if state.kind != ConversationKind::Group {
            return Err(not_found());
        }
        let stream = StreamName::conversation(id);
        let mut changed = 0;
        for attempt in 0..=RACE_TRIES {
            let last = self.store.last_in_stream(&stream).await?;
            if matches!(last.as_ref().map(|e| &e.event), Some(Event::GroupDeleted { .. })) {
                break;
            }
            if attempt == RACE_TRIES {
                return Err(WireError::new(ErrorCode::CONFLICT, "the group kept changing; retry"));
            }
            let at = self.now();
            let version = last.map_or(0, |e| e.version);
            let deleted = Event::GroupDeleted { conversation_id: id, by: Some(admin.user_id), at };
            let append =
                StreamAppend::new(stream.clone(), ExpectedVersion::Exact(version), vec![NewEvent::fresh(deleted)]);
            let detail = format!("{id} {}", state.name.clone().unwrap_or_default());
            let audit = audit_entry(Some(admin.user_id), action::DELETE_GROUP, admin.user_id, detail, from.clone(), at);
            match self.store.append(vec![append, audit]).await {
                Ok(_) => {
                    changed = 1;
                    break;
                }
                Err(AppendError::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let expired = crate::retention::expire(
            self.store.as_ref(),
            self.media.blob.as_ref(),
            id,
            crate::retention::END_OF_TIME,
            self.now(),
        )
        .await?;
        self.admin.metrics.messages_erased("group", expired.0);
        tracing::info!(group = %id, messages = expired.0, blobs = expired.1, "group deleted");
        Ok(Reply::AdminDone(wire::AdminDone { changed }))
    }

    async fn admin_get_group(&self, req: wire::AdminGetGroup) -> Result<Reply, WireError> {
        let id = ConversationId::parse(&req.conversation_id)?;
        let not_found = || WireError::new(ErrorCode::NOT_FOUND, "no such group");
        let state = self.store.conversation(id).await?.ok_or_else(not_found)?;
        if state.kind != ConversationKind::Group {
            // Direct conversations are two people's own: not for the admin to browse.
            return Err(not_found());
        }
        let last = self.store.last_in_stream(&StreamName::conversation(id)).await?;
        let mut members = Vec::with_capacity(state.members.len());
        for m in &state.members {
            let info = self.user_info(m.user).await?;
            members.push(super::convert::member(m.user, Some(m.role), &info));
        }
        let group = wire::AdminGroup {
            conversation_id: id.to_string(),
            name: state.name.clone().unwrap_or_default(),
            e2ee: state.e2ee,
            created_at_ms: state.created_at.0,
            last_activity_ms: last.map_or(state.created_at.0, |e| e.recorded_at.0),
            last_seq: state.version.0,
            members: state.members.len() as u32,
        };
        Ok(Reply::AdminGroup(wire::AdminGroupDetail { group: Some(group), members }))
    }

    async fn admin_status(&self) -> Result<Reply, WireError> {
        let stats = self.store.stats().await?;
        let search_position = match &self.search {
            Some(s) => s.index.checkpoint().await.map_err(|e| {
                tracing::warn!(error = %e, "search index checkpoint unreadable");
                WireError::new(ErrorCode::INTERNAL, "the search index cannot be read")
            })?,
            None => 0,
        };
        let (node_id, nodes) = match self.store.cluster() {
            Some(cluster) => {
                let nodes = cluster.nodes().await?;
                let nodes = nodes
                    .into_iter()
                    .map(|n| wire::NodeStatus {
                        node_id: n.node_id,
                        heartbeat_age_secs: n.heartbeat_age_secs,
                        online_users: n.online_users,
                    })
                    .collect();
                (cluster.node_id().to_owned(), nodes)
            }
            None => (self.config.server_name.clone(), Vec::new()),
        };
        Ok(Reply::Status(wire::ServerStatus {
            node_id,
            uptime_secs: self.admin.started.elapsed().as_secs(),
            connections: self.admin.metrics.connections_open(),
            sessions: self.router.connected() as u64,
            head: stats.head,
            users: stats.users,
            conversations: stats.conversations,
            messages: stats.messages,
            search_position,
            store: self.admin.store_kind.to_owned(),
            nodes,
        }))
    }
}

fn admin_group(g: &crate::store::GroupListEntry) -> wire::AdminGroup {
    wire::AdminGroup {
        conversation_id: g.conversation_id.to_string(),
        name: g.name.clone(),
        e2ee: g.e2ee,
        created_at_ms: g.created_at.0,
        last_activity_ms: g.last_activity.0,
        last_seq: g.last_seq.0,
        members: g.members,
    }
}

/// A list's `after`: empty from the start, else a `next` this server gave.
fn page_cursor<T>(cursor: &str, id: impl Fn(&str) -> Option<T>) -> Result<Option<(Millis, T)>, WireError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let parsed = cursor.split_once('.').and_then(|(at, rest)| Some((Millis(at.parse().ok()?), id(rest)?)));
    parsed.map(Some).ok_or_else(|| invalid("after", "not a `next` this server gave"))
}

/// A list's `prefix`, folded; `None` for all.
fn page_prefix(prefix: &str) -> Option<String> {
    let prefix = prefix.trim().to_lowercase();
    (!prefix.is_empty()).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let parse = |c: &str| page_cursor(c, |id| Uuid::try_parse(id).ok().map(UserId)).map_err(|e| e.code);
        let id = UserId(Uuid::from_u128(7));
        assert_eq!(parse(&format!("12.{id}")), Ok(Some((Millis(12), id))));
        assert_eq!(parse(""), Ok(None), "from the start");
        for bad in ["12", "x.y", "12.not-a-uuid", ".00000000-0000-0000-0000-000000000007"] {
            assert_eq!(parse(bad), Err(ErrorCode::INVALID_ARGUMENT), "{bad:?}");
        }
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page_limit(0), DEFAULT_PAGE);
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(100_000), MAX_PAGE);
    }
}
