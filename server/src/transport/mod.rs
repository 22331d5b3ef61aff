//! QUIC transport: the quinn endpoint, the accept loop (with a connection cap),
//! and one task per connection that frames the control stream and writes the
//! event feed. The only server module that knows quinn.
//!
//! Never interprets requests: decoded frames go to `session`, answers come back.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use natter_proto::codec::{encode_frame, encode_frame_into};
use natter_proto::limits::MAX_IN_FLIGHT_REQUESTS;
use natter_proto::wire::{self, client_frame, response, server_frame};
use natter_proto::{ErrorCode, FrameDecoder, FrameError};
use prost::Message as _;
use quinn::VarInt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{CloseReason, Metrics};
use crate::session::{FeedSource, Service, Session, WireError};
use crate::tls::TlsIdentity;

mod transfer;

/// How the transport behaves.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    /// Connections one IP address may hold at once (`None`: no cap).
    pub max_per_address: Option<usize>,
    /// Handshakes in progress above which a client must prove its address
    /// first (QUIC Retry).
    pub retry_above_handshakes: usize,
    /// Requests per second and burst, per connection (`None`: no limit).
    pub request_rate: Option<(f64, u32)>,
}

/// Connections per IP address, held for each connection's life.
#[derive(Default)]
struct PerAddress {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`PerAddress`]; given back when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: std::net::IpAddr,
}

impl PerAddress {
    /// A slot for `ip`, or `None` when it already holds `max`.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: Option<usize>) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().expect("per-address lock");
        let n = counts.entry(ip).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: self.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().expect("per-address lock");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Counts a handshake in progress while alive.
struct Handshaking(Arc<std::sync::atomic::AtomicUsize>);

impl Handshaking {
    fn start(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client must send `Hello` this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged bytes the server keeps in flight per connection.
const SEND_WINDOW: u64 = 1024 * 1024;
/// Bytes a client may send on one stream ahead of the server reading them.
const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Bytes a client may send on all streams ahead of the server reading them.
const RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Concurrent handshakes completed only to refuse a connection with a code.
const REFUSAL_HANDSHAKES: usize = 64;
/// How long the control stream's last bytes may take to be acknowledged
/// before the connection closes anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
    #[error("cannot bind: {0}")]
    Bind(#[from] std::io::Error),
}

/// Builds the QUIC endpoint: TLS 1.3 only, ALPN `natter/1`.
///
/// # Errors
/// Invalid certificate/key, or the address cannot be bound.
pub fn endpoint(
    identity: TlsIdentity,
    listen: std::net::SocketAddr,
    config: &TransportConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            config.idle_timeout.try_into().map_err(|_| TransportError::Quic("idle timeout too large".into()))?,
        ))
        // The control stream, plus media transfers later.
        .max_concurrent_bidi_streams(VarInt::from_u32(16))
        // Clients open no unidirectional streams.
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // Chat traffic is small packets; segmentation offload would keep a
        // ~13 KiB transmit buffer per connection (heaptrack, 2,000 idle
        // connections) for batches that chat hardly sends.
        .enable_segmentation_offload(false)
        // Bounded buffers per connection (quinn's defaults allow ~10 MiB of
        // unacknowledged feed data): a slow reader backs up into its outbound
        // queue, which overflows into a resync from the log instead of memory.
        .send_window(SEND_WINDOW)
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    server.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::server(server, listen)?)
}

