//! Authenticated connection state and request dispatch.
//!
//! Turns protocol requests into domain commands, appends the resulting events,
//! and answers. Knows protobuf types (it is an edge) but neither quinn nor SQL:
//! the transport hands it decoded frames, the store hides the database.

mod account_security;
pub mod admin;
pub mod convert;
mod erase;
pub mod feed;
mod groups;
pub mod guard;
pub mod media;
mod messaging;
pub mod mls;
mod oauth;
mod phone;
mod presence;
pub mod push;
mod retention;
mod search;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use natter_proto::wire::{self, request::Body, response::Result as Reply};
use natter_proto::ErrorCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::{hash_token, PasswordHasherArgon2};
use crate::domain::{
    account,
    conversation::{ConversationKind, ConversationState},
    ConversationId, DeviceId, Email, Event, Millis, Rejection, SignInMethod, TokenHash, UserId,
};
use crate::projection::router::{Registration, Router};
use crate::store::{
    AppendError, ConversationSummary, ExpectedVersion, Membership, NewEvent, Position, Store, StoreError, StreamAppend,
    StreamName, UserRecord,
};

pub use feed::FeedSource;
pub use presence::RateLimit;

/// Settings the session layer needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub server_name: String,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub max_group_members: usize,
    /// How long a typing signal shows.
    pub typing_ttl_ms: u32,
    /// Typing signals a connection may send: per second, and in a burst.
    pub typing_per_second: f64,
    pub typing_burst: u32,
    pub login_guard: guard::GuardConfig,
    /// A session unused this long, or this old, no longer resumes (`None`: never).
    pub session_idle: Option<std::time::Duration>,
    pub session_lifetime: Option<std::time::Duration>,
    /// The deployment's limit on message age (`retention.max_age_secs`; 0: none).
    pub retention_max_age_secs: u64,
}

/// The users with a leaf in an encrypted group's epoch: (epoch, users).
type EpochUsers = (u64, Arc<[UserId]>);

/// Shared state of all sessions.
pub struct Service {
    store: Arc<dyn Store>,
    hasher: PasswordHasherArgon2,
    /// Password hashes computed at once: each takes the configured argon2
    /// memory (19 MiB by default), so a burst of logins must not fan out over
    /// the whole blocking pool.
    hashing: Arc<tokio::sync::Semaphore>,
    guard: guard::LoginGuard,
    router: Arc<Router>,
    config: ServiceConfig,
    users: Mutex<HashMap<UserId, Arc<UserInfo>>>,
    conversations: Mutex<HashMap<ConversationId, Arc<ConversationState>>>,
    /// The users whose devices are leaves of an encrypted group, by
    /// conversation, for the epoch given (an epoch's tree never changes).
    group_users: Mutex<HashMap<ConversationId, EpochUsers>>,
    /// Work a session leaves behind (presence changes and their last-seen
    /// writes, session activity, mails): shutdown waits for it before the
    /// store stops.
    background: TaskTracker,
    security: Security,
    media: media::MediaService,
    search: search::Handle,
    push: push::Handle,
    mls: mls::MlsSetup,
    admin: admin::AdminSetup,
}

/// What account security needs besides the log: short-lived state, the
/// server key, and a way to send mail.
pub struct Security {
    pub auth_state: Arc<dyn crate::store::auth_state::AuthState>,
    pub server_key: Arc<crate::auth::server_key::ServerKey>,
    pub mailer: Arc<dyn crate::auth::mail::Mailer>,
    pub sms: Arc<dyn crate::auth::sms::SmsProvider>,
    /// Google and GitHub, as configured.
    pub oauth: crate::auth::oauth::Providers,
}

/// What natterd does beyond chat, as configured.
pub struct Capabilities {
    pub media: media::MediaService,
    pub search: search::Handle,
    pub push: push::Handle,
    pub mls: mls::MlsSetup,
    pub admin: admin::AdminSetup,
}

/// What the feed shows of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// None for an account made by a texted code (shown by name only).
    pub email: Option<Email>,
    pub display_name: String,
}

/// How an erased account is shown (spec section 5.31).
pub const ERASED_NAME: &str = "Deleted account";

/// Who a connection is signed in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub token_hash: TokenHash,
    pub email: Option<Email>,
    pub display_name: String,
}

/// Caches hold at most this many entries before being cleared (bounds memory).
const CACHE_MAX: usize = 100_000;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: u32,
    /// With `MFA_REQUIRED`: the challenge for `VerifyMfa`.
    pub mfa_challenge: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: 0, mfa_challenge: String::new() }
    }
    /// `RATE_LIMITED` with the wait, rounded up so that retrying exactly then succeeds.
    pub fn rate_limited(message: &str, wait: std::time::Duration) -> Self {
        let mut e = Self::new(ErrorCode::RATE_LIMITED, message);
        e.retry_after_ms = wait.as_micros().div_ceil(1000).max(1) as u32;
        e
    }

    pub fn to_wire(&self) -> wire::Error {
        wire::Error {
            code: self.code.0,
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            mfa_challenge: self.mfa_challenge.clone(),
        }
    }
}

