//! A Web Push service for the tests (RFC 8030), a real HTTP/1.1 server on
//! `127.0.0.1:0` that checks what a real one (Mozilla's autopush, Google's
//! FCM web endpoint, a UnifiedPush distributor) checks before it accepts a
//! push message:
//!
//! - `POST /push/<id>` of a subscription it made ([`PushServiceFake::subscribe`]),
//!   else 404;
//! - `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292): `k` is the
//!   application server key the subscription was made with; the JWT is ES256,
//!   its signature verifies with `k`, `aud` is the endpoint's origin, `exp` is
//!   in the future and at most 24 hours away, `sub` is a `mailto:` or
//!   `https:` contact; else 401 (403 for a key other than the subscription's);
//! - `TTL` (a number), `Urgency` (very-low, low, normal, high) and `Topic`
//!   (at most 32 base64url characters) when present, `TTL` required; else 400;
//! - `Content-Encoding: aes128gcm`, a body of at most 4,096 bytes (413
//!   beyond), which it decrypts (RFC 8291) with the subscription's private
//!   key and auth secret: a body that does not decrypt is 400.
//!
//! Each push it accepts is recorded with its headers and decrypted JSON
//! payload. A test can make it answer a status (404, 410, 413, 429 with
//! `Retry-After`, 500) to the next requests, or hang (answer nothing) until
//! told otherwise.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use web_push_native::jwt_simple::prelude::*;
use web_push_native::p256;

use crate::http_fake::{self, HttpRequest, HttpResponse};

/// The largest body a push service must accept (RFC 8030 section 7.2).
pub const MAX_BODY: usize = 4096;

/// A subscription as a browser's `PushManager.subscribe()` would hand it over.
#[derive(Clone)]
pub struct FakeSubscription {
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
}

/// A push message the service accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub endpoint: String,
    pub ttl: u64,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    pub payload: Value,
}

struct Sub {
    secret: p256::SecretKey,
    auth: Vec<u8>,
    server_key: Vec<u8>,
}

#[derive(Default)]
struct State {
    subs: HashMap<String, Sub>,
    received: Vec<Received>,
    /// Every request, with the status answered.
    attempts: Vec<(String, u16)>,
    /// Statuses (with `Retry-After`) for the next requests, in order.
    scripted: VecDeque<(u16, Option<u64>)>,
    hang: bool,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    changed: Notify,
}

pub struct PushServiceFake {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PushServiceFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PushServiceFake {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the push service");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared { addr, state: Mutex::new(State::default()), changed: Notify::new() });
        let s = shared.clone();
        let task = tokio::spawn(crate::accept_loop(listener, 64, move |stream| {
            let shared = s.clone();
            async move {
                let _ = http_fake::serve_async(stream, |r| answer(shared.clone(), r), unreadable).await;
            }
        }));
        Self { shared, task }
    }

    /// A new subscription for a user agent that subscribed with
    /// `application_server_key` (the server's VAPID key).
    pub fn subscribe(&self, application_server_key: &[u8]) -> FakeSubscription {
        let secret = std::iter::repeat_with(rand::random::<[u8; 32]>)
            .find_map(|bytes| p256::SecretKey::from_slice(&bytes).ok())
            .expect("a random scalar");
        let p256dh = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false)
            .as_bytes()
            .to_vec();
        let auth: Vec<u8> = rand::random::<[u8; 16]>().to_vec();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let endpoint = format!("http://{}/push/{id}", self.shared.addr);
        self.shared
            .state
            .lock()
            .unwrap()
            .subs
            .insert(id, Sub { secret, auth: auth.clone(), server_key: application_server_key.to_vec() });
        FakeSubscription { endpoint, p256dh, auth }
    }

    /// Answers the next `times` requests with `status` (and `Retry-After`).
    pub fn answer_next(&self, status: u16, retry_after: Option<u64>, times: usize) {
        let mut state = self.shared.state.lock().unwrap();
        state.scripted.extend(std::iter::repeat_n((status, retry_after), times));
    }

    /// Forgets the statuses [`Self::answer_next`] set that are not used yet.
    pub fn clear_script(&self) {
        self.shared.state.lock().unwrap().scripted.clear();
    }

    /// Holds every request without an answer while on.
    pub fn hang(&self, on: bool) {
        self.shared.state.lock().unwrap().hang = on;
        self.shared.changed.notify_waiters();
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.state.lock().unwrap().received.clone()
    }

    /// Every request (endpoint, status answered; 0 while hanging).
    pub fn attempts(&self) -> Vec<(String, u16)> {
        self.shared.state.lock().unwrap().attempts.clone()
    }

    /// Waits until `check` holds for what was received, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, what: &str, check: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            let received = self.received();
            if check(&received) {
                return received;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("push service: {what} not within {timeout:?}; received {received:?}");
            }
        }
    }
}