/// Accepts connections until `shutdown`, then waits for them to drain.
pub async fn serve(
    endpoint: quinn::Endpoint,
    service: Arc<Service>,
    config: TransportConfig,
    shutdown: CancellationToken,
    grace: Duration,
    metrics: Arc<Metrics>,
) {
    let cap = Arc::new(Semaphore::new(config.max_connections));
    // Handshakes done only to tell a client "too many connections" are bounded too.
    let refusals = Arc::new(Semaphore::new(REFUSAL_HANDSHAKES));
    let per_address = Arc::new(PerAddress::default());
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tracker = TaskTracker::new();
    // Completes the handshake only to close it with a typed reason (bounded);
    // past that bound, refuses at the QUIC level.
    let refuse = |incoming: quinn::Incoming, why: &'static [u8]| match refusals.clone().try_acquire_owned() {
        Ok(refusal) => {
            tracker.spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.close(VarInt::from_u32(ErrorCode::TOO_MANY_CONNECTIONS.0), why);
                }
                drop(refusal);
            });
        }
        Err(_) => incoming.refuse(),
    };
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        // A handshake flood: clients prove their address before any state is
        // spent on them (a spoofed source cannot answer the Retry).
        let busy = handshakes.load(std::sync::atomic::Ordering::Relaxed) >= config.retry_above_handshakes;
        if busy && !incoming.remote_address_validated() && incoming.may_retry() {
            metrics.handshake_retried();
            let _ = incoming.retry();
            continue;
        }
        let remote = incoming.remote_address();
        let Some(slot) = per_address.take(remote.ip(), config.max_per_address) else {
            tracing::warn!(%remote, cap = ?config.max_per_address, "connection refused: too many from this address");
            metrics.connection_refused();
            refuse(incoming, b"too many connections from your address");
            continue;
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            tracing::warn!(%remote, cap = config.max_connections, "connection refused: at the connection cap");
            metrics.connection_refused();
            refuse(incoming, b"the server is at its connection cap");
            continue;
        };
        let (service, config, shutdown, metrics) = (service.clone(), config.clone(), shutdown.clone(), metrics.clone());
        let handshaking = Handshaking::start(&handshakes);
        tracker.spawn(async move {
            let connecting = incoming.await;
            drop(handshaking);
            match connecting {
                Ok(conn) => Connection { conn, service, config, shutdown, metrics }.run().await,
                Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
            drop((permit, slot));
        });
    }
    // Stop accepting: new handshakes are refused from here on.
    endpoint.set_server_config(None);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace_ms = grace.as_millis() as u64, "connections did not drain in time; closing them");
    }
    endpoint.close(VarInt::from_u32(ErrorCode::SHUTTING_DOWN.0), b"shutting down");
}

/// Why a connection ends.
enum End {
    /// The peer closed or vanished; nothing to say.
    Gone,
    /// We close with this code and message.
    Close(ErrorCode, String),
    /// Shutdown or a clean end of the control stream.
    Done,
}

struct Connection {
    conn: quinn::Connection,
    service: Arc<Service>,
    config: TransportConfig,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn run(self) {
        let remote = self.conn.remote_address();
        self.metrics.connection_opened();
        let end = self.serve().await;
        let reason = match end {
            End::Gone => {
                tracing::debug!(%remote, "connection ended by peer");
                CloseReason::Peer
            }
            End::Done => {
                let shutting_down = self.shutdown.is_cancelled();
                let code = if shutting_down { ErrorCode::SHUTTING_DOWN.0 } else { 0 };
                self.conn.close(VarInt::from_u32(code), b"bye");
                if shutting_down {
                    CloseReason::Shutdown
                } else {
                    CloseReason::Normal
                }
            }
            End::Close(code, msg) => {
                tracing::debug!(%remote, code = code.0, reason = %msg, "closing connection");
                self.conn.close(VarInt::from_u32(code.0), msg.as_bytes());
                CloseReason::Error
            }
        };
        self.metrics.connection_closed(reason);
    }

    async fn serve(&self) -> End {
        let (send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, self.conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(_)) => return End::Gone,
            Err(_) => return End::Close(ErrorCode::PROTOCOL_VIOLATION, "no control stream".into()),
        };
        let mut decoder = FrameDecoder::new(self.config.max_frame_bytes);
        // Boxed: a channel allocates its slots in blocks of 32, and a bare
        // ServerFrame slot made that block ~9 KiB per connection (heaptrack).
        let (out, out_rx) = mpsc::channel::<Box<wire::ServerFrame>>(MAX_IN_FLIGHT_REQUESTS * 2);
        let writer = tokio::spawn(control_writer(send, out_rx, self.config.max_frame_bytes));