impl From<crate::retention::RetentionError> for WireError {
    fn from(e: crate::retention::RetentionError) -> Self {
        match e {
            crate::retention::RetentionError::Store(e) => e.into(),
            crate::retention::RetentionError::Append(e) => e.into(),
        }
    }
}

impl From<Rejection> for WireError {
    fn from(r: Rejection) -> Self {
        let code = match r {
            Rejection::InvalidEmail(_) => ErrorCode::INVALID_EMAIL,
            Rejection::InvalidPhone(_) => ErrorCode::INVALID_PHONE,
            Rejection::WeakPassword(_) => ErrorCode::WEAK_PASSWORD,
            Rejection::InvalidArgument { .. } | Rejection::DirectWithSelf => ErrorCode::INVALID_ARGUMENT,
            Rejection::TextTooLong { .. } => ErrorCode::TEXT_TOO_LONG,
            Rejection::EmptyMessage => ErrorCode::EMPTY_MESSAGE,
            Rejection::EncryptionMismatch { .. } => ErrorCode::ENCRYPTION_MISMATCH,
            Rejection::NotAMember => ErrorCode::NOT_A_MEMBER,
            Rejection::Forbidden(_) => ErrorCode::FORBIDDEN,
            Rejection::GroupFull { .. } => ErrorCode::GROUP_FULL,
            Rejection::NotAGroup => ErrorCode::INVALID_ARGUMENT,
        };
        Self::new(code, r.to_string())
    }
}

/// How long a client is asked to wait when the database is unreachable.
const UNAVAILABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a client is asked to wait when the disk is full (an operator
/// has to make room: not worth hammering).
const FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        // What broke is logged for the operator; the client gets a generic code.
        if let StoreError::Full(_) = e {
            tracing::error!(error = %e, "out of storage space: writes are refused until there is room");
            let mut full = Self::new(ErrorCode::UNAVAILABLE, "the server is out of storage space; retry later");
            full.retry_after_ms = FULL_RETRY.as_millis() as u32;
            return full;
        }
        if let StoreError::Unavailable(_) = e {
            tracing::warn!(error = %e, "database unavailable while serving a request");
            let mut unavailable = Self::new(ErrorCode::UNAVAILABLE, "the database is unavailable; retry");
            unavailable.retry_after_ms = UNAVAILABLE_RETRY.as_millis() as u32;
            return unavailable;
        }
        tracing::error!(error = %e, "store failure while serving a request");
        Self::new(ErrorCode::INTERNAL, "internal error")
    }
}

impl From<AppendError> for WireError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::WrongExpectedVersion { .. } => {
                Self::new(ErrorCode::CONFLICT, "a concurrent change won; retry")
            }
            AppendError::PreconditionFailed(_) => Rejection::NotAMember.into(),
            AppendError::Store(e) => e.into(),
        }
    }
}

fn invalid(field: &'static str, reason: &'static str) -> WireError {
    Rejection::InvalidArgument { field, reason }.into()
}

/// The admin requests, as a pattern (handled by `Service::admin`, in order on
/// their connection, which knows the admin's address for the audit trail).
macro_rules! admin_requests {
    () => {
        Body::AdminListUsers(_)
            | Body::AdminGetUser(_)
            | Body::AdminSetDisabled(_)
            | Body::AdminRevokeSessions(_)
            | Body::AdminResetMfa(_)
            | Body::AdminSetAdmin(_)
            | Body::AdminAudit(_)
            | Body::AdminStatus(_)
            | Body::AdminListGroups(_)
            | Body::AdminGetGroup(_)
            | Body::AdminDeleteUser(_)
            | Body::AdminDeleteGroup(_)
    };
}

/// The requests that change a session's state (or sign it in), as a pattern:
/// [`Session::is_stateful`] and [`Service::handle`]'s refusal share this one list.
macro_rules! stateful {
    () => {
        Body::Signup(_)
            | Body::Login(_)
            | Body::Logout(_)
            | Body::DeleteAccount(_)
            | Body::Sync(_)
            | Body::AckFeed(_)
            | Body::Typing(_)
            | Body::VerifyMfa(_)
            | Body::StartPasswordReset(_)
            | Body::ResetPassword(_)
            | Body::StartEmailVerification(_)
            | Body::EnableTotp(_)
            | Body::ConfirmTotp(_)
            | Body::StartPhone(_)
            | Body::VerifyPhone(_)
            | Body::GetOauthConfig(_)
            | Body::OauthLogin(_)
            | admin_requests!()
    };
}

