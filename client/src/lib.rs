//! natter-client: the async client SDK, and the `natter` terminal client built on
//! it (`cli`).
//!
//! The SDK is the only way tests, the load generator and the admin CLI talk to
//! natterd. It speaks the protocol of spec/protocol.md over QUIC: a control
//! stream for pipelined requests, and a server-opened feed stream for events.

mod admin;
pub mod cli;
pub mod e2ee;
pub mod export;
pub mod oauth;
pub mod transfer;
mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use natter_proto::limits::{DEFAULT_MAX_FRAME_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use natter_proto::wire::{self, client_frame, feed_event, feed_frame, request::Body, response, server_frame};
use natter_proto::{encode_frame, ErrorCode, FrameDecoder, FrameError};
use tokio::sync::{mpsc, oneshot, watch};

pub use natter_proto::wire as proto;
use trust::SeenLeaf;
pub use trust::{Trust, TrustError};

/// How to reach and trust a server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub server: SocketAddr,
    /// The TLS server name (checked against the certificate with `Trust::Ca`).
    pub server_name: String,
    pub trust: Trust,
    /// Sent in `Hello`, e.g. "natter-cli/0.1.0".
    pub client_name: String,
    /// Resume this session on connect.
    pub session_token: Option<String>,
    /// Largest frame we send or accept before the server tells us its limit.
    pub max_frame_bytes: usize,
    /// Interval of QUIC keep-alives (so idle connections stay open).
    pub keep_alive: Duration,
    /// With nothing heard from the server for this long (keep-alives
    /// included), the connection counts as lost: how fast a dead server is noticed.
    pub idle_timeout: Duration,
    /// How long connecting and the Hello exchange may take together; a server
    /// that does not answer in time is [`ConnectError::NoAnswer`].
    pub connect_timeout: Duration,
    /// Accept QUIC datagrams (ephemeral signals). Without them the server sends
    /// signals on the feed stream instead.
    pub datagrams: bool,
    /// At most one typing signal per conversation in this interval.
    pub typing_throttle: Duration,
}

impl ClientConfig {
    pub fn new(server: SocketAddr, trust: Trust) -> Self {
        Self {
            server,
            server_name: match server.ip() {
                ip if ip.is_unspecified() => "localhost".into(),
                ip => ip.to_string(),
            },
            trust,
            client_name: format!("natter-sdk/{}", env!("CARGO_PKG_VERSION")),
            session_token: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            datagrams: true,
            typing_throttle: Duration::from_secs(3),
        }
    }
}

/// What can go wrong, from the caller's side.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a typed error. Its text ends with how long to
    /// wait when the server said (`retry_after_ms`, e.g. a locked account).
    #[error("{code}: {message}{}", retry_hint(*retry_after_ms))]
    Server { code: ErrorCode, message: String, retry_after_ms: u32 },
    /// The password (or other first factor) was right and the account has
    /// two-factor sign-in on: finish with [`Client::verify_mfa`] and this
    /// challenge (`MFA_REQUIRED`).
    #[error("{}: {message}", ErrorCode::MFA_REQUIRED)]
    MfaRequired { challenge: String, message: String },
    /// The connection is closed (by the server with `code`, or lost).
    #[error("connection closed{}: {reason}", code.map(|c| format!(" ({c})")).unwrap_or_default())]
    Closed { code: Option<ErrorCode>, reason: String },
    /// No connection could be set up: nothing answered, the certificate is
    /// not the trusted one, ….
    #[error("cannot connect: {0}")]
    Connect(ConnectError),
    /// The server sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Why a connection could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answered the QUIC handshake within the connect timeout.
    #[error("no answer from {server} within {}: is natterd running there?", seconds(*waited))]
    NoAnswer { server: SocketAddr, waited: Duration },
    /// The handshake completed but the server sent no `Welcome` in time.
    #[error("{server} accepted the connection but did not answer the Hello within {}", seconds(*waited))]
    NoWelcome { server: SocketAddr, waited: Duration },
    /// The server's certificate is not the pinned one (both as `sha256:<hex>`).
    #[error(
        "the certificate of {server} does not match the pin: expected {expected}, but the certificate's \
         fingerprint is {actual} (if natterd's certificate was replaced on purpose, pin the fingerprint \
         natterd prints when it starts)"
    )]
    PinMismatch { server: SocketAddr, expected: String, actual: String },
    /// Anything else: no socket, a TLS failure, a refused handshake.
    #[error("{0}")]
    Other(String),
}

/// `10s`, `0.5s`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// `; try again in 28 s` when the server said how long to wait.
fn retry_hint(retry_after_ms: u32) -> String {
    match retry_after_ms {
        0 => String::new(),
        ms => format!("; try again in {} s", ms.div_ceil(1000)),
    }
}

fn connect_error(e: impl ToString) -> ClientError {
    ClientError::Connect(ConnectError::Other(e.to_string()))
}

impl ClientError {
    /// The wire error code, for server errors and server-initiated closes.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::MfaRequired { .. } => Some(ErrorCode::MFA_REQUIRED),
            ClientError::Closed { code, .. } => *code,
            _ => None,
        }
    }

    fn from_wire(e: wire::Error) -> Self {
        if ErrorCode(e.code) == ErrorCode::MFA_REQUIRED && !e.mfa_challenge.is_empty() {
            return ClientError::MfaRequired { challenge: e.mfa_challenge, message: e.message };
        }
        ClientError::Server { code: ErrorCode(e.code), message: e.message, retry_after_ms: e.retry_after_ms }
    }

    fn from_connection(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(close) => ClientError::Closed {
                code: u32::try_from(close.error_code.into_inner()).ok().map(ErrorCode),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => ClientError::Closed { code: None, reason: other.to_string() },
        }
    }
}

/// One item of the event feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Message {
        cursor: u64,
        message: wire::Message,
    },
    ConversationStarted {
        cursor: u64,
        conversation: wire::Conversation,
    },
    /// A change to a group (it has a seq in the conversation's order).
    Group {
        cursor: u64,
        event: wire::GroupEvent,
    },
    /// A member's delivered or read watermark moved forward.
    Receipt {
        cursor: u64,
        receipt: wire::Receipt,
    },
    /// A conversation's retention limit changed (spec section 5.32).
    RetentionChanged {
        cursor: u64,
        change: wire::RetentionChanged,
    },
    /// A conversation's messages sent before `before_ms` are erased.
    MessagesExpired {
        cursor: u64,
        expired: wire::MessagesExpired,
    },
    /// Someone who shares a conversation with you deleted their account:
    /// their messages are erased (history shows them so from now on).
    AccountErased {
        cursor: u64,
        user_id: String,
    },
    /// Someone is typing in a conversation (ephemeral: no cursor).
    Typing {
        conversation_id: String,
        user_id: String,
        email: String,
        expires_in_ms: u32,
    },
    /// They stopped: the signal expired, or their message arrived (it follows).
    TypingStopped {
        conversation_id: String,
        user_id: String,
    },
    /// A contact came online or went offline (ephemeral: no cursor).
    Presence(wire::PresenceSignal),
    /// A claim took a device's KeyPackage stock low (ephemeral: no cursor).
    /// Meant for the device it names (`device_id`): it should top up
    /// ([`e2ee::MlsDevice::top_up`]).
    KeyPackageStock(wire::KeyPackageStock),
    /// The backlog asked for by `sync` is delivered; live events follow.
    CaughtUp {
        cursor: u64,
    },
}