        let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut recv, &mut decoder)).await {
            Ok(Ok(Some(wire::ClientFrame { kind: Some(client_frame::Kind::Hello(h)) }))) => h,
            Ok(Ok(Some(_))) => {
                return self.fail(out, writer, ErrorCode::PROTOCOL_VIOLATION, "the first frame must be Hello").await
            }
            Ok(Ok(None)) | Ok(Err(ReadError::Gone)) => return End::Gone,
            Ok(Err(ReadError::Frame(e))) => return self.frame_error(out, writer, e).await,
            Err(_) => return self.fail(out, writer, ErrorCode::PROTOCOL_VIOLATION, "no Hello in time").await,
        };
        let (welcome, mut session) = match self.service.hello(&hello, self.conn.remote_address().ip()).await {
            Ok(ok) => ok,
            Err(e) => return self.fail(out, writer, e.code, &e.message).await,
        };
        tracing::debug!(remote = %self.conn.remote_address(), client = %hello.client_name, "hello");
        let _ = out.send(Box::new(server_frame(server_frame::Kind::Welcome(welcome)))).await;

        let inflight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_REQUESTS));
        let mut request_limit =
            self.config.request_rate.map(|(per_second, burst)| crate::session::RateLimit::new(per_second, burst));
        let mut tasks = JoinSet::new();
        // Transfer streams run beside the control stream, and end with the connection.
        let mut transfers = JoinSet::new();
        let max_transfers = self.service.max_transfers_per_connection();
        // Ends the feed task with the connection (or with shutdown, its parent).
        let feed_stop = self.shutdown.child_token();
        let mut feed_task = None;
        let end = loop {
            let revoked = session.revoked();
            let frame = tokio::select! {
                () = self.shutdown.cancelled() => break End::Done,
                () = async { match &revoked { Some(t) => t.cancelled().await, None => std::future::pending().await } } => {
                    break End::Close(ErrorCode::SESSION_INVALID, "session revoked".into());
                }
                bi = self.conn.accept_bi() => {
                    let Ok((send, recv)) = bi else { break End::Gone };
                    while transfers.try_join_next().is_some() {}
                    let (service, identity) = (self.service.clone(), session.identity().cloned());
                    if transfers.len() >= max_transfers {
                        let mut e = WireError::new(ErrorCode::RATE_LIMITED, "too many transfers on this connection");
                        e.retry_after_ms = 1_000;
                        transfers.spawn(transfer::refuse(send, recv, e));
                    } else {
                        transfers.spawn(transfer::serve(service, identity, send, recv, self.metrics.clone()));
                    }
                    continue;
                }
                d = self.conn.read_datagram() => {
                    match d {
                        Ok(bytes) => self.datagram(&mut session, &bytes).await,
                        Err(_) => break End::Gone,
                    }
                    continue;
                }
                f = read_frame(&mut recv, &mut decoder) => f,
            };
            let request = match frame {
                Ok(Some(wire::ClientFrame { kind: Some(client_frame::Kind::Request(r)) })) => r,
                Ok(Some(wire::ClientFrame { kind: Some(client_frame::Kind::Hello(_)) })) => {
                    break End::Close(ErrorCode::PROTOCOL_VIOLATION, "Hello sent twice".into());
                }
                Ok(Some(wire::ClientFrame { kind: None })) => {
                    let e = WireError::new(ErrorCode::MALFORMED_FRAME, "frame has no known kind");
                    let _ = out.send(Box::new(server_frame(server_frame::Kind::Error(e.to_wire())))).await;
                    continue;
                }
                Ok(None) => break End::Done,
                Err(ReadError::Gone) => break End::Gone,
                Err(ReadError::Frame(FrameError::Malformed(m))) => {
                    // Framing is intact: report and go on with the next frame.
                    let e = WireError::new(ErrorCode::MALFORMED_FRAME, format!("malformed frame: {m}"));
                    let _ = out.send(Box::new(server_frame(server_frame::Kind::Error(e.to_wire())))).await;
                    continue;
                }
                Err(ReadError::Frame(e)) => {
                    drain(&mut tasks).await;
                    feed_stop.cancel();
                    return self.frame_error(out, writer, e).await;
                }
            };
            let id = request.id;
            let Some(body) = request.body else {
                let e = WireError::new(ErrorCode::INVALID_ARGUMENT, "request has no (known) body");
                let _ = out.send(Box::new(respond(id, response::Result::Error(e.to_wire())))).await;
                continue;
            };
            let kind = request_kind(&body);
            // A request flood on one connection: refused at once, typed, with the wait.
            if let Some(limit) = &mut request_limit {
                if let Err(wait) = limit.take(std::time::Instant::now()) {
                    let e = WireError::rate_limited("too many requests on this connection", wait);
                    self.metrics.request(kind, "RATE_LIMITED");
                    let _ = out.send(Box::new(respond(id, response::Result::Error(e.to_wire())))).await;
                    continue;
                }
            }
            // What the client does by itself does not make its device active.
            if !matches!(body, wire::request::Body::AckFeed(_)) {
                session.touch();
            }
            if Session::is_stateful(&body) {
                let handled = session.handle_stateful(body).await;
                self.metrics.request(kind, result_name(&handled.reply));
                let _ = out.send(Box::new(respond(id, handled.reply))).await;
                if let Some(feed) = handled.feed {
                    feed_task =
                        Some(tokio::spawn(run_feed(self.conn.clone(), feed, feed_stop.clone(), self.metrics.clone())));
                }
            } else {
                // Backpressure: past the in-flight limit we stop reading.
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break End::Done;
                };
                let (service, identity, out) = (self.service.clone(), session.identity().cloned(), out.clone());
                let metrics = self.metrics.clone();
                tasks.spawn(async move {
                    let reply = service.handle(identity, body).await;
                    metrics.request(kind, result_name(&reply));
                    let _ = out.send(Box::new(respond(id, reply))).await;
                    drop(permit);
                });
                // Reap finished requests, or their tasks would pile up for the
                // life of the connection (bounded by in-flight, not by history).
                while tasks.try_join_next().is_some() {}
            }
        };
        // Drain: in-flight requests finish and are answered before we close.
        drain(&mut tasks).await;
        transfers.abort_all();
        feed_stop.cancel();
        if let Some(feed) = feed_task {
            let _ = feed.await;
        }
        drop(out);
        let _ = writer.await;
        end
    }

    /// A client datagram: an ephemeral signal. Nothing answers a datagram, so
    /// a bad or refused one is only logged.
    async fn datagram(&self, session: &mut Session, bytes: &[u8]) {
        match wire::ClientSignal::decode(bytes) {
            Ok(wire::ClientSignal { kind: Some(wire::client_signal::Kind::Typing(t)) }) => {
                if let Err(e) = session.typing(&t.conversation_id).await {
                    tracing::debug!(code = e.code.0, "typing datagram refused: {}", e.message);
                }
            }
            Ok(_) => tracing::debug!("datagram of an unknown kind ignored"),
            Err(e) => tracing::debug!(error = %e, "malformed datagram ignored"),
        }
    }

    async fn frame_error(
        &self,
        out: mpsc::Sender<Box<wire::ServerFrame>>,
        writer: tokio::task::JoinHandle<()>,
        e: FrameError,
    ) -> End {
        let code = match e {
            FrameError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            FrameError::BadLength | FrameError::Malformed(_) => ErrorCode::MALFORMED_FRAME,
        };
        self.fail(out, writer, code, &e.to_string()).await
    }

    /// Sends a connection-level error, flushes it, and asks for the close.
    async fn fail(
        &self,
        out: mpsc::Sender<Box<wire::ServerFrame>>,
        writer: tokio::task::JoinHandle<()>,
        code: ErrorCode,
        message: &str,
    ) -> End {
        let e = WireError::new(code, message);
        let _ = out.send(Box::new(server_frame(server_frame::Kind::Error(e.to_wire())))).await;
        drop(out);
        let _ = writer.await;
        End::Close(code, message.to_owned())
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// The request type, as a metrics label.
fn request_kind(body: &wire::request::Body) -> &'static str {
    use wire::request::Body;
    match body {
        Body::Signup(_) => "signup",
        Body::Login(_) => "login",
        Body::Logout(_) => "logout",
        Body::OpenDirect(_) => "open_direct",
        Body::SendMessage(_) => "send_message",
        Body::GetHistory(_) => "get_history",
        Body::ListConversations(_) => "list_conversations",
        Body::Sync(_) => "sync",
        Body::CreateGroup(_) => "create_group",
        Body::AddMembers(_) => "add_members",
        Body::RemoveMember(_) => "remove_member",
        Body::Leave(_) => "leave",
        Body::SetRole(_) => "set_role",
        Body::RenameGroup(_) => "rename_group",
        Body::GetConversation(_) => "get_conversation",
        Body::MarkRead(_) => "mark_read",
        Body::AckFeed(_) => "ack_feed",
        Body::GetReceipts(_) => "get_receipts",
        Body::Typing(_) => "typing",
        Body::SetPrivacy(_) => "set_privacy",
        Body::GetPresence(_) => "get_presence",
        Body::ListSessions(_) => "list_sessions",
        Body::RevokeSession(_) => "revoke_session",
        Body::RevokeOtherSessions(_) => "revoke_other_sessions",
        Body::ChangePassword(_) => "change_password",
        Body::StartPasswordReset(_) => "start_password_reset",
        Body::ResetPassword(_) => "reset_password",
        Body::StartEmailVerification(_) => "start_email_verification",
        Body::VerifyEmail(_) => "verify_email",
        Body::GetOauthConfig(_) => "get_oauth_config",
        Body::OauthLogin(_) => "oauth_login",
        Body::LinkIdentity(_) => "link_identity",
        Body::UnlinkIdentity(_) => "unlink_identity",
        Body::ListIdentities(_) => "list_identities",
        Body::RemovePhone(_) => "remove_phone",
        Body::GetMediaUrl(_) => "get_media_url",
        Body::RegisterPush(_) => "register_push",
        Body::UnregisterPush(_) => "unregister_push",
        Body::RegisterDeviceKey(_) => "register_device_key",
        Body::ListDeviceKeys(_) => "list_device_keys",
        Body::PublishKeyPackages(_) => "publish_key_packages",
        Body::GetKeyPackageStock(_) => "get_key_package_stock",
        Body::ClaimKeyPackages(_) => "claim_key_packages",
        Body::GetGroupInfo(_) => "get_group_info",
        Body::GetPushConfig(_) => "get_push_config",
        Body::SetPushPreviews(_) => "set_push_previews",
        Body::MuteConversation(_) => "mute_conversation",
        Body::UnmuteConversation(_) => "unmute_conversation",
        Body::Search(_) => "search",
        Body::SearchDirectory(_) => "search_directory",
        Body::EnableTotp(_) => "enable_totp",
        Body::ConfirmTotp(_) => "confirm_totp",
        Body::DisableTotp(_) => "disable_totp",
        Body::VerifyMfa(_) => "verify_mfa",
        Body::NewRecoveryCodes(_) => "new_recovery_codes",
        Body::StartPhone(_) => "start_phone",
        Body::VerifyPhone(_) => "verify_phone",
        Body::AdminListUsers(_) => "admin_list_users",
        Body::AdminGetUser(_) => "admin_get_user",
        Body::AdminSetDisabled(_) => "admin_set_disabled",
        Body::AdminRevokeSessions(_) => "admin_revoke_sessions",
        Body::AdminResetMfa(_) => "admin_reset_mfa",
        Body::AdminSetAdmin(_) => "admin_set_admin",
        Body::AdminAudit(_) => "admin_audit",
        Body::AdminStatus(_) => "admin_status",
        Body::AdminListGroups(_) => "admin_list_groups",
        Body::AdminGetGroup(_) => "admin_get_group",
        Body::DeleteAccount(_) => "delete_account",
        Body::AdminDeleteUser(_) => "admin_delete_user",
        Body::SetRetention(_) => "set_retention",
        Body::GetRetention(_) => "get_retention",
        Body::AdminDeleteGroup(_) => "admin_delete_group",
    }
}

