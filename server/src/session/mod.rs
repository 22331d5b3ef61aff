//! Authenticated connection state and request dispatch.
//!
//! Turns protocol requests into domain commands, appends the resulting events,
//! and answers. Knows protobuf types (it is an edge) but neither quinn nor SQL:
//! the transport hands it decoded frames, the store hides the database.

mod convert;
pub mod feed;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use natter_proto::limits::{DEFAULT_HISTORY_LIMIT, MAX_CONVERSATION_LIST_LIMIT, MAX_HISTORY_LIMIT};
use natter_proto::wire::{self, request::Body, response::Result as Reply};
use natter_proto::ErrorCode;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{hash_token, new_session_token, PasswordHasherArgon2};
use crate::domain::{
    account,
    conversation::{self, ConversationState, SendCommand},
    ClientMsgId, Content, ConversationId, DeviceId, Email, Millis, Rejection, Seq, TokenHash, UserId,
};
use crate::projection::router::{Registration, Router};
use crate::store::{
    AppendError, AppendOutcome, ExpectedVersion, HistoryPage, NewEvent, Store, StoreError, StreamAppend, StreamName,
};

pub use feed::FeedSource;

/// Settings the session layer needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub server_name: String,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
}

/// Shared state of all sessions.
pub struct Service {
    store: Arc<dyn Store>,
    hasher: PasswordHasherArgon2,
    router: Arc<Router>,
    config: ServiceConfig,
    users: Mutex<HashMap<UserId, Arc<UserInfo>>>,
    conversations: Mutex<HashMap<ConversationId, Arc<ConversationState>>>,
}

/// What the feed shows of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub email: Email,
    pub display_name: String,
}

/// Who a connection is signed in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub token_hash: TokenHash,
    pub email: Email,
    pub display_name: String,
}

/// Caches hold at most this many entries before being cleared (bounds memory).
const CACHE_MAX: usize = 100_000;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn to_wire(&self) -> wire::Error {
        wire::Error { code: self.code.0, message: self.message.clone(), retry_after_ms: 0 }
    }
}

impl From<Rejection> for WireError {
    fn from(r: Rejection) -> Self {
        let code = match r {
            Rejection::InvalidEmail(_) => ErrorCode::INVALID_EMAIL,
            Rejection::WeakPassword(_) => ErrorCode::WEAK_PASSWORD,
            Rejection::InvalidArgument { .. } | Rejection::DirectWithSelf => ErrorCode::INVALID_ARGUMENT,
            Rejection::TextTooLong { .. } => ErrorCode::TEXT_TOO_LONG,
            Rejection::EmptyMessage => ErrorCode::EMPTY_MESSAGE,
            Rejection::NotAMember => ErrorCode::NOT_A_MEMBER,
        };
        Self::new(code, r.to_string())
    }
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        // What broke is logged for the operator; the client gets a generic code.
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
            AppendError::Store(e) => e.into(),
        }
    }
}

fn invalid(field: &'static str, reason: &'static str) -> WireError {
    Rejection::InvalidArgument { field, reason }.into()
}

/// The state of one connection's session.
pub struct Session {
    service: Arc<Service>,
    signed_in: Option<(Identity, Registration)>,
    feed_started: bool,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            hasher,
            router,
            config,
            users: Mutex::new(HashMap::new()),
            conversations: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Bytes a response body may use: the frame limit less room for the envelope.
    fn frame_budget(&self) -> usize {
        self.config.max_frame_bytes.saturating_sub(256)
    }