/// The state of one connection's session.
pub struct Session {
    service: Arc<Service>,
    signed_in: Option<(Identity, Registration)>,
    /// The client's address, for throttling credential checks.
    remote: std::net::IpAddr,
    feed_started: bool,
    /// Feed acknowledgements, for the delivered-receipt task (set once the feed runs).
    acks: Option<watch::Sender<Position>>,
    typing_limit: presence::RateLimit,
    /// A TOTP secret from `EnableTotp`, until `ConfirmTotp` on this connection.
    pending_totp: Option<crate::auth::totp::TotpSecret>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sign_out();
    }
}

/// What handling a request produced besides its answer.
pub struct Handled {
    pub reply: Reply,
    /// Set when the request started the event feed: the transport runs it.
    pub feed: Option<FeedSource>,
}

impl From<Reply> for Handled {
    fn from(reply: Reply) -> Self {
        Self { reply, feed: None }
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        hasher: PasswordHasherArgon2,
        router: Arc<Router>,
        config: ServiceConfig,
        security: Security,
        capabilities: Capabilities,
    ) -> Arc<Self> {
        let Capabilities { media, search, push, mls, admin } = capabilities;
        let service = Arc::new(Self {
            store,
            hasher,
            guard: guard::LoginGuard::new(config.login_guard),
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            router,
            config,
            users: Mutex::new(HashMap::new()),
            conversations: Mutex::new(HashMap::new()),
            group_users: Mutex::new(HashMap::new()),
            background: TaskTracker::new(),
            security,
            media,
            search,
            push,
            mls,
            admin,
        });
        service.forget_erased_accounts();
        service
    }