impl FeedItem {
    /// The cursor to save and pass to the next `sync`; `None` for ephemeral
    /// signals, which have none.
    pub fn cursor(&self) -> Option<u64> {
        match self {
            FeedItem::Message { cursor, .. }
            | FeedItem::ConversationStarted { cursor, .. }
            | FeedItem::Group { cursor, .. }
            | FeedItem::Receipt { cursor, .. }
            | FeedItem::AccountErased { cursor, .. }
            | FeedItem::RetentionChanged { cursor, .. }
            | FeedItem::MessagesExpired { cursor, .. }
            | FeedItem::CaughtUp { cursor } => Some(*cursor),
            FeedItem::Typing { .. }
            | FeedItem::TypingStopped { .. }
            | FeedItem::Presence(_)
            | FeedItem::KeyPackageStock(_) => None,
        }
    }
}

/// The event feed of a connection. Ends (`None`) when the connection does.
///
/// Items are acknowledged to the server as they are taken with [`Feed::next`]
/// (the server turns that into delivered receipts); acknowledgements are
/// coalesced, never one request per item. Typing signals are followed by a
/// `TypingStopped` when they expire or the typist's message arrives.
pub struct Feed {
    rx: mpsc::Receiver<Result<FeedItem, ClientError>>,
    acks: watch::Sender<u64>,
    /// (conversation, user) → when their typing signal expires.
    typing: HashMap<(String, String), tokio::time::Instant>,
    ready: std::collections::VecDeque<Result<FeedItem, ClientError>>,
}

impl Feed {
    /// The next item; an `Err` is followed by the end of the feed.
    pub async fn next(&mut self) -> Option<Result<FeedItem, ClientError>> {
        if let Some(item) = self.ready.pop_front() {
            return Some(item);
        }
        let expiry = self.typing.values().min().copied();
        let item = tokio::select! {
            item = self.rx.recv() => item,
            () = sleep_until_opt(expiry) => {
                let now = tokio::time::Instant::now();
                let expired: Vec<_> = self.typing.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
                for key in expired {
                    self.typing.remove(&key);
                    let (conversation_id, user_id) = key;
                    self.ready.push_back(Ok(FeedItem::TypingStopped { conversation_id, user_id }));
                }
                return self.ready.pop_front();
            }
        };
        match &item {
            Some(Ok(FeedItem::Typing { conversation_id, user_id, expires_in_ms, .. })) => {
                let until = tokio::time::Instant::now() + Duration::from_millis(u64::from(*expires_in_ms));
                self.typing.insert((conversation_id.clone(), user_id.clone()), until);
            }
            Some(Ok(FeedItem::Message { message, .. })) => {
                // A message ends its sender's typing at once.
                let key = (message.conversation_id.clone(), message.sender_user_id.clone());
                if self.typing.remove(&key).is_some() {
                    let (conversation_id, user_id) = key;
                    self.ready.push_back(item.clone().expect("some"));
                    self.ack(&item);
                    return Some(Ok(FeedItem::TypingStopped { conversation_id, user_id }));
                }
            }
            _ => {}
        }
        self.ack(&item);
        item
    }

    fn ack(&self, item: &Option<Result<FeedItem, ClientError>>) {
        if let Some(cursor) = item.as_ref().and_then(|i| i.as_ref().ok()).and_then(FeedItem::cursor) {
            self.acks.send_if_modified(|c| {
                let newer = cursor > *c;
                if newer {
                    *c = cursor;
                }
                newer
            });
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn signal_item(signal: wire::Signal) -> Option<FeedItem> {
    match signal.kind? {
        wire::signal::Kind::Typing(t) => Some(FeedItem::Typing {
            conversation_id: t.conversation_id,
            user_id: t.user_id,
            email: t.email,
            expires_in_ms: t.expires_in_ms,
        }),
        wire::signal::Kind::Presence(p) => Some(FeedItem::Presence(p)),
        wire::signal::Kind::KeyPackageStock(s) => Some(FeedItem::KeyPackageStock(s)),
    }
}

/// Ephemeral signals arriving as datagrams, handed to the feed once it runs.
async fn datagram_loop(conn: quinn::Connection, feed: SignalSink) {
    while let Ok(bytes) = conn.read_datagram().await {
        let Ok(signal) = <wire::Signal as prost::Message>::decode(bytes) else { continue };
        let Some(item) = signal_item(signal) else { continue };
        let tx = feed.lock().expect("feed lock").clone();
        if let Some(tx) = tx {
            // Ephemeral: dropped if the application is not keeping up.
            let _ = tx.try_send(Ok(item));
        }
    }
}

/// A local UDP socket that client connections share.
#[derive(Clone)]
pub struct ClientEndpoint(quinn::Endpoint);

impl ClientEndpoint {
    /// A socket on an ephemeral port of the address family `server` needs.
    ///
    /// # Errors
    /// `Connect` when no socket can be bound.
    pub fn for_server(server: SocketAddr) -> Result<Self, ClientError> {
        let bind: SocketAddr = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid");
        quinn::Endpoint::client(bind).map(Self).map_err(connect_error)
    }
}

/// A signed-in identity as the server reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub device_id: String,
    pub email: String,
    pub display_name: String,
}

impl From<wire::Identity> for Identity {
    fn from(i: wire::Identity) -> Self {
        Self { user_id: i.user_id, device_id: i.device_id, email: i.email, display_name: i.display_name }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<response::Result, ClientError>>>>>;

/// A connection to natterd. Requests may be issued concurrently from many
/// tasks (`&self`); they are pipelined on the control stream.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    requests: Arc<Requests>,
    max_frame_bytes: usize,
    welcome: wire::Welcome,
    identity: Mutex<Option<Identity>>,
    connection_errors: tokio::sync::Mutex<mpsc::Receiver<wire::Error>>,
    /// Where datagram signals go once the feed runs.
    signal_sink: SignalSink,
    typing_sent: Mutex<HashMap<String, tokio::time::Instant>>,
    typing_throttle: Duration,
}

impl Client {
    /// Connects, performs the Hello exchange, and resumes `config.session_token`
    /// if set.
    ///
    /// # Errors
    /// `Connect` (no answer in time, pin mismatch, other TLS failures), or `Server` when the
    /// Hello is refused (e.g. `SESSION_INVALID`, `UNSUPPORTED_VERSION`).
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let endpoint = ClientEndpoint::for_server(config.server)?;
        Self::connect_with(&endpoint, config).await
    }

    /// Like [`Client::connect`] on a shared endpoint (one UDP socket carries
    /// many connections; the load generator spreads them over several).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_on(endpoint: &ClientEndpoint, config: &ClientConfig) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, config).await
    }

    async fn connect_with(endpoint: &ClientEndpoint, config: &ClientConfig) -> Result<Self, ClientError> {
        let endpoint = endpoint.0.clone();
        let (server, waited) = (config.server, config.connect_timeout);
        let deadline = tokio::time::Instant::now() + waited;
        let seen = SeenLeaf::default();
        let connecting = endpoint
            .connect_with(quic_config(config, &seen)?, config.server, &config.server_name)
            .map_err(connect_error)?;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(handshake_error(config, &seen, &e)),
            Err(_) => return Err(ClientError::Connect(ConnectError::NoAnswer { server, waited })),
        };
        tokio::time::timeout_at(deadline, Self::hello(endpoint, conn, config))
            .await
            .map_err(|_| ClientError::Connect(ConnectError::NoWelcome { server, waited }))?
    }