    /// The clock, read at the edge and passed into the domain.
    fn now(&self) -> Millis {
        Millis(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    }

    /// Answers `Hello`: negotiates the version and resumes a session token.
    ///
    /// # Errors
    /// `UNSUPPORTED_VERSION` or `SESSION_INVALID`; the transport then closes.
    pub async fn hello(self: &Arc<Self>, hello: &wire::Hello) -> Result<(wire::Welcome, Session), WireError> {
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
        let mut session = Session { service: self.clone(), signed_in: None, feed_started: false };
        if !hello.session_token.is_empty() {
            let hash = hash_token(&hello.session_token);
            let record = self.store.session_by_token(hash).await?;
            let Some(record) = record.filter(|r| !r.revoked) else {
                return Err(WireError::new(ErrorCode::SESSION_INVALID, "session token is unknown or revoked"));
            };
            let info = self.user_info(record.user_id).await?;
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

    async fn user_info(&self, user: UserId) -> Result<Arc<UserInfo>, StoreError> {
        if let Some(info) = self.users.lock().expect("users lock").get(&user) {
            return Ok(info.clone());
        }
        let record = self
            .store
            .user_by_id(user)
            .await?
            .ok_or_else(|| StoreError::Database(format!("user {user} referenced but not in the read model")))?;
        let info = Arc::new(UserInfo { email: record.email, display_name: record.display_name });
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
        let Some(state) = self.store.conversation(id).await? else {
            return Ok(None);
        };
        let state = Arc::new(state);
        // Direct conversations never change membership, so caching is exact.
        let mut cache = self.conversations.lock().expect("conversations lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, state.clone());
        Ok(Some(state))
    }

    /// A conversation the caller is a member of.
    async fn member_conversation(&self, me: UserId, raw_id: &str) -> Result<Arc<ConversationState>, WireError> {
        let id = ConversationId::parse(raw_id)?;
        let state =
            self.conversation(id).await?.ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "no such conversation"))?;
        if !state.is_member(me) {
            return Err(Rejection::NotAMember.into());
        }
        Ok(state)
    }

    async fn conversation_to_wire(
        &self,
        state: &ConversationState,
        last: Option<&crate::store::MessageRecord>,
    ) -> Result<wire::Conversation, WireError> {
        let mut members = Vec::with_capacity(state.members.len());
        for m in &state.members {
            let info = self.user_info(*m).await?;
            members.push(convert::member(*m, &info));
        }
        let last_message = match last {
            Some(msg) => Some(convert::message_record(msg, &*self.user_info(msg.sender_user_id).await?)),
            None => None,
        };
        Ok(convert::conversation(state, members, last_message))
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

    fn sign_in(&mut self, identity: Identity) {
        let reg = self.service.router.register(identity.user_id, identity.token_hash);
        self.signed_in = Some((identity, reg));
    }

    fn require_identity(&self) -> Result<&Identity, WireError> {
        self.identity().ok_or_else(|| WireError::new(ErrorCode::UNAUTHENTICATED, "sign in first"))
    }

    /// Whether `body` changes this session's state, so it must run alone
    /// (in order with the requests around it) rather than concurrently.
    pub fn is_stateful(body: &Body) -> bool {
        matches!(body, Body::Signup(_) | Body::Login(_) | Body::Logout(_) | Body::Sync(_))
    }

    /// Handles a request that changes session state (see [`Session::is_stateful`]).
    pub async fn handle_stateful(&mut self, body: Body) -> Handled {
        let result = match body {
            Body::Signup(req) => self.service.signup(req).await.map(Handled::from),
            Body::Login(req) => self.login(req).await.map(Handled::from),
            Body::Logout(_) => self.logout().await.map(Handled::from),
            Body::Sync(req) => self.sync(req).await,
            other => return Handled::from(self.service.clone().handle(self.identity().cloned(), other).await),
        };
        result.unwrap_or_else(|e| Handled::from(Reply::Error(e.to_wire())))
    }

    async fn login(&mut self, req: wire::Login) -> Result<Reply, WireError> {
        if self.signed_in.is_some() {
            return Err(WireError::new(ErrorCode::ALREADY_AUTHENTICATED, "this connection is already signed in"));
        }
        let identity = self.service.login(req).await?;
        let (token, identity) = identity;
        let reply = Reply::Login(wire::LoginOk { session_token: token, identity: Some(convert::identity(&identity)) });
        self.sign_in(identity);
        Ok(reply)
    }

    async fn logout(&mut self) -> Result<Reply, WireError> {
        let identity = self.require_identity()?.clone();
        // Unregister first: the revocation closes the *other* connections of
        // this session, not this one, which just becomes signed out.
        let previous = self.signed_in.take();
        let event = crate::domain::Event::SessionRevoked {
            user_id: identity.user_id,
            token_hash: identity.token_hash,
            at: self.service.now(),
        };
        let result = self
            .service
            .store
            .append(vec![StreamAppend {
                stream: StreamName::user(identity.user_id),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::fresh(event)],
            }])
            .await;
        if let Err(e) = result {
            // Not revoked: the connection stays signed in.
            self.signed_in = previous;
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
        let (rx, lag) = registration
            .attach_feed(self.service.config.outbound_queue)
            .ok_or_else(|| invalid("sync", "the feed is already running on this connection"))?;
        // Attached before reading the head: nothing committed from here on is missed.
        let head = self.service.store.head().await?;
        let since = req.since.unwrap_or(head).min(head);
        self.feed_started = true;
        let source = FeedSource::new(self.service.clone(), identity.user_id, since, rx, lag);
        Ok(Handled { reply: Reply::Sync(wire::SyncOk { head }), feed: Some(source) })
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
                Body::Signup(_) | Body::Login(_) | Body::Logout(_) | Body::Sync(_) => {
                    unreachable!("stateful requests go through Session::handle_stateful")
                }
            },
        };
        result.unwrap_or_else(|e| Reply::Error(e.to_wire()))
    }

    async fn signup(&self, req: wire::Signup) -> Result<Reply, WireError> {
        let signup = account::validate_signup(&req.email, &req.password, &req.display_name)?;
        // A cheap early answer; the email stream's expected version is the guarantee.
        if self.store.user_by_email(&signup.email).await?.is_some() {
            return Err(WireError::new(ErrorCode::EMAIL_TAKEN, "an account with this email exists"));
        }
        let hasher = self.hasher.clone();
        let password = req.password;
        let hash = tokio::task::spawn_blocking(move || hasher.hash(&password))
            .await
            .map_err(|e| StoreError::Database(format!("hashing task: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                WireError::new(ErrorCode::INTERNAL, "internal error")
            })?;
        let user_id = UserId(Uuid::new_v4());
        let email_stream = StreamName::email(&signup.email);
        let (claim, registered) = account::register(signup, user_id, hash, self.now());
        let result = self
            .store
            .append(vec![
                StreamAppend {
                    stream: email_stream,
                    expected: ExpectedVersion::NoStream,
                    events: vec![NewEvent::fresh(claim)],
                },
                StreamAppend {
                    stream: StreamName::user(user_id),
                    expected: ExpectedVersion::NoStream,
                    events: vec![NewEvent::fresh(registered)],
                },
            ])
            .await;
        match result {
            Ok(_) => Ok(Reply::Signup(wire::SignupOk { user_id: user_id.to_string() })),
            Err(AppendError::WrongExpectedVersion { .. }) => {
                Err(WireError::new(ErrorCode::EMAIL_TAKEN, "an account with this email exists"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn login(&self, req: wire::Login) -> Result<(String, Identity), WireError> {
        let wrong = || WireError::new(ErrorCode::INVALID_CREDENTIALS, "unknown email or wrong password");
        // A malformed email is just another unknown account: same answer, same cost.
        let user = match Email::parse(&req.email) {
            Ok(email) => self.store.user_by_email(&email).await?,
            Err(_) => None,
        };
        // Checked before the password, so this answer says nothing about it.
        account::check_name("device_name", req.device_name.trim())?;
        let hasher = self.hasher.clone();
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let password = req.password;
        let ok = tokio::task::spawn_blocking(move || hasher.verify(&password, stored.as_deref()))
            .await
            .map_err(|e| StoreError::Database(format!("verify task: {e}")))?;
        let Some(user) = user.filter(|_| ok) else {
            return Err(wrong());
        };
        let (token, token_hash) = new_session_token();
        let device_id = DeviceId(Uuid::new_v4());
        let event = account::start_session(user.user_id, device_id, &req.device_name, token_hash, self.now())?;
        self.store
            .append(vec![StreamAppend {
                stream: StreamName::user(user.user_id),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::fresh(event)],
            }])
            .await?;
        Ok((
            token,
            Identity {
                user_id: user.user_id,
                device_id,
                token_hash,
                email: user.email,
                display_name: user.display_name,
            },
        ))
    }

    async fn open_direct(&self, me: &Identity, req: wire::OpenDirect) -> Result<Reply, WireError> {
        let peer_email = Email::parse(&req.peer_email)?;
        let peer = self
            .store
            .user_by_email(&peer_email)
            .await?
            .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, format!("no user with email {peer_email}")))?;
        if peer.user_id == me.user_id {
            return Err(Rejection::DirectWithSelf.into());
        }
        let id = ConversationId::direct(me.user_id, peer.user_id);
        let existing = self.conversation(id).await?;
        let now = self.now();
        if let Some(event) = conversation::decide_open_direct(existing.as_deref(), me.user_id, peer.user_id, now)? {
            let result = self
                .store
                .append(vec![StreamAppend {
                    stream: StreamName::conversation(id),
                    expected: ExpectedVersion::NoStream,
                    events: vec![NewEvent::fresh(event)],
                }])
                .await;
            match result {
                // Lost a race with the peer opening it at the same moment: fine.
                Ok(_) | Err(AppendError::WrongExpectedVersion { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let state =
            self.conversation(id).await?.ok_or_else(|| WireError::new(ErrorCode::INTERNAL, "conversation vanished"))?;
        let (last, _) = self.store.messages(id, HistoryPage::Latest { limit: 1 }).await?;
        Ok(Reply::Conversation(self.conversation_to_wire(&state, last.last()).await?))
    }

    async fn send_message(&self, me: &Identity, req: wire::SendMessage) -> Result<Reply, WireError> {
        let client_msg_id = ClientMsgId::parse(&req.client_msg_id)?;
        let content = match req.content.and_then(|c| c.body) {
            Some(wire::content::Body::Text(t)) => Content::Text(t.body),
            None => return Err(Rejection::EmptyMessage.into()),
        };
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        let event_id = client_msg_id.event_id(state.id, me.user_id);
        let cmd = SendCommand { sender: me.user_id, device: me.device_id, client_msg_id, content };
        let event = conversation::decide_send(&state, cmd, self.now())?;
        let outcome = self
            .store
            .append(vec![StreamAppend {
                stream: StreamName::conversation(state.id),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent { id: event_id, event }],
            }])
            .await?;
        let (rec, duplicate) = match outcome {
            AppendOutcome::Appended(mut v) => (v.remove(0), false),
            AppendOutcome::AlreadyStored(mut v) => (v.remove(0), true),
        };
        let sent_at = match &rec.event {
            crate::domain::Event::MessageSent(m) => m.at.0,
            _ => rec.recorded_at.0,
        };
        Ok(Reply::Sent(wire::Sent { seq: rec.version, sent_at_ms: sent_at, duplicate }))
    }

    async fn history(&self, me: &Identity, req: wire::GetHistory) -> Result<Reply, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        let limit = match req.limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let page = match (req.before_seq, req.after_seq) {
            (0, 0) => HistoryPage::Latest { limit },
            (b, 0) => HistoryPage::Before { seq: Seq(b), limit },
            (0, a) => HistoryPage::After { seq: Seq(a), limit },
            _ => return Err(invalid("get_history", "set at most one of before_seq and after_seq")),
        };
        let (messages, mut has_more) = self.store.messages(state.id, page).await?;
        let mut out = Vec::with_capacity(messages.len());
        for m in &messages {
            out.push(convert::message_record(m, &*self.user_info(m.sender_user_id).await?));
        }
        // Keep the page within one frame, dropping the messages farthest from the anchor.
        let budget = self.frame_budget();
        let mut size: usize = out.iter().map(|m| m.encoded_len() + 4).sum();
        while size > budget && !out.is_empty() {
            let dropped = match page {
                HistoryPage::After { .. } => out.pop(),
                HistoryPage::Latest { .. } | HistoryPage::Before { .. } => Some(out.remove(0)),
            };
            size -= dropped.map_or(0, |m| m.encoded_len() + 4);
            has_more = true;
        }
        Ok(Reply::History(wire::HistoryPage { messages: out, has_more }))
    }

    async fn list_conversations(&self, me: &Identity, req: wire::ListConversations) -> Result<Reply, WireError> {
        let limit = match req.limit {
            0 => 100,
            n => n.min(MAX_CONVERSATION_LIST_LIMIT),
        };
        // One more than asked tells whether more exist.
        let mut summaries = self.store.conversations_for_user(me.user_id, limit + 1).await?;
        let mut has_more = summaries.len() > limit as usize;
        summaries.truncate(limit as usize);
        let budget = self.frame_budget();
        let mut size = 0;
        let mut out = Vec::with_capacity(summaries.len());
        for s in &summaries {
            let conv = self.conversation_to_wire(&s.state, s.last_message.as_ref()).await?;
            size += conv.encoded_len() + 4;
            if size > budget {
                has_more = true;
                break;
            }
            out.push(conv);
        }
        Ok(Reply::Conversations(wire::ConversationList { conversations: out, has_more }))
    }
}