    /// Follows the log's commits (every node's) and drops an erased account
    /// from this node's cache, so its name is shown nowhere any more.
    fn forget_erased_accounts(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut commits = self.store.subscribe();
        let service = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let batch = commits.recv().await;
                let Some(service) = service.upgrade() else { return };
                match batch {
                    Ok(batch) => {
                        for c in batch.iter() {
                            if let Event::AccountErased { user_id, .. } = &c.event.event {
                                service.forget_user_info(*user_id);
                            }
                        }
                    }
                    // Missed some: forget everything rather than one too few.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        service.users.lock().expect("users lock").clear();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Waits (at most `limit`) for the work sessions left behind, such as the
    /// last-seen times of users who just went offline. Shutdown calls it after
    /// the connections closed and before the store stops, so that work still
    /// reaches the log.
    pub async fn drain_background(&self, limit: std::time::Duration) {
        self.background.close();
        if tokio::time::timeout(limit, self.background.wait()).await.is_err() {
            tracing::warn!(pending = self.background.len(), "presence updates still running at shutdown");
        }
    }

    /// Bytes a response body may use: the frame limit less room for the envelope.
    fn frame_budget(&self) -> usize {
        self.config.max_frame_bytes.saturating_sub(256)
    }

    /// The clock, read at the edge and passed into the domain.
    fn now(&self) -> Millis {
        Millis::now()
    }

    /// Answers `Hello`: negotiates the version and resumes a session token.
    ///
    /// # Errors
    /// `UNSUPPORTED_VERSION` or `SESSION_INVALID`; the transport then closes.
    pub async fn hello(
        self: &Arc<Self>,
        hello: &wire::Hello,
        remote: std::net::IpAddr,
    ) -> Result<(wire::Welcome, Session), WireError> {
        let (min, max) = (hello.min_version, hello.max_version);
        let ours = natter_proto::limits::PROTOCOL_VERSION;
        let oldest = natter_proto::limits::MIN_PROTOCOL_VERSION;
        if min > max || max < oldest || min > ours {
            return Err(WireError::new(
                ErrorCode::UNSUPPORTED_VERSION,
                format!("client speaks {min}..={max}, server speaks {oldest}..={ours}"),
            ));
        }
        let version = max.min(ours);
        let mut session = Session {
            service: self.clone(),
            signed_in: None,
            remote,
            feed_started: false,
            acks: None,
            typing_limit: presence::RateLimit::new(self.config.typing_per_second, self.config.typing_burst),
            pending_totp: None,
        };
        if !hello.session_token.is_empty() {
            let hash = hash_token(&hello.session_token);
            let record = self.store.session_by_token(hash).await?;
            let Some(record) = record.clone().filter(|r| !r.revoked) else {
                // Disabling revoked the account's sessions: say why.
                if let Some(r) = record {
                    if self.store.user_by_id(r.user_id).await?.is_some_and(|u| u.disabled) {
                        return Err(account_security::account_disabled());
                    }
                }
                return Err(WireError::new(ErrorCode::SESSION_INVALID, "session token is unknown or revoked"));
            };
            if let Some(why) = self.session_expired(&record, hash).await? {
                // Ended for good, on every node and in the device list.
                let revoked = Event::SessionRevoked { user_id: record.user_id, token_hash: hash, at: self.now() };
                let stream = StreamName::user(record.user_id);
                self.store
                    .append(vec![StreamAppend::new(stream, ExpectedVersion::Any, vec![NewEvent::fresh(revoked)])])
                    .await?;
                return Err(WireError::new(ErrorCode::SESSION_INVALID, format!("the session {why}: sign in again")));
            }
            let info = self.user_info(record.user_id).await?;
            self.touch_session(hash, remote);
            session.sign_in(Identity {
                user_id: record.user_id,
                device_id: record.device_id,
                token_hash: hash,
                email: info.email.clone(),
                display_name: info.display_name.clone(),
            });
        }
        let welcome = wire::Welcome {
            version,
            server_name: self.config.server_name.clone(),
            max_frame_bytes: self.config.max_frame_bytes as u32,
            identity: session.identity().map(convert::identity),
        };
        Ok((welcome, session))
    }

    /// Why a session may no longer resume (`auth.session_lifetime_secs`,
    /// `auth.session_idle_secs`), if it may not.
    async fn session_expired(
        &self,
        record: &crate::store::SessionRecord,
        hash: TokenHash,
    ) -> Result<Option<&'static str>, StoreError> {
        let now = self.now().0;
        let older_than = |since: u64, limit: std::time::Duration| now.saturating_sub(since) > limit.as_millis() as u64;
        if self.config.session_lifetime.is_some_and(|limit| older_than(record.created_at.0, limit)) {
            return Ok(Some("has reached its lifetime (auth.session_lifetime_secs)"));
        }
        if let Some(limit) = self.config.session_idle {
            let activity = self.security.auth_state.session_activity(&[hash]).await?;
            let last = activity.get(&hash).map_or(record.created_at.0, |a| a.last_used.0.max(record.created_at.0));
            if older_than(last, limit) {
                return Ok(Some("was unused for too long (auth.session_idle_secs)"));
            }
        }
        Ok(None)
    }

    /// Drops what this node cached of an erased account.
    fn forget_user_info(&self, user: UserId) {
        self.users.lock().expect("users lock").remove(&user);
    }

    async fn user_info(&self, user: UserId) -> Result<Arc<UserInfo>, StoreError> {
        if let Some(info) = self.users.lock().expect("users lock").get(&user) {
            return Ok(info.clone());
        }
        let record = self
            .store
            .user_by_id(user)
            .await?
            .ok_or_else(|| StoreError::Database(format!("user {user} referenced but not in the read model")))?;
        let display_name = if record.erased { ERASED_NAME.to_owned() } else { record.display_name };
        let info = Arc::new(UserInfo { email: record.email, display_name });
        let mut users = self.users.lock().expect("users lock");
        if users.len() >= CACHE_MAX {
            users.clear();
        }
        users.insert(user, info.clone());
        Ok(info)
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Arc<ConversationState>>, StoreError> {
        if let Some(c) = self.conversations.lock().expect("conversations lock").get(&id) {
            return Ok(Some(c.clone()));
        }
        let Some(state) = self.store.conversation(id).await? else { return Ok(None) };
        let state = Arc::new(state);
        // Direct conversations never change, so caching them is exact; groups are
        // read fresh (and sends are guarded in the store anyway).
        if state.kind == ConversationKind::Direct {
            let mut cache = self.conversations.lock().expect("conversations lock");
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(id, state.clone());
        }
        Ok(Some(state))
    }

    /// A conversation the caller is a current member of.
    async fn member_conversation(&self, me: UserId, raw_id: &str) -> Result<Arc<ConversationState>, WireError> {
        let id = ConversationId::parse(raw_id)?;
        let state =
            self.conversation(id).await?.ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "no such conversation"))?;
        if !state.is_member(me) {
            return Err(Rejection::NotAMember.into());
        }
        Ok(state)
    }

    /// What the caller may read of a conversation: everything (`None`) as a
    /// member, up to their leaving as a former member.
    async fn readable_upto(&self, me: UserId, id: ConversationId) -> Result<Option<crate::domain::Seq>, WireError> {
        match self.store.membership(id, me).await? {
            Some(Membership::Active(_)) => Ok(None),
            Some(Membership::Former { left_at }) => Ok(Some(left_at)),
            None => match self.conversation(id).await? {
                Some(_) => Err(Rejection::NotAMember.into()),
                None => Err(WireError::new(ErrorCode::NOT_FOUND, "no such conversation")),
            },
        }
    }