fn unreadable(status: u16) -> HttpResponse {
    status_only(status, None)
}

fn status_only(status: u16, retry_after: Option<u64>) -> HttpResponse {
    HttpResponse {
        status,
        headers: retry_after.map(|s| ("Retry-After", s.to_string())).into_iter().collect(),
        content_type: "text/plain",
        body: String::new(),
    }
}

async fn answer(shared: Arc<Shared>, request: HttpRequest) -> HttpResponse {
    let endpoint = format!("http://{}{}", shared.addr, request.path());
    let mut counted = false;
    loop {
        let changed = shared.changed.notified();
        if !shared.state.lock().unwrap().hang {
            break;
        }
        if !counted {
            shared.state.lock().unwrap().attempts.push((endpoint.clone(), 0));
            shared.changed.notify_waiters();
            counted = true;
        }
        changed.await;
    }
    let (status, retry_after, received) = match check(&shared, &request, &endpoint) {
        Ok(received) => match shared.state.lock().unwrap().scripted.pop_front() {
            Some((status, retry_after)) => (status, retry_after, None),
            None => (201, None, Some(received)),
        },
        Err(status) => (status, None, None),
    };
    let mut state = shared.state.lock().unwrap();
    state.attempts.push((endpoint, status));
    if let Some(r) = received {
        state.received.push(r);
    }
    drop(state);
    shared.changed.notify_waiters();
    let mut response = status_only(status, retry_after);
    if status == 201 {
        response.headers.push(("Location", format!("http://{}/message/{}", shared.addr, uuid::Uuid::new_v4())));
    }
    response
}

/// What RFC 8030, 8291 and 8292 ask of a push request; the status to refuse it with.
fn check(shared: &Shared, request: &HttpRequest, endpoint: &str) -> Result<Received, u16> {
    if request.method != "POST" {
        return Err(405);
    }
    let id = request.path().strip_prefix("/push/").ok_or(404u16)?;
    let (secret, auth, server_key) = {
        let state = shared.state.lock().unwrap();
        let sub = state.subs.get(id).ok_or(404u16)?;
        (sub.secret.clone(), sub.auth.clone(), sub.server_key.clone())
    };
    // VAPID.
    let authorization = request.header("Authorization").ok_or(401u16)?;
    let rest = authorization.strip_prefix("vapid ").ok_or(401u16)?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("k", v)) => k = Some(v.to_owned()),
            _ => return Err(401),
        }
    }
    let key = URL_SAFE_NO_PAD.decode(k.ok_or(401u16)?).map_err(|_| 401u16)?;
    if key != server_key {
        return Err(403);
    }
    let public = ES256PublicKey::from_bytes(&key).map_err(|_| 401u16)?;
    let claims = public.verify_token::<NoCustomClaims>(&t.ok_or(401u16)?, None).map_err(|_| 401u16)?;
    let origin = format!("http://{}", shared.addr);
    if !claims.audiences.as_ref().is_some_and(|a| a.contains(&HashSet::from([origin.clone()]))) {
        return Err(401);
    }
    let now = Clock::now_since_epoch();
    let exp = claims.expires_at.ok_or(401u16)?;
    if exp <= now || exp > now + web_push_native::jwt_simple::prelude::Duration::from_hours(24) {
        return Err(401);
    }
    let sub = claims.subject.ok_or(401u16)?;
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(401);
    }
    // Headers.
    let ttl = request.header("TTL").and_then(|v| v.parse::<u64>().ok()).ok_or(400u16)?;
    let urgency = request.header("Urgency").map(str::to_owned);
    if urgency.as_deref().is_some_and(|u| !["very-low", "low", "normal", "high"].contains(&u)) {
        return Err(400);
    }
    let topic = request.header("Topic").map(str::to_owned);
    if topic
        .as_deref()
        .is_some_and(|t| t.len() > 32 || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(400);
    }
    if request.header("Content-Encoding") != Some("aes128gcm") {
        return Err(415);
    }
    if request.body.len() > MAX_BODY {
        return Err(413);
    }
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    let plain = web_push_native::decrypt(request.body.clone(), &secret, &auth).map_err(|_| 400u16)?;
    let payload = serde_json::from_slice(&plain).map_err(|_| 400u16)?;
    Ok(Received { endpoint: endpoint.to_owned(), ttl, urgency, topic, payload })
}