/// `ok` or the error code's name, as a metrics label.
fn result_name(reply: &response::Result) -> &'static str {
    match reply {
        response::Result::Error(e) => ErrorCode(e.code).name().unwrap_or("unknown"),
        _ => "ok",
    }
}

fn server_frame(kind: server_frame::Kind) -> wire::ServerFrame {
    wire::ServerFrame { kind: Some(kind) }
}

fn respond(id: u64, result: response::Result) -> wire::ServerFrame {
    server_frame(server_frame::Kind::Response(wire::Response { id, result: Some(result) }))
}

enum ReadError {
    Gone,
    Frame(FrameError),
}

/// Reads the next client frame; `Ok(None)` when the client finished the stream.
/// Cancel-safe: bytes read stay in `decoder` if the future is dropped.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<wire::ClientFrame>, ReadError> {
    loop {
        if let Some(frame) = decoder.next_message::<wire::ClientFrame>().map_err(ReadError::Frame)? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(_) => return Err(ReadError::Gone),
        }
    }
}

/// Writes control-stream frames, batching whatever is queued into one write.
async fn control_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Box<wire::ServerFrame>>,
    max_frame_bytes: usize,
) {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            append_bounded(&mut buf, &frame, max_frame_bytes);
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    // Closing the connection discards stream data the peer has not
    // acknowledged: answers and a closing `Error` frame must reach it first
    // (bounded, for a peer that stopped acknowledging).
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
}