    /// The wire form of a conversation, with the caller's list details when known.
    async fn conversation_to_wire(
        &self,
        state: &ConversationState,
        summary: Option<&ConversationSummary>,
    ) -> Result<wire::Conversation, WireError> {
        let active = summary.is_none_or(|s| s.left_at.is_none());
        let group = state.kind == ConversationKind::Group;
        let mut members = Vec::with_capacity(state.members.len());
        // Former members do not learn who is in the group now.
        if active {
            for m in &state.members {
                let info = self.user_info(m.user).await?;
                members.push(convert::member(m.user, group.then_some(m.role), &info));
            }
        }
        let last_message = match summary.and_then(|s| s.last_message.as_ref()) {
            Some(msg) => Some(convert::message_record(msg, &*self.user_info(msg.sender_user_id).await?)),
            None => None,
        };
        let mut wire = convert::conversation(state, members, last_message);
        wire.active = active;
        if let Some(s) = summary {
            wire.unread = s.unread;
            wire.read_up_to = s.read_up_to.0;
            wire.activity = s.activity;
            if let Some(left) = s.left_at {
                wire.last_seq = left.0;
            }
        }
        Ok(wire)
    }
}

impl Session {
    pub fn identity(&self) -> Option<&Identity> {
        self.signed_in.as_ref().map(|(id, _)| id)
    }

    /// Cancelled when this connection's session is revoked (by a logout on
    /// another connection); `None` while signed out.
    pub fn revoked(&self) -> Option<CancellationToken> {
        self.signed_in.as_ref().map(|(_, reg)| reg.revoked())
    }

    /// Notes that the connection made a request (see `Registration::touch`).
    pub fn touch(&self) {
        if let Some((_, reg)) = &self.signed_in {
            reg.touch();
        }
    }

    fn sign_in(&mut self, identity: Identity) {
        let (reg, first) = self.service.router.register(identity.user_id, identity.token_hash);
        if first {
            self.service.background.spawn(self.service.clone().presence_changed(identity.user_id, true));
        }
        self.signed_in = Some((identity, reg));
    }