    /// The Hello exchange on a fresh connection, then the background tasks.
    async fn hello(
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        config: &ClientConfig,
    ) -> Result<Self, ClientError> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| ClientError::from_connection(&e))?;
        let hello = wire::ClientFrame {
            kind: Some(client_frame::Kind::Hello(wire::Hello {
                min_version: MIN_PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                client_name: config.client_name.clone(),
                session_token: config.session_token.clone().unwrap_or_default(),
            })),
        };
        let frame = encode_frame(&hello, config.max_frame_bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        send.write_all(&frame).await.map_err(connect_error)?;
        let mut decoder = FrameDecoder::new(config.max_frame_bytes);
        let welcome = match read_server_frame(&mut recv, &mut decoder, &conn).await? {
            Some(server_frame::Kind::Welcome(w)) => w,
            Some(server_frame::Kind::Error(e)) => return Err(ClientError::from_wire(e)),
            Some(server_frame::Kind::Response(_)) => {
                return Err(ClientError::Protocol("response before Welcome".into()))
            }
            None => return Err(ClientError::Protocol("control stream ended before Welcome".into())),
        };
        // Frames in both directions are bounded by the server's announced limit.
        let max_frame_bytes = (welcome.max_frame_bytes as usize).max(1024);
        decoder.set_max_frame_bytes(max_frame_bytes.max(config.max_frame_bytes));
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (out, out_rx) = mpsc::channel::<Bytes>(256);
        let (err_tx, err_rx) = mpsc::channel(16);
        tokio::spawn(write_loop(send, out_rx));
        tokio::spawn(read_loop(recv, decoder, conn.clone(), pending.clone(), err_tx));
        let signal_sink = Arc::new(Mutex::new(None));
        tokio::spawn(datagram_loop(conn.clone(), signal_sink.clone()));
        let requests = Requests { out, pending, next_id: AtomicU64::new(1), max_frame_bytes, conn: conn.clone() };
        Ok(Self {
            endpoint,
            requests: Arc::new(requests),
            conn,
            max_frame_bytes,
            identity: Mutex::new(welcome.identity.clone().map(Identity::from)),
            welcome,
            connection_errors: tokio::sync::Mutex::new(err_rx),
            signal_sink,
            typing_sent: Mutex::new(HashMap::new()),
            typing_throttle: config.typing_throttle,
        })
    }

    /// The server's `Welcome`.
    pub fn welcome(&self) -> &wire::Welcome {
        &self.welcome
    }

    /// Who this connection is signed in as.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.lock().expect("identity lock").clone()
    }

    /// Sends one request and waits for its answer.
    ///
    /// # Errors
    /// `Server` for an error answer; `Closed` when the connection ends first.
    pub async fn request(&self, body: Body) -> Result<response::Result, ClientError> {
        self.requests.request(body).await
    }

    fn closed_error(&self) -> ClientError {
        self.requests.closed_error()
    }

    /// Writes raw bytes on the control stream, bypassing the codec. For protocol
    /// conformance tests (malformed and oversized frames); never needed otherwise.
    ///
    /// # Errors
    /// `Closed` when the connection is gone.
    pub async fn send_raw_control_bytes(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.requests.out.send(Bytes::copy_from_slice(bytes)).await.map_err(|_| self.closed_error())
    }

    /// Ends this side of the control stream (FIN) after what was sent so
    /// far; answers to requests in flight still arrive. For protocol
    /// conformance tests; a client never needs it otherwise.
    ///
    /// # Errors
    /// `Closed` when the connection is gone.
    pub async fn finish_control_stream(&self) -> Result<(), ClientError> {
        self.requests.out.send(Bytes::new()).await.map_err(|_| self.closed_error())
    }

    /// The next connection-level error the server reported (one not tied to a
    /// request, e.g. `MALFORMED_FRAME`). `None` once the connection is gone.
    pub async fn next_connection_error(&self) -> Option<ClientError> {
        self.connection_errors.lock().await.recv().await.map(ClientError::from_wire)
    }

    /// Waits until the connection is closed, and says why.
    pub async fn closed(&self) -> ClientError {
        ClientError::from_connection(&self.conn.closed().await)
    }

    /// Closes the connection politely and waits for the close to be sent.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Creates an account (does not sign in).
    ///
    /// # Errors
    /// `EMAIL_TAKEN`, `INVALID_EMAIL`, `WEAK_PASSWORD`, `INVALID_ARGUMENT`.
    pub async fn signup(&self, email: &str, password: &str, display_name: &str) -> Result<String, ClientError> {
        let body = Body::Signup(wire::Signup {
            email: email.into(),
            password: password.into(),
            display_name: display_name.into(),
        });
        match self.request(body).await? {
            response::Result::Signup(ok) => Ok(ok.user_id),
            other => Err(unexpected(&other)),
        }
    }

    /// Signs this connection in as a new device; returns the session token to
    /// save for later connections.
    ///
    /// # Errors
    /// `INVALID_CREDENTIALS`, `ALREADY_AUTHENTICATED`.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        device_name: &str,
    ) -> Result<(String, Identity), ClientError> {
        let body = Body::Login(wire::Login {
            email: email.into(),
            password: password.into(),
            device_name: device_name.into(),
        });
        let answer = self.request(body).await?;
        self.signed_in(answer)
    }

    /// `LoginOk`: this connection is signed in.
    fn signed_in(&self, answer: response::Result) -> Result<(String, Identity), ClientError> {
        match answer {
            response::Result::Login(ok) => {
                let identity: Identity =
                    ok.identity.ok_or_else(|| ClientError::Protocol("LoginOk without identity".into()))?.into();
                *self.identity.lock().expect("identity lock") = Some(identity.clone());
                Ok((ok.session_token, identity))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Finishes a sign-in that answered [`ClientError::MfaRequired`], with a
    /// TOTP code or (`recovery`) a recovery code.
    ///
    /// # Errors
    /// `CODE_INVALID` (wrong or used), `CODE_EXPIRED` (sign in again), `RATE_LIMITED`.
    pub async fn verify_mfa(
        &self,
        challenge: &str,
        code: &str,
        recovery: bool,
    ) -> Result<(String, Identity), ClientError> {
        let factor = if recovery {
            wire::verify_mfa::Factor::RecoveryCode(code.into())
        } else {
            wire::verify_mfa::Factor::Code(code.into())
        };
        let body = Body::VerifyMfa(wire::VerifyMfa { challenge: challenge.into(), factor: Some(factor) });
        let answer = self.request(body).await?;
        self.signed_in(answer)
    }

    /// Texts a code to `phone` (international form): to sign in with it when
    /// this connection is signed out, to add it to the account when signed in.
    /// Returns how long the code is valid.
    ///
    /// # Errors
    /// `INVALID_PHONE`, `PHONE_TAKEN`, `RATE_LIMITED`, `UNAVAILABLE` (the SMS provider).
    pub async fn start_phone(&self, phone: &str) -> Result<Duration, ClientError> {
        match self.request(Body::StartPhone(wire::StartPhone { phone: phone.into() })).await? {
            response::Result::CodeSent(c) => Ok(Duration::from_millis(c.expires_in_ms.into())),
            other => Err(unexpected(&other)),
        }
    }

    /// Signs in with the texted code as a new device of the account with this
    /// number. When no account has the number yet, one is created with
    /// `display_name` (empty: natterd chooses).
    ///
    /// # Errors
    /// `CODE_INVALID`, `CODE_EXPIRED`, `NOT_FOUND` (no account has the number),
    /// [`ClientError::MfaRequired`].
    pub async fn sign_in_with_phone(
        &self,
        phone: &str,
        code: &str,
        device_name: &str,
        display_name: &str,
    ) -> Result<(String, Identity), ClientError> {
        let body = Body::VerifyPhone(wire::VerifyPhone {
            phone: phone.into(),
            code: code.into(),
            device_name: device_name.into(),
            display_name: display_name.into(),
        });
        let answer = self.request(body).await?;
        self.signed_in(answer)
    }

    /// Adds the number to this (signed-in) account with the texted code;
    /// returns it in E.164 form.
    ///
    /// # Errors
    /// `CODE_INVALID`, `CODE_EXPIRED`, `PHONE_TAKEN`.
    pub async fn add_phone(&self, phone: &str, code: &str) -> Result<String, ClientError> {
        let body =
            Body::VerifyPhone(wire::VerifyPhone { phone: phone.into(), code: code.into(), ..Default::default() });
        match self.request(body).await? {
            response::Result::PhoneAdded(p) => Ok(p.phone),
            other => Err(unexpected(&other)),
        }
    }

    /// Takes the number off the signed-in account; returns it (E.164).
    ///
    /// # Errors
    /// `NOT_FOUND` without a number, `LAST_SIGN_IN_METHOD` when it is the only
    /// way in.
    pub async fn remove_phone(&self) -> Result<String, ClientError> {
        match self.request(Body::RemovePhone(wire::RemovePhone {})).await? {
            response::Result::PhoneRemoved(p) => Ok(p.phone),
            other => Err(unexpected(&other)),
        }
    }

    /// What this client needs to send a person to `provider` ([`oauth::begin`]);
    /// allowed before signing in.
    ///
    /// # Errors
    /// `NOT_FOUND` when natterd has no such provider configured.
    pub async fn oauth_config(&self, provider: wire::OAuthProvider) -> Result<wire::OAuthConfig, ClientError> {
        match self.request(Body::GetOauthConfig(wire::GetOAuthConfig { provider: provider as i32 })).await? {
            response::Result::OauthConfig(mut config) => {
                if config.provider == wire::OAuthProvider::OauthProviderUnspecified as i32 {
                    config.provider = provider as i32;
                }
                if config.provider() != provider {
                    return Err(ClientError::Protocol(format!(
                        "asked for the {provider:?} configuration, natterd answered with {:?}'s",
                        config.provider()
                    )));
                }
                Ok(config)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Signs this connection in with a Google or GitHub grant as a new device:
    /// of the account bound to the identity, or of a new account when the
    /// provider's verified email is not in use. Returns the session token to save.
    ///
    /// # Errors
    /// `IDENTITY_NOT_LINKED` (an account has the email: sign in to it and
    /// [`Client::link_identity`]), `OAUTH_REJECTED`, `NOT_FOUND` (provider not
    /// configured), `ALREADY_AUTHENTICATED`, [`ClientError::MfaRequired`].
    pub async fn oauth_login(
        &self,
        grant: &oauth::Grant,
        device_name: &str,
    ) -> Result<(String, Identity), ClientError> {
        let body = Body::OauthLogin(wire::OAuthLogin {
            provider: grant.provider as i32,
            code: grant.code.clone(),
            code_verifier: grant.code_verifier.clone(),
            redirect_uri: grant.redirect_uri.clone(),
            nonce: grant.nonce.clone(),
            device_name: device_name.into(),
        });
        let answer = self.request(body).await?;
        self.signed_in(answer)
    }

    /// Binds the identity of a Google or GitHub grant to this (signed-in) account.
    ///
    /// # Errors
    /// `IDENTITY_TAKEN` (another account has it), `OAUTH_REJECTED`, `NOT_FOUND`,
    /// `UNAUTHENTICATED`.
    pub async fn link_identity(&self, grant: &oauth::Grant) -> Result<wire::LinkedIdentity, ClientError> {
        let body = Body::LinkIdentity(wire::LinkIdentity {
            provider: grant.provider as i32,
            code: grant.code.clone(),
            code_verifier: grant.code_verifier.clone(),
            redirect_uri: grant.redirect_uri.clone(),
            nonce: grant.nonce.clone(),
        });
        match self.request(body).await? {
            response::Result::IdentityLinked(linked) => Ok(linked),
            other => Err(unexpected(&other)),
        }
    }

    /// Unbinds this account's identity of `provider`; returns the identities
    /// that remain.
    ///
    /// # Errors
    /// `LAST_SIGN_IN_METHOD` (nothing else signs in to the account),
    /// `IDENTITY_NOT_LINKED`, `UNAUTHENTICATED`.
    pub async fn unlink_identity(
        &self,
        provider: wire::OAuthProvider,
    ) -> Result<Vec<wire::LinkedIdentity>, ClientError> {
        match self.request(Body::UnlinkIdentity(wire::UnlinkIdentity { provider: provider as i32 })).await? {
            response::Result::Identities(list) => Ok(list.identities),
            other => Err(unexpected(&other)),
        }
    }

    /// The Google and GitHub identities linked to this account.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn identities(&self) -> Result<Vec<wire::LinkedIdentity>, ClientError> {
        match self.request(Body::ListIdentities(wire::ListIdentities {})).await? {
            response::Result::Identities(list) => Ok(list.identities),
            other => Err(unexpected(&other)),
        }
    }

    /// This account's signed-in devices, oldest first.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn sessions(&self) -> Result<Vec<wire::SessionInfo>, ClientError> {
        match self.request(Body::ListSessions(wire::ListSessions {})).await? {
            response::Result::Sessions(list) => Ok(list.sessions),
            other => Err(unexpected(&other)),
        }
    }

    /// Signs one device out (its `session_id`); `None` signs out every device
    /// but this one. Returns how many were signed out.
    ///
    /// # Errors
    /// `NOT_FOUND` (no such session of yours), `INVALID_ARGUMENT` (this one: use logout).
    pub async fn revoke_sessions(&self, session_id: Option<&str>) -> Result<u32, ClientError> {
        let body = match session_id {
            Some(id) => Body::RevokeSession(wire::RevokeSession { session_id: id.into() }),
            None => Body::RevokeOtherSessions(wire::RevokeOtherSessions {}),
        };
        match self.request(body).await? {
            response::Result::Revoked(r) => Ok(r.revoked),
            other => Err(unexpected(&other)),
        }
    }

    /// A new password; every other device is signed out (their count is returned).
    ///
    /// # Errors
    /// `INVALID_CREDENTIALS` (the old one is wrong), `WEAK_PASSWORD`.
    /// Deletes the signed-in account for good (spec section 5.31): `password`
    /// when the account has one, `code` (TOTP or recovery) when two-factor
    /// sign-in is on (empty otherwise). The connection stays, signed out.
    /// Returns how many messages were erased and uploads deleted.
    ///
    /// # Errors
    /// `INVALID_CREDENTIALS` (the password), `MFA_REQUIRED` / `INVALID_CODE`.
    pub async fn delete_account(&self, password: &str, code: &str) -> Result<(u64, u32), ClientError> {
        let body = Body::DeleteAccount(wire::DeleteAccount { password: password.into(), code: code.into() });
        match self.request(body).await? {
            response::Result::AccountDeleted(d) => Ok((d.messages, d.media)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets how old a conversation's messages may grow before their content
    /// is erased (seconds; 0: the deployment's limit). Spec section 5.32.
    ///
    /// # Errors
    /// `NOT_FOUND`, `NOT_A_MEMBER`, `FORBIDDEN` (a group member who is no
    /// owner or admin), `INVALID_ARGUMENT` (over a century).
    pub async fn set_retention(
        &self,
        conversation_id: &str,
        max_age_secs: u64,
    ) -> Result<wire::Retention, ClientError> {
        let body = Body::SetRetention(wire::SetRetention { conversation_id: conversation_id.into(), max_age_secs });
        match self.request(body).await? {
            response::Result::Retention(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// A conversation's retention: its own limit, the deployment's, and the one that applies.
    ///
    /// # Errors
    /// `NOT_FOUND`, `NOT_A_MEMBER`.
    pub async fn retention(&self, conversation_id: &str) -> Result<wire::Retention, ClientError> {
        match self.request(Body::GetRetention(wire::GetRetention { conversation_id: conversation_id.into() })).await? {
            response::Result::Retention(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn change_password(&self, old: &str, new: &str) -> Result<u32, ClientError> {
        let body = Body::ChangePassword(wire::ChangePassword { old_password: old.into(), new_password: new.into() });
        match self.request(body).await? {
            response::Result::Password(p) => Ok(p.revoked_sessions),
            other => Err(unexpected(&other)),
        }
    }

    /// Mails a password-reset code to `email` (the same answer whether or not
    /// it has an account). Returns how long the code is valid.
    ///
    /// # Errors
    /// `INVALID_EMAIL`, `RATE_LIMITED`.
    pub async fn start_password_reset(&self, email: &str) -> Result<Duration, ClientError> {
        match self.request(Body::StartPasswordReset(wire::StartPasswordReset { email: email.into() })).await? {
            response::Result::CodeSent(c) => Ok(Duration::from_millis(c.expires_in_ms.into())),
            other => Err(unexpected(&other)),
        }
    }

    /// A new password with the mailed code; every session of the account ends.
    ///
    /// # Errors
    /// `CODE_INVALID`, `CODE_EXPIRED`, `WEAK_PASSWORD`, `RATE_LIMITED`.
    pub async fn reset_password(&self, email: &str, code: &str, new_password: &str) -> Result<u32, ClientError> {
        let body = Body::ResetPassword(wire::ResetPassword {
            email: email.into(),
            code: code.into(),
            new_password: new_password.into(),
        });
        match self.request(body).await? {
            response::Result::Password(p) => Ok(p.revoked_sessions),
            other => Err(unexpected(&other)),
        }
    }

    /// Mails a new verification code; `None` when the address is verified already.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`, `RATE_LIMITED`.
    pub async fn start_email_verification(&self) -> Result<Option<Duration>, ClientError> {
        match self.request(Body::StartEmailVerification(wire::StartEmailVerification {})).await? {
            response::Result::CodeSent(c) => Ok(Some(Duration::from_millis(c.expires_in_ms.into()))),
            response::Result::EmailVerified(_) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Proves the mailbox with the mailed code; returns the verified address.
    ///
    /// # Errors
    /// `CODE_INVALID`, `CODE_EXPIRED`, `UNAUTHENTICATED`.
    pub async fn verify_email(&self, code: &str) -> Result<String, ClientError> {
        match self.request(Body::VerifyEmail(wire::VerifyEmail { code: code.into() })).await? {
            response::Result::EmailVerified(v) => Ok(v.email),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts turning TOTP on: the secret for the authenticator app.
    ///
    /// # Errors
    /// `MFA_ALREADY_ENABLED`, `UNAUTHENTICATED`.
    pub async fn enable_totp(&self) -> Result<wire::TotpSetup, ClientError> {
        match self.request(Body::EnableTotp(wire::EnableTotp {})).await? {
            response::Result::TotpSetup(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Turns TOTP on with a current code from the app (on the connection that
    /// sent [`Client::enable_totp`]); returns the recovery codes, shown once.
    ///
    /// # Errors
    /// `CODE_INVALID`, `INVALID_ARGUMENT`.
    pub async fn confirm_totp(&self, code: &str) -> Result<Vec<String>, ClientError> {
        match self.request(Body::ConfirmTotp(wire::ConfirmTotp { code: code.into() })).await? {
            response::Result::RecoveryCodes(r) => Ok(r.codes),
            other => Err(unexpected(&other)),
        }
    }

    /// Turns TOTP off; needs a current code or a recovery code.
    ///
    /// # Errors
    /// `CODE_INVALID`, `MFA_NOT_ENABLED`.
    pub async fn disable_totp(&self, code: &str) -> Result<(), ClientError> {
        match self.request(Body::DisableTotp(wire::DisableTotp { code: code.into() })).await? {
            response::Result::TotpDisabled(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A fresh set of recovery codes (the old set stops working); needs a
    /// current code or a recovery code.
    ///
    /// # Errors
    /// `CODE_INVALID`, `MFA_NOT_ENABLED`.
    pub async fn new_recovery_codes(&self, code: &str) -> Result<Vec<String>, ClientError> {
        match self.request(Body::NewRecoveryCodes(wire::NewRecoveryCodes { code: code.into() })).await? {
            response::Result::RecoveryCodes(r) => Ok(r.codes),
            other => Err(unexpected(&other)),
        }
    }

    /// Revokes this connection's session (on every connection using it).
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn logout(&self) -> Result<(), ClientError> {
        match self.request(Body::Logout(wire::Logout {})).await? {
            response::Result::Logout(_) => {
                *self.identity.lock().expect("identity lock") = None;
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Opens (or finds) the direct conversation with `peer_email`.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_ARGUMENT` (yourself), `UNAUTHENTICATED`.
    pub async fn open_direct(&self, peer_email: &str) -> Result<wire::Conversation, ClientError> {
        self.open_direct_with(peer_email, false).await
    }

    /// Opens (or finds) the direct conversation with `peer_email`: the end-to-end
    /// encrypted one when `e2ee` (another conversation than the plaintext one).
    ///
    /// # Errors
    /// As [`Self::open_direct`].
    pub async fn open_direct_with(&self, peer_email: &str, e2ee: bool) -> Result<wire::Conversation, ClientError> {
        match self.request(Body::OpenDirect(wire::OpenDirect { peer_email: peer_email.into(), e2ee })).await? {
            response::Result::Conversation(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a text message; answers once it is durable. Retrying with the same
    /// `client_msg_id` returns the original sequence number.
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `NOT_FOUND`, `TEXT_TOO_LONG`, `EMPTY_MESSAGE`, …
    pub async fn send_text(
        &self,
        conversation_id: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<wire::Sent, ClientError> {
        let body = Body::SendMessage(wire::SendMessage {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            content: Some(wire::Content { body: Some(wire::content::Body::Text(wire::Text { body: text.into() })) }),
        });
        match self.request(body).await? {
            response::Result::Sent(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends any content (text, media, MLS); answers once it is durable.
    ///
    /// # Errors
    /// As [`Self::send_text`], and `ENCRYPTION_MISMATCH`, `MLS_MESSAGE_INVALID`,
    /// `STALE_EPOCH` for MLS content.
    pub async fn send_content(
        &self,
        conversation_id: &str,
        client_msg_id: &str,
        content: wire::Content,
    ) -> Result<wire::Sent, ClientError> {
        let body = Body::SendMessage(wire::SendMessage {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            content: Some(content),
        });
        match self.request(body).await? {
            response::Result::Sent(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of history (see `GetHistory` in the spec).
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `NOT_FOUND`, `INVALID_ARGUMENT`.
    pub async fn history(&self, req: wire::GetHistory) -> Result<wire::HistoryPage, ClientError> {
        match self.request(Body::GetHistory(req)).await? {
            response::Result::History(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }

    /// Searches the messages the caller may read (spec/protocol.md, "Search").
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`, `NOT_FOUND`, `NOT_A_MEMBER`, `UNAVAILABLE` (with
    /// `retry_after_ms` while the server builds its index).
    pub async fn search(&self, req: wire::Search) -> Result<wire::SearchResults, ClientError> {
        match self.request(Body::Search(req)).await? {
            response::Result::Search(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// People and conversations whose name or email starts with `prefix`
    /// (autocomplete; spec/protocol.md, "SearchDirectory").
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`.
    pub async fn search_directory(&self, prefix: &str, limit: u32) -> Result<wire::DirectoryResults, ClientError> {
        match self.request(Body::SearchDirectory(wire::SearchDirectory { prefix: prefix.into(), limit })).await? {
            response::Result::Directory(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Hands this device's Web Push subscription to the server
    /// (spec/protocol.md, "Push notifications"); replaces an earlier one.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (an endpoint that is not https, keys of the wrong
    /// length), `UNAVAILABLE` (push off).
    pub async fn register_push(&self, endpoint: &str, p256dh: &[u8], auth: &[u8]) -> Result<(), ClientError> {
        let req = wire::RegisterPush { endpoint: endpoint.into(), p256dh: p256dh.to_vec(), auth: auth.to_vec() };
        self.push_request(Body::RegisterPush(req)).await
    }

    /// Removes this device's subscription.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn unregister_push(&self) -> Result<(), ClientError> {
        self.push_request(Body::UnregisterPush(wire::UnregisterPush {})).await
    }

    /// The VAPID key to subscribe with, and the user's notification settings.
    ///
    /// # Errors
    /// `UNAVAILABLE` (push off).
    pub async fn push_config(&self) -> Result<wire::PushConfig, ClientError> {
        match self.request(Body::GetPushConfig(wire::GetPushConfig {})).await? {
            response::Result::PushConfig(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether notifications may show message text.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn set_push_previews(&self, show_text: bool) -> Result<(), ClientError> {
        self.push_request(Body::SetPushPreviews(wire::SetPushPreviews { show_text })).await
    }

    /// No notifications for the conversation until `until_ms` (0: until unmuted).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`, `NOT_FOUND`, `NOT_A_MEMBER`.
    pub async fn mute(&self, conversation_id: &str, until_ms: u64) -> Result<(), ClientError> {
        let req = wire::MuteConversation { conversation_id: conversation_id.into(), until_ms };
        self.push_request(Body::MuteConversation(req)).await
    }

    /// # Errors
    /// `INVALID_ARGUMENT`, `NOT_FOUND`, `NOT_A_MEMBER`.
    pub async fn unmute(&self, conversation_id: &str) -> Result<(), ClientError> {
        let req = wire::UnmuteConversation { conversation_id: conversation_id.into() };
        self.push_request(Body::UnmuteConversation(req)).await
    }

    async fn push_request(&self, body: Body) -> Result<(), ClientError> {
        match self.request(body).await? {
            response::Result::Push(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The caller's conversations, most recent activity first.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn conversations(&self, limit: u32) -> Result<Vec<wire::Conversation>, ClientError> {
        match self.request(Body::ListConversations(wire::ListConversations { limit, before_activity: 0 })).await? {
            response::Result::Conversations(c) => Ok(c.conversations),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of the conversation list (see `ListConversations`).
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn conversation_page(
        &self,
        limit: u32,
        before_activity: u64,
    ) -> Result<wire::ConversationList, ClientError> {
        match self.request(Body::ListConversations(wire::ListConversations { limit, before_activity })).await? {
            response::Result::Conversations(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    async fn group_request(&self, body: Body) -> Result<wire::Conversation, ClientError> {
        match self.request(body).await? {
            response::Result::Group(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a group owned by the caller with these members.
    ///
    /// # Errors
    /// `NOT_FOUND` (an unknown email), `GROUP_FULL`, `INVALID_ARGUMENT`.
    pub async fn create_group(&self, name: &str, member_emails: &[&str]) -> Result<wire::Conversation, ClientError> {
        self.create_group_with(name, member_emails, false).await
    }

    /// Creates a group, end-to-end encrypted when `e2ee`.
    ///
    /// # Errors
    /// As [`Self::create_group`].
    pub async fn create_group_with(
        &self,
        name: &str,
        member_emails: &[&str],
        e2ee: bool,
    ) -> Result<wire::Conversation, ClientError> {
        let member_emails = member_emails.iter().map(|e| e.to_string()).collect();
        self.group_request(Body::CreateGroup(wire::CreateGroup { name: name.into(), member_emails, e2ee })).await
    }

    /// Adds members (owners and admins).
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_A_MEMBER`, `NOT_FOUND`, `GROUP_FULL`.
    pub async fn add_members(&self, conversation_id: &str, emails: &[&str]) -> Result<wire::Conversation, ClientError> {
        let emails = emails.iter().map(|e| e.to_string()).collect();
        self.group_request(Body::AddMembers(wire::AddMembers { conversation_id: conversation_id.into(), emails })).await
    }

    /// Removes a member whose role is below the caller's.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_A_MEMBER`, `INVALID_ARGUMENT`.
    pub async fn remove_member(&self, conversation_id: &str, user_id: &str) -> Result<wire::Conversation, ClientError> {
        let req = wire::RemoveMember { conversation_id: conversation_id.into(), user_id: user_id.into() };
        self.group_request(Body::RemoveMember(req)).await
    }

    /// Leaves a group; returns the seq of the leave (the last one still readable).
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `INVALID_ARGUMENT` (not a group).
    pub async fn leave(&self, conversation_id: &str) -> Result<u64, ClientError> {
        match self.request(Body::Leave(wire::LeaveConversation { conversation_id: conversation_id.into() })).await? {
            response::Result::Leave(ok) => Ok(ok.seq),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes a member's role.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_A_MEMBER`, `INVALID_ARGUMENT`.
    pub async fn set_role(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: wire::Role,
    ) -> Result<wire::Conversation, ClientError> {
        let req = wire::SetRole { conversation_id: conversation_id.into(), user_id: user_id.into(), role: role as i32 };
        self.group_request(Body::SetRole(req)).await
    }

    /// Renames a group (owners and admins).
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_A_MEMBER`, `INVALID_ARGUMENT`.
    pub async fn rename_group(&self, conversation_id: &str, name: &str) -> Result<wire::Conversation, ClientError> {
        let req = wire::RenameGroup { conversation_id: conversation_id.into(), name: name.into() };
        self.group_request(Body::RenameGroup(req)).await
    }

    /// A conversation the caller belongs to, with members and roles.
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `NOT_FOUND`.
    pub async fn get_conversation(&self, conversation_id: &str) -> Result<wire::Conversation, ClientError> {
        self.group_request(Body::GetConversation(wire::GetConversation { conversation_id: conversation_id.into() }))
            .await
    }

    /// Marks the conversation read up to `seq`; returns the read watermark
    /// (unchanged when `seq` is not ahead of it).
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `NOT_FOUND`.
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<u64, ClientError> {
        match self.request(Body::MarkRead(wire::MarkRead { conversation_id: conversation_id.into(), seq })).await? {
            response::Result::Read(ok) => Ok(ok.read_up_to),
            other => Err(unexpected(&other)),
        }
    }

    /// Acknowledges feed events up to `cursor` ([`Feed::next`] does this itself).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` when no feed runs.
    pub async fn ack_feed(&self, cursor: u64) -> Result<(), ClientError> {
        match self.request(Body::AckFeed(wire::AckFeed { cursor })).await? {
            response::Result::Ack(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Who received and read the message `seq`.
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `NOT_FOUND`.
    pub async fn receipts(&self, conversation_id: &str, seq: u64) -> Result<wire::Receipts, ClientError> {
        match self
            .request(Body::GetReceipts(wire::GetReceipts { conversation_id: conversation_id.into(), seq }))
            .await?
        {
            response::Result::Receipts(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the conversation's online members that the caller is typing. Sends
    /// at most one signal per conversation per `typing_throttle` (returns false
    /// when throttled): call it on every keystroke.
    ///
    /// # Errors
    /// With a datagram: only a closed connection. Without datagram support it
    /// is a request: `NOT_A_MEMBER`, `RATE_LIMITED`, ….
    pub async fn typing(&self, conversation_id: &str) -> Result<bool, ClientError> {
        {
            let now = tokio::time::Instant::now();
            let mut sent = self.typing_sent.lock().expect("typing lock");
            if sent.get(conversation_id).is_some_and(|at| now.duration_since(*at) < self.typing_throttle) {
                return Ok(false);
            }
            if sent.len() > 1024 {
                sent.clear();
            }
            sent.insert(conversation_id.to_owned(), now);
        }
        let typing = wire::Typing { conversation_id: conversation_id.into() };
        if self.conn.max_datagram_size().is_some() {
            let signal = wire::ClientSignal { kind: Some(wire::client_signal::Kind::Typing(typing.clone())) };
            let bytes = Bytes::from(prost::Message::encode_to_vec(&signal));
            match self.conn.send_datagram(bytes) {
                Ok(()) => return Ok(true),
                Err(quinn::SendDatagramError::ConnectionLost(e)) => return Err(ClientError::from_connection(&e)),
                // Too large or unsupported after all: fall back to a request.
                Err(_) => {}
            }
        }
        match self.request(Body::Typing(typing)).await? {
            response::Result::Typing(_) => Ok(true),
            other => Err(unexpected(&other)),
        }
    }

    /// Hides (or shows) the caller's last-seen time.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`.
    pub async fn set_privacy(&self, hide_last_seen: bool) -> Result<(), ClientError> {
        match self.request(Body::SetPrivacy(wire::SetPrivacy { hide_last_seen })).await? {
            response::Result::Privacy(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Presence of users who share a conversation with the caller (others are
    /// left out of the answer).
    ///
    /// # Errors
    /// `UNAUTHENTICATED`, `INVALID_ARGUMENT`.
    pub async fn presence(&self, user_ids: &[&str]) -> Result<Vec<wire::PresenceSignal>, ClientError> {
        let user_ids = user_ids.iter().map(|u| u.to_string()).collect();
        match self.request(Body::GetPresence(wire::GetPresence { user_ids })).await? {
            response::Result::Presence(p) => Ok(p.presence),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts the event feed: every event after `since` (a cursor from an
    /// earlier feed), then live events. `None` means from now on.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`, or `INVALID_ARGUMENT` when already started.
    pub async fn sync(&self, since: Option<u64>) -> Result<(Feed, u64), ClientError> {
        let (tx, rx) = mpsc::channel(1024);
        let conn = self.conn.clone();
        let max = self.max_frame_bytes;
        // Accept the server-opened stream concurrently with the request.
        let accept = tokio::spawn(async move { conn.accept_uni().await });
        let head = match self.request(Body::Sync(wire::Sync { since })).await {
            Ok(response::Result::Sync(ok)) => ok.head,
            Ok(other) => {
                accept.abort();
                return Err(unexpected(&other));
            }
            Err(e) => {
                accept.abort();
                return Err(e);
            }
        };
        let recv = match accept.await {
            Ok(Ok(recv)) => recv,
            Ok(Err(e)) => return Err(ClientError::from_connection(&e)),
            Err(e) => return Err(ClientError::Protocol(format!("feed accept task: {e}"))),
        };
        *self.signal_sink.lock().expect("feed lock") = Some(tx.clone());
        tokio::spawn(feed_loop(recv, FrameDecoder::new(max), self.conn.clone(), tx, self.signal_sink.clone()));
        let (acks, acked) = watch::channel(since.unwrap_or(head));
        tokio::spawn(ack_loop(self.requests.clone(), acked));
        Ok((Feed { rx, acks, typing: HashMap::new(), ready: Default::default() }, head))
    }
}

/// QUIC and TLS settings of a connection; a pinned leaf is recorded in `seen`.
fn quic_config(config: &ClientConfig, seen: &SeenLeaf) -> Result<quinn::ClientConfig, ClientError> {
    let tls = config.trust.rustls_config(seen).map_err(connect_error)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(connect_error)?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.keep_alive));
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout).map_err(connect_error)?;
    transport.max_idle_timeout(Some(idle));
    if !config.datagrams {
        transport.datagram_receive_buffer_size(None);
    }
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

/// A failed handshake; a pin that did not match says so, with both fingerprints.
fn handshake_error(config: &ClientConfig, seen: &SeenLeaf, e: &quinn::ConnectionError) -> ClientError {
    match (&config.trust, seen.get()) {
        (Trust::Pin(pin), Some(actual)) if actual != *pin => ClientError::Connect(ConnectError::PinMismatch {
            server: config.server,
            expected: trust::fingerprint_string(pin),
            actual: trust::fingerprint_string(&actual),
        }),
        _ => connect_error(e),
    }
}

/// The request side of the control stream, shared with background tasks (the
/// feed's acknowledgements).
struct Requests {
    out: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: AtomicU64,
    max_frame_bytes: usize,
    conn: quinn::Connection,
}

impl Requests {
    async fn request(&self, body: Body) -> Result<response::Result, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame =
            wire::ClientFrame { kind: Some(client_frame::Kind::Request(wire::Request { id, body: Some(body) })) };
        let bytes = encode_frame(&frame, self.max_frame_bytes).map_err(|e| match e {
            FrameError::TooLarge { len, max } => ClientError::Server {
                code: ErrorCode::FRAME_TOO_LARGE,
                message: format!("request of {len} bytes exceeds the server's limit of {max}"),
                retry_after_ms: 0,
            },
            other => ClientError::Protocol(other.to_string()),
        })?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        if self.out.send(bytes).await.is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(self.closed_error());
        }
        match rx.await {
            Ok(Ok(response::Result::Error(e))) => Err(ClientError::from_wire(e)),
            Ok(result) => result,
            Err(_) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> ClientError {
        match self.conn.close_reason() {
            Some(e) => ClientError::from_connection(&e),
            None => ClientError::Closed { code: None, reason: "control stream closed".into() },
        }
    }
}

/// Sends the newest acknowledged cursor whenever it changes (a burst of
/// acknowledgements becomes one request).
async fn ack_loop(requests: Arc<Requests>, mut acked: watch::Receiver<u64>) {
    while acked.changed().await.is_ok() {
        let cursor = *acked.borrow_and_update();
        if requests.request(Body::AckFeed(wire::AckFeed { cursor })).await.is_err() {
            return;
        }
    }
}

fn unexpected(result: &response::Result) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {result:?}"))
}

async fn read_server_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    conn: &quinn::Connection,
) -> Result<Option<server_frame::Kind>, ClientError> {
    loop {
        match decoder.next_message::<wire::ServerFrame>() {
            Ok(Some(frame)) => match frame.kind {
                Some(kind) => return Ok(Some(kind)),
                None => continue, // a frame kind from a newer server: skip it
            },
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(_) => {
                return Err(match conn.close_reason() {
                    Some(e) => ClientError::from_connection(&e),
                    None => ClientError::Closed { code: None, reason: "control stream reset".into() },
                })
            }
        }
    }
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // An empty chunk (never a frame: a frame has its length prefix) asks for
    // the FIN after what came before it (`Client::finish_control_stream`).
    let mut finish = false;
    while let Some(first) = rx.recv().await {
        buf.clear();
        finish = first.is_empty();
        buf.extend_from_slice(&first);
        while buf.len() < 256 * 1024 && !finish {
            match rx.try_recv() {
                Ok(more) => {
                    finish = more.is_empty();
                    buf.extend_from_slice(&more);
                }
                Err(_) => break,
            }
        }
        if send.write_all(&buf).await.is_err() || finish {
            break;
        }
    }
    let _ = send.finish();
    if finish {
        // Keep reading answers: the stream's other half stays open.
        rx.close();
    }
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    conn: quinn::Connection,
    pending: Pending,
    errors: mpsc::Sender<wire::Error>,
) {
    let end = loop {
        match read_server_frame(&mut recv, &mut decoder, &conn).await {
            Ok(Some(server_frame::Kind::Response(r))) => {
                let waiter = pending.lock().expect("pending lock").remove(&r.id);
                if let Some(waiter) = waiter {
                    let result = r.result.ok_or_else(|| ClientError::Protocol("response without result".into()));
                    let _ = waiter.send(result);
                }
            }
            Ok(Some(server_frame::Kind::Error(e))) => {
                // Full means nobody is reading them; dropping is fine then.
                let _ = errors.try_send(e);
            }
            Ok(Some(server_frame::Kind::Welcome(_))) => {
                break ClientError::Protocol("Welcome sent twice".into());
            }
            Ok(None) => break ClientError::Closed { code: None, reason: "server ended the control stream".into() },
            Err(e) => break e,
        }
    };
    // The connection's close reason, when there is one, says more.
    let end = tokio::time::timeout(Duration::from_millis(200), conn.closed())
        .await
        .map(|e| ClientError::from_connection(&e))
        .unwrap_or(end);
    for (_, waiter) in pending.lock().expect("pending lock").drain() {
        let _ = waiter.send(Err(end.clone()));
    }
}

type SignalSink = Arc<Mutex<Option<mpsc::Sender<Result<FeedItem, ClientError>>>>>;

/// Runs the feed stream, then closes the feed: the datagram side lets go of its
/// sender too, so the application sees the end.
async fn feed_loop(
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    conn: quinn::Connection,
    tx: mpsc::Sender<Result<FeedItem, ClientError>>,
    signal_sink: SignalSink,
) {
    read_feed(recv, decoder, conn, tx).await;
    signal_sink.lock().expect("feed lock").take();
}

async fn read_feed(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    conn: quinn::Connection,
    tx: mpsc::Sender<Result<FeedItem, ClientError>>,
) {
    loop {
        loop {
            let frame = match decoder.next_message::<wire::FeedFrame>() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(ClientError::Protocol(e.to_string()))).await;
                    return;
                }
            };
            let item = match frame.kind {
                Some(feed_frame::Kind::CaughtUp(c)) => FeedItem::CaughtUp { cursor: c.cursor },
                Some(feed_frame::Kind::Signal(s)) => match signal_item(s) {
                    Some(item) => item,
                    None => continue,
                },
                Some(feed_frame::Kind::Event(ev)) => match ev.kind {
                    Some(feed_event::Kind::Message(message)) => FeedItem::Message { cursor: ev.cursor, message },
                    Some(feed_event::Kind::ConversationStarted(conversation)) => {
                        FeedItem::ConversationStarted { cursor: ev.cursor, conversation }
                    }
                    Some(feed_event::Kind::Group(event)) => FeedItem::Group { cursor: ev.cursor, event },
                    Some(feed_event::Kind::Receipt(receipt)) => FeedItem::Receipt { cursor: ev.cursor, receipt },
                    Some(feed_event::Kind::RetentionChanged(change)) => {
                        FeedItem::RetentionChanged { cursor: ev.cursor, change }
                    }
                    Some(feed_event::Kind::MessagesExpired(expired)) => {
                        FeedItem::MessagesExpired { cursor: ev.cursor, expired }
                    }
                    Some(feed_event::Kind::AccountErased(e)) => {
                        FeedItem::AccountErased { cursor: ev.cursor, user_id: e.user_id }
                    }
                    None => continue, // an event kind from a newer server
                },
                None => continue,
            };
            if tx.send(Ok(item)).await.is_err() {
                return; // nobody listens any more
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => return,
            Err(_) => {
                let e = ClientError::from_connection(&conn.closed().await);
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_says_how_long_to_wait() {
        let e = ClientError::Server {
            code: ErrorCode::RATE_LIMITED,
            message: "too many failed sign-ins for this account".into(),
            retry_after_ms: 27_001,
        };
        assert_eq!(e.to_string(), "RATE_LIMITED(500): too many failed sign-ins for this account; try again in 28 s");
        let e = ClientError::Server { code: ErrorCode::NOT_FOUND, message: "no such user".into(), retry_after_ms: 0 };
        assert_eq!(e.to_string(), "NOT_FOUND(400): no such user");
    }

    #[test]
    fn no_answer_names_the_address_and_natterd() {
        let server = "127.0.0.1:7443".parse().unwrap();
        let e = ClientError::Connect(ConnectError::NoAnswer { server, waited: Duration::from_secs(10) });
        assert_eq!(
            e.to_string(),
            "cannot connect: no answer from 127.0.0.1:7443 within 10s: is natterd running there?"
        );
        let e = ConnectError::NoAnswer { server, waited: Duration::from_millis(500) };
        assert!(e.to_string().contains("within 0.5s"), "{e}");
    }
}