/// Appends a frame, replacing a response too large for the peer with an error
/// answer to the same request (the request is still answered).
fn append_bounded(buf: &mut BytesMut, frame: &wire::ServerFrame, max_frame_bytes: usize) {
    match encode_frame(frame, max_frame_bytes) {
        Ok(bytes) => buf.extend_from_slice(&bytes),
        Err(e) => {
            tracing::error!(error = %e, "response exceeds the frame limit");
            let id = match &frame.kind {
                Some(server_frame::Kind::Response(r)) => r.id,
                _ => 0,
            };
            let err = WireError::new(ErrorCode::INTERNAL, "response too large");
            encode_frame_into(&respond(id, response::Result::Error(err.to_wire())), buf);
        }
    }
}

async fn run_feed(conn: quinn::Connection, mut source: FeedSource, shutdown: CancellationToken, metrics: Arc<Metrics>) {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut buf = BytesMut::new();
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = conn.closed() => return,
            b = source.next_batch() => b,
        };
        match batch {
            Ok(Some(batch)) => {
                buf.clear();
                for f in &batch.frames {
                    encode_frame_into(f, &mut buf);
                }
                for signal in batch.signals {
                    // Datagrams when the peer takes them; else in order on the feed stream.
                    let bytes = Bytes::from(signal.encode_to_vec());
                    match conn.max_datagram_size() {
                        Some(max) if bytes.len() <= max => match conn.send_datagram(bytes) {
                            Ok(()) => metrics.datagram_sent(),
                            Err(_) => metrics.signal_dropped(),
                        },
                        _ => {
                            metrics.signal_on_stream();
                            encode_frame_into(
                                &wire::FeedFrame { kind: Some(wire::feed_frame::Kind::Signal(signal)) },
                                &mut buf,
                            );
                        }
                    }
                }
                if !buf.is_empty() && send.write_all(&buf).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(code = e.code.0, "feed stopped: {}", e.message);
                conn.close(VarInt::from_u32(e.code.0), e.message.as_bytes());
                return;
            }
        }
    }
    let _ = send.finish();
}