    /// Leaves the signed-in state; the user goes offline if this was their last
    /// connection. Returns what was signed in, for a logout to restore on failure.
    fn sign_out(&mut self) -> Option<Identity> {
        let (identity, reg) = self.signed_in.take()?;
        if reg.release() {
            // Drop may run outside a runtime (at shutdown): then nobody is left to tell.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                self.service.background.spawn_on(self.service.clone().presence_changed(identity.user_id, false), &rt);
            }
        }
        Some(identity)
    }

    fn require_identity(&self) -> Result<&Identity, WireError> {
        self.identity().ok_or_else(|| WireError::new(ErrorCode::UNAUTHENTICATED, "sign in first"))
    }

    /// Whether `body` changes this session's state, so it must run alone
    /// (in order with the requests around it) rather than concurrently.
    pub fn is_stateful(body: &Body) -> bool {
        matches!(body, stateful!())
    }

    /// Handles a request that changes session state (see [`Session::is_stateful`]).
    pub async fn handle_stateful(&mut self, body: Body) -> Handled {
        let result = match body {
            Body::Signup(req) => self.service.signup(req, self.remote).await.map(Handled::from),
            Body::Login(req) => self.login(req).await.map(Handled::from),
            Body::Logout(_) => self.logout().await.map(Handled::from),
            Body::DeleteAccount(req) => self.delete_account(req).await.map(Handled::from),
            Body::Sync(req) => self.sync(req).await,
            Body::AckFeed(req) => self.ack(req).map(Handled::from),
            Body::Typing(req) => {
                self.typing(&req.conversation_id).await.map(|()| Handled::from(Reply::Typing(wire::TypingOk {})))
            }
            Body::VerifyMfa(req) => self.verify_mfa(req).await.map(Handled::from),
            Body::StartPasswordReset(req) => {
                self.service.start_password_reset(req, self.remote).await.map(Handled::from)
            }
            Body::ResetPassword(req) => self.reset_password(req).await.map(Handled::from),
            Body::StartEmailVerification(_) => match self.identity().cloned() {
                Some(me) => self.service.start_email_verification(&me, self.remote).await.map(Handled::from),
                None => Err(WireError::new(ErrorCode::UNAUTHENTICATED, "sign in first")),
            },
            Body::StartPhone(req) => {
                let me = self.identity().cloned();
                self.service.start_phone(me.as_ref(), req, self.remote).await.map(Handled::from)
            }
            Body::VerifyPhone(req) => self.verify_phone(req).await.map(Handled::from),
            Body::GetOauthConfig(req) => self.service.oauth_config(req).await.map(Handled::from),
            Body::OauthLogin(req) => self.oauth_login(req).await.map(Handled::from),
            Body::EnableTotp(_) => self.enable_totp().await.map(Handled::from),
            Body::ConfirmTotp(req) => self.confirm_totp(req).await.map(Handled::from),
            body @ (admin_requests!()) => {
                self.service.admin(self.identity(), self.remote, body).await.map(Handled::from)
            }
            other => return Handled::from(self.service.clone().handle(self.identity().cloned(), other).await),
        };
        result.unwrap_or_else(|e| Handled::from(Reply::Error(e.to_wire())))
    }

    async fn verify_mfa(&mut self, req: wire::VerifyMfa) -> Result<Reply, WireError> {
        self.refuse_if_signed_in()?;
        let signed_in = self.service.verify_mfa(req, self.remote).await?;
        Ok(self.signed_in_as(signed_in))
    }

    async fn oauth_login(&mut self, req: wire::OAuthLogin) -> Result<Reply, WireError> {
        self.refuse_if_signed_in()?;
        let signed_in = self.service.oauth_login(req, self.remote).await?;
        Ok(self.signed_in_as(signed_in))
    }

    fn refuse_if_signed_in(&self) -> Result<(), WireError> {
        match self.signed_in {
            Some(_) => Err(WireError::new(ErrorCode::ALREADY_AUTHENTICATED, "this connection is already signed in")),
            None => Ok(()),
        }
    }

    /// Signs the connection in after a sign-in request succeeded.
    fn signed_in_as(&mut self, (token, identity): (String, Identity)) -> Reply {
        let reply = Reply::Login(wire::LoginOk { session_token: token, identity: Some(convert::identity(&identity)) });
        self.sign_in(identity);
        reply
    }

    async fn verify_phone(&mut self, req: wire::VerifyPhone) -> Result<Reply, WireError> {
        let me = self.identity().cloned();
        match self.service.verify_phone(me.as_ref(), req, self.remote).await? {
            phone::Verified::SignedIn(token, identity) => Ok(self.signed_in_as((token, identity))),
            phone::Verified::Added(reply) => Ok(*reply),
        }
    }

    async fn reset_password(&mut self, req: wire::ResetPassword) -> Result<Reply, WireError> {
        self.service.throttle_address(self.remote).await?;
        self.service.reset_password(req).await
    }

    async fn enable_totp(&mut self) -> Result<Reply, WireError> {
        let me = self.require_identity()?.clone();
        let (secret, reply) = self.service.enable_totp(&me).await?;
        self.pending_totp = Some(secret);
        Ok(reply)
    }

    async fn confirm_totp(&mut self, req: wire::ConfirmTotp) -> Result<Reply, WireError> {
        let me = self.require_identity()?.clone();
        let reply = self.service.confirm_totp(&me, self.pending_totp.as_ref(), req).await?;
        self.pending_totp = None;
        Ok(reply)
    }

    async fn login(&mut self, req: wire::Login) -> Result<Reply, WireError> {
        self.refuse_if_signed_in()?;
        let signed_in = self.service.login(req, self.remote).await?;
        Ok(self.signed_in_as(signed_in))
    }

    async fn logout(&mut self) -> Result<Reply, WireError> {
        let identity = self.require_identity()?.clone();
        // Unregister first: the revocation closes the *other* connections of
        // this session, not this one, which just becomes signed out.
        self.sign_out();
        self.acks = None;
        let event = crate::domain::Event::SessionRevoked {
            user_id: identity.user_id,
            token_hash: identity.token_hash,
            at: self.service.now(),
        };
        let result = self
            .service
            .store
            .append(vec![StreamAppend::new(
                StreamName::user(identity.user_id),
                ExpectedVersion::Any,
                vec![NewEvent::fresh(event)],
            )])
            .await;
        if let Err(e) = result {
            // Not revoked: the connection stays signed in.
            self.sign_in(identity);
            return Err(e.into());
        }
        Ok(Reply::Logout(wire::LogoutOk {}))
    }

    async fn sync(&mut self, req: wire::Sync) -> Result<Handled, WireError> {
        let identity = self.require_identity()?.clone();
        if self.feed_started {
            return Err(invalid("sync", "the feed is already running on this connection; reconnect to restart it"));
        }
        let (_, registration) = self.signed_in.as_ref().expect("identity implies registration");
        let attachment = registration
            .attach_feed(self.service.config.outbound_queue)
            .ok_or_else(|| invalid("sync", "the feed is already running on this connection"))?;
        // Attached before reading the head: nothing committed from here on is missed.
        let head = self.service.store.head().await?;
        let since = req.since.unwrap_or(head).min(head);
        self.feed_started = true;
        let tracker = feed::DeliveryTracker::new();
        let (acks, acked) = watch::channel(0);
        self.acks = Some(acks);
        tokio::spawn(feed::deliver_receipts(self.service.clone(), identity.clone(), tracker.clone(), acked));
        let source = FeedSource::new(self.service.clone(), identity.user_id, since, attachment, tracker);
        Ok(Handled { reply: Reply::Sync(wire::SyncOk { head }), feed: Some(source) })
    }
}

impl Session {
    /// A typing signal (from a request or a datagram), rate-limited per connection.
    ///
    /// # Errors
    /// `RATE_LIMITED` (with `retry_after_ms`), `UNAUTHENTICATED`, `NOT_A_MEMBER`.
    pub async fn typing(&mut self, conversation_id: &str) -> Result<(), WireError> {
        let me = self.require_identity()?.clone();
        if let Err(wait) = self.typing_limit.take(std::time::Instant::now()) {
            return Err(WireError::rate_limited("too many typing signals", wait));
        }
        self.service.typing(&me, conversation_id).await
    }

    fn ack(&mut self, req: wire::AckFeed) -> Result<Reply, WireError> {
        self.require_identity()?;
        let acks = self.acks.as_ref().ok_or_else(|| invalid("ack_feed", "no feed runs on this connection"))?;
        // A watch keeps only the newest value: a burst of acks coalesces here.
        acks.send_if_modified(|cur| {
            let newer = req.cursor > *cur;
            if newer {
                *cur = req.cursor;
            }
            newer
        });
        Ok(Reply::Ack(wire::AckOk {}))
    }
}

impl Service {
    /// Handles a stateless request for `identity`.
    pub async fn handle(self: Arc<Self>, identity: Option<Identity>, body: Body) -> Reply {
        let result = match identity {
            None => Err(WireError::new(ErrorCode::UNAUTHENTICATED, "sign in first")),
            Some(me) => match body {
                Body::OpenDirect(req) => self.open_direct(&me, req).await,
                Body::SendMessage(req) => self.send_message(&me, req).await,
                Body::GetHistory(req) => self.history(&me, req).await,
                Body::ListConversations(req) => self.list_conversations(&me, req).await,
                Body::GetConversation(req) => self.get_conversation(&me, req).await,
                Body::MarkRead(req) => self.mark_read(&me, req).await,
                Body::GetReceipts(req) => self.get_receipts(&me, req).await,
                Body::CreateGroup(req) => self.create_group(&me, req).await,
                Body::AddMembers(req) => self.add_members(&me, req).await,
                Body::RemoveMember(req) => self.remove_member(&me, req).await,
                Body::Leave(req) => self.leave(&me, req).await,
                Body::SetRole(req) => self.set_role(&me, req).await,
                Body::RenameGroup(req) => self.rename_group(&me, req).await,
                Body::SetPrivacy(req) => self.set_privacy(&me, req).await,
                Body::GetPresence(req) => self.get_presence(&me, req).await,
                Body::ListSessions(_) => self.list_sessions(&me).await,
                Body::RevokeSession(req) => self.revoke_session(&me, req).await,
                Body::RevokeOtherSessions(_) => self.revoke_other_sessions(&me).await,
                Body::ChangePassword(req) => self.change_password(&me, req).await,
                Body::VerifyEmail(req) => self.verify_email(&me, req).await,
                Body::DisableTotp(req) => self.disable_totp(&me, req).await,
                Body::NewRecoveryCodes(req) => self.new_recovery_codes(&me, req).await,
                Body::LinkIdentity(req) => self.link_identity(&me, req).await,
                Body::UnlinkIdentity(req) => self.unlink_identity(&me, req).await,
                Body::ListIdentities(_) => self.list_identities(&me).await,
                Body::RemovePhone(_) => self.remove_phone(&me).await,
                Body::GetMediaUrl(req) => self.get_media_url(&me, req).await,
                Body::Search(req) => self.search(&me, req).await,
                Body::SearchDirectory(req) => self.search_directory(&me, req).await,
                Body::RegisterPush(req) => self.register_push(&me, req).await,
                Body::UnregisterPush(_) => self.unregister_push(&me).await,
                Body::RegisterDeviceKey(req) => self.register_device_key(&me, req).await,
                Body::ListDeviceKeys(req) => self.list_device_keys(&me, req).await,
                Body::PublishKeyPackages(req) => self.publish_key_packages(&me, req).await,
                Body::GetKeyPackageStock(_) => self.key_package_stock(&me).await,
                Body::ClaimKeyPackages(req) => self.claim_key_packages(&me, req).await,
                Body::GetGroupInfo(req) => self.get_group_info(&me, req).await,
                Body::GetPushConfig(_) => self.get_push_config(&me).await,
                Body::SetPushPreviews(req) => self.set_push_previews(&me, req).await,
                Body::MuteConversation(req) => self.mute_conversation(&me, req).await,
                Body::UnmuteConversation(req) => self.unmute_conversation(&me, req).await,
                Body::SetRetention(req) => self.set_retention(&me, req).await,
                Body::GetRetention(req) => self.get_retention(&me, req).await,
                stateful!() => unreachable!("stateful requests go through Session::handle_stateful"),
            },
        };
        result.unwrap_or_else(|e| Reply::Error(e.to_wire()))
    }

    async fn signup(&self, req: wire::Signup, remote: std::net::IpAddr) -> Result<Reply, WireError> {
        self.throttle_address(remote).await?;
        let signup = account::validate_signup(&req.email, &req.password, &req.display_name)?;
        // A cheap early answer; the email stream's expected version is the guarantee.
        if self.store.user_by_email(&signup.email).await?.is_some() {
            return Err(WireError::new(ErrorCode::EMAIL_TAKEN, "an account with this email exists"));
        }
        let hash = self.hash_password(req.password).await?;
        let user_id = UserId(Uuid::new_v4());
        let email_stream = StreamName::email(&signup.email);
        let (claim, registered) = account::register(signup, user_id, hash, self.now());
        let Event::UserRegistered(new_user) = &registered else { unreachable!("register makes a registration") };
        let new_user = UserRecord {
            user_id,
            email: Some(new_user.email.clone()),
            display_name: new_user.display_name.clone(),
            password_hash: None,
            created_at: new_user.at,
            email_verified: false,
            totp_sealed_secret: None,
            phone: None,
            admin: false,
            disabled: false,
            erased: false,
        };
        let result = self
            .store
            .append(vec![
                StreamAppend::new(email_stream, ExpectedVersion::NoStream, vec![NewEvent::fresh(claim)]),
                StreamAppend::new(
                    StreamName::user(user_id),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::fresh(registered)],
                ),
            ])
            .await;
        match result {
            Ok(_) => {
                // The first verification code; signing up does not wait for (or
                // fail with) the mail.
                if let Err(e) = self.send_verification(&new_user, remote).await {
                    tracing::warn!(code = ?e.code, "no verification code sent at signup");
                }
                Ok(Reply::Signup(wire::SignupOk { user_id: user_id.to_string() }))
            }
            Err(AppendError::WrongExpectedVersion { .. }) => {
                Err(WireError::new(ErrorCode::EMAIL_TAKEN, "an account with this email exists"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a password check of `email` towards its lock-out: in the shared
    /// database when there are several nodes, else here.
    async fn record_login(&self, email: &Email, ok: bool) -> Result<(), StoreError> {
        let Some(cluster) = self.store.cluster() else {
            self.guard.record(email, ok, std::time::Instant::now());
            return Ok(());
        };
        if ok {
            return cluster.login_succeeded(email).await;
        }
        let failures = cluster.login_failed(email).await?;
        if let Some(lock) = self.guard.lock_after(failures) {
            cluster.lock_account(email, lock).await?;
        }
        Ok(())
    }

    /// Refuses a credential attempt from an address over its rate.
    ///
    /// The in-memory bucket answers first (no round trip for a flood); with
    /// several nodes a per-minute count in the shared store holds the same
    /// limit for the whole cluster.
    async fn throttle_address(&self, remote: std::net::IpAddr) -> Result<(), WireError> {
        const WHAT: &str = "too many sign-in attempts from this address";
        self.guard
            .attempt_from(remote, std::time::Instant::now())
            .map_err(|wait| WireError::rate_limited(WHAT, wait))?;
        if self.store.cluster().is_some() {
            let per_minute = self.config.login_guard.attempts_per_minute.max(1);
            self.limit(format!("signin-ip:{remote}"), std::time::Duration::from_secs(60), per_minute, WHAT).await?;
        }
        Ok(())
    }

    async fn login(&self, req: wire::Login, remote: std::net::IpAddr) -> Result<(String, Identity), WireError> {
        let wrong = || WireError::new(ErrorCode::INVALID_CREDENTIALS, "unknown email or wrong password");
        self.throttle_address(remote).await?;
        // A malformed email is just another unknown account: same answer, same cost.
        let email = Email::parse(&req.email).ok();
        if let Some(email) = &email {
            // A locked account answers the same whoever asks, right password or not.
            let locked = match self.store.cluster() {
                Some(cluster) => cluster.account_locked_for(email).await?.map_or(Ok(()), Err),
                None => self.guard.check_account(email, std::time::Instant::now()),
            };
            locked.map_err(|wait| WireError::rate_limited("too many failed sign-ins for this account", wait))?;
        }
        let user = match &email {
            Some(email) => self.store.user_by_email(email).await?,
            None => None,
        };
        // Checked before the password, so this answer says nothing about it.
        account::check_name("device_name", req.device_name.trim())?;
        // An account without a password answers like a wrong one.
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let ok = self.verify_password(req.password, stored).await?;
        if let Some(email) = &email {
            // Unknown accounts count too: probing them is throttled the same way.
            self.record_login(email, ok).await?;
        }
        let Some(user) = user.filter(|_| ok) else {
            return Err(wrong());
        };
        self.first_factor_passed(&user, &req.device_name, SignInMethod::Password, remote).await
    }
}
